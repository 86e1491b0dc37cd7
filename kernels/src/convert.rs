//! Scalar conversions between f32 and the 16-bit float formats, bit for bit as ggml does them
//! (`ggml-impl.h`): these define what the SIMD conversions must produce.

/// f32 → f16 bits, round to nearest even (`ggml_compute_fp32_to_fp16`; NaN → 0x7E00).
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
}

/// f16 bits → f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 → bf16 bits, round to nearest even; NaN stays NaN, made quiet
/// (`ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact: the bits shifted up).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Scalar row conversions (the reference for the SIMD ones).
pub mod rows {
    /// bf16 → f32.
    pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = super::bf16_to_f32(s));
    }

    /// f16 → f32.
    pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = super::f16_to_f32(s));
    }

    /// f32 → bf16.
    pub fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = super::f32_to_bf16(s));
    }

    /// f32 → f16.
    pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = super::f32_to_f16(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_matches_ieee_round_to_nearest_even() {
        // Every f32 whose top 20 bits vary, with several low-bit patterns: covers every
        // exponent, ties, subnormals, overflow.
        for hi in 0..(1u32 << 20) {
            for lo in [0u32, 1, 0xfff, 0x1000, 0x1001, 0xfff] {
                let f = f32::from_bits(hi << 12 | lo);
                if f.is_nan() {
                    assert_eq!(f32_to_f16(f) & 0x7fff, 0x7E00);
                    continue;
                }
                assert_eq!(f32_to_f16(f), half::f16::from_f32(f).to_bits(), "{f:e} ({:#x})", f.to_bits());
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN made quiet
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_to_f32(0xbf80), -1.0);
    }
}
