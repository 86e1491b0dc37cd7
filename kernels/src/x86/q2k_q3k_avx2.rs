//! Q2_K and Q3_K on AVX2, bit-exact. Q2_K's 16-value sub-blocks run 8 to a vector through
//! the k-quant search of `kquants_avx2` (`make_qkx2_quants`, with `use_mad` without
//! importance weights); the super-block heads (`make_qp_quants` with weights) stay scalar,
//! the final codes are recomputed 8 lanes at a time.

use std::arch::x86_64::*;

use super::avx2::lanes;
use super::kquants_avx2::{
    N, Search, clamp, columns, imatrix_weights, make_qkx2_quants_xn, nearest_int, splat, sums_of_squares,
};
use crate::convert::f16_to_f32;
use crate::scalar::q2k_q3k::{self, Q2_K_BYTES};

/// Super-blocks per call: each is two vectors of 8 sub-blocks.
const Q2_SUPERBLOCKS: usize = N / 2;

/// Recomputes the codes of a Q2_K super-block whose head (scales, d, dmin) is written, as
/// `q2k_q3k::finish_q2_k` does (sub-blocks whose scale is 0 keep `l`), and packs them.
#[target_feature(enable = "avx2")]
fn finish_q2_k(x: &[f32], l: &mut [u8; 256], b: &mut [u8]) {
    assert!(x.len() >= 256 && b.len() >= Q2_K_BYTES);
    let d_all = f16_to_f32(u16::from_le_bytes([b[80], b[81]]));
    let m_all = f16_to_f32(u16::from_le_bytes([b[82], b[83]]));
    for j in 0..16 {
        let d = d_all * (b[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let (dv, dmv) = (splat(d), splat(m_all * (b[j] >> 4) as f32));
        for h in 0..2 {
            // SAFETY: `x` holds 256 f32, 16 j + 8 h + 8 <= 256; unaligned load.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(16 * j + 8 * h)) };
            let q = clamp(nearest_int(_mm256_div_ps(_mm256_add_ps(v, dmv), dv)), 3);
            let mut out = [0i32; 8];
            // SAFETY: `out` has room for 8 i32; unaligned store.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), q) };
            for (k, &q) in out.iter().enumerate() {
                l[16 * j + 8 * h + k] = q as u8;
            }
        }
    }
    q2k_q3k::pack_2bit(l, &mut b[16..80]);
}

/// [`Q2_SUPERBLOCKS`] Q2_K super-blocks, with importance weights `qw` (one per value) or
/// without.
#[target_feature(enable = "avx2,f16c")]
fn q2_k_superblocks(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; 16];
    let mut wv = [[zero; N]; 16];
    let mut sw = [[0f32; 8]; N];
    let sum_x2 = qw.map(|_| sums_of_squares::<Q2_SUPERBLOCKS>(x, 256));
    for g in 0..N {
        let r = 128 * g..128 * g + 128;
        let c = columns::<16>(&x[r.clone()]);
        let w = match (qw, sum_x2) {
            (Some(qw), Some(s)) => {
                let (w, sums) = imatrix_weights(&c, &columns::<16>(&qw[r]), s[g / 2] / 256.0);
                sw[g] = lanes(sums);
                w
            }
            _ => c.map(|v| _mm256_andnot_ps(splat(-0.0), v)),
        };
        for i in 0..16 {
            xv[i][g] = c[i];
            wv[i][g] = w[i];
        }
    }
    let mut l = [[0u8; 256]; N];
    let found = if qw.is_some() {
        make_qkx2_quants_xn::<16, false>(&Search::weighted(3), &xv, &wv, &mut l)
    } else {
        make_qkx2_quants_xn::<16, true>(&Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15 }, &xv, &wv, &mut l)
    };
    for s in 0..Q2_SUPERBLOCKS {
        let (mut scales, mut mins, mut sums) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut codes = [0u8; 256];
        for h in 0..2 {
            let g = 2 * s + h;
            scales[8 * h..8 * h + 8].copy_from_slice(&found[g].0);
            mins[8 * h..8 * h + 8].copy_from_slice(&found[g].1);
            sums[8 * h..8 * h + 8].copy_from_slice(&sw[g]);
            codes[128 * h..128 * h + 128].copy_from_slice(&l[g][..128]);
        }
        let b = &mut y[Q2_K_BYTES * s..Q2_K_BYTES * (s + 1)];
        if qw.is_some() {
            q2k_q3k::q2_k_weighted_head(&scales, &mins, &sums, b);
        } else {
            q2k_q3k::q2_k_head(&scales, &mins, b);
        }
        finish_q2_k(&x[256 * s..256 * s + 256], &mut codes, b);
    }
}

/// Q2_K without importance weights (`quantize_row_q2_K_ref`), values finite.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q2_k(x: &[f32], y: &mut [u8]) {
    let mut xs = x.chunks_exact(256 * Q2_SUPERBLOCKS);
    let mut ys = y.chunks_exact_mut(Q2_K_BYTES * Q2_SUPERBLOCKS);
    for (x, y) in (&mut xs).zip(&mut ys) {
        q2_k_superblocks(x, y, None);
    }
    q2k_q3k::quantize_q2_k(xs.remainder(), ys.into_remainder());
}

/// One Q2_K row with importance weights `qw` (`quantize_row_q2_K_impl`), values finite.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q2_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let mut xs = x.chunks_exact(256 * Q2_SUPERBLOCKS);
    let mut ys = y.chunks_exact_mut(Q2_K_BYTES * Q2_SUPERBLOCKS);
    let mut ws = qw.chunks_exact(256 * Q2_SUPERBLOCKS);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        q2_k_superblocks(x, y, Some(qw));
    }
    q2k_q3k::quantize_q2_k_weighted(xs.remainder(), ys.into_remainder(), ws.remainder());
}
