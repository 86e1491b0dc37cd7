//! Tokenizer metadata for GGUF from a Hugging Face tokenizer (`tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`), as llama.cpp's converter writes it for
//! byte-level BPE (`gpt2`) vocabularies: `_set_vocab_gpt2` and gguf-py's `SpecialVocab`.

pub mod model_card;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

use crate::families::ModelConfig;

/// GGUF metadata entries, in order.
pub type Metadata = Vec<(String, Value)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

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
/// llama.cpp's `_set_vocab_sentencepiece` writes them: the `llama` model, pieces, scores and
/// types, added tokens from `tokenizer_config.json`, special ids.
pub fn sentencepiece_vocab(dir: &Path, config: &Json, vocab_size: usize) -> Result<Metadata> {
    let path = dir.join("tokenizer.model");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let pieces = sentencepiece_pieces(&bytes).with_context(|| format!("{}", path.display()))?;
    let n = if vocab_size == 0 { pieces.len() } else { vocab_size };
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
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let added = read_json(&added_path)?;
        for (token, id) in added.as_object().into_iter().flatten() {
            if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < n) {
                tokens[id] = token.clone();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    let tc = read_if_present(&dir.join("tokenizer_config.json"))?;
    if let Some(decoder) = tc.as_ref().and_then(|t| t.get("added_tokens_decoder")).and_then(Json::as_object) {
        for (id, data) in decoder {
            let (Ok(id), Some(content)) = (id.parse::<usize>(), data.get("content").and_then(Json::as_str)) else {
                continue;
            };
            if id >= n {
                continue;
            }
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
    let tok = read_if_present(&dir.join("tokenizer.json"))?;
    let added = tok.as_ref().and_then(|t| t.get("added_tokens")).and_then(Json::as_array).cloned().unwrap_or_default();
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.scores".to_string(), Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(Array::I32(types))),
    ];
    keys.extend(special_tokens(dir, tok.as_ref(), tc.as_ref(), &added, config, n)?);
    Ok(keys)
}

/// The split regex of a (possibly sequenced) pre-tokenizer.
fn split_regex(pre: Option<&Json>) -> Option<&str> {
    let pre = pre?;
    if pre.get("type").and_then(Json::as_str) == Some("Split") {
        return pre.pointer("/pattern/Regex").and_then(Json::as_str);
    }
    pre.get("pretokenizers")?.as_array()?.iter().find_map(|p| split_regex(Some(p)))
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
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

/// Special token ids, add-bos/eos flags and the chat template, in `SpecialVocab`'s order.
/// `tc` is `tokenizer_config.json`, when there is one.
fn special_tokens(
    dir: &Path,
    tok: Option<&Json>,
    tc: Option<&Json>,
    added: &[Json],
    config: &Json,
    n_vocab: usize,
) -> Result<Metadata> {
    const TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(&'static str, bool)>, typ: &'static str, v: bool, overwrite: bool| match add
        .iter_mut()
        .find(|(t, _)| *t == typ)
    {
        Some(entry) if overwrite => entry.1 = v,
        Some(_) => {}
        None => add.push((typ, v)),
    };
    let tc_token = |k: &str| tc.and_then(|c| c.get(k)).and_then(token_content);
    if let Some(pp) = tok.and_then(|t| t.get("post_processor")).filter(|p| p.is_object()) {
        let procs = pp.get("processors").and_then(Json::as_array).cloned().unwrap_or_else(|| vec![pp.clone()]);
        for p in procs {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, false);
                    set_add(&mut add, "eos", false, false);
                }
                Some("RobertaProcessing") => {
                    for t in ["bos", "eos", "sep"] {
                        set_add(&mut add, t, true, true);
                    }
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
                    let pair = p.get("pair").and_then(Json::as_array).cloned().unwrap_or_default();
                    let special = |e: &Json| e.pointer("/SpecialToken/id").and_then(Json::as_str).map(str::to_string);
                    let sequence = |e: &Json| e.pointer("/Sequence/id").and_then(Json::as_str).map(str::to_string);
                    let (bos, eos, sep) = (tc_token("bos_token"), tc_token("eos_token"), tc_token("sep_token"));
                    let (mut first, mut last) = (None, None);
                    if single.len() > 1 {
                        first = special(&single[0]);
                        if let Some(f) = &first {
                            set_add(&mut add, "bos", bos.as_deref() == Some(f.as_str()), true);
                        }
                        last = single.last().and_then(special);
                        if let Some(l) = &last {
                            set_add(&mut add, "eos", eos.as_deref() == Some(l.as_str()), true);
                        }
                    }
                    // gguf-py's reading of the pair template: a separator between A and B.
                    let start = usize::from(first.is_some() && pair.first().and_then(special) == first);
                    let stop =
                        pair.len().saturating_sub(usize::from(last.is_some() && pair.last().and_then(special) == last));
                    let middle = if start < stop { &pair[start..stop] } else { &[][..] };
                    if middle.len() > 2
                        && sequence(&middle[0]).as_deref() == Some("A")
                        && sequence(&middle[middle.len() - 1]).as_deref() == Some("B")
                    {
                        let inner = &middle[1..middle.len() - 1];
                        let is_sep = |t: &Option<String>| t.is_some() && (*t == sep || *t == eos);
                        let mut add_sep = is_sep(&special(&inner[0])) && last.is_none();
                        if inner.len() == 2 && is_sep(&special(&inner[1])) {
                            add_sep = true;
                        }
                        set_add(&mut add, "sep", add_sep, true);
                    }
                }

                _ => {}
            }
        }
    }
    let mut ids: Vec<(&str, u64)> = Vec::new();
    let set_id = |ids: &mut Vec<(&'static str, u64)>, typ: &'static str, id: Option<u64>| {
        if let Some(id) = id
            && (id as usize) < n_vocab
            && !ids.iter().any(|(t, _)| *t == typ)
        {
            ids.push((typ, id));
        }
    };
    let mut chat_template = None;
    if let Some(tc) = tc {
        let jinja = dir.join("chat_template.jinja");
        let alt = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).with_context(|| format!("{}: cannot read", jinja.display()))?)
        } else {
            None
        };
        chat_template = tc.get("chat_template").and_then(Json::as_str).map(str::to_string).or(alt);
        for typ in TYPES {
            if let Some(v) = tc.get(format!("add_{typ}_token")).and_then(Json::as_bool) {
                set_add(&mut add, typ, v, false);
            }
            let Some(content) = tc.get(format!("{typ}_token")).and_then(token_content) else { continue };
            let id = added.iter().find(|a| a.get("content").and_then(Json::as_str) == Some(&content));
            set_id(&mut ids, typ, id.and_then(|a| a.get("id")).and_then(Json::as_u64));
        }
    }
    for typ in TYPES {
        set_id(&mut ids, typ, config.get(format!("{typ}_token_id")).and_then(Json::as_u64));
    }
    // gguf-py's key names (sic); it has no key for `cls`.
    let id_key = |typ: &'static str| -> Option<&'static str> {
        match typ {
            "unk" => Some("unknown"),
            "sep" => Some("seperator"),
            "pad" => Some("padding"),
            "cls" => None,
            other => Some(other),
        }
    };
    let mut out: Vec<(String, Value)> = ids
        .into_iter()
        .filter_map(|(t, id)| Some((format!("tokenizer.ggml.{}_token_id", id_key(t)?), Value::U32(id as u32))))
        .collect();
    out.extend(
        add.into_iter()
            .filter(|(t, _)| matches!(*t, "bos" | "eos" | "sep"))
            .map(|(t, v)| (format!("tokenizer.ggml.add_{t}_token"), Value::Bool(v))),
    );
    if let Some(t) = chat_template {
        out.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(out)
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
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
