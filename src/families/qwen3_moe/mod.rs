//! Qwen's Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B), llama.cpp's `qwen3moe` architecture: q/k
//! RMS norms per head, no attention bias, an explicit head size, routed experts with
//! softmax, top-k and the top-k weights renormalized (`norm_topk_prob`). It extends Qwen2-MoE's
//! conversion ([`crate::families::qwen2_moe`]), as llama.cpp's converter does:
//!
//! - [`config`]: the typed `config.json` (Qwen's, read as Qwen3-MoE's);
//! - [`gguf`]: its per-layer names;
//! - [`forward`]: its blocks for eval and verify (dense layers included);
//! - [`mlx`]: mlx-lm's router choice (8 bits, groups of 64).
//!
//! A config with dense layers among the MoE ones (`mlp_only_layers`, `decoder_sparse_step` >
//! 1), which llama.cpp's converter and runtime refuse, is refused for GGUF and converted for
//! MLX (mlx-lm runs it); moeq's forward runs it too.

pub mod config;
pub mod forward;
pub mod gguf;
pub mod mlx;

use std::path::Path;

use anyhow::{Result, bail};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType};
use crate::families::qwen2_moe::{gguf as qwen_gguf, qwen_inspect_hparams, qwen_vocab};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::Metadata;

/// The Qwen3-MoE family.
pub struct Qwen3Moe;

impl Family for Qwen3Moe {
    fn name(&self) -> &'static str {
        "qwen3-moe"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["Qwen3MoeForCausalLM"]
    }

    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        qwen_inspect_hparams(config)
    }

    fn gguf_arch(&self) -> &'static str {
        "qwen3moe"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        qwen_vocab(dir, config, pre)
    }

    fn gguf_refusal(&self, config: &ModelConfig) -> Result<()> {
        let (hp, _) = config::load(config)?;
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
        let (hp, warnings) = config::load(config)?;
        qwen_gguf::convert(model, config, &hp, gguf::LAYER_NAMES, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        let (hp, _) = config::load(config)?;
        Ok((hp.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "mlp.switch_mlp"
    }

    fn mlx_choice(&self, module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
        mlx::choice(module, ty, dtype)
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::Qwen3MoeBlocks
    }
}
