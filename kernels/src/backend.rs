//! Kernel backends (scalar, AVX2, AVX-512), chosen once at run time.
//!
//! A [`Backend`] is a table: for each type and operation one kernel, and one per conversion.
//! The scalar table is always there and defines the results. A SIMD table starts from the
//! table below it (AVX2 from scalar, AVX-512 from AVX2) and replaces the entries it has a
//! byte-identical faster kernel for; each entry names the backend whose code it is
//! ([`Kernel::origin`], shown by `moeq bench kernels`). So an AVX-512 machine runs AVX-512
//! code only where it was measured faster than AVX2, AVX2 code elsewhere, and scalar code
//! only where no SIMD kernel exists. SIMD tables are only handed out after the CPU has been
//! checked for their features, which is what makes their `unsafe` calls sound.

use std::sync::OnceLock;

use crate::convert::rows;
use crate::{KernelError, QuantType, scalar};

/// Values quantized per call of a kernel (a multiple of every block size); a kernel that
/// meets a NaN or an infinity stops, and only then is its step searched for the culprit.
const STEP: usize = 8192;

/// Why a quantizer stopped; its output is then unspecified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The input holds a NaN or an infinity (the caller finds which).
    NonFinite,
    /// ggml's quantizer aborts on this block (its index in the quantizer's input): an
    /// i-quant super-block whose values are so large that their squares overflow.
    Degenerate(usize),
    /// The type needs importance weights ([`QuantType::needs_importance`]) and got none.
    NeedsImportance,
}

/// Quantizes whole blocks of a type without importance weights.
pub(crate) type QuantizeFn = fn(QuantType, &[f32], &mut [u8]) -> Result<(), Refusal>;
/// Quantizes rows (`n_per_row` values each, finite) with one importance weight per column;
/// only [`Refusal::Degenerate`] can come back.
pub(crate) type QuantizeRowsFn = fn(QuantType, &[f32], &mut [u8], usize, &[f32]) -> Result<(), Refusal>;
/// Dequantizes whole blocks of a type.
pub(crate) type DequantizeFn = fn(QuantType, &[u8], &mut [f32]);
/// A 16-bit float format → f32.
pub(crate) type WidenFn = fn(&[u16], &mut [f32]);
/// f32 → a 16-bit float format.
pub(crate) type NarrowFn = fn(&[f32], &mut [u16]);
/// OpenAI-layout MXFP4 (codes, scales) → f32.
pub(crate) type OpenaiFn = fn(&[u8], &[u8], &mut [f32]);

/// One entry of a backend's table: a kernel and the backend whose code it is.
#[derive(Clone, Copy)]
pub struct Kernel<F> {
    /// `scalar`, `avx2` or `avx512`: whose code runs (a table inherits the entries of the
    /// one below it where it has no faster kernel of its own).
    pub origin: &'static str,
    pub(crate) run: F,
}

impl<F> Kernel<F> {
    pub(crate) const fn new(origin: &'static str, run: F) -> Self {
        Kernel { origin, run }
    }
}

/// The kernels a backend runs for one type.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    /// Quantization of whole blocks without importance weights; `None` for types moeq
    /// cannot quantize to and for those that [need weights](QuantType::needs_importance)
    /// (IQ2_XXS, IQ2_XS, IQ1_S: ggml refuses them without).
    pub quantize: Option<Kernel<QuantizeFn>>,
    /// Quantization of rows with importance weights; `None` where the weights cannot change
    /// the bytes (ggml ignores them for Q8_0, MXFP4, TQ1_0 and TQ2_0: `quantize` serves) or
    /// where moeq cannot quantize.
    pub quantize_weighted: Option<Kernel<QuantizeRowsFn>>,
    /// Dequantization of whole blocks.
    pub dequantize: Kernel<DequantizeFn>,
}

impl TypeKernels {
    /// These kernels with quantization by `run`, the code of backend `origin`.
    pub(crate) fn quantize_with(mut self, origin: &'static str, run: QuantizeFn) -> Self {
        self.quantize = Some(Kernel::new(origin, run));
        self
    }

    /// These kernels with weighted quantization by `run`, the code of backend `origin`.
    pub(crate) fn weighted_with(mut self, origin: &'static str, run: QuantizeRowsFn) -> Self {
        self.quantize_weighted = Some(Kernel::new(origin, run));
        self
    }

    /// These kernels with dequantization by `run`, the code of backend `origin`.
    pub(crate) fn dequantize_with(mut self, origin: &'static str, run: DequantizeFn) -> Self {
        self.dequantize = Kernel::new(origin, run);
        self
    }
}

/// A backend's type-independent kernels.
#[derive(Clone, Copy)]
pub struct Conversions {
    /// bf16 → f32.
    pub bf16_to_f32: Kernel<WidenFn>,
    /// f16 → f32.
    pub f16_to_f32: Kernel<WidenFn>,
    /// f32 → bf16.
    pub f32_to_bf16: Kernel<NarrowFn>,
    /// f32 → f16.
    pub f32_to_f16: Kernel<NarrowFn>,
    /// OpenAI-layout MXFP4 → f32.
    pub openai_mxfp4_to_f32: Kernel<OpenaiFn>,
}

/// A set of kernels.
pub struct Backend {
    /// `scalar`, `avx2` or `avx512`.
    pub name: &'static str,
    pub(crate) kernels: fn(QuantType) -> TypeKernels,
    /// The conversion kernels.
    pub conversions: Conversions,
}

/// Whether ggml ignores importance weights for this type (its weighted quantizer is the
/// plain one).
fn ignores_weights(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::MXFP4 | QuantType::TQ1_0 | QuantType::TQ2_0)
}

/// The scalar reference's kernels for `ty`: the base every SIMD table starts from.
pub(crate) fn scalar_kernels(ty: QuantType) -> TypeKernels {
    let quantize: Option<Kernel<QuantizeFn>> =
        (ty.can_quantize() && !ty.needs_importance()).then_some(Kernel::new("scalar", scalar::quantize_checked));
    let weighted: Option<Kernel<QuantizeRowsFn>> =
        (ty.can_quantize() && !ignores_weights(ty)).then_some(Kernel::new("scalar", scalar::weighted::quantize_rows));
    TypeKernels { quantize, quantize_weighted: weighted, dequantize: Kernel::new("scalar", scalar::dequantize) }
}

/// The reference backend.
pub static SCALAR: Backend = Backend {
    name: "scalar",
    kernels: scalar_kernels,
    conversions: Conversions {
        bf16_to_f32: Kernel::new("scalar", rows::bf16_to_f32),
        f16_to_f32: Kernel::new("scalar", rows::f16_to_f32),
        f32_to_bf16: Kernel::new("scalar", rows::f32_to_bf16),
        f32_to_f16: Kernel::new("scalar", rows::f32_to_f16),
        openai_mxfp4_to_f32: Kernel::new("scalar", crate::openai::dequantize),
    },
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
/// values, every half-precision value), entry by entry; one that disagrees anywhere is never
/// used.
pub fn active() -> &'static Backend {
    // A line on stderr; a closed stderr is no reason to panic (eprintln! would).
    fn say(line: std::fmt::Arguments) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    static ACTIVE: OnceLock<&'static Backend> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        let mut all = available();
        if let Some(name) = std::env::var("MOEQ_KERNELS").ok().filter(|n| !n.is_empty()) {
            match all.iter().position(|b| b.name == name) {
                Some(i) => all.truncate(i + 1),
                None if ["scalar", "avx2", "avx512"].contains(&name.as_str()) => {
                    say(format_args!("moeq: MOEQ_KERNELS={name} is not available on this CPU; using the best available"))
                }
                None => say(format_args!(
                    "moeq: MOEQ_KERNELS={name:?} is not a kernel backend (scalar, avx2 or avx512); using the best available"
                )),
            }
        }
        while let Some(&b) = all.last() {
            if agrees_with_scalar(b) {
                return b;
            }
            say(format_args!("moeq: the {} kernels disagree with the reference on this CPU; not using them", b.name));
            all.pop();
        }
        &SCALAR
    })
}

/// Whether every entry of `b`'s table that is not the scalar reference's own produces the
/// reference's bytes on a probe set: quantization with and without importance weights and
/// dequantization of every type, and every conversion.
pub fn agrees_with_scalar(b: &Backend) -> bool {
    disagreement(b).is_none()
}

/// The first entry of `b`'s table that disagrees with the scalar reference on the probe set,
/// as `"TYPE operation"`.
pub fn disagreement(b: &Backend) -> Option<String> {
    if std::ptr::eq(b, &SCALAR) {
        return None;
    }
    let (all_probe, ordinary_probe) = (probe_values(), ordinary_probe_values());
    let weights = probe_weights();
    let n_per_row = weights.len();
    let same_f32 =
        |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()));
    for ty in QuantType::ALL {
        let (mine, reference) = (b.kernels(ty), SCALAR.kernels(ty));
        // The i-quants' searches are slow and abort (as ggml's do) on values whose squares
        // overflow: they get a few super-blocks of ordinary values.
        let probe = if scalar::iquants::is_iquant(ty) { &ordinary_probe } else { &all_probe };
        let mut want = vec![0u8; ty.bytes_for(probe.len())];
        let mut got = want.clone();
        if let (Some(k), Some(r)) = (mine.quantize, reference.quantize)
            && k.origin != "scalar"
        {
            let (r_result, k_result) = ((r.run)(ty, probe, &mut want), (k.run)(ty, probe, &mut got));
            if r_result.is_err() || k_result != r_result || want != got {
                return Some(format!("{} quantize", ty.name()));
            }
        }
        if let (Some(k), Some(r)) = (mine.quantize_weighted, reference.quantize_weighted)
            && k.origin != "scalar"
        {
            let r_result = (r.run)(ty, probe, &mut want, n_per_row, &weights);
            let k_result = (k.run)(ty, probe, &mut got, n_per_row, &weights);
            if r_result.is_err() || k_result != r_result || want != got {
                return Some(format!("{} quantize with weights", ty.name()));
            }
        }
        if mine.dequantize.origin != "scalar" {
            // The reference's codes of the probe, then arbitrary bytes (any scale bits).
            let codes = match (reference.quantize, reference.quantize_weighted) {
                (Some(r), _) => (r.run)(ty, probe, &mut want),
                (None, Some(r)) => (r.run)(ty, probe, &mut want, n_per_row, &weights),
                (None, None) => Ok(()),
            };
            if codes.is_err() {
                return Some(format!("{} quantize (scalar reference)", ty.name()));
            }
            let mut noise = want.clone();
            noise.iter_mut().enumerate().for_each(|(i, v)| *v = (i.wrapping_mul(0x9E37_79B1) >> 7) as u8);
            let (mut want_f, mut got_f) = (vec![0f32; probe.len()], vec![0f32; probe.len()]);
            for bytes in [&want, &noise] {
                (reference.dequantize.run)(ty, bytes, &mut want_f);
                (mine.dequantize.run)(ty, bytes, &mut got_f);
                if !same_f32(&want_f, &got_f) {
                    return Some(format!("{} dequantize", ty.name()));
                }
            }
        }
    }
    let (c, r) = (&b.conversions, &SCALAR.conversions);
    let halves: Vec<u16> = (0..=u16::MAX).collect();
    let (mut want, mut got) = (vec![0f32; halves.len()], vec![0f32; halves.len()]);
    for (name, k, r) in [("bf16 to f32", c.bf16_to_f32, r.bf16_to_f32), ("f16 to f32", c.f16_to_f32, r.f16_to_f32)] {
        if k.origin != "scalar" {
            (r.run)(&halves, &mut want);
            (k.run)(&halves, &mut got);
            if !same_f32(&want, &got) {
                return Some(name.into());
            }
        }
    }
    let probe = all_probe;
    let (mut want16, mut got16) = (vec![0u16; probe.len()], vec![0u16; probe.len()]);
    for (name, k, r) in [("f32 to bf16", c.f32_to_bf16, r.f32_to_bf16), ("f32 to f16", c.f32_to_f16, r.f32_to_f16)] {
        if k.origin != "scalar" {
            (r.run)(&probe, &mut want16);
            (k.run)(&probe, &mut got16);
            if want16 != got16 {
                return Some(name.into());
            }
        }
    }
    if c.openai_mxfp4_to_f32.origin != "scalar" {
        let bytes: Vec<u8> = (0..17 * 256u32).map(|i| (i.wrapping_mul(0x9E37_79B1) >> 11) as u8).collect();
        let (blocks, scales) = bytes.split_at(16 * 256);
        let (mut want, mut got) = (vec![0f32; 32 * 256], vec![0f32; 32 * 256]);
        (r.openai_mxfp4_to_f32.run)(blocks, scales, &mut want);
        (c.openai_mxfp4_to_f32.run)(blocks, scales, &mut got);
        if !same_f32(&want, &got) {
            return Some("OpenAI MXFP4 to f32".into());
        }
    }
    None
}

/// Importance weights for rows of 1024 probe values (whole groups of super-blocks for the
/// SIMD kernels that batch them): ordinary, zero, tiny and large, and repeated runs.
fn probe_weights() -> Vec<f32> {
    (0..1024)
        .map(|i| match i % 11 {
            0 => 0.0,
            1 => 1e-20,
            2 => 1e6,
            3 | 4 => 1.0,
            _ => ((i * 7919) % 1000) as f32 / 100.0,
        })
        .collect()
}

/// 1024 ordinary values (one row of [`probe_weights`], four super-blocks) for the i-quants:
/// uniform noise, a bell-shaped block with outliers, a block of small integers and halves
/// with all-zero groups (ties and empty groups), and a block of small values with one
/// outlier per 64.
fn ordinary_probe_values() -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..1024)
        .map(|i| match i / 256 {
            0 => next(),
            1 => {
                let v = next() + next() + next() + next();
                if i % 97 == 0 { v * 8.0 } else { v }
            }
            2 => {
                if (i / 32) % 3 == 0 {
                    0.0
                } else {
                    ((i * 7) % 9) as f32 * 0.5 - 2.0
                }
            }
            _ => {
                if i % 64 == 5 {
                    0.9
                } else {
                    next() * 1e-3
                }
            }
        })
        .collect()
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
    if all_finite(x) { None } else { x.iter().position(|v| !v.is_finite()).map(|i| (i, x[i])) }
}

/// Whether every value of `x` is finite: a branch-free pass the compiler vectorizes, with
/// 256-bit vectors where the CPU has AVX2 (`cargo bench -p moeq-kernels -- checks`, 4 MiB: 49
/// GiB/s, against 23 GiB/s for the former bool fold built for baseline x86-64). Every
/// quantizer's input passes it.
fn all_finite(x: &[f32]) -> bool {
    // A value is NaN or infinite exactly when its bits without the sign are at least
    // 0x7f80_0000 (all exponent bits set): a running maximum of those bits, one AND and one
    // unsigned max per 8 values.
    #[inline(always)]
    fn pass(x: &[f32]) -> bool {
        x.chunks(1024).all(|c| c.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)) < 0x7f80_0000)
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn pass_avx2(x: &[f32]) -> bool {
            pass(x)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected; the function only reads `x`.
            return unsafe { pass_avx2(x) };
        }
    }
    pass(x)
}

impl Backend {
    /// The kernels this backend runs for `ty`, each naming the backend whose code it is.
    pub fn kernels(&self, ty: QuantType) -> TypeKernels {
        (self.kernels)(ty)
    }

    /// Quantizes `src` (a whole number of blocks) into `dst` (exactly its byte size).
    /// Refuses NaN and infinities.
    pub fn quantize(&self, ty: QuantType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
        let Some(k) = self.kernels(ty).quantize else {
            let name = ty.name();
            return Err(if ty.needs_importance() {
                KernelError::NeedsImportance(name)
            } else {
                KernelError::Unsupported(name)
            });
        };
        check_lengths(ty, src.len(), dst.len())?;
        let step_bytes = ty.bytes_for(STEP);
        for (i, (x, y)) in src.chunks(STEP).zip(dst.chunks_mut(step_bytes)).enumerate() {
            (k.run)(ty, x, y).map_err(|r| refused(ty, r, x, i * STEP))?;
        }
        Ok(())
    }

    /// Quantizes rows of `n_per_row` values with importance weights (an imatrix row: one
    /// weight per column), as ggml's `ggml_quantize_chunk` does when given `quant_weights`.
    /// Q8_0, MXFP4, TQ1_0 and TQ2_0 ignore the weights, as in ggml. Refuses NaN and
    /// infinities, and an i-quant super-block on which ggml's quantizer aborts (the rows before
    /// the refused piece may already be written, as with [`Backend::quantize`]).
    pub fn quantize_weighted(
        &self,
        ty: QuantType,
        src: &[f32],
        dst: &mut [u8],
        n_per_row: usize,
        weights: &[f32],
    ) -> Result<(), KernelError> {
        let kernels = self.kernels(ty);
        if kernels.quantize.is_none() && kernels.quantize_weighted.is_none() {
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
        if let Some((index, value)) =
            first_non_finite(weights).or(weights.iter().position(|w| *w < 0.0).map(|i| (i, weights[i])))
        {
            // A value that is not finite is named first.
            return Err(match first_non_finite(src) {
                Some((index, value)) => KernelError::NonFinite { index, value },
                None => KernelError::BadWeight { index, value },
            });
        }
        let Some(k) = kernels.quantize_weighted else {
            return self.quantize(ty, src, dst);
        };
        // Whole rows at a time, at least STEP values: each piece is checked for NaN and
        // infinities just before it is quantized, while it is in cache (the first one met is
        // named, as a check of everything first would name it; pieces before it are written).
        let rows = (STEP / n_per_row).max(1);
        let row_bytes = ty.bytes_for(n_per_row);
        for (i, (x, y)) in src.chunks(rows * n_per_row).zip(dst.chunks_mut(rows * row_bytes)).enumerate() {
            let offset = i * rows * n_per_row;
            if let Some((index, value)) = first_non_finite(x) {
                return Err(KernelError::NonFinite { index: offset + index, value });
            }
            (k.run)(ty, x, y, n_per_row, weights).map_err(|r| refused(ty, r, x, offset))?;
        }
        Ok(())
    }

    /// Dequantizes `src` (whole blocks) into `dst` (exactly its value count).
    pub fn dequantize(&self, ty: QuantType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
        if !src.len().is_multiple_of(ty.block_bytes()) {
            let what = format!("{} bytes is not a whole number of {}-byte blocks", src.len(), ty.block_bytes());
            return Err(KernelError::Length { ty: ty.name(), what });
        }
        check_lengths(ty, dst.len(), src.len())?;
        (self.kernels(ty).dequantize.run)(ty, src, dst);
        Ok(())
    }

    /// OpenAI-layout MXFP4 (16 code bytes and one scale byte per 32 values) → f32, as
    /// [`crate::openai::dequantize`]. Panics if the lengths disagree.
    pub fn openai_mxfp4_dequantize(&self, blocks: &[u8], scales: &[u8], dst: &mut [f32]) {
        assert!(blocks.len() == 16 * scales.len() && dst.len() == 32 * scales.len(), "openai_mxfp4: length mismatch");
        (self.conversions.openai_mxfp4_to_f32.run)(blocks, scales, dst)
    }

    /// bf16 bits → f32. Panics if the lengths differ.
    pub fn bf16_to_f32(&self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
        (self.conversions.bf16_to_f32.run)(src, dst)
    }

    /// f16 bits → f32. Panics if the lengths differ.
    pub fn f16_to_f32(&self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
        (self.conversions.f16_to_f32.run)(src, dst)
    }

    /// f32 → bf16 bits (round to nearest even). Panics if the lengths differ.
    pub fn f32_to_bf16(&self, src: &[f32], dst: &mut [u16]) {
        assert_eq!(src.len(), dst.len(), "f32_to_bf16: length mismatch");
        (self.conversions.f32_to_bf16.run)(src, dst)
    }

    /// f32 → f16 bits (round to nearest even). Panics if the lengths differ.
    pub fn f32_to_f16(&self, src: &[f32], dst: &mut [u16]) {
        assert_eq!(src.len(), dst.len(), "f32_to_f16: length mismatch");
        (self.conversions.f32_to_f16.run)(src, dst)
    }
}

/// The error for a kernel's refusal of `x`, which starts at value `offset` of the input.
fn refused(ty: QuantType, r: Refusal, x: &[f32], offset: usize) -> KernelError {
    match r {
        Refusal::NonFinite => {
            let (at, value) = first_non_finite(x).unwrap_or((0, f32::NAN));
            KernelError::NonFinite { index: offset + at, value }
        }
        Refusal::Degenerate(block) => {
            KernelError::Degenerate { ty: ty.name(), block: offset / ty.block_size() + block }
        }
        Refusal::NeedsImportance => KernelError::NeedsImportance(ty.name()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_non_finite_finds_every_nan_and_infinity_and_nothing_else() {
        // Finite edge values: the largest, the smallest subnormal, negative zero.
        let finite = [f32::MAX, f32::MIN, f32::from_bits(1), -f32::from_bits(1), -0.0, 0.0, 1.0, f32::MIN_POSITIVE];
        let x: Vec<f32> = (0..5000).map(|i| finite[i % finite.len()]).collect();
        assert_eq!(first_non_finite(&x), None);
        assert_eq!(first_non_finite(&[]), None);
        let bad = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffff_ffff),
        ];
        // Every position class: the first value, inside and at the edges of a 1024-value pass
        // chunk, the vector tail, the last value.
        for at in [0, 7, 8, 63, 64, 1023, 1024, 1025, 2047, 4095, 4999] {
            for b in bad {
                let mut y = x.clone();
                y[at] = b;
                if at + 10 < y.len() {
                    y[at + 10] = f32::NAN;
                }
                let (i, v) = first_non_finite(&y).unwrap_or_else(|| panic!("{b} at {at} not found"));
                assert_eq!((i, v.to_bits()), (at, b.to_bits()), "{b} at {at}");
                assert_eq!(first_non_finite(&y[..at.max(1)]).is_some(), at == 0, "{b} at {at}: before it");
            }
        }
    }

    fn zeros(_: QuantType, _: &[u8], y: &mut [f32]) {
        y.fill(0.0);
    }

    fn shifted_weights(ty: QuantType, x: &[f32], y: &mut [u8], n: usize, w: &[f32]) -> Result<(), Refusal> {
        let w: Vec<f32> = w.iter().map(|v| v * 2.0 + 1.0).collect();
        scalar::weighted::quantize_rows(ty, x, y, n, &w)
    }

    /// The reference's bytes with one bit flipped in the last super-block.
    fn flipped_iq3_s(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
        scalar::quantize(ty, x, y)?;
        if let Some(last) = y.last_mut() {
            *last ^= 1;
        }
        Ok(())
    }

    fn flipped_iq1_s_weights(ty: QuantType, x: &[f32], y: &mut [u8], n: usize, w: &[f32]) -> Result<(), Refusal> {
        scalar::weighted::quantize_rows(ty, x, y, n, w)?;
        y[y.len() / 2] ^= 4;
        Ok(())
    }

    fn broken_q4_k(ty: QuantType) -> TypeKernels {
        let k = scalar_kernels(ty);
        if ty == QuantType::Q4_K { k.dequantize_with("test", zeros) } else { k }
    }

    fn broken_q2_k_weights(ty: QuantType) -> TypeKernels {
        let k = scalar_kernels(ty);
        if ty == QuantType::Q2_K { k.weighted_with("test", shifted_weights) } else { k }
    }

    fn broken_iquants(ty: QuantType) -> TypeKernels {
        let k = scalar_kernels(ty);
        match ty {
            QuantType::IQ3_S => k.quantize_with("test", flipped_iq3_s),
            _ => k,
        }
    }

    fn broken_iquant_weights(ty: QuantType) -> TypeKernels {
        let k = scalar_kernels(ty);
        match ty {
            QuantType::IQ1_S => k.weighted_with("test", flipped_iq1_s_weights),
            _ => k,
        }
    }

    static BROKEN_IQUANT: Backend = Backend { name: "test", kernels: broken_iquants, conversions: SCALAR.conversions };
    static BROKEN_IQUANT_WEIGHTS: Backend =
        Backend { name: "test", kernels: broken_iquant_weights, conversions: SCALAR.conversions };
    static BROKEN_DEQUANTIZE: Backend = Backend { name: "test", kernels: broken_q4_k, conversions: SCALAR.conversions };
    static BROKEN_WEIGHTS: Backend =
        Backend { name: "test", kernels: broken_q2_k_weights, conversions: SCALAR.conversions };
    static BROKEN_CONVERSION: Backend = Backend {
        name: "test",
        kernels: scalar_kernels,
        conversions: Conversions {
            f16_to_f32: Kernel::new("test", |s: &[u16], d: &mut [f32]| {
                rows::f16_to_f32(s, d);
                d[12345] = 0.5;
            }),
            ..SCALAR.conversions
        },
    };

    /// The start-up check looks at every entry that is not the reference's own.
    #[test]
    fn the_start_up_check_finds_a_wrong_entry() {
        assert_eq!(disagreement(&BROKEN_DEQUANTIZE).as_deref(), Some("Q4_K dequantize"));
        assert_eq!(disagreement(&BROKEN_WEIGHTS).as_deref(), Some("Q2_K quantize with weights"));
        assert_eq!(disagreement(&BROKEN_CONVERSION).as_deref(), Some("f16 to f32"));
        assert_eq!(disagreement(&BROKEN_IQUANT).as_deref(), Some("IQ3_S quantize"));
        assert_eq!(disagreement(&BROKEN_IQUANT_WEIGHTS).as_deref(), Some("IQ1_S quantize with weights"));
        for b in available() {
            assert_eq!(disagreement(b), None, "{}", b.name);
        }
    }

    /// A table never falls back to scalar code where a table below it has SIMD code, and
    /// names only itself or a table below it.
    #[test]
    fn tables_inherit_the_best_entry_below() {
        let all = available();
        for (i, b) in all.iter().enumerate() {
            let names: Vec<&str> = all[..=i].iter().map(|b| b.name).collect();
            for ty in QuantType::ALL {
                let k = b.kernels(ty);
                let origins =
                    [k.quantize.map(|k| k.origin), k.quantize_weighted.map(|k| k.origin), Some(k.dequantize.origin)];
                for below in &all[..i] {
                    let kb = below.kernels(ty);
                    let below_origins = [
                        kb.quantize.map(|k| k.origin),
                        kb.quantize_weighted.map(|k| k.origin),
                        Some(kb.dequantize.origin),
                    ];
                    for (o, ob) in origins.iter().zip(&below_origins) {
                        assert!(
                            !(ob.is_some_and(|o| o != "scalar") && *o == Some("scalar")),
                            "{} {}",
                            b.name,
                            ty.name()
                        );
                    }
                }
                assert!(origins.iter().flatten().all(|o| names.contains(o)), "{} {}", b.name, ty.name());
            }
        }
    }
}
