//! Candidate sources trained from interactions and stored in the generation:
//!
//! - **EASE** ([`ease`]): the closed form up to
//!   [`TrainOptions::ease_max_items`] items, a neighbourhood approximation
//!   above; each row pruned to its `ease_keep` largest weights.
//! - **Transitions**: item-to-item co-occurrence in time order: item `b`
//!   following item `a` within `window` steps of a user's history adds `1/gap`
//!   (time decay by position), rows normalised by `sum + 1`.
//! - **ALS**: implicit matrix factorisation ([`als`]); item factors are
//!   searched through their own HNSW index (inner product).
//! - **Popularity**: interaction counts.
//! - **Content**: the HNSW search of the user vector (in the engine).
//!
//! At query time a user's history is turned into a recency-weighted indicator
//! `x_j = decay^a` (`a` = steps back from the newest interaction with `j`) and a
//! source scores `Σ_j x_j · row_j`.

pub mod als;
pub mod ease;
pub mod sequence;
pub mod sparse;
pub mod two_tower;

use std::collections::HashMap;

use rayon::prelude::*;

pub use crate::config::TrainOptions;
pub use ease::train_ease;

/// Interaction counts per item.
pub fn popularity(histories: &[Vec<u32>], n: usize) -> Vec<f32> {
    let mut c = vec![0f32; n];
    for h in histories {
        for &i in h {
            c[i as usize] += 1.0;
        }
    }
    c
}

/// Time-ordered co-occurrence rows.
pub fn train_transitions(
    histories: &[Vec<u32>],
    n: usize,
    opts: &TrainOptions,
) -> Vec<Vec<(u32, f32)>> {
    let mut rows: Vec<HashMap<u32, f32>> = vec![HashMap::new(); n];
    for h in histories {
        for (a, &i) in h.iter().enumerate() {
            for gap in 1..=opts.transitions_window {
                let Some(&j) = h.get(a + gap) else { break };
                if j != i {
                    *rows[i as usize].entry(j).or_default() += 1.0 / gap as f32;
                }
            }
        }
    }
    rows.into_par_iter()
        .map(|r| {
            // Sorted first, so sums and tie-breaks do not depend on hash order.
            let mut dense: Vec<(u32, f32)> = r.into_iter().collect();
            dense.sort_unstable_by_key(|e| e.0);
            let total: f32 = dense.iter().map(|e| e.1).sum();
            dense.iter_mut().for_each(|e| e.1 /= total + 1.0);
            if dense.len() > opts.transitions_keep {
                dense.select_nth_unstable_by(opts.transitions_keep, |a, b| {
                    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
                });
                dense.truncate(opts.transitions_keep);
            }
            dense.sort_unstable_by_key(|e| e.0);
            dense
        })
        .collect()
}

/// A decayed history weight below this is left out of
/// [`recency_weights`]: with the served decays (0.7 and 0.8) that is every
/// item more than 38 or 61 steps back, whose weights together are under
/// 5·10⁻⁶ of the newest item's. That can only swap candidates whose scores
/// all but tie (on TEST it moved one figure, transitions alone Recall@20,
/// in the fourth decimal), while a user with a thousand interactions would
/// otherwise add a thousand rows to every EASE and transitions score vector
/// (the slowest calls, at the tail of the latency).
pub const NEGLIGIBLE_WEIGHT: f32 = 1e-6;

/// The recency-weighted indicator of a history (oldest first): item → decay^steps-back,
/// the most recent occurrence counting; items whose weight would fall below
/// [`NEGLIGIBLE_WEIGHT`] are left out (none when `decay` is 1).
pub fn recency_weights(history: &[u32], decay: f32) -> Vec<(u32, f32)> {
    let mut seen: crate::ids::IdMap<f32> = Default::default();
    let mut w = 1f32;
    for &i in history.iter().rev() {
        if w < NEGLIGIBLE_WEIGHT {
            break;
        }
        seen.entry(i).or_insert(w);
        w *= decay;
    }
    let mut v: Vec<(u32, f32)> = seen.into_iter().collect();
    v.sort_unstable_by_key(|e| e.0);
    v
}

/// The `n` best entries of a dense score vector that `accept` allows, best
/// first, ties towards the lower id; entries that are not finite or are zero
/// are not candidates. `accept` (a set lookup per call) is asked of the best
/// entries only, band by band in order (2n, then four times wider each time),
/// until `n` pass, not of every entry EASE scores; once a band would cover a
/// quarter of what is left, the rest is filtered whole. Each entry is asked
/// at most once. The first band is picked in one pass with a bounded buffer
/// ([`best_entries`]); only when too many of it are refused are the rest of
/// the candidates gathered.
pub fn top_n(scores: &[f32], n: usize, accept: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut band = n.saturating_mul(2).max(16);
    let head = best_entries(scores, band);
    for e in &head {
        if accept(e.0) {
            out.push(*e);
            if out.len() == n {
                return out;
            }
        }
    }
    let Some(last) = head.last().filter(|_| head.len() == band) else {
        // The band held every candidate.
        return out;
    };
    let mut v: Vec<(u32, f32)> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, *s))
        .filter(|e| is_candidate(e.1) && rank(e, last).is_gt())
        .collect();
    band = band.saturating_mul(4);
    let mut rest = &mut v[..];
    while out.len() < n && !rest.is_empty() {
        if band.saturating_mul(4) >= rest.len() {
            let need = n - out.len();
            let mut pass: Vec<(u32, f32)> = rest.iter().copied().filter(|e| accept(e.0)).collect();
            if pass.len() > need {
                pass.select_nth_unstable_by(need, rank);
                pass.truncate(need);
            }
            pass.sort_unstable_by(rank);
            out.extend(pass);
            break;
        }
        // The band's entries all rank above every entry after it.
        rest.select_nth_unstable_by(band, rank);
        let (head, tail) = rest.split_at_mut(band);
        head.sort_unstable_by(rank);
        for e in head.iter() {
            if out.len() == n {
                break;
            }
            if accept(e.0) {
                out.push(*e);
            }
        }
        rest = tail;
        band = band.saturating_mul(4);
    }
    out
}

/// Whether a score makes its entry a candidate of [`top_n`]: a score of
/// exactly zero is no evidence (an item with no weight in EASE's columns,
/// no popularity).
fn is_candidate(s: f32) -> bool {
    s.is_finite() && s != 0.0
}

/// The order of [`top_n`]: higher score first, ties towards the lower id.
fn rank(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best `k` candidates of `scores` in [`rank`] order, in one pass: the
/// index's exact scan over the negated scores (its order, nearest first and
/// ties towards the lower id, is [`rank`]), which lets an entry into its
/// buffer only if it beats the `k`-th best kept so far, so most entries cost
/// one comparison and none is copied into a vector of all candidates.
fn best_entries(scores: &[f32], k: usize) -> Vec<(u32, f32)> {
    let negated = |i: u32| -scores[i as usize];
    let candidates = (0..scores.len() as u32).filter(|&i| is_candidate(scores[i as usize]));
    vecrec_index::exact::scan(k, candidates, &negated)
        .into_iter()
        .map(|n| (n.id, -n.distance))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EASE against a naive dense solve on a tiny catalogue: B = I − P/diag(P).
    #[test]
    fn ease_matches_the_closed_form() {
        let h = vec![vec![0, 1, 2], vec![0, 1], vec![1, 2, 3], vec![3, 0]];
        let opts = TrainOptions {
            ease_lambda: 1.0,
            ease_keep: 10,
            ..Default::default()
        };
        let rows = train_ease(&h, 4, &opts).unwrap();
        // Naive: G + λI, Gauss-Jordan inverse.
        let n = 4;
        let mut a = vec![vec![0f64; 2 * n]; n];
        for u in &h {
            for &i in u {
                for &j in u {
                    a[i as usize][j as usize] += 1.0;
                }
            }
        }
        for i in 0..n {
            a[i][i] += 1.0;
            a[i][n + i] = 1.0;
        }
        for c in 0..n {
            let piv = a[c][c];
            for x in a[c].iter_mut() {
                *x /= piv;
            }
            for r in 0..n {
                if r != c {
                    let f = a[r][c];
                    let pivot_row = a[c].clone();
                    for (x, y) in a[r].iter_mut().zip(pivot_row) {
                        *x -= f * y;
                    }
                }
            }
        }
        for i in 0..n {
            for j in 0..n {
                let want = if i == j {
                    0.0
                } else {
                    -a[i][n + j] / a[j][n + j]
                };
                let got = rows[i]
                    .iter()
                    .find(|e| e.0 == j as u32)
                    .map_or(0.0, |e| e.1 as f64);
                assert!(
                    (got - want).abs() < 1e-5,
                    "B[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn transitions_decay_with_the_gap() {
        let rows = train_transitions(&[vec![0, 1, 2]], 3, &TrainOptions::default());
        let w = |a: usize, b: u32| rows[a].iter().find(|e| e.0 == b).map_or(0.0, |e| e.1);
        // From 0: 1 at gap 1 (weight 1), 2 at gap 2 (weight 0.5); normalised by 1.5 + 1.
        assert!((w(0, 1) - 1.0 / 2.5).abs() < 1e-6);
        assert!((w(0, 2) - 0.5 / 2.5).abs() < 1e-6);
        assert!(rows[2].is_empty());
    }

    proptest::proptest! {
        /// `top_n` equals filtering every entry, then sorting, whatever share
        /// of the entries `accept` refuses (the bands widen), with ties,
        /// NaN and infinities; no entry is asked about twice.
        #[test]
        fn top_n_matches_filter_then_sort(
            scores in proptest::collection::vec(-3i8..4, 0..400),
            n in 0usize..60,
            refuse_below in 0u32..400,
        ) {
            // -3 stands for NaN and 3 for infinity: neither is a candidate.
            let s: Vec<f32> = scores
                .iter()
                .map(|&x| match x {
                    -3 => f32::NAN,
                    3 => f32::INFINITY,
                    x => x as f32,
                })
                .collect();
            let asked = std::cell::RefCell::new(std::collections::HashSet::new());
            let accept = |i: u32| {
                assert!(asked.borrow_mut().insert(i), "row {i} asked twice");
                i >= refuse_below
            };
            let mut want: Vec<(u32, f32)> = s
                .iter()
                .enumerate()
                .filter(|(i, x)| x.is_finite() && **x != 0.0 && *i as u32 >= refuse_below)
                .map(|(i, x)| (i as u32, *x))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(n);
            proptest::prop_assert_eq!(top_n(&s, n, &accept), want);
            // Only candidates are asked about.
            proptest::prop_assert!(asked.borrow().iter().all(|&i| s[i as usize].is_finite() && s[i as usize] != 0.0));
        }
    }

    #[test]
    fn recency_and_top_n() {
        assert_eq!(
            recency_weights(&[5, 7, 5, 9], 0.5),
            vec![(5, 0.5), (7, 0.25), (9, 1.0)]
        );
        // A long history keeps its newest items down to the negligible
        // weight (0.8^61 ≈ 1.2e-6 is kept, 0.8^62 ≈ 9.8e-7 is not); without
        // decay every item counts.
        let long: Vec<u32> = (0..1000).collect();
        let kept = recency_weights(&long, 0.8);
        assert_eq!(kept.len(), 62);
        assert_eq!(kept[0].0, 938);
        assert!((kept[0].1 / 0.8f32.powi(61) - 1.0).abs() < 1e-4);
        assert_eq!(kept[61], (999, 1.0));
        assert!(kept.iter().all(|e| e.1 >= NEGLIGIBLE_WEIGHT));
        assert_eq!(recency_weights(&long, 1.0).len(), 1000);
        let s = [0.0, 3.0, 1.0, 3.0, f32::NAN, 2.0];
        assert_eq!(top_n(&s, 3, &|_| true), vec![(1, 3.0), (3, 3.0), (5, 2.0)]);
        assert_eq!(top_n(&s, 2, &|i| i != 1), vec![(3, 3.0), (5, 2.0)]);
    }
}
