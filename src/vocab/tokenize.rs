//! Text → token ids with a model's own tokenizer: the Hugging Face `tokenizers` crate on the
//! model's `tokenizer.json` (moeq never implements a tokenizer itself). Used wherever moeq
//! takes text: `--text`/`--calibration` inputs and llama.cpp's pre-tokenizer check.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

/// A model's tokenizer, loaded from its `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir` or, for OpenAI's `original/` layout, its parent.
    ///
    /// Errors: no `tokenizer.json` there (a folder with only a SentencePiece `tokenizer.model`
    /// is named as such: moeq tokenizes text only through `tokenizer.json`), or a file the
    /// `tokenizers` crate cannot load.
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        match std::iter::once(dir).chain(dir.parent()).map(|d| d.join("tokenizer.json")).find(|p| p.is_file()) {
            Some(path) => Self::from_file(&path),
            None if dir.join("tokenizer.model").is_file() => bail!(
                "{}: only a SentencePiece tokenizer.model; moeq tokenizes text with a tokenizer.json \
                 (save one with transformers' AutoTokenizer, or pass token ids instead of text)",
                dir.display()
            ),
            None => bail!("{}: no tokenizer.json here or in the parent folder", dir.display()),
        }
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a tokenizer the tokenizers library can load: {e}", path.display()))?;
        Ok(TextTokenizer { inner, path: path.to_path_buf() })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`, as `AutoTokenizer.encode(text, add_special_tokens=...)` gives them:
    /// with `add_special_tokens` the tokenizer's post-processor adds what it adds (a BOS for
    /// Llama-style tokenizers).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| anyhow!("{}: cannot tokenize the text: {e}", self.path.display()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The number of ids the tokenizer can produce (its vocabulary with added tokens): the
    /// largest id + 1.
    pub fn id_count(&self) -> usize {
        self.inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn encodes_with_each_fixture_tokenizer() {
        for dir in ["llama/hf", "mixtral/hf", "gpt-oss/hf-mxfp4", "gpt-oss/original"] {
            let t = TextTokenizer::from_dir(&fixture(dir)).unwrap();
            let ids = t.encode("Hello world\n\n  ok 3333", false).unwrap();
            assert!(!ids.is_empty(), "{dir}");
            assert!(ids.iter().all(|&i| (i as usize) < t.id_count()), "{dir}");
        }
    }

    #[test]
    fn missing_and_broken_tokenizers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = TextTokenizer::from_dir(&dir.path().join("sub")).err().unwrap();
        assert!(e.to_string().contains("no tokenizer.json"), "{e}");
        std::fs::write(dir.path().join("tokenizer.json"), b"{not json").unwrap();
        let e = TextTokenizer::from_dir(dir.path()).err().unwrap();
        assert!(e.to_string().contains("tokenizer.json: not a tokenizer"), "{e}");
        let sp = tempfile::tempdir().unwrap();
        std::fs::write(sp.path().join("tokenizer.model"), b"x").unwrap();
        let e = TextTokenizer::from_dir(sp.path()).err().unwrap();
        assert!(e.to_string().contains("only a SentencePiece tokenizer.model"), "{e}");
    }
}
