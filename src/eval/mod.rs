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

use crate::config::{Config, SourceWeights, UserConfig};
use crate::encoder::Encoder;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::movielens::{split, write_split, MovieLens, Triple};
use crate::pipeline::{build_generation, embed_catalog, BuildOptions};

mod metrics;
mod protocol;
mod report;
mod tuning;

use metrics::mean;
pub use metrics::{summarise, user_metrics, Summary, UserMetrics, KS};
use protocol::{score, tempfile_dir, truth_sets, Who};
pub use report::{table, AblationRow, EvalReport, GridPoint, PairedDiff, Trial};
use tuning::{argmax, fused_ndcg10, head_auc, only, with_weights};
pub use tuning::{
    FusionGrid, HeadAuc, ALS_GRID, DECAYS, FUSION_WEIGHTS, LAMBDAS, MAX_ITEMS, RERANK_WEIGHTS,
    SOURCE_DECAYS,
};

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

/// Runs the whole evaluation.
pub fn run(opts: &EvalOptions) -> Result<EvalReport> {
    use crate::config::HybridConfig;
    use crate::engine::Source;
    use crate::fusion::{FusionMethod, SourceList};
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
            Default::default(),
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
                        });
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
                        setting: format!("{} {weights}", method.name()),
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
    // The engine's own rerank stage, over the cached lists under trial weights.
    let reranked: Vec<SourceList> = cached
        .par_iter()
        .zip(&cached_hist)
        .map(|((lists, _), hist)| engine.rerank_head(hist, &with_weights(lists, &weights), method))
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
        ..tuned.with_weights(w)
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
    let chosen_weights = chosen_hybrid.weights();
    let test_reranked: Vec<SourceList> = test_cached
        .par_iter()
        .zip(&test_hist)
        .map(|((lists, _), hist)| {
            engine.rerank_head(hist, &with_weights(lists, &chosen_weights), pre_method)
        })
        .collect::<Result<_>>()?;
    let test_auc = head_auc(
        &test_cached,
        &test_reranked,
        pre_method,
        &chosen_weights,
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
