//! IQ4_NL and IQ4_XS on AVX2, bit-exact. A 32-value block's scale search tries 16 candidate
//! scales (ggml's first guess and `ntry` = 7 either side); here the 16 candidates run in the
//! lanes of two vectors, each summing Σw·q·x and Σw·q² over the block's values in the
//! reference's order, and the choice among them is replayed in scalar code as ggml makes it.
//! `best_index_int8` becomes a branch-free binary search over the table's decision thresholds
//! ([`decision_thresholds`]), which give the same index for every f32.

use std::arch::x86_64::*;

use crate::convert::f32_to_f16;
use crate::scalar::common::{GROUP_MAX_EPS, nearest_int};
use crate::scalar::iq4::{self, IQ4_NL_BYTES, IQ4_XS_BYTES, KVALUES_IQ4NL, decision_thresholds};

/// The thresholds and table values as vectors for [`nearest`].
#[derive(Clone, Copy)]
struct Tables {
    t8: __m256,
    t4: __m256,
    t12: __m256,
    /// Thresholds 2, 6, 10, 14 in lanes 0..4.
    t2: __m256,
    /// Thresholds 1, 3, …, 15.
    t1: __m256,
    /// Table values 0..8 and 8..16, as f32.
    k_lo: __m256,
    k_hi: __m256,
}

#[target_feature(enable = "avx2")]
fn tables() -> Tables {
    let t = decision_thresholds();
    let k = KVALUES_IQ4NL.map(|v| v as f32);
    let v = |a: [f32; 8]| {
        // SAFETY: `a` holds 8 f32; unaligned load.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    };
    Tables {
        t8: _mm256_set1_ps(t[8]),
        t4: _mm256_set1_ps(t[4]),
        t12: _mm256_set1_ps(t[12]),
        t2: v([t[2], t[6], t[10], t[14], 0.0, 0.0, 0.0, 0.0]),
        t1: v(std::array::from_fn(|i| t[2 * i + 1])),
        k_lo: v(std::array::from_fn(|i| k[i])),
        k_hi: v(std::array::from_fn(|i| k[8 + i])),
    }
}

/// `best_index_int8` on 8 lanes: the index (0..16) and the table value as f32. Bit by bit,
/// from the top: a lane's index gains a bit where `x` is not below the threshold that bit
/// decides (NaN is not below any, as in ggml's bisection).
#[target_feature(enable = "avx2")]
#[inline]
fn nearest(x: __m256, t: &Tables) -> (__m256i, __m256) {
    let ge = |a: __m256, b: __m256| _mm256_cmp_ps::<_CMP_NLT_UQ>(a, b);
    let push = |i: __m256i, m: __m256| _mm256_sub_epi32(_mm256_slli_epi32::<1>(i), _mm256_castps_si256(m));
    let m8 = ge(x, t.t8);
    let i = _mm256_srli_epi32::<31>(_mm256_castps_si256(m8));
    let i = push(i, ge(x, _mm256_blendv_ps(t.t4, t.t12, m8)));
    let i = push(i, ge(x, _mm256_permutevar8x32_ps(t.t2, i)));
    let i = push(i, ge(x, _mm256_permutevar8x32_ps(t.t1, i)));
    let q = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.k_lo, i), _mm256_permutevar8x32_ps(t.k_hi, i), m8);
    (i, q)
}

/// The first value of largest magnitude, with its sign (the reference's `max`), and that
/// magnitude.
#[target_feature(enable = "avx2")]
fn signed_max(xb: &[f32]) -> (f32, f32) {
    assert!(xb.len() >= 32);
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: `xb` holds at least 32 f32; unaligned loads.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) });
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let m = _mm256_max_ps(m, _mm256_permute2f128_ps::<1>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b01_00_11_10>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b10_11_00_01>(m, m));
    let amax = _mm256_cvtss_f32(m);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let mut hits = 0u32;
    for (i, v) in v.iter().enumerate() {
        hits |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, *v), m)) as u32) << (8 * i);
    }
    (xb[hits.trailing_zeros() as usize], amax)
}

/// The scale search of one 32-value block with weights `w`: `iq4::block_scale`.
#[target_feature(enable = "avx2")]
fn block_scale(xb: &[f32], w: &[f32; 32], t: &Tables) -> f32 {
    let (max, amax) = signed_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let values0 = KVALUES_IQ4NL[0] as i32;
    // Lane 0: ggml's first guess 1/d with d = -max/values[0]; lanes 1..16: (itry + values[0])/max.
    let first = 1.0 / (-max / values0 as f32);
    let numerators: [f32; 16] = std::array::from_fn(|c| (c as i32 - 8 + values0) as f32);
    let maxv = _mm256_set1_ps(max);
    // SAFETY: `numerators` holds 16 f32; unaligned loads.
    let (na, nb) = unsafe { (_mm256_loadu_ps(numerators.as_ptr()), _mm256_loadu_ps(numerators.as_ptr().add(8))) };
    let ids_a = _mm256_blend_ps::<1>(_mm256_div_ps(na, maxv), _mm256_set1_ps(first));
    let ids_b = _mm256_div_ps(nb, maxv);
    let zero = _mm256_setzero_ps();
    let (mut sx_a, mut s2_a, mut sx_b, mut s2_b) = (zero, zero, zero, zero);
    for (&x, &w) in xb.iter().zip(w) {
        let (xv, wv) = (_mm256_set1_ps(x), _mm256_set1_ps(w));
        let (_, qa) = nearest(_mm256_mul_ps(ids_a, xv), t);
        let (_, qb) = nearest(_mm256_mul_ps(ids_b, xv), t);
        let (wqa, wqb) = (_mm256_mul_ps(wv, qa), _mm256_mul_ps(wv, qb));
        sx_a = _mm256_add_ps(sx_a, _mm256_mul_ps(wqa, xv));
        s2_a = _mm256_add_ps(s2_a, _mm256_mul_ps(wqa, qa));
        sx_b = _mm256_add_ps(sx_b, _mm256_mul_ps(wqb, xv));
        s2_b = _mm256_add_ps(s2_b, _mm256_mul_ps(wqb, qb));
    }
    let (mut sumqx, mut sumq2) = ([0f32; 16], [0f32; 16]);
    // SAFETY: both arrays hold 16 f32; unaligned stores.
    unsafe {
        _mm256_storeu_ps(sumqx.as_mut_ptr(), sx_a);
        _mm256_storeu_ps(sumqx.as_mut_ptr().add(8), sx_b);
        _mm256_storeu_ps(sumq2.as_mut_ptr(), s2_a);
        _mm256_storeu_ps(sumq2.as_mut_ptr().add(8), s2_b);
    }
    // The reference's choice: the first guess, then each try in order if strictly better.
    let mut d = if sumq2[0] > 0.0 { sumqx[0] / sumq2[0] } else { 0.0 };
    let mut best = d * sumqx[0];
    for c in 1..16 {
        if sumq2[c] > 0.0 && sumqx[c] * sumqx[c] > best * sumq2[c] {
            d = sumqx[c] / sumq2[c];
            best = d * sumqx[c];
        }
    }
    d
}

/// The 16 code bytes of a block for inverse scale `id`: `best_index(id · x)`, code j in the
/// low nibble of byte j and code j + 16 in its high nibble.
#[target_feature(enable = "avx2")]
fn block_codes(xb: &[f32], id: f32, t: &Tables, out: &mut [u8]) {
    assert!(xb.len() >= 32 && out.len() >= 16);
    let idv = _mm256_set1_ps(id);
    // SAFETY: `xb` holds at least 32 f32; unaligned loads.
    let q: [__m256i; 4] =
        std::array::from_fn(|i| nearest(_mm256_mul_ps(idv, unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) }), t).0);
    // SAFETY: `out` holds at least 16 bytes; unaligned store.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), super::avx2::pack_small_nibbles(&q)) };
}

/// A block's weights: `qw · sqrt(sigma2 + x²)` with importance weights, else `x²`.
#[target_feature(enable = "avx2")]
fn block_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 32] {
    assert!(xb.len() >= 32 && qw.is_none_or(|q| q.len() >= 32));
    let mut w = [0f32; 32];
    let s = _mm256_set1_ps(sigma2);
    for i in 0..4 {
        // SAFETY: `xb` (and `qw`) hold at least 32 f32, `w` 32; i < 4; unaligned ops.
        unsafe {
            let x = _mm256_loadu_ps(xb.as_ptr().add(8 * i));
            let x2 = _mm256_mul_ps(x, x);
            let v = match qw {
                Some(q) => _mm256_mul_ps(_mm256_loadu_ps(q.as_ptr().add(8 * i)), _mm256_sqrt_ps(_mm256_add_ps(s, x2))),
                None => x2,
            };
            _mm256_storeu_ps(w.as_mut_ptr().add(8 * i), v);
        }
    }
    w
}

/// IQ4_NL blocks (`quantize_iq4_nl`); `qw` holds one importance weight per value, if given.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_iq4_nl(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let t = tables();
    for (ib, (xb, b)) in x.chunks_exact(32).zip(y.chunks_exact_mut(IQ4_NL_BYTES)).enumerate() {
        let qw = qw.map(|q| &q[32 * ib..32 * ib + 32]);
        let sigma2 = if qw.is_some() { iq4::super_block_sigma2(xb) } else { 0.0 };
        let d = block_scale(xb, &block_weights(xb, qw, sigma2), &t);
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        block_codes(xb, if d != 0.0 { 1.0 / d } else { 0.0 }, &t, &mut b[2..]);
    }
}

/// IQ4_XS super-blocks (`quantize_iq4_xs`); `qw` holds one importance weight per value, if
/// given.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_iq4_xs(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let t = tables();
    for (ibl, (x, b)) in x.chunks_exact(256).zip(y.chunks_exact_mut(IQ4_XS_BYTES)).enumerate() {
        let sigma2 = if qw.is_some() { iq4::super_block_sigma2(x) } else { 0.0 };
        let mut scales = [0f32; 8];
        for (ib, s) in scales.iter_mut().enumerate() {
            let xb = &x[32 * ib..32 * ib + 32];
            let qw = qw.map(|q| &q[256 * ibl + 32 * ib..256 * ibl + 32 * ib + 32]);
            *s = block_scale(xb, &block_weights(xb, qw, sigma2), &t);
        }
        let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
        for &d in &scales {
            if d.abs() > amax_scale {
                amax_scale = d.abs();
                max_scale = d;
            }
        }
        let d = -max_scale / 32.0;
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
        for (ib, &s) in scales.iter().enumerate() {
            let l = nearest_int(id * s).clamp(-32, 31);
            let dl = d * l as f32;
            block_codes(&x[32 * ib..32 * ib + 32], if dl != 0.0 { 1.0 / dl } else { 0.0 }, &t, &mut b[8 + 16 * ib..]);
            let l = (l + 32) as u8;
            scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
            scales_h |= ((l >> 4) as u16) << (2 * ib);
        }
        b[2..4].copy_from_slice(&scales_h.to_le_bytes());
        b[4..8].copy_from_slice(&scales_l);
    }
}

/// 32 values of one 16-byte code block: table value of each nibble times `d` (code j in the
/// low nibble of byte j, code j + 16 in its high nibble), as `dequantize_row_iq4_nl` computes
/// them.
#[target_feature(enable = "avx2")]
fn dequantize_codes(q: &[u8], d: f32, lut: __m128i, y: &mut [f32]) {
    assert!(q.len() >= 16 && y.len() >= 32);
    let dv = _mm256_set1_ps(d);
    let low = _mm_set1_epi8(0x0F);
    // SAFETY: `q` holds at least 16 bytes, `y` room for 32 f32 (four stores of 8).
    unsafe {
        let q = _mm_loadu_si128(q.as_ptr().cast());
        let lo = _mm_shuffle_epi8(lut, _mm_and_si128(q, low));
        let hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16::<4>(q), low));
        let p = y.as_mut_ptr();
        let put = |p: *mut f32, v: __m128i| {
            _mm256_storeu_ps(p, _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))))
        };
        put(p, lo);
        put(p.add(8), _mm_srli_si128::<8>(lo));
        put(p.add(16), hi);
        put(p.add(24), _mm_srli_si128::<8>(hi));
    }
}

/// `dequantize_row_iq4_nl`.
#[target_feature(enable = "avx2,f16c")]
pub fn dequantize_iq4_nl(x: &[u8], y: &mut [f32]) {
    // SAFETY: the table holds 16 bytes.
    let lut = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) };
    for (b, y) in x.chunks_exact(IQ4_NL_BYTES).zip(y.chunks_exact_mut(32)) {
        dequantize_codes(&b[2..], crate::convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]])), lut, y);
    }
}

/// `dequantize_row_iq4_xs`.
#[target_feature(enable = "avx2,f16c")]
pub fn dequantize_iq4_xs(x: &[u8], y: &mut [f32]) {
    // SAFETY: the table holds 16 bytes.
    let lut = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) };
    for (b, y) in x.chunks_exact(IQ4_XS_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = crate::convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for ib in 0..8 {
            let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            dequantize_codes(&b[8 + 16 * ib..], d * (ls - 32) as f32, lut, &mut y[32 * ib..]);
        }
    }
}
