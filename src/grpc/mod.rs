//! The tonic gRPC service `vecrec.v1.Recommender`, with the standard health
//! service and server reflection.
//!
//! Every `Recommender` call passes admission control first (a bound on
//! requests in progress and on the line in front of them, one line for
//! Recommend and writes and one for the rest; beyond it
//! `RESOURCE_EXHAUSTED`, see [`crate::admission`]), carries its
//! deadline (the client's `grpc-timeout`, capped by
//! `server.request_timeout_ms`) into the engine, which checks it between
//! stages, and runs the engine on the blocking thread pool (encoding and
//! search are CPU work). Errors map through [`status`](self::status), the one
//! place that chooses status codes; every answer is counted by RPC and code
//! and timed ([`crate::telemetry`]).
//!
//! In front of every service, [`auth`] checks bearer tokens and roles (when
//! `security.tokens_file` is set); requests are then checked against
//! `[limits]` ([`validate`]) before they take a place in line, and write
//! calls are charged to their caller's rate. Connections are accepted by
//! [`conn`]: a bound on how many, TLS, `TCP_NODELAY`, keepalive, idle
//! timeout. See ARCHITECTURE.md for the HTTP/2 settings and README,
//! "Security", for the threat model.

pub mod auth;
mod conn;
pub(crate) mod convert;
mod server;
mod status;
pub(crate) mod validate;

pub use conn::{bind_with_backlog, incoming, raise_open_file_limit, Conn, ConnInfo, Tls};
pub use convert::{code_name, observe};
pub(crate) use server::set_health;
pub use server::{bind, check_exposure, serve, serve_with_config_file, MIN_SEQUENCE_HEADER};

use convert::{fusion_method, observe_refusal, scored, served_items, to_filter};
use server::{deadline_margin, Arrived};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::admission::{Admission, RuntimeLag};
use crate::config::ServerConfig;
use crate::deadline::{parse_grpc_timeout, Deadline};
use crate::engine::{Engine, RecommendOptions, ShardQuery, Source, UserRef};
use crate::error::Error;
use crate::serving::{experiments, EngineSlot};

/// Generated protobuf types and service stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("vecrec.v1");
    /// The encoded file descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vecrec_descriptor");
}

use pb::recommender_server::Recommender;

/// The service over the engine in a swappable slot.
#[derive(Clone, Debug)]
pub struct Service {
    slot: Arc<EngineSlot>,
    /// The line of SimilarItems and encoder calls (see [`Work`]).
    admission: Arc<Admission>,
    /// The line of calls that compute on their own thread (see [`Work`]).
    cpu: Arc<Admission>,
    /// How far behind the runtime's threads are, which bounds the calls
    /// that run on them ([`Work::Inline`]).
    lag: Arc<RuntimeLag>,
    default_timeout: Duration,
    /// Per-caller rates of write calls and events.
    rates: Arc<auth::Rates>,
    /// The experiments in force over Recommend.
    experiments: Arc<experiments::Experiments>,
    /// Where served lists and their feedback are logged, under the index root.
    journal: Arc<experiments::Journal>,
}

/// Where a call's work runs, which decides whether it needs a CPU place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// On the call's own thread (Recommend, DeleteItems, RecordEvents), in
    /// a line of their own: at most `server.max_cpu_requests` run at once
    /// (one per core and one spare, so no core idles while a finished call's
    /// place passes to the next), the rest wait in line. More threads than
    /// that only time-slice each other, which stretches every request's
    /// latency (and the tail most) without adding throughput.
    Cpu,
    /// So short (one index search, well under a millisecond) that handing
    /// it to another thread costs a good part of its time: runs on the
    /// runtime's own thread, of which there is one per core (SimilarItems,
    /// SearchVector). Such calls never fill their line (a place is freed
    /// before the next handler runs), so they are refused while the
    /// runtime is behind ([`RuntimeLag`]).
    Inline,
    /// Mostly in the encoder's workers (SearchText, Embed, UpsertItems): the
    /// call's thread waits for its batch, and the more such calls wait at
    /// once, the larger the batches.
    Encoder,
}

impl Service {
    /// A service answering from whatever engine `slot` holds, with the
    /// admission limits and default deadline of `cfg`, under `experiments`.
    pub fn new(
        slot: Arc<EngineSlot>,
        cfg: &ServerConfig,
        experiments: experiments::Experiments,
    ) -> Self {
        let max_wait =
            (cfg.max_queue_wait_ms > 0).then(|| Duration::from_millis(cfg.max_queue_wait_ms));
        let rates = Arc::new(auth::Rates::new(&slot.get().config().security));
        let journal = Arc::new(experiments::Journal::new(slot.root()));
        Self {
            slot,
            admission: Admission::new(
                "requests",
                cfg.in_flight_limit(),
                cfg.overload_limit(),
                cfg.max_queued_requests,
                max_wait,
            ),
            cpu: Admission::new(
                "cpu",
                cfg.cpu_limit(),
                cfg.overload_limit(),
                cfg.max_queued_requests,
                max_wait,
            ),
            lag: RuntimeLag::new(),
            default_timeout: Duration::from_millis(cfg.request_timeout_ms),
            rates,
            experiments: Arc::new(experiments),
            journal,
        }
    }

    /// Charges a write call (and its `events`) to the caller's rates.
    fn charge<R>(&self, req: &Request<R>, events: usize) -> Result<(), Status> {
        let name = req
            .extensions()
            .get::<auth::Caller>()
            .map_or_else(|| "anonymous".into(), |c| c.name.clone());
        self.rates.charge(&name, events).map_err(|e| {
            observe_refusal(&e);
            Status::from(e)
        })
    }

    /// The request limits of the served configuration.
    fn limits(&self) -> crate::config::Limits {
        self.slot.get().config().limits.clone()
    }

    /// A replica that follows another's log refuses a write at once, before
    /// the caller is charged or the call waits for a place: the router
    /// counts on that answer to tell it from a replica that failed.
    fn refuse_if_follower(&self) -> Result<(), Status> {
        match self.slot.get().live() {
            Some(l) => l.check_writable().map_err(Status::from),
            None => Ok(()),
        }
    }

    /// The line of SimilarItems and encoder calls.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The line of Recommend and write calls.
    pub fn cpu_admission(&self) -> &Arc<Admission> {
        &self.cpu
    }

    /// The lag of the runtime the service runs on; its
    /// [`RuntimeLag::probe`] must run there for it to be measured.
    pub fn runtime_lag(&self) -> &Arc<RuntimeLag> {
        &self.lag
    }

    /// The deadline of `req`: its `grpc-timeout`, at most the server's
    /// default, less [`deadline_margin`].
    fn deadline<R>(&self, req: &Request<R>) -> Deadline {
        let client = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = client.map_or(self.default_timeout, |c| c.min(self.default_timeout));
        // Counted from when the call's task first ran, as tonic's own timer
        // is (hyper and axum call the service stack lazily, so neither sees
        // a wait for a runtime thread before it: `RuntimeLag` bounds that),
        // not from the first poll of the handler.
        let arrived = req
            .extensions()
            .get::<Arrived>()
            .map_or_else(Instant::now, |a| a.0);
        Deadline::at(arrived + timeout - deadline_margin(timeout))
    }

    /// Admits the call, then runs `f` on the blocking pool with the engine
    /// and the deadline; counts and times the answer as `rpc`.
    async fn run<T, F>(
        &self,
        rpc: &'static str,
        work: Work,
        deadline: Deadline,
        f: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Engine, Deadline) -> crate::error::Result<T> + Send + 'static,
    {
        let started = Instant::now();
        let result = async {
            let line = match work {
                Work::Cpu => &self.cpu,
                Work::Inline | Work::Encoder => &self.admission,
            };
            if work == Work::Inline {
                if let Some(lag) = self.lag.behind(Instant::now()) {
                    return Err(line.refuse_behind(rpc, lag));
                }
            }
            let permit = line.admit(rpc, deadline).await?;
            let engine = self.slot.get();
            engine.index().check_damage()?;
            if work == Work::Inline {
                deadline.check("start")?;
                let _permit = permit;
                return f(&engine, deadline);
            }
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                deadline.check("start")?;
                f(&engine, deadline)
            })
            .await
            .map_err(|e| Error::Encoder(format!("worker failed: {e}")))?
        }
        .await
        .map_err(Status::from);
        observe(rpc, started, result.as_ref().err());
        result
    }
}

/// The feedback entry of an event that names the list it acts on
/// (`request_id`), stamped now; none for a plain event.
pub(crate) fn feedback(e: &pb::Event) -> Option<crate::exposure::Entry> {
    (!e.request_id.is_empty()).then(|| {
        crate::exposure::Entry::feedback(
            &e.request_id,
            crate::exposure::now_ms(),
            &e.user_id,
            &e.item_id,
            &e.kind,
        )
    })
}

#[tonic::async_trait]
impl Recommender for Service {
    async fn recommend(
        &self,
        req: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        let limits = self.limits();
        validate::recommend(&limits, &r)?;
        let filter = to_filter(r.filter)?;
        let plan = self.experiments.plan(&r.user_id, &r.force_arm)?;
        let request_id = crate::experiment::request_id();
        let (experiment, arm) = plan.as_ref().map(|p| p.names()).unwrap_or_default();
        let started = Instant::now();
        let id = request_id.clone();
        let plan_logged = plan.clone();
        let user = r.user_id.clone();
        let items = self
            .run("Recommend", Work::Cpu, deadline, move |e, deadline| {
                let opts = RecommendOptions {
                    fusion: fusion_method(r.fusion)?,
                    k: r.k as usize,
                    include_seen: r.include_seen,
                    filter,
                    deadline,
                };
                let who = if !r.history.is_empty() {
                    UserRef::History(&r.history)
                } else if !r.user_id.is_empty() {
                    UserRef::Id(&r.user_id)
                } else {
                    return Err(Error::invalid("give a user_id or a non-empty history"));
                };
                let served = experiments::recommend(e, who, &opts, plan.as_ref(), &id)?;
                Ok(served_items(e, served))
            })
            .await?;
        if let Some(p) = &plan_logged {
            self.journal.served(
                p,
                &request_id,
                &user,
                items.iter().map(|s| (s.item_id.as_str(), s.arm.as_str())),
                started,
            );
        }
        Ok(Response::new(pb::RecommendResponse {
            items,
            request_id,
            experiment,
            arm,
            partial: false,
        }))
    }

    async fn similar_items(
        &self,
        req: Request<pb::SimilarItemsRequest>,
    ) -> Result<Response<pb::SimilarItemsResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        let limits = self.limits();
        validate::id(&limits, "item_id", &r.item_id)?;
        validate::filter(&limits, r.filter.as_ref())?;
        let filter = to_filter(r.filter)?;
        let items = self
            .run("SimilarItems", Work::Inline, deadline, move |e, _| {
                Ok(scored(
                    e,
                    e.similar_items(&r.item_id, r.k as usize, filter.as_ref())?,
                ))
            })
            .await?;
        Ok(Response::new(pb::SimilarItemsResponse {
            items,
            partial: false,
        }))
    }

    async fn search_text(
        &self,
        req: Request<pb::SearchTextRequest>,
    ) -> Result<Response<pb::SearchTextResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        validate::filter(&self.limits(), r.filter.as_ref())?;
        let filter = to_filter(r.filter)?;
        let items = self
            .run("SearchText", Work::Encoder, deadline, move |e, deadline| {
                Ok(scored(
                    e,
                    e.search_text_within(&r.query, r.k as usize, filter.as_ref(), deadline)?,
                ))
            })
            .await?;
        Ok(Response::new(pb::SearchTextResponse {
            items,
            partial: false,
        }))
    }

    async fn search_vector(
        &self,
        req: Request<pb::SearchVectorRequest>,
    ) -> Result<Response<pb::SearchVectorResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        let limits = self.limits();
        validate::filter(&limits, r.filter.as_ref())?;
        for id in &r.exclude {
            validate::id(&limits, "exclude", id)?;
        }
        let filter = to_filter(r.filter)?;
        let items = self
            .run("SearchVector", Work::Inline, deadline, move |e, _| {
                Ok(scored(
                    e,
                    e.search_vector(&r.vector, r.k as usize, filter.as_ref(), &r.exclude)?,
                ))
            })
            .await?;
        Ok(Response::new(pb::SearchVectorResponse {
            items,
            partial: false,
        }))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        let vectors = self
            .run("Embed", Work::Encoder, deadline, move |e, deadline| {
                e.embed_within(&r.texts, deadline)
            })
            .await?;
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
        self.refuse_if_follower()?;
        let deadline = self.deadline(&req);
        self.charge(&req, 0)?;
        let items = req.into_inner().items;
        let limits = self.limits();
        for (k, it) in items.iter().enumerate() {
            validate::item(&limits, k, it)?;
        }
        let items: Vec<crate::catalog::CatalogItem> = items
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
        let sequence = self
            .run("UpsertItems", Work::Encoder, deadline, move |e, _| {
                e.upsert_items(items)
            })
            .await?;
        Ok(Response::new(pb::UpsertItemsResponse {
            upserted: n,
            sequence,
        }))
    }

    async fn delete_items(
        &self,
        req: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        self.refuse_if_follower()?;
        let deadline = self.deadline(&req);
        self.charge(&req, 0)?;
        let limits = self.limits();
        // An id named twice in one call is deleted (and counted) once.
        let mut seen = std::collections::HashSet::new();
        let mut ids = req.into_inner().ids;
        for (k, id) in ids.iter().enumerate() {
            validate::id(&limits, &format!("ids[{k}]"), id)?;
        }
        ids.retain(|id| seen.insert(id.clone()));
        let n = ids.len() as u32;
        let sequence = self
            .run("DeleteItems", Work::Cpu, deadline, move |e, _| {
                e.delete_items(ids)
            })
            .await?;
        Ok(Response::new(pb::DeleteItemsResponse {
            deleted: n,
            sequence,
        }))
    }

    async fn record_events(
        &self,
        req: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        self.refuse_if_follower()?;
        let deadline = self.deadline(&req);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.charge(&req, req.get_ref().events.len())?;
        let events = req.into_inner().events;
        let limits = self.limits();
        for (k, e) in events.iter().enumerate() {
            validate::event(&limits, k, e)?;
        }
        let feedback: Vec<crate::exposure::Entry> = events.iter().filter_map(feedback).collect();
        let events: Vec<crate::catalog::Interaction> = events
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
        let sequence = self
            .run("RecordEvents", Work::Cpu, deadline, move |e, _| {
                e.record_events(events)
            })
            .await?;
        // Only acknowledged events become feedback in the exposure log.
        for f in feedback {
            self.journal.record(f);
        }
        Ok(Response::new(pb::RecordEventsResponse {
            recorded: n,
            sequence,
        }))
    }

    async fn shard_sources(
        &self,
        req: Request<pb::ShardSourcesRequest>,
    ) -> Result<Response<pb::ShardSourcesResponse>, Status> {
        let deadline = self.deadline(&req);
        let r = req.into_inner();
        validate::shard_sources(&self.limits(), &r)?;
        let q = ShardQuery {
            history: r.history,
            inputs: r
                .inputs
                .into_iter()
                .filter_map(|i| Source::from_name(&i.source).map(|s| (s, i.vector)))
                .collect(),
            exclude: r.exclude,
            filter: to_filter(r.filter)?,
            front_generation: r.front_generation,
            front_ids: r.front_ids,
            candidates: r.candidates as usize,
            ease_decay: r.ease_decay,
            transitions_decay: r.transitions_decay,
        };
        // Until the router swaps its front in too, it asks for the slices
        // of the front this shard's previous generation was cut from.
        let slot = self.slot.clone();
        let lists = self
            .run("ShardSources", Work::Cpu, deadline, move |e, _| {
                if !e.slices_front(&q.front_ids) {
                    if let Some(p) = slot.previous().filter(|p| p.slices_front(&q.front_ids)) {
                        return p.shard_lists(&q);
                    }
                }
                e.shard_lists(&q)
            })
            .await?;
        Ok(Response::new(pb::ShardSourcesResponse {
            lists: lists
                .into_iter()
                .map(|(s, items)| {
                    let (items, scores) = items.into_iter().unzip();
                    pb::SourceItems {
                        source: s.name().to_owned(),
                        items,
                        scores,
                    }
                })
                .collect(),
        }))
    }

    async fn user_events(
        &self,
        req: Request<pb::UserEventsRequest>,
    ) -> Result<Response<pb::UserEventsResponse>, Status> {
        let deadline = self.deadline(&req);
        let user = req.into_inner().user_id;
        validate::id(&self.limits(), "user_id", &user)?;
        let events = self
            .run("UserEvents", Work::Inline, deadline, move |e, _| {
                Ok(e.recorded_events(&user)?
                    .into_iter()
                    .map(|ev| pb::Event {
                        user_id: user.clone(),
                        item_id: ev.item,
                        weight: ev.weight,
                        timestamp: ev.timestamp,
                        ..Default::default()
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::UserEventsResponse { events }))
    }

    async fn item_states(
        &self,
        req: Request<pb::ItemStatesRequest>,
    ) -> Result<Response<pb::ItemStatesResponse>, Status> {
        let deadline = self.deadline(&req);
        let ids = req.into_inner().item_ids;
        for id in &ids {
            validate::id(&self.limits(), "item_ids", id)?;
        }
        let states = self
            .run("ItemStates", Work::Inline, deadline, move |e, _| {
                Ok(e.item_states(&ids)?
                    .into_iter()
                    .map(|s| {
                        use crate::engine::ItemState as S;
                        use pb::ItemState as P;
                        match s {
                            S::Unknown => P::Unknown,
                            S::Built => P::Built,
                            S::Deleted => P::Deleted,
                            S::New => P::New,
                        }
                        .into()
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ItemStatesResponse { states }))
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let id = r.id;
        let engine = self.slot.get();
        let meta = validate::id(&engine.config().limits, "id", &id)
            .and_then(|()| Ok(engine.index().check_damage()?))
            .and_then(|()| engine.item_meta(&id))
            .and_then(|meta| {
                let vector = if r.with_vector {
                    engine.item_vector(&id)?
                } else {
                    Vec::new()
                };
                Ok((meta, vector))
            })
            .map_err(Status::from);
        observe("GetItem", started, meta.as_ref().err());
        let (meta, vector) = meta?;
        Ok(Response::new(pb::GetItemResponse {
            id,
            title: meta.title,
            text: meta.text,
            categories: meta.categories,
            tags: meta.tags,
            numeric: meta.numeric.into_iter().collect(),
            vector,
        }))
    }
}
