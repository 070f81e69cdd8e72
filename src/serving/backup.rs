//! Backups of an index root while it is served: [`snapshot`] writes one tar
//! file holding the served generation, the `CURRENT` pointer and the
//! write-ahead log up to its last complete record, and [`restore`] unpacks
//! one into a new root after checking it.
//!
//! Consistency without stopping the server: a published generation is never
//! changed, and the log only grows until a compaction publishes a new
//! generation and then prunes it. So the snapshot reads `CURRENT`, copies
//! the log and the generation, and reads `CURRENT` again: if it is
//! unchanged, the log copy
//! holds every write after that generation's `wal_seq` (an append caught
//! half-way is left out: it was not acknowledged when the copy was taken);
//! if not, it starts over.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vecrec_index::generation::{current_generation, CURRENT};
use vecrec_index::wal;

use crate::error::{Error, Result};
use crate::layout::WAL_FILE;

/// What a snapshot holds (also stored in it as `SNAPSHOT.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// The generation directory's name.
    pub generation: String,
    /// Number of the last log record included (0 if none).
    pub wal_seq: u64,
    /// Log records included.
    pub records: usize,
    /// When it was taken, seconds since the Unix epoch.
    pub taken_at: u64,
}

const MANIFEST: &str = "SNAPSHOT.json";

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes a consistent snapshot of the index root `root` (served or not)
/// to the tar file `out` (written to a temporary file, then renamed).
pub fn snapshot(root: &Path, out: &Path) -> Result<Snapshot> {
    let wal_path = root.join(WAL_FILE);
    for _ in 0..10 {
        let gen = current_generation(root)?;
        let log = match std::fs::read(&wal_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&wal_path, e)),
        };
        let (image, wal_seq, records) = match &log {
            Some(b) => wal::intact_image(&wal_path, b)?,
            None => (Vec::new(), 0, 0),
        };
        let name = gen
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(format!("{}: not a generation", gen.display())))?
            .to_owned();
        let snap = Snapshot {
            generation: name.clone(),
            wal_seq,
            records,
            taken_at: now(),
        };
        let tmp = out.with_extension("tmp");
        let written = (|| -> Result<()> {
            let file = File::create(&tmp).map_err(io(&tmp))?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
            tar.follow_symlinks(false);
            let add = |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(snap.taken_at);
                h.set_cksum();
                tar.append_data(&mut h, path, bytes).map_err(io(out))
            };
            let meta =
                serde_json::to_vec_pretty(&snap).map_err(|e| Error::invalid(e.to_string()))?;
            add(&mut tar, MANIFEST, &meta)?;
            tar.append_dir_all(&name, &gen).map_err(io(&gen))?;
            add(&mut tar, CURRENT, format!("{name}\n").as_bytes())?;
            if log.is_some() {
                add(&mut tar, WAL_FILE, &image)?;
            }
            let w = tar.into_inner().map_err(io(out))?;
            let f = w.into_inner().map_err(|e| Error::io(out, e.into_error()))?;
            f.sync_all().map_err(io(out))
        })();
        // A compaction that published meanwhile may have pruned the log (or
        // the old generation): start over.
        let moved = written.is_ok() && current_generation(root)? != gen;
        if written.is_err() || moved {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        if moved {
            continue;
        }
        std::fs::rename(&tmp, out).map_err(io(out))?;
        return Ok(snap);
    }
    Err(Error::FailedPrecondition(format!(
        "{}: the served generation kept changing while the snapshot was taken; try again",
        root.display()
    )))
}

/// Unpacks the snapshot `archive` into the new index root `root` (which
/// must not exist or be empty), after checking every generation file's
/// checksum and the log; the root is complete when this returns, or absent.
pub fn restore(archive: &Path, root: &Path) -> Result<Snapshot> {
    if root.exists() && std::fs::read_dir(root).map_err(io(root))?.next().is_some() {
        return Err(Error::invalid(format!(
            "{}: not empty; restore into a new directory",
            root.display()
        )));
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let staging: PathBuf = parent.join(format!(
        ".{}.restore-{}",
        root.file_name().and_then(|n| n.to_str()).unwrap_or("index"),
        std::process::id()
    ));
    let unpacked = (|| -> Result<Snapshot> {
        let mut tar = tar::Archive::new(File::open(archive).map_err(io(archive))?);
        tar.set_preserve_permissions(false);
        tar.unpack(&staging).map_err(io(archive))?;
        let meta = std::fs::read(staging.join(MANIFEST)).map_err(io(archive))?;
        let snap: Snapshot = serde_json::from_slice(&meta)
            .map_err(|e| Error::invalid(format!("{}: {MANIFEST}: {e}", archive.display())))?;
        let gen = current_generation(&staging)?;
        vecrec_index::generation::scrub(&gen)?;
        let wal_path = staging.join(WAL_FILE);
        if wal_path.exists() {
            let r = wal::check(&wal_path)?;
            if r.damage.is_some() || r.last_seq != snap.wal_seq {
                return Err(Error::invalid(format!(
                    "{}: the log in the snapshot does not read back to record {}",
                    archive.display(),
                    snap.wal_seq
                )));
            }
        }
        std::fs::remove_file(staging.join(MANIFEST)).map_err(io(&staging))?;
        Ok(snap)
    })();
    let snap = match unpacked {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if root.exists() {
        std::fs::remove_dir(root).map_err(io(root))?;
    }
    std::fs::rename(&staging, root).map_err(io(root))?;
    vecrec_index::generation::sync_dir(parent)?;
    Ok(snap)
}
