//! What an evaluation reports: every validation trial, the chosen settings,
//! the TEST ablation rows with paired differences, and the printed table.

use serde::Serialize;

use super::metrics::Summary;
use super::tuning::HeadAuc;

/// One validated setting of the content profile.
#[derive(Clone, Debug, Serialize)]
pub struct GridPoint {
    /// Recency decay.
    pub decay: f32,
    /// Newest items used.
    pub max_items: usize,
    /// Validation NDCG@10.
    #[serde(rename = "val_ndcg@10")]
    pub val_ndcg10: f64,
}

/// One validated setting of a source or of the fusion, described in words.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    /// Tuning stage.
    pub stage: &'static str,
    /// The setting.
    pub setting: String,
    /// Validation NDCG@10.
    #[serde(rename = "val_ndcg@10")]
    pub val_ndcg10: f64,
}

/// One row of the TEST ablation.
#[derive(Clone, Debug, Serialize)]
pub struct AblationRow {
    /// What ran.
    pub model: String,
    /// Its TEST metrics.
    #[serde(flatten)]
    pub metrics: Summary,
}

/// Paired per-user difference of NDCG@10 between two models on TEST.
#[derive(Clone, Debug, Serialize)]
pub struct PairedDiff {
    /// The baseline.
    pub baseline: String,
    /// Mean per-user difference (model − baseline).
    pub mean: f64,
    /// 95% confidence half-width (1.96·sd/√n).
    pub ci95: f64,
    /// Users.
    pub users: usize,
}

/// Everything an evaluation measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// TEST metrics of the full pipeline under the protocol (exact content search), flattened to the top level.
    #[serde(flatten)]
    pub test: Summary,
    /// TEST metrics of the full pipeline with the served HNSW content search.
    pub test_hnsw: Summary,
    /// HNSW `ef` used for `test_hnsw`.
    pub hnsw_ef: usize,
    /// Each source alone and the fusion, on TEST.
    pub ablation: Vec<AblationRow>,
    /// Full pipeline minus vecrec's own EASE (λ chosen on validation, no recency), per user.
    pub paired_vs_ease: PairedDiff,
    /// vecrec's neighbourhood approximation of EASE minus exact EASE (both
    /// plain: binary history, the same λ), per user.
    pub neighbourhood_vs_exact: PairedDiff,
    /// Full pipeline minus the best peer of `peers`, per user (when a peers
    /// file was given).
    pub paired_vs_best_peer: Option<PairedDiff>,
    /// The peers' TEST NDCG@10 from the peers file (empty without one).
    pub peers: Vec<super::PeerRow>,
    /// The chosen content-profile setting.
    pub chosen: GridPoint,
    /// Every validated content-profile setting.
    pub validation_grid: Vec<GridPoint>,
    /// The chosen hybrid settings (weights, decays, fusion method).
    pub chosen_hybrid: crate::config::HybridConfig,
    /// The chosen weight of the reranker's list (0 when learned fusion uses it as a feature).
    pub chosen_rerank_weight: f32,
    /// The reranker's AUC on validation heads (the model trained on `val_train`).
    pub reranker_auc_validation: HeadAuc,
    /// The reranker's AUC on TEST heads (the model trained on TRAIN).
    pub reranker_auc_test: HeadAuc,
    /// Full pipeline minus the same fusion without the reranker, per user.
    pub paired_reranker: PairedDiff,
    /// The cold-start protocol on validation.
    pub cold_validation: super::ColdReport,
    /// The cold-start protocol on TEST.
    pub cold_test: super::ColdReport,
    /// The chosen EASE λ.
    pub chosen_ease_lambda: f32,
    /// The chosen ALS settings.
    pub chosen_als: crate::retrieve::als::AlsOptions,
    /// Every validated source and fusion setting, in order.
    pub trials: Vec<Trial>,
    /// Item texts embedded per second.
    pub embed_texts_per_second: f64,
    /// Seconds spent training sources on TRAIN (EASE + transitions), once.
    pub train_seconds: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// The pipeline evaluated.
    pub pipeline: &'static str,
}

/// What a validation-only run measured (`vecrec-eval --validation-only`):
/// TEST is never read.
#[derive(Clone, Debug, Serialize)]
pub struct ValidationReport {
    /// The chosen content-profile setting.
    pub chosen: GridPoint,
    /// Every validated content-profile setting.
    pub validation_grid: Vec<GridPoint>,
    /// Every validated source and fusion setting, in order.
    pub trials: Vec<Trial>,
    /// The chosen hybrid settings.
    pub chosen_hybrid: crate::config::HybridConfig,
    /// The chosen weight of the reranker's list.
    pub chosen_rerank_weight: f32,
    /// The reranker's AUC on validation heads.
    pub reranker_auc_validation: HeadAuc,
    /// The cold-start protocol on validation.
    pub cold_validation: super::ColdReport,
    /// The chosen EASE λ.
    pub chosen_ease_lambda: f32,
    /// The chosen ALS settings.
    pub chosen_als: crate::retrieve::als::AlsOptions,
    /// Item texts embedded per second.
    pub embed_texts_per_second: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
}

/// The settings validation chose, in the sections of the configuration
/// file (`vecrec-eval --write-config`): what `vecrec-build --config` and
/// `vecrec serve --config` need to build and serve the pipeline the
/// evaluation scored.
#[derive(Clone, Debug, Serialize)]
pub struct Tuned {
    /// `[users]`: the content profile.
    pub users: crate::config::UserConfig,
    /// `[hybrid]`: sources, weights, decays and fusion.
    pub hybrid: crate::config::HybridConfig,
    /// `[rerank]`: the weight of the reranker's list.
    pub rerank: TunedRerank,
    /// `[train]`: EASE's λ, ALS, and the sequence model when it is weighed.
    pub train: TunedTrain,
}

/// The chosen part of `[rerank]`.
#[derive(Clone, Debug, Serialize)]
pub struct TunedRerank {
    /// Weight of the reranker's list in the fusion.
    pub weight: f32,
}

/// The chosen part of `[train]`.
#[derive(Clone, Debug, Serialize)]
pub struct TunedTrain {
    /// EASE's λ.
    pub ease_lambda: f32,
    /// `[train.als]`.
    pub als: crate::retrieve::als::AlsOptions,
    /// `[train.sequence]`, when the chosen fusion weighs the sequence source:
    /// the evaluation always trains it, a build only when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<TunedSequence>,
}

/// `[train.sequence]` of a tuned configuration.
#[derive(Clone, Debug, Serialize)]
pub struct TunedSequence {
    /// Train the sequence model.
    pub enabled: bool,
}

impl Tuned {
    fn new(
        profile: &GridPoint,
        hybrid: &crate::config::HybridConfig,
        rerank_weight: f32,
        ease_lambda: f32,
        als: &crate::retrieve::als::AlsOptions,
    ) -> Self {
        Tuned {
            users: crate::config::UserConfig {
                decay: profile.decay,
                max_items: profile.max_items,
            },
            hybrid: hybrid.clone(),
            rerank: TunedRerank {
                weight: rerank_weight,
            },
            train: TunedTrain {
                ease_lambda,
                als: als.clone(),
                sequence: (hybrid.sequence_weight > 0.0).then_some(TunedSequence { enabled: true }),
            },
        }
    }

    /// The settings as TOML, with a comment naming where they came from.
    /// Numbers keep their shortest decimal form (`0.2`, not the f32's
    /// `0.20000000298023224`): they pass through JSON text, whose writer
    /// prints an f32 in its own shortest form.
    pub fn to_toml(&self, origin: &str) -> crate::error::Result<String> {
        let bad = |e: &dyn std::fmt::Display| crate::error::Error::Config(format!("{e}"));
        let json = serde_json::to_string(self).map_err(|e| bad(&e))?;
        let value: toml::Value = serde_json::from_str(&json).map_err(|e| bad(&e))?;
        let body = toml::to_string(&value).map_err(|e| bad(&e))?;
        Ok(format!(
            "# The settings {origin} chose on validation. Every other setting\n\
             # keeps its default; add your own lines to any section.\n\n{body}"
        ))
    }
}

/// `tuned()` for both reports, which name the chosen settings alike.
macro_rules! tuned_of_report {
    ($($report:ty),*) => {$(
        impl $report {
            /// The settings this run chose, as a configuration.
            pub fn tuned(&self) -> Tuned {
                Tuned::new(
                    &self.chosen,
                    &self.chosen_hybrid,
                    self.chosen_rerank_weight,
                    self.chosen_ease_lambda,
                    &self.chosen_als,
                )
            }
        }
    )*};
}
tuned_of_report!(EvalReport, ValidationReport);

/// The best validation NDCG@10 of each stage, in the order the stages ran.
pub fn validation_table(r: &ValidationReport) -> String {
    let mut best: Vec<(&str, f64, String)> = vec![(
        "content_profile",
        r.chosen.val_ndcg10,
        format!("decay={} max_items={}", r.chosen.decay, r.chosen.max_items),
    )];
    for t in &r.trials {
        match best.iter_mut().find(|(stage, ..)| *stage == t.stage) {
            Some(b) if t.val_ndcg10 > b.1 => (b.1, b.2) = (t.val_ndcg10, t.setting.clone()),
            Some(_) => {}
            None => best.push((t.stage, t.val_ndcg10, t.setting.clone())),
        }
    }
    let mut s = String::from("| stage (validation) | best NDCG@10 | at |\n|---|---|---|\n");
    for (stage, v, at) in best {
        s.push_str(&format!("| {stage} | {v:.4} | {at} |\n"));
    }
    let a = &r.reranker_auc_validation;
    s.push_str(&format!(
        "reranker AUC on validation heads ({} pairs): reranker {:.4}, fusion score {:.4}; {} settings tried; TEST not read\n",
        a.pairs,
        a.reranker,
        a.fusion,
        r.validation_grid.len() + r.trials.len()
    ));
    s.push_str(&cold_table(&r.cold_validation));
    s
}

/// The cold-start protocol's rows.
pub fn cold_table(c: &super::ColdReport) -> String {
    let mut s = format!(
        "\nNew items ({}, cold start): {} items made new ({} fit interactions dropped), {} users ranking only them\n| model | NDCG@10 | Recall@20 |\n|---|---|---|\n",
        c.split, c.new_items, c.dropped_interactions, c.users
    );
    for r in &c.rows {
        s.push_str(&format!(
            "| {} | {:.4} ± {:.4} | {:.4} |\n",
            r.model, r.ndcg10, r.ci95, r.recall20
        ));
    }
    s.push_str(&format!(
        "full pipeline / content-only NDCG@10: {:.2}×\n",
        c.ratio_to_content
    ));
    s
}

/// The table printed by `vecrec-eval`, with the peers' figures from EVAL.md.
pub fn table(r: &EvalReport) -> String {
    let mut s = String::new();
    s.push_str("| model (TEST) | NDCG@10 | NDCG@20 | Recall@10 | Recall@20 | P@10 | F1@10 | HR@10 | MAP@10 | Coverage@10 |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut rows: Vec<(String, &Summary)> = r
        .ablation
        .iter()
        .map(|a| (a.model.clone(), &a.metrics))
        .collect();
    rows.push((
        "full pipeline, served HNSW content search".into(),
        &r.test_hnsw,
    ));
    for (name, x) in rows {
        s.push_str(&format!(
            "| {name} | {:.4} ± {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {:.4} | {:.3} |\n",
            x.ndcg10, x.ndcg10_ci95, x.ndcg20, x.recall10, x.recall20, x.precision10, x.f1_10, x.hit10, x.map10, x.coverage10
        ));
    }
    if r.peers.is_empty() {
        s.push_str("\nPeers (EVAL.md, same protocol, NDCG@10): Popularity 0.0680 · ItemKNN 0.0929 · EASE 0.1047 ± 0.0117 · ALS 0.1064 ± 0.0119 · MiniLM content 0.0181 · EASE+MiniLM 0.1069 ± 0.0124\n");
    } else {
        let listed: Vec<String> = r
            .peers
            .iter()
            .map(|p| format!("{} {:.4} ± {:.4}", p.name, p.ndcg10, p.ci95))
            .collect();
        s.push_str(&format!(
            "\nPeers (benches/peers, this split, TEST NDCG@10): {}\n",
            listed.join(" · ")
        ));
    }
    if let Some(p) = &r.paired_vs_best_peer {
        s.push_str(&format!(
            "paired NDCG@10 difference, full pipeline − the best peer, {}: {:+.4} ± {:.4} (95%, {} users)\n",
            p.baseline, p.mean, p.ci95, p.users
        ));
    }
    let p = &r.paired_vs_ease;
    s.push_str(&format!(
        "paired NDCG@10 difference, full pipeline − {}: {:+.4} ± {:.4} (95%, {} users)\n",
        p.baseline, p.mean, p.ci95, p.users
    ));
    let p = &r.paired_reranker;
    s.push_str(&format!(
        "paired NDCG@10 difference, full pipeline − {}: {:+.4} ± {:.4} (95%, {} users)\n",
        p.baseline, p.mean, p.ci95, p.users
    ));
    let p = &r.neighbourhood_vs_exact;
    s.push_str(&format!(
        "paired NDCG@10 difference, EASE's neighbourhood approximation − {}: {:+.4} ± {:.4} (95%, {} users)\n",
        p.baseline, p.mean, p.ci95, p.users
    ));
    for (name, a) in [
        ("validation", &r.reranker_auc_validation),
        ("TEST", &r.reranker_auc_test),
    ] {
        s.push_str(&format!(
            "reranker AUC on {name} heads ({} pairs, {} positive): reranker {:.4}, the fusion score it reranks {:.4}\n",
            a.pairs, a.positives, a.reranker, a.fusion
        ));
    }
    let h = &r.chosen_hybrid;
    s.push_str(&format!(
        "chosen on validation ({} settings): content profile decay={} max_items={}; EASE λ={} decay={}; transitions decay={}; ALS reg={} alpha={}; fusion {} with weights ease={} transitions={} content={} popularity={} als={} two_tower={} sequence={}; reranker weight {}\n",
        r.validation_grid.len() + r.trials.len(),
        r.chosen.decay,
        r.chosen.max_items,
        r.chosen_ease_lambda,
        h.ease_decay,
        h.transitions_decay,
        r.chosen_als.regularization,
        r.chosen_als.alpha,
        h.fusion.name(),
        h.ease_weight,
        h.transitions_weight,
        h.content_weight,
        h.popularity_weight,
        h.als_weight,
        h.two_tower_weight,
        h.sequence_weight,
        r.chosen_rerank_weight
    ));
    s.push_str(&cold_table(&r.cold_validation));
    s.push_str(&cold_table(&r.cold_test));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FusionMethod, HybridConfig};
    use crate::retrieve::als::AlsOptions;

    #[test]
    fn chosen_settings_load_back_as_the_same_configuration() {
        let profile = GridPoint {
            decay: 0.5,
            max_items: 3,
            val_ndcg10: 0.03,
        };
        let hybrid = HybridConfig {
            fusion: FusionMethod::Borda,
            candidates: 150,
            transitions_weight: 0.35,
            content_weight: 0.2,
            sequence_weight: 0.1,
            ease_decay: 0.9,
            ..HybridConfig::default()
        };
        let als = AlsOptions {
            factors: 32,
            regularization: 10.0,
            alpha: 2.5,
            ..AlsOptions::default()
        };
        let tuned = Tuned::new(&profile, &hybrid, 2.0, 250.0, &als);
        let text = tuned.to_toml("a test").unwrap();
        // Shortest decimal forms, not an f32 widened to f64.
        assert!(text.contains("content_weight = 0.2\n"), "{text}");
        assert!(text.contains("transitions_weight = 0.35\n"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tuned.toml");
        std::fs::write(&p, &text).unwrap();
        let cfg = Config::load_with_env(Some(&p), std::iter::empty()).unwrap();
        assert_eq!(cfg.users.decay, 0.5);
        assert_eq!(cfg.users.max_items, 3);
        assert_eq!(cfg.hybrid, hybrid);
        assert_eq!(cfg.rerank.weight, 2.0);
        assert_eq!(cfg.train.ease_lambda, 250.0);
        assert_eq!(cfg.train.als, als);
        // A weighed sequence source is trained by the build too.
        assert!(cfg.train.sequence.enabled);
        let unweighed = HybridConfig {
            sequence_weight: 0.0,
            ..hybrid.clone()
        };
        let text = Tuned::new(&profile, &unweighed, 2.0, 250.0, &als)
            .to_toml("a test")
            .unwrap();
        assert!(!text.contains("[train.sequence]"), "{text}");
        // What the file does not name keeps its default.
        let d = Config::default();
        assert_eq!(cfg.rerank.candidates, d.rerank.candidates);
        assert_eq!(cfg.train.transitions_window, d.train.transitions_window);
        assert_eq!(cfg.search.ef, d.search.ef);
    }

    /// The served defaults are the settings the committed evaluation chose on
    /// validation (README, "Configuration"): a rerun that chooses otherwise
    /// must move the defaults with it, or `vecrec serve` serves a pipeline
    /// the report did not score.
    #[test]
    fn defaults_are_the_committed_evaluations_choice() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/eval/results/eval.json"
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let hybrid: HybridConfig = serde_json::from_value(r["chosen_hybrid"].clone()).unwrap();
        let als: AlsOptions = serde_json::from_value(r["chosen_als"].clone()).unwrap();
        let d = Config::default();
        assert_eq!(d.hybrid, hybrid);
        // JSON keeps an f32's shortest form, so reading it as f32 is exact.
        let f32_at = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
        assert_eq!(d.rerank.weight, f32_at(&r["chosen_rerank_weight"]));
        assert_eq!(d.users.decay, f32_at(&r["chosen"]["decay"]));
        assert_eq!(
            d.users.max_items as u64,
            r["chosen"]["max_items"].as_u64().unwrap()
        );
        assert_eq!(d.train.ease_lambda, f32_at(&r["chosen_ease_lambda"]));
        assert_eq!(d.train.als, als);
    }
}
