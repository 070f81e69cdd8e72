//! The self-attentive sequential source (SASRec: Kang & McAuley,
//! "Self-Attentive Sequential Recommendation", ICDM 2018).
//!
//! A user's newest `max_len` items (oldest first) are looked up in the item
//! table, each plus a learned position embedding (right-aligned: the newest
//! item always takes the last position), and passed through `blocks`
//! pre-normalised transformer blocks: causal single-head self-attention (a
//! position sees itself and the items before it), then a two-layer ReLU
//! feed-forward network, each added back to its input. A last layer
//! normalisation gives one vector per position; the vector at position `t`
//! scores the item at `t + 1` by its inner product with that item's row of
//! the same table. Layer normalisations carry no scale or shift.
//!
//! Training: every user's history is cut into windows of `max_len + 1`
//! items (the newest window first, then the older ones), and at every
//! position the softmax cross-entropy of the true next item is minimised
//! against `negatives` items drawn uniformly for the batch and shared by its
//! rows (a negative equal to the row's target is left out). The input
//! embeddings are dropped out with probability `dropout`. The backward pass
//! is written out below, block by block, and checked against finite
//! differences in the tests.
//!
//! The item table starts from the items' content vectors and ALS factors
//! ([`item_init`]: the features projected on their top principal
//! directions), so an item starts where its text and its co-occurrences put
//! it.
//!
//! Serving: the item table is searched in its own inner-product HNSW index;
//! the network is exported to ONNX ([`Sasrec::onnx`]) and its output at the
//! last position is the user's vector.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayView2, Axis, Slice};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

pub use crate::config::SequenceOptions;
use crate::nn::onnx::{Attr, Dim, GraphBuilder, FLOAT};
use crate::nn::{Adam, Param};

/// Added to the variance in every layer normalisation.
const LN_EPS: f32 = 1e-5;

/// Windows in one part of a batch (parts run in parallel; fixed, so a model
/// trains the same on every machine).
const PART: usize = 8;

/// One transformer block's weights.
#[derive(Clone, Debug)]
struct Block {
    wq: Param,
    wk: Param,
    wv: Param,
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

impl Block {
    fn new(d: usize, hidden: usize, rng: &mut impl Rng) -> Self {
        Self {
            wq: Param::glorot(d, d, rng),
            wk: Param::glorot(d, d, rng),
            wv: Param::glorot(d, d, rng),
            w1: Param::glorot(d, hidden, rng),
            b1: Param::zeros(1, hidden),
            w2: Param::glorot(hidden, d, rng),
            b2: Param::zeros(1, d),
        }
    }

    fn params_mut(&mut self) -> [&mut Param; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.w1,
            &mut self.b1,
            &mut self.w2,
            &mut self.b2,
        ]
    }
}

/// What a block's backward pass needs from its forward pass.
struct BlockCache {
    /// Normalised input, its inverse deviations.
    a: Array2<f32>,
    a_inv: Vec<f32>,
    q: Array2<f32>,
    k: Array2<f32>,
    v: Array2<f32>,
    /// Attention weights, `T × T`, zero above the diagonal.
    att: Array2<f32>,
    /// Normalised input of the feed-forward layers, its inverse deviations.
    c: Array2<f32>,
    c_inv: Vec<f32>,
    /// Hidden activations after the ReLU.
    r: Array2<f32>,
}

/// Gradients of one block.
#[derive(Clone)]
struct BlockGrads {
    wq: Array2<f32>,
    wk: Array2<f32>,
    wv: Array2<f32>,
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
}

impl BlockGrads {
    fn zeros(d: usize, hidden: usize) -> Self {
        Self {
            wq: Array2::zeros((d, d)),
            wk: Array2::zeros((d, d)),
            wv: Array2::zeros((d, d)),
            w1: Array2::zeros((d, hidden)),
            b1: Array1::zeros(hidden),
            w2: Array2::zeros((hidden, d)),
            b2: Array1::zeros(d),
        }
    }

    fn add(&mut self, o: &Self) {
        self.wq += &o.wq;
        self.wk += &o.wk;
        self.wv += &o.wv;
        self.w1 += &o.w1;
        self.b1 += &o.b1;
        self.w2 += &o.w2;
        self.b2 += &o.b2;
    }
}

/// Gradients of the whole model; the item table's only for the rows the
/// batch touched (a catalogue's table is large, a batch's rows few), in
/// row order.
struct Grads {
    dim: usize,
    items: BTreeMap<u32, Vec<f32>>,
    pos: Array2<f32>,
    blocks: Vec<BlockGrads>,
    loss: f64,
}

impl Grads {
    /// The gradient of item `i`'s row.
    fn item(&mut self, i: u32) -> ndarray::ArrayViewMut1<'_, f32> {
        let d = self.dim;
        ndarray::ArrayViewMut1::from(&mut self.items.entry(i).or_insert_with(|| vec![0.0; d])[..])
    }

    fn add(&mut self, o: &Self) {
        for (&i, row) in &o.items {
            self.item(i)
                .zip_mut_with(&ndarray::ArrayView1::from(&row[..]), |a, b| *a += b);
        }
        self.pos += &o.pos;
        for (a, b) in self.blocks.iter_mut().zip(&o.blocks) {
            a.add(b);
        }
        self.loss += o.loss;
    }
}

/// Row-wise layer normalisation without scale or shift: the rows and the
/// inverse of each row's deviation.
fn layer_norm(x: &Array2<f32>) -> (Array2<f32>, Vec<f32>) {
    let mut y = x.clone();
    let inv = y
        .rows_mut()
        .into_iter()
        .map(|mut r| {
            let n = r.len() as f32;
            let mu = r.sum() / n;
            r.mapv_inplace(|v| v - mu);
            let inv = 1.0 / (r.dot(&r) / n + LN_EPS).sqrt();
            r.mapv_inplace(|v| v * inv);
            inv
        })
        .collect();
    (y, inv)
}

/// Backward of [`layer_norm`]: given its output `y`, the inverse deviations
/// and `dy`, the input's gradient `inv · (dy − mean(dy) − y · mean(dy ⊙ y))`.
fn layer_norm_backward(y: &Array2<f32>, inv: &[f32], dy: &Array2<f32>) -> Array2<f32> {
    let mut dx = dy.clone();
    for ((mut d, yr), &s) in dx.rows_mut().into_iter().zip(y.rows()).zip(inv) {
        let n = d.len() as f32;
        let m = d.sum() / n;
        let my = d.dot(&yr) / n;
        d.zip_mut_with(&yr, |dv, &yv| *dv = s * (*dv - m - yv * my));
    }
    dx
}

/// Softmax of each row of `s` over its first `t + 1` entries (row `t`);
/// the entries after them become 0.
fn causal_softmax(s: &mut Array2<f32>) {
    for (t, mut row) in s.rows_mut().into_iter().enumerate() {
        let m = row
            .iter()
            .take(t + 1)
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let mut z = 0.0;
        for (u, v) in row.iter_mut().enumerate() {
            *v = if u <= t { (*v - m).exp() } else { 0.0 };
            z += *v;
        }
        row.mapv_inplace(|v| v / z);
    }
}

fn block_forward(b: &Block, x: &Array2<f32>) -> (Array2<f32>, BlockCache) {
    let d = x.ncols();
    let scale = 1.0 / (d as f32).sqrt();
    let (a, a_inv) = layer_norm(x);
    let q = a.dot(&b.wq.view());
    let k = a.dot(&b.wk.view());
    let v = a.dot(&b.wv.view());
    let mut att = q.dot(&k.t()) * scale;
    causal_softmax(&mut att);
    let x1 = x + &att.dot(&v);
    let (c, c_inv) = layer_norm(&x1);
    let mut r = c.dot(&b.w1.view()) + b.b1.vector();
    r.mapv_inplace(|v| v.max(0.0));
    let out = &x1 + &(r.dot(&b.w2.view()) + b.b2.vector());
    let cache = BlockCache {
        a,
        a_inv,
        q,
        k,
        v,
        att,
        c,
        c_inv,
        r,
    };
    (out, cache)
}

/// Backward of [`block_forward`]: adds the weights' gradients to `g` and
/// returns the input's gradient.
fn block_backward(
    b: &Block,
    cache: &BlockCache,
    dout: &Array2<f32>,
    g: &mut BlockGrads,
) -> Array2<f32> {
    let scale = 1.0 / (dout.ncols() as f32).sqrt();
    // Feed-forward: out = x1 + relu(c·W1 + b1)·W2 + b2, c = LN(x1).
    g.w2 += &cache.r.t().dot(dout);
    g.b2 += &dout.sum_axis(Axis(0));
    let mut dr = dout.dot(&b.w2.view().t());
    dr.zip_mut_with(&cache.r, |g, &r| {
        if r <= 0.0 {
            *g = 0.0
        }
    });
    g.w1 += &cache.c.t().dot(&dr);
    g.b1 += &dr.sum_axis(Axis(0));
    let dc = dr.dot(&b.w1.view().t());
    let dx1 = dout + &layer_norm_backward(&cache.c, &cache.c_inv, &dc);
    // Attention: x1 = x + softmax(q·kᵀ·scale)·v, q, k, v = LN(x)·W.
    let datt = dx1.dot(&cache.v.t());
    let dv = cache.att.t().dot(&dx1);
    let mut ds = datt;
    for (mut row, arow) in ds.rows_mut().into_iter().zip(cache.att.rows()) {
        let dot = row.dot(&arow);
        row.zip_mut_with(&arow, |g, &p| *g = p * (*g - dot) * scale);
    }
    let dq = ds.dot(&cache.k);
    let dk = ds.t().dot(&cache.q);
    g.wq += &cache.a.t().dot(&dq);
    g.wk += &cache.a.t().dot(&dk);
    g.wv += &cache.a.t().dot(&dv);
    let da = dq.dot(&b.wq.view().t()) + dk.dot(&b.wk.view().t()) + dv.dot(&b.wv.view().t());
    dx1 + layer_norm_backward(&cache.a, &cache.a_inv, &da)
}

/// A training window: the inputs `history[start..end - 1]` of one user and
/// the targets `history[start + 1..end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The user's number.
    pub user: usize,
    /// First input.
    pub start: usize,
    /// One past the last target.
    pub end: usize,
}

/// The training windows of `histories`: each history cut from its newest
/// item back into windows of at most `max_len` inputs, whose targets do not
/// overlap.
pub fn windows(histories: &[Vec<u32>], max_len: usize) -> Vec<Window> {
    let mut out = Vec::new();
    for (user, h) in histories.iter().enumerate() {
        let mut end = h.len();
        while end >= 2 {
            let start = end.saturating_sub(max_len.max(1) + 1);
            out.push(Window { user, start, end });
            end = start + 1;
        }
    }
    out
}

/// The negatives a batch shares: item numbers and their table rows.
struct Negatives<'a> {
    ids: &'a [u32],
    rows: ArrayView2<'a, f32>,
}

/// A trained self-attentive sequence model.
#[derive(Clone, Debug)]
pub struct Sasrec {
    /// Options it was trained with.
    pub opts: SequenceOptions,
    items: Param,
    pos: Param,
    blocks: Vec<Block>,
    /// The item table's gradient from the last backward pass, by row.
    item_grads: Vec<(u32, Vec<f32>)>,
}

/// Forward results of one window.
struct SeqCache {
    /// Dropout mask of the inputs (scaled), empty without dropout.
    mask: Vec<f32>,
    blocks: Vec<BlockCache>,
    h: Array2<f32>,
    h_inv: Vec<f32>,
}

impl Sasrec {
    /// An untrained model over an item table `init` (`items × opts.dim`).
    pub fn new(init: Vec<f32>, opts: &SequenceOptions) -> Self {
        let d = opts.dim;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        let n = init.len() / d.max(1);
        let pos = (0..opts.max_len * d)
            .map(|_| rng.gen_range(-0.02..0.02))
            .collect();
        Self {
            opts: opts.clone(),
            items: Param::from_values(n, d, init),
            pos: Param::from_values(opts.max_len, d, pos),
            blocks: (0..opts.blocks)
                .map(|_| Block::new(d, opts.hidden, &mut rng))
                .collect(),
            item_grads: Vec::new(),
        }
    }

    /// The item table, `items × dim`: what the user vector is scored against.
    pub fn item_vectors(&self) -> &[f32] {
        &self.items.w
    }

    fn item(&self, i: u32) -> ndarray::ArrayView1<'_, f32> {
        let d = self.opts.dim;
        ndarray::ArrayView1::from(&self.items.w[i as usize * d..(i as usize + 1) * d])
    }

    /// The last positions' outputs for `ids` (at most `max_len`, oldest
    /// first); `mask` multiplies the inputs (dropout) when not empty.
    fn forward(&self, ids: &[u32], mask: Vec<f32>) -> SeqCache {
        let d = self.opts.dim;
        let t = ids.len();
        let off = self.opts.max_len - t;
        let mut x = Array2::from_shape_fn((t, d), |(r, c)| {
            self.items.w[ids[r] as usize * d + c] + self.pos.w[(off + r) * d + c]
        });
        if !mask.is_empty() {
            x.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
        }
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (out, cache) = block_forward(b, &x);
            blocks.push(cache);
            x = out;
        }
        let (h, h_inv) = layer_norm(&x);
        SeqCache {
            mask,
            blocks,
            h,
            h_inv,
        }
    }

    /// The user's vector: the output at the last position for the newest
    /// `max_len` items of `history` (oldest first); `None` when it is empty.
    pub fn user_vector(&self, history: &[u32]) -> Option<Vec<f32>> {
        if history.is_empty() {
            return None;
        }
        let ids = &history[history.len().saturating_sub(self.opts.max_len)..];
        let c = self.forward(ids, Vec::new());
        Some(c.h.row(ids.len() - 1).to_vec())
    }

    /// Loss of one window against the shared negatives, every position
    /// weighted by `weight`; adds the gradients to `g`.
    fn window_backward(
        &self,
        ids: &[u32],
        targets: &[u32],
        negatives: &Negatives<'_>,
        mask: Vec<f32>,
        weight: f32,
        g: &mut Grads,
    ) {
        let (negs, en) = (negatives.ids, &negatives.rows);
        let d = self.opts.dim;
        let t = ids.len();
        let fw = self.forward(ids, mask);
        let h = &fw.h;
        // Softmax over [target, negatives] at every position.
        let mut logits = h.dot(&en.t());
        let mut dh = Array2::<f32>::zeros((t, d));
        for (r, &tg) in targets.iter().enumerate() {
            let pos = h.row(r).dot(&self.item(tg));
            let mut row = logits.row_mut(r);
            for (v, &j) in row.iter_mut().zip(negs) {
                if j == tg {
                    *v = f32::NEG_INFINITY;
                }
            }
            let m = row.fold(pos, |a, &v| a.max(v));
            row.mapv_inplace(|v| (v - m).exp());
            let pe = (pos - m).exp();
            let z = row.sum() + pe;
            row.mapv_inplace(|v| v / z * weight);
            let p_pos = pe / z;
            g.loss += -(p_pos.max(1e-30).ln() as f64) * weight as f64;
            // d loss / d pos-logit = (p − 1) · weight.
            let dpos = (p_pos - 1.0) * weight;
            dh.row_mut(r).scaled_add(dpos, &self.item(tg));
            g.item(tg).scaled_add(dpos, &h.row(r));
        }
        // `logits` now holds d loss / d neg-logit.
        dh += &logits.dot(en);
        let den = logits.t().dot(h);
        for (k, &j) in negs.iter().enumerate() {
            g.item(j).scaled_add(1.0, &den.row(k));
        }
        let mut dx = layer_norm_backward(h, &fw.h_inv, &dh);
        for (b, (blk, cache)) in self.blocks.iter().zip(&fw.blocks).enumerate().rev() {
            dx = block_backward(blk, cache, &dx, &mut g.blocks[b]);
        }
        if !fw.mask.is_empty() {
            dx.iter_mut().zip(&fw.mask).for_each(|(v, m)| *v *= m);
        }
        let off = self.opts.max_len - t;
        for (r, &i) in ids.iter().enumerate() {
            g.item(i).scaled_add(1.0, &dx.row(r));
            g.pos.row_mut(off + r).scaled_add(1.0, &dx.row(r));
        }
    }

    fn zero_grads(&self) -> Grads {
        let d = self.opts.dim;
        Grads {
            dim: d,
            items: BTreeMap::new(),
            pos: Array2::zeros((self.opts.max_len, d)),
            blocks: vec![BlockGrads::zeros(d, self.opts.hidden); self.blocks.len()],
            loss: 0.0,
        }
    }

    /// The mean loss of a batch of windows over `histories` against the
    /// negatives `negs`; the gradients are left in every dense `Param::g`
    /// and, for the item table, in `item_grads`.
    /// `masks` holds each window's dropout mask (or nothing).
    fn backward(
        &mut self,
        histories: &[Vec<u32>],
        batch: &[Window],
        negs: &[u32],
        masks: &[Vec<f32>],
        part: usize,
    ) -> f32 {
        let d = self.opts.dim;
        let rows = Array2::from_shape_fn((negs.len(), d), |(k, c)| {
            self.items.w[negs[k] as usize * d + c]
        });
        let negatives = Negatives {
            ids: negs,
            rows: rows.view(),
        };
        let positions: usize = batch.iter().map(|w| w.end - w.start - 1).sum();
        let weight = 1.0 / positions.max(1) as f32;
        let idx: Vec<usize> = (0..batch.len()).collect();
        let parts: Vec<Grads> = idx
            .par_chunks(part.max(1))
            .map(|chunk| {
                let mut g = self.zero_grads();
                for &k in chunk {
                    let w = batch[k];
                    let h = &histories[w.user];
                    self.window_backward(
                        &h[w.start..w.end - 1],
                        &h[w.start + 1..w.end],
                        &negatives,
                        masks.get(k).cloned().unwrap_or_default(),
                        weight,
                        &mut g,
                    );
                }
                g
            })
            .collect();
        let mut it = parts.into_iter();
        let mut sum = it.next().unwrap_or_else(|| self.zero_grads());
        for p in it {
            sum.add(&p);
        }
        self.item_grads = sum.items.into_iter().collect();
        self.pos.g = sum.pos.into_raw_vec_and_offset().0;
        for (b, g) in self.blocks.iter_mut().zip(sum.blocks) {
            b.wq.g = g.wq.into_raw_vec_and_offset().0;
            b.wk.g = g.wk.into_raw_vec_and_offset().0;
            b.wv.g = g.wv.into_raw_vec_and_offset().0;
            b.w1.g = g.w1.into_raw_vec_and_offset().0;
            b.b1.g = g.b1.to_vec();
            b.w2.g = g.w2.into_raw_vec_and_offset().0;
            b.b2.g = g.b2.to_vec();
        }
        sum.loss as f32
    }

    /// One Adam step: every dense parameter, and the item table's rows
    /// that have a gradient.
    fn step(&mut self, opt: &mut Adam) {
        let mut dense: Vec<&mut Param> = vec![&mut self.pos];
        for b in &mut self.blocks {
            dense.extend(b.params_mut());
        }
        opt.step(&mut dense);
        opt.step_rows(&mut self.items, &self.item_grads);
    }

    /// The item table's gradient from the last backward pass, dense.
    #[cfg(test)]
    fn dense_item_grad(&self) -> Vec<f32> {
        let d = self.opts.dim;
        let mut g = vec![0.0; self.items.w.len()];
        for (i, row) in &self.item_grads {
            g[*i as usize * d..(*i as usize + 1) * d].copy_from_slice(row);
        }
        g
    }

    #[cfg(test)]
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut p = vec![&mut self.items, &mut self.pos];
        for b in &mut self.blocks {
            p.extend(b.params_mut());
        }
        p
    }

    /// Trains on `histories` (item numbers, oldest first) from the item
    /// table `init` (`items × opts.dim`, see [`item_init`]), calling
    /// `progress` with the epochs done after each; returns the model and the
    /// last epoch's mean loss.
    pub fn train(
        histories: &[Vec<u32>],
        init: Vec<f32>,
        opts: &SequenceOptions,
        progress: &dyn Fn(usize),
    ) -> (Self, f32) {
        let mut model = Self::new(init, opts);
        let n = model.items.rows;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5e9);
        let mut order = windows(histories, opts.max_len);
        let mut opt = Adam::new(opts.lr, opts.weight_decay);
        let mut last = 0.0;
        if order.is_empty() || n == 0 {
            return (model, last);
        }
        let d = opts.dim;
        let keep = 1.0 - opts.dropout.clamp(0.0, 0.95);
        for epoch in 0..opts.epochs {
            order.shuffle(&mut rng);
            let (mut total, mut batches) = (0.0, 0);
            for batch in order.chunks(opts.batch.max(1)) {
                let negs: Vec<u32> = (0..opts.negatives.max(1))
                    .map(|_| rng.gen_range(0..n as u32))
                    .collect();
                let masks: Vec<Vec<f32>> = if opts.dropout > 0.0 {
                    batch
                        .iter()
                        .map(|w| {
                            let len = (w.end - w.start - 1) * d;
                            (0..len)
                                .map(|_| {
                                    if rng.gen::<f32>() < keep {
                                        1.0 / keep
                                    } else {
                                        0.0
                                    }
                                })
                                .collect()
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                total += model.backward(histories, batch, &negs, &masks, PART);
                model.step(&mut opt);
                batches += 1;
            }
            last = total / batches.max(1) as f32;
            progress(epoch + 1);
        }
        (model, last)
    }

    /// The network as an ONNX model: inputs `history` (`batch × len × dim`,
    /// the item table's rows of the newest `len ≤ max_len` items, oldest
    /// first) and `mask` (`len × len`, 0 on and below the diagonal, −1e9
    /// above: [`causal_mask`]); output `user_vector` (`batch × dim`, the
    /// last position's output).
    pub fn onnx(&self) -> Vec<u8> {
        let (d, l) = (self.opts.dim, self.opts.max_len);
        let mut g = GraphBuilder::new("vecrec_sequence");
        let hist = g.input(
            "history",
            FLOAT,
            &[Dim::Named("batch"), Dim::Named("len"), Dim::Fixed(d)],
        );
        let mask = g.input("mask", FLOAT, &[Dim::Named("len"), Dim::Named("len")]);
        // The last `len` position embeddings.
        let pos = g.weight("positions", &[l, d], &self.pos.w);
        let shape = g.op("Shape", &[&hist]);
        let one = g.ints(&[1]);
        let len = g.node("Gather", &[&shape, &one], "", &[("axis", Attr::Int(0))]);
        let l_end = g.ints(&[l as i64]);
        let start = g.op("Sub", &[&l_end, &len]);
        let zero_axis = g.ints(&[0]);
        let p = g.op("Slice", &[&pos, &start, &l_end, &zero_axis]);
        let mut x = g.op("Add", &[&hist, &p]);
        let layer_norm = |g: &mut GraphBuilder, x: &str| -> String {
            let axes = [("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
            let mu = g.node("ReduceMean", &[x], "", &axes);
            let xc = g.op("Sub", &[x, &mu]);
            let sq = g.op("Mul", &[&xc, &xc]);
            let var = g.node("ReduceMean", &[&sq], "", &axes);
            let eps = g.scalar(LN_EPS);
            let var = g.op("Add", &[&var, &eps]);
            let sd = g.op("Sqrt", &[&var]);
            g.op("Div", &[&xc, &sd])
        };
        let scale = g.scalar(1.0 / (d as f32).sqrt());
        for (n, b) in self.blocks.iter().enumerate() {
            let a = layer_norm(&mut g, &x);
            let wq = g.weight(&format!("b{n}_wq"), &[d, d], &b.wq.w);
            let wk = g.weight(&format!("b{n}_wk"), &[d, d], &b.wk.w);
            let wv = g.weight(&format!("b{n}_wv"), &[d, d], &b.wv.w);
            let q = g.op("MatMul", &[&a, &wq]);
            let k = g.op("MatMul", &[&a, &wk]);
            let v = g.op("MatMul", &[&a, &wv]);
            let kt = g.node(
                "Transpose",
                &[&k],
                "",
                &[("perm", Attr::Ints(vec![0, 2, 1]))],
            );
            let s = g.op("MatMul", &[&q, &kt]);
            let s = g.op("Mul", &[&s, &scale]);
            let s = g.op("Add", &[&s, &mask]);
            let att = g.node("Softmax", &[&s], "", &[("axis", Attr::Int(-1))]);
            let o = g.op("MatMul", &[&att, &v]);
            let x1 = g.op("Add", &[&x, &o]);
            let c = layer_norm(&mut g, &x1);
            let w1 = g.weight(&format!("b{n}_w1"), &[d, self.opts.hidden], &b.w1.w);
            let b1 = g.weight(&format!("b{n}_b1"), &[self.opts.hidden], &b.b1.w);
            let w2 = g.weight(&format!("b{n}_w2"), &[self.opts.hidden, d], &b.w2.w);
            let b2 = g.weight(&format!("b{n}_b2"), &[d], &b.b2.w);
            let r = g.op("MatMul", &[&c, &w1]);
            let r = g.op("Add", &[&r, &b1]);
            let r = g.op("Relu", &[&r]);
            let f = g.op("MatMul", &[&r, &w2]);
            let f = g.op("Add", &[&f, &b2]);
            x = g.op("Add", &[&x1, &f]);
        }
        let h = layer_norm(&mut g, &x);
        let last = g.ints(&[-1]);
        let u = g.node("Gather", &[&h, &last], "", &[("axis", Attr::Int(1))]);
        let u = g.op("Squeeze", &[&u, &one]);
        g.output(
            &u,
            "user_vector",
            FLOAT,
            &[Dim::Named("batch"), Dim::Fixed(d)],
        );
        g.finish("vecrec self-attentive sequence model (SASRec)")
    }
}

/// The additive causal mask of `len` positions that [`Sasrec::onnx`] takes:
/// row-major `len × len`, 0 where a position may look (itself and before),
/// −1e9 after it.
pub fn causal_mask(len: usize) -> Vec<f32> {
    (0..len * len)
        .map(|k| if k % len > k / len { -1e9 } else { 0.0 })
        .collect()
}

/// The starting item table: the item features (`n × d`, centred) projected
/// on their first `dim` principal directions (found by subspace iteration
/// from a seeded start), scaled so the rows' mean length is 1. Directions
/// beyond `d` stay zero.
pub fn item_init(features: &[f32], d: usize, dim: usize, seed: u64) -> Vec<f32> {
    let n = features.len() / d.max(1);
    if n == 0 {
        return Vec::new();
    }
    let x = ArrayView2::from_shape((n, d), features).expect("n × d");
    let mean = x.mean_axis(Axis(0)).expect("rows");
    // The centred rows times q, without a centred copy of the features
    // (a large catalogue's features take as much memory again).
    let centred_times = |q: &Array2<f32>| x.dot(q) - mean.dot(q);
    let k = dim.min(d);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut q = Array2::from_shape_fn((d, k), |_| rng.gen_range(-1.0f32..1.0));
    orthonormalize(&mut q);
    for _ in 0..4 {
        let z = centred_times(&q);
        // (x − 1·meanᵀ)ᵀ z = xᵀz − mean · (1ᵀz)
        let col_sums = z.sum_axis(Axis(0));
        q = x.t().dot(&z)
            - &mean
                .view()
                .insert_axis(Axis(1))
                .dot(&col_sums.view().insert_axis(Axis(0)));
        orthonormalize(&mut q);
    }
    let proj = centred_times(&q);
    let mean_norm = proj
        .rows()
        .into_iter()
        .map(|r| r.dot(&r).sqrt())
        .sum::<f32>()
        / n as f32;
    let s = if mean_norm > 0.0 {
        1.0 / mean_norm
    } else {
        1.0
    };
    let mut out = Array2::<f32>::zeros((n, dim));
    out.slice_axis_mut(Axis(1), Slice::from(0..k))
        .assign(&(proj * s));
    out.into_raw_vec_and_offset().0
}

/// Modified Gram–Schmidt on the columns of `q`.
fn orthonormalize(q: &mut Array2<f32>) {
    for j in 0..q.ncols() {
        for i in 0..j {
            let dot = q.column(i).dot(&q.column(j));
            let ci = q.column(i).to_owned();
            q.column_mut(j).scaled_add(-dot, &ci);
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        if norm > 1e-12 {
            q.column_mut(j).mapv_inplace(|v| v / norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_opts() -> SequenceOptions {
        SequenceOptions {
            dim: 6,
            max_len: 5,
            blocks: 2,
            hidden: 7,
            negatives: 4,
            dropout: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn windows_cover_every_target_once() {
        let h = vec![(0..12).collect::<Vec<u32>>(), vec![5], vec![1, 2]];
        let w = windows(&h, 5);
        assert_eq!(
            w,
            vec![
                Window {
                    user: 0,
                    start: 6,
                    end: 12
                },
                Window {
                    user: 0,
                    start: 1,
                    end: 7
                },
                Window {
                    user: 0,
                    start: 0,
                    end: 2
                },
                Window {
                    user: 2,
                    start: 0,
                    end: 2
                },
            ]
        );
        // Targets 1..12 of user 0, each once.
        let mut t: Vec<usize> = w[..3].iter().flat_map(|w| w.start + 1..w.end).collect();
        t.sort();
        assert_eq!(t, (1..12).collect::<Vec<_>>());
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let x =
            Array2::from_shape_vec((2, 4), vec![0.3, -1.2, 0.5, 2.0, 0.1, -0.4, 0.9, 0.2]).unwrap();
        let c = Array2::from_shape_vec((2, 4), vec![0.7, 0.2, -0.9, -0.3, 1.1, 0.4, 0.3, -0.6])
            .unwrap();
        let loss = |x: &Array2<f32>| (&layer_norm(x).0 * &c).sum();
        let (y, inv) = layer_norm(&x);
        let dx = layer_norm_backward(&y, &inv, &c);
        for r in 0..2 {
            for k in 0..4 {
                let mut xp = x.clone();
                xp[[r, k]] += 1e-3;
                let mut xm = x.clone();
                xm[[r, k]] -= 1e-3;
                let fd = (loss(&xp) - loss(&xm)) / 2e-3;
                assert!((fd - dx[[r, k]]).abs() < 2e-3, "{fd} vs {}", dx[[r, k]]);
            }
        }
    }

    /// Every parameter's gradient, the item table's included (inputs,
    /// targets and negatives), against central differences of the loss, in
    /// f64 sums over a small model.
    #[test]
    fn gradients_match_finite_differences() {
        let opts = small_opts();
        let n = 9;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let init: Vec<f32> = (0..n * opts.dim)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let mut model = Sasrec::new(init, &opts);
        for b in &mut model.blocks {
            b.b1.w
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-0.2..0.2));
            b.b2.w
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-0.2..0.2));
        }
        let histories = vec![vec![0u32, 3, 5, 1, 7, 2, 8], vec![4u32, 6, 0]];
        let batch = windows(&histories, opts.max_len);
        let negs = [1u32, 2, 6, 8];
        let masks: Vec<Vec<f32>> = batch
            .iter()
            .map(|w| {
                (0..(w.end - w.start - 1) * opts.dim)
                    .map(|_| if rng.gen::<f32>() < 0.8 { 1.25 } else { 0.0 })
                    .collect()
            })
            .collect();
        let loss_at = |m: &Sasrec| -> f64 {
            let mut c = m.clone();
            c.backward(&histories, &batch, &negs, &masks, 1) as f64
        };
        let mut analytic_model = model.clone();
        analytic_model.backward(&histories, &batch, &negs, &masks, PART);
        analytic_model.items.g = analytic_model.dense_item_grad();
        let analytic: Vec<Vec<f32>> = analytic_model
            .params_mut()
            .iter()
            .map(|p| p.g.clone())
            .collect();
        // Parts of one window: the same gradients summed in another order.
        let mut one = model.clone();
        one.backward(&histories, &batch, &negs, &masks, 1);
        one.items.g = one.dense_item_grad();
        for (a, b) in analytic.iter().zip(one.params_mut().iter().map(|p| &p.g)) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5 + 1e-4 * x.abs(), "{x} vs {y}");
            }
        }
        let at: Vec<(usize, usize)> = analytic
            .iter()
            .enumerate()
            .flat_map(|(p, g)| {
                let len = g.len();
                [0, len / 3, len / 2, len - 1].map(|k| (p, k))
            })
            .collect();
        assert_eq!(at.len(), 4 * (2 + 7 * opts.blocks));
        crate::nn::assert_finite_differences(
            &mut model,
            Sasrec::params_mut,
            &at,
            &analytic,
            loss_at,
        );
    }

    /// Items 0..30 in three cycles of ten: after item i comes i + 1 in its
    /// cycle. Every user walks one cycle from a random start; a model that
    /// learnt the order ranks the true next item first.
    #[test]
    fn learns_a_planted_order() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let histories: Vec<Vec<u32>> = (0..120)
            .map(|u| {
                let c = (u % 3) as u32 * 10;
                let s = rng.gen_range(0..10u32);
                (0..15).map(|k| c + (s + k) % 10).collect()
            })
            .collect();
        let opts = SequenceOptions {
            dim: 16,
            max_len: 8,
            hidden: 32,
            epochs: 40,
            batch: 32,
            negatives: 16,
            lr: 0.01,
            dropout: 0.0,
            ..Default::default()
        };
        let init: Vec<f32> = (0..30 * 16).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let (model, loss) = Sasrec::train(&histories, init, &opts, &|_| {});
        assert!(loss.is_finite());
        let e = ArrayView2::from_shape((30, 16), model.item_vectors()).unwrap();
        let mut hits = 0;
        for c in 0..3u32 {
            for s in 0..10u32 {
                let h: Vec<u32> = (0..6).map(|k| c * 10 + (s + k) % 10).collect();
                let next = c * 10 + (s + 6) % 10;
                let u = model.user_vector(&h).unwrap();
                let scores = e.dot(&ndarray::ArrayView1::from(&u[..]));
                let best = (0..30)
                    .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                    .unwrap();
                hits += (best as u32 == next) as usize;
            }
        }
        assert!(hits >= 27, "{hits} of 30 next items ranked first");
    }

    #[test]
    fn the_initial_table_keeps_the_features_principal_directions() {
        // Rows along two directions of 5 dimensions, with little noise: the
        // first two columns of the table carry (nearly) all the variance.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (n, d) = (200, 5);
        let f: Vec<f32> = (0..n)
            .flat_map(|_| {
                let (a, b): (f32, f32) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
                let noise: Vec<f32> = (0..d).map(|_| rng.gen_range(-0.01..0.01)).collect();
                vec![
                    a + noise[0],
                    a + noise[1],
                    b + noise[2],
                    -b + noise[3],
                    noise[4],
                ]
            })
            .collect();
        let t = item_init(&f, d, 4, 1);
        assert_eq!(t.len(), n * 4);
        let var = |c: usize| (0..n).map(|i| t[i * 4 + c].powi(2)).sum::<f32>();
        let total: f32 = (0..4).map(var).sum();
        assert!(
            (var(0) + var(1)) / total > 0.99,
            "{}",
            (var(0) + var(1)) / total
        );
        let mean_norm: f32 = (0..n)
            .map(|i| {
                t[i * 4..i * 4 + 4]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt()
            })
            .sum::<f32>()
            / n as f32;
        assert!((mean_norm - 1.0).abs() < 1e-3, "{mean_norm}");
    }

    #[test]
    fn the_mask_lets_a_position_see_itself_and_before() {
        assert_eq!(causal_mask(2), vec![0.0, -1e9, 0.0, 0.0]);
    }
}
