//! The two-tower user encoder (Covington, Adams & Sargin, "Deep Neural Networks
//! for YouTube Recommendations", RecSys 2016; Yi et al., "Sampling-Bias-Corrected
//! Neural Modeling for Large Corpus Item Recommendations", RecSys 2019).
//!
//! Every item has a feature vector `x` (its BERT vector and its ALS factors,
//! each unit length, concatenated). The item tower is `e = norm(x·W_i)`; the
//! user tower pools the history's features with recency weights
//! `decay^age` over the last `history` items, then `u = norm(relu(h·W₁ + b₁)·W₂ + b₂)`.
//! Training takes (history prefix → next item) pairs from the interactions
//! and minimises the in-batch sampled softmax of `u·e / τ`, with the logQ
//! correction of Yi et al. (each logit minus the log of the item's frequency
//! as a target) so popular items are not over-penalised as negatives; other
//! rows' targets that equal the row's own target are masked out.
//!
//! The item embeddings are served from their own inner-product HNSW index;
//! the user tower is exported to ONNX ([`TwoTower::user_onnx`]) and served
//! through ONNX Runtime like the sentence encoder.

use std::ops::Range;

use half::f16;
use ndarray::{Array1, Array2, ArrayView2, Axis, Slice};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

pub use crate::config::TwoTowerOptions;
use crate::nn::onnx::{Attr, Dim, GraphBuilder, FLOAT};
use crate::nn::{normalize_rows, normalize_rows_backward, Adam, Param};

/// A trained two-tower model.
#[derive(Clone, Debug)]
pub struct TwoTower {
    /// Options it was trained with.
    pub opts: TwoTowerOptions,
    /// Item-feature width.
    pub input: usize,
    item: Param,
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

/// Recency weights of a history (oldest first) as the user tower pools it:
/// the newest `history` items, weight `decay^age`, in history order.
pub fn pooling_weights(len: usize, opts: &TwoTowerOptions) -> (usize, Vec<f32>) {
    let take = len.min(opts.history);
    let start = len - take;
    let w = (0..take)
        .map(|k| opts.decay.powi((take - 1 - k) as i32))
        .collect();
    (start, w)
}

/// The pooled history of every training pair `(user, target position)`,
/// `pairs × d`, pooled once in parallel and kept in half precision: pooling
/// every batch again costs pairs × history × d multiply-adds an epoch (the
/// two-tower stage of a 300k-item build took 221 s that way, 183 s pooling
/// once; one run each), and single precision would take 2.7 GB there
/// instead of 1.3 GB.
fn pooled_pairs(
    pairs: &[(usize, usize)],
    histories: &[Vec<u32>],
    features: &[f32],
    d: usize,
    opts: &TwoTowerOptions,
) -> Vec<f16> {
    let mut pooled = vec![f16::ZERO; pairs.len() * d];
    pooled
        .par_chunks_mut(d.max(1))
        .zip(pairs.par_iter())
        .for_each(|(row, &(u, t))| {
            let (start, w) = pooling_weights(t, opts);
            let h = pool(features, d, &histories[u][start..t], &w);
            row.iter_mut()
                .zip(h)
                .for_each(|(x, v)| *x = f16::from_f32(v));
        });
    pooled
}

/// The pooled history features `Σ wⱼ xⱼ / Σ wⱼ`.
fn pool(features: &[f32], d: usize, items: &[u32], weights: &[f32]) -> Vec<f32> {
    let mut h = vec![0f32; d];
    let total: f32 = weights.iter().sum::<f32>().max(1e-12);
    for (&i, &w) in items.iter().zip(weights) {
        let x = &features[i as usize * d..(i as usize + 1) * d];
        h.iter_mut().zip(x).for_each(|(a, b)| *a += w * b);
    }
    h.iter_mut().for_each(|v| *v /= total);
    h
}

/// Rows in one part of a training batch (see [`TwoTower::backward`]); fixed,
/// not one part per thread, so a model trains the same on every machine.
const PART: usize = 128;

/// One part's share of the loss and the gradients.
struct UserGrads {
    loss: f32,
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
    /// Gradient of every row's item vector (`batch × dim`).
    de: Array2<f32>,
}

struct UserForward {
    a: Array2<f32>,
    u: Array2<f32>,
    norms: Vec<f32>,
}

impl TwoTower {
    fn user_forward(&self, h: &Array2<f32>) -> UserForward {
        let mut a = h.dot(&self.w1.view()) + self.b1.vector();
        a.mapv_inplace(|v| v.max(0.0));
        let mut u = a.dot(&self.w2.view()) + self.b2.vector();
        let norms = normalize_rows(&mut u);
        UserForward { a, u, norms }
    }

    /// The user vector of a history (item numbers, oldest first).
    pub fn user_vector(&self, features: &[f32], history: &[u32]) -> Vec<f32> {
        let (start, w) = pooling_weights(history.len(), &self.opts);
        let h = pool(features, self.input, &history[start..], &w);
        let h = Array2::from_shape_vec((1, self.input), h).expect("shape");
        self.user_forward(&h).u.into_raw_vec_and_offset().0
    }

    /// Item embeddings of feature rows (`n × input` → `n × dim`), unit length.
    pub fn item_vectors(&self, features: &[f32]) -> Vec<f32> {
        let n = features.len() / self.input;
        let x = ndarray::ArrayView2::from_shape((n, self.input), features).expect("shape");
        let mut e = x.dot(&self.item.view());
        normalize_rows(&mut e);
        e.into_raw_vec_and_offset().0
    }

    /// Trains on `histories` (item numbers, oldest first) over item `features`
    /// (`items × d`, row-major). Returns the model and the last epoch's mean loss.
    pub fn train(
        histories: &[Vec<u32>],
        features: &[f32],
        d: usize,
        opts: &TwoTowerOptions,
    ) -> (Self, f32) {
        Self::train_with_progress(histories, features, d, opts, &|_| {})
    }

    /// [`TwoTower::train`], calling `progress` with the epochs done after each one.
    pub fn train_with_progress(
        histories: &[Vec<u32>],
        features: &[f32],
        d: usize,
        opts: &TwoTowerOptions,
        progress: &dyn Fn(usize),
    ) -> (Self, f32) {
        Self::train_split(histories, features, d, d, opts, progress)
    }

    /// [`TwoTower::train_with_progress`] over features whose columns from
    /// `collab_from` on are collaborative (the ALS factors of
    /// [`item_features`]: zero for an item without interactions): with
    /// probability `opts.collab_dropout` a target item's collaborative
    /// columns are zeroed in its item tower, so the tower learns to place an
    /// item from its content alone (DropoutNet, Volkovs et al., NeurIPS 2017).
    pub fn train_split(
        histories: &[Vec<u32>],
        features: &[f32],
        d: usize,
        collab_from: usize,
        opts: &TwoTowerOptions,
        progress: &dyn Fn(usize),
    ) -> (Self, f32) {
        let mut drop_rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0xd0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        let mut model = Self {
            opts: opts.clone(),
            input: d,
            item: Param::glorot(d, opts.dim, &mut rng),
            w1: Param::glorot(d, opts.hidden, &mut rng),
            b1: Param::zeros(1, opts.hidden),
            w2: Param::glorot(opts.hidden, opts.dim, &mut rng),
            b2: Param::zeros(1, opts.dim),
        };
        // Pairs: (user, position of the target), the newest ones of each user.
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for (u, h) in histories.iter().enumerate() {
            let first = h.len().saturating_sub(opts.max_pairs_per_user).max(1);
            pairs.extend((first..h.len()).map(|t| (u, t)));
        }
        if pairs.len() < 2 {
            return (model, 0.0);
        }
        let n_items = features.len() / d;
        let mut freq = vec![0f32; n_items];
        for &(u, t) in &pairs {
            freq[histories[u][t] as usize] += 1.0;
        }
        let logq: Vec<f32> = freq
            .iter()
            .map(|c| (c.max(0.5) / pairs.len() as f32).ln())
            .collect();
        let pooled = pooled_pairs(&pairs, histories, features, d, opts);
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        let mut opt = Adam::new(opts.lr, 1e-4);
        let mut last = 0.0;
        for epoch in 0..opts.epochs {
            order.shuffle(&mut rng);
            let mut total = 0.0;
            let mut batches = 0;
            for chunk in order.chunks(opts.batch.max(2)) {
                if chunk.len() < 2 {
                    continue;
                }
                let targets: Vec<u32> = chunk
                    .iter()
                    .map(|&k| histories[pairs[k].0][pairs[k].1])
                    .collect();
                let h = Array2::from_shape_fn((chunk.len(), d), |(r, c)| {
                    pooled[chunk[r] * d + c].to_f32()
                });
                let dropped: Vec<usize> = if opts.collab_dropout > 0.0 && collab_from < d {
                    chunk
                        .iter()
                        .map(|_| {
                            if drop_rng.gen::<f32>() < opts.collab_dropout {
                                collab_from
                            } else {
                                d
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                total += model.step(&h, &targets, &dropped, features, &logq, &mut opt);
                batches += 1;
            }
            last = total / batches.max(1) as f32;
            progress(epoch + 1);
        }
        (model, last)
    }

    fn params_mut(&mut self) -> [&mut Param; 5] {
        [
            &mut self.item,
            &mut self.w1,
            &mut self.b1,
            &mut self.w2,
            &mut self.b2,
        ]
    }

    /// One optimisation step on a batch; returns its loss.
    fn step(
        &mut self,
        h: &Array2<f32>,
        targets: &[u32],
        keep: &[usize],
        features: &[f32],
        logq: &[f32],
        opt: &mut Adam,
    ) -> f32 {
        let loss = self.backward(h, targets, keep, features, logq, PART);
        opt.step(&mut self.params_mut());
        loss
    }

    /// The loss of a batch (`h`: the pooled history of each row, `targets`:
    /// its target item); leaves every parameter's gradient in `Param::g`.
    ///
    /// Rows run in parts of `part` ([`PART`] in training) in parallel: the item tower and the user
    /// tower are row by row, and the in-batch softmax of a row needs only its
    /// own user vector and every row's item vector, so each part computes its
    /// rows' softmax, its share of every gradient and its share of the item
    /// vectors' gradient; the shares are summed in part order.
    fn backward(
        &mut self,
        h: &Array2<f32>,
        targets: &[u32],
        keep: &[usize],
        features: &[f32],
        logq: &[f32],
        part: usize,
    ) -> f32 {
        let b = h.nrows();
        let d = self.input;
        let tau = self.opts.temperature;
        let part = part.max(1);
        let ranges: Vec<Range<usize>> = (0..b)
            .step_by(part)
            .map(|lo| lo..(lo + part).min(b))
            .collect();
        // Item tower, forward.
        let items: Vec<(Array2<f32>, Array2<f32>, Vec<f32>)> = ranges
            .par_iter()
            .map(|rows| {
                // A row's columns from `keep[row]` on are zeroed (dropout).
                let x = Array2::from_shape_fn((rows.len(), d), |(r, c)| {
                    if keep.get(rows.start + r).is_some_and(|&k| c >= k) {
                        0.0
                    } else {
                        features[targets[rows.start + r] as usize * d + c]
                    }
                });
                let mut e = x.dot(&self.item.view());
                let norms = normalize_rows(&mut e);
                (x, e, norms)
            })
            .collect();
        let views: Vec<ArrayView2<'_, f32>> = items.iter().map(|x| x.1.view()).collect();
        let e = ndarray::concatenate(Axis(0), &views).expect("parts share the width");
        // User tower, softmax and the user tower's backward, per part.
        let parts: Vec<UserGrads> = ranges
            .par_iter()
            .map(|rows| {
                let hp = h.slice_axis(Axis(0), Slice::from(rows.clone())).to_owned();
                let fw = self.user_forward(&hp);
                let mut logits = fw.u.dot(&e.t()) / tau;
                let mut loss = 0.0;
                for (r, mut row) in logits.rows_mut().into_iter().enumerate() {
                    let own = rows.start + r;
                    for (c, v) in row.iter_mut().enumerate() {
                        if c != own && targets[own] == targets[c] {
                            *v = f32::NEG_INFINITY;
                        } else {
                            *v -= logq[targets[c] as usize];
                        }
                    }
                    // Softmax; loss = −log p(own target).
                    let m = row.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    row.mapv_inplace(|v| (v - m).exp());
                    let z = row.sum();
                    row.mapv_inplace(|v| v / z);
                    loss -= row[own].max(1e-30).ln();
                    row[own] -= 1.0;
                }
                let ds = logits / b as f32;
                let du = ds.dot(&e) / tau;
                let de = ds.t().dot(&fw.u) / tau;
                let d_out = normalize_rows_backward(&fw.u, &fw.norms, &du);
                let w2 = fw.a.t().dot(&d_out);
                let b2 = d_out.sum_axis(Axis(0));
                let mut da = d_out.dot(&self.w2.view().t());
                da.zip_mut_with(&fw.a, |g, a| {
                    if *a <= 0.0 {
                        *g = 0.0
                    }
                });
                UserGrads {
                    loss,
                    w1: hp.t().dot(&da),
                    b1: da.sum_axis(Axis(0)),
                    w2,
                    b2,
                    de,
                }
            })
            .collect();
        let sum = parts.into_iter().reduce(|mut acc, p| {
            acc.loss += p.loss;
            acc.w1 += &p.w1;
            acc.b1 += &p.b1;
            acc.w2 += &p.w2;
            acc.b2 += &p.b2;
            acc.de += &p.de;
            acc
        });
        let sum = sum.expect("a batch has rows");
        self.w1.grad_mut().assign(&sum.w1);
        self.b1.g = sum.b1.to_vec();
        self.w2.grad_mut().assign(&sum.w2);
        self.b2.g = sum.b2.to_vec();
        // Item tower, backward.
        let item_parts: Vec<Array2<f32>> = ranges
            .par_iter()
            .zip(&items)
            .map(|(rows, (x, e, norms))| {
                let de = sum.de.slice_axis(Axis(0), Slice::from(rows.clone()));
                x.t()
                    .dot(&normalize_rows_backward(e, norms, &de.to_owned()))
            })
            .collect();
        let mut item = self.item.grad_mut();
        item.fill(0.0);
        for g in &item_parts {
            item += g;
        }
        sum.loss / b as f32
    }

    /// The user tower as an ONNX model: inputs `history` (`batch × len ×
    /// input` item features) and `weights` (`batch × len`, the pooling weights,
    /// zero for padding), output `user_vector` (`batch × dim`, unit length).
    pub fn user_onnx(&self) -> Vec<u8> {
        let (d, hd, e) = (self.input, self.opts.hidden, self.opts.dim);
        let mut g = GraphBuilder::new("vecrec_user_tower");
        let hist = g.input(
            "history",
            FLOAT,
            &[Dim::Named("batch"), Dim::Named("len"), Dim::Fixed(d)],
        );
        let wts = g.input("weights", FLOAT, &[Dim::Named("batch"), Dim::Named("len")]);
        let ax1 = g.ints(&[1]);
        let w3 = g.op("Unsqueeze", &[&wts, &ax1]);
        let summed = g.op("MatMul", &[&w3, &hist]);
        let summed = g.op("Squeeze", &[&summed, &ax1]);
        let total = g.node(
            "ReduceSum",
            &[&wts, &ax1],
            "",
            &[("keepdims", Attr::Int(1))],
        );
        let eps = g.scalar(1e-12);
        let total = g.op("Max", &[&total, &eps]);
        let h = g.op("Div", &[&summed, &total]);
        let w1 = g.weight("user_w1", &[d, hd], &self.w1.w);
        let b1 = g.weight("user_b1", &[hd], &self.b1.w);
        let w2 = g.weight("user_w2", &[hd, e], &self.w2.w);
        let b2 = g.weight("user_b2", &[e], &self.b2.w);
        let a = g.op("MatMul", &[&h, &w1]);
        let a = g.op("Add", &[&a, &b1]);
        let a = g.op("Relu", &[&a]);
        let o = g.op("MatMul", &[&a, &w2]);
        let o = g.op("Add", &[&o, &b2]);
        let sq = g.op("Mul", &[&o, &o]);
        let ss = g.node("ReduceSum", &[&sq, &ax1], "", &[("keepdims", Attr::Int(1))]);
        let tiny = g.scalar(1e-24);
        let ss = g.op("Max", &[&ss, &tiny]);
        let n = g.op("Sqrt", &[&ss]);
        let u = g.op("Div", &[&o, &n]);
        g.output(
            &u,
            "user_vector",
            FLOAT,
            &[Dim::Named("batch"), Dim::Fixed(e)],
        );
        g.finish("vecrec two-tower user encoder")
    }

    /// The recall@k of the model on held-out next items, for tests and logs:
    /// the fraction of `(history, next)` pairs whose next item is among the `k`
    /// highest-scoring items.
    pub fn hit_rate(&self, features: &[f32], pairs: &[(Vec<u32>, u32)], k: usize) -> f64 {
        let items = self.item_vectors(features);
        let e =
            ndarray::ArrayView2::from_shape((items.len() / self.opts.dim, self.opts.dim), &items)
                .expect("shape");
        let hits = pairs
            .par_iter()
            .filter(|(h, next)| {
                let u = self.user_vector(features, h);
                let scores = e.dot(&ndarray::ArrayView1::from(&u[..]));
                let mine = scores[*next as usize];
                scores.iter().filter(|&&s| s > mine).count() < k
            })
            .count();
        hits as f64 / pairs.len().max(1) as f64
    }
}

/// The item features of the two towers: each item's content vector and ALS
/// factors, each scaled to unit length, concatenated (`items × (dc + df)`).
pub fn item_features(content: &[f32], dc: usize, als: &[f32], df: usize) -> Vec<f32> {
    let n = content.len() / dc.max(1);
    let mut out = Vec::with_capacity(n * (dc + df));
    for i in 0..n {
        push_item_features(
            &content[i * dc..(i + 1) * dc],
            &als[i * df..(i + 1) * df],
            &mut out,
        );
    }
    out
}

/// One item's row of [`item_features`] from its content vector and ALS
/// factors, appended to `out` (the same bits: a server makes the rows of a
/// history's items when it needs them rather than keep every item's).
pub fn push_item_features(content: &[f32], als: &[f32], out: &mut Vec<f32>) {
    for part in [content, als] {
        let norm = part.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.extend(part.iter().map(|v| v / norm));
        } else {
            out.extend(part.iter().map(|_| 0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items in 4 clusters; each user walks inside one cluster, so the next
    /// item is predictable from the history's cluster.
    fn planted() -> (Vec<Vec<u32>>, Vec<f32>, usize) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (n, d) = (80usize, 8usize);
        let mut features = vec![0f32; n * d];
        for i in 0..n {
            features[i * d + i % 4] = 1.0;
            for k in 4..d {
                features[i * d + k] = rng.gen_range(-0.3..0.3);
            }
        }
        let histories = (0..200)
            .map(|u| {
                let c = u % 4;
                (0..12)
                    .map(|_| (rng.gen_range(0..20) * 4 + c) as u32)
                    .collect()
            })
            .collect();
        (histories, features, d)
    }

    /// An untrained small model (dim 4, hidden 6) and a batch of six users'
    /// pooled histories (five items, recency-weighted) with their next
    /// items, no logQ correction.
    fn small_batch(
        histories: &[Vec<u32>],
        features: &[f32],
        d: usize,
    ) -> (TwoTower, Array2<f32>, Vec<u32>, Vec<f32>) {
        let opts = TwoTowerOptions {
            dim: 4,
            hidden: 6,
            epochs: 0,
            ..Default::default()
        };
        let (model, _) = TwoTower::train(histories, features, d, &opts);
        let pooled: Vec<f32> = (0..6)
            .flat_map(|u| pool(features, d, &histories[u][..5], &[1.0, 0.9, 0.8, 0.7, 0.6]))
            .collect();
        let h = Array2::from_shape_vec((6, d), pooled).unwrap();
        let targets: Vec<u32> = (0..6).map(|u| histories[u][5]).collect();
        (model, h, targets, vec![0.0f32; features.len() / d])
    }

    #[test]
    fn learns_a_planted_cluster_structure() {
        let (histories, features, d) = planted();
        let opts = TwoTowerOptions {
            dim: 8,
            hidden: 16,
            epochs: 30,
            batch: 64,
            lr: 0.01,
            ..Default::default()
        };
        let (model, loss) = TwoTower::train(&histories, &features, d, &opts);
        assert!(loss.is_finite());
        let pairs: Vec<(Vec<u32>, u32)> = (0..40)
            .map(|u| (histories[u][..10].to_vec(), ((u % 4) + 4 * 7) as u32))
            .collect();
        // 20 of 80 items share the cluster: a random ranking hits the top 20
        // a quarter of the time; a model that learnt the clusters always does.
        let hr = model.hit_rate(&features, &pairs, 20);
        assert!(hr > 0.9, "hit rate {hr}");
    }

    /// The dropout zeroes a target's collaborative columns in the item
    /// tower: their rows of the item weights get no gradient from it, and a
    /// model trained with it places items from their content columns alone.
    #[test]
    fn collaborative_dropout_trains_the_tower_on_content_alone() {
        let (histories, mut features, d) = planted();
        let dim = 4;
        let (mut model, h, targets, logq) = small_batch(&histories, &features, d);
        model.backward(&h, &targets, &[4; 6], &features, &logq, 6);
        let g = &model.item.g;
        assert!(g[..4 * dim].iter().any(|x| x.abs() > 1e-6));
        assert!(g[4 * dim..].iter().all(|&x| x == 0.0));
        // Without dropout the same columns do get a gradient.
        model.backward(&h, &targets, &[], &features, &logq, 6);
        assert!(model.item.g[4 * dim..].iter().any(|x| x.abs() > 1e-6));

        // Columns 4.. carry the clusters too, and the model is trained to
        // do without them: new items (those columns zero) still land in
        // their cluster.
        for i in 0..features.len() / d {
            features[i * d + 4 + i % 4] += 1.0;
        }
        let opts = TwoTowerOptions {
            dim: 8,
            hidden: 16,
            epochs: 30,
            batch: 64,
            lr: 0.01,
            collab_dropout: 0.8,
            ..Default::default()
        };
        let (model, _) = TwoTower::train_split(&histories, &features, d, 4, &opts, &|_| {});
        let mut cold = features.clone();
        for i in 0..cold.len() / d {
            cold[i * d + 4..(i + 1) * d]
                .iter_mut()
                .for_each(|x| *x = 0.0);
        }
        let items = model.item_vectors(&cold);
        let pairs = (0..40).filter(|u| {
            let user = model.user_vector(&features, &histories[*u][..10]);
            let c = u % 4;
            // The best-scored new item is of the user's cluster.
            let best = (0..80)
                .max_by(|&a, &b| {
                    let s = |i: usize| -> f32 {
                        items[i * 8..(i + 1) * 8]
                            .iter()
                            .zip(&user)
                            .map(|(x, y)| x * y)
                            .sum()
                    };
                    s(a).total_cmp(&s(b))
                })
                .unwrap();
            best % 4 == c
        });
        let hits = pairs.count();
        assert!(hits >= 36, "{hits} of 40 users");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (histories, features, d) = planted();
        let (mut model, h, targets, logq) = small_batch(&histories, &features, d);
        // Positive biases keep every hidden unit active and every output away
        // from the origin, where the normalisation is not differentiable.
        model.b1.w.iter_mut().for_each(|b| *b = 0.1);
        model.b2.w = vec![0.3, -0.2, 0.25, 0.1];
        let loss_at = |m: &TwoTower| {
            let mut c = m.clone();
            c.backward(&h, &targets, &[], &features, &logq, 6) as f64
        };
        let grads = |part: usize| -> (f32, Vec<Vec<f32>>) {
            let mut c = model.clone();
            let loss = c.backward(&h, &targets, &[], &features, &logq, part);
            (loss, c.params_mut().iter().map(|p| p.g.clone()).collect())
        };
        let (loss, analytic) = grads(6);
        // In parts of 2 or 4 rows (the parallel path training takes), the
        // same loss and gradients up to the order of the sums.
        for part in [2, 4] {
            let (l, g) = grads(part);
            assert!(
                (l - loss).abs() < 1e-6,
                "part {part}: loss {l} against {loss}"
            );
            for (p, (a, b)) in analytic.iter().zip(&g).enumerate() {
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() < 1e-6 + 1e-4 * x.abs(),
                        "part {part}, param {p}: {y} against {x}"
                    );
                }
            }
        }
        crate::nn::assert_finite_differences(
            &mut model,
            |m| m.params_mut().into_iter().collect(),
            &[(0, 3), (1, 5), (2, 1), (3, 2), (4, 0)],
            &analytic,
            loss_at,
        );
    }
}
