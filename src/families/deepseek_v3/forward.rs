//! DeepSeek-V3's forward blocks (transformers' `DeepseekV3ForCausalLM`), on the tensors of
//! llama.cpp's `deepseek2` architecture:
//!
//! - multi-head latent attention: q through a low-rank projection and its norm
//!   (`attn_q_a`, `attn_q_a_norm`, `attn_q_b`); one latent per token (`attn_kv_a_mqa`: the
//!   `kv_lora_rank` latent, normalized by `attn_kv_a_norm`, and the shared rotary key); per
//!   head, the key's non-rotary part and the value decompressed from the latent by
//!   `attn_k_b` and `attn_v_b` (the converter's split of `kv_b_proj`). As llama.cpp runs it,
//!   `attn_k_b` is absorbed into the query, so attention runs over the latent as one KV head
//!   (the same products, summed in another order), and `attn_v_b` applies to each head's
//!   attended latent. RoPE on adjacent pairs of the rotary part (transformers'
//!   `rope_interleave`), YaRN's frequencies with the correction range rounded, the softmax
//!   scale (0.1 · mscale_all_dim · ln factor + 1)² / √(qk_nope + qk_rope);
//! - the first `leading_dense_block_count` layers dense SwiGLU, the others MoE: sigmoid scores
//!   (softmax when the GGUF names no gating function, except at GLM-4.7-Flash's size, as
//!   llama.cpp decides) of the router's logits, the correction bias (`exp_probs_b`) added for choosing only,
//!   group-limited top-k (each group scored by its two best, `expert_group_used_count` groups
//!   kept), the chosen scores normalized (`expert_weights_norm`) and scaled
//!   (`expert_weights_scale`), SwiGLU experts, plus the shared experts (`*_shexp`).

use anyhow::{Result, bail};
use moeq_formats::gguf::Value;

use crate::forward::moe::{self, Moe, top_k};
use crate::forward::ops::{rmsnorm, softmax, swiglu};
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Heads, Hp, Meta, Model, RopePairs, Sizes, attend};

/// DeepSeek-V3's blocks.
pub struct DeepseekV3Blocks;

/// The experts: SwiGLU without biases (the routing is the block's own).
const MOE: Moe = Moe { bias: false, route: |_, _| (Vec::new(), Vec::new()), act: swiglu };

/// A family size by name (zero, failing its tensor check, if absent: `sizes` always gives them).
fn size(s: &Sizes, name: &str) -> Hp {
    s.extra(name).cloned().unwrap_or(Hp { value: 0, from: format!("{name} (absent)") })
}

/// The MLA sizes and the routing settings, from [`Config::extra`].
struct Params {
    kv_lora: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
    kq_scale: f32,
}

impl Params {
    fn of(c: &Config) -> Params {
        let x = |n: &str| c.extra(n).unwrap_or(0.0);
        Params {
            kv_lora: x("kv_lora_rank") as usize,
            nope: x("qk_nope") as usize,
            rope: x("qk_rope") as usize,
            v_dim: x("v_head_dim") as usize,
            kq_scale: x("kq_scale") as f32,
        }
    }
}

/// The metadata value of `key` as a flag (absent: false).
fn flag(meta: &Meta, key: &str) -> Result<bool> {
    match meta.value(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("metadata '{}' is {v}, not a boolean", meta.key(key)),
    }
}

/// The expert groups of group-limited routing from a GGUF's metadata: `expert_group_count`
/// (absent: 1) and `expert_group_used_count` (absent: all). Group-limited routing needs groups
/// of two or more experts (a group scores by its top two) and room for the experts used in the
/// groups kept (as config.rs checks a checkpoint's n_group / topk_group); DeepSeek-V3's and
/// GLM-4.5's forward read them alike.
///
/// Errors: a count that is not an integer, or groups that do not fit, naming the key.
pub(crate) fn expert_groups(meta: &Meta) -> Result<(f64, f64)> {
    let int = |key: &str, default: u64| -> Result<f64> { Ok(meta.opt(key)?.map_or(default, |h| h.value) as f64) };
    let groups = int("expert_group_count", 1)?.max(1.0);
    let groups_used = int("expert_group_used_count", groups as u64)?;
    if groups > 1.0 {
        let experts = int("expert_count", 0)?;
        let used = int("expert_used_count", 0)?;
        let per = (experts / groups).floor();
        if experts % groups != 0.0 || per < 2.0 {
            bail!(
                "metadata '{}' is {groups}: it does not divide the {experts} experts ('{}') into groups of two or more",
                meta.key("expert_group_count"),
                meta.key("expert_count")
            );
        }
        if groups_used < 1.0 || groups_used > groups || used > groups_used * per {
            bail!(
                "metadata '{}' is {groups_used}: {used} experts per token ('{}') do not fit in that many of {groups} groups of {per}",
                meta.key("expert_group_used_count"),
                meta.key("expert_used_count")
            );
        }
    }
    Ok((groups, groups_used))
}

impl Blocks for DeepseekV3Blocks {
    fn hparams(&self, meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        let int = |key: &str, default: u64| -> Result<f64> { Ok(meta.opt(key)?.map_or(default, |h| h.value) as f64) };
        // llama.cpp: a GGUF without a gating function is DeepSeek-V2's softmax routing, but
        // GLM-4.7-Flash's (47 layers past its MTP blocks, 154880 tokens; its converter writes
        // none) routes by sigmoid.
        let main_layers = int("block_count", 0)? - int("nextn_predict_layers", 0)?;
        let glm_flash = matches!(main_layers as u64, 47 | 48) && int("vocab_size", 0)? == 154880.0;
        let gating = int("expert_gating_func", if glm_flash { 2 } else { 1 })?;
        if gating != 1.0 && gating != 2.0 {
            bail!(
                "metadata '{}' is {gating}: moeq runs softmax (1) and sigmoid (2) routing",
                meta.key("expert_gating_func")
            );
        }
        let (groups, groups_used) = expert_groups(meta)?;
        // The softmax scale: llama.cpp's mscale = 1 + log multiplier · ln factor (with YaRN).
        let factor = meta.float("rope.scaling.factor")?.unwrap_or(1.0);
        let yarn = matches!(meta.value("rope.scaling.type"), Some(Value::String(t)) if t == "yarn");
        let log_mul = meta.float("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0);
        let mscale = if yarn && factor > 1.0 { 1.0 + log_mul * factor.ln() } else { 1.0 };
        let key_mla = int("attention.key_length_mla", 0)?;
        let rope = int("rope.dimension_count", 0)?;
        Ok(vec![
            ("leading_dense", int("leading_dense_block_count", 0)?),
            ("gating", gating),
            ("groups", groups),
            ("groups_used", groups_used),
            ("weights_norm", if flag(meta, "expert_weights_norm")? { 1.0 } else { 0.0 }),
            ("weights_scale", meta.float("expert_weights_scale")?.unwrap_or(1.0)),
            ("kv_lora_rank", int("attention.kv_lora_rank", 0)?),
            ("qk_nope", key_mla - rope),
            ("qk_rope", rope),
            ("v_head_dim", int("attention.value_length_mla", 0)?),
            ("kq_scale", mscale * mscale / key_mla.max(1.0).sqrt()),
        ])
    }

    fn sizes(&self, meta: &Meta) -> Result<Vec<(&'static str, Hp)>> {
        let q_lora = meta.req("attention.q_lora_rank")?;
        let kv_lora = meta.req("attention.kv_lora_rank")?;
        let key_mla = meta.req("attention.key_length_mla")?;
        let rope = meta.req("rope.dimension_count")?;
        let v_dim = meta.req("attention.value_length_mla")?;
        let Some(nope) = key_mla.value.checked_sub(rope.value).filter(|&n| n > 0) else {
            bail!("{} leaves no non-rotary part of {}", rope.from, key_mla.from);
        };
        let nope = Hp { value: nope, from: format!("{} − {}", key_mla.from, rope.from) };
        let latent = Hp { value: kv_lora.value + rope.value, from: format!("{} + {}", kv_lora.from, rope.from) };
        let shared = meta.req("expert_shared_count")?.times(&meta.req("expert_feed_forward_length")?);
        let dense = match meta.opt("leading_dense_block_count")? {
            Some(h) if h.value > 0 => meta.req("feed_forward_length")?,
            _ => Hp { value: 0, from: "no dense layers".into() },
        };
        let lead = meta.opt("leading_dense_block_count")?.unwrap_or(Hp { value: 0, from: "none".into() });
        Ok(vec![
            ("q_lora", q_lora),
            ("kv_lora", kv_lora),
            ("key_mla", key_mla),
            ("rope", rope),
            ("nope", nope),
            ("v_dim", v_dim),
            ("latent", latent),
            ("shared", shared),
            ("dense", dense),
            ("lead", lead),
        ])
    }

    fn yarn_truncate(&self) -> bool {
        true
    }

    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        // Unused: DeepSeek's attention is its own block.
        Attention { bias: false, sinks: false, window: 0, rope: RopePairs::Adjacent }
    }

    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        mla(m, l, x, starts)
    }

    fn value_length_is_head_size(&self) -> bool {
        false
    }

    fn attention_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}.weight");
        let h = &s.n_embd;
        let (q_lora, kv_lora, key_mla, v_dim) =
            (size(s, "q_lora"), size(s, "kv_lora"), size(s, "key_mla"), size(s, "v_dim"));
        vec![
            Expect::new(t("attn_norm"), &[h]),
            Expect::new(t("attn_q_a_norm"), &[&q_lora]),
            Expect::new(t("attn_kv_a_norm"), &[&kv_lora]),
            Expect::new(t("attn_q_a"), &[h, &q_lora]),
            Expect::new(t("attn_q_b"), &[&q_lora, &s.n_head.times(&key_mla)]),
            Expect::new(t("attn_kv_a_mqa"), &[h, &size(s, "latent")]),
            Expect::new(t("attn_k_b"), &[&size(s, "nope"), &kv_lora, &s.n_head]),
            Expect::new(t("attn_v_b"), &[&kv_lora, &v_dim, &s.n_head]),
            Expect::new(t("attn_output"), &[&s.n_head.times(&v_dim), h]),
        ]
    }

    fn ffn_length_key(&self) -> &'static str {
        "expert_feed_forward_length"
    }

    fn ffn(&self, m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
        if (l as f64) < m.cfg.extra("leading_dense").unwrap_or(0.0) {
            return moe::dense_swiglu(m, l, x);
        }
        routed(m, l, x)
    }

    fn expert(&self, m: &Model, l: usize, e: usize, x: &[f32]) -> Result<Vec<f32>> {
        moe::expert(m, l, e, x, &MOE)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}");
        let h = &s.n_embd;
        if (l as u64) < size(s, "lead").value {
            let f = size(s, "dense");
            return vec![
                Expect::new(t("ffn_gate.weight"), &[h, &f]),
                Expect::new(t("ffn_up.weight"), &[h, &f]),
                Expect::new(t("ffn_down.weight"), &[&f, h]),
            ];
        }
        let (e, f, shared) = (&s.n_expert, &s.n_ff, size(s, "shared"));
        vec![
            Expect::new(t("ffn_gate_inp.weight"), &[h, e]),
            Expect::new(t("exp_probs_b.bias"), &[e]),
            Expect::new(t("ffn_gate_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_up_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_down_exps.weight"), &[f, h, e]),
            Expect::new(t("ffn_gate_shexp.weight"), &[h, &shared]),
            Expect::new(t("ffn_up_shexp.weight"), &[h, &shared]),
            Expect::new(t("ffn_down_shexp.weight"), &[&shared, h]),
        ]
    }
}

/// Multi-head latent attention of layer `l` on the residual stream `x` [T, hidden].
fn mla(m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
    let (c, p) = (&m.cfg, Params::of(&m.cfg));
    let (t, heads) = (starts.len(), c.n_head);
    let w = |name: &str| format!("blk.{l}.{name}");
    let a_in = rmsnorm(x, &m.t(&w("attn_norm.weight"))?, c.rms_eps);
    let q_a = m.linear(&a_in, &w("attn_q_a"), false)?;
    let q_a = rmsnorm(&q_a, &m.t(&w("attn_q_a_norm.weight"))?, c.rms_eps);
    let q = m.linear(&q_a, &w("attn_q_b"), false)?;
    let kv = m.linear(&a_in, &w("attn_kv_a_mqa"), false)?;
    let (qk, latent_dim) = (p.nope + p.rope, p.kv_lora + p.rope);

    // The latent (normalized) and the shared rotary key of each token.
    let latent_raw: Vec<f32> = kv.chunks_exact(latent_dim).flat_map(|r| r[..p.kv_lora].iter().copied()).collect();
    let latent = rmsnorm(&latent_raw, &m.t(&w("attn_kv_a_norm.weight"))?, c.rms_eps);
    let mut k_pe: Vec<f32> = kv.chunks_exact(latent_dim).flat_map(|r| r[p.kv_lora..].iter().copied()).collect();
    let mut q_pe: Vec<f32> = q.chunks_exact(qk).flat_map(|r| r[p.nope..].iter().copied()).collect();
    m.rope_heads(&mut q_pe, heads, p.rope, starts, RopePairs::Adjacent);
    m.rope_heads(&mut k_pe, 1, p.rope, starts, RopePairs::Adjacent);

    // Each head's query with attn_k_b absorbed: [T, heads · (kv_lora + rope)].
    let mut query = vec![0.0f32; t * heads * latent_dim];
    for h in 0..heads {
        let q_nope: Vec<f32> = (0..t).flat_map(|i| q[(i * heads + h) * qk..][..p.nope].iter().copied()).collect();
        let absorbed = m.project(&q_nope, &w("attn_k_b.weight"), (h * p.kv_lora) as u64, p.kv_lora as u64, None)?;
        for i in 0..t {
            let dst = &mut query[(i * heads + h) * latent_dim..][..latent_dim];
            dst[..p.kv_lora].copy_from_slice(&absorbed[i * p.kv_lora..][..p.kv_lora]);
            dst[p.kv_lora..].copy_from_slice(&q_pe[(i * heads + h) * p.rope..][..p.rope]);
        }
    }
    let key: Vec<f32> = (0..t)
        .flat_map(|i| latent[i * p.kv_lora..][..p.kv_lora].iter().chain(&k_pe[i * p.rope..][..p.rope]).copied())
        .collect();
    let shape = Heads { n_head: heads, n_head_kv: 1, qk_dim: latent_dim, v_dim: p.kv_lora };
    let o = attend(&query, &key, &latent, starts, shape, p.kq_scale, None, 0);

    // Each head's attended latent through its attn_v_b rows: [T, heads · v_dim].
    let mut merged = vec![0.0f32; t * heads * p.v_dim];
    for h in 0..heads {
        let o_h: Vec<f32> =
            (0..t).flat_map(|i| o[(i * heads + h) * p.kv_lora..][..p.kv_lora].iter().copied()).collect();
        let v = m.project(&o_h, &w("attn_v_b.weight"), (h * p.v_dim) as u64, p.v_dim as u64, None)?;
        for i in 0..t {
            merged[(i * heads + h) * p.v_dim..][..p.v_dim].copy_from_slice(&v[i * p.v_dim..][..p.v_dim]);
        }
    }
    m.linear(&merged, &w("attn_output"), false)
}

/// Group-limited routing of one token (transformers' `DeepseekV3TopkRouter`): scores from the
/// logits (sigmoid, or softmax for gating 1), plus the correction bias for choosing; with
/// groups, only the `groups_used` groups with the largest sums of their two best choices
/// compete; the top `k` by choice, weighted by their scores (normalized if asked, then
/// scaled). The settings are [`Config::extra`]'s `gating`, `groups`, `groups_used`,
/// `weights_norm` and `weights_scale` (GLM-4.5's routing is the same).
pub fn route(logits: &[f32], bias: &[f32], k: usize, c: &Config) -> (Vec<usize>, Vec<f32>) {
    let x = |n: &str| c.extra(n).unwrap_or(0.0);
    let mut scores = logits.to_vec();
    if x("gating") == 2.0 {
        scores.iter_mut().for_each(|s| *s = 1.0 / (1.0 + (-*s).exp()));
    } else {
        softmax(&mut scores);
    }
    let mut choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
    let groups = x("groups") as usize;
    let per = choice.len() / groups.max(1);
    if groups > 1 && per > 0 {
        let group_scores: Vec<f32> =
            choice.chunks_exact(per).map(|g| top_k(g, 2).iter().map(|&i| g[i]).sum::<f32>()).collect();
        let kept = top_k(&group_scores, x("groups_used") as usize);
        for (g, chunk) in choice.chunks_exact_mut(per).enumerate() {
            if !kept.contains(&g) {
                chunk.fill(f32::NEG_INFINITY);
            }
        }
    }
    let chosen = top_k(&choice, k);
    let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
    if x("weights_norm") != 0.0 {
        let sum = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    let scale = x("weights_scale") as f32;
    weights.iter_mut().for_each(|w| *w *= scale);
    (chosen, weights)
}

/// The MoE block of layer `l`: the routed experts plus the shared experts.
fn routed(m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
    let c = &m.cfg;
    let logits = m.linear(x, &format!("blk.{l}.ffn_gate_inp"), false)?;
    let bias = m.t(&format!("blk.{l}.exp_probs_b.bias"))?;
    let (routes, weights) = logits.chunks_exact(c.n_expert).map(|row| route(row, &bias, c.n_expert_used, c)).unzip();
    let mut out = moe::dispatch(m, x, routes, weights, &|e, xe| moe::expert(m, l, e, xe, &MOE))?;
    let shared = moe::dense(m, l, x, "_shexp", swiglu)?;
    out.out.iter_mut().zip(&shared).for_each(|(o, s)| *o += s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Vec<(&'static str, f64)>) -> Config {
        Config {
            family: "deepseek-v3",
            n_layer: 1,
            n_embd: 4,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 2,
            n_expert: 8,
            n_expert_used: 2,
            rms_eps: 1e-6,
            sliding_window: 0,
            inv_freq: vec![1.0],
            rope_scale: 1.0,
            extra,
        }
    }

    #[test]
    fn routing_limits_groups_and_weighs_by_scores() {
        let c = config(vec![
            ("gating", 2.0),
            ("groups", 4.0),
            ("groups_used", 2.0),
            ("weights_norm", 1.0),
            ("weights_scale", 2.5),
        ]);
        // Logits 0 (score 0.5) everywhere; the bias picks: group 1 (experts 2, 3) and group 3
        // (6, 7) have the best pairs; expert 0 alone has the best bias but its group loses.
        let bias = [0.5, -0.5, 0.3, 0.3, 0.0, 0.0, 0.2, 0.25];
        let (chosen, weights) = route(&[0.0; 8], &bias, 2, &c);
        assert_eq!(chosen, [2, 3]);
        // Weighted by the scores (0.5 each), not the biased choices: normalized, then scaled.
        assert_eq!(weights, [1.25, 1.25]);
        // One group, no normalization: expert 1's larger logit loses to the biased choices
        // (0 first, then 2 before 3 on a tie).
        let c = config(vec![("gating", 2.0), ("groups", 1.0), ("weights_scale", 1.0)]);
        let (chosen, weights) = route(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &bias, 2, &c);
        assert_eq!(chosen, [0, 2]);
        assert_eq!(weights, [0.5, 0.5]);
    }
}
