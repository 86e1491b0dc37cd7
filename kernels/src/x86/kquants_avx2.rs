//! Q4_K, Q5_K and Q6_K on AVX2, bit-exact: a super-block's sub-blocks run in the 8 lanes,
//! each lane doing `make_qkx2_quants` (or `make_qx_quants`) for its sub-block with the scalar
//! reference's operations in the reference's order (sums accumulate element by element
//! within a lane; nothing is summed across lanes), several super-blocks at a time. Only the
//! per-sub-block search is vectorized; packing stays scalar. The search also serves Q2_K
//! (16-value sub-blocks) and the importance-weighted variants.

use std::arch::x86_64::*;

use super::avx2::{lanes, pack_i8x32};
use crate::scalar::common::make_qp_quants;
use crate::scalar::kquants::{self, KParams};

#[target_feature(enable = "avx2")]
pub(super) fn splat(v: f32) -> __m256 {
    _mm256_set1_ps(v)
}

/// `nearest_int` on 8 lanes: the same 1.5·2^23 trick, so the same bits.
#[target_feature(enable = "avx2")]
pub(super) fn nearest_int(f: __m256) -> __m256i {
    let val = _mm256_castps_si256(_mm256_add_ps(f, splat(12_582_912.0)));
    _mm256_sub_epi32(_mm256_and_si256(val, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000))
}

#[target_feature(enable = "avx2")]
pub(super) fn clamp(l: __m256i, nmax: i32) -> __m256i {
    _mm256_max_epi32(_mm256_min_epi32(l, _mm256_set1_epi32(nmax)), _mm256_setzero_si256())
}

#[target_feature(enable = "avx2")]
pub(super) fn blend(a: __m256, b: __m256, take_b: __m256) -> __m256 {
    _mm256_blendv_ps(a, b, take_b)
}

/// [`blend`] for state kept in memory across loop iterations: an opaque register blend, so the
/// compiler cannot turn `x = blend(x, new, m)` into a masked store (`vmaskmovps`, slow on AMD
/// and stalling the next load of `x`).
#[target_feature(enable = "avx2")]
pub(super) fn blend_state(a: __m256, b: __m256, take_b: __m256) -> __m256 {
    let r: __m256;
    // SAFETY: one register-only AVX instruction (AVX2 is enabled here): no memory, no stack.
    unsafe {
        std::arch::asm!(
            "vblendvps {r}, {a}, {b}, {m}",
            r = lateout(ymm_reg) r, a = in(ymm_reg) a, b = in(ymm_reg) b, m = in(ymm_reg) take_b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// Vectors of 8 sub-blocks searched together. Each lane's sums are sequential (as in the
/// reference), so one vector alone is latency-bound; several give the CPU independent chains.
pub(super) const N: usize = 4;

/// `make_qkx2_quants`' parameters.
#[derive(Clone, Copy)]
pub(super) struct Search {
    /// Largest code.
    pub nmax: i32,
    /// First candidate's offset from `nmax`.
    pub rmin: f32,
    /// Step between candidates.
    pub rdelta: f32,
    /// Candidates after the first.
    pub nstep: i32,
}

impl Search {
    /// Q4_K's or Q5_K's search without importance weights.
    fn plain(p: &KParams) -> Search {
        Search { nmax: p.nmax, rmin: p.rmin, rdelta: p.rdelta, nstep: p.nstep }
    }

    /// The search of ggml's weighted `quantize_row_q{2,4,5}_K_impl`.
    pub(super) const fn weighted(nmax: i32) -> Search {
        Search { nmax, rmin: -0.9, rdelta: 0.05, nstep: 36 }
    }
}

/// `make_qkx2_quants` on [`N`] vectors of 8 sub-blocks of `E` values (`use_mad` = `MAD`).
/// `x[i][g]` holds element i of the 8 sub-blocks of vector g (lane j = sub-block j); likewise
/// `w`. Returns per vector and lane (scale, -min), and writes the codes to `l[g][E * j + i]`.
#[target_feature(enable = "avx2")]
pub(super) fn make_qkx2_quants_xn<const E: usize, const MAD: bool>(
    p: &Search,
    x: &[[__m256; N]; E],
    w: &[[__m256; N]; E],
    l: &mut [[u8; 256]; N],
) -> [([f32; 8], [f32; 8]); N] {
    let nmax = p.nmax;
    // The error measure: squared, or absolute with use_mad.
    let measure = |d: __m256| if MAD { _mm256_andnot_ps(splat(-0.0), d) } else { _mm256_mul_ps(d, d) };
    let zero = _mm256_setzero_ps();
    let (mut min, mut max, mut sum_w, mut sum_x) = ([zero; N], [zero; N], [zero; N], [zero; N]);
    for g in 0..N {
        min[g] = x[0][g];
        max[g] = x[0][g];
        sum_w[g] = w[0][g];
        sum_x[g] = _mm256_mul_ps(sum_w[g], x[0][g]);
    }
    for i in 1..E {
        for g in 0..N {
            min[g] = blend(min[g], x[i][g], _mm256_cmp_ps::<_CMP_LT_OQ>(x[i][g], min[g]));
            max[g] = blend(max[g], x[i][g], _mm256_cmp_ps::<_CMP_GT_OQ>(x[i][g], max[g]));
            sum_w[g] = _mm256_add_ps(sum_w[g], w[i][g]);
            sum_x[g] = _mm256_add_ps(sum_x[g], _mm256_mul_ps(w[i][g], x[i][g]));
        }
    }
    let (mut flat, mut range, mut scale, mut best_error) = ([zero; N], [zero; N], [zero; N], [zero; N]);
    let mut xm = [[zero; N]; E];
    // The best codes so far are `nearest_int(best_iscale · (x - best_from))`, recomputed at the
    // end: per lane, the scale and the min they were computed with.
    let (mut best_iscale, mut best_from) = ([zero; N], [zero; N]);
    // Per vector, the largest |x - min| of each lane: bounds the candidates' products below.
    let mut xm_max = [zero; N];
    let abs = |v: __m256| _mm256_andnot_ps(splat(-0.0), v);
    for g in 0..N {
        min[g] = blend(min[g], zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min[g], zero));
        flat[g] = _mm256_cmp_ps::<_CMP_EQ_OQ>(max[g], min[g]);
        // `max - min` and `x - min` use the current min, which an accepted step changes.
        range[g] = _mm256_sub_ps(max[g], min[g]);
        let iscale = _mm256_div_ps(splat(nmax as f32), range[g]);
        scale[g] = _mm256_div_ps(splat(1.0), iscale);
        (best_iscale[g], best_from[g]) = (iscale, min[g]);
        for i in 0..E {
            xm[i][g] = _mm256_sub_ps(x[i][g], min[g]);
            xm_max[g] = _mm256_max_ps(xm_max[g], abs(xm[i][g]));
            let lf = _mm256_cvtepi32_ps(clamp(nearest_int(_mm256_mul_ps(iscale, xm[i][g])), nmax));
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[g], lf), min[g]), x[i][g]);
            best_error[g] = _mm256_add_ps(best_error[g], _mm256_mul_ps(w[i][g], measure(diff)));
        }
    }
    let nmax_f = splat(nmax as f32);
    let mut lfs = [[zero; N]; E];
    for is in 0..=p.nstep {
        let numerator = splat(p.rmin + p.rdelta * is as f32 + nmax as f32);
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; N], [zero; N], [zero; N]);
        let mut iscale = [zero; N];
        // Where every product `iscale · (x - min)` is below 2^21 in magnitude, `nearest_int`
        // is rounding to nearest even, which `round_ps` does without the integer detour; so it
        // is where the range is 0 (then x - min ≤ 0, and ±inf and NaN products clamp to 0 both
        // ways). Elsewhere (huge or infinite scales) the codes take `nearest_int`'s own steps.
        let mut rounding = -1;
        for g in 0..N {
            iscale[g] = _mm256_div_ps(numerator, range[g]);
            let small = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_mul_ps(abs(iscale[g]), xm_max[g]), splat(2_097_152.0));
            let flat_range = _mm256_cmp_ps::<_CMP_EQ_OQ>(range[g], zero);
            rounding &= _mm256_movemask_ps(_mm256_or_ps(small, flat_range)) - 0xff;
        }
        let rounding = rounding == 0;
        for i in 0..E {
            for g in 0..N {
                let v = _mm256_mul_ps(iscale[g], xm[i][g]);
                let lf = if rounding {
                    // max returns its second operand (+0) for NaN and for −0.
                    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                    _mm256_min_ps(_mm256_max_ps(r, zero), nmax_f)
                } else {
                    _mm256_cvtepi32_ps(clamp(nearest_int(v), nmax))
                };
                lfs[i][g] = lf;
                let wl = _mm256_mul_ps(w[i][g], lf);
                sum_l[g] = _mm256_add_ps(sum_l[g], wl);
                sum_l2[g] = _mm256_add_ps(sum_l2[g], _mm256_mul_ps(wl, lf));
                sum_xl[g] = _mm256_add_ps(sum_xl[g], _mm256_mul_ps(wl, x[i][g]));
            }
        }
        let (mut positive, mut this_scale, mut this_min) = ([zero; N], [zero; N], [zero; N]);
        let mut any_positive = 0;
        for g in 0..N {
            let d = _mm256_sub_ps(_mm256_mul_ps(sum_w[g], sum_l2[g]), _mm256_mul_ps(sum_l[g], sum_l[g]));
            positive[g] = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
            any_positive |= _mm256_movemask_ps(positive[g]);
            let s =
                _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w[g], sum_xl[g]), _mm256_mul_ps(sum_x[g], sum_l[g])), d);
            let m =
                _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2[g], sum_x[g]), _mm256_mul_ps(sum_l[g], sum_xl[g])), d);
            let clip = _mm256_cmp_ps::<_CMP_GT_OQ>(m, zero);
            this_min[g] = blend(m, zero, clip);
            this_scale[g] = blend(s, _mm256_div_ps(sum_xl[g], sum_l2[g]), clip);
        }
        if any_positive == 0 {
            continue;
        }
        let mut cur_error = [zero; N];
        for i in 0..E {
            for g in 0..N {
                let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale[g], lfs[i][g]), this_min[g]), x[i][g]);
                cur_error[g] = _mm256_add_ps(cur_error[g], _mm256_mul_ps(w[i][g], measure(diff)));
            }
        }
        for g in 0..N {
            let better = _mm256_and_ps(positive[g], _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error[g], best_error[g]));
            if _mm256_movemask_ps(better) == 0 {
                continue;
            }
            best_iscale[g] = blend_state(best_iscale[g], iscale[g], better);
            best_from[g] = blend_state(best_from[g], min[g], better);
            best_error[g] = blend_state(best_error[g], cur_error[g], better);
            scale[g] = blend_state(scale[g], this_scale[g], better);
            min[g] = blend_state(min[g], this_min[g], better);
            range[g] = _mm256_sub_ps(max[g], min[g]);
            xm_max[g] = zero;
            for i in 0..E {
                xm[i][g] = _mm256_sub_ps(x[i][g], min[g]);
                xm_max[g] = _mm256_max_ps(xm_max[g], abs(xm[i][g]));
            }
        }
    }
    let mut out = [([0f32; 8], [0f32; 8]); N];
    for g in 0..N {
        // Flat sub-blocks: codes 0, scale 0, min as clamped.
        for i in 0..E {
            let mut v = [0i32; 8];
            let xm = _mm256_sub_ps(x[i][g], best_from[g]);
            let q = clamp(nearest_int(_mm256_mul_ps(best_iscale[g], xm)), nmax);
            let q = _mm256_andnot_si256(_mm256_castps_si256(flat[g]), q);
            // SAFETY: `v` has room for 8 i32; unaligned store.
            unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), q) };
            for (j, &q) in v.iter().enumerate() {
                l[g][E * j + i] = q as u8;
            }
        }
        out[g] = (lanes(_mm256_andnot_ps(flat[g], scale[g])), lanes(_mm256_sub_ps(zero, min[g])));
    }
    out
}

/// The transpose of an 8×8 matrix of f32 held as 8 row vectors.
#[target_feature(enable = "avx2")]
pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// 8 sub-blocks of `E` consecutive values (`x` holds `8 * E`; `E` a multiple of 8) as `E`
/// vectors: lane j of vector i is element i of sub-block j.
#[target_feature(enable = "avx2")]
pub(super) fn columns<const E: usize>(x: &[f32]) -> [__m256; E] {
    assert!(x.len() >= 8 * E && E.is_multiple_of(8));
    let mut out = [_mm256_setzero_ps(); E];
    for c in 0..E / 8 {
        // SAFETY: row j, columns 8c..8c+8 lie within `x` (8 rows of E values).
        let mut rows = [_mm256_setzero_ps(); 8];
        for (j, r) in rows.iter_mut().enumerate() {
            // SAFETY: as above.
            *r = unsafe { _mm256_loadu_ps(x.as_ptr().add(E * j + 8 * c)) };
        }
        out[8 * c..8 * c + 8].copy_from_slice(&transpose8(rows));
    }
    out
}

/// `Σ x²` of each of `G` runs of `n` values (`x` holds `G * n`), each summed in order: the
/// runs interleaved so that their dependency chains overlap.
pub(super) fn sums_of_squares<const G: usize>(x: &[f32], n: usize) -> [f32; G] {
    let mut s = [0f32; G];
    for i in 0..n {
        for (g, s) in s.iter_mut().enumerate() {
            let v = x[n * g + i];
            *s += v * v;
        }
    }
    s
}

/// [`sums_of_squares`] of 8 consecutive super-blocks (`x` holds 8·256 values): lanes are
/// super-blocks (fed by 8×8 transposes), each summing its `x²` in order, 8 chains at once.
#[target_feature(enable = "avx2")]
pub(super) fn sums_of_squares8(x: &[f32]) -> [f32; 8] {
    assert!(x.len() >= 8 * 256);
    let mut s = _mm256_setzero_ps();
    for c in (0..256).step_by(8) {
        let mut rows = [_mm256_setzero_ps(); 8];
        for (g, r) in rows.iter_mut().enumerate() {
            // SAFETY: 256 g + c + 8 <= 2048 values are readable (checked above); unaligned load.
            *r = unsafe { _mm256_loadu_ps(x.as_ptr().add(256 * g + c)) };
        }
        for v in transpose8(rows) {
            s = _mm256_add_ps(s, _mm256_mul_ps(v, v));
        }
    }
    lanes(s)
}

/// Importance-weighted sub-block weights `qw · sqrt(sigma2 + x²)` and their per-lane sums
/// (each lane summed in order from 0, as ggml's `sw`).
#[target_feature(enable = "avx2")]
pub(super) fn imatrix_weights<const E: usize>(x: &[__m256; E], qw: &[__m256; E], sigma2: f32) -> ([__m256; E], __m256) {
    let s = splat(sigma2);
    // Plain loops: closures handed to `array::from_fn` would not be inlined into this AVX2 code.
    let mut w = [_mm256_setzero_ps(); E];
    let mut sw = _mm256_setzero_ps();
    for i in 0..E {
        w[i] = _mm256_mul_ps(qw[i], _mm256_sqrt_ps(_mm256_add_ps(s, _mm256_mul_ps(x[i], x[i]))));
        sw = _mm256_add_ps(sw, w[i]);
    }
    (w, sw)
}

/// [`N`] Q4_K or Q5_K super-blocks (`x` holds `256 * N` values): the vectorized search, then
/// the reference's packing.
#[target_feature(enable = "avx2")]
fn superblocks(p: &KParams, x: &[f32], y: &mut [u8]) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; 32];
    let mut wv = [[zero; N]; 32];
    for g in 0..N {
        let columns = columns::<32>(&x[256 * g..256 * g + 256]);
        let mut sum_x2 = zero;
        for (i, c) in columns.iter().enumerate() {
            xv[i][g] = *c;
            sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(*c, *c));
        }
        let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, splat(32.0)));
        for i in 0..32 {
            wv[i][g] = _mm256_add_ps(av_x, _mm256_andnot_ps(splat(-0.0), xv[i][g]));
        }
    }
    let mut l = [[0u8; 256]; N];
    let found = make_qkx2_quants_xn::<32, false>(&Search::plain(p), &xv, &wv, &mut l);
    for g in 0..N {
        let (scales, mins) = &found[g];
        let block = &mut y[p.block_bytes * g..p.block_bytes * (g + 1)];
        let (ls, lm, d, dmin) = kquants::sub_block_codes(scales, mins);
        kquants::pack_scales(&ls, &lm, d, dmin, block);
        requantize(p.nmax, &x[256 * g..256 * g + 256], block, &mut l[g]);
        kquants::pack_codes(p, &l[g], block);
    }
}

/// [`N`] Q4_K or Q5_K super-blocks with importance weights `qw` (one per value of `x`):
/// `quantize_row_q{4,5}_K_impl`.
#[target_feature(enable = "avx2")]
fn superblocks_weighted(p: &KParams, x: &[f32], y: &mut [u8], qw: &[f32]) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; 32];
    let mut wv = [[zero; N]; 32];
    let mut sw = [[0f32; 8]; N];
    let sum_x2 = sums_of_squares::<N>(x, 256);
    for g in 0..N {
        let r = 256 * g..256 * g + 256;
        let columns = columns::<32>(&x[r.clone()]);
        let (w, sums) = imatrix_weights(&columns, &self::columns::<32>(&qw[r]), 2.0 * sum_x2[g] / 256.0);
        for i in 0..32 {
            xv[i][g] = columns[i];
            wv[i][g] = w[i];
        }
        sw[g] = lanes(sums);
    }
    let mut l = [[0u8; 256]; N];
    let found = make_qkx2_quants_xn::<32, false>(&Search::weighted(p.nmax), &xv, &wv, &mut l);
    for g in 0..N {
        let (scales, mins) = &found[g];
        let block = &mut y[p.block_bytes * g..p.block_bytes * (g + 1)];
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let d_block = make_qp_quants(63, scales, &mut ls, &sw[g]);
        let m_block = make_qp_quants(63, mins, &mut lm, &sw[g]);
        kquants::pack_scales(&ls.map(|v| v.min(63)), &lm.map(|v| v.min(63)), d_block, m_block, block);
        requantize(p.nmax, &x[256 * g..256 * g + 256], block, &mut l[g]);
        kquants::pack_codes(p, &l[g], block);
    }
}

/// The codes of every sub-block whose rounded scale is not 0, recomputed from the packed
/// head `b` as the reference does: `nearest_int((x + dm) / d)` clamped to `0..=nmax` (the
/// division and the 1.5·2^23 trick lane by lane, so the same bits for any value).
#[target_feature(enable = "avx2")]
fn requantize(nmax: i32, x: &[f32], b: &[u8], l: &mut [u8; 256]) {
    for j in 0..8 {
        let Some((d, dm)) = kquants::sub_block_scale(j, b) else { continue };
        let (dv, dmv) = (splat(d), splat(dm));
        let xs = &x[32 * j..32 * j + 32];
        let mut q = [_mm256_setzero_si256(); 4];
        for (c, q) in q.iter_mut().enumerate() {
            // SAFETY: `xs` holds 32 f32, c < 4; unaligned load.
            let v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * c)) };
            *q = clamp(nearest_int(_mm256_div_ps(_mm256_add_ps(v, dmv), dv)), nmax);
        }
        let ordered = pack_i8x32(&q); // codes are in 0..=31
        // SAFETY: `l[32 * j..]` holds 32 bytes (j < 8); unaligned store.
        unsafe { _mm256_storeu_si256(l[32 * j..].as_mut_ptr().cast(), ordered) };
    }
}

/// Q4_K (`p` = Q4_K parameters) or Q5_K, all super-blocks; false on a NaN or infinity.
#[target_feature(enable = "avx2")]
pub fn quantize(p: &KParams, x: &[f32], y: &mut [u8]) -> bool {
    if crate::backend::first_non_finite(x).is_some() {
        return false;
    }
    let mut xs = x.chunks_exact(256 * N);
    let mut ys = y.chunks_exact_mut(p.block_bytes * N);
    for (x, y) in (&mut xs).zip(&mut ys) {
        superblocks(p, x, y);
    }
    kquants::quantize_k(p, xs.remainder(), ys.into_remainder());
    true
}

/// Q4_K or Q5_K rows (`n_per_row` values each) with importance weights `qw` (one per column);
/// values finite.
#[target_feature(enable = "avx2")]
pub fn quantize_weighted(p: &KParams, x: &[f32], y: &mut [u8], n_per_row: usize, qw: &[f32]) {
    let row_bytes = n_per_row / 256 * p.block_bytes;
    for (x, y) in x.chunks_exact(n_per_row).zip(y.chunks_exact_mut(row_bytes)) {
        let mut xs = x.chunks_exact(256 * N);
        let mut ys = y.chunks_exact_mut(p.block_bytes * N);
        let mut ws = qw.chunks_exact(256 * N);
        for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
            superblocks_weighted(p, x, y, qw);
        }
        crate::scalar::weighted::k_row(p, xs.remainder(), ys.into_remainder(), ws.remainder());
    }
}

/// Q6_K: vectors of 8 sub-blocks (of 16 values) searched together: 2 super-blocks.
pub(super) const Q6_VECTORS: usize = 4;

/// Codes clamped to `-nmax..nmax`, as `make_qx_quants` clamps them.
#[target_feature(enable = "avx2")]
fn clamp_signed(l: __m256i, nmax: i32) -> __m256i {
    _mm256_max_epi32(_mm256_min_epi32(l, _mm256_set1_epi32(nmax - 1)), _mm256_set1_epi32(-nmax))
}

/// Codes of 16 values in 8 lanes (`codes[i]` lane j: value i of sub-block j, each in 0..128)
/// to bytes by sub-block: `out[16·j + i]`. Packs, then transposes 4×4 blocks of bytes and of
/// 32-bit groups within the 128-bit halves (half h holding sub-blocks 4h..4h+4).
#[target_feature(enable = "avx2")]
pub(super) fn transpose_codes(codes: &[__m256i; 16], out: &mut [i8; 128]) {
    // b[k], half h: bytes (i − 4k)·4 + (j − 4h) for values 4k..4k+4, then by sub-block.
    let by_sub_block = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    );
    let b: [__m256i; 4] = std::array::from_fn(|k| {
        let lo = _mm256_packs_epi32(codes[4 * k], codes[4 * k + 1]);
        let hi = _mm256_packs_epi32(codes[4 * k + 2], codes[4 * k + 3]);
        _mm256_shuffle_epi8(_mm256_packs_epi16(lo, hi), by_sub_block)
    });
    // 32-bit group g of b[k] (half h) holds sub-block 4h + g's values 4k..4k+4.
    let (t01lo, t01hi) = (_mm256_unpacklo_epi32(b[0], b[1]), _mm256_unpackhi_epi32(b[0], b[1]));
    let (t23lo, t23hi) = (_mm256_unpacklo_epi32(b[2], b[3]), _mm256_unpackhi_epi32(b[2], b[3]));
    let rows = [
        _mm256_unpacklo_epi64(t01lo, t23lo),
        _mm256_unpackhi_epi64(t01lo, t23lo),
        _mm256_unpacklo_epi64(t01hi, t23hi),
        _mm256_unpackhi_epi64(t01hi, t23hi),
    ];
    for (g, row) in rows.into_iter().enumerate() {
        // SAFETY: `out` holds 128 bytes; sub-blocks g and 4 + g start at 16·g and 64 + 16·g,
        // each 16 bytes; unaligned stores.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().add(16 * g).cast(), _mm256_castsi256_si128(row));
            _mm_storeu_si128(out.as_mut_ptr().add(64 + 16 * g).cast(), _mm256_extracti128_si256::<1>(row));
        }
    }
}

/// `make_qx_quants(16, nmax, x, L, rmse_type = 1, qw)` for 8 sub-blocks per vector, with
/// weights `w` (`qw`, or x² without importance weights). `x[i][v]` holds element i of
/// sub-blocks 8v..8v+8 (lane j = sub-block 8v + j). Returns the scales and writes the codes
/// (offset by `nmax`) to `l[v][16 * j + i]`.
#[target_feature(enable = "avx2")]
pub(super) fn make_qx_quants_x(
    nmax: i32,
    x: &[[__m256; Q6_VECTORS]; 16],
    w: &[[__m256; Q6_VECTORS]; 16],
    l: &mut [[i8; 128]; Q6_VECTORS],
) -> [[f32; 8]; Q6_VECTORS] {
    const V: usize = Q6_VECTORS;
    let zero = _mm256_setzero_ps();
    let sign = splat(-0.0);
    let (mut max, mut amax) = ([zero; V], [zero; V]);
    for row in x {
        for v in 0..V {
            let ax = _mm256_andnot_ps(sign, row[v]);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[v]);
            amax[v] = blend(amax[v], ax, gt);
            max[v] = blend(max[v], row[v], gt);
        }
    }
    // One candidate: the weighted sums Σw·x·l, Σw·l·l of the codes for `iscale`. Lanes that
    // matter have amax ≥ 1e-15 (the others end as zeros), so |iscale·x| ≤ nmax + 1 and
    // `nearest_int` is rounding to nearest even: `round_ps`, clamped in floats.
    let mut wx = [[zero; V]; 16];
    for i in 0..16 {
        for v in 0..V {
            wx[i][v] = _mm256_mul_ps(w[i][v], x[i][v]);
        }
    }
    let (lo, hi) = (splat(-(nmax as f32)), splat((nmax - 1) as f32));
    let candidate = |iscale: &[__m256; V]| {
        let (mut sumlx, mut suml2) = ([zero; V], [zero; V]);
        for i in 0..16 {
            for v in 0..V {
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                    iscale[v], x[i][v],
                ));
                let lf = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                sumlx[v] = _mm256_add_ps(sumlx[v], _mm256_mul_ps(wx[i][v], lf));
                suml2[v] = _mm256_add_ps(suml2[v], _mm256_mul_ps(_mm256_mul_ps(w[i][v], lf), lf));
            }
        }
        (sumlx, suml2)
    };
    let mut iscale = [zero; V];
    for v in 0..V {
        iscale[v] = _mm256_div_ps(splat(-(nmax as f32)), max[v]);
    }
    // The codes are those of the winning `iscale`, recomputed at the end as the reference does.
    let mut best_iscale = iscale;
    let (sumlx, suml2) = candidate(&iscale);
    let (mut scale, mut best) = ([zero; V], [zero; V]);
    for v in 0..V {
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_OQ>(suml2[v], zero);
        scale[v] = _mm256_and_ps(nonzero, _mm256_div_ps(sumlx[v], suml2[v]));
        best[v] = _mm256_mul_ps(scale[v], sumlx[v]);
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let numerator = splat(-(nmax as f32 + 0.1 * is as f32));
        for v in 0..V {
            iscale[v] = _mm256_div_ps(numerator, max[v]);
        }
        let (sumlx, suml2) = candidate(&iscale);
        for v in 0..V {
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[v], zero);
            let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumlx[v], sumlx[v]), _mm256_mul_ps(best[v], suml2[v]));
            let accept = _mm256_and_ps(positive, gain);
            if _mm256_movemask_ps(accept) == 0 {
                continue;
            }
            let new_scale = _mm256_div_ps(sumlx[v], suml2[v]);
            best_iscale[v] = blend_state(best_iscale[v], iscale[v], accept);
            scale[v] = blend_state(scale[v], new_scale, accept);
            best[v] = blend_state(best[v], _mm256_mul_ps(new_scale, sumlx[v]), accept);
        }
    }
    let mut out = [[0f32; 8]; V];
    for v in 0..V {
        // All-but-zero sub-blocks: codes 0 (not offset), scale 0.
        let small = _mm256_cmp_ps::<_CMP_LT_OQ>(amax[v], splat(1e-15));
        let keep = _mm256_castps_si256(_mm256_andnot_ps(small, _mm256_castsi256_ps(_mm256_set1_epi32(-1))));
        let mut offsets = [_mm256_setzero_si256(); 16];
        for (i, o) in offsets.iter_mut().enumerate() {
            let code = clamp_signed(nearest_int(_mm256_mul_ps(best_iscale[v], x[i][v])), nmax);
            *o = _mm256_and_si256(keep, _mm256_add_epi32(code, _mm256_set1_epi32(nmax)));
        }
        transpose_codes(&offsets, &mut l[v]);
        out[v] = lanes(_mm256_andnot_ps(small, scale[v]));
    }
    out
}

/// `make_qx_quants(16, nmax, x, L, rmse_type = 1, qw)` for one run of 16 values (a
/// super-block's scales), its 19 candidate scales in the lanes of three vectors: each lane
/// sums Σw·x·l and Σw·l² over the values in order, and the choice among them is replayed as
/// the reference makes it. Returns the scale and writes the codes (offset by `nmax`) to `l`.
#[target_feature(enable = "avx2")]
pub(super) fn make_qx_quants_16(nmax: i32, x: &[f32; 16], qw: &[f32; 16], l: &mut [i8; 16]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        *l = [0; 16];
        return 0.0;
    }
    // Lane 0: the first guess -nmax/max (is = 0: -(nmax + 0.1·0) is -nmax); then
    // is = -9..=-1, 1..=9: -(nmax + 0.1 is)/max, the numerators formed in lanes.
    const IS: [[f32; 8]; 3] = [
        [0.0, -9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0],
        [-2.0, -1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [7.0, 8.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ];
    let maxv = splat(max);
    let mut iscale = [_mm256_setzero_ps(); 3];
    for (k, v) in iscale.iter_mut().enumerate() {
        // SAFETY: `IS[k]` holds 8 f32; unaligned load.
        let is = unsafe { _mm256_loadu_ps(IS[k].as_ptr()) };
        let numerator = _mm256_sub_ps(splat(-0.0), _mm256_add_ps(splat(nmax as f32), _mm256_mul_ps(splat(0.1), is)));
        *v = _mm256_div_ps(numerator, maxv);
    }
    let zero = _mm256_setzero_ps();
    let (mut sumlx, mut suml2) = ([zero; 3], [zero; 3]);
    for (&v, &w) in x.iter().zip(qw) {
        let (xv, wv) = (splat(v), splat(w));
        let wx = _mm256_mul_ps(wv, xv);
        for k in 0..3 {
            let lf = _mm256_cvtepi32_ps(clamp_signed(nearest_int(_mm256_mul_ps(iscale[k], xv)), nmax));
            sumlx[k] = _mm256_add_ps(sumlx[k], _mm256_mul_ps(wx, lf));
            suml2[k] = _mm256_add_ps(suml2[k], _mm256_mul_ps(_mm256_mul_ps(wv, lf), lf));
        }
    }
    let (mut sx, mut s2, mut is) = ([0f32; 24], [0f32; 24], [0f32; 24]);
    for k in 0..3 {
        sx[8 * k..8 * k + 8].copy_from_slice(&lanes(sumlx[k]));
        s2[8 * k..8 * k + 8].copy_from_slice(&lanes(suml2[k]));
        is[8 * k..8 * k + 8].copy_from_slice(&lanes(iscale[k]));
    }
    let mut scale = if s2[0] != 0.0 { sx[0] / s2[0] } else { 0.0 };
    let mut best = scale * sx[0];
    let mut chosen = 0;
    for c in 1..19 {
        if s2[c] > 0.0 && sx[c] * sx[c] > best * s2[c] {
            scale = sx[c] / s2[c];
            best = scale * sx[c];
            chosen = c;
        }
    }
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (crate::scalar::common::nearest_int(is[chosen] * v).clamp(-nmax, nmax - 1) + nmax) as i8;
    }
    scale
}

/// Sub-block s (of 16 values) of `x` (`16 * 8 * V` values) in vector s / 8, lane
/// s % 8: element i of each in `out[i][s / 8]`.
#[target_feature(enable = "avx2")]
pub(super) fn columns16<const V: usize>(x: &[f32]) -> [[__m256; V]; 16] {
    let mut out = [[_mm256_setzero_ps(); V]; 16];
    for v in 0..V {
        for (i, c) in columns::<16>(&x[128 * v..128 * v + 128]).into_iter().enumerate() {
            out[i][v] = c;
        }
    }
    out
}

/// Two Q6_K super-blocks (`x` holds 512 values), with importance weights `qw` (one per value)
/// or without (weights x²).
#[target_feature(enable = "avx2")]
fn q6_k_superblocks(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    const SUPERBLOCKS: usize = Q6_VECTORS / 2;
    let xv = columns16::<Q6_VECTORS>(x);
    let wv = match qw {
        Some(qw) => columns16::<Q6_VECTORS>(qw),
        None => {
            let mut w = xv;
            for v in w.iter_mut().flatten() {
                *v = _mm256_mul_ps(*v, *v);
            }
            w
        }
    };
    let mut codes = [[0i8; 128]; Q6_VECTORS];
    let found = make_qx_quants_x(32, &xv, &wv, &mut codes);
    for g in 0..SUPERBLOCKS {
        let mut scales = [0f32; 16];
        let mut l = [0i8; 256];
        for half in 0..2 {
            scales[8 * half..8 * half + 8].copy_from_slice(&found[2 * g + half]);
            l[128 * half..128 * half + 128].copy_from_slice(&codes[2 * g + half]);
        }
        kquants::finish_q6_k(&x[256 * g..256 * g + 256], &scales, &mut l, &mut y[210 * g..210 * g + 210]);
    }
}

/// Q6_K, all super-blocks; false on a NaN or infinity.
#[target_feature(enable = "avx2")]
pub fn quantize_q6_k(x: &[f32], y: &mut [u8]) -> bool {
    if crate::backend::first_non_finite(x).is_some() {
        return false;
    }
    const SUPERBLOCKS: usize = Q6_VECTORS / 2;
    let mut xs = x.chunks_exact(256 * SUPERBLOCKS);
    let mut ys = y.chunks_exact_mut(210 * SUPERBLOCKS);
    for (x, y) in (&mut xs).zip(&mut ys) {
        q6_k_superblocks(x, y, None);
    }
    kquants::quantize_q6_k(xs.remainder(), ys.into_remainder());
    true
}

/// One Q6_K row with importance weights `qw` (`quantize_row_q6_K_impl`), values finite.
#[target_feature(enable = "avx2")]
pub fn quantize_q6_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    const SUPERBLOCKS: usize = Q6_VECTORS / 2;
    let mut xs = x.chunks_exact(256 * SUPERBLOCKS);
    let mut ys = y.chunks_exact_mut(210 * SUPERBLOCKS);
    let mut ws = qw.chunks_exact(256 * SUPERBLOCKS);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        q6_k_superblocks(x, y, Some(qw));
    }
    crate::scalar::weighted::q6_k_row(xs.remainder(), ys.into_remainder(), ws.remainder());
}

/// `dl * v - ml` for 32 codes (bytes 0..=31 of `codes`), stored to `out[..32]`.
#[target_feature(enable = "avx2")]
fn put32(codes: __m256i, dl: f32, ml: f32, out: &mut [f32]) {
    assert!(out.len() >= 32);
    let (dv, mv) = (splat(dl), splat(ml));
    let halves = [_mm256_castsi256_si128(codes), _mm256_extracti128_si256::<1>(codes)];
    for (h, v) in halves.into_iter().enumerate() {
        for (k, v) in [v, _mm_srli_si128::<8>(v)].into_iter().enumerate() {
            let f = _mm256_sub_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))), mv);
            // SAFETY: `out` holds at least 32 f32; 16 h + 8 k + 8 <= 32; unaligned store.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(16 * h + 8 * k), f) };
        }
    }
}

/// `dequantize_row_q4_K` (`p` = Q4_K) or `dequantize_row_q5_K` (`p` = Q5_K).
#[target_feature(enable = "avx2,f16c")]
pub fn dequantize(p: &KParams, x: &[u8], y: &mut [f32]) {
    let low = _mm256_set1_epi8(0x0F);
    let five_bit = p.nmax == 31;
    for (b, y) in x.chunks_exact(p.block_bytes).zip(y.chunks_exact_mut(256)) {
        let d = crate::convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let min = crate::convert::f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let codes_at = if five_bit { 48 } else { 16 };
        let qh = if five_bit {
            // SAFETY: Q5_K blocks hold 32 bytes of high bits at 16; unaligned load.
            unsafe { _mm256_loadu_si256(b.as_ptr().add(16).cast()) }
        } else {
            _mm256_setzero_si256()
        };
        for c in 0..4 {
            let (s1, m1) = kquants::scale_min_k4(2 * c, &b[4..16]);
            let (s2, m2) = kquants::scale_min_k4(2 * c + 1, &b[4..16]);
            // SAFETY: bytes codes_at + 32 c .. + 32 lie within the block.
            let q = unsafe { _mm256_loadu_si256(b.as_ptr().add(codes_at + 32 * c).cast()) };
            let mut lo = _mm256_and_si256(q, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
            if five_bit {
                let bit = |m: u8| {
                    let m = _mm256_set1_epi8(m as i8);
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), _mm256_set1_epi8(16))
                };
                lo = _mm256_add_epi8(lo, bit(1 << (2 * c)));
                hi = _mm256_add_epi8(hi, bit(2 << (2 * c)));
            }
            put32(lo, d * s1 as f32, min * m1 as f32, &mut y[64 * c..]);
            put32(hi, d * s2 as f32, min * m2 as f32, &mut y[64 * c + 32..]);
        }
    }
}
