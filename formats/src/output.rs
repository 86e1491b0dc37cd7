//! Output files written at positions into temporaries beside their targets ([`crate::temp`]),
//! moved into place only when complete: a failed or interrupted run leaves nothing at an
//! output path, and nothing of its own in the output folder.
//!
//! - Shards of a planned output are opened when first written, not all at once, and parked
//!   (given a temporary name and closed) when more are open than the file descriptor limit
//!   allows, so a split into thousands of shards works under the usual limit.
//! - Committing checks, under the temporaries' registry lock, that no input changed while
//!   being read ([`crate::inputs`]) and that no target is an input, then moves every file
//!   into place, last shard first (a loader that opens the first shard finds the whole set),
//!   then removes the old shards of the set a split output replaces.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::inputs;
use crate::target::{check_final_file, parent_dir, split_members};
use crate::temp::{self, Named, TempFile};

fn final_name(path: &Path) -> Result<&OsStr> {
    path.file_name().ok_or_else(|| Error::plan(path, "the output path has no file name"))
}

/// The error for a failed write of `data` to `path`: a read fault in a mapped input
/// (`EFAULT`: it was truncated) names that input.
fn write_error(path: &Path, e: io::Error, data: &[u8]) -> Error {
    if e.raw_os_error() == Some(libc::EFAULT)
        && let Some(input) = inputs::fault_in_input(data)
    {
        return Error::InputChanged { path: input };
    }
    Error::io(path, e)
}

/// How many output files may hold a descriptor at once: a share of the soft limit on open
/// files, between 2 and 256.
fn open_budget() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit to write into.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let soft = if r == 0 { limit.rlim_cur } else { 1024 };
    (soft.saturating_sub(32) / 2).clamp(2, 256) as usize
}

/// A file being written. Dropping it without [`OutputFile::commit`] deletes it.
pub struct OutputFile {
    temp: TempFile,
    /// Writes to one file serialize in the kernel (the inode lock), where waiting threads
    /// spin; taking this lock first lets them sleep instead, leaving the CPU to the threads
    /// that are computing.
    writing: Mutex<()>,
    path: PathBuf,
}

impl OutputFile {
    /// Creates a temporary file of `len` bytes (zero-filled, sparse) in the folder of `path`.
    /// Refuses a `path` that names a folder or something other than a regular file.
    pub fn create(path: &Path, len: u64) -> Result<OutputFile> {
        check_final_file(path)?;
        let temp = TempFile::create(parent_dir(path), final_name(path)?).map_err(|e| Error::io(path, e))?;
        temp.file().and_then(|f| f.set_len(len)).map_err(|e| Error::io(path, e))?;
        Ok(OutputFile { temp, writing: Mutex::new(()), path: path.to_path_buf() })
    }

    /// A temporary file holding exactly `bytes`, in the folder of `path`, not yet committed
    /// ([`OutputFile::commit`] puts it in place): a small whole file (a report, an index).
    ///
    /// Errors: as [`OutputFile::create`], or the write failing (disk full), naming `path`.
    pub fn with_bytes(path: &Path, bytes: &[u8]) -> Result<OutputFile> {
        let file = OutputFile::create(path, bytes.len() as u64)?;
        file.write_at(bytes, 0)?;
        Ok(file)
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` at `offset` (positional: callable from several threads at once).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        let _turn = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let file = self.temp.file().map_err(|e| Error::io(&self.path, e))?;
        file.write_all_at(bytes, offset).map_err(|e| write_error(&self.path, e, bytes))
    }

    /// Flushes the data to disk and moves the file into place.
    pub fn commit(self) -> Result<()> {
        commit_files(vec![(self.temp, self.path)], None)
    }
}

/// Commits several files that form one output (shards): all are moved into place or none.
pub fn commit_all(files: Vec<OutputFile>) -> Result<()> {
    commit_files(files.into_iter().map(|f| (f.temp, f.path)).collect(), None)
}

/// Syncs every temporary, then under the registry lock checks the inputs and moves them into
/// place (last first); with `replaces_set` (the unsplit path of a split output), then removes
/// the other shards of the set of that stem.
fn commit_files(mut files: Vec<(TempFile, PathBuf)>, replaces_set: Option<&Path>) -> Result<()> {
    let budget = open_budget();
    for (i, (temp, path)) in files.iter_mut().enumerate() {
        temp.reopen().map_err(|e| Error::io(path, e))?;
        temp.file().and_then(File::sync_all).map_err(|e| Error::io(path, e))?;
        if i >= budget {
            temp.close().map_err(|e| Error::io(path, e))?;
        }
    }
    let new_names: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let old = match replaces_set {
        Some(unsplit) => old_set_members(unsplit, &new_names),
        None => Vec::new(),
    };
    let mut reg = temp::registry();
    inputs::check_unchanged()?;
    for path in new_names.iter().chain(&old) {
        if let Some(input) = inputs::input_at(path) {
            return Err(Error::plan(
                path,
                format!("is the input {}: moeq never writes over a file it reads", input.display()),
            ));
        }
    }
    for path in &new_names {
        check_final_file(path)?;
    }
    let mut placed: Vec<PathBuf> = Vec::new();
    let mut failed = None;
    let mut left = Vec::new();
    while let Some((temp, path)) = files.pop() {
        if failed.is_some() {
            left.push(temp);
            continue;
        }
        match temp.persist(&mut reg, &path) {
            Ok(()) => placed.push(path),
            Err(e) => failed = Some(Error::io(&path, e)),
        }
    }
    if let Some(e) = failed {
        for p in &placed {
            let _ = std::fs::remove_file(p);
        }
        drop(reg);
        drop(left);
        return Err(e);
    }
    for p in &old {
        let _ = std::fs::remove_file(p);
    }
    drop(reg);
    let mut dirs: Vec<&Path> = new_names.iter().map(|p| parent_dir(p)).collect();
    dirs.dedup();
    for d in dirs {
        temp::sync_dir(d);
    }
    Ok(())
}

/// The shards of the set of `unsplit`'s stem that a new set `new_names` replaces: files named
/// `STEM-NNNNN-of-MMMMM.gguf` that are not among the new names and are GGUF splits whose
/// `split.no`/`split.count` match their name (anything else of that name is left alone).
fn old_set_members(unsplit: &Path, new_names: &[PathBuf]) -> Vec<PathBuf> {
    split_members(unsplit)
        .into_iter()
        .filter(|m| !new_names.contains(&m.path))
        .filter(|m| crate::gguf::split::split_position(&m.path) == Some((m.number - 1, m.count)))
        .map(|m| m.path)
        .collect()
}

/// Where one planned tensor goes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    file: usize,
    offset: u64,
    size: u64,
}

/// One file of a planned output, created when first written.
struct PlannedFile {
    path: PathBuf,
    len: u64,
    header: Vec<u8>,
    /// Tensor bytes planned in it, and written so far.
    data: u64,
    written: AtomicU64,
    /// Whether its temporary holds a descriptor (changed under `state`'s lock).
    open: AtomicBool,
    last_use: AtomicU64,
    state: Mutex<Option<TempFile>>,
}

/// The tensor-data side of a planned output of one or more files: each tensor has a fixed
/// place, bytes are written there from any thread, and completeness is checked before the
/// files are committed.
pub(crate) struct PlannedOutput {
    files: Vec<PlannedFile>,
    slots: Vec<Slot>,
    names: Vec<String>,
    written: Vec<AtomicU64>,
    open_files: AtomicUsize,
    budget: usize,
    clock: AtomicU64,
    /// For a split output: the unsplit path, whose stem names the set it replaces.
    replaces_set: Option<PathBuf>,
}

impl PlannedOutput {
    pub(crate) fn new() -> PlannedOutput {
        PlannedOutput {
            files: Vec::new(),
            slots: Vec::new(),
            names: Vec::new(),
            written: Vec::new(),
            open_files: AtomicUsize::new(0),
            budget: open_budget(),
            clock: AtomicU64::new(0),
            replaces_set: None,
        }
    }

    /// Makes this a split output that replaces the set named after `unsplit`'s stem.
    pub(crate) fn replace_set(&mut self, unsplit: &Path) {
        self.replaces_set = Some(unsplit.to_path_buf());
    }

    /// Adds a file whose first bytes are `header`; returns its index. The file is created
    /// when first written.
    pub(crate) fn add_file(&mut self, path: &Path, len: u64, header: &[u8]) -> Result<usize> {
        check_final_file(path)?;
        final_name(path)?;
        self.files.push(PlannedFile {
            path: path.to_path_buf(),
            len,
            header: header.to_vec(),
            data: 0,
            written: AtomicU64::new(0),
            open: AtomicBool::new(false),
            last_use: AtomicU64::new(0),
            state: Mutex::new(None),
        });
        Ok(self.files.len() - 1)
    }

    /// Adds the next tensor: `size` bytes at absolute `offset` of file `file`.
    pub(crate) fn add_tensor(&mut self, file: usize, name: &str, offset: u64, size: u64) {
        self.slots.push(Slot { file, offset, size });
        self.names.push(name.to_string());
        self.written.push(AtomicU64::new(0));
        if let Some(f) = self.files.get_mut(file) {
            f.data += size;
        }
    }

    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
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
        if let Some(path) = inputs::changed() {
            return Err(Error::InputChanged { path });
        }
        self.write_in(slot.file, data, slot.offset + offset)?;
        self.written[index].fetch_add(data.len() as u64, Ordering::Relaxed);
        self.files[slot.file].written.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(path) = inputs::changed() {
            return Err(Error::InputChanged { path });
        }
        Ok(())
    }

    /// Writes into file `i`, creating or reopening its temporary first.
    fn write_in(&self, i: usize, data: &[u8], at: u64) -> Result<()> {
        let f = &self.files[i];
        let mut state = f.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.as_ref().is_some_and(TempFile::is_open) {
            self.make_room(i);
            match state.as_mut() {
                Some(temp) => temp.reopen().map_err(|e| Error::io(&f.path, e))?,
                None => *state = Some(Self::start(f)?),
            }
            f.open.store(true, Ordering::Relaxed);
            self.open_files.fetch_add(1, Ordering::Relaxed);
        }
        f.last_use.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let temp = state.as_ref().ok_or_else(|| Error::plan(&f.path, "internal error: no temporary"))?;
        let file = temp.file().map_err(|e| Error::io(&f.path, e))?;
        file.write_all_at(data, at).map_err(|e| write_error(&f.path, e, data))
    }

    /// Creates file `f`'s temporary with its length and header.
    fn start(f: &PlannedFile) -> Result<TempFile> {
        let temp = TempFile::create(parent_dir(&f.path), final_name(&f.path)?).map_err(|e| Error::io(&f.path, e))?;
        let file = temp.file().map_err(|e| Error::io(&f.path, e))?;
        file.set_len(f.len).map_err(|e| Error::io(&f.path, e))?;
        file.write_all_at(&f.header, 0).map_err(|e| Error::io(&f.path, e))?;
        Ok(temp)
    }

    /// Parks open files (other than `except`) until fewer than the budget are open: finished
    /// files first, then the least recently written. Files busy in another thread (being
    /// written, or parked by another thread at this moment) are passed over for the next;
    /// only when every other open file is busy does the budget, a soft limit well under the
    /// real one, stay exceeded for a moment.
    fn make_room(&self, except: usize) {
        let mut busy: Vec<usize> = Vec::new();
        while self.open_files.load(Ordering::Relaxed) >= self.budget {
            let victim = self
                .files
                .iter()
                .enumerate()
                .filter(|(j, f)| *j != except && !busy.contains(j) && f.open.load(Ordering::Relaxed))
                .min_by_key(|(_, f)| (f.written.load(Ordering::Relaxed) < f.data, f.last_use.load(Ordering::Relaxed)));
            let Some((j, f)) = victim else {
                return;
            };
            let Ok(mut state) = f.state.try_lock() else {
                busy.push(j);
                continue;
            };
            if let Some(temp) = state.as_mut()
                && temp.is_open()
            {
                if temp.close().is_err() {
                    busy.push(j);
                    continue;
                }
                f.open.store(false, Ordering::Relaxed);
                self.open_files.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Checks that every tensor was written in full, then commits all files plus `extra`.
    pub(crate) fn finish(self, extra: Option<OutputFile>) -> Result<()> {
        for (index, slot) in self.slots.iter().enumerate() {
            let written = self.written[index].load(Ordering::Relaxed);
            if written != slot.size {
                return Err(self.error(index, format!("{written} of {} bytes were written", slot.size)));
            }
        }
        inputs::check_unchanged()?;
        let mut temps = Vec::with_capacity(self.files.len() + 1);
        for f in self.files {
            let state = f.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            let temp = match state {
                Some(temp) => temp,
                // Nothing was written to it (its tensors are empty): the header is all.
                None => {
                    let mut temp = Self::start(&f)?;
                    if temps.len() >= self.budget {
                        temp.close().map_err(|e| Error::io(&f.path, e))?;
                    }
                    temp
                }
            };
            temps.push((temp, f.path));
        }
        temps.extend(extra.map(|x| (x.temp, x.path)));
        commit_files(temps, self.replaces_set.as_deref())
    }

    fn error(&self, index: usize, message: String) -> Error {
        let file = self.slots.get(index).map_or(0, |s| s.file);
        let path = self.files.get(file).map_or_else(PathBuf::new, |f| f.path.clone());
        let name = self.names.get(index).map_or("?", String::as_str);
        Error::plan(&path, format!("tensor {index} '{name}' {message}"))
    }
}

/// An output folder built under a temporary name beside `path` and renamed into place only
/// when complete; dropping it without [`OutputDir::commit`] deletes it and all it holds.
pub struct OutputDir {
    tmp: Named,
    path: PathBuf,
}

impl OutputDir {
    /// Creates the temporary folder. Refuses when `path` exists already.
    pub fn create(path: &Path) -> Result<OutputDir> {
        crate::target::check_path(path, crate::target::OutputKind::Folder)?;
        let name = path.file_name().ok_or_else(|| Error::plan(path, "the output path has no folder name"))?;
        let tmp = temp::create_dir(parent_dir(path), name).map_err(|e| Error::io(path, e))?;
        Ok(OutputDir { tmp, path: path.to_path_buf() })
    }

    /// Where files go while the folder is being built.
    pub fn staging(&self) -> &Path {
        self.tmp.path()
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the folder into place (after checking that no input changed while being
    /// read, and that nothing appeared at the path meanwhile).
    pub fn commit(self) -> Result<()> {
        temp::sync_dir(self.tmp.path());
        let mut reg = temp::registry();
        inputs::check_unchanged()?;
        if std::fs::symlink_metadata(&self.path).is_ok() {
            return Err(Error::plan(&self.path, "appeared while the folder was being built; nothing was replaced"));
        }
        self.tmp.rename(&mut reg, &self.path).map_err(|e| Error::io(&self.path, e))?;
        drop(reg);
        temp::sync_dir(parent_dir(&self.path));
        Ok(())
    }
}
