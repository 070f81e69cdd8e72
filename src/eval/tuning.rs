//! The validation grids and the helpers that search them: source lists
//! fused under candidate weights, the reranker's AUC over fused heads.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::metrics::{user_metrics, KS};
use crate::config::SourceWeights;
use crate::error::{Error, Result};

/// Decays and history lengths of the content profile tried on validation.
pub const DECAYS: [f32; 5] = [1.0, 0.7, 0.5, 0.3, 0.1];

/// History lengths tried on validation.
pub const MAX_ITEMS: [usize; 7] = [1, 2, 3, 5, 10, 20, 50];

/// EASE λ tried on validation.
pub const LAMBDAS: [f32; 3] = [100.0, 200.0, 400.0];

/// History recency decays of EASE and transitions tried on validation.
pub const SOURCE_DECAYS: [f32; 5] = [1.0, 0.9, 0.8, 0.7, 0.5];

/// Per-source weight lists of the fusion sweep.
pub type FusionGrid = ([f32; 4], [f32; 3], [f32; 2], [f32; 4], [f32; 4]);

/// Fusion weights of transitions, content, popularity, ALS and two-tower tried (EASE weighs 1).
pub const FUSION_WEIGHTS: FusionGrid = (
    [0.0, 0.1, 0.25, 0.5],
    [0.0, 0.1, 0.2],
    [0.0, 0.05],
    [0.0, 0.25, 0.5, 1.0],
    [0.0, 0.25, 0.5, 1.0],
);

/// Weights of the sequence source tried on top of each fusion method's best
/// weights from [`FUSION_WEIGHTS`] (a full grid with it would take four times
/// as long).
pub const SEQUENCE_WEIGHTS: [f32; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];

/// Weights of the reranker's list tried on validation.
pub const RERANK_WEIGHTS: [f32; 9] = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// ALS (regularisation, alpha) tried on validation.
pub const ALS_GRID: [(f32, f32); 6] = [
    (5.0, 1.0),
    (10.0, 1.0),
    (10.0, 4.0),
    (20.0, 4.0),
    (10.0, 10.0),
    (50.0, 10.0),
];

pub(super) fn only(
    source: crate::engine::Source,
    base: &crate::config::HybridConfig,
) -> crate::config::HybridConfig {
    use crate::engine::Source;
    crate::config::HybridConfig {
        ease_weight: (source == Source::Ease) as u8 as f32,
        transitions_weight: (source == Source::Transitions) as u8 as f32,
        content_weight: (source == Source::Content) as u8 as f32,
        popularity_weight: (source == Source::Popularity) as u8 as f32,
        als_weight: (source == Source::Als) as u8 as f32,
        two_tower_weight: (source == Source::TwoTower) as u8 as f32,
        sequence_weight: (source == Source::Sequence) as u8 as f32,
        ..base.clone()
    }
}

/// The lists with the weights of a validation trial, matched by source
/// name (a list of no source, such as the reranker's, keeps its weight).
pub(super) fn with_weights(
    lists: &[crate::fusion::SourceList],
    w: &SourceWeights,
) -> Vec<crate::fusion::SourceList> {
    let mut l = lists.to_vec();
    for x in &mut l {
        if let Some(w) = w.by_name(x.name) {
            x.weight = w;
        }
    }
    l
}

/// NDCG@10 of the fusion of `lists` against a user's held-out items.
pub(super) fn fused_ndcg10(
    method: crate::fusion::FusionMethod,
    lists: &[crate::fusion::SourceList],
    rrf_k: f32,
    truth: &HashSet<u32>,
) -> f64 {
    let ranked: Vec<u32> = crate::fusion::fuse(method, lists, rrf_k)
        .into_iter()
        .take(KS[1])
        .map(|e| e.0)
        .collect();
    user_metrics(&ranked, truth).ndcg[0]
}

/// AUC of the reranker and of the fusion score it reranks, pooled over every
/// (user, head item) pair labelled by the user's held-out items. The
/// reranker's is that of its list as it is fused: an item without
/// interactions at its fused place, with the score of that place
/// (`engine::rerank_known`).
pub(super) fn head_auc(
    cached: &[(Vec<crate::fusion::SourceList>, &HashSet<u32>)],
    reranked: &[crate::fusion::SourceList],
    method: crate::fusion::FusionMethod,
    weights: &SourceWeights,
    rrf_k: f32,
) -> HeadAuc {
    let mut rr = Vec::new();
    let mut fused = Vec::new();
    for ((lists, truth), r) in cached.iter().zip(reranked) {
        let f: HashMap<u32, f32> =
            crate::fusion::fuse(method, &with_weights(lists, weights), rrf_k)
                .into_iter()
                .collect();
        for &(i, score) in &r.items {
            let y = truth.contains(&i);
            rr.push((score, y));
            fused.push((f.get(&i).copied().unwrap_or(f32::MIN), y));
        }
    }
    HeadAuc {
        pairs: rr.len(),
        positives: rr.iter().filter(|p| p.1).count(),
        reranker: crate::rerank::din::auc(&rr),
        fusion: crate::rerank::din::auc(&fused),
    }
}

/// AUC over the reranked heads (users' held-out items are the positives).
#[derive(Clone, Debug, Serialize)]
pub struct HeadAuc {
    /// (user, item) pairs.
    pub pairs: usize,
    /// Positive pairs.
    pub positives: usize,
    /// AUC of the reranker's score.
    pub reranker: f64,
    /// AUC of the fusion score that chose the head, for comparison.
    pub fusion: f64,
}

pub(super) fn argmax<T: Clone>(v: &[(T, f64)]) -> Result<(T, f64)> {
    v.iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .ok_or_else(|| Error::invalid("empty validation grid"))
}
