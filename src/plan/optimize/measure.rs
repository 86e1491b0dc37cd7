//! Measuring the error of each (tensor, type): quantize → dequantize the tensor's values with
//! the same code the writer runs (importance weights included), and sum the squared
//! difference weighted by the importance matrix (per column, per expert):
//!
//! `E(t, T) = Σ_rows Σ_j imp_j · (w_j − ŵ_j)²`,
//!
//! the expected increase of the squared output error of the layer `y = W x` when the
//! calibration inputs have second moments `imp_j = E[x_j²]` and uncorrelated columns (the
//! objective ggml's importance-weighted quantizers minimize per block). Without an entry the
//! weights are 1 (plain squared error). It is reported relative to the tensor's own weighted
//! energy `Σ_rows Σ_j imp_j · w_j²`, so that tensors of different sizes and scales compare:
//! the relative output noise each layer adds.
//!
//! Work is split in pieces of rows measured in parallel (rayon); large tensors are sampled:
//! at most [`SAMPLE_VALUES`] values per tensor, in pieces spread evenly over its rows (every
//! expert of a stacked expert tensor is visited when there are enough pieces).

use anyhow::{Context, Result};
use moeq_formats::gguf::GgmlType;
use rayon::prelude::*;

use crate::plan::recipe::{Recipe, Scratch};
use crate::plan::transcode::to_f32;
use crate::write::progress::steps_bar;

/// Most values measured per tensor.
pub const SAMPLE_VALUES: u64 = 1 << 20;

/// Rows per piece of work (fewer for wide rows).
const PIECE_VALUES: u64 = 1 << 16;

/// A way of storing a tensor whose error can be measured: quantized and dequantized by the
/// writer's own code. ggml types ([`GgmlType`], GGUF output) and MLX's types
/// ([`crate::plan::mlx::MlxType`]) are.
pub trait Codec: Copy + Send + Sync {
    /// Rows `first..first + count` of `recipe` (whose values, as the writer reads them, are
    /// `values`) stored this way and decoded into `back` (resized to fit); `false` when the
    /// type cannot hold the values (an overflow).
    ///
    /// Errors: reading the input fails, or the quantizer fails otherwise.
    fn round_trip(&self, recipe: &Recipe, values: &[f32], first: u64, count: u64, back: &mut Vec<f32>) -> Result<bool>;
}

impl Codec for GgmlType {
    fn round_trip(&self, recipe: &Recipe, _: &[f32], first: u64, count: u64, back: &mut Vec<f32>) -> Result<bool> {
        round_trip(recipe, *self, first, count, back)
    }
}

/// The measured error of one candidate type of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured<T = GgmlType> {
    /// The type.
    pub ty: T,
    /// `Σ imp · (w − ŵ)²` over the sampled rows (`f64::INFINITY` when the type cannot hold
    /// the values: an F16 overflow, a block scale that overflows).
    pub error: f64,
    /// `Σ imp · w²` over the same rows.
    pub energy: f64,
}

impl<T> Measured<T> {
    /// The error relative to the tensor's weighted energy (0 for an all-zero tensor).
    pub fn relative(&self) -> f64 {
        if self.energy > 0.0 {
            self.error / self.energy
        } else if self.error > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// The pieces (first row, rows) measured, out of a tensor's `pieces` (in order, each of at
/// most [`PIECE_VALUES`] values of rows of `ne0`): all of them when they hold at most
/// [`SAMPLE_VALUES`] values, else a subset spread evenly over the list.
pub fn sample_pieces(pieces: &[(u64, u64)], ne0: u64) -> Vec<(u64, u64)> {
    sample_pieces_within(pieces, ne0, SAMPLE_VALUES)
}

/// [`sample_pieces`] with at most about `max_values` values.
fn sample_pieces_within(pieces: &[(u64, u64)], ne0: u64, max_values: u64) -> Vec<(u64, u64)> {
    let total: u64 = pieces.iter().map(|p| p.1 * ne0).sum();
    if total <= max_values || pieces.is_empty() {
        return pieces.to_vec();
    }
    let per = (total / pieces.len() as u64).max(1);
    let keep = (max_values / per).clamp(1, pieces.len() as u64);
    (0..keep).map(|k| pieces[(k * pieces.len() as u64 / keep) as usize]).collect()
}

/// The error of one tensor stored as `ty`, on this thread: measured on at most about
/// `max_values` of its values, in pieces of about `piece_values` spread evenly over its rows
/// (each expert of a stacked tensor visited when there are enough pieces). What `verify`
/// expects a correct file's tensor to show (see [`measure`] for the sums).
///
/// Errors: reading the input fails, or the quantizer refuses the values (e.g. a type that
/// needs importance weights, given none).
pub fn measure_sample<T: Codec>(recipe: &Recipe, ty: T, max_values: u64, piece_values: u64) -> Result<Measured<T>> {
    let pieces = recipe.pieces(piece_values.saturating_mul(2), piece_values);
    let mut scratch = Scratch::default();
    let mut m = Measured { ty, error: 0.0, energy: 0.0 };
    for (first, count) in sample_pieces_within(&pieces, recipe.row_len(), max_values) {
        let sums = measure_piece(recipe, &[ty], first, count, &mut scratch)?;
        recipe.release(first, count);
        for (error, energy) in sums {
            m.error += error;
            m.energy += energy;
        }
    }
    Ok(m)
}

/// Measures every candidate type of every tensor: `jobs[i]` is tensor `i`'s recipe (values
/// read as it would be written; importance weights attached when it has them) and candidate
/// types. Returns per tensor one [`Measured`] per candidate, in the candidates' order.
///
/// Errors: reading the input fails, or a quantizer fails on something other than an
/// overflow (non-finite input).
pub fn measure<T: Codec>(jobs: &[(&Recipe, Vec<T>)], quiet: bool) -> Result<Vec<Vec<Measured<T>>>> {
    let mut work: Vec<(usize, u64, u64)> = Vec::new();
    for (i, (recipe, _)) in jobs.iter().enumerate() {
        work.extend(
            sample_pieces(&recipe.pieces(PIECE_VALUES * 2, PIECE_VALUES), recipe.row_len())
                .into_iter()
                .map(|(f, n)| (i, f, n)),
        );
    }
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { steps_bar(work.len() as u64, "measure") };
    let parts: Vec<(usize, Vec<(f64, f64)>)> = work
        .par_iter()
        .map_init(Scratch::default, |scratch, &(i, first, count)| -> Result<(usize, Vec<(f64, f64)>)> {
            let (recipe, types) = &jobs[i];
            let out = measure_piece(recipe, types, first, count, scratch)
                .with_context(|| format!("measuring tensor '{}'", recipe.spec.name))?;
            // Let the input pages go, as the writer does: memory stays bounded.
            recipe.release(first, count);
            bar.inc(1);
            Ok((i, out))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let mut out: Vec<Vec<Measured<T>>> = jobs
        .iter()
        .map(|(_, types)| types.iter().map(|&ty| Measured { ty, error: 0.0, energy: 0.0 }).collect())
        .collect();
    for (i, sums) in parts {
        for (m, (e, w)) in out[i].iter_mut().zip(sums) {
            m.error += e;
            m.energy += w;
        }
    }
    Ok(out)
}

/// The importance weights of rows `first..first + count` (rows of `ne0` values; 1 without an
/// entry), per value.
fn piece_weights(recipe: &Recipe, first: u64, count: u64, ne0: usize) -> Vec<f32> {
    let mut weights = vec![1.0f32; count as usize * ne0];
    if let Some(imp) = &recipe.importance {
        for (r, row) in weights.chunks_exact_mut(ne0).enumerate() {
            imp.row_weights(first + r as u64, row);
        }
    }
    weights
}

/// Rows `first..first + count` quantized to `ty` by the writer's code and dequantized into
/// `back` (resized to fit); `false` when the type cannot hold the values (an overflow).
fn round_trip(recipe: &Recipe, ty: GgmlType, first: u64, count: u64, back: &mut Vec<f32>) -> Result<bool> {
    let probe = recipe.clone().retype(ty);
    let mut s = Scratch::default();
    let bytes = match probe.rows(first, count, &mut s) {
        Ok(b) => b,
        Err(e) if e.chain().any(|c| c.downcast_ref::<crate::plan::transcode::Overflow>().is_some()) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    back.resize(count as usize * recipe.row_len() as usize, 0.0);
    to_f32(ty, bytes, back)?;
    Ok(true)
}

/// `(Σ imp (w − ŵ)², Σ imp w²)` over paired values and weights.
fn weighted_sums(values: &[f32], back: &[f32], weights: &[f32]) -> (f64, f64) {
    values.iter().zip(back).zip(weights).fold((0.0, 0.0), |(e, w2), ((&v, &q), &w)| {
        let d = v as f64 - q as f64;
        (e + w as f64 * d * d, w2 + w as f64 * v as f64 * v as f64)
    })
}

/// `(Σ imp (w − ŵ)², Σ imp w²)` of rows `first..first + count` for each type.
fn measure_piece<T: Codec>(
    recipe: &Recipe,
    types: &[T],
    first: u64,
    count: u64,
    scratch: &mut Scratch,
) -> Result<Vec<(f64, f64)>> {
    let ne0 = recipe.row_len() as usize;
    let values = recipe.values(first, count, scratch)?.to_vec();
    let weights = piece_weights(recipe, first, count, ne0);
    let energy: f64 = values.iter().zip(&weights).map(|(&v, &w)| w as f64 * v as f64 * v as f64).sum();
    let mut back = Vec::new();
    let mut out = Vec::with_capacity(types.len());
    for ty in types {
        if !ty.round_trip(recipe, &values, first, count, &mut back)? {
            out.push((f64::INFINITY, energy));
            continue;
        }
        out.push((weighted_sums(&values, &back, &weights).0, energy));
    }
    Ok(out)
}

/// The whole tensor of `recipe` quantized to `ty` by the writer's code (all rows, in order:
/// the bytes the file would hold), with its importance-weighted error over every row (not
/// sampled; measured on the dequantized rows, piece by piece). `None` when the type cannot hold
/// the values. Pieces run in parallel; memory is the encoded tensor plus one piece per thread.
///
/// Errors: reading the input fails, or a quantizer fails on something other than an overflow.
pub fn encode_whole(recipe: &Recipe, ty: GgmlType) -> Result<Option<(Vec<u8>, Measured)>> {
    let ne0 = recipe.row_len() as usize;
    let pieces = recipe.pieces(PIECE_VALUES * 2, PIECE_VALUES);
    let probe = recipe.clone().retype(ty);
    let parts: Vec<Option<(Vec<u8>, f64, f64)>> = pieces
        .par_iter()
        .map_init(Scratch::default, |scratch, &(first, count)| -> Result<Option<(Vec<u8>, f64, f64)>> {
            let values = recipe.values(first, count, scratch)?.to_vec();
            recipe.release(first, count);
            let mut s = Scratch::default();
            let bytes = match probe.rows(first, count, &mut s) {
                Ok(b) => b.to_vec(),
                Err(e) if e.chain().any(|c| c.downcast_ref::<crate::plan::transcode::Overflow>().is_some()) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let mut back = vec![0.0; count as usize * ne0];
            to_f32(ty, &bytes, &mut back)?;
            let (error, energy) = weighted_sums(&values, &back, &piece_weights(recipe, first, count, ne0));
            Ok(Some((bytes, error, energy)))
        })
        .collect::<Result<_>>()
        .with_context(|| format!("quantizing tensor '{}' to {ty}", recipe.spec.name))?;
    let row = ty.row_bytes(recipe.row_len()).unwrap_or(0);
    Ok(concatenate(parts, ty, (recipe.n_rows() * row) as usize))
}

/// The pieces' bytes one after the other (`capacity` bytes in all) and their summed error;
/// `None` when any piece is `None` (a type that cannot hold its values).
fn concatenate<T>(parts: Vec<Option<(Vec<u8>, f64, f64)>>, ty: T, capacity: usize) -> Option<(Vec<u8>, Measured<T>)> {
    let mut all = Vec::with_capacity(capacity);
    let mut m = Measured { ty, error: 0.0, energy: 0.0 };
    for part in parts {
        let (bytes, error, energy) = part?;
        all.extend_from_slice(&bytes);
        m.error += error;
        m.energy += energy;
    }
    Some((all, m))
}

/// Rows `rows` (sorted, distinct) of `recipe` encoded to `ty` by the writer's code, one after
/// the other (for [`crate::model::weights::Weights::replaced_rows`]), and the type's
/// importance-weighted error over the whole tensor, sampled as [`measure`] samples it. `None`
/// when the type cannot hold the values. For a probe of a huge tensor of which a forward reads
/// few rows (the token embedding, the head).
///
/// Errors: reading the input fails, or a quantizer fails on something other than an overflow.
pub fn encode_rows(recipe: &Recipe, ty: GgmlType, rows: &[u64]) -> Result<Option<(Vec<u8>, Measured)>> {
    let per = (PIECE_VALUES / recipe.row_len().max(1)).max(1);
    // Runs of consecutive rows within one piece of the input (pieces never straddle stacked
    // inputs), each at most `per` rows.
    let bounds: Vec<u64> = recipe.pieces(u64::MAX, u64::MAX).iter().map(|p| p.0).collect();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &x in rows {
        match runs.last_mut() {
            Some((f, c)) if *f + *c == x && *c < per && !bounds.contains(&x) => *c += 1,
            _ => runs.push((x, 1)),
        }
    }
    let probe = recipe.clone().retype(ty);
    let parts: Vec<Option<Vec<u8>>> = runs
        .par_iter()
        .map_init(Scratch::default, |scratch, &(first, count)| -> Result<Option<Vec<u8>>> {
            let bytes = match probe.rows(first, count, scratch) {
                Ok(b) => Some(b.to_vec()),
                Err(e) if e.chain().any(|c| c.downcast_ref::<crate::plan::transcode::Overflow>().is_some()) => None,
                Err(e) => return Err(e),
            };
            recipe.release(first, count);
            Ok(bytes)
        })
        .collect::<Result<_>>()
        .with_context(|| format!("quantizing rows of tensor '{}' to {ty}", recipe.spec.name))?;
    let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else { return Ok(None) };
    let m = measure(&[(recipe, vec![ty])], true)?.into_iter().flatten().next();
    match m {
        Some(m) if m.error.is_finite() => Ok(Some((parts.concat(), m))),
        _ => Ok(None),
    }
}

/// The whole tensor of `recipe` stored as `codec` and decoded (all rows, in order), as F32
/// bytes (little-endian) for [`crate::model::weights::Weights::replaced_all`] with
/// `GgmlType::F32`, with its importance-weighted error over every row: a type the forward cannot
/// read itself (an MLX type), as a whole build's forward reads it. `None` when the codec cannot hold the values. Pieces run in parallel;
/// memory is the tensor in f32 plus one piece per thread.
///
/// Errors: reading the input fails, or the codec fails otherwise.
pub fn decode_whole<T: Codec>(recipe: &Recipe, codec: T) -> Result<Option<(Vec<u8>, Measured<T>)>> {
    let ne0 = recipe.row_len() as usize;
    let pieces = recipe.pieces(PIECE_VALUES * 2, PIECE_VALUES);
    let parts: Vec<Option<(Vec<u8>, f64, f64)>> = pieces
        .par_iter()
        .map_init(Scratch::default, |scratch, &(first, count)| -> Result<Option<(Vec<u8>, f64, f64)>> {
            let values = recipe.values(first, count, scratch)?.to_vec();
            recipe.release(first, count);
            let mut back = Vec::new();
            if !codec.round_trip(recipe, &values, first, count, &mut back)? {
                return Ok(None);
            }
            let (error, energy) = weighted_sums(&values, &back, &piece_weights(recipe, first, count, ne0));
            Ok(Some((back.iter().flat_map(|v| v.to_le_bytes()).collect(), error, energy)))
        })
        .collect::<Result<_>>()
        .with_context(|| format!("quantizing tensor '{}' for a probe", recipe.spec.name))?;
    Ok(concatenate(parts, codec, (recipe.n_rows() * recipe.row_len() * 4) as usize))
}

#[cfg(test)]
mod tests {
    use super::sample_pieces;

    #[test]
    fn small_tensors_are_measured_whole_and_large_ones_sampled_evenly() {
        let pieces =
            |rows: u64, per: u64| (0..rows).step_by(per as usize).map(|f| (f, per.min(rows - f))).collect::<Vec<_>>();
        let whole = sample_pieces(&pieces(100, 113), 576);
        assert_eq!(whole, pieces(100, 113));
        let all = pieces(49152, 113);
        let big = sample_pieces(&all, 576);
        let rows: u64 = big.iter().map(|p| p.1).sum();
        assert!(rows * 576 <= super::SAMPLE_VALUES && rows * 576 >= super::SAMPLE_VALUES / 2, "{rows}");
        assert!(big.last().unwrap().0 > 40000, "the sample reaches the end of the tensor");
        assert!(big.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        assert!(big.iter().all(|p| all.contains(p)));
    }
}
