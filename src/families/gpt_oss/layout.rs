//! gpt-oss's three released layouts (OpenAI `original/`, Hugging Face MXFP4, Hugging Face
//! bf16): the original names and fused qkv brought to the Hugging Face form, and the tensors a
//! checkpoint of a given shape must hold.

use anyhow::{Result, bail};
use moeq_formats::safetensors::SafetensorsModel;

use super::config::GptOssConfig;
use crate::families::SourceLayout;
use crate::families::common::{SourceTensor, source_tensors};
use crate::plan::recipe::Stored;

/// The source tensors under Hugging Face names, in the order the converter visits them.
pub fn hf_tensors<'a>(
    model: &'a SafetensorsModel,
    layout: SourceLayout,
    hp: &GptOssConfig,
) -> Result<Vec<SourceTensor<'a>>> {
    source_tensors(model, |t| {
        if layout != SourceLayout::OpenAiOriginal {
            return Ok(vec![t]);
        }
        // OpenAI's names; every tensor sorts as if in one file.
        let renamed = original_to_hf(&t.name, t.stored, &t.shape, hp)?;
        Ok(renamed
            .into_iter()
            .map(|(name, stored, shape)| SourceTensor { rank: 0, name, stored, shape, origin: t.origin.clone() })
            .collect())
    })
}

/// One tensor of the original layout as the Hugging Face tensors it becomes (the fused qkv
/// becomes three row ranges).
pub fn original_to_hf<'a>(
    name: &str,
    stored: Stored<'a>,
    shape: &[u64],
    hp: &GptOssConfig,
) -> Result<Vec<(String, Stored<'a>, Vec<u64>)>> {
    let global = match name {
        "embedding.weight" => Some("model.embed_tokens.weight"),
        "unembedding.weight" => Some("lm_head.weight"),
        "norm.scale" => Some("model.norm.weight"),
        _ => None,
    };
    if let Some(hf) = global {
        return Ok(vec![(hf.to_string(), stored, shape.to_vec())]);
    }
    let Some((n, rest)) = name.strip_prefix("block.").and_then(|r| r.split_once('.')) else {
        bail!("not a tensor of OpenAI's gpt-oss layout");
    };
    let layer = |s: &str| format!("model.layers.{n}.{s}");
    let simple = match rest {
        "attn.norm.scale" => "input_layernorm.weight",
        "attn.sinks" => "self_attn.sinks",
        "attn.out.weight" => "self_attn.o_proj.weight",
        "attn.out.bias" => "self_attn.o_proj.bias",
        "mlp.norm.scale" => "post_attention_layernorm.weight",
        "mlp.gate.weight" => "mlp.router.weight",
        "mlp.gate.bias" => "mlp.router.bias",
        "mlp.mlp1_weight.blocks" => "mlp.experts.gate_up_proj_blocks",
        "mlp.mlp1_weight.scales" => "mlp.experts.gate_up_proj_scales",
        "mlp.mlp1_bias" => "mlp.experts.gate_up_proj_bias",
        "mlp.mlp2_weight.blocks" => "mlp.experts.down_proj_blocks",
        "mlp.mlp2_weight.scales" => "mlp.experts.down_proj_scales",
        "mlp.mlp2_bias" => "mlp.experts.down_proj_bias",
        "attn.qkv.weight" | "attn.qkv.bias" => "",
        _ => bail!("not a tensor of OpenAI's gpt-oss layout"),
    };
    if !simple.is_empty() {
        return Ok(vec![(layer(simple), stored, shape.to_vec())]);
    }
    let (q, kv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    if shape.first() != Some(&(q + 2 * kv)) {
        bail!("shape {shape:?}: expected {} rows (q {q} + k {kv} + v {kv})", q + 2 * kv);
    }
    let row = stored.len as u64 / (q + 2 * kv);
    let suffix = if rest.ends_with("weight") { "weight" } else { "bias" };
    let part = |proj: &str, first: u64, rows: u64| {
        let mut s = shape.to_vec();
        s[0] = rows;
        let sub = Stored { start: stored.start + (first * row) as usize, len: (rows * row) as usize, ..stored };
        (layer(&format!("self_attn.{proj}.{suffix}")), sub, s)
    };
    Ok(vec![part("q_proj", 0, q), part("k_proj", q, kv), part("v_proj", q + kv, kv)])
}

/// The expected Hugging Face tensors and their shapes (numpy order), and whether they are
/// raw bytes (MXFP4) rather than floats.
pub fn expected(hp: &GptOssConfig, mxfp4: bool) -> Vec<(String, Vec<u64>, bool)> {
    let (h, i, e, v) = (hp.n_embd, hp.n_ff, hp.n_expert, hp.vocab_size);
    let (q, kv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    let mut x = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h], false),
        ("lm_head.weight".to_string(), vec![v, h], false),
        ("model.norm.weight".to_string(), vec![h], false),
    ];
    for n in 0..hp.n_layer {
        let l = |s: &str| format!("model.layers.{n}.{s}");
        x.extend([
            (l("input_layernorm.weight"), vec![h], false),
            (l("post_attention_layernorm.weight"), vec![h], false),
            (l("self_attn.q_proj.weight"), vec![q, h], false),
            (l("self_attn.q_proj.bias"), vec![q], false),
            (l("self_attn.k_proj.weight"), vec![kv, h], false),
            (l("self_attn.k_proj.bias"), vec![kv], false),
            (l("self_attn.v_proj.weight"), vec![kv, h], false),
            (l("self_attn.v_proj.bias"), vec![kv], false),
            (l("self_attn.o_proj.weight"), vec![h, q], false),
            (l("self_attn.o_proj.bias"), vec![h], false),
            (l("self_attn.sinks"), vec![hp.n_head], false),
            (l("mlp.router.weight"), vec![e, h], false),
            (l("mlp.router.bias"), vec![e], false),
            (l("mlp.experts.gate_up_proj_bias"), vec![e, 2 * i], false),
            (l("mlp.experts.down_proj_bias"), vec![e, h], false),
        ]);
        if mxfp4 {
            x.extend([
                (l("mlp.experts.gate_up_proj_blocks"), vec![e, 2 * i, h / 32, 16], true),
                (l("mlp.experts.gate_up_proj_scales"), vec![e, 2 * i, h / 32], true),
                (l("mlp.experts.down_proj_blocks"), vec![e, h, i / 32, 16], true),
                (l("mlp.experts.down_proj_scales"), vec![e, h, i / 32], true),
            ]);
        } else {
            x.extend([
                (l("mlp.experts.gate_up_proj"), vec![e, h, 2 * i], false),
                (l("mlp.experts.down_proj"), vec![e, i, h], false),
            ]);
        }
    }
    x
}
