#!/usr/bin/env python3
"""Train the small Mixtral-architecture fixture tests/fixtures/trained-moe/ on real text (issue 16).

Why: random weights say nothing about rounding strategies; a trained MoE has the heavy tails,
outlier channels and uneven routing that importance-weighted and error-minimizing quantizers
exploit. The model is built so that its *experts* dominate what quantization touches:

- architecture: MixtralForCausalLM, 4 layers, hidden 256, 8 experts top-2, expert width 512,
  4 query heads / 2 KV heads of 64, untied output; every matrix width a multiple of 256 so all
  k- and i-quants apply (no fallback types);
- tokenizer: a byte-level BPE of 8192 tokens trained on the training text with `tokenizers`
  (GPT-2 pre-tokenization, so llama.cpp tokenizes it with pre-type `gpt-2`): with SmolLM2's
  49152-token vocabulary the embedding and output matrices (2 x 12.6 M weights) would outweigh
  the experts (12.6 M); with 8192 they are 2 x 2.1 M and the experts are ~75 % of the weights;
- training text: docstrings (module, class, function; `ast.get_docstring`) and comments
  (`tokenize`) of CPython's standard library sources, *excluding* the 70 modules/packages whose
  docstrings make the evaluation text (scripts/quality_texts.py EVAL_MODULES), `pydoc_data`
  (the calibration text) and `test`/`idlelib`/`lib2to3`/`turtledemo`, and dropping any piece
  that shares a paragraph (> 80 chars) with eval.txt (e.g. _pyio's copies of io's docstrings);
  files in sorted order.
  Real English technical prose of the same register as calib.txt and eval.txt, disjoint from both.

Phases (all deterministic for one Python/torch version; seed 0):
    train_moe.py text OUT.txt                 # write the training text
    train_moe.py tokenizer TEXT DIR           # train the BPE, write DIR/tokenizer.json etc.
    train_moe.py train TEXT DIR [--steps 400] [--minutes 90] [--threads 2]
        # train (AdamW, batches of 8 x 128 tokens, lr 3e-3, warmup 30 steps then cosine), log
        # the loss every 50 steps (held-out every 100), save DIR/model.safetensors (bf16),
        # config.json, generation_config.json and a training log train-log.json with the loss of the
        # untrained (random) model on the same held-out batches for comparison.
    train_moe.py reference DIR OUT.safetensors
        # transformers' float32 forward (eager attention) over the stored bf16 weights on the
        # tokens of REFERENCE_TEXT (the model's own tokenizer, no BOS: the model was trained
        # without one): `tokens` (I32), `logits` [T, vocab], `hidden.0..L` [T, hidden] (the last
        # after the final norm), `moe_in.N`/`moe_out.N` (layer N's MoE block input and output),
        # the layout of tests/fixtures/*/reference.safetensors.

Run it niced: `nice -n 10 scripts/train_moe.py train ...` (the machine is shared).
"""

import argparse
import ast
import io
import json
import math
import os
import sys
import sysconfig
import time
import tokenize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality_texts import EVAL_MODULES  # noqa: E402

EXCLUDE_TOP = {m.split(".")[0] for m in EVAL_MODULES} | {"pydoc_data", "test", "idlelib", "lib2to3", "turtledemo",
                                                         "site-packages", "dist-packages", "ensurepip"}
VOCAB = 8192
CFG = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
           num_key_value_heads=2, head_dim=64, num_local_experts=8, num_experts_per_tok=2,
           max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
           router_aux_loss_coef=0.02, output_router_logits=True, bos_token_id=0, eos_token_id=0)


def stdlib_files():
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel.split(os.sep)[0]
        if rel != "." and (top in EXCLUDE_TOP or top.startswith("__")):
            dirnames[:] = []
            continue
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            if rel == "." and fn[:-3] in EXCLUDE_TOP:
                continue
            out.append(os.path.join(dirpath, fn))
    return sorted(out)


def file_text(path):
    with open(path, "rb") as f:
        src = f.read()
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return []
    pieces = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node)
            if d and len(d) > 40:
                pieces.append(d)
    comments = []
    try:
        for tok in tokenize.tokenize(io.BytesIO(src).readline):
            if tok.type == tokenize.COMMENT:
                c = tok.string.lstrip("#").strip()
                if len(c) > 2 and not c.startswith("!") and "coding" not in c[:20]:
                    comments.append(c)
            elif comments and tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                if sum(map(len, comments)) > 60:
                    pieces.append("\n".join(comments))
                comments = []
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        pass
    return pieces


def cmd_text(args):
    from quality_texts import eval_text
    held = {para for para in eval_text().split("\n\n") if len(para) > 80}
    pieces, dropped = [], 0
    files = stdlib_files()
    for p in files:
        for piece in file_text(p):
            # Drop any piece sharing a paragraph with the evaluation text (e.g. _pyio's copies of io's docs).
            if any(para in held for para in piece.split("\n\n")):
                dropped += 1
            else:
                pieces.append(piece)
    print(f"dropped {dropped} pieces that share a paragraph with eval.txt")
    text = "\n\n".join(pieces)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{args.out}: {len(files)} files, {len(pieces)} pieces, {len(text.encode())} bytes")


def cmd_tokenizer(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([args.text], trainer)
    os.makedirs(args.dir, exist_ok=True)
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=1024)
    fast.save_pretrained(args.dir)
    # llama.cpp and moeq add BOS when the tokenizer config says so (as SmolLM2's does not).
    print(f"{args.dir}: vocab {tok.get_vocab_size()}")


def batches(ids, seqlen, bsz, gen, torch):
    n = (len(ids) - 1) // seqlen
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bsz + 1, bsz):
            starts = perm[i:i + bsz] * seqlen
            yield torch.stack([ids[s:s + seqlen + 1] for s in starts.tolist()])


def cmd_train(args):
    import torch
    from transformers import AutoTokenizer, GenerationConfig, MixtralConfig, MixtralForCausalLM
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokz = AutoTokenizer.from_pretrained(args.dir)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = torch.tensor(tokz(text)["input_ids"], dtype=torch.long)
    n_hold = 16 * (args.seqlen + 1)
    hold, train = ids[-n_hold:], ids[:-n_hold]
    hold = hold.view(16, args.seqlen + 1)
    print(f"tokens: train {len(train)}, held-out {hold.numel()} ({len(text)} chars)", flush=True)
    cfg = MixtralConfig(**CFG)
    model = MixtralForCausalLM(cfg)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    n_exp = sum(p.numel() for n, p in model.named_parameters() if "experts" in n)
    print(f"params {n_params}, experts {n_exp}", flush=True)

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            lg = model(input_ids=hold[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(lg.reshape(-1, VOCAB), hold[:, 1:].reshape(-1)).item()
        model.train()
        return loss

    log = {"config": CFG, "params": n_params, "expert_params": n_exp, "train_tokens_available": len(train),
           "planned_steps": args.steps, "seqlen": args.seqlen, "batch": args.batch, "lr": args.lr, "threads": args.threads, "steps": []}
    log["random_model_held_out_loss"] = held_out_loss()
    log["uniform_loss_ln_vocab"] = math.log(VOCAB)
    print(f"random model held-out loss {log['random_model_held_out_loss']:.4f} (ln V = {math.log(VOCAB):.4f})",
          flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    it = batches(train, args.seqlen, args.batch, gen, torch)
    t0 = time.time()
    budget = args.minutes * 60
    step = 0
    est_steps = None
    while True:
        el = time.time() - t0
        if step >= args.steps:
            break
        if el > budget:
            log["stopped_by_time_limit"] = True
            break
        # Warmup 30 steps, then cosine to 10 % over the planned steps.
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(it)
        out = model(input_ids=b[:, :-1], labels=b[:, :-1].clone())
        # out.loss is the shifted LM loss plus router_aux_loss_coef * load-balancing loss
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            rec = {"step": step, "seconds": round(time.time() - t0, 1), "lr": lr, "train_loss": loss.item(),
                   "aux_loss": float(out.aux_loss.detach()) if out.aux_loss is not None else None}
            if step % 100 == 0:
                rec["held_out_loss"] = held_out_loss()
            log["steps"].append(rec)
            print(json.dumps(rec), flush=True)
    log["final_held_out_loss"] = held_out_loss()
    log["steps_done"] = step
    log["tokens_seen"] = step * args.batch * args.seqlen
    log["seconds"] = round(time.time() - t0, 1)
    print(f"final held-out loss {log['final_held_out_loss']:.4f} after {step} steps", flush=True)
    model = model.to(torch.bfloat16)
    model.config.output_router_logits = False
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0)
    model.save_pretrained(args.dir, safe_serialization=True)
    with open(os.path.join(args.dir, "train-log.json"), "w") as f:
        json.dump(log, f, indent=1)


# A sentence in the register of the training text, not taken from it or from eval.txt.
REFERENCE_TEXT = "Return a new sorted list of the items, or raise ValueError if the key is not found."


def cmd_reference(args):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(1)
    tokens = AutoTokenizer.from_pretrained(args.dir)(REFERENCE_TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == "MixtralForCausalLM", type(model).__name__
    model.eval()
    moe_in, moe_out, hooks = {}, {}, []
    for n, layer in enumerate(model.model.layers):
        def hook(_m, inp, output, n=n):
            moe_in[n] = inp[0][0].detach().clone()
            moe_out[n] = (output[0] if isinstance(output, tuple) else output)[0].detach().clone()
        hooks.append(layer.mlp.register_forward_hook(hook))
    with torch.no_grad():
        res = model(torch.tensor([tokens]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    hidden = [h[0] for h in res.hidden_states]
    assert len(hidden) == len(model.model.layers) + 1
    t = {"tokens": torch.tensor(tokens, dtype=torch.int32), "logits": res.logits[0].contiguous()}
    for n, h in enumerate(hidden):
        t[f"hidden.{n}"] = h.contiguous()
    for n in sorted(moe_in):
        t[f"moe_in.{n}"] = moe_in[n].contiguous()
        t[f"moe_out.{n}"] = moe_out[n].contiguous()
    save_file(t, args.out)
    print(f"{args.out}: {len(tokens)} tokens; top-1 of the last position: "
          f"{int(res.logits[0, -1].argmax())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("text")
    a.add_argument("out")
    a = sub.add_parser("tokenizer")
    a.add_argument("text")
    a.add_argument("dir")
    a = sub.add_parser("train")
    a.add_argument("text")
    a.add_argument("dir")
    a.add_argument("--steps", type=int, default=400)
    a.add_argument("--minutes", type=float, default=90, help="stop early (and say so in the log) after this long")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--seqlen", type=int, default=128)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--lr", type=float, default=3e-3)
    a = sub.add_parser("reference")
    a.add_argument("dir")
    a.add_argument("out")
    args = ap.parse_args()
    {"text": cmd_text, "tokenizer": cmd_tokenizer, "train": cmd_train, "reference": cmd_reference}[args.cmd](args)


if __name__ == "__main__":
    main()
