//! End-to-end tests of the `moeq` binary on the bundled tiny checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

#[path = "cli/vocab.rs"]
mod vocab;

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

/// Runs moeq expecting a clean failure (exit 2, an `error:` line after any warnings, no
/// panic); returns stderr.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let out = moeq(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "moeq {args:?}: {stderr}");
    let before_error = stderr.split("\nerror: ").next().unwrap_or_default();
    assert!(
        stderr.starts_with("error: ")
            || before_error.lines().all(|l| l.starts_with("warning: ")) && stderr.contains("\nerror: "),
        "{stderr}"
    );
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
        "glm4-moe/hf",
        "glm4-moe/hf-qknorm",
        "glm4-moe-lite/hf",
        "minimax-m2/hf",
        "minimax-m2/fp8",
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
    // A set mixing two models' shards: the tensor held twice is named with both shards.
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    ok(&["convert", path_arg(&source), "-o", path_arg(&a), "--split-max-size", "200K", "-q"]);
    ok(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&b), "--split-max-size", "100K", "-q"]);
    let shard = |stem: &str, k: u32| dir.path().join(format!("{stem}-{k:05}-of-00003.gguf"));
    for k in 1..=3 {
        std::fs::copy(shard(if k == 2 { "b" } else { "a" }, k), shard("x", k)).unwrap();
    }
    let err = fails(&["inspect", path_arg(&shard("x", 1))]);
    assert!(err.contains("is also in") && err.contains("x-00001-of-00003.gguf"), "{err}");
    assert!(err.contains("x-00002-of-00003.gguf: tensor '"), "{err}");
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("the unit must be K, M, G or T"));
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
    // A shard that is there but is a folder is not called missing.
    std::fs::create_dir(partial.path().join("model-00001-of-00002.safetensors")).unwrap();
    let err = fails(&["inspect", path_arg(partial.path())]);
    assert!(err.contains("model-00001-of-00002.safetensors', which is not a regular file"), "{err}");
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
    // 21, DeepSeek-V3's three, GLM-4.5's eight, MiniMax-M2's four and GLM-4.7-Flash's four.
    assert_eq!(checked, 40, "expected the 40 quantized goldens");
}

#[test]
fn convert_type_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let err = moeq(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&out), "--type", "Q7_K"]);
    assert_eq!(err.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&err.stderr).contains("unknown type 'Q7_K'"));
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
        // Trained weights (tests/fixtures/trained-moe/README.md).
        ("trained-moe", "trained-moe/hf"),
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
fn patched_golden(dir: &Path, name: &str, patch: impl FnOnce(&dyn Fn(&str) -> (usize, usize), &mut [u8])) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = name.strip_suffix(".gguf").unwrap_or_else(|| panic!("{name}: not a .gguf golden"));
    patched(dir, name, &format!("broken-{n}-{stem}"), patch)
}

/// A golden GGUF with `patch` applied to its bytes (given each tensor's data range), written
/// as `dir/tag.gguf` (named by the caller: [`patched_golden`]'s shared counter is left to the
/// tests that read it).
fn patched(
    dir: &Path,
    name: &str,
    tag: &str,
    patch: impl FnOnce(&dyn Fn(&str) -> (usize, usize), &mut [u8]),
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
    let out = dir.join(format!("{tag}.gguf"));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Runs `moeq verify --json --quiet` (the JSON asked for is printed, pass or fail); returns the
/// exit code and the report.
fn verify_json(source: &Path, output: &Path) -> (i32, Json) {
    let out = moeq(&["verify", path_arg(source), path_arg(output), "--json", "--quiet"]);
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
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stdout));
    assert!(String::from_utf8_lossy(&run.stdout).contains("PASS"));
    // 8-bit well below 4-bit, in tensors and in the model's outputs. (Q4_1 and Q4_0 land
    // close together on these random Gaussian weights, as in llama.cpp's own measurements.)
    let (q8, q41, q40) = (error("Q8_0"), error("Q4_1"), error("Q4_0"));
    assert!(q8.0 * 5.0 < q41.0 && q8.0 * 5.0 < q40.0, "tensor errors {q8:?} {q41:?} {q40:?}");
    assert!(q8.1 * 5.0 < q41.1 && q8.1 * 5.0 < q40.1, "KL {q8:?} {q41:?} {q40:?}");
}

/// verify on a quantized output: beyond-limit block and model measures are notes when every
/// tensor is within its bound and the hyperparameters agree, failures when given on the command
/// line; a hyperparameter that differs always fails, named.
#[test]
fn verify_notes_quantization_noise_and_fails_changed_hyperparameters() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let q3 = dir.path().join("q3");
    ok(&["convert", path_arg(&llama), "-o", path_arg(&q3), "--format", "mlx", "--type", "q3", "-q"]);
    let (code, r) = verify_json(&llama, &q3);
    assert_eq!(code, 0, "{}", r["failures"]);
    assert_eq!(r["enforced"], serde_json::json!({"max_kl": false, "min_top1": false, "max_moe_rel_err": false}));
    let top1 = r["model"]["top1"].as_f64().unwrap();
    assert!(top1 < r["limits"]["min_top1"].as_f64().unwrap(), "the fixture's q3 is below the 4-bit-class top-1: {r}");
    assert!(r["notes"].to_string().contains("top-1 agreement is"), "{}", r["notes"]);
    // The same limit given: a failure; the others stay notes.
    let out = moeq(&["verify", path_arg(&llama), path_arg(&q3), "--json", "--min-top1", "0.5"]);
    let strict: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(strict["failures"].to_string().contains("top-1 agreement is"), "{strict}");
    assert_eq!(strict["enforced"]["max_kl"], false);
    // A changed hyperparameter (the same tensors otherwise) fails and is named.
    for (kv, named) in [
        ("llama.attention.layer_norm_rms_epsilon=float:0.001", "RMSNorm epsilon: 0.00001 → 0.001"),
        ("llama.rope.freq_base=float:20000", "RoPE frequencies"),
    ] {
        let gguf = dir.path().join("hp.gguf");
        ok(&["convert", path_arg(&llama), "-o", path_arg(&gguf), "--type", "Q4_0", "-q", "--override-kv", kv]);
        let (code, r) = verify_json(&llama, &gguf);
        assert_eq!(code, 1, "{kv}: {r}");
        assert!(r["failures"].to_string().contains(named), "{kv}: {}", r["failures"]);
        assert_eq!(r["enforced"]["max_kl"], true);
    }
    // Metadata a forward cannot run or that disagrees with the tensors: an error naming the key.
    for (kv, named) in [
        ("llama.rope.freq_base=float:0", "'llama.rope.freq_base' is 0: the RoPE base must be a positive number"),
        ("llama.attention.value_length=int:8", "llama.attention.value_length = 8 differs from the head size 16"),
    ] {
        let gguf = dir.path().join("bad.gguf");
        ok(&["convert", path_arg(&llama), "-o", path_arg(&gguf), "--type", "Q8_0", "-q", "--override-kv", kv]);
        let e = fails(&["verify", path_arg(&llama), path_arg(&gguf)]);
        assert!(e.contains(named), "{kv}: {e}");
    }
    // A scaling factor without a type scales linearly, as llama.cpp's loader reads it.
    let gguf = dir.path().join("factor.gguf");
    let kv = "llama.rope.scaling.factor=float:4";
    ok(&["convert", path_arg(&llama), "-o", path_arg(&gguf), "--type", "Q8_0", "-q", "--override-kv", kv]);
    let (code, r) = verify_json(&llama, &gguf);
    assert_eq!(code, 1, "{r}");
    assert!(r["failures"].to_string().contains("pair 0 turns at 1.000000e0 → 2.500000e-1"), "{}", r["failures"]);
    // A checkpoint whose RoPE base is not positive is refused before anything is written.
    let zero = dir.path().join("theta0");
    std::fs::create_dir(&zero).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(llama.join(f), zero.join(f)).unwrap();
    }
    let mut config: Json = serde_json::from_slice(&std::fs::read(llama.join("config.json")).unwrap()).unwrap();
    config["rope_theta"] = Json::from(0.0);
    std::fs::write(zero.join("config.json"), config.to_string()).unwrap();
    let e = fails(&["convert", path_arg(&zero), "-o", path_arg(&dir.path().join("z.gguf"))]);
    assert!(e.contains("\"rope_theta\" is 0: the RoPE base must be a positive number"), "{e}");
    // Limits are numbers in range; convert --verify takes them too, and not --json.
    for (flag, value, message) in [
        ("--max-kl", "NaN", "is not a number ≥ 0"),
        ("--min-top1", "90", "for 90% write 0.9"),
        ("--max-moe-rel-err", "-1", "≥ 0"),
    ] {
        let out = moeq(&["verify", path_arg(&llama), path_arg(&q3), &format!("{flag}={value}")]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "{flag} {value}");
    }
    let gguf = dir.path().join("gated.gguf");
    let out =
        moeq(&["convert", path_arg(&llama), "-o", path_arg(&gguf), "--type", "Q4_0", "--verify", "--max-kl", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("next-token KL divergence reaches"));
    let out = moeq(&["convert", path_arg(&llama), "-o", path_arg(&gguf), "--type", "Q4_0", "--verify", "--json"]);
    assert_eq!(out.status.code(), Some(2));
}

/// An MLX build of a Llama 3.1-style checkpoint (`rope_scaling` of type llama3): read back with
/// the rope factors llama.cpp's file computes, so verify passes; against a plain source it differs.
#[test]
fn mlx_builds_of_llama3_rope_scaling_verify() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let l3 = dir.path().join("l3");
    std::fs::create_dir(&l3).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(llama.join(f), l3.join(f)).unwrap();
    }
    let mut config: Json = serde_json::from_slice(&std::fs::read(llama.join("config.json")).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    std::fs::write(l3.join("config.json"), config.to_string()).unwrap();
    for ty in ["q8", "bf16"] {
        let out = dir.path().join(ty);
        let run = moeq(&["convert", path_arg(&l3), "-o", path_arg(&out), "--format", "mlx", "--type", ty, "--verify"]);
        assert_eq!(run.status.code(), Some(0), "{ty}: {}", String::from_utf8_lossy(&run.stdout));
    }
    let (code, r) = verify_json(&llama, &dir.path().join("q8"));
    assert_eq!(code, 1, "{r}");
    assert!(r["failures"].to_string().contains("RoPE frequencies"), "{}", r["failures"]);
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

/// An MLX budget whose knapsack, at the smallest room, still picks options whose exact files are
/// a byte over (q2/q4/q8 candidates at q4's size, calibrated: "internal error: the MLX build
/// stays larger than the budget (65562 > 65561 bytes)") writes a build within the budget.
#[test]
fn mlx_budget_at_its_floor_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (llama, calib) = (fixtures().join("llama/hf"), fixtures().join("rounding/calib.txt"));
    let (uniform, mixed) = (dir.path().join("q4"), dir.path().join("mixed"));
    ok(&["convert", path_arg(&llama), "-o", path_arg(&uniform), "--format", "mlx", "--type", "q4", "-q"]);
    ok(&[
        "convert",
        path_arg(&llama),
        "-o",
        path_arg(&mixed),
        "--format",
        "mlx",
        "--type",
        "q4",
        "--optimize",
        "--candidate-types",
        "q2,q4,q8",
        "--calibration",
        path_arg(&calib),
        "-q",
    ]);
    let size = |d: &Path| std::fs::metadata(d.join("model.safetensors")).unwrap().len();
    assert!(size(&mixed) <= size(&uniform), "{} > {}", size(&mixed), size(&uniform));
}

/// verify's per-tensor bound follows what round-to-nearest of the source in the output's type
/// gives: a Q4_0 tensor with 5 % of its blocks' scales zeroed is within Q4_0's fixed bound (0.3)
/// but fails at ~2.8× its expected error, named; the file's other tensors are at their
/// expected error.
#[test]
fn verify_bounds_tensors_by_their_round_to_nearest_error() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let zeroed = patched(dir.path(), "llama-bf16-Q4_0.gguf", "zeroed-scales", |range, bytes| {
        let (at, n) = range("blk.0.ffn_up.weight");
        for block in bytes[at..at + n].chunks_exact_mut(18).step_by(20) {
            block[..2].fill(0); // the f16 scale
        }
    });
    let (code, r) = verify_json(&llama, &zeroed);
    assert_eq!(code, 1, "{r}");
    let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_up.weight").unwrap();
    let (err, expected, bound) =
        (t["rel_rmse"].as_f64().unwrap(), t["expected_rel_rmse"].as_f64().unwrap(), t["bound"].as_f64().unwrap());
    assert!(err < 0.3 && err > 2.0 * expected && bound < 0.3, "{t}");
    let failures = r["failures"].to_string();
    assert!(failures.contains("blk.0.ffn_up.weight") && failures.contains("round"), "{failures}");
    // Every other tensor is at its expected error (the golden is llama-quantize's Q4_0).
    for t in r["tensors"].as_array().unwrap().iter().filter(|t| t["name"] != "blk.0.ffn_up.weight") {
        if let (Some(e), Some(x)) = (t["rel_rmse"].as_f64(), t["expected_rel_rmse"].as_f64()) {
            assert!((e / x - 1.0).abs() < 0.05, "{t}");
        }
    }
    // MLX's 4-bit affine is not ggml's Q4_1 (the type verify takes its fixed bound from): an
    // MLX q4 source against a Q4_1 file of the same model is not "lossless" (was: every such
    // tensor "should be identical"), and is bounded by its expected error. (This pair's
    // routers fail on their own: MLX quantized them, the GGUF kept them F32.)
    let mlx = fixtures().join("golden-mlx/qwen2-moe-q4");
    let (_, r) = verify_json(&mlx, &golden("qwen2-moe-bf16-Q4_1.gguf"));
    assert!(!r["failures"].to_string().contains("should be identical"), "{}", r["failures"]);
    let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.attn_q.weight").unwrap();
    assert_eq!((&t["source_storage"], &t["output_storage"]), (&Json::from("MLX q4/64"), &Json::from("Q4_1")), "{t}");
    assert!(t["ok"] == true && t["identical"] == false && t["expected_rel_rmse"].as_f64() > Some(0.0), "{t}");
    // Nor is MLX's MXFP4 quantizer ggml's: two correct MXFP4 builds of one model (GGUF, MLX)
    // differ, within half MXFP4's fixed bound (the source's values are on the grid already).
    let (code, r) =
        verify_json(&golden("qwen3-moe-bf16-MXFP4_MOE.gguf"), &fixtures().join("golden-mlx/qwen3-moe-mxfp4"));
    assert_eq!(code, 0, "{}", r["failures"]);
    let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!((&t["source_storage"], &t["output_storage"]), (&Json::from("MXFP4"), &Json::from("MLX mxfp4")), "{t}");
    assert!(t["identical"] == false && t["rel_rmse"].as_f64() > Some(0.05), "{t}");
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

/// Asserts that moeq's forward of `input` reproduces transformers' reference file
/// (`tokens`, `logits`, `hidden.N`, `moe_in.N` / `moe_out.N`) within 1e-5 relative L2: the
/// logits, each of the `hidden` hidden states, and feed-forward blocks `0..blocks` each alone on
/// the reference's input, block n routing to no expert exactly when `dense(n)`.
fn assert_forward_matches_reference(
    input: &Path,
    reference: &Path,
    hidden: usize,
    blocks: usize,
    dense: impl Fn(usize) -> bool,
) {
    let tokens: Vec<u32> = st_tensor(reference, "tokens").iter().map(|&t| t as u32).collect();
    let trace = moeq::verify::eval::eval(input, &tokens).unwrap();
    let mut checked = vec![("logits".to_string(), rel_l2(&trace.logits, &st_tensor(reference, "logits")))];
    assert_eq!(trace.hidden.len(), hidden, "{input:?}: hidden states");
    for (n, h) in trace.hidden.iter().enumerate() {
        checked.push((format!("hidden.{n}"), rel_l2(h, &st_tensor(reference, &format!("hidden.{n}")))));
    }
    let source = moeq::source::Source::open(input).unwrap();
    let weights = moeq::model::weights::Weights::new(&source, input).unwrap();
    let model = moeq::forward::Model::new(&weights).unwrap();
    for n in 0..blocks {
        let x: Vec<f32> = st_tensor(reference, &format!("moe_in.{n}")).iter().map(|&v| v as f32).collect();
        let (out, routes) = model.ffn(n, &x).unwrap();
        assert_eq!(routes.is_empty(), dense(n), "{input:?}: layer {n} dense or MoE");
        checked.push((format!("moe_out.{n}"), rel_l2(&out, &st_tensor(reference, &format!("moe_out.{n}")))));
    }
    for (name, err) in checked {
        assert!(err <= 1e-5, "{input:?}: {name} relative L2 {err:e}");
    }
}

/// The tensors of the MLX folder `dst`, after checking that they are those of the mlx-lm
/// golden folder `want`, byte for byte and in the same order (`what` names the case).
fn mlx_tensors_equal(
    dst: &Path,
    want: &Path,
    what: &str,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let (got_t, want_t) = (folder_tensors(dst), folder_tensors(want));
    assert_eq!(got_t.keys().collect::<Vec<_>>(), want_t.keys().collect::<Vec<_>>(), "{what}");
    for (name, w) in &want_t {
        assert!(got_t[name] == *w, "{what}: tensor {name} differs");
    }
    got_t
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
        mlx_tensors_equal(&dst, &want, &format!("{src} → {golden}"));
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
    let mlx_fails = |extra: &[&str]| {
        let mut argv = vec!["convert", path_arg(&llama), "-o", path_arg(&dst), "--format", "mlx"];
        argv.extend_from_slice(extra);
        fails(&argv)
    };
    let err = mlx_fails(&["--type", "q7"]);
    assert!(err.contains("'q7' is not an MLX type"), "{err}");
    let err = mlx_fails(&["--type", "q4", "--group-size", "48"]);
    assert!(err.contains("group size 48"), "{err}");
    let err = fails(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&dst), "--format", "mlx"]);
    assert!(err.contains("a GGUF converts to GGUF"), "{err}");
    let err = mlx_fails(&["--quant-override", "lm_head"]);
    assert!(err.contains("PATTERN=TYPE"), "{err}");
    // A pattern that matches no module is a typo, not a no-op (llama.cpp's --tensor-type too).
    let err = mlx_fails(&["--type", "q4", "--quant-override", "*.q_proj=q8", "--quant-override", "*.mlp.gate=bf16"]);
    assert!(
        err.contains("'*.mlp.gate=bf16' matches no module") && err.contains("'model.layers.0.mlp.down_proj'"),
        "{err}"
    );
    assert!(!dst.exists(), "nothing written");
    // Overrides alone quantize: every module listed, and global settings (mlx-lm's loader reads
    // them whenever the block exists).
    ok(&[
        "convert",
        path_arg(&llama),
        "-o",
        path_arg(&dst),
        "--format",
        "mlx",
        "--quant-override",
        "*.q_proj=q8",
        "-q",
    ]);
    let q = &config_of(&dst)["quantization"];
    assert_eq!((&q["bits"], &q["group_size"]), (&Json::from(8), &Json::from(64)), "{q}");
    assert_eq!(q["model.layers.1.self_attn.q_proj"]["bits"], 8, "{q}");
    std::fs::remove_dir_all(&dst).unwrap();
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

/// Bytes of a folder's `model*.safetensors` files.
fn safetensors_len(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("model")
                && p.extension().is_some_and(|e| e == "safetensors")
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// MLX size budgets (`--target-size`, `--target-bpw`, `--type qN --optimize`): the written
/// files hold the budget (bytes of the safetensors files; bits per weight as mlx-lm counts
/// them), modules get mixed bit widths written as mlx-lm's per-module `quantization` entries,
/// the choice is deterministic, the log is in `--report`, what the model's own mlx-lm choice sets
/// (gpt-oss's MXFP4 experts and router) is kept, and a budget below the smallest build is refused
/// naming both sizes.
#[test]
fn mlx_size_budgets_hold_for_the_written_bytes() {
    let out = tempfile::tempdir().unwrap();
    for (k, src) in ["llama/hf", "mixtral/hf", "gpt-oss/hf-mxfp4"].iter().enumerate() {
        let input = fixtures().join(src);
        let i = path_arg(&input);
        let at = |name: &str| out.path().join(format!("{k}-{name}"));
        let mlx = |dst: &Path, extra: &[&str]| {
            let mut argv = vec!["convert", i, "-o", path_arg(dst), "--format", "mlx", "-q"];
            argv.extend(extra);
            ok(&argv)
        };
        let uniform = at("q4");
        mlx(&uniform, &["--type", "q4", "--group-size", "32"]);
        let uniform_len = safetensors_len(&uniform);
        // --type q4 --optimize: within mlx-lm's q4 build, the log saved, the choice reproducible.
        let opt = at("opt");
        let report = at("opt.json");
        mlx(&opt, &["--type", "q4", "--group-size", "32", "--optimize", "--report", path_arg(&report)]);
        let log: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let log = &log["optimize"];
        let written = safetensors_len(&opt);
        assert!(written <= uniform_len, "{src}: {written} > {uniform_len}");
        assert_eq!(log["budget_bytes"].as_u64(), Some(uniform_len), "{src}");
        assert_eq!(log["file_bytes"].as_u64(), Some(written), "{src}");
        let again = plan_json(&[i, "--format", "mlx", "--type", "q4", "--group-size", "32", "--optimize"]);
        assert_eq!(again["optimize"]["tensors"], log["tensors"], "{src}: deterministic");
        let decisions = log["tensors"].as_array().unwrap();
        let types: std::collections::BTreeSet<&str> = decisions.iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert!(types.len() >= 2, "{src}: one type only: {types:?}");
        // Every decision is in config.json as mlx-lm's loader reads it, and in the tensors.
        let q = &config_of(&opt)["quantization"];
        let tensors = folder_tensors(&opt);
        for t in decisions {
            let (module, ty) = (t["name"].as_str().unwrap(), t["type"].as_str().unwrap());
            assert!(t["why"].as_str().unwrap().starts_with("size budget"), "{t}");
            let settings = if q[module].is_object() { &q[module] } else { q };
            match ty.strip_prefix('q').and_then(|b| b.split_once(':')) {
                Some((bits, group)) => {
                    let bits: usize = bits.parse().unwrap();
                    assert_eq!(settings["bits"].as_u64(), Some(bits as u64), "{module}");
                    assert_eq!(settings["group_size"].as_u64().unwrap().to_string(), group, "{module}");
                    let (w, s) = (&tensors[&format!("{module}.weight")], &tensors[&format!("{module}.scales")]);
                    let cols = s.1.last().unwrap() * group.parse::<usize>().unwrap();
                    assert_eq!(*w.1.last().unwrap(), cols * bits / 32, "{module}");
                    assert!(tensors.contains_key(&format!("{module}.biases")), "{module}");
                }
                None if ty == "mxfp4" => assert_eq!(q[module]["mode"], "mxfp4", "{module}"),
                None => assert!(!tensors.contains_key(&format!("{module}.scales")), "{module}: {ty}"),
            }
        }
        if src.starts_with("gpt-oss") {
            // mlx-lm's own choices for gpt-oss are kept: MXFP4 experts as released, the router in 8 bits.
            assert!(decisions.iter().all(|t| !t["name"].as_str().unwrap().contains("experts")));
            assert!(decisions.iter().all(|t| !t["name"].as_str().unwrap().ends_with("router")));
            let base = folder_tensors(&uniform);
            for (name, t) in &tensors {
                if name.contains(".experts.") || name.contains(".router.") {
                    assert_eq!(&base[name], t, "{name}");
                }
            }
            assert_eq!(q["model.layers.0.mlp.router"]["bits"], 8);
        }
        // It reads back (moeq's forward on the folder).
        ok(&["eval", path_arg(&opt), "--tokens", "1,2,3"]);
        // --target-size: the smallest build holds exactly; below it is refused naming both sizes.
        let min = log["min_bytes"].as_u64().unwrap();
        let smallest = at("min");
        mlx(&smallest, &["--type", "q4", "--group-size", "32", "--target-size", &min.to_string()]);
        assert!(safetensors_len(&smallest) <= min, "{src}");
        let e = fails(&[
            "convert",
            i,
            "-o",
            path_arg(&at("never")),
            "--format",
            "mlx",
            "--type",
            "q4",
            "--group-size",
            "32",
            "--target-size",
            &(min - 1).to_string(),
        ]);
        assert!(e.contains("smaller than the smallest") && e.contains(&format!("({min} bytes")), "{e}");
        assert!(!at("never").exists());
        // --target-bpw: bits per weight as mlx-lm reports them (data bytes · 8 / parameters).
        let bpw = at("bpw");
        mlx(&bpw, &["--target-bpw", "5.5"]);
        let index: Json =
            serde_json::from_slice(&std::fs::read(bpw.join("model.safetensors.index.json")).unwrap()).unwrap();
        let (data, params) = (
            index["metadata"]["total_size"].as_u64().unwrap(),
            index["metadata"]["total_parameters"].as_u64().unwrap(),
        );
        assert!(data as f64 * 8.0 / params as f64 <= 5.5, "{src}: {data} bytes for {params} parameters");
    }
    let llama = fixtures().join("llama/hf");
    let l = path_arg(&llama);
    // --candidate-types names MLX types; calibration tokens scale each module's error by the KL
    // it causes (the GGUF optimizer's probes, on the llama.cpp-named tensors the build is made of).
    let only = plan_json(&[l, "--format", "mlx", "--target-bpw", "4.5", "--candidate-types", "q3,q5,mxfp4"]);
    for t in only["optimize"]["tensors"].as_array().unwrap() {
        assert!(["q3:64", "q5:64", "mxfp4"].contains(&t["type"].as_str().unwrap()), "{t}");
        assert_eq!(t["candidates"].as_array().unwrap().len(), 3, "{t}");
    }
    let ids = out.path().join("ids.txt");
    let chunk = |seed: u32| (0..24).map(|i| ((i * 37 + seed * 101) % 512).to_string()).collect::<Vec<_>>().join(",");
    std::fs::write(&ids, format!("{}\n{}\n", chunk(1), chunk(2))).unwrap();
    let kl = plan_json(&[l, "--format", "mlx", "--target-bpw", "4.5", "--calibration-tokens", path_arg(&ids)]);
    let log = &kl["optimize"];
    assert!(log["method"].as_str().unwrap().starts_with("kl-calibrated"), "{}", log["method"]);
    assert_eq!(log["calibration"]["tokens"], 48);
    for t in log["tensors"].as_array().unwrap() {
        assert!(t["kl"]["scale"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["why"].as_str().unwrap().contains("predicted KL"), "{t}");
    }
    assert!(kl["quantization"]["bits"].is_u64(), "{kl}");
    // --group-size without --type: the candidates at that group size.
    let g32 = plan_json(&[l, "--format", "mlx", "--target-bpw", "4.5", "--group-size", "32", "-q"]);
    for t in g32["optimize"]["tensors"].as_array().unwrap() {
        let ty = t["type"].as_str().unwrap();
        assert!(!ty.starts_with('q') || ty.ends_with(":32"), "{t}");
    }
    // A group size the rows are not whole groups of leaves MXFP4 (groups of 32) and the float type.
    let g128 = plan_json(&[l, "--format", "mlx", "--target-bpw", "4.5", "--group-size", "128", "-q"]);
    let tensors = g128["optimize"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 15, "every module budgeted");
    assert!(tensors.iter().all(|t| t["candidates"].to_string().contains("mxfp4")), "{g128}");
    let e = fails(&["convert", l, "--dry-run", "--format", "mlx", "--group-size", "32"]);
    assert!(e.contains("--group-size goes with an affine --type") && e.contains("--target-size"), "{e}");
    // What the budget refuses.
    let dst = out.path().join("never");
    let o = path_arg(&dst);
    let e = fails(&["convert", l, "-o", o, "--format", "mlx", "--optimize"]);
    assert!(e.contains("--optimize goes with --type qN"), "{e}");
    let e = fails(&["convert", l, "-o", o, "--format", "mlx", "--type", "mxfp4", "--target-bpw", "4"]);
    assert!(e.contains("--type mxfp4 with a size target"), "{e}");
    let e = fails(&["convert", l, "-o", o, "--format", "mlx", "--target-bpw", "4", "--pure"]);
    assert!(e.contains("--pure is a GGUF option"), "{e}");
    // An importance matrix of another model is refused, as for GGUF.
    let mixtral = fixtures().join("mixtral/hf");
    let other = fixtures().join("imatrix/gpt-oss-llama.imatrix.gguf");
    let mut argv = vec!["convert", path_arg(&mixtral), "-o", o, "--format", "mlx", "--target-size", "200K"];
    argv.extend(["--type", "q4", "--group-size", "32", "--imatrix", path_arg(&other)]);
    let e = fails(&argv);
    assert!(e.contains("an importance matrix for another model?"), "{e}");
    assert!(!dst.exists());
}

/// MLX budgets with calibration tokens measure whole builds on them (the uniform build, the
/// knapsack's choice, its downgrades and upgrades alone, the choice corrected in context) and
/// write the lowest; the uniform build when no mix measures lower, which the log says.
#[test]
fn mlx_budgets_measure_whole_builds_and_keep_the_lower() {
    let out = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let l = path_arg(&llama);
    let ids = out.path().join("ids.txt");
    let chunk = |seed: u32| (0..24).map(|i| ((i * 37 + seed * 101) % 512).to_string()).collect::<Vec<_>>().join(",");
    std::fs::write(&ids, format!("{}\n{}\n", chunk(1), chunk(2))).unwrap();
    let cal = ["--calibration-tokens", path_arg(&ids)];
    for (budget, base) in
        [(&["--type", "q3", "--optimize"][..], "uniform q3"), (&["--target-bpw", "4.6"][..], "uniform q4")]
    {
        let mut argv = vec![l, "--format", "mlx", "-q"];
        argv.extend(budget);
        argv.extend(cal);
        let plan = plan_json(&argv);
        let log = &plan["optimize"];
        let w = &log["whole_builds"];
        assert_eq!(w["base"], base, "{w}");
        let builds = w["builds"].as_array().unwrap();
        assert_eq!(builds[0]["name"], base);
        assert_eq!(builds[1]["name"], "knapsack (tensors probed alone)");
        assert_eq!((builds[0]["down"].as_u64(), builds[0]["up"].as_u64()), (Some(0), Some(0)));
        let kl = |b: &Json| b["kl"].as_f64().unwrap();
        assert!(builds.iter().all(|b| kl(b).is_finite() && kl(b) > 0.0), "{w}");
        // The written build is the lowest measured of those within the budget.
        let chosen = builds.iter().find(|b| b["name"] == w["chosen"]).unwrap();
        assert_eq!(chosen["fits"], true);
        assert!(builds.iter().filter(|b| b["fits"] == true).all(|b| kl(chosen) <= kl(b)), "{w}");
        assert!(kl(chosen) <= kl(&builds[0]), "{w}");
        assert_eq!(log["file_bytes"].as_u64(), chosen["bytes"].as_u64(), "{w}");
        // ... and the decisions are its types: as many modules predicted worse / better than
        // at the base type as the build counts.
        let base_ty = format!("q{}:64", &base["uniform q".len()..]);
        let (mut down, mut up) = (0, 0);
        for t in log["tensors"].as_array().unwrap() {
            let at_base = t["candidates"].as_array().unwrap().iter().find(|c| c["type"] == base_ty.as_str()).unwrap();
            let (e, e0) = (t["error"].as_f64().unwrap(), at_base["error"].as_f64().unwrap());
            if t["type"] != base_ty.as_str() && e > e0 {
                down += 1;
            } else if t["type"] != base_ty.as_str() && e < e0 {
                up += 1;
            }
        }
        assert_eq!((Some(down), Some(up)), (chosen["down"].as_u64(), chosen["up"].as_u64()), "{w}");
    }
    // The written build says which it is; the uniform choice writes mlx-lm's uniform files.
    let opt = out.path().join("opt");
    let mut argv = vec!["convert", l, "-o", path_arg(&opt), "--format", "mlx", "--type", "q3", "--optimize"];
    argv.extend(cal);
    let report = out.path().join("opt.json");
    argv.extend(["--report", path_arg(&report)]);
    let stderr = ok_stderr(&argv);
    let log: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let w = &log["optimize"]["whole_builds"];
    assert!(stderr.contains("note: MLX budget: wrote "), "{stderr}");
    let uniform = out.path().join("q3");
    ok(&["convert", l, "-o", path_arg(&uniform), "--format", "mlx", "--type", "q3", "-q"]);
    if w["chosen"] == "uniform q3" {
        assert!(stderr.contains("no mix measured lower"), "{stderr}");
        assert_eq!(folder_tensors(&opt), folder_tensors(&uniform));
    } else {
        assert!(stderr.contains(w["chosen"].as_str().unwrap()), "{stderr}");
    }
    assert!(safetensors_len(&opt) <= safetensors_len(&uniform));
    // The text log lists the builds and marks the one written.
    let mut argv = vec!["convert", "--dry-run", l, "--format", "mlx", "--type", "q3", "--optimize", "-q"];
    argv.extend(cal);
    let text = ok(&argv);
    assert!(
        text.contains("whole builds measured on the calibration tokens (base uniform q3") && text.contains("written: "),
        "{text}"
    );
    // Without calibration nothing is measured.
    let plain = plan_json(&[l, "--format", "mlx", "--type", "q3", "--optimize", "-q"]);
    assert!(plain["optimize"]["whole_builds"].is_null());
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
    // Heads mlx-lm would not run as stored: a tied build whose config says untied (mlx-lm
    // refuses it), an untied one whose config says tied (mlx-lm drops its lm_head, or refuses
    // the quantized one's scales); verify says why.
    for (source, build, tie, says) in [
        (
            "llama/hf",
            "llama-q4",
            Some(Json::from(false)),
            "tie_word_embeddings false, but the build has no lm_head.weight",
        ),
        (
            "qwen3-moe/hf",
            "qwen3-moe-q4",
            Some(Json::from(true)),
            "tie_word_embeddings true, but the build has its own lm_head",
        ),
        ("llama/hf", "llama-q4", Some(Json::Null), "tie_word_embeddings null, not true or false"),
        ("qwen3-moe/hf", "qwen3-moe-q4", None, "no tie_word_embeddings, which mlx-lm's qwen3_moe requires"),
    ] {
        let edited = fixture_variant(
            &mlx.join(build),
            "",
            |_, _, _| false,
            |c| match tie {
                Some(v) => drop(c.insert("tie_word_embeddings".into(), v)),
                None => drop(c.remove("tie_word_embeddings")),
            },
        );
        let err = fails(&["verify", path_arg(&fixtures().join(source)), path_arg(edited.path())]);
        assert!(err.contains(says), "{err}");
        // inspect describes the folder and warns the same.
        let shown = ok(&["inspect", path_arg(edited.path())]);
        assert!(shown.contains("warning") && shown.contains(says), "{shown}");
        let shown: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(edited.path())])).unwrap();
        assert!(shown["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains(says)), "{shown}");
    }
    // mlx-lm chooses its model code by model_type alone: one it would not run as this class's
    // is refused (inspect warns); its remapped names are that code (mistral is llama, which
    // ties by default).
    for (model_type, says) in [
        (Some(Json::from("frobnicate")), "model_type 'frobnicate', but the folder holds a LlamaForCausalLM ('llama')"),
        (Some(Json::from("mixtral")), "would run its 'mixtral' code"),
        (None, "config.json has no model_type"),
        (Some(Json::Null), "model_type null, not a string"),
        (Some(Json::from("mistral")), ""),
    ] {
        let edited = fixture_variant(
            &mlx.join("llama-q4"),
            "",
            |_, _, _| false,
            |c| {
                c.remove("tie_word_embeddings");
                match &model_type {
                    Some(v) => drop(c.insert("model_type".into(), v.clone())),
                    None => drop(c.remove("model_type")),
                }
            },
        );
        if says.is_empty() {
            let (code, r) = verify_json(&fixtures().join("llama/hf"), edited.path());
            assert_eq!(code, 0, "{model_type:?}: {}", r["failures"]);
            continue;
        }
        let err = fails(&["verify", path_arg(&fixtures().join("llama/hf")), path_arg(edited.path())]);
        assert!(err.contains(says), "{err}");
        let shown = ok(&["inspect", path_arg(edited.path())]);
        assert!(shown.contains("warning") && shown.contains(says), "{shown}");
    }
    // A folder mlx-lm runs as stored gets no such warning.
    let shown = ok(&["inspect", path_arg(&mlx.join("llama-q4"))]);
    assert!(!shown.contains("lm_head"), "{shown}");
    // Packed codes without their scales: verify refuses, inspect warns the same.
    let unscaled =
        fixture_variant(&mlx.join("qwen3-moe-q4"), "model.safetensors", |name, _, _| name != "lm_head.scales", |_| ());
    std::fs::remove_file(unscaled.path().join("model.safetensors.index.json")).unwrap();
    let says = "packed codes (U32 words), but the folder has no 'lm_head.scales'";
    let err = fails(&["verify", path_arg(&fixtures().join("qwen3-moe/hf")), path_arg(unscaled.path())]);
    assert!(err.contains(says), "{err}");
    let shown = ok(&["inspect", path_arg(unscaled.path())]);
    assert!(shown.contains("warning") && shown.contains(says), "{shown}");
    let (code, r) = verify_json(&fixtures().join("gpt-oss/hf-mxfp4"), &mlx.join("gpt-oss-q4"));
    assert_eq!(code, 0, "{}", r["failures"]);
    // mlx-lm's gpt_oss ignores tie_word_embeddings (it always has its lm_head): so does moeq.
    let tied = fixture_variant(
        &mlx.join("gpt-oss-q4"),
        "",
        |_, _, _| false,
        |c| {
            c.insert("tie_word_embeddings".into(), Json::from(true));
        },
    );
    let (code, r) = verify_json(&fixtures().join("gpt-oss/hf-mxfp4"), tied.path());
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
    let run = mixtral_q8("mixtral-q8", &["--quant-override", "*.block_sparse_moe.gate=bf16", "--verify"]);
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

/// A GGUF file with `metadata` and F32 tensors `(name, ne, values)`.
fn gguf_file(path: &Path, metadata: Vec<(&str, moeq_formats::gguf::Value)>, tensors: &[(String, Vec<u64>, Vec<f32>)]) {
    use moeq_formats::gguf::{GgmlType, GgufPlan, TensorSpec};
    let plan = GgufPlan {
        metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        tensors: tensors
            .iter()
            .map(|(n, ne, _)| TensorSpec { name: n.clone(), ne: ne.clone(), ggml_type: GgmlType::F32 })
            .collect(),
    };
    let layout = plan.layout().unwrap();
    let mut bytes = vec![0u8; layout.file_len as usize];
    bytes[..layout.header.len()].copy_from_slice(&layout.header);
    for ((_, _, values), &at) in tensors.iter().zip(&layout.offsets) {
        for (i, v) in values.iter().enumerate() {
            bytes[at as usize + 4 * i..at as usize + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// One importance matrix entry: weight name, columns, per-matrix sums and counts.
struct Entry {
    name: String,
    ne0: usize,
    sums: Vec<f32>,
    counts: Vec<f32>,
}

/// What llama-imatrix records for the golden Mixtral: every weight a matrix multiplication
/// reads (not the token embedding, the output is untied), per expert for the expert tensors;
/// expert 1 of blk.1.ffn_down_exps saw no token. Counts are powers of two, so the legacy
/// format (values divided by their count, one call) holds exactly the same weights.
fn mixtral_entries() -> Vec<Entry> {
    entries_for(&golden("mixtral-bf16.gguf"))
}

/// As [`mixtral_entries`], for any model.
fn entries_for(model: &Path) -> Vec<Entry> {
    let file = moeq_formats::gguf::GgufFile::open(model).unwrap();
    let mut out = Vec::new();
    for (k, t) in file.header().tensors.iter().enumerate() {
        if t.ne.len() < 2 || t.name == "token_embd.weight" {
            continue;
        }
        let (ne0, n_mat) = (t.ne[0] as usize, t.ne.get(2).copied().unwrap_or(1) as usize);
        let counts: Vec<f32> = (0..n_mat)
            .map(|e| if t.name == "blk.1.ffn_down_exps.weight" && e == 1 { 0.0 } else { (64 << ((e + k) % 4)) as f32 })
            .collect();
        let sums = (0..n_mat * ne0)
            .map(|i| {
                let c = counts[i / ne0];
                if c == 0.0 { 0.0 } else { c * (0.25 + ((i * 7919 + k * 31) % 97) as f32 / 16.0) }
            })
            .collect();
        out.push(Entry { name: t.name.clone(), ne0, sums, counts });
    }
    out
}

fn imatrix_metadata() -> Vec<(&'static str, moeq_formats::gguf::Value)> {
    use moeq_formats::gguf::{Array, Value};
    vec![
        ("general.type", Value::String("imatrix".into())),
        ("imatrix.datasets", Value::Array(Array::String(vec!["tests.txt".into()]))),
        ("imatrix.chunk_count", Value::U32(3)),
        ("imatrix.chunk_size", Value::U32(512)),
    ]
}

fn write_imatrix_gguf(path: &Path, entries: &[Entry]) {
    let mut tensors = Vec::new();
    for e in entries {
        let n_mat = e.counts.len() as u64;
        tensors.push((format!("{}.in_sum2", e.name), vec![e.ne0 as u64, n_mat], e.sums.clone()));
        tensors.push((format!("{}.counts", e.name), vec![1, n_mat], e.counts.clone()));
    }
    gguf_file(path, imatrix_metadata(), &tensors);
}

/// The legacy `.dat` format with one call per entry (values = weights).
fn write_imatrix_dat(path: &Path, entries: &[Entry]) {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for e in entries {
        b.extend((e.name.len() as i32).to_le_bytes());
        b.extend(e.name.as_bytes());
        b.extend(1i32.to_le_bytes());
        b.extend((e.sums.len() as i32).to_le_bytes());
        for (i, s) in e.sums.iter().enumerate() {
            let c = e.counts[i / e.ne0];
            b.extend((if c == 0.0 { 1.0 } else { s / c }).to_le_bytes());
        }
    }
    b.extend(3i32.to_le_bytes());
    b.extend(9i32.to_le_bytes());
    b.extend(b"tests.txt");
    std::fs::write(path, b).unwrap();
}

/// A one-layer Llama-shaped F32 model whose rows are 256 wide (the goldens' 64-wide rows
/// make every 256-block type fall back, so nothing there needs an importance matrix).
fn wide_model(path: &Path) {
    use moeq_formats::gguf::Value;
    let metadata = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(256)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(4)),
    ];
    let mut tensors = Vec::new();
    for (name, ne) in [
        ("output.weight", vec![256, 32]),
        ("output_norm.weight", vec![256]),
        ("token_embd.weight", vec![256, 32]),
        ("blk.0.attn_k.weight", vec![256, 64]),
        ("blk.0.attn_norm.weight", vec![256]),
        ("blk.0.attn_output.weight", vec![256, 256]),
        ("blk.0.attn_q.weight", vec![256, 256]),
        ("blk.0.attn_v.weight", vec![256, 64]),
        ("blk.0.ffn_down.weight", vec![256, 256]),
        ("blk.0.ffn_gate.weight", vec![256, 256]),
        ("blk.0.ffn_up.weight", vec![256, 256]),
    ] {
        let n: u64 = ne.iter().product();
        let values = (0..n).map(|i| ((i * 2654435761 % 1000) as f32 - 500.0) / 20000.0).collect();
        tensors.push((name.to_string(), ne, values));
    }
    gguf_file(path, metadata, &tensors);
}

/// A copy of a fixture checkpoint (`src` under tests/fixtures, e.g. `qwen3-moe/hf`) with its `config.json` edited.
fn edited_checkpoint(dir: &Path, src: &str, edit: impl FnOnce(&mut Json)) -> PathBuf {
    let out = dir.join(src.replace('/', "-"));
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(fixtures().join(src)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    let mut config = config_of(&out);
    edit(&mut config);
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    out
}

fn plan_json(args: &[&str]) -> Json {
    let mut all = vec!["convert", "--dry-run", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

fn type_in(plan: &Json, name: &str) -> String {
    let t = plan["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name}"));
    t["type"].as_str().unwrap().to_string()
}

/// Tensor data of a GGUF by name.
fn tensor_bytes(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let file = moeq_formats::gguf::GgufFile::open(path).unwrap();
    (0..file.header().tensors.len())
        .map(|i| (file.header().tensors[i].name.clone(), file.tensor_data(i).to_vec()))
        .collect()
}

#[test]
fn dry_run_explains_every_tensor_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let plan = plan_json(&[path_arg(&source), "--type", "Q3_K_M"]);
    let tensors = plan["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 23);
    assert_eq!((plan["ftype"].as_str(), plan["ftype_id"].as_u64()), (Some("Q3_K_M"), Some(12)));
    let mut bytes = 0;
    for t in tensors {
        assert!(!t["why"].as_array().unwrap().is_empty(), "{t}");
        bytes += t["bytes"].as_u64().unwrap();
    }
    assert_eq!(plan["totals"]["bytes"].as_u64(), Some(bytes));
    let by_type = plan["totals"]["by_type"].as_object().unwrap();
    assert_eq!(by_type.values().map(|v| v["tensors"].as_u64().unwrap()).sum::<u64>(), 23);
    // attn_v: the first two get Q5_K, which the 64-wide rows turn into Q5_1.
    let v = tensors.iter().find(|t| t["name"] == "blk.0.attn_v.weight").unwrap();
    let rules: Vec<&str> = v["why"].as_array().unwrap().iter().map(|s| s["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["file-type", "mix", "row-fallback"]);
    assert_eq!(v["type"], "Q5_1");
    assert_eq!(plan["fallbacks"], 15);
    // The table, without -o.
    let text = ok(&["convert", path_arg(&source), "--type", "Q3_K_M", "--dry-run"]);
    assert!(text.starts_with("plan: Q3_K_M (llama_ftype 12)") && text.contains("total: 23 tensors"), "{text}");
    assert!(text.contains("blk.0.ffn_gate_inp.weight") && text.contains("expert routers"), "{text}");
    // With -o naming what the real run would refuse (an existing folder): planned, and said.
    let out = moeq(&["convert", path_arg(&source), "--type", "Q3_K_M", "--dry-run", "-o", path_arg(dir.path())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("without --dry-run would stop here")
            && stderr.contains("is a folder, but this output is a file"),
        "{stderr}"
    );
    // -o naming the input: the same.
    let out = moeq(&["convert", path_arg(&source), "--type", "Q3_K_M", "--dry-run", "-o", path_arg(&source)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("moeq never writes over a file it reads"), "{stderr}");
    // An i-quant without importance matrix: the dry run says a real run is refused, which it is.
    let wide = dir.path().join("wide.gguf");
    wide_model(&wide);
    let plan = plan_json(&[path_arg(&wide), "--type", "IQ2_XXS"]);
    let refusal = plan["refusal"].as_str().unwrap();
    assert!(refusal.contains("needs an importance matrix") && refusal.contains("'blk.0.attn_k.weight'"), "{refusal}");
    let out = dir.path().join("out.gguf");
    let err = fails(&["convert", path_arg(&wide), "-o", path_arg(&out), "--type", "IQ2_XXS"]);
    assert!(err.contains("needs an importance matrix") && err.contains("blk.0.attn_k.weight"), "{err}");
    let err = fails(&["convert", path_arg(&wide), "-o", path_arg(&out), "--type", "Q2_K_S"]);
    assert!(err.contains("Q2_K_S needs an importance matrix"), "{err}");
    // The golden's 64-wide rows fall back to IQ4_NL, which needs none (as in llama-quantize).
    assert!(plan_json(&[path_arg(&source), "--type", "IQ2_XXS"])["refusal"].is_null());
    std::fs::remove_file(&wide).unwrap();
    // Plain conversions list their tensors too.
    let plan = plan_json(&[path_arg(&fixtures().join("llama/hf"))]);
    assert_eq!(plan["tensors"][0]["why"][0]["rule"], "copy");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn quant_options_steer_the_types() {
    let source = golden("mixtral-bf16.gguf");
    let src = path_arg(&source);
    let pure = plan_json(&[src, "--type", "Q3_K_M", "--pure"]);
    assert_eq!(type_in(&pure, "blk.0.attn_v.weight"), "Q4_0", "Q3_K's fallback, no mix");
    assert_eq!(type_in(&pure, "output.weight"), "Q4_0");
    let leave = plan_json(&[src, "--type", "Q4_K_M", "--leave-output-tensor"]);
    assert_eq!(type_in(&leave, "output.weight"), "BF16");
    let types = plan_json(&[src, "--type", "Q4_K_M", "--output-tensor-type", "f16", "--token-embedding-type", "Q8_0"]);
    assert_eq!(type_in(&types, "output.weight"), "F16");
    assert_eq!(type_in(&types, "token_embd.weight"), "Q8_0");
    let rules = plan_json(&[src, "--type", "Q4_K_M", "--tensor-type", "ATTN_V=q8_0", "--tensor-type", "ffn_down=q6_k"]);
    assert_eq!(type_in(&rules, "blk.1.attn_v.weight"), "Q8_0");
    assert_eq!(type_in(&rules, "blk.1.ffn_down_exps.weight"), "Q8_0", "Q6_K falls back for 96-wide rows");
    let warnings = rules["warnings"].to_string();
    assert!(warnings.contains("ffn_down=q6_k") && warnings.contains("overridden"), "{warnings}");
    // Type ids as llama-quantize takes them, and the 1-bit file types plan too.
    assert_eq!(plan_json(&[src, "--type", "12"])["ftype"], "Q3_K_M");
    assert_eq!(type_in(&plan_json(&[src, "--type", "IQ1_M"]), "blk.0.attn_output.weight"), "IQ4_NL");
    // Rules that match nothing, bad patterns and types are errors naming them.
    let err = fails(&["convert", src, "--dry-run", "--type", "Q4_K_M", "--tensor-type", "attn_qkv=q8_0"]);
    assert!(err.contains("rule 1 'attn_qkv=q8_0' matches no tensor"), "{err}");
    let err = fails(&["convert", src, "--dry-run", "--type", "Q4_K_M", "--tensor-type", r"(a)\1=q8_0"]);
    assert!(err.contains("backreference"), "{err}");
    let err = fails(&["convert", src, "--dry-run", "--type", "Q4_K_M", "--output-tensor-type", "q9_k"]);
    assert!(err.contains("--output-tensor-type q9_k"), "{err}");
    let err = fails(&["convert", src, "--dry-run", "--type", "Q4_K_M", "--token-embedding-type", "q4_k"]);
    assert!(err.contains("rows of 64 values"), "{err}");
    let err = fails(&["convert", src, "--dry-run", "--pure"]);
    assert!(err.contains("go with --type"), "{err}");
    let err = fails(&["convert", src, "--dry-run", "--format", "mlx"]);
    assert!(err.contains("GGUF output"), "{err}");
}

#[test]
fn importance_weights_reach_the_kernels_per_expert() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let entries = mixtral_entries();
    let (im_gguf, im_dat) = (dir.path().join("m.imatrix.gguf"), dir.path().join("m.imatrix.dat"));
    write_imatrix_gguf(&im_gguf, &entries);
    write_imatrix_dat(&im_dat, &entries);
    let run = |name: &str, ty: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["convert", path_arg(&source), "-o", path_arg(&out), "--type", ty, "-q"];
        args.extend_from_slice(extra);
        ok(&args);
        out
    };
    let plain = run("plain.gguf", "Q4_K_M", &[]);
    let with_gguf = run("gguf.gguf", "Q4_K_M", &["--imatrix", path_arg(&im_gguf)]);
    let with_dat = run("dat.gguf", "Q4_K_M", &["--imatrix", path_arg(&im_dat)]);
    // The checkpoint converts and requantizes in one pass to the same file.
    let from_checkpoint = dir.path().join("checkpoint.gguf");
    let mixtral = fixtures().join("mixtral/hf");
    let args = ["convert", path_arg(&mixtral), "-o", path_arg(&from_checkpoint), "--type", "Q4_K_M", "-q"];
    ok(&[&args[..], &["--imatrix", path_arg(&im_gguf)]].concat());
    assert!(std::fs::read(&from_checkpoint).unwrap() == std::fs::read(&with_gguf).unwrap());
    let (plain, with_gguf, with_dat) = (tensor_bytes(&plain), tensor_bytes(&with_gguf), tensor_bytes(&with_dat));
    assert_eq!(with_gguf, with_dat, "both formats give the same weights");
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight"] {
        assert_ne!(plain[name], with_gguf[name], "{name}: the weights change the quantization");
    }
    assert_eq!(plain["token_embd.weight"], with_gguf["token_embd.weight"], "no entry: quantized without weights");
    // Per expert: changing expert 2's weights changes expert 2's rows only.
    let mut changed = mixtral_entries();
    let gate = changed.iter_mut().find(|e| e.name == "blk.0.ffn_gate_exps.weight").unwrap();
    for v in &mut gate.sums[2 * 64..3 * 64] {
        *v = 1.0 / (*v + 1.0);
    }
    let im_changed = dir.path().join("changed.imatrix.gguf");
    write_imatrix_gguf(&im_changed, &changed);
    let other = tensor_bytes(&run("changed.gguf", "Q4_K_M", &["--imatrix", path_arg(&im_changed)]));
    let (a, b) = (&with_gguf["blk.0.ffn_gate_exps.weight"], &other["blk.0.ffn_gate_exps.weight"]);
    let per_expert = a.len() / 4;
    for e in 0..4 {
        let range = e * per_expert..(e + 1) * per_expert;
        assert_eq!(a[range.clone()] == b[range], e != 2, "expert {e}");
    }
    let meta: Json =
        serde_json::from_str(&ok(&["inspect", "--json", path_arg(&dir.path().join("gguf.gguf"))])).unwrap();
    let m = &meta["metadata"];
    assert_eq!(m["quantize.imatrix.file"]["value"], path_arg(&im_gguf));
    assert_eq!(m["quantize.imatrix.dataset"]["value"], "tests.txt");
    assert_eq!(m["quantize.imatrix.entries_count"]["value"], entries.len());
    assert_eq!(m["quantize.imatrix.chunks_count"]["value"], 3);
    // The report names the expert that saw no token and what was done.
    let plan = plan_json(&[path_arg(&source), "--type", "Q4_K_M", "--imatrix", path_arg(&im_gguf)]);
    let gaps = &plan["imatrix"]["experts_without_data"];
    assert_eq!(gaps[0]["tensor"], "blk.1.ffn_down_exps.weight");
    assert_eq!(gaps[0]["experts"], serde_json::json!([1]));
    let t = plan["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.1.ffn_down_exps.weight").unwrap();
    assert_eq!(t["imatrix"]["status"], "used");
    assert_eq!(t["imatrix"]["tokens"].as_array().unwrap().len(), 4);
    // --exclude-weights drops entries: those tensors are quantized as without a matrix.
    let excluded = run("excl.gguf", "Q4_K_M", &["--imatrix", path_arg(&im_gguf), "--exclude-weights", "attn_q"]);
    let excluded = tensor_bytes(&excluded);
    assert_eq!(excluded["blk.0.attn_q.weight"], plain["blk.0.attn_q.weight"]);
    assert_eq!(excluded["blk.0.attn_k.weight"], with_gguf["blk.0.attn_k.weight"]);
    // Q8_0 ignores importance weights, as ggml.
    let q8 = tensor_bytes(&run("q8.gguf", "Q8_0", &[]));
    let q8_im = tensor_bytes(&run("q8im.gguf", "Q8_0", &["--imatrix", path_arg(&im_gguf)]));
    assert_eq!(q8, q8_im);
}

#[test]
fn hostile_importance_matrices_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let write = |name: &str, edit: &dyn Fn(&mut Vec<Entry>)| {
        let mut entries = mixtral_entries();
        edit(&mut entries);
        let p = dir.path().join(name);
        write_imatrix_gguf(&p, &entries);
        p
    };
    let good = write("good.gguf", &|_| {});
    let mut truncated = std::fs::read(&good).unwrap();
    truncated.truncate(truncated.len() / 2);
    let truncated_path = dir.path().join("truncated.gguf");
    std::fs::write(&truncated_path, truncated).unwrap();
    let garbage = dir.path().join("garbage.dat");
    std::fs::write(&garbage, b"\x01\0\0\0\xff\xff\xff\x7fjunk, not an importance matrix").unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (truncated_path, "past the end of the file"),
        (write("nan.gguf", &|e| e[3].sums[5] = f32::NAN), "entry 'blk.0.attn_q.weight': value 5 is NaN"),
        (write("nan3d.gguf", &|e| e[5].sums[70] = f32::NAN), "matrix 1 column 6 is NaN"),
        (write("inf.gguf", &|e| e[0].sums[1] = f32::INFINITY), "value 1 is inf"),
        (write("negative.gguf", &|e| e[2].counts[0] = -3.0), "count 0 is -3"),
        (
            write("stray.gguf", &|e| {
                e.push(Entry { name: "blk.9.attn_q.weight".into(), ne0: 64, sums: vec![1.0; 64], counts: vec![1.0] })
            }),
            "'blk.9.attn_q.weight'",
        ),
        (
            write("rows.gguf", &|e| {
                let q = e.iter_mut().find(|x| x.name == "blk.0.attn_q.weight").unwrap();
                q.ne0 = 32;
                q.sums.truncate(32);
            }),
            "entry 'blk.0.attn_q.weight' holds 32 values, but the tensor has 64 columns",
        ),
        (source.clone(), "not an importance matrix"),
        (garbage, "name length"),
    ];
    for (path, want) in cases {
        for dry in [false, true] {
            let mut args = vec!["convert", path_arg(&source), "--type", "Q4_K_M", "--imatrix", path_arg(&path)];
            args.extend(if dry { vec!["--dry-run"] } else { vec!["-o", path_arg(&out)] });
            let err = fails(&args);
            assert!(err.contains(want), "{want:?} not in {err}");
            assert!(err.contains(path.file_name().unwrap().to_str().unwrap()), "{err}");
        }
    }
    let err = fails(&[
        "convert",
        path_arg(&source),
        "-o",
        path_arg(&out),
        "--type",
        "Q4_K_M",
        "--imatrix",
        path_arg(&good),
        "--include-weights",
        "a",
        "--exclude-weights",
        "b",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    // An importance matrix without data for a tensor that needs it: refused, naming it.
    let wide = dir.path().join("wide.gguf");
    wide_model(&wide);
    let partial = dir.path().join("partial.gguf");
    let mut entries = entries_for(&wide);
    entries.retain(|x| x.name != "blk.0.attn_q.weight");
    write_imatrix_gguf(&partial, &entries);
    let err =
        fails(&["convert", path_arg(&wide), "-o", path_arg(&out), "--type", "IQ2_XS", "--imatrix", path_arg(&partial)]);
    assert!(err.contains("no importance data for tensor 'blk.0.attn_q.weight'"), "{err}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn override_kv_report_and_keep_split() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let out = dir.path().join("out.gguf");
    let report = dir.path().join("plan.json");
    let stdout = ok(&[
        "convert",
        path_arg(&source),
        "-o",
        path_arg(&out),
        "--type",
        "Q8_0",
        "-q",
        "--override-kv",
        "llama.expert_used_count=int:1",
        "--override-kv",
        "general.name=str:Tiny",
        "--override-kv",
        "test.flag=bool:true",
        "--json",
        "--report",
        path_arg(&report),
    ]);
    let meta: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&out)])).unwrap();
    let m = &meta["metadata"];
    assert_eq!(
        (m["llama.expert_used_count"]["type"].as_str(), &m["llama.expert_used_count"]["value"]),
        (Some("UINT32"), &Json::from(1))
    );
    assert_eq!(m["general.name"]["value"], "Tiny");
    assert_eq!(m["test.flag"]["value"], true);
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys[keys.len() - 3..], ["llama.expert_used_count", "general.name", "test.flag"], "appended in order");
    let saved: Json = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(saved, serde_json::from_str::<Json>(&stdout).unwrap());
    for (arg, want) in [
        ("a.b=int:x", "not an integer"),
        ("a.b=bool:1", "'true' or 'false'"),
        ("a.b", "KEY=TYPE:VALUE"),
        // A UINT32 split.count made a file neither moeq nor llama.cpp reads back.
        ("split.count=int:3", "split.* keys describe a split model's shards"),
        ("split.no=int:0", "cannot be overridden"),
    ] {
        let err = fails(&["convert", path_arg(&source), "--dry-run", "--type", "Q8_0", "--override-kv", arg]);
        assert!(err.contains(want), "{err}");
    }
    let err = fails(&["convert", path_arg(&source), "--dry-run", "--type", "Q8_0", "--report", path_arg(&source)]);
    assert!(err.contains("is the input") && err.contains("never writes over a file it reads"), "{err}");
    // The report is an output like the model: never the output itself, nor the importance
    // matrix (an input), nor a folder; checked before any work.
    let imatrix = dir.path().join("m.imatrix");
    write_imatrix_gguf(&imatrix, &mixtral_entries());
    let before = names_in(dir.path());
    let q8 = |more: &[&str]| {
        let mut args = vec!["convert", path_arg(&source), "--type", "Q4_K_M", "-q"];
        args.extend(more);
        fails(&args)
    };
    let (m, o) = (path_arg(&imatrix), path_arg(&out));
    let err = q8(&["-o", o, "--imatrix", m, "--report", o]);
    assert!(err.contains("where the output goes"), "{err}");
    let err = q8(&["-o", o, "--imatrix", m, "--report", m]);
    assert!(err.contains("is the input") && err.contains("m.imatrix"), "{err}");
    let err = q8(&["-o", m, "--imatrix", m]);
    assert!(err.contains("is the input") && err.contains("m.imatrix"), "{err}");
    let err = q8(&["--dry-run", "--imatrix", m, "--report", path_arg(dir.path())]);
    assert!(err.contains("is a folder"), "{err}");
    let split_report = dir.path().join("sp-00001-of-00002.gguf");
    let err = q8(&["-o", path_arg(&dir.path().join("sp.gguf")), "--keep-split", "--report", path_arg(&split_report)]);
    assert!(err.contains("where the output goes"), "{err}");
    assert_eq!(names_in(dir.path()), before, "nothing written, no temporaries");
    // --keep-split: the output has the input's shards, each with the same tensors, and
    // replaces an earlier set of its name (here of 2 shards) as --split-max-size does.
    let split = dir.path().join("split.gguf");
    ok(&["convert", path_arg(&source), "-o", path_arg(&split), "--split-max-size", "150K", "-q"]);
    let first = dir.path().join("split-00001-of-00004.gguf");
    assert!(first.exists());
    let kept = dir.path().join("kept.gguf");
    ok(&["convert", path_arg(&source), "-o", path_arg(&kept), "--split-max-size", "400K", "-q"]);
    let kept_names = || names_in(dir.path()).into_iter().filter(|n| n.starts_with("kept")).collect::<Vec<_>>();
    assert_eq!(kept_names(), ["kept-00001-of-00002.gguf", "kept-00002-of-00002.gguf"]);
    ok(&["convert", path_arg(&first), "-o", path_arg(&kept), "--type", "Q8_0", "--keep-split", "-q"]);
    assert_eq!(kept_names(), (1..=4).map(|i| format!("kept-{i:05}-of-00004.gguf")).collect::<Vec<_>>());
    for i in 1..=4 {
        let names = |p: PathBuf| tensor_bytes(&p).into_keys().collect::<Vec<_>>();
        let a = names(dir.path().join(format!("split-{i:05}-of-00004.gguf")));
        let b = names(dir.path().join(format!("kept-{i:05}-of-00004.gguf")));
        assert_eq!(a, b, "shard {i}");
    }
    // Requantizing a set in place is refused before any work.
    let err = fails(&["convert", path_arg(&first), "-o", path_arg(&split), "--type", "Q8_0", "--keep-split"]);
    assert!(err.contains("is the input"), "{err}");
    let err = fails(&[
        "convert",
        path_arg(&first),
        "-o",
        path_arg(&kept),
        "--type",
        "Q8_0",
        "--keep-split",
        "--split-max-size",
        "1M",
    ]);
    assert!(err.contains("--keep-split and --split-max-size"), "{err}");
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

/// Requantizing a GGUF whose layer, expert or head count is not a 32-bit integer (a string, a
/// float, 2^32 + 2) read it as 0 or wrapped it, so `--type Q4_K_M` silently chose other types
/// (`ffn_down of layer 0 of 0`), where llama.cpp's loader refuses the file. It is an error
/// naming the file and key, nothing written; an integer `--override-kv` of that key replaces it
/// (as in llama-quantize), and a plain copy (no `--type`) still copies.
#[test]
fn requantizing_refuses_counts_that_are_not_integers() {
    use moeq_formats::gguf::Value;
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("q.gguf");
    let cases = [
        ("llama.block_count", Value::String("2".into()), "metadata 'llama.block_count' is \"2\""),
        ("llama.block_count", Value::U64((1 << 32) + 2), "metadata 'llama.block_count' is 4294967298"),
        ("llama.attention.head_count", Value::F32(4.0), "metadata 'llama.attention.head_count' is 4"),
    ];
    for (i, (key, value, why)) in cases.into_iter().enumerate() {
        let gguf = edited_golden(dir.path(), "llama-bf16.gguf", &format!("count{i}"), |p| p.set(key, value));
        let err = fails(&["convert", path_arg(&gguf), "-o", path_arg(&o), "--type", "Q4_K_M"]);
        assert!(err.contains(why) && err.contains(path_arg(&gguf)), "{key}: {err}");
        assert!(names_in(out.path()).is_empty(), "{key}");
    }
    let gguf = edited_golden(dir.path(), "llama-bf16.gguf", "string", |p| {
        p.set("llama.block_count", Value::String("2".into()))
    });
    let fixed = out.path().join("fixed.gguf");
    let reference = out.path().join("reference.gguf");
    ok(&[
        "convert",
        path_arg(&gguf),
        "-o",
        path_arg(&fixed),
        "--type",
        "Q4_K_M",
        "--override-kv",
        "llama.block_count=int:2",
    ]);
    ok(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&reference), "--type", "Q4_K_M"]);
    let types = |p: &Path| {
        let f = moeq_formats::gguf::GgufFile::open(p).unwrap();
        f.header().tensors.iter().map(|t| t.ggml_type).collect::<Vec<_>>()
    };
    assert_eq!(types(&fixed), types(&reference));
    ok(&["convert", path_arg(&gguf), "-o", path_arg(&out.path().join("copy.gguf"))]);
}

/// A GGUF whose BOS id is outside its vocabulary, or not an integer, failed deep in the forward
/// as 'token 99999 is outside the vocabulary' without naming file or key (imatrix), or was read
/// as no BOS (a string). eval --text and imatrix now name the file and the key, exit 2, nothing
/// written.
#[test]
fn text_input_checks_the_gguf_bos_id() {
    use moeq_formats::gguf::Value;
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let text = fixtures().join("imatrix/calib.txt");
    for (i, value) in [Value::U32(99999), Value::String("1".into())].into_iter().enumerate() {
        let gguf = edited_golden(dir.path(), "llama-bf16.gguf", &format!("bos{i}"), |p| {
            p.set("tokenizer.ggml.bos_token_id", value)
        });
        let o = out.path().join("m.imatrix");
        for args in [
            vec!["eval", path_arg(&gguf), "--text", "hello", "--tokenizer", path_arg(&llama)],
            vec![
                "imatrix",
                path_arg(&gguf),
                "--text",
                path_arg(&text),
                "--tokenizer",
                path_arg(&llama),
                "-o",
                path_arg(&o),
            ],
        ] {
            let err = fails_after_warnings(&args);
            assert!(
                err.contains(path_arg(&gguf)) && err.contains("metadata 'tokenizer.ggml.bos_token_id' is"),
                "{args:?}: {err}"
            );
            assert!(names_in(out.path()).is_empty());
        }
    }
}

/// A FIFO given as the model (`moeq inspect fifo`, convert, eval) blocked in open() until some
/// writer came: moeq hung. It is refused before opening, naming the path (exit 2).
#[test]
fn a_fifo_as_the_model_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.gguf");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let o = dir.path().join("o.gguf");
    for args in [
        vec!["inspect", path_arg(&fifo)],
        vec!["convert", path_arg(&fifo), "-o", path_arg(&o)],
        vec!["eval", path_arg(&fifo), "--tokens", "1"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moeq"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("moeq {args:?} waits on the FIFO");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (status, err) = stderr_of(child);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(path_arg(&fifo)) && err.contains("not a regular file or folder"), "{args:?}: {err}");
    }
    assert!(!o.exists());
}

/// `--tokenizer-pre` and `--no-vocab` were ignored without a word where they do nothing: a GGUF
/// input (which keeps its vocabulary), MLX and HF folders (which copy the tokenizer files), and
/// `--tokenizer-pre` with `--no-vocab`. Each is an error saying where they apply, nothing
/// written.
#[test]
fn vocabulary_options_where_they_do_nothing_are_errors() {
    let out = tempfile::tempdir().unwrap();
    let (o, folder) = (out.path().join("m.gguf"), out.path().join("mlx"));
    let (gguf, llama) = (golden("llama-bf16.gguf"), fixtures().join("llama/hf"));
    let cases = [
        (vec!["convert", path_arg(&gguf), "-o", path_arg(&o), "--tokenizer-pre", "llama-bpe"], "a GGUF keeps its own"),
        (vec!["convert", path_arg(&gguf), "-o", path_arg(&o), "--no-vocab"], "a GGUF keeps its own"),
        (
            vec!["convert", path_arg(&llama), "-o", path_arg(&o), "--no-vocab", "--tokenizer-pre", "llama-bpe"],
            "the vocabulary that --no-vocab leaves out",
        ),
        (
            vec!["convert", path_arg(&llama), "-o", path_arg(&folder), "--format", "mlx", "--no-vocab"],
            "MLX and HF folders carry the tokenizer files",
        ),
    ];
    for (args, why) in cases {
        let err = fails(&args);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(names_in(out.path()).is_empty(), "{args:?}");
    }
    ok(&["convert", path_arg(&llama), "-o", path_arg(&o), "--no-vocab", "-q"]);
    // --tokenizer with token ids (eval, verify, imatrix) was ignored likewise.
    let ids = out.path().join("ids.txt");
    std::fs::write(&ids, "1 2 3 4\n").unwrap();
    let m = out.path().join("m.imatrix");
    for args in [
        vec!["eval", path_arg(&gguf), "--tokens", "1,2", "--tokenizer", path_arg(&llama)],
        vec!["verify", path_arg(&gguf), path_arg(&gguf), "--tokens", "1,2", "--tokenizer", path_arg(&llama)],
        vec![
            "imatrix",
            path_arg(&gguf),
            "--tokens-file",
            path_arg(&ids),
            "-o",
            path_arg(&m),
            "--tokenizer",
            path_arg(&llama),
        ],
    ] {
        let err = fails(&args);
        assert!(err.contains("--tokenizer goes with --text"), "{args:?}: {err}");
        assert!(!m.exists());
    }
}

/// A split output whose shard names (`STEM-00001-of-0000N.gguf`, 15 bytes longer than the name
/// given) exceed the file system's 255 bytes failed with 'File name too long (os error 36)'
/// when the shard was first written, after the shards before it; now the names are checked
/// when the output is planned, before any tensor is written: exit 2 naming the shard and both
/// lengths, nothing left. The same name unsplit (one shard) is written.
#[test]
fn split_shard_names_too_long_are_refused_before_writing() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join(format!("{}.gguf", "s".repeat(245)));
    let llama = fixtures().join("llama/hf");
    let err =
        fails_after_warnings(&["convert", path_arg(&llama), "-o", path_arg(&o), "--split-max-size", "100K", "-q"]);
    assert!(
        err.contains("-00001-of-00003.gguf: cannot write: the file name is 265 bytes, longer than the 255"),
        "{err}"
    );
    assert!(names_in(out.path()).is_empty(), "{:?}", names_in(out.path()));
    // Any output name past the limit is refused before the input is read, naming both lengths
    // (it was the file system's 'File name too long', the MLX folder's after its build).
    let long = out.path().join("t".repeat(260));
    let small = out.path().join("m.gguf");
    for args in [
        vec!["convert", path_arg(&llama), "-o", path_arg(&long), "-q"],
        vec!["convert", path_arg(&llama), "-o", path_arg(&long), "--format", "mlx", "-q"],
        vec!["convert", path_arg(&llama), "-o", path_arg(&small), "--type", "Q4_0", "--report", path_arg(&long), "-q"],
        vec!["eval", path_arg(&llama), "--tokens", "1", "--dump", path_arg(&long)],
    ] {
        let err = fails(&args);
        assert!(err.contains("cannot write: the file name is 260 bytes, longer than the 255"), "{args:?}: {err}");
        assert!(names_in(out.path()).is_empty(), "{args:?}");
    }
    ok(&["convert", path_arg(&llama), "-o", path_arg(&o), "--split-max-size", "10G", "-q"]);
    assert!(o.is_file());
}

/// A stale `model.safetensors` beside a sharded folder's index was skipped without a word
/// (transformers would load it instead of the index, llama.cpp's converter with the shards):
/// convert, eval and inspect now warn, naming the file and the index; the conversion is the
/// index's shards' as before.
#[test]
fn safetensors_files_the_index_does_not_name_get_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("mixtral/hf");
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, folder.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(fixtures().join("llama/hf/model.safetensors"), folder.join("model.safetensors")).unwrap();
    let o = dir.path().join("m.gguf");
    let run = moeq(&["convert", path_arg(&folder), "-o", path_arg(&o), "-q"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("model.safetensors: not named by") && err.contains("so not read"), "{err}");
    assert_eq!(std::fs::read(&o).unwrap(), std::fs::read(golden("mixtral-bf16.gguf")).unwrap());
    let run = moeq(&["eval", path_arg(&folder), "--tokens", "1"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("so not read"));
    let clean = moeq(&["convert", path_arg(&src), "-o", path_arg(&dir.path().join("c.gguf")), "-q"]);
    assert!(!String::from_utf8_lossy(&clean.stderr).contains("so not read"));
}

/// An earlier output made write-protected (`chmod a-w`) was replaced by the next run (renamed
/// over, its mode lost), where `cp`, a shell redirect or llama-quantize fail on it. It is
/// refused before any work, naming the mode; a writable one is replaced as before. (Root may
/// write any file: as root the test runs moeq as `nobody` through setpriv.)
#[test]
fn write_protected_outputs_are_not_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    if root && !setpriv {
        return; // Nothing to check: root writes any file.
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let input = dir.path().join("in.gguf");
    std::fs::copy(golden("llama-bf16.gguf"), &input).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.path().join("out.gguf");
    std::fs::write(&out, b"earlier output").unwrap();
    let run_as = |args: &[&str]| {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_moeq")]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_moeq"))
        };
        cmd.args(args).output().unwrap()
    };
    let run = |mode: u32| {
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode)).unwrap();
        run_as(&["convert", path_arg(&input), "-o", path_arg(&out), "--type", "Q8_0", "-q"])
    };
    let refused = run(0o444);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("is write-protected (mode 444)"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"earlier output");
    let replaced = run(0o666);
    assert!(replaced.status.success(), "{}", String::from_utf8_lossy(&replaced.stderr));
    assert_ne!(std::fs::read(&out).unwrap(), b"earlier output");
    // The same for an earlier split set's file, which a new split set replaces (it was removed).
    std::fs::remove_file(&out).unwrap();
    let shard = dir.path().join("out-00001-of-00002.gguf");
    std::fs::write(&shard, b"earlier shard").unwrap();
    std::fs::set_permissions(&shard, std::fs::Permissions::from_mode(0o444)).unwrap();
    let refused = run_as(&["convert", path_arg(&input), "-o", path_arg(&out), "--split-max-size", "20K", "-q"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("out-00001-of-00002.gguf is write-protected (mode 444)"), "{err}");
    assert_eq!(std::fs::read(&shard).unwrap(), b"earlier shard");
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
    // A model with fewer layers as the output: a failed check, not run layer against missing
    // layer. It was an error (exit 2) with no report, so `verify --json` printed nothing; now
    // exit 1 with the report (text or JSON) naming the sizes and the tensors.
    let one_layer = edited_golden(dir.path(), "llama-bf16.gguf", "one-layer", |p| {
        p.set("llama.block_count", Value::U32(1));
        p.tensors.retain(|t| !t.name.starts_with("blk.1."));
    });
    ok(&["eval", path_arg(&one_layer), "--tokens", "1,2,3"]);
    let llama = fixtures().join("llama/hf");
    let text = moeq(&["verify", path_arg(&llama), path_arg(&one_layer)]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("1 layers") && stdout.contains("2 layers") && stdout.contains("not the same model"),
        "{stdout}"
    );
    assert!(stdout.contains("tensor 'blk.1.attn_q.weight' is missing from the output"), "{stdout}");
    let json = moeq(&["verify", path_arg(&llama), path_arg(&one_layer), "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: Json = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["pass"], false);
    assert!(report["sizes_differ"].as_str().unwrap().contains("not the same model"), "{report}");
    assert!(report["blocks"].as_array().unwrap().is_empty() && report["notes"].as_array().unwrap().is_empty());
    // Different widths: the tensors of other shapes are failures, named with both shapes.
    let golden_dir = fixtures().join("golden");
    let (mixtral, deepseek) = (golden_dir.join("mixtral-bf16.gguf"), golden_dir.join("deepseek-v3-bf16.gguf"));
    let json = moeq(&["verify", path_arg(&mixtral), path_arg(&deepseek), "--json"]);
    assert_eq!(json.status.code(), Some(1), "{}", String::from_utf8_lossy(&json.stderr));
    let report: Json = serde_json::from_slice(&json.stdout).unwrap();
    let failures: Vec<&str> = report["failures"].as_array().unwrap().iter().filter_map(Json::as_str).collect();
    assert!(
        failures.contains(&"tensor 'blk.1.ffn_gate_inp.weight': shape [64, 4] in the source, [64, 16] in the output"),
        "{failures:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Safety of the user's files (issue 13, items 1–8 and 11).

/// Every file under `dir` (recursively, hidden ones too), with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(snapshot(&path));
        } else if meta.is_file() {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        } else {
            out.insert(path.clone(), Vec::new());
        }
    }
    out
}

/// Names in `dir`, hidden ones included, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Writes a GGUF of `n` F32 tensors of `rows` × `cols` whose data are holes (zeros): big
/// inputs at no disk cost.
fn sparse_gguf(path: &Path, n: usize, rows: u64, cols: u64) {
    use moeq_formats::gguf::{GgmlType, GgufPlan, TensorSpec, Value};
    let mut plan = GgufPlan::default();
    plan.set("general.architecture", Value::String("llama".into()));
    plan.tensors = (0..n)
        .map(|i| TensorSpec { name: format!("blk.{i}.ffn_up.weight"), ne: vec![cols, rows], ggml_type: GgmlType::F32 })
        .collect();
    let layout = plan.layout().unwrap();
    let file = std::fs::File::create(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &layout.header, 0).unwrap();
    file.set_len(layout.file_len).unwrap();
}

/// Whether the child holds a file descriptor to a file with data in `dir` (an `O_TMPFILE` shows
/// as `dir/#INODE (deleted)`): it has started writing there. Waits up to 60 s.
fn wait_until_writing(child: &mut std::process::Child, dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap();
    for _ in 0..6000 {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", child.id())) {
            for fd in fds.flatten() {
                // A file inside the folder, not the folder itself (which the stale-temporary sweep
                // reads), that holds data: not the empty scratch file the folder's write check opens.
                if std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&dir) && t != dir)
                    && std::fs::metadata(fd.path()).is_ok_and(|m| m.is_file() && m.len() > 0)
                {
                    return true;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Sends SIG`signal` (INT, TERM, HUP, KILL, …) to `pid` at once (no `kill` process to start).
fn send(pid: u32, signal: &str) {
    let number = match signal {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "BUS" => libc::SIGBUS,
        "SEGV" => libc::SIGSEGV,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => panic!("no signal SIG{other} in this test helper"),
    };
    // SAFETY: kill(2) takes plain integers; the worst a wrong pid can do is fail (checked).
    let rc = unsafe { libc::kill(pid as libc::pid_t, number) };
    assert_eq!(rc, 0, "kill -{signal} {pid}: {}", std::io::Error::last_os_error());
}

/// Starts moeq with SIGINT, SIGTERM and SIGHUP at their default action, whatever the test
/// runner inherited: moeq keeps a signal its parent ignores ignored (as `nohup` and a shell's
/// `&` without job control ask), so a test run under either would otherwise see it finish.
fn spawn_moeq(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    spawn_moeq_ignoring(args, env, &[])
}

/// [`spawn_moeq`] with the signals in `ignored` ignored (SIG_IGN), as `nohup` leaves SIGHUP
/// and a non-interactive shell's `&` leaves SIGINT; the others of the three at their default.
fn spawn_moeq_ignoring(args: &[&str], env: &[(&str, &str)], ignored: &'static [i32]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moeq"));
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe, is called.
    unsafe {
        cmd.pre_exec(move || {
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let action = if ignored.contains(&s) { libc::SIG_IGN } else { libc::SIG_DFL };
                if libc::signal(s, action) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn stderr_of(child: std::process::Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn outputs_that_name_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for entry in std::fs::read_dir(fixtures().join("gpt-oss/hf-mxfp4")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, ck.join(path.file_name().unwrap())).unwrap();
    }
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let a = x.join("a.gguf");
    std::fs::copy(golden("llama-bf16.gguf"), &a).unwrap();
    std::os::unix::fs::symlink(&a, dir.path().join("link.gguf")).unwrap();
    std::fs::hard_link(&a, dir.path().join("hard.gguf")).unwrap();
    let before = snapshot(dir.path());
    let ck_arg = path_arg(&ck).to_string();
    let a_arg = path_arg(&a).to_string();
    let spelled = format!("{}/./../x/a.gguf", path_arg(&x));
    let cases: Vec<Vec<String>> = vec![
        // A checkpoint's shards, index, config and tokenizer files.
        vec![&ck_arg, "-o", &format!("{ck_arg}/model-00000-of-00002.safetensors")],
        vec![&ck_arg, "-o", &format!("{ck_arg}/model.safetensors.index.json")],
        vec![&ck_arg, "-o", &format!("{ck_arg}/config.json")],
        vec![&ck_arg, "-o", &format!("{ck_arg}/tokenizer.json"), "--type", "Q8_0"],
        vec![&ck_arg, "-o", &format!("{ck_arg}/chat_template.jinja"), "--split-max-size", "1G"],
        // A GGUF requantized in place, however spelled, through links too.
        vec![&a_arg, "-o", &a_arg, "--type", "Q4_0"],
        vec![&a_arg, "-o", &spelled, "--type", "Q4_0"],
        vec![&a_arg, "-o", path_arg(&dir.path().join("link.gguf"))],
        vec![&a_arg, "-o", path_arg(&dir.path().join("hard.gguf"))],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(str::to_string).collect())
    .collect();
    for case in &cases {
        let mut args = vec!["convert"];
        args.extend(case.iter().map(String::as_str));
        let err = fails(&args);
        if case.iter().any(|a| a.ends_with("link.gguf")) {
            // A symbolic link at the output path is refused as such, before the inputs are known.
            assert!(err.contains("is a symbolic link (to") && err.contains("a.gguf"), "{args:?}: {err}");
            continue;
        }
        assert!(err.contains("is the input") && err.contains("never writes over"), "{args:?}: {err}");
    }
    // eval --dump onto its own input.
    let err = fails(&["eval", &a_arg, "--tokens", "1,2", "--dump", &a_arg]);
    assert!(err.contains("is the input"), "{err}");
    assert!(snapshot(dir.path()) == before, "inputs unchanged, nothing written");
    // A split output replaces the set of its stem: it must not be the set it reads.
    let s = dir.path().join("s.gguf");
    ok(&["convert", path_arg(&golden("mixtral-bf16.gguf")), "-o", path_arg(&s), "--split-max-size", "200K", "-q"]);
    let first = dir.path().join("s-00001-of-00003.gguf");
    let before = snapshot(dir.path());
    let err = fails(&["convert", path_arg(&first), "-o", path_arg(&s), "--split-max-size", "100K"]);
    assert!(err.contains("is the input") && err.contains("would be replaced"), "{err}");
    let err = fails(&["convert", path_arg(&first), "-o", path_arg(&first), "--split-max-size", "100K"]);
    assert!(err.contains("is the input"), "{err}");
    assert!(snapshot(dir.path()) == before);
    // Writing beside the inputs under a new name is fine.
    ok(&["convert", &a_arg, "-o", path_arg(&x.join("b.gguf")), "-q"]);
}

#[test]
fn output_paths_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let a = golden("llama-bf16.gguf");
    // The output is checked before the input is even opened: a missing input is not reached.
    let missing = dir.path().join("missing.gguf");
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let err = fails(&["convert", path_arg(&missing), "-o", path_arg(&folder)]);
    assert!(err.contains("is a folder") && err.contains("give a file name"), "{err}");
    let slash = format!("{}/", path_arg(&dir.path().join("new")));
    let err = fails(&["convert", path_arg(&missing), "-o", &slash]);
    assert!(err.contains("ends in '/'") && err.contains("this output is a file"), "{err}");
    let err = fails(&["convert", path_arg(&missing), "-o", &format!("{}/", path_arg(&folder))]);
    assert!(err.contains("ends in '/'"), "{err}");
    // Devices and FIFOs are never replaced.
    let err = fails(&["convert", path_arg(&a), "-o", "/dev/null"]);
    assert!(err.contains("/dev/null") && err.contains("is a device"), "{err}");
    let fifo = dir.path().join("fifo.gguf");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = fails(&["convert", path_arg(&a), "-o", path_arg(&fifo)]);
    assert!(err.contains("is a FIFO"), "{err}");
    let err = fails(&["convert", path_arg(&a), "-o", path_arg(&fifo), "--split-max-size", "1G"]);
    assert!(err.contains("is a FIFO"), "{err}");
    let err = fails(&["eval", path_arg(&a), "--tokens", "1", "--dump", "/dev/null"]);
    assert!(err.contains("is a device"), "{err}");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // Folder builds: an existing path is refused (before reading), a trailing slash is fine.
    let llama = fixtures().join("llama/hf");
    let err = fails(&["convert", path_arg(&missing), "-o", path_arg(&folder), "--format", "mlx"]);
    assert!(err.contains("exists already"), "{err}");
    let err = fails(&["convert", path_arg(&llama), "-o", path_arg(&fifo), "--format", "mlx"]);
    assert!(err.contains("exists already and is not a folder"), "{err}");
    let built = dir.path().join("built");
    ok(&["convert", path_arg(&llama), "-o", &format!("{}/", path_arg(&built)), "--format", "mlx", "-q"]);
    assert!(built.join("model.safetensors").is_file());
    assert_eq!(names_in(dir.path()), ["built", "fifo.gguf", "folder"]);
    assert_eq!(names_in(&folder).len(), 0);
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn resplitting_replaces_the_old_set() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let s = dir.path().join("s.gguf");
    let split = |size: &str| ok(&["convert", path_arg(&source), "-o", path_arg(&s), "--split-max-size", size, "-q"]);
    split("60K");
    let first: Vec<String> = names_in(dir.path());
    let n = first.len();
    assert!(n >= 5 && first.iter().all(|f| f.ends_with(&format!("-of-{n:05}.gguf"))), "{first:?}");
    // Files of the same name pattern that are not shards of the set, and other files, stay.
    std::fs::write(dir.path().join("s-00001-of-00077.gguf"), b"not a GGUF").unwrap();
    std::fs::write(dir.path().join("s-notes.txt"), b"mine").unwrap();
    std::fs::copy(golden("llama-bf16.gguf"), dir.path().join("t-00001-of-00002.gguf")).unwrap();
    split("200K");
    let names = names_in(dir.path());
    assert_eq!(
        names,
        [
            "s-00001-of-00003.gguf",
            "s-00001-of-00077.gguf",
            "s-00002-of-00003.gguf",
            "s-00003-of-00003.gguf",
            "s-notes.txt",
            "t-00001-of-00002.gguf"
        ]
    );
    let merged = dir.path().join("merged.gguf");
    ok(&["convert", path_arg(&dir.path().join("s-00001-of-00003.gguf")), "-o", path_arg(&merged), "-q"]);
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&source).unwrap());
    // A split that comes out as one file replaces the set too.
    split("1G");
    let names = names_in(dir.path());
    assert_eq!(names, ["merged.gguf", "s-00001-of-00077.gguf", "s-notes.txt", "s.gguf", "t-00001-of-00002.gguf"]);
    assert!(std::fs::read(&s).unwrap() == std::fs::read(&source).unwrap());
}

#[test]
fn splits_open_shards_as_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let many = dir.path().join("many.gguf");
    sparse_gguf(&many, 200, 2, 64);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let script = format!(
        "ulimit -n 64 && exec {} convert {} -o {} --split-max-size 1 -q",
        env!("CARGO_BIN_EXE_moeq"),
        path_arg(&many),
        path_arg(&out.join("m.gguf"))
    );
    // Several threads opening and parking shards at once (the first version of the parking
    // gave up when two threads chose the same shard to park, and ran out of descriptors).
    for threads in ["2", "8", "16"] {
        let run = Command::new("sh").args(["-c", &script]).env("RAYON_NUM_THREADS", threads).output().unwrap();
        assert!(run.status.success(), "{threads} threads: {}", String::from_utf8_lossy(&run.stderr));
    }
    let names = names_in(&out);
    assert_eq!(names.len(), 200, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("m-") && n.ends_with("-of-00200.gguf")));
    // Merged back under the same limit: the same file.
    let merged = dir.path().join("merged.gguf");
    let script = format!(
        "ulimit -n 64 && exec {} convert {} -o {} -q",
        env!("CARGO_BIN_EXE_moeq"),
        path_arg(&out.join("m-00001-of-00200.gguf")),
        path_arg(&merged)
    );
    let run = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&many).unwrap());
}

#[test]
fn stale_temporaries_never_block_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let a = golden("llama-bf16.gguf");
    // Temporaries named as an older moeq named them, for the very PID the run gets (the
    // shell's, kept by exec): they used to make the run fail with "File exists".
    let script = format!(
        "touch {d}/.out.gguf.moeq-$$-0.tmp && mkdir {d}/.mlx.moeq-$$.tmp && \
         MOEQ_TMPFILE=named exec {moeq} convert {a} -o {out}",
        d = path_arg(dir.path()),
        moeq = env!("CARGO_BIN_EXE_moeq"),
        a = path_arg(&a),
        out = path_arg(&out)
    );
    let run = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&a).unwrap());
    // They are reported (an older moeq's: whether its run is over cannot be told), not removed.
    assert!(stderr.contains("warning:") && stderr.contains("older moeq"), "{stderr}");
    assert_eq!(names_in(dir.path()).len(), 3);
    // A temporary left by kill -9 (named, as where O_TMPFILE is unsupported) is removed by
    // the next run writing to that folder, which says so.
    let clean = tempfile::tempdir().unwrap();
    let big = clean.path().join("big.gguf");
    sparse_gguf(&big, 8, 4096, 4096);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("o.gguf");
    let mut child = spawn_moeq(
        &["convert", path_arg(&big), "-o", path_arg(&out), "--type", "Q8_0", "-q"],
        &[("MOEQ_TMPFILE", "named")],
    );
    assert!(wait_until_writing(&mut child, out_dir.path()), "the run started writing");
    send(child.id(), "KILL");
    let (status, _) = stderr_of(child);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    let left = names_in(out_dir.path());
    assert!(left.len() == 1 && left[0].starts_with(".o.gguf.moeq-"), "{left:?}");
    let run = moeq(&["convert", path_arg(&a), "-o", path_arg(&out_dir.path().join("next.gguf"))]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("removed 1 temporary file"), "{stderr}");
    assert_eq!(names_in(out_dir.path()), ["next.gguf"]);
    // The same for a folder build, which has no unnamed form.
    let ck = clean.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    sparse_llama(&ck, 4);
    let mut child = spawn_moeq(
        &["convert", path_arg(&ck), "-o", path_arg(&out_dir.path().join("mlx")), "--format", "mlx", "--type", "q4"],
        &[],
    );
    assert!(wait_until_writing(&mut child, out_dir.path()), "the folder build started writing");
    send(child.id(), "KILL");
    assert_eq!(stderr_of(child).0.signal(), Some(9));
    let left = names_in(out_dir.path());
    assert!(left.len() == 2 && left[0].starts_with(".mlx.moeq-"), "{left:?}");
    let run = moeq(&["convert", path_arg(&a), "-o", path_arg(&out_dir.path().join("next2.gguf"))]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("removed 1 temporary file"), "{stderr}");
    assert_eq!(names_in(out_dir.path()), ["next.gguf", "next2.gguf"]);
}

/// A SIGBUS that is not a fault in an input (here: sent with kill) keeps its default action.
#[test]
fn other_sigbus_keep_their_default_action() {
    use std::os::unix::process::ExitStatusExt;
    let inputs = tempfile::tempdir().unwrap();
    let big = inputs.path().join("big.gguf");
    sparse_gguf(&big, 8, 4096, 4096);
    let out_dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -c 0 && exec {} convert {} -o {} --type Q8_0 -q",
        env!("CARGO_BIN_EXE_moeq"),
        path_arg(&big),
        path_arg(&out_dir.path().join("o.gguf"))
    );
    let mut child = Command::new("sh").args(["-c", &script]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    assert!(wait_until_writing(&mut child, out_dir.path()), "the run started writing");
    send(child.id(), "BUS");
    let (status, stderr) = stderr_of(child);
    assert_eq!(status.signal(), Some(7), "{stderr}");
    assert_eq!(names_in(out_dir.path()), Vec::<String>::new());
}

/// A Llama checkpoint of `layers` layers at width 2048 whose weights are holes (zeros), with
/// the tiny fixture's tokenizer: a folder build of it takes a while.
fn sparse_llama(dir: &Path, layers: usize) {
    let llama = fixtures().join("llama/hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(llama.join(f), dir.join(f)).unwrap();
    }
    let (h, inter, heads, kv, vocab) = (2048usize, 5632usize, 16usize, 8usize, 512usize);
    let mut config: Json = serde_json::from_slice(&std::fs::read(llama.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = h.into();
    config["intermediate_size"] = inter.into();
    config["num_attention_heads"] = heads.into();
    config["num_key_value_heads"] = kv.into();
    config["head_dim"] = (h / heads).into();
    config["num_hidden_layers"] = layers.into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, h]), ("model.norm.weight".into(), vec![h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        tensors.extend([
            (format!("{p}input_layernorm.weight"), vec![h]),
            (format!("{p}post_attention_layernorm.weight"), vec![h]),
            (format!("{p}self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}self_attn.k_proj.weight"), vec![kv * h / heads, h]),
            (format!("{p}self_attn.v_proj.weight"), vec![kv * h / heads, h]),
            (format!("{p}self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}mlp.gate_proj.weight"), vec![inter, h]),
            (format!("{p}mlp.up_proj.weight"), vec![inter, h]),
            (format!("{p}mlp.down_proj.weight"), vec![h, inter]),
        ]);
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let size = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    let file = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 0).unwrap();
    file.set_len((bytes.len() + offset) as u64).unwrap();
}

#[test]
fn interrupted_runs_leave_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let inputs = tempfile::tempdir().unwrap();
    let big = inputs.path().join("big.gguf");
    sparse_gguf(&big, 8, 4096, 4096);
    let ck = inputs.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    sparse_llama(&ck, 4);
    let before = snapshot(inputs.path());
    /// (signal, its number, extra arguments, environment)
    type Run<'a> = (&'a str, i32, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let runs: [Run; 7] = [
        ("INT", 2, &[], &[]),
        ("TERM", 15, &[], &[]),
        ("HUP", 1, &[], &[]),
        ("TERM", 15, &[], &[("MOEQ_TMPFILE", "named")]),
        ("INT", 2, &["--split-max-size", "100M"], &[("MOEQ_TMPFILE", "named")]),
        ("INT", 2, &["--format", "mlx", "--type", "q4"], &[]),
        ("KILL", 9, &[], &[]),
    ];
    for (signal, number, extra, env) in runs {
        let out_dir = tempfile::tempdir().unwrap();
        let folder = extra.contains(&"mlx");
        let (input, out) =
            if folder { (&ck, out_dir.path().join("mlx")) } else { (&big, out_dir.path().join("o.gguf")) };
        let mut args = vec!["convert", path_arg(input), "-o", path_arg(&out), "-q"];
        if !folder {
            args.extend(["--type", "Q8_0"]);
        }
        args.extend(extra);
        let mut child = spawn_moeq(&args, env);
        assert!(wait_until_writing(&mut child, out_dir.path()), "{signal} {extra:?}: the run started writing");
        send(child.id(), signal);
        let (status, stderr) = stderr_of(child);
        // Ended by the signal itself (a shell shows 128 + N: 130, 143, 129).
        assert_eq!(status.signal(), Some(number), "{signal} {extra:?}: {status:?} {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if number != 9 {
            assert!(stderr.contains(&format!("interrupted by SIG{signal}")), "{stderr}");
        }
        // Nothing of moeq's in the output folder (kill -9: O_TMPFILE leaves nothing either).
        assert_eq!(names_in(out_dir.path()), Vec::<String>::new(), "{signal} {extra:?} {env:?}");
    }
    assert!(snapshot(inputs.path()) == before, "inputs unchanged");
}

/// A closed standard output or error (`moeq … 2>&1 | head -1`, the reader gone) is no reason
/// to stop: std's print macros panicked on EPIPE (exit 101; `imatrix` before writing its
/// file), and an interrupt's message panicked the signal thread, so SIGTERM was lost and the
/// run went on. Now the output is written, and a signal ends the run as it should.
#[test]
fn closed_stdout_and_stderr_are_no_errors() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let dir = tempfile::tempdir().unwrap();
    let gguf = golden("mixtral-bf16.gguf");
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "1 2 3 4 5 6 7 8 9 10\n").unwrap();
    let imatrix = dir.path().join("m.imatrix");
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    for args in [
        vec!["imatrix", path_arg(&gguf), "--tokens-file", path_arg(&tokens), "-o", path_arg(&imatrix)],
        vec!["inspect", path_arg(&gguf)],
        vec!["eval", path_arg(&gguf), "--tokens", "1,2,3"],
    ] {
        let w = closed();
        let status = Command::new(env!("CARGO_BIN_EXE_moeq"))
            .args(&args)
            .stdout(w.try_clone().unwrap())
            .stderr(w)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}: {status:?}");
    }
    assert!(imatrix.is_file(), "the importance matrix was written");
    // A standard output that fails otherwise (a full disk: /dev/full) is an error: what the
    // command printed is lost.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        for args in [vec!["inspect", "--json", path_arg(&gguf)], vec!["eval", path_arg(&gguf), "--tokens", "1,2,3"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_moeq"))
                .args(&args)
                .stdout(full.try_clone().unwrap())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("writing to standard output failed"), "{err}");
        }
    }
    // SIGTERM with stderr closed: ends by SIGTERM, nothing left.
    let big = dir.path().join("big.gguf");
    sparse_gguf(&big, 8, 4096, 4096);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("o.gguf");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moeq"));
    cmd.args(["convert", path_arg(&big), "-o", path_arg(&out), "--type", "Q8_0", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(closed());
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe, is called.
    unsafe {
        cmd.pre_exec(|| {
            if libc::signal(libc::SIGTERM, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    assert!(wait_until_writing(&mut child, out_dir.path()), "the run started writing");
    send(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert_eq!(names_in(out_dir.path()), Vec::<String>::new());
}

/// `nohup moeq …` (SIGHUP ignored) or `moeq … &` in a script (SIGINT ignored): moeq keeps the
/// signals its parent ignores ignored, so the run completes and writes its output.
#[test]
fn signals_ignored_by_the_parent_stay_ignored() {
    let inputs = tempfile::tempdir().unwrap();
    let big = inputs.path().join("big.gguf");
    sparse_gguf(&big, 8, 4096, 4096);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("o.gguf");
    let args = ["convert", path_arg(&big), "-o", path_arg(&out), "--type", "Q8_0", "-q"];
    let mut child = spawn_moeq_ignoring(&args, &[], &[libc::SIGINT, libc::SIGHUP]);
    assert!(wait_until_writing(&mut child, out_dir.path()), "the run started writing");
    send(child.id(), "INT");
    send(child.id(), "HUP");
    let (status, stderr) = stderr_of(child);
    assert!(status.success(), "{status:?} {stderr}");
    assert!(!stderr.contains("interrupted"), "{stderr}");
    assert_eq!(names_in(out_dir.path()), ["o.gguf"]);
    let info: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&out)])).unwrap();
    assert!(!info["tensors"].as_array().unwrap().is_empty(), "{info}");
}

#[test]
fn inputs_changed_while_read_are_errors_naming_them() {
    let inputs = tempfile::tempdir().unwrap();
    let source = inputs.path().join("source.gguf");
    sparse_gguf(&source, 8, 4096, 4096);
    // Truncated while mapped (SIGBUS on a computed read, EFAULT on a copied one), and
    // rewritten in place without changing its size.
    for (extra, how) in
        [(&["--type", "Q8_0"][..], "truncate"), (&[][..], "truncate"), (&["--type", "Q4_K"][..], "rewrite")]
    {
        let victim = inputs.path().join("victim.gguf");
        std::fs::copy(&source, &victim).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let mut args = vec!["convert", path_arg(&victim), "-o", "o.gguf", "-q"];
        args.extend(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moeq"));
        cmd.args(&args).current_dir(out_dir.path()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        assert!(wait_until_writing(&mut child, out_dir.path()), "{how} {extra:?}: the run started writing");
        let file = std::fs::OpenOptions::new().write(true).open(&victim).unwrap();
        if how == "truncate" {
            file.set_len(100 << 20).unwrap();
        } else {
            std::os::unix::fs::FileExt::write_all_at(&file, b"changed", 300 << 20).unwrap();
        }
        drop(file);
        let (status, stderr) = stderr_of(child);
        assert_eq!(status.code(), Some(2), "{how} {extra:?}: {status:?} {stderr}");
        assert!(
            stderr.contains(path_arg(&victim)) && stderr.contains("changed while being read"),
            "{how} {extra:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(names_in(out_dir.path()), Vec::<String>::new(), "{how} {extra:?}: nothing left");
    }
}

#[test]
fn big_endian_gguf_reads_as_gguf_py_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let be = fixtures().join("big-endian");
    for name in ["float", "quant"] {
        let out = dir.path().join(format!("{name}.gguf"));
        ok(&["convert", path_arg(&be.join(format!("{name}-be.gguf"))), "-o", path_arg(&out), "-q"]);
        let little = std::fs::read(be.join(format!("{name}-le.gguf"))).unwrap();
        assert!(std::fs::read(&out).unwrap() == little, "{name}: the little-endian file gguf-py writes");
        let json: Json =
            serde_json::from_str(&ok(&["inspect", "--json", path_arg(&be.join(format!("{name}-be.gguf")))])).unwrap();
        let le: Json =
            serde_json::from_str(&ok(&["inspect", "--json", path_arg(&be.join(format!("{name}-le.gguf")))])).unwrap();
        assert_eq!(json["details"]["byte order"], "big-endian");
        assert_eq!(le["details"]["byte order"], "little-endian");
        assert_eq!(json["metadata"], le["metadata"]);
        assert_eq!(json["tensors"], le["tensors"]);
    }
    let text = ok(&["inspect", path_arg(&be.join("float-be.gguf"))]);
    assert!(text.contains("byte order    big-endian"), "{text}");
    // A quantized type whose big-endian layout nobody defined: inspect shows it, reading its
    // data is refused, naming the tensor. (Q4_0 → IQ4_NL: same block size.)
    let mut bytes = std::fs::read(be.join("quant-be.gguf")).unwrap();
    let at = bytes.windows(4).position(|w| w == b"q4_0").unwrap() + 4 + 4 + 16;
    assert_eq!(bytes[at..at + 4], 2u32.to_be_bytes());
    bytes[at..at + 4].copy_from_slice(&20u32.to_be_bytes());
    let odd = dir.path().join("odd-be.gguf");
    std::fs::write(&odd, &bytes).unwrap();
    assert!(ok(&["inspect", path_arg(&odd)]).contains("IQ4_NL"));
    let err = fails(&["convert", path_arg(&odd), "-o", path_arg(&dir.path().join("odd.gguf"))]);
    assert!(err.contains("odd-be.gguf") && err.contains("big-endian") && err.contains("'q4_0'"), "{err}");
}

/// Runs moeq expecting success; returns stderr (warnings).
#[track_caller]
fn ok_stderr(args: &[&str]) -> String {
    let out = moeq(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "moeq {args:?} failed: {stderr}");
    stderr
}

/// A copy of a fixture folder with one file's tensors edited (or none: `shard` empty) and
/// its `config.json` edited, at `TEMP/PARENT/NAME` as the fixture is at `PARENT/NAME` (the
/// GGUF's `general.name` comes from those names).
fn fixture_variant(
    src: &Path,
    shard: &str,
    edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool,
    config: impl FnOnce(&mut serde_json::Map<String, Json>),
) -> Variant {
    let temp = tempfile::tempdir().unwrap();
    let names = |p: &Path| p.file_name().unwrap().to_owned();
    let dir = temp.path().join(names(src.parent().unwrap())).join(names(src));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name != shard && path.is_file() {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    if !shard.is_empty() {
        rewrite_safetensors(&src.join(shard), &dir.join(shard), edit);
    }
    let mut cfg = config_of(&dir);
    config(cfg.as_object_mut().unwrap());
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    Variant { _temp: temp, dir }
}

/// A fixture copy made by [`fixture_variant`] (removed when dropped).
struct Variant {
    _temp: tempfile::TempDir,
    dir: PathBuf,
}

impl Variant {
    fn path(&self) -> &Path {
        &self.dir
    }
}

/// Runs moeq expecting a clean failure (exit 2, an `error:` line after any warnings, no
/// panic); returns stderr.
#[track_caller]
fn fails_after_warnings(args: &[&str]) -> String {
    let out = moeq(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "moeq {args:?}: {stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The bf16 bits of `v` (truncated: exact for the values used here).
fn bf16_bits(v: f32) -> [u8; 2] {
    ((v.to_bits() >> 16) as u16).to_le_bytes()
}

/// A narrowing cast that overflows (a bf16 weight above 65504 written as F16, an f32 one past
/// bf16's range, a Q8_0 block whose F16 scale overflows) is refused like NaN input: file,
/// tensor, row and column named, BF16 (or F32) suggested, nothing left behind. The same
/// values convert where the type holds them.
#[test]
fn narrowing_casts_that_overflow_are_refused() {
    let llama = fixtures().join("llama/hf");
    // Row 1, column 6 of o_proj [64, 64] (not permuted: the same row and column in the GGUF).
    let big = fixture_variant(
        &llama,
        "model.safetensors",
        |name, _, data| {
            if name == "model.layers.0.self_attn.o_proj.weight" {
                data[2 * 70..2 * 70 + 2].copy_from_slice(&bf16_bits(70144.0));
            }
            true
        },
        |_| {},
    );
    let out = tempfile::tempdir().unwrap();
    let gguf = out.path().join("f16.gguf");
    let mlx = out.path().join("f16-mlx");
    let needles = ["model.safetensors", "o_proj.weight", "row 1, column 6", "70144", "F16", "BF16"];
    for args in [
        vec!["convert", path_arg(big.path()), "-o", path_arg(&gguf), "--type", "F16", "-q"],
        vec!["convert", path_arg(big.path()), "-o", path_arg(&mlx), "--format", "mlx", "--type", "f16", "-q"],
    ] {
        let err = fails_after_warnings(&args);
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing left behind: {err}");
    }
    // BF16 (the default for this checkpoint) and F32 hold it.
    for ty in ["BF16", "F32"] {
        ok(&["convert", path_arg(big.path()), "-o", path_arg(&out.path().join(format!("{ty}.gguf"))), "--type", ty]);
    }
    ok(&["convert", path_arg(big.path()), "-o", path_arg(&out.path().join("bf16-mlx")), "--format", "mlx", "-q"]);

    // gpt-oss's transposed bf16 experts: the output row and column are named.
    let experts = fixture_variant(
        &fixtures().join("gpt-oss/hf-bf16"),
        "model.safetensors",
        |name, _, data| {
            if name == "model.layers.1.mlp.experts.gate_up_proj" {
                // Expert 0, input 0, output column 2 (gate row 1 after de-interleaving).
                data[4..6].copy_from_slice(&bf16_bits(-1.0e6));
            }
            true
        },
        |_| {},
    );
    let err =
        fails_after_warnings(&["convert", path_arg(experts.path()), "-o", path_arg(&gguf), "--type", "F16", "-q"]);
    for n in ["gate_up_proj", "blk.1.ffn_gate_exps.weight", "row 1, column 0", "-999", "F16's range", "BF16"] {
        assert!(err.contains(n), "{n:?} not in {err}");
    }

    // An f32 checkpoint value that rounds past bf16's range.
    let f32_max = fixture_variant(
        &llama,
        "model.safetensors",
        |name, entry, data| {
            if name == "model.layers.1.mlp.down_proj.weight" {
                let mut wide: Vec<u8> = data
                    .chunks_exact(2)
                    .flat_map(|h| f32::from_bits((u16::from_le_bytes([h[0], h[1]]) as u32) << 16).to_le_bytes())
                    .collect();
                wide[4 * 130..4 * 131].copy_from_slice(&f32::MAX.to_le_bytes());
                *data = wide;
                entry["dtype"] = Json::from("F32");
            }
            true
        },
        |_| {},
    );
    let err =
        fails_after_warnings(&["convert", path_arg(f32_max.path()), "-o", path_arg(&gguf), "--type", "BF16", "-q"]);
    for n in ["down_proj.weight", "row 1, column 2", "infinity in BF16", "F32"] {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    ok(&["convert", path_arg(f32_max.path()), "-o", path_arg(&out.path().join("max.gguf")), "--type", "F32", "-q"]);
    // An MLX affine group spanning more than f32 holds: its bf16 scale would be infinite.
    let span = fixture_variant(
        &llama,
        "model.safetensors",
        |name, entry, data| {
            if name == "model.layers.0.mlp.gate_proj.weight" {
                let mut wide: Vec<u8> = data
                    .chunks_exact(2)
                    .flat_map(|h| f32::from_bits((u16::from_le_bytes([h[0], h[1]]) as u32) << 16).to_le_bytes())
                    .collect();
                wide[..4].copy_from_slice(&3.0e38f32.to_le_bytes());
                wide[4..8].copy_from_slice(&(-3.0e38f32).to_le_bytes());
                *data = wide;
                entry["dtype"] = Json::from("F32");
            }
            true
        },
        |_| {},
    );
    let err = fails_after_warnings(&[
        "convert",
        path_arg(span.path()),
        "-o",
        path_arg(&mlx),
        "--format",
        "mlx",
        "--type",
        "q4",
    ]);
    for n in ["gate_proj.weight", "row 0, columns 0..64", "-3e38..3e38", "scale overflows bf16", "--quant-override"] {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert!(!mlx.exists());

    // GGUF requantization: F32 → F16 and F32 → Q8_0 (block scale), from a GGUF moeq wrote.
    let f32_gguf = out.path().join("llama-f32.gguf");
    ok(&["convert", path_arg(&golden("llama-bf16.gguf")), "-o", path_arg(&f32_gguf), "--type", "F32", "-q"]);
    let mut bytes = std::fs::read(&f32_gguf).unwrap();
    let file = moeq_formats::gguf::GgufFile::open(&f32_gguf).unwrap();
    let header = file.header();
    let idx = header.tensors.iter().position(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    let at = (header.data_offset + header.tensors[idx].offset) as usize + 4 * 67;
    bytes[at..at + 4].copy_from_slice(&1.0e9f32.to_le_bytes());
    let patched = out.path().join("patched-f32.gguf");
    std::fs::write(&patched, bytes).unwrap();
    let requant = out.path().join("requant.gguf");
    for (ty, needle) in [("F16", "F16's range"), ("Q8_0", "Q8_0 block (its scales overflow)")] {
        let err = fails_after_warnings(&["convert", path_arg(&patched), "-o", path_arg(&requant), "--type", ty]);
        for n in ["patched-f32.gguf", "blk.0.ffn_up.weight", "row 1, column 3", "1000000000", needle] {
            assert!(err.contains(n), "{ty}: {n:?} not in {err}");
        }
        assert!(!requant.exists());
    }
    ok(&["convert", path_arg(&patched), "-o", path_arg(&requant), "--type", "BF16", "-q"]);
}

/// The tensors decide a checkpoint's layout, not config.json (a fine-tune's config still
/// saying MXFP4, a folder whose config lost its quantization_config, OpenAI's original
/// tensors beside a Hugging Face config and back, an MLX build whose config lost its
/// `quantization` block, plain weights under an MLX or fp8 config): moeq warns and converts
/// to GGUF, MLX and HF and evaluates and verifies exactly as with the right config.
#[test]
fn layout_follows_the_tensors_not_config_json() {
    let keep = |_: &str, _: &mut Json, _: &mut Vec<u8>| true;
    let gpt_oss = fixtures().join("gpt-oss");
    let out = tempfile::tempdir().unwrap();
    let read_config = |dir: &str| config_of(&gpt_oss.join(dir));
    let replace_config = |with: Json| {
        move |m: &mut serde_json::Map<String, Json>| {
            m.clear();
            m.extend(with.as_object().unwrap().clone());
        }
    };
    let mxfp4_config = read_config("hf-mxfp4");
    let cases: Vec<(&str, Variant, &str, &[&str])> = vec![
        (
            "hf-bf16",
            fixture_variant(&gpt_oss.join("hf-bf16"), "", keep, |m| {
                m.insert("quantization_config".into(), mxfp4_config["quantization_config"].clone());
            }),
            "gpt-oss-bf16.gguf",
            &["\"quant_method\": \"mxfp4\"", "plain float weights"],
        ),
        (
            "hf-mxfp4",
            fixture_variant(&gpt_oss.join("hf-mxfp4"), "", keep, |m| {
                m.remove("quantization_config");
            }),
            "gpt-oss-mxfp4.gguf",
            &["says no quantization", "MXFP4 (*_blocks/*_scales tensors)"],
        ),
        (
            "original",
            fixture_variant(&gpt_oss.join("original"), "", keep, replace_config(mxfp4_config.clone())),
            "gpt-oss-mxfp4.gguf",
            &["Hugging Face MXFP4 layout", "OpenAI's original layout (block.N.*)"],
        ),
        (
            "hf-mxfp4",
            fixture_variant(&gpt_oss.join("hf-mxfp4"), "", keep, replace_config(read_config("original"))),
            "gpt-oss-mxfp4.gguf",
            &["OpenAI's original form", "MXFP4 (*_blocks/*_scales tensors)"],
        ),
        (
            "../llama/hf",
            fixture_variant(&fixtures().join("llama/hf"), "", keep, |m| {
                m.insert("quantization".into(), serde_json::json!({"group_size": 64, "bits": 4}));
            }),
            "llama-bf16.gguf",
            &["an MLX \"quantization\" block", "plain float weights"],
        ),
        (
            "../mixtral/hf",
            fixture_variant(&fixtures().join("mixtral/hf"), "", keep, |m| {
                m.insert("quantization_config".into(), serde_json::json!({"quant_method": "fp8"}));
            }),
            "mixtral-bf16.gguf",
            &["quant_method \"fp8\"", "plain float weights"],
        ),
    ];
    let tensors_and_keys = |path: &Path| {
        let f = moeq_formats::gguf::GgufFile::open(path).unwrap();
        let keys: Vec<_> = f.header().metadata.iter().filter(|(k, _)| k != "general.name").cloned().collect();
        let data: Vec<_> = (0..f.header().tensors.len()).map(|i| f.tensor_data(i).to_vec()).collect();
        (keys, f.header().tensors.clone(), data)
    };
    for (i, (clean, dir, golden_name, warned)) in cases.iter().enumerate() {
        let clean = gpt_oss.join(clean);
        let input = path_arg(dir.path());
        // GGUF: the file llama.cpp's converter writes from the clean checkpoint.
        let gguf = out.path().join(format!("{i}.gguf"));
        let err = ok_stderr(&["convert", input, "-o", path_arg(&gguf), "-q"]);
        for n in *warned {
            assert!(err.contains(n), "case {i}: {n:?} not in {err}");
        }
        assert!(err.contains("config.json") && err.contains("reading them as"), "case {i}: {err}");
        assert!(tensors_and_keys(&gguf) == tensors_and_keys(&golden(golden_name)), "case {i}: GGUF differs");
        // MLX and (gpt-oss) HF builds: those of the clean checkpoint.
        let mut formats = vec![("mlx", vec!["--type", "q4", "--group-size", "32"])];
        if golden_name.starts_with("gpt-oss") {
            formats.push(("hf", vec![]));
        }
        for (format, more) in formats {
            let (a, b) = (out.path().join(format!("{i}-{format}")), out.path().join(format!("{i}-{format}-clean")));
            for (src, dst) in [(input, &a), (path_arg(&clean), &b)] {
                let mut args = vec!["convert", src, "-o", path_arg(dst), "--format", format, "-q"];
                args.extend(more.iter());
                ok(&args);
            }
            assert!(folder_tensors(&a) == folder_tensors(&b), "case {i}: {format} build differs");
        }
        // eval and verify: the same model.
        let eval = |p: &str| ok(&["eval", p, "--tokens", "1,2,3"]);
        assert_eq!(eval(input), eval(path_arg(&clean)), "case {i}");
        let (code, r) = verify_json(&clean, dir.path());
        assert_eq!((code, r["model"]["kl_max"].as_f64()), (0, Some(0.0)), "case {i}: {}", r["failures"]);
        let inspect = ok(&["inspect", input]);
        assert!(inspect.contains("warning"), "case {i}: {inspect}");
    }

    // An MLX build whose config.json lost its quantization block: found by its tensors;
    // MLX's mxfp4 mode needs no settings, affine ones are asked for.
    let strip = |m: &mut serde_json::Map<String, Json>| {
        m.remove("quantization");
        m.remove("quantization_config");
    };
    let mlx = fixtures().join("golden-mlx");
    let stripped = fixture_variant(&mlx.join("gpt-oss-mxfp4"), "", keep, strip);
    let eval = |p: &Path| ok(&["eval", path_arg(p), "--tokens", "1,2,3"]);
    assert_eq!(eval(stripped.path()), eval(&mlx.join("gpt-oss-mxfp4")));
    let inspect = ok(&["inspect", path_arg(stripped.path())]);
    assert!(inspect.contains("MLX build") && inspect.contains("warning"), "{inspect}");
    let err = fails_after_warnings(&["convert", path_arg(stripped.path()), "-o", path_arg(&out.path().join("x.gguf"))]);
    assert!(err.contains("an MLX build"), "{err}");
    let stripped = fixture_variant(&mlx.join("llama-q4"), "", keep, strip);
    let err = fails_after_warnings(&["eval", path_arg(stripped.path()), "--tokens", "1,2,3"]);
    assert!(err.contains("no \"quantization\" settings") && err.contains("model.embed_tokens.weight"), "{err}");
}

/// Inputs the fuzzers once found troublesome (`tests/fixtures/fuzz/`; e.g. a `block_count` of
/// 65535 over a 2-layer model, which listed every claimed layer's tensors, 300 MB and 1.5 s,
/// before failing at layer 2): eval and verify refuse each cleanly, and so does the fuzz
/// targets' library entry point.
#[test]
fn fuzz_regressions_fail_cleanly() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixtures().join("fuzz")).unwrap() {
        let path = entry.unwrap().path();
        let err = fails_after_warnings(&["eval", path_arg(&path), "--tokens", "0,1"]);
        assert!(err.contains(path_arg(&path)), "{err}");
        fails_after_warnings(&["verify", path_arg(&fixtures().join("llama/hf")), path_arg(&path)]);
        assert!(moeq::forward::check_gguf_bytes(&std::fs::read(&path).unwrap()).is_err(), "{path:?}");
        count += 1;
    }
    assert!(count > 0);
}

/// A config.json `vocab_size` far past any vocabulary (10^12, found by scripts/fuzz_cli.py)
/// aborted `convert` with a 24 TB allocation while padding the vocabulary (SIGABRT, no
/// message). Every family refuses it, exit 2, naming the key; a large
/// but plausible count still gets as far as the tensor checks.
#[test]
fn implausible_vocab_size_is_refused_before_padding() {
    let out = tempfile::tempdir().unwrap();
    for fixture in [
        "gpt-oss/hf-mxfp4",
        "llama/hf",
        "mixtral/hf",
        "qwen2-moe/hf",
        "qwen3-moe/hf",
        "deepseek-v3/fp8",
        "glm4-moe/hf",
        "glm4-moe-lite/hf",
        "minimax-m2/fp8",
    ] {
        let src = fixtures().join(fixture);
        let variant = fixture_variant(
            &src,
            "",
            |_, _, _| false,
            |c| {
                c.insert("vocab_size".into(), serde_json::json!(1_000_000_000u64));
            },
        );
        let o = out.path().join("v.gguf");
        let err = fails_after_warnings(&["convert", path_arg(variant.path()), "-o", path_arg(&o), "-q"]);
        // (Qwen's configuration checks come first and say the same in their own words.)
        assert!(err.contains("implausible") && err.contains("vocab_size"), "{fixture}: {err}");
        assert!(!o.exists(), "{fixture}");
        let variant = fixture_variant(
            &src,
            "",
            |_, _, _| false,
            |c| {
                c.insert("vocab_size".into(), serde_json::json!(1 << 20));
            },
        );
        let err = fails_after_warnings(&["convert", path_arg(variant.path()), "-o", path_arg(&o), "-q"]);
        assert!(!err.contains("implausible"), "{fixture}: {err}");
        assert!(names_in(out.path()).is_empty(), "{fixture}: {:?}", names_in(out.path()));
    }
}

/// An expert count of 10^12 in config.json (found by scripts/fuzz_cli.py: Mixtral's
/// `num_local_experts` had no limit, and `convert` ran until killed) is refused in every
/// family, exit 2, for conversion and eval alike; so is a layer count of 10^12.
#[test]
fn implausible_expert_counts_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let cases = [
        ("mixtral/hf", "num_local_experts"),
        ("gpt-oss/hf-mxfp4", "num_local_experts"),
        ("gpt-oss/original", "num_experts"),
        ("qwen2-moe/hf", "num_experts"),
        ("qwen3-moe/hf", "num_experts"),
        // Layer counts too: Qwen's config ran for ever building its per-layer lists.
        ("qwen2-moe/hf", "num_hidden_layers"),
        ("qwen3-moe/hf", "num_hidden_layers"),
        ("deepseek-v3/fp8", "num_hidden_layers"),
        ("mixtral/hf", "num_hidden_layers"),
        ("glm4-moe/hf", "n_routed_experts"),
        ("glm4-moe/hf", "num_hidden_layers"),
        ("glm4-moe-lite/hf", "n_routed_experts"),
        ("minimax-m2/fp8", "num_local_experts"),
        ("minimax-m2/hf", "num_hidden_layers"),
    ];
    for (fixture, key) in cases {
        let variant = fixture_variant(
            &fixtures().join(fixture),
            "",
            |_, _, _| false,
            |c| {
                c.insert(key.into(), serde_json::json!(1_000_000_000u64));
            },
        );
        let dir = path_arg(variant.path());
        let o = out.path().join("m.gguf");
        for args in [
            vec!["convert", dir, "-o", path_arg(&o), "-q", "--type", "BF16"],
            vec!["convert", dir, "-o", path_arg(&o), "-q", "--format", "mlx"],
            vec!["eval", dir, "--tokens", "1,2"],
        ] {
            let err = fails_after_warnings(&args);
            let named = format!("\"{key}\" is 1000000000");
            assert!(err.contains(&named) && err.contains("implausible"), "{fixture} {args:?}: {err}");
            assert!(names_in(out.path()).is_empty(), "{fixture} {args:?}");
        }
    }
}

/// A GGUF tensor with a dimension of 0 (which GGUF's format allows) panicked `convert` in
/// the recipes' row arithmetic (exit 101), with and without `--type`: an error naming file
/// and tensor.
#[test]
fn gguf_tensors_without_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(golden("llama-bf16.gguf")).unwrap();
    let header = moeq_formats::gguf::GgufHeader::parse(&src).unwrap();
    // The last tensor (so no later offset moves): find its info after the metadata, then its
    // first dimension.
    let last = header.tensors.last().unwrap();
    let name = last.name.as_bytes();
    let at = src.windows(name.len()).rposition(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(src[at..at + 4].try_into().unwrap());
    assert_eq!(n_dims as usize, last.ne.len());
    let mut bytes = src.clone();
    bytes[at + 4..at + 12].copy_from_slice(&0u64.to_le_bytes());
    let input = dir.path().join("zero.gguf");
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("o.gguf");
    for extra in [&[][..], &["--type", "Q4_0"][..]] {
        let mut args = vec!["convert", path_arg(&input), "-o", path_arg(&out), "-q"];
        args.extend(extra);
        let err = fails(&args);
        let named = format!("zero.gguf: tensor '{}' has dimensions [0", last.name);
        assert!(err.contains(&named) && err.contains("holds no values"), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}

/// A safetensors header whose shape and dtype disagree with a tensor's data_offsets (or
/// overflow) is an error naming the tensor and both sizes (the safetensors crate's message
/// named no tensor).
#[test]
fn safetensors_size_errors_name_the_tensor() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m.gguf");
    let cases: [(Json, &str); 3] = [
        (
            serde_json::json!("F32"),
            "shape [512, 64] of F32 is 131072 bytes, but its data_offsets [0, 65536] hold 65536",
        ),
        (serde_json::json!("F4"), "shape [512, 64] of F4 is 16384 bytes"),
        (serde_json::json!([1u64 << 40, 1u64 << 40]), "has more bytes than an address can count"),
    ];
    for (value, why) in cases {
        let variant = fixture_variant(
            &fixtures().join("llama/hf"),
            "model.safetensors",
            |name, entry, _| {
                if name == "model.embed_tokens.weight" {
                    let field = if value.is_string() { "dtype" } else { "shape" };
                    entry[field] = value.clone();
                }
                true
            },
            |_| {},
        );
        for args in [
            vec!["convert", path_arg(variant.path()), "-o", path_arg(&o), "-q"],
            vec!["inspect", path_arg(variant.path())],
        ] {
            let err = fails_after_warnings(&args);
            assert!(
                err.contains("model.safetensors")
                    && err.contains("tensor 'model.embed_tokens.weight'")
                    && err.contains(why),
                "{args:?}: {err}"
            );
        }
        assert!(names_in(out.path()).is_empty());
    }
}

/// A `--report` that cannot be written (disk full) fails the run with nothing in place: the
/// report is written before the model is committed (it was written after, so the run exited
/// 2 with the new model in place). Needs a small tmpfs, so runs only where `mount` is
/// allowed (as root).
#[test]
fn report_on_a_full_disk_leaves_nothing() {
    let gguf = golden("mixtral-bf16.gguf");
    let sizes = tempfile::tempdir().unwrap();
    let (o, r) = (sizes.path().join("m.gguf"), sizes.path().join("r.json"));
    ok(&["convert", path_arg(&gguf), "-o", path_arg(&o), "--type", "Q4_0", "--report", path_arg(&r), "-q"]);
    let pages = |p: &Path| std::fs::metadata(p).unwrap().len().div_ceil(4096);
    // Room for the model and for all of the report but one page.
    let Some(small) = SmallDisk::mount(pages(&o) + pages(&r) - 1) else {
        eprintln!("report_on_a_full_disk_leaves_nothing: cannot mount a tmpfs here; skipped");
        return;
    };
    let (o, r) = (small.path().join("m.gguf"), small.path().join("r.json"));
    let err =
        fails(&["convert", path_arg(&gguf), "-o", path_arg(&o), "--type", "Q4_0", "--report", path_arg(&r), "-q"]);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(names_in(small.path()).is_empty(), "{:?}", names_in(small.path()));
    // The model alone fits: it was the one left in place.
    ok(&["convert", path_arg(&gguf), "-o", path_arg(&o), "--type", "Q4_0", "-q"]);
    std::fs::remove_file(&o).unwrap();
}

/// `imatrix --save-chunks` put the chunks file in place before computing: a run that then
/// failed (the matrix not fitting on the disk) or was interrupted left it behind. It is
/// committed after the matrix now. A chunks file at the matrix's path is refused.
#[test]
fn imatrix_save_chunks_is_committed_with_the_matrix() {
    let gguf = golden("mixtral-bf16.gguf");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "1 2 3 4 5 6 7 8 9 10\n").unwrap();
    let (m, c) = (dir.path().join("m.imatrix"), dir.path().join("chunks.txt"));
    let run = |m: &Path, c: &Path| {
        vec![
            "imatrix".to_string(),
            path_arg(&gguf).into(),
            "--tokens-file".into(),
            path_arg(&tokens).into(),
            "-o".into(),
            path_arg(m).into(),
            "--save-chunks".into(),
            path_arg(c).into(),
            "-q".into(),
        ]
    };
    // --save-chunks naming the matrix's own path (spelled otherwise): one output silently
    // replaced the other. Refused before any work, nothing written.
    let same = dir.path().join(".").join("m.imatrix");
    let args = run(&m, &same);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--save-chunks") && err.contains("that is where the output goes"), "{err}");
    assert!(!m.exists());
    let args = run(&m, &c);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "1,2,3,4,5,6,7,8,9,10\n");
    let pages = |p: &Path| std::fs::metadata(p).unwrap().len().div_ceil(4096);
    // Room for the chunks, not for the matrix.
    let Some(small) = SmallDisk::mount(pages(&m)) else {
        eprintln!("imatrix_save_chunks_is_committed_with_the_matrix: cannot mount a tmpfs here; skipped");
        return;
    };
    let args = run(&small.path().join("m.imatrix"), &small.path().join("chunks.txt"));
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("No space left on device"), "{err}");
    assert!(names_in(small.path()).is_empty(), "{:?}", names_in(small.path()));
}

/// A tmpfs of `pages` pages of 4 KiB on a temporary folder (unmounted when dropped), where
/// `mount` is allowed (as root); `None` elsewhere.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(pages: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={}", pages * 4096), "tmpfs", path_arg(dir.path())])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A negative RMSNorm epsilon (config.json's `rms_norm_eps`, or a GGUF's
/// `attention.layer_norm_rms_epsilon`) made every logit NaN in `eval`, exit 0, and was written
/// into converted files: it is an error naming the key.
#[test]
fn negative_rms_norm_eps_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m.gguf");
    for fixture in ["mixtral/hf", "gpt-oss/hf-mxfp4", "qwen3-moe/hf", "deepseek-v3/fp8", "glm4-moe/hf", "minimax-m2/hf"]
    {
        let variant = fixture_variant(
            &fixtures().join(fixture),
            "",
            |_, _, _| false,
            |c| {
                c.insert("rms_norm_eps".into(), serde_json::json!(-1.0));
            },
        );
        let dir = path_arg(variant.path());
        for args in [vec!["convert", dir, "-o", path_arg(&o), "-q"], vec!["eval", dir, "--tokens", "1,2"]] {
            let err = fails_after_warnings(&args);
            assert!(err.contains("\"rms_norm_eps\" is -1") && err.contains("config.json"), "{fixture} {args:?}: {err}");
            assert!(names_in(out.path()).is_empty(), "{fixture} {args:?}");
        }
    }
    let gguf = golden("mixtral-bf16.gguf");
    ok(&[
        "convert",
        path_arg(&gguf),
        "-o",
        path_arg(&o),
        "--type",
        "Q8_0",
        "--override-kv",
        "llama.attention.layer_norm_rms_epsilon=float:-1",
        "-q",
    ]);
    let err = fails_after_warnings(&["eval", path_arg(&o), "--tokens", "1,2"]);
    assert!(err.contains("'llama.attention.layer_norm_rms_epsilon' is -1"), "{err}");
}

/// A size in config.json that is zero, too large or inconsistent is an error naming the key
/// and its value in every family (they were a dump of moeq's internal config struct).
#[test]
fn config_size_errors_name_the_key() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m.gguf");
    let cases: [(&str, &str, Json, &str); 14] = [
        (
            "llama/hf",
            "num_key_value_heads",
            serde_json::json!(3),
            "\"num_attention_heads\" 4 is not a multiple of \"num_key_value_heads\" 3",
        ),
        ("llama/hf", "hidden_size", serde_json::json!(1u64 << 31), "\"hidden_size\" is 2147483648, more than 1048576"),
        ("llama/hf", "head_dim", serde_json::json!(7), "\"head_dim\" is 7, not a positive even number"),
        (
            "mixtral/hf",
            "num_experts_per_tok",
            serde_json::json!(9),
            "num_experts_per_tok is 9, not 1 to num_local_experts (4)",
        ),
        ("mixtral/hf", "intermediate_size", serde_json::json!(0), "\"intermediate_size\" is 0"),
        ("gpt-oss/hf-mxfp4", "num_key_value_heads", serde_json::json!(0), "\"num_key_value_heads\" is 0"),
        (
            "gpt-oss/hf-mxfp4",
            "num_experts_per_tok",
            serde_json::json!(0),
            "num_experts_per_tok is 0, not 1 to num_local_experts",
        ),
        ("qwen3-moe/hf", "moe_intermediate_size", serde_json::json!(0), "\"moe_intermediate_size\" is 0"),
        (
            "qwen2-moe/hf",
            "shared_expert_intermediate_size",
            serde_json::json!(0),
            "\"shared_expert_intermediate_size\" is 0",
        ),
        ("deepseek-v3/fp8", "qk_rope_head_dim", serde_json::json!(7), "\"qk_rope_head_dim\" is 7, not an even number"),
        ("glm4-moe/hf", "n_shared_experts", serde_json::json!(0), "\"n_shared_experts\" is 0"),
        ("glm4-moe/hf", "head_dim", serde_json::json!(30), "partial_rotary_factor 0.5 rotates 15"),
        ("minimax-m2/fp8", "intermediate_size", serde_json::json!(0), "\"intermediate_size\" is 0"),
        ("minimax-m2/hf", "head_dim", serde_json::json!(0), "\"head_dim\" is 0"),
    ];
    for (fixture, key, value, why) in cases {
        let variant = fixture_variant(
            &fixtures().join(fixture),
            "",
            |_, _, _| false,
            |c| {
                c.insert(key.into(), value.clone());
            },
        );
        let args = ["convert", path_arg(variant.path()), "-o", path_arg(&o), "-q", "--type", "BF16"];
        let err = fails_after_warnings(&args);
        assert!(err.contains(why) && err.contains("config.json"), "{fixture} {key}: {err}");
        assert!(!err.contains("Config {"), "{fixture} {key}: {err}");
        assert!(names_in(out.path()).is_empty(), "{fixture} {key}");
    }
}

/// config.json values of the wrong JSON type were read as absent, and values GGUF's 32-bit
/// fields cannot hold were wrapped or written as infinities, all with exit 0: `"rope_scaling":
/// "yarn"` converted without YaRN, `"tie_word_embeddings": "yes"` untied, Qwen3-MoE's
/// `"norm_topk_prob": "true"` ran unnormalized in eval and MLX builds, a context of 2^33 became
/// `context_length` 0, a YaRN factor of 0 or -32 went into the GGUF (llama.cpp divides by it).
/// Each is now an error naming the file and key, for convert (GGUF and MLX) and eval; and a
/// GGUF with a negative YaRN factor is refused by eval.
#[test]
fn config_values_of_the_wrong_type_or_range_are_errors() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m.gguf");
    let mlx = out.path().join("mlx");
    type Edit = fn(&mut serde_json::Map<String, Json>);
    let cases: [(&str, Edit, &str); 12] = [
        (
            "gpt-oss/hf-mxfp4",
            |c| drop(c.insert("rope_scaling".into(), "yarn".into())),
            "\"rope_scaling\" is \"yarn\", not an object",
        ),
        (
            "gpt-oss/hf-mxfp4",
            |c| drop(c.insert("tie_word_embeddings".into(), "yes".into())),
            "\"tie_word_embeddings\" is \"yes\", not true or false",
        ),
        (
            "gpt-oss/hf-mxfp4",
            |c| drop(c.insert("max_position_embeddings".into(), (1u64 << 33).into())),
            "\"max_position_embeddings\" is 8589934592, more than GGUF's 32-bit integers hold",
        ),
        (
            "gpt-oss/hf-mxfp4",
            |c| c["rope_scaling"]["factor"] = (-32.0).into(),
            "\"rope_scaling.factor\" is -32: YaRN scales the context by a factor of at least 1",
        ),
        (
            "gpt-oss/hf-mxfp4",
            |c| c["rope_scaling"]["rope_type"] = 5.into(),
            "\"rope_scaling.rope_type\" is 5, not a string",
        ),
        (
            "gpt-oss/hf-mxfp4",
            |c| drop(c.insert("rope_theta".into(), 1e300.into())),
            "beyond the range of GGUF's 32-bit floats",
        ),
        (
            "qwen3-moe/hf",
            |c| drop(c.insert("norm_topk_prob".into(), "true".into())),
            "\"norm_topk_prob\" is \"true\", not true or false",
        ),
        ("llama/hf", |c| drop(c.insert("hidden_act".into(), 3.into())), "\"hidden_act\" is 3, not a string"),
        (
            "gpt-oss/hf-mxfp4",
            |c| drop(c.insert("layer_types".into(), "all".into())),
            "\"layer_types\" is \"all\", not a list",
        ),
        (
            "mixtral/hf",
            |c| drop(c.insert("rope_scaling".into(), serde_json::json!({"rope_type": "linear", "factor": 0}))),
            "\"rope_scaling.factor\" is 0: linear RoPE scaling needs a positive factor",
        ),
        // llama.cpp's converter stops with a ZeroDivisionError; moeq wrote infinite-wavelength
        // rope_freqs.
        (
            "llama/hf",
            |c| {
                let r = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0});
                drop(c.insert("rope_scaling".into(), r))
            },
            "rope_scaling.low_freq_factor is 0; Llama 3's RoPE scaling needs a positive number",
        ),
        (
            "llama/hf",
            |c| {
                let r = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": -4.0});
                drop(c.insert("rope_scaling".into(), r))
            },
            "rope_scaling.high_freq_factor is -4; Llama 3's RoPE scaling needs a positive number",
        ),
    ];
    for (fixture, edit, why) in cases {
        let variant = fixture_variant(&fixtures().join(fixture), "", |_, _, _| false, edit);
        let dir = path_arg(variant.path());
        for args in [
            vec!["convert", dir, "-o", path_arg(&o), "-q"],
            vec!["convert", dir, "-o", path_arg(&mlx), "--format", "mlx", "-q"],
            vec!["eval", dir, "--tokens", "1,2"],
        ] {
            let err = fails_after_warnings(&args);
            assert!(err.contains(why) && err.contains("config.json"), "{fixture} {args:?}: {err}");
            assert!(names_in(out.path()).is_empty(), "{fixture} {args:?}");
        }
    }
    let gguf = golden("gpt-oss-mxfp4.gguf");
    ok(&[
        "convert",
        path_arg(&gguf),
        "-o",
        path_arg(&o),
        "--type",
        "Q8_0",
        "--override-kv",
        "gpt-oss.rope.scaling.factor=float:-32",
        "-q",
    ]);
    let err = fails_after_warnings(&["eval", path_arg(&o), "--tokens", "1,2"]);
    assert!(err.contains("'gpt-oss.rope.scaling.factor' is -32: not a RoPE scaling factor"), "{err}");
}

/// Zeros that were divisors (found by scripts/fuzz_cli.py, both exit 101): a Llama-style
/// config with `num_attention_heads` 0 and no `head_dim` (the default head size divided by
/// it), and an MLX build whose `quantization` says 0 bits. Both are errors naming the
/// setting, for eval, verify and convert.
#[test]
fn zero_sizes_in_config_json_are_errors() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("m.gguf");
    let llama = fixtures().join("llama/hf");
    let heads = fixture_variant(
        &llama,
        "",
        |_, _, _| false,
        |c| {
            c.insert("num_attention_heads".into(), serde_json::json!(0));
        },
    );
    let mlx = fixtures().join("golden-mlx");
    let bits = |name: &str| {
        fixture_variant(
            &mlx.join(name),
            "",
            |_, _, _| false,
            |c| {
                if let Some(q) = c.get_mut("quantization").and_then(Json::as_object_mut) {
                    q.insert("bits".into(), serde_json::json!(0));
                    for v in q.values_mut() {
                        if let Some(m) = v.as_object_mut() {
                            m.insert("bits".into(), serde_json::json!(0));
                        }
                    }
                }
            },
        )
    };
    let cases =
        [(heads, "\"num_attention_heads\" is 0"), (bits("llama-q4"), "0 bits"), (bits("gpt-oss-mxfp4"), "0 bits")];
    for (variant, why) in &cases {
        let dir = path_arg(variant.path());
        let mut runs =
            vec![vec!["eval", dir, "--tokens", "1,2"], vec!["verify", dir, path_arg(&llama), "--tokens", "1,2"]];
        // (MLX builds are read, not converted.)
        if !why.contains("bits") {
            runs.push(vec!["convert", dir, "-o", path_arg(&o), "-q"]);
        }
        for args in runs {
            let err = fails_after_warnings(&args);
            assert!(err.contains(why), "{args:?}: {err}");
            assert!(names_in(out.path()).is_empty(), "{args:?}");
        }
    }
}

/// An MLX build's `quantization` settings of the wrong JSON type were read as absent: `"bits":
/// "4"` was reported as no settings at all, and a per-module `false` (mlx-lm then builds the
/// module unquantized and cannot load its packed weight) or `"x"` fell back to the global
/// settings, so eval and verify ran a folder mlx-lm refuses (exit 0). Each is an error naming
/// the tensor and the key; a per-module `true` means the global settings, as in mlx-lm.
#[test]
fn mlx_quantization_settings_of_the_wrong_type_are_errors() {
    let llama = fixtures().join("llama/hf");
    let q_proj = "model.layers.0.self_attn.q_proj";
    let cases: [(&str, Json, &str); 4] = [
        ("bits", serde_json::json!("4"), "\"quantization.bits\" is \"4\", not a non-negative integer"),
        ("mode", serde_json::json!(4), "\"quantization.mode\" is 4, not a string"),
        (q_proj, serde_json::json!(false), "says \"model.layers.0.self_attn.q_proj\": false"),
        (q_proj, serde_json::json!("x"), "\"quantization.model.layers.0.self_attn.q_proj\" is \"x\", not an object"),
    ];
    for (key, value, why) in cases {
        let variant = fixture_variant(
            &fixtures().join("golden-mlx/llama-q4"),
            "",
            |_, _, _| false,
            |c| {
                c["quantization"].as_object_mut().unwrap().insert(key.into(), value.clone());
            },
        );
        let dir = path_arg(variant.path());
        for args in [vec!["eval", dir, "--tokens", "1,2"], vec!["verify", path_arg(&llama), dir, "--tokens", "1,2"]] {
            let err = fails_after_warnings(&args);
            assert!(err.contains(why) && err.contains("tensor '"), "{key} {args:?}: {err}");
        }
    }
    let variant = fixture_variant(
        &fixtures().join("golden-mlx/llama-q4"),
        "",
        |_, _, _| false,
        |c| {
            c["quantization"].as_object_mut().unwrap().insert(q_proj.into(), serde_json::json!(true));
        },
    );
    ok(&["eval", path_arg(variant.path()), "--tokens", "1,2"]);
}

/// `--format hf` cut the expert rows by config.json's sizes without checking the tensors
/// against them: a hidden_size doubled over a gpt-oss checkpoint panicked (slice index out of
/// range, found by scripts/fuzz_cli.py). Every gpt-oss layout is now checked as for a GGUF:
/// exit 2 naming the tensor and both shapes, nothing written; the GGUF and MLX outputs refuse
/// the same configs.
#[test]
fn hf_builds_check_the_tensors_against_config_json() {
    let out = tempfile::tempdir().unwrap();
    for fixture in ["gpt-oss/hf-mxfp4", "gpt-oss/hf-bf16", "gpt-oss/original"] {
        for (key, value) in [("hidden_size", 128), ("intermediate_size", 128), ("num_attention_heads", 8)] {
            let variant = fixture_variant(
                &fixtures().join(fixture),
                "",
                |_, _, _| false,
                |c| {
                    c.insert(key.into(), serde_json::json!(value));
                },
            );
            let dir = variant.path();
            for (format, o) in [("hf", "build"), ("mlx", "build"), ("gguf", "m.gguf")] {
                let o = out.path().join(o);
                let err =
                    fails_after_warnings(&["convert", path_arg(dir), "-o", path_arg(&o), "-q", "--format", format]);
                assert!(err.contains("shape") && err.contains("expected"), "{fixture} {key} {format}: {err}");
                assert!(names_in(out.path()).is_empty(), "{fixture} {key} {format}: {:?}", names_in(out.path()));
            }
        }
    }
}

// ---- moeq imatrix -------------------------------------------------------------------------

/// An importance matrix GGUF: its metadata and, per tensor, its `ne` and f32 values.
type ImatrixFile = (Vec<(String, moeq_formats::gguf::Value)>, Vec<(String, Vec<u64>, Vec<f32>)>);

fn read_imatrix(path: &Path) -> ImatrixFile {
    let file = moeq_formats::gguf::GgufFile::open(path).unwrap();
    let h = file.header();
    let tensors = h
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            assert_eq!(t.ggml_type, moeq_formats::gguf::GgmlType::F32, "{}", t.name);
            let values =
                file.tensor_data(i).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (t.name.clone(), t.ne.clone(), values)
        })
        .collect();
    (h.metadata.clone(), tensors)
}

/// A legacy .dat imatrix: entries (name, ncall, values), then the chunk count and dataset.
type DatFile = (Vec<(String, i32, Vec<f32>)>, i32, String);

fn read_dat(path: &Path) -> DatFile {
    let b = std::fs::read(path).unwrap();
    let mut at = 0;
    let i32_at = |at: &mut usize| {
        let v = i32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
        *at += 4;
        v
    };
    let n = i32_at(&mut at);
    let mut entries = Vec::new();
    for _ in 0..n {
        let len = i32_at(&mut at) as usize;
        let name = String::from_utf8(b[at..at + len].to_vec()).unwrap();
        at += len;
        let ncall = i32_at(&mut at);
        let nval = i32_at(&mut at) as usize;
        let values = b[at..at + 4 * nval].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        at += 4 * nval;
        entries.push((name, ncall, values));
    }
    let chunks = i32_at(&mut at);
    let len = i32_at(&mut at) as usize;
    let dataset = String::from_utf8(b[at..at + len].to_vec()).unwrap();
    assert_eq!(at + len, b.len(), "trailing bytes");
    (entries, chunks, dataset)
}

fn rel_l2_f32(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

/// A copy of the bf16 gpt-oss fixture with its config and weights edited.
fn gpt_oss_variant(
    config: impl FnOnce(&mut Json),
    edit: impl FnMut(&str, &mut Json, &mut Vec<u8>) -> bool,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("gpt-oss/hf-bf16");
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: Json = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    rewrite_safetensors(&src.join("model.safetensors"), &dir.path().join("model.safetensors"), edit);
    dir
}

/// On the same text and chunks, `moeq imatrix` gives what llama-imatrix gives (f32 throughout,
/// see tests/fixtures/imatrix/README.md): the same metadata keys and tensors, identical counts
/// (experts included), sums within 1e-4; the legacy .dat too.
#[test]
fn imatrix_equals_llama_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let no_yarn = gpt_oss_variant(|c| c["rope_scaling"]["factor"] = serde_json::json!(1.0), |_, _, _| true);
    let text = fixtures().join("imatrix/calib.txt");
    for (name, model) in [("mixtral", fixtures().join("mixtral/hf")), ("gpt-oss", no_yarn.path().to_path_buf())] {
        let (gguf, dat) = (dir.path().join(format!("{name}.gguf")), dir.path().join(format!("{name}.dat")));
        for (out, format) in [(&gguf, "gguf"), (&dat, "dat")] {
            let run = moeq(&[
                "imatrix",
                path_arg(&model),
                "--text",
                path_arg(&text),
                "--ctx",
                "64",
                "--chunks",
                "20",
                "-o",
                path_arg(out),
                "--output-format",
                format,
                "-q",
            ]);
            // -q: no table, no `wrote` line (every expert got data here: no warning either).
            assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
            assert_eq!((run.stdout.len(), run.stderr.len()), (0, 0), "{}", String::from_utf8_lossy(&run.stderr));
        }
        let (ours_meta, ours) = read_imatrix(&gguf);
        let (ref_meta, reference) = read_imatrix(&fixtures().join(format!("imatrix/{name}-llama.imatrix.gguf")));
        let keys = |m: &[(String, moeq_formats::gguf::Value)]| -> Vec<(String, String)> {
            m.iter().map(|(k, v)| (k.clone(), v.type_label())).collect()
        };
        assert_eq!(keys(&ours_meta), keys(&ref_meta), "{name}: metadata keys");
        for key in ["general.type", "imatrix.chunk_count", "imatrix.chunk_size"] {
            let get = |m: &[(String, moeq_formats::gguf::Value)]| m.iter().find(|(k, _)| k == key).unwrap().1.clone();
            assert_eq!(get(&ours_meta), get(&ref_meta), "{name}: {key}");
        }
        assert_eq!(ours.len(), reference.len(), "{name}: tensor count");
        let mut worst = 0.0f64;
        for ((a_name, a_ne, a), (b_name, b_ne, b)) in ours.iter().zip(&reference) {
            assert_eq!((a_name, a_ne), (b_name, b_ne), "{name}: tensor order and shapes");
            if a_name.ends_with(".counts") {
                assert_eq!(a, b, "{name}: {a_name}");
            } else {
                let rel = rel_l2_f32(a, b);
                worst = worst.max(rel);
                assert!(rel < 1e-4, "{name}: {a_name} deviates by {rel:.2e}");
            }
        }
        assert!(ours.iter().any(|(n, ne, _)| n.ends_with("ffn_gate_exps.weight.in_sum2") && ne == &[64, 4]), "{name}");
        let (ours_dat, ours_chunks, dataset) = read_dat(&dat);
        let (ref_dat, ref_chunks, _) = read_dat(&fixtures().join(format!("imatrix/{name}-llama.imatrix.dat")));
        assert_eq!((ours_chunks, dataset.as_str()), (ref_chunks, path_arg(&text)), "{name}: .dat trailer");
        assert_eq!(ours_dat.len(), ref_dat.len(), "{name}: .dat entries");
        for ((a_name, a_ncall, a), (b_name, b_ncall, b)) in ours_dat.iter().zip(&ref_dat) {
            assert_eq!((a_name, a_ncall, a.len()), (b_name, b_ncall, b.len()), "{name}: .dat entry");
            assert!(rel_l2_f32(a, b) < 1e-4, "{name}: .dat {a_name}");
        }
        eprintln!("{name}: largest relative deviation from llama-imatrix {worst:.2e}");
    }
}

/// Expert statistics follow the routing; a router that starves two experts is reported, and
/// --all-experts gives every expert every token (recorded in the file), routing unchanged.
#[test]
fn imatrix_covers_starved_experts_with_all_experts() {
    // Router bias −40 for experts 2 and 3 in every layer: they are never among the top 2.
    let starved = gpt_oss_variant(
        |_| {},
        |name, _, data| {
            if name.ends_with("mlp.router.bias") {
                for e in [2, 3] {
                    data[2 * e..2 * e + 2].copy_from_slice(&0xC220u16.to_le_bytes()); // bf16 −40
                }
            }
            true
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures().join("imatrix/calib.txt");
    let run = |out: &Path, extra: &[&str]| -> Json {
        let mut args = vec![
            "imatrix",
            path_arg(starved.path()),
            "--text",
            path_arg(&text),
            "--ctx",
            "64",
            "-o",
            path_arg(out),
            "--json",
            "-q",
        ];
        args.extend(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    let (routed, all) = (dir.path().join("routed.gguf"), dir.path().join("all.gguf"));
    let coverage = run(&routed, &[]);
    let tokens = coverage["tokens"].as_u64().unwrap();
    assert!(tokens >= 64 * 20, "{coverage}");
    for layer in coverage["routed"].as_array().unwrap() {
        let counts: Vec<u64> = layer.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(counts[2..], [0, 0], "{coverage}");
        assert_eq!(counts.iter().sum::<u64>(), 2 * tokens, "top-2 routing: {coverage}");
    }
    let starved_list = coverage["starved"].as_array().unwrap();
    assert_eq!(starved_list.len(), 4, "{coverage}");
    assert_eq!(run(&all, &["--all-experts"])["routed"], coverage["routed"], "routing unchanged");

    let tensor = |file: &ImatrixFile, name: &str| file.1.iter().find(|t| t.0 == name).unwrap().2.clone();
    let (r, a) = (read_imatrix(&routed), read_imatrix(&all));
    assert!(!r.0.iter().any(|(k, _)| k == "moeq.imatrix.all_experts"));
    assert!(a.0.iter().any(|(k, v)| k == "moeq.imatrix.all_experts" && *v == moeq_formats::gguf::Value::Bool(true)));
    for l in 0..2 {
        let router_sums = tensor(&r, &format!("blk.{l}.ffn_gate_inp.weight.in_sum2"));
        assert_eq!(tensor(&r, &format!("blk.{l}.ffn_gate_inp.weight.counts")), [tokens as f32]);
        for proj in ["gate", "up", "down"] {
            let name = format!("blk.{l}.ffn_{proj}_exps.weight");
            let counts = tensor(&r, &format!("{name}.counts"));
            assert_eq!(counts[2..], [0.0, 0.0], "{name}");
            assert_eq!(counts.iter().sum::<f32>(), 2.0 * tokens as f32, "{name}");
            assert_eq!(tensor(&a, &format!("{name}.counts")), [tokens as f32; 4], "{name} with --all-experts");
            let sums = tensor(&a, &format!("{name}.in_sum2"));
            assert!(sums.iter().all(|s| *s > 0.0), "{name}: every expert has data");
            if proj != "down" {
                // Gate and up see the block's input: with every token, each expert's sums are
                // the router's; routed, the experts' sums add up to top-k times the router's.
                for e in 0..4 {
                    assert!(rel_l2_f32(&sums[e * 64..(e + 1) * 64], &router_sums) < 1e-6, "{name} expert {e}");
                }
                let routed_sums = tensor(&r, &format!("{name}.in_sum2"));
                let per_col: Vec<f32> =
                    (0..64).map(|c| (0..4).map(|e| routed_sums[e * 64 + c]).sum::<f32>() / 2.0).collect();
                assert!(rel_l2_f32(&per_col, &router_sums) < 1e-6, "{name}");
            }
        }
    }
}

/// Bad calibration input: a clear error naming the problem, exit 2, nothing written.
#[test]
fn imatrix_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let (empty, short, bad_utf8) =
        (write("empty.txt", b"  \n"), write("short.txt", b"Hello world"), write("latin1.txt", b"caf\xe9 au lait\n"));
    let big_id = write("ids.txt", b"1,2,3\n4,5,99999\n");
    let negative_id = write("neg.txt", b"1,2,3\n1 -2 3\n");
    let mixtral = fixtures().join("mixtral/hf");
    let text = fixtures().join("imatrix/calib.txt");
    let (gpt_oss, gguf) = (fixtures().join("gpt-oss/hf-mxfp4"), golden("mixtral-bf16.gguf"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![path_arg(&mixtral), "--text", path_arg(&empty)], "the text is empty"),
        (vec![path_arg(&mixtral), "--text", path_arg(&short)], "fewer than one chunk of 512"),
        (vec![path_arg(&mixtral), "--text", path_arg(&bad_utf8)], "not UTF-8 text (invalid byte at offset 3)"),
        (
            vec![path_arg(&mixtral), "--text", path_arg(&text), "--tokenizer", path_arg(&gpt_oss)],
            "not this model's tokenizer",
        ),
        (vec![path_arg(&gguf), "--text", path_arg(&text)], "pass --tokenizer PATH"),
        (vec![path_arg(&gguf), "--text", path_arg(&text)], "or give token ids with --tokens-file FILE"),
        (vec![path_arg(&mixtral), "--tokens-file", path_arg(&big_id)], "chunk 2 holds token 99999"),
        (vec![path_arg(&mixtral), "--tokens-file", path_arg(&negative_id)], "line 2: '-2' is not a token id"),
        (vec![path_arg(&mixtral), "--text", path_arg(&text), "--ctx", "0"], "--ctx must be at least 1"),
    ];
    for (args, message) in cases {
        let mut all = vec!["imatrix"];
        all.extend(args);
        all.extend(["-o", path_arg(&out)]);
        let e = fails(&all);
        assert!(e.contains(message), "{all:?}: {e}");
    }
    // The output may not replace an input.
    let e = fails(&["imatrix", path_arg(&mixtral), "--text", path_arg(&text), "-o", path_arg(&text)]);
    assert!(e.contains("never writes over a file it reads"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 5, "nothing but the inputs: {left:?}");
}

/// A gpt-oss bf16 checkpoint's experts: to `MXFP4_MOE` they are quantized to MXFP4 and nothing
/// says otherwise; without `--type` (BF16) or with `--type F16` a warning says the GGUF holds
/// them unquantized and how to get MXFP4. A released MXFP4 checkpoint gets no such warning.
#[test]
fn gpt_oss_bf16_expert_warning_says_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let ft = fixtures().join("gpt-oss/finetune-bf16");
    let convert = |input: &Path, ty: &[&str]| {
        let _ = std::fs::remove_file(&out);
        let mut args = vec!["convert", path_arg(input), "-o", path_arg(&out), "-q"];
        args.extend(ty);
        let run = moeq(&args);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let e = convert(&ft, &["--type", "MXFP4_MOE"]);
    assert!(!e.contains("experts"), "{e}");
    let meta: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&out)])).unwrap();
    let experts: Vec<&Json> = meta["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().ends_with("_exps.weight"))
        .collect();
    assert!(!experts.is_empty() && experts.iter().all(|t| t["dtype"] == "MXFP4"), "{experts:?}");
    for (ty, shown) in [(&[][..], "BF16"), (&["--type", "F16"][..], "F16")] {
        let e = convert(&ft, ty);
        let warning = format!(
            "warning: the experts are bf16 in this checkpoint (gpt-oss is released with MXFP4 experts) and the GGUF \
             holds them as {shown}"
        );
        assert!(e.contains(&warning) && e.contains("--type MXFP4_MOE quantizes them to MXFP4"), "{ty:?}: {e}");
    }
    let e = convert(&fixtures().join("gpt-oss/hf-mxfp4"), &[]);
    assert!(!e.contains("experts"), "{e}");
}

/// Calibration that cannot describe the model: `--ctx 1` with a vocabulary that puts BOS first
/// in each chunk (every chunk the BOS alone) is refused for imatrix, `--optimize` and
/// `--rounding gptq` (exit 2, naming --ctx, nothing written); fewer than 64 tokens beyond BOS
/// get a warning naming the file and what the tokens are for; the default --ctx does not.
#[test]
fn calibration_refuses_bos_only_chunks_and_warns_on_few_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let llama = fixtures().join("llama/hf");
    let text = fixtures().join("imatrix/calib.txt");
    let (l, t, o) = (path_arg(&llama), path_arg(&text), path_arg(&out));
    let refused: [Vec<&str>; 3] = [
        vec!["imatrix", l, "--text", t, "--ctx", "1", "-o", o],
        vec!["convert", l, "-o", o, "--type", "Q4_0", "--optimize", "--calibration", t, "--ctx", "1"],
        vec!["convert", l, "-o", o, "--type", "Q4_0", "--rounding", "gptq", "--calibration", t, "--ctx", "1"],
    ];
    for args in refused {
        let e = fails(&args);
        assert!(e.contains("--ctx 1 leaves no calibration text") && e.contains("BOS alone"), "{args:?}: {e}");
        assert!(e.contains("calib.txt"), "{e}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    // Three chunks of 8 (21 tokens beyond BOS): written, with a warning.
    let stderr_of = |args: &[&str]| {
        let run = moeq(args);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let e = stderr_of(&["imatrix", l, "--text", t, "--ctx", "8", "--chunks", "3", "-o", o, "-q"]);
    let warning = "warning: ".to_string()
        + t
        + ": only 21 calibration tokens beyond each chunk's BOS (3 chunks) for the importance matrix";
    assert!(e.contains(&warning), "{e}");
    // Ids as given (no BOS put first): 48 tokens, for GPTQ.
    let ids = dir.path().join("ids.txt");
    let line = |from: u32| (from..from + 24).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    std::fs::write(&ids, format!("{}\n{}\n", line(10), line(40))).unwrap();
    let gguf = dir.path().join("gptq.gguf");
    let mut args = vec!["convert", l, "-o", path_arg(&gguf), "--type", "Q4_0", "--rounding", "gptq"];
    args.extend(["--calibration-tokens", path_arg(&ids), "-q"]);
    let e = stderr_of(&args);
    assert!(e.contains("only 48 calibration tokens (2 chunks) for GPTQ's Hessians"), "{e}");
    // The default --ctx (3 chunks of 512): no warning.
    let e = stderr_of(&["imatrix", l, "--text", t, "-o", o, "-q"]);
    assert!(!e.contains("calibration tokens"), "{e}");
}

/// `eval --text` of a GGUF without `--tokenizer`: the error says moeq reads text through the
/// model's Hugging Face tokenizer.json, which the GGUF does not include, and how to give it
/// (`--tokenizer DIR`) or ids instead (`--tokens`); with `--tokenizer` it runs.
#[test]
fn eval_gguf_text_says_how_to_give_the_tokenizer() {
    let gguf = golden("llama-bf16.gguf");
    let e = fails(&["eval", path_arg(&gguf), "--text", "Hello world"]);
    let expected = format!(
        "error: {}: moeq reads text through the model's Hugging Face tokenizer.json, which a GGUF file does not \
         include: pass --tokenizer PATH (the model's tokenizer.json or its folder, e.g. the checkpoint the GGUF was \
         converted from), or give token ids with --tokens ID,ID,…",
        gguf.display()
    );
    assert!(e.contains(&expected), "{e}");
    let llama = fixtures().join("llama/hf");
    let out = ok(&["eval", path_arg(&gguf), "--text", "Hello world", "--tokenizer", path_arg(&llama), "--top", "1"]);
    assert!(out.lines().count() >= 2, "{out}");
}

/// `eval --top 0` would print rows without candidates: refused naming --top (exit 2); 1 works.
#[test]
fn eval_refuses_top_zero() {
    let llama = fixtures().join("llama/hf");
    let e = fails(&["eval", path_arg(&llama), "--tokens", "1,2", "--top", "0"]);
    assert!(e.contains("invalid value '0' for '--top <TOP>': must be at least 1"), "{e}");
    let out = ok(&["eval", path_arg(&llama), "--tokens", "1,2", "--top", "1"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| l.split('→').nth(1).is_some_and(|c| !c.trim().is_empty())), "{out}");
}

/// Text as input to eval and verify, tokenized as imatrix tokenizes it.
#[test]
fn eval_and_verify_take_text() {
    // Llama's byte-level BPE (llama-bpe) starts with its BOS, 509.
    let out = ok(&["eval", path_arg(&fixtures().join("llama/hf")), "--text", "Hello world, hello", "--top", "1"]);
    let first: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&first[..2], ["0", "509"], "{out}");
    assert!(out.lines().count() > 3, "{out}");
    let text = fixtures().join("imatrix/calib.txt");
    let report = ok(&[
        "verify",
        path_arg(&fixtures().join("mixtral/hf")),
        path_arg(&golden("mixtral-bf16.gguf")),
        "--text",
        path_arg(&text),
        "--json",
    ]);
    let report: Json = serde_json::from_str(&report).unwrap();
    assert!(report["model"]["positions"].as_u64().unwrap() > 1000, "{report}");
}

/// verify --every-expert: each expert on every token; exact for a lossless build, small and
/// nonzero for Q8_0, large for Q4_0.
#[test]
fn verify_every_expert_checks_each_expert_on_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("gpt-oss/hf-bf16");
    let experts = |output: &Path| -> Vec<f64> {
        let out = ok(&["verify", path_arg(&src), path_arg(output), "--every-expert", "--json"]);
        let report: Json = serde_json::from_str(&out).unwrap();
        let list = report["experts"].as_array().unwrap();
        assert_eq!(list.len(), 8, "2 layers × 4 experts");
        let routed: u64 = list.iter().map(|e| e["routed"].as_u64().unwrap()).sum();
        assert_eq!(routed, 2 * 2 * 256, "top-2 over 256 reference tokens in 2 layers");
        list.iter().map(|e| e["rel_err"].as_f64().unwrap()).collect()
    };
    assert!(experts(&golden("gpt-oss-bf16.gguf")).iter().all(|&r| r == 0.0));
    let (q8, q4) = (dir.path().join("q8.gguf"), dir.path().join("q4.gguf"));
    for (out, ty) in [(&q8, "Q8_0"), (&q4, "Q4_0")] {
        moeq(&["convert", path_arg(&src), "-o", path_arg(out), "--type", ty, "-q"]);
    }
    let (e8, e4) = (experts(&q8), experts(&q4));
    assert!(e8.iter().all(|&r| r > 0.0 && r < 0.02), "{e8:?}");
    assert!(e4.iter().zip(&e8).all(|(a, b)| a > &(5.0 * b)), "{e4:?} vs {e8:?}");
}
#[path = "cli/qwen.rs"]
mod qwen;

#[path = "cli/deepseek.rs"]
mod deepseek;

#[path = "cli/glm.rs"]
mod glm;

#[path = "cli/glm_lite.rs"]
mod glm_lite;

#[path = "cli/minimax.rs"]
mod minimax;
/// `--optimize` / `--target-size` / `--target-bpw`: types chosen to a byte budget, the
/// decision log in the report and in the file, and the refusals.
#[test]
fn size_budget_chooses_types_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.gguf");
    wide_model(&wide);
    let w = path_arg(&wide);
    // The budget of --type T --optimize is the size of llama-quantize's T file.
    let mix = dir.path().join("mix.gguf");
    ok(&["convert", w, "-o", path_arg(&mix), "--type", "Q4_K_M", "-q"]);
    let mix_len = std::fs::metadata(&mix).unwrap().len();
    let plan = plan_json(&[w, "--type", "Q4_K_M", "--optimize"]);
    let log = &plan["optimize"];
    assert_eq!(log["budget_bytes"].as_u64(), Some(mix_len), "{log}");
    let decided = log["tensors"].as_array().unwrap();
    // Every 2-D tensor is chosen here (the norms are not quantized); each among its candidates.
    assert_eq!(decided.len(), 9);
    for t in decided {
        let ty = t["type"].as_str().unwrap();
        let candidates = t["candidates"].as_array().unwrap();
        assert!(candidates.iter().any(|c| c["type"] == ty), "{t}");
        assert!(t["why"].as_str().unwrap().starts_with("size budget:"), "{t}");
        let row = plan["tensors"].as_array().unwrap().iter().find(|r| r["name"] == t["name"]).unwrap();
        assert_eq!(row["type"], ty);
        assert_eq!(row["why"].as_array().unwrap().last().unwrap()["rule"], "optimize");
    }
    // The real run writes a file of the size the log says, within the budget, whose types and
    // moeq.optimize.* keys are the log's.
    let opt = dir.path().join("opt.gguf");
    let report = dir.path().join("opt.json");
    ok(&["convert", w, "-o", path_arg(&opt), "--type", "Q4_K_M", "--optimize", "--report", path_arg(&report), "-q"]);
    let written = std::fs::metadata(&opt).unwrap().len();
    assert_eq!(Some(written), log["file_bytes"].as_u64());
    assert!(written <= mix_len);
    let saved: Json = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(saved["optimize"]["tensors"], log["tensors"]);
    let inspected: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&opt)])).unwrap();
    let meta = &inspected["metadata"];
    assert!(meta["moeq.optimize.method"]["value"].as_str().unwrap().contains("knapsack"));
    assert_eq!(meta["moeq.optimize.budget_bytes"]["value"].as_u64(), Some(mix_len));
    assert_eq!(meta["general.file_type"]["value"], 15);
    let shown = inspected["optimize_decisions"].as_array().unwrap();
    assert_eq!(shown.len(), decided.len());
    let types: std::collections::BTreeMap<&str, &str> = inspected["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["dtype"].as_str().unwrap()))
        .collect();
    for (d, s) in decided.iter().zip(shown) {
        assert_eq!(d["name"], s["tensor"]);
        assert_eq!(d["type"], s["type"]);
        assert_eq!(types[d["name"].as_str().unwrap()], d["type"].as_str().unwrap());
    }
    let text = ok(&["inspect", path_arg(&opt)]);
    assert!(text.contains("size-budget decisions"), "{text}");
    // The same plan is chosen again (measurement and choice are deterministic), and the
    // written tensors are what a plain conversion with those types would write.
    let again = plan_json(&[w, "--type", "Q4_K_M", "--optimize"]);
    assert_eq!(again["optimize"]["tensors"], log["tensors"]);

    // --target-size: within the size, the summed error never grows with the size.
    let min = plan_json(&[w, "--target-size", "10M"])["optimize"]["min_bytes"].as_u64().unwrap();
    let mut last = f64::INFINITY;
    for size in [min, min + 20_000, min + 60_000, min + 200_000, 10_000_000] {
        let s = size.to_string();
        let plan = plan_json(&[w, "--target-size", &s]);
        let log = &plan["optimize"];
        assert!(log["file_bytes"].as_u64().unwrap() <= size, "{log}");
        let err = log["total_error"].as_f64().unwrap();
        assert!(err <= last, "size {size}: {err} after {last}");
        last = err;
    }
    // With room for everything, every tensor gets the 16-bit type closest to its f32 values.
    let roomy = plan_json(&[w, "--target-size", "10M"]);
    for t in roomy["optimize"]["tensors"].as_array().unwrap() {
        assert!(t["type"] == "F16" || t["type"] == "BF16", "{t}");
    }
    let bpw = plan_json(&[w, "--target-bpw", "5"]);
    let bytes = bpw["totals"]["bytes"].as_u64().unwrap();
    assert!(bytes as f64 * 8.0 / bpw["totals"]["elements"].as_f64().unwrap() <= 5.0, "{}", bpw["totals"]);
    // --candidate-types restricts the choice.
    let only = plan_json(&[w, "--target-bpw", "6", "--candidate-types", "q4_k,q6_k"]);
    for t in only["optimize"]["tensors"].as_array().unwrap() {
        assert!(t["type"] == "Q4_K" || t["type"] == "Q6_K", "{t}");
    }
    // A type that needs an importance matrix is named when there is none (it was left out
    // without a word).
    let out =
        moeq(&["convert", "--dry-run", "--json", w, "--target-bpw", "6", "--candidate-types", "iq2_xxs,q4_k,q6_k"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: --candidate-types: IQ2_XXS needs an importance matrix (--imatrix)"), "{stderr}");
    let no_imatrix: Json = serde_json::from_slice(&out.stdout).unwrap();
    for t in no_imatrix["optimize"]["tensors"].as_array().unwrap() {
        assert!(t["type"] == "Q4_K" || t["type"] == "Q6_K", "{t}");
    }

    // Refusals: exit 2, a clear message, nothing written.
    let out = dir.path().join("never.gguf");
    let o = path_arg(&out);
    let too_small = (min - 1).to_string();
    let err = fails(&["convert", w, "-o", o, "--target-size", &too_small]);
    assert!(err.contains("smaller than the smallest file") && err.contains(&format!("{min} bytes")), "{err}");
    // Far too small: refused before any measuring, from the tensors' sizes alone.
    let err = fails(&["convert", w, "-o", o, "--target-size", "1K"]);
    assert!(err.contains("smaller than the smallest file") && err.contains("before the header"), "{err}");
    let err = fails(&["convert", w, "-o", o, "--optimize"]);
    assert!(err.contains("--optimize goes with --type"), "{err}");
    let err = fails(&["convert", w, "-o", o, "--type", "BF16", "--optimize"]);
    assert!(err.contains("need a quantized --type"), "{err}");
    let err = fails(&["convert", w, "-o", o, "--type", "Q4_K_M", "--candidate-types", "q4_k"]);
    assert!(err.contains("--candidate-types goes with"), "{err}");
    let err = fails(&["convert", w, "-o", o, "--target-size", "1M", "--candidate-types", "q8_1"]);
    assert!(err.contains("q8_1"), "{err}");
    let err = fails(&["convert", w, "-o", o, "--target-bpw", "0"]);
    assert!(err.contains("--target-bpw"), "{err}");
    // A huge value is shown short (it was printed with its 309 digits).
    let err = fails(&["convert", w, "-o", o, "--target-bpw", "1e308"]);
    assert!(err.contains("--target-bpw 1e308: give bits per weight"), "{err}");
    // A bad rule of --tensor-type-file is named with the file and line.
    let rules = dir.path().join("rules.txt");
    std::fs::write(&rules, "attn_q=q8_0\n\n# a comment\n").unwrap();
    let err = fails(&["convert", w, "-o", o, "--type", "Q4_0", "--tensor-type-file", path_arg(&rules)]);
    assert!(err.contains("rules.txt, line 3: --tensor-type '#': expected PATTERN=TYPE"), "{err}");
    std::fs::remove_file(&rules).unwrap();
    let err = fails(&["convert", w, "-o", o, "--target-size", "200K", "--candidate-types", "q4_0"]);
    assert!(err.contains("fit no candidate type of --candidate-types") || err.contains("smallest"), "{err}");
    // Types that need an importance matrix, without one: the reason is named.
    let err = fails(&["convert", w, "-o", o, "--target-size", "1M", "--candidate-types", "iq2_xxs,iq1_s"]);
    assert!(err.contains("need an importance matrix") && err.contains("no --imatrix was given"), "{err}");
    // Token files are used as given: --ctx does not go with them.
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, "1,2,3\n").unwrap();
    let err =
        fails(&["convert", w, "-o", o, "--target-size", "1M", "--calibration-tokens", path_arg(&ids), "--ctx", "8"]);
    assert!(err.contains("--ctx") && err.contains("--calibration-tokens"), "{err}");
    std::fs::remove_file(&ids).unwrap();
    assert!(!out.exists());
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

/// With an importance matrix the error is importance-weighted, and stacked experts get one
/// type.
#[test]
fn size_budget_uses_the_importance_matrix() {
    let source = golden("mixtral-bf16.gguf");
    let imatrix = fixtures().join("imatrix/mixtral-llama.imatrix.gguf");
    let plan = plan_json(&[path_arg(&source), "--target-bpw", "6", "--imatrix", path_arg(&imatrix)]);
    let log = &plan["optimize"];
    assert!(log["error_measure"].as_str().unwrap().contains("imatrix"), "{log}");
    let experts =
        log["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.ffn_down_exps.weight").unwrap();
    assert!(experts["type"].is_string());
    let plain = plan_json(&[path_arg(&source), "--target-bpw", "6"]);
    assert!(plain["optimize"]["error_measure"].as_str().unwrap().starts_with("sum of"));
    let bits = plan["totals"]["bytes"].as_f64().unwrap() * 8.0 / plan["totals"]["elements"].as_f64().unwrap();
    assert!(bits <= 6.0, "{bits}");
}

/// `--calibration-tokens`: every chosen tensor is probed with moeq's forward (quantized alone
/// to its probe type), its measured next-token KL scales its candidates' relative errors, and
/// the log, the report and the file carry the KL per tensor. Without calibration input the
/// choice is the uncalibrated one.
#[test]
fn size_budget_keeps_released_mxfp4_experts() {
    // gpt-oss's released MXFP4 experts are a copy of the source in every file type; the
    // optimizer chooses only the other tensors (it once requantized them under MXFP4_MOE).
    let src = fixtures().join("gpt-oss/hf-mxfp4");
    let s = path_arg(&src);
    for args in [&["--type", "MXFP4_MOE", "--optimize"][..], &["--target-bpw", "6"][..]] {
        let mut all = vec![s];
        all.extend_from_slice(args);
        let plan = plan_json(&all);
        let experts: Vec<&Json> = plan["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"].as_str().unwrap().ends_with("_exps.weight"))
            .collect();
        assert_eq!(experts.len(), 6, "{args:?}");
        for t in experts {
            assert_eq!((&t["source_type"], &t["type"]), (&Json::from("MXFP4"), &Json::from("MXFP4")), "{args:?} {t}");
        }
        let decided = plan["optimize"]["tensors"].as_array().unwrap();
        assert!(!decided.is_empty(), "{args:?}");
        assert!(decided.iter().all(|t| !t["name"].as_str().unwrap().contains("_exps.")), "{args:?} {decided:?}");
    }
}

#[test]
fn size_budget_calibrates_with_next_token_kl() {
    let dir = tempfile::tempdir().unwrap();
    let source = golden("mixtral-bf16.gguf");
    let s = path_arg(&source);
    // Two chunks of token ids (the fixture has 512 tokens).
    let ids = dir.path().join("ids.txt");
    let chunk = |seed: u32| (0..24).map(|i| ((i * 37 + seed * 101) % 512).to_string()).collect::<Vec<_>>().join(",");
    std::fs::write(&ids, format!("{}\n{}\n", chunk(1), chunk(2))).unwrap();
    let i = path_arg(&ids);
    let plan = plan_json(&[s, "--target-bpw", "5", "--calibration-tokens", i]);
    let log = &plan["optimize"];
    assert!(log["method"].as_str().unwrap().starts_with("kl-calibrated"), "{}", log["method"]);
    assert!(log["error_measure"].as_str().unwrap().starts_with("predicted next-token KL"), "{}", log["error_measure"]);
    assert_eq!(log["calibration"]["chunks"], 2);
    assert_eq!(log["calibration"]["tokens"], 48);
    let bits = plan["totals"]["bytes"].as_f64().unwrap() * 8.0 / plan["totals"]["elements"].as_f64().unwrap();
    assert!(bits <= 5.0, "{bits}");
    // The uncalibrated choice: no KL anywhere, the errors relative errors.
    let plain = plan_json(&[s, "--target-bpw", "5"]);
    let plain_log = &plain["optimize"];
    assert!(plain_log["method"].as_str().unwrap().starts_with("multiple-choice knapsack"), "{plain_log}");
    assert!(plain_log["calibration"].is_null());
    let (tensors, plain_tensors) = (log["tensors"].as_array().unwrap(), plain_log["tensors"].as_array().unwrap());
    assert_eq!(tensors.len(), plain_tensors.len());
    let mut measured = 0;
    for (t, p) in tensors.iter().zip(plain_tensors) {
        assert_eq!(t["name"], p["name"]);
        assert!(p["kl"].is_null(), "{p}");
        let kl = &t["kl"];
        let probe = kl["probe"].as_str().unwrap();
        assert!(["Q4_K", "IQ4_NL", "BF16"].contains(&probe), "{t}");
        let scale = kl["scale"].as_f64().unwrap();
        assert!(scale > 0.0 && scale.is_finite(), "{t}");
        if kl["floored"] == false {
            measured += 1;
            let (k, e) = (kl["kl"].as_f64().unwrap(), kl["probe_error"].as_f64().unwrap());
            assert!(k > 0.0 && e > 0.0, "{t}");
            assert!((scale - k / e).abs() <= 1e-12 * scale, "{t}");
        }
        assert!(t["why"].as_str().unwrap().contains(&format!("probe {probe}: KL")), "{t}");
        // Each candidate's error is its relative error times the tensor's scale.
        for (c, pc) in t["candidates"].as_array().unwrap().iter().zip(p["candidates"].as_array().unwrap()) {
            assert_eq!(c["type"], pc["type"]);
            match (c["error"].as_f64(), pc["error"].as_f64()) {
                (Some(a), Some(b)) => assert!((a - scale * b).abs() <= 1e-9 * a.abs().max(1e-300), "{t}"),
                (a, b) => assert_eq!(a, b, "{t}"),
            }
        }
    }
    assert!(measured * 2 > tensors.len(), "most tensors change the model's predictions measurably: {log}");
    // The scales differ between tensors (otherwise the calibration would change nothing).
    let scales: Vec<f64> = tensors.iter().map(|t| t["kl"]["scale"].as_f64().unwrap()).collect();
    let (lo, hi) = (scales.iter().copied().fold(f64::INFINITY, f64::min), scales.iter().copied().fold(0.0, f64::max));
    assert!(hi > 2.0 * lo, "{scales:?}");
    // Deterministic.
    let again = plan_json(&[s, "--target-bpw", "5", "--calibration-tokens", i]);
    assert_eq!(again["optimize"]["tensors"], log["tensors"]);
    // --chunks takes the first chunks.
    let one = plan_json(&[s, "--target-bpw", "5", "--calibration-tokens", i, "--chunks", "1"]);
    assert_eq!(one["optimize"]["calibration"]["tokens"], 24);

    // The real run: the file within the budget, the KL per tensor in its metadata and the report.
    let out = dir.path().join("kl.gguf");
    let report = dir.path().join("kl.json");
    ok(&[
        "convert",
        s,
        "-o",
        path_arg(&out),
        "--target-bpw",
        "5",
        "--calibration-tokens",
        i,
        "--report",
        path_arg(&report),
        "-q",
    ]);
    let saved: Json = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(saved["optimize"]["tensors"], log["tensors"]);
    assert_eq!(Some(std::fs::metadata(&out).unwrap().len()), log["file_bytes"].as_u64());
    let meta = serde_json::from_str::<Json>(&ok(&["inspect", "--json", path_arg(&out)])).unwrap()["metadata"].clone();
    assert!(meta["moeq.optimize.method"]["value"].as_str().unwrap().starts_with("kl-calibrated"));
    let kls = meta["moeq.optimize.kl"]["value"].as_array().unwrap();
    assert_eq!(kls.len(), tensors.len());
    for (k, t) in kls.iter().zip(tensors) {
        let want = t["kl"]["kl"].as_f64().map_or(-1.0, |v| v as f32 as f64);
        assert_eq!(k.as_f64().unwrap() as f32, want as f32, "{t}");
    }
    assert_eq!(meta["moeq.optimize.probe_types"]["value"].as_array().unwrap().len(), tensors.len());
    let plain_out = dir.path().join("plain.gguf");
    ok(&["convert", s, "-o", path_arg(&plain_out), "--target-bpw", "5", "-q"]);
    let plain_meta =
        serde_json::from_str::<Json>(&ok(&["inspect", "--json", path_arg(&plain_out)])).unwrap()["metadata"].clone();
    assert!(plain_meta["moeq.optimize.kl"].is_null() && plain_meta["moeq.optimize.calibration"].is_null());

    // Bad calibration input: exit 2 naming the file and the problem, nothing written.
    let never = dir.path().join("never.gguf");
    let n = path_arg(&never);
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "1,2,3\n4,5,99999\n").unwrap();
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "1,2,x\n").unwrap();
    let missing = dir.path().join("missing.txt");
    let text = fixtures().join("imatrix/calib.txt");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--target-bpw", "5", "--calibration-tokens", path_arg(&big)],
            format!("{}: chunk 2 holds token 99999", big.display()),
        ),
        (
            vec!["--target-bpw", "5", "--calibration-tokens", path_arg(&garbage)],
            format!("{}, line 1", garbage.display()),
        ),
        (vec!["--target-bpw", "5", "--calibration-tokens", path_arg(&missing)], missing.display().to_string()),
        (
            vec!["--target-bpw", "5", "--calibration", path_arg(&text)],
            "pass --tokenizer PATH (the model's tokenizer.json or its folder, e.g. the checkpoint the GGUF was \
             converted from), or give token ids with --calibration-tokens FILE"
                .into(),
        ),
        (vec!["--type", "Q4_K_M", "--calibration-tokens", i], "go with --optimize".into()),
        (vec!["--target-bpw", "5", "--chunks", "2"], "--chunks goes with --calibration".into()),
        (vec!["--target-bpw", "5", "--calibration-tokens", i, "--chunks", "0"], "--chunks must be at least 1".into()),
    ];
    for (args, message) in cases {
        let mut all = vec!["convert", s, "-o", n];
        all.extend(args);
        let err = fails(&all);
        assert!(err.contains(&message), "{all:?}: {err}");
    }
    assert!(!never.exists());
}

/// `--rounding gptq`: the same tensors, types and size as ggml's rounding (but for the
/// `moeq.rounding` key), other bytes, recorded in the GGUF and the report, deterministic; the
/// default stays ggml's.
#[test]
fn convert_rounds_with_gptq() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let text = fixtures().join("imatrix/calib.txt");
    let (plain, gptq, again, report) = (
        dir.path().join("plain.gguf"),
        dir.path().join("gptq.gguf"),
        dir.path().join("again.gguf"),
        dir.path().join("report.json"),
    );
    ok(&["convert", path_arg(&llama), "-o", path_arg(&plain), "--type", "Q4_0", "-q"]);
    for (out, rep) in [(&gptq, Some(&report)), (&again, None)] {
        let mut args = vec!["convert", path_arg(&llama), "-o", path_arg(out), "--type", "Q4_0", "--rounding", "gptq"];
        args.extend(["--calibration", path_arg(&text), "--ctx", "64", "--chunks", "6", "-q"]);
        if let Some(r) = rep {
            args.extend(["--report", path_arg(r)]);
        }
        ok(&args);
    }
    let (a, b) = (std::fs::read(&gptq).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(a, b, "GPTQ rounding is deterministic");
    // Without -q, stderr says what was rounded.
    let third = dir.path().join("third.gguf");
    let mut args = vec!["convert", path_arg(&llama), "-o", path_arg(&third), "--type", "Q4_0", "--rounding", "gptq"];
    args.extend(["--calibration", path_arg(&text), "--ctx", "64", "--chunks", "6"]);
    let run = moeq(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("GPTQ: ") && stderr.contains("rounded on 384 calibration tokens (6 chunks)"), "{stderr}");
    let inspect = |p: &Path| -> Json { serde_json::from_str(&ok(&["inspect", "--json", path_arg(p)])).unwrap() };
    let (ji, jp) = (inspect(&gptq), inspect(&plain));
    assert_eq!(ji["metadata"]["moeq.rounding"]["value"], "gptq", "{}", ji["metadata"]);
    assert!(jp["metadata"].get("moeq.rounding").is_none());
    let shapes = |j: &Json| -> Vec<(String, String, u64)> {
        j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (t["name"].as_str().unwrap().into(), t["dtype"].as_str().unwrap().into(), t["bytes"].as_u64().unwrap())
            })
            .collect()
    };
    assert_eq!(shapes(&ji), shapes(&jp), "same tensors, types and sizes");
    let plain_bytes = std::fs::read(&plain).unwrap();
    assert!(a.len() >= plain_bytes.len() && a.len() <= plain_bytes.len() + 64, "{} vs {}", a.len(), plain_bytes.len());
    let rep: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let r = &rep["rounding"];
    assert_eq!(r["method"], "gptq");
    assert_eq!(r["calibration"]["tokens"], 6 * 64);
    let rounded: Vec<&str> = r["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for name in ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.ffn_down.weight", "token_embd.weight"] {
        assert!(rounded.contains(&name), "{name} not rounded with GPTQ: {rounded:?}");
    }
    let k = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "blk.0.attn_k.weight").unwrap();
    assert_eq!(k["hessian"], "blk.0.attn_q.weight", "k shares q's input");
    // The file runs, and stays close to the source on next-token distributions.
    let out =
        ok(&["eval", path_arg(&gptq), "--text", "Hello world, hello", "--top", "1", "--tokenizer", path_arg(&llama)]);
    assert!(out.lines().count() > 3, "{out}");
}

/// `--type T --optimize --rounding gptq --calibration …`: the KL-calibrated mix, then GPTQ on
/// the chosen types; the file (with both `moeq.optimize.*` and `moeq.rounding`) is no larger
/// than llama-quantize's T (moeq's plain build of T is byte-identical to it), the report has
/// both sections, and the calibration tokens serve both.
#[test]
fn size_budget_and_gptq_combine() {
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama/hf");
    let text = fixtures().join("imatrix/calib.txt");
    let (plain, both, report) =
        (dir.path().join("plain.gguf"), dir.path().join("both.gguf"), dir.path().join("report.json"));
    ok(&["convert", path_arg(&llama), "-o", path_arg(&plain), "--type", "Q4_K_M", "-q"]);
    ok(&[
        "convert",
        path_arg(&llama),
        "-o",
        path_arg(&both),
        "--type",
        "Q4_K_M",
        "--optimize",
        "--rounding",
        "gptq",
        "--calibration",
        path_arg(&text),
        "--ctx",
        "64",
        "--chunks",
        "3",
        "--report",
        path_arg(&report),
        "-q",
    ]);
    let (p, b) = (std::fs::metadata(&plain).unwrap().len(), std::fs::metadata(&both).unwrap().len());
    assert!(b <= p, "the combined build ({b} bytes) is larger than llama-quantize's Q4_K_M ({p} bytes)");
    let rep: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(rep["optimize"]["method"].as_str().unwrap().starts_with("kl-calibrated"), "{}", rep["optimize"]);
    assert_eq!(rep["optimize"]["calibration"]["tokens"], 3 * 64);
    assert!(rep["optimize"]["budget_bytes"].as_u64().unwrap() <= p, "{}", rep["optimize"]["budget_bytes"]);
    assert_eq!(rep["rounding"]["method"], "gptq");
    assert_eq!(rep["rounding"]["calibration"]["tokens"], 3 * 64);
    assert!(!rep["rounding"]["tensors"].as_array().unwrap().is_empty(), "{}", rep["rounding"]);
    let meta = serde_json::from_str::<Json>(&ok(&["inspect", "--json", path_arg(&both)])).unwrap()["metadata"].clone();
    assert_eq!(meta["moeq.rounding"]["value"], "gptq");
    assert!(meta["moeq.optimize.method"]["value"].as_str().unwrap().starts_with("kl-calibrated"));
}

/// `moeq verify SOURCE OUTPUT --text TEXT --json`: (next-token KL mean, each MoE block's relative error).
fn verify_on_text(source: &Path, output: &Path, text: &Path) -> (f64, Vec<f64>) {
    let o = moeq(&["verify", path_arg(source), path_arg(output), "--text", path_arg(text), "--json"]);
    let r: Json =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let blocks = r["blocks"].as_array().unwrap().iter().map(|b| b["rel_err"].as_f64().unwrap()).collect();
    (r["model"]["kl_mean"].as_f64().unwrap(), blocks)
}

/// `--rounding gptq` on a MoE model: every stacked expert tensor is rounded expert by expert
/// with the Hessian of the tokens routed to it (up shares gate's), the file keeps ggml's
/// tensors, types and sizes and runs, and each MoE block's output error on the calibration
/// tokens is below ggml's rounding's; experts with too few routed tokens keep ggml's bytes.
#[test]
fn gptq_rounds_moe_experts_per_expert() {
    let dir = tempfile::tempdir().unwrap();
    let mixtral = fixtures().join("mixtral/hf");
    let calib = fixtures().join("rounding/calib.txt");
    let (plain, gptq, few, report, few_report) = (
        dir.path().join("plain.gguf"),
        dir.path().join("gptq.gguf"),
        dir.path().join("few.gguf"),
        dir.path().join("report.json"),
        dir.path().join("few.json"),
    );
    ok(&["convert", path_arg(&mixtral), "-o", path_arg(&plain), "--type", "Q4_0", "-q"]);
    for (out, rep, ctx, chunks) in [(&gptq, &report, "128", "8"), (&few, &few_report, "8", "1")] {
        let mut args = vec!["convert", path_arg(&mixtral), "-o", path_arg(out), "--type", "Q4_0", "--rounding", "gptq"];
        args.extend(["--calibration", path_arg(&calib), "--ctx", ctx, "--chunks", chunks, "-q"]);
        args.extend(["--report", path_arg(rep)]);
        ok(&args);
    }
    let inspect = |p: &Path| -> Json { serde_json::from_str(&ok(&["inspect", "--json", path_arg(p)])).unwrap() };
    let (jg, jp) = (inspect(&gptq), inspect(&plain));
    assert_eq!(jg["metadata"]["moeq.rounding"]["value"], "gptq");
    let shapes = |j: &Json| -> Vec<(String, String, u64)> {
        let t = j["tensors"].as_array().unwrap();
        t.iter()
            .map(|t| {
                (t["name"].as_str().unwrap().into(), t["dtype"].as_str().unwrap().into(), t["bytes"].as_u64().unwrap())
            })
            .collect()
    };
    assert_eq!(shapes(&jg), shapes(&jp), "same tensors, types and sizes");
    let rep: Json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let experts = rep["rounding"]["experts"].as_array().unwrap();
    let names: Vec<&str> = experts.iter().map(|e| e["name"].as_str().unwrap()).collect();
    for l in 0..2 {
        for t in ["gate", "up", "down"] {
            assert!(names.contains(&format!("blk.{l}.ffn_{t}_exps.weight").as_str()), "{names:?}");
        }
    }
    for e in experts {
        let tokens: Vec<u64> = e["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!(tokens.len(), 4, "{e}");
        assert_eq!(tokens.iter().sum::<u64>(), 8 * 128 * 2, "every token is routed to its top-2 experts: {e}");
        assert!(e["ggml_rounded_experts"].as_array().unwrap().is_empty(), "{e}");
        if e["name"].as_str().unwrap().contains("_up_") {
            assert!(e["hessian"].as_str().unwrap().contains("_gate_exps"), "up shares gate's input: {e}");
        }
    }
    let (bg, bp, bf) = (tensor_bytes(&gptq), tensor_bytes(&plain), tensor_bytes(&few));
    for (name, bytes) in &bp {
        if name.contains("_exps") {
            assert_ne!(&bg[name], bytes, "{name}: GPTQ changed nothing");
            // 8 tokens × top-2 over 4 experts: no expert reaches the minimum, all keep ggml's bytes.
            assert_eq!(&bf[name], bytes, "{name}: an expert without enough tokens keeps ggml's rounding");
        }
    }
    let few_rep: Json = serde_json::from_slice(&std::fs::read(&few_report).unwrap()).unwrap();
    for e in few_rep["rounding"]["experts"].as_array().unwrap() {
        assert_eq!(e["ggml_rounded_experts"].as_array().unwrap().len(), 4, "{e}");
    }
    // Each MoE block's output error on the calibration tokens is below ggml's rounding's.
    let (_, err_plain) = verify_on_text(&mixtral, &plain, &calib);
    let (_, err_gptq) = verify_on_text(&mixtral, &gptq, &calib);
    assert_eq!(err_plain.len(), 2);
    for (l, (g, p)) in err_gptq.iter().zip(&err_plain).enumerate() {
        assert!(g < &(0.95 * p), "layer {l}: MoE block error {g:.4} with GPTQ, {p:.4} with ggml's rounding");
    }
    let out =
        ok(&["eval", path_arg(&gptq), "--text", "Hello world, hello", "--top", "1", "--tokenizer", path_arg(&mixtral)]);
    assert!(out.lines().count() > 3, "{out}");
}

/// `__metadata__` of a safetensors file.
fn safetensors_metadata(path: &Path) -> Json {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].clone()
}

/// The gpt-oss bf16 fine-tune back to MXFP4 with GPTQ, as GGUF `MXFP4_MOE` and as `--format hf`:
/// next-token KL against the bf16 source on text the calibration did not see at least 20 %
/// below round-to-nearest's (ggml's quantizer for the GGUF, OpenAI's for hf) and every MoE
/// block's error lower, in the same tensors and bytes per weight; only the experts change.
#[test]
fn gptq_mxfp4_lowers_kl_on_the_gpt_oss_finetune() {
    let dir = tempfile::tempdir().unwrap();
    let ft = fixtures().join("gpt-oss/finetune-bf16");
    let (calib, eval) = (fixtures().join("rounding/calib.txt"), fixtures().join("rounding/eval.txt"));
    let gptq_args = ["--rounding", "gptq", "--calibration", path_arg(&calib), "--ctx", "128", "--chunks", "16", "-q"];
    let (plain, gptq) = (dir.path().join("plain.gguf"), dir.path().join("gptq.gguf"));
    ok(&["convert", path_arg(&ft), "-o", path_arg(&plain), "--type", "MXFP4_MOE", "-q"]);
    let mut args = vec!["convert", path_arg(&ft), "-o", path_arg(&gptq), "--type", "MXFP4_MOE"];
    args.extend(gptq_args);
    ok(&args);
    let (hp, hg) = (dir.path().join("hf-plain"), dir.path().join("hf-gptq"));
    ok(&["convert", path_arg(&ft), "-o", path_arg(&hp), "--format", "hf", "-q"]);
    let mut args = vec!["convert", path_arg(&ft), "-o", path_arg(&hg), "--format", "hf"];
    args.extend(gptq_args);
    ok(&args);

    for (what, p, g) in [("GGUF MXFP4_MOE", &plain, &gptq), ("--format hf", &hp, &hg)] {
        let (kl_p, err_p) = verify_on_text(&ft, p, &eval);
        let (kl_g, err_g) = verify_on_text(&ft, g, &eval);
        eprintln!("{what}: KL {kl_p:.4e} → {kl_g:.4e}, MoE blocks {err_p:?} → {err_g:?}");
        assert!(kl_g < 0.8 * kl_p, "{what}: KL {kl_g:.4e} with GPTQ, {kl_p:.4e} with round-to-nearest");
        for (l, (g, p)) in err_g.iter().zip(&err_p).enumerate() {
            assert!(g < p, "{what} layer {l}: MoE block error {g:.4} with GPTQ, {p:.4} with round-to-nearest");
        }
    }
    // GGUF: the same tensors and sizes; the experts MXFP4 and changed.
    let (bg, bp) = (tensor_bytes(&gptq), tensor_bytes(&plain));
    assert_eq!(bg.keys().collect::<Vec<_>>(), bp.keys().collect::<Vec<_>>());
    for (name, bytes) in &bp {
        assert_eq!(bg[name].len(), bytes.len(), "{name}");
        if name.contains("_exps.weight") {
            assert_ne!(&bg[name], bytes, "{name}");
        }
    }
    let meta: Json = serde_json::from_str(&ok(&["inspect", "--json", path_arg(&gptq)])).unwrap();
    assert_eq!(meta["metadata"]["moeq.rounding"]["value"], "gptq");
    let mxfp4 = meta["tensors"].as_array().unwrap().iter().filter(|t| t["dtype"] == "MXFP4").count();
    assert_eq!(mxfp4, 6, "{}", meta["tensors"]);
    // hf: OpenAI's layout, the same shapes; everything but the experts as without --rounding.
    let (tg, tp) = (folder_tensors(&hg), folder_tensors(&hp));
    assert_eq!(tg.keys().collect::<Vec<_>>(), tp.keys().collect::<Vec<_>>());
    for (name, (dtype, shape, bytes)) in &tp {
        let (gd, gs, gb) = &tg[name];
        assert_eq!((gd, gs), (dtype, shape), "{name}");
        if name.ends_with("_blocks") || name.ends_with("_scales") {
            assert_ne!(gb, bytes, "{name}");
        } else {
            assert_eq!(gb, bytes, "{name}");
        }
    }
    assert_eq!(safetensors_metadata(&hg.join("model.safetensors"))["moeq.rounding"], "gptq");
    assert!(safetensors_metadata(&hp.join("model.safetensors")).get("moeq.rounding").is_none());
    assert_eq!(config_of(&hg), config_of(&hp));
}

/// `--rounding gptq` where no tensor can be rounded with GPTQ: a released MXFP4 gpt-oss to
/// `--format hf` (every expert copied as released) and a GGUF to `--type Q8_0` with every tensor
/// set to F16 by `--tensor-type` (nothing quantized). A warning says so and why; the output is the one without `--rounding` and does
/// not record `moeq.rounding` (`convert_rounds_with_gptq` and
/// `gptq_mxfp4_lowers_kl_on_the_gpt_oss_finetune` check the key where something is rounded).
#[test]
fn convert_gptq_with_nothing_to_round_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures().join("imatrix/calib.txt");
    let run = |args: &[&str]| {
        let run = moeq(args);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let mxfp4 = fixtures().join("gpt-oss/hf-mxfp4");
    let (hg, hp) = (dir.path().join("gptq"), dir.path().join("plain"));
    let mut args = vec!["convert", path_arg(&mxfp4), "-o", path_arg(&hg), "--format", "hf", "--rounding", "gptq"];
    args.extend(["--calibration", path_arg(&text), "-q"]);
    let e = run(&args);
    let warning = "warning: --rounding gptq found nothing to round in ".to_string()
        + path_arg(&mxfp4)
        + " (4 tensor(s): released MXFP4 experts, copied as stored)";
    assert!(e.contains(&warning) && e.contains("moeq.rounding is not recorded"), "{e}");
    run(&["convert", path_arg(&mxfp4), "-o", path_arg(&hp), "--format", "hf", "-q"]);
    assert!(safetensors_metadata(&hg.join("model.safetensors")).get("moeq.rounding").is_none());
    assert_eq!(
        std::fs::read(hg.join("model.safetensors")).unwrap(),
        std::fs::read(hp.join("model.safetensors")).unwrap()
    );
    let (gguf, llama) = (golden("llama-bf16.gguf"), fixtures().join("llama/hf"));
    let (gg, gp) = (dir.path().join("gptq.gguf"), dir.path().join("plain.gguf"));
    let f16 = ["--type", "Q8_0", "--tensor-type", ".=f16", "-q"];
    let mut args = vec!["convert", path_arg(&gguf), "-o", path_arg(&gg), "--rounding", "gptq"];
    args.extend(["--calibration", path_arg(&text), "--tokenizer", path_arg(&llama)]);
    args.extend(f16);
    let e = run(&args);
    assert!(
        e.contains("found nothing to round") && e.contains("(no tensor is quantized to a type GPTQ rounds)"),
        "{e}"
    );
    let mut args = vec!["convert", path_arg(&gguf), "-o", path_arg(&gp)];
    args.extend(f16);
    run(&args);
    assert_eq!(std::fs::read(&gg).unwrap(), std::fs::read(&gp).unwrap(), "no moeq.rounding, same bytes");
}

/// `--rounding gptq` without calibration input, calibration options without it, GGUF output
/// without a quantized `--type`, and MLX output are refused (exit 2, nothing written), naming
/// `--rounding gptq` and what it needs.
#[test]
fn convert_refuses_gptq_without_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let llama = fixtures().join("llama/hf");
    let text = fixtures().join("imatrix/calib.txt");
    let base = ["convert", path_arg(&llama), "-o", path_arg(&out)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--type", "Q4_0", "--rounding", "gptq"], "--rounding gptq needs calibration input"),
        (vec!["--type", "Q4_0", "--calibration", path_arg(&text)], "or --rounding gptq"),
        (
            vec!["--rounding", "gptq", "--calibration", path_arg(&text)],
            "--rounding gptq rounds quantized tensors: GGUF output needs a quantized --type",
        ),
        (
            vec!["--type", "BF16", "--rounding", "gptq", "--calibration", path_arg(&text)],
            "--rounding gptq rounds quantized tensors: GGUF output needs a quantized --type",
        ),
        (vec!["--type", "Q4_0", "--rounding", "gptq", "--calibration", path_arg(&text), "--ctx", "0"], "at least 1"),
        (vec!["--type", "Q4_0", "--rounding", "gptq", "--calibration", path_arg(&out)], "out.gguf"),
    ];
    for (extra, message) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let e = fails(&args);
        assert!(e.contains(message), "{args:?}: {e}");
    }
    let mlx = dir.path().join("mlx");
    let mlx_fails = |extra: &[&str]| {
        let mut argv = vec!["convert", path_arg(&llama), "-o", path_arg(&mlx), "--format", "mlx"];
        argv.extend_from_slice(extra);
        fails(&argv)
    };
    let e = mlx_fails(&["--type", "q4", "--rounding", "gptq", "--calibration", path_arg(&text)]);
    assert!(e.contains("--rounding does not apply to --format mlx") && e.contains("--format hf's MXFP4"), "{e}");
    // The same without calibration (not "needs calibration input": it does not apply at all).
    let e = mlx_fails(&["--target-bpw", "4", "--rounding", "gptq"]);
    assert!(e.contains("--rounding does not apply to --format mlx"), "{e}");
    // --format hf takes --rounding gptq, but none of llama-quantize's options.
    let (ft, imatrix) =
        (fixtures().join("gpt-oss/finetune-bf16"), fixtures().join("imatrix/gpt-oss-llama.imatrix.gguf"));
    let hf = dir.path().join("hf");
    let mut args = vec!["convert", path_arg(&ft), "-o", path_arg(&hf), "--format", "hf", "--rounding", "gptq"];
    args.extend(["--calibration", path_arg(&text), "--imatrix", path_arg(&imatrix)]);
    let e = fails(&args);
    assert!(e.contains("--format hf takes --rounding gptq"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

/// The trained MoE fixture (`tests/fixtures/trained-moe`, made by `scripts/train_moe.py`): a
/// byte-level BPE with GPT-2's pre-tokenization that llama.cpp's converter's table does not know.
/// Without `--tokenizer-pre` moeq writes the family's `llama-bpe` and its warning names `gpt-2`;
/// with `--tokenizer-pre gpt-2` the GGUF says `gpt-2`, holds the checkpoint's bf16 values
/// exactly (verify: every tensor identical, KL 0), and moeq's forward on it reproduces
/// transformers' float32 logits and hidden states on the stored tokens (reference.safetensors).
#[test]
fn trained_moe_converts_with_gpt2_pre_and_reproduces_transformers() {
    let hf = fixtures().join("trained-moe/hf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trained-moe.gguf");
    let run = moeq(&["convert", path_arg(&hf), "-o", path_arg(&out), "--quiet"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not know this pre-tokenizer")
            && stderr.contains("'llama-bpe'")
            && stderr.contains("--tokenizer-pre gpt-2"),
        "{stderr}"
    );
    let pre = |path: &Path| {
        let file = moeq_formats::gguf::GgufFile::open(path).unwrap();
        file.header().get("tokenizer.ggml.pre").and_then(|v| v.as_str()).map(str::to_string)
    };
    assert_eq!(pre(&out).as_deref(), Some("llama-bpe"));
    std::fs::remove_file(&out).unwrap();

    let run = moeq(&["convert", path_arg(&hf), "-o", path_arg(&out), "--tokenizer-pre", "gpt-2", "--quiet"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && !stderr.contains("pre-tokenizer"), "{stderr}");
    assert_eq!(pre(&out).as_deref(), Some("gpt-2"));
    let file = moeq_formats::gguf::GgufFile::open(&out).unwrap();
    let h = file.header();
    assert_eq!(h.architecture(), Some("llama"), "Mixtral is llama.cpp's llama architecture");
    let exps = h.tensors.iter().find(|t| t.name == "blk.3.ffn_down_exps.weight").expect("stacked experts");
    assert_eq!(exps.ne, [512, 256, 8], "ne: expert width, hidden, experts");

    let (code, r) = verify_json(&hf, &out);
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["tensors"].as_array().unwrap().iter().all(|t| t["identical"] == true));
    assert_eq!(r["model"]["kl_max"].as_f64(), Some(0.0));

    let reference = fixtures().join("trained-moe/reference.safetensors");
    let tokens: Vec<u32> = st_tensor(&reference, "tokens").iter().map(|&t| t as u32).collect();
    assert!(tokens.len() >= 16, "{} reference tokens", tokens.len());
    for input in [&hf, &out] {
        let trace = moeq::verify::eval::eval(input, &tokens).unwrap();
        let logits = st_tensor(&reference, "logits");
        assert!(rel_l2(&trace.logits, &logits) <= 1e-4, "{input:?}: logits {:e}", rel_l2(&trace.logits, &logits));
        assert_eq!(trace.hidden.len(), 5, "embedding, 4 layers (the last after the final norm)");
        for (n, h) in trace.hidden.iter().enumerate() {
            let err = rel_l2(h, &st_tensor(&reference, &format!("hidden.{n}")));
            assert!(err <= 1e-4, "{input:?}: hidden.{n} relative L2 {err:e}");
        }
        // A trained model: the reference's top token at every position is moeq's.
        let vocab = logits.len() / tokens.len();
        for (p, (ours, theirs)) in trace.logits.chunks(vocab).zip(logits.chunks(vocab)).enumerate() {
            let top = |row: &[f64]| (0..vocab).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            let ours: Vec<f64> = ours.iter().map(|&v| v as f64).collect();
            assert_eq!(top(&ours), top(theirs), "{input:?}: position {p}");
        }
    }
}

/// `--kl-probes layer` (the default) predicts each layer tensor's KL from its change of its
/// own layer's output and one run of the rest of the model per layer and group, where
/// `--kl-probes tensor` measures it with one run to the logits per tensor. On the trained MoE
/// (real weights: on random ones the two differ more) the predictions rank the tensors as the
/// measurements do (Spearman ≥ 0.8; one gain for all of a layer's tensors gives ~0.6;
/// `--kl-probes halves`, four groups per layer, ≥ 0.9: measured 0.98) and are
/// unbiased within a factor 1.5 on average; the embedding and the head, probed directly either
/// way, get the same KL bit for bit; every prediction is its layer's gain times its change.
#[test]
fn kl_probes_per_layer_predict_the_per_tensor_kl() {
    let hf = fixtures().join("trained-moe/hf");
    let text = fixtures().join("imatrix/calib.txt");
    // `sample_above`: MOEQ_KL_SAMPLE_ROWS_ABOVE (the default 2²⁶ samples no tensor of this model).
    let plan = |probes: &str, sample_above: Option<&str>| -> Json {
        let args = [path_arg(&hf), "--type", "Q4_K_M", "--optimize", "--calibration", path_arg(&text), "--ctx", "128"];
        let mut args = [&["convert", "--dry-run", "--json"][..], &args[..]].concat();
        args.extend(["--chunks", "4", "--kl-probes", probes, "--tokenizer-pre", "gpt-2"]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moeq"));
        if let Some(v) = sample_above {
            cmd.env("MOEQ_KL_SAMPLE_ROWS_ABOVE", v);
        }
        let out = cmd.args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Json>(&out.stdout).unwrap()["optimize"].clone()
    };
    let tensor = plan("tensor", None);
    // Row-sampled probes of the experts (as for a Mixtral-width layer's): they predict as well,
    // and say so.
    let sampled = plan("layer", Some("100000"));
    for t in sampled["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let share = &t["kl"]["layer_gain"]["rows_probed"];
        if name.contains("_exps") {
            assert_eq!(share.as_f64(), Some(0.25), "{t}");
            assert!(t["why"].as_str().unwrap().contains("from 25 % of its rows"), "{t}");
        } else if name.starts_with("blk.") {
            assert_eq!(share.as_f64(), Some(1.0), "{t}");
        }
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_moeq"))
        .env("MOEQ_KL_SAMPLE_ROWS_ABOVE", "lots")
        .args(["convert", "--dry-run", path_arg(&hf), "--type", "Q4_K_M", "--optimize", "--calibration"])
        .args([path_arg(&text), "--tokenizer-pre", "gpt-2"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MOEQ_KL_SAMPLE_ROWS_ABOVE=\"lots\" is not a count"));
    let layer = plan("layer", None);
    let halves = plan("halves", None);
    for (layer, label, min_spearman) in [(layer, "layer", 0.8), (sampled, "row-sampled", 0.8), (halves, "halves", 0.9)]
    {
        assert_eq!(layer["calibration"]["probes"], if label == "halves" { "halves" } else { "layer" });
        assert_eq!(tensor["calibration"]["probes"], "tensor");
        let (lt, tt) = (layer["tensors"].as_array().unwrap(), tensor["tensors"].as_array().unwrap());
        assert_eq!(lt.len(), tt.len());
        let (mut predicted, mut measured) = (Vec::new(), Vec::new());
        for (a, b) in lt.iter().zip(tt) {
            assert_eq!(a["name"], b["name"]);
            let name = a["name"].as_str().unwrap();
            let (ka, kb) = (&a["kl"], &b["kl"]);
            assert!(kb["layer_gain"].is_null(), "{b}");
            match name.strip_prefix("blk.") {
                Some(rest) => {
                    let l: u64 = rest.split('.').next().unwrap().parse().unwrap();
                    let g = &ka["layer_gain"];
                    assert_eq!(g["layer"].as_u64(), Some(l), "{a}");
                    let (kl, gain, change) = (
                        ka["kl"].as_f64().unwrap(),
                        g["gain"].as_f64().unwrap(),
                        g["residual_error"].as_f64().unwrap(),
                    );
                    assert!(kl > 0.0 && (kl - gain * change).abs() <= 1e-12 * kl, "{a}");
                    assert!(a["why"].as_str().unwrap().contains(&format!("layer {l} gain")), "{a}");
                    predicted.push(kl.ln());
                    measured.push(kb["kl"].as_f64().unwrap().ln());
                }
                None => {
                    assert!(ka["layer_gain"].is_null(), "{a}");
                    assert_eq!(ka["kl"], kb["kl"], "{name}: probed directly either way");
                }
            }
        }
        assert!(predicted.len() >= 24, "{} layer tensors", predicted.len());
        let rank = |v: &[f64]| -> Vec<f64> {
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
            let mut r = vec![0.0; v.len()];
            order.iter().enumerate().for_each(|(k, &i)| r[i] = k as f64);
            r
        };
        let (ra, rb, n) = (rank(&predicted), rank(&measured), predicted.len() as f64);
        let spearman = 1.0 - 6.0 * ra.iter().zip(&rb).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / (n * (n * n - 1.0));
        let d: Vec<f64> = predicted.iter().zip(&measured).map(|(p, m)| p - m).collect();
        let mean = d.iter().sum::<f64>() / n;
        assert!(spearman >= min_spearman, "{label}: Spearman {spearman:.3}");
        assert!(mean.abs() <= 1.5f64.ln(), "{label}: mean log ratio {mean:.3}");
    }
    // --kl-probes needs a size target.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.gguf");
    let mut args = vec!["convert", path_arg(&hf), "-o", path_arg(&out), "--type", "Q4_0", "--rounding", "gptq"];
    args.extend(["--calibration", path_arg(&text), "--kl-probes", "tensor"]);
    let e = fails(&args);
    assert!(e.contains("--kl-probes goes with --optimize"), "{e}");
    let e = fails(&["convert", path_arg(&hf), "-o", path_arg(&out), "--type", "Q4_0", "--kl-probes", "layer"]);
    assert!(e.contains("--kl-probes goes with a KL-calibrated size target"), "{e}");
    // Size targets are GGUF's and MLX's, plan reports theirs: refused for HF folders and for MLX
    // builds without a size target.
    let mlx = ["convert", path_arg(&hf), "-o", path_arg(&out), "--format", "mlx"];
    let e = fails(&[&mlx[..], &["--report", path_arg(&dir.path().join("r.json"))]].concat());
    assert!(e.contains("--json and --report") && e.contains("no such plan"), "{e}");
    let oss = fixtures().join("gpt-oss/hf-mxfp4");
    let e = fails(&["convert", path_arg(&oss), "-o", path_arg(&out), "--format", "hf", "--json"]);
    assert!(e.contains("no such plan"), "{e}");
    let e = fails(&["convert", path_arg(&oss), "-o", path_arg(&out), "--format", "hf", "--target-bpw", "4"]);
    assert!(e.contains("--format hf takes no size target"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

/// `Weights::replaced_rows` (the KL probes of the embedding and the head): the given rows read
/// as the replacement's bytes, every other row as the source's, whatever range is read;
/// unsorted rows or bytes of the wrong size are refused.
#[test]
fn weights_replace_some_rows_only() {
    use moeq::model::weights::Weights;
    use moeq_formats::gguf::GgmlType;
    use std::sync::Arc;
    let hf = fixtures().join("trained-moe/hf");
    let source = moeq::source::Source::open(&hf).unwrap();
    let w = Weights::new(&source, &hf).unwrap();
    let name = "output.weight";
    let ne0 = w.ne(name).unwrap()[0] as usize;
    let rows = vec![3u64, 4, 100];
    let doubled: Vec<u8> =
        rows.iter().flat_map(|&r| w.rows(name, r, 1).unwrap()).flat_map(|v| (2.0 * v).to_le_bytes()).collect();
    let changed = w.replaced_rows(name, GgmlType::F32, Arc::new(doubled.clone()), Arc::new(rows.clone())).unwrap();
    for (first, count) in [(0u64, 8u64), (4, 1), (99, 3), (0, 101)] {
        let (before, after) = (w.rows(name, first, count).unwrap(), changed.rows(name, first, count).unwrap());
        assert_eq!(after.len(), count as usize * ne0);
        for (k, (b, a)) in before.chunks(ne0).zip(after.chunks(ne0)).enumerate() {
            let r = first + k as u64;
            let want: Vec<f32> = if rows.contains(&r) { b.iter().map(|v| 2.0 * v).collect() } else { b.to_vec() };
            assert_eq!(a, &want[..], "row {r} of {first}+{count}");
        }
    }
    // Other tensors are the source's.
    assert_eq!(changed.rows("token_embd.weight", 3, 2).unwrap(), w.rows("token_embd.weight", 3, 2).unwrap());
    let bad = |rows: Vec<u64>, bytes: Vec<u8>| {
        w.replaced_rows(name, GgmlType::F32, Arc::new(bytes), Arc::new(rows)).err().unwrap().to_string()
    };
    assert!(bad(vec![4, 3, 100], doubled.clone()).contains("sorted, distinct"));
    assert!(bad(vec![3, 3, 100], doubled.clone()).contains("sorted, distinct"));
    assert!(bad(vec![3, 4, 1 << 40], doubled.clone()).contains("sorted, distinct"));
    assert!(bad(rows.clone(), doubled[..doubled.len() - 4].to_vec()).contains("bytes, not"));
}

/// `forward::memo::Memo` (the per-layer KL probes): a recorded projection comes back bit for
/// bit for the same input and weights; with some weight rows replaced only those rows are
/// recomputed, and with the input changed in a few columns the recorded output is updated —
/// both equal to computing it (within f32 rounding); anything else is computed.
#[test]
fn memo_reuses_recorded_projections() {
    use moeq::forward::Model;
    use moeq::forward::memo::Memo;
    use moeq::model::weights::Weights;
    use moeq_formats::gguf::GgmlType;
    use std::sync::Arc;
    let hf = fixtures().join("trained-moe/hf");
    let source = moeq::source::Source::open(&hf).unwrap();
    let w = Weights::new(&source, &hf).unwrap();
    let memo = Arc::new(Memo::default());
    let base = Model::new(&w).unwrap();
    let with = |w| Model { w, memo: Some(memo.clone()), ..Model::new(w).unwrap() };
    let plain = Model { memo: None, ..base };
    let name = "blk.1.ffn_gate_exps.weight";
    let ne = w.ne(name).unwrap().to_vec();
    let (cols, rows) = (ne[0] as usize, ne[1]);
    let (first, t) = (rows, 5usize); // expert 1's rows, five tokens
    let x: Vec<f32> = (0..t * cols).map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5).collect();
    let full = |m: &Model, x: &[f32]| plain_or(m, x, name, first, rows);
    fn plain_or(m: &Model, x: &[f32], name: &str, first: u64, rows: u64) -> Vec<f32> {
        m.project(x, name, first, rows, None).unwrap()
    }
    let close = |a: &[f32], b: &[f32], what: &str| {
        let err: f32 = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        let scale: f32 = b.iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(err <= 1e-5 * scale.max(1.0), "{what}: max error {err:e} of {scale:e}");
    };
    let reference = full(&plain, &x);
    let m = with(&w);
    memo.set_recording(true);
    assert_eq!(full(&m, &x), reference);
    memo.set_recording(false);
    assert_eq!(memo.hits(), 0);
    // Same input, same weights: the recorded output (bit for bit, as computing it gives).
    assert_eq!(full(&m, &x), reference);
    assert_eq!(memo.hits(), 1);
    // Some rows replaced (every fourth of the stacked tensor, doubled): those rows recomputed.
    let replaced: Vec<u64> = (0..ne[1] * ne[2]).step_by(4).collect();
    let bytes: Vec<u8> =
        replaced.iter().flat_map(|&r| w.rows(name, r, 1).unwrap()).flat_map(|v| (2.0 * v).to_le_bytes()).collect();
    let changed = w.replaced_rows(name, GgmlType::F32, Arc::new(bytes), Arc::new(replaced)).unwrap();
    let plain_changed = Model { memo: None, ..Model::new(&changed).unwrap() };
    let expected = full(&plain_changed, &x);
    assert_ne!(expected, reference);
    close(&full(&with(&changed), &x), &expected, "replaced rows");
    assert_eq!(memo.hits(), 2);
    // The input changed in a few columns: the recorded output updated.
    let mut y = x.clone();
    for k in 0..t {
        y[k * cols + 3] += 0.25;
        y[k * cols + cols - 1] -= 0.5;
    }
    let expected = full(&plain, &y);
    close(&full(&m, &y), &expected, "changed columns");
    assert_eq!(memo.hits(), 3);
    // Both at once.
    let expected = full(&plain_changed, &y);
    close(&full(&with(&changed), &y), &expected, "replaced rows and changed columns");
    assert_eq!(memo.hits(), 4);
    // Every column changed, or other rows of the weight: computed (and still right).
    let z: Vec<f32> = x.iter().map(|v| v * 1.5).collect();
    assert_eq!(full(&m, &z), full(&plain, &z));
    assert_eq!(m.project(&x, name, 0, rows, None).unwrap(), plain.project(&x, name, 0, rows, None).unwrap());
    assert_eq!(memo.hits(), 4);
    // Cleared: nothing to reuse.
    memo.clear();
    assert_eq!(full(&m, &y), full(&plain, &y));
    assert_eq!(memo.hits(), 4);
}

/// An output or report path that is a symbolic link is refused before any work (renaming the
/// finished file into place would replace the link: `--report /dev/stdout` replaced
/// `/dev/stdout`), and so is a folder that takes no new file; the link and its target stay.
#[test]
fn symlinked_outputs_and_unwritable_folders_are_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.gguf");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.gguf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let hf = fixtures().join("llama/hf");
    let e = fails(&["convert", path_arg(&hf), "-o", path_arg(&link), "--type", "Q8_0"]);
    assert!(e.contains("is a symbolic link (to") && e.contains("give that path instead"), "{e}");
    let out = dir.path().join("out.gguf");
    let e = fails(&["convert", path_arg(&hf), "-o", path_arg(&out), "--type", "Q8_0", "--report", path_arg(&link)]);
    assert!(e.contains("is a symbolic link"), "{e}");
    let e = fails(&["convert", path_arg(&hf), "--dry-run", "--type", "Q8_0", "--report", path_arg(&link)]);
    assert!(e.contains("is a symbolic link"), "{e}");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(!out.exists());
    // /proc takes no new file, even for root.
    let e = fails(&["convert", path_arg(&hf), "-o", "/proc/moeq-never.gguf", "--type", "Q8_0"]);
    assert!(e.contains("the folder /proc takes no new file"), "{e}");
}

/// A tokenizer given by `--tokenizer DIR` is an input like the model's files: convert
/// (`--calibration`, `--rounding gptq`), imatrix and `eval --dump` refuse to write over its
/// tokenizer.json (or over a tokenizer file given directly), exit 2, the file unchanged.
#[test]
fn tokenizer_files_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::create_dir(&tok).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("llama/hf").join(f), tok.join(f)).unwrap();
    }
    let json = tok.join("tokenizer.json");
    let before = std::fs::read(&json).unwrap();
    let (model, text) = (golden("llama-bf16.gguf"), fixtures().join("imatrix/calib.txt"));
    let (m, t, d, j) = (path_arg(&model), path_arg(&text), path_arg(&tok), path_arg(&json));
    let (x, config) = (dir.path().join("x.gguf"), tok.join("tokenizer_config.json"));
    let cal = ["--calibration", t, "--tokenizer", d, "--ctx", "64", "--chunks", "2"];
    let report = ["--report", path_arg(&config)];
    let runs: Vec<Vec<&str>> = vec![
        [&["convert", m, "-o", j, "--type", "Q4_K_M", "--optimize"][..], &cal[..]].concat(),
        [&["convert", m, "-o", j, "--type", "Q4_0", "--rounding", "gptq"][..], &cal[..]].concat(),
        [&["convert", m, "-o", path_arg(&x), "--type", "Q4_K_M", "--optimize"][..], &cal[..], &report[..]].concat(),
        vec!["imatrix", m, "--text", t, "--tokenizer", d, "--ctx", "64", "--chunks", "2", "-o", j],
        vec!["eval", m, "--text", "def f(x):", "--tokenizer", d, "--dump", j],
        vec!["eval", m, "--text", "def f(x):", "--tokenizer", j, "--dump", j],
    ];
    for args in runs {
        let e = fails(&args);
        assert!(e.contains("is the input"), "{args:?}: {e}");
    }
    assert_eq!(std::fs::read(&json).unwrap(), before);
    assert!(!x.exists());
}

/// `bench dot` refuses widths and `bench kernels` sizes it could not allocate (clap's exit 2,
/// no panic or abort);
/// `eval --text ""` is the BOS alone, as llama.cpp tokenizes an empty text (no leading space).
#[test]
fn bench_dot_widths_and_empty_text() {
    for (width, says) in [
        ("0", "must be 1 to 65536"),
        ("65537", "must be 1 to 65536"),
        ("18446744073709551615", "must be 1 to 65536"),
        ("-3", ""),
    ] {
        let out = moeq(&["bench", "dot", "--width", width]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{width}: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{width}: {err}");
    }
    // `bench kernels --size` past memory aborted on the allocation; 0 measured one block.
    for (size, says) in [
        ("0", "must be 1024"),
        ("1023", "must be 1024"),
        ("99999999999999", "to 1073741824 (1 GiB)"),
        ("18446744073709551615", "to 1073741824 (1 GiB)"),
    ] {
        let out = moeq(&["bench", "kernels", "--types", "Q4_0", "--size", size]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{size}: {err}");
        assert!(err.contains(says) && !err.contains("memory allocation"), "{size}: {err}");
    }
    let mixtral = fixtures().join("mixtral/hf");
    let shown = ok(&["eval", path_arg(&mixtral), "--text", "", "--top", "1"]);
    let positions: Vec<&str> = shown.lines().filter(|l| l.contains('→')).collect();
    assert_eq!(positions.len(), 1, "{shown}");
    assert!(positions[0].trim_start().starts_with("0 ") && positions[0].contains(" 1 →"), "{shown}");
}

/// `eval` and `verify` ran sequences past the model's training context (the Llama fixture's
/// 4096 positions) without a word, where `imatrix` (and llama.cpp) warn: now they warn too.
#[test]
fn eval_and_verify_warn_past_the_training_context() {
    let llama = fixtures().join("llama/hf");
    let ids = vec!["5"; 4097].join(",");
    let run = |args: &[&str]| {
        let out = moeq(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let says = "longer than the model's training context of 4096 tokens";
    let err = run(&["eval", path_arg(&llama), "--tokens", &ids, "--top", "1"]);
    assert!(err.contains("4097 tokens") && err.contains(says), "{err}");
    let err = run(&["eval", path_arg(&llama), "--tokens", &ids[2..], "--top", "1"]);
    assert!(!err.contains("training context"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.txt");
    std::fs::write(&file, format!("1,2,3\n{ids}\n")).unwrap();
    let q4 = golden("llama-bf16-Q4_0.gguf");
    let err = run(&["verify", path_arg(&llama), path_arg(&q4), "--tokens-file", path_arg(&file)]);
    assert!(err.contains("4097 tokens") && err.contains(says), "{err}");
}

/// An id outside the vocabulary in `verify`'s tokens was found only after the tensor checks,
/// as "the source model: token N is outside the vocabulary": the error now comes before any
/// work and names the file (or `--tokens`), the sequence and the model.
#[test]
fn verify_names_the_file_of_an_out_of_vocabulary_token() {
    let llama = fixtures().join("llama/hf");
    let q4 = golden("llama-bf16-Q4_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.txt");
    std::fs::write(&file, "1,2\n\n3,99999\n").unwrap();
    let err = fails(&["verify", path_arg(&llama), path_arg(&q4), "--tokens-file", path_arg(&file)]);
    assert!(err.contains(path_arg(&file)) && err.contains("sequence 2 holds token 99999"), "{err}");
    assert!(err.contains(&format!("the vocabulary of {} (512 tokens)", path_arg(&llama))), "{err}");
    let err = fails(&["verify", path_arg(&llama), path_arg(&q4), "--tokens", "1,512"]);
    assert!(err.contains("--tokens: sequence 1 holds token 512"), "{err}");
}

/// `--quant-override '*=q8:abc'` said only "group size 'abc'": the cause was dropped (and
/// the parser's own "invalid digit" came without the allowed sizes).
#[test]
fn quant_override_bad_group_says_why() {
    let llama = fixtures().join("llama/hf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlx");
    for group in ["abc", "18446744073709551616", "-"] {
        let spec = format!("*=q8:{group}");
        let err =
            fails(&["convert", path_arg(&llama), "-o", path_arg(&out), "--format", "mlx", "--quant-override", &spec]);
        assert!(
            err.contains(&format!("group size '{group}' is not a whole number (MLX takes 32, 64 or 128)")),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// `imatrix` on one chunk said "1 chunks".
#[test]
fn imatrix_counts_one_chunk_in_the_singular() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "1 2 3 4\n").unwrap();
    let m = dir.path().join("m.gguf");
    let gguf = golden("mixtral-bf16.gguf");
    let out = moeq(&["imatrix", path_arg(&gguf), "--tokens-file", path_arg(&tokens), "-o", path_arg(&m)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(" entries, 1 chunk, 4 tokens in "), "{err}");
}
