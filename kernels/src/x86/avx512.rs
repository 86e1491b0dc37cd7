//! AVX-512 (F + BW) kernels: the AVX2 algorithms on 16 lanes. Each one performs the scalar
//! reference's float operations in the same order, so its bytes equal the reference's.
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx512bw")]`; they are only
//! reachable through the AVX-512 [`Backend`](crate::Backend), which is only handed out after
//! `is_x86_feature_detected!` confirmed both features.

use std::arch::x86_64::*;

use super::mxfp4_exponent;
use crate::QuantType;
use crate::backend::{Conversions, Kernel, TypeKernels};
use crate::convert::{self, rows};
use crate::scalar::{self, mxfp4::KVALUES};

/// A 32-value block as two 16-lane vectors.
#[target_feature(enable = "avx512f")]
fn load_block(x: &[f32]) -> [__m512; 2] {
    assert!(x.len() >= 32);
    // SAFETY: `x` holds at least 32 f32 (checked above); loadu has no alignment requirement.
    unsafe { [_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16))] }
}

#[target_feature(enable = "avx512f")]
fn abs_max(v: &[__m512; 2]) -> f32 {
    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])))
}

/// `f32::round` (half away from zero), exact: truncate, then step away from zero where the
/// dropped fraction is at least one half.
#[target_feature(enable = "avx512f")]
fn round_half_away(s: __m512) -> __m512 {
    let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(s);
    let frac = _mm512_abs_ps(_mm512_sub_ps(s, t));
    // copysign(1, s), with integer ops (the float ones need AVX512DQ).
    let sign = _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(i32::MIN));
    let step = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_set1_epi32(1.0f32.to_bits() as i32)));
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    _mm512_mask_add_ps(t, up, t, step)
}

/// The low byte of each i32 lane (C's cast to a byte type).
#[target_feature(enable = "avx512f")]
fn low_bytes(v: __m512i) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: `out` has room for 16 bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(v)) };
    out
}

/// `lo[j] | hi[j] << 4`, each code first cut to a byte, as C stores it.
#[target_feature(enable = "avx512f")]
fn pack_nibbles(lo: __m512i, hi: __m512i) -> [u8; 16] {
    let m = _mm512_set1_epi32(0xff);
    low_bytes(_mm512_or_si512(_mm512_and_si512(lo, m), _mm512_slli_epi32::<4>(_mm512_and_si512(hi, m))))
}

#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let v = load_block(x);
        let d = abs_max(&v) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&convert::f32_to_f16(d).to_le_bytes());
        let idv = _mm512_set1_ps(id);
        b[2..18].copy_from_slice(&low_bytes(_mm512_cvtps_epi32(round_half_away(_mm512_mul_ps(v[0], idv)))));
        b[18..].copy_from_slice(&low_bytes(_mm512_cvtps_epi32(round_half_away(_mm512_mul_ps(v[1], idv)))));
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let v = load_block(x);
        let amax = abs_max(&v);
        // The reference keeps the first element of largest magnitude, with its sign.
        let max = if amax == 0.0 { 0.0 } else { x[x.iter().position(|v| v.abs() == amax).unwrap_or(0)] };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&convert::f32_to_f16(d).to_le_bytes());
        let (idv, half, fifteen) = (_mm512_set1_ps(id), _mm512_set1_ps(8.5), _mm512_set1_epi32(15));
        let mut q = [_mm512_setzero_si512(); 2];
        for i in 0..2 {
            let t = _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(v[i], idv), half));
            q[i] = _mm512_min_epi32(_mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(t)), fifteen);
        }
        b[2..].copy_from_slice(&pack_nibbles(q[0], q[1]));
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_mxfp4(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(17)) {
        let v = load_block(x);
        let e = mxfp4_exponent(abs_max(&v));
        let d = scalar::mxfp4::e8m0_to_f32_half(e);
        b[0] = e;
        // The reference's linear scan: the first code with the strictly smallest error wins.
        let mut q = [_mm512_setzero_si512(); 2];
        for (x, best) in v.iter().zip(q.iter_mut()) {
            let mut best_err = _mm512_abs_ps(_mm512_sub_ps(_mm512_set1_ps(KVALUES[0] as f32 * d), *x));
            for (i, &k) in KVALUES.iter().enumerate().skip(1) {
                let err = _mm512_abs_ps(_mm512_sub_ps(_mm512_set1_ps(k as f32 * d), *x));
                let better = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(err, best_err);
                best_err = _mm512_mask_blend_ps(better, best_err, err);
                *best = _mm512_mask_blend_epi32(better, *best, _mm512_set1_epi32(i as i32));
            }
        }
        b[1..].copy_from_slice(&pack_nibbles(q[0], q[1]));
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
        for (q, out) in b[2..].chunks_exact(16).zip(y.chunks_exact_mut(16)) {
            // SAFETY: `q` holds 16 bytes, `out` has room for 16 f32; unaligned ops.
            unsafe {
                let i = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.as_ptr().cast()));
                _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(_mm512_cvtepi32_ps(i), d));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn bf16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 16 u16 (32 bytes), `d` has room for 16 f32; unaligned ops.
        unsafe {
            let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().cast()));
            _mm512_storeu_ps(d.as_mut_ptr(), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)));
        }
    }
    rows::bf16_to_f32(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx512f,avx512bw")]
fn f16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 16 u16 (32 bytes), `d` has room for 16 f32; unaligned ops.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast()))) };
    }
    rows::f16_to_f32(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx512f,avx512bw")]
fn f32_to_bf16_rows(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 16 f32, `d` has room for 16 u16 (32 bytes); unaligned ops.
        unsafe {
            let u = _mm512_castps_si512(_mm512_loadu_ps(s.as_ptr()));
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
            let rounded =
                _mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb));
            let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(64));
            let r = _mm512_mask_blend_epi32(nan, rounded, quiet);
            _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(r));
        }
    }
    rows::f32_to_bf16(s.remainder(), d.into_remainder());
}

#[target_feature(enable = "avx512f,avx512bw")]
fn f32_to_f16_rows(src: &[f32], dst: &mut [u16]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 16 f32, `d` has room for 16 u16 (32 bytes); unaligned ops.
        unsafe {
            let v = _mm512_loadu_ps(s.as_ptr());
            if _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) != 0 {
                // ggml writes every NaN as 0x7E00 (with its sign); the instruction keeps payloads.
                rows::f32_to_f16(s, d);
                continue;
            }
            _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        }
    }
    rows::f32_to_f16(s.remainder(), d.into_remainder());
}

/// This backend's name, the origin of its own table entries.
const NAME: &str = "avx512";

/// The AVX-512 table: the AVX2 table, replaced where AVX-512 has its own kernel.
pub(super) fn kernels(ty: QuantType) -> TypeKernels {
    let k = super::avx2::kernels(ty);
    match ty {
        QuantType::Q8_0 => k
            .quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| quantize_q8_0(x, y))))
            .dequantize_with(NAME, simd!(|_, x, y| dequantize_q8_0(x, y))),
        QuantType::Q4_0 => k.quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| quantize_q4_0(x, y)))),
        QuantType::MXFP4 => k.quantize_with(NAME, simd!(|_, x, y| super::finite(x, y, |x, y| quantize_mxfp4(x, y)))),
        _ => k,
    }
}

/// The AVX-512 conversions.
pub(super) const CONVERSIONS: Conversions = Conversions {
    bf16_to_f32: Kernel::new(NAME, simd!(|s, d| bf16_to_f32_rows(s, d))),
    f16_to_f32: Kernel::new(NAME, simd!(|s, d| f16_to_f32_rows(s, d))),
    f32_to_bf16: Kernel::new(NAME, simd!(|s, d| f32_to_bf16_rows(s, d))),
    f32_to_f16: Kernel::new(NAME, simd!(|s, d| f32_to_f16_rows(s, d))),
    openai_mxfp4_to_f32: super::avx2::CONVERSIONS.openai_mxfp4_to_f32,
};
