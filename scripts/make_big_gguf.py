#!/usr/bin/env python3
"""Write a large GGUF with real gpt-oss-20b expert shapes and random bytes, for benchmarks.

    python3 scripts/make_big_gguf.py OUT.gguf [--layers 10]

Each layer holds gpt-oss-20b's three MXFP4 expert tensors (ne [2880, 2880, 32], 135 MiB
each) plus BF16 attention weights: 10 layers are about 4.2 GB. Data is streamed to
disk in 64 MiB pieces, so memory stays small whatever the size.
"""

import argparse
import os

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

HIDDEN, FFN, EXPERTS, HEADS, KV_HEADS, HEAD_DIM = 2880, 2880, 32, 64, 8, 64
PIECE = 64 << 20


def tensors(layers):
    for n in range(layers):
        for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            yield f"blk.{n}.{name}.weight", [EXPERTS, FFN, HIDDEN // 32 * 17], GGMLQuantizationType.MXFP4, EXPERTS * FFN * HIDDEN // 32 * 17
        for name, rows in (("attn_q", HEADS * HEAD_DIM), ("attn_k", KV_HEADS * HEAD_DIM), ("attn_v", KV_HEADS * HEAD_DIM)):
            yield f"blk.{n}.{name}.weight", [rows, HIDDEN * 2], GGMLQuantizationType.BF16, rows * HIDDEN * 2
        yield f"blk.{n}.attn_output.weight", [HIDDEN, HEADS * HEAD_DIM * 2], GGMLQuantizationType.BF16, HIDDEN * HEADS * HEAD_DIM * 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=10)
    args = ap.parse_args()
    plan = list(tensors(args.layers))
    w = GGUFWriter(args.out, "gpt-oss")
    w.add_block_count(args.layers)
    w.add_expert_count(EXPERTS)
    for name, byte_shape, qtype, nbytes in plan:
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())  # the data section starts aligned
    for _, _, _, nbytes in plan:
        left = nbytes
        while left:
            n = min(left, PIECE)
            fout.write(os.urandom(n))
            left -= n
        w.write_padding(fout, nbytes)
    w.close()
    print(f"{args.out}: {len(plan)} tensors, {os.path.getsize(args.out) / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
