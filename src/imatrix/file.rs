//! Importance matrix files as llama-imatrix writes them (tools/imatrix/imatrix.cpp,
//! `save_imatrix` and `save_imatrix_legacy`), through moeq's writers (a temporary file renamed
//! into place when complete).
//!
//! GGUF: `general.type = "imatrix"`, `imatrix.datasets` (string array), `imatrix.chunk_count`
//! and `imatrix.chunk_size` (u32), then per weight, in name order, `NAME.in_sum2` (F32,
//! `[cols, matrices]`) and `NAME.counts` (F32, `[1, matrices]`), trailing dimensions of 1
//! dropped as ggml writes them. Every entry is stored, also experts without data (count 0).
//!
//! Legacy `.dat`: entry count (i32); per entry with data, in name order: name length and bytes,
//! `ncall = ⌈max count / chunk_size⌉`, value count, then each value as `sum / count · ncall`
//! (f32; a matrix without data stores 1 · ncall); then the chunk count and the dataset name.
//! Entries without any data are left out (llama-imatrix warns and skips them).

use std::path::Path;

use anyhow::{Result, bail};
use moeq_formats::gguf::{Array, GgmlType, GgufPlan, GgufWriter, TensorSpec, Value};
use moeq_formats::output::OutputFile;

use super::collect::Entry;

/// An importance matrix with what it was computed on.
#[derive(Clone, Debug)]
pub struct Imatrix {
    /// Entries in name order.
    pub entries: Vec<Entry>,
    /// The calibration inputs (file names as given).
    pub datasets: Vec<String>,
    /// Chunks computed.
    pub chunk_count: u32,
    /// Tokens per chunk.
    pub chunk_size: u32,
    /// Every expert was given every token's activations (`--all-experts`), recorded as
    /// `moeq.imatrix.all_experts` in the GGUF.
    pub all_experts: bool,
}

/// The metadata key `--all-experts` adds (llama.cpp's readers ignore keys they do not know).
pub const KEY_ALL_EXPERTS: &str = "moeq.imatrix.all_experts";

/// ggml's dimensions of a 2-D tensor, trailing 1s dropped (gguf writes `ggml_n_dims`).
fn dims(a: u64, b: u64) -> Vec<u64> {
    if b == 1 { vec![a] } else { vec![a, b] }
}

fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(f32::to_le_bytes).collect()
}

/// Writes `m` in llama.cpp's GGUF imatrix format to `path`.
pub fn write_gguf(m: &Imatrix, path: &Path) -> Result<()> {
    let mut plan = GgufPlan::default();
    plan.set("general.type", Value::String("imatrix".into()));
    plan.set("imatrix.datasets", Value::Array(Array::String(m.datasets.clone())));
    plan.set("imatrix.chunk_count", Value::U32(m.chunk_count));
    plan.set("imatrix.chunk_size", Value::U32(m.chunk_size));
    if m.all_experts {
        plan.set(KEY_ALL_EXPERTS, Value::Bool(true));
    }
    for e in &m.entries {
        let mats = e.counts.len() as u64;
        plan.tensors.push(TensorSpec {
            name: format!("{}.in_sum2", e.name),
            ne: dims(e.cols as u64, mats),
            ggml_type: GgmlType::F32,
        });
        plan.tensors.push(TensorSpec {
            name: format!("{}.counts", e.name),
            ne: dims(1, mats),
            ggml_type: GgmlType::F32,
        });
    }
    let writer = GgufWriter::create(path, &plan, None)?;
    for (i, e) in m.entries.iter().enumerate() {
        writer.write_tensor(2 * i, &f32_bytes(e.sums.iter().copied()))?;
        writer.write_tensor(2 * i + 1, &f32_bytes(e.counts.iter().map(|&c| c as f32)))?;
    }
    writer.finish()?;
    Ok(())
}

/// The legacy `.dat` bytes of `m` (see the module documentation).
pub fn dat_bytes(m: &Imatrix) -> Result<Vec<u8>> {
    let chunk_size = i64::from(m.chunk_size.max(1));
    let stored: Vec<&Entry> = m.entries.iter().filter(|e| e.counts.iter().any(|&c| c > 0)).collect();
    let i32_of =
        |v: usize, what: &str| i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} ({v}) exceeds the .dat format"));
    let mut out = Vec::new();
    out.extend(i32_of(stored.len(), "entry count")?.to_le_bytes());
    for e in stored {
        out.extend(i32_of(e.name.len(), "name length")?.to_le_bytes());
        out.extend(e.name.as_bytes());
        let max = e.counts.iter().copied().max().unwrap_or(0) as i64;
        let ncall = i32::try_from((max + chunk_size - 1) / chunk_size)
            .map_err(|_| anyhow::anyhow!("{}: {max} tokens exceed the .dat format", e.name))?;
        out.extend(ncall.to_le_bytes());
        out.extend(i32_of(e.sums.len(), "value count")?.to_le_bytes());
        for (mat, sums) in e.sums.chunks_exact(e.cols.max(1)).enumerate() {
            let count = e.counts[mat] as f32;
            for &s in sums {
                let (value, count) = if count == 0.0 { (1.0f32, 1.0f32) } else { (s, count) };
                out.extend(((value / count) * ncall as f32).to_le_bytes());
            }
        }
    }
    out.extend(i32_of(m.chunk_count as usize, "chunk count")?.to_le_bytes());
    let dataset = m.datasets.last().map(String::as_str).unwrap_or("");
    out.extend(i32_of(dataset.len(), "dataset name length")?.to_le_bytes());
    out.extend(dataset.as_bytes());
    Ok(out)
}

/// Writes `m` in llama.cpp's legacy `.dat` format to `path`.
pub fn write_dat(m: &Imatrix, path: &Path) -> Result<()> {
    if m.entries.iter().all(|e| e.counts.iter().all(|&c| c == 0)) {
        bail!("{}: no weight received any data; nothing to write", path.display());
    }
    let bytes = dat_bytes(m)?;
    OutputFile::with_bytes(path, &bytes)?.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, cols: usize, sums: &[f32], counts: &[u64]) -> Entry {
        Entry { name: name.into(), cols, sums: sums.to_vec(), counts: counts.to_vec() }
    }

    #[test]
    fn dat_stores_means_times_calls_and_skips_entries_without_data() {
        let m = Imatrix {
            entries: vec![
                entry("a.weight", 2, &[10.0, 20.0, 3.0, 5.0], &[0, 10]),
                entry("b.weight", 1, &[0.0, 0.0], &[0, 0]),
            ],
            datasets: vec!["calib.txt".into()],
            chunk_count: 3,
            chunk_size: 4,
            all_experts: false,
        };
        let b = dat_bytes(&m).unwrap();
        let i32_at = |at: usize| i32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let f32_at = |at: usize| f32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(i32_at(0), 1, "b has no data: left out");
        assert_eq!((i32_at(4), &b[8..16]), (8, &b"a.weight"[..]));
        // ncall = ⌈10 / 4⌉ = 3; expert 0 without data stores 1 · ncall; expert 1 sum / count · ncall.
        assert_eq!((i32_at(16), i32_at(20)), (3, 4));
        let values: Vec<f32> = (0..4).map(|i| f32_at(24 + 4 * i)).collect();
        assert_eq!(values, [3.0, 3.0, 3.0 / 10.0 * 3.0, 5.0 / 10.0 * 3.0]);
        assert_eq!((i32_at(40), i32_at(44), &b[48..]), (3, 9, &b"calib.txt"[..]));
    }

    #[test]
    fn gguf_entries_keep_experts_without_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let m = Imatrix {
            entries: vec![entry("blk.0.ffn_up_exps.weight", 2, &[1.0, 2.0, 0.0, 0.0], &[3, 0])],
            datasets: vec!["x".into()],
            chunk_count: 1,
            chunk_size: 3,
            all_experts: true,
        };
        write_gguf(&m, &path).unwrap();
        let file = moeq_formats::gguf::GgufFile::open(&path).unwrap();
        let h = file.header();
        let names: Vec<(&str, &[u64])> = h.tensors.iter().map(|t| (t.name.as_str(), t.ne.as_slice())).collect();
        assert_eq!(
            names,
            [("blk.0.ffn_up_exps.weight.in_sum2", &[2u64, 2][..]), ("blk.0.ffn_up_exps.weight.counts", &[1, 2][..])]
        );
        assert_eq!(file.tensor_data(1), [3.0f32, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        assert_eq!(h.get(KEY_ALL_EXPERTS), Some(&Value::Bool(true)));
    }
}
