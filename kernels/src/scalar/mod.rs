//! The scalar reference kernels: the definition of every type's bytes. SIMD backends must
//! match them byte for byte.

pub mod common;
pub mod iq1;
pub mod iq2;
pub mod iq3;
pub mod iq4;
pub mod iq_grids;
pub mod iq_search;
pub mod iq_tables;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod q2k_q3k;
pub mod ternary;
pub mod weighted;

use crate::QuantType;
use crate::backend::Refusal;

pub use iq4::KVALUES_IQ4NL;

/// Quantizes whole blocks (lengths already checked, values finite) without importance
/// weights. Only the i-quants can refuse: [`Refusal::NeedsImportance`] for the types that
/// [need weights](QuantType::needs_importance), [`Refusal::Degenerate`] where ggml aborts.
pub fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
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
        QuantType::IQ2_XXS
        | QuantType::IQ2_XS
        | QuantType::IQ2_S
        | QuantType::IQ3_XXS
        | QuantType::IQ3_S
        | QuantType::IQ1_S
        | QuantType::IQ1_M
        | QuantType::TQ1_0
        | QuantType::TQ2_0 => return iquants::quantize(&iq_search::Reference, ty, x, y, None),
    }
    Ok(())
}

/// [`quantize`] if every value is finite, else [`Refusal::NonFinite`] (output untouched).
pub fn quantize_checked(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
    if crate::backend::first_non_finite(x).is_some() {
        return Err(Refusal::NonFinite);
    }
    quantize(ty, x, y)
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
        QuantType::IQ2_XXS => iq2::dequantize_iq2_xxs(x, y),
        QuantType::IQ2_XS => iq2::dequantize_iq2_xs(x, y),
        QuantType::IQ2_S => iq2::dequantize_iq2_s(x, y),
        QuantType::IQ3_XXS => iq3::dequantize_iq3_xxs(x, y),
        QuantType::IQ3_S => iq3::dequantize_iq3_s(x, y),
        QuantType::IQ1_S => iq1::dequantize_iq1_s(x, y),
        QuantType::IQ1_M => iq1::dequantize_iq1_m(x, y),
        QuantType::TQ1_0 => ternary::dequantize_tq1_0(x, y),
        QuantType::TQ2_0 => ternary::dequantize_tq2_0(x, y),
    }
}
