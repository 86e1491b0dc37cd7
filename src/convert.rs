//! `moeq convert`: plan the output, then stream tensor bytes into it on all cores.
//!
//! Today's inputs are GGUF files (single or split). Without `--type` every tensor is copied
//! byte for byte (merging or re-splitting a model); with `--type` tensors are requantized as
//! `llama-quantize IN OUT TYPE --allow-requantize` does, tensor by tensor, in pieces of rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use moeq_formats::gguf::{GgmlType, GgufModel, GgufPlan, TensorSpec, Value};
use moeq_formats::safetensors::SafetensorsModel;

use crate::arch::{Architecture, ModelConfig};
use crate::gpt_oss::{self, OutType};
use crate::llama;
use crate::quant_plan::{Ftype, ModelFacts, TensorFacts, llama_order, target_types};
use crate::recipe::{Input, Recipe, Stored};
use crate::source::Source;
use crate::transcode::{can_read, can_write};
use crate::vocab::{LLAMA3_REGEX, O200K_REGEX, find_tokenizer, gpt2_vocab, sentencepiece_vocab};
use crate::write_gguf::write_gguf;

/// What to convert and how.
pub struct ConvertOptions {
    /// The input model.
    pub input: PathBuf,
    /// The output path (for split output, the name the shards are derived from).
    pub output: PathBuf,
    /// The llama.cpp file type to requantize to; `None` copies every tensor as it is.
    pub ftype: Option<Ftype>,
    /// Maximum tensor bytes per output shard.
    pub split_max_bytes: Option<u64>,
    /// No progress bar.
    pub quiet: bool,
    /// Convert a checkpoint without its tokenizer.
    pub no_vocab: bool,
    /// `tokenizer.ggml.pre` to write instead of the family's.
    pub tokenizer_pre: Option<String>,
}

/// What a conversion wrote.
pub struct ConvertSummary {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data read from the input.
    pub bytes: u64,
}

/// Runs a conversion.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    match Source::open(&opts.input)? {
        Source::Gguf(model) => convert_gguf(&model, opts),
        Source::Safetensors { model, config } => convert_safetensors(&model, config, opts),
    }
}

/// A Hugging Face or OpenAI checkpoint → the GGUF llama.cpp's converter writes (with `--type`
/// F32/F16/BF16 as its `--outtype`), then for quantized types what `llama-quantize` makes of
/// that, in one pass.
fn convert_safetensors(
    model: &SafetensorsModel,
    config: Option<ModelConfig>,
    opts: &ConvertOptions,
) -> Result<ConvertSummary> {
    let dir = if opts.input.is_dir() {
        opts.input.clone()
    } else {
        opts.input.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let Some(config) = config else {
        bail!("{}: no config.json beside the weights; moeq needs it to know the model", dir.display());
    };
    let config_path = dir.join("config.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)
        .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let vocab_size = json.get("vocab_size").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
    let mut warnings = Vec::new();
    let vocab = if opts.no_vocab {
        None
    } else {
        let Some(tok_dir) = find_tokenizer(&dir) else {
            bail!(
                "{}: no tokenizer.json here or in the parent folder; llama.cpp needs the tokenizer in the GGUF \
                 (pass --no-vocab to convert the weights alone)",
                dir.display()
            );
        };
        let mut keys = Vec::new();
        if config.arch == Architecture::GptOss {
            let pre = opts.tokenizer_pre.as_deref().unwrap_or("gpt-4o");
            let (k, w) = gpt2_vocab(&tok_dir, &json, vocab_size, pre, ("gpt-4o", O200K_REGEX))?;
            keys.extend(k);
            warnings.extend(w);
        } else {
            // LlamaModel.set_vocab: the tokenizer's space-prefix setting, then SentencePiece when
            // there is a tokenizer.model, else byte-level BPE (Llama 3).
            let tc = tok_dir.join("tokenizer_config.json");
            if let Some(v) = std::fs::read(&tc)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|c| c.get("add_prefix_space").and_then(serde_json::Value::as_bool))
            {
                keys.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(v)));
            }
            if tok_dir.join("tokenizer.model").is_file() && opts.tokenizer_pre.is_none() {
                keys.extend(sentencepiece_vocab(&tok_dir, &json, vocab_size)?);
            } else {
                let pre = opts.tokenizer_pre.as_deref().unwrap_or("llama-bpe");
                let (k, w) = gpt2_vocab(&tok_dir, &json, vocab_size, pre, ("llama-bpe", LLAMA3_REGEX))?;
                keys.extend(k);
                warnings.extend(w);
            }
        }
        Some(keys)
    };
    let outtype = match opts.ftype {
        Some(Ftype::F32) => OutType::Float(GgmlType::F32),
        Some(Ftype::F16) => OutType::Float(GgmlType::F16),
        Some(Ftype::BF16) => OutType::Float(GgmlType::BF16),
        _ => OutType::Auto,
    };
    let (plan, recipes, facts) = match config.arch {
        Architecture::GptOss => {
            let c = gpt_oss::convert(model, &dir, &json, config.layout, outtype, vocab)?;
            let hp = &c.hparams;
            let facts = ModelFacts {
                arch: "gpt-oss".into(),
                n_layer: hp.n_layer as u32,
                n_expert: hp.n_expert as u32,
                n_head: hp.n_head as u32,
                n_head_kv: hp.n_head_kv as u32,
            };
            warnings.extend(c.warnings);
            (c.plan, c.recipes, facts)
        }
        Architecture::Mixtral | Architecture::Llama => {
            let c = llama::convert(model, &dir, &json, config.arch, outtype, vocab)?;
            let hp = &c.hparams;
            let facts = ModelFacts {
                arch: "llama".into(),
                n_layer: hp.n_layer as u32,
                n_expert: hp.experts.map_or(0, |e| e.0 as u32),
                n_head: hp.n_head as u32,
                n_head_kv: hp.n_head_kv as u32,
            };
            warnings.extend(c.warnings);
            (c.plan, c.recipes, facts)
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let (plan, recipes) = match opts.ftype {
        Some(ftype) if !matches!(ftype, Ftype::F32 | Ftype::F16 | Ftype::BF16) => {
            // MXFP4 experts stay as released: requantizing them could only lose.
            let keep = |r: &Recipe| matches!(r.input(), Input::OpenAiMxfp4 { .. });
            requantize(plan, recipes, &facts, ftype, keep)?
        }
        _ => (plan, recipes),
    };
    let (files, bytes) = write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?;
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes })
}

/// The plan of a GGUF model as one file: the first shard's metadata without `split.*` keys,
/// then every shard's tensors in order.
pub fn merged_plan(model: &GgufModel) -> GgufPlan {
    let mut plan = GgufPlan::from_header(model.first().header());
    for key in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
        plan.remove(key);
    }
    plan.tensors = model
        .tensors()
        .map(|(_, t)| TensorSpec { name: t.name.clone(), ne: t.ne.clone(), ggml_type: t.ggml_type })
        .collect();
    plan
}

/// Every tensor of a GGUF model, copied as it is.
pub fn gguf_recipes(model: &GgufModel) -> Vec<Recipe<'_>> {
    let mut recipes = Vec::with_capacity(model.tensor_count());
    for shard in model.shards() {
        for (i, t) in shard.header().tensors.iter().enumerate() {
            let src = Stored {
                file: shard.file_bytes(),
                start: shard.tensor_start(i) as usize,
                len: t.nbytes as usize,
                ty: t.ggml_type,
            };
            recipes.push(Recipe::new(
                TensorSpec { name: t.name.clone(), ne: t.ne.clone(), ggml_type: t.ggml_type },
                Input::Copy(src),
                false,
                format!("{}: tensor '{}'", shard.path().display(), t.name),
            ));
        }
    }
    recipes
}

fn convert_gguf(model: &GgufModel, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let plan = merged_plan(model);
    let recipes = gguf_recipes(model);
    let (plan, recipes) = match opts.ftype {
        None => (plan, recipes),
        Some(ftype) => {
            let arch = model.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
            let hparam = |key: &str| model.get(&format!("{arch}.{key}")).and_then(Value::as_u64).unwrap_or(0) as u32;
            let facts = ModelFacts {
                n_layer: hparam("block_count"),
                n_expert: hparam("expert_count"),
                n_head: hparam("attention.head_count"),
                n_head_kv: hparam("attention.head_count_kv"),
                arch,
            };
            requantize(plan, recipes, &facts, ftype, |_| false).with_context(|| format!("{}", opts.input.display()))?
        }
    };
    let (files, bytes) = write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?;
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes })
}

/// What `llama-quantize IN OUT TYPE --allow-requantize` makes of a model: its tensor order, its
/// type choices, the input's metadata with `general.quantization_version` and
/// `general.file_type` set last. Tensors for which `keep` says so keep their type (gpt-oss's
/// MXFP4 experts, which requantizing could only make worse).
pub fn requantize<'a>(
    mut plan: GgufPlan,
    mut recipes: Vec<Recipe<'a>>,
    facts: &ModelFacts,
    ftype: Ftype,
    keep: impl Fn(&Recipe) -> bool,
) -> Result<(GgufPlan, Vec<Recipe<'a>>)> {
    recipes.sort_by(|a, b| llama_order(&a.spec.name, &b.spec.name));
    let tensors: Vec<TensorFacts> = recipes
        .iter()
        .map(|r| TensorFacts { name: r.spec.name.clone(), ne: r.spec.ne.clone(), ggml_type: r.spec.ggml_type })
        .collect();
    let types = target_types(facts, &tensors, ftype)?;
    let mut out = Vec::with_capacity(recipes.len());
    for (recipe, to) in recipes.into_iter().zip(types) {
        let from = recipe.spec.ggml_type;
        if to == from || keep(&recipe) {
            out.push(recipe);
            continue;
        }
        let read = match recipe.input() {
            Input::Copy(src) | Input::Values { src, .. } => src.ty,
            Input::OpenAiMxfp4 { .. } => GgmlType::MXFP4,
            Input::Owned(_) => recipe.spec.ggml_type,
        };
        if !can_read(read) {
            bail!("tensor '{}': reading {read} data is not supported", recipe.spec.name);
        }
        if !can_write(to) {
            bail!("tensor '{}': writing {to} is not supported", recipe.spec.name);
        }
        out.push(recipe.retype(to));
    }
    plan.remove("general.quantization_version");
    plan.remove("general.file_type");
    plan.set("general.quantization_version", Value::U32(2));
    plan.set("general.file_type", Value::U32(ftype.id()));
    plan.tensors = out.iter().map(|r| r.spec.clone()).collect();
    Ok((plan, out))
}

/// Parses a size as gguf-py's `--split-max-size` does: `N`, `NK`, `NM` or `NG`, in powers
/// of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, ' '),
    };
    let scale: u64 = match unit {
        ' ' => 1,
        'K' => 1_000,
        'M' => 1_000_000,
        'G' => 1_000_000_000,
        _ => return Err(format!("'{text}': the unit must be K, M or G")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size like 500M or 2G"))?;
    match n.checked_mul(scale) {
        Some(0) => Err("the size must be positive".into()),
        Some(v) => Ok(v),
        None => Err(format!("'{text}' is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_gguf_py() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("100K"), Ok(100_000));
        assert_eq!(parse_size("5M"), Ok(5_000_000));
        assert_eq!(parse_size("2g"), Ok(2_000_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5T").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
