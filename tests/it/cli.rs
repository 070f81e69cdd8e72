//! The binaries: help texts, clear errors, nothing half-built left behind.

use std::process::Command;

use crate::common::sample_index;

fn bin(name: &str) -> Command {
    Command::new(match name {
        "vecrec" => env!("CARGO_BIN_EXE_vecrec"),
        "vecrec-build" => env!("CARGO_BIN_EXE_vecrec-build"),
        "vecrec-eval" => env!("CARGO_BIN_EXE_vecrec-eval"),
        "vecrec-admin" => env!("CARGO_BIN_EXE_vecrec-admin"),
        "vecrec-experiment" => env!("CARGO_BIN_EXE_vecrec-experiment"),
        #[cfg(feature = "ann-bench")]
        "vecrec-ann-bench" => env!("CARGO_BIN_EXE_vecrec-ann-bench"),
        _ => env!("CARGO_BIN_EXE_vecrec-sample"),
    })
}

#[test]
fn every_binary_explains_itself() {
    let mut binaries = vec![
        ("vecrec", vec!["serve", "--help"], "--index"),
        ("vecrec", vec!["embed", "--help"], "--texts"),
        ("vecrec", vec!["route", "--help"], "--on-missing-shard"),
        ("vecrec-build", vec!["--help"], "--shards"),
        ("vecrec-eval", vec!["--help"], "--write-split"),
        ("vecrec-sample", vec!["--help"], "--seed"),
        ("vecrec-admin", vec!["wal", "repair", "--help"], "--salvage"),
        (
            "vecrec-experiment",
            vec!["report", "--help"],
            "--experiment",
        ),
    ];
    // Built with the comparison backends (`make test` enables them).
    if cfg!(feature = "ann-bench") {
        binaries.push(("vecrec-ann-bench", vec!["--help"], "--ef-construction"));
    }
    for (name, args, want) in binaries {
        let out = bin(name).args(&args).output().unwrap();
        assert!(out.status.success(), "{name} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(want), "{name} --help lacks {want}: {text}");
    }
}

#[test]
fn a_malformed_catalogue_names_the_row_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("c.jsonl");
    std::fs::write(
        &cat,
        "{\"id\":\"a\",\"title\":\"A\"}\n{\"id\":\"b\",\"title\":\"B\",\"price\":\"cheap\"}\n",
    )
    .unwrap();
    let inter = dir.path().join("i.csv");
    std::fs::write(&inter, "user,item,timestamp\nu,a,1\n").unwrap();
    let out_dir = dir.path().join("index");
    let out = bin("vecrec-build")
        .args(["--quiet", "--catalog"])
        .arg(&cat)
        .arg("--interactions")
        .arg(&inter)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c.jsonl:2: field \"price\""), "{err}");
    assert!(
        !out_dir.join("CURRENT").exists(),
        "a failed build must not publish a generation"
    );
}

/// `vecrec serve` on `root`, which must fail; its error output.
fn serve_fails(root: &std::path::Path) -> String {
    let out = bin("vecrec")
        .args(["serve", "--addr", "127.0.0.1:0", "--index"])
        .arg(root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serving_a_damaged_index_fails_clearly() {
    let s = sample_index();
    let copy = tempfile::tempdir().unwrap();
    let gen = vecrec_index::generation::current_generation(&s.root).unwrap();
    let name = gen.file_name().unwrap();
    copy_dir(&gen, &copy.path().join(name));
    std::fs::copy(s.root.join("CURRENT"), copy.path().join("CURRENT")).unwrap();
    let victim = copy.path().join(name).join("hnsw.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let err = serve_fails(copy.path());
    assert!(
        err.contains("hnsw.bin") && err.contains("checksum mismatch"),
        "{err}"
    );

    let out = bin("vecrec")
        .args([
            "serve",
            "--index",
            "/nonexistent/index",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vecrec-build"));
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_dir() {
            copy_dir(&f.path(), &to.join(f.file_name()));
        } else {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

/// `vecrec embed` writes, per line, the vector the encoder gives that text
/// (the same as SearchText's), and names an empty line instead of writing.
#[test]
fn embed_writes_one_vector_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "a quiet film about the sea",
        "space opera with robots",
        "a cookbook",
    ];
    let input = dir.path().join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out = dir.path().join("v.fvecs");
    let run = bin("vecrec")
        .args(["embed", "--quiet", "--texts"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (got, dim) = vecrec_index::texmex::read_vectors(&out).unwrap();
    let want = crate::common::encoder().encode(&texts).unwrap();
    assert_eq!(dim, want[0].len());
    assert_eq!(got.len(), texts.len() * dim);
    for (row, w) in got.chunks_exact(dim).zip(&want) {
        let diff = row
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "vector differs from the encoder's by {diff}");
    }
    std::fs::write(&input, "one\n\nthree\n").unwrap();
    let bad = dir.path().join("bad.fvecs");
    let run = bin("vecrec")
        .args(["embed", "--quiet", "--texts"])
        .arg(&input)
        .arg("--out")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("line 2 is empty"));
    assert!(!bad.exists());
}

/// The ANN benchmark tool prints a build line and one line per ef, and the
/// default graph reaches recall@10 ≥ 0.95 at ef = 64 on bigann10k.
#[cfg(feature = "ann-bench")]
#[test]
fn ann_bench_prints_json_lines() {
    let d = crate::common::shared().join("datasets/ann-bigann10k");
    let out = bin("vecrec-ann-bench")
        .arg("--base")
        .arg(d.join("bigann10k_base.bvecs"))
        .arg("--queries")
        .arg(d.join("bigann10k_query.bvecs"))
        .arg("--gt")
        .arg(d.join("bigann10k_groundtruth.ivecs"))
        .args(["--ef", "10,64", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["event"], "build");
    for key in [
        "build_s",
        "mem_mb",
        "open_s",
        "disk_mb",
        "rss_delta_mb",
        "resident_mb",
    ] {
        assert!(rows[0][key].as_f64().unwrap() > 0.0, "{key}");
    }
    // The index's working set: more than nothing (its graph alone is about
    // 1.3 MB), at most the process's growth plus every byte of its files.
    let mb = |k: &str| rows[0][k].as_f64().unwrap();
    let resident = mb("resident_mb");
    assert!(
        resident > 1.0 && resident <= mb("rss_delta_mb") + mb("disk_mb") + 1.0,
        "{}",
        rows[0]
    );
    assert_eq!(rows[2]["ef"], 64);
    assert!(rows[2]["recall@10"].as_f64().unwrap() >= 0.95);
    assert!(rows[2]["qps"].as_f64().unwrap() > 0.0);
}

/// `vecrec-build` into the same root twice, six of 600 titles changed in
/// between: the second build embeds those six, takes the rest from the
/// embedding cache, and its vectors match a build that embeds everything.
/// The report (`--report`) names every stage with its time and memory.
#[test]
fn a_rebuild_embeds_only_changed_texts() {
    let s = crate::common::sample_index();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(s.data.join("catalog.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let changed: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if k % 100 == 0 {
                let t = v["title"].as_str().unwrap().to_owned();
                v["title"] = format!("{t} (special edition)").into();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(dir.path().join("changed.jsonl"), changed.join("\n") + "\n").unwrap();
    let distinct: std::collections::HashSet<String> =
        vecrec::catalog::read_catalog(&s.data.join("catalog.jsonl"))
            .unwrap()
            .iter()
            .map(|i| i.embedding_text())
            .collect();
    let run = |catalog: &std::path::Path, out: &str, extra: &[&str]| {
        let report = dir.path().join(format!("{out}-{}.json", extra.len()));
        let o = bin("vecrec-build")
            .args(["--quiet", "--content-only", "--catalog"])
            .arg(catalog)
            .arg("--interactions")
            .arg(s.data.join("interactions.csv"))
            .arg("--out")
            .arg(dir.path().join(out))
            .arg("--report")
            .arg(&report)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(line.contains("peak RSS"), "{line}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
        r
    };
    let first = run(&s.data.join("catalog.jsonl"), "a", &[]);
    assert_eq!(first["embedded"], distinct.len());
    assert_eq!(first["reused_embeddings"], 0);
    let stages: Vec<&str> = first["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["embedding", "hnsw", "profiles", "commit"]);
    assert!(first["peak_rss_mib"].as_f64().unwrap() > 50.0, "{first}");

    let second = run(&dir.path().join("changed.jsonl"), "a", &[]);
    assert_eq!(second["embedded"], 6, "{second}");
    assert_eq!(second["reused_embeddings"], lines.len() - 6);
    let all = run(
        &dir.path().join("changed.jsonl"),
        "b",
        &["--no-embedding-cache"],
    );
    assert_eq!(all["embedded"], lines.len());
    assert!(!dir.path().join("b/embedding-cache").exists());
    let open = |root: &str| {
        vecrec_index::VectorStore::open(
            &vecrec_index::generation::current_generation(&dir.path().join(root)).unwrap(),
            true,
        )
        .unwrap()
    };
    let (cached, fresh) = (open("a"), open("b"));
    assert_eq!(cached.len(), fresh.len());
    let worst = cached
        .vectors()
        .iter()
        .zip(fresh.vectors())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Texts batched with different neighbours pad differently; the
    // vectors agree to float noise.
    assert!(worst < 1e-4, "cached vectors differ by up to {worst}");
}

/// The README's configuration reference is a file vecrec accepts: every
/// key it shows exists, in the section it shows it in.
#[test]
fn the_readme_configuration_block_loads() {
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Configuration")
        .expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert!(
        block.contains("[route]") && block.contains("[encoder]"),
        "{block}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, block).unwrap();
    let cfg = vecrec::config::Config::load(Some(&path))
        .unwrap_or_else(|e| panic!("README's configuration block does not load: {e}"));
    cfg.validate().unwrap();
}

#[test]
fn a_second_writer_of_an_index_roots_log_is_refused() {
    let repair = |root: &std::path::Path| {
        bin("vecrec-admin")
            .args(["wal", "repair", "--salvage", "--index"])
            .arg(root)
            .output()
            .unwrap()
    };
    // This process holds the log's lock, as a running `vecrec serve` with
    // live updates does: another server on the same root, and a repair of
    // the log, are refused instead of interleaving their writes with it.
    let root = crate::common::copy_sample();
    let log = root.path().join(vecrec::layout::WAL_FILE);
    let lock = vecrec_index::wal::WriterLock::acquire(&log).unwrap();
    let err = serve_fails(root.path());
    assert!(
        err.contains("another process is writing") && err.contains("index root of its own"),
        "{err}"
    );
    std::fs::write(&log, b"").unwrap();
    let out = repair(root.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process is writing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"",
        "the refused repair wrote"
    );
    // Once the holder is gone, the repair goes ahead.
    drop(lock);
    let out = repair(root.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small sample catalogue and interactions (120 items, 12 users) written
/// under `dir`/data; returns that directory.
fn small_sample(dir: &std::path::Path, seed: u64) -> std::path::PathBuf {
    let data = dir.join("data");
    let cfg = vecrec::sample::SampleConfig {
        seed,
        items: 120,
        users: 12,
        min_history: 5,
        max_history: 10,
    };
    vecrec::sample::write_sample(&vecrec::sample::generate(&cfg).unwrap(), &data).unwrap();
    data
}

/// The generation the index root `root` serves, opened.
fn served_index(root: &std::path::Path) -> vecrec_index::Index {
    vecrec_index::Index::open(&vecrec_index::generation::current_generation(root).unwrap()).unwrap()
}

/// The engine a shard's server runs over `root`, writing its log.
fn shard_server(root: &std::path::Path) -> vecrec::engine::Engine {
    let mut e = vecrec::engine::Engine::open(
        root,
        vecrec::config::Config::default(),
        Some(crate::common::encoder()),
    )
    .unwrap();
    e.attach_live(std::sync::Arc::new(
        vecrec::live::Live::open(root, 0).unwrap(),
    ));
    e
}

/// `vecrec-build --quiet --shards 2 --out OUT ARGS`: whether it
/// succeeded, and what it wrote (stdout, then stderr).
fn build_in_two(out: &std::path::Path, args: &[&str]) -> (bool, String) {
    let o = bin("vecrec-build")
        .args(["--quiet", "--shards", "2", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Writes `lease` as the build lease of the partitioned build `out`.
fn write_lease(out: &std::path::Path, lease: &vecrec::pipeline::Lease) {
    let path = out.join(vecrec::layout::BUILD_LOCK_FILE);
    std::fs::write(path, serde_json::to_vec(lease).unwrap()).unwrap();
}

/// Makes the build lease under `out` look as if every process of its
/// rebuild stopped an hour ago (its pods gone, the Job deleted), so the
/// next build takes it over.
fn abandon_lease(out: &std::path::Path) {
    let path = out.join(vecrec::layout::BUILD_LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("a rebuild holds the lease");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    f.set_modified(hour_ago).unwrap();
}

/// What [`log_writes`] logged.
struct Logged {
    deleted: String,
    clicked: String,
    new_id: String,
    user: String,
    /// The items of shard 1, in catalogue order.
    owned: Vec<String>,
}

/// Has the server of shard 1 of 2 under `root` log an upsert of a new
/// item, a delete of the first of its `items`, and an event on its second
/// by a user shard 1 keeps (records 1 to 3).
fn log_writes(
    root: &std::path::Path,
    items: &[vecrec::catalog::CatalogItem],
    rows: &[vecrec::catalog::Interaction],
) -> Logged {
    use vecrec::layout::shard_of;
    let owned: Vec<String> = items
        .iter()
        .filter(|i| shard_of(&i.id, 2) == 1)
        .map(|i| i.id.clone())
        .collect();
    let (deleted, clicked) = (owned[0].clone(), owned[1].clone());
    let new_id = (0..)
        .map(|k| format!("logged-{k}"))
        .find(|id| shard_of(id, 2) == 1)
        .unwrap();
    let user = rows
        .iter()
        .map(|r| r.user.clone())
        .find(|u| shard_of(u, 2) == 1)
        .unwrap();
    let e = shard_server(root);
    e.upsert_items(vec![vecrec::catalog::CatalogItem {
        id: new_id.clone(),
        meta: vecrec_index::ItemMeta {
            title: "Logged Tides".into(),
            text: "a lighthouse keeper counts the tides".into(),
            ..Default::default()
        },
    }])
    .unwrap();
    e.delete_items(vec![deleted.clone()]).unwrap();
    e.record_events(vec![vecrec::catalog::Interaction {
        user: user.clone(),
        item: clicked.clone(),
        timestamp: 1_800_000_000,
        event: None,
        weight: 1.0,
    }])
    .unwrap();
    Logged {
        deleted,
        clicked,
        new_id,
        user,
        owned,
    }
}

/// `vecrec-build --shards N --fold-log`: what the shards' servers logged
/// (an item upserted, one replaced, one deleted, an event) goes into the
/// next partitioned build, each shard's new generation records the last
/// record it took, so the log's records stop applying over it, and the
/// folded inputs are written for the next build, which folds nothing twice.
#[test]
fn a_partitioned_rebuild_folds_the_shards_logs() {
    use vecrec::catalog::{read_catalog, read_interactions, CatalogItem, Interaction};
    use vecrec::layout::{shard_of, shard_root, GenerationInfo};
    let dir = tempfile::tempdir().unwrap();
    let data = small_sample(dir.path(), 5);
    let out = dir.path().join("out");
    let build = |catalog: &std::path::Path, interactions: &std::path::Path, fold: bool| {
        let mut c = bin("vecrec-build");
        c.args(["--quiet", "--content-only", "--shards", "2", "--catalog"])
            .arg(catalog)
            .arg("--interactions")
            .arg(interactions)
            .arg("--out")
            .arg(&out);
        if fold {
            c.arg("--fold-log");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let (catalog, interactions) = (data.join("catalog.jsonl"), data.join("interactions.csv"));
    build(&catalog, &interactions, false);
    let items = read_catalog(&catalog).unwrap();
    let rows = read_interactions(&interactions).unwrap();

    // Shard 1's server takes writes of its own items into its log.
    let root = shard_root(&out, 1);
    let owned: Vec<&CatalogItem> = items.iter().filter(|i| shard_of(&i.id, 2) == 1).collect();
    let (replaced, deleted, clicked) = (
        owned[0].id.clone(),
        owned[1].id.clone(),
        owned[2].id.clone(),
    );
    let new_id = (0..)
        .map(|k| format!("logged-{k}"))
        .find(|id| shard_of(id, 2) == 1)
        .unwrap();
    let user = rows[0].user.clone();
    let through = {
        let e = shard_server(&root);
        let item = |id: &str, title: &str| CatalogItem {
            id: id.to_owned(),
            meta: vecrec_index::ItemMeta {
                title: title.into(),
                text: format!("{title}: a story told again"),
                ..Default::default()
            },
        };
        e.upsert_items(vec![
            item(&new_id, "Logged Tides"),
            item(&replaced, "Renamed"),
        ])
        .unwrap();
        e.delete_items(vec![deleted.clone()]).unwrap();
        e.record_events(vec![Interaction {
            user: user.clone(),
            item: clicked.clone(),
            timestamp: 1_800_000_000,
            event: None,
            weight: 2.0,
        }])
        .unwrap()
    };
    assert_eq!(through, 4);

    let said = build(&catalog, &interactions, true);
    assert!(
        said.contains("shard 1: folding 2 upserts, 1 deletes and 1 events (log records through 4)"),
        "{said}"
    );
    assert!(!said.contains("shard 0: folding"), "{said}");
    let generation = |s: usize| served_index(&shard_root(&out, s));
    let g1 = generation(1);
    assert_eq!(GenerationInfo::of(g1.manifest()).wal_seq, 4);
    assert_eq!(GenerationInfo::of(generation(0).manifest()).wal_seq, 0);
    let store = g1.store();
    let new_row = store
        .internal_id(&new_id)
        .expect("the upserted item is built in");
    assert_eq!(store.title(new_row), "Logged Tides");
    assert_eq!(
        store.title(store.internal_id(&replaced).unwrap()),
        "Renamed"
    );
    assert!(store.internal_id(&deleted).is_none());
    // Over the new generation the log's records are folded: nothing pending.
    let live = vecrec::live::Live::open(&root, 4).unwrap();
    assert_eq!(live.view(4).pending(), 0);
    drop(live);

    // The inputs as folded, for the next build.
    let folded = out.join("folded");
    let f_items = read_catalog(&folded.join("catalog.jsonl")).unwrap();
    let f_rows = read_interactions(&folded.join("interactions.csv")).unwrap();
    assert_eq!(f_items.len(), items.len());
    assert!(f_items.iter().any(|i| i.id == new_id));
    assert!(!f_items.iter().any(|i| i.id == deleted));
    let kept = rows.iter().filter(|r| r.item != deleted).count();
    assert_eq!(f_rows.len(), kept + 1);
    assert!(f_rows.contains(&Interaction {
        user,
        item: clicked,
        timestamp: 1_800_000_000,
        event: None,
        weight: 2.0,
    }));
    // Built again from them with --fold-log: nothing is folded twice.
    let said = build(
        &folded.join("catalog.jsonl"),
        &folded.join("interactions.csv"),
        true,
    );
    assert!(!said.contains("folding"), "{said}");
    assert_eq!(GenerationInfo::of(generation(1).manifest()).wal_seq, 4);
    let again = read_interactions(&folded.join("interactions.csv")).unwrap();
    assert_eq!(again.len(), f_rows.len());
}

/// A split rebuild that folds the shards' logs (`--fold-log` on each pod
/// of one `--run`): the embedding pods fold before embedding, the front's
/// pod folds and writes `OUT/folded/`, and each shard is cut from what it
/// folded, recording the log records it took. A restarted pod does
/// nothing twice; a new rebuild from `OUT/folded/` after one that never
/// published counts no record twice; and one with nothing new finds its
/// build served.
#[test]
fn a_split_rebuild_folds_the_shards_logs() {
    use vecrec::catalog::{read_catalog, read_interactions, Interaction};
    use vecrec::layout::{front_root, shard_root, GenerationInfo};
    let dir = tempfile::tempdir().unwrap();
    let data = small_sample(dir.path(), 11);
    let out = dir.path().join("out");
    let build = |args: &[&str]| build_in_two(&out, args);
    let (catalog, interactions) = (data.join("catalog.jsonl"), data.join("interactions.csv"));
    let given = [
        "--catalog",
        catalog.to_str().unwrap(),
        "--interactions",
        interactions.to_str().unwrap(),
    ];
    let (ok, said) = build(&given);
    assert!(ok, "{said}");
    let items = read_catalog(&catalog).unwrap();
    let rows = read_interactions(&interactions).unwrap();

    // Shard 1's server logs an upsert, a delete and an event.
    let root = shard_root(&out, 1);
    let Logged {
        deleted,
        clicked,
        new_id,
        user,
        owned,
    } = log_writes(&root, &items, &rows);
    let folding = "shard 1: folding 1 upserts, 1 deletes and 1 events (log records through 3)";
    let with =
        |extra: &[&'static str]| -> Vec<&str> { given.iter().chain(extra).copied().collect() };

    // Every pod embeds its shard's texts with the logs folded in: the
    // upserted text is the one shard 1's pod embeds (the front's cache has
    // the rest).
    for (s, embedded) in [("0", " 0 embedded"), ("1", " 1 embedded")] {
        let (ok, said) = build(&with(&["--embed-only", "--fold-log", "--shard", s]));
        assert!(ok && said.contains(folding), "{said}");
        assert!(said.contains(embedded), "{said}");
    }
    // The front's pod folds, writes the folded inputs and trains.
    let (ok, said) = build(&with(&["--front-only", "--fold-log", "--run", "r1"]));
    assert!(ok && said.contains(folding), "{said}");
    // Restarted, it trains nothing.
    let (ok, said) = build(&with(&["--front-only", "--fold-log", "--run", "r1"]));
    assert!(
        ok && said.contains("nothing to do: the front of rebuild r1"),
        "{said}"
    );
    // A shard is cut from what its front folded: no input files, a run.
    let (ok, said) = build(&with(&["--shard", "0", "--fold-log", "--run", "r1"]));
    assert!(!ok && said.contains("give it no --catalog"), "{said}");
    let (ok, said) = build(&["--shard", "0", "--fold-log"]);
    assert!(!ok && said.contains("need --run ID"), "{said}");

    // That rebuild stops here, unpublished, with the logs whole. While
    // its lease is renewed no other rebuild starts; its pods gone, the
    // next takes it over. It starts from the folded inputs, which hold the
    // logs' records already.
    let folded = out.join("folded");
    let (f_catalog, f_interactions) = (
        folded.join("catalog.jsonl"),
        folded.join("interactions.csv"),
    );
    let from_folded = [
        "--catalog",
        f_catalog.to_str().unwrap(),
        "--interactions",
        f_interactions.to_str().unwrap(),
    ];
    let again = |extra: &[&str]| {
        let args: Vec<&str> = from_folded.iter().chain(extra).copied().collect();
        build(&args)
    };
    let kept_copy = dir.path().join("r1-inputs");
    std::fs::create_dir_all(&kept_copy).unwrap();
    for f in [&f_catalog, &f_interactions] {
        std::fs::copy(f, kept_copy.join(f.file_name().unwrap())).unwrap();
    }
    let (ok, said) = again(&["--front-only", "--fold-log", "--run", "r2"]);
    assert!(!ok && said.contains("rebuild r1 (front-only on "), "{said}");
    abandon_lease(&out);
    // With nothing new in the logs, it takes the pending front as its own.
    let (ok, said) = again(&["--front-only", "--fold-log", "--run", "r2"]);
    assert!(ok && !said.contains("folding"), "{said}");
    assert!(said.contains("nothing to do"), "{said}");
    // That one stops too; the shard's server takes another event, which
    // the next rebuild folds, alone.
    let later = owned[2].clone();
    shard_server(&root)
        .record_events(vec![Interaction {
            user: user.clone(),
            item: later.clone(),
            timestamp: 1_800_000_100,
            event: None,
            weight: 1.0,
        }])
        .unwrap();
    abandon_lease(&out);
    let (ok, said) = again(&["--front-only", "--fold-log", "--run", "r3"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("shard 1: folding 0 upserts, 0 deletes and 1 events (log records through 4)"),
        "{said}"
    );
    let (ok, said) = build(&["--run", "", "--shard", "0", "--fold-log"]);
    assert!(!ok && said.contains("a rebuild id is"), "{said}");
    let served_front = vecrec_index::generation::current_generation(&front_root(&out)).unwrap();
    let (ok, said) = build(&["--shard", "0", "--fold-log", "--run", "r3"]);
    assert!(ok, "{said}");
    assert_eq!(
        vecrec_index::generation::current_generation(&front_root(&out)).unwrap(),
        served_front,
        "published before every shard was cut"
    );
    // A shard cut with the folded inputs but without --fold-log still
    // records what its front folded.
    let (ok, said) = again(&["--shard", "1", "--run", "r3"]);
    assert!(ok && said.contains("1 of 2 shards built"), "{said}");
    // That cut published rebuild r3, which so no longer holds the lease.
    assert_eq!(vecrec::pipeline::read_lease(&out).unwrap(), None);

    // Published: shard 1 records the log's last record, holds the upsert
    // and not the deleted item; the front has each event once.
    let open = served_index;
    assert_eq!(GenerationInfo::of(open(&root).manifest()).wal_seq, 4);
    assert_eq!(
        GenerationInfo::of(open(&shard_root(&out, 0)).manifest()).wal_seq,
        0
    );
    let shard = open(&root);
    assert!(shard.store().internal_id(&new_id).is_some());
    assert!(shard.store().internal_id(&deleted).is_none());
    let front = open(&front_root(&out));
    assert_ne!(front.dir(), served_front.as_path());
    let store = front.store();
    let users = vecrec::users::UserProfiles::open(front.dir(), store.len(), store.dim()).unwrap();
    let u = users.lookup(&user).unwrap();
    let history = users.history(u);
    let last_two: Vec<&str> = history[history.len() - 2..]
        .iter()
        .map(|&(i, _)| store.external_id(i))
        .collect();
    assert_eq!(last_two, [clicked.as_str(), later.as_str()]);
    let written = read_interactions(&f_interactions).unwrap();
    let kept = rows.iter().filter(|r| r.item != deleted).count();
    assert_eq!(written.len(), kept + 2, "each event is in the inputs once");

    // A restarted shard pod of that rebuild has nothing to do; nor has a
    // new rebuild with nothing new in the logs.
    let (ok, said) = build(&["--shard", "1", "--fold-log", "--run", "r3"]);
    assert!(ok && said.contains("nothing to do"), "{said}");
    let (ok, said) = again(&["--front-only", "--fold-log", "--run", "r4"]);
    assert!(
        ok && said.contains("nothing to do") && !said.contains("folding"),
        "{said}"
    );
    let (ok, said) = build(&["--shard", "0", "--fold-log", "--run", "r4"]);
    assert!(ok && said.contains("nothing to do"), "{said}");
    // Inputs folded before what is served now would drop record 4.
    let (c, i) = (
        kept_copy.join("catalog.jsonl"),
        kept_copy.join("interactions.csv"),
    );
    let (ok, said) = build(&[
        "--catalog",
        c.to_str().unwrap(),
        "--interactions",
        i.to_str().unwrap(),
        "--front-only",
        "--fold-log",
        "--run",
        "r5",
    ]);
    assert!(!ok && said.contains("older than what is served"), "{said}");
    assert_eq!(open(&front_root(&out)).dir(), front.dir());
}

/// `vecrec-build --shards N --compact`: a partitioned build with training
/// rebuilt from what it serves (the front generation's catalogue and
/// histories) with the shards' logs folded in, no input files; run again,
/// it folds nothing twice. A content-only build has no front to do so.
#[test]
fn a_partitioned_build_compacts_from_what_it_serves() {
    use vecrec::catalog::{read_catalog, read_interactions};
    use vecrec::layout::{front_root, shard_root, GenerationInfo};
    let dir = tempfile::tempdir().unwrap();
    let data = small_sample(dir.path(), 9);
    let out = dir.path().join("out");
    let build = |args: &[&str]| build_in_two(&out, args);
    let (catalog, interactions) = (data.join("catalog.jsonl"), data.join("interactions.csv"));
    let (ok, said) = build(&[
        "--catalog",
        catalog.to_str().unwrap(),
        "--interactions",
        interactions.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let items = read_catalog(&catalog).unwrap();
    let rows = read_interactions(&interactions).unwrap();

    // Shard 1's server logs an upsert, a delete and an event of a user it keeps.
    let root = shard_root(&out, 1);
    let Logged {
        deleted,
        clicked,
        new_id,
        user,
        ..
    } = log_writes(&root, &items, &rows);

    // While a rebuild holds the build lease, the compaction does not
    // start: at once, or after waiting --wait-lock seconds; once nobody
    // renews the lease, it takes it over and releases it when done.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    write_lease(
        &out,
        &vecrec::pipeline::Lease {
            run: "job-1".into(),
            what: "front-only".into(),
            host: "pod-0".into(),
            pid: 7,
            since_ms: now,
        },
    );
    let (ok, said) = build(&["--compact"]);
    assert!(
        !ok && said.contains("rebuild job-1 (front-only on pod-0, pid 7"),
        "{said}"
    );
    assert!(said.contains("--wait-lock"), "{said}");
    let started = std::time::Instant::now();
    let (ok, said) = build(&["--compact", "--wait-lock", "2"]);
    assert!(!ok && said.contains("waiting for rebuild job-1"), "{said}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    abandon_lease(&out);
    let (ok, said) = build(&["--compact"]);
    assert!(ok, "{said}");
    // That rebuild's late pods stop at once.
    assert!(out.join("abandoned-runs/job-1").is_file());
    assert!(
        said.contains("shard 1: folding 1 upserts, 1 deletes and 1 events (log records through 3)"),
        "{said}"
    );
    assert_eq!(vecrec::pipeline::read_lease(&out).unwrap(), None);
    let open = served_index;
    assert_eq!(GenerationInfo::of(open(&root).manifest()).wal_seq, 3);
    assert_eq!(
        GenerationInfo::of(open(&shard_root(&out, 0)).manifest()).wal_seq,
        0
    );
    let front = open(&front_root(&out));
    let store = front.store();
    assert_eq!(store.len(), items.len());
    assert!(store.internal_id(&new_id).is_some());
    assert!(store.internal_id(&deleted).is_none());
    let users = vecrec::users::UserProfiles::open(front.dir(), store.len(), store.dim()).unwrap();
    let u = users.lookup(&user).unwrap();
    let last = users.history(u).last().unwrap().0;
    assert_eq!(
        store.external_id(last),
        clicked,
        "the event ends the history"
    );
    let history_len = users.history(u).len();
    let written = read_catalog(&out.join("folded/catalog.jsonl")).unwrap();
    assert!(written.iter().any(|i| i.id == new_id) && !written.iter().any(|i| i.id == deleted));

    // Another shard count is refused: a log would go unread.
    for (n, why) in [("3", "not shard 0 of 3"), ("1", "not shard 0 of 1")] {
        let o = bin("vecrec-build")
            .args(["--quiet", "--compact", "--shards", n, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{err}");
    }
    // Again, twice at once (two processes): the second waits for the
    // first's lease, then runs; nothing left to fold either time, the
    // same catalogue and histories.
    let first = bin("vecrec-build")
        .args(["--quiet", "--shards", "2", "--compact", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lease = out.join(vecrec::layout::BUILD_LOCK_FILE);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lease.is_file() {
        assert!(
            std::time::Instant::now() < until,
            "the first compaction took no lease"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, said) = build(&["--compact", "--wait-lock", "600"]);
    let first = first.wait_with_output().unwrap();
    let first_said = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{first_said}");
    assert!(ok, "{said}");
    assert!(said.contains("waiting for rebuild compact-"), "{said}");
    assert!(
        !said.contains("folding") && !first_said.contains("folding"),
        "{said}"
    );
    assert_eq!(vecrec::pipeline::read_lease(&out).unwrap(), None);
    assert_eq!(GenerationInfo::of(open(&root).manifest()).wal_seq, 3);
    let front = open(&front_root(&out));
    let users =
        vecrec::users::UserProfiles::open(front.dir(), front.store().len(), front.store().dim())
            .unwrap();
    assert_eq!(front.store().len(), items.len());
    assert_eq!(
        users.history(users.lookup(&user).unwrap()).len(),
        history_len
    );

    // A content-only partitioned build has no front to rebuild from.
    let plain = dir.path().join("plain");
    let o = bin("vecrec-build")
        .args(["--quiet", "--content-only", "--shards", "2", "--catalog"])
        .arg(&catalog)
        .arg("--interactions")
        .arg(&interactions)
        .arg("--out")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = bin("vecrec-build")
        .args(["--quiet", "--shards", "2", "--compact", "--out"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no front generation to rebuild from"), "{err}");
}
