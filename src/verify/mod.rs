//! `moeq verify`: proof that an output computes what its source computes. Three levels, each
//! with the source and the output read in their own layouts: every tensor (matched by its
//! llama.cpp name), every MoE block on the source's own hidden states, and the whole model's
//! next-token distributions on reference tokens.

pub mod eval;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;
use rayon::prelude::*;
use serde_json::json;

use crate::forward::{FfnOutput, Model, Reuse, same_bits};
use crate::model::weights::Weights;
use crate::write::progress::steps_bar;

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
fn tensor_bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 1e-6,
        GgmlType::F16 => 2e-3,
        GgmlType::BF16 => 1e-2,
        GgmlType::Q8_0 => 0.03,
        GgmlType::Q6_K => 0.06,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.12,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS | GgmlType::MXFP4 => 0.3,
        _ => 0.6,
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

/// One tensor, source against output.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    pub name: String,
    pub source_type: GgmlType,
    pub output_type: GgmlType,
    pub rel_rmse: f64,
    pub cosine: f64,
    pub max_abs: f64,
    pub identical: bool,
    /// The largest error this tensor may have.
    pub bound: f64,
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
    pub blocks: Vec<BlockCheck>,
    pub model: ModelCheck,
    pub limits: Limits,
}

/// Sums for a streamed comparison.
#[derive(Default)]
struct Stats {
    diff2: f64,
    a2: f64,
    b2: f64,
    ab: f64,
    max_abs: f64,
    identical: bool,
}

impl Stats {
    fn add(&mut self, a: &[f32], b: &[f32]) {
        let sums = moeq_kernels::dot::compare(a, b);
        self.diff2 += sums.diff2;
        self.a2 += sums.a2;
        self.b2 += sums.b2;
        self.ab += sums.ab;
        self.max_abs = self.max_abs.max(sums.max_abs as f64);
        self.identical &= sums.unequal == 0;
    }

    fn rel(&self) -> f64 {
        if self.a2 == 0.0 { if self.diff2 == 0.0 { 0.0 } else { f64::INFINITY } } else { (self.diff2 / self.a2).sqrt() }
    }

    fn cosine(&self) -> f64 {
        if self.a2 == 0.0 || self.b2 == 0.0 {
            if self.diff2 == 0.0 { 1.0 } else { 0.0 }
        } else {
            self.ab / (self.a2 * self.b2).sqrt()
        }
    }
}

fn compare(a: &[f32], b: &[f32]) -> Stats {
    let mut s = Stats { identical: true, ..Stats::default() };
    s.add(a, b);
    s
}

/// Reads reference sequences: one per non-empty line, ids separated by commas or spaces.
pub fn read_token_file(path: &std::path::Path) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut sequences = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let ids: Result<Vec<u32>, _> =
            line.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()).map(str::parse).collect();
        sequences.push(ids.with_context(|| format!("{}, line {}: not a list of token ids", path.display(), n + 1))?);
    }
    if sequences.is_empty() {
        bail!("{}: no token sequences", path.display());
    }
    Ok(sequences)
}

/// Lengths of the built-in reference sequences: 256 tokens, one sequence longer than
/// gpt-oss's 128-token sliding window so the windowed layers see it act.
pub const REFERENCE_LENGTHS: [usize; 5] = [160, 48, 24, 16, 8];

/// The built-in reference tokens: sequences of [`REFERENCE_LENGTHS`], deterministic, mixing
/// frequent (low) ids and rare ones across the whole vocabulary.
pub fn reference_tokens(vocab: usize) -> Vec<Vec<u32>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    REFERENCE_LENGTHS
        .iter()
        .map(|&len| {
            (0..len)
                .map(|i| {
                    let r = next();
                    let span = if i % 3 == 0 { vocab } else { (vocab / 16).max(1) };
                    (r % span as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// One tensor of both models, streamed.
fn compare_tensor(source: &Weights, output: &Weights, name: &str) -> Result<TensorCheck> {
    if source.ne(name)? != output.ne(name)? {
        bail!(
            "tensor '{name}': shape {:?} in {} but {:?} in {}",
            source.ne(name)?,
            source.path,
            output.ne(name)?,
            output.path
        );
    }
    let (source_type, output_type) = (source.stored_types[name], output.stored_types[name]);
    let lossless = source_type == output_type || output_type == GgmlType::F32 && !source_type.is_quantized();
    let bound = if lossless { 0.0 } else { tensor_bound(output_type) };
    if source.same_bytes(output, name)? {
        // The bytes the converter would write are the bytes stored: the same values.
        let (rel_rmse, cosine, max_abs, identical) = (0.0, 1.0, 0.0, true);
        let name = name.to_string();
        return Ok(TensorCheck { name, source_type, output_type, rel_rmse, cosine, max_abs, identical, bound });
    }
    let ne = source.ne(name)?;
    let (cols, rows) = (ne.first().copied().unwrap_or(1).max(1), ne.iter().skip(1).product::<u64>());
    let per = ((1u64 << 20) / cols).max(1);
    let mut s = Stats { identical: true, ..Stats::default() };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut first = 0;
    while first < rows {
        let n = per.min(rows - first);
        source.rows_into(name, first, n, &mut a)?;
        output.rows_into(name, first, n, &mut b)?;
        s.add(&a, &b);
        first += n;
    }
    Ok(TensorCheck {
        name: name.to_string(),
        source_type,
        output_type,
        rel_rmse: s.rel(),
        cosine: s.cosine(),
        max_abs: s.max_abs,
        identical: s.identical,
        bound,
    })
}

/// The parts of the output model provably identical to the source's. A part qualifies when
/// both models have the same tensors there, all bit-identical, and the same forward
/// hyperparameters.
#[derive(Default)]
struct IdenticalParts {
    /// Per layer: every `blk.N.*` tensor.
    layers: Vec<bool>,
    /// Per layer: every `blk.N.ffn_*` tensor (the feed-forward block after its norm).
    ffn: Vec<bool>,
    /// The final norm and the head.
    head: bool,
}

impl IdenticalParts {
    fn find(src: &Model, out: &Model, tensors: &[TensorCheck]) -> IdenticalParts {
        if src.cfg != out.cfg {
            return IdenticalParts::default();
        }
        let identical: std::collections::HashSet<&str> =
            tensors.iter().filter(|t| t.identical).map(|t| t.name.as_str()).collect();
        let all_identical = |prefix: &str| {
            let mut names = src.w.names().chain(out.w.names()).filter(|n| n.starts_with(prefix)).peekable();
            names.peek().is_some() && names.all(|n| identical.contains(n))
        };
        let n_layer = src.cfg.n_layer;
        IdenticalParts {
            layers: (0..n_layer).map(|l| all_identical(&format!("blk.{l}."))).collect(),
            ffn: (0..n_layer).map(|l| all_identical(&format!("blk.{l}.ffn_"))).collect(),
            head: src.head_weight() == out.head_weight()
                && ["output_norm.weight", src.head_weight()].iter().all(|n| identical.contains(n)),
        }
    }
}

/// Compares `output` with `source` on `sequences`. `limits` overrides the defaults, which
/// follow the output's types. Unless `full_forward`, the output model takes from the source's
/// run every part [`IdenticalParts`] finds, and each block check whose feed-forward tensors are
/// identical takes the source's block output (the forward is deterministic: same weights, same
/// settings, same input bits give the same output bits).
pub fn verify(
    source: &Weights,
    output: &Weights,
    sequences: &[Vec<u32>],
    limits: Option<Limits>,
    full_forward: bool,
) -> Result<Report> {
    // Both models' hyperparameters, checked against their tensors before anything runs.
    let (src_model, out_model) = (Model::new(source)?, Model::new(output)?);

    // 1. Tensors, in parallel, each streamed in pieces of about a million values.
    let names: Vec<&str> = source.names().collect();
    let missing: Vec<String> = names.iter().filter(|n| !output.has(n)).map(|n| n.to_string()).collect();
    let bar = steps_bar(names.len() as u64, "tensors");
    let checks: Result<Vec<TensorCheck>> = names
        .par_iter()
        .filter(|n| output.has(n))
        .map(|&name| {
            let check = compare_tensor(source, output, name);
            bar.inc(1);
            check
        })
        .collect();
    bar.finish_and_clear();
    let mut tensors = checks?;
    let extra: Vec<String> = output.names().filter(|n| !source.has(n)).map(str::to_string).collect();
    let worst = tensors
        .iter()
        .filter(|t| t.bound > 0.0)
        .map(|t| t.output_type)
        .max_by(|a, b| tensor_bound(*a).total_cmp(&tensor_bound(*b)));
    let limits = limits.unwrap_or(Limits::for_type(worst));

    // 2 and 3. Blocks on the source's hidden states, and the whole model: both must have the
    // same layers, width and vocabulary.
    let (sc, oc) = (&src_model.cfg, &out_model.cfg);
    let vocab = |w: &Weights| w.ne("token_embd.weight").map(|ne| ne.get(1).copied().unwrap_or(1));
    let (src_vocab, out_vocab) = (vocab(source)?, vocab(output)?);
    if (sc.n_layer, sc.n_embd, src_vocab) != (oc.n_layer, oc.n_embd, out_vocab) {
        bail!(
            "{} has {} layers of width {} and {out_vocab} tokens, but its source {} has {} layers of width {} and \
             {src_vocab} tokens: not the same model",
            output.path,
            oc.n_layer,
            oc.n_embd,
            source.path,
            sc.n_layer,
            sc.n_embd
        );
    }
    let mut blocks: Vec<BlockCheck> = Vec::new();
    let mut model = ModelCheck::default();
    let (mut kl_sum, mut top1, mut logit_stats) = (0.0, 0usize, Stats { identical: true, ..Stats::default() });
    {
        let bar = steps_bar(3, "models");
        bar.set_message("the source model");
        let src = src_model.run_batch(sequences).context("the source model")?;
        bar.inc(1);
        bar.set_message("the output model");
        let IdenticalParts { layers, ffn, head } = if full_forward {
            IdenticalParts::default()
        } else {
            IdenticalParts::find(&src_model, &out_model, &tensors)
        };
        let reuse = Reuse { trace: &src, layers, head };
        let mut out = out_model.run_batch_reusing(sequences, Some(&reuse)).context("the output model")?;
        model.reused_layers = std::mem::take(&mut out.reused_layers);
        model.reused_head = out.reused_head;
        bar.inc(1);
        bar.set_message("each block on the source's hidden states");
        for (layer, input) in src.moe_in.iter().enumerate() {
            let (a, routes_a, experts_a) = (&src.moe_out[layer], &src.routes[layer], &src.expert_out[layer]);
            // The output model's own pass already ran this block on the same input when its
            // hidden states have not drifted (the forward is deterministic): reuse it.
            let b = if same_bits(&out.moe_in[layer], input) {
                FfnOutput {
                    out: out.moe_out[layer].clone(),
                    routes: out.routes[layer].clone(),
                    expert_out: out.expert_out[layer].clone(),
                }
            } else if ffn.get(layer) == Some(&true) {
                // The block's tensors are the source's: on the source's input it computes what
                // the source's block computed.
                model.reused_blocks.push(layer);
                FfnOutput { out: a.clone(), routes: routes_a.clone(), expert_out: experts_a.clone() }
            } else {
                out_model.ffn_detailed(layer, input)?
            };
            let (routes_b, experts_b) = (&b.routes, &b.expert_out);
            let s = compare(a, &b.out);
            let same = routes_a
                .iter()
                .zip(routes_b)
                .filter(|(x, y)| {
                    let (mut x, mut y) = (x.to_vec(), y.to_vec());
                    x.sort_unstable();
                    y.sort_unstable();
                    x == y
                })
                .count();
            // Each expert, on the tokens both models sent to it: its own outputs, compared.
            let mut per_expert: Vec<Stats> = (0..src_model.cfg.n_expert).map(|_| Stats::default()).collect();
            for (i, (ra, rb)) in routes_a.iter().zip(routes_b).enumerate() {
                for (ka, e) in ra.iter().enumerate() {
                    if let Some(kb) = rb.iter().position(|x| x == e) {
                        per_expert[*e].add(&experts_a[i][ka], &experts_b[i][kb]);
                    }
                }
            }
            let mut worst_experts: Vec<(usize, f64)> =
                per_expert.iter().enumerate().filter(|(_, s)| s.a2 > 0.0).map(|(e, s)| (e, s.rel())).collect();
            worst_experts.sort_by(|a, b| b.1.total_cmp(&a.1));
            worst_experts.truncate(3);
            let n = routes_a.len().max(1);
            let check = BlockCheck {
                layer,
                rel_err: s.rel(),
                cosine: s.cosine(),
                routing_agreement: if routes_a.is_empty() { 1.0 } else { same as f64 / n as f64 },
                worst_experts,
            };
            // Keep the worst over sequences.
            match blocks.iter_mut().find(|b| b.layer == layer) {
                Some(b) if b.rel_err >= check.rel_err => {}
                Some(b) => *b = check,
                None => blocks.push(check),
            }
        }
        let vocab = src.logits.len() / sequences.iter().map(Vec::len).sum::<usize>().max(1);
        logit_stats.add(&src.logits, &out.logits);
        let per_position: Vec<(f64, bool)> = src
            .logits
            .par_chunks_exact(vocab)
            .zip(out.logits.par_chunks_exact(vocab))
            .map_init(Vec::new, |scratch, (p, q)| (kl_divergence(p, q, scratch), argmax(p) == argmax(q)))
            .collect();
        for (kl, same_top) in per_position {
            kl_sum += kl;
            model.kl_max = model.kl_max.max(kl);
            top1 += usize::from(same_top);
            model.positions += 1;
        }
        bar.finish_and_clear();
    }
    model.kl_mean = kl_sum / model.positions.max(1) as f64;
    model.top1 = top1 as f64 / model.positions.max(1) as f64;
    model.cosine = logit_stats.cosine();
    tensors.sort_by(|a, b| {
        (b.rel_rmse / b.bound.max(1e-12)).total_cmp(&(a.rel_rmse / a.bound.max(1e-12))).then(a.name.cmp(&b.name))
    });
    Ok(Report {
        source: source.path.clone(),
        output: output.path.clone(),
        tensors,
        missing,
        extra,
        blocks,
        model,
        limits,
    })
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

/// KL(p ‖ q) in nats of the softmax distributions of two logit rows, in f64:
/// Σ pᵢ (xᵢ − yᵢ) − lse(x) + lse(y), with pᵢ = exp(xᵢ − lse(x)). Exactly 0 for equal rows.
fn kl_divergence(p: &[f32], q: &[f32], scratch: &mut Vec<f64>) -> f64 {
    let max = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let (max_p, max_q) = (max(p), max(q));
    scratch.clear();
    scratch.extend(p.iter().map(|&x| (x as f64 - max_p).exp()));
    let sum_p: f64 = scratch.iter().sum();
    let lse_p = sum_p.ln() + max_p;
    let lse_q = q.iter().map(|&y| (y as f64 - max_q).exp()).sum::<f64>().ln() + max_q;
    let cross: f64 = scratch.iter().zip(p.iter().zip(q)).map(|(e, (&x, &y))| e * (x as f64 - y as f64)).sum();
    (cross / sum_p - lse_p + lse_q).max(0.0)
}

impl Report {
    /// The failed checks, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for t in self.tensors.iter().filter(|t| !t.ok()) {
            f.push(if t.bound == 0.0 {
                format!("tensor '{}' changed (it should be identical: {} in both)", t.name, t.output_type)
            } else {
                format!(
                    "tensor '{}' is off by {:.4} relative RMS error (at most {} expected for {})",
                    t.name, t.rel_rmse, t.bound, t.output_type
                )
            });
        }
        f.extend(self.missing.iter().map(|n| format!("tensor '{n}' is missing from the output")));
        f.extend(self.extra.iter().map(|n| format!("tensor '{n}' is in the output but not the source")));
        let l = &self.limits;
        for b in self.blocks.iter().filter(|b| b.rel_err > l.max_moe_rel_err) {
            f.push(format!(
                "layer {}: the feed-forward block's output is off by {:.4} (at most {})",
                b.layer, b.rel_err, l.max_moe_rel_err
            ));
        }
        if self.model.kl_max > l.max_kl {
            f.push(format!("next-token KL divergence reaches {:.5} (at most {})", self.model.kl_max, l.max_kl));
        }
        if self.model.top1 < l.min_top1 {
            f.push(format!("top-1 agreement is {:.3} (at least {})", self.model.top1, l.min_top1));
        }
        f
    }

    /// A compact table, worst first.
    pub fn to_text(&self) -> String {
        let mut s = format!("source {}\noutput {}\n\ntensors (worst first)\n", self.source, self.output);
        s += &format!(
            "  {:<34} {:<6} {:<6} {:>10} {:>10} {:>10}  status\n",
            "name", "from", "to", "rel RMSE", "cosine", "max |err|"
        );
        for t in self.tensors.iter().take(12) {
            let status = if t.identical {
                "identical"
            } else if t.ok() {
                "ok"
            } else {
                "FAIL"
            };
            s += &format!(
                "  {:<34} {:<6} {:<6} {:>10.2e} {:>10.6} {:>10.2e}  {status}\n",
                t.name,
                t.source_type.name(),
                t.output_type.name(),
                t.rel_rmse,
                t.cosine,
                t.max_abs
            );
        }
        let identical = self.tensors.iter().filter(|t| t.identical).count();
        s += &format!(
            "  ({} tensors, {identical} identical in value)\n\nblocks on the source's hidden states\n",
            self.tensors.len()
        );
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
        s += &format!("limits: KL ≤ {}, top-1 ≥ {}, block rel err ≤ {}\n", l.max_kl, l.min_top1, l.max_moe_rel_err);
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
            "limits": {"max_kl": self.limits.max_kl, "min_top1": self.limits.min_top1, "max_moe_rel_err": self.limits.max_moe_rel_err},
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name, "source_type": t.source_type.name(), "output_type": t.output_type.name(),
                "rel_rmse": t.rel_rmse, "cosine": t.cosine, "max_abs": t.max_abs, "identical": t.identical,
                "bound": t.bound, "ok": t.ok(),
            })).collect::<Vec<_>>(),
            "missing": self.missing,
            "extra": self.extra,
            "blocks": self.blocks.iter().map(|b| json!({
                "layer": b.layer, "rel_err": b.rel_err, "cosine": b.cosine, "routing_agreement": b.routing_agreement,
                "worst_experts": b.worst_experts.iter().map(|(e, r)| json!({"expert": e, "rel_err": r})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "model": {"kl_mean": self.model.kl_mean, "kl_max": self.model.kl_max, "top1": self.model.top1,
                      "logit_cosine": self.model.cosine, "positions": self.model.positions,
                      "reused_layers": self.model.reused_layers, "reused_head": self.model.reused_head,
                      "reused_blocks": self.model.reused_blocks},
        })
    }
}
