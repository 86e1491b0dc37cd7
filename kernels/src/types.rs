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
    /// `{d: f16, qs: u16[32]}` (grid of 256, 7 sign bits and a 4-bit scale per 32), 66 bytes per
    /// 256 values; quantizing needs importance weights.
    IQ2_XXS,
    /// `{d: f16, qs: u16[32], scales: u8[8]}` (grid of 512), 74 bytes per 256 values; quantizing
    /// needs importance weights.
    IQ2_XS,
    /// `{d: f16, qs: u8[64], qh: u8[8], scales: u8[8]}` (grid of 1024), 82 bytes per 256 values.
    IQ2_S,
    /// `{d: f16, qs: u8[96]}` (grid of 256 × 4 values), 98 bytes per 256 values.
    IQ3_XXS,
    /// `{d: f16, qs: u8[64], qh: u8[8], signs: u8[32], scales: u8[4]}` (grid of 512), 110 bytes
    /// per 256 values.
    IQ3_S,
    /// `{d: f16, qs: u8[32], qh: u16[8]}` (grid of 2048 ternary octets), 50 bytes per 256 values;
    /// quantizing needs importance weights.
    IQ1_S,
    /// `{qs: u8[32], qh: u8[16], scales: u8[8]}` (the IQ1_S grid, scale in the scales' top bits),
    /// 56 bytes per 256 values.
    IQ1_M,
    /// `{qs: u8[48], qh: u8[4], d: f16}` (ternary, 5 values a byte), 54 bytes per 256 values.
    TQ1_0,
    /// `{qs: u8[64], d: f16}` (ternary, 2 bits a value), 66 bytes per 256 values.
    TQ2_0,
}

impl QuantType {
    /// Every type.
    pub const ALL: [QuantType; 22] = [
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
        QuantType::IQ2_XXS,
        QuantType::IQ2_XS,
        QuantType::IQ2_S,
        QuantType::IQ3_XXS,
        QuantType::IQ3_S,
        QuantType::IQ1_S,
        QuantType::IQ1_M,
        QuantType::TQ1_0,
        QuantType::TQ2_0,
    ];

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::Q8_0
            | QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::MXFP4
            | QuantType::IQ4_NL => 32,
            _ => 256,
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
            QuantType::IQ2_XXS | QuantType::TQ2_0 => 66,
            QuantType::IQ2_XS => 74,
            QuantType::IQ2_S => 82,
            QuantType::IQ3_XXS => 98,
            QuantType::IQ3_S => 110,
            QuantType::IQ1_S => 50,
            QuantType::IQ1_M => 56,
            QuantType::TQ1_0 => 54,
        }
    }

    /// Whether quantizing to this type needs importance weights: ggml asserts on their
    /// absence for IQ2_XXS, IQ2_XS and IQ1_S (`ggml_quantize_requires_imatrix`).
    pub fn needs_importance(self) -> bool {
        matches!(self, QuantType::IQ2_XXS | QuantType::IQ2_XS | QuantType::IQ1_S)
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
            QuantType::IQ2_XXS => "IQ2_XXS",
            QuantType::IQ2_XS => "IQ2_XS",
            QuantType::IQ2_S => "IQ2_S",
            QuantType::IQ3_XXS => "IQ3_XXS",
            QuantType::IQ3_S => "IQ3_S",
            QuantType::IQ1_S => "IQ1_S",
            QuantType::IQ1_M => "IQ1_M",
            QuantType::TQ1_0 => "TQ1_0",
            QuantType::TQ2_0 => "TQ2_0",
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
    /// The type can only be quantized with importance weights (an imatrix), as in ggml.
    #[error("quantizing to {0} needs importance weights (an imatrix); ggml refuses it without")]
    NeedsImportance(&'static str),
    /// ggml's quantizer would abort on this super-block (an assertion fails): in practice
    /// values so large that their squares overflow.
    #[error("{ty}: super-block {block} (values {first}..{end}) cannot be quantized: ggml's quantizer aborts on it (values too large)", first = block * 256, end = block * 256 + 256)]
    Degenerate {
        /// The type.
        ty: &'static str,
        /// The super-block's index in the input.
        block: usize,
    },
    /// A quantization setting this kernel does not support.
    #[error("{0} is not supported")]
    UnsupportedSetting(String),
}
