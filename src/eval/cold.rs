//! Brand-new items (the cold-start protocol). A seeded 10% of the distinct
//! items of the held-out part (validation or TEST) lose every interaction of
//! the fit part: they are new to every model. The sources are trained on
//! what is left, and each held-out user with at least one of those items
//! among their held-out ones is asked to rank the new items only (their
//! fit-set items aside); NDCG@10 and Recall@20 are taken against their
//! held-out new items. Rows: the full pipeline with the chosen settings, the
//! content source alone (the content-only pipeline: the MiniLM profile of
//! the newest items), the two-tower source alone (its item tower sees the
//! new item's MiniLM vector; its ALS factors are zero) and popularity (every
//! new item has none: it cannot rank them).

use std::collections::{BTreeSet, HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use super::metrics::{mean, user_metrics};
use super::stages::Run;
use super::tuning::only;
use crate::config::{AlsOptions, HybridConfig, UserConfig};
use crate::engine::{Engine, Source};
use crate::error::Result;
use crate::fusion::FusionMethod;
use crate::movielens::Triple;

/// Share of the held-out part's distinct items made new.
pub const COLD_SHARE: f64 = 0.10;
/// Seed of their draw.
pub const COLD_SEED: u64 = 13;

/// One model's figures on the new items.
#[derive(Clone, Debug, Serialize)]
pub struct ColdRow {
    /// The model.
    pub model: String,
    /// NDCG@10 over the new items, mean over users.
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    /// Its 95% half-width.
    #[serde(rename = "ndcg@10_ci95")]
    pub ci95: f64,
    /// Recall@20 over the new items.
    #[serde(rename = "recall@20")]
    pub recall20: f64,
}

/// The cold-start protocol's result on one split.
#[derive(Clone, Debug, Serialize)]
pub struct ColdReport {
    /// `validation` or `TEST`.
    pub split: String,
    /// Items made new.
    pub new_items: usize,
    /// Users scored (with a new item among their held-out ones).
    pub users: usize,
    /// Interactions of the fit part dropped with the new items.
    pub dropped_interactions: usize,
    /// One row per model.
    pub rows: Vec<ColdRow>,
    /// The full pipeline's NDCG@10 over the content-only row's.
    pub ratio_to_content: f64,
}

/// The seeded new items: [`COLD_SHARE`] of the distinct items of `held_out`
/// (MovieLens ids), at least one when there is any.
pub fn new_items(held_out: &[Triple]) -> BTreeSet<u32> {
    let mut items: Vec<u32> = held_out
        .iter()
        .map(|t| t.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let take = ((items.len() as f64 * COLD_SHARE).ceil() as usize).min(items.len());
    items.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(COLD_SEED));
    items.into_iter().take(take).collect()
}

impl Run<'_> {
    /// Runs the protocol: `fit` without the new items of `held_out` trains
    /// every source (the reranker too), then each model ranks the new items.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cold_start(
        &self,
        split: &str,
        fit: &[Triple],
        held_out: &[Triple],
        users: &UserConfig,
        lambda: f32,
        als: &AlsOptions,
        hybrid: &HybridConfig,
        rerank_weight: f32,
    ) -> Result<ColdReport> {
        let cold = new_items(held_out);
        let kept: Vec<Triple> = fit
            .iter()
            .copied()
            .filter(|t| !cold.contains(&t.1))
            .collect();
        let dropped = fit.len() - kept.len();
        let mut cfg = self.cfg.clone();
        cfg.hybrid = hybrid.clone();
        let train = crate::config::TrainOptions {
            ease_lambda: lambda,
            als: als.clone(),
            neural: true,
            ..self.cfg.train.clone()
        };
        self.build_train_heads(&kept, users, train, None, hybrid)?;
        cfg.users = users.clone();
        cfg.train.als = als.clone();
        cfg.rerank.weight = rerank_weight;
        cfg.search.exact = true;
        let mut engine = Engine::open(self.root, cfg, None)?;
        let store = engine.index().store();
        let cold_rows: HashSet<u32> = cold
            .iter()
            .filter_map(|i| store.internal_id(&i.to_string()))
            .collect();
        let mut truth: HashMap<u32, HashSet<u32>> = HashMap::new();
        for &(u, i, _) in held_out {
            if cold.contains(&i) {
                if let Some(r) = store.internal_id(&i.to_string()) {
                    truth.entry(u).or_default().insert(r);
                }
            }
        }
        let mut truth: Vec<(u32, HashSet<u32>)> = truth.into_iter().collect();
        truth.sort_unstable_by_key(|e| e.0);
        let method = match hybrid.fusion {
            // The generation has no learned model here; its pre-ranking.
            FusionMethod::Learned => FusionMethod::Geometric,
            m => m,
        };
        let mut rows = Vec::new();
        // The first two rows give the protocol's ratio; the others show
        // where the full pipeline's figure comes from.
        let runs: [(String, Option<Source>, f32); 7] = [
            (
                format!(
                    "vecrec full pipeline ({} fusion, reranker weight {rerank_weight})",
                    method.name()
                ),
                None,
                rerank_weight,
            ),
            (
                "content source alone (content-only pipeline)".into(),
                Some(Source::Content),
                0.0,
            ),
            ("two-tower source alone".into(), Some(Source::TwoTower), 0.0),
            ("popularity".into(), Some(Source::Popularity), 0.0),
            (
                format!("the same fusion ({}) without the reranker", method.name()),
                None,
                0.0,
            ),
            ("sequence source alone".into(), Some(Source::Sequence), 0.0),
            ("ALS source alone".into(), Some(Source::Als), 0.0),
        ];
        for (name, single, reranker) in runs {
            engine.configure(|c| {
                c.hybrid = match single {
                    Some(s) => only(s, hybrid),
                    None => HybridConfig {
                        fusion: method,
                        ..hybrid.clone()
                    },
                };
                c.rerank.weight = reranker;
            });
            let per_user: Vec<(f64, f64)> = truth
                .par_iter()
                .map(|(u, t)| {
                    let user = engine.users().lookup(&u.to_string());
                    let hist = user.map(|n| engine.users().history(n)).unwrap_or_default();
                    let seen: HashSet<u32> = hist.iter().map(|h| h.0).collect();
                    let admitted = engine.admit(|i| cold_rows.contains(&i) && !seen.contains(&i));
                    let ranked: Vec<u32> = engine
                        .fused_candidates(
                            &hist,
                            user,
                            &admitted,
                            method,
                            crate::deadline::Deadline::NONE,
                        )?
                        .into_iter()
                        .take(20)
                        .map(|e| e.0)
                        .collect();
                    let m = user_metrics(&ranked, t);
                    Ok((m.ndcg[0], m.recall[1]))
                })
                .collect::<Result<_>>()?;
            let (ndcg10, ci95, _) = mean(per_user.iter().map(|x| x.0));
            let (recall20, _, _) = mean(per_user.iter().map(|x| x.1));
            rows.push(ColdRow {
                model: name,
                ndcg10,
                ci95,
                recall20,
            });
        }
        let ratio_to_content = rows[0].ndcg10 / rows[1].ndcg10.max(1e-12);
        Ok(ColdReport {
            split: split.to_owned(),
            new_items: cold.len(),
            users: truth.len(),
            dropped_interactions: dropped,
            rows,
            ratio_to_content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_tenth_of_the_held_out_items_is_made_new() {
        let held: Vec<Triple> = (0..200u32).map(|i| (i % 7, 1000 + i % 50, 0)).collect();
        let a = new_items(&held);
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|i| (1000..1050).contains(i)));
        // The same draw every run; another set of items, another draw.
        assert_eq!(a, new_items(&held));
        let other: Vec<Triple> = (0..200u32).map(|i| (i % 7, 2000 + i % 50, 0)).collect();
        assert_eq!(new_items(&other).len(), 5);
        assert!(new_items(&[]).is_empty());
    }
}
