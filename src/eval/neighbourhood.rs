//! EASE's neighbourhood approximation against exact EASE: the number of
//! neighbours is chosen on validation (plain EASE: binary history, the λ
//! validation chose for it), then both are scored on TEST side by side.
//! The build switches to the approximation above `train.ease_max_items`
//! items; this is the measurement behind that switch.

use super::metrics::mean;
use super::protocol::{score, Who};
use super::report::{AblationRow, PairedDiff, Trial};
use super::stages::{Chosen, Run};
use super::tuning::{argmax, only};
use crate::config::{AlsOptions, Config, HybridConfig, TrainOptions, UserConfig};
use crate::engine::{Engine, Source};
use crate::error::Result;

/// Neighbour counts tried on validation.
pub(super) const NEIGHBOURS: [usize; 4] = [32, 64, 128, 256];

impl Run<'_> {
    /// Training options that force the approximation with `k` neighbours.
    fn approximated(&self, lambda: f32, k: usize, als: &AlsOptions) -> TrainOptions {
        TrainOptions {
            ease_lambda: lambda,
            ease_max_items: 0,
            ease_neighbours: k,
            als: als.clone(),
            neural: false,
            ..self.cfg.train.clone()
        }
    }

    /// Plain EASE (binary history: no recency decay) alone, exact search,
    /// on an engine over the current generation; the other settings from
    /// `hybrid`.
    pub(super) fn plain_ease(&self, cfg: Config, hybrid: &HybridConfig) -> Result<Engine> {
        let mut engine = Engine::open(self.root, cfg, None)?;
        engine.configure(|c| {
            c.search.exact = true;
            c.hybrid = only(
                Source::Ease,
                &HybridConfig {
                    ease_decay: 1.0,
                    ..hybrid.clone()
                },
            )
        });
        Ok(engine)
    }

    /// Stage 2b: the approximation's neighbour count, on validation.
    pub(super) fn ease_neighbourhood(&mut self, users: &UserConfig, lambda: f32) -> Result<usize> {
        let als0 = self.cfg.train.als.clone();
        let mut trials = Vec::new();
        for k in NEIGHBOURS {
            let train = self.approximated(lambda, k, &als0);
            self.build_train(&self.sp.val_train, users, train, None)?;
            let engine = self.plain_ease(
                Config {
                    users: users.clone(),
                    ..self.cfg.clone()
                },
                &self.cfg.hybrid,
            )?;
            let v = score(&engine, &self.sp.val, &self.val)?.summary.ndcg10;
            self.trials.push(Trial {
                stage: "ease-neighbourhood",
                setting: format!("lambda={lambda} neighbours={k}"),
                val_ndcg10: v,
            });
            trials.push((k, v));
        }
        Ok(argmax(&trials)?.0)
    }

    /// The approximation on TEST, refitted on TRAIN with the chosen
    /// neighbours, and its per-user difference from exact EASE's
    /// `exact_per_user` NDCG@10.
    pub(super) fn ease_neighbourhood_test(
        &self,
        c: &Chosen,
        als: &AlsOptions,
        exact_per_user: &[f64],
    ) -> Result<(AblationRow, PairedDiff)> {
        let (k, lambda) = (c.ease_neighbours, c.plain_lambda);
        let train = self.approximated(lambda, k, als);
        self.build_train(&self.sp.train, &self.cfg.users, train, None)?;
        let approx = score(
            &self.plain_ease(self.cfg.clone(), &self.cfg.hybrid)?,
            &self.sp.test,
            &Who::Stored,
        )?;
        let (m, ci, n) = mean(
            approx
                .per_user_ndcg10
                .iter()
                .zip(exact_per_user)
                .map(|(a, b)| a - b),
        );
        Ok((
            AblationRow {
                model: format!(
                    "EASE neighbourhood approximation (vecrec's own, {k} neighbours chosen on val, λ={lambda}, binary history)"
                ),
                metrics: approx.summary,
            },
            PairedDiff {
                baseline: format!("exact EASE λ={lambda}"),
                mean: m,
                ci95: ci,
                users: n,
            },
        ))
    }
}
