//! Exact (brute-force) k-nearest-neighbour search: the oracle every ANN index is
//! checked against, and the plan for selective filters.

use crate::distance::Metric;
use crate::hnsw::Neighbor;
use crate::scorer::{RowScorer, Scorer};

/// The `k` rows among `candidates` nearest under `scorer`, nearest first,
/// ties broken towards the lower id. Rows are scored four at a time ([`Scorer::distance4`])
/// and collected into a buffer of up to `2k` that is cut back to the best
/// `k` when full, so a row costs one comparison against the `k`-th best
/// kept so far instead of a heap operation.
pub fn scan<S: Scorer + ?Sized>(
    k: usize,
    candidates: impl Iterator<Item = u32>,
    scorer: &S,
) -> Vec<Neighbor> {
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    let mut kept: Vec<(f32, u32)> = Vec::with_capacity(2 * k);
    // The k-th best kept after the last cut; a row no better is skipped.
    let mut bound: Option<(f32, u32)> = None;
    let mut offer = |kept: &mut Vec<(f32, u32)>, e: (f32, u32)| {
        if bound.is_some_and(|b| cmp(&e, &b).is_ge()) {
            return;
        }
        kept.push(e);
        if kept.len() == 2 * k {
            kept.select_nth_unstable_by(k - 1, cmp);
            kept.truncate(k);
            bound = Some(kept[k - 1]);
        }
    };
    let mut ids = candidates;
    loop {
        let mut four = [0u32; 4];
        let mut got = 0;
        for slot in four.iter_mut() {
            match ids.next() {
                Some(i) => {
                    *slot = i;
                    got += 1;
                }
                None => break,
            }
        }
        if got == 4 {
            let d = scorer.distance4(four);
            for j in 0..4 {
                offer(&mut kept, (d[j], four[j]));
            }
        } else {
            for &i in &four[..got] {
                offer(&mut kept, (scorer.distance(i), i));
            }
            break;
        }
    }
    if kept.len() > k {
        kept.select_nth_unstable_by(k - 1, cmp);
        kept.truncate(k);
    }
    kept.sort_unstable_by(cmp);
    kept.into_iter()
        .map(|(distance, id)| Neighbor { id, distance })
        .collect()
}

/// Exact search over all rows, keeping only those `accept` allows.
pub fn search(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    query: &[f32],
    k: usize,
    accept: Option<&dyn Fn(u32) -> bool>,
) -> Vec<Neighbor> {
    let n = (vectors.len() / dim.max(1)) as u32;
    let scorer = RowScorer::new(query, vectors, dim, metric);
    match accept {
        Some(f) => scan(k, (0..n).filter(|&i| f(i)), &scorer),
        None => scan(k, 0..n, &scorer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Small integers: every kernel sums them exactly, and many rows tie;
        // widths past 16 run the kernels' vector loop, not only their tail.
        #[test]
        fn matches_full_sort(
            data in proptest::collection::vec((-5i32..5).prop_map(|x| x as f32), 0..1200),
            dim in 1usize..40,
            k in 0usize..20,
            m in 0usize..3,
        ) {
            let metric = [Metric::L2, Metric::InnerProduct, Metric::Cosine][m];
            let n = data.len() / dim;
            let vectors = &data[..n * dim];
            let q: Vec<f32> = (0..dim).map(|i| (i % 5) as f32 - 2.0).collect();
            let got = search(vectors, dim, metric, &q, k, None);
            let mut all: Vec<(f32, u32)> = (0..n as u32)
                .map(|i| (metric.distance(&q, &vectors[i as usize * dim..(i as usize + 1) * dim]), i))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            prop_assert_eq!(got.iter().map(|x| (x.distance, x.id)).collect::<Vec<_>>(), all);
        }

        /// The buffered scan keeps exactly the k best by (distance, id) of
        /// the rows it is offered, in order, whatever k is against the row count
        /// (the buffer is cut several times when k is small).
        #[test]
        fn scan_matches_full_sort(
            scores in proptest::collection::vec(0u8..20, 0..500),
            k in 0usize..40,
            step in 1usize..4,
        ) {
            let dist = |i: u32| scores[i as usize] as f32;
            let rows = (0..scores.len() as u32).step_by(step);
            let got = scan(k, rows.clone(), &dist);
            let mut all: Vec<(f32, u32)> = rows.map(|i| (dist(i), i)).collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            prop_assert_eq!(got.iter().map(|x| (x.distance, x.id)).collect::<Vec<_>>(), all);
        }
    }
}
