//! x86-64 SIMD backends, detected at run time.

/// A safe table entry: a closure calling one of the enclosing backend module's
/// `#[target_feature]` kernels. The table, and every table that inherits the entry (AVX-512
/// inherits AVX2's), is only handed out after `available` detected the module's CPU
/// features, which is what makes the call sound.
macro_rules! simd {
    (|$($arg:pat_param),*| $call:expr) => {
        |$($arg),*| {
            // SAFETY: only reachable through this module's backend table and the tables that
            // inherit from it, which `x86::available` hands out only after detecting this
            // module's CPU features.
            unsafe { $call }
        }
    };
}

mod avx2;
mod avx512;
mod iq1_avx512;
mod iq4_avx2;
mod iquants_avx2;
mod iquants_avx512;
mod kquants_avx2;
mod q2k_q3k_avx2;
mod q3k_avx512;
mod ternary_avx2;

use std::sync::OnceLock;

use crate::QuantType;
use crate::backend::{Backend, Refusal};
use crate::scalar::mxfp4::shared_exponent;

static AVX2: Backend = Backend { name: "avx2", kernels: avx2::kernels, conversions: avx2::CONVERSIONS };

static AVX512: Backend = Backend { name: "avx512", kernels: avx512::kernels, conversions: avx512::CONVERSIONS };

/// The SIMD backends this CPU supports, slowest first. The AVX-512 table runs AVX2 kernels
/// where it has none of its own, so it needs AVX2's features as well as its own.
pub fn available() -> Vec<&'static Backend> {
    let mut out = Vec::new();
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c");
    if avx2 {
        out.push(&AVX2);
    }
    if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        out.push(&AVX512);
    }
    out
}

/// Runs `kernel` on `x` if every value is finite: the NaN/infinity check the table's
/// quantizers owe (output untouched otherwise).
fn finite(x: &[f32], y: &mut [u8], kernel: impl FnOnce(&[f32], &mut [u8])) -> Result<(), Refusal> {
    if crate::backend::first_non_finite(x).is_some() {
        return Err(Refusal::NonFinite);
    }
    kernel(x, y);
    Ok(())
}

/// A quantizer's "all values were finite" as the table's result.
fn finite_if(all_finite: bool) -> Result<(), Refusal> {
    if all_finite { Ok(()) } else { Err(Refusal::NonFinite) }
}

/// Runs a weighted quantizer row by row: `kernel(row, row output, weights)`.
fn by_rows(
    ty: QuantType,
    x: &[f32],
    y: &mut [u8],
    n_per_row: usize,
    qw: &[f32],
    kernel: impl Fn(&[f32], &mut [u8], &[f32]),
) -> Result<(), Refusal> {
    for (x, y) in x.chunks_exact(n_per_row).zip(y.chunks_exact_mut(ty.bytes_for(n_per_row))) {
        kernel(x, y, qw);
    }
    Ok(())
}

/// For each biased f32 exponent E, the smallest mantissa at which `floor(log2f(x))` is E−126
/// rather than E−127 (log2f rounds values just below a power of two up to it); 2^23 when it
/// never is. Built from the very `f32::log2` the scalar reference calls, so the two agree.
fn log2_thresholds() -> &'static [u32; 256] {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [1u32 << 23; 256];
        for (e, slot) in t.iter_mut().enumerate().take(255).skip(1) {
            let floor_at = |m: u32| f32::from_bits((e as u32) << 23 | m).log2().floor();
            let base = e as f32 - 127.0;
            if floor_at((1 << 23) - 1) == base {
                continue;
            }
            // floor(log2f) is non-decreasing in the mantissa: binary search the jump.
            let (mut lo, mut hi) = (0u32, (1u32 << 23) - 1);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if floor_at(mid) > base { hi = mid } else { lo = mid + 1 }
            }
            *slot = lo;
        }
        t
    })
}

/// [`shared_exponent`] without calling log2f per block: the exponent bits plus the table.
#[inline]
pub(crate) fn mxfp4_exponent(amax: f32) -> u8 {
    let bits = amax.to_bits();
    let e = (bits >> 23) as usize;
    if amax <= 0.0 || e == 0 || e == 255 {
        return shared_exponent(amax);
    }
    let mantissa = bits & 0x007f_ffff;
    let floor_log2 = e as i32 - 127 + i32::from(mantissa >= log2_thresholds()[e]);
    (floor_log2 - 2 + 127).max(0) as u8
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Uniform values in [0, 1) from the xorshift sequence seeded `seed` (the kernels' unit
    /// tests' data).
    pub(crate) fn xorshift_uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Around every power of two, and across each binade, the table agrees with log2f.
    #[test]
    fn exponent_table_agrees_with_log2f() {
        for e in 1u32..255 {
            let near_top = ((1 << 23) - 20_000)..(1 << 23);
            let spread = (0..(1u32 << 23)).step_by(4099);
            for m in near_top.chain(spread).chain(0..16) {
                let x = f32::from_bits(e << 23 | m);
                assert_eq!(mxfp4_exponent(x), shared_exponent(x), "{x:e}");
            }
        }
    }

    /// Every positive finite f32 (run with --ignored; about 10 s in release).
    #[test]
    #[ignore]
    fn exponent_table_agrees_with_log2f_exhaustively() {
        for bits in 1u32..0x7f80_0000 {
            let x = f32::from_bits(bits);
            assert_eq!(mxfp4_exponent(x), shared_exponent(x), "{x:e}");
        }
    }
}
