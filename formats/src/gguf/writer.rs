//! Planned GGUF writing: the whole layout is fixed first (names, types, shapes, metadata,
//! offsets), the header is written, then tensor bytes are written at their offsets, from any
//! number of threads, in any order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufHeader, MAX_DIMS, MAX_NAME_LEN, pad};
use crate::gguf::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT, shard_path};
use crate::gguf::types::GgmlType;
use crate::gguf::value::{Value, encode_str};
use crate::output::PlannedOutput;

/// A tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Its name (< 64 bytes).
    pub name: String,
    /// Dimensions, fastest-varying first.
    pub ne: Vec<u64>,
    /// Its ggml type.
    pub ggml_type: GgmlType,
}

/// Everything that decides a GGUF file's bytes except the tensor data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufPlan {
    /// Metadata in the order to write it.
    pub metadata: Vec<(String, Value)>,
    /// Tensors in the order to write them.
    pub tensors: Vec<TensorSpec>,
}

/// Where everything goes in a planned file.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Header bytes: magic through tensor infos, padded to the alignment.
    pub header: Vec<u8>,
    /// Absolute file offset of each tensor's data.
    pub offsets: Vec<u64>,
    /// Byte size of each tensor's data.
    pub sizes: Vec<u64>,
    /// Total file length, including padding after the last tensor.
    pub file_len: u64,
}

impl GgufPlan {
    /// The plan that reproduces a file with this header.
    pub fn from_header(header: &GgufHeader) -> GgufPlan {
        GgufPlan {
            metadata: header.metadata.clone(),
            tensors: header
                .tensors
                .iter()
                .map(|t| TensorSpec { name: t.name.clone(), ne: t.ne.clone(), ggml_type: t.ggml_type })
                .collect(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, in place when present, else at the end.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// Checks the plan against llama.cpp's reader rules and computes the layout.
    pub fn layout(&self) -> Result<Layout, String> {
        let alignment = match self.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(format!("general.alignment must be a UINT32 power of two, found {v}"));
            }
        };
        let mut header = Vec::new();
        header.extend(GGUF_MAGIC);
        header.extend(3u32.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        let mut keys = HashSet::new();
        for (key, value) in &self.metadata {
            if key.is_empty() {
                return Err("a metadata key is empty".into());
            }
            if !keys.insert(key.as_str()) {
                return Err(format!("duplicate metadata key '{key}'"));
            }
            if let Value::Array(a) = value
                && a.elem_type() == crate::gguf::value::ValueType::Array
            {
                return Err(format!("key '{key}' holds a nested array"));
            }
            encode_str(key, &mut header);
            value.encode(&mut header);
        }
        let mut names = HashSet::new();
        let mut sizes = Vec::with_capacity(self.tensors.len());
        let mut relative = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            if t.name.len() as u64 >= MAX_NAME_LEN {
                return Err(format!("tensor name '{}' is {} bytes; ggml allows at most 63", t.name, t.name.len()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("duplicate tensor name '{}'", t.name));
            }
            if t.ne.len() > MAX_DIMS as usize {
                return Err(format!("tensor '{}' has {} dimensions; ggml allows at most 4", t.name, t.ne.len()));
            }
            let nbytes = t.ggml_type.tensor_bytes(&t.ne).ok_or_else(|| {
                format!(
                    "tensor '{}' of type {} has shape {:?}: rows must be a multiple of {} elements",
                    t.name,
                    t.ggml_type,
                    t.ne,
                    t.ggml_type.block_size()
                )
            })?;
            encode_str(&t.name, &mut header);
            header.extend((t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| header.extend(d.to_le_bytes()));
            header.extend(t.ggml_type.id().to_le_bytes());
            header.extend(offset.to_le_bytes());
            relative.push(offset);
            sizes.push(nbytes);
            offset = offset
                .checked_add(nbytes)
                .map(|end| pad(end, alignment))
                .ok_or_else(|| format!("tensor '{}' overflows the file size", t.name))?;
        }
        if !self.tensors.is_empty() {
            header.resize(pad(header.len() as u64, alignment) as usize, 0);
        }
        let data_offset = header.len() as u64;
        Ok(Layout {
            offsets: relative.iter().map(|o| o + data_offset).collect(),
            sizes,
            file_len: data_offset + offset,
            header,
        })
    }

    /// Splits the plan into shards of at most `max_bytes` of tensor data each, as gguf-py's
    /// `--split-max-size` does: a shard takes tensors until the next would push its data past
    /// the limit (a tensor is never split; a shard always holds at least one). With more than
    /// one shard, the first carries the metadata plus `split.no`, `split.count` and
    /// `split.tensors.count`, the others only those three keys. Existing `split.*` keys are
    /// replaced.
    pub fn split(&self, max_bytes: u64) -> Vec<GgufPlan> {
        let mut groups: Vec<Vec<TensorSpec>> = vec![Vec::new()];
        let mut group_bytes = 0u64;
        for t in &self.tensors {
            let nbytes = t.ggml_type.tensor_bytes(&t.ne).unwrap_or(0);
            let current = groups.last_mut().expect("groups is never empty");
            if !current.is_empty() && group_bytes.saturating_add(nbytes) > max_bytes {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes = group_bytes.saturating_add(nbytes);
            groups.last_mut().expect("groups is never empty").push(t.clone());
        }
        self.shards(groups)
    }

    /// Splits the plan into shards holding `counts[i]` tensors each, in order (as
    /// llama-quantize's `--keep-split` keeps a split input's shards), with the same `split.*`
    /// keys as [`GgufPlan::split`]. `None` when the counts do not add up to the tensors.
    pub fn split_by_counts(&self, counts: &[usize]) -> Option<Vec<GgufPlan>> {
        if counts.iter().sum::<usize>() != self.tensors.len() || counts.contains(&0) {
            return None;
        }
        let mut rest = self.tensors.as_slice();
        let groups = counts
            .iter()
            .map(|&n| {
                let (group, tail) = rest.split_at(n);
                rest = tail;
                group.to_vec()
            })
            .collect();
        Some(self.shards(groups))
    }

    /// One plan per group of tensors: the first with the metadata, all with `split.*` keys
    /// (none when there is one group).
    fn shards(&self, groups: Vec<Vec<TensorSpec>>) -> Vec<GgufPlan> {
        let mut base = self.clone();
        for key in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
            base.remove(key);
        }
        if groups.len() == 1 {
            return vec![base];
        }
        let count = groups.len();
        groups
            .into_iter()
            .enumerate()
            .map(|(i, tensors)| {
                let mut metadata = if i == 0 { base.metadata.clone() } else { Vec::new() };
                metadata.push((KEY_SPLIT_NO.into(), Value::U16(i as u16)));
                metadata.push((KEY_SPLIT_COUNT.into(), Value::U16(count as u16)));
                metadata.push((KEY_SPLIT_TENSORS_COUNT.into(), Value::I32(self.tensors.len() as i32)));
                GgufPlan { metadata, tensors }
            })
            .collect()
    }
}

/// Writes one GGUF output, a single file or shards, from a plan. Tensor data is written with
/// positional writes, so [`GgufWriter::write_tensor`] may be called from many threads.
/// Nothing appears at the output path(s) until [`GgufWriter::finish`] succeeds.
pub struct GgufWriter {
    out: PlannedOutput,
}

impl GgufWriter {
    /// Creates the output for `plan` at `path`, split into shards of at most
    /// `split_max_bytes` of tensor data when given (`path` names the unsplit file; shards are
    /// named `stem-00001-of-0000N.gguf` beside it). A split output replaces the set of its
    /// stem: when it is committed, the shards of an earlier split (`stem-*-of-*.gguf` that are
    /// GGUF splits, of another count) are removed. Each file is created when first written.
    pub fn create(path: &Path, plan: &GgufPlan, split_max_bytes: Option<u64>) -> Result<GgufWriter> {
        let plans = match split_max_bytes {
            Some(max) => plan.split(max),
            None => vec![plan.clone()],
        };
        Self::from_plans(path, &plans, split_max_bytes.is_some())
    }

    /// Creates a split output for plans already split into shards (see
    /// [`GgufPlan::split_by_counts`]), named as [`GgufWriter::create`] names them (one plan is
    /// written at `path` itself). Like any split output it replaces the set of its stem when
    /// committed, and each file is created when first written.
    pub fn create_shards(path: &Path, plans: &[GgufPlan]) -> Result<GgufWriter> {
        Self::from_plans(path, plans, true)
    }

    fn from_plans(path: &Path, plans: &[GgufPlan], split: bool) -> Result<GgufWriter> {
        let count = plans.len();
        let mut out = PlannedOutput::new();
        if split {
            out.replace_set(path);
        }
        for (i, shard) in plans.iter().enumerate() {
            let shard_path: PathBuf = if count == 1 { path.to_path_buf() } else { shard_path(path, i, count) };
            crate::target::check_name_length(&shard_path)?;
            let layout = shard.layout().map_err(|m| Error::plan(&shard_path, m))?;
            let file = out.add_file(&shard_path, layout.file_len, &layout.header)?;
            for (t, (&offset, &size)) in shard.tensors.iter().zip(layout.offsets.iter().zip(&layout.sizes)) {
                out.add_tensor(file, &t.name, offset, size);
            }
        }
        Ok(GgufWriter { out })
    }

    /// The output files' final paths (one, or the shards in order).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.out.paths()
    }

    /// Byte size of tensor `index` (in plan order).
    pub fn tensor_size(&self, index: usize) -> u64 {
        self.out.tensor_size(index)
    }

    /// Writes all of tensor `index`'s data.
    pub fn write_tensor(&self, index: usize, data: &[u8]) -> Result<()> {
        self.out.write_tensor(index, data)
    }

    /// Writes `data` at byte `offset` inside tensor `index` (for tensors produced piecewise,
    /// such as one expert at a time).
    pub fn write_tensor_part(&self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.out.write_tensor_part(index, offset, data)
    }

    /// Checks that every tensor was written in full and that no input changed, then syncs
    /// and moves every file into place (and removes the old set a split output replaces).
    pub fn finish(self) -> Result<()> {
        self.out.finish(None)
    }
}
