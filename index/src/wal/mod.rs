//! A write-ahead log: numbered, checksummed records appended to one file and
//! fsynced before the caller acknowledges anything.
//!
//! File (version 2): the 16-byte header `VECRECWL` + format version (u32) +
//! 4 zero bytes, then one *frame* per append, then zeros to the end of the
//! file. A frame `[first_seq u64][count u32][len u32][crc32 u32][body]` holds
//! the `count` records of one append, numbered `first_seq..first_seq+count`
//! (body: `count × [len u32][payload]`; the checksum covers `first_seq`,
//! `count` and the body), little-endian, with numbers strictly increasing
//! from frame to frame.
//!
//! The file's length is always a whole number of [`SEGMENT`]s and the last
//! frame is always followed by at least one all-zero frame header: the log
//! grows by extending the file with zeros (fsynced) before any record is
//! written there. So a crash cannot change the length, and what a crash can
//! leave behind is one thing only: the frame of the append in progress,
//! partly written and never acknowledged, followed by zeros (a *torn tail*).
//! [`Wal::open`] cuts that off. Everything else that does not read back is
//! damage that may hold acknowledged writes, and stops the open with the
//! byte offset and the last intact record: a damaged frame followed by
//! intact ones, a frame or the end marker cut off by the end of the file, a
//! length that is not a whole number of segments, a file shorter than its
//! header. [`check`] tells what is intact and what would be lost;
//! [`repair`] keeps every intact frame (also those after the damage) and
//! saves the damaged file beside it.
//!
//! Version-1 logs (one record per frame, no padding) are read with the old
//! rule (a damaged tail is cut) and rewritten as version 2 on open.
//!
//! [`Wal::retain_after`] rewrites the log without the records a compaction
//! has folded into a generation (temp file, fsync, rename).
//!
//! One process writes a directory's logs: [`Wal::open`] (and [`repair`])
//! first take an exclusive lock on `LOCK` beside the log ([`WriterLock`]),
//! held while the log is open, and a second writer is refused. Two writers
//! would number records independently and interleave their frames, which
//! the next open reads as damage.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};

mod scan;
use scan::scan;
pub use scan::Damage;
mod tail;
pub use tail::{Followed, Tail};

const MAGIC: [u8; 8] = *b"VECRECWL";
const VERSION: u32 = 2;
const HEADER: usize = 16;
const FRAME_HEADER: usize = 20;
const V1_RECORD_HEADER: usize = 16;
/// The log grows in steps of this many bytes.
pub const SEGMENT: usize = 1 << 20;
/// Largest record accepted on append and on replay.
pub const MAX_RECORD: usize = 64 << 20;
/// Largest frame (one append) accepted on replay.
const MAX_FRAME: usize = 256 << 20;

/// One replayed record: its sequence number and payload.
pub type Record = (u64, Vec<u8>);

/// The lock that makes one process the only writer of the logs in a
/// directory: an exclusive `flock` on `LOCK` in it, held while this lives
/// (the kernel drops it when the process ends, however it ends). It is a
/// file of its own because the logs themselves are replaced by renames.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Takes the lock of the directory holding `log`, or refuses at once
    /// when another writer holds it.
    pub fn acquire(log: &Path) -> Result<Self> {
        let dir = match log.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "another process is writing {} (a second `vecrec serve` on the same \
                         index root?); each server that takes writes needs an index root of \
                         its own, or it follows the writer's log (`vecrec serve --follow-log`)",
                        log.display()
                    ),
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path, e)),
        }
    }
}

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    /// Held while the log is open: no other process writes it.
    _lock: WriterLock,
    path: PathBuf,
    file: File,
    next_seq: u64,
    /// Where the next frame goes.
    end: u64,
    /// The file's length (a whole number of segments).
    len: u64,
    /// Where [`Wal::open`] cut off a torn tail, if it did.
    cut: Option<u64>,
}

fn io(path: &Path, e: std::io::Error) -> IndexError {
    IndexError::Io {
        path: path.to_owned(),
        source: e,
    }
}

fn corrupt(path: &Path, reason: String) -> IndexError {
    IndexError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

fn header(version: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn frame_crc(first_seq: u64, count: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&first_seq.to_le_bytes());
    h.update(&count.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Appends the frame of `payloads`, numbered from `first_seq`, to `buf`.
fn encode_frame(buf: &mut Vec<u8>, first_seq: u64, payloads: &[&[u8]]) {
    let mut body = Vec::with_capacity(payloads.iter().map(|p| 4 + p.len()).sum());
    for p in payloads {
        body.extend_from_slice(&(p.len() as u32).to_le_bytes());
        body.extend_from_slice(p);
    }
    let count = payloads.len() as u32;
    buf.extend_from_slice(&first_seq.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&frame_crc(first_seq, count, &body).to_le_bytes());
    buf.extend_from_slice(&body);
}

/// The length of a file holding `data` bytes of header and frames: whole
/// segments, with room for an all-zero frame header after the data.
fn padded(data: usize) -> usize {
    (data + FRAME_HEADER).div_ceil(SEGMENT) * SEGMENT
}

/// A whole log image: header, one frame per record, zero padding; and
/// where its frames end (where the next append goes).
fn image<'a>(records: impl IntoIterator<Item = &'a Record>) -> (Vec<u8>, usize) {
    let mut buf = header(VERSION).to_vec();
    for (seq, p) in records {
        encode_frame(&mut buf, *seq, &[p]);
    }
    let end = buf.len();
    buf.resize(padded(end), 0);
    (buf, end)
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io(path, e))
}

/// What [`check`] found in a log.
#[derive(Debug)]
pub struct Report {
    /// The format version on disk.
    pub version: u32,
    /// Intact records before any damage.
    pub records: usize,
    /// Number of the last of them (0 if none).
    pub last_seq: u64,
    /// Where they end.
    pub end: u64,
    /// The file's length.
    pub file_len: u64,
    /// Damage, if any.
    pub damage: Option<Damage>,
}

/// Reads the log at `path` without changing it and tells what is intact.
pub fn check(path: &Path) -> Result<Report> {
    let bytes = read_all(path)?;
    let s = scan(path, &bytes)?;
    let records: Vec<&Record> = s.frames.iter().flat_map(|f| &f.records).collect();
    Ok(Report {
        version: s.version,
        records: records.len(),
        last_seq: records.last().map_or(0, |r| r.0),
        end: s.end as u64,
        file_len: bytes.len() as u64,
        damage: s.damage,
    })
}

/// A clean log image of the intact records in `bytes` (a copy of a log,
/// perhaps taken while an append was in progress): the torn frame of that
/// append is left out, any other damage is an error. Returns the image, the
/// number of the last record in it (0 if none) and how many it holds.
pub fn intact_image(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, u64, usize)> {
    let records = read_records(path, bytes)?;
    Ok((
        image(&records).0,
        records.last().map_or(0, |r| r.0),
        records.len(),
    ))
}

/// The intact records of a log image `bytes` (a log perhaps being
/// appended to: the torn frame of an append in progress is left out); any
/// other damage is an error.
pub fn read_records(path: &Path, bytes: &[u8]) -> Result<Vec<Record>> {
    let s = scan(path, bytes)?;
    if let Some(d) = s.damage.filter(|d| !d.torn_tail) {
        return Err(corrupt(path, format!("at byte {}: {}", d.offset, d.reason)));
    }
    Ok(s.frames.into_iter().flat_map(|f| f.records).collect())
}

/// What [`repair`] did.
#[derive(Debug)]
pub struct Repaired {
    /// Records kept (before and after the damage).
    pub kept: usize,
    /// Of them, records found after the damage.
    pub salvaged: usize,
    /// Where the damaged file was saved.
    pub backup: PathBuf,
}

/// Rewrites a damaged log keeping every intact record, before and after the
/// damage, and saves the damaged file as `<path>.damaged-<unix seconds>`.
/// A log shorter than its header is rewritten empty.
pub fn repair(path: &Path) -> Result<Repaired> {
    let _lock = WriterLock::acquire(path)?;
    let bytes = read_all(path)?;
    let (prefix, after) = match scan(path, &bytes) {
        Ok(s) => {
            let prefix: Vec<Record> = s.frames.into_iter().flat_map(|f| f.records).collect();
            (prefix, s.damage.map(|d| d.after).unwrap_or_default())
        }
        Err(IndexError::Corrupt { .. }) if bytes.len() < HEADER => (Vec::new(), Vec::new()),
        Err(e) => return Err(e),
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup = path.with_extension(format!("log.damaged-{secs}"));
    crate::generation::write_atomic(&backup, &bytes)?;
    crate::generation::write_atomic(path, &image(prefix.iter().chain(&after)).0)?;
    Ok(Repaired {
        kept: prefix.len() + after.len(),
        salvaged: after.len(),
        backup,
    })
}

impl Wal {
    /// Opens (or creates) the log at `path`, replays it and cuts off a torn
    /// tail; any other damage is an error naming the offset and the last
    /// intact record. Returns the log and every intact record `(seq, payload)`.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>)> {
        // Before anything is read or rewritten: another writer's append in
        // progress would otherwise look like a torn tail and be cut.
        let lock = WriterLock::acquire(path)?;
        if !path.exists() {
            // Created whole (temp file, rename), so a crash cannot leave a
            // log shorter than its header behind.
            crate::generation::write_atomic(path, &image([]).0)?;
        }
        let bytes = read_all(path)?;
        let s = scan(path, &bytes)?;
        let records: Vec<Record> = s.frames.into_iter().flat_map(|f| f.records).collect();
        let last_seq = records.last().map_or(0, |r| r.0);
        if let Some(d) = s.damage.as_ref().filter(|d| !d.torn_tail) {
            let after = match (d.after.first(), d.after.last()) {
                (Some(a), Some(b)) => format!(
                    "; {} intact records after it (numbers {}..={}) would be lost",
                    d.after.len(),
                    a.0,
                    b.0
                ),
                _ => String::new(),
            };
            return Err(corrupt(
                path,
                format!(
                    "at byte {} after record {last_seq} ({} intact records before it): {}{after}; \
                     `vecrec-admin wal check` shows what is intact and `vecrec-admin wal repair --salvage` keeps it",
                    d.offset,
                    records.len(),
                    d.reason
                ),
            ));
        }
        let (end, len) = if s.version != VERSION || s.damage.is_some() {
            // A version-1 log, or the torn frame of an append that was never
            // acknowledged: rewrite the intact records as a clean image.
            let (buf, end) = image(&records);
            crate::generation::write_atomic(path, &buf)?;
            (end, buf.len())
        } else {
            (s.end, bytes.len())
        };
        let wal = Self {
            _lock: lock,
            path: path.to_owned(),
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| io(path, e))?,
            next_seq: last_seq + 1,
            end: end as u64,
            len: len as u64,
            cut: s.damage.map(|d| d.offset),
        };
        Ok((wal, records))
    }

    /// The byte offset at which [`Wal::open`] cut off the torn frame of an
    /// unfinished (never acknowledged) append, if it found one.
    pub fn torn_tail_cut(&self) -> Option<u64> {
        self.cut
    }

    /// Bytes of header and frames written (the file itself is longer: it
    /// grows in whole segments).
    pub fn data_len(&self) -> u64 {
        self.end
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Makes the next record number at least `seq` (after a compaction that
    /// folded records up to `seq - 1` into a generation and emptied the log).
    pub fn advance_to(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Appends `payloads` as consecutive records in one frame and fsyncs;
    /// returns their sequence numbers. Nothing may be acknowledged before
    /// this returns.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<u64>> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        for p in payloads {
            if p.len() > MAX_RECORD {
                return Err(IndexError::InvalidParameter {
                    name: "wal record",
                    reason: format!(
                        "a log record of {} bytes is over the limit of {MAX_RECORD}",
                        p.len()
                    ),
                });
            }
        }
        let mut buf = Vec::new();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        encode_frame(&mut buf, self.next_seq, &refs);
        if buf.len() - FRAME_HEADER > MAX_FRAME {
            return Err(IndexError::InvalidParameter {
                name: "wal append",
                reason: format!(
                    "{} bytes in one append, over the limit of {MAX_FRAME}",
                    buf.len()
                ),
            });
        }
        let needed = padded(self.end as usize + buf.len()) as u64;
        if needed > self.len {
            // Grow with zeros first, durably, so the length never changes
            // under a frame being written.
            self.file.set_len(needed).map_err(|e| io(&self.path, e))?;
            self.file.sync_all().map_err(|e| io(&self.path, e))?;
            self.len = needed;
        }
        let written = self
            .file
            .seek(SeekFrom::Start(self.end))
            .and_then(|_| self.file.write_all(&buf))
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no half-written frame behind a failed append.
            let _ = self
                .file
                .seek(SeekFrom::Start(self.end))
                .and_then(|_| self.file.write_all(&vec![0; buf.len()]));
            return Err(io(&self.path, e));
        }
        let seqs: Vec<u64> = (self.next_seq..self.next_seq + payloads.len() as u64).collect();
        self.end += buf.len() as u64;
        self.next_seq += payloads.len() as u64;
        Ok(seqs)
    }

    /// Rewrites the log keeping only records with `seq > applied` (a temp
    /// file, fsynced, renamed over the log); returns how many it kept.
    pub fn retain_after(&mut self, applied: u64) -> Result<usize> {
        let records = read_records(&self.path, &read_all(&self.path)?)?;
        let kept = records.iter().filter(|r| r.0 > applied);
        let n = kept.clone().count();
        let (buf, end) = image(kept);
        crate::generation::write_atomic(&self.path, &buf)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        self.end = end as u64;
        self.len = buf.len() as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open3(p: &Path) -> Vec<u8> {
        let (mut w, r) = Wal::open(p).unwrap();
        assert!(r.is_empty());
        assert_eq!(w.append(&[b"a".to_vec(), b"bb".to_vec()]).unwrap(), [1, 2]);
        assert_eq!(w.append(&[b"ccc".to_vec()]).unwrap(), [3]);
        assert_eq!(w.append(&[b"dddd".to_vec()]).unwrap(), [4]);
        drop(w);
        std::fs::read(p).unwrap()
    }

    fn seqs(r: &[Record]) -> Vec<u64> {
        r.iter().map(|x| x.0).collect()
    }

    #[test]
    fn a_tail_reads_each_append_once_and_waits_for_one_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let mut t = Tail::new(&p);
        let f = t.follow().unwrap();
        assert!(!f.restarted && f.records.is_empty(), "no log yet");
        let (mut w, _) = Wal::open(&p).unwrap();
        let f = t.follow().unwrap();
        assert!(f.restarted && f.records.is_empty(), "{f:?}");
        w.append(&[b"a".to_vec(), b"bb".to_vec()]).unwrap();
        let f = t.follow().unwrap();
        assert!(!f.restarted);
        assert_eq!(seqs(&f.records), [1, 2]);
        assert_eq!(f.records[1].1, b"bb");
        assert!(t.follow().unwrap().records.is_empty(), "read once");
        // An append in progress: a frame header whose body is not there
        // yet. The tail stops before it, and reads the frame once written.
        let end = w.data_len();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut raw = OpenOptions::new().write(true).open(&p).unwrap();
            raw.seek(SeekFrom::Start(end)).unwrap();
            let mut header = Vec::new();
            header.extend_from_slice(&3u64.to_le_bytes());
            header.extend_from_slice(&1u32.to_le_bytes());
            header.extend_from_slice(&64u32.to_le_bytes());
            header.extend_from_slice(&0u32.to_le_bytes());
            raw.write_all(&header).unwrap();
        }
        assert!(t.follow().unwrap().records.is_empty());
        w.append(&[b"ccc".to_vec()]).unwrap();
        let fourth = w.data_len();
        w.append(&[b"dddd".to_vec()]).unwrap();
        let f = t.follow().unwrap();
        assert_eq!(seqs(&f.records), [3, 4]);
        // A frame read and then written again in place (as a writer whose
        // sync failed rewrites it): the tail starts over, not stalls.
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut frame = Vec::new();
            encode_frame(&mut frame, 4, &[b"DDDD"]);
            let mut raw = OpenOptions::new().write(true).open(&p).unwrap();
            raw.seek(SeekFrom::Start(fourth)).unwrap();
            raw.write_all(&frame).unwrap();
        }
        let f = t.follow().unwrap();
        assert!(f.restarted);
        assert_eq!(seqs(&f.records), [1, 2, 3, 4]);
        assert_eq!(f.records[3].1, b"DDDD");
        // The writer rewrites the log without what a generation folded:
        // the tail starts over on the new file.
        w.retain_after(3).unwrap();
        w.append(&[b"e".to_vec()]).unwrap();
        let f = t.follow().unwrap();
        assert!(f.restarted);
        assert_eq!(seqs(&f.records), [4, 5]);
        assert_eq!(t.last_seq(), 5);
        drop(w);
        std::fs::remove_file(&p).unwrap();
        let f = t.follow().unwrap();
        assert!(f.restarted && f.records.is_empty());
    }

    #[test]
    fn records_survive_reopen_in_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let full = open3(&p);
        assert_eq!(full.len(), SEGMENT);
        let (mut w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [1, 2, 3, 4]);
        assert_eq!(r[1].1, b"bb");
        // A large append grows the file by whole segments.
        let big = vec![7u8; SEGMENT + 10];
        assert_eq!(w.append(std::slice::from_ref(&big)).unwrap(), [5]);
        drop(w);
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize % SEGMENT, 0);
        let (w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [1, 2, 3, 4, 5]);
        assert_eq!(r[4].1, big);
        assert_eq!(w.next_seq(), 6);
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let (mut w, _) = Wal::open(&p).unwrap();
        assert_eq!(w.append(&[b"a".to_vec()]).unwrap(), [1]);
        let err = Wal::open(&p).unwrap_err().to_string();
        assert!(err.contains("another process is writing"), "{err}");
        assert!(err.contains("LOCK"), "{err}");
        let err = repair(&p).unwrap_err().to_string();
        assert!(err.contains("another process is writing"), "{err}");
        // Refused without touching the log: the first writer goes on.
        assert_eq!(w.append(&[b"b".to_vec()]).unwrap(), [2]);
        // A compaction's rewrite keeps the lock (it is not on the log's file).
        assert_eq!(w.retain_after(1).unwrap(), 1);
        assert!(Wal::open(&p).is_err());
        drop(w);
        let (w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [2]);
        assert_eq!(w.next_seq(), 3);
    }

    #[test]
    fn a_torn_last_append_is_cut_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let full = open3(&p);
        let last = HEADER + (FRAME_HEADER + 4 + 1 + 4 + 2) + (FRAME_HEADER + 4 + 3);
        let end = last + FRAME_HEADER + 4 + 4;
        // Every partial write of the last frame (bytes of it reached the
        // disk, the rest are still zeros) is a torn tail: cut, the three
        // acknowledged records before it kept.
        for upto in last + 1..end {
            let mut b = full.clone();
            b[upto..end].fill(0);
            std::fs::write(&p, &b).unwrap();
            let (mut w, r) = Wal::open(&p).unwrap();
            assert_eq!(seqs(&r), [1, 2, 3], "torn at {upto}");
            assert_eq!(w.append(&[b"z".to_vec()]).unwrap(), [4]);
            drop(w);
            let (_, r) = Wal::open(&p).unwrap();
            assert_eq!(r.last().unwrap().1, b"z");
        }
        // Only the tail's header lost, its body on disk: still torn.
        let mut b = full.clone();
        b[last..last + FRAME_HEADER].fill(0);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(seqs(&Wal::open(&p).unwrap().1), [1, 2, 3]);
    }

    #[test]
    fn a_log_cut_short_anywhere_is_refused_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let full = open3(&p);
        let second = HEADER + FRAME_HEADER + 4 + 1 + 4 + 2;
        // Truncated in the middle of record 3 (of 4), or anywhere else: the
        // acknowledged writes after the cut must not vanish quietly.
        let data = HEADER + 31 + 27 + 28;
        let cuts = (0..data + FRAME_HEADER).chain([data + 100, SEGMENT / 2, SEGMENT - 1]);
        for cut in cuts {
            std::fs::write(&p, &full[..cut]).unwrap();
            let err = Wal::open(&p).unwrap_err().to_string();
            assert!(err.contains("cut short"), "cut at {cut}: {err}");
        }
        // check tells what is intact without changing the file.
        std::fs::write(&p, &full[..second + 5]).unwrap();
        let r = check(&p).unwrap();
        assert_eq!((r.records, r.last_seq), (2, 2));
        assert_eq!(r.damage.unwrap().offset as usize, second);
        assert_eq!(std::fs::read(&p).unwrap().len(), second + 5);
    }

    #[test]
    fn damage_before_intact_records_is_refused_and_repair_salvages_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let mut bytes = open3(&p);
        let first_body = HEADER + FRAME_HEADER + 4;
        bytes[first_body] ^= 0x40; // inside "a"
        std::fs::write(&p, &bytes).unwrap();
        let err = Wal::open(&p).unwrap_err().to_string();
        assert!(err.contains(&format!("at byte {HEADER}")), "{err}");
        assert!(err.contains("2 intact records after it"), "{err}");
        let d = check(&p).unwrap().damage.unwrap();
        assert!(!d.torn_tail);
        assert_eq!(seqs(&d.after), [3, 4]);
        let fixed = repair(&p).unwrap();
        assert_eq!((fixed.kept, fixed.salvaged), (2, 2));
        assert_eq!(std::fs::read(&fixed.backup).unwrap(), bytes);
        let (mut w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [3, 4]);
        assert_eq!(w.append(&[b"e".to_vec()]).unwrap(), [5]);
    }

    #[test]
    fn a_version_1_log_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let mut b = header(1).to_vec();
        for (seq, payload) in [(1u64, &b"x"[..]), (2, b"yy")] {
            let mut h = crc32fast::Hasher::new();
            h.update(&seq.to_le_bytes());
            h.update(payload);
            b.extend_from_slice(&seq.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&h.finalize().to_le_bytes());
            b.extend_from_slice(payload);
        }
        b.extend_from_slice(&[9, 9, 9]); // a v1 torn tail
        std::fs::write(&p, &b).unwrap();
        let (mut w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [1, 2]);
        assert_eq!(w.append(&[b"z".to_vec()]).unwrap(), [3]);
        drop(w);
        assert_eq!(check(&p).unwrap().version, VERSION);
        assert_eq!(seqs(&Wal::open(&p).unwrap().1), [1, 2, 3]);
    }

    #[test]
    fn retain_after_drops_folded_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let (mut w, _) = Wal::open(&p).unwrap();
        w.append(&[b"1".to_vec(), b"2".to_vec(), b"3".to_vec()])
            .unwrap();
        assert_eq!(w.retain_after(2).unwrap(), 1);
        assert_eq!(w.append(&[b"4".to_vec()]).unwrap(), [4]);
        drop(w);
        let (w, r) = Wal::open(&p).unwrap();
        assert_eq!(seqs(&r), [3, 4]);
        assert_eq!(w.next_seq(), 5);
    }
}
