//! Distance kernels with runtime dispatch: the same loops compiled twice,
//! once for the baseline x86-64 (SSE2) and once with AVX2 + FMA enabled
//! (`#[target_feature]`), chosen per call by `is_x86_feature_detected!`
//! (a cached flag test). The loops are written so LLVM vectorises them: 16
//! independent f32 accumulators, i.e. two 8-lane registers, which hide the
//! latency of the fused multiply-adds.
//!
//! # Safety
//! The only `unsafe` here calls a `#[target_feature(enable = "avx2,fma")]`
//! function, which is sound exactly when the running CPU supports those
//! features; every call is guarded by `is_x86_feature_detected!` for both.

const W: usize = 16;

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; W];
    let ca = a.chunks_exact(W);
    let cb = b.chunks_exact(W);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            acc[i] = if fma {
                x[i].mul_add(y[i], acc[i])
            } else {
                acc[i] + x[i] * y[i]
            };
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn l2_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
    let mut acc = [0f32; W];
    let ca = a.chunks_exact(W);
    let cb = b.chunks_exact(W);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            let d = x[i] - y[i];
            acc[i] = if fma {
                d.mul_add(d, acc[i])
            } else {
                acc[i] + d * d
            };
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        let d = x - y;
        s += d * d;
    }
    s
}

#[inline(always)]
fn l2_i8_body(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 32];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            let d = x[i] as i16 - y[i] as i16;
            acc[i] += (d as i32) * (d as i32);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        let d = *x as i32 - *y as i32;
        s += d * d;
    }
    s
}

#[inline(always)]
fn dot_i8_body(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 32];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += (x[i] as i16 as i32) * (y[i] as i16 as i32);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += *x as i32 * *y as i32;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l2_i8(a: &[i8], b: &[i8]) -> i32 {
        super::l2_i8_body(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        super::dot_i8_body(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_body(a, b, true)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l2(a: &[f32], b: &[f32]) -> f32 {
        super::l2_body(a, b, true)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// A public kernel: the AVX2 + FMA build when the CPU has both, else the baseline.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $t:ty, $r:ty, $base:expr) => {
        $(#[$doc])*
        #[inline]
        pub fn $name(a: &[$t], b: &[$t]) -> $r {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { avx2::$avx(a, b) };
            }
            $base(a, b)
        }
    };
}

dispatch!(
    /// Dot product.
    dot, dot, f32, f32, |a, b| dot_body(a, b, false)
);
dispatch!(
    /// Squared Euclidean distance.
    l2_squared, l2, f32, f32, |a, b| l2_body(a, b, false)
);
dispatch!(
    /// `Σ (a − b)²` over int8 codes.
    l2_i8, l2_i8, i8, i32, l2_i8_body
);
dispatch!(
    /// `Σ a·b` over int8 codes.
    dot_i8, dot_i8, i8, i32, dot_i8_body
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_agree() {
        let a: Vec<f32> = (0..133)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..133)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
            .collect();
        let (d0, l0) = (dot_body(&a, &b, false), l2_body(&a, &b, false));
        let (d1, l1) = (dot(&a, &b), l2_squared(&a, &b));
        assert!((d0 - d1).abs() <= 1e-3 * d0.abs().max(1.0));
        assert!((l0 - l1).abs() <= 1e-3 * l0.max(1.0));
    }
}
