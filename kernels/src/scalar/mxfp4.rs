//! MXFP4 in ggml's layout (`block_mxfp4 {e, qs[16]}`, element j in the low nibble of
//! `qs[j]`, element j+16 in the high nibble): ports of `quantize_row_mxfp4_ref` and
//! `dequantize_row_mxfp4`.

/// ggml's `kvalues_mxfp4`: twice the E2M1 value of each 4-bit code.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `GGML_E8M0_TO_FP32_HALF`: 2^(e-128), the scale of the doubled table.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    if e < 2 { f32::from_bits(0x0020_0000 << e) } else { f32::from_bits((e as u32 - 1) << 23) }
}

/// The shared exponent byte of a block whose largest magnitude is `amax`:
/// `floor(log2f(amax)) - 2 + 127`, or 0 for an all-zero block.
///
/// Blocks with `amax < 2^-125` make ggml's expression negative, which C converts to `u8`
/// with undefined behaviour (x86 wraps it to 0xFF.., a NaN scale that llama.cpp's validation
/// then rejects); moeq writes 0 for them instead.
#[inline]
pub fn shared_exponent(amax: f32) -> u8 {
    if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0).max(0.0) as u8 } else { 0 }
}

/// `best_index_mxfp4`: the code whose value is nearest to `x`; the first one wins ties.
#[inline]
pub fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// `quantize_row_mxfp4_ref`.
pub fn quantize(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(17)) {
        let mut amax = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let e = shared_exponent(amax);
        let d = e8m0_to_f32_half(e);
        b[0] = e;
        for j in 0..16 {
            b[1 + j] = best_index(x[j], d) | (best_index(x[16 + j], d) << 4);
        }
    }
}

/// `dequantize_row_mxfp4`.
pub fn dequantize(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(17).zip(y.chunks_exact_mut(32)) {
        let d = e8m0_to_f32_half(b[0]);
        for j in 0..16 {
            y[j] = KVALUES[(b[1 + j] & 0x0F) as usize] as f32 * d;
            y[j + 16] = KVALUES[(b[1 + j] >> 4) as usize] as f32 * d;
        }
    }
}
