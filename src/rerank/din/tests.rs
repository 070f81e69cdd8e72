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
    let mut c = model.clone();
    c.backward(&batch, &labels);
    let analytic: Vec<Vec<f32>> = c.params_mut().iter().map(|p| p.g.clone()).collect();
    for (p, k) in [
        (0usize, 2usize),
        (1, 7),
        (2, 3),
        (3, 1),
        (4, 10),
        (5, 2),
        (6, 3),
        (7, 0),
    ] {
        let eps = 1e-2f32;
        let orig = model.params_mut()[p].w[k];
        model.params_mut()[p].w[k] = orig + eps;
        let up = model.clone().backward(&batch, &labels) as f64;
        model.params_mut()[p].w[k] = orig - eps;
        let down = model.clone().backward(&batch, &labels) as f64;
        model.params_mut()[p].w[k] = orig;
        let fd = (up - down) / (2.0 * eps as f64);
        let an = analytic[p][k] as f64;
        assert!(
            (fd - an).abs() < 1e-3 + 0.05 * an.abs(),
            "param {p}[{k}]: finite difference {fd}, analytic {an}"
        );
    }
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
