//! Planning a requantization: which type each tensor gets, exactly as `llama-quantize IN OUT
//! TYPE` decides (`src/llama-quant.cpp`: `tensor_allows_quantization`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback`), and in which order tensors go.

use std::cmp::Ordering;

use anyhow::{Result, bail};
use moeq_formats::gguf::GgmlType;

/// A llama.cpp file type (`llama_ftype`): the target of a requantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Ftype {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    MXFP4_MOE,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// `(ftype, name, llama_ftype id, default tensor type)`.
const FTYPES: &[(Ftype, &str, u32, GgmlType)] = &[
    (Ftype::F32, "F32", 0, GgmlType::F32),
    (Ftype::F16, "F16", 1, GgmlType::F16),
    (Ftype::BF16, "BF16", 32, GgmlType::BF16),
    (Ftype::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    (Ftype::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    (Ftype::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    (Ftype::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    (Ftype::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
    (Ftype::MXFP4_MOE, "MXFP4_MOE", 38, GgmlType::MXFP4),
    (Ftype::Q4_K_S, "Q4_K_S", 14, GgmlType::Q4_K),
    (Ftype::Q4_K_M, "Q4_K_M", 15, GgmlType::Q4_K),
    (Ftype::Q5_K_S, "Q5_K_S", 16, GgmlType::Q5_K),
    (Ftype::Q5_K_M, "Q5_K_M", 17, GgmlType::Q5_K),
    (Ftype::Q6_K, "Q6_K", 18, GgmlType::Q6_K),
];

impl Ftype {
    fn row(self) -> &'static (Ftype, &'static str, u32, GgmlType) {
        &FTYPES[self as usize]
    }

    /// Parses a llama-quantize type name (`Q4_K_M`, `q8_0`; `Q4_K` means `Q4_K_M`, `Q5_K`
    /// means `Q5_K_M`, as in llama-quantize).
    pub fn parse(name: &str) -> Result<Ftype, String> {
        let upper = name.to_ascii_uppercase();
        let upper = match upper.as_str() {
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        FTYPES.iter().find(|r| r.1 == upper).map(|r| r.0).ok_or_else(|| {
            let names: Vec<&str> = FTYPES.iter().map(|r| r.1).collect();
            format!("unknown type '{name}'; choose one of {}", names.join(", "))
        })
    }

    /// The name llama-quantize uses.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The `general.file_type` value.
    pub fn id(self) -> u32 {
        self.row().2
    }

    /// The type a quantizable tensor gets before the mix rules.
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }
}

/// What the mix rules need to know about the model.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: u32,
    /// `{arch}.attention.head_count`.
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv`.
    pub n_head_kv: u32,
}

/// A tensor as the planner sees it.
#[derive(Clone, Debug)]
pub struct TensorFacts {
    /// Its name.
    pub name: String,
    /// Its dimensions, fastest first.
    pub ne: Vec<u64>,
    /// Its type in the source.
    pub ggml_type: GgmlType,
}

impl TensorFacts {
    fn n_dims(&self) -> usize {
        // ggml_n_dims: trailing dimensions of 1 do not count; at least 1.
        self.ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
    }
}

/// llama-quantize's tensor order (`weight_name_comparer`): by layer number (tensors outside
/// `blk.N.` first), then by name.
pub fn llama_order(a: &str, b: &str) -> Ordering {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|num| num.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttentionQkv,
    AttentionKvB,
    AttentionV,
    AttentionK,
    AttentionQ,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    match name {
        "output.weight" => return Category::Output,
        "token_embd.weight" | "per_layer_token_embd.weight" => return Category::TokenEmbd,
        _ => {}
    }
    let rules = [
        ("attn_qkv.weight", Category::AttentionQkv),
        ("attn_kv_b.weight", Category::AttentionKvB),
        ("attn_v.weight", Category::AttentionV),
        ("attn_k.weight", Category::AttentionK),
        ("attn_q.weight", Category::AttentionQ),
        ("attn_output.weight", Category::AttentionOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    rules.iter().find(|(pat, _)| name.contains(pat)).map_or(Category::Other, |&(_, c)| c)
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB)
}

/// `tensor_allows_quantization` (for the architectures moeq handles; the list of excluded
/// names is llama.cpp's).
pub fn allows_quantization(t: &TensorFacts) -> bool {
    if t.n_dims() < 2 || !t.name.ends_with("weight") {
        return false;
    }
    const EXCLUDED: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    !EXCLUDED.iter().any(|pat| t.name.contains(pat))
        && t.name != "position_embd.weight"
        && t.name != "token_types.weight"
}

/// The target type of every tensor (given in [`llama_order`]), as llama-quantize picks them.
pub fn target_types(model: &ModelFacts, tensors: &[TensorFacts], ftype: Ftype) -> Result<Vec<GgmlType>> {
    let default = ftype.default_type();
    let mut state = MixState {
        n_attention_wv: tensors.iter().filter(|t| is_attn_v(category(&t.name))).count() as i64,
        has_tied_embeddings: !tensors.iter().any(|t| category(&t.name) == Category::Output),
        ..MixState::default()
    };
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !allows_quantization(t) {
            out.push(t.ggml_type);
            continue;
        }
        let mut new_type = default;
        if default.is_quantized() {
            new_type = state.mix(model, t, ftype, new_type)?;
            new_type = fallback(t, new_type)?;
        }
        out.push(new_type);
    }
    Ok(out)
}

#[derive(Default)]
struct MixState {
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    has_tied_embeddings: bool,
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

impl MixState {
    /// `layer_info`: the layer of a tensor (from its name in MoE models, else a counter).
    fn layer(&self, model: &ModelFacts, counter: i64, name: &str) -> Result<(i64, i64)> {
        let n_layer = model.n_layer as i64;
        if model.n_expert.max(1) > 1 {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| anyhow::anyhow!("failed to determine the layer of tensor {name}"))?;
            if layer < 0 || layer >= n_layer {
                bail!("bad layer {layer} for tensor {name}: must be in [0, {n_layer})");
            }
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl` for the ftypes moeq offers.
    fn mix(&mut self, model: &ModelFacts, t: &TensorFacts, ftype: Ftype, mut new_type: GgmlType) -> Result<GgmlType> {
        use Ftype as F;
        use GgmlType as G;
        let cat = category(&t.name);
        let falcon = model.arch == "falcon";
        let eight_experts = model.n_expert == 8;
        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            let nx = t.ne.first().copied().unwrap_or(1);
            if ftype == F::MXFP4_MOE || falcon || nx % new_type.block_size() != 0 {
                new_type = G::Q8_0;
            } else if new_type != G::Q8_0 {
                new_type = G::Q6_K;
            }
        } else if ftype == F::MXFP4_MOE {
            new_type = if t.ne.get(2).copied().unwrap_or(1) > 1 { G::MXFP4 } else { G::Q8_0 };
        } else if cat == Category::TokenEmbd {
            // Only very-low-bit ftypes change the token embedding; none of moeq's do.
        } else if is_attn_v(cat) {
            if matches!(ftype, F::Q4_K_M | F::Q5_K_M) && use_more_bits(self.i_attention_wv, self.n_attention_wv) {
                new_type = G::Q6_K;
            } else if ftype == F::Q4_K_S && self.i_attention_wv < 4 {
                new_type = G::Q5_K;
            }
            let is_70b = model.arch == "llama" && model.n_layer == 80;
            if is_70b && matches!(new_type, G::Q3_K | G::Q4_K) {
                new_type = G::Q5_K;
            }
            if eight_experts {
                new_type = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if eight_experts {
                new_type = G::Q8_0;
            }
        } else if cat == Category::AttentionQ {
            // Only IQ3 ftypes change attn_q.
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer(model, self.i_ffn_down, &t.name)?;
            if ftype == F::Q4_K_M {
                if falcon {
                    new_type = if i_layer < n_layer / 16 {
                        G::Q6_K
                    } else if use_more_bits(i_layer, n_layer) {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    new_type = G::Q6_K;
                }
            } else if ftype == F::Q5_K_M && use_more_bits(i_layer, n_layer) {
                new_type = G::Q6_K;
            } else if ftype == F::Q4_K_S && !falcon && i_layer < n_layer / 8 {
                new_type = G::Q5_K;
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if !falcon && eight_experts && matches!(ftype, F::Q4_K_S | F::Q4_K_M) {
                new_type = G::Q5_K;
            }
        } else if cat == Category::AttentionQkv {
            if ftype == F::Q4_K_M {
                new_type = G::Q5_K;
            } else if ftype == F::Q5_K_M {
                new_type = G::Q6_K;
            }
        } else if cat == Category::FfnGate {
            self.layer(model, self.i_ffn_gate, &t.name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer(model, self.i_ffn_up, &t.name)?;
            self.i_ffn_up += 1;
        }
        Ok(new_type)
    }
}

/// `tensor_type_fallback`: a type whose block does not divide the rows is replaced.
fn fallback(t: &TensorFacts, target: GgmlType) -> Result<GgmlType> {
    use GgmlType as G;
    let ncols = t.ne.first().copied().unwrap_or(1);
    if ncols % target.block_size() == 0 {
        return Ok(target);
    }
    let mut ret = match target {
        G::IQ1_S | G::IQ1_M | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS | G::IQ3_S | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        other if other.block_size() <= 32 => other,
        other => bail!("no tensor type fallback is defined for type {other}"),
    };
    if ncols % ret.block_size() != 0 {
        ret = G::F16;
    }
    Ok(ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, ne: &[u64]) -> TensorFacts {
        TensorFacts { name: name.into(), ne: ne.to_vec(), ggml_type: GgmlType::BF16 }
    }

    #[test]
    fn llama_order_sorts_by_layer_then_name() {
        let mut names =
            vec!["blk.10.a", "blk.2.b", "token_embd.weight", "blk.2.a", "output.weight", "output_norm.weight"];
        names.sort_by(|a, b| llama_order(a, b));
        assert_eq!(
            names,
            ["output.weight", "output_norm.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]
        );
    }

    #[test]
    fn gpt_oss_widths_fall_back_from_k_quants() {
        let model = ModelFacts { arch: "gpt-oss".into(), n_layer: 24, n_expert: 32, n_head: 64, n_head_kv: 8 };
        let tensors = [
            t("output.weight", &[2880, 201088]),
            t("blk.0.attn_q.weight", &[2880, 4096]),
            t("blk.0.ffn_down_exps.weight", &[2880, 2880, 32]),
        ];
        let types = target_types(&model, &tensors, Ftype::Q4_K_M).unwrap();
        // output: Q6_K → Q8_0 (2880 is not a multiple of 256); attn_q Q4_K → Q5_0;
        // ffn_down of layer 0 gets more bits (Q6_K) → Q8_0.
        assert_eq!(types, [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q8_0]);
    }

    #[test]
    fn mixtral_special_cases() {
        let model = ModelFacts { arch: "llama".into(), n_layer: 32, n_expert: 8, n_head: 32, n_head_kv: 8 };
        let tensors = [
            t("blk.5.attn_k.weight", &[4096, 1024]),
            t("blk.5.attn_v.weight", &[4096, 1024]),
            t("blk.5.attn_output.weight", &[4096, 4096]),
            t("blk.5.ffn_down_exps.weight", &[14336, 4096, 8]),
            t("blk.5.ffn_gate_inp.weight", &[4096, 8]),
        ];
        let types = target_types(&model, &tensors, Ftype::Q4_K_M).unwrap();
        // ffn_down: layer 5 of 32 → (5 - 4) % 3 = 1 → no bump.
        assert_eq!(types, [GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q5_K, GgmlType::Q4_K, GgmlType::BF16]);
    }

    #[test]
    fn ftype_names() {
        assert_eq!(Ftype::parse("q4_k").unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::parse("MXFP4_MOE").unwrap().id(), 38);
        assert!(Ftype::parse("Q3_K").unwrap_err().contains("choose one of"));
        for (i, row) in FTYPES.iter().enumerate() {
            assert_eq!(row.0 as usize, i);
        }
    }
}
