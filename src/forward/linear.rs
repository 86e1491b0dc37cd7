//! Tiled projections: weight rows decoded tile by tile on every core and multiplied with all
//! tokens while in cache, so no decoded matrix is ever held whole.

use anyhow::Result;
use moeq_kernels::dot::{Tokens, dot_tile};
use rayon::prelude::*;

use super::Model;

/// Weight rows decoded per task of [`Model::project`] (twenty blocks of three): a few hundred
/// KB of f32 that stay in cache while every token is multiplied with them (measured best
/// among 15–240 on the gpt-oss benchmark).
const TILE_ROWS: u64 = 60;

/// Tiles computed together before their results are put in place (about 8k rows).
const TILES_PER_RUN: u64 = 128;

/// `out[k · n + r] = Σ_i tile[r][i] · x[k][i] + bias[r]` for the tile's `n` weight rows
/// (`tokens.width()` values each): one tile against all tokens, each token's results
/// contiguous (they are copied into its output row as one run). Every result is one
/// [`dot_tile`] value, which equals `dot_block`'s, plus the bias (+0 without one, as
/// before), so it does not depend on how the rows were split into tiles.
pub(super) fn multiply_tile(tokens: &Tokens, tile: &[f32], bias: Option<&[f32]>, out: &mut Vec<f32>) {
    let n = tile.len() / tokens.width().max(1);
    out.clear();
    out.resize(n * tokens.count(), 0.0);
    dot_tile(tile, tokens, out);
    for y in out.chunks_exact_mut(n.max(1)) {
        for (r, y) in y.iter_mut().enumerate() {
            *y += bias.map_or(0.0, |bias| bias[r]);
        }
    }
}

impl Model<'_, '_> {
    pub(crate) fn t(&self, name: &str) -> Result<Vec<f32>> {
        self.w.all(name)
    }

    /// `x · Wᵀ (+ b)`, reading the weight in slices of rows so a large matrix (the output
    /// head) is never decoded whole.
    pub fn linear(&self, x: &[f32], name: &str, bias: bool) -> Result<Vec<f32>> {
        let weight = format!("{name}.weight");
        let rows = self.w.ne(&weight)?.get(1).copied().unwrap_or(1);
        let b = if bias { Some(self.t(&format!("{name}.bias"))?) } else { None };
        self.project(x, &weight, 0, rows, b.as_deref())
    }

    /// `y[k][o] = Σ_i x[k][i] · W[first + o][i] (+ bias[o])` for rows `first..first + rows` of
    /// weight `name`. The rows are decoded tile by tile, each tile on whichever thread takes it
    /// and multiplied with every token while it is in cache, so decoding runs on all cores and
    /// no decoded matrix is ever held whole. The model's [`super::Probe`], if any, sees `x` first;
    /// its [`super::memo::Memo`], if any, records the result or gives it without computing.
    pub fn project(&self, x: &[f32], name: &str, first: u64, rows: u64, bias: Option<&[f32]>) -> Result<Vec<f32>> {
        let cols = self.w.ne(name)?.first().copied().unwrap_or(1) as usize;
        if let Some(probe) = &self.probe {
            probe.input(name, first, rows, x);
        }
        if let Some(memo) = &self.memo
            && let Some(y) = memo.reuse(self, x, name, first, rows, bias)?
        {
            return Ok(y);
        }
        anyhow::ensure!(
            x.len().is_multiple_of(cols),
            "{name}: the input holds {} values, not whole rows of {cols}",
            x.len()
        );
        let t = x.len() / cols.max(1);
        let tokens = Tokens::new(x, cols);
        let mut y = vec![0.0f32; t * rows as usize];
        // Runs of tiles, so the per-tile results held before they are scattered into `y` stay
        // small even for the output head.
        let run = TILE_ROWS * TILES_PER_RUN;
        for run_start in (0..rows).step_by(run as usize) {
            let run_rows = run.min(rows - run_start);
            let tiles: Vec<u64> = (run_start..run_start + run_rows).step_by(TILE_ROWS as usize).collect();
            let parts: Vec<Vec<f32>> = tiles
                .par_iter()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(tile, out), &start| -> Result<Vec<f32>> {
                        let n = TILE_ROWS.min(rows - start);
                        self.w.rows_into_held(name, first + start, n, tile)?;
                        let b = bias.map(|b| &b[start as usize..(start + n) as usize]);
                        multiply_tile(&tokens, tile, b, out);
                        Ok(std::mem::take(out))
                    },
                )
                .collect::<Result<_>>()?;
            // The run's input pages at once (a tile's neighbours are read by other threads).
            self.w.release(name, first + run_start, run_rows)?;
            // Token by token (on every core), each tile's results go to one contiguous run of
            // the token's row of `y`.
            y.par_chunks_exact_mut(rows as usize).enumerate().for_each(|(k, y_row)| {
                for (&start, part) in tiles.iter().zip(&parts) {
                    let n = part.len() / t.max(1);
                    y_row[start as usize..start as usize + n].copy_from_slice(&part[k * n..(k + 1) * n]);
                }
            });
        }
        if let Some(memo) = &self.memo {
            memo.record(name, first, rows, x, &y);
        }
        Ok(y)
    }
}
