use std::process::ExitCode;

use clap::Parser;
use moeq::bench::bench_kernels;
use moeq::cli::{BenchTarget, Cli, Command};
use moeq::convert::{ConvertOptions, convert};
use moeq::inspect::{Report, human_bytes};
use moeq::source::Source;

/// Exit status for errors (bad input, I/O); 1 is kept for "ran, but a check failed".
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect { path, json } => {
            let report = Report::new(&path, &Source::open(&path)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Eval { model, tokens, dump, top } => {
            let trace = moeq::eval::eval(&model, &tokens)?;
            let vocab = trace.logits.len() / tokens.len().max(1);
            for (pos, (tok, cands)) in tokens.iter().zip(moeq::eval::top_tokens(&trace.logits, vocab, top)).enumerate() {
                let list: Vec<String> = cands.iter().map(|(t, p)| format!("{t} ({p:.3})")).collect();
                println!("{pos:>4}  {tok:>7} → {}", list.join("  "));
            }
            if let Some(out) = dump {
                let hidden = trace.hidden.first().map_or(0, |h| h.len() / tokens.len().max(1));
                moeq::eval::dump(&trace, &tokens, hidden, &out)?;
                eprintln!("wrote {}", out.display());
            }
        }
        Command::Bench { what: BenchTarget::Kernels { json, size } } => {
            let rows = bench_kernels(size, std::time::Duration::from_millis(300));
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| serde_json::json!({"type": r.ty, "backend": r.backend, "op": r.op, "gbps": r.gbps}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<8} {:<8} {:<11} {:>8}", "type", "backend", "op", "GB/s");
                for r in &rows {
                    println!("{:<8} {:<8} {:<11} {:>8.2}", r.ty, r.backend, r.op, r.gbps);
                }
            }
        }
        Command::Convert { input, output, ftype, split_max_size, quiet, no_vocab, tokenizer_pre } => {
            let opts = ConvertOptions {
                input,
                output,
                ftype,
                split_max_bytes: split_max_size,
                quiet,
                no_vocab,
                tokenizer_pre,
            };
            let summary = convert(&opts)?;
            for file in &summary.files {
                eprintln!("wrote {}", file.display());
            }
            eprintln!("{} tensors, {}", summary.tensors, human_bytes(summary.bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}
