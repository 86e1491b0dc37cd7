//! TQ1_0 and TQ2_0 quantization on AVX2, one pass over each super-block after its largest
//! magnitude: every value's trit (`lroundf(x·id) + 1`) from two compares, combined in lanes
//! into the packed bytes `quantize_row_tq{1,2}_0_ref` writes. Integer operations on exact
//! values after the one product `x·id` the reference also computes, so the bytes are the
//! reference's. The NaN/infinity check rides on the largest-magnitude pass.
//!
//! Every `#[target_feature]` function here is reached only through the AVX2 table (and the
//! AVX-512 table, which inherits its entries), handed out only after detecting AVX2.

use std::arch::x86_64::*;

use crate::convert::f32_to_f16;
use crate::scalar::ternary::{self, TQ1_0_BYTES, TQ2_0_BYTES};

/// Bits of `+inf`: a non-negative float's bits are at least this iff it is infinite or NaN.
const INF_BITS: i32 = 0x7f80_0000;

/// The largest magnitude of a super-block (256 values), or `None` if one is NaN or infinite.
/// Non-negative floats order as their bits do, so the integer maximum of `|x|`'s bits is the
/// float maximum the reference finds (and is at least [`INF_BITS`] iff some value is not
/// finite).
#[target_feature(enable = "avx2")]
fn amax256(x: &[f32]) -> Option<f32> {
    assert!(x.len() >= 256);
    let abs = _mm256_set1_epi32(i32::MAX);
    let mut m = [_mm256_setzero_si256(); 4];
    for c in 0..8 {
        for (k, m) in m.iter_mut().enumerate() {
            // SAFETY: 32 c + 8 k + 8 <= 256 values are readable (checked above); unaligned load.
            let v = unsafe { _mm256_loadu_si256(x.as_ptr().add(32 * c + 8 * k).cast()) };
            *m = _mm256_max_epi32(*m, _mm256_and_si256(v, abs));
        }
    }
    let m = _mm256_max_epi32(_mm256_max_epi32(m[0], m[1]), _mm256_max_epi32(m[2], m[3]));
    let m = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
    let m = _mm_cvtsi128_si32(_mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m)));
    (m < INF_BITS).then(|| f32::from_bits(m as u32))
}

/// The trits (0, 1, 2 as i32) of `x[at..at + 8]` scaled by `id`. |x·id| ≤ 1 + 2⁻²³ (|x| ≤ d),
/// where rounding half away from zero gives 1 from ½ up, −1 from −½ down and 0 between: the
/// trit is 1 + [p ≥ ½] − [p ≤ −½] (compares give −1 for true).
#[target_feature(enable = "avx2")]
fn trits8(x: &[f32], at: usize, id: __m256) -> __m256i {
    assert!(x.len() >= at + 8);
    // SAFETY: 8 values from `at` are readable (checked above); unaligned load.
    let p = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) }, id);
    let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(p, _mm256_set1_ps(0.5)));
    let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(p, _mm256_set1_ps(-0.5)));
    _mm256_add_epi32(_mm256_sub_epi32(_mm256_set1_epi32(1), up), down)
}

/// `3q` for small non-negative i32 lanes.
#[target_feature(enable = "avx2")]
fn times3(q: __m256i) -> __m256i {
    _mm256_add_epi32(_mm256_add_epi32(q, q), q)
}

/// `⌈q·256/243⌉` for lanes 0 ≤ q ≤ 242: `(q·256 + 242) / 243` as a multiply by ⌈2²⁴/243⌉ and a
/// shift, exact on that range.
#[target_feature(enable = "avx2")]
fn scale243(q: __m256i) -> __m256i {
    let v = _mm256_add_epi32(_mm256_slli_epi32::<8>(q), _mm256_set1_epi32(242));
    _mm256_srli_epi32::<24>(_mm256_mullo_epi32(v, _mm256_set1_epi32(69043)))
}

/// Four vectors of i32 lanes in 0..=255 as 32 bytes in lane order.
#[target_feature(enable = "avx2")]
fn bytes32(q: [__m256i; 4]) -> __m256i {
    let b = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// TQ1_0's 5-trit byte for the 8 lanes at `at`: trits of `x[at + stride·n]`, n = 0..5, first
/// most significant, scaled.
#[target_feature(enable = "avx2")]
fn pack5(x: &[f32], at: usize, stride: usize, id: __m256) -> __m256i {
    let mut q = trits8(x, at, id);
    for n in 1..5 {
        q = _mm256_add_epi32(times3(q), trits8(x, at + stride * n, id));
    }
    scale243(q)
}

/// TQ1_0 (`quantize_row_tq1_0_ref`) for whole super-blocks; false (and the rest of `y`
/// unwritten) at the first super-block holding a NaN or infinity.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_tq1_0(x: &[f32], y: &mut [u8]) -> bool {
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(TQ1_0_BYTES)) {
        let Some(d) = amax256(x) else { return false };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A super-block of tiny subnormals: lroundf of ±inf or NaN, left to the reference.
            ternary::quantize_tq1_0(x, b);
            continue;
        }
        let idv = _mm256_set1_ps(id);
        assert!(b.len() >= TQ1_0_BYTES);
        // Bytes 0..32: values m + 32n of the first 160; bytes 32..48: 160 + m + 16n.
        let head = bytes32(std::array::from_fn(|k| pack5(x, 8 * k, 32, idv)));
        let next =
            bytes32([pack5(x, 160, 16, idv), pack5(x, 168, 16, idv), _mm256_setzero_si256(), _mm256_setzero_si256()]);
        // qh: byte j from values 240 + j + 4m (m = 0..4, first most significant), times 3 more.
        let (lo, hi) = (trits8(x, 240, idv), trits8(x, 248, idv));
        let q = _mm256_add_epi32(times3(lo), _mm256_permute2x128_si256::<0x01>(lo, lo));
        let q = _mm256_add_epi32(
            times3(times3(q)),
            _mm256_add_epi32(times3(hi), _mm256_permute2x128_si256::<0x01>(hi, hi)),
        );
        let q = scale243(times3(q));
        let qh = _mm256_castsi256_si128(bytes32([q, q, q, q]));
        // SAFETY: `b` holds 54 bytes (checked above): 32 at 0, 16 at 32, 4 at 48; unaligned stores.
        unsafe {
            _mm256_storeu_si256(b.as_mut_ptr().cast(), head);
            _mm_storeu_si128(b.as_mut_ptr().add(32).cast(), _mm256_castsi256_si128(next));
            std::ptr::write_unaligned(b.as_mut_ptr().add(48).cast::<i32>(), _mm_cvtsi128_si32(qh));
        }
        b[52..54].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
    true
}

/// TQ2_0 (`quantize_row_tq2_0_ref`) for whole super-blocks; false (and the rest of `y`
/// unwritten) at the first super-block holding a NaN or infinity.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_tq2_0(x: &[f32], y: &mut [u8]) -> bool {
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(TQ2_0_BYTES)) {
        let Some(d) = amax256(x) else { return false };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            ternary::quantize_tq2_0(x, b);
            continue;
        }
        let idv = _mm256_set1_ps(id);
        assert!(b.len() >= TQ2_0_BYTES);
        for j in 0..2 {
            // Byte 32 j + m: trits of values 128 j + m + 32 n in bits 2n.
            let q = bytes32(std::array::from_fn(|k| {
                let t = |n: usize| trits8(x, 128 * j + 32 * n + 8 * k, idv);
                let lo = _mm256_or_si256(t(0), _mm256_slli_epi32::<2>(t(1)));
                _mm256_or_si256(lo, _mm256_or_si256(_mm256_slli_epi32::<4>(t(2)), _mm256_slli_epi32::<6>(t(3))))
            }));
            // SAFETY: `b` holds 66 bytes (checked above); 32 j + 32 <= 64; unaligned store.
            unsafe { _mm256_storeu_si256(b.as_mut_ptr().add(32 * j).cast(), q) };
        }
        b[64..66].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
    true
}
