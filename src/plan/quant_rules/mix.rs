//! `llama_tensor_get_type_impl`: the file-type mixes (which tensors of a Q3_K_M or IQ2_M
//! file get more or fewer bits), ported branch for branch from `src/llama-quant.cpp`, with
//! the reason for every choice.

use anyhow::{Result, anyhow, bail};
use moeq_formats::gguf::GgmlType;

use super::{PlanOptions, Step};
use crate::plan::quant_plan::{Category, Ftype, ModelFacts, TensorFacts, category, is_attn_v, use_more_bits};

/// The counters llama-quantize keeps while walking the tensors (`quantize_state_impl`).
/// They advance only when a tensor reaches the mix rules (not for `--pure`, `--tensor-type`
/// or kept tensors), as in llama.cpp.
#[derive(Default)]
pub(super) struct MixState {
    pub n_attention_wv: i64,
    pub i_attention_wv: i64,
    pub i_ffn_down: i64,
    pub i_ffn_gate: i64,
    pub i_ffn_up: i64,
    pub has_tied_embeddings: bool,
}

/// The file types whose attention-v, ffn_down and attn_output follow the 1–2 bit rules.
fn iq2_family(f: Ftype) -> bool {
    use Ftype as F;
    matches!(f, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M)
}

/// The integer `sscanf("%d")` reads at the start of `text` (leading white space, a sign,
/// digits; whatever follows is ignored).
fn scan_int(text: &str) -> Option<i64> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let sign_len = usize::from(t.starts_with(['+', '-']));
    let digits = t[sign_len..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    t[..sign_len + digits].parse::<i32>().ok().map(i64::from)
}

impl MixState {
    /// `layer_info`: a tensor's layer and the layer count. MoE models name it (`blk.N.`),
    /// dense models count (the `counter`th tensor of its kind).
    fn layer(&self, model: &ModelFacts, counter: i64, name: &str) -> Result<(i64, i64)> {
        let n_layer = model.n_layer as i64;
        if model.n_expert.max(1) > 1 {
            let layer = name
                .strip_prefix("blk.")
                .and_then(scan_int)
                .ok_or_else(|| anyhow!("failed to determine the layer of tensor {name}"))?;
            if layer < 0 || layer >= n_layer {
                bail!("bad layer {layer} for tensor {name}: must be in [0, {n_layer})");
            }
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// The type the mix gives tensor `t` of an `ftype` file, starting from
    /// `ty` (the file type's default); each rule that fires is added to `steps`.
    pub fn mix(
        &mut self,
        model: &ModelFacts,
        t: &TensorFacts,
        ftype: Ftype,
        opts: &PlanOptions,
        mut ty: GgmlType,
        steps: &mut Vec<Step>,
    ) -> Result<GgmlType> {
        use Ftype as F;
        use GgmlType as G;
        let name = t.name.as_str();
        let cat = category(name);
        let falcon = model.arch == "falcon";
        let gqa = model.n_gqa();
        let n_expert = model.n_expert;
        macro_rules! set {
            ($to:expr, $rule:expr, $detail:expr) => {{
                let to: GgmlType = $to;
                ty = to;
                steps.push(Step { rule: $rule, ty: to, detail: $detail });
            }};
        }

        if model.arch == "glm5-next"
            && ["attn_q_a", "attn_q_b", "nextn.eh_proj"].iter().any(|p| name.contains(p))
            && !matches!(ty, G::F32 | G::BF16 | G::F16)
        {
            set!(G::Q8_0, "mix", "glm5-next keeps attn_q_a, attn_q_b and nextn.eh_proj at Q8_0".into());
            return Ok(ty);
        }

        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            let what = if cat == Category::Output { "the output" } else { "the token embedding (tied to the output)" };
            if let Some(o) = opts.output_tensor_type {
                set!(o, "output-tensor-type", format!("--output-tensor-type for {what}"));
            } else {
                let nx = t.dim(0);
                if ftype == F::MXFP4_MOE {
                    set!(G::Q8_0, "mix", format!("{what} of an MXFP4_MOE file is Q8_0"));
                } else if falcon {
                    set!(G::Q8_0, "mix", format!("{what} of a Falcon model is Q8_0"));
                } else if !nx.is_multiple_of(ty.block_size()) {
                    let block = ty.block_size();
                    set!(G::Q8_0, "mix", format!("{what}: rows of {nx} are not a multiple of {block}, so Q8_0"));
                } else if matches!(
                    ftype,
                    F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
                ) {
                    set!(G::Q5_K, "mix", format!("{what} of a 1–3 bit i-quant file is Q5_K"));
                } else if ty != G::Q8_0 {
                    set!(G::Q6_K, "mix", format!("{what} is Q6_K"));
                }
            }
        } else if ftype == F::MXFP4_MOE {
            let expert_role = matches!(cat, Category::FfnUp | Category::FfnGate | Category::FfnDown);
            if t.dim(2) > 1 && (model.arch != "bailingmoe3" || expert_role) {
                set!(G::MXFP4, "moe", "expert tensors of an MXFP4_MOE file are MXFP4".into());
            } else {
                set!(G::Q8_0, "mix", "tensors outside the experts of an MXFP4_MOE file are Q8_0".into());
            }
        } else if cat == Category::TokenEmbd {
            if let Some(e) = opts.token_embedding_type {
                set!(e, "token-embedding-type", "--token-embedding-type".into());
            } else if matches!(ftype, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M) {
                set!(G::Q2_K, "mix", format!("the token embedding of an {} file is Q2_K", ftype.name()));
            } else if matches!(ftype, F::IQ2_S | F::IQ2_M | F::IQ3_XXS) {
                set!(G::IQ3_S, "mix", format!("the token embedding of an {} file is IQ3_S", ftype.name()));
            } else if matches!(ftype, F::TQ1_0 | F::TQ2_0) {
                set!(G::Q4_K, "mix", format!("the token embedding of a {} file is Q4_K", ftype.name()));
            }
        } else if iq2_family(ftype) {
            let s_or_m = matches!(ftype, F::IQ2_S | F::IQ2_M);
            if is_attn_v(cat) {
                if gqa >= 4 || n_expert >= 4 {
                    let why = if gqa >= 4 { format!("GQA {gqa} ≥ 4") } else { format!("{n_expert} experts ≥ 4") };
                    set!(G::Q4_K, if gqa >= 4 { "mix" } else { "moe" }, format!("attention-v with {why} is Q4_K"));
                } else if s_or_m {
                    set!(G::IQ3_S, "mix", "attention-v is IQ3_S".into());
                } else {
                    set!(G::Q2_K, "mix", "attention-v is Q2_K".into());
                }
                self.i_attention_wv += 1;
            } else if n_expert == 8 && cat == Category::AttentionK {
                set!(G::Q4_K, "moe", "attn_k of an 8-expert model is Q4_K".into());
            } else if cat == Category::FfnDown {
                // llama.cpp counts ffn_down tensors here, even in MoE models.
                let n = model.n_layer as i64;
                if self.i_ffn_down < n / 8 {
                    let to = if s_or_m { G::IQ3_S } else { G::Q2_K };
                    let i = self.i_ffn_down;
                    set!(to, "mix", format!("ffn_down number {i} of the first eighth ({} of {n}) is {to}", n / 8));
                }
                self.i_ffn_down += 1;
            } else if cat == Category::AttentionOutput {
                if n_expert == 8 {
                    set!(G::Q5_K, "moe", "attn_output of an 8-expert model is Q5_K".into());
                } else if matches!(ftype, F::IQ1_S | F::IQ1_M) {
                    set!(G::IQ2_XXS, "mix", "attn_output is IQ2_XXS".into());
                } else if s_or_m {
                    set!(G::IQ3_S, "mix", "attn_output is IQ3_S".into());
                }
            }
        } else if is_attn_v(cat) {
            let i = self.i_attention_wv;
            if ftype == F::Q2_K {
                if gqa >= 4 {
                    set!(G::Q4_K, "mix", format!("attention-v with GQA {gqa} ≥ 4 is Q4_K"));
                } else {
                    set!(G::Q3_K, "mix", "attention-v is Q3_K".into());
                }
            } else if ftype == F::Q2_K_S && gqa >= 4 {
                set!(G::Q4_K, "mix", format!("attention-v with GQA {gqa} ≥ 4 is Q4_K"));
            } else if ftype == F::IQ3_XXS {
                if gqa >= 4 {
                    set!(G::Q4_K, "mix", format!("attention-v with GQA {gqa} ≥ 4 is Q4_K"));
                } else if !opts.has_imatrix {
                    set!(G::IQ3_S, "no-imatrix", "attention-v is IQ3_S without an importance matrix".into());
                } else {
                    set!(G::IQ3_XXS, "mix", "attention-v stays IQ3_XXS with an importance matrix".into());
                }
            } else if matches!(ftype, F::IQ3_XS | F::IQ3_S) && gqa >= 4 {
                set!(G::Q4_K, "mix", format!("attention-v with GQA {gqa} ≥ 4 is Q4_K"));
            } else if ftype == F::IQ3_M {
                set!(G::Q4_K, "mix", "attention-v is Q4_K".into());
            } else if ftype == F::Q3_K_M {
                if i < 2 {
                    set!(G::Q5_K, "mix", format!("attention-v number {i} (of the first 2) is Q5_K"));
                } else {
                    set!(G::Q4_K, "mix", "attention-v is Q4_K".into());
                }
            } else if ftype == F::Q3_K_L {
                set!(G::Q5_K, "mix", "attention-v is Q5_K".into());
            } else if matches!(ftype, F::IQ4_NL | F::IQ4_XS) && gqa >= 4 {
                set!(G::Q5_K, "mix", format!("attention-v with GQA {gqa} ≥ 4 is Q5_K"));
            } else if matches!(ftype, F::Q4_K_M | F::Q5_K_M) && use_more_bits(i, self.n_attention_wv) {
                let n = self.n_attention_wv;
                set!(G::Q6_K, "use-more-bits", format!("attention-v number {i} of {n} gets more bits: Q6_K"));
            } else if ftype == F::Q4_K_S && i < 4 {
                set!(G::Q5_K, "mix", format!("attention-v number {i} (of the first 4) is Q5_K"));
            }
            if model.is_70b() && matches!(ty, G::Q3_K | G::Q4_K) {
                set!(G::Q5_K, "mix", "attention-v of a 70B model (8 heads share it) is Q5_K".into());
            }
            if n_expert == 8 {
                set!(G::Q8_0, "moe", "attention-v of an 8-expert model is Q8_0".into());
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if n_expert == 8 {
                set!(G::Q8_0, "moe", "attn_k of an 8-expert model is Q8_0".into());
            } else if ftype == F::IQ3_XS {
                set!(G::IQ3_XXS, "mix", "attn_k is IQ3_XXS".into());
            } else if ftype == F::IQ3_XXS {
                set!(G::IQ2_S, "mix", "attn_k is IQ2_S".into());
            }
        } else if cat == Category::AttentionQ {
            if ftype == F::IQ3_XS {
                set!(G::IQ3_XXS, "mix", "attn_q is IQ3_XXS".into());
            } else if ftype == F::IQ3_XXS {
                set!(G::IQ2_S, "mix", "attn_q is IQ2_S".into());
            }
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer(model, self.i_ffn_down, name)?;
            let umb = use_more_bits(i, n);
            let layer = format!("ffn_down of layer {i} of {n}");
            if ftype == F::Q2_K {
                set!(G::Q3_K, "mix", "ffn_down is Q3_K".into());
            } else if ftype == F::Q2_K_S {
                if i < n / 8 {
                    set!(G::Q4_K, "mix", format!("{layer} (first eighth) is Q4_K"));
                }
            } else if ftype == F::IQ3_XXS && !opts.has_imatrix {
                if i < n / 8 {
                    set!(G::Q4_K, "no-imatrix", format!("{layer} (first eighth) is Q4_K without an importance matrix"));
                } else {
                    set!(G::Q3_K, "no-imatrix", format!("{layer} is Q3_K without an importance matrix"));
                }
            } else if ftype == F::Q3_K_M {
                if i < n / 16 {
                    set!(G::Q5_K, "mix", format!("{layer} (first sixteenth) is Q5_K"));
                } else if !falcon {
                    set!(G::Q4_K, "mix", format!("{layer} is Q4_K"));
                } else if umb {
                    set!(G::Q4_K, "use-more-bits", format!("{layer} gets more bits: Q4_K"));
                } else {
                    set!(G::Q3_K, "mix", format!("{layer} is Q3_K"));
                }
            } else if ftype == F::IQ3_M && (i < n / 8 || (n_expert == 8 && umb)) {
                if i < n / 8 {
                    set!(G::Q4_K, "mix", format!("{layer} (first eighth) is Q4_K"));
                } else {
                    set!(G::Q4_K, "use-more-bits", format!("{layer} of an 8-expert model gets more bits: Q4_K"));
                }
            } else if ftype == F::Q3_K_L {
                set!(
                    if falcon { G::Q4_K } else { G::Q5_K },
                    "mix",
                    format!("{layer} is {}", if falcon { "Q4_K" } else { "Q5_K" })
                );
            } else if ftype == F::Q4_K_M {
                if falcon {
                    if i < n / 16 {
                        set!(G::Q6_K, "mix", format!("{layer} (first sixteenth) is Q6_K"));
                    } else if umb {
                        set!(G::Q5_K, "use-more-bits", format!("{layer} gets more bits: Q5_K"));
                    } else {
                        set!(G::Q4_K, "mix", format!("{layer} is Q4_K"));
                    }
                } else if umb {
                    set!(G::Q6_K, "use-more-bits", format!("{layer} gets more bits: Q6_K"));
                }
            } else if i < n / 8 && matches!(ftype, F::IQ4_NL | F::IQ4_XS) && !opts.has_imatrix {
                set!(G::Q5_K, "no-imatrix", format!("{layer} (first eighth) is Q5_K without an importance matrix"));
            } else if ftype == F::Q5_K_M && umb {
                set!(G::Q6_K, "use-more-bits", format!("{layer} gets more bits: Q6_K"));
            } else if ftype == F::Q4_K_S && !falcon && i < n / 8 {
                set!(G::Q5_K, "mix", format!("{layer} (first eighth) is Q5_K"));
            } else if matches!(ftype, F::Q4_0 | F::Q5_0) && opts.has_imatrix && i < n / 8 {
                let to = if ftype == F::Q4_0 { G::Q4_1 } else { G::Q5_1 };
                set!(to, "imatrix", format!("{layer} (first eighth) is {to} with an importance matrix"));
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if !falcon {
                if n_expert == 8 {
                    use Ftype::*;
                    if matches!(
                        ftype,
                        Q2_K | IQ3_XS | IQ3_XXS | Q3_K_S | Q3_K_M | IQ4_NL | Q4_K_S | Q4_K_M | IQ3_S | IQ3_M | IQ4_XS
                    ) {
                        set!(G::Q5_K, "moe", "attn_output of an 8-expert model is Q5_K".into());
                    }
                } else {
                    let to = match ftype {
                        F::Q2_K => Some(G::Q3_K),
                        F::IQ3_XXS => Some(G::IQ3_S),
                        F::Q3_K_M | F::IQ3_M => Some(G::Q4_K),
                        F::Q3_K_L => Some(G::Q5_K),
                        _ => None,
                    };
                    if let Some(to) = to {
                        set!(to, "mix", format!("attn_output is {to}"));
                    }
                }
            } else if ftype == F::Q3_K_L {
                set!(G::Q4_K, "mix", "attn_output of a Falcon model is Q4_K".into());
            }
        } else if cat == Category::AttentionQkv {
            let to = match ftype {
                F::Q3_K_M | F::Q3_K_L | F::IQ3_M => Some(G::Q4_K),
                F::Q4_K_M => Some(G::Q5_K),
                F::Q5_K_M => Some(G::Q6_K),
                _ => None,
            };
            if let Some(to) = to {
                set!(to, "mix", format!("attn_qkv is {to}"));
            }
        } else if matches!(cat, Category::FfnGate | Category::FfnUp) {
            let counter = if cat == Category::FfnGate { self.i_ffn_gate } else { self.i_ffn_up };
            let (i, n) = self.layer(model, counter, name)?;
            if ftype == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                let what = if cat == Category::FfnGate { "ffn_gate" } else { "ffn_up" };
                set!(G::IQ3_XXS, "mix", format!("{what} of layer {i} of {n} (not first or last eighth) is IQ3_XXS"));
            }
            if cat == Category::FfnGate {
                self.i_ffn_gate += 1;
            } else {
                self.i_ffn_up += 1;
            }
        }
        Ok(ty)
    }
}
