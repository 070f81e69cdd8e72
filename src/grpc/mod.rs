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
mod status;
mod validate;

pub use conn::{bind_with_backlog, incoming, raise_open_file_limit, Conn, ConnInfo, Tls};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::admission::Admission;
use crate::config::ServerConfig;
use crate::deadline::{parse_grpc_timeout, Deadline};
use crate::engine::{Engine, RecommendOptions, Scored, UserRef};
use crate::error::Error;
use crate::filter::{Filter, Range};
use crate::serving::{experiments, slot, EngineSlot};
use crate::telemetry;

/// Generated protobuf types and service stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("vecrec.v1");
    /// The encoded file descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vecrec_descriptor");
}

use pb::recommender_server::{Recommender, RecommenderServer};

/// Served lists remembered for counting their feedback by arm.
const RECENT_REQUESTS: usize = 65_536;

/// The service over the engine in a swappable slot.
#[derive(Clone, Debug)]
pub struct Service {
    slot: Arc<EngineSlot>,
    /// The line of SimilarItems and encoder calls (see [`Work`]).
    admission: Arc<Admission>,
    /// The line of calls that compute on their own thread (see [`Work`]).
    cpu: Arc<Admission>,
    default_timeout: Duration,
    /// Per-caller rates of write calls and events.
    rates: Arc<auth::Rates>,
    /// The experiments in force over Recommend.
    experiments: Arc<experiments::Experiments>,
    /// Where served lists and their feedback are logged (started on the
    /// first call that needs it).
    exposures: Arc<std::sync::OnceLock<Option<crate::exposure::ExposureLog>>>,
    /// The experiment whose definition this server logged last.
    defined: Arc<parking_lot::Mutex<Option<Arc<crate::config::ExperimentConfig>>>>,
    /// Recently served lists' arms, to count feedback by arm.
    recent: Arc<experiments::Recent>,
}

/// Where a call's work runs, which decides whether it needs a CPU place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// On the call's own thread (Recommend, DeleteItems, RecordEvents), in
    /// a line of its own: at most `server.max_cpu_requests` run at once, the
    /// rest wait in line. More threads than cores only time-slice each other,
    /// which stretches every request's latency (and the tail most) without
    /// adding throughput.
    Cpu,
    /// So short (one index search, well under a millisecond) that handing
    /// it to another thread costs a good part of its time: runs on the
    /// runtime's own thread, of which there is one per core (SimilarItems).
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
        Self {
            slot,
            admission: Admission::new(
                "requests",
                cfg.in_flight_limit(),
                cfg.max_queued_requests,
                max_wait,
            ),
            cpu: Admission::new("cpu", cfg.cpu_limit(), cfg.max_queued_requests, max_wait),
            default_timeout: Duration::from_millis(cfg.request_timeout_ms),
            rates,
            experiments: Arc::new(experiments),
            exposures: Arc::new(std::sync::OnceLock::new()),
            defined: Default::default(),
            recent: Arc::new(experiments::Recent::new(RECENT_REQUESTS)),
        }
    }

    /// Hands `entry` to the exposure log, starting it on first use, and
    /// counts it on /metrics.
    fn expose(&self, entry: crate::exposure::Entry) {
        use crate::exposure::Entry;
        match &entry {
            Entry::Exposure {
                request_id,
                experiment,
                arm,
                items,
                ..
            } => {
                let labels = [("experiment", experiment.clone()), ("arm", arm.clone())];
                metrics::counter!(telemetry::EXPERIMENT_EXPOSURES, &labels)
                    .increment(items.len() as u64);
                self.recent.remember(
                    request_id,
                    experiment,
                    arm,
                    items.iter().map(|s| (s.item.as_str(), s.team.as_str())),
                );
            }
            Entry::Feedback {
                request_id,
                item,
                kind,
                ..
            } => {
                let (experiment, arm) = self
                    .recent
                    .credit(request_id, item)
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                let labels = [
                    ("experiment", experiment),
                    ("arm", arm),
                    ("kind", kind.clone()),
                ];
                metrics::counter!(telemetry::EXPERIMENT_FEEDBACK, &labels).increment(1);
            }
            Entry::Definition { .. } => {}
        }
        let log = self.exposures.get_or_init(|| {
            match crate::exposure::ExposureLog::start(self.slot.root(), Default::default()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "the exposure log cannot start; exposures are lost");
                    None
                }
            }
        });
        if let Some(l) = log {
            l.record(entry);
        }
    }

    /// Logs `e`'s definition before its first exposure from this server,
    /// and again after each reload (a reload makes a new `Arc`).
    fn define(&self, e: &Arc<crate::config::ExperimentConfig>) {
        {
            let mut last = self.defined.lock();
            if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, e)) {
                return;
            }
            *last = Some(e.clone());
        }
        self.expose(crate::exposure::Entry::definition(
            e,
            crate::exposure::now_ms(),
        ));
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

    /// The line of SimilarItems and encoder calls.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The line of Recommend and write calls.
    pub fn cpu_admission(&self) -> &Arc<Admission> {
        &self.cpu
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
        // Counted from the call's arrival, as tonic's own timer is, not from
        // the first poll of the handler, which a loaded machine can delay.
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

/// Counts a write refused for its caller's rate.
fn observe_refusal(e: &Error) {
    if matches!(e, Error::Overloaded(_)) {
        metrics::counter!(telemetry::REFUSED, "reason" => "rate").increment(1);
    }
}

/// Counts an answer of `rpc` by status code and records its latency.
fn observe(rpc: &'static str, started: Instant, err: Option<&Status>) {
    let code = err.map_or(tonic::Code::Ok, Status::code);
    metrics::counter!(telemetry::REQUESTS, "rpc" => rpc, "code" => code_name(code)).increment(1);
    metrics::histogram!(telemetry::REQUEST_SECONDS, "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
}

/// The gRPC status code's canonical name, as metrics labels use it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
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
    items
        .into_iter()
        .map(|s| scored_item(engine, s, String::new()))
        .collect()
}

fn served_items(engine: &Engine, items: Vec<experiments::Served>) -> Vec<pb::ScoredItem> {
    items
        .into_iter()
        .map(|s| scored_item(engine, s.item, s.arm))
        .collect()
}

fn scored_item(engine: &Engine, s: Scored, arm: String) -> pb::ScoredItem {
    pb::ScoredItem {
        title: if s.internal == crate::engine::LIVE_ITEM {
            engine.item_meta(&s.id).map(|m| m.title).unwrap_or_default()
        } else {
            engine.index().store().meta(s.internal).title.clone()
        },
        item_id: s.id,
        score: s.score,
        arm,
    }
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
        validate::id_or_empty(&limits, "force_arm", &r.force_arm)?;
        let filter = to_filter(r.filter)?;
        let plan = self.experiments.plan(&r.user_id, &r.force_arm)?;
        let request_id = crate::experiment::request_id();
        let (experiment, arm) = plan.as_ref().map_or((String::new(), String::new()), |p| {
            (
                p.experiment.name.clone(),
                p.experiment.arms[p.arm].name.clone(),
            )
        });
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
            self.define(&p.experiment);
            self.expose(crate::exposure::Entry::served(
                &request_id,
                crate::exposure::now_ms(),
                &user,
                &p.experiment,
                p.arm,
                p.forced,
                items.iter().map(|s| (s.item_id.as_str(), s.arm.as_str())),
            ));
        }
        if !experiment.is_empty() {
            let labels = [("experiment", experiment.clone()), ("arm", arm.clone())];
            metrics::counter!(telemetry::EXPERIMENT_REQUESTS, &labels).increment(1);
            metrics::histogram!(telemetry::EXPERIMENT_SECONDS, &labels)
                .record(started.elapsed().as_secs_f64());
        }
        Ok(Response::new(pb::RecommendResponse {
            items,
            request_id,
            experiment,
            arm,
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
        Ok(Response::new(pb::SimilarItemsResponse { items }))
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
        Ok(Response::new(pb::SearchTextResponse { items }))
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
        let feedback: Vec<crate::exposure::Entry> = events
            .iter()
            .filter(|e| !e.request_id.is_empty())
            .map(|e| {
                crate::exposure::Entry::feedback(
                    &e.request_id,
                    crate::exposure::now_ms(),
                    &e.user_id,
                    &e.item_id,
                    &e.kind,
                )
            })
            .collect();
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
            self.expose(f);
        }
        Ok(Response::new(pb::RecordEventsResponse {
            recorded: n,
            sequence,
        }))
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let started = Instant::now();
        let id = req.into_inner().id;
        let engine = self.slot.get();
        let meta = validate::id(&engine.config().limits, "id", &id)
            .and_then(|()| Ok(engine.index().check_damage()?))
            .and_then(|()| engine.item_meta(&id))
            .map_err(Status::from);
        observe("GetItem", started, meta.as_ref().err());
        let meta = meta?;
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
/// health and reflection; swaps in new generations as `server.reload_interval_ms`
/// says, and re-reads the TLS files and the token file on SIGHUP.
pub async fn serve(
    slot: Arc<EngineSlot>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with_config_file(slot, listener, shutdown, None).await
}

/// [`serve`], re-reading the experiments from `config_file` on SIGHUP.
pub async fn serve_with_config_file(
    slot: Arc<EngineSlot>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let full = slot.get().config().clone();
    let cfg = full.server.clone();
    let experiments = experiments::Experiments::new(&full, config_file)?;
    let tls = Tls::new(&full.security)?;
    let auth = auth::Auth::new(&full.security)?;
    let watcher = (cfg.reload_interval_ms > 0).then(|| {
        tokio::spawn(slot::watch(
            slot.clone(),
            Duration::from_millis(cfg.reload_interval_ms),
        ))
    });
    let compactor = (slot.get().live().is_some() && cfg.reload_interval_ms > 0).then(|| {
        tokio::spawn(slot::compact_loop(
            slot.clone(),
            Duration::from_millis(cfg.reload_interval_ms),
            full.live.compact_after,
        ))
    });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RecommenderServer<Service>>()
        .await;
    let scrub_now = Arc::new(tokio::sync::Notify::new());
    let scrubber = tokio::spawn(scrub_loop(
        slot.clone(),
        (cfg.scrub_interval_s > 0).then(|| Duration::from_secs(cfg.scrub_interval_s)),
        health_reporter,
        scrub_now.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let gauges = tokio::spawn(report_gauges(slot.clone()));
    let service = Service::new(slot, &cfg, experiments);
    let reloader = tokio::spawn(reload_on_hangup(Reload {
        tls: tls.clone(),
        auth: auth.clone(),
        scrub: scrub_now,
        experiments: service.experiments.clone(),
    }));
    tracing::info!(
        in_flight = service.admission().in_flight_limit(),
        cpu_in_flight = service.cpu_admission().in_flight_limit(),
        queue = cfg.max_queued_requests,
        connections = cfg.max_connections,
        tls = tls.enabled(),
        tokens = auth.enabled(),
        "admission control"
    );
    tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .http2_adaptive_window(Some(true))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        .layer(auth::AuthLayer(auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RecommenderServer::with_interceptor(service, stamp_arrival))
        .serve_with_incoming_shutdown(incoming(listener, &cfg, tls), shutdown)
        .await?;
    for task in [
        watcher,
        compactor,
        Some(gauges),
        Some(reloader),
        Some(scrubber),
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    Ok(())
}

/// Re-reads the served generation's files every `interval` (and when
/// `now` is notified) and checks their checksums; keeps health SERVING
/// while the served engine is intact and NOT_SERVING once damage is found
/// (every call then answers `DATA_LOSS`), until an intact generation is
/// swapped in.
async fn scrub_loop(
    slot: Arc<EngineSlot>,
    interval: Option<Duration>,
    health: tonic_health::server::HealthReporter,
    now: Arc<tokio::sync::Notify>,
) {
    let mut last = Instant::now();
    let mut serving = true;
    loop {
        let asked = tokio::select! {
            _ = now.notified() => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let engine = slot.get();
        if asked || interval.is_some_and(|i| last.elapsed() >= i) {
            last = Instant::now();
            let e = engine.clone();
            let found = tokio::task::spawn_blocking(move || e.index().scrub()).await;
            match found {
                Ok(Ok(files)) => {
                    metrics::counter!(telemetry::SCRUBS, "result" => "ok").increment(1);
                    tracing::debug!(files, "scrub: the served generation is intact");
                }
                Ok(Err(e)) => {
                    metrics::counter!(telemetry::SCRUBS, "result" => "damaged").increment(1);
                    tracing::error!(error = %e, "scrub: the served generation is damaged; answering DATA_LOSS");
                }
                Err(e) => tracing::error!(error = %e, "scrub failed to run"),
            }
        }
        let intact = engine.index().check_damage().is_ok();
        if intact != serving {
            use tonic::server::NamedService;
            let status = if intact {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            // The server as a whole ("") and the service by name.
            health.set_service_status("", status).await;
            health
                .set_service_status(<RecommenderServer<Service> as NamedService>::NAME, status)
                .await;
            serving = intact;
        }
    }
}

/// What SIGHUP reloads.
struct Reload {
    tls: Tls,
    auth: auth::Auth,
    scrub: Arc<tokio::sync::Notify>,
    experiments: Arc<experiments::Experiments>,
}

/// Re-reads the TLS files, the token file and the experiments on every
/// SIGHUP (a file that does not load leaves what is in force and is
/// logged), and asks for a scrub of the served generation.
async fn reload_on_hangup(r: Reload) {
    let Reload {
        tls,
        auth,
        scrub,
        experiments,
    } = r;
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            scrub.notify_one();
            match tls.reload() {
                Ok(()) if tls.enabled() => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; the old ones stay")
                }
            }
            match auth.reload() {
                Ok(n) if auth.enabled() => tracing::info!(tokens = n, "SIGHUP: tokens reloaded"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: token file not reloaded; the old tokens stay")
                }
            }
            match experiments.reload() {
                Ok(n) => tracing::info!(experiments = n, "SIGHUP: experiments reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: experiments refused; the running ones stay")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, auth, scrub, experiments);
        std::future::pending::<()>().await
    }
}

/// Refuses to serve a non-loopback address without both TLS and tokens,
/// unless `insecure` (`vecrec serve --insecure`) says the network is trusted.
pub fn check_exposure(
    addr: SocketAddr,
    security: &crate::config::SecurityConfig,
    insecure: bool,
) -> anyhow::Result<()> {
    let protected = security.tls() && security.tokens_file.is_some();
    if addr.ip().is_loopback() || protected || insecure {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {addr} without TLS and bearer tokens: anyone who can reach it could \
         read and change the catalogue. Set security.tls_cert, security.tls_key and \
         security.tokens_file (README, \"Security\"), or pass --insecure if the network is trusted"
    )
}

/// When a call reached the service: stamped by [`stamp_arrival`] in the
/// same synchronous step in which tonic starts its `grpc-timeout` timer.
#[derive(Clone, Copy, Debug)]
struct Arrived(Instant);

/// The interceptor that stamps every call's arrival.
fn stamp_arrival(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.extensions_mut().insert(Arrived(Instant::now()));
    Ok(req)
}

/// How much sooner than the client's deadline the server gives up: 10 ms
/// (a tenth of timeouts under 100 ms). tonic's transport also times the
/// `grpc-timeout` and answers `CANCELLED` ("Timeout expired") at the
/// deadline itself; stopping sooner lets the server answer
/// `DEADLINE_EXCEEDED` naming the stage it stopped before, and the answer
/// reaches the client while it still listens. A 2 ms margin lost that race
/// on a loaded 2-core CI machine (both timers fired in the same late poll).
fn deadline_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(10))
}

/// Keeps the served generation's gauges current (once a second).
async fn report_gauges(slot: Arc<EngineSlot>) {
    loop {
        let e = slot.get();
        let generation = e
            .index()
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        metrics::gauge!(telemetry::GENERATION).set(generation as f64);
        metrics::gauge!(telemetry::ITEMS).set(e.index().store().len() as f64);
        let pending = e.live().map_or(0, |l| l.view(e.applied_seq()).pending());
        metrics::gauge!(telemetry::PENDING_RECORDS).set(pending as f64);
        drop(e);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Binds `addr` (port 0 picks a free port) with the default listen backlog
/// and returns the listener and its address.
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = bind_with_backlog(addr, ServerConfig::default().listen_backlog)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
