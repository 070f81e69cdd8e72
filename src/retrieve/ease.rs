//! EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW
//! 2019) and, for catalogues too large for its dense solve, a neighbourhood
//! approximation of it.
//!
//! Column `j` of EASE's `B` is the ridge regression of item `j`'s column of
//! the user × item matrix `X` on every other item's column:
//! `B_{·j} = (G_{−j,−j} + λI)⁻¹ G_{−j,j}` with `G = XᵀX`; all columns at once
//! are the closed form `B = I − P·diag(1/diag P)`, `P = (G + λI)⁻¹`.
//!
//! - **Exact** ([`TrainOptions::ease_max_items`] items or fewer with an
//!   interaction): the closed form through one Cholesky factorisation
//!   (faer). It holds `G`, its factor and `P`, three dense `m × m` f64
//!   matrices: 2.4 GB at the default 10,000 items, 9.6 GB at 20,000.
//! - **Neighbourhood** (above it): column `j` regressed on its
//!   [`TrainOptions::ease_neighbours`] most co-occurring items only, a
//!   `K × K` system per item (feature-selected SLIM with an L2 penalty,
//!   Ning & Karypis 2012, which is EASE's regression restricted to a
//!   neighbourhood). `G` is kept sparse (only co-occurring pairs), built
//!   from an item → users index with a dense scratch row per thread, so
//!   memory grows with the co-occurring pairs and time with items × K³;
//!   each user's newest [`NEIGHBOURHOOD_HISTORY`] distinct items count.
//!
//! Either way each row of `B` (the weights an item in a history gives
//! others) is pruned to its `ease_keep` largest weights.

use std::collections::HashMap;

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use rayon::prelude::*;

use super::sparse::{prune_row, prune_sparse};
use super::{popularity, TrainOptions};
use crate::error::{Error, Result};
use crate::linalg::solve_spd;

/// Distinct items of a user's history (the newest ones) that count in the
/// neighbourhood variant's co-occurrences, so one very long history cannot
/// make the sparse Gram quadratic in it.
pub const NEIGHBOURHOOD_HISTORY: usize = 500;

/// Pruned sparse rows, one per item: (item, weight).
pub type Rows = Vec<Vec<(u32, f32)>>;

/// Which EASE a build trained, and over how many items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EaseKind {
    /// The closed form over every item with an interaction.
    Exact,
    /// The neighbourhood approximation.
    Neighbourhood,
}

/// EASE rows (pruned), one per item of the catalogue of `n` items, exact
/// when at most `opts.ease_max_items` items have an interaction, the
/// neighbourhood approximation otherwise (logged).
pub fn train_ease(histories: &[Vec<u32>], n: usize, opts: &TrainOptions) -> Result<Rows> {
    Ok(train_ease_kind(histories, n, opts)?.0)
}

/// [`train_ease`], also saying which variant ran.
pub fn train_ease_kind(
    histories: &[Vec<u32>],
    n: usize,
    opts: &TrainOptions,
) -> Result<(Rows, EaseKind)> {
    let lambda_ok = opts.ease_lambda > 0.0 && opts.ease_lambda.is_finite();
    if !lambda_ok {
        return Err(Error::invalid(format!(
            "ease_lambda must be > 0, got {}",
            opts.ease_lambda
        )));
    }
    let pop = popularity(histories, n);
    let items: Vec<u32> = (0..n as u32).filter(|&i| pop[i as usize] > 0.0).collect();
    if items.len() <= opts.ease_max_items {
        return Ok((exact(histories, n, items, opts)?, EaseKind::Exact));
    }
    if opts.ease_neighbours == 0 {
        return Err(Error::invalid(
            "ease_neighbours must be > 0 for catalogues above ease_max_items",
        ));
    }
    tracing::info!(
        items = items.len(),
        ease_max_items = opts.ease_max_items,
        neighbours = opts.ease_neighbours,
        "EASE: too many items for the exact solve; using the neighbourhood approximation"
    );
    Ok((neighbourhood(histories, n, opts), EaseKind::Neighbourhood))
}

/// Exact EASE over the items of `items` (sorted), rows for a catalogue of `n`.
fn exact(histories: &[Vec<u32>], n: usize, items: Vec<u32>, opts: &TrainOptions) -> Result<Rows> {
    let m = items.len();
    let local: HashMap<u32, usize> = items.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let mut g = Mat::<f64>::zeros(m, m);
    for h in histories {
        let mut l: Vec<usize> = h.iter().filter_map(|i| local.get(i).copied()).collect();
        l.sort_unstable();
        l.dedup();
        for &a in &l {
            for &b in &l {
                g[(a, b)] += 1.0;
            }
        }
    }
    for d in 0..m {
        g[(d, d)] += opts.ease_lambda as f64;
    }
    let p = g
        .llt(Side::Lower)
        .map_err(|e| Error::invalid(format!("EASE: Gram matrix is not positive definite: {e:?}")))?
        .inverse();
    drop(g);
    let diag: Vec<f64> = (0..m).map(|j| p[(j, j)]).collect();
    let local_rows: Rows = (0..m)
        .into_par_iter()
        .map(|a| {
            let row: Vec<f32> = (0..m)
                .map(|b| {
                    if a == b {
                        0.0
                    } else {
                        (-p[(a, b)] / diag[b]) as f32
                    }
                })
                .collect();
            prune_row(&row, opts.ease_keep)
                .into_iter()
                .map(|(b, w)| (items[b as usize], w))
                .collect()
        })
        .collect();
    let mut rows = vec![Vec::new(); n];
    for (k, r) in local_rows.into_iter().enumerate() {
        rows[items[k] as usize] = r;
    }
    Ok(rows)
}

/// The sparse Gram matrix `XᵀX` of binary histories: per item, the items
/// it co-occurs with (itself included) and in how many histories, by column.
pub fn sparse_gram(users: &[Vec<u32>], n: usize) -> Rows {
    let mut by_item: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (u, h) in users.iter().enumerate() {
        for &i in h {
            by_item[i as usize].push(u as u32);
        }
    }
    (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0f32; n], Vec::<u32>::new()),
            |(acc, touched), j| {
                for &u in &by_item[j] {
                    for &i in &users[u as usize] {
                        if acc[i as usize] == 0.0 {
                            touched.push(i);
                        }
                        acc[i as usize] += 1.0;
                    }
                }
                touched.sort_unstable();
                let row = touched
                    .iter()
                    .map(|&i| (i, std::mem::take(&mut acc[i as usize])))
                    .collect();
                touched.clear();
                row
            },
        )
        .collect()
}

/// `G[a][b]` from a sparse Gram row.
fn gram_at(row: &[(u32, f32)], b: u32) -> f32 {
    row.binary_search_by_key(&b, |e| e.0)
        .map_or(0.0, |k| row[k].1)
}

/// The neighbourhood approximation (see the module header).
fn neighbourhood(histories: &[Vec<u32>], n: usize, opts: &TrainOptions) -> Rows {
    // Binary histories: each user's newest distinct items, sorted.
    let users: Vec<Vec<u32>> = histories
        .par_iter()
        .map(|h| {
            let mut seen = std::collections::HashSet::new();
            let mut v: Vec<u32> = h
                .iter()
                .rev()
                .filter(|i| seen.insert(**i))
                .take(NEIGHBOURHOOD_HISTORY)
                .copied()
                .collect();
            v.sort_unstable();
            v
        })
        .collect();
    let gram = sparse_gram(&users, n);
    let k = opts.ease_neighbours;
    let lambda = opts.ease_lambda as f64;
    // Column j: (neighbour, weight) = how much a neighbour in a history
    // predicts j.
    let columns: Rows = (0..n)
        .into_par_iter()
        .map(|j| {
            let row = &gram[j];
            let mut nb: Vec<(u32, f32)> = row.iter().copied().filter(|e| e.0 != j as u32).collect();
            if nb.len() > k {
                nb.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                nb.truncate(k);
            }
            nb.sort_unstable_by_key(|e| e.0);
            let m = nb.len();
            if m == 0 {
                return Vec::new();
            }
            let mut a = vec![0f64; m * m];
            for (p, &(ip, _)) in nb.iter().enumerate() {
                let gp = &gram[ip as usize];
                for (q, &(iq, _)) in nb.iter().enumerate().skip(p) {
                    let g = gram_at(gp, iq) as f64;
                    a[p * m + q] = g;
                    a[q * m + p] = g;
                }
                a[p * m + p] += lambda;
            }
            let mut b: Vec<f64> = nb.iter().map(|e| e.1 as f64).collect();
            if !solve_spd(&mut a, &mut b, m) {
                return Vec::new();
            }
            nb.iter()
                .zip(b)
                .map(|(e, w)| (e.0, w as f32))
                .filter(|e| e.1 != 0.0 && e.1.is_finite())
                .collect()
        })
        .collect();
    drop(gram);
    // Transpose the columns into rows (pushed in column order, so sorted),
    // then prune each row.
    let mut rows: Rows = vec![Vec::new(); n];
    for (j, col) in columns.into_iter().enumerate() {
        for (i, w) in col {
            rows[i as usize].push((j as u32, w));
        }
    }
    rows.into_par_iter()
        .map(|r| prune_sparse(r, opts.ease_keep))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_items: usize, neighbours: usize) -> TrainOptions {
        TrainOptions {
            ease_lambda: 2.0,
            ease_keep: 100,
            ease_max_items: max_items,
            ease_neighbours: neighbours,
            ..Default::default()
        }
    }

    fn histories() -> Vec<Vec<u32>> {
        let mut h: Vec<Vec<u32>> = (0..40u32)
            .map(|u| (0..6).map(|s| (u * 7 + s * s * 3) % 23).collect())
            .collect();
        // One user with everything, so every pair co-occurs.
        h.push((0..23).collect());
        h
    }

    /// With every item in every neighbourhood, the approximation is EASE.
    #[test]
    fn the_neighbourhood_of_everything_is_exact_ease() {
        let h = histories();
        let (exact, k1) = train_ease_kind(&h, 23, &opts(100, 0)).unwrap();
        let (approx, k2) = train_ease_kind(&h, 23, &opts(10, 100)).unwrap();
        assert_eq!((k1, k2), (EaseKind::Exact, EaseKind::Neighbourhood));
        for (a, b) in exact.iter().zip(&approx) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.0, y.0);
                assert!((x.1 - y.1).abs() < 1e-4, "{x:?} vs {y:?}");
            }
        }
    }

    /// A neighbourhood of K keeps at most K weights per column, each from
    /// an item that co-occurs with the column's item.
    #[test]
    fn small_neighbourhoods_use_co_occurring_items_only() {
        let h: Vec<Vec<u32>> = (0..40u32)
            .map(|u| (0..6).map(|s| (u * 7 + s * s * 3) % 23).collect())
            .collect();
        let k = 3;
        let rows = train_ease(&h, 23, &opts(5, k)).unwrap();
        let users: Vec<Vec<u32>> = h
            .iter()
            .map(|x| {
                let mut v = x.clone();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let gram = sparse_gram(&users, 23);
        let mut per_column = vec![0usize; 23];
        for (i, r) in rows.iter().enumerate() {
            for &(j, _) in r {
                per_column[j as usize] += 1;
                assert!(gram_at(&gram[i], j) > 0.0, "{i} and {j} never co-occur");
                assert_ne!(i, j as usize);
            }
        }
        assert!(per_column.iter().all(|&c| c <= k), "{per_column:?}");
        assert!(per_column.contains(&k));
        // The sparse Gram counts co-occurrences: diagonal = popularity.
        let pop = popularity(&users, 23);
        for i in 0..23u32 {
            assert_eq!(gram_at(&gram[i as usize], i), pop[i as usize]);
        }
    }
}
