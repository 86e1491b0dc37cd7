//! The scalar reference kernels: the definition of every type's bytes. SIMD backends must
//! match them byte for byte.

pub mod iq4;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod q2k_q3k;
pub mod weighted;

use crate::QuantType;

pub use iq4::KVALUES_IQ4NL;

/// Quantizes whole blocks (lengths already checked, values finite).
pub fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) {
    match ty {
        QuantType::Q8_0 => legacy::quantize_q8_0(x, y),
        QuantType::Q4_0 => legacy::quantize_q4_0(x, y),
        QuantType::Q4_1 => legacy::quantize_q4_1(x, y),
        QuantType::Q5_0 => legacy::quantize_q5_0(x, y),
        QuantType::Q5_1 => legacy::quantize_q5_1(x, y),
        QuantType::MXFP4 => mxfp4::quantize(x, y),
        QuantType::Q4_K => kquants::quantize_k(&kquants::Q4_K, x, y),
        QuantType::Q5_K => kquants::quantize_k(&kquants::Q5_K, x, y),
        QuantType::Q6_K => kquants::quantize_q6_k(x, y),
        QuantType::IQ4_NL => iq4::quantize_iq4_nl(x, y, None),
        QuantType::Q2_K => q2k_q3k::quantize_q2_k(x, y),
        QuantType::Q3_K => q2k_q3k::quantize_q3_k(x, y),
        QuantType::IQ4_XS => iq4::quantize_iq4_xs(x, y, None),
    }
}

/// Quantizes whole blocks if every value is finite; returns whether it did.
pub fn quantize_checked(ty: QuantType, x: &[f32], y: &mut [u8]) -> bool {
    if crate::backend::first_non_finite(x).is_some() {
        return false;
    }
    quantize(ty, x, y);
    true
}

/// Dequantizes whole blocks (lengths already checked).
pub fn dequantize(ty: QuantType, x: &[u8], y: &mut [f32]) {
    match ty {
        QuantType::Q8_0 => legacy::dequantize_q8_0(x, y),
        QuantType::Q4_0 => legacy::dequantize_q4_0(x, y),
        QuantType::Q4_1 => legacy::dequantize_q4_1(x, y),
        QuantType::Q5_0 => legacy::dequantize_q5_0(x, y),
        QuantType::Q5_1 => legacy::dequantize_q5_1(x, y),
        QuantType::MXFP4 => mxfp4::dequantize(x, y),
        QuantType::Q4_K => kquants::dequantize_q4_k(x, y),
        QuantType::Q5_K => kquants::dequantize_q5_k(x, y),
        QuantType::Q6_K => kquants::dequantize_q6_k(x, y),
        QuantType::IQ4_NL => iq4::dequantize_iq4_nl(x, y),
        QuantType::Q2_K => q2k_q3k::dequantize_q2_k(x, y),
        QuantType::Q3_K => q2k_q3k::dequantize_q3_k(x, y),
        QuantType::IQ4_XS => iq4::dequantize_iq4_xs(x, y),
    }
}
