//! gpt-oss's typed config: `config.json` in the Hugging Face or OpenAI original form, read
//! once, with what llama.cpp cannot carry refused (a different `swiglu_limit`, YaRN betas,
//! layer pattern, tied embeddings) and what it rounds warned about.

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;

use crate::families::common::{check_kv_heads, check_sizes};
use crate::families::{ModelConfig, SourceLayout};
use crate::source::config::Keys;

/// gpt-oss's `config.json` (either layout), typed: the hyperparameters llama.cpp reads.
#[derive(Clone, Debug, PartialEq)]
pub struct GptOssConfig {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub sliding_window: u64,
    pub n_ctx: u64,
    pub rope_theta: f64,
    /// YaRN: factor, original context, beta_fast, beta_slow.
    pub yarn: Option<(f64, u64, f64, f64)>,
    pub rms_eps: f64,
    pub vocab_size: u64,
}

impl GptOssConfig {
    /// Reads the `config.json` of a checkpoint (either layout) once, with the file named in
    /// errors. Returns the config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(GptOssConfig, Vec<String>)> {
        // The file's own form, whatever layout the tensors are in.
        let keys = config.keys();
        let form = if super::original_form(&keys) {
            SourceLayout::OpenAiOriginal
        } else if config.layout == SourceLayout::Mlx {
            // An MLX build's config is in Hugging Face's form; mlx-lm reads it its own way.
            SourceLayout::Mlx
        } else {
            SourceLayout::Hf
        };
        Self::parse(&keys, form).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json` of either form (`layout` OpenAI original or not; [`SourceLayout::Mlx`]
    /// for an MLX build's, which mlx-lm reads: a tied head is not refused), checking what
    /// llama.cpp cannot carry. Returns the hyperparameters and warnings; settings that would
    /// change the model's output are errors.
    pub fn parse(json: &Keys, layout: SourceLayout) -> Result<(GptOssConfig, Vec<String>)> {
        let mut warnings = Vec::new();
        let original = layout == SourceLayout::OpenAiOriginal;
        let (experts, used) =
            if original { ("num_experts", "experts_per_token") } else { ("num_local_experts", "num_experts_per_tok") };
        let rope_theta = crate::families::common::rope_theta(json)?.context("\"rope_theta\" is missing")?;
        let (n_ctx, yarn, rms_eps) = if original {
            let factor = json.opt_f64("rope_scaling_factor")?.unwrap_or(1.0);
            let orig = json.u64("initial_context_length")?;
            let alpha = json.opt_f64("rope_ntk_alpha")?.unwrap_or(1.0);
            let beta = json.opt_f64("rope_ntk_beta")?.unwrap_or(32.0);
            let yarn = (factor > 1.0).then_some((factor, orig, beta, alpha));
            // The original config has no context length; the Hugging Face conversion writes
            // initial_context_length · factor (131072) and eps is fixed at 1e-5.
            ((orig as f64 * factor.max(1.0)) as u64, yarn, 1e-5)
        } else {
            let rope = json.object("rope_scaling")?.or(json.object("rope_parameters")?);
            let yarn = match rope {
                Some(r) => match r.str("rope_type")?.or(r.str("type")?) {
                    Some("yarn") => {
                        let factor = crate::families::common::rope_factor(&r, "yarn", None)?;
                        let orig = r.u64("original_max_position_embeddings")?;
                        if r.bool("truncate")? == Some(false) {
                            warnings.push(
                                "rope_scaling.truncate is false; llama.cpp always rounds the YaRN correction range \
                                 (a tiny, known deviation at long context)"
                                    .into(),
                            );
                        }
                        for k in ["attention_factor", "mscale", "mscale_all_dim", "extrapolation_factor"] {
                            if r.has(k) {
                                bail!("rope_scaling.{k} is set; llama.cpp's gpt-oss graph does not read it");
                            }
                        }
                        Some((
                            factor,
                            orig,
                            r.opt_f64("beta_fast")?.unwrap_or(32.0),
                            r.opt_f64("beta_slow")?.unwrap_or(1.0),
                        ))
                    }
                    Some("default") | None => None,
                    Some(other) => bail!("rope type '{other}' is not what llama.cpp runs for gpt-oss (yarn)"),
                },
                None => None,
            };
            (json.u64("max_position_embeddings")?, yarn, crate::families::common::rms_eps(json)?.unwrap_or(1e-5))
        };
        if let Some((_, _, fast, slow)) = yarn
            && (fast != 32.0 || slow != 1.0)
        {
            bail!(
                "YaRN beta_fast {fast} / beta_slow {slow}: llama.cpp's loader ignores these keys and uses 32 / 1 (so does \
                 moeq's forward, which follows it): a GGUF would compute another model, and moeq cannot run this one"
            );
        }
        if let Some(limit) = json.opt_f64("swiglu_limit")?
            && limit != 7.0
        {
            bail!(
                "swiglu_limit is {limit}; llama.cpp hard-codes 7.0 for gpt-oss (so does moeq's forward, which follows \
                 it): a GGUF would compute another model, and moeq cannot run this one"
            );
        }
        if let Some(alpha) = json.opt_f64("swiglu_alpha")?
            && alpha != 1.702
        {
            bail!(
                "swiglu_alpha is {alpha}; llama.cpp hard-codes 1.702 for gpt-oss (so does moeq's forward): a GGUF would \
                 compute another model, and moeq cannot run this one"
            );
        }
        // mlx-lm's gpt_oss always has its own lm_head (it ignores the key), as llama.cpp's does;
        // transformers would tie the head to the embedding.
        if json.bool("tie_word_embeddings")? == Some(true) && layout != SourceLayout::Mlx {
            bail!("tie_word_embeddings is true; llama.cpp's gpt-oss needs its own output.weight");
        }
        if let Some(v) = json.raw("layer_types")
            && !v.is_array()
        {
            bail!("\"layer_types\" is {v}, not a list of attention types");
        }
        if let Some(types) = json.raw("layer_types").and_then(Json::as_array) {
            let expected = |i: usize| if i.is_multiple_of(2) { "sliding_attention" } else { "full_attention" };
            if types.iter().enumerate().any(|(i, t)| t.as_str() != Some(expected(i))) {
                bail!("layer_types is not sliding/full alternating from layer 0; llama.cpp hard-codes that pattern");
            }
        }
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            warnings.push(format!("hidden_act is '{act}'; gpt-oss always runs its clamped SwiGLU (alpha 1.702)"));
        }
        let hp = GptOssConfig {
            n_layer: json.u64("num_hidden_layers")?,
            n_embd: json.u64("hidden_size")?,
            n_ff: json.u64("intermediate_size")?,
            n_head: json.u64("num_attention_heads")?,
            n_head_kv: json.u64("num_key_value_heads")?,
            head_dim: json.u64("head_dim")?,
            n_expert: json.u64(experts)?,
            n_expert_used: json.u64(used)?,
            sliding_window: json.u64("sliding_window")?,
            n_ctx,
            rope_theta,
            yarn,
            rms_eps,
            vocab_size: json.u64("vocab_size")?,
        };
        if !hp.n_embd.is_multiple_of(32) || !hp.n_ff.is_multiple_of(32) {
            bail!("hidden_size {} and intermediate_size {} must be multiples of 32 (MXFP4 blocks)", hp.n_embd, hp.n_ff);
        }
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, 4096),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("intermediate_size", hp.n_ff, 1 << 20),
            ("head_dim", hp.head_dim, u64::MAX),
            (experts, hp.n_expert, 4096),
            ("vocab_size", hp.vocab_size, 1 << 24),
        ])?;
        if hp.sliding_window == 0 {
            // Every other layer would attend to no position (only the sinks); no released model
            // does.
            bail!(
                "sliding_window is 0; gpt-oss's sliding layers need a window of at least one position (released: 128)"
            );
        }
        if hp.n_expert_used == 0 || hp.n_expert_used > hp.n_expert {
            bail!("{used} is {}, not 1 to {experts} ({})", hp.n_expert_used, hp.n_expert);
        }
        check_kv_heads(hp.n_head, hp.n_head_kv)?;
        Ok((hp, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf_config() -> Json {
        serde_json::from_str(include_str!("../../../tests/fixtures/gpt-oss/hf-mxfp4/config.json")).unwrap()
    }

    #[test]
    fn original_and_hf_configs_give_the_same_hparams() {
        let original: Json =
            serde_json::from_str(include_str!("../../../tests/fixtures/gpt-oss/original/config.json")).unwrap();
        let (a, _) = GptOssConfig::parse(&Keys::of(&original, ""), SourceLayout::OpenAiOriginal).unwrap();
        let (b, warnings) = GptOssConfig::parse(&Keys::of(&hf_config(), ""), SourceLayout::HfMxfp4).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.yarn, Some((32.0, 4096, 32.0, 1.0)));
        assert!(warnings.iter().any(|w| w.contains("truncate")));
    }

    #[test]
    fn settings_llama_cpp_cannot_carry_are_refused() {
        let cases: [(&str, Json, &str); 7] = [
            ("swiglu_limit", json!(10.0), "swiglu_limit is 10"),
            ("swiglu_alpha", json!(1.5), "swiglu_alpha is 1.5"),
            ("layer_types", json!(["full_attention", "sliding_attention"]), "layer_types"),
            ("tie_word_embeddings", json!(true), "tie_word_embeddings"),
            ("num_local_experts", json!(0), "\"num_local_experts\" is 0"),
            ("sliding_window", json!(null), "\"sliding_window\" is null"),
            ("sliding_window", json!(0), "sliding_window is 0"),
        ];
        for (key, value, expected) in cases {
            let mut c = hf_config();
            c[key] = value;
            let e = GptOssConfig::parse(&Keys::of(&c, ""), SourceLayout::HfMxfp4).unwrap_err().to_string();
            assert!(e.contains(expected), "{key}: {e}");
        }
        let mut c = hf_config();
        c["rope_scaling"]["beta_fast"] = json!(16.0);
        assert!(
            GptOssConfig::parse(&Keys::of(&c, ""), SourceLayout::HfMxfp4)
                .unwrap_err()
                .to_string()
                .contains("beta_fast 16")
        );
        c["rope_scaling"] = json!({"rope_type": "linear", "factor": 2.0});
        assert!(
            GptOssConfig::parse(&Keys::of(&c, ""), SourceLayout::HfMxfp4).unwrap_err().to_string().contains("'linear'")
        );
    }
}
