//! GLM-4.7-Flash end to end: the fixture (`tests/fixtures/glm4-moe-lite`, made by
//! `scripts/make_glm4_moe_lite_fixtures.py` with transformers' own classes) against llama.cpp's
//! converter and llama-quantize (`golden/glm4-moe-lite*`), mlx-lm (`golden-mlx/glm4-moe-lite*`)
//! and transformers' forward (`reference.safetensors`).

use super::*;

/// The golden `--type`s (llama-quantize of llama.cpp's bf16 GGUF).
const TYPES: [&str; 4] = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"];

fn lite(path: &str) -> PathBuf {
    fixtures().join("glm4-moe-lite").join(path)
}

/// A copy of the fixture checkpoint with its `config.json` edited.
fn edited(dir: &Path, edit: impl FnOnce(&mut Json)) -> PathBuf {
    let out = dir.join("glm4-moe-lite");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(lite("hf")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    let mut config = config_of(&out);
    edit(&mut config);
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    out
}

/// The checkpoint converts to exactly what llama.cpp's converter writes (`deepseek2` with
/// `kv_b_proj` split, the MTP layer exported as block 3 with its `nextn.*` tensors and
/// `nextn_predict_layers`, `_set_vocab_glm`'s special tokens) and, with `--type`, to what
/// llama-quantize makes of that; GGUF → GGUF requantizes the same.
#[test]
fn glm4_moe_lite_converts_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let input = lite("hf");
    for ty in std::iter::once(None).chain(TYPES.map(Some)) {
        let out = dir.path().join(format!("lite-{ty:?}.gguf"));
        let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
        args.extend(ty.iter().flat_map(|t| ["--type", *t]));
        ok(&args);
        let expected = match ty {
            None => "glm4-moe-lite-bf16.gguf".to_string(),
            Some(t) => format!("glm4-moe-lite-bf16-{t}.gguf"),
        };
        assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(&expected)).unwrap(), "→ {expected}");
    }
    let out = dir.path().join("requantized.gguf");
    ok(&["convert", path_arg(&golden("glm4-moe-lite-bf16.gguf")), "-o", path_arg(&out), "--type", "Q4_K_M", "-q"]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(golden("glm4-moe-lite-bf16-Q4_K_M.gguf")).unwrap());
    let gguf = moeq_formats::gguf::GgufFile::open(&golden("glm4-moe-lite-bf16.gguf")).unwrap();
    let meta = |k: &str| gguf.header().metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(meta("general.architecture").unwrap().as_str(), Some("deepseek2"));
    assert_eq!(meta("tokenizer.ggml.pre").unwrap().as_str(), Some("glm4"));
    let ids: Vec<u64> = ["bos", "eot", "eom", "eos"]
        .iter()
        .map(|t| meta(&format!("tokenizer.ggml.{t}_token_id")).unwrap().as_u64().unwrap())
        .collect();
    assert_eq!(ids, [422, 427, 429, 420]);
    assert_eq!(meta("deepseek2.block_count").unwrap().as_u64(), Some(4));
    assert_eq!(meta("deepseek2.nextn_predict_layers").unwrap().as_u64(), Some(1));
    assert_eq!(meta("deepseek2.expert_gating_func").unwrap().as_u64(), Some(2));
    assert!(gguf.header().tensors.iter().any(|t| t.name == "blk.3.nextn.eh_proj.weight"));
    assert!(gguf.header().tensors.iter().any(|t| t.name == "blk.3.attn_k_b.weight"));
}

/// moeq's forward (DeepSeek-V3's) reproduces transformers' `Glm4MoeLiteForCausalLM` on the
/// checkpoint and its GGUF (the MTP block not run): logits, every hidden state, and each
/// feed-forward block alone on the reference's input.
#[test]
fn glm4_moe_lite_eval_reproduces_the_reference() {
    for input in [lite("hf"), golden("glm4-moe-lite-bf16.gguf")] {
        // Three layers run (layer 0 dense), the MTP block not.
        assert_forward_matches_reference(&input, &lite("reference.safetensors"), 4, 3, |n| n == 0);
    }
}

/// verify: the converter's bf16 GGUF is exact; every golden type is within its bounds.
#[test]
fn glm4_moe_lite_verify_passes_the_goldens() {
    let (code, r) = verify_json(&lite("hf"), &golden("glm4-moe-lite-bf16.gguf"));
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
    for ty in TYPES {
        let (code, r) = verify_json(&lite("hf"), &golden(&format!("glm4-moe-lite-bf16-{ty}.gguf")));
        assert_eq!(code, 0, "{ty}: {}", r["failures"]);
        assert!(r["missing"].as_array().unwrap().is_empty() && r["extra"].as_array().unwrap().is_empty());
    }
}

/// Bad configs fail cleanly (exit 2), naming the file and the key; nothing is written. A
/// missing MTP tensor is named.
#[test]
fn glm4_moe_lite_refuses_bad_configs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    type Edit = Box<dyn Fn(&mut Json)>;
    let cases: Vec<(Edit, &str)> = vec![
        // Without scoring_func llama.cpp routes a model of this size by softmax.
        (Box::new(|c| c.as_object_mut().unwrap().remove("scoring_func").map(|_| ()).unwrap()), "scoring_func"),
        (Box::new(|c| c["scoring_func"] = "softmax".into()), "scoring_func"),
        (Box::new(|c| c["partial_rotary_factor"] = 0.5.into()), "partial_rotary_factor"),
        (Box::new(|c| c["rope_interleave"] = false.into()), "rope_interleave"),
        (Box::new(|c| c["first_k_dense_replace"] = 2.into()), "first_k_dense_replace"),
        (Box::new(|c| c["mlp_layer_types"] = serde_json::json!(["dense", "dense", "sparse"])), "mlp_layer_types"),
        (Box::new(|c| c["q_lora_rank"] = Json::Null), "q_lora_rank"),
        (Box::new(|c| c["num_key_value_heads"] = 1.into()), "num_key_value_heads"),
    ];
    for (i, (edit, key)) in cases.into_iter().enumerate() {
        let bad = edited(&dir.path().join(i.to_string()), edit);
        for args in
            [vec!["convert", path_arg(&bad), "-o", path_arg(&out)], vec!["eval", path_arg(&bad), "--tokens", "1,2"]]
        {
            let err = fails(&args);
            assert!(err.contains(key) && err.contains("config.json"), "{key}: {err}");
        }
    }
    let src = lite("hf");
    let broken = dir.path().join("missing");
    std::fs::create_dir(&broken).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        if p.file_name().unwrap() != "model-00002-of-00002.safetensors" {
            std::fs::copy(&p, broken.join(p.file_name().unwrap())).unwrap();
        }
    }
    let shard = "model-00002-of-00002.safetensors";
    rewrite_safetensors(&src.join(shard), &broken.join(shard), |name, _, _| name != "model.layers.3.hnorm.weight");
    let err = fails(&["convert", path_arg(&broken), "-o", path_arg(&out)]);
    assert!(err.contains("model.layers.3.hnorm.weight"), "{err}");
    assert!(!out.exists());
}

/// verify catches a broken output, naming the tensor: the correction bias zeroed (the
/// routing changes), a shared expert dropped, the kv latent's norm zeroed, `attn_k_b` zeroed;
/// a changed MTP block is named though the forward does not run it.
#[test]
fn glm4_moe_lite_verify_catches_broken_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let zero = |tensor: &'static str| {
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let (at, n) = range(tensor);
            bytes[at..at + n].fill(0);
        }
    };
    let cases = [
        ("blk.1.exp_probs_b.bias", Some(1)),
        ("blk.2.ffn_down_shexp.weight", Some(2)),
        ("blk.0.attn_kv_a_norm.weight", None),
        ("blk.1.attn_k_b.weight", None),
        ("blk.3.nextn.eh_proj.weight", None),
    ];
    for (i, (tensor, layer)) in cases.into_iter().enumerate() {
        let output = patched(dir.path(), "glm4-moe-lite-bf16.gguf", &format!("lite-broken-{i}"), zero(tensor));
        let (code, r) = verify_json(&lite("hf"), &output);
        assert_eq!(code, 1, "{tensor}: passed: {r}");
        assert!(r["failures"].to_string().contains(tensor), "{tensor} not named in {}", r["failures"]);
        if tensor.starts_with("blk.3.") {
            assert_eq!(r["model"]["kl_max"].as_f64(), Some(0.0), "{}", r["model"]);
            continue;
        }
        assert!(r["model"]["kl_max"].as_f64() > Some(1e-3), "{tensor}: {}", r["model"]);
        if let Some(l) = layer {
            assert!(r["blocks"][l]["rel_err"].as_f64() > Some(0.02), "{tensor}: {}", r["blocks"][l]);
        }
        if tensor.ends_with("exp_probs_b.bias") {
            assert!(r["blocks"][1]["routing_agreement"].as_f64() < Some(0.95), "{}", r["blocks"][1]);
        }
    }
}

/// `--format mlx` writes what `mlx_lm convert` writes (mlx-lm's `glm4_moe_lite`: every tensor
/// byte for byte, the `quantization` block): `kv_b_proj` as `embed_q`/`unembed_out`, the router
/// never quantized, its correction bias F32, the MTP layer dropped; mlx-lm's build reads back.
#[test]
fn glm4_moe_lite_mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    for (ty, group, golden) in [("q4", "64", "glm4-moe-lite-q4"), ("q8", "32", "glm4-moe-lite-q8")] {
        let dst = out.path().join(golden);
        let input = lite("hf");
        ok(&[
            "convert",
            path_arg(&input),
            "-o",
            path_arg(&dst),
            "--format",
            "mlx",
            "--type",
            ty,
            "--group-size",
            group,
            "-q",
        ]);
        let want = fixtures().join("golden-mlx").join(golden);
        let got_t = mlx_tensors_equal(&dst, &want, golden);
        assert_eq!(got_t["model.layers.1.mlp.gate.e_score_correction_bias"].0, "F32");
        assert_eq!(got_t["model.layers.1.mlp.gate.weight"].0, "BF16");
        assert!(got_t.contains_key("model.layers.1.self_attn.embed_q.weight"));
        assert!(!got_t.keys().any(|k| k.starts_with("model.layers.3.")));
        assert_eq!(config_of(&dst)["quantization"], config_of(&want)["quantization"]);
    }
    let (code, r) = verify_json(&lite("hf"), &fixtures().join("golden-mlx/glm4-moe-lite-q8"));
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["missing"].as_array().unwrap().is_empty(), "{}", r["missing"]);
    let trace = moeq::verify::eval::eval(&fixtures().join("golden-mlx/glm4-moe-lite-q8"), &[3, 17, 99]).unwrap();
    assert_eq!(trace.hidden.len(), 4);
}
