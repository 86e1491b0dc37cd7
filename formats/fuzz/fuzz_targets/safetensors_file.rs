//! Any bytes given to the safetensors reader give a file or an error, never a panic, and
//! every tensor it reports lies inside the input.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moeq_formats::FileBytes;
use moeq_formats::safetensors::{SafetensorsFile, SafetensorsPlan};

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    if let Ok(file) = SafetensorsFile::from_bytes(Path::new("fuzz"), FileBytes::Owned(data.to_vec())) {
        for t in file.tensors() {
            assert!(t.start + t.len <= len);
            assert_eq!(file.data(t).len(), t.len);
        }
        let _ = SafetensorsPlan::from_file(&file).layout().expect("an accepted file is writable");
    }
});
