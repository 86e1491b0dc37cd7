//! Criterion benchmarks: single-thread throughput of every kernel on every backend this CPU
//! runs, in bytes of f32 data (`cargo bench -p moeq-kernels`). `moeq bench kernels` prints
//! the same measurements as a table.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moeq_kernels::backend::first_non_finite;
use moeq_kernels::{QuantType, available};

/// 4 MiB of weight-like f32 values.
fn values() -> Vec<f32> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..(1 << 20))
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 997 == 0 { u * 20.0 } else { u * 0.02 }
        })
        .collect()
}

fn kernels(c: &mut Criterion) {
    let x = values();
    // Importance weights for rows of 4096 columns, as an imatrix gives them.
    let w: Vec<f32> = (0..4096).map(|i| if i % 61 == 0 { 0.0 } else { 0.1 + (i % 97) as f32 * 0.05 }).collect();
    // The NaN/infinity check every quantizer's input passes (dispatched on its own).
    let mut group = c.benchmark_group("checks");
    group.throughput(Throughput::Bytes((x.len() * 4) as u64));
    group.bench_function("first_non_finite", |bench| bench.iter(|| first_non_finite(std::hint::black_box(&x))));
    group.finish();
    for b in available() {
        let mut group = c.benchmark_group(b.name);
        group.throughput(Throughput::Bytes((x.len() * 4) as u64));
        group.sample_size(10);
        for ty in QuantType::ALL {
            let kernels = b.kernels(ty);
            let mut q = vec![0u8; ty.bytes_for(x.len())];
            if kernels.quantize.is_some() {
                group.bench_function(format!("quantize {}", ty.name()), |bench| {
                    bench.iter(|| b.quantize(ty, &x, &mut q).expect("finite values"))
                });
            }
            if kernels.quantize_weighted.is_some() {
                let mut qw = q.clone();
                group.bench_function(format!("quantize+imatrix {}", ty.name()), |bench| {
                    bench.iter(|| b.quantize_weighted(ty, &x, &mut qw, w.len(), &w).expect("finite values"))
                });
            }
            let mut y = vec![0f32; x.len()];
            group.bench_function(format!("dequantize {}", ty.name()), |bench| {
                bench.iter(|| b.dequantize(ty, &q, &mut y).expect("whole blocks"))
            });
        }
        let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let mut y = vec![0f32; x.len()];
        let mut h16 = vec![0u16; x.len()];
        group.bench_function("bf16 to f32", |bench| bench.iter(|| b.bf16_to_f32(&h, &mut y)));
        group.bench_function("f16 to f32", |bench| bench.iter(|| b.f16_to_f32(&h, &mut y)));
        group.bench_function("f32 to bf16", |bench| bench.iter(|| b.f32_to_bf16(&x, &mut h16)));
        group.bench_function("f32 to f16", |bench| bench.iter(|| b.f32_to_f16(&x, &mut h16)));
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
