//! moeq: Mixture-of-Experts checkpoints → GGUF and safetensors builds, streamed and verified.
//!
//! The pipeline, one module per stage:
//! - [`source`]: open any input (memory-mapped safetensors shards or GGUF);
//! - [`arch`]: which model it is and its hyperparameters;
//! - [`quant_plan`], [`quant_rules`]: which type each tensor gets and why (llama-quantize's
//!   rules and options), with importance weights from [`imatrix_file`];
//! - [`transcode`]: between tensor types and f32, through the kernels;
//! - [`convert`]: plan the output and stream tensor bytes into it ([`write_gguf`] for
//!   llama.cpp; [`mlx`] and [`gpt_oss_hf`] plan safetensors folders that
//!   [`write_safetensors`] streams);
//! - [`inspect`]: report what a model holds;
//! - [`bench`]: kernel throughput on this machine.

pub mod arch;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod convert;
pub mod eval;
pub mod forward;
pub mod gpt_oss;
pub mod gpt_oss_hf;
pub mod imatrix_file;
pub mod inspect;
pub mod llama;
pub mod mlx;
pub mod mlx_read;
pub mod model_card;
pub mod progress;
pub mod quant_plan;
pub mod quant_rules;
pub mod recipe;
pub mod source;
pub mod transcode;
pub mod verify;
pub mod vocab;
pub mod weights;
pub mod write_gguf;
pub mod write_safetensors;
