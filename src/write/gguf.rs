//! The write stage: stream every recipe's rows into a GGUF, in pieces, on all cores.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use moeq_formats::gguf::{GgufPlan, GgufWriter};
use rayon::prelude::*;

use crate::plan::recipe::{Recipe, Scratch};
use crate::write::progress::bytes_bar;

/// A piece reads about this many input bytes, so one huge tensor still keeps every core busy
/// and the progress bar moving.
const PIECE_BYTES: u64 = 8 << 20;
/// ... and decodes at most this many values (4 MiB of f32 per thread).
const PIECE_VALUES: u64 = 1 << 20;

/// Writes `plan` (whose tensors are the recipes' specs, in order) to `output`, split when
/// `split_max_bytes` is set. Returns the files written and the input bytes read. Nothing is
/// left at the output path on failure.
pub fn write_gguf(
    plan: &GgufPlan,
    recipes: &[Recipe],
    output: &Path,
    split_max_bytes: Option<u64>,
    quiet: bool,
) -> Result<(Vec<PathBuf>, u64)> {
    check(plan, recipes)?;
    write_with(GgufWriter::create(output, plan, split_max_bytes)?, recipes, quiet)
}

/// As [`write_gguf`], into shards of `counts[i]` tensors each (`--keep-split`), named
/// `OUT-00001-of-0000N.gguf` beside `output` (one shard: `output` itself).
pub fn write_gguf_shards(
    plan: &GgufPlan,
    recipes: &[Recipe],
    output: &Path,
    counts: &[usize],
    quiet: bool,
) -> Result<(Vec<PathBuf>, u64)> {
    check(plan, recipes)?;
    let Some(plans) = plan.split_by_counts(counts) else {
        bail!("internal error: {} tensors do not make shards of {counts:?}", plan.tensors.len());
    };
    write_with(GgufWriter::create_shards(output, &plans)?, recipes, quiet)
}

fn check(plan: &GgufPlan, recipes: &[Recipe]) -> Result<()> {
    if plan.tensors.len() != recipes.len() || plan.tensors.iter().zip(recipes).any(|(t, r)| *t != r.spec) {
        bail!("internal error: the GGUF plan and the recipes disagree");
    }
    Ok(())
}

fn write_with(writer: GgufWriter, recipes: &[Recipe], quiet: bool) -> Result<(Vec<PathBuf>, u64)> {
    let mut pieces = Vec::new();
    for (i, recipe) in recipes.iter().enumerate() {
        pieces.extend(recipe.pieces(PIECE_BYTES, PIECE_VALUES).into_iter().map(|(first, count)| (i, first, count)));
    }
    let total: u64 = recipes.iter().map(|r| r.n_rows() * r.in_row_bytes()).sum();
    let bar = bytes_bar(total, "converting", quiet);
    pieces.par_iter().try_for_each_init(Scratch::default, |scratch, &(i, first, count)| -> Result<()> {
        let recipe = &recipes[i];
        let bytes = recipe.rows(first, count, scratch)?;
        writer.write_tensor_part(i, first * recipe.out_row_bytes(), bytes)?;
        recipe.release(first, count);
        bar.inc(count * recipe.in_row_bytes());
        Ok(())
    })?;
    let files = writer.paths();
    writer.finish()?;
    bar.finish_and_clear();
    Ok((files, total))
}
