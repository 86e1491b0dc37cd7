//! Progress bars: bytes, rate and ETA on a terminal; nothing when stderr is not one.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `total` bytes, labelled `label`. Hidden when stderr is not a terminal or
/// when `quiet` is set.
pub fn bytes_bar(total: u64, label: &str, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(total)
    };
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// A bar counting `total` steps of a stage, labelled `label`; hidden when stderr is not a
/// terminal.
pub fn steps_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:32}] {pos}/{len} {msg} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}
