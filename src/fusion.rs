//! Hybrid score fusion: several ranked candidate lists → one ranking.
//!
//! - `weighted_minmax` / `weighted_zscore`: per-source normalisation then a
//!   weighted sum (CombSUM, Fox & Shaw, "Combination of Multiple Searches",
//!   TREC-2 1994; normalisations compared by Lee, SIGIR 1997). An item missing
//!   from a list gets that list's minimum.
//! - `geometric`: weighted sum of `ln(ε + minmax score)`, i.e. a weighted
//!   geometric mean, which rewards items that every source likes.
//! - `rrf`: reciprocal-rank fusion, `Σ w / (k + rank)` (Cormack, Clarke &
//!   Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual
//!   rank learning methods", SIGIR 2009), `k` = 60 by default.
//! - `borda`: Borda count, `Σ w · (N − rank) / N` (Aslam & Montague, "Models
//!   for Metasearch", SIGIR 2001).
//!
//! - `learned`: a click-probability model, logistic regression over each
//!   source's min-max score and reciprocal rank (Richardson, Dominowska &
//!   Ragno, "Predicting Clicks", WWW 2007, for the model family), fitted by
//!   Newton's method on held-out interactions: items the user went on to
//!   interact with are the positives, the other candidates the negatives.
//!
//! Ranks are 1-based; results are sorted best first, ties towards the lower id.

use serde::{Deserialize, Serialize};

use crate::ids::IdMap;

pub use crate::config::FusionMethod;

/// One source's candidates, best first, with the source's weight.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceList {
    /// Source name (for logs and ablations).
    pub name: &'static str,
    /// Fusion weight, ≥ 0.
    pub weight: f32,
    /// (item, score), best first.
    pub items: Vec<(u32, f32)>,
}

const GEOMETRIC_EPS: f32 = 1e-3;

/// Per-item normalised contributions of one list, and the value for a missing item.
fn contributions(method: FusionMethod, list: &SourceList, rrf_k: f32) -> (Vec<(u32, f32)>, f32) {
    let n = list.items.len();
    if n == 0 {
        return (Vec::new(), 0.0);
    }
    let scores = list.items.iter().map(|e| e.1);
    let (lo, hi) = scores
        .clone()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), s| {
            (l.min(s), h.max(s))
        });
    let minmax = |s: f32| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
    match method {
        // Learned fusion scores whole feature vectors (`LearnedModel::fuse`); as a
        // per-list contribution it degrades to min-max.
        FusionMethod::WeightedMinmax | FusionMethod::Learned => (
            list.items.iter().map(|&(i, s)| (i, minmax(s))).collect(),
            0.0,
        ),
        FusionMethod::WeightedZscore => {
            let mean = scores.clone().sum::<f32>() / n as f32;
            let sd = (scores.map(|s| (s - mean).powi(2)).sum::<f32>() / n as f32).sqrt();
            let z = |s: f32| if sd > 0.0 { (s - mean) / sd } else { 0.0 };
            (list.items.iter().map(|&(i, s)| (i, z(s))).collect(), z(lo))
        }
        FusionMethod::Geometric => (
            list.items
                .iter()
                .map(|&(i, s)| (i, (GEOMETRIC_EPS + minmax(s)).ln()))
                .collect(),
            GEOMETRIC_EPS.ln(),
        ),
        FusionMethod::Rrf => (
            list.items
                .iter()
                .enumerate()
                .map(|(r, &(i, _))| (i, 1.0 / (rrf_k + (r + 1) as f32)))
                .collect(),
            0.0,
        ),
        FusionMethod::Borda => (
            list.items
                .iter()
                .enumerate()
                .map(|(r, &(i, _))| (i, (n - r) as f32 / n as f32))
                .collect(),
            0.0,
        ),
    }
}

/// Fuses `lists` into one ranking of every item in any list (zero-weight lists
/// are ignored), best first.
pub fn fuse(method: FusionMethod, lists: &[SourceList], rrf_k: f32) -> Vec<(u32, f32)> {
    let active: Vec<&SourceList> = lists
        .iter()
        .filter(|l| l.weight > 0.0 && !l.items.is_empty())
        .collect();
    // Every candidate gets a slot (in order of first appearance); each list
    // then writes its contribution per slot, what it gives an item it lacks
    // everywhere else, and is added in list order.
    let mut slot: IdMap<usize> = IdMap::with_capacity_and_hasher(
        active.iter().map(|l| l.items.len()).sum(),
        Default::default(),
    );
    let mut ids: Vec<u32> = Vec::new();
    for l in &active {
        for &(i, _) in &l.items {
            slot.entry(i).or_insert_with(|| {
                ids.push(i);
                ids.len() - 1
            });
        }
    }
    let mut totals = vec![0f32; ids.len()];
    let mut value = vec![0f32; ids.len()];
    for l in &active {
        let (present, missing) = contributions(method, l, rrf_k);
        value.fill(missing);
        // A list naming an item twice counts its later entry.
        for (i, c) in present {
            value[slot[&i]] = c;
        }
        for (t, v) in totals.iter_mut().zip(&value) {
            *t += l.weight * v;
        }
    }
    let mut out: Vec<(u32, f32)> = ids.into_iter().zip(totals).collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Features per source and item: min-max score and reciprocal rank (0 when absent).
pub const FEATURES_PER_SOURCE: usize = 2;

/// A fitted click-probability model over the sources named in `sources`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedModel {
    /// Source names, in feature order.
    pub sources: Vec<String>,
    /// One weight per feature (`FEATURES_PER_SOURCE` per source).
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
}

/// The feature vectors of every candidate in `lists`, for the sources named in `sources`.
pub fn features(sources: &[String], lists: &[SourceList]) -> IdMap<Vec<f32>> {
    let mut out: IdMap<Vec<f32>> = IdMap::default();
    let width = sources.len() * FEATURES_PER_SOURCE;
    for_each_feature(sources, lists.iter(), |i, j, score, rrank| {
        let f = out.entry(i).or_insert_with(|| vec![0.0; width]);
        f[j] = score;
        f[j + 1] = rrank;
    });
    out
}

/// Calls `f(item, column, min-max score, reciprocal rank)` for every entry
/// of the first list in `lists` named like each of `sources` (`column` is
/// the source's first feature column), in list order: the features
/// [`features`] collects, written wherever the caller keeps them.
pub fn for_each_feature<'a>(
    sources: &[String],
    lists: impl Iterator<Item = &'a SourceList> + Clone,
    mut f: impl FnMut(u32, usize, f32, f32),
) {
    for (k, name) in sources.iter().enumerate() {
        let Some(list) = lists.clone().find(|l| l.name == name) else {
            continue;
        };
        let (mm, _) = contributions(FusionMethod::WeightedMinmax, list, 0.0);
        for (r, (i, v)) in mm.into_iter().enumerate() {
            f(i, k * FEATURES_PER_SOURCE, v, 1.0 / (r + 1) as f32);
        }
    }
}

impl LearnedModel {
    /// The logit of one feature vector.
    pub fn logit(&self, f: &[f32]) -> f32 {
        self.bias + self.weights.iter().zip(f).map(|(w, x)| w * x).sum::<f32>()
    }

    /// Ranks every candidate by predicted click probability (as a logit), best first.
    pub fn fuse(&self, lists: &[SourceList]) -> Vec<(u32, f32)> {
        let mut out: Vec<(u32, f32)> = features(&self.sources, lists)
            .into_iter()
            .map(|(i, f)| (i, self.logit(&f)))
            .collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Fits the model by Newton's method (iteratively reweighted least squares)
    /// with an L2 penalty `l2` on the weights (not the intercept).
    pub fn fit(sources: Vec<String>, rows: &[(Vec<f32>, bool)], l2: f64) -> Option<Self> {
        let d = sources.len() * FEATURES_PER_SOURCE + 1;
        let mut w = vec![0f64; d];
        let x = |f: &[f32], j: usize| if j + 1 == d { 1.0 } else { f[j] as f64 };
        for _ in 0..25 {
            let mut h = vec![0f64; d * d];
            let mut g = vec![0f64; d];
            for (f, y) in rows {
                let z: f64 = (0..d).map(|j| w[j] * x(f, j)).sum();
                let p = 1.0 / (1.0 + (-z).exp());
                let r = p * (1.0 - p);
                for a in 0..d {
                    let xa = x(f, a);
                    g[a] += (p - *y as u8 as f64) * xa;
                    for b in 0..d {
                        h[a * d + b] += r * xa * x(f, b);
                    }
                }
            }
            for j in 0..d - 1 {
                g[j] += l2 * w[j];
                h[j * d + j] += l2;
            }
            h[(d - 1) * d + d - 1] += 1e-9;
            if !crate::linalg::solve_spd(&mut h, &mut g, d) {
                return None;
            }
            let step: f64 = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
            w.iter_mut().zip(&g).for_each(|(wi, gi)| *wi -= gi);
            if step < 1e-6 {
                break;
            }
        }
        Some(Self {
            sources,
            bias: w[d - 1] as f32,
            weights: w[..d - 1].iter().map(|v| *v as f32).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(name: &'static str, weight: f32, scores: &[(u32, f32)]) -> SourceList {
        let mut items = scores.to_vec();
        items.sort_by_key(|e| e.0);
        items.dedup_by_key(|e| e.0);
        items.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        SourceList {
            name,
            weight,
            items,
        }
    }

    /// A direct, slow transcription of the formulas, for comparison.
    fn oracle(method: FusionMethod, lists: &[SourceList], k: f32) -> Vec<(u32, f32)> {
        let mut all: Vec<u32> = lists
            .iter()
            .filter(|l| l.weight > 0.0)
            .flat_map(|l| l.items.iter().map(|e| e.0))
            .collect();
        all.sort_unstable();
        all.dedup();
        let mut out = Vec::new();
        for &i in &all {
            let mut total = 0f32;
            for l in lists
                .iter()
                .filter(|l| l.weight > 0.0 && !l.items.is_empty())
            {
                let s: Vec<f32> = l.items.iter().map(|e| e.1).collect();
                let lo = s.iter().cloned().fold(f32::INFINITY, f32::min);
                let hi = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mm = |x: f32| if hi > lo { (x - lo) / (hi - lo) } else { 1.0 };
                let mean = s.iter().sum::<f32>() / s.len() as f32;
                let sd =
                    (s.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / s.len() as f32).sqrt();
                let z = |x: f32| if sd > 0.0 { (x - mean) / sd } else { 0.0 };
                let pos = l.items.iter().position(|e| e.0 == i);
                let v = match (method, pos) {
                    (FusionMethod::WeightedMinmax, Some(p)) => mm(s[p]),
                    (FusionMethod::WeightedMinmax, None) => 0.0,
                    (FusionMethod::WeightedZscore, Some(p)) => z(s[p]),
                    (FusionMethod::WeightedZscore, None) => z(lo),
                    (FusionMethod::Geometric, Some(p)) => (1e-3 + mm(s[p])).ln(),
                    (FusionMethod::Geometric, None) => (1e-3f32).ln(),
                    (FusionMethod::Rrf, Some(p)) => 1.0 / (k + p as f32 + 1.0),
                    (FusionMethod::Borda, Some(p)) => (s.len() - p) as f32 / s.len() as f32,
                    (FusionMethod::Learned, _) => {
                        unreachable!("the oracle covers the unsupervised methods")
                    }
                    (_, None) => 0.0,
                };
                total += l.weight * v;
            }
            out.push((i, total));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The fusion as it was written before slots (each list as a map, every
    /// candidate looked up in each), kept to show the slots change no bit.
    fn fuse_by_maps(method: FusionMethod, lists: &[SourceList], rrf_k: f32) -> Vec<(u32, f32)> {
        use std::collections::HashMap;
        let active: Vec<&SourceList> = lists
            .iter()
            .filter(|l| l.weight > 0.0 && !l.items.is_empty())
            .collect();
        let parts: Vec<(HashMap<u32, f32>, f32, f32)> = active
            .iter()
            .map(|l| {
                let (c, missing) = contributions(method, l, rrf_k);
                (c.into_iter().collect(), missing, l.weight)
            })
            .collect();
        let mut fused: HashMap<u32, f32> = parts
            .iter()
            .flat_map(|p| p.0.keys().map(|&i| (i, 0.0)))
            .collect();
        for (present, missing, w) in &parts {
            for (i, total) in fused.iter_mut() {
                *total += w * present.get(i).copied().unwrap_or(*missing);
            }
        }
        let mut out: Vec<(u32, f32)> = fused.into_iter().collect();
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    fn arb_list() -> impl Strategy<Value = Vec<(u32, f32)>> {
        proptest::collection::vec((0u32..40, -5f32..5f32), 0..25)
    }

    proptest! {
        #[test]
        fn every_method_matches_the_oracle(a in arb_list(), b in arb_list(), wa in 0f32..2.0, wb in 0f32..2.0, m in 0usize..5) {
            let method = FusionMethod::ALL[m];
            let lists = vec![list("a", wa, &a), list("b", wb, &b)];
            let got = fuse(method, &lists, 60.0);
            let want = oracle(method, &lists, 60.0);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g.1 - w.1).abs() <= 1e-4 * (1.0 + w.1.abs()), "{:?} vs {:?}", g, w);
            }
        }

        /// Bit for bit the fusion by maps, with items twice in a list (the
        /// later entry counts), three lists, and lists of weight 0.
        #[test]
        fn slots_match_maps_bit_for_bit(a in arb_list(), b in arb_list(), c in arb_list(), wa in 0f32..2.0, wb in 0f32..2.0, m in 0usize..5) {
            let method = FusionMethod::ALL[m];
            let raw = |name, weight, items: &[(u32, f32)]| SourceList { name, weight, items: items.to_vec() };
            let lists = vec![raw("a", wa, &a), raw("b", wb, &b), raw("c", 0.0, &c), raw("d", 1.0, &c)];
            prop_assert_eq!(fuse(method, &lists, 60.0), fuse_by_maps(method, &lists, 60.0));
        }

        /// With one list, every method keeps its order (rank-based ones exactly).
        #[test]
        fn one_list_keeps_its_order(a in arb_list(), m in 0usize..5) {
            let l = list("a", 1.0, &a);
            let got: Vec<u32> = fuse(FusionMethod::ALL[m], std::slice::from_ref(&l), 60.0).iter().map(|e| e.0).collect();
            let mut want: Vec<u32> = l.items.iter().map(|e| e.0).collect();
            if matches!(FusionMethod::ALL[m], FusionMethod::Rrf | FusionMethod::Borda) {
                prop_assert_eq!(got, want);
            } else {
                // Score-based methods break score ties by id, as the input order does.
                want.sort();
                let mut g = got.clone();
                g.sort();
                prop_assert_eq!(g, want);
            }
        }
    }

    /// On data drawn from a known logistic model, the fit recovers the signs
    /// and ranks the positives first.
    #[test]
    fn learned_fit_recovers_a_planted_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let truth = [3.0f32, 0.0, -2.0, 1.0];
        let rows: Vec<(Vec<f32>, bool)> = (0..4000)
            .map(|_| {
                let f: Vec<f32> = (0..4).map(|_| rng.gen_range(0.0..1.0)).collect();
                let z = -1.0 + truth.iter().zip(&f).map(|(w, x)| w * x).sum::<f32>();
                let y = rng.gen_range(0.0..1.0) < 1.0 / (1.0 + (-z).exp());
                (f, y)
            })
            .collect();
        let m = LearnedModel::fit(vec!["a".into(), "b".into()], &rows, 1e-3).unwrap();
        assert!(
            m.weights[0] > 2.0 && m.weights[2] < -1.0 && m.weights[3] > 0.3,
            "{m:?}"
        );
        assert!((m.bias + 1.0).abs() < 0.5, "{m:?}");
        let a = list("a", 1.0, &[(1, 0.9), (2, 0.1)]);
        let fused = m.fuse(&[a]);
        assert_eq!(fused[0].0, 1);
    }

    #[test]
    fn rrf_rewards_agreement() {
        let a = list("a", 1.0, &[(1, 3.0), (2, 2.0), (3, 1.0)]);
        let b = list("b", 1.0, &[(2, 9.0), (4, 8.0)]);
        let f = fuse(FusionMethod::Rrf, &[a, b], 60.0);
        assert_eq!(f[0].0, 2);
    }
}
