#[macro_use]
#[allow(unused_macros)]
#[path = "print.rs"]
mod print;

use std::process::ExitCode;

use clap::Parser;
use moeq::bench::{bench_dot, bench_kernels};
use moeq::cli::{BenchTarget, Cli, Command};
use moeq::inspect::{Report, human_bytes};
use moeq::plan::convert::{ConvertOptions, Format, convert};
use moeq::plan::mlx::{MlxOptions, MlxType, parse_override};
use moeq::plan::optimize::Target;
use moeq::plan::quant_plan::Ftype;
use moeq::source::Source;
use moeq_kernels::QuantType;

/// Exit status for errors (bad input, I/O); 1 is kept for "ran, but a check failed".
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // First, before any thread starts: interrupts remove temporaries, a truncated input is an
    // error (see moeq_formats::interrupt and moeq_formats::inputs).
    if let Err(e) = moeq_formats::interrupt::install() {
        eprintln!("warning: cannot install the interrupt cleanup: {e}");
    }
    let result = run(Cli::parse());
    // An input that changed while being read voids whatever the run did with it.
    // A failed run checks every input it read: an error caused by an input rewritten under it
    // is reported as that.
    let result = match moeq_formats::inputs::changed() {
        Some(path) => Err(moeq_formats::Error::InputChanged { path }.into()),
        None => match (&result, moeq_formats::inputs::check_unchanged_since_mapped()) {
            (Err(_), Err(changed)) => Err(changed.into()),
            _ => result,
        },
    };
    // What is still buffered goes out now, so that its failure is seen too.
    print::stdout_result(std::io::Write::flush(&mut std::io::stdout()));
    match result {
        Ok(code) => match print::stdout_error().or(moeq::stdout_error()) {
            Some(e) => {
                eprintln!("error: writing to standard output failed ({e}): what this command printed is incomplete");
                ExitCode::from(EXIT_ERROR)
            }
            None => code,
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What `moeq verify` runs and prints beyond the default checks.
#[derive(Default)]
struct VerifyOptions {
    /// The report as JSON.
    json: bool,
    /// Limits given (each enforced; the others stay as the defaults have them): max KL, min
    /// top-1 agreement, max MoE block relative error.
    limits: (Option<f64>, Option<f64>, Option<f64>),
    /// Run every layer of the output (not taking bit-identical layers from the source run).
    full_forward: bool,
    /// The report only when a check fails.
    quiet: bool,
    /// Every expert on every token (`--every-expert`).
    every_expert: bool,
    /// Where the given sequences come from (`--tokens`, the `--tokens-file` path), for errors.
    origin: String,
}

/// Runs `moeq verify`: exit status 1 when a check fails.
fn run_verify(
    source: &std::path::Path,
    output: &std::path::Path,
    sequences: &[Vec<u32>],
    o: VerifyOptions,
) -> anyhow::Result<ExitCode> {
    let VerifyOptions { json, limits, full_forward, quiet, every_expert, origin } = o;
    use moeq::model::weights::Weights;
    use moeq::verify::{Limits, experts::expert_errors, reference_tokens, verify};
    let (src, out) = (Source::open(source)?, Source::open(output)?);
    let (src_w, out_w) = (Weights::new(&src, source)?, Weights::new(&out, output)?);
    let vocab = *src_w.ne("token_embd.weight")?.get(1).unwrap_or(&1) as usize;
    let sequences = if sequences.is_empty() { reference_tokens(vocab) } else { sequences.to_vec() };
    // Checked before any work (the forward would find them only after the tensor checks).
    for (i, seq) in sequences.iter().enumerate() {
        if let Some(tok) = seq.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!(
                "{origin}: sequence {} holds token {tok}, outside the vocabulary of {} ({vocab} tokens)",
                i + 1,
                source.display()
            );
        }
    }
    let mut report = verify(&src_w, &out_w, &sequences, None, full_forward)?;
    moeq_formats::inputs::check_unchanged()?;
    // The limits given fail the check; the others stay as the defaults have them.
    let (kl, top1, moe) = limits;
    let d = report.limits;
    report.limits = Limits {
        max_kl: kl.unwrap_or(d.max_kl),
        min_top1: top1.unwrap_or(d.min_top1),
        max_moe_rel_err: moe.unwrap_or(d.max_moe_rel_err),
    };
    let e = &mut report.enforced;
    e.kl |= kl.is_some();
    e.top1 |= top1.is_some();
    e.blocks |= moe.is_some();
    let passed = report.failures().is_empty();
    let experts = if every_expert { Some(expert_errors(&src_w, &out_w, &sequences)?) } else { None };
    if quiet && passed && !json {
        // Quiet: the text report only when a check fails (JSON asked for is printed).
    } else if json {
        let mut value = report.to_json();
        if let (Some(checks), Some(obj)) = (&experts, value.as_object_mut()) {
            let list: Vec<_> = checks
                .iter()
                .map(|c| serde_json::json!({"layer": c.layer, "expert": c.expert, "routed": c.routed, "rel_err": c.rel_err}))
                .collect();
            obj.insert("experts".into(), serde_json::Value::Array(list));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", report.to_text());
        if let Some(checks) = &experts {
            println!("\nevery expert on every token (layer/expert: relative error, tokens routed)");
            for c in checks {
                println!("  {:>3}/{:<3} {:.3e}  {}", c.layer, c.expert, c.rel_err, c.routed);
            }
        }
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Writes the plan JSON to `path` (checked before the conversion, see
/// `ConvertOptions::report`) as any moeq output: a temporary beside it, moved into place
/// when complete.
fn write_report(path: &std::path::Path, json: &serde_json::Value) -> anyhow::Result<()> {
    moeq::plan::convert::stage_report(path, json)?.commit()?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Inspect { path, json } => {
            let report = Report::new(&path, &Source::open_headers(&path)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Eval { model, tokens, text, tokenizer, dump, top } => {
            tokenizer_needs_text(tokenizer.is_some(), text.is_some())?;
            let kind = moeq_formats::target::OutputKind::File;
            if let Some(out) = &dump {
                moeq_formats::target::check_path(out, kind)?;
            }
            let tokens = match text {
                Some(text) => moeq::verify::eval::text_tokens(&model, &text, tokenizer.as_deref())?,
                None => tokens,
            };
            let source = Source::open(&model)?;
            if let Some(out) = &dump {
                let mut inputs = source.files();
                inputs.extend(tokenizer.iter().flat_map(|t| Source::tokenizer_files(t)));
                moeq::plan::convert::prepare_output(out, kind, &inputs, false)?;
            }
            let trace = moeq::verify::eval::run(&source, &model, &tokens)?;
            moeq_formats::inputs::check_unchanged()?;
            let vocab = trace.logits.len() / tokens.len().max(1);
            for (pos, (tok, cands)) in
                tokens.iter().zip(moeq::verify::eval::top_tokens(&trace.logits, vocab, top)).enumerate()
            {
                let list: Vec<String> = cands.iter().map(|(t, p)| format!("{t} ({p:.3})")).collect();
                println!("{pos:>4}  {tok:>7} → {}", list.join("  "));
            }
            if let Some(out) = dump {
                let hidden = trace.hidden.first().map_or(0, |h| h.len() / tokens.len().max(1));
                moeq::verify::eval::dump(&trace, &tokens, hidden, &out)?;
                if !quiet {
                    eprintln!("wrote {}", out.display());
                }
            }
        }
        Command::Imatrix {
            model,
            text,
            tokens_file,
            output,
            ctx,
            chunks,
            tokenizer,
            output_format,
            all_experts,
            process_output,
            min_expert_tokens,
            save_chunks,
            json,
        } => {
            use moeq::imatrix::{Calibration, ImatrixOptions, Request, compute_request, file};
            tokenizer_needs_text(tokenizer.is_some(), text.is_some())?;
            let calibration = match (text, tokens_file) {
                (Some(t), _) => Calibration::Text(t),
                (None, Some(f)) => Calibration::Tokens(f),
                (None, None) => anyhow::bail!("give --text FILE or --tokens-file FILE"),
            };
            // The outputs are checked before any work, as convert's: never an input (model
            // files, the calibration file), never a folder or device; written through a
            // temporary moved into place.
            let kind = moeq_formats::target::OutputKind::File;
            moeq_formats::target::check_path(&output, kind)?;
            if let Some(path) = &save_chunks {
                moeq_formats::target::check_path(path, kind)?;
                moeq::plan::convert::refuse_at_output("--save-chunks", "the chunks", path, &output, kind)?;
            }
            let mut inputs = Source::open_headers(&model)?.files();
            inputs.push(match &calibration {
                Calibration::Text(p) | Calibration::Tokens(p) => p.clone(),
            });
            inputs.extend(tokenizer.iter().flat_map(|t| Source::tokenizer_files(t)));
            moeq::plan::convert::prepare_output(&output, kind, &inputs, quiet)?;
            if let Some(path) = &save_chunks {
                moeq::plan::convert::prepare_output(path, kind, &inputs, quiet)?;
            }
            let options =
                ImatrixOptions { all_experts, process_output, min_expert_tokens, datasets: Vec::new(), quiet };
            let req = Request { model, calibration, ctx, chunks, tokenizer, options, save_chunks };
            let started = std::time::Instant::now();
            let (imatrix, coverage, saved_chunks) = compute_request(&req)?;
            let seconds = started.elapsed().as_secs_f64();
            if json {
                println!("{}", serde_json::to_string_pretty(&coverage.to_json())?);
            } else if !quiet {
                print!("{}", coverage.to_text());
            } else if let starved = coverage.starved()
                && !starved.is_empty()
            {
                // Quiet: the table goes, the experts under the threshold stay (a warning).
                let list: Vec<String> = starved.iter().map(|(l, e, n)| format!("{l}/{e} ({n})")).collect();
                eprintln!(
                    "warning: {} experts got fewer than {} calibration tokens (layer/expert (tokens)): {}",
                    starved.len(),
                    coverage.threshold,
                    list.join(" ")
                );
            }
            if all_experts && !imatrix.all_experts {
                eprintln!("note: --all-experts has no effect: the model has no experts");
            }
            match output_format.as_str() {
                "dat" => file::write_dat(&imatrix, &output)?,
                _ => file::write_gguf(&imatrix, &output)?,
            }
            // --save-chunks: written before, put in place only now that the matrix is.
            saved_chunks.map(|f| f.commit()).transpose()?;
            let tokens = coverage.tokens as f64;
            if !quiet {
                eprintln!(
                    "wrote {} ({} entries, {} chunk{}, {} tokens in {seconds:.1} s: {:.1} tokens/s)",
                    output.display(),
                    imatrix.entries.len(),
                    imatrix.chunk_count,
                    if imatrix.chunk_count == 1 { "" } else { "s" },
                    coverage.tokens,
                    tokens / seconds.max(1e-9)
                );
            }
        }
        Command::Bench { what: BenchTarget::Kernels { json, size, types } } => {
            let mut only = Vec::new();
            for name in &types {
                match QuantType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name)) {
                    Some(t) => only.push(t),
                    None => anyhow::bail!("moeq bench kernels: unknown block type {name:?} in --types"),
                }
            }
            let rows = bench_kernels(size, std::time::Duration::from_millis(300), &only);
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"type": r.ty, "backend": r.backend, "kernel": r.kernel, "op": r.op, "gbps": r.gbps}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<13} {:<17} {:<8} {:<8} {:>8}", "type", "op", "backend", "kernel", "GB/s");
                for r in &rows {
                    println!("{:<13} {:<17} {:<8} {:<8} {:>8.4}", r.ty, r.op, r.backend, r.kernel, r.gbps);
                }
            }
        }
        Command::Bench { what: BenchTarget::Dot { json, width } } => {
            let rows = bench_dot(width, std::time::Duration::from_millis(300));
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"backend": r.backend, "rows": r.rows, "width": r.width, "tokens": r.tokens, "gmacs": r.gmacs}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<8} {:>5} {:>6} {:>7} {:>8}", "backend", "rows", "width", "tokens", "GMAC/s");
                for r in &rows {
                    println!("{:<8} {:>5} {:>6} {:>7} {:>8.1}", r.backend, r.rows, r.width, r.tokens, r.gmacs);
                }
            }
        }
        Command::Convert {
            input,
            output,
            format,
            ty,
            group_size,
            quant_override,
            split_max_size,
            no_vocab,
            tokenizer_pre,
            verify,
            max_kl,
            min_top1,
            max_moe_rel_err,
            quant,
        } => {
            // --format mlx: --candidate-types names MLX types (q2 … q8, mxfp4, the float type).
            let mlx_candidates = match format {
                Format::Mlx if !quant.candidate_types.is_empty() => Some(quant.candidate_types.clone()),
                _ => None,
            };
            let mut quant = quant;
            if mlx_candidates.is_some() {
                quant.candidate_types.clear();
                if !(quant.optimize || quant.target_size.is_some() || quant.target_bpw.is_some()) {
                    anyhow::bail!("--candidate-types goes with --optimize, --target-size or --target-bpw");
                }
            }
            if format == Format::Mlx && quant.rounding.is_some() {
                // Said before the option checks, which would ask for calibration input first.
                anyhow::bail!(moeq::plan::convert::MLX_ROUNDING);
            }
            let (request, warnings) = quant.request()?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            if format == Format::Hf && request.target.is_some() {
                anyhow::bail!(
                    "--optimize, --target-size and --target-bpw choose GGUF tensor types or MLX module types; --format \
                     hf takes no size target"
                );
            }
            if format != Format::Gguf && request.target.is_none() && (quant.json || quant.report.is_some()) {
                anyhow::bail!(
                    "--json and --report give a GGUF plan's per-tensor decisions, or an MLX size budget's per-module \
                     ones (--target-size, --target-bpw, --type qN --optimize); this build has no such plan (what it \
                     writes is printed)"
                );
            }
            let output = output.unwrap_or_default();
            let (mut ftype, mut mlx) = (None, MlxOptions::default());
            match format {
                Format::Gguf => {
                    if group_size.is_some() || !quant_override.is_empty() {
                        anyhow::bail!("--group-size and --quant-override apply to --format mlx");
                    }
                    ftype = ty.as_deref().map(Ftype::parse).transpose().map_err(anyhow::Error::msg)?;
                }
                Format::Mlx => {
                    mlx.ty = ty.as_deref().map(|t| MlxType::parse(t, group_size)).transpose()?;
                    if group_size.is_some() && !matches!(mlx.ty, Some(MlxType::Affine { .. })) {
                        let sized = matches!(request.target, Some(Target::Size(_) | Target::Bpw(_)));
                        if mlx.ty.is_some() || !sized {
                            anyhow::bail!(
                                "--group-size goes with an affine --type (q2, q3, q4, q5, q6, q8) or a size budget \
                                 (--target-size, --target-bpw)"
                            );
                        }
                        // A size budget without --type: the affine candidates at this group size.
                        mlx.ty = Some(MlxType::parse("q4", group_size)?);
                    }
                    mlx.overrides = quant_override
                        .iter()
                        .map(|o| parse_override(o).map_err(|e| anyhow::anyhow!("--quant-override '{o}': {e:#}")))
                        .collect::<anyhow::Result<_>>()?;
                    if let Some(names) = &mlx_candidates {
                        // At the build's group size (--type qN's or --group-size's, else 64).
                        let group = mlx.ty.and_then(MlxType::group).filter(|_| mlx.ty != Some(MlxType::Mxfp4));
                        let types = names
                            .iter()
                            .map(|n| {
                                let n = n.trim();
                                let affine = n.to_ascii_lowercase().starts_with('q');
                                MlxType::parse(n, if affine { group.or(group_size) } else { None })
                            })
                            .collect::<anyhow::Result<Vec<_>>>()
                            .map_err(|e| anyhow::anyhow!("--candidate-types: {e}"))?;
                        mlx.candidates = Some(types);
                    }
                }
                Format::Hf => {
                    if ty.is_some() || group_size.is_some() || !quant_override.is_empty() {
                        anyhow::bail!(
                            "--format hf writes gpt-oss's own layout (MXFP4 experts, the rest as stored); it takes no --type, \
                             --group-size or --quant-override"
                        );
                    }
                }
            }
            let opts = ConvertOptions {
                input: input.clone(),
                output,
                ftype,
                split_max_bytes: split_max_size,
                quiet,
                no_vocab,
                tokenizer_pre,
                format,
                mlx,
                quant: request,
                report: quant.report.clone(),
            };
            let summary = convert(&opts)?;
            let opts = &opts;
            if let Some(plan) = &summary.plan {
                if quant.dry_run && !quant.json {
                    print!("{}", plan.to_text());
                } else if !quant.dry_run {
                    for w in plan.warnings.iter().map(String::clone).chain(plan.imatrix_notes(10)) {
                        eprintln!("warning: {w}");
                    }
                }
                if quant.json {
                    println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
                }
                if let Some(path) = &quant.report {
                    // A real run wrote it with the model (before committing it).
                    if quant.dry_run {
                        write_report(path, &plan.to_json())?;
                    }
                    if !quiet {
                        eprintln!("wrote {}", path.display());
                    }
                }
            }
            if let Some((text, json)) = &summary.mlx_budget {
                if quant.dry_run && !quant.json {
                    print!("{text}");
                }
                if quant.json {
                    println!("{}", serde_json::to_string_pretty(json)?);
                }
                if let Some(path) = &quant.report {
                    if quant.dry_run {
                        write_report(path, json)?;
                    }
                    if !quiet {
                        eprintln!("wrote {}", path.display());
                    }
                }
            }
            if quant.dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            if !quiet {
                for file in &summary.files {
                    eprintln!("wrote {}", file.display());
                }
                eprintln!("{} tensors, {} of tensor data read", summary.tensors, human_bytes(summary.bytes));
            }
            if verify {
                let first = match format {
                    Format::Gguf => summary.files.first().cloned().unwrap_or_default(),
                    _ => opts.output.clone(),
                };
                let limits = (max_kl, min_top1, max_moe_rel_err);
                return run_verify(&input, &first, &[], VerifyOptions { quiet, limits, ..Default::default() });
            }
        }
        Command::Verify {
            source,
            output,
            tokens,
            tokens_file,
            text,
            tokenizer,
            json,
            max_kl,
            min_top1,
            max_moe_rel_err,
            full_forward,
            every_expert,
        } => {
            tokenizer_needs_text(tokenizer.is_some(), text.is_some())?;
            let limits = (max_kl, min_top1, max_moe_rel_err);
            let origin = tokens_file.as_ref().map_or("--tokens".to_string(), |p| p.display().to_string());
            let sequences = match (tokens_file, text) {
                (Some(path), _) => moeq::verify::read_token_file(&path)?,
                (None, Some(text)) => moeq::verify::text_sequences(&source, &text, tokenizer.as_deref())?,
                (None, None) if tokens.is_empty() => Vec::new(),
                (None, None) => vec![tokens],
            };
            return run_verify(
                &source,
                &output,
                &sequences,
                VerifyOptions { json, limits, full_forward, quiet, every_expert, origin },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--tokenizer` reads `--text`; with token ids it was ignored without a word (`convert`'s
/// calibration options refuse it likewise).
fn tokenizer_needs_text(tokenizer: bool, text: bool) -> anyhow::Result<()> {
    if tokenizer && !text {
        anyhow::bail!("--tokenizer goes with --text (token ids need no tokenizer)");
    }
    Ok(())
}
