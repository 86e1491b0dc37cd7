//! GLM-4.5 / GLM-4.6's typed config (`Glm4MoeForCausalLM`): `config.json` read once (GQA with
//! q/k/v biases and optional q/k norms, RoPE over a part of each head, leading dense layers, then
//! MoE with shared experts and group-limited sigmoid routing, the multi-token-prediction layers
//! after the last one), with what llama.cpp's `glm4moe` cannot compute as transformers does
//! refused, naming the key.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;
use serde_json::Value as Json;

use crate::families::ModelConfig;
use crate::families::common::{check_head_dim, check_kv_heads, check_sizes};
use crate::source::config::Keys;

/// A GLM-4.5 / GLM-4.6 MoE `config.json`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Glm4MoeConfig {
    /// Layers of the model (`num_hidden_layers`), the multi-token-prediction ones aside.
    pub n_layer: u64,
    pub n_ctx: Option<u64>,
    pub n_embd: u64,
    /// The dense layers' width (`intermediate_size`).
    pub n_ff: Option<u64>,
    pub n_head: u64,
    pub n_head_kv: Option<u64>,
    /// `head_dim` when config.json gives it (then written as `key_length`/`value_length`).
    pub head_dim: Option<u64>,
    /// Values of each head RoPE rotates: ⌊head size × `partial_rotary_factor`⌋ (0.5 when absent,
    /// as the converter and transformers take it).
    pub rope_dim: u64,
    pub rope_theta: Option<f64>,
    pub rms_eps: Option<f64>,
    pub vocab_size: u64,
    /// Routed experts (`n_routed_experts`) and experts per token.
    pub n_expert: u64,
    pub n_expert_used: u64,
    /// Each routed expert's width (`moe_intermediate_size`); the shared experts together are
    /// `n_expert_shared` times this.
    pub n_ff_exp: u64,
    pub n_expert_shared: Option<u64>,
    /// Expert groups (`n_group`) and groups kept per token (`topk_group`), when given.
    pub n_group: Option<u64>,
    pub topk_group: Option<u64>,
    /// The first `first_k_dense_replace` layers are dense.
    pub n_dense_lead: Option<u64>,
    pub routed_scaling: Option<f64>,
    pub norm_topk_prob: Option<bool>,
    /// `scoring_func` is given (the converter writes the gating function earlier then).
    pub scoring_func: bool,
    /// Multi-token-prediction layers after the last layer (`num_nextn_predict_layers`), which
    /// the converter exports as extra blocks.
    pub n_mtp: Option<u64>,
    /// q, k and v have biases (`attention_bias`).
    pub qkv_bias: bool,
    /// Each q and k head is RMS-normalized (`use_qk_norm`).
    pub qk_norm: bool,
    /// No `lm_head.weight`: the head is the embedding.
    pub tied: bool,
}

/// An optional boolean (absent or null: `None`); anything else is an error naming the key.
fn opt_bool(json: &Keys, key: &str) -> Result<Option<bool>> {
    match json.raw(key) {
        None => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("\"{key}\" is {v}, not a boolean"),
    }
}

impl Glm4MoeConfig {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(Glm4MoeConfig, Vec<String>)> {
        Self::parse(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys. Returns the hyperparameters and warnings.
    pub fn parse(json: &Keys) -> Result<(Glm4MoeConfig, Vec<String>)> {
        let warnings = Vec::new();
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; GLM-4.5 and llama.cpp's glm4moe run SiLU");
        }
        let scoring =
            ["score_function", "scoring_func", "score_func"].into_iter().find_map(|k| json.raw(k).map(|v| (k, v)));
        if let Some((key, v)) = scoring
            && v.as_str() != Some("sigmoid")
        {
            bail!("{key} is {v}; GLM-4.5 routes with sigmoid scores (transformers and llama.cpp's glm4moe)");
        }
        if let Some(method) = json.str("topk_method")?
            && method != "noaux_tc"
        {
            bail!("topk_method is '{method}'; GLM-4.5 chooses experts as DeepSeek-V3's noaux_tc");
        }
        let rope = json.object("rope_parameters")?.or(json.object("rope_scaling")?);
        if let Some(r) = &rope {
            match r.str("rope_type")?.or(r.str("type")?) {
                Some("default") | None => {}
                Some(other) => bail!(
                    "rope type '{other}' is set; moeq converts GLM-4.5 with plain RoPE, as the released models have it"
                ),
            }
        }
        if let Some(t) = json.raw("mrope_section").or(rope.as_ref().and_then(|r| r.raw("mrope_section"))) {
            bail!("mrope_section is {t}; moeq converts GLM-4.5's text model (plain RoPE), not its multimodal form");
        }
        let factor = match rope.as_ref().and_then(|r| r.raw("partial_rotary_factor")) {
            Some(v) => {
                v.as_f64().with_context(|| format!("\"rope_parameters.partial_rotary_factor\" is {v}, not a number"))?
            }
            None => json.opt_f64("partial_rotary_factor")?.unwrap_or(0.5),
        };
        let n_head = json.u64("num_attention_heads")?;
        let n_embd = json.u64("hidden_size")?;
        let head_dim = json.opt_u64("head_dim")?;
        let n_layer = json.u64("num_hidden_layers")?;
        let hp = Glm4MoeConfig {
            n_layer,
            n_ctx: json.opt_u64("max_position_embeddings")?,
            n_embd,
            n_ff: json.opt_u64("intermediate_size")?,
            n_head,
            n_head_kv: json.opt_u64("num_key_value_heads")?,
            head_dim,
            rope_dim: 0,
            rope_theta: crate::families::common::rope_theta(json)?,
            rms_eps: crate::families::common::rms_eps(json)?,
            vocab_size: json.u64("vocab_size")?,
            n_expert: json.u64("n_routed_experts")?,
            n_expert_used: json.u64("num_experts_per_tok")?,
            n_ff_exp: json.u64("moe_intermediate_size")?,
            n_expert_shared: json.opt_u64("n_shared_experts")?,
            n_group: json.opt_u64("n_group")?,
            topk_group: json.opt_u64("topk_group")?,
            n_dense_lead: json.opt_u64("first_k_dense_replace")?,
            routed_scaling: json.opt_f64("routed_scaling_factor")?,
            norm_topk_prob: opt_bool(json, "norm_topk_prob")?,
            scoring_func: scoring.is_some(),
            n_mtp: json.opt_u64("num_nextn_predict_layers")?,
            qkv_bias: opt_bool(json, "attention_bias")?.unwrap_or(false),
            qk_norm: opt_bool(json, "use_qk_norm")?.unwrap_or(false),
            tied: opt_bool(json, "tie_word_embeddings")?.unwrap_or(false),
        };
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, 4096),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("vocab_size", hp.vocab_size, 1 << 24),
            ("n_routed_experts", hp.n_expert, 1 << 16),
            ("num_experts_per_tok", hp.n_expert_used, u64::MAX),
            ("moe_intermediate_size", hp.n_ff_exp, 1 << 22),
        ])?;
        check_kv_heads(hp.n_head, hp.n_head_kv())?;
        for (key, v, limit) in [
            ("intermediate_size", hp.n_ff, 1 << 22),
            ("n_shared_experts", hp.n_expert_shared, 1 << 10),
            ("n_group", hp.n_group, 1 << 16),
            ("topk_group", hp.topk_group, 1 << 16),
        ] {
            if let Some(v) = v {
                check_sizes(&[(key, v, limit)])?;
            }
        }
        check_head_dim(hp.head_dim(), head_dim.is_some(), n_embd, n_head)?;
        if hp.n_expert_used > hp.n_expert {
            bail!("num_experts_per_tok is {}, not 1 to n_routed_experts ({})", hp.n_expert_used, hp.n_expert);
        }
        let lead = hp.n_dense_lead.unwrap_or(0);
        if lead > hp.n_layer {
            bail!("first_k_dense_replace {lead} is more than the {} layers", hp.n_layer);
        }
        if lead > 0 && hp.n_ff.is_none() {
            bail!("\"intermediate_size\" is missing: the {lead} leading dense layers need it");
        }
        if let Some(n) = hp.n_mtp.filter(|&n| n > 64) {
            bail!("\"num_nextn_predict_layers\" is {n}, more than 64: implausible (a corrupt config.json?)");
        }
        if let Some(s) = hp.routed_scaling
            && !(s.is_finite() && s > 0.0)
        {
            bail!("\"routed_scaling_factor\" is {s}, not a positive number");
        }
        let groups = hp.n_group.unwrap_or(1);
        let used_groups = hp.topk_group.unwrap_or(groups);
        let per_group = hp.n_expert / groups;
        if groups > 1 && (!hp.n_expert.is_multiple_of(groups) || per_group < 2) {
            bail!(
                "n_group {groups} does not divide the {} experts into groups of two or more (a group's score is its \
                 top two)",
                hp.n_expert
            );
        }
        if groups > 1 && (used_groups > groups || hp.n_expert_used > used_groups * per_group) {
            bail!(
                "num_experts_per_tok {} and topk_group {used_groups} do not fit {groups} groups of {per_group} experts",
                hp.n_expert_used
            );
        }
        let hd = hp.head_dim().unwrap_or(0);
        // The converter's int(head_dim * partial_rotary_factor).
        let rope_dim = (hd as f64 * factor).floor();
        if !(factor.is_finite() && rope_dim >= 2.0 && rope_dim <= hd as f64 && (rope_dim as u64).is_multiple_of(2)) {
            bail!(
                "partial_rotary_factor {factor} rotates {rope_dim} of the head's {hd} values; RoPE needs a positive \
                 even number of them, at most the head size"
            );
        }
        Ok((Glm4MoeConfig { rope_dim: rope_dim as u64, ..hp }, warnings))
    }

    /// KV heads (`num_key_value_heads`, else the query heads).
    pub fn n_head_kv(&self) -> u64 {
        self.n_head_kv.unwrap_or(self.n_head)
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> Option<u64> {
        self.head_dim.or(self.n_embd.is_multiple_of(self.n_head).then(|| self.n_embd / self.n_head))
    }

    /// Whether layer `layer`'s feed-forward block is dense (one of the leading dense layers).
    pub fn is_dense(&self, layer: u64) -> bool {
        layer < self.n_dense_lead.unwrap_or(0)
    }

    /// The `glm4moe.*` keys, in the converter's order (`TextModel.set_gguf_parameters`, then
    /// `Glm4MoeModel`'s, whose rewrites of a key keep its first place), with
    /// `general.file_type` and `general.quantization_version` among them. `block_count` counts
    /// the multi-token-prediction layers, which the converter exports.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let k = |key: &str| format!("glm4moe.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![(k("block_count"), u(self.n_layer + self.n_mtp.unwrap_or(0)))];
        m.extend(self.n_ctx.map(|c| (k("context_length"), u(c))));
        m.push((k("embedding_length"), u(self.n_embd)));
        m.extend(self.n_ff.map(|f| (k("feed_forward_length"), u(f))));
        m.push((k("attention.head_count"), u(self.n_head)));
        m.extend(self.n_head_kv.map(|h| (k("attention.head_count_kv"), u(h))));
        m.extend(self.rope_theta.map(|t| (k("rope.freq_base"), Value::F32(t as f32))));
        m.extend(self.rms_eps.map(|e| (k("attention.layer_norm_rms_epsilon"), Value::F32(e as f32))));
        m.push((k("expert_count"), u(self.n_expert)));
        m.push((k("expert_used_count"), u(self.n_expert_used)));
        m.extend(self.n_group.map(|g| (k("expert_group_count"), u(g))));
        m.extend(self.topk_group.map(|g| (k("expert_group_used_count"), u(g))));
        // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID; written here when config.json
        // names the scoring function, else among Glm4MoeModel's keys.
        let gating = (k("expert_gating_func"), u(2));
        if self.scoring_func {
            m.push(gating.clone());
        }
        if let Some(d) = self.head_dim {
            m.push((k("attention.key_length"), u(d)));
            m.push((k("attention.value_length"), u(d)));
        }
        m.push(("general.file_type".into(), Value::U32(file_type)));
        m.push((k("rope.dimension_count"), u(self.rope_dim)));
        m.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
        m.extend(self.n_expert_shared.map(|s| (k("expert_shared_count"), u(s))));
        m.extend(self.n_dense_lead.map(|l| (k("leading_dense_block_count"), u(l))));
        if !self.scoring_func {
            m.push(gating);
        }
        m.extend(self.routed_scaling.map(|s| (k("expert_weights_scale"), Value::F32(s as f32))));
        m.extend(self.norm_topk_prob.map(|n| (k("expert_weights_norm"), Value::Bool(n))));
        m.extend(self.n_mtp.map(|n| (k("nextn_predict_layers"), u(n))));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn air() -> Json {
        json!({
            "architectures": ["Glm4MoeForCausalLM"], "attention_bias": true, "first_k_dense_replace": 1,
            "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 10944,
            "max_position_embeddings": 131072, "moe_intermediate_size": 1408, "n_group": 1,
            "n_routed_experts": 128, "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 96,
            "num_experts_per_tok": 8, "num_hidden_layers": 46, "num_key_value_heads": 8,
            "num_nextn_predict_layers": 1, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-05,
            "rope_scaling": null, "rope_theta": 1000000, "routed_scaling_factor": 1.0, "tie_word_embeddings": false,
            "topk_group": 1, "use_qk_norm": false, "vocab_size": 151552
        })
    }

    fn parse(json: &Json) -> Result<Glm4MoeConfig> {
        Glm4MoeConfig::parse(&Keys::of(json, "")).map(|(c, _)| c)
    }

    #[test]
    fn reads_glm_4_5_air_and_writes_the_converters_keys() {
        let hp = parse(&air()).unwrap();
        assert_eq!((hp.rope_dim, hp.n_mtp, hp.head_dim()), (64, Some(1), Some(128)));
        let keys: Vec<String> = hp.metadata(32).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys[0], "glm4moe.block_count");
        assert_eq!(hp.metadata(32)[0].1, Value::U32(47));
        let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
        assert!(at("glm4moe.attention.value_length") < at("general.file_type"));
        assert!(at("glm4moe.leading_dense_block_count") < at("glm4moe.expert_gating_func"));
        assert_eq!(keys.last().map(String::as_str), Some("general.quantization_version"));
        // A scoring_func key puts the gating function where the converter's generic keys have it.
        let mut j = air();
        j["scoring_func"] = json!("sigmoid");
        let keys: Vec<String> = parse(&j).unwrap().metadata(32).into_iter().map(|(k, _)| k).collect();
        let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
        assert!(at("glm4moe.expert_gating_func") < at("general.file_type"));
        // transformers 5's rope_parameters carry the factor.
        let mut j = air();
        j["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25});
        assert_eq!(parse(&j).unwrap().rope_dim, 32);
    }

    #[test]
    fn refuses_what_llama_cpp_computes_otherwise() {
        type Edit = Box<dyn Fn(&mut Json)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|j| j["scoring_func"] = json!("softmax")), "scoring_func"),
            (Box::new(|j| j["hidden_act"] = json!("gelu")), "hidden_act"),
            (Box::new(|j| j["rope_scaling"] = json!({"type": "yarn", "factor": 4.0})), "yarn"),
            (Box::new(|j| j["partial_rotary_factor"] = json!(0.0)), "partial_rotary_factor"),
            (Box::new(|j| j["partial_rotary_factor"] = json!(1.5)), "partial_rotary_factor"),
            (Box::new(|j| j["n_group"] = json!(3)), "n_group"),
            (Box::new(|j| j["n_group"] = json!(64)), "topk_group"),
            (Box::new(|j| j["num_experts_per_tok"] = json!(200)), "num_experts_per_tok"),
            (Box::new(|j| j["first_k_dense_replace"] = json!(47)), "first_k_dense_replace"),
            (Box::new(|j| j["norm_topk_prob"] = json!("yes")), "norm_topk_prob"),
            (Box::new(|j| j["n_routed_experts"] = json!(0)), "n_routed_experts"),
            (Box::new(|j| j["num_key_value_heads"] = json!(7)), "num_key_value_heads"),
            (Box::new(|j| j["routed_scaling_factor"] = json!(-1.0)), "routed_scaling_factor"),
            (Box::new(|j| j.as_object_mut().unwrap().retain(|k, _| k != "moe_intermediate_size")), "moe_intermediate"),
        ];
        for (edit, why) in cases {
            let mut j = air();
            edit(&mut j);
            let e = parse(&j).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
