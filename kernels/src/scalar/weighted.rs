//! Quantizers with importance weights (an imatrix): ports of ggml's `quantize_row_*_impl`,
//! what `ggml_quantize_chunk` (and so llama-quantize) runs when given `quant_weights`. They
//! work row by row: the legacy types weigh by the whole row's variance.

use super::common::{imatrix_weights, make_qp_quants, sum_x2};
use super::kquants::{self, KParams, make_qkx2_quants, make_qx_quants};
use crate::QuantType;
use crate::backend::Refusal;
use crate::convert::f32_to_f16;

/// Quantizes rows of `n_per_row` finite values with importance weights `qw` (one per column).
/// Q8_0, MXFP4, TQ1_0 and TQ2_0 ignore the weights, as ggml does. Only the i-quants can
/// refuse ([`Refusal::Degenerate`] where ggml aborts, the block counted from the start of `x`).
pub fn quantize_rows(ty: QuantType, x: &[f32], y: &mut [u8], n_per_row: usize, qw: &[f32]) -> Result<(), Refusal> {
    if super::iquants::is_iquant(ty) {
        return super::iquants::quantize_rows(&super::iq_search::Reference, ty, x, y, qw);
    }
    let row_bytes = ty.bytes_for(n_per_row);
    for (x, y) in x.chunks_exact(n_per_row).zip(y.chunks_exact_mut(row_bytes)) {
        match ty {
            QuantType::Q4_0 => legacy_row(x, y, qw, 8, 18),
            QuantType::Q5_0 => legacy_row(x, y, qw, 16, 22),
            QuantType::Q4_1 => affine_row(x, y, qw, 15, 20),
            QuantType::Q5_1 => affine_row(x, y, qw, 31, 24),
            QuantType::Q4_K => k_row(&kquants::Q4_K, x, y, qw),
            QuantType::Q5_K => k_row(&kquants::Q5_K, x, y, qw),
            QuantType::Q6_K => q6_k_row(x, y, qw),
            QuantType::Q2_K => super::q2k_q3k::quantize_q2_k_weighted(x, y, qw),
            QuantType::Q3_K => super::q2k_q3k::quantize_q3_k_weighted(x, y, qw),
            QuantType::IQ4_NL => super::iq4::quantize_iq4_nl(x, y, Some(qw)),
            QuantType::IQ4_XS => super::iq4::quantize_iq4_xs(x, y, Some(qw)),
            other => super::quantize(other, x, y)?,
        }
    }
    Ok(())
}

/// Packs 32 codes (j low nibble, j+16 high) into a block's payload; with `five_bit`, their
/// fifth bits first go to a 4-byte `qh`.
pub(crate) fn pack_codes(l: &[u8; 32], out: &mut [u8], five_bit: bool) {
    let mut qh = 0u32;
    let qs = if five_bit { 4 } else { 0 };
    for j in 0..16 {
        let (x0, x1) = (l[j], l[j + 16]);
        out[qs + j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    if five_bit {
        out[..4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `quantize_row_q4_0_impl` (`nmax` 8) and `quantize_row_q5_0_impl` (`nmax` 16).
fn legacy_row(x: &[f32], y: &mut [u8], qw: &[f32], nmax: i32, block_bytes: usize) {
    let sigma2 = sum_x2(x) / x.len() as f32;
    let (mut weight, mut l) = ([0f32; 32], [0i8; 32]);
    for ((xb, qw), b) in x.chunks_exact(32).zip(qw.chunks_exact(32)).zip(y.chunks_exact_mut(block_bytes)) {
        imatrix_weights(xb, qw, sigma2, &mut weight);
        let d = make_qx_quants(nmax, xb, &mut l, Some(&weight));
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        pack_codes(&l.map(|v| v as u8), &mut b[2..], nmax == 16);
    }
}

/// `quantize_row_q4_1_impl` (`nmax` 15) and `quantize_row_q5_1_impl` (`nmax` 31), whose
/// `make_qkx3_quants` is `make_qkx2_quants` when weights are given.
fn affine_row(x: &[f32], y: &mut [u8], qw: &[f32], nmax: i32, block_bytes: usize) {
    let sigma2 = sum_x2(x) / x.len() as f32;
    let (mut weight, mut l, mut laux) = ([0f32; 32], [0u8; 32], [0u8; 32]);
    for ((xb, qw), b) in x.chunks_exact(32).zip(qw.chunks_exact(32)).zip(y.chunks_exact_mut(block_bytes)) {
        imatrix_weights(xb, qw, sigma2, &mut weight);
        let (d, the_min) = make_qkx2_quants(nmax, xb, &weight, &mut l, &mut laux, -0.9, 0.05, 36, false);
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(-the_min).to_le_bytes());
        pack_codes(&l, &mut b[4..], nmax == 31);
    }
}

/// `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl`.
pub(crate) fn k_row(p: &KParams, x: &[f32], y: &mut [u8], qw: &[f32]) {
    let (mut weights, mut laux, mut l) = ([0f32; 32], [0u8; 32], [0u8; 256]);
    for ((x, qw), b) in x.chunks_exact(256).zip(qw.chunks_exact(256)).zip(y.chunks_exact_mut(p.block_bytes)) {
        let sigma2 = 2.0 * sum_x2(x) / 256.0;
        let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            imatrix_weights(xs, &qw[32 * j..32 * j + 32], sigma2, &mut weights);
            let mut sumw = 0.0f32;
            for &w in &weights {
                sumw += w;
            }
            sw[j] = sumw;
            (scales[j], mins[j]) =
                make_qkx2_quants(p.nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, -0.9, 0.05, 36, false);
        }
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
        let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
        kquants::pack_and_requantize(p, x, &ls.map(|v| v.min(63)), &lm.map(|v| v.min(63)), d_block, m_block, &mut l, b);
    }
}

/// `quantize_row_q6_K_impl`: `make_qx_quants` weighted by the imatrix itself.
pub(crate) fn q6_k_row(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let (mut l, mut scales) = ([0i8; 256], [0f32; 16]);
    for ((x, qw), b) in x.chunks_exact(256).zip(qw.chunks_exact(256)).zip(y.chunks_exact_mut(210)) {
        for (ib, scale) in scales.iter_mut().enumerate() {
            let r = 16 * ib..16 * ib + 16;
            *scale = make_qx_quants(32, &x[r.clone()], &mut l[r.clone()], Some(&qw[r]));
        }
        kquants::finish_q6_k(x, &scales, &mut l, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::legacy;

    #[test]
    fn q8_0_ignores_weights() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (vec![0u8; 68], vec![0u8; 68]);
        quantize_rows(QuantType::Q8_0, &x, &mut a, 64, &[2.0; 64]).unwrap();
        legacy::quantize_q8_0(&x, &mut b);
        assert_eq!(a, b);
    }
}
