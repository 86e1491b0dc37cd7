//! The calibration forward of the KL-calibrated optimizer: the reference run of the source
//! model (its residual stream at every layer boundary and each position's most likely next
//! tokens) and the coarse next-token KL divergence of a changed run against it.

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::{HEAD_ROWS, TOP_K};
use crate::forward::Model;
use crate::forward::ops::rmsnorm;

/// A position's reference distribution: its top tokens' log-probabilities and the rest's mass.
pub(super) struct Top {
    ids: Vec<u32>,
    logp: Vec<f64>,
    rest: f64,
}

/// The log-probabilities of tokens `ids` in the softmax of `row`, and the probability of all
/// others (both computed the same way for the reference and a probe, so an unchanged row
/// gives KL 0 exactly).
fn coarse(row: &[f32], ids: &[u32]) -> (Vec<f64>, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = sum.ln() + max;
    let logp: Vec<f64> = ids.iter().map(|&i| row[i as usize] as f64 - lse).collect();
    let top: f64 = ids.iter().map(|&i| (row[i as usize] as f64 - max).exp()).sum();
    (logp, ((sum - top) / sum).max(0.0))
}

/// The reference distribution of one logit row.
pub(super) fn top_of(row: &[f32]) -> Top {
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    let k = TOP_K.min(ids.len());
    let order = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    let (logp, rest) = coarse(row, &ids);
    Top { ids, logp, rest }
}

#[cfg(test)]
impl Top {
    /// How many reference tokens are kept.
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// KL(reference ‖ row) over the reference's top tokens and the rest bucket (nats, ≥ 0).
pub(super) fn kl_coarse(top: &Top, row: &[f32]) -> f64 {
    let (logq, rest_q) = coarse(row, &top.ids);
    let mut kl: f64 = top.logp.iter().zip(&logq).map(|(&p, &q)| p.exp() * (p - q)).sum();
    if top.rest > 0.0 {
        kl += top.rest * (top.rest.ln() - rest_q.max(f64::MIN_POSITIVE).ln());
    }
    kl.max(0.0)
}

/// Runs layers of a model over all calibration tokens, group of chunks by group of chunks.
pub(super) struct Runner {
    pub(super) tokens: Vec<u32>,
    /// (first row, rows, row where each row's chunk starts, relative to the group).
    groups: Vec<crate::imatrix::ChunkGroup>,
}

impl Runner {
    pub(super) fn new(m: &Model, chunks: &[Vec<u32>]) -> Runner {
        Runner { tokens: chunks.iter().flatten().copied().collect(), groups: crate::imatrix::chunk_groups(m, chunks) }
    }

    /// Layer `l` of `m` on the residual stream `x` [tokens, hidden], in place.
    pub(super) fn layer(&self, m: &Model, l: usize, x: &mut [f32]) -> Result<()> {
        self.attention(m, l, x)?;
        self.ffn(m, l, x)
    }

    /// The attention half of layer `l` ([`Model::attention_residual`]), group by group.
    pub(super) fn attention(&self, m: &Model, l: usize, x: &mut [f32]) -> Result<()> {
        let h = m.cfg.n_embd;
        for (first, len, starts) in &self.groups {
            m.attention_residual(l, &mut x[first * h..(first + len) * h], starts)
                .with_context(|| format!("layer {l}"))?;
        }
        Ok(())
    }

    /// The feed-forward half of layer `l` ([`Model::ffn_residual`]), group by group.
    pub(super) fn ffn(&self, m: &Model, l: usize, x: &mut [f32]) -> Result<()> {
        let h = m.cfg.n_embd;
        for (first, len, _) in &self.groups {
            m.ffn_residual(l, &mut x[first * h..(first + len) * h]).with_context(|| format!("layer {l}"))?;
        }
        Ok(())
    }

    /// The logits of the final residual `x`, [`HEAD_ROWS`] positions at a time, each slice
    /// handed to `each` with its first position.
    pub(super) fn head(&self, m: &Model, x: &[f32], mut each: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let h = m.cfg.n_embd.max(1);
        let norm = m.t("output_norm.weight")?;
        let head = m.head_weight().trim_end_matches(".weight");
        for (k, xs) in x.chunks(HEAD_ROWS * h).enumerate() {
            let logits = m.linear(&rmsnorm(xs, &norm, m.cfg.rms_eps), head, false)?;
            each(k * HEAD_ROWS, &logits)?;
        }
        Ok(())
    }
}

/// The reference run: the residual stream entering each layer (and after the last), the
/// residual stream after each layer's attention half (when asked for), and each position's
/// top tokens.
pub(super) struct Reference {
    /// `hidden[l]`: entering layer `l`; `hidden[n_layer]`: after the last layer.
    pub(super) hidden: Vec<Vec<f32>>,
    /// `mid[l]`: layer `l`'s residual stream after its attention half (empty unless asked).
    pub(super) mid: Vec<Vec<f32>>,
    pub(super) top: Vec<Top>,
}

/// Runs the source model `m` on every calibration token; keeps `mid` when `keep_mid`.
pub(super) fn reference(m: &Model, run: &Runner, keep_mid: bool) -> Result<Reference> {
    let mut x = m.embed(&run.tokens)?;
    let mut hidden = Vec::with_capacity(m.cfg.n_layer + 1);
    let mut mid = Vec::with_capacity(if keep_mid { m.cfg.n_layer } else { 0 });
    for l in 0..m.cfg.n_layer {
        hidden.push(x.clone());
        run.attention(m, l, &mut x)?;
        if keep_mid {
            mid.push(x.clone());
        }
        run.ffn(m, l, &mut x)?;
    }
    let vocab = vocab(m)?;
    let mut top = Vec::with_capacity(run.tokens.len());
    run.head(m, &x, |_, logits| {
        top.par_extend(logits.par_chunks_exact(vocab).map(top_of));
        Ok(())
    })?;
    hidden.push(x);
    Ok(Reference { hidden, mid, top })
}

fn vocab(m: &Model) -> Result<usize> {
    Ok(m.w.ne(m.head_weight())?.get(1).copied().unwrap_or(1).max(1) as usize)
}

/// The mean coarse KL against the reference of model `m` run from the residual stream `x`
/// entering layer `from` (`from == n_layer`: only the head) to the logits.
pub(super) fn tail_kl(m: &Model, run: &Runner, r: &Reference, mut x: Vec<f32>, from: usize) -> Result<f64> {
    for l in from..m.cfg.n_layer {
        run.layer(m, l, &mut x)?;
    }
    let vocab = vocab(m)?;
    let mut sum = 0.0;
    run.head(m, &x, |first, logits| {
        let kls: Vec<f64> = logits
            .par_chunks_exact(vocab)
            .enumerate()
            .map(|(i, row)| r.top.get(first + i).map_or(0.0, |t| kl_coarse(t, row)))
            .collect();
        sum += kls.iter().sum::<f64>();
        Ok(())
    })?;
    Ok(sum / r.top.len().max(1) as f64)
}

/// `Σ v²` over a residual stream change `v` [tokens, hidden], divided by the positions.
pub(super) fn mean_sq(v: &[f32], hidden: usize) -> f64 {
    let positions = (v.len() / hidden.max(1)).max(1);
    let sum: f64 = v.par_chunks(1 << 16).map(|c| c.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>()).sum();
    sum / positions as f64
}

/// `a[i] += b[i]`, on every core.
pub(super) fn add(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 16).zip(b.par_chunks(1 << 16)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `a[i] -= b[i]`, on every core.
pub(super) fn sub(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 16).zip(b.par_chunks(1 << 16)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a -= b));
}
