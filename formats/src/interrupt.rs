//! Interrupts (Ctrl-C, `kill`, a closed terminal): remove the run's temporaries, then end as
//! the signal says.
//!
//! [`install`] blocks SIGINT, SIGTERM and SIGHUP in the calling thread before any other thread
//! exists (every thread started later inherits the mask) and starts one thread that waits
//! for them with `sigwait`. No signal handler runs, so nothing is restricted to
//! async-signal-safe calls: when a signal arrives, that thread takes the temporaries'
//! registry lock ([`crate::temp`]), removes every named temporary (files and build folders;
//! anonymous `O_TMPFILE` files vanish with the process by themselves), prints one line, and
//! ends the process by the same signal with its default action, still holding the lock, so
//! no other thread can create or commit a file in between. A shell then reports status
//! 130, 143 or 129 (128 + the signal), and a parent (a shell loop, `make`) sees that the
//! child was interrupted. A commit in progress holds the same lock while it renames its
//! files into place; an interrupt that comes then waits for it, so an output is either
//! complete or absent, never partial.
//!
//! A signal that was ignored when moeq started (`nohup` ignores SIGHUP) stays ignored.

use std::io::{self, Write as _};

/// The signals that end a run with cleanup.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the interrupt cleanup and the SIGBUS guard ([`crate::inputs`]). Call it first in
/// `main`, before any thread is started; once is enough.
pub fn install() -> io::Result<()> {
    crate::inputs::install_sigbus_guard()?;
    // SAFETY: an all-zero sigset_t is a valid value, initialized by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in SIGNALS {
        // SAFETY: an all-zero sigaction is valid; a null new action only reads the current one.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `old` is writable; a null `act` changes nothing.
        let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        if r == 0 && old.sa_sigaction != libc::SIG_IGN {
            // SAFETY: `set` is a valid sigset_t and `sig` a valid signal number.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
    }
    // SAFETY: `set` is valid; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    struct Set(libc::sigset_t);
    // SAFETY: a sigset_t is plain data.
    unsafe impl Send for Set {}
    let set = Set(set);
    std::thread::Builder::new().name("moeq-signals".into()).spawn(move || {
        let set = set;
        loop {
            let mut sig = 0;
            // SAFETY: `set` is a valid sigset_t and `sig` writable.
            if unsafe { libc::sigwait(&set.0, &mut sig) } == 0 {
                end_by(sig);
            }
        }
    })?;
    Ok(())
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Removes the temporaries and ends the process by `sig`.
fn end_by(sig: libc::c_int) -> ! {
    let mut reg = crate::temp::registry();
    reg.remove_all();
    // Not eprintln!, which panics when stderr is a closed pipe (`moeq … 2>&1 | head`): this
    // thread would die holding the lock, and the process run on, the signal lost.
    let _ = writeln!(std::io::stderr(), "\nmoeq: interrupted by {}; unfinished outputs removed", signal_name(sig));
    // SAFETY: restoring the default action and unblocking the signal in this thread, then
    // raising it, ends the process as the signal does; `_exit` is the fallback should the
    // signal somehow not end it. The registry lock is held until then on purpose.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}
