//! safetensors hostile input: bad headers, bad indexes, missing or duplicated shards.

use std::path::Path;

use moeq_formats::FileBytes;
use moeq_formats::safetensors::{SafetensorsFile, SafetensorsModel};
use proptest::prelude::*;

fn file_err(bytes: Vec<u8>) -> String {
    SafetensorsFile::from_bytes(Path::new("w.safetensors"), FileBytes::Owned(bytes))
        .err()
        .expect("rejected")
        .to_string()
}

fn with_header(json: &str, data_len: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(vec![0u8; data_len]);
    out
}

#[test]
fn bad_headers() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![1, 2, 3], ""),
        ((u64::MAX).to_le_bytes().to_vec(), ""),
        ((1000u64).to_le_bytes().to_vec(), ""),
        (with_header("{not json", 0), ""),
        (with_header(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4), ""),
        (with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8), ""),
        (with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 12), ""),
        (with_header(r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, 4), ""),
        (with_header(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, 4), ""),
        (with_header(r#"{"__metadata__":{"k":1}}"#, 0), ""),
        (with_header(r#"{"__metadata__":"x"}"#, 0), ""),
    ];
    for (bytes, _) in cases {
        let err = file_err(bytes);
        assert!(err.starts_with("w.safetensors: invalid header"), "{err}");
    }
    let mut bad_utf8 = with_header("{\"\u{e9}\":1}", 0);
    bad_utf8[10] = 0xff;
    assert!(file_err(bad_utf8).contains("invalid header"));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = std::fs::read(crate::fixtures().join("gpt-oss/hf-mxfp4/model-00002-of-00002.safetensors")).unwrap();
    for cut in (0..bytes.len()).step_by(7) {
        assert!(file_err(bytes[..cut].to_vec()).contains("invalid header"));
    }
}

fn folder_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

fn tiny(names: &[&str]) -> Vec<u8> {
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!(r#""{n}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#, i + 1))
        .collect();
    with_header(&format!("{{{}}}", entries.join(",")), names.len())
}

fn model_err(dir: &Path) -> String {
    SafetensorsModel::open(dir).err().expect("rejected").to_string()
}

#[test]
fn bad_folders_and_indexes() {
    let a = tiny(&["a"]);
    let b = tiny(&["b"]);
    let ab = tiny(&["a", "b"]);
    let index = |map: &str| format!(r#"{{"metadata":{{}},"weight_map":{map}}}"#);

    let empty = folder_with(&[]);
    assert!(model_err(empty.path()).contains("holds no *.safetensors files"));
    let other = folder_with(&[("notes.txt", b"hi")]);
    assert!(model_err(other.path()).contains("holds no *.safetensors files"));

    let dup = folder_with(&[("x.safetensors", &a), ("y.safetensors", &ab)]);
    let err = model_err(dup.path());
    assert!(err.contains("tensor 'a' appears in more than one shard") && err.contains("y.safetensors"), "{err}");

    let missing = index(r#"{"a":"s1.safetensors","b":"s2.safetensors"}"#);
    let d = folder_with(&[("s1.safetensors", &a), ("model.safetensors.index.json", missing.as_bytes())]);
    let err = model_err(d.path());
    assert!(err.contains("index.json") && err.contains("shard 's2.safetensors', which is missing"), "{err}");

    let wrong = index(r#"{"a":"s1.safetensors","b":"s1.safetensors"}"#);
    let d = folder_with(&[
        ("s1.safetensors", &a),
        ("s2.safetensors", &b),
        ("model.safetensors.index.json", wrong.as_bytes()),
    ]);
    let err = model_err(d.path());
    assert!(err.contains("names tensor 'b' in shard 's1.safetensors'"), "{err}");

    let escape = index(r#"{"a":"../s1.safetensors"}"#);
    let d = folder_with(&[("model.safetensors.index.json", escape.as_bytes())]);
    assert!(model_err(d.path()).contains("not a plain file name"));

    for bad in ["{", r#"{"weight_map":[]}"#, r#"{"weight_map":{}}"#, r#"{"weight_map":{"a":3}}"#, "[]"] {
        let d = folder_with(&[("model.safetensors.index.json", bad.as_bytes())]);
        let err = model_err(d.path());
        assert!(err.contains("model.safetensors.index.json: invalid index"), "{bad}: {err}");
    }

    let good = index(r#"{"a":"s1.safetensors","b":"s2.safetensors"}"#);
    let d = folder_with(&[
        ("s1.safetensors", &a),
        ("s2.safetensors", &b),
        ("model.safetensors.index.json", good.as_bytes()),
    ]);
    let model = SafetensorsModel::open(d.path()).unwrap();
    assert_eq!(model.len(), 2);

    let corrupt = folder_with(&[("s.safetensors", b"garbage!garbage!")]);
    let err = model_err(corrupt.path());
    assert!(err.contains("s.safetensors: invalid header"), "{err}");

    assert!(model_err(Path::new("/nonexistent-moeq")).contains("no such file or folder"));
}

#[test]
fn every_fixture_folder_opens() {
    for dir in ["gpt-oss/original", "gpt-oss/hf-mxfp4", "gpt-oss/hf-bf16", "mixtral/hf", "llama/hf"] {
        let model = SafetensorsModel::open(&crate::fixtures().join(dir)).unwrap();
        assert!(!model.is_empty(), "{dir}");
    }
    let sharded = SafetensorsModel::open(&crate::fixtures().join("gpt-oss/hf-mxfp4")).unwrap();
    assert_eq!(sharded.shards().len(), 3);
    let (t, data) = sharded.get("model.layers.1.mlp.experts.gate_up_proj_blocks").unwrap();
    assert_eq!(t.shape, vec![4, 128, 2, 16]);
    assert_eq!(data.len(), 4 * 128 * 2 * 16);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_headers_never_panic(json in ".{0,200}", extra in 0usize..64) {
        let _ = SafetensorsFile::from_bytes(Path::new("p"), FileBytes::Owned(with_header(&json, extra)));
    }
}
