//! The layout of an index root and of a generation in it: every file and
//! directory name the build writes and the engine, the live log and the
//! server read, and the small typed records stored beside the models. The
//! build (`pipeline`) and the readers (`engine`, `live`, `users`, `rerank`)
//! both import these names from here, so neither needs the other.
//!
//! The `vecrec-index` crate owns the names of its own files (the manifest,
//! the HNSW graph, vectors, ids, item metadata, the `CURRENT` pointer).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{SequenceOptions, TwoTowerOptions, UserConfig};

/// The live-update log under an index root (not inside a generation).
pub const WAL_FILE: &str = "wal/wal.log";

/// The directory of the exposure log under an index root: files
/// `exposures-NNNNNN.log`, numbered from 1, rotated by size.
pub const EXPOSURE_DIR: &str = "experiments";

/// Sparse item-item rows of EASE (`SparseRows` files with this stem).
pub const EASE_ROWS: &str = "ease";
/// Sparse item-item rows of the transitions model.
pub const TRANSITIONS_ROWS: &str = "transitions";

/// Sub-directory of a generation holding the ALS item-factor index.
pub const ALS_DIR: &str = "als";
/// File of the ALS user factors (one row per user, in `users.bin` order).
pub const ALS_USERS_FILE: &str = "als_users.bin";
/// File of `YᵀY` of the ALS item factors (`f × f` f64 values, row-major),
/// which folding in a new history needs: written by the build, so an open
/// does not compute it over every item (generations without it compute it).
/// An `f64 matrix` envelope (`Kind::MATRIX_F64`, fields `[f, f, 0, 0, 0]`).
pub const ALS_GRAM_FILE: &str = "als_gram.bin";

/// Sub-directory of a generation holding the two-tower item-embedding index.
pub const TWO_TOWER_DIR: &str = "two_tower";
/// File of the two-tower user encoder (ONNX bytes in the envelope).
pub const USER_TOWER_FILE: &str = "user_tower.onnx.bin";
/// File of the two-tower settings ([`TwoTowerMeta`]).
pub const TWO_TOWER_META_FILE: &str = "two_tower.json";

/// Sub-directory of a generation holding the sequence model's item table
/// as an inner-product index.
pub const SEQUENCE_DIR: &str = "sequence";
/// File of the sequence model's network (ONNX bytes in the envelope).
pub const SEQUENCE_MODEL_FILE: &str = "sequence.onnx.bin";
/// File of the sequence model's settings ([`SequenceMeta`]).
pub const SEQUENCE_META_FILE: &str = "sequence.json";

/// File of the cross-attention reranker (ONNX bytes in the envelope).
pub const DIN_FILE: &str = "reranker.onnx.bin";
/// File of its settings (history length, embedding width).
pub const DIN_META_FILE: &str = "reranker.json";

/// File of the learned fusion model.
pub const FUSION_FILE: &str = "fusion_lr.bin";

/// File of a shard's slice of the trained sources ([`SlicedMeta`]): its
/// presence makes a shard generation answer `ShardSources`.
pub const SLICED_FILE: &str = "sliced.json";

/// File of a shard's items' numbers in the front generation, in the
/// shard's order (one list of a list table; increasing).
pub const FRONT_ROWS_FILE: &str = "front_rows.bin";

/// What a shard's slice of a partitioned hybrid build was cut from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlicedMeta {
    /// Items of the whole catalogue: the rows of the sliced EASE and
    /// transitions matrices, numbered as the front generation numbers them.
    pub front_items: usize,
    /// The front generation the slice was cut from (its directory name).
    pub front_generation: String,
    /// [`ids_digest`] of that front: the numbering the slice's EASE and
    /// transitions rows and `front_rows.bin` are in.
    pub front_ids: String,
}

/// File under a partitioned build's front root naming the front generation
/// written by `vecrec-build --shards N --front-only` for shard builds
/// (`--shard i`) to cut from ([`PendingFront`]); removed once the front and
/// every shard cut from it are published.
pub const PENDING_FRONT_FILE: &str = "PENDING.json";

/// File under a partitioned build's front root recording the front
/// published last ([`PendingFront`]'s fields): a split build run again
/// with the same digest while it is served has nothing to do.
pub const PUBLISHED_FRONT_FILE: &str = "PUBLISHED.json";

/// Directory under a partitioned build's front root where each shard build
/// cut from a pending front leaves a file `<front generation>/shard-<i>`
/// naming the shard's new generation; the build that finds every shard
/// there publishes them all and the front.
pub const CUT_DIR: &str = "cut";

/// Directory under a partitioned build's front root with a marker per
/// rebuild (`--run`) whose `--front-only` found its build served already:
/// that rebuild's shard pods have nothing to do.
pub const SERVED_RUNS_DIR: &str = "served-runs";

/// File under a partitioned build's root naming the build that holds it
/// now (`pipeline::lock`): one build at a time writes a partitioned build.
pub const BUILD_LOCK_FILE: &str = "BUILD.lock";

/// Directory under a partitioned build's root holding the catalogue and
/// interactions the last folding build (`--fold-log`, `--compact`) was
/// made from, and a record of which log records they hold
/// ([`FOLDED_RECORD_FILE`]).
pub const FOLDED_DIR: &str = "folded";

/// File under [`FOLDED_DIR`] recording, for the inputs each recent
/// folding build wrote there (by their digest), the last record of each
/// shard's log they hold: a build from those inputs folds only later ones.
pub const FOLDED_RECORD_FILE: &str = "FOLDED.json";

/// A front generation written but not yet published, waiting for its
/// shards to be cut from it (see [`PENDING_FRONT_FILE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingFront {
    /// The front generation's directory name.
    pub generation: String,
    /// Shards it is to be cut into.
    pub shards: usize,
    /// Digest of the catalogue, the interactions, the encoder and the
    /// settings it was built with (`pipeline::inputs_digest`, the
    /// encoder's fingerprint and the training, fusion, user and HNSW
    /// settings): a shard build with others does not cut from it, and a
    /// second `--front-only` with the same does not train again.
    pub inputs: String,
    /// Interactions it read, and those skipped for unknown items.
    pub interactions: (usize, usize),
    /// The last record of each shard's log its inputs folded in
    /// (`vecrec-build --front-only --fold-log`), in shard order: the
    /// shards cut from it record these as their `wal_seq`. Empty when its
    /// inputs folded no log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folded_through: Vec<u64>,
    /// The rebuild it belongs to (`--run`, shared by the pods of one Job):
    /// the pods of that rebuild cut from it, or, when it names the front
    /// published already, have nothing to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl PendingFront {
    /// Whether it is a front for `shards` shards of the digest `inputs`
    /// whose generation is still under `front_root`.
    pub fn is_for(&self, front_root: &Path, shards: usize, inputs: &str) -> bool {
        self.shards == shards && self.inputs == inputs && front_root.join(&self.generation).is_dir()
    }
}

/// A digest of a generation's item numbering: SHA-256 (first 16 bytes,
/// hex) of its id table, so two generations that number their items alike
/// (and only those) agree.
pub fn ids_digest(generation: &Path) -> crate::error::Result<String> {
    use sha2::{Digest, Sha256};
    let path = generation.join(vecrec_index::store::IDS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| crate::error::Error::io(&path, e))?;
    Ok(short_hex(&Sha256::digest(&bytes)))
}

/// The first 16 bytes of a digest, in hex: how the layout's records name
/// what they were made from.
pub fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A generation directory's name (`gen-000007`).
pub fn generation_name(dir: &Path) -> String {
    dir.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// User ids of the stored profiles.
pub const USER_IDS_FILE: &str = "users.bin";
/// Each user's history (item rows).
pub const USER_HISTORY_FILE: &str = "user_history.bin";
/// The weights of those history entries.
pub const USER_WEIGHTS_FILE: &str = "user_weights.bin";
/// Each user's profile vector.
pub const USER_VECTORS_FILE: &str = "user_vectors.bin";

/// What vecrec records about a generation in its manifest (the index
/// crate's free-form `Manifest.extra`, typed here). Keys it does not know
/// are ignored, and a missing key takes its default, so older generations
/// open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationInfo {
    /// The user-profile settings the stored profiles were made with.
    pub users: Option<UserConfig>,
    /// The last live-log record folded into the generation (0: none, as
    /// after a bulk build).
    pub wal_seq: u64,
    /// The sentence encoder that embedded the items, when the build did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_model: Option<String>,
    /// Its vector width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder_dim: Option<usize>,
    /// Which part of a partitioned catalogue this generation holds (`None`:
    /// the whole catalogue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
}

/// A shard of a partitioned build: the items `id` with
/// [`shard_of`]`(id, of) == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// This shard, from 0.
    pub index: usize,
    /// How many shards the catalogue was split into.
    pub of: usize,
}

impl GenerationInfo {
    /// The record of an opened generation; a damaged one reads as the
    /// default, with a log line.
    pub fn of(manifest: &vecrec_index::Manifest) -> Self {
        Self::from_json(&manifest.extra)
    }

    /// [`GenerationInfo::of`] from the stored JSON.
    pub fn from_json(extra: &serde_json::Value) -> Self {
        if extra.is_null() {
            return Self::default();
        }
        serde_json::from_value(extra.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the generation's manifest record is unreadable; using defaults");
            Self::default()
        })
    }

    /// The record of the generation the index root `root`'s `CURRENT`
    /// names, read from its manifest; `None` when none is published there.
    pub fn served(root: &Path) -> crate::error::Result<Option<Self>> {
        let dir = match vecrec_index::generation::current_generation(root) {
            Ok(dir) => dir,
            Err(vecrec_index::IndexError::NoGeneration { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let m: vecrec_index::Manifest =
            vecrec_index::format::read_json(&dir.join(vecrec_index::index::MANIFEST_FILE))?;
        Ok(Some(Self::of(&m)))
    }

    /// As the manifest stores it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data serialises")
    }
}

/// What a generation records about its two-tower model.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TwoTowerMeta {
    /// The options it was trained with (pooling length and decay).
    pub options: TwoTowerOptions,
    /// Item-feature width (content + ALS factors).
    pub input: usize,
    /// Mean in-batch softmax loss of the last epoch.
    pub train_loss: f32,
    /// Seconds spent training.
    pub train_seconds: f64,
}

/// What a generation records about its sequence model.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SequenceMeta {
    /// The options it was trained with (history length, width).
    pub options: SequenceOptions,
    /// Training windows.
    pub windows: usize,
    /// Mean sampled-softmax loss of the last epoch.
    pub train_loss: f32,
    /// Seconds spent training.
    pub train_seconds: f64,
}

/// FNV-1a of a string: the same on every machine and in every build, so
/// what it decides (which users a fit holds out, which shard owns an item)
/// never depends on the order things were read in.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shard of `shards` that owns the item `id` (see docs/scale-out.md).
pub fn shard_of(id: &str, shards: usize) -> usize {
    (stable_hash(id) % shards.max(1) as u64) as usize
}

/// The index root of shard `i` under a partitioned build's root.
pub fn shard_root(root: &Path, i: usize) -> PathBuf {
    root.join(format!("shard-{i}"))
}

/// The index root of the front tier's generation in a partitioned hybrid
/// build under `root`: one node's generation over the whole catalogue,
/// whose users, models, fusion and reranker `vecrec route --front` serves.
pub fn front_root(root: &Path) -> PathBuf {
    root.join("front")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_records_of_older_builds_still_read() {
        // What builds wrote before the record was typed.
        let old = serde_json::json!({
            "users": UserConfig::default(),
            "encoder_model": "m.onnx",
            "encoder_dim": 384,
            "something_else": true,
        });
        let info = GenerationInfo::from_json(&old);
        assert_eq!(info.users, Some(UserConfig::default()));
        assert_eq!(info.wal_seq, 0);
        assert_eq!(info.encoder_dim, Some(384));
        let compacted = GenerationInfo {
            wal_seq: 17,
            ..info.clone()
        };
        assert_eq!(GenerationInfo::from_json(&compacted.to_json()), compacted);
        assert_eq!(
            GenerationInfo::from_json(&serde_json::Value::Null),
            GenerationInfo::default()
        );
        // A damaged record reads as the default instead of failing the open.
        let bad = serde_json::json!({ "wal_seq": "many" });
        assert_eq!(GenerationInfo::from_json(&bad), GenerationInfo::default());
    }

    #[test]
    fn shard_assignment_is_fnv1a_and_spreads_items() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[shard_of(&format!("item-{i}"), 3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_root(Path::new("/x"), 2), Path::new("/x/shard-2"));
    }
}
