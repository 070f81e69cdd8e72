//! Settings of the hybrid pipeline: which sources are fused, how, with which
//! weights, and the reranking stage.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The multi-source `Recommend` pipeline: candidates from every source with a
/// positive weight, fused. Used when the generation holds the trained sources.
/// The defaults are the settings `vecrec-eval` chose on the ml-latest-small
/// validation split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    /// Use the multi-source pipeline when the generation has trained sources. Default true.
    pub enabled: bool,
    /// Candidates taken from each source. Default 200 (100 halves the
    /// search work but ranked worse on validation: README, "Configuration").
    pub candidates: usize,
    /// How the sources are fused: `weighted_minmax`, `weighted_zscore`,
    /// `geometric`, `rrf`, `borda` or `learned`. Default `rrf`.
    pub fusion: FusionMethod,
    /// The `k` of reciprocal-rank fusion. Default 60.
    pub rrf_k: f32,
    /// Weight of the EASE source. Default 1.
    pub ease_weight: f32,
    /// Weight of the transitions source. Default 0.5.
    pub transitions_weight: f32,
    /// Weight of the content (BERT vector) source. Default 0.2.
    pub content_weight: f32,
    /// Weight of the popularity source. Default 0.
    pub popularity_weight: f32,
    /// Weight of the ALS source. Default 0.25.
    pub als_weight: f32,
    /// Weight of the two-tower source. Default 0.5.
    pub two_tower_weight: f32,
    /// Weight of the self-attentive sequence source (trained when
    /// `train.sequence.enabled`). Default 0.25.
    pub sequence_weight: f32,
    /// Recency decay of the history for EASE, in (0, 1]. Default 0.8.
    pub ease_decay: f32,
    /// Recency decay of the history for transitions, in (0, 1]. Default 0.7.
    pub transitions_decay: f32,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            candidates: 200,
            fusion: FusionMethod::Rrf,
            rrf_k: 60.0,
            ease_weight: 1.0,
            transitions_weight: 0.5,
            content_weight: 0.2,
            popularity_weight: 0.0,
            als_weight: 0.25,
            two_tower_weight: 0.5,
            sequence_weight: 0.25,
            ease_decay: 0.8,
            transitions_decay: 0.7,
        }
    }
}

/// The fusion weight of each candidate source, by name (the `*_weight`
/// keys of `[hybrid]`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SourceWeights {
    /// EASE.
    pub ease: f32,
    /// Transitions.
    pub transitions: f32,
    /// Content (BERT vectors).
    pub content: f32,
    /// Popularity.
    pub popularity: f32,
    /// ALS.
    pub als: f32,
    /// Two-tower.
    pub two_tower: f32,
    /// Self-attentive sequence model.
    pub sequence: f32,
}

impl SourceWeights {
    /// Each weight with its source's name, in the engine's source order.
    pub fn named(&self) -> [(&'static str, f32); 7] {
        [
            ("ease", self.ease),
            ("transitions", self.transitions),
            ("content", self.content),
            ("popularity", self.popularity),
            ("als", self.als),
            ("two_tower", self.two_tower),
            ("sequence", self.sequence),
        ]
    }

    /// The weight of the source named `name`.
    pub fn by_name(&self, name: &str) -> Option<f32> {
        self.named().into_iter().find(|n| n.0 == name).map(|n| n.1)
    }
}

/// `ease=1 transitions=0.25 …`, in the engine's source order.
impl std::fmt::Display for SourceWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, (name, w)) in self.named().into_iter().enumerate() {
            if k > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={w}")?;
        }
        Ok(())
    }
}

impl HybridConfig {
    /// The sources' fusion weights.
    pub fn weights(&self) -> SourceWeights {
        SourceWeights {
            ease: self.ease_weight,
            transitions: self.transitions_weight,
            content: self.content_weight,
            popularity: self.popularity_weight,
            als: self.als_weight,
            two_tower: self.two_tower_weight,
            sequence: self.sequence_weight,
        }
    }

    /// These settings with the sources' fusion weights replaced.
    pub fn with_weights(&self, w: SourceWeights) -> Self {
        Self {
            ease_weight: w.ease,
            transitions_weight: w.transitions,
            content_weight: w.content,
            popularity_weight: w.popularity,
            als_weight: w.als,
            two_tower_weight: w.two_tower,
            sequence_weight: w.sequence,
            ..self.clone()
        }
    }
}

/// Which reranker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RerankKind {
    /// The generation's own cross-attention model.
    #[default]
    Din,
    /// A user-supplied text cross-encoder (`rerank.cross_encoder_model`).
    CrossEncoder,
}

/// Settings of the reranking stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RerankConfig {
    /// Which model: `din` or `cross_encoder`. Default `din`.
    pub kind: RerankKind,
    /// Weight of the reranker's list in the fusion; 0 turns reranking off.
    /// Default 1 (chosen on the ml-latest-small validation split).
    pub weight: f32,
    /// How many of the fused candidates are reranked. Default 200.
    pub candidates: usize,
    /// The cross-encoder ONNX file (kind `cross_encoder`).
    pub cross_encoder_model: Option<PathBuf>,
    /// Its tokenizer.json; default: the sentence encoder's.
    pub cross_encoder_tokenizer: Option<PathBuf>,
    /// History items whose titles form the cross-encoder's user context. Default 5.
    pub context_items: usize,
    /// Token limit of a (context, item) pair. Default 256.
    pub max_tokens: usize,
    /// ONNX Runtime intra-op threads per session. Default 1.
    pub threads: usize,
}

impl Default for RerankConfig {
    fn default() -> Self {
        Self {
            kind: RerankKind::Din,
            weight: 1.0,
            candidates: 200,
            cross_encoder_model: None,
            cross_encoder_tokenizer: None,
            context_items: 5,
            max_tokens: 256,
            threads: 1,
        }
    }
}

/// How lists are fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Weighted sum of min-max normalised scores.
    #[default]
    WeightedMinmax,
    /// Weighted sum of z-scores.
    WeightedZscore,
    /// Weighted geometric mean of min-max normalised scores.
    Geometric,
    /// Reciprocal-rank fusion.
    Rrf,
    /// Borda count.
    Borda,
    /// Logistic regression over per-source features (`fusion::LearnedModel`).
    Learned,
}

impl FusionMethod {
    /// All methods, for validation sweeps.
    pub const ALL: [FusionMethod; 5] = [
        FusionMethod::WeightedMinmax,
        FusionMethod::WeightedZscore,
        FusionMethod::Geometric,
        FusionMethod::Rrf,
        FusionMethod::Borda,
    ];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            FusionMethod::WeightedMinmax => "weighted_minmax",
            FusionMethod::WeightedZscore => "weighted_zscore",
            FusionMethod::Geometric => "geometric",
            FusionMethod::Rrf => "rrf",
            FusionMethod::Borda => "borda",
            FusionMethod::Learned => "learned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_read_and_replaced_by_name() {
        let h = HybridConfig::default();
        let w = SourceWeights {
            ease: 2.0,
            transitions: 3.0,
            content: 4.0,
            popularity: 5.0,
            als: 6.0,
            two_tower: 7.0,
            sequence: 8.0,
        };
        let changed = h.with_weights(w);
        assert_eq!(changed.weights(), w);
        assert_eq!(changed.als_weight, 6.0);
        assert_eq!(changed.rrf_k, h.rrf_k);
        assert_eq!(w.by_name("two_tower"), Some(7.0));
        assert_eq!(w.by_name("sequence"), Some(8.0));
        assert_eq!(w.by_name("transitions"), Some(3.0));
        assert_eq!(w.by_name("reranker"), None);
        assert_eq!(
            w.to_string(),
            "ease=2 transitions=3 content=4 popularity=5 als=6 two_tower=7 sequence=8"
        );
    }
}
