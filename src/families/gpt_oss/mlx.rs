//! gpt-oss in MLX builds, as mlx-lm's `gpt_oss` model names and quantizes it: stacked experts
//! under `mlp.experts`, kept in MXFP4 whenever the source has them so or `--type` quantizes;
//! the router in 8 bits, groups of 64 (its `quant_predicate`).

use serde_json::json;

use crate::families::{MlxChoice, MlxModule};
use crate::plan::mlx::MlxType;

/// mlx-lm's choice for a gpt-oss module, when it differs from `--type`'s.
pub fn choice(module: &MlxModule, ty: Option<MlxType>, dtype: MlxType) -> Option<MlxChoice> {
    let quantized = ty.filter(|t| !matches!(t, MlxType::Float(_)));
    if module.experts && (module.stored_mxfp4 || quantized.is_some()) {
        return Some(MlxChoice { ty: MlxType::Mxfp4, params: None });
    }
    let q = quantized?;
    if !module.path.ends_with(".mlp.router") {
        return None;
    }
    if module.row_len.is_multiple_of(q.group().unwrap_or(1)) {
        Some(MlxChoice {
            ty: MlxType::Affine { bits: 8, group: 64 },
            params: Some(json!({"group_size": 64, "bits": 8})),
        })
    } else {
        Some(MlxChoice { ty: dtype, params: None })
    }
}
