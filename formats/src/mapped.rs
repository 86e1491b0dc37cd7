//! Read-only file bytes: a memory map for real files, an owned buffer for tests and fuzzing.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::{Advice, Mmap};

use crate::error::{Error, Result};

/// The bytes of one input file. Mapped files are read lazily by the OS: touching only a
/// header reads only the header's pages.
pub enum FileBytes {
    /// A read-only memory map of the file.
    Mapped(Mmap),
    /// Bytes already in memory.
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps `path` read-only.
    pub fn map(path: &Path) -> Result<FileBytes> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::model(path, "not a regular file"));
        }
        // SAFETY: the map is read-only and private to this process. Another process truncating
        // or rewriting the file while it is mapped would invalidate it; like every mmap-based
        // model loader (llama.cpp, safetensors) we document that inputs must not change while
        // moeq runs. moeq itself never writes to a file it has mapped: outputs go to a new
        // temporary file that is renamed into place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes::Mapped(map))
    }

    /// Hints that `range` will be read soon (a no-op for owned bytes).
    pub fn will_need(&self, offset: usize, len: usize) {
        if let FileBytes::Mapped(map) = self {
            // Advice is only a hint; failure changes nothing but speed.
            let _ = map.advise_range(Advice::WillNeed, offset, len);
        }
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Owned(bytes) => bytes,
        }
    }
}
