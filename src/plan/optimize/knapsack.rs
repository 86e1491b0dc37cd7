//! The multiple-choice knapsack behind `--target-size` / `--target-bpw` / `--optimize`: one
//! option (a ggml type) per item (a tensor), each with a size in bytes and a measured error;
//! choose one option per item so that the summed error is least while the summed bytes stay
//! within a budget.
//!
//! Solved exactly, for sizes rounded up to a unit, by dynamic programming over the bytes
//! above the smallest choice (the textbook recurrence for the multiple-choice knapsack, e.g.
//! Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11). The unit depends only on
//! the items, never on the budget, so the result's error never grows when the budget grows,
//! and rounding sizes up means the real bytes never exceed the budget. The unit is chosen so
//! the table of choices holds at most [`MAX_TABLE`] bytes (one byte per item and unit step).

use std::fmt;

/// One option of one item: its size and its error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Bytes this option takes.
    pub bytes: u64,
    /// Its error (finite, ≥ 0; the objective is the sum over items).
    pub error: f64,
}

/// A solution: one option index per item.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution {
    /// The option chosen for each item (an index into that item's options).
    pub picks: Vec<usize>,
    /// Summed bytes of the chosen options.
    pub bytes: u64,
    /// Summed error of the chosen options (added in item order).
    pub error: f64,
    /// The rounding unit of sizes, in bytes.
    pub unit: u64,
}

impl Solution {
    /// The solution picking option `picks[i]` of each item `i` (sizes rounded to `unit` bytes):
    /// its bytes and error summed in item order.
    pub fn of(items: &[Vec<Choice>], picks: Vec<usize>, unit: u64) -> Solution {
        let bytes = picks.iter().enumerate().map(|(i, &o)| items[i][o].bytes).sum();
        let error = picks.iter().enumerate().fold(0.0, |acc, (i, &o)| acc + items[i][o].error);
        Solution { picks, bytes, error, unit }
    }
}

/// Why no solution exists.
#[derive(Clone, Debug, PartialEq)]
pub enum KnapsackError {
    /// Even the smallest option of every item exceeds the budget.
    TooSmall {
        /// Bytes of the smallest choice of every item.
        min_bytes: u64,
    },
    /// An item has no option (or only options with a non-finite or negative error).
    NoOption {
        /// The item.
        item: usize,
    },
    /// More than 255 options for one item.
    TooManyOptions {
        /// The item.
        item: usize,
    },
}

impl fmt::Display for KnapsackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KnapsackError::TooSmall { min_bytes } => {
                write!(f, "the smallest choice of every item takes {min_bytes} bytes, more than the budget")
            }
            KnapsackError::NoOption { item } => write!(f, "item {item} has no option with a finite error"),
            KnapsackError::TooManyOptions { item } => write!(f, "item {item} has more than 255 options"),
        }
    }
}

impl std::error::Error for KnapsackError {}

/// Most bytes the table of choices may take (items × unit steps).
pub const MAX_TABLE: u64 = 32 << 20;

/// Most unit steps (the resolution of sizes when memory allows).
pub const MAX_STEPS: u64 = 1 << 17;

/// The options of an item that are not dominated (no other option is as small with a smaller
/// or equal error), sorted by bytes: their indices into `options`. Options with a non-finite
/// or negative error are left out.
pub fn pareto(options: &[Choice]) -> Vec<usize> {
    let mut idx: Vec<usize> =
        (0..options.len()).filter(|&i| options[i].error.is_finite() && options[i].error >= 0.0).collect();
    idx.sort_by(|&a, &b| {
        options[a].bytes.cmp(&options[b].bytes).then(options[a].error.total_cmp(&options[b].error)).then(a.cmp(&b))
    });
    let mut out: Vec<usize> = Vec::new();
    for i in idx {
        match out.last() {
            Some(&last) if options[i].error >= options[last].error => {}
            _ => out.push(i),
        }
    }
    out
}

/// Chooses one option per item minimizing the summed error with summed bytes ≤ `budget`
/// (see the module documentation). Ties go to the smaller option.
///
/// Errors: [`KnapsackError::TooSmall`] when the smallest options already exceed the budget;
/// an item without a usable option; an item with more than 255 options.
pub fn solve(items: &[Vec<Choice>], budget: u64) -> Result<Solution, KnapsackError> {
    let mut fronts = Vec::with_capacity(items.len());
    for (i, options) in items.iter().enumerate() {
        if options.len() > 255 {
            return Err(KnapsackError::TooManyOptions { item: i });
        }
        let front = pareto(options);
        if front.is_empty() {
            return Err(KnapsackError::NoOption { item: i });
        }
        fronts.push(front);
    }
    let base: Vec<u64> = fronts.iter().zip(items).map(|(f, o)| o[f[0]].bytes).collect();
    let min_bytes: u64 = base.iter().sum();
    if min_bytes > budget {
        return Err(KnapsackError::TooSmall { min_bytes });
    }
    let range: u64 = fronts.iter().zip(items).zip(&base).map(|((f, o), b)| o[*f.last().unwrap_or(&0)].bytes - b).sum();
    let steps = MAX_STEPS.min(MAX_TABLE / (items.len() as u64).max(1)).max(1);
    let unit = range.div_ceil(steps).max(1);
    let cost = |item: usize, option: usize| (items[item][option].bytes - base[item]).div_ceil(unit);
    let total_cost: u64 = (0..items.len()).map(|i| cost(i, *fronts[i].last().unwrap_or(&0))).sum();
    let cap = ((budget - min_bytes) / unit).min(total_cost) as usize;

    // best[c]: least error of the items so far with summed cost ≤ c (non-increasing in c).
    let mut best = vec![0.0f64; cap + 1];
    let mut next = vec![0.0f64; cap + 1];
    let mut table = vec![0u8; items.len() * (cap + 1)];
    for (i, front) in fronts.iter().enumerate() {
        let row = &mut table[i * (cap + 1)..(i + 1) * (cap + 1)];
        for c in 0..=cap {
            let mut pick = 0usize;
            let mut err = f64::INFINITY;
            for (k, &o) in front.iter().enumerate() {
                let w = cost(i, o) as usize;
                if w > c {
                    break;
                }
                let e = best[c - w] + items[i][o].error;
                if e < err {
                    err = e;
                    pick = k;
                }
            }
            next[c] = err;
            row[c] = pick as u8;
        }
        std::mem::swap(&mut best, &mut next);
    }
    let mut picks = vec![0usize; items.len()];
    let mut c = cap;
    for i in (0..items.len()).rev() {
        let k = table[i * (cap + 1) + c] as usize;
        let o = fronts[i][k];
        picks[i] = o;
        c -= cost(i, o) as usize;
    }
    Ok(Solution::of(items, picks, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for random cases.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_items(rng: &mut Rng, n: usize, max_opts: usize) -> Vec<Vec<Choice>> {
        (0..n)
            .map(|_| {
                let k = 1 + (rng.next() % max_opts as u64) as usize;
                (0..k)
                    .map(|_| Choice { bytes: 1 + rng.next() % 50, error: (rng.next() % 1000) as f64 / 100.0 })
                    .collect()
            })
            .collect()
    }

    /// Every combination: the least error within the budget.
    fn brute(items: &[Vec<Choice>], budget: u64) -> Option<f64> {
        fn go(items: &[Vec<Choice>], i: usize, bytes: u64, err: f64, budget: u64, best: &mut Option<f64>) {
            if bytes > budget {
                return;
            }
            if i == items.len() {
                if best.is_none_or(|b| err < b) {
                    *best = Some(err);
                }
                return;
            }
            for c in &items[i] {
                go(items, i + 1, bytes + c.bytes, err + c.error, budget, best);
            }
        }
        let mut best = None;
        go(items, 0, 0, 0.0, budget, &mut best);
        best
    }

    #[test]
    fn pareto_drops_dominated_options() {
        let o = |bytes, error| Choice { bytes, error };
        let opts = [o(10, 5.0), o(5, 6.0), o(12, 5.0), o(20, 1.0), o(8, f64::NAN), o(15, 7.0)];
        assert_eq!(pareto(&opts), vec![1, 0, 3]);
    }

    #[test]
    fn optimal_within_budget_on_small_cases() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let items = random_items(&mut rng, 1 + case % 5, 4);
            let min: u64 = items.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap()).sum();
            let max: u64 = items.iter().map(|o| o.iter().map(|c| c.bytes).max().unwrap()).sum();
            for budget in [min.saturating_sub(1), min, (min + max) / 2, max, max + 10] {
                let got = solve(&items, budget);
                match brute(&items, budget) {
                    None => assert_eq!(got, Err(KnapsackError::TooSmall { min_bytes: min })),
                    Some(best) => {
                        let s = got.expect("a solution exists");
                        // Small cases need no rounding: the unit is one byte, so exact.
                        assert_eq!(s.unit, 1);
                        assert!(s.bytes <= budget, "case {case}: {} > {budget}", s.bytes);
                        assert!((s.error - best).abs() < 1e-9, "case {case}: {} vs optimum {best}", s.error);
                        let bytes: u64 = s.picks.iter().enumerate().map(|(i, &p)| items[i][p].bytes).sum();
                        assert_eq!(bytes, s.bytes);
                    }
                }
            }
        }
    }

    #[test]
    fn budget_respected_and_monotone_with_rounding() {
        // Many items with large sizes: sizes are rounded to a unit of many bytes.
        let mut rng = Rng(12345);
        let items: Vec<Vec<Choice>> = (0..40)
            .map(|_| {
                (0..6)
                    .map(|_| Choice { bytes: 1_000 + rng.next() % 5_000_000, error: (rng.next() % 10_000) as f64 })
                    .collect()
            })
            .collect();
        let min: u64 = items.iter().map(|o| o.iter().map(|c| c.bytes).min().unwrap()).sum();
        let mut last = f64::INFINITY;
        for k in 0..8u64 {
            let budget = min + k * 15_000_000;
            let s = solve(&items, budget).unwrap();
            assert!(s.unit > 1);
            assert!(s.bytes <= budget);
            assert!(s.error <= last, "budget {budget}: error {} after {last}", s.error);
            last = s.error;
        }
        assert!(matches!(solve(&items, min - 1), Err(KnapsackError::TooSmall { .. })));
    }

    #[test]
    fn refuses_items_without_options() {
        let items = vec![vec![Choice { bytes: 1, error: 0.0 }], vec![Choice { bytes: 1, error: f64::NAN }]];
        assert_eq!(solve(&items, 10), Err(KnapsackError::NoOption { item: 1 }));
        assert_eq!(solve(&[vec![]], 10), Err(KnapsackError::NoOption { item: 0 }));
    }
}
