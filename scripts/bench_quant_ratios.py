#!/usr/bin/env python3
"""moeq's quantizers against ggml's, in one run: the speed ratio per type, with and without
importance weights.

Runs `moeq bench kernels --json` (single thread, thread CPU time, 16 MiB of f32 by default) and
times, on data of the same kind (roughly normal values of scale 0.02, every 997th one 20x
larger; importance weights for rows of 4096 columns as moeq's bench makes them), ggml's
quantizers through ctypes in the same process, by thread CPU time (best of several runs):

  - `ref`: the type's `quantize_row_<type>_ref`, test-quantize-perf's "quantize_row_q_reference"
    (types that have one);
  - `chunk`: `ggml_quantize_chunk` without weights, what llama-quantize runs without an imatrix
    (types ggml quantizes without one);
  - `chunk+imatrix`: `ggml_quantize_chunk` with the weights, what llama-quantize runs with one.

Each is done --rounds times, alternating moeq and ggml; the best time of each side is kept. The
table gives GB/s of f32 input and moeq / ggml for each moeq backend this CPU runs (moeq's
`quantize` against ggml's `chunk`, and against `ref` where it differs; `quantize+imatrix`
against `chunk+imatrix`).

    python3 scripts/bench_quant_ratios.py [--moeq target/release/moeq]
        [--libggml /work/llama/build/bin/libggml-base.so] [--types Q2_K,...] [--rounds 2] [--md FILE]
"""

import argparse
import ctypes
import json
import pathlib
import subprocess
import time

import numpy as np

from bench_ggml_quantize import ROW, sample_values, sample_weights  # the data moeq bench kernels quantizes

ROOT = pathlib.Path(__file__).resolve().parent.parent

# name: (ggml type id, values per block, bytes per block, reference function or None,
#        quantized by ggml without weights)
TYPES = {
    "Q2_K": (10, 256, 84, "quantize_row_q2_K_ref", True),
    "Q3_K": (11, 256, 110, "quantize_row_q3_K_ref", True),
    "IQ4_NL": (20, 32, 18, "quantize_row_iq4_nl_ref", True),
    "IQ4_XS": (23, 256, 136, "quantize_row_iq4_xs_ref", True),
    "IQ3_XXS": (18, 256, 98, "quantize_row_iq3_xxs_ref", True),
    "IQ3_S": (21, 256, 110, "quantize_row_iq3_s_ref", True),
    "IQ2_XXS": (16, 256, 66, None, False),
    "IQ2_XS": (17, 256, 74, None, False),
    "IQ2_S": (22, 256, 82, "quantize_row_iq2_s_ref", True),
    "IQ1_S": (19, 256, 50, None, False),
    "IQ1_M": (29, 256, 56, None, True),
    "TQ1_0": (34, 256, 54, "quantize_row_tq1_0_ref", True),
    "TQ2_0": (35, 256, 66, "quantize_row_tq2_0_ref", True),
}


def best_time(f, runs=2):
    best = float("inf")
    for _ in range(runs):
        t = time.thread_time()
        f()
        best = min(best, time.thread_time() - t)
    return best


def ggml_round(lib, names, x, w, n):
    out = {}
    for name in names:
        tid, block, size, ref, plain = TYPES[name]
        dst = ctypes.create_string_buffer(n // block * size)
        lib.ggml_quantize_init(tid)
        if ref:
            fn = getattr(lib, ref)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            out[(name, "ref")] = n * 4 / best_time(lambda: fn(x.ctypes.data, dst, n)) / 1e9
        if plain:
            out[(name, "chunk")] = n * 4 / best_time(
                lambda: lib.ggml_quantize_chunk(tid, x.ctypes.data, dst, 0, n // ROW, ROW, None)) / 1e9
        out[(name, "chunk+imatrix")] = n * 4 / best_time(
            lambda: lib.ggml_quantize_chunk(tid, x.ctypes.data, dst, 0, n // ROW, ROW, w.ctypes.data)) / 1e9
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moeq", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--libggml", default="/work/llama/build/bin/libggml-base.so")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--size", type=int, default=16 << 20, help="bytes of f32 data")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--md", help="also write the table to this file")
    args = ap.parse_args()
    names = args.types.split(",")
    lib = ctypes.CDLL(args.libggml)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    n = args.size // 4 // ROW * ROW
    x = sample_values(n, np.random.default_rng(1))
    w = sample_weights()
    ours, theirs = {}, {}
    for r in range(args.rounds):
        p = subprocess.run([args.moeq, "bench", "kernels", "--json", "--size", str(args.size), "--types", args.types],
                           check=True, capture_output=True, text=True)
        for row in json.loads(p.stdout):
            if row["type"] in names and row["op"].startswith("quantize"):
                key = (row["type"], row["backend"], row["op"])
                ours[key] = max(ours.get(key, 0.0), row["gbps"])
        for key, v in ggml_round(lib, names, x, w, n).items():
            theirs[key] = max(theirs.get(key, 0.0), v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    backends = sorted({k[1] for k in ours}, key=lambda b: ["scalar", "avx2", "avx512"].index(b)
                      if b in ("scalar", "avx2", "avx512") else 9)
    lines = ["| type | op | ggml function | ggml GB/s | " + " | ".join(f"moeq {b} GB/s | ×" for b in backends) + " |",
             "|---|---|---|---:|" + "---:|---:|" * len(backends)]
    for name in names:
        for op, gfuncs in (("quantize", ("chunk", "ref")), ("quantize+imatrix", ("chunk+imatrix",))):
            for gf in gfuncs:
                g = theirs.get((name, gf))
                if g is None:
                    continue
                cells = []
                for b in backends:
                    m = ours.get((name, b, op))
                    cells.append("–| –" if m is None else f"{m:.4f} | {m / g:.1f}")
                label = {"chunk": "ggml_quantize_chunk", "ref": TYPES[name][3],
                         "chunk+imatrix": "ggml_quantize_chunk + weights"}[gf]
                lines.append(f"| {name} | {op} | {label} | {g:.4f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        pathlib.Path(args.md).write_text(table + "\n")


if __name__ == "__main__":
    main()
