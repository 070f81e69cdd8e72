//! The stages of an evaluation, in the order they choose settings on
//! validation (content profile, EASE, ALS, transitions and fusion, the
//! reranker); `refit.rs` continues from what they chose.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use super::metrics::{user_metrics, KS};
use super::protocol::{cached_source_lists, score, truth_sets, Who};
use super::report::{GridPoint, Trial};
use super::tuning::{
    argmax, fused_ndcg10, head_auc, only, with_weights, HeadAuc, ALS_GRID, DECAYS, FUSION_WEIGHTS,
    LAMBDAS, MAX_ITEMS, RERANK_WEIGHTS, SEQUENCE_WEIGHTS, SOURCE_DECAYS,
};
use super::EvalOptions;
use crate::config::{AlsOptions, Config, HybridConfig, SourceWeights, TrainOptions, UserConfig};
use crate::engine::{Engine, Source};
use crate::error::{Error, Result};
use crate::fusion::{FusionMethod, SourceList};
use crate::movielens::{MovieLens, Split, Triple};
use crate::pipeline::{build_generation, BuildOptions};

/// One evaluation's shared state: the data, the split, the embedded
/// catalogue, the working index root and every validation trial so far.
pub(super) struct Run<'a> {
    pub(super) opts: &'a EvalOptions,
    pub(super) ml: &'a MovieLens,
    pub(super) sp: &'a Split,
    pub(super) cfg: Config,
    pub(super) vectors: &'a [Vec<f32>],
    pub(super) root: &'a Path,
    /// Validation histories (`val_train`, oldest first) by user.
    pub(super) histories: HashMap<u32, Vec<String>>,
    /// Who validation scores: those histories.
    pub(super) val: Who,
    pub(super) trials: Vec<Trial>,
}

/// What the fusion and rerank stages chose.
pub(super) struct Fused {
    pub(super) hybrid: HybridConfig,
    pub(super) rerank_weight: f32,
    pub(super) learned_wins: bool,
    pub(super) val_auc: HeadAuc,
}

/// Everything validation chose, for the refit on TRAIN.
pub(super) struct Chosen {
    pub(super) grid: Vec<GridPoint>,
    pub(super) profile: GridPoint,
    pub(super) users: UserConfig,
    pub(super) lambda: f32,
    pub(super) plain_lambda: f32,
    /// Neighbours of the EASE approximation, chosen on validation.
    pub(super) ease_neighbours: usize,
    pub(super) als: AlsOptions,
    pub(super) fused: Fused,
    /// The cold-start protocol on validation, at the chosen settings.
    pub(super) cold_validation: super::ColdReport,
}

impl Run<'_> {
    /// Builds the evaluation generation from `interactions`; returns the
    /// seconds spent training sources.
    pub(super) fn build_with(
        &self,
        interactions: &[Triple],
        users: &UserConfig,
        lambda: f32,
        als: &AlsOptions,
        learn: Option<&HybridConfig>,
        neural: bool,
    ) -> Result<f64> {
        let train = TrainOptions {
            ease_lambda: lambda,
            als: als.clone(),
            neural,
            ..self.cfg.train.clone()
        };
        self.build_train(interactions, users, train, learn)
    }

    /// Builds the evaluation generation from `interactions` with these
    /// training options; returns the seconds spent training sources.
    pub(super) fn build_train(
        &self,
        interactions: &[Triple],
        users: &UserConfig,
        train: TrainOptions,
        learn: Option<&HybridConfig>,
    ) -> Result<f64> {
        self.build_train_heads(interactions, users, train, learn, &self.cfg.hybrid)
    }

    /// [`Run::build_train`], the reranker learning to order the heads of
    /// the fusion `heads`.
    pub(super) fn build_train_heads(
        &self,
        interactions: &[Triple],
        users: &UserConfig,
        train: TrainOptions,
        learn: Option<&HybridConfig>,
        heads: &HybridConfig,
    ) -> Result<f64> {
        let bo = BuildOptions {
            users: users.clone(),
            progress: self.opts.progress,
            train: Some(train),
            learn_fusion: learn.cloned(),
            head_hybrid: Some(heads.clone()),
            ..Default::default()
        };
        let r = build_generation(
            self.root,
            &self.ml.items,
            self.vectors,
            &MovieLens::interactions(interactions),
            &bo,
            Default::default(),
        )?;
        Ok(r.train_seconds)
    }

    /// The source-by-source stages need no neural models; they are trained
    /// from the fusion stage on.
    pub(super) fn build(
        &self,
        i: &[Triple],
        u: &UserConfig,
        l: f32,
        a: &AlsOptions,
    ) -> Result<f64> {
        self.build_with(i, u, l, a, None, false)
    }

    /// The configuration with these user settings and ALS options (engines
    /// fold new histories in with the ALS settings they were trained with).
    fn with_als(&self, users: &UserConfig, als: &AlsOptions) -> Config {
        Config {
            users: users.clone(),
            train: TrainOptions {
                als: als.clone(),
                ..self.cfg.train.clone()
            },
            ..self.cfg.clone()
        }
    }

    /// Stage 1: the content profile; returns it, the chosen grid point and the grid.
    pub(super) fn content_profile(&mut self) -> Result<(UserConfig, GridPoint, Vec<GridPoint>)> {
        // 1. Content profile: exact ranking, every (decay, max_items).
        let als0 = self.cfg.train.als.clone();
        self.build(
            &self.sp.val_train,
            &UserConfig::default(),
            LAMBDAS[1],
            &als0,
        )?;
        let mut engine = Engine::open(self.root, self.cfg.clone(), None)?;
        engine.configure(|c| {
            c.search.exact = true;
            c.hybrid.enabled = false;
        });
        let mut grid = Vec::new();
        for &decay in &DECAYS {
            for &max_items in &MAX_ITEMS {
                engine.configure(|c| c.users = UserConfig { decay, max_items });
                let s = score(&engine, &self.sp.val, &self.val)?;
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
        Ok((users, chosen, grid))
    }

    /// Stage 2: EASE; returns λ, the history decay, and λ for plain EASE.
    pub(super) fn ease(&mut self, users: &UserConfig) -> Result<(f32, f32, f32)> {
        // 2. EASE: λ × history decay, EASE alone.
        let als0 = self.cfg.train.als.clone();
        let mut ease_trials = Vec::new();
        let mut plain_ease = Vec::new();
        for &lambda in &LAMBDAS {
            self.build(&self.sp.val_train, users, lambda, &als0)?;
            let mut engine = Engine::open(
                self.root,
                Config {
                    users: users.clone(),
                    ..self.cfg.clone()
                },
                None,
            )?;
            engine.configure(|c| c.search.exact = true);
            for &decay in &SOURCE_DECAYS {
                engine.configure(|c| {
                    c.hybrid = only(
                        Source::Ease,
                        &HybridConfig {
                            ease_decay: decay,
                            ..self.cfg.hybrid.clone()
                        },
                    )
                });
                let v = score(&engine, &self.sp.val, &self.val)?.summary.ndcg10;
                self.trials.push(Trial {
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
        Ok((lambda, ease_decay, plain_lambda))
    }

    /// Stage 3: ALS; returns the chosen options.
    pub(super) fn als(&mut self, users: &UserConfig, lambda: f32) -> Result<AlsOptions> {
        // 3. ALS (regularisation, alpha), ALS alone. Engines fold new histories in
        //    with the ALS settings they were trained with.
        let als0 = self.cfg.train.als.clone();
        let mut als_trials = Vec::new();
        for &(regularization, alpha) in &ALS_GRID {
            let als = AlsOptions {
                regularization,
                alpha,
                ..als0.clone()
            };
            self.build(&self.sp.val_train, users, lambda, &als)?;
            let mut engine = Engine::open(self.root, self.with_als(users, &als), None)?;
            engine.configure(|c| {
                c.search.exact = true;
                c.hybrid = only(Source::Als, &self.cfg.hybrid);
            });
            let v = score(&engine, &self.sp.val, &self.val)?.summary.ndcg10;
            self.trials.push(Trial {
                stage: "als",
                setting: format!("reg={regularization} alpha={alpha}"),
                val_ndcg10: v,
            });
            als_trials.push((als, v));
        }
        let (als_chosen, _) = argmax(&als_trials)?;
        Ok(als_chosen)
    }

    /// Stages 4 and 5: transitions, the fusion sweep on cached source lists,
    /// the reranker's weight and the learned model.
    pub(super) fn fusion(
        &mut self,
        users: &UserConfig,
        lambda: f32,
        ease_decay: f32,
        als_chosen: &AlsOptions,
    ) -> Result<Fused> {
        // 4. Transitions decay, transitions alone; then the fusion sweep on cached source lists.
        self.build_with(&self.sp.val_train, users, lambda, als_chosen, None, true)?;
        let mut engine = Engine::open(self.root, self.with_als(users, als_chosen), None)?;
        for (source, stage) in [
            (Source::TwoTower, "two_tower"),
            (Source::Sequence, "sequence"),
        ] {
            engine.configure(|c| {
                c.search.exact = true;
                c.rerank.weight = 0.0;
                c.hybrid = only(source, &self.cfg.hybrid);
            });
            self.trials.push(Trial {
                stage,
                setting: "alone".into(),
                val_ndcg10: score(&engine, &self.sp.val, &self.val)?.summary.ndcg10,
            });
        }
        let mut tr_trials = Vec::new();
        for &decay in &SOURCE_DECAYS {
            engine.configure(|c| {
                c.hybrid = only(
                    Source::Transitions,
                    &HybridConfig {
                        transitions_decay: decay,
                        ..self.cfg.hybrid.clone()
                    },
                )
            });
            let v = score(&engine, &self.sp.val, &self.val)?.summary.ndcg10;
            self.trials.push(Trial {
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
            ..self.cfg.hybrid.clone()
        };
        engine.configure(|c| c.hybrid = tuned.clone());
        let truth = truth_sets(&engine, &self.sp.val)?;
        let store = engine.index().store();
        let cached_hist: Vec<Vec<(u32, f32)>> = truth
            .iter()
            .map(|(u, _)| {
                self.histories[u]
                    .iter()
                    .map(|id| {
                        let i = store.internal_id(id).ok_or_else(|| Error::NotFound {
                            kind: "item",
                            id: id.clone(),
                        })?;
                        Ok((i, 1.0))
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        let cached = cached_source_lists(&engine, &truth, &cached_hist)?;
        let mut fusion_trials = Vec::new();
        let (wt, wc, wp, wa, w2) = FUSION_WEIGHTS;
        let mut combos: Vec<SourceWeights> = Vec::new();
        for &t in &wt {
            for &c in &wc {
                for &p in &wp {
                    for &a in &wa {
                        for &tt in &w2 {
                            combos.push(SourceWeights {
                                ease: 1.0,
                                transitions: t,
                                content: c,
                                popularity: p,
                                als: a,
                                two_tower: tt,
                                sequence: 0.0,
                            });
                        }
                    }
                }
            }
        }
        let ndcg_of = |method: FusionMethod, weights: &SourceWeights| {
            cached
                .par_iter()
                .map(|(lists, truth)| {
                    fused_ndcg10(method, &with_weights(lists, weights), tuned.rrf_k, truth)
                })
                .sum::<f64>()
                / cached.len().max(1) as f64
        };
        let trial = |trials: &mut Vec<Trial>, method: FusionMethod, weights: SourceWeights| {
            let ndcg = ndcg_of(method, &weights);
            trials.push(Trial {
                stage: "fusion",
                setting: format!("{} {weights}", method.name()),
                val_ndcg10: ndcg,
            });
            ((method, weights), ndcg)
        };
        for method in FusionMethod::ALL {
            for &weights in &combos {
                fusion_trials.push(trial(&mut self.trials, method, weights));
            }
        }
        // The sequence source on top of each method's best weights.
        for method in FusionMethod::ALL {
            let best = argmax(
                &fusion_trials
                    .iter()
                    .filter(|t| t.0 .0 == method)
                    .map(|t| (t.0 .1, t.1))
                    .collect::<Vec<_>>(),
            )?
            .0;
            for &sequence in &SEQUENCE_WEIGHTS {
                let t = trial(&mut self.trials, method, SourceWeights { sequence, ..best });
                fusion_trials.push(t);
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
        // The engine's own rerank stage, over the cached lists under trial weights.
        let reranked: Vec<SourceList> = cached
            .par_iter()
            .zip(&cached_hist)
            .map(|((lists, _), hist)| {
                engine.rerank_head(hist, &with_weights(lists, &weights), method)
            })
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
            self.trials.push(Trial {
                stage: "rerank",
                setting: format!("{} {weights} reranker={w}", method.name()),
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
                        engine.rerank_head(
                            hist,
                            &with_weights(lists, &geometric_weights),
                            FusionMethod::Geometric,
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
        self.trials.push(Trial {
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
            ..tuned.with_weights(w)
        };
        let rerank_weight = if learned_wins { 0.0 } else { rerank_weight };
        drop(reranked);
        drop(learned_lists);
        drop(cached);
        drop(engine);
        Ok(Fused {
            hybrid: chosen_hybrid,
            rerank_weight,
            learned_wins,
            val_auc,
        })
    }
}
