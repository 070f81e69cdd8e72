//! The exposure log: every list served under an experiment (request id,
//! time, user, experiment, arm, forced or not, items with positions and, in
//! interleaving, their teams) and every piece of feedback that names a
//! request id, appended under `ROOT/experiments/` for the report to join.
//!
//! Writes are group-committed: calls hand their entry to one writer thread
//! and return at once; the writer takes everything waiting (and whatever
//! arrives within `commit_ms`) and appends it as one frame of the
//! write-ahead-log format (`vecrec_index::wal`), with one fsync. So the
//! crash-loss window is what was handed over but not yet committed — at
//! most `commit_ms` plus one fsync of entries; everything committed before
//! a crash is kept, and a torn last frame is cut. Files rotate at
//! `rotate_bytes` (`exposures-000001.log`, `-000002`, …) and can be read
//! while written ([`read_all`]).
//!
//! Exposures are not acknowledged writes: the answer does not wait for
//! them, so that an experiment adds no fsync to `Recommend`'s latency.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vecrec_index::wal::{self, Wal};

use crate::config::ExperimentConfig;
use crate::error::{Error, Result};
use crate::layout::EXPOSURE_DIR;

/// One item of a served list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shown {
    /// External item id.
    pub item: String,
    /// 1-based position in the list.
    pub position: u32,
    /// In interleaving, the arm whose list placed it; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// A list served under an experiment.
    Exposure {
        /// The answer's id.
        request_id: String,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The user (empty for a forced arm without one).
        user: String,
        /// The experiment.
        experiment: String,
        /// The arm served (in interleaving, the treatment).
        arm: String,
        /// Whether the request forced the arm (left out of the analysis).
        forced: bool,
        /// The list.
        items: Vec<Shown>,
    },
    /// An experiment's definition as served from this time on (written
    /// when a server first logs an exposure of it, and after a reload that
    /// changed it), so the log describes itself.
    Definition {
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The experiment.
        experiment: String,
        /// `ab` or `interleave`.
        mode: String,
        /// Arm names and shares, control first.
        arms: Vec<(String, f64)>,
    },
    /// Feedback on a served list.
    Feedback {
        /// The answer it is about.
        request_id: String,
        /// Milliseconds since the Unix epoch.
        time_ms: u64,
        /// The user.
        user: String,
        /// The item acted on.
        item: String,
        /// `click`, `conversion`, or any other name.
        kind: String,
    },
}

impl Entry {
    /// The exposure of a list served under `plan`'s experiment and arm:
    /// `items` in order as (item id, team; empty outside interleaving).
    pub fn served<'a>(
        request_id: &str,
        time_ms: u64,
        user: &str,
        experiment: &ExperimentConfig,
        arm: usize,
        forced: bool,
        items: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Entry::Exposure {
            request_id: request_id.to_owned(),
            time_ms,
            user: user.to_owned(),
            experiment: experiment.name.clone(),
            arm: experiment.arms[arm].name.clone(),
            forced,
            items: items
                .into_iter()
                .enumerate()
                .map(|(i, (item, team))| Shown {
                    item: item.to_owned(),
                    position: i as u32 + 1,
                    team: team.to_owned(),
                })
                .collect(),
        }
    }

    /// `e`'s definition as served from `time_ms` on.
    pub fn definition(e: &ExperimentConfig, time_ms: u64) -> Self {
        Entry::Definition {
            time_ms,
            experiment: e.name.clone(),
            mode: e.mode.name().into(),
            arms: e.arms.iter().map(|a| (a.name.clone(), a.share)).collect(),
        }
    }

    /// When it was logged, in milliseconds since the Unix epoch.
    pub fn time_ms(&self) -> u64 {
        match self {
            Entry::Exposure { time_ms, .. }
            | Entry::Definition { time_ms, .. }
            | Entry::Feedback { time_ms, .. } => *time_ms,
        }
    }

    /// A click (or other `kind`; empty means click) by `user` on `item` of
    /// the list `request_id` answered.
    pub fn feedback(request_id: &str, time_ms: u64, user: &str, item: &str, kind: &str) -> Self {
        Entry::Feedback {
            request_id: request_id.to_owned(),
            time_ms,
            user: user.to_owned(),
            item: item.to_owned(),
            kind: if kind.is_empty() { "click" } else { kind }.to_owned(),
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Group-commit settings.
#[derive(Clone, Copy, Debug)]
pub struct Commit {
    /// How long the writer waits for more entries after the first.
    pub window: Duration,
    /// File size at which a new file is started.
    pub rotate_bytes: u64,
}

impl Default for Commit {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(20),
            rotate_bytes: 64 << 20,
        }
    }
}

enum Msg {
    Entry(Box<Entry>),
    Flush(SyncSender<Result<()>>),
}

/// The log's writer.
#[derive(Debug)]
pub struct ExposureLog {
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn file_name(n: u64) -> String {
    format!("exposures-{n:06}.log")
}

/// The log files under `root`, in order.
pub fn files(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(numbered(root)?.into_iter().map(|x| x.1).collect())
}

/// The log files under `root` with their numbers, in order.
fn numbered(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = root.join(EXPOSURE_DIR);
    let mut v: Vec<(u64, PathBuf)> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let n = name
                    .strip_prefix("exposures-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((n, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    v.sort();
    Ok(v)
}

/// Every committed entry under `root`, oldest first (a torn frame at the
/// end of the newest file, an append in progress, is left out).
pub fn read_all(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for f in files(root)? {
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        for (seq, payload) in wal::read_records(&f, &bytes)? {
            let e = serde_json::from_slice(&payload)
                .map_err(|e| Error::invalid(format!("{}: record {seq}: {e}", f.display())))?;
            out.push(e);
        }
    }
    Ok(out)
}

/// `dir` when it holds an exposure log (`dir/experiments/`), otherwise
/// each of its subdirectories that holds one, in name order (the
/// exposure roots of several router replicas under one directory).
pub fn roots_under(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(EXPOSURE_DIR).is_dir() {
        return Ok(vec![dir.to_owned()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(EXPOSURE_DIR).is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Every committed entry under each of `roots` (a server's index root,
/// each router replica's exposure root), merged in time order (the report
/// joins feedback to its list by request id in any order; the order gives
/// the latest definition and the lift over time).
pub fn read_roots(roots: &[&Path]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for root in roots {
        out.extend(read_all(root)?);
    }
    if roots.len() > 1 {
        out.sort_by_key(Entry::time_ms);
    }
    Ok(out)
}

impl ExposureLog {
    /// Starts the writer for the log under `root` (the directory and the
    /// first file are made when the first entry arrives).
    pub fn start(root: &Path, commit: Commit) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(1 << 16);
        let root = root.to_owned();
        let writer = std::thread::Builder::new()
            .name("vecrec-exposures".into())
            .spawn(move || write_loop(&root, commit, rx))
            .map_err(|e| Error::invalid(format!("cannot start the exposure writer: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Hands `entry` to the writer (waits only if 65,536 entries are
    /// already waiting).
    pub fn record(&self, entry: Entry) {
        if let Some(tx) = self.tx.lock().as_ref() {
            let _ = tx.send(Msg::Entry(Box::new(entry)));
        }
    }

    /// Waits until everything handed over so far is committed.
    pub fn flush(&self) -> Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        let sent = self
            .tx
            .lock()
            .as_ref()
            .map(|tx| tx.send(Msg::Flush(done)).is_ok());
        match sent {
            Some(true) => wait
                .recv()
                .map_err(|_| Error::invalid("the exposure writer stopped"))?,
            _ => Ok(()),
        }
    }
}

impl Drop for ExposureLog {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what is left and end.
        self.tx.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

/// The writer: collects a batch, appends it as one frame, repeats.
fn write_loop(root: &Path, commit: Commit, rx: Receiver<Msg>) {
    let mut out: Option<(Wal, u64)> = None;
    let mut closed = false;
    while !closed {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |m: Msg| match m {
            Msg::Entry(e) => batch.push(e),
            Msg::Flush(done) => flushes.push(done),
        };
        take(first);
        let until = Instant::now() + commit.window;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => take(m),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let result = append(root, commit, &mut out, &batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = batch.len(), "exposure log: entries lost");
        }
        for done in flushes {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::invalid(e.to_string())),
            });
        }
    }
}

fn append(
    root: &Path,
    commit: Commit,
    out: &mut Option<(Wal, u64)>,
    batch: &[Box<Entry>],
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if out
        .as_ref()
        .is_none_or(|(w, _)| w.data_len() >= commit.rotate_bytes)
    {
        let next = match out.take() {
            Some((_, n)) => n + 1,
            None => numbered(root)?.last().map_or(1, |x| x.0 + 1),
        };
        let path = root.join(EXPOSURE_DIR).join(file_name(next));
        let (w, _) = Wal::open(&path)?;
        *out = Some((w, next));
    }
    let payloads = batch
        .iter()
        .map(|e| serde_json::to_vec(e).map_err(|e| Error::invalid(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let (w, _) = out.as_mut().expect("opened above");
    w.append(&payloads)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(i: usize) -> Entry {
        Entry::Exposure {
            request_id: format!("r{i}"),
            time_ms: now_ms(),
            user: format!("u{}", i % 7),
            experiment: "e".into(),
            arm: if i.is_multiple_of(2) { "control" } else { "b" }.into(),
            forced: false,
            items: (1..=3)
                .map(|p| Shown {
                    item: format!("i{p}"),
                    position: p,
                    team: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn entries_are_group_committed_rotated_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = ExposureLog::start(
            dir.path(),
            Commit {
                window: Duration::from_millis(5),
                rotate_bytes: 2_000,
            },
        )
        .unwrap();
        // Four commits (each flush ends one), each over the rotation size.
        for i in 0..200 {
            log.record(exposure(i));
            if i % 50 == 49 {
                log.flush().unwrap();
            }
        }
        // Readable while the writer is still open.
        let got = read_all(dir.path()).unwrap();
        assert_eq!(got.len(), 200);
        assert_eq!(got[0], exposure(0).with_time(&got[0]));
        assert_eq!(
            files(dir.path()).unwrap().len(),
            4,
            "one file per commit over 2,000 bytes"
        );
        log.record(Entry::Feedback {
            request_id: "r3".into(),
            time_ms: now_ms(),
            user: "u3".into(),
            item: "i2".into(),
            kind: "click".into(),
        });
        drop(log); // commits what is left
        let got = read_all(dir.path()).unwrap();
        assert_eq!(got.len(), 201);
        assert!(matches!(&got[200], Entry::Feedback { kind, .. } if kind == "click"));
        // A new writer continues after the last file.
        let before = files(dir.path()).unwrap().len();
        let log = ExposureLog::start(dir.path(), Commit::default()).unwrap();
        log.record(exposure(1));
        log.flush().unwrap();
        assert_eq!(files(dir.path()).unwrap().len(), before + 1);
        assert_eq!(read_all(dir.path()).unwrap().len(), 202);
    }

    impl Entry {
        /// This entry with the time of `other` (times differ by design).
        fn with_time(mut self, other: &Entry) -> Entry {
            if let (Entry::Exposure { time_ms, .. }, Entry::Exposure { time_ms: t, .. }) =
                (&mut self, other)
            {
                *time_ms = *t;
            }
            self
        }
    }
}
