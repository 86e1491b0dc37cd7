//! `print!`, `println!`, `eprint!` and `eprintln!` that do not panic on a failed write. Rust
//! ignores SIGPIPE, so std's macros panic on EPIPE (exit 101): a command whose reader stopped
//! early (`moeq … | head`, a terminal that went away) aborted before writing its files. These
//! write what they can and carry on, so the command ends as it would have (its files written,
//! its exit status its own) — except that a standard output that failed otherwise than by its
//! reader going away (a full disk, an I/O error) is recorded ([`stdout_error`]) and `main` then
//! exits with an error: what the command printed is lost. Declared first in each crate root,
//! they shadow std's macros in every module.

use std::sync::OnceLock;

/// The first failure of a write to standard output other than a closed reader.
static STDOUT_ERROR: OnceLock<String> = OnceLock::new();

/// Records `result` of a write to standard output (a closed reader is no failure).
pub(crate) fn stdout_result(result: std::io::Result<()>) {
    if let Err(e) = result
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = STDOUT_ERROR.set(e.to_string());
    }
}

/// The first failure of a write to standard output through these macros, if any.
pub(crate) fn stdout_error() -> Option<&'static str> {
    STDOUT_ERROR.get().map(String::as_str)
}

macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        $crate::print::stdout_result(write!(std::io::stdout(), $($t)*));
    }};
}

macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        $crate::print::stdout_result(writeln!(std::io::stdout(), $($t)*));
    }};
}

macro_rules! eprint {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

macro_rules! eprintln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
