//! The `general.*` metadata llama.cpp's converter derives for a checkpoint (gguf-py's
//! `Metadata.load` heuristics): a name and size label from `_name_or_path` or the folder name,
//! and the parameter count written as a size class like `20B` or `4x117K`.

use std::path::Path;

use moeq_formats::gguf::{Array, Value};
use serde_json::Value as Json;

/// The naming parts gguf-py reads out of a model id like `openai/gpt-oss-20b`.
#[derive(Debug, Default, PartialEq)]
pub struct ModelId {
    /// The full name (`gpt-oss-20b`).
    pub full_name: String,
    /// The organization, if the id has one.
    pub org: Option<String>,
    /// `gpt-oss`.
    pub basename: Option<String>,
    /// `Instruct`, context lengths and other trailing words.
    pub finetune: Option<String>,
    /// `v0.1`.
    pub version: Option<String>,
    /// `20B`.
    pub size_label: Option<String>,
}

/// Parameter counts of the tensors written, as gguf-py's `get_total_parameter_count` adds
/// them: a 3-D tensor named `*_exps.*` counts once per expert.
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamCount {
    /// All parameters.
    pub total: u64,
    /// Parameters outside the experts.
    pub shared: u64,
    /// Parameters of one expert.
    pub per_expert: u64,
    /// Experts per layer.
    pub experts: u64,
}

impl ParamCount {
    /// Counts tensors given by name and numpy-order shape.
    pub fn of<'a>(tensors: impl IntoIterator<Item = (&'a str, Vec<u64>)>) -> ParamCount {
        let (mut c, mut expert_sum, mut n_expert_tensors) = (ParamCount::default(), 0, 0);
        for (name, shape) in tensors {
            let size: u64 = shape.iter().product();
            if name.contains("_exps.") && shape.len() >= 3 {
                let e = shape[shape.len() - if name.contains(".bias") { 2 } else { 3 }].max(1);
                c.per_expert += size / e;
                expert_sum += e;
                n_expert_tensors += 1;
            } else {
                c.shared += size;
            }
            c.total += size;
        }
        c.experts = expert_sum.checked_div(n_expert_tensors).unwrap_or(0);
        c
    }

    /// gguf-py's `size_label`: `4x117K`, `20B`.
    pub fn size_label(&self) -> String {
        if self.experts > 0 {
            format!("{}x{}", self.experts, rounded(self.shared + self.per_expert))
        } else {
            rounded(self.total)
        }
    }
}

/// gguf-py's `model_weight_count_rounded_notation` with two significant digits at least.
fn rounded(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round_ties_even() as u64);
    let fix = 2usize.saturating_sub(digits.trim_start_matches('0').len());
    format!("{scaled:.fix$}{suffix}")
}

/// gguf-py's `id_to_title`: dashes to spaces, lower-case words capitalized unless they look
/// like versions or numbers.
pub fn id_to_title(id: &str) -> String {
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            let versionish = w.starts_with(|c: char| c.is_ascii_digit()) || is_version(w, false);
            if lower && !versionish { title_case(w) } else { w.to_string() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.title()` for one word: upper case after every non-letter.
fn title_case(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_letter = false;
    for c in w.chars() {
        if prev_letter {
            out.extend(c.to_lowercase())
        } else {
            out.extend(c.to_uppercase())
        }
        prev_letter = c.is_alphabetic();
    }
    out
}

/// `(v|iter)?\d+([.]\d+)*` (with `iter` only when `iter` is set), whole word, any case.
fn is_version(part: &str, iter: bool) -> bool {
    let lower = part.to_ascii_lowercase();
    let rest = if iter && lower.starts_with("iter") { &lower[4..] } else { lower.strip_prefix('v').unwrap_or(&lower) };
    !rest.is_empty() && rest.split('.').all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `i?q\d(_\w)*|b?fp?(16|32)`, any case.
fn is_quant_type(part: &str) -> bool {
    let p = part.to_ascii_lowercase();
    let q = p.strip_prefix('i').unwrap_or(&p);
    if let Some(rest) = q.strip_prefix('q') {
        let mut chars = rest.chars();
        if chars.next().is_some_and(|c| c.is_ascii_digit()) {
            let tail: String = chars.collect();
            return tail.is_empty() || tail.split('_').skip(1).all(|w| w.len() == 1) && tail.starts_with('_');
        }
    }
    let f = p.strip_prefix('b').unwrap_or(&p);
    let f = f.strip_prefix('f').map(|r| r.strip_prefix('p').unwrap_or(r));
    matches!(f, Some("16") | Some("32"))
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`, any case.
fn is_size(part: &str) -> bool {
    let p = part.to_ascii_lowercase();
    if matches!(p.as_str(), "small" | "mini" | "medium" | "large" | "xl" | "xxl") {
        return true;
    }
    let b = p.as_bytes();
    let digits = |i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut starts = vec![0];
    if b.first() == Some(&b'a') {
        starts.push(1);
    }
    let d = digits(0);
    if d > 0 && b.get(d) == Some(&b'x') {
        starts.push(d + 1);
    }
    starts.into_iter().any(|mut i| {
        let d = digits(i);
        if d == 0 {
            return false;
        }
        i += d;
        if matches!(b.get(i), Some(b'.') | Some(b'_')) && digits(i + 1) > 0 {
            i += 1 + digits(i + 1);
        }
        if !matches!(b.get(i), Some(b'k' | b'm' | b'b' | b't')) {
            return false;
        }
        i += 1;
        if b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i == b.len()
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Basename,
    Size,
    Finetune,
    Version,
    Type,
}

impl ModelId {
    /// gguf-py's `get_model_id_components`.
    pub fn parse(id: &str, total_params: u64) -> ModelId {
        if id.contains(' ') {
            return ModelId { full_name: id.to_string(), ..ModelId::default() };
        }
        let (org, full) = match id.split_once('/') {
            Some((o, f)) => (Some(o.to_string()).filter(|o| !o.is_empty() && !o.starts_with('.')), f),
            None => (None, id),
        };
        let mut parts: Vec<String> = full.split('-').filter(|p| !p.is_empty()).map(str::to_string).collect();
        let mut kinds: Vec<Vec<Part>> = vec![Vec::new(); parts.len()];
        for (i, part) in parts.iter_mut().enumerate() {
            if is_version(part, true) {
                kinds[i].push(Part::Version);
            } else if is_quant_type(part) {
                kinds[i].push(Part::Type);
                *part = part.to_uppercase();
            } else if i > 0 && is_size(part) {
                let mut p = part.replace('_', ".");
                let n = p.len();
                if p.as_bytes()[n - 1].is_ascii_digit() && n >= 2 {
                    // bloom-7b1 → 7.1B
                    p = format!("{}.{}{}", &p[..n - 2], &p[n - 1..], &p[n - 2..n - 1]);
                }
                let n = p.len();
                if n > 1
                    && p.as_bytes()[n - 2].is_ascii_digit()
                    && matches!(p.as_bytes()[n - 1], b'k' | b'm' | b'b' | b't')
                {
                    p = format!("{}{}", &p[..n - 1], p[n - 1..].to_uppercase());
                }
                if total_params != 0 {
                    let unit = " KMBT".find(&p[p.len() - 1..]);
                    if let (Ok(v), Some(unit)) = (p[..p.len() - 1].parse::<f64>(), unit) {
                        let label = v * 1000f64.powi(unit as i32);
                        if (label - total_params as f64).abs() > (7 * total_params / 8) as f64 {
                            kinds[i].push(Part::Finetune);
                            let n = p.len();
                            p = format!("{}{}", &p[..n - 1], p[n - 1..].to_lowercase());
                        }
                    }
                }
                if kinds[i].is_empty() {
                    kinds[i].push(Part::Size);
                }
                *part = p;
            } else if i > 0 && matches!(part.to_ascii_lowercase().as_str(), "chat" | "instruct" | "vision" | "lora") {
                kinds[i].push(Part::Finetune);
            }
        }
        let numeric_size =
            parts.iter().zip(&kinds).any(|(p, k)| k.contains(&Part::Size) && p.chars().any(|c| c.is_ascii_digit()));
        if numeric_size {
            for (p, k) in parts.iter().zip(kinds.iter_mut()) {
                if k.contains(&Part::Size) && p.chars().all(char::is_alphabetic) {
                    k.retain(|&x| x != Part::Size);
                }
            }
        }
        let mut at_start = true;
        for (p, k) in parts.iter().zip(kinds.iter_mut()) {
            let alpha_start = p.chars().next().is_some_and(char::is_alphabetic);
            if at_start && ((k.is_empty() && alpha_start) || k.contains(&Part::Version)) {
                k.push(Part::Basename);
            } else {
                at_start = false;
                if k.is_empty() {
                    k.push(Part::Finetune);
                }
            }
        }
        for k in kinds.iter_mut().rev() {
            if k.contains(&Part::Basename) && k.len() > 1 {
                k.retain(|&x| x != Part::Basename);
            } else {
                break;
            }
        }
        let join = |want: Part, exclude: Option<Part>| {
            let mut seen = Vec::new();
            for (p, k) in parts.iter().zip(&kinds) {
                if k.contains(&want)
                    && exclude.is_none_or(|x| !k.contains(&x))
                    && (want != Part::Size || !seen.contains(p))
                {
                    seen.push(p.clone());
                }
            }
            Some(seen.join("-")).filter(|s| !s.is_empty())
        };
        let mut basename = join(Part::Basename, None);
        let size_label = join(Part::Size, None);
        let finetune = join(Part::Finetune, None);
        let version = join(Part::Version, Some(Part::Basename));
        if size_label.is_none() && finetune.is_none() && version.is_none() {
            basename = None;
        }
        ModelId { full_name: full.to_string(), org, basename, finetune, version, size_label }
    }
}

/// The YAML front matter of a model card (`README.md`), as far as gguf-py reads it: scalar
/// `key: value` lines and lists (`key:` then `- item` lines, or `key: [a, b]`).
pub fn front_matter(text: &str) -> Vec<(String, Vec<String>)> {
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return Vec::new();
    }
    let unquote = |v: &str| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        if line.trim_end() == "---" {
            break;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            if line.starts_with([' ', '-'])
                && let Some(last) = out.last_mut()
            {
                last.1.push(unquote(item));
            }
            continue;
        }
        if line.starts_with(' ') || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let values = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(list) => list.split(',').map(unquote).filter(|v| !v.is_empty()).collect(),
            None if value.is_empty() => Vec::new(),
            None => vec![unquote(value)],
        };
        out.push((key.trim().to_string(), values));
    }
    out
}

/// `general.sampling.*` from `generation_config.json`, in gguf-py's order and types.
fn sampling(dir: &Path) -> Vec<(String, Value)> {
    let Some(cfg) =
        std::fs::read(dir.join("generation_config.json")).ok().and_then(|b| serde_json::from_slice::<Json>(&b).ok())
    else {
        return Vec::new();
    };
    let keys: [(&str, &[&str], char); 12] = [
        ("sequence", &["sequence"], 's'),
        ("top_k", &["top_k"], 'i'),
        ("top_p", &["top_p"], 'f'),
        ("min_p", &["min_p"], 'f'),
        ("xtc_probability", &["xtc_probability"], 'f'),
        ("xtc_threshold", &["xtc_threshold"], 'f'),
        ("temp", &["temperature"], 'f'),
        ("penalty_last_n", &["penalty_last_n"], 'i'),
        ("penalty_repeat", &["penalty_repeat", "repetition_penalty"], 'f'),
        ("mirostat", &["mirostat"], 'i'),
        ("mirostat_tau", &["mirostat_tau"], 'f'),
        ("mirostat_eta", &["mirostat_eta"], 'f'),
    ];
    let mut out = Vec::new();
    for (key, sources, kind) in keys {
        let Some(v) = sources.iter().find_map(|s| cfg.get(*s).filter(|v| !v.is_null())) else { continue };
        let value = match kind {
            's' => v.as_str().map(|s| Value::String(s.to_string())),
            'i' => v.as_i64().map(|n| Value::I32(n as i32)),
            _ => v.as_f64().map(|f| Value::F32(f as f32)),
        };
        if let Some(value) = value {
            out.push((format!("general.sampling.{key}"), value));
        }
    }
    out
}

/// The `general.*` keys after `general.type`, in gguf-py's order: sampling defaults, name,
/// author, version, organization, finetune, basename, description, size label, license,
/// base models, tags, languages. `dir` is the model folder, `config` its `config.json`.
pub fn general_metadata(dir: &Path, config: &Json, params: &ParamCount) -> Vec<(String, Value)> {
    let total = params.total;
    let card = std::fs::read_to_string(dir.join("README.md")).map(|t| front_matter(&t)).unwrap_or_default();
    let scalar = |keys: &[&str]| {
        keys.iter().find_map(|k| card.iter().find(|(c, v)| c == k && !v.is_empty()).map(|(_, v)| v[0].clone()))
    };
    let list = |key: &str| card.iter().filter(|(c, _)| c == key).flat_map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let mut name = scalar(&["name", "model_name"]);
    let author = scalar(&["author", "model_author", "model_creator"]);
    let mut version = scalar(&["version", "model_version"]);
    let mut org = scalar(&["organization", "model_organization"]);
    let description = scalar(&["description", "model_description"]);
    let mut finetune = scalar(&["finetune", "model_finetune"]);
    let mut basename = scalar(&["basename", "model_basename", "model_type"]);
    let mut size = scalar(&["size_label", "model_size_label"]);
    let mut ids = Vec::new();
    if let Some(id) = config.get("_name_or_path").and_then(Json::as_str).filter(|s| s.matches('/').count() <= 1) {
        ids.push(id.to_string());
    }
    if let Some(folder) = dir.file_name().and_then(|n| n.to_str()) {
        ids.push(folder.to_string());
    }
    for id in ids {
        let m = ModelId::parse(&id, total);
        name = name.or(Some(id_to_title(&m.full_name)));
        org = org.or(m.org.map(|o| id_to_title(&o)));
        basename = basename.or(m.basename);
        finetune = finetune.or(m.finetune);
        version = version.or(m.version);
        size = size.or(m.size_label);
    }
    let size = size.or_else(|| (total > 0).then(|| params.size_label()));
    let mut out = sampling(dir);
    let mut put = |key: String, v: Option<String>| {
        if let Some(v) = v {
            out.push((key, Value::String(v)));
        }
    };
    put("general.name".into(), name.or(Some("model".into())));
    put("general.author".into(), author);
    put("general.version".into(), version);
    put("general.organization".into(), org);
    put("general.finetune".into(), finetune);
    put("general.basename".into(), basename);
    put("general.description".into(), description);
    put("general.size_label".into(), size);
    let licenses = list("license");
    put("general.license".into(), (!licenses.is_empty()).then(|| licenses.join(",")));
    put("general.license.name".into(), scalar(&["license_name"]));
    put("general.license.link".into(), scalar(&["license_link"]));
    let base_models: Vec<String> = ["base_model", "base_models", "base_model_sources"]
        .iter()
        .map(|k| list(k))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if card.iter().any(|(k, _)| matches!(k.as_str(), "base_model" | "base_models" | "base_model_sources")) {
        out.push(("general.base_model.count".into(), Value::U32(base_models.len() as u32)));
    }
    for (i, id) in base_models.iter().enumerate() {
        // A Hugging Face id, or a URL (whose id is read when it is a huggingface.co one).
        let url = ["http://", "https://", "ssh://"].iter().any(|p| id.starts_with(p));
        let hf_id = if url {
            id.split_once("://")
                .and_then(|(_, rest)| rest.strip_prefix("huggingface.co/"))
                .filter(|rest| rest.matches('/').count() == 1 && !rest.split('/').any(str::is_empty))
        } else {
            Some(id.as_str())
        };
        let m = hf_id.map(|h| ModelId::parse(h, total));
        let key = |f: &str| format!("general.base_model.{i}.{f}");
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(m) = &m {
            fields.push(("name", id_to_title(&m.full_name)));
            if let Some(v) = &m.version {
                fields.push(("version", v.clone()));
            }
            if let Some(o) = &m.org {
                fields.push(("organization", id_to_title(o)));
            }
        }
        let repo = match (&m, url) {
            (_, true) => Some(id.clone()),
            (Some(ModelId { org: Some(o), .. }), false) => {
                m.as_ref().map(|m| format!("https://huggingface.co/{o}/{}", m.full_name))
            }
            _ => None,
        };
        fields.extend(repo.map(|r| ("repo_url", r)));
        out.extend(fields.into_iter().map(|(f, v)| (key(f), Value::String(v))));
    }
    let mut tags = list("tags");
    tags.extend(list("pipeline_tag"));
    if card.iter().any(|(k, _)| k == "tags" || k == "pipeline_tag") {
        out.push(("general.tags".into(), Value::Array(Array::String(tags))));
    }
    let languages: Vec<String> = ["languages", "language"].iter().flat_map(|k| list(k)).collect();
    if card.iter().any(|(k, _)| k == "languages" || k == "language") {
        out.push(("general.languages".into(), Value::Array(Array::String(languages))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_parse_like_gguf_py() {
        let m = ModelId::parse("openai/gpt-oss-20b", 20_900_000_000);
        assert_eq!(m.org.as_deref(), Some("openai"));
        assert_eq!((m.basename.as_deref(), m.size_label.as_deref()), (Some("gpt-oss"), Some("20B")));
        assert_eq!(id_to_title(&m.full_name), "Gpt Oss 20b");
        let m = ModelId::parse("Mixtral-8x7B-Instruct-v0.1", 46_700_000_000);
        assert_eq!(m.basename.as_deref(), Some("Mixtral"));
        assert_eq!(m.size_label.as_deref(), Some("8x7B"));
        assert_eq!(m.finetune.as_deref(), Some("Instruct"));
        assert_eq!(m.version.as_deref(), Some("v0.1"));
        let m = ModelId::parse("hf-mxfp4", 117_000);
        assert_eq!((m.basename, m.size_label), (None, None));
        assert_eq!(id_to_title("hf-mxfp4"), "Hf Mxfp4");
        assert!(is_quant_type("Q4_K_M") && is_quant_type("bf16") && is_quant_type("fp32") && !is_quant_type("q"));
        assert!(is_size("7b1") && is_size("8x7b") && is_size("1.5B") && !is_size("oss"));
    }

    #[test]
    fn model_cards_give_license_tags_and_base_models() {
        let card = "---\nlicense: apache-2.0\npipeline_tag: text-generation\nlibrary_name: transformers\ntags:\n- vllm\n\
                    base_model: openai/gpt-oss-20b\nlanguage: [en, fr]\n---\n# gpt-oss\n";
        let dir = std::env::temp_dir().join(format!("moeq-card-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("README.md"), card).unwrap();
        let m = general_metadata(&dir, &serde_json::json!({}), &ParamCount::default());
        std::fs::remove_dir_all(&dir).unwrap();
        let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("general.license"), Some(Value::String("apache-2.0".into())));
        let strings = |v: &[&str]| Some(Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect())));
        assert_eq!(get("general.tags"), strings(&["vllm", "text-generation"]));
        assert_eq!(get("general.languages"), strings(&["en", "fr"]));
        assert_eq!(get("general.base_model.count"), Some(Value::U32(1)));
        assert_eq!(get("general.base_model.0.name"), Some(Value::String("Gpt Oss 20b".into())));
        assert_eq!(get("general.base_model.0.organization"), Some(Value::String("Openai".into())));
    }

    #[test]
    fn size_labels_round_like_gguf_py() {
        assert_eq!(rounded(117_312), "117K");
        assert_eq!(rounded(1_500_000), "1.5M");
        assert_eq!(rounded(20_914_757_184), "21B");
        assert_eq!(rounded(3_210_000_000), "3.2B");
        let p = ParamCount::of([("blk.0.ffn_up_exps.weight", vec![4, 64, 64]), ("token_embd.weight", vec![512, 64])]);
        assert_eq!((p.experts, p.per_expert, p.shared), (4, 4096, 32768));
    }
}
