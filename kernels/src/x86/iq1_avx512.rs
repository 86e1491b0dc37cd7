//! IQ1_S and IQ1_M boundary searches on AVX-512 (F), bit-exact: the searches of
//! `quantize_row_iq1_{s,m}_impl` over every pair `(i1, i2)`, `i1 ≤ i2`, of the sorted block's
//! boundaries, with the pairs laid out flat in ggml's order (`i1` major, `i2` minor, the shift
//! variants innermost) and 16 pairs per vector. Each lane reads its pair's prefix-sum terms
//! from small per-block tables by a two-source permute (`vpermt2ps`), so a chunk may span
//! several rows of `i1`: IQ1_S's 561 pairs make 35 chunks (and two pairs done one by one)
//! instead of the AVX2 search's 85 chunks of 8, IQ1_M's 153 pairs 10 chunks instead of 27.
//! Every lane performs the reference's very float operations (no fused multiply-adds), and a
//! chunk that can win is resolved as `iquants_avx2`'s `walk_chunk` does: the winners
//! are predicted from a prefix maximum of the scores and the prediction is checked by ggml's
//! own test for every candidate; where any test disagrees, the chunk is walked one by one.
//!
//! The neighbour searches of IQ1's grid and IQ1_S's sort order are 16-lane too
//! (`nearest_packed16`, `iq1_order`); the rest of the IQ1 quantizers (IQ1_M's sort order, the
//! block code) are the AVX2 searches' and the scalar reference's. Reached only through the AVX-512 table, handed out only after detecting AVX-512 F and BW
//! (and AVX2, whose searches this uses).

// The lanes' loops index several arrays by one position.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::iquants_avx2::Avx2;
use crate::QuantType;
use crate::backend::Refusal;
use crate::scalar::iq_search::{Codes, Evaluation, Searcher};
use crate::scalar::iq_tables::{FLT_MAX, GgmlAbort, Lattice, List};
use crate::scalar::iq1::{X_M, X_P};
use crate::scalar::iquants;

/// IQ1_S's pairs: 33·34/2.
const S_PAIRS: usize = 561;
/// IQ1_S's vector chunks: pairs 1..=559 (the first, (0, 0), and the last, (32, 32), are tested
/// one by one, so that every lane's `i1` is below 32 and every lane's `i2` above 0, and each
/// table fits in the 32 entries of a two-source permute).
const S_CHUNKS: usize = 35;
/// IQ1_M's pairs: 17·18/2.
const M_PAIRS: usize = 153;
/// IQ1_M's vector chunks (the last one 9 lanes).
const M_CHUNKS: usize = 10;

/// The pairs `(i1, i2)`, `0 ≤ i1 ≤ i2 ≤ n`, in ggml's order.
const fn pairs<const P: usize>(n: usize) -> [[u8; 2]; P] {
    let mut out = [[0u8; 2]; P];
    let (mut i1, mut i2, mut p) = (0, 0, 0);
    while p < P {
        out[p] = [i1 as u8, i2 as u8];
        p += 1;
        if i2 == n {
            i1 += 1;
            i2 = i1;
        } else {
            i2 += 1;
        }
    }
    out
}

/// IQ1_S's pairs in ggml's order (a winner's `(i1, i2)` from its flat position).
const S_PAIR: [[u8; 2]; S_PAIRS] = pairs::<S_PAIRS>(32);
/// IQ1_M's pairs in ggml's order.
const M_PAIR: [[u8; 2]; M_PAIRS] = pairs::<M_PAIRS>(16);

/// Per chunk of 16 lanes from pair `first + 16·c`, each lane's permute index of `i1` (minus
/// `o1`) and of `i2` (minus `o2`); 0 past the last pair (those lanes are masked off).
const fn lane_indices<const C: usize, const P: usize>(
    pair: &[[u8; 2]; P],
    first: usize,
    end: usize,
    o1: i32,
    o2: i32,
) -> [[[i32; 16]; 2]; C] {
    let mut out = [[[0i32; 16]; 2]; C];
    let mut c = 0;
    while c < C {
        let mut l = 0;
        while l < 16 {
            let p = first + 16 * c + l;
            if p < end {
                out[c][0][l] = pair[p][0] as i32 - o1;
                out[c][1][l] = pair[p][1] as i32 - o2;
            }
            l += 1;
        }
        c += 1;
    }
    out
}

/// IQ1_S: `i1` indexes tables of entries 0..32, `i2` tables of entries 1..=32.
const S_LANES: [[[i32; 16]; 2]; S_CHUNKS] = lane_indices::<S_CHUNKS, S_PAIRS>(&S_PAIR, 1, S_PAIRS - 1, 0, 1);
/// IQ1_M: both index tables of entries 0..=16.
const M_LANES: [[[i32; 16]; 2]; M_CHUNKS] = lane_indices::<M_CHUNKS, M_PAIRS>(&M_PAIR, 0, M_PAIRS, 0, 0);

/// The IQ1 searches with AVX-512 boundary searches; the others are [`Avx2`]'s.
struct Avx512Iq1(Avx2);

impl Searcher for Avx512Iq1 {
    fn nearest<const N: usize>(
        &self,
        list: List<'_>,
        qtab: &[f32; 8],
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Option<usize> {
        // The 8-coordinate 2-bit grids' lists (IQ1's) carry every neighbour's packed code.
        if N == 8 && list.packed.len() >= 8 * list.indices.len().div_ceil(8) {
            // SAFETY: as in `iq1s_split` below.
            return unsafe { nearest_packed16(list, qtab, x, w, scale) };
        }
        self.0.nearest::<N>(list, qtab, x, w, scale)
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
        self.0.evaluate::<N>(t, c, xval, weight, waux, candidates, groups, out)
    }

    fn candidates(&self, numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
        self.0.candidates(numerators, max, out)
    }

    fn sums_of_squares8(&self, x: &[f32]) -> [f32; 8] {
        self.0.sums_of_squares8(x)
    }

    fn signs8(&self, xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
        self.0.signs8(xb, weight, xval, even)
    }

    fn qp_scales8(&self, nmax: i32, x: &[[f32; 32]; 8], qw: &[[f32; 32]; 8], blocks: u8) -> [f32; 8] {
        self.0.qp_scales8(nmax, x, qw, blocks)
    }

    fn qp_scale(&self, nmax: i32, x: &[f32; 32], qw: &[f32; 32]) -> f32 {
        self.0.qp_scale(nmax, x, qw)
    }

    fn iq1_order<const N: usize>(&self, xb: &[f32]) -> [usize; N] {
        // IQ1_S's blocks of 32 (for IQ1_M's 16, one vector of 16 measured 1% slower than
        // the AVX2 ranks' two of 8).
        if N == 32 {
            // SAFETY: as in `iq1s_split` below.
            return unsafe { iq1_order::<N>(xb) };
        }
        self.0.iq1_order::<N>(xb)
    }

    fn iq1s_split(&self, sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
        // SAFETY: an `Avx512Iq1` is only made in this module's `#[target_feature]` entry points,
        // reached only through the AVX-512 table (AVX-512 F and BW detected).
        unsafe { iq1s_split(sumx, sumw) }
    }

    fn iq1m_split(&self, px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
        // SAFETY: as above.
        unsafe { iq1m_split(px, pw) }
    }
}

/// [`Searcher::nearest`] for 8-coordinate grids of 2-bit levels (`iquants_avx2`'s
/// `nearest_packed2` on 16 lanes): lanes are neighbours, each adding its coordinates' terms
/// `w·(scale·q − x)·(scale·q − x)` (the scalar search's very products) in coordinate order,
/// the terms looked up by the neighbour's packed code shifted by `2·i` (the table repeats the
/// four levels, so the next coordinates' bits above do not matter); each lane keeps its first
/// minimum (strictly below, from `FLT_MAX`), and the answer is the least position holding the
/// smallest of them.
#[target_feature(enable = "avx512f")]
fn nearest_packed16(list: List<'_>, qtab: &[f32; 8], x: &[f32], w: &[f32], scale: f32) -> Option<usize> {
    let len = list.indices.len();
    // The caller reads the winner's grid index from `list.indices`: fetched now, it arrives
    // during the scan rather than after it.
    for line in list.indices.chunks(32) {
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
    }
    let q: [f32; 16] = std::array::from_fn(|j| qtab[j & 3]);
    let qt = load16(&q);
    let s = _mm512_set1_ps(scale);
    let mut t = [_mm512_setzero_ps(); 8];
    for (i, t) in t.iter_mut().enumerate() {
        let diff = _mm512_sub_ps(_mm512_mul_ps(s, qt), _mm512_set1_ps(x[i]));
        *t = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(w[i]), diff), diff);
    }
    let mut best = _mm512_set1_ps(FLT_MAX);
    let mut best_at = _mm512_set1_epi32(i32::MAX);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let end = _mm512_set1_epi32(len as i32);
    // The codes padded to a multiple of 8 (the caller checked): chunks of 16, the last one
    // possibly 8 (its upper lanes zero; they are past `len`, masked off below).
    let packed = &list.packed[..8 * len.div_ceil(8)];
    for (chunk, codes) in packed.chunks(16).enumerate() {
        let c = if codes.len() == 16 {
            // SAFETY: `codes` holds 16 u32; loadu has no alignment requirement.
            unsafe { _mm512_loadu_si512(codes.as_ptr().cast()) }
        } else {
            assert!(codes.len() == 8);
            // SAFETY: `codes` holds 8 u32 (checked above).
            _mm512_zextsi256_si512(unsafe { _mm256_loadu_si256(codes.as_ptr().cast()) })
        };
        let mut d2 = _mm512_setzero_ps();
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(c, t[0]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<2>(c), t[1]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(c), t[2]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<6>(c), t[3]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<8>(c), t[4]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<10>(c), t[5]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<12>(c), t[6]));
        d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(_mm512_srli_epi32::<14>(c), t[7]));
        let at = _mm512_add_epi32(lane, _mm512_set1_epi32(16 * chunk as i32));
        let valid = _mm512_cmplt_epi32_mask(at, end);
        // `d2 < best` (false for NaN), as the scalar search's strict test.
        let better = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(valid, d2, best);
        best = _mm512_mask_mov_ps(best, better, d2);
        best_at = _mm512_mask_mov_epi32(best_at, better, at);
    }
    let m = _mm512_set1_ps(_mm512_reduce_min_ps(best));
    let at = _mm512_mask_mov_epi32(_mm512_set1_epi32(i32::MAX), _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(best, m), best_at);
    usize::try_from(_mm512_reduce_min_epi32(at)).ok().filter(|&at| at < len)
}

/// [`Searcher::iq1_order`] by ranks (`iquants_avx2`'s `iq1_order` on 16 lanes): value i's
/// position is the number of values below it plus the number of equal ones before it. Keys
/// are the values' bits made to order as signed integers do (`x + 0.0`, so that `−0.0` ties
/// `+0.0`; negative values' magnitude bits flipped); "below, or equal and before" is
/// `k_j < k_i + [j < i]` (the values are finite, so `k_i + 1` does not overflow).
#[target_feature(enable = "avx512f")]
fn iq1_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    assert!((N == 16 || N == 32) && xb.len() >= N);
    let mut keys = [_mm512_setzero_si512(); 2];
    let mut flat = [0i32; 32];
    for v in 0..N / 16 {
        let bits = _mm512_castps_si512(_mm512_add_ps(load16(&xb[16 * v..]), _mm512_setzero_ps()));
        keys[v] = _mm512_xor_si512(bits, _mm512_srli_epi32::<1>(_mm512_srai_epi32::<31>(bits)));
        // SAFETY: `flat` has room for 16 i32 from 16·v (v < 2); storeu has no alignment
        // requirement.
        unsafe { _mm512_storeu_si512(flat[16 * v..].as_mut_ptr().cast(), keys[v]) };
    }
    let one = _mm512_set1_epi32(1);
    let plus = keys.map(|k| _mm512_add_epi32(k, one));
    let mut rank = [_mm512_setzero_si512(); 2];
    for jb in 0..N / 16 {
        for jj in 0..16 {
            let kj = _mm512_set1_epi32(flat[16 * jb + jj]);
            // Lanes of block jb after value j count equal keys too.
            let after: __mmask16 = !((2u32 << jj) - 1) as u16;
            for v in 0..N / 16 {
                let k = if v < jb {
                    keys[v]
                } else if v > jb {
                    plus[v]
                } else {
                    _mm512_mask_mov_epi32(keys[v], after, plus[v])
                };
                rank[v] = _mm512_mask_add_epi32(rank[v], _mm512_cmpgt_epi32_mask(k, kj), rank[v], one);
            }
        }
    }
    let mut ranks = [0i32; 32];
    for v in 0..N / 16 {
        // SAFETY: as above.
        unsafe { _mm512_storeu_si512(ranks[16 * v..].as_mut_ptr().cast(), rank[v]) };
    }
    let mut order = [0usize; N];
    for (i, &r) in ranks[..N].iter().enumerate() {
        // Ranks are a permutation of 0..N (distinct keys after the tie-break).
        order[r as usize & (N - 1)] = i;
    }
    order
}

/// IQ1_M without importance weights (the only IQ1 type ggml quantizes without them), with
/// these searches; refuses NaN and infinities.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
    if crate::backend::first_non_finite(x).is_some() {
        return Err(Refusal::NonFinite);
    }
    iquants::quantize(&Avx512Iq1(Avx2::new()), ty, x, y, None)
}

/// IQ1_S and IQ1_M with importance weights `qw` (a row's worth), with these searches; values
/// finite.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) fn quantize_rows(ty: QuantType, x: &[f32], y: &mut [u8], qw: &[f32]) -> Result<(), Refusal> {
    iquants::quantize_rows(&Avx512Iq1(Avx2::new()), ty, x, y, qw)
}

/// The lanes of chunk `c` that hold one of `n` pairs laid out 16 per chunk.
#[inline]
fn valid_lanes(c: usize, n: usize) -> __mmask16 {
    let left = n.saturating_sub(16 * c);
    if left >= 16 { 0xffff } else { (1u16 << left) - 1 }
}

/// The 16 lanes of a vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes16(v: __m512) -> [f32; 16] {
    let mut out = [0f32; 16];
    // SAFETY: `out` has room for 16 f32; storeu has no alignment requirement.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// 16 f32 from `x[..16]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load16(x: &[f32]) -> __m512 {
    assert!(x.len() >= 16);
    // SAFETY: 16 f32 are readable (checked above); loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// 16 i32 from `x`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load16i(x: &[i32; 16]) -> __m512i {
    // SAFETY: `x` holds 16 i32; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
}

/// A table of up to 32 entries as two vectors, read by [`pick`].
type Table = (__m512, __m512);

/// Each lane's entry `at` of `t`.
#[inline]
#[target_feature(enable = "avx512f")]
fn pick(t: Table, at: __m512i) -> __m512 {
    _mm512_permutex2var_ps(t.0, at, t.1)
}

/// ggml's test of one candidate against the running best (`best`), and the new best with the
/// candidate's scale where it wins.
#[inline]
fn test_one(sumqx: f32, sumq2: f32, best: &mut f32) -> Option<f32> {
    if sumq2 > 0.0 && sumqx * sumqx > *best * sumq2 {
        let scale = sumqx / sumq2;
        *best = scale * sumqx;
        return Some(scale);
    }
    None
}

/// Lane i gets lane i − (16 − `S`) of `v`, the lanes below that −∞.
#[inline]
#[target_feature(enable = "avx512f")]
fn up<const S: i32>(v: __m512) -> __m512 {
    let n = _mm512_castps_si512(_mm512_set1_ps(f32::NEG_INFINITY));
    _mm512_castsi512_ps(_mm512_alignr_epi32::<S>(_mm512_castps_si512(v), n))
}

/// The sequential choice over one chunk of 16 lanes of `V` variants (ggml's order: lane major,
/// variant minor), lanes outside `valid` left out, from the running best (in every lane of
/// `best`): as `iquants_avx2`'s `walk_chunk`, on 16 lanes. Returns the last winner's `(lane,
/// variant, scale)`, if any, and leaves the running best in every lane of `best`.
#[inline]
#[target_feature(enable = "avx512f")]
fn walk16<const V: usize>(
    sumqx: &[__m512; V],
    sumq2: &[__m512; V],
    valid: __mmask16,
    best: &mut __m512,
) -> Option<(usize, usize, f32)> {
    let zero = _mm512_setzero_ps();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut scale = [zero; V];
    let mut s = [ninf; V];
    let mut pos = [0 as __mmask16; V];
    for k in 0..V {
        pos[k] = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(valid, sumq2[k], zero);
        scale[k] = _mm512_div_ps(sumqx[k], sumq2[k]);
        let score = _mm512_mul_ps(scale[k], sumqx[k]);
        // Candidates that cannot win (sumq2 ≤ 0, lanes left out) and NaN scores count as −∞:
        // `max(score, −∞)` is `score`, or the second operand, −∞, where `score` is NaN.
        s[k] = _mm512_mask_max_ps(ninf, pos[k], score, ninf);
    }
    // Per lane the largest score, then the running maximum over lanes before each lane.
    let mut lane_max = s[0];
    for sk in &s[1..] {
        lane_max = _mm512_max_ps(lane_max, *sk);
    }
    let mut m = lane_max;
    m = _mm512_max_ps(m, up::<15>(m));
    m = _mm512_max_ps(m, up::<14>(m));
    m = _mm512_max_ps(m, up::<12>(m));
    m = _mm512_max_ps(m, up::<8>(m));
    let mut running = _mm512_max_ps(*best, up::<15>(m));
    let mut wins = [0 as __mmask16; V];
    let mut disagree: __mmask16 = 0;
    for k in 0..V {
        wins[k] = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s[k], running);
        let test = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
            pos[k],
            _mm512_mul_ps(sumqx[k], sumqx[k]),
            _mm512_mul_ps(running, sumq2[k]),
        );
        disagree |= wins[k] ^ test;
        running = _mm512_max_ps(running, s[k]);
    }
    if disagree != 0 {
        // ggml's walk (a lane's division and product are the scalar ones).
        let (qx, q2) = (sumqx.map(|v| lanes16(v)), sumq2.map(|v| lanes16(v)));
        let mut best_score = _mm512_cvtss_f32(*best);
        let mut won = None;
        for lane in (0..16).filter(|l| valid & (1 << l) != 0) {
            for k in 0..V {
                if let Some(scale) = test_one(qx[k][lane], q2[k][lane], &mut best_score) {
                    won = Some((lane, k, scale));
                }
            }
        }
        *best = _mm512_set1_ps(best_score);
        return won;
    }
    // The running best after the chunk: the largest of the start and every score, by a
    // reduction of the lanes' maxima (off the prefix scan's chain).
    let h = _mm512_max_ps(lane_max, _mm512_shuffle_f32x4::<0b01_00_11_10>(lane_max, lane_max));
    let h = _mm512_max_ps(h, _mm512_shuffle_f32x4::<0b10_11_00_01>(h, h));
    let h = _mm512_max_ps(h, _mm512_permute_ps::<0b01_00_11_10>(h));
    let h = _mm512_max_ps(h, _mm512_permute_ps::<0b10_11_00_01>(h));
    *best = _mm512_max_ps(*best, h);
    let any = wins.iter().fold(0, |a, &w| a | w);
    if any == 0 {
        return None;
    }
    let lane = 15 - any.leading_zeros() as usize;
    // The last variant winning at `lane`: the highest bit of the lane's wins, gathered
    // without a branch per variant.
    let at_lane = (0..V).fold(0u32, |a, k| a | (u32::from(wins[k] >> lane) & 1) << k);
    let k = 31 - (at_lane | 1).leading_zeros() as usize;
    // Per lane the scale of its last winning variant, read at `lane` (kept in registers).
    let mut last = scale[0];
    for k in 1..V {
        last = _mm512_mask_mov_ps(last, wins[k], scale[k]);
    }
    Some((lane, k, _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(lane as i32), last))))
}

/// [`Searcher::iq1s_split`]: pairs flat, 16 per vector (see the module).
#[target_feature(enable = "avx512f")]
fn iq1s_split(sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
    let xs = [X_P, X_M];
    // One candidate pair, both shifts, as ggml forms its sums.
    let one = |i1: usize, i2: usize, best: &mut f32, out: &mut Option<(usize, usize, i8, f32)>| {
        for (v, shift) in [(0, 1i8), (1, -1)] {
            let x = &xs[v];
            let sumqx = (sumx[i1] - sumx[0]) * x[0] + (sumx[i2] - sumx[i1]) * x[1] + (sumx[32] - sumx[i2]) * x[2];
            let sumq2 = (sumw[i1] - sumw[0]) * x[0] * x[0]
                + (sumw[i2] - sumw[i1]) * x[1] * x[1]
                + (sumw[32] - sumw[i2]) * x[2] * x[2];
            if let Some(scale) = test_one(sumqx, sumq2, best) {
                *out = Some((i1, i2, shift, scale));
            }
        }
    };
    let mut best = None;
    let mut best_score = -FLT_MAX;
    one(0, 0, &mut best_score, &mut best);
    // The tables: by i1 (entries 0..32) the prefix sums and the first group's terms
    // `(sumx[i1] − sumx[0])·x0`, `(sumw[i1] − sumw[0])·x0·x0`; by i2 (entries 1..=32) the prefix
    // sums and the third group's terms `(sumx[32] − sumx[i2])·x2`, `(sumw[32] − sumw[i2])·x2·x2`.
    let set = _mm512_set1_ps;
    let xa = (load16(&sumx[..16]), load16(&sumx[16..32]));
    let wa = (load16(&sumw[..16]), load16(&sumw[16..32]));
    let xb = (load16(&sumx[1..17]), load16(&sumx[17..33]));
    let wb = (load16(&sumw[1..17]), load16(&sumw[17..33]));
    let (x0, w0, x32, w32) = (set(sumx[0]), set(sumw[0]), set(sumx[32]), set(sumw[32]));
    let map = |t: Table, f: &dyn Fn(__m512) -> __m512| (f(t.0), f(t.1));
    let head: [Table; 2] = std::array::from_fn(|v| map(xa, &|a| _mm512_mul_ps(_mm512_sub_ps(a, x0), set(xs[v][0]))));
    let headw: [Table; 2] = std::array::from_fn(|v| {
        map(wa, &|a| _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(a, w0), set(xs[v][0])), set(xs[v][0])))
    });
    let tail: [Table; 2] = std::array::from_fn(|v| map(xb, &|b| _mm512_mul_ps(_mm512_sub_ps(x32, b), set(xs[v][2]))));
    let tailw: [Table; 2] = std::array::from_fn(|v| {
        map(wb, &|b| _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(w32, b), set(xs[v][2])), set(xs[v][2])))
    });
    let x1 = [set(X_P[1]), set(X_M[1])];
    let mut best_v = set(best_score);
    for (c, at) in S_LANES.iter().enumerate() {
        let (a1, a2) = (load16i(&at[0]), load16i(&at[1]));
        let valid = valid_lanes(c, S_PAIRS - 2);
        let b = _mm512_sub_ps(pick(xb, a2), pick(xa, a1));
        let bw = _mm512_sub_ps(pick(wb, a2), pick(wa, a1));
        let mut qx = [b; 2];
        let mut q2 = [b; 2];
        let mut any: __mmask16 = 0;
        for v in 0..2 {
            qx[v] = _mm512_add_ps(_mm512_add_ps(pick(head[v], a1), _mm512_mul_ps(b, x1[v])), pick(tail[v], a2));
            q2[v] = _mm512_add_ps(
                _mm512_add_ps(pick(headw[v], a1), _mm512_mul_ps(_mm512_mul_ps(bw, x1[v]), x1[v])),
                pick(tailw[v], a2),
            );
            // Without `sumq2 > 0` (the walk tests it): a lane passing here may still fail.
            any |=
                _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(valid, _mm512_mul_ps(qx[v], qx[v]), _mm512_mul_ps(best_v, q2[v]));
        }
        if any == 0 {
            continue;
        }
        if let Some((lane, v, scale)) = walk16::<2>(&qx, &q2, valid, &mut best_v) {
            let [i1, i2] = S_PAIR[1 + 16 * c + lane];
            best = Some((i1 as usize, i2 as usize, if v == 0 { 1 } else { -1 }, scale));
        }
    }
    best_score = _mm512_cvtss_f32(best_v);
    one(32, 32, &mut best_score, &mut best);
    best
}

/// [`Searcher::iq1m_split`]: pairs flat, 16 per vector (see the module), 4 sign patterns each.
#[target_feature(enable = "avx512f")]
fn iq1m_split(px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
    let set = _mm512_set1_ps;
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    // Tables of entries 0..=16 per half: the prefix sums (by i1 and by i2); by i1
    // `tws·p2·p2 + pw[i1]·cp1` (and with m2, cm1); by i2 `pw[i2]·cp2` (and `·cm2`).
    let sums: [Table; 2] = std::array::from_fn(|h| (load16(&px[h][..16]), set(px[h][16])));
    let w: [Table; 2] = std::array::from_fn(|h| (load16(&pw[h][..16]), set(pw[h][16])));
    let row = |h: usize, c2: f32, c1: f32| -> Table {
        let r = set(pw[h][16] * c2 * c2);
        (_mm512_add_ps(r, _mm512_mul_ps(w[h].0, set(c1))), _mm512_add_ps(r, _mm512_mul_ps(w[h].1, set(c1))))
    };
    let rowp = [row(0, p2, cp1), row(1, p2, cp1)];
    let rowm = [row(0, m2, cm1), row(1, m2, cm1)];
    let col = |h: usize, c: f32| -> Table { (_mm512_mul_ps(w[h].0, set(c)), _mm512_mul_ps(w[h].1, set(c))) };
    let colp = [col(0, cp2), col(1, cp2)];
    let colm = [col(0, cm2), col(1, cm2)];
    let txp = [set(px[0][16] * p2), set(px[1][16] * p2)];
    let txm = [set(px[0][16] * m2), set(px[1][16] * m2)];
    let mut best_v = set(-FLT_MAX);
    let mut best = None;
    for (c, at) in M_LANES.iter().enumerate() {
        let (a1, a2) = (load16i(&at[0]), load16i(&at[1]));
        let valid = valid_lanes(c, M_PAIRS);
        let zero = _mm512_setzero_ps();
        let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) = ([zero; 2], [zero; 2], [zero; 2], [zero; 2]);
        for h in 0..2 {
            let sx = _mm512_add_ps(pick(sums[h], a1), pick(sums[h], a2));
            qx_p[h] = _mm512_sub_ps(txp[h], sx);
            qx_m[h] = _mm512_sub_ps(txm[h], sx);
            q2_p[h] = _mm512_add_ps(pick(rowp[h], a1), pick(colp[h], a2));
            q2_m[h] = _mm512_add_ps(pick(rowm[h], a1), pick(colm[h], a2));
        }
        let sumqx = [
            _mm512_add_ps(qx_p[0], qx_p[1]),
            _mm512_add_ps(qx_p[0], qx_m[1]),
            _mm512_add_ps(qx_m[0], qx_p[1]),
            _mm512_add_ps(qx_m[0], qx_m[1]),
        ];
        let sumq2 = [
            _mm512_add_ps(q2_p[0], q2_p[1]),
            _mm512_add_ps(q2_p[0], q2_m[1]),
            _mm512_add_ps(q2_m[0], q2_p[1]),
            _mm512_add_ps(q2_m[0], q2_m[1]),
        ];
        // Without `sumq2 > 0` (the walk tests it): a lane passing here may still fail.
        let mut any: __mmask16 = 0;
        for k in 0..4 {
            any |= _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
                valid,
                _mm512_mul_ps(sumqx[k], sumqx[k]),
                _mm512_mul_ps(best_v, sumq2[k]),
            );
        }
        if any == 0 {
            continue;
        }
        if let Some((lane, k, scale)) = walk16::<4>(&sumqx, &sumq2, valid, &mut best_v) {
            let [i1, i2] = M_PAIR[16 * c + lane];
            best = Some((i1 as usize, i2 as usize, k, scale));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::iq_search::Reference;

    fn avx512() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }

    /// The flat pair tables: ggml's order, every pair once, and the lanes' permute indices
    /// naming each chunk's pairs.
    #[test]
    fn pair_tables_follow_ggml_order() {
        let mut p = 0;
        for i1 in 0..=32u8 {
            for i2 in i1..=32 {
                assert_eq!(S_PAIR[p], [i1, i2]);
                p += 1;
            }
        }
        assert_eq!(p, S_PAIRS);
        p = 0;
        for i1 in 0..=16u8 {
            for i2 in i1..=16 {
                assert_eq!(M_PAIR[p], [i1, i2]);
                p += 1;
            }
        }
        assert_eq!(p, M_PAIRS);
        assert_eq!(S_CHUNKS * 16, S_PAIRS - 2 + 1);
        assert_eq!(M_CHUNKS, M_PAIRS.div_ceil(16));
        for (c, at) in S_LANES.iter().enumerate() {
            for l in 0..16 {
                let p = 1 + 16 * c + l;
                if p < S_PAIRS - 1 {
                    assert_eq!([at[0][l], at[1][l] + 1], S_PAIR[p].map(i32::from));
                    assert!(at[0][l] < 32 && (0..32).contains(&at[1][l]));
                }
            }
        }
        for (c, at) in M_LANES.iter().enumerate() {
            for l in 0..16 {
                if let Some(pair) = M_PAIR.get(16 * c + l) {
                    assert_eq!([at[0][l], at[1][l]], pair.map(i32::from));
                }
            }
        }
    }

    /// The lanes masked off: every chunk full but the last (IQ1_S 15 lanes of pairs 545..=559,
    /// IQ1_M 9 of pairs 144..=152); and `walk16` ignores lanes outside the mask even where
    /// they would win.
    #[test]
    fn only_the_pairs_lanes_take_part() {
        assert_eq!(
            (0..S_CHUNKS).map(|c| valid_lanes(c, S_PAIRS - 2)).filter(|&m| m != 0xffff).collect::<Vec<_>>(),
            [0x7fff]
        );
        assert_eq!(valid_lanes(S_CHUNKS - 1, S_PAIRS - 2), 0x7fff);
        assert_eq!(valid_lanes(M_CHUNKS - 1, M_PAIRS), 0x01ff);
        assert_eq!(valid_lanes(M_CHUNKS - 2, M_PAIRS), 0xffff);
        if !avx512() {
            return;
        }
        // Lanes in pairs of equal candidates (a later equal one wins where rounding makes
        // `qx² > (qx/q2·qx)·q2`: the prediction and the test disagree, and the chunk is
        // walked), every lane's score above the last: every valid lane wins.
        let mut next = crate::x86::tests::xorshift_uniform(7);
        let mut walked = 0;
        for case in 0..2000 {
            let qx: [f32; 16] = std::array::from_fn(|_| 0.0);
            let mut qx = qx;
            let mut q2 = [0f32; 16];
            for l in (0..16).step_by(2) {
                qx[l] = (1.0 + next()) * (1 << l) as f32;
                q2[l] = 1.0 + next();
                (qx[l + 1], q2[l + 1]) = (qx[l], q2[l]);
            }
            let valid = [0x7fffu16, 0x01ff, 0x0001, 0xffff][case % 4];
            let (mut best_s, mut want) = (0.5f32, None);
            for l in (0..16).filter(|l| valid & (1 << l) != 0) {
                if let Some(scale) = test_one(qx[l], q2[l], &mut best_s) {
                    want = Some((l, 0, scale));
                }
            }
            walked += usize::from(want.is_some_and(|w| w.0 % 2 == 1));
            // SAFETY: AVX-512 F was detected above; 16 f32 per load.
            let (got, best) = unsafe {
                let mut best = _mm512_set1_ps(0.5);
                let got =
                    walk16::<1>(&[_mm512_loadu_ps(qx.as_ptr())], &[_mm512_loadu_ps(q2.as_ptr())], valid, &mut best);
                (got, _mm512_cvtss_f32(best))
            };
            assert_eq!(got, want, "case {case}");
            assert_eq!(best.to_bits(), best_s.to_bits(), "case {case}");
        }
        assert!(walked > 0);
    }

    /// `walk16` counts a NaN score (`sumqx = sumq2 = ∞`: ggml's test fails, as `∞ > ∞` does
    /// not hold) as −∞: it neither wins nor spreads through the lanes' maxima to the running
    /// best, whichever lane holds it.
    #[test]
    fn walk16_leaves_nan_scores_out() {
        if !avx512() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x7F4A_7C15_9E37_79B9);
        for case in 0..400 {
            let mut qx: [f32; 16] = std::array::from_fn(|l| (1.0 + next()) * (1 << l) as f32);
            let mut q2: [f32; 16] = std::array::from_fn(|_| 1.0 + next());
            let nan_at = case % 16;
            (qx[nan_at], q2[nan_at]) = (f32::INFINITY, f32::INFINITY);
            assert!((qx[nan_at] / q2[nan_at] * qx[nan_at]).is_nan());
            let (mut best_s, mut want) = (0.5f32, None);
            for l in 0..16 {
                if let Some(scale) = test_one(qx[l], q2[l], &mut best_s) {
                    want = Some((l, 0, scale));
                }
            }
            // SAFETY: AVX-512 F was detected above; 16 f32 per load.
            let (got, best) = unsafe {
                let mut best = _mm512_set1_ps(0.5);
                let got =
                    walk16::<1>(&[_mm512_loadu_ps(qx.as_ptr())], &[_mm512_loadu_ps(q2.as_ptr())], 0xffff, &mut best);
                (got, _mm512_cvtss_f32(best))
            };
            assert_eq!(got, want, "case {case}");
            assert_eq!(best.to_bits(), best_s.to_bits(), "case {case}");
        }
    }

    /// The 16-lane neighbour search against the scalar reference on IQ1's lists: ordinary
    /// values, values and weights on a coarse grid (equal distances: the first of equals must
    /// win, also across lanes and chunks), zero weights, scales so large that distances are
    /// infinite or NaN (nothing below `FLT_MAX`: `None`), and every list length.
    #[test]
    fn nearest_packed16_matches_reference() {
        use crate::scalar::iq_tables::{Lookup, iq1};
        if !avx512() {
            return;
        }
        let t = iq1();
        let mut next = crate::x86::tests::xorshift_uniform(0x51ED_270B_1F0C_3A77);
        let (mut lens, mut some, mut none) = (std::collections::BTreeSet::new(), 0, 0);
        for case in 0..60_000 {
            let code = (next() * 65536.0) as usize;
            let Lookup::Near(list) = t.lookup(code) else { continue };
            lens.insert(list.indices.len());
            let kind = case % 5;
            let scale = [0.7, 1.0, 1e30, 3e-3, 1.0][kind];
            let x: [f32; 8] = std::array::from_fn(|_| match kind {
                1 | 4 => ((next() * 5.0).floor() - 2.0) * 0.5,
                _ => (next() - 0.5) * 2.0 * scale,
            });
            let w: [f32; 8] = std::array::from_fn(|_| match kind {
                1 => 1.0,
                4 => (next() * 2.0).floor(),
                _ => next(),
            });
            let xx = if case % 2 == 0 { X_P } else { X_M };
            let qtab = [xx[0], xx[1], xx[2], 0.0, 0.0, 0.0, 0.0, 0.0];
            // SAFETY: AVX-512 F was detected above.
            let got = unsafe { nearest_packed16(list, &qtab, &x, &w, scale) };
            let want = crate::scalar::iq_search::Reference.nearest::<8>(list, &qtab, &x, &w, scale);
            assert_eq!(got, want, "case {case}");
            if want.is_some() { some += 1 } else { none += 1 }
        }
        assert!(some > 1000 && none > 100, "{some} {none}");
        assert!(lens.iter().any(|&l| l % 16 == 0) && lens.iter().any(|&l| l % 16 > 8), "{lens:?}");
    }

    /// The 16-lane ranks against the scalar stable sort: equal values, signed zeros, tiny and
    /// huge magnitudes, negative values (`iquants_avx2`'s cases).
    #[test]
    fn iq1_order_matches_sorted_order() {
        if !avx512() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x2545_F491_4F6C_DD1D);
        for case in 0..50_000 {
            let x = crate::x86::tests::iq1_order_case(case, &mut next);
            // SAFETY: AVX-512 F was detected above.
            let got = unsafe { iq1_order::<32>(&x) };
            assert_eq!(got, crate::scalar::iq1::sorted_order::<32>(&x), "{x:?}");
            // SAFETY: as above.
            let got = unsafe { iq1_order::<16>(&x[..16]) };
            assert_eq!(got, crate::scalar::iq1::sorted_order::<16>(&x[..16]), "{x:?}");
        }
    }

    /// Both searches against the scalar reference on prefix sums of sorted blocks built as the
    /// quantizers build them (the AVX2 searches' test cases): ordinary values, values on a
    /// coarse grid (equal scores, near-ties where rounding decides), zero and tiny weights
    /// (repeated prefix sums), all-equal blocks, huge and tiny scales; and winners in the last
    /// pairs (blocks whose best split puts every value in the top group).
    #[test]
    fn iq1_splits_match_reference() {
        if !avx512() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x9E37_79B9_7F4A_7C15);
        let (mut last_s, mut last_m) = (0, 0);
        for case in 0..40_000 {
            let ((sumx, sumw), (px, pw)) = crate::x86::tests::iq1_split_case(case, &mut next);
            // SAFETY: AVX-512 F was detected above.
            let got = unsafe { iq1s_split(&sumx, &sumw) };
            let want = Reference.iq1s_split(&sumx, &sumw);
            assert_eq!(
                got.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                want.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                "IQ1_S case {case}"
            );
            last_s += usize::from(matches!(want, Some((i1, _, _, _)) if i1 >= 24));
            // SAFETY: as above.
            let got = unsafe { iq1m_split(&px, &pw) };
            let want = Reference.iq1m_split(&px, &pw);
            assert_eq!(
                got.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                want.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                "IQ1_M case {case}"
            );
            last_m += usize::from(matches!(want, Some((i1, _, _, _)) if i1 >= 12));
        }
        // The late chunks (and the last one's partial lanes) were reached.
        assert!(last_s > 100 && last_m > 100, "{last_s} {last_m}");
    }
}
