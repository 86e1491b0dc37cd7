//! Mixtral's typed config: Llama's, plus the experts (`num_local_experts`,
//! `num_experts_per_tok`).

use anyhow::{Context, Result, bail};

use crate::families::ModelConfig;
use crate::families::common::check_sizes;
use crate::families::llama::config::LlamaConfig;
use crate::source::config::Keys;

/// A Mixtral `config.json`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct MixtralConfig {
    /// What Mixtral shares with Llama.
    pub base: LlamaConfig,
    /// Experts per layer.
    pub n_expert: u64,
    /// Experts per token.
    pub n_expert_used: u64,
}

impl MixtralConfig {
    /// Reads the checkpoint's `config.json` once, with the file named in errors. Returns the
    /// config and warnings.
    pub fn load(config: &ModelConfig) -> Result<(MixtralConfig, Vec<String>)> {
        Self::parse(&config.keys()).with_context(|| format!("{}", config.path().display()))
    }

    /// Reads `config.json`'s keys.
    pub fn parse(json: &Keys) -> Result<(MixtralConfig, Vec<String>)> {
        let (n_expert, n_expert_used) = (json.u64("num_local_experts")?, json.u64("num_experts_per_tok")?);
        let (base, warnings) = LlamaConfig::parse(json)?;
        let hp = MixtralConfig { base, n_expert, n_expert_used };
        // As Qwen's limit: a count of 10^12 once listed expert tensors until killed.
        check_sizes(&[("num_local_experts", n_expert, 1 << 16)])?;
        if n_expert_used == 0 || n_expert_used > n_expert {
            bail!("num_experts_per_tok is {n_expert_used}, not 1 to num_local_experts ({n_expert})");
        }
        Ok((hp, warnings))
    }
}
