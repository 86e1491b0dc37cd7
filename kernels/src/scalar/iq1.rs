//! IQ1_S and IQ1_M (1.56 and 1.75 bits per weight): ports of ggml's `quantize_row_iq1_s_impl`,
//! `quantize_row_iq1_m_impl`, `iq1_find_best_neighbour2` and `dequantize_row_iq1_*`
//! (ggml/src/ggml-quants.c), operation for operation, sums in ggml's order.
//!
//! A block's values are split into three groups (−1, 0, +1, shifted by ±`IQ1S_DELTA`) by an
//! exhaustive search over the two boundaries in sorted order. ggml sorts with glibc's `qsort`,
//! a stable merge sort for these sizes; a stable sort of the values reproduces its order.
//! IQ1_S needs importance weights (ggml asserts on their absence); IQ1_M takes them or not.

// The loops index several arrays by one position, as ggml's do.
#![allow(clippy::needless_range_loop)]

use super::common::{c_max, imatrix_weights, nearest_int, value_weights};
use super::iq_grids::IQ1S_GRID;
use super::iq_search::Searcher;
use super::iq_tables::{self, GgmlAbort, Lattice, Lookup, check_scale};
use crate::convert::{f16_to_f32, f32_to_f16};

/// ggml's `IQ1S_DELTA` (and `IQ1M_DELTA`).
pub const IQ1S_DELTA: f32 = 0.125;
/// ggml's `GROUP_MAX_EPS_IQ1_S`.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
/// ggml's `GROUP_MAX_EPS_IQ1_M`.
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;

/// Bytes per super-block.
pub const IQ1_S_BYTES: usize = 50;
/// Bytes per super-block.
pub const IQ1_M_BYTES: usize = 56;

/// The three levels with a positive shift (`x_p`).
pub const X_P: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
/// The three levels with a negative shift (`x_m`).
pub const X_M: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];

/// Indices of a block's values in ascending order, ties in index order (glibc's stable
/// `qsort` with `iq1_sort_helper`).
#[inline]
pub fn sorted_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    // Keys that order floats as `<` does (−0 made +0, so the two zeros tie), then by index:
    // one unstable sort of distinct keys gives the stable order.
    let mut keys: [u64; N] = std::array::from_fn(|i| {
        let bits = (xb[i] + 0.0).to_bits();
        let key = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
        (key as u64) << 32 | i as u64
    });
    keys.sort_unstable();
    keys.map(|k| k as u32 as usize)
}

/// Codes 0/1/2 for the values below `i1`, between, and from `i2` on in sorted order.
#[inline]
fn split_codes(idx: &[usize], i1: usize, i2: usize, l: &mut [i8]) {
    for (j, &i) in idx.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
}

/// The grid index for 8 codes, or (`iq1_find_best_neighbour2`) the neighbour whose levels `xx`
/// at `scale` come closest to `xb`; and whether they were on the grid. ggml's fallback when no neighbour is closer than `FLT_MAX` reads past its arrays:
/// that is an abort here.
#[inline]
fn grid_point<S: Searcher>(
    s: &S,
    t: &Lattice<8>,
    xb: &[f32],
    weight: &[f32],
    scale: f32,
    xx: &[f32; 3],
    l: &[i8],
) -> Result<(u16, bool), GgmlAbort> {
    let u = l.iter().enumerate().fold(0usize, |u, (j, &q)| u | ((q as u8 as usize) << (2 * j)));
    match t.lookup(u) {
        Lookup::OnGrid(g) => Ok((g, true)),
        Lookup::Near(list) => {
            let qtab = [xx[0], xx[1], xx[2], 0.0, 0.0, 0.0, 0.0, 0.0];
            // ggml rewrites the codes `L` here too; nothing reads them afterwards (the
            // block's scale is recomputed from the grid points), so they are left as they are.
            let g = list.indices[s.nearest::<8>(list, &qtab, xb, weight, scale).ok_or(GgmlAbort)?];
            Ok((g, false))
        }
    }
}

/// One IQ1_S super-block (`quantize_row_iq1_s_impl`): 256 values, their 256 weights.
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq1_s_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: &[f32],
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    let t = iq_tables::iq1();
    let mut scales = [0f32; 8];
    let mut shifts = [0i8; 8];
    let mut weight = [0f32; 32];
    let mut l = [0i8; 32];
    let mut max_scale = 0.0f32;
    y[..IQ1_S_BYTES].fill(0);
    let sigma2 = 2.0 * sum_x2 / 256.0;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], sigma2, &mut weight);
        let mut max = xb[0].abs();
        for &v in &xb[1..] {
            max = c_max(max, v.abs());
        }
        if max < GROUP_MAX_EPS_IQ1_S {
            scales[ib] = 0.0;
            shifts[ib] = 1;
            continue;
        }
        let idx = s.iq1_order::<32>(xb);
        let (mut sumx, mut sumw) = ([0f32; 33], [0f32; 33]);
        for (j, &i) in idx.iter().enumerate() {
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let Some((besti1, besti2, mut best_shift, mut scale)) = s.iq1s_split(&sumx, &sumw) else {
            scales[ib] = 0.0;
            shifts[ib] = 1;
            continue;
        };
        split_codes(&idx, besti1, besti2, &mut l);
        if scale < 0.0 {
            for q in &mut l {
                *q = 2 - *q;
            }
            scale = -scale;
            best_shift = -best_shift;
        }
        let xx = if best_shift == 1 { &X_P } else { &X_M };
        let mut index = [0u16; 4];
        let mut all_on_grid = true;
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            let (g, on) = grid_point(s, t, &xb[r.clone()], &weight[r.clone()], scale, xx, &l[r])?;
            all_on_grid &= on;
            index[k] = g;
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for k in 0..4 {
                let pg = &t.grid[index[k] as usize];
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[((pg[j] - 1) / 2) as usize];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        let mut h = 0u16;
        for k in 0..4 {
            y[2 + 4 * ib + k] = index[k] as u8;
            h |= (index[k] >> 8) << (3 * k);
        }
        y[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&h.to_le_bytes());
        check_scale(scale)?;
        scales[ib] = scale;
        shifts[ib] = best_shift;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 15.0;
    y[..2].copy_from_slice(&f32_to_f16(d * 1.125).to_le_bytes());
    let id = 1.0 / d;
    for ib in 0..8 {
        let mut code = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
        if shifts[ib] == -1 {
            code |= 8;
        }
        let at = 34 + 2 * ib;
        let h = u16::from_le_bytes([y[at], y[at + 1]]) | code << 12;
        y[at..at + 2].copy_from_slice(&h.to_le_bytes());
    }
    Ok(())
}

/// Sign pattern `k` of IQ1_M (0: +,+; 1: +,−; 2: −,+; 3: −,−): the levels of each half.
#[inline]
fn iq1m_levels(k: usize, half: usize) -> &'static [f32; 3] {
    let negative = if half == 0 { k >= 2 } else { k % 2 == 1 };
    if negative { &X_M } else { &X_P }
}

/// One IQ1_M super-block (`quantize_row_iq1_m_impl`): 256 values, with their 256 weights or
/// without (then each value weighs x²).
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq1_m_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: Option<&[f32]>,
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let t = iq_tables::iq1();
    let mut scales = [0f32; 16];
    let mut shifts = [0usize; 16];
    // The blocks' weights, formed once: the final scale reads them again.
    let mut weights = [[0f32; 16]; 16];
    let mut l = [0i8; 16];
    let mut max_scale = 0.0f32;
    y[..IQ1_M_BYTES].fill(0);
    let sigma2 = 2.0 * sum_x2 / 256.0;
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        let weight = &mut weights[ib];
        value_weights(xb, qw.map(|q| &q[16 * ib..]), sigma2, weight);
        let weight = &*weight;
        let mut max = xb[0].abs();
        for &v in &xb[1..] {
            max = c_max(max, v.abs());
        }
        if max < GROUP_MAX_EPS_IQ1_M {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            continue;
        }
        let idx = s.iq1_order::<16>(xb);
        // Prefix sums per half of the block (each half has its own shift).
        // The running sums stay in registers: each adds its value's term or +0.0 (the terms
        // masked), which leaves a sum as it is, since a sum started at +0.0 is never −0.0 (a
        // rounded sum is −0.0 only when both terms are).
        let (mut px, mut pw) = ([[0f32; 17]; 2], [[0f32; 17]; 2]);
        let (mut sx, mut sw) = ([0f32; 2], [0f32; 2]);
        for (j, &i) in idx.iter().enumerate() {
            let hi = 0u32.wrapping_sub(u32::from(i >= 8));
            let (tx, tw) = ((weight[i] * xb[i]).to_bits(), weight[i].to_bits());
            sx[0] += f32::from_bits(tx & !hi);
            sx[1] += f32::from_bits(tx & hi);
            sw[0] += f32::from_bits(tw & !hi);
            sw[1] += f32::from_bits(tw & hi);
            for h in 0..2 {
                px[h][j + 1] = sx[h];
                pw[h][j + 1] = sw[h];
            }
        }
        let Some((besti1, besti2, mut best_k, mut scale)) = s.iq1m_split(&px, &pw) else {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            continue;
        };
        split_codes(&idx, besti1, besti2, &mut l);
        if scale < 0.0 {
            for q in &mut l {
                *q = 2 - *q;
            }
            scale = -scale;
            best_k = 3 - best_k;
        }
        let mut index = [0u16; 2];
        let mut all_on_grid = true;
        for k in 0..2 {
            let r = 8 * k..8 * k + 8;
            let xx = iq1m_levels(best_k, k);
            let (g, on) = grid_point(s, t, &xb[r.clone()], &weight[r.clone()], scale, xx, &l[r])?;
            all_on_grid &= on;
            index[k] = g;
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for k in 0..2 {
                let xx = iq1m_levels(best_k, k);
                let pg = &t.grid[index[k] as usize];
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[((pg[j] - 1) / 2) as usize];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        y[2 * ib] = index[0] as u8;
        y[2 * ib + 1] = index[1] as u8;
        y[32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        check_scale(scale)?;
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return Ok(());
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let code = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (code as u16) << (3 * (ib % 4));
        y[32 + ib] |= MASKS[shifts[ib]];
        let (xb, weight) = (&x[16 * ib..16 * ib + 16], &weights[ib]);
        for k in 0..2 {
            let xx = iq1m_levels(shifts[ib], k);
            let g = y[2 * ib + k] as usize + (((y[32 + ib] as usize) << (8 - 4 * k)) & 0x700);
            let pg = &t.grid[g];
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xx[((pg[j] - 1) / 2) as usize] * (2 * code + 1) as f32;
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    let s = f32_to_f16(d * 1.1125);
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (o, v) in y[48..56].chunks_exact_mut(2).zip(sc) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// `dequantize_row_iq1_s`.
pub fn dequantize_iq1_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ1_S_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for ib in 0..8 {
            let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            for l in 0..4 {
                let g = IQ1S_GRID[b[2 + 4 * ib + l] as usize | (((qh >> (3 * l)) & 7) as usize) << 8].to_le_bytes();
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (g[j] as i8 as f32 + delta);
                }
            }
        }
    }
}

/// `dequantize_row_iq1_m`.
pub fn dequantize_iq1_m(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ1_M_BYTES).zip(y.chunks_exact_mut(256)) {
        let (qs, qh) = (&b[..32], &b[32..48]);
        let sc: [u16; 4] = std::array::from_fn(|i| u16::from_le_bytes([b[48 + 2 * i], b[49 + 2 * i]]));
        let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
        let d = f16_to_f32(bits);
        for ib in 0..8 {
            let s = sc[ib / 2] as i32;
            let dl1 = d * (2 * ((s >> (6 * (ib % 2))) & 0x7) + 1) as f32;
            let dl2 = d * (2 * ((s >> (6 * (ib % 2) + 3)) & 0x7) + 1) as f32;
            let (h0, h1) = (qh[2 * ib] as usize, qh[2 * ib + 1] as usize);
            let idx = [
                qs[4 * ib] as usize | ((h0 << 8) & 0x700),
                qs[4 * ib + 1] as usize | ((h0 << 4) & 0x700),
                qs[4 * ib + 2] as usize | ((h1 << 8) & 0x700),
                qs[4 * ib + 3] as usize | ((h1 << 4) & 0x700),
            ];
            let delta =
                [h0 & 0x08, h0 & 0x80, h1 & 0x08, h1 & 0x80].map(|m| if m != 0 { -IQ1S_DELTA } else { IQ1S_DELTA });
            for l in 0..4 {
                let g = IQ1S_GRID[idx[l]].to_le_bytes();
                let dl = if l < 2 { dl1 } else { dl2 };
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (g[j] as i8 as f32 + delta[l]);
                }
            }
        }
    }
}
