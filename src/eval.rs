//! Offline evaluation under `shared/EVAL.md`: temporal split of MovieLens,
//! full ranking through the same [`Engine`] code the server runs, and the
//! metrics Precision, Recall, F1, NDCG (Järvelin & Kekäläinen 2002), MAP,
//! hit rate and catalogue coverage at K = 10 and 20.
//!
//! Every parameter is chosen on the validation split (`val_train` → `val`);
//! the chosen setting is then refitted on TRAIN and scored once on TEST.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::{Config, UserConfig};
use crate::encoder::Encoder;
use crate::engine::{Engine, RecommendOptions, UserRef};
use crate::error::{Error, Result};
use crate::movielens::{split, write_split, MovieLens, Triple};
use crate::pipeline::{build_generation, embed_catalog, BuildOptions};

/// Ranking metrics of one user (binary relevance, R = min(K, |truth|)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserMetrics {
    /// NDCG at 10 and 20.
    pub ndcg: [f64; 2],
    /// Recall at 10 and 20.
    pub recall: [f64; 2],
    /// Precision at 10 and 20.
    pub precision: [f64; 2],
    /// Hit at 10 and 20 (0 or 1).
    pub hit: [f64; 2],
    /// Average precision at 10 and 20.
    pub ap: [f64; 2],
}

/// The two cut-offs.
pub const KS: [usize; 2] = [10, 20];

/// Metrics of a ranked list (best first) against the held-out items.
pub fn user_metrics(ranked: &[u32], truth: &HashSet<u32>) -> UserMetrics {
    let mut m = UserMetrics::default();
    if truth.is_empty() {
        return m;
    }
    for (slot, &k) in KS.iter().enumerate() {
        let r = k.min(truth.len());
        let (mut hits, mut dcg, mut ap) = (0usize, 0f64, 0f64);
        for (pos, item) in ranked.iter().take(k).enumerate() {
            if truth.contains(item) {
                hits += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
                ap += hits as f64 / (pos + 1) as f64;
            }
        }
        let idcg: f64 = (0..r).map(|p| 1.0 / ((p + 2) as f64).log2()).sum();
        m.ndcg[slot] = dcg / idcg;
        m.recall[slot] = hits as f64 / r as f64;
        m.precision[slot] = hits as f64 / k as f64;
        m.hit[slot] = (hits > 0) as u8 as f64;
        m.ap[slot] = ap / r as f64;
    }
    m
}

/// Averages over users, as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    #[serde(rename = "ndcg@10")]
    ndcg10: f64,
    #[serde(rename = "ndcg@10_ci95")]
    ndcg10_ci95: f64,
    #[serde(rename = "ndcg@20")]
    ndcg20: f64,
    #[serde(rename = "recall@10")]
    recall10: f64,
    #[serde(rename = "recall@20")]
    recall20: f64,
    #[serde(rename = "precision@10")]
    precision10: f64,
    #[serde(rename = "precision@20")]
    precision20: f64,
    #[serde(rename = "f1@10")]
    f1_10: f64,
    #[serde(rename = "f1@20")]
    f1_20: f64,
    #[serde(rename = "hit_rate@10")]
    hit10: f64,
    #[serde(rename = "hit_rate@20")]
    hit20: f64,
    #[serde(rename = "map@10")]
    map10: f64,
    #[serde(rename = "map@20")]
    map20: f64,
    #[serde(rename = "coverage@10")]
    coverage10: f64,
    users: usize,
}

impl Summary {
    /// NDCG@10.
    pub fn ndcg10(&self) -> f64 {
        self.ndcg10
    }
}

fn mean(v: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let xs: Vec<f64> = v.collect();
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, 1.96 * var.sqrt() / n.sqrt(), xs.len())
}

/// Summarises per-user metrics; `top10` are the users' top-10 lists for coverage.
pub fn summarise(per_user: &[UserMetrics], top10: &[Vec<u32>], catalogue: usize) -> Summary {
    let f = |g: &dyn Fn(&UserMetrics) -> f64| mean(per_user.iter().map(g));
    let (ndcg10, ci, users) = f(&|m| m.ndcg[0]);
    let f1 = |p: f64, r: f64| {
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    };
    let covered: HashSet<u32> = top10
        .iter()
        .flat_map(|t| t.iter().take(10).copied())
        .collect();
    let p10 = f(&|m| m.precision[0]).0;
    let p20 = f(&|m| m.precision[1]).0;
    let r10 = f(&|m| m.recall[0]).0;
    let r20 = f(&|m| m.recall[1]).0;
    Summary {
        ndcg10,
        ndcg10_ci95: ci,
        ndcg20: f(&|m| m.ndcg[1]).0,
        recall10: r10,
        recall20: r20,
        precision10: p10,
        precision20: p20,
        f1_10: f1(p10, r10),
        f1_20: f1(p20, r20),
        hit10: f(&|m| m.hit[0]).0,
        hit20: f(&|m| m.hit[1]).0,
        map10: f(&|m| m.ap[0]).0,
        map20: f(&|m| m.ap[1]).0,
        coverage10: covered.len() as f64 / catalogue.max(1) as f64,
        users,
    }
}

/// Who is scored and against what.
enum Who {
    /// By id, with the profile stored in the index.
    Stored,
    /// By an explicit history (the validation fold).
    History(HashMap<u32, Vec<String>>),
}

/// Held-out items per user, as internal ids, users sorted.
fn truth_sets(engine: &Engine, held_out: &[Triple]) -> Result<Vec<(u32, HashSet<u32>)>> {
    let mut truth: HashMap<u32, HashSet<u32>> = HashMap::new();
    let store = engine.index().store();
    for &(u, i, _) in held_out {
        let internal = store
            .internal_id(&i.to_string())
            .ok_or_else(|| Error::NotFound {
                kind: "item",
                id: i.to_string(),
            })?;
        truth.entry(u).or_default().insert(internal);
    }
    let mut v: Vec<(u32, HashSet<u32>)> = truth.into_iter().collect();
    v.sort_unstable_by_key(|e| e.0);
    Ok(v)
}

/// A scored run: the summary and the per-user NDCG@10 (users sorted), for paired tests.
struct Scoring {
    summary: Summary,
    per_user_ndcg10: Vec<f64>,
}

/// Scores every user that has held-out items through `engine.recommend`.
fn score(engine: &Engine, held_out: &[Triple], who: &Who) -> Result<Scoring> {
    let truth = truth_sets(engine, held_out)?;
    let opts = RecommendOptions {
        k: KS[1],
        ..Default::default()
    };
    let results: Vec<(UserMetrics, Vec<u32>)> = truth
        .par_iter()
        .map(|(u, t)| {
            let uid = u.to_string();
            let recs = match who {
                Who::Stored => engine.recommend(UserRef::Id(&uid), &opts)?,
                Who::History(h) => engine.recommend(UserRef::History(&h[u]), &opts)?,
            };
            let ranked: Vec<u32> = recs.iter().map(|s| s.internal).collect();
            Ok((user_metrics(&ranked, t), ranked))
        })
        .collect::<Result<_>>()?;
    let (per_user, tops): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    Ok(Scoring {
        summary: summarise(&per_user, &tops, engine.index().store().len()),
        per_user_ndcg10: per_user.iter().map(|m| m.ndcg[0]).collect(),
    })
}

/// Options of an evaluation run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The ml-latest-small directory.
    pub movielens: PathBuf,
    /// Where to write the split, if anywhere.
    pub write_split: Option<PathBuf>,
    /// Where to build the evaluation index (a temporary directory if `None`).
    pub work_dir: Option<PathBuf>,
    /// Base configuration (encoder files, search ef).
    pub config: Config,
    /// Draw progress bars.
    pub progress: bool,
}

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
/// Weights of the reranker's list tried on validation.
pub const RERANK_WEIGHTS: [f32; 7] = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0];
/// ALS (regularisation, alpha) tried on validation.
pub const ALS_GRID: [(f32, f32); 6] = [
    (5.0, 1.0),
    (10.0, 1.0),
    (10.0, 4.0),
    (20.0, 4.0),
    (10.0, 10.0),
    (50.0, 10.0),
];

fn only(
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
        ..base.clone()
    }
}

/// The lists with the weights of a validation trial, in `Source::ALL` order.
fn with_weights(
    lists: &[crate::fusion::SourceList],
    w: &[f32; 6],
) -> Vec<crate::fusion::SourceList> {
    let mut l = lists.to_vec();
    for (x, w) in l.iter_mut().zip(w) {
        x.weight = *w;
    }
    l
}

/// NDCG@10 of the fusion of `lists` against a user's held-out items.
fn fused_ndcg10(
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

/// Source weights in words, in `Source::ALL` order.
fn weight_names(w: &[f32; 6]) -> String {
    crate::engine::Source::ALL
        .iter()
        .zip(w)
        .map(|(s, w)| format!("{}={w}", s.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// AUC of the reranker and of the fusion score it reranks, pooled over every
/// (user, head item) pair labelled by the user's held-out items.
fn head_auc(
    cached: &[(Vec<crate::fusion::SourceList>, &HashSet<u32>)],
    reranked: &[crate::fusion::SourceList],
    method: crate::fusion::FusionMethod,
    weights: &[f32; 6],
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

fn argmax<T: Clone>(v: &[(T, f64)]) -> Result<(T, f64)> {
    v.iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .ok_or_else(|| Error::invalid("empty validation grid"))
}

/// Runs the whole evaluation.
pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
    use crate::config::HybridConfig;
    use crate::engine::Source;
    use crate::fusion::{fuse, FusionMethod, SourceList};
    use crate::retrieve::als::AlsOptions;
    use crate::retrieve::TrainOptions;

    let start = Instant::now();
    let ml = MovieLens::load(&opts.movielens)?;
    let sp = split(&ml.positives);
    if let Some(dir) = &opts.write_split {
        write_split(dir, &sp, &ml.items)?;
        tracing::info!(dir = %dir.display(), "split written");
    }
    let mut cfg = opts.config.clone();
    cfg.limits.max_history = usize::MAX;
    cfg.limits.max_k = cfg.limits.max_k.max(KS[1]);
    let encoder = Encoder::load(&cfg.encoder, 1)?;
    let t = Instant::now();
    let vectors = embed_catalog(&encoder, &ml.items, opts.progress)?;
    let tps = ml.items.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);

    let tmp;
    let root: &Path = match &opts.work_dir {
        Some(d) => d,
        None => {
            tmp = tempfile_dir()?;
            &tmp.0
        }
    };
    let build_with = |interactions: &[Triple],
                      users: &UserConfig,
                      lambda: f32,
                      als: &AlsOptions,
                      learn: Option<&HybridConfig>,
                      neural: bool|
     -> Result<f64> {
        let bo = BuildOptions {
            users: users.clone(),
            progress: opts.progress,
            train: Some(TrainOptions {
                ease_lambda: lambda,
                als: als.clone(),
                neural,
                ..cfg.train.clone()
            }),
            learn_fusion: learn.cloned(),
            ..Default::default()
        };
        let r = build_generation(
            root,
            &ml.items,
            &vectors,
            &MovieLens::interactions(interactions),
            &bo,
            serde_json::json!({}),
        )?;
        Ok(r.train_seconds)
    };
    // The source-by-source stages need no neural models; they are trained
    // from the fusion stage on.
    let build =
        |i: &[Triple], u: &UserConfig, l: f32, a: &AlsOptions| build_with(i, u, l, a, None, false);
    let mut histories: HashMap<u32, Vec<(i64, u32)>> = HashMap::new();
    for &(u, i, t) in &sp.val_train {
        histories.entry(u).or_default().push((t, i));
    }
    let histories: HashMap<u32, Vec<String>> = histories
        .into_iter()
        .map(|(u, mut h)| {
            h.sort_unstable();
            (u, h.into_iter().map(|(_, i)| i.to_string()).collect())
        })
        .collect();
    let val = Who::History(histories.clone());
    let mut trials = Vec::new();

    // 1. Content profile: exact ranking, every (decay, max_items).
    let als0 = cfg.train.als.clone();
    build(&sp.val_train, &UserConfig::default(), LAMBDAS[1], &als0)?;
    let mut engine = Engine::open(root, cfg.clone(), None)?;
    engine.set_exact(true);
    engine.set_hybrid(HybridConfig {
        enabled: false,
        ..cfg.hybrid.clone()
    });
    let mut grid = Vec::new();
    for &decay in &DECAYS {
        for &max_items in &MAX_ITEMS {
            engine.set_users(UserConfig { decay, max_items });
            let s = score(&engine, &sp.val, &val)?;
            grid.push(GridPoint {
                decay,
                max_items,
                val_ndcg10: s.summary.ndcg10,
            });
        }
    }
    let chosen = argmax(
        &grid
            .iter()
            .map(|g| (g.clone(), g.val_ndcg10))
            .collect::<Vec<_>>(),
    )?
    .0;
    let users = UserConfig {
        decay: chosen.decay,
        max_items: chosen.max_items,
    };
    drop(engine);

    // 2. EASE: λ × history decay, EASE alone.
    let mut ease_trials = Vec::new();
    let mut plain_ease = Vec::new();
    for &lambda in &LAMBDAS {
        build(&sp.val_train, &users, lambda, &als0)?;
        let mut engine = Engine::open(
            root,
            Config {
                users: users.clone(),
                ..cfg.clone()
            },
            None,
        )?;
        engine.set_exact(true);
        for &decay in &SOURCE_DECAYS {
            engine.set_hybrid(only(
                Source::Ease,
                &HybridConfig {
                    ease_decay: decay,
                    ..cfg.hybrid.clone()
                },
            ));
            let v = score(&engine, &sp.val, &val)?.summary.ndcg10;
            trials.push(Trial {
                stage: "ease",
                setting: format!("lambda={lambda} decay={decay}"),
                val_ndcg10: v,
            });
            ease_trials.push(((lambda, decay), v));
            if decay == 1.0 {
                plain_ease.push((lambda, v));
            }
        }
    }
    let ((lambda, ease_decay), _) = argmax(&ease_trials)?;
    let (plain_lambda, _) = argmax(&plain_ease)?;

    // 3. ALS (regularisation, alpha), ALS alone. Engines fold new histories in
    //    with the ALS settings they were trained with.
    let with_als = |als: &AlsOptions| Config {
        users: users.clone(),
        train: TrainOptions {
            als: als.clone(),
            ..cfg.train.clone()
        },
        ..cfg.clone()
    };
    let mut als_trials = Vec::new();
    for &(regularization, alpha) in &ALS_GRID {
        let als = AlsOptions {
            regularization,
            alpha,
            ..als0.clone()
        };
        build(&sp.val_train, &users, lambda, &als)?;
        let mut engine = Engine::open(root, with_als(&als), None)?;
        engine.set_exact(true);
        engine.set_hybrid(only(Source::Als, &cfg.hybrid));
        let v = score(&engine, &sp.val, &val)?.summary.ndcg10;
        trials.push(Trial {
            stage: "als",
            setting: format!("reg={regularization} alpha={alpha}"),
            val_ndcg10: v,
        });
        als_trials.push((als, v));
    }
    let (als_chosen, _) = argmax(&als_trials)?;

    // 4. Transitions decay, transitions alone; then the fusion sweep on cached source lists.
    build_with(&sp.val_train, &users, lambda, &als_chosen, None, true)?;
    let mut engine = Engine::open(root, with_als(&als_chosen), None)?;
    engine.set_exact(true);
    engine.set_rerank_weight(0.0);
    engine.set_hybrid(only(Source::TwoTower, &cfg.hybrid));
    trials.push(Trial {
        stage: "two_tower",
        setting: "alone".into(),
        val_ndcg10: score(&engine, &sp.val, &val)?.summary.ndcg10,
    });
    let mut tr_trials = Vec::new();
    for &decay in &SOURCE_DECAYS {
        engine.set_hybrid(only(
            Source::Transitions,
            &HybridConfig {
                transitions_decay: decay,
                ..cfg.hybrid.clone()
            },
        ));
        let v = score(&engine, &sp.val, &val)?.summary.ndcg10;
        trials.push(Trial {
            stage: "transitions",
            setting: format!("decay={decay}"),
            val_ndcg10: v,
        });
        tr_trials.push((decay, v));
    }
    let (transitions_decay, _) = argmax(&tr_trials)?;
    let tuned = HybridConfig {
        ease_decay,
        transitions_decay,
        enabled: true,
        ..cfg.hybrid.clone()
    };
    engine.set_hybrid(tuned.clone());
    let truth = truth_sets(&engine, &sp.val)?;
    let store = engine.index().store();
    let cached_hist: Vec<Vec<(u32, f32)>> = truth
        .iter()
        .map(|(u, _)| {
            histories[u]
                .iter()
                .map(|id| (store.internal_id(id).unwrap_or(0), 1.0))
                .collect()
        })
        .collect();
    let cached: Vec<(Vec<SourceList>, &HashSet<u32>)> = truth
        .par_iter()
        .zip(&cached_hist)
        .map(|((_, t), hist)| {
            let seen: HashSet<u32> = hist.iter().map(|h| h.0).collect();
            let lists = engine.source_lists(hist, None, &Source::ALL, &|i| !seen.contains(&i))?;
            Ok((lists, t))
        })
        .collect::<Result<_>>()?;
    let mut fusion_trials = Vec::new();
    let (wt, wc, wp, wa, w2) = FUSION_WEIGHTS;
    let mut combos: Vec<[f32; 6]> = Vec::new();
    for &t in &wt {
        for &c in &wc {
            for &p in &wp {
                for &a in &wa {
                    for &tt in &w2 {
                        combos.push([1.0, t, c, p, a, tt]);
                    }
                }
            }
        }
    }
    for method in FusionMethod::ALL {
        for &weights in &combos {
            {
                {
                    let ndcg: f64 = cached
                        .par_iter()
                        .map(|(lists, truth)| {
                            fused_ndcg10(method, &with_weights(lists, &weights), tuned.rrf_k, truth)
                        })
                        .sum::<f64>()
                        / cached.len().max(1) as f64;
                    trials.push(Trial {
                        stage: "fusion",
                        setting: format!("{} {}", method.name(), weight_names(&weights)),
                        val_ndcg10: ndcg,
                    });
                    fusion_trials.push(((method, weights), ndcg));
                }
            }
        }
    }
    let ((method, weights), _) = argmax(&fusion_trials)?;
    let geometric_weights = argmax(
        &fusion_trials
            .iter()
            .filter(|t| t.0 .0 == FusionMethod::Geometric)
            .map(|t| (t.0 .1, t.1))
            .collect::<Vec<_>>(),
    )?
    .0;

    // 5. The reranker: the head of the chosen fusion reranked, its list's
    //    weight in the fusion swept; then the learned click model over every
    //    source's and the reranker's scores (2-fold over validation users).
    let head_of = |lists: &[SourceList], m: FusionMethod, w: &[f32; 6]| -> Vec<u32> {
        fuse(m, &with_weights(lists, w), tuned.rrf_k)
            .into_iter()
            .take(cfg.rerank.candidates)
            .map(|e| e.0)
            .collect()
    };
    let reranked: Vec<SourceList> = cached
        .par_iter()
        .zip(&cached_hist)
        .map(|((lists, _), hist)| engine.rerank_list(hist, &head_of(lists, method, &weights)))
        .collect::<Result<_>>()?;
    let val_auc = head_auc(&cached, &reranked, method, &weights, tuned.rrf_k);
    let mut rerank_trials = Vec::new();
    for &w in &RERANK_WEIGHTS {
        let ndcg: f64 = cached
            .par_iter()
            .zip(&reranked)
            .map(|((lists, truth), rr)| {
                let mut l = with_weights(lists, &weights);
                l.push(SourceList {
                    weight: w,
                    ..rr.clone()
                });
                fused_ndcg10(method, &l, tuned.rrf_k, truth)
            })
            .sum::<f64>()
            / cached.len().max(1) as f64;
        trials.push(Trial {
            stage: "rerank",
            setting: format!("{} {} reranker={w}", method.name(), weight_names(&weights)),
            val_ndcg10: ndcg,
        });
        rerank_trials.push((w, ndcg));
    }
    let (rerank_weight, best_rerank) = argmax(&rerank_trials)?;
    // The learned model reranks the head of geometric fusion, as the engine does.
    let learned_lists: Vec<Vec<SourceList>> = cached
        .par_iter()
        .zip(&cached_hist)
        .zip(&reranked)
        .map(|(((lists, _), hist), rr)| {
            let mut l = lists.clone();
            l.push(
                if method == FusionMethod::Geometric && weights == geometric_weights {
                    rr.clone()
                } else {
                    engine.rerank_list(
                        hist,
                        &head_of(lists, FusionMethod::Geometric, &geometric_weights),
                    )?
                },
            );
            Ok(l)
        })
        .collect::<Result<_>>()?;
    let learned_ndcg = {
        use crate::fusion::{features, LearnedModel};
        let mut names: Vec<String> = Source::ALL.iter().map(|s| s.name().to_owned()).collect();
        names.push(crate::engine::RERANKER.to_owned());
        let rows_of = |part: usize| -> Vec<(Vec<f32>, bool)> {
            learned_lists
                .iter()
                .zip(&cached)
                .enumerate()
                .filter(|(k, _)| k % 2 == part)
                .flat_map(|(_, (lists, (_, truth)))| {
                    features(&names, lists)
                        .into_iter()
                        .map(|(i, f)| (f, truth.contains(&i)))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut total = 0.0;
        for part in 0..2 {
            let model = LearnedModel::fit(names.clone(), &rows_of(part), 1.0)
                .ok_or_else(|| Error::invalid("learned fusion: singular system"))?;
            total += learned_lists
                .iter()
                .zip(&cached)
                .enumerate()
                .filter(|(k, _)| k % 2 != part)
                .map(|(_, (lists, (_, truth)))| {
                    let ranked: Vec<u32> = model
                        .fuse(lists)
                        .into_iter()
                        .take(KS[1])
                        .map(|e| e.0)
                        .collect();
                    user_metrics(&ranked, truth).ndcg[0]
                })
                .sum::<f64>();
        }
        total / cached.len().max(1) as f64
    };
    trials.push(Trial {
        stage: "fusion",
        setting: "learned over sources + reranker (2-fold over validation users)".into(),
        val_ndcg10: learned_ndcg,
    });
    let learned_wins = learned_ndcg > best_rerank;
    let (fusion, w) = if learned_wins {
        (FusionMethod::Learned, geometric_weights)
    } else {
        (method, weights)
    };
    let chosen_hybrid = HybridConfig {
        fusion,
        ease_weight: w[0],
        transitions_weight: w[1],
        content_weight: w[2],
        popularity_weight: w[3],
        als_weight: w[4],
        two_tower_weight: w[5],
        ..tuned
    };
    let rerank_weight = if learned_wins { 0.0 } else { rerank_weight };
    drop(reranked);
    drop(learned_lists);
    drop(cached);
    drop(engine);

    // 6. Refit on TRAIN with the chosen settings; score TEST once per row.
    let train_seconds = build_with(
        &sp.train,
        &users,
        lambda,
        &als_chosen,
        learned_wins.then_some(&chosen_hybrid),
        true,
    )?;
    cfg.users = users;
    cfg.hybrid = chosen_hybrid.clone();
    cfg.rerank.weight = rerank_weight;
    let mut engine = Engine::open(root, cfg.clone(), None)?;
    engine.set_exact(true);
    let full = score(&engine, &sp.test, &Who::Stored)?;
    engine.set_exact(false);
    let full_hnsw = score(&engine, &sp.test, &Who::Stored)?;
    engine.set_exact(true);
    let mut ablation = Vec::new();
    engine.set_rerank_weight(0.0);
    for s in Source::ALL {
        engine.set_hybrid(only(s, &chosen_hybrid));
        let r = score(&engine, &sp.test, &Who::Stored)?;
        ablation.push(AblationRow {
            model: format!("{} alone", s.name()),
            metrics: r.summary,
        });
    }
    engine.set_hybrid(HybridConfig {
        enabled: false,
        ..chosen_hybrid.clone()
    });
    let content_only = score(&engine, &sp.test, &Who::Stored)?;
    ablation.push(AblationRow {
        model: "content-only pipeline (issue 2)".into(),
        metrics: content_only.summary,
    });
    let pre_method = if learned_wins {
        FusionMethod::Geometric
    } else {
        chosen_hybrid.fusion
    };
    engine.set_hybrid(HybridConfig {
        fusion: pre_method,
        ..chosen_hybrid.clone()
    });
    let no_rerank = score(&engine, &sp.test, &Who::Stored)?;
    ablation.push(AblationRow {
        model: format!("fusion of all sources ({}), no reranker", pre_method.name()),
        metrics: no_rerank.summary,
    });
    ablation.push(AblationRow {
        model: if learned_wins {
            "full pipeline: sources + reranker, learned fusion".into()
        } else {
            format!(
                "full pipeline: sources + reranker (weight {rerank_weight}), {} fusion",
                chosen_hybrid.fusion.name()
            )
        },
        metrics: full.summary.clone(),
    });
    // The reranker's AUC on TEST: every user's head of the fusion without it.
    let test_truth = truth_sets(&engine, &sp.test)?;
    let test_hist: Vec<Vec<(u32, f32)>> = test_truth
        .iter()
        .map(|(u, _)| {
            engine
                .users()
                .lookup(&u.to_string())
                .map(|n| engine.users().history(n))
                .unwrap_or_default()
        })
        .collect();
    let test_cached: Vec<(Vec<SourceList>, &HashSet<u32>)> = test_truth
        .par_iter()
        .zip(&test_hist)
        .map(|((_, t), hist)| {
            let seen: HashSet<u32> = hist.iter().map(|h| h.0).collect();
            let lists = engine.source_lists(hist, None, &Source::ALL, &|i| !seen.contains(&i))?;
            Ok((lists, t))
        })
        .collect::<Result<_>>()?;
    let w6 = [
        chosen_hybrid.ease_weight,
        chosen_hybrid.transitions_weight,
        chosen_hybrid.content_weight,
        chosen_hybrid.popularity_weight,
        chosen_hybrid.als_weight,
        chosen_hybrid.two_tower_weight,
    ];
    let test_reranked: Vec<SourceList> = test_cached
        .par_iter()
        .zip(&test_hist)
        .map(|((lists, _), hist)| engine.rerank_list(hist, &head_of(lists, pre_method, &w6)))
        .collect::<Result<_>>()?;
    let test_auc = head_auc(
        &test_cached,
        &test_reranked,
        pre_method,
        &w6,
        chosen_hybrid.rrf_k,
    );
    drop(test_reranked);
    drop(test_cached);
    drop(engine);

    // vecrec's own EASE baseline: plain binary history, λ chosen on validation.
    build(&sp.train, &cfg.users, plain_lambda, &als_chosen)?;
    let mut engine = Engine::open(root, cfg.clone(), None)?;
    engine.set_exact(true);
    engine.set_hybrid(only(
        Source::Ease,
        &HybridConfig {
            ease_decay: 1.0,
            ..chosen_hybrid.clone()
        },
    ));
    let ease = score(&engine, &sp.test, &Who::Stored)?;
    let diffs: Vec<f64> = full
        .per_user_ndcg10
        .iter()
        .zip(&ease.per_user_ndcg10)
        .map(|(a, b)| a - b)
        .collect();
    let (mean_diff, ci, n) = mean(diffs.into_iter());
    ablation.insert(
        0,
        AblationRow {
            model: format!("EASE (vecrec's own, λ={plain_lambda}, binary history)"),
            metrics: ease.summary,
        },
    );
    Ok(EvalReport {
        test: full.summary,
        test_hnsw: full_hnsw.summary,
        hnsw_ef: cfg.search.ef,
        ablation,
        paired_vs_ease: PairedDiff {
            baseline: format!("EASE λ={plain_lambda}"),
            mean: mean_diff,
            ci95: ci,
            users: n,
        },
        chosen,
        validation_grid: grid,
        chosen_hybrid,
        chosen_rerank_weight: rerank_weight,
        reranker_auc_validation: val_auc,
        reranker_auc_test: test_auc,
        chosen_ease_lambda: lambda,
        chosen_als: als_chosen,
        trials,
        embed_texts_per_second: tps,
        train_seconds,
        seconds: start.elapsed().as_secs_f64(),
        pipeline:
            "hybrid: EASE + transitions + ALS + content + popularity + two-tower candidates, fused, the head reranked by the cross-attention reranker",
    })
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("vecrec-eval-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(TempDir(p))
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
    s.push_str("\nPeers (EVAL.md, same protocol, NDCG@10): Popularity 0.0680 · ItemKNN 0.0929 · EASE 0.1047 ± 0.0117 · ALS 0.1064 ± 0.0119 · MiniLM content 0.0181 · EASE+MiniLM 0.1069 ± 0.0124\n");
    let p = &r.paired_vs_ease;
    s.push_str(&format!(
        "paired NDCG@10 difference, full pipeline − {}: {:+.4} ± {:.4} (95%, {} users)\n",
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
        "chosen on validation ({} settings): content profile decay={} max_items={}; EASE λ={} decay={}; transitions decay={}; ALS reg={} alpha={}; fusion {} with weights ease={} transitions={} content={} popularity={} als={} two_tower={}; reranker weight {}\n",
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
        r.chosen_rerank_weight
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_against_hand_computed_values() {
        let truth: HashSet<u32> = [1, 2, 3].into();
        // Hits at ranks 1 and 3 among 10.
        let ranked = [1, 9, 2, 8, 7, 6, 5, 4, 10, 11];
        let m = user_metrics(&ranked, &truth);
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((m.ndcg[0] - (1.0 + 0.5) / idcg).abs() < 1e-12);
        assert!((m.recall[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision[0] - 0.2).abs() < 1e-12);
        assert_eq!(m.hit[0], 1.0);
        assert!((m.ap[0] - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let perfect = user_metrics(&[3, 2, 1], &truth);
        assert!((perfect.ndcg[0] - 1.0).abs() < 1e-12 && (perfect.ap[1] - 1.0).abs() < 1e-12);
        assert_eq!(user_metrics(&[7, 8], &truth).ndcg, [0.0, 0.0]);
    }

    #[test]
    fn coverage_counts_distinct_top10_items() {
        let per = vec![UserMetrics::default(); 2];
        let s = summarise(&per, &[vec![1, 2], vec![2, 3]], 10);
        assert!((s.coverage10 - 0.3).abs() < 1e-12);
        assert_eq!(s.users, 2);
    }
}
