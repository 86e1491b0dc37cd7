//! gpt-oss's forward blocks (transformers' `GptOssForCausalLM`, OpenAI's gpt_oss.torch):
//! attention with biases and a learned sink per head, a sliding window on even layers, RoPE on
//! halves (NEOX); MoE with a biased router, top-k then softmax over the chosen logits, and
//! biased experts with the clamped SwiGLU `(u + 1) · g · σ(1.702 g)` (g ≤ 7, |u| ≤ 7).

use anyhow::Result;

use crate::forward::moe::{self, Moe, top_k};
use crate::forward::ops::softmax;
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Model, RopePairs, Sizes};

/// gpt-oss's blocks.
pub struct GptOssBlocks;

/// The MoE block: biases, top-k then softmax, clamped SwiGLU with +1.
const MOE: Moe = Moe { bias: true, route: route_top_k_softmax, act: clamped_swiglu };

/// The top-k experts, weighted by the softmax of their logits.
fn route_top_k_softmax(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let order = top_k(logits, k);
    let mut w: Vec<f32> = order.iter().map(|&e| logits[e]).collect();
    softmax(&mut w);
    (order, w)
}

/// gpt-oss's activation: gate clamped above at 7, up to ±7, `g · σ(1.702 g) · (u + 1)`.
fn clamped_swiglu(g: f32, u: f32) -> f32 {
    let g = g.min(7.0);
    let u = u.clamp(-7.0, 7.0);
    g / (1.0 + (-1.702 * g).exp()) * (u + 1.0)
}

impl Blocks for GptOssBlocks {
    fn attention(&self, cfg: &Config, l: usize) -> Attention {
        let window = if l.is_multiple_of(2) { cfg.sliding_window } else { 0 };
        Attention { bias: true, sinks: true, window, rope: RopePairs::Halves }
    }

    fn ffn_norm(&self) -> &'static str {
        "post_attention_norm"
    }

    fn ffn_length_key(&self) -> &'static str {
        "expert_feed_forward_length"
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        moe::routed(m, l, x, &MOE)
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        moe::expert(m, l, e, x, &MOE)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}");
        let (q, kv, h, e, f) = (s.q(), s.kv(), &s.n_embd, &s.n_expert, &s.n_ff);
        vec![
            Expect::new(t("attn_q.bias"), &[&q]),
            Expect::new(t("attn_k.bias"), &[&kv]),
            Expect::new(t("attn_v.bias"), &[&kv]),
            Expect::new(t("attn_output.bias"), &[h]),
            Expect::new(t("attn_sinks.weight"), &[&s.n_head]),
            Expect::new(t("ffn_gate_inp.weight"), &[h, e]),
            Expect::new(t("ffn_gate_inp.bias"), &[e]),
            Expect::new(t("ffn_gate_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_up_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_down_exps.weight"), &[f, h, e]),
            Expect::new(t("ffn_gate_exps.bias"), &[f, e]),
            Expect::new(t("ffn_up_exps.bias"), &[f, e]),
            Expect::new(t("ffn_down_exps.bias"), &[h, e]),
        ]
    }
}
