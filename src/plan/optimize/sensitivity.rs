//! KL calibration of the error scale: how much next-token KL divergence each tensor's
//! quantization error costs, measured with moeq's own forward on calibration tokens.
//!
//! The weight error `relerr(t, T)` of [`super::measure`] says how much noise a type adds to a
//! tensor's output, relative to that output; it does not say how much that noise matters to
//! the model's predictions (the tied token embedding/output of a small model matters ten times
//! more than one layer's matrix). So each tensor `t` is *probed*: quantized alone to a probe
//! type ([`probe_type`]: Q4_K for rows that are multiples of 256, else IQ4_NL, else BF16), its
//! dequantized values substituted in the source model ([`Weights::replaced`]), and the mean
//! next-token KL divergence `KL_t` against the unmodified model measured over every
//! calibration position. Its scale is `s_t = KL_t / relerr_t(probe)`, and the knapsack scores
//! `s_t · relerr(t, T)`: KL grows about quadratically with a small perturbation, as the
//! squared relative error does, and the KL of independent small perturbations adds about
//! linearly, so the summed score predicts the whole file's KL.
//!
//! **Guard.** A tensor whose KL is not measurable (the probe type cannot hold its values, or
//! the source model has no tensor of that name) or is 0, or whose probe error is 0, gets the
//! smallest scale measured on any other tensor (1 when there is none): never treated as free.
//!
//! **Cost and bounds.** One forward of the source on the calibration tokens (the reference),
//! then one partial forward per probed tensor: the layers before the tensor's layer are not
//! run again (their outputs are the reference's, bit for bit: only later layers see the
//! change), the token embedding reruns everything, `output.weight` only the head. Memory: the
//! residual stream entering every layer, `(layers + 1) · tokens · hidden` f32 values; the
//! reference distributions only as their [`TOP_K`] most likely tokens per position plus the
//! rest's mass (`tokens · (TOP_K + 1) · 12` bytes), the logits computed [`HEAD_ROWS`]
//! positions at a time; one substituted tensor at a time (its bytes at the probe type, decoded as the forward reads them). The KL measured is
//! that of the distributions coarsened to the reference's top [`TOP_K`] tokens and one "rest"
//! bucket: a lower bound of the full KL (data processing), equal to it up to the mass outside
//! the top tokens. Layers run in groups of whole chunks as `moeq imatrix` runs them, each
//! projection on every core (rayon).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;
use rayon::prelude::*;

use super::measure::encode_whole;
use crate::forward::Model;
use crate::forward::ops::rmsnorm;
use crate::model::weights::Weights;
use crate::plan::recipe::Recipe;
use crate::write::progress::steps_bar;

/// Reference tokens kept per position (the rest is one bucket).
pub const TOP_K: usize = 256;

/// Positions whose logits are computed at once.
pub const HEAD_ROWS: usize = 64;

/// Calibration input of the KL-calibrated optimizer: the source model and the token chunks.
pub struct Calibration<'w, 'a> {
    /// The source model, as the forward reads it.
    pub weights: &'w Weights<'a>,
    /// Independent sequences of token ids (each attended within itself).
    pub chunks: Vec<Vec<u32>>,
    /// Where the tokens come from, for the log.
    pub what: String,
}

/// One tensor's measured sensitivity.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    /// The type it was probed at.
    pub probe: GgmlType,
    /// Mean next-token KL (nats) with only this tensor at the probe type; `None`: not
    /// measurable (see the module's guard).
    pub kl: Option<f64>,
    /// The tensor's relative (importance-weighted) error at the probe type, over all rows.
    pub probe_error: f64,
    /// `kl / probe_error`, or the floor.
    pub scale: f64,
    /// Whether `scale` is the floor (KL 0 or not measurable, or no probe error).
    pub floored: bool,
}

/// What the calibration cost, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationSummary {
    /// The calibration input.
    pub what: String,
    /// Chunks and tokens used.
    pub chunks: usize,
    /// Tokens (= positions whose KL is averaged).
    pub tokens: usize,
    /// Reference tokens kept per position.
    pub top_k: usize,
    /// Wall-clock seconds of the reference and the probes.
    pub seconds: f64,
}

/// The probe type of a tensor with rows of `ne0` values: Q4_K (4.5 bits per weight) when the
/// rows are multiples of 256, else IQ4_NL (4.5 bits, blocks of 32), else BF16.
pub fn probe_type(ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(256) {
        GgmlType::Q4_K
    } else if ne0.is_multiple_of(32) {
        GgmlType::IQ4_NL
    } else {
        GgmlType::BF16
    }
}

/// Where a change of tensor `name` starts to matter in a model of `n_layer` layers: the layer
/// index (`n_layer`: only the head), or `None` for the embedding (everything reruns).
fn start_layer(name: &str, n_layer: usize, head: &str) -> Option<usize> {
    if name == head && name != "token_embd.weight" {
        return Some(n_layer);
    }
    let l: usize = name.strip_prefix("blk.")?.split('.').next()?.parse().ok()?;
    (l < n_layer).then_some(l)
}

/// A position's reference distribution: its top tokens' log-probabilities and the rest's mass.
struct Top {
    ids: Vec<u32>,
    logp: Vec<f64>,
    rest: f64,
}

/// The log-probabilities of tokens `ids` in the softmax of `row`, and the probability of all
/// others (both computed the same way for the reference and a probe, so an unchanged row
/// gives KL 0 exactly).
fn coarse(row: &[f32], ids: &[u32]) -> (Vec<f64>, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = sum.ln() + max;
    let logp: Vec<f64> = ids.iter().map(|&i| row[i as usize] as f64 - lse).collect();
    let top: f64 = ids.iter().map(|&i| (row[i as usize] as f64 - max).exp()).sum();
    (logp, ((sum - top) / sum).max(0.0))
}

/// The reference distribution of one logit row.
fn top_of(row: &[f32]) -> Top {
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    let k = TOP_K.min(ids.len());
    let order = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    let (logp, rest) = coarse(row, &ids);
    Top { ids, logp, rest }
}

/// KL(reference ‖ row) over the reference's top tokens and the rest bucket (nats, ≥ 0).
fn kl_coarse(top: &Top, row: &[f32]) -> f64 {
    let (logq, rest_q) = coarse(row, &top.ids);
    let mut kl: f64 = top.logp.iter().zip(&logq).map(|(&p, &q)| p.exp() * (p - q)).sum();
    if top.rest > 0.0 {
        kl += top.rest * (top.rest.ln() - rest_q.max(f64::MIN_POSITIVE).ln());
    }
    kl.max(0.0)
}

/// Runs layers of a model over all calibration tokens, group of chunks by group of chunks.
struct Runner {
    tokens: Vec<u32>,
    /// (first row, rows, row where each row's chunk starts, relative to the group).
    groups: Vec<crate::imatrix::ChunkGroup>,
}

impl Runner {
    fn new(m: &Model, chunks: &[Vec<u32>]) -> Runner {
        Runner { tokens: chunks.iter().flatten().copied().collect(), groups: crate::imatrix::chunk_groups(m, chunks) }
    }

    /// Layer `l` of `m` on the residual stream `x` [tokens, hidden], in place.
    fn layer(&self, m: &Model, l: usize, x: &mut [f32]) -> Result<()> {
        let h = m.cfg.n_embd;
        for (first, len, starts) in &self.groups {
            m.layer(l, &mut x[first * h..(first + len) * h], starts).with_context(|| format!("layer {l}"))?;
        }
        Ok(())
    }

    /// The logits of the final residual `x`, [`HEAD_ROWS`] positions at a time, each slice
    /// handed to `each` with its first position.
    fn head(&self, m: &Model, x: &[f32], mut each: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let h = m.cfg.n_embd.max(1);
        let norm = m.t("output_norm.weight")?;
        let head = m.head_weight().trim_end_matches(".weight");
        for (k, xs) in x.chunks(HEAD_ROWS * h).enumerate() {
            let logits = m.linear(&rmsnorm(xs, &norm, m.cfg.rms_eps), head, false)?;
            each(k * HEAD_ROWS, &logits)?;
        }
        Ok(())
    }
}

/// The reference run: the residual stream entering each layer (and after the last), and each
/// position's top tokens.
struct Reference {
    hidden: Vec<Vec<f32>>,
    top: Vec<Top>,
}

fn reference(m: &Model, run: &Runner) -> Result<Reference> {
    let mut x = m.embed(&run.tokens)?;
    let mut hidden = Vec::with_capacity(m.cfg.n_layer + 1);
    for l in 0..m.cfg.n_layer {
        hidden.push(x.clone());
        run.layer(m, l, &mut x)?;
    }
    let vocab = m.w.ne(m.head_weight())?.get(1).copied().unwrap_or(1).max(1) as usize;
    let mut top = Vec::with_capacity(run.tokens.len());
    run.head(m, &x, |_, logits| {
        top.par_extend(logits.par_chunks_exact(vocab).map(top_of));
        Ok(())
    })?;
    hidden.push(x);
    Ok(Reference { hidden, top })
}

/// The mean coarse KL of model `m` (the source with one tensor replaced) against the
/// reference, running from `start` (see [`start_layer`]).
fn probe_kl(m: &Model, run: &Runner, r: &Reference, start: Option<usize>) -> Result<f64> {
    let (mut x, from) = match start {
        Some(l) => (r.hidden[l].clone(), l),
        None => (m.embed(&run.tokens)?, 0),
    };
    for l in from..m.cfg.n_layer {
        run.layer(m, l, &mut x)?;
    }
    let vocab = m.w.ne(m.head_weight())?.get(1).copied().unwrap_or(1).max(1) as usize;
    let mut sum = 0.0;
    run.head(m, &x, |first, logits| {
        let kls: Vec<f64> = logits
            .par_chunks_exact(vocab)
            .enumerate()
            .map(|(i, row)| r.top.get(first + i).map_or(0.0, |t| kl_coarse(t, row)))
            .collect();
        sum += kls.iter().sum::<f64>();
        Ok(())
    })?;
    Ok(sum / r.top.len().max(1) as f64)
}

/// Measures every tensor's sensitivity (see the module): `tensors[i]` is tensor `i`'s recipe
/// (its values as the writer reads them, importance weights attached where it has them).
/// Returns one [`Sensitivity`] per tensor, in order, and what the calibration took.
///
/// Errors: the calibration is empty or holds a token outside the vocabulary, the source model
/// cannot run (hyperparameters, tensors), reading or quantizing a tensor fails.
pub fn sensitivities(
    cal: &Calibration,
    tensors: &[&Recipe],
    quiet: bool,
) -> Result<(Vec<Sensitivity>, CalibrationSummary)> {
    let began = Instant::now();
    if cal.chunks.iter().all(Vec::is_empty) {
        bail!("{}: no calibration tokens", cal.what);
    }
    let base = Model::new(cal.weights).context("the source model cannot run for KL calibration")?;
    let model = Model { probe: None, keep_expert_out: false, ..base };
    // Empty lines of a token file hold no positions.
    let chunks: Vec<Vec<u32>> = cal.chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
    let run = Runner::new(&model, &chunks);
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { steps_bar(tensors.len() as u64 + 1, "KL") };
    bar.set_message("reference");
    let reference = reference(&model, &run).with_context(|| format!("the source model on {}", cal.what))?;
    bar.inc(1);
    let (n_layer, head) = (model.cfg.n_layer, model.head_weight());
    let mut out = Vec::with_capacity(tensors.len());
    for recipe in tensors {
        let name = &recipe.spec.name;
        bar.set_message(name.clone());
        let probe = probe_type(recipe.row_len());
        let measured = if cal.weights.has(name) { encode_whole(recipe, probe)? } else { None };
        let (kl, probe_error) = match measured {
            Some((bytes, m)) => {
                let w = cal.weights.replaced(name, probe, Arc::new(bytes))?;
                let changed =
                    Model { w: &w, cfg: model.cfg.clone(), blocks: model.blocks, probe: None, keep_expert_out: false };
                let kl = probe_kl(&changed, &run, &reference, start_layer(name, n_layer, head))
                    .with_context(|| format!("the source model with '{name}' at {probe}"))?;
                (Some(kl).filter(|k| k.is_finite()), m.relative())
            }
            None => (None, f64::NAN),
        };
        out.push(Sensitivity { probe, kl, probe_error, scale: 0.0, floored: true });
        bar.inc(1);
    }
    bar.finish_and_clear();
    apply_floor(&mut out);
    let summary = CalibrationSummary {
        what: cal.what.clone(),
        chunks: chunks.len(),
        tokens: run.tokens.len(),
        top_k: TOP_K,
        seconds: began.elapsed().as_secs_f64(),
    };
    Ok((out, summary))
}

/// Sets every scale: `kl / probe_error` where both are positive and finite, else the smallest
/// such scale among the others (1 when there is none).
fn apply_floor(s: &mut [Sensitivity]) {
    let measured = |x: &Sensitivity| match x.kl {
        Some(kl) if kl > 0.0 && x.probe_error > 0.0 && x.probe_error.is_finite() => {
            Some(kl / x.probe_error).filter(|v| v.is_finite() && *v > 0.0)
        }
        _ => None,
    };
    let floor = s.iter().filter_map(measured).fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    for x in s.iter_mut() {
        match measured(x) {
            Some(v) => (x.scale, x.floored) = (v, false),
            None => (x.scale, x.floored) = (floor, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_kl_is_zero_for_the_same_row_and_grows_with_the_change() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 10.0).collect();
        let top = top_of(&row);
        assert_eq!(top.ids.len(), TOP_K);
        assert_eq!(kl_coarse(&top, &row), 0.0);
        let near: Vec<f32> = row.iter().enumerate().map(|(i, &v)| v + 0.01 * (i % 7) as f32).collect();
        let far: Vec<f32> = row.iter().enumerate().map(|(i, &v)| v + 0.1 * (i % 7) as f32).collect();
        let (a, b) = (kl_coarse(&top, &near), kl_coarse(&top, &far));
        assert!(a > 0.0 && b > 10.0 * a, "{a} {b}");
    }

    #[test]
    fn floor_replaces_what_was_not_measured() {
        let s = |kl: Option<f64>, e: f64| Sensitivity {
            probe: GgmlType::Q4_K,
            kl,
            probe_error: e,
            scale: 0.0,
            floored: true,
        };
        let mut v = vec![s(Some(2.0), 1.0), s(Some(0.5), 1.0), s(Some(0.0), 1.0), s(None, f64::NAN), s(Some(1.0), 0.0)];
        apply_floor(&mut v);
        let scales: Vec<f64> = v.iter().map(|x| x.scale).collect();
        assert_eq!(scales, vec![2.0, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(v.iter().filter(|x| x.floored).count(), 3);
        let mut none = vec![s(None, 1.0)];
        apply_floor(&mut none);
        assert_eq!(none[0].scale, 1.0);
    }

    #[test]
    fn layers_are_found_by_name() {
        assert_eq!(start_layer("blk.3.attn_q.weight", 4, "token_embd.weight"), Some(3));
        assert_eq!(start_layer("blk.9.attn_q.weight", 4, "token_embd.weight"), None);
        assert_eq!(start_layer("output.weight", 4, "output.weight"), Some(4));
        assert_eq!(start_layer("token_embd.weight", 4, "token_embd.weight"), None);
        assert_eq!(probe_type(576), GgmlType::IQ4_NL);
        assert_eq!(probe_type(1536), GgmlType::Q4_K);
        assert_eq!(probe_type(100), GgmlType::BF16);
    }
}
