//! The small neural-network toolkit behind the two-tower user encoder and the
//! cross-attention reranker: parameters with Adam (Kingma & Ba, "Adam: A
//! Method for Stochastic Optimization", ICLR 2015), dense algebra through
//! `ndarray`, gradients written out by hand and checked against finite
//! differences in the tests, and an ONNX writer ([`onnx`]); the exported
//! models are served through [`crate::runtime::OnnxModel`].
//!
//! Why not candle or burn: the two models are a few matrix products, a softmax
//! and a normalisation, so their gradients fit on a page; written out, they
//! train in seconds on two cores with no extra compile time, and exporting
//! them to ONNX is a direct transcription of the same forward pass. See
//! ARCHITECTURE.md.

pub mod onnx;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2};
use rand::Rng;

/// A trainable matrix (or vector, with one row) and its Adam moments.
#[derive(Clone, Debug)]
pub struct Param {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values, row-major.
    pub w: Vec<f32>,
    /// Gradient accumulated by the last backward pass.
    pub g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Param {
    /// A `rows × cols` matrix drawn uniformly from ±sqrt(6 / (rows + cols))
    /// (Glorot & Bengio 2010).
    pub fn glorot(rows: usize, cols: usize, rng: &mut impl Rng) -> Self {
        let a = (6.0 / (rows + cols) as f32).sqrt();
        let w = (0..rows * cols).map(|_| rng.gen_range(-a..a)).collect();
        Self::from_values(rows, cols, w)
    }

    /// A zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::from_values(rows, cols, vec![0.0; rows * cols])
    }

    /// A matrix with the given values.
    pub fn from_values(rows: usize, cols: usize, w: Vec<f32>) -> Self {
        assert_eq!(w.len(), rows * cols);
        let n = w.len();
        Self {
            rows,
            cols,
            w,
            g: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// The values as a matrix.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.rows, self.cols), &self.w).expect("shape matches")
    }

    /// The values as a vector (for one-row parameters).
    pub fn vector(&self) -> ArrayView1<'_, f32> {
        ArrayView1::from(&self.w[..])
    }

    /// The gradient as a matrix.
    pub fn grad_mut(&mut self) -> ArrayViewMut2<'_, f32> {
        ArrayViewMut2::from_shape((self.rows, self.cols), &mut self.g).expect("shape matches")
    }

    /// Clears the gradient.
    pub fn zero_grad(&mut self) {
        self.g.iter_mut().for_each(|g| *g = 0.0);
    }
}

/// Adam with decoupled weight decay (AdamW, Loshchilov & Hutter, ICLR 2019).
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Weight decay per step, relative to the learning rate.
    pub weight_decay: f32,
    t: i32,
}

impl Adam {
    /// A new optimiser.
    pub fn new(lr: f32, weight_decay: f32) -> Self {
        Self {
            lr,
            weight_decay,
            t: 0,
        }
    }

    /// One step over `params` with their accumulated gradients, which are then cleared.
    pub fn step(&mut self, params: &mut [&mut Param]) {
        self.t += 1;
        for p in params.iter_mut() {
            for k in 0..p.w.len() {
                let g = p.g[k];
                self.update(p, k, g);
            }
            p.zero_grad();
        }
    }

    /// The update of [`Adam::step`] for the rows of a table that have a
    /// gradient (`rows`: row number and its gradient, `p.cols` values),
    /// after `step` of the same batch, whose count it uses; the other rows
    /// and their moments stay as they are ("lazy" Adam, for an embedding
    /// table of which a batch touches a few rows).
    pub fn step_rows(&self, p: &mut Param, rows: &[(u32, Vec<f32>)]) {
        for (i, g) in rows {
            let base = *i as usize * p.cols;
            for (c, &gv) in g.iter().enumerate().take(p.cols) {
                self.update(p, base + c, gv);
            }
        }
    }

    fn update(&self, p: &mut Param, k: usize, g: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        let t = self.t.max(1);
        let c1 = 1.0 - B1.powi(t);
        let c2 = 1.0 - B2.powi(t);
        p.m[k] = B1 * p.m[k] + (1.0 - B1) * g;
        p.v[k] = B2 * p.v[k] + (1.0 - B2) * g * g;
        let step = (p.m[k] / c1) / ((p.v[k] / c2).sqrt() + EPS);
        p.w[k] -= self.lr * (step + self.weight_decay * p.w[k]);
    }
}

/// `x / |x|` per row, in place; returns the norms.
pub fn normalize_rows(x: &mut ndarray::Array2<f32>) -> Vec<f32> {
    x.rows_mut()
        .into_iter()
        .map(|mut r| {
            let n = r.dot(&r).sqrt().max(1e-12);
            r.mapv_inplace(|v| v / n);
            n
        })
        .collect()
}

/// Backward of [`normalize_rows`]: given the outputs `y`, their norms and the
/// gradient `dy`, the gradient of the inputs, `(dy − y (y·dy)) / |x|`.
pub fn normalize_rows_backward(
    y: &ndarray::Array2<f32>,
    norms: &[f32],
    dy: &ndarray::Array2<f32>,
) -> ndarray::Array2<f32> {
    let mut dx = dy.clone();
    for ((mut d, yr), n) in dx.rows_mut().into_iter().zip(y.rows()).zip(norms) {
        let dot = yr.dot(&d);
        d.zip_mut_with(&yr, |dv, yv| *dv = (*dv - yv * dot) / n);
    }
    dx
}

/// Test helper: asserts, at each `(p, k)` of `at`, that the analytic
/// gradient `analytic[p][k]` matches the central finite difference of
/// `loss` in value `k` of parameter `p` (`params` lists a model's
/// parameters in a fixed order).
#[cfg(test)]
pub(crate) fn assert_finite_differences<M>(
    model: &mut M,
    params: fn(&mut M) -> Vec<&mut Param>,
    at: &[(usize, usize)],
    analytic: &[Vec<f32>],
    loss: impl Fn(&M) -> f64,
) {
    let eps = 1e-2f32;
    for &(p, k) in at {
        let orig = params(model)[p].w[k];
        params(model)[p].w[k] = orig + eps;
        let up = loss(model);
        params(model)[p].w[k] = orig - eps;
        let down = loss(model);
        params(model)[p].w[k] = orig;
        let fd = (up - down) / (2.0 * eps as f64);
        let an = analytic[p][k] as f64;
        assert!(
            (fd - an).abs() < 2e-3 + 0.05 * an.abs(),
            "param {p}[{k}]: finite difference {fd}, analytic {an}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn normalize_backward_matches_finite_differences() {
        let x = Array2::from_shape_vec((2, 3), vec![0.3, -1.2, 0.5, 2.0, 0.1, -0.4]).unwrap();
        let c = Array2::from_shape_vec((2, 3), vec![0.7, 0.2, -0.9, -0.3, 1.1, 0.4]).unwrap();
        let loss = |x: &Array2<f32>| {
            let mut y = x.clone();
            normalize_rows(&mut y);
            (&y * &c).sum()
        };
        let mut y = x.clone();
        let n = normalize_rows(&mut y);
        let dx = normalize_rows_backward(&y, &n, &c);
        for r in 0..2 {
            for k in 0..3 {
                let mut xp = x.clone();
                xp[[r, k]] += 1e-3;
                let mut xm = x.clone();
                xm[[r, k]] -= 1e-3;
                let fd = (loss(&xp) - loss(&xm)) / 2e-3;
                assert!((fd - dx[[r, k]]).abs() < 1e-3, "{fd} vs {}", dx[[r, k]]);
            }
        }
    }

    /// A row with a gradient moves as a dense step would move it; rows
    /// without one keep their values, though a dense step would decay them.
    #[test]
    fn a_lazy_step_updates_only_the_rows_with_a_gradient() {
        let start = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dense = Param::from_values(3, 2, start.clone());
        let mut lazy = dense.clone();
        dense.g = vec![0.0, 0.0, 0.5, -0.5, 0.0, 0.0];
        Adam::new(0.1, 0.01).step(&mut [&mut dense]);
        let mut opt = Adam::new(0.1, 0.01);
        opt.step(&mut []);
        opt.step_rows(&mut lazy, &[(1, vec![0.5, -0.5])]);
        assert_eq!(lazy.w[2..4], dense.w[2..4]);
        assert_ne!(lazy.w[2..4], start[2..4]);
        assert_eq!(lazy.w[..2], start[..2]);
        assert_eq!(lazy.w[4..], start[4..]);
        assert_ne!(dense.w[..2], start[..2]);
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut p = Param::from_values(1, 2, vec![3.0, -2.0]);
        let mut opt = Adam::new(0.1, 0.0);
        for _ in 0..500 {
            p.g = p.w.iter().map(|w| 2.0 * (w - 1.0)).collect();
            opt.step(&mut [&mut p]);
        }
        assert!(p.w.iter().all(|w| (w - 1.0).abs() < 1e-2), "{:?}", p.w);
    }
}
