//! Integration tests of moeq-formats: round trips, properties, and hostile input.

mod big_endian;
mod gguf_hostile;
mod gguf_roundtrip;
mod raw;
mod safetensors_hostile;
mod safetensors_roundtrip;

use std::path::PathBuf;

/// The repository's fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every golden GGUF in the fixtures.
pub fn golden_ggufs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("golden"))
        .expect("fixtures/golden exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected the golden GGUFs, found {files:?}");
    files
}
