//! Qwen's MoE families → GGUF: what llama.cpp's `convert_hf_to_gguf.py` writes through
//! `Qwen2MoeModel` (`conversion/qwen.py`), which `Qwen3MoeModel` extends: the checkpoint's
//! tensors one to one under llama.cpp's names (no q/k permutation: llama.cpp runs Qwen with
//! NEOX RoPE, on halves), the routed experts' per-expert `gate_proj`/`up_proj`/`down_proj`
//! stacked into `ffn_{down,gate,up}_exps` at the layer's last expert tensor (each expert's
//! rows written at their offset, never gathered), and `TextModel`'s keys with the expert widths.

use anyhow::Result;
use moeq_formats::gguf::Value;
use moeq_formats::safetensors::SafetensorsModel;

use super::config::{QwenKind, QwenMoeConfig};
use crate::families::ModelConfig;
use crate::families::common::{
    Converted, OutType, auto_outtype, check_tensors, float_file_type, gguf_plan, one_to_one_with_stacked_experts,
    source_tensors,
};
use crate::vocab::Metadata;

/// llama.cpp's names for Qwen2-MoE's per-layer tensors (not the per-expert ones), in its order.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"),
    ("mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"),
    ("mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"),
];

impl QwenMoeConfig {
    /// The `{arch}.*` keys, in the converter's order (`TextModel.set_gguf_parameters`, then
    /// `Qwen2MoeModel`'s expert widths), with `general.file_type` among them.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let arch = self.kind.arch();
        let k = |key: &str| format!("{arch}.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![(k("block_count"), u(self.n_layer))];
        m.extend(self.n_ctx.map(|c| (k("context_length"), u(c))));
        m.push((k("embedding_length"), u(self.n_embd)));
        m.extend(self.n_ff.map(|f| (k("feed_forward_length"), u(f))));
        m.extend([(k("attention.head_count"), u(self.n_head)), (k("attention.head_count_kv"), u(self.n_head_kv))]);
        if let Some((ty, factor, orig)) = &self.rope_scaling {
            m.push((k("rope.scaling.type"), Value::String(ty.clone())));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.extend(orig.map(|o| (k("rope.scaling.original_context_length"), u(o))));
        }
        m.extend(self.rope_theta.map(|t| (k("rope.freq_base"), Value::F32(t as f32))));
        m.extend(self.rms_eps.map(|e| (k("attention.layer_norm_rms_epsilon"), Value::F32(e as f32))));
        m.push((k("expert_count"), u(self.n_expert)));
        m.push((k("expert_used_count"), u(self.n_expert_used)));
        if let Some(d) = self.head_dim {
            m.push((k("attention.key_length"), u(d)));
            m.push((k("attention.value_length"), u(d)));
        }
        m.push(("general.file_type".into(), Value::U32(file_type)));
        m.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
        m.extend(self.n_ff_shexp.map(|f| (k("expert_shared_feed_forward_length"), u(f))));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m.extend(self.forward_keys());
        m
    }

    /// What moeq's forward needs beyond what a GGUF can say, for the models no GGUF holds
    /// ([`QwenMoeConfig::gguf_refusal`]): `{arch}.moeq.dense_layer.N` (1) for each dense layer,
    /// and `{arch}.moeq.expert_weights_norm` (0 or 1) when the top-k weights are normalized
    /// otherwise than llama.cpp's graph does. Empty for every model a GGUF can hold, so the
    /// converter's keys stay exactly llama.cpp's.
    fn forward_keys(&self) -> Vec<(String, Value)> {
        let arch = self.kind.arch();
        let mut m: Vec<(String, Value)> =
            self.dense_layers.iter().map(|l| (format!("{arch}.moeq.dense_layer.{l}"), Value::U32(1))).collect();
        if self.norm_topk_prob != (self.kind == QwenKind::Qwen3) {
            m.push((format!("{arch}.moeq.expert_weights_norm"), Value::U32(self.norm_topk_prob as u32)));
        }
        m
    }

    /// The Hugging Face tensors the checkpoint must hold, with shapes (numpy order).
    /// `lm_head.weight` is left out: it is absent when the embeddings are tied.
    fn expected(&self) -> Vec<(String, Vec<u64>)> {
        let (h, v, hd, e) = (self.n_embd, self.vocab_size, self.head_dim().unwrap_or(0), self.n_expert);
        let (q, kv) = (self.n_head * hd, self.n_head_kv * hd);
        let mut x =
            vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
        for n in 0..self.n_layer {
            let l = |s: &str| format!("model.layers.{n}.{s}");
            x.extend([
                (l("input_layernorm.weight"), vec![h]),
                (l("post_attention_layernorm.weight"), vec![h]),
                (l("self_attn.q_proj.weight"), vec![q, h]),
                (l("self_attn.k_proj.weight"), vec![kv, h]),
                (l("self_attn.v_proj.weight"), vec![kv, h]),
                (l("self_attn.o_proj.weight"), vec![h, q]),
            ]);
            if self.qkv_bias {
                x.extend([
                    (l("self_attn.q_proj.bias"), vec![q]),
                    (l("self_attn.k_proj.bias"), vec![kv]),
                    (l("self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
            if self.kind == QwenKind::Qwen3 {
                x.extend([(l("self_attn.q_norm.weight"), vec![hd]), (l("self_attn.k_norm.weight"), vec![hd])]);
            }
            if self.dense_layers.contains(&n) {
                let f = self.n_ff.unwrap_or(0);
                x.extend([
                    (l("mlp.gate_proj.weight"), vec![f, h]),
                    (l("mlp.up_proj.weight"), vec![f, h]),
                    (l("mlp.down_proj.weight"), vec![h, f]),
                ]);
                continue;
            }
            let f = self.n_ff_exp;
            x.push((l("mlp.gate.weight"), vec![e, h]));
            for j in 0..e {
                x.extend([
                    (l(&format!("mlp.experts.{j}.gate_proj.weight")), vec![f, h]),
                    (l(&format!("mlp.experts.{j}.up_proj.weight")), vec![f, h]),
                    (l(&format!("mlp.experts.{j}.down_proj.weight")), vec![h, f]),
                ]);
            }
            if let Some(s) = self.n_ff_shexp {
                x.extend([
                    (l("mlp.shared_expert.gate_proj.weight"), vec![s, h]),
                    (l("mlp.shared_expert.up_proj.weight"), vec![s, h]),
                    (l("mlp.shared_expert.down_proj.weight"), vec![h, s]),
                    (l("mlp.shared_expert_gate.weight"), vec![1, h]),
                ]);
            }
        }
        x
    }
}

/// The layer of a per-expert tensor (`model.layers.N.mlp.experts.J.*`).
/// Plans the GGUF llama.cpp's converter writes for a Qwen2-MoE or Qwen3-MoE checkpoint, whose
/// per-layer names are `layer_names`. The models no GGUF can hold
/// ([`QwenMoeConfig::gguf_refusal`]) are planned too, for `--format mlx` and the forward: their
/// dense layers as `ffn_{gate,up,down}` (`moeq convert` refuses to write them as GGUF).
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    hp: &QwenMoeConfig,
    layer_names: &[(&str, &str)],
    warnings: Vec<String>,
    outtype: OutType,
    vocab: Option<Metadata>,
) -> Result<Converted<'a>> {
    let sources = source_tensors(model, |t| {
        if t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        Ok(vec![t])
    })?;
    let mut want: Vec<(String, Vec<u64>, bool)> = hp.expected().into_iter().map(|(n, s)| (n, s, false)).collect();
    if !hp.tied || sources.iter().any(|s| s.name == "lm_head.weight") {
        want.push(("lm_head.weight".into(), vec![hp.vocab_size, hp.n_embd], false));
    }
    check_tensors(model, &sources, &want, hp.kind.title())?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    let recipes = one_to_one_with_stacked_experts(&sources, layer_names, (hp.n_embd, hp.n_ff_exp, hp.n_expert), out)?;
    let plan = gguf_plan(hp.kind.arch(), &config.dir, &config.json, &recipes, hp.metadata(float_file_type(out)), vocab);
    Ok(Converted { plan, recipes, warnings })
}
