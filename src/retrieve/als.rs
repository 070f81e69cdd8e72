//! Implicit-feedback matrix factorisation by alternating least squares (Hu,
//! Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets",
//! ICDM 2008).
//!
//! Every observed (user, item) pair has preference 1 and confidence `1 + α`;
//! every other pair preference 0 and confidence 1. Each half-step solves, for
//! every user (then every item) in parallel,
//! `(YᵀY + α·Y_uᵀY_u + λI) x_u = (1 + α)·Σ_{i∈u} y_i`
//! by a few conjugate-gradient steps started from the row's previous factors
//! (Takács, Pilászy & Tikk, "Applications of the Conjugate Gradient Method
//! for Implicit Feedback Collaborative Filtering", RecSys 2011), or exactly
//! with a Cholesky factorisation of the `f × f` system (`cg_steps` 0); `YᵀY`
//! is computed once per half-step. The exact solve folds a new history into
//! a user vector at query time. Item factors are served from their own HNSW index
//! (inner product).

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

pub use crate::config::AlsOptions;
use crate::error::{Error, Result};
use crate::linalg::solve_spd;

/// Trained factors, row-major.
#[derive(Clone, Debug)]
pub struct AlsModel {
    /// Factors per row.
    pub factors: usize,
    /// User factors, `users × factors`.
    pub users: Vec<f32>,
    /// Item factors, `items × factors`.
    pub items: Vec<f32>,
}

/// `YᵀY` of a row-major `rows × f` matrix. Blocks are summed in a fixed order,
/// so the result does not depend on thread scheduling.
pub fn gram(y: &[f32], f: usize) -> Vec<f64> {
    let blocks: Vec<Vec<f64>> = y
        .par_chunks(f * 256)
        .map(|block| {
            let mut g = vec![0f64; f * f];
            for row in block.chunks_exact(f) {
                for a in 0..f {
                    let ra = row[a] as f64;
                    for b in 0..f {
                        g[a * f + b] += ra * row[b] as f64;
                    }
                }
            }
            g
        })
        .collect();
    let mut g = vec![0f64; f * f];
    for b in blocks {
        g.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    }
    g
}

/// The least-squares factor of one row given the other side's factors `y`,
/// their Gram matrix, and the row's observed columns.
pub fn solve_row(y: &[f32], yty: &[f64], observed: &[u32], opts: &AlsOptions) -> Vec<f32> {
    let f = opts.factors;
    let mut a = yty.to_vec();
    let mut b = vec![0f64; f];
    let alpha = opts.alpha as f64;
    for &i in observed {
        let v = &y[i as usize * f..(i as usize + 1) * f];
        for p in 0..f {
            let vp = v[p] as f64;
            b[p] += (1.0 + alpha) * vp;
            for q in 0..f {
                a[p * f + q] += alpha * vp * v[q] as f64;
            }
        }
    }
    for d in 0..f {
        a[d * f + d] += opts.regularization as f64;
    }
    if observed.is_empty() || !solve_spd(&mut a, &mut b, f) {
        return vec![0.0; f];
    }
    b.into_iter().map(|x| x as f32).collect()
}

/// `steps` conjugate-gradient steps on one row's system, from its current
/// factors `x` (updated in place): the system of [`solve_row`], with
/// `A·v = YᵀY·v + λv + α·Σ_{i∈u} (y_i·v) y_i` applied without forming `A`.
pub fn cg_row(
    y: &[f32],
    yty: &[f64],
    observed: &[u32],
    opts: &AlsOptions,
    x: &mut [f32],
    steps: usize,
) {
    let f = opts.factors;
    if observed.is_empty() {
        x.fill(0.0);
        return;
    }
    let (alpha, lambda) = (opts.alpha as f64, opts.regularization as f64);
    let apply = |v: &[f64], out: &mut [f64]| {
        for (p, o) in out.iter_mut().enumerate() {
            let row = &yty[p * f..(p + 1) * f];
            *o = row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() + lambda * v[p];
        }
        for &i in observed {
            let yi = &y[i as usize * f..(i as usize + 1) * f];
            let dot: f64 = yi.iter().zip(v).map(|(a, b)| *a as f64 * b).sum();
            out.iter_mut()
                .zip(yi)
                .for_each(|(o, a)| *o += alpha * dot * *a as f64);
        }
    };
    let mut xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    // r = b − A·x with b = (1 + α)·Σ y_i.
    let mut r = vec![0f64; f];
    apply(&xd, &mut r);
    r.iter_mut().for_each(|v| *v = -*v);
    for &i in observed {
        let yi = &y[i as usize * f..(i as usize + 1) * f];
        r.iter_mut()
            .zip(yi)
            .for_each(|(o, a)| *o += (1.0 + alpha) * *a as f64);
    }
    let mut p = r.clone();
    let mut rs: f64 = r.iter().map(|v| v * v).sum();
    let mut ap = vec![0f64; f];
    for _ in 0..steps {
        if rs < 1e-20 {
            break;
        }
        apply(&p, &mut ap);
        let step = rs / p.iter().zip(&ap).map(|(a, b)| a * b).sum::<f64>();
        xd.iter_mut().zip(&p).for_each(|(x, p)| *x += step * p);
        r.iter_mut().zip(&ap).for_each(|(r, a)| *r -= step * a);
        let next: f64 = r.iter().map(|v| v * v).sum();
        p.iter_mut()
            .zip(&r)
            .for_each(|(p, r)| *p = r + next / rs * *p);
        rs = next;
    }
    x.iter_mut().zip(xd).for_each(|(x, v)| *x = v as f32);
}

/// One half-step: every row of `out` (one per entry of `rows`) from the other
/// side's factors `y`, by conjugate gradient from its current value or exactly.
fn half_step(y: &[f32], rows: &[Vec<u32>], out: &mut [f32], opts: &AlsOptions) {
    let f = opts.factors;
    let yty = gram(y, f);
    out.par_chunks_mut(f)
        .zip(rows.par_iter())
        .for_each(|(x, observed)| {
            if opts.cg_steps == 0 {
                x.copy_from_slice(&solve_row(y, &yty, observed, opts));
            } else {
                cg_row(y, &yty, observed, opts, x, opts.cg_steps);
            }
        });
}

/// Trains ALS on `histories` (per user, item ids) over `n_items` items.
pub fn train(histories: &[Vec<u32>], n_items: usize, opts: &AlsOptions) -> Result<AlsModel> {
    train_with_progress(histories, n_items, opts, &|_| {})
}

/// [`train`], calling `progress` with the iterations done after each one.
pub fn train_with_progress(
    histories: &[Vec<u32>],
    n_items: usize,
    opts: &AlsOptions,
    progress: &dyn Fn(usize),
) -> Result<AlsModel> {
    let f = opts.factors;
    if f == 0 || f > 512 || opts.iterations == 0 || opts.regularization < 0.0 || opts.alpha < 0.0 {
        return Err(Error::invalid(format!("invalid ALS options {opts:?}")));
    }
    let mut by_item: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    let users: Vec<Vec<u32>> = histories
        .iter()
        .map(|h| {
            let mut v = h.clone();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    for (u, h) in users.iter().enumerate() {
        for &i in h {
            by_item[i as usize].push(u as u32);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let scale = 0.01;
    let mut item_f: Vec<f32> = (0..n_items * f)
        .map(|_| rng.gen_range(-scale..scale))
        .collect();
    let mut user_f = vec![0f32; users.len() * f];
    for it in 0..opts.iterations {
        half_step(&item_f, &users, &mut user_f, opts);
        half_step(&user_f, &by_item, &mut item_f, opts);
        progress(it + 1);
    }
    Ok(AlsModel {
        factors: f,
        users: user_f,
        items: item_f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two blocks of users and items: each user's top items come from their own block.
    #[test]
    fn factors_separate_two_communities() {
        let mut h = Vec::new();
        for u in 0..40u32 {
            let base = if u < 20 { 0 } else { 10 };
            h.push(
                (0..10)
                    .filter(|i| (i + u) % 3 != 0)
                    .map(|i| base + i)
                    .collect::<Vec<u32>>(),
            );
        }
        let opts = AlsOptions {
            factors: 8,
            iterations: 10,
            ..Default::default()
        };
        for cg_steps in [0, 3] {
            check_communities(
                &h,
                &train(
                    &h,
                    20,
                    &AlsOptions {
                        cg_steps,
                        ..opts.clone()
                    },
                )
                .unwrap(),
            );
        }
    }

    /// Conjugate gradient reaches the exact solution of a row's system in
    /// at most f steps, and three steps from zero already come close.
    #[test]
    fn conjugate_gradient_reaches_the_exact_row() {
        let f = 6;
        let y: Vec<f32> = (0..30 * f)
            .map(|k| ((k * 37 % 23) as f32 - 11.0) / 10.0)
            .collect();
        let yty = gram(&y, f);
        let opts = AlsOptions {
            factors: f,
            regularization: 0.5,
            alpha: 4.0,
            ..Default::default()
        };
        let observed = [1u32, 4, 9, 17, 22];
        let exact = solve_row(&y, &yty, &observed, &opts);
        assert!(exact.iter().any(|v| v.abs() > 1e-3));
        let err = |steps: usize| {
            let mut x = vec![0f32; f];
            cg_row(&y, &yty, &observed, &opts, &mut x, steps);
            let norm: f32 = exact.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt()
                / norm
        };
        assert!(err(f) < 1e-4, "{} steps: relative error {}", f, err(f));
        assert!(err(3) < 0.5, "3 steps: relative error {}", err(3));
        assert!(err(1) > err(f), "one step is not already exact");
        let mut none = vec![0.5f32; f];
        cg_row(&y, &yty, &[], &opts, &mut none, 3);
        assert_eq!(none, vec![0.0; f]);
    }

    fn check_communities(h: &[Vec<u32>], m: &AlsModel) {
        for (u, hist) in h.iter().enumerate() {
            let x = &m.users[u * 8..(u + 1) * 8];
            let score = |i: usize| {
                x.iter()
                    .zip(&m.items[i * 8..(i + 1) * 8])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            };
            let best = (0..20)
                .filter(|i| !hist.contains(&(*i as u32)))
                .max_by(|a, b| score(*a).total_cmp(&score(*b)))
                .unwrap();
            assert_eq!(best < 10, u < 20, "user {u} best item {best}");
        }
    }
}
