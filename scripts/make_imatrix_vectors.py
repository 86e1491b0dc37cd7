#!/usr/bin/env python3
"""Write test vectors for moeq's importance-weighted quantizers, made by ggml itself.

Random rows (with outliers) and positive importance weights go through
`ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix)` from libggml (built by
scripts/build_libggml.sh from the llama.cpp vendored in llama-cpp-python 0.3.36). The files
land in kernels/tests/data/imatrix/, where kernels/tests/equivalence.rs compares moeq's bytes
with them.

    python3 scripts/make_imatrix_vectors.py [--libggml PATH]
"""

import argparse
import ctypes
import pathlib
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
TYPES = {"Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
         "Q8_0": (8, 32, 34), "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210),
         "MXFP4": (39, 32, 17)}
NROWS, N_PER_ROW = 6, 768


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--libggml")
    ap.add_argument("--out", default=str(ROOT / "kernels/tests/data/imatrix"))
    args = ap.parse_args()
    path = args.libggml or subprocess.run(["bash", str(ROOT / "scripts/build_libggml.sh")], check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lib = ctypes.CDLL(str(pathlib.Path(path).resolve()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((NROWS, N_PER_ROW)) * 0.02).astype(np.float32)
    x[:, ::53] *= 25
    x[2, :256] = 0.0                           # an all-zero super-block
    x[3, 32:64] = 1.5                          # a flat block
    w = rng.exponential(1.0, N_PER_ROW).astype(np.float32)
    w[::17] = 0.0                              # ignored columns
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x.tofile(out / "input.f32")
    w.tofile(out / "weights.f32")
    for name, (type_id, block, size) in TYPES.items():
        dst = ctypes.create_string_buffer(NROWS * N_PER_ROW // block * size)
        lib.ggml_quantize_init(type_id)
        n = lib.ggml_quantize_chunk(type_id, x.ctypes.data, dst, 0, NROWS, N_PER_ROW, w.ctypes.data)
        assert n == len(dst.raw)
        (out / f"{name}.bin").write_bytes(dst.raw)
        print(f"{name}: {n} bytes")


if __name__ == "__main__":
    main()
