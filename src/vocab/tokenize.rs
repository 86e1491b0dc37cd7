//! Text → token ids with a model's own tokenizer: the Hugging Face `tokenizers` crate on the
//! model's `tokenizer.json` (moeq never implements a tokenizer itself). Used wherever moeq
//! takes text: `--text`/`--calibration` inputs and llama.cpp's pre-tokenizer check.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use moeq_formats::gguf::{Array, Value};

use crate::model::weights::Weights;
use crate::source::Source;

/// A model's tokenizer, loaded from its `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir` or, for OpenAI's `original/` layout, its parent; `dir`
    /// may also name the file itself (`--tokenizer path/to/tokenizer.json`).
    ///
    /// Errors: no `tokenizer.json` there (a folder with only a SentencePiece `tokenizer.model`
    /// is named as such: moeq tokenizes text only through `tokenizer.json`), or a file the
    /// `tokenizers` crate cannot load.
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        if dir.is_file() {
            return Self::from_file(dir);
        }
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

    /// The text of token `id`, if the tokenizer has it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Every token's text and id, added (special) tokens included.
    pub fn vocab(&self) -> std::collections::HashMap<String, u32> {
        self.inner.get_vocab(true)
    }

    /// The number of ids the tokenizer can produce (its vocabulary with added tokens): the
    /// largest id + 1.
    pub fn id_count(&self) -> usize {
        self.inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }
}

/// Whether llama.cpp adds a BOS token to this vocabulary, and which: `tokenizer.ggml.add_bos_token`
/// when present, else the default of its tokenizer type (llama-vocab.cpp, `llama_vocab::impl::load`:
/// SentencePiece `llama` and WordPiece `bert` add one; byte-level BPE `gpt2` only with the
/// pre-tokenizers listed there). The id is `tokenizer.ggml.bos_token_id`, else the type's
/// default (1 for `llama`, 11 for `gpt2`, 101 for `bert`). `None`: no BOS is added.
pub fn bos_token(metadata: &[(String, Value)]) -> Option<u32> {
    let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let model = get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
    let pre = get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    const BPE_WITH_BOS: [&str; 11] = [
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        "tekken",
        "chameleon",
    ];
    let (default_add, default_id) = match model {
        "llama" => (true, 1),
        "bert" => (true, 101),
        "gpt2" => (BPE_WITH_BOS.contains(&pre), 11),
        _ => (false, 1),
    };
    let add = match get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => default_add,
    };
    let id = get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map_or(default_id, |v| v as u32);
    add.then_some(id)
}

/// Checks that `tokenizer` is the model's: every id it produces is inside the model's
/// vocabulary (`n_vocab` embedding rows), and, when the model's metadata lists its tokens
/// (`tokenizer.ggml.tokens`), each of the tokenizer's tokens has the same text at its id.
pub fn check_tokenizer(tokenizer: &TextTokenizer, n_vocab: usize, metadata: &[(String, Value)]) -> Result<()> {
    let ids = tokenizer.id_count();
    if ids > n_vocab {
        bail!(
            "{}: the tokenizer has {ids} token ids but the model's vocabulary has {n_vocab}: not this model's tokenizer",
            tokenizer.path().display()
        );
    }
    let tokens = metadata.iter().find(|(k, _)| k == "tokenizer.ggml.tokens").map(|(_, v)| v);
    if let Some(Value::Array(Array::String(tokens))) = tokens {
        if tokens.len() < ids {
            bail!(
                "{}: the tokenizer has {ids} token ids but the model lists {} tokens: not this model's tokenizer",
                tokenizer.path().display(),
                tokens.len()
            );
        }
        let vocab = tokenizer.vocab();
        let mut wrong: Vec<(u32, &str, &str)> = vocab
            .iter()
            .filter(|&(text, &id)| tokens[id as usize] != *text)
            .map(|(text, &id)| (id, text.as_str(), tokens[id as usize].as_str()))
            .collect();
        if !wrong.is_empty() {
            wrong.sort_unstable();
            let (id, text, model) = wrong[0];
            bail!(
                "{}: {} of its {} tokens differ from the model's (token {id} is {text:?} there, {model:?} in the model): \
                 not this model's tokenizer",
                tokenizer.path().display(),
                wrong.len(),
                vocab.len()
            );
        }
    }
    Ok(())
}

/// Reads a calibration text: UTF-8, not empty. Errors name the file (and the byte offset of
/// invalid UTF-8).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })?;
    if text.trim().is_empty() {
        bail!("{}: the text is empty", path.display());
    }
    Ok(text)
}

/// A model's tokenizer for text inputs, checked against the model, and the BOS llama.cpp adds.
pub struct ModelText {
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// The BOS token llama.cpp puts first ([`bos_token`]).
    pub bos: Option<u32>,
    /// A space goes before the text: llama.cpp's SentencePiece tokenizer adds one
    /// (`tokenizer.ggml.add_space_prefix`, default true) and this tokenizer.json does not.
    pub space_prefix: bool,
}

impl ModelText {
    /// The tokenizer of the model at `path` (opened as `source`, read as `w`): `tokenizer_dir`
    /// when given, else the checkpoint's folder (a GGUF needs `tokenizer_dir`); checked with
    /// [`check_tokenizer`] against the model's vocabulary (a GGUF's own tokens, or the ones the
    /// converter would write for a checkpoint). `ids_option` names the command's option that
    /// takes token ids instead of text (e.g. `--tokens ID,ID,…`), for the error when a GGUF comes
    /// without `tokenizer_dir`.
    pub fn open(
        path: &Path,
        source: &Source,
        w: &Weights,
        tokenizer_dir: Option<&Path>,
        ids_option: &str,
    ) -> Result<ModelText> {
        let metadata = match source {
            Source::Gguf(_) => w.metadata.clone(),
            Source::Safetensors { config: Some(config), .. } => match crate::vocab::checkpoint_vocab(config, None) {
                Ok((vocab, _)) => vocab,
                Err(_) if tokenizer_dir.is_some() => Vec::new(),
                Err(e) => return Err(e),
            },
            Source::Safetensors { config: None, .. } => Vec::new(),
        };
        let tokenizer = match (tokenizer_dir, source) {
            (Some(dir), _) => TextTokenizer::from_dir(dir)?,
            (None, Source::Gguf(_)) => bail!(
                "{}: moeq reads text through the model's Hugging Face tokenizer.json, which a GGUF file does not \
                 include: pass --tokenizer PATH (the model's tokenizer.json or its folder, e.g. the checkpoint the \
                 GGUF was converted from), or give token ids with {ids_option}",
                path.display()
            ),
            (None, Source::Safetensors { .. }) => TextTokenizer::from_dir(path)?,
        };
        let n_vocab = w.ne("token_embd.weight")?.get(1).copied().unwrap_or(0) as usize;
        check_tokenizer(&tokenizer, n_vocab, &metadata)?;
        let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let spm = get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
        let wants_prefix = !matches!(get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(false)));
        // Whether the tokenizer.json adds the prefix itself (a Prepend normalizer or a Metaspace
        // pre-tokenizer that prepends): then a word's first token starts with '▁'.
        let adds_prefix = || -> Result<bool> {
            let ids = tokenizer.encode("a", false)?;
            Ok(ids.first().and_then(|&id| tokenizer.token_text(id)).is_some_and(|t| t.starts_with('\u{2581}')))
        };
        let space_prefix = spm && wants_prefix && !adds_prefix()?;
        // The BOS llama.cpp adds must be a token of the model (it was found only by the
        // forward, as 'token N is outside the vocabulary', or read as absent when not an
        // integer).
        let bos = bos_token(&metadata);
        if let Some(id) = bos {
            let key = "tokenizer.ggml.bos_token_id";
            match get(key) {
                Some(v) if v.as_u64().is_none_or(|n| n >= n_vocab as u64) => bail!(
                    "{}: metadata '{key}' is {v}, not one of the model's {n_vocab} token ids (llama.cpp adds that BOS \
                     before the text)",
                    path.display()
                ),
                None if id as usize >= n_vocab => bail!(
                    "{}: no '{key}', and the default BOS id of this vocabulary, {id}, is outside the model's {n_vocab} \
                     tokens",
                    path.display()
                ),
                _ => {}
            }
        }
        Ok(ModelText { tokenizer, bos, space_prefix })
    }

    /// The ids of `text` as llama.cpp's `common_tokenize(text, add_special = true)` gives them:
    /// the BOS first when the vocabulary adds one, then the text's tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        if text.is_empty() {
            // llama.cpp tokenizes no fragment of an empty text (no leading space either).
            return Ok(ids);
        }
        if self.space_prefix {
            ids.extend(self.tokenizer.encode(&format!(" {text}"), false)?);
        } else {
            ids.extend(self.tokenizer.encode(text, false)?);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn meta(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn bos_follows_llama_cpp() {
        let s = |v: &str| Value::String(v.into());
        assert_eq!(bos_token(&meta(&[("tokenizer.ggml.model", s("llama"))])), Some(1));
        assert_eq!(bos_token(&meta(&[("tokenizer.ggml.model", s("gpt2")), ("tokenizer.ggml.pre", s("gpt-4o"))])), None);
        let llama3 = meta(&[
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s("llama-bpe")),
            ("tokenizer.ggml.bos_token_id", Value::U32(509)),
        ]);
        assert_eq!(bos_token(&llama3), Some(509));
        let off = meta(&[("tokenizer.ggml.model", s("llama")), ("tokenizer.ggml.add_bos_token", Value::Bool(false))]);
        assert_eq!(bos_token(&off), None);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn encodes_with_each_fixture_tokenizer() {
        for dir in ["llama/hf", "mixtral/hf", "gpt-oss/hf-mxfp4", "gpt-oss/original"] {
            let t = TextTokenizer::from_dir(&fixture(dir)).unwrap();
            let ids = t.encode("Hello world\n\n  ok 3333", false).unwrap();
            assert!(!ids.is_empty(), "{dir}");
            // The file itself names the same tokenizer (`--tokenizer path/tokenizer.json`).
            let file = TextTokenizer::from_dir(t.path()).unwrap();
            assert_eq!(file.encode("Hello world\n\n  ok 3333", false).unwrap(), ids, "{dir}");
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
        let e = TextTokenizer::from_dir(&dir.path().join("tokenizer.json")).err().unwrap();
        assert!(e.to_string().contains("tokenizer.json: not a tokenizer"), "{e}");
        let sp = tempfile::tempdir().unwrap();
        std::fs::write(sp.path().join("tokenizer.model"), b"x").unwrap();
        let e = TextTokenizer::from_dir(sp.path()).err().unwrap();
        assert!(e.to_string().contains("only a SentencePiece tokenizer.model"), "{e}");
    }
}
