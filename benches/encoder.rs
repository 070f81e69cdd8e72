//! Embedding throughput of the Rust encoder (tokenizers + ort, all cores,
//! batch 32, length-sorted batches) on real item texts: the first 512 texts of
//! the MovieLens item_text.csv. Compare with `benches/encoder_peer.py`, which
//! runs Python onnxruntime + HF tokenizers on the same texts and settings.
//!
//! Needs `make setup` (model and runtime in .cache/). Run: `make bench-encoder`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vecrec::config::Config;
use vecrec::encoder::Encoder;

fn texts() -> Vec<String> {
    let shared = std::env::var_os("VECREC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let path = shared.join("datasets/ml-latest-small/split/item_text.csv");
    let mut r = csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.records()
        .take(512)
        .map(|x| x.expect("csv row")[1].to_owned())
        .collect()
}

fn bench(c: &mut Criterion) {
    let enc = Encoder::load(&Config::default().encoder, 1)
        .expect("encoder files missing: run `make setup`");
    let texts = texts();
    let mut g = c.benchmark_group("encoder");
    g.sample_size(10);
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("movielens_512_texts_batch32", |b| {
        b.iter(|| enc.encode(&texts).unwrap())
    });
    g.bench_function("single_query", |b| {
        b.iter(|| {
            enc.encode(&["space adventure with a rebel princess"])
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
