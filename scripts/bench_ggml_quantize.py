#!/usr/bin/env python3
"""Single-thread throughput of ggml's own quantizers, to set beside `moeq bench kernels`.

Times, on the same kind of data `moeq bench kernels` uses (16 MiB of f32 by default: roughly
normal values of scale 0.02 with every 997th one 20x larger), in GB/s of f32 input:
  - `quantize_row_<type>_ref`: the reference quantizer (test-quantize-perf's
    "quantize_row_q_reference");
  - `ggml_quantize_chunk` without an importance matrix (what llama-quantize runs; for IQ4_NL
    and IQ4_XS this is a 15-candidate search, not the one-candidate `_ref`);
  - `ggml_quantize_chunk` with importance weights (rows of 4096 columns, moeq's bench weights);
  - `dequantize_row_<type>` (test-quantize-perf's "dequantize_row_q"), in GB/s of f32 output.
Best thread CPU time of several runs each. The library is ggml's base library: pass the one llama.cpp's
CMake build made (e.g. /work/llama/build/bin/libggml-base.so) to time what llama-quantize runs.

    python3 scripts/bench_ggml_quantize.py --libggml PATH [--types Q2_K,Q3_K] [--size BYTES]
"""

import argparse
import ctypes
import time

import numpy as np

# name: (ggml type id, values per block, bytes per block, reference function)
TYPES = {
    "Q4_0": (2, 32, 18, "quantize_row_q4_0_ref"),
    "Q8_0": (8, 32, 34, "quantize_row_q8_0_ref"),
    "Q2_K": (10, 256, 84, "quantize_row_q2_K_ref"),
    "Q3_K": (11, 256, 110, "quantize_row_q3_K_ref"),
    "Q4_K": (12, 256, 144, "quantize_row_q4_K_ref"),
    "Q5_K": (13, 256, 176, "quantize_row_q5_K_ref"),
    "Q6_K": (14, 256, 210, "quantize_row_q6_K_ref"),
    "IQ4_NL": (20, 32, 18, "quantize_row_iq4_nl_ref"),
    "IQ4_XS": (23, 256, 136, "quantize_row_iq4_xs_ref"),
}
ROW = 4096


def sample_values(n, rng):
    g = rng.random((4, n), dtype=np.float32).sum(axis=0) - 2.0
    x = g * 0.02
    x[::997] = g[::997] * 20.0
    return np.ascontiguousarray(x, dtype=np.float32)


def sample_weights():
    i = np.arange(ROW)
    w = np.exp2(((i * 7919) % 1000) / 250.0) * 0.1
    w[::61] = 0.0
    return np.ascontiguousarray(w, dtype=np.float32)


def best_time(f, budget=1.0, min_runs=3):
    """Best thread CPU time of `f` (as `moeq bench kernels` measures: robust on a busy machine)."""
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < min_runs or time.perf_counter() - start < budget:
        t = time.thread_time()
        f()
        best = min(best, time.thread_time() - t)
        runs += 1
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--libggml", required=True)
    ap.add_argument("--types", default="Q2_K,Q3_K,IQ4_NL,IQ4_XS,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--size", type=int, default=16 << 20)
    args = ap.parse_args()
    lib = ctypes.CDLL(args.libggml)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    n = args.size // 4 // ROW * ROW
    x = sample_values(n, np.random.default_rng(1))
    w = sample_weights()
    print(f"{'type':<8} {'ggml function':<26} {'GB/s':>8}")
    for name in args.types.split(","):
        tid, block, size, ref = TYPES[name]
        dst = ctypes.create_string_buffer(n // block * size)
        lib.ggml_quantize_init(tid)
        fn = getattr(lib, ref)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        rows = [
            (ref, lambda: fn(x.ctypes.data, dst, n)),
            ("quantize_chunk", lambda: lib.ggml_quantize_chunk(tid, x.ctypes.data, dst, 0, n // ROW, ROW, None)),
            ("quantize_chunk+imatrix",
             lambda: lib.ggml_quantize_chunk(tid, x.ctypes.data, dst, 0, n // ROW, ROW, w.ctypes.data)),
        ]
        deq = getattr(lib, "de" + ref.replace("quantize_row_", "quantize_row_").replace("_ref", ""))
        deq.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        y = np.zeros(n, dtype=np.float32)
        rows.append((deq.__name__, lambda: deq(dst, y.ctypes.data, n)))
        for label, f in rows:
            print(f"{name:<8} {label:<26} {n * 4 / best_time(f) / 1e9:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
