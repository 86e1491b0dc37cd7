//! End-to-end tests of the `moeq` binary on the bundled tiny checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn moeq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moeq")).args(args).output().expect("moeq runs")
}

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs moeq expecting success; returns stdout.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = moeq(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "moeq {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs moeq expecting a clean failure (exit 2, an `error:` line, no panic); returns stderr.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = moeq(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "moeq {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn golden(name: &str) -> PathBuf {
    fixtures().join("golden").join(name)
}

fn model_inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = [
        "gpt-oss/original",
        "gpt-oss/hf-mxfp4",
        "gpt-oss/hf-bf16",
        "mixtral/hf",
        "llama/hf",
        "qwen3-moe/hf",
        "qwen3-moe/hf-dense",
        "qwen2-moe/hf",
    ]
    .iter()
    .map(|d| fixtures().join(d))
    .collect();
    for dir in ["golden", "golden-mlx"] {
        for entry in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            inputs.push(entry.unwrap().path());
        }
    }
    inputs.push(fixtures().join("llama/hf/model.safetensors"));
    inputs.push(fixtures().join("gpt-oss/reference.safetensors"));
    inputs.sort();
    inputs
}

#[test]
fn inspect_json_describes_every_fixture() {
    for input in model_inputs() {
        let json: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&input)])).unwrap();
        let tensors = json["tensors"].as_array().unwrap();
        assert!(!tensors.is_empty(), "{}", input.display());
        let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        assert_eq!(json["total_bytes"].as_u64(), Some(sum));
        for t in tensors {
            assert!(t["name"].is_string() && t["dtype"].is_string() && t["shape"].is_array());
        }
        let format = json["format"].as_str().unwrap();
        let is_gguf = input.extension().is_some_and(|e| e == "gguf");
        assert_eq!(format, if is_gguf { "gguf" } else { "safetensors" });
        assert!(json["metadata"].is_object());
    }
}

#[test]
fn inspect_reports_architecture_and_hyperparameters() {
    let cases = [
        ("gpt-oss/original", "gpt-oss", "OpenAI original layout"),
        ("gpt-oss/hf-mxfp4", "gpt-oss", "Hugging Face MXFP4 layout"),
        ("gpt-oss/hf-bf16", "gpt-oss", "Hugging Face layout"),
        ("mixtral/hf", "mixtral", "Hugging Face layout"),
        ("llama/hf", "llama", "Hugging Face layout"),
    ];
    for (dir, arch, layout) in cases {
        let json: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&fixtures().join(dir))])).unwrap();
        assert_eq!(json["architecture"], arch, "{dir}");
        assert_eq!(json["details"]["layout"], layout, "{dir}");
        assert_eq!(json["hyperparameters"]["block_count"], 2, "{dir}");
    }
    let json: Json =
        serde_json::from_str(&ok(&["inspect", "--json", path_arg(&fixtures().join("gpt-oss/hf-mxfp4"))])).unwrap();
    assert_eq!(json["files"].as_array().unwrap().len(), 3);
    assert_eq!(json["hyperparameters"]["expert_count"], 4);
    let blocks = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.experts.gate_up_proj_blocks");
    assert_eq!(blocks.unwrap()["shape"], serde_json::json!([4, 128, 2, 16]));
}

#[test]
fn inspect_gguf_keeps_types_and_summarizes_arrays() {
    let json: Json =
        serde_json::from_str(&ok(&["inspect", "--json", path_arg(&golden("gpt-oss-mxfp4.gguf"))])).unwrap();
    assert_eq!(json["architecture"], "gpt-oss");
    let meta = &json["metadata"];
    assert_eq!(meta["gpt-oss.block_count"], serde_json::json!({"type": "UINT32", "value": 2}));
    assert_eq!(meta["gpt-oss.attention.layer_norm_rms_epsilon"]["value"], 0.00001);
    assert_eq!(meta["general.file_type"]["value"], 38);
    let tokens = &meta["tokenizer.ggml.tokens"];
    assert_eq!(tokens["type"], "ARRAY[STRING]");
    assert_eq!(tokens["value"]["len"], 512);
    assert_eq!(tokens["value"]["head"].as_array().unwrap().len(), 16);
    let gate = json["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_gate_exps.weight").unwrap();
    assert_eq!(gate["dtype"], "MXFP4");
    assert_eq!(gate["shape"], serde_json::json!([64, 64, 4]));
    assert_eq!(gate["bytes"], 64 * 64 * 4 / 32 * 17);
    assert_eq!(json["hyperparameters"]["expert_feed_forward_length"], 64);
}

#[test]
fn inspect_text_has_every_section() {
    let text = ok(&["inspect", path_arg(&golden("mixtral-bf16-Q4_0.gguf"))]);
    for needle in [
        "format        gguf",
        "architecture  llama",
        "hyperparameters",
        "expert_count",
        "metadata (",
        "tensors (",
        "Q4_0",
        "total: ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let text = ok(&["inspect", path_arg(&fixtures().join("llama/hf"))]);
    assert!(text.contains("LlamaForCausalLM") && text.contains("model.embed_tokens.weight"), "{text}");
}

#[test]
fn convert_rewrites_gguf_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gpt-oss-mxfp4.gguf", "mixtral-bf16-Q4_0.gguf", "llama-bf16.gguf"] {
        let out = dir.path().join(name);
        ok(&["convert", path_arg(&golden(name)), "-o", path_arg(&out)]);
        assert!(std::fs::read(golden(name)).unwrap() == std::fs::read(&out).unwrap(), "{name}");
    }
}

#[test]
fn convert_splits_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let split = dir.path().join("split.gguf");
    ok(&["convert", path_arg(&source), "-o", path_arg(&split), "--split-max-size", "150K"]);
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    shards.sort();
    let n = shards.len();
    assert!(n >= 3, "{shards:?}");
    assert!(shards[0].ends_with(format!("split-00001-of-{n:05}.gguf")));
    // inspect reads a split model from its first shard, as one model.
    let json: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&shards[0])])).unwrap();
    let original: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&source)])).unwrap();
    assert_eq!(json["files"].as_array().unwrap().len(), n);
    assert_eq!(json["tensors"], original["tensors"]);
    assert_eq!(json["metadata"]["split.count"]["value"], n);
    // Merging the shards gives back the original file.
    let merged = dir.path().join("merged.gguf");
    ok(&["convert", path_arg(&shards[0]), "-o", path_arg(&merged)]);
    assert!(std::fs::read(&source).unwrap() == std::fs::read(&merged).unwrap());
}

#[test]
fn convert_failures_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    let mut bytes = std::fs::read(golden("llama-bf16.gguf")).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&bad, &bytes).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let err = fails(&["convert", path_arg(&bad), "-o", path_arg(&out)]);
    assert!(err.contains("bad.gguf") && err.contains("past the end of the file"), "{err}");
    let err = fails(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", "/nonexistent-moeq/out.gguf"]);
    assert!(err.contains("/nonexistent-moeq") && err.contains("does not exist"), "{err}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0, "nothing at the output path, no temporary files");
    let out = moeq(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&out), "--split-max-size", "10X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit must be K, M or G"));
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut truncated = std::fs::read(golden("gpt-oss-mxfp4.gguf")).unwrap();
    truncated.truncate(1000);
    let mut huge_kv = b"GGUF".to_vec();
    huge_kv.extend(3u32.to_le_bytes());
    huge_kv.extend(0u64.to_le_bytes());
    huge_kv.extend(u64::MAX.to_le_bytes());
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("empty.gguf", b""), "ends inside the magic"),
        (write("trunc.gguf", &truncated), "truncated or corrupt"),
        (write("kv.gguf", &huge_kv), "key/value count"),
        (write("v1.gguf", b"GGUF\x01\0\0\0"), "version 1"),
        (write("x.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\xffjunk"), "invalid header"),
        (write("notes.txt", b"hello"), "not a GGUF or safetensors file"),
        (dir.path().join("missing.gguf"), "no such file"),
    ];
    for (path, expected) in cases {
        let err = fails(&["inspect", path_arg(&path)]);
        assert!(err.contains(path.file_name().unwrap().to_str().unwrap()), "{err}");
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
    // Folders: empty, unknown architecture, index naming a missing shard.
    let empty = tempfile::tempdir().unwrap();
    assert!(fails(&["inspect", path_arg(empty.path())]).contains("holds no *.safetensors files"));
    let unknown = tempfile::tempdir().unwrap();
    std::fs::write(unknown.path().join("config.json"), r#"{"architectures": ["GraniteMoeForCausalLM"]}"#).unwrap();
    let err = fails(&["inspect", path_arg(unknown.path())]);
    assert!(err.contains("config.json") && err.contains("unknown architecture 'GraniteMoeForCausalLM'"), "{err}");
    let partial = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors.index.json", "model-00000-of-00002.safetensors"] {
        std::fs::copy(fixtures().join("gpt-oss/hf-mxfp4").join(f), partial.path().join(f)).unwrap();
    }
    let err = fails(&["inspect", path_arg(partial.path())]);
    assert!(err.contains("model-00001-of-00002.safetensors', which is missing"), "{err}");
}

/// Every quantized golden file (written by llama-quantize) is reproduced byte for byte by
/// `moeq convert --type`, with each kernel backend this CPU runs.
#[test]
fn convert_type_reproduces_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures().join("golden")).unwrap() {
        let golden_path = entry.unwrap().path();
        let name = golden_path.file_stem().unwrap().to_str().unwrap().to_string();
        let Some((source, ftype)) = name.rsplit_once('-').filter(|(s, _)| s.ends_with("bf16") || s.ends_with("mxfp4"))
        else {
            continue;
        };
        let expected = std::fs::read(&golden_path).unwrap();
        for kernels in ["scalar", "avx2", "avx512"] {
            let out = dir.path().join(format!("{name}-{kernels}.gguf"));
            let status = Command::new(env!("CARGO_BIN_EXE_moeq"))
                .env("MOEQ_KERNELS", kernels)
                .args([
                    "convert",
                    path_arg(&golden(&format!("{source}.gguf"))),
                    "-o",
                    path_arg(&out),
                    "--type",
                    ftype,
                    "-q",
                ])
                .output()
                .unwrap();
            assert!(status.status.success(), "{name}: {}", String::from_utf8_lossy(&status.stderr));
            assert!(
                std::fs::read(&out).unwrap() == expected,
                "{name} differs from llama-quantize's with {kernels} kernels"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 21, "expected the 21 quantized goldens");
}

#[test]
fn convert_type_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let err = moeq(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&out), "--type", "Q3_K"]);
    assert_eq!(err.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&err.stderr).contains("unknown type 'Q3_K'"));
    // A NaN in a tensor is named, and nothing is left behind.
    let mut bytes = std::fs::read(golden("llama-bf16.gguf")).unwrap();
    let file = moeq_formats::gguf::GgufFile::open(&golden("llama-bf16.gguf")).unwrap();
    let header = file.header();
    let idx = header.tensors.iter().position(|t| t.name == "blk.1.attn_q.weight").unwrap();
    let at = (header.data_offset + header.tensors[idx].offset) as usize + 2 * 70;
    bytes[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    let bad = dir.path().join("nan.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let err = fails(&["convert", path_arg(&bad), "-o", path_arg(&out), "--type", "Q8_0"]);
    assert!(err.contains("blk.1.attn_q.weight") && err.contains("NaN"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the input remains");
}

/// Each gpt-oss layout, Mixtral and Llama convert to exactly what llama.cpp's converter (and
/// llama-quantize) write: the HF folders byte for byte, gpt-oss's original layout with the
/// same tensors and metadata (only the name, taken from the folder, differs).
#[test]
fn checkpoints_convert_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("hf-mxfp4", None, "gpt-oss-mxfp4.gguf"),
        ("hf-bf16", None, "gpt-oss-bf16.gguf"),
        ("hf-mxfp4", Some("MXFP4_MOE"), "gpt-oss-mxfp4-MXFP4_MOE.gguf"),
        ("hf-bf16", Some("MXFP4_MOE"), "gpt-oss-bf16-MXFP4_MOE.gguf"),
        ("hf-bf16", Some("Q8_0"), "gpt-oss-bf16-Q8_0.gguf"),
        ("hf-bf16", Some("Q4_0"), "gpt-oss-bf16-Q4_0.gguf"),
        ("hf-bf16", Some("Q4_1"), "gpt-oss-bf16-Q4_1.gguf"),
        ("../mixtral/hf", None, "mixtral-bf16.gguf"),
        ("../mixtral/hf", Some("Q8_0"), "mixtral-bf16-Q8_0.gguf"),
        ("../mixtral/hf", Some("Q4_0"), "mixtral-bf16-Q4_0.gguf"),
        ("../llama/hf", None, "llama-bf16.gguf"),
        ("../llama/hf", Some("Q8_0"), "llama-bf16-Q8_0.gguf"),
        ("../llama/hf", Some("Q4_0"), "llama-bf16-Q4_0.gguf"),
    ];
    for (layout, ftype, expected) in cases {
        let out = dir.path().join(format!("{}-{ftype:?}.gguf", layout.replace("../", "").replace('/', "-")));
        let input = fixtures().join("gpt-oss").join(layout);
        let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
        args.extend(ftype.iter().flat_map(|t| ["--type", *t]));
        ok(&args);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(golden(expected)).unwrap(),
            "{layout} {ftype:?} ≠ {expected}"
        );
    }
    // Split output (as gguf-py splits) merges back into the same file.
    let split = dir.path().join("split.gguf");
    ok(&[
        "convert",
        path_arg(&fixtures().join("gpt-oss/hf-mxfp4")),
        "-o",
        path_arg(&split),
        "--split-max-size",
        "100K",
        "-q",
    ]);
    let first = dir.path().join("split-00001-of-00004.gguf");
    assert!(first.exists() && dir.path().join("split-00004-of-00004.gguf").exists());
    let merged = dir.path().join("merged.gguf");
    ok(&["convert", path_arg(&first), "-o", path_arg(&merged), "-q"]);
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(golden("gpt-oss-mxfp4.gguf")).unwrap());

    let out = dir.path().join("original.gguf");
    ok(&["convert", path_arg(&fixtures().join("gpt-oss/original")), "-o", path_arg(&out), "-q"]);
    let ours = moeq_formats::gguf::GgufFile::open(&out).unwrap();
    let theirs = moeq_formats::gguf::GgufFile::open(&golden("gpt-oss-mxfp4.gguf")).unwrap();
    let keys = |f: &moeq_formats::gguf::GgufFile| {
        f.header().metadata.iter().filter(|(k, _)| k != "general.name").cloned().collect::<Vec<_>>()
    };
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(ours.header().tensors.len(), theirs.header().tensors.len());
    for (i, (a, b)) in ours.header().tensors.iter().zip(&theirs.header().tensors).enumerate() {
        assert_eq!((&a.name, &a.ne, a.ggml_type), (&b.name, &b.ne, b.ggml_type));
        assert!(ours.tensor_data(i) == theirs.tensor_data(i), "{}", a.name);
    }
}

/// Rewrites a safetensors file entry by entry: `edit` may change an entry's header (shape)
/// and data, or drop it (returning false).
fn rewrite_safetensors(src: &Path, dst: &Path, mut edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Json> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    for (name, mut entry) in header {
        if name == "__metadata__" {
            out_header.insert(name, entry);
            continue;
        }
        let offsets: Vec<usize> =
            entry["data_offsets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let mut tensor = data[offsets[0]..offsets[1]].to_vec();
        if edit(&name, &mut entry, &mut tensor) {
            entry["data_offsets"] = serde_json::json!([out_data.len(), out_data.len() + tensor.len()]);
            out_data.extend(tensor);
            out_header.insert(name, entry);
        }
    }
    let mut text = serde_json::to_vec(&out_header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(out_data);
    std::fs::write(dst, file).unwrap();
}

/// A copy of the original-layout fixture with its weights edited and its config patched.
fn broken_original(
    edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool,
    config: &[(&str, Json)],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("gpt-oss/original");
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: Json = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in config {
        cfg[*k] = v.clone();
    }
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    rewrite_safetensors(&src.join("model.safetensors"), &dir.path().join("model.safetensors"), edit);
    dir
}

/// Broken checkpoints fail with an error naming the file and the problem, and leave nothing
/// at the output path.
#[test]
fn broken_gpt_oss_checkpoints_fail_cleanly() {
    let keep = |_: &str, _: &mut Json, _: &mut Vec<u8>| true;
    let cases: Vec<(tempfile::TempDir, &str, Vec<&str>)> = vec![
        (broken_original(|n, _, _| n != "block.1.mlp.mlp2_bias", &[]), "down_proj_bias' is missing", vec![]),
        (
            broken_original(
                |n, e, _| {
                    if n == "block.0.attn.sinks" {
                        e["shape"] = serde_json::json!([2, 2]);
                    }
                    true
                },
                &[],
            ),
            "shape [2, 2], expected [4]",
            vec!["block.0.attn.sinks"],
        ),
        (
            broken_original(
                |n, _, d| {
                    if n == "block.0.mlp.mlp1_weight.scales" {
                        d[40] = 0xFF;
                    }
                    true
                },
                &[],
            ),
            "scale byte 0xFF",
            vec!["block.0.mlp.mlp1_weight.scales"],
        ),
        (
            broken_original(
                |n, _, d| {
                    if n == "block.0.attn.out.weight" {
                        d[2 * 70..2 * 70 + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
                    }
                    true
                },
                &[],
            ),
            "row 1, column 6 is NaN",
            vec!["block.0.attn.out.weight"],
        ),
        (broken_original(keep, &[("swiglu_limit", Json::from(8.0))]), "swiglu_limit is 8", vec!["config.json"]),
        (
            broken_original(keep, &[("num_experts", Json::from("four"))]),
            "\"num_experts\" is \"four\"",
            vec!["config.json"],
        ),
        (broken_original(keep, &[("hidden_size", Json::from(48))]), "multiples of 32", vec!["config.json"]),
    ];
    for (dir, expected, also) in &cases {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.gguf");
        let err = fails(&["convert", path_arg(dir.path()), "-o", path_arg(&out), "-q"]);
        assert!(err.contains(expected), "{expected:?} not in {err}");
        assert!(err.contains(path_arg(dir.path())), "{err}");
        for a in also {
            assert!(err.contains(a), "{a:?} not in {err}");
        }
        assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0, "nothing left behind: {err}");
    }

    // A missing shard; a missing tokenizer (fine with --no-vocab).
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let partial = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00000-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(fixtures().join("gpt-oss/hf-mxfp4").join(f), partial.path().join(f)).unwrap();
    }
    let err = fails(&["convert", path_arg(partial.path()), "-o", path_arg(&out)]);
    assert!(err.contains("model-00001-of-00002.safetensors', which is missing"), "{err}");
    std::fs::copy(
        fixtures().join("gpt-oss/hf-mxfp4/model-00001-of-00002.safetensors"),
        partial.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let err = fails(&["convert", path_arg(partial.path()), "-o", path_arg(&out)]);
    assert!(err.contains("no tokenizer.json") && err.contains("--no-vocab"), "{err}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
    ok(&["convert", path_arg(partial.path()), "-o", path_arg(&out), "--no-vocab", "-q"]);
    let file = moeq_formats::gguf::GgufFile::open(&out).unwrap();
    assert!(file.header().get("tokenizer.ggml.model").is_none());
    assert_eq!(file.header().tensors.len(), 41);
}

/// A copy of the Mixtral fixture with one shard's tensors edited.
fn broken_mixtral(shard: &str, edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("mixtral/hf");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name != shard {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    rewrite_safetensors(&src.join(shard), &dir.path().join(shard), edit);
    dir
}

/// Broken Mixtral checkpoints: the expert tensor that is missing or holds a NaN is named.
#[test]
fn broken_mixtral_checkpoints_fail_cleanly() {
    let shards =
        ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];
    let index: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("mixtral/hf/model.safetensors.index.json")).unwrap())
            .unwrap();
    let expert = "model.layers.1.block_sparse_moe.experts.2.w3.weight";
    let shard = index["weight_map"][expert].as_str().unwrap();
    assert!(shards.contains(&shard));
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");

    let nan = broken_mixtral(shard, |n, _, d| {
        if n == expert {
            d[2 * 100..2 * 100 + 2].copy_from_slice(&0xff80u16.to_le_bytes());
        }
        true
    });
    let err = fails(&["convert", path_arg(nan.path()), "-o", path_arg(&out), "--type", "Q8_0"]);
    assert!(
        err.contains(expert) && err.contains("blk.1.ffn_up_exps.weight") && err.contains("row 1, column 36 is -inf"),
        "{err}"
    );

    let missing = broken_mixtral(shard, |n, _, _| n != expert);
    let err = fails(&["convert", path_arg(missing.path()), "-o", path_arg(&out)]);
    assert!(err.contains("model.safetensors.index.json") && err.contains(expert), "{err}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

/// F32 (or I32) tensor `name` of a safetensors file, as f64.
fn st_tensor(path: &Path, name: &str) -> Vec<f64> {
    let file = moeq_formats::safetensors::SafetensorsFile::open(path).unwrap();
    let t = file.tensors().iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} in {path:?}"));
    let data = file.data(t);
    match t.dtype {
        moeq_formats::safetensors::Dtype::I32 => {
            data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64).collect()
        }
        _ => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
    }
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// moeq's forward on every fixture (checkpoints in every layout, and llama.cpp's unquantized
/// GGUFs of them) reproduces what transformers and OpenAI's reference computed: logits,
/// hidden states, and each MoE block's output from its input.
#[test]
fn eval_reproduces_the_reference_forward() {
    let cases = [
        ("gpt-oss", "gpt-oss/original"),
        ("gpt-oss", "gpt-oss/hf-mxfp4"),
        ("gpt-oss", "gpt-oss/hf-bf16"),
        ("gpt-oss", "golden/gpt-oss-mxfp4.gguf"),
        ("gpt-oss", "golden/gpt-oss-bf16.gguf"),
        // mlx-lm's own build (bf16 + MXFP4 experts, the stored values).
        ("gpt-oss", "golden-mlx/gpt-oss-mxfp4"),
        ("mixtral", "mixtral/hf"),
        ("mixtral", "golden/mixtral-bf16.gguf"),
        ("llama", "llama/hf"),
        ("llama", "golden/llama-bf16.gguf"),
    ];
    for (family, input) in cases {
        let reference = fixtures().join(family).join("reference.safetensors");
        let tokens: Vec<u32> = st_tensor(&reference, "tokens").iter().map(|&t| t as u32).collect();
        let path = fixtures().join(input);
        let trace = moeq::verify::eval::eval(&path, &tokens).unwrap();
        let mut checked = vec![("logits".to_string(), rel_l2(&trace.logits, &st_tensor(&reference, "logits")))];
        for (n, h) in trace.hidden.iter().enumerate() {
            checked.push((format!("hidden.{n}"), rel_l2(h, &st_tensor(&reference, &format!("hidden.{n}")))));
        }
        if family != "llama" {
            // The MoE block alone, on the reference's own input.
            let source = moeq::source::Source::open(&path).unwrap();
            let weights = moeq::model::weights::Weights::new(&source, &path).unwrap();
            let model = moeq::forward::Model::new(&weights).unwrap();
            for n in 0..trace.moe_in.len() {
                let input: Vec<f32> = st_tensor(&reference, &format!("moe_in.{n}")).iter().map(|&v| v as f32).collect();
                let (out, _) = model.ffn(n, &input).unwrap();
                checked.push((format!("moe_out.{n}"), rel_l2(&out, &st_tensor(&reference, &format!("moe_out.{n}")))));
            }
        }
        for (name, err) in checked {
            assert!(err <= 1e-4, "{input}: {name} relative L2 {err:e}");
        }
    }
}

/// A golden GGUF with `patch` applied to its bytes (given each tensor's data range).
fn patched_golden(
    dir: &Path,
    name: &str,
    mut patch: impl FnMut(&dyn Fn(&str) -> (usize, usize), &mut [u8]),
) -> PathBuf {
    let path = golden(name);
    let file = moeq_formats::gguf::GgufFile::open(&path).unwrap();
    let h = file.header();
    let range = |tensor: &str| {
        let t = h.tensors.iter().find(|t| t.name == tensor).unwrap_or_else(|| panic!("{tensor}"));
        ((h.data_offset + t.offset) as usize, t.nbytes as usize)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    patch(&range, &mut bytes);
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = dir.join(format!("broken-{n}-{name}"));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Runs `moeq verify --json`; returns the exit code and the report.
fn verify_json(source: &Path, output: &Path) -> (i32, Json) {
    let out = moeq(&["verify", path_arg(source), path_arg(output), "--json"]);
    let report: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("verify printed no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// verify: exact for lossless conversions, ordered errors for lossy ones.
#[test]
fn verify_is_exact_when_lossless_and_orders_lossy_types() {
    for (source, output) in [
        ("gpt-oss/hf-mxfp4", "gpt-oss-mxfp4.gguf"),
        ("gpt-oss/original", "gpt-oss-mxfp4.gguf"),
        ("gpt-oss/hf-bf16", "gpt-oss-bf16.gguf"),
        ("mixtral/hf", "mixtral-bf16.gguf"),
        ("llama/hf", "llama-bf16.gguf"),
    ] {
        let (code, r) = verify_json(&fixtures().join(source), &golden(output));
        assert_eq!(code, 0, "{source} → {output}: {}", r["failures"]);
        assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true), "{output}");
        assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)));
        assert_eq!(r["model"]["positions"], 256, "the built-in reference set");
        // Every layer and the head are provably the source's, so they are taken from its run;
        // --full-forward recomputes them and must find the same.
        assert_eq!(r["model"]["reused_head"], true, "{output}");
        let layers = r["blocks"].as_array().unwrap().len();
        assert_eq!(r["model"]["reused_layers"], Json::from((0..layers).collect::<Vec<_>>()), "{output}");
        let out = moeq(&[
            "verify",
            path_arg(&fixtures().join(source)),
            path_arg(&golden(output)),
            "--json",
            "--full-forward",
        ]);
        assert_eq!(out.status.code(), Some(0));
        let full: Json = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (&full["model"]["reused_layers"], &full["model"]["reused_head"]),
            (&Json::from(Vec::<usize>::new()), &Json::from(false))
        );
        assert_eq!(full["blocks"], r["blocks"], "{output}");
        assert_eq!(
            (&full["model"]["kl_max"], &full["model"]["top1"], &full["model"]["logit_cosine"]),
            (&r["model"]["kl_max"], &r["model"]["top1"], &r["model"]["logit_cosine"])
        );
    }
    // MXFP4_MOE keeps the experts and the router: the block checks take the source's outputs,
    // and recomputing them gives the same report.
    let (source, output) = (fixtures().join("gpt-oss/hf-mxfp4"), golden("gpt-oss-mxfp4-MXFP4_MOE.gguf"));
    let (code, r) = verify_json(&source, &output);
    assert_eq!(code, 0, "{}", r["failures"]);
    assert_eq!(r["model"]["reused_blocks"], serde_json::json!([0, 1]));
    assert_eq!(r["model"]["reused_layers"], serde_json::json!([]));
    let out = moeq(&["verify", path_arg(&source), path_arg(&output), "--json", "--full-forward"]);
    let full: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(full["model"]["reused_blocks"], serde_json::json!([]));
    assert_eq!((&full["blocks"], &full["model"]["kl_max"]), (&r["blocks"], &r["model"]["kl_max"]));
    let error = |ty: &str| {
        let (code, r) = verify_json(&fixtures().join("gpt-oss/hf-bf16"), &golden(&format!("gpt-oss-bf16-{ty}.gguf")));
        assert_eq!(code, 0, "{ty}: {}", r["failures"]);
        let lossy: Vec<f64> = r["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["bound"].as_f64() > Some(0.0))
            .map(|t| t["rel_rmse"].as_f64().unwrap())
            .collect();
        (lossy.iter().sum::<f64>() / lossy.len() as f64, r["model"]["kl_mean"].as_f64().unwrap())
    };
    // Reference sequences from a file: one per line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.txt");
    std::fs::write(&file, "1,2,3,4\n\n5 6 7\n").unwrap();
    let out = moeq(&[
        "verify",
        path_arg(&fixtures().join("mixtral/hf")),
        path_arg(&golden("mixtral-bf16.gguf")),
        "--tokens-file",
        path_arg(&file),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["model"]["positions"], 7);
    // Limits given on the command line; convert --verify gates a conversion.
    let q8 = golden("gpt-oss-bf16-Q8_0.gguf");
    let strict = moeq(&["verify", path_arg(&fixtures().join("gpt-oss/hf-bf16")), path_arg(&q8), "--max-kl", "0"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("KL divergence reaches"));
    let out = dir.path().join("v.gguf");
    let run = moeq(&[
        "convert",
        path_arg(&fixtures().join("mixtral/hf")),
        "-o",
        path_arg(&out),
        "--type",
        "Q8_0",
        "--verify",
        "-q",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(String::from_utf8_lossy(&run.stdout).contains("PASS"));
    // 8-bit well below 4-bit, in tensors and in the model's outputs. (Q4_1 and Q4_0 land
    // close together on these random Gaussian weights, as in llama.cpp's own measurements.)
    let (q8, q41, q40) = (error("Q8_0"), error("Q4_1"), error("Q4_0"));
    assert!(q8.0 * 5.0 < q41.0 && q8.0 * 5.0 < q40.0, "tensor errors {q8:?} {q41:?} {q40:?}");
    assert!(q8.1 * 5.0 < q41.1 && q8.1 * 5.0 < q40.1, "KL {q8:?} {q41:?} {q40:?}");
}

/// verify fails loudly on broken outputs and names the culprit.
#[test]
fn verify_catches_broken_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let swap = |a: &str, b: &str| {
        let (a, b) = (a.to_string(), b.to_string());
        move |range: &dyn Fn(&str) -> (usize, usize), bytes: &mut [u8]| {
            let ((x, n), (y, _)) = (range(&a), range(&b));
            let tmp = bytes[x..x + n].to_vec();
            bytes.copy_within(y..y + n, x);
            bytes[y..y + n].copy_from_slice(&tmp);
        }
    };
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "gpt-oss/hf-mxfp4",
            patched_golden(
                dir.path(),
                "gpt-oss-mxfp4.gguf",
                swap("blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"),
            ),
            vec!["blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"],
        ),
        (
            "gpt-oss/hf-mxfp4",
            patched_golden(dir.path(), "gpt-oss-mxfp4.gguf", |range, bytes| {
                let (at, n) = range("blk.1.ffn_down_exps.weight");
                for block in bytes[at..at + n].chunks_exact_mut(17) {
                    block[1..].iter_mut().for_each(|b| *b = b.rotate_left(4)); // nibbles swapped
                }
            }),
            vec!["blk.1.ffn_down_exps.weight"],
        ),
        (
            "gpt-oss/original",
            patched_golden(dir.path(), "gpt-oss-mxfp4.gguf", |range, bytes| {
                let (at, n) = range("blk.1.attn_sinks.weight");
                bytes[at..at + n].fill(0);
            }),
            vec!["blk.1.attn_sinks.weight"],
        ),
        (
            "mixtral/hf",
            patched_golden(dir.path(), "mixtral-bf16.gguf", |range, bytes| {
                // Expert 2's rows of ffn_up_exps (96 rows of 64 bf16) in reverse order.
                let (at, _) = range("blk.0.ffn_up_exps.weight");
                let (row, rows) = (128, 96);
                let slab = at + 2 * rows * row;
                let reversed: Vec<u8> =
                    bytes[slab..slab + rows * row].chunks_exact(row).rev().flatten().copied().collect();
                bytes[slab..slab + rows * row].copy_from_slice(&reversed);
            }),
            vec!["blk.0.ffn_up_exps.weight"],
        ),
        (
            "llama/hf",
            patched_golden(dir.path(), "llama-bf16.gguf", |range, bytes| {
                // attn_q rows left in Hugging Face's rotate-half order (head size 16).
                let (at, n) = range("blk.0.attn_q.weight");
                let (row, hd) = (128, 16);
                let q = bytes[at..at + n].to_vec();
                for r in 0..n / row {
                    let (h, k) = (r / hd, r % hd);
                    let src = h * hd + 2 * (k % (hd / 2)) + k / (hd / 2);
                    bytes[at + r * row..at + (r + 1) * row].copy_from_slice(&q[src * row..(src + 1) * row]);
                }
            }),
            vec!["blk.0.attn_q.weight"],
        ),
    ];
    for (source, output, culprits) in cases {
        let (code, r) = verify_json(&fixtures().join(source), &output);
        assert_eq!(code, 1, "{output:?} passed: {r}");
        let failures = r["failures"].to_string();
        for c in culprits {
            assert!(failures.contains(c), "{c} not named in {failures}");
        }
    }
    // Only the layers before the zeroed sink are taken from the source's run.
    let (_, r) = verify_json(&fixtures().join("gpt-oss/original"), &dir.path().join("broken-2-gpt-oss-mxfp4.gguf"));
    assert_eq!(
        (&r["model"]["reused_layers"], &r["model"]["reused_head"]),
        (&serde_json::json!([0]), &Json::from(false))
    );
    // Same tensors but a different hyperparameter: nothing is taken, and the forward shows it.
    let eps = patched_golden(dir.path(), "gpt-oss-mxfp4.gguf", |_, bytes| {
        let key = b"gpt-oss.attention.layer_norm_rms_epsilon";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        assert_eq!(bytes[at..at + 4], [6, 0, 0, 0], "an f32 value");
        let v = f32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        bytes[at + 4..at + 8].copy_from_slice(&(v * 1e4).to_le_bytes());
    });
    let (code, r) = verify_json(&fixtures().join("gpt-oss/hf-mxfp4"), &eps);
    assert_eq!(code, 1, "{r}");
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!(
        (&r["model"]["reused_layers"], &r["model"]["reused_head"]),
        (&serde_json::json!([]), &Json::from(false))
    );
    assert!(r["model"]["kl_max"].as_f64() > Some(0.0), "{}", r["model"]);
    // The shuffled expert is the worst expert of its layer.
    let (_, r) = verify_json(&fixtures().join("mixtral/hf"), &dir.path().join("broken-3-mixtral-bf16.gguf"));
    assert_eq!(r["blocks"][0]["worst_experts"][0]["expert"], 2, "{}", r["blocks"][0]);
}

/// Every tensor of a safetensors folder: name → (dtype, shape, bytes).
fn folder_tensors(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let model = moeq_formats::safetensors::SafetensorsModel::open(dir).unwrap();
    model
        .tensors()
        .map(|(file, t)| (t.name.clone(), (format!("{:?}", t.dtype), t.shape.clone(), file.data(t).to_vec())))
        .collect()
}

fn config_of(dir: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// The MLX values of `module` (affine or MXFP4) in a folder's tensors.
fn mlx_values(t: &std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)>, module: &str) -> Vec<f32> {
    let weight = &t[&format!("{module}.weight")].2;
    let scales = &t[&format!("{module}.scales")].2;
    let mut y = vec![0.0f32; weight.len() * 2];
    moeq_kernels::openai::dequantize(weight, scales, &mut y);
    y
}

#[test]
fn mlx_builds_equal_what_mlx_lm_writes() {
    let out = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("llama/hf", &["--type", "q4"], "llama-q4"),
        ("llama/hf", &["--type", "q8", "--group-size", "64"], "llama-q8"),
        ("gpt-oss/hf-mxfp4", &[], "gpt-oss-mxfp4"),
        ("gpt-oss/hf-mxfp4", &["--type", "q4", "--group-size", "32"], "gpt-oss-q4"),
        // Sources mlx-lm does not read itself give the same build.
        ("gpt-oss/original", &[], "gpt-oss-mxfp4"),
        ("gpt-oss/original", &["--type", "q4", "--group-size", "32"], "gpt-oss-q4"),
    ];
    for (i, (src, args, golden)) in cases.iter().enumerate() {
        let dst = out.path().join(format!("{i}-{golden}"));
        let input = fixtures().join(src);
        let mut argv = vec!["convert", path_arg(&input), "-o", path_arg(&dst), "--format", "mlx", "-q"];
        argv.extend(args.iter());
        ok(&argv);
        let want = fixtures().join("golden-mlx").join(golden);
        let (got_t, want_t) = (folder_tensors(&dst), folder_tensors(&want));
        assert_eq!(got_t.keys().collect::<Vec<_>>(), want_t.keys().collect::<Vec<_>>(), "{src} → {golden}");
        for (name, w) in &want_t {
            assert!(got_t[name] == *w, "{src} → {golden}: tensor {name} differs");
        }
        let (got_c, want_c) = (config_of(&dst), config_of(&want));
        assert_eq!(got_c["quantization"], want_c["quantization"], "{src} → {golden}");
        assert_eq!(got_c["quantization_config"], want_c["quantization"]);
        for f in ["tokenizer.json", "chat_template.jinja", "model.safetensors.index.json"] {
            assert!(dst.join(f).is_file(), "{f} in {}", dst.display());
        }
    }

    // A bf16 fine-tune: everything equal, experts re-quantized to MXFP4 with equal values.
    let dst = out.path().join("bf16-q4");
    ok(&[
        "convert",
        path_arg(&fixtures().join("gpt-oss/hf-bf16")),
        "-o",
        path_arg(&dst),
        "--format",
        "mlx",
        "--type",
        "q4",
        "--group-size",
        "32",
        "-q",
    ]);
    let (got, want) = (folder_tensors(&dst), folder_tensors(&fixtures().join("golden-mlx/gpt-oss-q4")));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    let mut experts = 0;
    for (name, w) in &want {
        if name.contains(".experts.") && !name.ends_with(".bias") {
            if name.ends_with(".weight") {
                let module = name.trim_end_matches(".weight");
                assert_eq!(mlx_values(&got, module), mlx_values(&want, module), "{module}");
                experts += 1;
            }
        } else {
            assert!(got[name] == *w, "bf16 → q4: tensor {name} differs");
        }
    }
    assert_eq!(experts, 6);
    assert_eq!(config_of(&dst)["quantization"], config_of(&fixtures().join("golden-mlx/gpt-oss-q4"))["quantization"]);

    // Without --type, bf16 stays bf16; Mixtral's experts are stacked and quantized.
    let dst = out.path().join("bf16");
    ok(&["convert", path_arg(&fixtures().join("gpt-oss/hf-bf16")), "-o", path_arg(&dst), "--format", "mlx", "-q"]);
    let t = folder_tensors(&dst);
    assert_eq!(t["model.layers.0.mlp.experts.gate_proj.weight"].1, vec![4, 64, 64]);
    assert_eq!(t["model.layers.0.mlp.experts.gate_proj.weight"].0, "BF16");
    assert!(config_of(&dst).get("quantization").is_none());
    let dst = out.path().join("mixtral");
    ok(&[
        "convert",
        path_arg(&fixtures().join("mixtral/hf")),
        "-o",
        path_arg(&dst),
        "--format",
        "mlx",
        "--type",
        "q8",
        "--quant-override",
        "lm_head=bf16",
        "-q",
    ]);
    let t = folder_tensors(&dst);
    assert_eq!(t["model.layers.1.block_sparse_moe.switch_mlp.up_proj.weight"].1, vec![4, 96, 16]);
    assert_eq!(t["lm_head.weight"].0, "BF16");
    assert!(!t.contains_key("lm_head.scales"));
    // Rows of 96 values are not whole groups of 64: down_proj stays bf16, as mlx-lm leaves it.
    assert_eq!(t["model.layers.1.block_sparse_moe.switch_mlp.down_proj.weight"].0, "BF16");

    // Sharded past a size limit, with an index naming every tensor's shard; the same tensors.
    for format in ["mlx", "hf"] {
        let dst = out.path().join(format!("sharded-{format}"));
        let src = fixtures().join("gpt-oss/hf-mxfp4");
        ok(&["convert", path_arg(&src), "-o", path_arg(&dst), "--format", format, "--split-max-size", "60K", "-q"]);
        let index: Json =
            serde_json::from_slice(&std::fs::read(dst.join("model.safetensors.index.json")).unwrap()).unwrap();
        let map = index["weight_map"].as_object().unwrap();
        let shards: std::collections::BTreeSet<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
        assert!(shards.len() >= 3, "{format}: {shards:?}");
        assert!(shards.iter().all(|s| dst.join(s).is_file()), "{shards:?}");
        let whole = folder_tensors(&dst);
        assert_eq!(map.len(), whole.len());
        let single = out.path().join(format!("single-{format}"));
        ok(&["convert", path_arg(&src), "-o", path_arg(&single), "--format", format, "-q"]);
        assert!(folder_tensors(&single) == whole, "{format}: sharding changed the tensors");
    }
}

#[test]
fn hf_builds_equal_the_published_gpt_oss_layout() {
    let out = tempfile::tempdir().unwrap();
    let published = folder_tensors(&fixtures().join("gpt-oss/hf-mxfp4"));
    for src in ["gpt-oss/original", "gpt-oss/hf-mxfp4"] {
        let dst = out.path().join(src.replace('/', "-"));
        ok(&["convert", path_arg(&fixtures().join(src)), "-o", path_arg(&dst), "--format", "hf", "-q"]);
        assert!(folder_tensors(&dst) == published, "{src}: the tensors differ from the published layout");
        let config = config_of(&dst);
        assert_eq!(config["quantization_config"]["quant_method"], "mxfp4");
        assert_eq!(config["architectures"][0], "GptOssForCausalLM");
        assert_eq!(config["num_local_experts"], 4);
    }
    // A bf16 fine-tune goes back to MXFP4 with OpenAI's quantizer: the same values.
    let dst = out.path().join("from-bf16");
    ok(&["convert", path_arg(&fixtures().join("gpt-oss/hf-bf16")), "-o", path_arg(&dst), "--format", "hf", "-q"]);
    let got = folder_tensors(&dst);
    assert_eq!(got.keys().collect::<Vec<_>>(), published.keys().collect::<Vec<_>>());
    for (name, want) in &published {
        if let Some(base) = name.strip_suffix("_blocks") {
            let decode = |t: &std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)>| {
                let (blocks, scales) = (&t[name].2, &t[&format!("{base}_scales")].2);
                let mut y = vec![0.0f32; scales.len() * 32];
                moeq_kernels::openai::dequantize(blocks, scales, &mut y);
                y
            };
            assert_eq!(decode(&got), decode(&published), "{name}");
        } else if !name.ends_with("_scales") {
            assert!(got[name] == *want, "{name} differs");
        }
    }
    assert_eq!(config_of(&dst)["quantization_config"]["quant_method"], "mxfp4");
}

#[test]
fn folder_builds_refuse_bad_requests_and_leave_nothing() {
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("x");
    let llama = fixtures().join("llama/hf");
    let err = fails(&["convert", path_arg(&llama), "-o", path_arg(&dst), "--format", "hf"]);
    assert!(err.contains("not gpt-oss"), "{err}");
    let err = fails(&["convert", path_arg(&llama), "-o", path_arg(&dst), "--format", "mlx", "--type", "q3"]);
    assert!(err.contains("'q3' is not an MLX type"), "{err}");
    let err = fails(&[
        "convert",
        path_arg(&llama),
        "-o",
        path_arg(&dst),
        "--format",
        "mlx",
        "--type",
        "q4",
        "--group-size",
        "48",
    ]);
    assert!(err.contains("group size 48"), "{err}");
    let err = fails(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&dst), "--format", "mlx"]);
    assert!(err.contains("a GGUF converts to GGUF"), "{err}");
    let err =
        fails(&["convert", path_arg(&llama), "-o", path_arg(&dst), "--format", "mlx", "--quant-override", "lm_head"]);
    assert!(err.contains("PATTERN=TYPE"), "{err}");
    // NaN in a bf16 weight: named, and no folder (nor temporary folder) left.
    let broken = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(llama.join(f), broken.path().join(f)).unwrap();
    }
    rewrite_safetensors(&llama.join("model.safetensors"), &broken.path().join("model.safetensors"), |name, _, data| {
        if name == "model.layers.1.mlp.up_proj.weight" {
            data[6..8].copy_from_slice(&[0xc0, 0x7f]);
        }
        true
    });
    let err =
        fails(&["convert", path_arg(broken.path()), "-o", path_arg(&dst), "--format", "mlx", "--type", "q4", "-q"]);
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("NaN"), "{err}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing left behind");
    // An existing output folder is not overwritten.
    std::fs::create_dir(&dst).unwrap();
    let err = fails(&["convert", path_arg(&llama), "-o", path_arg(&dst), "--format", "mlx"]);
    assert!(err.contains("exists already"), "{err}");
}

/// MLX and Hugging Face builds are models too: verify reads them in their own layout.
#[test]
fn verify_reads_mlx_and_hf_builds() {
    let out = tempfile::tempdir().unwrap();
    let hf = out.path().join("hf");
    ok(&["convert", path_arg(&fixtures().join("gpt-oss/hf-bf16")), "-o", path_arg(&hf), "--format", "hf", "-q"]);
    let mlx = fixtures().join("golden-mlx");
    for (source, output) in [
        (fixtures().join("gpt-oss/hf-mxfp4"), mlx.join("gpt-oss-mxfp4")),
        (fixtures().join("gpt-oss/original"), mlx.join("gpt-oss-mxfp4")),
        (fixtures().join("gpt-oss/hf-mxfp4"), hf.clone()),
    ] {
        let (code, r) = verify_json(&source, &output);
        assert_eq!(code, 0, "{output:?}: {}", r["failures"]);
        assert_eq!((r["model"]["kl_max"].as_f64(), r["model"]["top1"].as_f64()), (Some(0.0), Some(1.0)), "{output:?}");
    }
    // Quantized builds: within their limits, 8-bit far closer than 4-bit.
    let kl = |dir: &str| {
        let (code, r) = verify_json(&fixtures().join("llama/hf"), &mlx.join(dir));
        assert_eq!(code, 0, "{dir}: {}", r["failures"]);
        r["model"]["kl_mean"].as_f64().unwrap()
    };
    assert!(kl("llama-q8") * 20.0 < kl("llama-q4"));
    let (code, r) = verify_json(&fixtures().join("gpt-oss/hf-mxfp4"), &mlx.join("gpt-oss-q4"));
    assert_eq!(code, 0, "{}", r["failures"]);
    // Mixtral as an MLX q8 build, with more options.
    let mixtral_q8 = |dir: &str, more: &[&str]| {
        let (input, output) = (fixtures().join("mixtral/hf"), out.path().join(dir));
        let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&output), "--format", "mlx", "--type", "q8"];
        args.extend(more);
        moeq(&args)
    };
    // convert --verify checks a fresh folder the same way. (mlx-lm's default also quantizes
    // Mixtral's router, which flips a routing decision here; keep it in bf16.)
    let run = mixtral_q8("mixtral-q8", &["--quant-override", "*.block_sparse_moe.gate=bf16", "--verify", "-q"]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(String::from_utf8_lossy(&run.stdout).contains("PASS"));
    assert!(!String::from_utf8_lossy(&run.stderr).contains("routers"));
    // Without the override the user is told (and the build is mlx-lm's).
    let run = mixtral_q8("mixtral-q8-default", &["-q"]);
    assert_eq!(run.status.code(), Some(0));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("2 MoE routers") && err.contains("*.block_sparse_moe.gate=bf16"), "{err}");
    // A build is read, not converted again.
    let err = fails(&["convert", path_arg(&mlx.join("llama-q4")), "-o", path_arg(&out.path().join("x.gguf"))]);
    assert!(err.contains("an MLX build"), "{err}");
}

/// A golden GGUF with its metadata edited, written anew by moeq-formats' GGUF writer.
fn edited_golden(dir: &Path, name: &str, tag: &str, edit: impl FnOnce(&mut moeq_formats::gguf::GgufPlan)) -> PathBuf {
    let file = moeq_formats::gguf::GgufFile::open(&golden(name)).unwrap();
    let mut plan = moeq_formats::gguf::GgufPlan::from_header(file.header());
    edit(&mut plan);
    let out = dir.join(format!("{tag}-{name}"));
    let writer = moeq_formats::gguf::GgufWriter::create(&out, &plan, None).unwrap();
    for (i, t) in plan.tensors.iter().enumerate() {
        let index = file.header().tensors.iter().position(|s| s.name == t.name).unwrap();
        writer.write_tensor(i, file.tensor_data(index)).unwrap();
    }
    writer.finish().unwrap();
    out
}

/// GGUF metadata that disagrees with the tensors is refused by eval and verify before the
/// forward runs (exit 2, naming the key and the tensor), never a panic.
#[test]
fn forward_refuses_metadata_that_disagrees_with_the_tensors() {
    use moeq_formats::gguf::Value;
    let dir = tempfile::tempdir().unwrap();
    let set = |key: &'static str, v: u32| move |p: &mut moeq_formats::gguf::GgufPlan| p.set(key, Value::U32(v));
    let cases: Vec<(&str, PathBuf, [&str; 2])> = vec![
        (
            "llama/hf",
            edited_golden(dir.path(), "llama-bf16.gguf", "key-length", set("llama.attention.key_length", 8208)),
            ["llama.attention.key_length = 8208", "blk.0.attn_q.weight"],
        ),
        (
            "gpt-oss/hf-mxfp4",
            edited_golden(dir.path(), "gpt-oss-mxfp4.gguf", "embd", set("gpt-oss.embedding_length", 96)),
            ["gpt-oss.embedding_length = 96", "token_embd.weight"],
        ),
        (
            "mixtral/hf",
            edited_golden(dir.path(), "mixtral-bf16.gguf", "kv", |p| p.remove("llama.attention.head_count_kv")),
            ["llama.attention.head_count_kv (absent", "blk.0.attn_k.weight"],
        ),
        (
            "gpt-oss/hf-mxfp4",
            edited_golden(dir.path(), "gpt-oss-mxfp4.gguf", "experts", set("gpt-oss.expert_count", 8)),
            ["gpt-oss.expert_count = 8", "blk.0.ffn_gate_inp.weight"],
        ),
        (
            "mixtral/hf",
            edited_golden(dir.path(), "mixtral-bf16.gguf", "layers", set("llama.block_count", 3)),
            ["llama.block_count = 3", "blk.2.attn_norm.weight"],
        ),
        (
            "llama/hf",
            edited_golden(dir.path(), "llama-bf16.gguf", "fewer-layers", set("llama.block_count", 1)),
            ["llama.block_count = 1", "blk.1."],
        ),
        (
            "gpt-oss/hf-mxfp4",
            edited_golden(dir.path(), "gpt-oss-mxfp4.gguf", "used", set("gpt-oss.expert_used_count", 5)),
            ["gpt-oss.expert_used_count = 5", "gpt-oss.expert_count = 4"],
        ),
        (
            "mixtral/hf",
            edited_golden(dir.path(), "mixtral-bf16.gguf", "heads", set("llama.attention.head_count", 3)),
            ["llama.attention.head_count = 3", "llama.attention.head_count_kv = 2"],
        ),
    ];
    for (source, gguf, needles) in &cases {
        let eval = fails(&["eval", path_arg(gguf), "--tokens", "1,2,3"]);
        let verify = fails(&["verify", path_arg(&fixtures().join(source)), path_arg(gguf)]);
        for err in [&eval, &verify] {
            assert!(err.contains(path_arg(gguf)), "{err}");
            for n in needles {
                assert!(err.contains(n), "{n:?} not in {err}");
            }
        }
    }
    // A model with fewer layers as the output: refused, not run layer against missing layer.
    let one_layer = edited_golden(dir.path(), "llama-bf16.gguf", "one-layer", |p| {
        p.set("llama.block_count", Value::U32(1));
        p.tensors.retain(|t| !t.name.starts_with("blk.1."));
    });
    ok(&["eval", path_arg(&one_layer), "--tokens", "1,2,3"]);
    let err = fails(&["verify", path_arg(&fixtures().join("llama/hf")), path_arg(&one_layer)]);
    assert!(err.contains("1 layers") && err.contains("2 layers") && err.contains("not the same model"), "{err}");
}

#[path = "cli/qwen.rs"]
mod qwen;
