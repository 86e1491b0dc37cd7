#!/usr/bin/env python3
"""Write test vectors for moeq's quantizers, made by ggml itself.

Rows of test values (ordinary weights with outliers, zeros, constant stretches, tiny values,
ties on a grid, exact code values) go through
`ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)` from libggml (built by
scripts/build_libggml.sh from the llama.cpp vendored in llama-cpp-python 0.3.36), once with
importance weights (with zero weights, whole sub-blocks of them, and a wide range) and once
without (imatrix NULL: ggml's other code path for several types). The files land in
kernels/tests/data/ggml/ (`input.f32`, `weights.f32`, `TYPE.imatrix.bin`, `TYPE.plain.bin`),
where kernels/tests/equivalence.rs compares moeq's bytes with them on every backend.

    python3 scripts/make_imatrix_vectors.py [--libggml PATH]
"""

import argparse
import ctypes
import pathlib
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# name: (ggml type id, values per block, bytes per block)
TYPES = {"Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
         "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144),
         "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "IQ4_NL": (20, 32, 18), "IQ4_XS": (23, 256, 136),
         "MXFP4": (39, 32, 17)}
NROWS, N_PER_ROW = 10, 1024


def test_rows(rng):
    """NROWS rows of N_PER_ROW values, each row a different kind of trouble."""
    x = (rng.standard_normal((NROWS, N_PER_ROW)) * 0.02).astype(np.float32)
    x[0, ::53] *= 25                                     # outliers
    x[1, :256] = 0.0                                     # an all-zero super-block
    x[1, 300:316] = 0.0                                  # an all-zero 16-value sub-block
    x[2, 32:64] = 1.5                                    # a constant block
    x[2, 256:512] = -0.75                                # a constant super-block
    x[3] = (rng.standard_normal(N_PER_ROW) * 1e-6).astype(np.float32)   # tiny values
    x[3, 512:] *= 1e-6                                   # tinier (scales underflow f16)
    x[4] = (rng.integers(-6, 7, N_PER_ROW) * 0.25).astype(np.float32)   # ties on a grid
    x[5] = rng.integers(-4, 4, N_PER_ROW).astype(np.float32)            # exact 3-bit codes
    x[6] = np.abs(x[6]) + 0.01                           # all positive
    x[7] = -np.abs(x[7]) * 3                             # all negative
    x[8, ::2] = 0.0                                      # half zeros
    x[8, 1::64] = -1.0                                   # negative outliers among them
    x[9] = np.round(x[9] * 1e3) / 1e3                    # rounded values, many repeats
    return x


def test_weights(rng):
    w = rng.exponential(1.0, N_PER_ROW).astype(np.float32)
    w[::17] = 0.0                                        # ignored columns
    w[32:48] = 0.0                                       # a whole 16-value sub-block ignored
    w[64:96] = 0.0                                       # a whole 32-value block ignored
    w[128:160] *= 1e4                                    # very important columns
    w[160:192] *= 1e-4                                   # barely important ones
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--libggml")
    ap.add_argument("--out", default=str(ROOT / "kernels/tests/data/ggml"))
    args = ap.parse_args()
    path = args.libggml or subprocess.run(["bash", str(ROOT / "scripts/build_libggml.sh")], check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lib = ctypes.CDLL(str(pathlib.Path(path).resolve()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(11)
    x = np.ascontiguousarray(test_rows(rng), dtype=np.float32)
    w = np.ascontiguousarray(test_weights(rng), dtype=np.float32)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x.tofile(out / "input.f32")
    w.tofile(out / "weights.f32")
    for name, (type_id, block, size) in TYPES.items():
        lib.ggml_quantize_init(type_id)
        for kind, imatrix in (("imatrix", w.ctypes.data), ("plain", None)):
            dst = ctypes.create_string_buffer(NROWS * N_PER_ROW // block * size)
            n = lib.ggml_quantize_chunk(type_id, x.ctypes.data, dst, 0, NROWS, N_PER_ROW, imatrix)
            assert n == len(dst.raw)
            (out / f"{name}.{kind}.bin").write_bytes(dst.raw)
            print(f"{name} {kind}: {n} bytes")


if __name__ == "__main__":
    main()
