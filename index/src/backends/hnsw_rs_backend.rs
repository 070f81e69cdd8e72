//! `hnsw_rs` 0.3.5. Its reload maps only the vector data, not the graph,
//! and a reloaded `Hnsw` borrows its `HnswIo`; the loader is leaked so the
//! index can live as long as the process (acceptable for a comparison
//! backend that is opened once per run).

use std::path::Path;

use hnsw_rs::anndists::dist::{DistDot, DistL2};
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

use super::ann::{Accept, AnnIndex};
use crate::error::{IndexError, Result};
use crate::hnsw::{HnswParams, Neighbor};
use crate::Metric;

const BASENAME: &str = "hnsw_rs";

fn fail(dir: &Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt {
        path: dir.to_owned(),
        reason: format!("hnsw_rs: {e}"),
    }
}

enum Inner {
    L2(Hnsw<'static, f32, DistL2>),
    Dot(Hnsw<'static, f32, DistDot>),
}

pub(super) fn build(
    dir: &Path,
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: &HnswParams,
) -> Result<()> {
    let n = vectors.len() / dim;
    let data: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..).collect();
    let layers = 16;
    match metric {
        Metric::L2 => {
            let h = Hnsw::<f32, DistL2>::new(params.m, n, layers, params.ef_construction, DistL2);
            h.parallel_insert_slice(&data);
            h.file_dump(dir, BASENAME).map_err(|e| fail(dir, e))?;
        }
        // The store holds unit vectors under the cosine metric.
        Metric::Cosine => {
            let h = Hnsw::<f32, DistDot>::new(params.m, n, layers, params.ef_construction, DistDot);
            h.parallel_insert_slice(&data);
            h.file_dump(dir, BASENAME).map_err(|e| fail(dir, e))?;
        }
        Metric::InnerProduct => {
            return Err(IndexError::InvalidParameter {
                name: "metric",
                reason: "the hnsw_rs backend supports l2 and cosine".into(),
            })
        }
    }
    let name = if metric == Metric::L2 { "l2" } else { "cosine" };
    std::fs::write(dir.join("hnsw_rs.metric"), name).map_err(|e| IndexError::io(dir, e))
}

struct HnswRs {
    inner: Inner,
    metric: Metric,
    n: usize,
}

pub(super) fn open(dir: &Path) -> Result<Box<dyn AnnIndex>> {
    let metric_name = std::fs::read_to_string(dir.join("hnsw_rs.metric"))
        .map_err(|e| IndexError::io(dir.join("hnsw_rs.metric"), e))?;
    let metric = Metric::parse(metric_name.trim()).ok_or_else(|| fail(dir, "unknown metric"))?;
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
    let inner = match metric {
        Metric::L2 => Inner::L2(io.load_hnsw::<f32, DistL2>().map_err(|e| fail(dir, e))?),
        _ => Inner::Dot(io.load_hnsw::<f32, DistDot>().map_err(|e| fail(dir, e))?),
    };
    let n = match &inner {
        Inner::L2(h) => h.get_nb_point(),
        Inner::Dot(h) => h.get_nb_point(),
    };
    Ok(Box::new(HnswRs { inner, metric, n }))
}

impl AnnIndex for HnswRs {
    fn name(&self) -> &'static str {
        "hnsw_rs"
    }
    fn len(&self) -> usize {
        self.n
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<Accept<'_>>,
    ) -> Result<Vec<Neighbor>> {
        let mut q = query.to_vec();
        if self.metric == Metric::Cosine {
            crate::distance::normalize(&mut q);
        }
        let filter = accept.map(|f| move |id: &usize| f(*id as u32));
        let filter = filter.as_ref().map(|f| f as &dyn hnsw_rs::filter::FilterT);
        let found = match &self.inner {
            Inner::L2(h) => h.search_filter(&q, k, ef.max(k), filter),
            Inner::Dot(h) => h.search_filter(&q, k, ef.max(k), filter),
        };
        Ok(found
            .into_iter()
            .map(|nb| Neighbor {
                id: nb.d_id as u32,
                // hnsw_rs reports the Euclidean distance; vecrec's L2 is squared.
                distance: if self.metric == Metric::L2 {
                    nb.distance * nb.distance
                } else {
                    nb.distance
                },
            })
            .collect())
    }
}
