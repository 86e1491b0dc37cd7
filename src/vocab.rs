//! Tokenizer metadata for GGUF from a Hugging Face tokenizer (`tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja`), as llama.cpp's converter writes it for
//! byte-level BPE (`gpt2`) vocabularies: `_set_vocab_gpt2` and gguf-py's `SpecialVocab`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

/// GGUF metadata entries, in order.
pub type Metadata = Vec<(String, Value)>;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The split regex of o200k (gpt-4o, gpt-oss); llama.cpp calls its pre-tokenizer `gpt-4o`.
pub const O200K_REGEX: &str = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

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
/// `config` is the model's `config.json` (for special token ids). Returns the keys and
/// warnings.
pub fn gpt2_vocab(dir: &Path, config: &Json, vocab_size: usize, pre: &str) -> Result<(Metadata, Vec<String>)> {
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
        && pre == "gpt-4o"
        && regex != O200K_REGEX
    {
        warnings.push(format!(
            "{}: the pre-tokenizer split regex is not o200k's, but the GGUF says 'gpt-4o'; pass --tokenizer-pre to choose another",
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
    keys.extend(special_tokens(dir, &tok, &added, config, vocab_size)?);
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
fn special_tokens(
    dir: &Path,
    tok: &Json,
    added: &[Json],
    config: &Json,
    n_vocab: usize,
) -> Result<Vec<(String, Value)>> {
    const TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() { Some(read_json(&tc_path)?) } else { None };
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(&'static str, bool)>, typ: &'static str, v: bool, overwrite: bool| match add
        .iter_mut()
        .find(|(t, _)| *t == typ)
    {
        Some(entry) if overwrite => entry.1 = v,
        Some(_) => {}
        None => add.push((typ, v)),
    };
    if let Some(pp) = tok.get("post_processor").filter(|p| p.is_object()) {
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
                    let special = |e: &Json| e.pointer("/SpecialToken/id").and_then(Json::as_str).map(str::to_string);
                    let tc_token = |k: &str| tc.as_ref().and_then(|c| c.get(k)).and_then(token_content);
                    if single.len() > 1 {
                        if let Some(first) = special(&single[0]) {
                            set_add(&mut add, "bos", tc_token("bos_token").as_deref() == Some(first.as_str()), true);
                        }
                        if let Some(last) = single.last().and_then(special) {
                            set_add(&mut add, "eos", tc_token("eos_token").as_deref() == Some(last.as_str()), true);
                        }
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
    if let Some(tc) = &tc {
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
