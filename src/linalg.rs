//! Dense linear algebra shared by the trainers: the symmetric
//! positive-definite solve that ALS (one per user and item per sweep) and the
//! learned fusion's Newton steps need.

/// Solves `a x = b` in place for a symmetric positive-definite `a` (`n × n`,
/// row-major; its lower triangle is overwritten by the Cholesky factor), so
/// `b` becomes `x`. Returns false, with `b` unsolved, when `a` is not positive
/// definite.
///
/// Written out rather than through `faer` (which EASE uses for its large
/// inverse): these systems are small (the ALS factor count, the fusion
/// model's features), and faer's generic code, instantiated in this crate,
/// is not optimised in the dev profile the tests build in. A 64 × 64 solve
/// took 22 ms through faer there and 0.7 ms written out; in release, 28 µs
/// and 26 µs (2,000 solves each, measured once on this project's machine).
pub fn solve_spd(a: &mut [f64], b: &mut [f64], n: usize) -> bool {
    assert_eq!(a.len(), n * n, "a must be n × n");
    assert_eq!(b.len(), n, "b must have n rows");
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= a[k * n + i] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_known_system_and_refuses_an_indefinite_one() {
        // [[4, 2], [2, 3]] x = [2, 1]  =>  x = [0.5, 0].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(solve_spd(&mut a, &mut b, 2));
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        let mut b = vec![1.0, 1.0];
        assert!(!solve_spd(&mut bad, &mut b, 2));
    }

    #[test]
    fn agrees_with_the_residual_on_a_larger_system() {
        // A = M Mᵀ + n I is positive definite; check ‖A x − b‖ is tiny.
        let n = 24;
        let m: Vec<f64> = (0..n * n)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>();
            }
            a[i * n + i] += n as f64;
        }
        let b: Vec<f64> = (0..n).map(|i| i as f64 - 3.0).collect();
        let (mut f, mut x) = (a.clone(), b.clone());
        assert!(solve_spd(&mut f, &mut x, n));
        for i in 0..n {
            let r: f64 = (0..n).map(|j| a[i * n + j] * x[j]).sum::<f64>() - b[i];
            assert!(r.abs() < 1e-9, "row {i}: residual {r}");
        }
    }
}
