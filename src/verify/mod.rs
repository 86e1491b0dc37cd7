//! `moeq verify`: proof that an output computes what its source computes. Three levels, each
//! with the source and the output read in their own layouts: every tensor (matched by its
//! llama.cpp name), every MoE block on the source's own hidden states, and the whole model's
//! next-token distributions on reference tokens.

pub mod eval;
pub mod experts;
pub mod report;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;
use rayon::prelude::*;

use crate::forward::{FfnOutput, Model, Reuse, same_bits};
use crate::model::weights::{Storage, Weights};
use crate::plan::convert::ggml_dims;
use crate::write::progress::steps_bar;
use report::tensor_bound;
pub use report::{BlockCheck, Enforced, Limits, ModelCheck, Report, TensorCheck};

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
        let ids: Result<Vec<u32>> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse::<u32>().map_err(|_| {
                    anyhow::anyhow!(
                        "{}, line {}: '{t}' is not a token id (a whole number from 0 to {})",
                        path.display(),
                        n + 1,
                        u32::MAX
                    )
                })
            })
            .collect();
        sequences.push(ids?);
    }
    if sequences.is_empty() {
        bail!("{}: no token sequences", path.display());
    }
    Ok(sequences)
}

/// Tokens per sequence of `verify --text`.
pub const TEXT_SEQUENCE: usize = 512;

/// Reference sequences from a text file for the model at `source` (its tokenizer.json, or the
/// one in `tokenizer_dir`): tokenized as `moeq imatrix --text` tokenizes, cut into sequences of
/// [`TEXT_SEQUENCE`] tokens (the last one shorter), each starting with BOS when the vocabulary
/// adds one.
pub fn text_sequences(
    source: &std::path::Path,
    text: &std::path::Path,
    tokenizer_dir: Option<&std::path::Path>,
) -> Result<Vec<Vec<u32>>> {
    use crate::vocab::tokenize::{ModelText, read_text};
    let input = read_text(text)?;
    let opened = crate::source::Source::open(source)?;
    let w = Weights::new(&opened, source)?;
    let model_text = ModelText::open(source, &opened, &w, tokenizer_dir, "--tokens or --tokens-file FILE")?;
    let ids = model_text.encode(&input)?;
    Ok(ids
        .chunks(TEXT_SEQUENCE)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = model_text.bos {
                c[0] = b;
            }
            c
        })
        .collect())
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
    // Trailing dimensions of 1 aside: llama-quantize drops them ([96, 1] → [96]).
    if ggml_dims(source.ne(name)?) != ggml_dims(output.ne(name)?) {
        bail!(
            "tensor '{name}': shape {:?} in {} but {:?} in {}",
            source.ne(name)?,
            source.path,
            output.ne(name)?,
            output.path
        );
    }
    let (source_type, output_type) = (source.stored_types[name], output.stored_types[name]);
    let (source_storage, output_storage) = (source.storage(name)?, output.storage(name)?);
    // MLX's quantized types are not the ggml types named for their precision (an MLX 4-bit
    // tensor is not lossless from a Q4_1 one), nor is MLX's MXFP4 quantizer ggml's.
    let lossless = source_storage == output_storage
        || output_type == GgmlType::F32 && !source_type.is_quantized() && matches!(source_storage, Storage::Ggml(_));
    let bound = if lossless { 0.0 } else { tensor_bound(output_type) };
    if source.same_bytes(output, name)? {
        // The bytes the converter would write are the bytes stored: the same values.
        let (rel_rmse, cosine, max_abs, identical) = (0.0, 1.0, 0.0, true);
        let name = name.to_string();
        let expected = None;
        return Ok(TensorCheck {
            name,
            source_type,
            output_type,
            source_storage,
            output_storage,
            rel_rmse,
            cosine,
            max_abs,
            identical,
            bound,
            expected,
        });
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
    let (expected, bound) = if bound > 0.0 && output_type.is_quantized() && !s.identical {
        let expected = expected_error(source.recipe(name)?, output_storage);
        (expected, report::expected_bound(output_type, expected))
    } else {
        (None, bound)
    };
    Ok(TensorCheck {
        name: name.to_string(),
        source_type,
        output_type,
        source_storage,
        output_storage,
        rel_rmse: s.rel(),
        cosine: s.cosine(),
        max_abs: s.max_abs,
        identical: s.identical,
        bound,
        expected,
    })
}

/// A ggml type quantized with every importance weight 1 (for the types ggml quantizes only
/// with importance weights: IQ2_XXS, IQ2_XS, IQ1_S).
#[derive(Clone, Copy)]
struct EqualWeights(GgmlType);

impl crate::plan::optimize::measure::Codec for EqualWeights {
    fn round_trip(
        &self,
        recipe: &crate::plan::recipe::Recipe,
        values: &[f32],
        _: u64,
        count: u64,
        back: &mut Vec<f32>,
    ) -> Result<bool> {
        let EqualWeights(ty) = *self;
        let Some(q) = crate::plan::transcode::quant_type(ty) else { bail!("{ty} is not a quantized type") };
        let ne0 = recipe.row_len() as usize;
        let row = ty.row_bytes(ne0 as u64).with_context(|| format!("rows of {ne0} values in {ty}"))? as usize;
        let mut bytes = vec![0u8; row * count as usize];
        moeq_kernels::active().quantize_weighted(q, values, &mut bytes, ne0, &vec![1.0; ne0])?;
        back.resize(values.len(), 0.0);
        crate::plan::transcode::to_f32(ty, &bytes, back)?;
        Ok(true)
    }
}

/// Values of a tensor [`expected_error`] quantizes at most, in pieces of about
/// [`EXPECTED_PIECE`] values spread over its rows.
const EXPECTED_SAMPLE: u64 = 1 << 18;
const EXPECTED_PIECE: u64 = 1 << 13;

/// The relative RMS error of the source tensor `recipe` stored as `storage` (the output's) by
/// moeq's round-to-nearest quantizers (ggml's reference, without importance weights or with
/// equal ones for the types that need them; MLX's), measured on up to [`EXPECTED_SAMPLE`]
/// values spread over its rows. `None` when the quantizer refuses the values (an overflow;
/// reading the source, which the comparison has just read whole, is not expected to fail here).
fn expected_error(recipe: &crate::plan::recipe::Recipe, storage: Storage) -> Option<f64> {
    use crate::plan::mlx::MlxType;
    use crate::plan::optimize::measure::measure_sample;
    let measured = match storage {
        Storage::MlxAffine { bits, group } => {
            measure_sample(recipe, MlxType::Affine { bits, group }, EXPECTED_SAMPLE, EXPECTED_PIECE)
                .map(|m| m.relative())
        }
        Storage::MlxMxfp4 => {
            measure_sample(recipe, MlxType::Mxfp4, EXPECTED_SAMPLE, EXPECTED_PIECE).map(|m| m.relative())
        }
        Storage::Ggml(ty) if crate::plan::transcode::quant_type(ty).is_some_and(|q| q.needs_importance()) => {
            // ggml quantizes these only with importance weights: equal ones.
            measure_sample(recipe, EqualWeights(ty), EXPECTED_SAMPLE, EXPECTED_PIECE).map(|m| m.relative())
        }
        Storage::Ggml(ty) => measure_sample(recipe, ty, EXPECTED_SAMPLE, EXPECTED_PIECE).map(|m| m.relative()),
    };
    match measured {
        Ok(r) if r.is_finite() => Some(r.sqrt()),
        _ => None,
    }
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
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
    if let Some(warning) = source.past_context_warning(longest, "the reference tokens", "give shorter sequences") {
        eprintln!("warning: {warning}");
    }

    // 1. Tensors, in parallel, each streamed in pieces of about a million values; those whose
    // shapes differ (trailing dimensions of 1 aside) are failures, not compared.
    let names: Vec<&str> = source.names().collect();
    // Blocks past the forward's layers (GLM-4.5's multi-token-prediction layer) that the output
    // leaves out whole, as mlx-lm's builds do, are no defect: the forward does not run them.
    let block = |n: &str| n.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
    let dropped = |l: usize| l >= src_model.cfg.n_layer && !output.names().any(|n| block(n) == Some(l));
    let mut dropped_blocks: Vec<usize> = names.iter().filter_map(|n| block(n)).filter(|&l| dropped(l)).collect();
    dropped_blocks.sort_unstable();
    dropped_blocks.dedup();
    if !dropped_blocks.is_empty() {
        let list: Vec<String> = dropped_blocks.iter().map(|l| format!("blk.{l}")).collect();
        eprintln!(
            "warning: the output leaves out the multi-token-prediction block{} {} (not part of the forward; \
             mlx-lm drops it too)",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
    }
    let missing: Vec<String> =
        names.iter().filter(|n| !output.has(n) && !block(n).is_some_and(dropped)).map(|n| n.to_string()).collect();
    let mut shapes_differ = Vec::new();
    let mut both = Vec::new();
    for &name in names.iter().filter(|n| output.has(n)) {
        let (a, b) = (source.ne(name)?, output.ne(name)?);
        if ggml_dims(a) == ggml_dims(b) {
            both.push(name);
        } else {
            shapes_differ.push(format!("tensor '{name}': shape {a:?} in the source, {b:?} in the output"));
        }
    }
    let bar = steps_bar(both.len() as u64, "tensors");
    let checks: Result<Vec<TensorCheck>> = both
        .par_iter()
        .map(|&name| {
            let check = compare_tensor(source, output, name);
            bar.inc(1);
            check
        })
        .collect();
    bar.finish_and_clear();
    let tensors = checks?;
    let extra: Vec<String> = output.names().filter(|n| !source.has(n)).map(str::to_string).collect();
    let worst = tensors
        .iter()
        .filter(|t| t.bound > 0.0)
        .map(|t| t.output_type)
        .max_by(|a, b| tensor_bound(*a).total_cmp(&tensor_bound(*b)));
    let hparams_differ = src_model.cfg.differences(&out_model.cfg);
    // The block and model limits fail the check when given, for lossless outputs, and when
    // anything else is off; otherwise they give notes (see `Enforced`).
    let lossy = worst.is_some();
    let sound = hparams_differ.is_empty()
        && missing.is_empty()
        && extra.is_empty()
        && shapes_differ.is_empty()
        && tensors.iter().all(|t| t.ok());
    let enforced = if limits.is_none() && lossy && sound { Enforced::NONE } else { Enforced::ALL };
    let limits = limits.unwrap_or(Limits::for_type(worst));

    // 2 and 3. Blocks on the source's hidden states, and the whole model: both must have the
    // same layers, width and vocabulary.
    let (sc, oc) = (&src_model.cfg, &out_model.cfg);
    let vocab = |w: &Weights| w.ne("token_embd.weight").map(|ne| ne.get(1).copied().unwrap_or(1));
    let (src_vocab, out_vocab) = (vocab(source)?, vocab(output)?);
    let mut report = Report {
        source: source.path.clone(),
        output: output.path.clone(),
        tensors,
        missing,
        extra,
        shapes_differ,
        sizes_differ: None,
        blocks: Vec::new(),
        model: ModelCheck::default(),
        limits,
        enforced,
        hparams_differ,
    };
    if (sc.n_layer, sc.n_embd, src_vocab) != (oc.n_layer, oc.n_embd, out_vocab) {
        // Two readable models of different sizes: a failed check (exit 1, the report says
        // so), not an error; the blocks and the whole model cannot be run on each other.
        report.sizes_differ = Some(format!(
            "the output has {} layers of width {} and {out_vocab} tokens, the source {} layers of width {} and \
             {src_vocab} tokens: not the same model (blocks and logits not compared)",
            oc.n_layer, oc.n_embd, sc.n_layer, sc.n_embd
        ));
        report.sort_tensors();
        return Ok(report);
    }
    let tensors = &report.tensors;
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
            IdenticalParts::find(&src_model, &out_model, tensors)
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
        if src.logits.iter().any(|v| !v.is_finite()) {
            bail!(
                "{}: the source model's own forward gives NaN or infinite logits on these tokens (check its \
                 hyperparameters, e.g. the RoPE base), so there is nothing to compare against",
                source.path
            );
        }
        let vocab = src.logits.len() / sequences.iter().map(Vec::len).sum::<usize>().max(1);
        logit_stats.add(&src.logits, &out.logits);
        let per_position: Vec<(f64, bool)> = src
            .logits
            .par_chunks_exact(vocab)
            .zip(out.logits.par_chunks_exact(vocab))
            .map_init(Vec::new, |scratch, (p, q)| {
                let finite = q.iter().all(|v| v.is_finite());
                (if finite { kl_divergence(p, q, scratch) } else { f64::NAN }, argmax(p) == argmax(q))
            })
            .collect();
        for (kl, same_top) in per_position {
            model.positions += 1;
            if !kl.is_finite() {
                model.non_finite += 1;
                continue;
            }
            kl_sum += kl;
            model.kl_max = model.kl_max.max(kl);
            top1 += usize::from(same_top);
        }
        bar.finish_and_clear();
    }
    model.kl_mean = kl_sum / model.positions.max(1) as f64;
    model.top1 = top1 as f64 / model.positions.max(1) as f64;
    model.cosine = logit_stats.cosine();
    report.blocks = blocks;
    report.model = model;
    report.sort_tensors();
    Ok(report)
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
