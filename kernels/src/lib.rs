//! moeq-kernels: numeric kernels (block types, conversions, quantizers). No I/O.
