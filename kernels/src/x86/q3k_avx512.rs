//! Q3_K without importance weights on AVX-512 (F + BW), bit-exact: the AVX2 kernel's
//! `make_q3_quants` descent (`q2k_q3k_avx2`) with a whole super-block's 16 sub-blocks in one
//! vector, one sub-block per lane, every step masked as the reference decides it. A vector of
//! 16 runs on while any of its lanes still changes, but its steps cost about the instructions
//! of an 8-lane step (masks instead of blends; on Zen 4 the 512-bit operations are split in
//! two, yet the later passes are bound by instructions, not by the FP pipes): 3.1 against
//! 2.6 GB/s with the AVX2 kernel's loop structure, 4.5–4.8 with the loop below. The
//! transposes, the head and the packing are the AVX2 kernel's, on the vectors' halves.

use std::arch::x86_64::*;

use super::kquants_avx2::transpose_codes;
use super::q2k_q3k_avx2::{columns16_q3, pack_q3_k_codes, q3_k_head_lanes};
use crate::scalar::q2k_q3k::Q3_K_BYTES;

/// Super-blocks per call, one vector each, their descents interleaved. The descent's first
/// pass runs without branches, so each vector's steps form one dependency chain (the division
/// and the sums' update, ~40 cycles a step): 4 chains side by side gave 4.5–4.8 GB/s against
/// 3.6 for 2 (8: 3.8; 6 leaves the bench rows' last 4 super-blocks to the remainder path).
/// [`make_q3_quants_z`]'s descent is written for exactly this many.
const V: usize = 4;
const _: () = assert!(V == 4, "make_q3_quants_z runs exactly four vectors");

#[target_feature(enable = "avx512f")]
fn splat(v: f32) -> __m512 {
    _mm512_set1_ps(v)
}

/// `nearest_int` on 16 lanes: the 1.5·2^23 trick, so the same bits as the reference.
#[target_feature(enable = "avx512f")]
fn nearest_int(f: __m512) -> __m512i {
    let val = _mm512_castps_si512(_mm512_add_ps(f, splat(12_582_912.0)));
    _mm512_sub_epi32(_mm512_and_si512(val, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x0040_0000))
}

/// The two 8-lane halves as one vector (lanes 0..8 from `lo`).
#[target_feature(enable = "avx512f")]
fn join(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi)))
}

/// The two 8-lane halves of a vector.
#[target_feature(enable = "avx512f")]
fn halves(v: __m512) -> [__m256; 2] {
    [_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))]
}

/// The per-value state of [`make_q3_quants_z`]'s descent, as `q2k_q3k_avx2`'s `Descent`:
/// every entry is written before it is read in each call, so it is made once per row.
struct Descent<const V: usize> {
    lv: [[__m512i; V]; 16],
    tlx: [[__m512; V]; 16],
    tl2: [[__m512; V]; 16],
}

impl<const V: usize> Descent<V> {
    #[target_feature(enable = "avx512f")]
    fn new() -> Self {
        let zero = _mm512_setzero_ps();
        Descent { lv: [[_mm512_setzero_si512(); V]; 16], tlx: [[zero; V]; 16], tl2: [[zero; V]; 16] }
    }
}

/// `make_q3_quants(16, 4, x, L, true)` for 16 sub-blocks per vector, [`V`] vectors
/// (`x[i][v]` is element i of sub-blocks 16v..16v+16). Returns the scales (lane j of vector v:
/// sub-block 16v + j) and whether every value was finite, and leaves the codes in the same
/// lanes (offset by 4; 0 for an all-zero sub-block) in `state.lv[i][v]`. The steps and the
/// early stop are those of the AVX2 kernel's `make_q3_quants_x` (see there for why they are
/// exact).
#[target_feature(enable = "avx512f,avx512bw")]
fn make_q3_quants_z(x: &[[__m512; V]; 16], state: &mut Descent<V>) -> ([__m512; V], bool) {
    let zero = _mm512_setzero_ps();
    let (mut max, mut amax) = ([zero; V], [zero; V]);
    let mut finite: __mmask16 = 0xFFFF;
    for row in x {
        for v in 0..V {
            let ax = _mm512_abs_ps(row[v]);
            finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, splat(f32::INFINITY));
            let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ax, amax[v]);
            amax[v] = _mm512_mask_mov_ps(amax[v], gt, ax);
            max[v] = _mm512_mask_mov_ps(max[v], gt, row[v]);
        }
    }
    let codes = |q: __m512i| _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(3)), _mm512_set1_epi32(-4));
    // Codes offset by nearest_int's bias, as in the AVX2 kernel.
    const BIAS: i32 = 0x0040_0000;
    let bias = _mm512_set1_epi32(BIAS);
    let biased_codes = |f: __m512| {
        let raw = _mm512_and_si512(
            _mm512_castps_si512(_mm512_add_ps(f, splat(12_582_912.0))),
            _mm512_set1_epi32(0x007f_ffff),
        );
        _mm512_max_epi32(_mm512_min_epi32(raw, _mm512_set1_epi32(BIAS + 3)), _mm512_set1_epi32(BIAS - 4))
    };
    let Descent { lv, tlx, tl2 } = state;
    let (mut sumlx, mut suml2) = ([zero; V], [zero; V]);
    for v in 0..V {
        let iscale = _mm512_div_ps(splat(-4.0), max[v]);
        for i in 0..16 {
            let q = codes(nearest_int(_mm512_mul_ps(iscale, x[i][v])));
            lv[i][v] = _mm512_add_epi32(q, bias);
            let w = _mm512_mul_ps(x[i][v], x[i][v]);
            let lf = _mm512_cvtepi32_ps(q);
            tlx[i][v] = _mm512_mul_ps(_mm512_mul_ps(w, x[i][v]), lf);
            tl2[i][v] = _mm512_mul_ps(_mm512_mul_ps(w, lf), lf);
            sumlx[v] = _mm512_add_ps(sumlx[v], tlx[i][v]);
            suml2[v] = _mm512_add_ps(suml2[v], tl2[i][v]);
        }
    }
    // Each vector runs to 16 positions past its last accepted step (from position 15 if
    // none), never past position 79; from the second pass on, a step where no lane would try
    // a new code ends at the test (`$branch`).
    // One step of vector v at position t: the reference's step, masked, on the sums `sx`, `s2`.
    // Each vector's sums and end are separate locals (not arrays indexed by v), which keeps
    // them in registers and the loop free of index arithmetic: 3.42 against 3.14 GB/s.
    macro_rules! step {
        ($t:expr, $v:expr, $sx:ident, $s2:ident, $end:ident, $branch:expr) => {{
            let (t, v) = ($t, $v);
            let i = t % 16;
            let xi = x[i][v];
            let slx = _mm512_sub_ps($sx, tlx[i][v]);
            let sl2 = _mm512_sub_ps($s2, tl2[i][v]);
            let new_l = biased_codes(_mm512_div_ps(_mm512_mul_ps(xi, sl2), slx));
            let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(slx, zero);
            let tries = _mm512_mask_cmpneq_epi32_mask(positive, new_l, lv[i][v]);
            if !$branch || tries != 0 {
                let nf = _mm512_cvtepi32_ps(_mm512_sub_epi32(new_l, bias));
                let w = _mm512_mul_ps(xi, xi);
                let (nlx, nl2) = (_mm512_mul_ps(_mm512_mul_ps(w, xi), nf), _mm512_mul_ps(_mm512_mul_ps(w, nf), nf));
                let slx_new = _mm512_add_ps(slx, nlx);
                let sl2_new = _mm512_add_ps(sl2, nl2);
                let gain = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
                    tries,
                    _mm512_mul_ps(_mm512_mul_ps(slx_new, slx_new), $s2),
                    _mm512_mul_ps(_mm512_mul_ps($sx, $sx), sl2_new),
                );
                let accept = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(gain, sl2_new, zero);
                lv[i][v] = _mm512_mask_mov_epi32(lv[i][v], accept, new_l);
                tlx[i][v] = _mm512_mask_mov_ps(tlx[i][v], accept, nlx);
                tl2[i][v] = _mm512_mask_mov_ps(tl2[i][v], accept, nl2);
                $sx = _mm512_mask_mov_ps($sx, accept, slx_new);
                $s2 = _mm512_mask_mov_ps($s2, accept, sl2_new);
                $end = if accept != 0 { t + 16 } else { $end };
            }
        }};
    }
    let [mut sx0, mut sx1, mut sx2, mut sx3] = sumlx;
    let [mut s20, mut s21, mut s22, mut s23] = suml2;
    let (mut end0, mut end1, mut end2, mut end3) = (15usize, 15usize, 15usize, 15usize);
    // The first pass without the skip: a fifth to a third of its steps try a code in some
    // lane, too many for the branch to be predicted.
    for t in 0..16 {
        step!(t, 0, sx0, s20, end0, false);
        step!(t, 1, sx1, s21, end1, false);
        step!(t, 2, sx2, s22, end2, false);
        step!(t, 3, sx3, s23, end3, false);
    }
    for t in 16..80 {
        if t <= end0 {
            step!(t, 0, sx0, s20, end0, true);
        }
        if t <= end1 {
            step!(t, 1, sx1, s21, end1, true);
        }
        if t <= end2 {
            step!(t, 2, sx2, s22, end2, true);
        }
        if t <= end3 {
            step!(t, 3, sx3, s23, end3, true);
        }
        if t >= end0.max(end1).max(end2.max(end3)) {
            break;
        }
    }
    let (sumlx, suml2) = ([sx0, sx1, sx2, sx3], [s20, s21, s22, s23]);
    let mut out = [zero; V];
    for v in 0..V {
        let large = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(amax[v], splat(1e-15));
        for row in lv.iter_mut() {
            row[v] = _mm512_maskz_sub_epi32(large, row[v], _mm512_set1_epi32(BIAS - 4));
        }
        let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(suml2[v], zero);
        out[v] = _mm512_maskz_div_ps(positive & large, sumlx[v], suml2[v]);
    }
    (out, finite == 0xFFFF)
}

/// `V` super-blocks' values by sub-block: `out[i][v]` lane j is element i of sub-block j of
/// super-block v (the AVX2 kernel's transpose, its halves joined).
#[target_feature(enable = "avx512f,avx2")]
fn columns<const V: usize>(x: &[f32]) -> [[__m512; V]; 16] {
    assert!(x.len() >= 256 * V);
    let mut out = [[_mm512_setzero_ps(); V]; 16];
    for v in 0..V {
        let h = columns16_q3::<2>(&x[256 * v..256 * v + 256]);
        for i in 0..16 {
            out[i][v] = join(h[i][0], h[i][1]);
        }
    }
    out
}

/// [`V`] Q3_K super-blocks without importance weights.
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
fn q3_k_superblocks(x: &[f32], y: &mut [u8], state: &mut Descent<V>) -> bool {
    assert!(y.len() >= Q3_K_BYTES * V);
    let zero = _mm512_setzero_ps();
    let xv = columns::<V>(x);
    let (found, finite) = make_q3_quants_z(&xv, state);
    for s in 0..V {
        let b = &mut y[Q3_K_BYTES * s..Q3_K_BYTES * (s + 1)];
        let d = q3_k_head_lanes(halves(found[s]), b);
        let d = join(d[0], d[1]);
        // The final codes as `finish_q3_k` forms them: sub-blocks whose scale is 0 keep the
        // search's codes.
        let keep = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(d, zero);
        let mut q = [[_mm256_setzero_si256(); 16]; 2];
        for i in 0..16 {
            let c = nearest_int(_mm512_div_ps(xv[i][s], d));
            let c = _mm512_add_epi32(
                _mm512_max_epi32(_mm512_min_epi32(c, _mm512_set1_epi32(3)), _mm512_set1_epi32(-4)),
                _mm512_set1_epi32(4),
            );
            let c = _mm512_mask_mov_epi32(c, keep, state.lv[i][s]);
            q[0][i] = _mm512_castsi512_si256(c);
            q[1][i] = _mm512_extracti64x4_epi64::<1>(c);
        }
        let mut l = [0i8; 256];
        for (h, half) in l.chunks_exact_mut(128).enumerate() {
            transpose_codes(&q[h], half.try_into().expect("128 codes"));
        }
        pack_q3_k_codes(&l, b);
    }
    finite
}

/// Q3_K without importance weights (`quantize_row_q3_K_ref`). Returns whether every value
/// was finite (the blocks are written either way; only a `true` result makes them valid).
#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
pub fn quantize_q3_k(x: &[f32], y: &mut [u8]) -> bool {
    let mut state = Descent::new();
    let mut xs = x.chunks_exact(256 * V);
    let mut ys = y.chunks_exact_mut(Q3_K_BYTES * V);
    let mut finite = true;
    for (x, y) in (&mut xs).zip(&mut ys) {
        finite &= q3_k_superblocks(x, y, &mut state);
    }
    // Fewer than V super-blocks left: the AVX2 kernel's (2 at a time, then scalar).
    finite & super::q2k_q3k_avx2::quantize_q3_k(xs.remainder(), ys.into_remainder())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this CPU runs the kernels here (the AVX-512 table's features).
    fn supported() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("f16c")
    }

    /// `make_q3_quants_z` against the scalar `make_q3_quants`, sub-block by sub-block, on the
    /// AVX2 kernel's test data: values on rounding ties, zeros and all-zero sub-blocks, one
    /// outlier among values 10^6 smaller, scales from subnormal to 3e38; one state for all
    /// cases, as a row's super-blocks share it.
    #[test]
    fn make_q3_quants_z_matches_make_q3_quants() {
        if !supported() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x2545_F491_4F6C_DD1D);
        // SAFETY: AVX-512 F and BW, AVX2 and F16C were detected above.
        let mut descent = unsafe { Descent::<V>::new() };
        let scales = [0.02, 1.0, 1e-3, 1e-15, 2e-15, 1e-20, 1e-40, 1e15, 1e19, 3e38, 0.0, 7.0];
        for case in 0..6_000 {
            let mut x = [0f32; 256 * V];
            for (s, sub) in x.chunks_exact_mut(16).enumerate() {
                let kind = (case + 7 * s) % 6;
                let scale = scales[(case * 5 + s) % scales.len()];
                for v in sub.iter_mut() {
                    *v = match kind {
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
            let mut got_l = [[0i8; 256]; V];
            let mut got = [[0f32; 16]; V];
            // SAFETY: AVX-512 F and BW, AVX2 and F16C were detected above.
            unsafe {
                let (found, finite) = make_q3_quants_z(&columns::<V>(&x), &mut descent);
                assert_eq!(finite, x.iter().all(|v| v.is_finite()), "case {case}");
                for v in 0..V {
                    _mm512_storeu_ps(got[v].as_mut_ptr(), found[v]);
                    for (h, half) in got_l[v].chunks_exact_mut(128).enumerate() {
                        let q = descent.lv.map(|row| {
                            let r = row[v];
                            if h == 0 { _mm512_castsi512_si256(r) } else { _mm512_extracti64x4_epi64::<1>(r) }
                        });
                        transpose_codes(&q, half.try_into().expect("128 codes"));
                    }
                }
            }
            for (s, sub) in x.chunks_exact(16).enumerate() {
                let (v, j) = (s / 16, s % 16);
                let mut want_l = [0i8; 16];
                let want = crate::scalar::q2k_q3k::make_q3_quants(sub, &mut want_l);
                assert_eq!(got[v][j].to_bits(), want.to_bits(), "case {case} sub-block {s}: {sub:?}");
                assert_eq!(got_l[v][16 * j..16 * j + 16], want_l, "case {case} sub-block {s}: {sub:?}");
            }
        }
    }

    /// NaN and ±∞ are reported wherever they are: in any of the [`V`] super-blocks of the
    /// vector part and in the remainder (the AVX2 kernel's).
    #[test]
    fn quantize_q3_k_reports_non_finite_values() {
        if !supported() {
            return;
        }
        let mut next = crate::x86::tests::xorshift_uniform(0x9E37_79B9_7F4A_7C15);
        let n = 256 * (V + 1);
        let x: Vec<f32> = (0..n).map(|_| next() - 0.5).collect();
        let mut y = vec![0u8; (V + 1) * Q3_K_BYTES];
        // SAFETY: AVX-512 F and BW, AVX2 and F16C were detected above.
        assert!(unsafe { quantize_q3_k(&x, &mut y) });
        for at in [0, 17, 255, 256, 511, 600, 767, 768, 1000, 1023, 1024, n - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = x.clone();
                x[at] = bad;
                // SAFETY: as above.
                assert!(!unsafe { quantize_q3_k(&x, &mut y) }, "{bad} at {at}");
            }
        }
    }
}
