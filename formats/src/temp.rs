//! Temporary files and folders beside an output, and what happens to them when a run ends
//! early.
//!
//! - A temporary file is invisible where the OS allows: on Linux it is opened with
//!   `O_TMPFILE` (a file with no name, freed by the kernel when the process ends, however it
//!   ends, `kill -9` included) and given a name only when it is complete (`linkat` through
//!   `/proc/self/fd`). Where `O_TMPFILE` is not supported (some filesystems answer
//!   `EOPNOTSUPP`, old kernels `EISDIR`), and for folders, the temporary gets a name:
//!   `.OUT.moeq-PID-START-HOST-TOKEN.tmp`, which says which process made it (its id, its
//!   start time in clock ticks since boot, a hash of the boot id, PID namespace and host name)
//!   and ends in a random token, so names never collide, even when PIDs repeat.
//! - Named temporaries are listed in a registry while they live. An interrupt
//!   ([`crate::interrupt`]) takes the registry's lock, removes them all and ends the process
//!   still holding the lock, so no temporary can be created or renamed into place meanwhile.
//! - A run that was killed outright leaves its named temporaries behind: [`sweep`] finds those
//!   whose process is gone (same host token, no process with that id and start time) and
//!   removes them; temporaries of other machines or containers (another host token) and of
//!   older moeq versions (no start time in the name) are only reported.

use std::cell::{Cell, RefCell};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The named temporaries alive in this process.
pub(crate) struct Registry {
    live: Vec<(u64, PathBuf, bool)>,
    next: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { live: Vec::new(), next: 0 });

thread_local! {
    /// Whether this thread holds the registry lock.
    static HELD: Cell<bool> = const { Cell::new(false) };
    /// Temporaries dropped while this thread held the lock: removed when it lets go.
    static DEFERRED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The registry, locked. Creating, renaming and removing named temporaries happen under this
/// lock, so an interrupt that holds it sees a consistent set.
pub(crate) struct RegistryGuard {
    inner: MutexGuard<'static, Registry>,
}

/// Locks the registry (not re-entrant: a thread that holds it passes it down).
pub(crate) fn registry() -> RegistryGuard {
    let inner = REGISTRY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    HELD.with(|h| h.set(true));
    RegistryGuard { inner }
}

impl std::ops::Deref for RegistryGuard {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.inner
    }
}

impl std::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.inner
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        for id in DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut())) {
            self.inner.remove(id);
        }
        HELD.with(|h| h.set(false));
    }
}

impl Registry {
    fn add(&mut self, path: PathBuf, dir: bool) -> u64 {
        self.next += 1;
        self.live.push((self.next, path, dir));
        self.next
    }

    fn forget(&mut self, id: u64) {
        self.live.retain(|(i, _, _)| *i != id);
    }

    /// Removes temporary `id` from disk and from the registry (nothing if already gone).
    fn remove(&mut self, id: u64) {
        if let Some(at) = self.live.iter().position(|(i, _, _)| *i == id) {
            let (_, path, dir) = self.live.swap_remove(at);
            remove_path(&path, dir);
        }
    }

    /// Removes every named temporary (files, and folders with what they hold). Returns how
    /// many there were. The caller keeps holding the lock.
    pub(crate) fn remove_all(&mut self) -> usize {
        let n = self.live.len();
        for (_, path, dir) in self.live.drain(..) {
            remove_path(&path, dir);
        }
        n
    }
}

fn remove_path(path: &Path, dir: bool) {
    if dir {
        remove_dir_retrying(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes a folder and its contents; retried because another thread may be adding a file to
/// it at that moment (`ENOTEMPTY`).
fn remove_dir_retrying(path: &Path) {
    for _ in 0..5 {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => continue,
            _ => return,
        }
    }
}

/// Who made a temporary: enough to tell later whether its process still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Maker {
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22); 0 when unknown.
    start: u64,
    /// Hash of the boot id, the PID namespace and the host name: PIDs and start times mean
    /// something only within one of those.
    host: u32,
}

fn me() -> Maker {
    static ME: OnceLock<Maker> = OnceLock::new();
    *ME.get_or_init(|| {
        let pid = std::process::id();
        let mut h = Fnv::new();
        h.add(std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim_ascii());
        h.add(&std::fs::read_link("/proc/self/ns/pid").map(|p| p.into_os_string().into_vec()).unwrap_or_default());
        h.add(&hostname());
        Maker { pid, start: start_time(pid).unwrap_or(0), host: h.finish() }
    })
}

fn hostname() -> Vec<u8> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what we pass; gethostname
    // writes at most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return Vec::new();
    }
    buf.iter().take_while(|&&b| b != 0).copied().collect()
}

/// 32-bit FNV-1a.
struct Fnv(u32);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0x811c_9dc5)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it exists and `/proc`
/// is there to say so.
fn start_time(pid: u32) -> Option<u64> {
    stat_of(pid).map(|(_, start)| start)
}

/// A process's state letter (field 3 of `/proc/PID/stat`: `Z` a zombie, `X` dead) and start
/// time (field 22).
fn stat_of(pid: u32) -> Option<(u8, u64)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count from the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let fields = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = fields.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// Whether the process that made a temporary still runs: `Some(false)` only when that is
/// certain.
fn alive(maker: Maker) -> Option<bool> {
    if let Some((state, start)) = stat_of(maker.pid) {
        // A zombie (killed, not yet reaped by its parent) writes nothing any more.
        return Some(!matches!(state, b'Z' | b'X') && (maker.start == 0 || start == maker.start));
    }
    if Path::new("/proc/self/stat").exists() {
        // /proc works, and has no such process.
        return Some(false);
    }
    // SAFETY: kill with signal 0 only checks whether the process exists; it sends nothing.
    let r = unsafe { libc::kill(maker.pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) { Some(false) } else { None }
}

/// A random 64-bit token (the kernel's generator; the clock and a counter when it fails).
fn token() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut bytes = [0u8; 8];
        // SAFETY: `bytes` is writable for the 8 bytes we pass.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
        if n == 8 {
            return u64::from_le_bytes(bytes);
        }
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut hi = Fnv::new();
    hi.add(&nanos.to_le_bytes());
    hi.add(&n.to_le_bytes());
    let mut lo = Fnv::new();
    lo.add(&std::process::id().to_le_bytes());
    lo.add(&n.to_le_bytes());
    lo.add(&nanos.to_be_bytes());
    (u64::from(hi.finish()) << 32) | u64::from(lo.finish())
}

/// Longest part of the output's name kept in a temporary's name (names are limited to 255
/// bytes).
const NAME_PART: usize = 120;

/// A fresh temporary name for `final_name`: `.NAME.moeq-PID-START-HOST-TOKEN.tmp`.
fn temp_name(final_name: &OsStr) -> OsString {
    let me = me();
    let bytes = final_name.as_bytes();
    let part = &bytes[..bytes.len().min(NAME_PART)];
    let mut name = b".".to_vec();
    name.extend_from_slice(part);
    name.extend_from_slice(format!(".moeq-{}-{}-{:08x}-{:016x}.tmp", me.pid, me.start, me.host, token()).as_bytes());
    OsString::from_vec(name)
}

/// What a name in an output folder says about the temporary it may be.
#[derive(Debug, PartialEq, Eq)]
enum TempNameKind {
    /// A temporary of this moeq, with its maker.
    Current(Maker),
    /// `.NAME.moeq-PID-N.tmp` or `.NAME.moeq-PID.tmp`: an older moeq's.
    Legacy,
}

fn parse_temp_name(name: &OsStr) -> Option<TempNameKind> {
    // The output's name (the part before ".moeq-") may be anything, even cut inside a UTF-8
    // sequence: parse from the end.
    let rest = name.as_bytes().strip_prefix(b".")?.strip_suffix(b".tmp")?;
    let marker = b".moeq-";
    let at = rest.windows(marker.len()).rposition(|w| w == marker)?;
    let tail = std::str::from_utf8(&rest[at + marker.len()..]).ok()?;
    let fields: Vec<&str> = tail.split('-').collect();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|c| c.is_ascii_hexdigit());
    match fields[..] {
        [pid, start, host, tok] if digits(pid) && digits(start) && hex(host, 8) && hex(tok, 16) => {
            Some(TempNameKind::Current(Maker {
                pid: pid.parse().ok()?,
                start: start.parse().ok()?,
                host: u32::from_str_radix(host, 16).ok()?,
            }))
        }
        [pid, n] if digits(pid) && digits(n) => Some(TempNameKind::Legacy),
        [pid] if digits(pid) => Some(TempNameKind::Legacy),
        _ => None,
    }
}

/// A temporary left in an output folder by a run that ended without cleaning up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Its path.
    pub path: PathBuf,
    /// Bytes it held (a folder: the files in it).
    pub bytes: u64,
    /// Whether it was removed (its process is gone); otherwise why not.
    pub removed: bool,
    /// Why it was kept, when it was.
    pub kept_because: Option<&'static str>,
}

/// Finds moeq temporaries in `dir` whose process is gone and removes them; reports those
/// that may belong to a run elsewhere (another machine or container sharing the folder) or
/// to an older moeq (which did not record enough to tell). Temporaries of runs still going
/// are left alone, silently.
pub fn sweep(dir: &Path) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let me = me();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(kind) = parse_temp_name(&name) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() && !meta.is_dir() {
            continue;
        }
        let bytes = if meta.is_dir() { folder_bytes(&path) } else { meta.len() };
        let kept_because = match kind {
            TempNameKind::Legacy => Some("left by an older moeq, which did not record whether its run is over"),
            TempNameKind::Current(maker) if maker.host != me.host => {
                Some("made by a moeq run in another container or on another machine, which may still be going")
            }
            TempNameKind::Current(maker) => match alive(maker) {
                Some(true) => continue,
                Some(false) => None,
                None => Some("its process cannot be checked"),
            },
        };
        let removed = kept_because.is_none() && {
            let _reg = registry();
            if meta.is_dir() { std::fs::remove_dir_all(&path).is_ok() } else { std::fs::remove_file(&path).is_ok() }
        };
        found.push(Leftover { path, bytes, removed, kept_because });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A named temporary file or folder: registered while it lives, removed when dropped unless
/// it was renamed into place.
pub(crate) struct Named {
    id: u64,
    path: PathBuf,
    done: bool,
}

impl Named {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `to`, under the registry lock the caller holds.
    pub(crate) fn rename(mut self, reg: &mut Registry, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        reg.forget(self.id);
        self.done = true;
        Ok(())
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if HELD.with(Cell::get) {
            // This thread holds the registry lock (a failed commit): removed when it lets go.
            DEFERRED.with(|d| d.borrow_mut().push(self.id));
        } else {
            registry().remove(self.id);
        }
    }
}

/// Tries names until one is free: `create` makes the file or folder at a path and fails with
/// `AlreadyExists` when the name is taken.
fn create_named(
    reg: &mut Registry,
    dir: &Path,
    final_name: &OsStr,
    is_dir: bool,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<Named> {
    let mut last = None;
    for _ in 0..64 {
        let path = dir.join(temp_name(final_name));
        match create(&path) {
            Ok(()) => {
                let id = reg.add(path.clone(), is_dir);
                return Ok(Named { id, path, done: false });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// Creates a named temporary folder beside `final_name` in `dir`.
pub(crate) fn create_dir(dir: &Path, final_name: &OsStr) -> io::Result<Named> {
    let mut reg = registry();
    create_named(&mut reg, dir, final_name, true, |p| std::fs::create_dir(p))
}

/// An append-only scratch file of f32 values (little-endian), made by [`scratch_file`] in the
/// system's temporary folder at the first append: where moeq puts what it computed and will
/// read back later (finished importance sums, GPTQ factors, routed expert inputs), so that
/// memory does not grow with the layers.
#[derive(Default)]
pub struct F32Spill {
    file: Option<std::sync::Arc<File>>,
    tried: bool,
    end: u64,
}

impl F32Spill {
    /// Appends `values`; returns the byte offset they start at, or `None` when the file cannot
    /// be made (tried once) or written (the caller keeps the values in memory then).
    pub fn append(&mut self, values: &[f32]) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() && !self.tried {
            self.tried = true;
            self.file = scratch_file(&std::env::temp_dir()).ok().map(std::sync::Arc::new);
        }
        let file = self.file.as_ref()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        file.write_all_at(&bytes, self.end).ok()?;
        let offset = self.end;
        self.end += bytes.len() as u64;
        Some(offset)
    }

    /// The file, once made (shared with readers that outlive this).
    pub fn file(&self) -> Option<&std::sync::Arc<File>> {
        self.file.as_ref()
    }

    /// Empties the file: later appends start again at offset 0, earlier offsets are void.
    pub fn rewind(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.set_len(0);
        }
        self.end = 0;
    }
}

/// `n` f32 values (little-endian) at byte `offset` of `file`.
///
/// Errors: the read fails or ends early.
pub fn read_f32_at(file: &File, offset: u64, n: usize) -> io::Result<Vec<f32>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; n * 4];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// A scratch file for data a run spills out of memory (read back by the same process): an
/// anonymous `O_TMPFILE` file in `dir` where the OS allows, otherwise a file created there
/// under a fresh name and unlinked at once, so nothing of it outlives the process.
///
/// Errors: the folder cannot hold a new file (missing, read-only, full).
pub fn scratch_file(dir: &Path) -> io::Result<File> {
    if let Some(file) = open_anonymous(dir)? {
        return Ok(file);
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    for attempt in 0..100u32 {
        let path = dir.join(format!(".moeq-scratch-{}-{nanos}-{attempt}.tmp", std::process::id()));
        match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free scratch file name"))
}

/// Whether to try `O_TMPFILE` (Linux, with `/proc/self/fd` to link the file by; not when
/// `MOEQ_TMPFILE=named`, which tests use to exercise the named fallback).
fn anonymous_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        cfg!(target_os = "linux")
            && std::env::var_os("MOEQ_TMPFILE").is_none_or(|v| v != "named")
            && Path::new("/proc/self/fd").is_dir()
    })
}

#[cfg(target_os = "linux")]
fn open_anonymous(dir: &Path) -> io::Result<Option<File>> {
    if !anonymous_allowed() {
        return Ok(None);
    }
    match OpenOptions::new().read(true).write(true).mode(0o666).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(file) => Ok(Some(file)),
        // Not supported by this filesystem (EOPNOTSUPP), or a kernel without O_TMPFILE
        // (EISDIR: it saw O_DIRECTORY; EINVAL).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn open_anonymous(_dir: &Path) -> io::Result<Option<File>> {
    Ok(None)
}

/// A temporary file being written for a final path: anonymous (`O_TMPFILE`) or named.
pub(crate) struct TempFile {
    /// Open while being written; a named temporary may be closed and reopened.
    file: Option<File>,
    named: Option<Named>,
    dir: PathBuf,
    final_name: OsString,
}

impl TempFile {
    /// Creates an empty temporary file in `dir` for the file `final_name` there.
    pub(crate) fn create(dir: &Path, final_name: &OsStr) -> io::Result<TempFile> {
        let dir = dir.to_path_buf();
        let final_name = final_name.to_os_string();
        if let Some(file) = open_anonymous(&dir)? {
            return Ok(TempFile { file: Some(file), named: None, dir, final_name });
        }
        let mut file = None;
        let named = {
            let mut reg = registry();
            create_named(&mut reg, &dir, &final_name, false, |p| {
                file = Some(OpenOptions::new().read(true).write(true).create_new(true).open(p)?);
                Ok(())
            })?
        };
        Ok(TempFile { file, named: Some(named), dir, final_name })
    }

    /// The open file. Only call while it is open ([`TempFile::is_open`]).
    pub(crate) fn file(&self) -> io::Result<&File> {
        self.file.as_ref().ok_or_else(|| io::Error::other("internal error: the temporary file is closed"))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Gives an anonymous temporary a (registered) name; nothing when it has one.
    pub(crate) fn name(&mut self, reg: &mut Registry) -> io::Result<()> {
        if self.named.is_some() {
            return Ok(());
        }
        let file = self.file()?;
        let proc_path = proc_fd_path(file);
        let named = create_named(reg, &self.dir, &self.final_name, false, |p| link_fd(&proc_path, p))?;
        self.named = Some(named);
        Ok(())
    }

    /// Names it if needed and closes it, freeing its descriptor.
    pub(crate) fn close(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            self.name(&mut registry())?;
            self.file = None;
        }
        Ok(())
    }

    /// Opens a closed temporary again.
    pub(crate) fn reopen(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let named = self.named.as_ref().ok_or_else(|| io::Error::other("internal error: no temporary name"))?;
            self.file = Some(OpenOptions::new().read(true).write(true).open(named.path())?);
        }
        Ok(())
    }

    /// Moves it into place at `to` (in the same folder), replacing what is there, under the
    /// registry lock the caller holds. An anonymous file is linked straight to `to` when
    /// nothing is there, else linked to a temporary name first and renamed over it.
    pub(crate) fn persist(mut self, reg: &mut Registry, to: &Path) -> io::Result<()> {
        if self.named.is_none() {
            let proc_path = proc_fd_path(self.file()?);
            match link_fd(&proc_path, to) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.name(reg)?,
                Err(e) => return Err(e),
            }
        }
        let named = self.named.take().ok_or_else(|| io::Error::other("internal error: no temporary name"))?;
        named.rename(reg, to)
    }
}

fn proc_fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Links the file behind `/proc/self/fd/N` at `to` (`AlreadyExists` when `to` exists).
fn link_fd(proc_path: &Path, to: &Path) -> io::Result<()> {
    let from = std::ffi::CString::new(proc_path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both arguments are NUL-terminated strings that live across the call.
    let r =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Flushes a folder's entries (renames, unlinks) to disk; best effort.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_parse_back() {
        let name = temp_name(OsStr::new("model-00001-of-00002.gguf"));
        assert_eq!(parse_temp_name(&name), Some(TempNameKind::Current(me())));
        let long = "x".repeat(250);
        let name = temp_name(OsStr::new(&long));
        assert!(name.len() < 255, "{}", name.len());
        assert_eq!(parse_temp_name(&name), Some(TempNameKind::Current(me())));
        assert_eq!(parse_temp_name(OsStr::new(".out.gguf.moeq-1234-0.tmp")), Some(TempNameKind::Legacy));
        assert_eq!(parse_temp_name(OsStr::new(".mlx.moeq-1234.tmp")), Some(TempNameKind::Legacy));
        for other in ["out.gguf", ".out.gguf", ".x.moeq-12a.tmp", ".x.moeq-1-2-zz-00.tmp", "x.moeq-1.tmp"] {
            assert_eq!(parse_temp_name(OsStr::new(other)), None, "{other}");
        }
        assert_ne!(temp_name(OsStr::new("a")), temp_name(OsStr::new("a")));
    }

    #[test]
    fn killed_processes_not_yet_reaped_are_not_alive() {
        // A run killed with -9 stays a zombie until its parent reaps it; its temporaries are
        // abandoned from the kill on (a sweep right after `kill -9` once kept them).
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let maker = Maker { pid, start: start_time(pid).unwrap(), host: me().host };
        assert_eq!(alive(maker), Some(true));
        child.kill().unwrap();
        // Not reaped yet: wait until the kernel shows it as a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat_of(pid).is_some_and(|(state, _)| state != b'Z') && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(stat_of(pid).map(|(state, _)| state), Some(b'Z'));
        assert_eq!(alive(maker), Some(false));
        child.wait().unwrap();
        assert_eq!(alive(maker), Some(false));
    }

    #[test]
    fn taken_names_are_skipped_never_failed_on() {
        let dir = std::env::temp_dir();
        let mut tries = 0;
        let named = create_named(&mut registry(), &dir, OsStr::new("x.gguf"), false, |p| {
            tries += 1;
            if tries < 4 { Err(io::ErrorKind::AlreadyExists.into()) } else { File::create(p).map(drop) }
        })
        .unwrap();
        assert_eq!(tries, 4);
        let path = named.path().to_path_buf();
        assert!(path.is_file());
        drop(named);
        assert!(!path.exists(), "a dropped temporary is removed");
    }

    #[test]
    fn this_process_is_alive_and_a_finished_one_is_not() {
        assert_eq!(alive(me()), Some(true));
        let child = std::process::Command::new("true").spawn().and_then(|mut c| c.wait().map(|_| c.id()));
        if let Ok(pid) = child {
            let gone = Maker { pid, start: 1, host: me().host };
            assert_eq!(alive(gone), Some(false));
        }
    }
}
