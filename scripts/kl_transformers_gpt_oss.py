#!/usr/bin/env python3
"""Next-token KL of gpt-oss Hugging Face builds against their source, computed by transformers
(issue 16: the bf16 fine-tune returned to MXFP4 with OpenAI's round-to-nearest vs GPTQ).

Usage: kl_transformers_gpt_oss.py SOURCE_DIR TEXT BUILD_DIR... [--tokens N] [--seq 256]
Tokenizes TEXT with SOURCE_DIR's tokenizer, cuts it into sequences of --seq tokens (first N
tokens), runs SOURCE and each BUILD (loaded with AutoModelForCausalLM, f32; transformers
dequantizes the MXFP4 experts) and prints per build: mean and max KL(source || build) of the
next-token distributions, top-1 agreement, the relative L2 of the logits.
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("text")
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(a.source)
    ids = tok(open(a.text, encoding="utf-8").read())["input_ids"][: a.tokens]
    n = len(ids) // a.seq
    batch = torch.tensor(ids[: n * a.seq]).view(n, a.seq)

    def logits(path):
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        m.eval()
        with torch.no_grad():
            return torch.cat([m(batch[i:i + 8]).logits for i in range(0, n, 8)]).reshape(-1, m.config.vocab_size)

    ref = logits(a.source)
    lp = torch.log_softmax(ref, -1)
    print(f"{n} sequences of {a.seq} tokens ({n * a.seq} positions)")
    for b in a.builds:
        out = logits(b)
        lq = torch.log_softmax(out, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        top1 = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
        rel = ((out - ref).norm() / ref.norm()).item()
        print(f"{b}: KL mean {kl.mean().item():.4e} max {kl.max().item():.4f} top-1 {100 * top1:.2f} % "
              f"logits rel L2 {rel:.4e}")


if __name__ == "__main__":
    main()
