//! Errors of the formats crate. Every error names the file it is about and what is wrong.

use std::io;
use std::path::{Path, PathBuf};

/// What is wrong inside GGUF bytes (the file is named by [`Error::Gguf`]).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum GgufError {
    #[error("the file ends inside {what} (needs {needed} bytes at offset {offset}, has {available})")]
    Truncated { what: String, offset: u64, needed: u64, available: u64 },
    #[error("bad magic {found:02x?}: not a GGUF file (expected \"GGUF\")")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (moeq reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("a big-endian GGUF of unsupported version {0} (moeq reads versions 2 and 3, in either byte order)")]
    UnsupportedBigEndianVersion(u32),
    #[error(
        "big-endian GGUF: tensor '{tensor}' has type {ggml_type}, whose byte order in big-endian files gguf-py does not define (moeq reads big-endian F32, F16, BF16, F64, I8-I64, Q4_0, Q8_0, Q4_K, Q6_K, TQ2_0, Q1_0, MXFP4 and NVFP4 tensors); convert it with gguf-py's gguf_convert_endian.py on a big-endian machine"
    )]
    BigEndianType { tensor: String, ggml_type: String },
    #[error("{what} count {count} is impossible: only {available} bytes are left in the file (truncated or corrupt)")]
    CountTooLarge { what: &'static str, count: u64, available: u64 },
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    TooLong { what: String, len: u64, max: u64 },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("key/value pair {index} has an empty key")]
    EmptyKey { index: u64 },
    #[error("duplicate key '{0}'")]
    DuplicateKey(String),
    #[error("key '{key}' has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("key '{key}' is a nested array, which GGUF does not allow")]
    NestedArray { key: String },
    #[error("key 'general.alignment' {problem}")]
    BadAlignment { problem: String },
    #[error("tensor {index} name is {len} bytes long; ggml allows at most 63")]
    TensorNameTooLong { index: u64, len: u64 },
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),
    #[error("tensor '{tensor}' has {n_dims} dimensions; ggml allows at most 4")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor '{tensor}' has dimension {dim} = {value}, which is negative as a ggml int64")]
    NegativeDim { tensor: String, dim: usize, value: u64 },
    #[error("tensor '{tensor}' has shape {ne:?} whose element count overflows int64")]
    ShapeOverflow { tensor: String, ne: Vec<u64> },
    #[error("tensor '{tensor}' has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error(
        "tensor '{tensor}' of type {ggml_type} has rows of {ne0} elements, not a multiple of the block size {block}"
    )]
    PartialBlock { tensor: String, ggml_type: String, ne0: u64, block: u64 },
    #[error(
        "tensor '{tensor}' has offset {offset}, expected {expected} (tensor data must follow the infos in order, each padded to the alignment)"
    )]
    BadOffset { tensor: String, offset: u64, expected: u64 },
    #[error("tensor '{tensor}' data ends at byte {end}, past the end of the file ({file_len} bytes)")]
    DataOutOfBounds { tensor: String, end: u64, file_len: u64 },
}

/// What is wrong inside a safetensors file or folder (named by [`Error::Safetensors`]).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum SafetensorsError {
    #[error("invalid header: {0}")]
    Header(String),
    #[error("tensor '{0}' appears in more than one shard")]
    DuplicateTensor(String),
    #[error("the index names tensor '{tensor}' in shard '{shard}', but that shard does not hold it")]
    IndexedTensorMissing { tensor: String, shard: String },
    #[error("invalid index: {0}")]
    Index(String),
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum Error {
    // The inner errors are part of the message, not `source()`, so a printed error chain
    // does not repeat them.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: invalid GGUF: {problem}", path.display())]
    Gguf { path: PathBuf, problem: GgufError },
    #[error("{}: {problem}", path.display())]
    Safetensors { path: PathBuf, problem: SafetensorsError },
    /// A problem with a set of files taken together (split GGUFs, shard folders).
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    /// A write plan that cannot be written (bad names, shapes, sizes), or an output path
    /// that must not be written.
    #[error("{}: cannot write: {message}", path.display())]
    Plan { path: PathBuf, message: String },
    /// An input was truncated or rewritten while the run read it: whatever was computed from
    /// it is void, and nothing was written.
    #[error(
        "{}: changed while being read (truncated or rewritten by another program, or unreadable): moeq stopped and wrote nothing",
        path.display()
    )]
    InputChanged { path: PathBuf },
}

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), error: source }
    }

    pub(crate) fn model(path: &Path, message: impl Into<String>) -> Error {
        Error::Model { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn plan(path: &Path, message: impl Into<String>) -> Error {
        Error::Plan { path: path.to_path_buf(), message: message.into() }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
