#!/usr/bin/env python3
"""KL divergence of every file type moeq writes for one model, without and with an importance matrix.

For each file type T and each of {no imatrix, --imatrix IMATRIX}:

    moeq convert MODEL.gguf --type T [--imatrix IMATRIX] -o WORK/T[-imat].gguf -q
    llama-perplexity -m WORK/T[-imat].gguf --kl-divergence-base BASE.kld --kl-divergence -t THREADS

(the second through scripts/quality_table.py, which keeps llama-perplexity's log beside the build
and parses Mean KLD, Same top p and PPL(Q)). A file type moeq refuses without an importance
matrix (exit 2 naming the tensor, as llama-quantize refuses) is recorded as refused. When the
build with the matrix holds the same tensor bytes as the one without (float types, Q8_0: their
quantizers take no importance weights), its measurement is the same and is not repeated. Each
build is deleted once measured (disk); one JSON file per build (WORK/T[-imat].json) records the
figures, so an interrupted run resumes where it stopped. Finally prints a Markdown table, one row
per file type with both measurements next to the file sizes.

BASE.kld: `llama-perplexity -m MODEL.gguf -f EVAL.txt -c 512 --kl-divergence-base BASE.kld`
(cut to fewer chunks with scripts/kld_base_subset.py).

    scripts/kld_every_type.py --model smol-bf16.gguf --base base10.kld --imatrix imatrix.gguf \
        --work DIR [--types Q4_K_M,IQ4_XS] [--moeq target/release/moeq] [--llama-bin DIR]
        [--threads 2] [--nice 5] [--md table.md]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import quality_table  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FTYPES = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4_MOE",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0",
]


def tensor_bytes(path):
    """(name, type, bytes) of every tensor, for comparing two builds' tensor data."""
    from gguf import GGUFReader

    return [(t.name, int(t.tensor_type), t.data.tobytes()) for t in GGUFReader(path).tensors]


def measure(args, ftype, imatrix, work, same_as=None):
    """Builds and measures one (type, matrix) pair; returns its row (also saved as JSON)."""
    label = ftype + ("-imat" if imatrix else "")
    row_file = work / f"{label}.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    out = work / f"{label}.gguf"
    im = ["--imatrix", str(imatrix)] if imatrix else []
    t0 = time.monotonic()
    q = subprocess.run(["nice", "-n", str(args.nice), args.moeq, "convert", args.model, "--type", ftype, *im,
                        "-o", str(out), "-q"], capture_output=True, text=True)
    build_s = time.monotonic() - t0
    row = {"type": ftype, "imatrix": bool(imatrix), "build_seconds": round(build_s, 1)}
    if q.returncode != 0:
        if q.returncode == 2 and "importance" in q.stderr:
            row["refused"] = q.stderr.strip().splitlines()[-1]
        else:
            sys.exit(f"kld_every_type: moeq convert --type {ftype} {' '.join(im)} failed: {q.stderr.strip()[-400:]}")
    else:
        row["bytes"] = os.path.getsize(out)
        row["n_weights"] = quality_table.n_params(str(out))
        if same_as is not None and same_as.get("kld") and same_as.get("_path") and \
                tensor_bytes(same_as["_path"]) == tensor_bytes(str(out)):
            row.update({k: same_as[k] for k in ("kld", "same_top", "ppl_q", "chunks", "kld_seconds")})
            row["same_tensors_as"] = same_as["type"]
        else:
            res, secs, _ = quality_table.run_kld(label, str(out), args)
            row.update({k: res.get(k) for k in ("kld", "same_top", "ppl_q", "chunks")})
            row["kld_seconds"] = round(secs, 1)
        row["_path"] = str(out)
    row_file.write_text(json.dumps({k: v for k, v in row.items() if k != "_path"}, indent=1))
    print(f"{label:<16} " + (f"refused ({row['refused'][-120:]})" if "refused" in row else
          f"{row['bytes']:>10} bytes  KLD {row['kld'][0]:.5f} ± {row['kld'][1]:.5f}  same top {row['same_top'][0]:.2f} %"
          f"  build {row['build_seconds']} s  kld {row['kld_seconds']} s"), flush=True)
    return row


def cells(r):
    if r is None:
        return ["—"] * 5
    if "refused" in r:
        return ["refused", "—", "—", "—", "—"]
    kld, kld_u = r["kld"]
    return [f"{r['bytes'] / 1e6:.2f}", f"{8 * r['bytes'] / r['n_weights']:.2f}" if r.get("n_weights") else "—",
            f"{kld:.4f} ± {kld_u:.4f}", f"{r['same_top'][0]:.1f}", f"{r['ppl_q'][0]:.2f}" if r.get("ppl_q") else "—"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the full-precision GGUF (BF16) the base logits came from")
    ap.add_argument("--base", required=True, help="llama-perplexity --kl-divergence-base file")
    ap.add_argument("--imatrix", required=True)
    ap.add_argument("--work", required=True, help="folder for the builds (deleted once measured) and the JSON rows")
    ap.add_argument("--types", default=",".join(FTYPES))
    ap.add_argument("--moeq", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--llama-bin", default=quality_table.DEFAULT_BIN)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nice", type=int, default=5)
    ap.add_argument("--md", help="also write the Markdown table here")
    ap.add_argument("--table-only", action="store_true",
                    help="build nothing: the table of the rows already in WORK (types not measured: —)")
    args = ap.parse_args()
    args.force = False
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for p in (args.model, args.base, args.imatrix):
        if not os.path.isfile(p):
            sys.exit(f"kld_every_type: {p} not found")
    rows = []
    for ftype in args.types.split(","):
        if args.table_only:
            plain, with_im = (json.loads(f.read_text()) if f.exists() else None
                              for f in (work / f"{ftype}.json", work / f"{ftype}-imat.json"))
            if plain or with_im:
                rows.append((ftype, plain, with_im))
            continue
        plain = measure(args, ftype, None, work)
        with_im = measure(args, ftype, args.imatrix, work, same_as=plain)
        for r in (plain, with_im):
            if r and r.get("_path") and os.path.exists(r["_path"]):
                os.unlink(r["_path"])
        rows.append((ftype, plain, with_im))
    head = ("| file type | size (MB) | bpw | mean KLD | same top % | PPL | size +imatrix (MB) | bpw | mean KLD +imatrix "
            "| same top % | PPL |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for ftype, plain, with_im in rows:
        a, b = cells(plain), cells(with_im)
        note = " ¹" if with_im and with_im.get("same_tensors_as") else ""
        lines.append(f"| {ftype} | " + " | ".join(a) + " | " + " | ".join(b[:2]) + " | " + b[2] + note + " | "
                     + " | ".join(b[3:]) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.md:
        pathlib.Path(args.md).write_text(table)


if __name__ == "__main__":
    main()
