//! MXFP4 in OpenAI's layout (gpt-oss checkpoints): per 32 values, 16 bytes of codes with
//! element 2i in the low nibble of byte i and element 2i+1 in the high nibble, and one E8M0
//! scale byte in a separate tensor. Value = E2M1(code) · 2^(scale − 127).
//!
//! The codes mean the same in both layouts and the scale byte has the same bias, so moving
//! between OpenAI's layout and ggml's is a lossless permutation of nibbles.

/// E2M1 values of the 16 codes (bit 3 is the sign).
pub const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// 2^(e − 127), OpenAI's reading of an E8M0 scale.
#[inline]
pub fn e8m0_to_f32(e: u8) -> f32 {
    if e == 0 { f32::from_bits(0x0040_0000) } else { f32::from_bits((e as u32) << 23) }
}

/// Decodes OpenAI-layout blocks (`blocks.len() == 16 * scales.len()`) to f32, as the
/// reference decoders (transformers' `convert_moe_packed_tensors`) do.
pub fn dequantize(blocks: &[u8], scales: &[u8], y: &mut [f32]) {
    for ((codes, &s), y) in blocks.chunks_exact(16).zip(scales).zip(y.chunks_exact_mut(32)) {
        let scale = e8m0_to_f32(s);
        for (i, &byte) in codes.iter().enumerate() {
            y[2 * i] = E2M1[(byte & 0x0F) as usize] * scale;
            y[2 * i + 1] = E2M1[(byte >> 4) as usize] * scale;
        }
    }
}

/// One block's 16 code bytes, OpenAI order → ggml order.
#[inline]
pub fn to_ggml_codes(src: &[u8; 16]) -> [u8; 16] {
    let mut c = [0u8; 32];
    for (i, &b) in src.iter().enumerate() {
        c[2 * i] = b & 0x0F;
        c[2 * i + 1] = b >> 4;
    }
    std::array::from_fn(|j| c[j] | (c[j + 16] << 4))
}

/// One block's 16 code bytes, ggml order → OpenAI order.
#[inline]
pub fn from_ggml_codes(src: &[u8; 16]) -> [u8; 16] {
    let mut c = [0u8; 32];
    for (j, &b) in src.iter().enumerate() {
        c[j] = b & 0x0F;
        c[j + 16] = b >> 4;
    }
    std::array::from_fn(|i| c[2 * i] | (c[2 * i + 1] << 4))
}

/// OpenAI-layout blocks and scales → ggml `block_mxfp4`s (`{e, qs[16]}`, 17 bytes each).
pub fn repack_to_ggml(blocks: &[u8], scales: &[u8], out: &mut [u8]) {
    for ((codes, &s), o) in blocks.chunks_exact(16).zip(scales).zip(out.chunks_exact_mut(17)) {
        o[0] = s;
        o[1..].copy_from_slice(&to_ggml_codes(codes.try_into().expect("16-byte chunk")));
    }
}

/// ggml `block_mxfp4`s → OpenAI-layout blocks and scales.
pub fn repack_from_ggml(ggml: &[u8], blocks: &mut [u8], scales: &mut [u8]) {
    for ((b, codes), s) in ggml.chunks_exact(17).zip(blocks.chunks_exact_mut(16)).zip(scales.iter_mut()) {
        *s = b[0];
        codes.copy_from_slice(&from_ggml_codes(b[1..].try_into().expect("16-byte chunk")));
    }
}

/// The E2M1 code nearest to `v` (|v| ≤ 6 after scaling), ties to the even code, as a
/// round-to-nearest-even cast to FP4 does.
#[inline]
fn e2m1_code(v: f32) -> u8 {
    let a = v.abs();
    // Midpoints between neighbouring magnitudes; at a midpoint the even code wins.
    let code = if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else {
        7
    };
    if v.is_sign_negative() && code != 0 { code | 8 } else { code }
}

/// OpenAI's quantizer: per block, the scale is the smallest power of two ≥ amax/6 and each
/// value takes the nearest E2M1 code (ties to even). Values that are already MXFP4 values
/// of some scale come back exactly.
pub fn quantize(x: &[f32], blocks: &mut [u8], scales: &mut [u8]) {
    for ((x, codes), s) in x.chunks_exact(32).zip(blocks.chunks_exact_mut(16)).zip(scales.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let e = scale_exponent(amax / 6.0);
        *s = e;
        let inv = 1.0 / e8m0_to_f32(e);
        for (i, c) in codes.iter_mut().enumerate() {
            *c = e2m1_code(x[2 * i] * inv) | (e2m1_code(x[2 * i + 1] * inv) << 4);
        }
    }
}

/// The smallest E8M0 exponent byte whose scale 2^(e−127) is ≥ `target` (clamped to 0..=254).
fn scale_exponent(target: f32) -> u8 {
    if target <= e8m0_to_f32(0) {
        return 0;
    }
    let bits = target.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32; // target is normal here: it exceeds 2^-127
    let exact_power = bits & 0x007f_ffff == 0;
    (if exact_power { exp } else { exp + 1 }).clamp(0, 254) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::mxfp4;

    #[test]
    fn repack_is_a_permutation_and_values_agree_with_ggml() {
        let blocks: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(37) ^ 0x5a) as u8).collect();
        let scales = [120u8, 127, 130, 2];
        let mut ggml = vec![0u8; 4 * 17];
        repack_to_ggml(&blocks, &scales, &mut ggml);
        let (mut back_b, mut back_s) = (vec![0u8; 64], vec![0u8; 4]);
        repack_from_ggml(&ggml, &mut back_b, &mut back_s);
        assert_eq!((back_b.as_slice(), back_s.as_slice()), (blocks.as_slice(), &scales[..]));
        let (mut a, mut b) = (vec![0f32; 128], vec![0f32; 128]);
        dequantize(&blocks, &scales, &mut a);
        mxfp4::dequantize(&ggml, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn quantizer_recovers_mxfp4_values() {
        let blocks: Vec<u8> = (0..160u32).map(|i| (i.wrapping_mul(91) ^ 0x3c) as u8).collect();
        let scales = [100u8, 127, 128, 140, 200, 1, 0, 250, 60, 127];
        let mut x = vec![0f32; 320];
        dequantize(&blocks, &scales, &mut x);
        let (mut b2, mut s2) = (vec![0u8; 160], vec![0u8; 10]);
        quantize(&x, &mut b2, &mut s2);
        let mut y = vec![0f32; 320];
        dequantize(&b2, &s2, &mut y);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert_eq!(a, b, "value {i}");
        }
    }

    #[test]
    fn ties_go_to_even_codes() {
        assert_eq!(e2m1_code(0.25), 0);
        assert_eq!(e2m1_code(0.75), 2);
        assert_eq!(e2m1_code(1.25), 2);
        assert_eq!(e2m1_code(1.75), 4);
        assert_eq!(e2m1_code(2.5), 4);
        assert_eq!(e2m1_code(3.5), 6);
        assert_eq!(e2m1_code(5.0), 6);
        assert_eq!(e2m1_code(-6.0), 15);
        assert_eq!(e2m1_code(-0.1), 0);
    }
}
