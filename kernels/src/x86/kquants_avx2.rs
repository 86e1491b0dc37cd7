//! Q4_K and Q5_K on AVX2, bit-exact: a super-block's 8 sub-blocks run in the 8 lanes, each
//! lane doing `make_qkx2_quants` for its sub-block with the scalar reference's operations in
//! the reference's order (sums accumulate element by element within a lane; nothing is
//! summed across lanes). Only the per-sub-block search is vectorized; packing stays scalar.

use std::arch::x86_64::*;

use super::avx2::lanes;
use crate::scalar::kquants::{self, KParams};

#[target_feature(enable = "avx2")]
fn splat(v: f32) -> __m256 {
    _mm256_set1_ps(v)
}

/// `nearest_int` on 8 lanes: the same 1.5·2^23 trick, so the same bits.
#[target_feature(enable = "avx2")]
fn nearest_int(f: __m256) -> __m256i {
    let val = _mm256_castps_si256(_mm256_add_ps(f, splat(12_582_912.0)));
    _mm256_sub_epi32(_mm256_and_si256(val, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x0040_0000))
}

#[target_feature(enable = "avx2")]
fn clamp(l: __m256i, nmax: i32) -> __m256i {
    _mm256_max_epi32(_mm256_min_epi32(l, _mm256_set1_epi32(nmax)), _mm256_setzero_si256())
}

#[target_feature(enable = "avx2")]
fn blend(a: __m256, b: __m256, take_b: __m256) -> __m256 {
    _mm256_blendv_ps(a, b, take_b)
}

/// `make_qkx2_quants` for the 8 sub-blocks of one super-block at once. `x[i]` and `w[i]` hold
/// element i of every sub-block (lane j = sub-block j). Returns per-lane (scale, -min) and
/// writes the codes to `l[32 * j + i]`.
#[target_feature(enable = "avx2")]
fn make_qkx2_quants_x8(p: &KParams, x: &[__m256; 32], w: &[__m256; 32], l: &mut [u8; 256]) -> ([f32; 8], [f32; 8]) {
    let nmax = p.nmax;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = _mm256_mul_ps(sum_w, x[0]);
    for i in 1..32 {
        min = blend(min, x[i], _mm256_cmp_ps::<_CMP_LT_OQ>(x[i], min));
        max = blend(max, x[i], _mm256_cmp_ps::<_CMP_GT_OQ>(x[i], max));
        sum_w = _mm256_add_ps(sum_w, w[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(w[i], x[i]));
    }
    min = blend(min, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_GT_OQ>(min, _mm256_setzero_ps()));
    let flat = _mm256_cmp_ps::<_CMP_EQ_OQ>(max, min);
    // `max - min` and `x - min` use the current min, which an accepted step changes.
    let mut range = _mm256_sub_ps(max, min);
    let mut xm = [_mm256_setzero_ps(); 32];
    for i in 0..32 {
        xm[i] = _mm256_sub_ps(x[i], min);
    }
    let mut iscale = _mm256_div_ps(splat(nmax as f32), range);
    let mut scale = _mm256_div_ps(splat(1.0), iscale);
    let mut codes: [__m256i; 32] = [_mm256_setzero_si256(); 32];
    let mut best_error = _mm256_setzero_ps();
    for i in 0..32 {
        codes[i] = clamp(nearest_int(_mm256_mul_ps(iscale, xm[i])), nmax);
        let lf = _mm256_cvtepi32_ps(codes[i]);
        let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, lf), min), x[i]);
        best_error = _mm256_add_ps(best_error, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
    }
    let mut laux: [__m256i; 32] = [_mm256_setzero_si256(); 32];
    for is in 0..=p.nstep {
        let numerator = p.rmin + p.rdelta * is as f32 + nmax as f32;
        iscale = _mm256_div_ps(splat(numerator), range);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut lfs = [_mm256_setzero_ps(); 32];
        for i in 0..32 {
            laux[i] = clamp(nearest_int(_mm256_mul_ps(iscale, xm[i])), nmax);
            let lf = _mm256_cvtepi32_ps(laux[i]);
            lfs[i] = lf;
            let wl = _mm256_mul_ps(w[i], lf);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, x[i]));
        }
        let d = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(d, _mm256_setzero_ps());
        if _mm256_movemask_ps(positive) == 0 {
            continue;
        }
        let mut this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), d);
        let mut this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), d);
        let clip = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min, _mm256_setzero_ps());
        this_min = blend(this_min, _mm256_setzero_ps(), clip);
        this_scale = blend(this_scale, _mm256_div_ps(sum_xl, sum_l2), clip);
        let mut cur_error = _mm256_setzero_ps();
        for i in 0..32 {
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(this_scale, lfs[i]), this_min), x[i]);
            cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(w[i], _mm256_mul_ps(diff, diff)));
        }
        let better = _mm256_and_ps(positive, _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error, best_error));
        if _mm256_movemask_ps(better) == 0 {
            continue;
        }
        let take = _mm256_castps_si256(better);
        for i in 0..32 {
            codes[i] = _mm256_blendv_epi8(codes[i], laux[i], take);
        }
        best_error = blend(best_error, cur_error, better);
        scale = blend(scale, this_scale, better);
        min = blend(min, this_min, better);
        range = _mm256_sub_ps(max, min);
        for i in 0..32 {
            xm[i] = _mm256_sub_ps(x[i], min);
        }
    }
    // Flat sub-blocks: codes 0, scale 0, min as clamped.
    let take_flat = _mm256_castps_si256(flat);
    for (i, c) in codes.iter().enumerate() {
        let c = _mm256_andnot_si256(take_flat, *c);
        let mut v = [0i32; 8];
        // SAFETY: `v` has room for 8 i32; unaligned store.
        unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), c) };
        for (j, &q) in v.iter().enumerate() {
            l[32 * j + i] = q as u8;
        }
    }
    scale = _mm256_andnot_ps(flat, scale);
    let neg_min = _mm256_sub_ps(_mm256_setzero_ps(), min);
    (lanes(scale), lanes(neg_min))
}

/// One Q4_K or Q5_K super-block: the vectorized search, then the reference's packing.
#[target_feature(enable = "avx2")]
fn superblock(p: &KParams, x: &[f32], block: &mut [u8]) {
    let mut xt = [[0f32; 8]; 32];
    for j in 0..8 {
        for i in 0..32 {
            xt[i][j] = x[32 * j + i];
        }
    }
    let mut xv = [_mm256_setzero_ps(); 32];
    for i in 0..32 {
        // SAFETY: `xt[i]` holds 8 f32; unaligned load.
        xv[i] = unsafe { _mm256_loadu_ps(xt[i].as_ptr()) };
    }
    let mut sum_x2 = _mm256_setzero_ps();
    for v in &xv {
        sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(*v, *v));
    }
    let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, splat(32.0)));
    let sign = splat(-0.0);
    let mut wv = [_mm256_setzero_ps(); 32];
    for i in 0..32 {
        wv[i] = _mm256_add_ps(av_x, _mm256_andnot_ps(sign, xv[i]));
    }
    let mut l = [0u8; 256];
    let (scales, mins) = make_qkx2_quants_x8(p, &xv, &wv, &mut l);
    kquants::finish_superblock(p, x, &scales, &mins, &mut l, block);
}

/// Q4_K (`p` = Q4_K parameters) or Q5_K, all super-blocks; false on a NaN or infinity.
#[target_feature(enable = "avx2")]
pub fn quantize(p: &KParams, x: &[f32], y: &mut [u8]) -> bool {
    if crate::backend::first_non_finite(x).is_some() {
        return false;
    }
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(p.block_bytes)) {
        superblock(p, x, b);
    }
    true
}
