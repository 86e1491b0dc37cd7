//! A checkpoint folder (`config.json` and one `model.safetensors`, joined by
//! `moeq_fuzz::SEPARATOR`) through what `moeq eval` and `moeq convert` do with it: the model
//! loaded and run on two tokens, then converted to GGUF and to an MLX folder. Any input gives
//! a result or an error, never a panic or a hang, and a failed conversion leaves nothing at
//! its output path. Mutations are structure-aware (config values, safetensors header entries,
//! tensor values) half of the time. Seed the corpus with `fuzz/seed_checkpoints.sh`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use moeq::plan::convert::{ConvertOptions, Format, convert};

/// A scratch folder for this process (in memory when /dev/shm exists).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = base.join(format!("moeq-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, weights) = moeq_fuzz::split_checkpoint(data);
    let dir = scratch().join("in");
    let out = scratch().join("out");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&dir).expect("input folder");
    std::fs::create_dir_all(&out).expect("output folder");
    std::fs::write(dir.join("config.json"), config).expect("config.json");
    std::fs::write(dir.join("model.safetensors"), weights).expect("model.safetensors");
    let _ = moeq::forward::check_model(&dir);
    for (format, output) in [(Format::Gguf, out.join("out.gguf")), (Format::Mlx, out.join("mlx"))] {
        let opts = ConvertOptions {
            input: dir.clone(),
            output,
            ftype: None,
            split_max_bytes: None,
            quiet: true,
            no_vocab: true,
            tokenizer_pre: None,
            format,
            mlx: Default::default(),
        };
        if convert(&opts).is_err() {
            let left: Vec<_> = std::fs::read_dir(&out).expect("output folder").collect();
            assert!(left.is_empty(), "a failed conversion left {left:?}");
        }
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed % 2 == 0
        && let Some(mutant) = moeq_fuzz::mutate_checkpoint(&data[..size], seed as u64)
        && mutant.len() <= max_size
    {
        data[..mutant.len()].copy_from_slice(&mutant);
        return mutant.len();
    }
    fuzzer_mutate(data, size, max_size)
});
