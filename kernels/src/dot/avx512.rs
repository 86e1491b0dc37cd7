//! [`super::dot_tile`] with AVX-512: each 512-bit register holds the eight lanes of two
//! dot products (one weight row against a pair of tokens), so every lane performs exactly the
//! fused multiply-adds of the AVX2 kernels in the same order and the results have their bits.
//!
//! A register block is [`ROWS`] weight rows by [`PAIRS`] token pairs: 24 accumulators, four
//! broadcast weight runs and one token-pair run in the 32 registers, ten loads per 24 FMAs
//! (AVX2's 3 × 4 block: seven loads per 12). The inner dimension is walked in steps of
//! [`STEP`] values with the accumulators kept in memory between steps (the same additions in
//! the same order), so a block of tokens stays in L1 while every row of the tile passes:
//! equal speed at width 2880 (the L2 keeps up), +10–15 % at 7168 and 14336 (measured on an
//! AMD Zen 5 core, 60-row tiles; docs/speed-forward.md).

use std::arch::x86_64::*;

use super::avx2::{hsum, tail};

/// Weight rows per register block.
const ROWS: usize = 4;
/// Token pairs per register block.
const PAIRS: usize = 6;
/// Values of the inner dimension per pass over the tile's rows (a multiple of 8).
const STEP: usize = 512;

/// Where a register block reads and adds: rows `w + q · n` (`q < R`) and token pairs
/// `x + p · stride` (`p < P`) over values `i.0..i.1`, into the accumulators
/// `acc[q · PAIRS + p]`.
#[derive(Clone, Copy)]
struct Operands {
    w: *const f32,
    n: usize,
    x: *const f32,
    stride: usize,
    i: (usize, usize),
    acc: *mut __m512,
}

/// One register block of `R` rows by `P` pairs over `o.i` (see [`Operands`]).
///
/// # Safety
/// AVX-512 F + DQ; every row has `o.i.1` values from `o.w + q · o.n`, every pair `2 · o.i.1`
/// from `o.x + p · o.stride`, `o.i.0` and `o.i.1` are multiples of 8, and `o.acc` holds
/// `(R − 1) · PAIRS + P` registers.
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn block<const R: usize, const P: usize>(o: Operands) {
    let mut a = [[_mm512_setzero_ps(); P]; R];
    for (q, a) in a.iter_mut().enumerate() {
        for (p, a) in a.iter_mut().enumerate() {
            // SAFETY: q < R and p < P, within the caller's accumulators.
            *a = unsafe { *o.acc.add(q * PAIRS + p) };
        }
    }
    let mut i = o.i.0;
    while i < o.i.1 {
        let mut w = [_mm512_setzero_ps(); R];
        for (q, w) in w.iter_mut().enumerate() {
            // SAFETY: i + 8 <= o.i.1, and row q holds o.i.1 values.
            *w = _mm512_broadcast_f32x8(unsafe { _mm256_loadu_ps(o.w.add(q * o.n + i)) });
        }
        for p in 0..P {
            // SAFETY: 2i + 16 <= 2 · o.i.1, and pair p holds 2 · o.i.1 values.
            let x = unsafe { _mm512_loadu_ps(o.x.add(p * o.stride + 2 * i)) };
            for (a, w) in a.iter_mut().zip(w) {
                a[p] = _mm512_fmadd_ps(x, w, a[p]);
            }
        }
        i += 8;
    }
    for (q, a) in a.iter().enumerate() {
        for (p, a) in a.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { *o.acc.add(q * PAIRS + p) = *a };
        }
    }
}

/// [`block`] for `r ≤ ROWS` rows and `p ≤ PAIRS` pairs.
///
/// # Safety
/// As [`block`], for `r` rows and `p` pairs.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn any_block(r: usize, p: usize, o: Operands) {
    macro_rules! pick {
        ($($r:literal $p:literal),*) => {
            match (r, p) {
                // SAFETY: the caller's bounds, for exactly r rows and p pairs.
                $(($r, $p) => unsafe { block::<$r, $p>(o) },)*
                _ => unreachable!("at most {ROWS} rows and {PAIRS} pairs"),
            }
        };
    }
    pick!(4 6, 4 5, 4 4, 4 3, 4 2, 4 1, 3 6, 3 5, 3 4, 3 3, 3 2, 3 1, 2 6, 2 5, 2 4, 2 3, 2 2, 2 1, 1 6, 1 5, 1 4, 1 3, 1 2, 1 1)
}

/// [`super::dot_tile`]: `out[k · r + q]` for the `r` rows of `rows` and the tokens `xs`, whose
/// pairs are laid out in `pairs` as [`super::Tokens`] holds them.
///
/// # Safety
/// The CPU must support AVX-512 F + DQ, AVX2 and FMA; `n > 0`, `rows` holds `r · n` values,
/// `xs` `t · n`, `pairs` `⌈t / 2⌉ · 2 · (n − n % 8)` and `out` `r · t`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub(super) unsafe fn tile(rows: &[f32], xs: &[f32], pairs: &[f32], n: usize, out: &mut [f32]) {
    let (r, t) = (rows.len() / n, xs.len() / n);
    let n8 = n - n % 8;
    let stride = 2 * n8;
    let n_pairs = t.div_ceil(2);
    let mut acc = vec![_mm512_setzero_ps(); r * PAIRS];
    for p0 in (0..n_pairs).step_by(PAIRS) {
        let pc = PAIRS.min(n_pairs - p0);
        acc.fill(_mm512_setzero_ps());
        for i0 in (0..n8).step_by(STEP) {
            let i = (i0, (i0 + STEP).min(n8));
            for q0 in (0..r).step_by(ROWS) {
                let rc = ROWS.min(r - q0);
                let o = Operands {
                    w: rows[q0 * n..].as_ptr(),
                    n,
                    x: pairs[p0 * stride..].as_ptr(),
                    stride,
                    i,
                    acc: acc[q0 * PAIRS..].as_mut_ptr(),
                };
                // SAFETY: rows q0..q0 + rc exist and hold n ≥ i.1 values; pairs p0..p0 + pc
                // exist and hold 2 · n8 ≥ 2 · i.1 values; acc holds PAIRS registers for each of
                // rows q0.. (r · PAIRS in all); i.0 and i.1 are multiples of 8 (STEP and n8 are).
                unsafe { any_block(rc, pc, o) };
            }
        }
        for (q, row) in rows.chunks_exact(n).enumerate() {
            for p in 0..pc {
                let a = acc[q * PAIRS + p];
                let k = 2 * (p0 + p);
                out[k * r + q] = hsum(_mm512_castps512_ps256(a)) + tail(row, &xs[k * n..(k + 1) * n], n8);
                if k + 1 < t {
                    out[(k + 1) * r + q] =
                        hsum(_mm512_extractf32x8_ps::<1>(a)) + tail(row, &xs[(k + 1) * n..(k + 2) * n], n8);
                }
            }
        }
    }
}
