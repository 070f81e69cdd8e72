//! The cross-attention reranker: target attention of the candidate over the
//! user's recent history, as in DIN (Zhou et al., "Deep Interest Network for
//! Click-Through Rate Prediction", KDD 2018), with the scaled dot-product form
//! of a transformer block (Vaswani et al., NeurIPS 2017).
//!
//! Items are represented by their two-tower embeddings `e` (unit length). For a
//! candidate `c` and the newest `L` history items `h₁…h_L` (newest first):
//!
//! ```text
//! q = e_c·W_q    kⱼ = e_hⱼ·W_k    vⱼ = e_hⱼ·W_v
//! sⱼ = q·kⱼ/√A + pⱼ + (maskⱼ − 1)·10⁹          (pⱼ: learned recency bias)
//! a = softmax(s)    p = Σ aⱼ vⱼ
//! z = [p, q, p⊙q, features]    logit = relu(z·W₁ + b₁)·W₂ + b₂
//! ```
//!
//! `features` are per-candidate numbers ([`FEATURES`]). Training takes every
//! user's (history prefix → next item) pairs as positives and samples
//! negatives half by popularity^0.75 and half uniformly from items the user
//! has not seen, minimising the logistic loss with Adam. The model is exported
//! to ONNX ([`Din::onnx`]) and served through ONNX Runtime; the tests prove the
//! Rust forward pass and the served model agree within 1e-4.

use ndarray::{Array2, Axis, Slice};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub use crate::config::DinOptions;
use crate::fusion::SourceList;
use crate::ids::IdMap;
use crate::nn::onnx::{Attr, Dim, GraphBuilder, FLOAT};
use crate::nn::{Adam, Param};

/// Examples in one part of a training batch. A batch's parts run their
/// forward and backward passes in parallel and their gradients are averaged
/// by size (the loss is a mean over independent examples, so this is the
/// batch's gradient up to the order of the sums). The part size is fixed,
/// not one part per thread, so a model trains the same on every machine.
const PART: usize = 128;

/// Names of the per-candidate features, in input order.
pub const FEATURES: [&str; 1] = ["log_popularity"];

/// A trained reranker.
#[derive(Clone, Debug)]
pub struct Din {
    /// Options it was trained with.
    pub opts: DinOptions,
    /// Item-embedding width E.
    pub embed: usize,
    /// Per-candidate features F ([`FEATURES`] for a model trained on
    /// sequences, [`head_feature_names`] for one trained on fused heads).
    pub features: usize,
    wq: Param,
    wk: Param,
    wv: Param,
    pos: Param,
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

/// One batch of reranker inputs. Histories are `hb × L` slots (newest first,
/// zero-padded, `mask` 0 for padding); `hb` is 1 (one history shared by every
/// candidate, as when serving) or the number of candidates.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `(hb·L) × E` history embeddings.
    pub history: Array2<f32>,
    /// `hb·L` mask values.
    pub mask: Vec<f32>,
    /// `b × E` candidate embeddings.
    pub candidates: Array2<f32>,
    /// `b × F` features.
    pub features: Array2<f32>,
}

struct Forward {
    q: Array2<f32>,
    k: Array2<f32>,
    v: Array2<f32>,
    att: Vec<f32>,
    pooled: Array2<f32>,
    z: Array2<f32>,
    hidden: Array2<f32>,
    logits: Vec<f32>,
}

/// The per-candidate features: log popularity scaled to [0, 1].
pub fn features(popularity: &[f32], items: &[u32]) -> Array2<f32> {
    let max = popularity.iter().fold(0f32, |a, &b| a.max(b));
    let scale = (1.0 + max).ln().max(1e-6);
    Array2::from_shape_fn((items.len(), FEATURES.len()), |(r, _)| {
        (1.0 + popularity[items[r] as usize]).ln() / scale
    })
}

/// History slots of a history (item numbers, oldest first): the newest `l`
/// items, newest first, as (`l × E` embeddings, mask).
pub fn history_slots(emb: &[f32], e: usize, history: &[u32], l: usize) -> (Array2<f32>, Vec<f32>) {
    let mut h = Array2::zeros((l, e));
    let mut mask = vec![0f32; l];
    for (slot, &i) in history.iter().rev().take(l).enumerate() {
        h.row_mut(slot).assign(&ndarray::ArrayView1::from(
            &emb[i as usize * e..(i as usize + 1) * e],
        ));
        mask[slot] = 1.0;
    }
    (h, mask)
}

/// Rows of `emb` for `items`.
pub fn gather(emb: &[f32], e: usize, items: &[u32]) -> Array2<f32> {
    Array2::from_shape_fn((items.len(), e), |(r, c)| emb[items[r] as usize * e + c])
}

/// The features of a head reranker besides the sources' own
/// ([`crate::fusion::FEATURES_PER_SOURCE`] per source: min-max score and
/// reciprocal rank in that source's list, 0 when it did not propose the
/// item): the fused score (min-max over the head), the reciprocal rank in the
/// head, the item's log popularity (scaled by the most popular item's) and
/// the log of the history's length (scaled by log 1001, capped at 1).
pub const HEAD_FEATURES: [&str; 4] = [
    "fused_score",
    "fused_rrank",
    "log_popularity",
    "log_history",
];

/// The feature names of a head reranker over `sources`, in input order.
pub fn head_feature_names(sources: &[String]) -> Vec<String> {
    sources
        .iter()
        .flat_map(|s| [format!("{s}_score"), format!("{s}_rrank")])
        .chain(HEAD_FEATURES.iter().map(|f| (*f).to_owned()))
        .collect()
}

/// The features of every item of `head` (items with their fused scores,
/// best first): what `lists` (the sources' candidate lists, by name) said of
/// it for each of `sources` (lists of weight 0 count as absent), then
/// [`HEAD_FEATURES`].
pub fn head_features(
    sources: &[String],
    lists: &[SourceList],
    head: &[(u32, f32)],
    popularity: &[f32],
    history_len: usize,
) -> Array2<f32> {
    let per = crate::fusion::FEATURES_PER_SOURCE;
    let width = sources.len() * per + HEAD_FEATURES.len();
    // A list of weight 0 takes no part in the fusion (the engine does not
    // even compute it unless the learned fusion asks for every source).
    let weighted = lists.iter().filter(|l| l.weight > 0.0);
    let mut out = Array2::zeros((head.len(), width));
    let mut row_of: IdMap<usize> = IdMap::with_capacity_and_hasher(head.len(), Default::default());
    for (r, &(item, _)) in head.iter().enumerate() {
        // An item twice in the head: every copy gets its features.
        row_of.entry(item).or_insert(r);
    }
    crate::fusion::for_each_feature(sources, weighted, |item, j, score, rrank| {
        if let Some(&r) = row_of.get(&item) {
            out[[r, j]] = score;
            out[[r, j + 1]] = rrank;
        }
    });
    let (lo, hi) = head
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
            (a.min(x.1), b.max(x.1))
        });
    let max_pop = popularity.iter().fold(0f32, |a, &b| a.max(b));
    let pop_scale = (1.0 + max_pop).ln().max(1e-6);
    let hist = ((1.0 + history_len as f32).ln() / 1001f32.ln()).min(1.0);
    for (r, &(item, score)) in head.iter().enumerate() {
        if let Some(&first) = row_of.get(&item).filter(|&&first| first != r) {
            for j in 0..sources.len() * per {
                out[[r, j]] = out[[first, j]];
            }
        }
        let mut row = out.row_mut(r);
        let base = sources.len() * per;
        row[base] = if hi > lo {
            (score - lo) / (hi - lo)
        } else {
            1.0
        };
        row[base + 1] = 1.0 / (r + 1) as f32;
        row[base + 2] = popularity
            .get(item as usize)
            .map_or(0.0, |p| (1.0 + p).ln() / pop_scale);
        row[base + 3] = hist;
    }
    out
}

/// One fused head of a held-out user, for listwise training: the history
/// the sources saw, the head they and the fusion produced, its features
/// ([`head_features`]) and its labels (1 for the items the user went on to
/// take).
#[derive(Clone, Debug)]
pub struct HeadExample {
    /// History item numbers, oldest first.
    pub history: Vec<u32>,
    /// The head's items, best fused first.
    pub candidates: Vec<u32>,
    /// `candidates × F` features.
    pub features: Array2<f32>,
    /// One label per candidate.
    pub labels: Vec<f32>,
}

/// Heads per optimiser step of [`Din::train_heads`].
const HEADS_PER_STEP: usize = 8;

impl Din {
    /// An untrained model over the sequence features ([`FEATURES`]).
    pub fn new(embed: usize, opts: &DinOptions) -> Self {
        Self::with_features(embed, FEATURES.len(), opts)
    }

    /// An untrained model over `features` per-candidate features.
    pub fn with_features(embed: usize, features: usize, opts: &DinOptions) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        let a = opts.attention;
        let zin = 3 * a + features;
        Self {
            opts: opts.clone(),
            embed,
            features,
            wq: Param::glorot(embed, a, &mut rng),
            wk: Param::glorot(embed, a, &mut rng),
            wv: Param::glorot(embed, a, &mut rng),
            pos: Param::zeros(1, opts.history),
            w1: Param::glorot(zin, opts.hidden, &mut rng),
            b1: Param::zeros(1, opts.hidden),
            w2: Param::glorot(opts.hidden, 1, &mut rng),
            b2: Param::zeros(1, 1),
        }
    }

    fn params_mut(&mut self) -> [&mut Param; 8] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.pos,
            &mut self.w1,
            &mut self.b1,
            &mut self.w2,
            &mut self.b2,
        ]
    }

    fn forward(&self, batch: &Batch) -> Forward {
        let (a, l) = (self.opts.attention, self.opts.history);
        let b = batch.candidates.nrows();
        let hb = batch.mask.len() / l;
        let q = batch.candidates.dot(&self.wq.view());
        let k = batch.history.dot(&self.wk.view());
        let v = batch.history.dot(&self.wv.view());
        let scale = 1.0 / (a as f32).sqrt();
        let mut att = vec![0f32; b * l];
        let mut pooled = Array2::zeros((b, a));
        for r in 0..b {
            let hr = if hb == 1 { 0 } else { r };
            let s = &mut att[r * l..(r + 1) * l];
            for (j, sj) in s.iter_mut().enumerate() {
                let kj = k.row(hr * l + j);
                *sj = q.row(r).dot(&kj) * scale
                    + self.pos.w[j]
                    + (batch.mask[hr * l + j] - 1.0) * 1e9;
            }
            let m = s.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            s.iter_mut().for_each(|x| *x = (*x - m).exp());
            let total: f32 = s.iter().sum();
            s.iter_mut().for_each(|x| *x /= total);
            let mut p = pooled.row_mut(r);
            for (j, &aj) in s.iter().enumerate() {
                p.scaled_add(aj, &v.row(hr * l + j));
            }
        }
        let f = batch.features.ncols();
        let mut z = Array2::zeros((b, 3 * a + f));
        z.slice_axis_mut(Axis(1), Slice::from(0..a)).assign(&pooled);
        z.slice_axis_mut(Axis(1), Slice::from(a..2 * a)).assign(&q);
        z.slice_axis_mut(Axis(1), Slice::from(2 * a..3 * a))
            .assign(&(&pooled * &q));
        z.slice_axis_mut(Axis(1), Slice::from(3 * a..))
            .assign(&batch.features);
        let mut hidden = z.dot(&self.w1.view()) + self.b1.vector();
        hidden.mapv_inplace(|x| x.max(0.0));
        let logits = (hidden.dot(&self.w2.view()) + self.b2.vector())
            .into_raw_vec_and_offset()
            .0;
        Forward {
            q,
            k,
            v,
            att,
            pooled,
            z,
            hidden,
            logits,
        }
    }

    /// Logits of a batch, computed in Rust.
    pub fn score(&self, batch: &Batch) -> Vec<f32> {
        self.forward(batch).logits
    }

    /// Mean logistic loss of a batch with `labels`; leaves the gradients in the parameters.
    fn backward(&mut self, batch: &Batch, labels: &[f32]) -> f32 {
        let fw = self.forward(batch);
        let b = labels.len();
        let mut loss = 0.0;
        let dy = Array2::from_shape_fn((b, 1), |(r, _)| {
            let y = fw.logits[r];
            let p = 1.0 / (1.0 + (-y).exp());
            // log(1 + e^y) − label·y, computed stably.
            loss += y.max(0.0) + (-y.abs()).exp().ln_1p() - labels[r] * y;
            (p - labels[r]) / b as f32
        });
        self.backprop(batch, &fw, &dy);
        loss / b as f32
    }

    /// The listwise loss of one head (one history shared by every candidate,
    /// `labels` 1 for the items the user went on to take): the cross-entropy
    /// between the softmax of the logits over the head and the labels
    /// normalised to sum to one (ListNet's top-one form, Cao et al. 2007),
    /// plus `head_pointwise` times the mean logistic loss over the head (it
    /// orders the whole head, where the softmax attends to its top).
    /// Leaves the gradients in the parameters; a head without a positive has
    /// loss 0 and no gradient.
    fn backward_list(&mut self, batch: &Batch, labels: &[f32]) -> f32 {
        let fw = self.forward(batch);
        let b = labels.len();
        let total: f32 = labels.iter().sum();
        if total <= 0.0 || b == 0 {
            self.params_mut().iter_mut().for_each(|p| p.zero_grad());
            return 0.0;
        }
        let m = fw.logits.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
        let z: f32 = fw.logits.iter().map(|y| (y - m).exp()).sum();
        let log_z = m + z.ln();
        let pw = self.opts.head_pointwise;
        let mut loss = 0.0;
        let dy = Array2::from_shape_fn((b, 1), |(r, _)| {
            let (y, t) = (fw.logits[r], labels[r]);
            let log_p = y - log_z;
            loss -= t / total * log_p;
            // The pointwise term: the mean logistic loss over the head.
            loss += pw * (y.max(0.0) + (-y.abs()).exp().ln_1p() - t * y) / b as f32;
            let sig = 1.0 / (1.0 + (-y).exp());
            log_p.exp() - t / total + pw * (sig - t) / b as f32
        });
        self.backprop(batch, &fw, &dy);
        loss
    }

    /// Back-propagates `dy` (the loss's gradient by each logit) through the
    /// forward pass `fw` of `batch`, leaving the gradients in the parameters.
    fn backprop(&mut self, batch: &Batch, fw: &Forward, dy: &Array2<f32>) {
        let (a, l) = (self.opts.attention, self.opts.history);
        let b = fw.logits.len();
        let hb = batch.mask.len() / l;
        self.w2.grad_mut().assign(&fw.hidden.t().dot(dy));
        self.b2.g = dy.sum_axis(Axis(0)).to_vec();
        let mut dh = dy.dot(&self.w2.view().t());
        dh.zip_mut_with(&fw.hidden, |g, h| {
            if *h <= 0.0 {
                *g = 0.0
            }
        });
        self.w1.grad_mut().assign(&fw.z.t().dot(&dh));
        self.b1.g = dh.sum_axis(Axis(0)).to_vec();
        let dz = dh.dot(&self.w1.view().t());
        let mut dq = dz.slice_axis(Axis(1), Slice::from(a..2 * a)).to_owned();
        let dpq = dz.slice_axis(Axis(1), Slice::from(2 * a..3 * a));
        let dpooled = &dz.slice_axis(Axis(1), Slice::from(0..a)) + &(&dpq * &fw.q);
        dq += &(&dpq * &fw.pooled);
        let mut dk = Array2::<f32>::zeros(fw.k.raw_dim());
        let mut dv = Array2::<f32>::zeros(fw.v.raw_dim());
        let mut dpos = vec![0f32; l];
        let scale = 1.0 / (a as f32).sqrt();
        for r in 0..b {
            let hr = if hb == 1 { 0 } else { r };
            let att = &fw.att[r * l..(r + 1) * l];
            let dp = dpooled.row(r);
            let da: Vec<f32> = (0..l).map(|j| dp.dot(&fw.v.row(hr * l + j))).collect();
            let mean: f32 = att.iter().zip(&da).map(|(x, y)| x * y).sum();
            for j in 0..l {
                dv.row_mut(hr * l + j).scaled_add(att[j], &dp);
                let ds = att[j] * (da[j] - mean);
                dpos[j] += ds;
                dk.row_mut(hr * l + j).scaled_add(ds * scale, &fw.q.row(r));
                let kj = fw.k.row(hr * l + j).to_owned();
                dq.row_mut(r).scaled_add(ds * scale, &kj);
            }
        }
        self.pos.g = dpos;
        self.wk.grad_mut().assign(&batch.history.t().dot(&dk));
        self.wv.grad_mut().assign(&batch.history.t().dot(&dv));
        self.wq.grad_mut().assign(&batch.candidates.t().dot(&dq));
    }

    /// Trains on `histories` (item numbers, oldest first) over item embeddings
    /// `emb` (`items × E`) with item `popularity`; `retrieve(user, t)` gives
    /// the retrieval model's best items for the prefix `histories[user][..t]`
    /// (the pool of hard negatives), if any. Returns the model and the last
    /// epoch's mean loss.
    pub fn train(
        histories: &[Vec<u32>],
        emb: &[f32],
        e: usize,
        popularity: &[f32],
        retrieve: Option<&(dyn Fn(usize, usize) -> Vec<u32> + Sync)>,
        opts: &DinOptions,
    ) -> (Self, f32) {
        Self::train_with_progress(histories, emb, e, popularity, retrieve, opts, &|_| {})
    }

    /// [`Din::train`], calling `progress` with the epochs done after each one.
    pub fn train_with_progress(
        histories: &[Vec<u32>],
        emb: &[f32],
        e: usize,
        popularity: &[f32],
        retrieve: Option<&(dyn Fn(usize, usize) -> Vec<u32> + Sync)>,
        opts: &DinOptions,
        progress: &dyn Fn(usize),
    ) -> (Self, f32) {
        use rayon::prelude::*;
        let mut model = Self::new(e, opts);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
        let n = emb.len() / e.max(1);
        if n < 2 {
            return (model, 0.0);
        }
        // Cumulative popularity^0.75 for sampling negatives.
        let mut cum = Vec::with_capacity(n);
        let mut acc = 0f64;
        for p in popularity.iter().take(n) {
            acc += (*p as f64 + 1.0).powf(0.75);
            cum.push(acc);
        }
        let positions: Vec<(usize, usize)> = histories
            .iter()
            .enumerate()
            .flat_map(|(u, h)| {
                let first = h.len().saturating_sub(opts.max_pairs_per_user).max(1);
                (first..h.len()).map(move |t| (u, t))
            })
            .collect();
        let pools: Vec<Vec<u32>> = match retrieve {
            Some(f) if opts.hard_negatives > 0 => {
                positions.par_iter().map(|&(u, t)| f(u, t)).collect()
            }
            _ => vec![Vec::new(); positions.len()],
        };
        // Examples: (user, target position, item, label).
        let mut examples: Vec<(usize, usize, u32, f32)> = Vec::new();
        let mut seen: Vec<u32> = Vec::new();
        let mut seen_of = usize::MAX;
        for (&(u, t), pool) in positions.iter().zip(&pools) {
            if seen_of != u {
                seen = histories[u].clone();
                seen.sort_unstable();
                seen_of = u;
            }
            {
                examples.push((u, t, histories[u][t], 1.0));
                let unseen: Vec<u32> = pool
                    .iter()
                    .copied()
                    .filter(|i| seen.binary_search(i).is_err())
                    .collect();
                for _ in 0..opts.hard_negatives.min(unseen.len()) {
                    examples.push((u, t, unseen[rng.gen_range(0..unseen.len())], 0.0));
                }
                for k in 0..opts.negatives {
                    let mut tries = 0;
                    loop {
                        let i = if k % 2 == 0 {
                            let x = rng.gen::<f64>() * acc;
                            cum.partition_point(|c| *c < x).min(n - 1) as u32
                        } else {
                            rng.gen_range(0..n as u32)
                        };
                        tries += 1;
                        if seen.binary_search(&i).is_err() || tries > 20 {
                            examples.push((u, t, i, 0.0));
                            break;
                        }
                    }
                }
            }
        }
        // The candidate pools are only needed to draw the hard negatives.
        drop((pools, positions));
        let mut opt = Adam::new(opts.lr, 1e-4);
        let mut last = 0.0;
        for epoch in 0..opts.epochs {
            examples.shuffle(&mut rng);
            let mut total = 0.0;
            let mut batches = 0;
            for chunk in examples.chunks(opts.batch.max(1)) {
                total += model.parted_backward(chunk, histories, emb, e, popularity, PART);
                opt.step(&mut model.params_mut());
                batches += 1;
            }
            last = total / batches.max(1) as f32;
            progress(epoch + 1);
        }
        (model, last)
    }

    /// Trains a head reranker on `heads` (the fused heads of held-out users,
    /// each with its features and labels) over item embeddings `emb`
    /// (`items × E`), minimising the listwise loss of
    /// [`Din::backward_list`] with Adam for `opts.head_epochs` passes,
    /// [`HEADS_PER_STEP`] heads a step, the heads of a step in parallel.
    /// Calls `progress` with the epochs done; returns the model and the last
    /// epoch's mean loss.
    pub fn train_heads(
        heads: &[HeadExample],
        emb: &[f32],
        e: usize,
        opts: &DinOptions,
        progress: &dyn Fn(usize),
    ) -> (Self, f32) {
        use rayon::prelude::*;
        let f = heads.first().map_or(0, |h| h.features.ncols());
        let mut model = Self::with_features(e, f, opts);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x11e4d);
        let mut order: Vec<usize> = (0..heads.len()).collect();
        let mut opt = Adam::new(opts.lr, 1e-4);
        let mut last = 0.0;
        for epoch in 0..opts.head_epochs {
            order.shuffle(&mut rng);
            let mut total = 0.0;
            for step in order.chunks(HEADS_PER_STEP) {
                let parts: Vec<(f32, Din)> = step
                    .par_iter()
                    .map(|&k| {
                        let mut copy = model.clone();
                        let loss = copy
                            .backward_list(&heads[k].batch(emb, e, opts.history), &heads[k].labels);
                        (loss, copy)
                    })
                    .collect();
                let share = 1.0 / step.len() as f32;
                let mut params = model.params_mut();
                params.iter_mut().for_each(|p| p.zero_grad());
                for (loss, mut copy) in parts {
                    total += loss;
                    for (p, q) in params.iter_mut().zip(copy.params_mut()) {
                        p.g.iter_mut().zip(&q.g).for_each(|(g, x)| *g += share * x);
                    }
                }
                opt.step(&mut params);
            }
            last = total / heads.len().max(1) as f32;
            progress(epoch + 1);
        }
        (model, last)
    }

    /// [`Din::backward`] over training examples `(user, target position,
    /// item, label)`, in parts of `part` run in parallel, each on its own
    /// copy of the model; the parts' gradients and losses are averaged by
    /// size, which is the whole batch's (up to the order of the sums: the
    /// loss is a mean over independent examples).
    fn parted_backward(
        &mut self,
        chunk: &[(usize, usize, u32, f32)],
        histories: &[Vec<u32>],
        emb: &[f32],
        e: usize,
        popularity: &[f32],
        part: usize,
    ) -> f32 {
        use rayon::prelude::*;
        let l = self.opts.history;
        let parts: Vec<(usize, f32, Din)> = chunk
            .par_chunks(part.max(1))
            .map(|part| {
                let mut hist = Array2::zeros((part.len() * l, e));
                let mut mask = vec![0f32; part.len() * l];
                for (r, &(u, t, _, _)) in part.iter().enumerate() {
                    let (h, m) = history_slots(emb, e, &histories[u][..t], l);
                    hist.slice_axis_mut(Axis(0), Slice::from(r * l..(r + 1) * l))
                        .assign(&h);
                    mask[r * l..(r + 1) * l].copy_from_slice(&m);
                }
                let items: Vec<u32> = part.iter().map(|x| x.2).collect();
                let batch = Batch {
                    history: hist,
                    mask,
                    candidates: gather(emb, e, &items),
                    features: features(popularity, &items),
                };
                let labels: Vec<f32> = part.iter().map(|x| x.3).collect();
                let mut copy = self.clone();
                let loss = copy.backward(&batch, &labels);
                (part.len(), loss, copy)
            })
            .collect();
        let mut total = 0.0;
        let mut params = self.params_mut();
        params.iter_mut().for_each(|p| p.zero_grad());
        for (n, loss, mut copy) in parts {
            let share = n as f32 / chunk.len() as f32;
            total += loss * share;
            for (p, q) in params.iter_mut().zip(copy.params_mut()) {
                p.g.iter_mut().zip(&q.g).for_each(|(g, x)| *g += share * x);
            }
        }
        total
    }

    /// The model as ONNX: inputs `history` (`hb × L × E`, newest first),
    /// `history_mask` (`hb × L`), `candidate` (`b × E`), `features` (`b × F`),
    /// with `hb` 1 or `b`; output `score` (`b`), the logit.
    pub fn onnx(&self) -> Vec<u8> {
        let (e, a, l, hd) = (
            self.embed,
            self.opts.attention,
            self.opts.history,
            self.opts.hidden,
        );
        let f = self.features;
        let mut g = GraphBuilder::new("vecrec_din_reranker");
        let hist = g.input(
            "history",
            FLOAT,
            &[Dim::Named("history_batch"), Dim::Fixed(l), Dim::Fixed(e)],
        );
        let mask = g.input(
            "history_mask",
            FLOAT,
            &[Dim::Named("history_batch"), Dim::Fixed(l)],
        );
        let cand = g.input("candidate", FLOAT, &[Dim::Named("batch"), Dim::Fixed(e)]);
        let feats = g.input("features", FLOAT, &[Dim::Named("batch"), Dim::Fixed(f)]);
        let wq = g.weight("wq", &[e, a], &self.wq.w);
        let wk = g.weight("wk", &[e, a], &self.wk.w);
        let wv = g.weight("wv", &[e, a], &self.wv.w);
        let pos = g.weight("recency_bias", &[l], &self.pos.w);
        let w1 = g.weight("w1", &[3 * a + f, hd], &self.w1.w);
        let b1 = g.weight("b1", &[hd], &self.b1.w);
        let w2 = g.weight("w2", &[hd, 1], &self.w2.w);
        let b2 = g.weight("b2", &[1], &self.b2.w);
        let ax1 = g.ints(&[1]);
        let ax2 = g.ints(&[2]);
        let q = g.op("MatMul", &[&cand, &wq]);
        let k = g.op("MatMul", &[&hist, &wk]);
        let v = g.op("MatMul", &[&hist, &wv]);
        let q3 = g.op("Unsqueeze", &[&q, &ax2]);
        let s = g.op("MatMul", &[&k, &q3]);
        let s = g.op("Squeeze", &[&s, &ax2]);
        let scale = g.scalar(1.0 / (a as f32).sqrt());
        let s = g.op("Mul", &[&s, &scale]);
        let s = g.op("Add", &[&s, &pos]);
        let one = g.scalar(1.0);
        let big = g.scalar(1e9);
        let pad = g.op("Sub", &[&mask, &one]);
        let pad = g.op("Mul", &[&pad, &big]);
        let s = g.op("Add", &[&s, &pad]);
        let att = g.node("Softmax", &[&s], "", &[("axis", Attr::Int(-1))]);
        let att3 = g.op("Unsqueeze", &[&att, &ax1]);
        let p = g.op("MatMul", &[&att3, &v]);
        let p = g.op("Squeeze", &[&p, &ax1]);
        let pq = g.op("Mul", &[&p, &q]);
        let z = g.node(
            "Concat",
            &[&p, &q, &pq, &feats],
            "",
            &[("axis", Attr::Int(1))],
        );
        let h = g.op("MatMul", &[&z, &w1]);
        let h = g.op("Add", &[&h, &b1]);
        let h = g.op("Relu", &[&h]);
        let y = g.op("MatMul", &[&h, &w2]);
        let y = g.op("Add", &[&y, &b2]);
        let y = g.op("Squeeze", &[&y, &ax1]);
        g.output(&y, "score", FLOAT, &[Dim::Named("batch")]);
        g.finish("vecrec cross-attention (DIN-style) reranker")
    }

    /// Area under the ROC curve of the model on labelled examples
    /// `(history, item, label)` (ties count half).
    pub fn auc(&self, emb: &[f32], popularity: &[f32], examples: &[(Vec<u32>, u32, bool)]) -> f64 {
        let e = self.embed;
        let scored: Vec<(f32, bool)> = examples
            .iter()
            .map(|(h, i, y)| {
                let (hist, mask) = history_slots(emb, e, h, self.opts.history);
                let batch = Batch {
                    history: hist,
                    mask,
                    candidates: gather(emb, e, &[*i]),
                    features: features(popularity, &[*i]),
                };
                (self.score(&batch)[0], *y)
            })
            .collect();
        auc(&scored)
    }
}

/// Area under the ROC curve of (score, label) pairs; ties count half.
pub fn auc(scored: &[(f32, bool)]) -> f64 {
    let mut v: Vec<(f32, bool)> = scored.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut pos, mut neg) = (0f64, 0f64);
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        for x in &v[i..j] {
            if x.1 {
                pos += 1.0;
                rank_sum += avg_rank;
            } else {
                neg += 1.0;
            }
        }
        i = j;
    }
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

impl HeadExample {
    /// The head as one batch: its history shared by every candidate.
    pub fn batch(&self, emb: &[f32], e: usize, history: usize) -> Batch {
        let (h, mask) = history_slots(emb, e, &self.history, history);
        Batch {
            history: h,
            mask,
            candidates: gather(emb, e, &self.candidates),
            features: self.features.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
