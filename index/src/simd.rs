//! Distance kernels with runtime dispatch: the same loops compiled twice,
//! once for the baseline x86-64 (SSE2) and once with AVX2 + FMA enabled
//! (`#[target_feature]`), chosen per call by `is_x86_feature_detected!`
//! (a cached flag test). The loops are written so LLVM vectorises them: 16
//! independent f32 accumulators, i.e. two 8-lane registers, which hide the
//! latency of the fused multiply-adds. The int8 dot products have explicit
//! kernels: `vpmaddubsw` on AVX2, `vpdpbusd` on AVX-512 VNNI.
//!
//! It also holds [`prefetch`], the software prefetch the graph searches issue
//! for the vectors they are about to score.
//!
//! # Safety
//! The `unsafe` here calls a `#[target_feature(enable = "avx2,fma")]` (or
//! `"avx2"`, or `"avx512f,avx512bw,avx512vnni"`) function, which is sound
//! exactly when the running CPU supports those features; every call is
//! guarded by `is_x86_feature_detected!` for each of them. The explicit
//! kernels' unaligned loads stay inside their slices.
//! The prefetch instruction reads nothing and cannot fault.

const W: usize = 16;

/// `Σ step` over the pairs of `a` and `b`, with `L` independent accumulators
/// (so LLVM vectorises the loop) and the same step for the tail.
#[inline(always)]
fn fold<T: Copy, A: Copy + Default + std::iter::Sum, const L: usize>(
    a: &[T],
    b: &[T],
    step: impl Fn(A, T, T) -> A,
) -> A {
    let mut acc = [A::default(); L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] = step(acc[i], x[i], y[i]);
        }
    }
    let mut s: A = acc.into_iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s = step(s, *x, *y);
    }
    s
}

/// `fold` of one query against four rows at once: four independent sets of
/// accumulators, so the four chains of fused multiply-adds overlap instead of
/// each distance waiting on its own.
#[inline(always)]
fn fold4<R: Copy, const L: usize>(
    q: &[f32],
    rows: [&[R]; 4],
    step: impl Fn(f32, f32, R) -> f32,
) -> [f32; 4] {
    let n = q.len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..n]);
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
    let it = q
        .chunks_exact(L)
        .zip(r0.chunks_exact(L))
        .zip(r1.chunks_exact(L))
        .zip(r2.chunks_exact(L))
        .zip(r3.chunks_exact(L));
    for ((((x, y0), y1), y2), y3) in it {
        for i in 0..L {
            a0[i] = step(a0[i], x[i], y0[i]);
            a1[i] = step(a1[i], x[i], y1[i]);
            a2[i] = step(a2[i], x[i], y2[i]);
            a3[i] = step(a3[i], x[i], y3[i]);
        }
    }
    let full = n / L * L;
    let mut out = [a0, a1, a2, a3].map(|a| a.into_iter().sum::<f32>());
    for (j, r) in [r0, r1, r2, r3].into_iter().enumerate() {
        for i in full..n {
            out[j] = step(out[j], q[i], r[i]);
        }
    }
    out
}

/// One step of a dot product: `s + x·y`, fused when `fma`.
#[inline(always)]
fn dot_step(fma: bool) -> impl Fn(f32, f32, f32) -> f32 {
    move |s, x, y| if fma { x.mul_add(y, s) } else { s + x * y }
}

/// One step of a squared Euclidean distance: `s + (x − y)²`, fused when `fma`.
#[inline(always)]
fn l2_step(fma: bool) -> impl Fn(f32, f32, f32) -> f32 {
    move |s, x, y| {
        let d = x - y;
        if fma {
            d.mul_add(d, s)
        } else {
            s + d * d
        }
    }
}

#[inline(always)]
fn dot4_body(q: &[f32], rows: [&[f32]; 4], fma: bool) -> [f32; 4] {
    fold4::<f32, W>(q, rows, dot_step(fma))
}

/// [`dot4_body`] against rows of int8 codes, each widened to f32.
#[inline(always)]
fn dot_f32_i8_4_body(q: &[f32], rows: [&[i8]; 4], fma: bool) -> [f32; 4] {
    let step = dot_step(fma);
    fold4::<i8, W>(q, rows, move |s, x, y| step(s, x, y as f32))
}

#[inline(always)]
fn l24_body(q: &[f32], rows: [&[f32]; 4], fma: bool) -> [f32; 4] {
    fold4::<f32, W>(q, rows, l2_step(fma))
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
    fold::<_, _, W>(a, b, dot_step(fma))
}

#[inline(always)]
fn l2_body(a: &[f32], b: &[f32], fma: bool) -> f32 {
    fold::<_, _, W>(a, b, l2_step(fma))
}

/// Int8 kernels: i16 products summed in i32, the pattern LLVM turns into pmaddwd.
#[inline(always)]
fn l2_i8_body(a: &[i8], b: &[i8]) -> i32 {
    fold::<_, _, 32>(a, b, |s: i32, x: i8, y: i8| {
        let d = (x as i16 - y as i16) as i32;
        s + d * d
    })
}

#[inline(always)]
fn dot_i8_body(a: &[i8], b: &[i8]) -> i32 {
    fold::<_, _, 32>(a, b, |s: i32, x: i8, y: i8| {
        s + (x as i16 as i32) * (y as i16 as i32)
    })
}

/// f16 rows (IEEE half bits) against an f32 query, converted on the fly.
#[inline(always)]
fn dot_f16_body(q: &[f32], r: &[u16]) -> f32 {
    q.iter()
        .zip(r)
        .map(|(x, h)| x * half::f16::from_bits(*h).to_f32())
        .sum()
}

#[inline(always)]
fn l2_f16_body(q: &[f32], r: &[u16]) -> f32 {
    q.iter()
        .zip(r)
        .map(|(x, h)| {
            let d = x - half::f16::from_bits(*h).to_f32();
            d * d
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    //! f16 kernels with explicit intrinsics: 16 halves per step converted by
    //! `vcvtph2ps`, two FMA accumulators.
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Loads 8 halves at `r[i..i + 8]` as f32 (the caller checked the bounds).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8(r: &[u16], i: usize) -> __m256 {
        let chunk: &[u16; 8] = r[i..i + 8].try_into().expect("8 halves");
        // SAFETY: `chunk` is 16 readable bytes; unaligned loads are allowed.
        let h = unsafe { _mm_loadu_si128(chunk.as_ptr() as *const __m128i) };
        _mm256_cvtph_ps(h)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8f(q: &[f32], i: usize) -> __m256 {
        let chunk: &[f32; 8] = q[i..i + 8].try_into().expect("8 floats");
        // SAFETY: `chunk` is 32 readable bytes; unaligned loads are allowed.
        unsafe { _mm256_loadu_ps(chunk.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot(q: &[f32], r: &[u16]) -> f32 {
        let n = q.len().min(r.len());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(load8f(q, i), load8(r, i), a0);
            a1 = _mm256_fmadd_ps(load8f(q, i + 8), load8(r, i + 8), a1);
            i += 16;
        }
        hsum(_mm256_add_ps(a0, a1)) + super::dot_f16_body(&q[i..n], &r[i..n])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn l2(q: &[f32], r: &[u16]) -> f32 {
        let n = q.len().min(r.len());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(load8f(q, i), load8(r, i));
            let d1 = _mm256_sub_ps(load8f(q, i + 8), load8(r, i + 8));
            a0 = _mm256_fmadd_ps(d0, d0, a0);
            a1 = _mm256_fmadd_ps(d1, d1, a1);
            i += 16;
        }
        hsum(_mm256_add_ps(a0, a1)) + super::l2_f16_body(&q[i..n], &r[i..n])
    }
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    has_avx2_fma() && std::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l2_i8(a: &[i8], b: &[i8]) -> i32 {
        super::l2_i8_body(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot4(q: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
        super::dot4_body(q, rows, true)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32_i8_4(q: &[f32], rows: [&[i8]; 4]) -> [f32; 4] {
        super::dot_f32_i8_4_body(q, rows, true)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn l24(q: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
        super::l24_body(q, rows, true)
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

/// `Σ a·b` over the codes from `from` on: the tail the vector kernels leave.
#[inline(always)]
fn dot_i8_tail(a: &[i8], b: &[i8], from: usize) -> i32 {
    a[from..]
        .iter()
        .zip(&b[from..])
        .map(|(&x, &y)| x as i32 * y as i32)
        .sum()
}

/// Int8 dot products on AVX2 with `vpmaddubsw`, 32 codes a step against the
/// 16 of the widening `pmaddwd` loop. `vpmaddubsw` multiplies unsigned by
/// signed bytes, so the product `a·b` is taken as `|a| · (b·sign a)`
/// (`vpabsb`, `vpsignb`); its pairs of products are summed in i16, which
/// cannot overflow while the codes stay in −127..=127 (at most
/// 2·127·127 = 32,258). That is every code [`crate::quant::encode`] writes.
/// A −128 in `a` is still exact (`|−128|` reads as the unsigned 128); a
/// −128 in `b` against a negative `a` (a damaged file) gives a wrong sum,
/// never undefined behaviour.
#[cfg(target_arch = "x86_64")]
mod avx2_i8 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// `Σ a·b` for codes in −127..=127.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let full = n / 32 * 32;
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 32 <= n` bytes of both slices; unaligned loads.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(va), _mm256_sign_epi8(vb, va));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
            i += 32;
        }
        hsum(acc) + super::dot_i8_tail(a, b, full)
    }

    /// `Σ q·r` for four rows at once (codes in −127..=127): `|q|` is taken
    /// once per step for all four, and their four chains overlap.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_i8_4(q: &[i8], rows: [&[i8]; 4]) -> [i32; 4] {
        let n = q.len();
        let rows = rows.map(|r| &r[..n]);
        let full = n / 32 * 32;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 32 <= n` bytes of the query and of every row
            // (each cut to `n` above); unaligned loads.
            let vq = unsafe { _mm256_loadu_si256(q.as_ptr().add(i).cast()) };
            let uq = _mm256_abs_epi8(vq);
            for (a, r) in acc.iter_mut().zip(rows) {
                // SAFETY: as above.
                let vr = unsafe { _mm256_loadu_si256(r.as_ptr().add(i).cast()) };
                let p = _mm256_maddubs_epi16(uq, _mm256_sign_epi8(vr, vq));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(p, ones));
            }
            i += 32;
        }
        let mut out = acc.map(|a| hsum(a));
        for (o, r) in out.iter_mut().zip(rows) {
            *o += super::dot_i8_tail(q, r, full);
        }
        out
    }
}

/// Int8 kernels on AVX-512 VNNI (`vpdpbusd`, `vpdpwssd`): 64 codes per
/// instruction against the 32 of the AVX2 kernels. The sums are exact
/// integers, so they equal the other builds' bit for bit (for the dot
/// products, over the codes −127..=127 that the AVX2 kernels take).
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    /// `Σ a·b`. `vpdpbusd` multiplies unsigned by signed bytes, so `a` is
    /// flipped to `a + 128` (xor 0x80) and `128·Σb` (one more `vpdpbusd`
    /// against ones) taken off at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let full = n / 64 * 64;
        let flip = _mm512_set1_epi8(i8::MIN);
        let ones = _mm512_set1_epi8(1);
        let mut acc = _mm512_setzero_si512();
        let mut sum_b = _mm512_setzero_si512();
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 64 <= n` bytes of both slices; unaligned loads.
            let (va, vb) = unsafe {
                (
                    _mm512_loadu_si512(a.as_ptr().add(i).cast()),
                    _mm512_loadu_si512(b.as_ptr().add(i).cast()),
                )
            };
            acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(va, flip), vb);
            sum_b = _mm512_dpbusd_epi32(sum_b, ones, vb);
            i += 64;
        }
        _mm512_reduce_add_epi32(acc) - 128 * _mm512_reduce_add_epi32(sum_b)
            + super::dot_i8_tail(a, b, full)
    }

    /// `Σ q·r` for four rows at once: the rows are the flipped (unsigned)
    /// side, so the correction `128·Σq` is one sum shared by all four, and
    /// the four chains of `vpdpbusd` overlap.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_i8_4(q: &[i8], rows: [&[i8]; 4]) -> [i32; 4] {
        let n = q.len();
        let rows = rows.map(|r| &r[..n]);
        let full = n / 64 * 64;
        let flip = _mm512_set1_epi8(i8::MIN);
        let ones = _mm512_set1_epi8(1);
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut sum_q = _mm512_setzero_si512();
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 64 <= n` bytes of the query and of every row
            // (each cut to `n` above); unaligned loads.
            let vq = unsafe { _mm512_loadu_si512(q.as_ptr().add(i).cast()) };
            sum_q = _mm512_dpbusd_epi32(sum_q, ones, vq);
            for (a, r) in acc.iter_mut().zip(rows) {
                // SAFETY: as above.
                let vr = unsafe { _mm512_loadu_si512(r.as_ptr().add(i).cast()) };
                *a = _mm512_dpbusd_epi32(*a, _mm512_xor_si512(vr, flip), vq);
            }
            i += 64;
        }
        let correction = 128 * _mm512_reduce_add_epi32(sum_q);
        let mut out = acc.map(|a| _mm512_reduce_add_epi32(a) - correction);
        for (o, r) in out.iter_mut().zip(rows) {
            *o += super::dot_i8_tail(q, r, full);
        }
        out
    }

    /// `Σ (q − r)²` for four rows at once, the query widened once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn l2_i8_4(q: &[i8], rows: [&[i8]; 4]) -> [i32; 4] {
        let n = q.len();
        let rows = rows.map(|r| &r[..n]);
        let full = n / 32 * 32;
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 32 <= n` bytes of the query and of every row
            // (each cut to `n` above); unaligned loads.
            let wq = _mm512_cvtepi8_epi16(unsafe { _mm256_loadu_si256(q.as_ptr().add(i).cast()) });
            for (a, r) in acc.iter_mut().zip(rows) {
                // SAFETY: as above.
                let vr = unsafe { _mm256_loadu_si256(r.as_ptr().add(i).cast()) };
                let d = _mm512_sub_epi16(wq, _mm512_cvtepi8_epi16(vr));
                *a = _mm512_dpwssd_epi32(*a, d, d);
            }
            i += 32;
        }
        let mut out = acc.map(|a| _mm512_reduce_add_epi32(a));
        for (o, r) in out.iter_mut().zip(rows) {
            for j in full..n {
                let d = q[j] as i32 - r[j] as i32;
                *o += d * d;
            }
        }
        out
    }

    /// `Σ (a − b)²`: the differences widened to i16, squared and summed in
    /// pairs by `vpdpwssd`, 32 codes a step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn l2_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let full = n / 32 * 32;
        let mut acc = _mm512_setzero_si512();
        let mut i = 0;
        while i < full {
            // SAFETY: `i + 32 <= n` bytes of both slices; unaligned loads.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            let d = _mm512_sub_epi16(_mm512_cvtepi8_epi16(va), _mm512_cvtepi8_epi16(vb));
            acc = _mm512_dpwssd_epi32(acc, d, d);
            i += 32;
        }
        let mut s = _mm512_reduce_add_epi32(acc);
        for j in full..n {
            let d = a[j] as i32 - b[j] as i32;
            s += d * d;
        }
        s
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// A public kernel: the fast build (`$fast`, compiled for the features that
/// `$check` detects) when the CPU has them, else the baseline.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident($ta:ty, $tb:ty) -> $r:ty: $check:ident => $fast:path, else $base:expr) => {
        $(#[$doc])*
        #[inline]
        pub fn $name(a: $ta, b: $tb) -> $r {
            #[cfg(target_arch = "x86_64")]
            if $check() {
                // SAFETY: the CPU has the features `$fast` is compiled for
                // (checked just above).
                return unsafe { $fast(a, b) };
            }
            $base(a, b)
        }
    };
}

dispatch!(
    /// Dot product.
    dot(&[f32], &[f32]) -> f32: has_avx2_fma => avx2::dot, else |a, b| dot_body(a, b, false)
);
dispatch!(
    /// Squared Euclidean distance.
    l2_squared(&[f32], &[f32]) -> f32: has_avx2_fma => avx2::l2, else |a, b| l2_body(a, b, false)
);
dispatch!(
    /// `Σ (a − b)²` over int8 codes.
    l2_i8(&[i8], &[i8]) -> i32: has_vnni => vnni::l2_i8, else l2_i8_avx2
);
dispatch!(
    /// `Σ a·b` over int8 codes.
    dot_i8(&[i8], &[i8]) -> i32: has_vnni => vnni::dot_i8, else dot_i8_avx2
);
dispatch!(
    /// [`dot_i8`] of `q` with four rows (each at least as long as `q`).
    dot_i8_4(&[i8], [&[i8]; 4]) -> [i32; 4]: has_vnni => vnni::dot_i8_4,
    else dot_i8_4_avx2
);
dispatch!(
    /// [`l2_i8`] of `q` to four rows (each at least as long as `q`).
    l2_i8_4(&[i8], [&[i8]; 4]) -> [i32; 4]: has_vnni => vnni::l2_i8_4,
    else |q, rows: [&[i8]; 4]| rows.map(|r| l2_i8_avx2(q, &r[..q.len()]))
);
dispatch!(
    /// [`l2_i8`] without AVX-512 VNNI.
    l2_i8_avx2(&[i8], &[i8]) -> i32: has_avx2_fma => avx2::l2_i8, else l2_i8_body
);
dispatch!(
    /// [`dot_i8`] without AVX-512 VNNI (codes in −127..=127 on AVX2).
    dot_i8_avx2(&[i8], &[i8]) -> i32: has_avx2 => avx2_i8::dot_i8, else dot_i8_body
);
dispatch!(
    /// [`dot_i8_4`] without AVX-512 VNNI (codes in −127..=127 on AVX2).
    dot_i8_4_avx2(&[i8], [&[i8]; 4]) -> [i32; 4]: has_avx2 => avx2_i8::dot_i8_4,
    else |q, rows: [&[i8]; 4]| rows.map(|r| dot_i8_body(q, &r[..q.len()]))
);
dispatch!(
    /// Dot products of `q` with four rows (each at least as long as `q`).
    dot4(&[f32], [&[f32]; 4]) -> [f32; 4]: has_avx2_fma => avx2::dot4,
    else |q, rows| dot4_body(q, rows, false)
);
dispatch!(
    /// `Σ q·c` of an f32 query and four rows of int8 codes (each at least
    /// as long as `q`), summed in f32.
    dot_f32_i8_4(&[f32], [&[i8]; 4]) -> [f32; 4]: has_avx2_fma => avx2::dot_f32_i8_4,
    else |q, rows| dot_f32_i8_4_body(q, rows, false)
);
dispatch!(
    /// Squared Euclidean distances of `q` to four rows (each at least as long as `q`).
    l2_squared4(&[f32], [&[f32]; 4]) -> [f32; 4]: has_avx2_fma => avx2::l24,
    else |q, rows| l24_body(q, rows, false)
);
dispatch!(
    /// `Σ q·h` of an f32 query and a row of f16 bits.
    dot_f16(&[f32], &[u16]) -> f32: has_f16c => f16c::dot, else dot_f16_body
);
dispatch!(
    /// `Σ (q − h)²` of an f32 query and a row of f16 bits.
    l2_f16(&[f32], &[u16]) -> f32: has_f16c => f16c::l2, else l2_f16_body
);

/// Asks the CPU to bring the first `lines` cache lines of `data` into L1
/// (a hint: no effect on results, none on other architectures).
#[inline(always)]
pub fn prefetch<T>(data: &[T], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let p = data.as_ptr() as *const i8;
        let mut off = 0;
        let mut n = 0;
        while off < bytes && n < lines {
            // SAFETY: prefetch is a hint that never faults or reads
            // architecturally; SSE is part of the x86-64 baseline. The
            // address stays inside `data`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off))
            };
            off += 64;
            n += 1;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, lines);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every int8 build gives the exact integer sums of the scalar loop, at
    /// lengths with and without a tail, at the extremes of the code range
    /// (−127..=127 for the dot products, the codes `quant::encode` writes;
    /// the whole i8 range for L2 and for the VNNI dot products).
    #[test]
    fn int8_kernels_are_exact() {
        for n in [1usize, 31, 32, 33, 63, 64, 65, 128, 384, 385, 1000] {
            let full_range: Vec<i8> = (0..n).map(|i| (i * 73 % 256) as u8 as i8).collect();
            let b_full: Vec<i8> = (0..n)
                .map(|i| {
                    if i % 7 == 0 {
                        i8::MIN
                    } else {
                        (i * 151 % 255) as u8 as i8
                    }
                })
                .collect();
            let codes = |v: &[i8]| -> Vec<i8> { v.iter().map(|&x| x.max(-127)).collect() };
            for (a, b) in [
                (codes(&full_range), codes(&b_full)),
                (vec![127; n], vec![-127; n]),
                (vec![-127; n], vec![-127; n]),
                (vec![127; n], vec![127; n]),
            ] {
                let dot0 = dot_i8_body(&a, &b);
                assert_eq!(dot_i8(&a, &b), dot0, "dot, n {n}");
                assert_eq!(dot_i8_avx2(&a, &b), dot0, "dot avx2, n {n}");
                let rows: [Vec<i8>; 4] = std::array::from_fn(|k| {
                    b.iter()
                        .map(|x| x.wrapping_add(k as i8 * 37).max(-127))
                        .collect()
                });
                let refs = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
                let want_dot = refs.map(|r| dot_i8_body(&a, r));
                assert_eq!(dot_i8_4(&a, refs), want_dot, "dot4, n {n}");
                assert_eq!(dot_i8_4_avx2(&a, refs), want_dot, "dot4 avx2, n {n}");
            }
            let (a, b) = (&full_range, &b_full);
            let l20 = l2_i8_body(a, b);
            assert_eq!(l2_i8(a, b), l20, "l2, n {n}");
            assert_eq!(l2_i8_avx2(a, b), l20, "l2 avx2, n {n}");
            let rows: [Vec<i8>; 4] =
                std::array::from_fn(|k| b.iter().map(|x| x.wrapping_add(k as i8 * 37)).collect());
            let refs = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            assert_eq!(
                l2_i8_4(a, refs),
                refs.map(|r| l2_i8_body(a, r)),
                "l2 4, n {n}"
            );
            let (ext, top) = (vec![i8::MIN; n], vec![i8::MAX; n]);
            assert_eq!(l2_i8(&ext, &top), l2_i8_body(&ext, &top), "n {n}");
            #[cfg(target_arch = "x86_64")]
            if has_vnni() {
                // SAFETY: the CPU has AVX-512 VNNI (checked just above).
                let (d, d4) = unsafe { (vnni::dot_i8(a, b), vnni::dot_i8_4(a, refs)) };
                assert_eq!(d, dot_i8_body(a, b), "vnni dot, n {n}");
                assert_eq!(d4, refs.map(|r| dot_i8_body(a, r)), "vnni dot4, n {n}");
            }
            // A −128 in the first operand (the query) is exact on AVX2 too.
            let row = codes(&b_full);
            let q_min = vec![i8::MIN; n];
            assert_eq!(
                dot_i8_avx2(&q_min, &row),
                dot_i8_body(&q_min, &row),
                "n {n}"
            );
            assert_eq!(
                dot_i8_4_avx2(&q_min, [&row[..]; 4]),
                [dot_i8_body(&q_min, &row); 4],
                "n {n}"
            );
        }
    }

    proptest::proptest! {
        /// The dot kernels against the scalar sum on random codes of the
        /// quantiser's range, at random lengths (0 too), with rows longer
        /// than the query (the four-row kernels read only its length).
        #[test]
        fn int8_dots_match_the_scalar_sum(
            q in proptest::collection::vec(-127i8..=127, 0..200),
            extra in proptest::collection::vec(-127i8..=127, 0..40),
            seed in 0u64..1000,
        ) {
            let n = q.len();
            let rows: [Vec<i8>; 4] = std::array::from_fn(|k| {
                (0..n)
                    .map(|i| ((i as u64 * 131 + seed * 7 + k as u64 * 61) % 255) as i8)
                    .map(|x| x.max(-127))
                    .chain(extra.iter().copied())
                    .collect()
            });
            let refs = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let want = refs.map(|r| dot_i8_body(&q, &r[..n]));
            proptest::prop_assert_eq!(dot_i8_4(&q, refs), want);
            proptest::prop_assert_eq!(dot_i8_4_avx2(&q, refs), want);
            proptest::prop_assert_eq!(dot_i8(&q, &rows[0][..n]), want[0]);
            proptest::prop_assert_eq!(dot_i8_avx2(&q, &rows[0][..n]), want[0]);
        }
    }

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
        let h: Vec<u16> = b
            .iter()
            .map(|x| half::f16::from_f32(*x).to_bits())
            .collect();
        let (d2, l2) = (dot_f16(&a, &h), l2_f16(&a, &h));
        let (d3, l3) = (dot_f16_body(&a, &h), l2_f16_body(&a, &h));
        assert!((d2 - d3).abs() <= 1e-3 * d3.abs().max(1.0), "{d2} vs {d3}");
        assert!((l2 - l3).abs() <= 1e-3 * l3.max(1.0), "{l2} vs {l3}");
        assert!(
            (d3 - d0).abs() <= 1e-2 * d0.abs().max(1.0),
            "f16 rounding: {d3} vs {d0}"
        );
    }
}
