//! GGUF (llama.cpp's format): types, metadata values, reader, split models, writer.

pub mod big_endian;
pub mod reader;
pub mod split;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{ByteOrder, GgufFile, GgufHeader, TensorInfo};
pub use split::GgufModel;
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use writer::{GgufPlan, GgufWriter, Layout, TensorSpec};
