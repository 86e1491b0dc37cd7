//! x86-64 SIMD backends.

use crate::backend::Backend;

/// The SIMD backends this CPU supports (none yet).
pub fn available() -> Vec<&'static Backend> {
    Vec::new()
}
