//! Implicit-feedback matrix factorisation by alternating least squares (Hu,
//! Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets",
//! ICDM 2008).
//!
//! Every observed (user, item) pair has preference 1 and confidence `1 + α`;
//! every other pair preference 0 and confidence 1. Each half-step solves, for
//! every user (then every item) in parallel,
//! `(YᵀY + α·Y_uᵀY_u + λI) x_u = (1 + α)·Σ_{i∈u} y_i`
//! with a Cholesky factorisation of the `f × f` system; `YᵀY` is computed once
//! per half-step. The same solve folds a new history into a user vector at
//! query time. Item factors are served from their own HNSW index
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
        let yty = gram(&item_f, f);
        user_f = users
            .par_iter()
            .flat_map_iter(|h| solve_row(&item_f, &yty, h, opts))
            .collect();
        let xtx = gram(&user_f, f);
        item_f = by_item
            .par_iter()
            .flat_map_iter(|us| solve_row(&user_f, &xtx, us, opts))
            .collect();
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
        let m = train(&h, 20, &opts).unwrap();
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
