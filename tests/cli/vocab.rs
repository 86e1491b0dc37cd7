//! Vocabularies, chat templates and hyperparameter keys against llama.cpp's converter.
//!
//! Each case of `tests/fixtures/vocab/cases.json` is a checkpoint folder built here (a tiny
//! config like a released model's, tokenizer files taken from the fixtures and edited); moeq
//! converts it and its `tokenizer.*` and architecture keys must equal, in order, type and
//! value, those of `tests/fixtures/vocab/NAME.gguf`: real output of llama.cpp's
//! `convert_hf_to_gguf.py --vocab-only` on the same folder (llama.cpp as vendored in
//! llama-cpp-python 0.3.36, transformers 5.24; `scripts/compare_converter.py
//! --write-expected` writes them and compares whole conversions). The converter stops on a
//! pre-tokenizer hash its table lacks; those files were written with the family's name, what
//! moeq falls back to.

use std::path::{Path, PathBuf};

use moeq_formats::gguf::{Array, GgufFile, Value};
use serde_json::{Value as Json, json};

use super::{fails, fixtures, moeq, ok, path_arg};

fn spec() -> Json {
    serde_json::from_slice(&std::fs::read(fixtures().join("vocab/cases.json")).unwrap()).unwrap()
}

/// `merge` of the case spec: objects merged recursively, null deletes.
fn merge(into: &mut Json, patch: &Json) {
    for (k, v) in patch.as_object().unwrap() {
        match (v, into.get_mut(k)) {
            (Json::Null, _) => {
                into.as_object_mut().unwrap().remove(k);
            }
            (Json::Object(_), Some(slot @ Json::Object(_))) => merge(slot, v),
            _ => {
                into[k] = v.clone();
            }
        }
    }
}

fn read_json(path: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A safetensors file of zero BF16 tensors.
fn write_zeros(path: &Path, tensors: &[(String, Vec<u64>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let len = shape.iter().product::<u64>() * 2;
        header.insert(name.clone(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len]}));
        offset += len;
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    bytes.resize(bytes.len() + offset as usize, 0);
    std::fs::write(path, bytes).unwrap();
}

/// The tensors of a Llama or Mixtral config.
fn llama_tensors(cfg: &Json) -> Vec<(String, Vec<u64>)> {
    let g = |k: &str| cfg[k].as_u64();
    let (h, v, ff, layers) = (
        g("hidden_size").unwrap(),
        g("vocab_size").unwrap(),
        g("intermediate_size").unwrap(),
        g("num_hidden_layers").unwrap(),
    );
    let heads = g("num_attention_heads").unwrap();
    let kv = g("num_key_value_heads").unwrap_or(heads);
    let hd = g("head_dim").unwrap_or(h / heads);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    if cfg["tie_word_embeddings"] != json!(true) {
        t.push(("lm_head.weight".into(), vec![v, h]));
    }
    for i in 0..layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        t.extend([
            (p("input_layernorm.weight"), vec![h]),
            (p("post_attention_layernorm.weight"), vec![h]),
            (p("self_attn.q_proj.weight"), vec![heads * hd, h]),
            (p("self_attn.k_proj.weight"), vec![kv * hd, h]),
            (p("self_attn.v_proj.weight"), vec![kv * hd, h]),
            (p("self_attn.o_proj.weight"), vec![h, heads * hd]),
        ]);
        match g("num_local_experts") {
            Some(e) => {
                t.push((p("block_sparse_moe.gate.weight"), vec![e, h]));
                for j in 0..e {
                    let q = |w: &str| p(&format!("block_sparse_moe.experts.{j}.{w}.weight"));
                    t.extend([(q("w1"), vec![ff, h]), (q("w2"), vec![h, ff]), (q("w3"), vec![ff, h])]);
                }
            }
            None => t.extend([
                (p("mlp.gate_proj.weight"), vec![ff, h]),
                (p("mlp.up_proj.weight"), vec![ff, h]),
                (p("mlp.down_proj.weight"), vec![h, ff]),
            ]),
        }
    }
    t
}

/// Builds the checkpoint folder of a case (as scripts/compare_converter.py builds it).
fn build_case(dir: &Path, case: &Json) {
    std::fs::create_dir_all(dir).unwrap();
    let family = case["family"].as_str().unwrap();
    let copy = |f: &Json| {
        let src = fixtures().join(f.as_str().unwrap());
        std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    };
    let mut cfg = if family == "gpt-oss" {
        let src = fixtures().join("gpt-oss/hf-bf16");
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
                std::fs::copy(&p, dir.join(&name)).unwrap();
            }
        }
        for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        read_json(&src.join("config.json"))
    } else {
        let mut c = json!({"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "vocab_size": 512, "model_type": "llama"});
        if family == "mixtral" {
            merge(
                &mut c,
                &json!({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2}),
            );
        }
        c
    };
    merge(&mut cfg, case.get("config").unwrap_or(&json!({})));
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    if family != "gpt-oss" {
        write_zeros(&dir.join("model.safetensors"), &llama_tensors(&cfg));
    }
    for f in case.get("copy").and_then(Json::as_array).into_iter().flatten() {
        copy(f);
    }
    for (name, spec) in case.get("files").and_then(Json::as_object).into_iter().flatten() {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let content = match spec {
            Json::String(s) => s.clone(),
            s if s.get("json").is_some() => serde_json::to_string_pretty(&s["json"]).unwrap(),
            s => {
                let mut data = read_json(&fixtures().join(s["from"].as_str().unwrap()));
                merge(&mut data, s.get("merge").unwrap_or(&json!({})));
                for (k, items) in s.get("append").and_then(Json::as_object).into_iter().flatten() {
                    data[k].as_array_mut().unwrap().extend(items.as_array().unwrap().iter().cloned());
                }
                for k in s.get("set_null").and_then(Json::as_array).into_iter().flatten() {
                    data[k.as_str().unwrap()] = Json::Null;
                }
                serde_json::to_string_pretty(&data).unwrap()
            }
        };
        std::fs::write(path, content).unwrap();
    }
}

/// The keys compared: the tokenizer's and the architecture's (`general.*` differ by design: a
/// --vocab-only file has no tensors to name or count). The names of several chat templates are
/// sorted (the converter lists them from a Python set, in an order that changes between runs).
fn compared_keys(path: &Path) -> Vec<(String, Value)> {
    let f = GgufFile::open(path).unwrap();
    f.header()
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("general."))
        .map(|(k, v)| match (k.as_str(), v) {
            ("tokenizer.chat_templates", Value::Array(Array::String(names))) => {
                let mut names = names.clone();
                names.sort();
                (k.clone(), Value::Array(Array::String(names)))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

/// Every case converts to the keys llama.cpp's converter writes for it.
#[test]
fn vocabularies_templates_and_configs_match_llama_cpp() {
    let work = tempfile::tempdir().unwrap();
    let spec = spec();
    let cases = spec["cases"].as_array().unwrap();
    assert!(cases.len() >= 38);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dir = work.path().join(name);
        build_case(&dir, case);
        let out = work.path().join(format!("{name}.gguf"));
        let run = moeq(&["convert", path_arg(&dir), "-o", path_arg(&out), "-q"]);
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let (ours, theirs) = (compared_keys(&out), compared_keys(&fixtures().join(format!("vocab/{name}.gguf"))));
        if ours != theirs {
            let diff: Vec<String> = theirs
                .iter()
                .filter(|kv| !ours.contains(kv))
                .map(|(k, _)| format!("converter's {k}"))
                .chain(ours.iter().filter(|kv| !theirs.contains(kv)).map(|(k, _)| format!("moeq's {k}")))
                .collect();
            failures.push(format!("{name}: {diff:?} (order or value)"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn case(name: &str) -> Json {
    spec()["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

/// Converts a case's folder; returns (stderr, the written file's metadata).
fn convert_case(work: &Path, name: &str, extra: &[&str]) -> (String, Vec<(String, Value)>) {
    let dir = work.join(name);
    if !dir.exists() {
        build_case(&dir, &case(name));
    }
    let out = work.join(format!("{name}-{}.gguf", extra.len()));
    let mut args = vec!["convert", path_arg(&dir), "-o", path_arg(&out), "-q"];
    args.extend(extra);
    let run = moeq(&args);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{name}: {stderr}");
    (stderr, GgufFile::open(&out).unwrap().header().metadata.clone())
}

fn get<'m>(m: &'m [(String, Value)], key: &str) -> Option<&'m Value> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn tokens(m: &[(String, Value)]) -> (Vec<String>, Vec<i32>) {
    match (get(m, "tokenizer.ggml.tokens"), get(m, "tokenizer.ggml.token_type")) {
        (Some(Value::Array(Array::String(t))), Some(Value::Array(Array::I32(ty)))) => (t.clone(), ty.clone()),
        other => panic!("no tokens: {other:?}"),
    }
}

/// Llama 2 folders with only tokenizer.model convert (SentencePiece pieces, byte tokens), and a
/// SentencePiece-style tokenizer.json alone gives a `llama` vocabulary, never byte-level BPE:
/// spaces stay `▁`, newlines are the byte token `<0x0A>`.
#[test]
fn sentencepiece_vocabularies_from_either_file() {
    let work = tempfile::tempdir().unwrap();
    for name in ["spm-model-only-llama2", "spm-model-bare", "spm-json-only", "spm-json-bare"] {
        let (_, m) = convert_case(work.path(), name, &[]);
        assert_eq!(get(&m, "tokenizer.ggml.model"), Some(&Value::String("llama".into())), "{name}");
        assert_eq!(get(&m, "tokenizer.ggml.pre"), Some(&Value::String("default".into())), "{name}");
        assert!(get(&m, "tokenizer.ggml.merges").is_none(), "{name}");
        let (t, ty) = tokens(&m);
        let nl = t.iter().position(|t| t == "<0x0A>").unwrap();
        assert_eq!(ty[nl], 6, "{name}: byte tokens are BYTE");
        assert!(t.iter().any(|t| t.starts_with('\u{2581}')), "{name}");
        assert!(!t.iter().any(|t| t.starts_with('\u{120}')), "{name}: no byte-level pieces");
    }
    // Added tokens: control when special, user-defined otherwise.
    let (_, m) = convert_case(work.path(), "spm-json-added-tokens", &[]);
    let (t, ty) = tokens(&m);
    assert_eq!(&t[512..], ["<|im_start|>", "<|im_end|>", "\u{2581}hello", "[INST]"]);
    assert_eq!(&ty[512..], [3, 3, 4, 4]);
    // No tokenizer at all, or only a broken one: refused, naming what is missing.
    let dir = work.path().join("none");
    build_case(&dir, &json!({"family": "llama"}));
    let e = fails(&["convert", path_arg(&dir), "-o", path_arg(&work.path().join("none.gguf"))]);
    assert!(e.contains("no tokenizer.json or tokenizer.model"), "{e}");
    std::fs::write(dir.join("tokenizer.model"), b"\x0a\xff\xff").unwrap();
    let e = fails(&["convert", path_arg(&dir), "-o", path_arg(&work.path().join("none.gguf"))]);
    assert!(e.contains("tokenizer.model"), "{e}");
    // A tokenizer.model that is not SentencePiece (Llama 3's tiktoken file) beside a
    // tokenizer.json: the tokenizer.json is used, with a warning.
    std::fs::copy(fixtures().join("mixtral/hf/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let out = work.path().join("fallback.gguf");
    let run = moeq(&["convert", path_arg(&dir), "-o", path_arg(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("using tokenizer.json instead"), "{stderr}");
    assert!(!work.path().join("none.gguf").exists());
}

/// Chat templates from each source, and the warning for a chat model without one.
#[test]
fn chat_templates_from_every_source() {
    let work = tempfile::tempdir().unwrap();
    let template = |m: &[(String, Value)]| match get(m, "tokenizer.chat_template") {
        Some(Value::String(s)) => Some(s.split(' ').next().unwrap().to_string()),
        _ => None,
    };
    for (name, first_word) in [
        ("chat-jinja", Some("JINJA")),
        ("chat-json", Some("JSON")),
        ("chat-jinja-and-json", Some("JINJA")),
        ("chat-tc-and-jinja", Some("TC")),
        ("chat-tc-null-and-jinja", None),
        ("chat-jinja-no-tokenizer-config", None),
    ] {
        let (stderr, m) = convert_case(work.path(), name, &[]);
        assert_eq!(template(&m).as_deref(), first_word, "{name}");
        // The folder's name says "chat": without a template, a warning.
        assert_eq!(stderr.contains("no chat template was found"), first_word.is_none(), "{name}: {stderr}");
    }
    let (_, m) = convert_case(work.path(), "chat-tc-list", &[]);
    assert_eq!(get(&m, "tokenizer.chat_template.tool_use").map(|_| ()), Some(()));
    assert_eq!(get(&m, "tokenizer.chat_template.rag_v1").map(|_| ()), Some(()));
    assert_eq!(
        get(&m, "tokenizer.chat_templates"),
        Some(&Value::Array(Array::String(vec!["tool_use".into(), "rag_v1".into(), "empty".into()])))
    );
    // A chat model by its tokens (Llama 3's <|eot_id|>) without a template: a warning.
    let (stderr, _) = convert_case(work.path(), "bpe-json-no-config", &[]);
    assert!(stderr.contains("chat token <|eot_id|>") && stderr.contains("no chat template"), "{stderr}");
}

/// Llama configs without head_dim or rope_theta get the keys transformers fills in.
#[test]
fn llama_configs_get_transformers_defaults() {
    let work = tempfile::tempdir().unwrap();
    let (_, m) = convert_case(work.path(), "config-llama2", &[]);
    assert_eq!(get(&m, "llama.rope.freq_base"), Some(&Value::F32(10000.0)));
    assert_eq!(get(&m, "llama.attention.key_length"), Some(&Value::U32(16)));
    assert_eq!(get(&m, "llama.attention.value_length"), Some(&Value::U32(16)));
    let (_, m) = convert_case(work.path(), "config-mixtral-bare", &[]);
    assert_eq!(get(&m, "llama.context_length"), Some(&Value::U32(131072)));
    assert_eq!(get(&m, "llama.rope.freq_base"), Some(&Value::F32(1e6)));
    assert!(get(&m, "llama.attention.key_length").is_none(), "transformers leaves Mixtral's head_dim unset");
}

/// The folder of released tokenizers `scripts/fetch_tokenizers.sh` makes, if present (CI
/// fetches them; a run under CI without them fails).
fn real_tokenizers() -> Option<PathBuf> {
    let dir = std::env::var_os("MOEQ_REAL_TOKENIZERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/real-tokenizers"));
    if dir.join("llama3/tokenizer.json").is_file() && dir.join("llama3.2/tokenizer.json").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "{}: run scripts/fetch_tokenizers.sh first", dir.display());
    eprintln!("real tokenizers not fetched (scripts/fetch_tokenizers.sh): the pre-tokenizer check on them is not run");
    None
}

/// `tokenizer.ggml.pre` by llama.cpp's check: Llama 3's tokenizer as first published gets
/// `smaug-bpe` (its table's entry for that hash), the later one `llama-bpe` (what
/// scripts/compare_converter.py saw the converter write for both); an unknown hash falls back
/// to the family's name with a warning; --tokenizer-pre overrides.
#[test]
fn pre_tokenizer_chosen_by_llama_cpps_check() {
    let work = tempfile::tempdir().unwrap();
    // The fixtures' tokenizers are not in the table: the converter printed this hash for them.
    let (stderr, m) = convert_case(work.path(), "bpe-json-no-config", &[]);
    assert!(
        stderr.contains("ec207b93859865ff62be09d66796560b30ce3e2e34047f16f8d3b5131ecbc052")
            && stderr.contains("writing tokenizer.ggml.pre 'llama-bpe'"),
        "{stderr}"
    );
    assert_eq!(get(&m, "tokenizer.ggml.pre"), Some(&Value::String("llama-bpe".into())));
    let (stderr, m) = convert_case(work.path(), "bpe-json-no-config", &["--tokenizer-pre", "smaug-bpe"]);
    assert!(!stderr.contains("check hash"), "{stderr}");
    assert_eq!(get(&m, "tokenizer.ggml.pre"), Some(&Value::String("smaug-bpe".into())));
    let e = fails(&[
        "convert",
        path_arg(&work.path().join("bpe-json-no-config")),
        "-o",
        path_arg(&work.path().join("x.gguf")),
        "--tokenizer-pre",
        "no-such-pre",
    ]);
    assert!(e.contains("'no-such-pre' is not one llama.cpp knows"), "{e}");

    let Some(real) = real_tokenizers() else { return };
    for (sub, pre) in [("llama3", "smaug-bpe"), ("llama3.2", "llama-bpe")] {
        let tok = read_json(&real.join(sub).join("tokenizer.json"));
        let ids = tok["model"]["vocab"]
            .as_object()
            .unwrap()
            .values()
            .chain(tok["added_tokens"].as_array().unwrap().iter().map(|a| &a["id"]));
        let n_vocab = ids.map(|v| v.as_u64().unwrap()).max().unwrap() + 1;
        let dir = work.path().join(sub);
        build_case(
            &dir,
            &json!({"family": "llama", "config": {"vocab_size": n_vocab, "hidden_size": 16,
            "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1,
            "bos_token_id": 128000, "eos_token_id": 128001, "rope_theta": 500000.0}}),
        );
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            if real.join(sub).join(f).is_file() {
                std::fs::copy(real.join(sub).join(f), dir.join(f)).unwrap();
            }
        }
        let out = work.path().join(format!("{sub}.gguf"));
        let run = moeq(&["convert", path_arg(&dir), "-o", path_arg(&out), "-q"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success() && !stderr.contains("check hash"), "{sub}: {stderr}");
        let m = GgufFile::open(&out).unwrap().header().metadata.clone();
        assert_eq!(get(&m, "tokenizer.ggml.pre"), Some(&Value::String(pre.into())), "{sub}");
        assert_eq!(get(&m, "tokenizer.ggml.model"), Some(&Value::String("gpt2".into())), "{sub}");
        let (t, ty) = tokens(&m);
        assert_eq!((t.len() as u64, t[128000].as_str(), ty[128000]), (n_vocab, "<|begin_of_text|>", 3), "{sub}");
    }
}

/// `--quiet` prints warnings and errors only, in every command.
#[test]
fn quiet_prints_only_warnings_and_errors() {
    let work = tempfile::tempdir().unwrap();
    let input = fixtures().join("mixtral/hf");
    let out = work.path().join("m.gguf");
    let loud = moeq(&["convert", path_arg(&input), "-o", path_arg(&out)]);
    assert!(String::from_utf8_lossy(&loud.stderr).contains("wrote "));
    std::fs::remove_file(&out).unwrap();
    for args in [
        vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"],
        vec!["-q", "verify", path_arg(&input), path_arg(&out)],
        vec![
            "eval",
            path_arg(&out),
            "--tokens",
            "1,2",
            "--dump",
            path_arg(&work.path().join("d.safetensors")),
            "--quiet",
        ],
    ] {
        let run = moeq(&args);
        assert!(run.status.success(), "{args:?}");
        assert!(run.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&run.stderr));
        if args.contains(&"verify") {
            assert!(run.stdout.is_empty(), "a passing verify prints nothing when quiet");
        }
    }
    let out2 = work.path().join("m2.gguf");
    ok(&["convert", path_arg(&out), "-o", path_arg(&out2), "--type", "Q8_0", "-q"]);
    let run =
        moeq(&["convert", path_arg(&out), "-o", path_arg(&work.path().join("m3.gguf")), "--type", "Q4_0", "--quiet"]);
    assert!(run.status.success() && run.stderr.is_empty(), "{}", String::from_utf8_lossy(&run.stderr));
}
