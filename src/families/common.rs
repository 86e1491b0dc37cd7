//! What the per-family converters share: `inspect`'s hyperparameters, listing a
//! checkpoint's tensors in the order llama.cpp's converter visits them, and checking them
//! against the tensors a model of that shape must have.

use anyhow::{Context, Result, bail};
use std::path::Path;

use moeq_formats::gguf::{GgmlType, GgufPlan, Value};
use moeq_formats::safetensors::{Dtype, SafetensorsModel};
use serde_json::Value as Json;

use crate::source::config::Keys;

use crate::plan::recipe::{Input, Part, Recipe, Stored, View};
use crate::vocab::model_card::{ParamCount, general_metadata};

/// The hyperparameters `inspect` shows for a Hugging Face `config.json`: GGUF key names
/// (without the architecture prefix) and the raw values they come from.
pub fn inspect_hparams(config: &Keys) -> Vec<(&'static str, Json)> {
    let mut hparams = pick(config, HF_HPARAMS);
    if let Some(scaling) = config.raw("rope_scaling").filter(|v| v.is_object()) {
        hparams.push(("rope.scaling", scaling.clone()));
    }
    hparams
}

/// GGUF key → Hugging Face `config.json` key, for `inspect`.
const HF_HPARAMS: &[(&str, &str)] = &[
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

/// The values of `keys` (GGUF name, config key) that `config` holds (not null).
pub fn pick(config: &Keys, keys: &[(&'static str, &str)]) -> Vec<(&'static str, Json)> {
    keys.iter().filter_map(|&(name, key)| config.raw(key).map(|v| (name, v.clone()))).collect()
}

/// A checkpoint tensor under its Hugging Face name.
pub struct SourceTensor<'a> {
    /// The shard's rank in the converter's order (0 for all when ranks do not matter).
    pub rank: usize,
    /// Hugging Face name.
    pub name: String,
    /// Its bytes; U8 tensors (MXFP4 blocks and scales) are typed I8.
    pub stored: Stored<'a>,
    /// Numpy-order shape.
    pub shape: Vec<u64>,
    /// "FILE: tensor 'NAME'", for errors.
    pub origin: String,
}

/// The ggml type a safetensors dtype is read as: floats, and U8 as raw bytes.
pub fn ggml_of(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::BF16 => Some(GgmlType::BF16),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::U8 => Some(GgmlType::I8),
        _ => None,
    }
}

/// The safetensors dtype a float ggml type is written as (bf16 for anything else).
pub fn float_dtype(ty: GgmlType) -> Dtype {
    match ty {
        GgmlType::F16 => Dtype::F16,
        GgmlType::F32 => Dtype::F32,
        _ => Dtype::BF16,
    }
}

/// Every tensor of `model`, passed through `rename` (which may split one into several, or
/// drop it), sorted as llama.cpp's converter visits them: shard by shard, by name.
pub fn source_tensors<'a>(
    model: &'a SafetensorsModel,
    mut rename: impl FnMut(SourceTensor<'a>) -> Result<Vec<SourceTensor<'a>>>,
) -> Result<Vec<SourceTensor<'a>>> {
    let mut out = Vec::new();
    for (rank, shard) in model.shards().iter().enumerate() {
        for t in shard.tensors() {
            let origin = format!("{}: tensor '{}'", shard.path().display(), t.name);
            let Some(ty) = ggml_of(t.dtype) else {
                bail!("{origin} has dtype {:?}; moeq reads BF16, F16, F32 and U8 (MXFP4) tensors", t.dtype);
            };
            let stored = Stored { file: shard.file_bytes(), start: t.start, len: t.len, ty };
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            let tensor = SourceTensor { rank, name: t.name.clone(), stored, shape, origin: origin.clone() };
            out.extend(rename(tensor).with_context(|| origin.clone())?);
        }
    }
    out.sort_by(|a, b| (a.rank, &a.name).cmp(&(b.rank, &b.name)));
    Ok(out)
}

/// Checks `tensors` against what the model must hold: `(name, shape, raw)` where `raw` marks
/// U8 tensors. Unknown tensors, wrong shapes or dtypes and missing tensors are errors.
pub fn check_tensors(
    model: &SafetensorsModel,
    tensors: &[SourceTensor],
    want: &[(String, Vec<u64>, bool)],
    kind: &str,
) -> Result<()> {
    for s in tensors {
        let Some((_, shape, raw)) = want.iter().find(|(n, _, _)| *n == s.name) else {
            bail!("{}: not a tensor of a {kind} checkpoint", s.origin);
        };
        if s.shape != *shape {
            bail!("{}: shape {:?}, expected {:?}", s.origin, s.shape, shape);
        }
        if *raw != (s.stored.ty == GgmlType::I8) {
            bail!("{}: dtype {}, expected {}", s.origin, s.stored.ty, if *raw { "U8" } else { "BF16, F16 or F32" });
        }
    }
    for (name, _, _) in want {
        if !tensors.iter().any(|s| s.name == *name) {
            bail!("{}: tensor '{name}' is missing", model.path().display());
        }
    }
    Ok(())
}

/// llama.cpp's name for a Hugging Face tensor: the names outside the layers every family
/// shares, then the family's `layer_names` (what follows `model.layers.N.` → what follows
/// `blk.N.`).
pub fn gguf_name(hf: &str, layer_names: &[(&str, &str)]) -> Option<String> {
    let global = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "lm_head.weight" => Some("output.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(g.to_string());
    }
    let (n, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let (_, mapped) = layer_names.iter().find(|(from, _)| *from == rest)?;
    Some(format!("blk.{n}.{mapped}"))
}

/// The `--outtype auto` choice: BF16 when the first float matrix is BF16, else F16.
pub fn auto_outtype(tensors: &[SourceTensor]) -> GgmlType {
    match tensors.iter().find(|s| s.shape.len() >= 2 && s.stored.ty != GgmlType::I8).map(|s| s.stored.ty) {
        Some(GgmlType::BF16) => GgmlType::BF16,
        _ => GgmlType::F16,
    }
}

/// What `--type` asks of the converter stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    /// `--outtype auto`: BF16 (or F16) like the checkpoint's first float matrix.
    Auto,
    /// A float `--outtype`: F32, F16 or BF16.
    Float(GgmlType),
}

/// What a family converter plans: the GGUF llama.cpp's converter writes, and warnings.
pub struct Converted<'a> {
    /// Metadata and tensors, in the converter's order.
    pub plan: GgufPlan,
    /// How each tensor is made (same order as `plan.tensors`).
    pub recipes: Vec<Recipe<'a>>,
    /// Settings the GGUF cannot carry exactly, in words.
    pub warnings: Vec<String>,
}

/// The converter's type rule: 1-D tensors, norms, the router, a shared expert's gate
/// (`ffn_gate_inp_shexp`) and every bias are F32; other tensors take the output type.
pub fn converter_type(name: &str, n_dims: usize, out: GgmlType) -> GgmlType {
    let router = name.contains("ffn_gate_inp.") || name.contains("ffn_gate_inp_shexp.");
    if n_dims <= 1 || name.ends_with("_norm.weight") || router || !name.ends_with(".weight") {
        GgmlType::F32
    } else {
        out
    }
}

/// `general.file_type` for a float output type, as the converter writes it.
pub fn float_file_type(out: GgmlType) -> u32 {
    match out {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        _ => 32,
    }
}

/// The converter's GGUF plan: architecture and type, the `general.*` naming derived from the
/// model card folder, the family's keys, the vocabulary, then the tensors of `recipes`.
pub fn gguf_plan(
    arch: &str,
    card_dir: &Path,
    config: &Json,
    recipes: &[Recipe],
    family_keys: Vec<(String, Value)>,
    vocab: Option<Vec<(String, Value)>>,
) -> GgufPlan {
    let params =
        ParamCount::of(recipes.iter().map(|r| (r.spec.name.as_str(), r.spec.ne.iter().rev().copied().collect())));
    let mut plan = GgufPlan::default();
    plan.set("general.architecture", Value::String(arch.into()));
    plan.set("general.type", Value::String("model".into()));
    for (k, v) in
        general_metadata(card_dir, config, &params).into_iter().chain(family_keys).chain(vocab.into_iter().flatten())
    {
        plan.set(&k, v);
    }
    plan.tensors = recipes.iter().map(|r| r.spec.clone()).collect();
    plan
}

/// One stacked expert tensor (`blk.N.ffn_*_exps.weight`, experts outermost: `ne` = [cols, rows,
/// experts]) made of per-expert matrices, each written at its offset without being gathered
/// first (Mixtral's `w1`/`w2`/`w3`, and the per-expert `gate_proj`/`up_proj`/`down_proj` of
/// later MoE families). `expert(j)` is expert j's Hugging Face name; every expert must be in
/// `sources` (checked before).
pub fn stacked_experts<'a>(
    sources: &[SourceTensor<'a>],
    name: String,
    expert: impl Fn(u64) -> String,
    (n_expert, rows, cols): (u64, u64, u64),
    out: GgmlType,
) -> Result<Recipe<'a>> {
    let parts = (0..n_expert)
        .map(|j| {
            let hf = expert(j);
            let s =
                sources.iter().find(|s| s.name == hf).with_context(|| format!("expert tensor '{hf}' is missing"))?;
            let input = if s.stored.ty == out {
                Input::Copy(s.stored)
            } else {
                Input::Values { src: s.stored, view: View::plain(rows, cols) }
            };
            Ok(Part { input, origin: s.origin.clone() })
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = moeq_formats::gguf::TensorSpec { name, ne: vec![cols, rows, n_expert], ggml_type: out };
    Ok(Recipe { spec, parts, check_finite: true, importance: None })
}
