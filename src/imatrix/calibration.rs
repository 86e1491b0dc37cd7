//! Calibration input: text tokenized with the model's own tokenizer and cut into chunks as
//! llama-imatrix cuts them, or pre-tokenized chunks.
//!
//! llama-imatrix (tools/imatrix/imatrix.cpp, `compute_imatrix`) tokenizes the whole text with
//! `add_special` (a BOS first when the vocabulary asks for one, `tokenizer.ggml.add_bos_token`
//! or its tokenizer type's default), takes `min(--chunks, tokens / ctx)` chunks of `ctx`
//! consecutive tokens from the start, and replaces the first token of each chunk with BOS when
//! the vocabulary adds one. moeq tokenizes with the `tokenizers` crate on the model's
//! `tokenizer.json` (special-token text in the input is matched as special tokens there, where
//! llama-imatrix without `--parse-special` reads it as text) and applies the same BOS rule from
//! the model's metadata. llama-imatrix refuses text shorter than two chunks (it also computes
//! perplexity on chunk halves); moeq needs one.

use std::path::Path;

use anyhow::{Result, bail};

use crate::vocab::tokenize::ModelText;

/// Calibration inputs with fewer tokens than this (not counting the BOS put first in each chunk
/// of text) get a warning: statistics from a few dozen tokens (an importance matrix, GPTQ's
/// Hessians, the KL of `--optimize`) describe those tokens, not the model's use. 64 is one short
/// sentence per chunk at the smallest useful `--ctx`; the defaults (`--ctx 512`) give hundreds.
pub const MIN_TOKENS: usize = 64;

/// The chunks llama-imatrix computes on: `tokens` (the whole text, with its leading BOS if the
/// vocabulary adds one) cut into `min(chunks, tokens / ctx)` chunks of `ctx` tokens from the
/// start, the first token of each replaced with `bos` when there is one. Fewer tokens than one
/// chunk is an error (`what` names the input), and so is `ctx` 1 with a BOS: every chunk would
/// be the BOS alone.
pub fn cut_chunks(
    tokens: &[u32],
    ctx: usize,
    chunks: Option<usize>,
    bos: Option<u32>,
    what: &str,
) -> Result<Vec<Vec<u32>>> {
    if ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    if ctx == 1 && bos.is_some() {
        bail!(
            "{what}: --ctx 1 leaves no calibration text: the first token of every chunk is replaced by the model's \
             BOS (as llama-imatrix does), so each chunk would hold the BOS alone; use --ctx 2 or more (default 512)"
        );
    }
    let available = tokens.len() / ctx;
    if available == 0 {
        bail!("{what}: {} tokens, fewer than one chunk of {ctx} (--ctx)", tokens.len());
    }
    let n = chunks.map_or(available, |c| c.min(available));
    if n == 0 {
        bail!("--chunks must be at least 1");
    }
    Ok(tokens
        .chunks_exact(ctx)
        .take(n)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect())
}

/// The calibration tokens of `chunks` beyond the BOS each chunk starts with (`bos`: text cut by
/// [`cut_chunks`] for a vocabulary that adds one; `None` for chunks of ids, used as given).
pub fn real_tokens(chunks: &[Vec<u32>], bos: Option<u32>) -> usize {
    chunks.iter().map(|c| c.len() - usize::from(bos.is_some() && c.first() == bos.as_ref())).sum()
}

/// The warning for calibration input with fewer than [`MIN_TOKENS`] tokens beyond BOS
/// ([`real_tokens`]), or `None`. `what` names the file, `purpose` what the tokens are for,
/// `text` whether it was text (cut by --ctx) rather than chunks of ids.
pub fn too_few_tokens(chunks: &[Vec<u32>], bos: Option<u32>, what: &str, purpose: &str, text: bool) -> Option<String> {
    let n = real_tokens(chunks, bos);
    (n < MIN_TOKENS).then(|| {
        let beyond = if bos.is_some() { " beyond each chunk's BOS" } else { "" };
        let more = if text { "give more text, or a larger --ctx or --chunks" } else { "give more or longer chunks" };
        format!(
            "{what}: only {n} calibration token{}{beyond} ({}) for {purpose}; fewer than {MIN_TOKENS} give \
             statistics of those few tokens, not of the model's use: {more}",
            if n == 1 { "" } else { "s" },
            crate::inspect::count(chunks.len() as u64, "chunk")
        )
    })
}

/// Text → chunks: `text` tokenized as llama.cpp does ([`ModelText::encode`]), then
/// [`cut_chunks`] (`what` names the input in errors).
pub fn text_chunks(
    text: &ModelText,
    input: &str,
    ctx: usize,
    chunks: Option<usize>,
    what: &str,
) -> Result<Vec<Vec<u32>>> {
    cut_chunks(&text.encode(input)?, ctx, chunks, text.bos, what)
}

/// Pre-tokenized chunks (one per line, as `verify --tokens-file` reads them), used as given;
/// the first `chunks` when set. Ids outside the vocabulary are errors naming the line.
pub fn file_chunks(path: &Path, chunks: Option<usize>, n_vocab: usize) -> Result<Vec<Vec<u32>>> {
    let mut all = crate::verify::read_token_file(path)?;
    if let Some(n) = chunks {
        if n == 0 {
            bail!("--chunks must be at least 1");
        }
        all.truncate(n);
    }
    for (i, chunk) in all.iter().enumerate() {
        if let Some(&bad) = chunk.iter().find(|&&t| t as usize >= n_vocab) {
            bail!("{}: chunk {} holds token {bad}, outside the model's {n_vocab} tokens", path.display(), i + 1);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn chunks_are_cut_as_llama_imatrix_cuts_them() {
        let tokens: Vec<u32> = (100..110).collect();
        let c = cut_chunks(&tokens, 4, None, Some(1), "t").unwrap();
        assert_eq!(c, vec![vec![1, 101, 102, 103], vec![1, 105, 106, 107]]);
        let c = cut_chunks(&tokens, 4, Some(1), None, "t").unwrap();
        assert_eq!(c, vec![vec![100, 101, 102, 103]]);
        assert!(cut_chunks(&tokens, 11, None, None, "t").unwrap_err().to_string().contains("fewer than one chunk"));
        // --ctx 1 with a BOS: every chunk would be the BOS alone.
        assert!(cut_chunks(&tokens, 1, None, Some(1), "t").unwrap_err().to_string().contains("--ctx 1 leaves no"));
        assert_eq!(cut_chunks(&tokens, 1, Some(2), None, "t").unwrap(), vec![vec![100], vec![101]]);
    }

    #[test]
    fn too_few_tokens_counts_beyond_bos() {
        let chunks = vec![vec![1; 33], vec![1; 33]];
        assert_eq!(real_tokens(&chunks, Some(1)), 64);
        assert_eq!(real_tokens(&chunks, None), 66);
        assert!(too_few_tokens(&chunks, Some(1), "t", "x", true).is_none());
        let short = vec![vec![1; 32], vec![1; 33]];
        let w = too_few_tokens(&short, Some(1), "t.txt", "GPTQ's Hessians", true).unwrap();
        assert!(w.starts_with("t.txt: only 63 calibration tokens beyond each chunk's BOS (2 chunks) for GPTQ"), "{w}");
    }
}
