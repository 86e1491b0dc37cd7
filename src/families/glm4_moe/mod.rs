//! Z.ai's GLM-4.5 / GLM-4.5-Air / GLM-4.6 (`Glm4MoeForCausalLM`, model_type `glm4_moe`),
//! llama.cpp's `glm4moe` architecture: GQA with q/k/v biases and optional q/k norms, RoPE over
//! half of each head, leading dense layers, then MoE with shared experts and DeepSeek-V3's
//! group-limited sigmoid routing, and a multi-token-prediction layer after the last one, which
//! llama.cpp's converter exports as an extra block.
//!
//! - [`config`]: the typed `config.json` (what llama.cpp cannot compute as transformers does
//!   is refused);
//! - [`gguf`]: llama.cpp's names, metadata and recipes (experts stacked, the MTP layer's
//!   `nextn.*` tensors);
//! - [`forward`]: its blocks for eval and verify (the MTP layer is not run).
//!
//! Vocabulary: byte-level BPE (`gpt2`) with the `glm4` pre-tokenizer and the special tokens
//! `_set_vocab_glm` sets (`[gMASK]` as BOS, `<|user|>` as EOT, `<|endoftext|>` as UNK,
//! `<|observation|>` as EOM). In MLX builds (mlx-lm's `glm4_moe`): experts under
//! `mlp.switch_mlp`, the router (`mlp.gate`, not a linear layer there) never quantized and its
//! `e_score_correction_bias` kept in f32, the MTP layer dropped (mlx-lm's `sanitize`).

pub mod config;
pub mod forward;
pub mod gguf;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType, pick};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::{LLAMA3_REGEX, Metadata, bpe::gpt2_vocab_with};
use config::Glm4MoeConfig;

/// The GLM-4.5 MoE family.
pub struct Glm4Moe;

/// GGUF key → `config.json` key, for `inspect`.
const HPARAMS: &[(&str, &str)] = &[
    ("block_count", "num_hidden_layers"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("expert_count", "n_routed_experts"),
    ("expert_used_count", "num_experts_per_tok"),
    ("expert_feed_forward_length", "moe_intermediate_size"),
    ("expert_shared_count", "n_shared_experts"),
    ("expert_group_count", "n_group"),
    ("expert_group_used_count", "topk_group"),
    ("leading_dense_block_count", "first_k_dense_replace"),
    ("expert_weights_scale", "routed_scaling_factor"),
    ("expert_weights_norm", "norm_topk_prob"),
    ("nextn_predict_layers", "num_nextn_predict_layers"),
    ("partial_rotary_factor", "partial_rotary_factor"),
    ("use_qk_norm", "use_qk_norm"),
    ("rope.freq_base", "rope_theta"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
];

/// The special tokens `_set_vocab_glm` sets by their text, after the tokenizer's own.
const GLM_SPECIALS: &[(&str, &str)] =
    &[("bos", "[gMASK]"), ("eot", "<|user|>"), ("unk", "<|endoftext|>"), ("eom", "<|observation|>")];

/// GLM's vocabulary as `_set_vocab_glm` writes it (GLM-4.5/4.6, GLM-4.7-Flash): byte-level BPE
/// with the `glm4` pre-tokenizer (`pre` overrides it) and [`GLM_SPECIALS`] after the tokenizer's
/// own special tokens. Returns the `tokenizer.*` keys and warnings.
pub fn glm_vocab(dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let vocab_size = crate::vocab::config_vocab_size(dir, config)?;
    gpt2_vocab_with(dir, config, vocab_size, pre, ("glm4", LLAMA3_REGEX), GLM_SPECIALS)
}

/// Whether an MLX build keeps `gguf` (llama.cpp's name): mlx-lm's `sanitize` of GLM-4.5 and
/// GLM-4.7-Flash drops `model.layers.{num_hidden_layers…}` (the MTP layers).
pub fn mlx_keeps_main_layers(config: &ModelConfig, gguf: &str) -> bool {
    let mtp = config.keys().opt_u64("num_hidden_layers").ok().flatten();
    let layer = gguf.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse::<u64>().ok());
    !matches!((layer, mtp), (Some(l), Some(n)) if l >= n)
}

/// Reads the config, with its warnings.
fn load(config: &ModelConfig) -> Result<(Glm4MoeConfig, Vec<String>)> {
    Glm4MoeConfig::load(config)
}

impl Family for Glm4Moe {
    fn name(&self) -> &'static str {
        "glm4-moe"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["Glm4MoeForCausalLM"]
    }

    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        pick(config, HPARAMS)
    }

    fn gguf_arch(&self) -> &'static str {
        "glm4moe"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        glm_vocab(dir, config, pre)
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        let (hp, warnings) = load(config)?;
        gguf::convert(model, config, &hp, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        Ok((load(config)?.0.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "mlp.switch_mlp"
    }

    fn mlx_keeps(&self, config: &ModelConfig, gguf: &str) -> bool {
        mlx_keeps_main_layers(config, gguf)
    }

    fn mlx_choice(&self, module: &MlxModule, _ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
        // mlx-lm's MoEGate is not a linear layer: never quantized.
        module.path.ends_with(".mlp.gate").then_some(MlxChoice { ty: dtype, params: None })
    }

    fn mlx_cast(&self, name: &str) -> bool {
        // mlx-lm's cast_predicate: the correction bias keeps its f32.
        !name.ends_with("e_score_correction_bias")
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::Glm4MoeBlocks
    }
}
