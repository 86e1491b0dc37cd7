//! OpenAI's gpt-oss (20b, 120b): MoE with MXFP4 experts and attention sinks, in three released
//! layouts (OpenAI `original/`, Hugging Face MXFP4, Hugging Face bf16 fine-tunes).
//!
//! - [`config`]: the typed `config.json` of either layout;
//! - [`layout`]: the layouts, brought to Hugging Face names; the tensors a checkpoint holds;
//! - [`gguf`]: llama.cpp's names, metadata and recipes (what `convert_hf_to_gguf.py` writes);
//! - [`mlx`]: mlx-lm's per-module choices; [`hf_build`]: the published Hugging Face layout;
//! - [`forward`]: its blocks for eval and verify.

pub mod config;
pub mod forward;
pub mod gguf;
pub mod hf_build;
pub mod layout;
pub mod mlx;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType, pick};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::{Metadata, O200K_REGEX, gpt2_vocab};
use crate::write::safetensors::Item;
use config::GptOssConfig;

/// The gpt-oss family.
pub struct GptOss;

/// Whether `config.json` is in OpenAI's original form (`num_experts`, `experts_per_token`, no
/// `architectures`) rather than Hugging Face's. This is the form of the file; the tensors'
/// layout is decided from the tensors ([`Family::layout`]).
pub fn original_form(config: &Keys) -> bool {
    config.raw("architectures").is_none() && GptOss.classless(config).is_some()
}

/// GGUF key → OpenAI original `config.json` key, for `inspect`.
const ORIGINAL_HPARAMS: &[(&str, &str)] = &[
    ("block_count", "num_hidden_layers"),
    ("context_length", "initial_context_length"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("expert_count", "num_experts"),
    ("expert_used_count", "experts_per_token"),
    ("attention.sliding_window", "sliding_window"),
    ("rope.freq_base", "rope_theta"),
    ("rope.scaling.factor", "rope_scaling_factor"),
    ("vocab_size", "vocab_size"),
    ("swiglu_limit", "swiglu_limit"),
];

impl Family for GptOss {
    fn name(&self) -> &'static str {
        "gpt-oss"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["GptOssForCausalLM"]
    }

    fn classless(&self, config: &Keys) -> Option<&'static str> {
        (config.raw("num_experts").is_some() && config.raw("experts_per_token").is_some())
            .then_some("GptOssForCausalLM")
    }

    fn classless_description(&self) -> Option<&'static str> {
        Some("OpenAI's original gpt-oss layout")
    }

    /// From the tensor names, as llama.cpp's `GptOssModel` reads them: OpenAI's original
    /// names (`block.N.*`, `embedding.weight`), MXFP4 experts (`*_blocks`/`*_scales`), or
    /// plain experts (`gate_up_proj`, a bf16 fine-tune, whatever `quantization_config` says).
    fn layout(&self, config: &Keys, tensor_names: &[&str]) -> SourceLayout {
        if tensor_names.is_empty() {
            return if original_form(config) {
                SourceLayout::OpenAiOriginal
            } else if config
                .object("quantization_config")
                .ok()
                .flatten()
                .and_then(|q| q.str("quant_method").ok().flatten())
                == Some("mxfp4")
            {
                SourceLayout::HfMxfp4
            } else {
                SourceLayout::Hf
            };
        }
        if tensor_names.iter().any(|n| n.starts_with("block.") || *n == "embedding.weight") {
            SourceLayout::OpenAiOriginal
        } else if tensor_names.iter().any(|n| n.ends_with("_blocks") || n.ends_with("_scales")) {
            SourceLayout::HfMxfp4
        } else {
            SourceLayout::Hf
        }
    }

    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        if original_form(config) {
            pick(config, ORIGINAL_HPARAMS)
        } else {
            crate::families::common::inspect_hparams(config)
        }
    }

    fn gguf_arch(&self) -> &'static str {
        "gpt-oss"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        let vocab_size = crate::vocab::config_vocab_size(dir, config)?;
        gpt2_vocab(dir, config, vocab_size, pre, ("gpt-4o", O200K_REGEX))
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        gguf::convert(model, config, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        Ok((GptOssConfig::load(config)?.0.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "mlp.experts"
    }

    fn mlx_choice(&self, module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
        mlx::choice(module, ty, dtype)
    }

    fn hf_config(&self, config: &ModelConfig, quantized: bool) -> Result<Json> {
        hf_build::hf_config(config, quantized)
    }

    fn hf_build<'a>(&self, model: &'a SafetensorsModel, config: &ModelConfig) -> Option<Result<Vec<Item<'a>>>> {
        Some(hf_build::plan(model, config))
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::GptOssBlocks
    }
}
