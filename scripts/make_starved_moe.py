#!/usr/bin/env python3
"""Writes a small gpt-oss-shaped checkpoint (Hugging Face bf16 layout, the fixture's tokenizer)
whose router starves some experts: their router bias is lowered so that almost no token is
routed to them. Widths are multiples of 256 so that every k-quant and i-quant applies to every
matrix. Weights are random with fan-in scaling (activations stay in a sane range); the router's
rows give logits of about unit spread, so a bias of -B sends an expert roughly the tokens whose
logit beats the others' by B.

Usage: scripts/make_starved_moe.py OUT_DIR [--layers 4] [--experts 8] [--hidden 512]
       [--inter 512] [--starve 6,7] [--bias 3.0] [--seed 0]
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/gpt-oss/hf-bf16"


def bf16(x):
    """float32 → bf16 bits (round to nearest even), as a uint16 array of the same shape."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    b = b + 0x7FFF + ((b >> 16) & 1)
    return (b >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=512)
    ap.add_argument("--starve", default="6,7")
    ap.add_argument("--bias", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    H, I, E, L = a.hidden, a.inter, a.experts, a.layers
    heads, kv, hd, vocab = 8, 2, 64, 512
    starve = [int(e) for e in a.starve.split(",") if e]

    def w(*shape, fan_in):
        return rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in)

    t = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, H)).astype(np.float32),
        "lm_head.weight": w(vocab, H, fan_in=H),
        "model.norm.weight": np.ones(H, np.float32),
    }
    for l in range(L):
        p = f"model.layers.{l}."
        bias = np.zeros(E, np.float32)
        bias[starve] = -a.bias
        t.update({
            p + "input_layernorm.weight": np.ones(H, np.float32),
            p + "post_attention_layernorm.weight": np.ones(H, np.float32),
            p + "self_attn.q_proj.weight": w(heads * hd, H, fan_in=H),
            p + "self_attn.q_proj.bias": np.zeros(heads * hd, np.float32),
            p + "self_attn.k_proj.weight": w(kv * hd, H, fan_in=H),
            p + "self_attn.k_proj.bias": np.zeros(kv * hd, np.float32),
            p + "self_attn.v_proj.weight": w(kv * hd, H, fan_in=H),
            p + "self_attn.v_proj.bias": np.zeros(kv * hd, np.float32),
            p + "self_attn.o_proj.weight": w(H, heads * hd, fan_in=heads * hd) * 0.5,
            p + "self_attn.o_proj.bias": np.zeros(H, np.float32),
            p + "self_attn.sinks": np.zeros(heads, np.float32),
            p + "mlp.router.weight": w(E, H, fan_in=H),
            p + "mlp.router.bias": bias,
            # Fine-tune layout: [E, hidden, 2·inter] (gate and up interleaved), [E, inter, hidden].
            p + "mlp.experts.gate_up_proj": w(E, H, 2 * I, fan_in=H),
            p + "mlp.experts.gate_up_proj_bias": np.zeros((E, 2 * I), np.float32),
            p + "mlp.experts.down_proj": w(E, I, H, fan_in=I) * 0.5,
            p + "mlp.experts.down_proj_bias": np.zeros((E, H), np.float32),
        })
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: bf16(v) for k, v in t.items()}, str(out / "model.safetensors.tmp"), metadata={"format": "pt"})
    # safetensors.numpy writes uint16 as U16: mark the tensors BF16 in the header (same bytes).
    raw = bytearray((out / "model.safetensors.tmp").read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].replace(b'"U16"', b'"BF16"')
    assert len(header) == n + header.count(b'"BF16"') - raw[8:8 + n].count(b'"BF16"')
    text = header.rstrip(b" ")
    text += b" " * (-len(text) % 8)
    (out / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + bytes(text) + bytes(raw[8 + n:]))
    (out / "model.safetensors.tmp").unlink()
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update({
        "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L, "num_local_experts": E,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd, "sliding_window": 128,
        "layer_types": ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(L)],
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]:
        shutil.copy(FIXTURE / f, out / f)
    print(f"wrote {out}: {L} layers, {E} experts (top {config['experts_per_token']}), experts {starve} biased by -{a.bias}")


if __name__ == "__main__":
    main()
