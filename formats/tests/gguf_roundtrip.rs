//! GGUF: what we read and re-write with the same plan is the same file; splits read back as
//! the model they came from; the writer refuses incomplete or impossible output.

use std::path::Path;

use moeq_formats::gguf::split::shard_path;
use moeq_formats::gguf::{Array, GgmlType, GgufFile, GgufModel, GgufPlan, GgufWriter, TensorSpec, Value};
use proptest::prelude::*;

use crate::golden_ggufs;

/// Writes `plan` with `data[i]` for tensor i, in reverse order to exercise positional writes.
fn write(path: &Path, plan: &GgufPlan, data: &[Vec<u8>], split: Option<u64>) {
    let writer = GgufWriter::create(path, plan, split).expect("create");
    for (i, d) in data.iter().enumerate().rev() {
        writer.write_tensor(i, d).expect("write tensor");
    }
    writer.finish().expect("finish");
}

#[test]
fn golden_files_rewrite_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for path in golden_ggufs() {
        let file = GgufFile::open(&path).unwrap();
        let plan = GgufPlan::from_header(file.header());
        let data: Vec<Vec<u8>> = (0..plan.tensors.len()).map(|i| file.tensor_data(i).to_vec()).collect();
        let out = dir.path().join("out.gguf");
        write(&out, &plan, &data, None);
        let original = std::fs::read(&path).unwrap();
        let rewritten = std::fs::read(&out).unwrap();
        assert!(original == rewritten, "{} changed on rewrite", path.display());
    }
}

#[test]
fn golden_layout_matches_file() {
    for path in golden_ggufs() {
        let file = GgufFile::open(&path).unwrap();
        let layout = GgufPlan::from_header(file.header()).layout().unwrap();
        assert_eq!(layout.header.len() as u64, file.header().data_offset);
        assert_eq!(layout.file_len, file.file_len(), "{}", path.display());
    }
}

#[test]
fn split_output_reads_back_as_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let source = GgufFile::open(&crate::fixtures().join("golden/mixtral-bf16.gguf")).unwrap();
    let plan = GgufPlan::from_header(source.header());
    let data: Vec<Vec<u8>> = (0..plan.tensors.len()).map(|i| source.tensor_data(i).to_vec()).collect();
    let out = dir.path().join("model.gguf");
    write(&out, &plan, &data, Some(100_000));
    assert!(!out.exists(), "a split output has no unsplit file");
    let count = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(count > 2, "expected several shards, got {count}");
    let model = GgufModel::open(&shard_path(&out, 0, count)).unwrap();
    assert_eq!(model.shards().len(), count);
    assert_eq!(model.tensor_count(), plan.tensors.len());
    for (i, spec) in plan.tensors.iter().enumerate() {
        let (info, bytes) = model.tensor(&spec.name).unwrap();
        assert_eq!((&info.ne, info.ggml_type), (&spec.ne, spec.ggml_type));
        assert_eq!(bytes, &data[i][..]);
    }
    // Shard 0 has every key plus split.*, the others only split.*; llama.cpp's key types.
    let h0 = model.first().header();
    assert_eq!(h0.metadata.len(), plan.metadata.len() + 3);
    assert_eq!(h0.get("split.no"), Some(&Value::U16(0)));
    assert_eq!(h0.get("split.count"), Some(&Value::U16(count as u16)));
    assert_eq!(h0.get("split.tensors.count"), Some(&Value::I32(plan.tensors.len() as i32)));
    for (i, shard) in model.shards().iter().enumerate().skip(1) {
        let keys: Vec<&str> = shard.header().metadata.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["split.no", "split.count", "split.tensors.count"]);
        assert_eq!(shard.header().get("split.no"), Some(&Value::U16(i as u16)));
    }
    // No shard holds more than the limit, unless it holds a single tensor.
    for shard in model.shards() {
        let t = &shard.header().tensors;
        let bytes: u64 = t.iter().map(|t| t.nbytes).sum();
        assert!(bytes <= 100_000 || t.len() == 1);
    }
}

#[test]
fn split_that_fits_in_one_shard_is_a_plain_file() {
    let plan = GgufPlan {
        metadata: vec![("split.no".into(), Value::U16(3))],
        tensors: vec![TensorSpec { name: "t".into(), ne: vec![8], ggml_type: GgmlType::F32 }],
    };
    let shards = plan.split(1 << 30);
    assert_eq!(shards.len(), 1);
    assert!(shards[0].metadata.is_empty(), "stale split keys are dropped");
}

/// `--keep-split`'s shards: given tensor counts, the same keys as a size split; written
/// through the same output (nothing at the path until finished, an old set of the stem with
/// another count replaced).
#[test]
fn shards_by_count_replace_an_earlier_set() {
    let dir = tempfile::tempdir().unwrap();
    let source = GgufFile::open(&crate::fixtures().join("golden/llama-bf16.gguf")).unwrap();
    let plan = GgufPlan::from_header(source.header());
    let data: Vec<Vec<u8>> = (0..plan.tensors.len()).map(|i| source.tensor_data(i).to_vec()).collect();
    let n = plan.tensors.len();
    assert!(plan.split_by_counts(&[n - 1]).is_none(), "counts must add up");
    assert!(plan.split_by_counts(&[0, n]).is_none(), "no empty shard");
    assert_eq!(plan.split_by_counts(&[n]).unwrap().len(), 1);
    let out = dir.path().join("model.gguf");
    write(&out, &plan, &data, Some(60_000));
    let old = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(old != 3 && old > 1, "{old}");
    let counts = [2, n - 5, 3];
    let shards = plan.split_by_counts(&counts).unwrap();
    let writer = GgufWriter::create_shards(&out, &shards).unwrap();
    assert_eq!(writer.paths(), (0..3).map(|i| shard_path(&out, i, 3)).collect::<Vec<_>>());
    for (i, d) in data.iter().enumerate() {
        writer.write_tensor(i, d).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), old, "nothing new in place before finish");
    writer.finish().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert_eq!(names, (0..3).map(|i| shard_path(&out, i, 3)).collect::<Vec<_>>(), "the old set is gone");
    let model = GgufModel::open(&names[0]).unwrap();
    let per: Vec<usize> = model.shards().iter().map(|s| s.header().tensors.len()).collect();
    assert_eq!(per, counts);
    assert_eq!(model.first().header().get("split.count"), Some(&Value::U16(3)));
    for (i, spec) in plan.tensors.iter().enumerate() {
        assert_eq!(model.tensor(&spec.name).unwrap().1, &data[i][..]);
    }
}

#[test]
fn split_model_checks_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let source = GgufFile::open(&crate::fixtures().join("golden/llama-bf16.gguf")).unwrap();
    let plan = GgufPlan::from_header(source.header());
    let data: Vec<Vec<u8>> = (0..plan.tensors.len()).map(|i| source.tensor_data(i).to_vec()).collect();
    let out = dir.path().join("m.gguf");
    write(&out, &plan, &data, Some(60_000));
    let count = std::fs::read_dir(dir.path()).unwrap().count();
    let first = shard_path(&out, 0, count);
    // Opening a later shard asks for the first.
    let err = GgufModel::open(&shard_path(&out, 1, count)).err().unwrap().to_string();
    assert!(err.contains("open the first shard"), "{err}");
    // A missing shard is named.
    let last = shard_path(&out, count - 1, count);
    std::fs::rename(&last, dir.path().join("gone")).unwrap();
    let err = GgufModel::open(&first).err().unwrap().to_string();
    assert!(err.contains("missing split") && err.contains(&last.display().to_string()), "{err}");
    // A shard that lies about its number is refused.
    std::fs::copy(shard_path(&out, 0, count), &last).unwrap();
    let err = GgufModel::open(&first).err().unwrap().to_string();
    assert!(err.contains(&format!("split.no must be {}", count - 1)), "{err}");
}

#[test]
fn writer_refuses_impossible_plans() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let cases: Vec<(TensorSpec, &str)> = vec![
        (TensorSpec { name: "n".repeat(64), ne: vec![4], ggml_type: GgmlType::F32 }, "at most 63"),
        (TensorSpec { name: "q".into(), ne: vec![33], ggml_type: GgmlType::Q8_0 }, "multiple of 32"),
        (TensorSpec { name: "k".into(), ne: vec![2880, 8], ggml_type: GgmlType::Q4_K }, "multiple of 256"),
        (TensorSpec { name: "d".into(), ne: vec![1, 1, 1, 1, 1], ggml_type: GgmlType::F32 }, "at most 4"),
        (TensorSpec { name: "o".into(), ne: vec![u64::MAX / 2, 4], ggml_type: GgmlType::F32 }, "multiple"),
    ];
    for (spec, expected) in cases {
        let plan = GgufPlan { metadata: vec![], tensors: vec![spec] };
        let err = GgufWriter::create(&out, &plan, None).err().expect("refused").to_string();
        assert!(err.contains(expected) && err.contains("x.gguf"), "{err}");
    }
    let t = TensorSpec { name: "same".into(), ne: vec![4], ggml_type: GgmlType::F32 };
    let plan = GgufPlan { metadata: vec![], tensors: vec![t.clone(), t] };
    assert!(GgufWriter::create(&out, &plan, None).err().unwrap().to_string().contains("duplicate tensor"));
    let plan = GgufPlan { metadata: vec![("general.alignment".into(), Value::U64(32))], tensors: vec![] };
    assert!(GgufWriter::create(&out, &plan, None).err().unwrap().to_string().contains("alignment"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
}

#[test]
fn incomplete_output_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let plan = GgufPlan {
        metadata: vec![],
        tensors: vec![
            TensorSpec { name: "a".into(), ne: vec![8], ggml_type: GgmlType::F32 },
            TensorSpec { name: "b".into(), ne: vec![8], ggml_type: GgmlType::F32 },
        ],
    };
    let writer = GgufWriter::create(&out, &plan, None).unwrap();
    assert!(writer.write_tensor(0, &[0; 31]).is_err(), "wrong length");
    assert!(writer.write_tensor_part(0, 16, &[0; 17]).is_err(), "overrun");
    assert!(writer.write_tensor(7, &[0; 32]).is_err(), "no such tensor");
    writer.write_tensor(0, &[1; 32]).unwrap();
    writer.write_tensor_part(1, 0, &[2; 16]).unwrap();
    let err = writer.finish().err().unwrap().to_string();
    assert!(err.contains("'b'") && err.contains("16 of 32 bytes"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no output and no temporary file");
    // Dropping a writer without finishing also cleans up.
    drop(GgufWriter::create(&out, &plan, Some(1)).unwrap());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn missing_output_folder_is_named() {
    let out = Path::new("/nonexistent-moeq-dir/x.gguf");
    let err = GgufWriter::create(out, &GgufPlan::default(), None).err().unwrap().to_string();
    assert!(err.contains("/nonexistent-moeq-dir") && err.contains("does not exist"), "{err}");
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<f32>().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,20}".prop_map(Value::String),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => arb_scalar(),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(|v| Value::Array(Array::U8(v))),
        1 => prop::collection::vec(any::<i32>(), 0..20).prop_map(|v| Value::Array(Array::I32(v))),
        1 => prop::collection::vec(any::<f32>(), 0..20).prop_map(|v| Value::Array(Array::F32(v))),
        1 => prop::collection::vec(any::<bool>(), 0..20).prop_map(|v| Value::Array(Array::Bool(v))),
        1 => prop::collection::vec(".{0,8}", 0..20).prop_map(|v| Value::Array(Array::String(v))),
        1 => prop::collection::vec(any::<u64>(), 0..5).prop_map(|v| Value::Array(Array::U64(v))),
    ]
}

fn arb_tensor() -> impl Strategy<Value = TensorSpec> {
    let types = [GgmlType::F32, GgmlType::BF16, GgmlType::Q8_0, GgmlType::MXFP4, GgmlType::Q4_K, GgmlType::I8];
    (prop::sample::select(types.to_vec()), 1u64..4, prop::collection::vec(1u64..4, 0..3)).prop_map(
        |(ggml_type, blocks, rest)| {
            let mut ne = vec![blocks * ggml_type.block_size()];
            ne.extend(rest);
            TensorSpec { name: String::new(), ne, ggml_type }
        },
    )
}

/// Bit-level equality (f32 NaN payloads included).
fn encoded(plan: &GgufPlan) -> Vec<u8> {
    plan.layout().unwrap().header
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_plans_round_trip(
        kvs in prop::collection::vec(("[a-z.]{1,12}", arb_value()), 0..12),
        tensors in prop::collection::vec(arb_tensor(), 0..8),
        seed in any::<u8>(),
        split in prop::option::of(1u64..2000),
    ) {
        let mut metadata: Vec<(String, Value)> = Vec::new();
        for (k, v) in kvs {
            if k != "general.alignment" && !k.starts_with("split.") && !metadata.iter().any(|(x, _)| *x == k) {
                metadata.push((k, v));
            }
        }
        let tensors: Vec<TensorSpec> =
            tensors.into_iter().enumerate().map(|(i, t)| TensorSpec { name: format!("t{i}"), ..t }).collect();
        let plan = GgufPlan { metadata, tensors };
        let data: Vec<Vec<u8>> = plan.tensors.iter().enumerate().map(|(i, t)| {
            let n = t.ggml_type.tensor_bytes(&t.ne).unwrap() as usize;
            (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add(i as u8)).collect()
        }).collect();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.gguf");
        write(&out, &plan, &data, split);
        let shards = std::fs::read_dir(dir.path()).unwrap().count();
        let first = if shards == 1 { out.clone() } else { shard_path(&out, 0, shards) };
        let model = GgufModel::open(&first).unwrap();
        prop_assert_eq!(model.tensor_count(), plan.tensors.len());
        for (i, t) in plan.tensors.iter().enumerate() {
            let (info, bytes) = model.tensor(&t.name).unwrap();
            prop_assert_eq!(&info.ne, &t.ne);
            prop_assert_eq!(bytes, &data[i][..]);
        }
        if shards == 1 {
            let reread = GgufPlan::from_header(model.first().header());
            prop_assert_eq!(encoded(&reread), encoded(&plan));
            prop_assert_eq!(std::fs::read(&out).unwrap().len() as u64, plan.layout().unwrap().file_len);
        }
    }
}
