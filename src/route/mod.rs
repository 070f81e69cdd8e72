//! `vecrec route`: the stateless front tier of a partitioned index
//! (`vecrec-build --shards N`). It serves the same `vecrec.v1.Recommender`
//! API as one node by fanning each call out to one replica of every shard
//! and merging their top-k, so with exact search its answers are one
//! node's (see docs/scale-out.md):
//!
//! - `Recommend` with `route.front` (a partitioned build with training):
//!   the front generation computes the user's side of every source
//!   ([`Engine::front_query`]), every shard its sources' best own items
//!   (`ShardSources`), and the front merges, reranks and fuses them
//!   ([`Engine::front_answer`]) as one node does.
//! - `Recommend` for a user id: every shard holds every user's profile made
//!   over the whole catalogue and answers for its own items; the lists are
//!   merged by score. For an explicit history the router fetches the
//!   history items' vectors from the shards that own them, makes the
//!   profile exactly as one node does ([`crate::users::profile_of`]) and
//!   sends it to every shard as `SearchVector`.
//! - `SimilarItems`: the item's vector from its shard, then `SearchVector`
//!   everywhere; `SearchText`: the query embedded by one shard, then the same.
//! - `GetItem` goes to the owning shard, `Embed` to any; `UpsertItems` and
//!   `DeleteItems` to every replica of the owning shard: every replica that
//!   takes writes must take it, and at least one must; a replica that
//!   follows another's log (one root shared by the replicas, `vecrec serve
//!   --follow-log`) declines, and reads the write from that log.
//! - `RecordEvents` (with `route.front` only): each user's events are kept
//!   by the shard the user id hashes to (as item ids do), written as above,
//!   once every item's owner has said it exists (`GetItem`).
//!   `Recommend` for a user id first asks that shard for the user's events
//!   (`UserEvents`) and gives them to [`Engine::front_query`], which uses
//!   them as one node does. Without a front, the shards' users' profiles
//!   are fixed at build time and the call is refused.
//! - Experiments (`[[experiments]]`, with `route.front` and
//!   `route.exposure_root`): the router assigns the arm, serves it (in
//!   interleaving both arms, joined) with the arm's settings on the front,
//!   and logs the list and the feedback events name
//!   (`Event.request_id`) under its own exposure root, as one node does.
//!   The shards are sent the events without their request id, so feedback
//!   is logged once, by the router that took it.
//!
//! A replica is chosen round-robin among those not marked down; a call
//! that fails with a transport-level status is retried on the next replica,
//! and one slower than `route.hedge_after_ms` is sent to a second replica,
//! the first answer winning. A shard with no live replica makes the answer
//! `partial` (or `UNAVAILABLE`, as `route.on_missing_shard` says).
//!
//! Replicas are named `host:port`; a host that is not an IP address is
//! looked up in DNS every `route.resolve_interval_ms`, each address it
//! resolves to a replica (one Kubernetes headless Service per shard).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::admission::{Admission, Permit};
use crate::config::{Config, MissingShard, RouteConfig, UserConfig};
use crate::deadline::{parse_grpc_timeout, Deadline};
use crate::engine::{Engine, FrontQuery, RecommendOptions, UserRef};
use crate::grpc::pb;
use crate::grpc::pb::recommender_client::RecommenderClient;
use crate::grpc::pb::recommender_server::{Recommender, RecommenderServer};
use crate::layout::shard_of;
use crate::serving::experiments::{self, Experiments, Journal, Plan};
use crate::serving::EngineSlot;

type Client = RecommenderClient<InterceptedService<Channel, ReadThrough>>;

/// Sends every call to a shard's replica with the last log record a write
/// of this router to that shard was answered with, or the caller's
/// session names ([`WRITTEN_HEADER`]), whichever is later
/// ([`crate::grpc::MIN_SEQUENCE_HEADER`]), so a follower that has not read
/// it yet declines and another replica answers: the router reads its own
/// writes, and a caller the writes it made through any router, on every
/// replica, not only on the writer.
#[derive(Clone, Debug)]
struct ReadThrough {
    /// The shard's [`Shard::written`].
    written: Arc<AtomicU64>,
    /// The shard's number.
    shard: usize,
}

impl tonic::service::Interceptor for ReadThrough {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let seen = SEEN
            .try_with(|seen| seen.get(self.shard).copied().unwrap_or(0))
            .unwrap_or(0);
        let n = self.written.load(Ordering::Acquire).max(seen);
        if n > 0 {
            req.metadata_mut().insert(
                crate::grpc::MIN_SEQUENCE_HEADER,
                tonic::metadata::MetadataValue::from(n),
            );
        }
        Ok(req)
    }
}

/// A routed write's answer carries, in this header, the last log record
/// each shard's part of the caller's writes got ("s0,s1,...", one number
/// per shard, 0 for none): the caller's session. Sent back with a later
/// call to any router of the deployment, every shard call of it asks for
/// at least those records, so the caller reads its own writes even on a
/// follower that has not read them by itself, whichever router wrote them.
/// A write sent with it answers with it, its own records included; a write
/// that fails after some shards took their part carries it in its error.
pub const WRITTEN_HEADER: &str = "x-vecrec-written";

tokio::task_local! {
    /// The caller's session ([`WRITTEN_HEADER`]) while a call is served:
    /// read by [`ReadThrough`], carried into the tasks a call spawns
    /// ([`carried`]).
    static SEEN: Arc<[u64]>;
}

/// `f`, run with the session `seen` (when the caller sent one), or the
/// caller's error for a session this router cannot read.
async fn in_session<T, F>(seen: Result<Option<Arc<[u64]>>, Status>, f: F) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    scoped(seen?, f).await
}

/// `f` with the calling task's session, for a task the call spawns.
fn carried<F: Future>(f: F) -> impl Future<Output = F::Output> {
    scoped(SEEN.try_with(Arc::clone).ok(), f)
}

/// `f`, in the session `seen` when there is one.
async fn scoped<F: Future>(seen: Option<Arc<[u64]>>, f: F) -> F::Output {
    match seen {
        Some(seen) => SEEN.scope(seen, f).await,
        None => f.await,
    }
}

/// The session to answer a write with: `seen`, the one the caller sent,
/// with the records this write got (`wrote`, per shard).
fn written_after(seen: Option<&[u64]>, wrote: &[u64]) -> String {
    wrote
        .iter()
        .enumerate()
        .map(|(s, &q)| q.max(seen.map_or(0, |v| v[s])).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `msg` answered with the session `session` ([`WRITTEN_HEADER`]).
fn with_session<T>((msg, session): (T, String)) -> Response<T> {
    let mut r = Response::new(msg);
    if let Ok(v) = session.parse() {
        r.metadata_mut().insert(WRITTEN_HEADER, v);
    }
    r
}

/// Calls retried on another replica of the same shard.
pub const ROUTE_RETRIES: &str = "vecrec_route_retries_total";
/// Calls hedged to a second replica.
pub const ROUTE_HEDGES: &str = "vecrec_route_hedges_total";
/// Hedges not sent because `route.hedge_budget` was spent.
pub const ROUTE_HEDGES_DENIED: &str = "vecrec_route_hedges_denied_total";
/// Answers merged without some shard (`partial`), by rpc.
pub const ROUTE_PARTIAL: &str = "vecrec_route_partial_total";
/// Interleaved Recommend calls whose two arms sent the shards the same
/// request, asked once.
pub const ROUTE_SHARED_FAN_OUTS: &str = "vecrec_route_shared_fan_outs_total";
/// Shards that failed a call on every replica, by shard.
pub const ROUTE_SHARD_FAILED: &str = "vecrec_route_shard_failures_total";
/// Sliced Recommend calls answered from the router's previous front, a
/// shard not having swapped in the build its current front belongs to.
pub const ROUTE_PREVIOUS_FRONT: &str = "vecrec_route_previous_front_total";
/// Time for a shard's answer (retries and hedges included), by shard.
pub const ROUTE_SHARD_SECONDS: &str = "vecrec_route_shard_call_seconds";

/// One replica of a shard.
#[derive(Clone, Debug)]
struct Replica {
    addr: SocketAddr,
    client: Client,
}

/// One shard: its replica names, the replicas they resolve to, and when
/// each replica was last seen failing.
#[derive(Debug)]
struct Shard {
    index: usize,
    names: Vec<String>,
    replicas: RwLock<Vec<Replica>>,
    down_until: Mutex<HashMap<SocketAddr, Instant>>,
    next: AtomicUsize,
    /// Until when this shard is known to keep no events (its servers take
    /// no writes), so Recommend skips asking it.
    no_writes_until: Mutex<Option<Instant>>,
    /// Replicas that answered a write as followers of another's log, until
    /// one takes a write: their failures do not fail a write the writer took.
    followers: Mutex<std::collections::HashSet<SocketAddr>>,
    /// The last log record a write of this router to the shard was
    /// answered with: every call to the shard asks for it ([`ReadThrough`]).
    written: Arc<AtomicU64>,
}

impl Shard {
    /// Replicas in the order to try them: round-robin among those not
    /// marked down, then the ones marked down; with `writers_first`, the
    /// replicas known to follow another's log after the others.
    fn order(&self, writers_first: bool) -> Vec<Replica> {
        let all = self.replicas.read().clone();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        let now = Instant::now();
        let down = self.down_until.lock();
        let (mut up, mut out): (Vec<Replica>, Vec<Replica>) = all[start..]
            .iter()
            .chain(&all[..start])
            .cloned()
            .partition(|r| down.get(&r.addr).is_none_or(|t| *t <= now));
        up.append(&mut out);
        if writers_first {
            let followers = self.followers.lock();
            let (mut writers, mut rest): (Vec<Replica>, Vec<Replica>) =
                up.into_iter().partition(|r| !followers.contains(&r.addr));
            writers.append(&mut rest);
            return writers;
        }
        up
    }

    fn mark_down(&self, addr: SocketAddr, for_: Duration) {
        self.down_until.lock().insert(addr, Instant::now() + for_);
    }

    fn mark_up(&self, addr: SocketAddr) {
        self.down_until.lock().remove(&addr);
    }
}

/// The router's state, shared by its calls.
#[derive(Debug)]
struct Inner {
    shards: Vec<Shard>,
    cfg: RouteConfig,
    users: UserConfig,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    next_any: AtomicUsize,
    /// The hedges this router may still send (`route.hedge_budget`).
    hedges: HedgeBudget,
    /// The bound on requests in progress and waiting.
    admission: Arc<Admission>,
    /// The front generation of a partitioned hybrid build (`route.front`),
    /// swapped when its `CURRENT` moves.
    front: Option<Arc<EngineSlot>>,
    /// How often the front's `CURRENT` is checked (`server.reload_interval_ms`).
    reload: Duration,
    /// The experiments in force over Recommend (re-read on SIGHUP).
    experiments: Arc<Experiments>,
    /// Where served lists and feedback are logged (`route.exposure_root`).
    journal: Option<Arc<Journal>>,
}

/// The front tier: a `Recommender` over the shards of a partitioned index.
#[derive(Clone, Debug)]
pub struct Router {
    inner: Arc<Inner>,
}

/// Hedges a router may send: a token bucket where each shard call earns
/// `route.hedge_budget` of a hedge and a hedge spends one, holding at most
/// [`HedgeBudget::SAVED`] (full at start). Counted in thousandths of a
/// hedge, so ten calls at 0.1 earn exactly one.
#[derive(Debug)]
struct HedgeBudget {
    per_call: u32,
    tokens: Mutex<u32>,
}

impl HedgeBudget {
    /// One hedge, in the bucket's units.
    const ONE: u32 = 1000;
    /// Hedges saved at most, for a burst of slow calls.
    const SAVED: u32 = 10 * Self::ONE;

    /// `fraction` 0 or in [0.001, 1] (checked by the caller).
    fn new(fraction: f64) -> Self {
        let per_call = (fraction * f64::from(Self::ONE)).round() as u32;
        Self {
            per_call,
            tokens: Mutex::new(if per_call > 0 { Self::SAVED } else { 0 }),
        }
    }

    /// A shard call was made.
    fn earn(&self) {
        let mut t = self.tokens.lock();
        *t = (*t + self.per_call).min(Self::SAVED);
    }

    /// Whether a hedge may be sent now (and if so, it is paid for).
    fn spend(&self) -> bool {
        let mut t = self.tokens.lock();
        if *t >= Self::ONE {
            *t -= Self::ONE;
            true
        } else {
            false
        }
    }
}

/// Whether a failed call may succeed on another replica: the replica (or
/// the way to it) failed, not the request, or it has not read this
/// router's last write to the shard yet.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::DataLoss
    ) || behind(s)
}

/// How a shard that let its time pass fails.
fn did_not_answer(s: usize, budget: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "shard {s} did not answer within {} ms",
        budget.as_millis()
    ))
}

/// A replica's failure as the shard's: a call that ended by its own
/// timer (the channel enforces the grpc-timeout it sends) once the
/// shard's time had passed is the shard not answering in time, not a
/// replica's fault, whichever of the two timers woke the router first.
fn past_due(st: Status, late: bool, s: usize, budget: Duration) -> Status {
    if late && matches!(st.code(), Code::Cancelled | Code::DeadlineExceeded) {
        did_not_answer(s, budget)
    } else {
        st
    }
}

/// What a fan-out that ended once its answer was known
/// (`Router::everywhere`) says of the shards it did not wait for.
const NOT_AWAITED: &str = "not awaited: the answer was known without it";

/// Whether a shard declined a sliced call for a front it was not cut from.
fn other_front(s: &Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message().contains(crate::engine::OTHER_FRONT)
}

/// Whether a replica declined a call because it follows its shard's log
/// and has not read this router's last write to the shard yet.
fn behind(s: &Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message().starts_with(crate::live::BEHIND)
}

/// The time left before the caller's `grpc-timeout`, if it sent one.
fn client_deadline<R>(req: &Request<R>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// A sliced Recommend's request with what the router learnt of it before
/// the lists: the user's events since the build, the history's items
/// upserted since, and whether either could not be read.
struct Asked {
    r: pb::RecommendRequest,
    recorded: Vec<(String, f32)>,
    new: std::collections::HashSet<String>,
    opts: RecommendOptions,
    events_missing: bool,
    states_missing: bool,
}

/// Refuses experiments the router cannot run: without a front (the
/// content-only router sends Recommend on to every shard, which would each
/// serve and log a part of the list) or without an exposure root.
fn check_experiments(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.experiments.iter().any(|e| e.enabled) {
        return Ok(());
    }
    if cfg.route.front.is_none() {
        anyhow::bail!(
            "[[experiments]] through the router need route.front (--front): only the hybrid \
             Recommend of a partitioned build with training runs them; a --content-only build's \
             shards each answer a part of the list"
        );
    }
    if cfg.route.exposure_root.is_none() {
        anyhow::bail!(
            "[[experiments]] through the router need route.exposure_root (--exposure-root DIR): \
             a writable directory, one per router replica, for the log of what they serve"
        );
    }
    Ok(())
}

impl Router {
    /// A router over `cfg.route.shards` (resolved now, and again every
    /// `route.resolve_interval_ms` by [`Router::keep_resolving`]). Replicas
    /// are connected on first use. `config_file` is re-read for the
    /// experiments on SIGHUP.
    pub async fn new(
        cfg: &Config,
        config_file: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        let route = cfg.route.clone();
        check_experiments(cfg)?;
        if route.shards.is_empty() {
            anyhow::bail!(
                "no shards: give --shard host:port[,host:port...] once per shard, shard 0 first"
            );
        }
        if let Some(i) = route.shards.iter().position(Vec::is_empty) {
            anyhow::bail!("shard {i} has no replica");
        }
        if !(route.hedge_budget == 0.0 || (0.001..=1.0).contains(&route.hedge_budget)) {
            anyhow::bail!(
                "route.hedge_budget must be 0 (no hedges) or in [0.001, 1], got {}",
                route.hedge_budget
            );
        }
        if route.shard_timeout_ms == 0 {
            anyhow::bail!("route.shard_timeout_ms must be at least 1");
        }
        let shards = route
            .shards
            .iter()
            .enumerate()
            .map(|(index, names)| Shard {
                index,
                names: names.clone(),
                replicas: RwLock::new(Vec::new()),
                down_until: Mutex::new(HashMap::new()),
                next: AtomicUsize::new(0),
                no_writes_until: Mutex::new(None),
                followers: Mutex::default(),
                written: Arc::default(),
            })
            .collect();
        let admission = Admission::new(
            "route",
            route.max_in_flight,
            // The router waits on shards, not cores: no lower limit under overload.
            route.max_in_flight,
            cfg.server.max_queued_requests,
            None,
        );
        let front = match route.front.clone() {
            None => None,
            Some(root) => {
                let c = cfg.clone();
                let at = root.clone();
                // The front reads items' rows for a call's history and
                // candidates only: it is not read whole before serving.
                let engine = tokio::task::spawn_blocking(move || {
                    Engine::open_as(&at, c, None, crate::engine::Opening::Front)
                })
                .await??;
                if !engine.is_hybrid() {
                    anyhow::bail!(
                        "route.front {} holds no trained sources (or hybrid.enabled is false): \
                         give the front of a partitioned build with training",
                        engine.index().dir().display()
                    );
                }
                Some(Arc::new(
                    EngineSlot::new(&root, Arc::new(engine)).keeping_previous(),
                ))
            }
        };
        let journal = route
            .exposure_root
            .as_deref()
            .map(|d| Arc::new(Journal::new(d)));
        let experiments = Arc::new(Experiments::new(cfg, config_file)?);
        let hedge_budget = route.hedge_budget;
        let router = Router {
            inner: Arc::new(Inner {
                experiments,
                journal,
                front,
                reload: Duration::from_millis(cfg.server.reload_interval_ms),
                shards,
                cfg: route,
                users: cfg.users.clone(),
                channels: Mutex::new(HashMap::new()),
                next_any: AtomicUsize::new(0),
                hedges: HedgeBudget::new(hedge_budget),
                admission,
            }),
        };
        router.resolve().await?;
        Ok(router)
    }

    /// How many shards the catalogue is split into.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// A place for a call of `rpc` (due in `limit`), or `RESOURCE_EXHAUSTED`.
    async fn admit(&self, rpc: &'static str, limit: Option<Duration>) -> Result<Permit, Status> {
        let deadline = limit.map_or(Deadline::NONE, Deadline::after);
        Ok(self.inner.admission.admit(rpc, deadline).await?)
    }

    /// Looks every replica name up again; a name that does not resolve
    /// keeps the addresses it had (and is logged).
    async fn resolve(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        for shard in &inner.shards {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for name in &shard.names {
                match name.parse::<SocketAddr>() {
                    Ok(a) => addrs.push(a),
                    Err(_) => match tokio::net::lookup_host(name.as_str()).await {
                        Ok(found) => addrs.extend(found),
                        Err(e) => {
                            tracing::warn!(shard = shard.index, %name, error = %e, "cannot resolve a replica name; keeping its last addresses");
                            let old = shard.replicas.read();
                            addrs.extend(old.iter().map(|r| r.addr));
                        }
                    },
                }
            }
            addrs.sort();
            addrs.dedup();
            let replicas = addrs
                .into_iter()
                .map(|addr| {
                    Ok(Replica {
                        addr,
                        client: RecommenderClient::with_interceptor(
                            self.channel(addr)?,
                            ReadThrough {
                                written: shard.written.clone(),
                                shard: shard.index,
                            },
                        )
                        .max_decoding_message_size(64 << 20),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            *shard.replicas.write() = replicas;
        }
        Ok(())
    }

    /// Looks the replica names up every `route.resolve_interval_ms`, for as
    /// long as the process runs.
    pub async fn keep_resolving(self) {
        let every = Duration::from_millis(self.inner.cfg.resolve_interval_ms.max(100));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.resolve().await {
                tracing::warn!(error = %e, "resolving the replicas failed");
            }
        }
    }

    /// The (lazily connected, shared) channel to `addr`.
    fn channel(&self, addr: SocketAddr) -> anyhow::Result<Channel> {
        let mut channels = self.inner.channels.lock();
        if let Some(c) = channels.get(&addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(self.inner.cfg.connect_timeout_ms))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(addr, c.clone());
        Ok(c)
    }

    /// The shard's answer to `call`, from the first replica that gives one
    /// within the shard's time: retried on the next replica after a
    /// transport-level failure, hedged to a second after
    /// `route.hedge_after_ms`.
    async fn call<T, F, Fut>(&self, s: usize, limit: Option<Duration>, call: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Fn(Client, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        self.call_in_order(s, limit, call, false).await
    }

    /// [`Router::call`] for what changed since the build (an item, a
    /// user's events): replicas known to follow another's log are tried
    /// after the others, so a write the shard's writer has acknowledged is
    /// seen at once (a follower reads it up to `live.follow_interval_ms`
    /// later).
    async fn call_fresh<T, F, Fut>(
        &self,
        s: usize,
        limit: Option<Duration>,
        call: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Fn(Client, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        self.call_in_order(s, limit, call, true).await
    }

    async fn call_in_order<T, F, Fut>(
        &self,
        s: usize,
        limit: Option<Duration>,
        call: F,
        writers_first: bool,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Fn(Client, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let cfg = &self.inner.cfg;
        let shard = &self.inner.shards[s];
        let order = shard.order(writers_first);
        if order.is_empty() {
            return Err(Status::unavailable(format!(
                "shard {s} has no replica (none of {:?} resolved)",
                shard.names
            )));
        }
        let budget =
            Duration::from_millis(cfg.shard_timeout_ms).min(limit.unwrap_or(Duration::MAX));
        let started = Instant::now();
        let until = started + budget;
        let hedge = Duration::from_millis(cfg.hedge_after_ms);
        self.inner.hedges.earn();
        let mut hedge_denied = false;
        let mut tries: JoinSet<(SocketAddr, Result<Response<T>, Status>)> = JoinSet::new();
        let mut next = 0usize;
        let down_for = Duration::from_millis(cfg.down_for_ms);
        // Replicas asked and not answered yet: one that another replica
        // beat, or that let the deadline pass, is tried last for
        // `down_for`, so a hung replica costs one hedge a while, not one
        // every other call (a hang refuses nothing, so nothing else marks it).
        let mut pending: Vec<SocketAddr> = Vec::new();
        let launch = |tries: &mut JoinSet<_>, next: &mut usize, pending: &mut Vec<SocketAddr>| {
            let r = &order[*next];
            *next += 1;
            let left = until.saturating_duration_since(Instant::now());
            let fut = call(r.client.clone(), left);
            let addr = r.addr;
            pending.push(addr);
            tries.spawn(carried(async move { (addr, fut.await) }));
        };
        launch(&mut tries, &mut next, &mut pending);
        let mut last: Option<Status> = None;
        loop {
            let can_hedge = cfg.hedge_after_ms > 0 && next < order.len() && !hedge_denied;
            tokio::select! {
                done = tries.join_next() => {
                    let Some(done) = done else {
                        // Nothing in flight and nothing left to try.
                        break;
                    };
                    let (addr, result) = match done {
                        Ok(x) => x,
                        Err(e) => return Err(Status::internal(format!("a call to shard {s} panicked: {e}"))),
                    };
                    pending.retain(|a| *a != addr);
                    match result {
                        Ok(r) => {
                            shard.mark_up(addr);
                            for slow in &pending {
                                shard.mark_down(*slow, down_for);
                            }
                            metrics::histogram!(ROUTE_SHARD_SECONDS, "shard" => s.to_string())
                                .record(started.elapsed().as_secs_f64());
                            return Ok(r.into_inner());
                        }
                        Err(st) if retryable(&st) => {
                            // Past the deadline, a replica is marked down as
                            // the deadline's own branch below marks it,
                            // whichever timer woke the router first.
                            let late = Instant::now() >= until;
                            if late || matches!(st.code(), Code::Unavailable | Code::Unknown | Code::Internal) {
                                shard.mark_down(addr, down_for);
                            }
                            tracing::debug!(shard = s, %addr, status = %st, "a replica failed a call");
                            last = Some(past_due(st, late, s, budget));
                            if next < order.len() && Instant::now() < until {
                                metrics::counter!(ROUTE_RETRIES, "shard" => s.to_string()).increment(1);
                                launch(&mut tries, &mut next, &mut pending);
                            } else if tries.is_empty() {
                                break;
                            }
                        }
                        Err(st) => return Err(st),
                    }
                }
                _ = tokio::time::sleep(hedge), if can_hedge => {
                    if self.inner.hedges.spend() {
                        metrics::counter!(ROUTE_HEDGES, "shard" => s.to_string()).increment(1);
                        launch(&mut tries, &mut next, &mut pending);
                    } else {
                        metrics::counter!(ROUTE_HEDGES_DENIED, "shard" => s.to_string()).increment(1);
                        hedge_denied = true;
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {
                    last = Some(did_not_answer(s, budget));
                    for slow in &pending {
                        shard.mark_down(*slow, down_for);
                    }
                    break;
                }
            }
        }
        tries.abort_all();
        metrics::counter!(ROUTE_SHARD_FAILED, "shard" => s.to_string()).increment(1);
        let last = last.unwrap_or_else(|| Status::unavailable("no replica answered"));
        // No replica has read the router's last write to the shard (its
        // writer down): the shard is unavailable, not the request wrong.
        let code = if behind(&last) {
            Code::Unavailable
        } else {
            last.code()
        };
        Err(Status::new(
            code,
            format!(
                "shard {s}: every replica failed; the last said: {}",
                last.message()
            ),
        ))
    }

    /// `call` on every shard at once; each shard's answer or failure, in
    /// shard order. The fan-out ends early, the shards not awaited then
    /// reading [`NOT_AWAITED`], once its answer is known:
    /// - a shard answered a request error (not [`retryable`]), which every
    ///   shard would answer, so it is the answer;
    /// - under `route.on_missing_shard = "fail"`, a shard failed and
    ///   another answered, so the request was good and the answer is
    ///   `UNAVAILABLE` whatever the rest say.
    async fn everywhere<T, F, Fut>(
        &self,
        limit: Option<Duration>,
        call: F,
    ) -> Vec<Result<T, Status>>
    where
        T: Send + 'static,
        F: Fn(Client, Duration) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let mut set = JoinSet::new();
        let mut shard_of_task = HashMap::new();
        for s in 0..self.shards() {
            let me = self.clone();
            let call = call.clone();
            let task = set.spawn(carried(async move { me.call(s, limit, call).await }));
            shard_of_task.insert(task.id(), s);
        }
        let fail_fast = self.inner.cfg.on_missing_shard == MissingShard::Fail;
        let mut out: Vec<Option<Result<T, Status>>> = (0..self.shards()).map(|_| None).collect();
        let (mut answered, mut failed) = (false, false);
        while let Some(done) = set.join_next_with_id().await {
            let (s, r) = match done {
                Ok((id, r)) => (shard_of_task[&id], r),
                Err(e) => {
                    tracing::error!(error = %e, "a shard call panicked");
                    let s = shard_of_task[&e.id()];
                    (
                        s,
                        Err(Status::internal(format!("a call to shard {s} panicked"))),
                    )
                }
            };
            let request_error = matches!(&r, Err(st) if !retryable(st));
            answered |= r.is_ok();
            failed |= matches!(&r, Err(st) if retryable(st));
            out[s] = Some(r);
            if request_error || (fail_fast && answered && failed) {
                set.abort_all();
                break;
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::cancelled(NOT_AWAITED))))
            .collect()
    }

    /// `call` on one shard, any: the next in turn, then the others.
    async fn anywhere<T, F, Fut>(&self, limit: Option<Duration>, call: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Fn(Client, Duration) -> Fut + Clone,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let n = self.shards();
        let start = self.inner.next_any.fetch_add(1, Ordering::Relaxed) % n;
        let mut last = Status::unavailable("no shard");
        for s in (start..n).chain(0..start) {
            match self.call(s, limit, call.clone()).await {
                Ok(r) => return Ok(r),
                Err(st) if retryable(&st) => last = st,
                Err(st) => return Err(st),
            }
        }
        Err(last)
    }

    /// The shards' lists merged into the best `k`, and whether a shard was
    /// missing; a request error (the same on every shard) is returned as is.
    fn merge(
        &self,
        rpc: &'static str,
        answers: Vec<Result<Vec<pb::ScoredItem>, Status>>,
        k: u32,
    ) -> Result<(Vec<pb::ScoredItem>, bool), Status> {
        let k = if k == 0 { 10 } else { k as usize };
        let partial = self.check_missing(rpc, &answers)?;
        let mut items: Vec<pb::ScoredItem> = answers.into_iter().flatten().flatten().collect();
        items.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        items.dedup_by(|a, b| a.item_id == b.item_id);
        items.truncate(k);
        Ok((items, partial))
    }

    /// Whether some shard's answer is missing (`partial`), or the error to
    /// answer: a request error (the same on every shard) as is, `UNAVAILABLE`
    /// when every shard is missing or `route.on_missing_shard` is `fail`.
    fn check_missing<T>(
        &self,
        rpc: &'static str,
        answers: &[Result<T, Status>],
    ) -> Result<bool, Status> {
        let partial = self.shards_missing(answers)?;
        if partial {
            metrics::counter!(ROUTE_PARTIAL, "rpc" => rpc).increment(1);
        }
        Ok(partial)
    }

    /// [`Router::check_missing`] without counting the partial answer (for
    /// a call whose answer is made of several fan-outs).
    fn shards_missing<T>(&self, answers: &[Result<T, Status>]) -> Result<bool, Status> {
        let mut missing = Vec::new();
        for (s, a) in answers.iter().enumerate() {
            match a {
                Ok(_) => {}
                Err(st) if retryable(st) => missing.push((s, st)),
                Err(st) => return Err(st.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(false);
        }
        let all = missing.len() == self.shards();
        if all || self.inner.cfg.on_missing_shard == MissingShard::Fail {
            // Name a shard that failed, not one left when it did.
            let failed = missing
                .iter()
                .position(|(_, st)| st.message() != NOT_AWAITED)
                .unwrap_or(0);
            let all = all && missing.iter().all(|(_, st)| st.message() != NOT_AWAITED);
            let (s, st) = missing.swap_remove(failed);
            return Err(Status::unavailable(format!(
                "shard {s} has no live replica ({}){}",
                st.message(),
                if all {
                    ", nor has any other shard"
                } else {
                    "; route.on_missing_shard = \"fail\""
                }
            )));
        }
        Ok(true)
    }

    /// `Recommend` over a partitioned hybrid build: the user's side on the
    /// front generation, each source's lists from every shard
    /// (`ShardSources`), merged, reranked and fused on the front as one
    /// node does; under an experiment with the arm's settings (in
    /// interleaving, both arms' lists joined), logged in the journal.
    async fn recommend_sliced(
        &self,
        front: Arc<Engine>,
        r: pb::RecommendRequest,
        limit: Option<Duration>,
    ) -> Result<pb::RecommendResponse, Status> {
        let started = Instant::now();
        let deadline = limit.map_or(Deadline::NONE, Deadline::after);
        // What is left of the caller's time.
        let left = || {
            deadline
                .instant()
                .map(|t| t.saturating_duration_since(Instant::now()))
        };
        // The checks one node makes, under the front's limits.
        crate::grpc::validate::recommend(&front.config().limits, &r)?;
        let plan = self.inner.experiments.plan(&r.user_id, &r.force_arm)?;
        let opts = RecommendOptions {
            fusion: crate::grpc::convert::fusion_method(r.fusion)?,
            k: r.k as usize,
            include_seen: r.include_seen,
            filter: crate::grpc::convert::to_filter(r.filter.clone())?,
            deadline,
        };
        // A stored user's events since the build, from the shard that keeps them.
        let (mut recorded, events_missing) = if r.history.is_empty() && !r.user_id.trim().is_empty()
        {
            match self.user_events(&r.user_id, limit).await {
                Ok(events) => (events, false),
                Err(st)
                    if retryable(&st) && self.inner.cfg.on_missing_shard != MissingShard::Fail =>
                {
                    tracing::debug!(status = %st, "answering without the user's recorded events");
                    (Vec::new(), true)
                }
                Err(st) => {
                    return Err(Status::new(
                        st.code(),
                        format!("the user's recorded events: {}", st.message()),
                    ))
                }
            }
        } else {
            (Vec::new(), false)
        };
        // What the history's items (or the events') have become on their
        // shards since the build, so they count as on one node: an explicit
        // history naming an item deleted since is NOT_FOUND, one upserted
        // since is left out; an event on an item deleted since is dropped.
        let mut new = std::collections::HashSet::new();
        let batch = front.config().limits.max_batch;
        let mut states_missing = false;
        if !r.history.is_empty() {
            let (states, missing) = self.item_states(&r.history, batch, left()).await;
            states_missing = missing;
            for id in &r.history {
                match states.get(id) {
                    Some(pb::ItemState::Deleted | pb::ItemState::Unknown) => {
                        return Err(Status::from(crate::error::Error::NotFound {
                            kind: "item",
                            id: id.clone(),
                        }))
                    }
                    Some(pb::ItemState::New) => {
                        new.insert(id.clone());
                    }
                    Some(pb::ItemState::Built) | None => {}
                }
            }
        } else if !recorded.is_empty() {
            let ids: Vec<String> = recorded.iter().map(|e| e.0.clone()).collect();
            let (states, missing) = self.item_states(&ids, batch, left()).await;
            states_missing = missing;
            // As one node: events on items deleted since are skipped.
            recorded.retain(|(id, _)| states.get(id) != Some(&pb::ItemState::Deleted));
        }
        let request_id = crate::experiment::request_id();
        let user = r.user_id.clone();
        let asked = Arc::new(Asked {
            r,
            recorded,
            new,
            opts,
            events_missing,
            states_missing,
        });
        let list = |engine: Arc<Engine>| self.sliced_list(engine, asked.clone());
        let arm = |p: &Plan, arm: usize| Arc::new(p.variant(&front, arm));
        let (served, partial) = match &plan {
            None => {
                let (items, partial) = list(front.clone()).await?;
                (experiments::plain(items), partial)
            }
            Some(p) if !p.interleaves() => {
                let (items, partial) = list(arm(p, p.arm)).await?;
                (experiments::plain(items), partial)
            }
            Some(p) => {
                let ((control, a), (treatment, b)) = self
                    .sliced_pair(arm(p, 0), arm(p, 1), asked.clone())
                    .await?;
                let mixed =
                    experiments::interleave(&p.experiment, &control, &treatment, &request_id);
                (mixed, a || b)
            }
        };
        let partial = partial || asked.events_missing || asked.states_missing;
        if partial {
            metrics::counter!(ROUTE_PARTIAL, "rpc" => "Recommend").increment(1);
        }
        let items = crate::grpc::convert::served_items(&front, served);
        let (experiment, arm) = plan.as_ref().map(Plan::names).unwrap_or_default();
        if let (Some(p), Some(j)) = (&plan, &self.inner.journal) {
            j.served(
                p,
                &request_id,
                &user,
                items.iter().map(|s| (s.item_id.as_str(), s.arm.as_str())),
                started,
            );
        }
        Ok(pb::RecommendResponse {
            items,
            request_id,
            experiment,
            arm,
            partial,
        })
    }

    /// One list of a sliced Recommend, as `engine` (the front, or an arm's
    /// variant of it) serves `asked`: the user's side, every shard's source
    /// lists, merged, reranked and fused; `true` beside it when a shard had
    /// no live replica.
    async fn sliced_list(
        &self,
        engine: Arc<Engine>,
        asked: Arc<Asked>,
    ) -> Result<(Vec<crate::engine::Scored>, bool), Status> {
        let (q, msg) = self.sliced_query(engine.clone(), asked.clone()).await?;
        let (lists, partial) = self.shard_lists(msg, asked.opts.deadline).await?;
        let items = sliced_answer(engine, q, &lists, asked.opts.deadline).await?;
        Ok((items, partial))
    }

    /// The two lists of an interleaved sliced Recommend, as `control` and
    /// `treatment` serve `asked`. The shards are asked once when both arms
    /// would send them the same request (arms that differ only in fusion or
    /// reranking), and once per arm otherwise, concurrently.
    async fn sliced_pair(
        &self,
        control: Arc<Engine>,
        treatment: Arc<Engine>,
        asked: Arc<Asked>,
    ) -> Result<(SlicedList, SlicedList), Status> {
        let deadline = asked.opts.deadline;
        let ((q0, m0), (q1, m1)) = tokio::try_join!(
            self.sliced_query(control.clone(), asked.clone()),
            self.sliced_query(treatment.clone(), asked.clone())
        )?;
        if m0 == m1 {
            metrics::counter!(ROUTE_SHARED_FAN_OUTS).increment(1);
            let (lists, partial) = self.shard_lists(m0, deadline).await?;
            let (x, y) = tokio::try_join!(
                sliced_answer(control, q0, &lists, deadline),
                sliced_answer(treatment, q1, &lists, deadline)
            )?;
            return Ok(((x, partial), (y, partial)));
        }
        let ((l0, a), (l1, b)) = tokio::try_join!(
            self.shard_lists(m0, deadline),
            self.shard_lists(m1, deadline)
        )?;
        let (x, y) = tokio::try_join!(
            sliced_answer(control, q0, &l0, deadline),
            sliced_answer(treatment, q1, &l1, deadline)
        )?;
        Ok(((x, a), (y, b)))
    }

    /// The user's side of a sliced Recommend on `engine`, and the request
    /// every shard is sent for it.
    async fn sliced_query(
        &self,
        engine: Arc<Engine>,
        asked: Arc<Asked>,
    ) -> Result<(FrontQuery, Arc<pb::ShardSourcesRequest>), Status> {
        let events_missing = asked.events_missing;
        let a = asked.clone();
        let q = tokio::task::spawn_blocking(move || {
            let r = &a.r;
            let who = if !r.history.is_empty() {
                UserRef::History(&r.history)
            } else if !r.user_id.trim().is_empty() {
                UserRef::Id(&r.user_id)
            } else {
                return Err(crate::error::Error::invalid(
                    "give a user_id or a non-empty history",
                ));
            };
            engine.front_query(who, &a.recorded, &a.new, &a.opts)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            // The user may exist only through events the router could not read.
            crate::error::Error::NotFound { kind: "user", id } if events_missing => {
                Status::unavailable(format!(
                    "user {id:?} is not in the build, and the shard that keeps its recorded \
                     events has no live replica"
                ))
            }
            e => Status::from(e),
        })?;
        let msg = Arc::new(pb::ShardSourcesRequest {
            history: q.shard.history.clone(),
            inputs: q
                .shard
                .inputs
                .iter()
                .map(|(s, v)| pb::SourceInput {
                    source: s.name().to_owned(),
                    vector: v.clone(),
                })
                .collect(),
            exclude: q.shard.exclude.clone(),
            filter: asked.r.filter.clone(),
            front_generation: q.shard.front_generation.clone(),
            front_ids: q.shard.front_ids.clone(),
            candidates: q.shard.candidates as u32,
            ease_decay: q.shard.ease_decay,
            transitions_decay: q.shard.transitions_decay,
        });
        Ok((q, msg))
    }

    /// Every shard's source lists for `msg`, in the order the shards
    /// answered; `true` beside them when a shard had no live replica.
    async fn shard_lists(
        &self,
        msg: Arc<pb::ShardSourcesRequest>,
        deadline: Deadline,
    ) -> Result<(Vec<pb::SourceItems>, bool), Status> {
        // What is left of the caller's time after the user's side.
        let left = deadline
            .instant()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let answers = self
            .everywhere(left, move |mut c: Client, left| {
                let m = due((*msg).clone(), left);
                async move { c.shard_sources(m).await }
            })
            .await;
        let partial = self.shards_missing(&answers)?;
        let lists = answers
            .into_iter()
            .flatten()
            .flat_map(|a| a.lists)
            .collect();
        Ok((lists, partial))
    }

    /// The shard that owns item `id`, and keeps the events of user `id`.
    fn owner(&self, id: &str) -> usize {
        shard_of(id, self.shards())
    }

    /// The events recorded for `user` since the build (item id and weight,
    /// oldest first), from the shard that keeps them. A shard whose servers
    /// take no writes (`[live] enabled = false`) answers
    /// `FAILED_PRECONDITION`, and is not asked again for
    /// `route.resolve_interval_ms`: it keeps no events, so the hop is saved.
    async fn user_events(
        &self,
        user: &str,
        limit: Option<Duration>,
    ) -> Result<Vec<(String, f32)>, Status> {
        let s = self.owner(user);
        if self.takes_no_writes(s) {
            return Ok(Vec::new());
        }
        let user = user.to_owned();
        let r = self
            .call_fresh(s, limit, move |mut c: Client, left| {
                let q = due(
                    pb::UserEventsRequest {
                        user_id: user.clone(),
                    },
                    left,
                );
                async move { c.user_events(q).await }
            })
            .await;
        match r {
            Ok(r) => Ok(r
                .events
                .into_iter()
                .map(|e| (e.item_id, e.weight))
                .collect()),
            // An older shard without the call keeps no events either.
            Err(st) if matches!(st.code(), Code::FailedPrecondition | Code::Unimplemented) => {
                self.no_writes(s, &st);
                Ok(Vec::new())
            }
            Err(st) => Err(st),
        }
    }

    /// Whether shard `s` answered lately that it takes no writes (its
    /// servers run with `[live] enabled = false`): nothing changes there
    /// since the build, so it keeps no events and its items are as built.
    fn takes_no_writes(&self, s: usize) -> bool {
        self.inner.shards[s]
            .no_writes_until
            .lock()
            .is_some_and(|t| Instant::now() < t)
    }

    /// Records that shard `s` answered `st` (`FAILED_PRECONDITION`, or
    /// `UNIMPLEMENTED` from an older version) to a call about what changed
    /// since the build: it is not asked again for `route.resolve_interval_ms`.
    fn no_writes(&self, s: usize, st: &Status) {
        let every = Duration::from_millis(self.inner.cfg.resolve_interval_ms.max(100));
        *self.inner.shards[s].no_writes_until.lock() = Some(Instant::now() + every);
        tracing::debug!(shard = s, status = %st, "the shard takes no writes");
    }

    /// What each of `ids` has become since the build (`ItemStates`), asked
    /// of their owners at once, in batches of `batch`. A shard that takes
    /// no writes is not asked (its items are as built), and the items of a
    /// shard that does not answer are left out (the caller keeps the
    /// front's view of them); `true` beside the states when a shard that
    /// takes writes did not answer, so the answer may differ from one
    /// node's (`partial`).
    async fn item_states(
        &self,
        ids: &[String],
        batch: usize,
        limit: Option<Duration>,
    ) -> (HashMap<String, pb::ItemState>, bool) {
        let mut by_shard: HashMap<usize, Vec<String>> = HashMap::new();
        let mut asked = std::collections::HashSet::new();
        for id in ids.iter().filter(|id| asked.insert(id.as_str())) {
            by_shard.entry(self.owner(id)).or_default().push(id.clone());
        }
        let mut set = JoinSet::new();
        for (s, ids) in by_shard {
            if self.takes_no_writes(s) {
                continue;
            }
            for part in ids.chunks(batch.max(1)) {
                let me = self.clone();
                let part = part.to_vec();
                set.spawn(carried(async move {
                    let ask = part.clone();
                    let r = me
                        .call_fresh(s, limit, move |mut c: Client, left| {
                            let q = due(
                                pb::ItemStatesRequest {
                                    item_ids: ask.clone(),
                                },
                                left,
                            );
                            async move { c.item_states(q).await }
                        })
                        .await;
                    (s, part, r)
                }));
            }
        }
        let mut out = HashMap::new();
        let mut missing = false;
        while let Some(done) = set.join_next().await {
            let Ok((s, ids, r)) = done else {
                missing = true;
                continue;
            };
            match r {
                // A state this version does not know counts as no answer.
                Ok(r) => out.extend(
                    ids.into_iter()
                        .zip(r.states)
                        .filter_map(|(id, x)| Some((id, pb::ItemState::try_from(x).ok()?))),
                ),
                Err(st) if st.code() == Code::FailedPrecondition => self.no_writes(s, &st),
                // An older shard without the call: the front's view stands
                // (its events, if it keeps any, are still asked for).
                Err(st) if st.code() == Code::Unimplemented => {
                    tracing::debug!(shard = s, status = %st, "the shard does not answer ItemStates")
                }
                Err(st) => {
                    missing = true;
                    if retryable(&st) {
                        tracing::debug!(shard = s, status = %st, "item states unanswered")
                    } else {
                        tracing::warn!(shard = s, status = %st, "item states refused")
                    }
                }
            }
        }
        (out, missing)
    }

    /// `RecordEvents` over a partitioned hybrid build: the events checked
    /// (as one node checks them, under `front`'s limits, and each item
    /// asked of its owner), then written to every replica of the shards
    /// that keep their users.
    async fn record_routed(
        &self,
        front: Arc<Engine>,
        mut events: Vec<pb::Event>,
        session: Option<&[u64]>,
        limit: Option<Duration>,
    ) -> Result<(pb::RecordEventsResponse, Vec<u64>), Status> {
        // The checks one node makes, under the front's limits.
        front.check_batch("events", events.len())?;
        let limits = &front.config().limits;
        for (k, e) in events.iter().enumerate() {
            crate::grpc::validate::event(limits, k, e)?;
        }
        // Each item must exist now, as on one node: its owner knows (it may
        // have been upserted or deleted since the build).
        let mut distinct: Vec<(usize, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, e) in events.iter().enumerate() {
            if seen.insert(e.item_id.as_str()) {
                distinct.push((k, e.item_id.clone()));
            }
        }
        let mut checks = JoinSet::new();
        for (k, id) in distinct {
            let me = self.clone();
            checks.spawn(carried(async move {
                let r = me.owned_item(&id, false, limit).await;
                (k, r)
            }));
        }
        while let Some(done) = checks.join_next().await {
            let (k, r) = done.map_err(|e| Status::internal(e.to_string()))?;
            if let Err(st) = r {
                return Err(Status::new(
                    st.code(),
                    format!("events[{k}].item_id: {}", st.message()),
                ));
            }
        }
        // Every replica must store the same event: defaults are filled here.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Feedback (an event naming the list it acts on) is logged here,
        // once, and the shards get the event without it.
        let mut feedback = Vec::new();
        for e in &mut events {
            if e.timestamp == 0 {
                e.timestamp = now;
            }
            if e.weight == 0.0 {
                e.weight = 1.0;
            }
            if self.inner.journal.is_some() {
                feedback.extend(crate::grpc::feedback(e));
            }
            e.request_id.clear();
        }
        let (recorded, sequence, wrote) = self
            .write_everywhere(
                events,
                |e: &pb::Event| e.user_id.as_str(),
                session,
                limit,
                |mut c: Client, events: Request<Vec<pb::Event>>| async move {
                    c.record_events(events.map(|events| pb::RecordEventsRequest { events }))
                        .await
                },
                "events are not idempotent: a retry records them again on the replicas that \
                 took them",
            )
            .await?;
        // Only acknowledged events become feedback, as on one node.
        if let Some(j) = &self.inner.journal {
            for f in feedback {
                j.record(f);
            }
        }
        Ok((pb::RecordEventsResponse { recorded, sequence }, wrote))
    }

    /// The caller's session ([`WRITTEN_HEADER`]), if it sent one; refused
    /// when it is not one number per shard of this router.
    fn seen<R>(&self, req: &Request<R>) -> Result<Option<Arc<[u64]>>, Status> {
        let Some(v) = req.metadata().get(WRITTEN_HEADER) else {
            return Ok(None);
        };
        let bad = |why: String| {
            Status::invalid_argument(format!(
                "{WRITTEN_HEADER}: {why}; send back the value a write through a router of this \
                 deployment answered with"
            ))
        };
        let text = v.to_str().map_err(|_| bad("not text".into()))?;
        let seen = text
            .split(',')
            .map(|n| n.trim().parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| bad(format!("{text:?} is not log record numbers joined by ','")))?;
        if seen.len() != self.shards() {
            return Err(bad(format!(
                "it names {} shards; this router routes {}",
                seen.len(),
                self.shards()
            )));
        }
        Ok(Some(seen.into()))
    }

    /// `SearchVector` on every shard, merged.
    async fn search_everywhere(
        &self,
        rpc: &'static str,
        req: pb::SearchVectorRequest,
        limit: Option<Duration>,
    ) -> Result<(Vec<pb::ScoredItem>, bool), Status> {
        let k = req.k;
        let req = Arc::new(req);
        let answers = self
            .everywhere(limit, move |mut c: Client, left| {
                let r = due((*req).clone(), left);
                async move { c.search_vector(r).await }
            })
            .await;
        let answers = answers.into_iter().map(|a| a.map(|r| r.items)).collect();
        self.merge(rpc, answers, k)
    }

    /// The stored vector of item `id`, from the shard that owns it.
    async fn item_vector(&self, id: &str, limit: Option<Duration>) -> Result<Vec<f32>, Status> {
        Ok(self.owned_item(id, true, limit).await?.vector)
    }

    /// Item `id` as the shard that owns it holds it now (`NOT_FOUND` once
    /// deleted), with its vector if `with_vector`.
    async fn owned_item(
        &self,
        id: &str,
        with_vector: bool,
        limit: Option<Duration>,
    ) -> Result<pb::GetItemResponse, Status> {
        let id = id.to_owned();
        self.call_fresh(self.owner(&id), limit, move |mut c: Client, left| {
            let r = due(
                pb::GetItemRequest {
                    id: id.clone(),
                    with_vector,
                },
                left,
            );
            async move { c.get_item(r).await }
        })
        .await
    }

    /// A write of `items` sent to every replica of the shards that own
    /// them (by the id `id` reads: an item's, or for events the user's),
    /// each due within `route.shard_timeout_ms` or the caller's shorter
    /// `limit`; `send` makes one shard's request, and `on_retry` tells the
    /// caller what retrying a write some replicas did not take does.
    /// Returns the sum of the shards' counts, the largest sequence, and
    /// each shard's (0 for a shard not written). An error after some
    /// shards took their part carries the session (`seen`, the caller's,
    /// with those parts) as [`WRITTEN_HEADER`], as a whole write's answer
    /// does.
    async fn write_everywhere<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        id: fn(&I) -> &str,
        seen: Option<&[u64]>,
        limit: Option<Duration>,
        send: F,
        on_retry: &str,
    ) -> Result<(u32, u64, Vec<u64>), Status>
    where
        I: Clone + Send + 'static,
        T: Send + 'static,
        F: Fn(Client, Request<Vec<I>>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
        T: WriteAnswer,
    {
        let mut by_shard: Vec<Vec<I>> = vec![Vec::new(); self.shards()];
        for it in items {
            let s = self.owner(id(&it));
            by_shard[s].push(it);
        }
        // Every shard written must have replicas before any part is sent,
        // so this refusal leaves nothing written.
        let mut targets = Vec::new();
        for (s, part) in by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
        {
            let replicas = self.inner.shards[s].replicas.read().clone();
            if replicas.is_empty() {
                return Err(Status::unavailable(format!(
                    "shard {s} has no replica to write to; nothing was written"
                )));
            }
            targets.push((s, part, replicas));
        }
        let mut set = JoinSet::new();
        for (s, part, replicas) in targets {
            let budget = Duration::from_millis(self.inner.cfg.shard_timeout_ms)
                .min(limit.unwrap_or(Duration::MAX));
            for r in replicas {
                let fut = send(r.client.clone(), due(part.clone(), budget));
                set.spawn(async move { (s, r.addr, fut.await) });
            }
        }
        let mut count: HashMap<usize, u32> = HashMap::new();
        let mut seq = 0u64;
        let mut wrote = vec![0u64; self.shards()];
        let mut failed: Vec<(usize, SocketAddr, Status)> = Vec::new();
        let mut followers: HashMap<usize, usize> = HashMap::new();
        while let Some(done) = set.join_next().await {
            let (s, addr, r) =
                done.map_err(|e| Status::internal(format!("a write panicked: {e}")))?;
            let known = &self.inner.shards[s].followers;
            match r {
                Ok(r) => {
                    let (n, q) = r.into_inner().counts();
                    count.insert(s, n);
                    seq = seq.max(q);
                    wrote[s] = wrote[s].max(q);
                    known.lock().remove(&addr);
                    self.inner.shards[s].written.fetch_max(q, Ordering::AcqRel);
                }
                // A replica that follows the log its shard's writer keeps
                // (one root shared by the replicas): it reads the write
                // from that log. (One behind this router's last write
                // declines before it sees the call is a write.)
                Err(st)
                    if st.code() == tonic::Code::FailedPrecondition
                        && (st.message().starts_with(crate::live::FOLLOWER) || behind(&st)) =>
                {
                    known.lock().insert(addr);
                    *followers.entry(s).or_default() += 1;
                }
                // One known to follow that failed now (down, overloaded):
                // it would only have declined.
                Err(st) if known.lock().contains(&addr) => {
                    tracing::debug!(shard = s, %addr, status = %st, "a follower did not answer a write");
                    *followers.entry(s).or_default() += 1;
                }
                Err(st) => {
                    tracing::warn!(shard = s, %addr, status = %st, "a replica did not take a write");
                    failed.push((s, addr, st));
                }
            }
        }
        let mut took: Vec<usize> = count.keys().copied().collect();
        took.sort_unstable();
        let took = if took.is_empty() {
            "no shard took its part".to_owned()
        } else {
            format!("shards {took:?} took their part")
        };
        let failed = match failed.into_iter().next() {
            Some((s, addr, st)) => Some(Status::new(
                st.code(),
                format!(
                    "replica {addr} of shard {s} did not take the write ({}); other replicas \
                     that take writes may have, and {took}: {on_retry}",
                    st.message()
                ),
            )),
            // Every replica that answered follows: the writer is down.
            None => followers
                .iter()
                .find(|(s, _)| !count.contains_key(s))
                .map(|(s, n)| {
                    Status::unavailable(format!(
                        "no replica of shard {s} takes writes: its {n} replicas that answered \
                         follow the log of a writer that is down or not ready, and {took}: \
                         {on_retry}"
                    ))
                }),
        };
        match failed {
            // The parts that were taken are acknowledged to nobody but
            // stay: the caller's session names them, so it reads them
            // through any router as it would a whole write.
            Some(mut st) => {
                if wrote.iter().any(|&q| q > 0) {
                    if let Ok(v) = written_after(seen, &wrote).parse() {
                        st.metadata_mut().insert(WRITTEN_HEADER, v);
                    }
                }
                Err(st)
            }
            None => Ok((count.values().sum(), seq, wrote)),
        }
    }
}

/// One list of a sliced Recommend, and whether a shard was missing from it.
type SlicedList = (Vec<crate::engine::Scored>, bool);

/// The answer of `engine` to its query `q` over the shards' `lists`:
/// merged per source, reranked and fused on the front.
async fn sliced_answer(
    engine: Arc<Engine>,
    q: FrontQuery,
    lists: &[pb::SourceItems],
    deadline: Deadline,
) -> Result<Vec<crate::engine::Scored>, Status> {
    let mut merged: Vec<Vec<(u32, f32)>> = vec![Vec::new(); q.sources.len()];
    for l in lists {
        let Some(at) = q.sources.iter().position(|s| s.name() == l.source) else {
            continue;
        };
        merged[at].extend(l.items.iter().copied().zip(l.scores.iter().copied()));
    }
    Ok(
        tokio::task::spawn_blocking(move || engine.front_answer(&q, merged, deadline))
            .await
            .map_err(|e| Status::internal(e.to_string()))??,
    )
}

/// What a write call answers: how many it took, and its log sequence.
trait WriteAnswer {
    fn counts(&self) -> (u32, u64);
}

impl WriteAnswer for pb::UpsertItemsResponse {
    fn counts(&self) -> (u32, u64) {
        (self.upserted, self.sequence)
    }
}

impl WriteAnswer for pb::DeleteItemsResponse {
    fn counts(&self) -> (u32, u64) {
        (self.deleted, self.sequence)
    }
}

impl WriteAnswer for pb::RecordEventsResponse {
    fn counts(&self) -> (u32, u64) {
        (self.recorded, self.sequence)
    }
}

/// What retrying an item write does.
const ITEM_WRITES_RETRY: &str = "retry the whole call (item writes are idempotent)";

/// Counts and times one routed call, as the server does for its own.
fn observed<T>(rpc: &'static str, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
    crate::grpc::observe(rpc, started, r.as_ref().err());
    r
}

/// `msg` as a request due in `left` (sent as its grpc-timeout).
fn due<Q>(msg: Q, left: Duration) -> Request<Q> {
    let mut r = Request::new(msg);
    r.set_timeout(left);
    r
}

#[tonic::async_trait]
impl Recommender for Router {
    async fn recommend(
        &self,
        req: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let r = req.into_inner();
        let result = in_session(seen, async {
            let _place = self.admit("Recommend", limit).await?;
            if let Some(front) = &self.inner.front {
                return match self.recommend_sliced(front.get(), r.clone(), limit).await {
                    // A shard has not swapped in the build the front has:
                    // the front it replaced answers, as every shard still
                    // serves its slices for a while.
                    Err(st) if other_front(&st) => match front.previous() {
                        Some(before) => {
                            metrics::counter!(ROUTE_PREVIOUS_FRONT).increment(1);
                            let left = limit.map(|l| l.saturating_sub(started.elapsed()));
                            self.recommend_sliced(before, r, left).await
                        }
                        None => Err(st),
                    },
                    answer => answer,
                };
            }
            if r.history.is_empty() {
                if r.user_id.trim().is_empty() {
                    return Err(Status::invalid_argument(
                        "give a user_id or a non-empty history",
                    ));
                }
                let k = r.k;
                let req = Arc::new(r);
                let answers = self
                    .everywhere(limit, move |mut c: Client, left| {
                        let q = due((*req).clone(), left);
                        async move { c.recommend(q).await }
                    })
                    .await;
                let first = answers
                    .iter()
                    .find_map(|a| a.as_ref().ok())
                    .map(|a| (a.request_id.clone(), a.experiment.clone(), a.arm.clone()));
                let lists = answers.into_iter().map(|a| a.map(|r| r.items)).collect();
                let (items, partial) = self.merge("Recommend", lists, k)?;
                let (request_id, experiment, arm) = first.unwrap_or_default();
                return Ok(pb::RecommendResponse {
                    items,
                    request_id,
                    experiment,
                    arm,
                    partial,
                });
            }
            // An explicit history: its profile, made here from the owners' rows.
            let mut set = JoinSet::new();
            for (i, id) in r.history.iter().enumerate() {
                let me = self.clone();
                let id = id.clone();
                set.spawn(carried(
                    async move { (i, me.item_vector(&id, limit).await) },
                ));
            }
            let mut rows: Vec<Vec<f32>> = vec![Vec::new(); r.history.len()];
            while let Some(done) = set.join_next().await {
                let (i, v) = done.map_err(|e| Status::internal(e.to_string()))?;
                rows[i] = v?;
            }
            let dim = rows.first().map_or(0, Vec::len);
            let history: Vec<(u32, f32)> = (0..rows.len() as u32).map(|i| (i, 1.0)).collect();
            let vector =
                crate::users::profile_of(&|i| &rows[i as usize], dim, &history, &self.inner.users)
                    .ok_or_else(|| {
                        Status::invalid_argument("the history carries no positive weight")
                    })?;
            let (items, partial) = self
                .search_everywhere(
                    "Recommend",
                    pb::SearchVectorRequest {
                        vector,
                        k: r.k,
                        filter: r.filter,
                        exclude: if r.include_seen {
                            Vec::new()
                        } else {
                            r.history
                        },
                    },
                    limit,
                )
                .await?;
            Ok(pb::RecommendResponse {
                items,
                partial,
                ..Default::default()
            })
        })
        .await;
        observed("Recommend", started, result).map(Response::new)
    }

    async fn similar_items(
        &self,
        req: Request<pb::SimilarItemsRequest>,
    ) -> Result<Response<pb::SimilarItemsResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let r = req.into_inner();
        let result = in_session(seen, async {
            let _place = self.admit("SimilarItems", limit).await?;
            let vector = self.item_vector(&r.item_id, limit).await?;
            let (items, partial) = self
                .search_everywhere(
                    "SimilarItems",
                    pb::SearchVectorRequest {
                        vector,
                        k: r.k,
                        filter: r.filter,
                        exclude: vec![r.item_id],
                    },
                    limit,
                )
                .await?;
            Ok(pb::SimilarItemsResponse { items, partial })
        })
        .await;
        observed("SimilarItems", started, result).map(Response::new)
    }

    async fn search_text(
        &self,
        req: Request<pb::SearchTextRequest>,
    ) -> Result<Response<pb::SearchTextResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let r = req.into_inner();
        let result = in_session(seen, async {
            let _place = self.admit("SearchText", limit).await?;
            let query = r.query.clone();
            let embedded = self
                .anywhere(limit, move |mut c: Client, left| {
                    let q = due(
                        pb::EmbedRequest {
                            texts: vec![query.clone()],
                        },
                        left,
                    );
                    async move { c.embed(q).await }
                })
                .await?;
            let vector = embedded
                .embeddings
                .into_iter()
                .next()
                .map(|e| e.values)
                .ok_or_else(|| Status::internal("a shard embedded no vector"))?;
            let (items, partial) = self
                .search_everywhere(
                    "SearchText",
                    pb::SearchVectorRequest {
                        vector,
                        k: r.k,
                        filter: r.filter,
                        exclude: Vec::new(),
                    },
                    limit,
                )
                .await?;
            Ok(pb::SearchTextResponse { items, partial })
        })
        .await;
        observed("SearchText", started, result).map(Response::new)
    }

    async fn search_vector(
        &self,
        req: Request<pb::SearchVectorRequest>,
    ) -> Result<Response<pb::SearchVectorResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let result = in_session(seen, async {
            let _place = self.admit("SearchVector", limit).await?;
            self.search_everywhere("SearchVector", req.into_inner(), limit)
                .await
                .map(|(items, partial)| pb::SearchVectorResponse { items, partial })
        })
        .await;
        observed("SearchVector", started, result).map(Response::new)
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let r = Arc::new(req.into_inner());
        let result = async {
            let _place = self.admit("Embed", limit).await?;
            self.anywhere(limit, move |mut c: Client, left| {
                let q = due((*r).clone(), left);
                async move { c.embed(q).await }
            })
            .await
        }
        .await;
        observed("Embed", started, result).map(Response::new)
    }

    async fn get_item(
        &self,
        req: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let r = Arc::new(req.into_inner());
        let owner = self.owner(&r.id);
        let result = in_session(seen, async {
            let _place = self.admit("GetItem", limit).await?;
            self.call_fresh(owner, limit, move |mut c: Client, left| {
                let q = due((*r).clone(), left);
                async move { c.get_item(q).await }
            })
            .await
        })
        .await;
        observed("GetItem", started, result).map(Response::new)
    }

    async fn upsert_items(
        &self,
        req: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let items = req.into_inner().items;
        let place = self.admit("UpsertItems", limit).await;
        let result = match (place, seen) {
            (Err(st), _) | (_, Err(st)) => Err(st),
            (Ok(_place), Ok(seen)) => self
                .write_everywhere(
                    items,
                    |i: &pb::Item| i.id.as_str(),
                    seen.as_deref(),
                    limit,
                    |mut c: Client, items: Request<Vec<pb::Item>>| async move {
                        c.upsert_items(items.map(|items| pb::UpsertItemsRequest { items }))
                            .await
                    },
                    ITEM_WRITES_RETRY,
                )
                .await
                .map(|(upserted, sequence, wrote)| {
                    (
                        pb::UpsertItemsResponse { upserted, sequence },
                        written_after(seen.as_deref(), &wrote),
                    )
                }),
        };
        observed("UpsertItems", started, result).map(with_session)
    }

    async fn delete_items(
        &self,
        req: Request<pb::DeleteItemsRequest>,
    ) -> Result<Response<pb::DeleteItemsResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let ids = req.into_inner().ids;
        let place = self.admit("DeleteItems", limit).await;
        let result = match (place, seen) {
            (Err(st), _) | (_, Err(st)) => Err(st),
            (Ok(_place), Ok(seen)) => self
                .write_everywhere(
                    ids,
                    |i: &String| i.as_str(),
                    seen.as_deref(),
                    limit,
                    |mut c: Client, ids: Request<Vec<String>>| async move {
                        c.delete_items(ids.map(|ids| pb::DeleteItemsRequest { ids }))
                            .await
                    },
                    ITEM_WRITES_RETRY,
                )
                .await
                .map(|(deleted, sequence, wrote)| {
                    (
                        pb::DeleteItemsResponse { deleted, sequence },
                        written_after(seen.as_deref(), &wrote),
                    )
                }),
        };
        observed("DeleteItems", started, result).map(with_session)
    }

    async fn shard_sources(
        &self,
        _req: Request<pb::ShardSourcesRequest>,
    ) -> Result<Response<pb::ShardSourcesResponse>, Status> {
        Err(Status::unimplemented(
            "ShardSources is a shard's call; a router does not answer it",
        ))
    }

    async fn record_events(
        &self,
        req: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let started = Instant::now();
        let limit = client_deadline(&req);
        let seen = self.seen(&req);
        let events = req.into_inner().events;
        let sent = seen.as_ref().ok().cloned().flatten();
        let result = in_session(seen, async {
            let Some(front) = &self.inner.front else {
                return Err(Status::unimplemented(
                    "RecordEvents is routed only over a partitioned build with training (`vecrec \
                     route --front`): the shards of a --content-only build hold users' profiles \
                     made at build time; send events to the interactions file of the next \
                     `vecrec-build --shards` run",
                ));
            };
            let _place = self.admit("RecordEvents", limit).await?;
            let (answer, wrote) = self
                .record_routed(front.get(), events, sent.as_deref(), limit)
                .await?;
            Ok((answer, written_after(sent.as_deref(), &wrote)))
        })
        .await;
        observed("RecordEvents", started, result).map(with_session)
    }

    async fn user_events(
        &self,
        _req: Request<pb::UserEventsRequest>,
    ) -> Result<Response<pb::UserEventsResponse>, Status> {
        Err(Status::unimplemented(
            "UserEvents is a shard's call; a router does not answer it",
        ))
    }

    async fn item_states(
        &self,
        _req: Request<pb::ItemStatesRequest>,
    ) -> Result<Response<pb::ItemStatesResponse>, Status> {
        Err(Status::unimplemented(
            "ItemStates is a shard's call; a router does not answer it",
        ))
    }
}

/// Serves the router on `listener` until `shutdown` completes, with the
/// standard health service: SERVING while it runs, the Recommender service
/// NOT_SERVING while its front is damaged ([`front_health`]).
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    cfg: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RecommenderServer<Router>>()
        .await;
    let tls = crate::grpc::Tls::new(&cfg.security)?;
    let auth = crate::grpc::auth::Auth::new(&cfg.security)?;
    let resolver = tokio::spawn(router.clone().keep_resolving());
    // The front follows its CURRENT as a server follows its index root's.
    let watcher = match &router.inner.front {
        Some(slot) if !router.inner.reload.is_zero() => Some(tokio::spawn(
            crate::serving::slot::watch(slot.clone(), router.inner.reload),
        )),
        _ => None,
    };
    let reloader = tokio::spawn(reload_experiments_on_hangup(router.clone()));
    let checker = router
        .inner
        .front
        .clone()
        .map(|slot| tokio::spawn(front_health(slot, health_reporter.clone())));
    tonic::transport::Server::builder()
        .max_concurrent_streams(cfg.server.max_concurrent_streams)
        .http2_adaptive_window(Some(true))
        .layer(crate::grpc::auth::AuthLayer(auth))
        .add_service(health_service)
        .add_service(RecommenderServer::new(router))
        .serve_with_incoming_shutdown(crate::grpc::incoming(listener, &cfg.server, tls), shutdown)
        .await?;
    resolver.abort();
    reloader.abort();
    for task in [watcher, checker].into_iter().flatten() {
        task.abort();
    }
    Ok(())
}

/// Follows the background check of each front the router serves (the
/// front is opened lazily, `engine::Opening::Front`), logs what it found,
/// and keeps the `vecrec.v1.Recommender` service's health NOT_SERVING while
/// the served front is damaged (every Recommend then answers `DATA_LOSS`),
/// SERVING again once an intact front is swapped in. The server's own
/// health ("", which a liveness probe asks) stays SERVING: a restart would
/// open the same files. The check is polled, never joined, so a shutdown
/// does not wait for it.
async fn front_health(slot: Arc<EngineSlot>, health: tonic_health::server::HealthReporter) {
    use tonic::server::NamedService;
    let mut logged = std::sync::Weak::new();
    let mut serving = true;
    loop {
        let engine = slot.get();
        if !std::sync::Weak::ptr_eq(&logged, &Arc::downgrade(&engine)) && engine.verification_done()
        {
            logged = Arc::downgrade(&engine);
            let front = engine.index().dir().display().to_string();
            match engine.wait_verified() {
                Ok(()) => tracing::info!(%front, "the front generation is intact"),
                Err(err) => tracing::error!(
                    %front, error = %err,
                    "the front generation is damaged: Recommend answers DATA_LOSS until an \
                     intact build is published"
                ),
            }
        }
        let intact = engine.check_damage().is_ok();
        if intact != serving {
            let service = <RecommenderServer<Router> as NamedService>::NAME;
            crate::grpc::set_health(&health, &[service], intact).await;
            serving = intact;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Re-reads the experiments from the config file on every SIGHUP, as a
/// server does; a file the router could not run keeps the running ones.
async fn reload_experiments_on_hangup(router: Router) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let inner = router.inner.clone();
        let done = tokio::task::spawn_blocking(move || {
            inner.experiments.reload_checked(|cfg| {
                // What this router runs with, whatever the file says of it.
                let mut cfg = cfg.clone();
                cfg.route.front = inner.front.as_ref().map(|f| f.root().to_owned());
                cfg.route.exposure_root = inner.cfg.exposure_root.clone();
                check_experiments(&cfg).map_err(|e| crate::error::Error::Config(e.to_string()))
            })
        })
        .await;
        match done {
            Ok(Ok(n)) => tracing::info!(experiments = n, "SIGHUP: experiments reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: experiments refused; the running ones stay")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: the reload failed"),
        }
    }
}

/// Registers the router's metrics' help texts.
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        ROUTE_RETRIES,
        "Shard calls retried on another replica, by shard"
    );
    describe_counter!(
        ROUTE_HEDGES,
        "Shard calls hedged to a second replica, by shard"
    );
    describe_counter!(
        ROUTE_HEDGES_DENIED,
        "Hedges not sent because route.hedge_budget was spent, by shard"
    );
    describe_counter!(
        ROUTE_PARTIAL,
        "Answers merged without a shard that had no live replica, by rpc"
    );
    describe_counter!(
        ROUTE_SHARED_FAN_OUTS,
        "Interleaved Recommend calls whose two arms asked the shards once, the same request"
    );
    describe_counter!(
        ROUTE_SHARD_FAILED,
        "Shard calls that failed on every replica, by shard"
    );
    describe_counter!(
        ROUTE_PREVIOUS_FRONT,
        "Sliced Recommend calls answered from the previous front, a shard not having swapped in \
         the current one's build yet"
    );
    metrics::describe_histogram!(
        ROUTE_SHARD_SECONDS,
        metrics::Unit::Seconds,
        "Time for a shard's answer, retries and hedges included, by shard"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::{Code, Status};

    use super::{past_due, HedgeBudget};

    /// The channel's own timer ("Timeout expired", CANCELLED) can wake the
    /// router before the shard's deadline timer does: past the deadline it
    /// reads as the shard not answering in time; before it, or for any
    /// other failure, the replica's own status is kept.
    #[test]
    fn a_call_ended_by_its_own_timer_past_the_deadline_is_the_shard_late() {
        let budget = Duration::from_millis(1000);
        let timer = || Status::cancelled("Timeout expired");
        let late = past_due(timer(), true, 1, budget);
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert_eq!(late.message(), "shard 1 did not answer within 1000 ms");
        let early = past_due(timer(), false, 1, budget);
        assert_eq!(early.message(), "Timeout expired");
        let down = past_due(Status::unavailable("connection refused"), true, 1, budget);
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(down.message(), "connection refused");
    }

    #[test]
    fn the_hedge_budget_saves_ten_and_earns_its_fraction_a_call() {
        let b = HedgeBudget::new(0.1);
        // Full at start: a burst of ten hedges, then none.
        assert!((0..10).all(|_| b.spend()));
        assert!(!b.spend());
        // Nine calls earn 0.9 of a hedge, the tenth the whole of one.
        (0..9).for_each(|_| b.earn());
        assert!(!b.spend());
        b.earn();
        assert!(b.spend());
        assert!(!b.spend());
        // No more than ten are saved however many calls pass.
        (0..1000).for_each(|_| b.earn());
        assert_eq!((0..20).filter(|_| b.spend()).count(), 10);
        // A budget of 0 hedges nothing.
        let none = HedgeBudget::new(0.0);
        (0..100).for_each(|_| none.earn());
        assert!(!none.spend());
    }
}
