//! Any model moeq reads as llama.cpp-named f32 tensors ([`weights`]), including MLX builds
//! read back ([`mlx_read`]): the input of the forward pass and of `moeq verify`.

pub mod mlx_read;
pub mod weights;
