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
#[derive(Clone)]
pub struct Keys<'a> {
    json: &'a Json,
    prefix: String,
}

impl<'a> Keys<'a> {
    /// Keys of an arbitrary JSON object (`prefix` is prepended to names in errors).
    pub fn of(json: &'a Json, prefix: &str) -> Keys<'a> {
        Keys { json, prefix: prefix.to_string() }
    }

    fn name(&self, key: &str) -> String {
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

    /// A required non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        match self.json.get(key) {
            Some(v) => v.as_u64().with_context(|| format!("\"{}\" is {v}, not a non-negative integer", self.name(key))),
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

    /// An optional number (absent or null: `None`).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.json.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).with_context(|| format!("\"{}\" is {v}, not a number", self.name(key))),
        }
    }

    /// A boolean, when the key holds one.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.json.get(key).and_then(Json::as_bool)
    }

    /// A string, when the key holds one.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.json.get(key).and_then(Json::as_str)
    }

    /// The keys of the object at `key`, when it holds one.
    pub fn object(&self, key: &str) -> Option<Keys<'a>> {
        self.json.get(key).filter(|v| v.is_object()).map(|json| Keys { json, prefix: format!("{}.", self.name(key)) })
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
        let r = k.object("rope_scaling").unwrap();
        assert_eq!(r.opt_f64("factor").unwrap_err().to_string(), "\"rope_scaling.factor\" is \"x\", not a number");
        assert!(k.object("n").is_none());
    }
}
