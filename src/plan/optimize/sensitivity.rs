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
//! **Probes.** Per layer ([`KlProbes::Layer`], the default; [`layer_gain`]): each tensor of a
//! layer reruns only its half of that layer (attention or feed-forward), which gives its change
//! of the layer's output, and the rest of the model runs once per layer on all of them to give
//! the layer's KL per unit change. Per tensor ([`KlProbes::Tensor`], `--kl-probes tensor`):
//! the forward reruns from the tensor's layer to the logits once per tensor, measuring `KL_t`
//! itself (the layers before are not run again: their outputs are the reference's, bit for bit).
//! Either way the token embedding reruns everything and `output.weight` only the head.
//!
//! **Cost and bounds.** One forward of the source on the calibration tokens (the reference),
//! then the probes (per-layer probes during it). Memory: the residual stream entering every
//! layer and, per layer, its groups' inputs to the rest of the model (two, four with `halves`),
//! `(3 · layers + 1) · tokens · hidden` f32 values at most (`(5 · layers + 1) · …`); one layer's recorded projections (per-layer probes;
//! for a Mixtral-8x7B layer on 256 tokens about 110 MB); the
//! reference distributions only as their [`TOP_K`] most likely tokens per position plus the
//! rest's mass (`tokens · (TOP_K + 1) · 12` bytes), the logits computed [`HEAD_ROWS`]
//! positions at a time; one substituted tensor at a time (its bytes at the probe type, decoded
//! as the forward reads them). The KL measured is
//! that of the distributions coarsened to the reference's top [`TOP_K`] tokens and one "rest"
//! bucket: a lower bound of the full KL (data processing), equal to it up to the mass outside
//! the top tokens. Layers run in groups of whole chunks as `moeq imatrix` runs them, each
//! projection on every core (rayon).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;

use super::measure::{encode_rows, encode_whole};
use crate::forward::Model;
use crate::forward::memo::Memo;
use crate::model::weights::Weights;
use crate::plan::recipe::Recipe;
use crate::write::progress::steps_bar;

mod layer_gain;
mod reference;
pub mod whole;

use reference::{Reference, Runner, reference, tail_kl};

/// Reference tokens kept per position (the rest is one bucket).
pub const TOP_K: usize = 256;

/// Tokens drawn per position from outside the reference's top tokens, whose logits estimate the
/// change of the rest's total probability (see [`reference`]).
pub const REST_SAMPLES: usize = 256;

/// Positions whose logits are computed at once (the reference run).
pub const HEAD_ROWS: usize = 64;

/// Calibration input of the KL-calibrated optimizer: the source model and the token chunks.
pub struct Calibration<'w, 'a> {
    /// The source model, as the forward reads it.
    pub weights: &'w Weights<'a>,
    /// Independent sequences of token ids (each attended within itself).
    pub chunks: Vec<Vec<u32>>,
    /// Where the tokens come from, for the log.
    pub what: String,
    /// How tensors are probed.
    pub probes: KlProbes,
    /// Per-layer probes quantize only every fourth row of a tensor with more values
    /// than this ([`SAMPLE_ROWS_ABOVE`] by default, `MOEQ_KL_SAMPLE_ROWS_ABOVE` in the
    /// environment for experiments; see the per-layer probes' module, `layer_gain.rs`).
    pub sample_rows_above: u64,
}

/// Values above which a tensor's per-layer probe is row-sampled: 2²⁶ (67 M), which only
/// stacked experts of large models exceed (a Mixtral-8x7B layer's gate: 470 M).
pub const SAMPLE_ROWS_ABOVE: u64 = 1 << 26;

/// How the KL-calibrated optimizer probes tensors (`--kl-probes`; see the module).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KlProbes {
    /// Each tensor's change of its own layer's output, and one run of the rest of the model
    /// per layer ([`layer_gain`]).
    #[default]
    Layer,
    /// One run from the tensor's layer to the logits per tensor: its KL itself.
    Tensor,
    /// As [`KlProbes::Layer`] with four groups per layer instead of two: each half's (attention,
    /// feed-forward) writers and inner tensors apart — closer to the per-tensor probes, for one
    /// more run of the rest of the model per layer half with probed tensors.
    Halves,
}

impl KlProbes {
    /// The option's value: `layer` or `tensor`.
    pub fn name(self) -> &'static str {
        match self {
            KlProbes::Layer => "layer",
            KlProbes::Tensor => "tensor",
            KlProbes::Halves => "halves",
        }
    }
}

/// How a per-layer probe predicted a tensor's KL (`kl = gain · residual_error`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerGain {
    /// The tensor's layer.
    pub layer: usize,
    /// Mean over positions of the squared change of the layer's output (residual stream)
    /// with only this tensor at the probe type; for an attention tensor its change after the
    /// attention half times the layer's feed-forward amplification.
    pub residual_error: f64,
    /// The share of the tensor's rows the probe quantized (1, or 1/4 for a huge tensor:
    /// `residual_error` is then the sampled rows' change divided by it).
    pub rows_probed: f64,
    /// The layer's KL (nats) per unit of `residual_error`, from one run of the later layers
    /// and the head on the layer's combined change.
    pub gain: f64,
}

/// One tensor's measured sensitivity.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    /// The type it was probed at.
    pub probe: GgmlType,
    /// Mean next-token KL (nats) with only this tensor at the probe type (measured, or
    /// predicted from its layer's gain when `via` is set); `None`: not measurable (see the
    /// module's guard).
    pub kl: Option<f64>,
    /// The tensor's relative (importance-weighted) error at the probe type, over all rows.
    pub probe_error: f64,
    /// `kl / probe_error`, or the floor.
    pub scale: f64,
    /// Whether `scale` is the floor (KL 0 or not measurable, or no probe error).
    pub floored: bool,
    /// How `kl` was predicted by a per-layer probe; `None`: measured directly (or not at all).
    pub via: Option<LayerGain>,
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
    /// How tensors were probed.
    pub probes: KlProbes,
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

/// The source model with tensor `recipe` replaced by its quantization to `probe`, and that
/// quantization's relative (importance-weighted) error over all rows; `None` when it cannot
/// be measured (the source model has no such tensor, or the probe type cannot hold it).
fn probed<'a>(cal: &Calibration<'_, 'a>, recipe: &Recipe, probe: GgmlType) -> Result<Option<(Weights<'a>, f64)>> {
    let name = &recipe.spec.name;
    if !cal.weights.has(name) {
        return Ok(None);
    }
    let Some((bytes, m)) = encode_whole(recipe, probe)? else { return Ok(None) };
    Ok(Some((cal.weights.replaced(name, probe, Arc::new(bytes))?, m.relative())))
}

/// [`probed`] with only rows `rows` of the tensor quantized (the rest the source's): for the
/// token embedding and the head, of which the forward reads only the calibration tokens' rows
/// and the head rows the KL reads. The relative error is sampled over the whole tensor.
fn probed_rows<'a>(
    cal: &Calibration<'_, 'a>,
    recipe: &Recipe,
    probe: GgmlType,
    rows: Vec<u64>,
) -> Result<Option<(Weights<'a>, f64)>> {
    let name = &recipe.spec.name;
    if !cal.weights.has(name) {
        return Ok(None);
    }
    let Some((bytes, m)) = encode_rows(recipe, probe, &rows)? else { return Ok(None) };
    Ok(Some((cal.weights.replaced_rows(name, probe, Arc::new(bytes), Arc::new(rows))?, m.relative())))
}

/// `model` reading weights `w` (one tensor replaced), without probe or kept expert outputs.
fn with_weights<'w, 'a>(model: &Model<'_, 'a>, w: &'w Weights<'a>) -> Model<'w, 'a> {
    Model {
        w,
        cfg: model.cfg.clone(),
        blocks: model.blocks,
        probe: None,
        keep_expert_out: false,
        memo: model.memo.clone(),
    }
}

/// One tensor probed directly: the forward from `start` (see [`start_layer`]) to the logits.
fn direct(
    cal: &Calibration,
    model: &Model,
    run: &Runner,
    r: &Reference,
    recipe: &Recipe,
    start: Option<usize>,
) -> Result<Sensitivity> {
    let name = &recipe.spec.name;
    let probe = probe_type(recipe.row_len());
    // The forward reads only these rows of the embedding and the head.
    let (is_embedding, is_head) = (name == "token_embd.weight", name == model.head_weight());
    let measured = if is_embedding || is_head {
        let mut rows: Vec<u64> = Vec::new();
        if is_embedding {
            rows.extend(run.tokens.iter().map(|&t| t as u64));
        }
        if is_head {
            rows.extend(r.index.rows_read());
        }
        rows.sort_unstable();
        rows.dedup();
        probed_rows(cal, recipe, probe, rows)?
    } else {
        probed(cal, recipe, probe)?
    };
    let (kl, probe_error) = match measured {
        Some((w, probe_error)) => {
            let changed = with_weights(model, &w);
            let (x, from) = match start {
                Some(l) => (r.hidden[l].clone(), l),
                None => (changed.embed(&run.tokens)?, 0),
            };
            let kl = tail_kl(&changed, run, r, x, from)
                .with_context(|| format!("the source model with '{name}' at {probe}"))?;
            (Some(kl).filter(|k| k.is_finite()), probe_error)
        }
        None => (None, f64::NAN),
    };
    Ok(Sensitivity { probe, kl, probe_error, scale: 0.0, floored: true, via: None })
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
    let memo = (cal.probes != KlProbes::Tensor).then(|| Arc::new(Memo::default()));
    let model = Model { probe: None, keep_expert_out: false, memo, ..base };
    // Empty lines of a token file hold no positions.
    let chunks: Vec<Vec<u32>> = cal.chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
    let run = Runner::new(&model, &chunks);
    let (n_layer, head) = (model.cfg.n_layer, model.head_weight());
    let starts: Vec<Option<usize>> = tensors.iter().map(|r| start_layer(&r.spec.name, n_layer, head)).collect();
    let per_layer = cal.probes != KlProbes::Tensor;
    let layers: Vec<usize> = if per_layer {
        let mut l: Vec<usize> = starts.iter().filter_map(|s| s.filter(|&l| l < n_layer)).collect();
        l.sort_unstable();
        l.dedup();
        l
    } else {
        Vec::new()
    };
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        steps_bar(tensors.len() as u64 + 1 + layers.len() as u64, "KL")
    };
    bar.set_message("reference");
    // The per-layer probes run as the reference run reaches their layer (see `layer_gain`).
    let mut measured: Vec<layer_gain::LayerProbes> = Vec::with_capacity(layers.len());
    let tick = |name: &str| {
        bar.set_message(name.to_string());
        bar.inc(1);
    };
    let mut each = |l: usize, streams: (&[f32], &[f32], &[f32])| -> Result<()> {
        let members: Vec<(usize, &Recipe)> =
            (0..tensors.len()).filter(|&i| starts[i] == Some(l)).map(|i| (i, tensors[i])).collect();
        measured.push(layer_gain::probe_layer(cal, &model, &run, l, streams, &members, &tick)?);
        bar.set_message("reference");
        Ok(())
    };
    let reference =
        reference(&model, &run, &layers, &mut each).with_context(|| format!("the source model on {}", cal.what))?;
    bar.inc(1);
    let mut out: Vec<Option<Sensitivity>> = vec![None; tensors.len()];
    for probes in measured {
        for (i, s) in layer_gain::layer_sensitivities(&model, &run, &reference, probes)? {
            out[i] = Some(s);
        }
        bar.inc(1);
    }
    for (i, recipe) in tensors.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        bar.set_message(recipe.spec.name.clone());
        out[i] = Some(direct(cal, &model, &run, &reference, recipe, starts[i])?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut out: Vec<Sensitivity> = out.into_iter().flatten().collect();
    apply_floor(&mut out);
    let summary = CalibrationSummary {
        what: cal.what.clone(),
        chunks: chunks.len(),
        tokens: run.tokens.len(),
        top_k: TOP_K,
        probes: cal.probes,
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
    use super::reference::{kl_coarse, top_of};
    use super::*;

    #[test]
    fn coarse_kl_is_zero_for_the_same_row_and_grows_with_the_change() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) / 10.0).collect();
        let gather = |r: &[f32], ids: &[u32]| -> Vec<f32> { ids.iter().map(|&i| r[i as usize]).collect() };
        let (top, ids) = top_of(&row, 3, |ids| Ok(gather(&row, ids))).unwrap();
        assert_eq!(top.len(), TOP_K);
        let kl = |changed: &[f32]| {
            let z = gather(changed, &ids);
            kl_coarse(&top, &z)
        };
        assert_eq!(kl(&row), 0.0);
        let near: Vec<f32> = row.iter().enumerate().map(|(i, &v)| v + 0.01 * (i % 7) as f32).collect();
        let far: Vec<f32> = row.iter().enumerate().map(|(i, &v)| v + 0.1 * (i % 7) as f32).collect();
        let (a, b) = (kl(&near), kl(&far));
        assert!(a > 0.0 && b > 10.0 * a, "{a} {b}");
        // The sampled rest estimates the exact coarse KL (the full softmax over the top tokens
        // and one rest bucket) closely.
        let exact = |changed: &[f32]| -> f64 {
            let lse = |r: &[f32]| -> f64 {
                let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                m + r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
            };
            let ids = &ids[..TOP_K];
            let (lp, lq) = (lse(&row), lse(changed));
            let p: Vec<f64> = ids.iter().map(|&i| row[i as usize] as f64 - lp).collect();
            let q: Vec<f64> = ids.iter().map(|&i| changed[i as usize] as f64 - lq).collect();
            let (pr, qr) = (1.0 - p.iter().map(|v| v.exp()).sum::<f64>(), 1.0 - q.iter().map(|v| v.exp()).sum::<f64>());
            p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum::<f64>() + pr * (pr.ln() - qr.ln())
        };
        for changed in [&near, &far] {
            let (est, want) = (kl(changed), exact(changed));
            assert!((est - want).abs() <= 0.02 * want, "{est} {want}");
        }
    }

    #[test]
    fn floor_replaces_what_was_not_measured() {
        let s = |kl: Option<f64>, e: f64| Sensitivity {
            probe: GgmlType::Q4_K,
            kl,
            probe_error: e,
            scale: 0.0,
            floored: true,
            via: None,
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
