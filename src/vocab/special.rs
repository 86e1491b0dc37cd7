//! Special tokens, add-bos/eos flags, BPE merges, chat templates and normalizer flags, as
//! gguf-py's `SpecialVocab` (gguf-py/gguf/vocab.py) reads them from `tokenizer.json`,
//! `tokenizer_config.json`, `chat_template.jinja` (with `additional_chat_templates/`),
//! `chat_template.json`, `merges.txt` and `config.json`, and writes them (`add_to_gguf`).
//!
//! Its rules, followed here step by step:
//! - `tokenizer.json`'s post-processor decides the add-bos/eos/sep flags (ByteLevel: none;
//!   RobertaProcessing: all; TemplateProcessing: its first and last special tokens, and the
//!   separator of its pair template), and may rename the EOS (the old one becomes `eot`, then
//!   `eom`).
//! - With a non-empty `tokenizer_config.json`: the chat template is its `chat_template` key
//!   when present (even `null`), else `chat_template.jinja` (a list of named templates when
//!   `additional_chat_templates/*.jinja` exist), else `chat_template.json`'s `chat_template`;
//!   `add_*_token` flags fill in what the post-processor left unset; `*_token` contents are
//!   looked up in `tokenizer.json`'s `added_tokens` (first match).
//! - `config.json`'s `*_token_id` integers (or its `text_config`'s) fill in the ids still
//!   missing.
//! - An id is kept only below the vocabulary size (when one is given); the first id of a type
//!   wins.

use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{Array, Value};
use serde_json::{Map, Value as Json};

use super::{Metadata, read_if_present};

/// The converter's `does_token_look_special`.
pub(super) fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// gguf-py's default special token types.
pub const DEFAULT_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// What gguf-py's `SpecialVocab` collects for a tokenizer folder.
#[derive(Debug, Default)]
pub struct SpecialVocab {
    /// BPE merges (`"left right"`), when asked for.
    pub merges: Vec<String>,
    /// `add_{type}_token` flags, in the order they were first set.
    pub add: Vec<(String, bool)>,
    /// Special token ids by type, in the order they were first set.
    pub ids: Vec<(String, u64)>,
    /// The chat template: a string or a list of `{"name", "template"}`.
    pub chat_template: Option<Json>,
    /// The normalizer lowercases / strips accents.
    pub lowercase: Option<bool>,
    pub strip_accents: Option<bool>,
    /// The special token types looked for (gguf-py adds `eot`/`eom` when the post-processor
    /// renames the EOS).
    types: Vec<String>,
    /// Ids must be below this, when given.
    n_vocab: Option<usize>,
    load_merges: bool,
    /// What gguf-py warns about that a user should know.
    pub warnings: Vec<String>,
}

/// Python's truthiness of a JSON value (`None`, `false`, `0`, `""`, `[]`, `{}` are false).
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// Sets `key` in an insertion-ordered list (a Python dict assignment).
fn assign<V>(list: &mut Vec<(String, V)>, key: &str, value: V) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.to_string(), value)),
    }
}

/// `dict.setdefault`.
fn set_default<V>(list: &mut Vec<(String, V)>, key: &str, value: V) {
    if !list.iter().any(|(k, _)| k == key) {
        list.push((key.to_string(), value));
    }
}

/// `get(key)` on a JSON object, `None` for absent keys and for values that are not objects.
fn get<'j>(obj: Option<&'j Json>, key: &str) -> Option<&'j Json> {
    obj.and_then(|o| o.get(key))
}

/// The id of a special token in a template (`{"SpecialToken": {"id": ...}}`), when truthy.
fn template_special(entry: Option<&Json>) -> Option<Json> {
    let id = entry?.get("SpecialToken")?.get("id")?;
    truthy(Some(id)).then(|| id.clone())
}

impl SpecialVocab {
    /// Reads the special tokens of the tokenizer in `dir` as `gguf.SpecialVocab(dir,
    /// load_merges, special_token_types, n_vocab)` does; `config` is the model's
    /// `config.json`. `types` `None` means [`DEFAULT_TYPES`].
    ///
    /// Errors: unreadable or malformed JSON files, a merges list of an unknown format, a
    /// negative special token id — where gguf-py fails too.
    pub fn load(
        dir: &Path,
        config: &Json,
        load_merges: bool,
        types: Option<&[&str]>,
        n_vocab: Option<usize>,
    ) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab {
            types: types.unwrap_or(&DEFAULT_TYPES).iter().map(|t| t.to_string()).collect(),
            n_vocab,
            load_merges,
            ..SpecialVocab::default()
        };
        sv.load_tokenizer_files(dir)?;
        sv.load_config(config)?;
        if sv.load_merges && sv.merges.is_empty() {
            sv.load_merges_txt(&dir.join("merges.txt"))?;
        }
        Ok(sv)
    }

    /// Sets the id of a special token type unless one is set (gguf-py's `_set_special_token`
    /// with an integer id).
    ///
    /// Errors: an id beyond a GGUF token id.
    pub fn set_id(&mut self, typ: &str, id: u64) -> Result<()> {
        self.set_special_token(typ, Some(&Json::from(id)))
    }

    /// `_set_special_token`: keeps integer ids (a JSON `true` is Python's 1) below the
    /// vocabulary size; the first id of a type wins.
    fn set_special_token(&mut self, typ: &str, tid: Option<&Json>) -> Result<()> {
        let id = match tid {
            Some(Json::Bool(b)) => i128::from(*b),
            Some(Json::Number(n)) if n.is_i64() || n.is_u64() => {
                n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)).unwrap_or(0)
            }
            _ => return Ok(()),
        };
        if id < 0 {
            bail!("invalid value for special token type {typ}: {id}");
        }
        if id > i128::from(u32::MAX) {
            bail!("special token type {typ}: id {id} does not fit in a GGUF token id");
        }
        let id = id as u64;
        if self.n_vocab.is_none_or(|n| id < n as u64) {
            set_default(&mut self.ids, typ, id);
        } else {
            self.warnings.push(format!(
                "special token type {typ}, id {id} out of range, must be under {} - skipping",
                self.n_vocab.unwrap_or(0)
            ));
        }
        Ok(())
    }

    /// `_parse_normalizer`.
    fn parse_normalizer(&mut self, normalizer: &Json) {
        match normalizer.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = normalizer.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = normalizer.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for n in normalizer.get("normalizers").and_then(Json::as_array).into_iter().flatten() {
                    self.parse_normalizer(n);
                }
            }
            _ => {}
        }
    }

    /// `_try_load_from_tokenizer_json`: `tokenizer.json`, `tokenizer_config.json` and the chat
    /// template files.
    fn load_tokenizer_files(&mut self, dir: &Path) -> Result<()> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = read_if_present(&tok_path)?;
        let mut added_tokens: Vec<Json> = Vec::new();
        if let Some(tok) = &tokenizer {
            if self.load_merges {
                self.merges = merges_of(tok).with_context(|| format!("{}", tok_path.display()))?;
            }
            if let Some(n) = tok.get("normalizer").filter(|n| truthy(Some(n))) {
                self.parse_normalizer(n);
            }
            added_tokens = tok.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
        }
        let tc_path = dir.join("tokenizer_config.json");
        let mut tc: Option<Map<String, Json>> = match read_if_present(&tc_path)? {
            None => None,
            Some(Json::Object(o)) => Some(o),
            Some(_) => bail!("{}: not a JSON object", tc_path.display()),
        };
        if let Some(tok) = tokenizer.as_ref().filter(|t| truthy(Some(t))) {
            self.read_post_processor(tok, &mut tc);
        }
        let Some(tc) = tc.filter(|t| !t.is_empty()) else { return Ok(()) };
        self.chat_template = chat_template(dir, &tc, &tc_path, &mut self.warnings)?;
        for typ in self.types.clone() {
            if let Some(v) = tc.get(&format!("add_{typ}_token")).and_then(Json::as_bool) {
                match self.add.iter().find(|(t, _)| *t == typ) {
                    None => self.add.push((typ.clone(), v)),
                    Some(&(_, existing)) if existing != v => self.warnings.push(format!(
                        "{}: add_{typ}_token is {v} but the tokenizer's post-processor says {existing}; \
                         using the post-processor's",
                        tc_path.display()
                    )),
                    Some(_) => {}
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added_tokens.iter().find(|a| a.get("content").and_then(Json::as_str) == Some(&content));
            self.set_special_token(&typ, id.and_then(|a| a.get("id")))?;
        }
        Ok(())
    }

    /// gguf-py's reading of `tokenizer.json`'s post-processor: the add flags, and the special
    /// tokens it implies (written into `tc` as gguf-py does).
    fn read_post_processor(&mut self, tok: &Json, tc: &mut Option<Map<String, Json>>) {
        let tc_truthy = |tc: &Option<Map<String, Json>>| tc.as_ref().is_some_and(|t| !t.is_empty());
        let tc_get = |tc: &Option<Map<String, Json>>, k: &str| tc.as_ref().and_then(|t| t.get(k)).cloned();
        let (mut bos, mut cls) = (tc_get(tc, "bos_token"), tc_get(tc, "cls_token"));
        let (mut eos, mut sep) = (tc_get(tc, "eos_token"), tc_get(tc, "sep_token"));
        let set_tc = |tc: &mut Option<Map<String, Json>>, k: &str, v: &Option<Json>| {
            if let Some(t) = tc.as_mut() {
                t.insert(k.to_string(), v.clone().unwrap_or(Json::Null));
            }
        };
        if !truthy(bos.as_ref()) && truthy(cls.as_ref()) && tc_truthy(tc) {
            bos = cls.clone();
            set_tc(tc, "bos_token", &bos);
        }
        if !truthy(eos.as_ref()) && truthy(sep.as_ref()) && tc_truthy(tc) {
            eos = sep.clone();
            set_tc(tc, "eos_token", &eos);
        }
        let Some(pp) = tok.get("post_processor").filter(|p| truthy(Some(p))) else { return };
        let processors = match pp.get("processors") {
            Some(Json::Array(list)) => list.clone(),
            _ => vec![pp.clone()],
        };
        for p in &processors {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    set_default(&mut self.add, "bos", false);
                    set_default(&mut self.add, "eos", false);
                }
                Some("RobertaProcessing") => {
                    for t in ["bos", "eos", "sep"] {
                        assign(&mut self.add, t, true);
                    }
                    if !truthy(cls.as_ref()) && tc_truthy(tc) {
                        cls = p.get("cls").and_then(|c| c.get(0)).cloned().or(bos.clone());
                        set_tc(tc, "cls_token", &cls);
                    }
                    if !truthy(sep.as_ref()) && tc_truthy(tc) {
                        sep = p.get("sep").and_then(|c| c.get(0)).cloned().or(eos.clone());
                        set_tc(tc, "sep_token", &sep);
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = Vec::new();
                    let single = p.get("single").and_then(Json::as_array).unwrap_or(&empty);
                    let mut pair: &[Json] = p.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                    let (mut first, mut last) = (None, None);
                    if single.len() > 1 {
                        first = template_special(single.first());
                        if let Some(f) = &first {
                            let f = Some(f.clone());
                            if !tc_truthy(tc) {
                                bos = f.clone();
                            } else if f != bos && f != cls {
                                if !truthy(bos.as_ref()) {
                                    bos = f.clone();
                                    set_tc(tc, "bos_token", &bos);
                                }
                                if !truthy(cls.as_ref()) {
                                    cls = f.clone();
                                    set_tc(tc, "cls_token", &cls);
                                }
                            }
                            assign(&mut self.add, "bos", f == bos || f == cls);
                        }
                        last = template_special(single.last());
                        if let Some(l) = &last {
                            let l = Some(l.clone());
                            if !tc_truthy(tc) {
                                eos = l.clone();
                            } else if l != eos {
                                if !self.types.iter().any(|t| t == "eot") {
                                    self.types.push("eot".into());
                                    set_tc(tc, "eot_token", &eos);
                                } else if !self.types.iter().any(|t| t == "eom") {
                                    self.types.push("eom".into());
                                    set_tc(tc, "eom_token", &eos);
                                }
                                eos = l.clone();
                                set_tc(tc, "eos_token", &eos);
                            }
                            assign(&mut self.add, "eos", l == eos);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && template_special(pair.first()) == first);
                        let stop_trim = usize::from(last.is_some() && template_special(pair.last()) == last);
                        pair = if start <= pair.len().saturating_sub(stop_trim) {
                            &pair[start..pair.len() - stop_trim]
                        } else {
                            &[]
                        };
                        fn seq(e: Option<&Json>) -> Option<&str> {
                            e?.get("Sequence")?.get("id")?.as_str()
                        }
                        if !pair.is_empty()
                            && seq(pair.first()) == Some("A")
                            && seq(pair.last()) == Some("B")
                            && pair.len() > 2
                        {
                            let inner = &pair[1..pair.len() - 1];
                            let is_sep = |t: &Option<Json>| t.is_some() && (*t == sep || *t == eos);
                            let mut add_sep = false;
                            let entry = template_special(inner.first());
                            if entry.is_some() && is_sep(&entry) && last.is_none() {
                                add_sep = true;
                            }
                            if inner.len() == 2 && is_sep(&template_special(inner.get(1))) {
                                add_sep = true;
                            }
                            assign(&mut self.add, "sep", add_sep);
                            if add_sep && !truthy(sep.as_ref()) && tc_truthy(tc) {
                                set_tc(tc, "sep_token", &eos);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `_try_load_from_config_json`: `*_token_id` integers of `config.json` (or its
    /// `text_config`).
    fn load_config(&mut self, config: &Json) -> Result<()> {
        if !config.is_object() {
            return Ok(());
        }
        for typ in self.types.clone() {
            let key = format!("{typ}_token_id");
            let mut id = config.get(&key).filter(|v| !v.is_null());
            if id.is_none() {
                id = get(config.get("text_config"), &key);
            }
            self.set_special_token(&typ, id)?;
        }
        Ok(())
    }

    /// `_try_load_merges_txt`: `left right` per line, an optional `#` header line first.
    fn load_merges_txt(&mut self, path: &Path) -> Result<()> {
        if !path.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let mut lines = text.split_inclusive('\n').peekable();
        if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
            lines.next();
        }
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.len() {
                0 => {}
                2 => self.merges.push(format!("{} {}", parts[0], parts[1])),
                _ => self.warnings.push(format!("{}: a line is not a merge, ignored", path.display())),
            }
        }
        Ok(())
    }

    /// The keys `add_to_gguf` writes, in its order: merges, special ids, add flags, chat
    /// templates, normalizer flags. Types gguf-py has no key for (`cls`, `prefix`, ...) are
    /// left out, as gguf-py leaves them out.
    ///
    /// Errors: a chat template list entry that is not `{"name": string, "template": string}`.
    pub fn metadata(&self) -> Result<Metadata> {
        let mut out: Metadata = Vec::new();
        if !self.merges.is_empty() {
            out.push(("tokenizer.ggml.merges".into(), Value::Array(Array::String(self.merges.clone()))));
        }
        for (typ, id) in &self.ids {
            let key = match typ.as_str() {
                "bos" | "eos" | "mask" | "eot" | "eom" => typ.clone(),
                "unk" => "unknown".into(),
                "sep" => "seperator".into(),
                "pad" => "padding".into(),
                _ => continue,
            };
            out.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(*id as u32)));
        }
        for (typ, v) in &self.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                out.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(*v)));
            }
        }
        if let Some(t) = &self.chat_template {
            out.extend(chat_template_keys(t)?);
        }
        if let Some(v) = self.lowercase {
            out.push(("tokenizer.ggml.normalizer.lowercase".into(), Value::Bool(v)));
        }
        if let Some(v) = self.strip_accents {
            out.push(("tokenizer.ggml.normalizer.strip_accents".into(), Value::Bool(v)));
        }
        Ok(out)
    }
}

/// `model.merges` of a `tokenizer.json` as `"left right"` strings: the old format (strings)
/// as is, the new one (pairs) joined with a space, spaces inside a pair written as U+0120, as
/// gguf-py does.
fn merges_of(tok: &Json) -> Result<Vec<String>> {
    let Some(list) = tok.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    match list.first() {
        None => Ok(Vec::new()),
        Some(Json::String(_)) => {
            list.iter().map(|m| m.as_str().map(str::to_string).context("a merge is not a string")).collect()
        }
        Some(Json::Array(p)) if p.len() == 2 && p[0].is_string() => list
            .iter()
            .map(|m| {
                let pair = m.as_array().filter(|p| p.len() == 2).context("a merge is not a pair of strings")?;
                let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => bail!("a merge is not a pair of strings"),
                }
            })
            .collect(),
        Some(_) => bail!("unknown tokenizer merges format"),
    }
}

/// The chat template gguf-py takes for a folder with a non-empty `tokenizer_config.json`
/// (`tc`): its `chat_template` key when present, else `chat_template.jinja` (with
/// `additional_chat_templates/*.jinja`, sorted by name, as named templates), else
/// `chat_template.json`'s `chat_template`. A value that is neither a string nor a list is
/// ignored with a warning.
fn chat_template(
    dir: &Path,
    tc: &Map<String, Json>,
    tc_path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<Json>> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()));
    let jinja = dir.join("chat_template.jinja");
    let json = dir.join("chat_template.json");
    let mut alt = None;
    if jinja.is_file() {
        let default = read(&jinja)?;
        let mut extra: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("additional_chat_templates"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        extra.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "jinja"));
        extra.sort();
        if extra.is_empty() {
            alt = Some(Json::String(default));
        } else {
            let mut list = vec![serde_json::json!({"name": "default", "template": default})];
            for p in extra {
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                list.push(serde_json::json!({"name": name, "template": read(&p)?}));
            }
            alt = Some(Json::Array(list));
        }
    } else if json.is_file() {
        let j = super::read_json(&json)?;
        alt = match j {
            Json::Object(o) => o.get("chat_template").cloned(),
            _ => bail!("{}: not a JSON object", json.display()),
        };
    }
    let chosen = match tc.get("chat_template") {
        Some(v) => Some(v.clone()),
        None => alt,
    };
    match chosen {
        None | Some(Json::Null) => Ok(None),
        Some(t @ (Json::String(_) | Json::Array(_))) => Ok(Some(t)),
        Some(_) => {
            warnings.push(format!("{}: chat_template is neither a string nor a list; ignored", tc_path.display()));
            Ok(None)
        }
    }
}

/// gguf-py's `add_chat_template`: a string is `tokenizer.chat_template`; a list of named
/// templates gives `tokenizer.chat_template.NAME` for each (name characters other than ASCII
/// letters and digits become `_`), `tokenizer.chat_templates` (the names, in order of first
/// appearance: gguf-py builds it from a Python set, whose order varies from run to run), and
/// `tokenizer.chat_template` for the one named `default`. Empty templates are not written.
fn chat_template_keys(t: &Json) -> Result<Metadata> {
    let mut out: Metadata = Vec::new();
    let list = match t {
        Json::String(s) => {
            if !s.is_empty() {
                out.push(("tokenizer.chat_template".into(), Value::String(s.clone())));
            }
            return Ok(out);
        }
        Json::Array(list) => list,
        _ => return Ok(out),
    };
    let (mut default, mut names): (Option<String>, Vec<String>) = (None, Vec::new());
    for choice in list {
        let Json::Object(choice) = choice else { bail!("a chat template in the list is not an object") };
        let name = match choice.get("name") {
            None => String::new(),
            Some(Json::String(s)) => s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect(),
            Some(_) => bail!("a chat template's name is not a string"),
        };
        let template = match choice.get("template") {
            None | Some(Json::Null) => continue,
            Some(Json::String(s)) => s.clone(),
            Some(_) => bail!("chat template '{name}' is not a string"),
        };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(template);
        } else {
            if !names.contains(&name) {
                names.push(name.clone());
            }
            if !template.is_empty() {
                let key = format!("tokenizer.chat_template.{name}");
                assign(&mut out, &key, Value::String(template));
            }
        }
    }
    if !names.is_empty() {
        out.push(("tokenizer.chat_templates".into(), Value::Array(Array::String(names))));
    }
    if let Some(d) = default.filter(|d| !d.is_empty()) {
        out.push(("tokenizer.chat_template".into(), Value::String(d)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn folder(files: &[(&str, Json)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let text = match content {
                Json::String(s) if name.ends_with(".jinja") => s.clone(),
                other => other.to_string(),
            };
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn keys(m: &Metadata) -> Vec<&str> {
        m.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn chat_templates_follow_gguf_py_precedence() {
        let tc = json!({"bos_token": "<s>"});
        // tokenizer_config's key wins over the files, even when null.
        let d =
            folder(&[("tokenizer_config.json", json!({"chat_template": "TC"})), ("chat_template.jinja", json!("J"))]);
        let sv = SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap();
        assert_eq!(sv.chat_template, Some(json!("TC")));
        let d =
            folder(&[("tokenizer_config.json", json!({"chat_template": null})), ("chat_template.jinja", json!("J"))]);
        assert_eq!(SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap().chat_template, None);
        // .jinja before .json.
        let d = folder(&[
            ("tokenizer_config.json", tc.clone()),
            ("chat_template.jinja", json!("J")),
            ("chat_template.json", json!({"chat_template": "JSON"})),
        ]);
        assert_eq!(
            SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap().chat_template,
            Some(json!("J"))
        );
        let d =
            folder(&[("tokenizer_config.json", tc.clone()), ("chat_template.json", json!({"chat_template": "JSON"}))]);
        assert_eq!(
            SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap().chat_template,
            Some(json!("JSON"))
        );
        // No tokenizer_config.json (or an empty one): no template at all.
        let d = folder(&[("chat_template.jinja", json!("J"))]);
        assert_eq!(SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap().chat_template, None);
        // Additional templates make a named list.
        let d = folder(&[
            ("tokenizer_config.json", tc),
            ("chat_template.jinja", json!("J")),
            ("additional_chat_templates/tool-use.jinja", json!("T")),
        ]);
        let sv = SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap();
        let m = sv.metadata().unwrap();
        assert_eq!(
            keys(&m),
            ["tokenizer.chat_template.tool_use", "tokenizer.chat_templates", "tokenizer.chat_template"]
        );
        assert_eq!(m[1].1, Value::Array(Array::String(vec!["tool_use".into()])));
        assert_eq!(m[2].1, Value::String("J".into()));
    }

    #[test]
    fn malformed_template_lists_are_errors() {
        assert!(chat_template_keys(&json!([1])).is_err());
        assert!(chat_template_keys(&json!([{"name": 3, "template": "x"}])).is_err());
        assert!(chat_template_keys(&json!([{"name": "a", "template": 3}])).is_err());
        let m = chat_template_keys(&json!([{"name": "a", "template": ""}, {"template": "x"}])).unwrap();
        assert_eq!(keys(&m), ["tokenizer.chat_templates"]);
    }

    #[test]
    fn post_processors_set_the_add_flags() {
        let single =
            json!([{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "</s>"}}]);
        let tok = json!({"post_processor": {"type": "TemplateProcessing", "single": single, "pair": []}});
        let d = folder(&[
            ("tokenizer.json", tok),
            ("tokenizer_config.json", json!({"bos_token": "<s>", "eos_token": "<|end|>"})),
        ]);
        let sv = SpecialVocab::load(d.path(), &json!({}), false, None, None).unwrap();
        // The template's last token renames the EOS; the old one becomes `eot`.
        assert_eq!(sv.add, vec![("bos".to_string(), true), ("eos".to_string(), true)]);
        assert!(sv.types.contains(&"eot".to_string()));
        let d = folder(&[("tokenizer.json", json!({"post_processor": {"type": "ByteLevel"}}))]);
        let sv = SpecialVocab::load(
            d.path(),
            &json!({"bos_token_id": 5, "eos_token_id": [1, 2], "pad_token_id": -1}),
            false,
            None,
            None,
        );
        assert!(sv.is_err(), "a negative id is an error, as in gguf-py");
        let sv =
            SpecialVocab::load(d.path(), &json!({"bos_token_id": 5, "eos_token_id": [1, 2]}), false, None, Some(5))
                .unwrap();
        assert_eq!(sv.ids, vec![]);
        assert_eq!(sv.add, vec![("bos".to_string(), false), ("eos".to_string(), false)]);
    }
}
