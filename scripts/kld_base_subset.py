#!/usr/bin/env python3
"""Writes the first N chunks of a llama-perplexity --kl-divergence-base file as a new base file.

llama-perplexity always evaluates every chunk its base file holds; a shorter base file gives a
faster (noisier) KLD measurement on the same text. Format (tools/perplexity/perplexity.cpp,
kl_divergence): "_logits_", n_ctx u32, n_vocab i32, n_chunk i32, n_ctx*n_chunk token ids (i32),
then per chunk (n_ctx - 1 - n_ctx/2) * nv uint16 values, nv = 2*((n_vocab+1)/2) + 4.

usage: kld_base_subset.py BASE.kld N OUT.kld
"""
import struct
import sys


def main() -> int:
    src, n, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(src, "rb") as f:
        magic = f.read(8)
        if magic != b"_logits_":
            sys.exit(f"{src}: not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", f.read(12))
        if not 0 < n <= n_chunk:
            sys.exit(f"{src}: holds {n_chunk} chunks; asked for {n}")
        tokens = f.read(4 * n_ctx * n_chunk)
        nv = 2 * ((n_vocab + 1) // 2) + 4
        per_chunk = (n_ctx - 1 - n_ctx // 2) * nv * 2
        data = f.read(per_chunk * n)
        if len(data) != per_chunk * n:
            sys.exit(f"{src}: truncated")
    with open(dst + ".tmp", "wb") as g:
        g.write(magic + struct.pack("<Iii", n_ctx, n_vocab, n))
        g.write(tokens[: 4 * n_ctx * n])
        g.write(data)
    import os

    os.replace(dst + ".tmp", dst)
    print(f"{dst}: {n} of {n_chunk} chunks, n_ctx {n_ctx}, n_vocab {n_vocab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
