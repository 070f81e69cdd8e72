//! Scoring one fitted engine against held-out interactions: every user with
//! held-out items ranked through `Engine::recommend`, as the server would.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;

use super::metrics::{summarise, user_metrics, Summary, UserMetrics, KS};
use crate::engine::{Engine, RecommendOptions, Source, UserRef};
use crate::error::{Error, Result};
use crate::fusion::SourceList;
use crate::movielens::Triple;

/// Who is scored and against what.
pub(super) enum Who {
    /// By id, with the profile stored in the index.
    Stored,
    /// By an explicit history (the validation fold).
    History(HashMap<u32, Vec<String>>),
}

/// Held-out items per user, as internal ids, users sorted.
pub(super) fn truth_sets(engine: &Engine, held_out: &[Triple]) -> Result<Vec<(u32, HashSet<u32>)>> {
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
pub(super) struct Scoring {
    pub(super) summary: Summary,
    pub(super) per_user_ndcg10: Vec<f64>,
    /// The users of `per_user_ndcg10`, in its order (MovieLens ids).
    pub(super) users: Vec<u32>,
}

/// Scores every user that has held-out items through `engine.recommend`.
pub(super) fn score(engine: &Engine, held_out: &[Triple], who: &Who) -> Result<Scoring> {
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
        users: truth.iter().map(|(u, _)| *u).collect(),
    })
}

/// A temporary directory removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tempfile_dir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("vecrec-eval-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    Ok(TempDir(p))
}

/// Every source's list for each held-out user (paired with their held-out
/// set), seen items excluded: computed once so that fusion sweeps need not
/// query the sources again.
pub(super) fn cached_source_lists<'a>(
    engine: &Engine,
    truth: &'a [(u32, HashSet<u32>)],
    histories: &[Vec<(u32, f32)>],
) -> Result<Vec<(Vec<SourceList>, &'a HashSet<u32>)>> {
    truth
        .par_iter()
        .zip(histories)
        .map(|((_, t), hist)| {
            let admitted = engine.admit_all_but(hist.iter().map(|h| h.0));
            let lists = engine.source_lists(hist, None, &Source::ALL, &admitted)?;
            Ok((lists, t))
        })
        .collect()
}
