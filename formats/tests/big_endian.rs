//! Big-endian GGUF (written by gguf-py, `tests/fixtures/big-endian/`) reads as the
//! little-endian file with the same values.

use moeq_formats::FileBytes;
use moeq_formats::gguf::{ByteOrder, GgufFile};

use crate::fixtures;

fn pair(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = fixtures().join("big-endian");
    (dir.join(format!("{name}-be.gguf")), dir.join(format!("{name}-le.gguf")))
}

#[test]
fn big_endian_files_read_as_their_little_endian_twins() {
    for name in ["float", "quant"] {
        let (be_path, le_path) = pair(name);
        let le = GgufFile::open(&le_path).unwrap();
        let bytes = std::fs::read(&be_path).unwrap();
        // Mapped (a converted copy in a temporary file) and in memory.
        let mapped = GgufFile::open(&be_path).unwrap();
        let owned = GgufFile::from_bytes(&be_path, FileBytes::Owned(bytes)).unwrap();
        for be in [&mapped, &owned] {
            assert_eq!(be.header().byte_order, ByteOrder::Big);
            assert_eq!(le.header().byte_order, ByteOrder::Little);
            assert_eq!(be.header().metadata, le.header().metadata, "{name}");
            assert_eq!(be.header().tensors, le.header().tensors, "{name}");
            assert!(be.data_is_native());
            for i in 0..le.header().tensors.len() {
                assert_eq!(be.tensor_data(i), le.tensor_data(i), "{name}: tensor {i}");
            }
            assert!(be.file_bytes()[..] == std::fs::read(&le_path).unwrap()[..], "{name}: the whole file");
        }
        // Headers only: the data stays as stored.
        let header_only = GgufFile::open_header(&be_path).unwrap();
        assert!(!header_only.data_is_native());
        assert_eq!(header_only.header().metadata, le.header().metadata);
    }
}

#[test]
fn truncated_big_endian_files_fail_cleanly() {
    let (be_path, _) = pair("quant");
    let bytes = std::fs::read(&be_path).unwrap();
    for cut in (0..bytes.len()).step_by(7) {
        let err = GgufFile::from_bytes(&be_path, FileBytes::Owned(bytes[..cut].to_vec()));
        assert!(err.is_err(), "cut at {cut}");
    }
}

#[test]
fn mutated_big_endian_files_never_panic() {
    for name in ["float", "quant"] {
        let (be_path, _) = pair(name);
        let bytes = std::fs::read(&be_path).unwrap();
        for pos in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[pos] ^= flip;
                // Any outcome but a panic.
                let _ = GgufFile::from_bytes(&be_path, FileBytes::Owned(mutated));
            }
        }
    }
}
