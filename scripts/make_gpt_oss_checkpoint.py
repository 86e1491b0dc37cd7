#!/usr/bin/env python3
"""Writes a full-width gpt-oss checkpoint in Hugging Face MXFP4 layout with random values, for
benchmarks: real shapes (20b: hidden 2880, 32 experts; --experts 128 for 120b width), any
number of layers, shards numbered from 0 with an index, the tiny fixture's tokenizer.

Values are random but valid: bf16 weights are finite (exponent bit 14 cleared, |x| < 2), E8M0
scales lie in [110, 130). Memory use stays small: tensors are written in chunks.

Usage: scripts/make_gpt_oss_checkpoint.py OUT_DIR [--layers 4] [--experts 32] [--bf16]
"""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np

H, I, HEADS, KV, HD, VOCAB = 2880, 2880, 64, 8, 64, 201088
CHUNK = 64 << 20


def layer_tensors(n, e, bf16=False):
    l = f"model.layers.{n}."
    q, kv = HEADS * HD, KV * HD
    if bf16:
        experts = [(l + "mlp.experts.down_proj", "BF16", [e, I, H]), (l + "mlp.experts.down_proj_bias", "BF16", [e, H]),
                   (l + "mlp.experts.gate_up_proj", "BF16", [e, H, 2 * I]),
                   (l + "mlp.experts.gate_up_proj_bias", "BF16", [e, 2 * I])]
        dense = [t for t in layer_tensors(n, e) if "experts" not in t[0]]
        return sorted(dense + experts)
    return [
        (l + "input_layernorm.weight", "BF16", [H]),
        (l + "mlp.experts.down_proj_bias", "BF16", [e, H]),
        (l + "mlp.experts.down_proj_blocks", "U8", [e, H, I // 32, 16]),
        (l + "mlp.experts.down_proj_scales", "U8", [e, H, I // 32]),
        (l + "mlp.experts.gate_up_proj_bias", "BF16", [e, 2 * I]),
        (l + "mlp.experts.gate_up_proj_blocks", "U8", [e, 2 * I, H // 32, 16]),
        (l + "mlp.experts.gate_up_proj_scales", "U8", [e, 2 * I, H // 32]),
        (l + "mlp.router.bias", "BF16", [e]),
        (l + "mlp.router.weight", "BF16", [e, H]),
        (l + "post_attention_layernorm.weight", "BF16", [H]),
        (l + "self_attn.k_proj.bias", "BF16", [kv]),
        (l + "self_attn.k_proj.weight", "BF16", [kv, H]),
        (l + "self_attn.o_proj.bias", "BF16", [H]),
        (l + "self_attn.o_proj.weight", "BF16", [H, q]),
        (l + "self_attn.q_proj.bias", "BF16", [q]),
        (l + "self_attn.q_proj.weight", "BF16", [q, H]),
        (l + "self_attn.sinks", "BF16", [HEADS]),
        (l + "self_attn.v_proj.bias", "BF16", [kv]),
        (l + "self_attn.v_proj.weight", "BF16", [kv, H]),
    ]


def write_shard(path, tensors, rng):
    header, offset = {}, 0
    for name, dtype, shape in tensors:
        size = int(np.prod(shape)) * (2 if dtype == "BF16" else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, dtype, shape in tensors:
            left = int(np.prod(shape)) * (2 if dtype == "BF16" else 1)
            while left:
                n = min(left, CHUNK)
                if dtype == "BF16":
                    bits = rng.integers(0, 1 << 16, n // 2, dtype=np.uint16) & np.uint16(0xBFFF)
                    f.write(bits.tobytes())
                elif name.endswith("_scales"):
                    f.write(rng.integers(110, 130, n, dtype=np.uint8).tobytes())
                else:
                    f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
                left -= n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--bf16", action="store_true", help="the Hugging Face bf16 layout (fine-tunes) instead of MXFP4")
    args = ap.parse_args()
    out, e = args.out, args.experts
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = [[("lm_head.weight", "BF16", [VOCAB, H]), ("model.embed_tokens.weight", "BF16", [VOCAB, H]),
               ("model.norm.weight", "BF16", [H])]]
    half = (args.layers + 1) // 2
    shards.append([t for n in range(half) for t in layer_tensors(n, e, args.bf16)])
    shards.append([t for n in range(half, args.layers) for t in layer_tensors(n, e, args.bf16)])
    shards = [s for s in shards if s]
    weight_map = {}
    for k, tensors in enumerate(shards):
        name = f"model-{k:05d}-of-{len(shards) - 1:05d}.safetensors"
        write_shard(out / name, tensors, rng)
        weight_map.update({t[0]: name for t in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    fixture = Path(__file__).resolve().parent.parent / "tests/fixtures/gpt-oss/hf-mxfp4"
    config = json.loads((fixture / "config.json").read_text())
    if args.bf16:
        del config["quantization_config"]
    config.update({
        "num_hidden_layers": args.layers, "num_local_experts": e, "num_experts_per_tok": 4, "experts_per_token": 4,
        "hidden_size": H, "intermediate_size": I, "head_dim": HD, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "vocab_size": VOCAB, "sliding_window": 128,
        "layer_types": ["sliding_attention" if n % 2 == 0 else "full_attention" for n in range(args.layers)],
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(fixture / f, out / f)
    total = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out}: {args.layers} layers, {e} experts, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
