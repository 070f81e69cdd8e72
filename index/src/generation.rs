//! Generations: every build writes a fresh directory, then switches a pointer.
//!
//! An index root holds `gen-000001/`, `gen-000002/`, ... and a small `CURRENT`
//! file naming the live one. A build writes into a hidden temporary directory,
//! fsyncs every file and the directory, renames it to the next generation name
//! and only then replaces `CURRENT` atomically (temp file, `sync_data`, rename,
//! directory fsync — tantivy's `atomic_write`). A crash at any point leaves
//! either the old or the new generation live, never a half-built one; a
//! dropped, uncommitted writer removes its temporary directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IndexError, Result};

/// Name of the pointer file in an index root.
pub const CURRENT: &str = "CURRENT";
const PREFIX: &str = "gen-";

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync,
/// rename over `path`, fsync of the directory. A reader sees the old file or
/// the new one, never a part; on failure the temp file is removed. The one
/// helper for this in the workspace (the log rewrite, the `CURRENT` pointer,
/// the sample generator's outputs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("file");
    // Unique beyond the process id: processes in containers on one shared
    // volume often have the same one.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| IndexError::io(&tmp, e))?;
        f.sync_data().map_err(|e| IndexError::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Fsyncs a directory so renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = fs::File::open(dir).map_err(|e| IndexError::io(dir, e))?;
    d.sync_all().map_err(|e| IndexError::io(dir, e))
}

fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// Committed generations under `root`, oldest first, as (number, path).
pub fn list_generations(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(IndexError::io(root, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| IndexError::io(root, e))?;
        if let Some(n) = entry.file_name().to_str().and_then(generation_number) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The live generation directory of `root`, as named by `CURRENT`.
pub fn current_generation(root: &Path) -> Result<PathBuf> {
    let p = root.join(CURRENT);
    let name = match fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IndexError::NoGeneration {
                path: root.to_owned(),
            })
        }
        Err(e) => return Err(IndexError::io(&p, e)),
    };
    let name = name.trim();
    if generation_number(name).is_none() {
        return Err(IndexError::Corrupt {
            path: p,
            reason: format!("{name:?} is not a generation name"),
        });
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(IndexError::Corrupt {
            path: p,
            reason: format!("names {name}, which does not exist"),
        });
    }
    Ok(dir)
}

/// A generation being written. Commit it to make it live; drop it to discard it.
#[derive(Debug)]
pub struct GenerationWriter {
    root: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl GenerationWriter {
    /// Starts a new generation under `root` (created if missing).
    pub fn begin(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| IndexError::io(root, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = root.join(format!(".tmp-{}-{nanos}", std::process::id()));
        fs::create_dir(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        Ok(Self {
            root: root.to_owned(),
            tmp,
            committed: false,
        })
    }

    /// The directory to write this generation's files into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Makes the generation durable and live; returns its final directory.
    pub fn commit(self) -> Result<PathBuf> {
        let root = self.root.clone();
        let dest = self.commit_unpublished()?;
        publish(&root, &dest)?;
        Ok(dest)
    }

    /// Renames the generation into place (`gen-N`, synced) without moving
    /// `CURRENT`: servers keep the live one until [`publish`] names this.
    /// Several roots that must change together (a partitioned build) are
    /// committed this way, then published one after another.
    pub fn commit_unpublished(mut self) -> Result<PathBuf> {
        for entry in fs::read_dir(&self.tmp).map_err(|e| IndexError::io(&self.tmp, e))? {
            let path = entry.map_err(|e| IndexError::io(&self.tmp, e))?.path();
            let f = fs::File::open(&path).map_err(|e| IndexError::io(&path, e))?;
            f.sync_all().map_err(|e| IndexError::io(&path, e))?;
        }
        sync_dir(&self.tmp)?;
        let next = list_generations(&self.root)?
            .last()
            .map_or(1, |(n, _)| n + 1);
        let name = format!("{PREFIX}{next:06}");
        let dest = self.root.join(&name);
        fs::rename(&self.tmp, &dest).map_err(|e| IndexError::io(&dest, e))?;
        self.committed = true;
        sync_dir(&self.root)?;
        Ok(dest)
    }
}

/// Makes the committed generation `dir` (under `root`) the live one:
/// `CURRENT` names it, replaced atomically.
pub fn publish(root: &Path, dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(PREFIX) && dir.parent() == Some(root))
        .ok_or_else(|| {
            IndexError::io(dir, std::io::Error::other("not a generation of this root"))
        })?;
    write_atomic(&root.join(CURRENT), format!("{name}\n").as_bytes())
}

impl Drop for GenerationWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Removes all but the newest `keep` generations (never the live one) and stale temp dirs.
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let live = current_generation(root).ok();
    let gens = list_generations(root)?;
    let mut removed = Vec::new();
    let cut = gens.len().saturating_sub(keep.max(1));
    for (_, path) in gens.into_iter().take(cut) {
        if Some(&path) != live.as_ref() {
            fs::remove_dir_all(&path).map_err(|e| IndexError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Re-reads every file of a generation directory (and its subdirectories)
/// in the envelope format and checks its checksum, as a full open does;
/// returns how many files it checked. For a scrub of the served generation:
/// files changed on disk after the start are found here.
pub fn scrub(dir: &Path) -> Result<usize> {
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| IndexError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| IndexError::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            checked += scrub(&p)?;
        } else if crate::format::verify_file(&p)? {
            checked += 1;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpublished_generation_waits_for_publish() {
        let root = tempfile::tempdir().unwrap();
        let g1 = GenerationWriter::begin(root.path())
            .unwrap()
            .commit()
            .unwrap();
        let g2 = GenerationWriter::begin(root.path())
            .unwrap()
            .commit_unpublished()
            .unwrap();
        assert!(g2.is_dir());
        assert_eq!(current_generation(root.path()).unwrap(), g1);
        publish(root.path(), &g2).unwrap();
        assert_eq!(current_generation(root.path()).unwrap(), g2);
        let other = tempfile::tempdir().unwrap();
        assert!(
            publish(other.path(), &g1).is_err(),
            "another root's generation"
        );
    }

    #[test]
    fn commit_switches_and_drop_discards() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            current_generation(root.path()),
            Err(IndexError::NoGeneration { .. })
        ));
        let w = GenerationWriter::begin(root.path()).unwrap();
        fs::write(w.dir().join("a"), b"1").unwrap();
        let g1 = w.commit().unwrap();
        assert_eq!(current_generation(root.path()).unwrap(), g1);

        let w = GenerationWriter::begin(root.path()).unwrap();
        fs::write(w.dir().join("a"), b"2").unwrap();
        let tmp = w.dir().to_owned();
        drop(w);
        assert!(!tmp.exists(), "uncommitted generation left behind");
        assert_eq!(current_generation(root.path()).unwrap(), g1);

        let g2 = GenerationWriter::begin(root.path())
            .unwrap()
            .commit()
            .unwrap();
        let g3 = GenerationWriter::begin(root.path())
            .unwrap()
            .commit()
            .unwrap();
        assert!(g1 < g2 && g2 < g3);
        assert_eq!(prune(root.path(), 2).unwrap(), vec![g1]);
        assert_eq!(current_generation(root.path()).unwrap(), g3);
    }

    #[test]
    fn garbage_pointer_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join(CURRENT), "../../etc").unwrap();
        assert!(matches!(
            current_generation(root.path()),
            Err(IndexError::Corrupt { .. })
        ));
    }
}
