//! IQ4_NL (32-value blocks) and IQ4_XS (256-value super-blocks with 6-bit sub-block scales),
//! the 4-bit non-linear types: ports of ggml's `quantize_row_iq4_nl_impl` as
//! `quantize_iq4_nl` / `quantize_iq4_xs` call it (what `ggml_quantize_chunk` runs, with and
//! without importance weights: `ntry` 7), and the dequantizers. Every float operation is in
//! ggml's order.

use std::sync::OnceLock;

use super::common::{GROUP_MAX_EPS, nearest_int, sum_x2, value_weights};
use crate::convert::{f16_to_f32, f32_to_f16};

/// ggml's `kvalues_iq4nl` (ggml-common.h).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// IQ4_NL block bytes.
pub const IQ4_NL_BYTES: usize = 18;
/// IQ4_XS block bytes.
pub const IQ4_XS_BYTES: usize = 136;

/// `best_index_int8(16, kvalues_iq4nl, x)`: the index of the table value nearest to `x` by
/// ggml's bisection (ties go to the larger value).
#[inline]
pub fn best_index(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < v[mu] as f32 - x { (mu - 1) as u8 } else { mu as u8 }
}

/// For k in 1..16, the smallest f32 at which [`best_index`] picks `KVALUES_IQ4NL[k]` over
/// `KVALUES_IQ4NL[k - 1]` (ggml compares `x - v[k-1] < v[k] - x` in f32, so this lies a few
/// ulps at most below the midpoint); entry 0 is −∞. `best_index(x)` is the number of entries
/// 1..16 that `x` is not below, a NaN counting as above all of them (ggml's bisection then
/// ends at 15). Built from the very comparison the reference makes.
pub fn decision_thresholds() -> &'static [f32; 16] {
    static TABLE: OnceLock<[f32; 16]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let v = KVALUES_IQ4NL.map(|v| v as f32);
        let mut t = [f32::NEG_INFINITY; 16];
        for k in 1..16 {
            // The comparison is monotone in x: false (upper value) from the threshold on.
            let picks_upper = |x: f32| (x - v[k - 1]).partial_cmp(&(v[k] - x)) != Some(std::cmp::Ordering::Less);
            let mut x = (v[k - 1] + v[k]) / 2.0;
            while picks_upper(x.next_down()) {
                x = x.next_down();
            }
            t[k] = x;
        }
        t
    })
}

/// `sigma2` of a super-block: `Σx² · (2 / n)`.
pub(crate) fn super_block_sigma2(x: &[f32]) -> f32 {
    sum_x2(x) * (2.0 / x.len() as f32)
}

/// The scale search of one 32-value block (`ntry` 7): the best of 16 candidate scales by
/// `Σw·q·x)² / Σw·q²`. 0 for a block whose values are all below `GROUP_MAX_EPS`.
pub(crate) fn block_scale(xb: &[f32], weight: &[f32; 32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let values = &KVALUES_IQ4NL;
    let mut d = -max / values[0] as f32;
    let mut id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (&v, &w) in xb.iter().zip(weight) {
        let q = values[best_index(id * v) as usize] as f32;
        sumqx += w * q * v;
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -7..=7 {
        id = (itry + values[0] as i32) as f32 / max;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for (&v, &w) in xb.iter().zip(weight) {
            let q = values[best_index(id * v) as usize] as f32;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 codes of a block: code j in the low nibble of byte j, code j + 16 in the high.
#[inline]
pub(crate) fn pack_block(l: &[u8; 32], q4: &mut [u8]) {
    for j in 0..16 {
        q4[j] = l[j] | (l[16 + j] << 4);
    }
}

/// The codes of a block for inverse scale `id`: `best_index(id · x)`.
#[inline]
pub(crate) fn block_codes(xb: &[f32], id: f32) -> [u8; 32] {
    std::array::from_fn(|j| best_index(id * xb[j]))
}

/// `quantize_iq4_nl` on whole blocks; `qw` (importance weights, one per value) optional.
pub fn quantize_iq4_nl(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut weight = [0f32; 32];
    for (ib, (xb, b)) in x.chunks_exact(32).zip(y.chunks_exact_mut(IQ4_NL_BYTES)).enumerate() {
        let sigma2 = super_block_sigma2(xb);
        value_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut weight);
        let d = block_scale(xb, &weight);
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        pack_block(&block_codes(xb, id), &mut b[2..]);
    }
}

/// The 6-bit scales, d and codes of an IQ4_XS super-block from its sub-blocks' scales.
pub(crate) fn finish_iq4_xs(x: &[f32], scales: &[f32; 8], b: &mut [u8]) {
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for &d in scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    for (ib, &s) in scales.iter().enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        pack_block(&block_codes(&x[32 * ib..32 * ib + 32], idl), &mut b[8 + 16 * ib..24 + 16 * ib]);
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
    b[4..8].copy_from_slice(&scales_l);
}

/// `quantize_iq4_xs` on whole super-blocks; `qw` (importance weights, one per value) optional.
pub fn quantize_iq4_xs(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut weight = [0f32; 32];
    for (ibl, (x, b)) in x.chunks_exact(256).zip(y.chunks_exact_mut(IQ4_XS_BYTES)).enumerate() {
        let sigma2 = super_block_sigma2(x);
        let mut scales = [0f32; 8];
        for (ib, s) in scales.iter_mut().enumerate() {
            let xb = &x[32 * ib..32 * ib + 32];
            value_weights(xb, qw.map(|q| &q[256 * ibl + 32 * ib..256 * ibl + 32 * ib + 32]), sigma2, &mut weight);
            *s = block_scale(xb, &weight);
        }
        finish_iq4_xs(x, &scales, b);
    }
}

/// `dequantize_row_iq4_nl`.
pub fn dequantize_iq4_nl(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ4_NL_BYTES).zip(y.chunks_exact_mut(32)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
        }
    }
}

/// `dequantize_row_iq4_xs`.
pub fn dequantize_iq4_xs(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ4_XS_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for ib in 0..8 {
            let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &b[8 + 16 * ib..24 + 16 * ib];
            for j in 0..16 {
                y[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                y[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_thresholds(x: f32) -> u8 {
        decision_thresholds()[1..].iter().filter(|&&t| x.partial_cmp(&t) != Some(std::cmp::Ordering::Less)).count()
            as u8
    }

    /// Near every threshold, across the table's range, and at ±∞ and NaN, counting
    /// thresholds gives ggml's bisection.
    #[test]
    fn thresholds_reproduce_best_index() {
        let mut xs = vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, f32::MAX, f32::MIN];
        for &t in &decision_thresholds()[1..] {
            let mut x = t;
            for _ in 0..2000 {
                x = x.next_down();
            }
            for _ in 0..4000 {
                xs.push(x);
                x = x.next_up();
            }
        }
        xs.extend((0..200_000).map(|i| -140.0 + i as f32 * 0.001_35));
        xs.extend(KVALUES_IQ4NL.iter().map(|&v| v as f32));
        for x in xs {
            assert_eq!(by_thresholds(x), best_index(x), "{x:e}");
        }
    }

    /// Every f32 from −256 to 256 (run with --ignored).
    #[test]
    #[ignore]
    fn thresholds_reproduce_best_index_exhaustively() {
        for bits in 0u32..=0xC380_0000 {
            let x = f32::from_bits(bits);
            if x.abs() <= 256.0 {
                assert_eq!(by_thresholds(x), best_index(x), "{x:e}");
            }
        }
    }
}
