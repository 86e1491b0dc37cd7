//! Byte-level BPE vocabularies (`gpt2` in GGUF) from a Hugging Face `tokenizer.json`, as
//! llama.cpp's converter writes them (`_set_vocab_gpt2`): tokens, types, merges, the
//! pre-tokenizer name ([`super::pre`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

use super::pre::{KNOWN_PRE, chkhsh, pre_for_hash};
use super::special::{SpecialVocab, looks_special};
use super::tokenize::TextTokenizer;
use super::{CONTROL, Metadata, NORMAL, UNUSED, USER_DEFINED, read_json};

/// The split regex of o200k (gpt-4o, gpt-oss); llama.cpp calls its pre-tokenizer `gpt-4o`.
pub const O200K_REGEX: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The split regex of Llama 3's tokenizer; llama.cpp calls its pre-tokenizer `llama-bpe`.
pub const LLAMA3_REGEX: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The `tokenizer.*` keys for a byte-level BPE tokenizer (`tokenizer.json` in `dir`) as
/// llama.cpp's `_set_vocab_gpt2` / `get_vocab_base` write them: config.json's `vocab_size`
/// entries (the tokenizer's size without one; ids the tokenizer lacks become `[PADi]`,
/// UNUSED), added tokens CONTROL when special or special-looking, else USER_DEFINED with `▁`
/// written as a space; `tokenizer.ggml.pre` as llama.cpp's converter chooses it (the hash of
/// its check text's tokens looked up in its table, [`super::pre`]), or `pre` when given; the
/// merges and special tokens ([`SpecialVocab`], without a vocabulary bound, as the converter
/// reads them). `family` is the family's pre-tokenizer name and split regex, written with a
/// warning when llama.cpp's table does not know the tokenizer (where the converter stops).
/// Returns the keys and warnings.
///
/// Errors: a `tokenizer.json` that is not BPE or has no merges (llama.cpp cannot load a
/// `gpt2` vocabulary without them), token ids beyond `vocab_size`, a `pre` llama.cpp does not
/// know.
pub fn gpt2_vocab(
    dir: &Path,
    config: &Json,
    vocab_size: usize,
    pre: Option<&str>,
    family: (&str, &str),
) -> Result<(Metadata, Vec<String>)> {
    gpt2_vocab_with(dir, config, vocab_size, pre, family, &[])
}

/// [`gpt2_vocab`] with special tokens a family's converter sets by their text after reading the
/// tokenizer's own (GLM's `_set_vocab_glm`: `("bos", "[gMASK]")`, ...): each `(type, content)`
/// takes the id of the added token `content` unless the type already has one (gguf-py's
/// `_set_special_token`), in the order given.
///
/// Errors: those of [`gpt2_vocab`], and a `content` that is not an added token of
/// `tokenizer.json` (where the converter fails with a `KeyError`), naming the file and token.
pub fn gpt2_vocab_with(
    dir: &Path,
    config: &Json,
    vocab_size: usize,
    pre: Option<&str>,
    family: (&str, &str),
    specials: &[(&str, &str)],
) -> Result<(Metadata, Vec<String>)> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let mut warnings = Vec::new();
    let model =
        tok.get("model").filter(|m| m.is_object()).with_context(|| format!("{}: no \"model\"", path.display()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        bail!("{}: the tokenizer model is not BPE; moeq converts byte-level BPE tokenizers here", path.display());
    }
    if let Some(p) = pre
        && !KNOWN_PRE.contains(&p)
    {
        bail!("pre-tokenizer '{p}' is not one llama.cpp knows (it would refuse to load the file)");
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
    let vocab_size = if vocab_size == 0 { by_id.len() } else { vocab_size };
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
    let pre = match pre {
        Some(p) => p.to_string(),
        None => {
            let (name, warning) = pre_of(&path, &tok, family);
            warnings.extend(warning);
            name
        }
    };
    let mut special = SpecialVocab::load(dir, config, true, None, None)?;
    for &(typ, content) in specials {
        let id = added
            .iter()
            .find(|a| a.get("content").and_then(Json::as_str) == Some(content))
            .and_then(|a| a.get("id"))
            .and_then(Json::as_u64);
        let Some(id) = id else {
            bail!(
                "{}: no added token {content:?}, which llama.cpp's converter takes as the {typ} token of this family",
                path.display()
            );
        };
        special.set_id(typ, id)?;
    }
    if special.merges.is_empty() {
        bail!("{}: no BPE merges; llama.cpp cannot load a gpt2 vocabulary without them", path.display());
    }
    warnings.extend(special.warnings.iter().cloned());
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre)),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(types))),
    ];
    keys.extend(special.metadata()?);
    Ok((keys, warnings))
}

/// `tokenizer.ggml.pre` as llama.cpp's converter chooses it for the tokenizer at `path`: the
/// name its table gives the hash of the check text's token ids. For a tokenizer the table does
/// not know (the converter stops there) or that cannot be run, the family's name, with a
/// warning (and another when the tokenizer's split regex is not the one llama.cpp implements
/// for that name).
fn pre_of(path: &Path, tok: &Json, family: (&str, &str)) -> (String, Option<String>) {
    // The tokenizers library reads a file moeq does not control: a panic in it is caught and
    // taken as a tokenizer that cannot run.
    let run = || TextTokenizer::from_file(path).and_then(|t| chkhsh(&t));
    let hash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the tokenizers library failed on it")));
    if let Ok(h) = &hash
        && let Some(name) = pre_for_hash(h)
    {
        return (name.to_string(), None);
    }
    let why = match hash {
        Ok(h) => format!("llama.cpp's converter does not know this pre-tokenizer (check hash {h})"),
        Err(e) => format!("the pre-tokenizer check could not run ({e:#})"),
    };
    let pre_tokenizer = tok.get("pre_tokenizer");
    let (regex, hint) = match split_regex(pre_tokenizer) {
        Some(r) if r != family.1 => (" and its split regex is not the one llama.cpp implements for it", ""),
        None if family.0 != "gpt-2" && splits_as_gpt2(pre_tokenizer) => (
            ", but it splits as GPT-2 does (ByteLevel with its built-in regex), which llama.cpp calls 'gpt-2'",
            " (here: --tokenizer-pre gpt-2)",
        ),
        _ => ("", ""),
    };
    let warning = format!(
        "{}: {why}; writing tokenizer.ggml.pre '{}'{regex}; pass --tokenizer-pre to choose another{hint}",
        path.display(),
        family.0
    );
    (family.0.to_string(), Some(warning))
}

/// Whether a (possibly sequenced) pre-tokenizer splits as GPT-2 does: a `ByteLevel` step with
/// `use_regex` (true when absent, as in the tokenizers library), whose regex is GPT-2's, and no
/// `Split` of its own ([`split_regex`] finds none).
fn splits_as_gpt2(pre: Option<&Json>) -> bool {
    let Some(pre) = pre else { return false };
    match pre.get("type").and_then(Json::as_str) {
        Some("ByteLevel") => pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true),
        Some("Sequence") => {
            split_regex(Some(pre)).is_none()
                && pre
                    .get("pretokenizers")
                    .and_then(Json::as_array)
                    .is_some_and(|steps| steps.iter().any(|p| splits_as_gpt2(Some(p))))
        }
        _ => false,
    }
}

/// The split regex of a (possibly sequenced) pre-tokenizer.
fn split_regex(pre: Option<&Json>) -> Option<&str> {
    let pre = pre?;
    if pre.get("type").and_then(Json::as_str) == Some("Split") {
        return pre.pointer("/pattern/Regex").and_then(Json::as_str);
    }
    pre.get("pretokenizers")?.as_array()?.iter().find_map(|p| split_regex(Some(p)))
}
