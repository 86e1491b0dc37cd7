//! The forward's model loading (`moeq eval` on a GGUF): any bytes give a trace or an error,
//! never a panic or a hang. Mutations are structure-aware (metadata values and keys, the
//! tensor table, tensor values; see `moeq_fuzz`) half of the time, libFuzzer's byte-level
//! ones otherwise. Start the corpus from the golden GGUFs:
//! `cargo fuzz run forward_load corpus/forward_load ../tests/fixtures/golden -s none`.
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| {
    let _ = moeq::forward::check_gguf_bytes(data);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed % 2 == 0
        && let Some(mutant) = moeq_fuzz::mutate(&data[..size], seed as u64)
        && mutant.len() <= max_size
    {
        data[..mutant.len()].copy_from_slice(&mutant);
        return mutant.len();
    }
    fuzzer_mutate(data, size, max_size)
});
