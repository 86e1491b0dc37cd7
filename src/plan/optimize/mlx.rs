//! Size budget → per-module MLX types (`moeq convert SRC -o DIR --format mlx --target-size S |
//! --target-bpw B | --type qN --optimize`): every module mlx-lm quantizes (`nn.Linear`,
//! `SwitchLinear`, `nn.Embedding` with rows of whole groups) gets its own type, written as
//! mlx-lm's per-module `quantization` entries in `config.json`, which its loader reads
//! (`config["quantization"][module_path]`), so the folder loads in unmodified mlx-lm.
//!
//! The pieces are the GGUF optimizer's ([`super`]): the same importance-weighted relative error
//! ([`super::measure`], here of MLX's own quantize → dequantize, [`MlxType`]'s
//! [`super::measure::Codec`]), with calibration tokens the same per-tensor KL scale
//! ([`super::sensitivity::sensitivities`], run on the llama.cpp-named recipes the MLX build is
//! made from), the same knapsack ([`super::knapsack::solve`]) and the same log
//! ([`super::OptimizeLog`]).
//!
//! - Candidates ([`candidates`]): affine 2, 3, 4, 5, 6 and 8 bits at the build's group size
//!   (`--group-size`, default 64), MXFP4 (a valid MLX mode, 4.25 bits per weight, groups of 32,
//!   which every group size is a multiple of), and the model's float dtype.
//! - Kept as they are: norms, biases and 1-D tensors, modules mlx-lm does not quantize (rows that
//!   are not whole groups), modules whose type the model's own mlx-lm choice sets (gpt-oss's
//!   experts in MXFP4 and router in 8 bits, Qwen3-MoE's routers in 8 bits), and modules set by
//!   `--quant-override`.
//! - Budgets: `--target-size S` bounds the bytes of all `model*.safetensors` files (headers
//!   included; every header entry counted at its longest, so the real files are never larger);
//!   `--target-bpw B` bounds bits per weight as mlx-lm reports them after `convert`
//!   (`mlx_lm.utils.compute_bits_per_weight`: the bytes of every array of the model · 8 / its
//!   parameters, a quantized module counting its unquantized size), i.e. tensor data bytes · 8 /
//!   parameters; `--type qN --optimize` bounds the files' bytes by those of mlx-lm's uniform qN
//!   build (what `moeq convert --type qN` writes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Result, bail};
use moeq_formats::gguf::GgmlType;
use moeq_formats::safetensors::{HeaderStyle, SafetensorsPlan, StTensorSpec};
use moeq_kernels::mlx::AFFINE_BITS;
use serde_json::{Value as Json, json};

use super::knapsack::{self, KnapsackError};
use super::measure::decode_whole;
use super::sensitivity::Calibration;
use super::sensitivity::whole::Judge;
use super::{
    OptimizeLog, Target, TensorDecision, attach_importance, explain, in_context, measure_and_score, method_and_error,
    too_small,
};
use crate::families::Family;
use crate::inspect::human_bytes;
use crate::plan::imatrix_file::ImatrixFile;
use crate::plan::mlx::{self, MlxOptions, MlxType, Slot, outputs};
use crate::plan::recipe::Recipe;
use crate::write::safetensors::Item;

/// Settings of [`choose`].
pub struct MlxBudgetSettings<'m> {
    /// The budget.
    pub target: Target,
    /// The build's affine type: `--type qN` (then `--optimize` targets its size), else 4 bits;
    /// its group size is every affine candidate's.
    pub ty: MlxType,
    /// The importance matrix (already filtered), if any.
    pub imatrix: Option<&'m Arc<ImatrixFile>>,
    /// Calibration tokens: the errors are scaled by measured next-token KL.
    pub calibration: Option<&'m Calibration<'m, 'm>>,
    /// `__metadata__` of every shard (for the header bytes).
    pub metadata: Vec<(String, String)>,
    /// Most tensor bytes per shard.
    pub shard_max_bytes: u64,
    /// No progress bar.
    pub quiet: bool,
}

/// The choice: per budgeted module its type, the `quantization` block's global setting, and the
/// log.
pub struct MlxBudget {
    /// Module path → type, for [`MlxOptions::chosen`].
    pub chosen: Vec<(String, MlxType)>,
    /// The global setting of `config.json`'s `quantization` (`--type qN`, else the affine type
    /// holding most of the budgeted bytes): modules of other types get their own entries.
    pub global: MlxType,
    /// The decision log (its `file_bytes` set by [`check_written`]).
    pub log: OptimizeLog<MlxType>,
}

/// The candidate types of a module with rows of `row_len` values: affine 2…8 bits at `ty`'s
/// group size when the rows are whole groups of it, MXFP4 when they are whole groups of 32, and
/// `dtype`; cheapest first. (`--candidate-types` narrows them.)
pub fn candidates(ty: MlxType, row_len: u64, dtype: GgmlType) -> Vec<MlxType> {
    let group = ty.group().unwrap_or(64);
    let mut out: Vec<MlxType> = Vec::new();
    if row_len.is_multiple_of(group) {
        out.extend(AFFINE_BITS.iter().map(|&bits| MlxType::Affine { bits, group }));
    }
    if row_len.is_multiple_of(32) {
        out.insert(out.len().min(2), MlxType::Mxfp4);
    }
    out.push(MlxType::Float(dtype));
    out
}

/// About the header bytes `specs` add to a shard's header: each entry with its data offsets
/// `0` and its size, and its comma (the real offsets may take more digits: [`choose`] checks the
/// exact files and tightens the budget until they fit).
fn header_estimate(specs: &[StTensorSpec]) -> u64 {
    specs
        .iter()
        .map(|s| {
            let one = SafetensorsPlan { metadata: None, tensors: vec![s.clone()], style: HeaderStyle::Mlx };
            // The layout: the u64 length, then `{entry}`; its offsets are `0` and the size.
            one.layout().map_or(u64::MAX / 4, |l| l.header.len() as u64 - 8 - 2 + 1)
        })
        .sum()
}

fn data_bytes(specs: &[StTensorSpec]) -> u64 {
    specs.iter().map(|s| s.nbytes().unwrap_or(u64::MAX / 4)).sum()
}

/// Chooses the type of every budgeted module of the MLX build of `recipes` (llama.cpp-named,
/// as [`mlx::plan`] takes them; importance weights are attached here) to the budget: the
/// knapsack over the measured (or KL-predicted) errors. `opts` are the user's MLX options
/// (`--quant-override`).
///
/// Errors: the budget is smaller than the smallest build (every budgeted module at its smallest
/// candidate, the rest as they are), naming both sizes; no module can be budgeted; reading or
/// quantizing the input, or the KL calibration, fails.
pub fn choose(
    recipes: &mut [Recipe],
    family: &dyn Family,
    dtype: GgmlType,
    opts: &MlxOptions,
    s: &MlxBudgetSettings,
) -> Result<MlxBudget> {
    // mlx-lm's uniform build of the same type: the tensors kept as they are, the parameters,
    // and --optimize's size.
    let uniform_opts = MlxOptions { ty: Some(s.ty), overrides: opts.overrides.clone(), ..MlxOptions::default() };
    let uniform = mlx::plan(recipes.to_vec(), family, dtype, &uniform_opts)?;
    let mut budgeted: Vec<(usize, Slot)> = Vec::new();
    for (i, recipe) in recipes.iter_mut().enumerate() {
        let Some(slot) = Slot::of(recipe, family, opts) else { continue };
        if slot.budgeted(family, s.ty, dtype) {
            attach_importance(recipe, s.imatrix)?;
            budgeted.push((i, slot));
        }
    }
    if s.calibration.is_none() {
        // Measured on SmolLM2-135M (docs/mlx-budget.md): the weight error alone gave the tied
        // embedding 2 bits, KL 6.2 against uniform q4's 0.40 at the same size.
        eprintln!(
            "warning: without --calibration (or --calibration-tokens) the MLX budget weighs every module's weight \
             error alike, which can starve the modules the output depends on most (on SmolLM2-135M: the tied \
             embedding at 2 bits, 15x the KL of uniform q4 at the same size); pass calibration text"
        );
    }
    if budgeted.is_empty() {
        if !opts.overrides.is_empty() {
            bail!(
                "--quant-override sets every module the budget would choose a type for, so there is nothing left to \
                 choose: drop the size budget, or the overrides of the modules it should decide"
            );
        }
        bail!("no module of this model can be quantized by mlx-lm, so there is nothing to choose types for");
    }
    let names: HashSet<&str> = budgeted.iter().map(|(i, _)| recipes[*i].spec.name.as_str()).collect();
    let fixed: Vec<StTensorSpec> = uniform
        .items
        .iter()
        .filter(|it| !names.contains(it.recipe.spec.name.as_str()))
        .flat_map(|it| it.outputs.iter().cloned())
        .collect();
    let by_data = matches!(s.target, Target::Bpw(_));
    let types: Vec<Vec<MlxType>> = budgeted
        .iter()
        .map(|(_, m)| {
            let mut c = candidates(s.ty, m.row_len, dtype);
            c.retain(|t| opts.candidates.as_ref().is_none_or(|only| only.contains(t)));
            c
        })
        .collect();
    if let Some(((_, m), _)) = budgeted.iter().zip(&types).find(|(_, c)| c.is_empty()) {
        bail!(
            "{}: rows of {} values fit none of --candidate-types (affine types at group size {}; the float type is \
             the model's, {})",
            m.module,
            m.row_len,
            s.ty.group().unwrap_or(64),
            MlxType::Float(dtype)
        );
    }
    // What each candidate counts against the budget: its data, and with a file-size budget about
    // its header entries (the exact files are checked below).
    let counted = |m: &Slot, t: MlxType| {
        let specs = outputs(&m.name, &m.module, &m.shape, t);
        data_bytes(&specs) + if by_data { 0 } else { header_estimate(&specs) }
    };
    let bytes: Vec<Vec<u64>> =
        budgeted.iter().zip(&types).map(|((_, m), ts)| ts.iter().map(|&t| counted(m, t)).collect()).collect();
    let uniform_specs: Vec<StTensorSpec> = uniform.items.iter().flat_map(|i| i.outputs.iter().cloned()).collect();
    let uniform_files =
        SafetensorsPlan { metadata: Some(s.metadata.clone()), tensors: uniform_specs, style: HeaderStyle::Mlx }
            .files_len(Some(s.shard_max_bytes))
            .map_err(anyhow::Error::msg)?;
    let (budget, target_text) = match s.target {
        Target::Size(b) => (b, "--target-size: bytes of the model*.safetensors files".to_string()),
        Target::Bpw(b) => (
            (b * uniform.parameters as f64 / 8.0).floor() as u64,
            format!(
                "--target-bpw {b}: bits per weight as mlx-lm reports them (tensor data bytes · 8 / {} parameters)",
                uniform.parameters
            ),
        ),
        Target::Mix => {
            (uniform_files, format!("--type {} --optimize: the size of mlx-lm's uniform {0} build", short(s.ty)))
        }
    };
    // The build with option `picks[k]` for module `k`, and its exact bytes: its files (or data).
    let position: std::collections::HashMap<&str, usize> =
        budgeted.iter().enumerate().map(|(k, (i, _))| (recipes[*i].spec.name.as_str(), k)).collect();
    let build = |picks: &[usize]| -> SafetensorsPlan {
        let specs: Vec<StTensorSpec> = uniform
            .items
            .iter()
            .flat_map(|it| match position.get(it.recipe.spec.name.as_str()) {
                Some(&k) => {
                    let m = &budgeted[k].1;
                    outputs(&m.name, &m.module, &m.shape, types[k][picks[k]])
                }
                None => it.outputs.clone(),
            })
            .collect();
        SafetensorsPlan { metadata: Some(s.metadata.clone()), tensors: specs, style: HeaderStyle::Mlx }
    };
    let exact = |picks: &[usize]| -> Result<u64> {
        let plan = build(picks);
        if by_data {
            return Ok(data_bytes(&plan.tensors));
        }
        plan.files_len(Some(s.shard_max_bytes)).map_err(anyhow::Error::msg)
    };
    let smallest: Vec<usize> = bytes.iter().map(|b| (0..b.len()).min_by_key(|&o| b[o]).unwrap_or(0)).collect();
    let min_bytes = exact(&smallest)?;
    let fixed_data = data_bytes(&fixed);
    let fixed_counted = if by_data {
        fixed_data
    } else {
        // The shards' own bytes (length, braces, `__metadata__`) once per shard of the smallest
        // build (larger builds may need more shards: the exact check below shrinks the room by
        // what they add).
        let shards = build(&smallest).shard(s.shard_max_bytes).len().max(1) as u64;
        let base = SafetensorsPlan { metadata: Some(s.metadata.clone()), tensors: Vec::new(), style: HeaderStyle::Mlx };
        let base = base.layout().map_err(anyhow::Error::msg)?.header.len() as u64;
        fixed_data + header_estimate(&fixed) + shards * base
    };
    let kept = uniform.items.len() - budgeted.len();
    let what = if by_data { ", counted as tensor data" } else { ", and the headers" };
    if budget < min_bytes {
        return Err(too_small(&target_text, budget, min_bytes, kept, what));
    }

    let jobs: Vec<(&Recipe, Vec<MlxType>)> =
        budgeted.iter().zip(&types).map(|((i, _), t)| (&recipes[*i], t.clone())).collect();
    let (_, items, calibrated) = measure_and_score(&jobs, s.calibration, s.quiet, |k, m| {
        bytes[k][types[k].iter().position(|&t| t == m.ty).unwrap_or(0)]
    })?;
    // The knapsack on the estimated bytes; where the exact files come out larger (offsets of
    // more digits), the room shrinks by the excess and the choice is made again.
    // Never below the smallest options, whose exact files fit (`min_bytes` ≤ budget).
    let floor: u64 = bytes.iter().zip(&smallest).map(|(b, &o)| b.get(o).copied().unwrap_or(0)).sum();
    let fit = |items: &[Vec<knapsack::Choice>]| -> Result<knapsack::Solution> {
        let mut room = budget.saturating_sub(fixed_counted).max(floor);
        let mut rounds = 0;
        loop {
            let solution = match knapsack::solve(items, room) {
                Ok(x) => x,
                Err(KnapsackError::TooSmall { .. }) => {
                    return Err(too_small(&target_text, budget, min_bytes, kept, what));
                }
                Err(e) => bail!("choosing types: {e}"),
            };
            let real = exact(&solution.picks)?;
            if real <= budget {
                return Ok(solution);
            }
            rounds += 1;
            if room == floor || rounds > 64 {
                // At the floor the knapsack may still pick options of the smallest estimated
                // sizes whose exact files are larger (headers): the smallest build, which fits
                // (`min_bytes` ≤ budget, checked above), is the answer then.
                return Ok(knapsack::Solution::of(items, smallest.clone(), solution.unit));
            }
            room = room.saturating_sub((real - budget).max(1)).max(floor);
        }
    };
    let first = fit(&items)?;
    // With calibration tokens: whole builds measured in context, the uniform build as the guard.
    let (picks, whole_builds) = match (s.calibration, uniform_base(s, &types, &exact, budget)?) {
        (Some(cal), Some((base_ty, base))) if calibrated.is_some() => {
            let mut judge = Judge::new(cal)?;
            let mut cache: HashMap<(usize, usize), Arc<Vec<u8>>> = HashMap::new();
            let measure = |picks: &[usize]| -> Result<f64> {
                let mut tensors = Vec::with_capacity(picks.len());
                for (k, &p) in picks.iter().enumerate() {
                    let recipe = &recipes[budgeted[k].0];
                    let bytes = match cache.get(&(k, p)) {
                        Some(b) => Arc::clone(b),
                        None => {
                            let Some((b, _)) = decode_whole(recipe, types[k][p])? else {
                                bail!("{}: {} cannot hold its values", budgeted[k].1.module, types[k][p]);
                            };
                            let b = Arc::new(b);
                            cache.insert((k, p), Arc::clone(&b));
                            b
                        }
                    };
                    tensors.push((recipe.spec.name.clone(), GgmlType::F32, bytes));
                }
                // Only the base's and the latest build's decoded tensors are kept.
                cache.retain(|&(k, p), _| p == base[k] || picks[k] == p);
                judge.kl(&tensors)
            };
            let size = |picks: &[usize]| -> Result<(u64, bool)> {
                let b = exact(picks)?;
                Ok((b, b <= budget))
            };
            let (picks, log) = in_context::refine(
                &items,
                &base,
                &format!("uniform {}", short(base_ty)),
                first.picks.clone(),
                |scores| Ok(fit(scores)?.picks),
                size,
                measure,
            )?;
            if !s.quiet {
                eprintln!("note: MLX budget: wrote {}", log.summary());
            }
            (picks, Some(log))
        }
        (Some(_), None) if calibrated.is_some() => {
            if !s.quiet {
                eprintln!(
                    "note: MLX budget: no uniform build of the candidate types fits the budget (or one is not a \
                     candidate of every module), so no whole builds were measured: the knapsack's choice is \
                     written without the uniform build's guard"
                );
            }
            (first.picks.clone(), None)
        }
        _ => (first.picks.clone(), None),
    };
    let solution = knapsack::Solution::of(&items, picks, first.unit);

    let mut decisions = Vec::with_capacity(budgeted.len());
    let mut chosen = Vec::with_capacity(budgeted.len());
    let mut mix_error = Some(0.0);
    for (k, (_, m)) in budgeted.iter().enumerate() {
        let pick = solution.picks[k];
        let ty = types[k][pick];
        let why = explain(&types[k], &items[k], pick, calibrated.as_ref().map(|(c, _)| &c[k]));
        mix_error = match (mix_error, types[k].iter().position(|&t| t == s.ty)) {
            (Some(acc), Some(p)) => Some(acc + items[k][p].error),
            _ => None,
        };
        chosen.push((m.module.clone(), ty));
        decisions.push(TensorDecision {
            name: m.module.clone(),
            ty,
            error: items[k][pick].error,
            bytes: data_bytes(&outputs(&m.name, &m.module, &m.shape, ty)),
            candidates: types[k].iter().zip(&items[k]).map(|(&t, c)| (t, c.bytes, c.error)).collect(),
            sensitivity: calibrated.as_ref().map(|(c, _)| c[k].clone()),
            why,
        });
    }
    let global = match s.target {
        Target::Mix => s.ty,
        _ => dominant_affine(&decisions).unwrap_or(s.ty),
    };
    let (method, error_measure) = method_and_error(s.imatrix.is_some(), calibrated.is_some());
    let log = OptimizeLog {
        target: target_text,
        method: method.into(),
        error_measure: format!("{error_measure} (MLX's own quantize → dequantize)"),
        budget_bytes: budget,
        min_bytes,
        file_bytes: 0,
        unit: solution.unit,
        total_error: solution.error,
        mix_error: if s.target == Target::Mix { mix_error } else { None },
        tensors: decisions,
        calibration: calibrated.map(|(_, c)| c),
        whole_builds,
    };
    Ok(MlxBudget { chosen, global, log })
}

/// The uniform build [`in_context::refine`] measures against: `--type qN --optimize`'s qN, else
/// the largest affine type at the build's group size whose uniform build fits the budget; and
/// per module its option of that type. `None` when some module lacks that type among its
/// candidates (`--candidate-types`) or no uniform build fits.
fn uniform_base(
    s: &MlxBudgetSettings,
    types: &[Vec<MlxType>],
    exact: &dyn Fn(&[usize]) -> Result<u64>,
    budget: u64,
) -> Result<Option<(MlxType, Vec<usize>)>> {
    let of = |t: MlxType| -> Option<Vec<usize>> { types.iter().map(|ts| ts.iter().position(|&x| x == t)).collect() };
    if s.target == Target::Mix {
        return Ok(of(s.ty).map(|p| (s.ty, p)));
    }
    let group = s.ty.group().unwrap_or(64);
    for &bits in AFFINE_BITS.iter().rev() {
        let t = MlxType::Affine { bits, group };
        if let Some(p) = of(t)
            && exact(&p)? <= budget
        {
            return Ok(Some((t, p)));
        }
    }
    Ok(None)
}

/// `q4` for affine 4 bits (the group size is `--group-size`'s).
fn short(ty: MlxType) -> String {
    match ty {
        MlxType::Affine { bits, .. } => format!("q{bits}"),
        other => other.to_string(),
    }
}

/// The affine type holding most of the budgeted bytes.
fn dominant_affine(decisions: &[TensorDecision<MlxType>]) -> Option<MlxType> {
    let mut by: Vec<(MlxType, u64)> = Vec::new();
    for d in decisions.iter().filter(|d| matches!(d.ty, MlxType::Affine { .. })) {
        match by.iter_mut().find(|e| e.0 == d.ty) {
            Some(e) => e.1 += d.bytes,
            None => by.push((d.ty, d.bytes)),
        }
    }
    by.iter().max_by_key(|e| e.1).map(|e| e.0)
}

/// The bytes the written build counts against the budget (`target`): its tensor data for
/// `--target-bpw`, else the bytes of its `model*.safetensors` files. Sets `log.file_bytes`.
///
/// Errors: the build exceeds the budget (an internal error: the budget counts every header entry
/// at its longest), or its layout is impossible.
pub fn check_written(
    log: &mut OptimizeLog<MlxType>,
    items: &[Item],
    target: Target,
    metadata: &[(String, String)],
    shard_max_bytes: u64,
) -> Result<()> {
    let specs: Vec<StTensorSpec> = items.iter().flat_map(|i| i.outputs.iter().cloned()).collect();
    log.file_bytes = if matches!(target, Target::Bpw(_)) {
        data_bytes(&specs)
    } else {
        SafetensorsPlan { metadata: Some(metadata.to_vec()), tensors: specs, style: HeaderStyle::Mlx }
            .files_len(Some(shard_max_bytes))
            .map_err(anyhow::Error::msg)?
    };
    if log.file_bytes > log.budget_bytes {
        bail!(
            "internal error: the MLX build would take {} bytes, more than the budget of {}",
            log.file_bytes,
            log.budget_bytes
        );
    }
    Ok(())
}

/// The `--dry-run` text of an MLX budget build: the log's summary, then per module its type,
/// bytes, error and why.
pub fn to_text(log: &OptimizeLog<MlxType>) -> String {
    let mut out = log.to_text();
    let width = log.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6).max(6);
    out.push_str(&format!("  {:<width$} {:<8} {:>10} {:>10}  why\n", "module", "type", "bytes", "error"));
    for t in &log.tensors {
        out.push_str(&format!(
            "  {:<width$} {:<8} {:>10} {:>10.3e}  {}\n",
            t.name,
            t.ty.to_string(),
            human_bytes(t.bytes),
            t.error,
            t.why
        ));
    }
    let mut by: Vec<(MlxType, u64, usize)> = Vec::new();
    for t in &log.tensors {
        match by.iter_mut().find(|e| e.0 == t.ty) {
            Some(e) => (e.1, e.2) = (e.1 + t.bytes, e.2 + 1),
            None => by.push((t.ty, t.bytes, 1)),
        }
    }
    by.sort_by_key(|e| std::cmp::Reverse(e.1));
    let summary: Vec<String> = by.iter().map(|(t, b, n)| format!("{t}: {n} modules, {}", human_bytes(*b))).collect();
    out.push_str(&format!("  chosen: {}\n", summary.join("; ")));
    out
}

/// The JSON of `--json` / `--report` for an MLX budget build: `{"format": "mlx", "optimize": …}`
/// with the log as for GGUF (types named as `--quant-override` takes them, `q4:64`).
pub fn to_json(log: &OptimizeLog<MlxType>, quantization: Option<&Json>) -> Json {
    json!({"format": "mlx", "quantization": quantization, "optimize": log.to_json()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_every_width_mxfp4_and_the_float_type() {
        let c = candidates(MlxType::Affine { bits: 4, group: 32 }, 576, GgmlType::BF16);
        assert_eq!(c.len(), 8);
        assert!(c.contains(&MlxType::Affine { bits: 3, group: 32 }) && c.contains(&MlxType::Mxfp4));
        assert_eq!(c.last(), Some(&MlxType::Float(GgmlType::BF16)));
        let odd = candidates(MlxType::Affine { bits: 4, group: 64 }, 64 * 3 + 16, GgmlType::F16);
        assert!(!odd.contains(&MlxType::Mxfp4));
        let spec = StTensorSpec {
            name: "model.layers.0.mlp.down_proj.weight".into(),
            dtype: moeq_formats::safetensors::Dtype::U32,
            shape: vec![576, 54],
        };
        let real =
            SafetensorsPlan { metadata: None, tensors: vec![spec.clone(), spec.clone()], style: HeaderStyle::Mlx };
        // The estimate (offsets `0` and the size) is at most the real entries' bytes and short
        // of them only by the offsets' digits (the second name differs only to be legal).
        let mut two = real.clone();
        two.tensors[1].name.push('x');
        let exact = two.layout().unwrap().header.len() as u64 - 10;
        let estimate = header_estimate(&two.tensors);
        assert!(estimate <= exact + 1 && exact + 1 - estimate <= 2 * 20, "{estimate} {exact}");
    }
}
