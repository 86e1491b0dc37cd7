//! moeq-formats: safetensors and GGUF reading and writing, and nothing else.
//!
//! - Readers are zero-copy over memory maps, parse only headers, and validate every size and
//!   offset a file claims before trusting it (hostile input gets an [`Error`], never a panic).
//! - Writers work from a plan: names, types, shapes and metadata are fixed first, headers
//!   are written, then tensor data goes to its offset with positional writes, from any
//!   thread, into a temporary file moved into place when complete.
//! - The user's files are safe: [`target`] checks an output path before any work (never an
//!   input, never a device or folder by mistake), [`temp`] keeps temporaries invisible or
//!   removable, [`interrupt`] removes them on Ctrl-C, SIGTERM and SIGHUP, and [`inputs`]
//!   turns an input changed while being read into an error naming it.
#![deny(missing_docs)]

pub mod error;
pub mod gguf;
pub mod inputs;
pub mod interrupt;
pub mod mapped;
pub mod output;
pub mod safetensors;
pub mod target;
pub mod temp;

pub use error::{Error, GgufError, Result, SafetensorsError};
pub use mapped::FileBytes;
