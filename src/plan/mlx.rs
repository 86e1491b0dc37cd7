//! MLX builds (`moeq convert SRC -o DIR --format mlx`): the folder `mlx_lm convert` writes for
//! Apple silicon, from any checkpoint moeq reads.
//!
//! The tensors come from the same recipes as the GGUF (llama.cpp's layout is MLX's: rows are
//! output features, experts stacked `[E, out, in]`), renamed to mlx-lm's names, with Llama's
//! q/k rows left in Hugging Face order. Per quantized layer: `weight` (u32 words), `scales`,
//! and `biases` for affine mode. `config.json` gets mlx-lm's `quantization` block.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;
use moeq_formats::safetensors::{Dtype, StTensorSpec};
use serde_json::{Value as Json, json};

use crate::families::common::float_dtype;
use crate::families::{Family, MlxModule};
use crate::plan::optimize::measure::Codec;
use crate::plan::recipe::{Input, Recipe};
use crate::write::safetensors::{Encoding, Item};

/// How one MLX tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlxType {
    /// Unquantized, in this float type (BF16, F16, F32).
    Float(GgmlType),
    /// Affine quantization.
    Affine {
        /// Bits per value: 2, 3, 4, 5, 6 or 8 ([`moeq_kernels::mlx::AFFINE_BITS`]).
        bits: u32,
        /// Values per group: 32, 64 or 128.
        group: u64,
    },
    /// MXFP4 (groups of 32, E8M0 scales).
    Mxfp4,
}

impl MlxType {
    /// Parses `bf16`, `f16`, `f32`, `q2`, `q3`, `q4`, `q5`, `q6`, `q8` or `mxfp4`; `group`
    /// applies to the affine types `qN` (mlx-lm's default 64).
    pub fn parse(text: &str, group: Option<u64>) -> Result<MlxType> {
        let affine = |bits| {
            let group = group.unwrap_or(64);
            if !matches!(group, 32 | 64 | 128) {
                bail!("group size {group}: MLX takes 32, 64 or 128");
            }
            Ok(MlxType::Affine { bits, group })
        };
        match text.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(MlxType::Float(GgmlType::BF16)),
            "f16" | "float16" => Ok(MlxType::Float(GgmlType::F16)),
            "f32" | "float32" => Ok(MlxType::Float(GgmlType::F32)),
            "q2" => affine(2),
            "q3" => affine(3),
            "q4" => affine(4),
            "q5" => affine(5),
            "q6" => affine(6),
            "q8" => affine(8),
            "mxfp4" => match group {
                None | Some(32) => Ok(MlxType::Mxfp4),
                Some(g) => bail!("group size {g}: MLX's mxfp4 uses groups of 32"),
            },
            other => bail!("'{other}' is not an MLX type: bf16, f16, f32, q2, q3, q4, q5, q6, q8 or mxfp4"),
        }
    }

    /// Group size of a quantized type.
    pub fn group(self) -> Option<u64> {
        match self {
            MlxType::Float(_) => None,
            MlxType::Affine { group, .. } => Some(group),
            MlxType::Mxfp4 => Some(32),
        }
    }

    /// The settings as mlx-lm writes them in `config.json`.
    pub fn params(self) -> Json {
        match self {
            MlxType::Float(_) => Json::Null,
            MlxType::Affine { bits, group } => json!({"group_size": group, "bits": bits, "mode": "affine"}),
            MlxType::Mxfp4 => json!({"group_size": 32, "bits": 4, "mode": "mxfp4"}),
        }
    }
}

/// `q4:64` (affine: bits and group size, as `--quant-override` takes them), `mxfp4`, `bf16`,
/// `f16`, `f32`.
impl std::fmt::Display for MlxType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MlxType::Float(t) => f.write_str(&t.name().to_ascii_lowercase()),
            MlxType::Affine { bits, group } => write!(f, "q{bits}:{group}"),
            MlxType::Mxfp4 => f.write_str("mxfp4"),
        }
    }
}

/// MLX's quantizers as the writer runs them (`mlx.core.quantize`'s bytes), decoded as mlx-lm
/// decodes them: the error a size budget measures. Floats go through the GGUF writer's
/// conversion (the same rounding). A group whose affine scale or bias overflows bf16 cannot be
/// held.
impl Codec for MlxType {
    fn round_trip(&self, recipe: &Recipe, values: &[f32], first: u64, count: u64, back: &mut Vec<f32>) -> Result<bool> {
        let n = values.len();
        match *self {
            MlxType::Float(t) => t.round_trip(recipe, values, first, count, back),
            MlxType::Affine { bits, group } => {
                let g = group as usize;
                let (mut w, mut sc, mut bi) =
                    (vec![0u32; n * bits as usize / 32], vec![0u16; n / g], vec![0u16; n / g]);
                moeq_kernels::mlx::affine_quantize(values, bits, g, &mut w, &mut sc, &mut bi)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", recipe.parts[0].origin))?;
                if sc.iter().chain(&bi).any(|h| h & 0x7F80 == 0x7F80) {
                    return Ok(false);
                }
                back.resize(n, 0.0);
                moeq_kernels::mlx::affine_dequantize(&w, &sc, &bi, bits, g, back);
                Ok(true)
            }
            MlxType::Mxfp4 => {
                let (mut codes, mut scales) = (vec![0u8; n / 2], vec![0u8; n / 32]);
                moeq_kernels::mlx::mxfp4_quantize(values, &mut codes, &mut scales)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", recipe.parts[0].origin))?;
                back.resize(n, 0.0);
                moeq_kernels::openai::dequantize(&codes, &scales, back);
                Ok(true)
            }
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct MlxOptions {
    /// `--type`: `None` = mlx-lm without `-q`.
    pub ty: Option<MlxType>,
    /// Per-module overrides (`PATTERN=TYPE`, `*` matches any text), first match wins.
    pub overrides: Vec<(String, MlxType)>,
    /// Per-module types chosen to a size budget ([`crate::plan::optimize::mlx`]), by module
    /// path; applied after `overrides`, before the family's and `--type`'s choices.
    pub chosen: Vec<(String, MlxType)>,
    /// `--candidate-types` of a size budget: the types to choose among (`None`: all).
    pub candidates: Option<Vec<MlxType>>,
}

/// One tensor of an MLX build as [`plan`] sees it before choosing its type.
pub struct Slot {
    /// Its MLX name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// The module (the name without `.weight`).
    pub module: String,
    /// Its MLX shape (row-major, rows of `row_len` values last).
    pub shape: Vec<usize>,
    /// A weight matrix of a module mlx-lm may quantize (`nn.Linear`, `SwitchLinear`,
    /// `nn.Embedding`), not a norm, bias or 1-D tensor.
    pub is_module: bool,
    /// Stacked experts.
    pub is_experts: bool,
    /// Stored as OpenAI MXFP4 in the source (gpt-oss's released experts).
    pub stored_mxfp4: bool,
    /// Values per row.
    pub row_len: u64,
    /// The `--quant-override` that matches it.
    pub over: Option<MlxType>,
}

impl Slot {
    /// The tensor behind `recipe` (llama.cpp-named), or `None` for tensors MLX does not store.
    pub fn of(recipe: &Recipe, family: &dyn Family, opts: &MlxOptions) -> Option<Slot> {
        let name = mlx_name(&recipe.spec.name, family)?;
        let shape: Vec<usize> = recipe.spec.ne.iter().rev().map(|&d| d as usize).collect();
        let is_module = name.ends_with(".weight") && shape.len() >= 2;
        let module = name.trim_end_matches(".weight").to_string();
        let over = opts.overrides.iter().find(|(p, _)| glob(p, &module)).map(|(_, t)| *t);
        Some(Slot {
            is_module,
            is_experts: recipe.spec.name.contains("_exps."),
            stored_mxfp4: matches!(recipe.input(), Input::OpenAiMxfp4 { .. }),
            row_len: recipe.row_len(),
            over,
            name,
            module,
            shape,
        })
    }

    /// Whether a size budget may choose this module's type when the build's quantized type is
    /// `ty`: a module mlx-lm quantizes (rows of whole groups of `ty`, or of MXFP4's 32), not set by
    /// `--quant-override`, and not one whose type the model's own mlx-lm choice sets (gpt-oss's
    /// experts and router, Qwen3-MoE's routers).
    pub fn budgeted(&self, family: &dyn Family, ty: MlxType, dtype: GgmlType) -> bool {
        let info = MlxModule {
            path: &self.module,
            experts: self.is_experts,
            stored_mxfp4: self.stored_mxfp4,
            row_len: self.row_len,
        };
        // Rows of whole groups of the affine candidates' size, or of MXFP4's 32.
        let group = ty.group().unwrap_or(1);
        self.is_module
            && self.over.is_none()
            && (self.row_len.is_multiple_of(group) || self.row_len.is_multiple_of(32))
            && family.mlx_choice(&info, Some(ty), MlxType::Float(dtype)).is_none()
    }
}

/// Parses an override `PATTERN=TYPE[:GROUP]` (e.g. `lm_head=q8`, `*.mlp.router=bf16`).
pub fn parse_override(text: &str) -> Result<(String, MlxType)> {
    let (pattern, ty) = text.split_once('=').context("expected PATTERN=TYPE, e.g. lm_head=q8:64")?;
    let (ty, group) = match ty.split_once(':') {
        Some((t, g)) => (
            t,
            Some(
                g.parse::<u64>()
                    .with_context(|| format!("group size '{g}' is not a whole number (MLX takes 32, 64 or 128)"))?,
            ),
        ),
        None => (ty, None),
    };
    Ok((pattern.to_string(), MlxType::parse(ty, group)?))
}

/// Whether `pattern` (with `*` wildcards) matches all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// mlx-lm's name for a llama.cpp tensor name, or `None` for tensors MLX does not store
/// (Llama 3's computed RoPE factors).
pub fn mlx_name(gguf: &str, family: &dyn Family) -> Option<String> {
    let global = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_string());
    }
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let experts = family.mlx_experts();
    for which in ["gate", "up", "down"] {
        for suffix in ["weight", "bias"] {
            if rest == format!("ffn_{which}_exps.{suffix}") {
                return Some(format!("model.layers.{layer}.{experts}.{which}_proj.{suffix}"));
            }
        }
    }
    let hf = family.layer_names().iter().find(|(_, g)| *g == rest)?.0;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The float type of unquantized tensors: the checkpoint's `torch_dtype` (or `dtype`), as
/// mlx-lm casts to it; bf16 when the config names none.
pub fn model_dtype(config: &Json) -> GgmlType {
    match config.get("torch_dtype").or(config.get("dtype")).and_then(Json::as_str) {
        Some("float16") => GgmlType::F16,
        Some("float32") => GgmlType::F32,
        _ => GgmlType::BF16,
    }
}

/// The MLX build: items to write and the `quantization` block (`None`: unquantized).
pub struct MlxBuild<'a> {
    /// The tensors.
    pub items: Vec<Item<'a>>,
    /// `config.json`'s `quantization` (and `quantization_config`).
    pub quantization: Option<Json>,
    /// Parameters as mlx-lm counts them (those of leaf modules), for the index.
    pub parameters: u64,
    /// What the user should know about the choices (printed by `convert`).
    pub warnings: Vec<String>,
}

/// Plans the MLX build of a checkpoint from its GGUF recipes.
pub fn plan<'a>(
    recipes: Vec<Recipe<'a>>,
    family: &dyn Family,
    dtype: GgmlType,
    opts: &MlxOptions,
) -> Result<MlxBuild<'a>> {
    let mut items = Vec::new();
    // Quantized modules other than MXFP4 experts, with their settings, in model order.
    let mut per_module: Vec<(String, Json)> = Vec::new();
    let mut mxfp4_experts = false;
    let mut parameters = 0u64;
    let mut quantized_routers = 0;
    let global = opts.ty.filter(|t| !matches!(t, MlxType::Float(_)));
    // Per --quant-override: whether it matched a module (llama.cpp's --tensor-type rules are
    // checked the same way: a pattern that matches nothing is a typo, not a no-op).
    let mut matched = vec![false; opts.overrides.len()];
    let mut example_modules: Vec<String> = Vec::new();
    for recipe in recipes {
        let Some(Slot { name, module, shape, is_module, is_experts, stored_mxfp4, row_len, over }) =
            Slot::of(&recipe, family, opts)
        else {
            continue;
        };
        if is_module {
            for (hit, (pattern, _)) in matched.iter_mut().zip(&opts.overrides) {
                *hit |= glob(pattern, &module);
            }
            if example_modules.len() < 5 && !example_modules.iter().any(|m| same_but_layer(m, &module)) {
                example_modules.push(module.clone());
            }
        }
        if !name.ends_with(".sinks") {
            // As mlx-lm counts: parameters of leaf modules (the sinks belong to the attention).
            parameters += shape.iter().product::<usize>() as u64;
        }
        let recipe = hf_row_order(recipe);
        let chosen = opts.chosen.iter().find(|(m, _)| *m == module).map(|(_, t)| *t);

        let module_info = MlxModule { path: &module, experts: is_experts, stored_mxfp4, row_len };
        let mut family_params = None;
        let mut from_family = false;
        let choice = if !is_module {
            // mlx-lm casts to the model's dtype what its model's cast_predicate lets it.
            MlxType::Float(if family.mlx_cast(&name) { dtype } else { recipe.spec.ggml_type })
        } else if let Some(t) = over.or(chosen) {
            t
        } else if let Some(c) = family.mlx_choice(&module_info, opts.ty, MlxType::Float(dtype)) {
            // mlx-lm's per-model choice (gpt-oss: experts MXFP4, the router in 8 bits).
            family_params = c.params;
            from_family = true;
            c.ty
        } else {
            match opts.ty {
                None => MlxType::Float(dtype),
                Some(t) => t,
            }
        };
        // Quantize only rows that are whole groups, as mlx-lm does.
        let choice = match choice.group() {
            Some(g) if !row_len.is_multiple_of(g) => {
                if over.is_some() {
                    bail!("{module}: rows of {row_len} values are not whole groups of {g}");
                }
                MlxType::Float(dtype)
            }
            _ => choice,
        };
        // MXFP4 experts by the model's own choice (gpt-oss), as mlx-lm reads them from an MXFP4
        // source; not when --type mxfp4 made every layer MXFP4.
        if is_experts && choice == MlxType::Mxfp4 && (from_family || stored_mxfp4 || over.is_some()) {
            mxfp4_experts = true;
        }
        if over.is_none()
            && family.mlx_router().is_some_and(|r| module.ends_with(r))
            && matches!(choice, MlxType::Affine { .. })
        {
            quantized_routers += 1;
        }
        if matches!(choice, MlxType::Affine { .. } | MlxType::Mxfp4) && !(is_experts && choice == MlxType::Mxfp4) {
            let params = family_params.clone().unwrap_or_else(|| choice.params());
            per_module.push((module.clone(), params));
        } else if is_experts && choice == MlxType::Mxfp4 && (over.is_some() || chosen.is_some()) {
            // Set for these experts alone (not the model's MXFP4 experts): listed.
            per_module.push((module.clone(), choice.params()));
        }
        items.push(item(recipe, &name, &module, &shape, choice, stored_mxfp4));
    }

    if let Some(i) = matched.iter().position(|hit| !hit) {
        let (pattern, ty) = &opts.overrides[i];
        bail!(
            "--quant-override '{pattern}={ty}' matches no module of the model that MLX quantizes (patterns match \
             whole module paths, '*' any text; modules are named like {})",
            example_modules.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ")
        );
    }

    // The quantization block as mlx-lm writes it: when the source was MXFP4 (gpt-oss), the
    // global setting is mxfp4 and every other quantized module is listed; otherwise the
    // global setting is --type's and only modules that differ are listed.
    let quantization = if mxfp4_experts {
        let mut q = MlxType::Mxfp4.params();
        for (module, params) in &per_module {
            q[module] = params.clone();
        }
        Some(q)
    } else if let Some(g) = global {
        let mut q = g.params();
        for (module, params) in &per_module {
            if *params != g.params() {
                q[module] = params.clone();
            }
        }
        Some(q)
    } else if let Some((_, first)) = per_module.first() {
        // Only overrides (or a budget's choices) quantize: each listed, and the first one's settings
        // as the global ones, which mlx-lm's loader reads whenever the block exists.
        let mut q = first.clone();
        for (module, params) in &per_module {
            q[module] = params.clone();
        }
        Some(q)
    } else {
        None
    };
    let mut warnings = Vec::new();
    if quantized_routers > 0
        && let Some(router) = family.mlx_router()
    {
        let module = router.trim_start_matches('.');
        warnings.push(format!(
            "{} ({module}) quantized like any linear layer, as mlx-lm \
             does; expert choice is sensitive to them: --quant-override '*{router}=bf16' keeps \
             them in the model's dtype",
            crate::inspect::count(quantized_routers as u64, "MoE router")
        ));
    }
    Ok(MlxBuild { items, quantization, parameters, warnings })
}

/// Whether two module paths differ only in their layer number (`model.layers.N.…`).
fn same_but_layer(a: &str, b: &str) -> bool {
    let strip =
        |m: &str| -> String { m.split('.').filter(|p| p.parse::<u64>().is_err()).collect::<Vec<_>>().join(".") };
    strip(a) == strip(b)
}

/// Llama's q/k rows back in Hugging Face order (the GGUF recipe interleaves them for
/// llama.cpp's RoPE; MLX rotates halves like transformers).
fn hf_row_order(mut recipe: Recipe<'_>) -> Recipe<'_> {
    for part in &mut recipe.parts {
        if let Input::Values { view, .. } = &mut part.input {
            view.rope_group = 0;
        }
    }
    recipe
}

/// The item writing `module` as `choice`.
fn item<'a>(
    recipe: Recipe<'a>,
    name: &str,
    module: &str,
    shape: &[usize],
    choice: MlxType,
    stored_mxfp4: bool,
) -> Item<'a> {
    let outputs = outputs(name, module, shape, choice);
    match choice {
        MlxType::Float(t) => Item { recipe: recipe.retype(t), encoding: Encoding::Rows, outputs },
        MlxType::Affine { bits, group } => Item { recipe, encoding: Encoding::Affine { bits, group }, outputs },
        MlxType::Mxfp4 => {
            Item { recipe, encoding: if stored_mxfp4 { Encoding::StoredMxfp4 } else { Encoding::MlxMxfp4 }, outputs }
        }
    }
}

/// The tensors tensor `name` (of `module`, MLX shape `shape`) becomes when stored as
/// `choice`: the weight itself (floats), or `weight` (u32 words), `scales` and, affine,
/// `biases` (bf16; MXFP4: u8 scales).
pub fn outputs(name: &str, module: &str, shape: &[usize], choice: MlxType) -> Vec<StTensorSpec> {
    let cols = *shape.last().unwrap_or(&1);
    let lead = &shape[..shape.len().saturating_sub(1)];
    let with_last = |last: usize| -> Vec<usize> { lead.iter().copied().chain([last]).collect() };
    let spec = |suffix: &str, dtype: Dtype, shape: Vec<usize>| StTensorSpec {
        name: format!("{module}.{suffix}"),
        dtype,
        shape,
    };
    match choice {
        MlxType::Float(t) => {
            vec![StTensorSpec { name: name.to_string(), dtype: float_dtype(t), shape: shape.to_vec() }]
        }
        MlxType::Affine { bits, group } => vec![
            spec("weight", Dtype::U32, with_last(cols * bits as usize / 32)),
            spec("scales", Dtype::BF16, with_last(cols / group as usize)),
            spec("biases", Dtype::BF16, with_last(cols / group as usize)),
        ],
        MlxType::Mxfp4 => {
            vec![spec("weight", Dtype::U32, with_last(cols / 8)), spec("scales", Dtype::U8, with_last(cols / 32))]
        }
    }
}

/// `config.json` of the build: the source's (Hugging Face form), with the quantization block
/// replaced and keys sorted, as mlx-lm's `save_config` writes it.
pub fn config_json(hf_config: &Json, quantization: Option<&Json>) -> Json {
    let mut map: Vec<(String, Json)> =
        hf_config.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    map.retain(|(k, _)| k != "quantization" && k != "quantization_config" && k != "_name_or_path");
    // transformers 5 saves RoPE settings only in `rope_parameters`; mlx-lm's models read
    // `rope_theta` and `rope_scaling` at the top level (and silently default a missing theta to
    // 10000): both lifted, the original kept.
    if let Some(rope) = hf_config.get("rope_parameters").and_then(Json::as_object) {
        let has = |key: &str| hf_config.get(key).is_some_and(|v| !v.is_null());
        if !has("rope_theta")
            && let Some(theta) = rope.get("rope_theta").filter(|t| t.is_number())
        {
            map.retain(|(k, _)| k != "rope_theta");
            map.push(("rope_theta".into(), theta.clone()));
        }
        let scaled = rope.get("rope_type").and_then(Json::as_str).is_some_and(|t| t != "default");
        if scaled && !has("rope_scaling") {
            let scaling: serde_json::Map<String, Json> =
                rope.iter().filter(|(k, _)| *k != "rope_theta").map(|(k, v)| (k.clone(), v.clone())).collect();
            map.retain(|(k, _)| k != "rope_scaling");
            map.push(("rope_scaling".into(), Json::Object(scaling)));
        }
    }
    if let Some(q) = quantization {
        map.push(("quantization".into(), q.clone()));
        map.push(("quantization_config".into(), q.clone()));
    }
    map.sort_by(|a, b| a.0.cmp(&b.0));
    Json::Object(map.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        use crate::families::{gpt_oss::GptOss, llama::Llama, mixtral::Mixtral};
        assert_eq!(mlx_name("blk.3.ffn_gate_exps.bias", &GptOss).unwrap(), "model.layers.3.mlp.experts.gate_proj.bias");
        assert_eq!(
            mlx_name("blk.0.ffn_down_exps.weight", &Mixtral).unwrap(),
            "model.layers.0.block_sparse_moe.switch_mlp.down_proj.weight"
        );
        assert_eq!(mlx_name("blk.1.attn_sinks.weight", &GptOss).unwrap(), "model.layers.1.self_attn.sinks");
        assert_eq!(mlx_name("rope_freqs.weight", &Llama), None);
        assert!(glob("*.mlp.router", "model.layers.0.mlp.router"));
        assert!(glob("model.layers.*.self_attn.*", "model.layers.12.self_attn.q_proj"));
        assert!(!glob("lm_head", "model.lm_head"));
        assert_eq!(
            parse_override("lm_head=q8:32").unwrap(),
            ("lm_head".into(), MlxType::Affine { bits: 8, group: 32 })
        );
        assert_eq!(parse_override("*.down_proj=q3").unwrap().1, MlxType::Affine { bits: 3, group: 64 });
        for (t, bits) in [("q2", 2), ("q5", 5), ("q6", 6)] {
            assert_eq!(MlxType::parse(t, Some(32)).unwrap(), MlxType::Affine { bits, group: 32 });
        }
        assert!(parse_override("lm_head=q7").is_err() && MlxType::parse("q4", Some(48)).is_err());
    }

    #[test]
    fn rope_parameters_are_lifted_for_mlx_lm() {
        // transformers 5's form: mlx-lm reads rope_theta / rope_scaling at the top level.
        let hf = json!({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "rope_scaling": null});
        let c = config_json(&hf, None);
        assert_eq!(c["rope_theta"], 100000.0);
        assert!(c["rope_scaling"].is_null() && c["rope_parameters"]["rope_theta"] == 100000.0);
        let llama3 = json!({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0}});
        let c = config_json(&llama3, None);
        assert_eq!(c["rope_scaling"], json!({"rope_type": "llama3", "factor": 32.0}));
        assert_eq!(c["rope_theta"], 500000.0);
        // Top-level settings win.
        let both = json!({"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 1.0, "rope_type": "yarn"},
                          "rope_scaling": {"type": "yarn", "factor": 4.0}});
        let c = config_json(&both, None);
        assert_eq!((c["rope_theta"].clone(), c["rope_scaling"]["factor"].clone()), (json!(10000.0), json!(4.0)));
    }
}
