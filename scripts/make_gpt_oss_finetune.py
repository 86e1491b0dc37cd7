#!/usr/bin/env python3
"""Make tests/fixtures/gpt-oss/finetune-bf16/: a bf16 "fine-tune" of the tiny gpt-oss fixture (issue 16).

The fixture tests/fixtures/gpt-oss/hf-bf16 holds the MXFP4 model's values exactly (every expert
weight lies on the MXFP4 grid), so rounding it back to MXFP4 is lossless and says nothing about
a quantizer. Users fine-tune the bf16 form and then want MXFP4 again; their expert weights lie
*between* grid points. This script makes such a model by real training: starting from hf-bf16,
a few AdamW steps (all parameters, f32 master weights) of next-token prediction on real text
(the MoE training text of scripts/train_moe.py: CPython stdlib docstrings/comments, disjoint
from calib.txt and eval.txt), tokenized with the fixture's own 512-token tokenizer, then the
weights are stored in bf16 with the same names, shapes and layout as hf-bf16 (`gate_up_proj`
[E, hidden, 2*inter], `down_proj` [E, inter, hidden], transposed relative to MXFP4 blocks).

The learning rate is chosen so that the expert weights move by a fraction of their MXFP4 grid
step (mean |delta| / step is printed, with the share of expert weights off the grid): enough that
round-to-nearest back to MXFP4 loses, small enough to stay a fine-tune of the same model.

Usage:
    scripts/make_gpt_oss_finetune.py TRAIN_TEXT [--out tests/fixtures/gpt-oss/finetune-bf16]
        [--steps 40] [--lr 1.5e-3] [--threads 2]
(TRAIN_TEXT from `scripts/train_moe.py text train.txt`.) Deterministic for one torch version.
"""

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "tests/fixtures/gpt-oss/hf-bf16")
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def mxfp4_step(w):
    """Per-element grid spacing of OpenAI/ggml MXFP4 for w (..., K) in blocks of 32 along the last axis:
    shared scale 2^(floor(log2(amax)) - 2), E2M1 spacing 0.5 below 2, 1 below 4, 2 above (in scale units)."""
    import torch
    b = w.reshape(*w.shape[:-1], -1, 32)
    amax = b.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    scale = torch.exp2(torch.floor(torch.log2(amax)) - 2)
    a = (b.abs() / scale)
    sp = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0)) * scale
    return sp.reshape(w.shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/gpt-oss/finetune-bf16"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GptOssConfig, GptOssForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src_file = os.path.join(SRC, "model.safetensors")
    with safe_open(src_file, "pt") as f:
        src = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    with open(os.path.join(SRC, "config.json")) as f:
        cfg = GptOssConfig(**json.load(f))
    model = GptOssForCausalLM(cfg).float()
    sd = model.state_dict()
    missing = sorted(set(src) ^ set(sd))
    if missing:
        sys.exit(f"make_gpt_oss_finetune: names differ between {src_file} and transformers' model: {missing[:8]}")
    for k, v in src.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            sys.exit(f"make_gpt_oss_finetune: {k}: shape {tuple(v.shape)} in file, {tuple(sd[k].shape)} in model")
    model.load_state_dict({k: v.float() for k, v in src.items()})

    tok = AutoTokenizer.from_pretrained(SRC)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = torch.tensor(tok(text[:400_000])["input_ids"], dtype=torch.long)
    n = (len(ids) - 1) // (args.seqlen + 1)
    seqs = ids[: n * (args.seqlen + 1)].view(n, args.seqlen + 1)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    hold = seqs[-32:]

    def held_out():
        model.eval()
        with torch.no_grad():
            lg = model(input_ids=hold[:, :-1]).logits
            l = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), hold[:, 1:].reshape(-1)).item()
        model.train()
        return l

    log = {"steps": args.steps, "lr": args.lr, "seqlen": args.seqlen, "batch": args.batch,
           "held_out_loss_before": held_out()}
    for step in range(args.steps):
        b = seqs[torch.randint(0, n - 32, (args.batch,), generator=gen)]
        out = model(input_ids=b[:, :-1], labels=b[:, :-1].clone())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step} loss {out.loss.item():.4f}", flush=True)
    log["held_out_loss_after"] = held_out()
    print(f"held-out loss {log['held_out_loss_before']:.4f} -> {log['held_out_loss_after']:.4f}")

    new = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    stats = {}
    for k, v in new.items():
        if not k.endswith(("gate_up_proj", "down_proj")):
            continue
        # MXFP4 blocks run along the input dimension: axis 1 of the transposed bf16 layout.
        w0 = src[k].float().transpose(1, 2)
        w1 = v.float().transpose(1, 2)
        step = mxfp4_step(w0)
        d = (w1 - w0).abs()
        stats[k] = {"mean_abs_delta_over_step": float((d / step).mean()),
                    "off_grid_share": float((d > 0).float().mean())}
    log["experts"] = stats
    for k, s in stats.items():
        print(f"{k}: mean |delta|/step {s['mean_abs_delta_over_step']:.3f}, changed {100 * s['off_grid_share']:.1f} %")

    tmp = args.out + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for fn in sorted(os.listdir(SRC)):
        if fn != "model.safetensors":
            shutil.copy(os.path.join(SRC, fn), os.path.join(tmp, fn))
    save_file({k: new[k] for k in src}, os.path.join(tmp, "model.safetensors"), metadata=meta or {"format": "pt"})
    with open(os.path.join(tmp, "finetune-log.json"), "w") as f:
        json.dump(log, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
