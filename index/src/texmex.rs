//! Readers for the TEXMEX vector formats used by ANN benchmarks: `.fvecs`
//! (f32), `.bvecs` (u8) and `.ivecs` (i32); each vector is an i32 dimension
//! followed by that many values.

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

/// Reads `.ivecs`; returns (row-major data, dim).
pub fn read_ivecs(path: &Path) -> Result<(Vec<i32>, usize)> {
    read_generic(path, 4, |b| {
        i32::from_le_bytes(b.try_into().expect("4 bytes"))
    })
}
