#!/usr/bin/env python3
"""Make the Qwen3-MoE and Qwen2-MoE fixtures: tiny random checkpoints from transformers' own
classes, their reference outputs, and what llama.cpp's and mlx-lm's tools make of them.

    python3 scripts/make_qwen_fixtures.py [--fixtures tests/fixtures]
        [--llama-cpp /work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp]
        [--llama-quantize /work/llama/build/bin/llama-quantize] [--steps models,goldens,mlx]

Writes, for FAMILY in qwen3-moe and qwen2-moe:

- `FAMILY/hf/`: the checkpoint as `save_pretrained` writes it (bf16, per-expert
  `mlp.experts.J.{gate,up,down}_proj`), with `config.json` in the form of the released configs
  (`num_experts`, `rope_theta`, `torch_dtype`: what mlx-lm and transformers 4.x read), a
  Qwen-style byte-level BPE `tokenizer.json` (the `qwen2` pre-tokenizer regex, NFC, specials
  after the BPE vocabulary, `vocab_size` larger than the tokenizer as in the released models)
  and `tokenizer_config.json` with a chat template. Qwen3-MoE is sharded in two files.
- `FAMILY/reference.safetensors`: transformers' float32 forward over the stored bf16 weights
  for the 14 reference tokens: `logits`, `hidden.0…L`, `moe_in.N`/`moe_out.N` (the layout of
  the other fixtures, see tests/fixtures/README.md).
- `golden/FAMILY-bf16.gguf` by llama.cpp's `convert_hf_to_gguf.py` (default outtype), with
  `tokenizer.ggml.pre` set to `qwen2` (the tiny tokenizer's hash is not in the converter's
  table, the same change as for the other goldens), and `golden/FAMILY-bf16-TYPE.gguf` by
  `llama-quantize` from it.
- `golden-mlx/FAMILY-q4` and `-q8` by `mlx_lm convert` (and `qwen3-moe-mxfp4`).

Qwen3-MoE also gets `qwen3-moe/hf-dense/`: the same family with a dense layer among the MoE
ones (`mlp_only_layers: [0]`), which llama.cpp refuses and mlx-lm runs, its reference, and
mlx-lm's q4 build of it (`golden-mlx/qwen3-moe-dense-q4`).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TOKENS = [3, 17, 99, 5, 64, 1, 127, 42, 8, 23, 77, 300, 411, 12]

# The split regex of Qwen's tokenizer.json, which llama.cpp implements as pre-tokenizer `qwen2`
# (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2, "original regex from tokenizer.json").
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """The quick brown fox jumps over the lazy dog. A mixture of experts routes every token to a
few of its experts, and each expert is a small feed-forward network. Routing weights come from a
softmax over the router's logits; the top experts are kept. def forward(self, x): return self.down(
silu(self.gate(x)) * self.up(x)) # 2024-05-17 12:30:45 value = 3.14159, count = 42, total = 1000.
Hello, world! How are you today? I'm fine, thanks; we'll see what they've done. It's 9 o'clock.
for i in range(10): print(i, i * i) if x > 0 and y < 0 else None {"key": [1, 2, 3], "ok": true}
Qwen models use byte-level BPE: every byte has a token, and merges join frequent pairs of tokens.
Numbers are split digit by digit: 1 2 3 4 5 6 7 8 9 0 12345 67890. Übergröße café naïve 東京 北京.
"""

QWEN3_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}"
    "{{- messages[0].content + '\\n\\n' }}{%- endif %}{{- '# Tools\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}{%- else %}{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
    "'\\n</tool_response><|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(out: Path, bpe_size: int, added: list[tuple[str, bool]], template: str, eos: str):
    """A Qwen-style byte-level BPE: NFC, the qwen2 split regex then ByteLevel without its own
    regex, `bpe_size` tokens trained on a small corpus, then the added tokens (content,
    special) in order, as Qwen's tokenizer.json has them."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    assert tok.get_vocab_size() == bpe_size, tok.get_vocab_size()
    from tokenizers import AddedToken
    for content, special in added:
        t = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([t])
    tok.save(str(out / "tokenizer.json"))
    decoder = {}
    for i, (content, special) in enumerate(added):
        decoder[str(bpe_size + i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": special}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, s in added if s and c != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def randomize(model, seed):
    """Weights away from the defaults, so that every tensor matters: norms around 1, biases
    non-zero, projections with unit gain, routers three times steeper (clear expert choices:
    with flatter routers, near-ties flip under 8-bit quantization and make the fixture's
    next-token distributions far more fragile than a real model's)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                scale = 3.0 if name.endswith("mlp.gate.weight") else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def save_checkpoint(model, folder: Path, config: dict, shard_kb: int | None):
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(str(folder), max_shard_size=f"{shard_kb}KB" if shard_kb else "5GB")
    # The released configs' form (transformers 4.x, what mlx-lm reads), not transformers 5's.
    (folder / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": True,
           "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": config["transformers_version"]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def reference(folder: Path, out: Path, expect_class: str):
    """transformers' float32 forward over the stored bf16 weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    assert type(model).__name__ == expect_class, type(model).__name__
    model.eval()
    moe_in, moe_out = {}, {}
    hooks = []
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
    n_layer = len(model.model.layers)
    assert len(hidden) == n_layer + 1
    # The last one is after the final norm (transformers replaces it), checked here.
    with torch.no_grad():
        x = model.model.embed_tokens(torch.tensor([TOKENS]))
        assert torch.equal(x[0], hidden[0])
    t = {"tokens": torch.tensor(TOKENS, dtype=torch.int32), "logits": res.logits[0].contiguous()}
    for n, h in enumerate(hidden):
        t[f"hidden.{n}"] = h.contiguous()
    for n in range(n_layer):
        if n in moe_in and "SparseMoeBlock" in type(model.model.layers[n].mlp).__name__:
            t[f"moe_in.{n}"] = moe_in[n].contiguous()
            t[f"moe_out.{n}"] = moe_out[n].contiguous()
    save_file(t, str(out))
    return model


def qwen3_config(dense: bool) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 420,
        "decoder_sparse_step": 1,
        "eos_token_id": 422,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "mlp_only_layers": [0] if dense else [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 512,
    }


def qwen2_config() -> dict:
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 420,
        "decoder_sparse_step": 1,
        "eos_token_id": 420,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 8192,
        "max_window_layers": 2,
        "model_type": "qwen2_moe",
        "moe_intermediate_size": 32,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 96,
        "sliding_window": 8192,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 512,
    }


QWEN3_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<tool_call>", False),
               ("</tool_call>", False), ("<think>", False), ("</think>", False)]
QWEN2_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)]


def make_models(fx: Path):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    for dense in (False, True):
        cfg = qwen3_config(dense)
        folder = fx / "qwen3-moe" / ("hf-dense" if dense else "hf")
        shutil.rmtree(folder, ignore_errors=True)
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**{k: v for k, v in cfg.items() if k != "torch_dtype"}))
        randomize(model, 12 if dense else 11)
        save_checkpoint(model, folder, cfg, None if dense else 300)
        build_tokenizer(folder, 420, QWEN3_ADDED, QWEN3_TEMPLATE, "<|im_end|>")
        m = reference(folder, fx / "qwen3-moe" / ("reference-dense.safetensors" if dense else "reference.safetensors"),
                      "Qwen3MoeForCausalLM")
        assert m.config.num_experts == 4 and m.config.norm_topk_prob and m.config.head_dim == 32
        assert list(m.config.mlp_only_layers) == ([0] if dense else [])
        print(f"qwen3-moe {'hf-dense' if dense else 'hf'}: {sorted(p.name for p in folder.iterdir())}")

    cfg = qwen2_config()
    folder = fx / "qwen2-moe" / "hf"
    shutil.rmtree(folder, ignore_errors=True)
    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**{k: v for k, v in cfg.items() if k != "torch_dtype"}))
    randomize(model, 5)
    save_checkpoint(model, folder, cfg, None)
    build_tokenizer(folder, 420, QWEN2_ADDED, None, "<|endoftext|>")
    # Qwen1.5's chat template as a separate file (newer releases' form).
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    del tc["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(QWEN2_TEMPLATE)
    m = reference(folder, fx / "qwen2-moe" / "reference.safetensors", "Qwen2MoeForCausalLM")
    assert m.config.num_experts == 4 and not m.config.norm_topk_prob
    print(f"qwen2-moe hf: {sorted(p.name for p in folder.iterdir())}")


CONVERTER = """
import runpy, sys
sys.path.insert(0, {llama!r})
sys.path.insert(0, {llama!r} + "/gguf-py")
from conversion import base
# The tiny tokenizer's pre-tokenizer hash is not in the converter's table: set it by family.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
runpy.run_path({llama!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_K_M", "Q4_K_M", "MXFP4_MOE"]


def make_goldens(fx: Path, llama: str, quantize: str):
    for family in ("qwen3-moe", "qwen2-moe"):
        bf16 = fx / "golden" / f"{family}-bf16.gguf"
        args = [str(fx / family / "hf"), "--outfile", str(bf16)]
        subprocess.run([sys.executable, "-c", CONVERTER.format(llama=llama, args=args)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{bf16}: {bf16.stat().st_size} bytes")
        for ty in TYPES:
            out = fx / "golden" / f"{family}-bf16-{ty}.gguf"
            subprocess.run([quantize, str(bf16), str(out), ty, "2"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(f"{out}: {out.stat().st_size} bytes")
    # llama.cpp refuses a dense layer among Qwen3-MoE's: its converter maps the tensors, its
    # loader does not find the layer's experts.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dense.gguf"
        args = [str(fx / "qwen3-moe" / "hf-dense"), "--outfile", str(out)]
        r = subprocess.run([sys.executable, "-c", CONVERTER.format(llama=llama, args=args)], capture_output=True,
                           text=True)
        tail = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"llama.cpp's converter on hf-dense: exit {r.returncode}: {tail}")


def make_mlx(fx: Path):
    from mlx_lm import convert

    builds = [
        ("qwen3-moe/hf", "qwen3-moe-q4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
        ("qwen3-moe/hf", "qwen3-moe-q8", {"quantize": True, "q_bits": 8, "q_group_size": 32}),
        ("qwen3-moe/hf", "qwen3-moe-mxfp4", {"quantize": True, "q_bits": 4, "q_mode": "mxfp4"}),
        ("qwen3-moe/hf-dense", "qwen3-moe-dense-q4", {"quantize": True, "q_bits": 4, "q_group_size": 32}),
        ("qwen2-moe/hf", "qwen2-moe-q4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
        ("qwen2-moe/hf", "qwen2-moe-q8", {"quantize": True, "q_bits": 8, "q_group_size": 32}),
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
    ap.add_argument("--llama-cpp", default="/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp")
    ap.add_argument("--llama-quantize", default="/work/llama/build/bin/llama-quantize")
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
        if f.is_file() and (f.parts[len(a.fixtures.parts)].startswith("qwen") or f.name.startswith("qwen")):
            f.chmod(0o644)


if __name__ == "__main__":
    main()
