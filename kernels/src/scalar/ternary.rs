//! TQ1_0 and TQ2_0 (ternary, 1.69 and 2.06 bits per weight, for BitNet b1.58 and TriLMs):
//! ports of ggml's `quantize_row_tq{1,2}_0_ref` and `dequantize_row_tq{1,2}_0`
//! (ggml/src/ggml-quants.c). Values become −1, 0 or +1 times the super-block's largest
//! magnitude; ggml ignores importance weights for both.

use crate::convert::{f16_to_f32, f32_to_f16};

/// Bytes per super-block: `qs[48]` (5 trits a byte), `qh[4]` (4 trits a byte), `d`.
pub const TQ1_0_BYTES: usize = 54;
/// Bytes per super-block: `qs[64]` (4 values a byte, 2 bits each), `d`.
pub const TQ2_0_BYTES: usize = 66;

/// `lroundf(v·id) + 1` stored in an `int`: a value's trit 0, 1 or 2. When `id` is infinite (a
/// super-block of tiny subnormals) the product is ±inf or NaN, for which glibc's `lroundf`
/// returns `LONG_MIN`; ggml then keeps the low 32 bits of `LONG_MIN + 1`, i.e. 1.
#[inline]
fn trit(v: f32, id: f32) -> u8 {
    let r = (v * id).round();
    let l = if r.is_nan() || r.abs() >= 9.223_372e18 { i64::MIN } else { r as i64 };
    l.wrapping_add(1) as i32 as u8
}

/// The largest magnitude of a super-block, and its inverse (0 for an all-zero block).
#[inline]
fn scale_of(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    (amax, if amax != 0.0 { 1.0 / amax } else { 0.0 })
}

/// 5 trits as a byte: base 3, first trit most significant, scaled to 0..=255 rounding up.
#[inline]
fn pack5(trits: impl Iterator<Item = u8>) -> u8 {
    let q = trits.fold(0u8, |q, t| q.wrapping_mul(3).wrapping_add(t));
    (q as u16 * 256).div_ceil(243) as u8
}

/// `quantize_row_tq1_0_ref`: whole super-blocks of 256 values.
pub fn quantize_tq1_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(TQ1_0_BYTES)) {
        let (d, id) = scale_of(x);
        // Bytes 0..32: values m + 32n (n = 0..5) of the first 160; bytes 32..48: m + 16n of the next 80.
        for m in 0..32 {
            b[m] = pack5((0..5).map(|n| trit(x[m + 32 * n], id)));
        }
        for m in 0..16 {
            b[32 + m] = pack5((0..5).map(|n| trit(x[160 + m + 16 * n], id)));
        }
        // qh: values 240 + j + 4m (m = 0..4), then one more ×3 to fill the fifth trit.
        for j in 0..4 {
            let q = (0..4).fold(0u8, |q, m| q * 3 + trit(x[240 + j + 4 * m], id)) * 3;
            b[48 + j] = (q as u16 * 256).div_ceil(243) as u8;
        }
        b[52..54].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// `quantize_row_tq2_0_ref`: whole super-blocks of 256 values.
pub fn quantize_tq2_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(TQ2_0_BYTES)) {
        let (d, id) = scale_of(x);
        for j in 0..2 {
            for m in 0..32 {
                b[32 * j + m] = (0..4).fold(0u8, |q, n| q + ((trit(x[128 * j + m + 32 * n], id) & 3) << (2 * n)));
            }
        }
        b[64..66].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// A trit back from a packed byte: the `n`-th most significant (`(q·3^n mod 256)·3 >> 8`), as −1, 0, 1.
#[inline]
fn untrit(q: u8, pow3: u8) -> f32 {
    let q = q.wrapping_mul(pow3);
    ((q as u16 * 3) >> 8) as i16 as f32 - 1.0
}

/// `dequantize_row_tq1_0`.
pub fn dequantize_tq1_0(x: &[u8], y: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    for (b, y) in x.chunks_exact(TQ1_0_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[52], b[53]]));
        for n in 0..5 {
            for m in 0..32 {
                y[32 * n + m] = untrit_scaled(b[m], POW3[n], d);
            }
        }
        for n in 0..5 {
            for m in 0..16 {
                y[160 + 16 * n + m] = untrit_scaled(b[32 + m], POW3[n], d);
            }
        }
        for n in 0..4 {
            for j in 0..4 {
                y[240 + 4 * n + j] = untrit_scaled(b[48 + j], POW3[n], d);
            }
        }
    }
}

/// `(float)(xi - 1) * d` for the trit at `pow3`.
#[inline]
fn untrit_scaled(q: u8, pow3: u8, d: f32) -> f32 {
    untrit(q, pow3) * d
}

/// `dequantize_row_tq2_0`.
pub fn dequantize_tq2_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(TQ2_0_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[64], b[65]]));
        for j in 0..2 {
            for l in 0..4 {
                for m in 0..32 {
                    let q = ((b[32 * j + m] >> (2 * l)) & 3) as i32;
                    y[128 * j + 32 * l + m] = (q - 1) as f32 * d;
                }
            }
        }
    }
}
