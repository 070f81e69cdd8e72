//! Latency of one full `Recommend` on the ml-latest-small index: every source
//! (EASE, transitions, content HNSW search, popularity, ALS, two-tower through
//! ONNX Runtime; `hybrid.candidates` each), fused, the head
//! (`rerank.candidates`) reranked by the
//! cross-attention reranker (ONNX Runtime) and fused again, through
//! `Engine::recommend` — the code the gRPC handler runs. Prints p50/p95/p99
//! over 3,000 calls (users round robin), with and without the reranker, and
//! runs criterion for the mean of the full pipeline. The index is built once
//! into `target/bench-cache/ml-index-v2` (delete it to rebuild).
//!
//! Needs `make setup`. Run: `cargo bench --bench recommend`.

use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use vecrec::config::Config;
use vecrec::encoder::Encoder;
use vecrec::engine::{Engine, RecommendOptions, UserRef};
use vecrec::movielens::MovieLens;
use vecrec::pipeline::{build_generation, embed_catalog, BuildOptions};

fn engine(rerank: bool) -> Engine {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = repo.join("target/bench-cache/ml-index-v2");
    if !root.join("CURRENT").exists() {
        let shared = std::env::var_os("VECREC_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("../shared"));
        let ml = MovieLens::load(&shared.join("datasets/ml-latest-small")).expect("MovieLens");
        let enc = Encoder::load(&Config::default().encoder, 1)
            .expect("encoder files missing: run `make setup`");
        let vectors = embed_catalog(&enc, &ml.items, true).expect("embedding");
        let opts = BuildOptions {
            progress: true,
            ..Default::default()
        };
        build_generation(
            &root,
            &ml.items,
            &vectors,
            &MovieLens::interactions(&ml.positives),
            &opts,
            Default::default(),
        )
        .expect("build");
    }
    // Every source runs: the default weights plus a small popularity weight.
    let mut cfg = Config::default();
    cfg.hybrid.popularity_weight = 0.05;
    if !rerank {
        cfg.rerank.weight = 0.0;
    }
    Engine::open(&root, cfg, None).expect("open")
}

fn latencies(e: &Engine, users: &[String], opts: &RecommendOptions) -> Vec<f64> {
    let mut times: Vec<f64> = (0..3000)
        .map(|i| {
            let t = Instant::now();
            let r = e
                .recommend(UserRef::Id(&users[i % users.len()]), opts)
                .expect("recommend");
            assert!(!r.is_empty());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

fn bench(c: &mut Criterion) {
    let e = engine(true);
    assert!(e.is_hybrid());
    assert!(e.reranker().is_some(), "the index has a reranker");
    let h = &e.config().hybrid;
    assert!(
        h.ease_weight > 0.0
            && h.transitions_weight > 0.0
            && h.content_weight > 0.0
            && h.popularity_weight > 0.0
            && h.als_weight > 0.0
            && h.two_tower_weight > 0.0
            && e.config().rerank.weight > 0.0
    );
    let users: Vec<String> = (0..e.users().len() as u32)
        .map(|u| e.users().id(u).to_owned())
        .collect();
    let opts = RecommendOptions {
        k: 10,
        ..Default::default()
    };
    for (name, engine) in [
        ("sources + fusion, no reranker", &engine(false)),
        ("full: sources + rerank 200 + fusion", &e),
    ] {
        let times = latencies(engine, &users, &opts);
        let q = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "{name}: recommend latency over {} calls (ms): p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
            times.len(),
            q(0.50),
            q(0.95),
            q(0.99),
            q(1.0)
        );
    }
    let mut i = 0;
    c.bench_function("recommend_full_k10", |b| {
        b.iter(|| {
            i += 1;
            e.recommend(UserRef::Id(&users[i % users.len()]), &opts)
                .expect("recommend")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
