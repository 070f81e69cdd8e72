//! Following a log that another process writes: the records appended
//! since the last look, read from where the last look stopped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::scan::read_frame;
use super::{io, read_records, u32_at, Record, FRAME_HEADER, HEADER, MAGIC, VERSION};
use crate::error::Result;

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
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(|e| io(&self.path, e))?;
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
        if bytes[..8] != MAGIC || u32_at(&bytes, 8) != VERSION {
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
