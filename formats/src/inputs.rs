//! The files a run reads, while it reads them: who they are (so no output replaces one),
//! whether they changed underneath the run, and a guard that turns a truncated mapped input
//! into an error instead of a crash.
//!
//! Every file [`crate::FileBytes::map`] maps is registered here with its identity (device,
//! inode), size and modification time, and the address range of its mapping.
//!
//! **Truncation while mapped.** When another program truncates a file moeq has mapped,
//! reading a page past the new end raises `SIGBUS`, which would kill the process (exit 135,
//! no message, temporaries left). [`install_sigbus_guard`] installs a handler that checks
//! whether the faulting address lies in a registered input mapping; if so it maps anonymous
//! zero pages over the rest of that mapping (`MAP_FIXED`), so the faulting read completes
//! (with zeros), and records which input changed. Writers check that record after every
//! piece and before committing ([`check_unchanged`]), and fail naming the input: the zeros
//! never reach an output. A fault anywhere else goes to the previous handler (Rust's stack
//! overflow handler) or the default action, as if no guard were installed. When the kernel
//! itself copies from such a page (a `pwrite` from mapped bytes), it returns `EFAULT`
//! instead of raising `SIGBUS`; writers map that to the same error ([`fault_in_input`]).
//!
//! **Rewritten in place.** A write that does not change the size raises nothing; the
//! modification time does change, and [`check_unchanged`] compares size and time with those
//! at mapping (a file replaced by a new one under the same name is harmless: the mapping
//! keeps the old bytes).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// What was known of an input when it was mapped.
struct Record {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    /// Compared at commit (false for moeq's own converted copies).
    tracked: bool,
    /// Live mappings of it.
    live: usize,
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());
/// 0, or 1 + the record index of the first input found changed.
static CHANGED: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);

fn records() -> std::sync::MutexGuard<'static, Vec<Record>> {
    RECORDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One address range the SIGBUS handler may repair. `state` is 0 (free), 1 (being filled)
/// or 2 + record index (active); `start`/`end` are written before `state` becomes active and
/// read after it is seen active.
struct Slot {
    state: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
}

const CHUNK: usize = 256;
const CHUNKS: usize = 256;
type Chunk = [Slot; CHUNK];
/// Chunks of slots, allocated on demand and never freed, so the handler can walk them
/// without locks or allocation.
static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];

fn chunk(c: usize) -> &'static Chunk {
    let ptr = TABLE[c].load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: non-null entries point to chunks leaked below, which live forever.
        return unsafe { &*ptr };
    }
    let fresh: Box<Chunk> = Box::new(std::array::from_fn(|_| Slot {
        state: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }));
    let fresh = Box::into_raw(fresh);
    match TABLE[c].compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: we just stored our leaked box; it is never freed.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` came from Box::into_raw above and was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, entries are leaked chunks.
            unsafe { &*existing }
        }
    }
}

fn claim_slot(id: usize, start: usize, end: usize) -> Option<&'static Slot> {
    for c in 0..CHUNKS {
        for slot in chunk(c) {
            if slot.state.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                slot.start.store(start, Ordering::Relaxed);
                slot.end.store(end, Ordering::Relaxed);
                slot.state.store(id + 2, Ordering::Release);
                return Some(slot);
            }
        }
    }
    None
}

/// The record index and mapping end of the active slot holding `addr`. Async-signal-safe:
/// atomic loads only.
fn find(addr: usize) -> Option<(usize, usize)> {
    for entry in &TABLE {
        let ptr = entry.load(Ordering::Acquire);
        if ptr.is_null() {
            return None;
        }
        // SAFETY: non-null entries point to leaked chunks that live forever.
        let chunk = unsafe { &*ptr };
        for slot in chunk {
            let state = slot.state.load(Ordering::Acquire);
            if state >= 2 {
                let (start, end) = (slot.start.load(Ordering::Relaxed), slot.end.load(Ordering::Relaxed));
                if (start..end).contains(&addr) {
                    return Some((state - 2, end));
                }
            }
        }
    }
    None
}

/// Keeps an input registered while its mapping lives. Drop it before unmapping.
pub(crate) struct Registration {
    id: usize,
    slot: Option<&'static Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.state.store(0, Ordering::Release);
        }
        if let Some(r) = records().get_mut(self.id) {
            r.live = r.live.saturating_sub(1);
        }
    }
}

/// Registers the input `path` (whose metadata, taken from the open file, is `meta`), mapped
/// at `range` (start, length). `tracked`: compare it at commit and count it as an input.
pub(crate) fn register(path: &Path, meta: &std::fs::Metadata, range: (usize, usize), tracked: bool) -> Registration {
    let record = Record {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        tracked,
        live: 1,
    };
    let id = {
        let mut all = records();
        all.push(record);
        all.len() - 1
    };
    let slot = (range.1 > 0).then(|| claim_slot(id, range.0, range.0.saturating_add(range.1))).flatten();
    Registration { id, slot }
}

/// The first input found changed while being read, if any.
pub fn changed() -> Option<PathBuf> {
    let n = CHANGED.load(Ordering::SeqCst);
    if n == 0 {
        return None;
    }
    records().get(n - 1).map(|r| r.path.clone())
}

fn mark_changed(id: usize) {
    let _ = CHANGED.compare_exchange(0, id + 1, Ordering::SeqCst, Ordering::SeqCst);
}

/// Fails with [`Error::InputChanged`] when an input was truncated while mapped, or when a
/// mapped input's size or modification time differs from when it was mapped.
pub fn check_unchanged() -> Result<()> {
    check(false)
}

/// [`check_unchanged`] over every input the run mapped, also those no longer mapped: for a
/// run that failed, whose error may come from an input rewritten under it (values that make
/// no sense), so that the error names the cause.
pub fn check_unchanged_since_mapped() -> Result<()> {
    check(true)
}

fn check(unmapped_too: bool) -> Result<()> {
    if let Some(path) = changed() {
        return Err(Error::InputChanged { path });
    }
    let found = records().iter().enumerate().find_map(|(id, r)| {
        if !r.tracked || (r.live == 0 && !unmapped_too) {
            return None;
        }
        let m = std::fs::metadata(&r.path).ok()?;
        let same_file = (m.dev(), m.ino()) == (r.dev, r.ino);
        (same_file && (m.len() != r.size || (m.mtime(), m.mtime_nsec()) != r.mtime)).then_some(id)
    });
    if let Some(id) = found {
        mark_changed(id);
        return Err(Error::InputChanged { path: changed().unwrap_or_default() });
    }
    Ok(())
}

/// The input (as it was named when opened) that `path` is, if `path` exists and is the same
/// file (device and inode) as an input mapped now.
pub fn input_at(path: &Path) -> Option<PathBuf> {
    let m = std::fs::metadata(path).ok()?;
    records().iter().find(|r| r.tracked && r.live > 0 && (r.dev, r.ino) == (m.dev(), m.ino())).map(|r| r.path.clone())
}

/// When `buf` lies in an input mapping (a write from it failed with `EFAULT`: the input was
/// truncated), records that input as changed and returns it.
pub(crate) fn fault_in_input(buf: &[u8]) -> Option<PathBuf> {
    let (id, _) = find(buf.as_ptr() as usize)?;
    mark_changed(id);
    changed()
}

#[cfg(target_os = "linux")]
mod guard {
    use std::sync::OnceLock;
    use std::sync::atomic::Ordering;

    use libc::{c_int, c_void, siginfo_t};

    use super::{PAGE, find, mark_changed};

    /// The SIGBUS action before ours, to forward faults that are not ours.
    struct Previous(libc::sigaction);
    // SAFETY: a sigaction is plain data (a handler address, flags, a mask); it is written once
    // before the handler can run and only read afterwards.
    unsafe impl Sync for Previous {}
    // SAFETY: as above.
    unsafe impl Send for Previous {}

    static PREVIOUS: OnceLock<Previous> = OnceLock::new();

    pub(super) fn install() -> std::io::Result<()> {
        if PREVIOUS.get().is_some() {
            return Ok(());
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that we fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `action` and `old` are valid for reading and writing; sigemptyset only
        // writes the mask it is given.
        let r = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, &mut old)
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = PREVIOUS.set(Previous(old));
        Ok(())
    }

    /// The SIGBUS handler. Async-signal-safe: atomic loads and stores, and `mmap`,
    /// `sigaction` and `raise`, with errno saved and restored; no allocation, no locks.
    /// (`sigaction` and `raise` are on POSIX's async-signal-safe list; `mmap` is not, but in
    /// glibc and musl on Linux it is a plain system call wrapper that takes no lock.)
    extern "C" fn on_sigbus(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
        // SAFETY: errno is thread-local; the location is valid for this thread.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo_t; si_addr is
        // the faulting address for the fault codes (si_code > 0).
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if code > 0
            && let Some((id, end)) = find(addr)
        {
            let page = PAGE.load(Ordering::Relaxed);
            let start = addr & !(page - 1);
            let end = end.next_multiple_of(page);
            // SAFETY: [start, end) lies within a read-only mapping of an input that this
            // process made and still holds (registrations end before the unmap). Mapping
            // anonymous zero pages over it with MAP_FIXED replaces exactly those pages and
            // nothing else; the mapping's owner unmaps the whole range later as usual. Reads
            // of that range (the interrupted one included, when the handler returns) see
            // zeros instead of faulting. Those zeros are never written to an output: the
            // input is recorded as changed below, and every writer checks that record after
            // each piece and before committing.
            let r = unsafe {
                libc::mmap(
                    start as *mut c_void,
                    end - start,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                mark_changed(id);
                // SAFETY: as above.
                unsafe { *libc::__errno_location() = errno };
                return;
            }
        }
        forward(sig, info, ctx, code);
    }

    /// What would have happened without our handler.
    fn forward(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void, code: c_int) {
        if let Some(Previous(old)) = PREVIOUS.get()
            && old.sa_sigaction != libc::SIG_DFL
            && old.sa_sigaction != libc::SIG_IGN
            && code > 0
        {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO, sa_sigaction holds a handler of this signature,
                // installed by whoever set SIGBUS before us (Rust's runtime).
                let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO, sa_sigaction holds a plain handler.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig);
            }
            return;
        }
        // The default action: for a fault, returning re-executes the faulting instruction,
        // which faults again and ends the process as SIGBUS does; a signal sent by kill() is
        // raised again.
        // SAFETY: an all-zero sigaction with SIG_DFL is valid; sigaction and raise are
        // async-signal-safe.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            if code <= 0 {
                libc::raise(libc::SIGBUS);
            }
        }
    }
}

/// Installs the SIGBUS guard described in the module documentation (Linux; elsewhere a
/// truncated input still ends the process with SIGBUS).
pub fn install_sigbus_guard() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        guard::install()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(())
    }
}
