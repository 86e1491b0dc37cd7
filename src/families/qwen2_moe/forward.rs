//! Qwen2-MoE's forward blocks (transformers' `Qwen2MoeForCausalLM`), and what Qwen3-MoE's
//! share with them: attention with RoPE on halves (NEOX: the converter leaves q/k rows in
//! Hugging Face's order), q/k/v biases (Qwen2) or q/k RMS norms per head (Qwen3); MoE with a
//! router without bias, softmax over all experts, top-k, the chosen weights renormalized or
//! not (`norm_topk_prob`), SwiGLU experts; Qwen2-MoE adds a shared SwiGLU expert scaled by
//! `σ(x · ffn_gate_inp_shexp)` per token.

use anyhow::Result;

use crate::forward::moe::{self, Moe, top_k};
use crate::forward::ops::{rmsnorm, softmax, swiglu};
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Heads, Hp, Meta, Model, RopePairs, Sizes, attend};

/// Qwen2-MoE's blocks.
pub struct Qwen2MoeBlocks;

/// The routed experts of Qwen's MoE families: softmax over all experts, top-k, then the
/// chosen probabilities renormalized to sum to 1 (`norm_topk_prob`).
pub const MOE_NORM: Moe = Moe { bias: false, route: route_softmax_top_k_norm, act: swiglu };

/// The same with the chosen probabilities used as they are (Qwen2-MoE).
pub const MOE_PLAIN: Moe = Moe { bias: false, route: route_softmax_top_k, act: swiglu };

/// The top-k experts, weighted by their softmax probabilities over all experts.
fn route_softmax_top_k(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let order = top_k(logits, k);
    let mut all = logits.to_vec();
    softmax(&mut all);
    let w = order.iter().map(|&e| all[e]).collect();
    (order, w)
}

/// The top-k experts, weighted by their softmax probabilities renormalized over the k.
fn route_softmax_top_k_norm(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let (order, w) = route_softmax_top_k(logits, k);
    let sum: f32 = w.iter().sum();
    (order, w.iter().map(|p| p / sum).collect())
}

/// Qwen's attention of layer `l` on the residual stream `x` [T, hidden] (its norm included):
/// q, k, v projections (with biases when `qkv_bias`), each q and k head RMS-normalized by
/// `attn_{q,k}_norm` when `qk_norm` (Qwen3), RoPE on halves, causal softmax attention with
/// GQA and scale 1/√head_dim, and the output projection without bias.
pub fn attention(m: &Model, l: usize, x: &[f32], starts: &[usize], qkv_bias: bool, qk_norm: bool) -> Result<Vec<f32>> {
    let c = &m.cfg;
    let a_in = rmsnorm(x, &m.w.all(&format!("blk.{l}.attn_norm.weight"))?, c.rms_eps);
    let mut q = m.linear(&a_in, &format!("blk.{l}.attn_q"), qkv_bias)?;
    let mut k = m.linear(&a_in, &format!("blk.{l}.attn_k"), qkv_bias)?;
    let v = m.linear(&a_in, &format!("blk.{l}.attn_v"), qkv_bias)?;
    if qk_norm {
        // One RMSNorm per head: rows of head_dim values.
        q = rmsnorm(&q, &m.w.all(&format!("blk.{l}.attn_q_norm.weight"))?, c.rms_eps);
        k = rmsnorm(&k, &m.w.all(&format!("blk.{l}.attn_k_norm.weight"))?, c.rms_eps);
    }
    m.rope(&mut q, c.n_head, starts, RopePairs::Halves);
    m.rope(&mut k, c.n_head_kv, starts, RopePairs::Halves);
    let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, qk_dim: c.head_dim, v_dim: c.head_dim };
    let o = attend(&q, &k, &v, starts, heads, 1.0 / (c.head_dim as f32).sqrt(), None, 0);
    m.linear(&o, &format!("blk.{l}.attn_output"), false)
}

/// The forward's own hyperparameters of Qwen's MoE families, from the keys
/// `QwenMoeConfig::metadata` adds for models no GGUF holds: `expert_weights_norm` (1 or 0;
/// llama.cpp's own rule, `norm`, when absent) and a `dense_layer` entry per dense layer.
pub fn qwen_hparams(meta: &Meta, norm: bool) -> Result<Vec<(&'static str, f64)>> {
    let norm = meta.opt("moeq.expert_weights_norm")?.map_or(norm, |h| h.value != 0);
    let mut out = vec![("expert_weights_norm", if norm { 1.0 } else { 0.0 })];
    out.extend(dense_layers(meta)?.into_iter().map(|l| ("dense_layer", l.value as f64)));
    Ok(out)
}

/// The dense layers (`moeq.dense_layer.N`), each as a size whose value is its index.
pub fn dense_layers(meta: &Meta) -> Result<Vec<Hp>> {
    let n_layer = meta.req("block_count")?.value.min(1 << 16);
    let mut out = Vec::new();
    for l in 0..n_layer {
        if let Some(h) = meta.opt(&format!("moeq.dense_layer.{l}"))?
            && h.value != 0
        {
            out.push(Hp { value: l, from: h.from });
        }
    }
    Ok(out)
}

/// Whether layer `l` is dense, per [`qwen_hparams`].
pub fn is_dense(cfg: &Config, l: usize) -> bool {
    cfg.extra.iter().any(|&(n, v)| n == "dense_layer" && v == l as f64)
}

/// The routed-experts block of Qwen's MoE families on normalized input `x` [T, hidden].
pub fn routed(m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
    moe::routed(m, l, x, qwen_moe(&m.cfg))
}

/// Expert `e` of layer `l` on rows `x` [n, hidden].
pub fn expert(m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
    moe::expert(m, l, e, x, qwen_moe(&m.cfg))
}

fn qwen_moe(cfg: &Config) -> &'static Moe {
    if cfg.extra("expert_weights_norm") == Some(1.0) { &MOE_NORM } else { &MOE_PLAIN }
}

/// The router and stacked experts of MoE layer `l`.
pub fn expert_tensors(s: &Sizes, l: usize) -> Vec<Expect> {
    let t = |name: &str| format!("blk.{l}.{name}.weight");
    let (h, e, f) = (&s.n_embd, &s.n_expert, &s.n_ff);
    vec![
        Expect::new(t("ffn_gate_inp"), &[h, e]),
        Expect::new(t("ffn_gate_exps"), &[h, f, e]),
        Expect::new(t("ffn_up_exps"), &[h, f, e]),
        Expect::new(t("ffn_down_exps"), &[f, h, e]),
    ]
}

impl Blocks for Qwen2MoeBlocks {
    fn hparams(&self, meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        qwen_hparams(meta, false)
    }

    fn sizes(&self, meta: &Meta) -> Result<Vec<(&'static str, Hp)>> {
        let shared = match meta.opt("expert_shared_feed_forward_length")? {
            Some(h) => h,
            None => meta.req("feed_forward_length")?,
        };
        Ok(vec![("shared_ff", shared)])
    }

    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        Attention { bias: true, sinks: false, window: 0, rope: RopePairs::Halves }
    }

    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        attention(m, l, x, starts, true, false)
    }

    fn ffn_length_key(&self) -> &'static str {
        "expert_feed_forward_length"
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        let mut f = routed(m, l, x)?;
        let shared = moe::dense(m, l, x, "_shexp", swiglu)?;
        let gate = m.linear(x, &format!("blk.{l}.ffn_gate_inp_shexp"), false)?;
        let h = m.cfg.n_embd;
        for ((out, sh), g) in f.out.chunks_exact_mut(h).zip(shared.chunks_exact(h)).zip(&gate) {
            let s = 1.0 / (1.0 + (-g).exp());
            out.iter_mut().zip(sh).for_each(|(o, v)| *o += s * v);
        }
        Ok(f)
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        expert(m, l, e, x)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let (q, kv, h) = (s.q(), s.kv(), &s.n_embd);
        let shared = s.extra("shared_ff").cloned().unwrap_or_else(|| s.n_ff.clone());
        let t = |name: &str| format!("blk.{l}.{name}");
        let one = Hp { value: 1, from: "the shared expert's one gate".into() };
        let mut x = vec![
            Expect::new(t("attn_q.bias"), &[&q]),
            Expect::new(t("attn_k.bias"), &[&kv]),
            Expect::new(t("attn_v.bias"), &[&kv]),
        ];
        x.extend(expert_tensors(s, l));
        x.extend([
            Expect::new(t("ffn_gate_inp_shexp.weight"), &[h, &one]),
            Expect::new(t("ffn_gate_shexp.weight"), &[h, &shared]),
            Expect::new(t("ffn_up_shexp.weight"), &[h, &shared]),
            Expect::new(t("ffn_down_shexp.weight"), &[&shared, h]),
        ]);
        x
    }
}
