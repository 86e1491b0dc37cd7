#!/usr/bin/env python3
"""Compare the metadata moeq writes with what llama.cpp's own converter writes.

For each case a small checkpoint folder is built (tiny random weights of the family's shape,
a config.json like a released model's, tokenizer files taken from the fixtures or from real
tokenizers and then edited), converted by llama.cpp's `convert_hf_to_gguf.py` (run from its
source tree with its vendored gguf-py) and by `moeq convert`, and every metadata key of the
two GGUFs is compared (name, order, GGUF type, value), byte for byte as gguf-py reads them.

    python3 scripts/compare_converter.py --moeq target/release/moeq \
        [--llama-cpp /path/to/llama.cpp] [--tokenizers DIR] [--only NAME] [--keep DIR] [--show]
    python3 scripts/compare_converter.py --write-expected     # tests/fixtures/vocab/*.gguf

The cases are tests/fixtures/vocab/cases.json (which the CLI tests build too), plus real
Llama 3 tokenizers (--tokenizers).

Needs: torch, transformers, sentencepiece, safetensors, numpy (the converter's requirements).

Two changes are made to the converter while it runs, both printed with the results:
- A pre-tokenizer hash its table does not know stops the converter; here it writes the
  family's name instead (what moeq falls back to, with a warning), as when the goldens in
  tests/fixtures/golden were made. The hash it computed is printed (`chkhsh`).
- `tokenizer.chat_templates` (the names of several chat templates) is built from a Python set
  and its order changes from run to run; it is compared as a set.

`--tokenizers DIR` is a folder with real tokenizers (scripts/fetch_tokenizers.sh makes it);
without it the cases that need them are skipped (and said so).
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FX = ROOT / "tests" / "fixtures"
DEFAULT_LLAMA_CPP = "/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"

# Runs llama.cpp's converter with an unknown pre-tokenizer hash mapped to $MOEQ_FALLBACK_PRE.
RUNNER = r"""
import os, runpy, sys
root = os.environ["LLAMA_CPP"]
sys.path.insert(0, root)
sys.path.insert(1, os.path.join(root, "gguf-py"))
import conversion.base as base
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return os.environ["MOEQ_FALLBACK_PRE"]
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[1:]
runpy.run_path(os.path.join(root, "convert_hf_to_gguf.py"), run_name="__main__")
"""


# ---------------------------------------------------------------------------------------------
# Checkpoints


def llama_config(**over):
    """A tiny Llama config; `over` replaces keys (None deletes)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "model_type": "llama",
    }
    return edit(cfg, over)


def mixtral_config(**over):
    cfg = llama_config(architectures=["MixtralForCausalLM"], model_type="mixtral", intermediate_size=96)
    cfg.update(num_local_experts=4, num_experts_per_tok=2)
    return edit(cfg, over)


def edit(cfg, over):
    for k, v in over.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def write_weights(folder, cfg):
    """Random bf16 weights of the shapes a Llama or Mixtral config gives."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    h, v, n_layer = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hd = cfg.get("head_dim") or h // n_head
    ff = cfg["intermediate_size"]

    def t(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    w = {"model.embed_tokens.weight": t(v, h), "model.norm.weight": t(h)}
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = t(v, h)
    for i in range(n_layer):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = t(h)
        w[p + "post_attention_layernorm.weight"] = t(h)
        w[p + "self_attn.q_proj.weight"] = t(n_head * hd, h)
        w[p + "self_attn.k_proj.weight"] = t(n_kv * hd, h)
        w[p + "self_attn.v_proj.weight"] = t(n_kv * hd, h)
        w[p + "self_attn.o_proj.weight"] = t(h, n_head * hd)
        if "num_local_experts" in cfg:
            w[p + "block_sparse_moe.gate.weight"] = t(cfg["num_local_experts"], h)
            for e in range(cfg["num_local_experts"]):
                q = f"{p}block_sparse_moe.experts.{e}."
                w[q + "w1.weight"] = t(ff, h)
                w[q + "w2.weight"] = t(h, ff)
                w[q + "w3.weight"] = t(ff, h)
        else:
            w[p + "mlp.gate_proj.weight"] = t(ff, h)
            w[p + "mlp.up_proj.weight"] = t(ff, h)
            w[p + "mlp.down_proj.weight"] = t(h, ff)
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})


def checkpoint(folder, cfg, tokenizer_from=None, files=(), extra=None):
    """A checkpoint folder: `cfg`, weights, `files` copied from the fixture folder
    `tokenizer_from`, and `extra` (name -> text, bytes or JSON) written."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    write_weights(folder, cfg)
    for f in files:
        shutil.copy(pathlib.Path(tokenizer_from) / f, folder / f)
    for name, content in (extra or {}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False))


def gpt_oss_checkpoint(folder, **over):
    """The hf-bf16 fixture's weights with its config edited (keys that keep the shapes)."""
    src = FX / "gpt-oss" / "hf-bf16"
    folder.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json":
            shutil.copy(f, folder / f.name)
    cfg = json.loads((src / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(cfg, over), indent=2))


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


def merge(into, patch):
    """Recursive merge of JSON objects (null deletes a key)."""
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def file_content(spec):
    """A file of a case: text, {"json": V}, or an edited fixture JSON file."""
    if isinstance(spec, str):
        return spec
    if "json" in spec:
        return spec["json"]
    data = read_json(FX / spec["from"])
    merge(data, spec.get("merge", {}))
    for k, items in spec.get("append", {}).items():
        data.setdefault(k, []).extend(items)
    for k in spec.get("set_null", []):
        data[k] = None
    return data


def build_case(folder, case):
    """The checkpoint folder of a case of tests/fixtures/vocab/cases.json."""
    family = case["family"]
    over = case.get("config", {})
    if family == "gpt-oss":
        gpt_oss_checkpoint(folder, **over)
        extra = {pathlib.Path(f).name: (FX / f).read_bytes() for f in case.get("copy", [])}
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            extra.setdefault(f, (FX / "gpt-oss" / "hf-bf16" / f).read_bytes())
        for name, content in extra.items():
            (folder / name).write_bytes(content)
    else:
        cfg = (mixtral_config if family == "mixtral" else llama_config)(**over)
        files = {pathlib.Path(f).name: (FX / f).read_bytes() for f in case.get("copy", [])}
        checkpoint(folder, cfg, extra=files)
    for name, spec in case.get("files", {}).items():
        content = file_content(spec)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False))


SPEC = json.loads((FX / "vocab" / "cases.json").read_text())
CASES = []  # (name, fallback pre, build(folder, tokenizers), needs real tokenizers)
for c in SPEC["cases"]:
    CASES.append((c["name"], "gpt-4o" if c["family"] == "gpt-oss" else "llama-bpe",
                  (lambda c: lambda d, _t: build_case(d, c))(c), False))


def case(name, pre="llama-bpe", needs_tokenizers=False):
    def register(build):
        CASES.append((name, pre, build, needs_tokenizers))
        return build

    return register


LLAMA3 = dict(bos_token_id=509, eos_token_id=510, max_position_embeddings=8192, rms_norm_eps=1e-05,
              rope_scaling=None, rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False,
              attention_dropout=0.0, pretraining_tp=1)


# 16: real tokenizers (scripts/fetch_tokenizers.sh).
def real_llama3(d, tokenizers, name, with_config):
    src = pathlib.Path(tokenizers) / name
    files = ["tokenizer.json"] + (["tokenizer_config.json"] if with_config and (src / "tokenizer_config.json").exists() else [])
    tok = read_json(src / "tokenizer.json")
    n_vocab = 1 + max([*tok["model"]["vocab"].values(), *(a["id"] for a in tok["added_tokens"])])
    cfg = llama_config(**dict(LLAMA3, vocab_size=n_vocab, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                              num_key_value_heads=1, num_hidden_layers=1, bos_token_id=128000, eos_token_id=128001))
    checkpoint(d, cfg, src, files)


@case("real-llama3-april-2024", needs_tokenizers=True)
def _(d, t):
    real_llama3(d, t, "llama3", True)


# Llama 3.2 Vision's text tokenizer (128257 ids: `<|image|>` added).
@case("real-llama3.2", needs_tokenizers=True)
def _(d, t):
    real_llama3(d, t, "llama3.2", True)


# ---------------------------------------------------------------------------------------------
# Running and comparing


def metadata(path):
    """[(key, types, value)] as gguf-py reads them, in file order."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    out = []
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [t.name for t in field.types]
        value = [bytes(field.parts[i]) for i in field.data]
        out.append((name, types, value))
    return out


def show(value, types):
    if types[0] == "STRING":
        return repr(value[0].decode("utf-8", "replace"))[:80]
    if types[0] == "ARRAY":
        return f"[{len(value)} × {types[1]}]"
    return value[0].hex()


def compare(ours, theirs):
    diffs = []
    if [k for k, _, _ in ours] != [k for k, _, _ in theirs]:
        a, b = [k for k, _, _ in ours], [k for k, _, _ in theirs]
        only_ours = [k for k in a if k not in b]
        only_theirs = [k for k in b if k not in a]
        if only_ours or only_theirs:
            diffs.append(f"keys only in moeq's: {only_ours}; only in the converter's: {only_theirs}")
        else:
            diffs.append(f"key order differs:\n      moeq:      {a}\n      converter: {b}")
    theirs_by = {k: (t, v) for k, t, v in theirs}
    for k, t, v in ours:
        if k not in theirs_by:
            continue
        t2, v2 = theirs_by[k]
        if k == "tokenizer.chat_templates":
            v, v2 = sorted(v), sorted(v2)
        if (t, v) != (t2, v2):
            detail = ""
            if t == t2 and t[0] == "ARRAY":
                idx = [i for i, (x, y) in enumerate(zip(v, v2)) if x != y][:5]
                detail = f" (len {len(v)} vs {len(v2)}; first differences at {idx}: " + ", ".join(
                    f"{v[i]!r} vs {v2[i]!r}" for i in idx) + ")"
            diffs.append(f"{k}: moeq {t} {show(v, t)} vs converter {t2} {show(v2, t2)}{detail}")
    return diffs


def write_expected(name, pre, build, args, work):
    """The converter's --vocab-only GGUF of a case, as tests/fixtures/vocab/NAME.gguf."""
    folder = work / name
    build(folder, None)
    out = FX / "vocab" / f"{name}.gguf"
    env = dict(os.environ, LLAMA_CPP=args.llama_cpp, MOEQ_FALLBACK_PRE=pre)
    conv = subprocess.run([sys.executable, "-c", RUNNER, str(folder), "--vocab-only", "--outfile", str(out)],
                          env=env, capture_output=True, text=True)
    if conv.returncode != 0:
        out.unlink(missing_ok=True)
        last = [line for line in conv.stderr.splitlines() if line.strip()][-2:]
        return f"converter refuses: {' | '.join(last)}"
    return f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)"


def run_case(name, pre, build, tokenizers, args, work):
    folder = work / name
    build(folder, tokenizers)
    theirs, ours = work / f"{name}.converter.gguf", work / f"{name}.moeq.gguf"
    env = dict(os.environ, LLAMA_CPP=args.llama_cpp, MOEQ_FALLBACK_PRE=pre)
    conv = subprocess.run([sys.executable, "-c", RUNNER, str(folder), "--outfile", str(theirs)],
                          env=env, capture_output=True, text=True)
    hashes = re.findall(r"chkhsh:\s+([0-9a-f]{64})", conv.stderr)
    mo = subprocess.run([args.moeq, "convert", str(folder), "-o", str(ours), "-q"], capture_output=True, text=True)
    notes = []
    if hashes:
        notes.append(f"converter: unknown pre-tokenizer hash {hashes[0]}, wrote {pre}")
    warnings = [line for line in mo.stderr.splitlines() if line.startswith("warning:")]
    notes += [f"moeq {w}" for w in warnings]
    if conv.returncode != 0:
        last = [line for line in conv.stderr.splitlines() if line.strip()][-3:]
        verdict = "both refuse" if mo.returncode != 0 else "CONVERTER FAILS, moeq converts"
        return verdict, [f"converter: {' | '.join(last)}", f"moeq: {mo.stderr.strip()[:300]}"] + notes
    if mo.returncode != 0:
        return "MOEQ FAILS", [mo.stderr.strip()[:500]] + notes
    diffs = compare(metadata(ours), metadata(theirs))
    if args.show:
        for k, t, v in metadata(theirs):
            notes.append(f"  {k} {t[0]} {show(v, t)}")
    return ("same" if not diffs else "DIFFERENT"), diffs + notes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeq", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP", DEFAULT_LLAMA_CPP))
    ap.add_argument("--tokenizers", help="folder of real tokenizers (scripts/fetch_tokenizers.sh)")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--keep", help="build the cases in this folder and keep them")
    ap.add_argument("--show", action="store_true", help="list the converter's keys too")
    ap.add_argument("--write-expected", action="store_true",
                    help="write the converter's --vocab-only GGUF of each case of tests/fixtures/vocab/cases.json "
                         "into tests/fixtures/vocab (what tests/cli/vocab.rs compares with)")
    args = ap.parse_args()
    args.moeq = str(pathlib.Path(args.moeq).resolve())
    work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="moeq-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    bad = 0
    try:
        for name, pre, build, needs in CASES:
            if args.only and args.only not in name:
                continue
            if needs and not args.tokenizers:
                print(f"{name}: skipped (no --tokenizers)")
                continue
            if (work / name).exists():
                shutil.rmtree(work / name)
            if args.write_expected:
                if not needs:
                    print(f"{name}: {write_expected(name, pre, build, args, work)}")
                continue
            verdict, lines = run_case(name, pre, build, args.tokenizers, args, work)
            bad += verdict not in ("same", "both refuse")
            print(f"{name}: {verdict}")
            for line in lines:
                print(f"    {line}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{bad} case(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
