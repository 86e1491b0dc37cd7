//! `moeq inspect`: what a model file or folder holds, from its headers alone.

use std::fmt::Write as _;

use moeq_formats::gguf::{Array, GgufModel, Value};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::{Value as Json, json};

use crate::families::ModelConfig;
use crate::source::Source;

/// Arrays longer than this are summarized (length and first elements).
const ARRAY_SHOWN: usize = 16;

/// One metadata entry.
pub struct MetaEntry {
    /// The key.
    pub key: String,
    /// Its stored type (`UINT32`, `ARRAY[STRING]`, …).
    pub type_label: String,
    /// A short human rendering.
    pub display: String,
    /// The value as JSON (long arrays summarized).
    pub json: Json,
}

/// One tensor row.
pub struct TensorRow {
    /// The tensor name.
    pub name: String,
    /// ggml type name (GGUF) or safetensors dtype.
    pub dtype: String,
    /// GGUF: `ne`, fastest dimension first. safetensors: the shape, slowest first.
    pub shape: Vec<u64>,
    /// Bytes of data.
    pub bytes: u64,
}

/// Everything `inspect` reports.
pub struct Report {
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// The path as given.
    pub path: String,
    /// The files read.
    pub files: Vec<String>,
    /// The architecture name, if known.
    pub architecture: Option<String>,
    /// Format facts: version, alignment, layout, class.
    pub details: Vec<(String, String)>,
    /// Hyperparameters.
    pub hparams: Vec<(String, Json)>,
    /// Metadata entries.
    pub metadata: Vec<MetaEntry>,
    /// Tensors in file order.
    pub tensors: Vec<TensorRow>,
    /// The size-budget decisions `moeq convert --optimize / --target-*` stored under
    /// `moeq.optimize.tensors`, `.types` and `.errors`: tensor, type, measured error (relative
    /// weight error, or predicted next-token KL in a KL-calibrated build: `moeq.optimize.error`).
    pub decisions: Vec<(String, String, Option<f32>)>,
}

impl Report {
    /// Builds the report for an opened source.
    pub fn new(path: &std::path::Path, source: &Source) -> Report {
        let mut report = match source {
            Source::Gguf(model) => Self::gguf(model),
            Source::Safetensors { model, config } => Self::safetensors(model, config.as_deref()),
        };
        report.path = path.display().to_string();
        report
    }

    fn gguf(model: &GgufModel) -> Report {
        let header = model.first().header();
        let architecture = header.architecture().map(str::to_string);
        let prefix = architecture.as_ref().map(|a| format!("{a}."));
        let mut hparams = Vec::new();
        let mut metadata = Vec::new();
        for (key, value) in &header.metadata {
            let hparam = prefix.as_ref().and_then(|p| key.strip_prefix(p.as_str()));
            if let (Some(name), false) = (hparam, matches!(value, Value::Array(_))) {
                hparams.push((name.to_string(), value_json(value)));
            }
            metadata.push(MetaEntry {
                key: key.clone(),
                type_label: value.type_label(),
                display: value.to_string(),
                json: json!({ "type": value.type_label(), "value": value_json(value) }),
            });
        }
        let tensors = model
            .tensors()
            .map(|(_, t)| TensorRow {
                name: t.name.clone(),
                dtype: t.ggml_type.to_string(),
                shape: t.ne.clone(),
                bytes: t.nbytes,
            })
            .collect();
        let details = vec![
            ("version".into(), header.version.to_string()),
            ("byte order".into(), header.byte_order.name().into()),
            ("alignment".into(), header.alignment.to_string()),
            ("shape order".into(), "ne (fastest dimension first)".into()),
        ];
        Report {
            format: "gguf",
            path: String::new(),
            files: model.shards().iter().map(|s| s.path().display().to_string()).collect(),
            architecture,
            details,
            hparams,
            metadata,
            tensors,
            decisions: decisions(&header.metadata),
        }
    }

    fn safetensors(model: &SafetensorsModel, config: Option<&ModelConfig>) -> Report {
        let mut details = Vec::new();
        if let Some(c) = config {
            details.push(("class".into(), c.class.clone()));
            details.push(("layout".into(), c.layout.describe().into()));
            for w in &c.warnings {
                details.push(("warning".into(), w.clone()));
            }
            if c.layout == crate::families::SourceLayout::Mlx {
                // What eval/verify/imatrix refuse when they read the folder (from its headers:
                // a head mlx-lm would not run as stored, packed codes without their scales, …).
                if let Err(e) = crate::model::mlx_read::plan(model, c) {
                    details.push(("warning".into(), format!("eval/verify/imatrix refuse this folder: {e:#}")));
                }
            }
        }
        details.push(("shape order".into(), "slowest dimension first".into()));
        let metadata = model
            .shards()
            .first()
            .and_then(|s| s.metadata())
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| MetaEntry {
                key: k.clone(),
                type_label: "STRING".into(),
                display: format!("{v:?}"),
                json: json!({ "type": "STRING", "value": v }),
            })
            .collect();
        let tensors = model
            .tensors()
            .map(|(_, t)| TensorRow {
                name: t.name.clone(),
                dtype: format!("{:?}", t.dtype),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                bytes: t.len as u64,
            })
            .collect();
        Report {
            format: "safetensors",
            path: String::new(),
            files: model.shards().iter().map(|s| s.path().display().to_string()).collect(),
            architecture: config.map(|c| c.family.name().to_string()),
            details,
            hparams: config
                .map(|c| c.hparams.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
                .unwrap_or_default(),
            metadata,
            tensors,
            decisions: Vec::new(),
        }
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// The `--json` form.
    pub fn to_json(&self) -> Json {
        let metadata: serde_json::Map<String, Json> =
            self.metadata.iter().map(|m| (m.key.clone(), m.json.clone())).collect();
        let hparams: serde_json::Map<String, Json> = self.hparams.iter().cloned().collect();
        // Warnings may be several: a list of their own.
        let details: serde_json::Map<String, Json> =
            self.details.iter().filter(|(k, _)| k != "warning").map(|(k, v)| (k.clone(), json!(v))).collect();
        let warnings: Vec<&String> = self.details.iter().filter(|(k, _)| k == "warning").map(|(_, v)| v).collect();
        json!({
            "format": self.format,
            "path": self.path,
            "files": self.files,
            "architecture": self.architecture,
            "details": details,
            "warnings": warnings,
            "hyperparameters": hparams,
            "metadata": metadata,
            "tensors": self.tensors.iter().map(|t| json!({
                "name": t.name, "dtype": t.dtype, "shape": t.shape, "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "total_bytes": self.total_bytes(),
            "optimize_decisions": self.decisions.iter().map(|(n, t, e)| json!({"tensor": n, "type": t, "error": e})).collect::<Vec<_>>(),
        })
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let files = match self.files.len() {
            1 => self.path.clone(),
            n => format!("{} ({n} files)", self.path),
        };
        let _ = writeln!(out, "format        {}", self.format);
        let _ = writeln!(out, "path          {files}");
        let _ = writeln!(out, "architecture  {}", self.architecture.as_deref().unwrap_or("unknown"));
        for (k, v) in &self.details {
            let _ = writeln!(out, "{k:<13} {v}");
        }
        if !self.hparams.is_empty() {
            let _ = writeln!(out, "\nhyperparameters");
            let width = self.hparams.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &self.hparams {
                let _ = writeln!(out, "  {k:<width$}  {v}");
            }
        }
        if !self.metadata.is_empty() {
            let _ = writeln!(out, "\nmetadata ({})", plural(self.metadata.len(), "key"));
            let kw = self.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
            let tw = self.metadata.iter().map(|m| m.type_label.len()).max().unwrap_or(0);
            for m in &self.metadata {
                let _ = writeln!(out, "  {:<kw$}  {:<tw$}  {}", m.key, m.type_label, m.display);
            }
        }
        if !self.decisions.is_empty() {
            let _ = writeln!(
                out,
                "\nsize-budget decisions (moeq.optimize.*: type, error as moeq.optimize.error defines it)"
            );
            let nw = self.decisions.iter().map(|d| d.0.len()).max().unwrap_or(0);
            for (n, t, e) in &self.decisions {
                let e = e.map_or("-".to_string(), |e| format!("{e:.3e}"));
                let _ = writeln!(out, "  {n:<nw$}  {t:<8}  {e}");
            }
        }
        let _ = writeln!(out, "\ntensors ({})", self.tensors.len());
        let shapes: Vec<String> = self.tensors.iter().map(|t| format!("{:?}", t.shape)).collect();
        let nw = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
        let dw = self.tensors.iter().map(|t| t.dtype.len()).max().unwrap_or(4).max(4);
        let sw = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
        let _ = writeln!(out, "  {:<nw$}  {:<dw$}  {:<sw$}  {:>12}", "name", "type", "shape", "bytes");
        for (t, shape) in self.tensors.iter().zip(&shapes) {
            let _ = writeln!(out, "  {:<nw$}  {:<dw$}  {:<sw$}  {:>12}", t.name, t.dtype, shape, t.bytes);
        }
        let total = self.total_bytes();
        let _ = writeln!(out, "\ntotal: {} tensors, {} bytes ({})", self.tensors.len(), total, human_bytes(total));
        out
    }
}

/// The decisions stored under `moeq.optimize.*`, when the three arrays are there and agree.
fn decisions(metadata: &[(String, Value)]) -> Vec<(String, String, Option<f32>)> {
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let (Some(Value::Array(Array::String(names))), Some(Value::Array(Array::String(types)))) =
        (get("moeq.optimize.tensors"), get("moeq.optimize.types"))
    else {
        return Vec::new();
    };
    let errors = match get("moeq.optimize.errors") {
        Some(Value::Array(Array::F32(e))) if e.len() == names.len() => Some(e),
        _ => None,
    };
    if names.len() != types.len() {
        return Vec::new();
    }
    (0..names.len()).map(|i| (names[i].clone(), types[i].clone(), errors.map(|e| e[i]))).collect()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

/// `1536` → `1.50 KiB`.
/// `n` bytes for a message: "512 B", or "1.50 KiB (1536 bytes)" when the unit rounds.
pub fn bytes_exact(n: u64) -> String {
    if n < 1024 { format!("{n} B") } else { format!("{} ({n} bytes)", human_bytes(n)) }
}

/// `n` things: "1 chunk", "2 chunks" (`word` is the singular; the plural adds an s).
pub fn count(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.2} {}", UNITS[unit]) }
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        // Shortest decimal that round-trips the f32, not the widened f64's digits.
        Value::F32(x) => x.to_string().parse::<f64>().map_or(Json::Null, |v| json!(v)),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> Json {
    let shown = a.len().min(ARRAY_SHOWN);
    let items: Vec<Json> = (0..shown).filter_map(|i| a.get(i)).map(|v| value_json(&v)).collect();
    if a.len() <= ARRAY_SHOWN { Json::Array(items) } else { json!({ "len": a.len(), "head": items }) }
}
