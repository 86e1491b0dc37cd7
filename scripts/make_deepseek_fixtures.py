#!/usr/bin/env python3
"""Generates the DeepSeek-V3 fixtures: a tiny random `DeepseekV3ForCausalLM` in the layouts
users download, its reference outputs, and what llama.cpp's and mlx-lm's own tools make of it.

    python3 scripts/make_deepseek_fixtures.py [--fixtures tests/fixtures]
        [--llama /work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp]
        [--quantize /work/llama/build/bin/llama-quantize] [--no-goldens]

Writes, under the fixtures folder:

- `deepseek-v3/fp8/`: the released layout of DeepSeek-V3/R1: every linear layer's weight as
  `F8_E4M3` with `weight_scale_inv` (F32, one scale per 128×128 block; the widths make partial
  blocks), `quantization_config` {fmt e4m3, quant_method fp8, weight_block_size [128, 128]},
  the embeddings, head, norms and router in BF16, `e_score_correction_bias` in F32, and the
  multi-token-prediction layer `model.layers.3.*` (`num_nextn_predict_layers` 1), in two shards.
- `deepseek-v3/hf/`: the same model as DeepSeek's `fp8_cast_bf16.py` makes it (each FP8 weight
  times its block scale in f32, rounded to BF16), without the MTP layer, as transformers
  saves it (per-expert tensors), in three shards (layer 1's experts straddle two).
- `deepseek-v3/reference.safetensors` (from `hf/`) and `reference-fp8.safetensors` (from the
  FP8 weights dequantized in f32, not rounded): transformers' forward in float32, in the
  layout of the other fixtures' references (`tokens`, `logits`, `hidden.N`, `moe_in.N`,
  `moe_out.N`; layer 0's dense block too).
- `golden/deepseek-v3-bf16.gguf` (llama.cpp's `convert_hf_to_gguf.py` on `hf/`),
  `deepseek-v3-bf16-{Q8_0,Q4_0,Q4_K_M}.gguf` (`llama-quantize` of it),
  `deepseek-v3-fp8.gguf` (the converter reading `fp8/` directly: it dequantizes as
  `weight.float() * scale_inv` in f32 and rounds to BF16; its tensors and metadata are those
  of `deepseek-v3-bf16.gguf` but for `general.name`, so `llama-quantize` makes the same files
  of both and only the bf16 ones are kept).
  The tiny tokenizer's pre-tokenizer hash is not in the converter's table, so
  `tokenizer.ggml.pre` is set by family (`deepseek-v3`), as for the other fixtures.
- `golden-mlx/deepseek-v3-q4` (`mlx_lm convert -q --q-bits 4 --q-group-size 32` on `hf/`) and
  `golden-mlx/deepseek-v3-fp8-q4` (`-q --q-bits 4 --q-group-size 64` on `fp8/`, which mlx-lm
  dequantizes in its `sanitize`; mlx-lm drops
  the MTP layer only under the name `model.layers.61`, so it reads a copy of `fp8/` without
  `model.layers.3.*`: the same tensors every tool keeps).
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
import torch
from safetensors.torch import save_file

HIDDEN, INTER, MOE_INTER, LAYERS, HEADS = 64, 256, 32, 3, 4
EXPERTS, SHARED, GROUPS, TOPK_GROUP, TOPK = 16, 2, 4, 2, 4
KV_LORA, Q_LORA, ROPE, NOPE, V_DIM = 160, 96, 16, 32, 32
VOCAB, BLOCK = 512, 128
TOKENS = [0, 17, 99, 5, 64, 301, 127, 42, 8, 23, 77, 300, 411, 12]

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": INTER,
    "kv_lora_rank": KV_LORA,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": MOE_INTER,
    "moe_layer_freq": 1,
    "n_group": GROUPS,
    "n_routed_experts": EXPERTS,
    "n_shared_experts": SHARED,
    "norm_topk_prob": True,
    "num_attention_heads": HEADS,
    "num_experts_per_tok": TOPK,
    "num_hidden_layers": LAYERS,
    "num_key_value_heads": HEADS,
    "num_nextn_predict_layers": 1,
    "pretraining_tp": 1,
    "q_lora_rank": Q_LORA,
    "qk_nope_head_dim": NOPE,
    "qk_rope_head_dim": ROPE,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": TOPK_GROUP,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": True,
    "v_head_dim": V_DIM,
    "vocab_size": VOCAB,
}
QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]}

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)


def make_tokenizer(out: Path) -> None:
    """A 512-entry byte-level BPE with DeepSeek-V3's pre-tokenizer (digits in threes, CJK runs,
    then its word/punctuation split, byte-level without regex), its special tokens at 0–2 and
    its chat tokens at the top."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated", invert=False),
            pre_tokenizers.Split(Regex("[一-龥\u3040-ゟ゠-ヿ]+"), behavior="isolated", invert=False),
            pre_tokenizers.Split(
                Regex(
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
                ),
                behavior="isolated",
                invert=False,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=506,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "DeepSeek-V3 is a strong Mixture-of-Experts language model with 671B total parameters.",
        "Multi-head latent attention compresses keys and values into a latent vector.",
        "The quick brown fox jumps over the lazy dog 1234567890 times, again and again!",
        "def main():\n    print('hello, world')\n    return 0\n",
        "深度求索 人工智能 モデル カタカナ ひらがな",
    ] * 20
    tok.train_from_iterator(corpus, trainer)
    # As in DeepSeek-V3's tokenizer.json: added, not special, normalized.
    tok.add_tokens([AddedToken(c, special=False, normalized=True) for c in ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 0)]
    )
    tok.save(str(out / "tokenizer.json"))
    token = lambda c: {  # noqa: E731
        "__type": "AddedToken",
        "content": c,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": token(BOS),
                "clean_up_tokenization_spaces": False,
                "eos_token": token(EOS),
                "legacy": True,
                "model_max_length": 16384,
                "pad_token": token(EOS),
                "sp_model_kwargs": {},
                "unk_token": None,
                "tokenizer_class": "LlamaTokenizerFast",
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    (out / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1, "do_sample": True,
                    "temperature": 0.6, "top_p": 0.95, "transformers_version": "4.46.3"}, indent=2) + "\n"
    )


def linear_names(layer: int, moe: bool, mtp: bool = False) -> list[tuple[str, int, int]]:
    """(name, rows, cols) of every linear weight of a layer (FP8 in the release)."""
    p = f"model.layers.{layer}."
    x = [
        (p + "self_attn.q_a_proj.weight", Q_LORA, HIDDEN),
        (p + "self_attn.q_b_proj.weight", HEADS * (NOPE + ROPE), Q_LORA),
        (p + "self_attn.kv_a_proj_with_mqa.weight", KV_LORA + ROPE, HIDDEN),
        (p + "self_attn.kv_b_proj.weight", HEADS * (NOPE + V_DIM), KV_LORA),
        (p + "self_attn.o_proj.weight", HIDDEN, HEADS * V_DIM),
    ]
    if moe:
        for e in range(EXPERTS):
            x += [
                (p + f"mlp.experts.{e}.gate_proj.weight", MOE_INTER, HIDDEN),
                (p + f"mlp.experts.{e}.up_proj.weight", MOE_INTER, HIDDEN),
                (p + f"mlp.experts.{e}.down_proj.weight", HIDDEN, MOE_INTER),
            ]
        s = MOE_INTER * SHARED
        x += [
            (p + "mlp.shared_experts.gate_proj.weight", s, HIDDEN),
            (p + "mlp.shared_experts.up_proj.weight", s, HIDDEN),
            (p + "mlp.shared_experts.down_proj.weight", HIDDEN, s),
        ]
    else:
        x += [
            (p + "mlp.gate_proj.weight", INTER, HIDDEN),
            (p + "mlp.up_proj.weight", INTER, HIDDEN),
            (p + "mlp.down_proj.weight", HIDDEN, INTER),
        ]
    if mtp:
        x.append((p + "eh_proj.weight", HIDDEN, 2 * HIDDEN))
    return x


def other_names(layer: int, moe: bool, mtp: bool = False) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of a layer's other tensors: norms, router, correction bias."""
    p = f"model.layers.{layer}."
    x = [
        (p + "input_layernorm.weight", (HIDDEN,), "norm"),
        (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
        (p + "self_attn.q_a_layernorm.weight", (Q_LORA,), "norm"),
        (p + "self_attn.kv_a_layernorm.weight", (KV_LORA,), "norm"),
    ]
    if moe:
        x += [(p + "mlp.gate.weight", (EXPERTS, HIDDEN), "router"), (p + "mlp.gate.e_score_correction_bias", (EXPERTS,), "bias")]
    if mtp:
        x += [
            (p + "enorm.weight", (HIDDEN,), "norm"),
            (p + "hnorm.weight", (HIDDEN,), "norm"),
            (p + "shared_head.norm.weight", (HIDDEN,), "norm"),
            (p + "embed_tokens.weight", (VOCAB, HIDDEN), "embed"),
            (p + "shared_head.head.weight", (VOCAB, HIDDEN), "head"),
        ]
    return x


def fp8_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's block quantization: per 128×128 block, scale = amax / 448 (f32), e4m3 codes of
    w / scale (round to nearest even); partial blocks at the edges."""
    rows, cols = w.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.empty(br, bc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
            s = (blk.abs().max() / 448.0).to(torch.float32)
            scale[i, j] = s
            q[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """As llama.cpp's converter (`dequant_simple`) and DeepSeek's `weight_dequant`: f32 codes times
    the block's scale, in f32."""
    s = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: q.shape[0], : q.shape[1]]
    return q.to(torch.float32) * s


def make_weights(seed: int = 0):
    """Master weights (f32) → (fp8 tensors, bf16 tensors, f32 dequantized tensors)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    fp8, bf16, deq = {}, {}, {}

    def other(name, shape, kind):
        if kind == "norm":
            t = 1.0 + 0.1 * randn(*shape)
        elif kind in ("embed", "head"):
            t = randn(*shape) * (1.0 if kind == "embed" else 1.0 / HIDDEN**0.5)
        elif kind == "router":
            t = randn(*shape) * (2.0 / HIDDEN**0.5)
        else:  # the correction bias: large enough to change which experts are chosen
            t = 0.15 * randn(*shape)
        if kind == "bias":
            fp8[name] = bf16[name] = deq[name] = t.to(torch.float32)
        else:
            fp8[name] = bf16[name] = t.to(torch.bfloat16)
            deq[name] = fp8[name].to(torch.float32)

    other("model.embed_tokens.weight", (VOCAB, HIDDEN), "embed")
    for layer in range(LAYERS + 1):
        mtp = layer == LAYERS
        moe = layer >= CONFIG["first_k_dense_replace"]
        for name, rows, cols in linear_names(layer, moe, mtp):
            w = randn(rows, cols) / cols**0.5
            q, s = fp8_quantize(w)
            fp8[name], fp8[name + "_scale_inv"] = q, s
            d = dequantize(q, s)
            deq[name] = d
            if not mtp:
                bf16[name] = d.to(torch.bfloat16)
        for name, shape, kind in other_names(layer, moe, mtp):
            other(name, shape, kind)
    other("model.norm.weight", (HIDDEN,), "norm")
    other("lm_head.weight", (VOCAB, HIDDEN), "head")
    for name in [n for n in bf16 if n.startswith(f"model.layers.{LAYERS}.")]:
        del bf16[name]
    for name in [n for n in deq if n.startswith(f"model.layers.{LAYERS}.")]:
        del deq[name]
    return fp8, bf16, deq


def save_sharded(tensors: dict, out: Path, cuts: list[str]) -> None:
    """Shards in name order, a new shard starting at each name in `cuts`, with the index."""
    names = sorted(tensors)
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
        save_file({n: tensors[n].contiguous() for n in shard}, str(out / file), metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = file
            total += tensors[n].numel() * tensors[n].element_size()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )


def reference(model_dir: Path, tensors: dict, out: Path) -> None:
    """transformers' forward in f32 over `tensors` (the weights as stored, or dequantized)."""
    from transformers import DeepseekV3ForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = {k: v for k, v in CONFIG.items() if k != "quantization_config"}
        config["torch_dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config))
        save_file({n: t.to(torch.float32).contiguous() for n, t in tensors.items()}, str(tmp / "model.safetensors"))
        model = DeepseekV3ForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    sd = model.state_dict()
    # Everything loaded as given (transformers stacks the experts itself).
    assert torch.equal(sd["model.layers.1.mlp.gate.e_score_correction_bias"], tensors["model.layers.1.mlp.gate.e_score_correction_bias"])
    w = tensors["model.layers.2.mlp.experts.5.down_proj.weight"].to(torch.float32)
    assert torch.equal(sd["model.layers.2.mlp.experts.down_proj"][5], w)
    ffn_in, ffn_out = {}, {}
    hooks = []
    for n, layer in enumerate(model.model.layers):
        def hook(mod, args, result, n=n):
            ffn_in[n] = args[0][0].detach().clone()
            ffn_out[n] = result[0].detach().clone()
        hooks.append(layer.mlp.register_forward_hook(hook))
    hidden = []
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda m, a, r: hidden.append(r[0].detach().clone())))
    for layer in model.model.layers:
        hooks.append(layer.register_forward_hook(lambda m, a, r: hidden.append((r[0] if isinstance(r, tuple) else r)[0].detach().clone())))
    hooks.append(model.model.norm.register_forward_hook(lambda m, a, r: hidden.append(r[0].detach().clone())))
    with torch.no_grad():
        logits = model(torch.tensor([TOKENS])).logits[0]
    for h in hooks:
        h.remove()
    # hidden: embedding, each layer, final norm (which replaces the last layer's output).
    assert len(hidden) == LAYERS + 2
    # hidden.0 = embedding output, hidden.N = after layer N-1, the last = after the final norm.
    states = hidden[:LAYERS] + [hidden[LAYERS + 1]]
    result = {"tokens": torch.tensor(TOKENS, dtype=torch.int32), "logits": logits.contiguous()}
    for i, h in enumerate(states):
        result[f"hidden.{i}"] = h.contiguous()
    for n in range(LAYERS):
        result[f"moe_in.{n}"] = ffn_in[n].contiguous()
        result[f"moe_out.{n}"] = ffn_out[n].contiguous()
    save_file(result, str(out))


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def convert(llama: Path, src: Path, out: Path) -> None:
    """llama.cpp's converter, with the pre-tokenizer set by family (the tiny tokenizer's hash is
    not in its table)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + '/gguf-py');"
        "import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tok: 'deepseek-v3';"
        "sys.argv = ['convert_hf_to_gguf.py', sys.argv[2], '--outfile', sys.argv[3]];"
        "import convert_hf_to_gguf as c; c.main()"
    )
    run([sys.executable, "-c", code, llama, src, out], env={**os.environ, "NO_LOCAL_GGUF": "1", "PYTHONPATH": f"{llama}/gguf-py"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parent.parent / "tests/fixtures")
    ap.add_argument("--llama", type=Path, default=Path("/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    ap.add_argument("--quantize", type=Path, default=Path("/work/llama/build/bin/llama-quantize"))
    ap.add_argument("--no-goldens", action="store_true")
    args = ap.parse_args()
    base = args.fixtures / "deepseek-v3"
    if base.exists():
        shutil.rmtree(base)
    hf, fp8_dir = base / "hf", base / "fp8"
    hf.mkdir(parents=True)
    fp8_dir.mkdir()
    make_tokenizer(hf)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(hf / f, fp8_dir / f)
    (hf / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (fp8_dir / "config.json").write_text(json.dumps({**CONFIG, "quantization_config": QUANT}, indent=2) + "\n")

    fp8, bf16, deq = make_weights()
    # hf: three shards; layer 1's experts straddle the first cut.
    save_sharded(bf16, hf, ["model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.2.input_layernorm.weight"])
    # fp8: two shards; the MTP layer in the second, with the head.
    save_sharded(fp8, fp8_dir, ["model.layers.2.input_layernorm.weight"])

    reference(hf, bf16, base / "reference.safetensors")
    reference(fp8_dir, deq, base / "reference-fp8.safetensors")
    if args.no_goldens:
        return

    golden, golden_mlx = args.fixtures / "golden", args.fixtures / "golden-mlx"
    convert(args.llama, hf, golden / "deepseek-v3-bf16.gguf")
    for t in ["Q8_0", "Q4_0", "Q4_K_M"]:
        run([args.quantize, golden / "deepseek-v3-bf16.gguf", golden / f"deepseek-v3-bf16-{t}.gguf", t], stdout=subprocess.DEVNULL)
    # From fp8/ the converter writes the same tensors (hf/ is fp8/ dequantized and rounded as
    # it rounds), so only the unquantized file is kept: the quantized ones differ from the
    # bf16 goldens in general.name alone.
    convert(args.llama, fp8_dir, golden / "deepseek-v3-fp8.gguf")

    for d in ["deepseek-v3-q4", "deepseek-v3-fp8-q4"]:
        if (golden_mlx / d).exists():
            shutil.rmtree(golden_mlx / d)
    run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", hf, "--mlx-path", golden_mlx / "deepseek-v3-q4",
         "-q", "--q-bits", "4", "--q-group-size", "32"])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "fp8"
        copy.mkdir()
        for f in fp8_dir.iterdir():
            if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy(f, copy / f.name)
        kept = {n: t for n, t in fp8.items() if not n.startswith(f"model.layers.{LAYERS}.")}
        save_sharded(kept, copy, ["model.layers.2.input_layernorm.weight"])
        run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", copy, "--mlx-path", golden_mlx / "deepseek-v3-fp8-q4",
             "-q", "--q-bits", "4", "--q-group-size", "64"])
    for d in ["deepseek-v3-q4", "deepseek-v3-fp8-q4"]:
        (golden_mlx / d / "README.md").unlink(missing_ok=True)  # mlx-lm's model card, as for the other goldens
    for f in list(base.rglob("*")) + list(golden.glob("deepseek-v3*")) + list(golden_mlx.rglob("deepseek-v3*/*")):
        if f.is_file():
            f.chmod(0o644)


if __name__ == "__main__":
    main()
