//! Q2_K and Q3_K (256-value super-blocks of 16 sub-blocks of 16): ports of ggml's
//! `quantize_row_q2_K_ref` / `quantize_row_q3_K_ref` (what `ggml_quantize_chunk` runs without
//! importance weights), `quantize_row_q2_K_impl` / `quantize_row_q3_K_impl` (with them),
//! `make_q3_quants`, and the dequantizers. Every float operation is in ggml's order.

use super::common::{GROUP_MAX_EPS, imatrix_weights, make_qp_quants, nearest_int, sum_x2};
use super::kquants::{make_qkx2_quants, make_qx_quants};
use crate::convert::{f16_to_f32, f32_to_f16};

/// Q2_K block bytes.
pub const Q2_K_BYTES: usize = 84;
/// Q3_K block bytes.
pub const Q3_K_BYTES: usize = 110;

/// Packs 256 2-bit codes as ggml's Q2_K/Q3_K `qs`: byte `32h + l` of half h holds codes
/// `128h + l + 32k` in bits 2k.
pub(crate) fn pack_2bit(l: &[u8; 256], qs: &mut [u8]) {
    for h in 0..2 {
        for i in 0..32 {
            let j = 128 * h + i;
            qs[32 * h + i] = l[j] | (l[j + 32] << 2) | (l[j + 64] << 4) | (l[j + 96] << 6);
        }
    }
}

/// The end of a Q2_K super-block once its d, dmin and 4-bit scale/min pairs are written:
/// codes recomputed with the rounded scales (sub-blocks whose scale is 0 keep `l`), packed.
pub(crate) fn finish_q2_k(x: &[f32], l: &mut [u8; 256], b: &mut [u8]) {
    let d_all = f16_to_f32(u16::from_le_bytes([b[80], b[81]]));
    let m_all = f16_to_f32(u16::from_le_bytes([b[82], b[83]]));
    for j in 0..16 {
        let d = d_all * (b[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (b[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(l, &mut b[16..80]);
}

/// The 4-bit scale and min codes and d, dmin of a Q2_K super-block from its sub-blocks'
/// scales and mins, as `quantize_row_q2_K_ref` derives them (written to `b`).
pub(crate) fn q2_k_head(scales: &[f32; 16], mins: &[f32; 16], b: &mut [u8]) {
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            b[j] = nearest_int(iscale * scales[j]) as u8;
        }
        b[80..82].copy_from_slice(&f32_to_f16(max_scale / 15.0).to_le_bytes());
    } else {
        b[..16].fill(0);
        b[80..82].copy_from_slice(&f32_to_f16(0.0).to_le_bytes());
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            b[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        b[82..84].copy_from_slice(&f32_to_f16(max_min / 15.0).to_le_bytes());
    } else {
        b[82..84].copy_from_slice(&f32_to_f16(0.0).to_le_bytes());
    }
}

/// `quantize_row_q2_K_ref`.
pub fn quantize_q2_k(x: &[f32], y: &mut [u8]) {
    let (mut l, mut laux, mut weights) = ([0u8; 256], [0u8; 16], [0f32; 16]);
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(Q2_K_BYTES)) {
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            (scales[j], mins[j]) =
                make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux, -0.5, 0.1, 15, true);
        }
        q2_k_head(&scales, &mins, b);
        finish_q2_k(x, &mut l, b);
    }
}

/// `quantize_row_q2_K_impl`: one row (a whole number of super-blocks) with importance
/// weights `qw` (one per value of the row).
pub fn quantize_q2_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let (mut l, mut laux, mut weight) = ([0u8; 256], [0u8; 16], [0f32; 16]);
    for ((x, qw), b) in x.chunks_exact(256).zip(qw.chunks_exact(256)).zip(y.chunks_exact_mut(Q2_K_BYTES)) {
        let sigma2 = sum_x2(x) / 256.0;
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            imatrix_weights(xs, &qw[16 * j..16 * j + 16], sigma2, &mut weight);
            for &w in &weight {
                sw[j] += w;
            }
            // make_qkx3_quants with weights is make_qkx2_quants.
            (scales[j], mins[j]) =
                make_qkx2_quants(3, xs, &weight, &mut l[16 * j..16 * j + 16], &mut laux, -0.9, 0.05, 36, false);
        }
        q2_k_weighted_head(&scales, &mins, &sw, b);
        finish_q2_k(x, &mut l, b);
    }
}

/// The head of a weighted Q2_K super-block: `make_qp_quants` of the scales and the mins.
pub(crate) fn q2_k_weighted_head(scales: &[f32; 16], mins: &[f32; 16], sw: &[f32; 16], b: &mut [u8]) {
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(15, scales, &mut ls, sw);
    let mm = make_qp_quants(15, mins, &mut lm, sw);
    b[80..82].copy_from_slice(&f32_to_f16(dm).to_le_bytes());
    b[82..84].copy_from_slice(&f32_to_f16(mm).to_le_bytes());
    for j in 0..16 {
        b[j] = ls[j] | (lm[j] << 4);
    }
}

/// `make_q3_quants(16, 4, x, L, true)`: codes (offset by 4) in `l`, the scale returned.
pub(crate) fn make_q3_quants(x: &[f32], l: &mut [i8]) -> f32 {
    const NMAX: i32 = 4;
    let (mut max, mut amax) = (0.0f32, 0.0f32);
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
    let iscale = -(NMAX as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (q, &v) in l.iter_mut().zip(x) {
        let c = nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
        *q = c as i8;
        let w = v * v;
        sumlx += w * v * c as f32;
        suml2 += w * c as f32 * c as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (q, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let li = *q as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-NMAX, NMAX - 1);
                if new_l != *q as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *q = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for q in l.iter_mut() {
        *q += NMAX as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Sub-block `j`'s 6-bit scale code (0..=63) from a Q3_K block's 12 packed scale bytes.
#[inline]
pub(crate) fn q3_k_scale(j: usize, sc: &[u8]) -> i8 {
    let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8
}

/// Packs 16 6-bit scale codes (0..=63) into a Q3_K block's 12 scale bytes.
pub(crate) fn pack_q3_k_scales(ls: &[u8; 16], sc: &mut [u8]) {
    sc[..12].fill(0);
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            sc[j] = l & 0xF;
        } else {
            sc[j - 8] |= (l & 0xF) << 4;
        }
        sc[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
}

/// The end of a Q3_K super-block once its d and scales are written: codes recomputed with
/// the rounded scales (sub-blocks whose scale is 0 keep `l`, offset by 4), high bits and
/// low bits packed.
pub(crate) fn finish_q3_k(x: &[f32], l: &mut [i8; 256], b: &mut [u8]) {
    let d_all = f16_to_f32(u16::from_le_bytes([b[108], b[109]]));
    for j in 0..16 {
        let sc = q3_k_scale(j, &b[96..108]) - 32;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    pack_q3_k_codes(l, b);
}

/// Packs 256 Q3_K codes (0..=7, the value + 4) into a block's `hmask` and `qs` (the first 96
/// bytes), as `quantize_row_q3_K_ref` does.
pub(crate) fn pack_q3_k_codes(l: &[i8; 256], b: &mut [u8]) {
    let mut low = [0u8; 256];
    let hmask = &mut b[..32];
    hmask.fill(0);
    for (j, (&q, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
        let q = q as u8;
        if q > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *lo = q - 4;
        } else {
            *lo = q;
        }
    }
    pack_2bit(&low, &mut b[32..96]);
}

/// `quantize_row_q3_K_ref`.
pub fn quantize_q3_k(x: &[f32], y: &mut [u8]) {
    let mut l = [0i8; 256];
    for (x, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(Q3_K_BYTES)) {
        let mut scales = [0f32; 16];
        for j in 0..16 {
            scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        }
        q3_k_head(&scales, b);
        finish_q3_k(x, &mut l, b);
    }
}

/// The scales and d of a Q3_K super-block as `quantize_row_q3_K_ref` derives them.
pub(crate) fn q3_k_head(scales: &[f32; 16], b: &mut [u8]) {
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for &s in scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let mut ls = [0u8; 16];
        for (q, &s) in ls.iter_mut().zip(scales) {
            // ggml stores nearest_int's result in an int8_t before clamping.
            *q = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
        }
        pack_q3_k_scales(&ls, &mut b[96..108]);
        b[108..110].copy_from_slice(&f32_to_f16(1.0 / iscale).to_le_bytes());
    } else {
        b[96..108].fill(0);
        b[108..110].copy_from_slice(&f32_to_f16(0.0).to_le_bytes());
    }
}

/// `quantize_row_q3_K_impl` with importance weights `qw` (one per value of the row).
pub fn quantize_q3_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let (mut l, mut weight) = ([0i8; 256], [0f32; 16]);
    for ((x, qw), b) in x.chunks_exact(256).zip(qw.chunks_exact(256)).zip(y.chunks_exact_mut(Q3_K_BYTES)) {
        let sigma2 = 2.0 * sum_x2(x) / 256.0;
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            imatrix_weights(xs, &qw[16 * j..16 * j + 16], sigma2, &mut weight);
            let mut sumw = 0.0f32;
            for &w in &weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], Some(&weight));
        }
        q3_k_weighted_head(&scales, &sw, b);
        finish_q3_k(x, &mut l, b);
    }
}

/// The head of a weighted Q3_K super-block: `make_qx_quants(16, 32, scales, Ls, 1, sw)`.
pub(crate) fn q3_k_weighted_head(scales: &[f32; 16], sw: &[f32; 16], b: &mut [u8]) {
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, scales, &mut ls, Some(sw));
    put_q3_k_head(&ls, d_block, b);
}

/// Writes a Q3_K super-block's 6-bit scale codes (0..=63, as i8) and d.
pub(crate) fn put_q3_k_head(ls: &[i8; 16], d: f32, b: &mut [u8]) {
    pack_q3_k_scales(&ls.map(|v| v as u8), &mut b[96..108]);
    b[108..110].copy_from_slice(&f32_to_f16(d).to_le_bytes());
}

/// `dequantize_row_q2_K`.
pub fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(Q2_K_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[80], b[81]]));
        let min = f16_to_f32(u16::from_le_bytes([b[82], b[83]]));
        for h in 0..2 {
            let q = &b[16 + 32 * h..48 + 32 * h];
            for k in 0..4 {
                for half in 0..2 {
                    let sc = b[8 * h + 2 * k + half];
                    let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                    let out = &mut y[128 * h + 32 * k + 16 * half..][..16];
                    for (o, &q) in out.iter_mut().zip(&q[16 * half..16 * half + 16]) {
                        *o = dl * ((q >> (2 * k)) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// `dequantize_row_q3_K`.
pub fn dequantize_q3_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(Q3_K_BYTES).zip(y.chunks_exact_mut(256)) {
        let d_all = f16_to_f32(u16::from_le_bytes([b[108], b[109]]));
        let (hm, sc) = (&b[..32], &b[96..108]);
        for h in 0..2 {
            let q = &b[32 + 32 * h..64 + 32 * h];
            for k in 0..4 {
                let m = 1u8 << (4 * h + k);
                for half in 0..2 {
                    let dl = d_all * (q3_k_scale(8 * h + 2 * k + half, sc) as i32 - 32) as f32;
                    let out = &mut y[128 * h + 32 * k + 16 * half..][..16];
                    for (i, o) in out.iter_mut().enumerate() {
                        let l = 16 * half + i;
                        let v = ((q[l] >> (2 * k)) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                        *o = dl * v as f32;
                    }
                }
            }
        }
    }
}
