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
///
/// Errors: a finite value the output cannot hold is an [`Overflow`] (an F16 value beyond
/// ±65504, a BF16 one rounding past f32's range, a block whose F16 scale overflows); the
/// check reads the output, not the input, so it costs one pass over the halves (or over the
/// scales). Non-finite input is left to the caller ([`crate::plan::recipe::Recipe`]'s
/// `check_finite`) for F16/BF16, and refused by the quantizers.
pub fn from_f32(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let k = active();
    match ty {
        GgmlType::F32 => dst.chunks_exact_mut(4).zip(src).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
        GgmlType::F16 | GgmlType::BF16 => {
            let convert = |halves: &mut [u16]| {
                if ty == GgmlType::F16 {
                    k.f32_to_f16(src, halves);
                    0x7C00
                } else {
                    k.f32_to_bf16(src, halves);
                    0x7F80
                }
            };
            // Straight into the output when it is aligned (little-endian: the bytes are the
            // halves); the overflow scan then costs what the copy from a buffer did.
            let index = match bytemuck::try_cast_slice_mut::<u8, u16>(dst) {
                Ok(halves) if cfg!(target_endian = "little") => {
                    let exponent = convert(halves);
                    overflowed_half(halves, exponent, src)
                }
                _ => {
                    let mut halves = vec![0u16; src.len()];
                    let exponent = convert(&mut halves);
                    dst.chunks_exact_mut(2).zip(&halves).for_each(|(d, h)| d.copy_from_slice(&h.to_le_bytes()));
                    overflowed_half(&halves, exponent, src)
                }
            };
            if let Some(index) = index {
                return Err(Overflow { index, value: src[index], ty, scale: false }.into());
            }
        }
        other => match quant_type(other) {
            Some(q) => {
                k.quantize(q, src, dst)?;
                check_block_overflow(other, dst, src)?;
            }
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
            check_block_overflow(ty, dst, src)
        }
        _ => from_f32(ty, src, dst),
    }
}

/// A finite value that became infinite in a narrowing conversion: F16 holds magnitudes up to
/// 65504 (f32 → F16, BF16 → F16), BF16 rounds the last f32 values up to infinity, and block
/// types keep their scales in F16 (a Q8_0 block with a value beyond 127 · 65504 gets an
/// infinite scale). ggml and llama.cpp's converter write the infinity silently; moeq refuses,
/// as for NaN input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overflow {
    /// Index of the value in the converted slice (for a block type, the block's largest
    /// magnitude).
    pub index: usize,
    /// The value.
    pub value: f32,
    /// The output type.
    pub ty: GgmlType,
    /// Whether it is a block's F16 scale that overflows (rather than the value itself).
    pub scale: bool,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (value, ty) = (self.value, self.ty);
        if self.scale {
            write!(f, "value {} is {value}, too large for a {ty} block (its scales overflow)", self.index)?;
        } else if ty == GgmlType::F16 {
            write!(f, "value {} is {value}, beyond F16's range (±65504)", self.index)?;
        } else {
            write!(f, "value {} is {value}, which rounds to infinity in {ty}", self.index)?;
        }
        let advice = if ty == GgmlType::BF16 { "F32" } else { "BF16 (or F32), which holds it" };
        write!(f, "; convert to {advice} instead")
    }
}

impl std::error::Error for Overflow {}

/// Refuses blocks of `ty` encoded from `src` into `blocks` whose F16 scales overflowed, or whose
/// values' squares did (see [`overflowed_scale`], [`overflowed_square`]).
fn check_block_overflow(ty: GgmlType, blocks: &[u8], src: &[f32]) -> Result<()> {
    match overflowed_scale(ty, blocks, src).or_else(|| overflowed_square(ty, src)) {
        Some(index) => Err(Overflow { index, value: src[index], ty, scale: true }.into()),
        None => Ok(()),
    }
}

/// The first value whose output half has an all-ones `exponent` (infinite or NaN) while the
/// input is finite. A branch-free pass first (it vectorizes); the search only on a hit.
fn overflowed_half(halves: &[u16], exponent: u16, src: &[f32]) -> Option<usize> {
    if !halves.iter().fold(false, |any, &h| any | (h & exponent == exponent)) {
        return None;
    }
    halves.iter().zip(src).position(|(&h, v)| h & exponent == exponent && v.is_finite())
}

/// Byte offsets of the F16 scales (d, and m/dmin where there is one) in a block of `ty`
/// (ggml-common.h's `block_*` structs); empty for types without F16 scales (MXFP4's E8M0,
/// Q8_K's f32).
fn f16_scales(ty: GgmlType) -> &'static [usize] {
    use GgmlType as G;
    match ty {
        G::Q4_0 | G::Q5_0 | G::Q8_0 | G::IQ4_NL | G::IQ4_XS | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS => &[0],
        G::IQ3_S | G::IQ1_S | G::Q1_0 | G::Q2_0 => &[0],
        G::Q4_1 | G::Q5_1 | G::Q8_1 | G::Q4_K | G::Q5_K => &[0, 2],
        G::Q2_K => &[80, 82],
        G::Q3_K => &[108],
        G::Q6_K => &[208],
        G::TQ1_0 => &[52],
        G::TQ2_0 => &[64],
        _ => &[],
    }
}

/// The k-quants and IQ4_NL/IQ4_XS weigh each value by its square (`make_qx_quants`,
/// `make_qkx2_quants`, `quantize_row_iq4_nl_impl`) without importance weights: past
/// √f32::MAX ≈ 1.8e19 the weight is infinite and the sub-block's scale NaN, which ggml writes
/// as garbage without an infinite F16 scale. The index of the first such value, for those
/// types (one max pass, against their far slower quantizers).
fn overflowed_square(ty: GgmlType, src: &[f32]) -> Option<usize> {
    const LIMIT: f32 = 1.8e19;
    use GgmlType as G;
    if !matches!(ty, G::Q2_K | G::Q3_K | G::Q4_K | G::Q5_K | G::Q6_K | G::IQ4_NL | G::IQ4_XS) {
        return None;
    }
    if src.iter().fold(0.0f32, |m, v| m.max(v.abs())) <= LIMIT {
        return None;
    }
    src.iter().position(|v| v.abs() > LIMIT)
}

/// For a block type: the index of the largest magnitude in the first block whose F16 scale
/// came out infinite or NaN (the quantizers refuse non-finite input, so that is an overflow).
fn overflowed_scale(ty: GgmlType, blocks: &[u8], src: &[f32]) -> Option<usize> {
    let fields = f16_scales(ty);
    let (per_block, block_bytes) = (ty.block_size() as usize, ty.type_size() as usize);
    if ty == GgmlType::IQ1_M && block_bytes > 0 {
        return overflowed_iq1_m(blocks, src, per_block, block_bytes);
    }
    if fields.is_empty() || block_bytes == 0 {
        return None;
    }
    let hit =
        |b: &[u8]| fields.iter().fold(false, |any, &o| any | (u16::from_le_bytes([b[o], b[o + 1]]) & 0x7C00 == 0x7C00));
    // First one strided pass per field over the high bytes (they hold the exponent).
    let any = fields.iter().any(|&o| {
        let high = blocks.get(o + 1..).unwrap_or_default();
        high.iter().step_by(block_bytes).fold(false, |any, &h| any | (h & 0x7C == 0x7C))
    });
    if !any {
        return None;
    }
    largest_in_block(src, blocks.chunks_exact(block_bytes).position(hit)?, per_block)
}

/// The index in `src` of the largest magnitude of block `b` (of `per_block` values).
fn largest_in_block(src: &[f32], b: usize, per_block: usize) -> Option<usize> {
    let values = src.get(b * per_block..(b + 1) * per_block)?;
    let largest = values.iter().enumerate().max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))?.0;
    Some(b * per_block + largest)
}

/// IQ1_M keeps its F16 super-block scale in the top nibbles of the four u16 `scales` after
/// `qs[32]` and `qh[16]` (ggml-common.h's `block_iq1_m`, `iq1m_scale_t`).
fn overflowed_iq1_m(blocks: &[u8], src: &[f32], per_block: usize, block_bytes: usize) -> Option<usize> {
    let scale = |b: &[u8]| {
        let sc = |i: usize| u16::from_le_bytes([b[48 + 2 * i], b[49 + 2 * i]]);
        (sc(0) >> 12) | ((sc(1) >> 8) & 0x00f0) | ((sc(2) >> 4) & 0x0f00) | (sc(3) & 0xf000)
    };
    largest_in_block(src, blocks.chunks_exact(block_bytes).position(|b| scale(b) & 0x7C00 == 0x7C00)?, per_block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moeq_kernels::KernelError;

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

    /// Every writable type: a finite value the type cannot hold is an overflow at its index
    /// (for block types, through the F16 scale at the offsets of [`f16_scales`]); values it
    /// holds encode.
    #[test]
    fn overflow_is_found_in_every_writable_type() {
        let types = [GgmlType::F16, GgmlType::BF16, GgmlType::F32]
            .into_iter()
            .chain((0..64).filter_map(GgmlType::from_id).filter(|&t| quant_type(t).is_some()));
        // (IQ2_XXS, IQ2_XS and IQ1_S need importance weights: refused without, tested above.)
        let needs_weights = |t| matches!(t, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ1_S);
        for ty in types.filter(|&t| can_write(t) && !needs_weights(t)) {
            let n = 512;
            let mut values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
            let mut out = vec![0u8; ty.row_bytes(n as u64).unwrap() as usize];
            from_f32(ty, &values, &mut out).unwrap_or_else(|e| panic!("{ty}: {e}"));
            let bigs: &[f32] = if ty == GgmlType::BF16 { &[f32::MAX] } else { &[1e9, 1e30] };
            for &big in bigs {
                values[300] = -big;
                match from_f32(ty, &values, &mut out) {
                    Ok(()) => assert!(matches!(ty, GgmlType::F32 | GgmlType::MXFP4), "{ty}: not refused"),
                    // The i-quants whose ggml quantizer aborts on such blocks refuse them
                    // as degenerate (naming the super-block) before any scale is written.
                    Err(e) if matches!(e.downcast_ref::<KernelError>(), Some(KernelError::Degenerate { .. })) => {
                        assert!(ty.name().starts_with("IQ"), "{ty}: {e}");
                    }
                    Err(e) => {
                        let o = e.downcast_ref::<Overflow>().unwrap_or_else(|| panic!("{ty}: {e}"));
                        assert_eq!(
                            (o.index, o.value, o.scale),
                            (300, -big, !matches!(ty, GgmlType::F16 | GgmlType::BF16))
                        );
                    }
                }
            }
        }
        // 65504 is F16's largest value; 65520 rounds to infinity.
        let mut out = [0u8; 4];
        assert!(from_f32(GgmlType::F16, &[65504.0, -65519.0], &mut out).is_ok());
        assert!(from_f32(GgmlType::F16, &[1.0, 65520.0], &mut out).is_err());
        // Infinity in, infinity out: not an overflow (the caller's check_finite decides).
        assert!(from_f32(GgmlType::F16, &[f32::INFINITY, 1.0], &mut out).is_ok());
    }
}
