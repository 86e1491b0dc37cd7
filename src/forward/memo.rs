//! Reuse of a reference run's projections by runs that change little of it: the KL probes of
//! one tensor (`plan::optimize::sensitivity`), which rerun half a layer with one weight
//! replaced. The reference run records each projection's input and output ([`Memo::record`]);
//! a probe's projection then
//! - returns the recorded output when its input and its weight rows are the recorded ones (the
//!   ups of a run probing the gates: bit for bit what computing it gives);
//! - recomputes only the replaced rows when only some rows of the weight differ (a row-sampled
//!   probe);
//! - adds `W[:, C] · (x − x₀)[:, C]` to the recorded output when the input differs from the
//!   recorded one only in some columns `C` (the downs behind row-sampled gates: a quarter of
//!   the multiplications; equal to computing it up to f32 rounding);
//!
//! and computes it in full otherwise (more than half the columns changed, or the whole weight
//! replaced).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;
use moeq_kernels::dot::Tokens;
use rayon::prelude::*;

use super::Model;
use super::linear::multiply_tile;

/// One recorded projection: its input [tokens, cols] and output [tokens, rows].
struct Entry {
    x: Vec<f32>,
    y: Vec<f32>,
}

/// Key of a recorded projection: the caller's scope (a group of calibration chunks), the
/// weight's name, its first row and its row count.
type Key = (usize, String, u64, u64);

/// The recorded projections of a reference run (see the module). Shared by the reference
/// model and the probes' models ([`Model::memo`]).
#[derive(Default)]
pub struct Memo {
    recording: AtomicBool,
    scope: AtomicUsize,
    hits: AtomicUsize,
    entries: Mutex<HashMap<Key, std::sync::Arc<Entry>>>,
}

impl Memo {
    /// Starts (`true`) or stops recording every projection's input and output.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// Sets the scope of the projections that follow (e.g. the index of the group of chunks a
    /// runner is on): the same weight rows in two scopes are two entries.
    pub fn set_scope(&self, scope: usize) {
        self.scope.store(scope, Ordering::SeqCst);
    }

    /// How many projections were had from recorded ones so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Forgets every recorded projection.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn key(&self, name: &str, first: u64, rows: u64) -> Key {
        (self.scope.load(Ordering::SeqCst), name.to_string(), first, rows)
    }

    /// Records `y = x · W[first..first + rows]ᵀ (+ b)` when recording.
    pub(super) fn record(&self, name: &str, first: u64, rows: u64, x: &[f32], y: &[f32]) {
        if !self.recording.load(Ordering::SeqCst) {
            return;
        }
        let entry = std::sync::Arc::new(Entry { x: x.to_vec(), y: y.to_vec() });
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(self.key(name, first, rows), entry);
    }

    /// The projection of `x` [tokens, cols] by rows `first..first + rows` of weight `name` of
    /// `m` (bias `bias`) from the recorded one, when it can be had for less than computing it
    /// (see the module); `None`: compute it.
    ///
    /// Errors: reading the weight's rows fails.
    pub(super) fn reuse(
        &self,
        m: &Model,
        x: &[f32],
        name: &str,
        first: u64,
        rows: u64,
        bias: Option<&[f32]>,
    ) -> Result<Option<Vec<f32>>> {
        if self.recording.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let Some(entry) =
            self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&self.key(name, first, rows)).cloned()
        else {
            return Ok(None);
        };
        let cols = m.w.ne(name)?.first().copied().unwrap_or(1).max(1) as usize;
        if entry.x.len() != x.len() || !x.len().is_multiple_of(cols) {
            return Ok(None);
        }
        let t = x.len() / cols;
        // Columns where any token's input differs from the recorded one (bit for bit).
        let mut changed = vec![false; cols];
        for (a, b) in x.chunks_exact(cols).zip(entry.x.chunks_exact(cols)) {
            for (j, (p, q)) in a.iter().zip(b).enumerate() {
                changed[j] |= p.to_bits() != q.to_bits();
            }
        }
        let changed: Vec<usize> = (0..cols).filter(|&j| changed[j]).collect();
        let replaced = m.w.replaced_within(name, first, rows)?;
        let n_replaced = replaced.as_ref().map_or(0, Vec::len);
        if 2 * changed.len() > cols || n_replaced as u64 == rows {
            return Ok(None);
        }
        let rows_n = rows as usize;
        let mut y = entry.y.clone();
        if !changed.is_empty() {
            // (x − x₀) on the changed columns, [t, |C|].
            let c = changed.len();
            let delta: Vec<f32> = (0..t)
                .flat_map(|k| changed.iter().map(move |&j| (k, j)))
                .map(|(k, j)| x[k * cols + j] - entry.x[k * cols + j])
                .collect();
            let is_replaced = |r: usize| replaced.as_ref().is_some_and(|v| v.binary_search(&(r as u64)).is_ok());
            const TILE: usize = 60;
            let tiles: Vec<usize> = (0..rows_n).step_by(TILE).collect();
            let delta_tokens = Tokens::new(&delta, c);
            let parts: Vec<Vec<f32>> = tiles
                .par_iter()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(tile, gathered): &mut (Vec<f32>, Vec<f32>), &start| -> Result<Vec<f32>> {
                        let n = TILE.min(rows_n - start);
                        m.w.rows_into_held(name, first + start as u64, n as u64, tile)?;
                        gathered.clear();
                        for r in 0..n {
                            let row = &tile[r * cols..(r + 1) * cols];
                            gathered.extend(changed.iter().map(|&j| row[j]));
                        }
                        let mut out = Vec::new();
                        multiply_tile(&delta_tokens, gathered, None, &mut out);
                        // Replaced rows are recomputed below.
                        for r in 0..n {
                            if is_replaced(start + r) {
                                (0..t).for_each(|k| out[k * n + r] = 0.0);
                            }
                        }
                        Ok(out)
                    },
                )
                .collect::<Result<_>>()?;
            y.par_chunks_exact_mut(rows_n).enumerate().for_each(|(k, y_row)| {
                for (&start, part) in tiles.iter().zip(&parts) {
                    let n = part.len() / t.max(1);
                    y_row[start..start + n].iter_mut().zip(&part[k * n..(k + 1) * n]).for_each(|(a, d)| *a += d);
                }
            });
        }
        if let Some(replaced) = replaced.filter(|r| !r.is_empty()) {
            // The replaced rows in full, from the current input.
            let tokens = Tokens::new(x, cols);
            let computed: Vec<(usize, Vec<f32>)> = replaced
                .par_chunks(16)
                .map_init(Vec::new, |row, chunk| -> Result<Vec<(usize, Vec<f32>)>> {
                    let mut out = Vec::with_capacity(chunk.len());
                    for &r in chunk {
                        m.w.rows_into_held(name, first + r, 1, row)?;
                        let mut v = Vec::new();
                        multiply_tile(&tokens, row, bias.map(|b| &b[r as usize..r as usize + 1]), &mut v);
                        out.push((r as usize, v));
                    }
                    Ok(out)
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect();
            for (r, v) in computed {
                for (k, value) in v.into_iter().enumerate() {
                    y[k * rows_n + r] = value;
                }
            }
        }
        m.w.release(name, first, rows)?;
        self.hits.fetch_add(1, Ordering::SeqCst);
        Ok(Some(y))
    }
}
