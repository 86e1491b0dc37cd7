//! The measured KL of a whole build: the source model with every quantized tensor replaced at
//! once, run on the calibration tokens and compared with the source's own run. What the
//! per-tensor probes predict by adding up tensors measured alone; a whole build also holds their
//! interaction (docs/mlx-budget.md: inside a 3-bit build of SmolLM2-135M 58 two-bit downgrades
//! cost twice their summed prediction).

use std::sync::Arc;

use anyhow::{Context, Result};
use moeq_formats::gguf::GgmlType;

use super::reference::{Reference, Runner, reference, tail_kl};
use super::{Calibration, with_weights};
use crate::forward::Model;

/// The source's reference run on the calibration tokens, kept to measure whole builds against
/// ([`Judge::kl`]). Memory: the residual stream entering every layer,
/// `(layers + 1) · tokens · hidden` f32 values, and the reference's top tokens per position
/// (as [`super::sensitivities`] holds them).
pub struct Judge<'w, 'a> {
    cal: &'w Calibration<'w, 'a>,
    model: Model<'w, 'a>,
    run: Runner,
    reference: Reference,
    /// Forwards run by [`Judge::kl`] so far.
    pub runs: usize,
}

impl<'w, 'a> Judge<'w, 'a> {
    /// Runs the source model on the calibration tokens (one forward).
    ///
    /// Errors: the calibration is empty or holds a token outside the vocabulary, the source
    /// model cannot run.
    pub fn new(cal: &'w Calibration<'w, 'a>) -> Result<Judge<'w, 'a>> {
        let model = Model::new(cal.weights).context("the source model cannot run for KL calibration")?;
        let model = Model { probe: None, keep_expert_out: false, memo: None, ..model };
        let chunks: Vec<Vec<u32>> = cal.chunks.iter().filter(|c| !c.is_empty()).cloned().collect();
        if chunks.is_empty() {
            anyhow::bail!("{}: no calibration tokens", cal.what);
        }
        let run = Runner::new(&model, &chunks);
        let reference = reference(&model, &run, &[], &mut |_, _| Ok(()))
            .with_context(|| format!("the source model on {}", cal.what))?;
        Ok(Judge { cal, model, run, reference, runs: 0 })
    }

    /// The mean next-token KL (nats, coarse as the probes' KL: the reference's top tokens and
    /// the rest) over the calibration positions of the source model with every tensor of
    /// `tensors` replaced (name, type of the bytes, all rows in order; see
    /// [`crate::model::weights::Weights::replaced_all`]). One forward of the whole model.
    ///
    /// Errors: a replacement does not fit its tensor, the forward fails, or the KL is not
    /// finite.
    pub fn kl(&mut self, tensors: &[(String, GgmlType, Arc<Vec<u8>>)]) -> Result<f64> {
        let w = self.cal.weights.replaced_all(tensors)?;
        let changed = with_weights(&self.model, &w);
        let x = changed.embed(&self.run.tokens)?;
        let kl =
            tail_kl(&changed, &self.run, &self.reference, x, 0).context("a whole build on the calibration tokens")?;
        self.runs += 1;
        anyhow::ensure!(kl.is_finite(), "a whole build's KL on the calibration tokens is not finite");
        Ok(kl)
    }
}
