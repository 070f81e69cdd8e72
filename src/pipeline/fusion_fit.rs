//! Fitting the learned fusion model on the models the build has just
//! trained, so no model is trained twice.
//!
//! The newest ceil(n/5) interactions of every user with n ≥ 2 are held out
//! (the rule of EVAL.md). Each held-out user's older interactions go through
//! the generation being written exactly as a request with that history
//! would: ALS folds the history in, the content profile and the two-tower
//! user vector are computed from it, EASE and transitions score it. Every
//! candidate becomes a row labelled by whether the user went on to interact
//! with it.
//!
//! The models have seen the held-out interactions while training, so the
//! fit sees them a little more accurate than they are on new behaviour;
//! user-side state (ALS user factors, stored profiles) is never taken from
//! training, which keeps the largest share of that leak out. The earlier
//! build trained every model a second time on the older interactions to fit
//! fusion, which cost a whole second training.

use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;

use super::{bar, History};
use crate::config::HybridConfig;
use crate::engine::{Engine, Source, RERANKER};
use crate::error::Result;
use crate::fusion::{features, FusionMethod, LearnedModel};
use crate::layout::stable_hash;
use crate::retrieve::TrainOptions;

/// Fits the learned fusion on the generation in `dir` (written, not yet
/// committed) over `users`' histories (oldest first). Returns `None` when
/// nothing can be held out, and a description of the work.
pub(super) fn fit(
    dir: &Path,
    users: &[(String, History)],
    opts: &super::BuildOptions,
    train: &TrainOptions,
    hybrid: &HybridConfig,
) -> Result<(Option<LearnedModel>, String)> {
    let mut held: Vec<(&str, &History, usize)> = users
        .iter()
        .filter(|(_, h)| h.len() >= 2)
        .map(|(u, h)| (u.as_str(), h, h.len() - h.len().div_ceil(5)))
        .collect();
    if held.is_empty() {
        return Ok((None, "no user with two interactions".into()));
    }
    let all = held.len();
    if held.len() > train.fusion_fit_users {
        held.sort_by_key(|(u, _, _)| (stable_hash(u), *u));
        held.truncate(train.fusion_fit_users);
        held.sort_by_key(|(u, _, _)| *u);
    }
    let cfg = crate::config::Config {
        users: opts.users.clone(),
        hybrid: hybrid.clone(),
        train: train.clone(),
        ..Default::default()
    };
    let engine = Engine::open_generation(dir, cfg, None)?;
    let mut names: Vec<String> = Source::ALL.iter().map(|s| s.name().to_owned()).collect();
    if engine.reranker().is_some() {
        names.push(RERANKER.to_owned());
    }
    let pb = bar(held.len(), "fusion fit", opts.progress);
    let per_user: Vec<Vec<(Vec<f32>, bool)>> = held
        .par_iter()
        .map(|&(_, h, cut)| {
            let hist = &h[..cut];
            let truth: HashSet<u32> = h[cut..].iter().map(|e| e.0).collect();
            let lists = engine.candidate_lists(
                hist,
                None,
                &engine.admit_all_but(hist.iter().map(|e| e.0)),
                FusionMethod::Learned,
            )?;
            let mut rows: Vec<(u32, Vec<f32>)> = features(&names, &lists).into_iter().collect();
            // Hash order must not reach the fit's sums.
            rows.sort_unstable_by_key(|r| r.0);
            pb.inc(1);
            Ok(rows
                .into_iter()
                .map(|(i, f)| (f, truth.contains(&i)))
                .collect())
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let rows: Vec<(Vec<f32>, bool)> = per_user.into_iter().flatten().collect();
    let positives = rows.iter().filter(|r| r.1).count();
    let work = format!(
        "{} of {all} users, {} candidates, {positives} positive",
        held.len(),
        rows.len()
    );
    Ok((LearnedModel::fit(names, &rows, 1.0), work))
}
