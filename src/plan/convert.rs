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

use crate::families::common::{Converted, OutType};
use crate::families::{ModelConfig, SourceLayout};
use crate::imatrix::load_chunks;
use crate::model::weights::Weights;
use crate::plan::mlx::{self, MlxOptions};
use crate::plan::optimize::sensitivity::{Calibration, KlProbes, SAMPLE_ROWS_ABOVE};
use crate::plan::optimize::{self, OptimizeSettings, Target, optimize};
use crate::plan::quant_plan::{Ftype, ModelFacts};
use crate::plan::quant_rules::apply::{QuantRequest, QuantSettings, copy_report, requantize};
use crate::plan::quant_rules::report::PlanReport;
use crate::plan::recipe::{Input, Recipe, Stored};
use crate::source::Source;
use crate::vocab::{Metadata, checkpoint_vocab};
use crate::write::gguf::{write_gguf, write_gguf_shards};
use crate::write::safetensors::{BuildFiles, copy_side_files, write_items, write_json};
use moeq_formats::output::{OutputDir, OutputFile};
use moeq_formats::safetensors::{HeaderStyle, IndexOptions};
use moeq_formats::target::{self, OutputKind};

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
    /// llama-quantize's options (`--imatrix`, `--tensor-type`, `--dry-run`, …).
    pub quant: QuantRequest,
    /// Where the plan's JSON will be written (`--report`): checked with the output, before
    /// any work, as a file output that may be none of the inputs nor the output.
    pub report: Option<PathBuf>,
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
    /// Every tensor's type and why (GGUF output).
    pub plan: Option<PlanReport>,
    /// An MLX build chosen to a size budget: the `--dry-run` text and the `--json` / `--report`
    /// JSON of its decisions.
    pub mlx_budget: Option<(String, serde_json::Value)>,
}

/// `e` with the input file's name in front, unless its message already begins with it.
fn naming_file(e: anyhow::Error, input: &Path) -> anyhow::Error {
    let name = input.display().to_string();
    if e.to_string().starts_with(&name) { e } else { e.context(name) }
}

/// Writes `json` to `path` as `--report` writes it (pretty, one line feed at the end) under
/// a temporary name, not yet committed ([`OutputFile::commit`] puts it in place).
///
/// Errors: the file cannot be created or written (disk full), naming it.
pub fn stage_report(path: &Path, json: &serde_json::Value) -> Result<OutputFile> {
    let text = serde_json::to_string_pretty(json)? + "\n";
    Ok(OutputFile::with_bytes(path, text.as_bytes())?)
}

/// The `--report` of a real run, written before the model is committed, so that a report
/// that cannot be written (disk full) fails the run with nothing in place; committed after
/// the model.
fn staged_report(opts: &ConvertOptions, json: impl FnOnce() -> serde_json::Value) -> Result<Option<OutputFile>> {
    opts.report.as_deref().map(|path| stage_report(path, &json())).transpose()
}

/// Why `--rounding` is refused with `--format mlx`.
pub const MLX_ROUNDING: &str = "--rounding does not apply to --format mlx (MLX builds are rounded as \
     mlx.core.quantize rounds); --rounding gptq rounds GGUF output with a quantized --type, and --format hf's MXFP4 \
     experts of a gpt-oss bf16 checkpoint";

/// Runs a conversion. The output path is checked before any work ([`prepare_output`]).
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    let kind = match (opts.format, opts.split_max_bytes.is_some() || opts.quant.keep_split) {
        (Format::Gguf, false) => OutputKind::File,
        (Format::Gguf, true) => OutputKind::Split,
        _ => OutputKind::Folder,
    };
    // The vocabulary options shape a checkpoint's GGUF vocabulary; anywhere else they were
    // ignored without a word.
    if opts.no_vocab && opts.tokenizer_pre.is_some() {
        bail!("--tokenizer-pre names the pre-tokenizer of the vocabulary that --no-vocab leaves out");
    }
    if opts.format != Format::Gguf && (opts.no_vocab || opts.tokenizer_pre.is_some()) {
        bail!(
            "--no-vocab and --tokenizer-pre shape a GGUF's vocabulary; MLX and HF folders carry the tokenizer files \
             as they are"
        );
    }
    // --dry-run writes no model (and needs no output path); --report writes a file.
    let writes = !opts.quant.dry_run;
    if writes {
        target::check_path(&opts.output, kind)?;
    }
    if let Some(report) = &opts.report {
        target::check_path(report, OutputKind::File)?;
        if writes {
            refuse_at_output("--report", "the report", report, &opts.output, kind)?;
        }
    }
    let source = Source::open(&opts.input)?;
    // The importance matrix and the --tensor-type file are inputs too.
    let mut inputs = source.files();
    inputs.extend(opts.quant.input_files());
    if writes {
        prepare_output(&opts.output, kind, &inputs, opts.quiet)?;
    } else if !opts.output.as_os_str().is_empty()
        && let Err(e) = target::check(&opts.output, kind, &inputs)
    {
        // A dry run writes nothing, but says now what would stop the real run.
        eprintln!("warning: the run without --dry-run would stop here: {e}");
    }
    if let Some(report) = &opts.report {
        prepare_output(report, OutputKind::File, &inputs, opts.quiet)?;
    }
    if opts.quant.rounding.is_some() {
        match opts.format {
            Format::Mlx => bail!(MLX_ROUNDING),
            Format::Gguf if matches!(planned_ftype(opts), None | Some(Ftype::F32 | Ftype::F16 | Ftype::BF16)) => bail!(
                "--rounding gptq rounds quantized tensors: GGUF output needs a quantized --type (e.g. --type Q4_K_M) \
                 or a size target (--target-size, --target-bpw); --format hf rounds a gpt-oss bf16 checkpoint's \
                 MXFP4 experts"
            ),
            _ => {}
        }
    }
    if opts.format != Format::Gguf {
        // --format hf takes --rounding gptq alone (GPTQ for its MXFP4 experts).
        let hf_gptq = opts.format == Format::Hf && opts.quant.rounding.is_some() && !opts.quant.any_but_rounding();
        let mlx_budget = opts.format == Format::Mlx && opts.quant.target.is_some();
        if mlx_budget {
            check_mlx_budget(opts)?;
        } else if (opts.quant.any() && !hf_gptq) || opts.quant.dry_run {
            bail!(
                "--dry-run, --imatrix and llama-quantize's other options apply to GGUF output (--format hf takes \
                 --rounding gptq and its calibration options only; --format mlx takes --dry-run, --imatrix and the \
                 calibration options with a size target: --target-size, --target-bpw or --type qN --optimize)"
            );
        }
        return convert_folder(&source, opts);
    }
    match (opts.quant.target, opts.ftype) {
        (Some(Target::Mix), None) => bail!("--optimize goes with --type T: the budget is the size of T's mix"),
        (Some(_), Some(Ftype::F32 | Ftype::F16 | Ftype::BF16)) => {
            bail!("--optimize, --target-size and --target-bpw need a quantized --type (or none)")
        }
        (None, None) if opts.quant.any() => {
            bail!("--imatrix, --tensor-type, --pure and llama-quantize's other options go with --type")
        }
        _ => {}
    }
    match source {
        Source::Gguf(model) => convert_gguf(&model, opts),
        Source::Safetensors { model, config } => convert_safetensors(&model, config, opts),
    }
}

/// The options an MLX size budget takes: `--imatrix` (with `--include-weights` /
/// `--exclude-weights`), the calibration options, `--dry-run`, `--json`, `--report`; an
/// affine `--type qN` (needed by `--optimize`) or none.
fn check_mlx_budget(opts: &ConvertOptions) -> Result<()> {
    let q = &opts.quant;
    let ggml_only = [
        (q.output_tensor_type.is_some(), "--output-tensor-type"),
        (q.token_embedding_type.is_some(), "--token-embedding-type"),
        (!q.tensor_types.is_empty(), "--tensor-type"),
        (q.pure, "--pure"),
        (q.leave_output_tensor, "--leave-output-tensor"),
        (q.keep_split, "--keep-split"),
        (!q.overrides.is_empty(), "--override-kv"),
        (q.candidates.is_some(), "--candidate-types"),
    ];
    if let Some((_, name)) = ggml_only.iter().find(|(set, _)| *set) {
        bail!(
            "{name} is a GGUF option; an MLX size budget chooses among affine 2-8 bits, mxfp4 and the model's float \
             type per module (--quant-override fixes a module's type)"
        );
    }
    match opts.mlx.ty {
        None if q.target == Some(Target::Mix) => {
            bail!("--optimize goes with --type qN: the budget is the size of mlx-lm's qN build")
        }
        None | Some(mlx::MlxType::Affine { .. }) => Ok(()),
        Some(t) => bail!(
            "--type {t} with a size target: the budget chooses each module's type; give an affine --type qN (its \
             group size is the candidates') or none"
        ),
    }
}

/// The file type whose llama-quantize plan is made first: `--type`, or for `--target-size` /
/// `--target-bpw` without one Q8_0 (which marks every tensor llama-quantize quantizes).
fn planned_ftype(opts: &ConvertOptions) -> Option<Ftype> {
    opts.ftype.or(opts.quant.target.map(|_| Ftype::Q8_0))
}

/// With a size target, rechooses the planned types to the budget (see
/// [`crate::plan::optimize`]); otherwise returns the plan unchanged.
fn optimize_types<'a>(
    plan: GgufPlan,
    recipes: Vec<Recipe<'a>>,
    report: PlanReport,
    planned: Ftype,
    settings: &QuantSettings,
    opts: &ConvertOptions,
) -> Result<(GgufPlan, Vec<Recipe<'a>>, PlanReport)> {
    let Some(target) = opts.quant.target else { return Ok((plan, recipes, report)) };
    with_kl_calibration(opts, |calibration| {
        let settings = OptimizeSettings {
            target,
            ftype: opts.ftype,
            planned,
            imatrix: settings.imatrix.as_ref().filter(|m| !m.entries().is_empty()),
            candidates: opts.quant.candidates.clone(),
            calibration,
            quiet: opts.quiet,
        };
        optimize(plan, recipes, report, &settings)
    })
}

/// Runs `f` with the KL calibration of a size target ([`kl_calibration`]; `None` without
/// calibration input): the source model is opened again for moeq's forward (a second mapping
/// of the same files) and the tokens read before any measuring.
fn with_kl_calibration<R>(opts: &ConvertOptions, f: impl FnOnce(Option<&Calibration>) -> Result<R>) -> Result<R> {
    let Some(_) = &opts.quant.calibration else { return f(None) };
    let source = Source::open(&opts.input)?;
    let weights = Weights::new(&source, &opts.input)?;
    let calibration = kl_calibration(opts, &source, &weights)?;
    f(calibration.as_ref())
}

/// The KL calibration of a size target (`--calibration` / `--calibration-tokens`), on the
/// source model `weights` (opened from `source`): the chunks read and checked; `None` without
/// calibration input.
fn kl_calibration<'w, 'a>(
    opts: &ConvertOptions,
    source: &Source,
    weights: &'w Weights<'a>,
) -> Result<Option<Calibration<'w, 'a>>> {
    let Some(c) = &opts.quant.calibration else { return Ok(None) };
    let purpose = crate::imatrix::Purpose {
        what: "the KL calibration of --optimize / --target-*",
        ids_option: "--calibration-tokens FILE",
    };
    let chunks =
        load_chunks(&opts.input, source, weights, &c.input, c.ctx, Some(c.chunks), c.tokenizer.as_deref(), &purpose)?;
    // Read only where rows are sampled (the per-layer probes); empty means unset.
    let sample_rows_above = match std::env::var("MOEQ_KL_SAMPLE_ROWS_ABOVE") {
        Ok(v) if c.probes != KlProbes::Tensor && !v.trim().is_empty() => v.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "MOEQ_KL_SAMPLE_ROWS_ABOVE={v:?} is not a count of values (a whole number from 0 to {})",
                u64::MAX
            )
        })?,
        _ => SAMPLE_ROWS_ABOVE,
    };
    Ok(Some(Calibration {
        weights,
        chunks,
        what: c.input.path().display().to_string(),
        probes: c.probes,
        sample_rows_above,
    }))
}

/// `--rounding gptq`: records `moeq.rounding = "gptq"` (a string; llama.cpp ignores keys it
/// does not know) before a size budget counts the header; [`attach_rounding`] removes it again
/// when no tensor is to be rounded with GPTQ (the file is then a few bytes smaller, never larger).
fn mark_rounding(plan: &mut GgufPlan, opts: &ConvertOptions) {
    if opts.quant.rounding.is_some() {
        plan.set(crate::plan::rounding::KEY, moeq_formats::gguf::Value::String(crate::plan::rounding::METHOD.into()));
    }
}

/// `--rounding gptq`: computes the calibration Hessians and attaches GPTQ rounding to the
/// recipes it applies to ([`crate::plan::rounding::attach`]), logging it in the report. When no
/// tensor is to be rounded with GPTQ, `moeq.rounding` is taken out of `plan` (the header is
/// written after this) with a warning saying why. A dry run computes nothing and says so.
fn attach_rounding(
    plan: &mut GgufPlan,
    recipes: &mut [Recipe],
    report: &mut PlanReport,
    opts: &ConvertOptions,
) -> Result<()> {
    let Some(req) = &opts.quant.rounding else { return Ok(()) };
    if opts.quant.dry_run {
        report.rounding = Some(serde_json::json!({
            "method": crate::plan::rounding::METHOD,
            "calibration": {"file": req.file().display().to_string()},
            "note": "dry run: no Hessians computed",
        }));
        return Ok(());
    }
    let log = crate::plan::rounding::attach(&opts.input, recipes, req, opts.quiet)
        .with_context(|| format!("--rounding gptq on {}", opts.input.display()))?;
    if let Some(warning) = log.nothing_rounded(&opts.input) {
        plan.remove(crate::plan::rounding::KEY);
        eprintln!("warning: {warning}");
    } else if !opts.quiet {
        eprintln!("{}", log.summary());
    }
    report.rounding = Some(log.to_json(req.file()));
    Ok(())
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
    let mut warnings = config.warnings.clone();
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
    if opts.quant.keep_split {
        bail!("--keep-split keeps the shards of a split GGUF input; split a checkpoint's GGUF with --split-max-size");
    }
    if opts.quant.any() && matches!(opts.ftype, Some(Ftype::F32 | Ftype::F16 | Ftype::BF16)) {
        bail!(
            "with a checkpoint, --type F32/F16/BF16 is the converter's --outtype; llama-quantize's options need a \
             quantized --type (or convert to GGUF first, then requantize that)"
        );
    }
    let (plan, recipes, report) = match planned_ftype(opts) {
        Some(ftype) if !matches!(ftype, Ftype::F32 | Ftype::F16 | Ftype::BF16) => {
            // MXFP4 experts stay as released: requantizing them could only lose.
            let keep = |r: &Recipe| matches!(r.input(), Input::OpenAiMxfp4 { .. });
            let settings = opts.quant.settings()?;
            let facts = model_facts(&plan, &settings.overrides)?;
            let (mut plan, recipes, report) = requantize(plan, recipes, &facts, ftype, &settings, keep)?;
            mark_rounding(&mut plan, opts);
            optimize_types(plan, recipes, report, ftype, &settings, opts)?
        }
        _ => {
            let report = copy_report(&recipes);
            (plan, recipes, report)
        }
    };
    if let Some(w) = float_experts_warning(&plan) {
        eprintln!("warning: {w}");
    }
    let (mut plan, mut recipes, mut report) = (plan, recipes, report);
    attach_rounding(&mut plan, &mut recipes, &mut report, opts)?;
    if opts.quant.dry_run {
        return Ok(ConvertSummary {
            files: Vec::new(),
            tensors: plan.tensors.len(),
            bytes: 0,
            plan: Some(report),
            mlx_budget: None,
        });
    }
    let report_file = staged_report(opts, || report.to_json())?;
    let (files, bytes) = write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?;
    report_file.map(OutputFile::commit).transpose()?;
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes, plan: Some(report), mlx_budget: None })
}

/// gpt-oss is released with MXFP4 experts, which every conversion keeps; a bf16 checkpoint's
/// experts (a fine-tune, Hugging Face's bf16 layout) get the planned type. When that is a float
/// type (no quantized `--type`, or F32/F16/BF16), the warning that the file holds them
/// unquantized, several times the released model's size; `None` otherwise (quantized, or not
/// gpt-oss).
fn float_experts_warning(plan: &GgufPlan) -> Option<String> {
    if plan.get("general.architecture").and_then(Value::as_str) != Some("gpt-oss") {
        return None;
    }
    let t = plan.tensors.iter().find(|t| {
        t.name.ends_with("_exps.weight") && matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    })?;
    Some(format!(
        "the experts are bf16 in this checkpoint (gpt-oss is released with MXFP4 experts) and the GGUF holds them \
         as {}, as llama.cpp's converter does; --type MXFP4_MOE quantizes them to MXFP4 (Q8_0 elsewhere)",
        t.ggml_type
    ))
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
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let family = config.family;
    // Whether --rounding gptq rounds any tensor (then the shards record moeq.rounding).
    let mut rounded = false;
    let mut mlx_budget = None;
    let (items, config_json, format, parameters) = match opts.format {
        Format::Mlx => {
            let Converted { mut recipes, warnings, .. } = plan_checkpoint(model, config, OutType::Auto, None)?;
            recipes.retain(|r| family.mlx_keeps(config, &r.spec.name));
            for w in warnings.iter().filter(|w| !w.contains("GGUF") && !w.contains("llama.cpp")) {
                eprintln!("warning: {w}");
            }
            let hf = family.hf_config(config, false)?;
            let dtype = mlx::model_dtype(&hf);
            let mut mlx_opts = opts.mlx.clone();
            let mut chosen = match opts.quant.target {
                Some(target) => {
                    let b = choose_mlx_types(&mut recipes, family, dtype, target, opts)?;
                    mlx_opts.chosen = b.chosen;
                    mlx_opts.ty = Some(b.global);
                    Some((b.log, target))
                }
                None => None,
            };
            let build = mlx::plan(recipes, family, dtype, &mlx_opts)?;
            for w in &build.warnings {
                eprintln!("warning: {w}");
            }
            if let Some((log, target)) = &mut chosen {
                optimize::mlx::check_written(log, &build.items, *target, &mlx_metadata(), mlx_shard_max(opts))?;
                let text = optimize::mlx::to_text(log);
                mlx_budget = Some((text, optimize::mlx::to_json(log, build.quantization.as_ref())));
            }
            if opts.quant.dry_run {
                return Ok(ConvertSummary {
                    files: Vec::new(),
                    tensors: build.items.iter().map(|i| i.outputs.len()).sum(),
                    bytes: 0,
                    plan: None,
                    mlx_budget,
                });
            }
            (build.items, mlx::config_json(&hf, build.quantization.as_ref()), "mlx", Some(build.parameters))
        }
        _ => {
            let Some(items) = family.hf_build(model, config) else {
                bail!("--format hf writes gpt-oss's published MXFP4 layout; {} is not gpt-oss", config.class);
            };
            let mut items = items?;
            if let Some(req) = &opts.quant.rounding {
                let mut recipes: Vec<&mut Recipe> = items.iter_mut().map(|i| &mut i.recipe).collect();
                let log = crate::plan::rounding::attach_hf(&opts.input, &mut recipes, req, opts.quiet)
                    .with_context(|| format!("--rounding gptq on {}", opts.input.display()))?;
                if let Some(warning) = log.nothing_rounded(&opts.input) {
                    eprintln!("warning: {warning}");
                } else {
                    rounded = true;
                    if !opts.quiet {
                        eprintln!("{}", log.summary());
                    }
                }
            }
            (items, family.hf_config(config, true)?, "pt", None)
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
    let mut metadata = vec![("format".to_string(), format.to_string())];
    if rounded {
        metadata.push((crate::plan::rounding::KEY.into(), crate::plan::rounding::METHOD.into()));
    }
    let files = BuildFiles {
        dir: &dir,
        metadata,
        style: if opts.format == Format::Mlx { HeaderStyle::Mlx } else { HeaderStyle::Safetensors },
        // mlx-lm's 5 GiB shards; transformers' "5GB".
        shard_max_bytes: if opts.format == Format::Mlx {
            mlx_shard_max(opts)
        } else {
            opts.split_max_bytes.unwrap_or(5_000_000_000)
        },
        index: IndexOptions { always: opts.format == Format::Mlx, total_parameters: parameters },
    };
    let bytes = write_items(&items, &files, opts.quiet)?;
    let report_file = match &mlx_budget {
        Some((_, json)) => staged_report(opts, || json.clone())?,
        None => None,
    };
    dir.commit()?;
    report_file.map(OutputFile::commit).transpose()?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(&opts.output)
        .with_context(|| format!("{}", opts.output.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    written.sort();
    Ok(ConvertSummary {
        files: written,
        tensors: items.iter().map(|i| i.outputs.len()).sum(),
        bytes,
        plan: None,
        mlx_budget,
    })
}

/// `__metadata__` of an MLX build's shards.
fn mlx_metadata() -> Vec<(String, String)> {
    vec![("format".to_string(), "mlx".to_string())]
}

/// Most tensor bytes per shard of an MLX build: `--split-max-size`, else mlx-lm's 5 GiB.
fn mlx_shard_max(opts: &ConvertOptions) -> u64 {
    opts.split_max_bytes.unwrap_or(5 << 30)
}

/// An MLX size budget ([`optimize::mlx`]): the importance matrix and calibration tokens read
/// (the source model opened again for the KL calibration's forward), then every budgeted
/// module's type chosen.
fn choose_mlx_types(
    recipes: &mut [Recipe],
    family: &dyn crate::families::Family,
    dtype: GgmlType,
    target: Target,
    opts: &ConvertOptions,
) -> Result<optimize::mlx::MlxBudget> {
    let settings = opts.quant.settings()?;
    let ty = match opts.mlx.ty {
        Some(t @ mlx::MlxType::Affine { .. }) => t,
        _ => mlx::MlxType::Affine { bits: 4, group: 64 },
    };
    with_kl_calibration(opts, |calibration| {
        let budget = optimize::mlx::MlxBudgetSettings {
            target,
            ty,
            imatrix: settings.imatrix.as_ref().filter(|m| !m.entries().is_empty()),
            calibration,
            metadata: mlx_metadata(),
            shard_max_bytes: mlx_shard_max(opts),
            quiet: opts.quiet,
        };
        optimize::mlx::choose(recipes, family, dtype, &opts.mlx, &budget)
    })
}

/// Checks an output path before any work (what it names, and that it is none of `inputs`:
/// see `moeq_formats::target`), then removes the temporaries interrupted moeq runs left in its
/// folder, saying so (unless `quiet`), and warns about those it cannot tell are abandoned.
pub fn prepare_output(output: &Path, kind: OutputKind, inputs: &[PathBuf], quiet: bool) -> Result<()> {
    let leftovers = target::prepare(output, kind, inputs)?;
    let removed: Vec<_> = leftovers.iter().filter(|l| l.removed).collect();
    if !removed.is_empty() && !quiet {
        let bytes = removed.iter().map(|l| l.bytes).sum();
        eprintln!(
            "note: removed {} temporary file(s) ({}) left in {} by interrupted moeq runs",
            removed.len(),
            crate::inspect::human_bytes(bytes),
            target::parent_dir(output).display()
        );
    }
    for l in leftovers.iter().filter(|l| !l.removed) {
        let why = l.kept_because.unwrap_or("it could not be removed");
        eprintln!(
            "warning: {}: a moeq temporary ({}) kept: {why}; remove it if no moeq run is writing there",
            l.path.display(),
            crate::inspect::human_bytes(l.bytes)
        );
    }
    Ok(())
}

/// Refuses a second output's path (`--report`, `imatrix --save-chunks`: `flag`, holding
/// `what`) that names the output (or, for a split output, one of its shards,
/// `STEM-NNNNN-of-MMMMM.gguf`), which does not exist yet to be compared as a file: one of the
/// two would silently replace the other.
///
/// # Errors
/// When both paths name the same file (same folder, same file name).
pub fn refuse_at_output(flag: &str, what: &str, report: &Path, output: &Path, kind: OutputKind) -> Result<()> {
    let dir = |p: &Path| {
        let d = target::parent_dir(p);
        d.canonicalize().unwrap_or_else(|_| d.to_path_buf())
    };
    let (Some(name), Some(out_name)) = (report.file_name(), output.file_name()) else {
        return Ok(());
    };
    if dir(report) != dir(output) {
        return Ok(());
    }
    let shard = || {
        let stem = output.file_stem().unwrap_or_default().to_string_lossy();
        let name = name.to_string_lossy();
        name.strip_prefix(&*format!("{stem}-"))
            .and_then(|rest| rest.strip_suffix(".gguf"))
            .is_some_and(|rest| rest.contains("-of-"))
    };
    if name == out_name || (kind == OutputKind::Split && shard()) {
        bail!("{flag} {}: that is where the output goes; choose another file for {what}", report.display());
    }
    Ok(())
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
///
/// Errors: a count that is present but not a non-negative integer of at most 32 bits (a string,
/// a float, -1, 2^32: llama.cpp's loader refuses the file), naming the key, unless an integer
/// `--override-kv` replaces it; such a value was read as 0 (or wrapped), which changed the
/// rules' choices silently.
fn model_facts(plan: &GgufPlan, overrides: &[crate::plan::quant_rules::kv_override::KvOverride]) -> Result<ModelFacts> {
    let arch = plan.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
    // A per-layer array counts as its first layer's value (llama.cpp's `n_head()`).
    let hparam = |key: &str| -> Result<Option<u32>> {
        let key = format!("{arch}.{key}");
        let Some(v) = plan.get(&key) else { return Ok(None) };
        if overrides.iter().any(|o| o.key == key && o.int.is_some()) {
            return Ok(None);
        }
        let n = match v {
            Value::Array(a) => a.get(0).and_then(|v| v.as_u64()),
            v => v.as_u64(),
        };
        match n.and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => bail!(
                "metadata '{key}' is {v}, not a count of at most 32 bits (llama.cpp's loader refuses the file, and \
                 llama-quantize's rules depend on it)"
            ),
        }
    };
    let n_head = hparam("attention.head_count")?.unwrap_or(0);
    Ok(ModelFacts {
        n_layer: hparam("block_count")?.unwrap_or(0),
        n_expert: hparam("expert_count")?.unwrap_or(0),
        n_head,
        n_head_kv: hparam("attention.head_count_kv")?.unwrap_or(n_head),
        arch,
    })
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
    if opts.no_vocab || opts.tokenizer_pre.is_some() {
        bail!(
            "{}: --no-vocab and --tokenizer-pre apply to a checkpoint's vocabulary; a GGUF keeps its own \
             (with --type, --override-kv tokenizer.ggml.pre=str:NAME rewrites that key)",
            opts.input.display()
        );
    }
    // GGUF allows a dimension of 0 (llama.cpp's reader checks only for negative ones); no
    // model tensor is empty, and the row arithmetic of the recipes assumes rows with values.
    for shard in model.shards() {
        if let Some(t) = shard.header().tensors.iter().find(|t| t.ne.contains(&0)) {
            bail!(
                "{}: tensor '{}' has dimensions {:?}: it holds no values, which no model tensor does (a corrupt file?)",
                shard.path().display(),
                t.name,
                t.ne
            );
        }
    }
    let plan = merged_plan(model);
    let recipes = gguf_recipes(model);
    let (plan, recipes, report) = match planned_ftype(opts) {
        None => {
            let report = copy_report(&recipes);
            (plan, recipes, report)
        }
        Some(ftype) => {
            let settings = opts.quant.settings()?;
            let facts = model_facts(&plan, &settings.overrides).map_err(|e| naming_file(e, &opts.input))?;
            let (mut plan, recipes, report) = requantize(plan, recipes, &facts, ftype, &settings, |_| false)
                .map_err(|e| naming_file(e, &opts.input))?;
            mark_rounding(&mut plan, opts);
            optimize_types(plan, recipes, report, ftype, &settings, opts).map_err(|e| naming_file(e, &opts.input))?
        }
    };
    let (mut plan, mut recipes, mut report) = (plan, recipes, report);
    attach_rounding(&mut plan, &mut recipes, &mut report, opts)?;
    let tensors = plan.tensors.len();
    if opts.quant.dry_run {
        return Ok(ConvertSummary { files: Vec::new(), tensors, bytes: 0, plan: Some(report), mlx_budget: None });
    }
    let report_file = staged_report(opts, || report.to_json())?;
    let (files, bytes) = if opts.quant.keep_split {
        if opts.split_max_bytes.is_some() {
            bail!("--keep-split and --split-max-size both decide the shards; give one");
        }
        let counts: Vec<usize> = model.shards().iter().map(|s| s.header().tensors.len()).collect();
        write_gguf_shards(&plan, &recipes, &opts.output, &counts, opts.quiet)?
    } else {
        write_gguf(&plan, &recipes, &opts.output, opts.split_max_bytes, opts.quiet)?
    };
    report_file.map(OutputFile::commit).transpose()?;
    Ok(ConvertSummary { files, tensors, bytes, plan: Some(report), mlx_budget: None })
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

/// Parses a size: a number (decimals allowed, e.g. `1.5G`) with an optional unit, `K`, `M`,
/// `G`, `T` (powers of 1000, as llama-gguf-split's `--split-max-size` and gguf-py read them;
/// `KB`, `MB`, `GB`, `TB` the same) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024, as moeq prints
/// sizes), case-insensitive; no unit = bytes. A fraction of a byte is dropped.
///
/// Errors (clap's message for the option): not a number, an unknown unit, zero, or more than
/// 2^64 bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(trimmed.len());
    let (digits, unit) = (trimmed[..split].trim(), trimmed[split..].to_ascii_lowercase());
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        u if !u.chars().all(|c| c.is_ascii_alphabetic()) => {
            return Err(format!("'{text}' is not a size like 500M, 1.5G or 800MiB"));
        }
        _ => return Err(format!("'{text}': the unit must be K, M, G or T (powers of 1000) or KiB, MiB, GiB or TiB")),
    };
    // Digits with at most one decimal point, computed exactly: `whole · scale + frac · scale /
    // 10^places`, a fraction of a byte dropped.
    let bad = || format!("'{text}' is not a size like 500M, 1.5G or 800MiB");
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) || frac.len() > 18 {
        return Err(bad());
    }
    let too_large = || format!("'{text}' is too large");
    let scale = scale as u128;
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
    let bytes = whole.checked_mul(scale).ok_or_else(too_large)? + frac_value * scale / 10u128.pow(frac.len() as u32);
    match u64::try_from(bytes) {
        Ok(0) => Err("the size must be at least one byte".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(too_large()),
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
        assert_eq!(parse_size("5T"), Ok(5_000_000_000_000));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("100KiB"), Ok(102_400));
        assert_eq!(parse_size(" 2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("12GB"), Ok(12_000_000_000));
        assert_eq!(parse_size("90mib"), Ok(90 << 20));
        assert!(parse_size("5X").is_err() && parse_size("1.2.3M").is_err() && parse_size("0.0001").is_err());
        // Decimals are exact (no binary rounding).
        assert_eq!(parse_size("4.1G"), Ok(4_100_000_000));
        assert_eq!(parse_size("1.005K"), Ok(1005));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert!(parse_size("1e9").is_err() && parse_size(".").is_err() && parse_size("99999999999T").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
