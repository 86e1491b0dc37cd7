//! Tokenizer metadata for GGUF, as llama.cpp's converter writes it: byte-level BPE from
//! `tokenizer.json` ([`bpe`], with the pre-tokenizer chosen as the converter chooses it,
//! [`pre`]), SentencePiece from `tokenizer.model` ([`sentencepiece`]) or from a
//! SentencePiece-style `tokenizer.json` ([`llama_hf`]), special tokens and chat templates
//! ([`special`]), and the `general.*` naming ([`model_card`]). A family chooses among them
//! ([`crate::families::Family::vocab`]).

pub mod bpe;
pub mod llama_hf;
pub mod model_card;
pub mod pre;
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
use llama_hf::{JsonKind, classify, llama_hf_vocab};

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
/// warnings, among them one when a chat model (by its name or its tokenizer's chat tokens)
/// gets no chat template.
///
/// Errors: no `tokenizer.json` or `tokenizer.model` in either folder, or none the family can
/// build a vocabulary from.
pub fn checkpoint_vocab(config: &ModelConfig, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let Some(dir) = find_tokenizer(&config.dir) else {
        bail!(
            "{}: no tokenizer.json or tokenizer.model here or in the parent folder; llama.cpp needs the tokenizer \
             in the GGUF (pass --no-vocab to convert the weights alone)",
            config.dir.display()
        );
    };
    let (keys, mut warnings) = config.family.vocab(&dir, &config.json, pre)?;
    warnings.extend(missing_chat_template(&config.dir, &dir, &config.json, &keys));
    Ok((keys, warnings))
}

/// The largest `vocab_size` moeq takes from config.json, as the families' hyperparameter
/// checks (16,777,216 tokens; released models have at most a few hundred thousand).
pub const MAX_VOCAB_SIZE: u64 = 1 << 24;

/// config.json's `vocab_size`, the count a vocabulary is padded to (`[PADn]` tokens, as
/// llama.cpp's converter pads); 0 when it is absent or not an integer (the tokenizer's own
/// count is used then). `dir` is the tokenizer's folder, named in errors.
///
/// Errors: a `vocab_size` above [`MAX_VOCAB_SIZE`], refused before anything is allocated for
/// it (a mutated `vocab_size` of 10^12 once made the padding abort on a 24 TB allocation).
pub fn config_vocab_size(dir: &Path, config: &Json) -> Result<usize> {
    let n = config.get("vocab_size").and_then(Json::as_u64).unwrap_or(0);
    if n > MAX_VOCAB_SIZE {
        bail!("{}: config.json's vocab_size {n} is implausible (more than {MAX_VOCAB_SIZE} tokens)", dir.display());
    }
    Ok(n as usize)
}

/// Tokens that only chat models' tokenizers carry (turn markers of the common templates).
const CHAT_MARKERS: &[&str] = &[
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "<|start_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|start|>",
    "<|message|>",
    "<|channel|>",
];

/// A warning when a chat model ends with no chat template: its folder name or config.json's
/// `_name_or_path` says instruct or chat, or its tokenizer has chat turn tokens.
fn missing_chat_template(model_dir: &Path, tok_dir: &Path, config: &Json, keys: &Metadata) -> Option<String> {
    if keys.iter().any(|(k, _)| k == "tokenizer.chat_template" || k.starts_with("tokenizer.chat_template.")) {
        return None;
    }
    let names = [
        model_dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())),
        config.get("_name_or_path").and_then(Json::as_str).map(str::to_string),
    ];
    let by_name = names.iter().flatten().find(|n| {
        let n = n.to_ascii_lowercase();
        n.contains("instruct") || n.contains("chat")
    });
    let tokens = keys.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").map(|(_, v)| v);
    let marker = CHAT_MARKERS.iter().find(|m| match tokens {
        Some(Value::Array(moeq_formats::gguf::Array::String(list))) => list.iter().any(|t| t == *m),
        _ => false,
    });
    let why = match (by_name, marker) {
        (Some(n), _) => format!("its name '{n}' says it is a chat model"),
        (None, Some(m)) => format!("its tokenizer has the chat token {m}"),
        (None, None) => return None,
    };
    Some(format!(
        "{}: {why}, but no chat template was found (tokenizer_config.json's chat_template, chat_template.jinja or \
         chat_template.json beside a tokenizer_config.json); llama.cpp will fall back to a built-in template",
        tok_dir.display()
    ))
}

/// The `tokenizer.*` keys of llama.cpp's `llama` architecture (`LlamaModel.set_vocab`): the
/// tokenizer's space-prefix setting, then SentencePiece from `tokenizer.model`; without one,
/// SentencePiece from a SentencePiece-style `tokenizer.json` (byte fallback, `Sequence`
/// decoder); else byte-level BPE (Llama 3, pre-tokenizer by llama.cpp's check, `llama-bpe`
/// when its table does not know it). Then CodeLlama's (vocab_size 32016) EOT token and
/// Granite's (49152) add-bos flag, as the converter sets them. `pre` overrides the
/// pre-tokenizer name. A `tokenizer.model` that is not a SentencePiece model (Llama 3's
/// tiktoken file) is passed over with a warning when there is a `tokenizer.json` (the
/// converter stops there).
pub fn llama_vocab(dir: &Path, json: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)> {
    let vocab_size = config_vocab_size(dir, json)?;
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    if let Some(p) = pre
        && !pre::KNOWN_PRE.contains(&p)
    {
        bail!("pre-tokenizer '{p}' is not one llama.cpp knows (it would refuse to load the file)");
    }
    let tc = read_if_present(&dir.join("tokenizer_config.json"))?;
    if let Some(v) = tc.as_ref().and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
        keys.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(v)));
    }
    let model = dir.join("tokenizer.model");
    let json_path = dir.join("tokenizer.json");
    let mut vocab = None;
    if model.is_file() {
        match sentencepiece_vocab(dir, json, vocab_size) {
            Ok(v) => vocab = Some(v),
            Err(e) if json_path.is_file() => warnings.push(format!(
                "{e:#}; using tokenizer.json instead (llama.cpp's converter stops here: remove the file to \
                 convert with it)"
            )),
            Err(e) => return Err(e),
        }
    }
    let (mut k, w) = match vocab {
        Some(v) => v,
        None if !json_path.is_file() => {
            bail!("{}: no tokenizer.model or tokenizer.json", dir.display())
        }
        None => match classify(&read_json(&json_path)?) {
            JsonKind::SentencePiece => llama_hf_vocab(dir, json, vocab_size)?,
            JsonKind::ByteLevel => gpt2_vocab(dir, json, vocab_size, pre, ("llama-bpe", LLAMA3_REGEX))?,
        },
    };
    if let Some(p) = pre
        && let Some(slot) = k.iter_mut().find(|(key, _)| key == "tokenizer.ggml.pre")
    {
        slot.1 = Value::String(p.to_string());
    }
    warnings.extend(w);
    keys.append(&mut k);
    match vocab_size {
        // CodeLlama: a second SpecialVocab for the infill tokens, ids 32007-32010 unless the
        // tokenizer names others; gguf-py writes only its EOT (it has no keys for prefix,
        // suffix and middle), and its other keys again (in place).
        32016 => {
            let types = ["prefix", "suffix", "middle", "eot"];
            let mut sv = special::SpecialVocab::load(dir, json, false, Some(&types), None)?;
            for (typ, id) in types.iter().zip(32007..) {
                sv.set_id(typ, id)?;
            }
            for (k, v) in sv.metadata()? {
                set(&mut keys, k, v);
            }
        }
        49152 => set(&mut keys, "tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        _ => {}
    }
    Ok((keys, warnings))
}

/// Sets `key` (in place when present, as gguf-py's writer overwrites a key).
fn set(keys: &mut Metadata, key: String, value: Value) {
    match keys.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => keys.push((key, value)),
    }
}

/// A JSON file that may be absent.
fn read_if_present(path: &Path) -> Result<Option<Json>> {
    if path.is_file() { read_json(path).map(Some) } else { Ok(None) }
}

/// Finds the tokenizer of a model folder (a `tokenizer.json` or `tokenizer.model`): in it, or
/// (for OpenAI's `original/`) its parent.
pub fn find_tokenizer(dir: &Path) -> Option<PathBuf> {
    std::iter::once(dir)
        .chain(dir.parent())
        .find(|d| d.join("tokenizer.json").is_file() || d.join("tokenizer.model").is_file())
        .map(Path::to_path_buf)
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
