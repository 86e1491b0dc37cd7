//! `moeq convert`: plan the output, then stream tensor bytes into it on all cores.
//!
//! Today's inputs are GGUF files (single or split). Without `--type` every tensor is copied
//! byte for byte (merging or re-splitting a model); with `--type` tensors are requantized as
//! `llama-quantize IN OUT TYPE --allow-requantize` does, tensor by tensor, in pieces of rows.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use moeq_formats::gguf::{GgmlType, GgufModel, GgufPlan, GgufWriter, TensorSpec, Value};
use moeq_kernels::KernelError;
use rayon::prelude::*;

use crate::progress::bytes_bar;
use crate::quant_plan::{Ftype, ModelFacts, TensorFacts, llama_order, target_types};
use crate::source::Source;
use crate::transcode::{can_read, can_write, from_f32, to_f32};

/// Copies move at most this many bytes per piece, so one huge tensor still keeps every core
/// busy and the progress bar moving.
const COPY_PIECE: u64 = 8 << 20;
/// Transcoding works on at most this many values per piece (4 MiB of f32 per thread).
const VALUES_PER_PIECE: u64 = 1 << 20;

/// What to convert and how.
pub struct ConvertOptions {
    /// The input model.
    pub input: PathBuf,
    /// The output path (for split output, the name the shards are derived from).
    pub output: PathBuf,
    /// The llama.cpp file type to requantize to; `None` copies every tensor as it is.
    pub ftype: Option<Ftype>,
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
    /// Bytes of tensor data read from the input.
    pub bytes: u64,
}

/// Runs a conversion.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertSummary> {
    match Source::open(&opts.input)? {
        Source::Gguf(model) => convert_gguf(&model, opts),
        Source::Safetensors { .. } => bail!(
            "{}: converting safetensors checkpoints is not implemented yet; moeq convert currently \
             re-writes and requantizes GGUF files",
            opts.input.display()
        ),
    }
}

/// One output tensor: where its data comes from and what type it becomes.
struct Job {
    shard: usize,
    index: usize,
    to: GgmlType,
}

/// A unit of parallel work: bytes to copy, or rows to transcode.
enum Piece {
    Copy { job: usize, offset: u64, len: u64 },
    Rows { job: usize, first: u64, count: u64 },
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

fn convert_gguf(model: &GgufModel, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let (plan, jobs) = match opts.ftype {
        None => copy_plan(model),
        Some(ftype) => requant_plan(model, ftype).with_context(|| format!("{}", opts.input.display()))?,
    };
    let writer = GgufWriter::create(&opts.output, &plan, opts.split_max_bytes)?;
    let info = |j: &Job| &model.shards()[j.shard].header().tensors[j.index];
    let mut pieces = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let t = info(job);
        if job.to == t.ggml_type {
            let n = t.nbytes.div_ceil(COPY_PIECE);
            pieces.extend((0..n).map(|p| Piece::Copy {
                job: i,
                offset: p * COPY_PIECE,
                len: COPY_PIECE.min(t.nbytes - p * COPY_PIECE),
            }));
        } else {
            let ne0 = t.ne.first().copied().unwrap_or(1).max(1);
            let rows = t.n_elements() / ne0;
            let per = (VALUES_PER_PIECE / ne0).max(1);
            pieces.extend((0..rows.div_ceil(per)).map(|p| Piece::Rows {
                job: i,
                first: p * per,
                count: per.min(rows - p * per),
            }));
        }
    }
    let total: u64 = jobs.iter().map(|j| info(j).nbytes).sum();
    let bar = bytes_bar(total, "writing", opts.quiet);
    pieces.par_iter().try_for_each_init(
        || (Vec::<f32>::new(), Vec::<u8>::new()),
        |(values, out), piece| -> Result<()> {
            match *piece {
                Piece::Copy { job, offset, len } => {
                    let j = &jobs[job];
                    let data = model.shards()[j.shard].tensor_data(j.index);
                    writer.write_tensor_part(job, offset, &data[offset as usize..(offset + len) as usize])?;
                    bar.inc(len);
                }
                Piece::Rows { job, first, count } => {
                    let j = &jobs[job];
                    let t = info(j);
                    let ne0 = t.ne.first().copied().unwrap_or(1);
                    let (src_row, dst_row) = (row_bytes(t.ggml_type, ne0), row_bytes(j.to, ne0));
                    let data = model.shards()[j.shard].tensor_data(j.index);
                    let src = &data[(first * src_row) as usize..((first + count) * src_row) as usize];
                    values.resize((count * ne0) as usize, 0.0);
                    out.resize((count * dst_row) as usize, 0);
                    let at = |e: anyhow::Error| match e.downcast_ref::<KernelError>() {
                        Some(&KernelError::NonFinite { index, value }) => anyhow::anyhow!(
                            "tensor '{}': the value at row {}, column {} is {value}, which cannot be quantized",
                            t.name,
                            first + index as u64 / ne0,
                            index as u64 % ne0
                        ),
                        _ => e.context(format!("tensor '{}', rows {first}..{}", t.name, first + count)),
                    };
                    to_f32(t.ggml_type, src, values).map_err(at)?;
                    from_f32(j.to, values, out).map_err(at)?;
                    writer.write_tensor_part(job, first * dst_row, out)?;
                    bar.inc(src.len() as u64);
                }
            }
            Ok(())
        },
    )?;
    let files = writer.paths();
    writer.finish()?;
    bar.finish_and_clear();
    Ok(ConvertSummary { files, tensors: plan.tensors.len(), bytes: total })
}

fn row_bytes(ty: GgmlType, ne0: u64) -> u64 {
    // The reader and the plan have checked that rows are whole blocks.
    ty.row_bytes(ne0).unwrap_or(0)
}

fn copy_plan(model: &GgufModel) -> (GgufPlan, Vec<Job>) {
    let jobs = model
        .shards()
        .iter()
        .enumerate()
        .flat_map(|(s, f)| {
            f.header().tensors.iter().enumerate().map(move |(i, t)| Job { shard: s, index: i, to: t.ggml_type })
        })
        .collect();
    (merged_plan(model), jobs)
}

/// llama-quantize's output: its tensor order, its type choices, the input's metadata with
/// `general.quantization_version` and `general.file_type` set last.
fn requant_plan(model: &GgufModel, ftype: Ftype) -> Result<(GgufPlan, Vec<Job>)> {
    let arch = model.get("general.architecture").and_then(Value::as_str).unwrap_or_default().to_string();
    let hparam = |key: &str| model.get(&format!("{arch}.{key}")).and_then(Value::as_u64).unwrap_or(0) as u32;
    let facts = ModelFacts {
        n_layer: hparam("block_count"),
        n_expert: hparam("expert_count"),
        n_head: hparam("attention.head_count"),
        n_head_kv: hparam("attention.head_count_kv"),
        arch,
    };
    let mut order: Vec<(usize, usize)> = model
        .shards()
        .iter()
        .enumerate()
        .flat_map(|(s, f)| (0..f.header().tensors.len()).map(move |i| (s, i)))
        .collect();
    let info = |&(s, i): &(usize, usize)| &model.shards()[s].header().tensors[i];
    order.sort_by(|a, b| llama_order(&info(a).name, &info(b).name));
    let tensors: Vec<TensorFacts> = order
        .iter()
        .map(|k| {
            let t = info(k);
            TensorFacts { name: t.name.clone(), ne: t.ne.clone(), ggml_type: t.ggml_type }
        })
        .collect();
    let types = target_types(&facts, &tensors, ftype)?;
    let mut plan = merged_plan(model);
    plan.remove("general.quantization_version");
    plan.remove("general.file_type");
    plan.set("general.quantization_version", Value::U32(2));
    plan.set("general.file_type", Value::U32(ftype.id()));
    plan.tensors = tensors
        .iter()
        .zip(&types)
        .map(|(t, &ty)| TensorSpec { name: t.name.clone(), ne: t.ne.clone(), ggml_type: ty })
        .collect();
    let mut jobs = Vec::with_capacity(order.len());
    for ((s, i), (t, &to)) in order.into_iter().zip(tensors.iter().zip(&types)) {
        if to != t.ggml_type {
            if !can_read(t.ggml_type) {
                bail!("tensor '{}': reading {} data is not supported", t.name, t.ggml_type);
            }
            if !can_write(to) {
                bail!("tensor '{}': writing {to} is not supported", t.name);
            }
        }
        jobs.push(Job { shard: s, index: i, to });
    }
    Ok((plan, jobs))
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
