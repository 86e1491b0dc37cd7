//! `moeq convert`: plan the output, then stream tensor bytes into it on all cores.
//!
//! Today's inputs are GGUF files (single or split), written back as one file or re-split
//! (`--split-max-size`) with every tensor copied byte for byte.

use std::path::PathBuf;

use anyhow::{Result, bail};
use moeq_formats::gguf::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use moeq_formats::gguf::{GgufModel, GgufPlan, GgufWriter, TensorSpec};
use rayon::prelude::*;

use crate::progress::bytes_bar;
use crate::source::Source;

/// Tensor data is copied in pieces of at most this many bytes, so one huge tensor still
/// keeps every core busy and the progress bar moving.
const PIECE: u64 = 8 << 20;

/// What to convert and how.
pub struct ConvertOptions {
    /// The input model.
    pub input: PathBuf,
    /// The output path (for split output, the name the shards are derived from).
    pub output: PathBuf,
    /// Maximum tensor bytes per output shard.
    pub split_max_bytes: Option<u64>,
    /// No progress bar.
    pub quiet: bool,
}

/// What a conversion wrote.
pub struct ConvertSummary {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// Runs a conversion.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    match Source::open(&opts.input)? {
        Source::Gguf(model) => copy_gguf(&model, opts),
        Source::Safetensors { .. } => bail!(
            "{}: converting safetensors checkpoints is not implemented yet; moeq convert currently \
             re-writes GGUF files (merging or re-splitting them)",
            opts.input.display()
        ),
    }
}

/// The plan of a GGUF model as one file: the first shard's metadata without `split.*` keys,
/// then every shard's tensors in order.
pub fn merged_plan(model: &GgufModel) -> GgufPlan {
    let mut plan = GgufPlan::from_header(model.first().header());
    for key in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
        plan.remove(key);
    }
    plan.tensors = model
        .tensors()
        .map(|(_, t)| TensorSpec { name: t.name.clone(), ne: t.ne.clone(), ggml_type: t.ggml_type })
        .collect();
    plan
}

fn copy_gguf(model: &GgufModel, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let plan = merged_plan(model);
    let writer = GgufWriter::create(&opts.output, &plan, opts.split_max_bytes)?;
    // (shard, index in shard) of each planned tensor, in plan order.
    let sources: Vec<(usize, usize)> = model
        .shards()
        .iter()
        .enumerate()
        .flat_map(|(s, f)| (0..f.header().tensors.len()).map(move |i| (s, i)))
        .collect();
    let pieces: Vec<(usize, u64, u64)> = sources
        .iter()
        .enumerate()
        .flat_map(|(index, &(s, i))| {
            let size = model.shards()[s].header().tensors[i].nbytes;
            (0..size.div_ceil(PIECE)).map(move |p| (index, p * PIECE, PIECE.min(size - p * PIECE)))
        })
        .collect();
    let total: u64 = pieces.iter().map(|p| p.2).sum();
    let bar = bytes_bar(total, "writing", opts.quiet);
    pieces.par_iter().try_for_each(|&(index, offset, len)| -> Result<()> {
        let (s, i) = sources[index];
        let data = model.shards()[s].tensor_data(i);
        let piece = &data[offset as usize..(offset + len) as usize];
        writer.write_tensor_part(index, offset, piece)?;
        bar.inc(len);
        Ok(())
    })?;
    let files = writer.paths();
    writer.finish()?;
    bar.finish_and_clear();
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes: total })
}

/// Parses a size as gguf-py's `--split-max-size` does: `N`, `NK`, `NM` or `NG`, in powers
/// of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, ' '),
    };
    let scale: u64 = match unit {
        ' ' => 1,
        'K' => 1_000,
        'M' => 1_000_000,
        'G' => 1_000_000_000,
        _ => return Err(format!("'{text}': the unit must be K, M or G")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size like 500M or 2G"))?;
    match n.checked_mul(scale) {
        Some(0) => Err("the size must be positive".into()),
        Some(v) => Ok(v),
        None => Err(format!("'{text}' is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_gguf_py() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("100K"), Ok(100_000));
        assert_eq!(parse_size("5M"), Ok(5_000_000));
        assert_eq!(parse_size("2g"), Ok(2_000_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5T").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
