//! The plan of a conversion, tensor by tensor: what `moeq convert --dry-run` prints (a table,
//! or JSON with `--json`) and `--report FILE` saves after a real run.
//!
//! JSON: `{"ftype", "ftype_id", "tensors": [{"name", "shape" (ne, fastest first),
//! "source_type", "type", "why": [{"rule", "type", "detail"}], "source_bytes", "bytes",
//! "bpw", "requires_imatrix", "imatrix"}], "totals": {"tensors", "elements", "source_bytes",
//! "bytes", "source_bpw", "bpw", "by_type": {TYPE: {"tensors", "bytes"}}}, "imatrix",
//! "fallbacks", "warnings", "refusal"}`. A tensor's `imatrix` is null (not quantized, or no
//! matrix), `{"status": "used", "tokens": [per matrix]}`, `{"status": "missing",
//! "refused"}` or `{"status": "ignored", "detail"}`.

use std::collections::BTreeMap;

use moeq_formats::gguf::GgmlType;
use serde_json::{Value as Json, json};

use super::Step;
use crate::inspect::human_bytes;
use crate::plan::imatrix_file::{ImatrixFile, ImatrixFormat};
use crate::plan::optimize::OptimizeLog;
use crate::plan::quant_plan::Ftype;

/// How a quantized tensor used the importance matrix.
#[derive(Clone, Debug)]
pub enum ImatrixUse {
    /// Its entry gave the weights; the tokens each matrix (expert) saw. For a legacy file,
    /// one call count for all experts (`legacy`).
    Used {
        /// Tokens per matrix (GGUF) or `[ncall]` (legacy).
        counts: Vec<i64>,
        /// Whether the counts are a legacy file's single call count.
        legacy: bool,
    },
    /// No entry: quantized without importance weights, or refused when its type needs them.
    NoEntry {
        /// Whether the tensor's type needs importance weights.
        refused: bool,
    },
    /// An entry that does not fit and is ignored (the token embedding, as llama-quantize).
    Ignored(String),
}

/// One tensor of the plan.
#[derive(Clone, Debug)]
pub struct TensorRow {
    /// Its name.
    pub name: String,
    /// Its dimensions, fastest first.
    pub ne: Vec<u64>,
    /// The type it has in the input (for a checkpoint: in the GGUF llama.cpp's converter
    /// writes).
    pub source: GgmlType,
    /// The type it is written in.
    pub ty: GgmlType,
    /// Why.
    pub steps: Vec<Step>,
    /// Bytes in the input type.
    pub source_bytes: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Whether llama-quantize refuses to make it without an importance matrix.
    pub requires_imatrix: bool,
    /// Its use of the importance matrix, when one is given and the tensor is quantized.
    pub imatrix: Option<ImatrixUse>,
}

impl TensorRow {
    fn elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// The reasons in a few words: the steps after the file type's default.
    pub fn why(&self) -> String {
        let steps: Vec<&Step> = match self.steps.as_slice() {
            [only] => vec![only],
            [first, rest @ ..] if first.rule == "file-type" => rest.iter().collect(),
            all => all.iter().collect(),
        };
        steps.iter().map(|s| s.detail.as_str()).collect::<Vec<_>>().join("; then ")
    }
}

/// Coverage of the importance matrix.
#[derive(Clone, Debug, Default)]
pub struct ImatrixSummary {
    /// The file.
    pub path: String,
    /// `gguf` or `legacy`.
    pub format: &'static str,
    /// Entries after `--include-weights` / `--exclude-weights`.
    pub entries: usize,
    /// Datasets it was computed on.
    pub datasets: Vec<String>,
    /// Chunks it was computed on.
    pub chunk_count: i64,
    /// Tokens per chunk (GGUF).
    pub chunk_size: u32,
    /// Quantized tensors without an entry, and whether that refuses the run.
    pub without_data: Vec<(String, bool)>,
    /// Expert tensors some of whose experts saw no token: name, those experts, expert count,
    /// fewest and most tokens of the others.
    pub partial: Vec<(String, Vec<usize>, usize, i64, i64)>,
}

/// Every decision of a conversion, with totals.
#[derive(Clone, Debug, Default)]
pub struct PlanReport {
    /// The file type, if the conversion quantizes.
    pub ftype: Option<Ftype>,
    /// The tensors in output order.
    pub rows: Vec<TensorRow>,
    /// Warnings (overridden rules, ignored options, …).
    pub warnings: Vec<String>,
    /// Why llama-quantize would refuse this conversion (a real run fails with it).
    pub refusal: Option<String>,
    /// The importance matrix's coverage, if one is given.
    pub imatrix: Option<ImatrixSummary>,
    /// The decision log of a build optimized to a size (`--target-size`, `--target-bpw`,
    /// `--optimize`).
    pub optimize: Option<OptimizeLog>,
    /// `--rounding gptq`: what was rounded with GPTQ and on which calibration input
    /// ([`crate::plan::rounding::RoundingLog::to_json`]).
    pub rounding: Option<Json>,
}

impl PlanReport {
    /// An empty report.
    pub fn new(ftype: Option<Ftype>) -> PlanReport {
        PlanReport { ftype, ..PlanReport::default() }
    }

    /// Tensors that took a row-width fallback.
    pub fn fallbacks(&self) -> usize {
        // A type chosen to a size budget replaces the fallback.
        let kept = |r: &&TensorRow| r.steps.last().is_some_and(|s| s.rule != "optimize");
        self.rows.iter().filter(kept).filter(|r| r.steps.iter().any(|s| s.rule == "row-fallback")).count()
    }

    /// Fills in the importance matrix summary from the rows.
    pub(crate) fn summarize_imatrix(&mut self, imatrix: Option<&ImatrixFile>) {
        let Some(m) = imatrix else { return };
        let mut s = ImatrixSummary {
            path: m.path().display().to_string(),
            format: if m.format == ImatrixFormat::Gguf { "gguf" } else { "legacy" },
            entries: m.entries().len(),
            datasets: m.datasets.clone(),
            chunk_count: m.chunk_count,
            chunk_size: m.chunk_size,
            ..ImatrixSummary::default()
        };
        for r in &self.rows {
            match &r.imatrix {
                Some(ImatrixUse::NoEntry { refused }) => s.without_data.push((r.name.clone(), *refused)),
                Some(ImatrixUse::Used { counts, legacy: false }) if counts.len() > 1 => {
                    let zero: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] == 0).collect();
                    if !zero.is_empty() {
                        let seen = counts.iter().copied().filter(|&c| c > 0);
                        let (lo, hi) = (seen.clone().min().unwrap_or(0), seen.max().unwrap_or(0));
                        s.partial.push((r.name.clone(), zero, counts.len(), lo, hi));
                    }
                }
                _ => {}
            }
        }
        self.imatrix = Some(s);
    }

    /// Lines about the importance matrix's gaps, for stderr (at most `max` tensors each).
    pub fn imatrix_notes(&self, max: usize) -> Vec<String> {
        let Some(s) = &self.imatrix else { return Vec::new() };
        let mut out = Vec::new();
        let quiet: Vec<&str> = s.without_data.iter().filter(|(_, r)| !r).map(|(n, _)| n.as_str()).collect();
        if !quiet.is_empty() {
            out.push(format!(
                "the importance matrix has no data for {} quantized tensor(s), quantized without importance weights \
                 (as llama-quantize): {}",
                quiet.len(),
                super::apply::list(&quiet, max)
            ));
        }
        for (name, zero, n, lo, hi) in s.partial.iter().take(max) {
            let experts: Vec<String> = zero.iter().map(usize::to_string).collect();
            out.push(format!(
                "'{name}': expert{} {} of {n} saw no token in the importance matrix (the others {lo}–{hi} tokens); \
                 their importance weights are all 1, as in llama-quantize",
                if zero.len() == 1 { "" } else { "s" },
                experts.join(", ")
            ));
        }
        if s.partial.len() > max {
            out.push(format!(
                "… and {} more expert tensors with unrouted experts (see --report)",
                s.partial.len() - max
            ));
        }
        out
    }

    /// Totals: (elements, source bytes, bytes, per type (tensors, bytes)).
    fn totals(&self) -> (u64, u64, u64, BTreeMap<&'static str, (usize, u64)>) {
        let mut by_type: BTreeMap<&'static str, (usize, u64)> = BTreeMap::new();
        let (mut elements, mut source, mut bytes) = (0, 0, 0);
        for r in &self.rows {
            elements += r.elements();
            source += r.source_bytes;
            bytes += r.bytes;
            let e = by_type.entry(r.ty.name()).or_default();
            e.0 += 1;
            e.1 += r.bytes;
        }
        (elements, source, bytes, by_type)
    }

    /// The JSON described in the module documentation.
    pub fn to_json(&self) -> Json {
        let bpw = |bytes: u64, elements: u64| if elements == 0 { 0.0 } else { bytes as f64 * 8.0 / elements as f64 };
        let tensors: Vec<Json> = self
            .rows
            .iter()
            .map(|r| {
                let imatrix = match &r.imatrix {
                    None => Json::Null,
                    Some(ImatrixUse::Used { counts, legacy }) => {
                        json!({"status": "used", "tokens": counts, "legacy_call_count": legacy})
                    }
                    Some(ImatrixUse::NoEntry { refused }) => json!({"status": "missing", "refused": refused}),
                    Some(ImatrixUse::Ignored(detail)) => json!({"status": "ignored", "detail": detail}),
                };
                json!({
                    "name": r.name,
                    "shape": r.ne,
                    "source_type": r.source.name(),
                    "type": r.ty.name(),
                    "why": r.steps.iter().map(|s| json!({"rule": s.rule, "type": s.ty.name(), "detail": s.detail})).collect::<Vec<_>>(),
                    "source_bytes": r.source_bytes,
                    "bytes": r.bytes,
                    "bpw": bpw(r.bytes, r.elements()),
                    "requires_imatrix": r.requires_imatrix,
                    "imatrix": imatrix,
                })
            })
            .collect();
        let (elements, source, bytes, by_type) = self.totals();
        let by_type: serde_json::Map<String, Json> =
            by_type.into_iter().map(|(k, (n, b))| (k.to_string(), json!({"tensors": n, "bytes": b}))).collect();
        let imatrix = self.imatrix.as_ref().map_or(Json::Null, |s| {
            json!({
                "path": s.path,
                "format": s.format,
                "entries": s.entries,
                "datasets": s.datasets,
                "chunk_count": s.chunk_count,
                "chunk_size": s.chunk_size,
                "tensors_without_data": s.without_data.iter().map(|(n, r)| json!({"tensor": n, "refused": r})).collect::<Vec<_>>(),
                "experts_without_data": s.partial.iter().map(|(n, z, of, lo, hi)| json!({
                    "tensor": n, "experts": z, "of": of, "tokens_min": lo, "tokens_max": hi,
                    "action": "importance weights of 1 (as llama-quantize)"
                })).collect::<Vec<_>>(),
            })
        });
        json!({
            "ftype": self.ftype.map(Ftype::name),
            "ftype_id": self.ftype.map(Ftype::id),
            "tensors": tensors,
            "totals": {
                "tensors": self.rows.len(),
                "elements": elements,
                "source_bytes": source,
                "bytes": bytes,
                "source_bpw": bpw(source, elements),
                "bpw": bpw(bytes, elements),
                "by_type": by_type,
            },
            "imatrix": imatrix,
            "fallbacks": self.fallbacks(),
            "warnings": self.warnings,
            "refusal": self.refusal,
            "optimize": self.optimize.as_ref().map_or(Json::Null, OptimizeLog::to_json),
            "rounding": self.rounding.clone().unwrap_or(Json::Null),
        })
    }

    /// The table: one line per tensor, then totals, per-type sums, importance matrix gaps,
    /// warnings and the refusal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match self.ftype {
            Some(f) => out.push_str(&format!("plan: {} (llama_ftype {})\n", f.name(), f.id())),
            None => out.push_str("plan: tensors as llama.cpp's converter writes them (no --type)\n"),
        }
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
        let shape = |ne: &[u64]| ne.iter().map(u64::to_string).collect::<Vec<_>>().join("×");
        let shape_width = self.rows.iter().map(|r| shape(&r.ne).len()).max().unwrap_or(5).max(5);
        out.push_str(&format!(
            "{:<width$}  {:<shape_width$}  {:<7}  {:<7}  {:>11}  {:>6}  why\n",
            "tensor", "shape", "source", "type", "bytes", "bpw"
        ));
        for r in &self.rows {
            let bpw = if r.elements() == 0 { 0.0 } else { r.bytes as f64 * 8.0 / r.elements() as f64 };
            out.push_str(&format!(
                "{:<width$}  {:<shape_width$}  {:<7}  {:<7}  {:>11}  {:>6.2}  {}\n",
                r.name,
                shape(&r.ne),
                r.source.name(),
                r.ty.name(),
                human_bytes(r.bytes),
                bpw,
                r.why()
            ));
        }
        let (elements, source, bytes, by_type) = self.totals();
        let bpw = |b: u64| if elements == 0 { 0.0 } else { b as f64 * 8.0 / elements as f64 };
        out.push_str(&format!(
            "\ntotal: {} tensors, {} elements: {} ({:.2} bits per weight) → {} ({:.2} bits per weight)\n",
            self.rows.len(),
            elements,
            human_bytes(source),
            bpw(source),
            human_bytes(bytes),
            bpw(bytes)
        ));
        for (ty, (n, b)) in &by_type {
            out.push_str(&format!("  {ty:<8} {n:>5} tensors  {:>11}\n", human_bytes(*b)));
        }
        if self.fallbacks() > 0 {
            out.push_str(&format!("{} tensor(s) took a row-width fallback\n", self.fallbacks()));
        }
        if let Some(s) = &self.imatrix {
            out.push_str(&format!(
                "importance matrix: {} ({}, {} entries, {} chunks{})\n",
                s.path,
                s.format,
                s.entries,
                s.chunk_count,
                s.datasets.first().map_or(String::new(), |d| format!(", dataset {d}"))
            ));
            for note in self.imatrix_notes(usize::MAX) {
                out.push_str(&format!("  {note}\n"));
            }
        }
        if let Some(log) = &self.optimize {
            out.push_str(&log.to_text());
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}
