//! GLM-4.5 / GLM-4.6 MoE end to end: the fixtures (`tests/fixtures/glm4-moe`, made by
//! `scripts/make_glm4_moe_fixtures.py` with transformers' own classes) against llama.cpp's
//! converter and llama-quantize (`golden/glm4-moe*`), mlx-lm (`golden-mlx/glm4-moe*`) and
//! transformers' forward (`reference*.safetensors`).

use super::*;

/// The golden `--type`s (llama-quantize of llama.cpp's bf16 GGUF).
const TYPES: [&str; 4] = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"];
/// Fixture folder → golden name: GLM-4.5-Air's form, and GLM-4.6's (q/k norms, MTP layer without
/// its own embedding and head).
const VARIANTS: [(&str, &str); 2] = [("hf", "glm4-moe"), ("hf-qknorm", "glm4-moe-qknorm")];

fn glm(path: &str) -> PathBuf {
    fixtures().join("glm4-moe").join(path)
}

/// Both forms convert to exactly what llama.cpp's converter writes (the MTP layer exported as
/// block 3 with its `nextn.*` tensors, `rope.dimension_count` from `partial_rotary_factor`,
/// the expert groups, `_set_vocab_glm`'s special tokens) and, with `--type`, to what
/// llama-quantize makes of that, in one pass; GGUF → GGUF requantizes the same.
#[test]
fn glm4_moe_converts_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for (src, name) in VARIANTS {
        let input = glm(src);
        for ty in std::iter::once(None).chain(TYPES.map(Some)) {
            let out = dir.path().join(format!("{name}-{ty:?}.gguf"));
            let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
            args.extend(ty.iter().flat_map(|t| ["--type", *t]));
            ok(&args);
            let expected = match ty {
                None => format!("{name}-bf16.gguf"),
                Some(t) => format!("{name}-bf16-{t}.gguf"),
            };
            assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(&expected)).unwrap(), "{src} → {expected}");
        }
    }
    for ty in ["Q4_K_M", "MXFP4_MOE"] {
        let out = dir.path().join(format!("requantized-{ty}.gguf"));
        ok(&["convert", path_arg(&golden("glm4-moe-bf16.gguf")), "-o", path_arg(&out), "--type", ty, "-q"]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(&format!("glm4-moe-bf16-{ty}.gguf"))).unwrap());
    }
    let gguf = moeq_formats::gguf::GgufFile::open(&golden("glm4-moe-bf16.gguf")).unwrap();
    let meta = |k: &str| gguf.header().metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(meta("tokenizer.ggml.pre").as_str(), Some("glm4"));
    // [gMASK] as BOS, <|user|> as EOT, <|observation|> as EOM (ids 420 + 2, 7, 9).
    let ids: Vec<u64> = ["bos", "eot", "eom", "eos"]
        .iter()
        .map(|t| meta(&format!("tokenizer.ggml.{t}_token_id")).as_u64().unwrap())
        .collect();
    assert_eq!(ids, [422, 427, 429, 420]);
    assert_eq!(meta("glm4moe.block_count").as_u64(), Some(4));
    assert_eq!(meta("glm4moe.nextn_predict_layers").as_u64(), Some(1));
    assert_eq!(meta("glm4moe.rope.dimension_count").as_u64(), Some(16));
    assert!(gguf.header().tensors.iter().any(|t| t.name == "blk.3.nextn.eh_proj.weight"));
}

/// moeq's forward reproduces transformers' `Glm4MoeForCausalLM` on both forms and their GGUFs
/// (the MTP block in the GGUF is not run): logits, every hidden state, and each feed-forward
/// block alone on the reference's input (layer 0 dense, then MoE with shared experts).
#[test]
fn glm4_moe_eval_reproduces_the_reference() {
    for (input, reference) in [
        (glm("hf"), "reference.safetensors"),
        (golden("glm4-moe-bf16.gguf"), "reference.safetensors"),
        (glm("hf-qknorm"), "reference-qknorm.safetensors"),
        (golden("glm4-moe-qknorm-bf16.gguf"), "reference-qknorm.safetensors"),
    ] {
        // Three layers run (layer 0 dense), the MTP block not.
        assert_forward_matches_reference(&input, &glm(reference), 4, 3, |n| n == 0);
    }
}

/// verify: the converter's bf16 GGUF is exact; every golden type is within its bounds (the
/// tiny random model's next-token distributions are fragile, so the model check is a note).
#[test]
fn glm4_moe_verify_passes_the_goldens() {
    for (src, name) in VARIANTS {
        let (code, r) = verify_json(&glm(src), &golden(&format!("{name}-bf16.gguf")));
        assert_eq!(code, 0, "{}", r["failures"]);
        assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
        assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
        for ty in TYPES {
            let (code, r) = verify_json(&glm(src), &golden(&format!("{name}-bf16-{ty}.gguf")));
            assert_eq!(code, 0, "{name} {ty}: {}", r["failures"]);
            assert!(r["missing"].as_array().unwrap().is_empty() && r["extra"].as_array().unwrap().is_empty());
        }
    }
}

/// `--format mlx` writes what `mlx_lm convert` writes (every tensor byte for byte, the
/// `quantization` block): the router never quantized, its correction bias F32, the MTP layer
/// dropped as mlx-lm's sanitize drops it; mlx-lm's build reads back (its MTP block missing is
/// no defect).
#[test]
fn glm4_moe_mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    for (ty, group, golden) in [("q4", "64", "glm4-moe-q4"), ("q8", "32", "glm4-moe-q8")] {
        let dst = out.path().join(golden);
        let input = glm("hf");
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
        assert!(!got_t.keys().any(|k| k.starts_with("model.layers.3.")));
        assert_eq!(config_of(&dst)["quantization"], config_of(&want)["quantization"]);
    }
    let (code, r) = verify_json(&glm("hf"), &fixtures().join("golden-mlx/glm4-moe-q8"));
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["missing"].as_array().unwrap().is_empty(), "{}", r["missing"]);
    let trace = moeq::verify::eval::eval(&fixtures().join("golden-mlx/glm4-moe-q8"), &[3, 17, 99]).unwrap();
    assert_eq!(trace.hidden.len(), 4);
}

/// Bad configs and checkpoints fail cleanly (exit 2), naming the file and the key or tensor;
/// nothing is written.
#[test]
fn glm4_moe_refuses_bad_configs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    type Edit = Box<dyn Fn(&mut Json)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c["scoring_func"] = "softmax".into()), "scoring_func"),
        (Box::new(|c| c["partial_rotary_factor"] = 0.01.into()), "partial_rotary_factor"),
        (Box::new(|c| c["n_group"] = 3.into()), "n_group"),
        (Box::new(|c| c["norm_topk_prob"] = "yes".into()), "norm_topk_prob"),
        (Box::new(|c| c.as_object_mut().unwrap().remove("n_routed_experts").map(|_| ()).unwrap()), "n_routed_experts"),
        (Box::new(|c| c["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0})), "yarn"),
        (Box::new(|c| c["first_k_dense_replace"] = 9.into()), "first_k_dense_replace"),
        // Tied, yet with its own lm_head: transformers' logits come from embed_tokens, llama.cpp's
        // from the output.weight written from lm_head.
        (Box::new(|c| c["tie_word_embeddings"] = true.into()), "tie_word_embeddings"),
        // The checkpoint's MTP layer (model.layers.3) not counted by the config.
        (Box::new(|c| c["num_nextn_predict_layers"] = 0.into()), "num_nextn_predict_layers"),
        // The fixture's q/k norms, dense layer 0 and q/k/v biases against config keys saying otherwise.
        (Box::new(|c| c["use_qk_norm"] = false.into()), "use_qk_norm"),
        (Box::new(|c| c["first_k_dense_replace"] = 0.into()), "first_k_dense_replace"),
        (Box::new(|c| c["attention_bias"] = false.into()), "attention_bias"),
        (
            Box::new(|c| c.as_object_mut().unwrap().remove("num_nextn_predict_layers").map(|_| ()).unwrap()),
            "num_nextn_predict_layers",
        ),
    ];
    for (i, (edit, key)) in cases.into_iter().enumerate() {
        let bad = edited_checkpoint(&dir.path().join(i.to_string()), "glm4-moe/hf-qknorm", edit);
        for args in
            [vec!["convert", path_arg(&bad), "-o", path_arg(&out)], vec!["eval", path_arg(&bad), "--tokens", "1,2"]]
        {
            let err = fails(&args);
            assert!(err.contains(key) && err.contains("config.json"), "{key}: {err}");
        }
    }
    // A missing tensor of the MTP layer, and an unknown one, are named.
    let src = glm("hf-qknorm");
    for (what, drop, rename) in [
        ("missing", "model.layers.3.eh_proj.weight", None),
        ("unknown", "", Some(("model.layers.3.hnorm.weight", "model.layers.3.xnorm.weight"))),
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
            let bytes = std::fs::read(broken.join("model.safetensors")).unwrap();
            let text = bytes.iter().position(|&b| b == b'{').unwrap();
            let mut bytes = bytes;
            let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
            assert!(at > text);
            bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
            std::fs::write(broken.join("model.safetensors"), bytes).unwrap();
        }
        let err = fails(&["convert", path_arg(&broken), "-o", path_arg(&out)]);
        let named = if what == "missing" { "model.layers.3.eh_proj.weight" } else { "model.layers.3.xnorm.weight" };
        assert!(err.contains(named), "{what}: {err}");
    }
    assert!(!out.exists());
}

/// verify catches what is GLM's own in a broken output, naming the tensor: the correction bias
/// zeroed (the routing changes), a shared expert dropped, the q bias zeroed, a q norm changed;
/// a changed MTP block is named as a tensor difference though the forward does not run it.
#[test]
fn glm4_moe_verify_catches_broken_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let zero = |tensor: &'static str| {
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let (at, n) = range(tensor);
            bytes[at..at + n].fill(0);
        }
    };
    let cases = [
        ("hf", "glm4-moe-bf16.gguf", "blk.1.exp_probs_b.bias", Some(1)),
        ("hf", "glm4-moe-bf16.gguf", "blk.2.ffn_down_shexp.weight", Some(2)),
        ("hf", "glm4-moe-bf16.gguf", "blk.0.attn_q.bias", None),
        ("hf-qknorm", "glm4-moe-qknorm-bf16.gguf", "blk.1.attn_q_norm.weight", None),
        ("hf", "glm4-moe-bf16.gguf", "blk.3.nextn.eh_proj.weight", None),
    ];
    for (i, (src, name, tensor, layer)) in cases.into_iter().enumerate() {
        let output = patched(dir.path(), name, &format!("glm-broken-{i}"), zero(tensor));
        let (code, r) = verify_json(&glm(src), &output);
        assert_eq!(code, 1, "{tensor}: passed: {r}");
        assert!(r["failures"].to_string().contains(tensor), "{tensor} not named in {}", r["failures"]);
        if tensor.starts_with("blk.3.") {
            // Not part of the forward: the model itself is unchanged.
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
