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
//! machines over shared storage, where `flock` may not reach.
//! - The file names the rebuild (`--run`) holding it; every process of
//!   that rebuild touches its modification time every [`RENEW_EVERY`]
//!   while it runs (a touch never rewrites a lease another build holds).
//!   The pods of one rebuild share it; it is theirs until the build that
//!   cuts the last shard publishes, or a pod finds the build served.
//! - A lease whose rebuild is published or found served is free.
//! - A lease nobody touched for [`STALE_AFTER`] belongs to a rebuild none
//!   of whose processes runs, and the next build takes it over. That
//!   rebuild is then marked abandoned (`OUT/abandoned-runs/<run>`): the
//!   other build may have cleared its pending front, so its late pods
//!   stop at once instead of building on what is gone.
//! - Before it publishes or writes `OUT/folded/`, a build checks that it
//!   still holds its lease ([`check_held`]), so one that lost it (paused
//!   past the stale time) publishes nothing.
//!
//! Taking a lease is a hard link of a fully written file (it fails if one
//! is there), so a reader never sees one half written, and taking over a
//! stale one moves it aside first and checks it is the one judged stale.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{
    front_root, PendingFront, BUILD_LOCK_FILE, PUBLISHED_FRONT_FILE, SERVED_RUNS_DIR,
};

/// How often a holder touches its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(15);
/// A lease not touched for this long is taken over: every process of its
/// rebuild stopped (long enough for a pod to be rescheduled or retried;
/// the pods' clocks may differ by much less).
pub const STALE_AFTER: Duration = Duration::from_secs(600);
/// Directory under the root naming the rebuilds whose lease was taken
/// over.
pub const ABANDONED_DIR: &str = "abandoned-runs";
/// Directory under the root naming the rebuilds whose build is
/// published or found served: a lease they leave is free, and a late pod
/// of one takes none.
pub const FINISHED_DIR: &str = "finished-runs";
/// Abandoned and finished rebuilds remembered, each.
const KEPT_RUNS: usize = 32;

/// What the lease file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The rebuild holding it: a split rebuild's `--run`, or an id of
    /// one process's own.
    pub run: String,
    /// What the process that took it does (`compact`, `build`,
    /// `front-only`, ...).
    pub what: String,
    /// The host that took it.
    pub host: String,
    /// The process that took it.
    pub pid: u32,
    /// When it was taken, in ms since the Unix epoch.
    pub since_ms: u64,
}

impl Lease {
    fn describe(&self, renewed_ms: u64, now: u64) -> String {
        format!(
            "rebuild {} ({} on {}, pid {}, for {} s, renewed {} s ago)",
            self.run,
            self.what,
            self.host,
            self.pid,
            now.saturating_sub(self.since_ms) / 1000,
            now.saturating_sub(renewed_ms) / 1000
        )
    }
}

/// A lease this process holds while its guard lives.
#[derive(Clone, Debug)]
struct Holding {
    /// The guard's own number.
    id: u64,
    path: PathBuf,
    run: String,
    stale: Duration,
}

/// The leases this process holds.
static HELD: std::sync::Mutex<Vec<Holding>> = std::sync::Mutex::new(Vec::new());
static NEXT_GUARD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn held() -> std::sync::MutexGuard<'static, Vec<Holding>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lease held by this process; touched by a thread of its own until
/// it is dropped or released.
#[derive(Debug)]
pub struct BuildLock {
    id: u64,
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
    ms(SystemTime::now())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
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

/// The lease under `root`, if any, with when it was last renewed (ms
/// since the Unix epoch).
pub fn read_lease(root: &Path) -> Result<Option<(Lease, u64)>> {
    read_at(&lock_path(root))
}

fn read_at(path: &Path) -> Result<Option<(Lease, u64)>> {
    use std::io::Read;
    let read = || -> std::io::Result<(Vec<u8>, SystemTime)> {
        let mut f = std::fs::File::open(path)?;
        let modified = f.metadata()?.modified()?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok((bytes, modified))
    };
    match read() {
        Ok((bytes, modified)) => {
            let lease: Lease = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!(
                    "{}: not a build lease ({e}); remove it if no build runs under {}",
                    path.display(),
                    path.parent().map_or(Path::new("."), |p| p).display()
                ))
            })?;
            Ok(Some((lease, ms(modified))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Takes the lease `lease` at `path` if there is none: false if another
/// process made one first.
fn create(path: &Path, lease: &Lease) -> Result<bool> {
    let tmp = beside(path, "new");
    let json = serde_json::to_vec_pretty(lease).map_err(|e| Error::invalid(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()
    };
    let written = write().map_err(|e| Error::io(&tmp, e));
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    });
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Touches the lease at `path` if the rebuild `run` holds it; whether it
/// did. A lease another build took meanwhile is only touched, never
/// rewritten.
fn renew(path: &Path, run: &str, now: u64) -> Result<bool> {
    match read_at(path)? {
        Some((l, _)) if l.run == run => {}
        _ => return Ok(false),
    }
    // Setting the time needs the file's owner: every build of one root
    // runs as one user (the manifests' 10001).
    let touch = || -> std::io::Result<u64> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_modified(UNIX_EPOCH + Duration::from_millis(now))?;
        Ok(ms(f.metadata()?.modified()?))
    };
    match touch() {
        Ok(kept) if kept.abs_diff(now) <= 2000 => Ok(true),
        Ok(kept) => Err(Error::io(
            path,
            std::io::Error::other(format!(
                "the file system kept the time {kept} ms for {now} ms: it cannot hold a lease"
            )),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Removes the lease `seen`, last renewed at `renewed`: moved aside
/// first, and put back if it is not that one (another build's, renewed
/// meanwhile). With `abandon` (the root, the rebuild taking over), its
/// rebuild is marked abandoned before the lease is gone, so no late pod
/// of it can take a lease meanwhile unmarked. Whether it was removed.
fn take_over(
    path: &Path,
    seen: &Lease,
    renewed: u64,
    abandon: Option<(&Path, &str)>,
) -> Result<bool> {
    let aside = beside(path, "old");
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    let moved = read_at(&aside);
    let same = matches!(&moved, Ok(Some((l, r))) if l == seen && *r == renewed);
    if !same {
        // Another's lease: back in place unless a newer one is there
        // (whose holder then finds its own gone: `check_held`).
        if let Err(e) = std::fs::hard_link(&aside, path) {
            tracing::warn!(error = %e, "could not put back a build lease moved aside; its holder will find it lost");
        }
    } else if let Some((root, by)) = abandon {
        if let Err(e) = mark_run(
            root,
            ABANDONED_DIR,
            &seen.run,
            &format!("taken over by rebuild {by}"),
        ) {
            let _ = std::fs::hard_link(&aside, path);
            let _ = std::fs::remove_file(&aside);
            return Err(e);
        }
    }
    std::fs::remove_file(&aside).map_err(|e| Error::io(&aside, e))?;
    Ok(same)
}

/// Whether the rebuild `run`'s build under `root` is published or was
/// found served: its lease, if left, is free.
fn run_finished(root: &Path, run: &str) -> bool {
    if root.join(FINISHED_DIR).join(run).is_file() {
        return true;
    }
    let front = front_root(root);
    if front
        .join(SERVED_RUNS_DIR)
        .join(format!("{run}.json"))
        .is_file()
    {
        return true;
    }
    std::fs::read(front.join(PUBLISHED_FRONT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<PendingFront>(&b).ok())
        .is_some_and(|p| p.run.as_deref() == Some(run))
}

fn abandoned_marker(root: &Path, run: &str) -> PathBuf {
    root.join(ABANDONED_DIR).join(run)
}

/// Records `run` under `dir` ([`ABANDONED_DIR`], [`FINISHED_DIR`]) with
/// `what`, keeping the newest [`KEPT_RUNS`] records.
fn mark_run(root: &Path, dir: &str, run: &str, what: &str) -> Result<()> {
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(run);
    std::fs::write(&path, format!("{what} at {} ms\n", now_ms()))
        .map_err(|e| Error::io(&path, e))?;
    if let Err(e) = prune_markers(&dir, KEPT_RUNS) {
        tracing::warn!(error = %e, "cannot remove old rebuild records");
    }
    Ok(())
}

/// Removes all but the `keep` newest files of `dir` (by modification
/// time); one removed meanwhile by another process is no error.
pub(super) fn prune_markers(dir: &Path, keep: usize) -> Result<()> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let extra = files.len().saturating_sub(keep);
    for (_, f) in files.drain(..extra) {
        removed(std::fs::remove_file(&f), &f)?;
    }
    Ok(())
}

/// The result of removing `path`: fine if it was not there.
pub(super) fn removed(r: std::io::Result<()>, path: &Path) -> Result<()> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Fails if the rebuild `run` was marked abandoned (its lease taken over
/// after `stale` without renewal).
fn check_not_abandoned(root: &Path, run: &str, stale: Duration) -> Result<()> {
    let marker = abandoned_marker(root, run);
    if !marker.is_file() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "rebuild {run} stopped renewing its build lease for {} s and another build took {} \
         over ({}), which may have cleared its pending front: start the rebuild again \
         with a new --run",
        stale.as_secs(),
        root.display(),
        std::fs::read_to_string(&marker).unwrap_or_default().trim()
    )))
}

/// What one attempt to take the lease found.
enum Attempt {
    Taken,
    /// The rebuild's build is published or served: nothing to hold.
    Finished,
    Held(Lease, u64),
    /// Another process changed the file meanwhile: look again.
    Again,
}

fn attempt(root: &Path, run: &str, what: &str, now: u64, stale: Duration) -> Result<Attempt> {
    check_not_abandoned(root, run, stale)?;
    if run_finished(root, run) {
        return Ok(Attempt::Finished);
    }
    let path = lock_path(root);
    let is_stale = |renewed: u64| now.saturating_sub(renewed) > stale.as_millis() as u64;
    let mine = || Lease {
        run: run.to_owned(),
        what: what.to_owned(),
        host: host(),
        pid: std::process::id(),
        since_ms: now,
    };
    Ok(match read_at(&path)? {
        None if create(&path, &mine())? => Attempt::Taken,
        None => Attempt::Again,
        // A process of the same rebuild holds it: share it.
        Some((l, renewed)) if l.run == run && !is_stale(renewed) => {
            if renew(&path, run, now)? {
                Attempt::Taken
            } else {
                Attempt::Again
            }
        }
        // This rebuild's, lapsed, and nobody took it over: no other build
        // ran meanwhile, so it goes on.
        Some((l, renewed)) if l.run == run => {
            take_over(&path, &l, renewed, None)?;
            Attempt::Again
        }
        Some((l, renewed)) if run_finished(root, &l.run) => {
            take_over(&path, &l, renewed, None)?;
            Attempt::Again
        }
        Some((l, renewed)) if is_stale(renewed) => {
            if take_over(&path, &l, renewed, Some((root, run)))? {
                tracing::warn!(
                    lease = %l.describe(renewed, now),
                    "took over a build lease nobody renewed; that rebuild is abandoned"
                );
            }
            Attempt::Again
        }
        Some((l, renewed)) => Attempt::Held(l, renewed),
    })
}

/// Takes the build lease of the partitioned build under `root` for the
/// rebuild `run` (sharing it with that rebuild's other processes),
/// waiting up to `wait` while another rebuild holds it. `what` says what
/// this process does, for the messages of the builds it keeps waiting.
/// `own`: the lease is this process's alone and is released when the
/// returned guard is dropped, even on an error. `None`: the rebuild's
/// build is published or found served already, so this process has
/// nothing to do.
pub fn lock_build(
    root: &Path,
    run: &str,
    what: &str,
    wait: Duration,
    own: bool,
) -> Result<Option<BuildLock>> {
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
) -> Result<Option<BuildLock>> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let path = lock_path(root);
    let until = Instant::now() + wait;
    let mut told = false;
    let mut races = 0;
    loop {
        match attempt(root, run, what, now_ms(), stale)? {
            Attempt::Taken => break,
            Attempt::Finished => return Ok(None),
            Attempt::Again => {
                races += 1;
                if races > 100 {
                    return Err(Error::Runtime(format!(
                        "{}: the build lease kept changing under this build; try again",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Attempt::Held(other, renewed) => {
                races = 0;
                let left = until.saturating_duration_since(Instant::now());
                let holder = other.describe(renewed, now_ms());
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
    // Marked abandoned while this took the lease (a taker removed the old
    // one just before): the rebuild is over, whatever this one holds.
    if let Err(e) = check_not_abandoned(root, run, stale) {
        release_at(&path, run);
        return Err(e);
    }
    // Renewed once now: a file system or a user that cannot keep the
    // lease fails here, not after the work.
    if !renew(&path, run, now_ms())? {
        return Err(Error::FailedPrecondition(format!(
            "{}: another build took the lease as rebuild {run} took it; try again",
            path.display()
        )));
    }
    let id = NEXT_GUARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    held().push(Holding {
        id,
        path: path.clone(),
        run: run.to_owned(),
        stale,
    });
    let (tx, rx) = mpsc::channel::<()>();
    let renewer = {
        let (path, run) = (path.clone(), run.to_owned());
        std::thread::Builder::new()
            .name("build-lease".into())
            .spawn(move || {
                let mut lost = false;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match renew(&path, &run, now_ms()) {
                        Ok(true) => lost = false,
                        Ok(false) if !lost => {
                            lost = true;
                            tracing::warn!(path = %path.display(), run, "the build lease is no longer this rebuild's");
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "renewing the build lease"),
                    }
                }
            })
            .map_err(|e| Error::Runtime(format!("starting the lease's renewer: {e}")))?
    };
    Ok(Some(BuildLock {
        id,
        path,
        run: run.to_owned(),
        stop: Some(tx),
        renewer: Some(renewer),
        release_on_drop: own,
    }))
}

impl BuildLock {
    /// Stops renewing and removes the lease: the rebuild is over.
    pub fn release(mut self) {
        self.stop_renewing();
        release_at(&self.path, &self.run);
    }

    fn stop_renewing(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let id = self.id;
        held().retain(|h| h.id != id);
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        self.stop_renewing();
        if self.release_on_drop {
            release_at(&self.path, &self.run);
        }
    }
}

/// Fails unless this process still holds the lease it took of the
/// partitioned build under `root` (a build that took none passes): run
/// before a build publishes or writes its folded inputs, so one whose
/// lease was taken over writes nothing more.
pub fn check_held(root: &Path) -> Result<()> {
    let path = lock_path(root);
    let holding: Vec<Holding> = held().iter().filter(|h| h.path == path).cloned().collect();
    for h in holding {
        check_one(&path, &h.run, h.stale)?;
    }
    Ok(())
}

fn check_one(path: &Path, run: &str, stale: Duration) -> Result<()> {
    let now = now_ms();
    match read_at(path)? {
        Some((l, renewed))
            if l.run == run && now.saturating_sub(renewed) <= stale.as_millis() as u64 =>
        {
            Ok(())
        }
        other => Err(Error::FailedPrecondition(format!(
            "rebuild {run} no longer holds {} ({}), so it stops here without publishing: \
             start it again",
            path.display(),
            match other {
                Some((l, renewed)) => format!("now {}", l.describe(renewed, now)),
                None => "it is gone".into(),
            }
        ))),
    }
}

/// Removes the lease under `root` if the rebuild `run` holds it (its
/// build is published or found served, whichever process finds so). A
/// failure is logged, not returned: the build is done, and a lease left
/// behind is free once its run is found published.
pub fn release_run(root: &Path, run: &str) {
    if let Err(e) = mark_run(root, FINISHED_DIR, run, "published or found served") {
        tracing::warn!(error = %e, run, "recording a finished rebuild");
    }
    release_at(&lock_path(root), run);
}

fn release_at(path: &Path, run: &str) {
    held().retain(|h| !(h.path == path && h.run == run));
    let removed = match read_at(path) {
        Ok(Some((l, _))) if l.run == run => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        },
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(error = %e, run, "releasing the build lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// The guard of a lease taken for a rebuild not finished.
    fn some(taken: Result<Option<BuildLock>>) -> Result<BuildLock> {
        taken.map(|l| l.expect("not finished"))
    }

    fn take(root: &Path, run: &str, wait: Duration) -> Result<BuildLock> {
        some(lock_with(root, run, "test", wait, false, LONG, LONG))
    }

    fn run_of(root: &Path) -> Option<String> {
        read_lease(root).unwrap().map(|(l, _)| l.run)
    }

    /// Moves the lease's last renewal `ago` into the past.
    fn age(root: &Path, ago: Duration) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(lock_path(root))
            .unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
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
        let e = take(dir.path(), "b", Duration::from_millis(1500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rebuild a (test on"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // Dropping a process's guard keeps a shared lease; releasing it
        // (the rebuild published) frees it for b.
        drop(a2);
        assert_eq!(run_of(dir.path()).as_deref(), Some("a"));
        // Another rebuild's release does not remove a's lease.
        release_run(dir.path(), "x");
        assert_eq!(run_of(dir.path()).as_deref(), Some("a"));
        a.release();
        assert_eq!(run_of(dir.path()), None);
        let b = take(dir.path(), "b", Duration::ZERO).unwrap();
        assert_eq!(run_of(dir.path()).as_deref(), Some("b"));
        drop(b);
        // Only the lease file is left: no temporary files beside it.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [BUILD_LOCK_FILE, FINISHED_DIR]);
    }

    #[test]
    fn a_waiting_build_takes_the_lease_once_released_and_an_own_lease_goes_with_its_guard() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let own = some(lock_with(
            &root,
            "one",
            "compact",
            Duration::ZERO,
            true,
            LONG,
            LONG,
        ))
        .unwrap();
        let waiter = {
            let root = root.clone();
            std::thread::spawn(move || take(&root, "next", Duration::from_secs(30)).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(run_of(&root).as_deref(), Some("one"));
        drop(own);
        waiter.join().unwrap().unwrap();
        assert_eq!(run_of(&root).as_deref(), Some("next"));
    }

    #[test]
    fn a_held_lease_is_renewed_and_a_stale_one_taken_over_and_its_rebuild_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let stale = Duration::from_secs(60);
        let every = Duration::from_millis(50);
        let quick = |run: &str| {
            some(lock_with(
                root,
                run,
                "test",
                Duration::ZERO,
                false,
                stale,
                every,
            ))
        };
        // Renewed by its holder, the lease stays fresh.
        let held = quick("a").unwrap();
        age(root, Duration::from_secs(50));
        std::thread::sleep(Duration::from_millis(300));
        let (lease, renewed) = read_lease(root).unwrap().unwrap();
        assert!(now_ms() - renewed < 1000, "not renewed");
        assert_eq!(lease.run, "a");
        assert!(quick("b").is_err());
        check_held(root).unwrap();
        // Its processes gone (the guard dropped without a release), the
        // lease goes stale and b takes it over.
        drop(held);
        age(root, Duration::from_secs(61));
        let b = quick("b").unwrap();
        assert_eq!(run_of(root).as_deref(), Some("b"));
        // A late pod of a stops at once: b may have cleared its front.
        let e = quick("a").unwrap_err().to_string();
        assert!(
            e.contains("rebuild a stopped renewing") && e.contains("taken over by rebuild b"),
            "{e}"
        );
        drop(b);
        // b's own lease, lapsed with nobody taking it: b goes on.
        age(root, Duration::from_secs(61));
        let b = quick("b").unwrap();
        assert!(!abandoned_marker(root, "b").exists());
        drop(b);
        // A file that is no lease is an error that names it.
        std::fs::write(lock_path(root), b"{").unwrap();
        let e = take(root, "c", Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("not a build lease"), "{e}");
    }

    #[test]
    fn a_build_that_lost_its_lease_is_told_and_a_finished_rebuild_leaves_it_free() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let a = take(root, "a", Duration::ZERO).unwrap();
        check_held(root).unwrap();
        // Taken over behind its back (it was paused past the stale time).
        std::fs::remove_file(lock_path(root)).unwrap();
        let e = check_held(root).unwrap_err().to_string();
        assert!(
            e.contains("rebuild a no longer holds") && e.contains("it is gone"),
            "{e}"
        );
        let b = take(root, "b", Duration::ZERO).unwrap();
        let e = check_held(root).unwrap_err().to_string();
        assert!(
            e.contains("rebuild a no longer holds") && e.contains("now rebuild b"),
            "{e}"
        );
        drop(a);
        check_held(root).unwrap();
        drop(b);
        // Rebuild b published: its lease, left behind, is free at once.
        let front = front_root(root);
        std::fs::create_dir_all(&front).unwrap();
        let published = PendingFront {
            generation: "gen-000002".into(),
            shards: 2,
            inputs: "d".into(),
            interactions: (0, 0),
            folded_through: Vec::new(),
            run: Some("b".into()),
        };
        std::fs::write(
            front.join(PUBLISHED_FRONT_FILE),
            serde_json::to_vec(&published).unwrap(),
        )
        .unwrap();
        let c = take(root, "c", Duration::ZERO).unwrap();
        assert_eq!(run_of(root).as_deref(), Some("c"));
        assert!(!abandoned_marker(root, "b").exists());
        c.release();
        assert!(!held().iter().any(|h| h.path == lock_path(root)));
        // A late process of the published rebuild b takes no lease.
        assert!(
            lock_with(root, "b", "test", Duration::ZERO, false, LONG, LONG)
                .unwrap()
                .is_none()
        );
        // Nor of one released as done (published by a pod of its own).
        release_run(root, "d");
        assert!(
            lock_with(root, "d", "test", Duration::ZERO, false, LONG, LONG)
                .unwrap()
                .is_none()
        );
        assert_eq!(run_of(root), None);
    }

    #[test]
    fn an_own_run_is_a_valid_rebuild_id_and_new_each_time() {
        let a = own_run("compact");
        crate::pipeline::check_run(&a).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, own_run("compact"));
    }
}
