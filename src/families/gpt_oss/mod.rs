//! gpt-oss → GGUF: what llama.cpp's `convert_hf_to_gguf.py` (`GptOssModel`) writes, from any of
//! the three released layouts (OpenAI `original/`, Hugging Face MXFP4, Hugging Face bf16).
//!
//! Names are first brought to the Hugging Face form (the original layout's fused qkv becomes
//! three row ranges), then mapped to llama.cpp's. Experts: gate and up are interleaved row by
//! row (even rows gate, odd rows up) in weights, scales and biases; MXFP4 blocks are repacked
//! to ggml's nibble order with the scale byte first, never requantized; bf16 experts are
//! stored [in, out] and transposed.

pub mod hf_build;

use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, TensorSpec, Value};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::families::SourceLayout;
use crate::families::common::{
    Converted, OutType, SourceTensor, auto_outtype, check_tensors, converter_type, float, float_file_type, gguf_name,
    gguf_plan, source_tensors, uint,
};
use crate::plan::recipe::{Input, Recipe, Stored, View};

/// The hyperparameters llama.cpp reads for gpt-oss.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub sliding_window: u64,
    pub n_ctx: u64,
    pub rope_theta: f64,
    /// YaRN: factor, original context, beta_fast, beta_slow.
    pub yarn: Option<(f64, u64, f64, f64)>,
    pub rms_eps: f64,
    pub vocab_size: u64,
}

impl Hparams {
    /// Reads `config.json` of either layout, checking what llama.cpp cannot carry. Returns the
    /// hyperparameters and warnings; settings that would change the model's output are errors.
    pub fn from_config(json: &Json, layout: SourceLayout) -> Result<(Hparams, Vec<String>)> {
        let mut warnings = Vec::new();
        let original = layout == SourceLayout::OpenAiOriginal;
        let (experts, used) =
            if original { ("num_experts", "experts_per_token") } else { ("num_local_experts", "num_experts_per_tok") };
        let rope_theta = float(json, "rope_theta")?
            .or(json.pointer("/rope_parameters/rope_theta").and_then(Json::as_f64))
            .context("\"rope_theta\" is missing")?;
        let (n_ctx, yarn, rms_eps) = if original {
            let factor = float(json, "rope_scaling_factor")?.unwrap_or(1.0);
            let orig = uint(json, "initial_context_length")?;
            let alpha = float(json, "rope_ntk_alpha")?.unwrap_or(1.0);
            let beta = float(json, "rope_ntk_beta")?.unwrap_or(32.0);
            let yarn = (factor > 1.0).then_some((factor, orig, beta, alpha));
            // The original config has no context length; the Hugging Face conversion writes
            // initial_context_length · factor (131072) and eps is fixed at 1e-5.
            ((orig as f64 * factor.max(1.0)) as u64, yarn, 1e-5)
        } else {
            let rope = json.get("rope_scaling").or(json.get("rope_parameters")).filter(|v| v.is_object());
            let yarn = match rope {
                Some(r) => match r.get("rope_type").or(r.get("type")).and_then(Json::as_str) {
                    Some("yarn") => {
                        let factor = float(r, "factor")?.context("rope_scaling.factor is missing")?;
                        let orig = uint(r, "original_max_position_embeddings")?;
                        if r.get("truncate").and_then(Json::as_bool) == Some(false) {
                            warnings.push(
                                "rope_scaling.truncate is false; llama.cpp always rounds the YaRN correction range \
                                 (a tiny, known deviation at long context)"
                                    .into(),
                            );
                        }
                        for k in ["attention_factor", "mscale", "mscale_all_dim", "extrapolation_factor"] {
                            if r.get(k).is_some_and(|v| !v.is_null()) {
                                bail!("rope_scaling.{k} is set; llama.cpp's gpt-oss graph does not read it");
                            }
                        }
                        Some((
                            factor,
                            orig,
                            float(r, "beta_fast")?.unwrap_or(32.0),
                            float(r, "beta_slow")?.unwrap_or(1.0),
                        ))
                    }
                    Some("default") | None => None,
                    Some(other) => bail!("rope type '{other}' is not what llama.cpp runs for gpt-oss (yarn)"),
                },
                None => None,
            };
            (uint(json, "max_position_embeddings")?, yarn, float(json, "rms_norm_eps")?.unwrap_or(1e-5))
        };
        if let Some((_, _, fast, slow)) = yarn
            && (fast != 32.0 || slow != 1.0)
        {
            bail!("YaRN beta_fast {fast} / beta_slow {slow}: llama.cpp's loader ignores these keys and uses 32 / 1");
        }
        if let Some(limit) = float(json, "swiglu_limit")?
            && limit != 7.0
        {
            bail!(
                "swiglu_limit is {limit}; llama.cpp hard-codes 7.0 for gpt-oss, so the GGUF would compute a different model"
            );
        }
        if let Some(alpha) = float(json, "swiglu_alpha")?
            && alpha != 1.702
        {
            bail!("swiglu_alpha is {alpha}; llama.cpp hard-codes 1.702 for gpt-oss");
        }
        if json.get("tie_word_embeddings").and_then(Json::as_bool) == Some(true) {
            bail!("tie_word_embeddings is true; llama.cpp's gpt-oss needs its own output.weight");
        }
        if let Some(types) = json.get("layer_types").and_then(Json::as_array) {
            let expected = |i: usize| if i.is_multiple_of(2) { "sliding_attention" } else { "full_attention" };
            if types.iter().enumerate().any(|(i, t)| t.as_str() != Some(expected(i))) {
                bail!("layer_types is not sliding/full alternating from layer 0; llama.cpp hard-codes that pattern");
            }
        }
        if let Some(act) = json.get("hidden_act").and_then(Json::as_str)
            && act != "silu"
        {
            warnings.push(format!("hidden_act is '{act}'; gpt-oss always runs its clamped SwiGLU (alpha 1.702)"));
        }
        let hp = Hparams {
            n_layer: uint(json, "num_hidden_layers")?,
            n_embd: uint(json, "hidden_size")?,
            n_ff: uint(json, "intermediate_size")?,
            n_head: uint(json, "num_attention_heads")?,
            n_head_kv: uint(json, "num_key_value_heads")?,
            head_dim: uint(json, "head_dim")?,
            n_expert: uint(json, experts)?,
            n_expert_used: uint(json, used)?,
            sliding_window: uint(json, "sliding_window")?,
            n_ctx,
            rope_theta,
            yarn,
            rms_eps,
            vocab_size: uint(json, "vocab_size")?,
        };
        if !hp.n_embd.is_multiple_of(32) || !hp.n_ff.is_multiple_of(32) {
            bail!("hidden_size {} and intermediate_size {} must be multiples of 32 (MXFP4 blocks)", hp.n_embd, hp.n_ff);
        }
        let all = [hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_expert, hp.n_expert_used];
        if all.contains(&0)
            || !hp.n_head.is_multiple_of(hp.n_head_kv)
            || hp.n_expert_used > hp.n_expert
            || hp.vocab_size == 0
        {
            bail!("inconsistent sizes: {hp:?}");
        }
        if hp.n_layer > 4096
            || hp.n_expert > 4096
            || hp.n_embd > 1 << 20
            || hp.n_ff > 1 << 20
            || hp.vocab_size > 1 << 24
        {
            bail!("implausible sizes: {hp:?}");
        }
        Ok((hp, warnings))
    }

    /// The `gpt-oss.*` keys, in the converter's order, with `general.file_type` among them.
    fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
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

/// The source tensors under Hugging Face names, in the order the converter visits them.
pub fn hf_tensors<'a>(
    model: &'a SafetensorsModel,
    layout: SourceLayout,
    hp: &Hparams,
) -> Result<Vec<SourceTensor<'a>>> {
    source_tensors(model, |t| {
        if layout != SourceLayout::OpenAiOriginal {
            return Ok(vec![t]);
        }
        // OpenAI's names; every tensor sorts as if in one file.
        let renamed = original_to_hf(&t.name, t.stored, &t.shape, hp)?;
        Ok(renamed
            .into_iter()
            .map(|(name, stored, shape)| SourceTensor { rank: 0, name, stored, shape, origin: t.origin.clone() })
            .collect())
    })
}

/// One tensor of the original layout as the Hugging Face tensors it becomes (the fused qkv
/// becomes three row ranges).
fn original_to_hf<'a>(
    name: &str,
    stored: Stored<'a>,
    shape: &[u64],
    hp: &Hparams,
) -> Result<Vec<(String, Stored<'a>, Vec<u64>)>> {
    let global = match name {
        "embedding.weight" => Some("model.embed_tokens.weight"),
        "unembedding.weight" => Some("lm_head.weight"),
        "norm.scale" => Some("model.norm.weight"),
        _ => None,
    };
    if let Some(hf) = global {
        return Ok(vec![(hf.to_string(), stored, shape.to_vec())]);
    }
    let Some((n, rest)) = name.strip_prefix("block.").and_then(|r| r.split_once('.')) else {
        bail!("not a tensor of OpenAI's gpt-oss layout");
    };
    let layer = |s: &str| format!("model.layers.{n}.{s}");
    let simple = match rest {
        "attn.norm.scale" => "input_layernorm.weight",
        "attn.sinks" => "self_attn.sinks",
        "attn.out.weight" => "self_attn.o_proj.weight",
        "attn.out.bias" => "self_attn.o_proj.bias",
        "mlp.norm.scale" => "post_attention_layernorm.weight",
        "mlp.gate.weight" => "mlp.router.weight",
        "mlp.gate.bias" => "mlp.router.bias",
        "mlp.mlp1_weight.blocks" => "mlp.experts.gate_up_proj_blocks",
        "mlp.mlp1_weight.scales" => "mlp.experts.gate_up_proj_scales",
        "mlp.mlp1_bias" => "mlp.experts.gate_up_proj_bias",
        "mlp.mlp2_weight.blocks" => "mlp.experts.down_proj_blocks",
        "mlp.mlp2_weight.scales" => "mlp.experts.down_proj_scales",
        "mlp.mlp2_bias" => "mlp.experts.down_proj_bias",
        "attn.qkv.weight" | "attn.qkv.bias" => "",
        _ => bail!("not a tensor of OpenAI's gpt-oss layout"),
    };
    if !simple.is_empty() {
        return Ok(vec![(layer(simple), stored, shape.to_vec())]);
    }
    let (q, kv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    if shape.first() != Some(&(q + 2 * kv)) {
        bail!("shape {shape:?}: expected {} rows (q {q} + k {kv} + v {kv})", q + 2 * kv);
    }
    let row = stored.len as u64 / (q + 2 * kv);
    let suffix = if rest.ends_with("weight") { "weight" } else { "bias" };
    let part = |proj: &str, first: u64, rows: u64| {
        let mut s = shape.to_vec();
        s[0] = rows;
        let sub = Stored { start: stored.start + (first * row) as usize, len: (rows * row) as usize, ..stored };
        (layer(&format!("self_attn.{proj}.{suffix}")), sub, s)
    };
    Ok(vec![part("q_proj", 0, q), part("k_proj", q, kv), part("v_proj", q + kv, kv)])
}

/// The expected Hugging Face tensors and their shapes (numpy order), and whether they are
/// raw bytes (MXFP4) rather than floats.
fn expected(hp: &Hparams, mxfp4: bool) -> Vec<(String, Vec<u64>, bool)> {
    let (h, i, e, v) = (hp.n_embd, hp.n_ff, hp.n_expert, hp.vocab_size);
    let (q, kv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    let mut x = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h], false),
        ("lm_head.weight".to_string(), vec![v, h], false),
        ("model.norm.weight".to_string(), vec![h], false),
    ];
    for n in 0..hp.n_layer {
        let l = |s: &str| format!("model.layers.{n}.{s}");
        x.extend([
            (l("input_layernorm.weight"), vec![h], false),
            (l("post_attention_layernorm.weight"), vec![h], false),
            (l("self_attn.q_proj.weight"), vec![q, h], false),
            (l("self_attn.q_proj.bias"), vec![q], false),
            (l("self_attn.k_proj.weight"), vec![kv, h], false),
            (l("self_attn.k_proj.bias"), vec![kv], false),
            (l("self_attn.v_proj.weight"), vec![kv, h], false),
            (l("self_attn.v_proj.bias"), vec![kv], false),
            (l("self_attn.o_proj.weight"), vec![h, q], false),
            (l("self_attn.o_proj.bias"), vec![h], false),
            (l("self_attn.sinks"), vec![hp.n_head], false),
            (l("mlp.router.weight"), vec![e, h], false),
            (l("mlp.router.bias"), vec![e], false),
            (l("mlp.experts.gate_up_proj_bias"), vec![e, 2 * i], false),
            (l("mlp.experts.down_proj_bias"), vec![e, h], false),
        ]);
        if mxfp4 {
            x.extend([
                (l("mlp.experts.gate_up_proj_blocks"), vec![e, 2 * i, h / 32, 16], true),
                (l("mlp.experts.gate_up_proj_scales"), vec![e, 2 * i, h / 32], true),
                (l("mlp.experts.down_proj_blocks"), vec![e, h, i / 32, 16], true),
                (l("mlp.experts.down_proj_scales"), vec![e, h, i / 32], true),
            ]);
        } else {
            x.extend([
                (l("mlp.experts.gate_up_proj"), vec![e, h, 2 * i], false),
                (l("mlp.experts.down_proj"), vec![e, i, h], false),
            ]);
        }
    }
    x
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

/// The `gpt-oss.*` keys for a config (for reading a build back as a model).
pub fn gguf_metadata(config: &Json, layout: SourceLayout, file_type: u32) -> Result<Vec<(String, Value)>> {
    Ok(Hparams::from_config(config, layout)?.0.metadata(file_type))
}

/// Plans the GGUF llama.cpp's converter writes for the gpt-oss checkpoint in `dir`.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    dir: &Path,
    config: &Json,
    layout: SourceLayout,
    outtype: OutType,
    vocab: Option<Vec<(String, Value)>>,
) -> Result<Converted<'a>> {
    let (hp, mut warnings) =
        Hparams::from_config(config, layout).with_context(|| format!("{}", dir.join("config.json").display()))?;
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
    let plan = gguf_plan("gpt-oss", card_dir, config, &recipes, hp.metadata(file_type), vocab);
    if layout == SourceLayout::Hf {
        warnings
            .push("the experts are not in MXFP4 (a bf16 checkpoint); the GGUF keeps them in the output type".into());
    }
    Ok(Converted { plan, recipes, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf_config() -> Json {
        serde_json::from_str(include_str!("../../../tests/fixtures/gpt-oss/hf-mxfp4/config.json")).unwrap()
    }

    #[test]
    fn original_and_hf_configs_give_the_same_hparams() {
        let original: Json =
            serde_json::from_str(include_str!("../../../tests/fixtures/gpt-oss/original/config.json")).unwrap();
        let (a, _) = Hparams::from_config(&original, SourceLayout::OpenAiOriginal).unwrap();
        let (b, warnings) = Hparams::from_config(&hf_config(), SourceLayout::HfMxfp4).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.yarn, Some((32.0, 4096, 32.0, 1.0)));
        assert!(warnings.iter().any(|w| w.contains("truncate")));
    }

    #[test]
    fn settings_llama_cpp_cannot_carry_are_refused() {
        let cases: [(&str, Json, &str); 6] = [
            ("swiglu_limit", json!(10.0), "swiglu_limit is 10"),
            ("swiglu_alpha", json!(1.5), "swiglu_alpha is 1.5"),
            ("layer_types", json!(["full_attention", "sliding_attention"]), "layer_types"),
            ("tie_word_embeddings", json!(true), "tie_word_embeddings"),
            ("num_local_experts", json!(0), "inconsistent sizes"),
            ("sliding_window", json!(null), "\"sliding_window\" is null"),
        ];
        for (key, value, expected) in cases {
            let mut c = hf_config();
            c[key] = value;
            let e = Hparams::from_config(&c, SourceLayout::HfMxfp4).unwrap_err().to_string();
            assert!(e.contains(expected), "{key}: {e}");
        }
        let mut c = hf_config();
        c["rope_scaling"]["beta_fast"] = json!(16.0);
        assert!(Hparams::from_config(&c, SourceLayout::HfMxfp4).unwrap_err().to_string().contains("beta_fast 16"));
        c["rope_scaling"] = json!({"rope_type": "linear", "factor": 2.0});
        assert!(Hparams::from_config(&c, SourceLayout::HfMxfp4).unwrap_err().to_string().contains("'linear'"));
    }
}
