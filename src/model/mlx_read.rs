//! Reading an MLX build back as a model (for `eval`, `verify`, `inspect`): every tensor under
//! its llama.cpp name in GGUF layout, quantized layers decoded from their `weight`, `scales`
//! and `biases`, Llama's q/k rows interleaved again for llama.cpp's RoPE.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_formats::safetensors::{Dtype, SafetensorsModel, StTensor};
use serde_json::Value as Json;

use crate::families::ModelConfig;
use crate::families::common::{Converted, ggml_of, gguf_plan};
use crate::plan::mlx::mlx_name;
use crate::plan::recipe::{Input, Recipe, Stored, View};

/// The quantization of `module` per the config: (bits, group, mode), as mlx-lm reads it (a
/// per-module object, else the global settings; `true` for the module: the global settings).
/// `None` when the config gives no bits or group size.
///
/// Errors: a per-module `false` (mlx-lm would build the module unquantized and fail to load
/// its packed weight) or other non-object; `bits`, `group_size` or `mode` of the wrong type
/// (they were read as absent), each naming the key.
fn quant_of(config: &Json, module: &str) -> Result<Option<(u32, u64, String)>> {
    let Some(q) = config.get("quantization") else { return Ok(None) };
    let (params, prefix) = match q.get(module) {
        None | Some(Json::Bool(true)) => (q, "quantization".to_string()),
        Some(p) if p.is_object() => (p, format!("quantization.{module}")),
        Some(Json::Bool(false)) => bail!(
            "config.json's \"quantization\" says \"{module}\": false (mlx-lm would build it unquantized and fail to \
             load its packed weight), but the folder stores it quantized"
        ),
        Some(other) => bail!("config.json's \"quantization.{module}\" is {other}, not an object or true/false"),
    };
    let int = |key: &str| -> Result<Option<u64>> {
        match params.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .with_context(|| format!("config.json's \"{prefix}.{key}\" is {v}, not a non-negative integer")),
        }
    };
    let (Some(bits), Some(group)) = (int("bits")?, int("group_size")?) else { return Ok(None) };
    // Past u32: kept out of range (refused by the caller), not wrapped.
    let bits = u32::try_from(bits).unwrap_or(u32::MAX);
    let mode = match params.get("mode") {
        None | Some(Json::Null) => "affine",
        Some(Json::String(m)) => m.as_str(),
        Some(v) => bail!("config.json's \"{prefix}.mode\" is {v}, not a string"),
    };
    Ok(Some((bits, group, mode.to_string())))
}

fn stored<'a>(model: &'a SafetensorsModel, name: &str) -> Option<(Stored<'a>, &'a StTensor)> {
    let (file, t) = model.tensors().find(|(_, t)| t.name == name)?;
    // Raw bytes (MXFP4 codes, packed words) for anything but floats.
    let ty = ggml_of(t.dtype).unwrap_or(GgmlType::I8);
    Some((Stored { file: file.file_bytes(), start: t.start, len: t.len, ty }, t))
}

/// Plans the model in an MLX build folder as llama.cpp-named recipes.
pub fn plan<'a>(model: &'a SafetensorsModel, config: &ModelConfig) -> Result<Converted<'a>> {
    let json = &config.json;
    let (metadata, head_dim) = config.family.build_metadata(config)?;
    let arch_name = config.family.gguf_arch();
    let mut names: Vec<(String, String)> = Vec::new();
    let present: std::collections::HashSet<&str> = model.tensors().map(|(_, t)| t.name.as_str()).collect();
    // llama.cpp name for every MLX tensor that carries values (not scales/biases).
    let block_count = format!("{arch_name}.block_count");
    let layers = metadata.iter().find(|(k, _)| *k == block_count).and_then(|(_, v)| v.as_u64()).unwrap_or(0);
    let gguf_names = gguf_candidates(config, layers);
    for (_, t) in model.tensors() {
        if t.name.ends_with(".scales") || t.name.ends_with(".biases") {
            continue;
        }
        let gguf = gguf_names.iter().find(|(_, m)| *m == t.name).map(|(g, _)| g.clone()).with_context(|| {
            format!("{}: tensor '{}' is not part of a {} MLX build", model.path().display(), t.name, config.class)
        })?;
        names.push((gguf, t.name.clone()));
    }
    let dir = model.path().display().to_string();
    let module = mlx_module(json, &config.class, &dir)?;
    check_head(json, module, &names, &dir)?;
    // In llama.cpp's tensor order.
    names.sort_by_key(|(g, _)| gguf_names.iter().position(|(n, _)| n == g));
    // What llama.cpp's file holds but the folder does not store (Llama 3.1's rope_freqs).
    let mut recipes = config.family.computed_recipes(config)?;
    for (gguf, name) in names {
        let origin = format!("{}: tensor '{name}'", model.path().display());
        let (weight, t) = stored(model, &name).context("listed tensor")?;
        let module = name.trim_end_matches(".weight");
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let rope = if head_dim > 0 && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight")) {
            head_dim
        } else {
            0
        };
        let scales =
            present.contains(format!("{module}.scales").as_str()).then(|| stored(model, &format!("{module}.scales")));
        let (input, cols, ty) = match scales.flatten() {
            None if t.dtype == Dtype::U32 => {
                bail!("{origin}: packed codes (U32 words), but the folder has no '{module}.scales' to decode them with")
            }
            None => {
                let cols = *shape.last().unwrap_or(&1);
                let mut view = View::plain(shape.iter().product::<u64>() / cols.max(1), cols);
                view.rope_group = rope;
                (Input::Values { src: weight, view }, cols, weight.ty)
            }
            Some((scales, st)) => {
                // Without settings in config.json, MLX's mxfp4 mode (U8 scales, no biases)
                // still says everything: 4 bits in groups of 32.
                let mxfp4 = st.dtype == Dtype::U8 && !present.contains(format!("{module}.biases").as_str());
                let settings = quant_of(json, module).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
                let Some((bits, group, mode)) = settings.or_else(|| mxfp4.then(|| (4, 32, "mxfp4".to_string()))) else {
                    bail!(
                        "{origin}: quantized, but config.json has no \"quantization\" settings for it (bits and group \
                         size); an MLX build needs the config.json it was written with"
                    );
                };
                if !(1..=8).contains(&bits) || group == 0 {
                    bail!(
                        "{origin}: config.json's quantization gives {bits} bits in groups of {group}; MLX packs 1 to 8 \
                         bits in groups of at least one"
                    );
                }
                let words = *shape.last().unwrap_or(&0);
                let cols = words * 32 / bits as u64;
                let rows = shape.iter().product::<u64>() / words.max(1);
                let groups = st.shape.last().copied().unwrap_or(0) as u64;
                if cols == 0 || groups * group != cols || !cols.is_multiple_of(32) {
                    bail!("{origin}: {words} words of {bits} bits do not make groups of {group} ({groups} scales)");
                }
                let mut view = View::plain(rows, cols);
                view.rope_group = rope;
                match mode.as_str() {
                    "mxfp4" if bits == 4 && group == 32 => {
                        let blocks_view =
                            View { cols: cols / 32, row_stride: cols / 32, outer_stride: rows * cols / 32, ..view };
                        (Input::OpenAiMxfp4 { blocks: weight, scales, view: blocks_view }, cols, GgmlType::MXFP4)
                    }
                    "affine" if moeq_kernels::mlx::check_affine(bits, group as usize).is_ok() => {
                        let biases = stored(model, &format!("{module}.biases")).map(|b| b.0);
                        let biases = biases.with_context(|| format!("{origin}: affine without biases"))?;
                        let ty = affine_kin(bits);
                        (Input::MlxAffine { weight, scales, biases, bits, group, view }, cols, ty)
                    }
                    other => bail!("{origin}: MLX {other} with {bits} bits, group {group} is not supported"),
                }
            }
        };
        let mut ne: Vec<u64> = shape.iter().rev().copied().collect();
        if let Some(first) = ne.first_mut() {
            *first = cols;
        }
        check_size(&input, &ne, &origin)?;
        recipes.push(Recipe::new(TensorSpec { name: gguf, ne, ggml_type: ty }, input, true, origin));
    }
    let plan = gguf_plan(arch_name, &config.dir, json, &recipes, metadata, None);
    Ok(Converted { plan, recipes, warnings: Vec::new() })
}

/// The mlx-lm 0.32 model code (`mlx_lm.models.<module>`) a folder's `model_type` selects, after
/// mlx-lm's `MODEL_REMAPPING` (`mistral`, `iquestcoder`, `xverse` → `llama`; `kimi_k2`,
/// `joyai_llm_flash` → `deepseek_v3`; `minimax_m2` → `minimax`), which must be the code of the folder's `architectures`
/// class: mlx-lm picks its model by `model_type` alone.
///
/// Errors: `model_type` missing or not a string (mlx-lm's loader fails on it), or selecting
/// other code than the class's (mlx-lm would run another model, or refuse a type it has no
/// code for), naming the folder and the key.
fn mlx_module(json: &Json, class: &str, dir: &str) -> Result<&'static str> {
    let want = match class {
        "LlamaForCausalLM" => "llama",
        "MixtralForCausalLM" => "mixtral",
        "Qwen2MoeForCausalLM" => "qwen2_moe",
        "Qwen3MoeForCausalLM" => "qwen3_moe",
        "DeepseekV3ForCausalLM" => "deepseek_v3",
        "GptOssForCausalLM" => "gpt_oss",
        "Glm4MoeForCausalLM" => "glm4_moe",
        "Glm4MoeLiteForCausalLM" => "glm4_moe_lite",
        "MiniMaxM2ForCausalLM" => "minimax",
        other => bail!("{dir}: moeq does not read MLX builds of {other}"),
    };
    let model_type = match json.get("model_type") {
        Some(Json::String(t)) => t.as_str(),
        None => bail!(
            "{dir}: config.json has no model_type (mlx-lm chooses its model code by it and cannot load the folder; {class} is '{want}')"
        ),
        Some(other) => bail!(
            "{dir}: config.json has model_type {other}, not a string (mlx-lm cannot load the folder; {class} is '{want}')"
        ),
    };
    let module = match model_type {
        "mistral" | "iquestcoder" | "xverse" => "llama",
        "kimi_k2" | "joyai_llm_flash" => "deepseek_v3",
        "minimax_m2" => "minimax",
        t => t,
    };
    if module != want {
        bail!(
            "{dir}: config.json has model_type '{model_type}', but the folder holds a {class} ('{want}'): mlx-lm \
             chooses its model code by model_type and would run its '{module}' code (another model) or refuse the folder"
        );
    }
    Ok(want)
}

/// Checks that mlx-lm would run the head this folder holds: a model whose embeddings mlx-lm
/// ties (per `tie_word_embeddings`, or mlx-lm 0.32's default for its model code `model_type`
/// ([`mlx_module`]): true for
/// `llama`, false for `mixtral`; `qwen2_moe`, `deepseek_v3`, `gpt_oss`, `glm4_moe` and `glm4_moe_lite` always have an
/// `lm_head`) must not have an `lm_head.weight` (mlx-lm drops it and computes with the
/// embedding — another model —, or refuses its quantization's scales), an untied one must.
///
/// Errors: either mismatch, naming the folder, the key and the tensor.
fn check_head(json: &Json, model_type: &str, names: &[(String, String)], dir: &str) -> Result<()> {
    let has_head = names.iter().any(|(g, _)| g == "output.weight");
    let key = match json.get("tie_word_embeddings") {
        None => None,
        Some(Json::Bool(b)) => Some(*b),
        Some(other) => {
            bail!("{dir}: config.json has tie_word_embeddings {other}, not true or false (mlx-lm refuses it)")
        }
    };
    if key.is_none() && matches!(model_type, "qwen3_moe" | "glm4_moe") {
        bail!("{dir}: config.json has no tie_word_embeddings, which mlx-lm's {model_type} requires (true or false)");
    }
    let always_untied = matches!(model_type, "qwen2_moe" | "deepseek_v3" | "gpt_oss" | "glm4_moe" | "glm4_moe_lite");
    let tied = match model_type {
        _ if always_untied => false,
        "llama" => key.unwrap_or(true),
        _ => key.unwrap_or(false),
    };
    let said = match key {
        Some(true) if always_untied => {
            format!(
                "config.json has tie_word_embeddings true, which mlx-lm's {model_type} ignores (it always has an lm_head)"
            )
        }
        Some(v) => format!("config.json has tie_word_embeddings {v}"),
        None => format!("config.json has no tie_word_embeddings (mlx-lm's {model_type} then ties: {tied})"),
    };
    if tied && has_head {
        bail!(
            "{dir}: {said}, but the build has its own lm_head.weight (mlx-lm would drop it and compute with the \
             embedding, another model, or refuse its scales)"
        );
    }
    if !tied && !has_head {
        bail!(
            "{dir}: {said}, but the build has no lm_head.weight (mlx-lm would refuse to load it: its model has an \
             lm_head of its own)"
        );
    }
    Ok(())
}

/// The ggml type of about the same precision as MLX's affine `bits` (what `verify` takes the
/// error bounds from): Q2_K, Q3_K, Q4_1, Q5_1, Q6_K, Q8_0.
fn affine_kin(bits: u32) -> GgmlType {
    match bits {
        2 => GgmlType::Q2_K,
        3 => GgmlType::Q3_K,
        5 => GgmlType::Q5_1,
        6 => GgmlType::Q6_K,
        8 => GgmlType::Q8_0,
        _ => GgmlType::Q4_1,
    }
}

/// Checks that the stored bytes hold what the recipe reads.
fn check_size(input: &Input, ne: &[u64], origin: &str) -> Result<()> {
    let values: u64 = ne.iter().product();
    let (need, have) = match input {
        Input::Values { src, .. } => (values * src.ty.type_size(), src.len as u64),
        Input::OpenAiMxfp4 { blocks, .. } => (values / 2, blocks.len as u64),
        Input::MlxAffine { weight, bits, .. } => (values * *bits as u64 / 8, weight.len as u64),
        _ => return Ok(()),
    };
    if need != have {
        bail!("{origin}: {have} bytes, but its shape needs {need}");
    }
    Ok(())
}

/// Every (llama.cpp name, MLX name) a model of this family with `layers` layers can have, in
/// llama.cpp's order.
fn gguf_candidates(config: &ModelConfig, layers: u64) -> Vec<(String, String)> {
    let table = config.family.layer_names();
    let mut out = Vec::new();
    let mut push = |gguf: String| {
        if let Some(m) = mlx_name(&gguf, config.family) {
            out.push((gguf, m));
        }
    };
    push("token_embd.weight".into());
    for l in 0..layers {
        for (_, g) in table {
            push(format!("blk.{l}.{g}"));
        }
        for which in ["gate", "up", "down"] {
            for suffix in ["weight", "bias"] {
                push(format!("blk.{l}.ffn_{which}_exps.{suffix}"));
            }
        }
    }
    push("output_norm.weight".into());
    push("output.weight".into());
    out.dedup();
    out
}
