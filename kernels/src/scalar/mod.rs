//! The scalar reference kernels: the definition of every type's bytes. SIMD backends must
//! match them byte for byte.

pub mod iq1;
pub mod iq2;
pub mod iq3;
pub mod iq_grids;
pub mod iq_search;
pub mod iq_tables;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod ternary;
pub mod weighted;

use crate::QuantType;
use crate::convert::f16_to_f32;

/// ggml's `kvalues_iq4nl`.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// `dequantize_row_iq4_nl`.
pub fn dequantize_iq4_nl(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
        }
    }
}

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
        QuantType::IQ4_NL => unreachable!("IQ4_NL quantization is refused before dispatch"),
        other => unreachable!("{} is quantized through crate::iquants", other.name()),
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
        QuantType::IQ4_NL => dequantize_iq4_nl(x, y),
        other => crate::iquants::dequantize(other, x, y),
    }
}
