#!/usr/bin/env python3
"""Mean next-token KL divergence of MLX builds against a reference model, computed by mlx-lm.

The cross-check of `moeq verify SOURCE BUILD --tokens-file F --json` ("model": "kl_mean") with
another implementation: mlx-lm loads the reference (a Hugging Face folder or an MLX build) and
each build, runs every sequence of the token file (one sequence per line, ids separated by
spaces or commas, as moeq's --tokens-file) in float32, and averages over all positions
KL(p_ref || p_build) of the full next-token distributions.

mlx-lm 0.32 reads `rope_theta` only at the top level of config.json; a transformers-5 config
keeps it under `rope_parameters` (SmolLM2's: 100000, where mlx-lm's default is 10000). So each
folder is read through a copy whose config.json has `rope_theta` lifted from `rope_parameters`
(the weights are symbolic links): otherwise mlx-lm would compute another model.

Usage: scripts/mlx_kld.py REFERENCE TOKENS_FILE BUILD [BUILD ...] [--json]
"""

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np


def readable_copy(folder, work):
    """A folder mlx-lm reads as the model it is: config.json with rope_theta at the top."""
    folder = Path(folder).resolve()
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in cfg or "rope_theta" not in rope:
        return folder
    out = Path(tempfile.mkdtemp(dir=work))
    for f in folder.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f)
    cfg["rope_theta"] = rope["rope_theta"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def log_probs(model, tokens):
    import mlx.core as mx

    logits = model(mx.array([tokens])).astype(mx.float32)[0]
    return np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True), dtype=np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("tokens")
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import mlx.core as mx
    from mlx_lm import load

    seqs = [[int(t) for t in re.split(r"[,\s]+", line.strip()) if t] for line in open(a.tokens)]
    seqs = [s for s in seqs if s]
    with tempfile.TemporaryDirectory() as work:
        ref, _ = load(str(readable_copy(a.reference, work)))
        ref.set_dtype(mx.float32)
        ref_lp = [log_probs(ref, s) for s in seqs]
        del ref
        rows = []
        for b in a.builds:
            model, _ = load(str(readable_copy(b, work)))
            model.set_dtype(mx.float32)
            kls, top1, n = 0.0, 0, 0
            for s, p in zip(seqs, ref_lp):
                q = log_probs(model, s)
                kls += float((np.exp(p) * (p - q)).sum())
                top1 += int((p.argmax(-1) == q.argmax(-1)).sum())
                n += len(s)
            rows.append({"build": b, "kl_mean": kls / n, "top1": top1 / n, "positions": n})
            del model
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['build']:<40} KL mean {r['kl_mean']:.5f}  top-1 {100 * r['top1']:.2f} %  ({r['positions']} positions)")


if __name__ == "__main__":
    sys.exit(main())
