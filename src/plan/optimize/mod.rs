//! Size budget → per-tensor types (`moeq convert --target-size S | --target-bpw B | --type T
//! --optimize`): every tensor llama-quantize would quantize gets the ggml type that makes the
//! summed measured error least within the byte budget, and every decision is logged.
//!
//! 1. Candidates ([`candidate_types`]): the k- and i-quants, the legacy block types, Q8_0,
//!    F16 and BF16 whose blocks divide the tensor's rows; the 1–3-bit i-quants that need
//!    importance weights only when the tensor has an importance matrix entry.
//! 2. Errors ([`measure`]): each candidate quantized and dequantized by the writer's own
//!    code, the squared error weighted by the importance matrix, relative to the tensor's
//!    weighted energy.
//! 3. Choice ([`knapsack`]): the multiple-choice knapsack, exact for sizes rounded to a unit,
//!    over the bytes the file may hold: the budget counts the header (with the `moeq.optimize.*`
//!    keys), tensors kept as they are (norms, released MXFP4 experts — in every file type,
//!    `MXFP4_MOE` included —, tensors whose type an
//!    option sets) and the alignment padding, so the file is never larger than the target.
//!    `--type T --optimize` targets the size of the file llama-quantize makes for T.
//! 4. Log ([`OptimizeLog`]): per tensor the type, its measured error and bytes, the
//!    candidates, and why (what the neighbouring choices would cost or save); printed by
//!    `--dry-run`, in `--json` / `--report`, and in the GGUF under `moeq.optimize.*`.
//!
//! With calibration tokens (`--calibration` / `--calibration-tokens`) each tensor's error is
//! put on the scale of the model's next-token KL divergence ([`sensitivity`]): the tensor is
//! quantized alone to a probe type, the source model's forward measures the KL it causes, and
//! the knapsack minimizes the summed predicted KL.
//!
//! Stacked experts are one GGUF tensor and share one type.

pub mod in_context;
pub mod knapsack;
pub mod measure;
pub mod mlx;
pub mod sensitivity;

use std::sync::Arc;

use anyhow::{Result, bail};
use moeq_formats::gguf::{Array, GgmlType, GgufPlan, Value};
use serde_json::{Value as Json, json};

use crate::inspect::{bytes_exact, count, human_bytes};
use crate::plan::imatrix_file::ImatrixFile;
use crate::plan::quant_plan::Ftype;
use crate::plan::quant_rules::Step;
use crate::plan::quant_rules::report::{ImatrixUse, PlanReport};
use crate::plan::recipe::{Importance, Input, Recipe};
use crate::plan::transcode::can_write;
use knapsack::{Choice, KnapsackError};
use measure::Measured;
use sensitivity::{Calibration, CalibrationSummary, Sensitivity};

/// What the budget is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// `--target-size`: bytes of the whole file.
    Size(u64),
    /// `--target-bpw`: bits per weight of all tensor data (every tensor's bytes · 8 / its
    /// elements, summed over all tensors; the header is not counted).
    Bpw(f64),
    /// `--type T --optimize`: the size of the file llama-quantize makes for T.
    Mix,
}

impl Target {
    /// In words, for the log and `moeq.optimize.target` (the number is in
    /// `moeq.optimize.budget_bytes`, so the header's length does not depend on it).
    fn describe(&self, ftype: Ftype) -> String {
        match self {
            Target::Size(_) => "--target-size".into(),
            Target::Bpw(_) => "--target-bpw".into(),
            Target::Mix => format!("--type {} --optimize: the size of llama-quantize's {0} file", ftype.name()),
        }
    }
}

/// The method, written to `moeq.optimize.method`.
pub const METHOD: &str = "multiple-choice knapsack (dynamic programming over sizes rounded up to a unit)";

/// The method with calibration tokens, written to `moeq.optimize.method`.
pub const METHOD_KL: &str = "kl-calibrated: multiple-choice knapsack (dynamic programming over sizes rounded up to a unit) \
     minimizing the summed predicted next-token KL";

/// The error measure with calibration tokens (the weight error's text follows).
pub const ERROR_KL: &str = "predicted next-token KL in nats: KL measured with only this tensor quantized to its probe \
     type, divided by its relative error there, times the relative error of the type; relative error = ";

/// The error measure, written to `moeq.optimize.error`.
pub const ERROR_WITH_IMATRIX: &str =
    "sum over rows and columns of imatrix weight * (w - dequant(quant(w)))^2, relative to sum imatrix weight * w^2";
/// The error measure without an importance matrix.
pub const ERROR_PLAIN: &str = "sum of (w - dequant(quant(w)))^2 relative to sum w^2";

/// Every type the budget may choose, cheapest first within each family (the order only breaks ties).
pub const CANDIDATES: &[GgmlType] = &[
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::Q2_K,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::Q3_K,
    GgmlType::IQ4_XS,
    GgmlType::IQ4_NL,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::BF16,
];

/// Types ggml's quantizers make only with importance weights (and llama-quantize refuses
/// without them).
pub fn needs_importance(ty: GgmlType) -> bool {
    use GgmlType as G;
    matches!(ty, G::IQ1_S | G::IQ1_M | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS)
}

/// The candidate types of a tensor with rows of `ne0` values: those whose block divides the
/// rows and that moeq writes, among `allowed` (all of [`CANDIDATES`] when `None`); the types
/// that need importance weights only when `importance`.
pub fn candidate_types(ne0: u64, importance: bool, allowed: Option<&[GgmlType]>) -> Vec<GgmlType> {
    CANDIDATES
        .iter()
        .copied()
        .filter(|&t| allowed.is_none_or(|a| a.contains(&t)))
        .filter(|&t| ne0.is_multiple_of(t.block_size()) && can_write(t) && (importance || !needs_importance(t)))
        .collect()
}

/// One tensor's decision (`T`: a ggml type for GGUF, [`crate::plan::mlx::MlxType`] for MLX).
#[derive(Clone, Debug)]
pub struct TensorDecision<T = GgmlType> {
    /// The tensor (GGUF) or module (MLX).
    pub name: String,
    /// The chosen type.
    pub ty: T,
    /// Its measured relative error.
    pub error: f64,
    /// Its bytes.
    pub bytes: u64,
    /// Every candidate: type, bytes, measured error (infinite: cannot hold the values).
    pub candidates: Vec<(T, u64, f64)>,
    /// With calibration tokens: the tensor's measured KL at its probe type and its scale
    /// (then `error` and the candidates' errors are predicted KL).
    pub sensitivity: Option<Sensitivity>,
    /// Why, in words.
    pub why: String,
}

/// The decision log of an optimized build.
#[derive(Clone, Debug)]
pub struct OptimizeLog<T = GgmlType> {
    /// What the budget is, in words.
    pub target: String,
    /// [`METHOD`].
    pub method: String,
    /// The error measure.
    pub error_measure: String,
    /// The file size allowed (MLX: of all `model*.safetensors` files; with `--target-bpw`,
    /// of their tensor data).
    pub budget_bytes: u64,
    /// The smallest file the candidates allow.
    pub min_bytes: u64,
    /// The size of the file written (counted as the budget is).
    pub file_bytes: u64,
    /// The rounding unit of the knapsack.
    pub unit: u64,
    /// Summed relative error of the chosen types.
    pub total_error: f64,
    /// Summed relative error of llama-quantize's types for the same tensors (when they were
    /// among the candidates).
    pub mix_error: Option<f64>,
    /// Per optimized tensor, in file order.
    pub tensors: Vec<TensorDecision<T>>,
    /// With calibration tokens: what they were and what the KL measurement took.
    pub calibration: Option<CalibrationSummary>,
    /// MLX budgets with calibration tokens: the whole builds measured in context and the one
    /// written ([`in_context::refine`]).
    pub whole_builds: Option<in_context::WholeBuilds>,
}

impl<T: Copy + std::fmt::Display> OptimizeLog<T> {
    /// The JSON of `--json` / `--report` (`"optimize"`).
    pub fn to_json(&self) -> Json {
        json!({
            "target": self.target,
            "method": self.method,
            "error_measure": self.error_measure,
            "budget_bytes": self.budget_bytes,
            "min_bytes": self.min_bytes,
            "file_bytes": self.file_bytes,
            "unit_bytes": self.unit,
            "total_error": self.total_error,
            "mix_error": self.mix_error,
            "calibration": self.calibration.as_ref().map(|c| json!({
                "input": c.what,
                "chunks": c.chunks,
                "tokens": c.tokens,
                "top_k": c.top_k,
                "probes": c.probes.name(),
                "seconds": c.seconds,
            })),
            "whole_builds": self.whole_builds.as_ref().map(in_context::WholeBuilds::to_json),
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name,
                "type": t.ty.to_string(),
                "error": finite(t.error),
                "bytes": t.bytes,
                "why": t.why,
                "kl": t.sensitivity.as_ref().map(|s| json!({
                    "probe": s.probe.name(),
                    "kl": s.kl.map(finite),
                    "probe_error": finite(s.probe_error),
                    "scale": finite(s.scale),
                    "floored": s.floored,
                    "layer_gain": s.via.map(|v| json!({
                        "layer": v.layer,
                        "gain": finite(v.gain),
                        "residual_error": finite(v.residual_error),
                        "rows_probed": v.rows_probed,
                    })),
                })),
                "candidates": t.candidates.iter().map(|(ty, b, e)| json!({"type": ty.to_string(), "bytes": b, "error": finite(*e)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Lines for the `--dry-run` table.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "optimized for {}: budget {}, smallest possible {}, file {}\n  method: {}\n  error: {}\n  summed error {:.4e}",
            self.target,
            bytes_exact(self.budget_bytes),
            human_bytes(self.min_bytes),
            bytes_exact(self.file_bytes),
            self.method,
            self.error_measure,
            self.total_error
        );
        if let Some(m) = self.mix_error {
            out.push_str(&format!(" (the planned mix's types for the same tensors: {m:.4e})"));
        }
        out.push('\n');
        if let Some(c) = &self.calibration {
            out.push_str(&format!(
                "  KL calibration: {} ({}, {}, top {} reference tokens per position, {} probes) in {:.1} s\n",
                c.what,
                count(c.chunks as u64, "chunk"),
                count(c.tokens as u64, "token"),
                c.top_k,
                c.probes.name(),
                c.seconds
            ));
        }
        if let Some(w) = &self.whole_builds {
            out.push_str(&w.to_text());
        }
        out
    }

    /// The `moeq.optimize.*` keys (llama.cpp ignores keys it does not know).
    pub fn metadata(&self) -> Vec<(String, Value)> {
        let mut keys = metadata_keys(
            &self.target,
            &self.method,
            &self.error_measure,
            self.budget_bytes,
            self.total_error,
            self.tensors.iter().map(|t| (t.name.clone(), t.ty.to_string(), t.error)).collect(),
        );
        let sensitivities: Option<Vec<&Sensitivity>> = self.tensors.iter().map(|t| t.sensitivity.as_ref()).collect();
        if let (Some(c), Some(s)) = (&self.calibration, sensitivities) {
            keys.extend(kl_keys(c, &s));
        }
        keys
    }
}

fn finite(x: f64) -> Json {
    if x.is_finite() { json!(x) } else { Json::Null }
}

fn metadata_keys(
    target: &str,
    method: &str,
    error: &str,
    budget: u64,
    total: f64,
    tensors: Vec<(String, String, f64)>,
) -> Vec<(String, Value)> {
    let s = |v: &str| Value::String(v.to_string());
    vec![
        ("moeq.optimize.target".into(), s(target)),
        ("moeq.optimize.method".into(), s(method)),
        ("moeq.optimize.error".into(), s(error)),
        ("moeq.optimize.budget_bytes".into(), Value::U64(budget)),
        ("moeq.optimize.total_error".into(), Value::F64(total)),
        ("moeq.optimize.tensors".into(), Value::Array(Array::String(tensors.iter().map(|t| t.0.clone()).collect()))),
        ("moeq.optimize.types".into(), Value::Array(Array::String(tensors.iter().map(|t| t.1.clone()).collect()))),
        ("moeq.optimize.errors".into(), Value::Array(Array::F32(tensors.iter().map(|t| t.2 as f32).collect()))),
    ]
}

/// The `moeq.optimize.*` keys of a KL-calibrated build: `.calibration` (the input, chunks and
/// tokens, in words), `.kl` (f32 per tensor, in `.tensors` order: the mean next-token KL
/// measured at the probe type; −1 where it was not measurable) and `.probe_types`.
fn kl_keys(c: &CalibrationSummary, s: &[&Sensitivity]) -> Vec<(String, Value)> {
    vec![
        (
            "moeq.optimize.calibration".into(),
            Value::String(format!("{} ({} chunks, {} tokens, {} probes)", c.what, c.chunks, c.tokens, c.probes.name())),
        ),
        (
            "moeq.optimize.kl".into(),
            Value::Array(Array::F32(s.iter().map(|x| x.kl.map_or(-1.0, |k| k as f32)).collect())),
        ),
        (
            "moeq.optimize.probe_types".into(),
            Value::Array(Array::String(s.iter().map(|x| x.probe.name().to_string()).collect())),
        ),
    ]
}

/// Attaches the importance matrix's entry for `recipe` (by its llama.cpp name) when it has
/// none yet and the entry fits its columns (per expert for stacked experts).
pub fn attach_importance(recipe: &mut Recipe, imatrix: Option<&Arc<ImatrixFile>>) -> Result<()> {
    if recipe.importance.is_none()
        && let Some(m) = imatrix
        && let Some(index) = m.position(&recipe.spec.name)
    {
        let ne = &recipe.spec.ne;
        let (ne0, n_mat) = (ne.first().copied().unwrap_or(1), ne.get(2).copied().unwrap_or(1));
        let n_values = m.entries()[index].n_values as u64;
        if n_values == ne0 * n_mat {
            recipe.importance = Some(Importance {
                file: Arc::clone(m),
                entry: index,
                rows_per_matrix: ne.get(1).copied().unwrap_or(1),
            });
        } else if !matches!(recipe.spec.name.as_str(), "token_embd.weight" | "per_layer_token_embd.weight") {
            // As llama-quantize (and moeq's GGUF plan): only the embedding may differ.
            bail!(
                "{}: entry '{}' holds {n_values} values, but the tensor has {ne0} columns × {n_mat} matri{} = {} (an \
                 importance matrix for another model?)",
                m.path().display(),
                recipe.spec.name,
                if n_mat == 1 { "x" } else { "ces" },
                ne0 * n_mat
            );
        }
    }
    Ok(())
}

/// The method and error measure of a build, in words: the knapsack over the weight error
/// (importance-weighted with `imatrix`), or over the predicted KL when `calibrated`.
pub fn method_and_error(imatrix: bool, calibrated: bool) -> (&'static str, String) {
    let weight_error = if imatrix { ERROR_WITH_IMATRIX } else { ERROR_PLAIN };
    if calibrated { (METHOD_KL, format!("{ERROR_KL}{weight_error}")) } else { (METHOD, weight_error.to_string()) }
}

/// The error for a budget smaller than the smallest build: `what` is the budget in words,
/// `min` the smallest build, `kept` the number of tensors kept as they are, `extra` what else
/// the smallest build counts (", and the header").
pub fn too_small(what: &str, budget: u64, min: u64, kept: usize, extra: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: the budget of {} is smaller than the smallest file moeq can make of this model, {}: every \
         quantized tensor at its smallest candidate type, {} as they are{extra}",
        bytes_exact(budget),
        bytes_exact(min),
        count(kept as u64, "other tensor"),
    )
}

/// Why the knapsack picked option `pick` of one tensor's options `items` (types `types`, in
/// the same order): the choice and its (predicted) error, with calibration how its KL scale
/// was measured, and what the neighbouring choices on the tensor's Pareto front would save or
/// cost.
pub fn explain<T: Copy + std::fmt::Display>(
    types: &[T],
    items: &[Choice],
    pick: usize,
    sensitivity: Option<&Sensitivity>,
) -> String {
    let ty = types[pick];
    let front = knapsack::pareto(items);
    let pos = front.iter().position(|&o| o == pick).unwrap_or(0);
    let mut why = match sensitivity {
        Some(s) => {
            let kl = match (s.kl, s.via) {
                (None, _) => "not measurable".to_string(),
                (Some(kl), None) => format!("{kl:.3e} nats"),
                (Some(kl), Some(v)) => format!(
                    "{kl:.3e} nats = layer {} gain {:.3e} × output change {:.3e}{}",
                    v.layer,
                    v.gain,
                    v.residual_error,
                    if v.rows_probed < 1.0 {
                        format!(" (from {:.0} % of its rows)", 100.0 * v.rows_probed)
                    } else {
                        String::new()
                    }
                ),
            };
            format!(
                "size budget: {ty}, predicted KL {:.3e} (probe {}: KL {kl} at relative error {:.3e}, scale {:.3e}{})",
                items[pick].error,
                s.probe,
                s.probe_error,
                s.scale,
                if s.floored { ", floor" } else { "" }
            )
        }
        None => format!("size budget: {ty}, relative error {:.3e}", items[pick].error),
    };
    if pos > 0 {
        let c = front[pos - 1];
        why.push_str(&format!(
            "; {} would save {} for {:+.3e}",
            types[c],
            human_bytes(items[pick].bytes - items[c].bytes),
            items[c].error - items[pick].error
        ));
    }
    if let Some(&d) = front.get(pos + 1) {
        why.push_str(&format!(
            "; {} would cost {} more for {:+.3e}",
            types[d],
            human_bytes(items[d].bytes - items[pick].bytes),
            items[d].error - items[pick].error
        ));
    }
    why
}

/// What [`measure_and_score`] gives: per tensor the measured candidates, the knapsack's
/// options (bytes and scored error, in the same order) and, with calibration, every tensor's
/// sensitivity and what the calibration took.
pub type Scored<T> = (Vec<Vec<Measured<T>>>, Vec<Vec<Choice>>, Option<(Vec<Sensitivity>, CalibrationSummary)>);

/// Measures every candidate of every tensor of `jobs` ([`measure::measure`]), with
/// `calibration` the tensors' KL scales ([`sensitivity::sensitivities`]), and makes the
/// knapsack's options: `bytes(k, m)` what candidate `m` of tensor `k` counts against the budget,
/// its error the relative error times the tensor's KL scale (1 without calibration).
///
/// Errors: as [`measure::measure`] and [`sensitivity::sensitivities`].
pub fn measure_and_score<T: measure::Codec>(
    jobs: &[(&Recipe, Vec<T>)],
    calibration: Option<&Calibration>,
    quiet: bool,
    bytes: impl Fn(usize, &Measured<T>) -> u64,
) -> Result<Scored<T>> {
    let measured = measure::measure(jobs, quiet)?;
    let calibrated = match calibration {
        Some(cal) => {
            let tensors: Vec<&Recipe> = jobs.iter().map(|(r, _)| *r).collect();
            Some(sensitivity::sensitivities(cal, &tensors, quiet)?)
        }
        None => None,
    };
    let scale = |k: usize| calibrated.as_ref().map_or(1.0, |(s, _): &(Vec<Sensitivity>, _)| s[k].scale);
    let items = measured
        .iter()
        .enumerate()
        .map(|(k, ms)| ms.iter().map(|m| Choice { bytes: bytes(k, m), error: scale(k) * m.relative() }).collect())
        .collect();
    Ok((measured, items, calibrated))
}

/// Steps that fix a tensor's type: never optimized.
const FIXED_RULES: &[&str] =
    &["not-quantized", "released-mxfp4", "token-embedding-type", "output-tensor-type", "tensor-type", "copy"];

/// Settings of [`optimize`].
pub struct OptimizeSettings<'m> {
    /// The budget.
    pub target: Target,
    /// The file type written to `general.file_type`; `None`: the one whose default type
    /// holds most of the optimized bytes.
    pub ftype: Option<Ftype>,
    /// The file type whose plan `plan` / `report` are (for [`Target::Mix`]).
    pub planned: Ftype,
    /// The importance matrix (already filtered), if any.
    pub imatrix: Option<&'m Arc<ImatrixFile>>,
    /// `--candidate-types`: the types to choose among (`None`: [`CANDIDATES`]).
    pub candidates: Option<Vec<GgmlType>>,
    /// Calibration tokens: the errors are scaled by measured next-token KL ([`sensitivity`]).
    pub calibration: Option<&'m Calibration<'m, 'm>>,
    /// No progress bar.
    pub quiet: bool,
}

/// Rechooses the types of a requantization plan (`plan`, `recipes` and `report` as
/// [`crate::plan::quant_rules::apply::requantize`] made them) to the budget. Returns the new
/// plan (with the `moeq.optimize.*` keys), recipes and report (with [`OptimizeLog`]).
///
/// Errors: the budget is smaller than the smallest possible file (every optimized tensor at
/// its smallest candidate), naming both sizes; reading or quantizing the input fails.
pub fn optimize<'a>(
    mut plan: GgufPlan,
    mut recipes: Vec<Recipe<'a>>,
    mut report: PlanReport,
    settings: &OptimizeSettings,
) -> Result<(GgufPlan, Vec<Recipe<'a>>, PlanReport)> {
    let alignment = match plan.get("general.alignment") {
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        _ => 32,
    };
    let pad = |b: u64| b.div_ceil(alignment) * alignment;
    // llama-quantize's file of the planned type: without the `moeq.rounding` key that
    // `--rounding gptq` adds, so that `--type T --optimize` stays within llama-quantize's size.
    let mix_file = {
        let mut mix = plan.clone();
        mix.remove(crate::plan::rounding::KEY);
        mix.layout().map_err(anyhow::Error::msg)?.file_len
    };

    // Which tensors are chosen here, with importance weights attached where the matrix has
    // an entry that fits.
    let mut chosen: Vec<usize> = Vec::new();
    for (i, (recipe, row)) in recipes.iter_mut().zip(&report.rows).enumerate() {
        // Released MXFP4 experts written as MXFP4 (an `MXFP4_MOE` file) are a copy of the source:
        // kept, as every other file type keeps them (rule "released-mxfp4").
        let released_mxfp4 = row.source == GgmlType::MXFP4 && recipe.spec.ggml_type == GgmlType::MXFP4;
        let fixed = released_mxfp4
            || row.steps.iter().any(|s| FIXED_RULES.contains(&s.rule))
            || matches!(recipe.input(), Input::Owned(_));
        if fixed {
            continue;
        }
        attach_importance(recipe, settings.imatrix)?;
        chosen.push(i);
    }
    if chosen.is_empty() {
        bail!("no tensor of this model can be quantized, so there is nothing to choose types for");
    }

    let jobs: Vec<(&Recipe, Vec<GgmlType>)> = chosen
        .iter()
        .map(|&i| {
            (
                &recipes[i],
                candidate_types(recipes[i].row_len(), recipes[i].importance.is_some(), settings.candidates.as_deref()),
            )
        })
        .collect();
    if let Some((r, _)) = jobs.iter().find(|(_, c)| c.is_empty()) {
        let ne0 = r.row_len();
        // Why: types that would fit the rows but need importance weights the tensor lacks.
        let fit_without: Vec<&str> = settings
            .candidates
            .as_deref()
            .unwrap_or(CANDIDATES)
            .iter()
            .filter(|&&t| ne0.is_multiple_of(t.block_size()) && can_write(t) && needs_importance(t))
            .map(|t| t.name())
            .collect();
        if !fit_without.is_empty() {
            bail!(
                "tensor '{}': the only candidate types for its rows of {ne0} values ({}) need an importance matrix, \
                 and {}; add other types to --candidate-types (e.g. q2_k, q3_k, q4_k)",
                r.spec.name,
                fit_without.join(", "),
                if settings.imatrix.is_some() {
                    "the --imatrix file has no entry of this tensor's size for it".to_string()
                } else {
                    "no --imatrix was given".to_string()
                }
            );
        }
        bail!(
            "tensor '{}': rows of {ne0} values fit no candidate type{}",
            r.spec.name,
            if settings.candidates.is_some() { " of --candidate-types" } else { "" }
        );
    }
    // A budget that cannot hold even the smallest candidates is refused before any measuring
    // (the header, not yet known, only adds to the smallest file).
    let smallest = |i: usize, types: &[GgmlType]| -> u64 {
        types.iter().map(|t| pad(t.tensor_bytes(&recipes[i].spec.ne).unwrap_or(u64::MAX / 4))).min().unwrap_or(0)
    };
    let fixed: u64 = (0..recipes.len())
        .filter(|i| !chosen.contains(i))
        .map(|i| pad(recipes[i].spec.ggml_type.tensor_bytes(&recipes[i].spec.ne).unwrap_or(0)))
        .sum();
    let min_early = fixed + chosen.iter().zip(&jobs).map(|(&i, (_, c))| smallest(i, c)).sum::<u64>();
    let elements: u64 = recipes.iter().map(|r| r.spec.ne.iter().product::<u64>()).sum();
    let data_budget = match settings.target {
        Target::Size(s) => Some(s),
        Target::Bpw(b) => Some((b * elements as f64 / 8.0).floor() as u64),
        Target::Mix => None,
    };
    if let Some(budget) = data_budget.filter(|&b| b < min_early) {
        bail!(
            "{}: the budget of {} is smaller than the smallest file moeq can make of this model, more than {}: \
             every quantized tensor at its smallest candidate type and the {} as they are, before the header",
            settings.target.describe(settings.planned),
            bytes_exact(budget),
            bytes_exact(min_early),
            count((recipes.len() - chosen.len()) as u64, "other tensor")
        );
    }
    let (measured, items, calibrated) = measure_and_score(&jobs, settings.calibration, settings.quiet, |k, m| {
        pad(m.ty.tensor_bytes(&recipes[chosen[k]].spec.ne).unwrap_or(u64::MAX / 4))
    })?;

    // The header with the moeq keys, every type name as long as the longest candidate's:
    // the real header is no longer.
    let longest = "X".repeat(CANDIDATES.iter().map(|t| t.name().len()).max().unwrap_or(8));
    let target_text = settings.target.describe(settings.planned);
    let (method, error_text) = method_and_error(settings.imatrix.is_some(), calibrated.is_some());
    let mut placeholder = metadata_keys(
        &target_text,
        method,
        &error_text,
        u64::MAX,
        0.0,
        chosen.iter().map(|&i| (recipes[i].spec.name.clone(), longest.clone(), 0.0)).collect(),
    );
    if let Some((s, c)) = &calibrated {
        placeholder.extend(kl_keys(c, &s.iter().collect::<Vec<_>>()));
    }
    for (k, v) in &placeholder {
        plan.set(k, v.clone());
    }
    // Tensor infos take the same bytes whatever the type; the layout pads the header.
    let header = plan.layout().map_err(anyhow::Error::msg)?.header.len() as u64;
    let budget_file = match settings.target {
        Target::Size(s) => s,
        Target::Mix => mix_file,
        Target::Bpw(b) => header + (b * elements as f64 / 8.0).floor() as u64,
    };
    let min_items: u64 = items.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap_or(0)).sum();
    let min_file = header + fixed + min_items;
    let item_budget = budget_file.checked_sub(header + fixed);
    let solution = match item_budget.map(|b| knapsack::solve(&items, b)) {
        Some(Ok(s)) => s,
        None | Some(Err(KnapsackError::TooSmall { .. })) => {
            return Err(too_small(
                &target_text,
                budget_file,
                min_file,
                recipes.len() - chosen.len(),
                ", and the header",
            ));
        }
        Some(Err(e)) => bail!("choosing types: {e}"),
    };

    // Apply the choice.
    let mut decisions = Vec::with_capacity(chosen.len());
    let mut mix_error = Some(0.0);
    for (k, &i) in chosen.iter().enumerate() {
        let pick = solution.picks[k];
        let m = &measured[k];
        let ty = m[pick].ty;
        let types: Vec<GgmlType> = m.iter().map(|x| x.ty).collect();
        let why = explain(&types, &items[k], pick, calibrated.as_ref().map(|(s, _)| &s[k]));
        let row = &mut report.rows[i];
        mix_error = match (mix_error, m.iter().position(|x| x.ty == row.ty)) {
            (Some(acc), Some(p)) => Some(acc + items[k][p].error),
            _ => None,
        };
        row.steps.push(Step { rule: "optimize", ty, detail: why.clone() });
        row.ty = ty;
        row.bytes = ty.tensor_bytes(&row.ne).unwrap_or(0);
        row.requires_imatrix = needs_importance(ty);
        let recipe = recipes[i].clone().retype(ty);
        if let (Some(imp), Some(m)) = (&recipe.importance, settings.imatrix) {
            let e = &m.entries()[imp.entry];
            row.imatrix = Some(ImatrixUse::Used {
                counts: e.counts.clone(),
                legacy: e.n_mat() == 1 && recipe.spec.ne.get(2).copied().unwrap_or(1) > 1,
            });
        } else if settings.imatrix.is_some() && row.imatrix.is_none() && ty.is_quantized() {
            row.imatrix = Some(ImatrixUse::NoEntry { refused: false });
        }
        recipes[i] = recipe;
        decisions.push(TensorDecision {
            name: row.name.clone(),
            ty,
            error: items[k][pick].error,
            bytes: row.bytes,
            candidates: m.iter().zip(&items[k]).map(|(x, c)| (x.ty, c.bytes, c.error)).collect(),
            sensitivity: calibrated.as_ref().map(|(s, _)| s[k].clone()),
            why,
        });
    }
    let ftype = settings.ftype.unwrap_or_else(|| dominant_ftype(&decisions));
    report.ftype = Some(ftype);
    plan.set("general.file_type", Value::U32(ftype.id()));
    plan.tensors = recipes.iter().map(|r| r.spec.clone()).collect();
    let mut log = OptimizeLog {
        target: target_text,
        method: method.into(),
        error_measure: error_text,
        budget_bytes: budget_file,
        min_bytes: min_file,
        file_bytes: 0,
        unit: solution.unit,
        total_error: solution.error,
        mix_error: if settings.target == Target::Mix { mix_error } else { None },
        tensors: decisions,
        calibration: calibrated.map(|(_, c)| c),
        whole_builds: None,
    };
    for (k, v) in log.metadata() {
        plan.set(&k, v);
    }
    log.file_bytes = plan.layout().map_err(anyhow::Error::msg)?.file_len;
    if log.file_bytes > budget_file {
        bail!(
            "internal error: the optimized file would take {} bytes, more than the budget of {budget_file}",
            log.file_bytes
        );
    }
    report.optimize = Some(log);
    Ok((plan, recipes, report))
}

/// The file type named after the type holding most of the optimized bytes (`Q4_K` →
/// `Q4_K_M`, `IQ4_XS` → `IQ4_XS`, `Q8_0` → `Q8_0`, `F16` → `F16`).
fn dominant_ftype(decisions: &[TensorDecision]) -> Ftype {
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for d in decisions {
        match by_type.iter_mut().find(|(t, _)| *t == d.ty) {
            Some(e) => e.1 += d.bytes,
            None => by_type.push((d.ty, d.bytes)),
        }
    }
    let ty = by_type.iter().max_by_key(|e| e.1).map_or(GgmlType::Q8_0, |e| e.0);
    let named = |n: &str| Ftype::all().find(|f| f.name() == n);
    named(&format!("{}_M", ty.name()))
        .or_else(|| named(ty.name()))
        .or_else(|| Ftype::all().find(|f| f.default_type() == ty))
        .unwrap_or(Ftype::Q8_0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_row_width_and_the_importance_matrix() {
        let narrow = candidate_types(576, true, None);
        assert!(narrow.iter().all(|t| 576 % t.block_size() == 0));
        assert!(
            narrow.contains(&GgmlType::IQ4_NL) && narrow.contains(&GgmlType::Q5_0) && narrow.contains(&GgmlType::F16)
        );
        assert!(!narrow.contains(&GgmlType::Q4_K));
        let wide = candidate_types(1536, false, None);
        assert!(wide.contains(&GgmlType::Q2_K) && wide.contains(&GgmlType::IQ3_S) && wide.contains(&GgmlType::Q6_K));
        assert!(!wide.iter().any(|&t| needs_importance(t)));
        let with = candidate_types(1536, true, None);
        assert!(with.contains(&GgmlType::IQ2_XXS) && with.contains(&GgmlType::IQ1_S));
        let only = candidate_types(576, true, Some(&[GgmlType::Q4_K, GgmlType::Q8_0]));
        assert_eq!(only, vec![GgmlType::Q8_0]);
    }
}
