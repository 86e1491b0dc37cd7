//! AVX-512 (F + BW) version of the i-quants' multi-candidate evaluation ([`Searcher::evaluate`]
//! of 2..=32 candidates: IQ3_XXS and IQ3_S on the 4-value 3-bit grids, IQ2_XXS, IQ2_XS and IQ2_S
//! on the 8-value 2-bit grids) with 16 candidates per vector, and the candidate scales 16
//! divisions at a time, and the IQ3 searches' choice among the candidates in lanes; every other search (the one-candidate refinement, the lanes-as-neighbours
//! search, signs, IQ1) is the AVX2 searcher's ([`Avx2`]). Like the AVX2 kernel it performs the
//! scalar reference's float operations, in the same order, per lane, so its results are the
//! reference's bit for bit:
//!
//! - the codes, their packed form and the code map look-ups (gathers) of 16 candidates at a
//!   time, and the sums `Σ w·x·q`, `Σ w·q²` of 16 candidates side by side, each lane summing
//!   its candidate's values in order (the two chunks' chains interleaved);
//! - the neighbour searches of candidates whose codes fall on the same list (a "window"): lanes
//!   are the candidates among the 16 from the first pending one that share its code, each
//!   adding its per-level distance terms (the scalar search's very products) in coordinate order
//!   and keeping the packed code of its first minimum over the list, scanned in order. The terms
//!   depend only on a lane's scale, so one table (3-bit: 32 terms; 2-bit: the prefix sums of
//!   the AVX2 prefix search and 15 terms) serves every later window of the group whose run lies
//!   within the table's 16 candidates (the AVX2 kernel forms it per window of 8); a window of one
//!   candidate on a list longer than 8 is searched with lanes as neighbours (the AVX2
//!   `nearest`), as the AVX2 kernel does;
//! - two blocks' evaluations at once ([`Searcher::evaluate_pair`], IQ3_S's and IQ2_S's blocks
//!   two at a time): the first block's candidates in lanes 0.., the second's in lanes 24..,
//!   each lane with its block's values and weights, so that 19 + 19 candidates take three
//!   vectors of 16 rather than four, and a table of terms can serve the end of one block's
//!   candidates and the start of the other's.
//!
//! Written for this machine's Zen 5, whose 512-bit units are full width (a 16-lane operation
//! costs an 8-lane one). Measured against the AVX2 kernels (`bench_quant_ratios.py`, 16 MiB,
//! alternating builds): IQ3_XXS +19%, IQ3_S +10%, IQ2_S +11–15%, IQ2_XXS +14%, IQ2_XS +10%.
//!
//! Every `#[target_feature]` function here is reached only through the AVX-512 table, handed
//! out only after detecting AVX2, AVX-512F and AVX-512BW.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::iquants_avx2::{Avx2, nearest, winner_levels};
use crate::QuantType;
use crate::backend::Refusal;
use crate::scalar::iq_search::{Block, Codes, Evaluation, ODD_LEVELS, Searcher};
use crate::scalar::iq_tables::{FLT_MAX, GgmlAbort, Lattice, List};
use crate::scalar::iquants;

/// The AVX-512 searches: [`Avx2`]'s, but for the multi-candidate evaluation of the 4-value
/// groups (the 3-bit grids). Only this module makes one, inside `#[target_feature]` functions
/// that only run where AVX2, AVX-512F and AVX-512BW were detected.
pub(crate) struct Avx512 {
    avx2: Avx2,
    /// [`evaluate16`]'s working arrays, kept from call to call.
    scratch: RefCell<Scratch>,
}

impl Avx512 {
    /// Only called where AVX2, AVX-512F and AVX-512BW were detected (see the type).
    fn new() -> Self {
        Avx512 { avx2: Avx2::new(), scratch: RefCell::new(Scratch::default()) }
    }
}

/// Candidates [`evaluate16`] handles at most: two chunks of 16.
const ROW: usize = 32;

/// [`evaluate16`]'s working arrays. Entries not written by the current call may hold an
/// earlier call's values; [`evaluate16`] reads only entries it wrote, except in chunks of 16
/// whose lanes past the last candidate it masks off.
#[repr(C, align(64))]
struct Scratch {
    /// `codes[i][c]`: value i's code for candidate c.
    codes: [[i32; ROW]; 32],
    /// Per group, each candidate's packed code (and room for a load of 16 from the last).
    packed: [[i32; ROW + 16]; 8],
    /// Per group, each candidate's code map entry.
    entries: [[i32; ROW]; 8],
    /// The distance terms of one chunk and group: `terms[i][l]`, coordinate i at level l (see
    /// [`lane_terms16`]).
    terms: [[__m512; 8]; 4],
    /// The 2-bit grids' table of prefix sums and terms (see [`PREFIX_AT`]).
    prefix: [__m512; PREFIX],
    /// [`evaluate16_pair`]'s rows (as `codes`, `packed`, `entries`, for two blocks' lanes).
    pair: PairRows,
}

/// Lanes of [`evaluate16_pair`]: the first block's candidates from lane 0, the second's from
/// lane [`PAIR_B`] (a multiple of 8, so that each chunk of 8 lanes is one block's).
const PAIR_B: usize = 24;
/// Lanes of [`evaluate16_pair`]'s rows.
const PAIR_ROW: usize = 48;

/// [`evaluate16_pair`]'s working rows (see [`Scratch`]).
#[repr(C, align(64))]
struct PairRows {
    codes: [[i32; PAIR_ROW]; 32],
    packed: [[i32; PAIR_ROW + 16]; 8],
    entries: [[i32; PAIR_ROW]; 8],
}

impl Default for Scratch {
    fn default() -> Self {
        // SAFETY: all bits zero is a valid `__m512` (sixteen 0.0).
        let (terms, prefix) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let pair =
            PairRows { codes: [[0; PAIR_ROW]; 32], packed: [[0; PAIR_ROW + 16]; 8], entries: [[0; PAIR_ROW]; 8] };
        Scratch { codes: [[0; ROW]; 32], packed: [[0; ROW + 16]; 8], entries: [[0; ROW]; 8], terms, prefix, pair }
    }
}

/// IQ3_XXS and IQ3_S (and every other i-quant, with the AVX2 searches) without importance
/// weights; refuses NaN and infinities.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) fn quantize(ty: QuantType, x: &[f32], y: &mut [u8]) -> Result<(), Refusal> {
    if crate::backend::first_non_finite(x).is_some() {
        return Err(Refusal::NonFinite);
    }
    iquants::quantize(&Avx512::new(), ty, x, y, None)
}

/// The i-quants with importance weights `qw` (a row's worth); values finite.
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) fn quantize_rows(ty: QuantType, x: &[f32], y: &mut [u8], qw: &[f32]) -> Result<(), Refusal> {
    iquants::quantize_rows(&Avx512::new(), ty, x, y, qw)
}

impl Searcher for Avx512 {
    fn nearest<const N: usize>(
        &self,
        list: List<'_>,
        qtab: &[f32; 8],
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Option<usize> {
        self.avx2.nearest::<N>(list, qtab, x, w, scale)
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
        let (three_bit, two_bit) = (N == 4 && c.bits == 3, N == 8 && c.bits == 2);
        if !(three_bit || two_bit) || candidates.len() < 2 {
            return self.avx2.evaluate::<N>(t, c, xval, weight, waux, candidates, groups, out);
        }
        // Not re-entered, so the scratch is free; were it not, a fresh one does the same.
        let mut fresh = None;
        let mut held = self.scratch.try_borrow_mut().ok();
        let scratch = match held.as_deref_mut() {
            Some(s) => s,
            None => &mut **fresh.insert(Box::new(Scratch::default())),
        };
        // SAFETY: an `Avx512` exists only once AVX2, AVX-512F and AVX-512BW were detected (see
        // the type).
        unsafe { evaluate16::<N>(t, c, xval, weight, waux, candidates, groups, out, scratch) }
    }

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
        let (three_bit, two_bit) = (N == 4 && c.bits == 3, N == 8 && c.bits == 2);
        let fits = |b: &Block<'_>| (2..=PAIR_B).contains(&b.candidates.len());
        if !(three_bit || two_bit) || !fits(a) || !fits(b) || a.xval.len() != b.xval.len() {
            self.evaluate::<N>(t, c, a.xval, a.weight, a.waux, a.candidates, groups, out_a)?;
            return self.evaluate::<N>(t, c, b.xval, b.weight, b.waux, b.candidates, groups, out_b);
        }
        let mut fresh = None;
        let mut held = self.scratch.try_borrow_mut().ok();
        let scratch = match held.as_deref_mut() {
            Some(s) => s,
            None => &mut **fresh.insert(Box::new(Scratch::default())),
        };
        // SAFETY: as in `evaluate`.
        unsafe { evaluate16_pair::<N>(t, c, a, b, groups, out_a, out_b, scratch) }
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
        self.avx2.refine::<N>(t, c, xval, weight, waux, candidate, groups, l, out)
    }

    fn candidates(&self, numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
        // SAFETY: as above.
        unsafe { candidates16(numerators, max, out) }
    }

    fn sums_of_squares8(&self, x: &[f32]) -> [f32; 8] {
        self.avx2.sums_of_squares8(x)
    }

    fn signs8(&self, xb: &[f32], weight: &[f32], xval: &mut [f32], even: bool) -> u8 {
        self.avx2.signs8(xb, weight, xval, even)
    }

    fn qp_scales8(&self, nmax: i32, x: &[[f32; 32]; 8], qw: &[[f32; 32]; 8], blocks: u8) -> [f32; 8] {
        self.avx2.qp_scales8(nmax, x, qw, blocks)
    }

    fn qp_scale(&self, nmax: i32, x: &[f32; 32], qw: &[f32; 32]) -> f32 {
        self.avx2.qp_scale(nmax, x, qw)
    }

    fn iq1_order<const N: usize>(&self, xb: &[f32]) -> [usize; N] {
        self.avx2.iq1_order::<N>(xb)
    }

    fn iq1s_split(&self, sumx: &[f32; 33], sumw: &[f32; 33]) -> Option<(usize, usize, i8, f32)> {
        self.avx2.iq1s_split(sumx, sumw)
    }

    fn iq1m_split(&self, px: &[[f32; 17]; 2], pw: &[[f32; 17]; 2]) -> Option<(usize, usize, usize, f32)> {
        self.avx2.iq1m_split(px, pw)
    }

    fn choose(&self, ev: &Evaluation, n: usize) -> Option<(usize, f32)> {
        // SAFETY: as above.
        unsafe { choose16(ev, n) }
    }
}

/// [`Evaluation::choose`] of candidates `0..n` (at most 32) with the divisions and products
/// formed 16 at a time: per candidate `sumqx²`, `scale = sumqx / sumq2` and `scale·sumqx` (the
/// reference's very operations); then winner by winner, the first candidate after the last
/// winner that passes `sumq2 > 0 && sumqx² > best·sumq2` (one multiplication and comparison
/// of 32 lanes per winner), `best` becoming its `scale·sumqx`.
#[target_feature(enable = "avx512f")]
fn choose16(ev: &Evaluation, n: usize) -> Option<(usize, f32)> {
    assert!(n <= ROW);
    let zero = _mm512_setzero_ps();
    let (mut sq, mut q2) = ([zero; 2], [zero; 2]);
    let (mut scale, mut score) = ([0f32; ROW], [0f32; ROW]);
    let mut positive = 0u32;
    for h in 0..2 {
        let (x, q) = (load16(&ev.sumqx[16 * h..]), load16(&ev.sumq2[16 * h..]));
        let sc = _mm512_div_ps(x, q);
        // SAFETY: both arrays hold 32 f32, so 16 at 16h (h < 2).
        unsafe {
            _mm512_storeu_ps(scale.as_mut_ptr().add(16 * h), sc);
            _mm512_storeu_ps(score.as_mut_ptr().add(16 * h), _mm512_mul_ps(sc, x));
        }
        sq[h] = _mm512_mul_ps(x, x);
        q2[h] = q;
        positive |= (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(q, zero) as u32) << (16 * h);
    }
    // Candidates below n, and from `next` on.
    let live = ((1u64 << n) - 1) as u32 & positive;
    let (mut best, mut next, mut chosen) = (0f32, 0usize, None);
    while next < n {
        let b = _mm512_set1_ps(best);
        let pass = (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(sq[0], _mm512_mul_ps(b, q2[0])) as u32)
            | (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(sq[1], _mm512_mul_ps(b, q2[1])) as u32) << 16;
        let wins = pass & live & (u32::MAX << next);
        if wins == 0 {
            break;
        }
        let c = wins.trailing_zeros() as usize;
        best = score[c];
        chosen = Some((c, scale[c]));
        next = c + 1;
    }
    chosen
}

// The candidates' pairs `(id, scale)` are read and written as two consecutive f32.
const _: () = assert!(
    std::mem::size_of::<(f32, f32)>() == 8
        && std::mem::offset_of!((f32, f32), 0) == 0
        && std::mem::offset_of!((f32, f32), 1) == 4
);

/// The lanes of `a` (0..16) and `b` (16..32) at the even positions 2j + `ODD`: every pair's
/// first (`ODD` 0) or second (1) of 16 pairs held in `a` and `b`.
#[target_feature(enable = "avx512f")]
fn deinterleave<const ODD: i32>(a: __m512, b: __m512) -> __m512 {
    let at = _mm512_add_epi32(
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_set1_epi32(ODD),
    );
    _mm512_permutex2var_ps(a, at, b)
}

/// [`Searcher::candidates`], 16 divisions at a time (`id = n / max`, then `1 / id`, as the
/// reference), the pairs written by interleaving the lanes.
#[target_feature(enable = "avx512f")]
fn candidates16(numerators: &[f32], max: f32, out: &mut [(f32, f32)]) {
    assert!(out.len() >= numerators.len());
    let (maxv, one) = (_mm512_set1_ps(max), _mm512_set1_ps(1.0));
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_add_epi32(first, _mm512_set1_epi32(8));
    for (k, nums) in numerators.chunks(16).enumerate() {
        let m = nums.len();
        // SAFETY: only the first `m` lanes are read (the mask), all inside `nums`.
        let n = unsafe { _mm512_mask_loadu_ps(one, ((1u32 << m) - 1) as u16, nums.as_ptr()) };
        let id = _mm512_div_ps(n, maxv);
        let inverse = _mm512_div_ps(one, id);
        let at: *mut f32 = out[16 * k..].as_mut_ptr().cast();
        // SAFETY: `out[16k..]` holds at least `m` pairs, 2m floats (the pairs are two
        // consecutive f32, asserted above); only the first 2m floats are written (the masks).
        // Whole vectors stored unmasked where they fit (AMD does not forward masked stores to
        // the loads that follow).
        unsafe {
            let (lo, hi) = (_mm512_permutex2var_ps(id, first, inverse), _mm512_permutex2var_ps(id, second, inverse));
            if m >= 8 {
                _mm512_storeu_ps(at, lo);
            } else {
                _mm512_mask_storeu_ps(at, ((1u32 << (2 * m)) - 1) as u16, lo);
            }
            if m == 16 {
                _mm512_storeu_ps(at.add(16), hi);
            } else if m > 8 {
                _mm512_mask_storeu_ps(at.add(16), ((1u32 << (2 * m - 16)) - 1) as u16, hi);
            }
        }
    }
}

/// The candidates' ids and scales (at most 32) in two arrays, each padded past the last
/// candidate with copies of its value.
#[target_feature(enable = "avx512f")]
fn split_candidates(candidates: &[(f32, f32)]) -> ([f32; ROW], [f32; ROW]) {
    let count = candidates.len();
    assert!((1..=ROW).contains(&count));
    let (mut ids, mut scales) = ([0f32; ROW], [0f32; ROW]);
    let (last_id, last_scale) = (_mm512_set1_ps(candidates[count - 1].0), _mm512_set1_ps(candidates[count - 1].1));
    let at: *const f32 = candidates.as_ptr().cast();
    for h in 0..2 {
        // Floats 32h..32h + 32 of the pairs, those past the last pair not read.
        let floats = (2 * count).saturating_sub(32 * h).min(32);
        let live = ((1u64 << floats) - 1) as u32;
        // Only the floats a mask selects are read, all below 2·count (inside `candidates`, whose
        // pairs are two consecutive f32, asserted above); a whole vector unmasked only where all
        // 16 lie inside.
        let load = |mask: u32, at: *const f32| {
            // SAFETY: as above.
            unsafe {
                if mask & 0xffff == 0xffff { _mm512_loadu_ps(at) } else { _mm512_maskz_loadu_ps(mask as u16, at) }
            }
        };
        let (a, b) = (load(live, at.wrapping_add(32 * h)), load(live >> 16, at.wrapping_add(32 * h + 16)));
        let pairs = ((1u32 << (count.saturating_sub(16 * h)).min(16)) - 1) as u16;
        let id = _mm512_mask_blend_ps(pairs, last_id, deinterleave::<0>(a, b));
        let scale = _mm512_mask_blend_ps(pairs, last_scale, deinterleave::<1>(a, b));
        // SAFETY: both arrays have room for 16 f32 at 16h (h < 2).
        unsafe {
            _mm512_storeu_ps(ids.as_mut_ptr().add(16 * h), id);
            _mm512_storeu_ps(scales.as_mut_ptr().add(16 * h), scale);
        }
    }
    (ids, scales)
}

/// 16 floats from a slice of at least 16.
#[target_feature(enable = "avx512f")]
fn load16(x: &[f32]) -> __m512 {
    assert!(x.len() >= 16);
    // SAFETY: at least 16 f32 are readable (checked above).
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// 16 i32 from a slice of at least 16.
#[target_feature(enable = "avx512f")]
fn load16i(x: &[i32]) -> __m512i {
    assert!(x.len() >= 16);
    // SAFETY: at least 16 i32 are readable (checked above).
    unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
}

/// 16 i32 into a slice of at least 16.
#[target_feature(enable = "avx512f")]
fn store16i(x: &mut [i32], v: __m512i) {
    assert!(x.len() >= 16);
    // SAFETY: at least 16 i32 are writable (checked above).
    unsafe { _mm512_storeu_si512(x.as_mut_ptr().cast(), v) }
}

/// `nearest_int` on 16 lanes: the 1.5·2^23 trick, the same bits as the scalar reference.
#[target_feature(enable = "avx512f")]
fn nearest_int(f: __m512) -> __m512i {
    let val = _mm512_castps_si512(_mm512_add_ps(f, _mm512_set1_ps(12_582_912.0)));
    _mm512_sub_epi32(_mm512_and_si512(val, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x0040_0000))
}

/// Per coordinate and level, every lane's term `w·(scale·q_l − x)·(scale·q_l − x)` of the
/// neighbour distance (the scalar search's very products), levels 0..8.
///
/// With `MIXED`, the lanes of `other.0` take the values and weights `other.1`, `other.2`
/// (another block's); without, `other` is not read.
#[target_feature(enable = "avx512f")]
fn lane_terms16<const MIXED: bool>(
    x: &[f32],
    w: &[f32],
    other: (u16, &[f32], &[f32]),
    scales: __m512,
    terms: &mut [[__m512; 8]; 4],
) {
    for (i, row) in terms.iter_mut().enumerate() {
        let (mut xi, mut wi) = (_mm512_set1_ps(x[i]), _mm512_set1_ps(w[i]));
        if MIXED {
            xi = _mm512_mask_blend_ps(other.0, xi, _mm512_set1_ps(other.1[i]));
            wi = _mm512_mask_blend_ps(other.0, wi, _mm512_set1_ps(other.2[i]));
        }
        for (l, term) in row.iter_mut().enumerate() {
            let diff = _mm512_sub_ps(_mm512_mul_ps(scales, _mm512_set1_ps(ODD_LEVELS[l])), xi);
            *term = _mm512_mul_ps(_mm512_mul_ps(wi, diff), diff);
        }
    }
}

/// The nearest neighbour in `list` for each lane set in `lanes`, each at its own scale (whose
/// terms are `terms`, from [`lane_terms16`]), scanning the list in order with a strict
/// less-than per lane, as the scalar search does lane by lane; lane j's winner's levels go to
/// `codes[i][base + j]` (rows of the group's 4 values). Each lane keeps the packed code of its
/// first minimum (−1 before any); a wanted lane without one (every distance at least
/// FLT_MAX) is where ggml aborts.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nearest_per_lane16<const R: usize>(
    terms: &[[__m512; 8]; 4],
    list: List<'_>,
    lanes: u16,
    codes: &mut [[i32; R]],
    base: usize,
) -> Result<(), GgmlAbort> {
    assert!(codes.len() >= 4 && base + 16 <= R);
    let len = list.indices.len();
    let mut best = _mm512_set1_ps(FLT_MAX);
    let mut best_code = _mm512_set1_epi32(-1);
    if list.packed.len() >= 8 * len.div_ceil(8) {
        // Byte i of a packed code is 32 times coordinate i's level (see `List::packed`): twice
        // it is the level's offset in coordinate i's row of 64-byte terms. Whole chunks of 8:
        // the padding repeats the last neighbour, which cannot win again (its distance is not
        // strictly below the minimum it was compared with). The first term starts the sum:
        // `0 + t0` is `t0` but for the sign of a zero, which no comparison of the sums sees.
        let rest: *const u8 = terms.as_ptr().cast();
        for chunk in list.packed.chunks_exact(8).take(len.div_ceil(8)) {
            for code in chunk {
                // A volatile read (a plain load): otherwise LLVM vectorizes the offsets of the
                // unrolled chunk and takes them out of vectors one by one, 2.5 times the work.
                // SAFETY: `code` is a reference to a valid u32.
                let c = unsafe { std::ptr::read_volatile(code) } as usize;
                // SAFETY: byte i of a code is at most 224, so 512·i plus twice it is inside
                // `terms` (4·8 vectors of 64 bytes); every offset is a multiple of 64 and
                // `terms` holds `__m512` values, so the aligned loads are aligned.
                let d2 = unsafe {
                    let mut d2 = _mm512_load_ps(rest.add(2 * (c & 0xff)).cast());
                    d2 = _mm512_add_ps(d2, _mm512_load_ps(rest.add(512 + 2 * ((c >> 8) & 0xff)).cast()));
                    d2 = _mm512_add_ps(d2, _mm512_load_ps(rest.add(1024 + 2 * ((c >> 16) & 0xff)).cast()));
                    _mm512_add_ps(d2, _mm512_load_ps(rest.add(1536 + 2 * (c >> 24)).cast()))
                };
                // `min_ps(d2, best)` is `d2 < best ? d2 : best`, the strict less-than. Lanes
                // outside `lanes` search too; their results are not read.
                let better = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d2, best);
                best = _mm512_min_ps(d2, best);
                best_code = _mm512_mask_set1_epi32(best_code, better, *code as i32);
            }
        }
        if _mm512_mask_cmpeq_epi32_mask(lanes, best_code, _mm512_set1_epi32(-1)) != 0 {
            return Err(GgmlAbort);
        }
        // Level i is byte i over 32.
        let levels = _mm512_srli_epi32::<5>(best_code);
        for (i, row) in codes.iter_mut().enumerate().take(4) {
            let l =
                _mm512_and_si512(_mm512_srlv_epi32(levels, _mm512_set1_epi32(8 * i as i32)), _mm512_set1_epi32(0xff));
            // SAFETY: `base + 16 ≤ ROW` (checked above); an unaligned masked store (for the 2-bit
            // grids' search a blend measured faster; here it did not).
            unsafe { _mm512_mask_storeu_epi32(row.as_mut_ptr().add(base).cast(), lanes, l) };
        }
        return Ok(());
    }
    // A list without packed codes: the levels from its rows (N = 4 rows of 8 per chunk).
    let mut best_at = _mm512_set1_epi32(-1);
    for (chunk, rows) in list.levels.chunks_exact(32).take(len.div_ceil(8)).enumerate() {
        for j in 0..8.min(len - 8 * chunk) {
            let mut d2 = terms[0][(rows[j] & 7) as usize];
            for i in 1..4 {
                d2 = _mm512_add_ps(d2, terms[i][(rows[8 * i + j] & 7) as usize]);
            }
            let better = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d2, best);
            best = _mm512_min_ps(d2, best);
            best_at = _mm512_mask_set1_epi32(best_at, better, (8 * chunk + j) as i32);
        }
    }
    let mut at = [0i32; 16];
    // SAFETY: `at` has room for 16 i32.
    unsafe { _mm512_storeu_si512(at.as_mut_ptr().cast(), best_at) };
    let mut todo = lanes;
    while todo != 0 {
        let lane = todo.trailing_zeros() as usize;
        todo &= todo - 1;
        let k = usize::try_from(at[lane]).map_err(|_| GgmlAbort)?;
        for (i, row) in codes.iter_mut().enumerate().take(4) {
            row[base + lane] = list.levels[(k / 8) * 32 + 8 * i + k % 8] as i32;
        }
    }
    Ok(())
}

/// Byte offsets in [`prefix_table16`]'s table (`PREFIX` vectors of 64 bytes) of its regions,
/// for a 2-bit code `c` (level `l_i` in bits `2i..2i + 2`) and `e = c >> 5`: `(t0 + t1) + t2` at
/// `64·(c & 63)` (the levels of coordinates 0..3; at most index 42), then coordinate 3's terms at
/// `PREFIX_AT[0] + (c & 0xc0)` (`64·l3`), 4's at `PREFIX_AT[1] + (c & 0x300)` (`256·l4`), 5's at
/// `PREFIX_AT[2] + 2·(e & 0x60)` (`64·l5`), 6's at `PREFIX_AT[3] + (e & 0x180)` (`128·l6`) and
/// 7's at `PREFIX_AT[4] + (e & 0x600)` (`512·l7`). Each region spans `3·stride + 64` bytes, so
/// that even a level 3 reads inside it.
const PREFIX_AT: [usize; 5] =
    [43 * 64, 43 * 64 + 256, 43 * 64 + 256 + 832, 43 * 64 + 256 + 832 + 256, 43 * 64 + 256 + 832 + 256 + 448];
/// Vectors in [`prefix_table16`]'s table.
const PREFIX: usize = (PREFIX_AT[4] + 1600) / 64;

/// The table of the 8-coordinate 2-bit grids' per-lane search (levels 0..3 only, see
/// [`PREFIX_AT`]): per lane (a candidate at its scale), the term `w·(scale·q_l − x)·(scale·q_l −
/// x)` of coordinate i at level l (the scalar search's very products), and the sums `(t0 + t1)
/// + t2` of the first three coordinates' terms for the 27 level triples (the scalar search's
/// first additions, as `0 + t0` is `t0`).
/// With `MIXED`, the lanes of `other.0` take the values and weights `other.1`, `other.2`
/// (another block's); without, `other` is not read.
#[target_feature(enable = "avx512f")]
fn prefix_table16<const MIXED: bool>(
    x: &[f32],
    w: &[f32],
    other: (u16, &[f32], &[f32]),
    scales: __m512,
    table: &mut [__m512; PREFIX],
) {
    assert!(x.len() >= 8 && w.len() >= 8);
    let (mut xs, mut ws): ([__m512; 8], [__m512; 8]) =
        (std::array::from_fn(|i| _mm512_set1_ps(x[i])), std::array::from_fn(|i| _mm512_set1_ps(w[i])));
    if MIXED {
        assert!(other.1.len() >= 8 && other.2.len() >= 8);
        for i in 0..8 {
            xs[i] = _mm512_mask_blend_ps(other.0, xs[i], _mm512_set1_ps(other.1[i]));
            ws[i] = _mm512_mask_blend_ps(other.0, ws[i], _mm512_set1_ps(other.2[i]));
        }
    }
    let term = |i: usize, l: usize| {
        let diff = _mm512_sub_ps(_mm512_mul_ps(scales, _mm512_set1_ps(ODD_LEVELS[l])), xs[i]);
        _mm512_mul_ps(_mm512_mul_ps(ws[i], diff), diff)
    };
    let t: [[__m512; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|l| term(i, l)));
    for a in 0..3 {
        for b in 0..3 {
            let ab = _mm512_add_ps(t[0][a], t[1][b]);
            for c in 0..3 {
                table[a | b << 2 | c << 4] = _mm512_add_ps(ab, t[2][c]);
            }
        }
    }
    // Coordinate i's term at level l: at byte PREFIX_AT[i − 3] + l·stride.
    for (i, stride) in [(3, 64), (4, 256), (5, 64), (6, 128), (7, 512)] {
        for l in 0..3 {
            table[(PREFIX_AT[i - 3] + l * stride) / 64] = term(i, l);
        }
    }
}

/// The nearest neighbour in `list` (an 8-coordinate 2-bit list of levels 0..3 with packed
/// codes) for each lane set in `lanes`, each at its own scale (whose table is `table`, from
/// [`prefix_table16`]), scanning the list in order with a strict less-than per lane, as the
/// scalar search does lane by lane: `(t0 + t1) + t2` looked up, then the other five terms added
/// in order. Lane j's winner's levels go to `codes[i][base + j]`; each lane keeps its first
/// minimum's packed code (−1 before any), and a wanted lane without one is where ggml aborts.
#[target_feature(enable = "avx512f,avx512bw")]
fn nearest_per_lane_prefix16<const R: usize>(
    table: &[__m512; PREFIX],
    list: List<'_>,
    lanes: u16,
    codes: &mut [[i32; R]],
    base: usize,
) -> Result<(), GgmlAbort> {
    assert!(codes.len() >= 8 && base + 16 <= R);
    let len = list.indices.len();
    assert!(list.packed.len() >= len);
    let at: *const u8 = table.as_ptr().cast();
    let (at3, at4, at5, at6, at7) = (PREFIX_AT[0], PREFIX_AT[1], PREFIX_AT[2], PREFIX_AT[3], PREFIX_AT[4]);
    let mut best = _mm512_set1_ps(FLT_MAX);
    let mut best_code = _mm512_set1_epi32(-1);
    for code in &list.packed[..len] {
        // A volatile read (a plain load), so that LLVM keeps the offsets in general registers.
        // SAFETY: `code` is a reference to a valid u32.
        let c = unsafe { std::ptr::read_volatile(code) } as usize;
        let e = c >> 5;
        // SAFETY: every offset is a region's start plus its code bits masked (at most 3 times
        // the region's stride), so the 64 bytes there lie within the region (see `PREFIX_AT`)
        // and so within `table`; unaligned loads.
        let d2 = unsafe {
            let mut d2 = _mm512_loadu_ps(at.add((c & 63) << 6).cast());
            d2 = _mm512_add_ps(d2, _mm512_loadu_ps(at.add(at3 + (c & 0xc0)).cast()));
            d2 = _mm512_add_ps(d2, _mm512_loadu_ps(at.add(at4 + (c & 0x300)).cast()));
            d2 = _mm512_add_ps(d2, _mm512_loadu_ps(at.add(at5 + 2 * (e & 0x60)).cast()));
            d2 = _mm512_add_ps(d2, _mm512_loadu_ps(at.add(at6 + (e & 0x180)).cast()));
            _mm512_add_ps(d2, _mm512_loadu_ps(at.add(at7 + (e & 0x600)).cast()))
        };
        // `min_ps(d2, best)` is `d2 < best ? d2 : best`, the strict less-than. Lanes outside
        // `lanes` search too; their results are not read.
        let better = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d2, best);
        best = _mm512_min_ps(d2, best);
        best_code = _mm512_mask_set1_epi32(best_code, better, *code as i32);
    }
    if _mm512_mask_cmpeq_epi32_mask(lanes, best_code, _mm512_set1_epi32(-1)) != 0 {
        return Err(GgmlAbort);
    }
    for (i, row) in codes.iter_mut().enumerate().take(8) {
        let l = _mm512_and_si512(_mm512_srlv_epi32(best_code, _mm512_set1_epi32(2 * i as i32)), _mm512_set1_epi32(3));
        // SAFETY: `base + 16 ≤ ROW` (checked above); unaligned load and store (a blend, not a
        // masked store, which AMD does not forward to later loads).
        unsafe {
            let at: *mut i32 = row.as_mut_ptr().add(base);
            _mm512_storeu_si512(at.cast(), _mm512_mask_blend_epi32(lanes, _mm512_loadu_si512(at.cast()), l));
        }
    }
    Ok(())
}

/// [`Searcher::evaluate`] for the 4-value groups of the 3-bit grids, 2..=32 candidates, lanes
/// as candidates, 16 at a time: codes formed and looked up by chunks of 16; then, group by
/// group, the candidates of a chunk whose codes fell off the grid on the same code share
/// neighbour scans (one table of distance terms per chunk and group, formed when the chunk's
/// first window needs it); then the sums.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
fn evaluate16<const N: usize>(
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
    assert!((N == 4 && c.bits == 3) || (N == 8 && c.bits == 2));
    assert!(n <= 32 && n.is_multiple_of(N) && weight.len() >= n && waux.len() >= n && (1..=ROW).contains(&count));
    let map = t.map();
    // The largest packed code the clamped codes can form must be inside the map (gathers).
    let top: usize = (0..N).map(|j| ((c.kmax - 1) as usize) << (c.bits as usize * j)).sum();
    assert!(top < map.len(), "code map too small");
    let (one, half) = (_mm512_set1_ps(1.0), _mm512_set1_ps(0.5));
    // Candidate c's id and scale at position c (past the last: copies of it).
    let (ids, scales) = split_candidates(candidates);
    let Scratch { codes, packed, entries, terms, prefix, .. } = scratch;
    let chunks = count.div_ceil(16);
    // Per group, the candidates whose codes are off the grid.
    let mut off_grid = [0u32; 8];
    let mut on_grid = [0u8; ROW];
    let (lo, hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(c.kmax - 1));
    for h in 0..chunks {
        let at = 16 * h;
        let live = (((1u32 << (count - at).min(16)) - 1) & 0xffff) as u16;
        let idv = load16(&ids[at..]);
        // Per lane, bit k set when group k's code is on the grid.
        let mut flags = _mm512_setzero_si512();
        for i in 0..n {
            let v = _mm512_mul_ps(half, _mm512_sub_ps(_mm512_mul_ps(idv, _mm512_set1_ps(xval[i])), one));
            store16i(&mut codes[i][at..], _mm512_max_epi32(_mm512_min_epi32(nearest_int(v), hi), lo));
        }
        for k in 0..n / N {
            if groups & (1 << k) == 0 {
                continue;
            }
            let mut u = load16i(&codes[N * k][at..]);
            for j in 1..N {
                let q = load16i(&codes[N * k + j][at..]);
                u = _mm512_or_si512(u, _mm512_sllv_epi32(q, _mm512_set1_epi32((c.bits as usize * j) as i32)));
            }
            // SAFETY: every lane of `u` is at most `top`, inside `map` (asserted above).
            let g = unsafe { _mm512_i32gather_epi32::<4>(u, map.as_ptr()) };
            let off = _mm512_mask_cmplt_epi32_mask(live, g, lo);
            // Bit k of each lane's flags where its code is on the grid.
            flags = _mm512_mask_or_epi32(flags, !off, flags, _mm512_set1_epi32(1 << k));
            off_grid[k] |= (off as u32) << at;
            store16i(&mut packed[k][at..], u);
            store16i(&mut entries[k][at..], g);
        }
        // SAFETY: `on_grid` has room for 16 bytes at `at` (at most 16).
        unsafe { _mm_storeu_si128(on_grid.as_mut_ptr().add(at).cast(), _mm512_cvtepi32_epi8(flags)) };
    }
    for k in 0..n / N {
        let r = N * k..N * k + N;
        let (x, w) = (&xval[r.clone()], &waux[r.clone()]);
        let mut pending = off_grid[k];
        // The terms in `terms` are those of candidates `from..from + 16` of this group.
        let mut from = usize::MAX;
        while pending != 0 {
            // The 16 candidates from the first pending one: those whose code equals its code
            // share its list.
            let first = pending.trailing_zeros() as usize;
            let eq = _mm512_cmpeq_epi32_mask(load16i(&packed[k][first..]), _mm512_set1_epi32(packed[k][first]));
            let same = ((eq as u64) << first) as u32 & pending;
            pending &= !same;
            let entry = entries[k][first];
            if entry == i32::MIN {
                return Err(GgmlAbort);
            }
            let list = t.list((-(entry + 1)) as usize);
            if same.count_ones() == 1 && list.indices.len() > 8 {
                let best = nearest::<N>(list, &ODD_LEVELS, x, w, scales[first]).ok_or(GgmlAbort)?;
                let levels = winner_levels::<N>(list, best, c.bits);
                for (row, &l) in codes[r.clone()].iter_mut().zip(&levels) {
                    row[first] = l;
                }
            } else if N == 8 && !(list.three_levels && list.packed.len() >= list.indices.len()) {
                // A 2-bit list without the prefix search's form (none of the present grids):
                // one candidate at a time.
                let mut todo = same;
                while todo != 0 {
                    let j = todo.trailing_zeros() as usize;
                    todo &= todo - 1;
                    let best = nearest::<N>(list, &ODD_LEVELS, x, w, scales[j]).ok_or(GgmlAbort)?;
                    let levels = winner_levels::<N>(list, best, c.bits);
                    for (row, &l) in codes[r.clone()].iter_mut().zip(&levels) {
                        row[j] = l;
                    }
                }
            } else {
                let last = 31 - same.leading_zeros() as usize;
                if from > first || last >= from + 16 {
                    // New terms, for 16 candidates from this one (or the last 16).
                    from = first.min(ROW - 16);
                    if N == 8 {
                        prefix_table16::<false>(x, w, (0, x, w), load16(&scales[from..]), prefix);
                    } else {
                        lane_terms16::<false>(x, w, (0, x, w), load16(&scales[from..]), terms);
                    }
                }
                let lanes = (same >> from) as u16;
                if N == 8 {
                    nearest_per_lane_prefix16(prefix, list, lanes, &mut codes[r.clone()], from)?;
                } else {
                    nearest_per_lane16(terms, list, lanes, &mut codes[r.clone()], from)?;
                }
            }
        }
    }
    // The chunks' sums side by side (two independent chains each when there are two).
    if chunks == 2 {
        sums16::<2>(codes, xval, weight, out);
    } else {
        sums16::<1>(codes, xval, weight, out);
    }
    for h in 0..chunks {
        let at = 16 * h;
        let m = (count - at).min(16);
        out.on_grid[at..at + m].copy_from_slice(&on_grid[at..at + m]);
    }
    Ok(())
}

/// Two blocks' candidates (at most [`PAIR_B`] each) in the lanes of one row: the first
/// block's ids and scales from lane 0, the second's from lane [`PAIR_B`], each padded with
/// copies of its last (64 lanes).
#[target_feature(enable = "avx512f")]
fn split_pair(a: &[(f32, f32)], b: &[(f32, f32)]) -> ([f32; 64], [f32; 64]) {
    assert!(a.len() <= PAIR_B && b.len() <= PAIR_B);
    let ((ia, sa), (ib, sb)) = (split_candidates(a), split_candidates(b));
    let (mut ids, mut scales) = ([0f32; 64], [0f32; 64]);
    // Lanes 0..8 of the first vector, then lanes 0..8 of the second.
    let low = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    // Lanes 8..16 of the first vector, then lanes 0..8 of the second.
    let high = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23);
    for (out, (x, y)) in [(&mut ids, (&ia, &ib)), (&mut scales, (&sa, &sb))] {
        let (x0, x1, y0, y1) = (load16(&x[..]), load16(&x[16..]), load16(&y[..]), load16(&y[16..]));
        let last = _mm512_permutexvar_ps(_mm512_set1_epi32(15), y1);
        let v = [
            x0,
            _mm512_permutex2var_ps(x1, low, y0),
            _mm512_permutex2var_ps(y0, high, y1),
            _mm512_permutex2var_ps(y1, high, last),
        ];
        for (h, v) in v.into_iter().enumerate() {
            // SAFETY: `out` holds 64 f32, so 16 at 16h (h < 4).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * h), v) };
        }
    }
    (ids, scales)
}

/// [`Searcher::evaluate_pair`] for the 3-bit and 2-bit grids: [`evaluate16`] of two blocks at
/// once, the first block's candidates in lanes `0..a`, the second's in lanes `PAIR_B..PAIR_B +
/// b` (19 + 19 candidates: three chunks of 16 rather than four), each lane with its block's
/// values and weights (broadcast, blended in the chunk and the tables that hold both).
// Rows and both blocks' values are indexed by one value index.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
fn evaluate16_pair<const N: usize>(
    t: &Lattice<N>,
    c: Codes,
    a: &Block<'_>,
    b: &Block<'_>,
    groups: u8,
    out_a: &mut Evaluation,
    out_b: &mut Evaluation,
    scratch: &mut Scratch,
) -> Result<(), GgmlAbort> {
    let n = a.xval.len();
    let (ca, cb) = (a.candidates.len(), b.candidates.len());
    assert!((N == 4 && c.bits == 3) || (N == 8 && c.bits == 2));
    assert!(n <= 32 && n.is_multiple_of(N) && b.xval.len() == n);
    assert!(a.weight.len() >= n && a.waux.len() >= n && b.weight.len() >= n && b.waux.len() >= n);
    assert!((1..=PAIR_B).contains(&ca) && (1..=PAIR_B).contains(&cb));
    let map = t.map();
    // The largest packed code the clamped codes can form must be inside the map (gathers).
    let top: usize = (0..N).map(|j| ((c.kmax - 1) as usize) << (c.bits as usize * j)).sum();
    assert!(top < map.len(), "code map too small");
    let (one, half) = (_mm512_set1_ps(1.0), _mm512_set1_ps(0.5));
    let (ids, scales) = split_pair(a.candidates, b.candidates);
    let Scratch { terms, prefix, pair, .. } = scratch;
    let PairRows { codes, packed, entries } = pair;
    let total = PAIR_B + cb;
    let chunks = total.div_ceil(16);
    // The lanes that hold candidates, and the second block's lanes.
    let live_all = ((1u64 << ca) - 1) | (((1u64 << cb) - 1) << PAIR_B);
    let second = !0u64 << PAIR_B;
    // Lane values: the first block's but in the lanes of `mask`.
    let lanes_of = |x: &[f32], y: &[f32], mask: u16, i: usize| {
        _mm512_mask_blend_ps(mask, _mm512_set1_ps(x[i]), _mm512_set1_ps(y[i]))
    };
    let mut off_grid = [0u64; 8];
    let mut on_grid = [0u8; PAIR_ROW];
    let (lo, hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(c.kmax - 1));
    for h in 0..chunks {
        let at = 16 * h;
        let live = (live_all >> at) as u16;
        let other = (second >> at) as u16;
        let idv = load16(&ids[at..]);
        let mut flags = _mm512_setzero_si512();
        for i in 0..n {
            let xv = lanes_of(a.xval, b.xval, other, i);
            let v = _mm512_mul_ps(half, _mm512_sub_ps(_mm512_mul_ps(idv, xv), one));
            // SAFETY: `at + 16 ≤ 48` (three chunks at most).
            store16i(&mut codes[i][at..], _mm512_max_epi32(_mm512_min_epi32(nearest_int(v), hi), lo));
        }
        for k in 0..n / N {
            if groups & (1 << k) == 0 {
                continue;
            }
            let mut u = load16i(&codes[N * k][at..]);
            for j in 1..N {
                let q = load16i(&codes[N * k + j][at..]);
                u = _mm512_or_si512(u, _mm512_sllv_epi32(q, _mm512_set1_epi32((c.bits as usize * j) as i32)));
            }
            // SAFETY: every lane of `u` is at most `top`, inside `map` (asserted above).
            let g = unsafe { _mm512_i32gather_epi32::<4>(u, map.as_ptr()) };
            let off = _mm512_mask_cmplt_epi32_mask(live, g, lo);
            flags = _mm512_mask_or_epi32(flags, !off, flags, _mm512_set1_epi32(1 << k));
            off_grid[k] |= (off as u64) << at;
            store16i(&mut packed[k][at..], u);
            store16i(&mut entries[k][at..], g);
        }
        // SAFETY: `on_grid` has room for 16 bytes at `at` (at most 32).
        unsafe { _mm_storeu_si128(on_grid.as_mut_ptr().add(at).cast(), _mm512_cvtepi32_epi8(flags)) };
    }
    for k in 0..n / N {
        let r = N * k..N * k + N;
        let (xa, wa, xb, wb) = (&a.xval[r.clone()], &a.waux[r.clone()], &b.xval[r.clone()], &b.waux[r.clone()]);
        let of = |j: usize| if j >= PAIR_B { (xb, wb) } else { (xa, wa) };
        let mut pending = off_grid[k];
        let mut from = usize::MAX;
        while pending != 0 {
            let first = pending.trailing_zeros() as usize;
            let eq = _mm512_cmpeq_epi32_mask(load16i(&packed[k][first..]), _mm512_set1_epi32(packed[k][first]));
            let same = ((eq as u64) << first) & pending;
            pending &= !same;
            let entry = entries[k][first];
            if entry == i32::MIN {
                return Err(GgmlAbort);
            }
            let list = t.list((-(entry + 1)) as usize);
            if same.count_ones() == 1 && list.indices.len() > 8 {
                let (x, w) = of(first);
                let best = nearest::<N>(list, &ODD_LEVELS, x, w, scales[first]).ok_or(GgmlAbort)?;
                let levels = winner_levels::<N>(list, best, c.bits);
                for (row, &l) in codes[r.clone()].iter_mut().zip(&levels) {
                    row[first] = l;
                }
            } else if N == 8 && !(list.three_levels && list.packed.len() >= list.indices.len()) {
                let mut todo = same;
                while todo != 0 {
                    let j = todo.trailing_zeros() as usize;
                    todo &= todo - 1;
                    let (x, w) = of(j);
                    let best = nearest::<N>(list, &ODD_LEVELS, x, w, scales[j]).ok_or(GgmlAbort)?;
                    let levels = winner_levels::<N>(list, best, c.bits);
                    for (row, &l) in codes[r.clone()].iter_mut().zip(&levels) {
                        row[j] = l;
                    }
                }
            } else {
                let last = 63 - same.leading_zeros() as usize;
                if from > first || last >= from + 16 {
                    from = first.min(PAIR_ROW - 16);
                    let other = ((second >> from) & 0xffff) as u16;
                    if N == 8 {
                        prefix_table16::<true>(xa, wa, (other, xb, wb), load16(&scales[from..]), prefix);
                    } else {
                        lane_terms16::<true>(xa, wa, (other, xb, wb), load16(&scales[from..]), terms);
                    }
                }
                let lanes = (same >> from) as u16;
                if N == 8 {
                    nearest_per_lane_prefix16(prefix, list, lanes, &mut codes[r.clone()], from)?;
                } else {
                    nearest_per_lane16(terms, list, lanes, &mut codes[r.clone()], from)?;
                }
            }
        }
    }
    if chunks == 3 {
        sums16_pair::<3>(codes, a, b, out_a, out_b);
    } else {
        sums16_pair::<2>(codes, a, b, out_a, out_b);
    }
    out_a.on_grid[..ca].copy_from_slice(&on_grid[..ca]);
    out_b.on_grid[..cb].copy_from_slice(&on_grid[PAIR_B..PAIR_B + cb]);
    Ok(())
}

/// [`sums16`] of [`evaluate16_pair`]'s `C` chunks (2 or 3): each lane with its block's values
/// and weights; the first block's lanes (0..24) into `out_a`, the second's into `out_b`.
// Rows and both blocks' values are indexed by one value index.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
fn sums16_pair<const C: usize>(
    codes: &[[i32; PAIR_ROW]; 32],
    a: &Block<'_>,
    b: &Block<'_>,
    out_a: &mut Evaluation,
    out_b: &mut Evaluation,
) {
    assert!((2..=3).contains(&C));
    let n = a.xval.len();
    assert!(n <= 32 && a.weight.len() >= n && b.xval.len() >= n && b.weight.len() >= n);
    let (mut sx, mut sq) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
    let ones = _mm512_set1_epi32(1);
    for i in 0..n {
        let (wxa, wa) = (_mm512_set1_ps(a.weight[i] * a.xval[i]), _mm512_set1_ps(a.weight[i]));
        let (wxb, wb) = (_mm512_set1_ps(b.weight[i] * b.xval[i]), _mm512_set1_ps(b.weight[i]));
        for h in 0..C {
            // Chunk 0: the first block's lanes; chunk 1: its lanes 16..24 and the second's
            // 0..8; chunk 2: the second's.
            let (wx, w) = match h {
                0 => (wxa, wa),
                1 => (_mm512_mask_blend_ps(0xff00, wxa, wxb), _mm512_mask_blend_ps(0xff00, wa, wb)),
                _ => (wxb, wb),
            };
            let l = load16i(&codes[i][16 * h..]);
            let q = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(l, l), ones));
            sx[h] = _mm512_add_ps(sx[h], _mm512_mul_ps(wx, q));
            sq[h] = _mm512_add_ps(sq[h], _mm512_mul_ps(_mm512_mul_ps(w, q), q));
            let bytes = _mm512_cvtepi32_epi8(l);
            // Lanes 8g..8g + 8 (g = 2h, 2h + 1): chunk g of the first block's codes for g < 3,
            // chunk g − 3 of the second's.
            for (half, v) in [(0, bytes), (1, _mm_unpackhi_epi64(bytes, bytes))] {
                let g = 2 * h + half;
                let row = if g < 3 { &mut out_a.codes[g][i] } else { &mut out_b.codes[g - 3][i] };
                // SAFETY: `row` has room for 8 bytes.
                unsafe { _mm_storel_epi64(row.as_mut_ptr().cast(), v) };
            }
        }
    }
    for (h, (x, q)) in sx.into_iter().zip(sq).enumerate() {
        // Lanes 0..8 and 8..16 of the chunk: sums of candidates 8g..8g + 8 of the pair.
        for (half, (x, q)) in [
            (0, (x, q)),
            (1, (_mm512_shuffle_f32x4::<0b11_10_11_10>(x, x), _mm512_shuffle_f32x4::<0b11_10_11_10>(q, q))),
        ] {
            let g = 2 * h + half;
            let (out, at) = if g < 3 { (&mut *out_a, 8 * g) } else { (&mut *out_b, 8 * (g - 3)) };
            // SAFETY: `sumqx` and `sumq2` hold 32 f32, and 8 · g' + 8 ≤ 24 (g' < 3).
            unsafe {
                _mm256_storeu_ps(out.sumqx.as_mut_ptr().add(at), _mm512_castps512_ps256(x));
                _mm256_storeu_ps(out.sumq2.as_mut_ptr().add(at), _mm512_castps512_ps256(q));
            }
        }
    }
}

/// The sums `Σ w·x·q` and `Σ w·q²` (`q = 2l + 1`, each lane its candidate's, in the values'
/// order) of the first `C` chunks of 16 candidates into `out.sumqx`/`out.sumq2`, and their codes
/// as bytes into `out.codes`; the chunks' chains side by side.
#[target_feature(enable = "avx512f")]
fn sums16<const C: usize>(codes: &[[i32; ROW]; 32], xval: &[f32], weight: &[f32], out: &mut Evaluation) {
    assert!(C <= 2 && weight.len() >= xval.len() && xval.len() <= 32);
    let (mut sx, mut sq) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
    let ones = _mm512_set1_epi32(1);
    for i in 0..xval.len() {
        let (wx, w) = (_mm512_set1_ps(weight[i] * xval[i]), _mm512_set1_ps(weight[i]));
        for h in 0..C {
            let l = load16i(&codes[i][16 * h..]);
            let q = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_add_epi32(l, l), ones));
            sx[h] = _mm512_add_ps(sx[h], _mm512_mul_ps(wx, q));
            sq[h] = _mm512_add_ps(sq[h], _mm512_mul_ps(_mm512_mul_ps(w, q), q));
            // The 16 codes as bytes (each in 0..8), 8 to each of the two chunks of 8.
            let b = _mm512_cvtepi32_epi8(l);
            // SAFETY: `out.codes[2h][i]` and `out.codes[2h + 1][i]` have room for 8 bytes each
            // (h < 2).
            unsafe {
                _mm_storel_epi64(out.codes[2 * h][i].as_mut_ptr().cast(), b);
                _mm_storel_epi64(out.codes[2 * h + 1][i].as_mut_ptr().cast(), _mm_unpackhi_epi64(b, b));
            }
        }
    }
    for h in 0..C {
        // SAFETY: `sumqx` and `sumq2` hold 32 f32, so 16 at 16h (h < 2).
        unsafe {
            _mm512_storeu_ps(out.sumqx.as_mut_ptr().add(16 * h), sx[h]);
            _mm512_storeu_ps(out.sumq2.as_mut_ptr().add(16 * h), sq[h]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::iq_search::Reference;
    use crate::scalar::iq_tables;

    fn detected() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }

    /// `evaluate` of `n` values against the reference's on one lattice: random magnitudes at
    /// several scales (some on a coarse grid, some zero), weights with zeros, 2..=32 candidates
    /// (increasing as the quantizers form them, or in any order, so that equal codes are not
    /// runs), every group or some. Compares the result, and for `Ok` the selected groups' codes
    /// and, with every group, the sums and on-grid flags.
    fn check<const N: usize>(t: &Lattice<N>, c: Codes, n: usize, seed: u64, cases: usize) {
        let mut next = crate::x86::tests::xorshift_uniform(seed);
        let searcher = Avx512::new();
        let (mut want, mut got) = (Evaluation::default(), Evaluation::default());
        for case in 0..cases {
            let scale = [1.0, 0.02, 3.0, 1e-3, 1e6, 0.5][case % 6];
            let xval: Vec<f32> = (0..n)
                .map(|_| match (case / 6) % 3 {
                    0 => next() * scale,
                    1 => (next() * 6.0).floor() * 0.25 * scale,
                    _ if next() < 0.3 => 0.0,
                    _ => next() * scale,
                })
                .collect();
            let weight: Vec<f32> = (0..n).map(|_| if next() < 0.15 { 0.0 } else { next() * 4.0 }).collect();
            let waux: Vec<f32> = weight.iter().map(|w| w.sqrt()).collect();
            let max = xval.iter().fold(0f32, |m, &v| m.max(v));
            if max == 0.0 {
                continue;
            }
            let count = 2 + case % 31;
            let kmax = (2 * c.kmax - 1) as f32;
            let mut ids: Vec<f32> = (0..count).map(|k| (kmax + (k as f32 - count as f32 / 2.0) * 0.15) / max).collect();
            if case % 4 == 3 {
                for k in (1..count).rev() {
                    ids.swap(k, (next() * (k + 1) as f32) as usize % (k + 1));
                }
            }
            let candidates: Vec<(f32, f32)> = ids.iter().map(|&id| (id, 1.0 / id)).collect();
            let all = ((1u32 << (n / N)) - 1) as u8;
            let groups = if case % 5 == 4 { (next() * 256.0) as u8 & all | 1 } else { all };
            let w = Reference.evaluate::<N>(t, c, &xval, &weight, &waux, &candidates, groups, &mut want);
            let g = searcher.evaluate::<N>(t, c, &xval, &weight, &waux, &candidates, groups, &mut got);
            assert_eq!(w, g, "case {case}");
            if w.is_err() {
                continue;
            }
            for k in 0..count {
                let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
                want.codes_of(k, &mut a[..n]);
                got.codes_of(k, &mut b[..n]);
                for grp in (0..n / N).filter(|grp| groups & (1 << grp) != 0) {
                    assert_eq!(a[N * grp..N * grp + N], b[N * grp..N * grp + N], "case {case} candidate {k}");
                }
                if groups == all {
                    assert_eq!(want.sumqx[k].to_bits(), got.sumqx[k].to_bits(), "case {case} candidate {k}");
                    assert_eq!(want.sumq2[k].to_bits(), got.sumq2[k].to_bits(), "case {case} candidate {k}");
                    assert_eq!(want.on_grid[k], got.on_grid[k], "case {case} candidate {k}");
                }
            }
        }
    }

    /// A block's magnitudes, weights, search weights and candidates.
    type RandomBlock = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<(f32, f32)>);

    /// One random block for [`check_pair`]: magnitudes (as [`check`]'s, `kind` choosing
    /// among smooth, coarse and sparse ones at one of several scales), weights with zeros, and
    /// `count` candidates around the block's `kmax / max`, increasing or shuffled.
    fn random_block(
        next: &mut impl FnMut() -> f32,
        c: Codes,
        n: usize,
        kind: usize,
        count: usize,
        shuffled: bool,
    ) -> RandomBlock {
        let scale = [1.0, 0.02, 3.0, 1e-3, 1e6, 0.5][kind % 6];
        let mut xval: Vec<f32> = (0..n)
            .map(|_| match (kind / 6) % 3 {
                0 => next() * scale,
                1 => (next() * 6.0).floor() * 0.25 * scale,
                _ if next() < 0.3 => 0.0,
                _ => next() * scale,
            })
            .collect();
        xval[0] = xval[0].max(scale * 0.01);
        let weight: Vec<f32> = (0..n).map(|_| if next() < 0.15 { 0.0 } else { next() * 4.0 }).collect();
        let waux: Vec<f32> = weight.iter().map(|w| w.sqrt()).collect();
        let max = xval.iter().fold(0f32, |m, &v| m.max(v));
        let kmax = (2 * c.kmax - 1) as f32;
        let mut ids: Vec<f32> = (0..count).map(|k| (kmax + (k as f32 - count as f32 / 2.0) * 0.15) / max).collect();
        if shuffled {
            for k in (1..count).rev() {
                ids.swap(k, (next() * (k + 1) as f32) as usize % (k + 1));
            }
        }
        (xval, weight, waux, ids.iter().map(|&id| (id, 1.0 / id)).collect())
    }

    /// `evaluate_pair` against the reference's `evaluate` of each block: two random blocks
    /// (different kinds and scales), 2..=24 candidates each (the second block's in one chunk of
    /// 16 or two), increasing or shuffled, every group or some. Compares the result, and for
    /// `Ok` the selected groups' codes and, with every group, the sums and on-grid flags, of
    /// every candidate of both blocks.
    fn check_pair<const N: usize>(t: &Lattice<N>, c: Codes, n: usize, seed: u64, cases: usize) {
        let mut next = crate::x86::tests::xorshift_uniform(seed);
        let searcher = Avx512::new();
        let (mut want, mut got) =
            ([Evaluation::default(), Evaluation::default()], [Evaluation::default(), Evaluation::default()]);
        for case in 0..cases {
            let (ca, cb) = (2 + case % 23, 2 + (case / 23 + 7 * case) % 23);
            let a = random_block(&mut next, c, n, case, ca, case % 4 == 3);
            let b = random_block(&mut next, c, n, case / 3 + 1, cb, case % 7 == 5);
            let all = ((1u32 << (n / N)) - 1) as u8;
            let groups = if case % 5 == 4 { (next() * 256.0) as u8 & all | 1 } else { all };
            let [want_a, want_b] = &mut want;
            let wa = Reference.evaluate::<N>(t, c, &a.0, &a.1, &a.2, &a.3, groups, want_a);
            let wb = Reference.evaluate::<N>(t, c, &b.0, &b.1, &b.2, &b.3, groups, want_b);
            fn block(x: &RandomBlock) -> Block<'_> {
                Block { xval: &x.0, weight: &x.1, waux: &x.2, candidates: &x.3 }
            }
            let [got_a, got_b] = &mut got;
            let g = searcher.evaluate_pair::<N>(t, c, &block(&a), &block(&b), groups, got_a, got_b);
            assert_eq!(wa.and(wb), g, "case {case}");
            if g.is_err() {
                continue;
            }
            for (h, count) in [(0, ca), (1, cb)] {
                for k in 0..count {
                    let (mut x, mut y) = ([0i8; 32], [0i8; 32]);
                    want[h].codes_of(k, &mut x[..n]);
                    got[h].codes_of(k, &mut y[..n]);
                    for grp in (0..n / N).filter(|grp| groups & (1 << grp) != 0) {
                        assert_eq!(
                            x[N * grp..N * grp + N],
                            y[N * grp..N * grp + N],
                            "case {case} block {h} candidate {k}"
                        );
                    }
                    if groups == all {
                        let what = format!("case {case} block {h} candidate {k}");
                        assert_eq!(want[h].sumqx[k].to_bits(), got[h].sumqx[k].to_bits(), "{what}");
                        assert_eq!(want[h].sumq2[k].to_bits(), got[h].sumq2[k].to_bits(), "{what}");
                        assert_eq!(want[h].on_grid[k], got[h].on_grid[k], "{what}");
                    }
                }
            }
        }
    }

    /// `refine` (the one-candidate evaluation with the unselected groups' codes kept) against
    /// the reference's (evaluation, copy of the selected groups, sums of the result): random
    /// blocks, kept codes and candidates near the block's scale, every group or some, on the
    /// grids the quantizers refine (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S); the codes and the
    /// sums' bits.
    #[test]
    fn refine_matches_reference() {
        if !detected() {
            return;
        }
        fn check_refine<const N: usize>(t: &Lattice<N>, c: Codes, n: usize, seed: u64) {
            let mut next = crate::x86::tests::xorshift_uniform(seed);
            let searcher = Avx512::new();
            let (mut want_ev, mut got_ev) = (Evaluation::default(), Evaluation::default());
            for case in 0..1500 {
                let (xval, weight, waux, candidates) = random_block(&mut next, c, n, case, 3, false);
                let candidate = candidates[(next() * 3.0) as usize % 3];
                let kept: Vec<i8> = (0..n).map(|_| (next() * c.kmax as f32) as i8 % c.kmax as i8).collect();
                let all = ((1u32 << (n / N)) - 1) as u8;
                let groups = if case % 3 == 0 { all } else { (next() * 256.0) as u8 & all };
                let (mut want_l, mut got_l) = (kept.clone(), kept.clone());
                let want =
                    Reference.refine::<N>(t, c, &xval, &weight, &waux, candidate, groups, &mut want_l, &mut want_ev);
                let got = searcher.refine::<N>(t, c, &xval, &weight, &waux, candidate, groups, &mut got_l, &mut got_ev);
                let bits = |r: Result<(f32, f32), GgmlAbort>| r.map(|(a, b)| (a.to_bits(), b.to_bits()));
                assert_eq!(bits(want), bits(got), "case {case} groups {groups:#x}");
                if want.is_ok() {
                    assert_eq!(want_l, got_l, "case {case} groups {groups:#x}");
                }
            }
        }
        let three = Codes { bits: 3, kmax: 8 };
        let two = Codes { bits: 2, kmax: 3 };
        check_refine(iq_tables::iq3_xxs(), three, 32, 21);
        check_refine(iq_tables::iq3_s(), three, 32, 22);
        check_refine(iq_tables::iq2_s(), two, 16, 23);
        check_refine(iq_tables::iq2_xs(), two, 16, 24);
        check_refine(iq_tables::iq2_xxs(), two, 32, 25);
    }

    /// The two-block evaluation on the 3-bit grids (IQ3_S pairs its blocks; IQ3_XXS's grid
    /// too) and the 2-bit ones (IQ2_S pairs its blocks; the others, and IQ1's grid, which
    /// takes the one-candidate-at-a-time path), against the scalar reference.
    #[test]
    fn evaluate16_pair_matches_reference() {
        if !detected() {
            return;
        }
        let three = Codes { bits: 3, kmax: 8 };
        let two = Codes { bits: 2, kmax: 3 };
        check_pair(iq_tables::iq3_s(), three, 32, 11, 2000);
        check_pair(iq_tables::iq3_xxs(), three, 32, 12, 1000);
        check_pair(iq_tables::iq2_s(), two, 16, 13, 2000);
        check_pair(iq_tables::iq2_xs(), two, 16, 14, 500);
        check_pair(iq_tables::iq2_xxs(), two, 32, 15, 500);
        check_pair(iq_tables::iq1(), two, 16, 16, 200);
    }

    /// The 16-lane evaluation on the 3-bit grids (IQ3_XXS, IQ3_S), the three-level 2-bit grids
    /// (IQ2_XXS, IQ2_XS, IQ2_S: the prefix search) and IQ1's 2-bit grid (not three-level: the
    /// one-candidate-at-a-time path), against the scalar reference.
    #[test]
    fn evaluate16_matches_reference() {
        if !detected() {
            return;
        }
        let three = Codes { bits: 3, kmax: 8 };
        let two = Codes { bits: 2, kmax: 3 };
        check(iq_tables::iq3_xxs(), three, 32, 1, 3000);
        check(iq_tables::iq3_s(), three, 32, 2, 3000);
        check(iq_tables::iq2_s(), two, 16, 3, 3000);
        check(iq_tables::iq2_xs(), two, 16, 4, 1000);
        check(iq_tables::iq2_xxs(), two, 16, 5, 1000);
        check(iq_tables::iq2_xxs(), two, 32, 9, 1000);
        check(iq_tables::iq1(), two, 16, 6, 300);
    }

    /// `candidates` (16 divisions at a time, pairs written by interleaving) against the
    /// reference's, for 1..=32 numerators; the pairs past the numerators are left alone.
    /// `choose16` against `Evaluation::choose`: sums of smooth and of random scores (many and
    /// few winners), with zero, negative, infinite and NaN sums, equal scores (the later wins
    /// only when strictly better), for every n in 0..=32.
    #[test]
    fn choose16_matches_reference() {
        if !detected() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x18);
        let mut ev = Evaluation::default();
        for case in 0..3000 {
            for c in 0..ROW {
                let (x, q) = match case % 4 {
                    // Smooth: a peak somewhere, as the searches' candidates.
                    0 => {
                        let t = c as f32 / 31.0 - next();
                        (1.0 - t * t + 0.01 * next(), 1.0 + 0.1 * next())
                    }
                    1 => (next() - 0.3, next() - 0.1),
                    // Few distinct values: equal scores.
                    2 => ((next() * 3.0).floor(), 1.0 + (next() * 2.0).floor()),
                    _ => match (next() * 8.0) as u32 {
                        0 => (0.0, 0.0),
                        1 => (f32::INFINITY, 1.0),
                        2 => (1.0, f32::INFINITY),
                        3 => (f32::NAN, 1.0),
                        4 => (-2.0, 1.0),
                        5 => (1e30, 1e-30),
                        _ => (next() * 4.0, next() + 0.5),
                    },
                };
                (ev.sumqx[c], ev.sumq2[c]) = (x, q);
            }
            for n in 0..=ROW {
                let want = ev.choose(n);
                // SAFETY: AVX-512F was detected (above).
                let got = unsafe { choose16(&ev, n) };
                let bits = |r: Option<(usize, f32)>| r.map(|(c, s)| (c, s.to_bits()));
                assert_eq!(bits(got), bits(want), "case {case}, n {n}");
            }
        }
    }

    #[test]
    fn candidates16_matches_reference() {
        if !detected() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(8);
        for case in 0..2000 {
            let m = 1 + case % 32;
            let numerators: Vec<f32> = (0..m).map(|_| 15.0 + (next() - 0.5) * 4.0).collect();
            let max = [1.0, 3e-20, 7.5, 1e30, 0.1][case % 5] * (0.5 + next());
            let mut want = [(f32::NAN, 2.0f32); 33];
            let mut got = want;
            Reference.candidates(&numerators, max, &mut want[..m]);
            Avx512::new().candidates(&numerators, max, &mut got[..m]);
            let bits = |p: &[(f32, f32)]| p.iter().map(|(a, b)| (a.to_bits(), b.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&want), bits(&got), "case {case}");
        }
    }

    /// [`nearest_per_lane16`]'s path for lists without packed codes (none of the present
    /// grids) against its packed path, on every off-grid code's list of the 3-bit grids.
    #[test]
    fn nearest_per_lane16_without_packed_codes_matches() {
        if !detected() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(7);
        for t in [iq_tables::iq3_xxs(), iq_tables::iq3_s()] {
            for (u, &entry) in t.map().iter().enumerate() {
                if entry >= 0 || entry == i32::MIN {
                    continue;
                }
                let list = t.list((-(entry + 1)) as usize);
                let bare = List { packed: &[], ..list };
                let x: [f32; 4] =
                    std::array::from_fn(|i| (((u >> (3 * i)) & 7) as f32 * 2.0 + 1.0) * (0.9 + 0.2 * next()));
                let w: [f32; 4] = std::array::from_fn(|_| if next() < 0.1 { 0.0 } else { next() });
                let scales: [f32; 16] = std::array::from_fn(|_| 0.8 + 0.4 * next());
                // SAFETY: all bits zero is a valid `__m512`.
                let mut terms: [[__m512; 8]; 4] = unsafe { std::mem::zeroed() };
                let lanes = (next() * 65536.0) as u16 | 1;
                let (mut a, mut b) = ([[-1i32; ROW]; 4], [[-1i32; ROW]; 4]);
                // SAFETY: AVX2, AVX-512F and AVX-512BW were detected above.
                unsafe {
                    lane_terms16::<false>(&x, &w, (0, &x, &w), _mm512_loadu_ps(scales.as_ptr()), &mut terms);
                    let ra = nearest_per_lane16(&terms, list, lanes, &mut a, 3);
                    let rb = nearest_per_lane16(&terms, bare, lanes, &mut b, 3);
                    assert_eq!(ra, rb, "code {u}");
                }
                assert_eq!(a, b, "code {u}");
            }
        }
    }
}
