//! Q2_K and Q3_K on AVX2, bit-exact. The 16-value sub-blocks run 8 to a vector, each lane
//! doing its sub-block's search with the reference's operations in the reference's order:
//! for Q2_K the k-quant search of `kquants_avx2` (`make_qkx2_quants`, with `use_mad` without
//! importance weights), for Q3_K `make_q3_quants` (its coordinate descent lane by lane,
//! every step masked as the reference decides it) or, with importance weights,
//! `make_qx_quants`. The super-block heads (scales of scales) are scalar except plain Q3_K's
//! (in lanes, as are its final codes); the final codes are recomputed and packed with vectors.

use std::arch::x86_64::*;

use super::avx2::lanes;
use super::kquants_avx2::{
    N, Q6_VECTORS, Search, blend, blend_state, clamp, columns, columns16, imatrix_weights, make_qkx2_quants_xn,
    make_qx_quants_16, make_qx_quants_x, nearest_int, splat, sums_of_squares, sums_of_squares8, transpose_codes,
};
use crate::convert::f16_to_f32;
use crate::scalar::q2k_q3k::{self, Q2_K_BYTES, Q3_K_BYTES};

/// Super-blocks per call: each is two vectors of 8 sub-blocks.
const Q2_SUPERBLOCKS: usize = N / 2;

/// 8 codes (i32 lanes in 0..=7) as 8 bytes at the start of `out`.
#[target_feature(enable = "avx2")]
fn store8<T>(q: __m256i, out: &mut [T]) {
    assert!(size_of::<T>() == 1 && out.len() >= 8);
    let p16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
    // SAFETY: `out` holds at least 8 one-byte elements (checked above); unaligned store.
    unsafe { _mm_storel_epi64(out.as_mut_ptr().cast(), _mm_packus_epi16(p16, p16)) };
}

/// Recomputes the codes of a Q2_K super-block whose head (scales, d, dmin) is written, as
/// `q2k_q3k::finish_q2_k` does (sub-blocks whose scale is 0 keep `l`), and packs them.
#[target_feature(enable = "avx2")]
fn finish_q2_k(x: &[f32], l: &mut [u8; 256], b: &mut [u8]) {
    assert!(x.len() >= 256 && b.len() >= Q2_K_BYTES);
    let d_all = f16_to_f32(u16::from_le_bytes([b[80], b[81]]));
    let m_all = f16_to_f32(u16::from_le_bytes([b[82], b[83]]));
    for j in 0..16 {
        let d = d_all * (b[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let (dv, dmv) = (splat(d), splat(m_all * (b[j] >> 4) as f32));
        for h in 0..2 {
            // SAFETY: `x` holds 256 f32, 16 j + 8 h + 8 <= 256; unaligned load.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(16 * j + 8 * h)) };
            let q = clamp(nearest_int(_mm256_div_ps(_mm256_add_ps(v, dmv), dv)), 3);
            store8(q, &mut l[16 * j + 8 * h..]);
        }
    }
    q2k_q3k::pack_2bit(l, &mut b[16..80]);
}

/// [`Q2_SUPERBLOCKS`] Q2_K super-blocks, with importance weights (one per value) and the
/// super-blocks' `Σx²` (at least [`Q2_SUPERBLOCKS`]), or without.
#[target_feature(enable = "avx2,f16c")]
fn q2_k_superblocks(x: &[f32], y: &mut [u8], qw: Option<(&[f32], &[f32])>) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; 16];
    let mut wv = [[zero; N]; 16];
    let mut sw = [[0f32; 8]; N];
    let (qw, sum_x2) = (qw.map(|q| q.0), qw.map(|q| q.1));
    for g in 0..N {
        let r = 128 * g..128 * g + 128;
        let c = columns::<16>(&x[r.clone()]);
        let w = match (qw, sum_x2) {
            (Some(qw), Some(s)) => {
                let (w, sums) = imatrix_weights(&c, &columns::<16>(&qw[r]), s[g / 2] / 256.0);
                sw[g] = lanes(sums);
                w
            }
            _ => {
                // A plain loop: a closure handed to `map` would not be inlined into AVX2 code.
                let mut w = c;
                for v in &mut w {
                    *v = _mm256_andnot_ps(splat(-0.0), *v);
                }
                w
            }
        };
        for i in 0..16 {
            xv[i][g] = c[i];
            wv[i][g] = w[i];
        }
    }
    let mut l = [[0u8; 256]; N];
    let found = if qw.is_some() {
        make_qkx2_quants_xn::<16, false>(&Search::weighted(3), &xv, &wv, &mut l)
    } else {
        make_qkx2_quants_xn::<16, true>(&Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15 }, &xv, &wv, &mut l)
    };
    for s in 0..Q2_SUPERBLOCKS {
        let (mut scales, mut mins, mut sums) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut codes = [0u8; 256];
        for h in 0..2 {
            let g = 2 * s + h;
            scales[8 * h..8 * h + 8].copy_from_slice(&found[g].0);
            mins[8 * h..8 * h + 8].copy_from_slice(&found[g].1);
            sums[8 * h..8 * h + 8].copy_from_slice(&sw[g]);
            codes[128 * h..128 * h + 128].copy_from_slice(&l[g][..128]);
        }
        let b = &mut y[Q2_K_BYTES * s..Q2_K_BYTES * (s + 1)];
        if qw.is_some() {
            q2k_q3k::q2_k_weighted_head(&scales, &mins, &sums, b);
        } else {
            q2k_q3k::q2_k_head(&scales, &mins, b);
        }
        finish_q2_k(&x[256 * s..256 * s + 256], &mut codes, b);
    }
}

/// Q2_K without importance weights (`quantize_row_q2_K_ref`), values finite.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q2_k(x: &[f32], y: &mut [u8]) {
    let mut xs = x.chunks_exact(256 * Q2_SUPERBLOCKS);
    let mut ys = y.chunks_exact_mut(Q2_K_BYTES * Q2_SUPERBLOCKS);
    for (x, y) in (&mut xs).zip(&mut ys) {
        q2_k_superblocks(x, y, None);
    }
    q2k_q3k::quantize_q2_k(xs.remainder(), ys.into_remainder());
}

/// One Q2_K row with importance weights `qw` (`quantize_row_q2_K_impl`), values finite.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q2_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    // Batches of 8 super-blocks share one pass for their sums of squares.
    let mut xs = x.chunks_exact(256 * 8);
    let mut ys = y.chunks_exact_mut(Q2_K_BYTES * 8);
    let mut ws = qw.chunks_exact(256 * 8);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        let sum_x2 = sums_of_squares8(x);
        for s in (0..8).step_by(Q2_SUPERBLOCKS) {
            let (x, qw) = (&x[256 * s..256 * (s + Q2_SUPERBLOCKS)], &qw[256 * s..256 * (s + Q2_SUPERBLOCKS)]);
            q2_k_superblocks(x, &mut y[Q2_K_BYTES * s..Q2_K_BYTES * (s + Q2_SUPERBLOCKS)], Some((qw, &sum_x2[s..])));
        }
    }
    let mut xs = xs.remainder().chunks_exact(256 * Q2_SUPERBLOCKS);
    let mut ys = ys.into_remainder().chunks_exact_mut(Q2_K_BYTES * Q2_SUPERBLOCKS);
    let mut ws = ws.remainder().chunks_exact(256 * Q2_SUPERBLOCKS);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        q2_k_superblocks(x, y, Some((qw, &sums_of_squares::<Q2_SUPERBLOCKS>(x, 256))));
    }
    q2k_q3k::quantize_q2_k_weighted(xs.remainder(), ys.into_remainder(), ws.remainder());
}

/// Vectors of 8 sub-blocks searched together by `make_qx_quants_x` (Q3_K with importance
/// weights) and by [`make_q3_quants_x`] (interleaved: 8 of the latter were 10% slower than 4
/// and 2, measured after its descent got its early stop).
const V: usize = Q6_VECTORS;
const V_PLAIN: usize = 4;
/// Q3_K super-blocks per call, with and without importance weights.
const Q3_SUPERBLOCKS: usize = V / 2;
const Q3_SUPERBLOCKS_PLAIN: usize = V_PLAIN / 2;

/// The per-value state of [`make_q3_quants_x`]'s descent (codes offset by nearest_int's bias,
/// the terms `w·x·l` and `w·l·l`), kept by the caller across calls: every entry is written
/// before it is read in each call, so it is allocated (and zeroed) once per row, not per call.
struct Descent<const V: usize> {
    lv: [[__m256i; V]; 16],
    tlx: [[__m256; V]; 16],
    tl2: [[__m256; V]; 16],
}

impl<const V: usize> Descent<V> {
    #[target_feature(enable = "avx2")]
    fn new() -> Self {
        let zero = _mm256_setzero_ps();
        Descent { lv: [[_mm256_setzero_si256(); V]; 16], tlx: [[zero; V]; 16], tl2: [[zero; V]; 16] }
    }
}

/// `make_q3_quants(16, 4, x, L, true)` for 8 sub-blocks per vector (`x[i][v]` is element i of
/// sub-blocks 8v..8v+8). Returns the scales (lane j of vector v: sub-block 8v + j) and
/// whether every value was finite, and leaves the codes in the same lanes (offset by 4; 0 for
/// an all-zero sub-block) in `state.lv[i][v]`.
#[target_feature(enable = "avx2")]
fn make_q3_quants_x<const V: usize>(x: &[[__m256; V]; 16], state: &mut Descent<V>) -> ([__m256; V], bool) {
    let zero = _mm256_setzero_ps();
    let (mut max, mut amax) = ([zero; V], [zero; V]);
    let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for row in x {
        for v in 0..V {
            let ax = _mm256_andnot_ps(splat(-0.0), row[v]);
            finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(ax, splat(f32::INFINITY)));
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[v]);
            amax[v] = blend(amax[v], ax, gt);
            max[v] = blend(max[v], row[v], gt);
        }
    }
    let codes = |q: __m256i| _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(3)), _mm256_set1_epi32(-4));
    // The descent keeps the codes offset by nearest_int's bias (`BIAS + l`): the bits of
    // `f + 1.5·2^23` masked to 23 bits, clamped to BIAS − 4..=BIAS + 3, are `BIAS +
    // clamp(nearest_int(f), −4, 3)` for every f (the subtraction of BIAS commutes with the clamp).
    const BIAS: i32 = 0x0040_0000;
    let bias = _mm256_set1_epi32(BIAS);
    let biased_codes = |f: __m256| {
        let raw = _mm256_and_si256(
            _mm256_castps_si256(_mm256_add_ps(f, splat(12_582_912.0))),
            _mm256_set1_epi32(0x007f_ffff),
        );
        _mm256_max_epi32(_mm256_min_epi32(raw, _mm256_set1_epi32(BIAS + 3)), _mm256_set1_epi32(BIAS - 4))
    };
    let Descent { lv, tlx, tl2 } = state;
    // Each value's terms of the sums at its current code l: `w·x·l` and `w·l·l`, as the
    // reference forms them; renewed when the code changes.
    let (mut sumlx, mut suml2) = ([zero; V], [zero; V]);
    for v in 0..V {
        let iscale = _mm256_div_ps(splat(-4.0), max[v]);
        for i in 0..16 {
            let q = codes(nearest_int(_mm256_mul_ps(iscale, x[i][v])));
            lv[i][v] = _mm256_add_epi32(q, bias);
            let w = _mm256_mul_ps(x[i][v], x[i][v]);
            let lf = _mm256_cvtepi32_ps(q);
            tlx[i][v] = _mm256_mul_ps(_mm256_mul_ps(w, x[i][v]), lf);
            tl2[i][v] = _mm256_mul_ps(_mm256_mul_ps(w, lf), lf);
            sumlx[v] = _mm256_add_ps(sumlx[v], tlx[i][v]);
            suml2[v] = _mm256_add_ps(suml2[v], tl2[i][v]);
        }
    }
    // The reference runs passes of 16 steps while the last one changed a code (at most 5).
    // Position t = 16·pass + i; a step's outcome depends only on the lane's state, which only
    // an accepted step changes: if no lane of a vector accepted in the 16 positions before t,
    // step t repeats step t − 16 exactly and changes nothing, and so does every later step.
    // So each vector runs to 16 positions past its last accepted step (from position 15 if
    // none), and no further than position 79 — the reference's steps after that point, to
    // the end of its last pass, accept nothing. From the second pass on, a step where no lane
    // would try a new code (about 19 in 20) changes nothing and ends at the test; in the first
    // pass (a sixth of the steps try) the branch was mispredicted too often to pay (+2%).
    let mut end = [15usize; V];
    let mut last = 15;
    for t in 0..80 {
        if t > last {
            break;
        }
        let i = t % 16;
        for v in 0..V {
            if t > end[v] {
                continue;
            }
            let slx = _mm256_sub_ps(sumlx[v], tlx[i][v]);
            let sl2 = _mm256_sub_ps(suml2[v], tl2[i][v]);
            let new_l = biased_codes(_mm256_div_ps(_mm256_mul_ps(x[i][v], sl2), slx));
            // Lanes where the reference would try the new code; most steps have none.
            let tries = _mm256_andnot_si256(
                _mm256_cmpeq_epi32(new_l, lv[i][v]),
                _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero)),
            );
            if t >= 16 && _mm256_movemask_ps(_mm256_castsi256_ps(tries)) == 0 {
                continue;
            }
            let nf = _mm256_cvtepi32_ps(_mm256_sub_epi32(new_l, bias));
            // The value's weight x² and w·x, formed again here (rarely needed: not kept).
            let w = _mm256_mul_ps(x[i][v], x[i][v]);
            let (nlx, nl2) = (_mm256_mul_ps(_mm256_mul_ps(w, x[i][v]), nf), _mm256_mul_ps(_mm256_mul_ps(w, nf), nf));
            let slx_new = _mm256_add_ps(slx, nlx);
            let sl2_new = _mm256_add_ps(sl2, nl2);
            let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(
                _mm256_mul_ps(_mm256_mul_ps(slx_new, slx_new), suml2[v]),
                _mm256_mul_ps(_mm256_mul_ps(sumlx[v], sumlx[v]), sl2_new),
            );
            let valid = _mm256_and_ps(gain, _mm256_cmp_ps::<_CMP_GT_OQ>(sl2_new, zero));
            let accept = _mm256_and_si256(_mm256_castps_si256(valid), tries);
            lv[i][v] = _mm256_blendv_epi8(lv[i][v], new_l, accept);
            let take = _mm256_castsi256_ps(accept);
            tlx[i][v] = blend_state(tlx[i][v], nlx, take);
            tl2[i][v] = blend_state(tl2[i][v], nl2, take);
            sumlx[v] = blend_state(sumlx[v], slx_new, take);
            suml2[v] = blend_state(suml2[v], sl2_new, take);
            // A branch-free select: whether a try is accepted is no easier to predict.
            let accepted = _mm256_testz_si256(accept, accept) == 0;
            end[v] = if accepted { t + 16 } else { end[v] };
            last = last.max(end[v]);
        }
    }
    let mut out = [zero; V];
    for v in 0..V {
        let small = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(amax[v], splat(1e-15)));
        for row in lv.iter_mut() {
            row[v] = _mm256_andnot_si256(small, _mm256_sub_epi32(row[v], _mm256_set1_epi32(BIAS - 4)));
        }
        let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[v], zero);
        let scale = _mm256_and_ps(positive, _mm256_div_ps(sumlx[v], suml2[v]));
        out[v] = _mm256_andnot_ps(_mm256_castsi256_ps(small), scale);
    }
    (out, _mm256_movemask_ps(finite) == 0xFF)
}

/// `q2k_q3k::q3_k_head` for the 16 sub-block scales of one super-block in lanes (`s[h]`, lane
/// j: sub-block 8h + j): writes the packed 6-bit scales and d (bytes 96..110 of `b`) and returns
/// the sub-blocks' final scales `d·(scale − 32)` in the same lanes, as `finish_q3_k` reads them
/// back from the block.
#[target_feature(enable = "avx2,f16c")]
pub(super) fn q3_k_head_lanes(s: [__m256; 2], b: &mut [u8]) -> [__m256; 2] {
    assert!(b.len() >= Q3_K_BYTES);
    // The reference keeps the first scale of largest |s| (`|s| > amax`, from 0: NaN never
    // wins, so NaN counts as 0 here); the maximum is exact, its first occurrence found by mask.
    let abs = s.map(|v| {
        let a = _mm256_andnot_ps(splat(-0.0), v);
        _mm256_and_ps(a, _mm256_cmp_ps::<_CMP_ORD_Q>(a, a))
    });
    let m = _mm256_max_ps(abs[0], abs[1]);
    let m = _mm256_max_ps(m, _mm256_permute2f128_ps::<1>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b01_00_11_10>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0b10_11_00_01>(m, m));
    let amax = _mm256_cvtss_f32(m);
    let mut ls = [_mm256_setzero_si256(); 2];
    let mut d16 = 0u16; // f32_to_f16(0.0)
    if amax > 0.0 {
        let first = |h: usize| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs[h], m)) as u32;
        let at = (first(0) | first(1) << 8).trailing_zeros() as usize;
        let max_scale = lanes(s[at / 8])[at % 8];
        let iscale = -32.0 / max_scale;
        for h in 0..2 {
            let q = nearest_int(_mm256_mul_ps(splat(iscale), s[h]));
            // ggml stores nearest_int's result in an int8_t before clamping.
            let q = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(q));
            let q = _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(31)), _mm256_set1_epi32(-32));
            ls[h] = _mm256_add_epi32(q, _mm256_set1_epi32(32));
        }
        d16 = crate::convert::f32_to_f16(1.0 / iscale);
    }
    // Low 4 bits: byte j < 8 holds scale j's and scale 8 + j's (high nibble); bits 4..6 of
    // scale j go to byte 8 + j % 4 at bit 2·(j / 4).
    let low = _mm256_or_si256(
        _mm256_and_si256(ls[0], _mm256_set1_epi32(0xF)),
        _mm256_slli_epi32::<4>(_mm256_and_si256(ls[1], _mm256_set1_epi32(0xF))),
    );
    let high = _mm256_or_si256(
        _mm256_sllv_epi32(_mm256_srli_epi32::<4>(ls[0]), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
        _mm256_sllv_epi32(_mm256_srli_epi32::<4>(ls[1]), _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)),
    );
    let high = _mm_or_si128(_mm256_castsi256_si128(high), _mm256_extracti128_si256::<1>(high));
    let low16 = _mm_packus_epi32(_mm256_castsi256_si128(low), _mm256_extracti128_si256::<1>(low));
    let bytes = _mm_packus_epi16(low16, _mm_packus_epi32(high, high));
    // SAFETY: `b` holds Q3_K_BYTES (110) bytes (checked above): 16 bytes at 96 would pass its
    // end, so 8 + 4 bytes are stored at 96 and 104; unaligned stores.
    unsafe {
        _mm_storel_epi64(b.as_mut_ptr().add(96).cast(), bytes);
        b.as_mut_ptr().add(104).cast::<i32>().write_unaligned(_mm_extract_epi32::<2>(bytes));
    }
    b[108..110].copy_from_slice(&d16.to_le_bytes());
    let d_all = splat(f16_to_f32(d16));
    ls.map(|l| _mm256_mul_ps(d_all, _mm256_cvtepi32_ps(_mm256_sub_epi32(l, _mm256_set1_epi32(32)))))
}

/// The end of a Q3_K super-block whose head (scales, d) is written, as `q2k_q3k::finish_q3_k`:
/// codes recomputed with the rounded scales (sub-blocks whose scale is 0 keep `l`), high
/// bits to `hmask`, low bits packed.
#[target_feature(enable = "avx2")]
fn finish_q3_k(x: &[f32], l: &mut [i8; 256], b: &mut [u8]) {
    assert!(x.len() >= 256 && b.len() >= Q3_K_BYTES);
    let d_all = f16_to_f32(u16::from_le_bytes([b[108], b[109]]));
    for j in 0..16 {
        let d = d_all * (q2k_q3k::q3_k_scale(j, &b[96..108]) as i32 - 32) as f32;
        if d == 0.0 {
            continue;
        }
        let dv = splat(d);
        for h in 0..2 {
            // SAFETY: `x` holds 256 f32, 16 j + 8 h + 8 <= 256; unaligned load.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(16 * j + 8 * h)) };
            let q = nearest_int(_mm256_div_ps(v, dv));
            let q = _mm256_add_epi32(
                _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(3)), _mm256_set1_epi32(-4)),
                _mm256_set1_epi32(4),
            );
            store8(q, &mut l[16 * j + 8 * h..]);
        }
    }
    pack_q3_k_codes(l, b);
}

/// A Q3_K block's 256 codes (0..=7) packed: high bits to `hmask` (bytes 0..32), low bits to
/// `qs` (bytes 32..96), as `q2k_q3k::pack_q3_k_codes`.
#[target_feature(enable = "avx2")]
pub(super) fn pack_q3_k_codes(l: &[i8; 256], b: &mut [u8]) {
    assert!(b.len() >= 96);
    let (one, three) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
    let mut hmask = _mm256_setzero_si256();
    let mut qs = [_mm256_setzero_si256(); 2];
    for c in 0..8 {
        // SAFETY: `l` holds 256 bytes, 32 c + 32 <= 256; unaligned load.
        let codes = unsafe { _mm256_loadu_si256(l.as_ptr().add(32 * c).cast()) };
        // Codes are 0..=7: bit 2 is the high bit, bits 0..2 the low ones; 16-bit shifts
        // move them within their bytes.
        let shift = _mm_cvtsi32_si128(c as i32);
        let high = _mm256_and_si256(_mm256_srli_epi16::<2>(codes), one);
        hmask = _mm256_or_si256(hmask, _mm256_sll_epi16(high, shift));
        let low = _mm256_and_si256(codes, three);
        let k = _mm_cvtsi32_si128(2 * (c as i32 % 4));
        qs[c / 4] = _mm256_or_si256(qs[c / 4], _mm256_sll_epi16(low, k));
    }
    // SAFETY: `b` holds at least 96 bytes: hmask at 0, qs at 32 and 64; unaligned stores.
    unsafe {
        _mm256_storeu_si256(b.as_mut_ptr().cast(), hmask);
        _mm256_storeu_si256(b.as_mut_ptr().add(32).cast(), qs[0]);
        _mm256_storeu_si256(b.as_mut_ptr().add(64).cast(), qs[1]);
    }
}

/// Weighted Q3_K super-blocks from their sub-blocks' scales (`found[v]`, lane j: sub-block
/// 8v + j), sums of weights `sw` (same lanes) and codes: the head, then the codes.
#[target_feature(enable = "avx2,f16c")]
fn q3_k_finish_all<const W: usize>(
    x: &[f32],
    y: &mut [u8],
    found: &[[f32; 8]; W],
    codes: &[[i8; 128]; W],
    sw: &[[f32; 8]; W],
) {
    for s in 0..W / 2 {
        let (mut scales, mut sums, mut l) = ([0f32; 16], [0f32; 16], [0i8; 256]);
        for h in 0..2 {
            scales[8 * h..8 * h + 8].copy_from_slice(&found[2 * s + h]);
            sums[8 * h..8 * h + 8].copy_from_slice(&sw[2 * s + h]);
            l[128 * h..128 * h + 128].copy_from_slice(&codes[2 * s + h]);
        }
        let b = &mut y[Q3_K_BYTES * s..Q3_K_BYTES * (s + 1)];
        let mut ls = [0i8; 16];
        let d = make_qx_quants_16(32, &scales, &sums, &mut ls);
        q2k_q3k::put_q3_k_head(&ls, d, b);
        finish_q3_k(&x[256 * s..256 * s + 256], &mut l, b);
    }
}

/// `kquants_avx2::columns16` with the 8×8 transposes' cross-half step done by the loads:
/// each row vector is built from two 4-value halves (sub-blocks k and k + 4), so only the
/// in-half unpacks and shuffles remain (16 shuffles per 64 values instead of 24).
#[target_feature(enable = "avx2")]
pub(super) fn columns16_q3<const V: usize>(x: &[f32]) -> [[__m256; V]; 16] {
    assert!(x.len() >= 128 * V);
    let mut out = [[_mm256_setzero_ps(); V]; 16];
    for v in 0..V {
        for (q, rows) in out.chunks_exact_mut(4).enumerate() {
            // Values 4q..4q+4 of sub-blocks 8v + k (low half) and 8v + k + 4 (high half).
            let base = 128 * v + 4 * q;
            // SAFETY: base + 16 (k + 4) + 4 <= 128 V values are readable (checked above);
            // unaligned 16-byte loads.
            let r: [__m256; 4] = std::array::from_fn(|k| unsafe {
                let at = x.as_ptr().add(base + 16 * k);
                _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(at)), _mm_loadu_ps(at.add(64)))
            });
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            rows[0][v] = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
            rows[1][v] = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
            rows[2][v] = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
            rows[3][v] = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
        }
    }
    out
}

/// [`Q3_SUPERBLOCKS_PLAIN`] Q3_K super-blocks without importance weights.
#[target_feature(enable = "avx2,f16c")]
fn q3_k_superblocks(x: &[f32], y: &mut [u8], state: &mut Descent<V_PLAIN>) -> bool {
    let xv = columns16_q3::<V_PLAIN>(x);
    let (found, finite) = make_q3_quants_x(&xv, state);
    for s in 0..Q3_SUPERBLOCKS_PLAIN {
        let b = &mut y[Q3_K_BYTES * s..Q3_K_BYTES * (s + 1)];
        let d = q3_k_head_lanes([found[2 * s], found[2 * s + 1]], b);
        // The final codes as `finish_q3_k` forms them, in lanes: sub-blocks whose scale is 0
        // keep the search's codes.
        let mut l = [0i8; 256];
        for h in 0..2 {
            let v = 2 * s + h;
            let keep = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(d[h], _mm256_setzero_ps()));
            let mut q = [_mm256_setzero_si256(); 16];
            for i in 0..16 {
                let c = nearest_int(_mm256_div_ps(xv[i][v], d[h]));
                let c = _mm256_add_epi32(
                    _mm256_max_epi32(_mm256_min_epi32(c, _mm256_set1_epi32(3)), _mm256_set1_epi32(-4)),
                    _mm256_set1_epi32(4),
                );
                q[i] = _mm256_blendv_epi8(c, state.lv[i][v], keep);
            }
            let half: &mut [i8; 128] = (&mut l[128 * h..128 * h + 128]).try_into().expect("128 codes");
            transpose_codes(&q, half);
        }
        pack_q3_k_codes(&l, b);
    }
    finite
}

/// [`Q3_SUPERBLOCKS`] Q3_K super-blocks with importance weights `qw` (one per value) and
/// their `Σx²` (`sum_x2`, at least [`Q3_SUPERBLOCKS`]).
#[target_feature(enable = "avx2,f16c")]
fn q3_k_superblocks_weighted(x: &[f32], y: &mut [u8], qw: &[f32], sum_x2: &[f32]) {
    assert!(sum_x2.len() >= Q3_SUPERBLOCKS);
    let xv = columns16::<V>(x);
    // The importance weights become the values' weights in place: `imatrix_weights`' formula,
    // qw·√(sigma2 + x²), and their sums in order.
    let mut wv = columns16::<V>(qw);
    let mut sw = [[0f32; 8]; V];
    for v in 0..V {
        let sigma2 = splat(2.0 * sum_x2[v / 2] / 256.0);
        let mut sums = _mm256_setzero_ps();
        for i in 0..16 {
            let w = _mm256_mul_ps(wv[i][v], _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(xv[i][v], xv[i][v]))));
            wv[i][v] = w;
            sums = _mm256_add_ps(sums, w);
        }
        sw[v] = lanes(sums);
    }
    let mut codes = [[0i8; 128]; V];
    let found = make_qx_quants_x(4, &xv, &wv, &mut codes);
    q3_k_finish_all(x, y, &found, &codes, &sw);
}

/// Q3_K without importance weights (`quantize_row_q3_K_ref`). Returns whether every value
/// was finite (the blocks are written either way; only a `true` result makes them valid).
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q3_k(x: &[f32], y: &mut [u8]) -> bool {
    let mut state = Descent::new();
    let mut xs = x.chunks_exact(256 * Q3_SUPERBLOCKS_PLAIN);
    let mut ys = y.chunks_exact_mut(Q3_K_BYTES * Q3_SUPERBLOCKS_PLAIN);
    let mut finite = true;
    for (x, y) in (&mut xs).zip(&mut ys) {
        finite &= q3_k_superblocks(x, y, &mut state);
    }
    let rest = xs.remainder();
    q2k_q3k::quantize_q3_k(rest, ys.into_remainder());
    finite && crate::backend::first_non_finite(rest).is_none()
}

/// One Q3_K row with importance weights `qw` (`quantize_row_q3_K_impl`), values finite.
#[target_feature(enable = "avx2,f16c")]
pub fn quantize_q3_k_weighted(x: &[f32], y: &mut [u8], qw: &[f32]) {
    // Batches of 8 super-blocks share one pass for their sums of squares.
    let mut xs = x.chunks_exact(256 * 8);
    let mut ys = y.chunks_exact_mut(Q3_K_BYTES * 8);
    let mut ws = qw.chunks_exact(256 * 8);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        let sum_x2 = sums_of_squares8(x);
        for s in (0..8).step_by(Q3_SUPERBLOCKS) {
            let (x, qw) = (&x[256 * s..256 * (s + Q3_SUPERBLOCKS)], &qw[256 * s..256 * (s + Q3_SUPERBLOCKS)]);
            q3_k_superblocks_weighted(x, &mut y[Q3_K_BYTES * s..Q3_K_BYTES * (s + Q3_SUPERBLOCKS)], qw, &sum_x2[s..]);
        }
    }
    let mut xs = xs.remainder().chunks_exact(256 * Q3_SUPERBLOCKS);
    let mut ys = ys.into_remainder().chunks_exact_mut(Q3_K_BYTES * Q3_SUPERBLOCKS);
    let mut ws = ws.remainder().chunks_exact(256 * Q3_SUPERBLOCKS);
    for ((x, y), qw) in (&mut xs).zip(&mut ys).zip(&mut ws) {
        q3_k_superblocks_weighted(x, y, qw, &sums_of_squares::<Q3_SUPERBLOCKS>(x, 256));
    }
    q2k_q3k::quantize_q3_k_weighted(xs.remainder(), ys.into_remainder(), ws.remainder());
}

/// `out[k] = dl * v[k] - ml` for 16 small codes (bytes), as the reference computes them.
#[target_feature(enable = "avx2")]
fn put16(codes: __m128i, dl: f32, ml: Option<f32>, out: &mut [f32]) {
    assert!(out.len() >= 16);
    let (dv, mv) = (splat(dl), splat(ml.unwrap_or(0.0)));
    for (h, v) in [codes, _mm_srli_si128::<8>(codes)].into_iter().enumerate() {
        let f = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
        let f = if ml.is_some() { _mm256_sub_ps(f, mv) } else { f };
        // SAFETY: `out` holds at least 16 f32, h < 2; unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), f) };
    }
}

/// `dequantize_row_q2_K`.
#[target_feature(enable = "avx2,f16c")]
pub fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
    let three = _mm_set1_epi8(3);
    for (b, y) in x.chunks_exact(Q2_K_BYTES).zip(y.chunks_exact_mut(256)) {
        let d = f16_to_f32(u16::from_le_bytes([b[80], b[81]]));
        let min = f16_to_f32(u16::from_le_bytes([b[82], b[83]]));
        for h in 0..2 {
            for half in 0..2 {
                // SAFETY: bytes 16 + 32 h + 16 half .. + 16 lie within the 84-byte block.
                let q = unsafe { _mm_loadu_si128(b.as_ptr().add(16 + 32 * h + 16 * half).cast()) };
                for k in 0..4 {
                    let sc = b[8 * h + 2 * k + half];
                    let codes = _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(2 * k as i32)), three);
                    let out = &mut y[128 * h + 32 * k + 16 * half..];
                    put16(codes, d * (sc & 0xF) as f32, Some(min * (sc >> 4) as f32), out);
                }
            }
        }
    }
}

/// `dequantize_row_q3_K`.
#[target_feature(enable = "avx2,f16c")]
pub fn dequantize_q3_k(x: &[u8], y: &mut [f32]) {
    let (three, four) = (_mm_set1_epi8(3), _mm_set1_epi8(4));
    for (b, y) in x.chunks_exact(Q3_K_BYTES).zip(y.chunks_exact_mut(256)) {
        let d_all = f16_to_f32(u16::from_le_bytes([b[108], b[109]]));
        for h in 0..2 {
            for half in 0..2 {
                // SAFETY: bytes 32 + 32 h + 16 half .. + 16 and 16 half .. + 16 lie within the
                // 110-byte block.
                let (q, hm) = unsafe {
                    (
                        _mm_loadu_si128(b.as_ptr().add(32 + 32 * h + 16 * half).cast()),
                        _mm_loadu_si128(b.as_ptr().add(16 * half).cast()),
                    )
                };
                for k in 0..4 {
                    let m = _mm_set1_epi8((1u8 << (4 * h + k)) as i8);
                    let low = _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(2 * k as i32)), three);
                    // Minus 4 where the high bit is clear.
                    let clear = _mm_cmpeq_epi8(_mm_and_si128(hm, m), _mm_setzero_si128());
                    let codes = _mm_sub_epi8(low, _mm_and_si128(clear, four));
                    let sc = q2k_q3k::q3_k_scale(8 * h + 2 * k + half, &b[96..108]) as i32 - 32;
                    put16(codes, d_all * sc as f32, None, &mut y[128 * h + 32 * k + 16 * half..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform values in [0, 1) from a fixed xorshift sequence.
    fn uniform() -> impl FnMut() -> f32 {
        crate::x86::tests::xorshift_uniform(0x2545_F491_4F6C_DD1D)
    }

    /// `make_q3_quants_x` (the descent's skipped no-op steps, its biased codes) against the
    /// scalar `make_q3_quants`, sub-block by sub-block: coarse values whose quotients fall on
    /// rounding ties (rounding them half up instead of to even fails here), zeros and all-zero
    /// sub-blocks, one outlier among values 10^6 smaller, scales from subnormal to 3e38 (`x²`
    /// and `w·x` overflowing).
    #[test]
    fn make_q3_quants_x_matches_make_q3_quants() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = uniform();
        // One state for all cases, as a row's super-blocks share one: nothing may leak.
        // SAFETY: AVX2 was detected above.
        let mut descent = unsafe { Descent::<8>::new() };
        let scales = [0.02, 1.0, 1e-3, 1e-15, 2e-15, 1e-20, 1e-40, 1e15, 1e19, 3e38, 0.0, 7.0];
        for case in 0..3_000 {
            let mut x = [0f32; 1024];
            for (s, sub) in x.chunks_exact_mut(16).enumerate() {
                let kind = (case + 7 * s) % 6;
                let scale = scales[(case * 5 + s) % scales.len()];
                for v in sub.iter_mut() {
                    *v = match kind {
                        // Multiples of 1/4: ties in the first rounding and in the descent.
                        0 => ((next() * 16.0).floor() - 8.0) * 0.25,
                        1 => ((next() * 8.0).floor() - 4.0) * scale,
                        2 => (next() - 0.5) * scale,
                        3 if next() < 0.5 => 0.0,
                        3 => (next() - 0.3) * scale,
                        4 => (next() - 0.5) * 1e-6 * scale,
                        _ => ((next() * 3.0).floor() - 1.0) * scale,
                    };
                }
                if kind == 4 {
                    sub[(s * 3) % 16] = scale;
                }
                if (case + s) % 23 == 0 {
                    sub.fill(0.0);
                }
            }
            let mut got_l = [[0i8; 128]; 8];
            // SAFETY: AVX2 was detected above.
            let got = unsafe {
                let (found, finite) = make_q3_quants_x::<8>(&columns16::<8>(&x), &mut descent);
                assert_eq!(finite, x.iter().all(|v| v.is_finite()), "case {case}");
                for (v, l) in got_l.iter_mut().enumerate() {
                    transpose_codes(&descent.lv.map(|row| row[v]), l);
                }
                found.map(|v| lanes(v))
            };
            for (s, sub) in x.chunks_exact(16).enumerate() {
                let (v, j) = (s / 8, s % 8);
                let mut want_l = [0i8; 16];
                let want = q2k_q3k::make_q3_quants(sub, &mut want_l);
                assert_eq!(got[v][j].to_bits(), want.to_bits(), "case {case} sub-block {s}: {sub:?}");
                assert_eq!(got_l[v][16 * j..16 * j + 16], want_l, "case {case} sub-block {s}: {sub:?}");
            }
        }
    }

    /// `q3_k_head_lanes` against the scalar `q3_k_head` and the scales `finish_q3_k` reads
    /// back: ties of |s| with either sign (the first one is kept: a mutant keeping the last
    /// fails), NaN and infinite scales, ±0, all-zero heads, random and extreme magnitudes.
    #[test]
    fn q3_k_head_lanes_matches_q3_k_head() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("f16c") {
            return;
        }
        let mut next = uniform();
        let specials = [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40, 3e38, -3e38, 1.0, -1.0];
        for case in 0..20_000 {
            let magnitude = [1.0, 1e-3, 1e-30, 1e30, 1e-42][case % 5];
            let mut scales = [0f32; 16];
            for (j, s) in scales.iter_mut().enumerate() {
                *s = match (case / 5 + j) % 7 {
                    0 if case % 3 == 0 => specials[(case + j) % specials.len()],
                    // Coarse values: equal magnitudes of either sign are common.
                    1 | 2 => ((next() * 8.0).floor() - 4.0) * magnitude,
                    _ => (next() - 0.5) * magnitude,
                };
            }
            if case % 11 == 0 {
                scales = [0.0; 16];
            }
            let (mut want, mut got) = ([0u8; Q3_K_BYTES], [0u8; Q3_K_BYTES]);
            q2k_q3k::q3_k_head(&scales, &mut want);
            let halves = [0, 1].map(|h| {
                let mut v = [0f32; 8];
                v.copy_from_slice(&scales[8 * h..8 * h + 8]);
                v
            });
            // SAFETY: AVX2 and F16C were detected above.
            let d = unsafe {
                let d = q3_k_head_lanes(halves.map(|v| _mm256_loadu_ps(v.as_ptr())), &mut got);
                d.map(|v| lanes(v))
            };
            assert_eq!(got[96..110], want[96..110], "case {case}: {scales:?}");
            let d_all = f16_to_f32(u16::from_le_bytes([want[108], want[109]]));
            for j in 0..16 {
                let want_d = d_all * (q2k_q3k::q3_k_scale(j, &want[96..108]) as i32 - 32) as f32;
                assert_eq!(d[j / 8][j % 8].to_bits(), want_d.to_bits(), "case {case} scale {j}: {scales:?}");
            }
        }
    }

    /// `quantize_q3_k` reports a NaN or infinity anywhere: in the super-blocks searched in
    /// vectors and in the scalar remainder (3 super-blocks: 2 + 1).
    #[test]
    fn quantize_q3_k_reports_non_finite_values() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("f16c") {
            return;
        }
        let mut next = uniform();
        let x: Vec<f32> = (0..768).map(|_| next() - 0.5).collect();
        let mut y = vec![0u8; 3 * Q3_K_BYTES];
        // SAFETY: AVX2 and F16C were detected above.
        assert!(unsafe { quantize_q3_k(&x, &mut y) });
        for at in [0, 17, 255, 256, 511, 512, 700, 767] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = x.clone();
                x[at] = bad;
                // SAFETY: AVX2 and F16C were detected above.
                assert!(!unsafe { quantize_q3_k(&x, &mut y) }, "{bad} at {at}");
            }
        }
    }
}
