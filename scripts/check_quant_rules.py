#!/usr/bin/env python3
"""Compare moeq's per-tensor type decisions with llama-quantize's, exactly.

Builds GGUFs with gguf-py (metadata and tokenizer from the bundled goldens, hyperparameters and
tensors of the shapes below, F16 or BF16): Llama-shaped (dense, GQA, tied embeddings),
Mixtral-shaped with 8 and with 4 experts, gpt-oss-shaped, with rows that are multiples of 256,
plus a gpt-oss-shaped model whose rows are multiples of 32 but not of 256 and a Llama-shaped
one whose rows are not even multiples of 32. For each it writes an importance matrix in
llama-imatrix's GGUF format (some experts without tokens) and the same in the legacy .dat
format, and (when llama-imatrix is built) one made by llama-imatrix on CPython's
pydoc_data.topics text. Then for every file type x {no imatrix, gguf-py-made imatrix (GGUF or
.dat, alternating by model), llama-imatrix-made (.dat or GGUF)} x {plain,
--pure, --output-tensor-type, --token-embedding-type, --tensor-type rules,
--leave-output-tensor} it runs

    llama-quantize --dry-run [options] MODEL TYPE
    moeq convert MODEL --type TYPE --dry-run --json [options]

and requires the same tensors in the same order with the same types (and the same total size
and bits per weight as llama-quantize prints them). When llama-quantize refuses, moeq must
refuse too. A type set by option (--output-tensor-type, --token-embedding-type) that cannot
hold a tensor's rows passes llama-quantize's dry run (its size check is an assert, compiled
out) but fails its real run; moeq refuses it when planning, and the script then runs
llama-quantize for real to confirm that it fails.

Then both tools run for real (plain and --tensor-type, every file type and matrix): the files
must be byte-identical, or both must refuse naming the same tensor (a type that needs an
importance matrix).

--quick (CI) keeps every file type x {no imatrix, GGUF imatrix, .dat imatrix} on the Llama,
Mixtral (8 experts) and gpt-oss shapes and on both models whose rows are not multiples of 256,
with every option set in the dry runs, but runs for real only the plain builds (and the
--tensor-type builds of the Llama shape); the full mode adds the untied Llama and 4-expert
Mixtral shapes and the --tensor-type real runs of every model.

    python3 scripts/check_quant_rules.py [--moeq target/release/moeq] [--quick]
        [--llama-quantize /work/llama/build/bin/llama-quantize] [--jobs 2] [--keep DIR]

Needs: pip install gguf numpy; a built llama-quantize (llama.cpp as vendored in
llama-cpp-python 0.3.36).
"""

import argparse
import concurrent.futures
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"

FTYPES = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4_MOE",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0",
]

# name: family, layers, hidden, ffn, heads, kv heads, head dim, experts, tied, dtype
MODELS = {
    "llama-256": dict(family="llama", n_layer=16, hidden=256, ffn=512, n_head=8, n_head_kv=2, head_dim=32,
                      n_expert=0, tied=True, dtype="BF16"),
    "llama-untied-256": dict(family="llama", n_layer=8, hidden=256, ffn=768, n_head=4, n_head_kv=4, head_dim=64,
                             n_expert=0, tied=False, dtype="F16"),
    "mixtral8-256": dict(family="mixtral", n_layer=8, hidden=256, ffn=512, n_head=8, n_head_kv=2, head_dim=32,
                         n_expert=8, tied=False, dtype="BF16"),
    "mixtral4-256": dict(family="mixtral", n_layer=12, hidden=256, ffn=512, n_head=4, n_head_kv=4, head_dim=64,
                         n_expert=4, tied=False, dtype="F16"),
    "gpt-oss-256": dict(family="gpt-oss", n_layer=8, hidden=256, ffn=256, n_head=8, n_head_kv=2, head_dim=64,
                        n_expert=4, tied=False, dtype="BF16"),
    "gpt-oss-320": dict(family="gpt-oss", n_layer=8, hidden=320, ffn=320, n_head=8, n_head_kv=2, head_dim=40,
                        n_expert=8, tied=False, dtype="BF16"),
    "llama-odd-80": dict(family="llama", n_layer=8, hidden=80, ffn=144, n_head=4, n_head_kv=2, head_dim=20,
                         n_expert=0, tied=False, dtype="F16"),
}

VARIANTS = {
    "plain": [],
    "pure": ["--pure"],
    "output-tensor-type": ["--output-tensor-type", "q8_0"],
    "token-embedding-type": ["--token-embedding-type", "q4_0"],
    "tensor-type": ["--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn_down=q6_k",
                    "--tensor-type", r"\.1\.ffn_up=iq4_xs"],
    "leave-output-tensor": ["--leave-output-tensor"],
}

# --quick: the three shapes with rows of multiples of 256, and both models whose rows are not.
QUICK_MODELS = ["llama-256", "mixtral8-256", "gpt-oss-256", "gpt-oss-320", "llama-odd-80"]
# --quick: the models whose --tensor-type builds also run for real.
QUICK_TENSOR_TYPE_REAL = ["llama-256"]

TEMPLATES = {"llama": "llama-bf16.gguf", "mixtral": "mixtral-bf16.gguf", "gpt-oss": "gpt-oss-bf16.gguf"}


def tensor_shapes(m):
    """(name, ne) of every tensor, ne fastest first."""
    h, f, e = m["hidden"], m["ffn"], m["n_expert"]
    q, kv = m["n_head"] * m["head_dim"], m["n_head_kv"] * m["head_dim"]
    out = [("token_embd.weight", [h, 512]), ("output_norm.weight", [h])]
    if not m["tied"]:
        out.append(("output.weight", [h, 512]))
    for i in range(m["n_layer"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", [h]), (p + "attn_q.weight", [h, q]), (p + "attn_k.weight", [h, kv]),
                (p + "attn_v.weight", [h, kv]), (p + "attn_output.weight", [q, h])]
        if m["family"] == "llama":
            out += [(p + "ffn_norm.weight", [h]), (p + "ffn_gate.weight", [h, f]), (p + "ffn_up.weight", [h, f]),
                    (p + "ffn_down.weight", [f, h])]
        else:
            norm = "post_attention_norm" if m["family"] == "gpt-oss" else "ffn_norm"
            out += [(p + norm + ".weight", [h]), (p + "ffn_gate_inp.weight", [h, e]),
                    (p + "ffn_gate_exps.weight", [h, f, e]), (p + "ffn_up_exps.weight", [h, f, e]),
                    (p + "ffn_down_exps.weight", [f, h, e])]
        if m["family"] == "gpt-oss":
            out += [(p + "attn_q.bias", [q]), (p + "attn_k.bias", [kv]), (p + "attn_v.bias", [kv]),
                    (p + "attn_output.bias", [h]), (p + "attn_sinks.weight", [m["n_head"]]),
                    (p + "ffn_gate_inp.bias", [e]), (p + "ffn_gate_exps.bias", [f, e]),
                    (p + "ffn_up_exps.bias", [f, e]), (p + "ffn_down_exps.bias", [h, e])]
    return out


def copy_metadata(reader, writer, skip):
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skip or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)


def make_model(path, m, rng):
    arch = "gpt-oss" if m["family"] == "gpt-oss" else "llama"
    reader = GGUFReader(GOLDEN / TEMPLATES[m["family"]])
    hp = {
        "block_count": m["n_layer"], "embedding_length": m["hidden"], "feed_forward_length": m["ffn"],
        "attention.head_count": m["n_head"], "attention.head_count_kv": m["n_head_kv"],
        "attention.key_length": m["head_dim"], "attention.value_length": m["head_dim"],
        "rope.dimension_count": m["head_dim"],
    }
    if m["n_expert"]:
        hp["expert_count"] = m["n_expert"]
        hp["expert_used_count"] = 2
    if m["family"] == "gpt-oss":
        hp["expert_feed_forward_length"] = m["ffn"]
    keys = {f"{arch}.{k}": v for k, v in hp.items()}
    writer = GGUFWriter(str(path), arch)
    copy_metadata(reader, writer, set(keys) | {"general.file_type"})
    for k, v in keys.items():
        writer.add_uint32(k, v)
    writer.add_file_type(32 if m["dtype"] == "BF16" else 1)
    for name, ne in tensor_shapes(m):
        shape = list(reversed(ne))
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if len(ne) == 1 or "ffn_gate_inp" in name or name.endswith(".bias") or "attn_sinks" in name:
            writer.add_tensor(name, values)
        elif m["dtype"] == "F16":
            writer.add_tensor(name, values.astype(np.float16))
        else:
            bits = (values.view(np.uint32) >> 16).astype(np.uint16)
            writer.add_tensor(name, bits, raw_shape=shape, raw_dtype=GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def imatrix_entries(m, rng):
    """What llama-imatrix records: every weight a matrix multiplication reads, with the sum of
    squared activations per input column (per expert) and the tokens each matrix saw (an
    expert of layer 1 saw none)."""
    out = []
    for name, ne in tensor_shapes(m):
        if len(ne) < 2 or not name.endswith(".weight") or "attn_sinks" in name:
            continue
        if name == "token_embd.weight" and not m["tied"]:
            continue
        n_mat = ne[2] if len(ne) == 3 else 1
        counts = rng.integers(100, 5000, size=n_mat).astype(np.float32)
        if n_mat > 1 and name.startswith("blk.1."):
            counts[1] = 0
        sums = rng.random((n_mat, ne[0]), dtype=np.float32) * counts[:, None] * 0.3
        sums[counts == 0] = 0
        out.append((name, sums, counts))
    return out


def write_gguf_imatrix(path, entries):
    writer = GGUFWriter(str(path), "imatrix")
    writer.add_key_value("general.type", "imatrix", GGUFValueType.STRING)
    writer.add_key_value("imatrix.datasets", ["random.txt"], GGUFValueType.ARRAY, GGUFValueType.STRING)
    writer.add_uint32("imatrix.chunk_count", 10)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, sums, counts in sorted(entries, key=lambda e: e[0]):
        writer.add_tensor(name + ".in_sum2", sums)
        writer.add_tensor(name + ".counts", counts.reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_legacy_imatrix(path, entries, chunk_size=512):
    """llama-imatrix's `--output-format dat` (save_imatrix_legacy)."""
    b = bytearray(np.int32(len(entries)).tobytes())
    for name, sums, counts in sorted(entries, key=lambda e: e[0]):
        ncall = int((counts.max() + chunk_size - 1) // chunk_size)
        values = np.where(counts[:, None] == 0, np.float32(1), sums / np.maximum(counts[:, None], 1)) * np.float32(ncall)
        b += np.int32(len(name)).tobytes() + name.encode() + np.int32(ncall).tobytes()
        b += np.int32(values.size).tobytes() + values.astype(np.float32).tobytes()
    b += np.int32(10).tobytes() + np.int32(len("random.txt")).tobytes() + b"random.txt"
    path.write_bytes(bytes(b))


def llama_imatrix(exe, model, out, fmt, text):
    """An importance matrix made by llama-imatrix itself on `text` (4 chunks of 128 tokens)."""
    subprocess.run([exe, "-m", str(model), "-f", str(text), "-o", str(out), "-c", "128", "--chunks", "4", "-t", "2",
                    "--output-format", fmt], check=True, capture_output=True)


LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =.*?(?:\((\S+)\))?\s*$")
TOTAL = re.compile(r"quant size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")


def run_llama(exe, model, ftype, opts):
    p = subprocess.run([exe, "--dry-run", *opts, str(model), ftype], capture_output=True, text=True)
    if p.returncode != 0:
        return None, (p.stdout + p.stderr)[-400:]
    types = []
    for line in (p.stdout + p.stderr).splitlines():
        mt = LINE.match(line)
        if mt:
            types.append((mt.group(1), (mt.group(3) or mt.group(2)).upper()))
    total = TOTAL.search(p.stdout + p.stderr)
    return (types, (total.group(1), total.group(2)) if total else None), None


def run_moeq(exe, model, ftype, opts):
    p = subprocess.run([exe, "convert", str(model), "--type", ftype, "--dry-run", "--json", *opts],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()[-400:]
    plan = json.loads(p.stdout)
    types = [(t["name"], t["type"].upper()) for t in plan["tensors"]]
    mib = plan["totals"]["bytes"] / 1024 / 1024
    elements = plan["totals"]["elements"]
    bpw = plan["totals"]["bytes"] * 8 / elements
    return (types, (f"{mib:.2f}", f"{bpw:.2f}")), None


def compare(job):
    llama_exe, moeq_exe, model, ftype, opts, label = job
    want, want_err = run_llama(llama_exe, model, ftype, opts)
    got, got_err = run_moeq(moeq_exe, model, ftype, opts)
    if want is None and got is None:
        return label, "both-refuse", ""
    if want is None:
        return label, "differ", f"llama-quantize failed, moeq did not:\n{want_err}"
    if got is None and "no fallback for this option" in got_err:
        # llama-quantize's dry run sizes such a tensor without checking the block (ggml_row_size's
        # check is an assert, compiled out); its real run fails. Run it to be sure.
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([llama_exe, *opts, str(model), os.path.join(tmp, "out.gguf"), ftype],
                               capture_output=True, text=True)
        if p.returncode != 0:
            return label, "both-refuse-real", ""
        return label, "differ", f"moeq refused, llama-quantize's real run did not: {got_err}"
    if got is None:
        return label, "differ", f"moeq failed, llama-quantize did not: {got_err}"
    if want[0] != got[0]:
        diff = [f"{w} vs moeq {g}" for w, g in zip(want[0], got[0]) if w != g]
        if len(want[0]) != len(got[0]):
            diff.append(f"{len(want[0])} tensors vs moeq {len(got[0])}")
        return label, "differ", "; ".join(diff[:6])
    if want[1] != got[1]:
        return label, "differ", f"totals {want[1]} vs moeq {got[1]}"
    return label, "match", ""


def first_difference(a, b):
    """Where two GGUF files differ: a metadata key or a tensor."""
    ra, rb = GGUFReader(a), GGUFReader(b)
    ka = [(k, f.types, repr(f.contents())) for k, f in ra.fields.items()]
    kb = [(k, f.types, repr(f.contents())) for k, f in rb.fields.items()]
    for x, y in zip(ka, kb):
        if x != y:
            return f"metadata {x[0]} vs moeq {y[0]}"
    if len(ka) != len(kb):
        return f"{len(ka)} keys vs moeq {len(kb)}"
    for ta, tb in zip(ra.tensors, rb.tensors):
        if (ta.name, ta.tensor_type) != (tb.name, tb.tensor_type):
            return f"tensor {ta.name} {ta.tensor_type.name} vs moeq {tb.name} {tb.tensor_type.name}"
        if bytes(ta.data.tobytes()) != bytes(tb.data.tobytes()):
            return f"tensor {ta.name} ({ta.tensor_type.name}): different bytes"
    return "different bytes"


def real_run(job):
    """Both tools for real: the same refusal (a type that needs an importance matrix, naming the
    same tensor), or the same bytes."""
    llama_exe, moeq_exe, model, ftype, opts, label = job
    with tempfile.TemporaryDirectory() as tmp:
        want, got = os.path.join(tmp, "llama.gguf"), os.path.join(tmp, "moeq.gguf")
        q = subprocess.run([moeq_exe, "convert", str(model), "-o", got, "--type", ftype, "-q", *opts],
                           capture_output=True, text=True)
        p = subprocess.run([llama_exe, *opts, str(model), want, ftype, "1"], capture_output=True, text=True)
        log = p.stdout + p.stderr
        if p.returncode != 0:
            offending = re.search(r"offending tensor: (\S+)", log) or re.search(r"for tensor (\S+) in a very low-bit", log)
            if q.returncode == 2 and offending and f"'{offending.group(1)}'" in q.stderr and "importance" in q.stderr:
                return label, "same-refusal", ""
            return label, "differ", f"llama-quantize failed ({log.strip().splitlines()[-1]}); moeq: {q.stderr.strip()[-300:]}"
        if q.returncode != 0:
            return label, "differ", f"moeq failed: {q.stderr.strip()[-300:]}"
        if pathlib.Path(want).read_bytes() == pathlib.Path(got).read_bytes():
            return label, "identical", ""
        return label, "differ", first_difference(want, got)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moeq", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--llama-quantize", default="/work/llama/build/bin/llama-quantize")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--llama-imatrix", default="/work/llama/build/bin/llama-imatrix",
                    help="also use matrices made by llama-imatrix (skipped when it is not there)")
    ap.add_argument("--keep", help="build the models in this folder and keep them")
    ap.add_argument("--quick", action="store_true", help="the CI subset (see the module's documentation)")
    ap.add_argument("--models", help="comma-separated model names (default: all, or the --quick subset)")
    ap.add_argument("--ftypes", default=",".join(FTYPES))
    args = ap.parse_args()
    if not args.models:
        args.models = ",".join(QUICK_MODELS if args.quick else MODELS)
    if not shutil.which(args.llama_quantize) and not os.path.exists(args.llama_quantize):
        sys.exit(f"no llama-quantize at {args.llama_quantize}")
    work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="moeq-quant-rules-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    jobs = []
    use_llama_imatrix = os.path.exists(args.llama_imatrix)
    if use_llama_imatrix:
        import pydoc_data.topics
        text = work / "text.txt"
        text.write_text(" ".join(list(pydoc_data.topics.topics.values())[:40]))
    for i, name in enumerate(args.models.split(",")):
        m = MODELS[name]
        model = work / f"{name}.gguf"
        make_model(model, m, rng)
        entries = imatrix_entries(m, rng)
        gguf_im, dat_im = work / f"{name}.imatrix.gguf", work / f"{name}.imatrix.dat"
        write_gguf_imatrix(gguf_im, entries)
        write_legacy_imatrix(dat_im, entries)
        # Alternate the importance matrix's format between models.
        matrices = [("none", None), ("gguf" if i % 2 == 0 else "dat", gguf_im if i % 2 == 0 else dat_im)]
        if use_llama_imatrix:
            fmt = "dat" if i % 2 == 0 else "gguf"
            made = work / f"{name}.llama-imatrix.{fmt}"
            try:
                llama_imatrix(args.llama_imatrix, model, made, fmt, text)
                matrices.append((f"llama-imatrix-{fmt}", made))
            except subprocess.CalledProcessError as e:
                print(f"note: llama-imatrix cannot run {name}: {e.stderr.decode(errors='replace').strip()[-200:]}")
        for ftype in args.ftypes.split(","):
            for im, path in matrices:
                for variant, opts in VARIANTS.items():
                    full = (["--imatrix", str(path)] if path else []) + opts
                    jobs.append((args.llama_quantize, args.moeq, model, ftype, full, f"{name} {ftype} imatrix={im} {variant}"))
    real_jobs = [j for j in jobs if j[5].endswith(" plain") or (j[5].endswith(" tensor-type") and (
        not args.quick or j[5].split()[0] in QUICK_TENSOR_TYPE_REAL))]
    n_matrices = "2-3" if use_llama_imatrix else 2
    counts = {"match": 0, "both-refuse": 0, "both-refuse-real": 0, "differ": 0}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for label, outcome, detail in pool.map(compare, jobs):
            counts[outcome] += 1
            if outcome == "differ":
                failures.append(f"{label}: {detail}")
    for f in failures:
        print("DIFFERS", f)
    models = len(args.models.split(","))
    print(f"{len(jobs)} combinations ({models} models x {len(args.ftypes.split(','))} file types x {n_matrices} imatrix x "
          f"{len(VARIANTS)} option sets): {counts['match']} identical per-tensor types and totals, "
          f"{counts['both-refuse']} refused by both, {counts['both-refuse-real']} refused by moeq's plan and by "
          f"llama-quantize's real run (its dry run misses it), {counts['differ']} differ")
    real = {"identical": 0, "same-refusal": 0, "differ": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for label, outcome, detail in pool.map(real_run, real_jobs):
            real[outcome] += 1
            if outcome == "differ":
                failures.append(f"real run {label}: {detail}")
                print("DIFFERS real run", label, detail)
    print(f"{len(real_jobs)} real runs (plain and --tensor-type, with and without imatrix): {real['identical']} "
          f"byte-identical files, {real['same-refusal']} refused by both naming the same tensor, "
          f"{real['differ']} differ")
    if not args.keep:
        shutil.rmtree(work)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
