//! Checking an output path before any work: what it names, that it can be written without
//! destroying anything that is not an earlier output, and that it is none of the run's
//! inputs.
//!
//! Rules (each one an error, before anything is read or written beyond headers):
//! - A file output (GGUF, a dump) is a file path: a trailing `/` or an existing folder there
//!   is refused, saying so; so is anything there that is not a regular file (a device such
//!   as `/dev/null`, a FIFO, a socket), which renaming into place would replace.
//! - A folder output (`--format mlx|hf`) must not exist yet (a trailing `/` is fine).
//! - The folder that will hold the output must exist and take a new file (permissions, a
//!   read-only file system) of that name (not longer than the file system allows).
//! - An existing file at the output path must be writable by this user: a write-protected
//!   (`chmod a-w`) earlier output is not replaced.
//! - The output path must not be a symbolic link: renaming the finished output into place
//!   would replace the link itself (`--report /dev/stdout` would replace `/dev/stdout`).
//! - No output may be an input: an existing file at the output path (or, for a split output,
//!   any `STEM-NNNNN-of-MMMMM.gguf` beside it, which the new set replaces) that is the same
//!   file as an input (same device and inode, whatever the spelling: `./../x/a.gguf`,
//!   symbolic or hard links) is refused.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::temp::{Leftover, sweep};

/// What an output path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// One file (`moeq convert … -o OUT.gguf`, `eval --dump OUT.safetensors`).
    File,
    /// One file or a set of shards `STEM-NNNNN-of-MMMMM.gguf` that replaces the set of the
    /// same stem (`--split-max-size`).
    Split,
    /// A folder built whole (`--format mlx|hf`).
    Folder,
}

/// The folder an output goes into (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Checks what `path` names against `kind` (see the module rules), without looking at the
/// inputs.
pub fn check_path(path: &Path, kind: OutputKind) -> Result<()> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(Error::plan(path, "the output path is empty"));
    }
    if bytes == b"-" {
        // Many tools read '-' as standard output; a file named '-' is never what was meant.
        return Err(Error::plan(
            path,
            "moeq writes this output to a file, not to standard output: give a file name (--json prints a \
             command's report on standard output)",
        ));
    }
    let trailing_slash = bytes.ends_with(b"/");
    if kind != OutputKind::Folder {
        if trailing_slash {
            return Err(Error::plan(
                path,
                "ends in '/', which names a folder, but this output is a file: give its file name (e.g. \
                 OUT/model.gguf), without the trailing '/'",
            ));
        }
        if path.file_name().is_none() {
            return Err(Error::plan(path, "the output path has no file name"));
        }
    } else if path.file_name().is_none() {
        return Err(Error::plan(path, "the output path has no folder name"));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        let why = if dir.exists() {
            format!("{} is not a folder", dir.display())
        } else {
            format!("the folder {} does not exist", dir.display())
        };
        return Err(Error::plan(path, why));
    }
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_symlink()
    {
        let to = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        return Err(Error::plan(
            path,
            format!(
                "is a symbolic link (to {to}); moeq puts an output in place by renaming a new file over its path, \
                 which would replace the link, not write to what it points to: give that path instead"
            ),
        ));
    }
    // A new file must be possible in the folder (its permissions, a read-only file system),
    // under this name (its length), found now rather than after the work.
    if let Err(e) = crate::temp::scratch_file(dir) {
        return Err(Error::plan(path, format!("the folder {} takes no new file ({e})", dir.display())));
    }
    check_name_length(path)?;
    if kind == OutputKind::Split {
        // Writing a split set removes the earlier set's files of the same stem.
        for member in split_members(path) {
            if let Ok(m) = std::fs::metadata(&member.path)
                && m.is_file()
                && !writable(&member.path)
            {
                return Err(Error::plan(
                    path,
                    format!(
                        "{} is write-protected (mode {:o}); writing this split set replaces the earlier set's files, \
                         which would undo that protection: make it writable (chmod u+w) or choose another path",
                        member.path.display(),
                        m.mode() & 0o7777
                    ),
                ));
            }
        }
    }
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if kind == OutputKind::Folder => Err(Error::plan(
            path,
            if m.is_dir() {
                "exists already; remove it or choose another output folder"
            } else {
                "exists already and is not a folder; choose another output folder"
            },
        )),
        Ok(m) if m.is_dir() => Err(Error::plan(
            path,
            "is a folder, but this output is a file: give a file name (e.g. OUT/model.gguf); only --format mlx and \
             hf write folders",
        )),
        Ok(m) if !m.is_file() => Err(not_regular(path, &m)),
        Ok(m) if !writable(path) => Err(Error::plan(
            path,
            format!(
                "is write-protected (mode {:o}); moeq puts an output in place by replacing the file, which would \
                 undo that protection: make it writable (chmod u+w) or choose another path",
                m.mode() & 0o7777
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// Whether this process may write to the existing file `path` (`access(W_OK)`: its mode for
/// this user; root may write any file, as `cp` would).
fn writable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return true };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The longest file name (bytes) the folder `dir` takes: `pathconf(_PC_NAME_MAX)`, 255 (Linux's
/// usual limit) when the file system does not say.
pub fn name_max(dir: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return 255 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call; pathconf only reads it.
    let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
    if n > 0 { n as usize } else { 255 }
}

/// Checks that the file name of `path` fits its folder's limit ([`name_max`]): a split
/// output's shard names are longer than the name given, and were refused by the file system
/// only when their shard was first written.
pub fn check_name_length(path: &Path) -> Result<()> {
    let len = path.file_name().map_or(0, |n| n.as_bytes().len());
    let max = name_max(parent_dir(path));
    if len > max {
        return Err(Error::plan(
            path,
            format!(
                "the file name is {len} bytes, longer than the {max} a name may have there: give a shorter output name"
            ),
        ));
    }
    Ok(())
}

fn not_regular(path: &Path, m: &std::fs::Metadata) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    let what = if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Error::plan(path, format!("exists and is {what}; moeq writes only regular files and would replace it"))
}

/// Checks that a file about to be replaced at `path` (when something is there) is a regular
/// file, and that the folder exists.
pub(crate) fn check_final_file(path: &Path) -> Result<()> {
    check_path(path, OutputKind::File)
}

/// Refuses an output that would replace one of `inputs` (see the module rules).
pub fn check_inputs(path: &Path, kind: OutputKind, inputs: &[PathBuf]) -> Result<()> {
    let ids: Vec<((u64, u64), &Path)> =
        inputs.iter().filter_map(|p| std::fs::metadata(p).ok().map(|m| ((m.dev(), m.ino()), p.as_path()))).collect();
    let mut candidates = vec![path.to_path_buf()];
    if kind == OutputKind::Split {
        candidates.extend(split_members(path).into_iter().map(|m| m.path));
    }
    for c in &candidates {
        let Ok(m) = std::fs::metadata(c) else {
            continue;
        };
        if let Some((_, input)) = ids.iter().find(|(id, _)| *id == (m.dev(), m.ino())) {
            let same = if c == path { String::new() } else { format!(" ({} would be replaced)", c.display()) };
            return Err(Error::plan(
                path,
                format!(
                    "is the input {}{same}: moeq never writes over a file it reads; choose another output path",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Every check before work: [`check_path`], [`check_inputs`], then [`sweep`] of the output's
/// folder, whose findings are returned for the caller to report.
pub fn prepare(path: &Path, kind: OutputKind, inputs: &[PathBuf]) -> Result<Vec<Leftover>> {
    check(path, kind, inputs)?;
    Ok(sweep(parent_dir(path)))
}

/// What [`prepare`] checks, without touching the folder: for a dry run, which writes nothing
/// but says what would stop the real run.
///
/// Errors: as [`prepare`].
pub fn check(path: &Path, kind: OutputKind, inputs: &[PathBuf]) -> Result<()> {
    check_path(path, kind)?;
    check_inputs(path, kind, inputs)
}

/// A file of a split set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMember {
    /// Its path.
    pub path: PathBuf,
    /// Its 1-based number in the name.
    pub number: u32,
    /// The set size in the name.
    pub count: u32,
}

/// The files beside `path` named as shards of its stem: `STEM-NNNNN-of-MMMMM.gguf` (five or
/// more digits each, as gguf-py and llama.cpp name them).
pub fn split_members(path: &Path) -> Vec<SplitMember> {
    let stem = path.file_stem().map(|s| s.as_bytes().to_vec()).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return Vec::new();
    };
    let mut found: Vec<SplitMember> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let (number, count) = parse_split_name(&name, &stem)?;
            Some(SplitMember { path: parent_dir(path).join(&name), number, count })
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn parse_split_name(name: &OsStr, stem: &[u8]) -> Option<(u32, u32)> {
    let rest = name.as_bytes().strip_prefix(stem)?.strip_prefix(b"-")?.strip_suffix(b".gguf")?;
    let text = std::str::from_utf8(rest).ok()?;
    let (number, count) = text.split_once("-of-")?;
    let digits = |t: &str| t.len() >= 5 && t.bytes().all(|c| c.is_ascii_digit());
    if !digits(number) || !digits(count) {
        return None;
    }
    Some((number.parse().ok()?, count.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse() {
        assert_eq!(parse_split_name(OsStr::new("s-00001-of-00009.gguf"), b"s"), Some((1, 9)));
        assert_eq!(parse_split_name(OsStr::new("s-123456-of-200000.gguf"), b"s"), Some((123456, 200000)));
        for other in ["s.gguf", "s-0001-of-00009.gguf", "t-00001-of-00009.gguf", "s-00001-of-00009.gguf.tmp"] {
            assert_eq!(parse_split_name(OsStr::new(other), b"s"), None, "{other}");
        }
        assert_eq!(parse_split_name(OsStr::new("s-x-00001-of-00002.gguf"), b"s"), None);
    }

    /// An output under a regular file said that file's folder "does not exist".
    #[test]
    fn an_output_under_a_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.gguf");
        std::fs::write(&file, b"x").unwrap();
        let err = check_path(&file.join("x.gguf"), OutputKind::File).unwrap_err().to_string();
        assert!(err.contains(&format!("cannot write: {} is not a folder", file.display())), "{err}");
        let err = check_path(&dir.path().join("none/x.gguf"), OutputKind::File).unwrap_err().to_string();
        assert!(err.contains("none does not exist"), "{err}");
    }

    /// `-o -` / `--report -` wrote a file named '-' in the current folder.
    #[test]
    fn a_dash_is_not_a_file_name() {
        for kind in [OutputKind::File, OutputKind::Folder] {
            let err = check_path(Path::new("-"), kind).unwrap_err().to_string();
            assert!(err.contains("not to standard output"), "{err}");
        }
        assert!(check_path(Path::new("./-x.gguf"), OutputKind::File).is_ok());
    }
}
