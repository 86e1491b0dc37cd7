//! llama-quantize's per-tensor type decisions, each with its reasons, and the options that
//! steer them (`--pure`, `--tensor-type`, `--output-tensor-type`, `--token-embedding-type`,
//! `--leave-output-tensor`, an importance matrix), ported from `src/llama-quant.cpp`
//! (`llama_tensor_get_type`, `llama_tensor_get_type_impl`, `tensor_requires_imatrix`).
//!
//! - [`decide`]: the type of every tensor and why;
//! - [`tensor_type`]: `--tensor-type PATTERN=TYPE` rules (llama.cpp's std::regex semantics);
//! - [`kv_override`]: `--override-kv KEY=TYPE:VALUE`;
//! - [`apply`]: a whole requantization plan (decisions, importance matrix checks, metadata);
//! - [`report`]: the `--dry-run` table and the JSON of `--json` / `--report`.

pub mod apply;
pub mod kv_override;
mod mix;
pub mod report;
pub mod tensor_type;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::GgmlType;

use crate::plan::quant_plan::{
    Category, Ftype, ModelFacts, TensorFacts, category, fallback, is_attn_v, not_quantizable,
};
use mix::MixState;
use tensor_type::TensorTypeRule;

/// The options that change which type a tensor gets.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--output-tensor-type`: the type of `output.weight` (and of a tied token embedding,
    /// through the mix rules).
    pub output_tensor_type: Option<GgmlType>,
    /// `--token-embedding-type`: the type of `token_embd.weight`.
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type` rules, first match wins.
    pub tensor_types: Vec<TensorTypeRule>,
    /// `--pure`: no mix rules, every tensor the file type's default (row fallbacks still apply).
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` keeps its type.
    pub leave_output_tensor: bool,
    /// Whether importance weights are given (some mixes differ with them).
    pub has_imatrix: bool,
}

/// One reason in a tensor's decision: a rule that fired and the type it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What kind of rule: `not-quantized`, `file-type`, `token-embedding-type`,
    /// `output-tensor-type`, `tensor-type`, `pure`, `mix`, `moe`, `use-more-bits`,
    /// `no-imatrix`, `imatrix`, `row-fallback`, `released-mxfp4`, `copy`.
    pub rule: &'static str,
    /// The type after this step.
    pub ty: GgmlType,
    /// The rule in words.
    pub detail: String,
}

/// The type chosen for one tensor and how.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The output type.
    pub ty: GgmlType,
    /// The rules that gave it, in order.
    pub steps: Vec<Step>,
    /// Whether llama.cpp may quantize the tensor at all (`tensor_allows_quantization`).
    pub quantizable: bool,
    /// The `--tensor-type` rule (index) that chose the type, if one did.
    pub rule: Option<usize>,
}

impl Decision {
    fn kept(ty: GgmlType, rule: &'static str, detail: String) -> Decision {
        Decision { ty, steps: vec![Step { rule, ty, detail }], quantizable: false, rule: None }
    }

    fn quantizable(mut self) -> Decision {
        self.quantizable = true;
        self
    }
}

/// `tensor_requires_imatrix`: whether llama-quantize refuses to make tensor `name` of type
/// `ty` in an `ftype` file without importance weights (the 1–3 bit i-quants IQ1_S, IQ1_M,
/// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, and Q2_K in a Q2_K_S file; never the token embedding or
/// the output).
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: Ftype) -> bool {
    if matches!(name, "token_embd.weight" | "per_layer_token_embd.weight" | "output.weight") {
        return false;
    }
    use GgmlType as G;
    match ty {
        G::IQ3_XXS | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ1_M | G::IQ1_S => true,
        G::Q2_K => ftype == Ftype::Q2_K_S,
        _ => false,
    }
}

/// The type of every tensor (given in the order llama-quantize walks them) and why, as
/// `llama_tensor_get_type` decides: kept when not quantizable; `--token-embedding-type` and
/// `--output-tensor-type` first; then, for quantized file types, the first matching
/// `--tensor-type` rule, else the mix rules (unless `--pure`), then the row-width fallback.
/// Errors as llama-quantize does (a layer it cannot place, a type without fallback), and
/// when a type set by option cannot hold the tensor's rows (llama-quantize aborts there).
pub fn decide(model: &ModelFacts, tensors: &[TensorFacts], ftype: Ftype, opts: &PlanOptions) -> Result<Vec<Decision>> {
    let default = ftype.default_type();
    let mut state = MixState {
        n_attention_wv: tensors.iter().filter(|t| is_attn_v(category(&t.name))).count() as i64,
        has_tied_embeddings: !tensors.iter().any(|t| category(&t.name) == Category::Output),
        ..MixState::default()
    };
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let cat = category(&t.name);
        if let Some(why) = not_quantizable(t, &model.arch, !opts.leave_output_tensor) {
            out.push(Decision::kept(t.ggml_type, "not-quantized", why));
            continue;
        }
        let first_rule = opts.tensor_types.iter().position(|r| r.matches(&t.name));
        if let (Some(e), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
            // per_layer_token_embd follows --token-embedding-type unless a rule names it.
            let named = t.name == "per_layer_token_embd.weight" && first_rule.is_some();
            if !named {
                check_rows(t, e, "--token-embedding-type")?;
                out.push(Decision::kept(e, "token-embedding-type", "--token-embedding-type".into()).quantizable());
                continue;
            }
        }
        if let (Some(o), Category::Output) = (opts.output_tensor_type, cat) {
            check_rows(t, o, "--output-tensor-type")?;
            out.push(Decision::kept(o, "output-tensor-type", "--output-tensor-type".into()).quantizable());
            continue;
        }
        let mut ty = default;
        let mut steps = vec![Step { rule: "file-type", ty, detail: format!("the default type of {}", ftype.name()) }];
        let mut rule = None;
        if default.is_quantized() {
            if let Some(i) = first_rule {
                let r = &opts.tensor_types[i];
                ty = r.ty;
                steps.push(Step {
                    rule: "tensor-type",
                    ty,
                    detail: format!("--tensor-type rule {} '{}'", i + 1, r.text),
                });
                rule = Some(i);
            } else if opts.pure {
                steps.push(Step { rule: "pure", ty, detail: "--pure: no mix rules".into() });
            } else {
                ty = state.mix(model, t, ftype, opts, ty, &mut steps)?;
            }
            let ncols = t.dim(0);
            let fb = fallback(ncols, ty).with_context(|| format!("tensor '{}'", t.name))?;
            if fb != ty {
                let detail = if fb == GgmlType::F16 {
                    format!("rows of {ncols} values are not a multiple of 32 (as {ty} and its fallback need): F16")
                } else {
                    format!("rows of {ncols} values are not a multiple of {}, the block of {ty}: {fb}", ty.block_size())
                };
                ty = fb;
                steps.push(Step { rule: "row-fallback", ty, detail });
            }
        }
        out.push(Decision { ty, steps, quantizable: true, rule });
    }
    Ok(out)
}

/// A type given by option goes to the tensor without fallback (as in llama-quantize), so its
/// block must divide the rows.
fn check_rows(t: &TensorFacts, ty: GgmlType, option: &str) -> Result<()> {
    let ncols = t.dim(0);
    if !ncols.is_multiple_of(ty.block_size()) {
        bail!(
            "{option} {ty}: tensor '{}' has rows of {ncols} values, not a multiple of {ty}'s block of {} \
             (llama-quantize has no fallback for this option and aborts)",
            t.name,
            ty.block_size()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
