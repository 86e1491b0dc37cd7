//! `moeq verify`'s findings and limits, and the report: a compact table worst first, or JSON.

use crate::model::weights::Storage;
use moeq_formats::gguf::GgmlType;
use serde_json::json;

/// How far an output may be from its source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Largest KL divergence of a next-token distribution (nats).
    pub max_kl: f64,
    /// Smallest share of positions whose most likely token is unchanged.
    pub min_top1: f64,
    /// Largest relative error of an MoE block's output.
    pub max_moe_rel_err: f64,
}

/// Expected relative RMS error of a tensor stored as `ty` (from a wider source), with margin:
/// the bound above which a tensor is reported as wrong rather than merely quantized.
pub(super) fn tensor_bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 1e-6,
        GgmlType::F16 => 2e-3,
        GgmlType::BF16 => 1e-2,
        GgmlType::Q8_0 => 0.03,
        GgmlType::Q6_K => 0.06,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.12,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS | GgmlType::MXFP4 => 0.3,
        // Ternary: made for ternary-trained models; any other model's rows lose most of their
        // energy (0.83 on SmolLM2-135M), though still less than all of it. The expected error
        // (`expected_bound`) is what tells a correct file there.
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => 0.95,
        _ => 0.6,
    }
}

/// How much more error than moeq's round-to-nearest quantizer gives the source's tensor a
/// correct file's tensor may show (importance-weighted and error-minimizing roundings trade
/// some weight error for output error; measured: at most 1.30× with llama.cpp's
/// importance-weighted quantizers, 1.88× with GPTQ rounding — see docs/verify.md).
pub(super) const EXPECTED_FACTOR: f64 = 2.5;

/// The bound of a tensor stored as `ty` whose expected error (see [`TensorCheck::expected`])
/// is `expected`: [`EXPECTED_FACTOR`] times it, but not above the type's fixed bound
/// ([`tensor_bound`]) — or 1.6× the expected error (at most 0.99) where the type cannot hold
/// this model's values within its fixed bound (1- and 2-bit types of heavy-tailed weights,
/// ternary types of a model that is not ternary) — nor below half the fixed bound (a source
/// whose values sit on the output's grid expects no error at all, yet another correct
/// quantizer of the same type need not find that grid: GGUF MXFP4 and MLX mxfp4 builds of one
/// model differ by 0.087).
pub(super) fn expected_bound(ty: GgmlType, expected: Option<f64>) -> f64 {
    let fixed = tensor_bound(ty);
    match expected {
        // Below 0.99 all the same: an all-zero tensor (error 1) is never a correct one.
        Some(e) => (EXPECTED_FACTOR * e).clamp(fixed / 2.0, fixed.max((1.6 * e).min(0.99))),
        None => fixed,
    }
}

impl Limits {
    /// Defaults for an output whose least precise changed tensor type is `worst` (`None`: every
    /// tensor kept its type, so the output must be exact).
    pub fn for_type(worst: Option<GgmlType>) -> Limits {
        // Calibrated on the fixtures' tiny random models (flat next-token distributions make
        // KL and top-1 fragile), with room to spare; real models do far better.
        let (max_kl, min_top1, max_moe_rel_err) = match worst {
            None => (0.0, 1.0, 0.0),
            Some(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => (1e-3, 0.95, 0.02),
            Some(GgmlType::Q8_0) => (0.1, 0.9, 0.05),
            Some(GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K) => (0.1, 0.75, 0.15),
            Some(_) => (0.3, 0.5, 0.4),
        };
        Limits { max_kl, min_top1, max_moe_rel_err }
    }
}

/// Which of the block and whole-model limits fail a check. By default, for a lossy output
/// (quantized, or a float type narrower than the source's values, as BF16 from FP8 with block
/// scales) whose every tensor is within its type's bound and whose forward hyperparameters equal the
/// source's, none does: what remains between the two models is the quantization noise the
/// tensor checks accepted, and how much of it reaches the logits depends on the model (on
/// SmolLM2-135M, MLX 6-bit moves the built-in reference tokens' next-token distributions by up
/// to 0.70 nats). Beyond-limit measures are then reported as notes. `--max-kl`, `--min-top1`
/// and `--max-moe-rel-err` enforce theirs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Enforced {
    pub kl: bool,
    pub top1: bool,
    pub blocks: bool,
}

impl Enforced {
    pub const ALL: Enforced = Enforced { kl: true, top1: true, blocks: true };
    pub const NONE: Enforced = Enforced { kl: false, top1: false, blocks: false };
}

/// One tensor, source against output.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    pub name: String,
    /// The ggml type the source stores the tensor as (for MLX's affine quantization, the ggml
    /// type of about its precision: see `source_storage`).
    pub source_type: GgmlType,
    pub output_type: GgmlType,
    /// How each model stores the tensor (shown as the ggml type's name, `MLX q4/64` or
    /// `MLX mxfp4`).
    pub source_storage: Storage,
    pub output_storage: Storage,
    pub rel_rmse: f64,
    pub cosine: f64,
    pub max_abs: f64,
    pub identical: bool,
    /// The largest error this tensor may have.
    pub bound: f64,
    /// The relative RMS error the source's tensor shows when stored as the output stores it by
    /// moeq's round-to-nearest quantizer (ggml's reference — with equal importance weights for
    /// the types that need them —, MLX's), measured on a sample of its rows; `None` when not
    /// measured (not quantized, identical) or the quantizer refuses the values.
    pub expected: Option<f64>,
}

impl TensorCheck {
    /// Whether the tensor is within its bound.
    pub fn ok(&self) -> bool {
        if self.bound == 0.0 { self.identical } else { self.rel_rmse <= self.bound }
    }
}

/// One MoE (or dense feed-forward) block on the source's own input.
#[derive(Clone, Debug)]
pub struct BlockCheck {
    pub layer: usize,
    pub rel_err: f64,
    pub cosine: f64,
    /// Share of tokens whose selected experts are unchanged.
    pub routing_agreement: f64,
    /// The experts whose outputs moved most: (expert, relative error).
    pub worst_experts: Vec<(usize, f64)>,
}

/// The whole model on the reference tokens.
#[derive(Clone, Debug, Default)]
pub struct ModelCheck {
    pub kl_mean: f64,
    pub kl_max: f64,
    pub top1: f64,
    pub cosine: f64,
    pub positions: usize,
    /// Positions whose output logits (or KL divergence) are not finite: always a failure.
    pub non_finite: usize,
    /// The output model's layers taken from the source run rather than recomputed (their
    /// tensors bit-identical, the hyperparameters equal, their inputs the same bits).
    pub reused_layers: Vec<usize>,
    /// Whether the output's logits were taken from the source run likewise.
    pub reused_head: bool,
    /// The block checks (on the source's hidden states) that took the source's block output,
    /// the block's feed-forward tensors being bit-identical.
    pub reused_blocks: Vec<usize>,
}

/// Everything `moeq verify` measured.
pub struct Report {
    pub source: String,
    pub output: String,
    pub tensors: Vec<TensorCheck>,
    /// Tensors only one side has.
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    /// Tensors both have in different shapes (`tensor 'NAME': shape … in the source, … in the
    /// output`), not compared.
    pub shapes_differ: Vec<String>,
    /// Why the blocks and the whole model were not compared: the two models' layer counts,
    /// widths or vocabularies differ (`blocks` is then empty and `model` unmeasured).
    pub sizes_differ: Option<String>,
    pub blocks: Vec<BlockCheck>,
    pub model: ModelCheck,
    pub limits: Limits,
    /// Which limits fail the check (the others give notes).
    pub enforced: Enforced,
    /// Forward hyperparameters of the output that differ from the source's (`name: source →
    /// output`); empty when they agree.
    pub hparams_differ: Vec<String>,
}

impl Report {
    /// Orders the tensors worst first (error relative to the bound), then by name.
    pub fn sort_tensors(&mut self) {
        self.tensors.sort_by(|a, b| {
            (b.rel_rmse / b.bound.max(1e-12)).total_cmp(&(a.rel_rmse / a.bound.max(1e-12))).then(a.name.cmp(&b.name))
        });
    }

    /// The failed checks, in words.
    pub fn failures(&self) -> Vec<String> {
        self.limit_checks(true)
    }

    /// Block and whole-model measures beyond the default limits that are not enforced (see
    /// [`Enforced`]), in words.
    pub fn notes(&self) -> Vec<String> {
        self.limit_checks(false)
    }

    /// With `enforced`: the failed checks; without: the measures beyond limits not enforced.
    fn limit_checks(&self, enforced: bool) -> Vec<String> {
        let mut f = Vec::new();
        // Models of different sizes: no block or whole-model measure to judge.
        let e = if self.sizes_differ.is_some() { Enforced::NONE } else { self.enforced };
        if !enforced && self.sizes_differ.is_some() {
            return f;
        }
        if !enforced {
            let l = &self.limits;
            if !e.blocks
                && let Some(b) = self.blocks.iter().max_by(|a, b| a.rel_err.total_cmp(&b.rel_err))
                && b.rel_err > l.max_moe_rel_err
            {
                f.push(format!(
                    "layer {}: the feed-forward block's output is off by {:.4} (beyond {} for this type; --max-moe-rel-err \
                     makes that a failure)",
                    b.layer, b.rel_err, l.max_moe_rel_err
                ));
            }
            if !e.kl && self.model.kl_max > l.max_kl {
                f.push(format!(
                    "next-token KL divergence reaches {:.5} (beyond {} for this type; --max-kl makes that a failure)",
                    self.model.kl_max, l.max_kl
                ));
            }
            if !e.top1 && self.model.top1 < l.min_top1 {
                f.push(format!(
                    "top-1 agreement is {:.3} (below {} for this type; --min-top1 makes that a failure)",
                    self.model.top1, l.min_top1
                ));
            }
            return f;
        }
        f.extend(self.sizes_differ.iter().cloned());
        f.extend(self.hparams_differ.iter().map(|d| format!("hyperparameter differs: {d}")));
        if self.model.non_finite > 0 {
            f.push(format!(
                "the output model's next-token distribution is not finite (NaN or infinite logits) at {} of {} \
                 positions",
                self.model.non_finite, self.model.positions
            ));
        }
        for b in self.blocks.iter().filter(|b| !b.rel_err.is_finite()) {
            f.push(format!("layer {}: the feed-forward block's output is not finite", b.layer));
        }
        for t in self.tensors.iter().filter(|t| !t.ok()) {
            f.push(if t.bound == 0.0 {
                format!("tensor '{}' changed (it should be identical: {} in both)", t.name, t.output_storage)
            } else {
                match t.expected {
                    _ if t.rel_rmse.is_infinite() => {
                        format!("tensor '{}' is not zero, but the source's tensor is all zeros", t.name)
                    }
                    Some(0.0) => format!(
                        "tensor '{}' is off by {:.4} relative RMS error, while the source's values are {} values \
                         already (at most {:.4} allowed)",
                        t.name, t.rel_rmse, t.output_storage, t.bound
                    ),
                    Some(e) => format!(
                        "tensor '{}' is off by {:.4} relative RMS error: {:.1}× the {e:.4} that {} rounding of the \
                         source gives (at most {:.4} allowed)",
                        t.name,
                        t.rel_rmse,
                        t.rel_rmse / e,
                        t.output_storage,
                        t.bound
                    ),
                    _ => format!(
                        "tensor '{}' is off by {:.4} relative RMS error (at most {} expected for {})",
                        t.name, t.rel_rmse, t.bound, t.output_storage
                    ),
                }
            });
        }
        f.extend(self.missing.iter().map(|n| format!("tensor '{n}' is missing from the output")));
        f.extend(self.extra.iter().map(|n| format!("tensor '{n}' is in the output but not the source")));
        f.extend(self.shapes_differ.iter().cloned());
        let l = &self.limits;
        for b in self.blocks.iter().filter(|b| e.blocks && b.rel_err > l.max_moe_rel_err) {
            f.push(format!(
                "layer {}: the feed-forward block's output is off by {:.4} (at most {})",
                b.layer, b.rel_err, l.max_moe_rel_err
            ));
        }
        if e.kl && self.model.kl_max > l.max_kl {
            f.push(format!("next-token KL divergence reaches {:.5} (at most {})", self.model.kl_max, l.max_kl));
        }
        if e.top1 && self.model.top1 < l.min_top1 {
            f.push(format!("top-1 agreement is {:.3} (at least {})", self.model.top1, l.min_top1));
        }
        f
    }

    /// A compact table, worst first.
    pub fn to_text(&self) -> String {
        let mut s = format!("source {}\noutput {}\n\ntensors (worst first)\n", self.source, self.output);
        s += &format!(
            "  {:<34} {:<9} {:<9} {:>10} {:>7} {:>10} {:>10}  status\n",
            "name", "from", "to", "rel RMSE", "vs RTN", "cosine", "max |err|"
        );
        for t in self.tensors.iter().take(12) {
            let status = if t.identical {
                "identical"
            } else if t.ok() {
                "ok"
            } else {
                "FAIL"
            };
            // The error against what round-to-nearest of the source in the output's type gives.
            let vs_rtn =
                t.expected.filter(|&e| e > 0.0).map_or("–".to_string(), |e| format!("{:.2}×", t.rel_rmse / e));
            s += &format!(
                "  {:<34} {:<9} {:<9} {:>10.2e} {:>7} {:>10.6} {:>10.2e}  {status}\n",
                t.name, t.source_storage, t.output_storage, t.rel_rmse, vs_rtn, t.cosine, t.max_abs
            );
        }
        let identical = self.tensors.iter().filter(|t| t.identical).count();
        s += &format!("  ({} tensors, {identical} identical in value)\n\n", self.tensors.len());
        if self.sizes_differ.is_some() {
            s += "blocks and whole model: not compared (the models' sizes differ)\nFAIL\n";
            for x in self.failures() {
                s += &format!("  {x}\n");
            }
            return s;
        }
        s += "blocks on the source's hidden states\n";
        s += &format!("  {:<6} {:>10} {:>10} {:>9}  worst experts\n", "layer", "rel err", "cosine", "routing");
        for b in &self.blocks {
            let worst: Vec<String> = b.worst_experts.iter().map(|(e, r)| format!("{e}: {r:.2e}")).collect();
            s += &format!(
                "  {:<6} {:>10.2e} {:>10.6} {:>8.1}%  {}\n",
                b.layer,
                b.rel_err,
                b.cosine,
                b.routing_agreement * 100.0,
                worst.join(", ")
            );
        }
        let m = &self.model;
        s += &format!(
            "\nwhole model, {} positions\n  KL mean {:.2e}, max {:.2e}; top-1 agreement {:.1}%; logit cosine {:.6}\n",
            m.positions,
            m.kl_mean,
            m.kl_max,
            m.top1 * 100.0,
            m.cosine
        );
        if !m.reused_layers.is_empty() || m.reused_head || !m.reused_blocks.is_empty() {
            let mut parts: Vec<String> = Vec::new();
            if !m.reused_layers.is_empty() {
                let list: Vec<String> = m.reused_layers.iter().map(usize::to_string).collect();
                parts.push(format!("layers {}", list.join(", ")));
            }
            if m.reused_head {
                parts.push("the head".into());
            }
            if !m.reused_blocks.is_empty() {
                let list: Vec<String> = m.reused_blocks.iter().map(usize::to_string).collect();
                parts.push(format!("the block checks of layers {}", list.join(", ")));
            }
            s += &format!(
                "  output model: {} taken from the source run (bit-identical tensors, same settings, same \
                 inputs; --full-forward recomputes)\n",
                parts.join("; ")
            );
        }
        let l = &self.limits;
        let e = self.enforced;
        let mark = |on: bool| if on { "" } else { " (note)" };
        s += &format!(
            "limits: KL ≤ {}{}, top-1 ≥ {}{}, block rel err ≤ {}{}\n",
            l.max_kl,
            mark(e.kl),
            l.min_top1,
            mark(e.top1),
            l.max_moe_rel_err,
            mark(e.blocks)
        );
        let notes = self.notes();
        if !notes.is_empty() {
            s += "notes (quantization noise on this model: every tensor is within its type's bound and the \
                  hyperparameters match)\n";
            for x in notes {
                s += &format!("  {x}\n");
            }
        }
        let f = self.failures();
        if f.is_empty() {
            s += "PASS\n";
        } else {
            s += "FAIL\n";
            for x in f {
                s += &format!("  {x}\n");
            }
        }
        s
    }

    /// The whole report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "source": self.source,
            "output": self.output,
            "pass": self.failures().is_empty(),
            "failures": self.failures(),
            "notes": self.notes(),
            "limits": {"max_kl": self.limits.max_kl, "min_top1": self.limits.min_top1, "max_moe_rel_err": self.limits.max_moe_rel_err},
            "enforced": {"max_kl": self.enforced.kl, "min_top1": self.enforced.top1, "max_moe_rel_err": self.enforced.blocks},
            "hparams_differ": self.hparams_differ,
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name, "source_type": t.source_type.name(), "output_type": t.output_type.name(),
                "source_storage": t.source_storage.to_string(), "output_storage": t.output_storage.to_string(),
                "rel_rmse": t.rel_rmse, "cosine": t.cosine, "max_abs": t.max_abs, "identical": t.identical,
                "bound": t.bound, "expected_rel_rmse": t.expected, "ok": t.ok(),
            })).collect::<Vec<_>>(),
            "missing": self.missing,
            "extra": self.extra,
            "shapes_differ": self.shapes_differ,
            "sizes_differ": self.sizes_differ,
            "blocks": self.blocks.iter().map(|b| json!({
                "layer": b.layer, "rel_err": b.rel_err, "cosine": b.cosine, "routing_agreement": b.routing_agreement,
                "worst_experts": b.worst_experts.iter().map(|(e, r)| json!({"expert": e, "rel_err": r})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "model": {"kl_mean": self.model.kl_mean, "kl_max": self.model.kl_max, "top1": self.model.top1,
                      "logit_cosine": self.model.cosine, "positions": self.model.positions,
                      "non_finite": self.model.non_finite,
                      "reused_layers": self.model.reused_layers, "reused_head": self.model.reused_head,
                      "reused_blocks": self.model.reused_blocks},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_bound_is_a_multiple_of_round_to_nearest_within_the_fixed_bound() {
        // llama-quantize's Q4_0 of random weights: 0.0855 expected, 0.21375 allowed.
        assert!((expected_bound(GgmlType::Q4_0, Some(0.0855)) - 0.21375).abs() < 1e-12);
        // Not measured: the type's fixed bound.
        assert_eq!(expected_bound(GgmlType::Q4_0, None), 0.3);
        // A source on the output's grid expects nothing: half the fixed bound.
        assert_eq!(expected_bound(GgmlType::Q8_0, Some(0.0)), 0.03 / 2.0);
        // Ternary of a model that is not ternary (SmolLM2-135M: 0.83 measured) passes, below the
        // error of a zeroed tensor (1).
        let tq = expected_bound(GgmlType::TQ2_0, Some(0.83));
        assert!(tq > 0.83 && tq < 1.0, "{tq}");
        // A 1-bit type whose expected error comes near its fixed bound (SmolLM2-135M's last
        // ffn_down in IQ1_S: 0.50, correct files at 1.15×) or exceeds it (heavy-tailed weights):
        // 1.6× the expected.
        assert!((expected_bound(GgmlType::IQ1_S, Some(0.5)) - 0.8).abs() < 1e-12);
        assert!((expected_bound(GgmlType::IQ1_S, Some(0.6)) - 0.96).abs() < 1e-12);
    }
}
