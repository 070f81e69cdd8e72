//! The reranker's training set, made the way production rankers are
//! trained: on what it will rerank.
//!
//! The newest ceil(n/5) interactions of every user with n ≥ 2 are held out
//! (the rule of EVAL.md). Every source is trained a second time, on the older
//! interactions only, into a scratch generation beside the one being
//! written; each held-out user's older interactions then go through that
//! generation exactly as a request would (sources, then the fusion of
//! `BuildOptions::head_hybrid`), and the fused head (`rerank.candidates`
//! items) becomes one training example: its items, their features
//! ([`din::head_features`]) and labels (whether the user went on to take
//! the item). Unlike the learned fusion's fit ([`super::fusion_fit`]), no
//! model has seen the held-out interactions, so the sources' scores are as
//! accurate as they are on new behaviour; the price is a second training of
//! the sources.

use std::collections::HashSet;
use std::path::Path;

use rayon::prelude::*;

use super::{bar, History, Rerank};
use crate::catalog::{CatalogItem, Interaction};
use crate::config::{Config, FusionMethod};
use crate::engine::{Engine, Source};
use crate::error::{Error, Result};
use crate::fusion::fuse;
use crate::rerank::din::{self, HeadExample};
use crate::retrieve::TrainOptions;

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `.rerank-holdout-<pid>` under `parent`, emptied first.
    fn new(parent: &Path) -> Result<Self> {
        let p = parent.join(format!(".rerank-holdout-{}", std::process::id()));
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(Self(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The held-out heads of `users` (histories oldest first, items numbered as
/// in `items`), with the source names their features follow, over
/// `reranker.head_folds` folds: fold `f` holds out each user's `f+1`-th
/// newest fifth (the newest for fold 0), with only what came before it as
/// history, and trains the sources on what every user did before their cut
/// (one scratch generation per fold, built and removed under `scratch`).
/// So later folds add examples from earlier in each history, still never
/// scored by a model that saw their labels. Returns the heads with at least
/// one held-out item, the sources, and a description of the work.
pub(super) fn heads(
    scratch: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    users: &[(String, History)],
    opts: &super::BuildOptions,
    train: &TrainOptions,
) -> Result<(Vec<HeadExample>, Vec<String>, String)> {
    let sources: Vec<String> = Source::ALL.iter().map(|s| s.name().to_owned()).collect();
    let mut all = Vec::new();
    let mut works = Vec::new();
    for fold in 0..train.reranker.head_folds.max(1) {
        let (heads, work) =
            fold_heads(scratch, items, vectors, users, opts, train, &sources, fold)?;
        if heads.is_empty() && fold > 0 {
            break;
        }
        all.extend(heads);
        works.push(work);
    }
    Ok((all, sources, works.join("; ")))
}

/// The heads of one fold of [`heads`].
#[allow(clippy::too_many_arguments)]
fn fold_heads(
    scratch: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    users: &[(String, History)],
    opts: &super::BuildOptions,
    train: &TrainOptions,
    sources: &[String],
    fold: usize,
) -> Result<(Vec<HeadExample>, String)> {
    // The cut of fold `fold`: before the `fold+1`-th newest fifth (EVAL.md's
    // holdout of ceil(n/5) for fold 0), leaving at least one item of history.
    let cut = |n: usize| {
        n.checked_sub((fold + 1) * n.div_ceil(5))
            .filter(|&c| c >= 1)
    };
    let mut held: Vec<(&str, &History, usize)> = users
        .iter()
        .filter(|(_, h)| h.len() >= 2)
        .filter_map(|(u, h)| cut(h.len()).map(|c| (u.as_str(), h, c)))
        .collect();
    if held.is_empty() {
        let why = if users.iter().all(|(_, h)| h.len() < 2) {
            "no user with two interactions"
        } else {
            "no user with a long enough history"
        };
        return Ok((Vec::new(), format!("fold {fold}: {why}")));
    }
    let all = held.len();
    if held.len() > train.reranker.head_users {
        held.sort_by_key(|(u, _, _)| (crate::layout::stable_hash(u), *u));
        held.truncate(train.reranker.head_users);
        held.sort_by_key(|(u, _, _)| *u);
    }
    let cut_of: std::collections::HashMap<&str, usize> =
        held.iter().map(|(u, _, c)| (*u, *c)).collect();
    // Every user's older interactions (all of them for users not held out),
    // in order: a timestamp per position keeps the order the build sorts by.
    let older: Vec<Interaction> = users
        .iter()
        .flat_map(|(u, h)| {
            let keep = cut_of.get(u.as_str()).copied().unwrap_or(h.len());
            h[..keep]
                .iter()
                .enumerate()
                .map(move |(t, &(i, w))| Interaction {
                    user: u.clone(),
                    item: items[i as usize].id.clone(),
                    timestamp: t as i64,
                    event: None,
                    weight: w,
                })
        })
        .collect();
    let dir = Scratch::new(scratch)?;
    let hybrid = opts.head_hybrid.clone().unwrap_or_default();
    // A source the heads do not fuse need not be trained again.
    let mut scratch_train = train.clone();
    if hybrid.sequence_weight == 0.0 && hybrid.fusion != FusionMethod::Learned {
        scratch_train.sequence.enabled = false;
    }
    let inner = super::BuildOptions {
        keep_generations: 1,
        learn_fusion: None,
        embedding_cache: false,
        publish: true,
        train: Some(scratch_train),
        ..opts.clone()
    };
    let report = super::build_generation_inner(
        dir.path(),
        items,
        vectors,
        &older,
        &inner,
        Default::default(),
        super::Stages::new(),
        Rerank::Skip,
    )?;
    let method = match hybrid.fusion {
        FusionMethod::Learned => FusionMethod::Geometric,
        m => m,
    };
    let cfg = Config {
        users: opts.users.clone(),
        hybrid: crate::config::HybridConfig {
            fusion: method,
            ..hybrid
        },
        train: train.clone(),
        ..Default::default()
    };
    let take = cfg.rerank.candidates;
    let rrf_k = cfg.hybrid.rrf_k;
    let engine = Engine::open_generation(&report.generation, cfg, None)?;
    let histories: Vec<Vec<u32>> = users
        .iter()
        .map(|(u, h)| {
            let keep = cut_of.get(u.as_str()).copied().unwrap_or(h.len());
            h[..keep].iter().map(|x| x.0).collect()
        })
        .collect();
    let popularity = crate::retrieve::popularity(&histories, items.len());
    let pb = bar(held.len(), "rerank heads", opts.progress);
    let heads: Vec<HeadExample> = held
        .par_iter()
        .map(|&(_, h, cut)| {
            let hist = &h[..cut];
            // The fifth after the cut (for fold 0, everything after it). In a
            // later fold, items the user took after that fifth are not labels
            // and may stay in the head as negatives. Labelling them gave
            // validation NDCG@10 0.1562 and leaving them out of the head
            // 0.1597 (one run each, 2026-12-07), against 0.1563–0.1591 in
            // six runs as it is: neither was kept on one run's margin.
            let until = (cut + h.len().div_ceil(5)).min(h.len());
            let truth: HashSet<u32> = h[cut..until].iter().map(|e| e.0).collect();
            let lists = engine.candidate_lists(
                hist,
                None,
                &engine.admit_all_but(hist.iter().map(|e| e.0)),
                method,
            )?;
            let head: Vec<(u32, f32)> =
                fuse(method, &lists, rrf_k).into_iter().take(take).collect();
            pb.inc(1);
            let labels: Vec<f32> = head
                .iter()
                .map(|(i, _)| f32::from(u8::from(truth.contains(i))))
                .collect();
            if !labels.iter().any(|&y| y > 0.0) {
                return Ok(None);
            }
            Ok(Some(HeadExample {
                history: hist.iter().map(|e| e.0).collect(),
                candidates: head.iter().map(|e| e.0).collect(),
                features: din::head_features(sources, &lists, &head, &popularity, hist.len()),
                labels,
            }))
        })
        .collect::<Result<Vec<Option<HeadExample>>>>()?
        .into_iter()
        .flatten()
        .collect();
    pb.finish_and_clear();
    drop(engine);
    let positives: usize = heads
        .iter()
        .map(|h| h.labels.iter().filter(|&&y| y > 0.0).count())
        .sum();
    let work = format!(
        "fold {fold}: {} of {all} users held out, sources trained on {} interactions; {} heads with a positive ({positives} positives)",
        held.len(),
        older.len(),
        heads.len()
    );
    Ok((heads, work))
}

#[cfg(test)]
mod tests {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use vecrec_index::ItemMeta;

    use super::*;

    #[test]
    fn a_later_fold_holds_out_an_earlier_fifth_with_only_what_came_before() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n_items = 80;
        let items: Vec<CatalogItem> = (0..n_items)
            .map(|i| CatalogItem {
                id: format!("i{i}"),
                meta: ItemMeta {
                    title: format!("item {i}"),
                    ..Default::default()
                },
            })
            .collect();
        let vectors: Vec<Vec<f32>> = (0..n_items)
            .map(|_| {
                let v: Vec<f32> = (0..8).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect();
        let users: Vec<(String, History)> = (0..40)
            .map(|u| {
                let mut all: Vec<u32> = (0..n_items as u32).collect();
                all.shuffle(&mut rng);
                let n = rng.gen_range(10..=20);
                let h = all[..n].iter().map(|&i| (i, 1.0)).collect();
                (format!("u{u}"), h)
            })
            .collect();
        let mut train = TrainOptions::default();
        train.reranker.head_folds = 2;
        let opts = super::super::BuildOptions {
            progress: false,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let (heads, sources, work) =
            heads(dir.path(), &items, &vectors, &users, &opts, &train).unwrap();
        assert_eq!(sources.len(), Source::ALL.len());
        assert!(work.contains("fold 0") && work.contains("fold 1"), "{work}");
        let mut per_fold = [0usize; 2];
        for head in &heads {
            // Every history is the start of one user's (their items are
            // distinct), cut before the newest fifth or the one before it.
            let (_, h) = users
                .iter()
                .find(|(_, h)| {
                    h.len() > head.history.len()
                        && h[..head.history.len()]
                            .iter()
                            .map(|e| e.0)
                            .eq(head.history.iter().copied())
                })
                .expect("a head's history is a user's first items");
            let fifth = h.len().div_ceil(5);
            let fold = (0..2)
                .find(|f| head.history.len() == h.len() - (f + 1) * fifth)
                .expect("cut at a fold's fifth");
            per_fold[fold] += 1;
            let held: Vec<u32> = h[head.history.len()..head.history.len() + fifth]
                .iter()
                .map(|e| e.0)
                .collect();
            for (c, y) in head.candidates.iter().zip(&head.labels) {
                assert_eq!(*y > 0.0, held.contains(c), "fold {fold} label of {c}");
                assert!(!head.history.contains(c), "a seen item in the head");
            }
            assert!(head.labels.iter().any(|&y| y > 0.0));
        }
        // With 80 items every head holds every unseen item: each user gives one per fold.
        assert_eq!(per_fold, [users.len(), users.len()]);
        // The scratch generations are gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
