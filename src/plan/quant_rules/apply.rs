//! A whole requantization plan, as `llama-quantize [options] IN OUT TYPE` makes it: tensor
//! order, every tensor's type and why, the importance weights each quantized tensor gets (per
//! expert for stacked experts), the checks llama-quantize makes (types that need an
//! importance matrix, entries of the wrong size), and the output metadata
//! (`general.quantization_version`, `general.file_type`, `--override-kv`, `quantize.imatrix.*`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use moeq_formats::gguf::{GgmlType, GgufPlan, Value};

use super::kv_override::KvOverride;
use super::report::{ImatrixUse, PlanReport, TensorRow};
use super::tensor_type::{TensorTypeRule, parse_type};
use super::{Decision, PlanOptions, Step, decide, requires_imatrix};
use crate::cli::QuantArgs;
use crate::plan::imatrix_file::ImatrixFile;
use crate::plan::optimize::Target;
use crate::plan::quant_plan::{Ftype, ModelFacts, TensorFacts, llama_order};
use crate::plan::recipe::{Importance, Input, Recipe};
use crate::plan::transcode::{can_read, can_write};

/// The requantization options of `moeq convert`, as given (llama-quantize's spelling).
#[derive(Clone, Debug, Default)]
pub struct QuantRequest {
    /// `--imatrix FILE`.
    pub imatrix: Option<PathBuf>,
    /// `--include-weights NAME`: use importance data only for entries whose name contains one.
    pub include_weights: Vec<String>,
    /// `--exclude-weights NAME`: no importance data for entries whose name contains one.
    pub exclude_weights: Vec<String>,
    /// `--output-tensor-type`.
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type` rules (and those of `--tensor-type-file`), in order.
    pub tensor_types: Vec<TensorTypeRule>,
    /// `--tensor-type-file FILE` (already read into `tensor_types`).
    pub tensor_type_file: Option<PathBuf>,
    /// `--pure`.
    pub pure: bool,
    /// `--leave-output-tensor`.
    pub leave_output_tensor: bool,
    /// `--keep-split`.
    pub keep_split: bool,
    /// `--override-kv`.
    pub overrides: Vec<KvOverride>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--optimize`, `--target-size`, `--target-bpw`: types chosen to a size budget.
    pub target: Option<Target>,
    /// `--candidate-types`: the types the budget chooses among (`None`: all).
    pub candidates: Option<Vec<GgmlType>>,
    /// `--calibration` / `--calibration-tokens` (with a size target): KL-calibrated errors.
    pub calibration: Option<CalibrationRequest>,
    /// `--rounding gptq` with its calibration input (`None`: ggml's rounding).
    pub rounding: Option<crate::plan::rounding::RoundingRequest>,
}

/// Calibration tokens for the KL-calibrated optimizer, read as `moeq imatrix` reads them.
#[derive(Clone, Debug)]
pub struct CalibrationRequest {
    /// Text (`--calibration`) or token chunks (`--calibration-tokens`).
    pub input: crate::imatrix::Calibration,
    /// Tokens per chunk (text).
    pub ctx: usize,
    /// At most this many chunks.
    pub chunks: usize,
    /// The folder with the tokenizer.json (text).
    pub tokenizer: Option<PathBuf>,
    /// How tensors are probed (`--kl-probes`).
    pub probes: crate::plan::optimize::sensitivity::KlProbes,
}

/// Calibration chunks of `--calibration` / `--calibration-tokens` when none is given.
pub const DEFAULT_CALIBRATION_CHUNKS: usize = 4;

impl QuantArgs {
    /// The request these options make, and warnings about how they were read. Errors name
    /// the option and what is wrong with it.
    pub fn request(&self) -> Result<(QuantRequest, Vec<String>)> {
        let mut warnings = Vec::new();
        let ty = |option: &str, name: &Option<String>| -> Result<Option<GgmlType>> {
            name.as_deref().map(|n| parse_type(n).map_err(|e| anyhow!("{option} {n}: {e}"))).transpose()
        };
        let mut rules = Vec::new();
        // (rule, where it is written: line N of the file, or the command line)
        let mut texts: Vec<(String, Option<usize>)> = self.tensor_type.iter().map(|t| (t.clone(), None)).collect();
        if let Some(path) = &self.tensor_type_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow!("--tensor-type-file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                texts.extend(line.split_whitespace().map(|t| (t.to_string(), Some(n + 1))));
            }
        }
        // llama-quantize reads the options in order; moeq puts the file's rules after the
        // command line's.
        for (arg, line) in &texts {
            let (rule, warning) = TensorTypeRule::parse(arg).map_err(|e| match (line, &self.tensor_type_file) {
                (Some(n), Some(path)) => e.context(format!("--tensor-type-file {}, line {n}", path.display())),
                _ => e,
            })?;
            rules.push(rule);
            warnings.extend(warning);
        }
        let overrides = self.override_kv.iter().map(|o| KvOverride::parse(o)).collect::<Result<Vec<_>>>()?;
        let target = match (self.optimize, self.target_size, self.target_bpw) {
            (true, _, _) => Some(Target::Mix),
            (_, Some(size), _) => Some(Target::Size(size)),
            (_, _, Some(b)) if b.is_finite() && b > 0.0 && b <= 32.0 => Some(Target::Bpw(b)),
            (_, _, Some(b)) => bail!("--target-bpw {}: give bits per weight above 0 and at most 32", Shortest(b)),
            _ => None,
        };
        let candidates = if self.candidate_types.is_empty() {
            None
        } else {
            if target.is_none() {
                bail!("--candidate-types goes with --optimize, --target-size or --target-bpw");
            }
            let mut types = Vec::new();
            for name in &self.candidate_types {
                let ty = parse_type(name.trim()).map_err(|e| anyhow!("--candidate-types {name}: {e}"))?;
                if !crate::plan::optimize::CANDIDATES.contains(&ty) {
                    bail!(
                        "--candidate-types {name}: not a type the budget chooses among ({})",
                        crate::plan::optimize::CANDIDATES.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    );
                }
                types.push(ty);
            }
            let unusable: Vec<&str> = types
                .iter()
                .filter(|&&t| self.imatrix.is_none() && crate::plan::optimize::needs_importance(t))
                .map(|t| t.name())
                .collect();
            if !unusable.is_empty() {
                warnings.push(format!(
                    "--candidate-types: {} need{} an importance matrix (--imatrix), so no tensor gets {}",
                    unusable.join(", "),
                    if unusable.len() == 1 { "s" } else { "" },
                    if unusable.len() == 1 { "it" } else { "them" }
                ));
            }
            Some(types)
        };
        let (calibration, rounding) = self.calibration_requests(target.is_some())?;
        let request = QuantRequest {
            imatrix: self.imatrix.clone(),
            include_weights: self.include_weights.clone(),
            exclude_weights: self.exclude_weights.clone(),
            output_tensor_type: ty("--output-tensor-type", &self.output_tensor_type)?,
            token_embedding_type: ty("--token-embedding-type", &self.token_embedding_type)?,
            tensor_types: rules,
            tensor_type_file: self.tensor_type_file.clone(),
            pure: self.pure,
            leave_output_tensor: self.leave_output_tensor,
            keep_split: self.keep_split,
            overrides,
            dry_run: self.dry_run,
            target,
            candidates,
            calibration,
            rounding,
        };
        Ok((request, warnings))
    }

    /// The calibration input's two uses: the KL calibration of a size target (`target`: one of
    /// --optimize / --target-size / --target-bpw is given) and `--rounding gptq`. Errors: GPTQ
    /// without calibration input, calibration input with neither use, --ctx / --chunks /
    /// --tokenizer without calibration input, a zero --ctx or --chunks.
    fn calibration_requests(
        &self,
        target: bool,
    ) -> Result<(Option<CalibrationRequest>, Option<crate::plan::rounding::RoundingRequest>)> {
        use crate::imatrix::Calibration;
        let input = match (&self.calibration, &self.calibration_tokens) {
            (Some(text), _) => Some(Calibration::Text(text.clone())),
            (None, Some(ids)) => Some(Calibration::Tokens(ids.clone())),
            (None, None) => None,
        };
        let gptq = self.rounding.as_deref() == Some("gptq");
        let Some(input) = input else {
            if gptq {
                bail!(
                    "--rounding gptq needs calibration input: --calibration FILE (text) or --calibration-tokens FILE \
                     (token ids, one chunk per line)"
                );
            }
            if self.kl_probes.is_some() {
                bail!(
                    "--kl-probes goes with a KL-calibrated size target: --optimize, --target-size or --target-bpw \
                     with --calibration or --calibration-tokens"
                );
            }
            for (set, name) in [
                (self.ctx.is_some(), "--ctx"),
                (self.chunks.is_some(), "--chunks"),
                (self.tokenizer.is_some(), "--tokenizer"),
            ] {
                if set {
                    bail!("{name} goes with --calibration or --calibration-tokens");
                }
            }
            return Ok((None, None));
        };
        if !target && !gptq {
            bail!(
                "--calibration and --calibration-tokens go with --optimize, --target-size, --target-bpw or --rounding gptq"
            );
        }
        let ctx = self.ctx.unwrap_or(512);
        if ctx == 0 {
            bail!("--ctx must be at least 1");
        }
        if self.chunks == Some(0) {
            bail!("--chunks must be at least 1");
        }
        use crate::plan::optimize::sensitivity::KlProbes;
        let probes = match self.kl_probes.as_deref() {
            None | Some("layer") => KlProbes::Layer,
            Some("tensor") => KlProbes::Tensor,
            Some("halves") => KlProbes::Halves,
            Some(other) => bail!("--kl-probes {other}: give layer, halves or tensor"),
        };
        if self.kl_probes.is_some() && !target {
            bail!(
                "--kl-probes goes with --optimize, --target-size or --target-bpw (the KL calibration of a size target)"
            );
        }
        let calibration = target.then(|| CalibrationRequest {
            input: input.clone(),
            ctx,
            chunks: self.chunks.unwrap_or(DEFAULT_CALIBRATION_CHUNKS),
            tokenizer: self.tokenizer.clone(),
            probes,
        });
        let rounding = gptq.then(|| crate::plan::rounding::RoundingRequest {
            calibration: input,
            ctx,
            chunks: self.chunks,
            tokenizer: self.tokenizer.clone(),
        });
        Ok((calibration, rounding))
    }
}

impl QuantRequest {
    /// Whether any option that needs a quantized `--type` is set but `--rounding` (and its
    /// calibration input) and `--dry-run`.
    pub fn any_but_rounding(&self) -> bool {
        let mut other = self.clone();
        other.rounding = None;
        other.any()
    }

    /// Whether any option that needs a quantized `--type` is set (all but `--dry-run`).
    pub fn any(&self) -> bool {
        self.imatrix.is_some()
            || !self.include_weights.is_empty()
            || !self.exclude_weights.is_empty()
            || self.output_tensor_type.is_some()
            || self.token_embedding_type.is_some()
            || !self.tensor_types.is_empty()
            || self.pure
            || self.leave_output_tensor
            || self.keep_split
            || !self.overrides.is_empty()
            || self.target.is_some()
            || self.rounding.is_some()
    }

    /// The files these options read (`--imatrix`, `--tensor-type-file`), which no output may
    /// replace.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let calibration = self.calibration.as_ref().map(|c| c.input.path().to_path_buf());
        let rounding = self.rounding.as_ref().map(|r| r.file().to_path_buf());
        // The tokenizer files --tokenizer may read.
        let tokenizers = self
            .calibration
            .iter()
            .filter_map(|c| c.tokenizer.as_deref())
            .chain(self.rounding.iter().filter_map(|r| r.tokenizer.as_deref()))
            .flat_map(crate::source::Source::tokenizer_files);
        let mut files: Vec<PathBuf> = self.imatrix.iter().chain(&self.tensor_type_file).cloned().collect();
        for f in calibration.into_iter().chain(rounding).chain(tokenizers) {
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files
    }

    /// The settings: the importance matrix read and filtered as llama-quantize's
    /// `prepare_imatrix` does.
    pub fn settings(&self) -> Result<QuantSettings> {
        if !self.include_weights.is_empty() && !self.exclude_weights.is_empty() {
            bail!("--include-weights and --exclude-weights cannot be used together (as in llama-quantize)");
        }
        if (!self.include_weights.is_empty() || !self.exclude_weights.is_empty()) && self.imatrix.is_none() {
            bail!("--include-weights and --exclude-weights select entries of the --imatrix file; none is given");
        }
        let imatrix = match &self.imatrix {
            None => None,
            Some(path) => {
                let mut m = ImatrixFile::open(path)?;
                m.retain(&self.include_weights, &self.exclude_weights);
                Some(Arc::new(m))
            }
        };
        Ok(QuantSettings {
            plan: PlanOptions {
                output_tensor_type: self.output_tensor_type,
                token_embedding_type: self.token_embedding_type,
                tensor_types: self.tensor_types.clone(),
                pure: self.pure,
                leave_output_tensor: self.leave_output_tensor,
                has_imatrix: false,
            },
            imatrix,
            imatrix_arg: self.imatrix.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            overrides: self.overrides.clone(),
            dry_run: self.dry_run,
            keep_order: self.keep_split,
        })
    }
}

/// Everything besides the file type that shapes a requantization.
#[derive(Default)]
pub struct QuantSettings {
    /// Type options (`has_imatrix` is set from `imatrix`).
    pub plan: PlanOptions,
    /// The importance matrix, already filtered by `--include-weights` / `--exclude-weights`.
    pub imatrix: Option<Arc<ImatrixFile>>,
    /// The `--imatrix` argument as given (written to `quantize.imatrix.file`).
    pub imatrix_arg: String,
    /// `--override-kv`, in order.
    pub overrides: Vec<KvOverride>,
    /// Plan only: a refusal (a type that needs an importance matrix) is reported, not raised,
    /// and types moeq cannot write yet are allowed.
    pub dry_run: bool,
    /// `--keep-split`: keep the input's tensor order (shard by shard) instead of sorting.
    pub keep_order: bool,
}

/// What llama.cpp's loader reads for the rules, after `--override-kv` (integer overrides of
/// the block, expert and head counts change the rules as they do in llama-quantize).
pub fn facts_with_overrides(facts: &ModelFacts, overrides: &[KvOverride]) -> ModelFacts {
    let mut out = facts.clone();
    for o in overrides {
        let Some(v) = o.int.and_then(|v| u32::try_from(v).ok()) else { continue };
        match o.key.strip_prefix(&format!("{}.", facts.arch)) {
            Some("block_count") => out.n_layer = v,
            Some("expert_count") => out.n_expert = v,
            Some("attention.head_count") => out.n_head = v,
            Some("attention.head_count_kv") => out.n_head_kv = v,
            _ => {}
        }
    }
    out
}

/// Plans the requantization of `recipes` (the tensors of `plan`) to `ftype`. Tensors for
/// which `keep` says so keep their type (gpt-oss's released MXFP4 experts). Returns the new
/// plan and recipes (importance weights attached) and the report of every decision.
///
/// Errors (also in a dry run): a `--tensor-type` rule that matches no tensor, importance
/// entries that name no tensor or whose size does not fit their tensor, what llama-quantize
/// itself refuses (a layer it cannot place, a type without fallback). Refused unless
/// `dry_run`, as llama-quantize refuses: a tensor whose type needs an importance matrix
/// (see [`requires_imatrix`]) without one; a type moeq cannot write yet.
pub fn requantize<'a>(
    mut plan: GgufPlan,
    mut recipes: Vec<Recipe<'a>>,
    facts: &ModelFacts,
    ftype: Ftype,
    settings: &QuantSettings,
    keep: impl Fn(&Recipe) -> bool,
) -> Result<(GgufPlan, Vec<Recipe<'a>>, PlanReport)> {
    if !settings.keep_order {
        recipes.sort_by(|a, b| llama_order(&a.spec.name, &b.spec.name));
    }
    // llama-quantize adds every tensor with ggml's dimension count: trailing 1s dropped.
    for r in &mut recipes {
        r.spec.ne = crate::plan::convert::ggml_dims(&r.spec.ne);
    }
    let facts = facts_with_overrides(facts, &settings.overrides);
    let imatrix = settings.imatrix.as_ref().filter(|m| !m.entries().is_empty());
    let mut opts = settings.plan.clone();
    opts.has_imatrix = imatrix.is_some();
    let tensors: Vec<TensorFacts> = recipes
        .iter()
        .map(|r| TensorFacts { name: r.spec.name.clone(), ne: r.spec.ne.clone(), ggml_type: r.spec.ggml_type })
        .collect();
    let decisions = decide(&facts, &tensors, ftype, &opts)?;
    let mut report = PlanReport::new(Some(ftype));
    check_rules(&opts, &tensors, &decisions, ftype, &mut report)?;
    if let Some(m) = imatrix {
        let names: std::collections::HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let stray: Vec<&str> = m.entries().iter().map(|e| e.name.as_str()).filter(|n| !names.contains(n)).collect();
        if !stray.is_empty() {
            bail!(
                "{}: {} importance matrix entr{} name no tensor of the model: {} (a matrix for another model? \
                 --exclude-weights drops entries)",
                m.path().display(),
                stray.len(),
                if stray.len() == 1 { "y" } else { "ies" },
                list(&stray, 5)
            );
        }
    }

    let mut out = Vec::with_capacity(recipes.len());
    // Tensors whose type needs an importance matrix when none is given.
    let mut needing: Vec<(String, GgmlType)> = Vec::new();
    for (recipe, (t, d)) in recipes.into_iter().zip(tensors.iter().zip(decisions)) {
        let Decision { ty: target, mut steps, quantizable, rule: d_rule } = d;
        let from = recipe.spec.ggml_type;
        let mut to = target;
        if to != from && keep(&recipe) {
            if let Some(k) = d_rule {
                let text = &opts.tensor_types[k].text;
                report.warnings.push(format!(
                    "--tensor-type '{text}' does not apply to '{}': released MXFP4 experts are kept",
                    t.name
                ));
            }
            to = from;
            steps.push(Step {
                rule: "released-mxfp4",
                ty: from,
                detail: "released MXFP4 experts are kept as they are".into(),
            });
        }
        let quantize = to != from;
        let requires = quantizable && requires_imatrix(&t.name, to, ftype);
        let mut usage = None;
        let mut importance = None;
        if !opts.has_imatrix && requires {
            needing.push((t.name.clone(), to));
        }
        if let (Some(m), true) = (imatrix, quantize) {
            let (ne0, n_mat) = (t.dim(0), t.dim(2));
            match m.position(&t.name).map(|i| (i, &m.entries()[i])) {
                None => {
                    if requires && report.refusal.is_none() {
                        report.refusal = Some(format!(
                            "{}: no importance data for tensor '{}', which would be {to}: llama-quantize refuses \
                             to make such very-low-bit tensors without importance weights",
                            m.path().display(),
                            t.name
                        ));
                    }
                    usage = Some(ImatrixUse::NoEntry { refused: requires });
                }
                Some((_, e)) if e.n_values as u64 != ne0 * n_mat => {
                    if !matches!(t.name.as_str(), "token_embd.weight" | "per_layer_token_embd.weight") {
                        bail!(
                            "{}: entry '{}' holds {} values, but the tensor has {ne0} columns × {n_mat} matri{} = {} \
                             (an importance matrix for another model?)",
                            m.path().display(),
                            t.name,
                            e.n_values,
                            if n_mat == 1 { "x" } else { "ces" },
                            ne0 * n_mat
                        );
                    }
                    usage = Some(ImatrixUse::Ignored(format!(
                        "entry of {} values does not fit {ne0}×{n_mat}; ignored for the token embedding, as llama-quantize does",
                        e.n_values
                    )));
                }
                Some((index, e)) => {
                    importance = Some(Importance { file: Arc::clone(m), entry: index, rows_per_matrix: t.dim(1) });
                    usage = Some(ImatrixUse::Used { counts: e.counts.clone(), legacy: e.n_mat() == 1 && n_mat > 1 });
                }
            }
        }
        let rows: u64 = t.ne.iter().skip(1).product();
        let source_bytes = from.tensor_bytes(&t.ne).unwrap_or(0);
        let bytes = if quantize { to.row_bytes(t.dim(0)).map_or(0, |r| r * rows) } else { source_bytes };
        report.rows.push(TensorRow {
            name: t.name.clone(),
            ne: t.ne.clone(),
            source: from,
            ty: to,
            steps,
            source_bytes,
            bytes,
            requires_imatrix: requires,
            imatrix: usage,
        });
        let mut recipe = if quantize { recipe.retype(to) } else { recipe };
        recipe.importance = importance;
        out.push(recipe);
    }
    report.summarize_imatrix(imatrix.map(|m| m.as_ref()));
    if let Some((first, ty)) = needing.first() {
        // llama-quantize names the first; the count says how far a fix must go.
        report.refusal = Some(format!(
            "{} needs an importance matrix (--imatrix; llama-imatrix makes one): {} tensor(s) would be types \
             llama-quantize refuses to make without importance weights, the first '{first}' ({ty})",
            ftype.name(),
            needing.len()
        ));
    }

    if let Some(refusal) = &report.refusal {
        if !settings.dry_run {
            bail!("{refusal}");
        }
        report.warnings.push(format!("a real run would be refused: {refusal}"));
    }
    if !settings.dry_run {
        for (recipe, row) in out.iter().zip(&report.rows) {
            if row.ty == row.source {
                continue;
            }
            let read = match recipe.input() {
                Input::Copy(src) | Input::Values { src, .. } => src.ty,
                Input::OpenAiMxfp4 { .. } => GgmlType::MXFP4,
                Input::Fp8 { .. } => GgmlType::F32,
                Input::Owned(_) | Input::MlxAffine { .. } => row.source,
            };
            if !can_read(read) {
                bail!("tensor '{}': reading {read} data is not supported", row.name);
            }
            if !can_write(row.ty) {
                bail!("tensor '{}': writing {} is not supported", row.name, row.ty);
            }
        }
    }

    plan.remove("general.quantization_version");
    plan.remove("general.file_type");
    plan.set("general.quantization_version", Value::U32(2));
    plan.set("general.file_type", Value::U32(ftype.id()));
    for o in &settings.overrides {
        o.apply(&mut plan);
    }
    if let Some(m) = imatrix {
        for o in imatrix_keys(m, &settings.imatrix_arg, &mut report.warnings) {
            o.apply(&mut plan);
        }
    }
    plan.tensors = out.iter().map(|r| r.spec.clone()).collect();
    Ok((plan, out, report))
}

/// The `quantize.imatrix.*` keys llama-quantize adds: the file as given and the first
/// dataset (each cut to 127 bytes), the number of entries, the chunk count when positive.
fn imatrix_keys(m: &ImatrixFile, arg: &str, warnings: &mut Vec<String>) -> Vec<KvOverride> {
    let mut cut = |key: &str, text: &str| {
        let mut end = text.len().min(127);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if end < text.len() {
            warnings.push(format!("{key} is cut to {end} bytes, as llama-quantize cuts it to 127"));
        }
        KvOverride { key: key.into(), value: Value::String(text[..end].to_string()), int: None }
    };
    let mut keys = vec![cut("quantize.imatrix.file", arg)];
    if let Some(d) = m.datasets.first() {
        keys.push(cut("quantize.imatrix.dataset", d));
    }
    let n = m.entries().len() as u32;
    keys.push(KvOverride { key: "quantize.imatrix.entries_count".into(), value: Value::U32(n), int: None });
    let chunks = m.chunk_count as i32;
    if chunks > 0 {
        keys.push(KvOverride {
            key: "quantize.imatrix.chunks_count".into(),
            value: Value::U32(chunks as u32),
            int: None,
        });
    }
    keys
}

/// `--tensor-type` rules: one that matches no tensor is an error; one that matches but
/// decides nothing, or whose choice is changed afterwards, is a warning.
fn check_rules(
    opts: &PlanOptions,
    tensors: &[TensorFacts],
    decisions: &[Decision],
    ftype: Ftype,
    report: &mut PlanReport,
) -> Result<()> {
    for (i, rule) in opts.tensor_types.iter().enumerate() {
        let n = i + 1;
        let matched: Vec<usize> = (0..tensors.len()).filter(|&j| rule.matches(&tensors[j].name)).collect();
        if matched.is_empty() {
            bail!(
                "--tensor-type rule {n} '{}' matches no tensor of the model (patterns are searched in names such as \
                 '{}')",
                rule.text,
                tensors.iter().find(|t| t.name.starts_with("blk.")).or(tensors.first()).map_or("", |t| &t.name)
            );
        }
        if !ftype.default_type().is_quantized() {
            report.warnings.push(format!(
                "--tensor-type rule {n} '{}' is ignored: {} is not a quantized file type (as in llama-quantize)",
                rule.text,
                ftype.name()
            ));
            continue;
        }
        let decided: Vec<usize> = matched.iter().copied().filter(|&j| decisions[j].rule == Some(i)).collect();
        if decided.is_empty() {
            let why: Vec<String> = matched
                .iter()
                .take(3)
                .map(|&j| {
                    let d = &decisions[j];
                    let reason = match d.rule {
                        Some(k) => format!("rule {} comes first", k + 1),
                        None => d.steps.first().map_or(String::new(), |s| s.detail.clone()),
                    };
                    format!("'{}': {reason}", tensors[j].name)
                })
                .collect();
            report.warnings.push(format!(
                "--tensor-type rule {n} '{}' matches {} tensor(s) but decides none ({}{})",
                rule.text,
                matched.len(),
                why.join("; "),
                if matched.len() > 3 { "; …" } else { "" }
            ));
        }
        for &j in &decided {
            if decisions[j].ty != rule.ty {
                let last = decisions[j].steps.last().map_or(String::new(), |s| s.detail.clone());
                report.warnings.push(format!(
                    "--tensor-type rule {n} '{}' chose {} for '{}', overridden: {last}",
                    rule.text, rule.ty, tensors[j].name
                ));
            }
        }
    }
    Ok(())
}

/// The first `max` items, and how many more.
pub(crate) fn list(items: &[&str], max: usize) -> String {
    let mut s = items.iter().take(max).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}

/// The plan of a conversion without `--type`: every tensor as llama.cpp's converter writes
/// it (or copied, for a GGUF input).
pub fn copy_report(recipes: &[Recipe]) -> PlanReport {
    let mut report = PlanReport::new(None);
    for r in recipes {
        let bytes = r.spec.ggml_type.tensor_bytes(&r.spec.ne).unwrap_or(0);
        let step =
            Step { rule: "copy", ty: r.spec.ggml_type, detail: "no --type: as llama.cpp's converter writes it".into() };
        report.rows.push(TensorRow {
            name: r.spec.name.clone(),
            ne: r.spec.ne.clone(),
            source: r.spec.ggml_type,
            ty: r.spec.ggml_type,
            steps: vec![step],
            source_bytes: bytes,
            bytes,
            requires_imatrix: false,
            imatrix: None,
        });
    }
    report
}

/// A number as given when short (`4.5`, `-1`, `NaN`), in scientific notation when its digits
/// would run long (`1e308`, not 309 digits).
struct Shortest(f64);

impl std::fmt::Display for Shortest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = self.0.to_string();
        if plain.len() > 12 { write!(f, "{:e}", self.0) } else { f.write_str(&plain) }
    }
}
