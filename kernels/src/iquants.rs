//! The i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) and the ternary types
//! (TQ1_0, TQ2_0): dispatch between the scalar references in [`crate::scalar`] (`iq1`, `iq2`,
//! `iq3`, `ternary`) and their SIMD versions, super-block by super-block.
//!
//! ggml quantizes these rows super-block by super-block (256 values); importance weights are a
//! row's worth (one per column) and the weights of super-block `b` of a row are its columns
//! `256·b..256·b+256`. Without weights, rows do not matter.

use crate::scalar::iq_search::{Reference, Searcher};
use crate::scalar::iq_tables::GgmlAbort;
use crate::scalar::{iq1, iq2, iq3, ternary};
use crate::{KernelError, QuantType};

/// Quantizes one super-block: 256 values, with their 256 importance weights or without.
pub(crate) type QuantizeBlock = fn(QuantType, &[f32], Option<&[f32]>, &mut [u8]) -> Result<(), GgmlAbort>;

/// One backend's i-quant kernels.
pub(crate) struct Kernels {
    /// Quantizes one super-block: 256 values, with their 256 importance weights or without
    /// (never called without for types that [need them](QuantType::needs_importance)).
    pub(crate) quantize: QuantizeBlock,
    /// Dequantizes whole super-blocks.
    pub(crate) dequantize: fn(QuantType, &[u8], &mut [f32]),
}

/// The scalar references.
pub(crate) static SCALAR: Kernels = Kernels { quantize: quantize_block, dequantize };

/// The scalar reference for one super-block.
fn quantize_block(ty: QuantType, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) -> Result<(), GgmlAbort> {
    quantize_block_with(&Reference, ty, x, qw, y)
}

/// One super-block with the searches of `s`.
pub(crate) fn quantize_block_with<S: Searcher>(
    s: &S,
    ty: QuantType,
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    match (ty, qw) {
        (QuantType::IQ2_XXS, Some(qw)) => iq2::quantize_iq2_xxs_block(s, x, qw, y),
        (QuantType::IQ2_XS, Some(qw)) => iq2::quantize_iq2_xs_block(s, x, qw, y),
        (QuantType::IQ2_S, qw) => iq2::quantize_iq2_s_block(s, x, qw, y),
        (QuantType::IQ3_XXS, qw) => iq3::quantize_iq3_xxs_block(s, x, qw, y),
        (QuantType::IQ3_S, qw) => iq3::quantize_iq3_s_block(s, x, qw, y),
        (QuantType::IQ1_S, Some(qw)) => iq1::quantize_iq1_s_block(s, x, qw, y),
        (QuantType::IQ1_M, qw) => iq1::quantize_iq1_m_block(s, x, qw, y),
        (QuantType::TQ1_0, _) => {
            ternary::quantize_tq1_0(x, y);
            Ok(())
        }
        (QuantType::TQ2_0, _) => {
            ternary::quantize_tq2_0(x, y);
            Ok(())
        }
        // Types that need weights are refused without them before dispatch; others are not
        // i-quants.
        _ => Err(GgmlAbort),
    }
}

/// The scalar dequantizers.
pub(crate) fn dequantize(ty: QuantType, x: &[u8], y: &mut [f32]) {
    match ty {
        QuantType::IQ2_XXS => iq2::dequantize_iq2_xxs(x, y),
        QuantType::IQ2_XS => iq2::dequantize_iq2_xs(x, y),
        QuantType::IQ2_S => iq2::dequantize_iq2_s(x, y),
        QuantType::IQ3_XXS => iq3::dequantize_iq3_xxs(x, y),
        QuantType::IQ3_S => iq3::dequantize_iq3_s(x, y),
        QuantType::IQ1_S => iq1::dequantize_iq1_s(x, y),
        QuantType::IQ1_M => iq1::dequantize_iq1_m(x, y),
        QuantType::TQ1_0 => ternary::dequantize_tq1_0(x, y),
        QuantType::TQ2_0 => ternary::dequantize_tq2_0(x, y),
        other => crate::scalar::dequantize(other, x, y),
    }
}

/// Quantizes `x` (whole super-blocks; lengths checked by the caller) to `y` with `k`.
/// `weights`, when given, is one row's weights (a multiple of 256 long, dividing `x.len()`).
pub(crate) fn quantize(
    k: &Kernels,
    ty: QuantType,
    x: &[f32],
    y: &mut [u8],
    weights: Option<&[f32]>,
) -> Result<(), KernelError> {
    if weights.is_none() && ty.needs_importance() {
        return Err(KernelError::NeedsImportance(ty.name()));
    }
    let weights = weights.filter(|_| !matches!(ty, QuantType::TQ1_0 | QuantType::TQ2_0));
    for (block, (xb, yb)) in x.chunks_exact(256).zip(y.chunks_exact_mut(ty.block_bytes())).enumerate() {
        // Checked block by block, so that the values are read from memory once.
        if let Some((at, value)) = crate::backend::first_non_finite(xb) {
            return Err(KernelError::NonFinite { index: block * 256 + at, value });
        }
        let qw = weights.map(|w| {
            let at = block * 256 % w.len();
            &w[at..at + 256]
        });
        (k.quantize)(ty, xb, qw, yb).map_err(|GgmlAbort| KernelError::Degenerate { ty: ty.name(), block })?;
    }
    Ok(())
}
