//! MiniMax-M2 → GGUF: what llama.cpp's `convert_hf_to_gguf.py` writes through `MiniMaxM2Model`
//! (`conversion/minimax.py`): the checkpoint's tensors one to one under the `minimax-m2`
//! architecture's names (no q/k permutation: llama.cpp rotates NEOX halves), the per-expert
//! `block_sparse_moe.experts.J.w1/w2/w3` stacked into `ffn_{gate,down,up}_exps` at the
//! layer's last expert tensor (each expert's rows written at their offset), the correction
//! bias as `exp_probs_b.bias`, the router and norms in F32; FP8 weights (F8_E4M3 with
//! `weight_scale_inv`, as released) decoded block by block as the converter's
//! `dequant_simple` does (value × block scale in f32) and rounded to the output type.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_formats::safetensors::{Dtype, SafetensorsModel};

use super::config::MiniMaxM2Config;
use crate::families::ModelConfig;
use crate::families::common::{
    Converted, Fp8Scales, OutType, SourceTensor, auto_outtype, converter_type, expert_layer, float_file_type,
    gguf_name, gguf_plan, source_tensors, stacked,
};
use crate::plan::recipe::{Input, Part, Recipe, View};
use crate::vocab::Metadata;

/// llama.cpp's names for MiniMax-M2's per-layer tensors (not the per-expert ones).
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
    ("block_sparse_moe.e_score_correction_bias", "exp_probs_b.bias"),
];

/// The layer of a per-expert tensor (`model.layers.N.block_sparse_moe.experts.J.*`).
impl MiniMaxM2Config {
    /// The Hugging Face tensors of the checkpoint, with shapes (numpy order), `lm_head.weight`
    /// included.
    fn expected(&self) -> Vec<(String, Vec<u64>)> {
        let (h, v, hd, e, f) = (self.n_embd, self.vocab_size, self.head_dim, self.n_expert, self.n_ff_exp);
        let (q, kv) = (self.n_head * hd, self.n_head_kv() * hd);
        let mut x = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
            ("lm_head.weight".into(), vec![v, h]),
        ];
        for n in 0..self.n_layer {
            let l = |s: &str| format!("model.layers.{n}.{s}");
            x.extend([
                (l("input_layernorm.weight"), vec![h]),
                (l("post_attention_layernorm.weight"), vec![h]),
                (l("self_attn.q_proj.weight"), vec![q, h]),
                (l("self_attn.k_proj.weight"), vec![kv, h]),
                (l("self_attn.v_proj.weight"), vec![kv, h]),
                (l("self_attn.o_proj.weight"), vec![h, q]),
                (l("self_attn.q_norm.weight"), vec![q]),
                (l("self_attn.k_norm.weight"), vec![kv]),
                (l("block_sparse_moe.gate.weight"), vec![e, h]),
                (l("block_sparse_moe.e_score_correction_bias"), vec![e]),
            ]);
            for j in 0..e {
                x.extend([
                    (l(&format!("block_sparse_moe.experts.{j}.w1.weight")), vec![f, h]),
                    (l(&format!("block_sparse_moe.experts.{j}.w2.weight")), vec![h, f]),
                    (l(&format!("block_sparse_moe.experts.{j}.w3.weight")), vec![f, h]),
                ]);
            }
        }
        x
    }
}

/// Checks the tensors against what the model must hold: names, shapes, dtypes (floats, or
/// F8_E4M3 with block scales, which [`Fp8Scales::split`] checked), every one present.
fn check(
    model: &SafetensorsModel,
    tensors: &[SourceTensor],
    want: &[(String, Vec<u64>)],
    fp8: &Fp8Scales,
) -> Result<()> {
    // By name: MiniMax-M2 has some 48,000 weights.
    let shapes: HashMap<&str, &Vec<u64>> = want.iter().map(|(n, s)| (n.as_str(), s)).collect();
    for s in tensors {
        let Some(shape) = shapes.get(s.name.as_str()) else {
            bail!("{}: not a tensor of a MiniMax-M2 checkpoint", s.origin);
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
        if !held.contains(name.as_str()) {
            bail!("{}: tensor '{name}' is missing", model.path().display());
        }
    }
    Ok(())
}

/// The input reading `view` of source `s`, in type `ty`: FP8 decoded with its scales and
/// rounded to `ty`; stored bytes copied when nothing changes; else decoded and re-encoded.
fn input<'a>(s: &SourceTensor<'a>, fp8: &Fp8Scales<'a>, view: View, ty: GgmlType) -> Input<'a> {
    if let Some(input) = fp8.input(s, view, ty) {
        return input;
    }
    if s.stored.ty == ty { Input::Copy(s.stored) } else { Input::Values { src: s.stored, view } }
}

/// Plans the GGUF llama.cpp's converter writes for a MiniMax-M2 checkpoint (BF16 or FP8).
pub fn convert<'a>(
    model: &'a SafetensorsModel,
    config: &ModelConfig,
    hp: &MiniMaxM2Config,
    warnings: Vec<String>,
    outtype: OutType,
    vocab: Option<Metadata>,
) -> Result<Converted<'a>> {
    let sources = source_tensors(model, |t| {
        if t.name.ends_with(".rotary_emb.inv_freq") {
            return Ok(Vec::new());
        }
        Ok(vec![t])
    })?;
    let (sources, fp8) = Fp8Scales::split(sources, hp.fp8_block)?;
    check(model, &sources, &hp.expected(), &fp8)?;
    let out = match outtype {
        OutType::Float(t) => t,
        OutType::Auto => auto_outtype(&sources),
    };
    // The converter stacks a layer's experts when it has seen the last of them.
    let mut last_expert: HashMap<&str, usize> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, ".block_sparse_moe.experts.") {
            last_expert.insert(layer, i);
        }
    }
    let by_name: HashMap<&str, &SourceTensor> = sources.iter().map(|s| (s.name.as_str(), s)).collect();
    let (h, f) = (hp.n_embd, hp.n_ff_exp);
    let mut recipes = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        if let Some(layer) = expert_layer(&s.name, ".block_sparse_moe.experts.") {
            if last_expert.get(layer) != Some(&i) {
                continue;
            }
            // w1, w2, w3 in the converter's order: gate, down, up.
            for (w, name, rows, cols) in
                [("w1", "ffn_gate_exps", f, h), ("w2", "ffn_down_exps", h, f), ("w3", "ffn_up_exps", f, h)]
            {
                let parts = (0..hp.n_expert)
                    .map(|j| {
                        let hf = format!("model.layers.{layer}.block_sparse_moe.experts.{j}.{w}.weight");
                        let e = by_name.get(hf.as_str()).with_context(|| format!("'{hf}' is missing"))?;
                        Ok(Part { input: input(e, &fp8, View::plain(rows, cols), out), origin: e.origin.clone() })
                    })
                    .collect::<Result<Vec<_>>>()?;
                recipes.push(stacked(format!("blk.{layer}.{name}.weight"), parts, (rows, cols), out));
            }
            continue;
        }
        let name = gguf_name(&s.name, LAYER_NAMES).with_context(|| format!("{}: no llama.cpp name", s.origin))?;
        let ne: Vec<u64> = s.shape.iter().rev().copied().collect();
        let ty = converter_type(&name, ne.len(), out);
        let cols = ne.first().copied().unwrap_or(1).max(1);
        let view = View::plain(ne.iter().product::<u64>() / cols, cols);
        recipes.push(Recipe::new(
            TensorSpec { name, ne, ggml_type: ty },
            input(s, &fp8, view, ty),
            true,
            s.origin.clone(),
        ));
    }
    let plan = gguf_plan("minimax-m2", &config.dir, &config.json, &recipes, hp.metadata(float_file_type(out)), vocab);
    Ok(Converted { plan, recipes, warnings })
}
