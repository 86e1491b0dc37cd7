//! moeq's own f32 forward pass of the models it converts, on llama.cpp-layout weights:
//! gpt-oss (attention sinks, sliding window on even layers, YaRN RoPE on halves, GQA, router
//! top-k then softmax, interleaved clamped SwiGLU with +1), Mixtral (softmax, top-k,
//! renormalize, SwiGLU experts) and Llama (dense SwiGLU, tied embeddings). It follows the
//! reference implementations (transformers, OpenAI's gpt_oss.torch) rather than llama.cpp
//! where they differ (YaRN's correction range is not rounded).

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;
use moeq_kernels::dot::{dot_block, dot_rows};
use rayon::prelude::*;

use crate::model::weights::Weights;

/// The model family, as the forward sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// gpt-oss.
    GptOss,
    /// Llama and Mixtral (`llama` in GGUF).
    Llama,
}

/// The hyperparameters of the forward, read from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub family: Family,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub rms_eps: f32,
    pub sliding_window: usize,
    /// Inverse frequencies of the rotary pairs, and the factor applied to cos and sin.
    pub inv_freq: Vec<f64>,
    pub rope_scale: f64,
}

fn meta_u(w: &Weights, key: &str) -> Result<usize> {
    w.get(key).and_then(Value::as_u64).map(|v| v as usize).with_context(|| format!("{}: no metadata '{key}'", w.path))
}

fn meta_f(w: &Weights, key: &str) -> Option<f64> {
    w.get(key).and_then(Value::as_f64)
}

impl Config {
    /// Reads the forward's settings from the model's metadata.
    pub fn from_weights(w: &Weights) -> Result<Config> {
        let arch = w.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
        let family = match arch.as_str() {
            "gpt-oss" => Family::GptOss,
            "llama" => Family::Llama,
            other => bail!("{}: moeq's forward runs gpt-oss, Mixtral and Llama, not '{other}'", w.path),
        };
        let k = |s: &str| format!("{arch}.{s}");
        let n_embd = meta_u(w, &k("embedding_length"))?;
        let n_head = meta_u(w, &k("attention.head_count"))?;
        let n_head_kv = meta_u(w, &k("attention.head_count_kv")).unwrap_or(n_head);
        let head_dim = meta_u(w, &k("attention.key_length"))
            .or_else(|_| meta_u(w, &k("rope.dimension_count")))
            .unwrap_or(n_embd / n_head.max(1));
        let theta = meta_f(w, &k("rope.freq_base")).unwrap_or(10000.0);
        let half = head_dim / 2;
        let mut inv_freq: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        let mut rope_scale = 1.0;
        let scaling = w.get(&k("rope.scaling.type")).and_then(Value::as_str).unwrap_or("none");
        let factor = meta_f(w, &k("rope.scaling.factor")).unwrap_or(1.0);
        match scaling {
            "yarn" if factor > 1.0 => {
                // transformers' _compute_yarn_parameters with truncate = false.
                let orig =
                    meta_f(w, &k("rope.scaling.original_context_length")).context("YaRN without original context")?;
                let fast = meta_f(w, &k("rope.scaling.yarn_beta_fast")).unwrap_or(32.0);
                let slow = meta_f(w, &k("rope.scaling.yarn_beta_slow")).unwrap_or(1.0);
                let dim =
                    |rot: f64| head_dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
                let (low, mut high) = (dim(fast), dim(slow));
                if low == high {
                    high += 0.001;
                }
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolate = 1.0 - ramp;
                    *f = *f / factor * (1.0 - extrapolate) + *f * extrapolate;
                }
                rope_scale = 0.1 * factor.ln() + 1.0;
            }
            "linear" if factor > 0.0 => inv_freq.iter_mut().for_each(|f| *f /= factor),
            _ => {}
        }
        if w.has("rope_freqs.weight") {
            let factors = w.all("rope_freqs.weight")?;
            inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= s as f64);
        }
        Ok(Config {
            family,
            n_layer: meta_u(w, &k("block_count"))?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_expert: meta_u(w, &k("expert_count")).unwrap_or(0),
            n_expert_used: meta_u(w, &k("expert_used_count")).unwrap_or(0),
            rms_eps: meta_f(w, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            sliding_window: meta_u(w, &k("attention.sliding_window")).unwrap_or(0),
            inv_freq,
            rope_scale,
        })
    }
}

/// What a forward pass returns.
#[derive(Default)]
pub struct Trace {
    /// [T, vocab]; shared, so a run that takes them from another (see [`Reuse`]) does not copy
    /// them.
    pub logits: std::sync::Arc<Vec<f32>>,
    /// The embedding output, the residual stream after each layer, then the final norm's
    /// output: L + 1 tensors of [T, hidden].
    pub hidden: Vec<Vec<f32>>,
    /// Per layer, the MoE block's normalized input and its output (before the residual).
    pub moe_in: Vec<Vec<f32>>,
    pub moe_out: Vec<Vec<f32>>,
    /// Per layer, the experts each token was routed to.
    pub routes: Vec<Vec<Vec<usize>>>,
    /// Per layer and token, each routed expert's output (in `routes` order).
    pub expert_out: Vec<Vec<Vec<Vec<f32>>>>,
    /// The residual stream after the last layer (before the final norm).
    pub residual: Vec<f32>,
    /// The layers taken from another run instead of computed (see [`Reuse`]).
    pub reused_layers: Vec<usize>,
    /// Whether the final norm and the logits were taken from another run.
    pub reused_head: bool,
}

/// What a run may take from an earlier run of another model instead of computing it: the
/// layers whose tensors are bit-identical to that model's, when both share one [`Config`].
/// The forward is deterministic, so a layer with the same weights, the same hyperparameters
/// and the same input bits produces the same output bits; each layer's input is compared
/// before its results are taken.
pub struct Reuse<'t> {
    /// The earlier run, on the same sequences.
    pub trace: &'t Trace,
    /// Per layer: every tensor of the layer is bit-identical.
    pub layers: Vec<bool>,
    /// The final norm and the head are bit-identical.
    pub head: bool,
}

/// Whether two slices hold the same bits (so +0 and −0 differ).
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A feed-forward block's output, with its routing.
pub struct FfnOutput {
    /// [T, hidden], before the residual add.
    pub out: Vec<f32>,
    /// The experts each token was routed to (empty for a dense block).
    pub routes: Vec<Vec<usize>>,
    /// Each routed expert's output per token, in `routes` order (before weighting).
    pub expert_out: Vec<Vec<Vec<f32>>>,
}

/// A model ready to run.
pub struct Model<'w, 'a> {
    pub w: &'w Weights<'a>,
    pub cfg: Config,
}

/// Weight rows decoded per task of [`Model::project`] (twenty blocks of three): a few hundred
/// KB of f32 that stay in cache while every token is multiplied with them (measured best
/// among 15–240 on the gpt-oss benchmark).
const TILE_ROWS: u64 = 60;

/// Tiles computed together before their results are put in place (about 8k rows).
const TILES_PER_RUN: u64 = 128;

/// `out[r · t + k] = Σ_i tile[r][i] · x[k][i] + bias[r]`: one tile of weight rows against all
/// `t` tokens, three rows by four tokens at a time. Every result is one `dot_block` value, so
/// it does not depend on how the rows were split into tiles.
fn multiply_tile(x: &[f32], tile: &[f32], cols: usize, bias: Option<&[f32]>, out: &mut Vec<f32>) {
    let n = tile.len() / cols.max(1);
    let t = x.len() / cols.max(1);
    out.clear();
    out.resize(n * t, 0.0);
    let mut block = [0.0f32; 16];
    for (g, xs) in x.chunks(4 * cols).enumerate() {
        let m = xs.len() / cols;
        for (q, rows3) in tile.chunks(3 * cols).enumerate() {
            let p = rows3.len() / cols;
            dot_block(rows3, xs, cols, &mut block[..p * m]);
            for r in 0..p {
                let add = bias.map_or(0.0, |bias| bias[q * 3 + r]);
                for j in 0..m {
                    out[(q * 3 + r) * t + g * 4 + j] = block[r * m + j] + add;
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0.0f32];
    dot_rows(b, a, &mut out);
    out[0]
}

fn rmsnorm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let n = g.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let ms = x.iter().map(|v| (v * v) as f64).sum::<f64>() / n as f64;
        let r = 1.0 / ((ms as f32) + eps).sqrt();
        for ((o, x), g) in o.iter_mut().zip(x).zip(g) {
            *o = x * r * g;
        }
    }
    out
}

fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

impl<'w, 'a> Model<'w, 'a> {
    /// Reads the configuration.
    pub fn new(w: &'w Weights<'a>) -> Result<Model<'w, 'a>> {
        Ok(Model { cfg: Config::from_weights(w)?, w })
    }

    /// The tensor the logits come from: `output.weight`, or the embedding when tied.
    pub fn head_weight(&self) -> &'static str {
        if self.w.has("output.weight") { "output.weight" } else { "token_embd.weight" }
    }

    fn t(&self, name: &str) -> Result<Vec<f32>> {
        self.w.all(name)
    }

    /// `x · Wᵀ (+ b)`, reading the weight in slices of rows so a large matrix (the output
    /// head) is never decoded whole.
    fn linear(&self, x: &[f32], name: &str, bias: bool) -> Result<Vec<f32>> {
        let weight = format!("{name}.weight");
        let rows = self.w.ne(&weight)?.get(1).copied().unwrap_or(1);
        let b = if bias { Some(self.t(&format!("{name}.bias"))?) } else { None };
        self.project(x, &weight, 0, rows, b.as_deref())
    }

    /// `y[k][o] = Σ_i x[k][i] · W[first + o][i] (+ bias[o])` for rows `first..first + rows` of
    /// weight `name`. The rows are decoded tile by tile, each tile on whichever thread takes it
    /// and multiplied with every token while it is in cache, so decoding runs on all cores and
    /// no decoded matrix is ever held whole.
    fn project(&self, x: &[f32], name: &str, first: u64, rows: u64, bias: Option<&[f32]>) -> Result<Vec<f32>> {
        let cols = self.w.ne(name)?.first().copied().unwrap_or(1) as usize;
        let t = x.len() / cols.max(1);
        let mut y = vec![0.0f32; t * rows as usize];
        // Runs of tiles, so the per-tile results held before they are scattered into `y` stay
        // small even for the output head.
        let run = TILE_ROWS * TILES_PER_RUN;
        for run_start in (0..rows).step_by(run as usize) {
            let run_rows = run.min(rows - run_start);
            let tiles: Vec<u64> = (run_start..run_start + run_rows).step_by(TILE_ROWS as usize).collect();
            let parts: Vec<Vec<f32>> = tiles
                .par_iter()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(tile, out), &start| -> Result<Vec<f32>> {
                        let n = TILE_ROWS.min(rows - start);
                        self.w.rows_into(name, first + start, n, tile)?;
                        let b = bias.map(|b| &b[start as usize..(start + n) as usize]);
                        multiply_tile(x, tile, cols, b, out);
                        Ok(out.clone())
                    },
                )
                .collect::<Result<_>>()?;
            // Token by token, each tile's results go to one contiguous run of `y`.
            for (&start, part) in tiles.iter().zip(&parts) {
                let n = part.len() / t.max(1);
                for (k, y_row) in y.chunks_exact_mut(rows as usize).enumerate() {
                    let dst = &mut y_row[start as usize..start as usize + n];
                    dst.iter_mut().enumerate().for_each(|(r, d)| *d = part[r * t + k]);
                }
            }
        }
        Ok(y)
    }

    /// Runs the model on `tokens`.
    pub fn run(&self, tokens: &[u32]) -> Result<Trace> {
        self.run_batch(&[tokens.to_vec()])
    }

    /// Runs the model on several independent sequences at once (one batch: each weight is
    /// read once for all of them). The trace holds their rows one sequence after the other.
    pub fn run_batch(&self, sequences: &[Vec<u32>]) -> Result<Trace> {
        self.run_batch_reusing(sequences, None)
    }

    /// [`Model::run_batch`], taking from `reuse` (an earlier run on the same sequences) every
    /// layer that it marks identical and whose input bits are unchanged, and the head likewise.
    pub fn run_batch_reusing(&self, sequences: &[Vec<u32>], reuse: Option<&Reuse>) -> Result<Trace> {
        let c = &self.cfg;
        let tokens: Vec<u32> = sequences.iter().flatten().copied().collect();
        // For each row: the row where its sequence starts.
        let starts: Vec<usize> = sequences
            .iter()
            .scan(0, |at, s| {
                let start = *at;
                *at += s.len();
                Some(std::iter::repeat_n(start, s.len()))
            })
            .flatten()
            .collect();
        let (h, t) = (c.n_embd, tokens.len());
        let vocab = *self.w.ne("token_embd.weight")?.get(1).unwrap_or(&0) as usize;
        let mut x = Vec::with_capacity(t * h);
        for &tok in &tokens {
            if tok as usize >= vocab {
                bail!("token {tok} is outside the vocabulary ({vocab} tokens)");
            }
            x.extend(self.w.rows("token_embd.weight", tok as u64, 1)?);
        }
        let mut trace = Trace { hidden: vec![x.clone()], ..Trace::default() };
        for l in 0..c.n_layer {
            if let Some(r) = reuse
                .filter(|r| r.layers.get(l) == Some(&true) && r.trace.hidden.get(l).is_some_and(|h| same_bits(&x, h)))
            {
                let from = r.trace;
                trace.moe_in.push(from.moe_in[l].clone());
                trace.moe_out.push(from.moe_out[l].clone());
                trace.routes.push(from.routes[l].clone());
                trace.expert_out.push(from.expert_out[l].clone());
                x = if l + 1 < c.n_layer { from.hidden[l + 1].clone() } else { from.residual.clone() };
                trace.hidden.push(x.clone());
                trace.reused_layers.push(l);
                continue;
            }
            let attn = self.attention(l, &x, &starts)?;
            x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
            let norm = if c.family == Family::GptOss { "post_attention_norm" } else { "ffn_norm" };
            let m_in = rmsnorm(&x, &self.t(&format!("blk.{l}.{norm}.weight"))?, c.rms_eps);
            let FfnOutput { out: m_out, routes, expert_out } = self.ffn_detailed(l, &m_in)?;
            trace.expert_out.push(expert_out);
            x.iter_mut().zip(&m_out).for_each(|(a, b)| *a += b);
            trace.moe_in.push(m_in);
            trace.moe_out.push(m_out);
            trace.routes.push(routes);
            trace.hidden.push(x.clone());
        }
        if let Some(r) = reuse.filter(|r| r.head && same_bits(&x, &r.trace.residual)) {
            *trace.hidden.last_mut().unwrap_or(&mut Vec::new()) = r.trace.hidden[c.n_layer].clone();
            trace.logits = r.trace.logits.clone();
            trace.residual = x;
            trace.reused_head = true;
            return Ok(trace);
        }
        let out = rmsnorm(&x, &self.t("output_norm.weight")?, c.rms_eps);
        *trace.hidden.last_mut().unwrap_or(&mut Vec::new()) = out.clone();
        let head = self.head_weight().trim_end_matches(".weight");
        trace.logits = std::sync::Arc::new(self.linear(&out, head, false)?);
        trace.residual = x;
        Ok(trace)
    }

    fn rope(&self, v: &mut [f32], heads: usize, starts: &[usize]) {
        let c = &self.cfg;
        let (hd, half) = (c.head_dim, c.head_dim / 2);
        for (row, &start) in starts.iter().enumerate() {
            let p = row - start;
            for hh in 0..heads {
                let x = &mut v[(row * heads + hh) * hd..(row * heads + hh + 1) * hd];
                for (i, f) in c.inv_freq.iter().enumerate() {
                    let angle = p as f64 * f;
                    let (sin, cos) = ((angle.sin() * c.rope_scale) as f32, (angle.cos() * c.rope_scale) as f32);
                    // gpt-oss (NEOX): halves; llama's GGUF q/k rows are permuted to pairs.
                    let (a, b) = if c.family == Family::GptOss { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (x[a], x[b]);
                    x[a] = x0 * cos - x1 * sin;
                    x[b] = x1 * cos + x0 * sin;
                }
            }
        }
    }

    fn attention(&self, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        let t = starts.len();
        let c = &self.cfg;
        let gpt = c.family == Family::GptOss;
        let a_in = rmsnorm(x, &self.t(&format!("blk.{l}.attn_norm.weight"))?, c.rms_eps);
        let mut q = self.linear(&a_in, &format!("blk.{l}.attn_q"), gpt)?;
        let mut k = self.linear(&a_in, &format!("blk.{l}.attn_k"), gpt)?;
        let v = self.linear(&a_in, &format!("blk.{l}.attn_v"), gpt)?;
        self.rope(&mut q, c.n_head, starts);
        self.rope(&mut k, c.n_head_kv, starts);
        let sinks = if gpt { Some(self.t(&format!("blk.{l}.attn_sinks.weight"))?) } else { None };
        let window = if gpt && l.is_multiple_of(2) { c.sliding_window } else { 0 };
        let hd = c.head_dim;
        let group = c.n_head / c.n_head_kv.max(1);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut o = vec![0.0f32; t * c.n_head * hd];
        o.par_chunks_mut(c.n_head * hd).enumerate().for_each(|(i, oi)| {
            for hh in 0..c.n_head {
                let kv = hh / group.max(1);
                let qi = &q[(i * c.n_head + hh) * hd..][..hd];
                let start = starts[i];
                let mut s: Vec<f32> = (start..=i)
                    .map(|j| {
                        if window > 0 && i - j >= window {
                            f32::NEG_INFINITY
                        } else {
                            dot(qi, &k[(j * c.n_head_kv + kv) * hd..][..hd]) * scale
                        }
                    })
                    .collect();
                if let Some(sinks) = &sinks {
                    s.push(sinks[hh]);
                }
                softmax(&mut s);
                let out = &mut oi[hh * hd..(hh + 1) * hd];
                for (j, p) in (start..=i).zip(&s) {
                    let vj = &v[(j * c.n_head_kv + kv) * hd..][..hd];
                    out.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
                }
            }
        });
        self.linear(&o, &format!("blk.{l}.attn_output"), gpt)
    }

    /// The feed-forward block of layer `l` on normalized input `x` [T, hidden]: its output and,
    /// for MoE layers, the experts each token was routed to.
    pub fn ffn(&self, l: usize, x: &[f32]) -> Result<(Vec<f32>, Vec<Vec<usize>>)> {
        let f = self.ffn_detailed(l, x)?;
        Ok((f.out, f.routes))
    }

    /// [`Model::ffn`], with each routed expert's own output.
    pub fn ffn_detailed(&self, l: usize, x: &[f32]) -> Result<FfnOutput> {
        let c = &self.cfg;
        let h = c.n_embd;
        let t = x.len() / h;
        if c.n_expert == 0 {
            let g = self.linear(x, &format!("blk.{l}.ffn_gate"), false)?;
            let u = self.linear(x, &format!("blk.{l}.ffn_up"), false)?;
            let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let out = self.linear(&a, &format!("blk.{l}.ffn_down"), false)?;
            return Ok(FfnOutput { out, routes: Vec::new(), expert_out: Vec::new() });
        }
        let gpt = c.family == Family::GptOss;
        let logits = self.linear(x, &format!("blk.{l}.ffn_gate_inp"), gpt)?;
        let mut routes = Vec::with_capacity(t);
        let mut weights = Vec::with_capacity(t);
        for row in logits.chunks_exact(c.n_expert) {
            let mut order: Vec<usize> = (0..c.n_expert).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(c.n_expert_used);
            let w = if gpt {
                let mut v: Vec<f32> = order.iter().map(|&e| row[e]).collect();
                softmax(&mut v);
                v
            } else {
                let mut all = row.to_vec();
                softmax(&mut all);
                let sum: f32 = order.iter().map(|&e| all[e]).sum();
                order.iter().map(|&e| all[e] / sum).collect()
            };
            routes.push(order);
            weights.push(w);
        }
        let mut out = vec![0.0f32; t * h];
        let mut expert_out: Vec<Vec<Vec<f32>>> = routes.iter().map(|r| vec![Vec::new(); r.len()]).collect();
        for e in 0..c.n_expert {
            let picked: Vec<(usize, f32)> = routes
                .iter()
                .zip(&weights)
                .enumerate()
                .filter_map(|(i, (r, w))| r.iter().position(|&x| x == e).map(|k| (i, w[k])))
                .collect();
            if picked.is_empty() {
                continue;
            }
            let xe: Vec<f32> = picked.iter().flat_map(|&(i, _)| x[i * h..(i + 1) * h].iter().copied()).collect();
            let ye = self.expert(l, e, &xe)?;
            for (k, &(i, w)) in picked.iter().enumerate() {
                let y = &ye[k * h..(k + 1) * h];
                out[i * h..(i + 1) * h].iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
                if let Some(slot) = routes[i].iter().position(|&x| x == e) {
                    expert_out[i][slot] = y.to_vec();
                }
            }
        }
        Ok(FfnOutput { out, routes, expert_out })
    }

    /// Expert `e` of layer `l` on rows `x` [n, hidden].
    pub fn expert(&self, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        let gpt = self.cfg.family == Family::GptOss;
        // Expert e's rows of a stacked tensor, and its bias (gpt-oss), applied to `input`.
        let project = |name: &str, input: &[f32]| -> Result<Vec<f32>> {
            let w = format!("blk.{l}.{name}.weight");
            let rows = self.w.ne(&w)?[1];
            let bias = if gpt { Some(self.w.rows(&format!("blk.{l}.{name}.bias"), e as u64, 1)?) } else { None };
            self.project(input, &w, e as u64 * rows, rows, bias.as_deref())
        };
        let g = project("ffn_gate_exps", x)?;
        let u = project("ffn_up_exps", x)?;
        let a: Vec<f32> = if gpt {
            g.iter()
                .zip(&u)
                .map(|(&g, &u)| {
                    let g = g.min(7.0);
                    let u = u.clamp(-7.0, 7.0);
                    g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
                })
                .collect()
        } else {
            g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
        };
        project("ffn_down_exps", &a)
    }
}
