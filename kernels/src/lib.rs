//! moeq-kernels: the numeric heart of moeq. Block types, ggml-exact reference quantizers,
//! SIMD variants that match them byte for byte, conversions. No I/O.
//!
//! - [`scalar`]: the reference for every type, ported operation for operation from ggml's
//!   `quantize_row_*_ref` / `dequantize_row_*` (what llama-quantize writes).
//! - [`backend`]: scalar, AVX2 and AVX-512 tables (one kernel per type and operation, each
//!   naming the backend whose code it is; a table inherits the entries of the one below it
//!   where it has no faster kernel), one picked at run time (`MOEQ_KERNELS=scalar|avx2|avx512`
//!   forces one).
//! - [`openai`]: MXFP4 in OpenAI's gpt-oss layout, and its lossless repack to ggml's.
//! - [`gptq`]: GPTQ rounding (Frantar et al. 2022) that writes ordinary ggml blocks.
//! - [`mlx`]: MLX's affine and MXFP4 layouts, as `mlx.core.quantize` writes them.
#![deny(missing_docs)]

pub mod backend;
pub mod convert;
pub mod dot;
pub mod fp8;
pub mod gptq;
pub mod mlx;
pub mod openai;
pub mod scalar;
mod types;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use backend::{Backend, active, available};
pub use types::{KernelError, QuantType};
