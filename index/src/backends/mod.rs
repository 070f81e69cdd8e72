//! One interface over the ANN implementations that the conformance suite and
//! `vecrec-ann-bench` compare: vecrec's own HNSW ([`crate::hnsw`], through
//! [`Index`] and its filter planner), brute force ([`crate::exact`]) and, with
//! the `hnsw_rs` feature, the `hnsw_rs` crate (kept as a comparison: it
//! measured 3.5–7× slower than hnswlib here) and, with the `faiss` feature,
//! any FAISS index-factory string ([`faiss`]).
//!
//! Every backend is built into a directory and reopened from it, so reload is
//! part of what is compared. Ids are row numbers of the input vectors.

use std::path::Path;

use crate::error::{IndexError, Result};
use crate::hnsw::{HnswParams, Neighbor};
use crate::index::{write_index, Index, SearchParams};
use crate::store::{ItemMeta, StoreBuilder, VectorStore};
use crate::Metric;

mod ann;
#[cfg(any(feature = "faiss", feature = "faiss-gpu"))]
pub mod faiss;

pub use ann::{Accept, AnnIndex};

/// The backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// vecrec's own HNSW with its filter planner.
    Hnsw,
    /// The same graph searched on int8 codes, 3× oversampled and rescored
    /// exactly from the memory-mapped f32 rows.
    HnswInt8,
    /// The same graph searched on int8 codes alone: answers ranked by the
    /// codes' distances, no f32 row read, so only the codes and the graph
    /// are in memory.
    HnswInt8Codes,
    /// The same graph searched on f16 copies of the vectors, the best `k`
    /// rescored exactly.
    HnswF16,
    /// Brute force over the memory-mapped store.
    Exact,
    /// The `hnsw_rs` crate (feature `hnsw_rs`).
    HnswRs,
    /// FAISS with this index-factory string (feature `faiss`).
    Faiss(String),
    /// The same, unfiltered searches on a copy on GPU 0 (feature `faiss-gpu`).
    FaissGpu(String),
}

impl Backend {
    /// Parses `hnsw`, `hnsw-int8`, `exact`, `hnsw_rs` or `faiss:<factory>`
    /// (e.g. `faiss:HNSW16`, `faiss:IVF1024,PQ48`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hnsw" => Some(Self::Hnsw),
            "hnsw-int8" => Some(Self::HnswInt8),
            "hnsw-int8-codes" => Some(Self::HnswInt8Codes),
            "hnsw-f16" => Some(Self::HnswF16),
            "exact" => Some(Self::Exact),
            "hnsw_rs" => Some(Self::HnswRs),
            _ => {
                let (gpu, factory) = match s.strip_prefix("faiss-gpu:") {
                    Some(f) => (true, f),
                    None => (false, s.strip_prefix("faiss:")?),
                };
                let factory = factory.trim().to_owned();
                if factory.is_empty() {
                    None
                } else if gpu {
                    Some(Self::FaissGpu(factory))
                } else {
                    Some(Self::Faiss(factory))
                }
            }
        }
    }

    /// Stable name (`faiss:<factory>` for FAISS).
    pub fn name(&self) -> String {
        match self {
            Self::Hnsw => "hnsw".into(),
            Self::HnswInt8 => "hnsw-int8".into(),
            Self::HnswInt8Codes => "hnsw-int8-codes".into(),
            Self::HnswF16 => "hnsw-f16".into(),
            Self::Exact => "exact".into(),
            Self::HnswRs => "hnsw_rs".into(),
            Self::Faiss(f) => format!("faiss:{f}"),
            Self::FaissGpu(f) => format!("faiss-gpu:{f}"),
        }
    }

    /// The cargo feature the backend needs, if any.
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            Self::HnswRs => Some("hnsw_rs"),
            Self::Faiss(_) => Some("faiss"),
            Self::FaissGpu(_) => Some("faiss-gpu"),
            _ => None,
        }
    }

    /// Whether this build includes the backend.
    pub fn available(&self) -> bool {
        let hnsw_rs = cfg!(feature = "hnsw_rs");
        let faiss = cfg!(any(feature = "faiss", feature = "faiss-gpu"));
        let faiss_gpu = cfg!(feature = "faiss-gpu");
        match self {
            Self::HnswRs => hnsw_rs,
            Self::Faiss(_) => faiss,
            Self::FaissGpu(_) => faiss_gpu,
            _ => true,
        }
    }

    /// The backends this build includes; FAISS as a graph (`HNSW16`) and as
    /// an inverted file (`IVF64,Flat`).
    pub fn all_available() -> Vec<Self> {
        [
            Self::Hnsw,
            Self::HnswInt8,
            Self::HnswInt8Codes,
            Self::HnswF16,
            Self::Exact,
            Self::HnswRs,
            Self::Faiss("HNSW16".into()),
            Self::Faiss("IVF64,Flat".into()),
        ]
        .into_iter()
        .filter(|b| b.available())
        .collect()
    }
}

fn store_of(vectors: &[f32], dim: usize, metric: Metric) -> Result<StoreBuilder> {
    let mut sb = StoreBuilder::new(dim, metric)?;
    for (i, v) in vectors.chunks_exact(dim).enumerate() {
        sb.add(&i.to_string(), v, ItemMeta::default())?;
    }
    Ok(sb)
}

/// Builds `backend` over `vectors` (`n × dim`, row-major) into the existing
/// empty directory `dir`, with the rayon threads of the caller's pool.
pub fn build(
    backend: &Backend,
    dir: &Path,
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: &HnswParams,
) -> Result<()> {
    let sb = store_of(vectors, dim, metric)?;
    match backend {
        Backend::Hnsw => {
            write_index(dir, &sb, params, serde_json::Value::Null, &|_| {})?;
        }
        Backend::HnswInt8 | Backend::HnswInt8Codes | Backend::HnswF16 => {
            let params = HnswParams {
                quantize: true,
                codes: if *backend == Backend::HnswF16 {
                    crate::quant::CodeKind::F16
                } else {
                    crate::quant::CodeKind::Int8
                },
                ..*params
            };
            write_index(dir, &sb, &params, serde_json::Value::Null, &|_| {})?;
        }
        Backend::Exact => sb.write(dir)?,
        Backend::HnswRs => {
            sb.write(dir)?;
            hnsw_rs_backend::build(dir, sb.vectors(), dim, metric, params)?;
        }
        Backend::Faiss(factory) | Backend::FaissGpu(factory) => {
            faiss_build(dir, &sb, factory, params.ef_construction)?
        }
    }
    Ok(())
}

#[cfg(any(feature = "faiss", feature = "faiss-gpu"))]
fn faiss_build(dir: &Path, sb: &StoreBuilder, factory: &str, efc: usize) -> Result<()> {
    faiss::build(dir, sb, factory, efc)
}

#[cfg(any(feature = "faiss", feature = "faiss-gpu"))]
fn faiss_open(dir: &Path) -> Result<Box<dyn AnnIndex>> {
    Ok(Box::new(faiss::FaissIndex::open(dir)?))
}

#[cfg(feature = "faiss-gpu")]
fn faiss_open_gpu(dir: &Path) -> Result<Box<dyn AnnIndex>> {
    Ok(Box::new(faiss::FaissIndex::open_gpu(dir, 0)?))
}

#[cfg(not(feature = "faiss-gpu"))]
fn faiss_open_gpu(_: &Path) -> Result<Box<dyn AnnIndex>> {
    Err(IndexError::InvalidParameter {
        name: "backend",
        reason: "faiss-gpu is not in this build; rebuild with `--features faiss-gpu`".into(),
    })
}

#[cfg(not(any(feature = "faiss", feature = "faiss-gpu")))]
fn faiss_missing() -> IndexError {
    IndexError::InvalidParameter {
        name: "backend",
        reason: "faiss is not in this build; rebuild with `--features faiss`".into(),
    }
}

#[cfg(not(any(feature = "faiss", feature = "faiss-gpu")))]
fn faiss_build(_: &Path, _: &StoreBuilder, _: &str, _: usize) -> Result<()> {
    Err(faiss_missing())
}

#[cfg(not(any(feature = "faiss", feature = "faiss-gpu")))]
fn faiss_open(_: &Path) -> Result<Box<dyn AnnIndex>> {
    Err(faiss_missing())
}

/// Reopens a backend built by [`build`].
pub fn open(backend: &Backend, dir: &Path) -> Result<Box<dyn AnnIndex>> {
    Ok(match backend {
        // Opened lazily, as a server opens it: the first answer does not
        // wait for the full read of the background verification.
        Backend::Hnsw => Box::new(OwnHnsw(Index::open_lazy(dir)?, None, "hnsw")),
        // The rescored rows are read through the memory map, as the server
        // reads them: positioned reads cost a syscall per row (half the
        // queries/s at ef 10 on bigann10k) and leave the same pages in the
        // page cache, which the benchmark's `resident_mb` counts.
        Backend::HnswInt8 => Box::new(OwnHnsw(
            Index::open_lazy(dir)?,
            Some(OVERSAMPLE),
            "hnsw-int8",
        )),
        // Oversampling 0: no rescoring, the f32 rows are never read.
        Backend::HnswInt8Codes => {
            Box::new(OwnHnsw(Index::open_lazy(dir)?, Some(0), "hnsw-int8-codes"))
        }
        Backend::HnswF16 => Box::new(OwnHnsw(Index::open_lazy(dir)?, Some(1), "hnsw-f16")),
        Backend::Exact => Box::new(Exact(VectorStore::open(dir, true)?)),
        Backend::HnswRs => hnsw_rs_backend::open(dir)?,
        Backend::Faiss(_) => faiss_open(dir)?,
        Backend::FaissGpu(_) => faiss_open_gpu(dir)?,
    })
}

pub use crate::quant::OVERSAMPLE;

/// The own graph; with an oversampling factor, searched on its codes.
struct OwnHnsw(Index, Option<usize>, &'static str);

impl AnnIndex for OwnHnsw {
    fn name(&self) -> &'static str {
        self.2
    }
    fn len(&self) -> usize {
        self.0.store().len()
    }
    fn settle(&self) -> Result<()> {
        self.0.wait_verified()
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<Accept<'_>>,
    ) -> Result<Vec<Neighbor>> {
        let accept = accept.map(|f| move |i: u32| f(i));
        let params = SearchParams {
            k,
            ef,
            exact: false,
        };
        let accept = accept.as_ref().map(|f| f as &dyn Fn(u32) -> bool);
        Ok(if let Some(oversample) = self.1 {
            self.0
                .search_quantized(query, &params, oversample, accept)?
                .0
        } else {
            self.0.search(query, &params, accept)?.0
        })
    }
}

struct Exact(VectorStore);

impl AnnIndex for Exact {
    fn name(&self) -> &'static str {
        "exact"
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        _ef: usize,
        accept: Option<Accept<'_>>,
    ) -> Result<Vec<Neighbor>> {
        let s = &self.0;
        if query.len() != s.dim() {
            return Err(IndexError::DimensionMismatch {
                expected: s.dim(),
                got: query.len(),
            });
        }
        let mut q = query.to_vec();
        if s.metric() == Metric::Cosine {
            crate::distance::normalize(&mut q);
        }
        let accept = accept.map(|f| move |i: u32| f(i));
        Ok(crate::exact::search(
            s.vectors(),
            s.dim(),
            s.metric(),
            &q,
            k,
            accept.as_ref().map(|f| f as &dyn Fn(u32) -> bool),
        ))
    }
}

#[cfg(feature = "hnsw_rs")]
mod hnsw_rs_backend;

#[cfg(not(feature = "hnsw_rs"))]
mod hnsw_rs_backend {
    use std::path::Path;

    use super::ann::AnnIndex;
    use crate::error::{IndexError, Result};
    use crate::hnsw::HnswParams;
    use crate::Metric;

    fn missing() -> IndexError {
        IndexError::InvalidParameter {
            name: "backend",
            reason: "hnsw_rs is not in this build; rebuild with `--features hnsw_rs`".into(),
        }
    }

    pub(super) fn build(_: &Path, _: &[f32], _: usize, _: Metric, _: &HnswParams) -> Result<()> {
        Err(missing())
    }

    pub(super) fn open(_: &Path) -> Result<Box<dyn AnnIndex>> {
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn names_parse_back() {
        for b in [
            Backend::Hnsw,
            Backend::HnswInt8,
            Backend::HnswInt8Codes,
            Backend::HnswF16,
            Backend::Exact,
            Backend::HnswRs,
            Backend::Faiss("IVF1024,PQ48".into()),
            Backend::FaissGpu("IVF256,Flat".into()),
        ] {
            assert_eq!(Backend::parse(&b.name()), Some(b));
        }
        assert_eq!(Backend::parse("faiss:"), None);
        assert_eq!(Backend::parse("faiss-gpu: "), None);
        assert_eq!(Backend::parse("annoy"), None);
        assert_eq!(Backend::Faiss("HNSW16".into()).feature(), Some("faiss"));
    }

    /// The codes-only walk answers from the codes: with a beam wider than
    /// the store it returns exactly the best `k` by code distance, with
    /// those distances, while the rescoring walk returns f32 distances.
    #[test]
    fn the_codes_only_walk_ranks_by_code_distances() {
        use rand::{Rng, SeedableRng};

        use crate::hnsw::HnswParams;
        use crate::quant::{encode, Codes};
        use crate::Metric;

        let (n, dim, k) = (300usize, 24usize, 10usize);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let v: Vec<f32> = (0..n * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let params = HnswParams {
            m: 8,
            ef_construction: 64,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let (codes_dir, rescored_dir) = (dir.path().join("codes"), dir.path().join("rescored"));
        for (b, d) in [
            (Backend::HnswInt8Codes, &codes_dir),
            (Backend::HnswInt8, &rescored_dir),
        ] {
            std::fs::create_dir_all(d).unwrap();
            super::build(&b, d, &v, dim, Metric::L2, &params).unwrap();
        }
        let codes_only = super::open(&Backend::HnswInt8Codes, &codes_dir).unwrap();
        let rescored = super::open(&Backend::HnswInt8, &rescored_dir).unwrap();
        let codes = Codes::open(&codes_dir, n, dim, true).unwrap().unwrap();
        let mut qc = Vec::new();
        let mut differ = 0;
        for qi in 0..20 {
            let q: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            encode(&q, codes.scale(), &mut qc);
            let mut by_code: Vec<(f32, u32)> = (0..n as u32)
                .map(|i| (codes.distance(Metric::L2, &qc, i), i))
                .collect();
            by_code.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let got = codes_only.search(&q, k, 2 * n, None).unwrap();
            let got_d: Vec<f32> = got.iter().map(|x| x.distance).collect();
            let want_d: Vec<f32> = by_code[..k].iter().map(|x| x.0).collect();
            assert_eq!(got_d, want_d, "query {qi}");
            for x in &got {
                assert_eq!(x.distance, codes.distance(Metric::L2, &qc, x.id));
            }
            let exact = rescored.search(&q, k, 2 * n, None).unwrap();
            let row = |i: u32| &v[i as usize * dim..(i as usize + 1) * dim];
            for x in &exact {
                assert!((x.distance - Metric::L2.distance(&q, row(x.id))).abs() < 1e-4);
            }
            differ += got
                .iter()
                .zip(&exact)
                .filter(|(a, b)| a.distance != b.distance)
                .count();
        }
        assert!(differ > 0, "code distances never differed from exact ones");
    }
}
