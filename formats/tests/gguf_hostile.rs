//! GGUF hostile input: every malformed file gets a precise error, never a panic, and nothing
//! is allocated beyond what the file can hold.

use moeq_formats::gguf::{GgufFile, GgufHeader};
use moeq_formats::{FileBytes, GgufError};
use proptest::prelude::*;

use crate::raw::{RawGguf, RawKv, RawTensor};

fn parse(raw: &RawGguf) -> Result<GgufHeader, GgufError> {
    GgufHeader::parse(&raw.bytes())
}

/// Asserts that `raw` is rejected with a message containing every one of `expected`.
#[track_caller]
fn rejected(raw: RawGguf, expected: &[&str]) {
    let err = parse(&raw).expect_err("must be rejected").to_string();
    for e in expected {
        assert!(err.contains(e), "error {err:?} does not mention {e:?}");
    }
}

#[test]
fn the_default_raw_file_is_valid() {
    let h = parse(&RawGguf::default()).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].offset, 32);
    assert_eq!(h.architecture(), Some("llama"));
}

#[test]
fn truncation_anywhere_is_an_error() {
    let dir = crate::fixtures().join("golden");
    for name in ["gpt-oss-mxfp4.gguf", "mixtral-bf16-Q4_0.gguf"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let data_offset = GgufHeader::parse(&bytes).unwrap().data_offset as usize;
        // Every cut inside the header, and a spread of cuts inside the data.
        let cuts = (0..data_offset).chain((data_offset..bytes.len()).step_by(997));
        for cut in cuts {
            let err = GgufHeader::parse(&bytes[..cut]).expect_err("truncated");
            let text = err.to_string();
            assert!(
                text.contains("ends inside") || text.contains("past the end") || text.contains("impossible"),
                "cut at {cut}: {text}"
            );
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    rejected(RawGguf { magic: *b"GGML", ..Default::default() }, &["bad magic"]);
    for v in [0, 1, 4, 0x0001_0003] {
        rejected(RawGguf { version: v, ..Default::default() }, &["unsupported GGUF version"]);
    }
    // A version whose low 16 bits are zero is big-endian (as gguf-py decides): 4 is not read,
    // in either byte order; 3 with little-endian counts reads as absurd counts.
    rejected(RawGguf { version: 0x0400_0000, ..Default::default() }, &["big-endian", "unsupported version 4"]);
    rejected(RawGguf { version: 0x0300_0000, ..Default::default() }, &["impossible"]);
    // Version 2 has the same layout and is read.
    assert!(parse(&RawGguf { version: 2, ..Default::default() }).is_ok());
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    rejected(RawGguf { n_kv: Some(u64::MAX), ..Default::default() }, &["key/value count", "impossible"]);
    rejected(RawGguf { n_tensors: Some(1 << 60), ..Default::default() }, &["tensor count", "impossible"]);
    rejected(RawGguf { n_kv: Some(1_000_000), ..Default::default() }, &["impossible"]);
    // An array claiming 2^29 u64 elements in a tiny file.
    let mut body = 9u32.to_le_bytes().to_vec();
    body.extend(10u32.to_le_bytes());
    body.extend((1u64 << 29).to_le_bytes());
    rejected(RawGguf { kvs: vec![RawKv::raw("big", body)], ..Default::default() }, &["array element", "impossible"]);
    // An array over GGUF's element limit.
    let mut body = 9u32.to_le_bytes().to_vec();
    body.extend(0u32.to_le_bytes());
    body.extend((1u64 << 31).to_le_bytes());
    rejected(RawGguf { kvs: vec![RawKv::raw("big", body)], ..Default::default() }, &["array 'big'", "limit"]);
}

#[test]
fn huge_string_lengths() {
    let mut body = 8u32.to_le_bytes().to_vec();
    body.extend(u64::MAX.to_le_bytes());
    rejected(RawGguf { kvs: vec![RawKv::raw("s", body)], ..Default::default() }, &["value of key 's'", "limit"]);
    let mut body = 8u32.to_le_bytes().to_vec();
    body.extend(1000u64.to_le_bytes());
    body.extend(b"short");
    rejected(
        RawGguf { kvs: vec![RawKv::raw("s", body)], data: vec![], tensors: vec![], ..Default::default() },
        &["value of key 's'", "ends inside"],
    );
    let mut raw = RawGguf::default();
    raw.kvs[0].key = vec![b'k'; 10];
    let mut bytes = raw.bytes();
    bytes[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(GgufHeader::parse(&bytes).unwrap_err().to_string().contains("key of key/value pair 0"));
}

#[test]
fn key_problems() {
    rejected(RawGguf { kvs: vec![RawKv::u32("", 1)], ..Default::default() }, &["empty key"]);
    rejected(
        RawGguf { kvs: vec![RawKv::u32("a.b", 1), RawKv::u32("a.b", 2)], ..Default::default() },
        &["duplicate key 'a.b'"],
    );
    rejected(
        RawGguf { kvs: vec![RawKv::raw("x", 13u32.to_le_bytes().to_vec())], ..Default::default() },
        &["key 'x'", "unknown value type 13"],
    );
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(9u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    rejected(RawGguf { kvs: vec![RawKv::raw("n", nested)], ..Default::default() }, &["key 'n'", "nested array"]);
    let mut kv = RawKv::u32("x", 1);
    kv.key = vec![0xff, 0xfe];
    rejected(RawGguf { kvs: vec![kv], ..Default::default() }, &["key of key/value pair 0", "UTF-8"]);
    let bad_str = RawKv::raw("s", {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend(2u64.to_le_bytes());
        b.extend([0xc3, 0x28]);
        b
    });
    rejected(RawGguf { kvs: vec![bad_str], ..Default::default() }, &["value of key 's'", "UTF-8"]);
}

#[test]
fn alignment_rules() {
    rejected(
        RawGguf { kvs: vec![RawKv::string("general.alignment", "32")], ..Default::default() },
        &["general.alignment", "must be UINT32"],
    );
    rejected(RawGguf { kvs: vec![RawKv::u32("general.alignment", 48)], ..Default::default() }, &["not a power of two"]);
    rejected(RawGguf { kvs: vec![RawKv::u32("general.alignment", 0)], ..Default::default() }, &["not a power of two"]);
    // A valid custom alignment moves the data section and the offsets.
    let raw = RawGguf {
        kvs: vec![RawKv::u32("general.alignment", 64)],
        tensors: vec![RawTensor::f32("a", &[4], 0), RawTensor::f32("b", &[4], 64)],
        alignment: 64,
        data: vec![0; 80],
        ..Default::default()
    };
    let h = parse(&raw).unwrap();
    assert_eq!((h.alignment, h.data_offset % 64), (64, 0));
}

#[test]
fn tensor_info_problems() {
    let t = |name: &str, ne: &[u64], type_id: u32, offset: u64| RawTensor {
        name: name.as_bytes().to_vec(),
        ne: ne.to_vec(),
        type_id,
        offset,
    };
    let with = |tensors: Vec<RawTensor>| RawGguf { tensors, ..Default::default() };
    rejected(with(vec![t(&"x".repeat(64), &[4], 0, 0)]), &["tensor 0 name is 64 bytes"]);
    rejected(with(vec![t("a", &[4], 0, 0), t("a", &[4], 0, 32)]), &["duplicate tensor name 'a'"]);
    rejected(with(vec![t("a", &[1, 1, 1, 1, 1], 0, 0)]), &["'a'", "5 dimensions"]);
    rejected(with(vec![t("a", &[u64::MAX], 0, 0)]), &["'a'", "negative"]);
    rejected(with(vec![t("a", &[1 << 32, 1 << 32], 0, 0)]), &["'a'", "overflows"]);
    rejected(with(vec![t("a", &[4], 4, 0)]), &["'a'", "unknown ggml type id 4"]);
    rejected(with(vec![t("a", &[4], 43, 0)]), &["unknown ggml type id 43"]);
    rejected(with(vec![t("a", &[33], 8, 0)]), &["'a'", "Q8_0", "33", "block size 32"]);
    // Offsets: misaligned, overlapping, out of order, with gaps, past the end of the file.
    rejected(with(vec![t("a", &[4], 0, 0), t("b", &[4], 0, 16)]), &["'b'", "offset 16, expected 32"]);
    rejected(with(vec![t("a", &[4], 0, 0), t("b", &[4], 0, 0)]), &["'b'", "offset 0, expected 32"]);
    rejected(with(vec![t("a", &[4], 0, 32), t("b", &[4], 0, 0)]), &["'a'", "offset 32, expected 0"]);
    rejected(with(vec![t("a", &[4], 0, 0), t("b", &[4], 0, 64)]), &["'b'", "expected 32"]);
    rejected(with(vec![t("a", &[4], 0, 0), t("b", &[100], 0, 32)]), &["'b'", "past the end of the file"]);
    // Non-UTF-8 names.
    rejected(
        with(vec![RawTensor { name: vec![b'a', 0xff], ne: vec![4], type_id: 0, offset: 0 }]),
        &["name of tensor 0", "UTF-8"],
    );
    // Zero-sized and dimensionless tensors are what ggml accepts.
    assert!(parse(&with(vec![t("z", &[0, 4], 0, 0), t("s", &[], 0, 0)])).is_ok());
}

#[test]
fn every_golden_file_parses() {
    for path in crate::golden_ggufs() {
        let file = GgufFile::open(&path).unwrap();
        let h = file.header();
        assert!(h.architecture().is_some());
        assert!(!h.tensors.is_empty());
        let data_end = h.tensors.last().map(|t| h.data_offset + t.offset + t.nbytes).unwrap();
        assert!(data_end <= file.file_len());
    }
}

#[test]
fn errors_name_the_file() {
    let err = GgufFile::from_bytes(std::path::Path::new("dir/bad.gguf"), FileBytes::Owned(b"GGUF".to_vec()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("dir/bad.gguf: invalid GGUF: the file ends inside the version"), "{err}");
    let err = GgufFile::open(std::path::Path::new("/nonexistent/x.gguf")).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/x.gguf"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes after a valid prefix, and random corruption of a valid file, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(noise in prop::collection::vec(any::<u8>(), 0..512), cut in 0usize..200) {
        let mut bytes = RawGguf::default().bytes();
        bytes.truncate(cut.min(bytes.len()));
        bytes.extend(noise);
        let _ = GgufHeader::parse(&bytes);
    }

    #[test]
    fn corrupted_files_never_panic(flips in prop::collection::vec((0usize..300, any::<u8>()), 1..6)) {
        let mut bytes = std::fs::read(crate::fixtures().join("golden/llama-bf16-Q4_0.gguf")).unwrap();
        bytes.truncate(4096);
        for (at, v) in flips {
            bytes[at % 4096] = v;
        }
        let _ = GgufHeader::parse(&bytes);
    }
}
