//! gpt-oss → GGUF: what llama.cpp's `convert_hf_to_gguf.py` (`GptOssModel`) writes, from any of
//! the three released layouts: llama.cpp's names, the `gpt-oss.*` keys, and the recipes.
//!
//! Names are first brought to the Hugging Face form ([`super::layout`]), then mapped to
//! llama.cpp's. Experts: gate and up are interleaved row by row (even rows gate, odd rows up)
//! in weights, scales and biases; MXFP4 blocks are repacked to ggml's nibble order with the
//! scale byte first, never requantized; bf16 experts are stored [in, out] and transposed.

use anyhow::{Context, Result};
use moeq_formats::gguf::{GgmlType, TensorSpec, Value};
use moeq_formats::safetensors::SafetensorsModel;

use super::config::GptOssConfig;
use super::layout::{expected, hf_tensors};
use crate::families::common::{
    Converted, OutType, SourceTensor, auto_outtype, check_tensors, converter_type, float_file_type, gguf_name,
    gguf_plan,
};
use crate::families::{ModelConfig, SourceLayout};
use crate::plan::recipe::{Input, Recipe, View};

impl GptOssConfig {
    /// The `gpt-oss.*` keys, in the converter's order, with `general.file_type` among them.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let k = |key: &str| format!("gpt-oss.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![
            (k("block_count"), u(self.n_layer)),
            (k("context_length"), u(self.n_ctx)),
            (k("embedding_length"), u(self.n_embd)),
            (k("feed_forward_length"), u(self.n_ff)),
            (k("attention.head_count"), u(self.n_head)),
            (k("attention.head_count_kv"), u(self.n_head_kv)),
        ];
        if let Some((factor, orig, fast, slow)) = self.yarn {
            m.push((k("rope.scaling.type"), Value::String("yarn".into())));
            m.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
            m.push((k("rope.scaling.original_context_length"), u(orig)));
            m.push((k("rope.scaling.yarn_beta_fast"), Value::F32(fast as f32)));
            m.push((k("rope.scaling.yarn_beta_slow"), Value::F32(slow as f32)));
        }
        m.extend([
            (k("rope.freq_base"), Value::F32(self.rope_theta as f32)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(self.rms_eps as f32)),
            (k("expert_count"), u(self.n_expert)),
            (k("expert_used_count"), u(self.n_expert_used)),
            (k("attention.key_length"), u(self.head_dim)),
            (k("attention.value_length"), u(self.head_dim)),
            ("general.file_type".into(), Value::U32(file_type)),
            (k("attention.sliding_window"), u(self.sliding_window)),
            (k("expert_feed_forward_length"), u(self.n_ff)),
            ("general.quantization_version".into(), Value::U32(2)),
        ]);
        m
    }
}

/// llama.cpp's names for gpt-oss's per-layer tensors (not the experts' weights).
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("self_attn.sinks", "attn_sinks.weight"),
    ("mlp.router.weight", "ffn_gate_inp.weight"),
    ("mlp.router.bias", "ffn_gate_inp.bias"),
    ("mlp.experts.down_proj_bias", "ffn_down_exps.bias"),
    ("mlp.experts.down_proj", "ffn_down_exps.weight"),
];

/// Plans the GGUF llama.cpp's converter writes for the gpt-oss checkpoint in `dir`.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    outtype: OutType,
    vocab: Option<Vec<(String, Value)>>,
) -> Result<Converted<'a>> {
    let (hp, warnings) = GptOssConfig::load(config)?;
    let (dir, layout) = (config.dir.as_path(), config.layout);
    let mxfp4 = layout != SourceLayout::Hf;
    let sources = hf_tensors(model, layout, &hp)?;

    // Every tensor the model needs, with its shape, and nothing else.
    check_tensors(model, &sources, &expected(&hp, mxfp4), &format!("gpt-oss {}", layout.describe()))?;
    let find = |name: &str| sources.iter().find(|s| s.name == name);
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    let (h, i, e) = (hp.n_embd, hp.n_ff, hp.n_expert);
    let mut recipes = Vec::new();
    let make = |name: String, ne: Vec<u64>, ty: GgmlType, src: &SourceTensor<'a>, view: View| {
        let plain = view == View::plain(view.n_rows(), view.cols);
        let input = if plain && src.stored.ty == ty {
            Input::Copy(src.stored)
        } else {
            Input::Values { src: src.stored, view }
        };
        Recipe::new(TensorSpec { name, ne, ggml_type: ty }, input, true, src.origin.clone())
    };

    // The MXFP4 experts come first (the converter's `generate_extra_tensors`).
    if mxfp4 {
        for s in sources.iter().filter(|s| s.name.ends_with("_scales")) {
            let base = s.name.trim_end_matches("_scales");
            let blocks = find(&format!("{base}_blocks")).context("blocks without scales")?;
            let n = s.name.trim_start_matches("model.layers.").split('.').next().unwrap_or_default();
            let mx = |name: String, ne: Vec<u64>, view: View| {
                Recipe::new(
                    TensorSpec { name, ne, ggml_type: GgmlType::MXFP4 },
                    Input::OpenAiMxfp4 { blocks: blocks.stored, scales: s.stored, view },
                    true,
                    s.origin.clone(),
                )
            };
            if base.ends_with("down_proj") {
                let g = i / 32;
                recipes.push(mx(format!("blk.{n}.ffn_down_exps.weight"), vec![i, h, e], View::plain(e * h, g)));
            } else {
                let g = h / 32;
                for (k, which) in ["gate", "up"].iter().enumerate() {
                    let view = View {
                        outer: e,
                        rows: i,
                        cols: g,
                        outer_stride: 2 * i * g,
                        row_stride: 2 * g,
                        col_stride: 1,
                        offset: k as u64 * g,
                        rope_group: 0,
                    };
                    recipes.push(mx(format!("blk.{n}.ffn_{which}_exps.weight"), vec![h, i, e], view));
                }
            }
        }
    }
    for s in &sources {
        if s.name.ends_with("_blocks") || s.name.ends_with("_scales") {
            continue;
        }
        let n = s.name.trim_start_matches("model.layers.").split('.').next().unwrap_or_default();
        if s.name.ends_with("gate_up_proj_bias") {
            for (k, which) in ["gate", "up"].iter().enumerate() {
                let view = View {
                    outer: 1,
                    rows: e,
                    cols: i,
                    outer_stride: e * 2 * i,
                    row_stride: 2 * i,
                    col_stride: 2,
                    offset: k as u64,
                    rope_group: 0,
                };
                recipes.push(make(format!("blk.{n}.ffn_{which}_exps.bias"), vec![i, e], GgmlType::F32, s, view));
            }
            continue;
        }
        if s.name.ends_with("gate_up_proj") {
            // [E, H, 2I] stored as x @ W; llama.cpp wants [E, I, H] per half.
            for (k, which) in ["gate", "up"].iter().enumerate() {
                let view = View {
                    outer: e,
                    rows: i,
                    cols: h,
                    outer_stride: h * 2 * i,
                    row_stride: 2,
                    col_stride: 2 * i,
                    offset: k as u64,
                    rope_group: 0,
                };
                recipes.push(make(format!("blk.{n}.ffn_{which}_exps.weight"), vec![h, i, e], out, s, view));
            }
            continue;
        }
        let name = gguf_name(&s.name, LAYER_NAMES).with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        if s.name.ends_with("down_proj") {
            let view = View {
                outer: e,
                rows: h,
                cols: i,
                outer_stride: i * h,
                row_stride: 1,
                col_stride: h,
                offset: 0,
                rope_group: 0,
            };
            recipes.push(make(name, vec![i, h, e], out, s, view));
            continue;
        }
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        let cols = ne[0];
        recipes.push(make(name, ne, ty, s, View::plain(s.shape.iter().product::<u64>() / cols, cols)));
    }

    let file_type = if mxfp4 { 38 } else { float_file_type(out) };
    let card_dir = if layout == SourceLayout::OpenAiOriginal {
        dir.parent().filter(|p| p.file_name().is_some()).unwrap_or(dir)
    } else {
        dir
    };
    // A bf16 checkpoint's experts in a float type are warned about by `moeq convert`, which
    // knows the final types (`--type MXFP4_MOE` makes them MXFP4).
    let plan = gguf_plan("gpt-oss", card_dir, &config.json, &recipes, hp.metadata(file_type), vocab);
    Ok(Converted { plan, recipes, warnings })
}
