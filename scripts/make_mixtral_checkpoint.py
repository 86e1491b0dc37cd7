#!/usr/bin/env python3
"""Writes a Mixtral-shaped bf16 checkpoint in Hugging Face layout with random values, for
benchmarks: the real 8x7B widths (hidden 4096, intermediate 14336, 32 heads, 8 KV heads,
vocab 32000, 8 experts), any number of layers, one shard per layer plus one for the
embeddings, an index, and the tiny fixture's SentencePiece tokenizer (padded to the vocab).

Values are finite bf16 (exponent bit 14 cleared, |x| < 2). Memory use stays small.

Usage: scripts/make_mixtral_checkpoint.py OUT_DIR [--layers 2]
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

H, F, HEADS, KV, VOCAB, E = 4096, 14336, 32, 8, 32000, 8
CHUNK = 64 << 20


def layer_tensors(n):
    l = f"model.layers.{n}."
    t = [(l + "block_sparse_moe.gate.weight", [E, H]), (l + "input_layernorm.weight", [H]),
         (l + "post_attention_layernorm.weight", [H]),
         (l + "self_attn.k_proj.weight", [KV * 128, H]), (l + "self_attn.o_proj.weight", [H, H]),
         (l + "self_attn.q_proj.weight", [H, H]), (l + "self_attn.v_proj.weight", [KV * 128, H])]
    for j in range(E):
        e = l + f"block_sparse_moe.experts.{j}."
        t += [(e + "w1.weight", [F, H]), (e + "w2.weight", [H, F]), (e + "w3.weight", [F, H])]
    return sorted(t)


def write_shard(path, tensors, rng):
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in tensors:
            left = int(np.prod(shape)) * 2
            while left:
                n = min(left, CHUNK)
                if name.endswith("norm.weight"):
                    f.write(np.full(n // 2, 0x3F80, dtype=np.uint16).tobytes())  # 1.0
                else:
                    bits = rng.integers(0, 1 << 16, n // 2, dtype=np.uint16) & np.uint16(0xBFFF)
                    bits = (bits & np.uint16(0x80FF)) | np.uint16(0x3C00)  # |x| in [2^-7, 2^-6): weights-like
                    f.write(bits.tobytes())
                left -= n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = [[("lm_head.weight", [VOCAB, H]), ("model.embed_tokens.weight", [VOCAB, H]), ("model.norm.weight", [H])]]
    shards += [layer_tensors(n) for n in range(args.layers)]
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out / name, tensors, rng)
        weight_map.update({t[0]: name for t in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    fixture = Path(__file__).resolve().parent.parent / "tests/fixtures/mixtral/hf"
    config = json.loads((fixture / "config.json").read_text())
    config.update({"num_hidden_layers": args.layers, "hidden_size": H, "intermediate_size": F,
                   "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
                   "num_local_experts": E, "num_experts_per_tok": 2, "max_position_embeddings": 32768})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(fixture / f, out / f)
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out}: {args.layers} layers, {E} experts, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
