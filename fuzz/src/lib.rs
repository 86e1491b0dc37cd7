//! Structure-aware mutations of GGUF files for the fuzz targets: a parsed header's metadata
//! values, keys, tensor table (names, dimensions, types) and tensor bytes are changed and the
//! file is written anew, so most mutants parse and reach the model loader's checks rather
//! than the reader's. Byte-level mutation (libFuzzer's own) covers the reader.

use moeq_formats::gguf::{GgmlType, GgufHeader, GgufPlan, Value};

/// A small deterministic generator (xorshift64*), seeded by the fuzzer.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Sizes that sit on the edges of the loader's checks.
const SIZES: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    15,
    16,
    17,
    31,
    32,
    33,
    48,
    63,
    64,
    65,
    96,
    127,
    128,
    129,
    255,
    256,
    257,
    511,
    512,
    513,
    1024,
    4096,
    8208,
    65535,
    65536,
    1 << 24,
    (1 << 24) + 1,
    u32::MAX as u64,
    u32::MAX as u64 + 1,
    u64::MAX,
];

/// Floats that break arithmetic.
const FLOATS: &[f64] =
    &[0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-5];

/// Strings the loader compares against.
const STRINGS: &[&str] = &["llama", "gpt-oss", "mixtral", "qwen3moe", "yarn", "linear", "none", "", "gpt2", "x"];

/// Every ggml type (the loader must refuse the ones it cannot decode).
const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::MXFP4,
    GgmlType::IQ4_NL,
    GgmlType::IQ2_XXS,
    GgmlType::I8,
    GgmlType::I32,
    GgmlType::F64,
];

fn near(rng: &mut Rng, v: u64) -> u64 {
    match rng.below(6) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        2 => v.wrapping_mul(2),
        3 => v / 2,
        4 => v.wrapping_add(rng.below(64) as u64),
        _ => *rng.pick(SIZES),
    }
}

/// A new value for a metadata entry: the same type with an edge value, or another type.
fn mutate_value(rng: &mut Rng, v: &Value) -> Value {
    let n = v.as_u64().unwrap_or(0);
    if rng.below(5) == 0 {
        // Another type with a related value.
        return match rng.below(8) {
            0 => Value::I32(near(rng, n) as i32),
            1 => Value::U64(near(rng, n)),
            2 => Value::F32(n as f32),
            3 => Value::String(n.to_string()),
            4 => Value::Bool(n != 0),
            5 => Value::U8(near(rng, n) as u8),
            6 => Value::I64(-(near(rng, n) as i64)),
            _ => Value::U32(near(rng, n) as u32),
        };
    }
    match v {
        Value::U8(x) => Value::U8(near(rng, *x as u64) as u8),
        Value::I8(x) => Value::I8(near(rng, *x as u64) as i8),
        Value::U16(x) => Value::U16(near(rng, *x as u64) as u16),
        Value::I16(x) => Value::I16(near(rng, *x as u64) as i16),
        Value::U32(x) => Value::U32(near(rng, *x as u64) as u32),
        Value::I32(x) => Value::I32(near(rng, *x as u64) as i32),
        Value::U64(x) => Value::U64(near(rng, *x)),
        Value::I64(x) => Value::I64(near(rng, *x as u64) as i64),
        Value::F32(x) => Value::F32(if rng.below(2) == 0 { *rng.pick(FLOATS) as f32 } else { x * 2.0 }),
        Value::F64(x) => Value::F64(if rng.below(2) == 0 { *rng.pick(FLOATS) } else { x * 2.0 }),
        Value::Bool(b) => Value::Bool(!b),
        Value::String(_) => Value::String(rng.pick(STRINGS).to_string()),
        Value::Array(_) => Value::U32(near(rng, n) as u32),
    }
}

/// Keys every family's loader reads, with their architecture prefix to fill in.
const KEYS: &[&str] = &[
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "expert_feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "expert_count",
    "expert_used_count",
    "context_length",
    "swiglu_limit",
    "vocab_size",
];

/// Applies one to four structural mutations to `plan` and its tensors' bytes `data` (one
/// buffer per tensor, resized when its size changes at writing).
pub fn mutate_plan(rng: &mut Rng, plan: &mut GgufPlan, data: &mut Vec<Vec<u8>>) {
    let arch = plan.get("general.architecture").and_then(Value::as_str).unwrap_or("llama").to_string();
    for _ in 0..1 + rng.below(4) {
        let (nm, nt) = (plan.metadata.len(), plan.tensors.len());
        match rng.below(12) {
            // A hyperparameter: changed, removed, or added.
            0..=2 => {
                let key = format!("{arch}.{}", rng.pick(KEYS));
                match plan.get(&key).cloned() {
                    Some(v) if rng.below(6) > 0 => plan.set(&key, mutate_value(rng, &v)),
                    Some(_) => plan.remove(&key),
                    None => plan.set(&key, Value::U32(*rng.pick(SIZES) as u32)),
                }
            }
            // Any metadata entry.
            3 if nm > 0 => {
                let i = rng.below(nm);
                if rng.below(4) == 0 {
                    plan.metadata.remove(i);
                } else {
                    plan.metadata[i].1 = mutate_value(rng, &plan.metadata[i].1);
                }
            }
            // The architecture.
            4 => plan.set("general.architecture", Value::String(rng.pick(STRINGS).to_string())),
            // A tensor's dimensions.
            5 | 6 if nt > 0 => {
                let t = &mut plan.tensors[rng.below(nt)];
                match rng.below(5) {
                    0 if t.ne.len() > 1 => t.ne.swap(0, 1),
                    1 if t.ne.len() < 4 => t.ne.push(*rng.pick(&[1, 2, 4])),
                    2 if t.ne.len() > 1 => {
                        t.ne.pop();
                    }
                    _ => {
                        let d = rng.below(t.ne.len());
                        t.ne[d] = near(rng, t.ne[d]).clamp(1, 1 << 20);
                    }
                }
            }
            // A tensor's type.
            7 if nt > 0 => plan.tensors[rng.below(nt)].ggml_type = *rng.pick(TYPES),
            // A tensor removed, duplicated or renamed.
            8 if nt > 0 => {
                let i = rng.below(nt);
                match rng.below(3) {
                    0 => {
                        plan.tensors.remove(i);
                        data.remove(i);
                    }
                    1 => {
                        let mut t = plan.tensors[i].clone();
                        t.name = format!("blk.{}.{}", rng.below(4), t.name.rsplit('.').nth(1).unwrap_or("x"));
                        if !plan.tensors.iter().any(|u| u.name == t.name) {
                            plan.tensors.push(t);
                            data.push(data[i].clone());
                        }
                    }
                    _ => {
                        let j = rng.below(nt);
                        let name = plan.tensors[j].name.replacen('0', "1", 1);
                        if !plan.tensors.iter().any(|u| u.name == name) {
                            plan.tensors[i].name = name;
                        }
                    }
                }
            }
            // Tensor values: extreme floats (as f32, bf16 or f16 bit patterns) or noise.
            9 | 10 if nt > 0 => {
                let bytes = &mut data[rng.below(nt)];
                for _ in 0..1 + rng.below(8) {
                    if bytes.len() >= 4 {
                        let at = rng.below(bytes.len() - 3);
                        let v = match rng.below(4) {
                            0 => (*rng.pick(FLOATS) as f32).to_le_bytes(),
                            1 => (rng.next() as u32).to_le_bytes(),
                            2 => [0xff, 0x7f, 0xff, 0x7f],
                            _ => [0x80, 0x7f, 0x00, 0x7c],
                        };
                        bytes[at..at + 4].copy_from_slice(&v);
                    }
                }
            }
            // Alignment.
            _ => plan.set("general.alignment", Value::U32(*rng.pick(&[1, 2, 8, 16, 32, 64, 3, 0]))),
        }
    }
}

/// The file `plan` describes, each tensor's bytes from `data` (cut or zero-padded to its
/// size); `None` when the plan breaks the writer's rules.
pub fn write(plan: &GgufPlan, data: &[Vec<u8>]) -> Option<Vec<u8>> {
    let layout = plan.layout().ok()?;
    if layout.file_len > 64 << 20 {
        return None;
    }
    let mut out = vec![0u8; layout.file_len as usize];
    out[..layout.header.len()].copy_from_slice(&layout.header);
    for ((&offset, &size), bytes) in layout.offsets.iter().zip(&layout.sizes).zip(data) {
        let n = (size as usize).min(bytes.len());
        out[offset as usize..offset as usize + n].copy_from_slice(&bytes[..n]);
    }
    Some(out)
}

/// Parses `file` and returns its plan and tensor bytes, if it parses.
pub fn read(file: &[u8]) -> Option<(GgufPlan, Vec<Vec<u8>>)> {
    let header = GgufHeader::parse(file).ok()?;
    let data = header
        .tensors
        .iter()
        .map(|t| {
            let start = (header.data_offset + t.offset) as usize;
            file[start..start + t.nbytes as usize].to_vec()
        })
        .collect();
    Some((GgufPlan::from_header(&header), data))
}

/// One structure-aware mutant of `file` (a GGUF that parses), or `None`.
pub fn mutate(file: &[u8], seed: u64) -> Option<Vec<u8>> {
    let (mut plan, mut data) = read(file)?;
    let mut rng = Rng::new(seed);
    mutate_plan(&mut rng, &mut plan, &mut data);
    write(&plan, &data)
}

/// Separates `config.json` from the safetensors file in a checkpoint target's input.
pub const SEPARATOR: &[u8] = b"\n\0MOEQ-SAFETENSORS\0\n";

/// Splits a checkpoint input into `config.json` and the safetensors bytes.
pub fn split_checkpoint(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&data[..i], &data[i + SEPARATOR.len()..]),
        None => (data, &[]),
    }
}

/// Joins `config.json` and the safetensors bytes into one checkpoint input.
pub fn join_checkpoint(config: &[u8], weights: &[u8]) -> Vec<u8> {
    [config, SEPARATOR, weights].concat()
}

/// Values that break a config or header.
fn json_edge(rng: &mut Rng, old: &serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    let n = old.as_u64().unwrap_or(0);
    match rng.below(14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(n + 1),
        3 => json!(n.saturating_sub(1)),
        4 => json!(n.saturating_mul(2)),
        5 => json!(n / 2),
        6 => json!(*rng.pick(SIZES)),
        7 => json!(1.5),
        8 => json!("x"),
        9 => serde_json::Value::Null,
        10 => json!([1, 2]),
        11 => json!({}),
        12 => json!(*rng.pick(&["BF16", "F16", "F32", "U8", "U32", "I64", "F8_E4M3", "E8M0", "BOOL"])),
        _ => json!(true),
    }
}

/// Mutates one value somewhere in `v` (an object or array, recursively), or removes or adds
/// an entry.
fn mutate_json_value(rng: &mut Rng, v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value as J;
    match v {
        J::Object(map) if !map.is_empty() => {
            let i = rng.below(map.len());
            let key = map.keys().nth(i).cloned().unwrap_or_default();
            match rng.below(10) {
                0 => {
                    map.remove(&key);
                }
                1 if depth == 0 => {
                    let (k, val) = match rng.below(4) {
                        0 => ("quantization_config", serde_json::json!({"quant_method": "mxfp4"})),
                        1 => ("quantization", serde_json::json!({"group_size": 64, "bits": 4})),
                        2 => ("tie_word_embeddings", serde_json::json!(true)),
                        _ => (
                            "architectures",
                            serde_json::json!([*rng.pick(&[
                                "LlamaForCausalLM",
                                "GptOssForCausalLM",
                                "MixtralForCausalLM",
                                "X"
                            ])]),
                        ),
                    };
                    map.insert(k.into(), val);
                }
                _ => {
                    let child = map.get_mut(&key).expect("a key of the map");
                    if (child.is_object() || child.is_array()) && depth < 3 && rng.below(3) > 0 {
                        mutate_json_value(rng, child, depth + 1);
                    } else {
                        *child = json_edge(rng, child);
                    }
                }
            }
        }
        J::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            if rng.below(5) == 0 {
                items.remove(i);
            } else {
                items[i] = json_edge(rng, &items[i]);
            }
        }
        other => *other = json_edge(rng, other),
    }
}

/// One structure-aware mutant of a checkpoint input: `config.json` or the safetensors JSON
/// header edited (a value, an entry removed or added), or the tensor bytes changed.
pub fn mutate_checkpoint(data: &[u8], seed: u64) -> Option<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let (config, weights) = split_checkpoint(data);
    let mut config: serde_json::Value = serde_json::from_slice(config).ok()?;
    let mut weights = weights.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(3) {
            0 => mutate_json_value(&mut rng, &mut config, 0),
            1 => {
                let n = u64::from_le_bytes(weights.get(..8)?.try_into().ok()?) as usize;
                let mut header: serde_json::Value = serde_json::from_slice(weights.get(8..8 + n)?).ok()?;
                mutate_json_value(&mut rng, &mut header, 0);
                let mut text = serde_json::to_vec(&header).ok()?;
                text.resize(text.len().next_multiple_of(8), b' ');
                let body = weights.get(8 + n..)?.to_vec();
                weights = [(text.len() as u64).to_le_bytes().as_slice(), &text, &body].concat();
            }
            _ => {
                for _ in 0..1 + rng.below(4) {
                    if weights.len() > 4 {
                        let at = rng.below(weights.len() - 3);
                        let v = (*rng.pick(FLOATS) as f32).to_le_bytes();
                        weights[at..at + 2].copy_from_slice(&v[2..]);
                    }
                }
            }
        }
    }
    Some(join_checkpoint(&serde_json::to_vec_pretty(&config).ok()?, &weights))
}
