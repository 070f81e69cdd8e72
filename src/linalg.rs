//! Dense linear algebra shared by the trainers: the symmetric
//! positive-definite solve that ALS (one per user and item per sweep) and the
//! learned fusion's Newton steps need, through `faer`.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{ColMut, Conj, MatMut, Par};

/// Solves `a x = b` in place for a symmetric positive-definite `a` (`n × n`,
/// row-major; its lower triangle is overwritten by the Cholesky factor), so
/// `b` becomes `x`. Returns false, with `b` unsolved, when `a` is not positive
/// definite. Sequential: the callers already run one solve per rayon task.
pub fn solve_spd(a: &mut [f64], b: &mut [f64], n: usize) -> bool {
    assert_eq!(a.len(), n * n, "a must be n × n");
    assert_eq!(b.len(), n, "b must have n rows");
    let mut l = MatMut::from_row_major_slice_mut(a, n, n);
    let mut mem = MemBuffer::new(llt::factor::cholesky_in_place_scratch::<f64>(
        n,
        Par::Seq,
        Default::default(),
    ));
    let factored = llt::factor::cholesky_in_place(
        l.rb_mut(),
        Default::default(),
        Par::Seq,
        MemStack::new(&mut mem),
        Default::default(),
    );
    if factored.is_err() {
        return false;
    }
    llt::solve::solve_in_place_with_conj(
        l.rb(),
        Conj::No,
        ColMut::from_slice_mut(b).as_mat_mut(),
        Par::Seq,
        MemStack::new(&mut mem),
    );
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
