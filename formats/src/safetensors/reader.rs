//! Zero-copy safetensors reading: one file, a folder sharded through
//! `model.safetensors.index.json`, or a folder of shards without index (OpenAI's `original/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::{SafeTensorError, SafeTensors};

use crate::error::{Error, Result, SafetensorsError};
use crate::mapped::FileBytes;

/// The index file of a sharded Hugging Face checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (slowest dimension first).
    pub shape: Vec<usize>,
    /// Absolute file offset of its data.
    pub start: usize,
    /// Length of its data in bytes.
    pub len: usize,
}

/// One safetensors file: header parsed, data mapped.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: FileBytes,
    tensors: Vec<StTensor>,
    metadata: Option<Vec<(String, String)>>,
    style: HeaderStyle,
}

/// How a header is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderStyle {
    /// As the safetensors crate (and so Python's safetensors and transformers) writes it:
    /// entries in data order, fields `dtype`, `shape`, `data_offsets`, JSON padded with
    /// spaces to a multiple of 8 bytes.
    #[default]
    Safetensors,
    /// As MLX writes it: entries sorted by name, fields `data_offsets`, `dtype`, `shape`, no
    /// padding.
    Mlx,
}

/// Names the tensor of a header whose shape and dtype do not give the length of its
/// `data_offsets` (or overflow, or end inside a byte), and says why; `None` when the header
/// cannot be read that far or every tensor fits.
fn misfit_tensor(bytes: &[u8]) -> Option<String> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    for (name, entry) in json.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype: Dtype = serde_json::from_value(entry.get("dtype")?.clone()).ok()?;
        let shape: Vec<usize> = serde_json::from_value(entry.get("shape")?.clone()).ok()?;
        let [begin, end]: [usize; 2] = serde_json::from_value(entry.get("data_offsets")?.clone()).ok()?;
        let what = format!("tensor '{name}': shape {shape:?} of {dtype}");
        let Some(bits) =
            shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_mul(dtype.bitsize()))
        else {
            return Some(format!("{what} has more bytes than an address can count"));
        };
        if bits % 8 != 0 {
            return Some(format!("{what} is {bits} bits, not a whole number of bytes"));
        }
        if end.checked_sub(begin) != Some(bits / 8) {
            return Some(format!(
                "{what} is {} bytes, but its data_offsets [{begin}, {end}] hold {}",
                bits / 8,
                end.saturating_sub(begin)
            ));
        }
    }
    None
}

impl SafetensorsFile {
    /// Maps and parses `path` (only the header is read).
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        Self::from_bytes(path, FileBytes::map(path)?)
    }

    /// Parses `bytes`, naming them `path` in errors.
    pub fn from_bytes(path: &Path, bytes: FileBytes) -> Result<SafetensorsFile> {
        let err = |m: String| Error::Safetensors { path: path.to_path_buf(), problem: SafetensorsError::Header(m) };
        let (header_len, parsed) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            // The crate's size errors name no tensor: find it.
            let sizes = matches!(
                e,
                SafeTensorError::TensorInvalidInfo
                    | SafeTensorError::ValidationOverflow
                    | SafeTensorError::MisalignedSlice
            );
            err(sizes.then(|| misfit_tensor(&bytes)).flatten().unwrap_or_else(|| e.to_string()))
        })?;
        let data_start = 8 + header_len;
        // The crate keeps the header in HashMaps; re-read the JSON (already validated by the
        // crate) in file order, so a rewrite can reproduce the header byte for byte.
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..data_start]).map_err(|e| err(e.to_string()))?;
        let mut tensors = Vec::with_capacity(json.len());
        for name in json.keys().filter(|k| *k != "__metadata__") {
            let info = parsed.info(name).ok_or_else(|| err(format!("tensor '{name}' vanished")))?;
            let (begin, end) = info.data_offsets;
            tensors.push(StTensor {
                name: name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + begin,
                len: end - begin,
            });
        }
        // Data order; ties (empty tensors) keep their header order.
        tensors.sort_by_key(|t| t.start);
        let first_field =
            json.iter().find(|(k, _)| *k != "__metadata__").and_then(|(_, v)| v.as_object()?.keys().next());
        let style =
            if first_field.is_some_and(|f| f == "data_offsets") { HeaderStyle::Mlx } else { HeaderStyle::Safetensors };
        let metadata = match json.get("__metadata__") {
            None => None,
            Some(serde_json::Value::Object(map)) => Some(
                map.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().ok_or_else(|| err(format!("__metadata__ '{k}' is not a string")))?;
                        Ok((k.clone(), v.to_string()))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => return Err(err("__metadata__ is not an object".into())),
        };
        Ok(SafetensorsFile { path: path.to_path_buf(), bytes, tensors, metadata, style })
    }

    /// How the header lists its tensors.
    pub fn header_style(&self) -> HeaderStyle {
        self.style
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in data order.
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    /// The `__metadata__` entries in file order (`None` when the header has none).
    pub fn metadata(&self) -> Option<&[(String, String)]> {
        self.metadata.as_deref()
    }

    /// The data of `tensor` (which must come from this file).
    pub fn data(&self, tensor: &StTensor) -> &[u8] {
        self.bytes.get(tensor.start..tensor.start + tensor.len).unwrap_or(&[])
    }

    /// The whole file's bytes (tensor `start`s index into them).
    pub fn file_bytes(&self) -> &FileBytes {
        &self.bytes
    }

    /// Hints that `tensor`'s data will be read soon.
    pub fn prefetch(&self, tensor: &StTensor) {
        self.bytes.will_need(tensor.start, tensor.len);
    }
}

/// A checkpoint in one or more safetensors files, seen as one set of tensors.
pub struct SafetensorsModel {
    path: PathBuf,
    shards: Vec<SafetensorsFile>,
    by_name: HashMap<String, (usize, usize)>,
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, or a folder: through its `model.safetensors.index.json`
    /// when present, else every `*.safetensors` file in it (in name order).
    pub fn open(path: &Path) -> Result<SafetensorsModel> {
        if path.is_file() {
            return Self::from_shards(path, vec![SafetensorsFile::open(path)?], None);
        }
        if !path.is_dir() {
            return Err(Error::model(path, "no such file or folder"));
        }
        let index_path = path.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_indexed(path, &index_path);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
            .collect();
        if files.is_empty() {
            return Err(Error::model(path, "the folder holds no *.safetensors files"));
        }
        files.sort();
        let shards = files.iter().map(|f| SafetensorsFile::open(f)).collect::<Result<Vec<_>>>()?;
        Self::from_shards(path, shards, None)
    }

    fn open_indexed(dir: &Path, index_path: &Path) -> Result<SafetensorsModel> {
        let bad =
            |m: String| Error::Safetensors { path: index_path.to_path_buf(), problem: SafetensorsError::Index(m) };
        let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
        let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let mut weight_map = Vec::with_capacity(map.len());
        let mut shard_names: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| bad(format!("the shard of '{tensor}' is not a string")))?;
            if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
                return Err(bad(format!("shard name '{file}' for '{tensor}' is not a plain file name")));
            }
            if !shard_names.iter().any(|s| s == file) {
                shard_names.push(file.to_string());
            }
            weight_map.push((tensor.clone(), file.to_string()));
        }
        if shard_names.is_empty() {
            return Err(bad("the weight_map is empty".into()));
        }
        shard_names.sort();
        let mut shards = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            let shard_path = dir.join(name);
            if !shard_path.is_file() {
                let what = if shard_path.exists() { "is not a regular file" } else { "is missing" };
                return Err(Error::model(index_path, format!("the index names shard '{name}', which {what}")));
            }
            shards.push(SafetensorsFile::open(&shard_path)?);
        }
        Self::from_shards(dir, shards, Some((index_path, weight_map)))
    }

    fn from_shards(
        path: &Path,
        shards: Vec<SafetensorsFile>,
        index: Option<(&Path, Vec<(String, String)>)>,
    ) -> Result<SafetensorsModel> {
        let mut by_name = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (i, t) in shard.tensors().iter().enumerate() {
                if by_name.insert(t.name.clone(), (s, i)).is_some() {
                    return Err(Error::Safetensors {
                        path: shard.path().to_path_buf(),
                        problem: SafetensorsError::DuplicateTensor(t.name.clone()),
                    });
                }
            }
        }
        if let Some((index_path, weight_map)) = index {
            for (tensor, file) in weight_map {
                let found = by_name.get(&tensor).map(|&(s, _)| &shards[s]);
                if found.is_none_or(|shard| shard.path().file_name().is_none_or(|n| n != file.as_str())) {
                    return Err(Error::Safetensors {
                        path: index_path.to_path_buf(),
                        problem: SafetensorsError::IndexedTensorMissing { tensor, shard: file },
                    });
                }
            }
        }
        Ok(SafetensorsModel { path: path.to_path_buf(), shards, by_name })
    }

    /// The file or folder this model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files this model is read from: the shards, then the index when it was opened
    /// through one (a folder holding `model.safetensors.index.json`).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.shards.iter().map(|s| s.path().to_path_buf()).collect();
        let index = self.path.join(INDEX_FILE);
        if self.path.is_dir() && index.is_file() {
            files.push(index);
        }
        files
    }

    /// The shard files, in name order.
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// Every tensor with its shard, shard by shard in data order.
    pub fn tensors(&self) -> impl Iterator<Item = (&SafetensorsFile, &StTensor)> {
        self.shards.iter().flat_map(|s| s.tensors().iter().map(move |t| (s, t)))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the model has no tensors.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The tensor called `name` and its data.
    pub fn get(&self, name: &str) -> Option<(&StTensor, &[u8])> {
        let &(s, i) = self.by_name.get(name)?;
        let shard = &self.shards[s];
        let t = &shard.tensors()[i];
        Some((t, shard.data(t)))
    }
}
