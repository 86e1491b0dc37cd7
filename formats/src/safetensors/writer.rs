//! Planned safetensors writing: headers first, then tensor bytes at their offsets from any
//! thread; sharded output with `model.safetensors.index.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorInfo};

use crate::error::{Error, Result};
use crate::output::{OutputFile, PlannedOutput};
use crate::safetensors::reader::{HeaderStyle, SafetensorsFile};

/// A tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensorSpec {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (slowest dimension first).
    pub shape: Vec<usize>,
}

impl StTensorSpec {
    /// Bytes of data, or `None` on overflow or a sub-byte tensor that does not end on a byte.
    pub fn nbytes(&self) -> Option<u64> {
        let elements = self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
        let bits = elements.checked_mul(self.dtype.bitsize() as u64)?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// Where everything goes in a planned safetensors file.
#[derive(Clone, Debug)]
pub struct StLayout {
    /// Header bytes: the u64 length, then the JSON (padded as the style wants).
    pub header: Vec<u8>,
    /// Absolute offset and size of each tensor's data.
    pub spans: Vec<(u64, u64)>,
}

/// Everything that decides a safetensors file's bytes except the tensor data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafetensorsPlan {
    /// `__metadata__` entries in order (`None`: no `__metadata__` key at all).
    pub metadata: Option<Vec<(String, String)>>,
    /// Tensors in data order.
    pub tensors: Vec<StTensorSpec>,
    /// How the header lists them.
    pub style: HeaderStyle,
}

impl SafetensorsPlan {
    /// The plan that reproduces `file`.
    pub fn from_file(file: &SafetensorsFile) -> SafetensorsPlan {
        SafetensorsPlan {
            metadata: file.metadata().map(<[_]>::to_vec),
            style: file.header_style(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| StTensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() })
                .collect(),
        }
    }

    /// Orders tensors as the safetensors crate does (by dtype, widest first, then by name), so
    /// every tensor's data is aligned to its element size.
    pub fn sort_for_alignment(&mut self) {
        self.tensors.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    }

    /// Checks the plan and computes where everything goes.
    pub fn layout(&self) -> Result<StLayout, String> {
        let mut json = serde_json::Map::new();
        if let Some(meta) = &self.metadata {
            let map = meta.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            json.insert("__metadata__".into(), serde_json::Value::Object(map));
        }
        let mut names = HashSet::new();
        let mut spans = Vec::with_capacity(self.tensors.len());
        let mut entries = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            if t.name == "__metadata__" || !names.insert(t.name.as_str()) {
                return Err(format!("tensor name '{}' is used twice or reserved", t.name));
            }
            let size = t.nbytes().ok_or_else(|| format!("tensor '{}' has an impossible size", t.name))?;
            let end = offset + size;
            let data_offsets = (offset as usize, end as usize);
            let info = TensorInfo { dtype: t.dtype, shape: t.shape.clone(), data_offsets };
            let mut entry = serde_json::to_value(info).map_err(|e| e.to_string())?;
            if self.style == HeaderStyle::Mlx
                && let serde_json::Value::Object(fields) = &mut entry
            {
                fields.sort_keys();
            }
            entries.push((t.name.clone(), entry));
            spans.push((offset, size));
            offset = end;
        }
        if self.style == HeaderStyle::Mlx {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        json.extend(entries);
        let mut text = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
        if self.style == HeaderStyle::Safetensors {
            text.resize(text.len().next_multiple_of(8), b' ');
        }
        let mut header = Vec::with_capacity(8 + text.len());
        header.extend((text.len() as u64).to_le_bytes());
        header.extend(text);
        let base = header.len() as u64;
        let spans = spans.into_iter().map(|(o, s)| (base + o, s)).collect();
        Ok(StLayout { header, spans })
    }

    /// Bytes of the file(s) this plan makes: headers and data of every shard when split into
    /// shards of at most `shard_max_bytes` of data ([`SafetensorsPlan::shard`]), as
    /// [`SafetensorsWriter::create`] writes them (the index not counted).
    ///
    /// Errors: as [`SafetensorsPlan::layout`].
    pub fn files_len(&self, shard_max_bytes: Option<u64>) -> Result<u64, String> {
        let shards = match shard_max_bytes {
            Some(max) => self.shard(max),
            None => vec![self.clone()],
        };
        let mut total = 0u64;
        for shard in &shards {
            let StLayout { header, spans } = shard.layout()?;
            total += spans.last().map_or(header.len() as u64, |&(o, s)| o + s);
        }
        Ok(total)
    }

    /// Splits into shards of at most `max_bytes` of data each, in order, as transformers'
    /// `save_pretrained` does (a tensor is never split; a shard holds at least one). Every
    /// shard keeps the metadata.
    pub fn shard(&self, max_bytes: u64) -> Vec<SafetensorsPlan> {
        let empty = SafetensorsPlan { metadata: self.metadata.clone(), tensors: Vec::new(), style: self.style };
        let mut shards = vec![empty.clone()];
        let mut bytes = 0u64;
        for t in &self.tensors {
            let size = t.nbytes().unwrap_or(0);
            if !shards.last().is_some_and(|s| s.tensors.is_empty()) && bytes.saturating_add(size) > max_bytes {
                shards.push(empty.clone());
                bytes = 0;
            }
            bytes = bytes.saturating_add(size);
            if let Some(last) = shards.last_mut() {
                last.tensors.push(t.clone());
            }
        }
        shards
    }
}

/// How the index of a safetensors output is written.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Write `model.safetensors.index.json` even for one file (as mlx-lm does).
    pub always: bool,
    /// `metadata.total_parameters` (mlx-lm and recent transformers write it).
    pub total_parameters: Option<u64>,
}

/// Writes a safetensors output, one file or shards plus index, from a plan. Tensors are
/// addressed by their index in the plan and may be written from many threads.
pub struct SafetensorsWriter {
    out: PlannedOutput,
    index: Option<OutputFile>,
}

impl SafetensorsWriter {
    /// Creates the output for `plan` at `path` (e.g. `dir/model.safetensors`). With
    /// `shard_max_bytes` and more than one shard, writes `dir/model-00001-of-0000N.safetensors`
    /// … and `dir/model.safetensors.index.json` instead.
    pub fn create(path: &Path, plan: &SafetensorsPlan, shard_max_bytes: Option<u64>) -> Result<SafetensorsWriter> {
        Self::create_indexed(path, plan, shard_max_bytes, &IndexOptions::default())
    }

    /// [`SafetensorsWriter::create`], with the index written as `index` says.
    pub fn create_indexed(
        path: &Path,
        plan: &SafetensorsPlan,
        shard_max_bytes: Option<u64>,
        index: &IndexOptions,
    ) -> Result<SafetensorsWriter> {
        let options = index;
        let shards = match shard_max_bytes {
            Some(max) => plan.shard(max),
            None => vec![plan.clone()],
        };
        let count = shards.len();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut out = PlannedOutput::new();
        let mut weight_map = serde_json::Map::new();
        let mut total_size = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            let shard_path: PathBuf = if count == 1 {
                path.to_path_buf()
            } else {
                path.with_file_name(format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1))
            };
            let StLayout { header, spans } = shard.layout().map_err(|m| Error::plan(&shard_path, m))?;
            let len = spans.last().map_or(header.len() as u64, |&(o, s)| o + s);
            let file = out.add_file(&shard_path, len, &header)?;
            let file_name = shard_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for (t, &(offset, size)) in shard.tensors.iter().zip(&spans) {
                out.add_tensor(file, &t.name, offset, size);
                weight_map.insert(t.name.clone(), serde_json::Value::String(file_name.clone()));
                total_size += size;
            }
        }
        let index = if count > 1 || options.always {
            weight_map.sort_keys();
            let mut metadata = serde_json::json!({ "total_size": total_size });
            if let Some(n) = options.total_parameters {
                metadata["total_parameters"] = n.into();
            }
            let json = serde_json::json!({ "metadata": metadata, "weight_map": weight_map });
            let mut text = serde_json::to_vec_pretty(&json).map_err(|e| Error::plan(path, e.to_string()))?;
            text.push(b'\n');
            let index_path = path.with_file_name(format!("{stem}.safetensors.index.json"));
            Some(OutputFile::with_bytes(&index_path, &text)?)
        } else {
            None
        };
        Ok(SafetensorsWriter { out, index })
    }

    /// The output files' final paths (shards, then the index if any).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = self.out.paths();
        paths.extend(self.index.iter().map(|f| f.path().to_path_buf()));
        paths
    }

    /// Writes all of tensor `index`'s data.
    pub fn write_tensor(&self, index: usize, data: &[u8]) -> Result<()> {
        self.out.write_tensor(index, data)
    }

    /// Writes `data` at byte `offset` inside tensor `index`.
    pub fn write_tensor_part(&self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        self.out.write_tensor_part(index, offset, data)
    }

    /// Checks that every tensor was written in full, then syncs and renames everything into
    /// place.
    pub fn finish(self) -> Result<()> {
        self.out.finish(self.index)
    }
}
