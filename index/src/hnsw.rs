//! Hierarchical navigable small-world graphs (Malkov & Yashunin, "Efficient and
//! robust approximate nearest neighbor search using Hierarchical Navigable Small
//! World graphs", IEEE TPAMI 2018).
//!
//! The graph is built in memory with one lock per node (insertions run in
//! parallel on a rayon pool, as hnswlib does), then flattened into one `u32`
//! array that is written in the envelope format and searched straight from a
//! memory map:
//!
//! ```text
//! level0   n × (m0 + 1)   per node: neighbour count, then m0 slots
//! levels   n              top level of each node
//! upper    n              offset of the node's upper-level block, u32::MAX if level 0 only
//! blocks   Σ level·(m+1)  per upper level: neighbour count, then m slots
//! ```
//!
//! Neighbours are chosen with the paper's heuristic (algorithm 4) without
//! keeping pruned connections, which keeps the graph navigable on clustered data.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::path::Path;

use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::Metric;
use crate::error::{IndexError, Result};
use crate::format::{section, CheckedFile, FileWriter, Kind};

/// Build parameters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct HnswParams {
    /// Links per node on upper levels; level 0 keeps `2·m`. Default 16.
    pub m: usize,
    /// Candidate list size while building. Default 200.
    pub ef_construction: usize,
    /// Seed of the level assignment.
    pub seed: u64,
    /// Also write int8 codes of the vectors ([`crate::quant`]) for quantised
    /// search. Default false.
    #[serde(default)]
    pub quantize: bool,
    /// With `quantize`, which codes: int8 (default) or f16.
    #[serde(default)]
    pub codes: crate::quant::CodeKind,
    /// Compute the build's distances on int8 codes of the vectors (a
    /// quarter of the bytes) instead of the f32 vectors; searches are
    /// unaffected. Default true: on clustered200k it halved the build time
    /// (97 → 47 s with 2 threads) at the same recall curve.
    #[serde(default)]
    pub build_on_codes: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            seed: 0x5eed,
            quantize: false,
            codes: crate::quant::CodeKind::Int8,
            build_on_codes: true,
        }
    }
}

impl HnswParams {
    fn validate(&self) -> Result<()> {
        if !(2..=256).contains(&self.m) {
            return Err(IndexError::InvalidParameter {
                name: "m",
                reason: format!("must be in 2..=256, got {}", self.m),
            });
        }
        if self.ef_construction < 1 || self.ef_construction > 10_000 {
            return Err(IndexError::InvalidParameter {
                name: "ef_construction",
                reason: format!("must be in 1..=10000, got {}", self.ef_construction),
            });
        }
        Ok(())
    }
}

/// A neighbour found by a search: internal id and distance (smaller is closer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// Internal id (row in the vector store).
    pub id: u32,
    /// Distance under the index metric.
    pub distance: f32,
}

/// (distance, id) ordered by distance then id, so ties break towards the lower id.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cand(f32, u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Epoch-stamped visited set, reused across searches on the same thread.
struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks = vec![0; n];
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }
    /// Marks `i`; returns true if it was not yet visited. Branch-free: the
    /// mark is stored either way, and callers use the answer as a number.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        let fresh = *m != self.epoch;
        *m = self.epoch;
        fresh
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), epoch: 0 }) };
}

/// How a graph search scores nodes: the distance from the query to row `i`
/// (smaller is closer), and a hint to fetch row `i`'s data before it is
/// scored. Any `Fn(u32) -> f32` is a scorer without prefetching.
pub trait Scorer {
    /// Distance from the query to row `i`.
    fn distance(&self, i: u32) -> f32;
    /// Starts fetching row `i` into the cache (a hint).
    #[inline]
    fn prefetch(&self, _i: u32) {}
    /// Distances to four rows at once (a scorer may overlap the work).
    #[inline]
    fn distance4(&self, ids: [u32; 4]) -> [f32; 4] {
        ids.map(|i| self.distance(i))
    }
}

impl<F: Fn(u32) -> f32 + ?Sized> Scorer for F {
    #[inline]
    fn distance(&self, i: u32) -> f32 {
        self(i)
    }
}

/// Scores the rows of a row-major f32 matrix against a query under a metric,
/// prefetching a row's first cache lines ahead of its distance.
pub struct RowScorer<'a> {
    query: &'a [f32],
    vectors: &'a [f32],
    dim: usize,
    metric: Metric,
    lines: usize,
}

impl<'a> RowScorer<'a> {
    /// A scorer of `query` against `vectors` (`dim` columns).
    pub fn new(query: &'a [f32], vectors: &'a [f32], dim: usize, metric: Metric) -> Self {
        Self {
            query,
            vectors,
            dim,
            metric,
            lines: prefetch_lines(dim * 4),
        }
    }

    #[inline]
    fn row(&self, i: u32) -> &'a [f32] {
        let i = i as usize;
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

impl Scorer for RowScorer<'_> {
    #[inline]
    fn distance(&self, i: u32) -> f32 {
        self.metric.distance(self.query, self.row(i))
    }
    #[inline]
    fn distance4(&self, ids: [u32; 4]) -> [f32; 4] {
        let rows = ids.map(|i| self.row(i));
        match self.metric {
            Metric::L2 => crate::simd::l2_squared4(self.query, rows),
            Metric::Cosine => crate::simd::dot4(self.query, rows).map(|d| 1.0 - d),
            Metric::InnerProduct => crate::simd::dot4(self.query, rows).map(|d| -d),
        }
    }
    #[inline]
    fn prefetch(&self, i: u32) {
        crate::simd::prefetch(self.row(i), self.lines);
    }
}

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

/// Cache lines prefetched per row of `row_bytes`: the whole row. Measured on
/// clustered200k (384 dims, 24 lines a row, ef 16): 7.5k q/s without
/// prefetching, 9.3k with the first line, 10.1k with all of them.
pub(crate) fn prefetch_lines(row_bytes: usize) -> usize {
    row_bytes.div_ceil(64)
}

/// The beam search of one layer (algorithm 2). `accept` filters which nodes
/// may enter the result set; rejected nodes are still traversed. The
/// unvisited neighbours of an expanded node are collected first and their
/// vectors prefetched, so the memory loads overlap instead of each distance
/// waiting for its own.
#[allow(clippy::too_many_arguments)]
fn search_layer<S: Scorer + ?Sized, N: FnMut(u32, &mut Vec<u32>), P: Fn(u32)>(
    dist: &S,
    neighbors: &mut N,
    prefetch_links: P,
    entry: &[Cand],
    ef: usize,
    visited: &mut Visited,
    accept: Option<&dyn Fn(u32) -> bool>,
    scratch: &mut Vec<u32>,
) -> Vec<Cand> {
    let mut candidates: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(ef * 2);
    let mut results: BinaryHeap<Cand> = BinaryHeap::with_capacity(ef + 1);
    for &c in entry {
        if visited.insert(c.1) {
            candidates.push(Reverse(c));
            if accept.is_none_or(|f| f(c.1)) {
                results.push(c);
            }
        }
    }
    while results.len() > ef {
        results.pop();
    }
    let mut worst = if results.len() >= ef {
        results.peek().map_or(f32::INFINITY, |w| w.0)
    } else {
        f32::INFINITY
    };
    while let Some(Reverse(c)) = candidates.pop() {
        if c.0 > worst {
            break;
        }
        scratch.clear();
        neighbors(c.1, scratch);
        if let Some(Reverse(next)) = candidates.peek() {
            prefetch_links(next.1);
        }
        // Compacts the unvisited neighbours to the front without a branch
        // per neighbour (whether one was visited is unpredictable).
        let mut fresh = 0;
        for r in 0..scratch.len() {
            let nb = scratch[r];
            scratch[fresh] = nb;
            fresh += visited.insert(nb) as usize;
        }
        // All fresh rows at once: measured faster than a lookahead of 1, 2
        // or 4 rows (10.6k vs 9.0k / 9.6k / 9.8k q/s on clustered200k).
        for &nb in &scratch[..fresh] {
            dist.prefetch(nb);
        }
        let mut ds = [0f32; 4];
        for (j, &nb) in scratch[..fresh].iter().enumerate() {
            // Distances come four at a time (the last group padded with its
            // first id), so their arithmetic overlaps.
            if j % 4 == 0 {
                let g = &scratch[j..fresh.min(j + 4)];
                ds = dist.distance4([g[0], g[1 % g.len()], g[2 % g.len()], g[3 % g.len()]]);
            }
            let d = ds[j % 4];
            if d < worst {
                candidates.push(Reverse(Cand(d, nb)));
                if accept.is_none_or(|f| f(nb)) {
                    results.push(Cand(d, nb));
                    if results.len() > ef {
                        results.pop();
                    }
                    if results.len() >= ef {
                        worst = results.peek().map_or(f32::INFINITY, |w| w.0);
                    }
                }
            }
        }
    }
    let mut v = results.into_vec();
    v.sort_unstable();
    v
}

/// Greedy descent on one upper layer: move to the closest neighbour until none is closer.
fn greedy<S: Scorer + ?Sized, N: FnMut(u32, &mut Vec<u32>)>(
    mut cur: Cand,
    dist: &S,
    neighbors: &mut N,
    scratch: &mut Vec<u32>,
) -> Cand {
    loop {
        let mut changed = false;
        neighbors(cur.1, scratch);
        for &nb in scratch.iter() {
            dist.prefetch(nb);
        }
        for &nb in scratch.iter() {
            let d = dist.distance(nb);
            if d < cur.0 {
                cur = Cand(d, nb);
                changed = true;
            }
        }
        if !changed {
            return cur;
        }
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

/// A graph opened from disk, searched in place through the memory map.
#[derive(Debug)]
pub struct Hnsw {
    file: CheckedFile,
    n: usize,
    m: usize,
    m0: usize,
    max_level: usize,
    entry: u32,
    blocks_len: usize,
}

impl Hnsw {
    /// Opens a graph for `expected_n` vectors: the header always; with
    /// `verify` also the checksum and every count, id and offset (reading the
    /// whole file). Searches stay in bounds either way.
    pub fn open(path: &Path, expected_n: usize, verify: bool) -> Result<Self> {
        let file = CheckedFile::open(path, Kind::HNSW, verify)?;
        let [n, m, max_level, entry, blocks_len] = file.fields();
        let (n, m, max_level, blocks_len) = (
            n as usize,
            m as usize,
            max_level as usize,
            blocks_len as usize,
        );
        if n != expected_n {
            return Err(file.corrupt(format!(
                "graph has {n} nodes, the store {expected_n} vectors"
            )));
        }
        if !(2..=256).contains(&m) || max_level > 30 || (n > 0 && entry as usize >= n) {
            return Err(file.corrupt(format!(
                "bad header: m={m} max_level={max_level} entry={entry}"
            )));
        }
        let m0 = 2 * m;
        let words = n as u128 * (m0 as u128 + 1) + 2 * n as u128 + blocks_len as u128;
        if file.payload().len() as u128 != words * 4 {
            return Err(file.corrupt(format!(
                "payload is {} bytes, header implies {}",
                file.payload().len(),
                words * 4
            )));
        }
        file.advise_random();
        let g = Hnsw {
            file,
            n,
            m,
            m0,
            max_level,
            entry: entry as u32,
            blocks_len,
        };
        if verify {
            g.validate()?;
        }
        Ok(g)
    }

    fn level0(&self) -> &[u32] {
        section(&self.file, 0, self.n * (self.m0 + 1), "level0").unwrap_or(&[])
    }
    fn levels(&self) -> &[u32] {
        section(&self.file, self.n * (self.m0 + 1) * 4, self.n, "levels").unwrap_or(&[])
    }
    fn upper_off(&self) -> &[u32] {
        section(
            &self.file,
            (self.n * (self.m0 + 1) + self.n) * 4,
            self.n,
            "upper",
        )
        .unwrap_or(&[])
    }
    fn blocks(&self) -> &[u32] {
        section(
            &self.file,
            (self.n * (self.m0 + 2) + self.n) * 4,
            self.blocks_len,
            "blocks",
        )
        .unwrap_or(&[])
    }

    /// Checks every count, id and offset once, so searches can index without fear.
    fn validate(&self) -> Result<()> {
        let (l0, levels, upper, blocks) = (
            self.level0(),
            self.levels(),
            self.upper_off(),
            self.blocks(),
        );
        let n = self.n as u32;
        for i in 0..self.n {
            let slot = &l0[i * (self.m0 + 1)..(i + 1) * (self.m0 + 1)];
            let c = slot[0] as usize;
            if c > self.m0 || slot[1..=c].iter().any(|&x| x >= n) {
                return Err(self.file.corrupt(format!("node {i}: bad level-0 links")));
            }
            let lv = levels[i] as usize;
            if lv > self.max_level {
                return Err(self
                    .file
                    .corrupt(format!("node {i}: level {lv} above max {}", self.max_level)));
            }
            if lv > 0 {
                let off = upper[i] as usize;
                let end = off + lv * (self.m + 1);
                if upper[i] == u32::MAX || end > blocks.len() {
                    return Err(self
                        .file
                        .corrupt(format!("node {i}: upper block out of range")));
                }
                for l in 0..lv {
                    let b = &blocks[off + l * (self.m + 1)..off + (l + 1) * (self.m + 1)];
                    let c = b[0] as usize;
                    if c > self.m
                        || b[1..=c]
                            .iter()
                            .any(|&x| x >= n || levels[x as usize] as usize <= l)
                    {
                        return Err(self
                            .file
                            .corrupt(format!("node {i}: bad level-{} links", l + 1)));
                    }
                }
            }
        }
        if self.n > 0 && levels[self.entry as usize] as usize != self.max_level {
            return Err(self.file.corrupt("entry point is not on the top level"));
        }
        Ok(())
    }

    /// The links of node `i` at `level`. Counts and offsets are clamped to
    /// the file, so a graph opened without validation cannot make a search
    /// index out of bounds (link ids are checked by [`Hnsw::links`]).
    #[inline]
    fn neighbors(&self, i: u32, level: usize) -> &[u32] {
        if level == 0 {
            let s = &self.level0()[i as usize * (self.m0 + 1)..(i as usize + 1) * (self.m0 + 1)];
            &s[1..=(s[0] as usize).min(self.m0)]
        } else {
            let off =
                (self.upper_off()[i as usize] as usize).saturating_add((level - 1) * (self.m + 1));
            match self.blocks().get(off..off.saturating_add(self.m + 1)) {
                Some(b) => &b[1..=(b[0] as usize).min(self.m)],
                None => &[],
            }
        }
    }

    /// Appends the links of `i` at `level` that name a node of the graph.
    #[inline]
    fn links(&self, i: u32, level: usize, out: &mut Vec<u32>) {
        let n = self.n as u32;
        out.extend(self.neighbors(i, level).iter().copied().filter(|&x| x < n));
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes of the graph file's payload.
    pub fn bytes(&self) -> usize {
        self.file.payload().len()
    }

    /// The `k` nearest accepted nodes to `query` (algorithm 5), searching with a
    /// candidate list of `max(ef, k)`; `dist(i)` is the distance from the query to row `i`.
    pub fn search<S: Scorer + ?Sized>(
        &self,
        dist: &S,
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Vec<Neighbor> {
        if self.n == 0 || k == 0 {
            return Vec::new();
        }
        let mut cur = Cand(dist.distance(self.entry), self.entry);
        let mut scratch = Vec::with_capacity(self.m0);
        for l in (1..=self.max_level).rev() {
            cur = greedy(
                cur,
                dist,
                &mut |i: u32, out: &mut Vec<u32>| {
                    out.clear();
                    self.links(i, l, out);
                },
                &mut scratch,
            );
        }
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.reset(self.n);
            let mut nbrs = |i: u32, out: &mut Vec<u32>| self.links(i, 0, out);
            let mut scratch = Vec::with_capacity(self.m0);
            let level0 = self.level0();
            let stride = self.m0 + 1;
            let links = |i: u32| {
                let i = i as usize;
                crate::simd::prefetch(&level0[i * stride..(i + 1) * stride], 3);
            };
            let found = search_layer(
                dist,
                &mut nbrs,
                links,
                &[cur],
                ef.max(k),
                &mut visited,
                accept,
                &mut scratch,
            );
            found
                .into_iter()
                .take(k)
                .map(|c| Neighbor {
                    id: c.1,
                    distance: c.0,
                })
                .collect()
        })
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
