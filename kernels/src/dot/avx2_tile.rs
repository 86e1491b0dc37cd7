//! [`super::dot_tile`] with AVX2 + FMA: blocks of three weight rows by four tokens (twelve
//! accumulators, three weight runs and one token run fill the sixteen registers), each result
//! exactly [`super::dot_block`]'s: the same lanes, the same fused multiply-adds in the same
//! order, the same `hsum` and tail.
//!
//! The inner dimension is walked in steps of [`STEP`] values with the accumulators kept in
//! memory between steps (the same additions in the same order), so a block of four tokens
//! stays in L1 while every row of the tile passes: at width 7168 four tokens are 112 KiB, more
//! than a core's L1 (docs/speed-forward.md has the figures).

use std::arch::x86_64::*;

use super::avx2::{hsum, tail};

/// Weight rows per register block.
const ROWS: usize = 3;
/// Tokens per register block.
const TOKENS: usize = 4;
/// Values of the inner dimension per pass over the tile's rows (a multiple of 8).
const STEP: usize = 512;

/// Where a register block reads and adds: rows `w + q · n` (`q < R`) and tokens `x + k · n`
/// (`k < K`) over values `i.0..i.1`, into the accumulators `acc[q · TOKENS + k]`.
#[derive(Clone, Copy)]
struct Operands {
    w: *const f32,
    x: *const f32,
    n: usize,
    i: (usize, usize),
    acc: *mut __m256,
}

/// One register block of `R` rows by `K` tokens over `o.i` (see [`Operands`]).
///
/// # Safety
/// AVX2 + FMA; every row and token has `o.i.1` values from `o.w + q · o.n` and `o.x + k · o.n`,
/// `o.i.0` and `o.i.1` are multiples of 8, and `o.acc` holds `(R − 1) · TOKENS + K` registers.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const R: usize, const K: usize>(o: Operands) {
    let mut a = [[_mm256_setzero_ps(); K]; R];
    for (q, a) in a.iter_mut().enumerate() {
        for (k, a) in a.iter_mut().enumerate() {
            // SAFETY: q < R and k < K, within the caller's accumulators.
            *a = unsafe { *o.acc.add(q * TOKENS + k) };
        }
    }
    let mut i = o.i.0;
    while i < o.i.1 {
        let mut w = [_mm256_setzero_ps(); R];
        for (q, w) in w.iter_mut().enumerate() {
            // SAFETY: i + 8 <= o.i.1, and row q holds o.i.1 values.
            *w = unsafe { _mm256_loadu_ps(o.w.add(q * o.n + i)) };
        }
        for k in 0..K {
            // SAFETY: i + 8 <= o.i.1, and token k holds o.i.1 values.
            let x = unsafe { _mm256_loadu_ps(o.x.add(k * o.n + i)) };
            for (a, w) in a.iter_mut().zip(w) {
                a[k] = _mm256_fmadd_ps(x, w, a[k]);
            }
        }
        i += 8;
    }
    for (q, a) in a.iter().enumerate() {
        for (k, a) in a.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { *o.acc.add(q * TOKENS + k) = *a };
        }
    }
}

/// [`block`] for `r ≤ ROWS` rows and `k ≤ TOKENS` tokens.
///
/// # Safety
/// As [`block`], for `r` rows and `k` tokens.
#[target_feature(enable = "avx2,fma")]
unsafe fn any_block(r: usize, k: usize, o: Operands) {
    macro_rules! pick {
        ($($r:literal $k:literal),*) => {
            match (r, k) {
                // SAFETY: the caller's bounds, for exactly r rows and k tokens.
                $(($r, $k) => unsafe { block::<$r, $k>(o) },)*
                _ => unreachable!("at most {ROWS} rows and {TOKENS} tokens"),
            }
        };
    }
    pick!(3 4, 3 3, 3 2, 3 1, 2 4, 2 3, 2 2, 2 1, 1 4, 1 3, 1 2, 1 1)
}

/// [`super::dot_tile`]: `out[k · r + q]` for the `r` rows of `rows` and the `t` tokens of `xs`
/// (row-major, `n` values each).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `n > 0`, `rows` holds `r · n` values, `xs` `t · n` and
/// `out` `r · t`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(rows: &[f32], xs: &[f32], n: usize, out: &mut [f32]) {
    let (r, t) = (rows.len() / n, xs.len() / n);
    let n8 = n - n % 8;
    let mut acc = vec![_mm256_setzero_ps(); r * TOKENS];
    for k0 in (0..t).step_by(TOKENS) {
        let kc = TOKENS.min(t - k0);
        acc.fill(_mm256_setzero_ps());
        for i0 in (0..n8).step_by(STEP) {
            let i = (i0, (i0 + STEP).min(n8));
            for q0 in (0..r).step_by(ROWS) {
                let rc = ROWS.min(r - q0);
                let o = Operands {
                    w: rows[q0 * n..].as_ptr(),
                    x: xs[k0 * n..].as_ptr(),
                    n,
                    i,
                    acc: acc[q0 * TOKENS..].as_mut_ptr(),
                };
                // SAFETY: rows q0..q0 + rc and tokens k0..k0 + kc exist and hold n ≥ i.1
                // values; acc holds TOKENS registers for each of rows q0.. (r · TOKENS in all);
                // i.0 and i.1 are multiples of 8 (STEP and n8 are).
                unsafe { any_block(rc, kc, o) };
            }
        }
        for (q, row) in rows.chunks_exact(n).enumerate() {
            for j in 0..kc {
                let k = k0 + j;
                out[k * r + q] = hsum(acc[q * TOKENS + j]) + tail(row, &xs[k * n..(k + 1) * n], n8);
            }
        }
    }
}
