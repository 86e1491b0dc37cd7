//! `print!`, `println!`, `eprint!` and `eprintln!` that ignore a closed standard output or
//! error (`moeq … | head`, a terminal that went away). Rust ignores SIGPIPE, so std's macros
//! panic on EPIPE (exit 101): a command whose reader stopped early aborted before writing its
//! files. These write what they can and carry on, so the command ends as it would have (its
//! files written, its exit status its own). Declared first in each crate root, they shadow
//! std's macros in every module.

macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
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
