//! Qwen3-MoE and Qwen2-MoE end to end: the fixtures (`tests/fixtures/qwen3-moe`, `qwen2-moe`,
//! made by `scripts/make_qwen_fixtures.py` with transformers' own classes) against llama.cpp's
//! converter and llama-quantize (`golden/qwen*`), mlx-lm (`golden-mlx/qwen*`) and
//! transformers' forward (`reference.safetensors`).

use super::*;

/// Each family's golden `--type`s (written by llama-quantize from llama.cpp's bf16 GGUF).
const TYPES: [&str; 6] = ["Q8_0", "Q4_0", "Q4_1", "Q5_K_M", "Q4_K_M", "MXFP4_MOE"];
const FAMILIES: [&str; 2] = ["qwen3-moe", "qwen2-moe"];

/// The checkpoints convert to exactly what llama.cpp's converter writes (tensors, order, types,
/// every metadata key, the vocabulary with pre-tokenizer `qwen2`, the chat template) and, with
/// `--type`, to what llama-quantize makes of that, in one pass.
#[test]
fn qwen_checkpoints_convert_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let input = fixtures().join(family).join("hf");
        for ty in std::iter::once(None).chain(TYPES.map(Some)) {
            let out = dir.path().join(format!("{family}-{ty:?}.gguf"));
            let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
            args.extend(ty.iter().flat_map(|t| ["--type", *t]));
            ok(&args);
            let expected = match ty {
                None => format!("{family}-bf16.gguf"),
                Some(t) => format!("{family}-bf16-{t}.gguf"),
            };
            assert!(std::fs::read(&out).unwrap() == std::fs::read(golden(&expected)).unwrap(), "{family} → {expected}");
        }
    }
    // The vocabulary is what the converter wrote: byte-level BPE with `qwen2` pre-tokenization,
    // the added tokens typed (control, user-defined), the padding ids, the chat template.
    let gguf = moeq_formats::gguf::GgufFile::open(&golden("qwen3-moe-bf16.gguf")).unwrap();
    let meta = |k: &str| gguf.header().metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(meta("tokenizer.ggml.pre").and_then(|v| v.as_str().map(str::to_string)).as_deref(), Some("qwen2"));
    assert!(meta("tokenizer.chat_template").is_some());
}

/// What no GGUF can hold is refused for GGUF, with the reason, and nothing is written: a
/// Qwen3-MoE with a dense layer (llama.cpp's converter cannot name its tensors: "Can not map
/// tensor 'model.layers.0.mlp.down_proj.weight'"), Qwen3-MoE without `norm_topk_prob`
/// (llama.cpp always renormalizes), a tied Qwen2-MoE (llama.cpp's qwen2moe requires
/// `output.weight`). Qwen2-MoE settings mlx-lm does not run either are refused everywhere.
#[test]
fn qwen_configs_no_gguf_holds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let dense = fixtures().join("qwen3-moe/hf-dense");
    let err = fails(&["convert", path_arg(&dense), "-o", path_arg(&out)]);
    assert!(err.contains("layers [0] are dense") && err.contains("--format mlx"), "{err}");
    assert!(err.contains("hf-dense/config.json"), "{err}");
    let step = edited_checkpoint(dir.path(), "qwen3-moe/hf", |c| c["decoder_sparse_step"] = 2.into());
    let err = fails(&["convert", path_arg(&step), "-o", path_arg(&out)]);
    assert!(err.contains("layers [0] are dense"), "{err}");
    // For MLX, the step makes layer 0 dense, but the checkpoint holds experts there: named.
    let err = fails(&["convert", path_arg(&step), "-o", path_arg(&dir.path().join("mlx")), "--format", "mlx"]);
    assert!(err.contains("model.layers.0.mlp.experts.0.down_proj.weight"), "{err}");
    let unnormalized = edited_checkpoint(dir.path(), "qwen3-moe/hf", |c| c["norm_topk_prob"] = false.into());
    let err = fails(&["convert", path_arg(&unnormalized), "-o", path_arg(&out)]);
    assert!(err.contains("norm_topk_prob is false") && err.contains("always renormalizes"), "{err}");
    let tied = edited_checkpoint(dir.path(), "qwen2-moe/hf", |c| c["tie_word_embeddings"] = true.into());
    let err = fails(&["convert", path_arg(&tied), "-o", path_arg(&out)]);
    assert!(err.contains("tie_word_embeddings is true") && err.contains("output.weight"), "{err}");
    let normalized = edited_checkpoint(dir.path(), "qwen2-moe/hf", |c| c["norm_topk_prob"] = true.into());
    for format in ["gguf", "mlx"] {
        let err = fails(&["convert", path_arg(&normalized), "-o", path_arg(&out), "--format", format]);
        assert!(err.contains("norm_topk_prob is true"), "{err}");
    }
    let err = fails(&["eval", path_arg(&normalized), "--tokens", "1,2"]);
    assert!(err.contains("norm_topk_prob is true"), "{err}");
    assert!(!out.exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| e.unwrap().path().is_dir()), "nothing but the inputs");
    // Wrong shapes and missing experts are named.
    let missing = dir.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    let src = fixtures().join("qwen2-moe/hf");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), missing.join(f)).unwrap();
    }
    rewrite_safetensors(&src.join("model.safetensors"), &missing.join("model.safetensors"), |name, _, _| {
        name != "model.layers.1.mlp.experts.2.up_proj.weight"
    });
    let err = fails(&["convert", path_arg(&missing), "-o", path_arg(&out)]);
    assert!(err.contains("model.layers.1.mlp.experts.2.up_proj.weight") && err.contains("missing"), "{err}");
    let shexp = dir.path().join("shexp");
    std::fs::create_dir(&shexp).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), shexp.join(f)).unwrap();
    }
    rewrite_safetensors(&src.join("model.safetensors"), &shexp.join("model.safetensors"), |name, header, _| {
        if name == "model.layers.0.mlp.shared_expert_gate.weight" {
            header["shape"] = serde_json::json!([64]);
        }
        true
    });
    let err = fails(&["convert", path_arg(&shexp), "-o", path_arg(&out)]);
    assert!(err.contains("model.layers.0.mlp.shared_expert_gate.weight") && err.contains("[1, 64]"), "{err}");
    assert!(!out.exists());
}

/// llama-quantize writes every tensor with ggml's dimension count: trailing dimensions of 1
/// are dropped. llama.cpp's converter writes Qwen2-MoE's shared-expert gate as [64, 1], which
/// llama-quantize writes as [64]; moeq follows for every tensor of every family.
#[test]
fn requantizing_drops_trailing_unit_dimensions_in_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let shape = |path: &Path, name: &str| {
        let f = moeq_formats::gguf::GgufFile::open(path).unwrap();
        f.header().tensors.iter().find(|t| t.name == name).unwrap().ne.clone()
    };
    let gate = "blk.0.ffn_gate_inp_shexp.weight";
    assert_eq!(shape(&golden("qwen2-moe-bf16.gguf"), gate), vec![64, 1]);
    for ty in ["Q4_K_M", "Q8_0", "F16"] {
        let out = dir.path().join(format!("qwen2-{ty}.gguf"));
        ok(&["convert", path_arg(&golden("qwen2-moe-bf16.gguf")), "-o", path_arg(&out), "--type", ty, "-q"]);
        assert_eq!(shape(&out, gate), vec![64], "{ty}");
        if let Some(t) = TYPES.iter().find(|t| **t == ty) {
            assert!(
                std::fs::read(&out).unwrap() == std::fs::read(golden(&format!("qwen2-moe-bf16-{t}.gguf"))).unwrap()
            );
        }
    }
    // Another family's tensor with unit dimensions: the same rule, the same bytes as the golden.
    let mixtral = edited_golden(dir.path(), "mixtral-bf16.gguf", "unit-dims", |p| {
        let t = p.tensors.iter_mut().find(|t| t.name == "blk.1.ffn_norm.weight").unwrap();
        t.ne = vec![64, 1, 1];
    });
    let out = dir.path().join("mixtral-Q8_0.gguf");
    ok(&["convert", path_arg(&mixtral), "-o", path_arg(&out), "--type", "Q8_0", "-q"]);
    assert_eq!(shape(&out, "blk.1.ffn_norm.weight"), vec![64]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(golden("mixtral-bf16-Q8_0.gguf")).unwrap());
    // And verify compares the two shapes as one.
    let (code, r) = verify_json(&fixtures().join("qwen2-moe/hf"), &golden("qwen2-moe-bf16-Q8_0.gguf"));
    assert_eq!(code, 0, "{}", r["failures"]);
    let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == gate).unwrap();
    assert_eq!(t["identical"], true, "{t}");
}

/// moeq's forward reproduces transformers' on the checkpoints and llama.cpp's GGUFs of them:
/// logits, hidden states, and each MoE block (routed experts, and Qwen2-MoE's gated shared
/// expert) from the reference's own input; also Qwen3-MoE with a dense layer.
#[test]
fn qwen_eval_reproduces_the_reference_forward() {
    let cases = [
        ("qwen3-moe/reference", "qwen3-moe/hf"),
        ("qwen3-moe/reference", "golden/qwen3-moe-bf16.gguf"),
        ("qwen3-moe/reference-dense", "qwen3-moe/hf-dense"),
        ("qwen2-moe/reference", "qwen2-moe/hf"),
        ("qwen2-moe/reference", "golden/qwen2-moe-bf16.gguf"),
    ];
    for (reference, input) in cases {
        let reference = fixtures().join(format!("{reference}.safetensors"));
        let tokens: Vec<u32> = st_tensor(&reference, "tokens").iter().map(|&t| t as u32).collect();
        let path = fixtures().join(input);
        let trace = moeq::verify::eval::eval(&path, &tokens).unwrap();
        let mut checked = vec![("logits".to_string(), rel_l2(&trace.logits, &st_tensor(&reference, "logits")))];
        for (n, h) in trace.hidden.iter().enumerate() {
            checked.push((format!("hidden.{n}"), rel_l2(h, &st_tensor(&reference, &format!("hidden.{n}")))));
        }
        let source = moeq::source::Source::open(&path).unwrap();
        let weights = moeq::model::weights::Weights::new(&source, &path).unwrap();
        let model = moeq::forward::Model::new(&weights).unwrap();
        let file = moeq_formats::safetensors::SafetensorsFile::open(&reference).unwrap();
        let mut blocks = 0;
        for n in 0..trace.moe_in.len() {
            if !file.tensors().iter().any(|t| t.name == format!("moe_in.{n}")) {
                continue; // a dense layer
            }
            let x: Vec<f32> = st_tensor(&reference, &format!("moe_in.{n}")).iter().map(|&v| v as f32).collect();
            let (out, routes) = model.ffn(n, &x).unwrap();
            assert!(routes.iter().all(|r| r.len() == 2), "{input}: top-2 routing");
            checked.push((format!("moe_out.{n}"), rel_l2(&out, &st_tensor(&reference, &format!("moe_out.{n}")))));
            blocks += 1;
        }
        assert_eq!(blocks, if input.contains("dense") { 1 } else { 2 }, "{input}");
        for (name, err) in checked {
            assert!(err <= 1e-4, "{input}: {name} relative L2 {err:e}");
        }
    }
}

/// verify: exact for the lossless conversions (every layer and the head taken from the
/// source's run), within its limits for llama-quantize's types, and failing loudly, naming the
/// tensor, on corrupted outputs: Qwen2-MoE's shared expert zeroed, left out or its gate zeroed,
/// its q bias zeroed; Qwen3-MoE's q/k norms zeroed or left out (all ones), two experts swapped.
#[test]
fn qwen_verify_is_exact_and_catches_broken_outputs() {
    for family in FAMILIES {
        let source = fixtures().join(family).join("hf");
        let (code, r) = verify_json(&source, &golden(&format!("{family}-bf16.gguf")));
        assert_eq!(code, 0, "{family}: {}", r["failures"]);
        assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true), "{family}");
        assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
        assert_eq!(r["model"]["reused_layers"], serde_json::json!([0, 1]), "{family}");
        assert_eq!(r["model"]["reused_head"], true, "{family}");
        for ty in ["Q8_0", "Q4_K_M", "MXFP4_MOE"] {
            let (code, r) = verify_json(&source, &golden(&format!("{family}-bf16-{ty}.gguf")));
            assert_eq!(code, 0, "{family} {ty}: {}", r["failures"]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let fill = |tensor: &'static str, value: f32| {
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let (at, n) = range(tensor);
            for v in bytes[at..at + n].chunks_exact_mut(4) {
                v.copy_from_slice(&value.to_le_bytes());
            }
        }
    };
    let zero_bf16 = |tensor: &'static str| {
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let (at, n) = range(tensor);
            bytes[at..at + n].fill(0);
        }
    };
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "qwen2-moe/hf",
            patched(dir.path(), "qwen2-moe-bf16.gguf", "broken-1", zero_bf16("blk.0.ffn_down_shexp.weight")),
            "blk.0.ffn_down_shexp.weight",
        ),
        (
            "qwen2-moe/hf",
            patched(dir.path(), "qwen2-moe-bf16.gguf", "broken-2", fill("blk.1.ffn_gate_inp_shexp.weight", 0.0)),
            "blk.1.ffn_gate_inp_shexp.weight",
        ),
        (
            "qwen2-moe/hf",
            patched(dir.path(), "qwen2-moe-bf16.gguf", "broken-3", fill("blk.0.attn_q.bias", 0.0)),
            "blk.0.attn_q.bias",
        ),
        (
            "qwen3-moe/hf",
            patched(dir.path(), "qwen3-moe-bf16.gguf", "broken-4", fill("blk.1.attn_q_norm.weight", 0.0)),
            "blk.1.attn_q_norm.weight",
        ),
        (
            "qwen3-moe/hf",
            patched(dir.path(), "qwen3-moe-bf16.gguf", "broken-5", fill("blk.0.attn_k_norm.weight", 1.0)),
            "blk.0.attn_k_norm.weight",
        ),
        (
            "qwen3-moe/hf",
            patched(dir.path(), "qwen3-moe-bf16.gguf", "broken-6", |range, bytes| {
                // Experts 0 and 1 of ffn_gate_exps swapped (32 rows of 64 bf16 each).
                let (at, _) = range("blk.0.ffn_gate_exps.weight");
                let slab = 32 * 64 * 2;
                let first = bytes[at..at + slab].to_vec();
                bytes.copy_within(at + slab..at + 2 * slab, at);
                bytes[at + slab..at + 2 * slab].copy_from_slice(&first);
            }),
            "blk.0.ffn_gate_exps.weight",
        ),
    ];
    // The shared expert left out of the file altogether: refused before anything runs.
    let dropped = edited_golden(dir.path(), "qwen2-moe-bf16.gguf", "no-shexp", |p| {
        p.tensors.retain(|t| !t.name.contains("_shexp."));
    });
    let err = fails(&["verify", path_arg(&fixtures().join("qwen2-moe/hf")), path_arg(&dropped)]);
    assert!(err.contains("no tensor 'blk.0.ffn_gate_inp_shexp.weight'"), "{err}");
    for (source, output, culprit) in cases {
        let (code, r) = verify_json(&fixtures().join(source), &output);
        assert_eq!(code, 1, "{output:?} passed: {r}");
        let failures = r["failures"].to_string();
        assert!(failures.contains(culprit), "{culprit} not named in {failures}");
        assert!(r["model"]["kl_max"].as_f64() > Some(0.0), "{output:?}: the model's outputs moved: {}", r["model"]);
    }
}

/// `--format mlx` writes what `mlx_lm convert` writes (every tensor byte for byte, the
/// `quantization` block: Qwen3-MoE's routers in 8 bits, groups of 64; Qwen2-MoE's quantized
/// like any layer, with moeq's warning), Qwen3-MoE with a dense layer included; verify reads
/// the builds back.
#[test]
fn qwen_mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("qwen3-moe/hf", &["--type", "q4"], "qwen3-moe-q4"),
        ("qwen3-moe/hf", &["--type", "q8", "--group-size", "32"], "qwen3-moe-q8"),
        // Every layer MXFP4 but the routers (mlx-lm's 8 bits): the block lists only those.
        ("qwen3-moe/hf", &["--type", "mxfp4"], "qwen3-moe-mxfp4"),
        ("qwen3-moe/hf-dense", &["--type", "q4", "--group-size", "32"], "qwen3-moe-dense-q4"),
        ("qwen2-moe/hf", &["--type", "q4"], "qwen2-moe-q4"),
        ("qwen2-moe/hf", &["--type", "q8", "--group-size", "32"], "qwen2-moe-q8"),
    ];
    for (src, args, golden) in cases {
        let dst = out.path().join(golden);
        let input = fixtures().join(src);
        let mut argv = vec!["convert", path_arg(&input), "-o", path_arg(&dst), "--format", "mlx"];
        argv.extend(args.iter());
        let run = moeq(&argv);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let warned = String::from_utf8_lossy(&run.stderr).contains("2 MoE routers (mlp.gate) quantized");
        assert_eq!(warned, src.starts_with("qwen2"), "{src}: {}", String::from_utf8_lossy(&run.stderr));
        let want = fixtures().join("golden-mlx").join(golden);
        mlx_tensors_equal(&dst, &want, &format!("{src} → {golden}"));
        let (got_c, want_c) = (config_of(&dst), config_of(&want));
        assert_eq!(got_c["quantization"], want_c["quantization"], "{src} → {golden}");
        assert_eq!(got_c["quantization_config"], want_c["quantization"]);
        // mlx-lm's own build and moeq's read back as the same model.
        let (code, r) = verify_json(&fixtures().join(src), &dst);
        assert_eq!(code, 0, "{golden}: {}", r["failures"]);
        let (_, theirs) = verify_json(&fixtures().join(src), &want);
        assert_eq!(r["model"]["kl_max"], theirs["model"]["kl_max"], "{golden}");
    }
    // Unquantized: bf16, experts stacked under mlp.switch_mlp, the shared expert's gate [1, 64].
    let dst = out.path().join("qwen2-bf16");
    ok(&["convert", path_arg(&fixtures().join("qwen2-moe/hf")), "-o", path_arg(&dst), "--format", "mlx", "-q"]);
    let t = folder_tensors(&dst);
    assert_eq!(t["model.layers.1.mlp.switch_mlp.down_proj.weight"].1, vec![4, 64, 32]);
    assert_eq!(t["model.layers.1.mlp.shared_expert_gate.weight"].1, vec![1, 64]);
    assert!(config_of(&dst).get("quantization").is_none());
    let (code, r) = verify_json(&fixtures().join("qwen2-moe/hf"), &dst);
    assert_eq!((code, r["model"]["kl_max"].as_f64()), (0, Some(0.0)), "{}", r["failures"]);
}

/// `inspect` names the family and its hyperparameters, the expert widths among them.
#[test]
fn qwen_inspect_reports_the_family() {
    for (dir, arch, shared) in [("qwen3-moe/hf", "qwen3-moe", None), ("qwen2-moe/hf", "qwen2-moe", Some(96))] {
        let json: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&fixtures().join(dir))])).unwrap();
        let h = &json["hyperparameters"];
        assert_eq!(json["architecture"], arch, "{dir}");
        assert_eq!(
            (&h["block_count"], &h["expert_count"], &h["expert_feed_forward_length"]),
            (&2.into(), &4.into(), &32.into())
        );
        assert_eq!(h["expert_shared_feed_forward_length"].as_u64(), shared);
    }
    let json: Json =
        serde_json::from_str(&ok(&["inspect", "--json", path_arg(&golden("qwen2-moe-bf16-Q4_K_M.gguf"))])).unwrap();
    assert_eq!(json["architecture"], "qwen2moe");
    let gate = json["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_gate_inp_shexp.weight");
    assert_eq!(gate.unwrap()["shape"], serde_json::json!([64]));
}
