//! Between ggml tensor types and f32, through the kernels: the quantize stage of the pipeline.

use anyhow::{Result, bail};
use moeq_formats::gguf::GgmlType;
use moeq_kernels::{QuantType, active};

/// The kernels' block type for a ggml type, if it is block-quantized.
pub fn quant_type(ty: GgmlType) -> Option<QuantType> {
    Some(match ty {
        GgmlType::Q8_0 => QuantType::Q8_0,
        GgmlType::Q4_0 => QuantType::Q4_0,
        GgmlType::Q4_1 => QuantType::Q4_1,
        GgmlType::Q5_0 => QuantType::Q5_0,
        GgmlType::Q5_1 => QuantType::Q5_1,
        GgmlType::MXFP4 => QuantType::MXFP4,
        GgmlType::Q4_K => QuantType::Q4_K,
        GgmlType::Q5_K => QuantType::Q5_K,
        GgmlType::Q6_K => QuantType::Q6_K,
        GgmlType::IQ4_NL => QuantType::IQ4_NL,
        GgmlType::Q2_K => QuantType::Q2_K,
        GgmlType::Q3_K => QuantType::Q3_K,
        GgmlType::IQ4_XS => QuantType::IQ4_XS,
        _ => return None,
    })
}

/// Whether moeq can read values of this type.
pub fn can_read(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || quant_type(ty).is_some()
}

/// Whether moeq can write values of this type.
pub fn can_write(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || quant_type(ty).is_some_and(QuantType::can_quantize)
}

/// Decodes `src` (values of type `ty`) into `dst`.
pub fn to_f32(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let k = active();
    match ty {
        GgmlType::F32 => {
            dst.iter_mut().zip(src.chunks_exact(4)).for_each(|(d, c)| *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        }
        GgmlType::F16 | GgmlType::BF16 => match bytemuck::try_cast_slice::<u8, u16>(src) {
            Ok(aligned) => convert16(ty, aligned, dst),
            // Mapped tensor data is 32-byte aligned; copy only if a caller hands odd bytes.
            Err(_) => {
                let halves: Vec<u16> = src.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                convert16(ty, &halves, dst)
            }
        },
        other => match quant_type(other) {
            Some(q) => k.dequantize(q, src, dst)?,
            None => bail!("reading {other} tensors is not supported"),
        },
    }
    Ok(())
}

fn convert16(ty: GgmlType, src: &[u16], dst: &mut [f32]) {
    if ty == GgmlType::F16 { active().f16_to_f32(src, dst) } else { active().bf16_to_f32(src, dst) }
}

/// Encodes `src` as values of type `ty` into `dst` (exactly the right size).
pub fn from_f32(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let k = active();
    match ty {
        GgmlType::F32 => dst.chunks_exact_mut(4).zip(src).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
        GgmlType::F16 | GgmlType::BF16 => {
            let mut halves = vec![0u16; src.len()];
            if ty == GgmlType::F16 {
                k.f32_to_f16(src, &mut halves)
            } else {
                k.f32_to_bf16(src, &mut halves)
            }
            dst.chunks_exact_mut(2).zip(&halves).for_each(|(d, h)| d.copy_from_slice(&h.to_le_bytes()));
        }
        other => match quant_type(other) {
            Some(q) => k.quantize(q, src, dst)?,
            None => bail!("writing {other} tensors is not supported"),
        },
    }
    Ok(())
}

/// Encodes rows of `n_per_row` values as type `ty` with importance weights (one per column),
/// as ggml does when given `quant_weights`. Float types and Q8_0 / MXFP4 (whose ggml
/// quantizers ignore the weights) take the plain path.
pub fn from_f32_weighted(ty: GgmlType, src: &[f32], dst: &mut [u8], n_per_row: usize, weights: &[f32]) -> Result<()> {
    match quant_type(ty) {
        Some(q) if !matches!(ty, GgmlType::Q8_0 | GgmlType::MXFP4) => {
            active().quantize_weighted(q, src, dst, n_per_row, weights)?;
            Ok(())
        }
        _ => from_f32(ty, src, dst),
    }
}
