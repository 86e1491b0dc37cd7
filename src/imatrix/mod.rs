//! `moeq imatrix`: importance matrices computed with moeq's own forward, straight from any
//! model moeq reads (a released checkpoint or a GGUF), in bounded memory.
//!
//! The hidden states of all calibration tokens are kept ([T, hidden] f32); the model runs one
//! layer at a time over all of them, in groups of whole chunks sized to a fixed memory budget,
//! each weight decoded tile by tile as `eval` and `verify` decode them and its pages released
//! after use, and finished layers' sums spilled to a scratch file, so the model is never held
//! and memory does not grow with layers or experts. A
//! [`collect::Collector`] sees every weight multiplication's input ([`crate::forward::Probe`])
//! and accumulates what llama-imatrix accumulates. With `all_experts`, every expert of a MoE
//! layer is also run on the tokens the router did not send to it (its output discarded: the
//! forward still routes as the model does), so every expert's statistics cover every token.

pub mod calibration;
pub mod collect;
pub mod file;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::forward::Model;
use crate::model::weights::Weights;
use crate::write::progress::steps_bar;
use collect::Collector;
pub use file::Imatrix;

/// Bytes of per-layer temporaries a group of tokens may take (besides the [T, hidden] hidden
/// states): the group size follows from it and the model's widths.
const GROUP_BUDGET: usize = 384 << 20;

/// How to compute.
#[derive(Clone, Debug, Default)]
pub struct ImatrixOptions {
    /// Give every expert every token's activations (`--all-experts`).
    pub all_experts: bool,
    /// Also collect `output.weight` (llama-imatrix's `--process-output`).
    pub process_output: bool,
    /// Experts routed fewer tokens than this in a layer are flagged (default: a tenth of an
    /// even share, tokens × experts used / experts / 10).
    pub min_expert_tokens: Option<u64>,
    /// The calibration inputs' names for `imatrix.datasets`.
    pub datasets: Vec<String>,
    /// No progress bar.
    pub quiet: bool,
}

/// How the router spread the calibration tokens over the experts.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// `[layer][expert]`: tokens routed (by the model's own routing); empty for dense layers.
    pub routed: Vec<Vec<u64>>,
    /// Tokens in the calibration set.
    pub tokens: u64,
    /// The flag threshold used.
    pub threshold: u64,
}

impl Coverage {
    /// (layer, expert, tokens) of every expert routed fewer tokens than the threshold (dense
    /// layers have none: their lists are empty).
    pub fn starved(&self) -> Vec<(usize, usize, u64)> {
        let mut out = Vec::new();
        for (l, experts) in self.routed.iter().enumerate() {
            for (e, &n) in experts.iter().enumerate() {
                if n < self.threshold {
                    out.push((l, e, n));
                }
            }
        }
        out
    }

    /// The report: per layer the fewest and most tokens an expert got, then the flagged experts.
    pub fn to_text(&self) -> String {
        if self.routed.is_empty() {
            return String::new();
        }
        let mut s =
            format!("tokens per expert ({} calibration tokens; flagged below {}):\n", self.tokens, self.threshold);
        // Dense layers (no experts) are left out.
        for (l, experts) in self.routed.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
            let (min, max) = (experts.iter().min().unwrap_or(&0), experts.iter().max().unwrap_or(&0));
            let list: Vec<String> = experts.iter().map(u64::to_string).collect();
            s += &format!("  layer {l:>3}: min {min:>7} max {max:>7}  [{}]\n", list.join(" "));
        }
        let starved = self.starved();
        if starved.is_empty() {
            s += "every expert got at least the threshold\n";
        } else {
            s += &format!("{} experts under the threshold:", starved.len());
            for (l, e, n) in starved {
                s += &format!(" {l}/{e} ({n})");
            }
            s += "\n";
        }
        s
    }

    /// The report as JSON: `{"tokens", "threshold", "routed": [[...]], "starved": [[layer, expert, tokens]]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokens": self.tokens,
            "threshold": self.threshold,
            "routed": self.routed,
            "starved": self.starved().iter().map(|&(l, e, n)| serde_json::json!([l, e, n])).collect::<Vec<_>>(),
        })
    }
}

/// One group of whole calibration chunks run through a layer at once: its first row in the
/// concatenated tokens, its rows, and for each row the row (relative to the group) where its
/// chunk starts (each chunk attends within itself).
pub(crate) type ChunkGroup = (usize, usize, Vec<usize>);

/// `chunks` cut into groups of [`group_chunks`] whole chunks each, in order ([`ChunkGroup`]).
pub(crate) fn chunk_groups(m: &Model, chunks: &[Vec<u32>]) -> Vec<ChunkGroup> {
    let chunk_len = chunks.iter().map(Vec::len).max().unwrap_or(1);
    let mut groups = Vec::new();
    let mut row = 0;
    for g in chunks.chunks(group_chunks(m, chunk_len)) {
        let mut starts = Vec::with_capacity(g.iter().map(Vec::len).sum());
        let mut at = 0;
        for chunk in g {
            starts.extend(std::iter::repeat_n(at, chunk.len()));
            at += chunk.len();
        }
        groups.push((row, at, starts));
        row += at;
    }
    groups
}

/// Tokens per group: whole chunks whose per-layer temporaries fit [`GROUP_BUDGET`] (at least
/// one chunk).
pub(crate) fn group_chunks(m: &Model, chunk_len: usize) -> usize {
    let c = &m.cfg;
    let (h, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
    let ff =
        m.w.ne("blk.0.ffn_down_exps.weight")
            .or_else(|_| m.w.ne("blk.0.ffn_down.weight"))
            .map_or(h, |ne| ne[0] as usize);
    // Attention: its input, q, k, v, the heads' output, the block's output. Feed-forward: its
    // input and output, router logits, and an expert's rows (input, gate, up, activation, output).
    let attention = 2 * h + 2 * q + 2 * kv;
    let ffn = 2 * h + c.n_expert + 2 * h + 3 * ff;
    let per_token = 4 * attention.max(ffn).max(1);
    (GROUP_BUDGET / per_token / chunk_len.max(1)).max(1)
}

/// Computes the importance matrix of `w` on `chunks` (independent sequences, each attended
/// within itself). Returns it and the experts' coverage.
pub fn compute(w: &Weights, chunks: &[Vec<u32>], opts: &ImatrixOptions) -> Result<(Imatrix, Coverage)> {
    let collector = Arc::new(Collector::new(w, opts.process_output)?);
    let base = Model::new(w)?;
    let model = Model { probe: Some(collector.clone()), keep_expert_out: false, memo: None, ..base };
    let c = &model.cfg;
    let (h, n_expert, k) = (c.n_embd, c.n_expert, c.n_expert_used);
    let all_experts = opts.all_experts && n_expert > 0;
    let tokens: Vec<u32> = chunks.iter().flatten().copied().collect();
    let t = tokens.len();
    let chunk_len = chunks.iter().map(Vec::len).max().unwrap_or(1);
    let per_group = group_chunks(&model, chunk_len);
    let groups = chunk_groups(&model, chunks);
    let mut x = model.embed(&tokens)?;
    let mut routed = vec![vec![0u64; n_expert]; if n_expert > 0 { c.n_layer } else { 0 }];
    let bar = steps_bar((c.n_layer * groups.len()) as u64, "layers");
    if opts.quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for l in 0..c.n_layer {
        for (first, len, starts) in &groups {
            let xs = &mut x[first * h..(first + len) * h];
            let (m_in, f) = model.layer(l, xs, starts).with_context(|| format!("{}: layer {l}", w.path))?;
            if let Some(per_expert) = routed.get_mut(l) {
                f.routes.iter().flatten().for_each(|&e| per_expert[e] += 1);
            }
            // A dense layer (DeepSeek-V3's leading ones, Qwen3-MoE's mlp_only_layers) routes
            // nothing and has no experts to run.
            let dense = f.routes.iter().all(Vec::is_empty);
            if dense && let Some(per_expert) = routed.get_mut(l) {
                per_expert.clear();
            }
            if all_experts && !dense {
                run_unrouted(&model, l, &m_in, &f.routes, per_group * chunk_len)?;
            }
            bar.inc(1);
        }
        collector.flush()?;
    }
    if opts.process_output && w.has("output.weight") {
        for (first, len, _) in &groups {
            let xs = &x[first * h..(first + len) * h];
            let out = crate::forward::ops::rmsnorm(xs, &model.t("output_norm.weight")?, c.rms_eps);
            model.linear(&out, "output", false)?;
        }
        collector.flush()?;
    }
    bar.finish_and_clear();
    let mean = if n_expert > 0 { t as u64 * k as u64 / n_expert as u64 } else { 0 };
    let coverage =
        Coverage { routed, tokens: t as u64, threshold: opts.min_expert_tokens.unwrap_or((mean / 10).max(1)) };
    // The hidden states go before the matrix is read back from its scratch file.
    drop(x);
    let entries = collector.take_entries()?;
    let imatrix = Imatrix {
        entries,
        datasets: opts.datasets.clone(),
        chunk_count: chunks.len() as u32,
        chunk_size: chunk_len as u32,
        all_experts,
    };
    Ok((imatrix, coverage))
}

/// `--all-experts`: every expert of layer `l` on the rows of `m_in` [T, hidden] the router did
/// not send to it, `max_rows` at a time; the probe records their inputs, the outputs are
/// dropped.
fn run_unrouted(m: &Model, l: usize, m_in: &[f32], routes: &[Vec<usize>], max_rows: usize) -> Result<()> {
    let h = m.cfg.n_embd;
    for e in 0..m.cfg.n_expert {
        let rows: Vec<usize> = routes.iter().enumerate().filter(|(_, r)| !r.contains(&e)).map(|(i, _)| i).collect();
        for part in rows.chunks(max_rows.max(1)) {
            let xe: Vec<f32> = part.iter().flat_map(|&i| m_in[i * h..(i + 1) * h].iter().copied()).collect();
            m.expert(l, e, &xe)?;
        }
    }
    Ok(())
}

/// Where the calibration tokens come from.
#[derive(Clone, Debug)]
pub enum Calibration {
    /// UTF-8 text, tokenized with the model's tokenizer and cut into chunks of `ctx` tokens.
    Text(std::path::PathBuf),
    /// Chunks of token ids, one per line.
    Tokens(std::path::PathBuf),
}

impl Calibration {
    /// The file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Calibration::Text(p) | Calibration::Tokens(p) => p,
        }
    }
}

/// What calibration tokens are for, in messages.
#[derive(Clone, Copy, Debug)]
pub struct Purpose {
    /// What they feed, e.g. "the importance matrix".
    pub what: &'static str,
    /// The command's option that takes token ids instead of text, e.g. "--tokens-file FILE".
    pub ids_option: &'static str,
}

/// The calibration chunks of `input` for the model `w` (opened from `path` as `source`): text
/// tokenized with the model's tokenizer (the tokenizer.json in `tokenizer`, else the
/// checkpoint's) and cut into at most `chunks` chunks of `ctx` tokens
/// ([`calibration::text_chunks`]), or chunks of ids read as given ([`calibration::file_chunks`]).
///
/// Fewer than [`calibration::MIN_TOKENS`] tokens beyond BOS print a warning naming the file
/// and what the tokens are for (`purpose`).
///
/// Errors name the file: unreadable, not UTF-8, too short for one chunk, `--ctx 1` with a BOS
/// (chunks of the BOS alone), ids outside the vocabulary, no tokenizer for a GGUF.
#[allow(clippy::too_many_arguments)]
pub fn load_chunks(
    path: &std::path::Path,
    source: &crate::source::Source,
    w: &Weights,
    input: &Calibration,
    ctx: usize,
    chunks: Option<usize>,
    tokenizer: Option<&std::path::Path>,
    purpose: &Purpose,
) -> Result<Vec<Vec<u32>>> {
    use crate::vocab::tokenize::{ModelText, read_text};
    let what = input.path().display().to_string();
    let (cut, bos) = match input {
        Calibration::Text(file) => {
            let text = read_text(file)?;
            let model_text = ModelText::open(path, source, w, tokenizer, purpose.ids_option)?;
            (calibration::text_chunks(&model_text, &text, ctx, chunks, &what)?, model_text.bos)
        }
        Calibration::Tokens(file) => {
            let n_vocab = w.ne("token_embd.weight")?.get(1).copied().unwrap_or(0) as usize;
            (calibration::file_chunks(file, chunks, n_vocab)?, None)
        }
    };
    let text = matches!(input, Calibration::Text(_));
    if let Some(warning) = calibration::too_few_tokens(&cut, bos, &what, purpose.what, text) {
        eprintln!("warning: {warning}");
    }
    // Positions past the model's training context calibrate on what it never saw.
    let longest = cut.iter().map(Vec::len).max().unwrap_or(0);
    let fix = if text { "a smaller --ctx avoids it" } else { "shorter chunks avoid it" };
    if let Some(warning) = w.past_context_warning(longest, &what, fix) {
        eprintln!("warning: {warning}");
    }
    Ok(cut)
}

/// An importance matrix to compute from a model on disk.
#[derive(Clone, Debug)]
pub struct Request {
    /// The model (checkpoint folder or GGUF).
    pub model: std::path::PathBuf,
    /// The calibration input.
    pub calibration: Calibration,
    /// Tokens per chunk (text input).
    pub ctx: usize,
    /// At most this many chunks.
    pub chunks: Option<usize>,
    /// The folder with the tokenizer.json, when not the model's.
    pub tokenizer: Option<std::path::PathBuf>,
    /// How to compute (`datasets` is filled from the calibration input when empty).
    pub options: ImatrixOptions,
    /// Where to write the chunks computed on (one per line, ids comma-separated).
    pub save_chunks: Option<std::path::PathBuf>,
}

/// Opens the model, reads and tokenizes the calibration input (errors name the file), and
/// computes the importance matrix ([`compute`]). With `save_chunks`, also returns that file
/// written under its temporary name: the caller commits it after the matrix, so a run that
/// fails (or is interrupted) leaves neither.
pub fn compute_request(req: &Request) -> Result<(Imatrix, Coverage, Option<moeq_formats::output::OutputFile>)> {
    use crate::source::Source;
    let source = Source::open(&req.model)?;
    let w = Weights::new(&source, &req.model)?;
    let chunks = load_chunks(
        &req.model,
        &source,
        &w,
        &req.calibration,
        req.ctx,
        req.chunks,
        req.tokenizer.as_deref(),
        &Purpose { what: "the importance matrix", ids_option: "--tokens-file FILE" },
    )?;
    let dataset = req.calibration.path();
    let saved = match &req.save_chunks {
        Some(path) => {
            let text: String =
                chunks.iter().map(|c| c.iter().map(u32::to_string).collect::<Vec<_>>().join(",") + "\n").collect();
            Some(moeq_formats::output::OutputFile::with_bytes(path, text.as_bytes())?)
        }
        None => None,
    };
    let mut options = req.options.clone();
    if options.datasets.is_empty() {
        options.datasets.push(dataset.display().to_string());
    }
    let (imatrix, coverage) = compute(&w, &chunks, &options)?;
    Ok((imatrix, coverage, saved))
}
