//! Read-only file bytes: a memory map for real files, an owned buffer for tests and fuzzing.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

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

    /// Drops `range` from this process's resident memory once it has been read: the pages stay
    /// in the OS page cache, and reading them again maps them back. This keeps a conversion's
    /// resident size flat however large the input is (a no-op for owned bytes).
    pub fn release(&self, offset: usize, len: usize) {
        if let FileBytes::Mapped(map) = self {
            // A page fault maps more than its page: its neighbours ("fault-around") and, with
            // large page-cache folios (ext4, xfs on recent kernels), the whole folio, up to 2 MiB.
            // So reading a range maps a little around it: let that go as well, or some would
            // stay resident per range and add up over a whole model.
            const FAULT_AROUND: usize = 2 << 20;
            let start = offset.saturating_sub(FAULT_AROUND);
            let end = offset.saturating_add(len).saturating_add(FAULT_AROUND).min(map.len());
            let (offset, len) = (start, end.saturating_sub(start));
            if len == 0 {
                return;
            }
            // SAFETY: the map is a read-only shared mapping of a regular file. MADV_DONTNEED on
            // such a mapping only unmaps the pages from this process; the next access faults
            // them back in from the page cache with the same contents, so every slice borrowed
            // from the map keeps its value. (It would zero private anonymous or copy-on-write
            // memory, which this never is.) Failure only costs memory.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
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
