//! MLX's quantized layouts (what `mlx.core.quantize` writes and mlx-lm loads), ported from
//! MLX's CPU quantizer so the bytes are the same.
//!
//! - Affine (`mode="affine"`, 2, 3, 4, 5, 6 or 8 bits, groups of 32/64/128 along a row): per
//!   group a scale and a bias (stored bf16 by mlx-lm); value = scale · q + bias. Codes form a
//!   little-endian bit stream, code `k` of a row at bits `k · bits ..` (for 2, 4 and 8 bits:
//!   element `k` of a word at bits `k · bits`; for 3 and 5 bits 8 codes per 3 or 5 bytes, for
//!   6 bits 4 codes per 3 bytes, so codes straddle bytes and words), stored as u32 words,
//!   `cols · bits / 32` per row. A group of 32 values is `bits` whole words, so every group
//!   starts on a word. Checked against `mlx.core.quantize` 0.32 for every bits × group size
//!   (`scripts/check_mlx.py`).
//! - MXFP4 (`mode="mxfp4"`, groups of 32): E2M1 codes packed the same way (so byte `i` holds
//!   elements `2i` and `2i + 1` in its low and high nibble, OpenAI's order) and one E8M0 scale
//!   byte per group: OpenAI's MXFP4 layout exactly, decoded by [`crate::openai::dequantize`].

use crate::KernelError;
use crate::convert::{bf16_to_f32, f32_to_bf16};

/// The bit widths of MLX's affine mode (`mlx.core.quantize`'s `bits`).
pub const AFFINE_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

/// Checks that an affine setting is one MLX supports: bits in [`AFFINE_BITS`], groups of 32,
/// 64 or 128.
pub fn check_affine(bits: u32, group: usize) -> Result<(), KernelError> {
    if !AFFINE_BITS.contains(&bits) || !matches!(group, 32 | 64 | 128) {
        return Err(KernelError::UnsupportedSetting(format!("MLX affine {bits}-bit with group size {group}")));
    }
    Ok(())
}

fn non_finite(x: &[f32]) -> Result<(), KernelError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(KernelError::NonFinite { index, value: x[index] }),
        None => Ok(()),
    }
}

/// Affine quantization of `x` (a whole number of groups) as MLX's CPU kernel computes it:
/// f32 arithmetic, `rint` (ties to even), the scale and bias rounded to bf16 only when stored.
/// Writes `x.len() · bits / 32` words, and one bf16 scale and bias per group.
pub fn affine_quantize(
    x: &[f32],
    bits: u32,
    group: usize,
    words: &mut [u32],
    scales: &mut [u16],
    biases: &mut [u16],
) -> Result<(), KernelError> {
    check_affine(bits, group)?;
    non_finite(x)?;
    let n_bins = ((1u32 << bits) - 1) as f32;
    let words_per_group = group * bits as usize / 32;
    let groups = x.chunks_exact(group).zip(words.chunks_exact_mut(words_per_group));
    for ((g, w), (s, b)) in groups.zip(scales.iter_mut().zip(biases.iter_mut())) {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in g {
            hi = hi.max(v);
            lo = lo.min(v);
        }
        let toward_min = lo.abs() > hi.abs();
        let mut scale = ((hi - lo) / n_bins).max(1e-7);
        if !toward_min {
            scale = -scale;
        }
        let edge = if toward_min { lo } else { hi };
        let q0 = (edge / scale).round_ties_even();
        let mut bias = 0.0f32;
        if q0 != 0.0 {
            scale = edge / q0;
            bias = edge;
        }
        // The codes as a little-endian bit stream, flushed a word at a time.
        let (mut acc, mut filled, mut out) = (0u64, 0u32, w.iter_mut());
        for &v in g {
            let q = ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins);
            acc |= (q as u64) << filled;
            filled += bits;
            if filled >= 32 {
                if let Some(word) = out.next() {
                    *word = acc as u32;
                }
                acc >>= 32;
                filled -= 32;
            }
        }
        *s = f32_to_bf16(scale);
        *b = f32_to_bf16(bias);
    }
    Ok(())
}

/// Decodes affine codes: value = scale · q + bias (in f32, as MLX's CPU matmul does).
pub fn affine_dequantize(words: &[u32], scales: &[u16], biases: &[u16], bits: u32, group: usize, y: &mut [f32]) {
    let mask = (1u64 << bits) - 1;
    let words_per_group = group * bits as usize / 32;
    let groups = y.chunks_exact_mut(group).zip(words.chunks_exact(words_per_group));
    for ((g, w), (&s, &b)) in groups.zip(scales.iter().zip(biases)) {
        let (s, b) = (bf16_to_f32(s), bf16_to_f32(b));
        let (mut acc, mut filled, mut next) = (0u64, 0u32, w.iter());
        for v in g.iter_mut() {
            if filled < bits {
                acc |= u64::from(next.next().copied().unwrap_or(0)) << filled;
                filled += 32;
            }
            *v = s * (acc & mask) as f32 + b;
            acc >>= bits;
            filled -= bits;
        }
    }
}

/// MLX's MXFP4 quantizer: the scale is the smallest power of two `s` with `6 · s ≥ amax`
/// (1 for an all-zero group), and each value takes the nearest E2M1 magnitude, ties going to
/// the smaller one; a value that rounds to zero is +0. Writes 16 code bytes and one scale
/// byte per 32 values.
pub fn mxfp4_quantize(x: &[f32], codes: &mut [u8], scales: &mut [u8]) -> Result<(), KernelError> {
    non_finite(x)?;
    for ((g, c), s) in x.chunks_exact(32).zip(codes.chunks_exact_mut(16)).zip(scales.iter_mut()) {
        let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let e = mxfp4_exponent(amax);
        *s = e;
        let scale = crate::openai::e8m0_to_f32(e);
        for (i, byte) in c.iter_mut().enumerate() {
            *byte = e2m1_toward_zero(g[2 * i] / scale) | (e2m1_toward_zero(g[2 * i + 1] / scale) << 4);
        }
    }
    Ok(())
}

/// The E8M0 byte of MLX's MXFP4 scale for a group whose largest magnitude is `amax`.
fn mxfp4_exponent(amax: f32) -> u8 {
    if amax == 0.0 {
        return 127;
    }
    // amax = m · 2^p with m in [1, 2): 6 · 2^(p-2) = 1.5 · 2^p covers it when m ≤ 1.5,
    // otherwise 6 · 2^(p-1) does.
    let bits = amax.to_bits();
    let (biased, mantissa) = ((bits >> 23) as i32, bits & 0x7f_ffff);
    let (p, m) = if biased == 0 {
        // Subnormal: normalize the mantissa.
        let shift = mantissa.leading_zeros() as i32 - 8;
        (-126 - shift, (mantissa << shift) & 0x7f_ffff)
    } else {
        (biased - 127, mantissa)
    };
    let above = m > 0x40_0000; // m > 1.5
    (p - 2 + above as i32 + 127).clamp(0, 254) as u8
}

/// The E2M1 code nearest to `v`, ties to the smaller magnitude, +0 for values that round
/// to zero.
fn e2m1_toward_zero(v: f32) -> u8 {
    let a = v.abs();
    let code = if a > 5.0 {
        7
    } else if a > 3.5 {
        6
    } else if a > 2.5 {
        5
    } else if a > 1.75 {
        4
    } else if a > 1.25 {
        3
    } else if a > 0.75 {
        2
    } else if a > 0.25 {
        1
    } else {
        0
    };
    if code != 0 && v < 0.0 { code | 8 } else { code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_round_trips_within_a_step() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        for bits in AFFINE_BITS {
            for group in [32, 64, 128] {
                let n = x.len();
                let (mut w, mut s, mut b) =
                    (vec![0u32; n * bits as usize / 32], vec![0; n / group], vec![0; n / group]);
                affine_quantize(&x, bits, group, &mut w, &mut s, &mut b).unwrap();
                let mut y = vec![0.0; n];
                affine_dequantize(&w, &s, &b, bits, group, &mut y);
                for (g, (xs, ys)) in x.chunks(group).zip(y.chunks(group)).enumerate() {
                    let step = bf16_to_f32(s[g]).abs();
                    for (a, b) in xs.iter().zip(ys) {
                        // MLX snaps the edge to whole steps (the far end can be a step off); scale and bias are bf16.
                        assert!((a - b).abs() <= step * 1.01 + 0.01, "{bits} {group}: {a} vs {b}"); // + bf16 rounding
                    }
                }
            }
        }
        assert!(affine_quantize(&[f32::NAN; 32], 4, 32, &mut [0; 4], &mut [0], &mut [0]).is_err());
        assert!(check_affine(7, 32).is_err() && check_affine(1, 32).is_err() && check_affine(4, 16).is_err());
    }

    #[test]
    fn affine_codes_are_a_little_endian_bit_stream() {
        // A group whose codes are 0, top, 2, 3, … (mod 2^bits): values on the grid of step 1
        // from -top (the minimum is the larger magnitude, so the bias is -top and code = v + top).
        for bits in AFFINE_BITS {
            let top = (1u32 << bits) - 1;
            let code = |k: u32| if k == 1 { top } else { k % (top + 1) };
            let x: Vec<f32> = (0..64u32).map(|k| code(k) as f32 - top as f32).collect();
            let (mut w, mut s, mut b) = (vec![0u32; 64 * bits as usize / 32], vec![0; 1], vec![0; 1]);
            affine_quantize(&x, bits, 64, &mut w, &mut s, &mut b).unwrap();
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            // Read codes back bit by bit from the bytes, independently of the dequantizer.
            for (k, &v) in x.iter().enumerate() {
                let mut got = 0u32;
                for bit in 0..bits as usize {
                    let at = k * bits as usize + bit;
                    got |= u32::from((bytes[at / 8] >> (at % 8)) & 1) << bit;
                }
                assert_eq!(got as f32, v + top as f32, "{bits} bits, code {k}");
            }
            let mut y = vec![0.0; 64];
            affine_dequantize(&w, &s, &b, bits, 64, &mut y);
            assert_eq!(x, y, "{bits} bits");
        }
    }

    #[test]
    fn mxfp4_scale_and_ties_follow_mlx() {
        // Scale: smallest power of two s with 6 s ≥ amax.
        assert_eq!(mxfp4_exponent(6.0), 127);
        assert_eq!(mxfp4_exponent(6.0f32.next_up()), 128);
        assert_eq!(mxfp4_exponent(4.0), 127);
        assert_eq!(mxfp4_exponent(3.0), 126);
        assert_eq!(mxfp4_exponent(0.0), 127);
        // Ties go to the smaller magnitude, small negatives to +0.
        let got: Vec<u8> =
            [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.2, -0.75, 6.0].iter().map(|&v| e2m1_toward_zero(v)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 0, 9, 7]);
        // Values that are MXFP4 values already come back.
        let x: Vec<f32> = (0..32).map(|i| crate::openai::E2M1[i % 16] * 0.25).collect();
        let (mut c, mut s, mut y) = ([0u8; 16], [0u8; 1], [0.0f32; 32]);
        mxfp4_quantize(&x, &mut c, &mut s).unwrap();
        crate::openai::dequantize(&c, &s, &mut y);
        assert_eq!(x.iter().map(|v| v.abs()).collect::<Vec<_>>(), y.iter().map(|v| v.abs()).collect::<Vec<_>>());
    }
}
