//! The attention every family shares: RMSNorm, q/k/v projections, RoPE, GQA, causal softmax
//! attention per sequence, with the family's variations ([`Attention`]): biases, attention
//! sinks, a sliding window, and which values RoPE pairs. A family whose attention differs more
//! (extra norms, latent projections) overrides [`super::Blocks::attention_block`] and builds on
//! the pieces here: [`Model::rope`] and [`attend`].

use anyhow::Result;
use rayon::prelude::*;

use super::Model;
use moeq_kernels::dot::{dot_rows, weighted_rows};

use super::ops::{rmsnorm, softmax};

/// Which values of a head RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopePairs {
    /// Value i with value i + head_dim/2 (NEOX, gpt-oss).
    Halves,
    /// Values 2i and 2i + 1 (llama.cpp's llama: the converter permuted q/k rows to pairs).
    Adjacent,
}

/// A family's attention settings for one layer.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    /// q, k, v and output projections have biases.
    pub bias: bool,
    /// A learned sink logit per head joins each softmax (`attn_sinks`).
    pub sinks: bool,
    /// Attend to at most this many positions back (0: the whole sequence).
    pub window: usize,
    /// RoPE's pairing.
    pub rope: RopePairs,
}

/// The head layout of an attention: query heads, KV heads (a divisor of the query heads), and
/// values per head of q and k, and of v.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    /// Query heads.
    pub n_head: usize,
    /// KV heads (a divisor of `n_head`; each serves `n_head / n_head_kv` query heads).
    pub n_head_kv: usize,
    /// Values per head of q and k.
    pub qk_dim: usize,
    /// Values per head of v (and of the output).
    pub v_dim: usize,
}

/// Causal softmax attention of each row of `q` [T, n_head · qk_dim] over the rows of its own
/// sequence in `k` [T, n_head_kv · qk_dim] and `v` [T, n_head_kv · v_dim] (`starts[i]`: the row
/// where row i's sequence starts), `scale` applied to the scores; with `sinks`, one more logit
/// per head joins each softmax (and takes its share of the weight); with `window` > 0, only the
/// last `window` positions are attended. Returns [T, n_head · v_dim]. Rows are computed in
/// parallel; the sizes must agree (the forward's [`super::Config`] checks them).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    heads: Heads,
    scale: f32,
    sinks: Option<&[f32]>,
    window: usize,
) -> Vec<f32> {
    let Heads { n_head, n_head_kv, qk_dim: hd, v_dim: vd } = heads;
    let group = n_head / n_head_kv.max(1);
    let t = starts.len();
    // K and V regrouped by KV head ([n_head_kv][T][dim]), so that a query's keys and values
    // are contiguous rows: its scores are one dot_rows call, its output one weighted_rows call.
    let by_head = |x: &[f32], dim: usize| -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        for (kv, dst) in out.chunks_mut((t * dim).max(1)).enumerate() {
            for (j, row) in dst.chunks_exact_mut(dim.max(1)).enumerate() {
                row.copy_from_slice(&x[(j * n_head_kv + kv) * dim..][..dim]);
            }
        }
        out
    };
    let (kh, vh) = (by_head(&k[..t * n_head_kv * hd], hd), by_head(&v[..t * n_head_kv * vd], vd));
    let mut o = vec![0.0f32; t * n_head * vd];
    o.par_chunks_mut(n_head * vd).enumerate().for_each_init(Vec::new, |s, (i, oi)| {
        let start = starts[i];
        // Positions before `first` lie outside the window: weight exactly 0 in the softmax,
        // so they add nothing to the output and are skipped there.
        let first = if window > 0 { start.max((i + 1).saturating_sub(window)) } else { start };
        for hh in 0..n_head {
            let kv = hh / group.max(1);
            let qi = &q[(i * n_head + hh) * hd..][..hd];
            s.clear();
            s.resize(i + 1 - start, f32::NEG_INFINITY);
            let keys = &kh[(kv * t + first) * hd..(kv * t + i + 1) * hd];
            dot_rows(qi, keys, &mut s[first - start..]);
            s[first - start..].iter_mut().for_each(|x| *x *= scale);
            if let Some(sinks) = sinks {
                s.push(sinks[hh]);
            }
            softmax(s);
            let values = &vh[(kv * t + first) * vd..(kv * t + i + 1) * vd];
            weighted_rows(&s[first - start..i + 1 - start], values, &mut oi[hh * vd..(hh + 1) * vd]);
        }
    });
    o
}

impl Model<'_, '_> {
    /// Rotates each head of `v` ([T, heads · head_dim]) by its position in its sequence, with
    /// the model's frequencies (YaRN and RoPE factors applied).
    pub fn rope(&self, v: &mut [f32], heads: usize, starts: &[usize], pairs: RopePairs) {
        self.rope_heads(v, heads, self.cfg.head_dim, starts, pairs);
    }

    /// [`Model::rope`] on heads of `hd` values (rotated pairs: the model's frequencies), for
    /// attentions that rotate a part of each head apart from the rest (DeepSeek's MLA).
    pub fn rope_heads(&self, v: &mut [f32], heads: usize, hd: usize, starts: &[usize], pairs: RopePairs) {
        let c = &self.cfg;
        let half = hd / 2;
        // (sin, cos) per position in a sequence and frequency, computed once for every row and
        // head at that position.
        let positions = starts.iter().enumerate().map(|(row, &start)| row - start + 1).max().unwrap_or(0);
        let mut table = Vec::with_capacity(positions * c.inv_freq.len());
        for p in 0..positions {
            for f in &c.inv_freq {
                let angle = p as f64 * f;
                table.push(((angle.sin() * c.rope_scale) as f32, (angle.cos() * c.rope_scale) as f32));
            }
        }
        for (row, &start) in starts.iter().enumerate() {
            let p = row - start;
            let angles = &table[p * c.inv_freq.len()..(p + 1) * c.inv_freq.len()];
            for hh in 0..heads {
                let x = &mut v[(row * heads + hh) * hd..(row * heads + hh + 1) * hd];
                for (i, &(sin, cos)) in angles.iter().enumerate().take(half) {
                    let (a, b) = match pairs {
                        RopePairs::Halves => (i, i + half),
                        RopePairs::Adjacent => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (x[a], x[b]);
                    x[a] = x0 * cos - x1 * sin;
                    x[b] = x1 * cos + x0 * sin;
                }
            }
        }
    }

    /// Self-attention of layer `l` on the residual stream `x` [T, hidden] (its norm included),
    /// causal within each sequence (`starts[i]`: the row where row i's sequence starts), with
    /// the settings `spec`: the shared attention of [`super::Blocks::attention_block`].
    pub fn attention(&self, l: usize, x: &[f32], starts: &[usize], spec: Attention) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let a_in = rmsnorm(x, &self.t(&format!("blk.{l}.attn_norm.weight"))?, c.rms_eps);
        let mut q = self.linear(&a_in, &format!("blk.{l}.attn_q"), spec.bias)?;
        let mut k = self.linear(&a_in, &format!("blk.{l}.attn_k"), spec.bias)?;
        let v = self.linear(&a_in, &format!("blk.{l}.attn_v"), spec.bias)?;
        self.rope(&mut q, c.n_head, starts, spec.rope);
        self.rope(&mut k, c.n_head_kv, starts, spec.rope);
        let sinks = if spec.sinks { Some(self.t(&format!("blk.{l}.attn_sinks.weight"))?) } else { None };
        let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, qk_dim: c.head_dim, v_dim: c.head_dim };
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let o = attend(&q, &k, &v, starts, heads, scale, sinks.as_deref(), spec.window);
        self.linear(&o, &format!("blk.{l}.attn_output"), spec.bias)
    }
}
