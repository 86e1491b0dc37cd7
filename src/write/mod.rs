//! The write stage: stream recipes into a GGUF ([`gguf`]) or a safetensors folder
//! ([`safetensors`]) on all cores, with a [`progress`] bar.

pub mod gguf;
pub mod progress;
pub mod safetensors;
