//! The Rust encoder reproduces Python onnxruntime + tokenizers (the committed
//! fixture made by scripts/make_encoder_fixture.py) within 1e-4.

use crate::common::{encoder, repo};

#[test]
fn vectors_match_the_python_reference() {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/encoder_fixture.json")).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sentences: Vec<String> = serde_json::from_value(fx["sentences"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fx["vectors"].clone()).unwrap();
    let enc = encoder();
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
