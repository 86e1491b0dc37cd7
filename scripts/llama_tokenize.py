#!/usr/bin/env python3
"""Tokenizes a text file with llama.cpp's own tokenizer (libllama through ctypes, vocabulary
only), as llama-imatrix and llama-perplexity do: `common_tokenize(text, add_special=True,
parse_special=False)`. Prints the ids, comma-separated, or with --chunks CTX the chunks
llama-imatrix computes on (one per line, the first token of each replaced by BOS when the
vocabulary adds one), for `moeq imatrix --tokens-file`.

Usage: scripts/llama_tokenize.py MODEL.gguf TEXT [--chunks CTX] [--max-chunks N] [--lib DIR]
(DIR holds libllama.so; default /work/llama/build/bin or $LLAMA_LIB)
"""

import argparse
import ctypes
import os
import sys


class ModelParams(ctypes.Structure):
    # include/llama.h, struct llama_model_params (llama.cpp as vendored in llama-cpp-python 0.3.36)
    _fields_ = [
        ("devices", ctypes.c_void_p),
        ("tensor_buft_overrides", ctypes.c_void_p),
        ("n_gpu_layers", ctypes.c_int32),
        ("split_mode", ctypes.c_int),
        ("load_mode", ctypes.c_int),
        ("lazy_mode", ctypes.c_int),
        ("main_gpu", ctypes.c_int32),
        ("tensor_split", ctypes.c_void_p),
        ("progress_callback", ctypes.c_void_p),
        ("progress_callback_user_data", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("vocab_only", ctypes.c_bool),
        ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool),
        ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool),
        ("load_mtp", ctypes.c_bool),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--max-chunks", type=int, default=-1)
    ap.add_argument("--lib", default=os.environ.get("LLAMA_LIB", "/work/llama/build/bin"))
    a = ap.parse_args()
    lib = ctypes.CDLL(os.path.join(a.lib, "libllama.so"))
    lib.llama_model_default_params.restype = ModelParams
    lib.llama_model_load_from_file.restype = ctypes.c_void_p
    lib.llama_model_load_from_file.argtypes = [ctypes.c_char_p, ModelParams]
    lib.llama_model_get_vocab.restype = ctypes.c_void_p
    lib.llama_model_get_vocab.argtypes = [ctypes.c_void_p]
    lib.llama_tokenize.restype = ctypes.c_int32
    lib.llama_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                   ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
    lib.llama_vocab_get_add_bos.restype = ctypes.c_bool
    lib.llama_vocab_get_add_bos.argtypes = [ctypes.c_void_p]
    lib.llama_vocab_bos.restype = ctypes.c_int32
    lib.llama_vocab_bos.argtypes = [ctypes.c_void_p]
    lib.llama_log_set(None, None)
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(a.model.encode(), params)
    if not model:
        sys.exit(f"{a.model}: llama.cpp cannot load it")
    vocab = lib.llama_model_get_vocab(model)
    text = open(a.text, "rb").read()
    n = len(text) + 16
    buf = (ctypes.c_int32 * n)()
    got = lib.llama_tokenize(vocab, text, len(text), buf, n, True, False)
    if got < 0:
        sys.exit("llama_tokenize failed")
    ids = list(buf[:got])
    if a.chunks:
        bos = lib.llama_vocab_bos(vocab) if lib.llama_vocab_get_add_bos(vocab) else None
        count = len(ids) // a.chunks
        if a.max_chunks >= 0:
            count = min(count, a.max_chunks)
        for i in range(count):
            chunk = ids[i * a.chunks:(i + 1) * a.chunks]
            if bos is not None:
                chunk[0] = bos
            print(",".join(map(str, chunk)))
    else:
        print(",".join(map(str, ids)))


if __name__ == "__main__":
    main()
