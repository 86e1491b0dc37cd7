//! Any model moeq reads, seen as llama.cpp-named tensors of f32 values in GGUF layout: the
//! input of the forward pass. A GGUF is read as it is stored (every ggml type moeq decodes);
//! a safetensors checkpoint through the converter's own re-layout, so the two can be compared
//! tensor by tensor and run through the same forward.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use moeq_formats::gguf::{GgmlType, Value};

use crate::families::common::OutType;
use crate::plan::convert::{ggml_dims, gguf_recipes, plan_checkpoint};
use crate::plan::recipe::{Recipe, Scratch};
use crate::source::Source;

thread_local! {
    /// Decoding buffers, kept per thread so that reading expert after expert reuses them.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The tensors and metadata of a model, decoded on demand.
pub struct Weights<'a> {
    recipes: Vec<Recipe<'a>>,
    /// The same tensors producing their stored (GGUF-typed) bytes, for byte comparisons.
    encoded: Vec<Recipe<'a>>,
    by_name: HashMap<String, usize>,
    /// The GGUF metadata (for a checkpoint: what the converter would write).
    pub metadata: Vec<(String, Value)>,
    /// How the tensors are stored, per name (the source type, before decoding).
    pub stored_types: HashMap<String, GgmlType>,
    /// Where the model comes from, for reports.
    pub path: String,
    /// Tensors whose values are replaced, by index (see [`Weights::replaced`] and
    /// [`Weights::replaced_all`]).
    replacements: HashMap<usize, Replacement>,
    /// Whether the model is an MLX build.
    mlx: bool,
}

/// How a model stores a tensor ([`Weights::storage`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Storage {
    /// Blocks of a ggml type (or floats), as GGUF stores them; also OpenAI's MXFP4 of a
    /// checkpoint (the same values as ggml's).
    Ggml(GgmlType),
    /// MLX's affine quantization: bits per value, values per group.
    MlxAffine { bits: u32, group: u64 },
    /// MLX's MXFP4 (its own quantizer, not ggml's).
    MlxMxfp4,
}

impl std::fmt::Display for Storage {
    /// The ggml type's name (`Q4_K`, `BF16`, …), `MLX q4/64`, `MLX mxfp4` (padded to the
    /// formatter's width).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Ggml(ty) => f.pad(ty.name()),
            Storage::MlxAffine { bits, group } => f.pad(&format!("MLX q{bits}/{group}")),
            Storage::MlxMxfp4 => f.pad("MLX mxfp4"),
        }
    }
}

/// A replaced tensor: the type of the replacement's bytes, the bytes, and which rows
/// they hold (`None`: all, in order; else these rows, sorted, the others the source's).
#[derive(Clone)]
struct Replacement {
    ty: GgmlType,
    bytes: std::sync::Arc<Vec<u8>>,
    rows: Option<std::sync::Arc<Vec<u64>>>,
}

impl<'a> Weights<'a> {
    /// Reads an opened model: a GGUF as stored, a checkpoint through the converter.
    pub fn new(source: &'a Source, path: &Path) -> Result<Weights<'a>> {
        let mlx = matches!(source, Source::Safetensors { config: Some(c), .. } if c.layout == crate::families::SourceLayout::Mlx);
        let (metadata, recipes) = match source {
            Source::Gguf(model) => {
                let plan = crate::plan::convert::merged_plan(model);
                (plan.metadata, gguf_recipes(model))
            }
            Source::Safetensors { model, config } => {
                let Some(config) = config else {
                    bail!("{}: no config.json; moeq needs it to know the model", path.display());
                };
                for w in &config.warnings {
                    eprintln!("warning: {w}");
                }
                let c = plan_checkpoint(model, config, OutType::Auto, None)?;
                (c.plan.metadata, c.recipes)
            }
        };
        // A checkpoint's own values: FP8 weights exactly (times their block scales, in f32), not
        // rounded to the type the converter writes. Kept as stored (to compare bytes) besides
        // the f32 view (to compute).
        let recipes: Vec<Recipe> = recipes.into_iter().map(Recipe::exact).collect();
        let encoded = recipes.clone();
        let stored_types = recipes.iter().map(|r| (r.spec.name.clone(), r.spec.ggml_type)).collect();
        let recipes: Vec<Recipe> = recipes.into_iter().map(|r| r.retype(GgmlType::F32)).collect();
        let by_name = recipes.iter().enumerate().map(|(i, r)| (r.spec.name.clone(), i)).collect();
        Ok(Weights {
            recipes,
            encoded,
            by_name,
            metadata,
            stored_types,
            path: path.display().to_string(),
            replacements: HashMap::new(),
            mlx,
        })
    }

    /// The same model with the values of tensor `name` replaced by the ggml-type `ty` rows in
    /// `bytes` (all its rows, in the order [`Weights::rows`] gives them, e.g. the tensor
    /// quantized to `ty`): what the forward computes when only that tensor changes. The rows
    /// are decoded when read, so memory grows only by the encoded tensor (a 4.5-bit probe of
    /// gpt-oss's 201088 × 2880 output head: 326 MB, not 2.3 GB of f32). Only one tensor is
    /// replaced at a time (an earlier replacement is dropped). The stored bytes
    /// ([`Weights::same_bytes`]) stay the source's.
    ///
    /// Errors: no tensor `name`, `ty` cannot hold its rows, or `bytes` is not its size in `ty`.
    pub fn replaced(&self, name: &str, ty: GgmlType, bytes: std::sync::Arc<Vec<u8>>) -> Result<Weights<'a>> {
        let index = self.index(name)?;
        let r = &self.recipes[index];
        let expected = ty.row_bytes(r.row_len()).map(|b| b * r.n_rows());
        if expected != Some(bytes.len() as u64) {
            bail!("{}: tensor '{name}' in {ty} is {expected:?} bytes, not {}", self.path, bytes.len());
        }
        Ok(self.with_replacements(HashMap::from([(index, Replacement { ty, bytes, rows: None })])))
    }

    /// The same model with the values of every tensor named in `tensors` replaced by their
    /// ggml-type bytes (each as in [`Weights::replaced`]: all rows, in order): what the forward
    /// computes for a whole build, e.g. every quantized tensor of an MLX build decoded to F32.
    /// Earlier replacements are dropped. Memory grows by the bytes given (shared, not copied).
    ///
    /// Errors: a tensor is named twice or not at all in the model, its type cannot hold its
    /// rows, or its bytes are not its size in its type.
    pub fn replaced_all(&self, tensors: &[(String, GgmlType, std::sync::Arc<Vec<u8>>)]) -> Result<Weights<'a>> {
        let mut all = HashMap::with_capacity(tensors.len());
        for (name, ty, bytes) in tensors {
            let index = self.index(name)?;
            let r = &self.recipes[index];
            let expected = ty.row_bytes(r.row_len()).map(|b| b * r.n_rows());
            if expected != Some(bytes.len() as u64) {
                bail!("{}: tensor '{name}' in {ty} is {expected:?} bytes, not {}", self.path, bytes.len());
            }
            let rep = Replacement { ty: *ty, bytes: std::sync::Arc::clone(bytes), rows: None };
            if all.insert(index, rep).is_some() {
                bail!("{}: tensor '{name}' is replaced twice", self.path);
            }
        }
        Ok(self.with_replacements(all))
    }

    /// [`Weights::replaced`] for some rows only: `bytes` holds rows `rows` (sorted, distinct) of
    /// tensor `name` in `ty`, one after the other; every other row keeps the source's values.
    /// For a forward that reads only those rows (the token embedding's rows of the tokens run,
    /// the head rows a KL reads), the same as replacing the whole tensor, for the cost of
    /// encoding only them.
    ///
    /// Errors: no tensor `name`, `ty` cannot hold its rows, `rows` is not sorted and distinct
    /// within the tensor, or `bytes` is not their size in `ty`.
    pub fn replaced_rows(
        &self,
        name: &str,
        ty: GgmlType,
        bytes: std::sync::Arc<Vec<u8>>,
        rows: std::sync::Arc<Vec<u64>>,
    ) -> Result<Weights<'a>> {
        let index = self.index(name)?;
        let r = &self.recipes[index];
        if !rows.windows(2).all(|w| w[0] < w[1]) || rows.last().is_some_and(|&l| l >= r.n_rows()) {
            bail!("{}: tensor '{name}': replaced rows must be sorted, distinct and below {}", self.path, r.n_rows());
        }
        let expected = ty.row_bytes(r.row_len()).map(|b| b * rows.len() as u64);
        if expected != Some(bytes.len() as u64) {
            bail!(
                "{}: {} rows of tensor '{name}' in {ty} are {expected:?} bytes, not {}",
                self.path,
                rows.len(),
                bytes.len()
            );
        }
        Ok(self.with_replacements(HashMap::from([(index, Replacement { ty, bytes, rows: Some(rows) })])))
    }

    fn with_replacements(&self, replacements: HashMap<usize, Replacement>) -> Weights<'a> {
        Weights {
            recipes: self.recipes.clone(),
            encoded: self.encoded.clone(),
            by_name: self.by_name.clone(),
            metadata: self.metadata.clone(),
            stored_types: self.stored_types.clone(),
            path: self.path.clone(),
            replacements,
            mlx: self.mlx,
        }
    }

    /// Which rows of `first..first + count` of tensor `name` are not the source's: `None` when
    /// the tensor is not the replaced one, else their offsets from `first`, ascending (all of
    /// them when the whole tensor is replaced).
    ///
    /// Errors: no tensor `name`.
    pub fn replaced_within(&self, name: &str, first: u64, count: u64) -> Result<Option<Vec<u64>>> {
        let index = self.index(name)?;
        let Some(rep) = self.replacements.get(&index) else { return Ok(None) };
        Ok(Some(match &rep.rows {
            None => (0..count).collect(),
            Some(rows) => {
                let from = rows.partition_point(|&x| x < first);
                rows[from..].iter().take_while(|&&x| x < first + count).map(|&x| x - first).collect()
            }
        }))
    }

    /// Tensor names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.recipes.iter().map(|r| r.spec.name.as_str())
    }

    /// Whether the model has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The dimensions of tensor `name` (`ne`, fastest first).
    pub fn ne(&self, name: &str) -> Result<&[u64]> {
        Ok(&self.recipe(name)?.spec.ne)
    }

    /// How tensor `name` is stored: a ggml type, or in an MLX build MLX's own quantization
    /// (affine, or MLX's MXFP4 quantizer, not ggml's).
    ///
    /// Errors: no tensor `name`.
    pub fn storage(&self, name: &str) -> Result<Storage> {
        let index = self.index(name)?;
        let ty = self.encoded[index].spec.ggml_type;
        Ok(match self.encoded[index].parts.first().map(|p| &p.input) {
            Some(crate::plan::recipe::Input::MlxAffine { bits, group, .. }) => {
                Storage::MlxAffine { bits: *bits, group: *group }
            }
            _ if self.mlx && ty == GgmlType::MXFP4 => Storage::MlxMxfp4,
            _ => Storage::Ggml(ty),
        })
    }

    /// The recipe reading tensor `name` as f32 values (as [`Weights::rows`] decodes them, the
    /// replacement aside).
    ///
    /// Errors: no tensor `name`.
    pub fn recipe(&self, name: &str) -> Result<&Recipe<'a>> {
        let i = self.by_name.get(name).with_context(|| format!("{}: no tensor '{name}'", self.path))?;
        Ok(&self.recipes[*i])
    }

    /// Rows `first..first + count` of tensor `name` (rows of `ne[0]` values), as f32.
    pub fn rows(&self, name: &str, first: u64, count: u64) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.rows_into(name, first, count, &mut out)?;
        Ok(out)
    }

    /// [`Weights::rows`] into `out` (cleared first), so a caller can reuse one buffer. The
    /// input pages the rows were read from are let go afterwards (see [`Weights::release`]).
    pub fn rows_into(&self, name: &str, first: u64, count: u64, out: &mut Vec<f32>) -> Result<()> {
        self.rows_into_held(name, first, count, out)?;
        self.release(name, first, count)
    }

    /// [`Weights::rows_into`] keeping the input pages mapped: for a caller that reads
    /// neighbouring rows next (the tiles of one projection, on several threads) and lets the
    /// whole range go once with [`Weights::release`]. Letting go of every small tile's pages
    /// (each with its fault-around margin of up to 2 MiB) made the forward spend a tenth of its
    /// time in the kernel's TLB shootdowns and fault the neighbours' pages back in.
    pub fn rows_into_held(&self, name: &str, first: u64, count: u64, out: &mut Vec<f32>) -> Result<()> {
        let r = self.recipe(name)?;
        if first + count > r.n_rows() {
            bail!("{}: tensor '{name}' has {} rows, not {}", self.path, r.n_rows(), first + count);
        }
        if let Some(rep) = self.by_name.get(name).and_then(|i| self.replacements.get(i)) {
            let decoding = || format!("{}: decoding the replaced tensor '{name}'", self.path);
            // `replaced` checked the size: every row is `row` bytes.
            let row = rep.ty.row_bytes(r.row_len()).unwrap_or(0) as usize;
            let Some(rows) = &rep.rows else {
                out.clear();
                out.resize((count * r.row_len()) as usize, 0.0);
                return crate::plan::transcode::to_f32(
                    rep.ty,
                    &rep.bytes[first as usize * row..(first + count) as usize * row],
                    out,
                )
                .with_context(decoding);
            };
            // Some rows replaced: the source's rows, then the replaced ones over them.
            self.source_rows(r, first, count, out)?;
            let ne0 = r.row_len() as usize;
            let from = rows.partition_point(|&x| x < first);
            for (k, &x) in rows[from..].iter().take_while(|&&x| x < first + count).enumerate() {
                let at = (x - first) as usize * ne0;
                let src = &rep.bytes[(from + k) * row..(from + k + 1) * row];
                crate::plan::transcode::to_f32(rep.ty, src, &mut out[at..at + ne0]).with_context(decoding)?;
            }
            return Ok(());
        }
        self.source_rows(r, first, count, out)
    }

    /// Drops the input pages of rows `first..first + count` of tensor `name` from this
    /// process's resident memory (they stay in the page cache; see `FileBytes::release`), so
    /// reading a whole model keeps the resident size flat. Replaced tensors' bytes are owned
    /// and stay.
    ///
    /// Errors: no tensor `name`.
    pub fn release(&self, name: &str, first: u64, count: u64) -> Result<()> {
        let r = self.recipe(name)?;
        for (lo, hi) in pieces_within(r, first, count) {
            r.release(lo, hi - lo);
        }
        Ok(())
    }

    /// Rows `first..first + count` of recipe `r` as the source holds them, into `out`.
    fn source_rows(&self, r: &Recipe, first: u64, count: u64, out: &mut Vec<f32>) -> Result<()> {
        SCRATCH.with_borrow_mut(|scratch| -> Result<()> {
            let pieces = pieces_within(r, first, count);
            if let [(lo, hi)] = pieces[..] {
                // One piece: decode straight into the caller's buffer (lent to the scratch, so a
                // buffer reused at the same size is neither copied nor cleared).
                std::mem::swap(out, &mut scratch.values);
                let decoded = r.values(lo, hi - lo, scratch).map(drop);
                std::mem::swap(out, &mut scratch.values);
                return decoded;
            }
            out.clear();
            for (lo, hi) in pieces {
                out.extend_from_slice(r.values(lo, hi - lo, scratch)?);
            }
            Ok(())
        })
    }

    /// Whether tensor `name` has the same type, shape (trailing dimensions of 1 aside) and
    /// stored bytes in both models (a checkpoint's tensor as the converter would write it). Same
    /// bytes mean the same values; `false` says nothing (decode and compare the values then).
    pub fn same_bytes(&self, other: &Weights, name: &str) -> Result<bool> {
        let (a, b) = (&self.encoded[self.index(name)?], &other.encoded[other.index(name)?]);
        // MLX's affine rows come re-encoded as the ggml type of about their precision, which
        // loses precision: equal re-encodings need not be equal values.
        let affine = |s: Storage| matches!(s, Storage::MlxAffine { .. });
        if affine(self.storage(name)?) || affine(other.storage(name)?) {
            return Ok(false);
        }
        if a.spec.ggml_type != b.spec.ggml_type || ggml_dims(&a.spec.ne) != ggml_dims(&b.spec.ne) {
            return Ok(false);
        }
        // Ranges that lie within one piece of each (pieces never straddle stacked inputs).
        let mut starts: Vec<u64> =
            a.pieces(8 << 20, 1 << 20).iter().chain(&b.pieces(8 << 20, 1 << 20)).map(|p| p.0).collect();
        starts.sort_unstable();
        starts.dedup();
        starts.push(a.n_rows());
        let (mut sa, mut sb) = (Scratch::default(), Scratch::default());
        for w in starts.windows(2) {
            let (first, count) = (w[0], w[1] - w[0]);
            let same = a.rows(first, count, &mut sa)? == b.rows(first, count, &mut sb)?;
            a.release(first, count);
            b.release(first, count);
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.by_name.get(name).copied().with_context(|| format!("{}: no tensor '{name}'", self.path))
    }

    /// All values of tensor `name`.
    pub fn all(&self, name: &str) -> Result<Vec<f32>> {
        let n = self.recipe(name)?.n_rows();
        self.rows(name, 0, n)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The model's training context in tokens (`ARCH.context_length`, a checkpoint's
    /// `max_position_embeddings` as the converter writes it), when known and not 0.
    pub fn training_context(&self) -> Option<u64> {
        let arch = self.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
        self.get(&format!("{arch}.context_length")).and_then(|v| v.as_u64()).filter(|&n| n > 0)
    }

    /// A warning when a sequence of `longest` tokens runs past [`Self::training_context`]
    /// (as llama.cpp warns when its context exceeds `n_ctx_train`): positions past it show the
    /// model what it never saw. `what` names the tokens' origin, `fix` how to avoid it.
    pub fn past_context_warning(&self, longest: usize, what: &str, fix: &str) -> Option<String> {
        let n_ctx = self.training_context()?;
        (longest as u64 > n_ctx).then(|| {
            format!(
                "{what}: sequences of up to {longest} tokens are longer than the model's training context of \
                 {n_ctx} tokens; positions past it show the model what it never saw ({fix})"
            )
        })
    }
}

/// Rows `first..first + count` of `r` as `(lo, hi)` ranges that never straddle two stacked
/// inputs (what one decode or one release may cover).
fn pieces_within(r: &Recipe, first: u64, count: u64) -> Vec<(u64, u64)> {
    r.pieces(u64::MAX, u64::MAX)
        .into_iter()
        .map(|(p, n)| (p.max(first), (p + n).min(first + count)))
        .filter(|(lo, hi)| lo < hi)
        .collect()
}
