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
        GgmlType::IQ2_XXS => QuantType::IQ2_XXS,
        GgmlType::IQ2_XS => QuantType::IQ2_XS,
        GgmlType::IQ2_S => QuantType::IQ2_S,
        GgmlType::IQ3_XXS => QuantType::IQ3_XXS,
        GgmlType::IQ3_S => QuantType::IQ3_S,
        GgmlType::IQ1_S => QuantType::IQ1_S,
        GgmlType::IQ1_M => QuantType::IQ1_M,
        GgmlType::TQ1_0 => QuantType::TQ1_0,
        GgmlType::TQ2_0 => QuantType::TQ2_0,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type the kernels know has the block shape of the GGUF type table.
    #[test]
    fn kernel_blocks_match_the_gguf_type_table() {
        for ty in GgmlType::all() {
            if let Some(q) = quant_type(ty) {
                assert_eq!(q.name(), ty.name());
                assert_eq!(q.block_size() as u64, ty.block_size(), "{ty}");
                assert_eq!(q.block_bytes() as u64, ty.type_size(), "{ty}");
            }
        }
    }

    /// The i-quants and ternary types are read and written; those that need importance weights
    /// are refused without, naming the reason.
    #[test]
    fn iquants_read_and_write() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        for ty in
            [GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S, GgmlType::IQ1_M, GgmlType::TQ1_0, GgmlType::TQ2_0]
        {
            assert!(can_read(ty) && can_write(ty), "{ty}");
            let mut q = vec![0u8; ty.row_bytes(512).unwrap() as usize];
            from_f32(ty, &x, &mut q).unwrap();
            let mut y = vec![0f32; 512];
            to_f32(ty, &q, &mut y).unwrap();
            // A plumbing check (the kernels' tests pin the bytes): the values come back roughly.
            let rms = |v: &mut dyn Iterator<Item = f32>| (v.map(|e| e * e).sum::<f32>() / 512.0).sqrt();
            let (err, size) = (rms(&mut x.iter().zip(&y).map(|(a, b)| a - b)), rms(&mut x.iter().copied()));
            assert!(err < 0.6 * size, "{ty}: rms error {err} for values of rms {size}");
        }
        for ty in [GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ1_S] {
            let mut q = vec![0u8; ty.row_bytes(512).unwrap() as usize];
            let err = from_f32(ty, &x, &mut q).unwrap_err().to_string();
            assert!(err.contains("importance"), "{ty}: {err}");
        }
    }
}
