//! SentencePiece vocabularies (`llama` in GGUF) from `tokenizer.model`, parsed straight from
//! the protobuf wire format, as llama.cpp's converter writes them (`_set_vocab_sentencepiece`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

use super::special::{SpecialVocab, looks_special};
use super::{CONTROL, Metadata, NORMAL, UNUSED, USER_DEFINED, read_if_present};

/// SentencePiece token types (`sentencepiece_model.proto`), which llama.cpp's are.
const SP_UNKNOWN: i32 = 2;
const SP_BYTE: i32 = 6;

/// The pieces of a SentencePiece model (`tokenizer.model`, a `ModelProto`): text, score and
/// type, read straight from the protobuf wire format.
pub fn sentencepiece_pieces(bytes: &[u8]) -> Result<Vec<(String, f32, i32)>> {
    let mut pieces = Vec::new();
    let mut r = Wire { bytes, at: 0 };
    while !r.done() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == 2 {
            let piece = r.bytes()?;
            let (mut text, mut score, mut ty) = (String::new(), 0.0f32, 1i32);
            let mut p = Wire { bytes: piece, at: 0 };
            while !p.done() {
                match p.key()? {
                    (1, 2) => text = String::from_utf8(p.bytes()?.to_vec()).context("a piece is not UTF-8")?,
                    (2, 5) => score = f32::from_le_bytes(p.fixed::<4>()?),
                    (3, 0) => ty = p.varint()? as i32,
                    (_, w) => p.skip(w)?,
                }
            }
            pieces.push((text, score, ty));
        } else {
            r.skip(wire)?;
        }
    }
    if pieces.is_empty() {
        bail!("no pieces: not a SentencePiece model");
    }
    Ok(pieces)
}

/// A protobuf wire-format reader.
struct Wire<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Wire<'b> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else { bail!("truncated varint") };
            self.at += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes")
    }

    fn key(&mut self) -> Result<(u64, u8)> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).context("truncated field")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'b [u8]> {
        let n = self.varint()?;
        self.take(usize::try_from(n)?)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into()?)
    }

    fn skip(&mut self, wire: u8) -> Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            w => bail!("unsupported protobuf wire type {w}"),
        }
    }
}

/// The `tokenizer.*` keys for a SentencePiece tokenizer (`tokenizer.model` in `dir`) as
/// llama.cpp's `_set_vocab_sentencepiece` / `_create_vocab_sentencepiece` write them: the
/// `llama` model, `vocab_size` entries (config.json's, else the model's piece count) of
/// pieces, scores and types (unknown, control, unused and byte pieces keep their type, the
/// rest are normal; ids the model lacks are `[PADi]`, unused, score -10000), then the tokens
/// of `added_tokens.json` (user-defined, score -1000) and `tokenizer_config.json`'s
/// `added_tokens_decoder` (control when special or special-looking, else user-defined with
/// `▁` written as a space; score -1000), then the special tokens ([`SpecialVocab`]).
/// Returns the keys and warnings (ids beyond the vocabulary are left out, as the converter
/// leaves them out).
///
/// Errors: an unreadable or malformed `tokenizer.model`, JSON files or token ids that are
/// not integers.
pub fn sentencepiece_vocab(dir: &Path, config: &Json, vocab_size: usize) -> Result<(Metadata, Vec<String>)> {
    let path = dir.join("tokenizer.model");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let pieces = sentencepiece_pieces(&bytes).with_context(|| format!("{}", path.display()))?;
    let mut warnings = Vec::new();
    let n = if vocab_size == 0 { pieces.len() } else { vocab_size };
    if pieces.len() > n {
        warnings.push(format!(
            "{}: {} pieces, but config.json's vocab_size is {n}: pieces from id {n} on are left out",
            path.display(),
            pieces.len()
        ));
    }
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (id, (text, score, ty)) in pieces.into_iter().enumerate().take(n) {
        tokens[id] = text;
        scores[id] = score;
        types[id] = match ty {
            SP_UNKNOWN | CONTROL | UNUSED | SP_BYTE => ty,
            _ => NORMAL,
        };
    }
    let out_of_range =
        |file: &Path, id: u64| format!("{}: token id {id} is beyond the vocabulary ({n}); left out", file.display());
    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_if_present(&added_path)? {
        let Json::Object(added) = added else { bail!("{}: not a JSON object", added_path.display()) };
        for (token, id) in added {
            let id = id.as_u64().with_context(|| format!("{}: {token:?} has no token id", added_path.display()))?;
            if id >= n as u64 {
                warnings.push(out_of_range(&added_path, id));
                continue;
            }
            tokens[id as usize] = token.clone();
            scores[id as usize] = -1000.0;
            types[id as usize] = USER_DEFINED;
        }
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_if_present(&tc_path)?;
    if let Some(decoder) = tc.as_ref().and_then(|t| t.get("added_tokens_decoder")).and_then(Json::as_object) {
        for (id, data) in decoder {
            let (Ok(id), Some(content)) = (id.parse::<u64>(), data.get("content").and_then(Json::as_str)) else {
                bail!("{}: added_tokens_decoder entry {id:?} has no token id or content", tc_path.display());
            };
            if id >= n as u64 {
                warnings.push(out_of_range(&tc_path, id));
                continue;
            }
            let id = id as usize;
            let special = data.get("special").and_then(Json::as_bool).unwrap_or(false);
            if special || looks_special(content) {
                types[id] = CONTROL;
                tokens[id] = content.to_string();
            } else {
                types[id] = USER_DEFINED;
                tokens[id] = content.replace('\u{2581}', " ");
            }
            scores[id] = -1000.0;
        }
    }
    let special = SpecialVocab::load(dir, config, false, None, Some(n))?;
    warnings.extend(special.warnings.iter().cloned());
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.scores".to_string(), Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(types))),
    ];
    keys.extend(special.metadata()?);
    Ok((keys, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_models_parse() {
        let bytes = include_bytes!("../../tests/fixtures/mixtral/hf/tokenizer.model");
        let pieces = sentencepiece_pieces(bytes).unwrap();
        assert_eq!(pieces.len(), 512);
        assert_eq!(pieces[0], ("<unk>".to_string(), 0.0, SP_UNKNOWN));
        assert_eq!(pieces[1].2, CONTROL);
        assert_eq!((pieces[3].0.as_str(), pieces[3].2), ("<0x00>", SP_BYTE));
        // Truncated or garbage input is an error, never a panic.
        for cut in [1, 7, 100, bytes.len() / 2] {
            let _ = sentencepiece_pieces(&bytes[..cut]);
        }
        assert!(sentencepiece_pieces(b"\x0a\xff\xff\xff\xff\x0f").is_err());
        assert!(sentencepiece_pieces(b"").is_err());
    }
}
