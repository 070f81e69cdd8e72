//! Exact (brute-force) k-nearest-neighbour search: the oracle every ANN index is
//! checked against, and the plan for selective filters.

use std::collections::BinaryHeap;

use crate::distance::Metric;
use crate::hnsw::Neighbor;

/// (distance, id) ordered by distance then id.
#[derive(PartialEq)]
struct Entry(f32, u32);
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// The `k` rows of `vectors` (row-major, `dim` columns) nearest to `query`
/// among the rows `candidates` yields, ties broken towards the lower id.
pub fn search_ids(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    query: &[f32],
    k: usize,
    candidates: impl Iterator<Item = u32>,
) -> Vec<Neighbor> {
    top_k(k, candidates, |i| {
        metric.distance(query, &vectors[i as usize * dim..(i as usize + 1) * dim])
    })
}

/// The `k` rows among `candidates` with the smallest `distance`, nearest
/// first, ties broken towards the lower id.
pub fn top_k(
    k: usize,
    candidates: impl Iterator<Item = u32>,
    distance: impl Fn(u32) -> f32,
) -> Vec<Neighbor> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Entry> = BinaryHeap::with_capacity(k + 1);
    for i in candidates {
        let e = Entry(distance(i), i);
        if heap.len() < k {
            heap.push(e);
        } else if heap.peek().is_some_and(|w| e < *w) {
            heap.pop();
            heap.push(e);
        }
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|e| Neighbor {
            id: e.1,
            distance: e.0,
        })
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
    match accept {
        Some(f) => search_ids(vectors, dim, metric, query, k, (0..n).filter(|&i| f(i))),
        None => search_ids(vectors, dim, metric, query, k, 0..n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_full_sort(data in proptest::collection::vec(-5f32..5.0, 3..300), k in 0usize..20) {
            let dim = 3;
            let n = data.len() / dim;
            let vectors = &data[..n * dim];
            let q = [0.5f32, -0.5, 1.0];
            let got = search(vectors, dim, Metric::L2, &q, k, None);
            let mut all: Vec<(f32, u32)> = (0..n as u32)
                .map(|i| (Metric::L2.distance(&q, &vectors[i as usize * dim..(i as usize + 1) * dim]), i))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let want: Vec<u32> = all.iter().take(k).map(|x| x.1).collect();
            prop_assert_eq!(got.iter().map(|x| x.id).collect::<Vec<_>>(), want);
        }
    }
}
