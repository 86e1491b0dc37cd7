#!/usr/bin/env python3
"""Make the GLM-4.7-Flash fixtures (`Glm4MoeLiteForCausalLM`, model_type `glm4_moe_lite`): a tiny
random checkpoint in the released layout, its reference outputs, and what llama.cpp's and
mlx-lm's tools make of it.

    python3 scripts/make_glm4_moe_lite_fixtures.py [--fixtures tests/fixtures]
        [--llama-cpp /work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp]
        [--llama-quantize /work/llama-cache/bin/llama-quantize] [--steps models,goldens,mlx]

Writes:

- `glm4-moe-lite/hf/`: GLM-4.7-Flash's layout: DeepSeek-V3's multi-head latent attention
  (`q_a_proj`, `q_a_layernorm`, `q_b_proj`, `kv_a_proj_with_mqa`, `kv_a_layernorm`,
  `kv_b_proj`, `o_proj`), layer 0 dense (`first_k_dense_replace` 1, transformers' default
  `mlp_layer_types`), then MoE layers with per-expert `mlp.experts.J.{gate,up,down}_proj`, the
  router `mlp.gate.weight` (BF16) and `mlp.gate.e_score_correction_bias` (F32), one shared
  expert; 8 experts in one group (`n_group` 1, `topk_group` 1 as released), top-2,
  `routed_scaling_factor` 1.8, `norm_topk_prob`; `rope_theta` 1e6 without scaling,
  `partial_rotary_factor` 1.0; and the multi-token-prediction layer `model.layers.3.*`
  (`num_nextn_predict_layers` 1): a whole MoE decoder layer plus `eh_proj`, `enorm`, `hnorm`,
  `embed_tokens`, `shared_head.head`, `shared_head.norm`. Two shards with an index, the MTP
  layer in the last one. Two departures from the release's `config.json`, both for the checks:
  `scoring_func` "sigmoid" (transformers always routes by sigmoid; without the key llama.cpp
  routes by softmax unless the model has GLM-4.7-Flash's 47/48 layers and 154880 tokens) and
  `rms_norm_eps` 1e-6 (transformers normalizes the q and kv latents with 1e-6 whatever the
  key, llama.cpp with the key; the release's 1e-5 makes moeq warn).
- `glm4-moe-lite/reference.safetensors`: transformers' float32 forward over the stored bf16
  weights (the MTP layer is not part of it): `tokens`, `logits`, `hidden.0…3`,
  `moe_in.N`/`moe_out.N` for every layer's feed-forward block (layer 0 dense).
- `golden/glm4-moe-lite-bf16.gguf` by llama.cpp's `convert_hf_to_gguf.py` (`Glm4MoeLiteModel`:
  the `deepseek2` architecture, GLM's vocabulary, the MTP layer exported as block 3), with
  `tokenizer.ggml.pre` set to `glm4`, and `-TYPE.gguf` by `llama-quantize` from it.
- `golden-mlx/glm4-moe-lite-q4`, `-q8` by `mlx_lm convert` (which drops the MTP layer).

The tokenizer is the GLM-4.5 fixtures' (`make_glm4_moe_fixtures.build_tokenizer`).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_glm4_moe_fixtures import BPE_SIZE, CONVERTER, TOKENS, build_tokenizer, randomize  # noqa: E402

LAYERS, HIDDEN, EXPERTS, VOCAB = 3, 64, 8, 512


def config() -> dict:
    # The keys of GLM-4.7-Flash's config.json.
    return {
        "architectures": ["Glm4MoeLiteForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "eos_token_id": [BPE_SIZE, BPE_SIZE + 7, BPE_SIZE + 9],
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "kv_lora_rank": 64,
        "max_position_embeddings": 202752,
        "model_type": "glm4_moe_lite",
        "moe_intermediate_size": 32,
        "n_group": 1,
        "n_routed_experts": EXPERTS,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 1,
        "pad_token_id": BPE_SIZE,
        "partial_rotary_factor": 1.0,
        "q_lora_rank": 96,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "routed_scaling_factor": 1.8,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "dtype": "bfloat16",
        "transformers_version": "5.0.0.dev0",
        "use_cache": True,
        "v_head_dim": 32,
        "vocab_size": VOCAB,
    }


def unfuse(t: dict, p: str):
    """transformers 5's fused experts under prefix `p`, back to the released per-expert tensors."""
    gate_up = t.pop(p + "mlp.experts.gate_up_proj")
    down = t.pop(p + "mlp.experts.down_proj")
    inter = gate_up.shape[1] // 2
    for j in range(EXPERTS):
        t[p + f"mlp.experts.{j}.gate_proj.weight"] = gate_up[j, :inter].clone()
        t[p + f"mlp.experts.{j}.up_proj.weight"] = gate_up[j, inter:].clone()
        t[p + f"mlp.experts.{j}.down_proj.weight"] = down[j].clone()


def to_stored(t: dict) -> dict:
    import torch
    return {k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous()
            for k, v in t.items()}


def mtp_tensors(cfg_obj, seed: int) -> dict:
    """The multi-token-prediction layer `model.layers.{LAYERS}.*` as the release stores it."""
    import torch
    from transformers.models.glm4_moe_lite.modeling_glm4_moe_lite import Glm4MoeLiteDecoderLayer

    cfg_obj.mlp_layer_types = list(cfg_obj.mlp_layer_types) + ["sparse"]
    layer = Glm4MoeLiteDecoderLayer(cfg_obj, LAYERS)
    cfg_obj.mlp_layer_types = cfg_obj.mlp_layer_types[:LAYERS]
    randomize(layer, seed)
    g = torch.Generator().manual_seed(seed + 1)
    p = f"model.layers.{LAYERS}."
    t = {p + k: v.detach().clone() for k, v in layer.state_dict().items()}
    unfuse(t, p)
    t[p + "eh_proj.weight"] = torch.randn((HIDDEN, 2 * HIDDEN), generator=g) / (2 * HIDDEN) ** 0.5
    for n in ("enorm", "hnorm", "shared_head.norm"):
        t[p + n + ".weight"] = 1.0 + 0.2 * torch.randn((HIDDEN,), generator=g)
    t[p + "embed_tokens.weight"] = torch.randn((VOCAB, HIDDEN), generator=g)
    t[p + "shared_head.head.weight"] = torch.randn((VOCAB, HIDDEN), generator=g) / HIDDEN ** 0.5
    return to_stored(t)


def save_checkpoint(model, folder: Path, cfg: dict, mtp: dict):
    """The model's tensors (bf16, correction biases F32) in two shards, the MTP layer in the last."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    t = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for n in range(LAYERS):
        if f"model.layers.{n}.mlp.experts.gate_up_proj" in t:
            unfuse(t, f"model.layers.{n}.")
    tensors = to_stored(t)
    names = sorted(tensors)
    parts = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        chunk = {k: tensors[k] for k in part}
        if i == 1:
            chunk.update(mtp)
        save_file(chunk, str(folder / fname), metadata={"format": "pt"})
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
    assert type(model).__name__ == "Glm4MoeLiteForCausalLM", type(model).__name__
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
    from transformers import Glm4MoeLiteConfig, Glm4MoeLiteForCausalLM

    cfg = config()
    folder = fx / "glm4-moe-lite" / "hf"
    shutil.rmtree(folder, ignore_errors=True)
    cfg_obj = Glm4MoeLiteConfig(**{k: v for k, v in cfg.items() if k not in ("dtype", "transformers_version")})
    model = Glm4MoeLiteForCausalLM(cfg_obj)
    randomize(model, 50)
    mtp = mtp_tensors(cfg_obj, 60)
    save_checkpoint(model, folder, cfg, mtp)
    build_tokenizer(folder)
    m = reference(folder, fx / "glm4-moe-lite" / "reference.safetensors")
    assert m.config.mlp_layer_types == ["dense", "sparse", "sparse"], m.config.mlp_layer_types
    assert m.config.rope_interleave and m.config.rope_parameters.get("rope_type", "default") == "default"
    assert m.model.layers[0].self_attn.kv_a_layernorm.variance_epsilon == 1e-6
    print(f"glm4-moe-lite hf: {sorted(p.name for p in folder.iterdir())}")


TYPES = ["Q8_0", "Q4_0", "Q4_K_M", "MXFP4_MOE"]


def make_goldens(fx: Path, llama: str, quantize: str):
    name = "glm4-moe-lite"
    bf16 = fx / "golden" / f"{name}-bf16.gguf"
    args = [str(fx / name / "hf"), "--outfile", str(bf16)]
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
        ("glm4-moe-lite-q4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
        ("glm4-moe-lite-q8", {"quantize": True, "q_bits": 8, "q_group_size": 32}),
    ]
    for name, kw in builds:
        out = fx / "golden-mlx" / name
        shutil.rmtree(out, ignore_errors=True)
        convert(str(fx / "glm4-moe-lite" / "hf"), str(out), **kw)
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
        if f.is_file() and "glm4-moe-lite" in str(f.relative_to(a.fixtures)):
            f.chmod(0o644)


if __name__ == "__main__":
    main()
