//! Planning a requantization: the llama.cpp file types, what the rules know about a model and
//! its tensors, the tensor order, categories, which tensors may be quantized and the row-width
//! fallback, as `llama-quantize` has them (`src/llama-quant.cpp`: `llama_ftype_get_default_type`,
//! `tensor_get_category`, `tensor_allows_quantization`, `tensor_type_fallback`). The per-tensor
//! mix rules and the options live in [`crate::plan::quant_rules`].

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
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    IQ4_NL,
    IQ4_XS,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ1_S,
    IQ1_M,
    TQ1_0,
    TQ2_0,
}

/// `(ftype, name, llama_ftype id, default tensor type)` (`llama_ftype_get_default_type`).
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
    (Ftype::Q2_K, "Q2_K", 10, GgmlType::Q2_K),
    (Ftype::Q2_K_S, "Q2_K_S", 21, GgmlType::Q2_K),
    (Ftype::Q3_K_S, "Q3_K_S", 11, GgmlType::Q3_K),
    (Ftype::Q3_K_M, "Q3_K_M", 12, GgmlType::Q3_K),
    (Ftype::Q3_K_L, "Q3_K_L", 13, GgmlType::Q3_K),
    (Ftype::IQ4_NL, "IQ4_NL", 25, GgmlType::IQ4_NL),
    (Ftype::IQ4_XS, "IQ4_XS", 30, GgmlType::IQ4_XS),
    (Ftype::IQ3_XXS, "IQ3_XXS", 23, GgmlType::IQ3_XXS),
    (Ftype::IQ3_XS, "IQ3_XS", 22, GgmlType::IQ3_S),
    (Ftype::IQ3_S, "IQ3_S", 26, GgmlType::IQ3_S),
    (Ftype::IQ3_M, "IQ3_M", 27, GgmlType::IQ3_S),
    (Ftype::IQ2_XXS, "IQ2_XXS", 19, GgmlType::IQ2_XXS),
    (Ftype::IQ2_XS, "IQ2_XS", 20, GgmlType::IQ2_XS),
    (Ftype::IQ2_S, "IQ2_S", 28, GgmlType::IQ2_XS),
    (Ftype::IQ2_M, "IQ2_M", 29, GgmlType::IQ2_S),
    (Ftype::IQ1_S, "IQ1_S", 24, GgmlType::IQ1_S),
    (Ftype::IQ1_M, "IQ1_M", 31, GgmlType::IQ1_M),
    (Ftype::TQ1_0, "TQ1_0", 36, GgmlType::TQ1_0),
    (Ftype::TQ2_0, "TQ2_0", 37, GgmlType::TQ2_0),
];

impl Ftype {
    fn row(self) -> &'static (Ftype, &'static str, u32, GgmlType) {
        &FTYPES[self as usize]
    }

    /// Every file type moeq offers, in [`Ftype`] order.
    pub fn all() -> impl Iterator<Item = Ftype> {
        FTYPES.iter().map(|r| r.0)
    }

    /// Parses a file type as llama-quantize's `try_parse_ftype` does: a name in any case
    /// (`Q4_K_M`, `iq2_xxs`; `Q3_K`, `Q4_K` and `Q5_K` mean the `_M` mixes) or a
    /// `llama_ftype` id (`15`).
    pub fn parse(name: &str) -> Result<Ftype, String> {
        let upper = name.to_ascii_uppercase();
        let upper = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        let by_id = |text: &str| {
            let id: u32 = text.parse().ok()?;
            FTYPES.iter().find(|r| r.2 == id)
        };
        let by_name = FTYPES.iter().find(|r| r.1 == upper);
        by_name.or_else(|| by_id(upper)).map(|r| r.0).ok_or_else(|| {
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

/// What the mix rules need to know about the model (llama.cpp's `hparams` and `model.type`).
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.expert_count` (0 for dense models).
    pub n_expert: u32,
    /// `{arch}.attention.head_count` (of layer 0).
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv` (of layer 0; the head count when absent).
    pub n_head_kv: u32,
}

impl ModelFacts {
    /// `hparams.n_gqa()`: query heads per KV head (0 without KV heads).
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp's loader calls the model `LLM_TYPE_70B` (the only model size the
    /// rules look at): Llama with 80 layers, not 8 experts, and grouped-query attention;
    /// Qwen2, Deci and OLMo with 80 layers; Jais2 with 68.
    pub fn is_70b(&self) -> bool {
        match self.arch.as_str() {
            "llama" => self.n_expert != 8 && self.n_layer == 80 && self.n_head != self.n_head_kv,
            "qwen2" | "deci" | "olmo" => self.n_layer == 80,
            "jais2" => self.n_layer == 68,
            _ => false,
        }
    }
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
    /// `ggml_n_dims`: trailing dimensions of 1 do not count; at least 1.
    pub fn n_dims(&self) -> usize {
        self.ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
    }

    /// `ne[i]`, 1 past the stored dimensions.
    pub fn dim(&self, i: usize) -> u64 {
        self.ne.get(i).copied().unwrap_or(1)
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

/// llama-quantize's tensor categories (`tensor_get_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Category {
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

/// The category of a tensor name, first match in llama.cpp's order.
pub fn category(name: &str) -> Category {
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

/// `category_is_attn_v`: the attention-v-like tensors (more sensitive to quantization).
pub fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB)
}

/// Why `tensor_allows_quantization` keeps a tensor as it is, or `None` when it may be
/// quantized. `arch` is `general.architecture`; `quantize_output` is false under
/// `--leave-output-tensor`. The lists of excluded names are llama.cpp's.
pub fn not_quantizable(t: &TensorFacts, arch: &str, quantize_output: bool) -> Option<String> {
    if t.n_dims() < 2 {
        return Some("1-D tensors are not quantized".into());
    }
    if !t.name.ends_with("weight") {
        return Some("the name does not end in 'weight'".into());
    }
    if t.name.contains("_norm.weight") {
        return Some("norms are not quantized".into());
    }
    if !quantize_output && t.name == "output.weight" {
        return Some("--leave-output-tensor".into());
    }
    if t.name.contains("ffn_gate_inp.weight") {
        return Some("expert routers (ffn_gate_inp) are not quantized".into());
    }
    const EXCLUDED: &[&str] = &[
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
    const GLM5_NEXT: &[&str] = &[
        "hc_",
        "indexer.attn_q_b",
        "indexer.attn_k",
        "indexer.proj",
        "indexer_compressor_gate",
        "indexer_compressor_ape",
        "ssm_f_a.weight",
        "ssm_f_b.weight",
        "ssm_g_a.weight",
        "ssm_g_b.weight",
        "ssm_beta.weight",
        "attn_kv_a_mqa.weight",
        "attn_k_b.weight",
        "attn_v_b.weight",
    ];
    let arch_list: &[&str] = if arch == "glm5-next" { GLM5_NEXT } else { &[] };
    if let Some(pat) = EXCLUDED.iter().chain(arch_list).find(|pat| t.name.contains(*pat)) {
        return Some(format!("llama.cpp does not quantize tensors named '*{pat}*'"));
    }
    if t.name == "position_embd.weight" || t.name == "token_types.weight" {
        return Some("positional embeddings and token types are not quantized".into());
    }
    None
}

/// `tensor_allows_quantization` (output tensor quantized).
pub fn allows_quantization(t: &TensorFacts) -> bool {
    not_quantizable(t, "", true).is_none()
}

/// The target type of every tensor (given in [`llama_order`]), as `llama-quantize IN OUT
/// TYPE` picks them without options or importance matrix.
pub fn target_types(model: &ModelFacts, tensors: &[TensorFacts], ftype: Ftype) -> Result<Vec<GgmlType>> {
    let decisions =
        crate::plan::quant_rules::decide(model, tensors, ftype, &crate::plan::quant_rules::PlanOptions::default())?;
    Ok(decisions.into_iter().map(|d| d.ty).collect())
}

/// `use_more_bits`: the first and last eighth of the layers, and every third in between.
pub fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `tensor_type_fallback`: the type that replaces `target` when its block does not divide the
/// rows (`ncols` values each). Errors for a 256-block type without a fallback.
pub fn fallback(ncols: u64, target: GgmlType) -> Result<GgmlType> {
    use GgmlType as G;
    if ncols.is_multiple_of(target.block_size()) {
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
    if !ncols.is_multiple_of(ret.block_size()) {
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
        assert_eq!(Ftype::parse("Q3_K").unwrap(), Ftype::Q3_K_M);
        assert_eq!(Ftype::parse("iq2_xxs").unwrap().id(), 19);
        assert_eq!(Ftype::parse("12").unwrap(), Ftype::Q3_K_M);
        assert_eq!(Ftype::parse("30").unwrap(), Ftype::IQ4_XS);
        assert!(Ftype::parse("Q7_K").unwrap_err().contains("choose one of"));
        assert!(Ftype::parse("4").is_err(), "removed ftype ids are refused");
        for (i, row) in FTYPES.iter().enumerate() {
            assert_eq!(row.0 as usize, i);
        }
    }
}
