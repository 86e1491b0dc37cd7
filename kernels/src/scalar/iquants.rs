//! The i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) and the ternary types
//! (TQ1_0, TQ2_0) over whole inputs, super-block by super-block, generic in their inner
//! searches ([`Searcher`]): the scalar table runs them with [`Reference`](super::iq_search::Reference),
//! the AVX2 table with its own searches.
//!
//! ggml quantizes these rows super-block by super-block (256 values); importance weights are a
//! row's worth (one per column) and the weights of super-block `b` of a row are its columns
//! `256·b..256·b+256`. Without weights, rows do not matter.

use super::common::sum_x2;
use super::iq_search::Searcher;
use super::iq_tables::GgmlAbort;
use super::{iq1, iq2, iq3, ternary};
use crate::QuantType;
use crate::backend::Refusal;

/// Quantizes one super-block (256 finite values, with their 256 importance weights or
/// without) with the searches of `s`; `sum_x2` is its `Σx²` summed in order (ggml's
/// `sumx2`, [`sum_x2`]). `Err(GgmlAbort)` where ggml's quantizer aborts, and for a type that
/// needs weights called without (ggml asserts).
pub fn quantize_block<S: Searcher>(
    s: &S,
    ty: QuantType,
    x: &[f32],
    qw: Option<&[f32]>,
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    match (ty, qw) {
        (QuantType::IQ2_XXS, Some(qw)) => iq2::quantize_iq2_xxs_block(s, x, qw, sum_x2, y),
        (QuantType::IQ2_XS, Some(qw)) => iq2::quantize_iq2_xs_block(s, x, qw, sum_x2, y),
        (QuantType::IQ2_S, qw) => iq2::quantize_iq2_s_block(s, x, qw, sum_x2, y),
        (QuantType::IQ3_XXS, qw) => iq3::quantize_iq3_xxs_block(s, x, qw, sum_x2, y),
        (QuantType::IQ3_S, qw) => iq3::quantize_iq3_s_block(s, x, qw, sum_x2, y),
        (QuantType::IQ1_S, Some(qw)) => iq1::quantize_iq1_s_block(s, x, qw, sum_x2, y),
        (QuantType::IQ1_M, qw) => iq1::quantize_iq1_m_block(s, x, qw, sum_x2, y),
        (QuantType::TQ1_0, _) => {
            ternary::quantize_tq1_0(x, y);
            Ok(())
        }
        (QuantType::TQ2_0, _) => {
            ternary::quantize_tq2_0(x, y);
            Ok(())
        }
        // Types that need weights, without them; other types are not i-quants.
        _ => Err(GgmlAbort),
    }
}

/// Quantizes `x` (whole super-blocks of finite values; lengths checked by the caller) to `y`
/// with the searches of `s`. `weights`, when given, is one row's weights (a multiple of 256 long,
/// dividing `x.len()`); TQ1_0 and TQ2_0 ignore them, as ggml does.
///
/// Refuses a type that [needs weights](QuantType::needs_importance) without them, and returns
/// the first super-block where ggml's quantizer aborts.
pub fn quantize<S: Searcher>(
    s: &S,
    ty: QuantType,
    x: &[f32],
    y: &mut [u8],
    weights: Option<&[f32]>,
) -> Result<(), Refusal> {
    if weights.is_none() && ty.needs_importance() {
        return Err(Refusal::NeedsImportance);
    }
    let weights = weights.filter(|_| !matches!(ty, QuantType::TQ1_0 | QuantType::TQ2_0));
    // Σx² of 8 super-blocks at a time (the searcher may sum them side by side); the ternary
    // types do not use it.
    let ternary = matches!(ty, QuantType::TQ1_0 | QuantType::TQ2_0);
    let grouped = x.len() / 2048 * 8;
    let mut sums = [0f32; 8];
    for (block, (xb, yb)) in x.chunks_exact(256).zip(y.chunks_exact_mut(ty.block_bytes())).enumerate() {
        if !ternary && block < grouped && block % 8 == 0 {
            sums = s.sums_of_squares8(&x[256 * block..256 * (block + 8)]);
        }
        let sum = if ternary {
            0.0
        } else if block < grouped {
            sums[block % 8]
        } else {
            sum_x2(xb)
        };
        let qw = weights.map(|w| {
            let at = block * 256 % w.len();
            &w[at..at + 256]
        });
        quantize_block(s, ty, xb, qw, sum, yb).map_err(|GgmlAbort| Refusal::Degenerate(block))?;
    }
    Ok(())
}

/// Quantizes rows of finite values with one importance weight per column (`qw`, a row's
/// worth, a multiple of 256 long) with the searches of `s`: [`quantize`] with weights.
pub fn quantize_rows<S: Searcher>(s: &S, ty: QuantType, x: &[f32], y: &mut [u8], qw: &[f32]) -> Result<(), Refusal> {
    quantize(s, ty, x, y, Some(qw))
}

/// Whether `ty` is one of the types of this module.
pub fn is_iquant(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::IQ2_XXS
            | QuantType::IQ2_XS
            | QuantType::IQ2_S
            | QuantType::IQ3_XXS
            | QuantType::IQ3_S
            | QuantType::IQ1_S
            | QuantType::IQ1_M
            | QuantType::TQ1_0
            | QuantType::TQ2_0
    )
}
