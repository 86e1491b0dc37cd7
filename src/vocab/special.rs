//! Special tokens, add-bos/eos flags and the chat template, as gguf-py's `SpecialVocab` reads
//! them from `tokenizer.json`, `tokenizer_config.json` and `config.json`.

use std::path::Path;

use anyhow::{Context, Result};
use moeq_formats::gguf::Value;
use serde_json::Value as Json;

use super::Metadata;

/// The converter's `does_token_look_special`.
pub(super) fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Special token ids, add-bos/eos flags and the chat template, in `SpecialVocab`'s order.
/// `tc` is `tokenizer_config.json`, when there is one.
pub(super) fn special_tokens(
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
