//! moeq: Mixture-of-Experts checkpoints → GGUF and safetensors builds, streamed and verified.
//!
//! The crate follows the pipeline, one folder per stage (see `docs/architecture.md`):
//! - [`source`]: open any input (memory-mapped safetensors shards or GGUF), `config.json`;
//! - [`families`]: what moeq knows per model family (one folder each) and the registry;
//! - [`vocab`]: tokenizer metadata and `general.*` naming;
//! - [`plan`]: recipes (how each output tensor is made), llama-quantize's rules and options
//!   with the reason for each type, importance matrices, conversion;
//! - [`write`](mod@write): stream recipes into GGUF files or safetensors folders;
//! - [`model`]: any model as llama.cpp-named f32 tensors (for eval and verify);
//! - [`forward`]: moeq's own forward pass; [`verify`]: `moeq verify` and `moeq eval`;
//! - [`imatrix`]: importance matrices computed with that forward, streamed layer by layer;
//! - [`inspect`]: report what a model holds; [`bench`](mod@bench): kernel throughput.

#[macro_use]
#[allow(unused_macros, dead_code)] // (the library prints to standard output nowhere yet)
mod print;

/// The first failure of a write to standard output by this library's printing, other than a
/// closed reader (EPIPE, which is no failure): e.g. a full disk under `moeq inspect > FILE`.
pub fn stdout_error() -> Option<&'static str> {
    print::stdout_error()
}

pub mod bench;
pub mod cli;
pub mod families;
pub mod forward;
pub mod imatrix;
pub mod inspect;
pub mod model;
pub mod plan;
pub mod source;
pub mod verify;
pub mod vocab;
pub mod write;
