//! The forward's elementwise and row operations: RMSNorm, softmax, SiLU.

/// RMSNorm of each row of `x` (rows of `g.len()` values), scaled by `g`: the mean square in
/// f64, then `x / sqrt(ms + eps) · g` in f32, as transformers computes it.
pub fn rmsnorm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let n = g.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let ms = x.iter().map(|v| (v * v) as f64).sum::<f64>() / n as f64;
        let r = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, x), g) in o.iter_mut().zip(x).zip(g) {
            *o = x * r * g;
        }
    }
    out
}

/// Softmax in place.
pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// SwiGLU of one gate/up pair: `silu(g) · u`.
pub fn swiglu(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}
