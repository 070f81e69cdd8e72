//! The Rust encoder reproduces Python onnxruntime + tokenizers
//! (scripts/make_encoder_fixture.py, run by the test on this machine) within
//! 1e-4.

use crate::common::{encoder, repo};

/// The Python reference on this machine: scripts/make_encoder_fixture.py
/// over the encoder's own model and tokenizer, written to a temporary file.
/// It is made here, not read from the committed fixture, because ONNX
/// Runtime's int8 products differ between CPUs (AVX2's saturating u8 × s8
/// pairs against VNNI's): on a CPU without VNNI the committed fixture,
/// written on one with it, differs by 0.03 from both Python and Rust.
fn python_reference(model: &std::path::Path, tokenizer: &std::path::Path) -> serde_json::Value {
    let python = std::env::var_os("VECREC_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/venv/bin/python"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fixture.json");
    let status = std::process::Command::new(&python)
        .arg(repo().join("scripts/make_encoder_fixture.py"))
        .arg("--out")
        .arg(&out)
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(tokenizer)
        .status()
        .unwrap_or_else(|e| panic!("running {} (make setup): {e}", python.display()));
    assert!(status.success(), "make_encoder_fixture.py failed: {status}");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

#[test]
fn vectors_match_the_python_reference() {
    let enc = encoder();
    let fx = python_reference(&enc.files().model, &enc.files().tokenizer);
    let sentences: Vec<String> = serde_json::from_value(fx["sentences"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fx["vectors"].clone()).unwrap();
    // The committed fixture holds the same sentences (its vectors are the
    // record of the machine that wrote it).
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/encoder_fixture.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(committed["sentences"], fx["sentences"]);
    let model_sha = sha256_hex(&enc.files().model);
    assert_eq!(
        fx["model_sha256"].as_str().unwrap(),
        model_sha,
        "the fixture was made from another model than {} (run `make fixtures`)",
        enc.files().model.display()
    );
    assert_eq!(enc.dim(), fx["dim"].as_u64().unwrap() as usize);
    let got = enc.encode(&sentences).unwrap();
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "sentence {i}");
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i} norm {norm}");
    }
    eprintln!("largest difference to Python onnxruntime: {worst:e}");
    assert!(worst <= 1e-4, "largest difference {worst} > 1e-4");
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The encoder runs the model with its weight products on per-token int8
/// activations (scripts/quantize_activations.py); its vectors stay close to
/// those of the model as published, which `make setup` keeps beside it.
#[test]
fn the_w8a8_rewrite_stays_close_to_the_published_model() {
    let enc = encoder();
    let stock_path = enc.files().model.with_file_name("model.onnx");
    assert_ne!(
        stock_path,
        enc.files().model,
        "the encoder should load model-a8.onnx"
    );
    let mut cfg = vecrec::config::Config::default().encoder;
    cfg.model = Some(stock_path);
    let stock = vecrec::encoder::Encoder::load(&cfg, 1).unwrap();
    let texts = [
        "space adventure",
        "A young farm boy joins a rebellion to rescue a princess from an evil galactic empire.",
        "romantic comedy set in new york",
        "Toy Story (1995) | Adventure|Animation|Children|Comedy|Fantasy | pixar, fun",
        "a documentary about deep sea creatures and the scientists who study them",
    ];
    let a8 = enc.encode(&texts).unwrap();
    let f32_act = stock.encode(&texts).unwrap();
    let mut worst = 1f32;
    for (a, b) in a8.iter().zip(&f32_act) {
        let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        worst = worst.min(cos);
    }
    eprintln!("lowest cosine between the W8A8 and the published model: {worst}");
    assert!(worst > 0.99, "lowest cosine {worst}");
    assert!(
        worst < 0.999_999,
        "the two models gave the same vectors: is the rewrite loaded?"
    );
}

#[test]
fn a_vector_does_not_depend_on_its_batch() {
    let enc = encoder();
    let texts = [
        "short",
        "a much longer sentence about gardening, roses and compost heaps in spring",
    ];
    let both = enc.encode(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.encode(&[t]).unwrap();
        let d = alone[0]
            .iter()
            .zip(&both[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{t}: {d}");
    }
    assert!(enc.encode::<&str>(&[]).unwrap().is_empty());
}

/// A bulk encode runs in windows of 8,192 texts (so the token ids of a large
/// catalogue are never all held at once); texts on either side of a window
/// boundary, and in the last short window, get their own vectors in order.
#[test]
fn a_bulk_encode_across_windows_keeps_every_text_in_its_place() {
    let enc = encoder();
    let n = 8192 + 5;
    let texts: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!("item {i}"),
            1 => format!("a story about the number {i} and a lighthouse keeper"),
            _ => format!("{i} apples"),
        })
        .collect();
    let done = std::cell::Cell::new(0);
    let all = enc
        .encode_with_progress(&texts, &|d| {
            assert!(
                d > done.get() && d <= n,
                "progress {d} after {}",
                done.get()
            );
            done.set(d);
        })
        .unwrap();
    assert_eq!(all.len(), n);
    assert_eq!(done.get(), n);
    for i in [0, 1, 8190, 8191, 8192, 8193, n - 1] {
        let alone = enc.encode(&[&texts[i]]).unwrap();
        let d = alone[0]
            .iter()
            .zip(&all[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "text {i}: {d}");
    }
}

#[test]
fn related_texts_are_closer_than_unrelated_ones() {
    let enc = encoder();
    let v = enc
        .encode(&[
            "a saxophone solo in a smoky jazz club",
            "live bebop trumpet and double bass",
            "how to repot a tomato seedling",
        ])
        .unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.1);
}

/// Concurrent requests to a serving encoder are joined into shared forward
/// passes, and each still gets exactly the vectors it gets alone (to 1e-5:
/// rows are padded and masked, so batch-mates change nothing but rounding).
#[test]
fn concurrent_requests_are_batched_and_get_their_own_vectors() {
    use std::sync::{Arc, Barrier};
    let mut cfg = vecrec::config::Config::default().encoder;
    cfg.sessions = 2;
    cfg.max_batch_wait_us = 2000;
    let enc = Arc::new(vecrec::encoder::Encoder::load_serving(&cfg).unwrap());
    let requests: Vec<Vec<String>> = (0..24)
        .map(|i| {
            let n = 1 + i % 3;
            (0..n)
                .map(|j| {
                    format!(
                        "request {i} text {j}: {}",
                        [
                            "a jazz trio in a smoky club",
                            "roses and compost",
                            "a starship crew"
                        ][(i + j) % 3]
                            .repeat(1 + j)
                    )
                })
                .collect()
        })
        .collect();
    let alone: Vec<Vec<Vec<f32>>> = requests
        .iter()
        .map(|r| {
            r.iter()
                .map(|t| enc.encode(&[t]).unwrap().pop().unwrap())
                .collect()
        })
        .collect();
    let before = enc.batch_stats().unwrap();
    let barrier = Arc::new(Barrier::new(requests.len()));
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let (enc, barrier) = (enc.clone(), barrier.clone());
                s.spawn(move || {
                    barrier.wait();
                    enc.encode(r).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = enc.batch_stats().unwrap();
    let (batches, answered) = (
        after.batches - before.batches,
        after.requests - before.requests,
    );
    assert_eq!(answered, requests.len() as u64);
    assert!(
        batches < answered && after.largest > 1,
        "{answered} concurrent requests ran in {batches} passes (largest {})",
        after.largest
    );
    for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(got.len(), want.len(), "request {i}");
        for (g, w) in got.iter().zip(want) {
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "request {i}: {d}");
        }
    }
}
