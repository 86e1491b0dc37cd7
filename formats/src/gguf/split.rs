//! Split GGUFs (`model-00001-of-00003.gguf`, `split.*` keys) read as one model, with the
//! checks llama.cpp's model loader makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::reader::{GgufFile, TensorInfo};
use crate::gguf::value::Value;

/// `split.no`: 0-based index of this shard (UINT16).
pub const KEY_SPLIT_NO: &str = "split.no";
/// `split.count`: number of shards (UINT16).
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// `split.tensors.count`: tensors in all shards (INT32).
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// The name of shard `index` (0-based) of `count` for the output path `path`:
/// `dir/model.gguf` → `dir/model-00001-of-00003.gguf`, as gguf-py and llama.cpp name them.
pub fn shard_path(path: &Path, index: usize, count: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}-{:05}-of-{:05}.gguf", index + 1, count))
}

/// A model stored in one GGUF file or split across several.
pub struct GgufModel {
    shards: Vec<GgufFile>,
    /// `(shard, index in shard)` of every tensor, in shard then file order.
    order: Vec<(usize, usize)>,
}

impl GgufModel {
    /// Opens `path`; when it is the first shard of a split model, opens the others too.
    pub fn open(path: &Path) -> Result<GgufModel> {
        Self::open_with(path, GgufFile::open)
    }

    /// [`GgufModel::open`] for the headers only: the tensor data of big-endian shards stays
    /// in its byte order (see [`GgufFile::open_header`]). For inspecting.
    pub fn open_headers(path: &Path) -> Result<GgufModel> {
        Self::open_with(path, GgufFile::open_header)
    }

    fn open_with(path: &Path, open: fn(&Path) -> Result<GgufFile>) -> Result<GgufModel> {
        let first = open(path)?;
        let split_count = split_u16(&first, KEY_SPLIT_COUNT)?.unwrap_or(0);
        if split_count <= 1 {
            return Ok(Self::from_shards(vec![first]));
        }
        let split_no = split_u16(&first, KEY_SPLIT_NO)?.unwrap_or(0);
        if split_no != 0 {
            return Err(Error::model(
                path,
                format!("this is shard {} of a split model; open the first shard instead", split_no + 1),
            ));
        }
        let prefix = split_prefix(path, split_count).ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "split.count is {split_count} but the file name does not end in -00001-of-{split_count:05}.gguf"
                ),
            )
        })?;
        let mut shards = vec![first];
        for index in 1..split_count as usize {
            let shard_path = PathBuf::from(format!("{prefix}-{:05}-of-{split_count:05}.gguf", index + 1));
            if !shard_path.exists() {
                return Err(Error::model(path, format!("missing split {}: {}", index + 1, shard_path.display())));
            }
            let shard = open(&shard_path)?;
            if split_u16(&shard, KEY_SPLIT_NO)? != Some(index as u16) {
                return Err(Error::model(&shard_path, format!("split.no must be {index}")));
            }
            if split_u16(&shard, KEY_SPLIT_COUNT)? != Some(split_count) {
                return Err(Error::model(&shard_path, format!("split.count must be {split_count}")));
            }
            shards.push(shard);
        }
        let model = Self::from_shards(shards);
        let mut names = HashMap::new();
        for (s, t) in model.tensors() {
            if let Some(first) = names.insert(t.name.as_str(), s) {
                // Named by both shards (the second is where the extra copy is).
                let shard = |s: usize| model.shards[s].path().display().to_string();
                return Err(Error::model(
                    model.shards[s].path(),
                    format!("tensor '{}' is also in {}: a tensor appears in one split only", t.name, shard(first)),
                ));
            }
        }
        let total = model.shards[0].header().get(KEY_SPLIT_TENSORS_COUNT).and_then(Value::as_u64);
        if total != Some(model.order.len() as u64) {
            return Err(Error::model(
                path,
                format!(
                    "split.tensors.count is {}, but the splits hold {} tensors",
                    total.map_or("missing".into(), |n| n.to_string()),
                    model.order.len()
                ),
            ));
        }
        Ok(model)
    }

    /// A model of one file already opened (no other shard is looked for, whatever its
    /// `split.*` keys say), e.g. GGUF bytes held in memory ([`GgufFile::from_bytes`]).
    pub fn single(file: GgufFile) -> GgufModel {
        Self::from_shards(vec![file])
    }

    fn from_shards(shards: Vec<GgufFile>) -> GgufModel {
        let order =
            shards.iter().enumerate().flat_map(|(s, f)| (0..f.header().tensors.len()).map(move |i| (s, i))).collect();
        GgufModel { shards, order }
    }

    /// The files this model is read from, first shard first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path().to_path_buf()).collect()
    }

    /// The shards, first one first (a single file is one shard).
    pub fn shards(&self) -> &[GgufFile] {
        &self.shards
    }

    /// The first shard, which carries the model's metadata.
    pub fn first(&self) -> &GgufFile {
        &self.shards[0]
    }

    /// A metadata value of the model (from the first shard).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.first().header().get(key)
    }

    /// Every tensor with its shard index, in order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.order.iter().map(|&(s, i)| (s, &self.shards[s].header().tensors[i]))
    }

    /// Number of tensors in all shards.
    pub fn tensor_count(&self) -> usize {
        self.order.len()
    }

    /// The info and data of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &[u8])> {
        self.order.iter().find_map(|&(s, i)| {
            let shard = &self.shards[s];
            let info = &shard.header().tensors[i];
            (info.name == name).then(|| (info, shard.tensor_data(i)))
        })
    }
}

/// `(split.no, split.count)` of the GGUF file at `path`, when it is a readable GGUF with both
/// keys (UINT16). Reads the header only.
pub fn split_position(path: &Path) -> Option<(u32, u32)> {
    let file = GgufFile::open_header(path).ok()?;
    let no = split_u16(&file, KEY_SPLIT_NO).ok()??;
    let count = split_u16(&file, KEY_SPLIT_COUNT).ok()??;
    Some((u32::from(no), u32::from(count)))
}

fn split_u16(file: &GgufFile, key: &str) -> Result<Option<u16>> {
    match file.header().get(key) {
        None => Ok(None),
        Some(Value::U16(v)) => Ok(Some(*v)),
        Some(v) => Err(Error::model(file.path(), format!("{key} must be UINT16, found {}", v.type_label()))),
    }
}

/// `dir/model-00001-of-00003.gguf` → `dir/model`, checking the count in the name.
fn split_prefix(path: &Path, count: u16) -> Option<String> {
    let s = path.to_str()?;
    let suffix = format!("-00001-of-{count:05}.gguf");
    s.strip_suffix(&suffix).map(str::to_string)
}
