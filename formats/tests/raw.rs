//! A GGUF byte builder that can write anything, including what no valid writer would.

/// A metadata record as raw parts.
pub struct RawKv {
    pub key: Vec<u8>,
    /// Type id followed by the payload.
    pub body: Vec<u8>,
}

impl RawKv {
    pub fn u32(key: &str, v: u32) -> RawKv {
        let mut body = 4u32.to_le_bytes().to_vec();
        body.extend(v.to_le_bytes());
        RawKv { key: key.as_bytes().to_vec(), body }
    }

    pub fn string(key: &str, v: &str) -> RawKv {
        let mut body = 8u32.to_le_bytes().to_vec();
        body.extend((v.len() as u64).to_le_bytes());
        body.extend(v.as_bytes());
        RawKv { key: key.as_bytes().to_vec(), body }
    }

    pub fn raw(key: &str, body: Vec<u8>) -> RawKv {
        RawKv { key: key.as_bytes().to_vec(), body }
    }
}

/// A tensor info as raw parts.
pub struct RawTensor {
    pub name: Vec<u8>,
    pub ne: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

impl RawTensor {
    pub fn f32(name: &str, ne: &[u64], offset: u64) -> RawTensor {
        RawTensor { name: name.as_bytes().to_vec(), ne: ne.to_vec(), type_id: 0, offset }
    }
}

/// A whole file. Counts default to the real lengths; set them to lie.
pub struct RawGguf {
    pub magic: [u8; 4],
    pub version: u32,
    pub n_tensors: Option<u64>,
    pub n_kv: Option<u64>,
    pub kvs: Vec<RawKv>,
    pub tensors: Vec<RawTensor>,
    pub alignment: usize,
    pub data: Vec<u8>,
}

impl Default for RawGguf {
    fn default() -> RawGguf {
        RawGguf {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![RawKv::string("general.architecture", "llama")],
            tensors: vec![RawTensor::f32("a", &[4, 2], 0), RawTensor::f32("b", &[8], 32)],
            alignment: 32,
            data: vec![0x3f; 64],
        }
    }
}

impl RawGguf {
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.magic.to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            out.extend((kv.key.len() as u64).to_le_bytes());
            out.extend(&kv.key);
            out.extend(&kv.body);
        }
        for t in &self.tensors {
            out.extend((t.name.len() as u64).to_le_bytes());
            out.extend(&t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.type_id.to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().next_multiple_of(self.alignment), 0);
        }
        out.extend(&self.data);
        out
    }
}
