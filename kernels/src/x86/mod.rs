//! x86-64 SIMD backends, detected at run time.

/// Safe wrappers around a backend module's `#[target_feature]` conversion kernels, for its
/// [`Backend`] table. The table is only handed out after `available` detected the module's
/// CPU features, which is what makes the calls sound.
macro_rules! conversion_entries {
    ($($name:ident($src:ty, $dst:ty) => $kernel:ident;)*) => {
        /// Safe entry points for the backend table.
        pub mod entry {
            $(
                #[doc = concat!("`", stringify!($kernel), "` for the backend table.")]
                pub fn $name(s: &[$src], d: &mut [$dst]) {
                    // SAFETY: only reached through this module's backend table, which
                    // `x86::available` hands out only after detecting its CPU features.
                    unsafe { super::$kernel(s, d) }
                }
            )*
        }
    };
}

mod avx2;
mod avx512;
mod iquants_avx2;
mod kquants_avx2;

use std::sync::OnceLock;

use crate::backend::Backend;
use crate::scalar::mxfp4::shared_exponent;

static AVX2: Backend = Backend {
    name: "avx2",
    quantize: avx2::quantize,
    dequantize: avx2::dequantize,
    bf16_to_f32: avx2::entry::bf16_to_f32,
    f16_to_f32: avx2::entry::f16_to_f32,
    f32_to_bf16: avx2::entry::f32_to_bf16,
    f32_to_f16: avx2::entry::f32_to_f16,
    openai_mxfp4_to_f32: avx2::openai_mxfp4_to_f32,
    iq: &iquants_avx2::KERNELS,
};

static AVX512: Backend = Backend {
    name: "avx512",
    quantize: avx512::quantize,
    dequantize: avx512::dequantize,
    bf16_to_f32: avx512::entry::bf16_to_f32,
    f16_to_f32: avx512::entry::f16_to_f32,
    f32_to_bf16: avx512::entry::f32_to_bf16,
    f32_to_f16: avx512::entry::f32_to_f16,
    // AVX-512 implies AVX2; the AVX2 kernel is memory-bound already.
    openai_mxfp4_to_f32: avx2::openai_mxfp4_to_f32,
    iq: &iquants_avx2::KERNELS,
};

/// The SIMD backends this CPU supports, slowest first.
pub fn available() -> Vec<&'static Backend> {
    let mut out = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
        out.push(&AVX2);
    }
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        out.push(&AVX512);
    }
    out
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
mod tests {
    use super::*;

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
