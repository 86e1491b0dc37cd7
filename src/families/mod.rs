//! Model families: what moeq knows about each, one folder per family ([`gpt_oss`],
//! [`mixtral`], [`llama`]), what they share ([`common`]), and the registry ([`FAMILIES`]) that
//! finds a checkpoint's family from its `config.json` (the Hugging Face class in
//! `architectures`, or OpenAI's original gpt-oss layout) and a GGUF's from its
//! `general.architecture`, as llama.cpp's converter keeps one module per family under
//! `conversion/` with a registry by class name.
//!
//! A family implements [`Family`]: its typed config and the layout of its checkpoints, the
//! GGUF llama.cpp's converter writes (names, metadata, tensor recipes), its vocabulary, its
//! MLX names and per-module choices, and its forward blocks for eval and verify.

pub mod common;
pub mod deepseek_v3;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod llama;
pub mod minimax_m2;
pub mod mixtral;
pub mod qwen2_moe;
pub mod qwen3_moe;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use moeq_formats::safetensors::SafetensorsModel;
use serde_json::Value as Json;

use crate::forward::Blocks;
use crate::plan::mlx::MlxType;
use crate::source::config::{ConfigFile, Keys};
use crate::vocab::Metadata;
use crate::write::safetensors::Item;
use common::{Converted, OutType};

/// Every family moeq knows, in the order detection asks them. A new family is its folder
/// and one line here.
pub static FAMILIES: &[&dyn Family] = &[
    &gpt_oss::GptOss,
    &mixtral::Mixtral,
    &llama::Llama,
    &qwen3_moe::Qwen3Moe,
    &qwen2_moe::Qwen2Moe,
    &deepseek_v3::DeepseekV3,
    &deepseek_v3::glm4_moe_lite::Glm4MoeLite,
    &glm4_moe::Glm4Moe,
    &minimax_m2::MiniMaxM2,
];

/// What moeq knows about one model family. Every method that reads `config.json` parses it
/// into the family's typed config first, with errors naming the file and the key.
pub trait Family: Sync {
    /// A short name (`inspect`'s architecture): `gpt-oss`, `mixtral`, `llama`.
    fn name(&self) -> &'static str;

    /// The Hugging Face classes (`architectures[0]` in `config.json`) of this family.
    fn classes(&self) -> &'static [&'static str];

    /// For a `config.json` without `architectures`: the class to report when it is this
    /// family's own layout (OpenAI's original gpt-oss), else `None`.
    fn classless(&self, _config: &Keys) -> Option<&'static str> {
        None
    }

    /// What [`Family::classless`] recognizes, in words (for the list of supported models).
    fn classless_description(&self) -> Option<&'static str> {
        None
    }

    /// The layout of a checkpoint of this family. With its tensor names, from the tensors
    /// alone, as llama.cpp's converter decides how to read each tensor by its name (a
    /// fine-tune's `config.json` often still describes the base model); without them (empty),
    /// what `config.json` says. Where the two disagree the tensors win and moeq warns
    /// ([`ModelConfig::warnings`]). MLX builds are recognized before this is asked.
    fn layout(&self, _config: &Keys, _tensor_names: &[&str]) -> SourceLayout {
        SourceLayout::Hf
    }

    /// Hyperparameters for `inspect`: GGUF key names (without the architecture prefix) and the
    /// `config.json` values they come from.
    fn inspect_hparams(&self, config: &Keys, _layout: SourceLayout) -> Vec<(&'static str, Json)> {
        common::inspect_hparams(config)
    }

    /// The `general.architecture` llama.cpp uses for this family.
    fn gguf_arch(&self) -> &'static str;

    /// Whether a GGUF of `general.architecture` `arch` with `expert_count` experts (0 when the
    /// key is absent) is a model of this family (for eval and verify).
    fn runs_gguf(&self, arch: &str, _expert_count: u64) -> bool {
        arch == self.gguf_arch()
    }

    /// The `tokenizer.*` keys for a checkpoint whose tokenizer is in `dir`, as the family's
    /// converter writes them; `pre` overrides the pre-tokenizer. Returns keys and warnings.
    fn vocab(&self, dir: &Path, config: &Json, pre: Option<&str>) -> Result<(Metadata, Vec<String>)>;

    /// An error when llama.cpp's converter or runtime cannot carry this checkpoint in a GGUF
    /// (`moeq convert` checks it before writing one), though moeq still reads it: its
    /// [`Family::convert`] plans it for `--format mlx` and the forward (Qwen3-MoE with dense
    /// layers, which mlx-lm runs).
    fn gguf_refusal(&self, _config: &ModelConfig) -> Result<()> {
        Ok(())
    }

    /// The GGUF llama.cpp's converter writes for a checkpoint of this family.
    fn convert<'a>(
        &self,
        model: &'a SafetensorsModel,
        config: &ModelConfig,
        outtype: OutType,
        vocab: Option<Metadata>,
    ) -> Result<Converted<'a>>;

    /// The family's GGUF metadata for a build of it (an MLX folder read back), and the head
    /// size by which llama.cpp's q/k rows are permuted (0: not permuted).
    fn build_metadata(&self, config: &ModelConfig) -> Result<(Metadata, u64)>;

    /// Tensors of llama.cpp's file that a checkpoint computes from its config rather than
    /// stores (Llama 3.1's `rope_freqs`): what a reader of a folder without them (an MLX build)
    /// adds to its recipes. None by default.
    fn computed_recipes(&self, _config: &ModelConfig) -> Result<Vec<crate::plan::recipe::Recipe<'static>>> {
        Ok(Vec::new())
    }

    /// Per-layer tensor names: Hugging Face (after `model.layers.N.`) → llama.cpp (after
    /// `blk.N.`), in llama.cpp's order, not counting stacked experts.
    fn layer_names(&self) -> &'static [(&'static str, &'static str)];

    /// The MLX module holding the stacked experts of a layer (`mlp.experts`,
    /// `block_sparse_moe.switch_mlp`).
    fn mlx_experts(&self) -> &'static str {
        "block_sparse_moe.switch_mlp"
    }

    /// The MoE router's MLX module, as a name suffix (`.block_sparse_moe.gate`), for
    /// families whose router mlx-lm quantizes like any linear layer (moeq warns).
    fn mlx_router(&self) -> Option<&'static str> {
        None
    }

    /// Whether an MLX build keeps the tensor `gguf` (llama.cpp's name) of the family's GGUF
    /// plan: mlx-lm's `sanitize` drops some (GLM-4.5's multi-token-prediction layer).
    fn mlx_keeps(&self, _config: &ModelConfig, _gguf: &str) -> bool {
        true
    }

    /// mlx-lm's per-model choice for `module` (its `quant_predicate`), given `--type` and
    /// the module: the type and, when mlx-lm writes other settings than the type's, the
    /// `quantization` entry. `None`: the global choice applies.
    fn mlx_choice(&self, _module: &MlxModule, _ty: Option<MlxType>, _dtype: MlxType) -> Option<MlxChoice> {
        None
    }

    /// Whether mlx-lm casts tensor `name` (its MLX name) to the model's dtype (its model's
    /// `cast_predicate`).
    fn mlx_cast(&self, _name: &str) -> bool {
        true
    }

    /// The Hugging Face `config.json` of a build (MLX, or `--format hf` when `quantized`).
    fn hf_config(&self, config: &ModelConfig, _quantized: bool) -> Result<Json> {
        Ok(config.json.clone())
    }

    /// The family's published Hugging Face layout (`--format hf`): the tensors to write (its
    /// `config.json` is [`Family::hf_config`]); `None` when the family has none.
    fn hf_build<'a>(&self, _model: &'a SafetensorsModel, _config: &ModelConfig) -> Option<Result<Vec<Item<'a>>>> {
        None
    }

    /// The family's forward blocks (for eval and verify).
    fn forward(&self) -> &'static dyn Blocks;
}

/// A module of an MLX build, as mlx-lm's `quant_predicate` sees it.
pub struct MlxModule<'m> {
    /// Its MLX path (`model.layers.0.mlp.router`).
    pub path: &'m str,
    /// Stacked experts.
    pub experts: bool,
    /// Stored as OpenAI MXFP4 in the source.
    pub stored_mxfp4: bool,
    /// Values per row.
    pub row_len: u64,
}

/// A family's MLX choice for one module.
pub struct MlxChoice {
    /// The type.
    pub ty: MlxType,
    /// The `quantization` entry mlx-lm writes for it, when not the type's own.
    pub params: Option<Json>,
}

impl std::fmt::Debug for dyn Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for dyn Family {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

/// The family of a Hugging Face class.
pub fn for_class(class: &str) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.classes().contains(&class))
}

/// The family whose forward runs a GGUF of `general.architecture` `arch`.
pub fn for_gguf(arch: &str, expert_count: u64) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.runs_gguf(arch, expert_count))
}

/// The checkpoints moeq converts, in words.
fn supported() -> String {
    let classes: Vec<&str> = FAMILIES.iter().flat_map(|f| f.classes().iter().copied()).collect();
    let mut text = classes.join(", ");
    for d in FAMILIES.iter().filter_map(|f| f.classless_description()) {
        text += &format!(", or {d}");
    }
    text
}

/// How a checkpoint's tensors are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    /// OpenAI's `original/` folder: `block.N.*`, fused qkv, MXFP4 `mlp1_weight.blocks/.scales`.
    OpenAiOriginal,
    /// Hugging Face gpt-oss with `quant_method: mxfp4` (`*_blocks`/`*_scales`).
    HfMxfp4,
    /// Hugging Face with plain (bf16/f16/f32) weights.
    Hf,
    /// Hugging Face with FP8 weights: `F8_E4M3` with one F32 `weight_scale_inv` per block
    /// (`quantization_config` with `quant_method: fp8`; DeepSeek-V3/R1 as released).
    HfFp8,
    /// An MLX build (mlx-lm's layout: stacked experts, quantized `weight`/`scales`/`biases`).
    Mlx,
}

impl SourceLayout {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            SourceLayout::OpenAiOriginal => "OpenAI original layout",
            SourceLayout::HfMxfp4 => "Hugging Face MXFP4 layout",
            SourceLayout::Hf => "Hugging Face layout",
            SourceLayout::HfFp8 => "Hugging Face FP8 layout",
            SourceLayout::Mlx => "MLX build",
        }
    }

    /// What in `config.json` says this layout (for warnings).
    pub fn config_evidence(self) -> &'static str {
        match self {
            SourceLayout::OpenAiOriginal => "OpenAI's original form (no \"architectures\")",
            SourceLayout::HfMxfp4 => "\"quantization_config\": {\"quant_method\": \"mxfp4\"}",
            SourceLayout::Hf => "no quantization",
            SourceLayout::HfFp8 => "\"quantization_config\": {\"quant_method\": \"fp8\"}",
            SourceLayout::Mlx => "an MLX \"quantization\" block",
        }
    }

    /// What in the tensors shows this layout (for warnings).
    pub fn tensor_evidence(self) -> &'static str {
        match self {
            SourceLayout::OpenAiOriginal => "named as in OpenAI's original layout (block.N.*)",
            SourceLayout::HfMxfp4 => "MXFP4 (*_blocks/*_scales tensors)",
            SourceLayout::Hf => "plain float weights",
            SourceLayout::HfFp8 => "FP8 (F8_E4M3 weights with *_scale_inv block scales)",
            SourceLayout::Mlx => {
                "in MLX's form (quantized .weight/.scales pairs, mlx-lm's names or format: mlx shards)"
            }
        }
    }
}

/// A checkpoint's `config.json` and what it says: the family, class and layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub family: &'static dyn Family,
    /// The class name in `architectures` (or the family's for a config without one).
    pub class: String,
    /// The tensor layout.
    pub layout: SourceLayout,
    /// Hyperparameters for `inspect`, named as llama.cpp's GGUF keys name them (without the
    /// architecture prefix).
    pub hparams: Vec<(&'static str, Json)>,
    /// The whole parsed `config.json`.
    pub json: Json,
    /// The folder it was read from (empty when built from JSON alone).
    pub dir: PathBuf,
    /// Where `config.json` disagrees with the tensors (the layout follows the tensors).
    pub warnings: Vec<String>,
}

impl ModelConfig {
    /// Reads `config.json` in `dir` and finds the family; `Ok(None)` when there is none.
    /// `tensor_names` are the checkpoint's (empty when unknown), for the layout; with the
    /// opened tensors, [`crate::source::Source::open`] decides it from them.
    pub fn detect(dir: &Path, tensor_names: &[&str]) -> Result<Option<ModelConfig>> {
        let Some(file) = ConfigFile::read(dir)? else { return Ok(None) };
        let config = Self::from_json(&file.json, tensor_names).with_context(|| format!("{}", file.path.display()))?;
        Ok(Some(ModelConfig { dir: dir.to_path_buf(), ..config }))
    }

    /// Interprets a parsed `config.json`.
    pub fn from_json(json: &Json, tensor_names: &[&str]) -> Result<ModelConfig> {
        if !json.is_object() {
            bail!("config.json is not a JSON object");
        }
        let keys = Keys::of(json, "");
        let (family, class) = match json.get("architectures") {
            Some(Json::Array(list)) => match list.first().and_then(Json::as_str) {
                Some(c) => match for_class(c) {
                    Some(f) => (f, c.to_string()),
                    None => bail!("unknown architecture '{c}'; moeq supports {}", supported()),
                },
                None => bail!("\"architectures\" names no class"),
            },
            Some(_) => bail!("\"architectures\" is not a list"),
            None => match FAMILIES.iter().find_map(|f| f.classless(&keys).map(|c| (*f, c))) {
                Some((f, c)) => (f, c.to_string()),
                None => bail!("no \"architectures\" entry; moeq supports {}", supported()),
            },
        };
        let layout = family.layout(&keys, tensor_names);
        // mlx-lm's quantization block marks an MLX build.
        let layout = if keys.object("quantization")?.is_some() { SourceLayout::Mlx } else { layout };
        let hparams = family.inspect_hparams(&keys, layout);
        Ok(ModelConfig {
            family,
            class,
            layout,
            hparams,
            json: json.clone(),
            dir: PathBuf::new(),
            warnings: Vec::new(),
        })
    }

    /// The `config.json` path, for errors.
    pub fn path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Its keys.
    pub fn keys(&self) -> Keys<'_> {
        Keys::of(&self.json, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detects_each_family() {
        let c = ModelConfig::from_json(
            &json!({"architectures": ["GptOssForCausalLM"],
            "quantization_config": {"quant_method": "mxfp4"}, "num_hidden_layers": 24}),
            &[],
        )
        .unwrap();
        assert_eq!((c.family.name(), c.layout), ("gpt-oss", SourceLayout::HfMxfp4));
        assert_eq!(c.hparams, vec![("block_count", json!(24))]);
        let c = ModelConfig::from_json(&json!({"architectures": ["GptOssForCausalLM"]}), &[]).unwrap();
        assert_eq!(c.layout, SourceLayout::Hf);
        let c = ModelConfig::from_json(&json!({"num_experts": 32, "experts_per_token": 4}), &[]).unwrap();
        assert_eq!(c.layout, SourceLayout::OpenAiOriginal);
        let c = ModelConfig::from_json(&json!({"architectures": ["MixtralForCausalLM"]}), &[]).unwrap();
        assert_eq!(c.family.name(), "mixtral");
    }

    #[test]
    fn gpt_oss_layout_comes_from_the_tensor_names() {
        let stale = json!({"architectures": ["GptOssForCausalLM"], "quantization_config": {"quant_method": "mxfp4"}});
        let keys = Keys::of(&stale, "");
        let g = &gpt_oss::GptOss;
        assert_eq!(g.layout(&keys, &[]), SourceLayout::HfMxfp4);
        let bf16 = ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"];
        assert_eq!(g.layout(&keys, &bf16), SourceLayout::Hf);
        let mxfp4 =
            ["model.layers.0.mlp.experts.gate_up_proj_blocks", "model.layers.0.mlp.experts.gate_up_proj_scales"];
        let none = json!({"architectures": ["GptOssForCausalLM"]});
        assert_eq!(g.layout(&Keys::of(&none, ""), &mxfp4), SourceLayout::HfMxfp4);
        let original = ["embedding.weight", "block.0.mlp.mlp1_weight.blocks", "block.0.mlp.mlp1_weight.scales"];
        assert_eq!(g.layout(&keys, &original), SourceLayout::OpenAiOriginal);
        let original_config = json!({"num_experts": 4, "experts_per_token": 2});
        assert_eq!(g.layout(&Keys::of(&original_config, ""), &mxfp4), SourceLayout::HfMxfp4);
        assert!(gpt_oss::original_form(&Keys::of(&original_config, "")) && !gpt_oss::original_form(&keys));
    }

    #[test]
    fn the_registry_finds_each_family() {
        for f in FAMILIES {
            for c in f.classes() {
                assert_eq!(for_class(c).map(|g| g.name()), Some(f.name()));
            }
        }
        assert_eq!(for_gguf("gpt-oss", 4).map(|f| f.name()), Some("gpt-oss"));
        // llama.cpp's `llama` architecture: Mixtral with experts, Llama without.
        assert_eq!(for_gguf("llama", 8).map(|f| f.name()), Some("mixtral"));
        assert_eq!(for_gguf("llama", 0).map(|f| f.name()), Some("llama"));
        assert_eq!(for_gguf("qwen3moe", 128).map(|f| f.name()), Some("qwen3-moe"));
        assert_eq!(for_gguf("qwen2moe", 60).map(|f| f.name()), Some("qwen2-moe"));
        assert_eq!(for_gguf("glm4moe", 128).map(|f| f.name()), Some("glm4-moe"));
        assert_eq!(for_gguf("minimax-m2", 256).map(|f| f.name()), Some("minimax-m2"));
        assert!(for_gguf("granitemoe", 32).is_none() && for_class("GraniteMoeForCausalLM").is_none());
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        let e = ModelConfig::from_json(&json!({"architectures": ["GraniteMoeForCausalLM"]}), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown architecture 'GraniteMoeForCausalLM'"), "{e}");
        for class in FAMILIES.iter().flat_map(|f| f.classes()) {
            assert!(e.to_string().contains(&format!(" {class},")), "{class} not listed in: {e}");
        }
        assert!(e.to_string().ends_with(", or OpenAI's original gpt-oss layout"), "{e}");
        assert!(ModelConfig::from_json(&json!({"architectures": []}), &[]).is_err());
        assert!(ModelConfig::from_json(&json!({"architectures": "Llama"}), &[]).is_err());
        assert!(ModelConfig::from_json(&json!({}), &[]).is_err());
        assert!(ModelConfig::from_json(&json!([1, 2]), &[]).is_err());
    }
}
