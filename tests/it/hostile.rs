//! Hostile and careless writes (the security issue's findings 1, 6 and 8):
//! what the edge refuses, that the log never holds a record replay rejects
//! (a property test over the gRPC layer), and that a damaged log stops the
//! start instead of losing acknowledged writes, with `vecrec-admin wal`
//! to see and salvage what is intact.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::oneshot;
use tonic::Code;
use vecrec::config::Config;
use vecrec::engine::Engine;
use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;
use vecrec::live::Live;

use crate::common::{copy_sample, encoder, serve_live};

type Client = RecommenderClient<tonic::transport::Channel>;

/// A content-only engine over `root` with its log attached, and no
/// background compaction (so the log holds every write of the test).
fn live_engine(root: &Path) -> Engine {
    let mut cfg = Config::default();
    cfg.hybrid.enabled = false;
    cfg.server.reload_interval_ms = 0;
    let mut e = Engine::open(root, cfg, Some(encoder())).unwrap();
    let live = Live::open(root, e.applied_seq()).unwrap();
    e.attach_live(Arc::new(live));
    e
}

async fn serve(root: &Path) -> (Client, oneshot::Sender<()>, Vec<String>) {
    let (addr, tx) = serve_live(root, Config::default()).await;
    let e = Engine::open(root, Config::default(), None).unwrap();
    let store = e.index().store();
    let ids = (0..store.len() as u32)
        .map(|i| store.external_id(i).to_owned())
        .collect();
    for _ in 0..100 {
        if let Ok(c) = RecommenderClient::connect(format!("http://{addr}")).await {
            return (c, tx, ids);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

/// Exactly what the findings sent: each is refused (or, for the
/// duplicate delete, counted once), and the next start replays the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_findings_hostile_writes_are_refused_before_the_log() {
    let dir = copy_sample();
    let (mut c, stop, ids) = serve(dir.path()).await;
    let item = |id: &str, year: f64| pb::Item {
        id: id.into(),
        title: "Toy Story (HACKED)".into(),
        text: "an attribute that is not a number".into(),
        numeric: [("year".to_string(), year)].into(),
        ..Default::default()
    };
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let r = c
            .upsert_items(pb::UpsertItemsRequest {
                items: vec![item("nan-item", bad)],
            })
            .await;
        assert_eq!(code(r), Code::InvalidArgument, "numeric {bad}");
    }
    let huge = "i".repeat(100 << 10);
    let r = c
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![item(&huge, 1995.0)],
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument, "a 100 KB id");
    let ev = |weight: f32| pb::RecordEventsRequest {
        events: vec![pb::Event {
            user_id: "u-hostile".into(),
            item_id: ids[0].clone(),
            weight,
            timestamp: 0,
            ..Default::default()
        }],
    };
    for w in [1e30, f32::NAN, f32::INFINITY, -1.0] {
        assert_eq!(
            code(c.record_events(ev(w)).await),
            Code::InvalidArgument,
            "weight {w}"
        );
    }
    let del = c
        .delete_items(pb::DeleteItemsRequest {
            ids: vec![ids[5].clone(), ids[5].clone()],
        })
        .await
        .unwrap();
    assert_eq!(del.get_ref().deleted, 1, "a duplicate id counted once");
    let r = c
        .search_text(pb::SearchTextRequest {
            query: "space".into(),
            k: 5,
            filter: Some(pb::AttributeFilter {
                ranges: vec![pb::NumericRange {
                    field: "year".into(),
                    min: Some(f64::NAN),
                    max: None,
                }],
                ..Default::default()
            }),
        })
        .await;
    assert_eq!(code(r), Code::InvalidArgument, "a NaN filter bound");
    // A 3 MB unknown id: the answer names it in a few dozen bytes, so the
    // client gets the status rather than failing on metadata size.
    let s = c
        .get_item(pb::GetItemRequest {
            id: "x".repeat(3 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(
        s.message().len() < 300,
        "{} bytes echoed",
        s.message().len()
    );
    let s = c
        .similar_items(pb::SimilarItemsRequest {
            item_id: "no-such-item-".repeat(10),
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert!(s.message().len() < 200, "{}", s.message());
    let _ = stop.send(());
    // What the next start replays (read beside the server, which may still
    // hold the log): nothing but the one delete was logged.
    let live = vecrec::live::Snapshot::read(dir.path(), 0).unwrap();
    let v = live.view(0);
    assert_eq!(v.pending(), 1);
    assert!(v.is_deleted(&ids[5]));
}

/// One generated write: the request and whether the edge must accept it.
#[derive(Clone, Debug)]
enum Write {
    Upsert {
        id: String,
        year: f64,
        tags: usize,
    },
    Delete(Vec<String>),
    Event {
        user: String,
        item: String,
        weight: f32,
        timestamp: i64,
    },
}

fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u32..6).prop_map(|n| format!("h{n}")),
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        1 => Just("l".repeat(257)),
        1 => Just("m".repeat(100 << 10)),
    ]
}

fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e6f64..1e6,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

fn hostile_weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => 0f32..1000.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(-1.0f32),
        1 => Just(1e30f32),
    ]
}

/// Ids of sample items (by position) or of generated ones.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (0usize..8).prop_map(|i| format!("#{i}")),
        2 => hostile_id(),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (
            hostile_id(),
            hostile_f64(),
            prop_oneof![3 => 0usize..3, 1 => Just(65usize)]
        )
            .prop_map(|(id, year, tags)| Write::Upsert { id, year, tags }),
        prop::collection::vec(target(), 1..4).prop_map(Write::Delete),
        (
            hostile_id(),
            target(),
            hostile_weight(),
            prop_oneof![Just(0i64), Just(-3i64), Just(1_700_000_000i64)]
        )
            .prop_map(|(user, item, weight, timestamp)| Write::Event {
                user,
                item,
                weight,
                timestamp
            }),
    ]
}

/// What the client was told, to compare with what a restart replays.
#[derive(Default)]
struct Model {
    present: BTreeSet<String>,
    upserted: BTreeSet<String>,
    deleted: BTreeSet<String>,
    events: HashMap<String, usize>,
}

fn id_ok(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= 256
}

/// Sends `w`, checks the answer against the rules, and records what was
/// acknowledged.
async fn send(c: &mut Client, m: &mut Model, sample: &[String], w: Write) {
    let resolve = |id: &str| match id.strip_prefix('#') {
        Some(i) => sample[i.parse::<usize>().unwrap()].clone(),
        None => id.to_owned(),
    };
    let (got, want_ok) = match w {
        Write::Upsert { id, year, tags } => {
            let ok = id_ok(&id) && year.is_finite() && tags <= 64;
            let r = c
                .upsert_items(pb::UpsertItemsRequest {
                    items: vec![pb::Item {
                        id: id.clone(),
                        title: "generated".into(),
                        text: "an item written by the property test".into(),
                        tags: vec!["t".into(); tags],
                        numeric: [("year".to_string(), year)].into(),
                        ..Default::default()
                    }],
                })
                .await;
            if r.is_ok() {
                m.present.insert(id.clone());
                m.upserted.insert(id.clone());
                m.deleted.remove(&id);
            }
            (r.map(|_| ()), ok)
        }
        Write::Delete(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| resolve(i)).collect();
            let unique: BTreeSet<&String> = ids.iter().collect();
            let ok = ids.iter().all(|i| id_ok(i) && m.present.contains(i));
            let r = c
                .delete_items(pb::DeleteItemsRequest { ids: ids.clone() })
                .await;
            if let Ok(r) = &r {
                assert_eq!(r.get_ref().deleted as usize, unique.len());
                for i in &ids {
                    m.present.remove(i);
                    m.upserted.remove(i);
                    m.deleted.insert(i.clone());
                }
            }
            (r.map(|_| ()), ok)
        }
        Write::Event {
            user,
            item,
            weight,
            timestamp,
        } => {
            let item = resolve(&item);
            let ok = id_ok(&user)
                && id_ok(&item)
                && m.present.contains(&item)
                && weight.is_finite()
                && (0.0..=1000.0).contains(&weight)
                && timestamp >= 0;
            let r = c
                .record_events(pb::RecordEventsRequest {
                    events: vec![pb::Event {
                        user_id: user.clone(),
                        item_id: item,
                        weight,
                        timestamp,
                        ..Default::default()
                    }],
                })
                .await;
            if r.is_ok() {
                *m.events.entry(user).or_default() += 1;
            }
            (r.map(|_| ()), ok)
        }
    };
    match got {
        Ok(()) => assert!(want_ok, "a hostile write was acknowledged"),
        Err(s) => {
            assert!(!want_ok, "a valid write was refused: {s}");
            assert!(
                matches!(s.code(), Code::InvalidArgument | Code::NotFound),
                "{s}"
            );
            assert!(
                s.message().len() < 600,
                "{} bytes echoed",
                s.message().len()
            );
        }
    }
}

/// Random writes, hostile ones among them, through gRPC; after each batch
/// the log is replayed as a restart would: replay never fails, and it holds
/// exactly the acknowledged writes. `PROPTEST_CASES` sets the batches
/// (default 24).
#[test]
fn the_log_never_holds_a_write_that_replay_rejects() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = copy_sample();
    let (c, _stop, sample) = rt.block_on(serve(dir.path()));
    let m = Model {
        present: sample.iter().cloned().collect(),
        ..Default::default()
    };
    let state = std::cell::RefCell::new((c, m));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(write(), 1..6), |writes| {
        let mut st = state.borrow_mut();
        let (c, m) = &mut *st;
        rt.block_on(async {
            for w in writes {
                send(c, m, &sample, w).await;
            }
        });
        // Read as a restart would replay it, beside the server holding it.
        let live = vecrec::live::Snapshot::read(dir.path(), 0).expect("the log replays");
        let v = live.view(0);
        for id in &m.upserted {
            prop_assert!(v.item(id).is_some(), "acknowledged upsert of {id} lost");
        }
        for id in &m.deleted {
            prop_assert!(v.is_deleted(id), "acknowledged delete of {id} lost");
        }
        for (user, n) in &m.events {
            prop_assert_eq!(v.events(user).count(), *n, "events of {}", user);
        }
        Ok(())
    });
    // Shrinking replays against a log that already holds the failing case's
    // writes, so the first failure is the one to read.
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn admin(args: &[&str], root: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vecrec-admin"))
        .args(args)
        .arg("--index")
        .arg(root)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A log cut short in the middle of the second of four acknowledged writes
/// stops the start with the offset (it used to replay one write and drop
/// three), `vecrec-admin wal check` says what is intact, and `wal repair
/// --salvage` keeps it. A log shorter than its header is an error too.
#[test]
fn a_damaged_log_stops_the_start_and_repair_keeps_what_is_intact() {
    let dir = copy_sample();
    let root = dir.path();
    let sample: Vec<String> = {
        let e = live_engine(root);
        let s = e.index().store();
        let ids: Vec<String> = (0..4).map(|i| s.external_id(i).to_owned()).collect();
        for id in &ids {
            e.delete_items(vec![id.clone()]).unwrap();
        }
        ids
    };
    let wal = root.join(vecrec::layout::WAL_FILE);
    let full = std::fs::read(&wal).unwrap();
    let (code, out) = admin(&["wal", "check"], root);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("4 intact records") && out.contains("no damage"),
        "{out}"
    );
    // Where record 2's frame starts: after the header and record 1's frame.
    let live = Live::open(root, 0).unwrap();
    assert_eq!(live.view(0).pending(), 4);
    drop(live);
    let frame2 = {
        let r = vecrec_index::wal::check(&wal).unwrap();
        assert_eq!(r.records, 4);
        // Four frames of equal size (the ids have the same length here or
        // not: find record 2 by cutting until check reports one record).
        (16..r.end as usize)
            .find(|&cut| {
                std::fs::write(&wal, &full[..cut]).unwrap();
                vecrec_index::wal::check(&wal).unwrap().records == 1
                    && vecrec_index::wal::check(&wal)
                        .unwrap()
                        .damage
                        .is_some_and(|d| d.offset as usize == cut)
            })
            .unwrap()
    };
    std::fs::write(&wal, &full[..frame2 + 10]).unwrap();
    let err = Live::open(root, 0).unwrap_err().to_string();
    assert!(
        err.contains(&format!("at byte {frame2} after record 1")) && err.contains("cut short"),
        "{err}"
    );
    assert!(err.contains("wal repair --salvage"), "{err}");
    let (code, out) = admin(&["wal", "check"], root);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGE at byte"), "{out}");
    let (code, out) = admin(&["wal", "repair"], root);
    assert_eq!(code, 2, "repair without --salvage must refuse: {out}");
    let (code, out) = admin(&["wal", "repair", "--salvage"], root);
    assert_eq!(code, 0, "{out}");
    let live = Live::open(root, 0).unwrap();
    let v = live.view(0);
    assert_eq!(v.pending(), 1);
    assert!(v.is_deleted(&sample[0]));
    drop(v);
    drop(live);
    // Cut to 8 bytes: shorter than the header, refused (it used to be
    // taken as an empty log).
    std::fs::write(&wal, &full[..8]).unwrap();
    let err = Live::open(root, 0).unwrap_err().to_string();
    assert!(err.contains("shorter than its 16-byte header"), "{err}");
}
