//! The plan stage: how each output tensor is made ([`recipe`]), which type it gets
//! ([`quant_plan`], llama-quantize's rules), type conversions ([`transcode`]), and the
//! conversions themselves ([`convert`] for GGUF, [`mlx`] for MLX builds).

pub mod convert;
pub mod mlx;
pub mod quant_plan;
pub mod recipe;
pub mod transcode;
