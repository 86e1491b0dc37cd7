//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::plan::convert::{Format, parse_size};

/// moeq: turn Mixture-of-Experts checkpoints into the files local runtimes load.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Print warnings and errors only: no progress bar, no `wrote …` lines or summaries, and
    /// `verify`'s text report only when a check fails (what a command is asked to print on
    /// standard output, like `inspect`'s report or `--json`, is still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
// Parsed once; `convert`'s many options make it the largest, which costs nothing here.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Show what a model holds: format, architecture, hyperparameters, metadata, tensors.
    ///
    /// PATH is a .gguf file (the first split is enough), a .safetensors file, or a model
    /// folder (Hugging Face or OpenAI original). Only headers are read.
    Inspect {
        /// The file or folder.
        path: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run moeq's own f32 forward on a model and show the most likely next tokens.
    ///
    /// MODEL is anything moeq reads: a checkpoint folder (gpt-oss in any layout, DeepSeek-V3,
    /// GLM-4.5/4.6, GLM-4.7-Flash, MiniMax-M2 (FP8 or BF16), Qwen3-MoE, Qwen2-MoE, Mixtral, Llama), an MLX
    /// build folder, or a GGUF of any type moeq writes.
    Eval {
        /// The model.
        model: PathBuf,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "text", conflicts_with = "text")]
        tokens: Vec<u32>,
        /// Text instead of ids, tokenized as llama.cpp tokenizes it, with the model's
        /// tokenizer.json: a BOS first when llama.cpp adds one for this vocabulary, and for a
        /// SentencePiece vocabulary the leading space llama.cpp adds.
        #[arg(long, value_name = "TEXT")]
        text: Option<String>,
        /// The tokenizer.json, or its folder, for --text (default: the checkpoint's folder; a
        /// GGUF needs it).
        #[arg(long, value_name = "PATH")]
        tokenizer: Option<PathBuf>,
        /// Write logits, hidden states and MoE block inputs/outputs as F32 safetensors.
        #[arg(long, value_name = "OUT.safetensors")]
        dump: Option<PathBuf>,
        /// How many candidates to show per position (at least 1).
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        top: usize,
    },
    /// Check that an output computes what its source computes: every tensor, every MoE block
    /// on the source's own hidden states, and the next-token distributions on reference tokens.
    ///
    /// Exit status 0 when within the limits, 1 when a check fails, 2 on errors. Default limits
    /// follow the output's types; lossless conversions must be exact.
    Verify {
        /// The source model (a checkpoint folder or a GGUF).
        source: PathBuf,
        /// The converted model.
        output: PathBuf,
        /// Reference token ids (comma-separated); default: a built-in set of 256 tokens in five
        /// sequences (160, 48, 24, 16 and 8 long).
        #[arg(long, value_delimiter = ',')]
        tokens: Vec<u32>,
        /// Reference sequences from a file: one sequence per line, ids separated by commas or
        /// spaces.
        #[arg(long, value_name = "FILE", conflicts_with = "tokens")]
        tokens_file: Option<PathBuf>,
        /// Reference text from a UTF-8 file, tokenized with the source model's tokenizer.json
        /// as `moeq imatrix --text` does, in sequences of 512 tokens (the last one shorter).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["tokens", "tokens_file"])]
        text: Option<PathBuf>,
        /// The tokenizer.json, or its folder, for --text (default: the source checkpoint's
        /// folder; a GGUF source needs it).
        #[arg(long, value_name = "PATH")]
        tokenizer: Option<PathBuf>,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        /// Largest allowed KL divergence of a next-token distribution (nats, ≥ 0).
        #[arg(long, value_parser = non_negative)]
        max_kl: Option<f64>,
        /// Smallest allowed share of positions with the same most likely token (0 to 1).
        #[arg(long, value_parser = share)]
        min_top1: Option<f64>,
        /// Largest allowed relative error of a feed-forward block's output (≥ 0).
        #[arg(long, value_parser = non_negative)]
        max_moe_rel_err: Option<f64>,
        /// Run every layer of the output model. By default a layer (or the head) whose tensors
        /// are bit-identical to the source's, with the same hyperparameters and the same input,
        /// is taken from the source's run: the forward is deterministic, so it would give the
        /// same bits.
        #[arg(long)]
        full_forward: bool,
        /// Also run every expert of every MoE layer on every token's block input in both models
        /// and report each expert's relative error (the block check sees only routed tokens).
        #[arg(long)]
        every_expert: bool,
    },
    /// Compute an importance matrix (llama-imatrix's) with moeq's own forward, one layer at a
    /// time over all calibration tokens, from any model moeq reads.
    ///
    /// The text is tokenized with the model's tokenizer.json and cut into chunks of --ctx
    /// tokens as llama-imatrix cuts them (the first token of each chunk replaced by BOS when
    /// the vocabulary adds one); --tokens-file takes chunks of ids, one per line. The output is
    /// llama.cpp's GGUF imatrix (or --output-format dat, the legacy format), named as the GGUF
    /// moeq writes of the model, for llama-quantize --imatrix and moeq convert --imatrix. A
    /// report of tokens per expert per layer flags experts under a threshold; --all-experts
    /// gives every expert every token's activations (routing unchanged).
    Imatrix {
        /// The model (a checkpoint folder or a GGUF).
        model: PathBuf,
        /// Calibration text (UTF-8).
        #[arg(long, value_name = "FILE", required_unless_present = "tokens_file", conflicts_with = "tokens_file")]
        text: Option<PathBuf>,
        /// Calibration chunks as token ids: one chunk per line, ids separated by commas or
        /// spaces, used as given.
        #[arg(long, value_name = "FILE")]
        tokens_file: Option<PathBuf>,
        /// The importance matrix to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Tokens per chunk (--text; --tokens-file chunks are used as given).
        #[arg(long, default_value_t = 512, conflicts_with = "tokens_file")]
        ctx: usize,
        /// At most this many chunks (default: all the text holds).
        #[arg(long)]
        chunks: Option<usize>,
        /// The tokenizer.json, or its folder (default: the checkpoint's folder; a GGUF needs it).
        #[arg(long, value_name = "PATH")]
        tokenizer: Option<PathBuf>,
        /// gguf (llama.cpp's current format) or dat (legacy).
        #[arg(long, default_value = "gguf", value_parser = ["gguf", "dat"])]
        output_format: String,
        /// Add every calibration token's activations to every expert's statistics (the model
        /// still routes as it does); recorded as moeq.imatrix.all_experts in the GGUF.
        #[arg(long)]
        all_experts: bool,
        /// Also collect output.weight (llama-imatrix's --process-output).
        #[arg(long)]
        process_output: bool,
        /// Flag experts routed fewer tokens than this in a layer (default: a tenth of an even
        /// share).
        #[arg(long, value_name = "N")]
        min_expert_tokens: Option<u64>,
        /// Also write the chunks computed on, as --tokens-file reads them (one per line).
        #[arg(long, value_name = "FILE")]
        save_chunks: Option<PathBuf>,
        /// Print the expert coverage report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure moeq's speed on this machine.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchTarget,
    },
    /// Convert a checkpoint to GGUF, or rewrite / requantize a GGUF.
    ///
    /// A gpt-oss checkpoint folder (OpenAI original, Hugging Face MXFP4 or bf16) becomes the
    /// GGUF llama.cpp's convert_hf_to_gguf.py writes: MXFP4 experts carried over losslessly,
    /// the rest BF16. --type F32/F16/BF16 act as its --outtype; quantized types give what
    /// llama-quantize would make of that file (MXFP4 experts are kept as released).
    ///
    /// A GGUF (single or split) is rewritten as one file, or re-split with --split-max-size;
    /// with --type, requantized as `llama-quantize --allow-requantize` does, with the same
    /// per-tensor choices and byte-identical results.
    ///
    /// --format mlx writes the folder `mlx_lm convert` writes (any checkpoint, including
    /// gpt-oss bf16 fine-tunes and Mixtral): no --type = without -q (bf16, gpt-oss MXFP4
    /// experts kept); --type qN [--group-size G] = -q --q-bits N --q-group-size G (N = 2, 3, 4,
    /// 5, 6 or 8) with
    /// mlx-lm's per-module choices (gpt-oss: experts mxfp4, router 8-bit); --type mxfp4|bf16|f16
    /// too; --quant-override PATTERN=TYPE[:GROUP] on top. --format hf writes gpt-oss's
    /// published Hugging Face layout (MXFP4 experts) from any gpt-oss checkpoint.
    Convert {
        /// The input model.
        input: PathBuf,
        /// The output file (shards are named OUT-00001-of-0000N.gguf beside it), or folder for
        /// --format mlx/hf. Not needed with --dry-run.
        #[arg(short, long, required_unless_present = "dry_run")]
        output: Option<PathBuf>,
        /// The output format: gguf, mlx or hf.
        #[arg(long, default_value = "gguf", value_parser = Format::parse)]
        format: Format,
        /// GGUF: the llama.cpp file type to requantize to (a name or llama_ftype id, as
        /// llama-quantize takes it): F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4_MOE,
        /// Q2_K, Q2_K_S, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL,
        /// IQ4_XS, IQ3_XXS, IQ3_XS, IQ3_S, IQ3_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ1_S, IQ1_M,
        /// TQ1_0, TQ2_0 (without it tensors are copied). MLX: q2, q3, q4, q5, q6, q8, mxfp4, bf16,
        /// f16 or f32.
        #[arg(long = "type", value_name = "TYPE")]
        ty: Option<String>,
        /// MLX: values per quantization group for the affine types q2…q8 (32, 64 or 128;
        /// default 64).
        #[arg(long)]
        group_size: Option<u64>,
        /// MLX: store modules matching PATTERN (`*` matches anything, e.g. `lm_head`,
        /// `model.layers.*.mlp.router`) as TYPE[:GROUP] instead; repeatable, first match wins.
        #[arg(long, value_name = "PATTERN=TYPE")]
        quant_override: Vec<String>,
        /// Split the output into shards of at most this much tensor data (e.g. 500M, 4G, 3.5GiB;
        /// MLX and HF folders: default 5G as mlx-lm and transformers).
        #[arg(long, value_parser = parse_size)]
        split_max_size: Option<u64>,
        /// Convert a checkpoint without its tokenizer (llama.cpp cannot chat with the result).
        #[arg(long)]
        no_vocab: bool,
        /// The tokenizer.ggml.pre to write (default: the family's, `gpt-4o` for gpt-oss).
        #[arg(long, value_name = "NAME")]
        tokenizer_pre: Option<String>,
        /// Run `moeq verify` on the fresh output (exit status 1 if it fails).
        #[arg(long, conflicts_with_all = ["dry_run", "json"])]
        verify: bool,
        /// With --verify: the largest allowed next-token KL divergence (as `moeq verify --max-kl`).
        #[arg(long, value_parser = non_negative, requires = "verify")]
        max_kl: Option<f64>,
        /// With --verify: the smallest allowed top-1 agreement (as `moeq verify --min-top1`).
        #[arg(long, value_parser = share, requires = "verify")]
        min_top1: Option<f64>,
        /// With --verify: the largest allowed block error (as `moeq verify --max-moe-rel-err`).
        #[arg(long, value_parser = non_negative, requires = "verify")]
        max_moe_rel_err: Option<f64>,
        /// llama-quantize's options.
        #[command(flatten)]
        quant: QuantArgs,
    },
}

/// A limit: a finite number ≥ 0 (`-0` is 0).
fn non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v.abs()),
        _ => Err(format!("'{text}' is not a number ≥ 0")),
    }
}

/// A share: a number from 0 to 1 (not a percentage).
fn share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v.abs()),
        Ok(v) if v.is_finite() && v > 1.0 && v <= 100.0 => {
            Err(format!("'{text}' is more than 1: a share from 0 to 1 (for {v}% write {})", v / 100.0))
        }
        _ => Err(format!("'{text}' is not a share from 0 to 1")),
    }
}

/// A count that must be at least 1 (`eval --top`): 0 would show nothing. Clap reports the
/// error naming the option and exits with status 2.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would show no candidates)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

/// The largest `moeq bench dot --width`: wider than any model's rows (a 405B Llama's widest,
/// its feed-forward's 53,248), and 256 tokens of it still fit in 70 MB.
const MAX_DOT_WIDTH: usize = 65536;

fn row_width(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=MAX_DOT_WIDTH) => Ok(n),
        Ok(n) => Err(format!("{n} values per row: must be 1 to {MAX_DOT_WIDTH}")),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

/// The largest `moeq bench kernels --size`: 64 times the default 16 MiB, far past every cache
/// (the measured rate no longer changes), and the buffers it allocates (the values, their
/// quantized and dequantized copies: about three times the size) still fit a small machine.
const MAX_BENCH_SIZE: usize = 1 << 30;

/// `moeq bench kernels --size`: whole 256-value blocks of f32, so at least 1024 bytes.
fn bench_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1024..=MAX_BENCH_SIZE) => Ok(n),
        Ok(n) => Err(format!("{n} bytes: must be 1024 (one block of 256 f32 values) to {MAX_BENCH_SIZE} (1 GiB)")),
        Err(e) => Err(format!("not a number of bytes: {e}")),
    }
}

/// What `moeq bench` measures.
#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Single-thread throughput of every kernel on every backend this CPU runs (GB/s of f32).
    Kernels {
        /// Print a JSON list of {"type", "backend", "op", "gbps"}.
        #[arg(long)]
        json: bool,
        /// Bytes of f32 data per measurement: 1024 (one 256-value block) to 1 GiB.
        #[arg(long, default_value_t = 16 << 20, value_parser = bench_size)]
        size: usize,
        /// Measure only these block types (comma-separated ggml names, e.g. `IQ2_XS,Q3_K`) and
        /// no conversions.
        #[arg(long, value_name = "TYPES", value_delimiter = ',')]
        types: Vec<String>,
    },
    /// Single-thread throughput of the forward's matrix products (tiles of 60 weight rows
    /// against 256, 32 and 4 tokens) on every backend this CPU runs, in 10⁹ multiply-adds/s.
    Dot {
        /// Print a JSON list of {"backend", "rows", "width", "tokens", "gmacs"}.
        #[arg(long)]
        json: bool,
        /// Values per row, 1 to 65536 (gpt-oss-20b's hidden size by default).
        #[arg(long, default_value_t = 2880, value_parser = row_width)]
        width: usize,
    },
}

/// llama-quantize's options on `moeq convert` (GGUF output with a quantized `--type`), spelled
/// as llama-quantize spells them.
#[derive(Args, Debug, Default, Clone)]
pub struct QuantArgs {
    /// Importance matrix to quantize with (llama-imatrix's GGUF or legacy .dat).
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Use importance data only for entries whose name contains NAME (repeatable).
    #[arg(long, value_name = "NAME", conflicts_with = "exclude_weights")]
    pub include_weights: Vec<String>,
    /// Use no importance data for entries whose name contains NAME (repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude_weights: Vec<String>,
    /// The ggml type of output.weight (e.g. q8_0).
    #[arg(long, value_name = "TYPE")]
    pub output_tensor_type: Option<String>,
    /// The ggml type of token_embd.weight.
    #[arg(long, value_name = "TYPE")]
    pub token_embedding_type: Option<String>,
    /// Quantize tensors whose name matches the regular expression PATTERN (searched, as
    /// llama-quantize's std::regex) to TYPE, e.g. `attn_v=q8_0`; repeatable, first match
    /// wins. A rule that matches no tensor is an error.
    #[arg(long, value_name = "PATTERN=TYPE")]
    pub tensor_type: Vec<String>,
    /// --tensor-type rules from a file, separated by spaces or newlines.
    #[arg(long, value_name = "FILE")]
    pub tensor_type_file: Option<PathBuf>,
    /// No mix rules: every quantizable tensor gets the file type's default type.
    #[arg(long)]
    pub pure: bool,
    /// Keep output.weight as it is.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// A split GGUF input is written in the same shards.
    #[arg(long)]
    pub keep_split: bool,
    /// Set metadata KEY to int:N, float:X, bool:true|false or str:TEXT (repeatable).
    #[arg(long, value_name = "KEY=TYPE:VALUE")]
    pub override_kv: Vec<String>,
    /// Write nothing: print every tensor's type, why, size and bits per weight.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run (or after a conversion): print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Save the plan as JSON in FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// With --type T: choose every quantized tensor's type to make the least measured error
    /// within the size of T's llama-quantize mix (see --target-size). --format mlx with
    /// --type qN: each module's type, within the size of mlx-lm's uniform qN build.
    #[arg(long, conflicts_with_all = ["target_size", "target_bpw"])]
    pub optimize: bool,
    /// Choose every quantized tensor's type (k-, i- and legacy quants, Q8_0, F16, BF16) to make
    /// the least measured error (importance-weighted with --imatrix) in a file of at most SIZE
    /// bytes (e.g. 90M, 1.5G, 12G: powers of 1000; 800MiB, 11GiB: powers of 1024). --format mlx:
    /// each module mlx-lm quantizes gets affine 2, 3, 4, 5, 6 or 8 bits (at --group-size), mxfp4
    /// or the model's float type, within SIZE bytes of model*.safetensors files.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "target_bpw")]
    pub target_size: Option<u64>,
    /// As --target-size, for a size of B bits per weight over all tensors' data. --format mlx:
    /// bits per weight as mlx-lm reports them after convert (tensor data bytes · 8 / the
    /// parameters, a quantized module counting its unquantized size).
    #[arg(long, value_name = "B")]
    pub target_bpw: Option<f64>,
    /// With --optimize / --target-*: choose only among these types (comma-separated, e.g.
    /// q4_k,q5_k,q6_k,q8_0,iq4_nl); default every k-, i- and legacy quant, Q8_0, F16 and BF16.
    #[arg(long, value_name = "T1,T2,...", value_delimiter = ',')]
    pub candidate_types: Vec<String>,
    /// How quantized values are rounded: ggml (the default: byte-identical to llama-quantize)
    /// or gptq (GPTQ, Frantar et al. 2022: codes chosen, inside the same ggml block types, to
    /// minimize each layer's output error on calibration tokens; needs --calibration or
    /// --calibration-tokens). Recorded as moeq.rounding in the GGUF.
    #[arg(long, value_name = "METHOD", value_parser = ["ggml", "gptq"])]
    pub rounding: Option<String>,
    /// Calibration text (UTF-8, as `moeq imatrix --text`), tokenized with the model's tokenizer
    /// and cut into chunks of --ctx tokens. With --optimize / --target-*: each tensor's error is
    /// scaled by the next-token KL divergence it causes in the source model's forward on these
    /// tokens, and the summed predicted KL is minimized. With --rounding gptq: the tokens whose
    /// activations give each layer's Hessian.
    #[arg(long, value_name = "FILE", conflicts_with = "calibration_tokens")]
    pub calibration: Option<PathBuf>,
    /// As --calibration, with chunks of token ids: one chunk per line, ids separated by commas
    /// or spaces (as `moeq imatrix --tokens-file`).
    #[arg(long, value_name = "FILE")]
    pub calibration_tokens: Option<PathBuf>,
    /// Tokens per calibration chunk (--calibration text; default 512; --calibration-tokens
    /// chunks are used as given).
    #[arg(long, value_name = "N", conflicts_with = "calibration_tokens")]
    pub ctx: Option<usize>,
    /// At most this many calibration chunks (default: 4 for the KL calibration of --optimize /
    /// --target-*, whose forward runs once per tensor; all the input holds for --rounding gptq).
    #[arg(long, value_name = "N")]
    pub chunks: Option<usize>,
    /// The tokenizer.json, or its folder, for --calibration text (default: the checkpoint's
    /// folder; a GGUF needs it).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// How the KL calibration of --optimize / --target-* probes tensors: layer (the default:
    /// each tensor's change of its own layer's output, turned into KL by one run of the rest of
    /// the model per layer and group: writers, inner tensors), halves (the same with each
    /// layer half's groups apart: closer to tensor, up to twice layer's time) or tensor (one
    /// run to the logits per tensor: its KL itself, slowest).
    #[arg(long, value_name = "HOW", value_parser = ["layer", "halves", "tensor"])]
    pub kl_probes: Option<String>,
}
