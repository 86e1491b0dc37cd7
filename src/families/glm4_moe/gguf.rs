//! GLM-4.5 / GLM-4.6 → GGUF: what llama.cpp's `convert_hf_to_gguf.py` writes through
//! `Glm4MoeModel` (`conversion/glm.py`): the checkpoint's tensors one to one under the
//! `glm4moe` architecture's names (no q/k permutation: llama.cpp rotates GLM's halves, NEOX),
//! the per-expert `gate_proj`/`up_proj`/`down_proj` stacked into `ffn_{down,gate,up}_exps` at
//! the layer's last expert tensor (each expert's rows written at their offset), the
//! correction bias as `exp_probs_b.bias`, the shared experts as `ffn_*_shexp`, and the
//! multi-token-prediction layers (`model.layers.N`, N ≥ `num_hidden_layers`) exported as extra
//! blocks: a whole MoE layer plus `nextn.{eh_proj,embed_tokens,enorm,hnorm,shared_head_head,
//! shared_head_norm}` (the converter's default; GLM-4.6 releases them without `embed_tokens`
//! and `shared_head.head`).

use std::collections::HashMap;

use anyhow::{Result, bail};
use moeq_formats::safetensors::{Dtype, SafetensorsModel};

use super::config::Glm4MoeConfig;
use crate::families::ModelConfig;
use crate::families::common::{
    Converted, OutType, SourceTensor, auto_outtype, float_file_type, gguf_plan, one_to_one_with_stacked_experts,
    source_tensors,
};
use crate::vocab::Metadata;

/// llama.cpp's names for GLM-4.5's per-layer tensors (not the per-expert ones).
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    ("mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
    ("mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"),
    ("eh_proj.weight", "nextn.eh_proj.weight"),
    ("embed_tokens.weight", "nextn.embed_tokens.weight"),
    ("enorm.weight", "nextn.enorm.weight"),
    ("hnorm.weight", "nextn.hnorm.weight"),
    ("shared_head.head.weight", "nextn.shared_head_head.weight"),
    ("shared_head.norm.weight", "nextn.shared_head_norm.weight"),
];

/// The layer of `model.layers.N.…`.
pub fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// The layer of a per-expert tensor (`model.layers.N.mlp.experts.J.*`).
/// A tensor the checkpoint holds: name, shape (numpy order), and whether it must be there.
struct Want {
    name: String,
    shape: Vec<u64>,
    required: bool,
}

impl Glm4MoeConfig {
    /// The Hugging Face tensors of the checkpoint, with shapes; the multi-token-prediction
    /// layers' when `mtp` (their own embedding, head and head norm optional, as GLM-4.6 has
    /// none of the first two). `lm_head.weight` is left out.
    fn expected(&self, mtp: bool) -> Vec<Want> {
        let (h, v, hd, e) = (self.n_embd, self.vocab_size, self.head_dim().unwrap_or(0), self.n_expert);
        let (q, kv) = (self.n_head * hd, self.n_head_kv() * hd);
        let need = |name: String, shape: Vec<u64>| Want { name, shape, required: true };
        let mut x =
            vec![need("model.embed_tokens.weight".into(), vec![v, h]), need("model.norm.weight".into(), vec![h])];
        let layers = self.n_layer + if mtp { self.n_mtp.unwrap_or(0) } else { 0 };
        for n in 0..layers {
            let l = |s: &str| format!("model.layers.{n}.{s}");
            x.extend([
                need(l("input_layernorm.weight"), vec![h]),
                need(l("post_attention_layernorm.weight"), vec![h]),
                need(l("self_attn.q_proj.weight"), vec![q, h]),
                need(l("self_attn.k_proj.weight"), vec![kv, h]),
                need(l("self_attn.v_proj.weight"), vec![kv, h]),
                need(l("self_attn.o_proj.weight"), vec![h, q]),
            ]);
            if self.qkv_bias {
                x.extend([
                    need(l("self_attn.q_proj.bias"), vec![q]),
                    need(l("self_attn.k_proj.bias"), vec![kv]),
                    need(l("self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
            if self.qk_norm {
                x.extend([need(l("self_attn.q_norm.weight"), vec![hd]), need(l("self_attn.k_norm.weight"), vec![hd])]);
            }
            if n >= self.n_layer {
                x.extend([
                    need(l("eh_proj.weight"), vec![h, 2 * h]),
                    need(l("enorm.weight"), vec![h]),
                    need(l("hnorm.weight"), vec![h]),
                ]);
                for (name, shape) in [
                    ("embed_tokens.weight", vec![v, h]),
                    ("shared_head.head.weight", vec![v, h]),
                    ("shared_head.norm.weight", vec![h]),
                ] {
                    x.push(Want { name: l(name), shape, required: false });
                }
            }
            if self.is_dense(n) {
                let f = self.n_ff.unwrap_or(0);
                x.extend([
                    need(l("mlp.gate_proj.weight"), vec![f, h]),
                    need(l("mlp.up_proj.weight"), vec![f, h]),
                    need(l("mlp.down_proj.weight"), vec![h, f]),
                ]);
                continue;
            }
            let f = self.n_ff_exp;
            x.extend([need(l("mlp.gate.weight"), vec![e, h]), need(l("mlp.gate.e_score_correction_bias"), vec![e])]);
            if let Some(s) = self.n_expert_shared.filter(|&s| s > 0) {
                let s = s * f;
                x.extend([
                    need(l("mlp.shared_experts.gate_proj.weight"), vec![s, h]),
                    need(l("mlp.shared_experts.up_proj.weight"), vec![s, h]),
                    need(l("mlp.shared_experts.down_proj.weight"), vec![h, s]),
                ]);
            }
            for j in 0..e {
                x.extend([
                    need(l(&format!("mlp.experts.{j}.gate_proj.weight")), vec![f, h]),
                    need(l(&format!("mlp.experts.{j}.up_proj.weight")), vec![f, h]),
                    need(l(&format!("mlp.experts.{j}.down_proj.weight")), vec![h, f]),
                ]);
            }
        }
        x
    }
}

/// The config.json key that makes a known kind of tensor unexpected, as a note for the error
/// (empty for other names).
fn unexpected_hint(name: &str) -> &'static str {
    let dense = [".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.down_proj."].iter().any(|p| name.contains(p));
    let moe = [".mlp.experts.", ".mlp.gate.", ".mlp.shared_experts."].iter().any(|p| name.contains(p));
    if name.contains(".self_attn.q_norm.") || name.contains(".self_attn.k_norm.") {
        " (config.json's use_qk_norm is not true: transformers would not apply this q/k norm, llama.cpp would)"
    } else if [".q_proj.bias", ".k_proj.bias", ".v_proj.bias"].iter().any(|p| name.contains(p)) {
        " (config.json's attention_bias is not true)"
    } else if dense {
        " (a dense layer's, but config.json's first_k_dense_replace makes this layer MoE)"
    } else if moe {
        " (an MoE layer's, but config.json's first_k_dense_replace makes this layer dense)"
    } else {
        ""
    }
}

/// Checks the tensors against what the model must hold: names, shapes, float dtypes, and
/// every required tensor present.
fn check(model: &SafetensorsModel, tensors: &[SourceTensor], want: &[Want]) -> Result<()> {
    // By name: GLM-4.5 has some 90,000 weights.
    let by_name: HashMap<&str, &Want> = want.iter().map(|w| (w.name.as_str(), w)).collect();
    for s in tensors {
        let Some(w) = by_name.get(s.name.as_str()) else {
            bail!("{}: not a tensor of a GLM-4.5 MoE checkpoint{}", s.origin, unexpected_hint(&s.name));
        };
        if s.shape != w.shape {
            bail!("{}: shape {:?}, expected {:?}", s.origin, s.shape, w.shape);
        }
        if !matches!(s.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            bail!("{}: dtype {:?}, expected BF16, F16 or F32", s.origin, s.dtype);
        }
    }
    let held: std::collections::HashSet<&str> = tensors.iter().map(|s| s.name.as_str()).collect();
    for w in want.iter().filter(|w| w.required) {
        if !held.contains(w.name.as_str()) {
            bail!("{}: tensor '{}' is missing", model.path().display(), w.name);
        }
    }
    Ok(())
}

/// Plans the GGUF llama.cpp's converter writes for a GLM-4.5 / GLM-4.6 MoE checkpoint.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    hp: &Glm4MoeConfig,
    mut warnings: Vec<String>,
    outtype: OutType,
    vocab: Option<Metadata>,
) -> Result<Converted<'a>> {
    let sources = source_tensors(model, |t| {
        if t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        Ok(vec![t])
    })?;
    let blocks = hp.n_layer + hp.n_mtp.unwrap_or(0);
    if let Some(s) = sources.iter().find(|s| layer_of(&s.name).is_some_and(|l| l >= blocks)) {
        bail!(
            "{}: a layer past num_hidden_layers {} + num_nextn_predict_layers {} ({}; llama.cpp's converter \
             maps no such block)",
            s.origin,
            hp.n_layer,
            hp.n_mtp.map_or("missing".to_string(), |n| n.to_string()),
            config.path().display()
        );
    }
    let mtp = sources.iter().any(|s| layer_of(&s.name).is_some_and(|l| l >= hp.n_layer));
    if !mtp && hp.n_mtp.is_some_and(|n| n > 0) {
        warnings.push(format!(
            "num_nextn_predict_layers is {} but the checkpoint has no multi-token-prediction layer; the GGUF \
             counts it in block_count as llama.cpp's converter writes it (llama.cpp loads the model without it)",
            hp.n_mtp.unwrap_or(0)
        ));
    }
    let mut want = hp.expected(mtp);
    let has_head = sources.iter().any(|s| s.name == "lm_head.weight");
    if hp.tied && has_head {
        bail!(
            "{}: tie_word_embeddings is true, but the checkpoint has its own lm_head.weight: transformers computes \
             the logits with embed_tokens, llama.cpp's glm4moe with the output.weight the converter writes from lm_head",
            config.path().display()
        );
    }
    if !hp.tied || has_head {
        want.push(Want { name: "lm_head.weight".into(), shape: vec![hp.vocab_size, hp.n_embd], required: true });
    }
    check(model, &sources, &want)?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    let recipes = one_to_one_with_stacked_experts(&sources, LAYER_NAMES, (hp.n_embd, hp.n_ff_exp, hp.n_expert), out)?;
    let plan = gguf_plan("glm4moe", &config.dir, &config.json, &recipes, hp.metadata(float_file_type(out)), vocab);
    Ok(Converted { plan, recipes, warnings })
}
