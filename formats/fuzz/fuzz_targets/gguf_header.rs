//! Any bytes given to the GGUF reader give a header or an error, never a panic; a header
//! that parses is written back by our writer to bytes that parse to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeq_formats::gguf::{GgufHeader, GgufPlan};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = GgufHeader::parse(data) else { return };
    for t in &header.tensors {
        assert!(header.data_offset + t.offset + t.nbytes <= data.len() as u64);
    }
    if header.version != 3 {
        return;
    }
    let layout = GgufPlan::from_header(&header).layout().expect("an accepted header is writable");
    assert_eq!(layout.header.len() as u64, header.data_offset);
    let mut rewritten = layout.header;
    rewritten.extend_from_slice(&data[header.data_offset as usize..]);
    let reparsed = GgufHeader::parse(&rewritten).expect("our rewrite parses");
    // Compare by encoding, so NaN metadata compares by bits.
    let encode = |h: &GgufHeader| GgufPlan::from_header(h).layout().map(|l| l.header).ok();
    assert_eq!(encode(&reparsed), encode(&header));
    assert_eq!(reparsed.tensors, header.tensors);
});
