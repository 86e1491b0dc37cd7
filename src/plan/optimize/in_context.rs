//! Whole builds measured in context: the knapsack's choice, corrected by what its changes cost
//! inside the uniform build, and a guard that writes the uniform build when it measures better.
//!
//! The per-tensor KL probes ([`super::sensitivity`]) measure each tensor alone on the clean
//! model and the knapsack adds them up. Inside a low-bit build the tensors interact: on
//! SmolLM2-135M at the uniform q3 size (docs/mlx-budget.md) the knapsack's 58 two-bit
//! downgrades cost +0.90 KL applied to the uniform q3 build (+0.42 predicted) and its upgrades
//! saved 0.56 (1.33 predicted), so the mix lost to the uniform build. [`refine`] measures that
//! in the build's own context, with whole forwards on the calibration tokens:
//!
//! 1. the uniform build (the *base*: every module at the base type) and the knapsack's choice;
//! 2. per round: the choice's *downgrades* alone (options predicted worse than the base type,
//!    the rest at the base type) and its *upgrades* alone, each against the base build; their
//!    measured KL change over the summed prediction gives two factors, `f_down` and `f_up`
//!    (held in [1/16, 16]; 1 without such changes);
//! 3. the knapsack again on the predictions rescaled around the base type (an option predicted
//!    `Δ` worse than the base type counts `f_down · Δ`, one predicted `Δ` better `f_up · Δ`),
//!    and its choice measured;
//! 4. the lowest measured build within the budget is written — the uniform build when nothing
//!    measured lower (ties go to the uniform build), so the written build is never worse than
//!    the uniform one on the calibration tokens.
//!
//! Cost: at most `2 + 3 · rounds` forwards of the whole model on the calibration tokens, and the
//! reference run (about as many as the per-layer probes' own tail runs of one layer each).

use anyhow::Result;
use serde_json::{Value as Json, json};

use super::knapsack::Choice;

/// Correction rounds of [`refine`].
pub const ROUNDS: usize = 2;

/// The bounds of the correction factors.
const FACTOR_RANGE: (f64, f64) = (1.0 / 16.0, 16.0);

/// One whole build measured by [`refine`].
#[derive(Clone, Debug, PartialEq)]
pub struct WholeBuild {
    /// What it is, in words (`uniform q3`, `knapsack`, `round 1: downgrades alone`, …).
    pub name: String,
    /// Mean next-token KL on the calibration tokens (nats), measured.
    pub kl: f64,
    /// The summed per-tensor prediction of its KL (nats).
    pub predicted: f64,
    /// Its bytes, counted as the budget is.
    pub bytes: u64,
    /// Whether it fits the budget (only those may be written).
    pub fits: bool,
    /// Modules below / above the base type (by predicted KL).
    pub down: usize,
    /// See `down`.
    pub up: usize,
}

/// What [`refine`] measured and chose, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct WholeBuilds {
    /// The base type, in words.
    pub base: String,
    /// Every build measured, in order.
    pub builds: Vec<WholeBuild>,
    /// The correction factors of each round: `(f_down, f_up)`.
    pub factors: Vec<(f64, f64)>,
    /// The index in `builds` of the build written.
    pub chosen: usize,
    /// Wall-clock seconds of the forwards (and the reference run).
    pub seconds: f64,
}

impl WholeBuilds {
    /// The JSON of the log (`"whole_builds"`).
    pub fn to_json(&self) -> Json {
        json!({
            "base": self.base,
            "chosen": self.builds[self.chosen].name,
            "seconds": self.seconds,
            "factors": self.factors.iter().map(|(d, u)| json!({"down": d, "up": u})).collect::<Vec<_>>(),
            "builds": self.builds.iter().map(|b| json!({
                "name": b.name,
                "kl": b.kl,
                "predicted": b.predicted,
                "bytes": b.bytes,
                "fits": b.fits,
                "down": b.down,
                "up": b.up,
            })).collect::<Vec<_>>(),
        })
    }

    /// Lines of the `--dry-run` text.
    pub fn to_text(&self) -> String {
        let mut out =
            format!("  whole builds measured on the calibration tokens (base {}; {:.1} s):\n", self.base, self.seconds);
        for (i, b) in self.builds.iter().enumerate() {
            out.push_str(&format!(
                "    {} {:<34} KL {} (predicted {}), {} bytes{}, {} down / {} up\n",
                if i == self.chosen { "*" } else { " " },
                b.name,
                kl_text(b.kl),
                kl_text(b.predicted),
                b.bytes,
                if b.fits { "" } else { " (over the budget: measured only)" },
                b.down,
                b.up
            ));
        }
        for (r, (d, u)) in self.factors.iter().enumerate() {
            out.push_str(&format!(
                "    round {}: measured / predicted KL change of the downgrades {d:.3}, of the upgrades {u:.3}\n",
                r + 1
            ));
        }
        out.push_str(&format!("  written: {}\n", self.summary()));
        out
    }

    /// One line: the build written and why.
    pub fn summary(&self) -> String {
        let chosen = &self.builds[self.chosen];
        let uniform = &self.builds[0];
        if self.chosen == 0 {
            format!(
                "the {} build (KL {} on the calibration tokens): no mix measured lower (best {})",
                uniform.name,
                kl_text(uniform.kl),
                kl_text(self.builds.iter().filter(|b| b.fits).skip(1).map(|b| b.kl).fold(f64::INFINITY, f64::min))
            )
        } else {
            format!(
                "{} (KL {} on the calibration tokens, the {} build {})",
                chosen.name,
                kl_text(chosen.kl),
                uniform.name,
                kl_text(uniform.kl)
            )
        }
    }
}

/// A KL in nats for the log: four decimals, or four significant digits below 0.01 (a tiny
/// model's builds differ in the fifth decimal).
fn kl_text(kl: f64) -> String {
    if kl.abs() >= 0.01 || kl == 0.0 || !kl.is_finite() { format!("{kl:.4}") } else { format!("{kl:.3e}") }
}

/// Summed prediction of the options `picks` (infinite options count as they are).
fn predicted(items: &[Vec<Choice>], picks: &[usize]) -> f64 {
    items.iter().zip(picks).map(|(o, &p)| o[p].error).sum()
}

/// The options of `picks` predicted worse (`worse`) or better than the base, the rest at the
/// base; and the summed predicted change (≥ 0 for `worse`, ≤ 0 else).
fn part(items: &[Vec<Choice>], base: &[usize], picks: &[usize], worse: bool) -> (Vec<usize>, f64, usize) {
    let mut out = base.to_vec();
    let (mut change, mut n) = (0.0, 0);
    for (k, (&p, &b)) in picks.iter().zip(base).enumerate() {
        let d = items[k][p].error - items[k][b].error;
        if p != b && d.is_finite() && ((worse && d > 0.0) || (!worse && d < 0.0)) {
            out[k] = p;
            change += d;
            n += 1;
        }
    }
    (out, change, n)
}

/// The predictions rescaled around the base option `base[k]`: an option `Δ` worse counts
/// `f_down · Δ`, one `Δ` better `f_up · Δ`, then shifted per item so that none is negative
/// (a constant per item changes no choice). Infinite options stay infinite.
pub fn rescaled(items: &[Vec<Choice>], base: &[usize], f_down: f64, f_up: f64) -> Vec<Vec<Choice>> {
    items
        .iter()
        .zip(base)
        .map(|(o, &b)| {
            let e0 = o[b].error;
            let scaled: Vec<f64> = o
                .iter()
                .map(|c| {
                    let d = c.error - e0;
                    if !d.is_finite() {
                        c.error
                    } else if d > 0.0 {
                        f_down * d
                    } else {
                        f_up * d
                    }
                })
                .collect();
            let low = scaled.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::min);
            o.iter().zip(scaled).map(|(c, e)| Choice { bytes: c.bytes, error: e - low }).collect()
        })
        .collect()
}

/// Chooses among whole builds by their measured KL (see the module). `items`: per module its
/// options' predicted KL; `base`: the option of the base type per module (the uniform build);
/// `first`: the knapsack's choice on `items`; `solve`: the knapsack on other scores, returning
/// the picks of a build within the budget; `size`: a build's bytes and whether it fits;
/// `measure`: a build's mean KL on the calibration tokens. Returns the picks to write and the
/// log.
///
/// Errors: those of `solve`, `size` and `measure`.
pub fn refine(
    items: &[Vec<Choice>],
    base: &[usize],
    base_name: &str,
    first: Vec<usize>,
    mut solve: impl FnMut(&[Vec<Choice>]) -> Result<Vec<usize>>,
    size: impl Fn(&[usize]) -> Result<(u64, bool)>,
    mut measure: impl FnMut(&[usize]) -> Result<f64>,
) -> Result<(Vec<usize>, WholeBuilds)> {
    let began = std::time::Instant::now();
    let mut builds: Vec<(WholeBuild, Vec<usize>)> = Vec::new();
    let record =
        |builds: &mut Vec<(WholeBuild, Vec<usize>)>, name: String, picks: Vec<usize>, kl: f64| -> Result<f64> {
            let (bytes, fits) = size(&picks)?;
            let (down, up) = (part(items, base, &picks, true).2, part(items, base, &picks, false).2);
            let b = WholeBuild { name, kl, predicted: predicted(items, &picks), bytes, fits, down, up };
            builds.push((b, picks));
            Ok(kl)
        };
    let kl_base = measure(base)?;
    record(&mut builds, base_name.to_string(), base.to_vec(), kl_base)?;
    let kl = measure(&first)?;
    record(&mut builds, "knapsack (tensors probed alone)".into(), first.clone(), kl)?;
    let mut factors = Vec::new();
    let mut current = first;
    for round in 1..=ROUNDS {
        let (down, pred_down, n_down) = part(items, base, &current, true);
        let (up, pred_up, n_up) = part(items, base, &current, false);
        if n_down + n_up == 0 {
            break;
        }
        // The measured / predicted change of a part's options alone (1 without any); a build
        // measured before (the choice itself, when it only downgrades or only upgrades) is not
        // run again: the forward is deterministic.
        let mut factor = |part: Vec<usize>, predicted: f64, n: usize, what: &str| -> Result<f64> {
            if n == 0 {
                return Ok(1.0);
            }
            let kl = match builds.iter().find(|(_, p)| *p == part) {
                Some((b, _)) => b.kl,
                None => measure(&part)?,
            };
            record(&mut builds, format!("round {round}: its {what} alone"), part, kl)?;
            let measured = kl - kl_base;
            Ok(if predicted == 0.0 { 1.0 } else { (measured / predicted).clamp(FACTOR_RANGE.0, FACTOR_RANGE.1) })
        };
        let f_down = factor(down, pred_down, n_down, "downgrades")?;
        let f_up = factor(up, pred_up, n_up, "upgrades")?;
        factors.push((f_down, f_up));
        let picks = solve(&rescaled(items, base, f_down, f_up))?;
        if builds.iter().any(|(_, p)| *p == picks) {
            break;
        }
        let kl = measure(&picks)?;
        record(&mut builds, format!("round {round}: knapsack in context"), picks.clone(), kl)?;
        current = picks;
    }
    // The lowest measured build within the budget; the base (first) on ties.
    let mut chosen = 0;
    for (i, (b, _)) in builds.iter().enumerate() {
        if b.fits && b.kl < builds[chosen].0.kl {
            chosen = i;
        }
    }
    let picks = builds[chosen].1.clone();
    let log = WholeBuilds {
        base: base_name.to_string(),
        builds: builds.into_iter().map(|(b, _)| b).collect(),
        factors,
        chosen,
        seconds: began.elapsed().as_secs_f64(),
    };
    Ok((picks, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_kls_keep_their_digits() {
        assert_eq!(kl_text(2.04417), "2.0442");
        assert_eq!(kl_text(0.000123456), "1.235e-4");
        assert_eq!(kl_text(0.0), "0.0000");
    }

    fn items() -> Vec<Vec<Choice>> {
        // Three modules, options: 2 bits, 3 bits (base), 4 bits.
        (0..3)
            .map(|k| {
                vec![
                    Choice { bytes: 2, error: 1.0 + k as f64 },
                    Choice { bytes: 3, error: 0.5 },
                    Choice { bytes: 4, error: 0.1 * (k + 1) as f64 },
                ]
            })
            .collect()
    }

    #[test]
    fn rescaling_scales_changes_around_the_base_and_stays_non_negative() {
        let it = items();
        let base = vec![1, 1, 1];
        let r = rescaled(&it, &base, 2.0, 0.5);
        for (o, s) in it.iter().zip(&r) {
            let d = |v: &[Choice], a: usize, b: usize| v[a].error - v[b].error;
            assert!((d(s, 0, 1) - 2.0 * d(o, 0, 1)).abs() < 1e-12);
            assert!((d(s, 2, 1) - 0.5 * d(o, 2, 1)).abs() < 1e-12);
            assert!(s.iter().all(|c| c.error >= 0.0) && s.iter().zip(o).all(|(a, b)| a.bytes == b.bytes));
        }
        let up = rescaled(&it, &base, 1.0, 16.0);
        assert!(up.iter().flatten().all(|c| c.error >= 0.0));
    }

    #[test]
    fn the_uniform_build_is_written_unless_a_mix_measures_lower() {
        let it = items();
        let base = vec![1, 1, 1];
        let first = vec![0, 2, 1];
        let size = |p: &[usize]| -> Result<(u64, bool)> {
            let b: u64 = p.iter().zip(&items()).map(|(&o, c)| c[o].bytes).sum();
            Ok((b, b <= 9))
        };
        // Interaction: every change from the base costs more than predicted; the uniform
        // build measures lowest.
        let worse = |p: &[usize]| -> Result<f64> { Ok(1.0 + p.iter().filter(|&&o| o != 1).count() as f64 * 0.3) };
        let (picks, log) = refine(
            &it,
            &base,
            "uniform q3",
            first.clone(),
            |s| {
                let mut best = vec![1, 1, 1];
                // Upgrade the module whose rescaled gain is largest if some downgrade pays for it.
                let gain = |k: usize| s[k][1].error - s[k][2].error;
                let cost = |k: usize| s[k][0].error - s[k][1].error;
                if gain(2) > cost(0) {
                    best = vec![0, 1, 2];
                }
                Ok(best)
            },
            size,
            worse,
        )
        .unwrap();
        assert_eq!(picks, base);
        assert_eq!(log.chosen, 0);
        assert!(log.summary().contains("no mix measured lower"), "{}", log.summary());
        assert_eq!(log.builds[1].name, "knapsack (tensors probed alone)");
        assert!(log.builds.iter().skip(1).all(|b| b.kl > log.builds[0].kl));
        // The factors are measured over predicted: downgrade of module 0 (predicted +0.5, measured +0.3).
        assert!((log.factors[0].0 - 0.6).abs() < 1e-12, "{:?}", log.factors);
        // A mix that measures lower is written, and named.
        let better = |p: &[usize]| -> Result<f64> { Ok(if p == [0, 2, 1] { 0.5 } else { 1.0 }) };
        let (picks, log) = refine(&it, &base, "uniform q3", first, |_| Ok(vec![1, 1, 1]), size, better).unwrap();
        assert_eq!(picks, vec![0, 2, 1]);
        assert_eq!(log.builds[log.chosen].name, "knapsack (tensors probed alone)");
        assert!(log.to_text().contains("written: knapsack"), "{}", log.to_text());
    }
}
