//! MiniMax-M2 / M2.1 (`MiniMaxM2ForCausalLM`, model_type `minimax_m2`), llama.cpp's `minimax-m2`
//! architecture: GQA with q/k RMSNorms over the whole projections, RoPE over the first
//! `rotary_dim` values of each head, every layer MoE with sigmoid routing and a correction bias
//! (choosing only), normalized top-k weights, Mixtral's `w1`/`w2`/`w3` SwiGLU experts; released
//! as FP8 (E4M3 weights with one f32 scale per 128×128 block), read directly.
//!
//! - [`config`]: the typed `config.json` (what llama.cpp cannot compute as transformers does
//!   is refused);
//! - [`gguf`]: llama.cpp's names, metadata and recipes (experts stacked, FP8 decoded);
//! - [`forward`]: its blocks for eval and verify.
//!
//! Vocabulary: byte-level BPE (`gpt2`) with the `minimax-m2` pre-tokenizer. In MLX builds
//! (mlx-lm's `minimax`, which `minimax_m2` maps to): experts under
//! `block_sparse_moe.switch_mlp`, the router (`block_sparse_moe.gate`) quantized in 8 bits,
//! groups of 64, whatever the type (mlx-lm's `quant_predicate`), the correction bias kept in
//! f32 (its `cast_predicate`); FP8 weights dequantized (its `sanitize`).

pub mod config;
pub mod forward;
pub mod gguf;

use std::path::Path;

use anyhow::Result;
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::{Value as Json, json};

use crate::families::common::{Converted, OutType, pick};
use crate::families::{Family, MlxChoice, MlxModule, ModelConfig, SourceLayout};
use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::Keys;
use crate::vocab::{Metadata, gpt2_vocab};
use config::MiniMaxM2Config;

/// The MiniMax-M2 family.
pub struct MiniMaxM2;

/// MiniMax-M2's split regex (its tokenizer.json's), which llama.cpp implements as `minimax-m2`.
pub const MINIMAX_M2_REGEX: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// GGUF key → `config.json` key, for `inspect`.
const HPARAMS: &[(&str, &str)] = &[
    ("block_count", "num_hidden_layers"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("expert_feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("rope.dimension_count", "rotary_dim"),
    ("expert_count", "num_local_experts"),
    ("expert_used_count", "num_experts_per_tok"),
    ("rope.freq_base", "rope_theta"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
];

impl Family for MiniMaxM2 {
    fn name(&self) -> &'static str {
        "minimax-m2"
    }

    fn classes(&self) -> &'static [&'static str] {
        &["MiniMaxM2ForCausalLM"]
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
        if let Some(v) = config.raw("quantization_config").filter(|v| v.is_object()) {
            hparams.push(("quantization", v.clone()));
        }
        hparams
    }

    fn gguf_arch(&self) -> &'static str {
        "minimax-m2"
    }

    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
        let vocab_size = crate::vocab::config_vocab_size(dir, config)?;
        gpt2_vocab(dir, config, vocab_size, pre, ("minimax-m2", MINIMAX_M2_REGEX))
    }

    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>> {
        let (hp, warnings) = MiniMaxM2Config::load(config)?;
        gguf::convert(model, config, &hp, warnings, outtype, vocab)
    }

    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)> {
        Ok((MiniMaxM2Config::load(config)?.0.metadata(1), 0))
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        gguf::LAYER_NAMES
    }

    fn mlx_experts(&self) -> &'static str {
        "block_sparse_moe.switch_mlp"
    }

    fn mlx_choice(&self, module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
        // mlx-lm's minimax quant_predicate: the router in 8 bits, groups of 64; it is asked
        // only for rows that are whole groups of --type's size.
        let q = ty.filter(|t| !matches!(t, MlxType::Float(_)))?;
        if !module.path.ends_with(".block_sparse_moe.gate") {
            return None;
        }
        if module.row_len.is_multiple_of(q.group().unwrap_or(1)) {
            Some(MlxChoice {
                ty: MlxType::Affine { bits: 8, group: 64 },
                params: Some(json!({"group_size": 64, "bits": 8})),
            })
        } else {
            Some(MlxChoice { ty: dtype, params: None })
        }
    }

    fn mlx_cast(&self, name: &str) -> bool {
        // mlx-lm's cast_predicate: the correction bias keeps its f32.
        !name.ends_with("e_score_correction_bias")
    }

    fn forward(&self) -> &'static dyn Blocks {
        &forward::MiniMaxM2Blocks
    }
}
