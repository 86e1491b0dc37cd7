//! AVX2 versions of the i-quant searches ([`Searcher`]), the ternary quantizers and some
//! dequantizers. Each performs the scalar reference's float operations, in the same order,
//! per lane, so their results are the reference's bit for bit:
//!
//! - candidate scales: lanes are candidates, each computing its codes and its sums over the
//!   block's values in order; the sequential choice among them stays scalar;
//! - neighbour searches of candidates whose codes fall on the same list: lanes are those
//!   candidates, each adding its precomputed per-level distance terms (the scalar search's very
//!   products) in coordinate order and keeping its first minimum over the list, scanned in order;
//! - neighbour searches at one scale (IQ1, or one candidate with a long list): lanes are
//!   neighbours, 8 at a time from the lists' level rows; the first of equal minima wins;
//! - IQ1 boundary searches: lanes are the second boundary; a chunk of lanes is only walked
//!   one by one (in ggml's order, with the running best) from the first lane that could win;
//!
//! The AVX-512 backend uses these too, but for the multi-candidate evaluation and the
//! candidate scales (`iquants_avx512`) and IQ1's boundary searches, neighbour search and
//! IQ1_S's sort order (`iq1_avx512`), which it runs with 16 lanes.
//!
//! Every `#[target_feature]` function here is reached only through the AVX2 table (and the
//! AVX-512 table, which inherits its entries), handed out only after detecting AVX2.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx2::lanes as f32s;
use super::kquants_avx2::{clamp, nearest_int};
use crate::QuantType;
use crate::backend::Refusal;
use crate::scalar::common::c_max;
use crate::scalar::iq_search::{Codes, Evaluation, ODD_LEVELS, Searcher, refine_apart};
use crate::scalar::iq_tables::{FLT_MAX, GgmlAbort, Lattice, List, Lookup};
use crate::scalar::iq1::{X_M, X_P};
use crate::scalar::{iquants, ternary};

/// The AVX2 searches. Only this module makes one, inside `#[target_feature(enable = "avx2")]`
/// functions (which only run where AVX2 was detected).
pub(crate) struct Avx2 {
    /// [`evaluate`]'s working arrays, kept from call to call (zeroing them per call cost more
    /// than a tenth of the IQ2_XS quantizer's time).
    scratch: RefCell<Scratch>,
}

impl Avx2 {
    /// Only called where AVX2 was detected (see the type).
    pub(super) fn new() -> Self {
        Avx2 { scratch: RefCell::new(Scratch::default()) }
    }
}

/// Candidates [`evaluate`] handles at most, plus room for a window of 8 lanes past the last.
const ROW: usize = 32 + 8;

/// [`evaluate`]'s working arrays. Entries not written by the current call may hold an earlier
/// call's values; [`evaluate`] reads only entries it wrote, except in windows of 8 lanes whose
/// lanes past the last candidate it masks off.
struct Scratch {
    /// `codes[i][c]`: value i's code for candidate c.
    codes: [[i32; ROW]; 32],
    /// Per group, each candidate's packed code.
    packed: [[i32; ROW]; 8],
    /// Per group, each candidate's code map entry.
    entries: [[i32; ROW]; 8],
    /// [`nearest_per_lane_prefix`]'s look-up table (see there); zeroed once, so that every
    /// entry is initialized.
    sums: [__m256; SUMS],
}

impl Default for Scratch {
    fn default() -> Self {
        // SAFETY: all bits zero is a valid `__m256` (eight 0.0).
        let sums = unsafe { std::mem::zeroed() };
        Scratch { codes: [[0; ROW]; 32], packed: [[0; ROW]; 8], entries: [[0; ROW]; 8], sums }
    }
}

/// IQ2_S, IQ3_XXS, IQ3_S, IQ1_M (and, refusing, the types that need weights) without
/// importance weights, with the AVX2 searches; refuses NaN and infinities.
#[target_feature(enable = "avx2")]
pub(super) fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
    if crate::backend::first_non_finite(x).is_some() {
        return Err(Refusal::NonFinite);
    }
    iquants::quantize(&Avx2::new(), ty, x, y, None)
}

/// The i-quants with importance weights `qw` (a row's worth), with the AVX2 searches; values
/// finite.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_rows(ty: QuantType, x: &[f32], y: &mut [u8], qw: &[f32]) -> Result<(), Refusal> {
    iquants::quantize_rows(&Avx2::new(), ty, x, y, qw)
}

/// `dl·(grid[j] + delta)` for the 8 values of an IQ1 grid entry, into `y[..8]`.
#[target_feature(enable = "avx2")]
fn iq1_put8(y: &mut [f32], entry: u64, dl: f32, delta: f32) {
    assert!(y.len() >= 8);
    let g = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(entry as i64)));
    let v = _mm256_mul_ps(_mm256_set1_ps(dl), _mm256_add_ps(g, _mm256_set1_ps(delta)));
    // SAFETY: `y` has room for 8 f32 (checked above).
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) };
}

/// `dequantize_row_iq1_s` with the grid entries widened in lanes.
#[target_feature(enable = "avx2")]
pub(super) fn dequantize_iq1_s(x: &[u8], y: &mut [f32]) {
    use crate::scalar::iq_grids::IQ1S_GRID;
    use crate::scalar::iq1::{IQ1_S_BYTES, IQ1S_DELTA};
    for (b, y) in x.chunks_exact(IQ1_S_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = crate::convert::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for ib in 0..8 {
            let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            for l in 0..4 {
                let index = b[2 + 4 * ib + l] as usize | (((qh >> (3 * l)) & 7) as usize) << 8;
                iq1_put8(&mut y[32 * ib + 8 * l..], IQ1S_GRID[index], dl, delta);
            }
        }
    }
}

/// `dequantize_row_iq1_m` with the grid entries widened in lanes.
#[target_feature(enable = "avx2")]
pub(super) fn dequantize_iq1_m(x: &[u8], y: &mut [f32]) {
    use crate::scalar::iq_grids::IQ1S_GRID;
    use crate::scalar::iq1::{IQ1_M_BYTES, IQ1S_DELTA};
    for (b, y) in x.chunks_exact(IQ1_M_BYTES).zip(y.chunks_exact_mut(256)) {
        let (qs, qh) = (&b[..32], &b[32..48]);
        let sc: [u16; 4] = std::array::from_fn(|i| u16::from_le_bytes([b[48 + 2 * i], b[49 + 2 * i]]));
        let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
        let d = crate::convert::f16_to_f32(bits);
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
                iq1_put8(&mut y[32 * ib + 8 * l..], IQ1S_GRID[idx[l]], if l < 2 { dl1 } else { dl2 }, delta[l]);
            }
        }
    }
}

/// `dequantize_row_tq1_0` with the trits extracted in lanes: `(q·3^n mod 256)·3 >> 8`.
#[target_feature(enable = "avx2")]
pub(super) fn dequantize_tq1_0(x: &[u8], y: &mut [f32]) {
    const POW3: [i32; 5] = [1, 3, 9, 27, 81];
    let (byte, three, one) = (_mm256_set1_epi32(0xff), _mm256_set1_epi32(3), _mm256_set1_epi32(1));
    // 8 outputs from 8 packed bytes and a power of 3.
    let put = |y: &mut [f32], q: &[u8], pow3: i32, d: __m256| {
        let q = _mm256_and_si256(_mm256_mullo_epi32(levels8(q), _mm256_set1_epi32(pow3)), byte);
        let xi = _mm256_srli_epi32::<8>(_mm256_mullo_epi32(q, three));
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(xi, one)), d);
        assert!(y.len() >= 8);
        // SAFETY: `y` has room for 8 f32 (checked above).
        unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) };
    };
    for (b, y) in x.chunks_exact(ternary::TQ1_0_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = _mm256_set1_ps(crate::convert::f16_to_f32(u16::from_le_bytes([b[52], b[53]])));
        for (n, &p) in POW3.iter().enumerate() {
            for m in (0..32).step_by(8) {
                put(&mut y[32 * n + m..], &b[m..], p, d);
            }
            for m in (0..16).step_by(8) {
                put(&mut y[160 + 16 * n + m..], &b[32 + m..], p, d);
            }
        }
        for n in 0..4 {
            for j in 0..4 {
                let q = b[48 + j].wrapping_mul(POW3[n] as u8);
                y[240 + 4 * n + j] = (((q as u16 * 3) >> 8) as i32 - 1) as f32
                    * crate::convert::f16_to_f32(u16::from_le_bytes([b[52], b[53]]));
            }
        }
    }
}

impl Searcher for Avx2 {
    fn nearest<const N: usize>(
        &self,
        list: List<'_>,
        qtab: &[f32; 8],
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Option<usize> {
        // SAFETY: an `Avx2` exists only once AVX2 was detected (see the type).
        unsafe { nearest::<N>(list, qtab, x, w, scale) }
    }

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
        let n = xval.len();
        if !(n <= 32 && n.is_multiple_of(8) && n.is_multiple_of(N) && l.len() >= n) {
            return refine_apart(self, t, c, xval, weight, waux, candidate, groups, l, out);
        }
        // SAFETY: an `Avx2` exists only once AVX2 was detected (see the type).
        unsafe { evaluate_one_keeping::<N>(t, c, xval, weight, waux, candidate, groups, Some(l), out)? };
        // The evaluated groups' codes and the kept ones, and their sums.
        out.codes_of(0, &mut l[..n]);
        Ok((out.sumqx[0], out.sumq2[0]))
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
        // Not re-entered, so the scratch is free; were it not, a fresh one does the same.
        let mut fresh = None;
        let mut held = self.scratch.try_borrow_mut().ok();
        let scratch = match held.as_deref_mut() {
            Some(s) => s,
            None => fresh.insert(Scratch::default()),
        };
        // SAFETY: as above.
        unsafe { evaluate::<N>(t, c, xval, weight, waux, candidates, groups, out, scratch) }
    }

    fn candidates(&self, numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
        // SAFETY: as above.
        unsafe { candidates(numerators, max, out) }
    }

    fn sums_of_squares8(&self, x: &[f32]) -> [f32; 8] {
        // SAFETY: as above.
        unsafe { super::kquants_avx2::sums_of_squares8(x) }
    }

    fn signs8(&self, xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
        // SAFETY: as above.
        unsafe { signs8(xb, weight, xval, even) }
    }

    fn qp_scales8(&self, nmax: i32, x: &[[f32; 32]; 8], qw: &[[f32; 32]; 8], blocks: u8) -> [f32; 8] {
        // SAFETY: as above.
        unsafe { qp_scales8(nmax, x, qw, blocks) }
    }

    fn qp_scale(&self, nmax: i32, x: &[f32; 32], qw: &[f32; 32]) -> f32 {
        // SAFETY: as above.
        unsafe { qp_scale(nmax, x, qw) }
    }

    fn iq1_order<const N: usize>(&self, xb: &[f32]) -> [usize; N] {
        // SAFETY: as above.
        unsafe { iq1_order::<N>(xb) }
    }

    fn iq1s_split(&self, sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
        // SAFETY: as above.
        unsafe { iq1s_split(sumx, sumw) }
    }

    fn iq1m_split(&self, px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
        // SAFETY: as above.
        unsafe { iq1m_split(px, pw) }
    }
}

/// [`Searcher::candidates`], 8 divisions at a time.
#[target_feature(enable = "avx2")]
fn candidates(numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
    let (maxv, one) = (_mm256_set1_ps(max), _mm256_set1_ps(1.0));
    for (nums, out) in numerators.chunks(8).zip(out.chunks_mut(8)) {
        let mut padded = [1f32; 8];
        padded[..nums.len()].copy_from_slice(nums);
        let id = _mm256_div_ps(load8(&padded), maxv);
        let (ids, inverses) = (f32s(id), f32s(_mm256_div_ps(one, id)));
        for (k, slot) in out.iter_mut().enumerate().take(nums.len()) {
            *slot = (ids[k], inverses[k]);
        }
    }
}

/// The 8 lanes of `v`.
#[target_feature(enable = "avx2")]
fn i32s(v: __m256i) -> [i32; 8] {
    let mut out = [0i32; 8];
    // SAFETY: `out` has room for 8 i32; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    out
}

/// 8 floats from a slice of at least 8.
#[target_feature(enable = "avx2")]
fn load8(x: &[f32]) -> __m256 {
    assert!(x.len() >= 8);
    // SAFETY: at least 8 f32 are readable (checked above).
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// 8 i32 from a slice of at least 8.
#[target_feature(enable = "avx2")]
fn load8i(x: &[i32]) -> __m256i {
    assert!(x.len() >= 8);
    // SAFETY: at least 8 i32 are readable (checked above).
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

/// 8 levels (bytes) widened to i32.
#[target_feature(enable = "avx2")]
fn levels8(b: &[u8]) -> __m256i {
    assert!(b.len() >= 8);
    // SAFETY: at least 8 bytes are readable (checked above).
    _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(b.as_ptr().cast()) })
}

/// [`Searcher::nearest`] with lanes as neighbours.
#[target_feature(enable = "avx2")]
pub(super) fn nearest<const N: usize>(
    list: List<'_>,
    qtab: &[f32; 8],
    x: &[f32],
    w: &[f32],
    scale: f32,
) -> Option<usize> {
    let len = list.indices.len();
    // The 8-coordinate grids are the 2-bit ones (IQ2, IQ1): their lists' packed codes hold
    // every neighbour's levels in 16 bits.
    if N == 8 && list.packed.len() >= 8 * len.div_ceil(8) {
        return nearest_packed2(list, qtab, x, w, scale);
    }
    let qt = load8(qtab);
    let s = _mm256_set1_ps(scale);
    // Lane l of terms[i]: coordinate i's term at level l, w·(scale·q_l − x)·(scale·q_l − x),
    // the very products the scalar search forms; a neighbour's distance adds its levels' terms.
    let mut terms = [_mm256_setzero_ps(); N];
    for (i, t) in terms.iter_mut().enumerate() {
        let diff = _mm256_sub_ps(_mm256_mul_ps(s, qt), _mm256_set1_ps(x[i]));
        *t = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff);
    }
    let mut best = _mm256_set1_ps(FLT_MAX);
    let mut best_at = _mm256_set1_epi32(i32::MAX);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let end = _mm256_set1_epi32(len as i32);
    for (chunk, rows) in list.levels.chunks_exact(8 * N).take(len.div_ceil(8)).enumerate() {
        let mut d2 = _mm256_setzero_ps();
        for i in 0..N {
            d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(terms[i], levels8(&rows[8 * i..])));
        }
        let at = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * chunk as i32));
        keep_first_minimum(d2, at, end, &mut best, &mut best_at);
    }
    first_minimum(best, best_at, len)
}

/// The levels of the neighbour at position `best` of `list` after a [`nearest`] search: from
/// its packed code (`bits` per coordinate) where the search read the packed codes
/// ([`nearest_packed2`]), so that they are in cache (the level rows of IQ2's long lists are
/// not, and reading them was a cache miss after most searches); from the level rows otherwise
/// (which the search just read).
#[inline(always)]
pub(super) fn winner_levels<const N: usize>(list: List<'_>, best: usize, bits: u32) -> [i32; N] {
    if N == 8 && list.packed.len() >= 8 * list.indices.len().div_ceil(8) {
        let code = list.packed[best];
        std::array::from_fn(|j| ((code >> (bits as usize * j)) & ((1 << bits) - 1)) as i32)
    } else {
        std::array::from_fn(|j| list.levels[(best / 8) * 8 * N + 8 * j + best % 8] as i32)
    }
}

/// One chunk of a lanes-as-neighbours scan: the squared distances `d2` of the neighbours at
/// positions `at`; positions at or past `end` count as NaN (all bits set: never below the
/// best); each lane keeps its first minimum (`min_ps(d2, best)` is `d2 < best ? d2 : best`, the
/// scalar search's strict less-than) and where it was.
#[inline]
#[target_feature(enable = "avx2")]
fn keep_first_minimum(d2: __m256, at: __m256i, end: __m256i, best: &mut __m256, best_at: &mut __m256i) {
    let valid = _mm256_cmpgt_epi32(end, at);
    let d2 = _mm256_or_ps(d2, _mm256_castsi256_ps(_mm256_xor_si256(valid, _mm256_set1_epi32(-1))));
    let better = _mm256_cmp_ps::<_CMP_LT_OQ>(d2, *best);
    *best = _mm256_min_ps(d2, *best);
    *best_at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*best_at), _mm256_castsi256_ps(at), better));
}

/// The scans' answer from each lane's first minimum (`best`, at position `best_at`): the
/// smallest value's first position, i.e. the least position among the lanes holding the
/// smallest value (lanes that found nothing hold NaN or FLT_MAX with position `i32::MAX`);
/// `None` when it is not below `len`.
#[inline]
#[target_feature(enable = "avx2")]
fn first_minimum(best: __m256, best_at: __m256i, len: usize) -> Option<usize> {
    let m = _mm256_min_ps(best, _mm256_permute2f128_ps::<1>(best, best));
    let m = _mm256_min_ps(m, _mm256_permute_ps::<0b01_00_11_10>(m));
    let m = _mm256_min_ps(m, _mm256_permute_ps::<0b10_11_00_01>(m));
    let at = _mm256_blendv_epi8(
        _mm256_set1_epi32(i32::MAX),
        best_at,
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(best, m)),
    );
    let at = _mm256_min_epi32(at, _mm256_permute2x128_si256::<1>(at, at));
    let at = _mm256_min_epi32(at, _mm256_shuffle_epi32::<0b01_00_11_10>(at));
    let at = _mm256_min_epi32(at, _mm256_shuffle_epi32::<0b10_11_00_01>(at));
    usize::try_from(_mm256_cvtsi256_si32(at)).ok().filter(|&at| at < len)
}

/// [`nearest`] for 8-coordinate grids of 2-bit levels, lanes as neighbours, the levels taken
/// from the neighbours' packed codes (one 32-byte load per 8 neighbours, a shift per
/// coordinate) rather than from the level rows (a widening load per coordinate). The terms'
/// table repeats levels 0..4 in lanes 4..8, so that a code shifted right by `2·i` indexes
/// coordinate `i`'s term by its low 3 bits whatever the next coordinate's level.
#[target_feature(enable = "avx2")]
fn nearest_packed2(list: List<'_>, qtab: &[f32; 8], x: &[f32], w: &[f32], scale: f32) -> Option<usize> {
    let len = list.indices.len();
    // The caller reads the winner's grid index from `list.indices`, which the scan does not
    // touch: fetched now, it arrives during the scan rather than after it (a cache miss per
    // search otherwise, IQ1's lists being 660 KB of indices).
    for line in list.indices.chunks(32) {
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
    }
    let q = [qtab[0], qtab[1], qtab[2], qtab[3], qtab[0], qtab[1], qtab[2], qtab[3]];
    let qt = load8(&q);
    let s = _mm256_set1_ps(scale);
    let mut terms = [_mm256_setzero_ps(); 8];
    for (i, t) in terms.iter_mut().enumerate() {
        let diff = _mm256_sub_ps(_mm256_mul_ps(s, qt), _mm256_set1_ps(x[i]));
        *t = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff);
    }
    let shifts: [__m256i; 8] = std::array::from_fn(|i| _mm256_set1_epi32(2 * i as i32));
    let mut best = _mm256_set1_ps(FLT_MAX);
    let mut best_at = _mm256_set1_epi32(i32::MAX);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let end = _mm256_set1_epi32(len as i32);
    for (chunk, codes) in list.packed.chunks_exact(8).take(len.div_ceil(8)).enumerate() {
        // SAFETY: a chunk holds 8 u32 (chunks_exact); loadu has no alignment requirement.
        let codes = unsafe { _mm256_loadu_si256(codes.as_ptr().cast()) };
        let mut d2 = _mm256_setzero_ps();
        for i in 0..8 {
            d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(terms[i], _mm256_srlv_epi32(codes, shifts[i])));
        }
        let at = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * chunk as i32));
        keep_first_minimum(d2, at, end, &mut best, &mut best_at);
    }
    first_minimum(best, best_at, len)
}

/// Per coordinate and level, every lane's term `w·(scale·q_l − x)·(scale·q_l − x)` of the
/// neighbour distance (the scalar search's very products), for levels `0..levels`.
#[target_feature(enable = "avx2")]
fn lane_terms<const N: usize>(x: &[f32], w: &[f32], scales: __m256, levels: usize, terms: &mut [[__m256; 8]; N]) {
    for (i, row) in terms.iter_mut().enumerate() {
        let (xi, wi) = (_mm256_set1_ps(x[i]), _mm256_set1_ps(w[i]));
        for (l, term) in row.iter_mut().enumerate().take(levels) {
            let diff = _mm256_sub_ps(_mm256_mul_ps(scales, _mm256_set1_ps(ODD_LEVELS[l])), xi);
            *term = _mm256_mul_ps(_mm256_mul_ps(wi, diff), diff);
        }
    }
}

/// The nearest neighbour in `list` for each lane in `lanes` (bit mask), each at its own scale
/// (whose distance terms are `terms`, from [`lane_terms`]), scanning the list in order with a
/// strict less-than per lane, as the scalar search does lane by lane; lane j's winner's codes go
/// to `codes[i][base + j]` (rows of the group's values).
#[target_feature(enable = "avx2")]
fn nearest_per_lane<const N: usize>(
    terms: &[[__m256; 8]; N],
    list: List<'_>,
    lanes: i32,
    bits: u32,
    codes: &mut [[i32; ROW]],
    base: usize,
) -> Result<(), GgmlAbort> {
    let mut best = _mm256_set1_ps(FLT_MAX);
    let mut best_at = _mm256_set1_epi32(-1);
    let len = list.indices.len();
    if list.packed.len() >= len {
        return nearest_per_lane_packed::<N>(terms, list, lanes, bits, codes, base);
    }
    let mut at = _mm256_setzero_si256();
    let one = _mm256_set1_epi32(1);
    for (chunk, rows) in list.levels.chunks_exact(8 * N).take(len.div_ceil(8)).enumerate() {
        for j in 0..8.min(len - 8 * chunk) {
            let mut d2 = _mm256_setzero_ps();
            for i in 0..N {
                // Levels are below 8 (`& 7` keeps them and spares the bounds check).
                d2 = _mm256_add_ps(d2, terms[i][(rows[8 * i + j] & 7) as usize]);
            }
            // `min_ps(d2, best)` is `d2 < best ? d2 : best`: the strict less-than of the scalar
            // search, with a shorter dependency chain than compare-and-blend. Lanes outside
            // `lanes` search too; their results are not read.
            let better = _mm256_cmp_ps::<_CMP_LT_OQ>(d2, best);
            best = _mm256_min_ps(d2, best);
            best_at =
                _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best_at), _mm256_castsi256_ps(at), better));
            at = _mm256_add_epi32(at, one);
        }
    }
    write_winners::<N>(list, best_at, lanes, bits, codes, base)
}

/// [`nearest_per_lane`] for lists that carry each neighbour's packed code (`bits` per
/// coordinate): each lane keeps the packed code of its first minimum rather than its position
/// (−1 before any), so the winners' codes need no gather after the scan.
#[target_feature(enable = "avx2")]
fn nearest_per_lane_packed<const N: usize>(
    terms: &[[__m256; 8]; N],
    list: List<'_>,
    lanes: i32,
    bits: u32,
    codes: &mut [[i32; ROW]],
    base: usize,
) -> Result<(), GgmlAbort> {
    let len = list.indices.len();
    let packed = &list.packed[..len];
    let mut best = _mm256_set1_ps(FLT_MAX);
    let mut best_code = _mm256_set1_epi32(-1);
    if N == 4 && bits == 3 {
        // The 3-bit grids: the terms' offsets from the packed codes alone (byte i is 32 times
        // coordinate i's level, see `List::packed`), so the scan reads 4 bytes per neighbour
        // rather than 8 with the level rows. The first term starts the sum: `0 + t0` is `t0`
        // but for the sign of a zero, which no comparison of the sums sees. Whole chunks of 8,
        // unrolled: the padding repeats the last neighbour, which cannot win again (its
        // distance is not strictly below the minimum it was compared with), and a fixed trip
        // count spares the loop's exit a misprediction for the short lists.
        let rest: *const u8 = terms.as_ptr().cast();
        for chunk in list.packed.chunks_exact(8).take(len.div_ceil(8)) {
            for code in chunk {
                let c = *code as usize;
                // SAFETY: byte i of a code is 32 times coordinate i's level (at most 224), and
                // 256·i plus it is within `terms` (N·8 vectors of 32 bytes); every offset is a
                // multiple of 32 and `terms` holds `__m256` values, so the aligned loads are
                // aligned.
                let d2 = unsafe {
                    let mut d2 = _mm256_load_ps(rest.add(c & 0xff).cast());
                    d2 = _mm256_add_ps(d2, _mm256_load_ps(rest.add(256 + ((c >> 8) & 0xff)).cast()));
                    d2 = _mm256_add_ps(d2, _mm256_load_ps(rest.add(512 + ((c >> 16) & 0xff)).cast()));
                    _mm256_add_ps(d2, _mm256_load_ps(rest.add(768 + ((c >> 24) & 0xff)).cast()))
                };
                // Lanes outside `lanes` search too; their results are not read.
                keep_best_code(d2, code, &mut best, &mut best_code);
            }
        }
        let wanted = wanted_lanes(lanes);
        let none = _mm256_cmpeq_epi32(best_code, _mm256_set1_epi32(-1));
        if _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_and_si256(none, wanted))) != 0 {
            return Err(GgmlAbort);
        }
        // Level i is byte i over 32.
        unpack_winners::<N>(_mm256_srli_epi32::<5>(best_code), wanted, 8, codes, base);
        return Ok(());
    }
    for (chunk, rows) in list.levels.chunks_exact(8 * N).take(len.div_ceil(8)).enumerate() {
        for (j, code) in packed[8 * chunk..].iter().take(8).enumerate() {
            let mut d2 = _mm256_setzero_ps();
            for i in 0..N {
                // Levels are below 8 (`& 7` keeps them and spares the bounds check).
                d2 = _mm256_add_ps(d2, terms[i][(rows[8 * i + j] & 7) as usize]);
            }
            // Lanes outside `lanes` search too; their results are not read.
            keep_best_code(d2, code, &mut best, &mut best_code);
        }
    }
    unpack_winners_or_abort::<N>(best_code, lanes, bits, codes, base)
}

/// One neighbour of a per-lane scan: each lane keeps its first minimum of `d2` and, with it,
/// the neighbour's packed `code` (`min_ps(d2, best)` is `d2 < best ? d2 : best`, the scalar
/// search's strict less-than).
#[inline]
#[target_feature(enable = "avx2")]
fn keep_best_code(d2: __m256, code: &u32, best: &mut __m256, best_code: &mut __m256i) {
    let better = _mm256_cmp_ps::<_CMP_LT_OQ>(d2, *best);
    *best = _mm256_min_ps(d2, *best);
    // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is an f32;
    // the code is broadcast from memory (one load) rather than through a general register.
    let code = _mm256_broadcast_ss(unsafe { &*(code as *const u32).cast::<f32>() });
    *best_code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*best_code), code, better));
}

/// The end of a per-lane packed-code scan (`best_code` −1 where a lane found no winner): where a
/// lane set in `lanes` has none (every distance at least FLT_MAX) ggml aborts; otherwise those
/// lanes' winners are unpacked ([`unpack_winners`]).
#[inline]
#[target_feature(enable = "avx2")]
fn unpack_winners_or_abort<const N: usize>(
    best_code: __m256i,
    lanes: i32,
    bits: u32,
    codes: &mut [[i32; ROW]],
    base: usize,
) -> Result<(), GgmlAbort> {
    let wanted = wanted_lanes(lanes);
    let none = _mm256_cmpeq_epi32(best_code, _mm256_set1_epi32(-1));
    if _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_and_si256(none, wanted))) != 0 {
        return Err(GgmlAbort);
    }
    unpack_winners::<N>(best_code, wanted, bits, codes, base);
    Ok(())
}

/// All bits set in the lanes whose bit is set in `lanes` (bit j: lane j).
#[target_feature(enable = "avx2")]
fn wanted_lanes(lanes: i32) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_and_si256(_mm256_set1_epi32(lanes), _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)),
        _mm256_setzero_si256(),
    )
}

/// The levels of each lane's winner from its packed code (`bits` per coordinate) into
/// `codes[i][base..base + 8]`, for the lanes set in `wanted` (the others keep their codes).
#[target_feature(enable = "avx2")]
fn unpack_winners<const N: usize>(
    best_code: __m256i,
    wanted: __m256i,
    bits: u32,
    codes: &mut [[i32; ROW]],
    base: usize,
) {
    assert!(base + 8 <= ROW && codes.len() >= N);
    let mask = _mm256_set1_epi32((1 << bits) - 1);
    for (i, row) in codes.iter_mut().enumerate().take(N) {
        let l = _mm256_and_si256(_mm256_srlv_epi32(best_code, _mm256_set1_epi32((bits as usize * i) as i32)), mask);
        // SAFETY: `base + 8 ≤ ROW` (checked above); unaligned load and store.
        unsafe {
            let at = row.as_mut_ptr().add(base).cast();
            let old = _mm256_loadu_si256(at);
            _mm256_storeu_si256(at, _mm256_blendv_epi8(old, l, wanted));
        }
    }
}

/// Byte offsets in [`nearest_per_lane_prefix`]'s table (`SUMS` vectors of 32 bytes) of its
/// regions: `(t0 + t1) + t2` at `32·(code & 63)` (the levels of coordinates 0..3), then
/// coordinate 3's terms at `code & 0xc0` (`64·l3`) and 4's at `code & 0x300` (`256·l4`) from
/// `SUM_AT[0]` and `SUM_AT[1]`, and with `e = code >> 5`, coordinate 5's at `e & 0x60` (`32·l5`),
/// 6's at `e & 0x180` (`128·l6`) and 7's at `e & 0x600` (`512·l7`): each term's offset is its
/// code bits masked, without a shift. Each region spans `3·stride + 32` bytes, so that even a
/// level 3 reads inside it.
const SUM_AT: [usize; 5] = [2048, 2048 + 224, 2048 + 224 + 800, 2048 + 224 + 800 + 128, 2048 + 224 + 800 + 128 + 416];
/// Vectors in [`nearest_per_lane_prefix`]'s table.
const SUMS: usize = (SUM_AT[4] + 1568) / 32;

/// [`nearest_per_lane`] for the 8-coordinate 2-bit grids of levels 0..3 (`list.three_levels`):
/// the sums of the first three coordinates' terms, `(t0 + t1) + t2` (the scalar search's first
/// additions, as `0 + t0` is `t0`), are formed once for the 27 level triples and looked up,
/// then the other five terms added in order, each looked up at its code bits masked (`sums`:
/// the table, see [`SUM_AT`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
fn nearest_per_lane_prefix<const N: usize>(
    x: &[f32],
    w: &[f32],
    scales: __m256,
    list: List<'_>,
    lanes: i32,
    codes: &mut [[i32; ROW]],
    base: usize,
    sums: &mut [__m256; SUMS],
) -> Result<(), GgmlAbort> {
    assert!(N == 8 && x.len() >= 8 && w.len() >= 8);
    let len = list.indices.len();
    assert!(list.packed.len() >= len);
    // Coordinate i's term at level l, `w·(scale·q_l − x)·(scale·q_l − x)` (as [`lane_terms`]),
    // for levels 0..3 only.
    let term = |i: usize, l: usize| {
        let diff = _mm256_sub_ps(_mm256_mul_ps(scales, _mm256_set1_ps(ODD_LEVELS[l])), _mm256_set1_ps(x[i]));
        _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff)
    };
    let t: [[__m256; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|l| term(i, l)));
    for a in 0..3 {
        for b in 0..3 {
            let ab = _mm256_add_ps(t[0][a], t[1][b]);
            for c in 0..3 {
                sums[a | b << 2 | c << 4] = _mm256_add_ps(ab, t[2][c]);
            }
        }
    }
    // Coordinate i's term at level l: at byte SUM_AT[i − 3] + l·stride.
    for (i, stride) in [(3, 64), (4, 256), (5, 32), (6, 128), (7, 512)] {
        for l in 0..3 {
            sums[(SUM_AT[i - 3] + l * stride) / 32] = term(i, l);
        }
    }
    let at: *const u8 = sums.as_ptr().cast();
    let (at3, at4, at5, at6, at7) = (SUM_AT[0], SUM_AT[1], SUM_AT[2], SUM_AT[3], SUM_AT[4]);
    let mut best = _mm256_set1_ps(FLT_MAX);
    // Each lane keeps its first minimum's packed code (−1 before any), unpacked in lanes after
    // the scan. The scan reads only the neighbours' packed codes (4 bytes each, which the
    // lanes-as-neighbours search reads too): IQ2_XXS's lists are megabytes.
    let mut best_code = _mm256_set1_epi32(-1);
    for code in &list.packed[..len] {
        let c = *code as usize;
        let e = c >> 5;
        // SAFETY: every offset is a region's start plus its code bits masked, at most 3 times
        // the region's stride, so the 32 bytes there lie within the region (see `SUM_AT`) and
        // so within `sums` (the last region ends at `32·SUMS`).
        let d2 = unsafe {
            let mut d2 = _mm256_loadu_ps(at.add((c & 63) << 5).cast());
            d2 = _mm256_add_ps(d2, _mm256_loadu_ps(at.add(at3 + (c & 0xc0)).cast()));
            d2 = _mm256_add_ps(d2, _mm256_loadu_ps(at.add(at4 + (c & 0x300)).cast()));
            d2 = _mm256_add_ps(d2, _mm256_loadu_ps(at.add(at5 + (e & 0x60)).cast()));
            d2 = _mm256_add_ps(d2, _mm256_loadu_ps(at.add(at6 + (e & 0x180)).cast()));
            _mm256_add_ps(d2, _mm256_loadu_ps(at.add(at7 + (e & 0x600)).cast()))
        };
        // Lanes outside `lanes` search too; their results are not read.
        keep_best_code(d2, code, &mut best, &mut best_code);
    }
    unpack_winners_or_abort::<N>(best_code, lanes, 2, codes, base)
}

/// The levels of each lane's winner (`best_at`: its position in `list`, −1 for none) into
/// `codes[i][base..base + 8]` for the lanes in `lanes` (the others keep their codes): the
/// winners' packed codes gathered, unpacked in lanes (`bits` per coordinate; grids without
/// packed codes: read lane by lane). A lane of `lanes` without a winner is where ggml aborts.
#[target_feature(enable = "avx2")]
fn write_winners<const N: usize>(
    list: List<'_>,
    best_at: __m256i,
    lanes: i32,
    bits: u32,
    codes: &mut [[i32; ROW]],
    base: usize,
) -> Result<(), GgmlAbort> {
    let len = list.indices.len();
    let wanted = _mm256_cmpgt_epi32(
        _mm256_and_si256(_mm256_set1_epi32(lanes), _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)),
        _mm256_setzero_si256(),
    );
    // Positions in 0..len (the scan's own), or −1.
    let found = _mm256_and_si256(
        _mm256_cmpgt_epi32(best_at, _mm256_set1_epi32(-1)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), best_at),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(found, wanted))) != 0 {
        return Err(GgmlAbort);
    }
    if list.packed.len() < len {
        // A grid without packed codes: the levels one lane at a time.
        let at = i32s(best_at);
        let mut todo = lanes as u32 & 0xff;
        while todo != 0 {
            let lane = todo.trailing_zeros() as usize;
            todo &= todo - 1;
            let k = usize::try_from(at[lane]).map_err(|_| GgmlAbort)?;
            for (i, row) in codes.iter_mut().enumerate().take(N) {
                row[base + lane] = list.levels[(k / 8) * 8 * N + 8 * i + k % 8] as i32;
            }
        }
        return Ok(());
    }
    assert!(base + 8 <= ROW && codes.len() >= N);
    // SAFETY: only lanes whose position lies in 0..len are read (the mask), and `packed` holds
    // at least `len` entries (checked above).
    let packed = unsafe {
        _mm256_mask_i32gather_epi32::<4>(_mm256_setzero_si256(), list.packed.as_ptr().cast(), best_at, found)
    };
    let mask = _mm256_set1_epi32((1 << bits) - 1);
    for (i, row) in codes.iter_mut().enumerate().take(N) {
        let l = _mm256_and_si256(_mm256_srlv_epi32(packed, _mm256_set1_epi32((bits as usize * i) as i32)), mask);
        // SAFETY: `base + 8 ≤ ROW` (checked above); unaligned load and store.
        unsafe {
            let at = row.as_mut_ptr().add(base).cast();
            let old = _mm256_loadu_si256(at);
            _mm256_storeu_si256(at, _mm256_blendv_epi8(old, l, wanted));
        }
    }
    Ok(())
}

/// Byte `j` of `SPREAD[m]` is bit `j` of `m`: a lane mask as one bit per lane's byte.
const SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        let mut j = 0;
        while j < 8 {
            t[m] |= (((m >> j) & 1) as u64) << (8 * j);
            j += 1;
        }
        m += 1;
    }
    t
};

/// [`Searcher::evaluate`] with lanes as candidates. Codes are formed and looked up 8
/// candidates at a time; then, group by group, the candidates whose codes fell off the grid on
/// the same code share neighbour scans, 8 consecutive candidates at a time from the first not
/// yet done (a group's codes only grow with the candidate's `id`, so equal codes are runs of
/// consecutive candidates, and a run shares its scans even across chunks of 8).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
fn evaluate<const N: usize>(
    t: &Lattice<N>,
    c: Codes,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    candidates: &[(f32, f32)],
    groups: u8,
    out: &mut Evaluation,
    scratch: &mut Scratch,
) -> Result<(), GgmlAbort> {
    let n = xval.len();
    let count = candidates.len();
    assert!(n <= 32 && n.is_multiple_of(N) && weight.len() >= n && waux.len() >= n && count <= 32);
    if count == 1 && n.is_multiple_of(8) {
        return evaluate_one::<N>(t, c, xval, weight, waux, candidates[0], groups, out);
    }
    let map = t.map();
    // The largest packed code the clamped codes can form must be inside the map (gathers).
    let top: usize = (0..N).map(|j| ((c.kmax - 1) as usize) << (c.bits as usize * j)).sum();
    assert!(top < map.len(), "code map too small");
    let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
    // Candidate c's id and scale at position c (past the last: copies of it, so that any
    // window of 8 can be loaded).
    let mut ids = [0f32; ROW];
    let mut scales = [0f32; ROW];
    for k in 0..ROW {
        (ids[k], scales[k]) = candidates[k.min(count - 1)];
    }
    let Scratch { codes, packed, entries, sums } = scratch;
    // Per group, the candidates whose codes are off the grid.
    let mut off_grid = [0u32; 8];
    let mut on_grid = [0u8; ROW];
    let store = |row: &mut [i32; ROW], at: usize, v: __m256i| {
        // SAFETY: `at + 8 ≤ ROW` (at is a multiple of 8 below 32).
        unsafe { _mm256_storeu_si256(row.as_mut_ptr().add(at).cast(), v) }
    };
    for chunk in 0..count.div_ceil(8) {
        let at = 8 * chunk;
        let live = ((1u32 << (count - at).min(8)) - 1) as i32;
        let idv = load8(&ids[at..]);
        for i in 0..n {
            let v = _mm256_mul_ps(half, _mm256_sub_ps(_mm256_mul_ps(idv, _mm256_set1_ps(xval[i])), one));
            store(&mut codes[i], at, clamp(nearest_int(v), c.kmax - 1));
        }
        for k in 0..n / N {
            if groups & (1 << k) == 0 {
                continue;
            }
            let mut u = _mm256_setzero_si256();
            for j in 0..N {
                let q = load8i(&codes[N * k + j][at..]);
                u = _mm256_or_si256(u, _mm256_sllv_epi32(q, _mm256_set1_epi32((c.bits as usize * j) as i32)));
            }
            // SAFETY: every lane of `u` is at most `top`, inside `map` (asserted above).
            let g = unsafe { _mm256_i32gather_epi32::<4>(map.as_ptr(), u) };
            let off = _mm256_movemask_ps(_mm256_castsi256_ps(g)) & live;
            // Bit k of each lane's byte where its code is on the grid.
            let bits = (SPREAD[(!off & 0xff) as usize] << k).to_le_bytes();
            for (o, b) in on_grid[at..at + 8].iter_mut().zip(bits) {
                *o |= b;
            }
            off_grid[k] |= (off as u32) << at;
            store(&mut packed[k], at, u);
            store(&mut entries[k], at, g);
        }
    }
    let mut terms = [[_mm256_setzero_ps(); 8]; N];
    for k in 0..n / N {
        let r = N * k..N * k + N;
        let mut pending = off_grid[k];
        while pending != 0 {
            // The window of 8 candidates from the first pending one; its lanes whose code equals
            // the first's share its list.
            let first = pending.trailing_zeros() as usize;
            let window = _mm256_cmpeq_epi32(load8i(&packed[k][first..]), _mm256_set1_epi32(packed[k][first]));
            let same = (_mm256_movemask_ps(_mm256_castsi256_ps(window)) as u32) & (pending >> first);
            pending &= !(same << first);
            let entry = entries[k][first];
            if entry == i32::MIN {
                return Err(GgmlAbort);
            }
            let list = t.list((-(entry + 1)) as usize);
            if same.count_ones() == 1 && list.indices.len() > 8 {
                let best = nearest::<N>(list, &ODD_LEVELS, &xval[r.clone()], &waux[r.clone()], scales[first])
                    .ok_or(GgmlAbort)?;
                let levels = winner_levels::<N>(list, best, c.bits);
                for (row, &l) in codes[r.clone()].iter_mut().zip(&levels) {
                    row[first] = l;
                }
            } else {
                let (x, w, s) = (&xval[r.clone()], &waux[r.clone()], load8(&scales[first..]));
                if list.three_levels && list.packed.len() >= list.indices.len() {
                    nearest_per_lane_prefix::<N>(x, w, s, list, same as i32, &mut codes[r.clone()], first, sums)?;
                } else {
                    lane_terms::<N>(x, w, s, 1 << c.bits, &mut terms);
                    nearest_per_lane::<N>(&terms, list, same as i32, c.bits, &mut codes[r.clone()], first)?;
                }
            }
        }
    }
    for chunk in 0..count.div_ceil(8) {
        let at = 8 * chunk;
        let m = (count - at).min(8);
        let (mut sx, mut sq) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let ones = _mm256_set1_epi32(1);
        for i in 0..n {
            let l = load8i(&codes[i][at..]);
            let q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(l, l), ones));
            sx = _mm256_add_ps(sx, _mm256_mul_ps(_mm256_set1_ps(weight[i] * xval[i]), q));
            sq = _mm256_add_ps(sq, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(weight[i]), q), q));
            // The 8 codes as bytes (each in 0..8, so the saturating packs are exact).
            let p16 = _mm_packs_epi32(_mm256_castsi256_si128(l), _mm256_extracti128_si256::<1>(l));
            let p8 = _mm_packs_epi16(p16, p16);
            // SAFETY: `out.codes[chunk][i]` has room for 8 bytes.
            unsafe { _mm_storel_epi64(out.codes[chunk][i].as_mut_ptr().cast(), p8) };
        }
        let (sx, sq) = (f32s(sx), f32s(sq));
        out.sumqx[at..at + m].copy_from_slice(&sx[..m]);
        out.sumq2[at..at + m].copy_from_slice(&sq[..m]);
        out.on_grid[at..at + m].copy_from_slice(&on_grid[at..at + m]);
    }
    Ok(())
}

/// [`evaluate`] for one candidate `(id, scale)` (the searches' refinement at the chosen scale),
/// with lanes as values: the codes 8 values at a time, each group looked up and, off the grid,
/// searched with lanes as neighbours; the sums' terms formed in lanes and added in order.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
fn evaluate_one<const N: usize>(
    t: &Lattice<N>,
    c: Codes,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    candidate: (f32, f32),
    groups: u8,
    out: &mut Evaluation,
) -> Result<(), GgmlAbort> {
    evaluate_one_keeping::<N>(t, c, xval, weight, waux, candidate, groups, None, out)
}

/// [`evaluate_one`], the groups outside `groups` taking the codes `keep` (when given) instead of
/// the candidate's own, so that the sums are those of the kept and the evaluated groups'
/// codes ([`Searcher::refine`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
fn evaluate_one_keeping<const N: usize>(
    t: &Lattice<N>,
    c: Codes,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    (id, scale): (f32, f32),
    groups: u8,
    keep: Option<&[i8]>,
    out: &mut Evaluation,
) -> Result<(), GgmlAbort> {
    let n = xval.len();
    assert!(n <= 32 && n.is_multiple_of(8) && n.is_multiple_of(N) && weight.len() >= n && waux.len() >= n);
    let (one, half, idv) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5), _mm256_set1_ps(id));
    let mut codes = [0i32; 32];
    for v in 0..n / 8 {
        let x = load8(&xval[8 * v..]);
        let l = clamp(nearest_int(_mm256_mul_ps(half, _mm256_sub_ps(_mm256_mul_ps(idv, x), one))), c.kmax - 1);
        // SAFETY: `codes` has room for 8 i32 at 8·v (v < 4).
        unsafe { _mm256_storeu_si256(codes.as_mut_ptr().add(8 * v).cast(), l) };
    }
    if let Some(keep) = keep {
        assert!(keep.len() >= n);
        for k in (0..n / N).filter(|k| groups & (1 << k) == 0) {
            for i in N * k..N * k + N {
                codes[i] = keep[i] as i32;
            }
        }
    }
    let mut on_grid = 0u8;
    for k in 0..n / N {
        if groups & (1 << k) == 0 {
            continue;
        }
        let r = N * k..N * k + N;
        let u =
            codes[r.clone()].iter().enumerate().fold(0usize, |u, (j, &q)| u | (q as usize) << (c.bits as usize * j));
        match t.lookup(u) {
            Lookup::OnGrid(_) => on_grid |= 1 << k,
            Lookup::Near(list) => {
                let best =
                    nearest::<N>(list, &ODD_LEVELS, &xval[r.clone()], &waux[r.clone()], scale).ok_or(GgmlAbort)?;
                codes[r].copy_from_slice(&winner_levels::<N>(list, best, c.bits));
            }
        }
    }
    let (mut tx, mut t2) = ([0f32; 32], [0f32; 32]);
    for v in 0..n / 8 {
        let (x, w, l) = (load8(&xval[8 * v..]), load8(&weight[8 * v..]), load8i(&codes[8 * v..]));
        let q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(l, l), _mm256_set1_epi32(1)));
        // SAFETY: `tx` and `t2` have room for 8 f32 at 8·v (v < 4).
        unsafe {
            _mm256_storeu_ps(tx.as_mut_ptr().add(8 * v), _mm256_mul_ps(_mm256_mul_ps(w, x), q));
            _mm256_storeu_ps(t2.as_mut_ptr().add(8 * v), _mm256_mul_ps(_mm256_mul_ps(w, q), q));
        }
    }
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..n {
        sumqx += tx[i];
        sumq2 += t2[i];
        out.codes[0][i][0] = codes[i] as i8;
    }
    out.sumqx[0] = sumqx;
    out.sumq2[0] = sumq2;
    out.on_grid[0] = on_grid;
    Ok(())
}

/// [`Searcher::signs8`] in lanes: the negatives' mask, their negations (`−x`, so `−0.0` stays
/// as it is, as `x >= 0` keeps it), and for an odd count the first lane of least `(w·x)·x`.
#[target_feature(enable = "avx2")]
fn signs8(xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
    assert!(xval.len() >= 8);
    let x = load8(xb);
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
    let sign = _mm256_set1_ps(-0.0);
    let mut v = _mm256_xor_ps(x, _mm256_and_ps(negative, sign));
    let mut s = _mm256_movemask_ps(negative) as u8;
    if even {
        if s.count_ones() % 2 == 1 {
            let ax = _mm256_mul_ps(_mm256_mul_ps(load8(weight), x), x);
            let m = _mm256_min_ps(ax, _mm256_permute2f128_ps::<1>(ax, ax));
            let m = _mm256_min_ps(m, _mm256_permute_ps::<0b01_00_11_10>(m));
            let m = _mm256_min_ps(m, _mm256_permute_ps::<0b10_11_00_01>(m));
            // The first lane holding the least value (the scalar loop's first strict minimum).
            let imin = (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(ax, m)) as u32).trailing_zeros();
            let lane = _mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(imin as i32));
            v = _mm256_xor_ps(v, _mm256_and_ps(_mm256_castsi256_ps(lane), sign));
            s ^= 1 << imin;
        }
        s &= 127;
    }
    // SAFETY: `xval` has room for 8 f32 (checked above).
    unsafe { _mm256_storeu_ps(xval.as_mut_ptr(), v) };
    s
}

/// [`Searcher::qp_scales8`]: the first part of `make_qp_quants` (largest value, first
/// estimate, the eight scaled candidates' errors and the choice among them) with lanes as the 8
/// blocks, each lane summing its block's values in order, the candidates' chains side by side;
/// then [`qp_finish`] per block.
#[target_feature(enable = "avx2")]
fn qp_scales8(nmax: i32, x: &[[f32; 32]; 8], qw: &[[f32; 32]; 8], blocks: u8) -> [f32; 8] {
    // xt[i] lane b: value i of block b.
    let (mut xt, mut wt) = ([_mm256_setzero_ps(); 32], [_mm256_setzero_ps(); 32]);
    for c in 0..4 {
        let (mut xr, mut wr) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
        for b in 0..8 {
            xr[b] = load8(&x[b][8 * c..]);
            wr[b] = load8(&qw[b][8 * c..]);
        }
        xt[8 * c..8 * c + 8].copy_from_slice(&super::kquants_avx2::transpose8(xr));
        wt[8 * c..8 * c + 8].copy_from_slice(&super::kquants_avx2::transpose8(wr));
    }
    // `max_ps(m, x)` is `m > x ? m : x`, ggml's `MAX(m, x)`.
    let mut max = _mm256_setzero_ps();
    for v in &xt {
        max = _mm256_max_ps(max, *v);
    }
    let nmaxf = _mm256_set1_ps(nmax as f32);
    let nmaxv = _mm256_set1_epi32(nmax);
    let iscale0 = _mm256_div_ps(nmaxf, max);
    let scale0 = _mm256_div_ps(_mm256_set1_ps(1.0), iscale0);
    let mut iscale_is = [_mm256_setzero_ps(); 8];
    let mut scale_is = [_mm256_setzero_ps(); 8];
    for (k, is) in [-4.0f32, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0].into_iter().enumerate() {
        iscale_is[k] = _mm256_div_ps(_mm256_add_ps(_mm256_set1_ps(0.1 * is), nmaxf), max);
        scale_is[k] = _mm256_div_ps(_mm256_set1_ps(1.0), iscale_is[k]);
    }
    let mut best_mse = _mm256_setzero_ps();
    let mut mse = [_mm256_setzero_ps(); 8];
    let byte = _mm256_set1_epi32(255);
    for i in 0..32 {
        let (xi, wi) = (xt[i], wt[i]);
        let l = _mm256_and_si256(nearest_int(_mm256_mul_ps(iscale0, xi)), byte);
        let diff = _mm256_sub_ps(xi, _mm256_mul_ps(scale0, _mm256_cvtepi32_ps(l)));
        best_mse = _mm256_add_ps(best_mse, _mm256_mul_ps(_mm256_mul_ps(wi, diff), diff));
        for k in 0..8 {
            let l = _mm256_min_epi32(nearest_int(_mm256_mul_ps(iscale_is[k], xi)), nmaxv);
            let diff = _mm256_sub_ps(xi, _mm256_mul_ps(scale_is[k], _mm256_cvtepi32_ps(l)));
            mse[k] = _mm256_add_ps(mse[k], _mm256_mul_ps(_mm256_mul_ps(wi, diff), diff));
        }
    }
    let mut iscale = iscale0;
    for k in 0..8 {
        let better = _mm256_cmp_ps::<_CMP_LT_OQ>(mse[k], best_mse);
        best_mse = _mm256_blendv_ps(best_mse, mse[k], better);
        iscale = _mm256_blendv_ps(iscale, iscale_is[k], better);
    }
    let (max, iscale) = (f32s(max), f32s(iscale));
    let mut out = [0f32; 8];
    for b in 0..8 {
        if blocks & (1 << b) == 0 || max[b] < crate::scalar::common::GROUP_MAX_EPS {
            continue;
        }
        let (mut xv, mut wv) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        for v in 0..4 {
            xv[v] = load8(&x[b][8 * v..]);
            wv[v] = load8(&qw[b][8 * v..]);
        }
        out[b] = qp_finish(nmax, &xv, &wv, iscale[b]);
    }
    out
}

/// [`Searcher::qp_scale`]: `make_qp_quants` of 32 values (ggml-quants.c), each float
/// operation as the scalar reference performs it. The eight scaled candidates' errors are summed
/// in lanes (lane = candidate, values in order), the first estimate's and the final sums' terms
/// are formed in lanes and added in order; the coordinate descent tests a vector of values at
/// a time against the current sums and applies the first value that changes (then tests again
/// from the next value), which is the sequential descent's every step.
#[target_feature(enable = "avx2")]
fn qp_scale(nmax: i32, x: &[f32; 32], qw: &[f32; 32]) -> f32 {
    let xv: [__m256; 4] = std::array::from_fn(|v| load8(&x[8 * v..]));
    let wv: [__m256; 4] = std::array::from_fn(|v| load8(&qw[8 * v..]));
    // The largest value (from 0, as ggml's `MAX` chain; only a positive maximum is used, and
    // the maximum of finite values does not depend on the order).
    let m = _mm256_max_ps(_mm256_max_ps(xv[0], xv[1]), _mm256_max_ps(xv[2], xv[3]));
    let max = f32s(m).into_iter().fold(0.0f32, c_max);
    if max < crate::scalar::common::GROUP_MAX_EPS {
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let nmaxv = _mm256_set1_epi32(nmax);
    let iscale0 = nmaxf / max;
    let scale0 = 1.0 / iscale0;
    // The first estimate's terms `w·diff·diff`, codes as ggml's `uint8_t` holds them.
    let mut terms = [0f32; 32];
    for v in 0..4 {
        let l = _mm256_and_si256(nearest_int(_mm256_mul_ps(_mm256_set1_ps(iscale0), xv[v])), _mm256_set1_epi32(255));
        let diff = _mm256_sub_ps(xv[v], _mm256_mul_ps(_mm256_set1_ps(scale0), _mm256_cvtepi32_ps(l)));
        // SAFETY: `terms` has room for 8 f32 at 8·v (v < 4).
        unsafe { _mm256_storeu_ps(terms.as_mut_ptr().add(8 * v), _mm256_mul_ps(_mm256_mul_ps(wv[v], diff), diff)) };
    }
    // Lanes: is = −4..−1, 1..4.
    let is = _mm256_setr_ps(-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0);
    let iscale_is = _mm256_div_ps(
        _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(0.1), is), _mm256_set1_ps(nmaxf)),
        _mm256_set1_ps(max),
    );
    let scale_is = _mm256_div_ps(_mm256_set1_ps(1.0), iscale_is);
    let mut mse = _mm256_setzero_ps();
    let mut best_mse = 0.0f32;
    for i in 0..32 {
        let xi = _mm256_set1_ps(x[i]);
        let l = _mm256_min_epi32(nearest_int(_mm256_mul_ps(iscale_is, xi)), nmaxv);
        let diff = _mm256_sub_ps(xi, _mm256_mul_ps(scale_is, _mm256_cvtepi32_ps(l)));
        mse = _mm256_add_ps(mse, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(qw[i]), diff), diff));
        best_mse += terms[i];
    }
    let (mse, iscales) = (f32s(mse), f32s(iscale_is));
    let mut iscale = iscale0;
    for k in 0..8 {
        if mse[k] < best_mse {
            best_mse = mse[k];
            iscale = iscales[k];
        }
    }
    qp_finish(nmax, &xv, &wv, iscale)
}

/// The end of `make_qp_quants` for 32 values (`xv`, weights `wv`, 8 per vector) from its chosen
/// `iscale`: the codes, their sums, and the coordinate descent (see [`qp_scale`]).
#[target_feature(enable = "avx2")]
fn qp_finish(nmax: i32, xv: &[__m256; 4], wv: &[__m256; 4], iscale: f32) -> f32 {
    let nmaxv = _mm256_set1_epi32(nmax);
    // Codes at the chosen scale (as ggml's `uint8_t`, and as ints for the sums), `w·x`, and
    // the sums' terms.
    let mut lq = [_mm256_setzero_si256(); 4];
    let mut lf = [_mm256_setzero_ps(); 4];
    let mut wx = [_mm256_setzero_ps(); 4];
    let (mut tx, mut t2) = ([0f32; 32], [0f32; 32]);
    for v in 0..4 {
        let l = _mm256_min_epi32(nearest_int(_mm256_mul_ps(_mm256_set1_ps(iscale), xv[v])), nmaxv);
        let f = _mm256_cvtepi32_ps(l);
        wx[v] = _mm256_mul_ps(wv[v], xv[v]);
        lq[v] = _mm256_and_si256(l, _mm256_set1_epi32(255));
        lf[v] = _mm256_cvtepi32_ps(lq[v]);
        // SAFETY: `tx` and `t2` have room for 8 f32 at 8·v (v < 4).
        unsafe {
            _mm256_storeu_ps(tx.as_mut_ptr().add(8 * v), _mm256_mul_ps(wx[v], f));
            _mm256_storeu_ps(t2.as_mut_ptr().add(8 * v), _mm256_mul_ps(_mm256_mul_ps(wv[v], f), f));
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..32 {
        sumlx += tx[i];
        suml2 += t2[i];
    }
    let zero = _mm256_setzero_ps();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for _ in 0..5 {
        let mut changed = false;
        // The first value not yet tested in this pass.
        let mut from = 0usize;
        'pass: while from < 32 {
            let (sx, s2) = (_mm256_set1_ps(sumlx), _mm256_set1_ps(suml2));
            let rhs_base = _mm256_set1_ps(sumlx * sumlx);
            for v in from / 8..4 {
                let slx = _mm256_sub_ps(sx, _mm256_mul_ps(wx[v], lf[v]));
                let sl2 = _mm256_sub_ps(s2, _mm256_mul_ps(_mm256_mul_ps(wv[v], lf[v]), lf[v]));
                let ok = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero), _mm256_cmp_ps::<_CMP_GT_OQ>(sl2, zero));
                // Lanes where `ok` fails may divide by zero or a negative; they are not used.
                let new_l = _mm256_min_epi32(nearest_int(_mm256_div_ps(_mm256_mul_ps(xv[v], sl2), slx)), nmaxv);
                let differs = _mm256_xor_si256(_mm256_cmpeq_epi32(new_l, lq[v]), _mm256_set1_epi32(-1));
                let nf = _mm256_cvtepi32_ps(new_l);
                let slx_new = _mm256_add_ps(slx, _mm256_mul_ps(wx[v], nf));
                let sl2_new = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wv[v], nf), nf));
                let better = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(_mm256_mul_ps(slx_new, slx_new), s2),
                    _mm256_mul_ps(rhs_base, sl2_new),
                );
                let tested = _mm256_cmpgt_epi32(
                    _mm256_add_epi32(lane, _mm256_set1_epi32(8 * v as i32)),
                    _mm256_set1_epi32(from as i32 - 1),
                );
                let take =
                    _mm256_and_ps(_mm256_and_ps(ok, better), _mm256_castsi256_ps(_mm256_and_si256(differs, tested)));
                let mask = _mm256_movemask_ps(take);
                if mask != 0 {
                    let j = mask.trailing_zeros() as usize;
                    let (nl, sxn, s2n) = (i32s(new_l), f32s(slx_new), f32s(sl2_new));
                    let mut codes = i32s(lq[v]);
                    codes[j] = nl[j] & 255;
                    lq[v] = load8i(&codes);
                    lf[v] = _mm256_cvtepi32_ps(lq[v]);
                    sumlx = sxn[j];
                    suml2 = s2n[j];
                    changed = true;
                    from = 8 * v + j + 1;
                    continue 'pass;
                }
            }
            break;
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// [`Searcher::iq1_order`] by ranks: value i's position is the number of values below it plus
/// the number of equal ones before it, counted in lanes (lanes are values, one broadcast per
/// other value). Keys are the values' bits made to order as signed integers do (`x + 0.0`, so
/// that `−0.0` ties `+0.0`; negative values' magnitude bits flipped); "below, or equal and
/// before" is `k_j < k_i + [j < i]` (the values are finite, so `k_i + 1` does not overflow).
#[target_feature(enable = "avx2")]
fn iq1_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    assert!(N.is_multiple_of(8) && N <= 32 && xb.len() >= N);
    let mut keys = [_mm256_setzero_si256(); 4];
    let mut flat = [0i32; 32];
    for v in 0..N / 8 {
        let bits = _mm256_castps_si256(_mm256_add_ps(load8(&xb[8 * v..]), _mm256_setzero_ps()));
        keys[v] = _mm256_xor_si256(bits, _mm256_srli_epi32::<1>(_mm256_srai_epi32::<31>(bits)));
        // SAFETY: `flat` has room for 8 i32 from 8·v (v < 4); storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(flat[8 * v..].as_mut_ptr().cast(), keys[v]) };
    }
    let one = _mm256_set1_epi32(1);
    let plus = keys.map(|k| _mm256_add_epi32(k, one));
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut rank = [_mm256_setzero_si256(); 4];
    for jb in 0..N / 8 {
        for jj in 0..8 {
            let kj = _mm256_set1_epi32(flat[8 * jb + jj]);
            // Lanes of block jb after value j count equal keys too.
            let after = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(jj as i32));
            for v in 0..N / 8 {
                let k = if v < jb {
                    keys[v]
                } else if v > jb {
                    plus[v]
                } else {
                    _mm256_blendv_epi8(keys[v], plus[v], after)
                };
                rank[v] = _mm256_sub_epi32(rank[v], _mm256_cmpgt_epi32(k, kj));
            }
        }
    }
    let mut ranks = [0i32; 32];
    for v in 0..N / 8 {
        // SAFETY: as above.
        unsafe { _mm256_storeu_si256(ranks[8 * v..].as_mut_ptr().cast(), rank[v]) };
    }
    let mut order = [0usize; N];
    for (i, &r) in ranks[..N].iter().enumerate() {
        // Ranks are a permutation of 0..N (distinct keys after the tie-break).
        order[r as usize & (N - 1)] = i;
    }
    order
}

/// Per-lane candidate masks of up to 4 variants (`c[k]`, all bits set or clear per lane) as one
/// 32-bit mask in ggml's order: bit `4·lane + k` for variant `k` of lane `lane`.
#[inline]
#[target_feature(enable = "avx2")]
fn interleave4(c: [__m256; 4]) -> u32 {
    let a = _mm256_packs_epi32(_mm256_castps_si256(c[0]), _mm256_castps_si256(c[1]));
    let b = _mm256_packs_epi32(_mm256_castps_si256(c[2]), _mm256_castps_si256(c[3]));
    // Per 128-bit half: byte 4·k + l for lane l of the half; then byte 4·l + k.
    let bytes = _mm256_packs_epi16(a, b);
    let t = _mm256_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    );
    _mm256_movemask_epi8(_mm256_shuffle_epi8(bytes, t)) as u32
}

/// The sequential choice over one chunk of candidates (ggml's order: variant `k` of lane `l`
/// is bit `4·l + k`), from the running best: each candidate with `sumq2 > 0 && sumqx² >
/// best·sumq2` becomes the best (`scale = sumqx / sumq2`, `best = scale·sumqx`). Returns the
/// last winner's `(bit, scale)`, if any, and leaves the running best in every lane of `best`
/// (kept in lanes: the next chunk's test waits on it, and a store and reload would lengthen
/// that wait).
///
/// Without a walk: each candidate's `best` (`score`) is formed in lanes, and the running best
/// before each candidate is predicted as the largest of the start and the earlier scores (a
/// prefix maximum, in lanes); the winners are then the candidates whose score exceeds it. The
/// prediction is checked by performing ggml's very test against it for every candidate: where
/// every test agrees with the prediction, by induction over the candidates the running best
/// before each is the prediction and the winners are the predicted ones. Where any disagrees
/// (near-equal scores, where rounding decides), the candidates are walked one by one as ggml
/// does. Where all agree, the running best after the chunk is the last prefix maximum (the
/// last winner's score, or the start's where none won).
#[inline]
#[target_feature(enable = "avx2")]
fn walk_chunk<const V: usize>(sumqx: &[__m256; 4], sumq2: &[__m256; 4], best: &mut __m256) -> Option<(u32, f32)> {
    let zero = _mm256_setzero_ps();
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut scale = [zero; 4];
    let mut score = [zero; 4];
    let mut s = [ninf; 4];
    let mut pos = [zero; 4];
    for k in 0..V {
        pos[k] = _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2[k], zero);
        scale[k] = _mm256_div_ps(sumqx[k], sumq2[k]);
        score[k] = _mm256_mul_ps(scale[k], sumqx[k]);
        // Candidates that cannot win (sumq2 ≤ 0, padding) and NaN scores count as −∞.
        let ok = _mm256_and_ps(pos[k], _mm256_cmp_ps::<_CMP_ORD_Q>(score[k], score[k]));
        s[k] = _mm256_blendv_ps(ninf, score[k], ok);
    }
    // Per lane the largest score, then the running maximum over lanes before each lane.
    let lane_max = _mm256_max_ps(_mm256_max_ps(s[0], s[1]), _mm256_max_ps(s[2], s[3]));
    let mut m = lane_max;
    let up1 = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6);
    m = _mm256_max_ps(m, _mm256_blend_ps::<0b0000_0001>(_mm256_permutevar8x32_ps(m, up1), ninf));
    let up2 = _mm256_setr_epi32(0, 0, 0, 1, 2, 3, 4, 5);
    m = _mm256_max_ps(m, _mm256_blend_ps::<0b0000_0011>(_mm256_permutevar8x32_ps(m, up2), ninf));
    let up4 = _mm256_setr_epi32(0, 0, 0, 0, 0, 1, 2, 3);
    m = _mm256_max_ps(m, _mm256_blend_ps::<0b0000_1111>(_mm256_permutevar8x32_ps(m, up4), ninf));
    let before = _mm256_blend_ps::<0b0000_0001>(_mm256_permutevar8x32_ps(m, up1), ninf);
    let mut running = _mm256_max_ps(*best, before);
    let mut wins = [zero; 4];
    let mut disagree = zero;
    for k in 0..V {
        wins[k] = _mm256_cmp_ps::<_CMP_GT_OQ>(s[k], running);
        let test = _mm256_and_ps(
            pos[k],
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumqx[k], sumqx[k]), _mm256_mul_ps(running, sumq2[k])),
        );
        disagree = _mm256_or_ps(disagree, _mm256_xor_ps(wins[k], test));
        running = _mm256_max_ps(running, s[k]);
    }
    if _mm256_movemask_ps(disagree) != 0 {
        let (scale, score) = (scale.map(|v| f32s(v)), score.map(|v| f32s(v)));
        let (qx, q2) = (sumqx.map(|v| f32s(v)), sumq2.map(|v| f32s(v)));
        let mut best_score = _mm256_cvtss_f32(*best);
        let mut won = None;
        for lane in 0..8 {
            for k in 0..V {
                if q2[k][lane] > 0.0 && qx[k][lane] * qx[k][lane] > best_score * q2[k][lane] {
                    best_score = score[k][lane];
                    won = Some(((4 * lane + k) as u32, scale[k][lane]));
                }
            }
        }
        *best = _mm256_set1_ps(best_score);
        return won;
    }
    // The running best after the chunk: the last lane of `running`, which is the largest of
    // the start and every score. Formed from the scores by a reduction rather than read at the
    // end of the prefix scan, so that the next chunk's test waits on a shorter chain.
    let h = _mm256_max_ps(lane_max, _mm256_permute2f128_ps::<0x01>(lane_max, lane_max));
    let h = _mm256_max_ps(h, _mm256_permute_ps::<0b01_00_11_10>(h));
    let h = _mm256_max_ps(h, _mm256_permute_ps::<0b10_11_00_01>(h));
    *best = _mm256_max_ps(*best, h);
    let mask = interleave4(wins);
    if mask == 0 {
        return None;
    }
    let bit = 31 - mask.leading_zeros();
    let (lane, k) = ((bit / 4) as usize, (bit % 4) as usize);
    Some((bit, f32s(scale[k])[lane]))
}

/// [`Searcher::iq1s_split`]: lanes are `i2`, a chunk of 8 lanes is tested against the running
/// best at once and walked only when some candidate passes ([`walk_chunk`]).
#[target_feature(enable = "avx2")]
fn iq1s_split(sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
    // Padded with NaN so that 8 lanes from any i2 ≤ 32 can be loaded and lanes past 32 fail
    // every test. The third group's terms do not depend on i1: formed once per i2 and shift,
    // `(sumx[32] − sumx[i2])·x2` and `(sumw[32] − sumw[i2])·x2·x2` as ggml forms them.
    let mut px = [f32::NAN; 40];
    let mut pw = [f32::NAN; 40];
    px[..33].copy_from_slice(sumx);
    pw[..33].copy_from_slice(sumw);
    let mut cx = [[f32::NAN; 40]; 2];
    let mut cw = [[f32::NAN; 40]; 2];
    for (v, xs) in [X_P, X_M].iter().enumerate() {
        for i2 in 0..=32 {
            cx[v][i2] = (sumx[32] - sumx[i2]) * xs[2];
            cw[v][i2] = (sumw[32] - sumw[i2]) * xs[2] * xs[2];
        }
    }
    let x1 = [_mm256_set1_ps(X_P[1]), _mm256_set1_ps(X_M[1])];
    let zero = _mm256_setzero_ps();
    let mut best_score = _mm256_set1_ps(-FLT_MAX);
    let mut best = None;
    for i1 in 0..=32usize {
        let (xi1, wi1) = (_mm256_set1_ps(sumx[i1]), _mm256_set1_ps(sumw[i1]));
        let (a, aw) = (sumx[i1] - sumx[0], sumw[i1] - sumw[0]);
        let head = [_mm256_set1_ps(a * X_P[0]), _mm256_set1_ps(a * X_M[0])];
        let headw = [_mm256_set1_ps(aw * X_P[0] * X_P[0]), _mm256_set1_ps(aw * X_M[0] * X_M[0])];
        // A plain counted loop: `step_by` over an inclusive range costs several instructions
        // per chunk for its end test.
        for c in 0..(32 - i1) / 8 + 1 {
            let base = i1 + 8 * c;
            let b = _mm256_sub_ps(load8(&px[base..]), xi1);
            let bw = _mm256_sub_ps(load8(&pw[base..]), wi1);
            let mut qx = [zero; 4];
            let mut q2 = [zero; 4];
            let bs = best_score;
            let mut any = zero;
            for v in 0..2 {
                qx[v] = _mm256_add_ps(_mm256_add_ps(head[v], _mm256_mul_ps(b, x1[v])), load8(&cx[v][base..]));
                q2[v] = _mm256_add_ps(
                    _mm256_add_ps(headw[v], _mm256_mul_ps(_mm256_mul_ps(bw, x1[v]), x1[v])),
                    load8(&cw[v][base..]),
                );
                // Without `sumq2 > 0` (the walk tests it): a lane passing here may still fail.
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(qx[v], qx[v]), _mm256_mul_ps(bs, q2[v]));
                any = _mm256_or_ps(any, gt);
            }
            if _mm256_movemask_ps(any) == 0 {
                continue;
            }
            if let Some((bit, scale)) = walk_chunk::<2>(&qx, &q2, &mut best_score) {
                best = Some((i1, base + (bit / 4) as usize, if bit % 4 == 0 { 1 } else { -1 }, scale));
            }
        }
    }
    best
}

/// [`Searcher::iq1m_split`]: lanes are `i2`, a chunk of 8 lanes (4 sign patterns each) is
/// tested against the running best at once and walked only when some candidate passes
/// ([`walk_chunk`]).
#[target_feature(enable = "avx2")]
fn iq1m_split(px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
    let txs = [px[0][16], px[1][16]];
    let tws = [pw[0][16], pw[1][16]];
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    // Padded with NaN so that 8 lanes from any i2 ≤ 16 can be loaded and lanes past 16 fail
    // every test; `pw[h][i2]·cp2` and `·cm2` (ggml's last products) formed once per i2.
    let mut ppx = [[f32::NAN; 24]; 2];
    let mut pwp = [[f32::NAN; 24]; 2];
    let mut pwm = [[f32::NAN; 24]; 2];
    for h in 0..2 {
        for i2 in 0..=16 {
            ppx[h][i2] = px[h][i2];
            pwp[h][i2] = pw[h][i2] * cp2;
            pwm[h][i2] = pw[h][i2] * cm2;
        }
    }
    let txp = [_mm256_set1_ps(txs[0] * p2), _mm256_set1_ps(txs[1] * p2)];
    let txm = [_mm256_set1_ps(txs[0] * m2), _mm256_set1_ps(txs[1] * m2)];
    let zero = _mm256_setzero_ps();
    let mut best_score = _mm256_set1_ps(-FLT_MAX);
    let mut best = None;
    for i1 in 0..=16usize {
        let pxi1 = [_mm256_set1_ps(px[0][i1]), _mm256_set1_ps(px[1][i1])];
        let rowp: [__m256; 2] = std::array::from_fn(|h| _mm256_set1_ps(tws[h] * p2 * p2 + pw[h][i1] * cp1));
        let rowm: [__m256; 2] = std::array::from_fn(|h| _mm256_set1_ps(tws[h] * m2 * m2 + pw[h][i1] * cm1));
        // A plain counted loop: `step_by` over an inclusive range costs several instructions
        // per chunk for its end test.
        for c in 0..(16 - i1) / 8 + 1 {
            let base = i1 + 8 * c;
            let mut qx_p = [zero; 2];
            let mut qx_m = [zero; 2];
            let mut q2_p = [zero; 2];
            let mut q2_m = [zero; 2];
            for h in 0..2 {
                let sx = _mm256_add_ps(pxi1[h], load8(&ppx[h][base..]));
                qx_p[h] = _mm256_sub_ps(txp[h], sx);
                qx_m[h] = _mm256_sub_ps(txm[h], sx);
                q2_p[h] = _mm256_add_ps(rowp[h], load8(&pwp[h][base..]));
                q2_m[h] = _mm256_add_ps(rowm[h], load8(&pwm[h][base..]));
            }
            let sumqx = [
                _mm256_add_ps(qx_p[0], qx_p[1]),
                _mm256_add_ps(qx_p[0], qx_m[1]),
                _mm256_add_ps(qx_m[0], qx_p[1]),
                _mm256_add_ps(qx_m[0], qx_m[1]),
            ];
            let sumq2 = [
                _mm256_add_ps(q2_p[0], q2_p[1]),
                _mm256_add_ps(q2_p[0], q2_m[1]),
                _mm256_add_ps(q2_m[0], q2_p[1]),
                _mm256_add_ps(q2_m[0], q2_m[1]),
            ];
            // Without `sumq2 > 0` (the walk tests it): a lane passing here may still fail.
            let bs = best_score;
            let mut any = zero;
            for k in 0..4 {
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumqx[k], sumqx[k]), _mm256_mul_ps(bs, sumq2[k]));
                any = _mm256_or_ps(any, gt);
            }
            if _mm256_movemask_ps(any) == 0 {
                continue;
            }
            if let Some((bit, scale)) = walk_chunk::<4>(&sumqx, &sumq2, &mut best_score) {
                best = Some((i1, base + (bit / 4) as usize, (bit % 4) as usize, scale));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::common::make_qp_quants;

    /// Uniform values in [0, 1) from a fixed xorshift sequence.
    fn uniform() -> impl FnMut() -> f32 {
        crate::x86::tests::xorshift_uniform(0x9E37_79B9_7F4A_7C15)
    }

    /// `qp_scales8` against the scalar `make_qp_quants`, block by block (some blocks left out,
    /// some all zero).
    #[test]
    fn qp_scales8_matches_make_qp_quants() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = uniform();
        for case in 0..5_000 {
            let mut x = [[0f32; 32]; 8];
            let mut w = [[0f32; 32]; 8];
            for b in 0..8 {
                let scale = [1.0, 0.02, 1e-3, 1e-12, 1e12, 3.0, 0.5, 0.0][(case + b) % 8];
                for i in 0..32 {
                    x[b][i] = if (case + b) % 5 == 0 { (next() * 8.0).floor() * 0.25 } else { next() * scale };
                    if next() < 0.1 {
                        x[b][i] = -x[b][i] * next();
                    }
                    w[b][i] = if next() < 0.2 { 0.0 } else { next() * next() * 10.0 };
                }
            }
            let blocks = (case as u8).wrapping_mul(37) | 1;
            for nmax in [4, 15] {
                // SAFETY: AVX2 was detected above.
                let got = unsafe { qp_scales8(nmax, &x, &w, blocks) };
                for b in 0..8 {
                    let want =
                        if blocks & (1 << b) != 0 { make_qp_quants(nmax, &x[b], &mut [0u8; 32], &w[b]) } else { 0.0 };
                    assert_eq!(got[b].to_bits(), want.to_bits(), "case {case} block {b} nmax {nmax}");
                }
            }
        }
    }

    /// The IQ1 boundary searches against the scalar reference on prefix sums of sorted blocks
    /// built as the quantizers build them: ordinary values, values on a coarse grid (equal
    /// values, so equal scores and near-ties where rounding decides), zero and tiny weights
    /// (repeated prefix sums), all-equal blocks, huge and tiny scales.
    #[test]
    fn iq1_splits_match_reference() {
        use crate::scalar::iq_search::Reference;
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = uniform();
        for case in 0..20_000 {
            let ((sumx, sumw), (px, pw)) = crate::x86::tests::iq1_split_case(case, &mut next);
            // SAFETY: AVX2 was detected above.
            let got = unsafe { iq1s_split(&sumx, &sumw) };
            let want = Reference.iq1s_split(&sumx, &sumw);
            assert_eq!(
                got.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                want.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                "IQ1_S case {case}"
            );
            // IQ1_M: the first 16 values, their halves by the parity of their index.
            // SAFETY: AVX2 was detected above.
            let got = unsafe { iq1m_split(&px, &pw) };
            let want = Reference.iq1m_split(&px, &pw);
            assert_eq!(
                got.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                want.map(|(a, b, c, d)| (a, b, c, d.to_bits())),
                "IQ1_M case {case}"
            );
        }
    }

    /// `iq1_order` against the scalar stable sort: equal values, signed zeros, tiny and huge
    /// magnitudes, negative values.
    #[test]
    fn iq1_order_matches_sorted_order() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = uniform();
        for case in 0..50_000 {
            let x = crate::x86::tests::iq1_order_case(case, &mut next);
            // SAFETY: AVX2 was detected above.
            let got = unsafe { iq1_order::<32>(&x) };
            assert_eq!(got, crate::scalar::iq1::sorted_order::<32>(&x), "{x:?}");
            // SAFETY: AVX2 was detected above.
            let got = unsafe { iq1_order::<16>(&x[..16]) };
            assert_eq!(got, crate::scalar::iq1::sorted_order::<16>(&x[..16]), "{x:?}");
        }
    }

    /// `signs8` against the scalar one: signed zeros, ties of the least `w·x·x` (equal values,
    /// zero weights, −0.0 weights), odd and even counts of negatives.
    #[test]
    fn signs8_matches_scalar() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as u32
        };
        let values = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1e-30, -1e-30, 3.25, -7.0];
        let weights = [0.0, -0.0, 1.0, 2.0, 0.5, 1e-20];
        for _ in 0..200_000 {
            let xb: [f32; 8] = std::array::from_fn(|_| values[next() as usize % values.len()]);
            let w: [f32; 8] = std::array::from_fn(|_| weights[next() as usize % weights.len()]);
            for even in [false, true] {
                let (mut want, mut got) = ([0f32; 8], [0f32; 8]);
                let sw = crate::scalar::iq2::signs8(&xb, &w, &mut want, even);
                // SAFETY: AVX2 was detected above.
                let sg = unsafe { signs8(&xb, &w, &mut got, even) };
                assert_eq!(sw, sg, "{xb:?} {w:?} {even}");
                assert_eq!(want.map(f32::to_bits), got.map(f32::to_bits), "{xb:?} {w:?} {even}");
            }
        }
    }

    /// `qp_scale` against the scalar `make_qp_quants` on blocks shaped like IQ2_XXS's (magnitudes,
    /// one negated value in some groups, zero and spread weights), on ties of the candidate
    /// scales (values on multiples of a step) and on tiny and huge magnitudes.
    #[test]
    fn qp_scale_matches_make_qp_quants() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = uniform();
        for case in 0..40_000 {
            let shape = case % 8;
            let scale = [1.0, 0.02, 1e-3, 1e-12, 1e12, 3.0, 0.5, 1e-16][shape];
            let mut x = [0f32; 32];
            let mut w = [0f32; 32];
            for i in 0..32 {
                let u = next();
                x[i] = match shape {
                    5 => (u * 8.0).floor() * 0.25,
                    6 => (u * 4.0).round(),
                    _ => u * scale,
                };
                if next() < 0.1 {
                    x[i] = -x[i] * next();
                }
                w[i] = match case % 5 {
                    0 => 1.0,
                    1 if next() < 0.3 => 0.0,
                    _ => next() * next() * 10.0,
                };
            }
            for nmax in [4, 15] {
                let want = make_qp_quants(nmax, &x, &mut [0u8; 32], &w);
                // SAFETY: AVX2 was detected above.
                let got = unsafe { qp_scale(nmax, &x, &w) };
                assert_eq!(got.to_bits(), want.to_bits(), "case {case} nmax {nmax}: {x:?} {w:?}");
            }
        }
    }
}
