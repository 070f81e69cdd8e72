//! Readers and writers for the TEXMEX vector formats used by ANN benchmarks:
//! `.fvecs` (f32), `.bvecs` (u8) and `.ivecs` (i32); each vector is a
//! little-endian i32 dimension followed by that many values.

use std::path::Path;

use crate::error::{IndexError, Result};

fn read_generic<T: Copy>(
    path: &Path,
    elem: usize,
    conv: impl Fn(&[u8]) -> T,
) -> Result<(Vec<T>, usize)> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    let corrupt = |reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    let mut dim = None;
    let mut off = 0;
    while off < bytes.len() {
        if off + 4 > bytes.len() {
            return Err(corrupt(format!("truncated dimension at byte {off}")));
        }
        let d = i32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
        if d <= 0 || d > 1 << 20 {
            return Err(corrupt(format!("bad dimension {d} at byte {off}")));
        }
        let d = d as usize;
        if *dim.get_or_insert(d) != d {
            return Err(corrupt(format!(
                "dimension changes from {} to {d} at byte {off}",
                dim.unwrap_or(0)
            )));
        }
        off += 4;
        let end = off + d * elem;
        if end > bytes.len() {
            return Err(corrupt(format!("truncated vector at byte {off}")));
        }
        out.extend(bytes[off..end].chunks_exact(elem).map(&conv));
        off = end;
    }
    Ok((out, dim.unwrap_or(0)))
}

/// Reads `.fvecs` or `.bvecs` (chosen by extension) as f32; returns (row-major data, dim).
pub fn read_vectors(path: &Path) -> Result<(Vec<f32>, usize)> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("bvecs") => read_generic(path, 1, |b| b[0] as f32),
        Some("fvecs") => read_generic(path, 4, |b| {
            f32::from_le_bytes(b.try_into().expect("4 bytes"))
        }),
        other => Err(IndexError::InvalidParameter {
            name: "path",
            reason: format!(
                "{}: expected .fvecs or .bvecs, got {other:?}",
                path.display()
            ),
        }),
    }
}

/// Writes row-major `rows` of `dim` values each as `.fvecs`, atomically
/// (a reader sees the old file or the whole new one).
pub fn write_fvecs(path: &Path, rows: &[f32], dim: usize) -> Result<()> {
    write_generic(path, rows, dim, |v, out| {
        out.extend_from_slice(&v.to_le_bytes())
    })
}

/// Writes row-major `rows` of `dim` values each as `.ivecs`, atomically.
pub fn write_ivecs(path: &Path, rows: &[i32], dim: usize) -> Result<()> {
    write_generic(path, rows, dim, |v, out| {
        out.extend_from_slice(&v.to_le_bytes())
    })
}

fn write_generic<T: Copy>(
    path: &Path,
    rows: &[T],
    dim: usize,
    put: impl Fn(T, &mut Vec<u8>),
) -> Result<()> {
    if dim == 0 || dim > 1 << 20 || !rows.len().is_multiple_of(dim) {
        return Err(IndexError::InvalidParameter {
            name: "dim",
            reason: format!("{} values do not make rows of {dim}", rows.len()),
        });
    }
    let mut bytes = Vec::with_capacity(rows.len() / dim * 4 + std::mem::size_of_val(rows));
    for row in rows.chunks_exact(dim) {
        bytes.extend_from_slice(&(dim as i32).to_le_bytes());
        for &v in row {
            put(v, &mut bytes);
        }
    }
    crate::generation::write_atomic(path, &bytes)
}

/// Reads `.ivecs`; returns (row-major data, dim).
pub fn read_ivecs(path: &Path) -> Result<(Vec<i32>, usize)> {
    read_generic(path, 4, |b| {
        i32::from_le_bytes(b.try_into().expect("4 bytes"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_vectors_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [0.5f32, -1.25, 3.0, f32::MIN_POSITIVE, 7.75, -0.0];
        let f = dir.path().join("v.fvecs");
        write_fvecs(&f, &rows, 3).unwrap();
        // Two rows of (4-byte dimension + 3 floats).
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 2 * (4 + 12));
        let (back, dim) = read_vectors(&f).unwrap();
        assert_eq!((back, dim), (rows.to_vec(), 3));
        let ids = [4i32, -2, 9, 0];
        let g = dir.path().join("g.ivecs");
        write_ivecs(&g, &ids, 2).unwrap();
        assert_eq!(read_ivecs(&g).unwrap(), (ids.to_vec(), 2));
    }

    #[test]
    fn rows_that_do_not_fill_the_dimension_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.fvecs");
        assert!(write_fvecs(&f, &[1.0, 2.0, 3.0], 2).is_err());
        assert!(write_fvecs(&f, &[1.0], 0).is_err());
        assert!(!f.exists());
    }
}
