//! Sparse item × item matrices stored in a generation: for each row, the
//! column ids and their weights, kept to the `keep` largest entries.
//!
//! On disk: `<name>.cols.bin` (list table of column ids) and
//! `<name>.vals.bin` (list table of the weights' f32 bit patterns, parallel).

use std::path::Path;

use vecrec_index::format::ListTable;
use vecrec_index::IndexError;

use crate::error::Result;

/// A row-sparse matrix with `n` rows and columns.
#[derive(Debug)]
pub struct SparseRows {
    cols: ListTable,
    vals: ListTable,
}

/// Keeps the `keep` entries of largest absolute value of a dense row, dropping zeros.
pub fn prune_row(row: &[f32], keep: usize) -> Vec<(u32, f32)> {
    let v: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .filter(|(_, x)| **x != 0.0 && x.is_finite())
        .map(|(i, x)| (i as u32, *x))
        .collect();
    prune_sparse(v, keep)
}

/// A sparse row `(column, weight)` cut to its `keep` weights largest in
/// magnitude (ties by column), sorted by column.
pub fn prune_sparse(mut v: Vec<(u32, f32)>, keep: usize) -> Vec<(u32, f32)> {
    if v.len() > keep {
        v.select_nth_unstable_by(keep, |a, b| {
            b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0))
        });
        v.truncate(keep);
    }
    v.sort_unstable_by_key(|e| e.0);
    v
}

impl SparseRows {
    /// Writes rows (each a list of (column, weight)) under `dir/name.*`.
    pub fn write(dir: &Path, name: &str, rows: &[Vec<(u32, f32)>]) -> Result<()> {
        let cols: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.iter().map(|e| e.0).collect())
            .collect();
        let vals: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.iter().map(|e| e.1.to_bits()).collect())
            .collect();
        ListTable::write(&dir.join(format!("{name}.cols.bin")), &cols)?;
        ListTable::write(&dir.join(format!("{name}.vals.bin")), &vals)?;
        Ok(())
    }

    /// Whether `dir` holds a matrix called `name`.
    pub fn exists(dir: &Path, name: &str) -> bool {
        dir.join(format!("{name}.cols.bin")).exists()
    }

    /// Opens and checks a matrix of `n` rows and columns.
    pub fn open(dir: &Path, name: &str, n: usize) -> Result<Self> {
        Self::open_shape(dir, name, n, n)
    }

    /// Opens and checks a matrix of `n` rows and `columns` columns (a
    /// shard's slice: a row for every item of the catalogue, a column for
    /// each of the shard's own items).
    pub fn open_shape(dir: &Path, name: &str, n: usize, columns: usize) -> Result<Self> {
        let cols = ListTable::open(&dir.join(format!("{name}.cols.bin")), true, columns as u32)?;
        // Any finite f32 bit pattern: u32::MAX excludes nothing useful, checks below catch NaN.
        let vals = ListTable::open(&dir.join(format!("{name}.vals.bin")), true, u32::MAX)?;
        let ok = cols.len() == n
            && vals.len() == n
            && (0..n).all(|i| cols.get(i).len() == vals.get(i).len());
        if !ok {
            return Err(IndexError::Corrupt {
                path: dir.join(format!("{name}.cols.bin")),
                reason: format!(
                    "{name}: {} column lists and {} value lists for {n} rows",
                    cols.len(),
                    vals.len()
                ),
            }
            .into());
        }
        Ok(Self { cols, vals })
    }

    /// Adds `scale · row(i)` into the dense accumulator `acc`.
    pub fn axpy(&self, i: u32, scale: f32, acc: &mut [f32]) {
        for (&c, &v) in self
            .cols
            .get(i as usize)
            .iter()
            .zip(self.vals.get(i as usize))
        {
            acc[c as usize] += scale * f32::from_bits(v);
        }
    }

    /// Row `i` as (column, weight) pairs, by column.
    pub fn row(&self, i: u32) -> Vec<(u32, f32)> {
        let cols = self.cols.get(i as usize);
        let vals = self.vals.get(i as usize);
        cols.iter()
            .zip(vals)
            .map(|(&c, &v)| (c, f32::from_bits(v)))
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.cols.len()
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        (0..self.cols.len()).map(|i| self.cols.get(i).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_largest_magnitudes_and_roundtrips() {
        let row = [0.0, -5.0, 1.0, 3.0, 0.5];
        assert_eq!(prune_row(&row, 2), vec![(1, -5.0), (3, 3.0)]);
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![prune_row(&row, 3), vec![], vec![(0, 1.5)], vec![], vec![]];
        SparseRows::write(dir.path(), "m", &rows).unwrap();
        let m = SparseRows::open(dir.path(), "m", 5).unwrap();
        let mut acc = vec![0.0; 5];
        m.axpy(0, 2.0, &mut acc);
        m.axpy(2, 1.0, &mut acc);
        assert_eq!(acc, vec![1.5, -10.0, 2.0, 6.0, 0.0]);
        assert_eq!(m.nnz(), 4);
        assert!(SparseRows::open(dir.path(), "m", 4).is_err());
    }
}
