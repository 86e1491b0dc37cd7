//! Every SIMD backend this CPU runs equals the scalar reference byte for byte, on random data
//! and on the edge cases that break careless SIMD (ties, ±0, subnormals, huge values,
//! outliers); non-finite input is refused.

use moeq_kernels::backend::SCALAR;
use moeq_kernels::{Backend, KernelError, QuantType, available};
use proptest::prelude::*;

mod iquants;

fn simd_backends() -> Vec<&'static Backend> {
    available().into_iter().filter(|b| b.name != "scalar").collect()
}

/// The types these generic tests quantize (the i-quants have their own, in `iquants`).
fn quantizable() -> Vec<QuantType> {
    QuantType::ALL.into_iter().filter(|t| t.can_quantize() && !iquants::IQUANTS.contains(t)).collect()
}

/// Asserts every backend quantizes `x` (and dequantizes the result) like the scalar one, and
/// quantizes it with importance weights like the scalar one (rows of 1024 values, weights
/// derived from the data: some zero, some tiny, some huge).
#[track_caller]
fn check_all(ty: QuantType, x: &[f32]) {
    let n = x.len() / 256 * 256;
    let weights: Vec<f32> = (0..1024)
        .map(|i| match (i * 7 + x.len()) % 13 {
            0 => 0.0,
            1 => 1e-30,
            2 => 1e12,
            k => k as f32 * 0.37,
        })
        .collect();
    check_all_weighted(ty, &x[..n], &weights);
}

/// [`check_all`] with the given weights (one per column of rows of `weights.len()` values).
#[track_caller]
fn check_all_weighted(ty: QuantType, x: &[f32], weights: &[f32]) {
    let n = x.len() / ty.block_size() * ty.block_size();
    let x = &x[..n];
    let mut want = vec![0u8; ty.bytes_for(n)];
    SCALAR.quantize(ty, x, &mut want).unwrap();
    let mut want_f = vec![0f32; n];
    SCALAR.dequantize(ty, &want, &mut want_f).unwrap();
    let rows = n - n % weights.len();
    let mut want_w = vec![0u8; ty.bytes_for(rows)];
    SCALAR.quantize_weighted(ty, &x[..rows], &mut want_w, weights.len(), weights).unwrap();
    let first_difference = |want: &[u8], got: &[u8]| {
        want.iter().zip(got).position(|(a, b)| a != b).map(|i| {
            let block = i / ty.block_bytes();
            let xs = &x[block * ty.block_size()..(block + 1) * ty.block_size()];
            format!("block {block} differs at byte {}: {:?}\ninput {xs:?}", i % ty.block_bytes(), (want[i], got[i]))
        })
    };
    for b in simd_backends() {
        let mut got = vec![0u8; want.len()];
        b.quantize(ty, x, &mut got).unwrap();
        if let Some(e) = first_difference(&want, &got) {
            panic!("{} {}: {e}", b.name, ty.name());
        }
        let mut got_w = vec![0u8; want_w.len()];
        b.quantize_weighted(ty, &x[..rows], &mut got_w, weights.len(), weights).unwrap();
        if let Some(e) = first_difference(&want_w, &got_w) {
            panic!("{} {} with weights: {e}", b.name, ty.name());
        }
        let mut got_f = vec![0f32; n];
        b.dequantize(ty, &want, &mut got_f).unwrap();
        assert!(
            want_f.iter().zip(&got_f).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
            "{} {} dequantize differs",
            b.name,
            ty.name()
        );
    }
}

/// 256 values (one k-quant super-block, eight 32-blocks) shaped by `f`.
fn shaped(f: impl Fn(usize) -> f32) -> Vec<f32> {
    (0..256).map(f).collect()
}

#[test]
fn edge_cases() {
    let min_sub = f32::from_bits(1);
    let cases: Vec<(&str, Vec<f32>)> = vec![
        ("zeros", vec![0.0; 256]),
        ("negative zeros", vec![-0.0; 256]),
        ("mixed zeros", shaped(|i| if i % 3 == 0 { -0.0 } else { 0.0 })),
        (
            "subnormals",
            shaped(|i| f32::from_bits(1 + (i as u32 * 7919) % 0x007f_ffff) * if i % 2 == 0 { 1.0 } else { -1.0 }),
        ),
        ("tiny normals", shaped(|i| f32::MIN_POSITIVE * (1.0 + i as f32) * if i % 5 == 0 { -1.0 } else { 1.0 })),
        ("min subnormal", shaped(|i| if i % 7 == 0 { min_sub } else { 0.0 })),
        ("all equal", vec![0.37; 256]),
        ("all equal negative", vec![-1234.5; 256]),
        ("single outlier", shaped(|i| if i == 77 { 1e4 } else { (i as f32 * 0.013).sin() * 1e-3 })),
        ("negative outlier", shaped(|i| if i % 32 == 5 { -50.0 } else { (i as f32).cos() })),
        (
            "q8 ties",
            shaped(|i| {
                (i % 32) as f32 * if i % 2 == 0 { 0.5 } else { -0.5 } + if i % 32 == 31 { 127.0 - 15.5 } else { 0.0 }
            }),
        ),
        ("q8 exact halves", shaped(|i| if i % 32 == 0 { 127.0 } else { (i % 127) as f32 + 0.5 })),
        ("q4 ties", shaped(|i| if i % 32 == 0 { -8.0 } else { (i % 17) as f32 * 0.5 - 4.0 })),
        (
            "mxfp4 ties",
            shaped(|i| [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0][i % 8] * if i % 16 < 8 { 1.0 } else { -1.0 }),
        ),
        (
            "mxfp4 near powers of two",
            shaped(|i| f32::from_bits(0x437f_ffff - (i as u32 % 4)) * if i % 3 == 0 { -1.0 } else { 1.0 }),
        ),
        ("huge", shaped(|i| 3.0e38 * if i % 2 == 0 { 1.0 } else { -0.999 })),
        ("max magnitude", shaped(|i| if i % 32 == 0 { f32::MAX } else { -f32::MAX / (1.0 + i as f32) })),
        ("equal magnitude, opposite signs", shaped(|i| if i % 2 == 0 { 2.0 } else { -2.0 })),
        (
            "first max negative",
            shaped(|i| {
                if i % 32 == 3 {
                    -7.0
                } else if i % 32 == 9 {
                    7.0
                } else {
                    1.0
                }
            }),
        ),
    ];
    for ty in quantizable() {
        for (name, x) in &cases {
            // Eight copies, each scaled differently (and one mixed with ordinary values), so
            // kernels that batch several blocks or super-blocks meet the case inside a batch.
            let mut long: Vec<f32> = Vec::with_capacity(x.len() * 8);
            for (k, scale) in [1.0f32, -1.0, 0.5, 0.25, 1.0, 3.0e-3, 1.0, -0.125].iter().enumerate() {
                long.extend(
                    x.iter().enumerate().map(|(i, v)| if k == 4 && i % 3 == 0 { 0.01 * i as f32 } else { v * scale }),
                );
            }
            let result = std::panic::catch_unwind(|| check_all(ty, &long));
            assert!(result.is_ok(), "case '{name}' failed for {}", ty.name());
        }
    }
}

/// Values within a few ulps of every midpoint between MXFP4 code magnitudes, at several
/// scales: where a nearest-code shortcut would be wrong, if anywhere.
#[test]
fn mxfp4_near_midpoints() {
    let mut x = Vec::new();
    for scale in [1.0f32, 0.75, 3.0e-30, 1.7e30, 2.0f32.powi(-100), 1.0e-36, 5.0, 0.001] {
        for (i, m) in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.1, 3.0].iter().enumerate() {
            let mut block = vec![6.0 * scale];
            for k in -15i32..16 {
                let v = m * scale;
                let v = f32::from_bits((v.to_bits() as i32 + k) as u32);
                block.push(if (i as i32 + k) % 2 == 0 { v } else { -v });
            }
            x.extend(block);
        }
    }
    check_all(QuantType::MXFP4, &x);
}

/// Rows of 8 super-blocks and more (kernels that batch a row's super-blocks by 8, with
/// remainders of 2 and 1), with importance weights.
#[test]
fn wide_rows_match_scalar() {
    let x: Vec<f32> = (0..3 * 4608)
        .map(|i| {
            let v = ((i as f32 * 0.37).sin() + (i as f32 * 0.011).cos()) * 0.02;
            if i % 997 == 0 { v * 40.0 } else { v }
        })
        .collect();
    for width in [2048usize, 2560, 2816, 4608] {
        let weights: Vec<f32> =
            (0..width).map(|i| if i % 61 == 0 { 0.0 } else { ((i * 7919 % 1000) as f32 / 250.0).exp2() }).collect();
        for ty in quantizable() {
            check_all_weighted(ty, &x[..x.len() / width * width], &weights);
        }
    }
}

/// With weights, rows are checked piece by piece as they are quantized: the first NaN or
/// infinity is still the one named (here past the first pieces), and a value that is not finite
/// is named before a bad weight.
#[test]
fn non_finite_weighted_input_is_refused_at_its_index() {
    let (rows, width) = (12, 4096);
    let w = vec![1.0f32; width];
    for b in available() {
        for ty in quantizable() {
            let mut x: Vec<f32> = (0..rows * width).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
            x[9 * width + 300] = f32::NAN;
            x[10 * width + 5] = f32::INFINITY;
            let mut y = vec![0u8; ty.bytes_for(x.len())];
            let err = b.quantize_weighted(ty, &x, &mut y, width, &w).unwrap_err();
            let want = 9 * width + 300;
            assert!(
                matches!(err, KernelError::NonFinite { index, .. } if index == want),
                "{} {}: {err}",
                b.name,
                ty.name()
            );
            let mut neg = w.clone();
            neg[7] = -1.0;
            let err = b.quantize_weighted(ty, &x, &mut y, width, &neg).unwrap_err();
            assert!(
                matches!(err, KernelError::NonFinite { index, .. } if index == want),
                "{} {}: {err}",
                b.name,
                ty.name()
            );
        }
    }
}

#[test]
fn non_finite_input_is_refused() {
    for b in available() {
        for ty in quantizable() {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![1.0f32; 512];
                x[300] = bad;
                let mut y = vec![0u8; ty.bytes_for(512)];
                let err = b.quantize(ty, &x, &mut y).unwrap_err();
                assert!(matches!(err, KernelError::NonFinite { index: 300, .. }), "{} {}: {err}", b.name, ty.name());
            }
        }
    }
}

#[test]
fn wrong_lengths_are_refused() {
    let mut y = vec![0u8; 34];
    assert!(matches!(SCALAR.quantize(QuantType::Q8_0, &[0.0; 31], &mut y), Err(KernelError::Length { .. })));
    assert!(matches!(SCALAR.quantize(QuantType::Q8_0, &[0.0; 64], &mut y), Err(KernelError::Length { .. })));
    let mut f = vec![0f32; 32];
    assert!(SCALAR.dequantize(QuantType::Q8_0, &y[..33], &mut f).is_err());
}

#[test]
fn conversions_match_on_every_half_value() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut want = vec![0f32; all.len()];
    let mut got = vec![0f32; all.len()];
    for b in simd_backends() {
        SCALAR.bf16_to_f32(&all, &mut want);
        b.bf16_to_f32(&all, &mut got);
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} bf16_to_f32", b.name);
        SCALAR.f16_to_f32(&all, &mut want);
        b.f16_to_f32(&all, &mut got);
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} f16_to_f32", b.name);
    }
}

/// Outputs large enough for streaming stores, at every alignment of the destination.
#[test]
fn large_conversions_match_at_any_alignment() {
    let src: Vec<u16> = (0..(1u32 << 21) + 13).map(|i| (i.wrapping_mul(40503)) as u16).collect();
    let mut want = vec![0f32; src.len()];
    SCALAR.bf16_to_f32(&src, &mut want);
    for b in simd_backends() {
        let mut buf = vec![0f32; src.len() + 8];
        for offset in [0, 1, 3, 7] {
            b.bf16_to_f32(&src[..src.len() - offset], &mut buf[offset..src.len()]);
            let got = &buf[offset..src.len()];
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{} offset {offset}", b.name);
        }
    }
}

#[test]
fn f32_to_half_conversions_match_on_edge_values() {
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65520.0,
        65519.99,
    ];
    x.extend([
        f32::from_bits(0x7fc0_0000),
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffff_ffff),
        f32::from_bits(0x7fbf_ffff),
    ]);
    x.extend((0..4096u32).map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9))));
    x.extend((0..4096u32).map(|i| f32::from_bits(0x3380_0000 + i * 977))); // f16 subnormal range
    x.extend((0..4096u32).map(|i| f32::from_bits(0x3f80_0000 | (i << 12) | 0x0fff))); // ties and near-ties
    let (mut want, mut got) = (vec![0u16; x.len()], vec![0u16; x.len()]);
    for b in simd_backends() {
        SCALAR.f32_to_bf16(&x, &mut want);
        b.f32_to_bf16(&x, &mut got);
        assert_eq!(want, got, "{} f32_to_bf16", b.name);
        SCALAR.f32_to_f16(&x, &mut want);
        b.f32_to_f16(&x, &mut got);
        assert_eq!(want, got, "{} f32_to_f16", b.name);
    }
}

fn arb_values() -> impl Strategy<Value = Vec<f32>> {
    let scale = prop_oneof![Just(1e-30f32), Just(1e-3), Just(1.0), Just(1e3), Just(1e30)];
    (scale, prop::collection::vec(-1.0f32..1.0, 256..=6144), any::<u64>()).prop_map(|(scale, v, seed)| {
        v.iter()
            .enumerate()
            .map(|(i, &u)| {
                // Mostly normal-ish weights, some exact zeros and repeated values.
                let h = (seed ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
                match h {
                    0 => 0.0,
                    1 => -0.0,
                    2 => scale,
                    _ => u * u * u.signum() * scale,
                }
            })
            .collect()
    })
}

/// Importance weights for rows of 256 to 2048 values (kernels that work on groups of
/// super-blocks meet whole groups and remainders): zeros, tiny, huge and ordinary ones.
fn arb_weights() -> impl Strategy<Value = Vec<f32>> {
    let one = prop_oneof![3 => 0.0f32..10.0, 1 => Just(0.0f32), 1 => Just(1e-30f32), 1 => Just(1e15f32)];
    (0..4usize).prop_flat_map(move |k| prop::collection::vec(one.clone(), 256 << k))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_data_matches_scalar(x in arb_values(), w in arb_weights()) {
        for ty in quantizable() {
            check_all_weighted(ty, &x, &w);
        }
    }

    #[test]
    fn random_bytes_dequantize_like_scalar(bytes in prop::collection::vec(any::<u8>(), 210 * 34)) {
        for ty in QuantType::ALL {
            let n = bytes.len() / ty.block_bytes();
            let src = &bytes[..n * ty.block_bytes()];
            let mut want = vec![0f32; n * ty.block_size()];
            SCALAR.dequantize(ty, src, &mut want).unwrap();
            for b in simd_backends() {
                let mut got = vec![0f32; want.len()];
                b.dequantize(ty, src, &mut got).unwrap();
                prop_assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
                    "{} {}", b.name, ty.name());
            }
        }
    }

    #[test]
    fn openai_mxfp4_dequantizes_like_scalar(bytes in prop::collection::vec(any::<u8>(), 17 * 40)) {
        let n = bytes.len() / 17;
        let (blocks, scales) = bytes.split_at(16 * n);
        let mut want = vec![0f32; 32 * n];
        SCALAR.openai_mxfp4_dequantize(blocks, scales, &mut want);
        for b in simd_backends() {
            let mut got = vec![0f32; want.len()];
            b.openai_mxfp4_dequantize(blocks, scales, &mut got);
            prop_assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
                "{}", b.name);
        }
    }

    #[test]
    fn random_floats_convert_like_scalar(bits in prop::collection::vec(any::<u32>(), 1..300)) {
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let (mut want, mut got) = (vec![0u16; x.len()], vec![0u16; x.len()]);
        for b in simd_backends() {
            SCALAR.f32_to_bf16(&x, &mut want);
            b.f32_to_bf16(&x, &mut got);
            prop_assert_eq!(&want, &got);
            SCALAR.f32_to_f16(&x, &mut want);
            b.f32_to_f16(&x, &mut got);
            prop_assert_eq!(&want, &got);
        }
    }
}

/// Every quantizer reproduces `ggml_quantize_chunk` byte for byte on every backend, with an
/// importance matrix and without (vectors written by scripts/make_imatrix_vectors.py with
/// ggml itself; rows with outliers, zeros, constant stretches, tiny values and ties, weights
/// with zeros and a wide range).
#[test]
fn quantizers_match_ggml() {
    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    let x = floats(include_bytes!("data/ggml/input.f32"));
    let w = floats(include_bytes!("data/ggml/weights.f32"));
    macro_rules! vectors {
        ($($ty:ident),*) => {
            [$((QuantType::$ty, &include_bytes!(concat!("data/ggml/", stringify!($ty), ".imatrix.bin"))[..],
                &include_bytes!(concat!("data/ggml/", stringify!($ty), ".plain.bin"))[..])),*]
        };
    }
    let expected = vectors!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4);
    let mut failures = Vec::new();
    for b in available() {
        for (ty, with_imatrix, plain) in expected {
            let mut got = vec![0u8; plain.len()];
            b.quantize(ty, &x, &mut got).unwrap();
            if let Some(i) = got.iter().zip(plain).position(|(a, b)| a != b) {
                failures.push(format!(
                    "{} {} plain: byte {i} (row {}, block {})",
                    b.name,
                    ty.name(),
                    i / ty.bytes_for(w.len()),
                    i % ty.bytes_for(w.len()) / ty.block_bytes()
                ));
            }
            b.quantize_weighted(ty, &x, &mut got, w.len(), &w).unwrap();
            if let Some(i) = got.iter().zip(with_imatrix).position(|(a, b)| a != b) {
                failures.push(format!(
                    "{} {} imatrix: byte {i} (row {}, block {})",
                    b.name,
                    ty.name(),
                    i / ty.bytes_for(w.len()),
                    i % ty.bytes_for(w.len()) / ty.block_bytes()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "differ from ggml:\n{}", failures.join("\n"));
    let mut out = vec![0u8; QuantType::Q4_0.bytes_for(x.len())];
    let bad = SCALAR.quantize_weighted(QuantType::Q4_0, &x, &mut out, w.len(), &w[..10]);
    assert!(matches!(bad, Err(KernelError::Length { .. })));
    let mut neg = w.clone();
    neg[5] = -1.0;
    let bad = SCALAR.quantize_weighted(QuantType::Q4_0, &x, &mut out, w.len(), &neg);
    assert!(matches!(bad, Err(KernelError::BadWeight { index: 5, .. })));
}
