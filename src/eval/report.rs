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
    /// Item texts embedded per second.
    pub embed_texts_per_second: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
}

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
