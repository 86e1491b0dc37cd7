//! Output files written at positions into a temporary file beside the target, renamed into
//! place only when complete: a failed or interrupted run leaves nothing at the output path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A file being written. Dropping it without [`OutputFile::commit`] deletes it.
pub struct OutputFile {
    file: File,
    /// Writes to one file serialize in the kernel (the inode lock), where waiting threads
    /// spin; taking this lock first lets them sleep instead, leaving the CPU to the threads
    /// that are computing.
    writing: Mutex<()>,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl OutputFile {
    /// Creates a temporary file of `len` bytes (zero-filled, sparse) in the folder of `path`.
    pub fn create(path: &Path, len: u64) -> Result<OutputFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name =
            path.file_name().ok_or_else(|| Error::plan(path, "the output path has no file name"))?.to_string_lossy();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::plan(path, format!("the folder {} does not exist", dir.display())));
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.moeq-{}-{n}.tmp", std::process::id()));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let out = OutputFile { file, writing: Mutex::new(()), tmp, path: path.to_path_buf(), committed: false };
        out.file.set_len(len).map_err(|e| Error::io(&out.tmp, e))?;
        Ok(out)
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` at `offset` (positional: callable from several threads at once).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        let _turn = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.file.write_all_at(bytes, offset).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the data to disk and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Commits several files that form one output (shards). If one fails, those already renamed
/// into place are removed again, so the output is all there or not there.
pub fn commit_all(files: Vec<OutputFile>) -> Result<()> {
    let mut done: Vec<PathBuf> = Vec::new();
    for file in files {
        let path = file.path().to_path_buf();
        if let Err(e) = file.commit() {
            for p in &done {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        done.push(path);
    }
    Ok(())
}

/// Where one planned tensor goes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    file: usize,
    offset: u64,
    size: u64,
}

/// The tensor-data side of a planned output of one or more files: each tensor has a fixed
/// place, bytes are written there from any thread, and completeness is checked before the
/// files are committed.
pub(crate) struct PlannedOutput {
    files: Vec<OutputFile>,
    slots: Vec<Slot>,
    names: Vec<String>,
    written: Vec<AtomicU64>,
}

impl PlannedOutput {
    pub(crate) fn new() -> PlannedOutput {
        PlannedOutput { files: Vec::new(), slots: Vec::new(), names: Vec::new(), written: Vec::new() }
    }

    /// Adds a file whose first bytes are `header`; returns its index.
    pub(crate) fn add_file(&mut self, path: &Path, len: u64, header: &[u8]) -> Result<usize> {
        let file = OutputFile::create(path, len)?;
        file.write_at(header, 0)?;
        self.files.push(file);
        Ok(self.files.len() - 1)
    }

    /// Adds the next tensor: `size` bytes at absolute `offset` of file `file`.
    pub(crate) fn add_tensor(&mut self, file: usize, name: &str, offset: u64, size: u64) {
        self.slots.push(Slot { file, offset, size });
        self.names.push(name.to_string());
        self.written.push(AtomicU64::new(0));
    }

    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path().to_path_buf()).collect()
    }

    pub(crate) fn tensor_size(&self, index: usize) -> u64 {
        self.slots.get(index).map_or(0, |s| s.size)
    }

    pub(crate) fn write_tensor(&self, index: usize, data: &[u8]) -> Result<()> {
        let size = self.tensor_size(index);
        if data.len() as u64 != size {
            return Err(self.error(index, format!("data is {} bytes, the plan says {size}", data.len())));
        }
        self.write_tensor_part(index, 0, data)
    }

    pub(crate) fn write_tensor_part(&self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        let Some(slot) = self.slots.get(index).copied() else {
            return Err(self.error(index, "is not in the plan".into()));
        };
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > slot.size) {
            return Err(
                self.error(index, format!("{} bytes at offset {offset} overrun its {} bytes", data.len(), slot.size))
            );
        }
        self.files[slot.file].write_at(data, slot.offset + offset)?;
        self.written[index].fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Checks that every tensor was written in full, then commits all files plus `extra`.
    pub(crate) fn finish(self, extra: Option<OutputFile>) -> Result<()> {
        for (index, slot) in self.slots.iter().enumerate() {
            let written = self.written[index].load(Ordering::Relaxed);
            if written != slot.size {
                return Err(self.error(index, format!("{written} of {} bytes were written", slot.size)));
            }
        }
        let mut all = self.files;
        all.extend(extra);
        commit_all(all)
    }

    fn error(&self, index: usize, message: String) -> Error {
        let file = self.slots.get(index).map_or(0, |s| s.file);
        let path = self.files.get(file).map_or_else(PathBuf::new, |f| f.path().to_path_buf());
        let name = self.names.get(index).map_or("?", String::as_str);
        Error::plan(&path, format!("tensor {index} '{name}' {message}"))
    }
}

/// An output folder built under a temporary name beside `path` and renamed into place only
/// when complete; dropping it without [`OutputDir::commit`] deletes it and all it holds.
pub struct OutputDir {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl OutputDir {
    /// Creates the temporary folder. Refuses when `path` exists already.
    pub fn create(path: &Path) -> Result<OutputDir> {
        if path.exists() {
            return Err(Error::plan(path, "exists already; remove it or choose another output folder"));
        }
        let name =
            path.file_name().ok_or_else(|| Error::plan(path, "the output path has no folder name"))?.to_string_lossy();
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(Error::plan(path, format!("the folder {} does not exist", parent.display())));
        }
        let tmp = parent.join(format!(".{name}.moeq-{}.tmp", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(OutputDir { tmp, path: path.to_path_buf(), committed: false })
    }

    /// Where files go while the folder is being built.
    pub fn staging(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the folder into place.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
