//! Reading a log image back: intact frames, where they end, and the first
//! damage, for version-2 logs and the version-1 format.

use std::path::Path;

use super::{
    corrupt, frame_crc, u32_at, u64_at, Record, FRAME_HEADER, HEADER, MAGIC, MAX_FRAME, MAX_RECORD,
    SEGMENT, V1_RECORD_HEADER, VERSION,
};
use crate::error::{IndexError, Result};

/// An intact frame found in a log image.
#[derive(Clone, Debug)]
pub(super) struct Frame {
    pub(super) records: Vec<Record>,
}

/// Reads the frame at the start of `b` if it is intact and numbered after
/// `after`.
pub(super) fn read_frame(b: &[u8], after: u64) -> Option<Frame> {
    if b.len() < FRAME_HEADER {
        return None;
    }
    let first = u64_at(b, 0);
    let count = u32_at(b, 8);
    let len = u32_at(b, 12) as usize;
    let stored = u32_at(b, 16);
    if first <= after || count == 0 || len > MAX_FRAME || b.len() < FRAME_HEADER + len {
        return None;
    }
    let body = &b[FRAME_HEADER..FRAME_HEADER + len];
    if frame_crc(first, count, body) != stored {
        return None;
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut at = 0;
    for k in 0..count as u64 {
        if body.len() < at + 4 {
            return None;
        }
        let n = u32_at(body, at) as usize;
        if n > MAX_RECORD || body.len() < at + 4 + n {
            return None;
        }
        records.push((first + k, body[at + 4..at + 4 + n].to_vec()));
        at += 4 + n;
    }
    (at == body.len()).then_some(Frame { records })
}

/// What a read of a log found.
#[derive(Debug)]
pub(super) struct Scan {
    pub(super) version: u32,
    /// The intact frames before any damage, in order.
    pub(super) frames: Vec<Frame>,
    /// Where the intact prefix ends.
    pub(super) end: usize,
    /// Damage after the intact prefix, if any.
    pub(super) damage: Option<Damage>,
}

/// Damage found in a log.
#[derive(Clone, Debug)]
pub struct Damage {
    /// Byte offset where the log stops reading back.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// Whether it is only the torn tail of an unacknowledged append, which
    /// [`Wal::open`] cuts off by itself.
    pub torn_tail: bool,
    /// Intact records found after the damage (each `(seq, payload)`), which
    /// a repair keeps.
    pub after: Vec<Record>,
}

/// The intact frames of `bytes[from..]` numbered after `after`, found by
/// trying every offset (used only once damage is found).
pub(super) fn later_frames(bytes: &[u8], from: usize, mut after: u64) -> Vec<Frame> {
    let mut found = Vec::new();
    let mut p = from;
    while p + FRAME_HEADER <= bytes.len() {
        match read_frame(&bytes[p..], after) {
            Some(f) => {
                after = f.records.last().map_or(after, |r| r.0);
                p += FRAME_HEADER + f.records.iter().map(|r| 4 + r.1.len()).sum::<usize>();
                found.push(f);
            }
            None => p += 1,
        }
    }
    found
}

pub(super) fn scan(path: &Path, bytes: &[u8]) -> Result<Scan> {
    if bytes.len() < HEADER {
        return Err(corrupt(
            path,
            format!(
                "the log is {} bytes, shorter than its {HEADER}-byte header (it was cut short; \
                 if it held records they are lost)",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != MAGIC {
        return Err(IndexError::BadMagic {
            path: path.to_owned(),
            expected: "wal",
        });
    }
    match u32_at(bytes, 8) {
        1 => return Ok(scan_v1(bytes)),
        VERSION => {}
        found => {
            return Err(IndexError::UnsupportedVersion {
                path: path.to_owned(),
                found,
                supported: VERSION,
            })
        }
    }
    let mut frames: Vec<Frame> = Vec::new();
    let mut at = HEADER;
    let last = |frames: &[Frame]| {
        frames
            .last()
            .and_then(|f| f.records.last())
            .map_or(0, |r| r.0)
    };
    let damage = loop {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER {
            break Some((
                false,
                format!("the file ends {} bytes after the last frame, before the end marker (it was cut short)", rest.len()),
            ));
        }
        if rest[..FRAME_HEADER].iter().all(|&b| b == 0) {
            // The end marker. Anything but zeros after it is the body of a
            // torn frame whose header never reached the disk, unless an
            // intact frame follows (a zeroed frame header: damage).
            break rest
                .iter()
                .any(|&b| b != 0)
                .then(|| (true, "an unfinished append".to_string()));
        }
        let len = u32_at(rest, 12) as usize;
        if len <= MAX_FRAME && rest.len() < FRAME_HEADER + len {
            break Some((
                false,
                format!("a frame of {len} bytes runs past the end of the file (it was cut short)"),
            ));
        }
        match read_frame(rest, last(&frames)) {
            Some(f) => {
                at += FRAME_HEADER + len;
                frames.push(f);
            }
            None => break Some((true, "a frame that does not read back".to_string())),
        }
    };
    let mut damage = damage.map(|(torn, reason)| {
        let after: Vec<Record> = later_frames(bytes, at + 1, last(&frames))
            .into_iter()
            .flat_map(|f| f.records)
            .collect();
        Damage {
            offset: at as u64,
            torn_tail: torn && after.is_empty(),
            reason,
            after,
        }
    });
    if !bytes.len().is_multiple_of(SEGMENT) && damage.as_ref().is_none_or(|d| d.torn_tail) {
        damage = Some(Damage {
            offset: bytes.len() as u64,
            reason: format!(
                "the file is {} bytes, not a whole number of {SEGMENT}-byte segments (it was cut short or appended to)",
                bytes.len()
            ),
            torn_tail: false,
            after: Vec::new(),
        });
    }
    Ok(Scan {
        version: VERSION,
        frames,
        end: at,
        damage,
    })
}

/// Reads a version-1 log: records `[seq u64][len u32][crc u32 of seq‖payload]
/// [payload]`, no padding; damage only at the very end is a torn tail.
pub(super) fn scan_v1(bytes: &[u8]) -> Scan {
    // The record at the start of `b`, if intact and numbered after `after`.
    let record = |b: &[u8], after: u64| -> Option<(u64, usize)> {
        if b.len() < V1_RECORD_HEADER {
            return None;
        }
        let (seq, len, stored) = (u64_at(b, 0), u32_at(b, 8) as usize, u32_at(b, 12));
        if seq <= after || len > MAX_RECORD || b.len() < V1_RECORD_HEADER + len {
            return None;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(&b[V1_RECORD_HEADER..V1_RECORD_HEADER + len]);
        (h.finalize() == stored).then_some((seq, len))
    };
    let mut frames = Vec::new();
    let mut at = HEADER;
    let mut last = 0u64;
    while let Some((seq, len)) = record(&bytes[at..], last) {
        let p = &bytes[at + V1_RECORD_HEADER..at + V1_RECORD_HEADER + len];
        frames.push(Frame {
            records: vec![(seq, p.to_vec())],
        });
        last = seq;
        at += V1_RECORD_HEADER + len;
    }
    let damage = (at < bytes.len()).then(|| {
        // Damage is a torn tail only if no intact record follows it.
        let mut after = Vec::new();
        let mut p = at + 1;
        let mut prev = last;
        while p < bytes.len() {
            match record(&bytes[p..], prev) {
                Some((seq, len)) => {
                    after.push((
                        seq,
                        bytes[p + V1_RECORD_HEADER..p + V1_RECORD_HEADER + len].to_vec(),
                    ));
                    prev = seq;
                    p += V1_RECORD_HEADER + len;
                }
                None => p += 1,
            }
        }
        Damage {
            offset: at as u64,
            reason: "a damaged version-1 record".into(),
            torn_tail: after.is_empty(),
            after,
        }
    });
    Scan {
        version: 1,
        frames,
        end: at,
        damage,
    }
}
