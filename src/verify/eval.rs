//! `moeq eval`: run moeq's forward on any model it reads and show or dump what it computes.

use std::path::Path;

use anyhow::{Context, Result};
use moeq_formats::safetensors::{Dtype, HeaderStyle, SafetensorsPlan, SafetensorsWriter, StTensorSpec};

use crate::forward::{Model, Trace};
use crate::model::weights::Weights;
use crate::source::Source;

/// Parses `3,17,99`.
pub fn parse_tokens(text: &str) -> Result<Vec<u32>, String> {
    let tokens: Result<Vec<u32>, _> = text.split(',').map(|t| t.trim().parse::<u32>()).collect();
    match tokens {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => Err(format!("'{text}' is not a comma-separated list of token ids")),
    }
}

/// The ids of `text` for the model at `path`, as llama.cpp tokenizes it (the model's
/// tokenizer.json, or the one in `tokenizer_dir`; a BOS first when the vocabulary adds one).
pub fn text_tokens(path: &Path, text: &str, tokenizer_dir: Option<&Path>) -> Result<Vec<u32>> {
    let source = Source::open(path)?;
    let weights = Weights::new(&source, path)?;
    let ids = crate::vocab::tokenize::ModelText::open(path, &source, &weights, tokenizer_dir, "--tokens ID,ID,…")?
        .encode(text)?;
    if ids.is_empty() {
        anyhow::bail!("the text gives no tokens");
    }
    Ok(ids)
}

/// Runs the model at `path` on `tokens`.
pub fn eval(path: &Path, tokens: &[u32]) -> Result<Trace> {
    run(&Source::open(path)?, path, tokens)
}

/// Runs the opened model `source` (read from `path`) on `tokens`.
pub fn run(source: &Source, path: &Path, tokens: &[u32]) -> Result<Trace> {
    let weights = Weights::new(source, path)?;
    let model = Model::new(&weights)?;
    if let Some(warning) = weights.past_context_warning(tokens.len(), "the tokens", "give fewer tokens") {
        eprintln!("warning: {warning}");
    }
    model.run(tokens).with_context(|| format!("{}", path.display()))
}

/// The `top` most likely next tokens after each position: (token, probability).
pub fn top_tokens(logits: &[f32], vocab: usize, top: usize) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            // Selected, not the whole vocabulary sorted (that was a quarter of `eval`'s time on
            // gpt-oss's 201,088 tokens).
            crate::forward::moe::top_k(row, top)
                .into_iter()
                .map(|i| (i, (((row[i] - max) as f64).exp() / sum) as f32))
                .collect()
        })
        .collect()
}

/// Writes a trace as F32 safetensors: `logits` [T, vocab], `hidden.N`, `moe_in.N`, `moe_out.N`
/// [T, hidden], and the tokens as I32 (through moeq's safetensors writer: temporary file,
/// renamed when complete).
pub fn dump(trace: &Trace, tokens: &[u32], hidden: usize, out: &Path) -> Result<()> {
    let t = tokens.len();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("tokens".into(), Dtype::I32, vec![t], tokens.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()),
        ("logits".into(), Dtype::F32, vec![t, trace.logits.len() / t.max(1)], f32s(&trace.logits)),
    ];
    for (n, h) in trace.hidden.iter().enumerate() {
        tensors.push((format!("hidden.{n}"), Dtype::F32, vec![t, hidden], f32s(h)));
    }
    for (n, (i, o)) in trace.moe_in.iter().zip(&trace.moe_out).enumerate() {
        tensors.push((format!("moe_in.{n}"), Dtype::F32, vec![t, hidden], f32s(i)));
        tensors.push((format!("moe_out.{n}"), Dtype::F32, vec![t, hidden], f32s(o)));
    }
    let plan = SafetensorsPlan {
        metadata: None,
        tensors: tensors
            .iter()
            .map(|(name, dtype, shape, _)| StTensorSpec { name: name.clone(), dtype: *dtype, shape: shape.clone() })
            .collect(),
        style: HeaderStyle::Safetensors,
    };
    let writer = SafetensorsWriter::create(out, &plan, None)?;
    for (i, (_, _, _, data)) in tensors.iter().enumerate() {
        writer.write_tensor(i, data)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::top_tokens;

    #[test]
    fn top_tokens_equal_a_full_sort_with_ties_and_non_finite_values() {
        let vocab = 97;
        let mut s = 7u32;
        let logits: Vec<f32> = (0..vocab * 5)
            .map(|i| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                match i % 31 {
                    0 => f32::NEG_INFINITY,
                    // Many ties.
                    _ => ((s >> 16) % 9) as f32 * 0.5,
                }
            })
            .collect();
        for top in [0, 1, 5, 96, 97, 200] {
            let got = top_tokens(&logits, vocab, top);
            for (row, got) in logits.chunks_exact(vocab).zip(&got) {
                let mut ids: Vec<usize> = (0..vocab).collect();
                ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let want: Vec<usize> = ids.into_iter().take(top).collect();
                assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), want, "top {top}");
            }
        }
    }
}
