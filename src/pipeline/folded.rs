//! The inputs a folding partitioned build (`vecrec-build --shards N
//! --fold-log` or `--compact`) was made from, kept under `OUT/folded/`,
//! and which records of the shards' logs they hold.
//!
//! Once a folding build is published, the shards' servers drop the
//! records it took from their logs, so its inputs must be written first
//! and the next build must start from them. A build that wrote them and
//! then stopped before publishing leaves the logs whole: folding them
//! again over those inputs would count the same events twice. So each
//! write also records, by the inputs' digest, the last record of each
//! log they hold (`FOLDED.json`), and a fold over inputs with a record
//! starts after it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shards::inputs_digest;
use crate::catalog::{
    read_catalog, read_interactions, write_catalog_jsonl, write_interactions_csv, CatalogItem,
    Interaction,
};
use crate::error::{Error, Result};
use crate::layout::{FOLDED_DIR, FOLDED_RECORD_FILE};
use crate::live::Changes;

/// Records kept in `FOLDED.json`, newest last.
const KEPT_RECORDS: usize = 8;

/// The folded catalogue's file name under [`FOLDED_DIR`].
pub const FOLDED_CATALOG: &str = "catalog.jsonl";
/// The folded interactions' file name under [`FOLDED_DIR`].
pub const FOLDED_INTERACTIONS: &str = "interactions.csv";

/// One set of inputs a folding build wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FoldedRecord {
    /// [`inputs_digest`] of the catalogue and interactions written.
    inputs: String,
    /// The last record of each shard's log they hold, in shard order.
    through: Vec<u64>,
}

/// The contents of `FOLDED.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FoldedRecords {
    /// Oldest first.
    written: Vec<FoldedRecord>,
}

/// `OUT/folded/` of the partitioned build under `root`.
pub fn folded_dir(root: &Path) -> PathBuf {
    root.join(FOLDED_DIR)
}

fn read_records(root: &Path) -> Result<FoldedRecords> {
    let path = folded_dir(root).join(FOLDED_RECORD_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FoldedRecords::default()),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The last record of each of the `shards` shards' logs that `items` and
/// `interactions` hold already: what the folding build that wrote them
/// under `root` recorded, or 0 for every shard when no fold wrote them.
/// `files` are the files they were read from: inputs read from
/// `OUT/folded/` itself that match no record (a build stopped between
/// writing its two files, or files edited there) are refused, since
/// folding the logs over them could count records twice.
pub fn folded_already(
    root: &Path,
    shards: usize,
    items: &[CatalogItem],
    interactions: &[Interaction],
    files: &[&Path],
) -> Result<Vec<u64>> {
    let digest = inputs_digest(items, interactions);
    let records = read_records(root)?;
    if let Some(r) = records
        .written
        .iter()
        .rev()
        .find(|r| r.inputs == digest && r.through.len() == shards)
    {
        // Inputs older than what a shard serves: the records in between
        // are in neither these inputs nor (pruned once served) its log.
        for (s, &through) in r.through.iter().enumerate() {
            let shard = crate::layout::shard_root(root, s);
            let served = crate::layout::GenerationInfo::served(&shard)?.map_or(0, |g| g.wal_seq);
            if through < served {
                return Err(Error::Config(format!(
                    "these inputs hold shard {s}'s log through record {through}, but it serves \
                     a build that folded it through {served}: they are older than what is \
                     served, and would drop the records in between. Start from {} (the \
                     newest folded inputs), or rebuild with `vecrec-build --shards {shards} \
                     --compact`",
                    folded_dir(root).display()
                )));
            }
        }
        return Ok(r.through.clone());
    }
    let dir = folded_dir(root).canonicalize().ok();
    let inside = |f: &Path| {
        let parent = f
            .canonicalize()
            .ok()
            .and_then(|f| f.parent().map(Path::to_owned));
        dir.is_some() && parent == dir
    };
    // Written before folds were recorded: they hold what the served
    // generations folded, as the builds of then assumed.
    if records.written.is_empty() {
        return Ok(vec![0; shards]);
    }
    if let Some(f) = files.iter().find(|f| inside(f)) {
        return Err(Error::Config(format!(
            "{} holds inputs no folding build recorded writing for {shards} shards (a build \
             stopped while writing them, files edited there, or another shard count): folding \
             the logs over them could count records twice. Rebuild from what is served with \
             `vecrec-build --shards {shards} --compact`, or give inputs from elsewhere (the \
             logs beyond the served generations are then folded in)",
            f.display()
        )));
    }
    Ok(vec![0; shards])
}

/// Folds what the logs of the `shards` shard roots under `root` hold
/// beyond their served generations into `items` and `interactions`, as
/// one node's compaction does, leaving out the records these inputs hold
/// already ([`folded_already`]; `files` are the files they were read
/// from). Returns each log's changes.
pub fn fold_logs(
    root: &Path,
    shards: usize,
    items: &mut Vec<CatalogItem>,
    interactions: &mut Vec<Interaction>,
    files: &[&Path],
) -> Result<Vec<Changes>> {
    let starts = folded_already(root, shards, items, interactions, files)?;
    let changes = Changes::pending_shards_beyond(root, &starts)?;
    Changes::fold(&changes, items, interactions);
    Ok(changes)
}

/// Writes the inputs a folding build is made from to `OUT/folded/` under
/// `root`, with `through` (the last record of each shard's log they hold)
/// recorded under their digest, before the build publishes anything: once
/// it does, the logs' servers drop what it took, and these files (and
/// the build) are then the only place the folded writes are in. Returns
/// the inputs as read back from the files, for the build to be made from
/// exactly what a later build reading them gets.
pub fn write_folded(
    root: &Path,
    items: &[CatalogItem],
    interactions: &[Interaction],
    through: &[u64],
) -> Result<(Vec<CatalogItem>, Vec<Interaction>)> {
    // Written only by a build that still holds the root's lease.
    super::lock::check_held(root)?;
    let dir = folded_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let next = |name: &str| dir.join(format!("next-{name}"));
    write_catalog_jsonl(&next(FOLDED_CATALOG), items)?;
    write_interactions_csv(&next(FOLDED_INTERACTIONS), interactions)?;
    let (items, interactions) = (
        read_catalog(&next(FOLDED_CATALOG))?,
        read_interactions(&next(FOLDED_INTERACTIONS))?,
    );
    // The record first: until both files are in place, the old files
    // still match the old record and the new ones the new.
    let mut records = read_records(root)?;
    records.written.push(FoldedRecord {
        inputs: inputs_digest(&items, &interactions),
        through: through.to_vec(),
    });
    let extra = records.written.len().saturating_sub(KEPT_RECORDS);
    records.written.drain(..extra);
    let json = serde_json::to_vec_pretty(&records).expect("serialisable");
    vecrec_index::generation::write_atomic(&dir.join(FOLDED_RECORD_FILE), &json)?;
    for name in [FOLDED_CATALOG, FOLDED_INTERACTIONS] {
        std::fs::rename(next(name), dir.join(name)).map_err(|e| Error::io(dir.join(name), e))?;
    }
    vecrec_index::generation::sync_dir(&dir)?;
    Ok((items, interactions))
}

/// The inputs under `OUT/folded/` of the partitioned build under `root`.
pub fn read_folded(root: &Path) -> Result<(Vec<CatalogItem>, Vec<Interaction>)> {
    let dir = folded_dir(root);
    Ok((
        read_catalog(&dir.join(FOLDED_CATALOG))?,
        read_interactions(&dir.join(FOLDED_INTERACTIONS))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str) -> CatalogItem {
        CatalogItem {
            id: id.to_owned(),
            meta: vecrec_index::ItemMeta {
                title: id.to_uppercase(),
                text: format!("the story of {id}"),
                ..Default::default()
            },
        }
    }

    fn event(user: &str, item: &str, t: i64) -> Interaction {
        Interaction {
            user: user.to_owned(),
            item: item.to_owned(),
            timestamp: t,
            event: None,
            weight: 1.5,
        }
    }

    /// Inputs written by a fold are known by their digest, wherever they
    /// are read from; a record survives later writes (up to the kept
    /// number); inputs read from `folded/` that no record knows are
    /// refused once records are kept, others fold from the served
    /// generations.
    #[test]
    fn written_inputs_say_which_records_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let items = vec![item("a"), item("b")];
        let events = vec![event("u1", "a", 10), event("u1", "b", 11)];
        let files = [
            folded_dir(root).join(FOLDED_CATALOG),
            folded_dir(root).join(FOLDED_INTERACTIONS),
        ];
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        // Written by a build from before folds were recorded: they hold
        // what the served generations folded.
        std::fs::create_dir_all(folded_dir(root)).unwrap();
        write_catalog_jsonl(files[0], &items).unwrap();
        write_interactions_csv(files[1], &events).unwrap();
        assert_eq!(
            folded_already(root, 2, &items, &events, &files).unwrap(),
            vec![0, 0]
        );
        let (read_items, read_events) = write_folded(root, &items, &events, &[3, 0]).unwrap();
        assert_eq!(read_items.len(), 2);
        assert_eq!(read_events, events);
        let (f_items, f_events) = read_folded(root).unwrap();
        assert_eq!(
            folded_already(root, 2, &f_items, &f_events, &files).unwrap(),
            vec![3, 0]
        );
        // Another shard count: the record does not say.
        assert!(folded_already(root, 3, &f_items, &f_events, &files).is_err());
        assert_eq!(
            folded_already(root, 3, &f_items, &f_events, &[]).unwrap(),
            vec![0; 3]
        );

        // A later fold; the first inputs keep their record.
        let more = vec![event("u1", "a", 10), event("u2", "a", 12)];
        write_folded(root, &items, &more, &[5, 1]).unwrap();
        assert_eq!(
            folded_already(root, 2, &items, &events, &[]).unwrap(),
            vec![3, 0]
        );
        let (f_items, f_events) = read_folded(root).unwrap();
        assert_eq!(f_events, more);
        assert_eq!(
            folded_already(root, 2, &f_items, &f_events, &files).unwrap(),
            vec![5, 1]
        );

        // Files edited in place: refused there, folded from 0 elsewhere.
        let edited = vec![event("u3", "b", 13)];
        write_interactions_csv(files[1], &edited).unwrap();
        let (f_items, f_events) = read_folded(root).unwrap();
        let err = folded_already(root, 2, &f_items, &f_events, &files).unwrap_err();
        assert!(
            err.to_string().contains("could count records twice"),
            "{err}"
        );
        assert_eq!(
            folded_already(root, 2, &f_items, &f_events, &[]).unwrap(),
            vec![0, 0]
        );

        // Only the newest records are kept.
        for k in 0..KEPT_RECORDS as i64 {
            write_folded(root, &items, &[event("u9", "a", k)], &[k as u64, 0]).unwrap();
        }
        assert_eq!(
            folded_already(root, 2, &items, &events, &[]).unwrap(),
            vec![0, 0]
        );
        assert_eq!(
            folded_already(root, 2, &items, &[event("u9", "a", 1)], &[]).unwrap(),
            vec![1, 0]
        );
    }
}
