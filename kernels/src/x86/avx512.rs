//! AVX-512 (F + BW) kernels: only those measured faster than the AVX2 kernel for the same
//! entry on an AVX-512 machine (`moeq bench kernels`, an AMD Zen 5 with full-width 512-bit
//! units here, 16 MiB single thread, and alternating A/B runs on data that does not stay in
//! cache); every other entry of the AVX-512 table is the AVX2 table's. Kept: Q8_0
//! dequantization (39 against 33 GB/s in cache, +5% from memory), f16 → f32 (+12% in cache,
//! equal from memory), OpenAI MXFP4 → f32 (`vpermps` table lookups: 96–101 against 40–42 GB/s
//! of f32 at 16 MiB, 113–172 against 42 at 1–2 MiB), Q3_K quantization without weights
//! (`q3k_avx512`: 3.6–4.2 against 2.6–2.7 GB/s), IQ1_S / IQ1_M quantization (`iq1_avx512`'s
//! 16-lane boundary and neighbour searches: IQ1_S 0.205–0.216 against 0.153–0.158 GB/s, IQ1_M
//! 0.189–0.204 against 0.151–0.156) and the other i-quants' 16-lane candidate evaluation
//! (`iquants_avx512`: IQ3_XXS, IQ3_S, IQ2_S with and without weights, IQ2_XXS and IQ2_XS with;
//! +10–19%). Measured slower and removed (see git history): Q8_0, Q4_0 and MXFP4 quantization
//! (per-block horizontal reductions: 9, 3.5 and 2.7 GB/s against AVX2's 19, 13 and 11) and
//! bf16 → f32 (AVX2 streams its stores: 16 against 21 GB/s from memory); f32 → bf16 and f32 →
//! f16 showed no consistent difference. Each kernel performs the scalar reference's operations,
//! so its output equals the reference's.
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx512bw")]`; they are only
//! reachable through the AVX-512 [`Backend`](crate::Backend), which is only handed out after
//! `is_x86_feature_detected!` confirmed both features.

use std::arch::x86_64::*;

use crate::QuantType;
use crate::backend::{Conversions, Kernel, TypeKernels};
use crate::convert::{self, rows};

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
fn f16_to_f32_rows(src: &[u16], dst: &mut [f32]) {
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: `s` holds 16 u16 (32 bytes), `d` has room for 16 f32; unaligned ops.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast()))) };
    }
    rows::f16_to_f32(s.remainder(), d.into_remainder());
}

/// OpenAI-layout MXFP4 → f32, as [`crate::openai::dequantize`] computes it: each code's E2M1
/// value (a 16-entry table in one register, looked up by `vpermps`) times `2^(scale − 127)`,
/// the same single product per value, so every output has the reference's bits (a 0xFF scale
/// gives ±∞ or NaN there too). 32 values per block: element 2i is the low nibble of code byte i,
/// 2i + 1 its high nibble.
#[target_feature(enable = "avx512f,avx512bw")]
fn dequantize_openai_mxfp4(blocks: &[u8], scales: &[u8], y: &mut [f32]) {
    // SAFETY: E2M1 holds 16 f32 (one 64-byte unaligned load).
    let table = unsafe { _mm512_loadu_ps(crate::openai::E2M1.as_ptr()) };
    // Byte i's low nibble is lane i of `lo`, its high nibble lane i of `hi` (index 16 + i of
    // the pair): interleave them, values 0..16 then 16..32.
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for ((codes, &s), y) in blocks.chunks_exact(16).zip(scales).zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(crate::openai::e8m0_to_f32(s));
        // SAFETY: `codes` holds 16 bytes, `y` has room for 32 f32 (two stores of 16).
        unsafe {
            // `vpermps` reads only an index's low 4 bits, so the low nibbles need no mask.
            let lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.as_ptr().cast()));
            let hi = _mm512_srli_epi32::<4>(lo);
            let (a, b) = (_mm512_permutex2var_epi32(lo, first, hi), _mm512_permutex2var_epi32(lo, second, hi));
            _mm512_storeu_ps(y.as_mut_ptr(), _mm512_mul_ps(_mm512_permutexvar_ps(a, table), d));
            _mm512_storeu_ps(y.as_mut_ptr().add(16), _mm512_mul_ps(_mm512_permutexvar_ps(b, table), d));
        }
    }
}

/// This backend's name, the origin of its own table entries.
const NAME: &str = "avx512";

/// The AVX-512 table: the AVX2 table, with AVX-512's Q8_0 dequantizer, Q3_K quantizer
/// (without weights), IQ1_S / IQ1_M quantizers and the other i-quant quantizers with the
/// 16-lane evaluation.
pub(super) fn kernels(ty: QuantType) -> TypeKernels {
    let k = super::avx2::kernels(ty);
    match ty {
        QuantType::Q8_0 => k.dequantize_with(NAME, simd!(|_, x, y| dequantize_q8_0(x, y))),
        QuantType::Q3_K => {
            k.quantize_with(NAME, simd!(|_, x, y| super::finite_if(super::q3k_avx512::quantize_q3_k(x, y))))
        }
        QuantType::IQ1_S => k.weighted_with(NAME, iq1_rows()),
        QuantType::IQ1_M => k
            .quantize_with(NAME, simd!(|ty, x, y| super::iq1_avx512::quantize(ty, x, y)))
            .weighted_with(NAME, iq1_rows()),
        // IQ3_XXS, IQ3_S and IQ2_S: the 16-lane candidate evaluation (`iquants_avx512`).
        QuantType::IQ3_XXS | QuantType::IQ3_S | QuantType::IQ2_S => k
            .quantize_with(NAME, simd!(|ty, x, y| super::iquants_avx512::quantize(ty, x, y)))
            .weighted_with(NAME, simd!(|ty, x, y, _, qw| super::iquants_avx512::quantize_rows(ty, x, y, qw))),
        // IQ2_XXS and IQ2_XS (with weights only): the same evaluation.
        QuantType::IQ2_XXS | QuantType::IQ2_XS => {
            k.weighted_with(NAME, simd!(|ty, x, y, _, qw| super::iquants_avx512::quantize_rows(ty, x, y, qw)))
        }
        _ => k,
    }
}

/// IQ1_S or IQ1_M with importance weights, with the AVX-512 boundary searches.
fn iq1_rows() -> crate::backend::QuantizeRowsFn {
    simd!(|ty, x, y, _, qw| super::iq1_avx512::quantize_rows(ty, x, y, qw))
}

/// The AVX-512 conversions: f16 → f32 and OpenAI MXFP4 → f32 its own, the rest AVX2's.
pub(super) const CONVERSIONS: Conversions = Conversions {
    f16_to_f32: Kernel::new(NAME, simd!(|s, d| f16_to_f32_rows(s, d))),
    openai_mxfp4_to_f32: Kernel::new(NAME, simd!(|b, s, d| dequantize_openai_mxfp4(b, s, d))),
    ..super::avx2::CONVERSIONS
};
