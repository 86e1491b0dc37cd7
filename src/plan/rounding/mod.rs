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
//! Not rounded with GPTQ (rounded as ggml does): the lattice i-quants (IQ1_*, IQ2_*, IQ3_*),
//! TQ1_0/TQ2_0, MXFP4, F16/BF16/F32, and stacked MoE expert tensors (each expert would need a
//! Hessian of the tokens routed to it; not collected yet).
//!
//! The scale search of each block uses the `--imatrix` weights when the tensor has them (as
//! ggml's quantizer would), otherwise the Hessian's diagonal (the same statistic, from the
//! calibration tokens).

pub mod hessian;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value as Json, json};

use crate::imatrix::Calibration;
use crate::model::weights::Weights;
use crate::plan::recipe::Recipe;
use crate::plan::transcode::quant_type;
use crate::source::Source;
pub use hessian::TensorRounding;

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
}

impl RoundingLog {
    /// `{"method", "calibration": {"file", "chunks", "tokens"}, "tensors": [{"name", "hessian"}],
    /// "ggml_rounded": [{"name", "why"}]}`.
    pub fn to_json(&self, file: &Path) -> Json {
        json!({
            "method": METHOD,
            "reference": "GPTQ, Frantar et al. 2022, arXiv:2210.17323 (act-order, static groups = ggml blocks, damping 0.01)",
            "calibration": {"file": file.display().to_string(), "chunks": self.chunks, "tokens": self.tokens},
            "tensors": self.rounded.iter().map(|(n, h)| json!({"name": n, "hessian": h})).collect::<Vec<_>>(),
            "ggml_rounded": self.ggml.iter().map(|(n, w)| json!({"name": n, "why": w})).collect::<Vec<_>>(),
        })
    }
}

/// Why a recipe's tensor cannot be rounded with GPTQ, or `None` if it can.
fn refusal(r: &Recipe, w: &Weights, head: &str) -> Option<&'static str> {
    let name = r.spec.name.as_str();
    let qt = quant_type(r.spec.ggml_type)?;
    if !moeq_kernels::gptq::supports(qt) {
        return Some("type has no GPTQ rounding here (lattice i-quants, ternary, MXFP4)");
    }
    if r.spec.ne.len() > 2 && r.spec.ne[2..].iter().any(|&d| d != 1) {
        return Some("stacked expert tensor: no per-expert Hessian");
    }
    if !w.has(name) || !(name.starts_with("blk.") || name == head) {
        return Some("not a matrix the forward multiplies with");
    }
    None
}

/// Computes the calibration Hessians of the model at `input` (opened again for its forward)
/// and attaches GPTQ rounding to every recipe it applies to (see the module docs). Recipes
/// that are not quantized are left alone.
///
/// Errors: the calibration input cannot be read or tokenized (named file); the forward fails;
/// a Hessian cannot be factored.
pub fn attach(input: &Path, recipes: &mut [Recipe], req: &RoundingRequest, quiet: bool) -> Result<RoundingLog> {
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
    )?;
    let head = if w.has("output.weight") { "output.weight" } else { "token_embd.weight" };
    let mut log = RoundingLog { chunks: chunks.len(), tokens: chunks.iter().map(Vec::len).sum(), ..Default::default() };
    let mut wanted = HashSet::new();
    for r in recipes.iter() {
        if quant_type(r.spec.ggml_type).is_none() {
            continue;
        }
        match refusal(r, &w, head) {
            None => {
                wanted.insert(r.spec.name.clone());
            }
            Some(why) => log.ggml.push((r.spec.name.clone(), why.to_string())),
        }
    }
    let found = hessian::compute(&w, &chunks, &wanted, quiet)?;
    for r in recipes.iter_mut() {
        if let Some(t) = found.get(&r.spec.name) {
            log.rounded.push((r.spec.name.clone(), t.input_of.clone()));
            r.rounding = Some(t.clone());
        } else if wanted.contains(&r.spec.name) {
            log.ggml.push((r.spec.name.clone(), "no calibration Hessian for its input".into()));
        }
    }
    Ok(log)
}
