//! The i-quants (IQ2_XXS … IQ1_M) and ternary types (TQ1_0, TQ2_0): every backend reproduces
//! `ggml_quantize_chunk` byte for byte with and without importance weights, and ggml's
//! `to_float` bit for bit (vectors written by scripts/make_iquant_vectors.py with ggml itself),
//! and SIMD backends equal the scalar reference on random data.

use moeq_kernels::backend::SCALAR;
use moeq_kernels::{Backend, KernelError, QuantType, available};

pub const IQUANTS: [QuantType; 9] = [
    QuantType::IQ2_XXS,
    QuantType::IQ2_XS,
    QuantType::IQ2_S,
    QuantType::IQ3_XXS,
    QuantType::IQ3_S,
    QuantType::IQ1_S,
    QuantType::IQ1_M,
    QuantType::TQ1_0,
    QuantType::TQ2_0,
];

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/iquants/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn same_floats(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
}

/// Quantizes with `b`, with weights if given.
fn quantize(b: &Backend, ty: QuantType, x: &[f32], w: Option<&[f32]>) -> Result<Vec<u8>, KernelError> {
    let mut out = vec![0u8; ty.bytes_for(x.len())];
    match w {
        Some(w) => b.quantize_weighted(ty, x, &mut out, w.len(), w)?,
        None => b.quantize(ty, x, &mut out)?,
    }
    Ok(out)
}

#[test]
fn iquants_match_ggml() {
    let x = floats(&data("input.f32"));
    let w = floats(&data("weights.f32"));
    for b in available() {
        for ty in IQUANTS {
            let name = ty.name();
            for (suffix, weights) in [("", None), (".imatrix", Some(&w[..]))] {
                if weights.is_none() && ty.needs_importance() {
                    let err = quantize(b, ty, &x, None).unwrap_err();
                    assert!(matches!(err, KernelError::NeedsImportance(n) if n == name), "{err}");
                    continue;
                }
                let want = data(&format!("{name}{suffix}.bin"));
                let got = quantize(b, ty, &x, weights).unwrap_or_else(|e| panic!("{} {name}{suffix}: {e}", b.name));
                if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                    let block = i / ty.block_bytes();
                    panic!(
                        "{} {name}{suffix} differs from ggml at byte {i} (super-block {block}, byte {}): {} vs ggml's {}",
                        b.name,
                        i % ty.block_bytes(),
                        got[i],
                        want[i]
                    );
                }
            }
            let bytes =
                data(&if ty.needs_importance() { format!("{name}.imatrix.bin") } else { format!("{name}.bin") });
            for (bytes, want) in [
                (bytes, data(&format!("{name}.f32"))),
                (data(&format!("{name}.random.bin")), data(&format!("{name}.random.f32"))),
            ] {
                let want = floats(&want);
                let mut got = vec![0f32; want.len()];
                b.dequantize(ty, &bytes, &mut got).unwrap();
                if let Some(i) = same_floats(&got, &want) {
                    panic!("{} {name} dequantizes value {i} to {} where ggml has {}", b.name, got[i], want[i]);
                }
            }
        }
    }
}

#[test]
fn ternary_types_ignore_weights() {
    let x = floats(&data("input.f32"));
    let w = floats(&data("weights.f32"));
    for ty in [QuantType::TQ1_0, QuantType::TQ2_0] {
        assert_eq!(quantize(&SCALAR, ty, &x, None).unwrap(), quantize(&SCALAR, ty, &x, Some(&w)).unwrap());
    }
}

#[test]
fn iquants_refuse_bad_input() {
    for b in available() {
        for ty in IQUANTS {
            let mut x = vec![0.5f32; 512];
            x[300] = f32::NAN;
            let err = quantize(b, ty, &x, Some(&[1.0; 512])).unwrap_err();
            assert!(matches!(err, KernelError::NonFinite { index: 300, .. }), "{} {}: {err}", b.name, ty.name());
            let mut out = vec![0u8; ty.bytes_for(256)];
            let err = b.quantize_weighted(ty, &x[..256], &mut out, 256, &[1.0; 255]).unwrap_err();
            assert!(matches!(err, KernelError::Length { .. }), "{err}");
        }
    }
}

/// Values whose squares overflow (rows of 1024 whose second half is ±3e38, ±1e20, ±1e18):
/// where ggml finishes, moeq writes its bytes; where ggml aborts, moeq returns an error naming
/// the super-block, on every backend.
#[test]
fn iquants_huge_values_match_ggml_or_fail_cleanly() {
    let rows = floats(&data("huge.f32"));
    let w = vec![1.0f32; 1024];
    for ty in IQUANTS {
        for (r, x) in rows.chunks_exact(1024).enumerate() {
            for (suffix, weights) in [("", None), (".imatrix", Some(&w[..]))] {
                if weights.is_none() && ty.needs_importance() {
                    continue;
                }
                let want = data(&format!("{}.huge{r}{suffix}.bin", ty.name()));
                for b in available() {
                    let got = quantize(b, ty, x, weights);
                    let what = format!("{} {} row {r}{suffix}", b.name, ty.name());
                    if want.is_empty() {
                        assert!(
                            matches!(got, Err(KernelError::Degenerate { block: 2 | 3, .. })),
                            "{what}: ggml aborts, moeq gives {got:?}"
                        );
                    } else {
                        assert_eq!(got.as_deref(), Ok(&want[..]), "{what}");
                    }
                }
            }
        }
    }
}

fn rows(shape: u32, seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let levels = [0.0f32, 0.01, -0.01, 0.02, -0.03];
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let g = (0..4).map(|_| next()).sum::<f32>() - 2.0;
            match shape % 9 {
                0 => g * 0.02,
                1 => {
                    if i % 97 == 0 {
                        g * 3.0
                    } else {
                        g * 0.01
                    }
                }
                2 => {
                    if next() < 0.3 {
                        0.0
                    } else {
                        g
                    }
                }
                3 => (g * 4.0).round() * 0.25,
                4 => g * 1e-6,
                5 => g * [1e-30f32, 1e-3, 1.0, 1e10][i / 256 % 4],
                6 => levels[(next() * 5.0) as usize % 5],
                7 => {
                    if i % 16 == 3 {
                        1.0
                    } else {
                        0.0
                    }
                }
                _ => g.abs() * if i % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + (i / 32) as f32),
            }
        })
        .collect();
    let w: Vec<f32> = (0..768)
        .map(|i| match shape % 3 {
            0 => {
                if i % 13 == 0 {
                    0.0
                } else {
                    next() * 4.0
                }
            }
            1 => {
                if (i / 32) % 5 == 2 {
                    0.0
                } else {
                    next() * next() * 100.0
                }
            }
            _ => 1.0 + (i % 7) as f32,
        })
        .collect();
    (x, w)
}

/// Seeded random rows of many shapes (scales from 1e-30 to 1e10, zeros, ties, sparse spikes,
/// alternating signs; weights with zero columns and runs): every SIMD backend equals the scalar
/// reference, with and without weights.
#[test]
fn iquants_simd_match_scalar_on_random_data() {
    for case in 0..27u32 {
        let (x, w) = rows(case, 0x9E37_79B9_7F4A_7C15 ^ (case as u64) << 32, 256 * 12);
        simd_equals_scalar(&x, &w, &format!("case {case}"));
    }
}

/// Every SIMD backend quantizes `x` (with and without the weights `w`) as the scalar reference
/// does, for every i-quant (`what` names the data in the failure).
fn simd_equals_scalar(x: &[f32], w: &[f32], what: &str) {
    let backends: Vec<_> = available().into_iter().filter(|b| b.name != "scalar").collect();
    for ty in IQUANTS {
        for weights in [None, Some(w)] {
            if weights.is_none() && ty.needs_importance() {
                continue;
            }
            let want = quantize(&SCALAR, ty, x, weights);
            for b in &backends {
                let got = quantize(b, ty, x, weights);
                assert!(got == want, "{} {} {what} weights {}", b.name, ty.name(), weights.is_some());
            }
        }
    }
}

/// Every SIMD backend equals the scalar reference on many super-blocks of each data shape
/// (128 per shape and type, with and without weights): enough blocks that the neighbour
/// searches' rarer paths (long runs of candidates sharing a list, single-candidate windows,
/// ties) are all taken.
#[test]
fn iquants_simd_match_scalar_on_many_blocks() {
    for shape in 0..9u32 {
        let (x, w) = rows(shape, 0xD1B5_4A32_D192_ED03 ^ (shape as u64) << 40, 256 * 128);
        simd_equals_scalar(&x, &w, &format!("shape {shape}"));
    }
}

/// Super-blocks whose 16-value blocks are zero or tiny (below IQ2_S's 1e-8, above IQ3_S's 0)
/// in patterns — the first of each pair, the second, both, runs — next to ordinary ones: the
/// quantizers that search their blocks two at a time (IQ3_S, IQ2_S) meet pairs of which one
/// block is not searched, on every SIMD backend as on the scalar one.
#[test]
fn iquants_simd_match_scalar_with_zero_blocks() {
    let (g, w) = rows(0, 0x5EED_0020, 256 * 16);
    let masks: [u16; 8] = [0x5555, 0xaaaa, 0x3333, 0xcccc, 0x0f0f, 0x0001, 0x8000, 0x6996];
    let mut x = Vec::with_capacity(g.len());
    for (sb, values) in g.chunks_exact(256).enumerate() {
        let mask = masks[sb % 8];
        x.extend(values.iter().enumerate().map(|(i, &v)| match (mask >> (i / 16)) & 1 {
            0 => v,
            _ if sb % 16 < 8 => 0.0,
            _ => v * 1e-9,
        }));
    }
    simd_equals_scalar(&x, &w, "zero blocks");
}

/// IQ3_S and IQ2_S search each block on its own, as ggml does, though they evaluate two blocks'
/// candidates at a time: a block's grid indices and signs are the same whether the other block
/// of its pair is searched or not (all zero for IQ3_S, below 1e-8 for IQ2_S), on every backend.
#[test]
fn paired_blocks_are_searched_alone() {
    let (g, w) = rows(0, 0x0020_0020, 256 * 4);
    for b in available() {
        for (ty, size) in [(QuantType::IQ3_S, 32), (QuantType::IQ2_S, 16)] {
            for weights in [None, Some(&w[..256])] {
                for sb in g.chunks_exact(256) {
                    let quiet = |x: &mut [f32], block: usize| {
                        x[size * block..size * block + size]
                            .iter_mut()
                            .for_each(|v| *v *= 1e-9 * (ty == QuantType::IQ2_S) as u8 as f32)
                    };
                    let both = quantize(b, ty, sb, weights).unwrap();
                    let (mut first, mut second) = (sb.to_vec(), sb.to_vec());
                    quiet(&mut first, 1);
                    quiet(&mut second, 0);
                    let (first, second) =
                        (quantize(b, ty, &first, weights).unwrap(), quantize(b, ty, &second, weights).unwrap());
                    let what = format!("{} {} weights {}", b.name, ty.name(), weights.is_some());
                    if ty == QuantType::IQ3_S {
                        // Block 0's indices, high bits and signs; block 1's land in block 0's place
                        // when block 0 is not quantized.
                        assert_eq!(
                            (&first[2..10], first[66], &first[74..78]),
                            (&both[2..10], both[66], &both[74..78]),
                            "{what}"
                        );
                        assert_eq!(
                            (&second[2..10], second[67], &second[74..78]),
                            (&both[10..18], both[67], &both[78..82]),
                            "{what}"
                        );
                    } else {
                        // Block 0's two indices (high bits in bits 0..4 of byte 66) and signs, then block 1's.
                        assert_eq!(
                            (&first[2..4], first[66] & 0xf, &first[34..36]),
                            (&both[2..4], both[66] & 0xf, &both[34..36]),
                            "{what}"
                        );
                        assert_eq!(
                            (&second[4..6], second[66] >> 4, &second[36..38]),
                            (&both[4..6], both[66] >> 4, &both[36..38]),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}

/// Random bytes (finite scales) dequantize identically on every backend.
#[test]
fn iquants_dequantize_random_bytes_like_scalar() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for ty in IQUANTS {
        let mut bytes: Vec<u8> = (0..ty.block_bytes() * 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        for b in bytes.chunks_exact_mut(ty.block_bytes()) {
            // Finite scales: clear the f16 exponent's top bit wherever a scale may sit.
            for at in [0, 1, b.len() - 1] {
                b[at] &= 0xbf;
            }
        }
        let mut want = vec![0f32; 64 * 256];
        SCALAR.dequantize(ty, &bytes, &mut want).unwrap();
        for b in available() {
            let mut got = vec![0f32; want.len()];
            b.dequantize(ty, &bytes, &mut got).unwrap();
            assert!(same_floats(&got, &want).is_none(), "{} {}", b.name, ty.name());
        }
    }
}

/// Ternary rounding at and around the half-way points (lroundf rounds half away from zero),
/// at several scales, equal on every backend.
#[test]
fn ternary_ties_match_scalar() {
    let around = |v: f32| [f32::from_bits(v.to_bits() - 1), v, f32::from_bits(v.to_bits() + 1)];
    let mut x = Vec::new();
    for scale in [1.0f32, 3.0, 1e-20, 7e30, 0.1] {
        let mut block = vec![scale; 256];
        for (i, v) in [0.5f32, -0.5, 0.25, -1.0, 0.75].iter().flat_map(|&v| around(v * scale)).enumerate() {
            block[1 + i] = v;
        }
        block[100] = -scale;
        x.extend(block);
    }
    for ty in [QuantType::TQ1_0, QuantType::TQ2_0] {
        let want = quantize(&SCALAR, ty, &x, None).unwrap();
        for b in available() {
            assert_eq!(quantize(b, ty, &x, None).unwrap(), want, "{} {}", b.name, ty.name());
        }
    }
}
