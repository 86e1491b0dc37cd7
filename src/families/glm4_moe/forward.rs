//! GLM-4.5 / GLM-4.6's forward blocks (transformers' `Glm4MoeForCausalLM`, llama.cpp's
//! `glm4moe` graph), on the tensors of llama.cpp's `glm4moe` architecture:
//!
//! - attention: q, k, v projections with their biases when the model has them
//!   (`attention_bias`), each q and k head RMS-normalized when it has `attn_{q,k}_norm`
//!   (`use_qk_norm`), RoPE on halves (NEOX) of the first `rope.dimension_count` values of each
//!   head (`partial_rotary_factor`), the rest passed through, causal softmax attention with GQA
//!   and scale 1/√head_dim, the output projection without bias;
//! - the feed-forward block after `post_attention_norm`: the first `leading_dense_block_count`
//!   layers dense SwiGLU, the others MoE as DeepSeek-V3's
//!   ([`crate::families::deepseek_v3::forward::route`]): sigmoid scores, the correction bias
//!   (`exp_probs_b`) added for choosing only, group-limited top-k, the chosen scores normalized
//!   (`expert_weights_norm`) and scaled (`expert_weights_scale`), SwiGLU experts, plus the
//!   shared experts (`*_shexp`);
//! - the multi-token-prediction blocks after the last layer (`nextn_predict_layers`) are not
//!   run, as neither transformers' forward nor llama.cpp's main graph runs them.

use anyhow::{Result, bail};
use moeq_formats::gguf::Value;

use crate::families::deepseek_v3::forward::route;
use crate::forward::moe::{self, Moe};
use crate::forward::ops::{rmsnorm, swiglu};
use crate::forward::{Attention, Blocks, Config, Expect, FfnOutput, Heads, Hp, Meta, Model, RopePairs, Sizes, attend};

/// GLM-4.5's blocks.
pub struct Glm4MoeBlocks;

/// The experts: SwiGLU without biases (the routing is the block's own).
const MOE: Moe = Moe { bias: false, route: |_, _| (Vec::new(), Vec::new()), act: swiglu };

/// The metadata value of `key` as a flag (absent: false).
fn flag(meta: &Meta, key: &str) -> Result<bool> {
    match meta.value(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => bail!("metadata '{}' is {v}, not a boolean", meta.key(key)),
    }
}

/// A family size by name (zero, failing its tensor check, if absent: `sizes` always gives them).
fn size(s: &Sizes, name: &str) -> Hp {
    s.extra(name).cloned().unwrap_or(Hp { value: 0, from: format!("{name} (absent)") })
}

/// Whether the model's layers have their optional tensor `name` (layer 0's say; every layer is
/// then checked for it).
fn has(meta: &Meta, name: &str) -> bool {
    meta.has_tensor(&format!("blk.0.{name}"))
}

impl Blocks for Glm4MoeBlocks {
    fn hparams(&self, meta: &Meta) -> Result<Vec<(&'static str, f64)>> {
        let int = |key: &str, default: u64| -> Result<f64> { Ok(meta.opt(key)?.map_or(default, |h| h.value) as f64) };
        // llama.cpp: GLM-4.5 without a gating function routes with sigmoid scores.
        let gating = int("expert_gating_func", 2)?;
        if gating != 2.0 && gating != 0.0 {
            bail!(
                "metadata '{}' is {gating}: GLM-4.5 routes with sigmoid scores (2), as transformers computes it",
                meta.key("expert_gating_func")
            );
        }
        let (groups, groups_used) = crate::families::deepseek_v3::forward::expert_groups(meta)?;
        let scale = meta.float("expert_weights_scale")?.unwrap_or(1.0);
        if !scale.is_finite() {
            bail!("metadata '{}' is {scale}, not a finite number", meta.key("expert_weights_scale"));
        }
        Ok(vec![
            ("leading_dense", int("leading_dense_block_count", 0)?),
            ("gating", 2.0),
            ("groups", groups),
            ("groups_used", groups_used),
            ("weights_norm", if flag(meta, "expert_weights_norm")? { 1.0 } else { 0.0 }),
            ("weights_scale", scale),
            ("shared", if int("expert_shared_count", 0)? > 0.0 { 1.0 } else { 0.0 }),
            ("qkv_bias", if has(meta, "attn_q.bias") { 1.0 } else { 0.0 }),
            ("qk_norm", if has(meta, "attn_q_norm.weight") { 1.0 } else { 0.0 }),
        ])
    }

    fn sizes(&self, meta: &Meta) -> Result<Vec<(&'static str, Hp)>> {
        let lead = meta.opt("leading_dense_block_count")?.unwrap_or(Hp { value: 0, from: "none".into() });
        let dense = if lead.value > 0 {
            meta.req("feed_forward_length")?
        } else {
            Hp { value: 0, from: "no dense layers".into() }
        };
        let shared = match meta.opt("expert_shared_count")? {
            Some(n) if n.value > 0 => n.times(&meta.req("expert_feed_forward_length")?),
            _ => Hp { value: 0, from: "no shared experts".into() },
        };
        let one = |b: bool| Hp { value: b as u64, from: String::new() };
        Ok(vec![
            ("lead", lead),
            ("dense", dense),
            ("shared", shared),
            ("qkv_bias", one(has(meta, "attn_q.bias"))),
            ("qk_norm", one(has(meta, "attn_q_norm.weight"))),
        ])
    }

    fn attention(&self, _cfg: &Config, _l: usize) -> Attention {
        // Unused: GLM's attention (partial RoPE) is its own block.
        Attention { bias: true, sinks: false, window: 0, rope: RopePairs::Halves }
    }

    fn attention_block(&self, m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
        attention(m, l, x, starts)
    }

    fn ffn_norm(&self) -> &'static str {
        "post_attention_norm"
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
        if (l as f64) < m.cfg.extra("leading_dense").unwrap_or(0.0) {
            bail!("layer {l} is dense: it has no experts");
        }
        moe::expert(m, l, e, x, &MOE)
    }

    fn layer_tensors(&self, s: &Sizes, l: usize) -> Vec<Expect> {
        let t = |name: &str| format!("blk.{l}.{name}");
        let (h, q, kv) = (&s.n_embd, s.q(), s.kv());
        let mut x = Vec::new();
        if size(s, "qkv_bias").value == 1 {
            x.extend([
                Expect::new(t("attn_q.bias"), &[&q]),
                Expect::new(t("attn_k.bias"), &[&kv]),
                Expect::new(t("attn_v.bias"), &[&kv]),
            ]);
        }
        if size(s, "qk_norm").value == 1 {
            x.extend([
                Expect::new(t("attn_q_norm.weight"), &[&s.head_dim]),
                Expect::new(t("attn_k_norm.weight"), &[&s.head_dim]),
            ]);
        }
        if (l as u64) < size(s, "lead").value {
            let f = size(s, "dense");
            x.extend([
                Expect::new(t("ffn_gate.weight"), &[h, &f]),
                Expect::new(t("ffn_up.weight"), &[h, &f]),
                Expect::new(t("ffn_down.weight"), &[&f, h]),
            ]);
            return x;
        }
        let (e, f) = (&s.n_expert, &s.n_ff);
        x.extend([
            Expect::new(t("ffn_gate_inp.weight"), &[h, e]),
            Expect::new(t("exp_probs_b.bias"), &[e]),
            Expect::new(t("ffn_gate_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_up_exps.weight"), &[h, f, e]),
            Expect::new(t("ffn_down_exps.weight"), &[f, h, e]),
        ]);
        let shared = size(s, "shared");
        if shared.value > 0 {
            x.extend([
                Expect::new(t("ffn_gate_shexp.weight"), &[h, &shared]),
                Expect::new(t("ffn_up_shexp.weight"), &[h, &shared]),
                Expect::new(t("ffn_down_shexp.weight"), &[&shared, h]),
            ]);
        }
        x
    }
}

/// GLM's attention of layer `l` on the residual stream `x` [T, hidden] (its norm included).
fn attention(m: &Model, l: usize, x: &[f32], starts: &[usize]) -> Result<Vec<f32>> {
    let c = &m.cfg;
    let bias = c.extra("qkv_bias") == Some(1.0);
    let a_in = rmsnorm(x, &m.t(&format!("blk.{l}.attn_norm.weight"))?, c.rms_eps);
    let mut q = m.linear(&a_in, &format!("blk.{l}.attn_q"), bias)?;
    let mut k = m.linear(&a_in, &format!("blk.{l}.attn_k"), bias)?;
    let v = m.linear(&a_in, &format!("blk.{l}.attn_v"), bias)?;
    if c.extra("qk_norm") == Some(1.0) {
        // One RMSNorm per head: rows of head_dim values.
        q = rmsnorm(&q, &m.t(&format!("blk.{l}.attn_q_norm.weight"))?, c.rms_eps);
        k = rmsnorm(&k, &m.t(&format!("blk.{l}.attn_k_norm.weight"))?, c.rms_eps);
    }
    rope_part(m, &mut q, c.n_head, starts);
    rope_part(m, &mut k, c.n_head_kv, starts);
    let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, qk_dim: c.head_dim, v_dim: c.head_dim };
    let o = attend(&q, &k, &v, starts, heads, 1.0 / (c.head_dim as f32).sqrt(), None, 0);
    m.linear(&o, &format!("blk.{l}.attn_output"), false)
}

/// RoPE on halves of the first `2 · inv_freq.len()` values (`rope.dimension_count`) of each head
/// of `v` [T, heads · head_dim]; the rest of each head is left as it is.
pub(crate) fn rope_part(m: &Model, v: &mut [f32], heads: usize, starts: &[usize]) {
    let (hd, rot) = (m.cfg.head_dim, 2 * m.cfg.inv_freq.len());
    if rot >= hd {
        m.rope(v, heads, starts, RopePairs::Halves);
        return;
    }
    let mut part: Vec<f32> = v.chunks_exact(hd).flat_map(|h| h[..rot].iter().copied()).collect();
    m.rope_heads(&mut part, heads, rot, starts, RopePairs::Halves);
    for (h, p) in v.chunks_exact_mut(hd).zip(part.chunks_exact(rot)) {
        h[..rot].copy_from_slice(p);
    }
}

/// The MoE block of layer `l`: the routed experts plus the shared experts.
fn routed(m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
    let c = &m.cfg;
    let logits = m.linear(x, &format!("blk.{l}.ffn_gate_inp"), false)?;
    let bias = m.t(&format!("blk.{l}.exp_probs_b.bias"))?;
    let (routes, weights) = logits.chunks_exact(c.n_expert).map(|row| route(row, &bias, c.n_expert_used, c)).unzip();
    let mut out = moe::dispatch(m, x, routes, weights, &|e, xe| moe::expert(m, l, e, xe, &MOE))?;
    if c.extra("shared") == Some(1.0) {
        let shared = moe::dense(m, l, x, "_shexp", swiglu)?;
        out.out.iter_mut().zip(&shared).for_each(|(o, s)| *o += s);
    }
    Ok(out)
}
