//! Mixtral → GGUF: Llama's conversion ([`crate::families::llama::gguf`]) with the router as
//! `ffn_gate_inp` and the per-expert `w1`/`w2`/`w3` matrices stacked into
//! `ffn_gate_exps`/`ffn_down_exps`/`ffn_up_exps` (expert index outermost) without copying
//! them anywhere first: each expert's rows are written at their offset in the stacked tensor,
//! once all of a layer's experts have been seen, as the converter does.

use anyhow::Result;
use moeq_formats::gguf::GgmlType;

use super::config::MixtralConfig;
use crate::families::common::{SourceTensor, expert_layer, stacked_experts};
use crate::families::llama::config::LlamaConfig;
use crate::families::llama::gguf::LlamaArch;
use crate::plan::recipe::Recipe;

/// llama.cpp's names for Mixtral's per-layer tensors (not the per-expert ones).
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
];

/// The layer of a per-expert tensor (`model.layers.N.block_sparse_moe.experts.J.wK.weight`).
impl LlamaArch for MixtralConfig {
    fn base(&self) -> &LlamaConfig {
        &self.base
    }

    fn kind(&self) -> &'static str {
        "Mixtral"
    }

    fn layer_names(&self) -> &'static [(&'static str, &'static str)] {
        LAYER_NAMES
    }

    fn experts(&self) -> Option<(u64, u64)> {
        Some((self.n_expert, self.n_expert_used))
    }

    fn ffn_expected(&self, n: u64) -> Vec<(String, Vec<u64>)> {
        let (h, f, e) = (self.base.n_embd, self.base.n_ff, self.n_expert);
        let l = |s: &str| format!("model.layers.{n}.{s}");
        let mut x = vec![(l("block_sparse_moe.gate.weight"), vec![e, h])];
        for j in 0..e {
            x.extend([
                (l(&format!("block_sparse_moe.experts.{j}.w1.weight")), vec![f, h]),
                (l(&format!("block_sparse_moe.experts.{j}.w2.weight")), vec![h, f]),
                (l(&format!("block_sparse_moe.experts.{j}.w3.weight")), vec![f, h]),
            ]);
        }
        x
    }

    fn own_recipes<'a>(
        &self,
        i: usize,
        sources: &[SourceTensor<'a>],
        out: GgmlType,
    ) -> Result<Option<Vec<Recipe<'a>>>> {
        let Some(layer) = expert_layer(&sources[i].name, ".block_sparse_moe.experts.") else { return Ok(None) };
        // The stack is made at the layer's last expert tensor.
        if sources[i + 1..].iter().any(|s| expert_layer(&s.name, ".block_sparse_moe.experts.") == Some(layer)) {
            return Ok(Some(Vec::new()));
        }
        let (hp, e) = (&self.base, self.n_expert);
        let mut recipes = Vec::new();
        for (wid, name, rows, cols) in [
            ("w1", "ffn_gate_exps", hp.n_ff, hp.n_embd),
            ("w2", "ffn_down_exps", hp.n_embd, hp.n_ff),
            ("w3", "ffn_up_exps", hp.n_ff, hp.n_embd),
        ] {
            let expert = |j| format!("model.layers.{layer}.block_sparse_moe.experts.{j}.{wid}.weight");
            recipes.push(stacked_experts(sources, format!("blk.{layer}.{name}.weight"), expert, (e, rows, cols), out)?);
        }
        Ok(Some(recipes))
    }
}
