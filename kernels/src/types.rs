//! The block types the kernels quantize to and dequantize from.

/// A ggml block-quantized type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// `{d: f16, qs: i8[32]}`, 34 bytes per 32 values.
    Q8_0,
    /// `{d: f16, qs: u8[16]}`, 18 bytes per 32 values.
    Q4_0,
    /// `{d: f16, m: f16, qs: u8[16]}`, 20 bytes per 32 values.
    Q4_1,
    /// `{d: f16, qh: u32, qs: u8[16]}`, 22 bytes per 32 values.
    Q5_0,
    /// `{d: f16, m: f16, qh: u32, qs: u8[16]}`, 24 bytes per 32 values.
    Q5_1,
    /// `{e: E8M0, qs: u8[16]}`, 17 bytes per 32 values.
    MXFP4,
    /// `{d, dmin: f16, scales: u8[12], qs: u8[128]}`, 144 bytes per 256 values.
    Q4_K,
    /// `{d, dmin: f16, scales: u8[12], qh: u8[32], qs: u8[128]}`, 176 bytes per 256 values.
    Q5_K,
    /// `{ql: u8[128], qh: u8[64], scales: i8[16], d: f16}`, 210 bytes per 256 values.
    Q6_K,
    /// `{d: f16, qs: u8[16]}` with a non-linear table, 18 bytes per 32 values.
    IQ4_NL,
    /// `{scales: u8[16], qs: u8[64], d, dmin: f16}`, 84 bytes per 256 values.
    Q2_K,
    /// `{hmask: u8[32], qs: u8[64], scales: u8[12], d: f16}`, 110 bytes per 256 values.
    Q3_K,
    /// `{d: f16, scales_h: u16, scales_l: u8[4], qs: u8[128]}` with IQ4_NL's table, 136 bytes
    /// per 256 values.
    IQ4_XS,
}

impl QuantType {
    /// Every type.
    pub const ALL: [QuantType; 13] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::MXFP4,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::IQ4_NL,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::IQ4_XS,
    ];

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::Q4_K
            | QuantType::Q5_K
            | QuantType::Q6_K
            | QuantType::Q2_K
            | QuantType::Q3_K
            | QuantType::IQ4_XS => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 | QuantType::IQ4_NL => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::MXFP4 => 17,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
            QuantType::Q2_K => 84,
            QuantType::Q3_K => 110,
            QuantType::IQ4_XS => 136,
        }
    }

    /// Whether moeq can quantize to this type.
    pub fn can_quantize(self) -> bool {
        true
    }

    /// The ggml name.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::MXFP4 => "MXFP4",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
            QuantType::IQ4_NL => "IQ4_NL",
            QuantType::Q2_K => "Q2_K",
            QuantType::Q3_K => "Q3_K",
            QuantType::IQ4_XS => "IQ4_XS",
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes()
    }
}

/// Why a kernel refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// An input value is NaN or infinite; ggml would write garbage for it.
    #[error("value {index} is {value}, which cannot be quantized")]
    NonFinite {
        /// Its index in the input.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The input is not a whole number of blocks, or the output has the wrong size.
    #[error("{ty}: {what}")]
    Length {
        /// The type.
        ty: &'static str,
        /// What is wrong.
        what: String,
    },
    /// An importance weight is negative, NaN or infinite.
    #[error("importance weight {index} is {value}; weights must be finite and not negative")]
    BadWeight {
        /// Its index (column).
        index: usize,
        /// The weight.
        value: f32,
    },
    /// The type cannot be quantized to.
    #[error("quantizing to {0} is not supported")]
    Unsupported(&'static str),
    /// A quantization setting this kernel does not support.
    #[error("{0} is not supported")]
    UnsupportedSetting(String),
}
