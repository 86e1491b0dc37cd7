//! Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: ports of ggml's `quantize_row_*_ref` and `dequantize_row_*`,
//! operation for operation (f32 arithmetic in the same order, the same rounding).

use crate::convert::{f16_to_f32, f32_to_f16};

/// C's float → integer conversion as x86-64 compilers emit it (`cvttss2si`): truncation
/// toward zero, and 0x8000_0000 ("integer indefinite") for NaN and out-of-range values.
/// ggml's `(int8_t)` / `(uint8_t)` casts then keep the low byte. Degenerate blocks (all
/// values subnormal, so `1/d` is infinite) depend on this.
#[inline]
pub fn c_int(v: f32) -> i32 {
    if v > -2_147_483_648.0 && v < 2_147_483_648.0 { v as i32 } else { i32::MIN }
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

fn get_f16(block: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// The element of largest magnitude, sign kept; the first one wins ties.
fn signed_max(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `quantize_row_q8_0_ref`.
pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for (q, &v) in b[2..].iter_mut().zip(x) {
            *q = c_int((v * id).round()) as u8;
        }
    }
}

/// `dequantize_row_q8_0`.
pub fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(b, 0);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = (q as i8) as f32 * d;
        }
    }
}

/// `quantize_row_q4_0_ref`.
pub fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let d = signed_max(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[16 + j] * id;
            let q0 = (c_int(x0 + 8.5) as i8).min(15) as u8;
            let q1 = (c_int(x1 + 8.5) as i8).min(15) as u8;
            b[2 + j] = q0 | (q1 << 4);
        }
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize_q4_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(b, 0);
        for j in 0..16 {
            y[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `quantize_row_q4_1_ref`.
pub fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(20)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[16 + j] - min) * id;
            let q0 = (c_int(x0 + 0.5) as i8).min(15) as u8;
            let q1 = (c_int(x1 + 0.5) as i8).min(15) as u8;
            b[4 + j] = q0 | (q1 << 4);
        }
    }
}

/// `dequantize_row_q4_1`.
pub fn dequantize_q4_1(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(20).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(b, 0);
        let m = get_f16(b, 2);
        for j in 0..16 {
            y[j] = (b[4 + j] & 0x0F) as f32 * d + m;
            y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
        }
    }
}

/// `quantize_row_q5_0_ref`.
pub fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(22)) {
        let d = signed_max(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[16 + j] * id;
            let q0 = (c_int(x0 + 16.5) as i8).min(31) as u8;
            let q1 = (c_int(x1 + 16.5) as i8).min(31) as u8;
            b[6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `dequantize_row_q5_0`.
pub fn dequantize_q5_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(22).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((b[6 + j] & 0x0F) | xh0) as i32 - 16;
            let x1 = ((b[6 + j] >> 4) | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

/// `quantize_row_q5_1_ref`.
pub fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    for (x, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(24)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[16 + j] - min) * id;
            let q0 = c_int(x0 + 0.5) as u8;
            let q1 = c_int(x1 + 0.5) as u8;
            b[8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `dequantize_row_q5_1`.
pub fn dequantize_q5_1(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(24).zip(y.chunks_exact_mut(32)) {
        let d = get_f16(b, 0);
        let m = get_f16(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..16 {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((b[8 + j] & 0x0F) | xh0) as f32 * d + m;
            y[j + 16] = ((b[8 + j] >> 4) | xh1) as f32 * d + m;
        }
    }
}
