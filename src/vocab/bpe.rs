//! Byte-level BPE vocabularies (`gpt2` in GGUF) from a Hugging Face `tokenizer.json`, as
//! llama.cpp's converter writes them (`_set_vocab_gpt2`): tokens, types, merges, the
//! pre-tokenizer name.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

use super::special::{looks_special, special_tokens};
use super::{CONTROL, Metadata, NORMAL, UNUSED, USER_DEFINED, read_if_present, read_json};

/// The split regex of o200k (gpt-4o, gpt-oss); llama.cpp calls its pre-tokenizer `gpt-4o`.
pub const O200K_REGEX: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The split regex of Llama 3's tokenizer; llama.cpp calls its pre-tokenizer `llama-bpe`.
pub const LLAMA3_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// Pre-tokenizer names llama.cpp's loader accepts (an unknown one fails the load).
const KNOWN_PRE: &[&str] = &[
    "default",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "refact",
    "command-r",
    "qwen2",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "superbpe",
    "trillion",
    "bailingmoe",
    "llama4",
    "pixtral",
    "seed-coder",
    "kimi-k2",
    "hunyuan",
    "grok-2",
    "viking",
    "qwen35",
    "glm4",
];

/// The `tokenizer.*` keys for a byte-level BPE tokenizer in `dir`, with `vocab_size` tokens
/// (ids the tokenizer lacks become `[PADi]`, UNUSED) and `pre` as `tokenizer.ggml.pre`.
/// `config` is the model's `config.json` (for special token ids); `family` is the family's
/// pre-tokenizer name and split regex (a warning says when `pre` is that name but the regex
/// differs). Returns the keys and warnings.
pub fn gpt2_vocab(
    dir: &Path,
    config: &Json,
    vocab_size: usize,
    pre: &str,
    family: (&str, &str),
) -> Result<(Metadata, Vec<String>)> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let mut warnings = Vec::new();
    let model =
        tok.get("model").filter(|m| m.is_object()).with_context(|| format!("{}: no \"model\"", path.display()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        bail!("{}: the tokenizer model is not BPE; moeq converts byte-level BPE tokenizers here", path.display());
    }
    if !KNOWN_PRE.contains(&pre) {
        bail!("pre-tokenizer '{pre}' is not one llama.cpp knows (it would refuse to load the file)");
    }
    if let Some(regex) = split_regex(tok.get("pre_tokenizer"))
        && pre == family.0
        && regex != family.1
    {
        warnings.push(format!(
            "{}: the pre-tokenizer's split regex is not the one llama.cpp's '{pre}' implements; \
             pass --tokenizer-pre to choose another",
            path.display()
        ));
    }

    // id → (token, type)
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    let vocab =
        model.get("vocab").and_then(Json::as_object).with_context(|| format!("{}: no model.vocab", path.display()))?;
    for (token, id) in vocab {
        let id = id.as_u64().with_context(|| format!("{}: token {token:?} has no integer id", path.display()))?;
        by_id.insert(id, (token.clone(), NORMAL));
    }
    let added = tok.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
    for a in &added {
        let (Some(id), Some(content)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
        else {
            bail!("{}: an added token lacks an id or content", path.display());
        };
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        let (token, ty) = if special || looks_special(content) {
            (content.to_string(), CONTROL)
        } else {
            (content.replace('\u{2581}', " "), USER_DEFINED)
        };
        by_id.insert(id, (token, ty));
    }
    if let Some(&max) = by_id.keys().max()
        && max >= vocab_size as u64
    {
        bail!("{}: token id {max} does not fit in the model's vocab_size {vocab_size}", path.display());
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u64 {
        match by_id.remove(&i) {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
        }
    }

    let merges = merges(model).with_context(|| format!("{}", path.display()))?;
    if merges.is_empty() {
        bail!("{}: no BPE merges; llama.cpp cannot load a gpt2 vocabulary without them", path.display());
    }
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges".to_string(), Value::Array(Array::String(merges))),
    ];
    let tc = read_if_present(&dir.join("tokenizer_config.json"))?;
    keys.extend(special_tokens(dir, Some(&tok), tc.as_ref(), &added, config, vocab_size)?);
    Ok((keys, warnings))
}

/// The split regex of a (possibly sequenced) pre-tokenizer.
fn split_regex(pre: Option<&Json>) -> Option<&str> {
    let pre = pre?;
    if pre.get("type").and_then(Json::as_str) == Some("Split") {
        return pre.pointer("/pattern/Regex").and_then(Json::as_str);
    }
    pre.get("pretokenizers")?.as_array()?.iter().find_map(|p| split_regex(Some(p)))
}

/// `model.merges` as `"left right"` strings (pairs joined with a space, spaces inside a pair
/// encoded as U+0120, as gguf-py does).
fn merges(model: &Json) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(Json::as_array) else { return Ok(Vec::new()) };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => bail!("a merge is not a pair of strings"),
                }
            }
            _ => bail!("unknown merges format"),
        })
        .collect()
}
