//! The mix rules on small model shapes, against what `llama_tensor_get_type_impl` gives
//! (worked out from `src/llama-quant.cpp`; `scripts/check_quant_rules.py` compares every file
//! type with llama-quantize itself).

use moeq_formats::gguf::GgmlType as G;

use super::tensor_type::TensorTypeRule;
use super::*;

fn t(name: &str, ne: &[u64]) -> TensorFacts {
    TensorFacts { name: name.into(), ne: ne.to_vec(), ggml_type: G::BF16 }
}

/// A Llama-shaped model (llama-quantize order): `n_layer` layers, width `w`, GQA 4.
fn llama(n_layer: u32, w: u64, tied: bool) -> (ModelFacts, Vec<TensorFacts>) {
    let model = ModelFacts { arch: "llama".into(), n_layer, n_expert: 0, n_head: 8, n_head_kv: 2 };
    let mut ts = Vec::new();
    if !tied {
        ts.push(t("output.weight", &[w, 1000]));
    }
    ts.push(t("output_norm.weight", &[w]));
    ts.push(t("token_embd.weight", &[w, 1000]));
    for i in 0..n_layer {
        for (name, ne) in [
            ("attn_k", vec![w, w / 4]),
            ("attn_norm", vec![w]),
            ("attn_output", vec![w, w]),
            ("attn_q", vec![w, w]),
            ("attn_v", vec![w, w / 4]),
            ("ffn_down", vec![2 * w, w]),
            ("ffn_gate", vec![w, 2 * w]),
            ("ffn_norm", vec![w]),
            ("ffn_up", vec![w, 2 * w]),
        ] {
            ts.push(t(&format!("blk.{i}.{name}.weight"), &ne));
        }
    }
    (model, ts)
}

/// A Mixtral-shaped model: `n_expert` experts, no GQA.
fn mixtral(n_layer: u32, n_expert: u32, w: u64) -> (ModelFacts, Vec<TensorFacts>) {
    let model = ModelFacts { arch: "llama".into(), n_layer, n_expert, n_head: 4, n_head_kv: 4 };
    let e = n_expert as u64;
    let mut ts =
        vec![t("output.weight", &[w, 1000]), t("output_norm.weight", &[w]), t("token_embd.weight", &[w, 1000])];
    for i in 0..n_layer {
        for (name, ne) in [
            ("attn_k", vec![w, w]),
            ("attn_norm", vec![w]),
            ("attn_output", vec![w, w]),
            ("attn_q", vec![w, w]),
            ("attn_v", vec![w, w]),
            ("ffn_down_exps", vec![2 * w, w, e]),
            ("ffn_gate_exps", vec![w, 2 * w, e]),
            ("ffn_gate_inp", vec![w, e]),
            ("ffn_norm", vec![w]),
            ("ffn_up_exps", vec![w, 2 * w, e]),
        ] {
            ts.push(t(&format!("blk.{i}.{name}.weight"), &ne));
        }
    }
    (model, ts)
}

fn types(model: &ModelFacts, ts: &[TensorFacts], ftype: Ftype, opts: &PlanOptions) -> Vec<(String, G)> {
    decide(model, ts, ftype, opts).unwrap().into_iter().zip(ts).map(|(d, t)| (t.name.clone(), d.ty)).collect()
}

fn type_of(list: &[(String, G)], name: &str) -> G {
    list.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name}")).1
}

#[test]
fn q2_k_on_a_gqa_model() {
    let (m, ts) = llama(8, 256, false);
    let got = types(&m, &ts, Ftype::Q2_K, &PlanOptions::default());
    assert_eq!(type_of(&got, "output.weight"), G::Q6_K);
    assert_eq!(type_of(&got, "token_embd.weight"), G::Q2_K);
    assert_eq!(type_of(&got, "output_norm.weight"), G::BF16);
    assert_eq!(type_of(&got, "blk.3.attn_v.weight"), G::Q4_K, "GQA 4");
    assert_eq!(type_of(&got, "blk.3.ffn_down.weight"), G::Q3_K);
    assert_eq!(type_of(&got, "blk.3.attn_output.weight"), G::Q3_K);
    assert_eq!(type_of(&got, "blk.3.attn_q.weight"), G::Q2_K);
}

#[test]
fn tied_embeddings_follow_the_output_rules() {
    let (m, ts) = llama(8, 256, true);
    let got = types(&m, &ts, Ftype::Q3_K_M, &PlanOptions::default());
    assert_eq!(type_of(&got, "token_embd.weight"), G::Q6_K);
    // --output-tensor-type reaches the tied embedding through the mix, with the fallback.
    let opts = PlanOptions { output_tensor_type: Some(G::Q8_0), ..PlanOptions::default() };
    assert_eq!(type_of(&types(&m, &ts, Ftype::Q3_K_M, &opts), "token_embd.weight"), G::Q8_0);
    // The i-quants' tied output is Q5_K.
    assert_eq!(type_of(&types(&m, &ts, Ftype::IQ2_M, &PlanOptions::default()), "token_embd.weight"), G::Q5_K);
}

#[test]
fn q3_k_m_counts_attention_v_and_layers() {
    let (m, ts) = llama(16, 256, false);
    let got = types(&m, &ts, Ftype::Q3_K_M, &PlanOptions::default());
    // The first two attention-v get Q5_K, the rest Q4_K.
    assert_eq!(type_of(&got, "blk.0.attn_v.weight"), G::Q5_K);
    assert_eq!(type_of(&got, "blk.1.attn_v.weight"), G::Q5_K);
    assert_eq!(type_of(&got, "blk.2.attn_v.weight"), G::Q4_K);
    // ffn_down: layer 0 < 16/16 → Q5_K; then Q4_K (not Falcon).
    assert_eq!(type_of(&got, "blk.0.ffn_down.weight"), G::Q5_K);
    assert_eq!(type_of(&got, "blk.1.ffn_down.weight"), G::Q4_K);
    assert_eq!(type_of(&got, "blk.5.attn_output.weight"), G::Q4_K);
    assert_eq!(type_of(&got, "blk.5.ffn_up.weight"), G::Q3_K);
}

#[test]
fn eight_experts_bump_attention_and_the_iq2_family_counts_ffn_down() {
    let (m, ts) = mixtral(16, 8, 256);
    let got = types(&m, &ts, Ftype::IQ2_XXS, &PlanOptions { has_imatrix: true, ..PlanOptions::default() });
    assert_eq!(type_of(&got, "blk.4.attn_v.weight"), G::Q4_K, "n_expert ≥ 4");
    assert_eq!(type_of(&got, "blk.4.attn_k.weight"), G::Q4_K, "8 experts");
    assert_eq!(type_of(&got, "blk.4.attn_output.weight"), G::Q5_K, "8 experts");
    assert_eq!(type_of(&got, "blk.4.attn_q.weight"), G::IQ2_XXS);
    // ffn_down: the counter (not the layer), < 16/8.
    assert_eq!(type_of(&got, "blk.1.ffn_down_exps.weight"), G::Q2_K);
    assert_eq!(type_of(&got, "blk.2.ffn_down_exps.weight"), G::IQ2_XXS);
    assert_eq!(type_of(&got, "token_embd.weight"), G::Q2_K);
    assert_eq!(type_of(&got, "output.weight"), G::Q5_K);
    assert_eq!(type_of(&got, "blk.4.ffn_gate_inp.weight"), G::BF16);
    // Q4_K_M: attention-v and attn_k Q8_0, attn_output Q5_K.
    let got = types(&m, &ts, Ftype::Q4_K_M, &PlanOptions::default());
    assert_eq!(type_of(&got, "blk.4.attn_v.weight"), G::Q8_0);
    assert_eq!(type_of(&got, "blk.4.attn_k.weight"), G::Q8_0);
    assert_eq!(type_of(&got, "blk.4.attn_output.weight"), G::Q5_K);
    // IQ3_M: ffn_down of 8-expert models gets Q4_K where use_more_bits says so.
    let got = types(&m, &ts, Ftype::IQ3_M, &PlanOptions::default());
    assert_eq!(type_of(&got, "blk.4.ffn_down_exps.weight"), G::Q4_K, "(4 - 2) % 3 == 2");
    assert_eq!(type_of(&got, "blk.5.ffn_down_exps.weight"), G::IQ3_S);
    // Four experts: no 8-expert bump, but the i-quant attention-v rule counts experts ≥ 4.
    let (m4, ts4) = mixtral(16, 4, 256);
    let got = types(&m4, &ts4, Ftype::Q4_K_M, &PlanOptions::default());
    assert_eq!(type_of(&got, "blk.4.attn_k.weight"), G::Q4_K);
    let got = types(&m4, &ts4, Ftype::IQ2_S, &PlanOptions { has_imatrix: true, ..PlanOptions::default() });
    assert_eq!(type_of(&got, "blk.4.attn_v.weight"), G::Q4_K);
    assert_eq!(type_of(&got, "blk.4.attn_output.weight"), G::IQ3_S);
}

#[test]
fn the_importance_matrix_changes_some_mixes() {
    let (m, ts) = llama(16, 256, false);
    let m1 = ModelFacts { n_head_kv: 8, ..m.clone() }; // no GQA
    let without = types(&m1, &ts, Ftype::IQ3_XXS, &PlanOptions::default());
    let with = types(&m1, &ts, Ftype::IQ3_XXS, &PlanOptions { has_imatrix: true, ..PlanOptions::default() });
    assert_eq!(type_of(&without, "blk.5.attn_v.weight"), G::IQ3_S);
    assert_eq!(type_of(&with, "blk.5.attn_v.weight"), G::IQ3_XXS);
    assert_eq!(type_of(&without, "blk.0.ffn_down.weight"), G::Q4_K);
    assert_eq!(type_of(&without, "blk.5.ffn_down.weight"), G::Q3_K);
    assert_eq!(type_of(&with, "blk.5.ffn_down.weight"), G::IQ3_XXS);
    assert_eq!(type_of(&with, "blk.5.attn_q.weight"), G::IQ2_S);
    let q4_0 = types(&m, &ts, Ftype::Q4_0, &PlanOptions { has_imatrix: true, ..PlanOptions::default() });
    assert_eq!(type_of(&q4_0, "blk.1.ffn_down.weight"), G::Q4_1);
    assert_eq!(type_of(&q4_0, "blk.2.ffn_down.weight"), G::Q4_0);
    let iq4 = types(&m, &ts, Ftype::IQ4_XS, &PlanOptions::default());
    assert_eq!(type_of(&iq4, "blk.1.ffn_down.weight"), G::Q5_K);
    assert_eq!(type_of(&iq4, "blk.3.attn_v.weight"), G::Q5_K, "GQA 4");
}

#[test]
fn options_and_counters_interact_as_in_llama_quantize() {
    let (m, ts) = llama(8, 256, false);
    // A manual rule skips the mix, so the dense ffn_down counter does not advance for it:
    // the next ffn_down is counted as layer 0 again.
    let (rule, _) = TensorTypeRule::parse(r"blk\.0\.ffn_down=q8_0").unwrap();
    let opts = PlanOptions { tensor_types: vec![rule], ..PlanOptions::default() };
    let got = types(&m, &ts, Ftype::Q4_K_S, &opts);
    assert_eq!(type_of(&got, "blk.0.ffn_down.weight"), G::Q8_0);
    assert_eq!(type_of(&got, "blk.1.ffn_down.weight"), G::Q5_K, "counted as the first layer");
    let plain = types(&m, &ts, Ftype::Q4_K_S, &PlanOptions::default());
    assert_eq!(type_of(&plain, "blk.1.ffn_down.weight"), G::Q4_K);
    // --pure: the default everywhere quantizable, the output too.
    let pure = types(&m, &ts, Ftype::Q3_K_M, &PlanOptions { pure: true, ..PlanOptions::default() });
    assert!(pure.iter().filter(|(n, _)| !n.contains("norm")).all(|(_, ty)| *ty == G::Q3_K), "{pure:?}");
    // --token-embedding-type and --output-tensor-type win over rules and --pure.
    let (rule, _) = TensorTypeRule::parse("token_embd=q4_0").unwrap();
    let opts = PlanOptions {
        token_embedding_type: Some(G::Q8_0),
        output_tensor_type: Some(G::F16),
        tensor_types: vec![rule],
        pure: true,
        ..PlanOptions::default()
    };
    let got = types(&m, &ts, Ftype::Q4_K_M, &opts);
    assert_eq!(type_of(&got, "token_embd.weight"), G::Q8_0);
    assert_eq!(type_of(&got, "output.weight"), G::F16);
    // --leave-output-tensor keeps it.
    let opts = PlanOptions { leave_output_tensor: true, ..PlanOptions::default() };
    assert_eq!(type_of(&types(&m, &ts, Ftype::Q4_K_M, &opts), "output.weight"), G::BF16);
    // F16 files ignore rules.
    let (rule, _) = TensorTypeRule::parse("attn=q8_0").unwrap();
    let opts = PlanOptions { tensor_types: vec![rule], ..PlanOptions::default() };
    assert_eq!(type_of(&types(&m, &ts, Ftype::F16, &opts), "blk.0.attn_q.weight"), G::F16);
}

#[test]
fn rows_that_are_not_multiples_of_256_fall_back() {
    let model = ModelFacts { arch: "gpt-oss".into(), n_layer: 24, n_expert: 32, n_head: 64, n_head_kv: 8 };
    let ts = [
        t("output.weight", &[2880, 1000]),
        t("token_embd.weight", &[2880, 1000]),
        t("blk.0.attn_q.weight", &[2880, 4096]),
        t("blk.0.attn_v.weight", &[2880, 512]),
        t("blk.0.ffn_down_exps.weight", &[2880, 2880, 32]),
        t("blk.0.ffn_up_exps.weight", &[2880, 2880, 32]),
        t("blk.0.odd.weight", &[100, 64]),
    ];
    let opts = PlanOptions { has_imatrix: true, ..PlanOptions::default() };
    let got = types(&model, &ts, Ftype::IQ2_XXS, &opts);
    assert_eq!(type_of(&got, "output.weight"), G::Q8_0, "2880 is no multiple of 256");
    assert_eq!(type_of(&got, "token_embd.weight"), G::Q4_0, "Q2_K falls back to Q4_0");
    assert_eq!(type_of(&got, "blk.0.attn_q.weight"), G::IQ4_NL);
    assert_eq!(type_of(&got, "blk.0.attn_v.weight"), G::Q5_0, "Q4_K (GQA 8) falls back to Q5_0");
    assert_eq!(type_of(&got, "blk.0.ffn_down_exps.weight"), G::Q4_0, "Q2_K (first eighth) → Q4_0");
    assert_eq!(type_of(&got, "blk.0.ffn_up_exps.weight"), G::IQ4_NL);
    assert_eq!(type_of(&got, "blk.0.odd.weight"), G::F16, "100 is no multiple of 32");
    let d = decide(&model, &ts, Ftype::IQ2_XXS, &opts).unwrap();
    let why: Vec<&str> = d[2].steps.iter().map(|s| s.rule).collect();
    assert_eq!(why, ["file-type", "row-fallback"]);
    // Options without fallback refuse rows their type cannot hold.
    let opts = PlanOptions { token_embedding_type: Some(G::Q4_K), ..PlanOptions::default() };
    let err = decide(&model, &ts, Ftype::Q4_K_M, &opts).unwrap_err().to_string();
    assert!(err.contains("token_embd.weight") && err.contains("2880"), "{err}");
}

#[test]
fn reasons_name_the_rule() {
    let (m, ts) = llama(8, 256, false);
    let d = decide(&m, &ts, Ftype::Q4_K_M, &PlanOptions::default()).unwrap();
    let of = |name: &str| &d[ts.iter().position(|t| t.name == name).unwrap()];
    let rules = |name: &str| of(name).steps.iter().map(|s| s.rule).collect::<Vec<_>>();
    assert_eq!(rules("blk.0.ffn_down.weight"), ["file-type", "use-more-bits"]);
    assert_eq!(rules("blk.2.ffn_down.weight"), ["file-type"]);
    assert_eq!(rules("blk.0.attn_norm.weight"), ["not-quantized"]);
    assert!(of("blk.0.attn_norm.weight").steps[0].detail.contains("1-D"));
    assert!(!of("blk.0.attn_norm.weight").quantizable);
}

#[test]
fn imatrix_requirements() {
    assert!(requires_imatrix("blk.0.attn_q.weight", G::IQ2_XXS, Ftype::IQ2_XXS));
    assert!(requires_imatrix("blk.0.attn_q.weight", G::IQ3_XXS, Ftype::IQ3_XS));
    assert!(!requires_imatrix("blk.0.attn_q.weight", G::IQ3_S, Ftype::IQ3_S));
    assert!(requires_imatrix("blk.0.attn_q.weight", G::Q2_K, Ftype::Q2_K_S));
    assert!(!requires_imatrix("blk.0.attn_q.weight", G::Q2_K, Ftype::Q2_K));
    assert!(!requires_imatrix("token_embd.weight", G::IQ2_XXS, Ftype::IQ2_XXS));
    assert!(!requires_imatrix("output.weight", G::IQ1_S, Ftype::IQ1_S));
}

#[test]
fn model_facts() {
    let m = ModelFacts { arch: "llama".into(), n_layer: 80, n_expert: 0, n_head: 64, n_head_kv: 8 };
    assert!(m.is_70b());
    assert_eq!(m.n_gqa(), 8);
    assert!(!ModelFacts { n_head_kv: 64, ..m.clone() }.is_70b(), "65B: no GQA");
    assert!(!ModelFacts { n_expert: 8, ..m.clone() }.is_70b());
    assert_eq!(ModelFacts { n_head_kv: 0, ..m.clone() }.n_gqa(), 0);
    // 70B: Q3_K/Q4_K attention-v becomes Q5_K.
    let ts = [t("blk.10.attn_v.weight", &[8192, 1024])];
    assert_eq!(types(&m, &ts, Ftype::Q3_K_S, &PlanOptions::default())[0].1, G::Q5_K);
    // MoE layers come from the name; an unplaceable one is an error, as in llama-quantize.
    let moe = ModelFacts { arch: "llama".into(), n_layer: 2, n_expert: 4, n_head: 4, n_head_kv: 4 };
    let bad = [t("ffn_down_exps.weight", &[256, 256, 4])];
    assert!(decide(&moe, &bad, Ftype::Q4_K_M, &PlanOptions::default()).unwrap_err().to_string().contains("layer"));
    let bad = [t("blk.7.ffn_down_exps.weight", &[256, 256, 4])];
    assert!(decide(&moe, &bad, Ftype::Q4_K_M, &PlanOptions::default()).unwrap_err().to_string().contains("[0, 2)"));
}
