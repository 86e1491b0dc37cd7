//! Tokenizer metadata for GGUF, as llama.cpp's converter writes it: byte-level BPE from
//! `tokenizer.json` ([`bpe`]), SentencePiece from `tokenizer.model` ([`sentencepiece`]),
//! special tokens and the chat template ([`special`]), and the `general.*` naming
//! ([`model_card`]). A family chooses among them ([`crate::families::Family::vocab`]).

pub mod bpe;
pub mod model_card;
pub mod sentencepiece;
pub mod special;
pub mod tokenize;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::Value;
use serde_json::Value as Json;

pub use bpe::{LLAMA3_REGEX, O200K_REGEX, gpt2_vocab};
pub use sentencepiece::{sentencepiece_pieces, sentencepiece_vocab};

use crate::families::ModelConfig;

/// GGUF metadata entries, in order.
pub type Metadata = Vec<(String, Value)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` keys for a checkpoint, as its family's converter writes them (see
/// [`crate::families::Family::vocab`]), from the tokenizer in its folder or (OpenAI's
/// `original/`) the parent. `pre` overrides the pre-tokenizer name. Returns the keys and
/// warnings.
pub fn checkpoint_vocab(config: &ModelConfig, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let Some(dir) = find_tokenizer(&config.dir) else {
        bail!(
            "{}: no tokenizer.json here or in the parent folder; llama.cpp needs the tokenizer in the GGUF \
             (pass --no-vocab to convert the weights alone)",
            config.dir.display()
        );
    };
    config.family.vocab(&dir, &config.json, pre)
}

/// The `tokenizer.*` keys of llama.cpp's `llama` architecture (`LlamaModel.set_vocab`): the
/// tokenizer's space-prefix setting, then SentencePiece when there is a `tokenizer.model`, else
/// byte-level BPE (`llama-bpe`, Llama 3). `pre` overrides the pre-tokenizer name.
pub fn llama_vocab(dir: &Path, json: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let vocab_size = json.get("vocab_size").and_then(Json::as_u64).unwrap_or(0) as usize;
    let mut keys = Vec::new();
    let tc = dir.join("tokenizer_config.json");
    if let Some(v) = read_json(&tc).ok().and_then(|c| c.get("add_prefix_space").and_then(Json::as_bool)) {
        keys.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(v)));
    }
    if dir.join("tokenizer.model").is_file() && pre.is_none() {
        keys.extend(sentencepiece_vocab(dir, json, vocab_size)?);
        return Ok((keys, Vec::new()));
    }
    let (k, warnings) = gpt2_vocab(dir, json, vocab_size, pre.unwrap_or("llama-bpe"), ("llama-bpe", LLAMA3_REGEX))?;
    keys.extend(k);
    Ok((keys, warnings))
}

/// A JSON file that may be absent.
fn read_if_present(path: &Path) -> Result<Option<Json>> {
    if path.is_file() { read_json(path).map(Some) } else { Ok(None) }
}

/// Finds the tokenizer of a model folder: in it, or (for OpenAI's `original/`) its parent.
pub fn find_tokenizer(dir: &Path) -> Option<PathBuf> {
    std::iter::once(dir).chain(dir.parent()).find(|d| d.join("tokenizer.json").is_file()).map(Path::to_path_buf)
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
