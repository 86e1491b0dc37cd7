//! MiniMax-M2's forward blocks (transformers' `MiniMaxM2ForCausalLM`, llama.cpp's `minimax-m2`
//! graph), on the tensors of llama.cpp's `minimax-m2` architecture:
//!
//! - attention: q, k, v projections without biases; q and k each RMS-normalized over the
//!   whole projection (`attn_q_norm` [heads · head_dim], `attn_k_norm` [kv heads · head_dim]:
//!   one norm per token, not per head, as transformers' `q_norm`/`k_norm` and llama.cpp's
//!   graph have it); RoPE on halves (NEOX) of the first `rope.dimension_count` values of each
//!   head (`rotary_dim`), the rest passed through ([`crate::families::glm4_moe::forward`]'s);
//!   causal softmax attention with GQA and scale 1/√head_dim; the output projection;
//! - the MoE block after `ffn_norm`: sigmoid scores of the router's logits, the correction
//!   bias (`exp_probs_b`) added for choosing only, top-k, the chosen scores normalized to sum
//!   to 1 (transformers' `MiniMaxM2TopKRouter`, llama.cpp's `norm_w`; no routed scaling), and
//!   Mixtral's SwiGLU experts (`w1`/`w3`/`w2` as `ffn_{gate,up,down}_exps`).

use anyhow::{Result, bail};

use crate::families::deepseek_v3::forward::route;
use crate::families::glm4_moe::forward::rope_part;
use crate::forward::moe::{self, Moe};
use crate::forward::ops::{rmsnorm, swiglu};
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Heads, Meta, Model, RopePairs, Sizes, attend};

/// MiniMax-M2's blocks.
pub struct MiniMaxM2Blocks;

/// The experts: SwiGLU without biases (the routing is the block's own).
const MOE: Moe = Moe { bias: false, route: |_, _| (Vec::new(), Vec::new()), act: swiglu };

impl Blocks for MiniMaxM2Blocks {
    fn hparams(&self, meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        // llama.cpp's minimax-m2 routes by the gating function the converter writes.
        let gating = meta.opt("expert_gating_func")?;
        match &gating {
            Some(g) if g.value == 2 => {}
            Some(g) => bail!(
                "metadata '{}' is {}: MiniMax-M2 routes with sigmoid scores (2), as transformers computes it",
                meta.key("expert_gating_func"),
                g.value
            ),
            None => bail!(
                "no metadata '{}': llama.cpp's minimax-m2 needs it (sigmoid, 2) to route as transformers does",
                meta.key("expert_gating_func")
            ),
        }
        // llama.cpp scales the normalized weights only by a scale other than 0 and 1.
        let scale = match meta.float("expert_weights_scale")? {
            Some(s) if s != 0.0 => s,
            _ => 1.0,
        };
        if !scale.is_finite() {
            bail!("metadata '{}' is {scale}, not a finite number", meta.key("expert_weights_scale"));
        }
        Ok(vec![("gating", 2.0), ("groups", 1.0), ("weights_norm", 1.0), ("weights_scale", scale)])
    }

    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        // Unused: MiniMax-M2's attention (whole-projection norms, partial RoPE) is its own block.
        Attention { bias: false, sinks: false, window: 0, rope: RopePairs::Halves }
    }

    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        let c = &m.cfg;
        let a_in = rmsnorm(x, &m.t(&format!("blk.{l}.attn_norm.weight"))?, c.rms_eps);
        let q = m.linear(&a_in, &format!("blk.{l}.attn_q"), false)?;
        let k = m.linear(&a_in, &format!("blk.{l}.attn_k"), false)?;
        let v = m.linear(&a_in, &format!("blk.{l}.attn_v"), false)?;
        // One RMSNorm per token over the whole projection (the norms are that wide).
        let mut q = rmsnorm(&q, &m.t(&format!("blk.{l}.attn_q_norm.weight"))?, c.rms_eps);
        let mut k = rmsnorm(&k, &m.t(&format!("blk.{l}.attn_k_norm.weight"))?, c.rms_eps);
        rope_part(m, &mut q, c.n_head, starts);
        rope_part(m, &mut k, c.n_head_kv, starts);
        let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, qk_dim: c.head_dim, v_dim: c.head_dim };
        let o = attend(&q, &k, &v, starts, heads, 1.0 / (c.head_dim as f32).sqrt(), None, 0);
        m.linear(&o, &format!("blk.{l}.attn_output"), false)
    }

    fn ffn_length_key(&self) -> &'static str {
        "expert_feed_forward_length"
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        let c = &m.cfg;
        let logits = m.linear(x, &format!("blk.{l}.ffn_gate_inp"), false)?;
        let bias = m.t(&format!("blk.{l}.exp_probs_b.bias"))?;
        let (routes, weights) =
            logits.chunks_exact(c.n_expert).map(|row| route(row, &bias, c.n_expert_used, c)).unzip();
        moe::dispatch(m, x, routes, weights, &|e, xe| moe::expert(m, l, e, xe, &MOE))
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        moe::expert(m, l, e, x, &MOE)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}");
        let (h, q, kv, e, f) = (&s.n_embd, s.q(), s.kv(), &s.n_expert, &s.n_ff);
        vec![
            Expect::new(t("attn_q_norm.weight"), &[&q]),
            Expect::new(t("attn_k_norm.weight"), &[&kv]),
            Expect::new(t("ffn_gate_inp.weight"), &[h, e]),
            Expect::new(t("exp_probs_b.bias"), &[e]),
            Expect::new(t("ffn_gate_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_up_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_down_exps.weight"), &[f, h, e]),
        ]
    }
}
