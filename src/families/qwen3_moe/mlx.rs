//! Qwen3-MoE in MLX builds, as mlx-lm's `qwen3_moe` model quantizes it: its `quant_predicate`
//! keeps the routers (`mlp.gate`) in 8 bits, groups of 64, whatever `--type` says.

use serde_json::json;

use crate::families::{MlxChoice, MlxModule};
use crate::plan::mlx::MlxType;

/// mlx-lm's choice for a Qwen3-MoE module, when it differs from `--type`'s.
pub fn choice(module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
    let q = ty.filter(|t| !matches!(t, MlxType::Float(_)))?;
    if !module.path.ends_with(".mlp.gate") {
        return None;
    }
    // mlx-lm asks the predicate only for rows that are whole groups of --type's size.
    if module.row_len.is_multiple_of(q.group().unwrap_or(1)) {
        Some(MlxChoice {
            ty: MlxType::Affine { bits: 8, group: 64 },
            params: Some(json!({"group_size": 64, "bits": 8})),
        })
    } else {
        Some(MlxChoice { ty: dtype, params: None })
    }
}
