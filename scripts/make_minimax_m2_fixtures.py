#!/usr/bin/env python3
"""Make the MiniMax-M2 fixtures (`MiniMaxM2ForCausalLM`, model_type `minimax_m2`): a tiny random
checkpoint in the released layout, in FP8 as MiniMaxAI ships it and in BF16, its reference
outputs, and what llama.cpp's and mlx-lm's tools make of it.

    python3 scripts/make_minimax_m2_fixtures.py [--fixtures tests/fixtures]
        [--llama-cpp /work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp]
        [--llama-quantize /work/llama-cache/bin/llama-quantize] [--steps models,goldens,mlx]

Writes:

- `minimax-m2/fp8/`: MiniMax-M2's released layout: per layer `self_attn.{q,k,v,o}_proj`,
  `self_attn.{q,k}_norm` over the whole projection (heads × head_dim values, not per head),
  `block_sparse_moe.gate.weight` (the router, BF16), `block_sparse_moe.e_score_correction_bias`
  (F32), per-expert `block_sparse_moe.experts.J.w1/w2/w3.weight` (gate, down, up); every
  projection and expert weight `F8_E4M3` with `weight_scale_inv` (F32, one scale per 128×128
  block; hidden 192 and expert width 64 make partial blocks), `quantization_config` {fp8,
  weight_block_size [128, 128]}; `rotary_dim` 16 of `head_dim` 64, `scoring_func` sigmoid,
  `use_qk_norm`, 8 experts, 2 per token, 2 layers, two shards with an index.
- `minimax-m2/hf/`: the same model with each FP8 weight times its block scale in f32, rounded
  to BF16 (what the converter and mlx-lm make of `fp8/`), one file.
- `minimax-m2/reference.safetensors`: transformers' float32 forward over `hf/`'s weights:
  `tokens`, `logits`, `hidden.0…2`, `moe_in.N`/`moe_out.N`; `reference-fp8.safetensors`: the
  same over `fp8/`'s weights dequantized in f32 (not rounded).
- `golden/minimax-m2-bf16.gguf` by llama.cpp's `convert_hf_to_gguf.py` on `hf/` (default
  outtype), `-TYPE.gguf` by `llama-quantize` from it; `golden/minimax-m2-fp8.gguf` by the
  converter on `fp8/` (it dequantizes FP8 itself: the same tensors as the bf16 golden, only
  `general.name` differs). `tokenizer.ggml.pre` is set to `minimax-m2` (the tiny tokenizer's
  hash is not in the converter's table, as for the other fixtures).
- `golden-mlx/minimax-m2-q4`, `-q8` by `mlx_lm convert` on `fp8/` (mlx-lm's `minimax` model
  dequantizes FP8 in its `sanitize`).

The tokenizer is a byte-level BPE with MiniMax-M2's split regex and special tokens
(`]~!b[` BOS, `[e~[` EOS, `]~b]`, `]!d~[`, `]!p~[`, `<think>`, `</think>`, ...).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOKENS = [3, 17, 99, 5, 64, 1, 127, 42, 8, 23, 77, 300, 411, 12]

# MiniMax-M2's tokenizer.json split regex (llama.cpp's `minimax-m2` pre-tokenizer).
M2_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """The quick brown fox jumps over the lazy dog. A mixture of experts routes every token to a
few of its experts, and each expert is a small feed-forward network. Routing weights come from a
sigmoid of the router's logits; a correction bias helps choose them. def forward(self, x):
return self.w2(silu(self.w1(x)) * self.w3(x)) # 2025-10-27 12:30:45 value = 3.14159, n = 42.
Hello, world! How are you today? I'm fine, thanks; we'll see what they've done. It's 9 o'clock.
for i in range(10): print(i, i * i) if x > 0 and y < 0 else None {"key": [1, 2, 3], "ok": true}
MiniMax models use byte-level BPE: every byte has a token, and merges join frequent pairs.
Numbers are split in threes: 1 2 3 4 5 6 7 8 9 0 12345 67890. Übergröße café naïve 東京 上海.
"""

ADDED = [("]!p~[", True), ("<fim_prefix>", True), ("]~!b[", True), ("]~b]", True), ("[e~[", True),
         ("]!d~[", True), ("<think>", False), ("</think>", False), ("<minimax:tool_call>", False),
         ("</minimax:tool_call>", False)]
BPE_SIZE = 420
BOS, EOS = BPE_SIZE + 2, BPE_SIZE + 4

TEMPLATE = (
    "{%- for m in messages %}]~b]{{ m.role }}\n{{ m.content }}[e~[\n{%- endfor %}"
    "{%- if add_generation_prompt %}]~b]ai\n<think>\n{%- endif %}"
)

LAYERS, HIDDEN, EXPERTS, INTER, VOCAB = 2, 192, 8, 64, 512
HEADS, KV_HEADS, HEAD_DIM, ROTARY, BLOCK = 4, 2, 64, 16, 128

QUANT = {"activation_scheme": "dynamic", "fmt": "float8_e4m3fn", "quant_method": "fp8",
         "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]}


def config() -> dict:
    # The keys of MiniMax-M2's config.json (auto_map and the MTP keys of the release kept).
    return {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "attn_type_list": [1] * LAYERS,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 196608,
        "model_type": "minimax_m2",
        "mtp_transformer_layers": 1,
        "num_attention_heads": HEADS,
        "num_experts_per_tok": 2,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS,
        "num_mtp_modules": 3,
        "output_router_logits": False,
        "qk_norm_type": "per_layer",
        "rms_norm_eps": 1e-06,
        "rope_theta": 5000000,
        "rotary_dim": ROTARY,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "scoring_func": "sigmoid",
        "shared_intermediate_size": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.1",
        "use_cache": True,
        "use_mtp": True,
        "use_qk_norm": True,
        "use_routing_bias": True,
        "vocab_size": VOCAB,
    }


def build_tokenizer(out: Path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(M2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    assert tok.get_vocab_size() == BPE_SIZE, tok.get_vocab_size()
    for content, special in ADDED:
        t = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([t])
    tok.save(str(out / "tokenizer.json"))
    decoder = {str(BPE_SIZE + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": s} for i, (c, s) in enumerate(ADDED)}
    cfg = {
        "added_tokens_decoder": decoder,
        "bos_token": "]~!b[",
        "chat_template": TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "[e~[",
        "model_max_length": 40960000,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "]!d~[",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def fp8_quantize(w):
    """Block quantization as the release's: per 128×128 block, scale = amax / 448 (f32), e4m3
    codes of w / scale (round to nearest even); partial blocks at the edges."""
    import torch
    rows, cols = w.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.empty(br, bc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = (blk.abs().max() / 448.0).to(torch.float32)
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale):
    """As llama.cpp's converter (`dequant_simple`): f32 codes times the block's scale, in f32."""
    s = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * s


def make_weights(seed: int = 7):
    """(fp8 tensors, bf16 tensors, f32 tensors: the FP8 weights dequantized, not rounded) in the
    released names. Norms around 1, projections with unit
    gain, the router three times steeper (clear expert choices), correction biases of the size
    of the sigmoid scores' spread (so that they change choices)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    fp8, bf16, deq = {}, {}, {}

    def plain(name, t, dtype=torch.bfloat16):
        fp8[name] = bf16[name] = t.to(dtype).contiguous()
        deq[name] = fp8[name].float()

    def linear(name, rows, cols):
        q, s = fp8_quantize(randn(rows, cols) / cols ** 0.5)
        fp8[name], fp8[name + "_scale_inv"] = q, s
        deq[name] = dequantize(q, s)
        bf16[name] = deq[name].to(torch.bfloat16)

    plain("model.embed_tokens.weight", randn(VOCAB, HIDDEN))
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for n in range(LAYERS):
        p = f"model.layers.{n}."
        plain(p + "input_layernorm.weight", 1.0 + 0.2 * randn(HIDDEN))
        plain(p + "post_attention_layernorm.weight", 1.0 + 0.2 * randn(HIDDEN))
        linear(p + "self_attn.q_proj.weight", q, HIDDEN)
        linear(p + "self_attn.k_proj.weight", kv, HIDDEN)
        linear(p + "self_attn.v_proj.weight", kv, HIDDEN)
        linear(p + "self_attn.o_proj.weight", HIDDEN, q)
        plain(p + "self_attn.q_norm.weight", 1.0 + 0.2 * randn(q))
        plain(p + "self_attn.k_norm.weight", 1.0 + 0.2 * randn(kv))
        plain(p + "block_sparse_moe.gate.weight", 3.0 * randn(EXPERTS, HIDDEN) / HIDDEN ** 0.5)
        plain(p + "block_sparse_moe.e_score_correction_bias", 0.1 * randn(EXPERTS), torch.float32)
        for j in range(EXPERTS):
            e = p + f"block_sparse_moe.experts.{j}."
            linear(e + "w1.weight", INTER, HIDDEN)
            linear(e + "w2.weight", HIDDEN, INTER)
            linear(e + "w3.weight", INTER, HIDDEN)
    plain("model.norm.weight", 1.0 + 0.2 * randn(HIDDEN))
    plain("lm_head.weight", randn(VOCAB, HIDDEN) / HIDDEN ** 0.5)
    return fp8, bf16, deq


def save_sharded(tensors: dict, out: Path, cuts: list):
    from safetensors.torch import save_file
    names = sorted(tensors)
    if not cuts:
        save_file({n: tensors[n] for n in names}, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards, current = [], []
    for n in names:
        if n in cuts and current:
            shards.append(current)
            current = []
        current.append(n)
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, str(out / file), metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = file
            total += tensors[n].numel() * tensors[n].element_size()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def reference(folder: Path, bf16: dict, out: Path):
    """transformers' float32 forward over the weights of `folder` (`bf16`: them, as stored)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == "MiniMaxM2ForCausalLM", type(model).__name__
    model.eval()
    # Everything loaded as stored (transformers renames block_sparse_moe and fuses w1/w3).
    sd = model.state_dict()
    p = "model.layers.1."
    assert torch.equal(sd[p + "mlp.e_score_correction_bias"], bf16[p + "block_sparse_moe.e_score_correction_bias"])
    assert torch.equal(sd[p + "mlp.experts.down_proj"][5], bf16[p + "block_sparse_moe.experts.5.w2.weight"].float())
    gu = sd[p + "mlp.experts.gate_up_proj"][3]
    assert torch.equal(gu[:INTER], bf16[p + "block_sparse_moe.experts.3.w1.weight"].float())
    assert torch.equal(gu[INTER:], bf16[p + "block_sparse_moe.experts.3.w3.weight"].float())
    assert torch.equal(sd[p + "self_attn.q_norm.weight"], bf16[p + "self_attn.q_norm.weight"].float())
    rope = model.config.rope_parameters
    assert abs(rope["partial_rotary_factor"] - ROTARY / HEAD_DIM) < 1e-12, rope
    assert model.model.rotary_emb.inv_freq.numel() == ROTARY // 2
    moe_in, moe_out, hooks = {}, {}, []
    for n, layer in enumerate(model.model.layers):
        def hook(_m, args, output, n=n):
            moe_in[n] = args[0][0].detach().clone()
            moe_out[n] = (output[0] if isinstance(output, tuple) else output)[0].detach().clone()
        hooks.append(layer.mlp.register_forward_hook(hook))
    with torch.no_grad():
        res = model(torch.tensor([TOKENS]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    hidden = [h[0] for h in res.hidden_states]
    assert len(hidden) == LAYERS + 1
    t = {"tokens": torch.tensor(TOKENS, dtype=torch.int32), "logits": res.logits[0].contiguous()}
    for n, h in enumerate(hidden):
        t[f"hidden.{n}"] = h.contiguous()
    for n in range(LAYERS):
        t[f"moe_in.{n}"] = moe_in[n].contiguous()
        t[f"moe_out.{n}"] = moe_out[n].contiguous()
    save_file(t, str(out))


def make_models(fx: Path):
    base = fx / "minimax-m2"
    shutil.rmtree(base, ignore_errors=True)
    hf, fp8_dir = base / "hf", base / "fp8"
    hf.mkdir(parents=True)
    fp8_dir.mkdir()
    cfg = config()
    build_tokenizer(hf)
    gen = {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": True, "temperature": 1.0, "top_p": 0.95,
           "top_k": 40, "transformers_version": cfg["transformers_version"]}
    (hf / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(hf / f, fp8_dir / f)
    (hf / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (fp8_dir / "config.json").write_text(json.dumps({**cfg, "quantization_config": QUANT}, indent=2) + "\n")
    fp8, bf16, deq = make_weights()
    save_sharded(bf16, hf, [])
    # Layer 1's experts straddle the cut.
    save_sharded(fp8, fp8_dir, ["model.layers.1.block_sparse_moe.experts.4.w1.weight"])
    reference(hf, bf16, base / "reference.safetensors")
    # The FP8 weights dequantized in f32 (what moeq's forward reads from fp8/), not rounded.
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float32"}))
        save_sharded(deq, tmp, [])
        reference(tmp, deq, base / "reference-fp8.safetensors")
    print(f"minimax-m2: {sorted(p.name for p in hf.iterdir())} {sorted(p.name for p in fp8_dir.iterdir())}")


CONVERTER = """
import runpy, sys
sys.path.insert(0, {llama!r})
sys.path.insert(0, {llama!r} + "/gguf-py")
from conversion import base
# The tiny tokenizer's pre-tokenizer hash is not in the converter's table: set it by family.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "minimax-m2"
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
runpy.run_path({llama!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""

TYPES = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"]


def convert(llama: str, src: Path, out: Path):
    args = [str(src), "--outfile", str(out)]
    subprocess.run([sys.executable, "-c", CONVERTER.format(llama=llama, args=args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{out}: {out.stat().st_size} bytes")


def make_goldens(fx: Path, llama: str, quantize: str):
    golden = fx / "golden"
    bf16 = golden / "minimax-m2-bf16.gguf"
    convert(llama, fx / "minimax-m2" / "hf", bf16)
    for ty in TYPES:
        out = golden / f"minimax-m2-bf16-{ty}.gguf"
        subprocess.run([quantize, str(bf16), str(out), ty, "2"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print(f"{out}: {out.stat().st_size} bytes")
    # The converter dequantizes fp8/ itself (`dequant_simple`, f32, then BF16): the same tensors.
    convert(llama, fx / "minimax-m2" / "fp8", golden / "minimax-m2-fp8.gguf")


def make_mlx(fx: Path):
    from mlx_lm import convert as mlx_convert

    builds = [
        ("minimax-m2/fp8", "minimax-m2-q4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
        ("minimax-m2/fp8", "minimax-m2-q8", {"quantize": True, "q_bits": 8, "q_group_size": 32}),
    ]
    for src, name, kw in builds:
        out = fx / "golden-mlx" / name
        shutil.rmtree(out, ignore_errors=True)
        mlx_convert(str(fx / src), str(out), **kw)
        (out / "README.md").unlink(missing_ok=True)  # mlx-lm's model card template
        print(f"{out}: {sorted(p.name for p in out.iterdir())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="tests/fixtures", type=Path)
    ap.add_argument("--llama-cpp", default="/work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp")
    ap.add_argument("--llama-quantize", default="/work/llama-cache/bin/llama-quantize")
    ap.add_argument("--steps", default="models,goldens,mlx")
    a = ap.parse_args()
    steps = a.steps.split(",")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "models" in steps:
        make_models(a.fixtures)
    if "goldens" in steps:
        make_goldens(a.fixtures, a.llama_cpp, a.llama_quantize)
    if "mlx" in steps:
        make_mlx(a.fixtures)
    # safetensors writes its files owner-only; fixtures are read by everyone.
    for f in a.fixtures.rglob("*"):
        if f.is_file() and any(part.startswith("minimax-m2") for part in f.parts[len(a.fixtures.parts):]):
            f.chmod(0o644)


if __name__ == "__main__":
    main()
