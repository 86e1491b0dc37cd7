//! Llama's forward blocks (transformers' `LlamaForCausalLM`): attention without biases, RoPE on
//! adjacent pairs (the converter permuted q/k rows for llama.cpp), a dense SwiGLU block.

use anyhow::Result;

use crate::forward::moe::dense_swiglu;
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Model, RopePairs, Sizes};

/// Llama's blocks.
pub struct LlamaBlocks;

/// The attention of llama.cpp's `llama` architecture (Llama, Mixtral).
pub fn llama_attention() -> Attention {
    Attention { bias: false, sinks: false, window: 0, rope: RopePairs::Adjacent }
}

impl Blocks for LlamaBlocks {
    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        llama_attention()
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        dense_swiglu(m, l, x)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        vec![
            Expect::new(t("ffn_gate"), &[&s.n_embd, &s.n_ff]),
            Expect::new(t("ffn_up"), &[&s.n_embd, &s.n_ff]),
            Expect::new(t("ffn_down"), &[&s.n_ff, &s.n_embd]),
        ]
    }
}
