//! Llama and Mixtral → GGUF: what llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel`) writes.
//!
//! Both are the `llama` architecture in llama.cpp. q and k rows are permuted from Hugging
//! Face's rotate-half order to the interleaved order of llama.cpp's RoPE (per head, with the
//! KV head count for k). Mixtral's per-expert `w1`/`w2`/`w3` matrices are stacked into
//! `ffn_gate_exps`/`ffn_down_exps`/`ffn_up_exps` (expert index outermost) without copying them
//! anywhere first: each expert's rows are written at their offset in the stacked tensor.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, TensorSpec, Value};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::arch::Architecture;
use crate::checkpoint::{
    Converted, OutType, SourceTensor, auto_outtype, check_tensors, converter_type, float, float_file_type, gguf_name,
    gguf_plan, opt_uint, source_tensors, uint,
};
use crate::recipe::{Input, Part, Recipe, View};

/// The hyperparameters llama.cpp reads for Llama and Mixtral.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub n_layer: u64,
    pub n_ctx: Option<u64>,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// `head_dim` when config.json gives it.
    pub head_dim: Option<u64>,
    /// Experts and experts used (Mixtral).
    pub experts: Option<(u64, u64)>,
    pub rope_theta: Option<f64>,
    /// `linear` or `yarn` scaling: type, factor, original context (yarn).
    pub rope_scaling: Option<(String, f64, Option<u64>)>,
    /// Llama 3.1's frequency factors: factor, low, high, original context.
    pub llama3_rope: Option<(f64, f64, f64, f64)>,
    pub rms_eps: Option<f64>,
    pub vocab_size: u64,
}

impl Hparams {
    /// Reads `config.json`. Returns the hyperparameters and warnings.
    pub fn from_config(json: &Json, arch: Architecture) -> Result<(Hparams, Vec<String>)> {
        let mut warnings = Vec::new();
        let n_head = uint(json, "num_attention_heads")?;
        let experts = if arch == Architecture::Mixtral {
            Some((uint(json, "num_local_experts")?, uint(json, "num_experts_per_tok")?))
        } else {
            None
        };
        let rope = json.get("rope_scaling").or(json.get("rope_parameters")).filter(|v| v.is_object());
        let (mut rope_scaling, mut llama3_rope) = (None, None);
        if let Some(r) = rope {
            match r.get("rope_type").or(r.get("type")).and_then(Json::as_str) {
                Some(t @ ("linear" | "yarn")) => {
                    let factor = float(r, "factor")?.context("rope_scaling.factor is missing")?;
                    let orig = if t == "yarn" { Some(uint(r, "original_max_position_embeddings")?) } else { None };
                    rope_scaling = Some((t.to_string(), factor, orig));
                }
                Some(t) if t.eq_ignore_ascii_case("llama3") => {
                    llama3_rope = Some((
                        float(r, "factor")?.unwrap_or(8.0),
                        float(r, "low_freq_factor")?.unwrap_or(1.0),
                        float(r, "high_freq_factor")?.unwrap_or(4.0),
                        float(r, "original_max_position_embeddings")?.unwrap_or(8192.0),
                    ));
                }
                Some("default") | None => {}
                Some(other) => bail!("rope type '{other}' is not one llama.cpp's llama architecture runs"),
            }
        }
        if let Some(window) = opt_uint(json, "sliding_window")? {
            let ctx = opt_uint(json, "max_position_embeddings")?.unwrap_or(u64::MAX);
            if window < ctx {
                warnings.push(format!(
                    "sliding_window is {window}; llama.cpp's llama architecture attends to the whole context"
                ));
            }
        }
        if let Some(act) = json.get("hidden_act").and_then(Json::as_str)
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; llama.cpp's llama architecture runs SiLU");
        }
        for key in ["attention_bias", "mlp_bias"] {
            if json.get(key).and_then(Json::as_bool) == Some(true) {
                bail!("{key} is true; moeq converts Llama checkpoints without biases");
            }
        }
        let hp = Hparams {
            n_layer: uint(json, "num_hidden_layers")?,
            n_ctx: opt_uint(json, "max_position_embeddings")?,
            n_embd: uint(json, "hidden_size")?,
            n_ff: uint(json, "intermediate_size")?,
            n_head,
            n_head_kv: opt_uint(json, "num_key_value_heads")?.unwrap_or(n_head),
            head_dim: opt_uint(json, "head_dim")?,
            experts,
            rope_theta: float(json, "rope_theta")?
                .or(json.pointer("/rope_parameters/rope_theta").and_then(Json::as_f64)),
            rope_scaling,
            llama3_rope,
            rms_eps: float(json, "rms_norm_eps")?,
            vocab_size: uint(json, "vocab_size")?,
        };
        let dims = [hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.vocab_size];
        if dims.contains(&0)
            || !hp.n_head.is_multiple_of(hp.n_head_kv)
            || hp.experts.is_some_and(|(e, k)| k == 0 || k > e)
        {
            bail!("inconsistent sizes: {hp:?}");
        }
        if hp.n_layer > 4096 || hp.n_embd > 1 << 20 || hp.n_ff > 1 << 22 || hp.vocab_size > 1 << 24 {
            bail!("implausible sizes: {hp:?}");
        }
        if hp.head_dim().is_none_or(|d| d == 0 || d % 2 != 0) {
            bail!("the head size is not a positive even number: {hp:?}");
        }
        Ok((hp, warnings))
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> Option<u64> {
        self.head_dim.or(self.n_embd.is_multiple_of(self.n_head).then(|| self.n_embd / self.n_head))
    }

    /// The `llama.*` keys, in the converter's order, with `general.file_type` among them.
    fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let k = |key: &str| format!("llama.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![(k("block_count"), u(self.n_layer))];
        m.extend(self.n_ctx.map(|c| (k("context_length"), u(c))));
        m.extend([
            (k("embedding_length"), u(self.n_embd)),
            (k("feed_forward_length"), u(self.n_ff)),
            (k("attention.head_count"), u(self.n_head)),
            (k("attention.head_count_kv"), u(self.n_head_kv)),
        ]);
        if let Some((ty, factor, orig)) = &self.rope_scaling {
            m.push((k("rope.scaling.type"), Value::String(ty.clone())));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.extend(orig.map(|o| (k("rope.scaling.original_context_length"), u(o))));
        }
        m.extend(self.rope_theta.map(|t| (k("rope.freq_base"), Value::F32(t as f32))));
        m.extend(self.rms_eps.map(|e| (k("attention.layer_norm_rms_epsilon"), Value::F32(e as f32))));
        if let Some((e, used)) = self.experts {
            m.push((k("expert_count"), u(e)));
            m.push((k("expert_used_count"), u(used)));
        }
        if let Some(d) = self.head_dim {
            m.push((k("attention.key_length"), u(d)));
            m.push((k("attention.value_length"), u(d)));
        }
        m.push(("general.file_type".into(), Value::U32(file_type)));
        m.push((k("vocab_size"), u(self.vocab_size)));
        m.push((k("rope.dimension_count"), u(self.head_dim().unwrap_or(0))));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m
    }

    /// Llama 3.1's `rope_freqs` (one factor per rotary pair), as the converter computes them.
    fn llama3_rope_factors(&self) -> Option<Vec<f32>> {
        let (factor, low, high, old_ctx) = self.llama3_rope?;
        let dim = self.head_dim()?;
        let base = self.rope_theta.unwrap_or(10000.0) as f32;
        let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
        Some(
            (0..dim / 2)
                .map(|i| {
                    let freq = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                    let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor as f32
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                    }
                })
                .collect(),
        )
    }
}

/// llama.cpp's names for Llama/Mixtral per-layer tensors (not the per-expert ones).
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
];

/// The Hugging Face tensors a Llama/Mixtral checkpoint must hold, with shapes (numpy order).
/// `lm_head.weight` is left out: it is absent when the embeddings are tied.
fn expected(hp: &Hparams) -> Vec<(String, Vec<u64>)> {
    let (h, f, v, hd) = (hp.n_embd, hp.n_ff, hp.vocab_size, hp.head_dim().unwrap_or(0));
    let mut x = vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    for n in 0..hp.n_layer {
        let l = |s: &str| format!("model.layers.{n}.{s}");
        x.extend([
            (l("input_layernorm.weight"), vec![h]),
            (l("post_attention_layernorm.weight"), vec![h]),
            (l("self_attn.q_proj.weight"), vec![hp.n_head * hd, h]),
            (l("self_attn.k_proj.weight"), vec![hp.n_head_kv * hd, h]),
            (l("self_attn.v_proj.weight"), vec![hp.n_head_kv * hd, h]),
            (l("self_attn.o_proj.weight"), vec![h, hp.n_head * hd]),
        ]);
        match hp.experts {
            Some((e, _)) => {
                x.push((l("block_sparse_moe.gate.weight"), vec![e, h]));
                for j in 0..e {
                    x.extend([
                        (l(&format!("block_sparse_moe.experts.{j}.w1.weight")), vec![f, h]),
                        (l(&format!("block_sparse_moe.experts.{j}.w2.weight")), vec![h, f]),
                        (l(&format!("block_sparse_moe.experts.{j}.w3.weight")), vec![f, h]),
                    ]);
                }
            }
            None => x.extend([
                (l("mlp.gate_proj.weight"), vec![f, h]),
                (l("mlp.up_proj.weight"), vec![f, h]),
                (l("mlp.down_proj.weight"), vec![h, f]),
            ]),
        }
    }
    x
}

/// The `llama.*` keys for a config and the head size (for reading a build back as a model).
pub fn gguf_metadata(config: &Json, arch: Architecture, file_type: u32) -> Result<(Vec<(String, Value)>, u64)> {
    let (hp, _) = Hparams::from_config(config, arch)?;
    Ok((hp.metadata(file_type), hp.head_dim().unwrap_or(0)))
}

/// Plans the GGUF llama.cpp's converter writes for the Llama/Mixtral checkpoint in `dir`.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    dir: &Path,
    config: &Json,
    arch: Architecture,
    outtype: OutType,
    vocab: Option<Vec<(String, Value)>>,
) -> Result<Converted<'a>> {
    let (hp, warnings) =
        Hparams::from_config(config, arch).with_context(|| format!("{}", dir.join("config.json").display()))?;
    let sources = source_tensors(model, |t| {
        if t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        Ok(vec![t])
    })?;
    let mut want: Vec<(String, Vec<u64>, bool)> = expected(&hp).into_iter().map(|(n, s)| (n, s, false)).collect();
    if sources.iter().any(|s| s.name == "lm_head.weight") {
        want.push(("lm_head.weight".into(), vec![hp.vocab_size, hp.n_embd], false));
    }
    check_tensors(model, &sources, &want, if hp.experts.is_some() { "Mixtral" } else { "Llama" })?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    let hd = hp.head_dim().unwrap_or(0);
    let mut recipes = Vec::new();
    if let Some(factors) = hp.llama3_rope_factors() {
        recipes.push(Recipe::new(
            TensorSpec { name: "rope_freqs.weight".into(), ne: vec![factors.len() as u64], ggml_type: GgmlType::F32 },
            Input::Owned(factors.iter().flat_map(|f| f.to_le_bytes()).collect()),
            false,
            "rope_scaling in config.json".into(),
        ));
    }
    let part = |s: &SourceTensor<'a>, ty: GgmlType| {
        let cols = *s.shape.last().unwrap_or(&1);
        let rows = s.shape.iter().product::<u64>() / cols.max(1);
        let mut view = View::plain(rows, cols);
        if s.name.ends_with("q_proj.weight") || s.name.ends_with("k_proj.weight") {
            view.rope_group = hd;
        }
        let input = if s.stored.ty == ty && view.rope_group == 0 {
            Input::Copy(s.stored)
        } else {
            Input::Values { src: s.stored, view }
        };
        Part { input, origin: s.origin.clone() }
    };
    // Experts are stacked once all of a layer's have been seen, as the converter does.
    let mut seen_experts: HashMap<u64, u64> = HashMap::new();
    for s in &sources {
        if let Some((layer, _)) =
            s.name.strip_prefix("model.layers.").and_then(|r| r.split_once(".block_sparse_moe.experts."))
        {
            let (e, _) = hp.experts.context("experts in a dense model")?;
            let layer: u64 = layer.parse()?;
            let seen = seen_experts.entry(layer).or_default();
            *seen += 1;
            if *seen < 3 * e {
                continue;
            }
            for (wid, name, rows, cols) in [
                ("w1", "ffn_gate_exps", hp.n_ff, hp.n_embd),
                ("w2", "ffn_down_exps", hp.n_embd, hp.n_ff),
                ("w3", "ffn_up_exps", hp.n_ff, hp.n_embd),
            ] {
                let parts = (0..e)
                    .map(|j| {
                        let hf = format!("model.layers.{layer}.block_sparse_moe.experts.{j}.{wid}.weight");
                        sources.iter().find(|s| s.name == hf).map(|s| part(s, out)).context("expert missing")
                    })
                    .collect::<Result<Vec<_>>>()?;
                let spec =
                    TensorSpec { name: format!("blk.{layer}.{name}.weight"), ne: vec![cols, rows, e], ggml_type: out };
                recipes.push(Recipe { spec, parts, check_finite: true, importance: None });
            }
            continue;
        }
        let name = gguf_name(&s.name, LAYER_NAMES).with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        recipes.push(Recipe {
            spec: TensorSpec { name, ne, ggml_type: ty },
            parts: vec![part(s, ty)],
            check_finite: true,
            importance: None,
        });
    }

    let plan = gguf_plan("llama", dir, config, &recipes, hp.metadata(float_file_type(out)), vocab);
    Ok(Converted { plan, recipes, warnings })
}
