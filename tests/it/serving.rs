//! Serving over a real socket: socket options, admission control, deadlines
//! and the metrics endpoint. Every server here listens on 127.0.0.1:0, and
//! every load loop is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Code;
use vecrec::config::Config;
use vecrec::engine::Engine;
use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;

use crate::common::{encoder, sample_index};

struct Server {
    client: RecommenderClient<tonic::transport::Channel>,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap();
    }
}

/// Serves the sample index with `cfg` (and the shared test encoder).
async fn start(cfg: Config) -> Server {
    let s = sample_index();
    let e = Arc::new(Engine::open(&s.root, cfg, Some(encoder())).unwrap());
    let slot = Arc::new(vecrec::serving::EngineSlot::new(&s.root, e));
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        vecrec::grpc::serve(slot, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let mut tries = 0;
    let client = loop {
        match RecommenderClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    Server {
        client,
        addr,
        stop: Some(tx),
        handle,
    }
}

/// Texts long enough that embedding them keeps the server busy for a while.
fn heavy_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "text {i}: a long and winding description of a garden in spring, with roses, \
                 compost heaps, tomato plants, bees, a greenhouse, rain barrels and a shed full \
                 of tools that have seen better days, written out at length so that the \
                 tokenizer has plenty to do for every single one of these many texts"
            )
        })
        .collect()
}

/// The accepted socket itself carries TCP_NODELAY and SO_KEEPALIVE: without
/// NODELAY every answer waits for the client's delayed ACK (~40 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_have_nodelay_and_keepalive() {
    use tokio_stream::StreamExt;
    let cfg = Config::default();
    assert!(cfg.server.tcp_keepalive_s > 0);
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let mut incoming = vecrec::grpc::incoming(listener, &cfg.server, Default::default());
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("no connection accepted")
        .unwrap()
        .unwrap();
    let accepted = accepted.tcp();
    assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is off");
    let sock = socket2::SockRef::from(accepted);
    assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE is off");
    assert_eq!(
        sock.tcp_keepalive_time().unwrap(),
        Duration::from_secs(cfg.server.tcp_keepalive_s)
    );
}

/// The server advertises no more streams per connection than h2's smallest
/// budget of unread small DATA frames holds (25,600 bytes of framing
/// overhead; a unary call's frame costs up to 251: 256 less the 5-byte
/// prefix of a gRPC message), so a flood of small calls past saturation is
/// answered instead of having its connection closed (`ENHANCE_YOUR_CALM`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_fits_h2s_budget_of_unread_small_frames() {
    let cfg = Config::default();
    let limit = cfg.server.max_concurrent_streams as usize;
    assert!(limit * 251 <= 25_600, "{limit} streams a connection");
    let server = start(cfg).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // The server's SETTINGS come in the first exchange after the handshake.
    let t = Instant::now();
    loop {
        client = client.ready().await.unwrap();
        if client.current_max_send_streams() == limit {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the server advertised {} streams, not {limit}",
            client.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    server.shut_down().await;
}

/// With one place and no line, a burst of heavy calls gets some answers and
/// RESOURCE_EXHAUSTED for the rest, at once, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_capacity_calls_are_refused_at_once() {
    let _alone = crate::common::heavy().await;
    let mut cfg = Config::default();
    cfg.server.max_concurrent_requests = 1;
    cfg.server.max_queued_requests = 0;
    let server = start(cfg).await;
    let texts = heavy_texts(64);
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut c = server.client.clone();
        let texts = texts.clone();
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.embed(pb::EmbedRequest { texts }).await;
            (r.map(|_| ()).map_err(|s| s.code()), t.elapsed())
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    let mut slowest_ok = Duration::ZERO;
    let mut slowest_refusal = Duration::ZERO;
    for c in calls {
        match c.await.unwrap() {
            (Ok(()), t) => {
                ok += 1;
                slowest_ok = slowest_ok.max(t);
            }
            (Err(Code::ResourceExhausted), t) => {
                refused += 1;
                slowest_refusal = slowest_refusal.max(t);
            }
            (Err(other), _) => panic!("unexpected status {other:?}"),
        }
    }
    assert!(ok >= 1, "nothing was served");
    assert!(refused >= 1, "nothing was refused ({ok} served)");
    // A refusal does not wait for the work in progress.
    assert!(
        slowest_refusal < slowest_ok,
        "a refusal took {slowest_refusal:?}, the slowest answer {slowest_ok:?}"
    );
    server.shut_down().await;
}

/// A call whose deadline passes while it waits in line is answered
/// DEADLINE_EXCEEDED by the server when the deadline passes, not when a
/// place frees, and its work never starts. The call goes over a raw HTTP/2
/// stream with a `grpc-timeout` header, since tonic's client would enforce
/// the deadline itself and cancel first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_stops_before_its_work() {
    let _alone = crate::common::heavy().await;
    let mut cfg = Config::default();
    cfg.server.max_concurrent_requests = 1;
    cfg.server.max_queued_requests = 8;
    // The heavy call takes longer than the default 10 s in a debug build,
    // and its deadline now stops it between encoder batches.
    cfg.server.request_timeout_ms = 120_000;
    let server = start(cfg).await;
    let item_id = sample_index_item();
    let mut busy = server.client.clone();
    // The most texts a call may carry, each at the tokenizer's length limit.
    let texts: Vec<String> = heavy_texts(256).into_iter().map(|t| t.repeat(4)).collect();
    let hog = tokio::spawn(async move { busy.embed(pb::EmbedRequest { texts }).await });
    // Let the heavy call take the only place.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = pb::SimilarItemsRequest {
        item_id,
        k: 5,
        ..Default::default()
    };
    let t = Instant::now();
    let (status, message) = raw_unary(server.addr, "SimilarItems", &request, "150m").await;
    let waited = t.elapsed();
    assert!(
        !hog.is_finished(),
        "the heavy call finished first; the test proves nothing"
    );
    assert_eq!(status, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("admission"), "{message}");
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_secs(2),
        "the expired call was answered after {waited:?}"
    );
    let hog = hog.await.unwrap();
    assert!(hog.is_ok(), "{hog:?}");
    server.shut_down().await;
}

/// One unary `vecrec.v1.Recommender/{method}` call over a raw HTTP/2 stream
/// with `grpc-timeout: {timeout}`; the answer's grpc-status and grpc-message.
async fn raw_unary<M: prost::Message>(
    addr: std::net::SocketAddr,
    method: &str,
    msg: &M,
    timeout: &str,
) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/vecrec.v1.Recommender/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (answer, mut send) = client.send_request(req, false).unwrap();
    let body = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    send.send_data(frame.into(), true).unwrap();
    let (parts, mut body) = answer.await.unwrap().into_parts();
    // A trailers-only answer carries the status in its headers.
    let headers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers().await.unwrap().expect("no trailers")
    };
    let get = |k: &str| {
        headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (get("grpc-status").parse().unwrap(), get("grpc-message"))
}

fn sample_index_item() -> String {
    let e = Engine::open(&sample_index().root, Config::default(), None).unwrap();
    e.index().store().external_id(3).to_owned()
}

/// The engine checks the deadline before each stage: an expired one stops a
/// recommendation before any source runs, and a text search before the
/// encoder sees the query.
#[test]
fn the_engine_stops_at_the_first_stage_past_the_deadline() {
    use vecrec::deadline::Deadline;
    use vecrec::engine::{RecommendOptions, UserRef};
    use vecrec::error::Error;
    let s = sample_index();
    let mut cfg = Config::default();
    cfg.encoder.sessions = 1;
    let enc = Arc::new(vecrec::encoder::Encoder::load_serving(&cfg.encoder).unwrap());
    let e = Engine::open(&s.root, cfg, Some(enc.clone())).unwrap();
    let past = Deadline::at(Instant::now() - Duration::from_millis(1));
    let user = e.users().id(0).to_owned();
    let opts = RecommendOptions {
        k: 5,
        deadline: past,
        ..Default::default()
    };
    match e.recommend(UserRef::Id(&user), &opts) {
        Err(Error::DeadlineExceeded { stage }) => assert_eq!(stage, "recommend"),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let before = enc.batch_stats().unwrap();
    match e.search_text_within("a garden in spring", 5, None, past) {
        Err(Error::DeadlineExceeded { stage }) => assert_eq!(stage, "encode"),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert_eq!(enc.batch_stats().unwrap(), before, "the encoder ran anyway");
    // With time left, the same calls answer.
    let later = Deadline::after(Duration::from_secs(30));
    let opts = RecommendOptions {
        k: 5,
        deadline: later,
        ..Default::default()
    };
    assert_eq!(e.recommend(UserRef::Id(&user), &opts).unwrap().len(), 5);
    assert_eq!(
        e.search_text_within("a garden in spring", 5, None, later)
            .unwrap()
            .len(),
        5
    );
}

/// The Prometheus endpoint answers during load with requests by RPC and
/// code, per-RPC and per-stage latency histograms, requests in flight and the
/// served generation's gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_during_load() {
    let _alone = crate::common::heavy().await;
    let metrics = vecrec::telemetry::serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = start(Config::default()).await;
    let e = Engine::open(&sample_index().root, Config::default(), None).unwrap();
    let user = e.users().id(1).to_owned();
    let item = e.index().store().external_id(7).to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut load = Vec::new();
    for i in 0..4 {
        let mut c = server.client.clone();
        let (user, item) = (user.clone(), item.clone());
        load.push(tokio::spawn(async move {
            // Bounded: 60 rounds or 20 s; returns the rounds done.
            let mut rounds = 0u32;
            for _ in 0..60 {
                if Instant::now() > deadline {
                    break;
                }
                rounds += 1;
                c.recommend(pb::RecommendRequest {
                    user_id: user.clone(),
                    k: 5,
                    ..Default::default()
                })
                .await
                .unwrap();
                c.similar_items(pb::SimilarItemsRequest {
                    item_id: item.clone(),
                    k: 5,
                    ..Default::default()
                })
                .await
                .unwrap();
                c.search_text(pb::SearchTextRequest {
                    query: format!("a garden in spring {i}"),
                    k: 5,
                    ..Default::default()
                })
                .await
                .unwrap();
                let _ = c
                    .get_item(pb::GetItemRequest {
                        id: "no-such-item".into(),
                        ..Default::default()
                    })
                    .await;
            }
            rounds
        }));
    }
    // Scrape while the load runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = scrape(metrics).await;
    assert!(
        load.iter().any(|t| !t.is_finished()),
        "the load ended before the scrape"
    );
    let mut rounds = 0.0;
    for t in load {
        rounds += f64::from(t.await.unwrap());
    }
    let after = scrape(metrics).await;
    for text in [&during, &after] {
        assert!(text.contains("vecrec_requests_in_flight"), "{text}");
        assert!(text.contains("vecrec_items "), "{text}");
        assert!(text.contains("vecrec_generation "), "{text}");
    }
    let ok_during = value(
        &during,
        r#"vecrec_requests_total{rpc="Recommend",code="OK"}"#,
    );
    let ok_after = value(
        &after,
        r#"vecrec_requests_total{rpc="Recommend",code="OK"}"#,
    );
    assert!(
        ok_after > ok_during && ok_during > 0.0,
        "{ok_during} then {ok_after}"
    );
    // Every call of the load is counted (other tests in this binary may
    // add more; a slow machine may stop the load before its 60 rounds).
    assert!(rounds > 0.0);
    let not_found = value(
        &after,
        r#"vecrec_requests_total{rpc="GetItem",code="NOT_FOUND"}"#,
    );
    assert!(not_found >= rounds, "{not_found} counted, {rounds} made");
    let similar = value(
        &after,
        r#"vecrec_requests_total{rpc="SimilarItems",code="OK"}"#,
    );
    assert!(similar >= rounds, "{similar} counted, {rounds} made");
    // Other tests in this binary serve too: the gauge shows some index.
    assert!(value(&after, "vecrec_items ") > 0.0, "{after}");
    for series in [
        r#"vecrec_request_duration_seconds_count{rpc="SearchText",code="OK"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="encode"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="source_ease"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="source_two_tower"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="rerank"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="fusion"}"#,
        r#"vecrec_stage_duration_seconds_count{stage="search"}"#,
    ] {
        assert!(value(&after, series) > 0.0, "{series} missing in\n{after}");
    }
    assert!(after.contains(
        "vecrec_request_duration_seconds_bucket{rpc=\"Recommend\",code=\"OK\",le=\"0.001\"}"
    ));
    server.shut_down().await;
}

pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the series that starts a line with `key`, 0 when absent.
fn value(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `vecrec-load` drives a real server in both loops and reports what it saw:
/// every closed-loop call answered, ordered percentiles, and an open loop
/// that sends about the rate asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_a_run_against_a_server() {
    let server = start(Config::default()).await;
    let addr = server.addr;
    let interactions = sample_index().data.join("interactions.csv");
    let run = |extra: &'static [&'static str]| {
        let interactions = interactions.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_vecrec-load"))
                .args([
                    "--addr",
                    &addr.to_string(),
                    "--rpc",
                    "similar",
                    "--duration",
                    "1",
                ])
                .args(["--warmup", "0.2", "--label", "test"])
                .arg("--interactions")
                .arg(&interactions)
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        })
    };
    let closed = run(&["--concurrency", "2"]).await.unwrap();
    assert_eq!(closed["label"], "test");
    assert_eq!(closed["mode"], "closed");
    assert_eq!(closed["errors"], serde_json::json!({}), "{closed}");
    assert_eq!(closed["partial"], 0, "one node answered partial: {closed}");
    let ok = closed["ok"].as_u64().unwrap();
    assert!(
        ok > 10 && ok == closed["requests"].as_u64().unwrap(),
        "{closed}"
    );
    let q = |k: &str| closed[k].as_f64().unwrap();
    assert!(q("p50_ms") <= q("p90_ms") && q("p90_ms") <= q("p99_ms") && q("p99_ms") <= q("max_ms"));
    let open = run(&["--rate", "100"]).await.unwrap();
    assert_eq!(open["mode"], "open");
    let sent = open["requests"].as_u64().unwrap();
    assert!(
        (90..=110).contains(&sent),
        "100/s for 1 s sent {sent}: {open}"
    );
    server.shut_down().await;
}
