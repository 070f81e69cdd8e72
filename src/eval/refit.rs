//! After validation: the refit on TRAIN of everything validation chose and
//! the one scoring of TEST (or, for `--validation-only`, the report of what
//! validation chose, TEST unread).

use std::time::Instant;

use rayon::prelude::*;

use super::metrics::mean;
use super::peers::PeerFile;
use super::protocol::{cached_source_lists, score, truth_sets, Who};
use super::report::{AblationRow, EvalReport, PairedDiff, ValidationReport};
use super::stages::{Chosen, Run};
use super::tuning::{head_auc, only, with_weights};
use crate::config::HybridConfig;
use crate::engine::{Engine, Source};
use crate::error::Result;
use crate::fusion::{FusionMethod, SourceList};

impl Run<'_> {
    /// What validation chose, without reading TEST.
    pub(super) fn validation_report(self, c: Chosen, tps: f64, start: Instant) -> ValidationReport {
        ValidationReport {
            chosen: c.profile,
            validation_grid: c.grid,
            trials: self.trials,
            chosen_hybrid: c.fused.hybrid,
            chosen_rerank_weight: c.fused.rerank_weight,
            reranker_auc_validation: c.fused.val_auc,
            cold_validation: c.cold_validation,
            chosen_ease_lambda: c.lambda,
            chosen_als: c.als,
            embed_texts_per_second: tps,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// Stage 6: refit on TRAIN with the chosen settings and score TEST once per row.
    pub(super) fn test(
        mut self,
        c: Chosen,
        tps: f64,
        start: Instant,
        peers: Option<&PeerFile>,
    ) -> Result<EvalReport> {
        let als_chosen = c.als.clone();
        let (lambda, plain_lambda) = (c.lambda, c.plain_lambda);
        let chosen_hybrid = c.fused.hybrid.clone();
        let (rerank_weight, learned_wins) = (c.fused.rerank_weight, c.fused.learned_wins);
        let users = c.users.clone();
        // 6. Refit on TRAIN with the chosen settings; score TEST once per row.
        // The reranker learns to order the chosen fusion's heads.
        self.cfg.hybrid = chosen_hybrid.clone();
        let train_seconds = self.build_with(
            &self.sp.train,
            &users,
            lambda,
            &als_chosen,
            learned_wins.then_some(&chosen_hybrid),
            true,
        )?;
        self.cfg.users = users;
        self.cfg.hybrid = chosen_hybrid.clone();
        self.cfg.rerank.weight = rerank_weight;
        let mut engine = Engine::open(self.root, self.cfg.clone(), None)?;
        engine.configure(|c| c.search.exact = true);
        let full = score(&engine, &self.sp.test, &Who::Stored)?;
        engine.configure(|c| c.search.exact = false);
        let full_hnsw = score(&engine, &self.sp.test, &Who::Stored)?;
        engine.configure(|c| {
            c.search.exact = true;
            c.rerank.weight = 0.0;
        });
        let mut ablation = Vec::new();
        for s in Source::ALL {
            engine.configure(|c| c.hybrid = only(s, &chosen_hybrid));
            let r = score(&engine, &self.sp.test, &Who::Stored)?;
            ablation.push(AblationRow {
                model: format!("{} alone", s.name()),
                metrics: r.summary,
            });
        }
        engine.configure(|c| {
            c.hybrid = HybridConfig {
                enabled: false,
                ..chosen_hybrid.clone()
            }
        });
        let content_only = score(&engine, &self.sp.test, &Who::Stored)?;
        ablation.push(AblationRow {
            model: "content-only pipeline (issue 2)".into(),
            metrics: content_only.summary,
        });
        let pre_method = if learned_wins {
            FusionMethod::Geometric
        } else {
            chosen_hybrid.fusion
        };
        engine.configure(|c| {
            c.hybrid = HybridConfig {
                fusion: pre_method,
                ..chosen_hybrid.clone()
            }
        });
        let no_rerank = score(&engine, &self.sp.test, &Who::Stored)?;
        let (m, ci, n) = mean(
            full.per_user_ndcg10
                .iter()
                .zip(&no_rerank.per_user_ndcg10)
                .map(|(a, b)| a - b),
        );
        let paired_reranker = PairedDiff {
            baseline: format!(
                "the same fusion ({}) without the reranker",
                pre_method.name()
            ),
            mean: m,
            ci95: ci,
            users: n,
        };
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
        let test_truth = truth_sets(&engine, &self.sp.test)?;
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
        let test_cached = cached_source_lists(&engine, &test_truth, &test_hist)?;
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
        self.build(&self.sp.train, &self.cfg.users, plain_lambda, &als_chosen)?;
        let engine = self.plain_ease(self.cfg.clone(), &chosen_hybrid)?;
        let ease = score(&engine, &self.sp.test, &Who::Stored)?;
        let diffs: Vec<f64> = full
            .per_user_ndcg10
            .iter()
            .zip(&ease.per_user_ndcg10)
            .map(|(a, b)| a - b)
            .collect();
        let (mean_diff, ci, n) = mean(diffs.into_iter());
        let paired_vs_best_peer = peers
            .map(|p| p.paired_with_best(&full.users, &full.per_user_ndcg10))
            .transpose()?;
        ablation.insert(
            0,
            AblationRow {
                model: format!("EASE (vecrec's own, λ={plain_lambda}, binary history)"),
                metrics: ease.summary,
            },
        );
        let (row, neighbourhood_vs_exact) =
            self.ease_neighbourhood_test(&c, &als_chosen, &ease.per_user_ndcg10)?;
        ablation.insert(1, row);
        let cold_test = self.cold_start(
            "TEST",
            &self.sp.train,
            &self.sp.test,
            &c.users,
            lambda,
            &als_chosen,
            &chosen_hybrid,
            rerank_weight,
        )?;
        let cold_validation = c.cold_validation.clone();
        let (chosen, grid, val_auc) = (c.profile, c.grid, c.fused.val_auc);
        let trials = std::mem::take(&mut self.trials);
        Ok(EvalReport {
            test: full.summary,
            test_hnsw: full_hnsw.summary,
            hnsw_ef: self.cfg.search.ef,
            ablation,
            paired_vs_ease: PairedDiff {
                baseline: format!("EASE λ={plain_lambda}"),
                mean: mean_diff,
                ci95: ci,
                users: n,
            },
            neighbourhood_vs_exact,
            paired_vs_best_peer,
            peers: peers.map(PeerFile::rows).unwrap_or_default(),
            chosen,
            validation_grid: grid,
            chosen_hybrid,
            chosen_rerank_weight: rerank_weight,
            reranker_auc_validation: val_auc,
            reranker_auc_test: test_auc,
            paired_reranker,
            cold_validation,
            cold_test,
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
}
