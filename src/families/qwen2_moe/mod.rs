//! Qwen's Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B), llama.cpp's `qwen2moe` architecture:
//! routed experts beside a shared expert with a sigmoid gate, q/k/v biases. Its conversion is
//! the one Qwen3-MoE extends ([`crate::families::qwen3_moe`]), as in llama.cpp's converter.
//!
//! - [`config`]: the typed `config.json` both families share, and what no GGUF can hold;
//! - [`gguf`]: llama.cpp's names, metadata and recipes (experts stacked);
//! - [`forward`]: its blocks for eval and verify, and the attention and routing Qwen3-MoE
//!   shares.
//!
//! Vocabulary: byte-level BPE (`gpt2`) with the `qwen2` pre-tokenizer. In MLX builds its
//! experts are `mlp.switch_mlp`, and mlx-lm quantizes its router like any linear layer (moeq
//! warns).

pub mod config;
pub mod forward;
pub mod gguf;

use std::path::Path;

use anyhow::{Result, bail};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType, pick};
use crate::families::{Family, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::source::config::Keys;
use crate::vocab::{Metadata, gpt2_vocab};
use config::{QwenKind, QwenMoeConfig};

/// The split regex of Qwen's tokenizers (Qwen1.5 to Qwen3), which llama.cpp implements as the
/// `qwen2` pre-tokenizer (`src/llama-vocab.cpp`: "original regex from tokenizer.json").
pub const QWEN2_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// GGUF key → `config.json` key of Qwen's MoE families, for `inspect`, beyond the common ones.
const QWEN_HPARAMS: &[(&str, &str)] = &[
    ("expert_count", "num_experts"),
    ("expert_feed_forward_length", "moe_intermediate_size"),
    ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    ("norm_topk_prob", "norm_topk_prob"),
    ("mlp_only_layers", "mlp_only_layers"),
    ("decoder_sparse_step", "decoder_sparse_step"),
];

/// `inspect`'s hyperparameters of Qwen's MoE families.
pub fn qwen_inspect_hparams(config: &Keys) -> Vec<(&'static str, Json)> {
    let mut h = crate::families::common::inspect_hparams(config);
    for (k, v) in pick(config, QWEN_HPARAMS) {
        if !h.iter().any(|(name, _)| *name == k) {
            h.push((k, v));
        }
    }
    h
}

/// The `tokenizer.*` keys of Qwen's families (`_set_vocab_gpt2`, pre-tokenizer `qwen2`).
pub fn qwen_vocab(dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let vocab_size = crate::vocab::config_vocab_size(dir, config)?;
    gpt2_vocab(dir, config, vocab_size, pre, ("qwen2", QWEN2_REGEX))
}

/// The Qwen2-MoE family.
pub struct Qwen2Moe;

/// Qwen2-MoE's config, with what neither llama.cpp nor mlx-lm runs refused.
fn load(config: &ModelConfig) -> Result<(QwenMoeConfig, Vec<String>)> {
    let (hp, warnings) = QwenMoeConfig::load(config, QwenKind::Qwen2)?;
    let path = config.path();
    if !hp.dense_layers.is_empty() {
        bail!(
            "{}: layers {:?} are dense (mlp_only_layers / decoder_sparse_step); neither llama.cpp's qwen2moe nor \
             mlx-lm's qwen2_moe runs Qwen2-MoE with dense layers",
            path.display(),
            hp.dense_layers
        );
    }
    if hp.norm_topk_prob {
        bail!(
            "{}: norm_topk_prob is true; neither llama.cpp's qwen2moe nor mlx-lm's qwen2_moe renormalizes the \
             top-k expert weights of Qwen2-MoE",
            path.display()
        );
    }
    Ok((hp, warnings))
}

impl Family for Qwen2Moe {
    fn name(&self) -> &'static str {
        "qwen2-moe"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["Qwen2MoeForCausalLM"]
    }

    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        qwen_inspect_hparams(config)
    }

    fn gguf_arch(&self) -> &'static str {
        "qwen2moe"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        qwen_vocab(dir, config, pre)
    }

    fn gguf_refusal(&self, config: &ModelConfig) -> Result<()> {
        let (hp, _) = load(config)?;
        match hp.gguf_refusal() {
            Some(why) => bail!("{}: {why}", config.path().display()),
            None => Ok(()),
        }
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        let (hp, warnings) = load(config)?;
        gguf::convert(model, config, &hp, gguf::LAYER_NAMES, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        let (hp, _) = load(config)?;
        Ok((hp.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "mlp.switch_mlp"
    }

    fn mlx_router(&self) -> Option<&'static str> {
        Some(".mlp.gate")
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::Qwen2MoeBlocks
    }
}
