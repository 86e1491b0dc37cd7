//! The first pipeline stage: open any input moeq reads (memory-mapped, headers only), and
//! read a checkpoint's [`config`] to find its family.

pub mod config;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use moeq_formats::gguf::GgufModel;
use moeq_formats::safetensors::{Dtype, SafetensorsModel};

use crate::families::{ModelConfig, SourceLayout};

/// An opened input model.
pub enum Source {
    /// A GGUF file, or the first of a split GGUF.
    Gguf(GgufModel),
    /// A safetensors file or folder, with its `config.json` when there is one.
    Safetensors {
        /// The tensors.
        model: SafetensorsModel,
        /// The detected architecture, if a `config.json` is present.
        config: Option<Box<ModelConfig>>,
    },
}

/// The files beside a checkpoint's weights that moeq may read (config, tokenizer, chat
/// template, generation settings, model card) or copy into a build. A reader that starts
/// reading another file beside the weights adds its name here, so no output can replace it.
pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "dtypes.json",
    "generation_config.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

impl Source {
    /// Every file a run on this source may read: the weights (shards, index, GGUF splits)
    /// and, for a checkpoint, the [`SIDE_FILES`] present in its folder and the folder above
    /// (where OpenAI's `original/` keeps its tokenizer). Outputs are checked against them.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Source::Gguf(model) => model.files(),
            Source::Safetensors { model, .. } => {
                let mut files = model.files();
                let dir = if model.path().is_dir() { model.path() } else { parent_or_here(model.path()) };
                for d in std::iter::once(dir).chain(dir.parent().filter(|p| !p.as_os_str().is_empty())) {
                    files.extend(SIDE_FILES.iter().map(|name| d.join(name)).filter(|p| p.is_file()));
                }
                files
            }
        }
    }

    /// The files a `--tokenizer PATH` option may read (outputs are checked against them, as
    /// against [`Source::files`]): `PATH` itself when it is a file, else the [`SIDE_FILES`]
    /// present in the folder and the folder above (the tokenizer is looked for in both).
    pub fn tokenizer_files(path: &Path) -> Vec<PathBuf> {
        if path.is_file() {
            return vec![path.to_path_buf()];
        }
        let mut files = Vec::new();
        for d in std::iter::once(path).chain(path.parent().filter(|p| !p.as_os_str().is_empty())) {
            files.extend(SIDE_FILES.iter().map(|name| d.join(name)).filter(|p| p.is_file()));
        }
        files
    }

    /// [`Source::open`] for `inspect`: a big-endian GGUF's tensor data is not converted
    /// (only its headers are shown).
    pub fn open_headers(path: &Path) -> Result<Source> {
        if path.is_file() && starts_with_gguf_magic(path)? {
            return Ok(Source::Gguf(GgufModel::open_headers(path)?));
        }
        Source::open(path)
    }

    /// Opens `path`: a `.gguf` file, a `.safetensors` file, or a model folder.
    pub fn open(path: &Path) -> Result<Source> {
        if path.is_dir() {
            // Detect the family first: an unsupported model is reported as such.
            let config = ModelConfig::detect(path, &[])?;
            let model = SafetensorsModel::open(path)?;
            return Ok(Source::Safetensors { config: config.map(|c| Box::new(with_tensors(&model, c))), model });
        }
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
        // A FIFO would block the open until some writer came (a device or socket holds no
        // model either): refused before opening.
        if !path.is_file() {
            bail!("{}: not a regular file or folder (a FIFO, device or socket holds no model)", path.display());
        }
        if starts_with_gguf_magic(path)? {
            return Ok(Source::Gguf(GgufModel::open(path)?));
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            let model = SafetensorsModel::open(path)?;
            let config = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => ModelConfig::detect(dir, &[])?,
                _ => ModelConfig::detect(Path::new("."), &[])?,
            };
            return Ok(Source::Safetensors { config: config.map(|c| Box::new(with_tensors(&model, c))), model });
        }
        if path.extension().is_some_and(|e| e == "gguf") {
            // Let the GGUF reader say what is wrong with it.
            return Ok(Source::Gguf(GgufModel::open(path)?));
        }
        bail!("{}: not a GGUF or safetensors file (nor a model folder)", path.display())
    }
}

fn parent_or_here(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The layout, now that the tensors are known: decided from the tensors (an MLX build, else
/// the family's reading of the tensor names), as llama.cpp's converter reads a checkpoint by
/// its tensor names whatever `config.json` says; a `config.json` that says otherwise (a
/// fine-tune's stale `quantization_config`, an MLX `quantization` block over plain weights, a
/// build that lost it) gets a warning in [`ModelConfig::warnings`].
fn with_tensors(model: &SafetensorsModel, config: ModelConfig) -> ModelConfig {
    let keys = config.keys();
    let names: Vec<&str> = model.tensors().map(|(_, t)| t.name.as_str()).collect();
    let by_config = config.layout;
    let (mlx, quantized) = mlx_build(model, config.family.mlx_experts());
    let layout = if mlx { SourceLayout::Mlx } else { config.family.layout(&keys, &names) };
    let mut warnings = Vec::new();
    let file = config.path();
    // An unquantized MLX build has no quantization block: nothing to disagree with.
    let unquantized_mlx = mlx && !quantized && by_config != SourceLayout::Mlx;
    if layout != by_config && !unquantized_mlx {
        warnings.push(format!(
            "{}: config.json says {} ({}), but the tensors are {} ({}); reading them as the tensors are",
            file.display(),
            by_config.config_evidence(),
            by_config.describe(),
            layout.tensor_evidence(),
            layout.describe(),
        ));
    } else if layout == SourceLayout::Hf
        && let Some(method) = keys.object("quantization_config").ok().flatten().and_then(|q| q.raw("quant_method"))
    {
        warnings.push(format!(
            "{}: config.json's quantization_config says quant_method {method}, but the tensors are plain float \
             weights; reading them as they are",
            file.display()
        ));
    }
    warnings.extend(unindexed_shards(model));
    let hparams = config.family.inspect_hparams(&keys, layout);
    ModelConfig { layout, hparams, warnings, ..config }
}

/// Warnings for `*.safetensors` files in a sharded folder that its index does not name (a stale
/// `model.safetensors` beside the shards): moeq reads the index's shards alone, where
/// transformers would load `model.safetensors` and llama.cpp's converter every `model*` file.
fn unindexed_shards(model: &SafetensorsModel) -> Vec<String> {
    let dir = model.path();
    let index = dir.join("model.safetensors.index.json");
    if !dir.is_dir() || !index.is_file() {
        return Vec::new();
    }
    let read: std::collections::HashSet<std::ffi::OsString> =
        model.shards().iter().filter_map(|f| f.path().file_name().map(ToOwned::to_owned)).collect();
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut stale: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .filter(|p| p.file_name().is_some_and(|n| !read.contains(n)))
        .collect();
    stale.sort();
    stale
        .iter()
        .map(|p| {
            format!(
                "{}: not named by {}, so not read (transformers would load a model.safetensors instead of the \
                 index, llama.cpp's converter every model*.safetensors): remove it if it is stale",
                p.display(),
                index.display()
            )
        })
        .collect()
}

/// Whether the tensors are an MLX build (shards whose metadata says `format: mlx`, a quantized
/// module, or mlx-lm's stacked expert names `{experts}.gate_proj.weight`, `experts` the
/// family's MLX expert module), and whether it has quantized modules (a U32 `.weight` beside
/// its `.scales`).
fn mlx_build(model: &SafetensorsModel, experts: &str) -> (bool, bool) {
    let tagged =
        model.shards().iter().any(|f| f.metadata().is_some_and(|m| m.iter().any(|(k, v)| k == "format" && v == "mlx")));
    let quantized = model.tensors().any(|(_, t)| {
        t.name
            .strip_suffix(".scales")
            .is_some_and(|module| model.get(&format!("{module}.weight")).is_some_and(|(w, _)| w.dtype == Dtype::U32))
    });
    let stacked = format!(".{experts}.");
    let mlx_names = model.tensors().any(|(_, t)| {
        t.name
            .split_once(&stacked)
            .is_some_and(|(_, rest)| ["gate_proj.weight", "up_proj.weight", "down_proj.weight"].contains(&rest))
    });
    (tagged || quantized || mlx_names, quantized)
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let n = file.read(&mut magic).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(n == 4 && &magic == b"GGUF")
}
