//! AVX2 (+F16C) kernels. Each one performs the scalar reference's float operations, in the
//! same order, on 8 lanes at a time, so its bytes equal the reference's.
//!
//! Every function here is `#[target_feature(enable = "avx2,f16c")]`; they are only reachable
//! through the AVX2 [`Backend`](crate::Backend), which is only handed out after
//! `is_x86_feature_detected!` confirmed both features.

use std::arch::x86_64::*;

use super::mxfp4_exponent;
use super::{iq4_avx2, iquants_avx2, kquants_avx2, q2k_q3k_avx2, ternary_avx2};
use crate::QuantType;
use crate::backend::{Conversions, Kernel, QuantizeFn, QuantizeRowsFn, TypeKernels};
use crate::convert::{self, rows};
use crate::scalar;

/// The 8 lanes of `v`, as an array.
#[target_feature(enable = "avx2")]
pub(super) fn lanes(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` has room for 8 f32; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// A 32-value block as four 8-lane vectors.
#[target_feature(enable = "avx2")]
fn load_block(x: &[f32]) -> [__m256; 4] {
    assert!(x.len() >= 32, "a block is 32 values");
    // SAFETY: `x` holds at least 32 f32 (checked above); loadu has no alignment requirement.
    unsafe {
        let p = x.as_ptr();
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))]
    }
}

/// Lanewise max of |x| over a block (not yet reduced across lanes), and a mask of lanes that
/// saw a NaN or an infinity.
#[target_feature(enable = "avx2")]
fn block_abs_max(x: &[f32]) -> (__m256, __m256) {
    let v = load_block(x);
    let sign = _mm256_set1_ps(-0.0);
    let big = _mm256_set1_ps(f32::MAX);
    let mut max = _mm256_setzero_ps();
    let mut bad = _mm256_setzero_ps();
    for v in v {
        let a = _mm256_andnot_ps(sign, v);
        max = _mm256_max_ps(max, a);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLE_UQ>(a, big));
    }
    (max, bad)
}

#[target_feature(enable = "avx2")]
fn pair_max(a: __m256, b: __m256) -> __m256 {
    _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
}

#[target_feature(enable = "avx2")]
fn quad_max(a: __m256, b: __m256) -> __m256 {
    _mm256_max_ps(_mm256_shuffle_ps::<0b01_00_01_00>(a, b), _mm256_shuffle_ps::<0b11_10_11_10>(a, b))
}

/// The horizontal maxima of eight vectors, as one vector (lane k = max of `v[k]`).
#[target_feature(enable = "avx2")]
fn hmax8(v: &[__m256; 8]) -> __m256 {
    let b0 = quad_max(pair_max(v[0], v[1]), pair_max(v[2], v[3]));
    let b1 = quad_max(pair_max(v[4], v[5]), pair_max(v[6], v[7]));
    _mm256_max_ps(_mm256_permute2f128_ps::<0x20>(b0, b1), _mm256_permute2f128_ps::<0x31>(b0, b1))
}

/// The largest magnitude of each of eight consecutive blocks (lane k = block k), or `None`
/// if any value is NaN or infinite.
#[target_feature(enable = "avx2")]
fn amax8(x: &[f32]) -> Option<__m256> {
    // Ask for data 8 KiB ahead while this group is worked on (prefetches never fault).
    for line in 0..16 {
        _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add(2048 + 16 * line).cast());
    }
    let mut maxes = [_mm256_setzero_ps(); 8];
    let mut bad = _mm256_setzero_ps();
    for (k, m) in maxes.iter_mut().enumerate() {
        let (max, b) = block_abs_max(&x[32 * k..32 * k + 32]);
        *m = max;
        bad = _mm256_or_ps(bad, b);
    }
    if _mm256_movemask_ps(bad) != 0 { None } else { Some(hmax8(&maxes)) }
}

/// `f32::round` for |s| < 2^22 (and ±inf, NaN): truncate `s + copysign(0.5 - 2^-25, s)`.
/// Adding the largest float below one half rounds exactly the values whose fraction is at
/// least one half across the next integer; nothing else.
#[target_feature(enable = "avx2")]
fn round_half_away_small(s: __m256) -> __m256 {
    let sign = _mm256_and_ps(s, _mm256_set1_ps(-0.0));
    let bias = _mm256_or_ps(sign, _mm256_set1_ps(0.499_999_97));
    _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(_mm256_add_ps(s, bias))
}

/// Whether any of the eight blocks would get a subnormal scale `amax / div` (its reciprocal
/// may overflow): those groups take the reference path, which mirrors C's casts exactly.
#[target_feature(enable = "avx2")]
fn any_tiny(amax: __m256, div: f32) -> bool {
    let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(amax, _mm256_setzero_ps());
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(div * f32::MIN_POSITIVE));
    _mm256_movemask_ps(_mm256_and_ps(positive, tiny)) != 0
}

/// `1 / d` where `d != 0`, else 0 (the reference's `id`).
#[target_feature(enable = "avx2")]
fn inverse_or_zero(d: __m256) -> __m256 {
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_OQ>(d, _mm256_setzero_ps());
    _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(1.0), d))
}

/// The f16 bits of eight scales (F16C rounds to nearest even, as ggml's routine does for
/// finite values).
#[target_feature(enable = "avx2,f16c")]
fn to_f16x8(d: __m256) -> [u16; 8] {
    let mut out = [0u16; 8];
    // SAFETY: `out` has room for 8 u16 (16 bytes); unaligned store.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d)) };
    out
}

#[target_feature(enable = "avx2,f16c")]
fn quantize_q8_0(x: &[f32], y: &mut [u8]) -> bool {
    let mut xs = x.chunks_exact(256);
    let mut ys = y.chunks_exact_mut(8 * 34);
    for (x, y) in (&mut xs).zip(&mut ys) {
        let Some(amax) = amax8(x) else { return false };
        if any_tiny(amax, 127.0) {
            scalar::legacy::quantize_q8_0(x, y);
            continue;
        }
        // IEEE division is exact whatever the lane: d and 1/d are the reference's.
        let d = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
        let ids = lanes(inverse_or_zero(d));
        let d16 = to_f16x8(d);
        for k in 0..8 {
            let v = load_block(&x[32 * k..32 * k + 32]);
            let idv = _mm256_set1_ps(ids[k]);
            // With a normal d, |x * id| rounds to at most 127: saturating packs equal C's casts.
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                q[i] = _mm256_cvttps_epi32(round_half_away_small(_mm256_mul_ps(v[i], idv)));
            }
            let ordered = pack_i8x32(&q);
            let b = &mut y[34 * k..34 * k + 34];
            b[..2].copy_from_slice(&d16[k].to_le_bytes());
            // SAFETY: `b[2..]` holds 32 bytes; unaligned store.
            unsafe { _mm256_storeu_si256(b[2..].as_mut_ptr().cast(), ordered) };
        }
    }
    finish_with_reference(xs.remainder(), ys.into_remainder(), scalar::legacy::quantize_q8_0)
}

/// 32 codes (four vectors of i32 in −128..=127) as 32 bytes in order: the saturating packs
/// keep them, the permute undoes the packs' lane interleaving.
#[target_feature(enable = "avx2")]
pub(super) fn pack_i8x32(q: &[__m256i; 4]) -> __m256i {
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The reference kernel on a tail shorter than a group, after checking it is finite.
fn finish_with_reference(x: &[f32], y: &mut [u8], kernel: fn(&[f32], &mut [u8])) -> bool {
    if crate::backend::first_non_finite(x).is_some() {
        return false;
    }
    kernel(x, y);
    true
}

/// 16 nibble pairs from four vectors of codes in 0..=15: `q[0..2]` low, `q[2..4]` high.
#[target_feature(enable = "avx2")]
pub(super) fn pack_small_nibbles(q: &[__m256i; 4]) -> __m128i {
    let b0 = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
    let b1 = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
    let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(b0, b1));
    let bytes = _mm256_packus_epi16(words, words);
    _mm_unpacklo_epi64(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256::<1>(bytes))
}

/// The first element of largest magnitude in a block, with its sign (0 for an all-zero
/// block), as the Q4_0/Q5_0 references pick it.
#[target_feature(enable = "avx2")]
fn signed_max(x: &[f32], amax: f32) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    let v = load_block(x);
    let (sign, target) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(amax));
    let mut mask = 0u32;
    for (i, v) in v.iter().enumerate() {
        let hit = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, *v), target);
        mask |= (_mm256_movemask_ps(hit) as u32) << (8 * i);
    }
    x[mask.trailing_zeros() as usize]
}

/// Q4_0 (`bits` 4) or Q5_0 (`bits` 5): d = signed max / -2^(bits-1), codes
/// min(2^bits - 1, trunc(x * id + 2^(bits-1) + 0.5)).
#[target_feature(enable = "avx2,f16c")]
fn quantize_symmetric(x: &[f32], y: &mut [u8], bits: u32) -> bool {
    let reference = if bits == 4 { scalar::legacy::quantize_q4_0 } else { scalar::legacy::quantize_q5_0 };
    let block_bytes = if bits == 4 { 18 } else { 22 };
    let half_range = (1u32 << (bits - 1)) as f32;
    let mut xs = x.chunks_exact(256);
    let mut ys = y.chunks_exact_mut(8 * block_bytes);
    for (x, y) in (&mut xs).zip(&mut ys) {
        let Some(amax) = amax8(x) else { return false };
        if any_tiny(amax, half_range) {
            reference(x, y);
            continue;
        }
        let amaxs = lanes(amax);
        let mut max = [0f32; 8];
        for k in 0..8 {
            max[k] = signed_max(&x[32 * k..32 * k + 32], amaxs[k]);
        }
        // SAFETY: `max` holds 8 f32.
        let d = _mm256_div_ps(unsafe { _mm256_loadu_ps(max.as_ptr()) }, _mm256_set1_ps(-half_range));
        let ids = lanes(inverse_or_zero(d));
        let d16 = to_f16x8(d);
        let (offset, top) = (_mm256_set1_ps(half_range + 0.5), _mm256_set1_epi32((1 << bits) - 1));
        for k in 0..8 {
            let v = load_block(&x[32 * k..32 * k + 32]);
            let idv = _mm256_set1_ps(ids[k]);
            // With a normal d, x * id + offset lies in [0, 2^bits + 1): truncation and min give
            // C's codes.
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                q[i] = _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[i], idv), offset)), top);
            }
            let b = &mut y[block_bytes * k..block_bytes * (k + 1)];
            b[..2].copy_from_slice(&d16[k].to_le_bytes());
            let codes = if bits == 4 {
                pack_small_nibbles(&q)
            } else {
                b[2..6].copy_from_slice(&high_bits(&q).to_le_bytes());
                pack_low_nibbles(&q)
            };
            // SAFETY: the block's last 16 bytes; unaligned store.
            unsafe { _mm_storeu_si128(b[block_bytes - 16..].as_mut_ptr().cast(), codes) };
        }
    }
    finish_with_reference(xs.remainder(), ys.into_remainder(), reference)
}

/// Bit 4 of each code (i32 lanes, 32 codes in `q`) as a u32: bit j for code j.
#[target_feature(enable = "avx2")]
fn high_bits(q: &[__m256i; 4]) -> u32 {
    let mut bits = 0u32;
    for (i, v) in q.iter().enumerate() {
        bits |= (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<27>(*v))) as u32) << (8 * i);
    }
    bits
}

/// The low nibbles of 32 codes, packed as Q4_0-style bytes (j low, j+16 high).
#[target_feature(enable = "avx2")]
fn pack_low_nibbles(q: &[__m256i; 4]) -> __m128i {
    let m = _mm256_set1_epi32(15);
    let mut low = [_mm256_setzero_si256(); 4];
    for i in 0..4 {
        low[i] = _mm256_and_si256(q[i], m);
    }
    pack_small_nibbles(&low)
}

/// The reference's min and max of a block (the Q4_1/Q5_1 scan): values by vector compares;
/// when one is zero, its sign is that of the first zero in the block, as the scan keeps it.
#[target_feature(enable = "avx2")]
fn block_min_max(x: &[f32]) -> (f32, f32) {
    let v = load_block(x);
    let (mut lo, mut hi) = (v[0], v[0]);
    for v in &v[1..] {
        lo = _mm256_min_ps(lo, *v);
        hi = _mm256_max_ps(hi, *v);
    }
    let lo = lanes(lo).iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let hi = lanes(hi).iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let first_zero = || x.iter().copied().find(|v| *v == 0.0).unwrap_or(0.0);
    (if lo == 0.0 { first_zero() } else { lo }, if hi == 0.0 { first_zero() } else { hi })
}

/// Q4_1 (`levels` = 15) or Q5_1 (31): codes trunc((x - min) * id + 0.5), capped at 15 for Q4_1.
#[target_feature(enable = "avx2,f16c")]
fn quantize_affine(x: &[f32], y: &mut [u8], levels: f32, block_bytes: usize) -> bool {
    let reference = if levels == 15.0 { scalar::legacy::quantize_q4_1 } else { scalar::legacy::quantize_q5_1 };
    let mut xs = x.chunks_exact(256);
    let mut ys = y.chunks_exact_mut(8 * block_bytes);
    for (x, y) in (&mut xs).zip(&mut ys) {
        if amax8(x).is_none() {
            return false;
        }
        let (mut mins, mut maxs) = ([0f32; 8], [0f32; 8]);
        for k in 0..8 {
            (mins[k], maxs[k]) = block_min_max(&x[32 * k..32 * k + 32]);
        }
        // Scales that are subnormal or infinite take the reference path (C's casts).
        let degenerate = (0..8).any(|k| {
            let range = maxs[k] - mins[k];
            !range.is_finite() || (range > 0.0 && range < levels * f32::MIN_POSITIVE)
        });
        if degenerate {
            reference(x, y);
            continue;
        }
        // SAFETY: `mins` and `maxs` hold 8 f32.
        let (minv, maxv) = unsafe { (_mm256_loadu_ps(mins.as_ptr()), _mm256_loadu_ps(maxs.as_ptr())) };
        let d = _mm256_div_ps(_mm256_sub_ps(maxv, minv), _mm256_set1_ps(levels));
        let ids = lanes(inverse_or_zero(d));
        let (d16, m16) = (to_f16x8(d), to_f16x8(minv));
        let (half, cap) = (_mm256_set1_ps(0.5), _mm256_set1_epi32(levels as i32));
        for k in 0..8 {
            let v = load_block(&x[32 * k..32 * k + 32]);
            let (idv, minv) = (_mm256_set1_ps(ids[k]), _mm256_set1_ps(mins[k]));
            // With a normal d, (x - min) * id + 0.5 lies in [0, levels + 1).
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let t = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[i], minv), idv), half);
                q[i] = _mm256_min_epi32(_mm256_cvttps_epi32(t), cap);
            }
            let b = &mut y[block_bytes * k..block_bytes * (k + 1)];
            b[..2].copy_from_slice(&d16[k].to_le_bytes());
            b[2..4].copy_from_slice(&m16[k].to_le_bytes());
            let codes = if levels == 15.0 {
                pack_small_nibbles(&q)
            } else {
                b[4..8].copy_from_slice(&high_bits(&q).to_le_bytes());
                pack_low_nibbles(&q)
            };
            // SAFETY: the block's last 16 bytes; unaligned store.
            unsafe { _mm_storeu_si128(b[block_bytes - 16..].as_mut_ptr().cast(), codes) };
        }
    }
    finish_with_reference(xs.remainder(), ys.into_remainder(), reference)
}

/// Shared exponents for which MXFP4's nearest-code search is exactly a count of midpoints
/// crossed (see `mxfp4_codes`); blocks outside take the reference path.
const MXFP4_FAST_EXPONENTS: std::ops::RangeInclusive<u8> = 32..=249;

/// The reference's code for each lane of `v`, given `twice_inv_d` = 2 / d for the block's
/// shared exponent.
///
/// d = 2^(e-128) is a power of two, so t = x / d is exact, and the reference's errors
/// |kv·d − x| are d·|kv − t| exactly for the two codes around t. The first code with the
/// smallest error is then the number of midpoints (0.5, 1.5, 2.5, 3.5, 5, 7, 10) strictly
/// below |t| — ties go to the smaller magnitude — with the sign bit for negative x unless the
/// code is 0. Counted on j = ⌈2|t|⌉ (exact): the doubled midpoints are integers, so 2|t| > 2m
/// exactly when j > 2m; that count is ⌊min(j, 8) / 2⌋ + [j > 10] + [j > 14] + [j > 20].
#[target_feature(enable = "avx2")]
fn mxfp4_codes(v: __m256, twice_inv_d: __m256) -> __m256i {
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_mul_ps(v, twice_inv_d));
    let j = _mm256_cvttps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC }>(a));
    let mut count = _mm256_srli_epi32::<1>(_mm256_min_epi32(j, _mm256_set1_epi32(8)));
    for m in [10, 14, 20] {
        count = _mm256_sub_epi32(count, _mm256_cmpgt_epi32(j, _mm256_set1_epi32(m)));
    }
    let negative = _mm256_srli_epi32::<28>(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(i32::MIN)));
    let nonzero = _mm256_cmpgt_epi32(count, _mm256_setzero_si256());
    _mm256_or_si256(count, _mm256_and_si256(negative, nonzero))
}

#[target_feature(enable = "avx2,f16c")]
fn quantize_mxfp4(x: &[f32], y: &mut [u8]) -> bool {
    let mut xs = x.chunks_exact(256);
    let mut ys = y.chunks_exact_mut(8 * 17);
    for (x, y) in (&mut xs).zip(&mut ys) {
        let Some(amax) = amax8(x) else { return false };
        let amaxs = lanes(amax);
        let mut e = [0u8; 8];
        for k in 0..8 {
            e[k] = mxfp4_exponent(amaxs[k]);
        }
        if !e.iter().all(|e| MXFP4_FAST_EXPONENTS.contains(e)) {
            scalar::mxfp4::quantize(x, y);
            continue;
        }
        for k in 0..8 {
            let twice_inv_d = _mm256_castsi256_ps(_mm256_set1_epi32((256 - e[k] as i32) << 23));
            let v = load_block(&x[32 * k..32 * k + 32]);
            let mut q = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                q[i] = mxfp4_codes(v[i], twice_inv_d);
            }
            let b = &mut y[17 * k..17 * k + 17];
            b[0] = e[k];
            // SAFETY: `b[1..]` holds 16 bytes; unaligned store.
            unsafe { _mm_storeu_si128(b[1..].as_mut_ptr().cast(), pack_small_nibbles(&q)) };
        }
    }
    finish_with_reference(xs.remainder(), ys.into_remainder(), scalar::mxfp4::quantize)
}

#[target_feature(enable = "avx2,f16c")]
fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
        for (q, out) in b[2..].chunks_exact(8).zip(y.chunks_exact_mut(8)) {
            // SAFETY: `q` holds 8 bytes (loadl reads 8), `out` has room for 8 f32.
            unsafe {
                let i = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().cast()));
                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(_mm256_cvtepi32_ps(i), d));
            }
        }
    }
}

#[target_feature(enable = "avx2")]
fn dequantize_mxfp4(x: &[u8], y: &mut [f32]) {
    // SAFETY: KVALUES holds 16 bytes.
    let lut = unsafe { _mm_loadu_si128(scalar::mxfp4::KVALUES.as_ptr().cast()) };
    let low = _mm_set1_epi8(0x0F);
    for (b, y) in x.chunks_exact(17).zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(scalar::mxfp4::e8m0_to_f32_half(b[0]));
        // SAFETY: `b[1..]` holds 16 bytes, `y` has room for 32 f32 (four stores of 8).
        unsafe {
            let q = _mm_loadu_si128(b[1..].as_ptr().cast());
            // Element j is the low nibble of byte j, element j + 16 its high nibble.
            let lo = _mm_shuffle_epi8(lut, _mm_and_si128(q, low));
            let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16::<4>(q), low));
            let p = y.as_mut_ptr();
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
            _mm256_storeu_ps(
                p.add(8),
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo))), d),
            );
            _mm256_storeu_ps(p.add(16), _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
            _mm256_storeu_ps(
                p.add(24),
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi))), d),
            );
        }
    }
}

#[target_feature(enable = "avx2")]
fn dequantize_openai_mxfp4(blocks: &[u8], scales: &[u8], y: &mut [f32]) {
    // SAFETY: KVALUES holds 16 bytes.
    let lut = unsafe { _mm_loadu_si128(scalar::mxfp4::KVALUES.as_ptr().cast()) };
    let low = _mm_set1_epi8(0x0F);
    for ((codes, &s), y) in blocks.chunks_exact(16).zip(scales).zip(y.chunks_exact_mut(32)) {
        if s == 0xFF {
            // NaN scale (infinite in OpenAI's reading): as the reference computes it.
            crate::openai::dequantize(codes, &[s], y);
            continue;
        }
        let d = _mm256_set1_ps(scalar::mxfp4::e8m0_to_f32_half(s));
        // SAFETY: `codes` holds 16 bytes, `y` has room for 32 f32 (four stores of 8).
        unsafe {
            let q = _mm_loadu_si128(codes.as_ptr().cast());
            let (lo_code, hi_code) = (_mm_and_si128(q, low), _mm_and_si128(_mm_srli_epi16::<4>(q), low));
            let (lo, hi) = (_mm_shuffle_epi8(lut, lo_code), _mm_shuffle_epi8(lut, hi_code));
            // OpenAI order: element 2i is the low nibble of byte i, 2i + 1 its high nibble.
            let (first, second) = (_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi));
            let (first_c, second_c) = (_mm_unpacklo_epi8(lo_code, hi_code), _mm_unpackhi_epi8(lo_code, hi_code));
            let sign = _mm256_set1_epi32(i32::MIN);
            // Value times scale; code 8 is -0 (the sign bit of the code becomes the float's).
            let put = |v: __m128i, c: __m128i| {
                let signs = _mm256_and_si256(_mm256_slli_epi32::<28>(_mm256_cvtepu8_epi32(c)), sign);
                let x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d);
                _mm256_or_ps(x, _mm256_castsi256_ps(signs))
            };
            let p = y.as_mut_ptr();
            _mm256_storeu_ps(p, put(first, first_c));
            _mm256_storeu_ps(p.add(8), put(_mm_srli_si128::<8>(first), _mm_srli_si128::<8>(first_c)));
            _mm256_storeu_ps(p.add(16), put(second, second_c));
            _mm256_storeu_ps(p.add(24), put(_mm_srli_si128::<8>(second), _mm_srli_si128::<8>(second_c)));
        }
    }
}

/// Outputs at least this large bypass the cache (non-temporal stores): they would not fit in
/// it anyway, and streaming them saves reading every destination line first.
const STREAM_BYTES: usize = 4 << 20;

#[target_feature(enable = "avx2")]
fn bf16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    // Scalar until the destination is 32-byte aligned, as streaming stores require.
    let head = if dst.len() * 4 >= STREAM_BYTES { dst.as_ptr().align_offset(32).min(dst.len()) } else { 0 };
    rows::bf16_to_f32(&src[..head], &mut dst[..head]);
    let (src, dst) = (&src[head..], &mut dst[head..]);
    let stream = head > 0 || (dst.len() * 4 >= STREAM_BYTES && dst.as_ptr().align_offset(32) == 0);
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 8 u16 (16 bytes), `d` has room for 8 f32; the streaming store is
        // only used when `d` is 32-byte aligned (every chunk is, once the first one is).
        unsafe {
            let w =
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().cast()))));
            if stream { _mm256_stream_ps(d.as_mut_ptr(), w) } else { _mm256_storeu_ps(d.as_mut_ptr(), w) }
        }
    }
    if stream {
        _mm_sfence();
    }
    rows::bf16_to_f32(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx2,f16c")]
fn f16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 8 u16 (16 bytes), `d` has room for 8 f32; unaligned ops.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()))) };
    }
    rows::f16_to_f32(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx2")]
fn f32_to_bf16_rows(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 8 f32, `d` has room for 8 u16 (16 bytes); unaligned ops.
        unsafe {
            let u = _mm256_castps_si256(_mm256_loadu_ps(s.as_ptr()));
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
            let rounded =
                _mm256_srli_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb));
            let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
            let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
            let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
            let r = _mm256_blendv_epi8(rounded, quiet, nan);
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(r, r));
            _mm_storeu_si128(d.as_mut_ptr().cast(), _mm256_castsi256_si128(packed));
        }
    }
    rows::f32_to_bf16(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx2,f16c")]
fn f32_to_f16_rows(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 8 f32, `d` has room for 8 u16 (16 bytes); unaligned ops.
        unsafe {
            let v = _mm256_loadu_ps(s.as_ptr());
            if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)) != 0 {
                // ggml writes every NaN as 0x7E00 (with its sign); F16C keeps payload bits.
                rows::f32_to_f16(s, d);
                continue;
            }
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(d.as_mut_ptr().cast(), h);
        }
    }
    rows::f32_to_f16(s.remainder(), d.into_remainder());
}

/// This backend's name, the origin of its own table entries.
const NAME: &str = "avx2";

/// The AVX2 table: the scalar reference's kernels, replaced where AVX2 has its own.
pub(super) fn kernels(ty: QuantType) -> TypeKernels {
    let k = crate::backend::scalar_kernels(ty);
    match ty {
        QuantType::Q8_0 => k
            .quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_q8_0(x, y))))
            .dequantize_with(NAME, simd!(|_, x, y| dequantize_q8_0(x, y))),
        QuantType::Q4_0 => k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_symmetric(x, y, 4)))),
        QuantType::Q5_0 => k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_symmetric(x, y, 5)))),
        QuantType::Q4_1 => k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_affine(x, y, 15.0, 20)))),
        QuantType::Q5_1 => k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_affine(x, y, 31.0, 24)))),
        QuantType::MXFP4 => k
            .quantize_with(NAME, simd!(|_, x, y| super::finite_if(quantize_mxfp4(x, y))))
            .dequantize_with(NAME, simd!(|_, x, y| dequantize_mxfp4(x, y))),
        QuantType::Q4_K => k
            .quantize_with(
                NAME,
                simd!(|_, x, y| super::finite_if(kquants_avx2::quantize(&scalar::kquants::Q4_K, x, y))),
            )
            .weighted_with(
                NAME,
                simd!(|_, x, y, n, qw| {
                    kquants_avx2::quantize_weighted(&scalar::kquants::Q4_K, x, y, n, qw);
                    Ok(())
                }),
            )
            .dequantize_with(NAME, simd!(|_, x, y| kquants_avx2::dequantize(&scalar::kquants::Q4_K, x, y))),
        QuantType::Q5_K => k
            .quantize_with(
                NAME,
                simd!(|_, x, y| super::finite_if(kquants_avx2::quantize(&scalar::kquants::Q5_K, x, y))),
            )
            .weighted_with(
                NAME,
                simd!(|_, x, y, n, qw| {
                    kquants_avx2::quantize_weighted(&scalar::kquants::Q5_K, x, y, n, qw);
                    Ok(())
                }),
            )
            .dequantize_with(NAME, simd!(|_, x, y| kquants_avx2::dequantize(&scalar::kquants::Q5_K, x, y))),
        QuantType::Q3_K => k
            .dequantize_with(NAME, simd!(|_, x, y| q2k_q3k_avx2::dequantize_q3_k(x, y)))
            .quantize_with(NAME, simd!(|_, x, y| super::finite_if(q2k_q3k_avx2::quantize_q3_k(x, y))))
            .weighted_with(
                NAME,
                simd!(|ty, x, y, n, qw| super::by_rows(ty, x, y, n, qw, |x, y, qw| {
                    q2k_q3k_avx2::quantize_q3_k_weighted(x, y, qw)
                })),
            ),
        QuantType::Q2_K => k
            .dequantize_with(NAME, simd!(|_, x, y| q2k_q3k_avx2::dequantize_q2_k(x, y)))
            .quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| q2k_q3k_avx2::quantize_q2_k(x, y))))
            .weighted_with(
                NAME,
                simd!(|ty, x, y, n, qw| super::by_rows(ty, x, y, n, qw, |x, y, qw| {
                    q2k_q3k_avx2::quantize_q2_k_weighted(x, y, qw)
                })),
            ),
        QuantType::Q6_K => {
            k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(kquants_avx2::quantize_q6_k(x, y)))).weighted_with(
                NAME,
                simd!(|ty, x, y, n, qw| super::by_rows(ty, x, y, n, qw, |x, y, qw| {
                    kquants_avx2::quantize_q6_k_weighted(x, y, qw)
                })),
            )
        }
        QuantType::IQ4_NL => k
            .dequantize_with(NAME, simd!(|_, x, y| iq4_avx2::dequantize_iq4_nl(x, y)))
            .quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| iq4_avx2::quantize_iq4_nl(x, y, None))))
            .weighted_with(
                NAME,
                simd!(|ty, x, y, n, qw| super::by_rows(ty, x, y, n, qw, |x, y, qw| iq4_avx2::quantize_iq4_nl(
                    x,
                    y,
                    Some(qw)
                ))),
            ),
        QuantType::IQ4_XS => k
            .dequantize_with(NAME, simd!(|_, x, y| iq4_avx2::dequantize_iq4_xs(x, y)))
            .quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| iq4_avx2::quantize_iq4_xs(x, y, None))))
            .weighted_with(
                NAME,
                simd!(|ty, x, y, n, qw| super::by_rows(ty, x, y, n, qw, |x, y, qw| iq4_avx2::quantize_iq4_xs(
                    x,
                    y,
                    Some(qw)
                ))),
            ),
        // The i-quants: the scalar reference's quantizers with the AVX2 searches.
        QuantType::IQ2_XXS | QuantType::IQ2_XS => k.weighted_with(NAME, iquant_rows()),
        QuantType::IQ2_S | QuantType::IQ3_XXS | QuantType::IQ3_S => {
            k.quantize_with(NAME, iquant_plain()).weighted_with(NAME, iquant_rows())
        }
        QuantType::IQ1_S => k
            .weighted_with(NAME, iquant_rows())
            .dequantize_with(NAME, simd!(|_, x, y| iquants_avx2::dequantize_iq1_s(x, y))),
        QuantType::IQ1_M => k
            .quantize_with(NAME, iquant_plain())
            .weighted_with(NAME, iquant_rows())
            .dequantize_with(NAME, simd!(|_, x, y| iquants_avx2::dequantize_iq1_m(x, y))),
        QuantType::TQ1_0 => k
            .quantize_with(NAME, simd!(|_, x, y| super::finite_if(ternary_avx2::quantize_tq1_0(x, y))))
            .dequantize_with(NAME, simd!(|_, x, y| iquants_avx2::dequantize_tq1_0(x, y))),
        QuantType::TQ2_0 => {
            k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(ternary_avx2::quantize_tq2_0(x, y))))
        }
        // Types without an AVX2 kernel keep the scalar reference's.
        #[allow(unreachable_patterns)]
        _ => k,
    }
}

/// An i-quant without importance weights, with the AVX2 searches.
fn iquant_plain() -> QuantizeFn {
    simd!(|ty, x, y| iquants_avx2::quantize(ty, x, y))
}

/// An i-quant with importance weights, with the AVX2 searches.
fn iquant_rows() -> QuantizeRowsFn {
    simd!(|ty, x, y, _, qw| iquants_avx2::quantize_rows(ty, x, y, qw))
}

/// The AVX2 conversions.
pub(super) const CONVERSIONS: Conversions = Conversions {
    bf16_to_f32: Kernel::new(NAME, simd!(|s, d| bf16_to_f32_rows(s, d))),
    f16_to_f32: Kernel::new(NAME, simd!(|s, d| f16_to_f32_rows(s, d))),
    f32_to_bf16: Kernel::new(NAME, simd!(|s, d| f32_to_bf16_rows(s, d))),
    f32_to_f16: Kernel::new(NAME, simd!(|s, d| f32_to_f16_rows(s, d))),
    openai_mxfp4_to_f32: Kernel::new(NAME, simd!(|b, s, d| dequantize_openai_mxfp4(b, s, d))),
};
