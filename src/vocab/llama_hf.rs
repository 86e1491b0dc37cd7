//! SentencePiece-style vocabularies (`llama` in GGUF) from a Hugging Face `tokenizer.json`
//! alone, as llama.cpp's converter writes them when there is no `tokenizer.model`
//! (`_set_vocab_llama_hf`, gguf-py's `LlamaHfVocab`): a BPE model with byte fallback and a
//! `Sequence` decoder (`▁` pieces, `<0xNN>` byte tokens), as Llama 2, Mistral and Mixtral
//! tokenizers saved by transformers are. Writing such a tokenizer as a GPT-2 byte-level
//! vocabulary would make llama.cpp lose every space and newline.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

use super::special::SpecialVocab;
use super::{CONTROL, Metadata, NORMAL, USER_DEFINED, read_if_present};

/// llama.cpp's BYTE token type.
const BYTE: i32 = 6;

/// What llama.cpp's converter makes of a `tokenizer.json` when there is no `tokenizer.model`
/// (`LlamaHfVocab.__init__`'s checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonKind {
    /// BPE with byte fallback and a `Sequence` decoder: a SentencePiece-style vocabulary.
    SentencePiece,
    /// Anything else (Llama 3's byte-level BPE among them): a GPT-2 byte-level vocabulary.
    ByteLevel,
}

/// Classifies a parsed `tokenizer.json` as `LlamaHfVocab` does: Llama 3 (BPE, `ignore_merges`,
/// `byte_fallback` explicitly false) and anything that is not BPE with byte fallback and a
/// `Sequence` decoder are byte-level.
pub fn classify(tok: &Json) -> JsonKind {
    let Some(model) = tok.get("model") else { return JsonKind::ByteLevel };
    let bpe = model.get("type").and_then(Json::as_str) == Some("BPE");
    let flag = |k: &str, default: bool| model.get(k).map_or(default, |v| v.as_bool().unwrap_or(!v.is_null()));
    let llama3 = bpe && flag("ignore_merges", false) && !flag("byte_fallback", true);
    let sequence = tok.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence");
    if !llama3 && bpe && flag("byte_fallback", false) && sequence {
        JsonKind::SentencePiece
    } else {
        JsonKind::ByteLevel
    }
}

/// `<0xNN>`.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

/// The contents of a special token entry: a string or `{"content": ...}`.
fn token_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// The tokenizer's special tokens as transformers' `all_special_tokens` lists them: the
/// named ones (`bos_token` … `mask_token`) and the additional ones of
/// `tokenizer_config.json`, with `special_tokens_map.json` taking precedence.
fn special_tokens(dir: &Path) -> Result<Vec<String>> {
    let mut named: Vec<(String, Json)> = Vec::new();
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let Some(Json::Object(map)) = read_if_present(&dir.join(file))? else { continue };
        for (k, v) in map {
            let wanted = matches!(
                k.as_str(),
                "bos_token"
                    | "eos_token"
                    | "unk_token"
                    | "sep_token"
                    | "pad_token"
                    | "cls_token"
                    | "mask_token"
                    | "additional_special_tokens"
            );
            if wanted && !v.is_null() {
                match named.iter_mut().find(|(n, _)| *n == k) {
                    Some(slot) => slot.1 = v,
                    None => named.push((k, v)),
                }
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (_, v) in &named {
        let items: Vec<&Json> = match v {
            Json::Array(list) => list.iter().collect(),
            other => vec![other],
        };
        for c in items.into_iter().filter_map(token_content) {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
    }
    Ok(out)
}

/// The `tokenizer.*` keys llama.cpp's converter writes for a SentencePiece-style
/// `tokenizer.json` without `tokenizer.model` (`_set_vocab_llama_hf`): the `llama` model,
/// the base vocabulary in id order (byte tokens BYTE, the tokenizer's special tokens CONTROL,
/// the rest NORMAL), then the added tokens beyond it in id order (special ones CONTROL, the
/// rest USER_DEFINED), every score -1000, then the special tokens ([`SpecialVocab`]).
/// `vocab_size` is config.json's (the converter writes as many tokens as the tokenizer has; a
/// warning says when they differ). Returns keys and warnings.
///
/// Errors: a malformed `tokenizer.json`, a base vocabulary with gaps, added tokens whose ids
/// do not follow the base vocabulary without gaps (the converter would shift their ids).
pub fn llama_hf_vocab(dir: &Path, config: &Json, vocab_size: usize) -> Result<(Metadata, Vec<String>)> {
    let path = dir.join("tokenizer.json");
    let tok = read_if_present(&path)?.with_context(|| format!("{}: missing", path.display()))?;
    let vocab = tok
        .pointer("/model/vocab")
        .and_then(Json::as_object)
        .with_context(|| format!("{}: no model.vocab", path.display()))?;
    let base = vocab.len();
    // get_vocab(): the model's vocabulary with the added tokens over it.
    let mut by_id: HashMap<u64, String> = HashMap::new();
    for (t, id) in vocab {
        let id = id.as_u64().with_context(|| format!("{}: token {t:?} has no integer id", path.display()))?;
        by_id.insert(id, t.clone());
    }
    let mut added: Vec<(u64, String)> = Vec::new();
    for a in tok.get("added_tokens").and_then(Json::as_array).into_iter().flatten() {
        let (Some(id), Some(content)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
        else {
            bail!("{}: an added token lacks an id or content", path.display());
        };
        by_id.insert(id, content.to_string());
        if id >= base as u64 {
            added.push((id, content.to_string()));
        }
    }
    added.sort();
    added.dedup_by_key(|(id, _)| *id);
    for (k, (id, _)) in added.iter().enumerate() {
        if *id != (base + k) as u64 {
            bail!(
                "{}: added token ids do not follow the base vocabulary ({base} tokens) without gaps (id {id}); \
                 llama.cpp's converter would shift them",
                path.display()
            );
        }
    }
    let specials = special_tokens(dir)?;
    let id_of: HashMap<&str, u64> = by_id.iter().map(|(id, t)| (t.as_str(), *id)).collect();
    let special_ids: Vec<u64> = specials.iter().filter_map(|s| id_of.get(s.as_str()).copied()).collect();
    let mut tokens = Vec::with_capacity(base + added.len());
    let mut types = Vec::with_capacity(base + added.len());
    for id in 0..base as u64 {
        let t = by_id.get(&id).with_context(|| format!("{}: no token has id {id}", path.display()))?;
        types.push(if is_byte_token(t) {
            BYTE
        } else if special_ids.contains(&id) {
            CONTROL
        } else {
            NORMAL
        });
        tokens.push(t.clone());
    }
    for (_, t) in added {
        types.push(if specials.contains(&t) { CONTROL } else { USER_DEFINED });
        tokens.push(t);
    }
    let mut warnings = Vec::new();
    if vocab_size != 0 && tokens.len() != vocab_size {
        warnings.push(format!(
            "{}: {} tokens but config.json's vocab_size is {vocab_size}; written as llama.cpp's converter writes \
             them, which llama.cpp cannot load (its embedding rows must match the token count)",
            path.display(),
            tokens.len()
        ));
    }
    let n = tokens.len();
    let special = SpecialVocab::load(dir, config, false, None, Some(n))?;
    warnings.extend(special.warnings.iter().cloned());
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.scores".to_string(), Value::Array(Array::F32(vec![-1000.0; n]))),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(types))),
    ];
    keys.extend(special.metadata()?);
    Ok((keys, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_as_llama_hf_vocab_does() {
        let spm = json!({"model": {"type": "BPE", "byte_fallback": true}, "decoder": {"type": "Sequence"}});
        assert_eq!(classify(&spm), JsonKind::SentencePiece);
        let llama3 = json!({"model": {"type": "BPE", "ignore_merges": true, "byte_fallback": false},
            "decoder": {"type": "ByteLevel"}});
        assert_eq!(classify(&llama3), JsonKind::ByteLevel);
        let gpt2 = json!({"model": {"type": "BPE"}, "decoder": {"type": "ByteLevel"}});
        assert_eq!(classify(&gpt2), JsonKind::ByteLevel);
        let no_seq = json!({"model": {"type": "BPE", "byte_fallback": true}, "decoder": {"type": "ByteFallback"}});
        assert_eq!(classify(&no_seq), JsonKind::ByteLevel);
        assert_eq!(classify(&json!({"model": {"type": "Unigram"}})), JsonKind::ByteLevel);
        assert!(
            is_byte_token("<0x0A>") && is_byte_token("<0xff>") && !is_byte_token("<0x0G>") && !is_byte_token("<0x0A")
        );
    }
}
