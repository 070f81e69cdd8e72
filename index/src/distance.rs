//! Distance kernels and metrics.
//!
//! Every index orders by a *distance*, smaller is closer: squared L2 for `L2`,
//! `1 - dot` for `Cosine` (vectors are L2-normalised on insert) and `-dot` for
//! `InnerProduct`. The kernels use eight independent accumulators so the
//! compiler vectorises them without `unsafe`.

use serde::{Deserialize, Serialize};

/// How vectors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Euclidean distance (squared internally).
    L2,
    /// Cosine similarity; vectors are normalised to unit length on insert.
    #[default]
    Cosine,
    /// Raw inner product (maximum inner product search).
    InnerProduct,
}

impl Metric {
    /// Stable code used in file headers.
    pub fn code(self) -> u64 {
        match self {
            Metric::L2 => 0,
            Metric::Cosine => 1,
            Metric::InnerProduct => 2,
        }
    }

    /// Inverse of [`Metric::code`].
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Metric::L2),
            1 => Some(Metric::Cosine),
            2 => Some(Metric::InnerProduct),
            _ => None,
        }
    }

    /// Distance between two vectors of equal length; smaller is closer.
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => l2_squared(a, b),
            Metric::Cosine => 1.0 - dot(a, b),
            Metric::InnerProduct => -dot(a, b),
        }
    }

    /// Converts a distance to a similarity score where larger is better:
    /// cosine similarity, inner product, or negative Euclidean distance.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Metric::L2 => -distance.max(0.0).sqrt(),
            Metric::Cosine => 1.0 - distance,
            Metric::InnerProduct => -distance,
        }
    }

    /// Parses `l2`, `cosine` or `ip`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "l2" => Some(Metric::L2),
            "cosine" | "cos" => Some(Metric::Cosine),
            "ip" | "inner_product" => Some(Metric::InnerProduct),
            _ => None,
        }
    }
}

/// Dot product (AVX2 + FMA when the CPU has them, see [`crate::simd`]).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    crate::simd::dot(a, b)
}

/// Squared Euclidean distance (AVX2 + FMA when the CPU has them).
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    crate::simd::l2_squared(a, b)
}

/// Normalises `v` to unit length in place; returns false for a zero or non-finite vector.
pub fn normalize(v: &mut [f32]) -> bool {
    let n = dot(v, v).sqrt();
    if !n.is_finite() || n == 0.0 {
        return false;
    }
    for x in v.iter_mut() {
        *x /= n;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn kernels_match_naive(v in proptest::collection::vec((-10f32..10f32, -10f32..10f32), 0..67)) {
            let a: Vec<f32> = v.iter().map(|p| p.0).collect();
            let b: Vec<f32> = v.iter().map(|p| p.1).collect();
            let naive_dot: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
            let naive_l2: f64 = a.iter().zip(&b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
            prop_assert!((dot(&a, &b) as f64 - naive_dot).abs() <= 1e-3 * (1.0 + naive_dot.abs()));
            prop_assert!((l2_squared(&a, &b) as f64 - naive_l2).abs() <= 1e-3 * (1.0 + naive_l2));
        }
    }

    #[test]
    fn normalize_rejects_zero() {
        let mut z = vec![0.0; 4];
        assert!(!normalize(&mut z));
        let mut v = vec![3.0, 4.0];
        assert!(normalize(&mut v));
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
