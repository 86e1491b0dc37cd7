//! Mistral's Mixtral: MoE with per-expert weights, llama.cpp's `llama` architecture with
//! experts. It reuses Llama's conversion (q/k permutation, metadata) and attention, as
//! llama.cpp's converter does, and adds its own:
//!
//! - [`config`]: the typed `config.json` (Llama's plus the experts);
//! - [`gguf`]: its names and the expert stacking;
//! - [`forward`]: its MoE block (softmax, top-k, renormalize).
//!
//! In MLX builds its experts are `block_sparse_moe.switch_mlp`, and mlx-lm quantizes its
//! router like any linear layer (moeq warns).

pub mod config;
pub mod forward;
pub mod gguf;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType};
use crate::families::llama::gguf as llama_gguf;
use crate::families::{Family, ModelConfig};
use crate::forward::Blocks;
use crate::vocab::{Metadata, llama_vocab};
use config::MixtralConfig;

/// The Mixtral family.
pub struct Mixtral;

impl Family for Mixtral {
    fn name(&self) -> &'static str {
        "mixtral"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["MixtralForCausalLM"]
    }

    fn gguf_arch(&self) -> &'static str {
        "llama"
    }

    fn runs_gguf(&self, arch: &str, expert_count: u64) -> bool {
        arch == "llama" && expert_count > 0
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        llama_vocab(dir, config, pre)
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        let (hp, warnings) = MixtralConfig::load(config)?;
        llama_gguf::convert(model, config, &hp, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        let (hp, _) = MixtralConfig::load(config)?;
        Ok((hp.base.metadata(1, Some((hp.n_expert, hp.n_expert_used))), hp.base.head_dim().unwrap_or(0)))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_router(&self) -> Option<&'static str> {
        Some(".block_sparse_moe.gate")
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::MixtralBlocks
    }
}
