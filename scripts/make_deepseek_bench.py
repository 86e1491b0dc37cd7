#!/usr/bin/env python3
"""Generates a DeepSeek-V3-width checkpoint in the released FP8 layout, for
scripts/bench_deepseek.sh: DeepSeek-V3's real widths (hidden 7168, q_lora_rank 1536,
kv_lora_rank 512, 128 heads of qk_nope 128 + qk_rope 64, v_head 128, moe_intermediate 2048,
dense intermediate 18432, one shared expert) with fewer layers and routed experts than the
release (which has 61 layers of 256 experts, 11 GB of FP8 per MoE layer).

    python3 scripts/make_deepseek_bench.py OUT [--layers 2] [--dense 1] [--experts 8] [--seed 0]

Every linear weight is `F8_E4M3` with `weight_scale_inv` (F32, one scale per 128×128 block,
`quantization_config.weight_block_size` [128, 128]), as in the release: the codes are e4m3 of
normal draws (σ = 112, clamped to ±448, the range DeepSeek's amax/448 scaling uses), the scales
1/(112·sqrt(cols)) times a per-block factor in [0.5, 1.5), so the dequantized weights have the
usual 1/sqrt(fan-in) spread. Embeddings, head, norms and router are BF16, the correction bias
F32. The vocabulary is the DeepSeek-V3 fixture's tokenizer (512 entries, from
tests/fixtures/deepseek-v3/fp8/), so embeddings and head are small; no multi-token-prediction
layer (`num_nextn_predict_layers` 0). Shards hold at most ~1 GB and are written tensor by
tensor in row chunks, so the generator's memory stays bounded (~200 MB).
"""

import argparse
import json
import math
import shutil
import struct
from pathlib import Path

import torch

import make_deepseek_fixtures as fixtures

HIDDEN, INTER, MOE_INTER, HEADS = 7168, 18432, 2048, 128
Q_LORA, KV_LORA, NOPE, ROPE, V_DIM = 1536, 512, 128, 64, 128
VOCAB, BLOCK = 512, 128
FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/deepseek-v3/fp8"


def config(layers: int, dense: int, experts: int) -> dict:
    """DeepSeek-V3's config.json with the given depth and expert count (groups of 2 experts;
    top-k limited to what the groups allow): the fixture's (scripts/make_deepseek_fixtures.py)
    at the release's widths, with its FP8 `quantization_config` and no multi-token-prediction
    layer; keys in name order, as the release writes them."""
    n_group = max(1, min(8, experts // 2))
    topk_group = max(1, n_group // 2)
    cfg = dict(
        fixtures.CONFIG,
        first_k_dense_replace=dense,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        kv_lora_rank=KV_LORA,
        moe_intermediate_size=MOE_INTER,
        n_group=n_group,
        n_routed_experts=experts,
        n_shared_experts=1,
        num_attention_heads=HEADS,
        num_experts_per_tok=min(8, topk_group * (experts // n_group)),
        num_hidden_layers=layers,
        num_key_value_heads=HEADS,
        num_nextn_predict_layers=0,
        q_lora_rank=Q_LORA,
        qk_nope_head_dim=NOPE,
        qk_rope_head_dim=ROPE,
        quantization_config=fixtures.QUANT,
        topk_group=topk_group,
        v_head_dim=V_DIM,
        vocab_size=VOCAB,
    )
    return dict(sorted(cfg.items()))


def tensors(layers: int, dense: int, experts: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, shape) of every tensor, in the release's order (embedding, layers, norm, head).
    kind: fp8 (a linear weight; its `_scale_inv` follows), norm, embed, router, bias."""
    out = [("model.embed_tokens.weight", "embed", (VOCAB, HIDDEN))]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        out += [
            (p + "input_layernorm.weight", "norm", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", "norm", (HIDDEN,)),
            (p + "self_attn.q_a_proj.weight", "fp8", (Q_LORA, HIDDEN)),
            (p + "self_attn.q_a_layernorm.weight", "norm", (Q_LORA,)),
            (p + "self_attn.q_b_proj.weight", "fp8", (HEADS * (NOPE + ROPE), Q_LORA)),
            (p + "self_attn.kv_a_proj_with_mqa.weight", "fp8", (KV_LORA + ROPE, HIDDEN)),
            (p + "self_attn.kv_a_layernorm.weight", "norm", (KV_LORA,)),
            (p + "self_attn.kv_b_proj.weight", "fp8", (HEADS * (NOPE + V_DIM), KV_LORA)),
            (p + "self_attn.o_proj.weight", "fp8", (HIDDEN, HEADS * V_DIM)),
        ]
        if layer < dense:
            mlps = [(p + "mlp.", INTER)]
        else:
            out += [
                (p + "mlp.gate.weight", "router", (experts, HIDDEN)),
                (p + "mlp.gate.e_score_correction_bias", "bias", (experts,)),
            ]
            mlps = [(p + f"mlp.experts.{e}.", MOE_INTER) for e in range(experts)]
            mlps.append((p + "mlp.shared_experts.", MOE_INTER))
        for m, inter in mlps:
            out += [
                (m + "gate_proj.weight", "fp8", (inter, HIDDEN)),
                (m + "up_proj.weight", "fp8", (inter, HIDDEN)),
                (m + "down_proj.weight", "fp8", (HIDDEN, inter)),
            ]
    out += [("model.norm.weight", "norm", (HIDDEN,)), ("lm_head.weight", "embed", (VOCAB, HIDDEN))]
    return out


def entries(specs):
    """(name, dtype, shape, nbytes, writer-kind) per stored tensor, scales after their weights."""
    for name, kind, shape in specs:
        if kind == "fp8":
            rows, cols = shape
            yield name, "F8_E4M3", shape, rows * cols, kind
            sshape = (-(-rows // BLOCK), -(-cols // BLOCK))
            yield name + "_scale_inv", "F32", sshape, 4 * sshape[0] * sshape[1], "scale"
        elif kind == "bias":
            yield name, "F32", shape, 4 * math.prod(shape), kind
        else:
            yield name, "BF16", shape, 2 * math.prod(shape), kind


def write_data(f, name, shape, kind, gen: torch.Generator) -> None:
    """Writes one tensor's bytes, in row chunks of ~16 M elements."""
    if kind == "fp8":
        rows, cols = shape
        step = max(1, (1 << 24) // cols)
        for r in range(0, rows, step):
            n = min(step, rows - r)
            x = (torch.randn(n, cols, generator=gen) * 112.0).clamp_(-448.0, 448.0)
            f.write(x.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes())
    elif kind == "scale":
        cols_blocks = shape[1]
        fan_in = cols_blocks * BLOCK  # the weight's width: every V3 width is a multiple of 128
        s = (0.5 + torch.rand(*shape, generator=gen)) / (112.0 * math.sqrt(fan_in))
        f.write(s.to(torch.float32).numpy().tobytes())
    elif kind == "bias":
        f.write((0.15 * torch.randn(*shape, generator=gen)).to(torch.float32).numpy().tobytes())
    else:
        if kind == "norm":
            t = 1.0 + 0.1 * torch.randn(*shape, generator=gen)
        elif kind == "router":
            t = torch.randn(*shape, generator=gen) * (2.0 / math.sqrt(HIDDEN))
        else:  # embed, head
            t = torch.randn(*shape, generator=gen) / math.sqrt(HIDDEN)
        f.write(t.to(torch.bfloat16).view(torch.uint16).numpy().tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dense", type=int, default=1, help="leading dense layers (first_k_dense_replace)")
    ap.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-bytes", type=int, default=1 << 30)
    args = ap.parse_args()
    if args.experts < 2 or args.experts % 2 or not 0 < args.dense <= args.layers:
        ap.error("--experts must be even and ≥ 2, --dense in 1..=layers")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(FIXTURE / f, out / f)
    (out / "config.json").write_text(json.dumps(config(args.layers, args.dense, args.experts), indent=2) + "\n")

    all_entries = list(entries(tensors(args.layers, args.dense, args.experts)))
    shards, current, size = [], [], 0
    for e in all_entries:
        # A weight and its scale stay together; a new shard starts at a weight past the limit.
        if current and size + e[3] > args.shard_bytes and not e[0].endswith("_scale_inv"):
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += e[3]
    shards.append(current)

    gen = torch.Generator().manual_seed(args.seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, nbytes, _ in shard:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, _, shape, _, kind in shard:
                write_data(f, name, shape, kind, gen)
                weight_map[name] = file
            assert f.tell() == 8 + len(raw) + offset, file
        total += offset
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
    print(f"{out}: {len(all_entries)} tensors, {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
