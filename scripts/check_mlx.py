#!/usr/bin/env python3
"""External oracles for moeq's MLX and Hugging Face builds (run in CI after `cargo build --release`).

1. MLX's own quantizer: on a Llama-shaped checkpoint with random bf16 weights (hidden 256, so
   every group size applies; rows with ties, constant rows, zeros, outliers),
   `moeq convert --format mlx --type q2|q3|q4|q5|q6|q8 --group-size 32|64|128` and `--type mxfp4` write,
   for every quantized layer, exactly the bytes `mlx.core.quantize` computes for its weight.
2. mlx-lm: for every MLX build moeq writes from the fixtures (all gpt-oss layouts including
   those mlx-lm cannot convert, Mixtral, Llama, Qwen3-MoE with and without a dense layer,
   Qwen2-MoE, GLM-4.5, MiniMax-M2 in FP8 and BF16; bf16, q8, q4 with each group size, mxfp4),
   `mlx_lm convert` makes its own build with the same settings (from the MXFP4 layout where
   it cannot read the source); moeq's equals it tensor for tensor when the source is the
   same, and loaded in mlx-lm its logits for the reference tokens match reference.safetensors
   at least as well.
3. Size budgets: `--format mlx --type q4 --optimize` (and `--target-bpw`) of the Llama, Mixtral
   and gpt-oss fixtures mixes bit widths (2 to 8 bits, mxfp4) per module; mlx-lm loads each
   folder (its per-module `quantization` entries) and its logits, run in float32, equal those of
   moeq's own forward on the same folder (`moeq eval --dump`).
4. transformers (when torch is installed) loads the Hugging Face gpt-oss builds moeq writes
   from all three layouts and reproduces the reference logits.

Usage: scripts/check_mlx.py [--moeq target/release/moeq] [--fixtures tests/fixtures]
"""

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_bf16_safetensors(path, tensors):
    """tensors: name -> float32 array, stored as bf16 (round to nearest even)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        data = bf16.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(folder):
    """name -> (dtype, shape, bytes) over every shard of a folder."""
    out = {}
    for f in sorted(Path(folder).glob("model*.safetensors")):
        b = f.read_bytes()
        n = struct.unpack("<Q", b[:8])[0]
        for k, v in json.loads(b[8:8 + n]).items():
            if k != "__metadata__":
                s, e = v["data_offsets"]
                out[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    return out


def random_weights(rng, shape):
    w = (rng.standard_normal(shape) * rng.choice([1e-3, 0.02, 1.0], size=(shape[0], 1))).astype(np.float32)
    w[0, :] = 0.0                                    # an all-zero row
    w[1, :] = 0.5                                    # a constant row
    w[2, ::7] = 40.0                                 # outliers
    w[3, :] = np.tile(np.arange(16, dtype=np.float32) * 0.25 - 2.0, shape[1] // 16)  # exact ties
    return w


def check_mlx_quantizer(moeq, fixtures, work):
    import mlx.core as mx

    rng = np.random.default_rng(7)
    src = work / "llama-256"
    src.mkdir()
    hidden, inter, heads, kv, layers, vocab = 256, 512, 4, 2, 2, 512
    cfg = json.loads((fixtures / "llama/hf/config.json").read_text())
    cfg.update(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
               num_hidden_layers=layers, head_dim=hidden // heads, vocab_size=vocab)
    (src / "config.json").write_text(json.dumps(cfg))
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(fixtures / "llama/hf" / f, src / f)
    hd = hidden // heads
    t = {"model.embed_tokens.weight": random_weights(rng, (vocab, hidden)),
         "model.norm.weight": np.ones(hidden, np.float32)}
    for n in range(layers):
        p = f"model.layers.{n}."
        t.update({
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
            p + "self_attn.q_proj.weight": random_weights(rng, (heads * hd, hidden)),
            p + "self_attn.k_proj.weight": random_weights(rng, (kv * hd, hidden)),
            p + "self_attn.v_proj.weight": random_weights(rng, (kv * hd, hidden)),
            p + "self_attn.o_proj.weight": random_weights(rng, (hidden, heads * hd)),
            p + "mlp.gate_proj.weight": random_weights(rng, (inter, hidden)),
            p + "mlp.up_proj.weight": random_weights(rng, (inter, hidden)),
            p + "mlp.down_proj.weight": random_weights(rng, (hidden, inter)),
        })
    write_bf16_safetensors(src / "model.safetensors", t)
    source = read_safetensors(src)

    settings = [(f"q{b}", g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)] + [("mxfp4", None)]
    checked = 0
    for ty, group in settings:
        out = work / f"llama-256-{ty}-{group}"
        args = [moeq, "convert", str(src), "-o", str(out), "--format", "mlx", "--type", ty, "-q"]
        if group:
            args += ["--group-size", str(group)]
        subprocess.run(args, check=True, capture_output=True)
        ours = read_safetensors(out)
        for name, (dtype, shape, data) in source.items():
            module = name[:-len(".weight")]
            if len(shape) != 2:
                continue
            w = mx.array(np.frombuffer(data, np.uint16).reshape(shape)).view(mx.bfloat16)
            if ty == "mxfp4":
                q, s = mx.quantize(w, group_size=32, bits=4, mode="mxfp4")
                want = {"weight": q, "scales": s}
            else:
                q, s, b = mx.quantize(w, group_size=group, bits=int(ty[1:]))
                want = {"weight": q, "scales": s, "biases": b}
            for part, arr in want.items():
                got = ours[f"{module}.{part}"]
                mx.eval(arr)
                expect = np.array(arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr).tobytes()
                if got[2] != expect or list(got[1]) != list(arr.shape):
                    sys.exit(f"{out}: {module}.{part} differs from mlx.core.quantize ({ty}, group {group})")
                checked += 1
    print(f"MLX quantizer: {checked} tensors over {len(settings)} settings identical to mlx.core.quantize")


def logits_mlx(folder, tokens):
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(folder))
    try:
        out = model(mx.array([tokens]))
        mx.eval(out)
    except (ValueError, RuntimeError) as e:
        if "float32" not in str(e):
            raise
        # mlx's CPU GatherMM takes float32 only (bf16 experts): run the same weights in f32.
        model.set_dtype(mx.float32)
        out = model(mx.array([tokens]))
    return np.array(out.astype(mx.float32))[0]


def figures(logits, ref):
    a, b = logits.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    top1 = int((logits.argmax(-1) == ref.argmax(-1)).sum())
    return cos, top1


def mlx_lm_build(src, out, args):
    """What `mlx_lm convert` writes for the same settings."""
    from mlx_lm import convert

    kw = {}
    if args:
        ty = args[1]
        kw = {"quantize": True, "q_group_size": int(args[3]) if "--group-size" in args else None}
        kw.update({"q_bits": 4, "q_mode": "mxfp4"} if ty == "mxfp4" else {"q_bits": int(ty[1:])})
    convert(str(src), str(out), **kw)


def check_mlx_lm(moeq, fixtures, work):
    from safetensors.numpy import load_file

    refs = {f: load_file(str(fixtures / f / "reference.safetensors"))
            for f in ["gpt-oss", "mixtral", "llama", "qwen3-moe", "qwen2-moe"]}
    refs["qwen3-moe-dense"] = load_file(str(fixtures / "qwen3-moe/reference-dense.safetensors"))
    refs["glm4-moe"] = load_file(str(fixtures / "glm4-moe/reference.safetensors"))
    refs["glm4-moe-qknorm"] = load_file(str(fixtures / "glm4-moe/reference-qknorm.safetensors"))
    refs["glm4-moe-lite"] = load_file(str(fixtures / "glm4-moe-lite/reference.safetensors"))
    refs["minimax-m2"] = load_file(str(fixtures / "minimax-m2/reference.safetensors"))
    # mlx-lm reads gpt-oss only in the MXFP4 layout: the other layouts are compared with its
    # build of that one (the same model).
    readable = {"gpt-oss/original": "gpt-oss/hf-mxfp4", "gpt-oss/hf-bf16": "gpt-oss/hf-mxfp4"}
    cases = [
        ("gpt-oss", "gpt-oss/hf-mxfp4", []),
        ("gpt-oss", "gpt-oss/original", []),
        ("gpt-oss", "gpt-oss/hf-bf16", []),
        ("gpt-oss", "gpt-oss/hf-mxfp4", ["--type", "q4", "--group-size", "32"]),
        ("gpt-oss", "gpt-oss/original", ["--type", "q4", "--group-size", "32"]),
        ("gpt-oss", "gpt-oss/hf-bf16", ["--type", "q4", "--group-size", "32"]),
        ("gpt-oss", "gpt-oss/hf-mxfp4", ["--type", "q8"]),
        ("gpt-oss", "gpt-oss/hf-bf16", ["--type", "q8"]),
        ("llama", "llama/hf", []),
        ("llama", "llama/hf", ["--type", "q4"]),
        ("llama", "llama/hf", ["--type", "q8", "--group-size", "32"]),
        ("llama", "llama/hf", ["--type", "q4", "--group-size", "128"]),
        ("llama", "llama/hf", ["--type", "mxfp4"]),
        ("mixtral", "mixtral/hf", []),
        ("mixtral", "mixtral/hf", ["--type", "q8"]),
        ("mixtral", "mixtral/hf", ["--type", "q4"]),
        ("mixtral", "mixtral/hf", ["--type", "mxfp4"]),
        ("qwen3-moe", "qwen3-moe/hf", []),
        ("qwen3-moe", "qwen3-moe/hf", ["--type", "q4"]),
        ("qwen3-moe", "qwen3-moe/hf", ["--type", "q8", "--group-size", "32"]),
        ("qwen3-moe", "qwen3-moe/hf", ["--type", "mxfp4"]),
        ("qwen3-moe-dense", "qwen3-moe/hf-dense", []),
        ("qwen3-moe-dense", "qwen3-moe/hf-dense", ["--type", "q4", "--group-size", "32"]),
        ("qwen2-moe", "qwen2-moe/hf", []),
        ("qwen2-moe", "qwen2-moe/hf", ["--type", "q4"]),
        ("qwen2-moe", "qwen2-moe/hf", ["--type", "q8", "--group-size", "32"]),
        ("qwen2-moe", "qwen2-moe/hf", ["--type", "mxfp4"]),
        # GLM-4.5: the MTP layer dropped as mlx-lm's sanitize drops it; GLM-4.6's form (q/k norms).
        ("glm4-moe", "glm4-moe/hf", []),
        ("glm4-moe", "glm4-moe/hf", ["--type", "q4"]),
        ("glm4-moe", "glm4-moe/hf", ["--type", "q8", "--group-size", "32"]),
        ("glm4-moe", "glm4-moe/hf", ["--type", "mxfp4"]),
        ("glm4-moe-qknorm", "glm4-moe/hf-qknorm", ["--type", "q4", "--group-size", "32"]),
        # GLM-4.7-Flash (mlx-lm's glm4_moe_lite): kv_b_proj as embed_q/unembed_out, MTP dropped.
        ("glm4-moe-lite", "glm4-moe-lite/hf", []),
        ("glm4-moe-lite", "glm4-moe-lite/hf", ["--type", "q4"]),
        ("glm4-moe-lite", "glm4-moe-lite/hf", ["--type", "q8", "--group-size", "32"]),
        ("glm4-moe-lite", "glm4-moe-lite/hf", ["--type", "mxfp4"]),
        # MiniMax-M2 from its FP8 release (mlx-lm dequantizes it in its sanitize) and its BF16
        # form; the router in 8 bits (mlx-lm's quant_predicate), the correction bias F32.
        ("minimax-m2", "minimax-m2/fp8", []),
        ("minimax-m2", "minimax-m2/fp8", ["--type", "q4"]),
        ("minimax-m2", "minimax-m2/fp8", ["--type", "q8", "--group-size", "32"]),
        ("minimax-m2", "minimax-m2/fp8", ["--type", "mxfp4"]),
        ("minimax-m2", "minimax-m2/hf", ["--type", "q4", "--group-size", "32"]),
    ]
    print(f"{'source':<18} {'args':<26} {'cosine':>9} {'top-1':>6}   mlx_lm convert, same settings")
    for i, (family, src, args) in enumerate(cases):
        out, theirs = work / f"mlx-{i}", work / f"mlx-lm-{i}"
        subprocess.run([moeq, "convert", str(fixtures / src), "-o", str(out), "--format", "mlx", "-q", *args],
                       check=True, capture_output=True)
        their_src = readable.get(src, src)
        mlx_lm_build(fixtures / their_src, theirs, args)
        same = "no"
        if their_src == src:
            # The same source: the same tensors.
            a, b = read_safetensors(out), read_safetensors(theirs)
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                sys.exit(f"{out}: differs from mlx_lm convert's build in {diff[:5]}")
            qa = json.loads((out / "config.json").read_text()).get("quantization")
            qb = json.loads((theirs / "config.json").read_text()).get("quantization")
            if qa != qb:
                sys.exit(f"{out}: quantization block {qa} != mlx-lm's {qb}")
            same = "identical"
        tokens = [int(t) for t in refs[family]["tokens"]]
        ref = refs[family]["logits"]
        cos, top1 = figures(logits_mlx(out, tokens), ref)
        t_cos, t_top1 = figures(logits_mlx(theirs, tokens), ref)
        print(f"{src:<18} {' '.join(args):<26} {cos:>9.6f} {top1:>3}/{len(tokens)}   "
              f"{t_cos:.6f} {t_top1:>2}/{len(tokens)} (tensors: {same})")
        if cos < t_cos - 1e-6 or top1 < t_top1:
            sys.exit(f"{out}: mlx-lm's logits are further from the reference than with its own build")


def check_budget_builds(moeq, fixtures, work):
    from safetensors.numpy import load_file
    import mlx.core as mx
    from mlx_lm import load

    def logits_both(out, tokens, tag):
        """mlx-lm's float32 logits on a folder and moeq's forward's on the same folder: rel L2."""
        dump = work / f"{tag}.safetensors"
        subprocess.run([moeq, "eval", str(out), "--tokens", ",".join(map(str, tokens)), "--dump", str(dump), "-q"],
                       check=True, capture_output=True)
        ours = load_file(str(dump))["logits"].astype(np.float64)
        model, _ = load(str(out))
        model.set_dtype(mx.float32)
        theirs = np.array(model(mx.array([tokens])).astype(mx.float32))[0].astype(np.float64)
        return float(np.linalg.norm(theirs - ours) / np.linalg.norm(ours))

    cases = [("llama", "llama/hf", ["--type", "q4"], ["--optimize"]),
             ("llama", "llama/hf", ["--type", "q4", "--group-size", "32"], ["--target-bpw", "3.8"]),
             ("mixtral", "mixtral/hf", ["--type", "q4"], ["--optimize"]),
             ("gpt-oss", "gpt-oss/hf-mxfp4", ["--type", "q4", "--group-size", "32"], ["--optimize"])]
    for i, (family, src, base, budget) in enumerate(cases):
        tokens = [int(t) for t in load_file(str(fixtures / family / "reference.safetensors"))["tokens"]]
        rel = {}
        for tag, args in [("uniform", base), ("budget", base + budget)]:
            out = work / f"{tag}-{i}"
            subprocess.run([moeq, "convert", str(fixtures / src), "-o", str(out), "--format", "mlx", "-q", *args],
                           check=True, capture_output=True)
            rel[tag] = logits_both(out, tokens, f"{tag}-{i}")
        q = json.loads((work / f"budget-{i}" / "config.json").read_text())["quantization"]
        widths = {(v["bits"], v.get("mode", "affine")) for v in q.values() if isinstance(v, dict)}
        widths.add((q["bits"], q.get("mode", "affine")))
        print(f"budget {src:<18} {' '.join(base + budget):<40} widths {sorted(widths)}: mlx-lm vs moeq's forward "
              f"on the same folder, rel L2 {rel['budget']:.2e} (uniform build: {rel['uniform']:.2e})")
        if len(widths) < 2:
            sys.exit(f"{src}: a budget build with one width only: {widths}")
        # mlx-lm's gpt-oss computes a little otherwise than moeq's forward whatever the types
        # (~8e-4 on the uniform build too): the budget build may not differ more.
        if rel["budget"] > max(1e-4, 1.5 * rel["uniform"]):
            sys.exit(f"{src}: mlx-lm's logits differ from moeq's forward on the same budget folder "
                     f"(relative L2 {rel['budget']:.2e}, uniform build {rel['uniform']:.2e})")


def check_transformers(moeq, fixtures, work):
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except Exception as e:  # torch is optional here: CUDA wheels need gigabytes of libraries
        print(f"transformers check skipped: {e}")
        return
    from safetensors.numpy import load_file

    ref = load_file(str(fixtures / "gpt-oss/reference.safetensors"))
    tokens = torch.tensor([[int(t) for t in ref["tokens"]]])
    for src in ["gpt-oss/original", "gpt-oss/hf-mxfp4", "gpt-oss/hf-bf16"]:
        out = work / ("hf-" + src.replace("/", "-"))
        subprocess.run([moeq, "convert", str(fixtures / src), "-o", str(out), "--format", "hf", "-q"], check=True,
                       capture_output=True)
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        with torch.no_grad():
            logits = model(tokens).logits[0].float().numpy()
        want = ref["logits"]
        rel = float(np.linalg.norm(logits - want) / np.linalg.norm(want))
        print(f"transformers {src:<18} relative L2 {rel:.2e}")
        if rel > 1e-4:
            sys.exit(f"{out}: transformers' logits differ from the reference (relative L2 {rel:.2e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeq", default="target/release/moeq")
    ap.add_argument("--fixtures", default="tests/fixtures", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        check_mlx_quantizer(a.moeq, a.fixtures, work)
        check_mlx_lm(a.moeq, a.fixtures, work)
        check_budget_builds(a.moeq, a.fixtures, work)
        check_transformers(a.moeq, a.fixtures, work)
    print("MLX and Hugging Face builds: all checks passed")


if __name__ == "__main__":
    main()
