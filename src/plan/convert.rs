//! `moeq convert`: plan the output, then stream tensor bytes into it on all cores.
//!
//! Today's inputs are GGUF files (single or split). Without `--type` every tensor is copied
//! byte for byte (merging or re-splitting a model); with `--type` tensors are requantized as
//! `llama-quantize IN OUT TYPE --allow-requantize` does, tensor by tensor, in pieces of rows.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use moeq_formats::gguf::{GgmlType, GgufModel, GgufPlan, TensorSpec, Value};
use moeq_formats::safetensors::SafetensorsModel;

use crate::families::common::{Converted, OutType};
use crate::families::{ModelConfig, SourceLayout};
use crate::plan::mlx::{self, MlxOptions};
use crate::plan::quant_plan::{Ftype, ModelFacts, TensorFacts, llama_order, target_types};
use crate::plan::recipe::{Input, Recipe, Stored};
use crate::plan::transcode::{can_read, can_write};
use crate::source::Source;
use crate::vocab::{Metadata, checkpoint_vocab};
use crate::write::gguf::write_gguf;
use crate::write::safetensors::{BuildFiles, copy_side_files, write_items, write_json};
use moeq_formats::output::OutputDir;
use moeq_formats::safetensors::{HeaderStyle, IndexOptions};

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
    /// What to write.
    pub format: Format,
    /// Types of an MLX build.
    pub mlx: MlxOptions,
}

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One GGUF file (or splits) for llama.cpp, Ollama, LM Studio.
    #[default]
    Gguf,
    /// A folder for MLX (mlx-lm), as `mlx_lm convert` writes it.
    Mlx,
    /// A folder in the published Hugging Face gpt-oss layout (MXFP4 experts).
    Hf,
}

impl Format {
    /// Parses `gguf`, `mlx` or `hf`.
    pub fn parse(text: &str) -> Result<Format, String> {
        match text.to_ascii_lowercase().as_str() {
            "gguf" => Ok(Format::Gguf),
            "mlx" => Ok(Format::Mlx),
            "hf" => Ok(Format::Hf),
            other => Err(format!("'{other}' is not an output format: gguf, mlx or hf")),
        }
    }
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
    let source = Source::open(&opts.input)?;
    if opts.format != Format::Gguf {
        return convert_folder(&source, opts);
    }
    match source {
        Source::Gguf(model) => convert_gguf(&model, opts),
        Source::Safetensors { model, config } => convert_safetensors(&model, config, opts),
    }
}

/// A Hugging Face or OpenAI checkpoint → the GGUF llama.cpp's converter writes (with `--type`
/// F32/F16/BF16 as its `--outtype`), then for quantized types what `llama-quantize` makes of
/// that, in one pass.
fn convert_safetensors(
    model: &SafetensorsModel,
    config: Option<Box<ModelConfig>>,
    opts: &ConvertOptions,
) -> Result<ConvertSummary> {
    let Some(config) = config else {
        bail!("{}: no config.json beside the weights; moeq needs it to know the model", model.path().display());
    };
    refuse_mlx(&config, model)?;
    config.family.gguf_refusal(&config)?;
    let mut warnings = Vec::new();
    let vocab = if opts.no_vocab {
        None
    } else {
        let (keys, w) = checkpoint_vocab(&config, opts.tokenizer_pre.as_deref())?;
        warnings.extend(w);
        Some(keys)
    };
    let outtype = match opts.ftype {
        Some(Ftype::F32) => OutType::Float(GgmlType::F32),
        Some(Ftype::F16) => OutType::Float(GgmlType::F16),
        Some(Ftype::BF16) => OutType::Float(GgmlType::BF16),
        _ => OutType::Auto,
    };
    let Converted { plan, recipes, warnings: w } = plan_checkpoint(model, &config, outtype, vocab)?;
    for w in warnings.iter().chain(&w) {
        eprintln!("warning: {w}");
    }
    let (plan, recipes) = match opts.ftype {
        Some(ftype) if !matches!(ftype, Ftype::F32 | Ftype::F16 | Ftype::BF16) => {
            // MXFP4 experts stay as released: requantizing them could only lose.
            let keep = |r: &Recipe| matches!(r.input(), Input::OpenAiMxfp4 { .. });
            let facts = model_facts(&plan);
            requantize(plan, recipes, &facts, ftype, keep)?
        }
        _ => (plan, recipes),
    };
    let (files, bytes) = write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?;
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes })
}

/// A checkpoint → an MLX or Hugging Face folder, built under a temporary name.
fn convert_folder(source: &Source, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let Source::Safetensors { model, config } = source else {
        bail!(
            "{}: --format mlx and hf read checkpoint folders (safetensors); a GGUF converts to GGUF",
            opts.input.display()
        );
    };
    let Some(config) = config else {
        bail!("{}: no config.json beside the weights; moeq needs it to know the model", model.path().display());
    };
    refuse_mlx(config, model)?;
    let family = config.family;
    let (items, config_json, format, parameters) = match opts.format {
        Format::Mlx => {
            let Converted { recipes, warnings, .. } = plan_checkpoint(model, config, OutType::Auto, None)?;
            for w in warnings.iter().filter(|w| !w.contains("GGUF") && !w.contains("llama.cpp")) {
                eprintln!("warning: {w}");
            }
            let hf = family.hf_config(config, false)?;
            let build = mlx::plan(recipes, family, mlx::model_dtype(&hf), &opts.mlx)?;
            for w in &build.warnings {
                eprintln!("warning: {w}");
            }
            (build.items, mlx::config_json(&hf, build.quantization.as_ref()), "mlx", Some(build.parameters))
        }
        _ => {
            let Some(items) = family.hf_build(model, config) else {
                bail!("--format hf writes gpt-oss's published MXFP4 layout; {} is not gpt-oss", config.class);
            };
            (items?, family.hf_config(config, true)?, "pt", None)
        }
    };
    let dir = OutputDir::create(&opts.output)?;
    write_json(&dir, "config.json", &config_json)?;
    let copied = copy_side_files(&config.dir, &dir)?;
    if !copied.iter().any(|f| f.starts_with("tokenizer"))
        && let Some(parent) = config.dir.parent()
    {
        // OpenAI's original/ folder: the tokenizer is in the repository above it.
        copy_side_files(parent, &dir)?;
    }
    let files = BuildFiles {
        dir: &dir,
        metadata: vec![("format".into(), format.into())],
        style: if opts.format == Format::Mlx { HeaderStyle::Mlx } else { HeaderStyle::Safetensors },
        // mlx-lm's 5 GiB shards; transformers' "5GB".
        shard_max_bytes: opts.split_max_bytes.unwrap_or(if opts.format == Format::Mlx {
            5 << 30
        } else {
            5_000_000_000
        }),
        index: IndexOptions { always: opts.format == Format::Mlx, total_parameters: parameters },
    };
    let bytes = write_items(&items, &files, opts.quiet)?;
    dir.commit()?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(&opts.output)
        .with_context(|| format!("{}", opts.output.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    written.sort();
    Ok(ConvertSummary { files: written, tensors: items.iter().map(|i| i.outputs.len()).sum(), bytes })
}

/// MLX builds are read as models (eval, verify) but not converted: their quantized layers
/// would be quantized a second time.
fn refuse_mlx(config: &ModelConfig, model: &SafetensorsModel) -> Result<()> {
    if config.layout == SourceLayout::Mlx {
        bail!(
            "{}: an MLX build; moeq reads it for eval and verify, but converts from the original checkpoint",
            model.path().display()
        );
    }
    Ok(())
}

/// The GGUF llama.cpp's converter writes for a checkpoint of any family moeq converts.
pub fn plan_checkpoint<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    outtype: OutType,
    vocab: Option<Metadata>,
) -> Result<Converted<'a>> {
    if config.layout == SourceLayout::Mlx {
        return crate::model::mlx_read::plan(model, config);
    }
    config.family.convert(model, config, outtype, vocab)
}

/// What llama-quantize's rules need to know, read from GGUF metadata as llama-quantize reads it.
fn model_facts(plan: &GgufPlan) -> ModelFacts {
    let arch = plan.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
    let hparam = |key: &str| plan.get(&format!("{arch}.{key}")).and_then(Value::as_u64).unwrap_or(0) as u32;
    ModelFacts {
        n_layer: hparam("block_count"),
        n_expert: hparam("expert_count"),
        n_head: hparam("attention.head_count"),
        n_head_kv: hparam("attention.head_count_kv"),
        arch,
    }
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
            let facts = model_facts(&plan);
            requantize(plan, recipes, &facts, ftype, |_| false).with_context(|| format!("{}", opts.input.display()))?
        }
    };
    let (files, bytes) = write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?;
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes })
}

/// What `llama-quantize IN OUT TYPE --allow-requantize` makes of a model: its tensor order, its
/// type choices, every tensor's dimensions as ggml counts them ([`ggml_dims`]), the input's
/// metadata with `general.quantization_version` and `general.file_type` set last. Tensors for
/// which `keep` says so keep their type (gpt-oss's MXFP4 experts, which requantizing could only
/// make worse).
pub fn requantize<'a>(
    mut plan: GgufPlan,
    mut recipes: Vec<Recipe<'a>>,
    facts: &ModelFacts,
    ftype: Ftype,
    keep: impl Fn(&Recipe) -> bool,
) -> Result<(GgufPlan, Vec<Recipe<'a>>)> {
    recipes.sort_by(|a, b| llama_order(&a.spec.name, &b.spec.name));
    for r in &mut recipes {
        r.spec.ne = ggml_dims(&r.spec.ne);
    }
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
            Input::Owned(_) | Input::MlxAffine { .. } => recipe.spec.ggml_type,
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

/// A tensor's dimensions (`ne`, fastest first) as llama-quantize writes them: it adds every
/// output tensor with `gguf_add_tensor`, which records `ggml_n_dims` dimensions, so trailing
/// dimensions of 1 are dropped (at least one is kept). llama.cpp's converter writes numpy's
/// shape instead: Qwen2-MoE's shared-expert gate `[hidden, 1]` becomes `[hidden]`, for every
/// tensor and family alike. The values and their order are unchanged.
pub fn ggml_dims(ne: &[u64]) -> Vec<u64> {
    let n = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    let mut out: Vec<u64> = ne.iter().copied().take(n).collect();
    if out.is_empty() {
        out.push(1);
    }
    out
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
    use super::{ggml_dims, parse_size};

    #[test]
    fn dimensions_are_counted_as_ggml_counts_them() {
        assert_eq!(ggml_dims(&[96, 1]), vec![96]);
        assert_eq!(ggml_dims(&[64, 1, 1]), vec![64]);
        assert_eq!(ggml_dims(&[64, 1, 4]), vec![64, 1, 4]);
        assert_eq!(ggml_dims(&[1, 64]), vec![1, 64]);
        assert_eq!(ggml_dims(&[1, 1]), vec![1]);
        assert_eq!(ggml_dims(&[1]), vec![1]);
        assert_eq!(ggml_dims(&[]), vec![1]);
        assert_eq!(ggml_dims(&[64, 32, 4]), vec![64, 32, 4]);
    }

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
