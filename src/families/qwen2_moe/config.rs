//! The typed `config.json` of Qwen's MoE families, read once: what Qwen2-MoE and Qwen3-MoE
//! share ([`QwenMoeConfig`], as llama.cpp's converter reads both through `Qwen2MoeModel`), and
//! what each may hold that the other does not (shared experts, q/k norms, the head size).
//!
//! Key names are those of the released configs (`num_experts`, `rope_theta`) or of
//! transformers 5 (`num_local_experts`, `rope_parameters`); both are read.

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;

use crate::families::ModelConfig;
use crate::families::common::{check_head_dim, check_kv_heads, check_sizes};
use crate::source::config::Keys;

/// Most layers a config may declare (larger counts are refused as implausible).
const MAX_LAYERS: u64 = 4096;

/// Which of Qwen's MoE families a config belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QwenKind {
    /// `Qwen2MoeForCausalLM`: q/k/v biases, a shared expert with a sigmoid gate, top-k
    /// weights not renormalized.
    Qwen2,
    /// `Qwen3MoeForCausalLM`: q/k RMS norms, no biases, an explicit head size, top-k weights
    /// renormalized (`norm_topk_prob`).
    Qwen3,
}

impl QwenKind {
    /// The `general.architecture` llama.cpp writes.
    pub fn arch(self) -> &'static str {
        match self {
            QwenKind::Qwen2 => "qwen2moe",
            QwenKind::Qwen3 => "qwen3moe",
        }
    }

    /// "Qwen2-MoE", "Qwen3-MoE" (in messages).
    pub fn title(self) -> &'static str {
        match self {
            QwenKind::Qwen2 => "Qwen2-MoE",
            QwenKind::Qwen3 => "Qwen3-MoE",
        }
    }
}

/// A Qwen2-MoE or Qwen3-MoE `config.json`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct QwenMoeConfig {
    pub kind: QwenKind,
    pub n_layer: u64,
    pub n_ctx: Option<u64>,
    pub n_embd: u64,
    /// `intermediate_size`: the width of dense layers (written as `feed_forward_length`).
    pub n_ff: Option<u64>,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// `head_dim` when config.json gives it (Qwen3).
    pub head_dim: Option<u64>,
    pub rope_theta: Option<f64>,
    /// `linear` or `yarn` scaling: type, factor, original context (yarn).
    pub rope_scaling: Option<(String, f64, Option<u64>)>,
    pub rms_eps: Option<f64>,
    pub vocab_size: u64,
    /// Routed experts per MoE layer, and per token.
    pub n_expert: u64,
    pub n_expert_used: u64,
    /// `moe_intermediate_size`: each routed expert's width.
    pub n_ff_exp: u64,
    /// `shared_expert_intermediate_size` (Qwen2-MoE's shared expert).
    pub n_ff_shexp: Option<u64>,
    /// The routed experts' weights renormalized over the top k.
    pub norm_topk_prob: bool,
    /// The layers whose feed-forward block is dense (`mlp_only_layers`, or not a multiple of
    /// `decoder_sparse_step`), in order.
    pub dense_layers: Vec<u64>,
    /// q, k and v have biases.
    pub qkv_bias: bool,
    /// No `lm_head.weight`: the head is the embedding.
    pub tied: bool,
}

impl QwenMoeConfig {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig, kind: QwenKind) -> Result<(QwenMoeConfig, Vec<String>)> {
        Self::parse(&config.keys(), kind).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys.
    pub fn parse(json: &Keys, kind: QwenKind) -> Result<(QwenMoeConfig, Vec<String>)> {
        let mut warnings = Vec::new();
        let n_head = json.u64("num_attention_heads")?;
        let rope = json.object("rope_scaling")?.or(json.object("rope_parameters")?);
        let mut rope_scaling = None;
        if let Some(r) = &rope {
            match r.str("rope_type")?.or(r.str("type")?) {
                Some(t @ ("linear" | "yarn")) => {
                    let factor = crate::families::common::rope_factor(r, t, None)?;
                    let orig = if t == "yarn" { Some(r.u64("original_max_position_embeddings")?) } else { None };
                    rope_scaling = Some((t.to_string(), factor, orig));
                }
                Some("default") | None => {}
                Some(other) => bail!("rope type '{other}' is not one llama.cpp's {} runs", kind.arch()),
            }
        }
        if json.bool("use_sliding_window")? == Some(true) {
            warnings
                .push(format!("use_sliding_window is true; llama.cpp's {} attends to the whole context", kind.arch()));
        }
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; {} runs SiLU", kind.title());
        }
        let n_expert = match json.opt_u64("num_experts")? {
            Some(e) => e,
            None => json.u64("num_local_experts")?,
        };
        let n_layer = json.u64("num_hidden_layers")?;
        // Checked before the per-layer lists below are built (10^12 layers ran for ever there).
        check_sizes(&[("num_hidden_layers", n_layer, MAX_LAYERS)])?;
        let step = json.opt_u64("decoder_sparse_step")?.unwrap_or(1);
        if step == 0 {
            bail!("\"decoder_sparse_step\" is 0");
        }
        let mlp_only = match json.raw("mlp_only_layers") {
            None => Vec::new(),
            Some(Json::Array(list)) => list
                .iter()
                .map(|v| v.as_u64().with_context(|| format!("\"mlp_only_layers\" holds {v}, not a layer index")))
                .collect::<Result<Vec<u64>>>()?,
            Some(v) => bail!("\"mlp_only_layers\" is {v}, not a list of layer indices"),
        };
        if let Some(l) = mlp_only.iter().find(|&&l| l >= n_layer) {
            bail!("\"mlp_only_layers\" names layer {l}, but the model has {n_layer}");
        }
        // transformers' rule (Qwen2MoeDecoderLayer, Qwen3MoeDecoderLayer).
        let dense_layers =
            (0..n_layer).filter(|l| mlp_only.contains(l) || n_expert == 0 || !(l + 1).is_multiple_of(step)).collect();
        let qkv_bias = match kind {
            // Qwen2-MoE's attention always has them; transformers 5 names the switch `qkv_bias`.
            QwenKind::Qwen2 => json.bool("qkv_bias")?.unwrap_or(true),
            QwenKind::Qwen3 => json.bool("attention_bias")?.unwrap_or(false),
        };
        let hp = QwenMoeConfig {
            kind,
            n_layer,
            n_ctx: json.opt_u64("max_position_embeddings")?,
            n_embd: json.u64("hidden_size")?,
            n_ff: json.opt_u64("intermediate_size")?,
            n_head,
            n_head_kv: json.opt_u64("num_key_value_heads")?.unwrap_or(n_head),
            head_dim: json.opt_u64("head_dim")?,
            rope_theta: crate::families::common::rope_theta(json)?,
            rope_scaling,
            rms_eps: crate::families::common::rms_eps(json)?,
            vocab_size: json.u64("vocab_size")?,
            n_expert,
            n_expert_used: json.u64("num_experts_per_tok")?,
            n_ff_exp: json.u64("moe_intermediate_size")?,
            n_ff_shexp: match kind {
                QwenKind::Qwen2 => Some(json.u64("shared_expert_intermediate_size")?),
                QwenKind::Qwen3 => None,
            },
            norm_topk_prob: json.bool("norm_topk_prob")?.unwrap_or(false),
            dense_layers,
            qkv_bias,
            tied: json.bool("tie_word_embeddings")?.unwrap_or(false),
        };
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, MAX_LAYERS),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("vocab_size", hp.vocab_size, 1 << 24),
            ("num_experts", hp.n_expert, 1 << 16),
            ("moe_intermediate_size", hp.n_ff_exp, 1 << 22),
        ])?;
        check_kv_heads(hp.n_head, hp.n_head_kv)?;
        if let Some(f) = hp.n_ff_shexp {
            check_sizes(&[("shared_expert_intermediate_size", f, u64::MAX)])?;
        }
        if hp.n_expert_used == 0 || hp.n_expert_used > hp.n_expert {
            bail!("num_experts_per_tok is {}, not 1 to num_experts ({})", hp.n_expert_used, hp.n_expert);
        }
        if let Some(f) = hp.n_ff.filter(|&f| f > 1 << 22) {
            bail!("\"intermediate_size\" is {f}, more than {}: implausible (a corrupt config.json?)", 1 << 22);
        }
        check_head_dim(hp.head_dim(), hp.head_dim.is_some(), hp.n_embd, hp.n_head)?;
        if !hp.dense_layers.is_empty() && hp.n_ff.is_none() {
            bail!("\"intermediate_size\" is missing: the dense layers {:?} need it", hp.dense_layers);
        }
        match kind {
            QwenKind::Qwen2 => {
                if !hp.qkv_bias {
                    bail!("qkv_bias is false; Qwen2-MoE's attention has q, k and v biases");
                }
                if hp.head_dim.is_some_and(|d| d * hp.n_head != hp.n_embd) {
                    bail!("head_dim × num_attention_heads is not hidden_size; llama.cpp's qwen2moe needs it to be");
                }
            }
            QwenKind::Qwen3 => {
                if hp.qkv_bias {
                    bail!("attention_bias is true; Qwen3-MoE's attention has no biases");
                }
            }
        }
        Ok((hp, warnings))
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> Option<u64> {
        self.head_dim.or(self.n_embd.is_multiple_of(self.n_head).then(|| self.n_embd / self.n_head))
    }

    /// Why llama.cpp's converter or runtime cannot carry this model in a GGUF (`None`: it can):
    /// dense layers among the MoE ones (its converter cannot name their tensors, its loader
    /// wants experts in every layer), top-k weights normalized otherwise than its graph does
    /// (always for `qwen3moe`, never for `qwen2moe`), and tied embeddings for `qwen2moe` (its
    /// loader requires `output.weight`, which the converter then does not write).
    pub fn gguf_refusal(&self) -> Option<String> {
        let arch = self.kind.arch();
        if self.tied && self.kind == QwenKind::Qwen2 {
            return Some(format!(
                "tie_word_embeddings is true; llama.cpp's {arch} requires its own output.weight, so it would not \
                 load the GGUF"
            ));
        }
        if !self.dense_layers.is_empty() {
            return Some(format!(
                "layers {:?} are dense (mlp_only_layers / decoder_sparse_step); llama.cpp's converter and its \
                 {arch} architecture need experts in every layer, so no GGUF can hold this model \
                 (--format mlx converts it: mlx-lm runs it)",
                self.dense_layers
            ));
        }
        let llama_norm = self.kind == QwenKind::Qwen3;
        if self.norm_topk_prob != llama_norm {
            return Some(format!(
                "norm_topk_prob is {}; llama.cpp's {arch} {} the top-k expert weights, so a GGUF would compute \
                 another model",
                self.norm_topk_prob,
                if llama_norm { "always renormalizes" } else { "never renormalizes" }
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen3() -> Json {
        json!({"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 32, "vocab_size": 512, "num_experts": 8, "num_experts_per_tok": 2,
               "moe_intermediate_size": 32, "intermediate_size": 128, "norm_topk_prob": true})
    }

    #[test]
    fn dense_layers_follow_transformers() {
        let parse = |edit: &dyn Fn(&mut Json)| {
            let mut j = qwen3();
            edit(&mut j);
            QwenMoeConfig::parse(&Keys::of(&j, ""), QwenKind::Qwen3).map(|(c, _)| c)
        };
        assert_eq!(parse(&|_| {}).unwrap().dense_layers, Vec::<u64>::new());
        assert_eq!(parse(&|j| j["mlp_only_layers"] = json!([0, 2])).unwrap().dense_layers, vec![0, 2]);
        assert_eq!(parse(&|j| j["decoder_sparse_step"] = json!(2)).unwrap().dense_layers, vec![0, 2]);
        assert_eq!(parse(&|j| j["num_local_experts"] = json!(8)).unwrap().n_expert, 8);
        let c = parse(&|j| j["mlp_only_layers"] = json!([1])).unwrap();
        assert!(c.gguf_refusal().unwrap().contains("layers [1] are dense"), "{:?}", c.gguf_refusal());
        assert!(parse(&|j| j["norm_topk_prob"] = json!(false)).unwrap().gguf_refusal().unwrap().contains("always"));
        assert!(parse(&|_| {}).unwrap().gguf_refusal().is_none());
        let e = parse(&|j| j["mlp_only_layers"] = json!([7])).unwrap_err();
        assert!(e.to_string().contains("names layer 7"), "{e}");
        assert!(parse(&|j| j["mlp_only_layers"] = json!("0")).is_err());
        assert!(parse(&|j| j["decoder_sparse_step"] = json!(0)).is_err());
        assert!(parse(&|j| j["num_experts_per_tok"] = json!(9)).is_err());
        assert!(parse(&|j| j["attention_bias"] = json!(true)).is_err());
        let e = parse(&|j| j["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0})).unwrap_err();
        assert!(e.to_string().contains("'dynamic'"), "{e}");
        let c = parse(&|j| {
            j["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
        })
        .unwrap();
        assert_eq!(c.rope_scaling, Some(("yarn".into(), 4.0, Some(32768))));
    }
}
