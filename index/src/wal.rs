//! A write-ahead log: numbered, checksummed records appended to one file and
//! fsynced before the caller acknowledges anything.
//!
//! File: the 16-byte header `VECRECWL` + format version (u32) + 4 zero bytes,
//! then records `[seq u64][len u32][crc32 u32 of seq‖payload][payload]`,
//! little-endian, with strictly increasing `seq`.
//!
//! A crash can leave the last record torn (partly written, or written but not
//! yet synced and so never acknowledged). [`Wal::open`] replays every complete
//! record and cuts such a tail off before new records are appended. A damaged
//! record followed by intact ones is not a torn tail but damage, and is
//! refused with an error. [`Wal::retain_after`] rewrites the log without the
//! records a compaction has folded into a generation (temp file, fsync,
//! rename).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};

const MAGIC: [u8; 8] = *b"VECRECWL";
const VERSION: u32 = 1;
const HEADER: usize = 16;
const RECORD_HEADER: usize = 16;
/// Largest record accepted on replay (a larger length is damage).
pub const MAX_RECORD: usize = 64 << 20;

/// One replayed record: its sequence number and payload.
pub type Record = (u64, Vec<u8>);

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    next_seq: u64,
}

fn io(path: &Path, e: std::io::Error) -> IndexError {
    IndexError::Io {
        path: path.to_owned(),
        source: e,
    }
}

fn header() -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one record `[seq][len][crc][payload]` to `buf`.
fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc(seq, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Parses the records of a log image; returns them and the length of the
/// intact prefix.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, usize)> {
    let corrupt = |reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < HEADER {
        // A crash while creating the file: nothing was ever acknowledged.
        return Ok((Vec::new(), 0));
    }
    if bytes[..8] != MAGIC {
        return Err(IndexError::BadMagic {
            path: path.to_owned(),
            expected: "wal",
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(IndexError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    let mut records = Vec::new();
    let mut at = HEADER;
    let mut last_seq = 0u64;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = |what: &str| -> Result<bool> {
            // Damage is only acceptable as the very last thing in the file:
            // any later intact record header means the middle was damaged.
            let later_record = (at + 1..bytes.len().saturating_sub(RECORD_HEADER))
                .any(|p| plausible(&bytes[p..], last_seq));
            if later_record {
                Err(corrupt(format!(
                    "{what} at byte {at}, followed by further records"
                )))
            } else {
                Ok(true)
            }
        };
        if rest.len() < RECORD_HEADER {
            torn("a truncated record header")?;
            break;
        }
        let seq = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let stored = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes"));
        if len > MAX_RECORD || rest.len() < RECORD_HEADER + len {
            torn("a truncated record")?;
            break;
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        if crc(seq, payload) != stored || seq <= last_seq {
            torn("a record with a bad checksum")?;
            break;
        }
        records.push((seq, payload.to_vec()));
        last_seq = seq;
        at += RECORD_HEADER + len;
    }
    Ok((records, at))
}

/// Whether an intact record starts at the beginning of `b` (used to tell a
/// torn tail from damage in the middle).
fn plausible(b: &[u8], after: u64) -> bool {
    if b.len() < RECORD_HEADER {
        return false;
    }
    let seq = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    seq > after && len <= MAX_RECORD && b.len() >= RECORD_HEADER + len && {
        crc(seq, &b[RECORD_HEADER..RECORD_HEADER + len]) == stored
    }
}

impl Wal {
    /// Opens (or creates) the log at `path`, replays it and cuts off a torn
    /// tail. Returns the log and every intact record `(seq, payload)`.
    pub fn open(path: &Path) -> Result<(Self, Vec<Record>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
        let (records, good) = parse(path, &bytes)?;
        if good < HEADER {
            file.set_len(0).map_err(|e| io(path, e))?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
            file.write_all(&header()).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
        } else if good < bytes.len() {
            // A crash before the record was acknowledged: cut it off.
            file.set_len(good as u64).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        file.seek(SeekFrom::End(0)).map_err(|e| io(path, e))?;
        let next_seq = records.last().map_or(1, |r| r.0 + 1);
        Ok((
            Self {
                path: path.to_owned(),
                file,
                next_seq,
            },
            records,
        ))
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

    /// Appends `payloads` as consecutive records and fsyncs; returns their
    /// sequence numbers. Nothing may be acknowledged before this returns.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<u64>> {
        let mut buf = Vec::new();
        let mut seqs = Vec::with_capacity(payloads.len());
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
            let seq = self.next_seq + seqs.len() as u64;
            encode(&mut buf, seq, p);
            seqs.push(seq);
        }
        let start = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(|e| io(&self.path, e))?;
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no half-written records behind a failed append.
            let _ = self.file.set_len(start);
            return Err(io(&self.path, e));
        }
        self.next_seq += seqs.len() as u64;
        Ok(seqs)
    }

    /// Rewrites the log keeping only records with `seq > applied` (a temp
    /// file, fsynced, renamed over the log).
    pub fn retain_after(&mut self, applied: u64) -> Result<usize> {
        let mut bytes = Vec::new();
        let mut f = File::open(&self.path).map_err(|e| io(&self.path, e))?;
        f.read_to_end(&mut bytes).map_err(|e| io(&self.path, e))?;
        let (records, _) = parse(&self.path, &bytes)?;
        let mut buf = header().to_vec();
        for (seq, p) in records.iter().filter(|r| r.0 > applied) {
            encode(&mut buf, *seq, p);
        }
        crate::generation::write_atomic(&self.path, &buf)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        self.file
            .seek(SeekFrom::End(0))
            .map_err(|e| io(&self.path, e))?;
        Ok(records.iter().filter(|r| r.0 > applied).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let (mut w, r) = Wal::open(&p).unwrap();
        assert!(r.is_empty());
        assert_eq!(w.append(&[b"a".to_vec(), b"bb".to_vec()]).unwrap(), [1, 2]);
        assert_eq!(w.append(&[b"ccc".to_vec()]).unwrap(), [3]);
        drop(w);
        let full = std::fs::read(&p).unwrap();
        // Every truncation keeps exactly the complete records before the cut.
        for cut in 0..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let (mut w, r) = Wal::open(&p).unwrap();
            let complete = [HEADER + 17, HEADER + 17 + 18, full.len()]
                .iter()
                .filter(|&&end| end <= cut)
                .count();
            assert_eq!(r.len(), complete, "cut at {cut}");
            // New records follow the intact prefix and replay after it.
            let s = w.append(&[b"z".to_vec()]).unwrap()[0];
            assert_eq!(s, complete as u64 + 1);
            drop(w);
            let (_, r2) = Wal::open(&p).unwrap();
            assert_eq!(r2.len(), complete + 1);
            assert_eq!(r2.last().unwrap().1, b"z");
        }
    }

    #[test]
    fn damage_before_intact_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let (mut w, _) = Wal::open(&p).unwrap();
        w.append(&[b"first".to_vec(), b"second".to_vec(), b"third".to_vec()])
            .unwrap();
        drop(w);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER + RECORD_HEADER + 1] ^= 0x40; // inside "first"
        std::fs::write(&p, &bytes).unwrap();
        let err = Wal::open(&p).unwrap_err();
        assert!(
            err.to_string().contains("followed by further records"),
            "{err}"
        );
        // Damage in the last record alone is a torn tail.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER + RECORD_HEADER + 1] ^= 0x40;
        let n = bytes.len();
        bytes[n - 1] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let (_, r) = Wal::open(&p).unwrap();
        assert_eq!(r.len(), 2);
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
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(w.next_seq(), 5);
    }
}
