//! Mixtral's forward blocks (transformers' `MixtralForCausalLM`): Llama's attention, and MoE
//! with a router without bias, softmax over all experts, top-k, the chosen weights
//! renormalized, SwiGLU experts without biases.

use anyhow::Result;

use crate::families::llama::forward::llama_attention;
use crate::forward::moe::{self, Moe, top_k};
use crate::forward::ops::{softmax, swiglu};
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Model, Sizes};

/// Mixtral's blocks.
pub struct MixtralBlocks;

/// The MoE block: softmax, top-k, renormalize; SwiGLU.
const MOE: Moe = Moe { bias: false, route: route_softmax_top_k, act: swiglu };

/// The top-k experts, weighted by their softmax probabilities renormalized over the k.
fn route_softmax_top_k(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    let order = top_k(logits, k);
    let mut all = logits.to_vec();
    softmax(&mut all);
    let sum: f32 = order.iter().map(|&e| all[e]).sum();
    let w = order.iter().map(|&e| all[e] / sum).collect();
    (order, w)
}

impl Blocks for MixtralBlocks {
    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        llama_attention()
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        moe::routed(m, l, x, &MOE)
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        moe::expert(m, l, e, x, &MOE)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        let (h, e, f) = (&s.n_embd, &s.n_expert, &s.n_ff);
        vec![
            Expect::new(t("ffn_gate_inp"), &[h, e]),
            Expect::new(t("ffn_gate_exps"), &[h, f, e]),
            Expect::new(t("ffn_up_exps"), &[h, f, e]),
            Expect::new(t("ffn_down_exps"), &[f, h, e]),
        ]
    }
}
