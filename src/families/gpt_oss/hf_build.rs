//! Hugging Face gpt-oss builds (`--format hf`): the published layout transformers and vLLM
//! load, from any gpt-oss checkpoint. Experts as MXFP4 `*_blocks` / `*_scales` in OpenAI's
//! nibble order with gate and up interleaved; everything else as stored (bf16).
//!
//! From OpenAI's original layout this is a lossless rename (the fused qkv split into q, k, v);
//! from a bf16 fine-tune the experts are quantized back with OpenAI's own quantizer.

use anyhow::{Context, Result};
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_formats::safetensors::{Dtype, SafetensorsModel, StTensorSpec};
use serde_json::{Value as Json, json};

use super::config::GptOssConfig;
use super::layout::{expected, hf_tensors};
use crate::families::common::{SourceTensor, check_tensors, float_dtype};
use crate::families::{ModelConfig, SourceLayout};
use crate::plan::recipe::{Input, Recipe, View};
use crate::write::safetensors::{Encoding, Item};

/// The tensors of the Hugging Face MXFP4 layout, in the source's order.
pub fn plan<'a>(model: &'a SafetensorsModel, config: &ModelConfig) -> Result<Vec<Item<'a>>> {
    let (hp, _) = GptOssConfig::load(config)?;
    let sources = hf_tensors(model, config.layout, &hp)?;
    // Every tensor with the shape config.json gives it, as for a GGUF: the rows below are cut
    // by config.json's sizes (a hidden_size doubled over the tensors read past them).
    let mxfp4 = config.layout != SourceLayout::Hf;
    check_tensors(model, &sources, &expected(&hp, mxfp4), &format!("gpt-oss {}", config.layout.describe()))?;
    let find = |name: &str| sources.iter().find(|s| s.name == name);
    let (h, i, e) = (hp.n_embd, hp.n_ff, hp.n_expert);
    let mut items = Vec::new();
    for s in &sources {
        if s.name.ends_with("_scales") {
            continue;
        }
        if let Some(base) = s.name.strip_suffix("_blocks") {
            let scales = find(&format!("{base}_scales")).with_context(|| format!("{}: no scales", s.origin))?;
            let (rows, cols) = if base.ends_with("down_proj") { (h, i) } else { (2 * i, h) };
            let input =
                Input::OpenAiMxfp4 { blocks: s.stored, scales: scales.stored, view: View::plain(e * rows, cols / 32) };
            items.push(mxfp4_item(base, s, input, e, rows, cols, Encoding::StoredMxfp4));
            continue;
        }
        if s.name.ends_with("experts.gate_up_proj") || s.name.ends_with("experts.down_proj") {
            // Stored [E, in, out] (x @ W); the MXFP4 layout is [E, out, in/32 blocks].
            let (rows, cols) = if s.name.ends_with("down_proj") { (h, i) } else { (2 * i, h) };
            let view = View {
                outer: e,
                rows,
                cols,
                outer_stride: rows * cols,
                row_stride: 1,
                col_stride: rows,
                offset: 0,
                rope_group: 0,
            };
            let input = Input::Values { src: s.stored, view };
            items.push(mxfp4_item(&s.name, s, input, e, rows, cols, Encoding::OpenAiMxfp4));
            continue;
        }
        // Everything else as stored.
        let dtype = float_dtype(s.stored.ty);
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let spec = TensorSpec { name: s.name.clone(), ne, ggml_type: s.stored.ty };
        let out = StTensorSpec { name: s.name.clone(), dtype, shape: s.shape.iter().map(|&d| d as usize).collect() };
        items.push(Item {
            recipe: Recipe::new(spec, Input::Copy(s.stored), true, s.origin.clone()),
            encoding: Encoding::Rows,
            outputs: vec![out],
        });
    }
    Ok(items)
}

/// An expert tensor written as `{base}_blocks` [E, rows, cols/32, 16] and `{base}_scales`.
fn mxfp4_item<'a>(
    base: &str,
    s: &SourceTensor<'a>,
    input: Input<'a>,
    e: u64,
    rows: u64,
    cols: u64,
    encoding: Encoding,
) -> Item<'a> {
    let spec = TensorSpec { name: base.to_string(), ne: vec![cols, rows, e], ggml_type: GgmlType::MXFP4 };
    let (e, rows, g) = (e as usize, rows as usize, cols as usize / 32);
    Item {
        recipe: Recipe::new(spec, input, true, s.origin.clone()),
        encoding,
        outputs: vec![
            StTensorSpec { name: format!("{base}_blocks"), dtype: Dtype::U8, shape: vec![e, rows, g, 16] },
            StTensorSpec { name: format!("{base}_scales"), dtype: Dtype::U8, shape: vec![e, rows, g] },
        ],
    }
}

/// The `quantization_config` of the published checkpoints.
pub fn quantization_config() -> Json {
    json!({
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4"
    })
}

/// The Hugging Face `config.json` of a gpt-oss checkpoint: the source's own for the Hugging
/// Face layouts; built from the hyperparameters for OpenAI's original layout (as
/// transformers' conversion script writes it). `quantized`: add the MXFP4 `quantization_config`.
pub fn hf_config(config: &ModelConfig, quantized: bool) -> Result<Json> {
    let mut json = if super::original_form(&config.keys()) {
        let (hp, _) = GptOssConfig::load(config)?;
        let (factor, orig, fast, slow) = hp.yarn.unwrap_or((1.0, hp.n_ctx, 32.0, 1.0));
        let layer_types: Vec<&str> =
            (0..hp.n_layer).map(|l| if l % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect();
        let mut j = json!({
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": true,
            "attention_dropout": 0.0,
            "experts_per_token": hp.n_expert_used,
            "head_dim": hp.head_dim,
            "hidden_act": "silu",
            "hidden_size": hp.n_embd,
            "initial_context_length": orig,
            "initializer_range": 0.02,
            "intermediate_size": hp.n_ff,
            "layer_types": layer_types,
            "max_position_embeddings": hp.n_ctx,
            "model_type": "gpt_oss",
            "num_attention_heads": hp.n_head,
            "num_experts_per_tok": hp.n_expert_used,
            "num_hidden_layers": hp.n_layer,
            "num_key_value_heads": hp.n_head_kv,
            "num_local_experts": hp.n_expert,
            "output_router_logits": false,
            "rms_norm_eps": hp.rms_eps,
            "rope_scaling": {"beta_fast": fast, "beta_slow": slow, "factor": factor,
                             "original_max_position_embeddings": orig, "rope_type": "yarn", "truncate": false},
            "rope_theta": config.json.get("rope_theta").cloned().unwrap_or(json!(hp.rope_theta)),
            "router_aux_loss_coef": 0.9,
            "sliding_window": hp.sliding_window,
            "swiglu_limit": config.json.get("swiglu_limit").cloned().unwrap_or(json!(7.0)),
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
            "use_cache": true,
            "vocab_size": hp.vocab_size,
        });
        for (key, id) in special_token_ids(&config.dir) {
            j[key] = json!(id);
        }
        j
    } else {
        config.json.clone()
    };
    if let Some(map) = json.as_object_mut() {
        map.remove("quantization_config");
        map.remove("quantization");
        if quantized {
            map.insert("quantization_config".into(), quantization_config());
        }
    }
    Ok(json)
}

/// `bos_token_id`, `eos_token_id`, `pad_token_id` from the tokenizer files beside the weights.
fn special_token_ids(dir: &std::path::Path) -> Vec<(&'static str, u64)> {
    let read = |name: &str| -> Option<Json> { serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok() };
    let (Some(tok_config), Some(tokenizer)) = (read("tokenizer_config.json"), read("tokenizer.json")) else {
        return Vec::new();
    };
    let id_of = |content: &str| -> Option<u64> {
        tokenizer
            .get("added_tokens")?
            .as_array()?
            .iter()
            .find(|t| t.get("content").and_then(Json::as_str) == Some(content))?
            .get("id")?
            .as_u64()
    };
    let token = |key: &str| -> Option<String> {
        let v = tok_config.get(key)?;
        v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string))
    };
    [("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("pad_token_id", "pad_token")]
        .into_iter()
        .filter_map(|(key, which)| Some((key, id_of(&token(which)?)?)))
        .collect()
}
