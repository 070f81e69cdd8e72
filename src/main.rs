//! `vecrec`: the server binary. Loads config, opens the index and the encoder, serves gRPC.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vecrec::config::Config;
use vecrec::encoder::Encoder;
use vecrec::engine::Engine;

/// vecrec — vector recommendation engine (gRPC server).
///
/// Serves `vecrec.v1.Recommender` (Recommend, SimilarItems, SearchText, Embed,
/// GetItem), `grpc.health.v1.Health` and server reflection over an index built
/// by `vecrec-build`; `vecrec embed` embeds a file of texts offline.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an index over gRPC until Ctrl-C or SIGTERM.
    ///
    /// A new generation written by `vecrec-build --out` into the same index
    /// root is swapped in while serving (checked every
    /// server.reload_interval_ms, and at once on SIGHUP); requests in flight
    /// finish on the generation they started with.
    ///
    /// Settings come from --config (TOML), then VECREC_<SECTION>__<KEY>
    /// environment variables, then these flags. The encoder model and the ONNX
    /// Runtime library are found in .cache/ (written by `make setup`) unless
    /// configured. The line `listening on ADDR` on stdout tells the bound
    /// address (useful with port 0).
    Serve(ServeArgs),
    /// Embed texts with the server's encoder, offline: one text per line of
    /// --texts in, one unit-length vector per line out, written to --out as
    /// .fvecs (TEXMEX: per vector a little-endian i32 dimension, then the
    /// f32 values), the format `vecrec-ann-bench` reads. The vectors are the
    /// ones SearchText and Embed compute for the same texts.
    Embed(EmbedArgs),
    /// Serve a partitioned index (`vecrec-build --shards N`) as one: the
    /// same gRPC API, each call sent to one replica of every shard
    /// (`vecrec serve --index OUT/shard-<i>`) and the answers merged, so
    /// with exact search they are what one node over the whole catalogue
    /// would answer.
    ///
    /// A failed call is retried on another replica of its shard, a slow one
    /// hedged to a second after route.hedge_after_ms; when every replica of
    /// a shard is down the answer comes from the others with `partial` set
    /// (or UNAVAILABLE, route.on_missing_shard = "fail"). Replica names
    /// that are not IP addresses are looked up in DNS every
    /// route.resolve_interval_ms (one Kubernetes headless Service per
    /// shard). Settings: --config's [route] and [users] sections (the
    /// latter must match the build's), then these flags. With --front and
    /// --exposure-root the config's [[experiments]] run on the router as on
    /// one node (SIGHUP re-reads them). Prints `listening on ADDR` on stdout.
    Route(RouteArgs),
}

// `vecrec route`'s flags.
#[derive(clap::Args)]
struct RouteArgs {
    /// The replicas of one shard, comma-separated host:port; give it once
    /// per shard, shard 0 first (route.shards).
    #[arg(long = "shard", value_name = "HOST:PORT[,HOST:PORT...]")]
    shards: Vec<String>,
    /// Address to listen on, e.g. 127.0.0.1:50050 (port 0 picks a free port).
    #[arg(long)]
    addr: Option<String>,
    /// TOML configuration file (see README, "Configuration").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Send a call that has not been answered after this many
    /// milliseconds to a second replica too (route.hedge_after_ms; 0: off).
    #[arg(long)]
    hedge_after_ms: Option<u64>,
    /// `partial` or `fail`: what to answer when a shard has no live
    /// replica (route.on_missing_shard).
    #[arg(long)]
    on_missing_shard: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Serve a non-loopback address without TLS and bearer tokens.
    #[arg(long)]
    insecure: bool,
    /// The front generation's index root of a partitioned hybrid build
    /// (`<out>/front` of `vecrec-build --shards N` with training): the
    /// router then serves the hybrid Recommend, with the users' side,
    /// fusion and reranking here and each source's lists from the shards
    /// (route.front).
    #[arg(long, value_name = "DIR")]
    front: Option<PathBuf>,
    /// Where this router logs the lists its experiments serve and the
    /// feedback on them (DIR/experiments/, read by `vecrec-experiment
    /// report --index DIR`); needed for --config's [[experiments]], which a
    /// router with --front runs as one node does. One directory per router
    /// replica (route.exposure_root).
    #[arg(long, value_name = "DIR")]
    exposure_root: Option<PathBuf>,
}

// `vecrec serve`'s flags (the variant's doc comment is its help).
#[derive(clap::Args)]
struct ServeArgs {
    /// Index root directory written by `vecrec-build --out`.
    #[arg(long)]
    index: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:50051 (port 0 picks a free port).
    #[arg(long)]
    addr: Option<String>,
    /// TOML configuration file (see README, "Configuration").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Encoder sessions, each with its own worker thread and one ONNX
    /// Runtime thread (encoder.sessions; default: one per core). The texts
    /// of concurrent SearchText, Embed and UpsertItems calls are joined
    /// into one forward pass per session.
    #[arg(long)]
    encoder_sessions: Option<usize>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g.
    /// 127.0.0.1:9100 (server.metrics_addr; default: off).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Most requests worked on at once, over all connections
    /// (server.max_concurrent_requests; default: four per core). Beyond it
    /// up to server.max_queued_requests wait, and the rest are answered
    /// RESOURCE_EXHAUSTED at once.
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// Serve a non-loopback address without TLS and bearer tokens.
    /// Without this flag the server refuses to: anyone who can reach the
    /// port could read and change the catalogue (README, "Security").
    #[arg(long)]
    insecure: bool,
    /// Follow the write-ahead log that another replica writes under the
    /// same index root instead of writing it: replicas on one shared
    /// volume, one writer and the others following. A follower reads the
    /// writer's appends every live.follow_interval_ms (200) and refuses
    /// writes (FAILED_PRECONDITION); `vecrec route` sends writes to the
    /// replica that takes them.
    #[arg(long, conflicts_with = "log_writer")]
    follow_log: bool,
    /// The replica, by host name, that writes the log under the index
    /// root; any other follows it (--follow-log). For a Kubernetes
    /// StatefulSet, its first pod's name (e.g. vecrec-shard-0-0): each pod's
    /// host name is its own name.
    #[arg(long, value_name = "HOST")]
    log_writer: Option<String>,
}

// `vecrec embed`'s flags.
#[derive(clap::Args)]
struct EmbedArgs {
    /// UTF-8 text file, one text per line; an empty line is an error.
    #[arg(long)]
    texts: PathBuf,
    /// Output .fvecs file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// TOML configuration file (its [encoder] section is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    vecrec::main_with(run);
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Embed(args) => embed(args),
        Command::Route(args) => route(args),
    }
}

/// `vecrec route`: the front tier over the shards' servers.
fn route(args: RouteArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if !args.shards.is_empty() {
        cfg.route.shards = args
            .shards
            .iter()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
    }
    if let Some(a) = args.addr {
        cfg.server.addr = a;
    }
    if let Some(h) = args.hedge_after_ms {
        cfg.route.hedge_after_ms = h;
    }
    if let Some(f) = args.front {
        cfg.route.front = Some(f);
    }
    if let Some(d) = args.exposure_root {
        cfg.route.exposure_root = Some(d);
    }
    if let Some(m) = args.on_missing_shard {
        cfg.route.on_missing_shard = match m.as_str() {
            "partial" => vecrec::config::MissingShard::Partial,
            "fail" => vecrec::config::MissingShard::Fail,
            other => anyhow::bail!("--on-missing-shard must be partial or fail, not {other:?}"),
        };
    }
    if let Some(a) = args.metrics_addr {
        cfg.server.metrics_addr = Some(a);
    }
    cfg.validate()?;
    if cfg.server.metrics_addr.is_some() {
        vecrec::telemetry::recorder()?;
        vecrec::route::describe_metrics();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        serve_metrics(&cfg).await?;
        let router = vecrec::route::Router::new(&cfg, args.config.clone()).await?;
        let listener =
            vecrec::grpc::bind_with_backlog(&cfg.server.addr, cfg.server.listen_backlog)?;
        let local = listener.local_addr()?;
        vecrec::grpc::check_exposure(local, &cfg.security, args.insecure)?;
        println!("listening on {local}");
        tracing::info!(%local, shards = router.shards(), "routing vecrec.v1.Recommender");
        vecrec::route::serve(router, listener, &cfg, shutdown_signal()).await?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

/// `vecrec embed`: every line of `texts` through the bulk encoder into `out`.
fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let EmbedArgs {
        texts,
        out,
        config,
        quiet,
    } = args;
    let cfg = Config::load(config.as_deref())?;
    cfg.validate()?;
    let raw = std::fs::read_to_string(&texts)
        .with_context(|| format!("reading {} (UTF-8 text, one per line)", texts.display()))?;
    let lines: Vec<&str> = raw.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.trim().is_empty()) {
        anyhow::bail!(
            "{}: line {} is empty; every line must hold a text",
            texts.display(),
            i + 1
        );
    }
    if lines.is_empty() {
        anyhow::bail!("{}: no texts", texts.display());
    }
    // One session with every core's intra-op thread, as `vecrec-build`
    // embeds: the bulk encoder runs one batch at a time, so a session per
    // core left all but one idle (it ran at 110 texts/s on 2 cores, now
    // at 213).
    let encoder = Encoder::load(&cfg.encoder, 1).context("loading the encoder")?;
    let pb = vecrec::pipeline::stages::bar(lines.len(), "embedding", !quiet);
    let vectors = encoder.encode_with_progress(&lines, &|done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    let dim = encoder.dim();
    let flat: Vec<f32> = vectors.into_iter().flatten().collect();
    vecrec_index::texmex::write_fvecs(&out, &flat, dim)
        .with_context(|| format!("writing {}", out.display()))?;
    if !quiet {
        eprintln!(
            "{} vectors of {dim} dimensions written to {}",
            lines.len(),
            out.display()
        );
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        index,
        addr,
        config,
        encoder_sessions,
        metrics_addr,
        max_concurrent_requests,
        insecure,
        follow_log,
        log_writer,
    } = args;
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(a) = addr {
        cfg.server.addr = a;
    }
    if let Some(n) = encoder_sessions {
        cfg.encoder.sessions = n;
    }
    if let Some(a) = metrics_addr {
        cfg.server.metrics_addr = Some(a);
    }
    if let Some(n) = max_concurrent_requests {
        cfg.server.max_concurrent_requests = n;
    }
    cfg.validate()?;
    if cfg.server.metrics_addr.is_some() {
        // Before anything records, so nothing recorded is lost.
        vecrec::telemetry::recorder()?;
    }
    let encoder = Arc::new(Encoder::load_serving(&cfg.encoder).context("loading the encoder")?);
    let mut engine = Engine::open(&index, cfg.clone(), Some(encoder))
        .with_context(|| format!("opening index {}", index.display()))?;
    let follow = match &log_writer {
        Some(writer) => {
            let me = host_name().context("reading this host's name for --log-writer")?;
            &me != writer
        }
        None => follow_log,
    };
    if (follow || log_writer.is_some()) && !cfg.live.enabled {
        anyhow::bail!("--follow-log and --log-writer need live updates on ([live] enabled = true)");
    }
    if follow {
        let live = vecrec::live::Live::follow(&index, engine.applied_seq(), log_writer.as_deref())
            .with_context(|| format!("reading the write-ahead log under {}", index.display()))?;
        let pending = live.view(engine.applied_seq()).pending();
        tracing::info!(log = %live.path().display(), pending, "following the log another replica writes");
        engine.attach_live(Arc::new(live));
    } else if cfg.live.enabled {
        let live = vecrec::live::Live::open(&index, engine.applied_seq())
            .with_context(|| format!("replaying the write-ahead log under {}", index.display()))?;
        if engine.applied_seq() > 0 {
            // A crash may have come between publishing a compaction and pruning the log.
            live.prune(engine.applied_seq())?;
        }
        let pending = live.view(engine.applied_seq()).pending();
        tracing::info!(log = %live.path().display(), pending, "live updates on");
        engine.attach_live(Arc::new(live));
    }
    let engine = Arc::new(engine);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        serve_metrics(&cfg).await?;
        let listener =
            vecrec::grpc::bind_with_backlog(&cfg.server.addr, cfg.server.listen_backlog)?;
        let local = listener.local_addr()?;
        vecrec::grpc::check_exposure(local, &cfg.security, insecure)?;
        if let Some(files) = vecrec::grpc::raise_open_file_limit() {
            let wanted = cfg.server.max_connections as u64 + 256;
            if files < wanted {
                tracing::warn!(
                    open_files = files,
                    max_connections = cfg.server.max_connections,
                    "the open-file limit is below server.max_connections + 256; \
                     new connections may fail once it is reached"
                );
            }
        }
        println!("listening on {local}");
        tracing::info!(%local, "serving vecrec.v1.Recommender");
        let slot = Arc::new(vecrec::serving::EngineSlot::new(&index, engine));
        vecrec::grpc::serve_with_config_file(slot, listener, shutdown_signal(), config).await?;
        tracing::info!("shut down cleanly");
        Ok(())
    })
}

/// This host's name (a Kubernetes pod's is the pod's name).
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))?;
    anyhow::ensure!(!name.is_empty(), "the host name is empty");
    Ok(name)
}

/// Serves `GET /metrics` on server.metrics_addr, when set, and says where.
async fn serve_metrics(cfg: &Config) -> anyhow::Result<()> {
    if let Some(a) = &cfg.server.metrics_addr {
        let addr = a.parse().context("server.metrics_addr")?;
        let local = vecrec::telemetry::serve(addr).await?;
        println!("metrics on http://{local}/metrics");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
