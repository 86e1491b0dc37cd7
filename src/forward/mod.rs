//! moeq's own f32 forward pass of the models it converts, on llama.cpp-layout weights. The
//! layers every family shares are here: the layer loop ([`Model::run_batch`]), the attention
//! core ([`attention`]), RMSNorm and softmax ([`ops`]), RoPE with YaRN ([`config`]), tiled
//! projections ([`linear`]) and the routed-experts and dense blocks ([`moe`]). A family's
//! [`Blocks`] choose among them (gpt-oss: attention sinks, sliding window on even layers, RoPE
//! on halves, biases, router top-k then softmax, clamped SwiGLU with +1; Mixtral: softmax,
//! top-k, renormalize; Llama: dense SwiGLU). It follows the reference implementations
//! (transformers, OpenAI's gpt_oss.torch) rather than llama.cpp where they differ (YaRN's
//! correction range is not rounded).
//!
//! [`Config::new`] reads the hyperparameters and checks them against every tensor the forward
//! will index before anything runs.

pub mod attention;
pub mod check;
pub mod config;
pub mod linear;
pub mod memo;
pub mod moe;
pub mod ops;

use anyhow::{Result, bail};

pub use attention::{Attention, Heads, RopePairs, attend};
pub use check::{check_gguf_bytes, check_model};
pub use config::{Config, Expect, Hp, Meta, Sizes};

use crate::model::weights::Weights;
use ops::rmsnorm;

/// What a family's forward does its own way; the shared layers call these. The defaults are
/// the shared blocks; a family overrides what it computes differently, building on the shared
/// pieces ([`Model::attention`], [`attend`], [`moe::routed`], [`moe::dispatch`], [`moe::dense`]).
pub trait Blocks: Sync {
    /// The family's own hyperparameters beyond [`Config`]'s, read once from the metadata
    /// (errors naming the file and key) and kept in [`Config::extra`].
    fn hparams(&self, _meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        Ok(Vec::new())
    }

    /// The family's own tensor sizes (e.g. a second feed-forward width, latent ranks), read
    /// from the metadata with their keys, for [`Blocks::attention_tensors`] and
    /// [`Blocks::layer_tensors`] ([`Sizes::extra`]).
    fn sizes(&self, _meta: &Meta) -> Result<Vec<(&'static str, Hp)>> {
        Ok(Vec::new())
    }

    /// Whether `attention.value_length`, when present, must equal the head size (`key_length`):
    /// true for every family whose values are as wide as its keys (llama.cpp then expects
    /// `attn_v` of that width); DeepSeek's MLA differs.
    fn value_length_is_head_size(&self) -> bool {
        true
    }

    /// Whether YaRN's correction range is rounded to whole dimensions (transformers'
    /// `truncate`, its default and llama.cpp's way); gpt-oss's config turns it off.
    fn yarn_truncate(&self) -> bool {
        false
    }

    /// The attention settings of layer `l` (for the shared attention).
    fn attention(&self, cfg: &Config, l: usize) -> Attention;

    /// The attention block of layer `l` on the residual stream `x` [T, hidden] (its norm
    /// included), before the residual add; `starts[i]` is the row where row i's sequence
    /// starts.
    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        m.attention(l, x, starts, self.attention(&m.cfg, l))
    }

    /// The attention tensors of layer `l`, with the shapes the hyperparameters give, for
    /// [`Config::new`]'s checks.
    fn attention_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        let (q, kv) = (s.q(), s.kv());
        vec![
            Expect::new(t("attn_norm"), &[&s.n_embd]),
            Expect::new(t("attn_q"), &[&s.n_embd, &q]),
            Expect::new(t("attn_k"), &[&s.n_embd, &kv]),
            Expect::new(t("attn_v"), &[&s.n_embd, &kv]),
            Expect::new(t("attn_output"), &[&q, &s.n_embd]),
        ]
    }

    /// The norm before the feed-forward block (`blk.N.{name}.weight`).
    fn ffn_norm(&self) -> &'static str {
        "ffn_norm"
    }

    /// The GGUF key (without the architecture prefix) of the feed-forward width.
    fn ffn_length_key(&self) -> &'static str {
        "feed_forward_length"
    }

    /// The feed-forward block of layer `l` on normalized input `x` [T, hidden].
    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput>;

    /// Expert `e` of layer `l` on rows `x` [n, hidden] (MoE families).
    fn expert(&self, _m: &Model, _l: usize, _e: usize, _x: &[f32]) -> Result<Vec<f32>> {
        bail!("a dense model has no experts")
    }

    /// The other tensors of layer `l` (the feed-forward block's, and any the attention adds to
    /// [`Blocks::attention_tensors`]), with the shapes the hyperparameters give, for
    /// [`Config::new`]'s checks.
    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect>;
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

/// Sees the input of every weight multiplication of a forward pass ([`Model::project`]): what
/// an importance matrix collects. Called on the thread that runs the pass, before the product
/// is computed.
pub trait Probe: Send + Sync {
    /// `x` ([t, cols], row-major) is multiplied with rows `first..first + rows` of weight
    /// `name` (for a stacked expert tensor [cols, rows per expert, experts]: one expert's rows).
    fn input(&self, name: &str, first: u64, rows: u64, x: &[f32]);
}

/// A model ready to run.
pub struct Model<'w, 'a> {
    /// Its tensors.
    pub w: &'w Weights<'a>,
    /// Its hyperparameters, checked against the tensors.
    pub cfg: Config,
    /// Its family's blocks.
    pub blocks: &'static dyn Blocks,
    /// Sees every weight multiplication's input (none by default; `moeq imatrix` sets one).
    pub probe: Option<std::sync::Arc<dyn Probe>>,
    /// Whether MoE blocks keep each routed expert's own output per token
    /// ([`FfnOutput::expert_out`], for verify's per-expert check; on by default). Runs that do
    /// not need them turn it off: they take tokens × experts used × hidden values.
    pub keep_expert_out: bool,
    /// Recorded projections of a reference run, reused by runs that change little of it
    /// ([`memo::Memo`]; none by default).
    pub memo: Option<std::sync::Arc<memo::Memo>>,
}

impl<'w, 'a> Model<'w, 'a> {
    /// Reads the hyperparameters and checks them against the tensors ([`Config::new`]).
    pub fn new(w: &'w Weights<'a>) -> Result<Model<'w, 'a>> {
        let (cfg, family) = Config::new(w)?;
        Ok(Model { cfg, w, blocks: family.forward(), probe: None, keep_expert_out: true, memo: None })
    }

    /// The tensor the logits come from: `output.weight`, or the embedding when tied.
    pub fn head_weight(&self) -> &'static str {
        if self.w.has("output.weight") { "output.weight" } else { "token_embd.weight" }
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
        let mut x = self.embed(&tokens)?;
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
            let (m_in, FfnOutput { out: m_out, routes, expert_out }) = self.layer(l, &mut x, &starts)?;
            trace.expert_out.push(expert_out);
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

    /// The embeddings of `tokens` [T, hidden]: the residual stream entering layer 0.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let vocab = *self.w.ne("token_embd.weight")?.get(1).unwrap_or(&0) as usize;
        let mut x = Vec::with_capacity(tokens.len() * self.cfg.n_embd);
        for &tok in tokens {
            if tok as usize >= vocab {
                bail!("token {tok} is outside the vocabulary ({vocab} tokens)");
            }
            x.extend(self.w.rows("token_embd.weight", tok as u64, 1)?);
        }
        Ok(x)
    }

    /// Layer `l` on the residual stream `x` [T, hidden], in place: the attention block (rows
    /// attend within their sequence: `starts[i]` is the row where row i's sequence starts) and
    /// its residual add, the feed-forward norm, the feed-forward block and its residual add.
    /// Returns the feed-forward block's normalized input and its output (before the add).
    pub fn layer(&self, l: usize, x: &mut [f32], starts: &[usize]) -> Result<(Vec<f32>, FfnOutput)> {
        self.attention_residual(l, x, starts)?;
        self.ffn_residual(l, x)
    }

    /// The first half of [`Model::layer`]: layer `l`'s attention block on the residual stream
    /// `x` [T, hidden] and its residual add, in place (`starts` as for [`Model::layer`]).
    pub fn attention_residual(&self, l: usize, x: &mut [f32], starts: &[usize]) -> Result<()> {
        let attn = self.blocks.attention_block(self, l, x, starts)?;
        x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// The second half of [`Model::layer`]: the feed-forward norm, the feed-forward block and
    /// its residual add on `x` [T, hidden], in place (rows are independent). Returns the block's
    /// normalized input and its output (before the add).
    pub fn ffn_residual(&self, l: usize, x: &mut [f32]) -> Result<(Vec<f32>, FfnOutput)> {
        let norm = self.blocks.ffn_norm();
        let m_in = rmsnorm(x, &self.t(&format!("blk.{l}.{norm}.weight"))?, self.cfg.rms_eps);
        let f = self.ffn_detailed(l, &m_in)?;
        x.iter_mut().zip(&f.out).for_each(|(a, b)| *a += b);
        Ok((m_in, f))
    }

    /// The feed-forward block of layer `l` on normalized input `x` [T, hidden]: its output and,
    /// for MoE layers, the experts each token was routed to.
    pub fn ffn(&self, l: usize, x: &[f32]) -> Result<(Vec<f32>, Vec<Vec<usize>>)> {
        let f = self.ffn_detailed(l, x)?;
        Ok((f.out, f.routes))
    }

    /// [`Model::ffn`], with each routed expert's own output.
    pub fn ffn_detailed(&self, l: usize, x: &[f32]) -> Result<FfnOutput> {
        self.blocks.ffn(self, l, x)
    }

    /// Expert `e` of layer `l` on rows `x` [n, hidden].
    pub fn expert(&self, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        self.blocks.expert(self, l, e, x)
    }
}
