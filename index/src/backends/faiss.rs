//! The FAISS backend (feature `faiss`): any index-factory string (`HNSW16`,
//! `IVF1024,PQ48`, `HNSW32,SQ8`, ...) built through the `faiss` crate, FAISS
//! compiled from source and linked statically.
//!
//! On disk a FAISS generation holds vecrec's own vector store (ids, and the
//! vectors the filter planner scans exactly), FAISS's own index file and a
//! checksummed manifest naming the factory string and the metric. The index
//! file is read with FAISS's real mmap flag, `IO_FLAG_MMAP_IFC` (`1 << 9`):
//! flat code arrays (the vectors of `HNSW*`/`Flat`, the codes of `SQ`/`PQ`
//! flat indexes) stay in the page cache instead of being read into memory.
//! (`faiss::index::io_flags::IoFlags::MEM_MAP` is `IO_FLAG_MMAP` = 1, which
//! only skips IVF data.)
//!
//! Cosine is inner product over unit vectors; distances are returned in
//! vecrec's convention (squared L2, `1 - cos`, `-dot`). The search beam is
//! `efSearch` for HNSW indexes and `nprobe` for IVF ones, both set from the
//! request's `ef`. A FAISS index object is not searched concurrently with a
//! parameter change, so one lock serialises searches of one opened index.
//!
//! With the `faiss-gpu` feature, [`FaissIndex::open_gpu`] also copies the
//! index to a GPU (`faiss_index_cpu_to_gpu`), which then answers unfiltered
//! searches; filtered ones stay on the CPU copy. The GPU copy is made again
//! when the requested beam changes (FAISS copies the parameters over).

use std::path::Path;

use faiss::index::autotune::ParameterSpace;
use faiss::index::io_flags::IoFlags;
use faiss::index::{IndexImpl, SearchWithParamsMut};
use faiss::selector::IdSelector;
use faiss::{Index as _, MetricType};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::ann::{Accept, AnnIndex};
use crate::error::{IndexError, Result};
use crate::format::{read_json, write_json};
use crate::hnsw::Neighbor;
use crate::index::{exact_is_cheaper, prepare_query};
use crate::store::{StoreBuilder, VectorStore};
use crate::Metric;

/// FAISS's flag for memory-mapping flat code arrays on read.
pub const IO_FLAG_MMAP_IFC: i32 = 1 << 9;
/// The FAISS index file of a generation.
pub const FAISS_FILE: &str = "faiss.index";
const MANIFEST: &str = "faiss.manifest";

/// Which FAISS index a generation holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaissManifest {
    /// The index-factory string.
    pub factory: String,
    /// vecrec's metric (FAISS sees L2 or inner product).
    pub metric: Metric,
    /// Vector dimension.
    pub dim: usize,
    /// Rows indexed.
    pub count: usize,
}

fn fail(e: impl std::fmt::Display) -> IndexError {
    IndexError::Faiss(e.to_string())
}

fn faiss_metric(metric: Metric) -> MetricType {
    match metric {
        Metric::L2 => MetricType::L2,
        Metric::Cosine | Metric::InnerProduct => MetricType::InnerProduct,
    }
}

/// Builds the FAISS index `factory` over the store's vectors (already unit
/// length under cosine) into `dir`, training it on all of them first when the
/// index needs training (FAISS's k-means samples at most 256 points per
/// centroid). Graph indexes (`HNSW` in the string, also as an IVF's coarse
/// quantiser) are built with `ef_construction` (FAISS's own default is 40).
/// FAISS parallelises with OpenMP (`OMP_NUM_THREADS`).
pub fn build(
    dir: &Path,
    store: &StoreBuilder,
    factory: &str,
    ef_construction: usize,
) -> Result<()> {
    let dim = store.dim();
    let metric = store.metric();
    store.write(dir)?;
    let mut index = faiss::index_factory(dim as u32, factory, faiss_metric(metric))
        .map_err(|e| fail(format!("index factory {factory:?}: {e}")))?;
    if factory.to_ascii_uppercase().contains("HNSW") {
        ParameterSpace::new()
            .and_then(|space| {
                space.set_index_parameter(&index, "efConstruction", ef_construction as f64)
            })
            .map_err(|e| fail(format!("setting efConstruction = {ef_construction}: {e}")))?;
    }
    let vectors = store.vectors();
    if !index.is_trained() {
        if store.is_empty() {
            return Err(IndexError::InvalidParameter {
                name: "factory",
                reason: format!("{factory:?} needs training data and the store is empty"),
            });
        }
        index
            .train(vectors)
            .map_err(|e| fail(format!("training {factory:?}: {e}")))?;
    }
    index.add(vectors).map_err(fail)?;
    let path = dir.join(FAISS_FILE);
    let path_str = path.to_str().ok_or_else(|| IndexError::InvalidParameter {
        name: "dir",
        reason: format!("{} is not UTF-8", dir.display()),
    })?;
    faiss::write_index(&index, path_str).map_err(fail)?;
    write_json(
        &dir.join(MANIFEST),
        &FaissManifest {
            factory: factory.to_owned(),
            metric,
            dim,
            count: store.len(),
        },
    )
}

struct Inner {
    index: IndexImpl,
    /// The beam the index is set to, so a parameter is set only on change.
    ef: usize,
    /// The GPU copy and the beam it was made with.
    #[cfg(feature = "faiss-gpu")]
    gpu: Option<(i32, usize, Option<gpu::GpuIndex>)>,
}

#[cfg(feature = "faiss-gpu")]
mod gpu {
    //! GPU copies. FAISS's GPU resources are not thread-safe, so every thread
    //! that makes a copy gets its own, kept for the life of the process
    //! (copies are made under the index's lock, searches likewise).

    use faiss::gpu::StandardGpuResources;
    use faiss::index::gpu::GpuIndexImpl;
    use faiss::index::IndexImpl;

    use super::fail;
    use crate::error::Result;

    pub(super) type GpuIndex = GpuIndexImpl<'static, IndexImpl>;

    thread_local! {
        static RESOURCES: std::cell::OnceCell<&'static StandardGpuResources> =
            const { std::cell::OnceCell::new() };
    }

    /// Copies `index` (with its current search parameters) to GPU `device`.
    pub(super) fn copy(index: &IndexImpl, device: i32) -> Result<GpuIndex> {
        let res = RESOURCES.with(|cell| {
            if let Some(r) = cell.get() {
                return Ok(*r);
            }
            let r: &'static StandardGpuResources =
                Box::leak(Box::new(StandardGpuResources::new().map_err(fail)?));
            let _ = cell.set(r);
            Ok::<_, crate::error::IndexError>(r)
        })?;
        index
            .to_gpu(res, device)
            .map_err(|e| fail(format!("copying the index to GPU {device}: {e}")))
    }
}

/// An opened FAISS generation.
pub struct FaissIndex {
    manifest: FaissManifest,
    store: VectorStore,
    inner: Mutex<Inner>,
    ivf: bool,
    hnsw: bool,
}

impl FaissIndex {
    /// Opens a generation written by [`build`], memory-mapping FAISS's flat codes.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest: FaissManifest = read_json(&dir.join(MANIFEST))?;
        let store = VectorStore::open(dir, true)?;
        let path = dir.join(FAISS_FILE);
        let path_str = path.to_str().ok_or_else(|| IndexError::InvalidParameter {
            name: "dir",
            reason: format!("{} is not UTF-8", dir.display()),
        })?;
        let index =
            faiss::index::io::read_index_with_flags(path_str, IoFlags::from(IO_FLAG_MMAP_IFC))
                .map_err(|e| IndexError::Corrupt {
                    path: path.clone(),
                    reason: format!("faiss could not read it: {e}"),
                })?;
        if index.ntotal() as usize != manifest.count
            || index.d() as usize != manifest.dim
            || store.len() != manifest.count
            || store.dim() != manifest.dim
        {
            return Err(IndexError::Corrupt {
                path,
                reason: format!(
                    "manifest says {} × {}, faiss index holds {} × {}, store {} × {}",
                    manifest.count,
                    manifest.dim,
                    index.ntotal(),
                    index.d(),
                    store.len(),
                    store.dim()
                ),
            });
        }
        let upper = manifest.factory.to_ascii_uppercase();
        let ivf = upper.contains("IVF");
        let hnsw = !ivf && upper.contains("HNSW");
        Ok(Self {
            manifest,
            store,
            inner: Mutex::new(Inner {
                index,
                ef: 0,
                #[cfg(feature = "faiss-gpu")]
                gpu: None,
            }),
            ivf,
            hnsw,
        })
    }

    /// Like [`FaissIndex::open`], and unfiltered searches run on a copy of
    /// the index on GPU `device` (made at the first search, and again when
    /// the beam changes). The index type must have a GPU implementation
    /// (`Flat`, `IVF*`; FAISS has no GPU HNSW).
    #[cfg(feature = "faiss-gpu")]
    pub fn open_gpu(dir: &Path, device: i32) -> Result<Self> {
        let index = Self::open(dir)?;
        index.inner.lock().gpu = Some((device, 0, None));
        Ok(index)
    }

    /// The manifest.
    pub fn manifest(&self) -> &FaissManifest {
        &self.manifest
    }

    /// vecrec's distance from FAISS's: squared L2 stays, an inner product
    /// becomes `1 - ip` (cosine) or `-ip`.
    fn distance(&self, faiss_distance: f32) -> f32 {
        match self.manifest.metric {
            Metric::L2 => faiss_distance,
            Metric::Cosine => 1.0 - faiss_distance,
            Metric::InnerProduct => -faiss_distance,
        }
    }

    fn set_beam(&self, inner: &mut Inner, ef: usize) -> Result<()> {
        if inner.ef == ef || !(self.ivf || self.hnsw) {
            return Ok(());
        }
        let space = ParameterSpace::new().map_err(fail)?;
        let name = if self.ivf { "nprobe" } else { "efSearch" };
        space
            .set_index_parameter(&inner.index, name, ef as f64)
            .map_err(|e| fail(format!("setting {name} = {ef}: {e}")))?;
        inner.ef = ef;
        Ok(())
    }
}

impl AnnIndex for FaissIndex {
    fn name(&self) -> &'static str {
        "faiss"
    }
    fn len(&self) -> usize {
        self.manifest.count
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<Accept<'_>>,
    ) -> Result<Vec<Neighbor>> {
        let q = prepare_query(query, self.manifest.dim, self.manifest.metric)?;
        let n = self.manifest.count;
        let k = k.min(n);
        if k == 0 {
            return Ok(Vec::new());
        }
        // The same planner as the own HNSW: brute force over the passing
        // rows of the store when that is cheaper than a filtered beam.
        if let Some(f) = accept {
            if exact_is_cheaper(n, 16, ef.max(k), f) {
                let f = move |i: u32| f(i);
                return Ok(crate::exact::search(
                    self.store.vectors(),
                    self.store.dim(),
                    self.store.metric(),
                    &q,
                    k,
                    Some(&f),
                ));
            }
        }
        let beam = if self.ivf { ef.max(1) } else { ef.max(k) };
        let mut inner = self.inner.lock();
        self.set_beam(&mut inner, beam)?;
        #[cfg(feature = "faiss-gpu")]
        if accept.is_none() {
            if let Some((device, _, _)) = inner.gpu {
                if !matches!(inner.gpu, Some((_, b, Some(_))) if b == beam) {
                    let copy = gpu::copy(&inner.index, device)?;
                    inner.gpu = Some((device, beam, Some(copy)));
                }
                if let Some((_, _, Some(g))) = inner.gpu.as_mut() {
                    let result = g.search(&q, k).map_err(fail)?;
                    drop(inner);
                    return Ok(self.neighbors(&result));
                }
            }
        }
        let result = match accept {
            None => inner.index.search(&q, k).map_err(fail)?,
            Some(f) => {
                // FAISS's bitmap selector keeps a pointer to the bits: they
                // live until the search returns.
                let mut bits = vec![0u8; n.div_ceil(8)];
                for i in 0..n {
                    if f(i as u32) {
                        bits[i >> 3] |= 1 << (i & 7);
                    }
                }
                let sel = IdSelector::bitmap(&bits).map_err(fail)?;
                let result = if self.ivf {
                    let params = faiss::search_params::SearchParametersIVF::new_with(sel, beam, 0)
                        .map_err(fail)?
                        .upcast();
                    inner.index.search_with_params(&q, k, &params)
                } else {
                    let params = faiss::search_params::SearchParameters::new(sel).map_err(fail)?;
                    inner.index.search_with_params(&q, k, &params)
                };
                let result = result.map_err(fail)?;
                drop(bits);
                result
            }
        };
        drop(inner);
        Ok(self.neighbors(&result))
    }
}

impl FaissIndex {
    fn neighbors(&self, result: &faiss::index::SearchResult) -> Vec<Neighbor> {
        result
            .labels
            .iter()
            .zip(&result.distances)
            .filter_map(|(label, &d)| {
                label.get().map(|id: u64| Neighbor {
                    id: id as u32,
                    distance: self.distance(d),
                })
            })
            .collect()
    }
}
