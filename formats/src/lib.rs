//! moeq-formats: safetensors and GGUF reading and writing, and nothing else.
//!
//! - Readers are zero-copy over memory maps, parse only headers, and validate every size and
//!   offset a file claims before trusting it (hostile input gets an [`Error`], never a panic).
//! - Writers work from a plan: names, types, shapes and metadata are fixed first, headers
//!   are written, then tensor data goes to its offset with positional writes, from any
//!   thread, into a temporary file renamed into place when complete.
#![deny(missing_docs)]

pub mod error;
pub mod gguf;
pub mod mapped;
pub mod output;
pub mod safetensors;

pub use error::{Error, GgufError, Result, SafetensorsError};
pub use mapped::FileBytes;
