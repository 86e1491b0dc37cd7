//! Per-layer KL probes (`--kl-probes layer`, the default): each tensor's effect measured on its
//! own layer's output, and a run of the rest of the model per layer and group of tensors to
//! turn that into KL.
//!
//! For the tensors of layer `l`, each quantized alone to its probe type:
//! - a feed-forward tensor (`blk.l.ffn_*`: router, experts, shared experts, dense MLP) reruns
//!   only the layer's feed-forward half, from the reference's residual stream after the
//!   attention half; its change `δ_t` of the layer's output and `E_t = mean‖δ_t‖²` are kept;
//! - any other tensor of the layer (attention) reruns only the attention half; its change
//!   `α_t` after that half and `mean‖α_t‖²` are kept.
//!
//! The tensors fall in two groups whose changes point in different kinds of directions: the
//! *writers* (`attn_output`, `ffn_down*`), whose rounding noise is added to the residual
//! stream as it is, and the *inner* tensors (queries, keys, values, gates, ups, routers),
//! whose noise reaches the residual stream through a writer, in the subspace the model uses.
//! Per unit of squared change, the model's predictions are several times more sensitive to
//! the second (measured on the trained MoE fixture: one gain for both mispredicts writers by
//! ×2–6). So per group: the attention tensors' changes together, `A = Σ α_t`, run once through
//! the unchanged feed-forward half, which gives their change of the layer's output `δ_A` and the
//! group's amplification `r = mean‖δ_A‖² / mean‖A‖²` (an attention tensor's `E_t =
//! r · mean‖α_t‖²`); then the rest of the model (the later layers and the head) runs once on
//! the layer's output changed by the whole group, `D = δ_A + Σ_ffn δ_t`, scaled to the size of
//! a typical single change (`c · D` with `c² · mean‖D‖²` the geometric mean of the group's
//! `E_t`: KL is only about quadratic, and MoE routing flips make it less so for larger
//! changes), and the mean next-token KL of that run gives the group's gain `g = KL(c · D) /
//! mean‖c · D‖²`. A tensor's KL is predicted as `g · E_t`: KL is about quadratic in a small
//! change of the residual stream, and the quantization errors of different tensors are
//! independent, so their changes add about orthogonally.
//!
//! **Halves** (`--kl-probes halves`): four groups instead of two — each half's writers and
//! inner tensors apart (the attention half's groups carried through the feed-forward half as
//! above, the feed-forward half's groups as they are). Within a group the gain is a mean, and
//! on the trained MoE the two groups' means sat between their halves' (the experts' downs
//! predicted ×1.9 too high beside `attn_output`, their ups ×1.6 too low beside the queries):
//! with four groups the predictions agree with the per-tensor probes at Spearman 0.98 / 0.93 /
//! 0.88 (log-ratio sd 0.27 / 0.33 / 0.57) against 0.89 / 0.86 / 0.83 (0.49 / 0.49 / 0.70) on
//! 512 / 4096 / 2048 tokens, and the Q2_K-size mix's KLD falls from 0.00665 to 0.00404. The
//! price: one more run of the rest of the model per layer half with probed tensors.
//!
//! **Huge tensors** (more values than [`Calibration::sample_rows_above`], e.g. the stacked
//! experts of a Mixtral-width layer, 470 M values each) are probed on every [`SAMPLE_STEP`]-th
//! row only (the others keep the source's values): quantizing the probe was as much work as the
//! plain conversion's own quantization. Rows' rounding errors are independent, so the change
//! from a fraction `f` of the rows has about `f` times the whole tensor's squared size, and it
//! is scaled by `1/√f`. For a writer, whose rows are residual-stream dimensions, the change then
//! lies in every fourth dimension only — but the whole tensor's change has independent
//! dimensions too (each is one row's error), so to second order the KL it causes is a sum over
//! dimensions, which the sample estimates. Measured on the trained MoE with every expert tensor
//! sampled: the predictions agree with the per-tensor probes as well as unsampled ones do
//! (Spearman 0.90 / 0.87 against 0.89 / 0.83 on 512 / 2048 tokens).
//!
//! **While the reference runs.** A layer's probes run when the reference run has just computed
//! that layer ([`probe_layer`]), with every projection of the reference's layer recorded
//! ([`crate::forward::memo::Memo`]): a probe of the experts' gates reuses the ups as they
//! were and recomputes only the gates' sampled rows and, behind them, a quarter of the downs'
//! multiplications. The groups' runs of the rest of the model need the reference's
//! distributions, so they follow the reference run ([`layer_sensitivities`]); each group's
//! input to them (`tokens · hidden` values) is kept until then.
//!
//! Cost per layer: one attention or feed-forward half per tensor (less what the memo
//! reuses), one feed-forward half more and one run of the later layers and the head per
//! group — where the per-tensor probes (`--kl-probes tensor`) run the later layers and the head once per tensor. The token
//! embedding and the output head are probed directly (they are not in a layer).

use anyhow::{Context, Result};
use moeq_formats::gguf::GgmlType;

use super::reference::{Reference, Runner, add, mean_sq, sub, tail_kl};
use super::{Calibration, KlProbes, LayerGain, Sensitivity, probe_type, probed, probed_rows, with_weights};
use crate::forward::Model;
use crate::plan::recipe::Recipe;

/// A huge tensor's probe quantizes rows `0, SAMPLE_STEP, 2·SAMPLE_STEP, …` only.
pub const SAMPLE_STEP: u64 = 4;

/// Where a tensor of layer `l` acts: its half of the layer, and whether it writes to the
/// residual stream itself.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Place {
    ffn: bool,
    writer: bool,
}

fn place(name: &str, l: usize) -> Place {
    let short = name.strip_prefix(&format!("blk.{l}.")).unwrap_or(name);
    Place { ffn: short.starts_with("ffn_"), writer: short.starts_with("attn_output") || short.starts_with("ffn_down") }
}

/// One tensor's measured change of its layer: `(place, mean squared change, probe error, share
/// of its rows probed)`;
/// `None`: not measurable.
type Change = (usize, GgmlType, Option<(Place, f64, f64, f64)>);

/// What [`probe_layer`] measured of one layer, for [`layer_sensitivities`] once the reference
/// run is complete: each tensor's change, each group's amplification, and each group's input
/// to the rest of the model (the layer's output changed by the group's scaled change) with the
/// mean squared size of that change.
pub(super) struct LayerProbes {
    l: usize,
    changes: Vec<Change>,
    amplification: [Option<f64>; 2],
    tails: [Option<(Vec<f32>, f64)>; 4],
    split: bool,
}

/// Measures the tensors `members` (indices into the caller's list, with their recipes) of
/// layer `l`, given the reference's residual stream entering the layer (`hidden`), after its
/// attention half (`mid`) and after it (`next`): each tensor's change of the layer and, per
/// group, the change the rest of the model runs on ([`layer_sensitivities`] runs it). Called
/// while the reference run is at layer `l`, with the model's [`crate::forward::memo::Memo`]
/// holding the layer's projections (so a probe recomputes only what its tensor changes).
/// `tick` is called before each probe with the tensor's name.
///
/// Errors: a tensor cannot be read or quantized, the model cannot run.
#[allow(clippy::too_many_arguments)]
pub(super) fn probe_layer(
    cal: &Calibration,
    model: &Model,
    run: &Runner,
    l: usize,
    (hidden, mid, next): (&[f32], &[f32], &[f32]),
    members: &[(usize, &Recipe)],
    tick: &dyn Fn(&str),
) -> Result<LayerProbes> {
    let h = model.cfg.n_embd;
    // Per group (inner, writer): the summed attention changes and feed-forward changes.
    let mut sums: [[Option<Vec<f32>>; 2]; 2] = Default::default();
    let mut changes: Vec<Change> = Vec::with_capacity(members.len());
    for &(index, recipe) in members {
        let name = &recipe.spec.name;
        tick(name);
        let probe = probe_type(recipe.row_len());
        let at = place(name, l);
        // A huge tensor is probed on every SAMPLE_STEP-th row (see the module).
        let n_rows = recipe.n_rows();
        let sampled = n_rows >= 2 * SAMPLE_STEP && recipe.row_len() * n_rows > cal.sample_rows_above;
        let measured = if sampled {
            let rows: Vec<u64> = (0..n_rows).step_by(SAMPLE_STEP as usize).collect();
            let fraction = rows.len() as f64 / n_rows as f64;
            probed_rows(cal, recipe, probe, rows)?.map(|(w, e)| (w, e, fraction))
        } else {
            probed(cal, recipe, probe)?.map(|(w, e)| (w, e, 1.0))
        };
        let Some((w, probe_error, fraction)) = measured else {
            changes.push((index, probe, None));
            continue;
        };
        let changed = with_weights(model, &w);
        let what = || format!("the source model with '{name}' at {probe}");
        let mut x = if at.ffn {
            let mut x = mid.to_vec();
            run.ffn(&changed, l, &mut x).with_context(what)?;
            sub(&mut x, next);
            x
        } else {
            let mut x = hidden.to_vec();
            run.attention(&changed, l, &mut x).with_context(what)?;
            sub(&mut x, mid);
            x
        };
        drop(changed);
        drop(w);
        if fraction < 1.0 {
            // The change of the sampled rows, scaled to the whole tensor's expected size.
            let c = (1.0 / fraction).sqrt() as f32;
            x.iter_mut().for_each(|v| *v *= c);
        }
        let e = mean_sq(&x, h);
        let sum = &mut sums[at.writer as usize][at.ffn as usize];
        match sum {
            Some(s) => add(s, &x),
            None => *sum = Some(std::mem::take(&mut x)),
        }
        changes.push((index, probe, Some((at, e, probe_error, fraction))));
    }
    // Per group: the attention half's amplification and the rest of the model's input.
    let split = cal.probes == KlProbes::Halves;
    let mut amplification = [None; 2];
    let mut tails: [Option<(Vec<f32>, f64)>; 4] = Default::default();
    for (writer, [attn_sum, ffn_sum]) in sums.into_iter().enumerate() {
        let mut attn_change = None;
        if let Some(a) = attn_sum {
            let a_e = mean_sq(&a, h);
            let mut x = mid.to_vec();
            add(&mut x, &a);
            drop(a);
            run.ffn(model, l, &mut x).with_context(|| format!("layer {l} with its attention tensors changed"))?;
            sub(&mut x, next);
            let out_e = mean_sq(&x, h);
            amplification[writer] = (a_e > 0.0).then(|| out_e / a_e);
            attn_change = Some(x);
        }
        let parts: Vec<(usize, Option<bool>, Option<Vec<f32>>)> = if split {
            vec![(writer * 2, Some(false), attn_change), (writer * 2 + 1, Some(true), ffn_sum)]
        } else {
            let joint = match (attn_change, ffn_sum) {
                (Some(mut a), Some(f)) => {
                    add(&mut a, &f);
                    Some(a)
                }
                (a, f) => a.or(f),
            };
            vec![(writer * 2, None, joint)]
        };
        for (gi, ffn, residual) in parts {
            let Some(mut residual) = residual else { continue };
            let singles: Vec<f64> = changes
                .iter()
                .filter_map(|(_, _, m)| {
                    m.filter(|(at, ..)| at.writer == (writer == 1) && ffn.is_none_or(|f| f == at.ffn))
                })
                .filter_map(|(at, e, ..)| if at.ffn { Some(e) } else { amplification[writer].map(|a| a * e) })
                .filter(|&e| e > 0.0 && e.is_finite())
                .collect();
            let joint = mean_sq(&residual, h);
            if joint <= 0.0 || singles.is_empty() {
                continue;
            }
            let typical = (singles.iter().map(|e| e.ln()).sum::<f64>() / singles.len() as f64).exp();
            let c = (typical / joint).sqrt() as f32;
            residual.iter_mut().for_each(|v| *v *= c);
            let d_e = mean_sq(&residual, h);
            add(&mut residual, next);
            tails[gi] = Some((residual, d_e));
        }
    }
    Ok(LayerProbes { l, changes, amplification, tails, split })
}

/// The sensitivities of one layer's tensors from what [`probe_layer`] measured (scale not
/// yet set), in its `members`' order: the rest of the model runs once per group on the
/// group's change to give the group's gain.
///
/// Errors: the model cannot run.
pub(super) fn layer_sensitivities(
    model: &Model,
    run: &Runner,
    r: &Reference,
    probes: LayerProbes,
) -> Result<Vec<(usize, Sensitivity)>> {
    let LayerProbes { l, changes, amplification, tails, split } = probes;
    let mut gain = [None; 4];
    for (writer, tail) in tails.into_iter().enumerate() {
        let Some((x, d_e)) = tail else { continue };
        let kl =
            tail_kl(model, run, r, x, l + 1).with_context(|| format!("the layers after layer {l} on its change"))?;
        gain[writer] = Some(kl / d_e).filter(|g| g.is_finite() && d_e > 0.0);
    }
    Ok(changes
        .into_iter()
        .map(|(index, probe, measured)| {
            let (kl, probe_error, via) = match measured {
                None => (None, f64::NAN, None),
                Some((at, e, probe_error, rows_probed)) => {
                    let g = at.writer as usize;
                    let residual_error = if at.ffn { Some(e) } else { amplification[g].map(|a| a * e) };
                    match (residual_error, gain[2 * g + (split && at.ffn) as usize]) {
                        (Some(re), _) if re <= 0.0 => (Some(0.0), probe_error, None),
                        (Some(re), Some(gain)) => (
                            Some(gain * re),
                            probe_error,
                            Some(LayerGain { layer: l, residual_error: re, gain, rows_probed }),
                        ),
                        _ => (None, probe_error, None),
                    }
                }
            };
            (index, Sensitivity { probe, kl, probe_error, scale: 0.0, floored: true, via })
        })
        .collect())
}
