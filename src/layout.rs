//! The layout of an index root and of a generation in it: every file and
//! directory name the build writes and the engine, the live log and the
//! server read, and the small typed records stored beside the models. The
//! build (`pipeline`) and the readers (`engine`, `live`, `users`, `rerank`)
//! both import these names from here, so neither needs the other.
//!
//! The `vecrec-index` crate owns the names of its own files (the manifest,
//! the HNSW graph, vectors, ids, item metadata, the `CURRENT` pointer).

use crate::config::TwoTowerOptions;

/// The live-update log under an index root (not inside a generation).
pub const WAL_FILE: &str = "wal/wal.log";

/// Sparse item-item rows of EASE (`SparseRows` files with this stem).
pub const EASE_ROWS: &str = "ease";
/// Sparse item-item rows of the transitions model.
pub const TRANSITIONS_ROWS: &str = "transitions";

/// Sub-directory of a generation holding the ALS item-factor index.
pub const ALS_DIR: &str = "als";
/// File of the ALS user factors (one row per user, in `users.bin` order).
pub const ALS_USERS_FILE: &str = "als_users.bin";

/// Sub-directory of a generation holding the two-tower item-embedding index.
pub const TWO_TOWER_DIR: &str = "two_tower";
/// File of the two-tower user encoder (ONNX bytes in the envelope).
pub const USER_TOWER_FILE: &str = "user_tower.onnx.bin";
/// File of the two-tower settings ([`TwoTowerMeta`]).
pub const TWO_TOWER_META_FILE: &str = "two_tower.json";

/// File of the cross-attention reranker (ONNX bytes in the envelope).
pub const DIN_FILE: &str = "reranker.onnx.bin";
/// File of its settings (history length, embedding width).
pub const DIN_META_FILE: &str = "reranker.json";

/// File of the learned fusion model.
pub const FUSION_FILE: &str = "fusion_lr.bin";

/// User ids of the stored profiles.
pub const USER_IDS_FILE: &str = "users.bin";
/// Each user's history (item rows).
pub const USER_HISTORY_FILE: &str = "user_history.bin";
/// The weights of those history entries.
pub const USER_WEIGHTS_FILE: &str = "user_weights.bin";
/// Each user's profile vector.
pub const USER_VECTORS_FILE: &str = "user_vectors.bin";

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
