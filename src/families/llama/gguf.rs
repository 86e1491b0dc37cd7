//! Llama → GGUF: what llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel`) writes, shared by the
//! families of llama.cpp's `llama` architecture ([`LlamaArch`]: Llama, and Mixtral, which is a
//! `LlamaModel` in the converter too). q and k rows are permuted from Hugging Face's
//! rotate-half order to the interleaved order of llama.cpp's RoPE (per head, with the KV head
//! count for k); Llama 3.1's `rope_freqs` are computed; tied embeddings have no `output.weight`.

use anyhow::{Context, Result};
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_formats::safetensors::SafetensorsModel;

use super::config::LlamaConfig;
use crate::families::ModelConfig;
use crate::families::common::{
    Converted, OutType, SourceTensor, auto_outtype, check_tensors, converter_type, float_file_type, gguf_name,
    gguf_plan, source_tensors,
};
use crate::plan::recipe::{Input, Part, Recipe, View};
use crate::vocab::Metadata;

/// llama.cpp's names for Llama's per-layer tensors.
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
];

/// What a family of llama.cpp's `llama` architecture adds to the shared conversion: its
/// feed-forward tensors.
pub trait LlamaArch {
    /// The shared part of its config.
    fn base(&self) -> &LlamaConfig;

    /// "Llama", "Mixtral" (in errors).
    fn kind(&self) -> &'static str;

    /// Hugging Face → llama.cpp per-layer names.
    fn layer_names(&self) -> &'static [(&'static str, &'static str)];

    /// Experts and experts used, for the metadata.
    fn experts(&self) -> Option<(u64, u64)> {
        None
    }

    /// The feed-forward tensors layer `n` must hold, with shapes (numpy order).
    fn ffn_expected(&self, n: u64) -> Vec<(String, Vec<u64>)>;

    /// The recipes for source tensor `sources[i]` when the family makes them itself (Mixtral
    /// stacks its experts): `Some` (possibly empty, while a stack is incomplete), or `None`
    /// for the shared one-to-one rule.
    fn own_recipes<'a>(
        &self,
        _i: usize,
        _sources: &[SourceTensor<'a>],
        _out: GgmlType,
    ) -> Result<Option<Vec<Recipe<'a>>>> {
        Ok(None)
    }
}

impl LlamaArch for LlamaConfig {
    fn base(&self) -> &LlamaConfig {
        self
    }

    fn kind(&self) -> &'static str {
        "Llama"
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        LAYER_NAMES
    }

    fn ffn_expected(&self, n: u64) -> Vec<(String, Vec<u64>)> {
        let (h, f) = (self.n_embd, self.n_ff);
        let l = |s: &str| format!("model.layers.{n}.{s}");
        vec![
            (l("mlp.gate_proj.weight"), vec![f, h]),
            (l("mlp.up_proj.weight"), vec![f, h]),
            (l("mlp.down_proj.weight"), vec![h, f]),
        ]
    }
}

/// The Hugging Face tensors a model of the `llama` architecture must hold, with shapes (numpy
/// order). `lm_head.weight` is left out: it is absent when the embeddings are tied.
fn expected(arch: &impl LlamaArch) -> Vec<(String, Vec<u64>)> {
    let hp = arch.base();
    let (h, v, hd) = (hp.n_embd, hp.vocab_size, hp.head_dim().unwrap_or(0));
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
        x.extend(arch.ffn_expected(n));
    }
    x
}

/// One source tensor read as `ty` rows: copied when the type matches, else through a view;
/// q and k rows permuted to llama.cpp's interleaved RoPE order (groups of `head_dim` rows).
pub fn part<'a>(s: &SourceTensor<'a>, ty: GgmlType, head_dim: u64) -> Part<'a> {
    let cols = *s.shape.last().unwrap_or(&1);
    let rows = s.shape.iter().product::<u64>() / cols.max(1);
    let mut view = View::plain(rows, cols);
    if s.name.ends_with("q_proj.weight") || s.name.ends_with("k_proj.weight") {
        view.rope_group = head_dim;
    }
    let input = if s.stored.ty == ty && view.rope_group == 0 {
        Input::Copy(s.stored)
    } else {
        Input::Values { src: s.stored, view }
    };
    Part { input, origin: s.origin.clone() }
}

/// Plans the GGUF llama.cpp's converter writes for a checkpoint of the `llama` architecture.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    arch: &impl LlamaArch,
    warnings: Vec<String>,
    outtype: OutType,
    vocab: Option<Metadata>,
) -> Result<Converted<'a>> {
    let hp = arch.base();
    let sources = source_tensors(model, |t| {
        if t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        Ok(vec![t])
    })?;
    let mut want: Vec<(String, Vec<u64>, bool)> = expected(arch).into_iter().map(|(n, s)| (n, s, false)).collect();
    if sources.iter().any(|s| s.name == "lm_head.weight") {
        want.push(("lm_head.weight".into(), vec![hp.vocab_size, hp.n_embd], false));
    }
    check_tensors(model, &sources, &want, arch.kind())?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    let hd = hp.head_dim().unwrap_or(0);
    let mut recipes: Vec<Recipe> = rope_freqs_recipe(hp).into_iter().collect();
    for (i, s) in sources.iter().enumerate() {
        if let Some(own) = arch.own_recipes(i, &sources, out)? {
            recipes.extend(own);
            continue;
        }
        let name =
            gguf_name(&s.name, arch.layer_names()).with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        recipes.push(Recipe {
            spec: TensorSpec { name, ne, ggml_type: ty },
            parts: vec![part(s, ty, hd)],
            check_finite: true,
            importance: None,
            rounding: None,
        });
    }
    let metadata = hp.metadata(float_file_type(out), arch.experts());
    let plan = gguf_plan("llama", &config.dir, &config.json, &recipes, metadata, vocab);
    Ok(Converted { plan, recipes, warnings })
}

/// Llama 3.1's `rope_freqs.weight` (one factor per rotary pair, F32), computed from
/// `rope_scaling` as llama.cpp's converter does; `None` without Llama 3 scaling.
pub fn rope_freqs_recipe(hp: &LlamaConfig) -> Option<Recipe<'static>> {
    let factors = hp.llama3_rope_factors()?;
    Some(Recipe::new(
        TensorSpec { name: "rope_freqs.weight".into(), ne: vec![factors.len() as u64], ggml_type: GgmlType::F32 },
        Input::Owned(factors.iter().flat_map(|f| f.to_le_bytes()).collect()),
        false,
        "rope_scaling in config.json".into(),
    ))
}
