//! The first pipeline stage: open any input moeq reads (memory-mapped, headers only).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use moeq_formats::gguf::GgufModel;
use moeq_formats::safetensors::SafetensorsModel;

use crate::arch::{ModelConfig, SourceLayout};

/// An opened input model.
pub enum Source {
    /// A GGUF file, or the first of a split GGUF.
    Gguf(GgufModel),
    /// A safetensors file or folder, with its `config.json` when there is one.
    Safetensors {
        /// The tensors.
        model: SafetensorsModel,
        /// The detected architecture, if a `config.json` is present.
        config: Option<ModelConfig>,
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
            // Detect the architecture first: an unsupported model is reported as such.
            let config = ModelConfig::detect(path)?;
            let model = SafetensorsModel::open(path)?;
            return Ok(Source::Safetensors { config: config.map(|c| mark_mlx(&model, c)), model });
        }
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
        if starts_with_gguf_magic(path)? {
            return Ok(Source::Gguf(GgufModel::open(path)?));
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            let model = SafetensorsModel::open(path)?;
            let config = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => ModelConfig::detect(dir)?,
                _ => ModelConfig::detect(Path::new("."))?,
            };
            return Ok(Source::Safetensors { config: config.map(|c| mark_mlx(&model, c)), model });
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

/// An unquantized MLX build has no quantization block; its shards say `format: mlx`.
fn mark_mlx(model: &SafetensorsModel, config: ModelConfig) -> ModelConfig {
    let mlx =
        model.shards().iter().any(|f| f.metadata().is_some_and(|m| m.iter().any(|(k, v)| k == "format" && v == "mlx")));
    if mlx { ModelConfig { layout: SourceLayout::Mlx, ..config } } else { config }
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let n = file.read(&mut magic).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(n == 4 && &magic == b"GGUF")
}
