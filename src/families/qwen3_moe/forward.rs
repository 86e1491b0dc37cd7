//! Qwen3-MoE's forward blocks (transformers' `Qwen3MoeForCausalLM`): Qwen's attention
//! ([`crate::families::qwen2_moe::forward::attention`]) without biases and with each q and k
//! head RMS-normalized before RoPE on halves; MoE with softmax over all experts, top-k, the
//! chosen weights renormalized (`norm_topk_prob`, what llama.cpp's `qwen3moe` always does),
//! SwiGLU experts; dense SwiGLU layers where the config has them (models no GGUF holds).

use anyhow::{Result, bail};

use crate::families::qwen2_moe::forward::{
    attention, dense_layers, expert, expert_tensors, is_dense, qwen_hparams, routed,
};
use crate::forward::moe::dense_swiglu;
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Hp, Meta, Model, RopePairs, Sizes};

/// Qwen3-MoE's blocks.
pub struct Qwen3MoeBlocks;

impl Blocks for Qwen3MoeBlocks {
    fn hparams(&self, meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        qwen_hparams(meta, true)
    }

    fn sizes(&self, meta: &Meta) -> Result<Vec<(&'static str, Hp)>> {
        let dense = dense_layers(meta)?;
        let mut out = Vec::new();
        if !dense.is_empty() {
            out.push(("dense_ff", meta.req("feed_forward_length")?));
        }
        out.extend(dense.into_iter().map(|l| ("dense_layer", l)));
        Ok(out)
    }

    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        Attention { bias: false, sinks: false, window: 0, rope: RopePairs::Halves }
    }

    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        attention(m, l, x, starts, false, true)
    }

    fn ffn_length_key(&self) -> &'static str {
        "expert_feed_forward_length"
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        if is_dense(&m.cfg, l) { dense_swiglu(m, l, x) } else { routed(m, l, x) }
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        if is_dense(&m.cfg, l) {
            bail!("layer {l} is dense: it has no experts");
        }
        expert(m, l, e, x)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        let mut x = vec![Expect::new(t("attn_q_norm"), &[&s.head_dim]), Expect::new(t("attn_k_norm"), &[&s.head_dim])];
        let dense = s.extra.iter().any(|(n, h)| *n == "dense_layer" && h.value == l as u64);
        match s.extra("dense_ff").filter(|_| dense) {
            Some(f) => x.extend([
                Expect::new(t("ffn_gate"), &[&s.n_embd, f]),
                Expect::new(t("ffn_up"), &[&s.n_embd, f]),
                Expect::new(t("ffn_down"), &[f, &s.n_embd]),
            ]),
            None => x.extend(expert_tensors(s, l)),
        }
        x
    }
}
