//! The parallel graph construction: nodes inserted on a rayon pool with one
//! lock per node (as hnswlib does), over f32 rows or their int8 codes, then
//! flattened into the written file.

use std::path::Path;

use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::search::{greedy, search_layer, VISITED};
use super::{Cand, HnswParams};
use crate::distance::Metric;
use crate::error::Result;
use crate::format::{FileWriter, Kind};
use crate::scorer::{prefetch_lines, Scorer};

/// Distances between stored rows, as a graph build needs them.
trait Space: Sync {
    fn pair(&self, a: u32, b: u32) -> f32;
    fn prefetch(&self, i: u32);
}

struct F32Rows<'a> {
    vectors: &'a [f32],
    dim: usize,
    metric: Metric,
    lines: usize,
}

impl F32Rows<'_> {
    #[inline]
    fn row(&self, i: u32) -> &[f32] {
        &self.vectors[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
}

impl Space for F32Rows<'_> {
    #[inline]
    fn pair(&self, a: u32, b: u32) -> f32 {
        self.metric.distance(self.row(a), self.row(b))
    }
    #[inline]
    fn prefetch(&self, i: u32) {
        crate::simd::prefetch(self.row(i), self.lines);
    }
}

/// The rows as int8 codes with one global scale ([`crate::quant`]).
struct CodeRows {
    codes: Vec<i8>,
    dim: usize,
    metric: Metric,
    s2: f32,
    lines: usize,
}

impl CodeRows {
    fn new(vectors: &[f32], dim: usize, metric: Metric) -> Self {
        let scale = crate::quant::scale_of(vectors);
        let mut codes = Vec::with_capacity(vectors.len());
        let mut row = Vec::with_capacity(dim);
        for v in vectors.chunks_exact(dim) {
            crate::quant::encode(v, scale, &mut row);
            codes.extend_from_slice(&row);
        }
        Self {
            codes,
            dim,
            metric,
            s2: scale * scale,
            lines: prefetch_lines(dim),
        }
    }

    #[inline]
    fn row(&self, i: u32) -> &[i8] {
        &self.codes[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
}

impl Space for CodeRows {
    #[inline]
    fn pair(&self, a: u32, b: u32) -> f32 {
        crate::quant::code_distance(self.metric, self.s2, self.row(a), self.row(b))
    }
    #[inline]
    fn prefetch(&self, i: u32) {
        crate::simd::prefetch(self.row(i), self.lines);
    }
}

/// Distances from one stored row to the others.
struct FromRow<'a, S> {
    space: &'a S,
    q: u32,
}

impl<S: Space> Scorer for FromRow<'_, S> {
    #[inline]
    fn distance(&self, i: u32) -> f32 {
        self.space.pair(self.q, i)
    }
    #[inline]
    fn prefetch(&self, i: u32) {
        self.space.prefetch(i);
    }
}

/// The neighbour-selection heuristic (algorithm 4): keep a candidate only if it
/// is closer to the base than to every neighbour already kept.
fn select_heuristic(sorted: &[Cand], m: usize, pair: &dyn Fn(u32, u32) -> f32) -> Vec<u32> {
    let mut kept: Vec<Cand> = Vec::with_capacity(m);
    for &c in sorted {
        if kept.len() >= m {
            break;
        }
        if kept.iter().all(|k| pair(c.1, k.1) > c.0) {
            kept.push(c);
        }
    }
    kept.into_iter().map(|c| c.1).collect()
}

/// Draws each node's top level with the paper's exponential law, mL = 1/ln(m).
fn assign_levels(n: usize, m: usize, seed: u64) -> Vec<usize> {
    let ml = 1.0 / (m as f64).ln();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            ((-u.ln() * ml).floor() as usize).min(30)
        })
        .collect()
}

/// Builds the graph over `n = vectors.len() / dim` rows and writes it to `path`.
/// `progress` is called with the number of inserted nodes from time to time.
pub fn build(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: &HnswParams,
    path: &Path,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    params.validate()?;
    let graph = BuildGraph::build(vectors, dim, metric, params, progress);
    graph.write(path)
}

struct BuildGraph {
    m: usize,
    m0: usize,
    levels: Vec<usize>,
    /// links[node][level]
    links: Vec<Vec<Mutex<Vec<u32>>>>,
    entry: RwLock<(u32, usize)>,
}

impl BuildGraph {
    fn build(
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        params: &HnswParams,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Self {
        let n = vectors.len().checked_div(dim).unwrap_or(0);
        let m = params.m;
        let m0 = 2 * m;
        let levels = assign_levels(n, m, params.seed);
        let links = levels
            .iter()
            .map(|&l| {
                (0..=l)
                    .map(|lv| Mutex::new(Vec::with_capacity(if lv == 0 { m0 } else { m })))
                    .collect()
            })
            .collect();
        let g = BuildGraph {
            m,
            m0,
            entry: RwLock::new((0, levels.first().copied().unwrap_or(0))),
            levels,
            links,
        };
        if n <= 1 {
            return g;
        }
        if params.build_on_codes {
            g.insert_all(&CodeRows::new(vectors, dim, metric), params, progress);
        } else {
            let rows = F32Rows {
                vectors,
                dim,
                metric,
                lines: prefetch_lines(dim * 4),
            };
            g.insert_all(&rows, params, progress);
        }
        g
    }

    fn insert_all<S: Space>(
        &self,
        space: &S,
        params: &HnswParams,
        progress: &(dyn Fn(usize) + Sync),
    ) {
        // Every worker takes the next row from one counter, so rows go in
        // nearly in order (as a sequential build would insert them) rather
        // than rayon's halves of the range growing two graphs side by side.
        let n = self.levels.len();
        let next = std::sync::atomic::AtomicUsize::new(1);
        (0..rayon::current_num_threads())
            .into_par_iter()
            .for_each(|_| loop {
                let q = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if q >= n {
                    break;
                }
                self.insert(q as u32, space, params.ef_construction);
                if (q + 1).is_multiple_of(1024) || q + 1 == n {
                    progress(q + 1);
                }
            });
    }

    fn insert<S: Space>(&self, q: u32, space: &S, ef_c: usize) {
        let dist = FromRow { space, q };
        let pair = |a: u32, b: u32| space.pair(a, b);
        let level = self.levels[q as usize];
        let (ep, top) = *self.entry.read();
        let mut cur = Cand(dist.distance(ep), ep);
        let mut scratch = Vec::new();
        for l in (level + 1..=top).rev() {
            cur = greedy(
                cur,
                &dist,
                &mut |i: u32, out: &mut Vec<u32>| {
                    out.clear();
                    out.extend_from_slice(&self.links[i as usize][l].lock());
                },
                &mut scratch,
            );
        }
        let mut eps = vec![cur];
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            for l in (0..=level.min(top)).rev() {
                visited.reset(self.levels.len());
                let mut nbrs = |i: u32, out: &mut Vec<u32>| {
                    if let Some(lk) = self.links[i as usize].get(l) {
                        out.extend_from_slice(&lk.lock());
                    }
                };
                let mut sc = Vec::new();
                let w = search_layer(
                    &dist,
                    &mut nbrs,
                    |_| {},
                    &eps,
                    ef_c,
                    &mut visited,
                    None,
                    &mut sc,
                );
                let max_links = if l == 0 { self.m0 } else { self.m };
                let selected = select_heuristic(&w, self.m, &pair);
                {
                    // A concurrent insert that reached `q` through a higher
                    // layer may already have linked itself into q's list at
                    // this layer; keep those links rather than overwrite them
                    // (losing them left a few nodes badly reachable).
                    let mut own = self.links[q as usize][l].lock();
                    let extra: Vec<u32> = own
                        .iter()
                        .copied()
                        .filter(|x| !selected.contains(x))
                        .collect();
                    if extra.is_empty() {
                        *own = selected.clone();
                    } else {
                        let mut cands: Vec<Cand> = selected
                            .iter()
                            .chain(&extra)
                            .map(|&x| Cand(dist.distance(x), x))
                            .collect();
                        cands.sort_unstable();
                        *own = if cands.len() > max_links {
                            select_heuristic(&cands, max_links, &pair)
                        } else {
                            cands.into_iter().map(|c| c.1).collect()
                        };
                    }
                }
                for &s in &selected {
                    let mut lk = self.links[s as usize][l].lock();
                    if lk.contains(&q) {
                        continue;
                    }
                    if lk.len() < max_links {
                        lk.push(q);
                    } else {
                        for &x in lk.iter() {
                            space.prefetch(x);
                        }
                        let mut cands: Vec<Cand> = lk
                            .iter()
                            .chain(std::iter::once(&q))
                            .map(|&x| Cand(space.pair(s, x), x))
                            .collect();
                        cands.sort_unstable();
                        *lk = select_heuristic(&cands, max_links, &pair);
                    }
                }
                eps = w;
            }
        });
        if level > top {
            let mut e = self.entry.write();
            if level > e.1 {
                *e = (q, level);
            }
        }
    }

    fn write(&self, path: &Path) -> Result<()> {
        let n = self.levels.len();
        let (ep, max_level) = *self.entry.read();
        let mut level0 = vec![0u32; n * (self.m0 + 1)];
        let mut upper_off = vec![u32::MAX; n];
        let mut blocks: Vec<u32> = Vec::new();
        for i in 0..n {
            let l0 = self.links[i][0].lock();
            let slot = &mut level0[i * (self.m0 + 1)..(i + 1) * (self.m0 + 1)];
            slot[0] = l0.len() as u32;
            slot[1..=l0.len()].copy_from_slice(&l0);
            if self.levels[i] > 0 {
                upper_off[i] = blocks.len() as u32;
                for l in 1..=self.levels[i] {
                    let lk = self.links[i][l].lock();
                    blocks.push(lk.len() as u32);
                    blocks.extend_from_slice(&lk);
                    blocks.extend(std::iter::repeat_n(0, self.m - lk.len()));
                }
            }
        }
        let levels: Vec<u32> = self.levels.iter().map(|&l| l as u32).collect();
        let fields = [
            n as u64,
            self.m as u64,
            max_level as u64,
            ep as u64,
            blocks.len() as u64,
        ];
        let mut w = FileWriter::create(path, Kind::HNSW, fields)?;
        w.write_pod(&level0)?;
        w.write_pod(&levels)?;
        w.write_pod(&upper_off)?;
        w.write_pod(&blocks)?;
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_the_exponential_law() {
        let l = assign_levels(100_000, 16, 1);
        let above0 = l.iter().filter(|&&x| x > 0).count() as f64 / 1e5;
        // P(level > 0) = 1/m = 0.0625.
        assert!((above0 - 0.0625).abs() < 0.005, "{above0}");
    }

    #[test]
    fn heuristic_prefers_diverse_neighbours() {
        // Base at 0; candidates at 1, 1.1 (same side) and -2 (other side).
        let pos = [0.0f32, 1.0, 1.1, -2.0];
        let pair = |a: u32, b: u32| (pos[a as usize] - pos[b as usize]).abs();
        let sorted = vec![Cand(1.0, 1), Cand(1.1, 2), Cand(2.0, 3)];
        assert_eq!(select_heuristic(&sorted, 3, &pair), vec![1, 3]);
    }
}
