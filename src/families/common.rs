//! What the per-family converters share: `inspect`'s hyperparameters, listing a
//! checkpoint's tensors in the order llama.cpp's converter visits them, and checking them
//! against the tensors a model of that shape must have.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;

use moeq_formats::gguf::{GgmlType, GgufPlan, TensorSpec, Value};
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

/// The RoPE base of a Hugging Face config: `rope_theta`, or transformers 5's
/// `rope_parameters.rope_theta`; `None` when neither is there.
///
/// Errors: a base that is not a positive number (a forward with it computes NaN).
pub fn rope_theta(config: &Keys) -> Result<Option<f64>> {
    let theta = config.opt_f64("rope_theta")?.or(match config.object("rope_parameters")? {
        Some(r) => r.opt_f64("rope_theta")?,
        None => None,
    });
    match theta {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            bail!("\"rope_theta\" is {t}: the RoPE base must be a positive number")
        }
        t => Ok(t),
    }
}

/// The `factor` of a RoPE scaling object `r` (`rope_scaling` or `rope_parameters`) of type
/// `rope_type`, or `default` when absent.
///
/// Errors: a missing factor without a default; a YaRN factor below 1 (llama.cpp would scale the
/// frequencies up where transformers and moeq's forward do not scale at all) or any other factor
/// that is not a positive number (llama.cpp divides the frequencies by it).
pub fn rope_factor(r: &Keys, rope_type: &str, default: Option<f64>) -> Result<f64> {
    let factor = match r.opt_f64("factor")?.or(default) {
        Some(f) => f,
        None => bail!("\"{}\" is missing", r.name("factor")),
    };
    // (Finite: `opt_f64` refuses what an f32 cannot hold, and JSON has no NaN.)
    if rope_type == "yarn" && factor < 1.0 {
        bail!("\"{}\" is {factor}: YaRN scales the context by a factor of at least 1", r.name("factor"));
    }
    if factor <= 0.0 {
        bail!("\"{}\" is {factor}: {rope_type} RoPE scaling needs a positive factor", r.name("factor"));
    }
    Ok(factor)
}

/// Checks sizes read from `config.json`, each `(key, value, limit)`: the value must be at
/// least 1 and at most `limit` (`u64::MAX` for none; the limits keep a corrupt count from
/// allocating or looping for ever).
///
/// Errors: the first key that is 0 or past its limit, named with its value.
pub fn check_sizes(sizes: &[(&str, u64, u64)]) -> Result<()> {
    for &(key, value, limit) in sizes {
        if value == 0 {
            bail!("\"{key}\" is 0; it must be at least 1");
        }
        if value > limit {
            bail!("\"{key}\" is {value}, more than {limit}: implausible (a corrupt config.json?)");
        }
    }
    Ok(())
}

/// Checks that the attention heads share the KV heads evenly (`n_head` a multiple of
/// `n_head_kv`, both at least 1), as llama.cpp's grouped-query attention needs.
///
/// Errors: naming both keys and values.
pub fn check_kv_heads(n_head: u64, n_head_kv: u64) -> Result<()> {
    check_sizes(&[("num_attention_heads", n_head, u64::MAX), ("num_key_value_heads", n_head_kv, u64::MAX)])?;
    if !n_head.is_multiple_of(n_head_kv) {
        bail!("\"num_attention_heads\" {n_head} is not a multiple of \"num_key_value_heads\" {n_head_kv}");
    }
    Ok(())
}

/// Checks the size of an attention head (`head_dim`, or `hidden_size` over the heads when
/// `None`): RoPE rotates pairs of values, so it must be a positive even number.
///
/// Errors: naming the keys it came from and its value.
pub fn check_head_dim(head_dim: Option<u64>, explicit: bool, n_embd: u64, n_head: u64) -> Result<()> {
    match head_dim {
        Some(d) if d > 0 && d.is_multiple_of(2) => Ok(()),
        Some(d) if explicit => bail!("\"head_dim\" is {d}, not a positive even number"),
        Some(d) => bail!(
            "the head size \"hidden_size\" {n_embd} / \"num_attention_heads\" {n_head} = {d} is not a positive even \
             number"
        ),
        None => bail!(
            "\"hidden_size\" {n_embd} is not a multiple of \"num_attention_heads\" {n_head}, and no \"head_dim\" is given"
        ),
    }
}

/// The RMSNorm epsilon of a Hugging Face config (`rms_norm_eps`); `None` when absent.
///
/// Errors: an epsilon that is negative or not finite as the f32 the GGUF stores (the norm
/// would take the square root of a negative number: every logit NaN).
pub fn rms_eps(config: &Keys) -> Result<Option<f64>> {
    match config.opt_f64("rms_norm_eps")? {
        Some(e) if !(e >= 0.0 && (e as f32).is_finite()) => {
            bail!("\"rms_norm_eps\" is {e}: RMSNorm's epsilon must be a non-negative number")
        }
        e => Ok(e),
    }
}

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
    /// Its safetensors dtype (U8 and F8_E4M3 are both raw bytes in `stored`).
    pub dtype: Dtype,
}

/// The ggml type a safetensors dtype is read as: floats, and U8 and F8_E4M3 (FP8 weights,
/// decoded with their block scales: [`fp8_input`]) as raw bytes.
pub fn ggml_of(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::BF16 => Some(GgmlType::BF16),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::U8 | Dtype::F8_E4M3 => Some(GgmlType::I8),
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
                bail!("{origin} has dtype {:?}; moeq reads BF16, F16, F32, U8 (MXFP4) and F8_E4M3 tensors", t.dtype);
            };
            let stored = Stored { file: shard.file_bytes(), start: t.start, len: t.len, ty };
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            let tensor =
                SourceTensor { rank, name: t.name.clone(), stored, shape, origin: origin.clone(), dtype: t.dtype };
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
        let fits = if *raw { s.dtype == Dtype::U8 } else { matches!(s.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) };
        if !fits {
            bail!("{}: dtype {:?}, expected {}", s.origin, s.dtype, if *raw { "U8" } else { "BF16, F16 or F32" });
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

/// The layer of a per-expert Hugging Face tensor `model.layers.N{infix}J.…` (`infix`:
/// `.mlp.experts.` or Mixtral's `.block_sparse_moe.experts.`), as text.
pub fn expert_layer<'n>(name: &'n str, infix: &str) -> Option<&'n str> {
    name.strip_prefix("model.layers.")?.split_once(infix).map(|(layer, _)| layer)
}

/// The recipes llama.cpp's converter writes for a checkpoint whose tensors map one to one to
/// GGUF names through `layer_names` ([`gguf_name`]), except the per-expert
/// `model.layers.N.mlp.experts.J.{gate,up,down}_proj.weight`, which it stacks into
/// `blk.N.ffn_{down,gate,up}_exps.weight` (in that order, `ne` = [cols, rows, experts]) when it
/// has seen the layer's last expert tensor (Qwen2-/Qwen3-MoE's and GLM-4.5's
/// `modify_tensors`). `(hidden, expert_ff, experts)` size the stacks; `out` is the float type
/// of the file (tensors whose [`converter_type`] is it are copied when stored so).
///
/// Errors: a tensor `layer_names` does not name; an expert tensor missing.
pub fn one_to_one_with_stacked_experts<'a>(
    sources: &[SourceTensor<'a>],
    layer_names: &[(&str, &str)],
    (h, f, e): (u64, u64, u64),
    out: GgmlType,
) -> Result<Vec<Recipe<'a>>> {
    const EXPERTS: &str = ".mlp.experts.";
    let mut last_expert: HashMap<&str, usize> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, EXPERTS) {
            last_expert.insert(layer, i);
        }
    }
    let mut recipes = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, EXPERTS) {
            if last_expert.get(layer) != Some(&i) {
                continue;
            }
            for (which, name, rows, cols) in [
                ("down_proj", "ffn_down_exps", h, f),
                ("gate_proj", "ffn_gate_exps", f, h),
                ("up_proj", "ffn_up_exps", f, h),
            ] {
                let expert = |j| format!("model.layers.{layer}.mlp.experts.{j}.{which}.weight");
                recipes.push(stacked_experts(
                    sources,
                    format!("blk.{layer}.{name}.weight"),
                    expert,
                    (e, rows, cols),
                    out,
                )?);
            }
            continue;
        }
        let name = gguf_name(&s.name, layer_names).with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        let cols = ne.first().copied().unwrap_or(1).max(1);
        let input = if s.stored.ty == ty {
            Input::Copy(s.stored)
        } else {
            Input::Values { src: s.stored, view: View::plain(ne.iter().product::<u64>() / cols, cols) }
        };
        recipes.push(Recipe {
            spec: TensorSpec { name, ne, ggml_type: ty },
            parts: vec![Part { input, origin: s.origin.clone() }],
            check_finite: true,
            importance: None,
            rounding: None,
        });
    }
    Ok(recipes)
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
    Ok(Recipe { spec, parts, check_finite: true, importance: None, rounding: None })
}

/// The FP8 block quantization `config.json` declares (`quantization_config` with `quant_method:
/// fp8`, as DeepSeek-V3/R1 and other FP8 releases have it): rows and columns per block
/// (`weight_block_size`); `None` without one (or with mlx-lm's block, which has no
/// `quant_method`). Only E4M3 (`fmt`) with two-dimensional blocks
/// is read; anything else is refused, naming the key.
pub fn fp8_block(config: &Keys) -> Result<Option<(u64, u64)>> {
    let Some(q) = config.object("quantization_config")? else { return Ok(None) };
    match q.str("quant_method")? {
        Some("fp8") => {}
        Some(other) => bail!("quantization_config.quant_method is '{other}'; moeq reads FP8 ('fp8') checkpoints"),
        // mlx-lm's builds repeat their own settings there.
        None => return Ok(None),
    }
    // DeepSeek writes "e4m3", MiniMax "float8_e4m3fn" (torch's name).
    if let Some(fmt) = q.str("fmt")?
        && fmt != "e4m3"
        && fmt != "float8_e4m3fn"
    {
        bail!("quantization_config.fmt is '{fmt}'; moeq reads E4M3 FP8 weights");
    }
    let sizes: Option<Vec<u64>> =
        q.raw("weight_block_size").and_then(Json::as_array).map(|a| a.iter().filter_map(Json::as_u64).collect());
    match sizes.as_deref() {
        Some(&[rows, cols]) if rows > 0 && cols > 0 && rows <= 1 << 20 && cols <= 1 << 20 => Ok(Some((rows, cols))),
        _ => bail!(
            "quantization_config.weight_block_size is {}; moeq reads FP8 weights with one scale per block of [rows, cols]",
            q.raw("weight_block_size").map_or("missing".to_string(), Json::to_string)
        ),
    }
}

/// The block scales of a checkpoint's FP8 weights (`NAME_scale_inv` beside `NAME`), taken out
/// of its tensor list: what makes an FP8 weight's [`Input::Fp8`].
pub struct Fp8Scales<'a> {
    block: (u64, u64),
    scales: HashMap<String, SourceTensor<'a>>,
}

impl<'a> Fp8Scales<'a> {
    /// Takes the `*_scale_inv` tensors out of `sources` and pairs them with their weights.
    /// `block` is [`fp8_block`]'s. Errors name the file and tensor: an F8_E4M3 weight without
    /// its scales, scales without an FP8 weight, F8_E4M3 tensors in a checkpoint whose
    /// `config.json` declares no FP8 quantization, scales that are not F32 or not one per block
    /// ([⌈rows / block rows⌉, ⌈cols / block cols⌉]), an FP8 tensor that is not a matrix.
    pub fn split(
        sources: Vec<SourceTensor<'a>>,
        block: Option<(u64, u64)>,
    ) -> Result<(Vec<SourceTensor<'a>>, Fp8Scales<'a>)> {
        let (scales, weights): (Vec<_>, Vec<_>) = sources.into_iter().partition(|s| s.name.ends_with("_scale_inv"));
        let index: HashMap<&str, &SourceTensor> = weights.iter().map(|w| (w.name.as_str(), w)).collect();
        let mut by_weight = HashMap::new();
        for s in scales {
            let weight = s.name.trim_end_matches("_scale_inv").to_string();
            let Some(w) = index.get(weight.as_str()) else {
                bail!("{}: block scales of '{weight}', which the checkpoint does not hold", s.origin);
            };
            if w.dtype != Dtype::F8_E4M3 {
                bail!("{}: block scales of '{weight}', which is {:?}, not F8_E4M3", s.origin, w.dtype);
            }
            by_weight.insert(weight, s);
        }
        for w in weights.iter().filter(|w| w.dtype == Dtype::F8_E4M3) {
            let Some(block) = block else {
                bail!(
                    "{}: F8_E4M3, but config.json declares no FP8 quantization (quantization_config with \
                     quant_method 'fp8' and its weight_block_size)",
                    w.origin
                );
            };
            let Some(s) = by_weight.get(&w.name) else {
                bail!("{}: F8_E4M3 without its block scales '{}_scale_inv'", w.origin, w.name);
            };
            let &[rows, cols] = w.shape.as_slice() else {
                bail!("{}: an F8_E4M3 tensor of shape {:?}; FP8 weights are matrices", w.origin, w.shape);
            };
            let want = vec![rows.div_ceil(block.0), cols.div_ceil(block.1)];
            if s.dtype != Dtype::F32 || s.shape != want {
                bail!(
                    "{}: {:?} {:?}, but the scales of '{}' {:?} in blocks of {block:?} are F32 {want:?}",
                    s.origin,
                    s.dtype,
                    s.shape,
                    w.name,
                    w.shape
                );
            }
        }
        Ok((weights, Fp8Scales { block: block.unwrap_or((1, 1)), scales: by_weight }))
    }

    /// Whether `s` is an FP8 weight.
    pub fn is_fp8(&self, s: &SourceTensor) -> bool {
        self.scales.contains_key(&s.name)
    }

    /// The input decoding FP8 weight `s` through `view` (indices of its stored values), each
    /// value rounded to `round` (the type the converter writes); `None` when `s` is not FP8.
    pub fn input(&self, s: &SourceTensor<'a>, view: View, round: GgmlType) -> Option<Input<'a>> {
        let scales = self.scales.get(&s.name)?;
        let cols = s.shape.get(1).copied().unwrap_or(1);
        Some(Input::Fp8 { weight: s.stored, scales: scales.stored, cols, block: self.block, view, round })
    }
}

/// One stacked expert tensor (`ne` = [cols, rows, experts]) from per-expert parts, each
/// making `rows` rows (see [`stacked_experts`], which builds the parts of float checkpoints).
pub fn stacked(name: String, parts: Vec<Part<'_>>, (rows, cols): (u64, u64), out: GgmlType) -> Recipe<'_> {
    let spec = moeq_formats::gguf::TensorSpec { name, ne: vec![cols, rows, parts.len() as u64], ggml_type: out };
    Recipe { spec, parts, check_finite: true, importance: None, rounding: None }
}
