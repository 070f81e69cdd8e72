//! `vecrec-load`: a gRPC load generator for `vecrec.v1.Recommender` (and any
//! server of the same proto), timing each call across a real socket.
//!
//! Closed loop (`--concurrency N`): N callers, each sending its next request
//! when the last one answers. Open loop (`--rate R`): requests are due at
//! fixed intervals of 1/R whatever the server does, and each latency is
//! measured from the request's *intended* start, so a stalled server cannot
//! hide its queue by slowing the client down (coordinated omission, Tene).
//! Latencies go into HDR histograms; one JSON line per run goes to stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::{Channel, Endpoint};
use vecrec::grpc::pb::{self, recommender_client::RecommenderClient};

/// Drive a vecrec gRPC server with a closed- or open-loop load and print one
/// JSON line of throughput and latency percentiles.
#[derive(Debug, Parser)]
#[command(
    name = "vecrec-load",
    version,
    about = "gRPC load generator for vecrec: closed or open loop, HDR latency percentiles, one JSON line per run",
    long_about = "gRPC load generator for vecrec (vecrec.v1.Recommender, or any server of the same proto).\n\n\
        Closed loop (--concurrency N): N callers, each sending its next request when the last \
        one answers. Open loop (--rate R): requests are due every 1/R seconds whatever the \
        server does, and latency is measured from each request's intended start, so queueing \
        in the server shows in the figures instead of slowing the client (coordinated omission).\n\n\
        Requests come from the files given: --interactions (a CSV with a header naming a user \
        column userId/user_id/user and an item column movieId/item_id/item) supplies the users \
        of Recommend and RecordEvents and the items of SimilarItems; --queries (one text per \
        line) supplies SearchText queries, Embed texts and UpsertItems texts. Each request \
        draws from them with a seeded random stream.\n\n\
        The run lasts --warmup + --duration seconds; only requests started after the warmup \
        count. Output (stdout, one line): label, rpc, mode, concurrency, rate, connections, \
        duration_s, warmup_s, requests, ok, achieved_rps (OK answers per second), p50/p90/p99/p999/max/mean \
        in ms over OK answers, errors by gRPC status code name (CLIENT_BACKLOG: open-loop \
        requests not sent because --max-outstanding were already waiting), and partial: OK answers \
        to Recommend, SimilarItems or SearchText that said a shard was missing (a router's \
        `partial` flag). Progress goes to stderr.\n\n\
        Example: vecrec-load --addr 127.0.0.1:50051 --rpc search --queries benches/serving/queries.txt --concurrency 8"
)]
struct Args {
    /// Server address, host:port (e.g. 127.0.0.1:50051). Give it explicitly:
    /// load is sent only where you point it.
    #[arg(long)]
    addr: String,
    /// The call to make.
    #[arg(long, value_enum)]
    rpc: Rpc,
    /// Closed loop: callers in flight at once.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: requests per second, due at even intervals.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds measured, after the warmup (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Interactions CSV: users for recommend and events, items for similar and events.
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Keep only interactions rated at least this (needs a `rating` column),
    /// e.g. 4 for MovieLens, whose index holds the users with a rating ≥ 4.
    #[arg(long)]
    min_rating: Option<f64>,
    /// Text file, one query per line: search queries, embed and upsert texts.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Items asked for per call.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Texts per Embed, items per UpsertItems, events per RecordEvents.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Deadline of each call (sent as grpc-timeout), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Open loop: most requests waiting for an answer; beyond it requests
    /// are counted as CLIENT_BACKLOG errors and not sent.
    #[arg(long, default_value_t = 20_000)]
    max_outstanding: usize,
    /// Free text copied into the JSON line (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rpc {
    Recommend,
    Similar,
    Search,
    Embed,
    Upsert,
    Events,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Recommend => "recommend",
            Rpc::Similar => "similar",
            Rpc::Search => "search",
            Rpc::Embed => "embed",
            Rpc::Upsert => "upsert",
            Rpc::Events => "events",
        }
    }
}

/// What requests are made of.
struct Workload {
    rpc: Rpc,
    users: Vec<String>,
    items: Vec<String>,
    queries: Vec<String>,
    k: u32,
    batch: usize,
    timeout: Duration,
    /// Numbers the items that UpsertItems writes.
    upserted: AtomicU64,
}

impl Workload {
    fn load(a: &Args) -> anyhow::Result<Self> {
        let (users, items) = match &a.interactions {
            Some(p) => read_interactions(p, a.min_rating)?,
            None => (Vec::new(), Vec::new()),
        };
        let queries = match &a.queries {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading queries from {}", p.display()))?;
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            None => Vec::new(),
        };
        let need = |ok: bool, what: &str| -> anyhow::Result<()> {
            if !ok {
                bail!("--rpc {} needs {what}", a.rpc.name());
            }
            Ok(())
        };
        match a.rpc {
            Rpc::Recommend => need(!users.is_empty(), "--interactions with at least one user")?,
            Rpc::Similar => need(!items.is_empty(), "--interactions with at least one item")?,
            Rpc::Search | Rpc::Embed | Rpc::Upsert => {
                need(!queries.is_empty(), "--queries with at least one line")?
            }
            Rpc::Events => need(
                !users.is_empty() && !items.is_empty(),
                "--interactions with users and items",
            )?,
        }
        if a.batch == 0 {
            bail!("--batch must be at least 1");
        }
        Ok(Self {
            rpc: a.rpc,
            users,
            items,
            queries,
            k: a.k,
            batch: a.batch,
            timeout: Duration::from_millis(a.timeout_ms),
            upserted: AtomicU64::new(0),
        })
    }

    /// Sends one request on `client`: whether the answer was partial (a
    /// router that answered without a shard) or the status on failure.
    async fn call(
        &self,
        client: &mut RecommenderClient<Channel>,
        rng: &mut ChaCha8Rng,
    ) -> Result<bool, tonic::Status> {
        fn pick<'a>(rng: &mut ChaCha8Rng, v: &'a [String]) -> &'a str {
            &v[rng.gen_range(0..v.len())]
        }
        fn req<M>(m: M, timeout: Duration) -> tonic::Request<M> {
            let mut r = tonic::Request::new(m);
            r.set_timeout(timeout);
            r
        }
        let t = self.timeout;
        let r = match self.rpc {
            Rpc::Recommend => client
                .recommend(req(
                    pb::RecommendRequest {
                        user_id: pick(rng, &self.users).to_owned(),
                        k: self.k,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(|r| r.into_inner().partial),
            Rpc::Similar => client
                .similar_items(req(
                    pb::SimilarItemsRequest {
                        item_id: pick(rng, &self.items).to_owned(),
                        k: self.k,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(|r| r.into_inner().partial),
            Rpc::Search => client
                .search_text(req(
                    pb::SearchTextRequest {
                        query: pick(rng, &self.queries).to_owned(),
                        k: self.k,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(|r| r.into_inner().partial),
            Rpc::Embed => client
                .embed(req(
                    pb::EmbedRequest {
                        texts: (0..self.batch)
                            .map(|_| pick(rng, &self.queries).to_owned())
                            .collect(),
                    },
                    t,
                ))
                .await
                .map(|_| false),
            Rpc::Upsert => {
                let items = (0..self.batch)
                    .map(|_| {
                        let n = self.upserted.fetch_add(1, Ordering::Relaxed);
                        let text = pick(rng, &self.queries).to_owned();
                        pb::Item {
                            id: format!("load-{n}"),
                            title: text.clone(),
                            text,
                            ..Default::default()
                        }
                    })
                    .collect();
                client
                    .upsert_items(req(pb::UpsertItemsRequest { items }, t))
                    .await
                    .map(|_| false)
            }
            Rpc::Events => {
                let events = (0..self.batch)
                    .map(|_| pb::Event {
                        user_id: pick(rng, &self.users).to_owned(),
                        item_id: pick(rng, &self.items).to_owned(),
                        weight: 1.0,
                        timestamp: 0,
                        ..Default::default()
                    })
                    .collect();
                client
                    .record_events(req(pb::RecordEventsRequest { events }, t))
                    .await
                    .map(|_| false)
            }
        };
        r
    }
}

/// Distinct users and items of an interactions CSV, in order of first appearance.
fn read_interactions(
    p: &Path,
    min_rating: Option<f64>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut r = csv::Reader::from_path(p).with_context(|| format!("opening {}", p.display()))?;
    let headers = r.headers()?.clone();
    let find = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
    let (Some(u), Some(i)) = (
        find(&["userId", "user_id", "user"]),
        find(&["movieId", "item_id", "item"]),
    ) else {
        bail!(
            "{}: the header needs a user column (userId, user_id or user) and an item column (movieId, item_id or item); it has {:?}",
            p.display(),
            headers.iter().collect::<Vec<_>>()
        );
    };
    let rating = match min_rating {
        None => None,
        Some(min) => match find(&["rating"]) {
            Some(c) => Some((c, min)),
            None => bail!("{}: --min-rating needs a rating column", p.display()),
        },
    };
    let (mut users, mut items) = (Vec::new(), Vec::new());
    let (mut seen_u, mut seen_i) = (BTreeSet::new(), BTreeSet::new());
    for (n, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: record {}", p.display(), n + 1))?;
        let (Some(user), Some(item)) = (rec.get(u), rec.get(i)) else {
            bail!("{}: record {} has too few fields", p.display(), n + 1);
        };
        if let Some((c, min)) = rating {
            let r: f64 = rec
                .get(c)
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{}: record {}: bad rating", p.display(), n + 1))?;
            if r < min {
                continue;
            }
        }
        if seen_u.insert(user.to_owned()) {
            users.push(user.to_owned());
        }
        if seen_i.insert(item.to_owned()) {
            items.push(item.to_owned());
        }
    }
    Ok((users, items))
}

/// Latencies of OK answers and counts of failures, for requests started
/// inside the measured window.
struct Tally {
    latency_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// OK answers that said they were partial (a router missing a shard).
    partial: AtomicU64,
    /// The first message seen for each status code.
    examples: Mutex<BTreeMap<String, String>>,
    requests: AtomicU64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            errors: Mutex::new(BTreeMap::new()),
            partial: AtomicU64::new(0),
            examples: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
        })
    }

    fn record(&self, result: Result<bool, tonic::Status>, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(partial) => {
                if partial {
                    self.partial.fetch_add(1, Ordering::Relaxed);
                }
                let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
                self.latency_us.lock().saturating_record(us);
            }
            Err(status) => {
                let name = vecrec::grpc::code_name(status.code());
                self.error(name);
                self.examples
                    .lock()
                    .entry(name.to_owned())
                    .or_insert_with(|| format!("{status:?}"));
            }
        }
    }

    fn error(&self, name: &str) {
        *self.errors.lock().entry(name.to_owned()).or_default() += 1;
    }
}

fn main() {
    vecrec::main_with(run);
}

fn run() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(a.duration > 0.0 && a.duration <= 3600.0 && (0.0..=600.0).contains(&a.warmup)) {
        bail!("--duration must be in (0, 3600] and --warmup in [0, 600] seconds");
    }
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    match (a.concurrency, a.rate) {
        (Some(0), _) => bail!("--concurrency must be at least 1"),
        (_, Some(r)) if !(r > 0.0 && r <= 1e6) => bail!("--rate must be in (0, 1000000]"),
        _ => {}
    }
    let work = Arc::new(Workload::load(&a)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(drive(a, work))
}

async fn drive(a: Args, work: Arc<Workload>) -> anyhow::Result<()> {
    let endpoint = Endpoint::from_shared(format!("http://{}", a.addr))
        .with_context(|| format!("bad --addr {:?}", a.addr))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        // One Channel per connection: tonic multiplexes a Channel's calls over one HTTP/2 connection.
        let ch = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", a.addr))?;
        clients.push(RecommenderClient::new(ch));
    }
    let tally = Arc::new(Tally::new()?);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.duration);
    let mode = if a.rate.is_some() { "open" } else { "closed" };
    eprintln!(
        "vecrec-load: {} {} against {} for {:.0}+{:.0} s",
        mode,
        a.rpc.name(),
        a.addr,
        a.warmup,
        a.duration
    );
    match a.rate {
        None => {
            let n = a.concurrency.unwrap_or(1);
            let mut tasks = Vec::with_capacity(n);
            for c in 0..n {
                let mut client = clients[c % clients.len()].clone();
                let (work, tally) = (work.clone(), tally.clone());
                let mut rng = ChaCha8Rng::seed_from_u64(a.seed.wrapping_mul(1_000_003) + c as u64);
                tasks.push(tokio::spawn(async move {
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let r = work.call(&mut client, &mut rng).await;
                        if sent >= measure_from {
                            tally.record(r, sent.elapsed());
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
        Some(rate) => {
            // The schedule runs on a thread of its own: tokio's timer rounds
            // a sleep up to the next millisecond, which would send requests
            // up to 1 ms late and count that as server latency, while a
            // thread's sleep wakes within the kernel's timer slack (50 µs).
            let interval = Duration::from_secs_f64(1.0 / rate);
            let outstanding = Arc::new(AtomicUsize::new(0));
            let runtime = tokio::runtime::Handle::current();
            let (max_outstanding, seed) = (a.max_outstanding, a.seed);
            let (work, tally2, outstanding2) = (work.clone(), tally.clone(), outstanding.clone());
            let schedule = std::thread::Builder::new()
                .name("vecrec-load-schedule".into())
                .spawn(move || {
                    let (tally, outstanding) = (tally2, outstanding2);
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    let mut i: u64 = 0;
                    loop {
                        let due = start + interval.mul_f64(i as f64);
                        if due >= end {
                            break;
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        i += 1;
                        if outstanding.load(Ordering::Relaxed) >= max_outstanding {
                            if due >= measure_from {
                                tally.requests.fetch_add(1, Ordering::Relaxed);
                                tally.error("CLIENT_BACKLOG");
                            }
                            continue;
                        }
                        outstanding.fetch_add(1, Ordering::Relaxed);
                        let mut client = clients[(i as usize) % clients.len()].clone();
                        let (work, tally, outstanding) =
                            (work.clone(), tally.clone(), outstanding.clone());
                        let mut req_rng = ChaCha8Rng::seed_from_u64(rng.gen());
                        runtime.spawn(async move {
                            let r = work.call(&mut client, &mut req_rng).await;
                            if due >= measure_from {
                                // From the intended start, not the actual send.
                                tally.record(r, due.elapsed());
                            }
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                })
                .context("cannot start the schedule thread")?;
            tokio::task::spawn_blocking(move || schedule.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
            // Every call carries a deadline, so the last answers come within
            // it; the bound only guards against a call that never returns.
            let last =
                Instant::now() + Duration::from_millis(a.timeout_ms) + Duration::from_secs(5);
            while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < last {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let h = tally.latency_us.lock().clone();
    let errors = tally.errors.lock().clone();
    let ok = h.len();
    let ms = |q: f64| {
        if ok == 0 {
            None
        } else {
            Some(h.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    let line = serde_json::json!({
        "label": a.label,
        "rpc": a.rpc.name(),
        "mode": mode,
        "concurrency": a.concurrency.filter(|_| a.rate.is_none()).or(if a.rate.is_none() { Some(1) } else { None }),
        "rate": a.rate,
        "connections": a.connections,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "requests": tally.requests.load(Ordering::Relaxed),
        "ok": ok,
        "achieved_rps": ok as f64 / a.duration,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": (ok > 0).then(|| h.max() as f64 / 1000.0),
        "mean_ms": (ok > 0).then(|| h.mean() / 1000.0),
        "errors": errors,
        "partial": tally.partial.load(Ordering::Relaxed),
    });
    println!("{line}");
    eprintln!(
        "vecrec-load: {} OK ({} partial) in {:.1} s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, \
         errors {:?}",
        ok,
        tally.partial.load(Ordering::Relaxed),
        a.duration,
        ok as f64 / a.duration,
        ms(0.5).unwrap_or(f64::NAN),
        ms(0.99).unwrap_or(f64::NAN),
        errors
    );
    for (code, message) in tally.examples.lock().iter() {
        eprintln!("vecrec-load: first {code}: {message}");
    }
    Ok(())
}
