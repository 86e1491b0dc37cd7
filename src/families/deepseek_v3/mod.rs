//! DeepSeek-V3 (`DeepseekV3ForCausalLM`: V3, R1, and models on their architecture), llama.cpp's
//! `deepseek2` architecture: multi-head latent attention, dense leading layers, then MoE with
//! shared experts and group-limited sigmoid routing; released as FP8 (E4M3 weights with one
//! f32 scale per 128×128 block), read directly.
//!
//! - [`config`]: the typed `config.json` (what llama.cpp cannot compute as transformers does
//!   is refused);
//! - [`gguf`]: llama.cpp's names, metadata and recipes (`kv_b_proj`'s split, expert stacking,
//!   FP8 decoding, the multi-token-prediction layer left out);
//! - [`forward`]: its blocks for eval and verify.
//!
//! In MLX builds (mlx-lm's `deepseek_v3`): experts under `mlp.switch_mlp`, `kv_b_proj`'s halves
//! as `self_attn.embed_q`/`unembed_out`, the router (`mlp.gate`, not a linear layer there) never
//! quantized and its `e_score_correction_bias` kept in f32.

pub mod config;
pub mod forward;
pub mod gguf;
pub mod glm4_moe_lite;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::common::{Converted, OutType, pick};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::{Metadata, gpt2_vocab};
use config::DeepseekV3Config;

/// The DeepSeek-V3 family.
pub struct DeepseekV3;

/// The first split of DeepSeek-V3's pre-tokenizer (digits in threes; then CJK runs and its
/// word/punctuation split), which llama.cpp implements as `deepseek-v3`.
pub const DEEPSEEK_V3_REGEX: &str = "\\p{N}{1,3}";

/// GGUF key → `config.json` key, for `inspect`.
const HPARAMS: &[(&str, &str)] = &[
    ("block_count", "num_hidden_layers"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("expert_feed_forward_length", "moe_intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.q_lora_rank", "q_lora_rank"),
    ("attention.kv_lora_rank", "kv_lora_rank"),
    ("attention.key_length_mla", "qk_nope_head_dim"),
    ("rope.dimension_count", "qk_rope_head_dim"),
    ("attention.value_length_mla", "v_head_dim"),
    ("expert_count", "n_routed_experts"),
    ("expert_shared_count", "n_shared_experts"),
    ("expert_used_count", "num_experts_per_tok"),
    ("expert_group_count", "n_group"),
    ("expert_group_used_count", "topk_group"),
    ("leading_dense_block_count", "first_k_dense_replace"),
    ("expert_weights_scale", "routed_scaling_factor"),
    ("nextn_predict_layers", "num_nextn_predict_layers"),
    ("rope.freq_base", "rope_theta"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
];

impl Family for DeepseekV3 {
    fn name(&self) -> &'static str {
        "deepseek-v3"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["DeepseekV3ForCausalLM"]
    }

    fn layout(&self, config: &Keys, tensor_names: &[&str]) -> SourceLayout {
        let fp8 = if tensor_names.is_empty() {
            config.object("quantization_config").ok().flatten().and_then(|q| q.str("quant_method").ok().flatten())
                == Some("fp8")
        } else {
            tensor_names.iter().any(|n| n.ends_with("_scale_inv"))
        };
        if fp8 { SourceLayout::HfFp8 } else { SourceLayout::Hf }
    }

    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        let mut hparams = pick(config, HPARAMS);
        // qk_nope_head_dim shown as llama.cpp's key_length_mla (nope + rope).
        if let Some(k) = hparams.iter_mut().find(|(k, _)| *k == "attention.key_length_mla") {
            let rope = config.raw("qk_rope_head_dim").and_then(Json::as_u64).unwrap_or(0);
            k.1 = k.1.as_u64().map_or(k.1.clone(), |n| Json::from(n + rope));
        }
        for (name, key) in [("rope.scaling", "rope_scaling"), ("quantization", "quantization_config")] {
            if let Some(v) = config.raw(key).filter(|v| v.is_object()) {
                hparams.push((name, v.clone()));
            }
        }
        hparams
    }

    fn gguf_arch(&self) -> &'static str {
        "deepseek2"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        let vocab_size = crate::vocab::config_vocab_size(dir, config)?;
        gpt2_vocab(dir, config, vocab_size, pre, ("deepseek-v3", DEEPSEEK_V3_REGEX))
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        gguf::convert(model, config, outtype, vocab, false)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        Ok((DeepseekV3Config::load(config)?.0.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "mlp.switch_mlp"
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
        &forward::DeepseekV3Blocks
    }
}
