//! The write stage for safetensors builds (MLX, Hugging Face): each item turns one recipe's
//! rows into one to three output tensors (weight, then scales and biases for quantized
//! layers), streamed in pieces on all cores into shards of a folder that is built under a
//! temporary name and renamed into place when complete.

use std::path::Path;

use anyhow::{Result, bail};
use moeq_formats::output::OutputDir;
use moeq_formats::safetensors::{HeaderStyle, IndexOptions, SafetensorsPlan, SafetensorsWriter, StTensorSpec};
use moeq_kernels::{mlx, openai};
use rayon::prelude::*;

use crate::plan::recipe::{Recipe, Scratch};
use crate::write::progress::bytes_bar;

/// How an item's rows become output bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The recipe's own rows (bf16, f16 or f32): one output.
    Rows,
    /// MLX affine quantization: weight (u32), scales and biases (bf16).
    Affine {
        /// Bits per value (2, 3, 4, 5, 6 or 8).
        bits: u32,
        /// Values per group (32, 64 or 128).
        group: u64,
    },
    /// MLX's MXFP4 quantizer: codes (u32 words) and E8M0 scales.
    MlxMxfp4,
    /// OpenAI's MXFP4 quantizer (gpt-oss checkpoints): code bytes and E8M0 scales.
    OpenAiMxfp4,
    /// OpenAI-layout MXFP4 as stored in the source, copied: code bytes and scales.
    StoredMxfp4,
}

impl Encoding {
    /// Number of output tensors.
    pub fn outputs(self) -> usize {
        match self {
            Encoding::Rows => 1,
            Encoding::Affine { .. } => 3,
            _ => 2,
        }
    }
}

/// One source tensor of the build and the tensors it becomes.
pub struct Item<'a> {
    /// Its values, row by row, in output order.
    pub recipe: Recipe<'a>,
    /// How they are encoded.
    pub encoding: Encoding,
    /// The output tensors (`encoding.outputs()` of them), each with the recipe's rows.
    pub outputs: Vec<StTensorSpec>,
}

/// Where and how a build is written.
pub struct BuildFiles<'p> {
    /// The folder being built.
    pub dir: &'p OutputDir,
    /// `__metadata__` of every shard (`{"format": "mlx"}`, `{"format": "pt"}`).
    pub metadata: Vec<(String, String)>,
    /// Header layout.
    pub style: HeaderStyle,
    /// Maximum tensor bytes per shard.
    pub shard_max_bytes: u64,
    /// How the index is written.
    pub index: IndexOptions,
}

const PIECE_BYTES: u64 = 8 << 20;
const PIECE_VALUES: u64 = 1 << 20;

/// Writes every item's tensors into `model*.safetensors` in the build folder. Returns the
/// input bytes read.
pub fn write_items(items: &[Item], files: &BuildFiles, quiet: bool) -> Result<u64> {
    let mut plan = SafetensorsPlan { metadata: Some(files.metadata.clone()), tensors: Vec::new(), style: files.style };
    let mut first_output = Vec::with_capacity(items.len());
    for item in items {
        if item.outputs.len() != item.encoding.outputs() {
            bail!(
                "internal error: {} has {} outputs for {:?}",
                item.recipe.spec.name,
                item.outputs.len(),
                item.encoding
            );
        }
        first_output.push(plan.tensors.len());
        plan.tensors.extend(item.outputs.iter().cloned());
    }
    let path = files.dir.staging().join("model.safetensors");
    let writer = SafetensorsWriter::create_indexed(&path, &plan, Some(files.shard_max_bytes), &files.index)?;
    let mut pieces = Vec::new();
    for (i, item) in items.iter().enumerate() {
        pieces.extend(item.recipe.pieces(PIECE_BYTES, PIECE_VALUES).into_iter().map(|(first, n)| (i, first, n)));
    }
    let total: u64 = items.iter().map(|it| it.recipe.n_rows() * it.recipe.in_row_bytes()).sum();
    let bar = bytes_bar(total, "writing", quiet);
    pieces.par_iter().try_for_each_init(
        || (Scratch::default(), [Vec::new(), Vec::new(), Vec::new()]),
        |(scratch, bufs), &(i, first, count)| -> Result<()> {
            let item = &items[i];
            let n_rows = item.recipe.n_rows().max(1);
            let row_bytes = |k: usize| item.outputs[k].nbytes().unwrap_or(0) / n_rows;
            if item.encoding == Encoding::Rows {
                // Straight from the input when the bytes are copied.
                let bytes = item.recipe.rows(first, count, scratch)?;
                writer.write_tensor_part(first_output[i], first * row_bytes(0), bytes)?;
            } else {
                encode_rows(item, first, count, scratch, bufs)?;
                for (k, buf) in bufs.iter().enumerate().take(item.outputs.len()) {
                    writer.write_tensor_part(first_output[i] + k, first * row_bytes(k), buf)?;
                }
            }
            item.recipe.release(first, count);
            bar.inc(count * item.recipe.in_row_bytes());
            Ok(())
        },
    )?;
    writer.finish()?;
    bar.finish_and_clear();
    Ok(total)
}

/// Encodes rows `first..first + count` of a quantized `item` into `bufs` (one buffer per
/// output).
fn encode_rows(item: &Item, first: u64, count: u64, scratch: &mut Scratch, bufs: &mut [Vec<u8>; 3]) -> Result<()> {
    let recipe = &item.recipe;
    let located = |e: moeq_kernels::KernelError| anyhow::anyhow!("{}: {e}", recipe.parts[0].origin);
    match item.encoding {
        Encoding::Rows => bail!("internal error: {} is not quantized", recipe.spec.name),
        Encoding::StoredMxfp4 => {
            let [codes, scales, _] = bufs;
            recipe.openai_blocks(first, count, codes, scales)?;
        }
        Encoding::OpenAiMxfp4 if recipe.rounding.is_some() => openai_gptq(recipe, first, count, scratch, bufs)?,
        Encoding::OpenAiMxfp4 | Encoding::MlxMxfp4 => {
            let values = recipe.values(first, count, scratch)?;
            let [codes, scales, _] = bufs;
            codes.resize(values.len() / 2, 0);
            scales.resize(values.len() / 32, 0);
            if item.encoding == Encoding::OpenAiMxfp4 {
                if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                    bail!("{}: value {index} is {}, which cannot be quantized", recipe.parts[0].origin, values[index]);
                }
                openai::quantize(values, codes, scales);
            } else {
                mlx::mxfp4_quantize(values, codes, scales).map_err(located)?;
            }
        }
        Encoding::Affine { bits, group } => {
            let values = recipe.values(first, count, scratch)?;
            let n = values.len();
            let (mut words, mut s, mut b) =
                (vec![0u32; n * bits as usize / 32], vec![0u16; n / group as usize], vec![0u16; n / group as usize]);
            mlx::affine_quantize(values, bits, group as usize, &mut words, &mut s, &mut b).map_err(located)?;
            // A group spanning more than f32 holds gets an infinite bf16 scale or bias.
            let infinite = |h: &u16| h & 0x7F80 == 0x7F80;
            if let Some(g) = s.iter().zip(&b).position(|(s, b)| infinite(s) | infinite(b)) {
                let (row_len, group) = (recipe.row_len() as usize, group as usize);
                let span = &values[g * group..(g + 1) * group];
                let (lo, hi) = span.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                bail!(
                    "{} → '{}': row {}, columns {}..{} span {lo:e}..{hi:e}, whose {bits}-bit scale overflows bf16; \
                     keep this module in bf16 (--quant-override)",
                    recipe.parts[0].origin,
                    recipe.spec.name,
                    first + (g * group / row_len) as u64,
                    g * group % row_len,
                    g * group % row_len + group,
                );
            }
            let [w_out, s_out, b_out] = bufs;
            w_out.clear();
            w_out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            s_out.clear();
            s_out.extend(s.iter().flat_map(|v| v.to_le_bytes()));
            b_out.clear();
            b_out.extend(b.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    Ok(())
}

/// `--rounding gptq` for OpenAI-layout MXFP4 experts: the recipe's own GPTQ rounding (ggml's
/// `block_mxfp4`s, [`moeq_kernels::gptq`]) repacked to OpenAI's nibble order; the rows of an
/// expert without calibration data keep OpenAI's quantizer, as without `--rounding`.
fn openai_gptq(recipe: &Recipe, first: u64, count: u64, scratch: &mut Scratch, bufs: &mut [Vec<u8>; 3]) -> Result<()> {
    let ggml = recipe.rows(first, count, scratch)?.to_vec();
    let [codes, scales, _] = bufs;
    codes.resize(ggml.len() / 17 * 16, 0);
    scales.resize(ggml.len() / 17, 0);
    openai::repack_from_ggml(&ggml, codes, scales);
    let Some(crate::plan::rounding::Rounding::Experts(x)) = &recipe.rounding else { return Ok(()) };
    let (per, ne0) = (recipe.spec.ne.get(1).copied().unwrap_or(1).max(1), recipe.row_len() as usize);
    let values = recipe.values(first, count, scratch)?;
    for r in 0..count {
        if x.experts.get(((first + r) / per) as usize).is_some_and(|(_, f)| f.is_none()) {
            let (a, g) = (r as usize * ne0, r as usize * ne0 / 32);
            let row = &values[a..a + ne0];
            if let Some(index) = row.iter().position(|v| !v.is_finite()) {
                bail!("{}: value {} is {}, which cannot be quantized", recipe.parts[0].origin, a + index, row[index]);
            }
            openai::quantize(row, &mut codes[g * 16..(g + ne0 / 32) * 16], &mut scales[g..g + ne0 / 32]);
        }
    }
    Ok(())
}

/// Copies the files beside the weights that a runtime needs (tokenizer, chat template,
/// generation settings) from `from` into the build folder, when they exist.
pub fn copy_side_files(from: &Path, dir: &OutputDir) -> Result<Vec<String>> {
    const FILES: &[&str] = &[
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "generation_config.json",
    ];
    let mut copied = Vec::new();
    for name in FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, dir.staging().join(name))
                .map_err(|e| anyhow::anyhow!("{}: cannot copy: {e}", src.display()))?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

/// Writes `json` as `name` in the build folder (4-space indent, as mlx-lm and transformers do).
pub fn write_json(dir: &OutputDir, name: &str, json: &serde_json::Value) -> Result<()> {
    let mut text = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut text, fmt);
    serde::Serialize::serialize(json, &mut ser)?;
    text.push(b'\n');
    let path = dir.staging().join(name);
    std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
