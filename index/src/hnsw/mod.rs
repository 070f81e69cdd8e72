//! Hierarchical navigable small-world graphs (Malkov & Yashunin, "Efficient and
//! robust approximate nearest neighbor search using Hierarchical Navigable Small
//! World graphs", IEEE TPAMI 2018).
//!
//! The graph is built in memory with one lock per node (insertions run in
//! parallel on a rayon pool, as hnswlib does), then flattened into one `u32`
//! array that is written in the envelope format and searched straight from a
//! memory map:
//!
//! ```text
//! level0   n × (m0 + 1)   per node: neighbour count, then m0 slots
//! levels   n              top level of each node
//! upper    n              offset of the node's upper-level block, u32::MAX if level 0 only
//! blocks   Σ level·(m+1)  per upper level: neighbour count, then m slots
//! ```
//!
//! Neighbours are chosen with the paper's heuristic (algorithm 4) without
//! keeping pruned connections, which keeps the graph navigable on clustered data.
//!
//! [`build`] holds the parallel construction, [`search`] the beam search
//! over any [`crate::scorer::Scorer`], and [`graph`] the reader of the
//! written file.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

mod build;
mod graph;
mod search;

pub use build::build;
pub use graph::Hnsw;

/// Build parameters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct HnswParams {
    /// Links per node on upper levels; level 0 keeps `2·m`. Default 16.
    pub m: usize,
    /// Candidate list size while building. Default 200.
    pub ef_construction: usize,
    /// Seed of the level assignment.
    pub seed: u64,
    /// Also write int8 codes of the vectors ([`crate::quant`]) for quantised
    /// search. Default false.
    #[serde(default)]
    pub quantize: bool,
    /// With `quantize`, which codes: int8 (default) or f16.
    #[serde(default)]
    pub codes: crate::quant::CodeKind,
    /// Compute the build's distances on int8 codes of the vectors (a
    /// quarter of the bytes) instead of the f32 vectors; searches are
    /// unaffected. Default true: on clustered200k it halved the build time
    /// (97 → 47 s with 2 threads) at the same recall curve.
    #[serde(default)]
    pub build_on_codes: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            seed: 0x5eed,
            quantize: false,
            codes: crate::quant::CodeKind::Int8,
            build_on_codes: true,
        }
    }
}

impl HnswParams {
    fn validate(&self) -> Result<()> {
        if !(2..=256).contains(&self.m) {
            return Err(IndexError::InvalidParameter {
                name: "m",
                reason: format!("must be in 2..=256, got {}", self.m),
            });
        }
        if self.ef_construction < 1 || self.ef_construction > 10_000 {
            return Err(IndexError::InvalidParameter {
                name: "ef_construction",
                reason: format!("must be in 1..=10000, got {}", self.ef_construction),
            });
        }
        Ok(())
    }
}

/// A neighbour found by a search: internal id and distance (smaller is closer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// Internal id (row in the vector store).
    pub id: u32,
    /// Distance under the index metric.
    pub distance: f32,
}

/// (distance, id) ordered by distance then id, so ties break towards the lower id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand(pub(crate) f32, pub(crate) u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}
