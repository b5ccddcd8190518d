//! Small dense linear algebra (f64, row-major), shared by [`Mahalanobis`](super::Mahalanobis)
//! and the logistic regression of [`Fused`](super::Fused).

use crate::{CalibrateError, Result};

/// Cholesky factor `L` (lower triangular, row-major `n × n`) with `a = L Lᵀ`, reading only the
/// lower triangle of the symmetric `a`; `None` when `a` is not (numerically) positive definite.
pub(crate) fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    debug_assert_eq!(a.len(), n * n);
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = l[i * n..i * n + j]
                .iter()
                .zip(&l[j * n..j * n + j])
                .map(|(x, y)| x * y)
                .sum();
            let s = a[i * n + j] - dot;
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L y = b` in place (forward substitution), `L` from [`cholesky`].
pub(crate) fn forward_substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let dot: f64 = l[i * n..i * n + i]
            .iter()
            .zip(&b[..i])
            .map(|(x, y)| x * y)
            .sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
}

/// Solves `Lᵀ x = b` in place (back substitution), `L` from [`cholesky`].
pub(crate) fn back_substitute_transposed(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky).
pub(super) fn solve_spd(a: &[f64], n: usize, b: &[f64], what: &'static str) -> Result<Vec<f64>> {
    let l = cholesky(a, n).ok_or(CalibrateError::NotPositiveDefinite { what })?;
    let mut x = b.to_vec();
    forward_substitute(&l, n, &mut x);
    back_substitute_transposed(&l, n, &mut x);
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::close;

    #[test]
    fn cholesky_hand_case() {
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 1.0, 2f64.sqrt()]);
        let x = solve_spd(&[4.0, 2.0, 2.0, 3.0], 2, &[2.0, 1.0], "a").unwrap();
        // [4 2; 2 3] x = [2 1] -> x = (0.5, 0).
        assert!(close(x[0], 0.5, 1e-15) && close(x[1], 0.0, 1e-15));
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(cholesky(&[0.0], 1).is_none());
        assert!(cholesky(&[f64::NAN], 1).is_none());
    }
}
