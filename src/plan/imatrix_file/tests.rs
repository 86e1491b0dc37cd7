//! Both importance matrix formats, the weights llama-quantize makes of them, and hostile
//! files.

use moeq_formats::gguf::{Array, GgufPlan, TensorSpec, Value};

use super::*;

/// A GGUF file with `metadata` and F32 tensors `(name, ne, values)`.
pub(crate) fn gguf_bytes(metadata: Vec<(&str, Value)>, tensors: &[(&str, Vec<u64>, Vec<f32>)]) -> Vec<u8> {
    let plan = GgufPlan {
        metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        tensors: tensors
            .iter()
            .map(|(n, ne, _)| TensorSpec { name: n.to_string(), ne: ne.clone(), ggml_type: GgmlType::F32 })
            .collect(),
    };
    let layout = plan.layout().unwrap();
    let mut bytes = vec![0u8; layout.file_len as usize];
    bytes[..layout.header.len()].copy_from_slice(&layout.header);
    for ((_, _, values), &at) in tensors.iter().zip(&layout.offsets) {
        for (i, v) in values.iter().enumerate() {
            let at = at as usize + 4 * i;
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    bytes
}

fn imatrix_keys() -> Vec<(&'static str, Value)> {
    vec![
        ("general.type", Value::String("imatrix".into())),
        ("imatrix.datasets", Value::Array(Array::String(vec!["wiki.txt".into()]))),
        ("imatrix.chunk_count", Value::U32(10)),
        ("imatrix.chunk_size", Value::U32(512)),
    ]
}

/// A legacy `.dat` file: entries `(name, ncall, values)`, then a chunk count and dataset.
fn legacy_bytes(entries: &[(&str, i32, Vec<f32>)], trailer: Option<(i32, &str)>) -> Vec<u8> {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for (name, ncall, values) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(ncall.to_le_bytes());
        b.extend((values.len() as i32).to_le_bytes());
        values.iter().for_each(|v| b.extend(v.to_le_bytes()));
    }
    if let Some((chunks, dataset)) = trailer {
        b.extend(chunks.to_le_bytes());
        b.extend((dataset.len() as i32).to_le_bytes());
        b.extend(dataset.as_bytes());
    }
    b
}

fn open(bytes: &[u8]) -> Result<ImatrixFile> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.imatrix");
    std::fs::write(&path, bytes).unwrap();
    ImatrixFile::open(&path)
}

fn weights(m: &ImatrixFile, name: &str, mat: usize, ne0: usize) -> Vec<f32> {
    let mut out = vec![0.0; ne0];
    m.weights(m.find(name).unwrap(), mat, &mut out);
    out
}

#[test]
fn gguf_weights_are_sums_over_counts_per_expert() {
    let bytes = gguf_bytes(
        imatrix_keys(),
        &[
            ("blk.0.attn_q.weight.counts", vec![1, 1], vec![4.0]),
            ("blk.0.attn_q.weight.in_sum2", vec![2, 1], vec![2.0, 6.0]),
            ("blk.0.ffn_down_exps.weight.in_sum2", vec![2, 3], vec![3.0, 6.0, 5.0, 7.0, 1.0, 2.0]),
            ("blk.0.ffn_down_exps.weight.counts", vec![1, 3], vec![3.0, 0.0, 2.4]),
        ],
    );
    let m = open(&bytes).unwrap();
    assert_eq!(m.format, ImatrixFormat::Gguf);
    assert_eq!((m.chunk_count, m.chunk_size, m.datasets.as_slice()), (10, 512, &["wiki.txt".to_string()][..]));
    assert_eq!(m.entries().len(), 2);
    assert_eq!(weights(&m, "blk.0.attn_q.weight", 0, 2), [0.5, 1.5]);
    let e = m.find("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(e.counts, [3, 0, 2], "counts are rounded as std::lround");
    assert_eq!(weights(&m, "blk.0.ffn_down_exps.weight", 0, 2), [1.0, 2.0]);
    assert_eq!(weights(&m, "blk.0.ffn_down_exps.weight", 1, 2), [1.0, 1.0], "an expert without tokens weighs 1");
    assert_eq!(weights(&m, "blk.0.ffn_down_exps.weight", 2, 2), [0.5, 1.0]);
}

#[test]
fn legacy_weights_divide_by_the_call_count() {
    let bytes = legacy_bytes(
        &[("blk.0.attn_q.weight", 4, vec![2.0, 6.0]), ("blk.0.attn_k.weight", 0, vec![3.0])],
        Some((7, "data.txt")),
    );
    let m = open(&bytes).unwrap();
    assert_eq!(m.format, ImatrixFormat::Legacy);
    assert_eq!((m.chunk_count, m.datasets.as_slice()), (7, &["data.txt".to_string()][..]));
    assert_eq!(weights(&m, "blk.0.attn_q.weight", 0, 2), [0.5, 1.5]);
    assert_eq!(weights(&m, "blk.0.attn_k.weight", 0, 1), [3.0], "ncall 0: the values as they are");
    // The trailer is optional.
    let m = open(&legacy_bytes(&[("a.weight", 1, vec![1.0])], None)).unwrap();
    assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
}

#[test]
fn include_and_exclude_filter_by_substring() {
    let entries: Vec<(&str, i32, Vec<f32>)> = vec![
        ("blk.0.attn_q.weight", 1, vec![1.0]),
        ("blk.0.ffn_up.weight", 1, vec![1.0]),
        ("output.weight", 1, vec![1.0]),
    ];
    let mut m = open(&legacy_bytes(&entries, None)).unwrap();
    m.retain(&[], &["attn".to_string()]);
    assert_eq!(
        m.entries().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["blk.0.ffn_up.weight", "output.weight"]
    );
    m.retain(&["ffn".to_string(), "put".to_string()], &[]);
    assert_eq!(m.entries().len(), 2);
    m.retain(&["nothing".to_string()], &[]);
    assert!(m.entries().is_empty());
}

#[test]
fn hostile_files_are_refused_with_the_entry_named() {
    let good =
        gguf_bytes(imatrix_keys(), &[("w.in_sum2", vec![2, 1], vec![1.0, 2.0]), ("w.counts", vec![1, 1], vec![3.0])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 30].to_vec(), "past the end"),
        (
            gguf_bytes(
                vec![("general.type", Value::String("model".into()))],
                &[("token_embd.weight", vec![4], vec![0.0; 4])],
            ),
            "not an importance matrix",
        ),
        (gguf_bytes(imatrix_keys(), &[("w.in_sum2", vec![2, 1], vec![1.0, 2.0])]), "in_sum2 but no counts"),
        (
            gguf_bytes(
                imatrix_keys(),
                &[("w.in_sum2", vec![2, 1], vec![1.0, f32::NAN]), ("w.counts", vec![1, 1], vec![1.0])],
            ),
            "value 1 is NaN",
        ),
        (
            gguf_bytes(
                imatrix_keys(),
                &[("w.in_sum2", vec![2, 1], vec![1.0, f32::INFINITY]), ("w.counts", vec![1, 1], vec![1.0])],
            ),
            "inf",
        ),
        (
            gguf_bytes(
                imatrix_keys(),
                &[("w.in_sum2", vec![2, 1], vec![1.0, -2.0]), ("w.counts", vec![1, 1], vec![1.0])],
            ),
            "-2",
        ),
        (
            gguf_bytes(
                imatrix_keys(),
                &[("w.in_sum2", vec![2, 1], vec![1.0, 2.0]), ("w.counts", vec![1, 1], vec![-1.0])],
            ),
            "count 0 is -1",
        ),
        (
            gguf_bytes(
                imatrix_keys(),
                &[("w.in_sum2", vec![3], vec![1.0, 2.0, 3.0]), ("w.counts", vec![1, 2], vec![1.0, 1.0])],
            ),
            "do not split",
        ),
        (legacy_bytes(&[("a", 1, vec![1.0, 2.0])], None)[..20].to_vec(), "ends inside its 2 values"),
        (legacy_bytes(&[("a", -1, vec![1.0])], None), "negative"),
        (legacy_bytes(&[("a", 1, vec![f32::NAN])], None), "NaN"),
        (legacy_bytes(&[("a", 1, vec![1.0]), ("a", 1, vec![1.0])], None), "twice"),
        (b"hello, this is not an imatrix at all".to_vec(), "not an importance matrix"),
        (vec![1, 0, 0], "neither GGUF"),
        (
            {
                let mut b = legacy_bytes(&[("a", 1, vec![1.0])], Some((1, "d")));
                b.push(0);
                b
            },
            "unexpected bytes",
        ),
    ];
    for (bytes, want) in cases {
        let err = format!("{:#}", open(&bytes).err().unwrap_or_else(|| panic!("accepted; want {want}")));
        assert!(err.contains(want) && err.contains("importance matrix"), "want '{want}': {err}");
    }
    // Every truncation of a valid file fails cleanly (the last 28 bytes are padding).
    for cut in 0..good.len() {
        assert_eq!(open(&good[..cut]).is_err(), cut < good.len() - 28, "cut at {cut}");
    }
    let legacy = legacy_bytes(&[("blk.0.attn_q.weight", 4, vec![2.0, 6.0])], Some((7, "data.txt")));
    for cut in 0..legacy.len() {
        let _ = open(&legacy[..cut]);
    }
}
