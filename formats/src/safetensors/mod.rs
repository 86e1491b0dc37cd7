//! safetensors: reading files and sharded folders, planned (sharded) writing.

pub mod reader;
pub mod writer;

pub use ::safetensors::tensor::Dtype;
pub use reader::{HeaderStyle, INDEX_FILE, SafetensorsFile, SafetensorsModel, StTensor};
pub use writer::{IndexOptions, SafetensorsPlan, SafetensorsWriter, StLayout, StTensorSpec};
