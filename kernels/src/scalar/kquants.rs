//! Q4_K, Q5_K, Q6_K (256-value super-blocks): ports of `quantize_row_q{4,5,6}_K_ref` with
//! `make_qkx2_quants` / `make_qx_quants`, and their dequantizers. Every float operation is in
//! ggml's order: the sums here are sequential, and a reordering changes bytes.

use super::common::{GROUP_MAX_EPS, nearest_int, sum_x2};
use crate::convert::{f16_to_f32, f32_to_f16};

/// `make_qkx2_quants`: the scale and (positive) min of a sub-block with weights, choosing the
/// best of `nstep + 1` candidate scales by weighted squared error (weighted absolute error
/// with `use_mad`). Writes the codes to `l`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * if use_mad { diff.abs() } else { diff * diff };
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let lf = q as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * if use_mad { diff.abs() } else { diff * diff };
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qx_quants` with `rmse_type = 1`: weights `qw` when given, else x². Codes are written to
/// `l` offset by `nmax`.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let weight = |i: usize, v: f32| qw.map_or(v * v, |q| q[i]);
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let w = weight(i, v);
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = weight(i, v);
            sumlx += w * v * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                l[i] = (nmax + q) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The parameters that differ between Q4_K and Q5_K.
#[derive(Clone, Copy, Debug)]
pub struct KParams {
    /// Largest code (15 or 31).
    pub nmax: i32,
    /// `make_qkx2_quants`' `rmin`.
    pub rmin: f32,
    /// `make_qkx2_quants`' `rdelta`.
    pub rdelta: f32,
    /// `make_qkx2_quants`' `nstep`.
    pub nstep: i32,
    /// Bytes per super-block.
    pub block_bytes: usize,
}

/// Q4_K's parameters (`quantize_row_q4_K_ref`).
pub const Q4_K: KParams = KParams { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, block_bytes: 144 };
/// Q5_K's parameters (`quantize_row_q5_K_ref`).
pub const Q5_K: KParams = KParams { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, block_bytes: 176 };

/// The per-sub-block weights and `make_qkx2_quants` of one super-block: scales, mins, codes.
fn search_superblock(p: &KParams, x: &[f32], l: &mut [u8; 256]) -> ([f32; 8], [f32; 8]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (sum_x2(xs) / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            p.nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            p.rmin,
            p.rdelta,
            p.nstep,
            false,
        );
    }
    (scales, mins)
}

/// The 6-bit scale and min codes of a super-block's 8 sub-blocks and the super-block's d and
/// dmin (before rounding to f16), as `quantize_row_q{4,5}_K_ref` derives them.
pub(crate) fn sub_block_codes(scales: &[f32; 8], mins: &[f32; 8]) -> ([u8; 8], [u8; 8], f32, f32) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    (ls, lm, max_scale / 63.0, max_min / 63.0)
}

/// Finishes a Q4_K / Q5_K super-block from its sub-blocks' scales and mins: the 6-bit codes,
/// then [`pack_and_requantize`].
pub fn finish_superblock(p: &KParams, x: &[f32], scales: &[f32; 8], mins: &[f32; 8], l: &mut [u8; 256], b: &mut [u8]) {
    let (ls, lm, d, dmin) = sub_block_codes(scales, mins);
    pack_and_requantize(p, x, &ls, &lm, d, dmin, l, b);
}

/// Packs the 6-bit scales and mins and the f16 d and dmin into a Q4_K / Q5_K super-block,
/// recomputes the codes with the rounded scales (sub-blocks whose scale rounds to 0 keep
/// `l`), and packs the codes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_and_requantize(
    p: &KParams,
    x: &[f32],
    ls: &[u8; 8],
    lm: &[u8; 8],
    d: f32,
    dmin: f32,
    l: &mut [u8; 256],
    b: &mut [u8],
) {
    pack_scales(ls, lm, d, dmin, b);
    for j in 0..8 {
        if let Some((d, dm)) = sub_block_scale(j, b) {
            for ii in 0..32 {
                l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, p.nmax) as u8;
            }
        }
    }
    pack_codes(p, l, b);
}

/// Writes d, dmin (as f16) and the packed 6-bit scales and mins: the super-block's first 16
/// bytes.
pub(crate) fn pack_scales(ls: &[u8; 8], lm: &[u8; 8], d: f32, dmin: f32, b: &mut [u8]) {
    let sc = &mut b[4..16];
    sc.fill(0);
    for j in 0..8 {
        if j < 4 {
            sc[j] = ls[j];
            sc[j + 4] = lm[j];
        } else {
            sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            sc[j - 4] |= (ls[j] >> 4) << 6;
            sc[j] |= (lm[j] >> 4) << 6;
        }
    }
    b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(dmin).to_le_bytes());
}

/// Sub-block `j`'s rounded scale and min (d·s, dmin·m) from a packed super-block head, or
/// `None` when its scale is 0 (its codes are kept as searched).
#[inline]
pub(crate) fn sub_block_scale(j: usize, b: &[u8]) -> Option<(f32, f32)> {
    let (s, m) = scale_min_k4(j, &b[4..16]);
    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * s as f32;
    (d != 0.0).then(|| (d, f16_to_f32(u16::from_le_bytes([b[2], b[3]])) * m as f32))
}

/// Packs the 256 codes after the head: nibbles for Q4_K, nibbles plus high bits for Q5_K.
pub(crate) fn pack_codes(p: &KParams, l: &[u8; 256], b: &mut [u8]) {
    if p.nmax == 15 {
        for (c, chunk) in b[16..144].chunks_exact_mut(32).enumerate() {
            for i in 0..32 {
                chunk[i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
        return;
    }
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, chunk) in ql.chunks_exact_mut(32).enumerate() {
        for j in 0..32 {
            let mut l1 = l[64 * c + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[64 * c + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            chunk[j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// `quantize_row_q4_K_ref` (`p` = [`Q4_K`]) or `quantize_row_q5_K_ref` (`p` = [`Q5_K`]).
pub fn quantize_k(p: &KParams, x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; 256];
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(p.block_bytes)) {
        let (scales, mins) = search_superblock(p, x, &mut l);
        finish_superblock(p, x, &scales, &mins, &mut l, b);
    }
}

/// `quantize_row_q6_K_ref`.
pub fn quantize_q6_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; 256];
    let mut scales = [0f32; 16];
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(210)) {
        for ib in 0..16 {
            scales[ib] = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16], None);
        }
        finish_q6_k(x, &scales, &mut l, b);
    }
}

/// The rest of a Q6_K super-block once its 16 sub-blocks have their `make_qx_quants` scales
/// and codes: the 8-bit scales, d, codes recomputed with the rounded scales, packing.
pub fn finish_q6_k(x: &[f32], scales: &[f32; 16], l: &mut [i8; 256], b: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &scale in scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d16 = f32_to_f16(1.0 / iscale);
    b[208..210].copy_from_slice(&d16.to_le_bytes());
    for ib in 0..16 {
        b[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = f16_to_f32(d16) * (b[192 + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    pack_q6_k(l, b);
}

/// Packs 256 Q6_K codes (0..=63, the value + 32) into a super-block's `ql` and `qh` (the
/// first 192 bytes), as `quantize_row_q6_K_ref` does.
pub(crate) fn pack_q6_k(l: &[i8; 256], b: &mut [u8]) {
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let (j, ql, qh) = (128 * half, &mut ql[64 * half..64 * half + 64], &mut qh[32 * half..32 * half + 32]);
        for i in 0..32 {
            let q = |k: usize| l[j + i + k] as u8;
            ql[i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[i + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
}

/// The scale and min of the two 32-value sub-blocks of 64-value chunk `c` of a Q4_K / Q5_K
/// super-block, as the dequantizers compute them: `(d * sc, dmin * m)` for each.
fn chunk_scales(c: usize, sc: &[u8], d: f32, min: f32) -> ((f32, f32), (f32, f32)) {
    let (s1, m1) = scale_min_k4(2 * c, sc);
    let (s2, m2) = scale_min_k4(2 * c + 1, sc);
    ((d * s1 as f32, min * m1 as f32), (d * s2 as f32, min * m2 as f32))
}

/// `dequantize_row_q4_K`.
pub fn dequantize_q4_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(144).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let min = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let sc = &b[4..16];
        for (c, q) in b[16..].chunks_exact(32).enumerate() {
            let ((d1, m1), (d2, m2)) = chunk_scales(c, sc, d, min);
            for l in 0..32 {
                y[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// `dequantize_row_q5_K`.
pub fn dequantize_q5_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(176).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let min = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let sc = &b[4..16];
        let qh = &b[16..48];
        let (mut u1, mut u2) = (1u8, 2u8);
        for (c, ql) in b[48..].chunks_exact(32).enumerate() {
            let ((d1, m1), (d2, m2)) = chunk_scales(c, sc, d, min);
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * c + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[64 * c + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/// `dequantize_row_q6_K`.
pub fn dequantize_q6_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(210).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..128 + 32 * half + 32];
            let sc = &b[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
