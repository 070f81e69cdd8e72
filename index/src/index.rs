//! One opened generation: the store, its HNSW graph and the search planner.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};

use crate::distance::{normalize, Metric};
use crate::error::{IndexError, Result};
use crate::exact;
use crate::format::{read_json, write_json, FORMAT_VERSION};
use crate::generation::current_generation;
use crate::hnsw::{self, Hnsw, HnswParams, Neighbor};
use crate::rows::RowSet;
use crate::scorer::{prefetch_lines, RowScorer};
use crate::store::{StoreBuilder, VectorStore};

/// File name of the generation manifest.
pub const MANIFEST_FILE: &str = "manifest.bin";
/// File name of the HNSW graph.
pub const HNSW_FILE: &str = "hnsw.bin";

/// What a generation holds, written last by a build.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Envelope format version of the files.
    pub format_version: u32,
    /// Seconds since the Unix epoch when the build finished.
    pub created_unix: u64,
    /// Vector dimension.
    pub dim: usize,
    /// Number of items.
    pub count: usize,
    /// Metric.
    pub metric: Metric,
    /// HNSW build parameters.
    pub hnsw: HnswParams,
    /// Seconds the graph build took.
    pub hnsw_build_seconds: f64,
    /// Free-form facts from the layer above (encoder model, user counts, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// How to search.
#[derive(Clone, Copy, Debug)]
pub struct SearchParams {
    /// Number of results.
    pub k: usize,
    /// HNSW candidate list size (raised to `k` when smaller).
    pub ef: usize,
    /// Force exact search.
    pub exact: bool,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self {
            k: 10,
            ef: 64,
            exact: false,
        }
    }
}

/// How a filtered search was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Graph search, filtering while traversing.
    Hnsw,
    /// Brute force over the rows that pass the filter.
    Exact,
}

/// Writes store, graph and manifest of a new generation into `dir`.
pub fn write_index(
    dir: &Path,
    store: &StoreBuilder,
    params: &HnswParams,
    extra: serde_json::Value,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Manifest> {
    store.write(dir)?;
    let t = std::time::Instant::now();
    hnsw::build(
        store.vectors(),
        store.dim(),
        store.metric(),
        params,
        &dir.join(HNSW_FILE),
        progress,
    )?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        dim: store.dim(),
        count: store.len(),
        metric: store.metric(),
        hnsw: *params,
        hnsw_build_seconds: t.elapsed().as_secs_f64(),
        extra,
    };
    if params.quantize {
        crate::quant::write(dir, store.vectors(), store.dim(), params.codes)?;
    }
    write_json(&dir.join(MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

/// What an open checks, and keeps of its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Every file whole, keeping the id and attribute tables built.
    Keep,
    /// Every file whole, keeping no table (a check in the background, an
    /// index read by row number).
    Only,
    /// Headers and sizes now; the rest is checked by another open.
    Later,
}

/// An opened, read-only generation.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    store: VectorStore,
    hnsw: Hnsw,
    codes: Option<crate::quant::Codes>,
    /// What the background verification of a lazy open found wrong.
    damage: Arc<OnceLock<String>>,
    verification: Mutex<Verification>,
}

/// Where an index's full check stands.
#[derive(Debug)]
enum Verification {
    /// Not started ([`Index::open_unverified`]).
    Pending,
    /// Running in the background.
    Running(std::thread::JoinHandle<()>),
    /// Done: at open, or waited for.
    Done,
}

impl Index {
    /// Opens the live generation of an index root.
    pub fn open_current(root: &Path) -> Result<Self> {
        Self::open(&current_generation(root)?)
    }

    /// Opens a generation directory, checking every file's envelope and
    /// checksum, every graph link and every attribute record (a full read).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Check::Keep)
    }

    /// [`Index::open`] for an index read by row number only (a learned
    /// source's item table, which nobody looks up by id or filters): every
    /// file is checked as by `open`, but no id or attribute table is kept
    /// ([`VectorStore::open_checked_rows`]).
    pub fn open_rows(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Check::Only)
    }

    /// Opens a generation for serving without reading it whole: headers,
    /// sizes and the manifest are checked now, the vectors, graph and codes
    /// stay on disk until searches touch them. A background thread then runs
    /// the full check of [`Index::open`] on the same directory (reading with
    /// plain reads, so it leaves nothing resident); if it finds damage, every
    /// later search of this index fails with the error it found
    /// ([`IndexError::is_data_loss`]). Searches stay in bounds meanwhile.
    pub fn open_lazy(dir: &Path) -> Result<Self> {
        let index = Self::open_unverified(dir)?;
        index.start_verification()?;
        Ok(index)
    }

    /// The first half of [`Index::open_lazy`]: headers, sizes and the
    /// manifest checked, nothing more until [`Index::start_verification`]
    /// (so a caller that opens several indexes starts no check before all
    /// of them opened, and none is left running for an open that failed).
    pub fn open_unverified(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Check::Later)
    }

    /// Starts the background check of an index opened by
    /// [`Index::open_unverified`] (nothing once one was started or run, or
    /// if the open checked everything). A check that panics counts as
    /// damage.
    pub fn start_verification(&self) -> Result<()> {
        let mut state = self.verification.lock();
        if !matches!(*state, Verification::Pending) {
            return Ok(());
        }
        let (damage, dir) = (self.damage.clone(), self.dir.clone());
        let handle = std::thread::Builder::new()
            .name("vecrec-verify".into())
            .spawn(move || Self::run_check(&dir, &damage))
            .map_err(|e| IndexError::io(self.dir.clone(), e))?;
        *state = Verification::Running(handle);
        Ok(())
    }

    /// The full check of the generation in `dir`, its damage kept in
    /// `damage` (a panic counts as damage).
    fn run_check(dir: &Path, damage: &OnceLock<String>) {
        match std::panic::catch_unwind(|| Self::open_with(dir, Check::Only)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = damage.set(e.to_string());
            }
            Err(_) => {
                let _ = damage.set("the check stopped on a panic".into());
            }
        }
    }

    /// Waits for the full check of this index and returns what it found:
    /// the background check [`Index::open_lazy`] started, or, for an index
    /// opened by [`Index::open_unverified`] whose check was not started,
    /// the check run here; at once after [`Index::open`].
    pub fn wait_verified(&self) -> Result<()> {
        let mut state = self.verification.lock();
        match std::mem::replace(&mut *state, Verification::Done) {
            Verification::Pending => Self::run_check(&self.dir, &self.damage),
            Verification::Running(h) => {
                if h.join().is_err() {
                    let _ = self.damage.set("the check stopped on a panic".into());
                }
            }
            Verification::Done => {}
        }
        drop(state);
        self.check_damage()
    }

    /// Re-reads every file of this generation and checks its checksum
    /// ([`crate::generation::scrub`]); damage found is kept, and every later
    /// search of this index fails with it ([`IndexError::is_data_loss`]).
    /// Returns the number of files checked.
    pub fn scrub(&self) -> Result<usize> {
        self.check_damage()?;
        match crate::generation::scrub(&self.dir) {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = self.damage.set(e.to_string());
                self.check_damage().map(|()| 0)
            }
        }
    }

    /// The damage a verification or scrub of this index found, as the error
    /// every search now returns; `Ok` if none.
    pub fn check_damage(&self) -> Result<()> {
        match self.damage.get() {
            None => Ok(()),
            Some(reason) => Err(IndexError::Corrupt {
                path: self.dir.clone(),
                reason: format!("verification failed: {reason}"),
            }),
        }
    }

    fn open_with(dir: &Path, check: Check) -> Result<Self> {
        let manifest: Manifest = read_json(&dir.join(MANIFEST_FILE))?;
        let verify = check != Check::Later;
        let store = match check {
            Check::Only => VectorStore::open_checked_rows(dir)?,
            _ => VectorStore::open(dir, verify)?,
        };
        if store.dim() != manifest.dim
            || store.len() != manifest.count
            || store.metric() != manifest.metric
        {
            return Err(IndexError::Corrupt {
                path: dir.to_owned(),
                reason: format!(
                    "manifest says {} × {} ({:?}), store holds {} × {} ({:?})",
                    manifest.count,
                    manifest.dim,
                    manifest.metric,
                    store.len(),
                    store.dim(),
                    store.metric()
                ),
            });
        }
        let hnsw = Hnsw::open(&dir.join(HNSW_FILE), store.len(), verify)?;
        let codes = crate::quant::Codes::open(dir, store.len(), store.dim(), verify)?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            store,
            hnsw,
            codes,
            damage: Arc::new(OnceLock::new()),
            verification: Mutex::new(if verify {
                Verification::Done
            } else {
                Verification::Pending
            }),
        })
    }

    /// Whether the generation holds int8 codes for [`Index::search_quantized`].
    pub fn has_codes(&self) -> bool {
        self.codes.is_some()
    }

    /// Graph search on the int8 codes with a beam of `max(ef, k)`; the best
    /// `min(oversample·k, beam)` candidates are rescored with the exact f32
    /// distances and the best `k` returned. Filters follow the planner of
    /// [`Index::search`]; its exact plan scans the passing rows' codes and
    /// rescores the best `oversample·k`. `oversample` 0 rescores nothing: the
    /// answer is ranked by the codes' distances and no f32 row is read, so
    /// only the codes and the graph need to be in memory. `params.exact`
    /// searches the f32 vectors exactly; so does an index without codes.
    pub fn search_quantized(
        &self,
        query: &[f32],
        params: &SearchParams,
        oversample: usize,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<(Vec<Neighbor>, Plan)> {
        self.check_damage()?;
        let Some(codes) = &self.codes else {
            return self.search(query, params, accept);
        };
        if params.exact {
            return self.search(query, params, accept);
        }
        let q = self.prepare_query(query)?;
        let mut qc = Vec::with_capacity(q.len());
        if codes.kind() == crate::quant::CodeKind::Int8 {
            crate::quant::encode(&q, codes.scale(), &mut qc);
        }
        let metric = self.store.metric();
        let dist = crate::scorer::CodeScorer::new(codes, metric, &qc, &q);
        let wide = params.k * oversample.max(1);
        let finish = |found: Vec<Neighbor>| {
            if oversample == 0 {
                Ok(found)
            } else {
                self.rescore(&q, found, params.k)
            }
        };
        if let Some(f) = accept.filter(|f| self.exact_is_cheaper(f, params)) {
            // The exact plan on the codes: every passing row scored on its
            // int8 codes (a quarter of the bytes of its vector), the best
            // `oversample·k` rescored exactly.
            let n = self.store.len() as u32;
            let found = exact::scan(wide, (0..n).filter(|&i| f(i)), &dist);
            return Ok((finish(found)?, Plan::Exact));
        }
        let beam = params.ef.max(params.k);
        let found = self.hnsw.search(&dist, wide.min(beam), beam, accept);
        Ok((finish(found)?, Plan::Hnsw))
    }

    /// Replaces approximate distances by exact ones (prefetching the rows
    /// first) and keeps the best `k`.
    fn rescore(&self, q: &[f32], mut found: Vec<Neighbor>, k: usize) -> Result<Vec<Neighbor>> {
        let metric = self.store.metric();
        let lines = prefetch_lines(q.len() * 4);
        for n in &found {
            crate::simd::prefetch(self.store.vector(n.id), lines);
        }
        for n in &mut found {
            n.distance = metric.distance(q, self.store.vector(n.id));
        }
        found.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        found.truncate(k);
        Ok(found)
    }

    fn exact_is_cheaper(&self, f: &dyn Fn(u32) -> bool, params: &SearchParams) -> bool {
        exact_is_cheaper(
            self.store.len(),
            self.manifest.hnsw.m,
            params.ef.max(params.k),
            f,
        )
    }

    /// The generation directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The vector store.
    pub fn store(&self) -> &VectorStore {
        &self.store
    }

    /// The graph.
    pub fn hnsw(&self) -> &Hnsw {
        &self.hnsw
    }

    /// Checks a query's dimension and values; normalises it under the cosine metric.
    pub fn prepare_query(&self, query: &[f32]) -> Result<Vec<f32>> {
        prepare_query(query, self.store.dim(), self.store.metric())
    }

    /// The `k` nearest items that `accept` allows. With a filter, the planner
    /// estimates the `p` rows that pass and searches them exactly when that is
    /// cheaper than the graph: a filtered beam of `ef` visits about
    /// `ef·2M / (p/n)` nodes (it traverses rejected ones too), brute force
    /// `p`, so the plan is exact when `p² ≤ 2·ef·M·n` (or `p ≤ 4·ef`). Graph
    /// search under a very selective filter also misses results. On
    /// bigann10k this picks brute force at 1% and 10% selectivity and the
    /// graph at 50%.
    pub fn search(
        &self,
        query: &[f32],
        params: &SearchParams,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<(Vec<Neighbor>, Plan)> {
        self.check_damage()?;
        let q = self.prepare_query(query)?;
        let (vectors, dim, metric) = (self.store.vectors(), self.store.dim(), self.store.metric());
        let exact_plan = params.exact || accept.is_some_and(|f| self.exact_is_cheaper(f, params));
        if exact_plan {
            let found = match self.store.row_codes() {
                Some(codes) => {
                    exact::search_bounded(vectors, codes, metric, &q, params.k, accept).0
                }
                None => exact::search(vectors, dim, metric, &q, params.k, accept),
            };
            return Ok((found, Plan::Exact));
        }
        let dist = RowScorer::new(&q, vectors, dim, metric);
        Ok((
            self.hnsw.search(&dist, params.k, params.ef, accept),
            Plan::Hnsw,
        ))
    }
}

impl Index {
    /// [`Index::search`] among the rows in `rows` only, with the same
    /// answer as `search` given an `accept` that allows exactly them (the
    /// planner asks the set the same sample of rows), but an exact plan
    /// scans the set's rows without a call a row. Rows at or past the
    /// store's end are never answered.
    pub fn search_in(
        &self,
        query: &[f32],
        params: &SearchParams,
        rows: &RowSet,
    ) -> Result<(Vec<Neighbor>, Plan)> {
        self.check_damage()?;
        let q = self.prepare_query(query)?;
        let (vectors, dim, metric) = (self.store.vectors(), self.store.dim(), self.store.metric());
        let n = self.store.len() as u32;
        let accept = |i: u32| i < n && rows.contains(i);
        if params.exact || self.exact_is_cheaper(&accept, params) {
            let ids = rows.iter().take_while(|&i| i < n);
            let found = match self.store.row_codes() {
                Some(codes) => {
                    exact::search_bounded_in(vectors, codes, metric, &q, params.k, ids).0
                }
                None => exact::scan(params.k, ids, &RowScorer::new(&q, vectors, dim, metric)),
            };
            return Ok((found, Plan::Exact));
        }
        let dist = RowScorer::new(&q, vectors, dim, metric);
        Ok((
            self.hnsw.search(&dist, params.k, params.ef, Some(&accept)),
            Plan::Hnsw,
        ))
    }
}

/// Checks a query against an index of `dim` dimensions (length, finite
/// values) and normalises it under the cosine metric.
pub fn prepare_query(query: &[f32], dim: usize, metric: Metric) -> Result<Vec<f32>> {
    if query.len() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: query.len(),
        });
    }
    if query.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::InvalidVector {
            id: "query".into(),
            reason: "contains NaN or infinity",
        });
    }
    let mut q = query.to_vec();
    if metric == Metric::Cosine && !normalize(&mut q) {
        return Err(IndexError::InvalidVector {
            id: "query".into(),
            reason: "zero vector cannot be normalised for the cosine metric",
        });
    }
    Ok(q)
}

/// The filter planner's rule, shared by every graph backend: whether brute
/// force over the rows of `n` that pass `f` is cheaper than a filtered beam of
/// `ef` over a graph of `m` links per node (see [`Index::search`]).
///
/// The passing count is estimated from at most 2,048 evenly spaced rows:
/// counting them all would cost as much as the brute force it decides about.
/// Both plans return only rows that pass; the estimate only chooses which one.
pub fn exact_is_cheaper(n: usize, m: usize, ef: usize, f: &dyn Fn(u32) -> bool) -> bool {
    if n == 0 {
        return true;
    }
    let sample = n.clamp(1, 2048);
    let hits = (0..sample)
        .filter(|&j| f((j as u64 * n as u64 / sample as u64) as u32))
        .count() as u64;
    let passing = hits * n as u64 / sample as u64;
    let (ef, m) = (ef as u64, m as u64);
    passing <= 4 * ef || passing * passing <= 2 * ef * m * n as u64
}
