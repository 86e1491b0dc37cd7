#!/usr/bin/env python3
"""Single-thread throughput of ggml's reference quantizers for the i-quant and ternary types,
for comparison with `moeq bench kernels` (same size, same kind of data).

test-quantize-perf only times types with a CPU `from_float` (of these, TQ1_0 and TQ2_0); the
i-quants are only reachable through `ggml_quantize_chunk`, which llama-quantize calls, so
that is what is timed here (via ctypes, `ggml_quantize_init` done before timing; CPU time of
the calling thread, so that other load on the machine counts less), with and
without importance weights (rows of 4096, weights as moeq's bench makes them), and its
dequantizer (`to_float`).

    python3 scripts/bench_ggml_iquants.py [--libggml PATH] [--size MiB] [--repeat N] [--types T,...] [--clock cpu|wall]
"""

import argparse
import ctypes
import os
import time

import numpy as np

class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

TYPES = {"IQ2_XXS": (16, 66, True), "IQ2_XS": (17, 74, True), "IQ2_S": (22, 82, False),
         "IQ3_XXS": (18, 98, False), "IQ3_S": (21, 110, False), "IQ1_S": (19, 50, True),
         "IQ1_M": (29, 56, False), "TQ1_0": (34, 54, False), "TQ2_0": (35, 66, False)}
ROW = 4096


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--libggml", default="/work/llama/build/bin/libggml-base.so")
    ap.add_argument("--size", type=int, default=16, help="MiB of f32 input")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="CPU time of the thread (default) or wall time (as moeq bench kernels)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    lib = ctypes.CDLL(args.libggml)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    n = args.size * (1 << 20) // 4 // ROW * ROW
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(n) * 0.02).astype(np.float32)
    x[::997] *= 20
    i = np.arange(ROW)
    w = np.where(i % 29 == 0, 0.0, 0.5 + ((i * 7919) % 1000) / 250.0).astype(np.float32)
    print(f"{'type':<8} {'op':<16} {'MB/s':>8}   ({args.size} MiB f32, best of {args.repeat}, {args.clock} time)")
    for name in args.types.split(","):
        type_id, size, needs = TYPES[name]
        lib.ggml_quantize_init(type_id)
        dst = ctypes.create_string_buffer(n // 256 * size)
        for op, weights in [("quantize", None), ("quantize+imatrix", w)]:
            if weights is None and needs:
                continue
            best = float("inf")
            for _ in range(args.repeat):
                t = clock()
                lib.ggml_quantize_chunk(type_id, x.ctypes.data, dst, 0, n // ROW, ROW,
                                        None if weights is None else weights.ctypes.data)
                best = min(best, clock() - t)
            print(f"{name:<8} {op:<16} {n * 4 / best / 1e6:>8.2f}", flush=True)
        to_float = TO_FLOAT(lib.ggml_get_type_traits(type_id).contents.to_float)
        y = np.zeros(n, np.float32)
        to_float(dst, y.ctypes.data, n)
        best = float("inf")
        for _ in range(max(args.repeat, 3)):
            t = clock()
            to_float(dst, y.ctypes.data, n)
            best = min(best, clock() - t)
        print(f"{name:<8} {'dequantize':<16} {n * 4 / best / 1e6:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
