//! The calibration forward of the KL-calibrated optimizer: the reference run of the source
//! model (its residual stream at every layer boundary and each position's most likely next
//! tokens) and the coarse next-token KL divergence of a changed run against it.

use anyhow::{Context, Result};
use rayon::prelude::*;

use moeq_kernels::dot::dot_block;

use super::{HEAD_ROWS, REST_SAMPLES, TOP_K};
use crate::forward::Model;
use crate::forward::ops::rmsnorm;

/// A position's reference distribution, and the head rows a changed run reads for it: the
/// reference's [`TOP_K`] most likely tokens (their log-probabilities), and [`REST_SAMPLES`]
/// tokens drawn from the rest in proportion to their probability (systematic sampling), whose
/// logits estimate how the rest's total mass changes.
pub(super) struct Top {
    /// How many of the position's head rows ([`RowIndex`]: the top tokens, then the sampled
    /// rest tokens) are top tokens.
    k: usize,
    /// The top tokens' log-probabilities.
    logp: Vec<f64>,
    /// The sampled tokens' logits.
    z_rest: Vec<f32>,
    /// The rest's probability.
    rest: f64,
    /// `ln Σ exp(logit)` over the rest (−∞ without a rest).
    log_rest: f64,
}

/// `ln Σ exp(v)`, in f64.
fn log_sum_exp(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = v.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + v.map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// Chooses a position's head rows from its full logit row: the top [`TOP_K`] tokens, and
/// [`REST_SAMPLES`] of the rest drawn in proportion to `exp(logit)` (systematic sampling with
/// the offset `seed`, in [0, 1)). Returns the ids (top first), the number of top ids and
/// `ln Σ exp` over the rest.
fn choose(row: &[f32], seed: f64) -> (Vec<u32>, usize, f64) {
    let mut ids: Vec<u32> = crate::forward::moe::top_k(row, TOP_K).into_iter().map(|i| i as u32).collect();
    let k = ids.len();
    let mut top = vec![false; row.len()];
    ids.iter().for_each(|&i| top[i as usize] = true);
    let rest = || row.iter().enumerate().filter(|&(i, _)| !top[i]).map(|(_, &v)| v as f64);
    let log_rest = log_sum_exp(rest());
    if log_rest.is_finite() {
        let mut acc = 0.0;
        let mut next = 0;
        for (i, v) in row.iter().enumerate().filter(|&(i, _)| !top[i]) {
            acc += (*v as f64 - log_rest).exp() * REST_SAMPLES as f64;
            while next < REST_SAMPLES && acc > next as f64 + seed {
                ids.push(i as u32);
                next += 1;
            }
        }
        // Rounding can leave the last points uncovered: the last rest token takes them.
        if let Some(last) = (0..row.len()).rev().find(|&i| !top[i]) {
            ids.extend(std::iter::repeat_n(last as u32, REST_SAMPLES - next));
        }
    }
    (ids, k, log_rest)
}

/// Which head rows each position reads ([`Top::ids`]), inverted: for head row `v`, the
/// `(position, slot)` pairs in `entries[starts[v]..starts[v + 1]]`, a slot being the index of
/// the value among all positions' rows (position `p`'s rows are slots `offsets[p]..offsets[p + 1]`).
pub(super) struct RowIndex {
    starts: Vec<usize>,
    entries: Vec<(u32, u32)>,
    offsets: Vec<usize>,
}

impl RowIndex {
    /// The head rows some position reads, ascending.
    pub(super) fn rows_read(&self) -> impl Iterator<Item = u64> + '_ {
        self.starts.windows(2).enumerate().filter(|(_, w)| w[1] > w[0]).map(|(v, _)| v as u64)
    }

    fn new(ids: &[&[u32]], vocab: usize) -> RowIndex {
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        offsets.push(0);
        let mut count = vec![0usize; vocab + 1];
        for row in ids {
            offsets.push(offsets.last().unwrap_or(&0) + row.len());
            row.iter().for_each(|&v| count[v as usize + 1] += 1);
        }
        for v in 0..vocab {
            count[v + 1] += count[v];
        }
        let starts = count.clone();
        let mut entries = vec![(0u32, 0u32); *offsets.last().unwrap_or(&0)];
        for (p, row) in ids.iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                entries[count[v as usize]] = (p as u32, (offsets[p] + k) as u32);
                count[v as usize] += 1;
            }
        }
        RowIndex { starts, entries, offsets }
    }
}

/// Head rows decoded per task of [`sparse_head`].
const HEAD_TILE: u64 = 64;

/// Head rows per run of tiles in [`sparse_head`] (a few tens of MB of input).
const HEAD_RUN: u64 = 8192;

/// The logits of every position's head rows (`index`) for the final normed hidden states
/// `normed` [tokens, hidden], by slot: the head is read tile by tile (tiles no position needs
/// are skipped) and only the named rows are multiplied, each with its positions' states.
fn sparse_head(m: &Model, index: &RowIndex, normed: &[f32]) -> Result<Vec<f32>> {
    let head = m.head_weight();
    let h = m.cfg.n_embd.max(1);
    let vocab = index.starts.len() - 1;
    let tiles: Vec<u64> = (0..vocab as u64)
        .step_by(HEAD_TILE as usize)
        .filter(|&t| index.starts[(t + HEAD_TILE).min(vocab as u64) as usize] > index.starts[t as usize])
        .collect();
    let mut z = vec![0.0f32; index.entries.len()];
    // Runs of tiles on every core; each run's input pages are let go at once after it (a tile's
    // neighbours are read by other threads).
    for run in tiles.chunk_by(|a, b| a / HEAD_RUN == b / HEAD_RUN) {
        let parts: Vec<Vec<(u32, f32)>> = run
            .par_iter()
            .map_init(Vec::new, |buf, &start| -> Result<Vec<(u32, f32)>> {
                let end = (start + HEAD_TILE).min(vocab as u64) as usize;
                let needed = |v: usize| index.starts[v + 1] > index.starts[v];
                let mut out = Vec::new();
                let mut one = [0.0f32];
                // Only the runs of rows some position reads are decoded (with the rest of the
                // vocabulary sampled, about half of a tile's rows).
                let mut v = start as usize;
                while v < end {
                    if !needed(v) {
                        v += 1;
                        continue;
                    }
                    let first = v;
                    while v < end && needed(v) {
                        v += 1;
                    }
                    m.w.rows_into_held(head, first as u64, (v - first) as u64, buf)?;
                    for (r, u) in (first..v).enumerate() {
                        for &(p, slot) in &index.entries[index.starts[u]..index.starts[u + 1]] {
                            let p = p as usize;
                            dot_block(&buf[r * h..(r + 1) * h], &normed[p * h..(p + 1) * h], h, &mut one);
                            out.push((slot, one[0]));
                        }
                    }
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        let (lo, last) = (run[0], run[run.len() - 1]);
        m.w.release(head, lo, (last + HEAD_TILE).min(vocab as u64) - lo)?;
        for (slot, v) in parts.into_iter().flatten() {
            z[slot as usize] = v;
        }
    }
    Ok(z)
}

/// `(log-probabilities of the top ids, probability of the rest)` of a position whose head rows
/// have logits `z` (top tokens first) (the rest's mass scaled by the sampled tokens' mean `exp` change).
/// The reference's own logits give back the reference exactly.
fn distribution(top: &Top, z: &[f32]) -> (Vec<f64>, f64) {
    let (zt, zr) = z.split_at(top.k);
    let log_top = log_sum_exp(zt.iter().map(|&v| v as f64));
    let log_rest = if zr.is_empty() {
        top.log_rest
    } else {
        let mean =
            zr.iter().zip(&top.z_rest).map(|(&a, &b)| (a as f64 - b as f64).exp()).sum::<f64>() / zr.len() as f64;
        top.log_rest + mean.ln()
    };
    let lse = log_sum_exp([log_top, log_rest].into_iter());
    (zt.iter().map(|&v| v as f64 - lse).collect(), (log_rest - lse).exp())
}

#[cfg(test)]
impl Top {
    /// How many reference tokens are kept.
    pub(super) fn len(&self) -> usize {
        self.k
    }
}

/// KL(reference ‖ changed) over the reference's top tokens and the rest bucket (nats, ≥ 0),
/// from the changed run's logits `z` of the position's head rows.
pub(super) fn kl_coarse(top: &Top, z: &[f32]) -> f64 {
    let (logq, rest_q) = distribution(top, z);
    let mut kl: f64 = top.logp.iter().zip(&logq).map(|(&p, &q)| p.exp() * (p - q)).sum();
    if top.rest > 0.0 {
        kl += top.rest * (top.rest.ln() - rest_q.max(f64::MIN_POSITIVE).ln());
    }
    kl.max(0.0)
}

/// The reference distribution of position `pos` from its full logit row `row` and its head
/// rows' logits as the changed runs compute them (`sparse(ids)`) (tests; the reference run
/// does the same for all positions at once).
#[cfg(test)]
pub(super) fn top_of(
    row: &[f32],
    pos: usize,
    sparse: impl FnOnce(&[u32]) -> Result<Vec<f32>>,
) -> Result<(Top, Vec<u32>)> {
    let seed = (pos as f64 * 0.618_033_988_749_895).fract();
    let (ids, k, log_rest) = choose(row, seed);
    let z = sparse(&ids)?;
    let mut top = Top { k, logp: Vec::new(), z_rest: z[k..].to_vec(), rest: 0.0, log_rest };
    (top.logp, top.rest) = distribution(&top, &z);
    Ok((top, ids))
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
        for (g, (first, len, starts)) in self.groups.iter().enumerate() {
            if let Some(memo) = &m.memo {
                memo.set_scope(g);
            }
            m.attention_residual(l, &mut x[first * h..(first + len) * h], starts)
                .with_context(|| format!("layer {l}"))?;
        }
        Ok(())
    }

    /// The feed-forward half of layer `l` ([`Model::ffn_residual`]), group by group.
    pub(super) fn ffn(&self, m: &Model, l: usize, x: &mut [f32]) -> Result<()> {
        let h = m.cfg.n_embd;
        for (g, (first, len, _)) in self.groups.iter().enumerate() {
            if let Some(memo) = &m.memo {
                memo.set_scope(g);
            }
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

/// The reference run: the residual stream entering each layer (and after the last) and each
/// position's top tokens.
pub(super) struct Reference {
    /// `hidden[l]`: entering layer `l`; `hidden[n_layer]`: after the last layer.
    pub(super) hidden: Vec<Vec<f32>>,
    pub(super) top: Vec<Top>,
    /// The head rows the positions read.
    pub(super) index: RowIndex,
}

/// Called by [`reference`] after each layer of `layers` with the layer and its residual
/// streams: entering it, after its attention half, after it.
pub(super) type EachLayer<'c> = dyn FnMut(usize, (&[f32], &[f32], &[f32])) -> Result<()> + 'c;

/// Runs the source model `m` on every calibration token. After each layer of `layers`
/// (ascending), `each` sees it, with the layer's projections recorded in `m`'s memo (when it
/// has one; cleared after).
pub(super) fn reference(m: &Model, run: &Runner, layers: &[usize], each: &mut EachLayer) -> Result<Reference> {
    let mut x = m.embed(&run.tokens)?;
    let mut hidden = Vec::with_capacity(m.cfg.n_layer + 1);
    for l in 0..m.cfg.n_layer {
        let wanted = layers.binary_search(&l).is_ok();
        let memo = m.memo.as_ref().filter(|_| wanted);
        if let Some(memo) = memo {
            memo.clear();
            memo.set_recording(true);
        }
        hidden.push(x.clone());
        run.attention(m, l, &mut x)?;
        let after_attention = wanted.then(|| x.clone());
        run.ffn(m, l, &mut x)?;
        if let Some(memo) = memo {
            memo.set_recording(false);
        }
        if let Some(mid_l) = after_attention {
            let done = each(l, (&hidden[l], &mid_l, &x));
            if let Some(memo) = memo {
                memo.clear();
            }
            done?;
        }
    }
    let vocab = vocab(m)?;
    let mut chosen = Vec::with_capacity(run.tokens.len());
    run.head(m, &x, |first, logits| {
        chosen.par_extend(logits.par_chunks_exact(vocab).enumerate().map(|(i, row)| {
            // A fixed offset per position (the golden ratio's fractional part times the position).
            let seed = ((first + i) as f64 * 0.618_033_988_749_895).fract();
            choose(row, seed)
        }));
        Ok(())
    })?;
    let index = RowIndex::new(&chosen.iter().map(|c| &c.0[..]).collect::<Vec<_>>(), vocab);
    let z = sparse_head(m, &index, &final_norm(m, &x)?)?;
    let top = chosen
        .into_iter()
        .enumerate()
        .map(|(p, (_, k, log_rest))| {
            let z = &z[index.offsets[p]..index.offsets[p + 1]];
            let mut top = Top { k, logp: Vec::new(), z_rest: z[k..].to_vec(), rest: 0.0, log_rest };
            (top.logp, top.rest) = distribution(&top, z);
            top
        })
        .collect();
    hidden.push(x);
    Ok(Reference { hidden, top, index })
}

/// The final norm of the residual stream `x` [tokens, hidden]: the head's input.
fn final_norm(m: &Model, x: &[f32]) -> Result<Vec<f32>> {
    Ok(rmsnorm(x, &m.t("output_norm.weight")?, m.cfg.rms_eps))
}

fn vocab(m: &Model) -> Result<usize> {
    Ok(m.w.ne(m.head_weight())?.get(1).copied().unwrap_or(1).max(1) as usize)
}

/// The mean coarse KL against the reference of model `m` run from the residual stream `x`
/// entering layer `from` (`from == n_layer`: only the head) to the logits. Only the head rows
/// each position's reference distribution names are computed ([`Top`]), not the whole
/// vocabulary.
pub(super) fn tail_kl(m: &Model, run: &Runner, r: &Reference, mut x: Vec<f32>, from: usize) -> Result<f64> {
    for l in from..m.cfg.n_layer {
        run.layer(m, l, &mut x)?;
    }
    let normed = final_norm(m, &x)?;
    drop(x);
    let z = sparse_head(m, &r.index, &normed)?;
    let o = &r.index.offsets;
    // Summed in position order (a parallel sum's order depends on the threads' timing, and
    // the same input must give the same file).
    let each: Vec<f64> = r.top.par_iter().enumerate().map(|(p, top)| kl_coarse(top, &z[o[p]..o[p + 1]])).collect();
    let sum: f64 = each.iter().sum();
    Ok(sum / r.top.len().max(1) as f64)
}

/// `Σ v²` over a residual stream change `v` [tokens, hidden], divided by the positions.
pub(super) fn mean_sq(v: &[f32], hidden: usize) -> f64 {
    let positions = (v.len() / hidden.max(1)).max(1);
    // Chunks' sums added in order: the same on every run.
    let parts: Vec<f64> =
        v.par_chunks(1 << 16).map(|c| c.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>()).collect();
    let sum: f64 = parts.iter().sum();
    sum / positions as f64
}

/// `a[i] += b[i]`, on every core.
pub(super) fn add(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 16)
        .zip(b.par_chunks(1 << 16))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `a[i] -= b[i]`, on every core.
pub(super) fn sub(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 16)
        .zip(b.par_chunks(1 << 16))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a -= b));
}
