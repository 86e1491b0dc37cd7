//! MLX's quantized layouts (what `mlx.core.quantize` writes and mlx-lm loads), ported from
//! MLX's CPU quantizer so the bytes are the same.
//!
//! - Affine (`mode="affine"`, 4 or 8 bits, groups of 32/64/128 along a row): per group a scale
//!   and a bias (stored bf16 by mlx-lm); value = scale · q + bias. Codes are packed into
//!   little-endian u32 words, element `k` of a word at bits `k · bits`.
//! - MXFP4 (`mode="mxfp4"`, groups of 32): E2M1 codes packed the same way (so byte `i` holds
//!   elements `2i` and `2i + 1` in its low and high nibble, OpenAI's order) and one E8M0 scale
//!   byte per group: OpenAI's MXFP4 layout exactly, decoded by [`crate::openai::dequantize`].

use crate::KernelError;
use crate::convert::{bf16_to_f32, f32_to_bf16};

/// Checks that an affine setting is one MLX supports here.
pub fn check_affine(bits: u32, group: usize) -> Result<(), KernelError> {
    if !matches!(bits, 4 | 8) || !matches!(group, 32 | 64 | 128) {
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
    let per_word = (32 / bits) as usize;
    let groups = x.chunks_exact(group).zip(words.chunks_exact_mut(group / per_word));
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
        for (word, vals) in w.iter_mut().zip(g.chunks_exact(per_word)) {
            let mut packed = 0u32;
            for (k, &v) in vals.iter().enumerate() {
                let q = ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins);
                packed |= (q as u32) << (k as u32 * bits);
            }
            *word = packed;
        }
        *s = f32_to_bf16(scale);
        *b = f32_to_bf16(bias);
    }
    Ok(())
}

/// Decodes affine codes: value = scale · q + bias (in f32, as MLX's CPU matmul does).
pub fn affine_dequantize(words: &[u32], scales: &[u16], biases: &[u16], bits: u32, group: usize, y: &mut [f32]) {
    let per_word = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let groups = y.chunks_exact_mut(group).zip(words.chunks_exact(group / per_word));
    for ((g, w), (&s, &b)) in groups.zip(scales.iter().zip(biases)) {
        let (s, b) = (bf16_to_f32(s), bf16_to_f32(b));
        for (vals, &word) in g.chunks_exact_mut(per_word).zip(w) {
            for (k, v) in vals.iter_mut().enumerate() {
                *v = s * ((word >> (k as u32 * bits)) & mask) as f32 + b;
            }
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
        for bits in [4, 8] {
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
        assert!(check_affine(3, 32).is_err() && check_affine(4, 16).is_err());
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
