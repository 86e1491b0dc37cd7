//! `--tensor-type PATTERN=TYPE` rules and the type names the type options take.
//!
//! llama-quantize (`tools/quantize/quantize.cpp`, `parse_tensor_type`) splits at the first
//! `=`, lowercases the pattern (ASCII `tolower`, so `\D` becomes `\d` and `[A-Z]` becomes
//! `[a-z]`), and `src/llama-quant.cpp` compiles it as a `std::regex` (ECMAScript grammar,
//! case-sensitive) that applies to a tensor when `std::regex_search` finds it anywhere in the
//! name. The first rule that matches decides.
//!
//! moeq lowercases the same way and translates the pattern into the `regex` crate's syntax
//! with byte (not Unicode) semantics. Whether a pattern matches somewhere does not depend on
//! the engine's match preferences, so the translation agrees with std::regex on every
//! construct it accepts: literals, `.` (any character but `\n` and `\r`, as ECMAScript),
//! `^`, `$`, `|`, groups `(…)` and `(?:…)`, `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}` (and
//! their lazy forms), classes `[…]`/`[^…]` with ranges, `\d \w \s \b` and their negations,
//! `\t \n \r \f \v` and escaped punctuation. Patterns using anything else (backreferences,
//! lookahead, `\x`/`\u`/`\c` escapes, POSIX classes, `[` inside a class, an empty class,
//! non-ASCII characters) are refused, naming the construct, rather than risk matching other
//! tensors than llama-quantize would.

use anyhow::{Result, anyhow, bail};
use moeq_formats::gguf::GgmlType;
use regex::bytes::{Regex, RegexBuilder};

/// One `--tensor-type` rule.
#[derive(Clone, Debug)]
pub struct TensorTypeRule {
    /// The argument as given (`PATTERN=TYPE`).
    pub text: String,
    /// The pattern as llama-quantize uses it (lowercased).
    pub pattern: String,
    /// The type it gives.
    pub ty: GgmlType,
    regex: Regex,
}

impl TensorTypeRule {
    /// Parses `PATTERN=TYPE`. Returns the rule and, when lowercasing changed the pattern, a
    /// warning saying so.
    pub fn parse(arg: &str) -> Result<(TensorTypeRule, Option<String>)> {
        let Some((name, ty)) = arg.split_once('=') else {
            bail!("--tensor-type '{arg}': expected PATTERN=TYPE");
        };
        if name.is_empty() {
            bail!("--tensor-type '{arg}': the tensor name pattern is missing");
        }
        if ty.is_empty() {
            bail!("--tensor-type '{arg}': the type is missing");
        }
        let ty = parse_type(ty).map_err(|e| anyhow!("--tensor-type '{arg}': {e}"))?;
        let pattern = name.to_ascii_lowercase();
        let translated = translate(&pattern).map_err(|e| anyhow!("--tensor-type '{arg}': {e}"))?;
        let regex = RegexBuilder::new(&translated)
            .unicode(false)
            .build()
            .map_err(|e| anyhow!("--tensor-type '{arg}': invalid regular expression: {e}"))?;
        let warning = (pattern != name).then(|| {
            format!(
                "--tensor-type '{arg}': the pattern is matched as '{pattern}' (llama-quantize lowercases patterns; \
                 tensor names are lower-case)"
            )
        });
        Ok((TensorTypeRule { text: arg.to_string(), pattern, ty, regex }, warning))
    }

    /// Whether the rule applies to tensor `name` (`std::regex_search`).
    pub fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name.as_bytes())
    }
}

/// A ggml type name as llama-quantize's `parse_ggml_type` takes it (any case: `q4_k`,
/// `Q8_0`, `bf16`), limited to the types llama.cpp can quantize a tensor to.
pub fn parse_type(name: &str) -> Result<GgmlType, String> {
    let ty = GgmlType::from_name(name).ok_or_else(|| format!("'{name}' is not a ggml type"))?;
    use GgmlType as G;
    if matches!(ty, G::Q8_1 | G::Q8_K | G::I8 | G::I16 | G::I32 | G::I64 | G::F64) {
        return Err(format!("{ty} is not a type llama.cpp quantizes model tensors to"));
    }
    Ok(ty)
}

/// Translates a (lowercased) ECMAScript pattern into the `regex` crate's syntax, or says
/// which construct it refuses.
fn translate(pattern: &str) -> Result<String, String> {
    let refuse = |what: &str| {
        format!("{what} in '{pattern}': moeq cannot guarantee to match it as llama-quantize's std::regex does")
    };
    if let Some(c) = pattern.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
        return Err(refuse(&format!("the character {c:?}")));
    }
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() * 2);
    // Whether the last item can take a quantifier, and whether it is a quantifier (which
    // may be made lazy).
    let (mut atom, mut quantified) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => {
                let Some(&e) = b.get(i + 1) else { return Err(refuse("a trailing backslash")) };
                match e {
                    b'd' | b'w' | b's' | b'D' | b'W' | b'S' | b't' | b'n' | b'r' | b'f' | b'v' => {
                        out.push('\\');
                        out.push(e as char);
                        atom = true;
                    }
                    b'b' | b'B' => {
                        out.push('\\');
                        out.push(e as char);
                        atom = false;
                    }
                    e if e.is_ascii_punctuation() => {
                        push_literal(&mut out, e);
                        atom = true;
                    }
                    b'0'..=b'9' => return Err(refuse(&format!("the backreference or octal escape '\\{}'", e as char))),
                    _ => return Err(refuse(&format!("the escape '\\{}'", e as char))),
                }
                quantified = false;
                i += 2;
            }
            b'[' => {
                i = class(b, i, &mut out).map_err(|what| refuse(&what))?;
                (atom, quantified) = (true, false);
            }
            b'(' => {
                if b.get(i + 1) == Some(&b'?') {
                    if b.get(i + 2) != Some(&b':') {
                        return Err(refuse("a '(?' group other than '(?:' (lookahead, flags, names)"));
                    }
                    out.push_str("(?:");
                    i += 3;
                } else {
                    out.push('(');
                    i += 1;
                }
                (atom, quantified) = (false, false);
            }
            b')' => {
                out.push(')');
                (atom, quantified) = (true, false);
                i += 1;
            }
            b'|' | b'^' | b'$' => {
                out.push(c as char);
                (atom, quantified) = (false, false);
                i += 1;
            }
            b'*' | b'+' | b'?' | b'{' => {
                if c == b'?' && quantified {
                    // A lazy quantifier (`*?`, `+?`, `??`, `{n}?`).
                    out.push('?');
                    (atom, quantified) = (false, false);
                    i += 1;
                    continue;
                }
                let len = if c == b'{' {
                    quantifier_len(&b[i..])
                        .ok_or_else(|| refuse("a '{' that is not a repetition {n}, {n,} or {n,m}"))?
                } else {
                    1
                };
                if !atom {
                    return Err(refuse(&format!("a repetition '{}' with nothing to repeat", &pattern[i..i + len])));
                }
                out.push_str(&pattern[i..i + len]);
                (atom, quantified) = (false, true);
                i += len;
            }
            b'}' | b']' => return Err(refuse(&format!("a stray '{}'", c as char))),
            b'.' => {
                out.push_str(r"[^\n\r]");
                (atom, quantified) = (true, false);
                i += 1;
            }
            _ => {
                push_literal(&mut out, c);
                (atom, quantified) = (true, false);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A literal character, escaped when it is not a letter, digit or `_`.
fn push_literal(out: &mut String, c: u8) {
    if c.is_ascii_alphanumeric() || c == b'_' {
        out.push(c as char);
    } else {
        out.push_str(&format!(r"\x{{{c:02x}}}"));
    }
}

/// The length of a `{n}`, `{n,}` or `{n,m}` repetition at the start of `b`, if it is one.
fn quantifier_len(b: &[u8]) -> Option<usize> {
    let end = b.iter().position(|&c| c == b'}')?;
    let inner = std::str::from_utf8(&b[1..end]).ok()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let ok = match inner.split_once(',') {
        None => digits(inner),
        Some((lo, hi)) => digits(lo) && (hi.is_empty() || digits(hi)),
    };
    ok.then_some(end + 1)
}

/// Translates the class starting at `b[start]` (`[`) into `out`; returns the index after it.
fn class(b: &[u8], start: usize, out: &mut String) -> Result<usize, String> {
    let mut i = start + 1;
    out.push('[');
    if b.get(i) == Some(&b'^') {
        out.push('^');
        i += 1;
    }
    if b.get(i) == Some(&b']') {
        return Err("an empty class '[]' or '[^]'".into());
    }
    // One class item: a character, or a class escape (`\d`…) that cannot bound a range.
    let item = |i: usize| -> Result<(Option<u8>, &'static str, usize), String> {
        match b.get(i) {
            None => Err("an unclosed '['".into()),
            Some(b'\\') => match b.get(i + 1) {
                None => Err("an unclosed '['".into()),
                Some(&e) => match e {
                    b'd' => Ok((None, r"\d", i + 2)),
                    b'w' => Ok((None, r"\w", i + 2)),
                    b's' => Ok((None, r"\s", i + 2)),
                    b'D' => Ok((None, r"\D", i + 2)),
                    b'W' => Ok((None, r"\W", i + 2)),
                    b'S' => Ok((None, r"\S", i + 2)),
                    b't' => Ok((Some(b'\t'), "", i + 2)),
                    b'n' => Ok((Some(b'\n'), "", i + 2)),
                    b'r' => Ok((Some(b'\r'), "", i + 2)),
                    b'f' => Ok((Some(0x0c), "", i + 2)),
                    b'v' => Ok((Some(0x0b), "", i + 2)),
                    e if e.is_ascii_punctuation() => Ok((Some(e), "", i + 2)),
                    _ => Err(format!("the escape '\\{}' inside a class", e as char)),
                },
            },
            Some(b'[') => Err("a '[' inside a class (POSIX classes, nested classes)".into()),
            Some(&c) => Ok((Some(c), "", i + 1)),
        }
    };
    loop {
        if b.get(i) == Some(&b']') {
            out.push(']');
            return Ok(i + 1);
        }
        let (lo, escape, next) = item(i)?;
        let Some(lo) = lo else {
            if b.get(next) == Some(&b'-') && b.get(next + 1) != Some(&b']') {
                return Err("a range bounded by a class escape".into());
            }
            out.push_str(escape);
            i = next;
            continue;
        };
        if b.get(next) == Some(&b'-') && b.get(next + 1).is_some_and(|&c| c != b']') {
            let (hi, _, after) = item(next + 1)?;
            let Some(hi) = hi else { return Err("a range bounded by a class escape".into()) };
            if hi < lo {
                return Err(format!("the range '{}-{}' out of order", lo as char, hi as char));
            }
            out.push_str(&format!(r"\x{{{lo:02x}}}-\x{{{hi:02x}}}"));
            i = after;
        } else {
            out.push_str(&format!(r"\x{{{lo:02x}}}"));
            i = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(arg: &str) -> TensorTypeRule {
        TensorTypeRule::parse(arg).unwrap().0
    }

    #[test]
    fn rules_search_anywhere_and_lowercase_the_pattern() {
        let r = rule("attn_v=q8_0");
        assert_eq!(r.ty, GgmlType::Q8_0);
        assert!(r.matches("blk.0.attn_v.weight"));
        assert!(!r.matches("blk.0.attn_q.weight"));
        let (r, warning) = TensorTypeRule::parse("ATTN_V=Q8_0").unwrap();
        assert!(r.matches("blk.3.attn_v.weight") && warning.unwrap().contains("attn_v"));
        // `\D` becomes `\d` after lowercasing, as in llama-quantize.
        let r = rule(r"blk\.\D+\.ffn_down=q6_k");
        assert!(r.matches("blk.12.ffn_down.weight"));
        assert!(rule("^blk\\.(0|1)\\.ffn_(up|gate)_exps=iq4_xs").matches("blk.1.ffn_gate_exps.weight"));
        assert!(!rule("^blk\\.(0|1)\\.ffn_(up|gate)_exps=iq4_xs").matches("blk.10.ffn_gate_exps.weight"));
        assert!(rule("blk\\.[0-3]\\.=q5_k").matches("blk.2.attn_k.weight"));
        assert!(rule("blk\\.[^0-3]\\.=q5_k").matches("blk.7.attn_k.weight"));
        assert!(rule("output.weight$=q8_0").matches("output.weight"));
        assert!(rule("ffn_down_exps.weight$=q8_0").matches("blk.0.ffn_down_exps.weight"));
        assert!(rule("blk\\.\\d{2,}\\.=q8_0").matches("blk.12.attn_q.weight"));
        assert!(!rule("blk\\.\\d{2,}\\.=q8_0").matches("blk.2.attn_q.weight"));
        assert!(rule(".*?exps=q8_0").matches("blk.2.ffn_up_exps.weight"));
        assert!(rule("[-.]up=q8_0").matches("blk.2.up"));
        assert!(rule("a&&b=q8_0").matches("xa&&b"), "'&&' is literal as in ECMAScript");
        assert!(rule("[a&&b]=q8_0").matches("&"), "'&&' in a class is literal as in ECMAScript");
        assert!(rule("[~~]=q8_0").matches("~"));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (arg, want) in [
            ("attn_v", "PATTERN=TYPE"),
            ("=q8_0", "pattern is missing"),
            ("attn_v=", "type is missing"),
            ("attn_v=q9_9", "not a ggml type"),
            ("attn_v=q8_k", "not a type llama.cpp quantizes"),
            ("(a)\\1=q8_0", "backreference"),
            ("a(?!b)=q8_0", "'(?'"),
            ("a(?=b)=q8_0", "not a ggml type"), // split at the first '=', as llama-quantize
            ("(?i)a=q8_0", "'(?'"),
            ("[[:alpha:]]=q8_0", "inside a class"),
            ("[]a]=q8_0", "empty class"),
            ("\\x41=q8_0", "escape"),
            ("\\pL=q8_0", "escape"),
            ("a{=q8_0", "repetition"),
            ("*a=q8_0", "nothing to repeat"),
            ("a**=q8_0", "nothing to repeat"),
            ("^*=q8_0", "nothing to repeat"),
            ("é=q8_0", "character"),
            ("a]=q8_0", "stray"),
            ("[z-a]=q8_0", "out of order"),
            ("[\\d-z]=q8_0", "class escape"),
            ("(a=q8_0", "invalid regular expression"),
        ] {
            let err = TensorTypeRule::parse(arg).unwrap_err().to_string();
            assert!(err.contains(want), "{arg}: {err}");
        }
    }
}
