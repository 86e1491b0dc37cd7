//! MiniMax-M2 end to end: the fixtures (`tests/fixtures/minimax-m2`, made by
//! `scripts/make_minimax_m2_fixtures.py` with transformers' own classes; `fp8/` in the released
//! FP8 layout, `hf/` its BF16 form) against llama.cpp's converter and llama-quantize
//! (`golden/minimax-m2*`), mlx-lm (`golden-mlx/minimax-m2*`) and transformers' forward
//! (`reference*.safetensors`).

use super::*;

/// The golden `--type`s (llama-quantize of llama.cpp's bf16 GGUF).
const TYPES: [&str; 4] = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"];

fn minimax(path: &str) -> PathBuf {
    fixtures().join("minimax-m2").join(path)
}

/// Both layouts convert to exactly what llama.cpp's converter writes (w1/w2/w3 stacked as
/// gate/down/up, the whole-projection q/k norms, `rotary_dim` as `rope.dimension_count`, the
/// sigmoid gating function; the FP8 weights decoded block by block and rounded to bf16 as its
/// `dequant_simple` does) and, with `--type`, to what llama-quantize makes of that, in one
/// pass; from the FP8 layout the quantized files are the bf16 goldens but for `general.name`.
#[test]
fn minimax_m2_converts_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let hf = minimax("hf");
    for ty in std::iter::once(None).chain(TYPES.map(Some)) {
        let out = dir.path().join(format!("hf-{ty:?}.gguf"));
        let mut args = vec!["convert", path_arg(&hf), "-o", path_arg(&out), "-q"];
        args.extend(ty.iter().flat_map(|t| ["--type", *t]));
        ok(&args);
        let expected = ty.map_or("minimax-m2-bf16.gguf".to_string(), |t| format!("minimax-m2-bf16-{t}.gguf"));
        assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(&expected)).unwrap(), "hf → {expected}");
    }
    let out = dir.path().join("fp8.gguf");
    ok(&["convert", path_arg(&minimax("fp8")), "-o", path_arg(&out), "-q"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(golden("minimax-m2-fp8.gguf")).unwrap(), "fp8");
    for ty in ["Q4_K_M", "MXFP4_MOE"] {
        let out = dir.path().join(format!("fp8-{ty}.gguf"));
        ok(&["convert", path_arg(&minimax("fp8")), "-o", path_arg(&out), "--type", ty, "-q"]);
        let want = golden(&format!("minimax-m2-bf16-{ty}.gguf"));
        assert!(super::deepseek::same_gguf_except(&out, &want, &["general.name"]), "fp8 {ty}");
    }
    let gguf = moeq_formats::gguf::GgufFile::open(&golden("minimax-m2-bf16.gguf")).unwrap();
    let meta = |k: &str| gguf.header().metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(meta("general.architecture").as_str(), Some("minimax-m2"));
    assert_eq!(meta("tokenizer.ggml.pre").as_str(), Some("minimax-m2"));
    assert_eq!(meta("minimax-m2.rope.dimension_count").as_u64(), Some(16));
    assert_eq!(meta("minimax-m2.attention.key_length").as_u64(), Some(64));
    assert_eq!(meta("minimax-m2.expert_gating_func").as_u64(), Some(2));
    // ]~!b[ as BOS, [e~[ as EOS (ids 420 + 2, 4).
    assert_eq!(meta("tokenizer.ggml.bos_token_id").as_u64(), Some(422));
    assert_eq!(meta("tokenizer.ggml.eos_token_id").as_u64(), Some(424));
    let norm = gguf.header().tensors.iter().find(|t| t.name == "blk.0.attn_q_norm.weight").unwrap();
    assert_eq!(norm.ne, [256], "the q norm spans the whole projection (4 heads × 64)");
}

/// moeq's forward reproduces transformers' `MiniMaxM2ForCausalLM` on both layouts and the
/// GGUF: logits, every hidden state, and each MoE block alone on the reference's input (the
/// FP8 layout against transformers over its weights dequantized in f32).
#[test]
fn minimax_m2_eval_reproduces_the_reference() {
    for (input, reference) in [
        (minimax("hf"), "reference.safetensors"),
        (golden("minimax-m2-bf16.gguf"), "reference.safetensors"),
        (minimax("fp8"), "reference-fp8.safetensors"),
    ] {
        // Two layers, both MoE.
        assert_forward_matches_reference(&input, &minimax(reference), 3, 2, |_| false);
    }
}

/// verify: the converter's bf16 GGUF is exact against the bf16 checkpoint; every golden type
/// passes from either layout (the tiny random model's next-token distributions are fragile,
/// so the model check is a note).
#[test]
fn minimax_m2_verify_passes_the_goldens() {
    let (code, r) = verify_json(&minimax("hf"), &golden("minimax-m2-bf16.gguf"));
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
    for src in ["hf", "fp8"] {
        for ty in TYPES {
            let (code, r) = verify_json(&minimax(src), &golden(&format!("minimax-m2-bf16-{ty}.gguf")));
            assert_eq!(code, 0, "{src} {ty}: {}", r["failures"]);
            assert!(r["missing"].as_array().unwrap().is_empty() && r["extra"].as_array().unwrap().is_empty());
        }
    }
    let (code, r) = verify_json(&minimax("fp8"), &golden("minimax-m2-fp8.gguf"));
    assert_eq!(code, 0, "{}", r["failures"]);
}

/// `--format mlx` writes what `mlx_lm convert` writes from the FP8 release (every tensor byte
/// for byte, the `quantization` block): FP8 dequantized, experts under
/// `block_sparse_moe.switch_mlp`, the router in 8 bits groups of 64, the correction bias F32;
/// the BF16 layout gives the same files. mlx-lm's builds read back.
#[test]
fn minimax_m2_mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    for (src, ty, group, golden) in [
        ("fp8", "q4", "64", "minimax-m2-q4"),
        ("fp8", "q8", "32", "minimax-m2-q8"),
        ("hf", "q4", "64", "minimax-m2-q4"),
    ] {
        let dst = out.path().join(format!("{src}-{golden}"));
        let input = minimax(src);
        let args = ["convert", path_arg(&input), "-o", path_arg(&dst), "--format", "mlx", "--type", ty];
        ok(&[&args[..], &["--group-size", group, "-q"]].concat());
        let want = fixtures().join("golden-mlx").join(golden);
        let got_t = mlx_tensors_equal(&dst, &want, &format!("{src} {golden}"));
        assert_eq!(got_t["model.layers.1.block_sparse_moe.e_score_correction_bias"].0, "F32");
        assert_eq!(got_t["model.layers.1.block_sparse_moe.gate.weight"].1, [8, 192 / 4], "8 bits");
        assert!(got_t.contains_key("model.layers.1.block_sparse_moe.switch_mlp.down_proj.weight"));
        assert_eq!(config_of(&dst)["quantization"], config_of(&want)["quantization"]);
    }
    for golden in ["minimax-m2-q4", "minimax-m2-q8"] {
        let (code, r) = verify_json(&minimax("hf"), &fixtures().join("golden-mlx").join(golden));
        assert_eq!(code, 0, "{golden}: {}", r["failures"]);
        assert!(r["missing"].as_array().unwrap().is_empty(), "{}", r["missing"]);
    }
    let trace = moeq::verify::eval::eval(&fixtures().join("golden-mlx/minimax-m2-q8"), &[3, 17, 99]).unwrap();
    assert_eq!(trace.hidden.len(), 3);
}

/// Bad configs and checkpoints fail cleanly (exit 2), naming the file and the key or tensor;
/// nothing is written.
#[test]
fn minimax_m2_refuses_bad_configs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    type Edit = Box<dyn Fn(&mut Json)>;
    let remove =
        |key: &'static str| -> Edit { Box::new(move |c: &mut Json| _ = c.as_object_mut().unwrap().remove(key)) };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("hf", Box::new(|c| c["scoring_func"] = "softmax".into()), "scoring_func"),
        ("hf", remove("scoring_func"), "\"scoring_func\" is missing"),
        ("hf", remove("rotary_dim"), "rotary_dim"),
        ("hf", Box::new(|c| c["rotary_dim"] = 15.into()), "rotary_dim 15"),
        ("hf", Box::new(|c| c["rotary_dim"] = 128.into()), "rotary_dim 128"),
        ("hf", Box::new(|c| c["partial_rotary_factor"] = 0.5.into()), "partial_rotary_factor"),
        ("hf", Box::new(|c| c["use_qk_norm"] = false.into()), "use_qk_norm"),
        ("hf", Box::new(|c| c["qk_norm_type"] = "per_head".into()), "qk_norm_type"),
        ("hf", Box::new(|c| c["tie_word_embeddings"] = true.into()), "tie_word_embeddings"),
        ("hf", Box::new(|c| c["shared_intermediate_size"] = 64.into()), "shared_intermediate_size"),
        ("hf", Box::new(|c| c["attn_type_list"] = serde_json::json!([1, 0])), "attn_type_list[1]"),
        ("hf", remove("head_dim"), "\"head_dim\" is missing"),
        ("hf", remove("num_local_experts"), "num_local_experts"),
        ("hf", Box::new(|c| c["num_experts_per_tok"] = 9.into()), "num_experts_per_tok"),
        ("hf", Box::new(|c| c["hidden_act"] = "gelu".into()), "hidden_act"),
        ("hf", Box::new(|c| c["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0})), "yarn"),
        ("fp8", Box::new(|c| c["quantization_config"]["fmt"] = "e5m2".into()), "e5m2"),
        ("fp8", Box::new(|c| c["quantization_config"]["weight_block_size"] = 128.into()), "weight_block_size"),
    ];
    for (i, (src, edit, key)) in cases.into_iter().enumerate() {
        let bad = edited_checkpoint(&dir.path().join(i.to_string()), &format!("minimax-m2/{src}"), edit);
        for args in
            [vec!["convert", path_arg(&bad), "-o", path_arg(&out)], vec!["eval", path_arg(&bad), "--tokens", "1,2"]]
        {
            let err = fails(&args);
            assert!(err.contains(key) && err.contains("config.json"), "{key}: {err}");
        }
    }
    // A missing tensor, an unknown one, and an FP8 weight without its scales are named.
    let src = minimax("hf");
    for (what, drop, rename) in [
        ("missing", "model.layers.1.block_sparse_moe.e_score_correction_bias", None),
        ("unknown", "", Some(("model.layers.1.self_attn.k_norm.weight", "model.layers.1.self_attn.x_norm.weight"))),
    ] {
        let broken = dir.path().join(what);
        std::fs::create_dir(&broken).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), broken.join(f)).unwrap();
        }
        rewrite_safetensors(&src.join("model.safetensors"), &broken.join("model.safetensors"), |name, _, _| {
            name != drop
        });
        if let Some((from, to)) = rename {
            let mut bytes = std::fs::read(broken.join("model.safetensors")).unwrap();
            let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
            std::fs::write(broken.join("model.safetensors"), bytes).unwrap();
        }
        let err = fails(&["convert", path_arg(&broken), "-o", path_arg(&out)]);
        let named = rename.map_or(drop, |(_, to)| to);
        assert!(err.contains(named), "{what}: {err}");
    }
    let scales = "model.layers.0.self_attn.q_proj.weight_scale_inv";
    let variant = fixture_variant(&minimax("fp8"), "model-00001-of-00002.safetensors", |n, _, _| n != scales, |_| {});
    let index = variant.path().join("model.safetensors.index.json");
    let mut map: Json = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    map["weight_map"].as_object_mut().unwrap().remove(scales).unwrap();
    std::fs::write(&index, serde_json::to_vec(&map).unwrap()).unwrap();
    let err = fails(&["convert", path_arg(variant.path()), "-o", path_arg(&out)]);
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("without its block scales"),
        "{err}"
    );
    assert!(!out.exists());
}

/// verify catches what is MiniMax-M2's own in a broken output, naming the tensor: the
/// correction bias zeroed (the routing changes), a whole-projection q or k norm zeroed, the
/// router zeroed.
#[test]
fn minimax_m2_verify_catches_broken_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let zero = |tensor: &'static str| {
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let (at, n) = range(tensor);
            bytes[at..at + n].fill(0);
        }
    };
    for (i, (tensor, layer)) in [
        ("blk.1.exp_probs_b.bias", Some(1)),
        ("blk.0.attn_q_norm.weight", None),
        ("blk.1.attn_k_norm.weight", None),
        ("blk.0.ffn_gate_inp.weight", Some(0)),
    ]
    .into_iter()
    .enumerate()
    {
        let output = patched(dir.path(), "minimax-m2-bf16.gguf", &format!("minimax-broken-{i}"), zero(tensor));
        let (code, r) = verify_json(&minimax("hf"), &output);
        assert_eq!(code, 1, "{tensor}: passed: {r}");
        assert!(r["failures"].to_string().contains(tensor), "{tensor} not named in {}", r["failures"]);
        assert!(r["model"]["kl_max"].as_f64() > Some(1e-3), "{tensor}: {}", r["model"]);
        if let Some(l) = layer {
            assert!(r["blocks"][l]["routing_agreement"].as_f64() < Some(0.95), "{tensor}: {}", r["blocks"][l]);
        }
    }
}
