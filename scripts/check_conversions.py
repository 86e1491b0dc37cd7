#!/usr/bin/env python3
"""External oracles for moeq's checkpoint conversions (run in CI after `cargo build --release`).

1. gguf-py (llama.cpp's own reader) dequantizes the MXFP4 experts moeq writes to exactly the
   values OpenAI's decoder (gpt_oss/torch/weights.py, re-implemented in numpy below) gives for
   the source blocks and scales, gate = even rows and up = odd rows.
2. gguf-py's Metadata (the converter's) derives the same general.* keys from model cards.
3. llama.cpp (llama-cpp-python) loads every GGUF moeq writes from gpt-oss's three layouts,
   Mixtral, Llama, Qwen3-MoE, Qwen2-MoE, DeepSeek-V3 (FP8 and bf16), GLM-4.5 and MiniMax-M2
   (FP8 and bf16), and its logits for the
   reference tokens match reference.safetensors at
   least as well as those of llama.cpp's own file of the same type (cosine, relative L2, top-1).

4. On wide checkpoints of each family (rows of 256, 8 experts), `moeq convert --type` equals
   llama-quantize of the bf16 GGUF for the k-quant mixes.

Usage: scripts/check_conversions.py [--moeq target/release/moeq] [--fixtures tests/fixtures]
       [--no-llama] [--llama-quantize PATH]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors import safe_open
from safetensors.numpy import load_file

FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def openai_decode(blocks, scales):
    """gpt_oss/torch/weights.py::Checkpoint._get_mxfp4_tensor, in numpy (f32)."""
    *prefix, g, b = blocks.shape
    out = np.empty((*prefix, g, b * 2), dtype=np.float32)
    out[..., 0::2] = FP4[blocks & 0x0F]
    out[..., 1::2] = FP4[blocks >> 4]
    out = np.ldexp(out, (scales.astype(np.int32) - 127)[..., None])
    return out.reshape(*prefix, g * b * 2)


def tensors(path):
    reader = GGUFReader(path)
    return {t.name: t for t in reader.tensors}


def check_mxfp4_experts(gguf_path, original):
    with safe_open(str(original / "model.safetensors"), "np") as f:  # only the U8 tensors: numpy has no bf16
        src = {k: f.get_tensor(k) for k in f.keys() if k.endswith((".blocks", ".scales"))}
    ours = tensors(gguf_path)
    n_layer = json.loads((original / "config.json").read_text())["num_hidden_layers"]
    checked = 0
    for n in range(n_layer):
        mlp1 = openai_decode(src[f"block.{n}.mlp.mlp1_weight.blocks"], src[f"block.{n}.mlp.mlp1_weight.scales"])
        mlp2 = openai_decode(src[f"block.{n}.mlp.mlp2_weight.blocks"], src[f"block.{n}.mlp.mlp2_weight.scales"])
        for name, want in [("gate", mlp1[:, 0::2]), ("up", mlp1[:, 1::2]), ("down", mlp2)]:
            t = ours[f"blk.{n}.ffn_{name}_exps.weight"]
            got = dequantize(t.data, t.tensor_type).reshape(want.shape)
            if not np.array_equal(got, want):
                sys.exit(f"{gguf_path}: blk.{n}.ffn_{name}_exps differs from OpenAI's decoding "
                         f"(max |diff| {np.abs(got - want).max()})")
            checked += 1
    print(f"gguf-py dequantizes {checked} MXFP4 expert tensors of {gguf_path.name} exactly to OpenAI's values")


CARDS = [
    "---\nlicense: apache-2.0\npipeline_tag: text-generation\nlibrary_name: transformers\ntags:\n- vllm\n---\n# x\n",
    "---\nbase_model: openai/gpt-oss-20b\nlicense: mit\nlanguage:\n- en\n- fr\ntags: [a, b]\n---\n",
    "---\nbase_model:\n- openai/gpt-oss-120b\n- https://huggingface.co/openai/gpt-oss-20b\nmodel_name: My Model\n---\n",
]


def check_general_metadata(moeq, fixture, tmp):
    """moeq's general.* keys equal what gguf-py's Metadata (the converter's) derives for
    model folders with model cards, generation configs and telling names."""
    import shutil
    import gguf
    from gguf import GGUFReader, GGUFWriter, Metadata
    from gguf.gguf_writer import GGUFValueType
    folders = ["gpt-oss-20b", "My-Finetune-v2-8x7B-Instruct", "hf-mxfp4"]
    for i, (folder, card) in enumerate(zip(folders, CARDS)):
        d = Path(tmp) / f"card{i}" / folder
        shutil.copytree(fixture, d)
        (d / "README.md").write_text(card)
        (d / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_k": 40, "top_p": 0.9,
                                                              "penalty_repeat": 1.1}))
        out = Path(tmp) / f"card{i}.gguf"
        subprocess.run([moeq, "convert", str(d), "-o", str(out), "-q"], check=True, stderr=subprocess.DEVNULL)
        r = GGUFReader(out)
        total = sum(int(np.prod(t.shape)) for t in r.tensors)
        ours = [(k, f.contents()) for k, f in r.fields.items()
                if k.startswith("general.") and k not in ("general.architecture", "general.type",
                                                          "general.file_type", "general.quantization_version",
                                                          "general.size_label")]
        md = Metadata.load(None, d, None, total)
        if md.name is None:
            md.name = d.name
        w = GGUFWriter(path=None, arch="gpt-oss")
        md.size_label = None
        md.set_gguf_meta_model(w)
        theirs = [(k, v.value) for k, v in w.kv_data[0].items() if k.startswith("general.") and k not in
                  ("general.architecture", "general.size_label")]
        norm = lambda kv: [(k, [round(x, 6) for x in v] if isinstance(v, list) and v and isinstance(v[0], float)
                            else round(v, 6) if isinstance(v, float) else v) for k, v in kv]
        if norm(ours) != norm(theirs):
            sys.exit(f"{folder}: general metadata differs from gguf-py's:\n ours   {ours}\n theirs {theirs}")
    print(f"general.* metadata equals gguf-py's Metadata for {len(folders)} model folders with model cards")


def write_safetensors(path, tensors):
    """A safetensors file of bf16 tensors (numpy has no bf16: the f32 values' top halves)."""
    header, blobs, offset = {}, [], 0
    for name, x in tensors:
        data = (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(x.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for b in blobs:
            f.write(b)


def write_hf_checkpoint(folder, fixture, experts, rng):
    """A Llama (or, with experts, Mixtral) checkpoint with rows that are multiples of 256, so
    the k-quant mixes apply; the fixture's tokenizer and config as a template."""
    import shutil
    shutil.copytree(fixture, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    hidden, ffn, heads, kv, vocab = 512, 768, 8, 2, 512
    hd = hidden // heads
    config = json.loads((fixture / "config.json").read_text())
    config.update({"hidden_size": hidden, "intermediate_size": ffn, "num_attention_heads": heads,
                   "num_key_value_heads": kv, "head_dim": hd, "num_hidden_layers": 2, "tie_word_embeddings": False})
    if experts:
        config["num_local_experts"] = experts
    (folder / "config.json").write_text(json.dumps(config))

    def w(*shape):
        x = rng.standard_normal(shape).astype(np.float32) * 0.02
        x[..., ::97] *= 30
        return x

    t = [("model.embed_tokens.weight", w(vocab, hidden)), ("lm_head.weight", w(vocab, hidden)),
         ("model.norm.weight", np.ones(hidden, np.float32))]
    for n in range(2):
        l = f"model.layers.{n}."
        t += [(l + "input_layernorm.weight", np.ones(hidden, np.float32)),
              (l + "post_attention_layernorm.weight", np.ones(hidden, np.float32)),
              (l + "self_attn.q_proj.weight", w(heads * hd, hidden)), (l + "self_attn.k_proj.weight", w(kv * hd, hidden)),
              (l + "self_attn.v_proj.weight", w(kv * hd, hidden)), (l + "self_attn.o_proj.weight", w(hidden, heads * hd))]
        if experts:
            t.append((l + "block_sparse_moe.gate.weight", w(experts, hidden)))
            for j in range(experts):
                e = l + f"block_sparse_moe.experts.{j}."
                t += [(e + "w1.weight", w(ffn, hidden)), (e + "w2.weight", w(hidden, ffn)), (e + "w3.weight", w(ffn, hidden))]
        else:
            t += [(l + "mlp.gate_proj.weight", w(ffn, hidden)), (l + "mlp.up_proj.weight", w(ffn, hidden)),
                  (l + "mlp.down_proj.weight", w(hidden, ffn))]
    write_safetensors(folder / "model.safetensors", t)


def write_qwen_checkpoint(folder, fixture, rng):
    """A Qwen3-MoE or Qwen2-MoE checkpoint (as its fixture's config says) with rows that are
    multiples of 256 and 8 experts, so the k-quant mixes and their 8-expert rules apply; the
    fixture's tokenizer and config as a template."""
    import shutil
    shutil.copytree(fixture, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    config = json.loads((fixture / "config.json").read_text())
    qwen3 = config["architectures"][0] == "Qwen3MoeForCausalLM"
    hidden, heads, kv, experts, ffn, vocab = 512, 8, 2, 8, 256, config["vocab_size"]
    hd = 128 if qwen3 else hidden // heads
    config.update({"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv,
                   "num_hidden_layers": 2, "num_experts": experts, "moe_intermediate_size": ffn,
                   "intermediate_size": 1024})
    if qwen3:
        config["head_dim"] = hd
    else:
        config["shared_expert_intermediate_size"] = 768
    (folder / "config.json").write_text(json.dumps(config))

    def w(*shape):
        x = rng.standard_normal(shape).astype(np.float32) * 0.02
        x[..., ::97] *= 30
        return x

    ones = lambda n: np.ones(n, np.float32)
    t = [("model.embed_tokens.weight", w(vocab, hidden)), ("lm_head.weight", w(vocab, hidden)),
         ("model.norm.weight", ones(hidden))]
    for n in range(2):
        l = f"model.layers.{n}."
        t += [(l + "input_layernorm.weight", ones(hidden)), (l + "post_attention_layernorm.weight", ones(hidden)),
              (l + "self_attn.q_proj.weight", w(heads * hd, hidden)), (l + "self_attn.k_proj.weight", w(kv * hd, hidden)),
              (l + "self_attn.v_proj.weight", w(kv * hd, hidden)), (l + "self_attn.o_proj.weight", w(hidden, heads * hd)),
              (l + "mlp.gate.weight", w(experts, hidden))]
        if qwen3:
            t += [(l + "self_attn.q_norm.weight", ones(hd)), (l + "self_attn.k_norm.weight", ones(hd))]
        else:
            t += [(l + "self_attn.q_proj.bias", w(heads * hd)), (l + "self_attn.k_proj.bias", w(kv * hd)),
                  (l + "self_attn.v_proj.bias", w(kv * hd)), (l + "mlp.shared_expert_gate.weight", w(1, hidden)),
                  (l + "mlp.shared_expert.gate_proj.weight", w(768, hidden)),
                  (l + "mlp.shared_expert.up_proj.weight", w(768, hidden)),
                  (l + "mlp.shared_expert.down_proj.weight", w(hidden, 768))]
        for j in range(experts):
            e = l + f"mlp.experts.{j}."
            t += [(e + "gate_proj.weight", w(ffn, hidden)), (e + "up_proj.weight", w(ffn, hidden)),
                  (e + "down_proj.weight", w(hidden, ffn))]
    write_safetensors(folder / "model.safetensors", t)


def write_glm_checkpoint(folder, fixture, rng):
    """A GLM-4.5 MoE checkpoint with rows that are multiples of 256: layer 0 dense, layers 1-2
    MoE with 8 experts in 4 groups and a shared expert, q/k/v biases, and the
    multi-token-prediction layer 3 with its nextn tensors (GLM-4.5-Air's layout); the fixture's
    tokenizer and config as a template."""
    import shutil
    shutil.copytree(fixture, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    config = json.loads((fixture / "config.json").read_text())
    hidden, heads, kv, hd, experts, ffn, vocab = 512, 8, 2, 128, 8, 256, config["vocab_size"]
    config.update({"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
                   "num_hidden_layers": 3, "n_routed_experts": experts, "moe_intermediate_size": ffn,
                   "intermediate_size": 1024})
    (folder / "config.json").write_text(json.dumps(config))

    def w(*shape):
        x = rng.standard_normal(shape).astype(np.float32) * 0.02
        x[..., ::97] *= 30
        return x

    ones = lambda n: np.ones(n, np.float32)
    t = [("model.embed_tokens.weight", w(vocab, hidden)), ("lm_head.weight", w(vocab, hidden)),
         ("model.norm.weight", ones(hidden))]
    for n in range(4):
        l = f"model.layers.{n}."
        t += [(l + "input_layernorm.weight", ones(hidden)), (l + "post_attention_layernorm.weight", ones(hidden)),
              (l + "self_attn.q_proj.weight", w(heads * hd, hidden)), (l + "self_attn.k_proj.weight", w(kv * hd, hidden)),
              (l + "self_attn.v_proj.weight", w(kv * hd, hidden)), (l + "self_attn.o_proj.weight", w(hidden, heads * hd)),
              (l + "self_attn.q_proj.bias", w(heads * hd)), (l + "self_attn.k_proj.bias", w(kv * hd)),
              (l + "self_attn.v_proj.bias", w(kv * hd))]
        if n == 0:
            t += [(l + "mlp.gate_proj.weight", w(1024, hidden)), (l + "mlp.up_proj.weight", w(1024, hidden)),
                  (l + "mlp.down_proj.weight", w(hidden, 1024))]
            continue
        t += [(l + "mlp.gate.weight", w(experts, hidden)), (l + "mlp.gate.e_score_correction_bias", w(experts)),
              (l + "mlp.shared_experts.gate_proj.weight", w(ffn, hidden)),
              (l + "mlp.shared_experts.up_proj.weight", w(ffn, hidden)),
              (l + "mlp.shared_experts.down_proj.weight", w(hidden, ffn))]
        for j in range(experts):
            e = l + f"mlp.experts.{j}."
            t += [(e + "gate_proj.weight", w(ffn, hidden)), (e + "up_proj.weight", w(ffn, hidden)),
                  (e + "down_proj.weight", w(hidden, ffn))]
        if n == 3:
            t += [(l + "eh_proj.weight", w(hidden, 2 * hidden)), (l + "enorm.weight", ones(hidden)),
                  (l + "hnorm.weight", ones(hidden)), (l + "embed_tokens.weight", w(vocab, hidden)),
                  (l + "shared_head.head.weight", w(vocab, hidden)), (l + "shared_head.norm.weight", ones(hidden))]
    write_safetensors(folder / "model.safetensors", t)


def write_minimax_checkpoint(folder, fixture, rng):
    """A MiniMax-M2 checkpoint with rows that are multiples of 256: 2 layers of 8 experts
    (`block_sparse_moe.experts.J.w1/w2/w3`), whole-projection q/k norms, 8 heads of 128 with
    64 rotated, 2 KV heads, in BF16 (the FP8 release's BF16 form); the fixture's tokenizer and
    config as a template."""
    import shutil
    shutil.copytree(fixture, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    config = json.loads((fixture / "config.json").read_text())
    hidden, heads, kv, hd, experts, ffn, vocab = 512, 8, 2, 128, 8, 256, config["vocab_size"]
    config.update({"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
                   "rotary_dim": 64, "num_hidden_layers": 2, "num_local_experts": experts, "intermediate_size": ffn,
                   "attn_type_list": [1, 1]})
    (folder / "config.json").write_text(json.dumps(config))

    def w(*shape):
        x = rng.standard_normal(shape).astype(np.float32) * 0.02
        x[..., ::97] *= 30
        return x

    ones = lambda n: np.ones(n, np.float32)
    t = [("model.embed_tokens.weight", w(vocab, hidden)), ("lm_head.weight", w(vocab, hidden)),
         ("model.norm.weight", ones(hidden))]
    for n in range(2):
        l = f"model.layers.{n}."
        t += [(l + "input_layernorm.weight", ones(hidden)), (l + "post_attention_layernorm.weight", ones(hidden)),
              (l + "self_attn.q_proj.weight", w(heads * hd, hidden)), (l + "self_attn.k_proj.weight", w(kv * hd, hidden)),
              (l + "self_attn.v_proj.weight", w(kv * hd, hidden)), (l + "self_attn.o_proj.weight", w(hidden, heads * hd)),
              (l + "self_attn.q_norm.weight", ones(heads * hd)), (l + "self_attn.k_norm.weight", ones(kv * hd)),
              (l + "block_sparse_moe.gate.weight", w(experts, hidden)),
              (l + "block_sparse_moe.e_score_correction_bias", w(experts))]
        for j in range(experts):
            e = l + f"block_sparse_moe.experts.{j}."
            t += [(e + "w1.weight", w(ffn, hidden)), (e + "w2.weight", w(hidden, ffn)), (e + "w3.weight", w(ffn, hidden))]
    write_safetensors(folder / "model.safetensors", t)


def check_kquant_mixes(moeq, fx, tmp, llama_quantize=None):
    """On Llama-, Mixtral-, Qwen3-MoE-, Qwen2-MoE-, GLM-4.5- and MiniMax-M2-shaped checkpoints with realistic widths,
    `moeq convert --type T` from the safetensors equals llama-quantize T of the bf16 GGUF, byte
    for byte (k-quant mixes, the 8-expert attn_v/attn_k bumps, ffn_down getting more bits, the
    shared expert, trailing unit dimensions dropped). llama-quantize is llama-cpp-python's
    `llama_model_quantize`, or the `llama_quantize` binary when given."""
    ftypes = {"Q4_K_M": 15, "Q4_K_S": 14, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}
    if llama_quantize:
        def quantize(src, dst, name, ftype):
            subprocess.run([llama_quantize, str(src), str(dst), name, "2"], check=True, capture_output=True)
    else:
        import ctypes
        import llama_cpp
        quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))

        def quantize(src, dst, name, ftype):
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = 2
            assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    rng = np.random.default_rng(11)
    for family, experts in (("llama", 0), ("mixtral", 8), ("qwen3-moe", 8), ("qwen2-moe", 8), ("glm4-moe", 8),
                            ("minimax-m2", 8)):
        folder = Path(tmp) / f"{family}-wide"
        if family.startswith("qwen"):
            write_qwen_checkpoint(folder, fx / family / "hf", rng)
        elif family == "glm4-moe":
            write_glm_checkpoint(folder, fx / family / "hf", rng)
        elif family == "minimax-m2":
            write_minimax_checkpoint(folder, fx / family / "hf", rng)
        else:
            write_hf_checkpoint(folder, fx / family / "hf", experts, rng)
        bf16 = Path(tmp) / f"{family}-wide-bf16.gguf"
        subprocess.run([moeq, "convert", str(folder), "-o", str(bf16), "-q"], check=True, stderr=subprocess.DEVNULL)
        for name, ftype in ftypes.items():
            ours, theirs = Path(tmp) / "ours.gguf", Path(tmp) / "theirs.gguf"
            subprocess.run([moeq, "convert", str(folder), "-o", str(ours), "--type", name, "-q"], check=True,
                           stderr=subprocess.DEVNULL)
            quantize(bf16, theirs, name, ftype)
            if ours.read_bytes() != theirs.read_bytes():
                sys.exit(f"FAIL {family} {name}: moeq convert --type differs from convert + llama-quantize")
            types = sorted({t.tensor_type.name for t in GGUFReader(ours).tensors})
            print(f"ok   {family}-shaped (hidden 512{', 8 experts' if experts else ''}) {name:7} = llama-quantize "
                  f"byte for byte ({', '.join(types)})")


def logits_of(gguf_path, tokens):
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf_path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, n_batch=64)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def agreement(got, ref):
    cos = float((got * ref).sum() / np.sqrt((got * got).sum() * (ref * ref).sum()))
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    top1 = int((got.argmax(-1) == ref.argmax(-1)).sum())
    return cos, rel, top1


def check_trained_moe(moeq, fx, tmp):
    """The trained MoE (tests/fixtures/trained-moe, scripts/train_moe.py) has no llama.cpp golden:
    llama.cpp's converter stops at its tokenizer, a byte-level BPE with GPT-2's pre-tokenization
    whose check hash its table lacks. moeq converts it with `--tokenizer-pre gpt-2`; llama.cpp
    must then tokenize the reference sentence as transformers did and reproduce transformers'
    logits (BF16: to float accuracy, same top token everywhere; Q8_0: close). Returns failures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_moe import REFERENCE_TEXT
    from llama_cpp import Llama
    ref = load_file(str(fx / "trained-moe/reference.safetensors"))
    tokens, ref_logits = [int(t) for t in ref["tokens"]], ref["logits"].astype(np.float64)
    failures = 0
    for ftype, max_rel in ((None, 5e-3), ("Q8_0", 2e-2)):
        out = Path(tmp) / f"trained-moe-{ftype or 'default'}.gguf"
        cmd = [moeq, "convert", str(fx / "trained-moe/hf"), "-o", str(out), "-q", "--tokenizer-pre", "gpt-2"]
        if ftype:
            cmd += ["--type", ftype]
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
        ids = llm.tokenize(REFERENCE_TEXT.encode(), add_bos=False, special=False)
        llm.close()
        cos, rel, top1 = agreement(logits_of(out, tokens), ref_logits)
        ok = ids == tokens and rel <= max_rel and top1 == len(tokens)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} trained-moe/hf   {ftype or 'default':10} cosine {cos:.6f} rel-L2 {rel:.4f} "
              f"top-1 {top1}/{len(tokens)}, llama.cpp's tokens {'equal' if ids == tokens else 'differ'} "
              f"(limit rel-L2 {max_rel})")
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moeq", default="target/release/moeq")
    ap.add_argument("--fixtures", default="tests/fixtures")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp logits check")
    ap.add_argument("--llama-quantize", help="the llama-quantize binary for the whole-file k-quant checks "
                    "(default: llama-cpp-python's llama_model_quantize; given, they run without it)")
    args = ap.parse_args()
    fx = Path(args.fixtures)
    refs = {}
    for family in ("gpt-oss", "mixtral", "llama", "qwen3-moe", "qwen2-moe", "deepseek-v3", "glm4-moe", "glm4-moe-lite",
                   "minimax-m2"):
        ref = load_file(str(fx / family / "reference.safetensors"))
        refs[family] = ([int(t) for t in ref["tokens"]], ref["logits"].astype(np.float64))
    ref = load_file(str(fx / "glm4-moe/reference-qknorm.safetensors"))
    refs["glm4-moe/hf-qknorm"] = ([int(t) for t in ref["tokens"]], ref["logits"].astype(np.float64))

    # (input folder, --type, golden of the same type to beat)
    cases = [
        ("gpt-oss/original", None, "gpt-oss-mxfp4.gguf"),
        ("gpt-oss/hf-mxfp4", None, "gpt-oss-mxfp4.gguf"),
        ("gpt-oss/hf-bf16", None, "gpt-oss-bf16.gguf"),
        ("gpt-oss/hf-mxfp4", "MXFP4_MOE", "gpt-oss-mxfp4-MXFP4_MOE.gguf"),
        ("gpt-oss/hf-bf16", "MXFP4_MOE", "gpt-oss-bf16-MXFP4_MOE.gguf"),
        ("gpt-oss/hf-mxfp4", "Q8_0", "gpt-oss-bf16-Q8_0.gguf"),
        ("gpt-oss/original", "Q8_0", "gpt-oss-bf16-Q8_0.gguf"),
        ("gpt-oss/hf-bf16", "Q8_0", "gpt-oss-bf16-Q8_0.gguf"),
        ("gpt-oss/hf-mxfp4", "Q4_0", "gpt-oss-bf16-Q4_0.gguf"),
        ("gpt-oss/hf-bf16", "F16", "gpt-oss-bf16.gguf"),
        ("mixtral/hf", None, "mixtral-bf16.gguf"),
        ("mixtral/hf", "Q8_0", "mixtral-bf16-Q8_0.gguf"),
        ("mixtral/hf", "Q4_0", "mixtral-bf16-Q4_0.gguf"),
        ("mixtral/hf", "F16", "mixtral-bf16.gguf"),
        ("llama/hf", None, "llama-bf16.gguf"),
        ("llama/hf", "Q8_0", "llama-bf16-Q8_0.gguf"),
        ("llama/hf", "Q4_0", "llama-bf16-Q4_0.gguf"),
        ("llama/hf", "F16", "llama-bf16.gguf"),
        ("qwen3-moe/hf", None, "qwen3-moe-bf16.gguf"),
        ("qwen3-moe/hf", "Q8_0", "qwen3-moe-bf16-Q8_0.gguf"),
        ("qwen3-moe/hf", "Q4_0", "qwen3-moe-bf16-Q4_0.gguf"),
        ("qwen3-moe/hf", "Q4_K_M", "qwen3-moe-bf16-Q4_K_M.gguf"),
        ("qwen3-moe/hf", "MXFP4_MOE", "qwen3-moe-bf16-MXFP4_MOE.gguf"),
        ("qwen3-moe/hf", "F16", "qwen3-moe-bf16.gguf"),
        ("qwen2-moe/hf", None, "qwen2-moe-bf16.gguf"),
        ("qwen2-moe/hf", "Q8_0", "qwen2-moe-bf16-Q8_0.gguf"),
        ("qwen2-moe/hf", "Q4_0", "qwen2-moe-bf16-Q4_0.gguf"),
        ("qwen2-moe/hf", "Q4_K_M", "qwen2-moe-bf16-Q4_K_M.gguf"),
        ("qwen2-moe/hf", "MXFP4_MOE", "qwen2-moe-bf16-MXFP4_MOE.gguf"),
        ("qwen2-moe/hf", "F16", "qwen2-moe-bf16.gguf"),
        # DeepSeek-V3 from the FP8 release and from its bf16 cast (the same bf16 values).
        ("deepseek-v3/hf", None, "deepseek-v3-bf16.gguf"),
        ("deepseek-v3/hf", "Q8_0", "deepseek-v3-bf16-Q8_0.gguf"),
        ("deepseek-v3/hf", "Q4_0", "deepseek-v3-bf16-Q4_0.gguf"),
        ("deepseek-v3/hf", "Q4_K_M", "deepseek-v3-bf16-Q4_K_M.gguf"),
        ("deepseek-v3/fp8", None, "deepseek-v3-fp8.gguf"),
        ("deepseek-v3/fp8", "Q8_0", "deepseek-v3-bf16-Q8_0.gguf"),
        ("deepseek-v3/fp8", "Q4_0", "deepseek-v3-bf16-Q4_0.gguf"),
        ("deepseek-v3/fp8", "Q4_K_M", "deepseek-v3-bf16-Q4_K_M.gguf"),
        ("deepseek-v3/fp8", "F32", "deepseek-v3-fp8.gguf"),
        # GLM-4.5 (its MTP layer exported as an extra block, which llama.cpp loads and does not
        # run in the main graph) and GLM-4.6's form (q/k norms).
        ("glm4-moe/hf", None, "glm4-moe-bf16.gguf"),
        ("glm4-moe/hf", "Q8_0", "glm4-moe-bf16-Q8_0.gguf"),
        ("glm4-moe/hf", "Q4_0", "glm4-moe-bf16-Q4_0.gguf"),
        ("glm4-moe/hf", "Q4_K_M", "glm4-moe-bf16-Q4_K_M.gguf"),
        ("glm4-moe/hf", "MXFP4_MOE", "glm4-moe-bf16-MXFP4_MOE.gguf"),
        ("glm4-moe/hf", "F16", "glm4-moe-bf16.gguf"),
        ("glm4-moe/hf-qknorm", None, "glm4-moe-qknorm-bf16.gguf"),
        ("glm4-moe/hf-qknorm", "Q8_0", "glm4-moe-qknorm-bf16-Q8_0.gguf"),
        ("glm4-moe/hf-qknorm", "Q4_K_M", "glm4-moe-qknorm-bf16-Q4_K_M.gguf"),
        # GLM-4.7-Flash: deepseek2 with GLM's vocabulary, its MTP layer exported as block 3.
        ("glm4-moe-lite/hf", None, "glm4-moe-lite-bf16.gguf"),
        ("glm4-moe-lite/hf", "Q8_0", "glm4-moe-lite-bf16-Q8_0.gguf"),
        ("glm4-moe-lite/hf", "Q4_0", "glm4-moe-lite-bf16-Q4_0.gguf"),
        ("glm4-moe-lite/hf", "Q4_K_M", "glm4-moe-lite-bf16-Q4_K_M.gguf"),
        ("glm4-moe-lite/hf", "MXFP4_MOE", "glm4-moe-lite-bf16-MXFP4_MOE.gguf"),
        # MiniMax-M2 from its BF16 form and its FP8 release (decoded and rounded to BF16 as the
        # converter does, so against the same reference and goldens).
        ("minimax-m2/hf", None, "minimax-m2-bf16.gguf"),
        ("minimax-m2/hf", "Q8_0", "minimax-m2-bf16-Q8_0.gguf"),
        ("minimax-m2/hf", "Q4_0", "minimax-m2-bf16-Q4_0.gguf"),
        ("minimax-m2/hf", "Q4_K_M", "minimax-m2-bf16-Q4_K_M.gguf"),
        ("minimax-m2/hf", "MXFP4_MOE", "minimax-m2-bf16-MXFP4_MOE.gguf"),
        ("minimax-m2/fp8", None, "minimax-m2-fp8.gguf"),
        ("minimax-m2/fp8", "Q4_K_M", "minimax-m2-bf16-Q4_K_M.gguf"),
        ("minimax-m2/fp8", "MXFP4_MOE", "minimax-m2-bf16-MXFP4_MOE.gguf"),
    ]
    golden_scores = {}
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        check_general_metadata(args.moeq, fx / "gpt-oss/hf-mxfp4", tmp)
        for layout, ftype, golden in cases:
            out = Path(tmp) / f"{layout.replace('/', '-')}-{ftype or 'default'}.gguf"
            cmd = [args.moeq, "convert", str(fx / layout), "-o", str(out), "-q"]
            if ftype:
                cmd += ["--type", ftype]
            subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
            if layout in ("gpt-oss/original", "gpt-oss/hf-mxfp4"):
                check_mxfp4_experts(out, fx / "gpt-oss/original")
            if args.no_llama:
                continue
            tokens, ref_logits = refs.get(layout, refs.get(layout.split("/")[0]))
            if golden not in golden_scores:
                golden_scores[golden] = agreement(logits_of(fx / "golden" / golden, tokens), ref_logits)
            cos, rel, top1 = agreement(logits_of(out, tokens), ref_logits)
            gcos, grel, gtop1 = golden_scores[golden]
            ok = cos >= gcos - 1e-6 and rel <= grel + 1e-6 and top1 >= gtop1
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {layout:16} {ftype or 'default':10} cosine {cos:.6f} rel-L2 {rel:.4f} "
                  f"top-1 {top1}/{len(tokens)}   (golden {golden}: {gcos:.6f} {grel:.4f} {gtop1}/{len(tokens)})")
        if not args.no_llama:
            failures += check_trained_moe(args.moeq, fx, tmp)
        if not args.no_llama or args.llama_quantize:
            check_kquant_mixes(args.moeq, fx, tmp, args.llama_quantize)
    if failures:
        sys.exit(f"{failures} conversions do worse than llama.cpp's own files")


if __name__ == "__main__":
    main()
