//! FP8 E4M3 (the OCP 8-bit float `E4M3`, PyTorch's `float8_e4m3fn`, safetensors' `F8_E4M3`):
//! the weights of DeepSeek-V3/R1's released checkpoints, each 128×128 block with one f32
//! scale (`weight_scale_inv`).
//!
//! A code is a sign bit, 4 exponent bits (bias 7) and 3 mantissa bits; exponent 0 holds the
//! subnormals (m · 2⁻⁹); there are no infinities, and `0x7F`/`0xFF` are NaN. The largest value
//! is 448. Every code is exactly an f32, so decoding is exact; [`dequantize_scaled`] then
//! multiplies by the block's scale in f32, rounding once: `weight.float() * scale` as llama.cpp's
//! converter (`dequant_simple`), DeepSeek's `weight_dequant` and mlx-lm compute it.

/// The value of E4M3 code `code`, from the definition (the reference for [`dequantize_scaled`]);
/// NaN for `0x7F` and `0xFF`.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let (exp, man) = ((code >> 3) & 0x0F, code & 0x07);
    if exp == 0x0F && man == 0x07 {
        return f32::NAN;
    }
    let magnitude =
        if exp == 0 { man as f32 * (-9f32).exp2() } else { (1.0 + man as f32 / 8.0) * (exp as f32 - 7.0).exp2() };
    sign * magnitude
}

/// Whether `code` is NaN (`0x7F` or `0xFF`).
#[inline]
pub fn is_nan(code: u8) -> bool {
    code & 0x7F == 0x7F
}

/// 2¹²⁰: moves an E4M3 code's bits, placed in an f32's exponent and mantissa fields, to its value.
const REBIAS: f32 = f32::from_bits((127 + 120) << 23);

/// `out[i] = value(codes[i]) · scale`, one f32 multiply per value (rounded once, to nearest
/// even), as `weight.float() * scale`. Returns the index of the first NaN code, if any (the
/// output is then unspecified).
///
/// The code's exponent and mantissa bits are placed in an f32's (shifted left by 20) and the
/// exponent bias corrected by an exact multiplication by 2¹²⁰ (for exponent 0 this makes the
/// f32 subnormal m · 2⁻¹²⁹, which the same multiplication takes to m · 2⁻⁹); the loop has no
/// branches, so the compiler vectorizes it.
pub fn dequantize_scaled(codes: &[u8], scale: f32, out: &mut [f32]) -> Option<usize> {
    assert_eq!(codes.len(), out.len(), "dequantize_scaled: length mismatch");
    let mut nan = false;
    for (o, &c) in out.iter_mut().zip(codes) {
        let c = c as u32;
        let bits = ((c & 0x80) << 24) | ((c & 0x7F) << 20);
        *o = f32::from_bits(bits) * REBIAS * scale;
        nan |= c & 0x7F == 0x7F;
    }
    if nan { codes.iter().position(|&c| is_nan(c)) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_as_defined() {
        // Known values of the format (OCP 8-bit floating point specification, E4M3).
        let known = [
            (0x00u8, 0.0f32),
            (0x80, -0.0),
            (0x01, 2f32.powi(-9)),
            (0x07, 7.0 * 2f32.powi(-9)),
            (0x08, 2f32.powi(-6)),
            (0x38, 1.0),
            (0x3C, 1.5),
            (0x7E, 448.0),
            (0xFE, -448.0),
            (0xC0, -2.0),
        ];
        for (code, value) in known {
            assert_eq!(e4m3_to_f32(code).to_bits(), value.to_bits(), "code {code:#04x}");
        }
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
        let mut out = [0.0f32; 256];
        let codes: Vec<u8> = (0..=255).collect();
        assert_eq!(dequantize_scaled(&codes, 1.0, &mut out), Some(0x7F));
        for c in (0..=255u8).filter(|&c| !is_nan(c)) {
            assert_eq!(out[c as usize].to_bits(), e4m3_to_f32(c).to_bits(), "code {c:#04x}");
        }
    }

    #[test]
    fn scaling_rounds_once() {
        // Scales that make normal, subnormal and tiny products, and ties.
        let scales = [1.0f32, 0.003_137_2, 1.0e-3 / 448.0, 3.4e38 / 448.0, f32::from_bits(1), 7.0e-39, -2.5];
        let codes: Vec<u8> = (0..=255u8).filter(|&c| !is_nan(c)).collect();
        let mut out = vec![0.0f32; codes.len()];
        for s in scales {
            assert_eq!(dequantize_scaled(&codes, s, &mut out), None);
            for (&c, &y) in codes.iter().zip(&out) {
                let want = e4m3_to_f32(c) * s;
                assert_eq!(y.to_bits(), want.to_bits(), "code {c:#04x} × {s:e}");
            }
        }
    }
}
