//! Llama's typed config: `config.json` read once (rope scaling, Llama 3.1's frequency
//! factors, head size), with what llama.cpp's `llama` architecture cannot run refused.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;

use crate::families::ModelConfig;
use crate::families::common::{check_head_dim, check_kv_heads, check_sizes};
use crate::source::config::Keys;

/// What transformers' config class fills in for keys a `config.json` lacks. llama.cpp's
/// converter reads the config through transformers (`AutoConfig`, by `model_type`), so these
/// defaults reach the GGUF; a config.json without a `model_type` transformers knows is read
/// as it is.
#[derive(Clone, Copy, Debug)]
struct Defaults {
    n_ctx: u64,
    rms_eps: f64,
    rope_theta: f64,
    /// `None`: the attention head count.
    n_head_kv: Option<u64>,
    /// Whether the class fills in `head_dim` (hidden size / heads).
    head_dim: bool,
}

impl Defaults {
    /// transformers' `LlamaConfig` and `MixtralConfig` (the same in 4.57 and 5.x).
    fn of(model_type: Option<&str>) -> Option<Defaults> {
        match model_type? {
            "llama" => {
                Some(Defaults { n_ctx: 2048, rms_eps: 1e-6, rope_theta: 10000.0, n_head_kv: None, head_dim: true })
            }
            "mixtral" => {
                Some(Defaults { n_ctx: 4096 * 32, rms_eps: 1e-5, rope_theta: 1e6, n_head_kv: Some(8), head_dim: false })
            }
            _ => None,
        }
    }
}

/// A Llama `config.json`, typed: the hyperparameters llama.cpp reads for its `llama`
/// architecture (Mixtral's config is this plus its experts).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: u64,
    pub n_ctx: Option<u64>,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// `head_dim` when config.json gives it or transformers fills it in (Llama).
    pub head_dim: Option<u64>,
    pub rope_theta: Option<f64>,
    /// `linear` or `yarn` scaling: type, factor, original context (yarn).
    pub rope_scaling: Option<(String, f64, Option<u64>)>,
    /// Llama 3.1's frequency factors: factor, low, high, original context.
    pub llama3_rope: Option<(f64, f64, f64, f64)>,
    pub rms_eps: Option<f64>,
    pub vocab_size: u64,
}

impl LlamaConfig {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(LlamaConfig, Vec<String>)> {
        Self::parse(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys. Returns the hyperparameters and warnings.
    pub fn parse(json: &Keys) -> Result<(LlamaConfig, Vec<String>)> {
        let mut warnings = Vec::new();
        let n_head = json.u64("num_attention_heads")?;
        let rope = json.object("rope_scaling")?.or(json.object("rope_parameters")?);
        let (mut rope_scaling, mut llama3_rope) = (None, None);
        if let Some(r) = rope {
            match r.str("rope_type")?.or(r.str("type")?) {
                Some(t @ ("linear" | "yarn")) => {
                    let factor = crate::families::common::rope_factor(&r, t, None)?;
                    let orig = if t == "yarn" { Some(r.u64("original_max_position_embeddings")?) } else { None };
                    rope_scaling = Some((t.to_string(), factor, orig));
                }
                Some(t) if t.eq_ignore_ascii_case("llama3") => {
                    llama3_rope = Some((
                        crate::families::common::rope_factor(&r, "llama3", Some(8.0))?,
                        r.opt_f64("low_freq_factor")?.unwrap_or(1.0),
                        r.opt_f64("high_freq_factor")?.unwrap_or(4.0),
                        r.opt_f64("original_max_position_embeddings")?.unwrap_or(8192.0),
                    ));
                }
                Some("default") | None => {}
                Some(other) => bail!("rope type '{other}' is not one llama.cpp's llama architecture runs"),
            }
        }
        if let Some(window) = json.opt_u64("sliding_window")? {
            let ctx = json.opt_u64("max_position_embeddings")?.unwrap_or(u64::MAX);
            if window < ctx {
                warnings.push(format!(
                    "sliding_window is {window}; llama.cpp's llama architecture attends to the whole context"
                ));
            }
        }
        if let Some(act) = json.str("hidden_act")?
            && act != "silu"
        {
            bail!("hidden_act is '{act}'; llama.cpp's llama architecture runs SiLU");
        }
        for key in ["attention_bias", "mlp_bias"] {
            if json.bool(key)? == Some(true) {
                bail!("{key} is true; moeq converts Llama checkpoints without biases");
            }
        }
        let defaults = Defaults::of(json.str("model_type")?);
        let n_embd = json.u64("hidden_size")?;
        // Without transformers' defaults (a config.json transformers cannot read), the
        // converter takes the context length from the first of these it finds.
        let mut n_ctx = None;
        for key in ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length"] {
            if n_ctx.is_none() && (key == "max_position_embeddings" || defaults.is_none()) {
                n_ctx = json.opt_u64(key)?;
            }
        }
        let hp = LlamaConfig {
            n_layer: json.u64("num_hidden_layers")?,
            n_ctx: n_ctx.or(defaults.map(|d| d.n_ctx)),
            n_embd,
            n_ff: json.u64("intermediate_size")?,
            n_head,
            n_head_kv: json
                .opt_u64("num_key_value_heads")?
                .or(defaults.map(|d| d.n_head_kv.unwrap_or(n_head)))
                .unwrap_or(n_head),
            head_dim: json
                .opt_u64("head_dim")?
                .or(defaults.filter(|d| d.head_dim).and_then(|_| n_embd.checked_div(n_head))),
            rope_theta: crate::families::common::rope_theta(json)?.or(defaults.map(|d| d.rope_theta)),
            rope_scaling,
            llama3_rope,
            rms_eps: crate::families::common::rms_eps(json)?.or(defaults.map(|d| d.rms_eps)),
            vocab_size: json.u64("vocab_size")?,
        };
        check_sizes(&[
            ("num_hidden_layers", hp.n_layer, 4096),
            ("hidden_size", hp.n_embd, 1 << 20),
            ("intermediate_size", hp.n_ff, 1 << 22),
            ("vocab_size", hp.vocab_size, 1 << 24),
        ])?;
        check_kv_heads(hp.n_head, hp.n_head_kv)?;
        check_head_dim(hp.head_dim(), hp.head_dim.is_some(), hp.n_embd, hp.n_head)?;
        if let Some((_, low, high, old_ctx)) = hp.llama3_rope {
            // The converter divides by each (a ZeroDivisionError at 0); a non-finite factor
            // (equal low and high factors meeting a wavelength exactly) is no rope_freqs.
            for (key, v) in
                [("low_freq_factor", low), ("high_freq_factor", high), ("original_max_position_embeddings", old_ctx)]
            {
                if !(v.is_finite() && v > 0.0) {
                    bail!("rope_scaling.{key} is {v}; Llama 3's RoPE scaling needs a positive number");
                }
            }
            if hp.llama3_rope_factors().is_some_and(|f| f.iter().any(|x| !x.is_finite())) {
                bail!(
                    "rope_scaling: low_freq_factor {low} and high_freq_factor {high} give a rotary pair no finite \
                     factor (the smoothing divides by their difference)"
                );
            }
        }
        Ok((hp, warnings))
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> Option<u64> {
        self.head_dim.or(self.n_embd.is_multiple_of(self.n_head).then(|| self.n_embd / self.n_head))
    }

    /// The `llama.*` keys, in the converter's order, with `general.file_type` among them and
    /// Mixtral's `experts` (count, used) where the converter puts them.
    pub fn metadata(&self, file_type: u32, experts: Option<(u64, u64)>) -> Vec<(String, Value)> {
        let k = |key: &str| format!("llama.{key}");
        let u = |v: u64| Value::U32(v as u32);
        let mut m = vec![(k("block_count"), u(self.n_layer))];
        m.extend(self.n_ctx.map(|c| (k("context_length"), u(c))));
        m.extend([
            (k("embedding_length"), u(self.n_embd)),
            (k("feed_forward_length"), u(self.n_ff)),
            (k("attention.head_count"), u(self.n_head)),
            (k("attention.head_count_kv"), u(self.n_head_kv)),
        ]);
        if let Some((ty, factor, orig)) = &self.rope_scaling {
            m.push((k("rope.scaling.type"), Value::String(ty.clone())));
            m.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.extend(orig.map(|o| (k("rope.scaling.original_context_length"), u(o))));
        }
        m.extend(self.rope_theta.map(|t| (k("rope.freq_base"), Value::F32(t as f32))));
        m.extend(self.rms_eps.map(|e| (k("attention.layer_norm_rms_epsilon"), Value::F32(e as f32))));
        if let Some((e, used)) = experts {
            m.push((k("expert_count"), u(e)));
            m.push((k("expert_used_count"), u(used)));
        }
        if let Some(d) = self.head_dim {
            m.push((k("attention.key_length"), u(d)));
            m.push((k("attention.value_length"), u(d)));
        }
        m.push(("general.file_type".into(), Value::U32(file_type)));
        m.push((k("vocab_size"), u(self.vocab_size)));
        m.push((k("rope.dimension_count"), u(self.head_dim().unwrap_or(0))));
        m.push(("general.quantization_version".into(), Value::U32(2)));
        m
    }

    /// Llama 3.1's `rope_freqs` (one factor per rotary pair), as the converter computes them.
    pub fn llama3_rope_factors(&self) -> Option<Vec<f32>> {
        let (factor, low, high, old_ctx) = self.llama3_rope?;
        let dim = self.head_dim()?;
        let base = self.rope_theta.unwrap_or(10000.0) as f32;
        let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
        Some(
            (0..dim / 2)
                .map(|i| {
                    let freq = 1.0 / base.powf((2 * i) as f32 / dim as f32);
                    let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor as f32
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                    }
                })
                .collect(),
        )
    }
}
