//! Read-only file bytes: a memory map for real files, an owned buffer for tests and fuzzing.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

use crate::error::{Error, Result};
use crate::inputs::{Registration, register};

/// The bytes of one input file. Mapped files are read lazily by the OS: touching only a
/// header reads only the header's pages.
pub enum FileBytes {
    /// A read-only memory map of the file, registered as an input of the run
    /// ([`crate::inputs`]) while it lives.
    Mapped(MappedInput),
    /// Bytes already in memory.
    Owned(Vec<u8>),
}

/// A read-only map of an input file, registered with [`crate::inputs`].
pub struct MappedInput {
    // Dropped first: the registration ends before the range is unmapped.
    _registration: Registration,
    map: Mmap,
}

impl FileBytes {
    /// Maps `path` read-only and registers it as an input of this run.
    pub fn map(path: &Path) -> Result<FileBytes> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Self::map_file(&file, path, true)
    }

    /// Maps an open file read-only, named `path` in errors. `tracked`: an input of the run
    /// (checked for changes and never replaced by an output), rather than moeq's own
    /// temporary copy.
    pub(crate) fn map_file(file: &File, path: &Path, tracked: bool) -> Result<FileBytes> {
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::model(path, "not a regular file"));
        }
        // SAFETY: the map is read-only, and moeq never writes to a file it has mapped: outputs
        // go to new temporary files moved into place, and no output may be an input
        // (`crate::target`, checked again at commit). Another program may still change the
        // file while it is mapped, which every mmap-based reader must live with (memmap2
        // documents it: in Rust's model, memory behind a shared slice must not change). moeq
        // contains the consequences: truncation makes reads past the new end fault (SIGBUS),
        // and the guard in `crate::inputs` maps zeros there and marks the input changed;
        // rewrites in place are caught by the size and time check at commit; in both cases
        // every writer fails before committing, so nothing computed from changed bytes is
        // kept. The bytes are only ever read as untrusted data (every value of a u8 is valid,
        // and readers bounds-check what they derive from them, with indexing that panics
        // rather than reads out of bounds).
        let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        let registration = register(path, &meta, (map.as_ptr() as usize, map.len()), tracked);
        Ok(FileBytes::Mapped(MappedInput { _registration: registration, map }))
    }

    /// Hints that `range` will be read soon (a no-op for owned bytes).
    pub fn will_need(&self, offset: usize, len: usize) {
        if let FileBytes::Mapped(MappedInput { map, .. }) = self {
            // Advice is only a hint; failure changes nothing but speed.
            let _ = map.advise_range(Advice::WillNeed, offset, len);
        }
    }

    /// Drops `range` from this process's resident memory once it has been read: the pages stay
    /// in the OS page cache, and reading them again maps them back. This keeps a conversion's
    /// resident size flat however large the input is (a no-op for owned bytes).
    pub fn release(&self, offset: usize, len: usize) {
        if let FileBytes::Mapped(MappedInput { map, .. }) = self {
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
            // from the map keeps its value. (It zeroes private anonymous memory, which the
            // SIGBUS guard maps over the part of a truncated input past its end; those pages
            // hold zeros already, and the run fails on that input.) Failure only costs memory.
            let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
        }
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(MappedInput { map, .. }) => map,
            FileBytes::Owned(bytes) => bytes,
        }
    }
}
