//! `moeq bench kernels`: single-thread throughput of every kernel on every backend this CPU
//! runs, in GB/s of f32 data.

use std::time::{Duration, Instant};

use moeq_kernels::{Backend, QuantType, available};

/// One measurement.
pub struct BenchRow {
    /// `Q8_0`, …, or `BF16` for the bf16 → f32 conversion.
    pub ty: &'static str,
    /// `scalar`, `avx2`, `avx512`.
    pub backend: &'static str,
    /// `quantize`, `quantize+imatrix` (with importance weights, rows of 4096), `dequantize` or
    /// `convert`.
    pub op: &'static str,
    /// Gigabytes of f32 data per second (input for quantize, output otherwise).
    pub gbps: f64,
}

/// Deterministic weight-like values: roughly normal, with occasional outliers.
pub fn sample_values(n: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|i| {
            let g = (0..4).map(|_| uniform()).sum::<f32>() - 2.0;
            if i % 997 == 0 { g * 20.0 } else { g * 0.02 }
        })
        .collect()
}

/// Best time of `f` over repeated runs lasting at least `budget` (at least two runs).
fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 2 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// Deterministic positive importance weights for rows of `n` columns (some zero, as in real
/// imatrices).
fn sample_weights(n: usize) -> Vec<f32> {
    (0..n).map(|i| if i % 29 == 0 { 0.0 } else { 0.5 + ((i * 7919) % 1000) as f32 / 250.0 }).collect()
}

/// Row width for the importance-weighted rows.
const WEIGHTED_ROW: usize = 4096;

fn bench_backend(b: &Backend, x: &[f32], budget: Duration, rows: &mut Vec<BenchRow>) {
    let f32_bytes = x.len() * 4;
    let n_per_row = if x.len().is_multiple_of(WEIGHTED_ROW) { WEIGHTED_ROW } else { x.len() };
    let w = sample_weights(n_per_row);
    for ty in QuantType::ALL {
        let mut q = vec![0u8; ty.bytes_for(x.len())];
        if ty.can_quantize() {
            if !ty.needs_importance() {
                let t = best_time(budget, || b.quantize(ty, x, &mut q).expect("finite sample data"));
                rows.push(BenchRow { ty: ty.name(), backend: b.name, op: "quantize", gbps: gbps(f32_bytes, t) });
            }
            // Types whose bytes depend on importance weights, quantized with an imatrix row.
            let weighted = !matches!(ty, QuantType::Q8_0 | QuantType::MXFP4 | QuantType::TQ1_0 | QuantType::TQ2_0);
            if weighted {
                let mut qw = vec![0u8; q.len()];
                let t = best_time(budget, || {
                    b.quantize_weighted(ty, x, &mut qw, n_per_row, &w).expect("finite sample data")
                });
                rows.push(BenchRow {
                    ty: ty.name(),
                    backend: b.name,
                    op: "quantize+imatrix",
                    gbps: gbps(f32_bytes, t),
                });
                if ty.needs_importance() {
                    q = qw;
                }
            }
        } else {
            // Dequantize-only types: bench on arbitrary (deterministic) codes.
            q.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 37 % 251) as u8 & 0x3f);
        }
        let mut y = vec![0f32; x.len()];
        let t = best_time(budget, || b.dequantize(ty, &q, &mut y).expect("whole blocks"));
        rows.push(BenchRow { ty: ty.name(), backend: b.name, op: "dequantize", gbps: gbps(f32_bytes, t) });
    }
    let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let mut y = vec![0f32; x.len()];
    let t = best_time(budget, || b.bf16_to_f32(&h, &mut y));
    rows.push(BenchRow { ty: "BF16", backend: b.name, op: "convert", gbps: gbps(f32_bytes, t) });
}

/// Measures every kernel on `size` bytes of f32 data, on every backend.
pub fn bench_kernels(size: usize, budget: Duration) -> Vec<BenchRow> {
    let n = (size / 4 / 256).max(1) * 256;
    let x = sample_values(n);
    let mut rows = Vec::new();
    for b in available() {
        bench_backend(b, &x, budget, &mut rows);
    }
    rows
}
