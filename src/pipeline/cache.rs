//! Item embeddings kept between builds, so a rebuild embeds only the texts
//! that are new or changed.
//!
//! A vector is found by the first 16 bytes of SHA-256 over the encoder's
//! fingerprint and the text; the fingerprint is SHA-256 over the ONNX model
//! file, the tokenizer file, the token limit and the vector width, so a new
//! model (or any change of what turns a text into a vector) misses every
//! entry. The cache is one file per fingerprint under
//! `<index root>/embedding-cache/`, in the checksummed envelope, holding
//! exactly the texts of the last build (older entries and other models'
//! files are dropped when it is rewritten), written to a temporary file and
//! renamed, so a crash leaves the old cache or the new one. A missing or
//! damaged cache is never a reason to fail a build: it is logged and the
//! texts are embedded.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vecrec_index::format::{CheckedFile, FileWriter, Kind};

use crate::encoder::Encoder;
use crate::error::{Error, Result};

/// The cache's directory under an index root.
pub const CACHE_DIR: &str = "embedding-cache";

/// The directory of the shards' cache parts under a partitioned build's
/// root (`vecrec-build --shards N --shard i --embed-only` writes
/// `<fingerprint>/shard-<i>-of-<N>.vec` there).
pub const PARTS_DIR: &str = "embedding-parts";

/// A cache key: the first 16 bytes of SHA-256(fingerprint, text).
pub type Key = [u8; 16];

/// SHA-256 over everything that decides an encoder's output for a text.
pub fn fingerprint(encoder: &Encoder) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let files = encoder.files();
    for path in [&files.model, &files.tokenizer] {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.update(b"\0file\0");
    }
    h.update((encoder.max_tokens() as u64).to_le_bytes());
    h.update((encoder.dim() as u64).to_le_bytes());
    Ok(h.finalize().into())
}

/// The key of `text` under an encoder's fingerprint.
pub fn key(fingerprint: &[u8; 32], text: &str) -> Key {
    let mut h = Sha256::new();
    h.update(fingerprint);
    h.update(text.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    d[..16].try_into().expect("16 of 32 bytes")
}

/// The cache of one encoder, opened for reading.
#[derive(Debug)]
pub struct EmbeddingCache {
    dim: usize,
    /// Entries in the file.
    n: usize,
    rows: HashMap<Key, usize>,
    file: Option<CheckedFile>,
}

fn short_hex(fingerprint: &[u8; 32]) -> String {
    fingerprint[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_name(fingerprint: &[u8; 32]) -> String {
    format!("{}.vec", short_hex(fingerprint))
}

/// The file of shard `i` of `n`'s cache part for `fingerprint` under a
/// partitioned build's root.
pub fn part_path(root: &Path, fingerprint: &[u8; 32], i: usize, n: usize) -> PathBuf {
    root.join(PARTS_DIR)
        .join(short_hex(fingerprint))
        .join(format!("shard-{i}-of-{n}.vec"))
}

/// Every cache part for `fingerprint` under a partitioned build's root,
/// opened (unreadable ones are logged and skipped).
pub fn open_parts(root: &Path, fingerprint: &[u8; 32], dim: usize) -> Vec<EmbeddingCache> {
    let dir = root.join(PARTS_DIR).join(short_hex(fingerprint));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "vec"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| match EmbeddingCache::read(&p, dim) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "an embedding cache part is unreadable; its texts are embedded");
                None
            }
        })
        .collect()
}

impl EmbeddingCache {
    /// Opens the cache of `fingerprint` under `dir`; empty when there is none
    /// or it cannot be read (logged).
    pub fn open(dir: &Path, fingerprint: &[u8; 32], dim: usize) -> Self {
        Self::open_file(&dir.join(file_name(fingerprint)), dim)
    }

    /// Opens the cache file `path`; empty when there is none or it cannot
    /// be read (logged).
    pub fn open_file(path: &Path, dim: usize) -> Self {
        let empty = Self {
            dim,
            n: 0,
            rows: HashMap::new(),
            file: None,
        };
        if !path.exists() {
            return empty;
        }
        Self::read(path, dim).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the embedding cache is unreadable; every text is embedded");
            empty
        })
    }

    fn read(path: &Path, dim: usize) -> Result<Self> {
        let file = CheckedFile::open(path, Kind::VECTORS, true)?;
        let [d, n, ..] = file.fields();
        let (d, n) = (d as usize, n as usize);
        if d != dim || file.payload().len() != n * (16 + 4 * d) {
            return Err(file
                .corrupt(format!(
                    "{n} entries of width {d} do not fit its {} bytes or this encoder's width {dim}",
                    file.payload().len()
                ))
                .into());
        }
        let keys = &file.payload()[..16 * n];
        let rows = keys
            .chunks_exact(16)
            .enumerate()
            .map(|(r, k)| (k.try_into().expect("16 bytes"), r))
            .collect();
        Ok(Self {
            dim,
            n,
            rows,
            file: Some(file),
        })
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The vector of a key, if cached.
    pub fn get(&self, key: &Key) -> Option<&[f32]> {
        let r = *self.rows.get(key)?;
        let file = self.file.as_ref()?;
        // The keys take 16 bytes (4 floats) each; the payload is 4-byte
        // aligned behind the 64-byte header.
        let floats = file.payload_as::<f32>().ok()?;
        let at = 4 * self.n + self.dim * r;
        floats.get(at..at + self.dim)
    }
}

/// Writes the cache of `fingerprint` under `dir`: one entry per distinct
/// key, the first of equal keys kept. Other files in `dir` are removed.
pub fn write(
    dir: &Path,
    fingerprint: &[u8; 32],
    keys: &[Key],
    vectors: &[Vec<f32>],
) -> Result<PathBuf> {
    let name = file_name(fingerprint);
    let path = dir.join(&name);
    write_file(&path, keys, vectors)?;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            // Another build's temporary file (`.name.tmp-…`) stays.
            let other = e.file_name().to_str().is_some_and(|f| f.starts_with('.'));
            if e.file_name().to_str() != Some(name.as_str()) && !other {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(path)
}

/// Writes one cache file at `path` (one entry per distinct key, the first
/// of equal keys kept) through a temporary file named for this process and
/// moment, renamed into place, so builds in several pods writing to one
/// shared volume never share a temporary file (and [`write`] leaves other
/// builds' temporary files alone).
pub fn write_file(path: &Path, keys: &[Key], vectors: &[Vec<f32>]) -> Result<()> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut seen = std::collections::HashSet::new();
    let take: Vec<usize> = (0..keys.len()).filter(|&i| seen.insert(keys[i])).collect();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let written = (|| -> Result<()> {
        let mut w = FileWriter::create(
            &tmp,
            Kind::VECTORS,
            [dim as u64, take.len() as u64, 0, 0, 0],
        )?;
        for &i in &take {
            w.write(&keys[i])?;
        }
        for &i in &take {
            w.write_pod(&vectors[i])?;
        }
        w.finish()?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    vecrec_index::generation::sync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_cache_reads_back_and_a_damaged_one_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let fp = [7u8; 32];
        let keys = [key(&fp, "a"), key(&fp, "b"), key(&fp, "a")];
        let vectors = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![9.0, 9.0]];
        std::fs::write(dir.path().join("stale.vec"), b"old").unwrap();
        let path = write(dir.path(), &fp, &keys, &vectors).unwrap();
        assert!(!dir.path().join("stale.vec").exists());
        let c = EmbeddingCache::open(dir.path(), &fp, 2);
        assert_eq!(c.len(), 2, "one entry per distinct text");
        assert_eq!(
            c.get(&keys[0]),
            Some(&[1.0, 2.0][..]),
            "the first of equal keys"
        );
        assert_eq!(c.get(&keys[1]), Some(&[3.0, 4.0][..]));
        assert_eq!(c.get(&key(&fp, "c")), None);
        // Another model's fingerprint keys nothing here, and a width it was
        // not written with is refused.
        assert_ne!(key(&[8u8; 32], "a"), keys[0]);
        assert!(EmbeddingCache::open(dir.path(), &fp, 3).is_empty());
        // One flipped byte: the checksum refuses it, the build embeds all.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(EmbeddingCache::open(dir.path(), &fp, 2).is_empty());
    }

    #[test]
    fn parts_of_every_shard_count_leave_other_files_alone_and_skip_damaged_ones() {
        let root = tempfile::tempdir().unwrap();
        let fp = [3u8; 32];
        let (a, b) = (key(&fp, "a"), key(&fp, "b"));
        let p0 = part_path(root.path(), &fp, 0, 2);
        let p1 = part_path(root.path(), &fp, 1, 2);
        write_file(&p0, &[a], &[vec![1.0, 2.0]]).unwrap();
        write_file(&p1, &[b], &[vec![3.0, 4.0]]).unwrap();
        assert!(p0.exists() && p1.exists(), "a part leaves the others");
        let parts = open_parts(root.path(), &fp, 2);
        assert_eq!(parts.len(), 2);
        let find = |k: &Key| parts.iter().find_map(|c| c.get(k).map(<[f32]>::to_vec));
        assert_eq!(find(&a), Some(vec![1.0, 2.0]));
        assert_eq!(find(&b), Some(vec![3.0, 4.0]));
        // Another model's parts are not this one's.
        assert!(open_parts(root.path(), &[4u8; 32], 2).is_empty());
        // A damaged part is skipped; the other still serves.
        let mut bytes = std::fs::read(&p1).unwrap();
        bytes[70] ^= 1;
        std::fs::write(&p1, bytes).unwrap();
        let parts = open_parts(root.path(), &fp, 2);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].get(&a).is_some());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(p0.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
