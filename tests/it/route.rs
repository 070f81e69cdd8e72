//! A partitioned index behind `vecrec route`, as processes on loopback: a
//! sample catalogue split into 3 shards × 2 replicas (the two replicas of a
//! shard on one root, as the pods of a StatefulSet share a volume: the
//! first writes the shard's log, the second follows it) against one node
//! over the whole catalogue, both with exact search. Every load loop is
//! bounded in count and time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Code;
use vecrec::catalog::{read_catalog, read_interactions};
use vecrec::encoder::Encoder;
use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;
use vecrec::layout::shard_of;
use vecrec::pipeline::{build, build_shards, BuildOptions, ShardWork};
use vecrec::sample::{generate, write_sample, SampleConfig};

use crate::common::first_line;

type Client = RecommenderClient<Channel>;

const SHARDS: usize = 3;

/// A child process, killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    addr: String,
    metrics: Option<String>,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn client(&self) -> Client {
        RecommenderClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a `vecrec` subcommand and reads the address (and metrics
/// address) it prints.
fn start(args: &[&str]) -> Proc {
    start_with(args, &[])
}

/// [`start`] with environment variables `env` (configuration overrides).
fn start_with(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vecrec"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = first_line(&mut child);
    let mut metrics = None;
    if let Some(m) = line.strip_prefix("metrics on http://") {
        metrics = Some(m.trim_end_matches("/metrics").to_owned());
        line = first_line(&mut child);
    }
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("vecrec {args:?} did not start: {line:?}"))
        .to_owned();
    Proc {
        child,
        addr,
        metrics,
    }
}

fn serve(root: &Path, config: &Path) -> Proc {
    serve_at(root, config, "127.0.0.1:0", &[])
}

/// `vecrec serve` on `addr` with `extra` flags.
fn serve_at(root: &Path, config: &Path, addr: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "serve",
        "--index",
        root.to_str().unwrap(),
        "--addr",
        addr,
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start(&args)
}

/// The second replica of shard `s` on a root the first writes: shard 0's
/// names its writer by host name, as the Kubernetes pods do
/// (`--log-writer`), the others say `--follow-log`.
fn follower_flags(s: usize) -> Vec<String> {
    if s == 0 {
        vec!["--log-writer".into(), "another-host".into()]
    } else {
        vec!["--follow-log".into()]
    }
}

/// Polls `get` (every 50 ms, for at most 10 s) until it returns true.
async fn eventually<F, Fut>(what: &str, mut get: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(10);
    while !get().await {
        assert!(Instant::now() < until, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `text` embedded by the server `p`.
async fn embedded(p: &Proc, text: &str) -> Vec<f32> {
    p.client()
        .await
        .embed(pb::EmbedRequest {
            texts: vec![text.to_owned()],
        })
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .remove(0)
        .values
}

/// The first item SearchText through `c` answers `text` with.
async fn top_text(c: &mut Client, text: &str) -> String {
    let found = c
        .search_text(pb::SearchTextRequest {
            query: text.to_owned(),
            k: 3,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    found.items[0].item_id.clone()
}

/// Whether the server at `p` holds item `id` now.
async fn holds(p: &Proc, id: &str) -> bool {
    p.client()
        .await
        .get_item(pb::GetItemRequest {
            id: id.to_owned(),
            ..Default::default()
        })
        .await
        .is_ok()
}

fn route(replicas: &[Vec<String>], extra: &[&str]) -> Proc {
    route_with(replicas, extra, &[])
}

/// [`route`] with environment variables `env` (configuration overrides).
fn route_with(replicas: &[Vec<String>], extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec!["route".to_owned(), "--addr".into(), "127.0.0.1:0".into()];
    for r in replicas {
        args.push("--shard".into());
        args.push(r.join(","));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with(&args, env)
}

/// A sample catalogue and its interactions, written under `dir`: `items`
/// items, `users` users with `history` (fewest, most) items each.
fn sample_data(
    dir: &Path,
    seed: u64,
    items: usize,
    users: usize,
    history: (usize, usize),
) -> (
    Vec<vecrec::catalog::CatalogItem>,
    Vec<vecrec::catalog::Interaction>,
) {
    let data = dir.join("sample");
    let cfg = SampleConfig {
        seed,
        items,
        users,
        min_history: history.0,
        max_history: history.1,
    };
    write_sample(&generate(&cfg).unwrap(), &data).unwrap();
    (
        read_catalog(&data.join("catalog.jsonl")).unwrap(),
        read_interactions(&data.join("interactions.csv")).unwrap(),
    )
}

/// The content pipeline for one node, built from `items` and `inter`
/// under `dir/one` with an encoder of its own (the tests then build the
/// shards too, embedding every text twice, which on the shared test
/// encoder would hold up the tests that time requests): that encoder, the
/// options, the root, and `dir/parts` for the shards.
fn one_node_build(
    dir: &Path,
    items: &[vecrec::catalog::CatalogItem],
    inter: &[vecrec::catalog::Interaction],
) -> (
    Encoder,
    BuildOptions,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let opts = BuildOptions {
        progress: false,
        train: None,
        learn_fusion: None,
        ..Default::default()
    };
    let enc = Encoder::load(&vecrec::config::Config::default().encoder, 1).unwrap();
    let one_root = dir.join("one");
    build(&one_root, &enc, items, inter, &opts).unwrap();
    (enc, opts, one_root, dir.join("parts"))
}

/// One pod's part of a partitioned build: shard `index`, not waiting for a front.
fn pod(index: usize) -> ShardWork {
    ShardWork::One {
        index,
        wait_front: Duration::ZERO,
    }
}

/// Recommend `k` items for the stored user `user`.
fn for_user(user: &str, k: u32) -> pb::RecommendRequest {
    pb::RecommendRequest {
        user_id: user.to_owned(),
        k,
        ..Default::default()
    }
}

fn ids(items: &[pb::ScoredItem]) -> Vec<String> {
    items.iter().map(|i| i.item_id.clone()).collect()
}

/// SimilarItems for `id`: 10, no filter.
fn similar(id: &str) -> pb::SimilarItemsRequest {
    pb::SimilarItemsRequest {
        item_id: id.to_owned(),
        k: 10,
        filter: None,
    }
}

/// SimilarItems for `id` from one node and through a router: the routed
/// answer is complete and the same (`what` is added to the message);
/// returns it.
async fn similar_same(
    one: &mut Client,
    routed: &mut Client,
    id: &str,
    what: &str,
) -> Vec<pb::ScoredItem> {
    let a = one.similar_items(similar(id)).await.unwrap().into_inner();
    let b = routed
        .similar_items(similar(id))
        .await
        .unwrap()
        .into_inner();
    assert!(!b.partial, "SimilarItems {id}{what}");
    assert_same(&format!("SimilarItems {id}{what}"), &a.items, &b.items);
    b.items
}

/// The lists are the same items in the same order with the same scores
/// (up to the last bits of a float).
fn assert_same(what: &str, one: &[pb::ScoredItem], routed: &[pb::ScoredItem]) {
    assert_eq!(ids(one), ids(routed), "{what}");
    for (a, b) in one.iter().zip(routed) {
        assert!(
            (a.score - b.score).abs() < 1e-5,
            "{what}: {a:?} against {b:?}"
        );
    }
}

/// Scrapes a Prometheus endpoint and returns the summed value of every
/// series of `metric`.
fn scrape(addr: &str, metric: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_by_two_replicas_answer_as_one_node_and_survive_killed_replicas() {
    let _alone = crate::common::heavy().await;
    // The data and both builds: one node, and 3 shards from the same rows.
    let dir = tempfile::tempdir().unwrap();
    let (items, inter) = sample_data(dir.path(), 11, 600, 60, (10, 30));
    let (enc, opts, one_root, parts) = one_node_build(dir.path(), &items, &inter);
    let reports =
        build_shards(&parts, &enc, &items, &inter, &opts, SHARDS, ShardWork::All).unwrap();
    assert_eq!(reports.len(), SHARDS);
    for (s, r) in reports.iter().enumerate() {
        let owned = items
            .iter()
            .filter(|i| shard_of(&i.id, SHARDS) == s)
            .count();
        assert!(owned > 0, "shard {s} owns no item");
        assert_eq!(r.items, owned, "shard {s}");
    }
    // A shard out of range is refused.
    let e = build_shards(&parts, &enc, &items, &inter, &opts, SHARDS, pod(3)).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");

    let config = dir.path().join("exact.toml");
    std::fs::write(&config, "[search]\nexact = true\n").unwrap();
    let one = serve(&one_root, &config);
    // Two replicas per shard on one root: the first writes the shard's log
    // (shard 0's by its host name, as a pod is named), the second follows.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut replicas: Vec<Vec<Proc>> = Vec::new();
    for s in 0..SHARDS {
        let shard_root = vecrec::layout::shard_root(&parts, s);
        let writer: Vec<&str> = if s == 0 {
            vec!["--log-writer", host.trim()]
        } else {
            vec![]
        };
        let follower = follower_flags(s);
        let follower: Vec<&str> = follower.iter().map(String::as_str).collect();
        replicas.push(vec![
            serve_at(&shard_root, &config, "127.0.0.1:0", &writer),
            serve_at(&shard_root, &config, "127.0.0.1:0", &follower),
        ]);
    }
    let names: Vec<Vec<String>> = replicas
        .iter()
        .map(|ps| ps.iter().map(|p| p.addr.clone()).collect())
        .collect();
    // Hedges without a budget (`route.hedge_budget` 1: one a call), so
    // the hedging below does not depend on how slow earlier calls were.
    let router = route_with(
        &names,
        &["--metrics-addr", "127.0.0.1:0"],
        &[("VECREC_ROUTE__HEDGE_BUDGET", "1")],
    );
    let mut one_c = one.client().await;
    let mut rc = router.client().await;

    // The same answers as one node.
    let some_items: Vec<String> = items.iter().step_by(30).map(|i| i.id.clone()).collect();
    for id in &some_items {
        let b = similar_same(&mut one_c, &mut rc, id, "").await;
        let owners: std::collections::HashSet<usize> =
            b.iter().map(|i| shard_of(&i.item_id, SHARDS)).collect();
        assert!(
            owners.len() > 1,
            "the answer should span shards: {owners:?}"
        );
    }
    for q in [
        "a quiet film about the sea",
        "space adventure",
        "cooking for friends",
    ] {
        let req = pb::SearchTextRequest {
            query: q.into(),
            k: 10,
            filter: None,
        };
        let a = one_c.search_text(req.clone()).await.unwrap().into_inner();
        let b = rc.search_text(req).await.unwrap().into_inner();
        assert!(!b.partial);
        assert_same(&format!("SearchText {q}"), &a.items, &b.items);
    }
    // Replicas given by host name, as a Kubernetes headless Service lists
    // them, are looked up (`localhost` may give ::1 too, where nothing
    // listens: that address fails and another is tried).
    let by_name: Vec<Vec<String>> = names
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|a| a.replace("127.0.0.1:", "localhost:"))
                .collect()
        })
        .collect();
    assert!(by_name[0][0].starts_with("localhost:"), "{by_name:?}");
    let named = route(&by_name, &[]);
    let mut nc = named.client().await;
    for id in some_items.iter().take(5) {
        similar_same(&mut one_c, &mut nc, id, " by host name").await;
    }
    drop(nc);
    drop(named);
    let mut users: Vec<&str> = inter.iter().map(|i| i.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    for u in &users {
        let req = for_user(u, 10);
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert_same(&format!("Recommend {u}"), &a.items, &b.items);
    }
    for h in 0..5 {
        let history: Vec<String> = items
            .iter()
            .skip(h * 7)
            .step_by(41)
            .take(6)
            .map(|i| i.id.clone())
            .collect();
        let req = pb::RecommendRequest {
            history,
            k: 10,
            ..Default::default()
        };
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert_same(&format!("Recommend history {h}"), &a.items, &b.items);
    }
    let got = rc
        .get_item(pb::GetItemRequest {
            id: items[5].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, items[5].id);
    let unknown = rc
        .recommend(pb::RecommendRequest {
            user_id: "nobody-at-all".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // The router bounds its own work: one call at a time, no line.
    let tight = dir.path().join("tight.toml");
    std::fs::write(
        &tight,
        "[route]\nmax_in_flight = 1\n[server]\nmax_queued_requests = 0\n",
    )
    .unwrap();
    let narrow = route(&names, &["--config", tight.to_str().unwrap()]);
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(narrow.client().await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let id = some_items[i % some_items.len()].clone();
        calls.spawn(async move {
            c.similar_items(similar(&id))
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        });
    }
    let answers: Vec<Result<(), Code>> = calls.join_all().await;
    assert!(answers.iter().any(Result::is_ok), "{answers:?}");
    assert!(
        answers.contains(&Err(Code::ResourceExhausted)),
        "16 calls at once through a router with one place: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(()) | Err(Code::ResourceExhausted))),
        "{answers:?}"
    );
    drop(narrow);

    // Writes go to the owning shard's writer, and only there; its follower
    // reads them from the log they share.
    let fresh = pb::Item {
        id: "routed-new-item".into(),
        title: "A lighthouse keeper's winter".into(),
        text: "A quiet film about the sea, a lighthouse and a long winter.".into(),
        ..Default::default()
    };
    let owner = shard_of(&fresh.id, SHARDS);
    let write = pb::UpsertItemsRequest {
        items: vec![fresh.clone()],
    };
    let up = rc.upsert_items(write.clone()).await.unwrap().into_inner();
    assert_eq!(up.upserted, 1);
    // Read through the router at once: the owner's writer answers what
    // changed since the build (its follower reads the write a moment later).
    for _ in 0..20 {
        let got = rc
            .get_item(pb::GetItemRequest {
                id: fresh.id.clone(),
                ..Default::default()
            })
            .await;
        assert!(got.is_ok(), "{got:?}");
    }
    assert!(holds(&replicas[owner][0], &fresh.id).await, "the writer");
    eventually("the follower reads the upsert", || {
        holds(&replicas[owner][1], &fresh.id)
    })
    .await;
    for (s, procs) in replicas.iter().enumerate().filter(|(s, _)| *s != owner) {
        for p in procs {
            assert!(!holds(p, &fresh.id).await, "shard {s} replica {}", p.addr);
        }
    }
    let log = vecrec::layout::shard_root(&parts, owner).join(vecrec::layout::WAL_FILE);
    assert!(log.exists(), "the shard's log is under its root");
    // A follower refuses a write sent to it, before any work.
    let refused = replicas[owner][1]
        .client()
        .await
        .upsert_items(write.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().starts_with(vecrec::live::FOLLOWER),
        "{refused:?}"
    );
    // A follower started again (the same address, as a pod keeps its name)
    // reads every acknowledged write from the log at once.
    let addr = replicas[owner][1].addr.clone();
    replicas[owner][1].kill();
    // A replica the router knows to follow does not fail a write the
    // writer takes while it is down.
    let again = rc.upsert_items(write.clone()).await.unwrap().into_inner();
    assert_eq!(again.upserted, 1);
    let follower = follower_flags(owner);
    let mut follower: Vec<&str> = follower.iter().map(String::as_str).collect();
    follower.extend(["--metrics-addr", "127.0.0.1:0"]);
    replicas[owner][1] = serve_at(
        &vecrec::layout::shard_root(&parts, owner),
        &config,
        &addr,
        &follower,
    );
    assert!(
        holds(&replicas[owner][1], &fresh.id).await,
        "after a restart"
    );
    // It says how far it has read: the writer's last record.
    let follower_metrics = replicas[owner][1].metrics.clone().unwrap();
    eventually(
        "the follower's gauge shows the writer's last record",
        || async {
            scrape(
                &follower_metrics,
                "vecrec_live_last_record{role=\"follower\"}",
            ) == again.sequence as f64
        },
    )
    .await;
    // A shard refuses an item it does not own (a write that bypassed the router).
    let stranger = &replicas[(owner + 1) % SHARDS][0];
    let refused = stranger
        .client()
        .await
        .upsert_items(write.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("vecrec route"), "{refused:?}");
    assert_eq!(top_text(&mut rc, &fresh.text).await, fresh.id);
    let gone = rc
        .delete_items(pb::DeleteItemsRequest {
            ids: vec![fresh.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.deleted, 1);
    eventually("the follower reads the delete", || async {
        !holds(&replicas[owner][1], &fresh.id).await
    })
    .await;
    let err = rc
        .get_item(pb::GetItemRequest {
            id: fresh.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let events = rc
        .record_events(pb::RecordEventsRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(events.code(), Code::Unimplemented);

    // The router reads its own writes on a follower too: every call to a
    // shard names the last log record a write to it got back
    // (x-vecrec-min-sequence), and a follower that has not read that far
    // reads its log's tail first. This one would read it only after a
    // minute on its own (the longest interval allowed).
    replicas[owner][1].kill();
    let mut args = vec![
        "serve".to_owned(),
        "--index".into(),
        vecrec::layout::shard_root(&parts, owner)
            .display()
            .to_string(),
        "--addr".into(),
        addr.clone(),
        "--config".into(),
        config.display().to_string(),
    ];
    args.extend(follower_flags(owner));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    replicas[owner][1] = start_with(&args, &[("VECREC_LIVE__FOLLOW_INTERVAL_MS", "60000")]);
    let later = pb::Item {
        id: (0..)
            .map(|k| format!("slow-follower-{k}"))
            .find(|id| shard_of(id, SHARDS) == owner)
            .unwrap(),
        title: "Orchard at Dusk".into(),
        text: "an orchard keeper walks the rows of pear trees at dusk".into(),
        ..Default::default()
    };
    let wrote = rc
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![later.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    for round in 0..6 {
        // Replicas are taken in turn: half of these start on the follower.
        assert_eq!(
            top_text(&mut rc, &later.text).await,
            later.id,
            "round {round}"
        );
    }
    // Asked directly: a record it cannot have read is declined, a bad
    // number refused.
    let mut slow = replicas[owner][1].client().await;
    let ask = |n: &str| {
        let mut r = tonic::Request::new(pb::GetItemRequest {
            id: later.id.clone(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("x-vecrec-min-sequence", n.parse().unwrap());
        r
    };
    let got = slow.get_item(ask(&wrote.sequence.to_string())).await;
    assert!(got.is_ok(), "{got:?}");
    let ahead = slow
        .get_item(ask(&(wrote.sequence + 100).to_string()))
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), Code::FailedPrecondition, "{ahead:?}");
    assert!(
        ahead.message().starts_with(vecrec::live::BEHIND),
        "{ahead:?}"
    );
    let bad = slow.get_item(ask("soon")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // Another router reads a caller's writes too, when the caller sends
    // back the session a write answered with (x-vecrec-written: the last
    // record each shard's part got); a write sent with one answers with
    // both.
    use vecrec::route::WRITTEN_HEADER;
    let other = route(&names, &[]);
    let mut oc = other.client().await;
    let third = pb::Item {
        id: (0..)
            .map(|k| format!("session-{k}"))
            .find(|id| shard_of(id, SHARDS) == owner)
            .unwrap(),
        title: "Lantern Ferry".into(),
        text: "a lantern ferry crosses the black lake to the island chapel".into(),
        ..Default::default()
    };
    let answer = rc
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![third.clone()],
        })
        .await
        .unwrap();
    let session_of = |md: &tonic::metadata::MetadataMap| -> Vec<u64> {
        let v = md
            .get(WRITTEN_HEADER)
            .expect("a routed write answers with a session");
        v.to_str()
            .unwrap()
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let session = session_of(answer.metadata());
    assert_eq!(session.len(), SHARDS);
    assert_eq!(session[owner], answer.get_ref().sequence);
    assert!(
        (0..SHARDS).all(|s| s == owner || session[s] == 0),
        "{session:?}"
    );
    // The follower has not read it on its own (it reads its log each minute).
    assert!(!holds(&replicas[owner][1], &third.id).await);
    fn sent<Q>(q: Q, session: &[u64]) -> tonic::Request<Q> {
        let mut r = tonic::Request::new(q);
        let text: Vec<String> = session.iter().map(u64::to_string).collect();
        r.metadata_mut()
            .insert(WRITTEN_HEADER, text.join(",").parse().unwrap());
        r
    }
    // SearchVector: no Embed call goes first (one carrying the session
    // could make the follower read its log before the search reaches it).
    let vector = embedded(&replicas[0][0], &third.text).await;
    let near = |session: &[u64]| {
        sent(
            pb::SearchVectorRequest {
                vector: vector.clone(),
                k: 3,
                ..Default::default()
            },
            session,
        )
    };
    // Replicas are taken in turn, so the first round that reaches the
    // follower finds the write only by the session.
    for round in 0..6 {
        let found = oc.search_vector(near(&session)).await.unwrap().into_inner();
        assert_eq!(found.items[0].item_id, third.id, "round {round}");
    }
    // Deleted through the other router with the session: the answer's
    // session holds both writes. The follower holds the upsert (read now
    // if it has not yet), not the delete, and the first router's own
    // writes ask no more than the upsert of it: sent the session, it reads
    // the delete on every replica.
    let mut slow = replicas[owner][1].client().await;
    let mut floor = tonic::Request::new(pb::GetItemRequest {
        id: third.id.clone(),
        ..Default::default()
    });
    floor.metadata_mut().insert(
        "x-vecrec-min-sequence",
        session[owner].to_string().parse().unwrap(),
    );
    assert!(
        slow.get_item(floor).await.is_ok(),
        "the follower did not read the upsert"
    );
    let gone = oc
        .delete_items(sent(
            pb::DeleteItemsRequest {
                ids: vec![third.id.clone()],
            },
            &session,
        ))
        .await
        .unwrap();
    let after = session_of(gone.metadata());
    assert_eq!(after[owner], gone.get_ref().sequence);
    assert!(after[owner] > session[owner], "{after:?} {session:?}");
    assert!(
        holds(&replicas[owner][1], &third.id).await,
        "the follower read the delete early"
    );
    for round in 0..6 {
        let found = rc.search_vector(near(&after)).await.unwrap().into_inner();
        assert!(
            found.items.iter().all(|i| i.item_id != third.id),
            "round {round}: {:?}",
            found.items
        );
    }
    // A session that is not one number per shard is refused.
    for bad in [vec![1, 2], vec![1; SHARDS + 1]] {
        let q = pb::GetItemRequest {
            id: third.id.clone(),
            ..Default::default()
        };
        let err = oc.get_item(sent(q, &bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("shards; this router routes"),
            "{err:?}"
        );
    }
    // A write some shards take while another cannot: the error carries
    // the session with the parts taken, so the caller reads them through
    // any router as it would a whole write.
    let dead = (owner + 1) % SHARDS;
    let mut half = names.clone();
    half[dead] = vec!["127.0.0.1:1".to_owned()];
    let halfway = route(&half, &[]);
    let on = |s: usize| pb::Item {
        id: (0..)
            .map(|k| format!("halfway-{k}"))
            .find(|id| shard_of(id, SHARDS) == s)
            .unwrap(),
        title: "Salt Road".into(),
        text: "a salt road runs along the dunes to the lighthouse".into(),
        ..Default::default()
    };
    let (kept, lost) = (on(owner), on(dead));
    let err = halfway
        .client()
        .await
        .upsert_items(sent(
            pb::UpsertItemsRequest {
                items: vec![kept.clone(), lost.clone()],
            },
            &after,
        ))
        .await
        .unwrap_err();
    assert!(
        err.message().contains(&format!("of shard {dead}")),
        "{err:?}"
    );
    let partial = session_of(err.metadata());
    assert!(partial[owner] > after[owner], "{partial:?} {after:?}");
    assert_eq!(partial[dead], after[dead]);
    // Searches take the replicas in turn, so a round reaches the follower,
    // which has not read the write on its own: it finds it by the session.
    let vector = embedded(&replicas[0][0], &kept.text).await;
    for round in 0..6 {
        let q = pb::SearchVectorRequest {
            vector: vector.clone(),
            k: 3,
            ..Default::default()
        };
        let found = oc
            .search_vector(sent(q, &partial))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.items[0].item_id, kept.id, "round {round}");
    }
    drop(halfway);
    rc.delete_items(pb::DeleteItemsRequest { ids: vec![kept.id] })
        .await
        .unwrap();
    drop(oc);
    drop(other);

    // A replica that hangs (SIGSTOP) is hedged around: every call answers,
    // and once another replica beat it, it is tried last, so it is not
    // hedged around again at every other call.
    let stopped = replicas[1][0].child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &stopped])
        .status()
        .unwrap()
        .success());
    let hedges_before = scrape(
        router.metrics.as_ref().unwrap(),
        "vecrec_route_hedges_total",
    );
    // Past `route.down_for_ms` (1 s), so no earlier call's loss has it
    // tried last already.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for id in some_items.iter().take(12) {
        let b = rc.similar_items(similar(id)).await.unwrap().into_inner();
        assert!(!b.partial && b.items.len() == 10);
    }
    assert!(Command::new("kill")
        .args(["-CONT", &stopped])
        .status()
        .unwrap()
        .success());
    let hedges = scrape(
        router.metrics.as_ref().unwrap(),
        "vecrec_route_hedges_total",
    );
    assert!(
        hedges > hedges_before,
        "no call was hedged around the stopped replica"
    );
    assert!(
        hedges - hedges_before <= 4.0,
        "{} hedges in 12 calls: the stopped replica was still tried first",
        hedges - hedges_before
    );

    // `vecrec-load` through the router, Recommend and SimilarItems at
    // once, while one replica of every shard is killed 2 s into its 6 s.
    let csv = dir.path().join("sample/interactions.csv");
    let load = |rpc: &str| {
        Command::new(env!("CARGO_BIN_EXE_vecrec-load"))
            .args(["--addr", &router.addr, "--rpc", rpc, "--label", rpc])
            .args(["--concurrency", "4", "--duration", "6", "--warmup", "0"])
            .arg("--interactions")
            .arg(&csv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let metrics = router.metrics.clone().unwrap();
    let retries_before = scrape(&metrics, "vecrec_route_retries_total");
    let mut loads = [load("recommend"), load("similar")];
    tokio::time::sleep(Duration::from_secs(2)).await;
    for l in &mut loads {
        assert!(
            l.try_wait().unwrap().is_none(),
            "a load ended before the kill"
        );
    }
    for procs in &mut replicas {
        procs[0].kill();
    }
    for l in loads {
        let out = tokio::task::spawn_blocking(move || l.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(run["ok"].as_u64().unwrap() >= 50, "{run}");
        assert_eq!(
            run["errors"],
            serde_json::json!({}),
            "calls failed while one replica of each shard was killed: {run}"
        );
        assert_eq!(run["partial"], 0, "answers without a shard: {run}");
    }
    assert!(
        scrape(&metrics, "vecrec_route_retries_total") > retries_before,
        "no call was retried on another replica after the kill"
    );
    // With the writers gone a write is refused, naming the shard; a
    // router that finds only followers (as DNS lists only ready pods) says
    // that none takes writes.
    let err = rc.upsert_items(write.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&format!("of shard {owner}")),
        "{err:?}"
    );
    let followers: Vec<Vec<String>> = replicas.iter().map(|ps| vec![ps[1].addr.clone()]).collect();
    let err = route(&followers, &[])
        .client()
        .await
        .upsert_items(write)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("no replica of shard {owner} takes writes")),
        "{err:?}"
    );

    // Shard 1 hangs (its last replica stopped): a router waits for it only
    // as long as `route.shard_timeout_ms`, then answers partial from the
    // other shards, or fails naming the deadline.
    let hung = replicas[1][1].child.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &hung])
            .status()
            .unwrap()
            .success())
    };
    let near = some_items
        .iter()
        .find(|id| shard_of(id, SHARDS) == 2)
        .unwrap()
        .clone();
    let timeout = [("VECREC_ROUTE__SHARD_TIMEOUT_MS", "1000")];
    let quick = route_with(&names, &[], &timeout);
    let quick_strict = route_with(&names, &["--on-missing-shard", "fail"], &timeout);
    let (mut qc, mut qsc) = (quick.client().await, quick_strict.client().await);
    // Connected to every replica first, so the deadline is spent waiting.
    for c in [&mut qc, &mut qsc] {
        for _ in 0..4 {
            let b = c.similar_items(similar(&near)).await.unwrap().into_inner();
            assert!(!b.partial);
        }
    }
    signal("-STOP");
    let started = Instant::now();
    let b = qc.similar_items(similar(&near)).await.unwrap().into_inner();
    let waited = started.elapsed();
    let err = qsc.similar_items(similar(&near)).await.unwrap_err();
    signal("-CONT");
    assert!(b.partial);
    assert_eq!(b.items.len(), 10);
    assert!(b.items.iter().all(|i| shard_of(&i.item_id, SHARDS) != 1));
    assert!(
        waited >= Duration::from_millis(1000),
        "answered in {waited:?}, before the hung shard's deadline"
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("shard 1 did not answer within 1000 ms"),
        "{err:?}"
    );
    drop((qc, qsc, quick, quick_strict));

    // Shard 0 with no live replica: partial answers from the others.
    replicas[0][1].kill();
    let other = some_items
        .iter()
        .find(|id| shard_of(id, SHARDS) != 0)
        .unwrap()
        .clone();
    let b = rc
        .similar_items(similar(&other))
        .await
        .unwrap()
        .into_inner();
    assert!(b.partial, "a missing shard must be said");
    assert_eq!(b.items.len(), 10);
    assert!(b.items.iter().all(|i| shard_of(&i.item_id, SHARDS) != 0));
    assert!(scrape(&metrics, "vecrec_route_partial_total") >= 1.0);
    // Or UNAVAILABLE, as configured.
    let strict = route(&names, &["--on-missing-shard", "fail"]);
    let err = strict
        .client()
        .await
        .similar_items(similar(&other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shard 0"), "{err:?}");

    // Shard 0 is refused at once, so a `fail` router answers without
    // waiting for shard 1, hung: here its deadline is a minute.
    signal("-STOP");
    let patient_strict = route_with(
        &names,
        &["--on-missing-shard", "fail"],
        &[("VECREC_ROUTE__SHARD_TIMEOUT_MS", "60000")],
    );
    let mut pc = patient_strict.client().await;
    let started = Instant::now();
    let err = pc.similar_items(similar(&near)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shard 0"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a `fail` router waited {:?} for the hung shard",
        started.elapsed()
    );
    signal("-CONT");
}

/// NDCG@10 of a list of MovieLens ids (EVAL.md §1, as `vecrec-eval`).
fn ndcg10(ranked: &[String], relevant: &std::collections::HashSet<u32>) -> f64 {
    let ranked: Vec<u32> = ranked.iter().map(|i| i.parse().unwrap()).collect();
    vecrec::eval::user_metrics(&ranked, relevant).ndcg[0]
}

/// ml-latest-small, split 3 shards × 2 replicas behind one router, as the
/// partitioned serving is asked to hold: built from the catalogue and the
/// validation training rows (`val_train`), exact search, every validation
/// user's Recommend through the router is one node's answer, so NDCG@10 on
/// the validation rows is the same. (`benches/route/run.sh` measures the
/// same on TEST, which it reads once a run; tests read validation only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movielens_over_three_shards_by_two_replicas_scores_as_one_node() {
    let _alone = crate::common::heavy().await;
    let ml = vecrec::movielens::MovieLens::load(
        &crate::common::shared().join("datasets/ml-latest-small"),
    )
    .unwrap();
    let split = vecrec::movielens::split(&ml.positives);
    let inter = vecrec::movielens::MovieLens::interactions(&split.val_train);
    let dir = tempfile::tempdir().unwrap();
    let (enc, opts, one_root, parts) = one_node_build(dir.path(), &ml.items, &inter);
    build_shards(
        &parts,
        &enc,
        &ml.items,
        &inter,
        &opts,
        SHARDS,
        ShardWork::All,
    )
    .unwrap();
    drop(enc);

    // Read-only replicas, two on each shard's root.
    let config = dir.path().join("exact.toml");
    std::fs::write(&config, "[search]\nexact = true\n[live]\nenabled = false\n").unwrap();
    let one = serve(&one_root, &config);
    let replicas: Vec<Vec<Proc>> = (0..SHARDS)
        .map(|s| {
            let root = vecrec::layout::shard_root(&parts, s);
            vec![serve(&root, &config), serve(&root, &config)]
        })
        .collect();
    let names: Vec<Vec<String>> = replicas
        .iter()
        .map(|ps| ps.iter().map(|p| p.addr.clone()).collect())
        .collect();
    let router = route(&names, &[]);
    let (mut one_c, mut rc) = (one.client().await, router.client().await);

    let mut relevant: std::collections::BTreeMap<u32, std::collections::HashSet<u32>> =
        Default::default();
    for &(u, i, _) in &split.val {
        relevant.entry(u).or_default().insert(i);
    }
    assert!(relevant.len() > 500, "{} validation users", relevant.len());
    let (mut one_sum, mut routed_sum, mut same) = (0.0, 0.0, 0);
    let (mut spans, mut unknown) = (0, 0);
    for (u, rel) in &relevant {
        let req = for_user(&u.to_string(), 10);
        let (a, b) = (one_c.recommend(req.clone()).await, rc.recommend(req).await);
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a.into_inner(), b.into_inner()),
            // A user with no training row is unknown to both (the split
            // keeps every validation user's earlier rows, so none is).
            (Err(x), Err(y)) if x.code() == Code::NotFound && y.code() == x.code() => {
                unknown += 1;
                continue;
            }
            (a, b) => panic!("user {u}: one node {a:?}, router {b:?}"),
        };
        assert!(!b.partial, "user {u}");
        assert_eq!(a.items.len(), 10, "user {u}");
        let (a, b) = (ids(&a.items), ids(&b.items));
        one_sum += ndcg10(&a, rel);
        routed_sum += ndcg10(&b, rel);
        same += usize::from(a == b);
        let owners: std::collections::HashSet<usize> =
            b.iter().map(|i| shard_of(i, SHARDS)).collect();
        spans += usize::from(owners.len() > 1);
    }
    assert_eq!(unknown, 0, "validation users unknown to the build");
    let n = relevant.len() as f64;
    let (one_ndcg, routed_ndcg) = (one_sum / n, routed_sum / n);
    assert!(
        one_ndcg > 0.005,
        "one node's NDCG@10 {one_ndcg}: nothing was learned"
    );
    assert!(
        (routed_ndcg - one_ndcg).abs() <= 0.002,
        "NDCG@10 through the router {routed_ndcg:.4} against one node's {one_ndcg:.4}"
    );
    assert_eq!(
        same,
        relevant.len(),
        "top-10 lists that differ from one node's"
    );
    assert!(spans * 2 > relevant.len(), "{spans} answers span shards");
}

/// A partitioned build with training: the front generation (one node's,
/// over the whole catalogue) and 3 shards sliced from it, one replica each,
/// behind `vecrec route --front`. With exact search every Recommend through
/// the router is the one node's answer (the front generation served
/// alone): every user, each fusion method, explicit histories, a filter and
/// seen items kept; a shard that is gone makes the answer `partial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliced_hybrid_build_recommends_through_the_router_as_one_node() {
    let _alone = crate::common::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let (items, inter) = sample_data(dir.path(), 13, 600, 60, (10, 30));
    let mut train = vecrec::config::TrainOptions::default();
    train.sequence.enabled = true;
    let opts = BuildOptions {
        progress: false,
        train: Some(train),
        ..Default::default()
    };
    let enc = Encoder::load(&vecrec::config::Config::default().encoder, 1).unwrap();
    let parts = dir.path().join("parts");
    let reports =
        build_shards(&parts, &enc, &items, &inter, &opts, SHARDS, ShardWork::All).unwrap();
    assert_eq!(reports.len(), SHARDS);
    let front = vecrec::layout::front_root(&parts);
    for (s, r) in reports.iter().enumerate() {
        let owned = items
            .iter()
            .filter(|i| shard_of(&i.id, SHARDS) == s)
            .count();
        assert_eq!(r.items, owned, "shard {s}");
        for f in [vecrec::layout::SLICED_FILE, "als", "two_tower", "sequence"] {
            assert!(r.generation.join(f).exists(), "shard {s} lacks {f}");
        }
    }

    let config = dir.path().join("exact.toml");
    // Generations swapped out stay open 12 s (60 by default), so the
    // rebuild below is known to be served everywhere within the test.
    std::fs::write(
        &config,
        "[search]\nexact = true\n[server]\nprevious_generation_s = 12\n",
    )
    .unwrap();
    let one = serve(&front, &config);
    // Each swaps a new build in when told (SIGHUP), not on its own (every
    // ten minutes), so the rebuild below is swapped in in a chosen order.
    let reload = |_: usize| [("VECREC_SERVER__RELOAD_INTERVAL_MS", "600000")];
    let mut shards: Vec<Proc> = (0..SHARDS)
        .map(|s| {
            let root = vecrec::layout::shard_root(&parts, s).display().to_string();
            let args = [
                "serve",
                "--index",
                &root,
                "--addr",
                "127.0.0.1:0",
                "--config",
                config.to_str().unwrap(),
            ];
            start_with(&args, &reload(s))
        })
        .collect();
    let names: Vec<Vec<String>> = shards.iter().map(|p| vec![p.addr.clone()]).collect();
    let front_arg = front.to_str().unwrap().to_owned();
    let config_arg = config.to_str().unwrap().to_owned();
    let router = route_with(
        &names,
        &[
            "--front",
            &front_arg,
            "--config",
            &config_arg,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &reload(SHARDS),
    );
    let mut one_c = one.client().await;
    let mut rc = router.client().await;

    let mut users: Vec<&str> = inter.iter().map(|i| i.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let mut spanning = 0;
    for u in &users {
        let req = for_user(u, 10);
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert!(!b.partial);
        assert_eq!(a.items.len(), 10, "Recommend {u}");
        assert_same(&format!("Recommend {u}"), &a.items, &b.items);
        let owners: std::collections::HashSet<usize> = b
            .items
            .iter()
            .map(|i| shard_of(&i.item_id, SHARDS))
            .collect();
        spanning += usize::from(owners.len() > 1);
    }
    assert!(spanning > users.len() / 2, "{spanning} answers span shards");
    for fusion in [
        pb::Fusion::Rrf,
        pb::Fusion::Geometric,
        pb::Fusion::WeightedZscore,
        pb::Fusion::Learned,
    ] {
        for u in users.iter().step_by(7) {
            let req = pb::RecommendRequest {
                user_id: u.to_string(),
                k: 20,
                fusion: fusion as i32,
                ..Default::default()
            };
            let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
            let b = rc.recommend(req).await.unwrap().into_inner();
            assert_same(&format!("Recommend {u} {fusion:?}"), &a.items, &b.items);
        }
    }
    experiments_run_on_the_router(&dir, &names, &front_arg, &users, &mut one_c).await;
    let category = items[0].meta.categories[0].clone();
    for (h, u) in users.iter().enumerate().step_by(9) {
        let history: Vec<String> = items
            .iter()
            .skip(h)
            .step_by(37)
            .take(8)
            .map(|i| i.id.clone())
            .collect();
        for req in [
            pb::RecommendRequest {
                history: history.clone(),
                k: 10,
                ..Default::default()
            },
            pb::RecommendRequest {
                user_id: u.to_string(),
                k: 10,
                filter: Some(pb::AttributeFilter {
                    categories_any: vec![category.clone()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::RecommendRequest {
                history,
                k: 10,
                include_seen: true,
                ..Default::default()
            },
        ] {
            let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
            let b = rc.recommend(req.clone()).await.unwrap().into_inner();
            assert!(!a.items.is_empty(), "{req:?}");
            assert_same(&format!("{req:?}"), &a.items, &b.items);
        }
    }
    let unknown = rc
        .recommend(pb::RecommendRequest {
            user_id: "nobody-at-all".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Items deleted (through the router on the shards, on the one node
    // directly) leave both answers alike.
    let first = rc
        .recommend(for_user(users[1], 10))
        .await
        .unwrap()
        .into_inner();
    let gone: Vec<String> = first
        .items
        .iter()
        .take(3)
        .map(|i| i.item_id.clone())
        .collect();
    let del = pb::DeleteItemsRequest { ids: gone.clone() };
    rc.delete_items(del.clone()).await.unwrap();
    one_c.delete_items(del).await.unwrap();
    for u in users.iter().take(12) {
        let req = for_user(u, 10);
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert!(b.items.iter().all(|i| !gone.contains(&i.item_id)), "{b:?}");
        assert_same(&format!("Recommend {u} after deletes"), &a.items, &b.items);
    }

    // Events recorded through the router (kept by the shard each user id
    // hashes to) shape the next answers as the same events do on one node:
    // for a stored user, and for an id only events know.
    let fresh_user = (0..)
        .map(|i| format!("routed-new-user-{i}"))
        .find(|u| shard_of(u, SHARDS) == 2)
        .unwrap();
    let picked: Vec<String> = items
        .iter()
        .skip(5)
        .step_by(41)
        .filter(|i| !gone.contains(&i.id))
        .take(4)
        .map(|i| i.id.clone())
        .collect();
    let stored_user = users[2].to_string();
    let before = rc
        .recommend(for_user(&stored_user, 10))
        .await
        .unwrap()
        .into_inner();
    let events: Vec<pb::Event> = [&stored_user, &fresh_user]
        .iter()
        .flat_map(|u| {
            picked.iter().enumerate().map(|(n, item)| pb::Event {
                user_id: u.to_string(),
                item_id: item.clone(),
                weight: if n == 0 { 0.0 } else { 2.5 },
                timestamp: 1_700_000_000 + n as i64,
                ..Default::default()
            })
        })
        .collect();
    let rec = pb::RecordEventsRequest {
        events: events.clone(),
    };
    let routed_rec = rc.record_events(rec.clone()).await.unwrap().into_inner();
    assert_eq!(routed_rec.recorded, events.len() as u32);
    one_c.record_events(rec).await.unwrap();
    for u in [&stored_user, &fresh_user] {
        let req = for_user(u, 10);
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert!(!b.partial);
        assert_eq!(a.items.len(), 10, "Recommend {u} after events");
        assert!(
            b.items.iter().all(|i| !picked.contains(&i.item_id)),
            "{b:?}"
        );
        assert_same(&format!("Recommend {u} after events"), &a.items, &b.items);
    }
    let after = rc
        .recommend(for_user(&stored_user, 10))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        ids(&before.items),
        ids(&after.items),
        "the events changed nothing"
    );
    // The owner shard keeps them, with the defaults filled in by the router.
    let mut keeper = shards[2].client().await;
    let kept = keeper
        .user_events(pb::UserEventsRequest {
            user_id: fresh_user.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let kept: Vec<(String, f32, i64)> = kept
        .into_iter()
        .map(|e| (e.item_id, e.weight, e.timestamp))
        .collect();
    let sent: Vec<(String, f32, i64)> = picked
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let w = if n == 0 { 1.0 } else { 2.5 };
            (item.clone(), w, 1_700_000_000 + n as i64)
        })
        .collect();
    assert_eq!(kept, sent);
    // Items that do not exist now (deleted, or never) are refused, and
    // nothing of the call is recorded.
    for item in [gone[0].clone(), "no-such-item".to_string()] {
        let bad = pb::RecordEventsRequest {
            events: vec![
                events[0].clone(),
                pb::Event {
                    item_id: item.clone(),
                    ..events[1].clone()
                },
            ],
        };
        let e = rc.record_events(bad.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{item}: {e:?}");
        assert!(e.message().contains("events[1]"), "{e:?}");
        assert_eq!(
            one_c.record_events(bad).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let bad_weight = rc
        .record_events(pb::RecordEventsRequest {
            events: vec![pb::Event {
                weight: f32::NAN,
                ..events[0].clone()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(bad_weight.code(), Code::InvalidArgument, "{bad_weight:?}");
    let again = rc
        .recommend(for_user(&fresh_user, 10))
        .await
        .unwrap()
        .into_inner();
    assert_same(
        "after refused events",
        &a_fresh(&mut one_c, &fresh_user).await,
        &again.items,
    );

    // Items changed since the build count as on one node, whichever shard
    // owns them (`ItemStates`): an event on an item deleted since leaves the
    // history; an explicit history naming an item deleted since is
    // NOT_FOUND, and an item upserted since is left out of it.
    // (Not the first: the last check below records an event on it.)
    let late = picked
        .iter()
        .skip(1)
        .find(|i| shard_of(i, SHARDS) != 2)
        .expect("an event item another shard owns")
        .clone();
    let del = pb::DeleteItemsRequest {
        ids: vec![late.clone()],
    };
    let with_late = rc
        .recommend(for_user(&fresh_user, 10))
        .await
        .unwrap()
        .into_inner();
    rc.delete_items(del.clone()).await.unwrap();
    one_c.delete_items(del).await.unwrap();
    for u in [&stored_user, &fresh_user] {
        let req = for_user(u, 10);
        let a = one_c.recommend(req.clone()).await.unwrap().into_inner();
        let b = rc.recommend(req).await.unwrap().into_inner();
        assert_same(
            &format!("Recommend {u} after an event's item was deleted"),
            &a.items,
            &b.items,
        );
        if u == &fresh_user {
            let moved = ids(&with_late.items) != ids(&b.items)
                || with_late
                    .items
                    .iter()
                    .zip(&b.items)
                    .any(|(x, y)| x.score != y.score);
            assert!(moved, "the deleted item's event still counts");
        }
    }
    let new_item = pb::Item {
        id: "routed-late-item".into(),
        title: "A harbour in the fog".into(),
        text: "Boats, fog and a harbour town waiting for spring.".into(),
        ..Default::default()
    };
    let up = pb::UpsertItemsRequest {
        items: vec![new_item.clone()],
    };
    rc.upsert_items(up.clone()).await.unwrap();
    one_c.upsert_items(up).await.unwrap();
    // What the owners answer the router.
    let built = items
        .iter()
        .map(|i| i.id.clone())
        .find(|i| shard_of(i, SHARDS) == shard_of(&new_item.id, SHARDS) && !gone.contains(i))
        .unwrap();
    for (ask, want) in [
        (
            vec![late.clone(), "no-such-item".to_string()],
            vec![pb::ItemState::Deleted, pb::ItemState::Unknown],
        ),
        (
            vec![new_item.id.clone(), built],
            vec![pb::ItemState::New, pb::ItemState::Built],
        ),
    ] {
        let got = shards[shard_of(&ask[0], SHARDS)]
            .client()
            .await
            .item_states(pb::ItemStatesRequest {
                item_ids: ask.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .states;
        let want: Vec<i32> = want.into_iter().map(i32::from).collect();
        assert_eq!(got, want, "{ask:?}");
    }
    let kept: Vec<String> = picked.iter().filter(|i| **i != late).cloned().collect();
    let by_history = |history: Vec<String>| pb::RecommendRequest {
        history,
        k: 10,
        ..Default::default()
    };
    let with_new = by_history([kept.clone(), vec![new_item.id.clone()]].concat());
    let a = one_c
        .recommend(with_new.clone())
        .await
        .unwrap()
        .into_inner();
    let b = rc.recommend(with_new).await.unwrap().into_inner();
    assert_same("Recommend by a history with a new item", &a.items, &b.items);
    let alone = rc
        .recommend(by_history(kept.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_same("the new item leaves the history", &alone.items, &b.items);
    let with_gone = by_history([kept, vec![late.clone()]].concat());
    for (who, e) in [
        (
            "one node",
            one_c.recommend(with_gone.clone()).await.unwrap_err(),
        ),
        ("router", rc.recommend(with_gone).await.unwrap_err()),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");
        assert!(e.message().contains(&late), "{who}: {e:?}");
    }

    // A shard refuses what it cannot answer; other servers refuse the call.
    let mut shard_c = shards[0].client().await;
    let ask = |source: &str, vector: Vec<f32>, history: Vec<u32>| pb::ShardSourcesRequest {
        history,
        inputs: vec![pb::SourceInput {
            source: source.into(),
            vector,
        }],
        ..Default::default()
    };
    let ok = shard_c
        .shard_sources(ask("ease", vec![], vec![0, 1, 2]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.lists.len(), 1);
    assert!(!ok.lists[0].items.is_empty());
    // Numbered as the front numbers items, every one the shard's own.
    let front_index = vecrec_index::Index::open_current(&front).unwrap();
    assert!(ok.lists[0]
        .items
        .iter()
        .all(|&i| shard_of(front_index.store().external_id(i), SHARDS) == 0));
    drop(front_index);
    for (bad, why) in [
        (ask("nonsense", vec![], vec![]), "no source called"),
        (
            ask("ease", vec![], vec![items.len() as u32]),
            "out of range",
        ),
        (ask("als", vec![1.0; 3], vec![]), "-wide vector"),
        (ask("content", vec![f32::NAN; 384], vec![]), "finite"),
    ] {
        let e = shard_c.shard_sources(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{e:?}");
    }
    let e = one_c
        .shard_sources(ask("ease", vec![], vec![0]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = shard_c
        .shard_sources(pb::ShardSourcesRequest {
            front_generation: "gen-999".into(),
            front_ids: "0123456789abcdef0123456789abcdef".into(),
            ..ask("ease", vec![], vec![0])
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("gen-999"), "{e:?}");
    // New interactions (one fewer here) and the catalogue in another order
    // (the first two items swapped, so the new build numbers the items
    // otherwise) make a rebuild.
    let re = &inter[..inter.len() - 1];
    let reordered = {
        let mut v = items.clone();
        v.swap(0, 1);
        v
    };
    // A rebuild as an indexed Job runs it: one pod trains the front and
    // leaves it pending, each pod cuts its shard from it, and the last cut
    // publishes the front and every shard together. The shards and the
    // router's front follow their CURRENT, each at its own time, and no
    // Recommend fails meanwhile.
    let e = build_shards(&parts, &enc, &reordered, re, &opts, SHARDS, pod(0)).unwrap_err();
    assert!(e.to_string().contains("--front-only"), "{e}");
    let currents = || -> Vec<String> {
        (0..SHARDS)
            .map(|s| vecrec::layout::shard_root(&parts, s))
            .chain([front.clone()])
            .map(|r| std::fs::read_to_string(r.join("CURRENT")).unwrap())
            .collect()
    };
    let before = currents();
    let old_ids =
        vecrec::layout::ids_digest(&vecrec_index::generation::current_generation(&front).unwrap())
            .unwrap();
    // Shard 2's pod starts first and waits for the front.
    let (pending, cut2) = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let wait = ShardWork::One {
                index: 2,
                wait_front: Duration::from_secs(600),
            };
            build_shards(&parts, &enc, &reordered, re, &opts, SHARDS, wait)
        });
        let pending = build_shards(
            &parts,
            &enc,
            &reordered,
            re,
            &opts,
            SHARDS,
            ShardWork::Front,
        )
        .unwrap();
        (pending, waiting.join().unwrap().unwrap())
    });
    assert_eq!(cut2.len(), 1);
    assert_eq!(pending.len(), 1);
    assert!(pending[0].generation.starts_with(&front));
    assert_eq!(currents(), before, "published before every shard was cut");
    // Run again (a Job's pod restarted), the same front stays pending: the
    // shard already cut from it still counts.
    let marker = std::fs::read(front.join(vecrec::layout::PENDING_FRONT_FILE)).unwrap();
    let again = build_shards(
        &parts,
        &enc,
        &reordered,
        re,
        &opts,
        SHARDS,
        ShardWork::Front,
    );
    assert!(again.unwrap().is_empty(), "trained again");
    assert_eq!(
        std::fs::read(front.join(vecrec::layout::PENDING_FRONT_FILE)).unwrap(),
        marker
    );
    // Other settings are other fronts: a shard of those does not cut from it.
    let other = BuildOptions {
        users: vecrec::config::UserConfig {
            decay: 0.5,
            ..opts.users.clone()
        },
        ..opts.clone()
    };
    let e = build_shards(&parts, &enc, &reordered, re, &other, SHARDS, pod(1)).unwrap_err();
    assert!(e.to_string().contains("other inputs"), "{e}");
    // A shard of other inputs does not cut from it.
    let e = build_shards(&parts, &enc, &items, &inter[1..], &opts, SHARDS, pod(1)).unwrap_err();
    assert!(e.to_string().contains("other inputs"), "{e}");
    let cut0 = build_shards(&parts, &enc, &reordered, re, &opts, SHARDS, pod(0)).unwrap();
    assert_eq!(currents(), before, "published before every shard was cut");
    let cut1 = build_shards(&parts, &enc, &reordered, re, &opts, SHARDS, pod(1)).unwrap();
    let after = currents();
    // Each shard serves the generation its build cut, the front the pending one.
    let name = |r: &[vecrec::pipeline::BuildReport]| {
        r[0].generation
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let cut: Vec<String> = [&cut0, &cut1, &cut2, &pending]
        .iter()
        .map(|r| name(r))
        .collect();
    let served: Vec<&str> = after.iter().map(|c| c.trim()).collect();
    assert_eq!(served, cut);
    assert!((0..=SHARDS).all(|i| after[i] != before[i]), "{after:?}");
    assert!(!front.join(vecrec::layout::PENDING_FRONT_FILE).exists());
    // The Job run again with the same inputs has nothing to do.
    for work in [ShardWork::Front, pod(2)] {
        let r = build_shards(&parts, &enc, &reordered, re, &opts, SHARDS, work).unwrap();
        assert!(r.is_empty(), "{work:?} built again");
    }
    assert_eq!(currents(), after);
    let new_front = vecrec_index::generation::current_generation(&front)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let until = Instant::now() + Duration::from_secs(60);
    for p in &shards {
        let mut c = p.client().await;
        loop {
            let r = c
                .shard_sources(pb::ShardSourcesRequest {
                    front_generation: new_front.clone(),
                    ..ask("ease", vec![], vec![0])
                })
                .await;
            if r.is_ok() {
                break;
            }
            assert!(Instant::now() < until, "a shard kept its old slice: {r:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The shards and the router swap the build in each at its own time
    // (here: shards 0 and 2, then the router, then shard 1), and every
    // Recommend answers meanwhile: a shard that swapped still serves the
    // slices of the front it replaced, and a router that swapped before a
    // shard answers from its previous front.
    let hup = |p: &Proc| {
        let pid = p.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    let new_ids =
        vecrec::layout::ids_digest(&vecrec_index::generation::current_generation(&front).unwrap())
            .unwrap();
    let swapped = |s: usize| {
        let new_ids = new_ids.clone();
        let addr = shards[s].addr.clone();
        async move {
            let mut c = RecommenderClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let until = Instant::now() + Duration::from_secs(30);
            while c
                .shard_sources(pb::ShardSourcesRequest {
                    front_ids: new_ids.clone(),
                    ..ask("ease", vec![], vec![0])
                })
                .await
                .is_err()
            {
                assert!(Instant::now() < until, "shard {s} did not swap");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let metrics = router.metrics.clone().unwrap();
    let mut calls = 0usize;
    let mut answer = |rc: &mut Client| {
        calls += 1;
        let req = for_user(users[calls % users.len()], 10);
        let mut rc = rc.clone();
        async move {
            let routed = rc
                .recommend(req)
                .await
                .unwrap_or_else(|e| panic!("a Recommend failed during the swap: {e:?}"))
                .into_inner();
            assert!(!routed.partial);
            assert_eq!(routed.items.len(), 10);
        }
    };
    for s in [0, 2] {
        hup(&shards[s]);
        swapped(s).await;
    }
    for _ in 0..5 {
        answer(&mut rc).await;
    }
    hup(&router);
    let until = Instant::now() + Duration::from_secs(30);
    while scrape(&metrics, "vecrec_route_previous_front_total") < 1.0 {
        assert!(Instant::now() < until, "the router did not swap its front");
        answer(&mut rc).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        answer(&mut rc).await;
    }
    hup(&shards[1]);
    swapped(1).await;
    for _ in 0..5 {
        answer(&mut rc).await;
    }
    // Once the old generations close (12 s here, at the next reload), only
    // the new build answers anywhere: the shards refuse the old front's.
    tokio::time::sleep(Duration::from_secs(13)).await;
    for p in shards.iter().chain([&router]) {
        hup(p);
    }
    for (s, shard) in shards.iter().enumerate() {
        let mut c = shard.client().await;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let old = c
                .shard_sources(pb::ShardSourcesRequest {
                    front_ids: old_ids.clone(),
                    ..ask("ease", vec![], vec![0])
                })
                .await;
            match old {
                Err(e) if e.message().contains(vecrec::engine::OTHER_FRONT) => break,
                other => assert!(
                    Instant::now() < until,
                    "shard {s} kept the old generation open: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..5 {
        answer(&mut rc).await;
    }

    let e = rc
        .shard_sources(ask("ease", vec![], vec![0]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");

    // Shard 2 gone: the others answer, flagged partial, without its items.
    shards[2].kill();
    let b = rc
        .recommend(for_user(users[0], 10))
        .await
        .unwrap()
        .into_inner();
    assert!(b.partial);
    assert_eq!(b.items.len(), 10);
    assert!(b.items.iter().all(|i| shard_of(&i.item_id, SHARDS) != 2));
    // A user known only from the events shard 2 kept cannot be answered.
    let e = rc.recommend(for_user(&fresh_user, 10)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // Shard 2 back, on its address, taking no writes: it keeps no events
    // (its log is not read), so its users are answered from the build
    // alone, and their events are refused.
    let readonly = dir.path().join("readonly.toml");
    std::fs::write(
        &readonly,
        "[search]\nexact = true\n[live]\nenabled = false\n",
    )
    .unwrap();
    let addr = shards[2].addr.clone();
    shards[2] = start(&[
        "serve",
        "--index",
        vecrec::layout::shard_root(&parts, 2).to_str().unwrap(),
        "--addr",
        &addr,
        "--config",
        readonly.to_str().unwrap(),
    ]);
    let stored_of_2 = users
        .iter()
        .find(|u| shard_of(u, SHARDS) == 2)
        .expect("a stored user of shard 2");
    for _ in 0..2 {
        let b = rc
            .recommend(for_user(stored_of_2, 10))
            .await
            .unwrap()
            .into_inner();
        assert!(!b.partial, "{b:?}");
        assert_eq!(b.items.len(), 10);
        let e = rc.recommend(for_user(&fresh_user, 10)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let e = rc
        .record_events(pb::RecordEventsRequest {
            events: vec![pb::Event {
                user_id: fresh_user.clone(),
                ..events[0].clone()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A damaged front: the router opens it without reading it whole, so it
    // starts; the background check finds the damage, health turns
    // NOT_SERVING and Recommend answers DATA_LOSS. (Damaged by a file
    // renamed over the old one, so the processes mapping it keep theirs.)
    let file = vecrec_index::generation::current_generation(&front)
        .unwrap()
        .join(vecrec::layout::ALS_DIR)
        .join("vectors.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    let tmp = file.with_extension("damaged");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let damaged = route(&names, &["--front", &front_arg, "--config", &config_arg]);
    let channel = Channel::from_shared(format!("http://{}", damaged.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = |service: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    eventually("the damaged front's router reports NOT_SERVING", || async {
        status("vecrec.v1.Recommender").await == ServingStatus::NotServing as i32
    })
    .await;
    // The server as a whole (a liveness probe's question) is up.
    assert_eq!(status("").await, ServingStatus::Serving as i32);
    let e = damaged
        .client()
        .await
        .recommend(for_user(stored_of_2, 10))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
}

/// One node's answer for `user`, its items.
async fn a_fresh(c: &mut Client, user: &str) -> Vec<pb::ScoredItem> {
    c.recommend(for_user(user, 10))
        .await
        .unwrap()
        .into_inner()
        .items
}

/// `--embed-only`: each shard's pod embeds only its own texts into its
/// part of the cache; with every part written, a shard's build embeds
/// nothing and gets the vectors a build without the parts computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_pods_embed_only_their_own_texts_and_the_build_reuses_them() {
    let _alone = crate::common::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let (items, inter) = sample_data(dir.path(), 17, 150, 20, (5, 10));
    let enc = Encoder::load(&vecrec::config::Config::default().encoder, 1).unwrap();
    let opts = BuildOptions {
        progress: false,
        train: None,
        learn_fusion: None,
        ..Default::default()
    };
    let parts = dir.path().join("parts");
    for s in 0..SHARDS {
        let r = vecrec::pipeline::embed_part(&parts, &enc, &items, SHARDS, s, false).unwrap();
        let own: std::collections::HashSet<String> = items
            .iter()
            .filter(|i| shard_of(&i.id, SHARDS) == s)
            .map(|i| i.embedding_text())
            .collect();
        assert_eq!(
            (r.texts, r.embedded, r.reused),
            (own.len(), own.len(), 0),
            "shard {s}"
        );
        assert!(r.path.exists());
    }
    // Again: the part already holds them.
    let again = vecrec::pipeline::embed_part(&parts, &enc, &items, SHARDS, 1, false).unwrap();
    assert_eq!(again.embedded, 0);
    let e = vecrec::pipeline::embed_part(&parts, &enc, &items, SHARDS, SHARDS, false).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");

    let reports = build_shards(&parts, &enc, &items, &inter, &opts, SHARDS, pod(2)).unwrap();
    assert_eq!(reports[0].embedded, 0, "every text came from the parts");
    assert_eq!(reports[0].reused_embeddings, items.len());
    // The same vectors as a build that embeds everything itself.
    let plain = dir.path().join("plain");
    let plain_opts = BuildOptions {
        embedding_cache: false,
        ..opts.clone()
    };
    let plain_reports =
        build_shards(&plain, &enc, &items, &inter, &plain_opts, SHARDS, pod(2)).unwrap();
    assert_eq!(plain_reports[0].embedded, items.len());
    let a = vecrec_index::Index::open(&reports[0].generation).unwrap();
    let b = vecrec_index::Index::open(&plain_reports[0].generation).unwrap();
    assert_eq!(a.store().len(), b.store().len());
    for (x, y) in a.store().vectors().iter().zip(b.store().vectors()) {
        assert!((x - y).abs() < 1e-5, "{x} against {y}");
    }

    // A shard's log is kept, never compacted, and a pending log is no
    // error (the server's compaction loop used to fail every interval).
    let root = vecrec::layout::shard_root(&parts, 2);
    let mut cfg = vecrec::config::Config::default();
    cfg.hybrid.enabled = false;
    let mut e = vecrec::engine::Engine::open(&root, cfg, Some(crate::common::encoder())).unwrap();
    let live = vecrec::live::Live::open(&root, e.applied_seq()).unwrap();
    e.attach_live(Arc::new(live));
    let own = items
        .iter()
        .find(|i| shard_of(&i.id, SHARDS) == 2)
        .unwrap()
        .id
        .clone();
    e.delete_items(vec![own]).unwrap();
    let slot = vecrec::serving::EngineSlot::new(&root, Arc::new(e));
    for _ in 0..2 {
        assert!(!slot.compact_if_due(1).unwrap(), "a shard was compacted");
    }
    let served = slot.get();
    let pending = served.live().unwrap().view(served.applied_seq()).pending();
    assert_eq!(pending, 1, "the shard's log lost its record");
}

/// The block scalar `key: |` of a YAML file, unindented.
fn yaml_block(text: &str, key: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no {key} in the config map"));
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or("").to_owned() + "\n")
        .collect()
}

#[test]
fn the_kubernetes_config_map_holds_configs_vecrec_accepts() {
    let k8s = crate::common::repo().join("deploy/k8s");
    let map = std::fs::read_to_string(k8s.join("config.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shard_files = std::fs::read_dir(&k8s)
        .unwrap()
        .filter(|f| {
            let name = f.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("shard-") && name.ends_with(".yaml")
        })
        .count();
    for key in ["vecrec.toml", "router.toml"] {
        let path = dir.path().join(key);
        std::fs::write(&path, yaml_block(&map, key)).unwrap();
        let cfg = vecrec::config::Config::load(Some(&path))
            .unwrap_or_else(|e| panic!("{key} does not load: {e}"));
        cfg.validate().unwrap();
        if key == "router.toml" {
            assert_eq!(
                cfg.route.shards.len(),
                shard_files,
                "one entry per shard manifest"
            );
            for (i, s) in cfg.route.shards.iter().enumerate() {
                assert_eq!(s, &vec![format!("vecrec-shard-{i}:50051")]);
            }
        } else {
            assert!(cfg.live.enabled, "the shards take writes");
        }
    }
    // In each shard, the first pod writes the log and the others follow it,
    // on the shared volume mounted read-write.
    for i in 0..shard_files {
        let shard = std::fs::read_to_string(k8s.join(format!("shard-{i}.yaml"))).unwrap();
        assert!(
            shard.contains(&format!("name: vecrec-shard-{i}\n"))
                && shard.contains(&format!("- --log-writer=vecrec-shard-{i}-0\n")),
            "shard-{i}.yaml: the writer is the StatefulSet's first pod"
        );
        let blocks: Vec<&str> = shard
            .split("- name: index")
            .skip(1)
            .filter_map(|m| m.split("- name:").next())
            .collect();
        assert_eq!(blocks.len(), 2, "shard-{i}.yaml: the mount and the volume");
        for b in blocks {
            assert!(
                !b.contains("readOnly"),
                "shard-{i}.yaml has the index read-only: {b}"
            );
        }
    }
    // The rebuild Job writes as many shards as there are shard manifests,
    // and the front the router serves.
    let job = std::fs::read_to_string(k8s.join("rebuild-job.yaml")).unwrap();
    for needle in [
        format!("completions: {shard_files}\n"),
        format!("--shards {shard_files} --fold-log --wait-lock "),
        "--embed-only --shard \"$JOB_COMPLETION_INDEX\" --run \"$REBUILD_RUN\"".into(),
        "--front-only".into(),
        "--wait-front".into(),
        "--run \"$REBUILD_RUN\"".into(),
        "batch.kubernetes.io/controller-uid".into(),
    ] {
        assert!(job.contains(&needle), "rebuild-job.yaml lacks {needle:?}");
    }
    // The nightly compaction folds as many shards' logs.
    let compact = std::fs::read_to_string(k8s.join("compact-cronjob.yaml")).unwrap();
    assert!(compact.contains(&format!("- --shards={shard_files}\n")));
    assert!(compact.contains("- --compact\n"));
    assert!(compact.contains("- --wait-lock="));
    let router = std::fs::read_to_string(k8s.join("router.yaml")).unwrap();
    assert!(router.contains("--front=/data/index/front"));
    // Each router pod logs its experiments under a directory of its own.
    assert!(router.contains("--exposure-root=/data/exposures/$(POD_NAME)"));
    assert!(router.contains("fieldPath: metadata.name"));
    assert!(router.contains("claimName: vecrec-exposures"));
}

/// The experiment section of the sliced hybrid test: `[[experiments]]` run
/// on a router with a front as on one node. An A/B of the served fusion
/// against geometric fusion: each user gets the arm `experiment::assign`
/// gives and that arm's answer (one node asked for the same fusion), a
/// forced arm likewise; the lists are logged under the router's exposure
/// root, and feedback through the router is logged there once and by no
/// shard. An interleaving router joins both arms' lists by team; the report
/// reads both routers' logs; SIGHUP re-reads the experiments; a router with
/// experiments but no exposure root, or no front, does not start.
async fn experiments_run_on_the_router(
    dir: &tempfile::TempDir,
    names: &[Vec<String>],
    front_arg: &str,
    users: &[&str],
    one_c: &mut Client,
) {
    use vecrec::exposure::{read_all, read_roots, Entry};
    let experiment = |name: &str, mode: &str| {
        format!(
            "[search]\nexact = true\n\n[[experiments]]\nname = \"{name}\"\nsalt = \"s1\"\n\
             mode = \"{mode}\"\n\n[[experiments.arms]]\nname = \"served\"\nshare = 0.5\n\n\
             [[experiments.arms]]\nname = \"geometric\"\nshare = 0.5\nfusion = \"geometric\"\n"
        )
    };
    let ab_config = dir.path().join("ab.toml");
    std::fs::write(&ab_config, experiment("fusion", "ab")).unwrap();
    let ab_arg = ab_config.to_str().unwrap().to_owned();
    // Refused without an exposure root, and without a front.
    for (args, why) in [
        (
            vec!["--front", front_arg, "--config", &ab_arg],
            "exposure_root",
        ),
        (
            vec!["--config", &ab_arg, "--exposure-root", "/tmp/unused"],
            "route.front",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vecrec"));
        cmd.args(["route", "--addr", "127.0.0.1:0"]);
        for r in names {
            cmd.args(["--shard", &r.join(",")]);
        }
        let mut child = cmd
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("{args:?} started and kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{args:?} started");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let ab_root = dir.path().join("router-a");
    let ab_root_arg = ab_root.to_str().unwrap().to_owned();
    let ab = route(
        names,
        &[
            "--front",
            front_arg,
            "--config",
            &ab_arg,
            "--exposure-root",
            &ab_root_arg,
        ],
    );
    let mut ab_c = ab.client().await;
    let cfg = vecrec::config::Config::load(Some(&ab_config)).unwrap();
    let fusion_of = |arm: &str| match arm {
        "served" => pb::Fusion::Default,
        "geometric" => pb::Fusion::Geometric,
        other => panic!("arm {other:?}"),
    };
    let one_as = |u: &str, arm: &str, k: u32| pb::RecommendRequest {
        fusion: fusion_of(arm) as i32,
        ..for_user(u, k)
    };
    let mut per_arm = [0usize; 2];
    let mut served = Vec::new();
    for u in users.iter().take(16) {
        let got = ab_c.recommend(for_user(u, 10)).await.unwrap().into_inner();
        assert_eq!(got.experiment, "fusion");
        let a = vecrec::experiment::assign(&cfg.experiments[0], u);
        assert_eq!(got.arm, cfg.experiments[0].arms[a].name, "{u}'s arm");
        per_arm[a] += 1;
        let want = one_c
            .recommend(one_as(u, &got.arm, 10))
            .await
            .unwrap()
            .into_inner();
        assert_same(&format!("{u} in arm {}", got.arm), &want.items, &got.items);
        assert!(got.items.iter().all(|i| i.arm.is_empty()), "{got:?}");
        assert!(!got.request_id.is_empty());
        served.push(got);
    }
    assert!(per_arm.iter().all(|&n| n > 0), "arms {per_arm:?}");
    // The two arms answer differently: the experiment is not a no-op.
    let mut moved = false;
    for u in users.iter().take(8) {
        let a = one_c.recommend(one_as(u, "served", 10)).await.unwrap();
        let b = one_c.recommend(one_as(u, "geometric", 10)).await.unwrap();
        moved |= ids(&a.into_inner().items) != ids(&b.into_inner().items);
    }
    assert!(moved, "geometric fusion changed no list");
    // A user assigned the served fusion, forced to the other arm.
    let assigned = served.iter().position(|a| a.arm == "served").unwrap();
    let forced = ab_c
        .recommend(pb::RecommendRequest {
            force_arm: "geometric".into(),
            ..for_user(users[assigned], 10)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.arm, "geometric");
    let want = one_c
        .recommend(one_as(users[assigned], "geometric", 10))
        .await
        .unwrap()
        .into_inner();
    assert_same("a forced arm", &want.items, &forced.items);
    let bad = ab_c
        .recommend(pb::RecommendRequest {
            force_arm: "no-such-arm".into(),
            ..for_user(users[0], 10)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // A click through the router: logged once, by the router. One node
    // records the same event (without the request id) so the later parity
    // checks still compare like with like.
    let clicked = &served[0];
    click(&mut ab_c, one_c, users[0], clicked).await;
    let logged = |root: &Path, want: usize| {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = read_all(root).unwrap();
            if entries.len() >= want || Instant::now() > until {
                return entries;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A definition, 17 lists (one forced) and one click.
    let entries = logged(&ab_root, 19);
    let count = |f: &dyn Fn(&Entry) -> bool| entries.iter().filter(|e| f(e)).count();
    assert_eq!(count(&|e| matches!(e, Entry::Definition { .. })), 1);
    assert_eq!(
        count(&|e| matches!(e, Entry::Exposure { forced: false, .. })),
        16
    );
    assert_eq!(
        count(&|e| matches!(e, Entry::Exposure { forced: true, .. })),
        1
    );
    let feedback: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e, Entry::Feedback { .. }))
        .collect();
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    let Entry::Feedback {
        request_id, item, ..
    } = feedback[0]
    else {
        unreachable!()
    };
    assert_eq!(
        (request_id, item),
        (&clicked.request_id, &clicked.items[0].item_id)
    );
    for s in 0..names.len() {
        let shard = Path::new(front_arg)
            .parent()
            .map(|p| vecrec::layout::shard_root(p, s))
            .unwrap();
        assert!(read_all(&shard).unwrap().is_empty(), "shard {s} logged");
    }

    // Interleaving on a second router: every item on a team, each from its
    // arm's list, the first one at the head of one of them.
    let il_config = dir.path().join("interleave.toml");
    std::fs::write(&il_config, experiment("fusion-il", "interleave")).unwrap();
    let il_root = dir.path().join("router-b");
    let il = route(
        names,
        &[
            "--front",
            front_arg,
            "--config",
            il_config.to_str().unwrap(),
            "--exposure-root",
            il_root.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let mut il_c = il.client().await;
    let mut teams = std::collections::HashSet::new();
    for u in users.iter().take(6) {
        let got = il_c.recommend(for_user(u, 10)).await.unwrap().into_inner();
        assert_eq!(
            (got.experiment.as_str(), got.arm.as_str()),
            ("fusion-il", "geometric")
        );
        let control = ids(&one_c
            .recommend(one_as(u, "served", 10))
            .await
            .unwrap()
            .into_inner()
            .items);
        let treatment = ids(&one_c
            .recommend(one_as(u, "geometric", 10))
            .await
            .unwrap()
            .into_inner()
            .items);
        assert_eq!(got.items.len(), 10);
        for i in &got.items {
            let from = if i.arm == "served" {
                &control
            } else {
                &treatment
            };
            assert!(
                from.contains(&i.item_id),
                "{u}: {i:?} not in its team's list"
            );
            teams.insert(i.arm.clone());
        }
        assert!([&control[0], &treatment[0]].contains(&&got.items[0].item_id));
    }
    assert_eq!(teams.len(), 2, "{teams:?}");
    // The arms differ only in fusion: each call asked the shards once.
    let il_metrics = il.metrics.clone().unwrap();
    let shared = || scrape(&il_metrics, "vecrec_route_shared_fan_outs_total");
    assert_eq!(shared(), 6.0);
    // A click taken by the second router on a list the first served:
    // logged by the second, and counted when both logs are read together.
    click(&mut il_c, one_c, users[1], &served[1]).await;
    let il_entries = logged(&il_root, 8);
    let roots = vecrec::exposure::roots_under(dir.path()).unwrap();
    assert_eq!(roots, vec![ab_root.clone(), il_root.clone()]);
    let both = read_roots(&[&ab_root, &il_root]).unwrap();
    assert_eq!(both.len(), entries.len() + il_entries.len());
    let clicks = |entries: &[Entry]| {
        let r = vecrec::analysis::report(entries, "fusion").unwrap();
        assert_eq!(r.arms.iter().map(|a| a.users).sum::<usize>(), 16);
        assert_eq!(r.forced_requests, 1);
        r.arms.iter().map(|a| a.clicks).sum::<usize>()
    };
    assert_eq!(clicks(&entries), 1);
    assert_eq!(clicks(&both), 2, "the other router's click was not joined");
    assert!(vecrec::analysis::report(&both, "fusion-il").is_some());

    // SIGHUP re-reads the experiments: disabled, the router serves plainly.
    std::fs::write(
        &ab_config,
        experiment("fusion", "ab").replace("mode = \"ab\"", "mode = \"ab\"\nenabled = false"),
    )
    .unwrap();
    hang_up(
        &ab,
        &mut ab_c,
        users[0],
        "",
        "SIGHUP did not disable the experiment",
    )
    .await;

    // Arms whose shards' requests differ (the candidates each source
    // brings): one fan-out per arm, nothing shared.
    std::fs::write(
        &il_config,
        experiment("fewer-il", "interleave").replace(
            "fusion = \"geometric\"",
            "fusion = \"geometric\"\ncandidates = 40",
        ),
    )
    .unwrap();
    hang_up(
        &il,
        &mut il_c,
        users[2],
        "fewer-il",
        "SIGHUP did not load the new arms",
    )
    .await;
    // Calls answered before the reload shared theirs: count from here.
    let before = shared();
    for u in users.iter().take(3) {
        let got = il_c.recommend(for_user(u, 10)).await.unwrap().into_inner();
        assert_eq!(got.experiment, "fewer-il");
        assert_eq!(got.items.len(), 10);
        assert!(got
            .items
            .iter()
            .all(|i| ["served", "geometric"].contains(&i.arm.as_str())));
    }
    assert_eq!(
        shared(),
        before,
        "arms with other shard requests shared a fan-out"
    );
}

/// Sends the router `p` SIGHUP, then asks it (through `c`) to recommend for
/// `user` until the answer runs under `experiment` ("" for none), for at
/// most 10 s.
async fn hang_up(p: &Proc, c: &mut Client, user: &str, experiment: &str, what: &str) {
    let hup = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.recommend(for_user(user, 10)).await.unwrap().into_inner();
        if got.experiment == experiment {
            return;
        }
        assert!(Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A click by `user` on the first item of `answer`, recorded through
/// `router` with the answer's request id, and on `one` (one node) without
/// it, so later comparisons of the two see the same history.
async fn click(router: &mut Client, one: &mut Client, user: &str, answer: &pb::RecommendResponse) {
    let event = pb::Event {
        user_id: user.to_string(),
        item_id: answer.items[0].item_id.clone(),
        request_id: answer.request_id.clone(),
        kind: "click".into(),
        timestamp: 1_700_000_100,
        ..Default::default()
    };
    let plain = pb::Event {
        request_id: String::new(),
        ..event.clone()
    };
    for (c, e) in [(router, event), (one, plain)] {
        c.record_events(pb::RecordEventsRequest { events: vec![e] })
            .await
            .unwrap();
    }
}
