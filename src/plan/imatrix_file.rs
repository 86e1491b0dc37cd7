//! Importance matrix files (`--imatrix`), in both formats llama.cpp writes, and the
//! per-column weights llama-quantize makes of them.
//!
//! - GGUF (`llama-imatrix`'s default since 2025): for each weight `NAME` a tensor
//!   `NAME.in_sum2` [ne0, n_mat] (F32: the sum of squared activations per input column, per
//!   expert for stacked experts) and `NAME.counts` [1, n_mat] (F32: the tokens each matrix
//!   saw), with the keys `imatrix.datasets` (array of strings), `imatrix.chunk_count` and
//!   `imatrix.chunk_size` (UINT32). Read as `common/imatrix-loader.cpp` reads it (counts
//!   rounded to integers); weights are `in_sum2 / count` per matrix, and 1 for every column
//!   of a matrix that saw no token (`tools/quantize/quantize.cpp`, `load_imatrix`).
//! - Legacy `.dat`: an int32 entry count, then per entry an int32 name length, the name, an
//!   int32 call count `ncall`, an int32 value count and the values (already averaged and
//!   multiplied by `ncall`); optionally an int32 chunk count and an int32-length dataset
//!   name. Weights are `value / ncall` (the values as they are when `ncall` is 0).
//!
//! The file is memory-mapped and every size is checked before use; values are read when
//! weights are asked for, so the whole matrix is never held in memory. Refused with the
//! file, entry and problem named: truncated files, impossible sizes, entries whose values do
//! not split into their counts, NaN, infinite or negative values or counts, duplicate names,
//! a GGUF without the imatrix keys (a model, say).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::FileBytes;
use moeq_formats::gguf::{Array, GgmlType, GgufHeader, Value};

/// Which of llama.cpp's two formats a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImatrixFormat {
    /// GGUF with `*.in_sum2` / `*.counts` tensors.
    Gguf,
    /// The legacy binary `.dat` format.
    Legacy,
}

/// One weight's statistics.
#[derive(Clone, Debug)]
pub struct ImatrixEntry {
    /// The weight tensor's name (`blk.0.ffn_down_exps.weight`).
    pub name: String,
    /// Number of values (`ne0 · n_mat`).
    pub n_values: usize,
    /// GGUF: tokens per matrix (one per expert for stacked experts); legacy: `[ncall]`.
    pub counts: Vec<i64>,
    /// Absolute file offset of the first value (little-endian f32s).
    values_at: usize,
}

impl ImatrixEntry {
    /// Number of matrices with their own count (experts); 1 for a legacy entry.
    pub fn n_mat(&self) -> usize {
        self.counts.len()
    }
}

/// An importance matrix file.
pub struct ImatrixFile {
    path: PathBuf,
    bytes: FileBytes,
    /// The format it was read in.
    pub format: ImatrixFormat,
    /// The entries, by name.
    entries: Vec<ImatrixEntry>,
    /// `imatrix.datasets` (GGUF) or the trailing dataset name (legacy).
    pub datasets: Vec<String>,
    /// `imatrix.chunk_count` (GGUF) or the trailing chunk count (legacy; 0 when absent).
    pub chunk_count: i64,
    /// `imatrix.chunk_size` (GGUF; 0 for legacy files): tokens per chunk.
    pub chunk_size: u32,
}

impl ImatrixFile {
    /// Reads `path` (GGUF when it starts with the GGUF magic, else legacy).
    pub fn open(path: &Path) -> Result<ImatrixFile> {
        let bytes = FileBytes::map(path)?;
        let mut file = ImatrixFile {
            path: path.to_path_buf(),
            bytes,
            format: ImatrixFormat::Legacy,
            entries: Vec::new(),
            datasets: Vec::new(),
            chunk_count: 0,
            chunk_size: 0,
        };
        let what = |e: anyhow::Error| e.context(format!("{}: importance matrix", path.display()));
        if file.bytes.starts_with(b"GGUF") {
            file.format = ImatrixFormat::Gguf;
            file.read_gguf().map_err(what)?;
        } else {
            file.read_legacy().map_err(what)?;
        }
        file.check_values().map_err(what)?;
        file.entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(file)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[ImatrixEntry] {
        &self.entries
    }

    /// The entry for weight `name`.
    pub fn find(&self, name: &str) -> Option<&ImatrixEntry> {
        self.position(name).map(|i| &self.entries[i])
    }

    /// The index in [`ImatrixFile::entries`] of the entry for weight `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.entries.binary_search_by(|e| e.name.as_str().cmp(name)).ok()
    }

    /// Keeps the entries llama-quantize's `prepare_imatrix` keeps: without those whose name
    /// contains an `exclude` string, then (when `include` is not empty) only those whose
    /// name contains an `include` string.
    pub fn retain(&mut self, include: &[String], exclude: &[String]) {
        self.entries.retain(|e| !exclude.iter().any(|x| e.name.contains(x.as_str())));
        if !include.is_empty() {
            self.entries.retain(|e| include.iter().any(|x| e.name.contains(x.as_str())));
        }
    }

    /// llama-quantize's importance weights of matrix `mat` (an expert; 0 for a plain weight)
    /// of `entry`, `out.len()` columns: GGUF `in_sum2 / count` (1 where the matrix saw no
    /// token), legacy `value / ncall`. The caller has checked that `entry` holds
    /// `out.len() · (mat + 1)` values or more.
    pub fn weights(&self, entry: &ImatrixEntry, mat: usize, out: &mut [f32]) {
        let ne0 = out.len();
        let start = entry.values_at + mat * ne0 * 4;
        let values = &self.bytes[start..start + ne0 * 4];
        let value =
            |i: usize| f32::from_le_bytes([values[4 * i], values[4 * i + 1], values[4 * i + 2], values[4 * i + 3]]);
        match self.format {
            ImatrixFormat::Gguf => {
                // One count per `n_values / n_mat` values, as the loader splits them.
                let per = entry.n_values / entry.n_mat().max(1);
                for (i, w) in out.iter_mut().enumerate() {
                    let count = entry.counts[(mat * ne0 + i) / per.max(1)] as f32;
                    *w = if count > 0.0 { value(i) / count } else { 1.0 };
                }
            }
            ImatrixFormat::Legacy => {
                let ncall = entry.counts[0];
                for (i, w) in out.iter_mut().enumerate() {
                    *w = if ncall > 0 { value(i) / ncall as f32 } else { value(i) };
                }
            }
        }
    }

    fn read_gguf(&mut self) -> Result<()> {
        let header = GgufHeader::parse(&self.bytes).map_err(|e| anyhow::anyhow!("invalid GGUF: {e}"))?;
        let keys = ["imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"];
        let missing: Vec<&str> = keys.iter().copied().filter(|k| header.get(k).is_none()).collect();
        if !missing.is_empty() {
            let kind = header.get("general.type").and_then(Value::as_str).unwrap_or("unknown");
            bail!(
                "a GGUF file (general.type '{kind}'), but not an importance matrix: it lacks {} \
                 (llama-imatrix writes all three)",
                missing.join(", ")
            );
        }
        if header.tensors.is_empty() {
            bail!("no data: the file holds no tensors");
        }
        if let Some(Value::Array(Array::String(names))) = header.get("imatrix.datasets") {
            self.datasets = names.clone();
        }
        let u32_key = |key: &str| match header.get(key) {
            Some(Value::U32(v)) => Ok(*v),
            Some(other) => bail!("key '{key}' must be UINT32, found {}", other.type_label()),
            None => Ok(0),
        };
        self.chunk_count = i64::from(u32_key("imatrix.chunk_count")?);
        self.chunk_size = u32_key("imatrix.chunk_size")?;
        let mut pairs: std::collections::BTreeMap<&str, (Option<usize>, Option<usize>)> = Default::default();
        for (i, t) in header.tensors.iter().enumerate() {
            if let Some(name) = t.name.strip_suffix(".in_sum2") {
                pairs.entry(name).or_default().0 = Some(i);
            } else if let Some(name) = t.name.strip_suffix(".counts") {
                pairs.entry(name).or_default().1 = Some(i);
            }
        }
        if pairs.is_empty() {
            bail!("no '*.in_sum2' / '*.counts' tensors: not an importance matrix");
        }
        for (name, pair) in pairs {
            let (Some(si), Some(ci)) = pair else {
                let has = if pair.0.is_some() { "in_sum2 but no counts" } else { "counts but no in_sum2" };
                bail!("entry '{name}': {has}");
            };
            let (sums, counts) = (&header.tensors[si], &header.tensors[ci]);
            if sums.ggml_type != GgmlType::F32 || counts.ggml_type != GgmlType::F32 {
                bail!(
                    "entry '{name}': in_sum2 and counts must be F32, found {} and {}",
                    sums.ggml_type,
                    counts.ggml_type
                );
            }
            let n_values = sums.n_elements() as usize;
            let n_mat = counts.n_elements() as usize;
            if n_mat == 0 || n_values == 0 {
                bail!("entry '{name}': {n_values} values with {n_mat} counts (empty)");
            }
            if !n_values.is_multiple_of(n_mat) {
                bail!("entry '{name}': {n_values} values do not split into {n_mat} matrices (one count each)");
            }
            if sums.ne.get(1).copied().unwrap_or(1) as usize != n_mat && sums.ne.len() > 1 {
                bail!("entry '{name}': in_sum2 has shape {:?} but there are {n_mat} counts", sums.ne);
            }
            let at = (header.data_offset + counts.offset) as usize;
            let mut counted = Vec::with_capacity(n_mat);
            for (j, c) in self.bytes[at..at + 4 * n_mat].chunks_exact(4).enumerate() {
                let c = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if !c.is_finite() || c < 0.0 {
                    bail!("entry '{name}': count {j} is {c}; token counts are finite and not negative");
                }
                // std::lround: to nearest, halves away from zero.
                counted.push(c.round() as i64);
            }
            let values_at = (header.data_offset + sums.offset) as usize;
            self.entries.push(ImatrixEntry { name: name.to_string(), n_values, counts: counted, values_at });
        }
        Ok(())
    }

    fn read_legacy(&mut self) -> Result<()> {
        let len = self.bytes.len();
        let mut pos = 0usize;
        let bytes = &self.bytes;
        let read_i32 = |pos: &mut usize, what: &dyn Fn() -> String| -> Result<i32> {
            let Some(b) = bytes.get(*pos..*pos + 4) else {
                bail!("the file ends inside {} (byte {} of {len})", what(), *pos);
            };
            *pos += 4;
            Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let n_entries = read_i32(&mut pos, &|| "the entry count".into())
            .context("neither GGUF nor llama.cpp's legacy imatrix format")?;
        if n_entries < 1 {
            bail!("not an importance matrix (neither GGUF nor the legacy format): entry count {n_entries}");
        }
        // Each entry takes at least 16 bytes.
        if n_entries as usize > len / 16 {
            bail!(
                "not an importance matrix (neither GGUF nor the legacy format): {n_entries} entries cannot fit in {len} bytes"
            );
        }
        let mut seen = HashSet::new();
        for i in 0..n_entries as usize {
            let n = i + 1;
            let name_len = read_i32(&mut pos, &|| format!("the name length of entry {n}"))?;
            if name_len < 0 || name_len as usize > len - pos {
                bail!(
                    "entry {n}: name length {name_len} is impossible (byte {pos} of {len}; truncated or not an importance matrix)"
                );
            }
            let name_bytes = &bytes[pos..pos + name_len as usize];
            pos += name_len as usize;
            let Ok(name) = std::str::from_utf8(name_bytes) else {
                bail!("entry {n}: the name is not UTF-8 text");
            };
            if name.is_empty() || name.contains('\0') {
                bail!("entry {n}: the name {name:?} is empty or holds a NUL byte");
            }
            let ncall = read_i32(&mut pos, &|| format!("the call count of entry {n} ('{name}')"))?;
            let nval = read_i32(&mut pos, &|| format!("the value count of entry {n} ('{name}')"))?;
            if ncall < 0 {
                bail!("entry '{name}': call count {ncall} is negative");
            }
            if nval < 1 {
                bail!("entry '{name}': value count {nval}; an entry holds at least one value");
            }
            let need = nval as usize * 4;
            if need > len - pos {
                bail!(
                    "entry '{name}': the file ends inside its {nval} values (needs {need} bytes at {pos}, has {})",
                    len - pos
                );
            }
            if !seen.insert(name.to_string()) {
                bail!("entry '{name}' appears twice");
            }
            self.entries.push(ImatrixEntry {
                name: name.to_string(),
                n_values: nval as usize,
                counts: vec![i64::from(ncall)],
                values_at: pos,
            });
            pos += need;
        }
        // Optional trailer: the chunk count, then the dataset name.
        if pos < len {
            self.chunk_count = i64::from(read_i32(&mut pos, &|| "the chunk count".into())?);
            if pos < len {
                let n = read_i32(&mut pos, &|| "the dataset name length".into())?;
                if n < 0 || n as usize > len - pos {
                    bail!("the dataset name length {n} is impossible (byte {pos} of {len})");
                }
                let name = std::str::from_utf8(&bytes[pos..pos + n as usize])
                    .map_err(|_| anyhow::anyhow!("the dataset name is not UTF-8 text"))?;
                if n > 0 {
                    self.datasets.push(name.trim_end_matches('\0').to_string());
                }
                pos += n as usize;
                if pos != len {
                    bail!("{} unexpected bytes after the dataset name", len - pos);
                }
            }
        }
        Ok(())
    }

    /// Refuses NaN, infinite and negative values (squared activations are never negative).
    fn check_values(&self) -> Result<()> {
        for e in &self.entries {
            let bytes = &self.bytes[e.values_at..e.values_at + 4 * e.n_values];
            let bad = bytes.chunks_exact(4).position(|b| {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                !v.is_finite() || v < 0.0
            });
            if let Some(i) = bad {
                let b = &bytes[4 * i..4 * i + 4];
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let per = e.n_values / e.n_mat().max(1);
                let place =
                    if e.n_mat() > 1 { format!("matrix {} column {}", i / per, i % per) } else { format!("value {i}") };
                bail!("entry '{}': {place} is {v}; importance values must be finite and not negative", e.name);
            }
            self.bytes.release(e.values_at, 4 * e.n_values);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
