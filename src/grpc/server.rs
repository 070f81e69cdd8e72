//! Running the service: the tonic server with health and reflection,
//! generation reloads and compaction, the scrubber, SIGHUP reloads of TLS,
//! tokens and experiments, and the gauges of the served generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::{Request, Status};

use super::pb::{self, recommender_server::RecommenderServer};
use super::{auth, bind_with_backlog, incoming, Service, Tls};
use crate::config::ServerConfig;
use crate::serving::{experiments, slot, EngineSlot};
use crate::telemetry;

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
    let follower = slot.get().live().is_some_and(|l| l.is_follower()).then(|| {
        tokio::spawn(slot::follow_loop(
            slot.clone(),
            Duration::from_millis(full.live.follow_interval_ms),
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
    let fresh_slot = slot.clone();
    let service = Service::new(slot, &cfg, experiments);
    let lag_probe = tokio::spawn(service.runtime_lag().clone().probe());
    let reloader = tokio::spawn(reload_on_hangup(Reload {
        tls: tls.clone(),
        auth: auth.clone(),
        scrub: scrub_now,
        experiments: service.experiments.clone(),
    }));
    tracing::info!(
        in_flight = service.admission().in_flight_limit(),
        cpu_in_flight = service.cpu_admission().in_flight_limit(),
        overloaded_in_flight = service.admission().overload_limit(),
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
        .add_service(RecommenderServer::with_interceptor(
            service,
            arrive(fresh_slot),
        ))
        .serve_with_incoming_shutdown(incoming(listener, &cfg, tls), shutdown)
        .await?;
    for task in [
        watcher,
        compactor,
        follower,
        Some(gauges),
        Some(lag_probe),
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
            // The server as a whole ("") and the service by name.
            let services = ["", <RecommenderServer<Service> as NamedService>::NAME];
            set_health(&health, &services, intact).await;
            serving = intact;
        }
    }
}

/// Sets the health of each of `services` ("" is the server as a whole) to
/// SERVING or NOT_SERVING.
pub(crate) async fn set_health(
    health: &tonic_health::server::HealthReporter,
    services: &[&str],
    serving: bool,
) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in services {
        health.set_service_status(*service, status).await;
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
/// same synchronous step in which tonic starts its `grpc-timeout` timer,
/// which is when the call's task is first polled (after any wait for a
/// runtime thread: hyper and axum call the service stack lazily).
#[derive(Clone, Copy, Debug)]
pub(super) struct Arrived(pub(super) Instant);

/// The interceptor every call passes: it stamps the call's arrival, and
/// refuses a call whose [`MIN_SEQUENCE_HEADER`] names a log record this
/// replica (a follower) has not read, after reading what its writer
/// appended since its last look (a small read of the log's tail, done
/// here, on the runtime thread, only for such calls):
/// `FAILED_PRECONDITION` starting with [`crate::live::BEHIND`].
fn arrive(slot: Arc<EngineSlot>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        req.extensions_mut().insert(Arrived(Instant::now()));
        if let Some(v) = req.metadata().get(MIN_SEQUENCE_HEADER) {
            let n = v.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            let n = n.ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{MIN_SEQUENCE_HEADER} must be a log record number (the `sequence` a write \
                     answered)"
                ))
            })?;
            slot.get().check_read_through(n)?;
        }
        Ok(req)
    }
}

/// Request header naming a log record the answer must include: the
/// `sequence` a write to the same shard answered (UpsertItems,
/// DeleteItems, RecordEvents). A replica that follows another's log and
/// has not read that far answers `FAILED_PRECONDITION`; `vecrec route`
/// sends it, per shard, for the writes it made.
pub const MIN_SEQUENCE_HEADER: &str = "x-vecrec-min-sequence";

/// How much sooner than the client's deadline the server gives up: 10 ms
/// (a tenth of timeouts under 100 ms). tonic's transport also times the
/// `grpc-timeout` and answers `CANCELLED` ("Timeout expired") at the
/// deadline itself; stopping sooner lets the server answer
/// `DEADLINE_EXCEEDED` naming the stage it stopped before, and the answer
/// reaches the client while it still listens. A 2 ms margin lost that race
/// on a loaded 2-core CI machine (both timers fired in the same late poll).
pub(super) fn deadline_margin(timeout: Duration) -> Duration {
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
        if let Some(l) = e.live() {
            let role = if l.is_follower() {
                "follower"
            } else {
                "writer"
            };
            let last = l.view(e.applied_seq()).last_seq();
            metrics::gauge!(telemetry::LOG_LAST_RECORD, "role" => role).set(last as f64);
        }
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
