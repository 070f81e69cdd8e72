//! Scalar int8 quantisation with oversampling and exact rescoring.
//!
//! Every value is mapped to `round(x / s)` clipped to ±127, with one scale `s`
//! for the whole store: the 99.99th percentile of `|x|` over a sample, divided
//! by 127, so a rare outlier does not waste the range. One scale keeps the
//! distance an integer sum (`s²·Σ(a−b)²` for L2, `1 − s²·Σa·b` for cosine,
//! `−s²·Σa·b` for inner product) that vectorises well. A quantised search
//! walks the graph on the codes (a quarter of the bytes of the vectors),
//! takes `oversample·k` candidates and rescores them exactly with the f32
//! vectors, so what it returns is ranked by true distances.
//!
//! The same file can instead hold IEEE half-precision copies of the vectors
//! ([`CodeKind::F16`]): half the bytes, distances within about 1e-3 of the
//! exact ones, computed against the f32 query (F16C conversion on x86-64).
//!
//! File `codes.bin` (envelope kind `vectors`, fields `[n, dim, scale bits,
//! kind, 0]`, kind 1 = int8, 2 = f16): the codes, row-major.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::format::{CheckedFile, FileWriter, Kind};
use crate::Metric;

/// File of the int8 codes in a generation.
pub const CODES_FILE: &str = "codes.bin";

/// Candidates per result that a quantised search rescores exactly.
pub const OVERSAMPLE: usize = 3;

/// The scale of a store: the 99.99th percentile of |x| (over at most 1M
/// sampled values) divided by 127.
pub fn scale_of(vectors: &[f32]) -> f32 {
    let step = (vectors.len() / 1_000_000).max(1);
    let mut sample: Vec<f32> = vectors.iter().step_by(step).map(|x| x.abs()).collect();
    if sample.is_empty() {
        return 1.0;
    }
    let at = ((sample.len() as f64 * 0.9999) as usize).min(sample.len() - 1);
    let (_, v, _) = sample.select_nth_unstable_by(at, |a, b| a.total_cmp(b));
    let top = *v;
    if top > 0.0 {
        top / 127.0
    } else {
        1.0
    }
}

/// Quantises one vector.
pub fn encode(x: &[f32], scale: f32, out: &mut Vec<i8>) {
    out.clear();
    out.extend(
        x.iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
    );
}

/// What a codes file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// int8 with one global scale.
    #[default]
    Int8,
    /// IEEE half precision.
    F16,
}

impl CodeKind {
    fn code(self) -> u64 {
        match self {
            CodeKind::Int8 => 1,
            CodeKind::F16 => 2,
        }
    }
    pub(crate) fn bytes(self) -> usize {
        match self {
            CodeKind::Int8 => 1,
            CodeKind::F16 => 2,
        }
    }
}

/// Writes the codes of `vectors` (`n × dim`).
pub fn write(dir: &Path, vectors: &[f32], dim: usize, kind: CodeKind) -> Result<f32> {
    let n = vectors.len() / dim.max(1);
    let scale = match kind {
        CodeKind::Int8 => scale_of(vectors),
        CodeKind::F16 => 1.0,
    };
    let mut w = FileWriter::create(
        &dir.join(CODES_FILE),
        Kind::VECTORS,
        [n as u64, dim as u64, scale.to_bits() as u64, kind.code(), 0],
    )?;
    if kind == CodeKind::F16 {
        let mut buf: Vec<u16> = Vec::with_capacity(dim * 1024);
        for v in vectors.chunks(dim * 1024) {
            buf.clear();
            buf.extend(v.iter().map(|x| half::f16::from_f32(*x).to_bits()));
            w.write_pod(&buf)?;
        }
        w.finish()?;
        return Ok(scale);
    }
    let mut row = Vec::with_capacity(dim);
    let mut buf: Vec<u8> = Vec::with_capacity(dim * 1024);
    for v in vectors.chunks_exact(dim) {
        encode(v, scale, &mut row);
        buf.extend(row.iter().map(|&c| c as u8));
        if buf.len() >= dim * 1024 {
            w.write(&buf)?;
            buf.clear();
        }
    }
    w.write(&buf)?;
    w.finish()?;
    Ok(scale)
}

/// Opened int8 codes.
#[derive(Debug)]
pub struct Codes {
    file: CheckedFile,
    n: usize,
    pub(crate) dim: usize,
    scale: f32,
    pub(crate) kind: CodeKind,
}

impl Codes {
    /// Opens the codes of a generation with `n` vectors of `dim`, if present.
    pub fn open(dir: &Path, n: usize, dim: usize, verify: bool) -> Result<Option<Self>> {
        let path = dir.join(CODES_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let file = CheckedFile::open(&path, Kind::VECTORS, verify)?;
        let [fn_, fdim, bits, kind, _] = file.fields();
        let scale = f32::from_bits(bits as u32);
        let kind = match kind {
            1 => CodeKind::Int8,
            2 => CodeKind::F16,
            _ => return Err(file.corrupt(format!("unknown code kind {kind}"))),
        };
        if fn_ as usize != n || fdim as usize != dim {
            return Err(file.corrupt(format!(
                "codes for {fn_} × {fdim}, the store has {n} × {dim}"
            )));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(file.corrupt(format!("bad scale {scale}")));
        }
        let need = n as u128 * dim as u128 * kind.bytes() as u128;
        if file.payload().len() as u128 != need {
            return Err(file.corrupt(format!(
                "payload is {} bytes, {n} × {dim} {kind:?} codes need {need}",
                file.payload().len(),
            )));
        }
        if kind == CodeKind::F16 {
            file.payload_as::<u16>()?;
        }
        file.advise_random();
        Ok(Some(Self {
            file,
            n,
            dim,
            scale,
            kind,
        }))
    }

    /// What the codes are.
    pub fn kind(&self) -> CodeKind {
        self.kind
    }

    /// The int8 codes of row `i` (empty for f16 codes).
    pub fn row(&self, i: u32) -> &[i8] {
        if self.kind != CodeKind::Int8 {
            return &[];
        }
        let b = &self.file.payload()[i as usize * self.dim..(i as usize + 1) * self.dim];
        bytemuck::cast_slice(b)
    }

    /// The f16 bits of row `i` (empty for int8 codes).
    pub fn row_f16(&self, i: u32) -> &[u16] {
        if self.kind != CodeKind::F16 {
            return &[];
        }
        let all: &[u16] = self.file.payload_as().unwrap_or(&[]);
        &all[i as usize * self.dim..(i as usize + 1) * self.dim]
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Bytes of codes.
    pub fn bytes(&self) -> usize {
        self.n * self.dim * self.kind.bytes()
    }

    /// The approximate distance between an f32 query and row `i` of f16
    /// codes, on the scale of `metric.distance`.
    #[inline]
    pub fn distance_f16(&self, metric: Metric, q: &[f32], i: u32) -> f32 {
        let r = self.row_f16(i);
        match metric {
            Metric::L2 => crate::simd::l2_f16(q, r),
            Metric::Cosine => 1.0 - crate::simd::dot_f16(q, r),
            Metric::InnerProduct => -crate::simd::dot_f16(q, r),
        }
    }

    /// The approximate distance between a quantised query and row `i` of
    /// int8 codes, on the scale of `metric.distance`.
    #[inline]
    pub fn distance(&self, metric: Metric, q: &[i8], i: u32) -> f32 {
        code_distance(metric, self.scale * self.scale, q, self.row(i))
    }

    /// [`Codes::distance`] to four rows at once (their arithmetic overlaps).
    #[inline]
    pub fn distance4(&self, metric: Metric, q: &[i8], ids: [u32; 4]) -> [f32; 4] {
        let s2 = self.scale * self.scale;
        let rows = ids.map(|i| self.row(i));
        match metric {
            Metric::L2 => crate::simd::l2_i8_4(q, rows).map(|d| s2 * d as f32),
            Metric::Cosine => crate::simd::dot_i8_4(q, rows).map(|d| 1.0 - s2 * d as f32),
            Metric::InnerProduct => crate::simd::dot_i8_4(q, rows).map(|d| -s2 * d as f32),
        }
    }
}

/// The distance between two int8 code rows of one scale (`s2` = scale²),
/// on the scale of `metric.distance`.
#[inline]
pub fn code_distance(metric: Metric, s2: f32, a: &[i8], b: &[i8]) -> f32 {
    match metric {
        Metric::L2 => s2 * l2_i8(a, b) as f32,
        Metric::Cosine => 1.0 - s2 * dot_i8(a, b) as f32,
        Metric::InnerProduct => -s2 * dot_i8(a, b) as f32,
    }
}

/// `Σ (a − b)²` over int8 codes, accumulated in i32.
#[inline]
pub fn l2_i8(a: &[i8], b: &[i8]) -> i32 {
    crate::simd::l2_i8(a, b)
}

/// `Σ a·b` over int8 codes, accumulated in i32.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    crate::simd::dot_i8(a, b)
}

/// The least f32 at or above `x` (+∞ past the largest).
pub(crate) fn f32_at_or_above(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f.next_up()
    } else {
        f
    }
}

/// Int8 copies of f32 rows with one scale a row (`row ≈ scale · codes`),
/// and what bounds a distance computed on them: each row's norm and the
/// norm of its rounding error (both rounded up; +∞ for a row holding a
/// value that is not finite). The first pass of
/// [`crate::exact::search_bounded`], which reads these 1 + 12/dim bytes a
/// value instead of 4, and then answers exactly as the f32 scan would.
#[derive(Debug)]
pub struct RowCodes {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    norms: Vec<f32>,
    errors: Vec<f32>,
}

impl RowCodes {
    /// The codes of `vectors` (row-major, `dim` columns).
    pub fn new(vectors: &[f32], dim: usize) -> Self {
        let n = vectors.len() / dim.max(1);
        let mut out = Self {
            dim,
            codes: Vec::with_capacity(n * dim),
            scales: Vec::with_capacity(n),
            norms: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
        };
        // Rounded up: the f64 sums are far more precise than the f32 they become.
        let up = |x: f64| f32_at_or_above(x * (1.0 + 1e-12));
        let mut codes = Vec::with_capacity(dim);
        for row in vectors.chunks_exact(dim.max(1)).take(n) {
            if row.iter().any(|x| !x.is_finite()) {
                out.codes.extend(std::iter::repeat_n(0, dim));
                out.scales.push(0.0);
                out.norms.push(f32::INFINITY);
                out.errors.push(f32::INFINITY);
                continue;
            }
            let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = max / 127.0;
            if scale > 0.0 {
                encode(row, scale, &mut codes);
            } else {
                codes.clear();
                codes.resize(dim, 0);
            }
            let (mut norm2, mut err2) = (0f64, 0f64);
            for (&x, &c) in row.iter().zip(&codes) {
                let d = x as f64 - scale as f64 * c as f64;
                norm2 += x as f64 * x as f64;
                err2 += d * d;
            }
            out.codes.extend_from_slice(&codes);
            out.scales.push(scale);
            out.norms.push(up(norm2.sqrt()));
            out.errors.push(up(err2.sqrt()));
        }
        out
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// The number of columns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`'s codes.
    #[inline]
    pub fn codes(&self, i: u32) -> &[i8] {
        let i = i as usize;
        &self.codes[i * self.dim..(i + 1) * self.dim]
    }

    /// Row `i`'s scale, norm and rounding error's norm.
    #[inline]
    pub fn terms(&self, i: u32) -> (f32, f32, f32) {
        let i = i as usize;
        (self.scales[i], self.norms[i], self.errors[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_kernels_match_naive_sums() {
        let a: Vec<i8> = (0..37).map(|i| (i * 7 % 255) as u8 as i8).collect();
        let b: Vec<i8> = (0..37).map(|i| (i * 13 % 251) as u8 as i8).collect();
        let l2: i32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as i32 - *y as i32).pow(2))
            .sum();
        let dot: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(l2_i8(&a, &b), l2);
        assert_eq!(dot_i8(&a, &b), dot);
    }

    #[test]
    fn quantised_distances_track_exact_ones() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 32;
        let v: Vec<f32> = (0..64 * dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        write(dir.path(), &v, dim, CodeKind::Int8).unwrap();
        let c = Codes::open(dir.path(), 64, dim, true).unwrap().unwrap();
        let mut q = Vec::new();
        encode(&v[..dim], c.scale(), &mut q);
        for i in 0..64u32 {
            let exact =
                Metric::L2.distance(&v[..dim], &v[i as usize * dim..(i as usize + 1) * dim]);
            let approx = c.distance(Metric::L2, &q, i);
            assert!(
                (exact - approx).abs() <= 0.02 * exact.max(1.0),
                "{i}: {exact} vs {approx}"
            );
        }
        // Four at a time gives the one-at-a-time distances bit for bit.
        for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
            for i in (0..60u32).step_by(3) {
                let ids = [i, i + 1, i + 4, 63 - i];
                assert_eq!(
                    c.distance4(metric, &q, ids),
                    ids.map(|j| c.distance(metric, &q, j)),
                    "{metric:?} {ids:?}"
                );
            }
        }
        let half = tempfile::tempdir().unwrap();
        write(half.path(), &v, dim, CodeKind::F16).unwrap();
        let c = Codes::open(half.path(), 64, dim, true).unwrap().unwrap();
        assert_eq!((c.kind(), c.bytes()), (CodeKind::F16, 64 * dim * 2));
        for i in 0..64u32 {
            let row = &v[i as usize * dim..(i as usize + 1) * dim];
            for metric in [Metric::L2, Metric::InnerProduct] {
                let exact = metric.distance(&v[..dim], row);
                let approx = c.distance_f16(metric, &v[..dim], i);
                assert!(
                    (exact - approx).abs() <= 2e-3 * exact.abs().max(1.0),
                    "{i} {metric:?}: {exact} vs {approx}"
                );
            }
        }
    }
}
