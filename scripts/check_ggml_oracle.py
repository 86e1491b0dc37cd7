#!/usr/bin/env python3
"""Compare moeq's quantizers with ggml's own, called through ctypes.

Builds F32 GGUFs with random llama-shaped tensors (row widths that are multiples of 256, and
3-D expert tensors), runs `moeq convert --type T` for every ftype moeq offers under every
kernel backend this CPU runs, and checks each output tensor against `ggml_quantize_chunk`
(what llama-quantize calls) from the libggml that llama-cpp-python installs. This covers the
k-quants, which gguf-py cannot quantize.

    python3 scripts/check_ggml_oracle.py [--moeq target/release/moeq]

Needs: pip install gguf numpy; the library comes from --libggml, else from llama-cpp-python
when it is installed, else scripts/build_libggml.sh builds it from the same source (llama.cpp
vendored in llama-cpp-python 0.3.36) in under a minute. It must be a release build (NDEBUG,
as llama-quantize is built): with assertions on, ggml aborts on some of the i-quant vectors'
inputs.
"""

import argparse
import ctypes
import glob
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

ROOT = pathlib.Path(__file__).resolve().parent.parent
FTYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4_MOE", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "F16", "BF16"]


def find_libggml(explicit):
    """The library to use: --libggml, else llama-cpp-python's, else one built from its source."""
    if explicit:
        return [explicit]
    try:
        import llama_cpp

        lib_dir = pathlib.Path(llama_cpp.__file__).parent / "lib"
        found = sorted(glob.glob(str(lib_dir / "libggml-base.so*"))) + sorted(glob.glob(str(lib_dir / "libggml.so*")))
        if found:
            return found
    except ImportError:
        pass
    built = subprocess.run(["bash", str(ROOT / "scripts/build_libggml.sh")], check=True, capture_output=True, text=True)
    return [built.stdout.strip().splitlines()[-1]]


def load_libggml(explicit):
    for path in find_libggml(explicit):
        lib = ctypes.CDLL(str(pathlib.Path(path).resolve()))
        if hasattr(lib, "ggml_quantize_chunk"):
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [
                ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_float)]
            lib.ggml_quantize_init.argtypes = [ctypes.c_int]
            return lib, path
    sys.exit("no libggml with ggml_quantize_chunk found")


def ggml_quantize(lib, qtype, data):
    """ggml_quantize_chunk over all rows of `data` (numpy f32 array, rows along the last axis)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    n_per_row = data.shape[-1]
    nrows = data.size // n_per_row
    if qtype in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        size = data.size * 2
    else:
        from gguf.constants import GGML_QUANT_SIZES
        block, type_size = GGML_QUANT_SIZES[qtype]
        size = data.size // block * type_size
    out = ctypes.create_string_buffer(size)
    lib.ggml_quantize_init(int(qtype))
    written = lib.ggml_quantize_chunk(int(qtype), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out, 0, nrows, n_per_row, None)
    assert written == size, (qtype, written, size)
    return out.raw


def write_model(path, rng, experts):
    """A 2-layer llama-style F32 model whose rows are multiples of 256."""
    hidden, ffn, vocab = 512, 768, 256
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)

    def add(name, shape, scale=0.02):
        x = rng.standard_normal(shape).astype(np.float32) * scale
        x[..., ::97] *= 30  # outliers
        w.add_tensor(name, x)

    add("token_embd.weight", (vocab, hidden))
    add("output.weight", (vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for n in range(2):
        add(f"blk.{n}.attn_q.weight", (hidden, hidden))
        add(f"blk.{n}.attn_k.weight", (hidden // 4, hidden))
        add(f"blk.{n}.attn_v.weight", (hidden // 4, hidden))
        add(f"blk.{n}.attn_output.weight", (hidden, hidden))
        w.add_tensor(f"blk.{n}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        w.add_tensor(f"blk.{n}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        if experts:
            add(f"blk.{n}.ffn_gate_inp.weight", (experts, hidden))
            add(f"blk.{n}.ffn_gate_exps.weight", (experts, ffn, hidden))
            add(f"blk.{n}.ffn_up_exps.weight", (experts, ffn, hidden))
            add(f"blk.{n}.ffn_down_exps.weight", (experts, hidden, ffn))
        else:
            add(f"blk.{n}.ffn_gate.weight", (ffn, hidden))
            add(f"blk.{n}.ffn_up.weight", (ffn, hidden))
            add(f"blk.{n}.ffn_down.weight", (hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA_FTYPE_IDS = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "MXFP4_MOE": 38, "Q4_K_S": 14,
                   "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "F16": 1, "BF16": 32}


def llama_quantize():
    """llama-cpp-python's llama_model_quantize (the real llama-quantize), if installed."""
    try:
        import llama_cpp
    except ImportError:
        return None

    # Keep llama.cpp's per-tensor log lines out of the report.
    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))

    def run(src, dst, ftype):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPE_IDS[ftype]
        params.allow_requantize = True
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        assert rc == 0, f"llama_model_quantize failed for {ftype}"

    run.keep_alive = quiet  # the callback must outlive every call
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moeq", default=str(ROOT / "target/release/moeq"))
    ap.add_argument("--libggml", help="path to libggml-base.so (default: llama-cpp-python's, or built by scripts/build_libggml.sh)")
    args = ap.parse_args()
    lib, lib_path = load_libggml(args.libggml)
    print(f"oracle: ggml_quantize_chunk in {lib_path}")
    quantize_with_llama = llama_quantize()
    if quantize_with_llama is None:
        print("llama-cpp-python is not installed: whole files are not compared with llama-quantize")
    rng = np.random.default_rng(7)
    backends = ["scalar", "avx2", "avx512"]
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for experts in (0, 8):
            src = tmp / f"model-{experts}.gguf"
            write_model(src, rng, experts)
            source = {t.name: np.asarray(t.data, dtype=np.float32) for t in GGUFReader(src).tensors}
            for ftype in FTYPES:
                for kernels in backends:
                    out = tmp / f"out-{experts}-{ftype}-{kernels}.gguf"
                    env = dict(os.environ, MOEQ_KERNELS=kernels)
                    subprocess.run([args.moeq, "convert", str(src), "-o", str(out), "--type", ftype, "-q"],
                                   check=True, capture_output=True, env=env)
                    types = set()
                    for t in GGUFReader(out).tensors:
                        if t.tensor_type == GGMLQuantizationType.F32:
                            continue
                        want = ggml_quantize(lib, t.tensor_type, source[t.name])
                        got = np.asarray(t.data).tobytes()
                        if got != want:
                            sys.exit(f"FAIL {ftype} ({kernels}): {t.name} as {t.tensor_type.name} differs from ggml")
                        types.add(t.tensor_type.name)
                        checked += 1
                    if quantize_with_llama is not None and kernels == backends[-1]:
                        ref = tmp / "llama-quantize.gguf"
                        quantize_with_llama(src, ref, ftype)
                        if ref.read_bytes() != out.read_bytes():
                            sys.exit(f"FAIL {ftype}: the file differs from llama-quantize's")
                        ref.unlink()
                    out.unlink()
                whole = ", whole file identical to llama-quantize's" if quantize_with_llama else ""
                print(f"ok  {'moe' if experts else 'dense'} {ftype:<10} tensors as {', '.join(sorted(types))}: identical to ggml{whole}")
    print(f"{checked} tensors identical to ggml_quantize_chunk")
    # The test vectors in the repository (with and without importance weights; the i-quants'
    # also dequantized by ggml, and on huge values where ggml aborts) are what this ggml writes.
    for script, folder in [("make_imatrix_vectors.py", "ggml"), ("make_iquant_vectors.py", "iquants")]:
        committed = ROOT / "kernels/tests/data" / folder
        with tempfile.TemporaryDirectory() as fresh:
            subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--libggml", str(lib_path),
                            "--out", fresh], check=True, capture_output=True)
            made = sorted(pathlib.Path(fresh).iterdir())
            if {f.name for f in made} != {f.name for f in committed.iterdir()}:
                sys.exit(f"FAIL {script} writes other files than kernels/tests/data/{folder} holds")
            for f in made:
                if f.read_bytes() != (committed / f.name).read_bytes():
                    sys.exit(f"FAIL test vector {folder}/{f.name} differs from what ggml writes now")
        print(f"kernel test vectors in kernels/tests/data/{folder}: identical to what ggml writes")


if __name__ == "__main__":
    main()
