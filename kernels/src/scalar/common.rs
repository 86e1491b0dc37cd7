//! What several of ggml's quantizers share (`ggml-quants.c`): `nearest_int`, `MAX`,
//! `GROUP_MAX_EPS`, the sum of squares and the per-value importance weights they derive
//! from an imatrix, and `make_qp_quants`. One implementation each, in ggml's order of float
//! operations.

/// ggml's `GROUP_MAX_EPS`: a (sub-)block whose largest value is below it quantizes to zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int`: round half to even through the 1.5·2^23 trick (exactly ggml's bits, also
/// outside the range it asserts).
#[inline]
pub fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `MAX(a, b)`: `a > b ? a : b` (which differs from `f32::max` on NaN).
#[inline]
pub fn c_max(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// `Σ x²`, summed in order.
#[inline]
pub fn sum_x2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// The weight of each value from its importance weight: `weight[i] = qw[i]·√(sigma2 + x[i]²)`
/// (`sigma2` is each quantizer's own multiple of the mean square).
#[inline]
pub fn imatrix_weights(x: &[f32], qw: &[f32], sigma2: f32, weight: &mut [f32]) {
    for ((w, &q), &v) in weight.iter_mut().zip(qw).zip(x) {
        *w = q * (sigma2 + v * v).sqrt();
    }
}

/// [`imatrix_weights`] with importance weights, else `x²` (the i-quants' and IQ4's weights).
#[inline]
pub fn value_weights(x: &[f32], qw: Option<&[f32]>, sigma2: f32, weight: &mut [f32]) {
    match qw {
        Some(qw) => imatrix_weights(x, qw, sigma2, weight),
        None => {
            for (w, &v) in weight.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
}

/// `make_qp_quants`: quantization of non-negative values (a super-block's scales or mins) to
/// codes `0..=nmax` with weights `qw`, the best of 9 candidate scales refined by up to five
/// passes of coordinate descent; the codes go to `l` (same length as `x`, as ggml's
/// `uint8_t`), the scale is returned (0 when every value is below [`GROUP_MAX_EPS`]).
pub fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = c_max(max, v);
    }
    if max < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        let w = qw[i];
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..n {
            let w = qw[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 3.7].map(nearest_int), [0, 2, 2, 0, -2, 2, 4]);
    }
}
