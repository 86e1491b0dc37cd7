//! `--rounding gptq`: error-minimizing rounding inside the standard block formats (issue 16).
//!
//! By default every tensor is rounded as ggml rounds it (byte-identical to llama-quantize).
//! With `--rounding gptq` and calibration input (`--calibration FILE` text or
//! `--calibration-tokens FILE` ids, as `moeq imatrix` reads them), every 2-D weight matrix
//! whose planned type GPTQ supports ([`moeq_kernels::gptq::supports`]: the k-quants Q2_K…Q6_K,
//! Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS) is rounded with GPTQ (Frantar et al. 2022,
//! arXiv:2210.17323; [`moeq_kernels::gptq`]) against the Hessian of its input on the
//! calibration tokens ([`hessian`]). The types are unchanged (the plan's, or `--optimize`'s),
//! so the file has exactly the size of the ggml-rounded one, and any llama.cpp reads it.
//!
//! Stacked MoE expert tensors (`ffn_{gate,up,down}_exps`) are rounded expert by expert, each
//! with the Hessian of the tokens routed to it ([`hessian`]); an expert that saw fewer than
//! [`hessian::MIN_EXPERT_TOKENS`] calibration tokens keeps ggml's rounding (the report lists
//! them). MXFP4 (gpt-oss's experts, `MXFP4_MOE`) is rounded with the MXFP4 variant of
//! [`moeq_kernels::gptq`]; [`attach_hf`] does the same for `--format hf`'s OpenAI-layout experts.
//!
//! Not rounded with GPTQ (rounded as ggml does): the lattice i-quants (IQ1_*, IQ2_*, IQ3_*),
//! TQ1_0/TQ2_0, F16/BF16/F32, and tensors copied as stored (released MXFP4 experts).
//!
//! The scale search of each block uses the `--imatrix` weights when the tensor has them (as
//! ggml's quantizer would), otherwise the Hessian's diagonal (the same statistic, from the
//! calibration tokens).

pub mod hessian;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value as Json, json};

use crate::imatrix::Calibration;
use crate::model::weights::Weights;
use crate::plan::recipe::{Input, Recipe};
use crate::plan::transcode::quant_type;
use crate::source::Source;
pub use hessian::{ExpertRounding, TensorRounding};
use moeq_formats::gguf::GgmlType;

/// The rounding data a recipe carries.
#[derive(Clone, Debug)]
pub enum Rounding {
    /// One matrix, one factor.
    Matrix(Arc<TensorRounding>),
    /// A stacked expert tensor: one factor per expert (`None`: ggml's rounding for its rows).
    Experts(Arc<ExpertRounding>),
}

/// The GGUF key that records the rounding method (llama.cpp ignores keys it does not know).
pub const KEY: &str = "moeq.rounding";

/// The value of the GGUF key `moeq.rounding` and of `"rounding"."method"` in the report.
pub const METHOD: &str = "gptq";

/// GPTQ's calibration input (`--calibration` / `--calibration-tokens` and how to cut it).
#[derive(Clone, Debug)]
pub struct RoundingRequest {
    /// Text or token ids.
    pub calibration: Calibration,
    /// Tokens per chunk (text input).
    pub ctx: usize,
    /// At most this many chunks.
    pub chunks: Option<usize>,
    /// The folder with the model's tokenizer.json, when not the model's own (a GGUF needs it).
    pub tokenizer: Option<PathBuf>,
}

impl RoundingRequest {
    /// The calibration file (an input of the conversion: never overwritten).
    pub fn file(&self) -> &Path {
        match &self.calibration {
            Calibration::Text(p) | Calibration::Tokens(p) => p,
        }
    }
}

/// What GPTQ rounding did, for the report.
#[derive(Clone, Debug, Default)]
pub struct RoundingLog {
    /// Calibration chunks and tokens.
    pub chunks: usize,
    /// Calibration tokens.
    pub tokens: usize,
    /// Tensors rounded with GPTQ: (tensor, the tensor whose input Hessian it used).
    pub rounded: Vec<(String, String)>,
    /// Quantized tensors rounded as ggml rounds them, and why.
    pub ggml: Vec<(String, String)>,
    /// Stacked expert tensors rounded expert by expert: (tensor, the tensor whose input
    /// Hessians it used, per expert the routed calibration tokens and whether it was rounded
    /// with GPTQ).
    pub experts: Vec<ExpertLog>,
}

/// A stacked expert tensor in the report: its name, the tensor whose input Hessians it used,
/// per expert the routed calibration tokens and whether it was rounded with GPTQ.
pub type ExpertLog = (String, String, Vec<(u64, bool)>);

impl RoundingLog {
    /// `{"method", "calibration": {"file", "chunks", "tokens"}, "tensors": [{"name", "hessian"}],
    /// "experts": [{"name", "hessian", "tokens": [per expert], "ggml_rounded_experts": [e, …]}],
    /// "ggml_rounded": [{"name", "why"}]}`.
    pub fn to_json(&self, file: &Path) -> Json {
        json!({
            "method": METHOD,
            "reference": "GPTQ, Frantar et al. 2022, arXiv:2210.17323 (act-order, static groups = ggml blocks, damping 0.01; MXFP4: per-block exponent by the Hessian-diagonal-weighted error)",
            "calibration": {"file": file.display().to_string(), "chunks": self.chunks, "tokens": self.tokens},
            "tensors": self.rounded.iter().map(|(n, h)| json!({"name": n, "hessian": h})).collect::<Vec<_>>(),
            "experts": self.experts.iter().map(|(n, h, per)| json!({
                "name": n,
                "hessian": h,
                "min_tokens": hessian::MIN_EXPERT_TOKENS,
                "tokens": per.iter().map(|p| p.0).collect::<Vec<_>>(),
                "ggml_rounded_experts": per.iter().enumerate().filter(|(_, p)| !p.1).map(|(e, _)| e).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ggml_rounded": self.ggml.iter().map(|(n, w)| json!({"name": n, "why": w})).collect::<Vec<_>>(),
        })
    }

    /// One line for stderr: what was rounded with GPTQ, on how many tokens, and how many
    /// quantized tensors kept ggml's (or, in `--format hf`, OpenAI's) rounding.
    pub fn summary(&self) -> String {
        format!(
            "GPTQ: {} tensor(s) and {} stacked expert tensor(s) rounded on {} calibration tokens ({} chunks); {} kept \
             the default rounding (see --report)",
            self.rounded.len(),
            self.experts.len(),
            self.tokens,
            self.chunks,
            self.ggml.len()
        )
    }

    /// Whether any tensor, or any expert of a stacked one, is rounded with GPTQ: only then does
    /// the output record [`KEY`].
    pub fn rounded_any(&self) -> bool {
        !self.rounded.is_empty() || self.experts.iter().any(|(_, _, per)| per.iter().any(|p| p.1))
    }

    /// When nothing is rounded with GPTQ ([`Self::rounded_any`] false): the warning for stderr,
    /// naming `input` and why each quantized tensor kept the default rounding (counted by
    /// reason); `None` when something is rounded.
    pub fn nothing_rounded(&self, input: &Path) -> Option<String> {
        if self.rounded_any() {
            return None;
        }
        let mut reasons: Vec<(String, usize)> = Vec::new();
        let mut count = |why: String| match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some(slot) => slot.1 += 1,
            None => reasons.push((why, 1)),
        };
        for (_, why) in &self.ggml {
            count(why.clone());
        }
        for _ in &self.experts {
            count(format!("every expert saw fewer than {} calibration tokens", hessian::MIN_EXPERT_TOKENS));
        }
        let why = if reasons.is_empty() {
            "no tensor is quantized to a type GPTQ rounds".to_string()
        } else {
            reasons.iter().map(|(w, n)| format!("{n} tensor(s): {w}")).collect::<Vec<_>>().join("; ")
        };
        Some(format!(
            "--rounding gptq found nothing to round in {} ({why}); the output is what moeq writes without it, and \
             {KEY} is not recorded",
            input.display()
        ))
    }

    /// Records a stacked tensor's per-expert rounding and warns (unless `quiet`) about the
    /// experts left to ggml's rounding.
    fn add_experts(&mut self, name: &str, x: &ExpertRounding, quiet: bool) {
        let per: Vec<(u64, bool)> = x.experts.iter().map(|(t, f)| (*t, f.is_some())).collect();
        let left: Vec<String> =
            per.iter().enumerate().filter(|(_, p)| !p.1).map(|(e, p)| format!("{e} ({} tokens)", p.0)).collect();
        if !left.is_empty() && !quiet {
            eprintln!(
                "note: {name}: expert(s) {} saw fewer than {} calibration tokens; their rows keep ggml's rounding",
                left.join(", "),
                hessian::MIN_EXPERT_TOKENS
            );
        }
        self.experts.push((name.to_string(), x.input_of.clone(), per));
    }
}

/// Why a recipe's tensor cannot be rounded with GPTQ, or `None` if it can.
fn refusal(r: &Recipe, w: &Weights, head: &str) -> Option<&'static str> {
    let name = r.spec.name.as_str();
    let qt = quant_type(r.spec.ggml_type)?;
    if !moeq_kernels::gptq::supports(qt) {
        return Some("type has no GPTQ rounding here (lattice i-quants, ternary)");
    }
    match r.input() {
        Input::Copy(_) | Input::Owned(_) => return Some("copied as stored"),
        Input::OpenAiMxfp4 { .. } if r.spec.ggml_type == GgmlType::MXFP4 => {
            return Some("released MXFP4 experts, copied as stored");
        }
        _ => {}
    }
    let stacked = r.spec.ne.len() > 2 && r.spec.ne[2..].iter().any(|&d| d != 1);
    if stacked && !(r.spec.ne.len() == 3 && hessian::is_expert_stack(name)) {
        return Some("stacked tensor the forward does not run expert by expert");
    }
    if !w.has(name) || !(name.starts_with("blk.") || name == head) {
        return Some("not a matrix the forward multiplies with");
    }
    None
}

/// Opens `input` again for its forward, reads the calibration chunks `req` names (tokenized
/// with the model's or `--tokenizer`'s tokenizer) and hands the model, the chunks and an empty
/// log that counts them to `f`.
///
/// Errors: the input cannot be opened, the calibration cannot be read or tokenized; `f`'s.
fn with_calibration<T>(
    input: &Path,
    req: &RoundingRequest,
    f: impl FnOnce(&Weights, &[Vec<u32>], RoundingLog) -> Result<T>,
) -> Result<T> {
    let source = Source::open(input)?;
    let w = Weights::new(&source, input)?;
    let chunks = crate::imatrix::load_chunks(
        input,
        &source,
        &w,
        &req.calibration,
        req.ctx,
        req.chunks,
        req.tokenizer.as_deref(),
        &crate::imatrix::Purpose { what: "GPTQ's Hessians (--rounding gptq)", ids_option: "--calibration-tokens FILE" },
    )?;
    let log = RoundingLog { chunks: chunks.len(), tokens: chunks.iter().map(Vec::len).sum(), ..Default::default() };
    f(&w, &chunks, log)
}

/// Computes the calibration Hessians of the model at `input` (opened again for its forward)
/// and attaches GPTQ rounding to every recipe it applies to (see the module docs). Recipes
/// that are not quantized are left alone.
///
/// Errors: the calibration input cannot be read or tokenized (named file); the forward fails;
/// a Hessian cannot be factored.
pub fn attach(input: &Path, recipes: &mut [Recipe], req: &RoundingRequest, quiet: bool) -> Result<RoundingLog> {
    with_calibration(input, req, |w, chunks, mut log| {
        let head = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
        let mut wanted = HashSet::new();
        for r in recipes.iter() {
            if quant_type(r.spec.ggml_type).is_none() {
                continue;
            }
            match refusal(r, w, head) {
                None => {
                    wanted.insert(r.spec.name.clone());
                }
                Some(why) => log.ggml.push((r.spec.name.clone(), why.to_string())),
            }
        }
        if wanted.is_empty() {
            return Ok(log);
        }
        let found = hessian::compute(w, chunks, &wanted, quiet)?;
        for r in recipes.iter_mut() {
            if let Some(t) = found.matrices.get(&r.spec.name) {
                log.rounded.push((r.spec.name.clone(), t.input_of.clone()));
                r.rounding = Some(Rounding::Matrix(t.clone()));
            } else if let Some(x) = found.experts.get(&r.spec.name) {
                log.add_experts(&r.spec.name, x, quiet);
                r.rounding = Some(Rounding::Experts(x.clone()));
            } else if wanted.contains(&r.spec.name) {
                log.ggml.push((r.spec.name.clone(), "no calibration Hessian for its input".into()));
            }
        }
        Ok(log)
    })
}

/// The GGUF stacked expert tensor whose calibration data a `--format hf` gpt-oss expert tensor
/// uses: `model.layers.N.mlp.experts.gate_up_proj` (gate and up interleaved, one input) →
/// `blk.N.ffn_gate_exps.weight`, `…down_proj` → `blk.N.ffn_down_exps.weight`.
fn hf_expert_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, what) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    match what {
        "mlp.experts.gate_up_proj" => Some(format!("blk.{layer}.ffn_gate_exps.weight")),
        "mlp.experts.down_proj" => Some(format!("blk.{layer}.ffn_down_exps.weight")),
        _ => None,
    }
}

/// [`attach`] for `--format hf` (gpt-oss's OpenAI-layout MXFP4 experts): every expert tensor
/// quantized from values (a bf16 fine-tune) gets per-expert GPTQ rounding with the Hessians
/// moeq's forward collects under the GGUF names (gate and up share one input). Expert tensors
/// copied as stored (released MXFP4) and every other tensor (written as stored) are left alone.
///
/// Errors: as [`attach`].
pub fn attach_hf(input: &Path, recipes: &mut [&mut Recipe], req: &RoundingRequest, quiet: bool) -> Result<RoundingLog> {
    with_calibration(input, req, |w, chunks, mut log| {
        let mut wanted = HashSet::new();
        for r in recipes.iter() {
            if r.spec.ggml_type != GgmlType::MXFP4 {
                continue;
            }
            match (hf_expert_key(&r.spec.name), r.input()) {
                (Some(key), Input::Values { .. }) if w.has(&key) => {
                    wanted.insert(key);
                }
                (_, Input::OpenAiMxfp4 { .. }) => {
                    log.ggml.push((r.spec.name.clone(), "released MXFP4 experts, copied as stored".into()))
                }
                _ => log.ggml.push((r.spec.name.clone(), "no calibration data for this tensor".into())),
            }
        }
        if wanted.is_empty() {
            return Ok(log);
        }
        let found = hessian::compute(w, chunks, &wanted, quiet)?;
        for r in recipes.iter_mut() {
            if let Some(x) = hf_expert_key(&r.spec.name).and_then(|k| found.experts.get(&k))
                && matches!(r.input(), Input::Values { .. })
            {
                log.add_experts(&r.spec.name, x, quiet);
                r.rounding = Some(Rounding::Experts(x.clone()));
            }
        }
        Ok(log)
    })
}
