#!/usr/bin/env python3
"""Writes the big-endian GGUF fixtures (tests/fixtures/big-endian/) with gguf-py, and the
little-endian files holding the same values, which `moeq convert` must reproduce byte for
byte from the big-endian ones.

- float-be.gguf / float-le.gguf: GGUFWriter(..., endianess=GGUFEndian.BIG / LITTLE) with
  metadata of every GGUF value type and F32, F16, BF16, I8, I16, I32 tensors (numpy arrays in
  native order, which gguf-py byte-swaps for the big-endian file).
- quant-be.gguf / quant-le.gguf: Q8_0 and Q4_0 tensors (gguf-py's quantizers), Q4_K and
  Q6_K ones (random blocks: gguf-py has no K-quant quantizer)
  and an F32 one; the big-endian file is the little-endian one converted by llama.cpp's
  gguf-py/gguf/scripts/gguf_convert_endian.py (which swaps the f16 fields of each block:
  GGUFWriter does not, it writes quantized data as bytes).

Usage: scripts/make_big_endian_fixtures.py [OUT_DIR] [--llama-cpp DIR]
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFEndian, GGUFWriter, GGMLQuantizationType as Q

LLAMA_CPP = "/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"


def metadata(w):
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 0xBEEF)
    w.add_int16("test.i16", -12345)
    w.add_uint32("test.u32", 0xDEADBEEF)
    w.add_int32("test.i32", -123456789)
    w.add_float32("test.f32", 3.25)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "big-endian ✓")
    w.add_uint64("test.u64", 0x0123456789ABCDEF)
    w.add_int64("test.i64", -0x0123456789ABCDEF)
    w.add_float64("test.f64", -2.5e-300)
    w.add_array("test.array_i32", [1, -2, 2000000000])
    w.add_array("test.array_f32", [0.5, -1.5])
    w.add_array("test.array_str", ["a", "bc", ""])
    w.add_block_count(2)
    w.add_context_length(4096)


def floats(path, endian):
    rng = np.random.default_rng(7)
    w = GGUFWriter(path, "llama", endianess=endian)
    metadata(w)
    w.add_tensor("f32", rng.standard_normal((4, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((8, 4)).astype(np.float16))
    bf16 = (rng.standard_normal(64).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("bf16", bf16.reshape(2, 32), raw_dtype=Q.BF16)
    w.add_tensor("i8", rng.integers(-128, 127, 16).astype(np.int8))
    w.add_tensor("i16", rng.integers(-30000, 30000, 16).astype(np.int16))
    w.add_tensor("i32", rng.integers(-(2**31), 2**31 - 1, 16).astype(np.int32))
    write(w)


def quants(path):
    rng = np.random.default_rng(11)
    w = GGUFWriter(path, "llama")
    metadata(w)
    for name, ty in [("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0)]:
        values = rng.standard_normal((2, 256)).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(values, ty), raw_dtype=ty)
    # gguf-py has no K-quant quantizer: random blocks (only their byte order matters here).
    for name, ty in [("q4_k", Q.Q4_K), ("q6_k", Q.Q6_K)]:
        size = gguf.GGML_QUANT_SIZES[ty][1]
        w.add_tensor(name, rng.integers(0, 256, (2, size), dtype=np.uint8), raw_dtype=ty)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    write(w)


def write(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", type=Path, default=Path(__file__).parent.parent / "tests/fixtures/big-endian")
    ap.add_argument("--llama-cpp", default=LLAMA_CPP)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    floats(args.out / "float-be.gguf", GGUFEndian.BIG)
    floats(args.out / "float-le.gguf", GGUFEndian.LITTLE)
    quants(args.out / "quant-le.gguf")
    shutil.copy(args.out / "quant-le.gguf", args.out / "quant-be.gguf")
    script = Path(args.llama_cpp) / "gguf-py/gguf/scripts/gguf_convert_endian.py"
    subprocess.run([sys.executable, script, args.out / "quant-be.gguf", "big"], input=b"YES\n", check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in ["float-be.gguf", "quant-be.gguf"]:
        r = gguf.GGUFReader(args.out / name)
        assert r.endianess == GGUFEndian.BIG, name
        print(name, "big-endian,", len(r.tensors), "tensors")


if __name__ == "__main__":
    main()
