//! The re-layout stage: how each output tensor is made from input bytes. A recipe names the
//! stored bytes, the view that selects and orders their values (a row slice, every other row
//! for gpt-oss's interleaved gate/up, a transpose for Hugging Face's bf16 experts), and the
//! type to write; [`Recipe::rows`] produces any range of output rows on its own, so a tensor
//! can be streamed in pieces on every core.

use anyhow::{Result, anyhow, bail};
use moeq_formats::FileBytes;
use moeq_formats::gguf::{GgmlType, TensorSpec};
use moeq_kernels::backend::first_non_finite;
use moeq_kernels::{KernelError, openai};

use std::sync::Arc;

use crate::plan::imatrix_file::ImatrixFile;
use crate::plan::transcode::{Overflow, from_f32, from_f32_weighted, to_f32};

/// A stored tensor's bytes inside a mapped input file.
#[derive(Clone, Copy)]
pub struct Stored<'a> {
    /// The file.
    pub file: &'a FileBytes,
    /// Absolute offset of the tensor's data.
    pub start: usize,
    /// Length of the data in bytes.
    pub len: usize,
    /// The element type (ggml naming; BF16, F16, F32, a block type, or I8 for raw bytes).
    pub ty: GgmlType,
}

impl<'a> Stored<'a> {
    /// The tensor's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        &self.file[self.start..self.start + self.len]
    }
}

/// A strided selection of a stored tensor's values as a matrix of `outer · rows` rows of
/// `cols` values: value `c` of output row `o · rows + r` is stored value
/// `o · outer_stride + r · row_stride + c · col_stride + offset`.
///
/// For OpenAI MXFP4 inputs the unit is one 32-value block instead of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Number of outer slabs (experts), 1 for a matrix.
    pub outer: u64,
    /// Rows per slab.
    pub rows: u64,
    /// Values per row.
    pub cols: u64,
    /// Stride between slabs.
    pub outer_stride: u64,
    /// Stride between rows.
    pub row_stride: u64,
    /// Stride between values of a row.
    pub col_stride: u64,
    /// Index of the first value.
    pub offset: u64,
    /// When non-zero, rows are reordered within groups of this many, from Hugging Face's
    /// rotate-half order to llama.cpp's interleaved RoPE order (Llama's q/k permutation):
    /// output row `2i + j` of a group is stored row `j · size/2 + i`.
    pub rope_group: u64,
}

impl View {
    /// `rows` contiguous rows of `cols` values.
    pub fn plain(rows: u64, cols: u64) -> View {
        View {
            outer: 1,
            rows,
            cols,
            outer_stride: rows * cols,
            row_stride: cols,
            col_stride: 1,
            offset: 0,
            rope_group: 0,
        }
    }

    /// Total output rows.
    pub fn n_rows(&self) -> u64 {
        self.outer * self.rows
    }

    /// Index of value 0 of output row `i`.
    fn row_start(&self, i: u64) -> u64 {
        let mut r = i % self.rows;
        if self.rope_group > 0 {
            let g = self.rope_group;
            let k = r % g;
            r = r - k + (k % 2) * (g / 2) + k / 2;
        }
        (i / self.rows) * self.outer_stride + r * self.row_stride + self.offset
    }

    /// The range of stored indices rows `first..first + count` read.
    fn span(&self, first: u64, count: u64) -> (u64, u64) {
        let (mut first, mut last) = (first, first + count - 1);
        if self.rope_group > 0 {
            // Whole groups map onto whole groups (the first and last rows of a group stay).
            let g = self.rope_group;
            first -= first % g;
            last = (last - last % g + g - 1).min(self.n_rows() - 1);
        }
        let tail = (self.cols - 1) * self.col_stride;
        let corners =
            [self.row_start(first), self.row_start(last), self.row_start(first) + tail, self.row_start(last) + tail];
        (corners.iter().copied().min().unwrap_or(0), corners.iter().copied().max().unwrap_or(0) + 1)
    }

    /// Highest stored index the view reads, plus one.
    pub fn extent(&self) -> u64 {
        if self.n_rows() == 0 || self.cols == 0 { 0 } else { self.span(0, self.n_rows()).1 }
    }
}

/// Where an output tensor's values come from.
#[derive(Clone)]
pub enum Input<'a> {
    /// Bytes already in the output type and order, copied as they are.
    Copy(Stored<'a>),
    /// Values read through a view and encoded in the output type.
    Values {
        /// The stored tensor.
        src: Stored<'a>,
        /// Which of its values, in which order.
        view: View,
    },
    /// Bytes computed by moeq (Llama 3's RoPE factors), in the output type.
    Owned(Vec<u8>),
    /// OpenAI-layout MXFP4 (codes and scales in two tensors), viewed in units of 32-value
    /// blocks; repacked losslessly when the output is MXFP4, decoded otherwise.
    OpenAiMxfp4 {
        /// The `*_blocks` tensor (16 bytes per block).
        blocks: Stored<'a>,
        /// The `*_scales` tensor (one E8M0 byte per block).
        scales: Stored<'a>,
        /// Which blocks, in which order.
        view: View,
    },
    /// FP8 E4M3 weights with one f32 scale per block of values (the `weight` and
    /// `weight_scale_inv` of DeepSeek-V3's released checkpoints), decoded block-exactly as
    /// llama.cpp's converter does (`dequant_simple`: each code's value times its block's scale,
    /// one f32 multiply), then rounded to `round`, the type the converter writes and
    /// llama-quantize reads back (F32: not rounded). Never held whole: each piece of rows is
    /// decoded from the codes, and the rounding is per value.
    Fp8 {
        /// The E4M3 codes, [rows, cols] in numpy order (one byte each).
        weight: Stored<'a>,
        /// One f32 per block, [⌈rows / block.0⌉, ⌈cols / block.1⌉] (edge blocks may be partial).
        scales: Stored<'a>,
        /// Values per stored row.
        cols: u64,
        /// Rows and columns per block (`quantization_config.weight_block_size`).
        block: (u64, u64),
        /// Which values, in which order (indices of stored values).
        view: View,
        /// F32, BF16 or F16: the type each decoded value is rounded to.
        round: GgmlType,
    },
    /// MLX affine quantization (an MLX build read back): u32 code words, bf16 scales and
    /// biases per group; the view selects rows of `cols` values.
    MlxAffine {
        /// The packed codes.
        weight: Stored<'a>,
        /// One bf16 scale per group.
        scales: Stored<'a>,
        /// One bf16 bias per group.
        biases: Stored<'a>,
        /// Bits per value.
        bits: u32,
        /// Values per group.
        group: u64,
        /// Which rows, in which order (contiguous rows; `rope_group` may reorder them).
        view: View,
    },
}

/// How one output tensor is made.
#[derive(Clone)]
pub struct Recipe<'a> {
    /// Name, dimensions and type of the output tensor.
    pub spec: TensorSpec,
    /// Its values: one part, or several stacked (each making an equal share of the rows, as
    /// Mixtral's per-expert tensors make one 3-D expert tensor).
    pub parts: Vec<Part<'a>>,
    /// Refuse NaN and infinity (for float checkpoints; a GGUF is copied as it is).
    pub check_finite: bool,
    /// Importance weights to quantize with (`--imatrix`), if any.
    pub importance: Option<Importance>,
    /// GPTQ rounding (`--rounding gptq`): the factor of the input's Hessian (per expert for a
    /// stacked expert tensor). `None` rounds as ggml does.
    pub rounding: Option<crate::plan::rounding::Rounding>,
}

/// Importance weights for one tensor: an importance matrix entry with one row of weights
/// (one per column) per matrix; output row `r` is quantized with matrix
/// `r / rows_per_matrix`'s weights (each expert of a stacked expert tensor with its own, as
/// llama-quantize's `llama_tensor_quantize_impl`).
#[derive(Clone)]
pub struct Importance {
    /// The importance matrix.
    pub file: Arc<ImatrixFile>,
    /// The entry's index in [`ImatrixFile::entries`].
    pub entry: usize,
    /// Rows per matrix (`ne[1]`).
    pub rows_per_matrix: u64,
}

impl Importance {
    /// The weights (one per column, `out.len()` of them) of the matrix that holds row `row` of
    /// the tensor: a stacked expert tensor's rows go `rows_per_matrix` to each expert.
    pub fn row_weights(&self, row: u64, out: &mut [f32]) {
        let per = self.rows_per_matrix.max(1);
        self.file.weights(&self.file.entries()[self.entry], (row / per) as usize, out);
    }
}

/// One input of a recipe.
#[derive(Clone)]
pub struct Part<'a> {
    /// Its values.
    pub input: Input<'a>,
    /// What they come from, for error messages ("FILE: tensor 'X'").
    pub origin: String,
}

/// Per-thread buffers reused across pieces.
#[derive(Default)]
pub struct Scratch {
    gathered: Vec<u8>,
    halves: Vec<u16>,
    /// The decoded values of the last [`Recipe::values`] call.
    pub values: Vec<f32>,
    out: Vec<u8>,
    weights: Vec<f32>,
}

impl<'a> Recipe<'a> {
    /// A recipe with one input.
    pub fn new(spec: TensorSpec, input: Input<'a>, check_finite: bool, origin: String) -> Recipe<'a> {
        Recipe { spec, parts: vec![Part { input, origin }], check_finite, importance: None, rounding: None }
    }

    /// The first input (all parts have the same form).
    pub fn input(&self) -> &Input<'a> {
        &self.parts[0].input
    }

    /// Output rows per part.
    fn part_rows(&self) -> u64 {
        self.n_rows() / self.parts.len().max(1) as u64
    }

    /// The part making output row `first`, and the row's index within it.
    fn part_of(&self, first: u64) -> (&Part<'a>, u64) {
        let per = self.part_rows().max(1);
        let p = ((first / per) as usize).min(self.parts.len() - 1);
        (&self.parts[p], first - p as u64 * per)
    }

    /// Values per output row (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.spec.ne.first().copied().unwrap_or(1).max(1)
    }

    /// Number of output rows.
    pub fn n_rows(&self) -> u64 {
        self.spec.ne.iter().skip(1).product::<u64>()
    }

    /// Bytes of one output row.
    pub fn out_row_bytes(&self) -> u64 {
        self.spec.ggml_type.row_bytes(self.row_len()).unwrap_or(0)
    }

    /// Bytes of input read per output row (for progress).
    pub fn in_row_bytes(&self) -> u64 {
        match self.input() {
            Input::Copy(_) | Input::Owned(_) => self.out_row_bytes(),
            Input::Values { src, .. } => src.ty.row_bytes(self.row_len()).unwrap_or(0),
            Input::OpenAiMxfp4 { .. } => self.row_len() / 32 * 17,
            Input::Fp8 { .. } => self.row_len(),
            Input::MlxAffine { bits, group, .. } => self.row_len() * *bits as u64 / 8 + self.row_len() / group * 4,
        }
    }

    /// Rows per piece so that a piece holds about `budget` bytes of input and at most `values`
    /// decoded values.
    pub fn rows_per_piece(&self, budget: u64, values: u64) -> u64 {
        let by_bytes = budget / self.in_row_bytes().max(1);
        let by_values = if matches!(self.input(), Input::Copy(_)) { u64::MAX } else { values / self.row_len() };
        by_bytes.min(by_values).max(1)
    }

    /// The pieces (first row, row count) to produce the tensor in, each reading about
    /// `budget` input bytes and decoding at most `values` values. A transposing view reads a
    /// whole slab (expert) per row, so its pieces never straddle two slabs: the slab is let go
    /// after its last piece.
    pub fn pieces(&self, budget: u64, values: u64) -> Vec<(u64, u64)> {
        let per = self.rows_per_piece(budget, values);
        let slab = match self.input() {
            Input::Values { view, .. } | Input::Fp8 { view, .. } if view.col_stride != 1 => view.rows,
            _ => self.part_rows(),
        };
        let mut out = Vec::new();
        for start in (0..self.n_rows()).step_by(slab.max(1) as usize) {
            let end = (start + slab).min(self.n_rows());
            out.extend((start..end).step_by(per as usize).map(|first| (first, per.min(end - first))));
        }
        out
    }

    /// Changes the output type, keeping the values.
    /// Computed bytes keep their type.
    pub fn retype(self, to: GgmlType) -> Recipe<'a> {
        if to == self.spec.ggml_type || matches!(self.input(), Input::Owned(_)) {
            return self;
        }
        let (rows, cols) = (self.part_rows(), self.row_len());
        let parts = self
            .parts
            .into_iter()
            .map(|Part { input, origin }| {
                let input = match input {
                    Input::Copy(src) => Input::Values { src, view: View::plain(rows, cols) },
                    other => other,
                };
                Part { input, origin }
            })
            .collect();
        Recipe { spec: TensorSpec { ggml_type: to, ..self.spec }, parts, ..self }
    }

    /// The recipe of the source's own values: FP8 inputs decoded exactly (value × block scale
    /// in f32, not rounded to the converter's type), typed F32; other recipes as they are. What
    /// `eval` and `verify` read a checkpoint as.
    pub fn exact(mut self) -> Recipe<'a> {
        let mut fp8 = false;
        for part in &mut self.parts {
            if let Input::Fp8 { round, .. } = &mut part.input {
                *round = GgmlType::F32;
                fp8 = true;
            }
        }
        if fp8 {
            self.spec.ggml_type = GgmlType::F32;
        }
        self
    }

    /// Output rows `first..first + count`, encoded. Borrowed straight from the input when the
    /// bytes are copied.
    /// Pieces never straddle two parts (see [`Recipe::pieces`]).
    pub fn rows<'s>(&'s self, first: u64, count: u64, scratch: &'s mut Scratch) -> Result<&'s [u8]> {
        let (ne0, to) = (self.row_len(), self.spec.ggml_type);
        let global = first;
        let (part, first) = self.part_of(first);
        match &part.input {
            Input::Owned(bytes) => {
                let row = self.out_row_bytes() as usize;
                Ok(&bytes[first as usize * row..(first + count) as usize * row])
            }
            Input::Copy(src) => {
                let row = self.out_row_bytes() as usize;
                let bytes = &src.bytes()[first as usize * row..(first + count) as usize * row];
                if self.check_finite {
                    self.check_stored(part, src.ty, bytes, first)?;
                }
                Ok(bytes)
            }
            Input::Values { .. } => {
                self.decode(part, first, count, scratch)?;
                self.encode(part, scratch, count, first, global)?;
                Ok(&scratch.out)
            }
            Input::MlxAffine { .. } | Input::Fp8 { .. } => {
                self.decode(part, first, count, scratch)?;
                self.encode(part, scratch, count, first, global)?;
                Ok(&scratch.out)
            }
            Input::OpenAiMxfp4 { blocks, scales, view } => {
                let g = ne0 / 32;
                if to == GgmlType::MXFP4 {
                    scratch.out.resize((count * g * 17) as usize, 0);
                    for (r, out_row) in scratch.out.chunks_exact_mut((g * 17) as usize).enumerate() {
                        let start = view.row_start(first + r as u64);
                        for (b, out) in out_row.chunks_exact_mut(17).enumerate() {
                            let idx = (start + b as u64 * view.col_stride) as usize;
                            let scale = scales.bytes()[idx];
                            check_scale(part, scale, first + r as u64, b as u64)?;
                            out[0] = scale;
                            let codes: &[u8; 16] = blocks.bytes()[idx * 16..idx * 16 + 16].try_into()?;
                            out[1..].copy_from_slice(&openai::to_ggml_codes(codes));
                        }
                    }
                    return Ok(&scratch.out);
                }
                self.decode(part, first, count, scratch)?;
                self.encode(part, scratch, count, first, global)?;
                Ok(&scratch.out)
            }
        }
    }

    /// Output rows `first..first + count` as f32 values, whatever the output type: what the
    /// rows hold before they are encoded (for reading a model rather than writing one).
    pub fn values<'s>(&'s self, first: u64, count: u64, scratch: &'s mut Scratch) -> Result<&'s [f32]> {
        let (whole, local) = (first, self.part_of(first));
        let (part, first) = local;
        match &part.input {
            Input::Values { .. } => self.decode(part, first, count, scratch)?,
            Input::OpenAiMxfp4 { .. } if self.spec.ggml_type != GgmlType::MXFP4 => {
                self.decode(part, first, count, scratch)?
            }
            Input::MlxAffine { .. } | Input::Fp8 { .. } => self.decode(part, first, count, scratch)?,
            _ => {
                // Bytes already in the output type (copied, computed, or repacked MXFP4):
                // produce them as for writing, with a second scratch, then decode.
                let mut encoded = Scratch { out: std::mem::take(&mut scratch.out), ..Scratch::default() };
                let bytes = self.rows(whole, count, &mut encoded)?;
                scratch.values.resize((count * self.row_len()) as usize, 0.0);
                to_f32(self.spec.ggml_type, bytes, &mut scratch.values)?;
                scratch.out = encoded.out;
            }
        }
        Ok(&scratch.values)
    }

    /// Output rows `first..first + count` of an OpenAI-MXFP4 input as they are stored: 16
    /// code bytes and one scale byte per block, appended to `codes` and `scales` (both
    /// cleared first). Scales are checked as when decoding.
    pub fn openai_blocks(&self, first: u64, count: u64, codes: &mut Vec<u8>, scales_out: &mut Vec<u8>) -> Result<()> {
        let (part, first) = self.part_of(first);
        let Input::OpenAiMxfp4 { blocks, scales, view } = &part.input else {
            bail!("internal error: {} is not stored as OpenAI MXFP4", self.spec.name);
        };
        let g = self.row_len() / 32;
        codes.clear();
        scales_out.clear();
        let (all_codes, all_scales) = (blocks.bytes(), scales.bytes());
        for r in 0..count {
            let start = view.row_start(first + r);
            if view.col_stride == 1 {
                // The row's blocks are contiguous: copy them whole.
                let (lo, hi) = (start as usize, (start + g) as usize);
                if let Some(b) = all_scales[lo..hi].iter().position(|&s| s == 0xFF) {
                    check_scale(part, 0xFF, first + r, b as u64)?;
                }
                scales_out.extend_from_slice(&all_scales[lo..hi]);
                codes.extend_from_slice(&all_codes[lo * 16..hi * 16]);
                continue;
            }
            for b in 0..g {
                let idx = (start + b * view.col_stride) as usize;
                let scale = scales.bytes()[idx];
                check_scale(part, scale, first + r, b)?;
                scales_out.push(scale);
                codes.extend_from_slice(&blocks.bytes()[idx * 16..idx * 16 + 16]);
            }
        }
        Ok(())
    }

    /// Decodes rows of a part that reads values (not copied bytes) into `scratch.values`.
    fn decode(&self, part: &Part, first: u64, count: u64, scratch: &mut Scratch) -> Result<()> {
        let ne0 = self.row_len();
        scratch.values.resize((count * ne0) as usize, 0.0);
        match &part.input {
            Input::Values { src, view } => {
                gather_values(src, view, first, count, &mut scratch.gathered, &mut scratch.values)
                    .map_err(|e| self.located(part, e, first))?;
                if self.check_finite {
                    self.check_values(part, &scratch.values, first)?;
                }
            }
            Input::OpenAiMxfp4 { blocks, scales, view } => {
                let kernels = moeq_kernels::active();
                let g = (ne0 / 32) as usize;
                for (r, y) in scratch.values.chunks_exact_mut(ne0 as usize).enumerate() {
                    let start = view.row_start(first + r as u64) as usize;
                    if view.col_stride == 1 {
                        // A row's blocks are contiguous: check its scales, decode it in one go.
                        let row_scales = &scales.bytes()[start..start + g];
                        if let Some(b) = row_scales.iter().position(|&s| s == 0xFF) {
                            check_scale(part, 0xFF, first + r as u64, b as u64)?;
                        }
                        kernels.openai_mxfp4_dequantize(&blocks.bytes()[start * 16..(start + g) * 16], row_scales, y);
                        continue;
                    }
                    for (b, y) in y.chunks_exact_mut(32).enumerate() {
                        let idx = start + b * view.col_stride as usize;
                        let scale = scales.bytes()[idx];
                        check_scale(part, scale, first + r as u64, b as u64)?;
                        openai::dequantize(&blocks.bytes()[idx * 16..idx * 16 + 16], &[scale], y);
                    }
                }
            }
            Input::MlxAffine { weight, scales, biases, bits, group, view } => {
                let (words_per_row, groups) = ((ne0 * *bits as u64 / 32) as usize, (ne0 / group) as usize);
                let (w, s, b) = (weight.bytes(), scales.bytes(), biases.bytes());
                let mut codes = vec![0u32; words_per_row];
                let (mut sc, mut bi) = (vec![0u16; groups], vec![0u16; groups]);
                for (r, y) in scratch.values.chunks_exact_mut(ne0 as usize).enumerate() {
                    let row = (view.row_start(first + r as u64) / ne0) as usize;
                    let words = &w[row * words_per_row * 4..(row + 1) * words_per_row * 4];
                    for (c, bytes) in codes.iter_mut().zip(words.chunks_exact(4)) {
                        *c = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
                    }
                    let le16 = |src: &[u8], dst: &mut [u16]| {
                        for (v, bytes) in
                            dst.iter_mut().zip(src[row * groups * 2..(row + 1) * groups * 2].chunks_exact(2))
                        {
                            *v = u16::from_le_bytes([bytes[0], bytes[1]]);
                        }
                    };
                    le16(s, &mut sc);
                    le16(b, &mut bi);
                    moeq_kernels::mlx::affine_dequantize(&codes, &sc, &bi, *bits, *group as usize, y);
                }
                if self.check_finite {
                    self.check_values(part, &scratch.values, first)?;
                }
            }
            Input::Fp8 { weight, scales, cols, block, view, round } => {
                let fp8 = Fp8Rows { codes: weight.bytes(), scales: scales.bytes(), cols: *cols, block: *block };
                if let Err((index, code)) = fp8.decode(view, first, count, &mut scratch.values) {
                    let at = first + index as u64 / ne0;
                    bail!(
                        "{} → '{}': the value at row {at}, column {} is FP8 code {code:#04x}, which is NaN",
                        part.origin,
                        self.spec.name,
                        index as u64 % ne0
                    );
                }
                if self.check_finite {
                    self.check_values(part, &scratch.values, first)?;
                }
                round_through(*round, &mut scratch.values, &mut scratch.halves);
            }
            _ => bail!("internal error: no values to decode"),
        }
        Ok(())
    }

    /// Tells the input file that the rows just produced will not be read again soon. For a
    /// transposing view a row reads a whole slab, so a slab is let go after its last row.
    pub fn release(&self, first: u64, count: u64) {
        let (part, first) = self.part_of(first);
        let (src, aux, view, unit) = match &part.input {
            Input::Owned(_) | Input::MlxAffine { .. } => return,
            Input::Copy(src) => {
                let row = self.out_row_bytes();
                src.file.release(src.start + (first * row) as usize, (count * row) as usize);
                return;
            }
            Input::Values { src, view } => (src, None, view, src.ty.type_size() / src.ty.block_size().max(1)),
            Input::Fp8 { weight, view, .. } => (weight, None, view, 1),
            Input::OpenAiMxfp4 { blocks, scales, view } => (blocks, Some(scales), view, 16),
        };
        if src.ty.is_quantized() && aux.is_none() {
            // Quantized sources are read in whole rows of blocks: contiguous.
            let row = src.ty.row_bytes(self.row_len()).unwrap_or(0);
            src.file.release(
                src.start + (view.row_start(first) / src.ty.block_size() * src.ty.type_size()) as usize,
                (count * row) as usize,
            );
            return;
        }
        let (lo, hi) = if view.col_stride == 1 {
            view.span(first, count)
        } else if (first + count).is_multiple_of(view.rows) {
            let slab = (first + count - 1) / view.rows;
            view.span(slab * view.rows, view.rows)
        } else {
            return;
        };
        src.file.release(src.start + (lo * unit) as usize, ((hi - lo) * unit) as usize);
        if let Some(scales) = aux {
            scales.file.release(scales.start + lo as usize, (hi - lo) as usize);
        }
    }

    /// Encodes `scratch.values` (rows `global..global + count` of the tensor, `first` of
    /// the part) into `scratch.out`, with importance weights when the recipe has them.
    fn encode(&self, part: &Part, scratch: &mut Scratch, count: u64, first: u64, global: u64) -> Result<()> {
        scratch.out.resize((count * self.out_row_bytes()) as usize, 0);
        let ty = self.spec.ggml_type;
        if let Some(r) = &self.rounding
            && let Some(qt) = crate::plan::transcode::quant_type(ty)
            && moeq_kernels::gptq::supports(qt)
        {
            return match r {
                crate::plan::rounding::Rounding::Matrix(t) => self.encode_gptq(part, scratch, qt, t, first, global),
                crate::plan::rounding::Rounding::Experts(x) => self.encode_experts(part, scratch, qt, x, first, global),
            };
        }
        let Scratch { values, out, weights, .. } = scratch;
        self.encode_ggml(part, values, out, weights, first, global)
    }

    /// ggml's rounding of `values` (rows `global..` of the tensor, `first..` of the part) into
    /// `out`, with the importance weights of each row's matrix when the recipe has them.
    fn encode_ggml(
        &self,
        part: &Part,
        values: &[f32],
        out: &mut [u8],
        weights: &mut Vec<f32>,
        first: u64,
        global: u64,
    ) -> Result<()> {
        let ty = self.spec.ggml_type;
        let Some(imp) = &self.importance else {
            return from_f32(ty, values, out).map_err(|e| self.located(part, e, first));
        };
        // Rows of one matrix (expert) at a time, each with that matrix's weights.
        let (ne0, row_bytes) = (self.row_len() as usize, self.out_row_bytes() as usize);
        let count = (values.len() / ne0.max(1)) as u64;
        let per = imp.rows_per_matrix.max(1);
        weights.resize(ne0, 0.0);
        let mut done = 0u64;
        while done < count {
            let row = global + done;
            let n = (per - row % per).min(count - done);
            imp.row_weights(row, weights);
            let (a, b) = (done as usize, (done + n) as usize);
            from_f32_weighted(ty, &values[a * ne0..b * ne0], &mut out[a * row_bytes..b * row_bytes], ne0, weights)
                .map_err(|e| self.located(part, e, first + done))?;
            done += n;
        }
        Ok(())
    }

    /// [`Recipe::encode`] of a stacked expert tensor with per-expert GPTQ: the rows of each
    /// expert (`ne[1]` of them) with that expert's factor; an expert without one (too few
    /// routed calibration tokens) as ggml rounds it.
    fn encode_experts(
        &self,
        part: &Part,
        scratch: &mut Scratch,
        qt: moeq_kernels::QuantType,
        x: &crate::plan::rounding::ExpertRounding,
        first: u64,
        global: u64,
    ) -> Result<()> {
        let Scratch { values, out, weights, .. } = scratch;
        let (ne0, row_bytes) = (self.row_len() as usize, self.out_row_bytes() as usize);
        let per = self.spec.ne.get(1).copied().unwrap_or(1).max(1);
        let count = (values.len() / ne0.max(1)) as u64;
        let mut done = 0u64;
        while done < count {
            let row = global + done;
            let n = (per - row % per).min(count - done);
            let (a, b) = (done as usize, (done + n) as usize);
            let (vals, bytes) = (&values[a * ne0..b * ne0], &mut out[a * row_bytes..b * row_bytes]);
            match x.experts.get((row / per) as usize).and_then(|(_, f)| f.as_ref()) {
                Some(t) => self.gptq_rows(part, vals, bytes, weights, qt, t, first + done, row)?,
                None => self.encode_ggml(part, vals, bytes, weights, first + done, row)?,
            }
            done += n;
        }
        Ok(())
    }

    /// [`Recipe::encode`] of one matrix with GPTQ ([`Recipe::gptq_rows`]).
    fn encode_gptq(
        &self,
        part: &Part,
        scratch: &mut Scratch,
        qt: moeq_kernels::QuantType,
        r: &crate::plan::rounding::TensorRounding,
        first: u64,
        global: u64,
    ) -> Result<()> {
        let Scratch { values, out, weights, .. } = scratch;
        self.gptq_rows(part, values, out, weights, qt, r, first, global)
    }

    /// GPTQ of rows `global..` (all of one matrix or expert) with factor `r`. The scale search
    /// is weighted by the tensor's `--imatrix` row when it has one, else by the calibration
    /// Hessian's diagonal.
    #[allow(clippy::too_many_arguments)]
    fn gptq_rows(
        &self,
        part: &Part,
        values: &[f32],
        out: &mut [u8],
        weights: &mut Vec<f32>,
        qt: moeq_kernels::QuantType,
        r: &crate::plan::rounding::TensorRounding,
        first: u64,
        global: u64,
    ) -> Result<()> {
        let ne0 = self.row_len() as usize;
        if r.cols != ne0 {
            bail!("{} → '{}': GPTQ factor of {} columns for rows of {ne0}", part.origin, self.spec.name, r.cols);
        }
        let qw: &[f32] = match &self.importance {
            Some(imp) => {
                weights.resize(ne0, 0.0);
                imp.row_weights(global, weights);
                weights
            }
            None => &r.diag,
        };
        let factor = r.factor()?;
        moeq_kernels::gptq::quantize_rows(qt, values, out, &factor, qw).map_err(|e| {
            anyhow::anyhow!("{} → '{}' (rows from {first}): GPTQ rounding: {e}", part.origin, self.spec.name)
        })
    }

    fn check_values(&self, part: &Part, values: &[f32], first: u64) -> Result<()> {
        match first_non_finite(values) {
            Some((index, value)) => Err(self.located(part, KernelError::NonFinite { index, value }.into(), first)),
            None => Ok(()),
        }
    }

    fn check_stored(&self, part: &Part, ty: GgmlType, bytes: &[u8], first: u64) -> Result<()> {
        let index = match ty {
            GgmlType::BF16 => first_all_ones16(bytes, 0x7F80),
            GgmlType::F16 => first_all_ones16(bytes, 0x7C00),
            GgmlType::F32 => first_all_ones32(bytes, 0x7F80_0000),
            _ => None,
        };
        let Some(index) = index else { return Ok(()) };
        let size = ty.type_size() as usize;
        let mut value = [0.0f32];
        to_f32(ty, &bytes[index * size..index * size + size], &mut value)?;
        Err(self.located(part, KernelError::NonFinite { index, value: value[0] }.into(), first))
    }

    /// Names the tensor (and, for a bad value, its row and column) in an error.
    fn located(&self, part: &Part, e: anyhow::Error, first: u64) -> anyhow::Error {
        let ne0 = self.row_len();
        match e.downcast_ref::<KernelError>() {
            Some(&KernelError::NonFinite { index, value }) => anyhow!(
                "{} → '{}': the value at row {}, column {} is {value}, which cannot be converted",
                part.origin,
                self.spec.name,
                first + index as u64 / ne0,
                index as u64 % ne0
            ),
            _ => match e.downcast_ref::<Overflow>() {
                Some(o) => {
                    let why = match (o.scale, o.ty) {
                        (true, ty) => format!("too large for a {ty} block (its scales overflow)"),
                        (false, GgmlType::F16) => "beyond F16's range (±65504)".to_string(),
                        (false, ty) => format!("which rounds to infinity in {ty}"),
                    };
                    anyhow!(
                        "{} → '{}': the value at row {}, column {} is {}, {why}; convert to {}",
                        part.origin,
                        self.spec.name,
                        first + o.index as u64 / ne0,
                        o.index as u64 % ne0,
                        o.value,
                        if o.ty == GgmlType::BF16 { "F32 instead" } else { "BF16 (or F32) instead, which holds it" },
                    )
                }
                None => e.context(format!("{} → '{}'", part.origin, self.spec.name)),
            },
        }
    }
}

/// An FP8 tensor's codes and block scales (see [`Input::Fp8`]).
struct Fp8Rows<'b> {
    codes: &'b [u8],
    scales: &'b [u8],
    cols: u64,
    block: (u64, u64),
}

impl Fp8Rows<'_> {
    /// The scale of the block holding stored value `index`.
    fn scale(&self, index: u64) -> f32 {
        let (row, col) = (index / self.cols, index % self.cols);
        let per_row = self.cols.div_ceil(self.block.1);
        let at = ((row / self.block.0 * per_row + col / self.block.1) * 4) as usize;
        f32::from_le_bytes([self.scales[at], self.scales[at + 1], self.scales[at + 2], self.scales[at + 3]])
    }

    /// Output rows `first..first + count` of `view` into `out` (resized by the caller to whole
    /// rows): each value times its block's scale. Contiguous rows go block run by block run;
    /// a transposing view (DeepSeek's `k_b`) value by value. A NaN code stops it: its index in
    /// `out` and the code.
    fn decode(&self, view: &View, first: u64, count: u64, out: &mut [f32]) -> Result<(), (usize, u8)> {
        let n = view.cols as usize;
        for (r, y) in out.chunks_exact_mut(n).enumerate().take(count as usize) {
            let start = view.row_start(first + r as u64);
            if view.col_stride == 1 {
                let mut c = 0;
                while c < n {
                    let index = start + c as u64;
                    let col = index % self.cols;
                    let run = ((self.block.1 - col % self.block.1).min(self.cols - col) as usize).min(n - c);
                    let codes = &self.codes[index as usize..index as usize + run];
                    if let Some(bad) =
                        moeq_kernels::fp8::dequantize_scaled(codes, self.scale(index), &mut y[c..c + run])
                    {
                        return Err((r * n + c + bad, codes[bad]));
                    }
                    c += run;
                }
            } else {
                for (c, v) in y.iter_mut().enumerate() {
                    let index = start + c as u64 * view.col_stride;
                    let code = self.codes[index as usize];
                    if moeq_kernels::fp8::dequantize_scaled(&[code], self.scale(index), std::slice::from_mut(v))
                        .is_some()
                    {
                        return Err((r * n + c, code));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Rounds `values` to `ty` (BF16 or F16) and back, as writing them in that type and reading
/// them again would; F32 leaves them. `halves` is scratch space.
fn round_through(ty: GgmlType, values: &mut [f32], halves: &mut Vec<u16>) {
    if !matches!(ty, GgmlType::BF16 | GgmlType::F16) {
        return;
    }
    let k = moeq_kernels::active();
    halves.resize(values.len(), 0);
    let h = &mut halves[..];
    if ty == GgmlType::BF16 {
        k.f32_to_bf16(values, h);
        k.bf16_to_f32(h, values);
    } else {
        k.f32_to_f16(values, h);
        k.f16_to_f32(h, values);
    }
}

/// Refuses an E8M0 scale byte 0xFF (NaN in the OCP MX format).
fn check_scale(part: &Part, scale: u8, row: u64, block: u64) -> Result<()> {
    if scale == 0xFF {
        bail!(
            "{}: row {row}, block {block} has scale byte 0xFF, which is NaN in E8M0 (OCP MX); the checkpoint is corrupt",
            part.origin
        );
    }
    Ok(())
}

/// The first 16-bit value whose `mask` bits are all set (an all-ones exponent: NaN or
/// infinity). A branch-free pass first, which vectorizes; the search only when it finds one.
fn first_all_ones16(bytes: &[u8], mask: u16) -> Option<usize> {
    let hit = |h: &[u8]| u16::from_le_bytes([h[0], h[1]]) & mask == mask;
    if !bytes.chunks_exact(2).fold(false, |any, h| any | hit(h)) {
        return None;
    }
    bytes.chunks_exact(2).position(hit)
}

/// As [`first_all_ones16`], for 32-bit values.
fn first_all_ones32(bytes: &[u8], mask: u32) -> Option<usize> {
    let hit = |w: &[u8]| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & mask == mask;
    if !bytes.chunks_exact(4).fold(false, |any, w| any | hit(w)) {
        return None;
    }
    bytes.chunks_exact(4).position(hit)
}

/// Decodes output rows `first..first + count` of `view` over `src` into `values`.
fn gather_values(
    src: &Stored,
    view: &View,
    first: u64,
    count: u64,
    gathered: &mut Vec<u8>,
    values: &mut [f32],
) -> Result<()> {
    let bytes = src.bytes();
    let cols = view.cols as usize;
    if src.ty.is_quantized() || view.col_stride == 1 {
        // Whole rows of contiguous values (blocks, for quantized types).
        let (block, size) = (src.ty.block_size(), src.ty.type_size());
        let row_bytes = src.ty.row_bytes(view.cols).ok_or_else(|| anyhow!("rows are not whole blocks"))? as usize;
        if view.col_stride != 1 {
            bail!("a block-quantized tensor cannot be transposed");
        }
        for (r, y) in values.chunks_exact_mut(cols).enumerate() {
            let start = view.row_start(first + r as u64);
            if !start.is_multiple_of(block) {
                bail!("a row does not start on a block boundary");
            }
            let at = (start / block * size) as usize;
            to_f32(src.ty, &bytes[at..at + row_bytes], y)?;
        }
        return Ok(());
    }
    // Scattered values: gather their bytes, walking the stored tensor in order (column-major
    // over the output) so a transpose reads memory sequentially.
    let size = src.ty.type_size() as usize;
    gathered.resize(count as usize * cols * size, 0);
    let starts: Vec<usize> = (0..count).map(|r| view.row_start(first + r) as usize).collect();
    let stride = view.col_stride as usize;
    match size {
        2 => gather::<2>(bytes, &starts, stride, cols, gathered),
        4 => gather::<4>(bytes, &starts, stride, cols, gathered),
        _ => bail!("{} values cannot be gathered", src.ty),
    }
    to_f32(src.ty, gathered, values)
}

/// `out[r][c] = stored[starts[r] + c · stride]` for values of `N` bytes.
fn gather<const N: usize>(bytes: &[u8], starts: &[usize], stride: usize, cols: usize, out: &mut [u8]) {
    for c in 0..cols {
        for (r, &start) in starts.iter().enumerate() {
            let at = (start + c * stride) * N;
            let value: [u8; N] = bytes[at..at + N].try_into().expect("N bytes");
            let to = (r * cols + c) * N;
            out[to..to + N].copy_from_slice(&value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_address_the_right_values() {
        // [E=2, H=3, 2I=4] stored; gate = transposed even columns → [E, I=2, H=3].
        let gate = View {
            outer: 2,
            rows: 2,
            cols: 3,
            outer_stride: 12,
            row_stride: 2,
            col_stride: 4,
            offset: 0,
            rope_group: 0,
        };
        let up = View { offset: 1, ..gate };
        let row = |v: &View, i: u64| (0..v.cols).map(|c| v.row_start(i) + c * v.col_stride).collect::<Vec<_>>();
        assert_eq!(row(&gate, 0), [0, 4, 8]);
        assert_eq!(row(&gate, 1), [2, 6, 10]);
        assert_eq!(row(&gate, 2), [12, 16, 20]);
        assert_eq!(row(&up, 3), [15, 19, 23]);
        assert_eq!(up.extent(), 24);
        assert_eq!(View::plain(3, 5).span(1, 2), (5, 15));
        // Llama's q/k permutation, head size 4: rows 0,1,2,3 ← 0,2,1,3.
        let q = View { rope_group: 4, ..View::plain(8, 2) };
        assert_eq!((0..8).map(|i| q.row_start(i) / 2).collect::<Vec<_>>(), [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(q.span(1, 2), (0, 8));
    }
}
