#!/usr/bin/env python3
"""Compares two importance matrices in llama.cpp's GGUF imatrix format (read with gguf-py):
the metadata (chunk_count, chunk_size), the entries present, each entry's counts (must be
identical) and its in_sum2, per tensor: relative L2 deviation ||a - b|| / ||b|| and the largest
relative deviation of one column among columns holding at least 1e-6 of the tensor's largest
sum. Prints the worst tensors and a summary line; exit 1 when counts differ, entries are missing
or a relative L2 deviation exceeds --tol (default 1e-3).

Usage: scripts/compare_imatrix.py MOEQ.gguf REFERENCE.gguf [--tol 1e-3] [--show 8] [--json]
"""

import argparse
import json
import sys

import numpy as np
from gguf import GGUFReader


def load(path):
    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("imatrix.") or k.startswith("moeq.") or k == "general.type":
            meta[k] = f.contents()
    sums, counts = {}, {}
    for t in r.tensors:
        data = np.array(t.data, dtype=np.float64).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = data
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = data
    return meta, sums, counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--show", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ma, sa, ca = load(a.ours)
    mb, sb, cb = load(a.reference)
    problems = []
    for k in ("imatrix.chunk_count", "imatrix.chunk_size"):
        if ma.get(k) != mb.get(k):
            problems.append(f"{k}: {ma.get(k)} vs {mb.get(k)}")
    missing = sorted(set(sb) - set(sa))
    extra = sorted(set(sa) - set(sb))
    if missing:
        problems.append(f"missing entries: {missing[:5]}")
    if extra:
        problems.append(f"extra entries: {extra[:5]}")
    rows = []
    count_diffs = 0
    for name in sorted(set(sa) & set(sb)):
        if not np.array_equal(ca[name], cb[name]):
            count_diffs += 1
            d = np.flatnonzero(ca[name] != cb[name])
            problems.append(f"{name}: counts differ at {d[:8].tolist()} ({ca[name][d[:4]].tolist()} vs {cb[name][d[:4]].tolist()})")
        x, y = sa[name], sb[name]
        rel_l2 = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300))
        big = np.abs(y) >= 1e-6 * np.abs(y).max() if y.size and np.abs(y).max() > 0 else np.zeros_like(y, bool)
        col = float(np.max(np.abs(x[big] - y[big]) / np.abs(y[big]))) if big.any() else 0.0
        rows.append((rel_l2, col, name))
    rows.sort(reverse=True)
    worst = rows[0] if rows else (0.0, 0.0, "-")
    over = [r for r in rows if r[0] > a.tol]
    if over:
        problems.append(f"{len(over)} tensors deviate more than {a.tol} (relative L2)")
    if a.json:
        print(json.dumps({"tensors": len(rows), "count_mismatches": count_diffs, "max_rel_l2": worst[0],
                          "max_rel_l2_tensor": worst[2], "max_col_rel": max((r[1] for r in rows), default=0.0),
                          "chunk_count": [ma.get("imatrix.chunk_count"), mb.get("imatrix.chunk_count")],
                          "problems": problems}, indent=1))
    else:
        print(f"{'tensor':<40} {'rel L2':>10} {'max col rel':>12}")
        for rel, col, name in rows[: a.show]:
            print(f"{name:<40} {rel:10.3e} {col:12.3e}")
        print(f"{len(rows)} tensors, counts identical in {len(rows) - count_diffs}; largest relative L2 deviation "
              f"{worst[0]:.3e} ({worst[2]}); largest column deviation {max((r[1] for r in rows), default=0.0):.3e}")
        for p in problems:
            print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
