//! MiniMax-M2 / M2.1's typed config (`MiniMaxM2ForCausalLM`): `config.json` read once (GQA with
//! q/k RMSNorms over the whole projections, RoPE over the first `rotary_dim` values of each
//! head, every layer MoE with sigmoid routing and a correction bias, Mixtral's `w1/w2/w3`
//! experts, FP8 with block scales as released), with what llama.cpp's `minimax-m2` cannot
//! compute as transformers does refused, naming the key.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;
use serde_json::Value as Json;

use crate::families::ModelConfig;
use crate::families::common::{check_head_dim, check_kv_heads, check_sizes, fp8_block};
use crate::source::config::Keys;

/// A MiniMax-M2 `config.json`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct MiniMaxM2Config {
    pub n_layer: u64,
    pub n_ctx: Option<u64>,
    pub n_embd: u64,
    /// Each expert's width (`intermediate_size`; the converter writes it as both
    /// `feed_forward_length` and `expert_feed_forward_length`).
    pub n_ff_exp: u64,
    pub n_head: u64,
    pub n_head_kv: Option<u64>,
    /// `head_dim` (required: transformers takes 128 without it, llama.cpp hidden / heads).
    pub head_dim: u64,
    /// Values of each head RoPE rotates (`rotary_dim`).
    pub rope_dim: u64,
    pub rope_theta: Option<f64>,
    pub rms_eps: Option<f64>,
    pub vocab_size: u64,
    /// Experts (`num_local_experts`, or `num_experts`) and experts per token.
    pub n_expert: u64,
    pub n_expert_used: u64,
    /// FP8 blocks (`quantization_config.weight_block_size`) when the checkpoint is FP8.
    pub fp8_block: Option<(u64, u64)>,
}

impl MiniMaxM2Config {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(MiniMaxM2Config, Vec<String>)> {
        Self::parse(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys. Returns the hyperparameters and warnings.
    ///
    /// Errors: a missing or invalid size; `scoring_func` missing or not `sigmoid` (llama.cpp
    /// routes by the gating function the converter writes from it; transformers always uses
    /// sigmoid scores); `rotary_dim` missing, odd, zero, more than `head_dim`, or disagreeing
    /// with a `partial_rotary_factor`; a RoPE scaling type; `use_qk_norm` false or
    /// `qk_norm_type` other than `per_layer` (transformers and llama.cpp norm whole
    /// projections); a shared expert (`shared_intermediate_size` > 0); tied embeddings
    /// (llama.cpp's `minimax-m2` needs `output.weight`); linear-attention layers in
    /// `attn_type_list` (MiniMax-01's); an FP8 `quantization_config` moeq does not read.
    pub fn parse(json: &Keys) -> Result<(MiniMaxM2Config, Vec<String>)> {
        let warnings = Vec::new();
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; MiniMax-M2 and llama.cpp's minimax-m2 run SiLU");
        }
        match json.raw("scoring_func") {
            Some(Json::String(s)) if s == "sigmoid" => {}
            Some(v) => bail!("scoring_func is {v}; MiniMax-M2 routes with sigmoid scores (transformers, llama.cpp)"),
            None => bail!(
                "\"scoring_func\" is missing; llama.cpp's minimax-m2 routes by the gating function the converter writes \
                 from it (MiniMax-M2's is \"sigmoid\")"
            ),
        }
        let rope = json.object("rope_parameters")?.or(json.object("rope_scaling")?);
        if let Some(r) = &rope {
            match r.str("rope_type")?.or(r.str("type")?) {
                Some("default") | None => {}
                Some(other) => bail!(
                    "rope type '{other}' is set; moeq converts MiniMax-M2 with plain RoPE, as the released models have it"
                ),
            }
        }
        for (key, want) in [("use_qk_norm", true), ("tie_word_embeddings", false)] {
            match json.raw(key) {
                None | Some(Json::Null) => {}
                Some(Json::Bool(b)) if *b == want => {}
                Some(Json::Bool(_)) if key == "use_qk_norm" => bail!(
                    "use_qk_norm is false; transformers' MiniMax-M2 and llama.cpp's minimax-m2 always norm q and k"
                ),
                Some(Json::Bool(_)) => {
                    bail!("tie_word_embeddings is true; llama.cpp's minimax-m2 needs its own output.weight (lm_head)")
                }
                Some(v) => bail!("\"{key}\" is {v}, not a boolean"),
            }
        }
        if let Some(t) = json.raw("qk_norm_type")
            && t.as_str() != Some("per_layer")
        {
            bail!(
                "qk_norm_type is {t}; MiniMax-M2 norms each whole q and k projection ('per_layer'), as transformers and \
                 llama.cpp's minimax-m2 compute it"
            );
        }
        if let Some(s) = json.opt_u64("shared_intermediate_size")?
            && s > 0
        {
            bail!("shared_intermediate_size is {s}; MiniMax-M2 has no shared expert (transformers, llama.cpp)");
        }
        if let Some(list) = json.raw("attn_type_list") {
            let Some(a) = list.as_array() else { bail!("\"attn_type_list\" is {list}, not a list") };
            if let Some(i) = a.iter().position(|v| v.as_u64() != Some(1)) {
                bail!(
                    "attn_type_list[{i}] is {}; MiniMax-M2 has full attention (1) in every layer (0 is MiniMax-01's \
                     linear attention)",
                    a[i]
                );
            }
        }
        let n_expert = match json.opt_u64("num_local_experts")? {
            Some(n) => n,
            None => json.u64("num_experts").context("\"num_local_experts\" is missing")?,
        };
        let head_dim = json.opt_u64("head_dim")?.context(
            "\"head_dim\" is missing; transformers' MiniMax-M2 then takes 128 and llama.cpp hidden_size / heads",
        )?;
        let hp = MiniMaxM2Config {
            n_layer: json.u64("num_hidden_layers")?,
            n_ctx: json.opt_u64("max_position_embeddings")?,
            n_embd: json.u64("hidden_size")?,
            n_ff_exp: json.u64("intermediate_size")?,
            n_head: json.u64("num_attention_heads")?,
            n_head_kv: json.opt_u64("num_key_value_heads")?,
            head_dim,
            rope_dim: json.u64("rotary_dim")?,
            rope_theta: crate::families::common::rope_theta(json)?,
            rms_eps: crate::families::common::rms_eps(json)?,
            vocab_size: json.u64("vocab_size")?,
            n_expert,
            n_expert_used: json.u64("num_experts_per_tok")?,
            fp8_block: fp8_block(json)?,
        };
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, 4096),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("vocab_size", hp.vocab_size, 1 << 24),
            ("num_local_experts", hp.n_expert, 1 << 16),
            ("num_experts_per_tok", hp.n_expert_used, u64::MAX),
            ("intermediate_size", hp.n_ff_exp, 1 << 22),
            ("head_dim", hp.head_dim, 1 << 16),
        ])?;
        check_kv_heads(hp.n_head, hp.n_head_kv())?;
        check_head_dim(Some(hp.head_dim), true, hp.n_embd, hp.n_head)?;
        if hp.n_expert_used > hp.n_expert {
            bail!("num_experts_per_tok is {}, not 1 to num_local_experts ({})", hp.n_expert_used, hp.n_expert);
        }
        let (rot, hd) = (hp.rope_dim, hp.head_dim);
        if rot < 2 || rot > hd || !rot.is_multiple_of(2) {
            bail!("rotary_dim {rot} of the head's {hd} values; RoPE needs a positive even number, at most head_dim");
        }
        // transformers rotates int(head_dim · partial_rotary_factor) values, the factor being
        // rotary_dim / head_dim unless config.json gives one.
        let factor = match rope.as_ref().and_then(|r| r.raw("partial_rotary_factor")) {
            Some(v) => Some(
                v.as_f64()
                    .with_context(|| format!("\"rope_parameters.partial_rotary_factor\" is {v}, not a number"))?,
            ),
            None => json.opt_f64("partial_rotary_factor")?,
        }
        .unwrap_or(rot as f64 / hd as f64);
        let rotated = (hd as f64 * factor).floor();
        if rotated != rot as f64 {
            bail!(
                "rotary_dim is {rot}, but transformers rotates {rotated} of the head's {hd} values \
                 (partial_rotary_factor {factor}); llama.cpp's minimax-m2 rotates rotary_dim"
            );
        }
        Ok((hp, warnings))
    }

    /// KV heads (`num_key_value_heads`, else the query heads).
    pub fn n_head_kv(&self) -> u64 {
        self.n_head_kv.unwrap_or(self.n_head)
    }

    /// The `minimax-m2.*` keys, in the converter's order (`TextModel.set_gguf_parameters`,
    /// then `MiniMaxM2Model`'s), with `general.file_type` and `general.quantization_version`.
    pub fn metadata(&self, file_type: u32) -> Vec<(String, Value)> {
        let k = |key: &str| format!("minimax-m2.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![(k("block_count"), u(self.n_layer))];
        m.extend(self.n_ctx.map(|c| (k("context_length"), u(c))));
        m.push((k("embedding_length"), u(self.n_embd)));
        m.push((k("feed_forward_length"), u(self.n_ff_exp)));
        m.push((k("attention.head_count"), u(self.n_head)));
        m.extend(self.n_head_kv.map(|h| (k("attention.head_count_kv"), u(h))));
        m.extend(self.rope_theta.map(|t| (k("rope.freq_base"), Value::F32(t as f32))));
        m.extend(self.rms_eps.map(|e| (k("attention.layer_norm_rms_epsilon"), Value::F32(e as f32))));
        m.push((k("expert_count"), u(self.n_expert)));
        m.push((k("expert_used_count"), u(self.n_expert_used)));
        // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID, from scoring_func.
        m.push((k("expert_gating_func"), u(2)));
        m.push((k("attention.key_length"), u(self.head_dim)));
        m.push((k("attention.value_length"), u(self.head_dim)));
        m.push(("general.file_type".into(), Value::U32(file_type)));
        m.push((k("expert_feed_forward_length"), u(self.n_ff_exp)));
        m.push((k("rope.dimension_count"), u(self.rope_dim)));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// MiniMax-M2's released config.json (the keys moeq reads, and the others it meets).
    fn m2() -> Json {
        json!({
            "architectures": ["MiniMaxM2ForCausalLM"], "attn_type_list": [1, 1, 1], "head_dim": 128,
            "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 1536,
            "max_position_embeddings": 196608, "model_type": "minimax_m2", "mtp_transformer_layers": 1,
            "num_attention_heads": 48, "num_experts_per_tok": 8, "num_hidden_layers": 62,
            "num_key_value_heads": 8, "num_local_experts": 256, "num_mtp_modules": 3,
            "qk_norm_type": "per_layer", "rms_norm_eps": 1e-06, "rope_theta": 5000000, "rotary_dim": 64,
            "scoring_func": "sigmoid", "shared_intermediate_size": 0, "tie_word_embeddings": false,
            "use_mtp": true, "use_qk_norm": true, "use_routing_bias": true, "vocab_size": 200064,
            "quantization_config": {"activation_scheme": "dynamic", "fmt": "float8_e4m3fn", "quant_method": "fp8",
                                    "weight_block_size": [128, 128]}
        })
    }

    fn parse(json: &Json) -> Result<MiniMaxM2Config> {
        MiniMaxM2Config::parse(&Keys::of(json, "")).map(|(c, _)| c)
    }

    #[test]
    fn reads_minimax_m2_and_writes_the_converters_keys() {
        let hp = parse(&m2()).unwrap();
        assert_eq!((hp.rope_dim, hp.head_dim, hp.n_expert, hp.fp8_block), (64, 128, 256, Some((128, 128))));
        let keys: Vec<String> = hp.metadata(32).into_iter().map(|(k, _)| k).collect();
        let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
        assert!(at("minimax-m2.expert_gating_func") < at("general.file_type"));
        assert!(at("general.file_type") < at("minimax-m2.expert_feed_forward_length"));
        assert!(at("minimax-m2.expert_feed_forward_length") < at("minimax-m2.rope.dimension_count"));
        // transformers 5's form: num_experts and rope_parameters.
        let mut j = m2();
        j.as_object_mut().unwrap().remove("num_local_experts");
        j["num_experts"] = json!(256);
        j["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.5});
        assert_eq!(parse(&j).unwrap().n_expert, 256);
    }

    #[test]
    fn refuses_what_llama_cpp_computes_otherwise() {
        type Edit = Box<dyn Fn(&mut Json)>;
        let drop = |k: &'static str| -> Edit { Box::new(move |j: &mut Json| _ = j.as_object_mut().unwrap().remove(k)) };
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|j| j["scoring_func"] = json!("softmax")), "scoring_func"),
            (drop("scoring_func"), "scoring_func"),
            (Box::new(|j| j["hidden_act"] = json!("gelu")), "hidden_act"),
            (Box::new(|j| j["rope_scaling"] = json!({"type": "yarn", "factor": 4.0})), "yarn"),
            (drop("rotary_dim"), "rotary_dim"),
            (Box::new(|j| j["rotary_dim"] = json!(0)), "rotary_dim"),
            (Box::new(|j| j["rotary_dim"] = json!(63)), "rotary_dim"),
            (Box::new(|j| j["rotary_dim"] = json!(256)), "rotary_dim"),
            (Box::new(|j| j["partial_rotary_factor"] = json!(0.25)), "partial_rotary_factor"),
            (Box::new(|j| j["use_qk_norm"] = json!(false)), "use_qk_norm"),
            (Box::new(|j| j["use_qk_norm"] = json!("yes")), "use_qk_norm"),
            (Box::new(|j| j["qk_norm_type"] = json!("per_head")), "qk_norm_type"),
            (Box::new(|j| j["tie_word_embeddings"] = json!(true)), "tie_word_embeddings"),
            (Box::new(|j| j["shared_intermediate_size"] = json!(1536)), "shared_intermediate_size"),
            (Box::new(|j| j["attn_type_list"] = json!([1, 0, 1])), "attn_type_list"),
            (drop("head_dim"), "head_dim"),
            (Box::new(|j| j["num_experts_per_tok"] = json!(300)), "num_experts_per_tok"),
            (Box::new(|j| j["num_local_experts"] = json!(0)), "num_local_experts"),
            (Box::new(|j| j["num_key_value_heads"] = json!(7)), "num_key_value_heads"),
            (drop("intermediate_size"), "intermediate_size"),
            (Box::new(|j| j["quantization_config"]["weight_block_size"] = json!([128])), "weight_block_size"),
            (Box::new(|j| j["quantization_config"]["fmt"] = json!("e5m2")), "e5m2"),
        ];
        for (edit, why) in cases {
            let mut j = m2();
            edit(&mut j);
            let e = format!("{:#}", parse(&j).unwrap_err());
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
