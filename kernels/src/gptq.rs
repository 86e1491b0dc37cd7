//! GPTQ rounding inside ggml's block formats: codes chosen to minimize the error of a layer's
//! *output* on calibration inputs rather than of its weights, written as ordinary blocks of
//! the ggml type (any ggml build dequantizes them unchanged).
//!
//! Method: GPTQ, Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers" (arXiv:2210.17323, ICLR 2023),
//! Algorithm 1, without its lazy batch updates (they change only the speed). For a weight matrix `W` (rows = outputs,
//! columns = inputs) and the Hessian of its input `H = Σ_t x_t x_tᵀ` over calibration tokens,
//! the output error `Σ_t ‖(W − Ŵ) x_t‖²` is minimized greedily column by column: each column
//! is rounded, and its rounding error is moved onto the columns not yet rounded through the
//! upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`; `w_j −= (w_i − ŵ_i) / U_ii · U_ij` for
//! `j > i`). Rows are independent given `U`.
//!
//! Inside a ggml block format the grid of a column depends on its block's scales (and mins),
//! which the format lets the quantizer choose, with ggml's own importance-weighted search for
//! the type ([`crate::scalar::weighted::quantize_rows`]: `make_qkx2_quants`, `make_qx_quants`,
//! `make_qp_quants`, … as `quantize_row_*_impl`). Two sweeps, as in GPTQ's reference code:
//! - left to right ([`Factor::from_hessian`]): when the sweep reaches the first column of a
//!   (super-)block, that block's scales are chosen from the *current* (error-updated) values
//!   of the row (GPTQ's grouped quantization, the group being the ggml block);
//! - act-order ([`Factor::from_hessian_ordered`] with `act_order`): the columns are taken by
//!   decreasing `diag H`, and every block's scales are chosen first from the row's own values
//!   (GPTQ's `static_groups`, needed because a block's columns are no longer visited together).
//!
//! Each value is rounded to the nearest code of its block's grid (the value ggml's dequantizer
//! gives for the code, computed with its exact float operations), and its error fed forward.
//!
//! MXFP4 (blocks of 32 E2M1 codes {0, ½, 1, 1½, 2, 3, 4, 6}·sign with one E8M0 power-of-two
//! scale): the block's exponent is chosen first by [`mxfp4_block_exponent`] (ggml's choice or
//! a neighbour, by the importance-weighted round-to-nearest error), then each value goes to
//! the nearest code of that scale (ggml's `best_index_mxfp4`) with GPTQ's error feedback;
//! the result is an ordinary `block_mxfp4` (OpenAI's layout is a permutation of its nibbles).
//!
//! Supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4
//! ([`supports`]). The lattice i-quants (IQ1_*, IQ2_*, IQ3_*) and the ternary types are not:
//! callers round them as ggml does.

use crate::QuantType;
use crate::backend::{Refusal, first_non_finite};
use crate::convert::f16_to_f32;
use crate::scalar::common::nearest_int;
use crate::scalar::iq4::{KVALUES_IQ4NL, best_index, pack_block};
use crate::scalar::{kquants, mxfp4, q2k_q3k, weighted};

/// Why a Hessian cannot be factored or rows cannot be rounded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GptqError {
    /// The Hessian holds a NaN or an infinity, or has the wrong size.
    #[error("the Hessian is unusable: {0}")]
    BadHessian(String),
    /// Not positive definite even with the damping raised 1000-fold.
    #[error("the damped Hessian is not positive definite (pivot {pivot} at column {column})")]
    NotPositiveDefinite {
        /// The column where the factorization failed.
        column: usize,
        /// The pivot found there.
        pivot: f64,
    },
    /// The type has no GPTQ rounding here (see [`supports`]).
    #[error("GPTQ rounding to {0} is not supported")]
    Unsupported(&'static str),
    /// Lengths do not fit (values, bytes, weights, factor).
    #[error("{0}")]
    Length(String),
    /// A value or importance weight is not finite (or a weight is negative).
    #[error("value {index} is {value}, which cannot be quantized")]
    NonFinite {
        /// Its index in the input.
        index: usize,
        /// The value.
        value: f32,
    },
    /// ggml's quantizer refuses a block (see [`crate::KernelError::Degenerate`]).
    #[error("block {0} cannot be quantized: its values are too large")]
    Degenerate(usize),
}

/// The types [`quantize_rows`] rounds with GPTQ.
pub fn supports(ty: QuantType) -> bool {
    use QuantType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_NL | IQ4_XS | MXFP4)
}

/// The shared exponent GPTQ gives an MXFP4 block of values `x` (32) with importance weights
/// `qw`: among ggml's choice `e₀ = floor(log2 amax) − 2 + 127` ([`mxfp4::shared_exponent`],
/// which may clip values up to 8·2^(e₀−128)… to 6·scale), `e₀ + 1` (OpenAI's choice, the
/// smallest power of two ≥ amax/6, is `e₀` or `e₀ + 1`) and `e₀ − 1`, the one whose
/// round-to-nearest error `Σ qw_i (x_i − x̂_i)²` is least (ties: `e₀`, then `e₀ + 1`).
pub fn mxfp4_block_exponent(x: &[f32], qw: &[f32]) -> u8 {
    let amax = x.iter().fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
    let e0 = mxfp4::shared_exponent(amax);
    let error = |e: u8| -> f64 {
        let d = mxfp4::e8m0_to_f32_half(e);
        x.iter()
            .zip(qw)
            .map(|(&v, &w)| {
                let q = mxfp4::KVALUES[mxfp4::best_index(v, d) as usize] as f32 * d;
                w as f64 * ((v - q) as f64).powi(2)
            })
            .sum()
    };
    let mut best = (error(e0), e0);
    for e in [e0.checked_add(1).filter(|&e| e <= 254), e0.checked_sub(1)].into_iter().flatten() {
        let err = error(e);
        if err < best.0 {
            best = (err, e);
        }
    }
    best.1
}

/// Chooses one block's scales (and mins) from `x` into the block's head in `b`: ggml's
/// importance-weighted search for the type, or [`mxfp4_block_exponent`] for MXFP4.
fn choose_scales(ty: QuantType, x: &[f32], b: &mut [u8], qw: &[f32]) -> Result<(), Refusal> {
    if ty == QuantType::MXFP4 {
        b[0] = mxfp4_block_exponent(x, qw);
        return Ok(());
    }
    weighted::quantize_rows(ty, x, b, x.len(), qw)
}

/// GPTQ's damping: `λ = 0.01 · mean(diag H)` (the paper's default `percdamp`).
pub const DAMP: f64 = 0.01;

/// The upper Cholesky factor `U` of the damped inverse Hessian of one input (`H⁻¹ = UᵀU`),
/// `cols × cols` f32, row-major (only the upper triangle is read): what the GPTQ sweep needs.
#[derive(Clone, Debug)]
pub struct Factor {
    cols: usize,
    u: Vec<f32>,
    /// The column order of the sweep (GPTQ's act-order: decreasing `diag H`); empty for left
    /// to right. `u` is in this order.
    perm: Vec<u32>,
}

impl Factor {
    /// Factors the Hessian `h` (`cols × cols`, row-major, symmetric: `Σ_t x_t x_tᵀ` in any
    /// consistent scale) as GPTQ does: a column whose diagonal is 0 (an input that was always
    /// 0) gets diagonal 1, `damp · mean(diag)` is added to the diagonal, then `U` is the
    /// inverse of the upper triangular `V` with `H = V Vᵀ` (the Cholesky factor of `H` with
    /// the order of columns reversed; then `H⁻¹ = V⁻ᵀ V⁻¹ = UᵀU`). Computed in f64. If the
    /// damped matrix is not positive definite (rounding in a near-singular Hessian), the
    /// damping is raised tenfold, up to three times.
    ///
    /// Errors: `h` is not `cols²` long or holds a non-finite value; still not positive
    /// definite.
    pub fn from_hessian(h: &[f64], cols: usize, damp: f64) -> Result<Factor, GptqError> {
        Self::from_hessian_ordered(h, cols, damp, false)
    }

    /// [`Factor::from_hessian`], with `act_order` for GPTQ's act-order: the sweep takes the
    /// columns by decreasing `diag H` (ties by index) and `U` is that of the permuted Hessian.
    ///
    /// Errors: as [`Factor::from_hessian`].
    pub fn from_hessian_ordered(h: &[f64], cols: usize, damp: f64, act_order: bool) -> Result<Factor, GptqError> {
        if h.len() != cols * cols {
            return Err(GptqError::BadHessian(format!("{} values for {cols} columns", h.len())));
        }
        if !act_order {
            return Self::factor_natural(h, cols, damp);
        }
        let mut perm: Vec<u32> = (0..cols as u32).collect();
        perm.sort_by(|&a, &b| {
            let (x, y) = (h[a as usize * cols + a as usize], h[b as usize * cols + b as usize]);
            y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
        });
        let mut p = vec![0f64; cols * cols];
        for (i, &pi) in perm.iter().enumerate() {
            for (j, &pj) in perm.iter().enumerate() {
                p[i * cols + j] = h[pi as usize * cols + pj as usize];
            }
        }
        let mut f = Self::factor_natural(&p, cols, damp)?;
        f.perm = perm;
        Ok(f)
    }

    fn factor_natural(h: &[f64], cols: usize, damp: f64) -> Result<Factor, GptqError> {
        if h.len() != cols * cols {
            return Err(GptqError::BadHessian(format!("{} values for {cols} columns", h.len())));
        }
        if let Some(i) = h.iter().position(|v| !v.is_finite()) {
            return Err(GptqError::BadHessian(format!("entry ({}, {}) is {}", i / cols, i % cols, h[i])));
        }
        let mut base = h.to_vec();
        for i in 0..cols {
            if base[i * cols + i] <= 0.0 {
                base[i * cols + i] = 1.0;
            }
        }
        let mean = (0..cols).map(|i| base[i * cols + i]).sum::<f64>() / cols.max(1) as f64;
        let mut last = None;
        for k in 0..4 {
            let lambda = damp * 10f64.powi(k) * mean;
            let mut a = base.clone();
            for i in 0..cols {
                a[i * cols + i] += lambda;
            }
            match reverse_cholesky(&mut a, cols) {
                Ok(()) => return Ok(Factor { cols, u: upper_inverse(&a, cols), perm: Vec::new() }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(GptqError::BadHessian("empty".into())))
    }

    /// A factor from its upper triangle `u` (`cols × cols`, row-major, as [`Factor::upper`]
    /// gives it: a factor stored and read back).
    ///
    /// Errors: `u` is not `cols²` long, or a diagonal entry is 0 or not finite.
    pub fn from_upper(cols: usize, u: Vec<f32>, perm: Vec<u32>) -> Result<Factor, GptqError> {
        let mut seen = vec![false; if perm.is_empty() { 0 } else { cols }];
        if !perm.is_empty()
            && (perm.len() != cols
                || perm.iter().any(|&p| p as usize >= cols || std::mem::replace(&mut seen[p as usize], true)))
        {
            return Err(GptqError::Length(format!("the column order is not a permutation of {cols} columns")));
        }
        if u.len() != cols * cols {
            return Err(GptqError::Length(format!("{} values for a {cols} × {cols} factor", u.len())));
        }
        if let Some(i) = (0..cols).find(|&i| !(u[i * cols + i].is_finite() && u[i * cols + i] != 0.0)) {
            return Err(GptqError::BadHessian(format!("factor diagonal {i} is {}", u[i * cols + i])));
        }
        Ok(Factor { cols, u, perm })
    }

    /// `U`, `cols × cols` row-major (zeros below the diagonal).
    pub fn upper(&self) -> &[f32] {
        &self.u
    }

    /// The sweep's column order (empty: left to right).
    pub fn order(&self) -> &[u32] {
        &self.perm
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i` of `U` (`cols` values; those before `i` are 0).
    fn row(&self, i: usize) -> &[f32] {
        &self.u[i * self.cols..(i + 1) * self.cols]
    }
}

/// In place: the upper triangular `V` with `A = V Vᵀ` (row-major; the lower triangle is left
/// as it was and never read again). Columns from the last to the first:
/// `V_jj = √(A_jj − Σ_{k>j} V_jk²)`, `V_ij = (A_ij − Σ_{k>j} V_ik V_jk) / V_jj` for `i < j`.
fn reverse_cholesky(a: &mut [f64], n: usize) -> Result<(), GptqError> {
    for j in (0..n).rev() {
        let (top, rest) = a.split_at_mut(j * n);
        let row_j = &rest[..n];
        let s: f64 = row_j[j + 1..].iter().map(|v| v * v).sum();
        let pivot = row_j[j] - s;
        if pivot <= 0.0 || !pivot.is_finite() {
            return Err(GptqError::NotPositiveDefinite { column: j, pivot });
        }
        let d = pivot.sqrt();
        rest[j] = d;
        let row_j = &rest[..n];
        for row_i in top.chunks_exact_mut(n) {
            let dot: f64 = row_i[j + 1..].iter().zip(&row_j[j + 1..]).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / d;
        }
    }
    Ok(())
}

/// `U = V⁻¹` for the upper triangular `V` in the upper triangle of `v` (row-major), as f32.
/// Computed as `W = L⁻¹` for the lower triangular `L = Vᵀ`, row by row
/// (`W_i = (e_i − Σ_{k<i} L_ik W_k) / L_ii`), then `U = Wᵀ`.
fn upper_inverse(v: &[f64], n: usize) -> Vec<f32> {
    let mut w = vec![0f64; n * n];
    for i in 0..n {
        let (done, rest) = w.split_at_mut(i * n);
        let row = &mut rest[..n];
        row[i] = 1.0;
        for k in 0..i {
            let l_ik = v[k * n + i];
            if l_ik != 0.0 {
                for (x, &y) in row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *x -= l_ik * y;
                }
            }
        }
        let l_ii = v[i * n + i];
        for x in &mut row[..=i] {
            *x /= l_ii;
        }
    }
    let mut u = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = w[i * n + j] as f32;
        }
    }
    u
}

/// How a code becomes a grid point: itself, or an entry of a type's table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Table {
    /// `t(q) = q`.
    #[default]
    Linear,
    /// IQ4_NL's and IQ4_XS's `kvalues_iq4nl`.
    Iq4nl,
    /// MXFP4's `kvalues_mxfp4` (twice the E2M1 values; `a` is `GGML_E8M0_TO_FP32_HALF(e)`).
    Mxfp4,
}

/// The grid one value of a block can take once the block's scales are chosen:
/// `a · t(q) − b` for codes `q` in `lo..=hi`, `t` the identity or a type's table; stored as
/// `q + offset`. The float operations are those of the type's ggml dequantizer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Cell {
    a: f32,
    b: f32,
    lo: i32,
    hi: i32,
    offset: i32,
    table: Table,
}

impl Cell {
    /// The value code `q` dequantizes to.
    fn value(&self, q: i32) -> f32 {
        let t = match self.table {
            Table::Linear => q as f32,
            Table::Iq4nl => KVALUES_IQ4NL[q.clamp(0, 15) as usize] as f32,
            Table::Mxfp4 => mxfp4::KVALUES[q.clamp(0, 15) as usize] as f32,
        };
        self.a * t - self.b
    }

    /// The code nearest `x`, rounded as ggml's own quantizers round to fixed scales
    /// (`nearest_int((x + m) / d)`, `best_index(x / d)` for IQ4's table, `best_index_mxfp4(x, d)`
    /// for MXFP4's).
    fn nearest(&self, x: f32) -> i32 {
        match self.table {
            Table::Iq4nl => {
                let inv = if self.a != 0.0 { 1.0 / self.a } else { 0.0 };
                return best_index(inv * x) as i32;
            }
            Table::Mxfp4 => return mxfp4::best_index(x, self.a) as i32,
            Table::Linear => {}
        }
        if self.a == 0.0 {
            return 0i32.clamp(self.lo, self.hi);
        }
        let t = ((x + self.b) / self.a).clamp(self.lo as f32 - 1.0, self.hi as f32 + 1.0);
        nearest_int(t).clamp(self.lo, self.hi)
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The cells of every value of one block of `ty` whose scales (head) are in `b`.
fn cells(ty: QuantType, b: &[u8], out: &mut [Cell]) {
    use QuantType::*;
    let linear = |a: f32, b: f32, lo: i32, hi: i32, offset: i32| Cell { a, b, lo, hi, offset, table: Table::Linear };
    match ty {
        Q8_0 => out.fill(linear(f16_at(b, 0), 0.0, -127, 127, 0)),
        Q4_0 => out.fill(linear(f16_at(b, 0), 0.0, -8, 7, 8)),
        Q5_0 => out.fill(linear(f16_at(b, 0), 0.0, -16, 15, 16)),
        Q4_1 => out.fill(linear(f16_at(b, 0), -f16_at(b, 2), 0, 15, 0)),
        Q5_1 => out.fill(linear(f16_at(b, 0), -f16_at(b, 2), 0, 31, 0)),
        IQ4_NL => out.fill(Cell { a: f16_at(b, 0), b: 0.0, lo: 0, hi: 15, offset: 0, table: Table::Iq4nl }),
        MXFP4 => {
            out.fill(Cell { a: mxfp4::e8m0_to_f32_half(b[0]), b: 0.0, lo: 0, hi: 15, offset: 0, table: Table::Mxfp4 })
        }
        Q4_K | Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let hi = if ty == Q4_K { 15 } else { 31 };
            for (j, sub) in out.chunks_exact_mut(32).enumerate() {
                let (s, m) = kquants::scale_min_k4(j, &b[4..16]);
                sub.fill(linear(d * s as f32, dmin * m as f32, 0, hi, 0));
            }
        }
        Q6_K => {
            let d = f16_at(b, 208);
            for (j, sub) in out.chunks_exact_mut(16).enumerate() {
                sub.fill(linear(d * (b[192 + j] as i8) as f32, 0.0, -32, 31, 32));
            }
        }
        Q2_K => {
            let (d, min) = (f16_at(b, 80), f16_at(b, 82));
            for (j, sub) in out.chunks_exact_mut(16).enumerate() {
                sub.fill(linear(d * (b[j] & 0xF) as f32, min * (b[j] >> 4) as f32, 0, 3, 0));
            }
        }
        Q3_K => {
            let d = f16_at(b, 108);
            for (j, sub) in out.chunks_exact_mut(16).enumerate() {
                let sc = q2k_q3k::q3_k_scale(j, &b[96..108]) as i32 - 32;
                sub.fill(linear(d * sc as f32, 0.0, -4, 3, 4));
            }
        }
        IQ4_XS => {
            let d = f16_at(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            for (ib, sub) in out.chunks_exact_mut(32).enumerate() {
                let ls =
                    ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
                sub.fill(Cell { a: d * (ls - 32) as f32, b: 0.0, lo: 0, hi: 15, offset: 0, table: Table::Iq4nl });
            }
        }
        _ => {}
    }
}

/// Packs one block's stored codes (`q + offset` of each value) after its head, as ggml's
/// quantizer for `ty` packs them.
fn pack(ty: QuantType, codes: &[i32], b: &mut [u8]) {
    use QuantType::*;
    let u8s = |at: usize| -> [u8; 32] { std::array::from_fn(|i| codes[at + i] as u8) };
    match ty {
        Q8_0 => {
            for (o, &q) in b[2..34].iter_mut().zip(codes) {
                *o = q as i8 as u8;
            }
        }
        Q4_0 => weighted::pack_codes(&u8s(0), &mut b[2..], false),
        Q5_0 => weighted::pack_codes(&u8s(0), &mut b[2..], true),
        Q4_1 => weighted::pack_codes(&u8s(0), &mut b[4..], false),
        Q5_1 => weighted::pack_codes(&u8s(0), &mut b[4..], true),
        IQ4_NL => pack_block(&u8s(0), &mut b[2..]),
        MXFP4 => {
            for j in 0..16 {
                b[1 + j] = codes[j] as u8 | ((codes[16 + j] as u8) << 4);
            }
        }
        IQ4_XS => {
            for ib in 0..8 {
                pack_block(&u8s(32 * ib), &mut b[8 + 16 * ib..24 + 16 * ib]);
            }
        }
        Q4_K | Q5_K => {
            let l: [u8; 256] = std::array::from_fn(|i| codes[i] as u8);
            kquants::pack_codes(if ty == Q4_K { &kquants::Q4_K } else { &kquants::Q5_K }, &l, b);
        }
        Q6_K => kquants::pack_q6_k(&std::array::from_fn(|i| codes[i] as i8), b),
        Q2_K => q2k_q3k::pack_2bit(&std::array::from_fn(|i| codes[i] as u8), &mut b[16..80]),
        Q3_K => q2k_q3k::pack_q3_k_codes(&std::array::from_fn(|i| codes[i] as i8), b),
        _ => {}
    }
}

/// Rounds rows of `factor.cols()` values of one weight matrix to `ty` with GPTQ (module
/// docs), writing whole ggml blocks to `y` (`ty.bytes_for(x.len())` bytes). `qw` holds one
/// importance weight per column for the scale search (an imatrix row, or the Hessian's
/// diagonal). The result depends only on the inputs (no threads, no randomness).
///
/// Errors: unsupported type; lengths that do not fit; a non-finite value or weight, or a
/// negative weight; a block ggml's search refuses.
pub fn quantize_rows(ty: QuantType, x: &[f32], y: &mut [u8], factor: &Factor, qw: &[f32]) -> Result<(), GptqError> {
    quantize_rows_traced(ty, x, y, factor, qw, None)
}

/// [`quantize_rows`], also writing the grid value each weight was rounded to into `used`
/// (same length as `x`) when given: what dequantizing `y` must reproduce.
fn quantize_rows_traced(
    ty: QuantType,
    x: &[f32],
    y: &mut [u8],
    factor: &Factor,
    qw: &[f32],
    mut used: Option<&mut [f32]>,
) -> Result<(), GptqError> {
    if !supports(ty) {
        return Err(GptqError::Unsupported(ty.name()));
    }
    let n = factor.cols;
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    if n == 0 || !n.is_multiple_of(bs) || !x.len().is_multiple_of(n) {
        return Err(GptqError::Length(format!(
            "{}: {} values do not form rows of {n} values in whole blocks of {bs}",
            ty.name(),
            x.len()
        )));
    }
    if y.len() != x.len() / bs * bb || qw.len() != n || used.as_ref().is_some_and(|u| u.len() != x.len()) {
        return Err(GptqError::Length(format!(
            "{}: {} bytes, {} weights for {} values in rows of {n}",
            ty.name(),
            y.len(),
            qw.len(),
            x.len()
        )));
    }
    if let Some((index, value)) = first_non_finite(x) {
        return Err(GptqError::NonFinite { index, value });
    }
    if let Some(index) = qw.iter().position(|w| !w.is_finite() || *w < 0.0) {
        return Err(GptqError::NonFinite { index, value: qw[index] });
    }
    if !factor.perm.is_empty() {
        return sweep_act_order(ty, x, y, factor, qw, used);
    }
    let mut w = vec![0f32; n];
    let mut cell = vec![Cell::default(); bs];
    let mut codes = vec![0i32; bs];
    for (r, (row, out)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n / bs * bb)).enumerate() {
        w.copy_from_slice(row);
        for (blk, b) in out.chunks_exact_mut(bb).enumerate() {
            let c0 = blk * bs;
            let current = &w[c0..c0 + bs];
            // The error fed forward can in principle overflow a pathological Hessian's values.
            if let Some((i, value)) = first_non_finite(current) {
                return Err(GptqError::NonFinite { index: r * n + c0 + i, value });
            }
            choose_scales(ty, current, b, &qw[c0..c0 + bs]).map_err(|e| match e {
                Refusal::Degenerate(_) => GptqError::Degenerate(r * n / bs + blk),
                _ => GptqError::Unsupported(ty.name()),
            })?;
            cells(ty, b, &mut cell);
            for k in 0..bs {
                let i = c0 + k;
                let q = cell[k].nearest(w[i]);
                let v = cell[k].value(q);
                codes[k] = q + cell[k].offset;
                if let Some(u) = used.as_deref_mut() {
                    u[r * n + i] = v;
                }
                let u = factor.row(i);
                let e = (w[i] - v) / u[i];
                for (wj, &uj) in w[i + 1..].iter_mut().zip(&u[i + 1..]) {
                    *wj -= e * uj;
                }
            }
            pack(ty, &codes, b);
        }
    }
    Ok(())
}

/// The act-order sweep (lengths and values already checked): every block's scales are chosen
/// first, from the row's own values (GPTQ's `static_groups`), then the columns are rounded in
/// the factor's order, the error fed to the columns not yet rounded.
fn sweep_act_order(
    ty: QuantType,
    x: &[f32],
    y: &mut [u8],
    factor: &Factor,
    qw: &[f32],
    mut used: Option<&mut [f32]>,
) -> Result<(), GptqError> {
    let n = factor.cols;
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    let mut w = vec![0f32; n];
    // The row in the sweep's order, so the error update runs over contiguous values (the same
    // f32 operations on each value as updating it in place: the same bits).
    let mut wp = vec![0f32; n];
    let mut cell = vec![Cell::default(); n];
    let mut codes = vec![0i32; n];
    for (r, (row, out)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n / bs * bb)).enumerate() {
        w.copy_from_slice(row);
        for (blk, b) in out.chunks_exact_mut(bb).enumerate() {
            let c0 = blk * bs;
            choose_scales(ty, &w[c0..c0 + bs], b, &qw[c0..c0 + bs]).map_err(|e| match e {
                Refusal::Degenerate(_) => GptqError::Degenerate(r * n / bs + blk),
                _ => GptqError::Unsupported(ty.name()),
            })?;
            cells(ty, b, &mut cell[c0..c0 + bs]);
        }
        for (v, &p) in wp.iter_mut().zip(&factor.perm) {
            *v = w[p as usize];
        }
        for k in 0..n {
            let i = factor.perm[k] as usize;
            let wk = wp[k];
            if !wk.is_finite() {
                return Err(GptqError::NonFinite { index: r * n + i, value: wk });
            }
            let q = cell[i].nearest(wk);
            let v = cell[i].value(q);
            codes[i] = q + cell[i].offset;
            if let Some(u) = used.as_deref_mut() {
                u[r * n + i] = v;
            }
            let u = factor.row(k);
            let e = (wk - v) / u[k];
            for (wj, &uj) in wp[k + 1..].iter_mut().zip(&u[k + 1..]) {
                *wj -= e * uj;
            }
        }
        for (blk, b) in out.chunks_exact_mut(bb).enumerate() {
            pack(ty, &codes[blk * bs..(blk + 1) * bs], b);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar;

    const TYPES: [QuantType; 12] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::IQ4_NL,
        QuantType::IQ4_XS,
    ];

    /// A deterministic generator of roughly normal values (sum of uniforms).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    /// `t` tokens of `n` correlated inputs (AR(1) along the columns, ρ = 0.9, column scales
    /// from 0.2 to 2), and `H = Σ x xᵀ`.
    fn correlated(t: usize, n: usize, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
        let scale: Vec<f64> = (0..n).map(|c| 0.2 + 1.8 * ((c * 37) % n) as f64 / n as f64).collect();
        let mut x = vec![0f64; t * n];
        for row in x.chunks_exact_mut(n) {
            let mut prev = rng.normal();
            for (c, v) in row.iter_mut().enumerate() {
                prev = 0.9 * prev + (1.0 - 0.81f64).sqrt() * rng.normal();
                *v = prev * scale[c];
            }
        }
        let mut h = vec![0f64; n * n];
        for row in x.chunks_exact(n) {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += row[i] * row[j];
                }
            }
        }
        (x, h)
    }

    fn identity(n: usize) -> Vec<f64> {
        (0..n * n).map(|i| if i % (n + 1) == 0 { 1.0 } else { 0.0 }).collect()
    }

    /// `Σ_rows e H eᵀ` for `e = W − Ŵ`: the summed squared output error over the tokens.
    fn output_error(w: &[f32], wq: &[f32], h: &[f64], n: usize) -> f64 {
        let mut total = 0.0;
        for (a, b) in w.chunks_exact(n).zip(wq.chunks_exact(n)) {
            let e: Vec<f64> = a.iter().zip(b).map(|(x, y)| (*x - *y) as f64).collect();
            for i in 0..n {
                total += e[i] * h[i * n..(i + 1) * n].iter().zip(&e).map(|(p, q)| p * q).sum::<f64>();
            }
        }
        total
    }

    #[test]
    fn factor_is_the_cholesky_factor_of_the_inverse() {
        let n = 48;
        let (_, h) = correlated(200, n, &mut Rng(7));
        let f = Factor::from_hessian(&h, n, DAMP).unwrap();
        // (H + λI) · UᵀU = I.
        let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
        let u = |i: usize, j: usize| if j >= i { f.u[i * n + j] as f64 } else { 0.0 };
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let hinv_kj: f64 = (0..n).map(|m| u(m, k) * u(m, j)).sum();
                    s += (h[i * n + k] + if i == k { DAMP * mean } else { 0.0 }) * hinv_kj;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-4, "({i}, {j}): {s}");
            }
        }
    }

    #[test]
    fn output_dequantizes_to_the_grid_values_used_and_is_deterministic() {
        let n = 512;
        let mut rng = Rng(11);
        let (_, h) = correlated(600, n, &mut rng);
        let f = Factor::from_hessian(&h, n, DAMP).unwrap();
        let qw: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let w: Vec<f32> = (0..4 * n).map(|_| (rng.normal() * 0.05) as f32).collect();
        for ty in TYPES {
            let mut y = vec![0u8; ty.bytes_for(w.len())];
            let mut used = vec![0f32; w.len()];
            quantize_rows_traced(ty, &w, &mut y, &f, &qw, Some(&mut used)).unwrap();
            let mut back = vec![0f32; w.len()];
            scalar::dequantize(ty, &y, &mut back);
            assert!(back.iter().all(|v| v.is_finite()), "{ty:?}");
            for (i, (a, b)) in back.iter().zip(&used).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} value {i}: dequantized {a}, rounded to {b}");
            }
            let mut again = vec![0u8; y.len()];
            quantize_rows(ty, &w, &mut again, &f, &qw).unwrap();
            assert_eq!(y, again, "{ty:?}");
        }
    }

    #[test]
    fn identity_hessian_is_nearest_rounding_to_the_chosen_scales() {
        let n = 512;
        let mut rng = Rng(3);
        let f = Factor::from_hessian(&identity(n), n, DAMP).unwrap();
        let qw: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32).collect();
        let w: Vec<f32> = (0..3 * n).map(|_| (rng.normal() * 0.1) as f32).collect();
        for ty in TYPES {
            let mut y = vec![0u8; ty.bytes_for(w.len())];
            quantize_rows(ty, &w, &mut y, &f, &qw).unwrap();
            let mut back = vec![0f32; w.len()];
            scalar::dequantize(ty, &y, &mut back);
            // Every value is the nearest point of its block's grid (no error was fed forward).
            let (bs, bb) = (ty.block_size(), ty.block_bytes());
            let mut cell = vec![Cell::default(); bs];
            for (k, b) in y.chunks_exact(bb).enumerate() {
                cells(ty, b, &mut cell);
                for (j, c) in cell.iter().enumerate() {
                    let (x, got) = (w[k * bs + j], back[k * bs + j]);
                    let best = (c.lo..=c.hi).map(|q| (x - c.value(q)).abs()).fold(f32::INFINITY, f32::min);
                    assert!((x - got).abs() <= best * (1.0 + 1e-5) + 1e-9, "{ty:?} {k}/{j}: {x} → {got}, best {best}");
                }
            }
            // The k-quants re-round to their rounded scales as ggml does: the same values as
            // ggml's importance-weighted quantizer.
            if matches!(ty, QuantType::Q2_K | QuantType::Q3_K | QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K) {
                let mut g = vec![0u8; y.len()];
                weighted::quantize_rows(ty, &w, &mut g, n, &qw).unwrap();
                let mut gb = vec![0f32; w.len()];
                scalar::dequantize(ty, &g, &mut gb);
                assert_eq!(back, gb, "{ty:?}");
            }
        }
    }

    #[test]
    fn gptq_output_error_is_below_round_to_nearest_on_correlated_inputs() {
        let n = 512;
        let mut rng = Rng(5);
        let (_, h) = correlated(2048, n, &mut rng);
        let f = Factor::from_hessian(&h, n, DAMP).unwrap();
        let qw: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let w: Vec<f32> = (0..16 * n).map(|_| (rng.normal() * 0.05) as f32).collect();
        for ty in TYPES {
            let mut y = vec![0u8; ty.bytes_for(w.len())];
            quantize_rows(ty, &w, &mut y, &f, &qw).unwrap();
            let mut g = vec![0u8; y.len()];
            weighted::quantize_rows(ty, &w, &mut g, n, &qw).unwrap();
            let (mut a, mut b) = (vec![0f32; w.len()], vec![0f32; w.len()]);
            scalar::dequantize(ty, &y, &mut a);
            scalar::dequantize(ty, &g, &mut b);
            let (gptq, rtn) = (output_error(&w, &a, &h, n), output_error(&w, &b, &h, n));
            eprintln!("{ty:?}: GPTQ / ggml output error {:.3}", gptq / rtn);
            assert!(gptq < 0.9 * rtn, "{ty:?}: GPTQ {gptq:.4e}, ggml's rounding {rtn:.4e}");
        }
    }

    #[test]
    fn act_order_is_exact_deterministic_and_below_round_to_nearest() {
        let n = 512;
        let mut rng = Rng(9);
        let (_, h) = correlated(2048, n, &mut rng);
        let f = Factor::from_hessian_ordered(&h, n, DAMP, true).unwrap();
        assert_eq!(f.order().len(), n);
        let back_again = Factor::from_upper(n, f.upper().to_vec(), f.order().to_vec()).unwrap();
        let qw: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let w: Vec<f32> = (0..8 * n).map(|_| (rng.normal() * 0.05) as f32).collect();
        for ty in TYPES {
            let mut y = vec![0u8; ty.bytes_for(w.len())];
            let mut used = vec![0f32; w.len()];
            quantize_rows_traced(ty, &w, &mut y, &f, &qw, Some(&mut used)).unwrap();
            let mut a = vec![0f32; w.len()];
            scalar::dequantize(ty, &y, &mut a);
            assert!(a.iter().zip(&used).all(|(p, q)| p.to_bits() == q.to_bits()), "{ty:?}");
            let mut again = vec![0u8; y.len()];
            quantize_rows(ty, &w, &mut again, &back_again, &qw).unwrap();
            assert_eq!(y, again, "{ty:?}");
            let mut g = vec![0u8; y.len()];
            weighted::quantize_rows(ty, &w, &mut g, n, &qw).unwrap();
            let mut b = vec![0f32; w.len()];
            scalar::dequantize(ty, &g, &mut b);
            let (gptq, rtn) = (output_error(&w, &a, &h, n), output_error(&w, &b, &h, n));
            assert!(gptq < 0.9 * rtn, "{ty:?}: GPTQ act-order {gptq:.4e}, ggml's rounding {rtn:.4e}");
        }
        assert!(Factor::from_upper(2, vec![1.0, 0.0, 0.0, 1.0], vec![0, 0]).is_err());
    }

    /// MXFP4 rounding with GPTQ, both sweeps: the bytes decode to the values used, every
    /// block is valid (scale byte below 255, codes are nibbles), deterministic; the output
    /// error on correlated inputs is below both round-to-nearest quantizers' (ggml's and
    /// OpenAI's), by more with the Hessian than without.
    #[test]
    fn mxfp4_gptq_is_exact_valid_and_below_round_to_nearest() {
        let (n, ty) = (256, QuantType::MXFP4);
        let mut rng = Rng(21);
        let (_, h) = correlated(2048, n, &mut rng);
        let qw: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let w: Vec<f32> = (0..16 * n).map(|_| (rng.normal() * 0.05) as f32).collect();
        let mut rtn = vec![0u8; ty.bytes_for(w.len())];
        mxfp4::quantize(&w, &mut rtn);
        let mut b = vec![0f32; w.len()];
        scalar::dequantize(ty, &rtn, &mut b);
        let ggml_err = output_error(&w, &b, &h, n);
        let (mut blocks, mut scales) = (vec![0u8; w.len() / 2], vec![0u8; w.len() / 32]);
        crate::openai::quantize(&w, &mut blocks, &mut scales);
        crate::openai::dequantize(&blocks, &scales, &mut b);
        let openai_err = output_error(&w, &b, &h, n);
        for act_order in [false, true] {
            let f = Factor::from_hessian_ordered(&h, n, DAMP, act_order).unwrap();
            let mut y = vec![0u8; rtn.len()];
            let mut used = vec![0f32; w.len()];
            quantize_rows_traced(ty, &w, &mut y, &f, &qw, Some(&mut used)).unwrap();
            assert!(y.chunks_exact(17).all(|blk| blk[0] < 255), "act-order {act_order}");
            let mut a = vec![0f32; w.len()];
            scalar::dequantize(ty, &y, &mut a);
            assert!(a.iter().zip(&used).all(|(p, q)| p.to_bits() == q.to_bits() && p.is_finite()));
            let mut again = vec![0u8; y.len()];
            quantize_rows(ty, &w, &mut again, &f, &qw).unwrap();
            assert_eq!(y, again);
            let gptq = output_error(&w, &a, &h, n);
            eprintln!(
                "MXFP4 act-order {act_order}: GPTQ / ggml {:.3}, GPTQ / OpenAI {:.3}",
                gptq / ggml_err,
                gptq / openai_err
            );
            assert!(gptq < 0.8 * ggml_err.min(openai_err), "act-order {act_order}: {gptq:.4e} vs {ggml_err:.4e}");
        }
    }

    /// With `H = I` nothing is fed forward: each value is the nearest MXFP4 code of its block's
    /// scale (ggml's `best_index_mxfp4`), the scale is [`mxfp4_block_exponent`]'s, and a block
    /// whose exponent is ggml's own comes out byte for byte as ggml's quantizer writes it.
    #[test]
    fn mxfp4_identity_hessian_is_round_to_nearest() {
        let (n, ty) = (128, QuantType::MXFP4);
        let mut rng = Rng(4);
        let f = Factor::from_hessian(&identity(n), n, DAMP).unwrap();
        let qw = vec![1.0f32; n];
        // Scales over several binades, and blocks with a value just under 8·2^k (where ggml's
        // exponent clips it to 6·2^k and the next exponent is better).
        let mut w: Vec<f32> = (0..8 * n).map(|i| (rng.normal() * 0.3 * (1 + i / 200) as f64) as f32).collect();
        for blk in (0..w.len() / 32).step_by(3) {
            w[blk * 32 + 5] = 7.9;
        }
        let mut y = vec![0u8; ty.bytes_for(w.len())];
        quantize_rows(ty, &w, &mut y, &f, &qw).unwrap();
        let mut rtn = vec![0u8; y.len()];
        mxfp4::quantize(&w, &mut rtn);
        let (mut same, mut moved) = (0, 0);
        for (k, (blk, g)) in y.chunks_exact(17).zip(rtn.chunks_exact(17)).enumerate() {
            let x = &w[k * 32..(k + 1) * 32];
            assert_eq!(blk[0], mxfp4_block_exponent(x, &qw), "block {k}");
            let d = mxfp4::e8m0_to_f32_half(blk[0]);
            for j in 0..16 {
                assert_eq!(blk[1 + j] & 0xF, mxfp4::best_index(x[j], d), "block {k} value {j}");
                assert_eq!(blk[1 + j] >> 4, mxfp4::best_index(x[16 + j], d), "block {k} value {}", 16 + j);
            }
            if blk[0] == g[0] {
                assert_eq!(blk, g, "block {k}");
                same += 1;
            } else {
                moved += 1;
            }
        }
        assert!(same > 0 && moved > 0, "{same} blocks with ggml's exponent, {moved} with another");
    }

    /// The exponent search never does worse, by its own weighted error, than ggml's or
    /// OpenAI's choice, and stays a valid E8M0 byte at the ends of the range.
    #[test]
    fn mxfp4_exponent_search_beats_both_fixed_choices() {
        let mut rng = Rng(8);
        let err = |x: &[f32], qw: &[f32], e: u8| -> f64 {
            let d = mxfp4::e8m0_to_f32_half(e);
            x.iter()
                .zip(qw)
                .map(|(&v, &w)| {
                    w as f64 * ((v - mxfp4::KVALUES[mxfp4::best_index(v, d) as usize] as f32 * d) as f64).powi(2)
                })
                .sum()
        };
        for k in 0..200 {
            let x: Vec<f32> = (0..32).map(|_| (rng.normal() * 0.02 * (1 + k % 5) as f64) as f32).collect();
            let qw: Vec<f32> = (0..32).map(|_| rng.uniform() as f32 + 0.01).collect();
            let e = mxfp4_block_exponent(&x, &qw);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (mut blocks, mut scales) = ([0u8; 16], [0u8; 1]);
            crate::openai::quantize(&x, &mut blocks, &mut scales);
            assert!(err(&x, &qw, e) <= err(&x, &qw, mxfp4::shared_exponent(amax)));
            assert!(err(&x, &qw, e) <= err(&x, &qw, scales[0]));
        }
        assert!(mxfp4_block_exponent(&[0.0; 32], &[1.0; 32]) <= 1);
        assert!(mxfp4_block_exponent(&[f32::MAX; 32], &[1.0; 32]) < 255);
    }

    #[test]
    fn bad_input_is_refused() {
        let f = Factor::from_hessian(&identity(32), 32, DAMP).unwrap();
        let mut y = vec![0u8; 18];
        let mut x = vec![0.5f32; 32];
        assert!(quantize_rows(QuantType::IQ2_XS, &x, &mut y, &f, &[1.0; 32]).is_err());
        assert!(quantize_rows(QuantType::Q4_0, &x[..16], &mut y, &f, &[1.0; 32]).is_err());
        assert!(quantize_rows(QuantType::Q4_0, &x, &mut y, &f, &[1.0; 31]).is_err());
        assert!(quantize_rows(QuantType::Q4_0, &x, &mut y, &f, &[-1.0; 32]).is_err());
        x[3] = f32::NAN;
        assert!(quantize_rows(QuantType::Q4_0, &x, &mut y, &f, &[1.0; 32]).is_err());
        assert!(Factor::from_hessian(&[f64::NAN; 4], 2, DAMP).is_err());
        assert!(Factor::from_hessian(&[1.0; 3], 2, DAMP).is_err());
        // Indefinite (eigenvalues 101 and −99): no damping up to 10 · mean(diag) helps.
        let e = Factor::from_hessian(&[1.0, 100.0, 100.0, 1.0], 2, DAMP).unwrap_err();
        assert!(matches!(e, GptqError::NotPositiveDefinite { .. }), "{e}");
    }
}
