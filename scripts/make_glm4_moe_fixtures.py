#!/usr/bin/env python3
"""Make the GLM-4.5 / GLM-4.6 MoE fixtures (`Glm4MoeForCausalLM`, model_type `glm4_moe`): tiny
random checkpoints in the released layout, their reference outputs, and what llama.cpp's and
mlx-lm's tools make of them.

    python3 scripts/make_glm4_moe_fixtures.py [--fixtures tests/fixtures]
        [--llama-cpp /work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp]
        [--llama-quantize /work/llama-cache/bin/llama-quantize] [--steps models,goldens,mlx]

Writes:

- `glm4-moe/hf/`: GLM-4.5-Air's layout: layer 0 dense (`first_k_dense_replace` 1), then MoE
  layers with per-expert `mlp.experts.J.{gate,up,down}_proj`, the router `mlp.gate.weight`
  (BF16) and its `mlp.gate.e_score_correction_bias` (F32), one shared expert
  (`mlp.shared_experts.*`), q/k/v biases, no q/k norms, `head_dim` 32 with 4 heads (heads ×
  head_dim ≠ hidden, as in the release), `partial_rotary_factor` 0.5, 8 experts in 4 groups
  (top-2 groups, top-2 experts), `routed_scaling_factor` 2.5, `norm_topk_prob`; and the
  multi-token-prediction layer `model.layers.3.*` (`num_nextn_predict_layers` 1) with the
  tensors the release has: a whole MoE decoder layer plus `eh_proj`, `enorm`, `hnorm`,
  `embed_tokens`, `shared_head.head`, `shared_head.norm`. Two shards with an index, the MTP
  layer in the last one.
- `glm4-moe/hf-qknorm/`: GLM-4.6's form: `use_qk_norm` true (`self_attn.{q,k}_norm`), and an MTP
  layer without its own `embed_tokens` and `shared_head.head` (GLM-4.6 dropped them), one file.
- `glm4-moe/reference.safetensors`, `reference-qknorm.safetensors`: transformers' float32
  forward over the stored bf16 weights (the MTP layer is not part of it): `tokens`, `logits`,
  `hidden.0…3`, `moe_in.N`/`moe_out.N` for every layer's feed-forward block (layer 0 dense).
- `golden/glm4-moe-bf16.gguf`, `golden/glm4-moe-qknorm-bf16.gguf` by llama.cpp's
  `convert_hf_to_gguf.py` (default outtype; `Glm4MoeModel` exports the MTP layer as block 3),
  with `tokenizer.ggml.pre` set to `glm4` (the tiny tokenizer's hash is not in the converter's
  table, as for the other fixtures), and `-TYPE.gguf` by `llama-quantize` from them.
- `golden-mlx/glm4-moe-q4`, `-q8` by `mlx_lm convert` (which drops the MTP layer).

The tokenizer is GLM's kind: a byte-level BPE with GLM-4.5's split regex (Llama 3's), the
added tokens after it (`<|endoftext|>`, `[MASK]`, `[gMASK]`, `[sMASK]`, `<sop>`, `<eop>`,
`<|system|>`, `<|user|>`, `<|assistant|>`, `<|observation|>` special; `<think>`, `</think>` not),
`vocab_size` 512 past them, `tokenizer_config.json` with eos and pad `<|endoftext|>` and a chat
template, `config.json`'s `eos_token_id` a list as in the release.
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

# GLM-4.5's tokenizer.json split regex (llama.cpp's `glm4` pre-tokenizer).
GLM4_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """The quick brown fox jumps over the lazy dog. A mixture of experts routes every token to a
few of its experts, and each expert is a small feed-forward network. Routing weights come from a
sigmoid of the router's logits; the top experts of the best groups are kept. def forward(self, x):
return self.down(silu(self.gate(x)) * self.up(x)) # 2025-07-28 12:30:45 value = 3.14159, n = 42.
Hello, world! How are you today? I'm fine, thanks; we'll see what they've done. It's 9 o'clock.
for i in range(10): print(i, i * i) if x > 0 and y < 0 else None {"key": [1, 2, 3], "ok": true}
GLM models use byte-level BPE: every byte has a token, and merges join frequent pairs of tokens.
Numbers are split in threes: 1 2 3 4 5 6 7 8 9 0 12345 67890. Übergröße café naïve 東京 北京.
"""

ADDED = [("<|endoftext|>", True), ("[MASK]", True), ("[gMASK]", True), ("[sMASK]", True), ("<sop>", True),
         ("<eop>", True), ("<|system|>", True), ("<|user|>", True), ("<|assistant|>", True),
         ("<|observation|>", True), ("<think>", False), ("</think>", False)]
BPE_SIZE = 420

TEMPLATE = (
    "[gMASK]<sop>{%- for m in messages %}{%- if m.role == 'system' %}<|system|>\n{{ m.content }}"
    "{%- elif m.role == 'user' %}<|user|>\n{{ m.content }}{%- elif m.role == 'assistant' %}<|assistant|>\n"
    "{{ m.content }}{%- elif m.role == 'tool' %}<|observation|>\n{{ m.content }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}"
)

LAYERS, HIDDEN, EXPERTS, VOCAB = 3, 64, 8, 512


def config(qk_norm: bool) -> dict:
    # The keys of GLM-4.5-Air's config.json (transformers 4.54's form, what mlx-lm reads).
    return {
        "architectures": ["Glm4MoeForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": [BPE_SIZE, BPE_SIZE + 7, BPE_SIZE + 9],
        "first_k_dense_replace": 1,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 131072,
        "model_type": "glm4_moe",
        "moe_intermediate_size": 32,
        "n_group": 4,
        "n_routed_experts": EXPERTS,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": 2,
        "num_nextn_predict_layers": 1,
        "pad_token_id": BPE_SIZE,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "routed_scaling_factor": 2.5,
        "tie_word_embeddings": False,
        "topk_group": 2,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.54.0",
        "use_cache": True,
        "use_qk_norm": qk_norm,
        "vocab_size": VOCAB,
    }


def build_tokenizer(out: Path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
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
        "additional_special_tokens": [c for c, s in ADDED[1:] if s],
        "chat_template": TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "extra_special_tokens": {},
        "model_max_length": 128000,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def randomize(module, seed, prefix=""):
    """Norms around 1, biases non-zero, projections with unit gain, routers three times steeper
    (clear expert choices, as in the Qwen fixtures), correction biases of the size of the
    sigmoid scores' spread (so that they change choices)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            name = prefix + name
            if name.endswith("e_score_correction_bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight") or name.endswith("norm"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                scale = 3.0 if name.endswith("mlp.gate.weight") else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def mtp_tensors(cfg_obj, seed: int, own_head: bool) -> dict:
    """The multi-token-prediction layer `model.layers.{LAYERS}.*` as GLM's release stores it:
    a whole MoE decoder layer and the nextn projections and norms."""
    import torch
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeDecoderLayer

    layer = Glm4MoeDecoderLayer(cfg_obj, LAYERS)
    randomize(layer, seed)
    g = torch.Generator().manual_seed(seed + 1)
    p = f"model.layers.{LAYERS}."
    t = {p + k: v.detach().clone() for k, v in layer.state_dict().items()}
    # transformers 5's fused experts, back to the released per-expert tensors.
    gate_up = t.pop(p + "mlp.experts.gate_up_proj")
    down = t.pop(p + "mlp.experts.down_proj")
    inter = gate_up.shape[1] // 2
    for j in range(EXPERTS):
        t[p + f"mlp.experts.{j}.gate_proj.weight"] = gate_up[j, :inter].clone()
        t[p + f"mlp.experts.{j}.up_proj.weight"] = gate_up[j, inter:].clone()
        t[p + f"mlp.experts.{j}.down_proj.weight"] = down[j].clone()
    t[p + "eh_proj.weight"] = torch.randn((HIDDEN, 2 * HIDDEN), generator=g) / (2 * HIDDEN) ** 0.5
    for n in ("enorm", "hnorm", "shared_head.norm"):
        t[p + n + ".weight"] = 1.0 + 0.2 * torch.randn((HIDDEN,), generator=g)
    if own_head:
        t[p + "embed_tokens.weight"] = torch.randn((VOCAB, HIDDEN), generator=g)
        t[p + "shared_head.head.weight"] = torch.randn((VOCAB, HIDDEN), generator=g) / HIDDEN ** 0.5
    return {k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous()
            for k, v in t.items()}


def save_checkpoint(model, folder: Path, cfg: dict, mtp: dict, shards: int):
    """The model's tensors (bf16, correction biases F32) and the MTP layer, in `shards` files
    (the MTP layer in the last), with an index when more than one."""
    import torch
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        tensors = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            tensors.update(load_file(str(f)))
    for k in list(tensors):
        if k.endswith("e_score_correction_bias"):
            tensors[k] = tensors[k].float()
    assert not any(k.startswith(f"model.layers.{LAYERS}.") for k in tensors)
    names = sorted(tensors)
    parts = [names] if shards == 1 else [names[: len(names) // 2], names[len(names) // 2:]]
    meta = {"format": "pt"}
    if shards == 1:
        save_file({**{k: tensors[k] for k in names}, **mtp}, str(folder / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        total = 0
        for i, part in enumerate(parts):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            chunk = {k: tensors[k] for k in part}
            if i == shards - 1:
                chunk.update(mtp)
            save_file(chunk, str(folder / fname), metadata=meta)
            for k, v in chunk.items():
                weight_map[k] = fname
                total += v.numel() * v.element_size()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"_from_model_config": True, "eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"],
           "transformers_version": cfg["transformers_version"]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def reference(folder: Path, out: Path):
    """transformers' float32 forward over the stored bf16 weights (the MTP layer ignored)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == "Glm4MoeForCausalLM", type(model).__name__
    model.eval()
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
    return model


def make_models(fx: Path):
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    for qk_norm in (False, True):
        cfg = config(qk_norm)
        name = "hf-qknorm" if qk_norm else "hf"
        folder = fx / "glm4-moe" / name
        shutil.rmtree(folder, ignore_errors=True)
        cfg_obj = Glm4MoeConfig(**{k: v for k, v in cfg.items() if k != "torch_dtype"})
        model = Glm4MoeForCausalLM(cfg_obj)
        randomize(model, 31 if qk_norm else 30)
        mtp = mtp_tensors(cfg_obj, 41 if qk_norm else 40, own_head=not qk_norm)
        save_checkpoint(model, folder, cfg, mtp, 1 if qk_norm else 2)
        build_tokenizer(folder)
        ref = fx / "glm4-moe" / ("reference-qknorm.safetensors" if qk_norm else "reference.safetensors")
        m = reference(folder, ref)
        rope = m.config.rope_parameters
        assert m.config.use_qk_norm == qk_norm and rope.get("partial_rotary_factor") == 0.5, rope
        assert m.config.n_group == 4 and m.config.topk_group == 2 and m.config.routed_scaling_factor == 2.5
        print(f"glm4-moe {name}: {sorted(p.name for p in folder.iterdir())}")


CONVERTER = """
import runpy, sys
sys.path.insert(0, {llama!r})
sys.path.insert(0, {llama!r} + "/gguf-py")
from conversion import base
# The tiny tokenizer's pre-tokenizer hash is not in the converter's table: set it by family.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "glm4"
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
runpy.run_path({llama!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""

TYPES = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"]


def make_goldens(fx: Path, llama: str, quantize: str):
    for src, name in (("hf", "glm4-moe"), ("hf-qknorm", "glm4-moe-qknorm")):
        bf16 = fx / "golden" / f"{name}-bf16.gguf"
        args = [str(fx / "glm4-moe" / src), "--outfile", str(bf16)]
        subprocess.run([sys.executable, "-c", CONVERTER.format(llama=llama, args=args)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{bf16}: {bf16.stat().st_size} bytes")
        for ty in TYPES:
            out = fx / "golden" / f"{name}-bf16-{ty}.gguf"
            subprocess.run([quantize, str(bf16), str(out), ty, "2"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(f"{out}: {out.stat().st_size} bytes")


def make_mlx(fx: Path):
    from mlx_lm import convert

    builds = [
        ("glm4-moe/hf", "glm4-moe-q4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
        ("glm4-moe/hf", "glm4-moe-q8", {"quantize": True, "q_bits": 8, "q_group_size": 32}),
    ]
    for src, name, kw in builds:
        out = fx / "golden-mlx" / name
        shutil.rmtree(out, ignore_errors=True)
        convert(str(fx / src), str(out), **kw)
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
        if f.is_file() and (f.parts[len(a.fixtures.parts)].startswith("glm4") or f.name.startswith("glm4")):
            f.chmod(0o644)


if __name__ == "__main__":
    main()
