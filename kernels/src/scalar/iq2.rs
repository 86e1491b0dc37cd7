//! IQ2_XXS, IQ2_XS and IQ2_S (2.06, 2.31 and 2.56 bits per weight): ports of ggml's
//! `quantize_row_iq2_xxs_impl`, `quantize_row_iq2_xs_impl`, `quantize_row_iq2_s_impl` and
//! `dequantize_row_iq2_*` (ggml/src/ggml-quants.c), operation for operation: the sums are
//! sequential, in ggml's order, as a reordering changes bytes.
//!
//! Each super-block of 256 values is quantized on its own, with importance weights `qw` (the
//! imatrix columns of those 256 values) when given. IQ2_XXS and IQ2_XS need them: ggml asserts
//! on their absence, and so the callers refuse.

// The loops index several arrays by one position, as ggml's do.
#![allow(clippy::needless_range_loop)]

use super::common::{GROUP_MAX_EPS, c_max, imatrix_weights, nearest_int};
use super::iq_grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::iq_search::{Block, Codes, Evaluation, Searcher};
use super::iq_tables::{self, GgmlAbort, Lattice, check_scale};
use crate::convert::{f16_to_f32, f32_to_f16};
/// ggml's `GROUP_MAX_EPS_IQ2_S`.
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;
/// ggml's `kMaxQ` for the 2-bit grids: codes 0..=2, positions 1, 3, 5.
const KMAXQ: i32 = 3;
/// Codes of the 2-bit grids.
const CODES: Codes = Codes { bits: 2, kmax: KMAXQ };

/// Bytes per super-block.
pub const IQ2_XXS_BYTES: usize = 66;
/// Bytes per super-block.
pub const IQ2_XS_BYTES: usize = 74;
/// Bytes per super-block.
pub const IQ2_S_BYTES: usize = 82;

/// The packed code of 8 codes, and its grid index (ggml aborts if it is not on the grid).
#[inline]
fn on_grid(t: &Lattice<8>, l: &[i8]) -> Result<u16, GgmlAbort> {
    let u = l.iter().enumerate().fold(0usize, |u, (i, &q)| u | ((q as u8 as usize) << (2 * i)));
    t.index_of(u).ok_or(GgmlAbort)
}

/// Magnitudes of 8 values into `xval` and their sign bits. With `even` (IQ2_XXS, IQ2_XS, IQ3_XXS),
/// an odd number of negatives is made even by flipping the value of least weight·x², and 7 bits
/// are kept.
#[inline]
pub(crate) fn signs8(xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
    let mut nflip = 0;
    let mut s = 0u8;
    for i in 0..8 {
        if xb[i] >= 0.0 {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            nflip += 1;
            s |= 1 << i;
        }
    }
    if !even {
        return s;
    }
    if nflip % 2 == 1 {
        let mut imin = 0;
        let mut min = weight[0] * xb[0] * xb[0];
        for i in 1..8 {
            let ax = weight[i] * xb[i] * xb[i];
            if ax < min {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// The 4-bit super-block code of a block scale: `nearest_int(0.5·(id·scale − 1))` in 0..=15.
#[inline]
pub(crate) fn scale_code(id: f32, scale: f32, max: i32) -> u32 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, max) as u32
}

/// One IQ2_XXS super-block (`quantize_row_iq2_xxs_impl`): 256 values, their 256 weights.
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq2_xxs_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: &[f32],
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    let t = iq_tables::iq2_xxs();
    let mut scales = [0f32; 8];
    let (mut weight, mut xval, mut waux) = ([[0f32; 32]; 8], [[0f32; 32]; 8], [[0f32; 32]; 8]);
    let mut block_signs = [[0u8; 4]; 8];
    let mut q2 = [0u32; 16];
    let mut max_scale = 0.0f32;
    // Reused by every block: each evaluation writes what is read of it.
    let mut ev = Evaluation::default();
    let sigma2 = sum_x2 / 256.0;
    // Every block's weights and magnitudes first, then their first scales together (the
    // searcher may run the blocks side by side), then the searches block by block.
    let mut nonzero = 0u8;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let (weight, xval) = (&mut weight[ib], &mut xval[ib]);
        imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], sigma2, weight);
        for (a, &w) in waux[ib].iter_mut().zip(weight.iter()) {
            *a = w.sqrt();
        }
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            block_signs[ib][k] = s.signs8(&xb[r.clone()], &weight[r.clone()], &mut xval[r], true);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = c_max(max, v);
        }
        if max >= GROUP_MAX_EPS {
            nonzero |= 1 << ib;
        }
    }
    // ggml's codes from `make_qp_quants` never reach the output: a chosen candidate's replace
    // them, and without one the scale is positive and the refinement replaces them.
    let first = s.qp_scales8(KMAXQ + 1, &xval, &weight, nonzero);
    for ib in 0..8 {
        let (weight, xval, waux, block_signs) = (&weight[ib], &xval[ib], &waux[ib], &mut block_signs[ib]);
        if nonzero & (1 << ib) == 0 {
            scales[ib] = 0.0;
            continue;
        }
        let mut scale = first[ib];
        let mut l = [0i8; 32];
        let eff_max = scale * KMAXQ as f32;
        if eff_max <= 0.0 {
            scales[ib] = 0.0;
            continue;
        }
        let numerators: [f32; 13] = std::array::from_fn(|c| (2 * KMAXQ - 1) as f32 + (c as i32 - 6) as f32 * 0.1);
        let mut candidates = [(0f32, 0f32); 13];
        s.candidates(&numerators, eff_max, &mut candidates);
        s.evaluate(t, CODES, xval, weight, waux, &candidates, 0xf, &mut ev)?;
        if let Some((c, sc)) = ev.choose(13) {
            scale = sc;
            ev.codes_of(c, &mut l);
        }
        if scale > 0.0 {
            s.evaluate(t, CODES, xval, weight, waux, &[(1.0 / scale, scale)], 0xf, &mut ev)?;
            ev.codes_of(0, &mut l);
            if ev.sumq2[0] > 0.0 {
                scale = ev.sumqx[0] / ev.sumq2[0];
            }
        }
        if scale < 0.0 {
            scale = -scale;
            for b in block_signs.iter_mut() {
                *b = !*b & 127;
            }
        }
        for k in 0..4 {
            let g = on_grid(t, &l[8 * k..8 * k + 8])?;
            q2[2 * ib] |= (g as u32) << (8 * k);
            q2[2 * ib + 1] |= (block_signs[k] as u32) << (7 * k);
        }
        check_scale(scale)?;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    y[..IQ2_XXS_BYTES].fill(0);
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let id = 1.0 / d;
    for ib in 0..8 {
        q2[2 * ib + 1] |= scale_code(id, scales[ib], 15) << 28;
    }
    for (o, q) in y[2..IQ2_XXS_BYTES].chunks_exact_mut(4).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
    Ok(())
}

/// The block search shared by IQ2_XS and IQ2_S (16 values, two groups of 8): the best scale
/// over ggml's 19 candidates, refined where a group fell off the grid. Codes end in `l`.
#[allow(clippy::too_many_arguments)]
fn search16<S: Searcher>(
    s: &S,
    t: &Lattice<8>,
    xval: &[f32; 16],
    weight: &[f32; 16],
    waux: &[f32; 16],
    max: f32,
    l: &mut [i8; 16],
    ev: &mut Evaluation,
) -> Result<f32, GgmlAbort> {
    let mut candidates = [(0f32, 0f32); 19];
    s.candidates(&NUMERATORS16, max, &mut candidates);
    s.evaluate(t, CODES, xval, weight, waux, &candidates, 0b11, ev)?;
    refine16(s, t, xval, weight, waux, max, l, ev)
}

/// [`search16`]'s candidates' numerators, `2·kMaxQ − 1 + 0.1·(c − 9)`.
const NUMERATORS16: [f32; 19] = {
    let mut n = [0f32; 19];
    let mut c = 0;
    while c < 19 {
        n[c] = (2 * KMAXQ - 1) as f32 + (c as i32 - 9) as f32 * 0.1;
        c += 1;
    }
    n
};

/// [`search16`] after its candidates' evaluation (`ev`): the choice among them and the
/// refinement.
#[allow(clippy::too_many_arguments)]
fn refine16<S: Searcher>(
    s: &S,
    t: &Lattice<8>,
    xval: &[f32; 16],
    weight: &[f32; 16],
    waux: &[f32; 16],
    max: f32,
    l: &mut [i8; 16],
    ev: &mut Evaluation,
) -> Result<f32, GgmlAbort> {
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut on_grid = 0b11u8;
    if let Some((c, sc)) = ev.choose(19) {
        scale = sc;
        ev.codes_of(c, l);
        on_grid = ev.on_grid[c];
    }
    if on_grid != 0b11 && scale > 0.0 {
        let (sumqx, sumq2) = s.refine(t, CODES, xval, weight, waux, (1.0 / scale, scale), !on_grid & 0b11, l, ev)?;
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Ok(scale)
}

/// One IQ2_XS super-block (`quantize_row_iq2_xs_impl`): 256 values, their 256 weights.
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq2_xs_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: &[f32],
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    let t = iq_tables::iq2_xs();
    let mut scales = [0f32; 16];
    let (mut weight, mut xval, mut waux) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let mut block_signs = [0u8; 2];
    let mut q2 = [0u16; 32];
    let mut max_scale = 0.0f32;
    // Reused by every block: each evaluation writes what is read of it.
    let mut ev = Evaluation::default();
    let sigma2 = sum_x2 / 256.0;
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        imatrix_weights(xb, &qw[16 * ib..16 * ib + 16], sigma2, &mut weight);
        for (a, &w) in waux.iter_mut().zip(&weight) {
            *a = w.sqrt();
        }
        for k in 0..2 {
            let r = 8 * k..8 * k + 8;
            block_signs[k] = s.signs8(&xb[r.clone()], &weight[r.clone()], &mut xval[r], true);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = c_max(max, v);
        }
        if max < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut l = [0i8; 16];
        let mut scale = search16(s, t, &xval, &weight, &waux, max, &mut l, &mut ev)?;
        if scale < 0.0 {
            scale = -scale;
            for b in &mut block_signs {
                *b = !*b & 127;
            }
        }
        for k in 0..2 {
            let g = on_grid(t, &l[8 * k..8 * k + 8])?;
            q2[2 * ib + k] = g | ((block_signs[k] as u16) << 9);
        }
        check_scale(scale)?;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    y[..IQ2_XS_BYTES].fill(0);
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let id = 1.0 / d;
    for (o, q) in y[2..66].chunks_exact_mut(2).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
    for ib in 0..16 {
        y[66 + ib / 2] |= (scale_code(id, scales[ib], 15) << (4 * (ib % 2))) as u8;
    }
    Ok(())
}

/// One IQ2_S super-block (`quantize_row_iq2_s_impl`): 256 values, with their 256 weights or
/// without (then each value weighs `0.25·sigma2 + x²`).
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq2_s_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: Option<&[f32]>,
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    let t = iq_tables::iq2_s();
    let mut scales = [0f32; 16];
    let (mut weight, mut xval, mut waux) = ([[0f32; 16]; 2], [[0f32; 16]; 2], [[0f32; 16]; 2]);
    let mut max_scale = 0.0f32;
    y[..IQ2_S_BYTES].fill(0);
    // Reused by every block: each evaluation writes what is read of it.
    let (mut ev, mut ev_b) = (Evaluation::default(), Evaluation::default());
    let sigma2 = 2.0 * sum_x2 / 256.0;
    // Blocks two at a time: both searched blocks' candidates evaluated side by side.
    for pair in 0..8 {
        let mut block_signs = [[0u8; 2]; 2];
        let mut max = [0f32; 2];
        for h in 0..2 {
            let ib = 2 * pair + h;
            let xb = &x[16 * ib..16 * ib + 16];
            let weight = &mut weight[h];
            match qw {
                Some(qw) => imatrix_weights(xb, &qw[16 * ib..16 * ib + 16], sigma2, weight),
                None => {
                    for (w, &v) in weight.iter_mut().zip(xb) {
                        *w = 0.25 * sigma2 + v * v;
                    }
                }
            }
            for (a, &w) in waux[h].iter_mut().zip(weight.iter()) {
                *a = w.sqrt();
            }
            for k in 0..2 {
                let r = 8 * k..8 * k + 8;
                block_signs[h][k] = s.signs8(&xb[r.clone()], &weight[r.clone()], &mut xval[h][r], false);
            }
            max[h] = xval[h][0];
            for &v in &xval[h][1..] {
                max[h] = c_max(max[h], v);
            }
        }
        // Blocks below the threshold are not searched (their scale stays 0).
        let searched = max.map(|m| m >= GROUP_MAX_EPS_IQ2_S);
        let mut candidates = [[(0f32, 0f32); 19]; 2];
        for h in 0..2 {
            if searched[h] {
                s.candidates(&NUMERATORS16, max[h], &mut candidates[h]);
            }
        }
        if searched[0] && searched[1] {
            let block =
                |h: usize| Block { xval: &xval[h], weight: &weight[h], waux: &waux[h], candidates: &candidates[h] };
            s.evaluate_pair(t, CODES, &block(0), &block(1), 0b11, &mut ev, &mut ev_b)?;
        }
        for h in 0..2 {
            let ib = 2 * pair + h;
            if !searched[h] {
                scales[ib] = 0.0;
                continue;
            }
            let ev = if h == 1 && searched[0] { &mut ev_b } else { &mut ev };
            if !searched[1 - h] {
                s.evaluate(t, CODES, &xval[h], &weight[h], &waux[h], &candidates[h], 0b11, ev)?;
            }
            let mut l = [0i8; 16];
            let mut scale = refine16(s, t, &xval[h], &weight[h], &waux[h], max[h], &mut l, ev)?;
            let block_signs = &mut block_signs[h];
            if scale < 0.0 {
                scale = -scale;
                for b in block_signs.iter_mut() {
                    *b = !*b;
                }
            }
            for k in 0..2 {
                let g = on_grid(t, &l[8 * k..8 * k + 8])?;
                let i8 = 2 * ib + k;
                y[2 + i8] = g as u8;
                y[66 + i8 / 4] |= ((g >> 8) << (2 * (i8 % 4))) as u8;
                y[2 + 32 + i8] = block_signs[k];
            }
            check_scale(scale)?;
            scales[ib] = scale;
            max_scale = c_max(max_scale, scale);
        }
    }
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16(d * 0.9875).to_le_bytes());
    let id = 1.0 / d;
    for ib in 0..16 {
        let code = scale_code(id, scales[ib], 15) as u8;
        if ib % 2 == 0 {
            y[74 + ib / 2] = code;
        } else {
            y[74 + ib / 2] |= code << 4;
        }
    }
    Ok(())
}

/// 8 values of a grid entry times `db`, signs applied (`dequantize_row_iq2_*`'s inner loop).
#[inline]
fn put8(y: &mut [f32], db: f32, grid: u64, signs: u8) {
    let g = grid.to_le_bytes();
    for j in 0..8 {
        y[j] = db * g[j] as f32 * if signs & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
    }
}

/// `dequantize_row_iq2_xxs`.
pub fn dequantize_iq2_xxs(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ2_XXS_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for ib in 0..8 {
            let q = &b[2 + 8 * ib..2 + 8 * ib + 8];
            let aux1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                put8(&mut y[32 * ib + 8 * l..], db, IQ2XXS_GRID[q[l] as usize], signs);
            }
        }
    }
}

/// `dequantize_row_iq2_xs`.
pub fn dequantize_iq2_xs(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ2_XS_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for ib in 0..8 {
            let s = b[66 + ib];
            let db = [d * (0.5 + (s & 0xf) as f32) * 0.25, d * (0.5 + (s >> 4) as f32) * 0.25];
            for l in 0..4 {
                let at = 2 + 2 * (4 * ib + l);
                let q = u16::from_le_bytes([b[at], b[at + 1]]);
                put8(
                    &mut y[32 * ib + 8 * l..],
                    db[l / 2],
                    IQ2XS_GRID[(q & 511) as usize],
                    KSIGNS_IQ2XS[(q >> 9) as usize],
                );
            }
        }
    }
}

/// `dequantize_row_iq2_s`.
pub fn dequantize_iq2_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ2_S_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let (qs, signs, qh, sc) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
        for ib in 0..8 {
            let db = [d * (0.5 + (sc[ib] & 0xf) as f32) * 0.25, d * (0.5 + (sc[ib] >> 4) as f32) * 0.25];
            for l in 0..4 {
                let index = qs[4 * ib + l] as usize | (((qh[ib] as usize) << (8 - 2 * l)) & 0x300);
                put8(&mut y[32 * ib + 8 * l..], db[l / 2], IQ2S_GRID[index], signs[4 * ib + l]);
            }
        }
    }
}
