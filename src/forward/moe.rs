//! The feed-forward blocks families share: routed experts (a router, top-k, each expert a
//! gated MLP over its rows of the stacked `ffn_{gate,up,down}_exps` tensors) and the dense
//! gated MLP. A family chooses the routing, the activation and whether there are biases.

use anyhow::Result;

use super::ops::swiglu;
use super::{FfnOutput, Model};

/// A router: from one token's router logits and top-k, the chosen experts and their weights.
pub type Route = fn(&[f32], usize) -> (Vec<usize>, Vec<f32>);

/// One expert's computation: expert `e` on rows [n, hidden] → [n, hidden].
pub type Expert<'f> = dyn Fn(usize, &[f32]) -> Result<Vec<f32>> + 'f;

/// How a family's MoE block routes and computes.
pub struct Moe {
    /// The router (`ffn_gate_inp`) and every expert projection have biases.
    pub bias: bool,
    /// The chosen experts and their weights, from one token's router logits and top-k.
    pub route: Route,
    /// The activation of one gate/up pair.
    pub act: fn(f32, f32) -> f32,
}

/// The `k` largest of `logits` (ties: the lower index first), largest first. The first `k`
/// are selected and only they sorted: the order is total, so this is what sorting all of them
/// gives, at a fraction of the cost for a vocabulary (`eval --top`, the KL calibration's
/// reference tokens).
pub fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(ids.len());
    if k > 0 && k < ids.len() {
        ids.select_nth_unstable_by(k - 1, order);
    }
    ids.truncate(k);
    ids.sort_by(order);
    ids
}

/// The routed-experts block of layer `l` on normalized input `x` [T, hidden]: the router
/// (`ffn_gate_inp`), the family's routing, then [`dispatch`] to the experts.
pub fn routed(m: &Model, l: usize, x: &[f32], moe: &Moe) -> Result<FfnOutput> {
    let c = &m.cfg;
    let logits = m.linear(x, &format!("blk.{l}.ffn_gate_inp"), moe.bias)?;
    let (routes, weights) = logits.chunks_exact(c.n_expert).map(|row| (moe.route)(row, c.n_expert_used)).unzip();
    dispatch(m, x, routes, weights, &|e, xe| expert(m, l, e, xe, moe))
}

/// Each token's output as the weighted sum of its chosen experts' outputs: `routes[i]` and
/// `weights[i]` are token i's experts and weights; `expert(e, rows)` computes expert `e` on
/// the rows of the tokens routed to it (each expert runs once, on all its tokens). Each
/// expert's own outputs are kept only when [`Model::keep_expert_out`] (else `expert_out` holds
/// empty rows).
pub fn dispatch(
    m: &Model,
    x: &[f32],
    routes: Vec<Vec<usize>>,
    weights: Vec<Vec<f32>>,
    expert: &Expert,
) -> Result<FfnOutput> {
    let h = m.cfg.n_embd;
    let t = x.len() / h;
    let mut out = vec![0.0f32; t * h];
    let mut expert_out: Vec<Vec<Vec<f32>>> = routes.iter().map(|r| vec![Vec::new(); r.len()]).collect();
    for e in 0..m.cfg.n_expert {
        let picked: Vec<(usize, f32)> = routes
            .iter()
            .zip(&weights)
            .enumerate()
            .filter_map(|(i, (r, w))| r.iter().position(|&x| x == e).map(|k| (i, w[k])))
            .collect();
        if picked.is_empty() {
            continue;
        }
        let xe: Vec<f32> = picked.iter().flat_map(|&(i, _)| x[i * h..(i + 1) * h].iter().copied()).collect();
        let ye = expert(e, &xe)?;
        for (k, &(i, w)) in picked.iter().enumerate() {
            let y = &ye[k * h..(k + 1) * h];
            out[i * h..(i + 1) * h].iter_mut().zip(y).for_each(|(o, y)| *o += w * y);
            if !m.keep_expert_out {
                continue;
            }
            if let Some(slot) = routes[i].iter().position(|&x| x == e) {
                expert_out[i][slot] = y.to_vec();
            }
        }
    }
    Ok(FfnOutput { out, routes, expert_out })
}

/// Expert `e` of layer `l` on rows `x` [n, hidden].
pub fn expert(m: &Model, l: usize, e: usize, x: &[f32], moe: &Moe) -> Result<Vec<f32>> {
    // Expert e's rows of a stacked tensor, and its bias, applied to `input`.
    let project = |name: &str, input: &[f32]| -> Result<Vec<f32>> {
        let w = format!("blk.{l}.{name}.weight");
        let rows = m.w.ne(&w)?.get(1).copied().unwrap_or(1);
        let bias = if moe.bias { Some(m.w.rows(&format!("blk.{l}.{name}.bias"), e as u64, 1)?) } else { None };
        m.project(input, &w, e as u64 * rows, rows, bias.as_deref())
    };
    let g = project("ffn_gate_exps", x)?;
    let u = project("ffn_up_exps", x)?;
    let a: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (moe.act)(g, u)).collect();
    project("ffn_down_exps", &a)
}

/// A dense gated block of layer `l` without biases: `blk.l.{gate,up,down}` with `suffix`
/// (`""` for `ffn_gate`…, `"_shexp"` for a shared expert's `ffn_gate_shexp`…), `act` on each
/// gate/up pair.
pub fn dense(m: &Model, l: usize, x: &[f32], suffix: &str, act: fn(f32, f32) -> f32) -> Result<Vec<f32>> {
    let g = m.linear(x, &format!("blk.{l}.ffn_gate{suffix}"), false)?;
    let u = m.linear(x, &format!("blk.{l}.ffn_up{suffix}"), false)?;
    let a: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| act(g, u)).collect();
    m.linear(&a, &format!("blk.{l}.ffn_down{suffix}"), false)
}

/// The dense SwiGLU block of layer `l` (`ffn_gate`, `ffn_up`, `ffn_down`, no biases).
pub fn dense_swiglu(m: &Model, l: usize, x: &[f32]) -> Result<FfnOutput> {
    let out = dense(m, l, x, "", swiglu)?;
    Ok(FfnOutput { out, routes: Vec::new(), expert_out: Vec::new() })
}
