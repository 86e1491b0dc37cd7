//! What an importance matrix holds, collected during a forward pass: for every weight matrix
//! the sum over tokens of each input column's squared activation (`in_sum2`) and the number of
//! tokens (`counts`); for a stacked expert tensor one row of sums and one count per expert,
//! from the tokens that reached it. This is what llama-imatrix's `collect_imatrix` accumulates
//! (tools/imatrix/imatrix.cpp: `acc[j] += x[j] * x[j]` per token, `counts` per matrix, the
//! experts told apart by `ggml_mul_mat_id`'s ids), for the weights whose names start with
//! `blk.` (and `output.weight` when asked).
//!
//! Sums are kept in f64 while a layer runs and stored as f32 (the file's type) when it ends,
//! so only one layer's f64 sums are ever held; finished layers' sums go to an anonymous
//! scratch file (read back by [`Collector::take_entries`]), so the memory a run holds does not
//! grow with the layers (kept in memory when no scratch file can be made).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use anyhow::{Result, bail};
use moeq_formats::temp::{F32Spill, read_f32_at};
use rayon::prelude::*;

use crate::forward::Probe;
use crate::model::weights::Weights;

/// One weight's statistics, as stored in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The weight's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Input columns (the weight's `ne[0]`).
    pub cols: usize,
    /// `[matrices][cols]`: the sums of squared inputs per column (one matrix, or one per expert).
    pub sums: Vec<f32>,
    /// Tokens per matrix.
    pub counts: Vec<u64>,
}

/// The shape of a collected weight: input columns, rows per matrix, matrices (experts).
#[derive(Clone, Copy, Debug)]
struct Shape {
    cols: usize,
    rows: u64,
    mats: usize,
}

/// Sums of one weight while its layer runs.
struct Acc {
    sums: Vec<f64>,
    counts: Vec<u64>,
}

/// A finished weight's f32 sums: in memory, or `len` values at byte `offset` of the scratch file.
enum Sums {
    Memory(Vec<f32>),
    Spilled { offset: u64, len: usize },
}

/// A finished weight: its columns, counts and where its sums are.
struct Done {
    cols: usize,
    counts: Vec<u64>,
    sums: Sums,
}

/// The probe `moeq imatrix` gives the forward: accumulates every collected weight's inputs.
pub struct Collector {
    shapes: HashMap<String, Shape>,
    current: Mutex<HashMap<String, Acc>>,
    done: Mutex<BTreeMap<String, Done>>,
    /// The scratch file of finished sums.
    spill: Mutex<F32Spill>,
}

impl Collector {
    /// A collector for the weights of `w` an importance matrix covers: every matrix named
    /// `blk.*.weight` with two or more dimensions, plus `output.weight` with `process_output`.
    pub fn new(w: &Weights, process_output: bool) -> Result<Collector> {
        let mut shapes = HashMap::new();
        for name in w.names() {
            let wanted =
                (name.starts_with("blk.") && name.ends_with(".weight")) || (process_output && name == "output.weight");
            let ne = w.ne(name)?;
            if !wanted || ne.len() < 2 {
                continue;
            }
            let mats: u64 = ne[2..].iter().product();
            shapes.insert(name.to_string(), Shape { cols: ne[0] as usize, rows: ne[1].max(1), mats: mats as usize });
        }
        Ok(Collector {
            shapes,
            current: Mutex::new(HashMap::new()),
            done: Mutex::new(BTreeMap::new()),
            spill: Mutex::new(F32Spill::default()),
        })
    }

    /// Ends a layer: its sums become f32 entries. Non-finite sums are an error naming the
    /// tensor (llama-imatrix stops on them too).
    pub fn flush(&self) -> Result<()> {
        let current = std::mem::take(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()));
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        for (name, acc) in current {
            let sums: Vec<f32> = acc.sums.iter().map(|&s| s as f32).collect();
            if let Some(i) = sums.iter().position(|s| !s.is_finite()) {
                let cols = self.shapes[&name].cols;
                bail!(
                    "tensor '{name}': the sum of squared inputs of column {} (matrix {}) is not finite: the model's \
                     activations overflow on this text",
                    i % cols,
                    i / cols
                );
            }
            let cols = self.shapes[&name].cols;
            let sums = self.spill_sums(sums);
            done.insert(name, Done { cols, counts: acc.counts, sums });
        }
        Ok(())
    }

    /// Appends `sums` to the scratch file (made at the first call, in the system's temporary
    /// folder); keeps them in memory when the file cannot be made or written.
    fn spill_sums(&self, sums: Vec<f32>) -> Sums {
        let offset = self.spill.lock().unwrap_or_else(|p| p.into_inner()).append(&sums);
        match offset {
            Some(offset) => Sums::Spilled { offset, len: sums.len() },
            None => Sums::Memory(sums),
        }
    }

    /// Every entry collected so far (flushed layers), sorted by name (as llama-imatrix sorts),
    /// moved out of the collector, which is left empty; spilled sums are read back.
    ///
    /// Errors: the scratch file cannot be read back.
    pub fn take_entries(&self) -> Result<Vec<Entry>> {
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()));
        let spill = self.spill.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(done.len());
        for (name, d) in done {
            let sums = match d.sums {
                Sums::Memory(v) => v,
                Sums::Spilled { offset, len } => {
                    let Some(file) = spill.file() else { bail!("tensor '{name}': its sums were lost") };
                    read_f32_at(file, offset, len).map_err(|e| {
                        anyhow::anyhow!("tensor '{name}': reading its sums back from the scratch file: {e}")
                    })?
                }
            };
            out.push(Entry { name, cols: d.cols, sums, counts: d.counts });
        }
        Ok(out)
    }
}

/// `acc[c] += Σ_rows x[row][c]²` in f64, column blocks in parallel; each column sums its rows
/// in order, so the result does not depend on the thread count.
fn add_squares(x: &[f32], cols: usize, acc: &mut [f64]) {
    const BLOCK: usize = 64;
    acc.par_chunks_mut(BLOCK).enumerate().for_each(|(b, a)| {
        let (c0, n) = (b * BLOCK, a.len());
        for row in x.chunks_exact(cols) {
            for (s, &v) in a.iter_mut().zip(&row[c0..c0 + n]) {
                let v = v as f64;
                *s += v * v;
            }
        }
    });
}

impl Probe for Collector {
    fn input(&self, name: &str, first: u64, _rows: u64, x: &[f32]) {
        let Some(&Shape { cols, rows, mats }) = self.shapes.get(name) else { return };
        // Each matrix's input is counted once: at the call that starts at its first row.
        if cols == 0 || !first.is_multiple_of(rows) {
            return;
        }
        let mat = (first / rows) as usize;
        if mat >= mats {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let acc = current
            .entry(name.to_string())
            .or_insert_with(|| Acc { sums: vec![0.0; cols * mats], counts: vec![0; mats] });
        add_squares(x, cols, &mut acc.sums[mat * cols..(mat + 1) * cols]);
        acc.counts[mat] += (x.len() / cols) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_squares_add_up_in_f64() {
        let x: Vec<f32> = (0..3 * 130).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut acc = vec![1.0f64; 130];
        add_squares(&x, 130, &mut acc);
        for c in 0..130 {
            let want = (0..3).fold(1.0f64, |s, r| s + (x[r * 130 + c] as f64).powi(2));
            assert_eq!(acc[c], want, "column {c}");
        }
    }
}
