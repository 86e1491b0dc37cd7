//! Every expert checked on every token (`moeq verify --every-expert`): the block check compares
//! each expert only on the tokens the router sends it, which says little about experts it
//! rarely picks (the ones an importance matrix may have no data for). Here each expert of each
//! MoE layer runs on all the source's block inputs, in the source and in the output model.

use anyhow::{Result, bail};

use crate::forward::Model;
use crate::model::weights::Weights;

/// One expert of one layer on every token.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertCheck {
    /// The layer.
    pub layer: usize,
    /// The expert.
    pub expert: usize,
    /// Tokens the source's router sent it.
    pub routed: usize,
    /// Relative L2 error of its output on every token: ‖out − src‖ / ‖src‖.
    pub rel_err: f64,
}

/// Each expert of `output` against `source` on the source's block inputs of `sequences`
/// (both models must have the same layers and experts).
pub fn expert_errors(source: &Weights, output: &Weights, sequences: &[Vec<u32>]) -> Result<Vec<ExpertCheck>> {
    let (src, out) = (Model::new(source)?, Model::new(output)?);
    let src = Model { keep_expert_out: false, ..src };
    let c = &src.cfg;
    if (c.n_layer, c.n_embd, c.n_expert) != (out.cfg.n_layer, out.cfg.n_embd, out.cfg.n_expert) {
        bail!("{} and {} differ in layers, width or experts", source.path, output.path);
    }
    if c.n_expert == 0 {
        bail!("{}: a dense model has no experts", source.path);
    }
    let tokens: Vec<u32> = sequences.iter().flatten().copied().collect();
    let mut starts = Vec::with_capacity(tokens.len());
    let mut at = 0;
    for s in sequences {
        starts.extend(std::iter::repeat_n(at, s.len()));
        at += s.len();
    }
    let mut x = src.embed(&tokens)?;
    let mut checks = Vec::new();
    for l in 0..c.n_layer {
        let (m_in, f) = src.layer(l, &mut x, &starts)?;
        for e in 0..c.n_expert {
            let (a, b) = (src.expert(l, e, &m_in)?, out.expert(l, e, &m_in)?);
            let d: f64 = a.iter().zip(&b).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum();
            let n: f64 = a.iter().map(|&p| (p as f64).powi(2)).sum();
            let rel_err = if n == 0.0 { if d == 0.0 { 0.0 } else { f64::INFINITY } } else { (d / n).sqrt() };
            let routed = f.routes.iter().filter(|r| r.contains(&e)).count();
            checks.push(ExpertCheck { layer: l, expert: e, routed, rel_err });
        }
    }
    Ok(checks)
}
