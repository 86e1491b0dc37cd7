//! Meta's Llama (dense), llama.cpp's `llama` architecture. Its conversion and attention are
//! shared with the other families of that architecture (Mixtral), as in llama.cpp's converter.
//!
//! - [`config`]: the typed `config.json`;
//! - [`gguf`]: llama.cpp's names, metadata and recipes (q/k permutation, Llama 3.1 RoPE
//!   factors), and [`gguf::LlamaArch`] for families that extend them;
//! - [`forward`]: its blocks for eval and verify.

pub mod config;
pub mod forward;
pub mod gguf;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType};
use crate::families::{Family, ModelConfig};
use crate::forward::Blocks;
use crate::vocab::{Metadata, llama_vocab};
use config::LlamaConfig;

/// The Llama family.
pub struct Llama;

impl Family for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["LlamaForCausalLM"]
    }

    fn gguf_arch(&self) -> &'static str {
        "llama"
    }

    fn runs_gguf(&self, arch: &str, expert_count: u64) -> bool {
        arch == "llama" && expert_count == 0
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
        let (hp, warnings) = LlamaConfig::load(config)?;
        gguf::convert(model, config, &hp, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        let (hp, _) = LlamaConfig::load(config)?;
        Ok((hp.metadata(1, None), hp.head_dim().unwrap_or(0)))
    }

    fn computed_recipes(&self, config: &ModelConfig) -> Result<Vec<crate::plan::recipe::Recipe<'static>>> {
        let (hp, _) = LlamaConfig::load(config)?;
        Ok(gguf::rope_freqs_recipe(&hp).into_iter().collect())
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::LlamaBlocks
    }
}
