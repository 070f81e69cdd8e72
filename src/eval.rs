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

/// Scores every user that has held-out items through `engine.recommend`.
fn score(engine: &Engine, held_out: &[Triple], who: &Who) -> Result<Summary> {
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
    let mut users: Vec<u32> = truth.keys().copied().collect();
    users.sort_unstable();
    let opts = RecommendOptions {
        k: KS[1],
        include_seen: false,
        filter: None,
    };
    let results: Vec<(UserMetrics, Vec<u32>)> = users
        .par_iter()
        .map(|u| {
            let uid = u.to_string();
            let recs = match who {
                Who::Stored => engine.recommend(UserRef::Id(&uid), &opts)?,
                Who::History(h) => engine.recommend(UserRef::History(&h[u]), &opts)?,
            };
            let ranked: Vec<u32> = recs.iter().map(|s| s.internal).collect();
            Ok((user_metrics(&ranked, &truth[u]), ranked))
        })
        .collect::<Result<_>>()?;
    let (per_user, tops): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    Ok(summarise(&per_user, &tops, store.len()))
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

/// One validated setting.
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

/// Everything an evaluation measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// TEST metrics under the protocol (exact full ranking), flattened to the top level.
    #[serde(flatten)]
    pub test: Summary,
    /// TEST metrics through the served HNSW search (same engine, graph search).
    pub test_hnsw: Summary,
    /// HNSW `ef` used for `test_hnsw`.
    pub hnsw_ef: usize,
    /// The chosen user-profile setting and how it was chosen.
    pub chosen: GridPoint,
    /// Every validated setting.
    pub validation_grid: Vec<GridPoint>,
    /// Item texts embedded per second.
    pub embed_texts_per_second: f64,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// The pipeline evaluated.
    pub pipeline: &'static str,
}

/// Decays and history lengths tried on validation.
pub const DECAYS: [f32; 5] = [1.0, 0.7, 0.5, 0.3, 0.1];
/// History lengths tried on validation.
pub const MAX_ITEMS: [usize; 7] = [1, 2, 3, 5, 10, 20, 50];

/// Runs the whole evaluation.
pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
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
    let build = |interactions: &[Triple], users: &UserConfig| -> Result<()> {
        let bo = BuildOptions {
            users: users.clone(),
            progress: opts.progress,
            ..Default::default()
        };
        build_generation(
            root,
            &ml.items,
            &vectors,
            &MovieLens::interactions(interactions),
            &bo,
            serde_json::json!({}),
        )?;
        Ok(())
    };

    // Validation: explicit val_train histories, exact ranking, every grid point.
    build(&sp.val_train, &UserConfig::default())?;
    let mut engine = Engine::open(root, cfg.clone(), None)?;
    engine.set_exact(true);
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
    let who = Who::History(histories);
    let mut grid = Vec::new();
    for &decay in &DECAYS {
        for &max_items in &MAX_ITEMS {
            engine.set_users(UserConfig { decay, max_items });
            let s = score(&engine, &sp.val, &who)?;
            grid.push(GridPoint {
                decay,
                max_items,
                val_ndcg10: s.ndcg10,
            });
        }
    }
    let chosen = grid
        .iter()
        .max_by(|a, b| a.val_ndcg10.total_cmp(&b.val_ndcg10))
        .cloned()
        .ok_or_else(|| Error::invalid("empty validation grid"))?;
    drop(engine);

    // Refit on TRAIN with the chosen setting and score TEST once, exact then HNSW.
    let users = UserConfig {
        decay: chosen.decay,
        max_items: chosen.max_items,
    };
    build(&sp.train, &users)?;
    cfg.users = users;
    let mut engine = Engine::open(root, cfg.clone(), None)?;
    engine.set_exact(true);
    let test = score(&engine, &sp.test, &Who::Stored)?;
    engine.set_exact(false);
    let test_hnsw = score(&engine, &sp.test, &Who::Stored)?;
    Ok(EvalReport {
        test,
        test_hnsw,
        hnsw_ef: cfg.search.ef,
        chosen,
        validation_grid: grid,
        embed_texts_per_second: tps,
        seconds: start.elapsed().as_secs_f64(),
        pipeline: "content only: MiniLM item vectors, recency-weighted user profile, cosine nearest neighbours",
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
    let t = &r.test;
    let h = &r.test_hnsw;
    let mut s = String::new();
    s.push_str("| model | NDCG@10 | NDCG@20 | Recall@10 | Recall@20 | P@10 | HR@10 | MAP@10 | Coverage@10 |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for (name, x) in [
        ("vecrec content, exact ranking (protocol)", t),
        ("vecrec content, served HNSW", h),
    ] {
        s.push_str(&format!(
            "| {name} | {:.4} ± {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {:.4} | {:.3} |\n",
            x.ndcg10,
            x.ndcg10_ci95,
            x.ndcg20,
            x.recall10,
            x.recall20,
            x.precision10,
            x.hit10,
            x.map10,
            x.coverage10
        ));
    }
    s.push_str("\nPeers (EVAL.md, same protocol): Popularity 0.0680 · ItemKNN 0.0929 · EASE 0.1047 ± 0.0117 · ALS 0.1064 ± 0.0119 · MiniLM content (last 2 items) 0.0181 · EASE+MiniLM 0.1069 ± 0.0124 (NDCG@10)\n");
    s.push_str(&format!(
        "users evaluated: {}; chosen on validation: decay = {}, max_items = {} (val NDCG@10 {:.4}, {} settings tried)\n",
        t.users,
        r.chosen.decay,
        r.chosen.max_items,
        r.chosen.val_ndcg10,
        r.validation_grid.len()
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
