//! DeepSeek-V3 → GGUF: what llama.cpp's `convert_hf_to_gguf.py` (`DeepseekV2Model`) writes:
//! the `deepseek2` architecture's names and keys, and the recipes.
//!
//! - `kv_b_proj` [heads · (qk_nope + v_head_dim), kv_lora_rank] is split per head into
//!   `attn_k_b` (the key rows, transposed: [heads, kv_lora_rank, qk_nope]) and `attn_v_b` (the
//!   value rows: [heads, v_head_dim, kv_lora_rank]), both strided views of the stored tensor;
//! - per-expert `gate_proj`/`up_proj`/`down_proj` are stacked into `ffn_*_exps` (each
//!   expert's rows written at their offset) at the layer's last expert tensor, in the
//!   converter's order (down, gate, up);
//! - `e_score_correction_bias` becomes `exp_probs_b.bias`;
//! - the multi-token-prediction layers (`model.layers.N` for N ≥ `num_hidden_layers`) are left
//!   out, as the converter's `skip_mtp` leaves them; GLM-4.7-Flash's (`Glm4MoeLiteModel`) are
//!   exported as extra blocks, a whole MoE layer plus GLM-4.5's `nextn.*` tensors
//!   ([`crate::families::glm4_moe::gguf::LAYER_NAMES`]);
//! - FP8 weights (F8_E4M3 with `weight_scale_inv`) are decoded block by block as the
//!   converter dequantizes them (value × block scale in f32) and rounded to the output type,
//!   piece by piece of rows: no dequantized copy exists anywhere.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_formats::safetensors::{Dtype, SafetensorsModel};

use super::config::DeepseekV3Config;
use crate::families::ModelConfig;
use crate::families::common::{
    Converted, Fp8Scales, OutType, SourceTensor, converter_type, expert_layer, float_file_type, gguf_name, gguf_plan,
    source_tensors, stacked,
};
use crate::plan::recipe::{Input, Part, Recipe, View};
use crate::vocab::Metadata;

/// llama.cpp's names for DeepSeek-V3's per-layer tensors (not the per-expert ones).
/// `self_attn.embed_q` and `self_attn.unembed_out` are mlx-lm's names for the halves of
/// `kv_b_proj` (`attn_k_b`, `attn_v_b`), which a checkpoint does not hold.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    ("mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
    ("mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"),
    ("self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"),
    ("self_attn.embed_q.weight", "attn_k_b.weight"),
    ("self_attn.unembed_out.weight", "attn_v_b.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"),
    ("self_attn.q_a_proj.weight", "attn_q_a.weight"),
    ("self_attn.q_b_proj.weight", "attn_q_b.weight"),
];

/// The layer of `model.layers.N.…`.
fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// The layer of a per-expert tensor (`model.layers.N.mlp.experts.J.….weight`).
/// The Hugging Face tensors a DeepSeek-V3 checkpoint holds, with shapes (numpy order), the
/// multi-token-prediction layers and `lm_head.weight` aside; with GLM-4.7-Flash's `mtp`
/// layers (`Some(n)`: layers `num_hidden_layers`… of them), theirs too, the MTP layer's own
/// embedding, head and head norm optional (as GLM-4.5's).
pub fn expected(hp: &DeepseekV3Config, mtp: Option<u64>) -> Vec<(String, Vec<u64>)> {
    let (h, v) = (hp.n_embd, hp.vocab_size);
    let mut x = vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    for n in 0..hp.n_layer + mtp.unwrap_or(0) {
        let l = |s: &str| format!("model.layers.{n}.{s}");
        if n >= hp.n_layer {
            x.extend([
                (l("eh_proj.weight"), vec![h, 2 * h]),
                (l("enorm.weight"), vec![h]),
                (l("hnorm.weight"), vec![h]),
                (l("embed_tokens.weight"), vec![v, h]),
                (l("shared_head.head.weight"), vec![v, h]),
                (l("shared_head.norm.weight"), vec![h]),
            ]);
        }
        x.extend([
            (l("input_layernorm.weight"), vec![h]),
            (l("post_attention_layernorm.weight"), vec![h]),
            (l("self_attn.q_a_proj.weight"), vec![hp.q_lora_rank, h]),
            (l("self_attn.q_a_layernorm.weight"), vec![hp.q_lora_rank]),
            (l("self_attn.q_b_proj.weight"), vec![hp.n_head * (hp.qk_nope + hp.qk_rope), hp.q_lora_rank]),
            (l("self_attn.kv_a_proj_with_mqa.weight"), vec![hp.kv_lora_rank + hp.qk_rope, h]),
            (l("self_attn.kv_a_layernorm.weight"), vec![hp.kv_lora_rank]),
            (l("self_attn.kv_b_proj.weight"), vec![hp.n_head * (hp.qk_nope + hp.v_head_dim), hp.kv_lora_rank]),
            (l("self_attn.o_proj.weight"), vec![h, hp.n_head * hp.v_head_dim]),
        ]);
        if n < hp.n_dense_lead {
            x.extend([
                (l("mlp.gate_proj.weight"), vec![hp.n_ff, h]),
                (l("mlp.up_proj.weight"), vec![hp.n_ff, h]),
                (l("mlp.down_proj.weight"), vec![h, hp.n_ff]),
            ]);
            continue;
        }
        let (f, shared) = (hp.n_ff_exp, hp.n_ff_exp * hp.n_expert_shared);
        x.extend([
            (l("mlp.gate.weight"), vec![hp.n_expert, h]),
            (l("mlp.gate.e_score_correction_bias"), vec![hp.n_expert]),
            (l("mlp.shared_experts.gate_proj.weight"), vec![shared, h]),
            (l("mlp.shared_experts.up_proj.weight"), vec![shared, h]),
            (l("mlp.shared_experts.down_proj.weight"), vec![h, shared]),
        ]);
        for j in 0..hp.n_expert {
            x.extend([
                (l(&format!("mlp.experts.{j}.gate_proj.weight")), vec![f, h]),
                (l(&format!("mlp.experts.{j}.up_proj.weight")), vec![f, h]),
                (l(&format!("mlp.experts.{j}.down_proj.weight")), vec![h, f]),
            ]);
        }
    }
    x
}

/// Whether an expected tensor may be absent: a GLM MTP layer's own embedding and head.
fn optional(name: &str) -> bool {
    [".embed_tokens.weight", ".shared_head.head.weight", ".shared_head.norm.weight"]
        .iter()
        .any(|s| name.starts_with("model.layers.") && name.ends_with(s))
}

/// Checks the tensors against what the model must hold: names, shapes, and dtypes (floats,
/// or F8_E4M3 with block scales, which [`Fp8Scales::split`] checked).
fn check(
    model: &SafetensorsModel,
    tensors: &[SourceTensor],
    want: &[(String, Vec<u64>)],
    fp8: &Fp8Scales,
    kind: &str,
) -> Result<()> {
    // By name: the released checkpoint has some 45,000 weights.
    let shapes: HashMap<&str, &Vec<u64>> = want.iter().map(|(n, s)| (n.as_str(), s)).collect();
    for s in tensors {
        let Some(shape) = shapes.get(s.name.as_str()) else {
            bail!("{}: not a tensor of a {} checkpoint", s.origin, kind);
        };
        if s.shape != **shape {
            bail!("{}: shape {:?}, expected {:?}", s.origin, s.shape, shape);
        }
        if !fp8.is_fp8(s) && !matches!(s.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            bail!("{}: dtype {:?}, expected BF16, F16, F32, or F8_E4M3 with block scales", s.origin, s.dtype);
        }
    }
    let held: HashSet<&str> = tensors.iter().map(|s| s.name.as_str()).collect();
    for (name, _) in want {
        if !held.contains(name.as_str()) && !optional(name) {
            bail!("{}: tensor '{name}' is missing", model.path().display());
        }
    }
    Ok(())
}

/// The converter's `--outtype auto`: the type of the first matrix (in its order, every tensor
/// counted, the ones it later drops too) that is BF16 or F16; F16 when none is.
fn auto_outtype(model: &SafetensorsModel) -> GgmlType {
    for shard in model.shards() {
        let mut tensors: Vec<_> = shard.tensors().iter().collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for t in tensors.into_iter().filter(|t| t.shape.len() >= 2) {
            match t.dtype {
                Dtype::BF16 => return GgmlType::BF16,
                Dtype::F16 => return GgmlType::F16,
                _ => {}
            }
        }
    }
    GgmlType::F16
}

/// The input reading `view` of source `s`, in type `ty`: FP8 decoded with its scales and
/// rounded to `ty`; stored bytes copied when nothing changes; else decoded and re-encoded.
fn input<'a>(s: &SourceTensor<'a>, fp8: &Fp8Scales<'a>, view: View, ty: GgmlType) -> Input<'a> {
    if let Some(input) = fp8.input(s, view, ty) {
        return input;
    }
    let plain = view == View::plain(view.n_rows(), view.cols);
    if plain && s.stored.ty == ty { Input::Copy(s.stored) } else { Input::Values { src: s.stored, view } }
}

/// Plans the GGUF llama.cpp's converter writes for a DeepSeek-V3 checkpoint.
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    outtype: OutType,
    vocab: Option<Metadata>,
    glm_lite: bool,
) -> Result<Converted<'a>> {
    let (hp, mut warnings) =
        if glm_lite { DeepseekV3Config::load_glm_lite(config)? } else { DeepseekV3Config::load(config)? };
    let mut mtp = BTreeSet::new();
    let mut lm_head = None;
    let sources = source_tensors(model, |t| {
        if glm_lite && t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        match layer_of(&t.name) {
            Some(l) if l >= hp.n_layer && glm_lite => {
                mtp.insert(l);
            }
            Some(l) if l >= hp.n_layer => {
                mtp.insert(l);
                return Ok(Vec::new());
            }
            _ => {}
        }
        if t.name == "lm_head.weight" || t.name == "lm_head.weight_scale_inv" {
            lm_head = Some(t.origin.clone());
        }
        Ok(vec![t])
    })?;
    let tied = config.keys().bool("tie_word_embeddings").with_context(|| format!("{}", config.path().display()))?
        == Some(true);
    let sources: Vec<SourceTensor> =
        sources.into_iter().filter(|s| !(tied && s.name.starts_with("lm_head.weight"))).collect();
    let exported = glm_lite.then_some(hp.n_mtp);
    if glm_lite && mtp.is_empty() && hp.n_mtp > 0 {
        warnings.push(format!(
            "num_nextn_predict_layers is {} but the checkpoint has no multi-token-prediction layer; the GGUF \
             counts it in block_count as llama.cpp's converter writes it (llama.cpp loads the model without it)",
            hp.n_mtp
        ));
    } else if glm_lite && mtp.iter().any(|&l| l >= hp.n_layer + hp.n_mtp) {
        let l = mtp.iter().find(|&&l| l >= hp.n_layer + hp.n_mtp).copied().unwrap_or_default();
        bail!(
            "{}: layer model.layers.{l} is past num_hidden_layers {} + num_nextn_predict_layers {}",
            model.path().display(),
            hp.n_layer,
            hp.n_mtp
        );
    }
    if !mtp.is_empty() && !glm_lite {
        let layers: Vec<String> = mtp.iter().map(|l| format!("model.layers.{l}")).collect();
        warnings.push(format!(
            "the multi-token-prediction layer ({}) is left out, as llama.cpp's converter leaves it",
            layers.join(", ")
        ));
    }
    let (sources, fp8) = Fp8Scales::split(sources, hp.fp8_block)?;
    let mut want = expected(&hp, exported.filter(|_| !mtp.is_empty()));
    if !tied {
        want.push(("lm_head.weight".into(), vec![hp.vocab_size, hp.n_embd]));
    } else if let Some(origin) = lm_head {
        warnings.push(format!("{origin}: tie_word_embeddings is true; left out, as llama.cpp's converter does"));
    }
    check(model, &sources, &want, &fp8, if glm_lite { "GLM-4.7-Flash" } else { "DeepSeek-V3" })?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(model),
    };

    let (heads, nope, v_dim, kv_lora) = (hp.n_head, hp.qk_nope, hp.v_head_dim, hp.kv_lora_rank);
    // The stacks are made at the layer's last expert tensor; the experts found by name.
    let mut last_expert: HashMap<&str, usize> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, ".mlp.experts.") {
            last_expert.insert(layer, i);
        }
    }
    let by_name: HashMap<&str, &SourceTensor> = sources.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut recipes = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, ".mlp.experts.") {
            // down, gate, up, as the converter's order has them.
            if last_expert.get(layer) != Some(&i) {
                continue;
            }
            for (proj, name, rows, cols) in [
                ("down_proj", "ffn_down_exps", hp.n_embd, hp.n_ff_exp),
                ("gate_proj", "ffn_gate_exps", hp.n_ff_exp, hp.n_embd),
                ("up_proj", "ffn_up_exps", hp.n_ff_exp, hp.n_embd),
            ] {
                let parts = (0..hp.n_expert)
                    .map(|j| {
                        let hf = format!("model.layers.{layer}.mlp.experts.{j}.{proj}.weight");
                        let e = by_name.get(hf.as_str()).with_context(|| format!("'{hf}' is missing"))?;
                        Ok(Part { input: input(e, &fp8, View::plain(rows, cols), out), origin: e.origin.clone() })
                    })
                    .collect::<Result<Vec<_>>>()?;
                recipes.push(stacked(format!("blk.{layer}.{name}.weight"), parts, (rows, cols), out));
            }
            continue;
        }
        if s.name.ends_with(".self_attn.kv_b_proj.weight") {
            let layer = layer_of(&s.name).unwrap_or_default();
            let slab = (nope + v_dim) * kv_lora;
            // attn_k_b: head h's key rows, transposed (row c of head h holds column c of them).
            let k_b = View {
                outer: heads,
                rows: kv_lora,
                cols: nope,
                outer_stride: slab,
                row_stride: 1,
                col_stride: kv_lora,
                offset: 0,
                rope_group: 0,
            };
            // attn_v_b: head h's value rows as they are.
            let v_b = View {
                outer: heads,
                rows: v_dim,
                cols: kv_lora,
                outer_stride: slab,
                row_stride: kv_lora,
                col_stride: 1,
                offset: nope * kv_lora,
                rope_group: 0,
            };
            for (name, view, ne) in
                [("attn_k_b", k_b, vec![nope, kv_lora, heads]), ("attn_v_b", v_b, vec![kv_lora, v_dim, heads])]
            {
                let spec = TensorSpec { name: format!("blk.{layer}.{name}.weight"), ne, ggml_type: out };
                recipes.push(Recipe::new(spec, input(s, &fp8, view, out), true, s.origin.clone()));
            }
            continue;
        }
        // A GLM MTP layer's nextn.* tensors by GLM-4.5's names.
        let name = gguf_name(&s.name, LAYER_NAMES)
            .or_else(|| {
                gguf_name(&s.name, crate::families::glm4_moe::gguf::LAYER_NAMES).filter(|n| n.contains(".nextn."))
            })
            .with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        let cols = ne[0];
        let view = View::plain(s.shape.iter().product::<u64>() / cols.max(1), cols);
        recipes.push(Recipe::new(
            TensorSpec { name, ne, ggml_type: ty },
            input(s, &fp8, view, ty),
            true,
            s.origin.clone(),
        ));
    }
    let plan = gguf_plan("deepseek2", &config.dir, &config.json, &recipes, hp.metadata(float_file_type(out)), vocab);
    Ok(Converted { plan, recipes, warnings })
}
