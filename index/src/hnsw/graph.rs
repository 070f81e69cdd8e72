//! The written graph, opened from disk and searched in place through the
//! memory map.

use std::path::Path;

use super::search::{greedy, search_layer, VISITED};
use super::{Cand, Neighbor};
use crate::error::Result;
use crate::format::{section, CheckedFile, Kind};
use crate::scorer::Scorer;

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
