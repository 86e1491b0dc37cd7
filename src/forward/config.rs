//! The forward's hyperparameters: the one place they are read and checked. They come from the
//! model's GGUF metadata: a GGUF's own, or for a checkpoint (or an MLX build) the metadata its
//! family's typed config gives, which is what the converter writes, so a checkpoint and its
//! GGUF run with equal [`Config`]s. Every value the forward uses is checked against every
//! tensor it will index (shapes of the embedding, each layer's attention and feed-forward
//! tensors, the head, `rope_freqs`; layers present as `block_count` says) before anything
//! runs: errors name the file, the metadata key and the tensor, and no later index can go out
//! of range.

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;

use crate::families::{FAMILIES, Family, for_gguf};
use crate::model::weights::Weights;

/// The hyperparameters of the forward. Two models with equal configs and bit-identical
/// tensors compute the same bits (verify relies on it).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The family (its short name).
    pub family: &'static str,
    /// Layers.
    pub n_layer: usize,
    /// The hidden width.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads (a divisor of `n_head`).
    pub n_head_kv: usize,
    /// Values per attention head (q, k and v).
    pub head_dim: usize,
    /// Experts per MoE layer (0: dense).
    pub n_expert: usize,
    /// Experts per token (1 to `n_expert` in MoE models).
    pub n_expert_used: usize,
    /// RMSNorm's epsilon.
    pub rms_eps: f32,
    /// The sliding window of the layers that have one (0: none).
    pub sliding_window: usize,
    /// Inverse frequencies of the rotary pairs, and the factor applied to cos and sin.
    pub inv_freq: Vec<f64>,
    /// YaRN's attention factor on cos and sin (1 without YaRN).
    pub rope_scale: f64,
    /// The family's own hyperparameters ([`crate::forward::Blocks::hparams`]).
    pub extra: Vec<(&'static str, f64)>,
}

impl Config {
    /// The hyperparameters that differ between `self` (a source) and `other` (its output), as
    /// `name: source → output`. Real values count as equal within a relative 1e-5: a GGUF holds
    /// them as f32, a checkpoint's config.json as f64.
    pub fn differences(&self, other: &Config) -> Vec<String> {
        let close =
            |a: f64, b: f64| a == b || (a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-5 * a.abs().max(b.abs()));
        let mut d = Vec::new();
        let mut size = |name: &str, a: usize, b: usize| {
            if a != b {
                d.push(format!("{name}: {a} → {b}"));
            }
        };
        size("layers", self.n_layer, other.n_layer);
        size("hidden width", self.n_embd, other.n_embd);
        size("query heads", self.n_head, other.n_head);
        size("KV heads", self.n_head_kv, other.n_head_kv);
        size("head size", self.head_dim, other.head_dim);
        size("experts", self.n_expert, other.n_expert);
        size("experts per token", self.n_expert_used, other.n_expert_used);
        size("sliding window", self.sliding_window, other.sliding_window);
        if self.family != other.family {
            d.push(format!("family: {} → {}", self.family, other.family));
        }
        if !close(self.rms_eps as f64, other.rms_eps as f64) {
            d.push(format!("RMSNorm epsilon: {} → {}", self.rms_eps, other.rms_eps));
        }
        // RoPE: the base (`rope_theta`, `rope.freq_base`), the scaling and `rope_freqs` together.
        if self.inv_freq.len() != other.inv_freq.len() {
            d.push(format!(
                "RoPE rotated pairs per head (rope.dimension_count / partial rotary): {} → {}",
                self.inv_freq.len(),
                other.inv_freq.len()
            ));
        } else if let Some(i) = (0..self.inv_freq.len()).find(|&i| !close(self.inv_freq[i], other.inv_freq[i])) {
            d.push(format!(
                "RoPE frequencies (from the base rope_theta / rope.freq_base, the rope scaling and rope_freqs): pair \
                 {i} turns at {:.6e} → {:.6e} radians per position",
                self.inv_freq[i], other.inv_freq[i]
            ));
        }
        if !close(self.rope_scale, other.rope_scale) {
            d.push(format!("RoPE attention factor (YaRN): {} → {}", self.rope_scale, other.rope_scale));
        }
        for (name, a) in &self.extra {
            match other.extra.iter().find(|(n, _)| n == name) {
                Some((_, b)) if close(*a, *b) => {}
                Some((_, b)) => d.push(format!("{name}: {a} → {b}")),
                None => d.push(format!("{name}: {a} → (none)")),
            }
        }
        for (name, b) in other.extra.iter().filter(|(n, _)| !self.extra.iter().any(|(m, _)| m == n)) {
            d.push(format!("{name}: (none) → {b}"));
        }
        d
    }
}

/// A size and where it comes from (`llama.attention.head_count = 4`), for errors.
#[derive(Clone, Debug)]
pub struct Hp {
    /// The value.
    pub value: u64,
    /// The metadata key(s) or tensor it comes from, with values.
    pub from: String,
}

impl Hp {
    /// The product of two sizes (saturating; an impossible size then fails its check).
    pub fn times(&self, other: &Hp) -> Hp {
        Hp { value: self.value.saturating_mul(other.value), from: format!("{} × {}", self.from, other.from) }
    }
}

/// The sizes a model's tensors must have, each with its source.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Layers (`block_count`).
    pub n_layer: Hp,
    /// The hidden width (`embedding_length`).
    pub n_embd: Hp,
    /// Query heads.
    pub n_head: Hp,
    /// KV heads.
    pub n_head_kv: Hp,
    /// Values per head (`key_length`, or `rope.dimension_count`, or width / heads).
    pub head_dim: Hp,
    /// Experts per MoE layer (0: dense).
    pub n_expert: Hp,
    /// The feed-forward (per-expert) width.
    pub n_ff: Hp,
    /// Rows of the embedding.
    pub vocab: Hp,
    /// The family's own sizes ([`crate::forward::Blocks::sizes`]).
    pub extra: Vec<(&'static str, Hp)>,
}

impl Sizes {
    /// Rows of q (and of the output projection's input): heads × head size.
    pub fn q(&self) -> Hp {
        self.n_head.times(&self.head_dim)
    }

    /// Rows of k and v: KV heads × head size.
    pub fn kv(&self) -> Hp {
        self.n_head_kv.times(&self.head_dim)
    }

    /// A size of the family's own, by the name [`crate::forward::Blocks::sizes`] gave it.
    pub fn extra(&self, name: &str) -> Option<&Hp> {
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, h)| h)
    }
}

/// A tensor the forward reads and the dimensions (`ne`, fastest first) it must have.
pub struct Expect {
    /// The tensor's llama.cpp name.
    pub tensor: String,
    /// Its dimensions.
    pub ne: Vec<Hp>,
}

impl Expect {
    /// `tensor` with dimensions `ne`.
    pub fn new(tensor: impl Into<String>, ne: &[&Hp]) -> Expect {
        Expect { tensor: tensor.into(), ne: ne.iter().map(|&h| h.clone()).collect() }
    }
}

/// Reads the `{arch}.*` metadata values of one model, naming the file and key in errors.
pub struct Meta<'w, 'a> {
    w: &'w Weights<'a>,
    arch: String,
}

impl Meta<'_, '_> {
    /// The full key of `key` (with the architecture prefix).
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    /// An integer key, if present.
    pub fn opt(&self, key: &str) -> Result<Option<Hp>> {
        let key = self.key(key);
        match self.w.get(&key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(value) => Ok(Some(Hp { value, from: format!("{key} = {value}") })),
                None => bail!("{}: metadata '{key}' is {v}, not an integer", self.w.path),
            },
        }
    }

    /// A required integer key.
    pub fn req(&self, key: &str) -> Result<Hp> {
        self.opt(key)?.with_context(|| format!("{}: no metadata '{}'", self.w.path, self.key(key)))
    }

    /// Whether the model holds tensor `name` (for a family's optional tensors, such as
    /// biases or norms a model may have or not; their shapes are checked as those of every
    /// tensor [`crate::forward::Blocks::layer_tensors`] lists).
    pub fn has_tensor(&self, name: &str) -> bool {
        self.w.has(name)
    }

    /// The raw value of a key (with the architecture prefix added), if present: for flags and
    /// names a family reads itself.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.w.get(&self.key(key))
    }

    /// A number, if present.
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        let key = self.key(key);
        match self.w.get(&key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).with_context(|| format!("{}: metadata '{key}' is {v}, not a number", self.w.path))
            }
        }
    }
}

impl Config {
    /// A family hyperparameter ([`Config::extra`]).
    pub fn extra(&self, name: &str) -> Option<f64> {
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Reads the forward's settings from the model's metadata, finds its family, and checks
    /// every size against the tensors.
    pub fn new(w: &Weights) -> Result<(Config, &'static dyn Family)> {
        let path = &w.path;
        let arch = w.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
        let m = Meta { w, arch: arch.clone() };
        let n_expert =
            m.opt("expert_count")?.unwrap_or(Hp { value: 0, from: format!("{arch}.expert_count (absent: 0)") });
        let Some(family) = for_gguf(&arch, n_expert.value) else {
            let names: Vec<&str> = FAMILIES.iter().map(|f| f.name()).collect();
            bail!("{path}: moeq's forward runs {}, not '{arch}'", names.join(", "));
        };
        let blocks = family.forward();
        let blocks_total = m.req("block_count")?;
        // llama.cpp's n_layer(): the multi-token-prediction blocks a GGUF holds after the
        // model's layers (`nextn_predict_layers`, GLM-4.5's converter exports them) are not
        // part of the forward.
        let n_layer = match m.opt("nextn_predict_layers")? {
            Some(n) if n.value > 0 => match blocks_total.value.checked_sub(n.value) {
                Some(value) if value > 0 => Hp { value, from: format!("{} − {}", blocks_total.from, n.from) },
                _ => bail!("{path}: {} leaves no layers of {}", n.from, blocks_total.from),
            },
            _ => blocks_total.clone(),
        };
        let n_embd = m.req("embedding_length")?;
        let n_head = m.req("attention.head_count")?;
        let n_head_kv = match m.opt("attention.head_count_kv")? {
            Some(h) => h,
            None => Hp {
                value: n_head.value,
                from: format!("{arch}.attention.head_count_kv (absent: head_count {})", n_head.value),
            },
        };
        let head_dim = match (m.opt("attention.key_length")?, m.opt("rope.dimension_count")?) {
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => Hp {
                value: n_embd.value / n_head.value.max(1),
                from: format!("{arch}.embedding_length / {arch}.attention.head_count (no key_length)"),
            },
        };
        let n_expert_used =
            m.opt("expert_used_count")?.unwrap_or(Hp { value: 0, from: format!("{arch}.expert_used_count (absent)") });
        for (hp, what) in
            [(&n_embd, "embedding"), (&n_head, "head count"), (&n_head_kv, "KV head count"), (&head_dim, "head size")]
        {
            if hp.value == 0 {
                bail!("{path}: {}: the {what} must be positive", hp.from);
            }
        }
        if !n_head.value.is_multiple_of(n_head_kv.value) {
            bail!("{path}: {} is not a multiple of {}", n_head.from, n_head_kv.from);
        }
        if n_expert_used.value > n_expert.value || (n_expert.value > 0 && n_expert_used.value == 0) {
            bail!(
                "{path}: {} does not fit {} (1 to {} experts per token)",
                n_expert_used.from,
                n_expert.from,
                n_expert.value
            );
        }
        for (hp, limit) in
            [(&n_layer, 1 << 16), (&n_embd, 1 << 24), (&n_head, 1 << 16), (&head_dim, 1 << 16), (&n_expert, 1 << 16)]
        {
            if hp.value > limit {
                bail!("{path}: {} is implausibly large", hp.from);
            }
        }

        // The tensors: the embedding first (it gives the vocabulary), then every layer's.
        let embd = w.ne("token_embd.weight").with_context(|| format!("{path}: no tensor 'token_embd.weight'"))?;
        let vocab = Hp { value: embd.get(1).copied().unwrap_or(1), from: "the rows of 'token_embd.weight'".into() };
        let ff_key = blocks.ffn_length_key();
        let n_ff = match m.opt(ff_key)? {
            Some(h) => h,
            None => {
                let tensor = ["blk.0.ffn_up_exps.weight", "blk.0.ffn_up.weight"].into_iter().find(|t| w.has(t));
                let value = tensor.and_then(|t| w.ne(t).ok()?.get(1).copied()).unwrap_or(0);
                Hp { value, from: format!("{arch}.{ff_key} (absent: the rows of '{}')", tensor.unwrap_or("ffn_up")) }
            }
        };
        let extra = blocks.sizes(&m)?;
        let s = Sizes { n_layer, n_embd, n_head, n_head_kv, head_dim, n_expert, n_ff, vocab, extra };
        let mut expect = vec![
            Expect::new("token_embd.weight", &[&s.n_embd, &s.vocab]),
            Expect::new("output_norm.weight", &[&s.n_embd]),
        ];
        if w.has("output.weight") {
            expect.push(Expect::new("output.weight", &[&s.n_embd, &s.vocab]));
        }
        let half = Hp { value: s.head_dim.value / 2, from: format!("{} / 2", s.head_dim.from) };
        if w.has("rope_freqs.weight") {
            expect.push(Expect::new("rope_freqs.weight", &[&half]));
        }
        for e in &expect {
            check(w, &s, e)?;
        }
        // Layer by layer, so a `block_count` far past the tensors fails at the first missing
        // layer instead of listing every layer it claims first.
        for l in 0..s.n_layer.value as usize {
            let mut layer = blocks.attention_tensors(&s, l);
            layer.push(Expect::new(format!("blk.{l}.{}.weight", blocks.ffn_norm()), &[&s.n_embd]));
            layer.extend(blocks.layer_tensors(&s, l));
            for e in &layer {
                check(w, &s, e)?;
            }
        }
        if let Some(past) = w.names().find(|n| {
            n.strip_prefix("blk.")
                .and_then(|r| r.split('.').next()?.parse::<u64>().ok())
                .is_some_and(|l| l >= blocks_total.value)
        }) {
            bail!("{path}: tensor '{past}' is past the last layer ({})", blocks_total.from);
        }

        // After the tensors, which name a wrong key_length first.
        if blocks.value_length_is_head_size()
            && let Some(v) = m.opt("attention.value_length")?
            && v.value != s.head_dim.value
        {
            bail!(
                "{path}: {} differs from the head size {} ({}); values as wide as keys are what this family's \
                 attention (and llama.cpp's) computes",
                v.from,
                s.head_dim.value,
                s.head_dim.from
            );
        }
        let (n_embd, n_head, head_dim) = (s.n_embd.value as usize, s.n_head.value as usize, s.head_dim.value as usize);
        let theta = m.float("rope.freq_base")?.unwrap_or(10000.0);
        if !(theta.is_finite() && theta > 0.0) {
            bail!("{path}: '{}' is {theta}: the RoPE base must be a positive number", m.key("rope.freq_base"));
        }
        // The values of a head RoPE rotates: `rope.dimension_count` (DeepSeek's MLA rotates a
        // part of each key), else the head size.
        let rot = match m.opt("rope.dimension_count")? {
            None => head_dim,
            Some(h) if h.value == 0 => head_dim,
            Some(h) if h.value % 2 == 0 && h.value <= head_dim as u64 => h.value as usize,
            Some(h) => {
                bail!("{path}: {} is not an even number of rotated values of at most the head size {head_dim}", h.from)
            }
        };
        let half = rot / 2;
        let mut inv_freq: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / rot as f64)).collect();
        let mut rope_scale = 1.0;
        // As llama.cpp's loader: a scaling factor without a type scales linearly.
        let factor = m.float("rope.scaling.factor")?;
        let untyped = if factor.is_some() { "linear" } else { "none" };
        let scaling = w.get(&m.key("rope.scaling.type")).and_then(Value::as_str).unwrap_or(untyped);
        let factor = factor.unwrap_or(1.0);
        // llama.cpp's loader reads a factor of 0 as none and divides the frequencies by any other:
        // a negative one, or a YaRN factor below 1, computes what neither transformers nor this
        // forward computes.
        if !(factor.is_finite() && factor >= 0.0) || (scaling == "yarn" && factor > 0.0 && factor < 1.0) {
            bail!(
                "{path}: '{}' is {factor}: not a RoPE scaling factor moeq's forward runs ({scaling}: {})",
                m.key("rope.scaling.factor"),
                if scaling == "yarn" { "0 or at least 1" } else { "0 or more" }
            );
        }
        match scaling {
            "yarn" if factor > 1.0 => {
                // transformers' _compute_yarn_parameters; the correction range is rounded
                // (`truncate`, transformers' default) where the family says so.
                let orig = m.float("rope.scaling.original_context_length")?.with_context(|| {
                    format!("{path}: YaRN without '{}'", m.key("rope.scaling.original_context_length"))
                })?;
                let fast = m.float("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0);
                let slow = m.float("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0);
                let dim = |r: f64| rot as f64 * (orig / (r * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
                let (mut low, mut high) = (dim(fast), dim(slow));
                if blocks.yarn_truncate() {
                    (low, high) = (low.floor(), high.ceil());
                }
                (low, high) = (low.max(0.0), high.min(rot as f64 - 1.0));
                if low == high {
                    high += 0.001;
                }
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolate = 1.0 - ramp;
                    *f = *f / factor * (1.0 - extrapolate) + *f * extrapolate;
                }
                // With a log multiplier (DeepSeek's mscale_all_dim) llama.cpp takes mscale equal
                // to it: cos and sin stay unscaled, and the attention scale carries the factor
                // (the family's blocks apply it).
                rope_scale =
                    if m.float("rope.scaling.yarn_log_multiplier")?.is_some() { 1.0 } else { 0.1 * factor.ln() + 1.0 };
            }
            "linear" if factor > 0.0 => inv_freq.iter_mut().for_each(|f| *f /= factor),
            _ => {}
        }
        if w.has("rope_freqs.weight") {
            let factors = w.all("rope_freqs.weight")?;
            inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= s as f64);
        }
        if let Some(i) = inv_freq.iter().position(|f| !(f.is_finite() && *f > 0.0)) {
            bail!(
                "{path}: RoPE pair {i} gets frequency {} (from '{}', the scaling settings{}): not a positive number",
                inv_freq[i],
                m.key("rope.freq_base"),
                if w.has("rope_freqs.weight") { " and 'rope_freqs.weight'" } else { "" }
            );
        }
        let rms_eps = m.float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32;
        if !(rms_eps >= 0.0 && rms_eps.is_finite()) {
            bail!(
                "{path}: '{}' is {rms_eps}: RMSNorm's epsilon must be a non-negative number (the norm would take the \
                 square root of a negative number: every logit NaN)",
                m.key("attention.layer_norm_rms_epsilon")
            );
        }
        let config = Config {
            family: family.name(),
            n_layer: s.n_layer.value as usize,
            n_embd,
            n_head,
            n_head_kv: s.n_head_kv.value as usize,
            head_dim,
            n_expert: s.n_expert.value as usize,
            n_expert_used: n_expert_used.value as usize,
            rms_eps,
            sliding_window: m.opt("attention.sliding_window")?.map_or(0, |h| h.value as usize),
            inv_freq,
            rope_scale,
            extra: blocks.hparams(&m).with_context(|| path.to_string())?,
        };
        Ok((config, family))
    }
}

/// Checks that tensor `e.tensor` exists with dimensions `e.ne` (trailing dimensions of 1
/// aside).
fn check(w: &Weights, s: &Sizes, e: &Expect) -> Result<()> {
    let path = &w.path;
    if !w.has(&e.tensor) {
        let layer = e.tensor.strip_prefix("blk.").and_then(|r| r.split('.').next());
        match layer {
            Some(l) => bail!("{path}: no tensor '{}' (layer {l} of {})", e.tensor, s.n_layer.from),
            None => bail!("{path}: no tensor '{}'", e.tensor),
        }
    }
    let trim = |v: &[u64]| {
        let mut v = v.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    let have = trim(w.ne(&e.tensor)?);
    let want = trim(&e.ne.iter().map(|h| h.value).collect::<Vec<_>>());
    if have != want {
        let mut why: Vec<&str> = Vec::new();
        for (i, h) in e.ne.iter().enumerate() {
            if have.get(i) != Some(&h.value) && !why.contains(&h.from.as_str()) {
                why.push(&h.from);
            }
        }
        if why.is_empty() {
            why = e.ne.iter().map(|h| h.from.as_str()).collect();
        }
        bail!("{path}: tensor '{}' has shape {have:?}, but the metadata gives {want:?} ({})", e.tensor, why.join("; "));
    }
    Ok(())
}
