//! Z.ai's GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`, model_type `glm4_moe_lite`, 30B-A3B), which
//! llama.cpp's converter (`Glm4MoeLiteModel`, a `DeepseekV2Model`) writes as the `deepseek2`
//! architecture: DeepSeek-V3's multi-head latent attention and group-limited sigmoid routing
//! with shared experts, so this variant lives with DeepSeek-V3's config, recipes and forward,
//! and differs where the converter does:
//!
//! - GLM's vocabulary ([`glm4_moe::glm_vocab`]: `_set_vocab_glm`'s special tokens);
//! - the multi-token-prediction layer exported as an extra block (`block_count` counts it,
//!   `nextn_predict_layers`), with GLM-4.5's `nextn.*` names; not run by the forward;
//! - no `expert_gating_func` unless `config.json` names `scoring_func` (transformers always
//!   routes by sigmoid; llama.cpp does without the key only at GLM-4.7-Flash's own size, so
//!   moeq refuses other sizes without it); the dense layers from `mlp_layer_types`.
//!
//! In MLX builds (mlx-lm's `glm4_moe_lite`): DeepSeek-V3's names and choices, the MTP layer
//! dropped (mlx-lm's `sanitize`).

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use super::DeepseekV3;
use super::config::DeepseekV3Config;
use crate::families::common::{Converted, OutType};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout, glm4_moe};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::Metadata;

/// The GLM-4.7-Flash family.
pub struct Glm4MoeLite;

impl Family for Glm4MoeLite {
    fn name(&self) -> &'static str {
        "glm4-moe-lite"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["Glm4MoeLiteForCausalLM"]
    }

    fn inspect_hparams(&self, config: &Keys, layout: SourceLayout) -> Vec<(&'static str, Json)> {
        DeepseekV3.inspect_hparams(config, layout)
    }

    fn gguf_arch(&self) -> &'static str {
        "deepseek2"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        glm4_moe::glm_vocab(dir, config, pre)
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        super::gguf::convert(model, config, outtype, vocab, true)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        Ok((DeepseekV3Config::load_glm_lite(config)?.0.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        super::gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        DeepseekV3.mlx_experts()
    }

    fn mlx_keeps(&self, config: &ModelConfig, gguf: &str) -> bool {
        glm4_moe::mlx_keeps_main_layers(config, gguf)
    }

    fn mlx_choice(&self, module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
        DeepseekV3.mlx_choice(module, ty, dtype)
    }

    fn mlx_cast(&self, name: &str) -> bool {
        DeepseekV3.mlx_cast(name)
    }

    fn forward(&self) -> &'static dyn Blocks {
        DeepseekV3.forward()
    }
}
