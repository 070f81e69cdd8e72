//! Live updates: upserts, deletes and events are visible at once, survive a
//! restart, are folded in by compaction; and a server killed with SIGKILL at
//! random points during a stream of writes (hostile ones among them) loses
//! nothing it acknowledged and always starts again.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use vecrec::catalog::{CatalogItem, Interaction};
use vecrec::config::Config;
use vecrec::engine::{Engine, RecommendOptions, UserRef};
use vecrec::error::Error;
use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;
use vecrec::live::Live;
use vecrec::serving::compact;
use vecrec_index::ItemMeta;

use crate::common::{copy_sample, encoder, sample_index};

fn open(root: &Path) -> Engine {
    let mut e = Engine::open(root, Config::default(), Some(encoder())).unwrap();
    let live = Live::open(root, e.applied_seq()).unwrap();
    e.attach_live(Arc::new(live));
    e
}

fn item(id: &str, title: &str, text: &str) -> CatalogItem {
    CatalogItem {
        id: id.to_owned(),
        meta: ItemMeta {
            title: title.to_owned(),
            text: text.to_owned(),
            categories: vec!["physics".into()],
            ..Default::default()
        },
    }
}

fn ids(v: &[vecrec::engine::Scored]) -> Vec<String> {
    v.iter().map(|s| s.id.clone()).collect()
}

#[test]
fn changes_are_visible_at_once_survive_a_restart_and_are_compacted() {
    let root = copy_sample();
    let root = root.path();
    let e = open(root);
    let query = "quantum chromodynamics on a lattice of gluons and quarks";
    e.upsert_items(vec![item(
        "live-1",
        "Lattice Gauge Theory",
        "quantum chromodynamics on a lattice: gluons, quarks and confinement",
    )])
    .unwrap();
    assert_eq!(ids(&e.search_text(query, 3, None).unwrap())[0], "live-1");
    assert_eq!(e.item_meta("live-1").unwrap().title, "Lattice Gauge Theory");
    let similar = ids(&e.similar_items("live-1", 5, None).unwrap());
    assert_eq!(similar.len(), 5);
    assert!(!similar.contains(&"live-1".to_owned()));

    // Delete the item a query finds first: no answer shows it again.
    let victim = ids(&e.search_text("a dog that learns agility", 1, None).unwrap())[0].clone();
    e.delete_items(vec![victim.clone()]).unwrap();
    assert!(matches!(e.item_meta(&victim), Err(Error::NotFound { .. })));
    assert!(!ids(&e
        .search_text("a dog that learns agility", 20, None)
        .unwrap())
    .contains(&victim));
    let opts = RecommendOptions {
        k: 50,
        ..Default::default()
    };
    for u in 0..e.users().len() as u32 {
        let user = e.users().id(u).to_owned();
        assert!(!ids(&e.recommend(UserRef::Id(&user), &opts).unwrap()).contains(&victim));
    }

    // Events: the user's next answer treats the items as seen; a new user is known.
    let user = e.users().id(0).to_owned();
    let before = ids(&e.recommend(UserRef::Id(&user), &opts).unwrap());
    let (a, b) = (before[0].clone(), before[1].clone());
    let ev = |u: &str, i: &str| Interaction {
        user: u.to_owned(),
        item: i.to_owned(),
        timestamp: 1,
        event: None,
        weight: 1.0,
    };
    let c = before[2].clone();
    e.record_events(vec![
        ev(&user, &a),
        ev(&user, &b),
        ev("brand-new", &a),
        ev(&user, &c),
    ])
    .unwrap();
    // What a router is told (UserEvents): an item deleted since is left out.
    let kept = |e: &Engine| -> Vec<String> {
        e.recorded_events(&user)
            .unwrap()
            .into_iter()
            .map(|x| x.item)
            .collect()
    };
    assert_eq!(kept(&e), [a.clone(), b.clone(), c.clone()]);
    e.delete_items(vec![c.clone()]).unwrap();
    assert_eq!(kept(&e), [a.clone(), b.clone()]);
    let after = ids(&e.recommend(UserRef::Id(&user), &opts).unwrap());
    assert!(!after.contains(&a) && !after.contains(&b));
    assert_eq!(
        e.recommend(UserRef::Id("brand-new"), &opts).unwrap().len(),
        50
    );

    // Bad input changes nothing.
    assert!(matches!(
        e.delete_items(vec!["no-such-item".into()]),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        e.record_events(vec![ev(&user, "no-such-item")]),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        e.upsert_items(vec![item("x", "", "")]),
        Err(Error::InvalidArgument(_))
    ));

    // A restart replays the log.
    drop(e);
    let e = open(root);
    assert_eq!(ids(&e.search_text(query, 3, None).unwrap())[0], "live-1");
    assert!(e.item_meta(&victim).is_err());
    assert!(!ids(&e.recommend(UserRef::Id(&user), &opts).unwrap()).contains(&a));

    // Compaction folds everything into a generation; the log forgets it.
    let gen = compact(root, &e).unwrap().expect("changes were pending");
    let live = e.live().unwrap().clone();
    drop(e);
    let mut e2 = Engine::open(root, Config::default(), Some(encoder())).unwrap();
    assert_eq!(e2.index().dir(), gen);
    assert!(e2.applied_seq() > 0);
    e2.attach_live(live.clone());
    live.prune(e2.applied_seq()).unwrap();
    assert_eq!(live.view(e2.applied_seq()).pending(), 0);
    let store = e2.index().store();
    assert!(store.internal_id("live-1").is_some());
    assert!(store.internal_id(&victim).is_none());
    assert_eq!(ids(&e2.search_text(query, 3, None).unwrap())[0], "live-1");
    assert!(e2.users().lookup("brand-new").is_some());
    let h: Vec<String> = e2
        .users()
        .history(e2.users().lookup(&user).unwrap())
        .iter()
        .map(|x| store.external_id(x.0).to_owned())
        .collect();
    assert!(
        h.ends_with(&[a.clone(), b.clone()]),
        "events appended to the history"
    );
    // Writes after the compaction land on top of the new generation, also after a restart.
    e2.upsert_items(vec![item(
        "live-2",
        "Neutrino Oscillations",
        "flavour mixing of neutrinos",
    )])
    .unwrap();
    drop(e2);
    drop(live);
    let e3 = open(root);
    assert_eq!(
        e3.item_meta("live-2").unwrap().title,
        "Neutrino Oscillations"
    );
    assert_eq!(e3.live().unwrap().view(e3.applied_seq()).pending(), 1);
}

/// Two replicas on one root: the writer's appends reach the follower at
/// its next refresh (items, deletes, events, and what a router asks of a
/// shard), a write sent to the follower is refused before any work, and
/// the follower starts over when the writer rewrites the log.
#[test]
fn a_follower_serves_what_the_writer_appends_and_takes_no_writes() {
    let root = copy_sample();
    let root = root.path();
    let writer = open(root);
    let mut follower = Engine::open(root, Config::default(), Some(encoder())).unwrap();
    let live = Live::follow(root, follower.applied_seq(), Some("writer-host")).unwrap();
    assert!(live.is_follower() && !writer.live().unwrap().is_follower());
    follower.attach_live(Arc::new(live));
    let refresh = || follower.live().unwrap().refresh().unwrap();
    assert_eq!(refresh(), 0, "nothing written yet");

    writer
        .upsert_items(vec![item("f-1", "Tide Tables", "tides of the north sea")])
        .unwrap();
    let victim = ids(&writer
        .search_text("a dog that learns agility", 1, None)
        .unwrap())[0]
        .clone();
    writer.delete_items(vec![victim.clone()]).unwrap();
    let user = writer.users().id(0).to_owned();
    let ev = Interaction {
        user: user.clone(),
        item: "f-1".into(),
        timestamp: 1,
        event: None,
        weight: 1.0,
    };
    writer.record_events(vec![ev.clone()]).unwrap();
    assert!(follower.item_meta("f-1").is_err(), "not read yet");
    assert_eq!(refresh(), 3);
    assert_eq!(follower.item_meta("f-1").unwrap().title, "Tide Tables");
    assert!(matches!(
        follower.item_meta(&victim),
        Err(Error::NotFound { .. })
    ));
    let states = follower
        .item_states(&["f-1".to_owned(), victim.clone()])
        .unwrap();
    assert_eq!(
        states,
        [
            vecrec::engine::ItemState::New,
            vecrec::engine::ItemState::Deleted
        ]
    );
    let events = follower.recorded_events(&user).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].item, "f-1");
    assert_eq!(refresh(), 0, "each record is read once");

    // Writes sent to the follower are refused, naming the reason.
    for err in [
        follower
            .upsert_items(vec![item("f-2", "x", "some text")])
            .unwrap_err(),
        follower.delete_items(vec!["f-1".into()]).unwrap_err(),
        follower.record_events(vec![ev]).unwrap_err(),
    ] {
        let Error::FailedPrecondition(m) = &err else {
            panic!("{err:?}")
        };
        assert!(m.starts_with(vecrec::live::FOLLOWER), "{m}");
        assert!(m.contains("host writer-host"), "{m}");
    }

    // The writer rewrites its log without what a generation folded (here
    // the first two records): the follower reads the new file, and keeps
    // the older records until it serves a generation that folded them.
    writer.live().unwrap().prune(2).unwrap();
    writer
        .upsert_items(vec![item("f-3", "Salt Marsh", "birds of the salt marsh")])
        .unwrap();
    assert_eq!(refresh(), 2, "the event, and the new upsert");
    assert!(follower.item_meta("f-3").is_ok());
    assert!(follower.item_meta("f-1").is_ok(), "kept until folded here");
    assert!(matches!(
        follower.item_meta(&victim),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(follower.recorded_events(&user).unwrap().len(), 1);
    let live = follower.live().unwrap();
    assert_eq!(live.view(0).last_seq(), 4);
    // Its own prune (on swapping to a generation that folded them) drops them.
    live.prune(2).unwrap();
    assert!(follower.item_meta("f-1").is_err());
    assert!(follower.item_meta("f-3").is_ok());
}

struct Server {
    child: Child,
    url: String,
}

fn start_server(root: &Path, compact_after: usize) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vecrec"))
        .args(["serve", "--index"])
        .arg(root)
        .args(["--addr", "127.0.0.1:0"])
        .env("VECREC_SERVER__RELOAD_INTERVAL_MS", "100")
        .env("VECREC_LIVE__COMPACT_AFTER", compact_after.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

async fn connect(url: &str) -> RecommenderClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if let Ok(c) = RecommenderClient::connect(url.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {url}");
}

/// What the client was told: item id → present (true) or deleted (false).
async fn check(
    client: &mut RecommenderClient<tonic::transport::Channel>,
    acked: &HashMap<String, bool>,
) {
    for (id, present) in acked {
        let got = client
            .get_item(pb::GetItemRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await;
        match (present, got) {
            (true, Ok(r)) => assert_eq!(&r.get_ref().id, id),
            (false, Err(s)) => assert_eq!(s.code(), tonic::Code::NotFound, "{id}"),
            (true, Err(s)) => panic!("acknowledged upsert of {id} lost: {s}"),
            (false, Ok(_)) => panic!("acknowledged delete of {id} lost"),
        }
    }
}

/// SIGKILL at random points of a stream of upserts and deletes (and of the
/// compactions they trigger), then a restart: every acknowledged write is
/// there. `VECREC_CRASH_ROUNDS` sets the rounds (default 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let _alone = crate::common::heavy().await;
    let rounds: usize = std::env::var("VECREC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // A content-only index keeps each compaction short, so kills land inside them too.
    let s = sample_index();
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("index");
    let items = vecrec::catalog::read_catalog(&s.data.join("catalog.jsonl")).unwrap();
    let items = &items[..200];
    vecrec::pipeline::build(
        &root,
        &encoder(),
        items,
        &[],
        &vecrec::pipeline::BuildOptions {
            progress: false,
            train: None,
            learn_fusion: None,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut acked: HashMap<String, bool> = HashMap::new();
    let mut total = 0usize;
    for round in 0..rounds {
        let mut server = start_server(&root, 25);
        let mut client = connect(&server.url).await;
        check(&mut client, &acked).await;
        let kill_after = Duration::from_millis(rng.gen_range(20..400));
        let mut plan: Vec<(String, bool)> = Vec::new();
        let mut present: Vec<String> = acked.iter().filter(|x| *x.1).map(|x| x.0.clone()).collect();
        present.sort();
        for k in 0..1000 {
            if k % 4 == 3 && !present.is_empty() {
                let at = rng.gen_range(0..present.len());
                plan.push((present.swap_remove(at), false));
            } else {
                plan.push((format!("crash-{round}-{k}"), true));
            }
        }
        // A write cut off by the kill may or may not have been applied; only
        // acknowledged ones are promised.
        let mut inflight: Option<String> = None;
        let writer = async {
            for (k, (id, upsert)) in plan.into_iter().enumerate() {
                if k % 5 == 4 {
                    // A hostile write between the others: refused, never
                    // logged, so the restart after the kill replays.
                    let r = client
                        .upsert_items(pb::UpsertItemsRequest {
                            items: vec![pb::Item {
                                id: format!("hostile-{round}-{k}"),
                                title: "NaN year".into(),
                                numeric: [("year".to_string(), f64::NAN)].into(),
                                ..Default::default()
                            }],
                        })
                        .await;
                    match r {
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {}
                        Err(_) => break, // the kill
                        Ok(_) => panic!("a NaN attribute was acknowledged"),
                    }
                }
                inflight = Some(id.clone());
                let ok = if upsert {
                    client
                        .upsert_items(pb::UpsertItemsRequest {
                            items: vec![pb::Item {
                                id: id.clone(),
                                title: format!("Crash test item {id}"),
                                text: "written while the server may die at any moment".into(),
                                ..Default::default()
                            }],
                        })
                        .await
                        .is_ok()
                } else {
                    client
                        .delete_items(pb::DeleteItemsRequest {
                            ids: vec![id.clone()],
                        })
                        .await
                        .is_ok()
                };
                if !ok {
                    break;
                }
                acked.insert(id, upsert);
                inflight = None;
                total += 1;
            }
        };
        tokio::select! {
            _ = writer => {},
            _ = tokio::time::sleep(kill_after) => {},
        }
        if let Some(id) = inflight {
            acked.remove(&id);
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
    }
    let mut server = start_server(&root, 25);
    let mut client = connect(&server.url).await;
    check(&mut client, &acked).await;
    // Events through gRPC: a new user's answer excludes what they saw, an
    // item of the generation or one upserted since (live only, so its vector
    // alone describes the user).
    client
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![pb::Item {
                id: "after-the-crashes".into(),
                title: "Written after the last restart".into(),
                text: "an item only the write-ahead log holds".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let in_generation = items[0].id.clone();
    for (user, seen) in [
        ("crash-user-1", in_generation.as_str()),
        ("crash-user-2", "after-the-crashes"),
    ] {
        client
            .record_events(pb::RecordEventsRequest {
                events: vec![pb::Event {
                    user_id: user.into(),
                    item_id: seen.into(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
        let recs = client
            .recommend(pb::RecommendRequest {
                user_id: user.into(),
                k: 20,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(recs.get_ref().items.len(), 20, "{user}");
        assert!(recs.get_ref().items.iter().all(|s| s.item_id != seen));
    }
    let bad = client
        .record_events(pb::RecordEventsRequest {
            events: vec![pb::Event {
                user_id: "crash-user".into(),
                item_id: "no-such-item".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let served = vecrec_index::generation::current_generation(&root).unwrap();
    eprintln!(
        "{rounds} SIGKILL rounds, {total} acknowledged writes, {} ids checked, serving {}",
        acked.len(),
        served.display()
    );
    assert!(
        !served.ends_with("gen-000001"),
        "compactions ran during the stream"
    );
    assert!(total > rounds, "the writers got writes through");
}

/// `vecrec-admin snapshot` of a root with live writes, then more writes,
/// then `restore` under a new directory: the restored root answers as the
/// original did when the snapshot was taken (later writes absent), and a
/// restore over a non-empty directory is refused.
#[test]
fn a_snapshot_restores_the_same_answers_under_a_new_directory() {
    let root = copy_sample();
    let e = open(root.path());
    let victim = e.index().store().external_id(7).to_owned();
    e.upsert_items(vec![item(
        "snap-new",
        "Quantum gravity primer",
        "loops and strings",
    )])
    .unwrap();
    e.delete_items(vec![victim.clone()]).unwrap();
    let probes: Vec<String> = (0..5)
        .map(|i| e.index().store().external_id(i * 11).to_owned())
        .chain(["snap-new".to_string()])
        .collect();
    let answers = |e: &Engine| -> Vec<Vec<String>> {
        probes
            .iter()
            .map(|p| ids(&e.similar_items(p, 10, None).unwrap()))
            .collect()
    };
    let before = answers(&e);
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("backup.tar");
    let admin = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vecrec-admin"))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = admin(&[
        "snapshot".as_ref(),
        "--index".as_ref(),
        root.path().as_os_str(),
        "--out".as_ref(),
        tar.as_os_str(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("2 log records"), "{text}");
    // Written after the snapshot: must not be restored.
    e.upsert_items(vec![item("snap-later", "Later", "after the snapshot")])
        .unwrap();
    drop(e);
    let restored = dir.path().join("restored");
    let restore = || {
        admin(&[
            "restore".as_ref(),
            "--from".as_ref(),
            tar.as_os_str(),
            "--index".as_ref(),
            restored.as_os_str(),
        ])
    };
    let (ok, text) = restore();
    assert!(ok, "{text}");
    let r = open(&restored);
    assert_eq!(answers(&r), before);
    assert!(r.item_meta("snap-new").is_ok());
    assert!(matches!(r.item_meta(&victim), Err(Error::NotFound { .. })));
    assert!(r.item_meta("snap-later").is_err());
    drop(r);
    let (ok, text) = restore();
    assert!(!ok && text.contains("not empty"), "{text}");
}
