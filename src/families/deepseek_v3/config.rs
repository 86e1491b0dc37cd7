//! DeepSeek-V3's typed config: `config.json` read once (multi-head latent attention, shared and
//! routed experts, group-limited sigmoid routing, YaRN with `mscale`, the FP8 block size of
//! the released checkpoints), with what llama.cpp's `deepseek2` architecture cannot compute
//! as transformers' `DeepseekV3ForCausalLM` does refused.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;

use crate::families::ModelConfig;
use crate::families::common::{check_sizes, fp8_block};
use crate::source::config::Keys;

/// YaRN settings (`rope_scaling` or `rope_parameters` with type `yarn`).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    /// `factor`.
    pub factor: f64,
    /// `original_max_position_embeddings`.
    pub orig_ctx: u64,
    /// `beta_fast`, `beta_slow` when given.
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    /// `mscale_all_dim` (equal to `mscale`, checked): the softmax scale grows by
    /// (0.1 · mscale_all_dim · ln factor + 1)².
    pub mscale_all_dim: Option<f64>,
}

/// A DeepSeek-V3 `config.json` (V3, R1 and models on their architecture), typed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepseekV3Config {
    pub n_layer: u64,
    pub n_ctx: u64,
    pub n_embd: u64,
    /// The dense layers' width (`intermediate_size`).
    pub n_ff: u64,
    /// Each routed expert's width (`moe_intermediate_size`); the shared experts together are
    /// `n_expert_shared` times this.
    pub n_ff_exp: u64,
    pub n_head: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_expert_shared: u64,
    /// Expert groups (`n_group`) and groups chosen per token (`topk_group`).
    pub n_group: u64,
    pub topk_group: u64,
    /// The first `first_k_dense_replace` layers are dense.
    pub n_dense_lead: u64,
    pub q_lora_rank: u64,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head_dim: u64,
    pub rope_theta: f64,
    pub yarn: Option<Yarn>,
    pub rms_eps: f64,
    pub routed_scaling: f64,
    pub norm_topk_prob: bool,
    pub vocab_size: u64,
    /// Multi-token-prediction layers after the last layer (`num_nextn_predict_layers`),
    /// dropped as llama.cpp's converter drops them.
    pub n_mtp: u64,
    /// FP8 weights: rows and columns per scale block.
    pub fp8_block: Option<(u64, u64)>,
    /// GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`): its multi-token-prediction layers exported
    /// as extra blocks with `nextn_predict_layers`, as the converter's `Glm4MoeLiteModel` does.
    pub glm_lite: bool,
    /// Whether `config.json` names its `scoring_func` (the converter writes
    /// `expert_gating_func` only then).
    pub gating_key: bool,
}

impl DeepseekV3Config {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(DeepseekV3Config, Vec<String>)> {
        Self::parse(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// [`DeepseekV3Config::load`] for GLM-4.7-Flash (`Glm4MoeLiteForCausalLM`).
    pub fn load_glm_lite(config: &ModelConfig) -> Result<(DeepseekV3Config, Vec<String>)> {
        Self::parse_glm_lite(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys. Returns the hyperparameters and warnings.
    pub fn parse(json: &Keys) -> Result<(DeepseekV3Config, Vec<String>)> {
        Self::parse_as(json, false)
    }

    /// Reads a GLM-4.7-Flash `config.json` (transformers' `Glm4MoeLiteConfig`: DeepSeek-V3's
    /// attention and routing, the dense layers given by `mlp_layer_types`, RoPE over
    /// `partial_rotary_factor` of `qk_rope_head_dim`, always sigmoid routing). What
    /// llama.cpp's `deepseek2` would compute otherwise is refused.
    pub fn parse_glm_lite(json: &Keys) -> Result<(DeepseekV3Config, Vec<String>)> {
        let (hp, warnings) = Self::parse_as(json, true)?;
        // transformers reads the dense layers from mlp_layer_types (default: the first one
        // dense), not first_k_dense_replace, which llama.cpp's converter writes.
        let k = hp.n_dense_lead;
        match json.raw("mlp_layer_types").filter(|v| !v.is_null()) {
            Some(types) => {
                let want: Vec<&str> = (0..hp.n_layer).map(|n| if n < k { "dense" } else { "sparse" }).collect();
                let got: Option<Vec<&str>> = types.as_array().map(|a| a.iter().filter_map(|t| t.as_str()).collect());
                if got.as_deref() != Some(&want[..]) {
                    bail!(
                        "mlp_layer_types is not {k} dense layer(s) then sparse ones (first_k_dense_replace {k}); \
                         llama.cpp's deepseek2 makes only the leading layers dense"
                    );
                }
            }
            None if k != 1.min(hp.n_layer) => bail!(
                "first_k_dense_replace is {k}, but without mlp_layer_types transformers' Glm4MoeLite makes only \
                 layer 0 dense"
            ),
            None => {}
        }
        let partial = json.opt_f64("partial_rotary_factor")?.or(json
            .object("rope_parameters")?
            .map(|r| r.opt_f64("partial_rotary_factor"))
            .transpose()?
            .flatten());
        if let Some(p) = partial
            && p != 1.0
        {
            bail!("partial_rotary_factor is {p}; llama.cpp's deepseek2 rotates all qk_rope_head_dim dimensions");
        }
        if json.bool("rope_interleave")? == Some(false) {
            bail!("rope_interleave is false; llama.cpp's deepseek2 rotates adjacent pairs (rope_interleave true)");
        }
        let glm_flash_size = matches!(hp.n_layer, 47 | 48) && hp.vocab_size == 154880;
        if !hp.gating_key && !glm_flash_size {
            bail!(
                "scoring_func is missing; transformers' Glm4MoeLite routes with sigmoid scores, but llama.cpp routes \
                 a deepseek2 GGUF without expert_gating_func with softmax unless it has GLM-4.7-Flash's 47 layers \
                 and 154880 tokens (set \"scoring_func\": \"sigmoid\")"
            );
        }
        Ok((hp, warnings))
    }

    fn parse_as(json: &Keys, glm_lite: bool) -> Result<(DeepseekV3Config, Vec<String>)> {
        let mut warnings = Vec::new();
        let n_head = json.u64("num_attention_heads")?;
        if let Some(kv) = json.opt_u64("num_key_value_heads")?
            && kv != n_head
        {
            bail!(
                "num_key_value_heads is {kv}, not num_attention_heads {n_head}; DeepSeek-V3's kv_b_proj has a key and value per head"
            );
        }
        if json.raw("q_lora_rank").is_none() {
            bail!(
                "q_lora_rank is missing or null; moeq converts DeepSeek-V3 models, whose queries have a low-rank projection"
            );
        }
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; DeepSeek-V3 and llama.cpp's deepseek2 run SiLU");
        }
        if json.bool("attention_bias")? == Some(true) {
            bail!("attention_bias is true; llama.cpp's deepseek2 has no attention biases");
        }
        if let Some(freq) = json.opt_u64("moe_layer_freq")?
            && freq != 1
        {
            bail!("moe_layer_freq is {freq}; llama.cpp's deepseek2 makes every layer after the dense ones MoE");
        }
        match json.str("scoring_func")? {
            Some("sigmoid") => {}
            Some(other) => bail!("scoring_func is '{other}'; DeepSeek-V3 routes with sigmoid scores"),
            None if glm_lite => {}
            None => bail!(
                "scoring_func is missing; llama.cpp would route with softmax where DeepSeek-V3 uses sigmoid scores"
            ),
        }
        let norm_topk_prob = json.bool("norm_topk_prob")?.context("\"norm_topk_prob\" is missing or not a boolean")?;
        let routed_scaling = json.opt_f64("routed_scaling_factor")?.context("\"routed_scaling_factor\" is missing")?;

        let rope = json.object("rope_scaling")?.or(json.object("rope_parameters")?);
        let mut yarn = None;
        if let Some(r) = &rope {
            match r.str("rope_type")?.or(r.str("type")?) {
                Some("yarn") => {
                    let factor = crate::families::common::rope_factor(r, "yarn", None)?;
                    let orig_ctx = r.u64("original_max_position_embeddings")?;
                    for key in ["attention_factor", "attn_factor", "extrapolation_factor"] {
                        if r.has(key) {
                            bail!(
                                "rope_scaling.{key} is set; moeq converts YaRN as DeepSeek-V3 configures it (factor, betas, mscale)"
                            );
                        }
                    }
                    let (mscale, all) = (r.opt_f64("mscale")?, r.opt_f64("mscale_all_dim")?);
                    if factor > 1.0 && !(all.is_some_and(|a| a != 0.0) && mscale == all) {
                        bail!(
                            "rope_scaling has mscale {mscale:?} and mscale_all_dim {all:?}; llama.cpp's deepseek2 \
                             takes mscale equal to mscale_all_dim (non-zero), so the GGUF would compute another model"
                        );
                    }
                    if r.bool("truncate")? == Some(false) {
                        warnings.push(
                            "rope_scaling.truncate is false; llama.cpp rounds YaRN's correction range".to_string(),
                        );
                    }
                    yarn = Some(Yarn {
                        factor,
                        orig_ctx,
                        beta_fast: r.opt_f64("beta_fast")?,
                        beta_slow: r.opt_f64("beta_slow")?,
                        mscale_all_dim: all,
                    });
                }
                Some("default") | None => {}
                Some(other) => bail!("rope type '{other}' is not one llama.cpp's deepseek2 runs (yarn or none)"),
            }
        }
        let rope_theta = crate::families::common::rope_theta(json)?.unwrap_or(10000.0);
        let rms_eps = crate::families::common::rms_eps(json)?.unwrap_or(1e-6);
        if rms_eps != 1e-6 {
            warnings.push(format!(
                "rms_norm_eps is {rms_eps:e}; transformers normalizes the q and kv latents with 1e-6, \
                 llama.cpp with rms_norm_eps"
            ));
        }
        let hp = DeepseekV3Config {
            n_layer: json.u64("num_hidden_layers")?,
            n_ctx: json.opt_u64("max_position_embeddings")?.unwrap_or(4096),
            n_embd: json.u64("hidden_size")?,
            n_ff: json.u64("intermediate_size")?,
            n_ff_exp: json.u64("moe_intermediate_size")?,
            n_head,
            n_expert: json.u64("n_routed_experts")?,
            n_expert_used: json.u64("num_experts_per_tok")?,
            n_expert_shared: json.u64("n_shared_experts")?,
            n_group: json.u64("n_group")?,
            topk_group: json.u64("topk_group")?,
            n_dense_lead: json.u64("first_k_dense_replace")?,
            q_lora_rank: json.u64("q_lora_rank")?,
            kv_lora_rank: json.u64("kv_lora_rank")?,
            qk_nope: json.u64("qk_nope_head_dim")?,
            qk_rope: json.u64("qk_rope_head_dim")?,
            v_head_dim: json.u64("v_head_dim")?,
            rope_theta,
            yarn,
            rms_eps,
            routed_scaling,
            norm_topk_prob,
            vocab_size: json.u64("vocab_size")?,
            n_mtp: json.opt_u64("num_nextn_predict_layers")?.unwrap_or(0),
            fp8_block: fp8_block(json)?,
            glm_lite,
            gating_key: json.str("scoring_func")?.is_some(),
        };
        const NONE: u64 = u64::MAX;
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, 4096),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("intermediate_size", hp.n_ff, 1 << 22),
            ("moe_intermediate_size", hp.n_ff_exp, 1 << 22),
            ("num_attention_heads", hp.n_head, 1 << 16),
            ("n_routed_experts", hp.n_expert, 1 << 16),
            ("num_experts_per_tok", hp.n_expert_used, NONE),
            ("n_shared_experts", hp.n_expert_shared, NONE),
            ("n_group", hp.n_group, NONE),
            ("topk_group", hp.topk_group, NONE),
            ("q_lora_rank", hp.q_lora_rank, 1 << 20),
            ("kv_lora_rank", hp.kv_lora_rank, 1 << 20),
            ("qk_nope_head_dim", hp.qk_nope, 1 << 20),
            ("qk_rope_head_dim", hp.qk_rope, 1 << 20),
            ("v_head_dim", hp.v_head_dim, 1 << 20),
            ("vocab_size", hp.vocab_size, 1 << 24),
        ])?;
        if !hp.qk_rope.is_multiple_of(2) {
            bail!("\"qk_rope_head_dim\" is {}, not an even number (RoPE rotates pairs)", hp.qk_rope);
        }
        if hp.n_mtp > 64 {
            bail!("\"num_nextn_predict_layers\" is {}, more than 64: implausible (a corrupt config.json?)", hp.n_mtp);
        }
        if hp.n_dense_lead > hp.n_layer {
            bail!("first_k_dense_replace {} is more than the {} layers", hp.n_dense_lead, hp.n_layer);
        }
        let per_group = hp.n_expert / hp.n_group;
        if !hp.n_expert.is_multiple_of(hp.n_group) || (hp.n_group > 1 && per_group < 2) {
            bail!(
                "n_group {} does not divide the {} experts into groups of two or more (a group's score is its top two)",
                hp.n_group,
                hp.n_expert
            );
        }
        if hp.topk_group > hp.n_group || hp.n_expert_used > hp.topk_group * per_group {
            bail!(
                "num_experts_per_tok {} and topk_group {} do not fit {} groups of {per_group} experts",
                hp.n_expert_used,
                hp.topk_group,
                hp.n_group
            );
        }
        Ok((hp, warnings))
    }

    /// The `deepseek2.*` keys, in the converter's order (`DeepseekV2Model.set_gguf_parameters`
    /// over transformers' config), with `general.file_type` and `general.quantization_version`
    /// among them.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let k = |key: &str| format!("deepseek2.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let f = |v: f64| Value::F32(v as f32);
        // GLM-4.7-Flash's converter counts its multi-token-prediction blocks.
        let mtp = if self.glm_lite { self.n_mtp } else { 0 };
        let mut m = vec![
            (k("block_count"), u(self.n_layer + mtp)),
            (k("context_length"), u(self.n_ctx)),
            (k("embedding_length"), u(self.n_embd)),
            (k("feed_forward_length"), u(self.n_ff)),
            (k("attention.head_count"), u(self.n_head)),
            // MLA runs as MQA over the latent: one KV head.
            (k("attention.head_count_kv"), u(1)),
        ];
        if let Some(y) = &self.yarn {
            m.push((k("rope.scaling.type"), Value::String("yarn".into())));
            m.push((k("rope.scaling.factor"), f(y.factor)));
            m.push((k("rope.scaling.original_context_length"), u(y.orig_ctx)));
            m.extend(y.beta_fast.map(|b| (k("rope.scaling.yarn_beta_fast"), f(b))));
            m.extend(y.beta_slow.map(|b| (k("rope.scaling.yarn_beta_slow"), f(b))));
        }
        m.extend([
            (k("rope.freq_base"), f(self.rope_theta)),
            (k("attention.layer_norm_rms_epsilon"), f(self.rms_eps)),
            (k("expert_count"), u(self.n_expert)),
            (k("expert_used_count"), u(self.n_expert_used)),
            (k("expert_group_count"), u(self.n_group)),
            (k("expert_group_used_count"), u(self.topk_group)),
        ]);
        if self.gating_key {
            // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID.
            m.push((k("expert_gating_func"), u(2)));
        }
        // The MQA key and value lengths: where the converter's hparams first set them (a
        // `head_dim` key, which transformers' DeepseekV3Config has and Glm4MoeLiteConfig maps
        // to qk_rope_head_dim, is written before the file type), then overwritten.
        let kv_lengths = [
            (k("attention.key_length"), u(self.kv_lora_rank + self.qk_rope)),
            (k("attention.value_length"), u(self.kv_lora_rank)),
        ];
        if !self.glm_lite {
            m.extend(kv_lengths.clone());
        }
        m.extend([
            ("general.file_type".into(), Value::U32(file_type)),
            (k("leading_dense_block_count"), u(self.n_dense_lead)),
            (k("vocab_size"), u(self.vocab_size)),
            (k("attention.q_lora_rank"), u(self.q_lora_rank)),
            (k("attention.kv_lora_rank"), u(self.kv_lora_rank)),
        ]);
        if self.glm_lite {
            m.extend(kv_lengths);
        }
        m.extend([
            (k("attention.key_length_mla"), u(self.qk_nope + self.qk_rope)),
            (k("attention.value_length_mla"), u(self.v_head_dim)),
            (k("expert_feed_forward_length"), u(self.n_ff_exp)),
            (k("expert_shared_count"), u(self.n_expert_shared)),
            (k("expert_weights_scale"), f(self.routed_scaling)),
        ]);
        if self.norm_topk_prob {
            m.push((k("expert_weights_norm"), Value::Bool(true)));
        }
        m.push((k("rope.dimension_count"), u(self.qk_rope)));
        if let Some(all) = self.yarn.as_ref().and_then(|y| y.mscale_all_dim) {
            // The converter writes 0.1 · mscale_all_dim; llama.cpp divides it by 0.1 again.
            m.push((k("rope.scaling.yarn_log_multiplier"), f(0.1 * all)));
        }
        if mtp > 0 {
            m.push((k("nextn_predict_layers"), u(mtp)));
        }
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

    fn v3() -> Json {
        json!({
            "architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": 3, "hidden_size": 64,
            "intermediate_size": 256, "moe_intermediate_size": 32, "num_attention_heads": 4,
            "num_key_value_heads": 4, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_shared_experts": 2,
            "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1, "q_lora_rank": 96, "kv_lora_rank": 160,
            "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "vocab_size": 512,
            "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                             "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1},
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
        })
    }

    fn parse(json: &Json) -> Result<(DeepseekV3Config, Vec<String>)> {
        DeepseekV3Config::parse(&Keys::of(json, ""))
    }

    #[test]
    fn reads_v3_and_writes_the_converters_keys() {
        let (hp, warnings) = parse(&v3()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!((hp.fp8_block, hp.n_mtp, hp.n_ctx), (Some((128, 128)), 0, 4096));
        let keys: Vec<String> = hp.metadata(32).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.first().map(String::as_str), Some("deepseek2.block_count"));
        assert_eq!(keys.iter().position(|k| k == "general.file_type"), Some(20));
        assert_eq!(keys.last().map(String::as_str), Some("general.quantization_version"));
        // transformers 5's rope_parameters (with rope_theta inside) read the same.
        let mut j = v3();
        let mut rope = j["rope_scaling"].take();
        rope["rope_theta"] = json!(50000.0);
        j["rope_parameters"] = rope;
        j.as_object_mut().unwrap().remove("rope_scaling");
        let (hp2, _) = parse(&j).unwrap();
        assert_eq!((hp2.yarn, hp2.rope_theta), (hp.yarn, 50000.0));
    }

    #[test]
    fn refuses_what_llama_cpp_computes_otherwise() {
        type Edit = Box<dyn Fn(&mut Json)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|j| j["rope_scaling"]["mscale"] = json!(0.707)), "mscale"),
            (Box::new(|j| j["rope_scaling"].as_object_mut().unwrap().retain(|k, _| k != "mscale_all_dim")), "mscale"),
            (Box::new(|j| j["scoring_func"] = json!("softmax")), "scoring_func"),
            (Box::new(|j| j.as_object_mut().unwrap().retain(|k, _| k != "scoring_func")), "scoring_func"),
            (Box::new(|j| j["q_lora_rank"] = Json::Null), "q_lora_rank"),
            (Box::new(|j| j["num_key_value_heads"] = json!(1)), "num_key_value_heads"),
            (Box::new(|j| j["moe_layer_freq"] = json!(2)), "moe_layer_freq"),
            (Box::new(|j| j["n_group"] = json!(3)), "n_group"),
            (Box::new(|j| j["n_group"] = json!(16)), "groups of two"),
            (Box::new(|j| j["num_experts_per_tok"] = json!(9)), "topk_group"),
            (Box::new(|j| j["attention_bias"] = json!(true)), "attention_bias"),
            (Box::new(|j| j.as_object_mut().unwrap().retain(|k, _| k != "routed_scaling_factor")), "routed_scaling"),
            (Box::new(|j| j["quantization_config"]["fmt"] = json!("e5m2")), "e5m2"),
            (Box::new(|j| j["quantization_config"]["weight_block_size"] = json!([128])), "weight_block_size"),
            (Box::new(|j| j["quantization_config"]["quant_method"] = json!("gptq")), "gptq"),
            (Box::new(|j| j["rope_scaling"]["type"] = json!("linear")), "linear"),
            (Box::new(|j| j["first_k_dense_replace"] = json!(4)), "first_k_dense_replace"),
        ];
        for (edit, why) in cases {
            let mut j = v3();
            edit(&mut j);
            let e = parse(&j).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        let mut j = v3();
        j["rms_norm_eps"] = json!(1e-5);
        assert!(parse(&j).unwrap().1[0].contains("rms_norm_eps"));
    }

    /// GLM-4.7-Flash's released config.json (no scoring_func: llama.cpp routes it by sigmoid at
    /// this size): the MTP block counted, no gating key, the MQA lengths after kv_lora_rank.
    #[test]
    fn reads_glm_4_7_flash() {
        let j = json!({
            "architectures": ["Glm4MoeLiteForCausalLM"], "num_hidden_layers": 47, "hidden_size": 2048,
            "intermediate_size": 10240, "moe_intermediate_size": 1536, "num_attention_heads": 20,
            "num_key_value_heads": 20, "n_routed_experts": 64, "num_experts_per_tok": 4, "n_shared_experts": 1,
            "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "q_lora_rank": 768, "kv_lora_rank": 512,
            "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "v_head_dim": 256, "vocab_size": 154880,
            "norm_topk_prob": true, "routed_scaling_factor": 1.8, "rope_theta": 1000000, "rope_scaling": null,
            "partial_rotary_factor": 1.0, "rms_norm_eps": 1e-5, "num_nextn_predict_layers": 1,
            "topk_method": "noaux_tc"
        });
        let (hp, warnings) = DeepseekV3Config::parse_glm_lite(&Keys::of(&j, "")).unwrap();
        assert!(warnings[0].contains("rms_norm_eps"));
        let m = hp.metadata(32);
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!keys.contains(&"deepseek2.expert_gating_func"));
        assert_eq!(m[0].1, Value::U32(48));
        assert_eq!(keys.iter().rev().nth(1), Some(&"deepseek2.nextn_predict_layers"));
        let kv = keys.iter().position(|k| *k == "deepseek2.attention.kv_lora_rank").unwrap();
        assert_eq!(keys[kv + 1], "deepseek2.attention.key_length");
        // Another size without scoring_func would be routed by softmax in llama.cpp.
        let mut small = j.clone();
        small["num_hidden_layers"] = json!(3);
        let e = DeepseekV3Config::parse_glm_lite(&Keys::of(&small, "")).unwrap_err().to_string();
        assert!(e.contains("scoring_func"), "{e}");
    }
}
