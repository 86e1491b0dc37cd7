//! `moeq bench kernels`: single-thread throughput of every kernel on every backend this CPU
//! runs, in GB/s of f32 data, with the backend whose code each table entry runs; `moeq bench
//! dot`: the same for the forward's matrix products, in multiply-adds per second. Times are
//! the measuring thread's CPU time (on Linux), so that other processes sharing the cores do
//! not count; on an idle machine that is the wall time.

use std::time::{Duration, Instant};

use moeq_kernels::dot::{TileBackend, Tokens, dot_tile};
use moeq_kernels::{Backend, QuantType, available};

/// One measurement.
pub struct BenchRow {
    /// `Q8_0`, …, or `BF16`/`F16`/`MXFP4 (OpenAI)` for the conversions.
    pub ty: &'static str,
    /// The backend whose table was measured: `scalar`, `avx2`, `avx512`.
    pub backend: &'static str,
    /// The backend whose code that table runs for this operation (tables inherit entries).
    pub kernel: &'static str,
    /// `quantize`, `quantize+imatrix` (rows with importance weights), `dequantize`,
    /// `to f32` or `from f32`.
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

/// The CPU time the calling thread has used (Linux), else the time since an arbitrary start.
fn thread_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write; CLOCK_THREAD_CPUTIME_ID exists on Linux.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Best (thread CPU) time of `f` over repeated runs lasting at least `budget` of wall time
/// (at least two runs).
fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 2 || start.elapsed() < budget {
        let t = thread_time();
        f();
        best = best.min(thread_time().saturating_sub(t));
        runs += 1;
    }
    best.max(Duration::from_nanos(1))
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// Row width for the weighted quantizers (an imatrix has one weight per column).
const ROW: usize = 4096;

/// Deterministic importance weights for [`ROW`] columns: positive, spread over decades, some 0.
pub fn sample_weights() -> Vec<f32> {
    (0..ROW).map(|i| if i % 61 == 0 { 0.0 } else { (((i * 7919) % 1000) as f32 / 250.0).exp2() * 0.1 }).collect()
}

fn bench_backend(b: &Backend, x: &[f32], budget: Duration, only: &[QuantType], rows: &mut Vec<BenchRow>) {
    let f32_bytes = x.len() * 4;
    let weights = sample_weights();
    let mut push =
        |ty, kernel, op, t| rows.push(BenchRow { ty, backend: b.name, kernel, op, gbps: gbps(f32_bytes, t) });
    for ty in QuantType::ALL.into_iter().filter(|t| only.is_empty() || only.contains(t)) {
        let kernels = b.kernels(ty);
        let mut q = vec![0u8; ty.bytes_for(x.len())];
        if let Some(k) = kernels.quantize {
            let t = best_time(budget, || b.quantize(ty, x, &mut q).expect("finite sample data"));
            push(ty.name(), k.origin, "quantize", t);
        } else {
            // Types not quantized without weights: arbitrary (deterministic) codes, unless the
            // weighted quantizer below gives real ones.
            q.iter_mut().enumerate().for_each(|(i, v)| *v = (i * 37 % 251) as u8 & 0x3f);
        }
        if let Some(k) = kernels.quantize_weighted.filter(|_| x.len().is_multiple_of(ROW)) {
            let mut qw = vec![0u8; q.len()];
            let t =
                best_time(budget, || b.quantize_weighted(ty, x, &mut qw, ROW, &weights).expect("finite sample data"));
            push(ty.name(), k.origin, "quantize+imatrix", t);
            if kernels.quantize.is_none() {
                // Types quantized only with weights: dequantize their codes.
                q = qw;
            }
        }
        let mut y = vec![0f32; x.len()];
        let t = best_time(budget, || b.dequantize(ty, &q, &mut y).expect("whole blocks"));
        push(ty.name(), kernels.dequantize.origin, "dequantize", t);
    }
    if !only.is_empty() {
        return;
    }
    let c = &b.conversions;
    let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let mut y = vec![0f32; x.len()];
    let mut h16 = vec![0u16; x.len()];
    push("BF16", c.bf16_to_f32.origin, "to f32", best_time(budget, || b.bf16_to_f32(&h, &mut y)));
    push("BF16", c.f32_to_bf16.origin, "from f32", best_time(budget, || b.f32_to_bf16(x, &mut h16)));
    let h: Vec<u16> = x.iter().map(|v| half_bits(*v)).collect();
    push("F16", c.f16_to_f32.origin, "to f32", best_time(budget, || b.f16_to_f32(&h, &mut y)));
    push("F16", c.f32_to_f16.origin, "from f32", best_time(budget, || b.f32_to_f16(x, &mut h16)));
    let blocks: Vec<u8> = (0..x.len() / 2).map(|i| (i * 37 % 251) as u8).collect();
    let scales: Vec<u8> = (0..x.len() / 32).map(|i| 110 + (i % 20) as u8).collect();
    let t = best_time(budget, || b.openai_mxfp4_dequantize(&blocks, &scales, &mut y));
    push("MXFP4/OpenAI", c.openai_mxfp4_to_f32.origin, "to f32", t);
}

/// One `moeq bench dot` measurement.
pub struct DotRow {
    /// The [`TileBackend`]: `scalar`, `avx2` or `avx512`.
    pub backend: &'static str,
    /// Weight rows in the tile.
    pub rows: usize,
    /// Values per row and token.
    pub width: usize,
    /// Tokens multiplied with the tile.
    pub tokens: usize,
    /// 10⁹ multiply-adds per CPU-second of the measuring thread.
    pub gmacs: f64,
}

/// Weight rows per tile, as the forward decodes them (`forward::linear`).
const DOT_TILE_ROWS: usize = 60;

/// Single-thread throughput of [`dot_tile`], the forward's matrix product, on every
/// [`TileBackend`] this CPU runs: a tile of 60 rows of `width` values against 256 tokens (an
/// attention projection or the head over a 256-token chunk), 32 (an expert's share of them
/// with 4 of 32 experts per token) and 4, the tokens laid out once beforehand as the forward
/// does. The tokens (2.9 MB at width 2880 for 256) come from L3 as in use; the tile, just
/// decoded in use, stays in cache.
pub fn bench_dot(width: usize, budget: Duration) -> Vec<DotRow> {
    let width = width.max(1);
    let tile = sample_values(DOT_TILE_ROWS * width);
    let mut out = Vec::new();
    for backend in TileBackend::available() {
        for tokens in [256, 32, 4] {
            let xs = sample_values(tokens * width + 1)[1..].to_vec();
            let Some(t) = Tokens::with_backend(&xs, width, backend) else { continue };
            let mut y = vec![0.0f32; DOT_TILE_ROWS * tokens];
            let time = best_time(budget, || dot_tile(&tile, &t, &mut y));
            let macs = (DOT_TILE_ROWS * width * tokens) as f64;
            out.push(DotRow {
                backend: backend.name(),
                rows: DOT_TILE_ROWS,
                width,
                tokens,
                gmacs: macs / time.as_secs_f64() / 1e9,
            });
        }
    }
    out
}

/// f16 bits of a value of modest magnitude (bench input only; not ggml's rounding).
fn half_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 { sign as u16 } else { (sign | (exp.min(30) as u32) << 10 | (bits >> 13) & 0x3ff) as u16 }
}

/// Measures every kernel on `size` bytes of f32 data, on every backend; with `only` not empty,
/// only those block types' kernels (and no conversions).
pub fn bench_kernels(size: usize, budget: Duration, only: &[QuantType]) -> Vec<BenchRow> {
    let n = (size / 4 / 256).max(1) * 256;
    let x = sample_values(n);
    let mut rows = Vec::new();
    for b in available() {
        bench_backend(b, &x, budget, only, &mut rows);
    }
    rows
}
