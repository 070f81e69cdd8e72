//! The on-disk envelope shared by every file vecrec writes.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset 0   magic    b"VECRECIX"
//!        8   kind     8 bytes naming the payload ("vectors\0", "strings\0", "hnsw\0\0\0\0", ...)
//!       16   version  u32, FORMAT_VERSION
//!       20   reserved u32, zero
//!       24   fields   5 × u64, meaning depends on the kind (dims, counts, ...)
//!       64   payload  `payload_len` bytes, starting 64-byte aligned
//!  end-16    payload_len u64
//!  end-8     crc32    u32 (CRC-32/ISO-HDLC of header and payload)
//!  end-4     footer magic b"VRFT"
//! ```
//!
//! A reader refuses a file whose magic, kind, version, length or checksum is
//! wrong with an [`IndexError`] that names the file; it never panics and never
//! hands out bytes it has not checked. The footer idea follows tantivy's
//! `footer.rs`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};
use crate::mmap::ReadOnlyMap;

/// Magic bytes at the start of every file.
pub const MAGIC: [u8; 8] = *b"VECRECIX";
/// Magic bytes at the very end of every file.
pub const FOOTER_MAGIC: [u8; 4] = *b"VRFT";
/// The one format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// Size of the footer in bytes.
pub const FOOTER_LEN: usize = 16;

/// The kind tag of a file, 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind(pub [u8; 8]);

impl Kind {
    /// Dense f32 row-major matrix.
    pub const VECTORS: Kind = Kind(*b"vectors\0");
    /// Table of UTF-8 strings.
    pub const STRINGS: Kind = Kind(*b"strings\0");
    /// HNSW graph.
    pub const HNSW: Kind = Kind(*b"hnsw\0\0\0\0");
    /// JSON document (manifests).
    pub const JSON: Kind = Kind(*b"json\0\0\0\0");
    /// Table of u32 lists.
    pub const LISTS: Kind = Kind(*b"lists\0\0\0");
    /// A serialised model (ONNX bytes) the service runs.
    pub const MODEL: Kind = Kind(*b"model\0\0\0");
    /// Dense f64 row-major matrix; fields: rows, columns.
    pub const MATRIX_F64: Kind = Kind(*b"f64mat\0\0");

    /// Human-readable name.
    pub fn name(&self) -> &'static str {
        match *self {
            Kind::VECTORS => "vectors",
            Kind::STRINGS => "strings",
            Kind::HNSW => "hnsw",
            Kind::JSON => "json",
            Kind::LISTS => "lists",
            Kind::MODEL => "model",
            Kind::MATRIX_F64 => "f64 matrix",
            _ => "unknown",
        }
    }
}

/// Streams one file in the envelope format; `finish` writes the footer and fsyncs.
pub struct FileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    payload_len: u64,
}

impl FileWriter {
    /// Creates `path` (truncating) and writes the header.
    pub fn create(path: &Path, kind: Kind, fields: [u64; 5]) -> Result<Self> {
        let file = File::create(path).map_err(|e| IndexError::io(path, e))?;
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..16].copy_from_slice(&kind.0);
        header[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        for (i, f) in fields.iter().enumerate() {
            header[24 + 8 * i..32 + 8 * i].copy_from_slice(&f.to_le_bytes());
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header)
            .map_err(|e| IndexError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            out,
            crc,
            payload_len: 0,
        })
    }

    /// Appends payload bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.payload_len += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| IndexError::io(&self.path, e))
    }

    /// Appends a slice of plain-old-data values.
    pub fn write_pod<T: bytemuck::Pod>(&mut self, values: &[T]) -> Result<()> {
        self.write(bytemuck::cast_slice(values))
    }

    /// Writes the footer, flushes and fsyncs the file.
    pub fn finish(mut self) -> Result<()> {
        let crc = self.crc.clone().finalize();
        let mut footer = [0u8; FOOTER_LEN];
        footer[0..8].copy_from_slice(&self.payload_len.to_le_bytes());
        footer[8..12].copy_from_slice(&crc.to_le_bytes());
        footer[12..16].copy_from_slice(&FOOTER_MAGIC);
        let path = self.path.clone();
        self.out
            .write_all(&footer)
            .map_err(|e| IndexError::io(&path, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| IndexError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| IndexError::io(&path, e))
    }
}

/// Writes a whole file at once.
pub fn write_file(path: &Path, kind: Kind, fields: [u64; 5], payload: &[u8]) -> Result<()> {
    let mut w = FileWriter::create(path, kind, fields)?;
    w.write(payload)?;
    w.finish()
}

/// Re-reads `path` and, if it is in the envelope format, checks its length
/// and checksum as [`CheckedFile::open`] with `verify` does; `Ok(false)` for
/// a file in another format (a JSON manifest, say). Plain reads: the check
/// leaves nothing resident.
pub fn verify_file(path: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let len = f.metadata().map_err(|e| IndexError::io(path, e))?.len();
    let mut magic = [0u8; 8];
    if len < 8 || f.read_exact(&mut magic).is_err() || magic != MAGIC {
        return Ok(false);
    }
    let corrupt = |reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(corrupt(format!(
            "file is {len} bytes, shorter than header and footer"
        )));
    }
    let mut footer = [0u8; FOOTER_LEN];
    f.seek(SeekFrom::Start(len - FOOTER_LEN as u64))
        .and_then(|_| f.read_exact(&mut footer))
        .map_err(|e| IndexError::io(path, e))?;
    if footer[12..16] != FOOTER_MAGIC {
        return Err(corrupt(
            "footer magic missing (truncated or overwritten)".into(),
        ));
    }
    let payload_len = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    if payload_len != len - (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(corrupt(format!(
            "footer says {payload_len} payload bytes, file holds {}",
            len - (HEADER_LEN + FOOTER_LEN) as u64
        )));
    }
    let stored = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
    let computed = crc_of_file(path, len - FOOTER_LEN as u64)?;
    if stored != computed {
        return Err(IndexError::ChecksumMismatch {
            path: path.to_owned(),
            stored,
            computed,
        });
    }
    Ok(true)
}

/// CRC-32 of the first `len` bytes of `path`, read with plain reads in 1 MiB
/// chunks rather than through the map: checking a file then leaves it in the
/// page cache but not in the process's resident memory.
fn crc_of_file(path: &Path, len: u64) -> Result<u32> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..want])
            .map_err(|e| IndexError::io(path, e))?;
        h.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(h.finalize())
}

/// A checked, memory-mapped file in the envelope format.
#[derive(Debug)]
pub struct CheckedFile {
    path: PathBuf,
    map: ReadOnlyMap,
    fields: [u64; 5],
    payload_len: usize,
}

impl CheckedFile {
    /// Maps `path`, checks magic, kind, version, length and (when `verify`) the checksum.
    pub fn open(path: &Path, kind: Kind, verify: bool) -> Result<Self> {
        let map = ReadOnlyMap::open(path)?;
        let bytes = map.bytes();
        let corrupt = |reason: String| IndexError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() < HEADER_LEN + FOOTER_LEN {
            if bytes.len() >= 8 && bytes[0..8] != MAGIC {
                return Err(IndexError::BadMagic {
                    path: path.to_owned(),
                    expected: kind.name(),
                });
            }
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {} bytes of header and footer (truncated?)",
                bytes.len(),
                HEADER_LEN + FOOTER_LEN
            )));
        }
        if bytes[0..8] != MAGIC || bytes[8..16] != kind.0 {
            return Err(IndexError::BadMagic {
                path: path.to_owned(),
                expected: kind.name(),
            });
        }
        let version = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let footer = &bytes[bytes.len() - FOOTER_LEN..];
        if footer[12..16] != FOOTER_MAGIC {
            return Err(corrupt(
                "footer magic missing (truncated or overwritten)".into(),
            ));
        }
        let payload_len = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
        let actual = (bytes.len() - HEADER_LEN - FOOTER_LEN) as u64;
        if payload_len != actual {
            return Err(corrupt(format!(
                "footer says {payload_len} payload bytes, file holds {actual}"
            )));
        }
        if verify {
            let stored = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
            let computed = crc_of_file(path, (bytes.len() - FOOTER_LEN) as u64)?;
            if stored != computed {
                return Err(IndexError::ChecksumMismatch {
                    path: path.to_owned(),
                    stored,
                    computed,
                });
            }
        }
        let mut fields = [0u64; 5];
        for (i, f) in fields.iter_mut().enumerate() {
            *f = u64::from_le_bytes(bytes[24 + 8 * i..32 + 8 * i].try_into().expect("8 bytes"));
        }
        Ok(Self {
            path: path.to_owned(),
            map,
            fields,
            payload_len: payload_len as usize,
        })
    }

    /// The kind-specific header fields.
    pub fn fields(&self) -> [u64; 5] {
        self.fields
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The payload bytes (checked).
    pub fn payload(&self) -> &[u8] {
        &self.map.bytes()[HEADER_LEN..HEADER_LEN + self.payload_len]
    }

    /// The payload viewed as a slice of `T`; errors if its length is not a multiple.
    pub fn payload_as<T: bytemuck::Pod>(&self) -> Result<&[T]> {
        bytemuck::try_cast_slice(self.payload())
            .map_err(|e| self.corrupt(format!("payload: {e:?}")))
    }

    /// An error saying the file is corrupt.
    pub fn corrupt(&self, reason: impl Into<String>) -> IndexError {
        IndexError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Hints the kernel that reads will be random.
    pub fn advise_random(&self) {
        self.map.advise_random();
    }
}

/// A table of strings: `count + 1` u64 offsets, then the UTF-8 bytes.
#[derive(Debug)]
pub struct StringTable {
    file: CheckedFile,
    count: usize,
}

impl StringTable {
    /// Writes `items` as a string table.
    pub fn write<S: AsRef<str>>(path: &Path, items: &[S]) -> Result<()> {
        let total: u64 = items.iter().map(|s| s.as_ref().len() as u64).sum();
        let mut w = FileWriter::create(path, Kind::STRINGS, [items.len() as u64, total, 0, 0, 0])?;
        let mut offsets = Vec::with_capacity(items.len() + 1);
        let mut off = 0u64;
        offsets.push(off);
        for s in items {
            off += s.as_ref().len() as u64;
            offsets.push(off);
        }
        w.write_pod(&offsets)?;
        for s in items {
            w.write(s.as_ref().as_bytes())?;
        }
        w.finish()
    }

    /// Opens a string table. With `verify`, the checksum is checked and every
    /// string's offsets and UTF-8; without, only the header and the first and
    /// last offsets (then [`StringTable::get`] answers `""` for a string whose
    /// bytes are damaged, and a background check is expected to find it).
    pub fn open(path: &Path, verify: bool) -> Result<Self> {
        let file = CheckedFile::open(path, Kind::STRINGS, verify)?;
        let [count, total, ..] = file.fields();
        let count = usize::try_from(count).map_err(|_| file.corrupt("count overflows"))?;
        let need = (count as u128 + 1) * 8 + total as u128;
        if need != file.payload().len() as u128 {
            return Err(file.corrupt(format!(
                "{count} strings of {total} bytes need {need} payload bytes, found {}",
                file.payload().len()
            )));
        }
        let table = Self { file, count };
        let offsets = table.offsets();
        if offsets[0] != 0 || offsets[count] != total {
            return Err(table.file.corrupt("string offsets do not span the data"));
        }
        if !verify {
            return Ok(table);
        }
        let data = table.data();
        for i in 0..count {
            let (a, b) = (offsets[i], offsets[i + 1]);
            if a > b || b > total {
                return Err(table
                    .file
                    .corrupt(format!("string {i}: offsets decrease or pass the end")));
            }
            if std::str::from_utf8(&data[a as usize..b as usize]).is_err() {
                return Err(table.file.corrupt(format!("string {i}: not UTF-8")));
            }
        }
        Ok(table)
    }

    fn offsets(&self) -> &[u64] {
        bytemuck::cast_slice(&self.file.payload()[..(self.count + 1) * 8])
    }

    fn data(&self) -> &[u8] {
        &self.file.payload()[(self.count + 1) * 8..]
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// String `i`; panics if `i >= len()` (callers index with ids they got from this table).
    pub fn get(&self, i: usize) -> &str {
        let off = self.offsets();
        let (a, b) = (off[i] as usize, off[i + 1] as usize);
        // Checked in a verifying `open`; without it, damage reads as "".
        self.data()
            .get(a..b.max(a))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }

    /// Iterates over all strings.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.count).map(|i| self.get(i))
    }
}

/// A table of `u32` lists: `count + 1` u64 offsets, then the values.
#[derive(Debug)]
pub struct ListTable {
    file: CheckedFile,
    count: usize,
    total: usize,
}

impl ListTable {
    /// Writes `lists` as a list table.
    pub fn write<L: AsRef<[u32]>>(path: &Path, lists: &[L]) -> Result<()> {
        let total: u64 = lists.iter().map(|l| l.as_ref().len() as u64).sum();
        let mut w = FileWriter::create(path, Kind::LISTS, [lists.len() as u64, total, 0, 0, 0])?;
        let mut off = 0u64;
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        offsets.push(0u64);
        for l in lists {
            off += l.as_ref().len() as u64;
            offsets.push(off);
        }
        w.write_pod(&offsets)?;
        for l in lists {
            w.write_pod(l.as_ref())?;
        }
        w.finish()
    }

    /// Opens and checks a list table; every value must be below `bound`.
    pub fn open(path: &Path, verify: bool, bound: u32) -> Result<Self> {
        let file = CheckedFile::open(path, Kind::LISTS, verify)?;
        let [count, total, ..] = file.fields();
        let need = (count as u128 + 1) * 8 + total as u128 * 4;
        if need != file.payload().len() as u128 {
            return Err(file.corrupt(format!(
                "{count} lists of {total} values need {need} payload bytes, found {}",
                file.payload().len()
            )));
        }
        let t = Self {
            file,
            count: count as usize,
            total: total as usize,
        };
        let offs = t.offsets();
        if offs[0] != 0 || offs[t.count] != total || offs.windows(2).any(|w| w[0] > w[1]) {
            return Err(t.file.corrupt("list offsets are not increasing"));
        }
        if let Some(bad) = t.values().iter().find(|&&v| v >= bound) {
            return Err(t
                .file
                .corrupt(format!("value {bad} out of range (bound {bound})")));
        }
        Ok(t)
    }

    fn offsets(&self) -> &[u64] {
        bytemuck::cast_slice(&self.file.payload()[..(self.count + 1) * 8])
    }

    fn values(&self) -> &[u32] {
        bytemuck::cast_slice(
            &self.file.payload()[(self.count + 1) * 8..(self.count + 1) * 8 + self.total * 4],
        )
    }

    /// Number of lists.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no lists.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// List `i`; panics if `i >= len()`.
    pub fn get(&self, i: usize) -> &[u32] {
        let o = self.offsets();
        &self.values()[o[i] as usize..o[i + 1] as usize]
    }
}

/// Writes a JSON document in the envelope.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| IndexError::Corrupt {
        path: path.to_owned(),
        reason: format!("cannot serialise: {e}"),
    })?;
    write_file(path, Kind::JSON, [bytes.len() as u64, 0, 0, 0, 0], &bytes)
}

/// Reads a JSON document written by [`write_json`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let file = CheckedFile::open(path, Kind::JSON, true)?;
    serde_json::from_slice(file.payload()).map_err(|e| file.corrupt(format!("invalid JSON: {e}")))
}

/// Reads a slice of `T` at byte offset `off` of a payload, with bounds checks.
pub(crate) fn section<'a, T: bytemuck::Pod>(
    file: &'a CheckedFile,
    off: usize,
    count: usize,
    what: &str,
) -> Result<&'a [T]> {
    let size = std::mem::size_of::<T>();
    let end = count
        .checked_mul(size)
        .and_then(|b| b.checked_add(off))
        .ok_or_else(|| file.corrupt(format!("{what}: size overflows")))?;
    let payload = file.payload();
    if end > payload.len() {
        return Err(file.corrupt(format!(
            "{what}: needs bytes {off}..{end}, payload has {}",
            payload.len()
        )));
    }
    bytemuck::try_cast_slice(&payload[off..end]).map_err(|e| file.corrupt(format!("{what}: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        StringTable::write(&p, &["a", "héllo", ""]).unwrap();
        let t = StringTable::open(&p, true).unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), vec!["a", "héllo", ""]);
        drop(t);

        let good = std::fs::read(&p).unwrap();
        // Every single-byte flip is caught: checksum, magic, length or version.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&p, &bad).unwrap();
            assert!(
                StringTable::open(&p, true).is_err(),
                "flip at byte {i} not detected"
            );
        }
        // Every truncation is caught.
        for len in 0..good.len() {
            std::fs::write(&p, &good[..len]).unwrap();
            assert!(
                StringTable::open(&p, true).is_err(),
                "truncation to {len} not detected"
            );
        }
    }

    #[test]
    fn wrong_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        StringTable::write(&p, &["x"]).unwrap();
        let err = CheckedFile::open(&p, Kind::VECTORS, true).unwrap_err();
        assert!(matches!(err, IndexError::BadMagic { .. }), "{err}");
    }
}
