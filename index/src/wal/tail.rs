//! Following a log that another process writes: the records appended
//! since the last look, read from where the last look stopped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::scan::read_frame;
use super::{io, read_records, u32_at, Record, FRAME_HEADER, HEADER, MAGIC, MAX_FRAME, VERSION};
use crate::error::Result;

/// How much a look reads at a time.
const CHUNK: usize = 64 << 10;

/// What one look at a followed log found.
#[derive(Debug, Default)]
pub struct Followed {
    /// The file is not the one followed before (a writer replaced it, as
    /// [`super::Wal::retain_after`] does, or it was created): `records`
    /// hold the whole log, and what was read before no longer counts.
    pub restarted: bool,
    /// Records appended since the last look (every record if `restarted`).
    pub records: Vec<Record>,
}

/// A reader that follows the log at one path, as a writer appends to it.
///
/// Each [`Tail::follow`] reads only the bytes after the last intact frame
/// it saw. A frame that does not read back yet is an append in progress
/// (the writer writes a frame, then fsyncs, then acknowledges): the tail
/// stops before it and reads it on a later look. The writer's own open
/// decides what is damage; a follower never cuts or rewrites anything.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// Device and inode of the file followed, once one was found.
    file: Option<(u64, u64)>,
    /// Where the next frame starts.
    at: u64,
    /// The last record number read.
    last: u64,
    /// Where the last frame read starts, and its header (which holds its
    /// checksum): a writer that failed to sync an append rewrites the
    /// frame in place, so a frame read before may change.
    last_frame: Option<(u64, [u8; FRAME_HEADER])>,
    /// Bytes read by every look so far.
    read: u64,
}

impl Tail {
    /// A tail of the log at `path`, which need not exist yet.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            at: 0,
            last: 0,
            last_frame: None,
            read: 0,
        }
    }

    /// The last record number read.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The records appended since the last look. No file yet: nothing.
    pub fn follow(&mut self) -> Result<Followed> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.file.take().is_some();
                self.at = 0;
                self.last = 0;
                self.last_frame = None;
                return Ok(Followed {
                    restarted,
                    records: Vec::new(),
                });
            }
            Err(e) => return Err(io(&self.path, e)),
        };
        let meta = f.metadata().map_err(|e| io(&self.path, e))?;
        let id = (meta.dev(), meta.ino());
        let restarted =
            self.file != Some(id) || meta.len() < self.at || self.frame_changed(&mut f)?;
        if restarted {
            self.file = Some(id);
            self.at = 0;
            self.last = 0;
            self.last_frame = None;
        }
        f.seek(SeekFrom::Start(self.at))
            .map_err(|e| io(&self.path, e))?;
        let skip = if self.at == 0 { HEADER } else { 0 };
        let mut bytes = read_written(&mut f, skip).map_err(|e| io(&self.path, e))?;
        if self.at == 0 && bytes.len() >= HEADER && !is_current(&bytes) {
            // An older log is read whole (below).
            f.read_to_end(&mut bytes).map_err(|e| io(&self.path, e))?;
        }
        self.read += bytes.len() as u64;
        if self.at > 0 {
            let records = self.frames(&bytes);
            return Ok(Followed { restarted, records });
        }
        if bytes.len() < HEADER {
            // Created, its header not written yet.
            self.file = None;
            return Ok(Followed {
                restarted,
                records: Vec::new(),
            });
        }
        if !is_current(&bytes) {
            // Not (yet) a version-2 log: the writer rewrites an older one
            // on open. Read it whole and look again from the start.
            let records = read_records(&self.path, &bytes)?;
            self.file = None;
            return Ok(Followed {
                restarted: true,
                records,
            });
        }
        self.at = HEADER as u64;
        let records = self.frames(&bytes[HEADER..]);
        Ok(Followed { restarted, records })
    }

    /// Bytes read by every look so far.
    #[cfg(test)]
    fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Whether the last frame read is no longer in the file as it was.
    fn frame_changed(&self, f: &mut File) -> Result<bool> {
        let Some((offset, header)) = self.last_frame else {
            return Ok(false);
        };
        let mut now = [0u8; FRAME_HEADER];
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io(&self.path, e))?;
        match f.read_exact(&mut now) {
            Ok(()) => Ok(now != header),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(io(&self.path, e)),
        }
    }

    /// The intact frames at the start of `bytes` (which begins at `self.at`),
    /// up to the end marker or the first frame that does not read back yet.
    fn frames(&mut self, bytes: &[u8]) -> Vec<Record> {
        let mut records = Vec::new();
        let mut at = 0usize;
        while bytes.len() >= at + FRAME_HEADER {
            let rest = &bytes[at..];
            if rest[..FRAME_HEADER].iter().all(|&b| b == 0) {
                break;
            }
            let Some(frame) = read_frame(rest, self.last) else {
                break;
            };
            let len = u32_at(rest, 12) as usize;
            let mut header = [0u8; FRAME_HEADER];
            header.copy_from_slice(&rest[..FRAME_HEADER]);
            self.last_frame = Some((self.at + at as u64, header));
            at += FRAME_HEADER + len;
            self.last = frame.records.last().map_or(self.last, |r| r.0);
            records.extend(frame.records);
        }
        self.at += at as u64;
        records
    }
}

/// Whether `bytes` start with a version-2 log's header (at least
/// [`HEADER`] long).
fn is_current(bytes: &[u8]) -> bool {
    bytes[..8] == MAGIC && u32_at(bytes, 8) == VERSION
}

/// The bytes from `f`'s position to the end of the last frame already
/// there in full, [`CHUNK`] at a time, after `skip` bytes that are not
/// frames (the log's header). A writer's log is whole segments whose
/// unwritten rest is zeros, so a look stops at the first zeroed frame
/// header (the end marker) instead of reading the rest of the segment
/// each time. Frames are only measured here: [`Tail::frames`] checks
/// them, and stops at the same place or earlier.
fn read_written(f: &mut File, skip: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut at = skip;
    loop {
        while let Some(rest) = bytes.get(at..).filter(|r| r.len() >= FRAME_HEADER) {
            let len = u32_at(rest, 12) as usize;
            if rest[..FRAME_HEADER].iter().all(|&b| b == 0) || len > MAX_FRAME {
                return Ok(bytes);
            }
            if rest.len() < FRAME_HEADER + len {
                break;
            }
            at += FRAME_HEADER + len;
        }
        if (&mut *f).take(CHUNK as u64).read_to_end(&mut bytes)? == 0 {
            return Ok(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Wal;
    use super::*;

    /// A look reads what was written, not the zeros after it in the
    /// segment; a frame larger than a chunk is still read whole.
    #[test]
    fn a_look_reads_up_to_the_end_marker_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wal.log");
        let (mut w, _) = Wal::open(&p).unwrap();
        w.append(&[b"a".to_vec(), b"bb".to_vec()]).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().len() as usize,
            super::super::SEGMENT
        );
        let mut t = Tail::new(&p);
        assert_eq!(t.follow().unwrap().records.len(), 2);
        assert!(t.bytes_read() <= CHUNK as u64, "{}", t.bytes_read());
        let big = vec![9u8; 3 * CHUNK + 5];
        w.append(&[big.clone(), b"c".to_vec()]).unwrap();
        let before = t.bytes_read();
        let f = t.follow().unwrap();
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.records[0].1, big);
        assert_eq!(f.records[1].1, b"c");
        assert!(t.bytes_read() - before <= 4 * CHUNK as u64 + FRAME_HEADER as u64);
        let before = t.bytes_read();
        assert!(t.follow().unwrap().records.is_empty());
        assert!(t.bytes_read() - before <= CHUNK as u64);
    }
}
