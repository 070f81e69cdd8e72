//! The tonic gRPC service `vecrec.v1.Recommender`, with the standard health
//! service and server reflection.
//!
//! Handlers check their arguments, then run the engine on the blocking thread
//! pool (encoding and search are CPU work) and map errors through
//! [`status`](self::status), the one place that chooses status codes.

pub mod reload;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, RecommendOptions, Scored, UserRef};
use crate::error::Error;
use crate::filter::{Filter, Range};
use reload::EngineSlot;

/// Generated protobuf types and service stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("vecrec.v1");
    /// The encoded file descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vecrec_descriptor");
}

use pb::recommender_server::{Recommender, RecommenderServer};

/// The service over the engine in a swappable slot.
#[derive(Clone, Debug)]
pub struct Service {
    slot: Arc<EngineSlot>,
}

impl Service {
    /// A service answering from whatever engine `slot` holds.
    pub fn new(slot: Arc<EngineSlot>) -> Self {
        Self { slot }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> crate::error::Result<T> + Send + 'static,
    {
        let engine = self.slot.get();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Status::internal(format!("worker failed: {e}")))?
            .map_err(Status::from)
    }
}

fn to_filter(f: Option<pb::AttributeFilter>) -> Result<Option<Filter>, Error> {
    let Some(f) = f else { return Ok(None) };
    let ranges = f
        .ranges
        .into_iter()
        .map(|r| {
            if r.field.is_empty() {
                return Err(Error::invalid("filter.ranges[].field must not be empty"));
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max) {
                if lo > hi {
                    return Err(Error::invalid(format!(
                        "filter range on {:?}: min {lo} > max {hi}",
                        r.field
                    )));
                }
            }
            Ok(Range {
                field: r.field,
                min: r.min,
                max: r.max,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Filter {
        categories_any: f.categories_any,
        tags_all: f.tags_all,
        ranges,
    }))
}

fn fusion_method(code: i32) -> Result<Option<crate::fusion::FusionMethod>, Error> {
    use crate::fusion::FusionMethod as F;
    Ok(match pb::Fusion::try_from(code) {
        Ok(pb::Fusion::Default) => None,
        Ok(pb::Fusion::WeightedMinmax) => Some(F::WeightedMinmax),
        Ok(pb::Fusion::WeightedZscore) => Some(F::WeightedZscore),
        Ok(pb::Fusion::Geometric) => Some(F::Geometric),
        Ok(pb::Fusion::Rrf) => Some(F::Rrf),
        Ok(pb::Fusion::Borda) => Some(F::Borda),
        Ok(pb::Fusion::Learned) => Some(F::Learned),
        Err(_) => return Err(Error::invalid(format!("unknown fusion method {code}"))),
    })
}

fn scored(engine: &Engine, items: Vec<Scored>) -> Vec<pb::ScoredItem> {
    let store = engine.index().store();
    items
        .into_iter()
        .map(|s| pb::ScoredItem {
            title: if s.internal == crate::engine::LIVE_ITEM {
                engine.item_meta(&s.id).map(|m| m.title).unwrap_or_default()
            } else {
                store.meta(s.internal).title.clone()
            },
            item_id: s.id,
            score: s.score,
        })
        .collect()
}

#[tonic::async_trait]
impl Recommender for Service {
    async fn recommend(
        &self,
        req: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let r = req.into_inner();
        let filter = to_filter(r.filter)?;
        let items = self
            .run(move |e| {
                let opts = RecommendOptions {
                    fusion: fusion_method(r.fusion)?,
                    k: r.k as usize,
                    include_seen: r.include_seen,
                    filter,
                };
                let who = if !r.history.is_empty() {
                    UserRef::History(&r.history)
                } else if !r.user_id.is_empty() {
                    UserRef::Id(&r.user_id)
                } else {
                    return Err(Error::invalid("give a user_id or a non-empty history"));
                };
                Ok(scored(e, e.recommend(who, &opts)?))
            })
            .await?;
        Ok(Response::new(pb::RecommendResponse { items }))
    }

    async fn similar_items(
        &self,
        req: Request<pb::SimilarItemsRequest>,
    ) -> Result<Response<pb::SimilarItemsResponse>, Status> {
        let r = req.into_inner();
        let filter = to_filter(r.filter)?;
        let items = self
            .run(move |e| {
                Ok(scored(
                    e,
                    e.similar_items(&r.item_id, r.k as usize, filter.as_ref())?,
                ))
            })
            .await?;
        Ok(Response::new(pb::SimilarItemsResponse { items }))
    }

    async fn search_text(
        &self,
        req: Request<pb::SearchTextRequest>,
    ) -> Result<Response<pb::SearchTextResponse>, Status> {
        let r = req.into_inner();
        let filter = to_filter(r.filter)?;
        let items = self
            .run(move |e| {
                Ok(scored(
                    e,
                    e.search_text(&r.query, r.k as usize, filter.as_ref())?,
                ))
            })
            .await?;
        Ok(Response::new(pb::SearchTextResponse { items }))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let r = req.into_inner();
        let vectors = self.run(move |e| e.embed(&r.texts)).await?;
        let dim = vectors.first().map_or(0, Vec::len) as u32;
        Ok(Response::new(pb::EmbedResponse {
            embeddings: vectors
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            dim,
        }))
    }

    async fn upsert_items(
        &self,
        req: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let items: Vec<crate::catalog::CatalogItem> = req
            .into_inner()
            .items
            .into_iter()
            .map(|it| crate::catalog::CatalogItem {
                id: it.id,
                meta: vecrec_index::ItemMeta {
                    title: it.title,
                    text: it.text,
                    categories: it.categories,
                    tags: it.tags,
                    numeric: it.numeric.into_iter().collect(),
                },
            })
            .collect();
        let n = items.len() as u32;
        let sequence = self.run(move |e| e.upsert_items(items)).await?;
        Ok(Response::new(pb::UpsertItemsResponse {
            upserted: n,
            sequence,
        }))
    }

    async fn delete_items(
        &self,
        req: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        let ids = req.into_inner().ids;
        let n = ids.len() as u32;
        let sequence = self.run(move |e| e.delete_items(ids)).await?;
        Ok(Response::new(pb::DeleteItemsResponse {
            deleted: n,
            sequence,
        }))
    }

    async fn record_events(
        &self,
        req: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let events: Vec<crate::catalog::Interaction> = req
            .into_inner()
            .events
            .into_iter()
            .map(|e| crate::catalog::Interaction {
                user: e.user_id,
                item: e.item_id,
                timestamp: if e.timestamp == 0 { now } else { e.timestamp },
                event: None,
                weight: if e.weight == 0.0 { 1.0 } else { e.weight },
            })
            .collect();
        let n = events.len() as u32;
        let sequence = self.run(move |e| e.record_events(events)).await?;
        Ok(Response::new(pb::RecordEventsResponse {
            recorded: n,
            sequence,
        }))
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let id = req.into_inner().id;
        let meta = self.slot.get().item_meta(&id).map_err(Status::from)?;
        Ok(Response::new(pb::GetItemResponse {
            id,
            title: meta.title,
            text: meta.text,
            categories: meta.categories,
            tags: meta.tags,
            numeric: meta.numeric.into_iter().collect(),
        }))
    }
}

/// Serves the engine in `slot` on `listener` until `shutdown` resolves, with
/// health and reflection; swaps in new generations as `server.reload_interval_ms` says.
pub async fn serve(
    slot: Arc<EngineSlot>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let full = slot.get().config().clone();
    let cfg = full.server.clone();
    let watcher = (cfg.reload_interval_ms > 0).then(|| {
        tokio::spawn(reload::watch(
            slot.clone(),
            Duration::from_millis(cfg.reload_interval_ms),
        ))
    });
    let compactor = (slot.get().live().is_some() && cfg.reload_interval_ms > 0).then(|| {
        tokio::spawn(reload::compact_loop(
            slot.clone(),
            Duration::from_millis(cfg.reload_interval_ms),
            full.live.compact_after,
        ))
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RecommenderServer<Service>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    tonic::transport::Server::builder()
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .concurrency_limit_per_connection(cfg.max_concurrent_requests)
        .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RecommenderServer::new(Service::new(slot)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    for task in [watcher, compactor].into_iter().flatten() {
        task.abort();
    }
    Ok(())
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
