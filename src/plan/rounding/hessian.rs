//! Calibration Hessians for GPTQ: for every weight matrix to round, `H = Σ_t x_t x_tᵀ` over
//! the calibration tokens of the matrix's *input*, collected with moeq's own forward one layer
//! at a time (as `moeq imatrix` runs it), factored into GPTQ's `U` when the layer ends and
//! spilled to an anonymous scratch file, so only one layer's Hessians are ever in memory.
//!
//! Matrices that read the same input share one Hessian: q, k and v read the attention norm's
//! output (collected at `attn_q`), gate and up the feed-forward norm's output (at `ffn_gate`);
//! `attn_output`, `ffn_down` and the output head have their own. The output head's input is
//! the final norm's output; a model with tied embeddings (no `output.weight`) uses
//! `token_embd.weight` as its head, so the embedding is rounded for its role as the head.
//!
//! Stacked expert tensors (`ffn_{gate,up,down}_exps`, every MoE family: the forward runs each
//! expert through [`crate::forward::moe::expert`]) get one Hessian per expert, over the tokens
//! *routed* to it: gate and up share the normed hidden state of those tokens (collected at
//! `ffn_gate_exps`), down has the expert's activation. While a layer runs, each expert's
//! inputs are appended to a scratch file (not summed: E experts × cols² would not fit); when
//! the layer ends, the experts' Hessians are summed from it and factored a few at a time, so
//! at most that many expert Hessians are in memory. An expert that saw fewer than
//! [`MIN_EXPERT_TOKENS`] tokens gets no factor: its rows are rounded as ggml rounds them.
//!
//! Accumulation: each group of calibration chunks is summed in f32 (AVX2 dot products over the
//! group's tokens, [`moeq_kernels::dot::dot_rows`]), groups are summed in f64; the factor
//! ([`moeq_kernels::gptq::Factor`]) is computed in f64 and stored as f32.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use moeq_formats::temp::{F32Spill, read_f32_at};
use moeq_kernels::gptq::{DAMP, Factor};
use rayon::prelude::*;

use crate::forward::{Model, Probe};
use crate::model::weights::Weights;
use crate::write::progress::steps_bar;

/// Where a factor's `U` (f32, `cols²`) is kept.
#[derive(Debug)]
enum Stored {
    /// In the scratch file at this byte offset.
    Spilled { file: Arc<File>, offset: u64 },
    /// In memory (no scratch file could be made).
    Memory(Vec<f32>),
}

/// Fewer routed calibration tokens than this and an expert keeps ggml's rounding: a Hessian
/// of so few tokens (rank ≤ tokens, the rest only damping) fits the rounding to them alone.
pub const MIN_EXPERT_TOKENS: u64 = 16;

/// Experts whose Hessians are summed and factored at once when a layer ends (each holds its
/// `cols²` f64 sum and the factorization's copies).
const EXPERTS_AT_ONCE: usize = 2;

/// One expert's routed calibration tokens, and its factor when it had enough of them.
pub type ExpertFactor = (u64, Option<Arc<TensorRounding>>);

/// The rounding data of a stacked expert tensor: one entry per expert.
#[derive(Debug)]
pub struct ExpertRounding {
    /// The tensor whose input this is (`…ffn_up_exps` uses `…ffn_gate_exps`'s).
    pub input_of: String,
    /// Rows per expert of the tensor the data was collected at.
    pub rows: u64,
    /// Per expert: routed calibration tokens, and its factor when it had enough of them.
    pub experts: Vec<ExpertFactor>,
}

/// What GPTQ needs to round one weight matrix: the factor of its input's damped inverse
/// Hessian and the Hessian's diagonal (per-column mean squared input, the importance weights
/// of the scale search when no `--imatrix` is given).
#[derive(Debug)]
pub struct TensorRounding {
    /// The tensor whose input this is (`blk.0.attn_q.weight` also serves k and v).
    pub input_of: String,
    /// Input columns.
    pub cols: usize,
    /// Calibration tokens the Hessian summed.
    pub tokens: u64,
    /// `diag(H) / tokens`, one per column.
    pub diag: Vec<f32>,
    /// The sweep's column order (empty: left to right).
    order: Vec<u32>,
    stored: Arc<Stored>,
}

impl TensorRounding {
    /// The factor, read back from the scratch file if it was spilled.
    ///
    /// Errors: the scratch file cannot be read.
    pub fn factor(&self) -> Result<Factor> {
        let n = self.cols * self.cols;
        let u = match &*self.stored {
            Stored::Memory(u) => u.clone(),
            Stored::Spilled { file, offset } => read_f32_at(file, *offset, n)
                .with_context(|| format!("reading the GPTQ factor of {} back from its scratch file", self.input_of))?,
        };
        Factor::from_upper(self.cols, u, self.order.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", self.input_of))
    }
}

/// The tensor whose Hessian `name` uses: k and v share q's input, up shares gate's (when the
/// model has that tensor).
pub fn input_key(name: &str, w: &Weights) -> String {
    for (from, to) in [
        (".attn_k.weight", ".attn_q.weight"),
        (".attn_v.weight", ".attn_q.weight"),
        (".ffn_up.weight", ".ffn_gate.weight"),
        (".ffn_up_exps.weight", ".ffn_gate_exps.weight"),
    ] {
        if let Some(stem) = name.strip_suffix(from) {
            let key = format!("{stem}{to}");
            if w.has(&key) {
                return key;
            }
        }
    }
    name.to_string()
}

/// One Hessian while its layer runs: the lower triangle of `Σ x xᵀ` in f64.
struct Acc {
    cols: usize,
    h: Vec<f64>,
    tokens: u64,
}

/// Where one call's inputs of an expert were put while its layer runs.
enum Piece {
    /// In the activation scratch file: byte offset, f32 values.
    File(u64, usize),
    /// In memory (no scratch file).
    Memory(Vec<f32>),
}

/// The experts' inputs of the layer running, per (tensor, expert).
#[derive(Default)]
struct Routed {
    spill: F32Spill,
    pieces: BTreeMap<(String, usize), Vec<Piece>>,
}

impl Routed {
    fn push(&mut self, key: (String, usize), x: &[f32]) {
        let piece = match self.spill.append(x) {
            Some(offset) => Piece::File(offset, x.len()),
            None => Piece::Memory(x.to_vec()),
        };
        self.pieces.entry(key).or_default().push(piece);
    }

    /// Reads one piece back.
    fn read(&self, piece: &Piece) -> Result<Vec<f32>> {
        match piece {
            Piece::Memory(v) => Ok(v.clone()),
            Piece::File(offset, n) => {
                let file = self.spill.file().context("internal error: no activation scratch file")?;
                read_f32_at(file, *offset, *n).context("reading expert inputs back from their scratch file")
            }
        }
    }
}

/// The probe: accumulates the Hessians of the wanted inputs (dense) and keeps the routed
/// inputs of the wanted experts.
struct Collector {
    keys: HashMap<String, usize>,
    /// Stacked expert tensors: columns.
    expert_keys: HashMap<String, usize>,
    current: Mutex<BTreeMap<String, Acc>>,
    routed: Mutex<Routed>,
}

impl Probe for Collector {
    fn input(&self, name: &str, first: u64, rows: u64, x: &[f32]) {
        if let Some(&cols) = self.expert_keys.get(name) {
            if cols == 0 || rows == 0 || !x.len().is_multiple_of(cols) || !first.is_multiple_of(rows) {
                return;
            }
            let e = (first / rows) as usize;
            self.routed.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_string(), e), x);
            return;
        }
        let Some(&cols) = self.keys.get(name) else { return };
        if first != 0 || cols == 0 || !x.len().is_multiple_of(cols) {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let acc = current.entry(name.to_string()).or_insert_with(|| Acc { cols, h: vec![0.0; cols * cols], tokens: 0 });
        add_outer(x, cols, &mut acc.h);
        acc.tokens += (x.len() / cols) as u64;
    }
}

/// `h[i][k] += Σ_t x[t][i] · x[t][k]` for `k ≤ i` (`x` is [t, cols]); the group's sums in f32,
/// added to `h` in f64. Rows of `h` in parallel; the result does not depend on the thread count.
fn add_outer(x: &[f32], cols: usize, h: &mut [f64]) {
    let t = x.len() / cols;
    let mut xt = vec![0f32; cols * t];
    for (k, row) in x.chunks_exact(cols).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            xt[i * t + k] = v;
        }
    }
    h.par_chunks_mut(cols).enumerate().for_each_init(Vec::new, |out: &mut Vec<f32>, (i, hrow)| {
        out.resize(i + 1, 0.0);
        moeq_kernels::dot::dot_rows(&xt[i * t..(i + 1) * t], &xt[..(i + 1) * t], out);
        for (a, &b) in hrow.iter_mut().zip(out.iter()) {
            *a += b as f64;
        }
    });
}

/// One factored Hessian: input name, columns, tokens, `diag(H) / tokens`, the factor.
type Factored = (String, usize, u64, Vec<f32>, Result<Factor, moeq_kernels::gptq::GptqError>);

/// Symmetrizes a summed Hessian (lower triangle) and factors it for the act-order sweep.
fn factor(name: String, mut acc: Acc) -> Factored {
    let n = acc.cols;
    for i in 0..n {
        for k in 0..i {
            acc.h[k * n + i] = acc.h[i * n + k];
        }
    }
    let tokens = acc.tokens.max(1);
    let diag = (0..n).map(|i| (acc.h[i * n + i] / tokens as f64) as f32).collect();
    // GPTQ's act-order: columns by decreasing diag H (on SmolLM2 Q3_K_M, KLD 0.0453
    // against 0.0554 left to right; docs/rounding.md).
    let f = Factor::from_hessian_ordered(&acc.h, n, DAMP, true);
    (name, n, acc.tokens, diag, f)
}

/// The finished factors, spilled.
struct Finished {
    spill: F32Spill,
    done: HashMap<String, Arc<TensorRounding>>,
    /// Per stacked tensor: per expert, routed tokens and factor.
    experts: BTreeMap<String, BTreeMap<usize, ExpertFactor>>,
}

impl Finished {
    /// Factors every Hessian of the layer just run (in parallel) and stores them.
    fn finish(&mut self, current: BTreeMap<String, Acc>) -> Result<()> {
        let factored: Vec<Factored> = current.into_par_iter().map(|(name, acc)| factor(name, acc)).collect();
        for (name, cols, tokens, diag, f) in factored {
            let f = f.map_err(|e| anyhow::anyhow!("the calibration Hessian of {name}'s input: {e}"))?;
            let stored = Arc::new(self.store(f.upper()));
            let order = f.order().to_vec();
            self.done
                .insert(name.clone(), Arc::new(TensorRounding { input_of: name, cols, tokens, diag, order, stored }));
        }
        Ok(())
    }

    /// Sums the Hessian of every expert whose inputs `routed` holds (the layer just run),
    /// factors those with at least [`MIN_EXPERT_TOKENS`] tokens, a few at a time, and stores
    /// them.
    fn finish_experts(&mut self, routed: &Routed, cols_of: &HashMap<String, usize>) -> Result<()> {
        let keys: Vec<&(String, usize)> = routed.pieces.keys().collect();
        for batch in keys.chunks(EXPERTS_AT_ONCE) {
            let factored: Vec<Result<(String, usize, Factored)>> = batch
                .par_iter()
                .map(|&key| {
                    let (name, e) = key;
                    let n = cols_of[name];
                    let pieces = &routed.pieces[key];
                    let tokens: u64 = pieces
                        .iter()
                        .map(|p| match p {
                            Piece::File(_, v) => (*v / n) as u64,
                            Piece::Memory(v) => (v.len() / n) as u64,
                        })
                        .sum();
                    let label = format!("{name} expert {e}");
                    if tokens < MIN_EXPERT_TOKENS {
                        let none = Err(moeq_kernels::gptq::GptqError::Length(String::new()));
                        return Ok((name.clone(), *e, (label, n, tokens, Vec::new(), none)));
                    }
                    let mut acc = Acc { cols: n, h: vec![0.0; n * n], tokens };
                    for p in pieces {
                        let x = routed.read(p)?;
                        add_outer(&x, n, &mut acc.h);
                    }
                    Ok((name.clone(), *e, factor(label, acc)))
                })
                .collect();
            for f in factored {
                let (name, e, (label, cols, tokens, diag, f)) = f?;
                if tokens < MIN_EXPERT_TOKENS {
                    self.experts.entry(name).or_default().insert(e, (tokens, None));
                    continue;
                }
                let f = f.map_err(|err| anyhow::anyhow!("the calibration Hessian of {label}'s input: {err}"))?;
                let stored = Arc::new(self.store(f.upper()));
                let order = f.order().to_vec();
                let t = TensorRounding { input_of: label, cols, tokens, diag, order, stored };
                self.experts.entry(name).or_default().insert(e, (tokens, Some(Arc::new(t))));
            }
        }
        Ok(())
    }

    /// Appends `u` to the scratch file (made at the first call in the system's temporary
    /// folder); keeps it in memory when the file cannot be made or written.
    fn store(&mut self, u: &[f32]) -> Stored {
        match (self.spill.append(u), self.spill.file()) {
            (Some(offset), Some(file)) => Stored::Spilled { file: Arc::clone(file), offset },
            _ => Stored::Memory(u.to_vec()),
        }
    }
}

/// The rounding data [`compute`] found.
#[derive(Default)]
pub struct Computed {
    /// Per 2-D tensor.
    pub matrices: HashMap<String, Arc<TensorRounding>>,
    /// Per stacked expert tensor (`[cols, rows, experts]`).
    pub experts: HashMap<String, Arc<ExpertRounding>>,
}

/// Whether `name` is a stacked expert tensor the forward runs expert by expert.
pub fn is_expert_stack(name: &str) -> bool {
    name.starts_with("blk.") && name.contains("_exps.")
}

/// Runs the model `w` over `chunks` (independent sequences) one layer at a time and returns,
/// for every tensor in `wanted` that has a 2-D weight in the model, its rounding data (tensors
/// sharing an input share one), and for every stacked expert tensor in `wanted` its per-expert
/// data (module docs). The output head (`output.weight`, or `token_embd.weight` when the
/// embeddings are tied) gets the final norm's output.
///
/// Errors: the forward fails (named layer); a Hessian cannot be factored (named input); the
/// experts' scratch file cannot be read back.
pub fn compute(w: &Weights, chunks: &[Vec<u32>], wanted: &HashSet<String>, quiet: bool) -> Result<Computed> {
    let head = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
    let (mut keys, mut expert_keys) = (HashMap::new(), HashMap::new());
    for name in wanted {
        let key = input_key(name, w);
        let ne = w.ne(&key)?;
        if ne.len() < 2 {
            continue;
        }
        if ne.len() == 3 && is_expert_stack(&key) {
            expert_keys.insert(key, ne[0] as usize);
            continue;
        }
        if ne[2..].iter().any(|&d| d != 1) {
            continue;
        }
        keys.insert(key, ne[0] as usize);
    }
    let collector = Arc::new(Collector {
        keys,
        expert_keys,
        current: Mutex::new(BTreeMap::new()),
        routed: Mutex::new(Routed::default()),
    });
    let base = Model::new(w)?;
    let model = Model { probe: Some(collector.clone()), keep_expert_out: false, memo: None, ..base };
    let c = &model.cfg;
    let h = c.n_embd;
    let tokens: Vec<u32> = chunks.iter().flatten().copied().collect();
    let groups = crate::imatrix::chunk_groups(&model, chunks);
    let mut finished = Finished { spill: F32Spill::default(), done: HashMap::new(), experts: BTreeMap::new() };
    let take = |c: &Collector| std::mem::take(&mut *c.current.lock().unwrap_or_else(|p| p.into_inner()));

    let mut x = model.embed(&tokens)?;
    let bar = steps_bar((c.n_layer * groups.len()) as u64, "calibration layers");
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for l in 0..c.n_layer {
        for (first, len, starts) in &groups {
            let xs = &mut x[first * h..(first + len) * h];
            model.layer(l, xs, starts).with_context(|| format!("{}: layer {l}", w.path))?;
            bar.inc(1);
        }
        finished.finish(take(&collector))?;
        let routed = std::mem::take(&mut *collector.routed.lock().unwrap_or_else(|p| p.into_inner()));
        finished.finish_experts(&routed, &collector.expert_keys).with_context(|| format!("{}: layer {l}", w.path))?;
        // The layer's inputs are summed: the scratch file is reused from its start.
        let Routed { mut spill, .. } = routed;
        spill.rewind();
        collector.routed.lock().unwrap_or_else(|p| p.into_inner()).spill = spill;
    }
    if collector.keys.contains_key(head) {
        let cols = collector.keys[head];
        if cols != h {
            bail!("{}: {head} has {cols} columns, the hidden state {h}", w.path);
        }
        let norm = model.t("output_norm.weight")?;
        for (first, len, _) in &groups {
            let out = crate::forward::ops::rmsnorm(&x[first * h..(first + len) * h], &norm, c.rms_eps);
            collector.input(head, 0, 0, &out);
        }
        finished.finish(take(&collector))?;
    }
    bar.finish_and_clear();
    let mut out = Computed::default();
    for name in wanted {
        let key = input_key(name, w);
        if let Some(r) = finished.done.get(&key) {
            out.matrices.insert(name.clone(), Arc::clone(r));
        }
        if let Some(per) = finished.experts.get(&key) {
            let ne = w.ne(&key)?;
            let experts = (0..ne[2] as usize).map(|e| per.get(&e).cloned().unwrap_or((0, None))).collect();
            out.experts.insert(name.clone(), Arc::new(ExpertRounding { input_of: key, rows: ne[1], experts }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_products_add_up() {
        let (t, n) = (37, 70);
        let x: Vec<f32> = (0..t * n).map(|i| ((i * 7919) % 113) as f32 / 50.0 - 1.1).collect();
        let mut h = vec![0.5f64; n * n];
        add_outer(&x, n, &mut h);
        for i in 0..n {
            for k in 0..=i {
                let want: f64 = 0.5 + (0..t).map(|r| x[r * n + i] as f64 * x[r * n + k] as f64).sum::<f64>();
                assert!((h[i * n + k] - want).abs() < 1e-4 * want.abs().max(1.0), "({i}, {k})");
            }
        }
    }
}
