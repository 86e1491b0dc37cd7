//! Model architectures moeq knows, detected from a checkpoint's `config.json`, with the
//! hyperparameters that matter for conversion.

pub mod common;
pub mod gpt_oss;
pub mod llama;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;

/// A model family moeq converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// OpenAI gpt-oss (20b, 120b): MoE with MXFP4 experts, attention sinks.
    GptOss,
    /// Mistral's Mixtral: MoE with per-expert weights.
    Mixtral,
    /// Meta's Llama (dense).
    Llama,
}

impl Architecture {
    /// The `general.architecture` llama.cpp uses for it.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::GptOss => "gpt-oss",
            Architecture::Mixtral | Architecture::Llama => "llama",
        }
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::GptOss => "gpt-oss",
            Architecture::Mixtral => "mixtral",
            Architecture::Llama => "llama",
        }
    }
}

/// How a checkpoint's tensors are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    /// OpenAI's `original/` folder: `block.N.*`, fused qkv, MXFP4 `mlp1_weight.blocks/.scales`.
    OpenAiOriginal,
    /// Hugging Face gpt-oss with `quant_method: mxfp4` (`*_blocks`/`*_scales`).
    HfMxfp4,
    /// Hugging Face with plain (bf16/f16/f32) weights.
    Hf,
    /// An MLX build (mlx-lm's layout: stacked experts, quantized `weight`/`scales`/`biases`).
    Mlx,
}

impl SourceLayout {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            SourceLayout::OpenAiOriginal => "OpenAI original layout",
            SourceLayout::HfMxfp4 => "Hugging Face MXFP4 layout",
            SourceLayout::Hf => "Hugging Face layout",
            SourceLayout::Mlx => "MLX build",
        }
    }
}

/// What `config.json` says about a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub arch: Architecture,
    /// The class name in `architectures` (or `GptOssForCausalLM` for the original layout).
    pub class: String,
    /// The tensor layout.
    pub layout: SourceLayout,
    /// Hyperparameters, named as llama.cpp's GGUF keys name them (without the arch prefix).
    pub hparams: Vec<(&'static str, Json)>,
    /// The whole parsed `config.json`.
    pub json: Json,
    /// The folder it was read from (empty when built from JSON alone).
    pub dir: PathBuf,
}

const SUPPORTED: &str = "GptOssForCausalLM, MixtralForCausalLM, LlamaForCausalLM, or OpenAI's original gpt-oss layout";

impl ModelConfig {
    /// Reads `config.json` in `dir`; `Ok(None)` when there is none.
    pub fn detect(dir: &Path) -> Result<Option<ModelConfig>> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let json: Json = serde_json::from_slice(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        let config = Self::from_json(&json).with_context(|| format!("{}", path.display()))?;
        Ok(Some(ModelConfig { dir: dir.to_path_buf(), ..config }))
    }

    /// Interprets a parsed `config.json`.
    pub fn from_json(json: &Json) -> Result<ModelConfig> {
        if !json.is_object() {
            bail!("config.json is not a JSON object");
        }
        let class = match json.get("architectures") {
            Some(Json::Array(list)) => match list.first().and_then(Json::as_str) {
                Some(c) => c.to_string(),
                None => bail!("\"architectures\" names no class"),
            },
            Some(_) => bail!("\"architectures\" is not a list"),
            None if json.get("num_experts").is_some() && json.get("experts_per_token").is_some() => {
                return Ok(Self::openai_original(json));
            }
            None => bail!("no \"architectures\" entry; moeq supports {SUPPORTED}"),
        };
        let (arch, layout) = match class.as_str() {
            "GptOssForCausalLM" => {
                let mxfp4 = json.pointer("/quantization_config/quant_method").and_then(Json::as_str) == Some("mxfp4");
                (Architecture::GptOss, if mxfp4 { SourceLayout::HfMxfp4 } else { SourceLayout::Hf })
            }
            "MixtralForCausalLM" => (Architecture::Mixtral, SourceLayout::Hf),
            "LlamaForCausalLM" => (Architecture::Llama, SourceLayout::Hf),
            other => bail!("unknown architecture '{other}'; moeq supports {SUPPORTED}"),
        };
        // mlx-lm's quantization block marks an MLX build.
        let layout = if json.get("quantization").is_some_and(Json::is_object) { SourceLayout::Mlx } else { layout };
        let keys: &[(&'static str, &str)] = &[
            ("block_count", "num_hidden_layers"),
            ("context_length", "max_position_embeddings"),
            ("embedding_length", "hidden_size"),
            ("feed_forward_length", "intermediate_size"),
            ("attention.head_count", "num_attention_heads"),
            ("attention.head_count_kv", "num_key_value_heads"),
            ("attention.key_length", "head_dim"),
            ("expert_count", "num_local_experts"),
            ("expert_used_count", "num_experts_per_tok"),
            ("attention.sliding_window", "sliding_window"),
            ("rope.freq_base", "rope_theta"),
            ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
            ("vocab_size", "vocab_size"),
            ("tie_word_embeddings", "tie_word_embeddings"),
        ];
        let mut hparams = pick(json, keys);
        if let Some(scaling) = json.get("rope_scaling").filter(|v| v.is_object()) {
            hparams.push(("rope.scaling", scaling.clone()));
        }
        Ok(ModelConfig { arch, class, layout, hparams, json: json.clone(), dir: PathBuf::new() })
    }

    fn openai_original(json: &Json) -> ModelConfig {
        let keys: &[(&'static str, &str)] = &[
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
        ModelConfig {
            arch: Architecture::GptOss,
            class: "GptOssForCausalLM".into(),
            layout: SourceLayout::OpenAiOriginal,
            hparams: pick(json, keys),
            json: json.clone(),
            dir: PathBuf::new(),
        }
    }
}

fn pick(json: &Json, keys: &[(&'static str, &str)]) -> Vec<(&'static str, Json)> {
    keys.iter().filter_map(|&(name, key)| json.get(key).filter(|v| !v.is_null()).map(|v| (name, v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detects_each_family() {
        let c = ModelConfig::from_json(&json!({"architectures": ["GptOssForCausalLM"],
            "quantization_config": {"quant_method": "mxfp4"}, "num_hidden_layers": 24}))
        .unwrap();
        assert_eq!((c.arch, c.layout), (Architecture::GptOss, SourceLayout::HfMxfp4));
        assert_eq!(c.hparams, vec![("block_count", json!(24))]);
        let c = ModelConfig::from_json(&json!({"architectures": ["GptOssForCausalLM"]})).unwrap();
        assert_eq!(c.layout, SourceLayout::Hf);
        let c = ModelConfig::from_json(&json!({"num_experts": 32, "experts_per_token": 4})).unwrap();
        assert_eq!(c.layout, SourceLayout::OpenAiOriginal);
        let c = ModelConfig::from_json(&json!({"architectures": ["MixtralForCausalLM"]})).unwrap();
        assert_eq!(c.arch, Architecture::Mixtral);
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        let e = ModelConfig::from_json(&json!({"architectures": ["Qwen3MoeForCausalLM"]})).unwrap_err();
        assert!(e.to_string().contains("unknown architecture 'Qwen3MoeForCausalLM'"), "{e}");
        assert!(ModelConfig::from_json(&json!({"architectures": []})).is_err());
        assert!(ModelConfig::from_json(&json!({"architectures": "Llama"})).is_err());
        assert!(ModelConfig::from_json(&json!({})).is_err());
        assert!(ModelConfig::from_json(&json!([1, 2])).is_err());
    }
}
