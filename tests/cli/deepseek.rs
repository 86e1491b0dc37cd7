//! DeepSeek-V3 end to end: the fixtures (`tests/fixtures/deepseek-v3*`, made by
//! `scripts/make_deepseek_fixtures.py` with transformers' own classes) against llama.cpp's
//! converter and llama-quantize, mlx-lm and transformers' forward.

use super::*;

// DeepSeek-V3: the released FP8 layout (`deepseek-v3/fp8`, with its multi-token-prediction
// layer) and DeepSeek's bf16 cast of it (`deepseek-v3/hf`).

fn deepseek(layout: &str) -> PathBuf {
    fixtures().join("deepseek-v3").join(layout)
}

/// Whether two GGUFs hold the same tensors (names, shapes, types, bytes) and metadata, apart
/// from the keys in `except`.
pub(super) fn same_gguf_except(a: &Path, b: &Path, except: &[&str]) -> bool {
    let (a, b) = (moeq_formats::gguf::GgufFile::open(a).unwrap(), moeq_formats::gguf::GgufFile::open(b).unwrap());
    let keys = |f: &moeq_formats::gguf::GgufFile| {
        f.header().metadata.iter().filter(|(k, _)| !except.contains(&k.as_str())).cloned().collect::<Vec<_>>()
    };
    let tensors = |f: &moeq_formats::gguf::GgufFile| {
        f.header()
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), t.ne.clone(), t.ggml_type, f.tensor_data(i).to_vec()))
            .collect::<Vec<_>>()
    };
    keys(&a) == keys(&b) && tensors(&a) == tensors(&b)
}

/// Both layouts convert to what llama.cpp's converter writes, and with `--type` to what
/// llama-quantize makes of that, byte for byte. The FP8 weights are decoded block by block
/// (value × block scale in f32) and rounded to bf16 as the converter does; from the FP8
/// layout the converter writes the bf16 layout's tensors (DeepSeek's cast rounds the same
/// way), so its quantized files are the bf16 goldens but for `general.name`.
#[test]
fn deepseek_v3_converts_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for (layout, ftype, expected) in [
        ("hf", None, "deepseek-v3-bf16.gguf"),
        ("hf", Some("Q8_0"), "deepseek-v3-bf16-Q8_0.gguf"),
        ("hf", Some("Q4_0"), "deepseek-v3-bf16-Q4_0.gguf"),
        ("hf", Some("Q4_K_M"), "deepseek-v3-bf16-Q4_K_M.gguf"),
        ("fp8", None, "deepseek-v3-fp8.gguf"),
    ] {
        let out = dir.path().join(format!("{layout}-{ftype:?}.gguf"));
        let input = deepseek(layout);
        let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
        args.extend(ftype.iter().flat_map(|t| ["--type", *t]));
        ok(&args);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(expected)).unwrap(), "{layout} {ftype:?}");
    }
    for ftype in ["Q8_0", "Q4_0", "Q4_K_M"] {
        let out = dir.path().join(format!("fp8-{ftype}.gguf"));
        let input = deepseek("fp8");
        let run = moeq(&["convert", path_arg(&input), "-o", path_arg(&out), "--type", ftype, "-q"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        // The multi-token-prediction layer is left out, and the user told so.
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("model.layers.3) is left out"), "{stderr}");
        // The FP8 layout is what its config.json declares: no warning about it.
        assert!(!stderr.contains("config.json"), "{stderr}");
        let want = golden(&format!("deepseek-v3-bf16-{ftype}.gguf"));
        assert!(same_gguf_except(&out, &want, &["general.name"]), "fp8 {ftype}");
    }
    // GGUF → GGUF requantizes as llama-quantize does.
    let out = dir.path().join("requantized.gguf");
    ok(&["convert", path_arg(&golden("deepseek-v3-bf16.gguf")), "-o", path_arg(&out), "--type", "Q4_K_M", "-q"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(golden("deepseek-v3-bf16-Q4_K_M.gguf")).unwrap());
    let inspect: Json = serde_json::from_str(&ok(&["inspect", path_arg(&deepseek("fp8")), "--json"])).unwrap();
    assert_eq!(inspect["architecture"], "deepseek-v3");
    let tensors = inspect["tensors"].as_array().unwrap();
    assert!(tensors.iter().any(|t| t["dtype"] == "F8_E4M3"), "{}", inspect["tensors"]);
}

/// moeq's forward reproduces transformers' `DeepseekV3ForCausalLM`: on the bf16 layout and
/// llama.cpp's GGUFs (the bf16 values), and on the FP8 layout (its values decoded exactly,
/// against the reference computed from the FP8 weights dequantized in f32).
#[test]
fn deepseek_v3_eval_reproduces_the_reference() {
    for (input, reference) in [
        (deepseek("hf"), "reference.safetensors"),
        (golden("deepseek-v3-bf16.gguf"), "reference.safetensors"),
        (golden("deepseek-v3-fp8.gguf"), "reference.safetensors"),
        (deepseek("fp8"), "reference-fp8.safetensors"),
    ] {
        let reference = deepseek(reference);
        let tokens: Vec<u32> = st_tensor(&reference, "tokens").iter().map(|&t| t as u32).collect();
        let trace = moeq::verify::eval::eval(&input, &tokens).unwrap();
        let mut checked = vec![("logits".to_string(), rel_l2(&trace.logits, &st_tensor(&reference, "logits")))];
        for (n, h) in trace.hidden.iter().enumerate() {
            checked.push((format!("hidden.{n}"), rel_l2(h, &st_tensor(&reference, &format!("hidden.{n}")))));
        }
        // Each feed-forward block alone (layer 0 dense, then MoE), on the reference's input.
        let source = moeq::source::Source::open(&input).unwrap();
        let weights = moeq::model::weights::Weights::new(&source, &input).unwrap();
        let model = moeq::forward::Model::new(&weights).unwrap();
        assert_eq!(trace.moe_in.len(), 3);
        for n in 0..trace.moe_in.len() {
            let x: Vec<f32> = st_tensor(&reference, &format!("moe_in.{n}")).iter().map(|&v| v as f32).collect();
            let (out, routes) = model.ffn(n, &x).unwrap();
            assert_eq!(routes.is_empty(), n == 0, "layer 0 is dense");
            checked.push((format!("moe_out.{n}"), rel_l2(&out, &st_tensor(&reference, &format!("moe_out.{n}")))));
        }
        for (name, err) in checked {
            assert!(err <= 1e-4, "{input:?}: {name} relative L2 {err:e}");
        }
    }
}

/// verify: exact for the lossless conversions (bf16 → BF16, FP8 → F32), the FP8 → BF16
/// rounding within BF16's bound; and broken outputs fail, naming the culprit: MLA's key and
/// value halves swapped, a shared expert dropped, the correction bias zeroed.
#[test]
fn deepseek_v3_verify_is_exact_and_catches_broken_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = verify_json(&deepseek("hf"), &golden("deepseek-v3-bf16.gguf"));
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
    let f32_out = dir.path().join("fp8-f32.gguf");
    ok(&["convert", path_arg(&deepseek("fp8")), "-o", path_arg(&f32_out), "--type", "F32", "-q"]);
    let (code, r) = verify_json(&deepseek("fp8"), &f32_out);
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!(r["model"]["reused_head"], true);
    // Rounding the FP8 values to bf16: every tensor within BF16's bound, the FP8 ones not
    // identical. (This tiny random model's logits are fragile: its next-token distributions
    // move more than the default BF16 limit allows, so the model check gets a looser one.)
    let out = moeq(&[
        "verify",
        path_arg(&deepseek("fp8")),
        path_arg(&golden("deepseek-v3-fp8.gguf")),
        "--json",
        "--max-kl",
        "0.2",
    ]);
    let r: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", r["failures"]);
    let tensors = r["tensors"].as_array().unwrap();
    let q_b = tensors.iter().find(|t| t["name"] == "blk.1.attn_q_b.weight").unwrap();
    assert!(q_b["identical"] == false && q_b["rel_rmse"].as_f64() > Some(0.0) && q_b["output_type"] == "BF16", "{q_b}");
    assert!(tensors.iter().find(|t| t["name"] == "blk.1.ffn_gate_inp.weight").unwrap()["identical"] == true);

    // nope = v_head_dim = 32, kv_lora_rank = 160, 4 heads, bf16.
    let (heads, kv_lora, half) = (4, 160, 32);
    let swapped = patched(dir.path(), "deepseek-v3-bf16.gguf", "kv-swapped", |range, bytes| {
        // attn_k_b [heads][kv_lora][nope] made of attn_v_b's rows and the reverse.
        let ((k, n), (v, _)) = (range("blk.1.attn_k_b.weight"), range("blk.1.attn_v_b.weight"));
        let (old_k, old_v) = (bytes[k..k + n].to_vec(), bytes[v..v + n].to_vec());
        for h in 0..heads {
            for c in 0..kv_lora {
                for j in 0..half {
                    let kb = 2 * ((h * kv_lora + c) * half + j);
                    let vb = 2 * ((h * half + j) * kv_lora + c);
                    bytes[k + kb..k + kb + 2].copy_from_slice(&old_v[vb..vb + 2]);
                    bytes[v + vb..v + vb + 2].copy_from_slice(&old_k[kb..kb + 2]);
                }
            }
        }
    });
    let no_shared = patched(dir.path(), "deepseek-v3-bf16.gguf", "no-shared", |range, bytes| {
        let (at, n) = range("blk.2.ffn_down_shexp.weight");
        bytes[at..at + n].fill(0);
    });
    let no_bias = patched(dir.path(), "deepseek-v3-bf16.gguf", "no-bias", |range, bytes| {
        let (at, n) = range("blk.1.exp_probs_b.bias");
        bytes[at..at + n].fill(0);
    });
    for (output, culprits, layer) in [
        (swapped, vec!["blk.1.attn_k_b.weight", "blk.1.attn_v_b.weight"], None),
        (no_shared, vec!["blk.2.ffn_down_shexp.weight"], Some(2)),
        (no_bias, vec!["blk.1.exp_probs_b.bias"], Some(1)),
    ] {
        let (code, r) = verify_json(&deepseek("hf"), &output);
        assert_eq!(code, 1, "{output:?} passed: {r}");
        let failures = r["failures"].to_string();
        for c in culprits {
            assert!(failures.contains(c), "{c} not named in {failures}");
        }
        assert!(r["model"]["kl_max"].as_f64() > Some(1e-3), "{}", r["model"]);
        if let Some(l) = layer {
            // The block check on the source's hidden states sees it too.
            let block = &r["blocks"][l];
            assert!(block["rel_err"].as_f64() > Some(0.02), "{block}");
        }
    }
    // Without the correction bias the routing itself changes.
    let (_, r) = verify_json(&deepseek("hf"), &dir.path().join("no-bias.gguf"));
    assert!(r["blocks"][1]["routing_agreement"].as_f64() < Some(0.9), "{}", r["blocks"][1]);
}

/// A copy of the FP8 fixture with the tensors of shard `shard` edited (the index follows) and
/// `config.json` patched.
fn broken_fp8(
    shard: &str,
    edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool,
    config: impl FnOnce(&mut Json),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = deepseek("fp8");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        if f != shard {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    rewrite_safetensors(&src.join(shard), &dir.path().join(shard), edit);
    let kept: Vec<String> = moeq_formats::safetensors::SafetensorsFile::open(&dir.path().join(shard))
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let mut index: Json =
        serde_json::from_slice(&std::fs::read(src.join("model.safetensors.index.json")).unwrap()).unwrap();
    index["weight_map"].as_object_mut().unwrap().retain(|name, file| file != shard || kept.contains(name));
    std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let mut cfg: Json = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dir
}

/// FP8 tensors whose block scales are missing or misshapen, NaN codes, and FP8 without its
/// quantization settings are refused, naming the file and tensor; nothing is left behind.
#[test]
fn broken_fp8_checkpoints_fail_cleanly() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let shard = "model-00001-of-00002.safetensors";
    let weight = "model.layers.1.self_attn.kv_b_proj.weight";
    let scales = "model.layers.1.self_attn.kv_b_proj.weight_scale_inv";
    let keep = |_: &mut Json| {};
    // Like `fails`, but the multi-token-prediction layer's warning may come first.
    let fails = |args: &[&str]| -> String {
        let out = moeq(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "moeq {args:?}: {stderr}");
        assert!(stderr.lines().any(|l| l.starts_with("error: ")) && !stderr.contains("panicked"), "{stderr}");
        stderr
    };

    let missing = broken_fp8(shard, |n, _, _| n != scales, keep);
    let err = fails(&["convert", path_arg(missing.path()), "-o", path_arg(&out)]);
    assert!(err.contains(shard) && err.contains(weight) && err.contains("without its block scales"), "{err}");

    let misshapen = broken_fp8(
        shard,
        |n, entry, data| {
            if n == scales {
                // [2, 2] (256 rows, 160 columns in blocks of 128) given as [2, 1].
                entry["shape"] = serde_json::json!([2, 1]);
                data.truncate(8);
            }
            true
        },
        keep,
    );
    let err = fails(&["convert", path_arg(misshapen.path()), "-o", path_arg(&out)]);
    assert!(err.contains(scales) && err.contains("[2, 1]") && err.contains("F32 [2, 2]"), "{err}");

    let bf16_scales = broken_fp8(
        shard,
        |n, entry, data| {
            if n == scales {
                entry["dtype"] = Json::from("BF16");
                data.truncate(8);
            }
            true
        },
        keep,
    );
    let err = fails(&["convert", path_arg(bf16_scales.path()), "-o", path_arg(&out)]);
    assert!(err.contains(scales) && err.contains("BF16"), "{err}");

    let orphan = broken_fp8(shard, |n, _, _| n != weight, keep);
    let err = fails(&["convert", path_arg(orphan.path()), "-o", path_arg(&out)]);
    assert!(err.contains(scales) && err.contains("does not hold"), "{err}");

    let nan = broken_fp8(
        shard,
        |n, _, data| {
            if n == weight {
                data[5 * 160 + 7] = 0x7F;
            }
            true
        },
        keep,
    );
    for ftype in ["Q4_K_M", "BF16"] {
        let err = fails(&["convert", path_arg(nan.path()), "-o", path_arg(&out), "--type", ftype]);
        // Stored row 5, column 7 is row 7 (head 0, latent 7), column 5 of the transposed attn_k_b.
        assert!(
            err.contains(weight)
                && err.contains("attn_k_b")
                && err.contains("row 7, column 5 is FP8 code 0x7f, which is NaN"),
            "{err}"
        );
    }

    let undeclared = broken_fp8(
        shard,
        |_, _, _| true,
        |c| {
            c.as_object_mut().unwrap().remove("quantization_config");
        },
    );
    let err = fails(&["convert", path_arg(undeclared.path()), "-o", path_arg(&out)]);
    assert!(err.contains("F8_E4M3") && err.contains("quantization_config"), "{err}");

    let no_blocks = broken_fp8(
        shard,
        |_, _, _| true,
        |c| {
            c["quantization_config"].as_object_mut().unwrap().remove("weight_block_size");
        },
    );
    let err = fails(&["convert", path_arg(no_blocks.path()), "-o", path_arg(&out)]);
    assert!(err.contains("config.json") && err.contains("weight_block_size"), "{err}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

/// MLX builds equal what `mlx_lm convert` writes, from both layouts (mlx-lm dequantizes the
/// FP8 weights to bf16 as the converter does), and read back for eval and verify.
#[test]
fn deepseek_v3_mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    for (layout, group, golden) in [("hf", "32", "deepseek-v3-q4"), ("fp8", "64", "deepseek-v3-fp8-q4")] {
        let dst = out.path().join(golden);
        let input = deepseek(layout);
        ok(&[
            "convert",
            path_arg(&input),
            "-o",
            path_arg(&dst),
            "--format",
            "mlx",
            "--type",
            "q4",
            "--group-size",
            group,
            "-q",
        ]);
        let want = fixtures().join("golden-mlx").join(golden);
        let got_t = mlx_tensors_equal(&dst, &want, layout);
        // The router is never quantized and its correction bias stays f32, as in mlx-lm.
        assert_eq!(got_t["model.layers.1.mlp.gate.e_score_correction_bias"].0, "F32");
        assert_eq!(got_t["model.layers.1.mlp.gate.weight"].0, "BF16");
        assert_eq!(config_of(&dst)["quantization"], config_of(&want)["quantization"]);
        let index = |d: &Path| -> Json {
            serde_json::from_slice(&std::fs::read(d.join("model.safetensors.index.json")).unwrap()).unwrap()
        };
        assert_eq!(index(&dst)["metadata"], index(&want)["metadata"]);
    }
    // mlx-lm's build reads back: its tensors are the q4 values of the source's.
    let (code, r) = verify_json(&deepseek("hf"), &fixtures().join("golden-mlx/deepseek-v3-q4"));
    assert!(code == 0 || code == 1, "{r}");
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["rel_rmse"].as_f64() <= t["bound"].as_f64()), "{r}");
}

/// The layout follows the tensors: the bf16 cast under a `config.json` still declaring FP8
/// (as casts often keep it) converts to the same bytes, with a warning naming the file; the
/// FP8 folder is recognized as such.
#[test]
fn deepseek_v3_layout_follows_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // Named as the fixture's folder, from which general.name comes.
    let stale = dir.path().join("hf");
    std::fs::create_dir(&stale).unwrap();
    for entry in std::fs::read_dir(deepseek("hf")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, stale.join(p.file_name().unwrap())).unwrap();
    }
    let mut config = config_of(&stale);
    config["quantization_config"] = config_of(&deepseek("fp8"))["quantization_config"].clone();
    std::fs::write(stale.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let out = dir.path().join("stale.gguf");
    let run = moeq(&["convert", path_arg(&stale), "-o", path_arg(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("hf/config.json") && stderr.contains("\"fp8\"") && stderr.contains("plain float weights"),
        "{stderr}"
    );
    assert!(std::fs::read(&out).unwrap() == std::fs::read(golden("deepseek-v3-bf16.gguf")).unwrap());
    for (layout, want) in [("fp8", "Hugging Face FP8 layout"), ("hf", "Hugging Face layout")] {
        let text = ok(&["inspect", path_arg(&deepseek(layout))]);
        assert!(text.lines().any(|l| l.starts_with("layout") && l.ends_with(want)), "{text}");
    }
}

/// `moeq imatrix` on the FP8 release: the dense layer 0 has no experts in the coverage report
/// (none starved there, `--all-experts` runs the MoE layers only), the MoE layers route top-4
/// of 16 for every token, and the matrix quantizes the checkpoint to an i-quant.
#[test]
fn deepseek_v3_imatrix_skips_the_dense_layer() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32\n",
    )
    .unwrap();
    let fp8 = deepseek("fp8");
    let run = |out: &Path, extra: &[&str]| -> Json {
        let mut args = vec!["imatrix", path_arg(&fp8), "--tokens-file", path_arg(&tokens), "-o", path_arg(out)];
        args.extend(extra);
        args.extend(["--json", "-q"]);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let (routed, all) = (dir.path().join("routed.gguf"), dir.path().join("all.gguf"));
    let coverage = run(&routed, &[]);
    let layers = coverage["routed"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{coverage}");
    assert!(layers[0].as_array().unwrap().is_empty(), "layer 0 is dense: {coverage}");
    for layer in &layers[1..] {
        let counts: Vec<u64> = layer.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!((counts.len(), counts.iter().sum::<u64>()), (16, 4 * 32), "{coverage}");
    }
    assert!(coverage["starved"].as_array().unwrap().iter().all(|s| s[0] != 0), "{coverage}");
    assert_eq!(run(&all, &["--all-experts"])["routed"], coverage["routed"], "routing unchanged");
    let counts = read_imatrix(&all).1;
    let down = counts.iter().find(|t| t.0 == "blk.1.ffn_down_exps.weight.counts").unwrap();
    assert_eq!(down.2, [32.0; 16], "every expert, every token");
    assert!(counts.iter().any(|t| t.0 == "blk.0.ffn_down.weight.in_sum2"), "the dense layer's matrices");

    let out = dir.path().join("iq2.gguf");
    ok(&[
        "convert",
        path_arg(&deepseek("fp8")),
        "-o",
        path_arg(&out),
        "--type",
        "IQ2_XS",
        "--imatrix",
        path_arg(&all),
        "-q",
    ]);
    let file = moeq_formats::gguf::GgufFile::open(&out).unwrap();
    // The dense down projection (rows of 256) is IQ2_XS, which needs its importance weights;
    // the experts' rows of 32 and 64 fall back to IQ4_NL as llama-quantize's rule has it.
    let ty = |name: &str| file.header().tensors.iter().find(|t| t.name == name).unwrap().ggml_type;
    assert_eq!(ty("blk.0.ffn_down.weight"), moeq_formats::gguf::GgmlType::IQ2_XS);
    assert_eq!(ty("blk.1.ffn_gate_exps.weight"), moeq_formats::gguf::GgmlType::IQ4_NL);
}
