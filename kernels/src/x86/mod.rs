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

    /// A 32-value block for the IQ1 sort-order tests, case `case`: values from a pool of equal
    /// values, signed zeros, tiny and huge magnitudes and negatives; small values; or values on
    /// a coarse grid (many ties).
    pub(crate) fn iq1_order_case(case: usize, next: &mut impl FnMut() -> f32) -> [f32; 32] {
        let pool = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-30, -1e-30, 1e-45, -1e-45, 3.4e38, -3.4e38, 0.25, -2.0];
        std::array::from_fn(|_| match case % 3 {
            0 => pool[(next() * pool.len() as f32) as usize % pool.len()],
            1 => (next() - 0.5) * 0.04,
            _ => ((next() * 5.0).floor() - 2.0) * 0.125,
        })
    }

    /// The prefix sums the IQ1 boundary searches take, for test case `case`: a 32-value block
    /// (ordinary values, values on a coarse grid — equal scores, near-ties where rounding
    /// decides —, all-equal blocks, blocks whose best split puts every value in the top group,
    /// outliers; scales from 1e−30 to 1e12) with ordinary, zero, integer, squared and tiny
    /// weights, sorted; IQ1_S's `(sumx, sumw)` over all 32 values, and IQ1_M's per-half
    /// `(px, pw)` over the first 16, halves by the parity of `j · 7 + case`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn iq1_split_case(
        case: usize,
        next: &mut impl FnMut() -> f32,
    ) -> (([f32; 33], [f32; 33]), ([[f32; 17]; 2], [[f32; 17]; 2])) {
        let scale = [1.0, 0.02, 1e-3, 1e-12, 1e12, 3.0, 0.5, 1e-30][case % 8];
        let kind = (case / 8) % 6;
        let mut x = [0f32; 32];
        let mut w = [0f32; 32];
        for i in 0..32 {
            x[i] = match kind {
                0 => (next() - 0.5) * scale,
                1 => ((next() * 6.0).floor() - 3.0) * 0.25 * scale,
                2 => scale,
                3 => ((next() * 3.0).floor() - 1.0) * scale,
                4 => (next() + 2.0) * scale * if next() < 0.5 { -1.0 } else { 1.0 },
                _ => (next() - 0.3) * scale * if next() < 0.1 { 20.0 } else { 1.0 },
            };
            w[i] = match (kind + case / 48) % 4 {
                0 => next() * 10.0,
                1 => {
                    if next() < 0.3 {
                        0.0
                    } else {
                        1.0 + (next() * 4.0).floor()
                    }
                }
                2 => x[i] * x[i],
                _ => {
                    if next() < 0.2 {
                        1e-30
                    } else {
                        next()
                    }
                }
            };
        }
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (mut sumx, mut sumw) = ([0f32; 33], [0f32; 33]);
        for j in 0..32 {
            sumx[j + 1] = sumx[j] + w[j] * x[j];
            sumw[j + 1] = sumw[j] + w[j];
        }
        let (mut px, mut pw) = ([[0f32; 17]; 2], [[0f32; 17]; 2]);
        for j in 0..16 {
            let h = (j * 7 + case) % 2;
            px[h][j + 1] = px[h][j] + w[j] * x[j];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + w[j];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        ((sumx, sumw), (px, pw))
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
