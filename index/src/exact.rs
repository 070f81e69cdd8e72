//! Exact (brute-force) k-nearest-neighbour search: the oracle every ANN index is
//! checked against, and the plan for selective filters.

use std::collections::BinaryHeap;

use crate::distance::Metric;
use crate::hnsw::Neighbor;
use crate::quant::{f32_at_or_above, RowCodes};
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
    in_fours(candidates, |ids| match <[u32; 4]>::try_from(ids) {
        Ok(four) => {
            let d = scorer.distance4(four);
            for j in 0..4 {
                offer(&mut kept, (d[j], four[j]));
            }
        }
        Err(_) => {
            for &i in ids {
                offer(&mut kept, (scorer.distance(i), i));
            }
        }
    });
    if kept.len() > k {
        kept.select_nth_unstable_by(k - 1, cmp);
        kept.truncate(k);
    }
    kept.sort_unstable_by(cmp);
    kept.into_iter()
        .map(|(distance, id)| Neighbor { id, distance })
        .collect()
}

/// Calls `f` with `ids` four at a time, and with the last one to three.
#[inline(always)]
fn in_fours(mut ids: impl Iterator<Item = u32>, mut f: impl FnMut(&[u32])) {
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
        if got > 0 {
            f(&four[..got]);
        }
        if got < 4 {
            break;
        }
    }
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

/// [`search`] over `vectors` under an inner-product or cosine metric,
/// with the same answer (every id and every distance's bits), in two
/// passes: every row `accept` allows is first scored on its int8 `codes`,
/// which bound the distance the f32 scan would compute to an interval; a
/// row can be among the `k` nearest only if its interval starts at or
/// below the `k`-th smallest interval end, and only those rows are scored
/// again on their f32 values. A scan of a 64-wide table then reads 76
/// bytes a row instead of 256 (the f32 scan's dot products over ALS's
/// table were about 7% of a hybrid Recommend's CPU). The interval's
/// half-width is `‖q‖·‖row − scale·codes‖`, widened for the rounding of
/// both sums (relative, and absolute where values are subnormal) and of
/// `1 − dot`. A row whose products could overflow an f32 sum, or that
/// holds a value that is not finite, is always scored again. An L2 metric
/// takes [`search`]. Returns the answer and how many rows were scored in
/// f32 (under L2, every row passed).
pub fn search_bounded(
    vectors: &[f32],
    codes: &RowCodes,
    metric: Metric,
    query: &[f32],
    k: usize,
    accept: Option<&dyn Fn(u32) -> bool>,
) -> (Vec<Neighbor>, usize) {
    let n = codes.len() as u32;
    let ids = (0..n).filter(|&i| accept.is_none_or(|f| f(i)));
    search_bounded_in(vectors, codes, metric, query, k, ids)
}

/// [`search_bounded`] over the rows `ids` names (increasing, each below
/// `codes.len()`), as over the rows an `accept` allows that lets exactly
/// those through.
pub fn search_bounded_in(
    vectors: &[f32],
    codes: &RowCodes,
    metric: Metric,
    query: &[f32],
    k: usize,
    ids: impl Iterator<Item = u32>,
) -> (Vec<Neighbor>, usize) {
    let dim = codes.dim();
    debug_assert_eq!(vectors.len(), codes.len() * dim, "codes of another table");
    let offset = match metric {
        Metric::L2 => {
            let mut passed = 0;
            let scorer = RowScorer::new(query, vectors, dim, metric);
            let found = scan(k, ids.inspect(|_| passed += 1), &scorer);
            return (found, passed);
        }
        Metric::Cosine => 1.0,
        Metric::InnerProduct => 0.0,
    };
    if k == 0 {
        return (Vec::new(), 0);
    }
    // Rounded up (to the next f32, subnormal ones included).
    let q_norm = f32_at_or_above(
        query
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt()
            * (1.0 + 1e-12),
    );
    // A sum of `dim` f32 products (16 lanes, then the lanes summed) is
    // within `γ·Σ|products|` of the real one, plus 2⁻¹⁵⁰ a rounding where
    // the values are subnormal; this γ and this floor (`(2·dim + 64)·2⁻¹⁴⁹`)
    // are several times the textbook bounds, and count both sums. The
    // interval's own arithmetic (`scale·dot`, `offset − approx`, `dist ±
    // wide`, and the scan's `1 − dot`) rounds by at most 2⁻²⁴ of its
    // operands (or 2⁻¹⁵⁰) a step: the `8ε·(offset + |approx|)` term, the
    // factor `1 + 2⁻¹⁶` on the error term and the floor cover it. In f32:
    // the same bound in f64 with outward rounding cost about a sixth more
    // CPU a hybrid Recommend (`benches/serving/ab_alternate.sh`, 10 rounds
    // at concurrency 8, 2026-12-08).
    let gamma = (dim as f32 + 16.0) * 2.0 * f32::EPSILON;
    let floor = (2 * dim + 64) as f32 * f32::from_bits(1);
    // Past this, a partial sum of the f32 scan could overflow (and the
    // interval's own products).
    let limit = f32::MAX / 4.0;
    let mut ends = KthSmallest::new(k);
    let mut maybe: Vec<(f32, u32)> = Vec::new();
    let mut offer = |i: u32, dot: f32| {
        let (scale, norm, err) = codes.terms(i);
        let approx = scale * dot;
        // `reach` is NaN or +∞ for a row that is not finite, and bounds
        // every term of `wide` below.
        let reach = q_norm * (2.0 * norm + err);
        let (lo, hi) = if reach < limit && approx.is_finite() {
            let dist = offset - approx;
            let wide = q_norm * (err + gamma * (2.0 * norm + err)) * (1.0 + 1.0 / 65536.0)
                + (offset + approx.abs()) * (8.0 * f32::EPSILON)
                + floor;
            (dist - wide, dist + wide)
        } else {
            (f32::NEG_INFINITY, f32::INFINITY)
        };
        ends.offer(hi);
        if lo <= ends.kth() {
            maybe.push((lo, i));
        }
    };
    in_fours(ids, |ids| match <[u32; 4]>::try_from(ids) {
        Ok(four) => {
            let dots = crate::simd::dot_f32_i8_4(query, four.map(|i| codes.codes(i)));
            for j in 0..4 {
                offer(four[j], dots[j]);
            }
        }
        Err(_) => {
            for &i in ids {
                let c = codes.codes(i);
                offer(i, crate::simd::dot_f32_i8_4(query, [c, c, c, c])[0]);
            }
        }
    });
    let bar = ends.kth();
    let rescore: Vec<u32> = maybe
        .into_iter()
        .filter(|e| e.0 <= bar)
        .map(|e| e.1)
        .collect();
    let scorer = RowScorer::new(query, vectors, dim, metric);
    (scan(k, rescore.iter().copied(), &scorer), rescore.len())
}

/// The `k`-th smallest of the values offered so far (+∞ until `k` were).
struct KthSmallest {
    k: usize,
    heap: BinaryHeap<Total>,
}

/// An f32 ordered by `total_cmp`.
struct Total(f32);

impl PartialEq for Total {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl KthSmallest {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    fn offer(&mut self, x: f32) {
        if self.heap.len() < self.k {
            self.heap.push(Total(x));
        } else if x < self.kth() {
            self.heap.pop();
            self.heap.push(Total(x));
        }
    }

    #[inline]
    fn kth(&self) -> f32 {
        match self.heap.peek() {
            Some(t) if self.heap.len() == self.k => t.0,
            _ => f32::INFINITY,
        }
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

        /// The bounded scan answers exactly as the f32 scan: rows of mixed
        /// magnitudes, exact duplicates (ties broken by id), zero rows, a
        /// filter, any k against the row count.
        #[test]
        fn bounded_matches_exact(
            base in proptest::collection::vec(-3.0f32..3.0, 1..400),
            dup in proptest::collection::vec(0usize..50, 0..20),
            dim in 1usize..40,
            k in 0usize..30,
            cosine in any::<bool>(),
            keep in 1u32..4,
            seed in any::<u32>(),
        ) {
            let metric = if cosine { Metric::Cosine } else { Metric::InnerProduct };
            let n = base.len() / dim;
            prop_assume!(n > 0);
            let mut vectors: Vec<f32> = base[..n * dim]
                .iter()
                .enumerate()
                .map(|(j, &x)| x * [1.0, 0.01, 40.0][(j / dim) % 3])
                .collect();
            for &d in &dup {
                let row = vectors[(d % n) * dim..(d % n + 1) * dim].to_vec();
                vectors.extend(row);
            }
            vectors.extend(std::iter::repeat_n(0.0, dim));
            if cosine {
                for row in vectors.chunks_exact_mut(dim) {
                    crate::distance::normalize(row);
                }
            }
            let mut q: Vec<f32> = (0..dim).map(|i| ((i as u32 ^ seed) % 7) as f32 - 3.0).collect();
            if cosine {
                crate::distance::normalize(&mut q);
            }
            let codes = RowCodes::new(&vectors, dim);
            let f = move |i: u32| i.is_multiple_of(keep);
            let accept: Option<&dyn Fn(u32) -> bool> = if keep > 1 { Some(&f) } else { None };
            let want = search(&vectors, dim, metric, &q, k, accept);
            let (got, _) = search_bounded(&vectors, &codes, metric, &q, k, accept);
            prop_assert_eq!(
                got.iter().map(|x| (x.distance.to_bits(), x.id)).collect::<Vec<_>>(),
                want.iter().map(|x| (x.distance.to_bits(), x.id)).collect::<Vec<_>>()
            );
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

    /// What makes the bounded scan fast: on rows like a learned table's
    /// (64 Gaussian factors), a few of 10,000 are scored again on their
    /// f32 values.
    #[test]
    fn bounded_rescans_few_rows() {
        let (n, dim, k) = (10_000usize, 64usize, 200usize);
        let mut state = 7u64;
        let mut gauss = || {
            // Sum of 4 uniforms, near enough to Gaussian for this purpose.
            (0..4)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .sum::<f32>()
        };
        let vectors: Vec<f32> = (0..n * dim).map(|_| gauss()).collect();
        let q: Vec<f32> = (0..dim).map(|_| gauss()).collect();
        let codes = RowCodes::new(&vectors, dim);
        let (got, rescored) = search_bounded(&vectors, &codes, Metric::InnerProduct, &q, k, None);
        let want = search(&vectors, dim, Metric::InnerProduct, &q, k, None);
        assert_eq!(bits(&got), bits(&want));
        assert!(
            rescored >= k && rescored < n / 10,
            "{rescored} of {n} rows scored again"
        );
    }

    fn bits(found: &[Neighbor]) -> Vec<(u32, u32)> {
        found.iter().map(|x| (x.distance.to_bits(), x.id)).collect()
    }

    /// Every k of [`search_bounded`] against [`search`], to the bit.
    fn same_as_exact(vectors: &[f32], dim: usize, q: &[f32], metric: Metric) {
        let codes = RowCodes::new(vectors, dim);
        for k in 1..=vectors.len() / dim {
            let want = search(vectors, dim, metric, q, k, None);
            let (got, _) = search_bounded(vectors, &codes, metric, q, k, None);
            assert_eq!(bits(&got), bits(&want), "k {k}, {metric:?}");
        }
    }

    /// Where f32 arithmetic is least exact, the interval still holds the
    /// distance the f32 scan computes.
    #[test]
    fn bounded_matches_exact_at_the_edges() {
        // A partial sum of the f32 scan overflows although the whole dot
        // would not: the first row's distance is -inf there.
        let (a, b) = (2f32.powi(63), 2f32.powi(62));
        same_as_exact(
            &[a, a, -a, b, b, b],
            3,
            &[2f32.powi(64); 3],
            Metric::InnerProduct,
        );
        // Subnormal rows, where each rounding errs by up to 2^-150 whatever
        // the sum's size: 0.75 of the smallest subnormal rounds up to it,
        // 16 times, so the f32 scan finds the first row 143 smallest
        // subnormals long against the query (139 really), the second 142.
        let u = f32::from_bits(1);
        let mut rows = vec![127.0 * u, 0.0];
        rows.extend([u; 16]);
        rows.extend([127.0 * u, 15.0 * u]);
        rows.extend([0.0; 16]);
        let mut q = vec![1.0, 1.0];
        q.extend([0.75; 16]);
        same_as_exact(&rows, 18, &q, Metric::InnerProduct);
        // Rows near one another (some an ulp away from others), against a
        // query of fractions: distances that all but tie.
        let dim = 24usize;
        let mut rows = Vec::new();
        for r in 0..40usize {
            for j in 0..dim {
                let mut x = ((j * 7 + r / 4) % 255) as f32 - 127.0;
                if j == r % dim && r % 2 == 1 {
                    x = if r % 4 == 1 {
                        x.next_up()
                    } else {
                        x.next_down()
                    };
                }
                rows.push(x / 64.0);
            }
        }
        let q: Vec<f32> = (0..dim).map(|j| 0.1 * j as f32 - 1.1).collect();
        same_as_exact(&rows, dim, &q, Metric::InnerProduct);
        let mut unit = rows.clone();
        let mut uq = q.clone();
        for row in unit.chunks_exact_mut(dim) {
            crate::distance::normalize(row);
        }
        crate::distance::normalize(&mut uq);
        same_as_exact(&unit, dim, &uq, Metric::Cosine);
        // A query so long that the int8 sum overflows though the f32 one
        // would not: the codes' distance is not finite.
        same_as_exact(
            &[1.0, 0.5, 0.25, 1.0, -1.0, 0.0],
            2,
            &[2f32.powi(122), 0.0],
            Metric::InnerProduct,
        );
        // A query whose norm is subnormal (rounded up, not to nearest), and
        // the zero query against a row near the largest f32.
        let q = [0.0, f32::from_bits(1), f32::from_bits(1)];
        let (a, b) = (2f32.powi(20), 2f32.powi(17));
        let rows = [
            127.0 * a,
            10.484375 * a,
            10.484375 * a,
            127.0 * b,
            83.0 * b,
            83.0 * b,
        ];
        same_as_exact(&rows, 3, &q, Metric::InnerProduct);
        same_as_exact(&[3e38, 0.0, 1.0, 0.0], 2, &[0.0, 0.0], Metric::InnerProduct);
        // Rows holding values that are not finite sit among finite ones.
        let rows = [
            1.0,
            2.0,
            f32::NAN,
            1.0,
            f32::INFINITY,
            0.0,
            -1.0,
            3.0,
            f32::NEG_INFINITY,
            5.0,
        ];
        same_as_exact(&rows, 2, &[0.5, -0.25], Metric::InnerProduct);
    }
}
