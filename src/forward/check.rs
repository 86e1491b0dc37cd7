//! Whole-model loading as `eval` does it, from bytes or a path, for fuzzing and for tests of
//! hostile inputs: read the model, build its [`Weights`] and forward [`Config`] (every
//! hyperparameter checked against every tensor), then run a couple of tokens. Bad input must
//! give an error, never a panic or a hang; the fuzz targets in `fuzz/` call these.
//!
//! [`Config`]: super::Config

use std::path::Path;

use anyhow::Result;
use moeq_formats::FileBytes;
use moeq_formats::gguf::{GgufFile, GgufModel};

use super::{Model, Trace};
use crate::model::weights::Weights;
use crate::source::Source;

/// Reads `data` as a GGUF file (named `fuzz.gguf` in errors), checks the forward's
/// hyperparameters against its tensors and, when they agree, runs the model on the tokens 0
/// and the last id of its vocabulary. Returns the trace; any problem is an error.
pub fn check_gguf_bytes(data: &[u8]) -> Result<Trace> {
    let path = Path::new("fuzz.gguf");
    let file = GgufFile::from_bytes(path, FileBytes::Owned(data.to_vec()))?;
    let source = Source::Gguf(GgufModel::single(file));
    run_two_tokens(&source, path)
}

/// As [`check_gguf_bytes`] for any model moeq reads at `path` (a GGUF, a safetensors file, a
/// checkpoint folder or an MLX/Hugging Face build).
pub fn check_model(path: &Path) -> Result<Trace> {
    let source = Source::open(path)?;
    run_two_tokens(&source, path)
}

fn run_two_tokens(source: &Source, path: &Path) -> Result<Trace> {
    let weights = Weights::new(source, path)?;
    // Config::new: every hyperparameter against every tensor.
    let model = Model::new(&weights)?;
    let vocab = *weights.ne("token_embd.weight")?.get(1).unwrap_or(&1);
    let last = vocab.saturating_sub(1).min(u32::MAX as u64) as u32;
    model.run(&[0, last])
}
