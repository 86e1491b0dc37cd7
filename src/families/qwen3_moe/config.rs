//! Qwen3-MoE's typed config: the config Qwen's MoE families share
//! ([`crate::families::qwen2_moe::config::QwenMoeConfig`]) read as Qwen3-MoE's: `head_dim`,
//! q/k norms, no attention bias, no shared expert, `norm_topk_prob`. Dense layers among the
//! MoE ones (`mlp_only_layers`, `decoder_sparse_step` > 1) and unnormalized top-k weights are
//! read (mlx-lm runs them) but no GGUF can hold them
//! ([`QwenMoeConfig::gguf_refusal`]).

use anyhow::Result;

use crate::families::ModelConfig;
use crate::families::qwen2_moe::config::QwenKind;
pub use crate::families::qwen2_moe::config::QwenMoeConfig;

/// Reads a Qwen3-MoE checkpoint's `config.json` once, with the file named in errors. Returns
/// the config and warnings.
pub fn load(config: &ModelConfig) -> Result<(QwenMoeConfig, Vec<String>)> {
    QwenMoeConfig::load(config, QwenKind::Qwen3)
}
