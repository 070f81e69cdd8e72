//! Experiments over gRPC, with the server binary: users keep their arm
//! across a restart, a forced arm is served, interleaving marks every
//! item's team, and bad experiment configs are refused at start and on
//! reload (where the running experiments stay).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vecrec::grpc::pb;
use vecrec::grpc::pb::recommender_client::RecommenderClient;

use crate::common::{favourites, sample_index};

const AB: &str = r#"
[server]
reload_interval_ms = 0

[[experiments]]
name = "rerank-off"
salt = "2026-12"
mode = "ab"
[[experiments.arms]]
name = "control"
share = 0.5
[[experiments.arms]]
name = "no-rerank"
share = 0.5
rerank_weight = 0.0
fusion = "rrf"
"#;

struct Server {
    child: Child,
    url: String,
    /// A private copy of the index, when the server has one (its exposure
    /// log is written there, not into the shared sample).
    _root: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `vecrec serve` over a private copy of the sample index with
/// `config`; `Err` with its stderr if it exits instead.
fn start(config: &Path) -> Result<Server, String> {
    let root = crate::common::copy_sample();
    let mut s = start_on(root.path(), config)?;
    s._root = Some(root);
    Ok(s)
}

/// [`start`] over the index root `root`.
fn start_on(root: &Path, config: &Path) -> Result<Server, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vecrec"))
        .args(["serve", "--index"])
        .arg(root)
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = crate::common::first_line(&mut child);
    match line.strip_prefix("listening on ") {
        Some(addr) => Ok(Server {
            url: format!("http://{addr}"),
            child,
            _root: None,
        }),
        None => {
            let _ = child.wait();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            Err(err)
        }
    }
}

async fn client(url: &str) -> Client {
    for _ in 0..200 {
        if let Ok(c) = RecommenderClient::connect(url.to_owned()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("cannot connect to {url}");
}

type Client = RecommenderClient<tonic::transport::Channel>;

/// Recommend for `user`, `k` items.
async fn recommend(c: &mut Client, user: &str, k: u32) -> pb::RecommendResponse {
    c.recommend(pb::RecommendRequest {
        user_id: user.to_owned(),
        k,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn arms_of(c: &mut Client, users: &[String]) -> HashMap<String, String> {
    let mut arms = HashMap::new();
    for u in users {
        let r = recommend(c, u, 10).await;
        assert_eq!(r.experiment, "rerank-off");
        assert_eq!(r.request_id.len(), 32);
        assert!(
            r.items.iter().all(|i| i.arm.is_empty()),
            "A/B items carry no team"
        );
        arms.insert(u.clone(), r.arm);
    }
    arms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_keep_their_arm_across_a_restart_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vecrec.toml");
    std::fs::write(&config, AB).unwrap();
    let users: Vec<String> = favourites(&sample_index().data)
        .into_iter()
        .map(|x| x.0)
        .take(30)
        .collect();

    let server = start(&config).unwrap();
    let mut c = client(&server.url).await;
    let first = arms_of(&mut c, &users).await;
    let in_control = first.values().filter(|a| *a == "control").count();
    assert!(
        (5..=25).contains(&in_control),
        "{in_control} of 30 in the control at a 50% share"
    );
    // A forced arm is served whatever the assignment.
    let u = users.iter().find(|u| first[*u] == "control").unwrap();
    let forced = c
        .recommend(pb::RecommendRequest {
            user_id: u.clone(),
            k: 10,
            force_arm: "no-rerank".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.arm, "no-rerank");
    let s = c
        .recommend(pb::RecommendRequest {
            user_id: u.clone(),
            force_arm: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    // A reload with shares that do not sum to 1 is refused; the running
    // experiment stays.
    std::fs::write(
        &config,
        AB.replace("share = 0.5\nrerank", "share = 0.4\nrerank"),
    )
    .unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(arms_of(&mut c, &users).await, first);
    // A good one with another salt is taken: users are reshuffled.
    std::fs::write(&config, AB.replace("2026-12", "2027-01")).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reshuffled = arms_of(&mut c, &users).await;
    assert!(
        users.iter().any(|u| reshuffled[u] != first[u]),
        "a new salt moved nobody: the reload was not taken"
    );
    drop(server);

    // The same arms after a restart (the good config back).
    std::fs::write(&config, AB).unwrap();
    let server = start(&config).unwrap();
    let mut c = client(&server.url).await;
    assert_eq!(
        arms_of(&mut c, &users).await,
        first,
        "assignment changed across a restart"
    );
    drop(server);

    // Refused at start, naming the key.
    for (bad, says) in [
        (
            AB.replace("share = 0.5\nrerank", "share = 0.4\nrerank"),
            "shares sum to",
        ),
        (AB.replace("fusion = \"rrf\"", "fusoin = \"rrf\""), "fusoin"),
        (
            AB.replace("name = \"no-rerank\"", "name = \"control\""),
            "two arms are named",
        ),
    ] {
        std::fs::write(&config, bad).unwrap();
        let err = start(&config)
            .err()
            .expect("a bad experiment config was served");
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaving_marks_each_items_team() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vecrec.toml");
    std::fs::write(
        &config,
        AB.replace("mode = \"ab\"", "mode = \"interleave\"")
            .replace(
                "rerank_weight = 0.0\nfusion = \"rrf\"",
                "ease_weight = 0.0\ntwo_tower_weight = 0.0\ncontent_weight = 1.0",
            ),
    )
    .unwrap();
    let server = start(&config).unwrap();
    let mut c = client(&server.url).await;
    let users: Vec<String> = favourites(&sample_index().data)
        .into_iter()
        .map(|x| x.0)
        .take(10)
        .collect();
    let mut both = 0;
    for u in &users {
        let r = recommend(&mut c, u, 10).await;
        assert_eq!(r.arm, "no-rerank", "the plan names the treatment");
        assert_eq!(r.items.len(), 10);
        let teams: Vec<&str> = r.items.iter().map(|i| i.arm.as_str()).collect();
        assert!(
            teams.iter().all(|t| *t == "control" || *t == "no-rerank"),
            "{teams:?}"
        );
        let c_n = teams.iter().filter(|t| **t == "control").count() as i64;
        assert!((2 * c_n - 10).abs() <= 2, "teams of {teams:?} are not even");
        if c_n > 0 && c_n < 10 {
            both += 1;
        }
    }
    assert!(both == users.len(), "every answer mixes both teams");
}

/// Every list served under the experiment and every event naming it are in
/// the exposure log, joined by request id, after a SIGKILL that came well
/// after the last commit (the crash-loss window is the commit window, 20 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_and_feedback_are_logged_and_survive_sigkill() {
    use vecrec::exposure::{read_all, Entry};
    let root = crate::common::copy_sample();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vecrec.toml");
    std::fs::write(&config, AB).unwrap();
    let mut server = start_on(root.path(), &config).unwrap();
    let mut c = client(&server.url).await;
    let users: Vec<String> = favourites(&sample_index().data)
        .into_iter()
        .map(|x| x.0)
        .take(20)
        .collect();
    let mut served = HashMap::new();
    for (n, u) in users.iter().enumerate() {
        let r = recommend(&mut c, u, 5).await;
        if n < 10 {
            c.record_events(pb::RecordEventsRequest {
                events: vec![pb::Event {
                    user_id: u.clone(),
                    item_id: r.items[0].item_id.clone(),
                    request_id: r.request_id.clone(),
                    kind: "click".into(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
        }
        served.insert(r.request_id.clone(), r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let entries = read_all(root.path()).unwrap();
    let mut exposures = 0;
    let mut clicks = 0;
    for e in &entries {
        match e {
            Entry::Exposure {
                request_id,
                user,
                experiment,
                arm,
                forced,
                items,
                ..
            } => {
                let r = &served[request_id];
                assert_eq!((experiment.as_str(), arm), ("rerank-off", &r.arm));
                assert!(!forced);
                assert!(users.contains(user));
                let ids: Vec<&str> = items.iter().map(|s| s.item.as_str()).collect();
                let want: Vec<&str> = r.items.iter().map(|s| s.item_id.as_str()).collect();
                assert_eq!(ids, want);
                assert_eq!(items[0].position, 1);
                exposures += 1;
            }
            Entry::Feedback {
                request_id,
                item,
                kind,
                ..
            } => {
                let r = &served[request_id];
                assert_eq!(item, &r.items[0].item_id, "joined to its exposure");
                assert_eq!(kind, "click");
                clicks += 1;
            }
            Entry::Definition {
                experiment, arms, ..
            } => {
                assert_eq!(experiment, "rerank-off");
                assert_eq!(arms.len(), 2);
            }
        }
    }
    assert_eq!((exposures, clicks), (20, 10));

    // The report over the same log: the keys per arm, and counts that match.
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vecrec-experiment"))
        .args(["report", "--experiment", "rerank-off", "--index"])
        .arg(root.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let arms = r["arms"].as_array().unwrap();
    assert_eq!(arms[0]["name"], "control");
    let mut users = 0;
    let mut total_clicks = 0;
    for (i, a) in arms.iter().enumerate() {
        for key in ["users", "requests", "exposures", "clicks", "ctr", "ctr_ci"] {
            assert!(!a[key].is_null(), "arm {i} lacks {key}: {a}");
        }
        for key in [
            "lift",
            "lift_ci",
            "p_value",
            "sequential_p_value",
            "srm_p_value",
        ] {
            assert_eq!(a[key].is_null(), i == 0, "{key} on arm {i}: {a}");
        }
        users += a["users"].as_u64().unwrap();
        total_clicks += a["clicks"].as_u64().unwrap();
        assert_eq!(
            a["exposures"].as_u64().unwrap(),
            5 * a["requests"].as_u64().unwrap()
        );
    }
    assert_eq!((users, total_clicks), (20, 10));
    assert!(r["srm_p_value"].as_f64().unwrap() > 0.0);
}
