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

/// The chunks llama-imatrix computes on: `tokens` (the whole text, with its leading BOS if the
/// vocabulary adds one) cut into `min(chunks, tokens / ctx)` chunks of `ctx` tokens from the
/// start, the first token of each replaced with `bos` when there is one. Fewer tokens than one
/// chunk is an error (`what` names the input).
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
    }
}
