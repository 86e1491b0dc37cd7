//! `config.json`: read once, then turned into a family's typed config through [`Keys`], whose
//! errors name the key (`"num_experts" is "four", not a non-negative integer`); the family's
//! parser adds the file. serde's derive would not name the key in a type error, and the
//! families' configs mix required keys, defaults, alternative names and nested objects
//! (`rope_scaling`), so each family reads its struct field by field through these accessors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;

/// A parsed `config.json` and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigFile {
    /// The parsed JSON (an object).
    pub json: Json,
    /// The file (empty when built from JSON alone).
    pub path: PathBuf,
}

impl ConfigFile {
    /// Reads `config.json` in `dir`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<ConfigFile>> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let json: Json = serde_json::from_slice(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Ok(Some(ConfigFile { json, path }))
    }

    /// The keys at the top level.
    pub fn keys(&self) -> Keys<'_> {
        Keys { json: &self.json, prefix: String::new() }
    }
}

/// Typed access to the keys of one JSON object, with errors naming the key (and the path of
/// the object it sits in, e.g. `rope_scaling.factor`).
#[derive(Clone, Debug)]
pub struct Keys<'a> {
    json: &'a Json,
    prefix: String,
}

impl<'a> Keys<'a> {
    /// Keys of an arbitrary JSON object (`prefix` is prepended to names in errors).
    pub fn of(json: &'a Json, prefix: &str) -> Keys<'a> {
        Keys { json, prefix: prefix.to_string() }
    }

    /// `key` as errors name it (with the path of the object it sits in).
    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The raw value of `key`, if present and not null.
    pub fn raw(&self, key: &str) -> Option<&'a Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present with a non-null value.
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// A required non-negative integer that fits GGUF's UINT32 (every hyperparameter the
    /// converter writes is one: a larger value would wrap).
    pub fn u64(&self, key: &str) -> Result<u64> {
        match self.json.get(key) {
            Some(v) => match v.as_u64() {
                Some(n) if n > u64::from(u32::MAX) => {
                    bail!("\"{}\" is {n}, more than GGUF's 32-bit integers hold ({})", self.name(key), u32::MAX)
                }
                Some(n) => Ok(n),
                None => bail!("\"{}\" is {v}, not a non-negative integer", self.name(key)),
            },
            None => bail!("\"{}\" is missing", self.name(key)),
        }
    }

    /// An optional non-negative integer (absent or null: `None`).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(_) => self.u64(key).map(Some),
        }
    }

    /// An optional number (absent or null: `None`) that fits GGUF's FLOAT32 (a larger one would
    /// be written as an infinity).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if !(x as f32).is_finite() => {
                    bail!("\"{}\" is {v}, beyond the range of GGUF's 32-bit floats", self.name(key))
                }
                Some(x) => Ok(Some(x)),
                None => bail!("\"{}\" is {v}, not a number", self.name(key)),
            },
        }
    }

    /// An optional boolean (absent or null: `None`).
    ///
    /// Errors: any other value (`"yes"`, `1`): transformers and llama.cpp's converter would
    /// take its truthiness, which moeq will not guess.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).with_context(|| format!("\"{}\" is {v}, not true or false", self.name(key)))
            }
        }
    }

    /// An optional string (absent or null: `None`).
    ///
    /// Errors: any other value.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).with_context(|| format!("\"{}\" is {v}, not a string", self.name(key))),
        }
    }

    /// The keys of the optional object at `key` (absent or null: `None`).
    ///
    /// Errors: any other value (`"rope_scaling": "yarn"` would otherwise read as no scaling).
    pub fn object(&self, key: &str) -> Result<Option<Keys<'a>>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(json) if json.is_object() => Ok(Some(Keys { json, prefix: format!("{}.", self.name(key)) })),
            Some(v) => bail!("\"{}\" is {v}, not an object", self.name(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_key() {
        let json = json!({"n": 3, "s": "four", "z": null, "f": 1.5, "rope_scaling": {"factor": "x"}});
        let k = Keys::of(&json, "");
        assert_eq!(k.u64("n").unwrap(), 3);
        assert_eq!(k.u64("s").unwrap_err().to_string(), "\"s\" is \"four\", not a non-negative integer");
        assert_eq!(k.u64("z").unwrap_err().to_string(), "\"z\" is null, not a non-negative integer");
        assert_eq!(k.u64("gone").unwrap_err().to_string(), "\"gone\" is missing");
        assert_eq!((k.opt_u64("z").unwrap(), k.opt_u64("gone").unwrap()), (None, None));
        assert_eq!(k.opt_f64("f").unwrap(), Some(1.5));
        let r = k.object("rope_scaling").unwrap().unwrap();
        assert_eq!(r.opt_f64("factor").unwrap_err().to_string(), "\"rope_scaling.factor\" is \"x\", not a number");
        assert_eq!(k.object("n").unwrap_err().to_string(), "\"n\" is 3, not an object");
        assert!(k.object("z").unwrap().is_none() && k.object("gone").unwrap().is_none());
    }

    /// A value of the wrong JSON type is an error naming the key, never read as absent (a
    /// `"rope_scaling": "yarn"` would have converted without YaRN, a `"tie_word_embeddings":
    /// "yes"` untied); values a GGUF field cannot hold are errors, not wrapped or infinite.
    #[test]
    fn wrong_types_and_ranges_are_errors() {
        let json = json!({"t": true, "yes": "yes", "one": 1, "s": "silu", "z": null, "big": 8589934592u64,
                          "max": 4294967295u64, "huge": 1e300, "f": 3.0e38,
                          "rope_scaling": {"rope_type": 5, "truncate": "no"}});
        let k = Keys::of(&json, "");
        assert_eq!(k.bool("t").unwrap(), Some(true));
        assert_eq!((k.bool("z").unwrap(), k.bool("gone").unwrap()), (None, None));
        assert_eq!(k.bool("yes").unwrap_err().to_string(), "\"yes\" is \"yes\", not true or false");
        assert_eq!(k.bool("one").unwrap_err().to_string(), "\"one\" is 1, not true or false");
        assert_eq!(k.str("s").unwrap(), Some("silu"));
        assert_eq!(k.str("one").unwrap_err().to_string(), "\"one\" is 1, not a string");
        assert_eq!(k.object("yes").unwrap_err().to_string(), "\"yes\" is \"yes\", not an object");
        let r = k.object("rope_scaling").unwrap().unwrap();
        assert_eq!(r.str("rope_type").unwrap_err().to_string(), "\"rope_scaling.rope_type\" is 5, not a string");
        assert_eq!(
            r.bool("truncate").unwrap_err().to_string(),
            "\"rope_scaling.truncate\" is \"no\", not true or false"
        );
        assert_eq!(k.u64("max").unwrap(), u64::from(u32::MAX));
        assert_eq!(
            k.u64("big").unwrap_err().to_string(),
            "\"big\" is 8589934592, more than GGUF's 32-bit integers hold (4294967295)"
        );
        assert_eq!(k.opt_f64("f").unwrap(), Some(3.0e38));
        assert_eq!(
            k.opt_f64("huge").unwrap_err().to_string(),
            "\"huge\" is 1e+300, beyond the range of GGUF's 32-bit floats"
        );
    }
}
