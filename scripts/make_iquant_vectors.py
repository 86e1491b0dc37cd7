#!/usr/bin/env python3
"""Write test vectors for moeq's i-quant and ternary kernels, made by ggml itself.

Rows of realistic and awkward values (gaussian with outliers, all-zero and constant
super-blocks, tiny values below ggml's thresholds, subnormals, large values) and positive
importance weights (some zero) go through `ggml_quantize_chunk(type, src, dst, 0, nrows,
n_per_row, imatrix)` from libggml-base (after `ggml_quantize_init(type)`), with and without
the weights for every type that accepts both (IQ2_XXS, IQ2_XS and IQ1_S assert without);
the bytes (without weights where ggml allows it) are dequantized with ggml's `to_float`
(type traits). A second input of random
bytes (with finite scales) is dequantized too. Rows with values so large that their squares
overflow are quantized in child processes: ggml's bytes where it finishes, an empty file
where it aborts. The files land in kernels/tests/data/iquants/,
where kernels/tests/equivalence.rs compares moeq's bytes and floats with them.

Use a release build of ggml (NDEBUG, as llama-quantize is built): with assertions on, ggml
stops on the subnormal super-block, where `nearest_int` asserts on an infinite argument.

    python3 scripts/make_iquant_vectors.py [--libggml /work/llama/build/bin/libggml-base.so]
"""

import argparse
import ctypes
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# name: (ggml type id, bytes per 256 values, needs weights, byte offsets of f16 scales)
TYPES = {
    "IQ2_XXS": (16, 66, True, [0]),
    "IQ2_XS": (17, 74, True, [0]),
    "IQ3_XXS": (18, 98, False, [0]),
    "IQ1_S": (19, 50, True, [0]),
    "IQ3_S": (21, 110, False, [0]),
    "IQ2_S": (22, 82, False, [0]),
    "IQ1_M": (29, 56, False, []),
    "TQ1_0": (34, 54, False, [52]),
    "TQ2_0": (35, 66, False, [64]),
}
NROWS, N_PER_ROW = 8, 768
RANDOM_BLOCKS = 6
HUGE_SCALES = [3e38, 1e20, 1e18]   # rows whose second half has values this large


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def inputs():
    rng = np.random.default_rng(14)
    x = (rng.standard_normal((NROWS, N_PER_ROW)) * 0.02).astype(np.float32)
    x[:, ::41] *= 30                                   # outliers
    x[1, :256] = 0.0                                   # an all-zero super-block
    x[1, 256:512] = 0.75                               # a constant super-block
    x[2, 300:340] = -0.5                               # a constant run inside a super-block
    x[3, :256] *= 1e-7                                 # tiny: near ggml's group thresholds
    x[3, 256:512] = 0.0
    x[3, 256:512:7] = 3e-9                             # sparse, below IQ3/IQ2_S thresholds
    x[4, :256] = (rng.standard_normal(256) * 1e-39).astype(np.float32)   # subnormals
    x[4, 256:512] *= 1e4                               # large values
    x[5, :] = np.abs(x[5, :])                          # all positive
    x[6, :32] = 0.0                                    # one zero block inside a super-block
    x[6, 64:80] = 1e-9                                 # one tiny IQ1_M / IQ2 block
    x[7, :] = np.round(x[7, :] * 50) / 50              # repeated values (sorting ties)
    w = rng.exponential(1.0, N_PER_ROW).astype(np.float32)
    w[::29] = 0.0                                      # unused columns
    w[512:544] = 0.0                                   # a whole block without weight
    return x, w


def random_blocks(rng, size, scale_offsets):
    raw = rng.integers(0, 256, (RANDOM_BLOCKS, size), dtype=np.uint8)
    for off in scale_offsets:                          # finite f16 scales
        raw[:, off:off + 2] = np.frombuffer(
            (rng.standard_normal(RANDOM_BLOCKS) * 0.01).astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    return raw


def huge_rows():
    i = np.arange(1024, dtype=np.float32)
    return np.stack([np.where(i >= 512, np.sin(i) * np.float32(s), np.cos(i) * 0.01) for s in HUGE_SCALES]).astype(np.float32)


def quantize_one(libggml, type_id, size, row, weighted):
    """Quantizes row `row` of huge_rows() in a child process (ggml aborts on some); prints hex."""
    lib = ctypes.CDLL(libggml)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = np.ascontiguousarray(huge_rows()[row])
    w = np.ones(1024, np.float32)
    dst = ctypes.create_string_buffer(4 * size)
    lib.ggml_quantize_init(type_id)
    lib.ggml_quantize_chunk(type_id, x.ctypes.data, dst, 0, 1, 1024, w.ctypes.data if weighted else None)
    sys.stdout.write("RESULT " + dst.raw.hex())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        quantize_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1")
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--libggml", default="/work/llama/build/bin/libggml-base.so")
    ap.add_argument("--out", default=str(ROOT / "kernels/tests/data/iquants"))
    args = ap.parse_args()
    lib = ctypes.CDLL(str(pathlib.Path(args.libggml).resolve()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    x, w = inputs()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x.tofile(out / "input.f32")
    w.tofile(out / "weights.f32")
    huge_rows().tofile(out / "huge.f32")
    rng = np.random.default_rng(15)
    for name, (type_id, size, needs_weights, scales) in TYPES.items():
        lib.ggml_quantize_init(type_id)
        to_float = TO_FLOAT(lib.ggml_get_type_traits(type_id).contents.to_float)
        nbytes = NROWS * N_PER_ROW // 256 * size
        for suffix, weights in [("", None), (".imatrix", w)]:
            if weights is None and needs_weights:
                continue
            dst = ctypes.create_string_buffer(nbytes)
            wp = None if weights is None else weights.ctypes.data
            n = lib.ggml_quantize_chunk(type_id, x.ctypes.data, dst, 0, NROWS, N_PER_ROW, wp)
            assert n == nbytes
            (out / f"{name}{suffix}.bin").write_bytes(dst.raw)
            if suffix == "" or needs_weights:          # one dequantized copy per type
                y = np.zeros(NROWS * N_PER_ROW, np.float32)
                to_float(dst, y.ctypes.data, y.size)
                y.tofile(out / f"{name}.f32")
        raw = random_blocks(rng, size, scales)
        raw.tofile(out / f"{name}.random.bin")
        y = np.zeros(RANDOM_BLOCKS * 256, np.float32)
        to_float(raw.ctypes.data, y.ctypes.data, y.size)
        y.tofile(out / f"{name}.random.f32")
        # Huge values: ggml's bytes where it does not abort, an empty file where it does.
        for row in range(len(HUGE_SCALES)):
            for suffix, weighted in [("", False), (".imatrix", True)]:
                if not weighted and needs_weights:
                    continue
                child = subprocess.run([sys.executable, __file__, "--child", str(pathlib.Path(args.libggml).resolve()),
                                        str(type_id), str(size), str(row), "1" if weighted else "0"],
                                       capture_output=True, text=True)
                result = child.stdout.split("RESULT ")[-1] if child.returncode == 0 else ""
                (out / f"{name}.huge{row}{suffix}.bin").write_bytes(bytes.fromhex(result))
        print(f"{name}: {nbytes} bytes per input")


if __name__ == "__main__":
    main()
