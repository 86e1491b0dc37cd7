//! Kernel backends (scalar, AVX2, AVX-512), chosen once at run time.
//!
//! A [`Backend`] is a table of functions. The scalar one is always there and defines the
//! results; SIMD ones replace some entries with byte-identical faster versions and keep the
//! scalar ones elsewhere. SIMD tables are only handed out after the CPU has been checked for
//! their features, which is what makes their `unsafe` calls sound.

use std::sync::OnceLock;

use crate::convert::rows;
use crate::{KernelError, QuantType, scalar};

/// Values quantized per call of a kernel (a multiple of every block size); a kernel that
/// meets a NaN or an infinity stops, and only then is its step searched for the culprit.
const STEP: usize = 8192;

/// A set of kernels.
pub struct Backend {
    /// `scalar`, `avx2` or `avx512`.
    pub name: &'static str,
    /// Quantizes whole blocks; returns false (output unspecified) on a NaN or infinity.
    pub(crate) quantize: fn(QuantType, &[f32], &mut [u8]) -> bool,
    pub(crate) dequantize: fn(QuantType, &[u8], &mut [f32]),
    pub(crate) bf16_to_f32: fn(&[u16], &mut [f32]),
    pub(crate) f16_to_f32: fn(&[u16], &mut [f32]),
    pub(crate) f32_to_bf16: fn(&[f32], &mut [u16]),
    pub(crate) f32_to_f16: fn(&[f32], &mut [u16]),
    pub(crate) openai_mxfp4_to_f32: fn(&[u8], &[u8], &mut [f32]),
    /// The i-quant and ternary kernels.
    pub(crate) iq: &'static crate::iquants::Kernels,
}

/// The reference backend.
pub static SCALAR: Backend = Backend {
    name: "scalar",
    quantize: scalar::quantize_checked,
    dequantize: scalar::dequantize,
    bf16_to_f32: rows::bf16_to_f32,
    f16_to_f32: rows::f16_to_f32,
    f32_to_bf16: rows::f32_to_bf16,
    f32_to_f16: rows::f32_to_f16,
    openai_mxfp4_to_f32: crate::openai::dequantize,
    iq: &crate::iquants::SCALAR,
};

/// Every backend this CPU can run, scalar first.
pub fn available() -> Vec<&'static Backend> {
    let mut out = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    out.extend(crate::x86::available());
    out
}

/// The backend in use: `MOEQ_KERNELS=scalar|avx2|avx512` if set (falling back to the best
/// available when that one cannot run here), else the fastest available. A SIMD backend is
/// first checked against the scalar reference on a probe set (ties, ±0, subnormals, huge
/// values, every half-precision value); one that disagrees is never used.
pub fn active() -> &'static Backend {
    static ACTIVE: OnceLock<&'static Backend> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        let mut all = available();
        if let Some(name) = std::env::var("MOEQ_KERNELS").ok().filter(|n| !n.is_empty()) {
            match all.iter().position(|b| b.name == name) {
                Some(i) => all.truncate(i + 1),
                None => eprintln!("moeq: MOEQ_KERNELS={name} is not available on this CPU; using the best available"),
            }
        }
        while let Some(&b) = all.last() {
            if agrees_with_scalar(b) {
                return b;
            }
            eprintln!("moeq: the {} kernels disagree with the reference on this CPU; not using them", b.name);
            all.pop();
        }
        &SCALAR
    })
}

/// Whether `b` produces the scalar reference's bytes on a probe set.
pub fn agrees_with_scalar(b: &Backend) -> bool {
    if std::ptr::eq(b, &SCALAR) {
        return true;
    }
    let probe = probe_values();
    // The i-quants are left out: their search is slow for a start-up check (the tests compare
    // them on every backend).
    let quantize_agrees = QuantType::ALL.into_iter().filter(|t| t.can_quantize() && !t.is_iquant()).all(|ty| {
        let mut want = vec![0u8; ty.bytes_for(probe.len())];
        let mut got = want.clone();
        SCALAR.quantize(ty, &probe, &mut want).is_ok() && b.quantize(ty, &probe, &mut got).is_ok() && want == got
    });
    let halves: Vec<u16> = (0..=u16::MAX).collect();
    let (mut want, mut got) = (vec![0f32; halves.len()], vec![0f32; halves.len()]);
    let mut convert_agrees = true;
    for f in [
        |k: &Backend, s: &[u16], d: &mut [f32]| k.bf16_to_f32(s, d),
        |k: &Backend, s: &[u16], d: &mut [f32]| k.f16_to_f32(s, d),
    ] {
        f(&SCALAR, &halves, &mut want);
        f(b, &halves, &mut got);
        convert_agrees &= want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
    }
    let (mut want16, mut got16) = (vec![0u16; probe.len()], vec![0u16; probe.len()]);
    for f in [
        |k: &Backend, s: &[f32], d: &mut [u16]| k.f32_to_bf16(s, d),
        |k: &Backend, s: &[f32], d: &mut [u16]| k.f32_to_f16(s, d),
    ] {
        f(&SCALAR, &probe, &mut want16);
        f(b, &probe, &mut got16);
        convert_agrees &= want16 == got16;
    }
    quantize_agrees && convert_agrees
}

/// 4096 values in blocks that exercise rounding ties, signed zeros, subnormals, huge values,
/// outliers and ordinary weights.
fn probe_values() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..4096)
        .map(|i| {
            let r = next();
            let u = (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            match (i / 256) % 8 {
                0 => u,
                1 => (i % 32) as f32 * 0.5 - 8.0,
                2 => {
                    if i % 2 == 0 {
                        0.0
                    } else {
                        -0.0
                    }
                }
                3 => f32::from_bits((r as u32) & 0x807f_ffff),
                4 => u * 3.0e38,
                5 => {
                    if i % 64 == 0 {
                        1e4
                    } else {
                        u * 1e-3
                    }
                }
                6 => [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0][i % 8] * if r & 1 == 0 { 1.0 } else { -1.0 },
                _ => f32::from_bits(0x437f_ffff - (i as u32 % 4)),
            }
        })
        .collect()
}

/// The index and value of the first NaN or infinity in `x`, if any.
pub fn first_non_finite(x: &[f32]) -> Option<(usize, f32)> {
    // A branch-free pass the compiler vectorizes; the position is only searched on failure.
    let all_finite = x.chunks(64).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()));
    if all_finite { None } else { x.iter().position(|v| !v.is_finite()).map(|i| (i, x[i])) }
}

impl Backend {
    /// Quantizes `src` (a whole number of blocks) into `dst` (exactly its byte size).
    /// Refuses NaN and infinities.
    pub fn quantize(&self, ty: QuantType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
        if !ty.can_quantize() {
            return Err(KernelError::Unsupported(ty.name()));
        }
        check_lengths(ty, src.len(), dst.len())?;
        if ty.is_iquant() {
            return crate::iquants::quantize(self.iq, ty, src, dst, None);
        }
        let step_bytes = ty.bytes_for(STEP);
        for (i, (x, y)) in src.chunks(STEP).zip(dst.chunks_mut(step_bytes)).enumerate() {
            if !(self.quantize)(ty, x, y) {
                let (at, value) = first_non_finite(x).unwrap_or((0, f32::NAN));
                return Err(KernelError::NonFinite { index: i * STEP + at, value });
            }
        }
        Ok(())
    }

    /// Quantizes rows of `n_per_row` values with importance weights (an imatrix row: one
    /// weight per column), as ggml does when given `quant_weights`. Q8_0, MXFP4, TQ1_0 and
    /// TQ2_0 ignore the weights, as in ggml. The scalar reference serves every backend except
    /// for the i-quants.
    pub fn quantize_weighted(
        &self,
        ty: QuantType,
        src: &[f32],
        dst: &mut [u8],
        n_per_row: usize,
        weights: &[f32],
    ) -> Result<(), KernelError> {
        if !ty.can_quantize() {
            return Err(KernelError::Unsupported(ty.name()));
        }
        check_lengths(ty, src.len(), dst.len())?;
        if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) || !n_per_row.is_multiple_of(ty.block_size()) {
            let what = format!("{} values do not form rows of {n_per_row} whole blocks", src.len());
            return Err(KernelError::Length { ty: ty.name(), what });
        }
        if weights.len() != n_per_row {
            let what = format!("{} weights for rows of {n_per_row} values", weights.len());
            return Err(KernelError::Length { ty: ty.name(), what });
        }
        if let Some((index, value)) = first_non_finite(src) {
            return Err(KernelError::NonFinite { index, value });
        }
        if let Some((index, value)) =
            first_non_finite(weights).or(weights.iter().position(|w| *w < 0.0).map(|i| (i, weights[i])))
        {
            return Err(KernelError::BadWeight { index, value });
        }
        if ty.is_iquant() {
            return crate::iquants::quantize(self.iq, ty, src, dst, Some(weights));
        }
        scalar::weighted::quantize_rows(ty, src, dst, n_per_row, weights);
        Ok(())
    }

    /// Dequantizes `src` (whole blocks) into `dst` (exactly its value count).
    pub fn dequantize(&self, ty: QuantType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        if !src.len().is_multiple_of(ty.block_bytes()) {
            let what = format!("{} bytes is not a whole number of {}-byte blocks", src.len(), ty.block_bytes());
            return Err(KernelError::Length { ty: ty.name(), what });
        }
        check_lengths(ty, dst.len(), src.len())?;
        if ty.is_iquant() {
            (self.iq.dequantize)(ty, src, dst);
            return Ok(());
        }
        (self.dequantize)(ty, src, dst);
        Ok(())
    }

    /// OpenAI-layout MXFP4 (16 code bytes and one scale byte per 32 values) → f32, as
    /// [`crate::openai::dequantize`]. Panics if the lengths disagree.
    pub fn openai_mxfp4_dequantize(&self, blocks: &[u8], scales: &[u8], dst: &mut [f32]) {
        assert!(blocks.len() == 16 * scales.len() && dst.len() == 32 * scales.len(), "openai_mxfp4: length mismatch");
        (self.openai_mxfp4_to_f32)(blocks, scales, dst)
    }

    /// bf16 bits → f32. Panics if the lengths differ.
    pub fn bf16_to_f32(&self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
        (self.bf16_to_f32)(src, dst)
    }

    /// f16 bits → f32. Panics if the lengths differ.
    pub fn f16_to_f32(&self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
        (self.f16_to_f32)(src, dst)
    }

    /// f32 → bf16 bits (round to nearest even). Panics if the lengths differ.
    pub fn f32_to_bf16(&self, src: &[f32], dst: &mut [u16]) {
        assert_eq!(src.len(), dst.len(), "f32_to_bf16: length mismatch");
        (self.f32_to_bf16)(src, dst)
    }

    /// f32 → f16 bits (round to nearest even). Panics if the lengths differ.
    pub fn f32_to_f16(&self, src: &[f32], dst: &mut [u16]) {
        assert_eq!(src.len(), dst.len(), "f32_to_f16: length mismatch");
        (self.f32_to_f16)(src, dst)
    }
}

fn check_lengths(ty: QuantType, values: usize, bytes: usize) -> Result<(), KernelError> {
    if !values.is_multiple_of(ty.block_size()) {
        let what = format!("{values} values is not a whole number of {}-value blocks", ty.block_size());
        return Err(KernelError::Length { ty: ty.name(), what });
    }
    if ty.bytes_for(values) != bytes {
        let what = format!("{values} values take {} bytes, the buffer has {bytes}", ty.bytes_for(values));
        return Err(KernelError::Length { ty: ty.name(), what });
    }
    Ok(())
}
