//! The statistics behind the report: ratios of per-user sums by the delta
//! method, relative lift, mSPRT, the sample-ratio check, the sign test and
//! CUPED.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

use super::Cuped;

/// A ratio of sums over users with its delta-method variance.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ratio {
    pub(super) value: f64,
    pub(super) var: f64,
}

/// `Σc / Σn` over users and its variance (delta method).
pub(super) fn ratio(users: &[(f64, f64)]) -> Ratio {
    let n = users.len() as f64;
    if n < 2.0 {
        let (c, s): (f64, f64) = users.iter().fold((0.0, 0.0), |a, u| (a.0 + u.0, a.1 + u.1));
        return Ratio {
            value: if s > 0.0 { c / s } else { 0.0 },
            var: f64::INFINITY,
        };
    }
    let mc = users.iter().map(|u| u.0).sum::<f64>() / n;
    let ms = users.iter().map(|u| u.1).sum::<f64>() / n;
    if ms <= 0.0 {
        return Ratio {
            value: 0.0,
            var: f64::INFINITY,
        };
    }
    let r = mc / ms;
    let (mut vc, mut vs, mut cov) = (0.0, 0.0, 0.0);
    for (c, s) in users {
        vc += (c - mc) * (c - mc);
        vs += (s - ms) * (s - ms);
        cov += (c - mc) * (s - ms);
    }
    let d = n - 1.0;
    let (vc, vs, cov) = (vc / d, vs / d, cov / d);
    Ratio {
        value: r,
        var: (vc - 2.0 * r * cov + r * r * vs) / (n * ms * ms),
    }
}

pub(super) const Z95: f64 = 1.959_963_984_540_054;

pub(super) fn normal_p(z: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("a standard normal");
    (2.0 * (1.0 - n.cdf(z.abs()))).clamp(0.0, 1.0)
}

/// Relative lift of `t` over `c` with its interval, and the z-test p-value.
pub(super) fn lift(t: Ratio, c: Ratio) -> (f64, [f64; 2], f64) {
    if c.value <= 0.0 || !(t.var + c.var).is_finite() {
        return (f64::NAN, [f64::NAN, f64::NAN], 1.0);
    }
    let l = t.value / c.value - 1.0;
    let var_rel = t.var / (c.value * c.value)
        + t.value * t.value * c.var / (c.value * c.value * c.value * c.value);
    let half = Z95 * var_rel.sqrt();
    let se = (t.var + c.var).sqrt();
    let p = if se > 0.0 {
        normal_p((t.value - c.value) / se)
    } else {
        1.0
    };
    (l, [l - half, l + half], p)
}

/// The mSPRT likelihood ratio of a difference `delta` with variance `v`
/// under a normal mixture of spread `tau`.
pub(super) fn msprt(delta: f64, v: f64, tau: f64) -> f64 {
    let t2 = tau * tau;
    if !(v > 0.0 && v.is_finite() && t2 > 0.0) {
        return 0.0;
    }
    (v / (v + t2)).sqrt() * (delta * delta * t2 / (2.0 * v * (v + t2))).exp()
}

/// Chi-square p-value of `observed` counts against `shares`.
pub(super) fn srm(observed: &[usize], shares: &[f64]) -> f64 {
    let total: usize = observed.iter().sum();
    let sum_shares: f64 = shares.iter().sum();
    if total == 0 || observed.len() < 2 || sum_shares <= 0.0 {
        return 1.0;
    }
    let stat: f64 = observed
        .iter()
        .zip(shares)
        .map(|(&o, &s)| {
            let e = total as f64 * s / sum_shares;
            if e > 0.0 {
                (o as f64 - e).powi(2) / e
            } else {
                0.0
            }
        })
        .sum();
    let chi = ChiSquared::new((observed.len() - 1) as f64).expect("df ≥ 1");
    (1.0 - chi.cdf(stat)).clamp(0.0, 1.0)
}

/// Two-sided sign-test p-value of `wins` against `losses` (normal
/// approximation with continuity correction past 50 users, exact below).
pub(super) fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    if n == 0 {
        return 1.0;
    }
    let k = wins.min(losses);
    if n <= 50 {
        // Exact: 2 · P(X ≤ k) for X ~ Binomial(n, 1/2).
        let mut p = 0.0;
        let mut c = 1.0f64; // C(n, 0)
        for i in 0..=k {
            if i > 0 {
                c *= (n - i + 1) as f64 / i as f64;
            }
            p += c;
        }
        return (2.0 * p / 2f64.powi(n as i32)).min(1.0);
    }
    let z = ((wins as f64 - losses as f64).abs() - 1.0) / (n as f64).sqrt();
    normal_p(z.max(0.0))
}

/// One arm's users as (clicks, shown, covariate).
pub(super) fn linearised(users: &[(f64, f64, f64)]) -> Option<(Ratio, Vec<(f64, f64)>)> {
    let n = users.len() as f64;
    let ms = users.iter().map(|u| u.1).sum::<f64>() / n;
    if n < 2.0 || ms <= 0.0 {
        return None;
    }
    let r = users.iter().map(|u| u.0).sum::<f64>() / n / ms;
    let v: Vec<(f64, f64)> = users.iter().map(|u| ((u.0 - r * u.1) / ms, u.2)).collect();
    Some((Ratio { value: r, var: 0.0 }, v))
}

/// CUPED-adjusted comparison of treatment `t` with control `c`.
pub(super) fn cuped(t: &[(f64, f64, f64)], c: &[(f64, f64, f64)]) -> Option<Cuped> {
    let (rt, lt) = linearised(t)?;
    let (rc, lc) = linearised(c)?;
    let mean_x = |v: &[(f64, f64)]| v.iter().map(|u| u.1).sum::<f64>() / v.len() as f64;
    let (xt, xc) = (mean_x(&lt), mean_x(&lc));
    let all = (xt * lt.len() as f64 + xc * lc.len() as f64) / (lt.len() + lc.len()) as f64;
    let (mut cov, mut var) = (0.0, 0.0);
    for (v, xm) in [(&lt, xt), (&lc, xc)] {
        for (l, x) in v.iter() {
            cov += l * (x - xm);
            var += (x - xm) * (x - xm);
        }
    }
    let theta = if var > 0.0 { cov / var } else { 0.0 };
    let var_of = |v: &[(f64, f64)], xm: f64, th: f64| {
        let n = v.len() as f64;
        let adj: Vec<f64> = v.iter().map(|(l, x)| l - th * (x - xm)).collect();
        let m = adj.iter().sum::<f64>() / n;
        adj.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (n - 1.0) / n
    };
    let plain = var_of(&lt, xt, 0.0) + var_of(&lc, xc, 0.0);
    let t_adj = Ratio {
        value: rt.value - theta * (xt - all),
        var: var_of(&lt, xt, theta),
    };
    let c_adj = Ratio {
        value: rc.value - theta * (xc - all),
        var: var_of(&lc, xc, theta),
    };
    let (lift, lift_ci, p_value) = self::lift(t_adj, c_adj);
    Some(Cuped {
        lift,
        lift_ci,
        p_value,
        variance_reduction: if plain > 0.0 {
            1.0 - (t_adj.var + c_adj.var) / plain
        } else {
            0.0
        },
    })
}
