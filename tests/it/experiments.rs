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
    let mut line = crate::common::first_line(&mut child);
    if line.starts_with("metrics on ") {
        line = crate::common::first_line(&mut child);
    }
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
    let metrics: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    std::fs::write(
        &config,
        AB.replace(
            "reload_interval_ms = 0",
            &format!("reload_interval_ms = 0\nmetrics_addr = \"{metrics}\""),
        ),
    )
    .unwrap();
    let mut server = start_on(root.path(), &config).unwrap();
    let mut c = client(&server.url).await;
    let users: Vec<String> = favourites(&sample_index().data)
        .into_iter()
        .map(|x| x.0)
        .take(20)
        .collect();
    let mut served = HashMap::new();
    let mut sent: HashMap<String, f64> = HashMap::new();
    for (n, u) in users.iter().enumerate() {
        let r = recommend(&mut c, u, 5).await;
        if n < 10 {
            *sent.entry(r.arm.clone()).or_default() += 1.0;
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
    // /metrics counts the clicks by the arm that served them.
    let text = crate::serving::scrape(metrics).await;
    let mut counted: HashMap<String, f64> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("vecrec_experiment_feedback_total{"))
    {
        assert!(line.contains("kind=\"click\""), "{line}");
        let arm = ["control", "no-rerank"]
            .into_iter()
            .find(|a| line.contains(&format!("arm=\"{a}\"")))
            .unwrap_or_else(|| panic!("not an arm of the experiment: {line}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *counted.entry(arm.to_owned()).or_default() += v;
    }
    assert_eq!(counted, sent);
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
    let png = dir.path().join("lift.png");
    let out = Command::new(env!("CARGO_BIN_EXE_vecrec-experiment"))
        .args(["report", "--experiment", "rerank-off", "--cuped", "--index"])
        .arg(root.path())
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&png)
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
    let cuped = &arms[1]["cuped"];
    assert!(
        cuped["lift"].is_number() && cuped["variance_reduction"].is_number(),
        "{cuped}"
    );
    // A PNG of the lift over time: the signature and the size in its header.
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert_eq!(width, 900);
    assert!(bytes.len() > 5_000, "a drawn chart, not a blank image");
}

/// The simulation over the sample: users click unseen items of their
/// favourite categories. Few seeds, so the bounds are loose; the MovieLens
/// figures with 200 seeds are in benches/experiments.
#[test]
fn a_simulated_aa_test_stays_quiet_and_a_real_difference_is_found() {
    use vecrec::config::Config;
    use vecrec::simulation::{simulate, SimOptions, SimUser};
    let s = sample_index();
    let engine = crate::common::engine(&s.root);
    let store = engine.index().store();
    let users: Vec<SimUser> = favourites(&s.data)
        .into_iter()
        .map(|(id, cats)| {
            let u = engine.users().lookup(&id).unwrap();
            let seen: std::collections::HashSet<u32> =
                engine.users().history(u).iter().map(|h| h.0).collect();
            let truth = (0..store.len() as u32)
                .filter(|i| !seen.contains(i))
                .filter(|&i| {
                    store
                        .attributes(i)
                        .categories()
                        .any(|c| cats.iter().any(|x| x == c))
                })
                .map(|i| store.external_id(i).to_owned())
                .collect();
            SimUser {
                id,
                truth,
                covariate: seen.len() as f64,
            }
        })
        .collect();
    let cfg: Config = toml::from_str(
        &std::fs::read_to_string(crate::common::repo().join("benches/experiments/simulate.toml"))
            .unwrap(),
    )
    .unwrap();
    let e = &cfg.experiments[0];
    let logs = tempfile::tempdir().unwrap();
    let opts = SimOptions {
        seeds: 40,
        power_seeds: 10,
        min_users: 50,
        max_users: 200,
        k: 10,
        log_dir: logs.path().to_owned(),
        progress: false,
    };
    let r = simulate(&engine, &cfg, e, &users, &opts).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.users, users.len());
    // A/A: 40 seeds at α 0.05 expect 2 false positives; 8 or more has
    // probability below 0.1%.
    assert!(r.aa.fixed_fpr < 0.2, "{:?}", r.aa);
    assert!(r.aa.sequential_fpr < 0.2, "{:?}", r.aa);
    assert!(r.aa.srm_flagged <= 0.05, "{:?}", r.aa);
    // Popularity alone loses to the pipeline, in both designs.
    assert!(r.ab.median_lift < -0.2, "{:?}", r.ab);
    assert!(r.ab.control_ctr > r.ab.treatment_ctr);
    assert!(r.ab.detected >= 0.7, "{:?}", r.ab);
    assert!(r.ab.interleaving_detected >= 0.7, "{:?}", r.ab);
    assert!(r.ab.interleaving_preference < 0.0);
    assert!(!r.power.is_empty() && r.power[0].users == 50);
    assert!(
        std::fs::read_dir(logs.path()).unwrap().next().is_none(),
        "every run's log was read back and removed"
    );
}
