//! Unit tests of the cross-attention reranker: gradients against finite
//! differences, ranking on a toy catalogue, AUC.

use super::*;

fn toy() -> (Vec<Vec<u32>>, Vec<f32>, usize, Vec<f32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let (n, e) = (60usize, 6usize);
    let mut emb = vec![0f32; n * e];
    for i in 0..n {
        emb[i * e + i % 3] = 1.0;
        for k in 3..e {
            emb[i * e + k] = rng.gen_range(-0.2..0.2);
        }
    }
    // Each user's next item is in the cluster of their newest item.
    let histories = (0..150)
        .map(|_| {
            let mut c = rng.gen_range(0..3);
            (0..10)
                .map(|_| {
                    if rng.gen_bool(0.2) {
                        c = rng.gen_range(0..3);
                    }
                    (rng.gen_range(0..20) * 3 + c) as u32
                })
                .collect()
        })
        .collect();
    let pop = (0..n).map(|i| (i % 7) as f32).collect();
    (histories, emb, e, pop)
}

/// A small reranker for the gradient checks.
fn small() -> DinOptions {
    DinOptions {
        attention: 4,
        hidden: 5,
        history: 4,
        ..Default::default()
    }
}

#[test]
fn a_batch_in_parts_has_the_whole_batchs_gradient() {
    let (histories, emb, e, pop) = toy();
    let opts = small();
    let model = Din::new(e, &opts);
    let chunk: Vec<(usize, usize, u32, f32)> = (0..7)
        .map(|r| (r, 2 + r % 3, (r * 4 + 1) as u32, (r % 2) as f32))
        .collect();
    let grads = |part: usize| -> (f32, Vec<Vec<f32>>) {
        let mut c = model.clone();
        let loss = c.parted_backward(&chunk, &histories, &emb, e, &pop, part);
        (loss, c.params_mut().iter().map(|p| p.g.clone()).collect())
    };
    let (loss, whole) = grads(chunk.len());
    assert!(whole.iter().flatten().any(|g| g.abs() > 1e-6));
    // Parts of unequal sizes (3 + 3 + 1, 2 + 2 + 2 + 1) are weighted by size.
    for part in [2, 3] {
        let (l, g) = grads(part);
        assert!(
            (l - loss).abs() < 1e-6,
            "part {part}: loss {l} against {loss}"
        );
        for (p, (a, b)) in whole.iter().zip(&g).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() < 1e-6 + 1e-4 * x.abs(),
                    "part {part}, param {p}: {y} against {x}"
                );
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let (histories, emb, e, pop) = toy();
    let opts = small();
    let mut model = Din::new(e, &opts);
    // Non-zero recency biases so their gradient is exercised too.
    model.pos.w = vec![0.3, -0.2, 0.1, 0.05];
    let l = opts.history;
    let items: Vec<u32> = vec![1, 5, 9, 13];
    let mut hist = Array2::zeros((items.len() * l, e));
    let mut mask = vec![0f32; items.len() * l];
    for r in 0..items.len() {
        let (h, m) = history_slots(&emb, e, &histories[r][..2 + r], l);
        hist.slice_axis_mut(Axis(0), Slice::from(r * l..(r + 1) * l))
            .assign(&h);
        mask[r * l..(r + 1) * l].copy_from_slice(&m);
    }
    let batch = Batch {
        history: hist,
        mask,
        candidates: gather(&emb, e, &items),
        features: features(&pop, &items),
    };
    let labels = [1.0, 0.0, 1.0, 0.0];
    let probes = [
        (0, 2),
        (1, 7),
        (2, 3),
        (3, 1),
        (4, 10),
        (5, 2),
        (6, 3),
        (7, 0),
    ];
    assert_gradients(&mut model, &probes, &|m| m.backward(&batch, &labels));
}

/// Checks the gradients `loss` leaves in the parameters (by index, weight)
/// against central finite differences of the loss it returns; returns the
/// analytic gradients.
fn assert_gradients(
    model: &mut Din,
    probes: &[(usize, usize)],
    loss: &dyn Fn(&mut Din) -> f32,
) -> Vec<Vec<f32>> {
    let mut c = model.clone();
    loss(&mut c);
    let analytic: Vec<Vec<f32>> = c.params_mut().iter().map(|p| p.g.clone()).collect();
    for &(p, k) in probes {
        let eps = 1e-2f32;
        let orig = model.params_mut()[p].w[k];
        model.params_mut()[p].w[k] = orig + eps;
        let up = loss(&mut model.clone()) as f64;
        model.params_mut()[p].w[k] = orig - eps;
        let down = loss(&mut model.clone()) as f64;
        model.params_mut()[p].w[k] = orig;
        let fd = (up - down) / (2.0 * eps as f64);
        let an = analytic[p][k] as f64;
        assert!(
            (fd - an).abs() < 1e-3 + 0.05 * an.abs(),
            "param {p}[{k}]: finite difference {fd}, analytic {an}"
        );
    }
    analytic
}

#[test]
fn learns_to_rank_the_next_items_cluster_first() {
    let (histories, emb, e, pop) = toy();
    let (train, held) = histories.split_at(120);
    let opts = DinOptions {
        attention: 8,
        hidden: 16,
        history: 5,
        epochs: 15,
        batch: 128,
        lr: 0.01,
        ..Default::default()
    };
    let (model, loss) = Din::train(train, &emb, e, &pop, None, &opts);
    assert!(loss.is_finite());
    // Held-out users: an item of the newest item's cluster vs one of another.
    let examples: Vec<(Vec<u32>, u32, bool)> = held
        .iter()
        .flat_map(|h| {
            let c = h[8] % 3;
            [
                (h[..9].to_vec(), 30 + c, true),
                (h[..9].to_vec(), 30 + (c + 1) % 3, false),
            ]
        })
        .collect();
    let a = model.auc(&emb, &pop, &examples);
    assert!(a > 0.8, "AUC {a}");
}

#[test]
fn auc_of_hand_made_scores() {
    assert_eq!(auc(&[(0.1, false), (0.9, true)]), 1.0);
    assert_eq!(auc(&[(0.9, false), (0.1, true)]), 0.0);
    assert_eq!(auc(&[(0.5, false), (0.5, true)]), 0.5);
    let v = auc(&[(0.1, false), (0.4, true), (0.5, false), (0.8, true)]);
    assert!((v - 0.75).abs() < 1e-12);
}

/// A head of `n` candidates for one history, with random features and the
/// given labels.
fn toy_head(history: &[u32], n: usize, f: usize, positives: &[usize]) -> HeadExample {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    HeadExample {
        history: history.to_vec(),
        candidates: (0..n as u32).map(|i| i * 2 + 1).collect(),
        features: Array2::from_shape_fn((n, f), |_| rng.gen_range(0.0..1.0)),
        labels: (0..n)
            .map(|r| f32::from(u8::from(positives.contains(&r))))
            .collect(),
    }
}

#[test]
fn the_listwise_gradient_matches_finite_differences() {
    let (histories, emb, e, _) = toy();
    let opts = DinOptions {
        head_pointwise: 0.5,
        ..small()
    };
    let f = 3;
    let mut model = Din::with_features(e, f, &opts);
    model.pos.w = vec![0.3, -0.2, 0.1, 0.05];
    let head = toy_head(&histories[3][..3], 6, f, &[1, 4]);
    let batch = head.batch(&emb, e, opts.history);
    let loss = model.clone().backward_list(&batch, &head.labels);
    // Two positives of six: the loss is at least ln 3 (the labels' entropy).
    assert!(loss >= 3f32.ln() - 1e-5, "loss {loss}");
    let probes = [
        (0, 2),
        (1, 7),
        (2, 3),
        (3, 1),
        (4, 10),
        (4, 3 * opts.attention + 1),
        (5, 2),
        (6, 3),
    ];
    let analytic = assert_gradients(&mut model, &probes, &|m| {
        m.backward_list(&batch, &head.labels)
    });
    // The bias moves every logit alike: the softmax alone does not see it.
    let mut listwise = Din::with_features(
        e,
        f,
        &DinOptions {
            head_pointwise: 0.0,
            ..small()
        },
    );
    listwise.backward_list(&batch, &head.labels);
    assert!(listwise.b2.g[0].abs() < 1e-6, "{}", listwise.b2.g[0]);
    assert!(analytic[7][0].abs() > 1e-4, "{}", analytic[7][0]);
    // A head without a positive teaches nothing.
    let none = toy_head(&histories[3][..3], 6, f, &[]);
    let mut c = model.clone();
    assert_eq!(
        c.backward_list(&none.batch(&emb, e, opts.history), &none.labels),
        0.0
    );
    assert!(c.params_mut().iter().all(|p| p.g.iter().all(|&g| g == 0.0)));
}

#[test]
fn trained_on_heads_it_learns_which_feature_marks_the_positives() {
    let (histories, emb, e, _) = toy();
    let f = 2;
    // The positive is the candidate whose first feature is largest; the
    // second feature is noise, and the head order says nothing.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let heads: Vec<HeadExample> = (0..80)
        .map(|u| {
            let n = 12;
            let features = Array2::from_shape_fn((n, f), |_| rng.gen_range(0.0..1.0f32));
            let best = (0..n)
                .max_by(|&a, &b| features[[a, 0]].total_cmp(&features[[b, 0]]))
                .unwrap();
            HeadExample {
                history: histories[u][..5].to_vec(),
                candidates: (0..n as u32).map(|i| (i * 5 + u as u32) % 60).collect(),
                features,
                labels: (0..n).map(|r| f32::from(u8::from(r == best))).collect(),
            }
        })
        .collect();
    let (train, held) = heads.split_at(60);
    let opts = DinOptions {
        attention: 4,
        hidden: 8,
        history: 4,
        head_epochs: 30,
        lr: 0.01,
        ..Default::default()
    };
    let (model, loss) = Din::train_heads(train, &emb, e, &opts, &|_| {});
    assert_eq!(model.features, f);
    assert!(loss.is_finite() && loss < 12f32.ln(), "loss {loss}");
    let top1 = held
        .iter()
        .filter(|h| {
            let s = model.score(&h.batch(&emb, e, opts.history));
            let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
            h.labels[best] > 0.0
        })
        .count();
    // Chance is 1 in 12.
    assert!(top1 >= 14, "{top1} of {} held-out heads", held.len());
}

#[test]
fn head_features_follow_the_sources_lists() {
    let sources: Vec<String> = vec!["ease".into(), "als".into()];
    let lists = vec![
        SourceList {
            name: "ease",
            weight: 1.0,
            items: vec![(7, 2.0), (3, 1.0), (5, 0.0)],
        },
        // A list of weight 0 is not part of the fusion: absent.
        SourceList {
            name: "als",
            weight: 0.0,
            items: vec![(3, 9.0)],
        },
    ];
    let head = [(3u32, 0.9f32), (7, 0.5), (9, 0.1)];
    let pop = vec![0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let x = head_features(&sources, &lists, &head, &pop, 9);
    let names = head_feature_names(&sources);
    assert_eq!(x.ncols(), names.len());
    assert_eq!(
        names[..4],
        ["ease_score", "ease_rrank", "als_score", "als_rrank"]
    );
    // Item 3: second in EASE's list (min-max 0.5, rank 2), absent from ALS.
    assert_eq!(x.row(0).to_vec()[..4], [0.5, 0.5, 0.0, 0.0]);
    // Item 7: EASE's first.
    assert_eq!(x.row(1).to_vec()[..2], [1.0, 1.0]);
    // Item 9: in no list.
    assert_eq!(x.row(2).to_vec()[..4], [0.0; 4]);
    // Fused min-max score and rank in the head.
    for (r, want) in [1.0, 0.5, 0.0].into_iter().enumerate() {
        assert!((x[[r, 4]] - want).abs() < 1e-6, "{}", x[[r, 4]]);
    }
    assert_eq!([x[[0, 5]], x[[1, 5]]], [1.0, 0.5]);
    // Popularity scaled by the most popular item's; history length log-scaled.
    assert!((x[[0, 6]] - 1.0).abs() < 1e-6 && x[[1, 6]] == 0.0);
    assert!((x[[0, 7]] - 10f32.ln() / 1001f32.ln()).abs() < 1e-6);
}

proptest::proptest! {
    /// The source features of every head row are those of the map
    /// `fusion::features` builds over the lists of positive weight (as the
    /// function computed them before it wrote the head's rows directly),
    /// with items twice in a list, twice in the head, in no list, and two
    /// lists of one name (the first counts).
    #[test]
    fn head_rows_match_the_feature_map(
        a in proptest::collection::vec((0u32..30, -5i32..5), 0..20),
        b in proptest::collection::vec((0u32..30, -5i32..5), 0..20),
        c in proptest::collection::vec((0u32..30, -5i32..5), 0..20),
        wb in 0u8..2,
        head in proptest::collection::vec(0u32..35, 0..25),
    ) {
        let list = |name: &'static str, weight: f32, items: &[(u32, i32)]| SourceList {
            name,
            weight,
            items: items.iter().map(|&(i, s)| (i, s as f32)).collect(),
        };
        let lists = vec![
            list("ease", 1.0, &a),
            list("als", wb as f32, &b),
            list("ease", 1.0, &c),
        ];
        let sources: Vec<String> = vec!["ease".into(), "als".into()];
        let head: Vec<(u32, f32)> = head.iter().enumerate().map(|(r, &i)| (i, -(r as f32))).collect();
        let x = head_features(&sources, &lists, &head, &[1.0; 35], 4);
        let positive: Vec<SourceList> = lists.iter().filter(|l| l.weight > 0.0).cloned().collect();
        let map = crate::fusion::features(&sources, &positive);
        for (r, (item, _)) in head.iter().enumerate() {
            let want = map.get(item).cloned().unwrap_or_else(|| vec![0.0; 4]);
            proptest::prop_assert_eq!(x.row(r).to_vec()[..4].to_vec(), want);
        }
    }
}
