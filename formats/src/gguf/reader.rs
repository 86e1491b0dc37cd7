//! Zero-copy GGUF reader enforcing llama.cpp's reader rules (`ggml/src/gguf.cpp`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, GgufError, Result};
use crate::gguf::types::GgmlType;
use crate::gguf::value::{Array, Value, ValueType};
use crate::mapped::FileBytes;

/// `"GGUF"`.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_NAME` (names must be shorter, to leave room for the NUL).
pub const MAX_NAME_LEN: u64 = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// `GGUF_MAX_STRING_LENGTH` and `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_STRING_LEN: u64 = 1 << 30;
const MAX_ARRAY_LEN: u64 = 1 << 30;

/// One tensor info record.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor name (< 64 bytes).
    pub name: String,
    /// Dimensions, fastest-varying first (numpy shape reversed), as stored.
    pub ne: Vec<u64>,
    /// The ggml type.
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (without padding).
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// The numpy-order shape (slowest dimension first).
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
}

/// The byte order of a GGUF file's numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ByteOrder {
    /// Little-endian: what llama.cpp writes on every common machine, and all moeq writes.
    #[default]
    Little,
    /// Big-endian: written for big-endian machines (s390x) by gguf-py (`--bigendian`,
    /// `gguf_convert_endian.py`). moeq reads it as gguf-py does.
    Big,
}

impl ByteOrder {
    /// `little-endian` or `big-endian`.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        }
    }
}

/// Everything in a GGUF file before the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// The format version (2 or 3).
    pub version: u32,
    /// The byte order of the file's header (and tensor data) as stored.
    pub byte_order: ByteOrder,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// The alignment in force (`general.alignment` or 32).
    pub alignment: u64,
    /// File offset where the data section starts.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parses and validates the header of a whole GGUF file held in `file`.
    ///
    /// Only the header bytes are read; tensor data is bounds-checked against `file.len()`.
    pub fn parse(file: &[u8]) -> Result<GgufHeader, GgufError> {
        let mut c = Cursor { buf: file, pos: 0, big: false };
        let magic = c.take(4, || "the magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic.to_vec() });
        }
        // As gguf-py: a version whose low 16 bits are zero was written in the other byte order.
        let raw: [u8; 4] = c.array(|| "the version".into())?;
        let (version, byte_order) = match u32::from_le_bytes(raw) {
            v if v & 0xffff != 0 || v == 0 => (v, ByteOrder::Little),
            _ => (u32::from_be_bytes(raw), ByteOrder::Big),
        };
        if !(2..=3).contains(&version) {
            return Err(match byte_order {
                ByteOrder::Little => GgufError::UnsupportedVersion(version),
                ByteOrder::Big => GgufError::UnsupportedBigEndianVersion(version),
            });
        }
        c.big = byte_order == ByteOrder::Big;
        let n_tensors = c.u64(|| "the tensor count".into())?;
        let n_kv = c.u64(|| "the key/value count".into())?;
        // Each key/value pair takes at least 13 bytes, each tensor info at least 24.
        c.check_count("key/value", n_kv, 13)?;
        c.check_count("tensor", n_tensors, 24)?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut seen_keys = HashSet::new();
        for index in 0..n_kv {
            let key = c.string(|| format!("the key of key/value pair {index}"))?;
            if key.is_empty() {
                return Err(GgufError::EmptyKey { index });
            }
            if !seen_keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey(key));
            }
            let value = c.value(&key)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, Value::U32(a))) => {
                return Err(GgufError::BadAlignment { problem: format!("{a} is not a power of two") });
            }
            Some((_, v)) => {
                return Err(GgufError::BadAlignment { problem: format!("must be UINT32, found {}", v.type_label()) });
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut seen_names = HashSet::new();
        for index in 0..n_tensors {
            let info = c.tensor_info(index)?;
            if !seen_names.insert(info.name.clone()) {
                return Err(GgufError::DuplicateTensor(info.name));
            }
            tensors.push(info);
        }

        let data_offset = if n_tensors > 0 { pad(c.pos as u64, alignment) } else { c.pos as u64 };
        let file_len = file.len() as u64;
        let mut expected = 0u64;
        for t in &tensors {
            if t.offset != expected {
                return Err(GgufError::BadOffset { tensor: t.name.clone(), offset: t.offset, expected });
            }
            let end =
                data_offset.checked_add(t.offset).and_then(|o| o.checked_add(t.nbytes)).filter(|&end| end <= file_len);
            let Some(_) = end else {
                return Err(GgufError::DataOutOfBounds {
                    tensor: t.name.clone(),
                    end: data_offset.saturating_add(t.offset).saturating_add(t.nbytes),
                    file_len,
                });
            };
            // Cannot overflow: offset + nbytes <= file_len, and padding adds < alignment <= 2^31.
            expected = pad(t.offset + t.nbytes, alignment);
        }
        Ok(GgufHeader { version, byte_order, metadata, tensors, alignment, data_offset })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// Rounds `n` up to a multiple of `alignment` (a power of two).
pub(crate) fn pad(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Numbers are big-endian.
    big: bool,
}

/// Numbers read in either byte order.
trait Endian<const N: usize>: Sized {
    fn read(bytes: [u8; N], big: bool) -> Self;
}

macro_rules! endian {
    ($($t:ty),*) => {$(
        impl Endian<{ std::mem::size_of::<$t>() }> for $t {
            fn read(bytes: [u8; std::mem::size_of::<$t>()], big: bool) -> $t {
                if big { <$t>::from_be_bytes(bytes) } else { <$t>::from_le_bytes(bytes) }
            }
        }
    )*};
}

endian!(u8, i8, u16, i16, u32, i32, f32, u64, i64, f64);

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn num<T: Endian<N>, const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<T, GgufError> {
        let big = self.big;
        self.array(what).map(|b| T::read(b, big))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.num(what)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.num(what)
    }

    /// Rejects a count whose records, at `min_size` bytes each, cannot fit in the rest of the
    /// file, so nothing is ever allocated beyond what the file can hold.
    fn check_count(&self, what: &'static str, count: u64, min_size: u64) -> Result<(), GgufError> {
        if count.checked_mul(min_size).is_none_or(|n| n > self.remaining()) {
            return Err(GgufError::CountTooLarge { what, count, available: self.remaining() });
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&what)?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::TooLong { what: what(), len, max: MAX_STRING_LEN });
        }
        let bytes = self.take(len, &what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    fn value(&mut self, key: &str) -> Result<Value, GgufError> {
        let what = || format!("the value of key '{key}'");
        let type_id = self.u32(what)?;
        let ty =
            ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), type_id })?;
        if ty != ValueType::Array {
            return self.scalar(ty, key);
        }
        let elem_id = self.u32(what)?;
        let elem = ValueType::from_id(elem_id)
            .ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), type_id: elem_id })?;
        if elem == ValueType::Array {
            return Err(GgufError::NestedArray { key: key.to_string() });
        }
        let n = self.u64(what)?;
        if n > MAX_ARRAY_LEN {
            return Err(GgufError::TooLong { what: format!("array '{key}'"), len: n, max: MAX_ARRAY_LEN });
        }
        // Strings take at least their 8-byte length.
        let min = elem.fixed_size().unwrap_or(8) as u64;
        self.check_count("array element", n, min)?;
        self.array_of(elem, n as usize, key).map(Value::Array)
    }

    fn scalar(&mut self, ty: ValueType, key: &str) -> Result<Value, GgufError> {
        let what = || format!("the value of key '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.num(what)?),
            ValueType::I8 => Value::I8(self.num(what)?),
            ValueType::U16 => Value::U16(self.num(what)?),
            ValueType::I16 => Value::I16(self.num(what)?),
            ValueType::U32 => Value::U32(self.num(what)?),
            ValueType::I32 => Value::I32(self.num(what)?),
            ValueType::F32 => Value::F32(self.num(what)?),
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.num(what)?),
            ValueType::I64 => Value::I64(self.num(what)?),
            ValueType::F64 => Value::F64(self.num(what)?),
            ValueType::Array => {
                return Err(GgufError::NestedArray { key: key.to_string() });
            }
        })
    }

    fn array_of(&mut self, elem: ValueType, n: usize, key: &str) -> Result<Array, GgufError> {
        let what = || format!("array '{key}'");
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                let bytes = self.take((n * SIZE) as u64, what)?;
                let big = self.big;
                Array::$variant(
                    bytes.chunks_exact(SIZE).map(|c| <$t>::read(c.try_into().unwrap_or_default(), big)).collect(),
                )
            }};
        }
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n as u64, what)?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => Array::Bool(self.take(n as u64, what)?.iter().map(|&b| b != 0).collect()),
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(|| format!("element {i} of array '{key}'"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                return Err(GgufError::NestedArray { key: key.to_string() });
            }
        })
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo, GgufError> {
        let name_len_at = self.pos;
        let len = self.u64(|| format!("the name of tensor {index}"))?;
        if len >= MAX_NAME_LEN {
            return Err(GgufError::TensorNameTooLong { index, len });
        }
        self.pos = name_len_at;
        let name = self.string(|| format!("the name of tensor {index}"))?;
        let what = || format!("the info of tensor '{name}'");
        let n_dims = self.u32(what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { tensor: name, n_dims });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for dim in 0..n_dims as usize {
            let value = self.u64(what)?;
            if value > i64::MAX as u64 {
                return Err(GgufError::NegativeDim { tensor: name, dim, value });
            }
            ne.push(value);
        }
        if ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none_or(|n| n > i64::MAX as u64) {
            return Err(GgufError::ShapeOverflow { tensor: name, ne });
        }
        let type_id = self.u32(what)?;
        let ggml_type =
            GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), type_id })?;
        let ne0 = ne.first().copied().unwrap_or(1);
        let nbytes = ggml_type.tensor_bytes(&ne).ok_or_else(|| GgufError::PartialBlock {
            tensor: name.clone(),
            ggml_type: ggml_type.to_string(),
            ne0,
            block: ggml_type.block_size(),
        })?;
        let offset = self.u64(what)?;
        Ok(TensorInfo { name, ne, ggml_type, offset, nbytes })
    }
}

/// One GGUF file: its parsed header over its (mapped) bytes.
///
/// A big-endian file is read as gguf-py reads it: its header values are decoded from their
/// byte order (and [`GgufHeader::byte_order`] says which it was), and its bytes are a
/// little-endian copy ([`crate::gguf::big_endian`]), so tensor data always comes out
/// little-endian, as llama.cpp and moeq use it. [`GgufFile::open_header`] skips that copy.
pub struct GgufFile {
    path: PathBuf,
    bytes: FileBytes,
    header: GgufHeader,
    /// Whether `bytes` are little-endian (false only for big-endian files opened with
    /// [`GgufFile::open_header`]).
    native: bool,
}

impl GgufFile {
    /// Maps and parses `path`. Reads only the header pages (a big-endian file is read whole,
    /// into a little-endian copy).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let bytes = FileBytes::map(path)?;
        Self::from_bytes(path, bytes)
    }

    /// Maps and parses `path` for its header only: the tensor data of a big-endian file stays
    /// in its byte order ([`GgufFile::data_is_native`] is false), for inspecting it without
    /// copying it.
    pub fn open_header(path: &Path) -> Result<GgufFile> {
        let bytes = FileBytes::map(path)?;
        let header = Self::parse(path, &bytes)?;
        let native = header.byte_order == ByteOrder::Little;
        Ok(GgufFile { path: path.to_path_buf(), bytes, header, native })
    }

    /// Parses `bytes`, naming them `path` in errors.
    pub fn from_bytes(path: &Path, bytes: FileBytes) -> Result<GgufFile> {
        let header = Self::parse(path, &bytes)?;
        let bytes = match header.byte_order {
            ByteOrder::Little => bytes,
            ByteOrder::Big => crate::gguf::big_endian::little_endian_copy(path, &header, &bytes)?,
        };
        Ok(GgufFile { path: path.to_path_buf(), bytes, header, native: true })
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<GgufHeader> {
        GgufHeader::parse(bytes).map_err(|problem| Error::Gguf { path: path.to_path_buf(), problem })
    }

    /// Whether the bytes (tensor data) are little-endian, as [`GgufFile::tensor_data`]
    /// promises: always, except for a big-endian file opened with [`GgufFile::open_header`].
    pub fn data_is_native(&self) -> bool {
        self.native
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The data of tensor `index` (zero-copy; bounds were checked when parsing).
    pub fn tensor_data(&self, index: usize) -> &[u8] {
        let Some(t) = self.header.tensors.get(index) else {
            return &[];
        };
        let start = (self.header.data_offset + t.offset) as usize;
        &self.bytes[start..start + t.nbytes as usize]
    }

    /// The whole file's bytes.
    pub fn file_bytes(&self) -> &FileBytes {
        &self.bytes
    }

    /// The absolute file offset of tensor `index`'s data.
    pub fn tensor_start(&self, index: usize) -> u64 {
        self.header.tensors.get(index).map_or(0, |t| self.header.data_offset + t.offset)
    }

    /// Hints that the data of tensor `index` will be read soon.
    pub fn prefetch(&self, index: usize) {
        if let Some(t) = self.header.tensors.get(index) {
            self.bytes.will_need((self.header.data_offset + t.offset) as usize, t.nbytes as usize);
        }
    }
}
