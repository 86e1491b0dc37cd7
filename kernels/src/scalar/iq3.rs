//! IQ3_XXS and IQ3_S (3.06 and 3.44 bits per weight): ports of ggml's
//! `quantize_row_iq3_xxs_impl`, `quantize_row_iq3_s_impl` and `dequantize_row_iq3_*`
//! (ggml/src/ggml-quants.c), operation for operation, sums in ggml's order.
//!
//! Each super-block of 256 values is quantized on its own; importance weights are optional
//! (without them each value weighs x²).

// The loops index several arrays by one position, as ggml's do.
#![allow(clippy::needless_range_loop)]

use super::common::{c_max, value_weights};
use super::iq_grids::{IQ3S_GRID, IQ3XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::iq_search::{Block, Codes, Evaluation, Searcher};
use super::iq_tables::{self, GgmlAbort, Lattice, check_scale};
use super::iq2::scale_code;
use crate::convert::{f16_to_f32, f32_to_f16};

/// ggml's `GROUP_MAX_EPS_IQ3_XXS`.
const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;
/// ggml's `kMaxQ` for the 3-bit grids: codes 0..=7.
const KMAXQ: i32 = 8;
/// Codes of the 3-bit grids.
const CODES: Codes = Codes { bits: 3, kmax: KMAXQ };

/// Bytes per super-block.
pub const IQ3_XXS_BYTES: usize = 98;
/// Bytes per super-block.
pub const IQ3_S_BYTES: usize = 110;

/// The grid index of 4 codes (ggml aborts if they are not on the grid).
#[inline]
fn on_grid(t: &Lattice<4>, l: &[i8]) -> Result<u16, GgmlAbort> {
    let u = l.iter().enumerate().fold(0usize, |u, (i, &q)| u | ((q as u8 as usize) << (3 * i)));
    t.index_of(u).ok_or(GgmlAbort)
}

/// The weights of a 32-value block: from the imatrix, or x².
#[inline]
fn block_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, weight: &mut [f32; 32], waux: &mut [f32; 32]) {
    value_weights(xb, qw, sigma2, weight);
    for (a, &w) in waux.iter_mut().zip(weight.iter()) {
        *a = w.sqrt();
    }
}

/// How the two 3-bit searches differ.
struct Search {
    /// Candidate scale steps: `is` in `-steps..=steps`, each `0.2`.
    steps: i32,
    /// Whether groups start as on the grid (IQ3_XXS) or off it (IQ3_S).
    start_on_grid: bool,
    /// Whether the refinement redoes on-grid groups too (IQ3_S).
    refine_all: bool,
}

/// The search of one 32-value block: the best scale over the candidates, refined where a
/// group fell off the grid. Codes end in `l` (always on the grid).
#[allow(clippy::too_many_arguments)]
fn search32<S: Searcher>(
    s: &S,
    t: &Lattice<4>,
    p: &Search,
    xval: &[f32; 32],
    weight: &[f32; 32],
    waux: &[f32; 32],
    max: f32,
    l: &mut [i8; 32],
    ev: &mut Evaluation,
) -> Result<f32, GgmlAbort> {
    let n = (2 * p.steps + 1) as usize;
    let mut candidates = [(0f32, 0f32); 31];
    s.candidates(&numerators(p)[..n], max, &mut candidates[..n]);
    s.evaluate(t, CODES, xval, weight, waux, &candidates[..n], 0xff, ev)?;
    refine32(s, t, p, xval, weight, waux, max, l, ev)
}

/// The candidates' numerators `2·kMaxQ − 1 + 0.2·(c − steps)` (the first `2·steps + 1`).
fn numerators(p: &Search) -> [f32; 31] {
    let mut numerators = [0f32; 31];
    for (c, v) in numerators[..(2 * p.steps + 1) as usize].iter_mut().enumerate() {
        *v = (2 * KMAXQ - 1) as f32 + (c as i32 - p.steps) as f32 * 0.2;
    }
    numerators
}

/// [`search32`] after its candidates' evaluation (`ev`): the choice among them and the
/// refinement.
#[allow(clippy::too_many_arguments)]
fn refine32<S: Searcher>(
    s: &S,
    t: &Lattice<4>,
    p: &Search,
    xval: &[f32; 32],
    weight: &[f32; 32],
    waux: &[f32; 32],
    max: f32,
    l: &mut [i8; 32],
    ev: &mut Evaluation,
) -> Result<f32, GgmlAbort> {
    let n = (2 * p.steps + 1) as usize;
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut on_grid = if p.start_on_grid { 0xffu8 } else { 0 };
    if let Some((c, sc)) = s.choose(ev, n) {
        scale = sc;
        ev.codes_of(c, l);
        on_grid = ev.on_grid[c];
    }
    if on_grid != 0xff && scale > 0.0 {
        let groups = if p.refine_all { 0xff } else { !on_grid };
        let (sumqx, sumq2) = s.refine(t, CODES, xval, weight, waux, (1.0 / scale, scale), groups, l, ev)?;
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Ok(scale)
}

/// One IQ3_XXS super-block (`quantize_row_iq3_xxs_impl` with grid size 256): 256 values, with
/// their 256 weights or without.
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq3_xxs_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: Option<&[f32]>,
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    const SEARCH: Search = Search { steps: 15, start_on_grid: true, refine_all: false };
    let t = iq_tables::iq3_xxs();
    let mut scales = [0f32; 8];
    let (mut weight, mut xval, mut waux) = ([0f32; 32], [0f32; 32], [0f32; 32]);
    let mut block_signs = [0u8; 4];
    let mut q3 = [0u8; 64];
    let mut scales_and_signs = [0u32; 8];
    let mut max_scale = 0.0f32;
    // Reused by every block: each evaluation writes what is read of it.
    let mut ev = Evaluation::default();
    let sigma2 = 2.0 * sum_x2 / 256.0;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        block_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut weight, &mut waux);
        for k in 0..4 {
            let r = 8 * k..8 * k + 8;
            block_signs[k] = s.signs8(&xb[r.clone()], &weight[r.clone()], &mut xval[r], true);
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = c_max(max, v);
        }
        if max < GROUP_MAX_EPS_IQ3_XXS {
            scales[ib] = 0.0;
            continue;
        }
        let mut l = [0i8; 32];
        let mut scale = search32(s, t, &SEARCH, &xval, &weight, &waux, max, &mut l, &mut ev)?;
        if scale < 0.0 {
            scale = -scale;
            for b in &mut block_signs {
                *b = !*b & 127;
            }
        }
        for k in 0..8 {
            q3[8 * ib + k] = on_grid(t, &l[4 * k..4 * k + 4])? as u8;
        }
        scales_and_signs[ib] = block_signs[0] as u32
            | (block_signs[1] as u32) << 7
            | (block_signs[2] as u32) << 14
            | (block_signs[3] as u32) << 21;
        check_scale(scale)?;
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    y[..IQ3_XXS_BYTES].fill(0);
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16(d * 1.0125).to_le_bytes());
    let id = 1.0 / d;
    for ib in 0..8 {
        scales_and_signs[ib] |= scale_code(id, scales[ib], 15) << 28;
    }
    y[2..66].copy_from_slice(&q3);
    for (o, s) in y[66..98].chunks_exact_mut(4).zip(scales_and_signs) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    Ok(())
}

/// One IQ3_S super-block (`quantize_row_iq3_s_impl` with blocks of 32): 256 values, with
/// their 256 weights or without.
/// `sum_x2` is the values' `Σx²` summed in order (ggml's `sumx2`).
pub fn quantize_iq3_s_block<S: Searcher>(
    s: &S,
    x: &[f32],
    qw: Option<&[f32]>,
    sum_x2: f32,
    y: &mut [u8],
) -> Result<(), GgmlAbort> {
    const SEARCH: Search = Search { steps: 9, start_on_grid: false, refine_all: true };
    const N: usize = 19;
    let t = iq_tables::iq3_s();
    let mut scales = [0f32; 8];
    let (mut weight, mut xval, mut waux) = ([[0f32; 32]; 2], [[0f32; 32]; 2], [[0f32; 32]; 2]);
    let mut max_scale = 0.0f32;
    y[..IQ3_S_BYTES].fill(0);
    // Reused by every block: each evaluation writes what is read of it.
    let (mut ev, mut ev_b) = (Evaluation::default(), Evaluation::default());
    let sigma2 = 2.0 * sum_x2 / 256.0;
    let numerators = numerators(&SEARCH);
    // ggml advances its `qs` and `signs` pointers only past blocks it quantizes: after an
    // all-zero block, the next block's grid indices and signs land in the skipped one's place.
    let mut at = 0;
    // Blocks two at a time: both searched blocks' candidates evaluated side by side.
    for pair in 0..4 {
        let mut block_signs = [[0u8; 4]; 2];
        let mut max = [0f32; 2];
        for h in 0..2 {
            let ib = 2 * pair + h;
            let xb = &x[32 * ib..32 * ib + 32];
            block_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut weight[h], &mut waux[h]);
            for k in 0..4 {
                let r = 8 * k..8 * k + 8;
                block_signs[h][k] = s.signs8(&xb[r.clone()], &weight[h][r.clone()], &mut xval[h][r], false);
            }
            max[h] = xval[h][0];
            for &v in &xval[h][1..] {
                max[h] = c_max(max[h], v);
            }
        }
        let mut candidates = [[(0f32, 0f32); N]; 2];
        for h in 0..2 {
            if max[h] != 0.0 {
                s.candidates(&numerators[..N], max[h], &mut candidates[h]);
            }
        }
        if max[0] != 0.0 && max[1] != 0.0 {
            let block =
                |h: usize| Block { xval: &xval[h], weight: &weight[h], waux: &waux[h], candidates: &candidates[h] };
            s.evaluate_pair(t, CODES, &block(0), &block(1), 0xff, &mut ev, &mut ev_b)?;
        }
        for h in 0..2 {
            let ib = 2 * pair + h;
            // An all-zero block is not searched (its scale stays 0).
            if max[h] == 0.0 {
                scales[ib] = 0.0;
                continue;
            }
            let ev = if h == 1 && max[0] != 0.0 { &mut ev_b } else { &mut ev };
            if max[1 - h] == 0.0 {
                s.evaluate(t, CODES, &xval[h], &weight[h], &waux[h], &candidates[h], 0xff, ev)?;
            }
            let mut l = [0i8; 32];
            let mut scale = refine32(s, t, &SEARCH, &xval[h], &weight[h], &waux[h], max[h], &mut l, ev)?;
            let block_signs = &mut block_signs[h];
            if scale < 0.0 {
                scale = -scale;
                for b in block_signs.iter_mut() {
                    *b = !*b;
                }
            }
            for k in 0..8 {
                let g = on_grid(t, &l[4 * k..4 * k + 4])?;
                y[2 + 8 * at + k] = g as u8;
                y[66 + ib] |= ((g >> 8) << k) as u8;
            }
            y[74 + 4 * at..78 + 4 * at].copy_from_slice(block_signs);
            at += 1;
            check_scale(scale)?;
            scales[ib] = scale;
            max_scale = c_max(max_scale, scale);
        }
    }
    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y[..2].copy_from_slice(&f32_to_f16(d * 1.033).to_le_bytes());
    let id = 1.0 / d;
    for ib in (0..8).step_by(2) {
        y[106 + ib / 2] = (scale_code(id, scales[ib], 15) | scale_code(id, scales[ib + 1], 15) << 4) as u8;
    }
    Ok(())
}

/// `dequantize_row_iq3_xxs`.
pub fn dequantize_iq3_xxs(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ3_XXS_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for ib in 0..8 {
            let qs = &b[2 + 8 * ib..10 + 8 * ib];
            let a = &b[66 + 4 * ib..70 + 4 * ib];
            let aux = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let g1 = IQ3XXS_GRID[qs[2 * l] as usize].to_le_bytes();
                let g2 = IQ3XXS_GRID[qs[2 * l + 1] as usize].to_le_bytes();
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * g1[j] as f32 * if signs & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                    y[j + 4] = db * g2[j] as f32 * if signs & KMASK_IQ2XS[j + 4] != 0 { -1.0 } else { 1.0 };
                }
            }
        }
    }
}

/// `dequantize_row_iq3_s`.
pub fn dequantize_iq3_s(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(IQ3_S_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let (qs, qh, signs, sc) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
        for ib in 0..8 {
            let db = d * (1 + 2 * ((sc[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32) as f32;
            for l in 0..4 {
                let h = qh[ib] as usize;
                let g1 = IQ3S_GRID[qs[8 * ib + 2 * l] as usize | ((h << (8 - 2 * l)) & 256)].to_le_bytes();
                let g2 = IQ3S_GRID[qs[8 * ib + 2 * l + 1] as usize | ((h << (7 - 2 * l)) & 256)].to_le_bytes();
                let s = signs[4 * ib + l];
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * g1[j] as f32 * if s & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                    y[j + 4] = db * g2[j] as f32 * if s & KMASK_IQ2XS[j + 4] != 0 { -1.0 } else { 1.0 };
                }
            }
        }
    }
}
