//! The hot inner searches of the i-quant quantizers behind one trait, so that SIMD backends
//! can replace them: [`Reference`] performs them as ggml does (`iq2_find_best_neighbour`,
//! `iq3_find_best_neighbour`, `iq1_find_best_neighbour2`, the candidate-scale loops of
//! `quantize_row_iq2_*_impl` / `quantize_row_iq3_*_impl`, the boundary searches of
//! `quantize_row_iq1_{s,m}_impl`); any other implementation must return exactly the same
//! values (bit for bit) for every input.

use super::common::{make_qp_quants, nearest_int, sum_x2};
use super::iq_tables::{FLT_MAX, GgmlAbort, Lattice, List, Lookup};
use super::iq1::{self, X_M, X_P};
use super::iq2;

/// The levels of the 2- and 3-bit grids as floats: level `l` is position `2l+1`.
pub const ODD_LEVELS: [f32; 8] = [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0];

/// How a block's values become codes on a grid.
#[derive(Clone, Copy)]
pub struct Codes {
    /// Bits per coordinate in a packed code (2 or 3).
    pub bits: u32,
    /// Codes run 0..kmax (`kMaxQ`).
    pub kmax: i32,
}

/// The outcome of up to 32 candidate scales.
#[derive(Clone)]
pub struct Evaluation {
    /// `Σ w·x·q` with `q = 2l+1`, in order, per candidate.
    pub sumqx: [f32; 32],
    /// `Σ w·q²`, in order, per candidate.
    pub sumq2: [f32; 32],
    /// Per candidate, bit k set when group k's codes were on the grid.
    pub on_grid: [u8; 32],
    /// Codes by chunks of 8 candidates: `codes[c / 8][i][c % 8]` is value i's code for
    /// candidate c.
    pub codes: [[[i8; 8]; 32]; 4],
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation { sumqx: [0.0; 32], sumq2: [0.0; 32], on_grid: [0; 32], codes: [[[0; 8]; 32]; 4] }
    }
}

impl Evaluation {
    /// Candidate `c`'s codes of the first `l.len()` values.
    #[inline]
    pub fn codes_of(&self, c: usize, l: &mut [i8]) {
        for (i, q) in l.iter_mut().enumerate() {
            *q = self.codes[c / 8][i][c % 8];
        }
    }

    /// ggml's sequential choice among candidates `0..n`: the last that beat the running best
    /// (`sumq2 > 0 && sumqx² > best·sumq2`, best from 0), with its scale `sumqx / sumq2`.
    pub fn choose(&self, n: usize) -> Option<(usize, f32)> {
        let mut best = 0.0f32;
        let mut chosen = None;
        for c in 0..n {
            let (sumqx, sumq2) = (self.sumqx[c], self.sumq2[c]);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                let scale = sumqx / sumq2;
                best = scale * sumqx;
                chosen = Some((c, scale));
            }
        }
        chosen
    }
}

/// The searches.
pub trait Searcher {
    /// The position in `list` of the candidate whose levels (`qtab[l]`) at `scale` come
    /// closest to `x`: `Σ w·(scale·q − x)²` summed in coordinate order, the first of equals
    /// among those below `FLT_MAX`; `None` when there is none (where ggml aborts).
    fn nearest<const N: usize>(
        &self,
        list: List<'_>,
        qtab: &[f32; 8],
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Option<usize>;

    /// For each candidate `(id, scale)` (at most 32), the codes `clamp(nearest_int(0.5·(id·x
    /// − 1)), 0, kmax−1)` of `xval`, each group of `N` (only those in the bit mask `groups`)
    /// looked up and, off the grid, replaced by its nearest neighbour at `scale` with weights
    /// `waux`; then the sums over all values with weights `weight`. Codes and sums are only
    /// defined when every group is in `groups`; otherwise only the selected groups' codes are.
    #[allow(clippy::too_many_arguments)]
    fn evaluate<const N: usize>(
        &self,
        t: &Lattice<N>,
        c: Codes,
        xval: &[f32],
        weight: &[f32],
        waux: &[f32],
        candidates: &[(f32, f32)],
        groups: u8,
        out: &mut Evaluation,
    ) -> Result<(), GgmlAbort>;

    /// [`Searcher::evaluate`] of two blocks of as many values, each with its own candidates
    /// (at most 24 each), with the same `groups`: `a`'s into `out_a`, `b`'s into `out_b`. `Err`
    /// when either evaluation is. SIMD backends evaluate both blocks' candidates side by side
    /// (IQ3_S's and IQ2_S's 19 candidates per block fill three vectors of 16, not four).
    #[allow(clippy::too_many_arguments)]
    fn evaluate_pair<const N: usize>(
        &self,
        t: &Lattice<N>,
        c: Codes,
        a: &Block<'_>,
        b: &Block<'_>,
        groups: u8,
        out_a: &mut Evaluation,
        out_b: &mut Evaluation,
    ) -> Result<(), GgmlAbort> {
        self.evaluate::<N>(t, c, a.xval, a.weight, a.waux, a.candidates, groups, out_a)?;
        self.evaluate::<N>(t, c, b.xval, b.weight, b.waux, b.candidates, groups, out_b)
    }

    /// The refinement of a block's chosen codes `l` at one `candidate`: the groups in `groups`
    /// replaced by [`Searcher::evaluate`]'s codes for that candidate, the others kept; returns
    /// the sums `Σ w·x·q`, `Σ w·q²` of the resulting codes, in order (as [`sums`]). `out` is
    /// scratch. SIMD backends evaluate the candidate with the kept groups' codes in place, so
    /// that the evaluation's own sums are those sums.
    #[allow(clippy::too_many_arguments)]
    fn refine<const N: usize>(
        &self,
        t: &Lattice<N>,
        c: Codes,
        xval: &[f32],
        weight: &[f32],
        waux: &[f32],
        candidate: (f32, f32),
        groups: u8,
        l: &mut [i8],
        out: &mut Evaluation,
    ) -> Result<(f32, f32), GgmlAbort> {
        refine_apart(self, t, c, xval, weight, waux, candidate, groups, l, out)
    }

    /// The candidate scales `(id, 1 / id)` with `id = numerators[c] / max`, into
    /// `out[..numerators.len()]` (IEEE divisions, so every implementation gives the same
    /// values; SIMD backends divide 8 at a time).
    fn candidates(&self, numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
        for (slot, &n) in out.iter_mut().zip(numerators) {
            let id = n / max;
            *slot = (id, 1.0 / id);
        }
    }

    /// The scale `make_qp_quants(nmax, x, _, qw)` returns for a block of 32 values (IQ2_XXS's
    /// first estimate; its codes are not needed). SIMD backends form the candidate errors in
    /// lanes and run the coordinate descent a vector of values at a time, with ggml's every
    /// float operation.
    fn qp_scale(&self, nmax: i32, x: &[f32; 32], qw: &[f32; 32]) -> f32 {
        make_qp_quants(nmax, x, &mut [0u8; 32], qw)
    }

    /// [`Searcher::qp_scale`] of 8 blocks, for those whose bit is set in `blocks` (0 for the
    /// others); SIMD backends run the blocks side by side.
    fn qp_scales8(&self, nmax: i32, x: &[[f32; 32]; 8], qw: &[[f32; 32]; 8], blocks: u8) -> [f32; 8] {
        std::array::from_fn(|b| if blocks & (1 << b) != 0 { self.qp_scale(nmax, &x[b], &qw[b]) } else { 0.0 })
    }

    /// `Σx²` of each of 8 consecutive super-blocks (`x` holds 8·256 values), each summed in
    /// order (ggml's `sumx2`); SIMD backends sum the 8 side by side.
    fn sums_of_squares8(&self, x: &[f32]) -> [f32; 8] {
        std::array::from_fn(|b| sum_x2(&x[256 * b..256 * b + 256]))
    }

    /// [`iq2::signs8`]: magnitudes of 8 values into `xval` and their sign bits (with `even`,
    /// an odd number of negatives made even by flipping the value of least `w·x·x`).
    fn signs8(&self, xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
        iq2::signs8(xb, weight, xval, even)
    }

    /// The indices of a block's `N` values (16 or 32) in ascending order, ties in index order
    /// ([`iq1::sorted_order`]: glibc's stable `qsort` with ggml's `iq1_sort_helper`, `−0.0`
    /// equal to `+0.0`); SIMD backends rank the values in lanes.
    fn iq1_order<const N: usize>(&self, xb: &[f32]) -> [usize; N] {
        iq1::sorted_order::<N>(xb)
    }

    /// IQ1_S's boundary search over prefix sums of a block sorted by value: the best
    /// `(i1, i2, shift, scale)` as `quantize_row_iq1_s_impl` finds it, or `None`.
    fn iq1s_split(&self, sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)>;

    /// IQ1_M's boundary search over per-half prefix sums: the best `(i1, i2, k, scale)` as
    /// `quantize_row_iq1_m_impl` finds it, or `None`.
    fn iq1m_split(&self, px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)>;

    /// [`Evaluation::choose`] of `ev`'s candidates `0..n` (at most 32): the same candidate and
    /// scale, bit for bit.
    fn choose(&self, ev: &Evaluation, n: usize) -> Option<(usize, f32)> {
        ev.choose(n)
    }
}

/// [`Searcher::refine`] by [`Searcher::evaluate`] of the candidate, its selected groups' codes
/// copied into `l`, and the sums of `l` (the evaluation's own when every group was selected).
#[allow(clippy::too_many_arguments)]
pub fn refine_apart<S: Searcher + ?Sized, const N: usize>(
    s: &S,
    t: &Lattice<N>,
    c: Codes,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    candidate: (f32, f32),
    groups: u8,
    l: &mut [i8],
    out: &mut Evaluation,
) -> Result<(f32, f32), GgmlAbort> {
    let n = xval.len();
    s.evaluate::<N>(t, c, xval, weight, waux, &[candidate], groups, out)?;
    let mut r = [0i8; 32];
    out.codes_of(0, &mut r[..n]);
    for k in 0..n / N {
        if groups & (1 << k) != 0 {
            l[N * k..N * k + N].copy_from_slice(&r[N * k..N * k + N]);
        }
    }
    // With every group refined, `l` is the evaluation's codes and its sums are `l`'s.
    let all = ((1u32 << (n / N)) - 1) as u8;
    Ok(if groups == all { (out.sumqx[0], out.sumq2[0]) } else { sums(weight, xval, l) })
}

/// One block's values, weights and candidates for [`Searcher::evaluate_pair`].
#[derive(Clone, Copy)]
pub struct Block<'a> {
    /// The block's magnitudes.
    pub xval: &'a [f32],
    /// Their weights for the sums.
    pub weight: &'a [f32],
    /// Their weights for the neighbour searches.
    pub waux: &'a [f32],
    /// The candidates `(id, scale)`.
    pub candidates: &'a [(f32, f32)],
}

/// ggml's order of operations, one value at a time.
pub struct Reference;

/// `Σ w·x·q` and `Σ w·q²` with `q = 2l+1`, in order.
#[inline]
pub fn sums(weight: &[f32], xval: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..weight.len() {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// The levels of grid point `j` as codes.
#[inline]
pub fn grid_codes<const N: usize>(t: &Lattice<N>, j: u16, l: &mut [i8]) {
    for (l, &p) in l.iter_mut().zip(&t.grid[j as usize]) {
        *l = (p - 1) / 2;
    }
}

impl Searcher for Reference {
    fn nearest<const N: usize>(
        &self,
        list: List<'_>,
        qtab: &[f32; 8],
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Option<usize> {
        let mut best_d2 = FLT_MAX;
        let mut best = None;
        for k in 0..list.indices.len() {
            let mut d2 = 0.0f32;
            for i in 0..N {
                let q = qtab[list.levels[(k / 8) * 8 * N + 8 * i + k % 8] as usize];
                let diff = scale * q - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = Some(k);
            }
        }
        best
    }

    fn evaluate<const N: usize>(
        &self,
        t: &Lattice<N>,
        c: Codes,
        xval: &[f32],
        weight: &[f32],
        waux: &[f32],
        candidates: &[(f32, f32)],
        groups: u8,
        out: &mut Evaluation,
    ) -> Result<(), GgmlAbort> {
        let n = xval.len();
        let mut codes = [0i8; 32];
        for (cand, &(id, scale)) in candidates.iter().enumerate() {
            let mut on_grid = 0;
            for k in 0..n / N {
                if groups & (1 << k) == 0 {
                    continue;
                }
                let r = N * k..N * k + N;
                let mut u = 0usize;
                for (i, l) in codes[r.clone()].iter_mut().enumerate() {
                    let q = nearest_int(0.5 * (id * xval[N * k + i] - 1.0)).clamp(0, c.kmax - 1);
                    *l = q as i8;
                    u |= (q as usize) << (c.bits as usize * i);
                }
                match t.lookup(u) {
                    Lookup::OnGrid(_) => on_grid |= 1 << k,
                    Lookup::Near(list) => {
                        let best = self.nearest::<N>(list, &ODD_LEVELS, &xval[r.clone()], &waux[r.clone()], scale);
                        grid_codes(t, list.indices[best.ok_or(GgmlAbort)?], &mut codes[r]);
                    }
                }
            }
            (out.sumqx[cand], out.sumq2[cand]) = sums(weight, xval, &codes[..n]);
            out.on_grid[cand] = on_grid;
            for (i, &q) in codes[..n].iter().enumerate() {
                out.codes[cand / 8][i][cand % 8] = q;
            }
        }
        Ok(())
    }

    fn iq1s_split(&self, sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
        let mut best_score = -FLT_MAX;
        let mut best = None;
        for i1 in 0..=32 {
            for i2 in i1..=32 {
                for (xs, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                    let sumqx =
                        (sumx[i1] - sumx[0]) * xs[0] + (sumx[i2] - sumx[i1]) * xs[1] + (sumx[32] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[32] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        let scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, shift, scale));
                    }
                }
            }
        }
        best
    }

    fn iq1m_split(&self, px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
        let txs = [px[0][16], px[1][16]];
        let tws = [pw[0][16], pw[1][16]];
        let (p2, m2) = (X_P[2], X_M[2]);
        let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
        let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
        let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
        let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
        let mut best_score = -FLT_MAX;
        let mut best = None;
        for i1 in 0..=16 {
            for i2 in i1..=16 {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) = ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1]];
                let sumq2 = [q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1]];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        let scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        best = Some((i1, i2, k, scale));
                    }
                }
            }
        }
        best
    }
}
