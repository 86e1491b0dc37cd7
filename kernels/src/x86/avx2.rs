//! AVX2 (+F16C) kernels. Each one performs the scalar reference's float operations, in the
//! same order, on 8 lanes at a time, so its bytes equal the reference's.
//!
//! Every function here is `#[target_feature(enable = "avx2,f16c")]`; they are only reachable
//! through the AVX2 [`Backend`](crate::Backend), which is only handed out after
//! `is_x86_feature_detected!` confirmed both features.

use std::arch::x86_64::*;

use super::mxfp4_exponent;
use crate::QuantType;
use crate::convert::{self, rows};
use crate::scalar::{self, mxfp4::KVALUES};

/// The 8 lanes of `v`, as an array.
#[target_feature(enable = "avx2")]
fn lanes(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `out` has room for 8 f32; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

#[target_feature(enable = "avx2")]
fn load(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` holds 8 f32; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// Splits a 32-value block into four 8-lane vectors.
#[target_feature(enable = "avx2")]
fn load_block(x: &[f32]) -> [__m256; 4] {
    std::array::from_fn(|i| load(x[8 * i..8 * i + 8].try_into().expect("8 values")))
}

/// Largest |x| of the block (max is exact, so the order does not matter).
#[target_feature(enable = "avx2")]
fn abs_max(v: &[__m256; 4]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let a = v.map(|x| _mm256_andnot_ps(sign, x));
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    lanes(m).iter().fold(0.0f32, |acc, &x| acc.max(x))
}

/// `f32::round` (half away from zero) on 8 lanes, exact: truncate, then step away from zero
/// where the dropped fraction is at least one half.
#[target_feature(enable = "avx2")]
fn round_half_away(s: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(s, t));
    let step = _mm256_or_ps(_mm256_and_ps(s, sign), _mm256_set1_ps(1.0));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    _mm256_add_ps(t, _mm256_and_ps(up, step))
}

/// The low byte of each i32 lane of four vectors, in order (C's cast to a byte type).
#[target_feature(enable = "avx2")]
fn low_bytes(q: [__m256i; 4]) -> [u8; 32] {
    let m = _mm256_set1_epi32(0xff);
    let q = q.map(|v| _mm256_and_si256(v, m));
    let p01 = _mm256_packus_epi32(q[0], q[1]);
    let p23 = _mm256_packus_epi32(q[2], q[3]);
    let bytes = _mm256_packus_epi16(p01, p23);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut out = [0u8; 32];
    // SAFETY: `out` has room for 32 bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), ordered) };
    out
}

/// C's `MIN(max, (int8_t)v)` on i32 lanes: sign-extend the low byte, then clamp from above.
#[target_feature(enable = "avx2")]
fn min_i8(v: __m256i, max: i32) -> __m256i {
    _mm256_min_epi32(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v)), _mm256_set1_epi32(max))
}

/// `lo[j] | hi[j] << 4` for 16 nibble pairs given as i32 lanes (lo = q[0..2], hi = q[2..4]).
#[target_feature(enable = "avx2")]
fn pack_nibbles(q: [__m256i; 4]) -> [u8; 16] {
    let m = _mm256_set1_epi32(0xff);
    let q = q.map(|v| _mm256_and_si256(v, m));
    let b0 = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
    let b1 = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
    let zero = _mm256_setzero_si256();
    let all = low_bytes([b0, b1, zero, zero]);
    all[..16].try_into().expect("16 bytes")
}

#[target_feature(enable = "avx2,f16c")]
fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let v = load_block(x);
        let amax = abs_max(&v);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&convert::f32_to_f16(d).to_le_bytes());
        let idv = _mm256_set1_ps(id);
        let q = v.map(|v| _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v, idv))));
        b[2..].copy_from_slice(&low_bytes(q));
    }
}

#[target_feature(enable = "avx2,f16c")]
fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let v = load_block(x);
        let amax = abs_max(&v);
        // The reference keeps the first element of largest magnitude, with its sign.
        let max = if amax == 0.0 { 0.0 } else { x[x.iter().position(|v| v.abs() == amax).unwrap_or(0)] };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&convert::f32_to_f16(d).to_le_bytes());
        let (idv, half) = (_mm256_set1_ps(id), _mm256_set1_ps(8.5));
        let q = v.map(|v| min_i8(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, idv), half)), 15));
        b[2..].copy_from_slice(&pack_nibbles(q));
    }
}

#[target_feature(enable = "avx2,f16c")]
fn quantize_mxfp4(x: &[f32], y: &mut [u8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(17)) {
        let v = load_block(x);
        let e = mxfp4_exponent(abs_max(&v));
        let d = scalar::mxfp4::e8m0_to_f32_half(e);
        b[0] = e;
        let kd: [__m256; 16] = std::array::from_fn(|i| _mm256_set1_ps(KVALUES[i] as f32 * d));
        // The reference's linear scan: the first code with the strictly smallest error wins.
        let q = v.map(|x| {
            let mut best_err = _mm256_andnot_ps(sign, _mm256_sub_ps(kd[0], x));
            let mut best = _mm256_setzero_si256();
            for (i, k) in kd.iter().enumerate().skip(1) {
                let err = _mm256_andnot_ps(sign, _mm256_sub_ps(*k, x));
                let better = _mm256_cmp_ps::<_CMP_LT_OQ>(err, best_err);
                best_err = _mm256_blendv_ps(best_err, err, better);
                best = _mm256_blendv_epi8(best, _mm256_set1_epi32(i as i32), _mm256_castps_si256(better));
            }
            best
        });
        b[1..].copy_from_slice(&pack_nibbles(q));
    }
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
fn bf16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 8 u16 (16 bytes), `d` has room for 8 f32; unaligned ops.
        unsafe {
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().cast()));
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w)));
        }
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

/// Quantizes with the AVX2 kernel where there is one, else the scalar reference.
pub fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) {
    // SAFETY: this module's functions are only reached through the AVX2 backend, which is only
    // handed out after AVX2 and F16C were detected (see `x86::available`).
    unsafe {
        match ty {
            QuantType::Q8_0 => quantize_q8_0(x, y),
            QuantType::Q4_0 => quantize_q4_0(x, y),
            QuantType::MXFP4 => quantize_mxfp4(x, y),
            other => scalar::quantize(other, x, y),
        }
    }
}

/// Dequantizes with the AVX2 kernel where there is one, else the scalar reference.
pub fn dequantize(ty: QuantType, x: &[u8], y: &mut [f32]) {
    match ty {
        // SAFETY: as in `quantize`: AVX2 and F16C were detected.
        QuantType::Q8_0 => unsafe { dequantize_q8_0(x, y) },
        other => scalar::dequantize(other, x, y),
    }
}

/// Safe entry points for the backend table.
pub mod entry {
    // SAFETY (all four): only reached through the AVX2 backend, handed out after AVX2 and F16C
    // were detected.
    /// bf16 → f32.
    pub fn bf16_to_f32(s: &[u16], d: &mut [f32]) {
        // SAFETY: see above.
        unsafe { super::bf16_to_f32_rows(s, d) }
    }
    /// f16 → f32.
    pub fn f16_to_f32(s: &[u16], d: &mut [f32]) {
        // SAFETY: see above.
        unsafe { super::f16_to_f32_rows(s, d) }
    }
    /// f32 → bf16.
    pub fn f32_to_bf16(s: &[f32], d: &mut [u16]) {
        // SAFETY: see above.
        unsafe { super::f32_to_bf16_rows(s, d) }
    }
    /// f32 → f16.
    pub fn f32_to_f16(s: &[f32], d: &mut [u16]) {
        // SAFETY: see above.
        unsafe { super::f32_to_f16_rows(s, d) }
    }
}
