//! One build at a time over a partitioned build's root: the lease
//! `OUT/BUILD.lock`.
//!
//! A compaction (`vecrec-build --shards N --compact`), a one-process
//! build and a rebuild split over pods all read the shards' logs, write
//! `OUT/folded/` and the front's pending and published records, and
//! publish. Two of them interleaved could fold the same log records
//! twice, publish one build's shards over the other's, or clear the
//! other's pending front. So each holds the lease while it works, and a
//! second waits for it (`--wait-lock`) or stops with the holder's name.
//!
//! A lease, not an OS lock: the pods of a split rebuild run on other
//! machines over shared storage, where `flock` may not reach. The file
//! names the rebuild (`--run`) that holds it and is renewed every
//! [`RENEW_EVERY`] by every process of that rebuild while it runs; the
//! pods of one rebuild share it, and it is theirs from the first pod's
//! start until the build that cuts the last shard publishes (or finds
//! the build served). A lease nobody renewed for [`STALE_AFTER`] belongs
//! to a rebuild whose processes all stopped, and the next build takes it
//! over. Taking it is a hard link of a fully written file, so a reader
//! never sees it half written.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::BUILD_LOCK_FILE;

/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// A lease not renewed for this long is taken over: every process of its
/// rebuild stopped (clocks of the pods may differ by less than this).
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// What the lease file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The rebuild holding it: a split rebuild's `--run`, or an id of
    /// one process's own.
    pub run: String,
    /// What the process that took it does (`compact`, `build`,
    /// `front-only`, ...).
    pub what: String,
    /// The host and process that took it.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it was taken, in ms since the Unix epoch.
    pub since_ms: u64,
    /// When a process of the rebuild last renewed it.
    pub renewed_ms: u64,
}

impl Lease {
    fn describe(&self, now: u64) -> String {
        format!(
            "rebuild {} ({} on {}, pid {}, for {} s, renewed {} s ago)",
            self.run,
            self.what,
            self.host,
            self.pid,
            now.saturating_sub(self.since_ms) / 1000,
            now.saturating_sub(self.renewed_ms) / 1000
        )
    }
}

/// The lease held by this process; renewed by a thread of its own until
/// it is dropped or released.
#[derive(Debug)]
pub struct BuildLock {
    path: PathBuf,
    run: String,
    /// Dropping it stops the renewing thread.
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    /// Whether dropping it releases the lease (one process's own build,
    /// which nothing else shares).
    release_on_drop: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// An id for a build that is one process (a compaction, a one-process
/// build): never another's.
pub fn own_run(what: &str) -> String {
    let host: String = host()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{what}-{host}-{}-{}", std::process::id(), now_ms())
}

fn lock_path(root: &Path) -> PathBuf {
    root.join(BUILD_LOCK_FILE)
}

/// A file name beside the lease, unique to this process and moment.
fn beside(path: &Path, tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_extension(format!("lock.{tag}.{}.{nanos}", std::process::id()))
}

/// The lease under `root`, if any.
pub fn read_lease(root: &Path) -> Result<Option<Lease>> {
    read_at(&lock_path(root))
}

fn read_at(path: &Path) -> Result<Option<Lease>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Config(format!(
                "{}: not a build lease ({e}); remove it if no build runs under {}",
                path.display(),
                path.parent().map_or(Path::new("."), |p| p).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `lease` to a new file beside `path` and returns that file.
fn write_beside(path: &Path, lease: &Lease, tag: &str) -> Result<PathBuf> {
    let tmp = beside(path, tag);
    let json = serde_json::to_vec_pretty(lease).map_err(|e| Error::invalid(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// What one attempt to take the lease found.
enum Attempt {
    Taken,
    Held(Lease),
    /// Another process changed the file meanwhile: look again.
    Again,
}

fn attempt(path: &Path, run: &str, what: &str, now: u64, stale: Duration) -> Result<Attempt> {
    match read_at(path)? {
        None => {
            let mine = Lease {
                run: run.to_owned(),
                what: what.to_owned(),
                host: host(),
                pid: std::process::id(),
                since_ms: now,
                renewed_ms: now,
            };
            let tmp = write_beside(path, &mine, "new")?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(Attempt::Taken),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Attempt::Again),
                Err(e) => Err(Error::io(path, e)),
            }
        }
        // A process of the same rebuild holds it: share it.
        Some(l) if l.run == run => {
            renew(path, run, now)?;
            Ok(Attempt::Taken)
        }
        Some(l) if now.saturating_sub(l.renewed_ms) > stale.as_millis() as u64 => {
            take_over(path, &l)?;
            Ok(Attempt::Again)
        }
        Some(l) => Ok(Attempt::Held(l)),
    }
}

/// Removes the stale lease `seen`: moved aside first, so that a lease
/// another process wrote meanwhile is put back, not removed.
fn take_over(path: &Path, seen: &Lease) -> Result<()> {
    let aside = beside(path, "stale");
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    }
    let moved = read_at(&aside);
    if !matches!(&moved, Ok(Some(l)) if l == seen) {
        // Not the lease judged stale: put it back unless another is there.
        let _ = std::fs::hard_link(&aside, path);
    } else {
        tracing::warn!(
            lease = %seen.describe(now_ms()),
            "took over a build lease nobody renewed"
        );
    }
    std::fs::remove_file(&aside).map_err(|e| Error::io(&aside, e))
}

/// Renews the lease at `path` if `run` holds it; leaves it alone (or
/// absent) otherwise.
fn renew(path: &Path, run: &str, now: u64) -> Result<()> {
    let Some(mut l) = read_at(path)? else {
        return Ok(());
    };
    if l.run != run {
        return Ok(());
    }
    l.renewed_ms = now;
    let tmp = write_beside(path, &l, "renew")?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Takes the build lease of the partitioned build under `root` for the
/// rebuild `run` (sharing it with that rebuild's other processes),
/// waiting up to `wait` while another rebuild holds it. `what` says what
/// this process does, for the messages of the builds it keeps waiting.
/// `own`: the lease is this process's alone and is released when the
/// returned guard is dropped, even on an error.
pub fn lock_build(
    root: &Path,
    run: &str,
    what: &str,
    wait: Duration,
    own: bool,
) -> Result<BuildLock> {
    lock_with(root, run, what, wait, own, STALE_AFTER, RENEW_EVERY)
}

fn lock_with(
    root: &Path,
    run: &str,
    what: &str,
    wait: Duration,
    own: bool,
    stale: Duration,
    every: Duration,
) -> Result<BuildLock> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let path = lock_path(root);
    let until = Instant::now() + wait;
    let mut told = false;
    loop {
        match attempt(&path, run, what, now_ms(), stale)? {
            Attempt::Taken => break,
            Attempt::Again => continue,
            Attempt::Held(other) => {
                let left = until.saturating_duration_since(Instant::now());
                let holder = other.describe(now_ms());
                if left.is_zero() {
                    return Err(Error::FailedPrecondition(format!(
                        "{} holds {}: one build at a time writes a partitioned build \
                         (a compaction, a rebuild's pods, a one-process build). Wait for it \
                         (--wait-lock SECONDS); if every process of it has stopped, the \
                         lease is taken over {} s after its last renewal",
                        holder,
                        path.display(),
                        stale.as_secs()
                    )));
                }
                if !told {
                    eprintln!(
                        "waiting for {holder} to finish (up to {} s)",
                        left.as_secs()
                    );
                    told = true;
                }
                std::thread::sleep(left.min(Duration::from_secs(1)));
            }
        }
    }
    let (tx, rx) = mpsc::channel::<()>();
    let renewer = {
        let (path, run) = (path.clone(), run.to_owned());
        std::thread::Builder::new()
            .name("build-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    if let Err(e) = renew(&path, &run, now_ms()) {
                        tracing::warn!(error = %e, "renewing the build lease");
                    }
                }
            })
            .map_err(|e| Error::Runtime(format!("starting the lease's renewer: {e}")))?
    };
    Ok(BuildLock {
        path,
        run: run.to_owned(),
        stop: Some(tx),
        renewer: Some(renewer),
        release_on_drop: own,
    })
}

impl BuildLock {
    /// Stops renewing and removes the lease: the rebuild is over.
    pub fn release(mut self) -> Result<()> {
        self.stop_renewing();
        release_at(&self.path, &self.run)
    }

    fn stop_renewing(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        self.stop_renewing();
        if self.release_on_drop {
            if let Err(e) = release_at(&self.path, &self.run) {
                tracing::warn!(error = %e, "releasing the build lease");
            }
        }
    }
}

/// Removes the lease under `root` if the rebuild `run` holds it (its
/// build is published or found served, whichever process finds so).
pub fn release_run(root: &Path, run: &str) -> Result<()> {
    release_at(&lock_path(root), run)
}

fn release_at(path: &Path, run: &str) -> Result<()> {
    match read_at(path)? {
        Some(l) if l.run == run => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    fn take(root: &Path, run: &str, wait: Duration) -> Result<BuildLock> {
        lock_with(root, run, "test", wait, false, LONG, LONG)
    }

    #[test]
    fn one_rebuild_holds_the_lease_and_its_pods_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = take(dir.path(), "a", Duration::ZERO).unwrap();
        // Another process of rebuild a shares it.
        let a2 = take(dir.path(), "a", Duration::ZERO).unwrap();
        // Rebuild b is refused at once, naming a; and after waiting.
        let e = take(dir.path(), "b", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rebuild a (test on") && e.contains("--wait-lock"),
            "{e}"
        );
        let started = Instant::now();
        assert!(take(dir.path(), "b", Duration::from_millis(1500)).is_err());
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // Dropping a process's guard keeps a shared lease; releasing it
        // (the rebuild published) frees it for b.
        drop(a2);
        assert_eq!(read_lease(dir.path()).unwrap().unwrap().run, "a");
        // b's release does not remove a's lease.
        release_run(dir.path(), "b").unwrap();
        assert!(read_lease(dir.path()).unwrap().is_some());
        a.release().unwrap();
        assert!(read_lease(dir.path()).unwrap().is_none());
        let b = take(dir.path(), "b", Duration::ZERO).unwrap();
        assert_eq!(read_lease(dir.path()).unwrap().unwrap().run, "b");
        drop(b);
        // Only the lease file is left: no temporary files beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![BUILD_LOCK_FILE.to_owned()]);
    }

    #[test]
    fn a_waiting_build_takes_the_lease_once_released_and_an_own_lease_goes_with_its_guard() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let own = lock_with(&root, "one", "compact", Duration::ZERO, true, LONG, LONG).unwrap();
        let waiter = {
            let root = root.clone();
            std::thread::spawn(move || take(&root, "next", Duration::from_secs(30)).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read_lease(&root).unwrap().unwrap().run, "one");
        drop(own);
        waiter.join().unwrap().unwrap();
        assert_eq!(read_lease(&root).unwrap().unwrap().run, "next");
    }

    #[test]
    fn a_lease_nobody_renews_is_taken_over_and_a_held_one_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stale = Duration::from_millis(400);
        let every = Duration::from_millis(50);
        // Renewed by its holder, the lease outlives the stale time.
        let held = lock_with(root, "a", "test", Duration::ZERO, false, stale, every).unwrap();
        let first = read_lease(root).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(900));
        let later = read_lease(root).unwrap().unwrap();
        assert!(later.renewed_ms > first.renewed_ms, "{first:?} {later:?}");
        assert_eq!(later.since_ms, first.since_ms);
        assert!(lock_with(root, "b", "test", Duration::ZERO, false, stale, every).is_err());
        // Its process gone (the guard dropped without a release), the
        // lease goes stale and b takes it over.
        drop(held);
        std::thread::sleep(Duration::from_millis(600));
        let b = lock_with(root, "b", "test", Duration::ZERO, false, stale, every).unwrap();
        assert_eq!(read_lease(root).unwrap().unwrap().run, "b");
        drop(b);
        // A file that is no lease is an error that names it.
        std::fs::write(lock_path(root), b"{").unwrap();
        let e = take(root, "c", Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("not a build lease"), "{e}");
    }

    #[test]
    fn an_own_run_is_a_valid_rebuild_id_and_new_each_time() {
        let a = own_run("compact");
        crate::pipeline::check_run(&a).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, own_run("compact"));
    }
}
