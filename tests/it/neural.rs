//! The neural models: the Rust-trained two-tower user encoder, sequence
//! model and cross-attention reranker give the same numbers when served from their
//! exported ONNX through ONNX Runtime (within 1e-4); the build stores both in
//! the generation and the engine serves them; a user-supplied text
//! cross-encoder is fed (context, item) pairs the way it expects.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use vecrec::config::Config;
use vecrec::engine::{Engine, RecommendOptions, Source, UserRef};
use vecrec::nn::onnx::{Attr, Dim, GraphBuilder, FLOAT, INT64};
use vecrec::rerank::din::{
    features, gather, head_feature_names, history_slots, Batch, Din, DinOptions, HeadExample,
};
use vecrec::rerank::{RerankConfig, RerankKind};
use vecrec::retrieve::sequence::{causal_mask, Sasrec, SequenceOptions};
use vecrec::retrieve::two_tower::{pooling_weights, TwoTower, TwoTowerOptions};
use vecrec::runtime::{locate_ort, Device, Input, ModelSource, OnnxModel};

use crate::common::{encoder, sample_index};

fn ort() -> PathBuf {
    locate_ort(Config::default().encoder.ort_dylib.as_deref()).expect("run `make setup` first")
}

fn served(bytes: &[u8]) -> OnnxModel {
    OnnxModel::load(
        &ort(),
        ModelSource::Bytes("test model", bytes),
        1,
        1,
        Device::Cpu,
    )
    .unwrap()
}

/// Random item features and histories with some structure to learn.
fn data(n: usize, d: usize, users: usize) -> (Vec<f32>, Vec<Vec<u32>>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let features: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let histories = (0..users)
        .map(|u| {
            let len = 3 + u % 17;
            (0..len)
                .map(|_| ((rng.gen_range(0..n / 4) * 4 + u % 4) % n) as u32)
                .collect()
        })
        .collect();
    (features, histories)
}

/// The served reranker's scores of a batch (`hb` histories of `l` slots).
fn run_din(onnx: &OnnxModel, b: &Batch, hb: usize, l: usize, e: usize) -> Vec<f32> {
    let n = b.candidates.nrows();
    let (_, out) = onnx
        .run(vec![
            (
                "history",
                Input::F32(vec![hb, l, e], b.history.as_slice().unwrap()),
            ),
            ("history_mask", Input::F32(vec![hb, l], &b.mask)),
            (
                "candidate",
                Input::F32(vec![n, e], b.candidates.as_slice().unwrap()),
            ),
            (
                "features",
                Input::F32(vec![n, b.features.ncols()], b.features.as_slice().unwrap()),
            ),
        ])
        .unwrap();
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The sequence model's vector for histories shorter than, equal to and
/// longer than its window, from the exported graph and from Rust.
#[test]
fn the_sequence_model_served_by_ort_matches_the_rust_model() {
    let (n, d) = (60, 8);
    let (_, histories) = data(n, d, 40);
    let opts = SequenceOptions {
        dim: 12,
        max_len: 9,
        hidden: 20,
        epochs: 3,
        batch: 8,
        negatives: 16,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let init: Vec<f32> = (0..n * opts.dim)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let (model, loss) = Sasrec::train(&histories, init, &opts, &|_| {});
    assert!(loss.is_finite());
    let onnx = served(&model.onnx());
    let table = model.item_vectors();
    let mut checked = 0;
    for h in histories.iter().filter(|h| h.len() >= 2).take(12) {
        for cut in [1, h.len().min(opts.max_len), h.len()] {
            let hist = &h[..cut];
            let ids = &hist[hist.len().saturating_sub(opts.max_len)..];
            let x: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i as usize * opts.dim..(i as usize + 1) * opts.dim].to_vec())
                .collect();
            let mask = causal_mask(ids.len());
            let (shape, got) = onnx
                .run(vec![
                    ("history", Input::F32(vec![1, ids.len(), opts.dim], &x)),
                    ("mask", Input::F32(vec![ids.len(), ids.len()], &mask)),
                ])
                .unwrap();
            assert_eq!(shape, vec![1, opts.dim]);
            let want = model.user_vector(hist).unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-4, "history of {cut}: largest difference {diff}");
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn the_user_tower_served_by_ort_matches_the_rust_model() {
    let (n, d) = (120, 24);
    let (features, histories) = data(n, d, 80);
    let opts = TwoTowerOptions {
        dim: 16,
        hidden: 32,
        history: 12,
        epochs: 3,
        batch: 32,
        ..Default::default()
    };
    let (model, _) = TwoTower::train(&histories, &features, d, &opts);
    let onnx = served(&model.user_onnx());
    // A padded batch of histories of different lengths (zero weight = padding).
    let batch: Vec<&Vec<u32>> = histories.iter().take(9).collect();
    let len = batch
        .iter()
        .map(|h| h.len().min(opts.history))
        .max()
        .unwrap();
    let mut x = vec![0f32; batch.len() * len * d];
    let mut w = vec![0f32; batch.len() * len];
    for (r, h) in batch.iter().enumerate() {
        let (start, weights) = pooling_weights(h.len(), &opts);
        for (slot, (&i, wt)) in h[start..].iter().zip(&weights).enumerate() {
            let at = (r * len + slot) * d;
            x[at..at + d].copy_from_slice(&features[i as usize * d..(i as usize + 1) * d]);
            w[r * len + slot] = *wt;
        }
    }
    let (shape, got) = onnx
        .run(vec![
            ("history", Input::F32(vec![batch.len(), len, d], &x)),
            ("weights", Input::F32(vec![batch.len(), len], &w)),
        ])
        .unwrap();
    assert_eq!(shape, vec![batch.len(), opts.dim]);
    let want: Vec<f32> = batch
        .iter()
        .flat_map(|h| model.user_vector(&features, h))
        .collect();
    let diff = max_diff(&got, &want);
    eprintln!("user tower, Rust vs ONNX Runtime: largest difference {diff:e}");
    assert!(diff <= 1e-4, "largest difference {diff}");
}

#[test]
fn the_reranker_served_by_ort_matches_the_rust_model() {
    let (n, e) = (150, 16);
    let (mut emb, histories) = data(n, e, 100);
    for row in emb.chunks_mut(e) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let pop: Vec<f32> = (0..n).map(|i| (i % 11) as f32).collect();
    let opts = DinOptions {
        attention: 8,
        hidden: 16,
        history: 6,
        epochs: 2,
        batch: 64,
        ..Default::default()
    };
    let (model, _) = Din::train(&histories, &emb, e, &pop, None, &opts);
    let onnx = served(&model.onnx());
    let l = opts.history;
    let run = |b: &Batch, hb: usize| run_din(&onnx, b, hb, l, e);
    // One history shared by 40 candidates (serving), including a history
    // shorter than the slots (padding).
    for h in [&histories[0], &histories[7][..2].to_vec()] {
        let (hist, mask) = history_slots(&emb, e, h, l);
        let cands: Vec<u32> = (0..40).collect();
        let b = Batch {
            history: hist,
            mask,
            candidates: gather(&emb, e, &cands),
            features: features(&pop, &cands),
        };
        let diff = max_diff(&run(&b, 1), &model.score(&b));
        eprintln!("reranker, shared history: largest difference {diff:e}");
        assert!(diff <= 1e-4, "largest difference {diff}");
    }
    // One history per candidate (training layout).
    let cands: Vec<u32> = (0..10).map(|i| i * 3).collect();
    let mut hist = ndarray::Array2::zeros((cands.len() * l, e));
    let mut mask = vec![0f32; cands.len() * l];
    for r in 0..cands.len() {
        let (h, m) = history_slots(&emb, e, &histories[r + 20], l);
        hist.slice_axis_mut(ndarray::Axis(0), ndarray::Slice::from(r * l..(r + 1) * l))
            .assign(&h);
        mask[r * l..(r + 1) * l].copy_from_slice(&m);
    }
    let b = Batch {
        history: hist,
        mask,
        candidates: gather(&emb, e, &cands),
        features: features(&pop, &cands),
    };
    let diff = max_diff(&run(&b, cands.len()), &model.score(&b));
    eprintln!("reranker, one history per candidate: largest difference {diff:e}");
    assert!(diff <= 1e-4, "largest difference {diff}");
}

/// The reranker trained on fused heads (more features, the listwise loss)
/// is served by ONNX Runtime as its Rust forward pass computes it.
#[test]
fn the_head_reranker_served_by_ort_matches_the_rust_model() {
    let (n, e) = (150, 16);
    let (emb, histories) = data(n, e, 40);
    let sources: Vec<String> = vec!["ease".into(), "two_tower".into(), "als".into()];
    let f = head_feature_names(&sources).len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let heads: Vec<HeadExample> = histories
        .iter()
        .map(|h| {
            let cands: Vec<u32> = (0..30).map(|_| rng.gen_range(0..n as u32)).collect();
            HeadExample {
                history: h[..h.len() / 2].to_vec(),
                features: ndarray::Array2::from_shape_fn((cands.len(), f), |_| {
                    rng.gen_range(0.0..1.0)
                }),
                labels: cands
                    .iter()
                    .map(|i| f32::from(u8::from(h.contains(i))))
                    .collect(),
                candidates: cands,
            }
        })
        .collect();
    let opts = DinOptions {
        attention: 8,
        hidden: 16,
        history: 6,
        head_epochs: 2,
        ..Default::default()
    };
    let (model, loss) = Din::train_heads(&heads, &emb, e, &opts, &|_| {});
    assert!(loss.is_finite());
    assert_eq!(model.features, f);
    let onnx = served(&model.onnx());
    for head in &heads[..3] {
        let b = head.batch(&emb, e, opts.history);
        let out = run_din(&onnx, &b, 1, opts.history, e);
        let diff = max_diff(&out, &model.score(&b));
        eprintln!("head reranker, Rust vs ONNX Runtime: largest difference {diff:e}");
        assert!(diff <= 1e-4, "largest difference {diff}");
    }
}

#[test]
fn the_build_stores_both_models_and_the_engine_serves_them() {
    let s = sample_index();
    let mut cfg = Config::default();
    cfg.hybrid.two_tower_weight = 1.0;
    let engine = Engine::open(&s.root, cfg.clone(), Some(encoder())).unwrap();
    let reranker = engine.reranker().expect("the build trains a reranker");
    assert_eq!(reranker.name(), "din");
    // By default it is trained on the fused heads of held-out users, with
    // every source's score and rank among its features.
    let meta: vecrec::rerank::DinMeta =
        vecrec_index::format::read_json(&engine.index().dir().join(vecrec::layout::DIN_META_FILE))
            .unwrap();
    assert_eq!(meta.trained_on, "heads");
    assert!(meta.heads > 0, "{meta:?}");
    assert!(meta.train_loss.is_finite());
    let names: Vec<String> = Source::ALL.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(meta.sources, names);
    assert_eq!(meta.features, head_feature_names(&names));
    // No scratch build is left behind in the index root.
    assert!(std::fs::read_dir(&s.root).unwrap().all(|d| !d
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("rerank-holdout")));
    let u = engine.users().lookup("u0001").unwrap();
    let hist = engine.users().history(u);
    let seen: std::collections::HashSet<u32> = hist.iter().map(|h| h.0).collect();
    let lists = engine
        .source_lists(
            &hist,
            Some(u),
            &[Source::TwoTower],
            &engine.admit(|i| !seen.contains(&i)),
        )
        .unwrap();
    assert_eq!(lists[0].items.len(), cfg.hybrid.candidates);
    assert!(lists[0].items.iter().all(|(i, _)| !seen.contains(i)));
    assert!(lists[0].items.windows(2).all(|w| w[0].1 >= w[1].1));
    // A stored user's tower output is kept after the first call: each
    // user's kept vector is the one their history gives fresh, and another
    // user's is another.
    let v = engine.users().lookup("u0002").unwrap();
    let tower = |h: &[(u32, f32)], user| engine.user_input(Source::TwoTower, h, user).unwrap();
    let (hist_v, fresh_u) = (engine.users().history(v), tower(&hist, None));
    for _ in 0..2 {
        assert_eq!(tower(&hist, Some(u)), fresh_u);
        assert_eq!(tower(&hist_v, Some(v)), tower(&hist_v, None));
    }
    assert!(fresh_u.is_some());
    assert_ne!(tower(&hist_v, Some(v)), fresh_u);
    // The engine makes a history's item features when it needs them; the
    // user tower in the generation, run over the rows of the whole feature
    // matrix the build trained with, gives the same vector.
    {
        let dir = engine.index().dir();
        let meta: vecrec::layout::TwoTowerMeta =
            vecrec_index::format::read_json(&dir.join(vecrec::layout::TWO_TOWER_META_FILE))
                .unwrap();
        let als = vecrec_index::Index::open(&dir.join(vecrec::layout::ALS_DIR)).unwrap();
        let content = engine.index().store();
        let features = vecrec::retrieve::two_tower::item_features(
            content.vectors(),
            content.dim(),
            als.store().vectors(),
            als.store().dim(),
        );
        let d = meta.input;
        assert_eq!(features.len(), content.len() * d);
        let file = vecrec_index::format::CheckedFile::open(
            &dir.join(vecrec::layout::USER_TOWER_FILE),
            vecrec_index::format::Kind::MODEL,
            true,
        )
        .unwrap();
        let user_tower = served(file.payload());
        let ids: Vec<u32> = hist.iter().map(|h| h.0).collect();
        let (start, w) = pooling_weights(ids.len(), &meta.options);
        let x: Vec<f32> = ids[start..]
            .iter()
            .flat_map(|&i| features[i as usize * d..(i as usize + 1) * d].to_vec())
            .collect();
        let (_, want) = user_tower
            .run(vec![
                ("history", Input::F32(vec![1, w.len(), d], &x)),
                ("weights", Input::F32(vec![1, w.len()], &w)),
            ])
            .unwrap();
        let diff = max_diff(fresh_u.as_ref().unwrap(), &want);
        assert!(diff <= 1e-6, "largest difference {diff}");
    }
    // The sequence model is stored and served the same way, and it answers
    // with another list than the two-tower model.
    let seq = engine
        .source_lists(
            &hist,
            Some(u),
            &[Source::Sequence],
            &engine.admit(|i| !seen.contains(&i)),
        )
        .unwrap();
    assert_eq!(seq[0].name, "sequence");
    assert_eq!(seq[0].items.len(), cfg.hybrid.candidates);
    assert!(seq[0].items.iter().all(|(i, _)| !seen.contains(i)));
    assert!(seq[0].items.windows(2).all(|w| w[0].1 >= w[1].1));
    assert_ne!(
        seq[0]
            .items
            .iter()
            .map(|e| e.0)
            .take(10)
            .collect::<Vec<_>>(),
        lists[0]
            .items
            .iter()
            .map(|e| e.0)
            .take(10)
            .collect::<Vec<_>>()
    );
    let cands: Vec<u32> = lists[0].items.iter().map(|e| e.0).take(50).collect();
    let rr = engine.rerank_list(&hist, &cands).unwrap();
    assert_eq!(rr.items.len(), 50);
    assert!(rr.items.iter().all(|(_, s)| s.is_finite()));
    // It learned only from interactions: an item nobody took keeps its
    // place, and the others are reordered among theirs.
    let taken: std::collections::HashSet<u32> = engine
        .users()
        .item_histories()
        .into_iter()
        .flatten()
        .collect();
    let new: Vec<u32> = (0..engine.index().store().len() as u32)
        .filter(|i| !taken.contains(i))
        .take(3)
        .collect();
    assert!(!new.is_empty(), "the sample has items without interactions");
    let mut mixed: Vec<u32> = cands
        .iter()
        .copied()
        .filter(|i| taken.contains(i))
        .collect();
    mixed.truncate(20);
    let places: Vec<usize> = (0..new.len()).map(|k| 1 + 6 * k).collect();
    for (&p, &i) in places.iter().zip(&new) {
        mixed.insert(p, i);
    }
    let rr = engine.rerank_list(&hist, &mixed).unwrap();
    for (&p, &i) in places.iter().zip(&new) {
        assert_eq!(rr.items[p].0, i, "{:?}", rr.items);
    }
    let order: Vec<u32> = rr.items.iter().map(|e| e.0).collect();
    assert_ne!(order, mixed, "the known items are reordered");
    assert!(rr.items.windows(2).all(|w| w[0].1 >= w[1].1));
    // Over the sources' lists it sees their scores: the same items score
    // otherwise than with their order alone.
    let head = engine
        .rerank_head(&hist, &lists, vecrec::config::FusionMethod::Geometric)
        .unwrap();
    let alone = engine
        .rerank_list(&hist, &head.items.iter().map(|e| e.0).collect::<Vec<_>>())
        .unwrap();
    let by = |l: &vecrec::fusion::SourceList| {
        let mut v = l.items.clone();
        v.sort_by_key(|e| e.0);
        v
    };
    assert_ne!(by(&head), by(&alone));
    // Reranking changes the answer, and a zero weight turns it off.
    let opts = RecommendOptions {
        k: 10,
        ..Default::default()
    };
    let with = engine.recommend(UserRef::Id("u0001"), &opts).unwrap();
    let mut off = Engine::open(&s.root, cfg, Some(encoder())).unwrap();
    off.configure(|c| c.rerank.weight = 0.0);
    let without = off.recommend(UserRef::Id("u0001"), &opts).unwrap();
    assert_eq!(with.len(), 10);
    assert_ne!(
        with.iter().map(|s| &s.id).collect::<Vec<_>>(),
        without.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
}

/// A tiny cross-encoder: the logit of a pair is how many times `token` occurs
/// in its second segment (token type 1), through an embedding lookup, so the
/// test can predict every score from the tokenizer alone.
fn tiny_cross_encoder(vocab: usize, token: u32) -> Vec<u8> {
    let mut g = GraphBuilder::new("tiny_cross_encoder");
    let dims = [Dim::Named("batch"), Dim::Named("sequence")];
    let ids = g.input("input_ids", INT64, &dims);
    let mask = g.input("attention_mask", INT64, &dims);
    let types = g.input("token_type_ids", INT64, &dims);
    let mut table = vec![0f32; vocab];
    table[token as usize] = 1.0;
    let table = g.weight("embedding", &[vocab], &table);
    let hit = g.node("Gather", &[&table, &ids], "", &[("axis", Attr::Int(0))]);
    let mask = g.node("Cast", &[&mask], "", &[("to", Attr::Int(FLOAT as i64))]);
    let types = g.node("Cast", &[&types], "", &[("to", Attr::Int(FLOAT as i64))]);
    let x = g.op("Mul", &[&hit, &mask]);
    let x = g.op("Mul", &[&x, &types]);
    let ax = g.ints(&[1]);
    let y = g.node("ReduceSum", &[&x, &ax], "", &[("keepdims", Attr::Int(1))]);
    g.output(&y, "logits", FLOAT, &[Dim::Named("batch"), Dim::Fixed(1)]);
    g.finish("test cross-encoder")
}

#[test]
fn a_user_supplied_cross_encoder_scores_context_and_item_pairs() {
    let s = sample_index();
    let enc_files = vecrec::encoder::EncoderFiles::locate(&Config::default().encoder).unwrap();
    let tok = tokenizers::Tokenizer::from_file(&enc_files.tokenizer).unwrap();
    let target = tok
        .token_to_id("garden")
        .expect("'garden' is in the vocabulary");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cross.onnx");
    std::fs::write(&model, tiny_cross_encoder(tok.get_vocab_size(true), target)).unwrap();

    let cfg = Config {
        rerank: RerankConfig {
            kind: RerankKind::CrossEncoder,
            cross_encoder_model: Some(model.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::open(&s.root, cfg.clone(), Some(encoder())).unwrap();
    assert_eq!(engine.reranker().unwrap().name(), "cross_encoder");
    let u = engine.users().lookup("u0002").unwrap();
    let hist = engine.users().history(u);
    let store = engine.index().store();
    let cands: Vec<u32> = (0..120).collect();
    let rr = engine.rerank_list(&hist, &cands).unwrap();
    // The context is the newest history titles; the item is its text.
    let context = hist
        .iter()
        .rev()
        .take(cfg.rerank.context_items)
        .map(|h| store.title(h.0))
        .collect::<Vec<_>>()
        .join("; ");
    let mut positives = 0;
    for &(i, score) in &rr.items {
        let e = tok
            .encode((context.clone(), store.item(i).text), true)
            .unwrap();
        let want = e
            .get_ids()
            .iter()
            .zip(e.get_type_ids())
            .filter(|(id, t)| **id == target && **t == 1)
            .count() as f32;
        positives += (want > 0.0) as usize;
        assert_eq!(score, want, "item {}", store.external_id(i));
    }
    assert!(positives > 0, "some sample texts mention a garden");
    assert!(rr.items.windows(2).all(|w| w[0].1 >= w[1].1));

    // A model without the inputs a cross-encoder needs is refused at open.
    let mut g = GraphBuilder::new("wrong");
    let x = g.input("x", FLOAT, &[Dim::Named("b")]);
    g.output(&x, "y", FLOAT, &[Dim::Named("b")]);
    std::fs::write(&model, g.finish("wrong")).unwrap();
    let err = Engine::open(&s.root, cfg, Some(encoder())).unwrap_err();
    assert!(err.to_string().contains("input_ids"), "{err}");
}

#[test]
fn an_experiment_arm_reranks_with_its_own_cross_encoder() {
    use vecrec::serving::experiments::{recommend, Experiments};
    let s = sample_index();
    let enc_files = vecrec::encoder::EncoderFiles::locate(&Config::default().encoder).unwrap();
    let tok = tokenizers::Tokenizer::from_file(&enc_files.tokenizer).unwrap();
    let target = tok.token_to_id("garden").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cross.onnx");
    std::fs::write(&model, tiny_cross_encoder(tok.get_vocab_size(true), target)).unwrap();
    let toml = format!(
        r#"
        [[experiments]]
        name = "reranker"
        salt = "s"
        [[experiments.arms]]
        name = "din"
        share = 0.5
        [[experiments.arms]]
        name = "cross"
        share = 0.5
        rerank_kind = "cross_encoder"
        cross_encoder_model = {model:?}
        rerank_weight = 4.0
        "#
    );
    let cfg: Config = toml::from_str(&toml).unwrap();
    let engine = Engine::open(&s.root, cfg.clone(), Some(encoder())).unwrap();
    assert_eq!(engine.reranker().unwrap().name(), "din", "the served kind");
    let experiments = Experiments::new(&cfg, None).unwrap();
    let opts = RecommendOptions {
        k: 10,
        ..Default::default()
    };
    let ids = |arm: &str| -> Vec<String> {
        let plan = experiments.plan("u0002", arm).unwrap().unwrap();
        recommend(&engine, UserRef::Id("u0002"), &opts, Some(&plan), "r1")
            .unwrap()
            .into_iter()
            .map(|s| s.item.id)
            .collect()
    };
    // Each arm serves what an engine configured as that arm serves.
    let mut cross_cfg = Config::default();
    cross_cfg.rerank.kind = RerankKind::CrossEncoder;
    cross_cfg.rerank.cross_encoder_model = Some(model.clone());
    cross_cfg.rerank.weight = 4.0;
    let alone = |c: Config| -> Vec<String> {
        Engine::open(&s.root, c, Some(encoder()))
            .unwrap()
            .recommend(UserRef::Id("u0002"), &opts)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    let (din, cross) = (ids("din"), ids("cross"));
    assert_eq!(din, alone(Config::default()));
    assert_eq!(cross, alone(cross_cfg));
    assert_ne!(din, cross, "the garden counter reorders the head");

    // A missing model refuses the experiments, naming the arm and the key.
    let bad: Config = toml::from_str(&toml.replace("cross.onnx", "missing.onnx")).unwrap();
    let err = Experiments::new(&bad, None).unwrap_err().to_string();
    assert!(
        err.contains("\"cross\"") && err.contains("cross_encoder_model"),
        "{err}"
    );
}
