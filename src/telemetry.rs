//! Metrics: the names every part of the server records under, and the
//! Prometheus text endpoint (`server.metrics_addr`, `--metrics-addr`).
//!
//! Recording goes through the `metrics` facade, so the engine and the encoder
//! record without knowing whether anything collects: until [`install`] sets
//! the Prometheus recorder, every macro call is a no-op. Latencies are
//! histograms in seconds with fixed buckets from 100 µs to 10 s.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `rpc` and `code` (the gRPC status code's name).
pub const REQUESTS: &str = "vecrec_requests_total";
/// Request latency in seconds by `rpc`, from arrival to answer.
pub const REQUEST_SECONDS: &str = "vecrec_request_duration_seconds";
/// Stage latency in seconds by `stage` (`encode`, `source_<name>`, `rerank`,
/// `fusion`, `search`, `queue`).
pub const STAGE_SECONDS: &str = "vecrec_stage_duration_seconds";
/// Requests being worked on.
pub const IN_FLIGHT: &str = "vecrec_requests_in_flight";
/// Requests waiting for a free place.
pub const QUEUED: &str = "vecrec_requests_queued";
/// Requests refused with `RESOURCE_EXHAUSTED` by admission control, by `rpc`,
/// `line` and `reason` (`no_line`, `displaced`, `stale`, `queue_wait`,
/// `runtime_behind`).
pub const SHED: &str = "vecrec_requests_shed_total";
/// How long the runtime's queued tasks last took to run, in seconds (what a
/// call waits for a thread before its handler starts).
pub const RUNTIME_LAG: &str = "vecrec_runtime_lag_seconds";
/// Requests stopped between stages because their deadline passed, by `stage`.
pub const DEADLINE_STOPS: &str = "vecrec_deadline_stops_total";
/// Texts per forward pass of the server's encoder (dynamic batching).
pub const ENCODER_BATCH_TEXTS: &str = "vecrec_encoder_batch_texts";
/// Requests joined into one forward pass of the server's encoder.
pub const ENCODER_BATCH_REQUESTS: &str = "vecrec_encoder_batch_requests";
/// The served generation's number (`gen-N`).
pub const GENERATION: &str = "vecrec_generation";
/// Items in the served generation.
pub const ITEMS: &str = "vecrec_items";
/// Write-ahead log records not yet folded into a generation.
pub const PENDING_RECORDS: &str = "vecrec_live_pending_records";
/// The last write-ahead log record applied here, by role (`writer`, or
/// `follower` for a replica reading another's log): a follower's lag is
/// its writer's value less its own.
pub const LOG_LAST_RECORD: &str = "vecrec_live_last_record";
/// Compactions that wrote a generation.
pub const COMPACTIONS: &str = "vecrec_compactions_total";
/// Calls refused before any service saw them, by reason (unauthenticated,
/// permission_denied).
pub const REFUSED: &str = "vecrec_calls_refused_total";
/// Connections open now.
pub const CONNECTIONS: &str = "vecrec_connections";
/// Connections closed by the server, by reason (limit, idle, handshake).
pub const CONNECTIONS_CLOSED: &str = "vecrec_connections_closed_total";
/// Recommend calls served under an experiment, by experiment and arm.
pub const EXPERIMENT_REQUESTS: &str = "vecrec_experiment_requests_total";
/// Latency of Recommend calls under an experiment, by experiment and arm.
pub const EXPERIMENT_SECONDS: &str = "vecrec_experiment_request_duration_seconds";
/// Items shown under an experiment, by experiment and arm.
pub const EXPERIMENT_EXPOSURES: &str = "vecrec_experiment_exposures_total";
/// Feedback events naming a served list, by experiment, arm (in
/// interleaving the team that placed the item; `unknown` for a list served
/// before a restart or too long ago) and kind (click, conversion, …).
pub const EXPERIMENT_FEEDBACK: &str = "vecrec_experiment_feedback_total";
/// Served-generation checksum scrubs, by result (ok, damaged).
pub const SCRUBS: &str = "vecrec_scrubs_total";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls
/// return the same handle) without serving it.
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Prefix("vecrec_encoder_batch".into()),
            BATCH_BUCKETS,
        )?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Another thread won the race; its handle is the one in use.
        return HANDLE
            .get()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("another metrics recorder is installed"));
    }
    describe();
    let _ = HANDLE.set(handle.clone());
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;
    Ok(handle)
}

/// Installs the recorder and serves `GET /metrics` (Prometheus text format)
/// on `addr` from the current tokio runtime until the process ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &handle).await {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok(local)
}

/// Answers one HTTP/1.x request on `stream`: the metrics for `GET /metrics`,
/// 404 for other paths, 405 for other methods; then closes the connection.
async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head (bounded: 16 KiB, 5 s).
    let head = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    let line =
        String::from_utf8_lossy(buf.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", handle.render()),
        ("GET", _) => (
            "404 Not Found",
            "not found; metrics are at /metrics\n".to_owned(),
        ),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, "Requests answered, by rpc and gRPC status code");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Request latency by rpc and status code"
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Latency of each stage of a request"
    );
    describe_gauge!(IN_FLIGHT, "Requests being worked on");
    describe_counter!(
        REFUSED,
        "Calls refused before any service saw them, by reason"
    );
    describe_gauge!(CONNECTIONS, "Connections open");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections closed by the server, by reason (limit, idle, handshake)"
    );
    describe_counter!(
        SCRUBS,
        "Checksum scrubs of the served generation, by result"
    );
    describe_gauge!(QUEUED, "Requests waiting for a free place");
    describe_gauge!(
        RUNTIME_LAG,
        Unit::Seconds,
        "How long the runtime's queued tasks last took to run"
    );
    describe_counter!(
        SHED,
        "Requests refused with RESOURCE_EXHAUSTED by admission control"
    );
    describe_counter!(
        DEADLINE_STOPS,
        "Requests stopped between stages by their deadline"
    );
    describe_histogram!(
        ENCODER_BATCH_TEXTS,
        "Texts per forward pass of the server's encoder"
    );
    describe_histogram!(
        ENCODER_BATCH_REQUESTS,
        "Requests joined into one forward pass"
    );
    describe_gauge!(GENERATION, "The served generation's number");
    describe_gauge!(ITEMS, "Items in the served generation");
    describe_gauge!(PENDING_RECORDS, "Write-ahead log records not yet compacted");
    describe_gauge!(
        LOG_LAST_RECORD,
        "The last write-ahead log record applied here, by role (writer, follower)"
    );
    describe_counter!(COMPACTIONS, "Compactions that wrote a generation");
}

/// Records `seconds` under [`STAGE_SECONDS`] for `stage`.
pub fn stage(stage: &'static str, seconds: f64) {
    metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(seconds);
}
