//! `--override-kv KEY=TYPE:VALUE`, as llama.cpp parses it (`common/common.cpp`,
//! `string_parse_kv_override`) and llama-quantize writes it (`src/llama-quant.cpp`): `int`
//! is written as UINT32 (of the absolute value), `float` as FLOAT32, `bool` (`true` or
//! `false`) as BOOL, `str` (at most 127 bytes) as STRING; the key is removed and appended
//! after `general.file_type`, in the order given.
//!
//! Where llama.cpp would silently read junk (`int:12abc` is 12, `int:x` is 0, `float:1e400`
//! is infinity, a negative int is written as its absolute value), moeq refuses.

use anyhow::{Result, bail};
use moeq_formats::gguf::{GgufPlan, Value};

/// One parsed override.
#[derive(Clone, Debug, PartialEq)]
pub struct KvOverride {
    /// The metadata key.
    pub key: String,
    /// The value as it will be written.
    pub value: Value,
    /// For `int:` overrides, the integer (what llama.cpp's model loader reads for the
    /// hyperparameters the rules use).
    pub int: Option<i64>,
}

impl KvOverride {
    /// Parses `KEY=TYPE:VALUE`.
    pub fn parse(arg: &str) -> Result<KvOverride> {
        let Some((key, rest)) = arg.split_once('=') else {
            bail!("--override-kv '{arg}': expected KEY=TYPE:VALUE");
        };
        if key.is_empty() {
            bail!("--override-kv '{arg}': the key is empty");
        }
        if key.len() >= 128 {
            bail!("--override-kv '{arg}': the key is {} bytes; llama.cpp allows at most 127", key.len());
        }
        let Some((ty, text)) = rest.split_once(':') else {
            bail!("--override-kv '{arg}': the type must be int, float, bool or str (TYPE:VALUE)");
        };
        let (value, int) = match ty {
            "int" => {
                let Ok(v) = text.parse::<i64>() else {
                    bail!("--override-kv '{arg}': '{text}' is not an integer");
                };
                let Ok(u) = u32::try_from(v) else {
                    bail!("--override-kv '{arg}': llama-quantize writes integers as UINT32; {v} does not fit");
                };
                (Value::U32(u), Some(v))
            }
            "float" => {
                let Some(v) = text.parse::<f64>().ok().filter(|v| (*v as f32).is_finite()) else {
                    bail!("--override-kv '{arg}': '{text}' is not a finite number (written as FLOAT32)");
                };
                (Value::F32(v as f32), None)
            }
            "bool" => match text {
                "true" => (Value::Bool(true), None),
                "false" => (Value::Bool(false), None),
                _ => bail!("--override-kv '{arg}': a bool is 'true' or 'false'"),
            },
            "str" => {
                if text.len() > 127 {
                    bail!("--override-kv '{arg}': the string is {} bytes; llama.cpp allows at most 127", text.len());
                }
                (Value::String(text.to_string()), None)
            }
            other => bail!("--override-kv '{arg}': unknown type '{other}' (int, float, bool or str)"),
        };
        // The split keys say which shard a file is (UINT16 / INT32, written by moeq for
        // --split-max-size and --keep-split): an override would be dropped from a split
        // output, and make an unsplit one unreadable (llama.cpp's loader and moeq check their
        // types).
        if key.starts_with("split.") {
            bail!(
                "--override-kv '{arg}': the split.* keys describe a split model's shards and are written by moeq \
                 (--split-max-size, --keep-split); they cannot be overridden"
            );
        }
        if key == "general.alignment" && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            bail!("--override-kv '{arg}': general.alignment must be an int power of two");
        }
        Ok(KvOverride { key: key.to_string(), value, int })
    }

    /// Writes the override into `plan` as llama-quantize does: the key is removed and
    /// appended.
    pub fn apply(&self, plan: &mut GgufPlan) {
        plan.remove(&self.key);
        plan.set(&self.key, self.value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_like_llama_cpp() {
        let o = KvOverride::parse("llama.expert_used_count=int:2").unwrap();
        assert_eq!((o.key.as_str(), &o.value, o.int), ("llama.expert_used_count", &Value::U32(2), Some(2)));
        assert_eq!(KvOverride::parse("a.b=float:0.5").unwrap().value, Value::F32(0.5));
        assert_eq!(KvOverride::parse("a.b=bool:false").unwrap().value, Value::Bool(false));
        assert_eq!(KvOverride::parse("a.b=str:x=y:z").unwrap().value, Value::String("x=y:z".into()));
        assert_eq!(KvOverride::parse("a.b=str:").unwrap().value, Value::String(String::new()));
        for (arg, want) in [
            ("a.b", "KEY=TYPE:VALUE"),
            ("=int:1", "key is empty"),
            ("a.b=int", "TYPE:VALUE"),
            ("a.b=int:12abc", "not an integer"),
            ("a.b=int:-1", "does not fit"),
            ("a.b=int:4294967296", "does not fit"),
            ("a.b=float:x", "not a finite number"),
            ("a.b=float:1e40", "not a finite number"),
            ("a.b=bool:yes", "'true' or 'false'"),
            ("a.b=u32:1", "unknown type"),
            ("general.alignment=int:3", "power of two"),
            ("split.count=int:3", "cannot be overridden"),
        ] {
            let err = KvOverride::parse(arg).unwrap_err().to_string();
            assert!(err.contains(want), "{arg}: {err}");
        }
        let long = format!("a.b=str:{}", "x".repeat(128));
        assert!(KvOverride::parse(&long).unwrap_err().to_string().contains("127"));
        let mut plan = GgufPlan::default();
        plan.set("a.b", Value::U8(1));
        plan.set("c", Value::U8(2));
        KvOverride::parse("a.b=int:7").unwrap().apply(&mut plan);
        assert_eq!(plan.metadata, [("c".to_string(), Value::U8(2)), ("a.b".to_string(), Value::U32(7))]);
    }
}
