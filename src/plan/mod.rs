//! The plan stage: how each output tensor is made ([`recipe`]), which type it gets and why
//! ([`quant_plan`] and [`quant_rules`], llama-quantize's rules and options), importance
//! matrices ([`imatrix_file`], `--imatrix`), type conversions ([`transcode`]), and the
//! conversions themselves ([`convert`] for GGUF, [`mlx`] for MLX builds).

pub mod convert;
pub mod imatrix_file;
pub mod mlx;
pub mod optimize;
pub mod quant_plan;
pub mod quant_rules;
pub mod recipe;
pub mod rounding;
pub mod transcode;
