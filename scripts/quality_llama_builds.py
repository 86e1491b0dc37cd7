#!/usr/bin/env python3
"""llama.cpp baseline builds: llama-quantize SOURCE.gguf into each type, without and with an imatrix.

For every TYPE given, writes OUTDIR/PREFIX-TYPE.gguf (plain) and OUTDIR/PREFIX-TYPE-imat.gguf
(`--imatrix IMATRIX`), with exactly

    llama-quantize [--imatrix IMATRIX] --allow-requantize SOURCE.gguf OUT.gguf TYPE THREADS

(`--allow-requantize` only matters for sources that hold quantized tensors; it is passed always,
as the SmolLM2 source was made with it). Types that llama-quantize refuses without an imatrix
(IQ2_*, IQ3_XXS, IQ1_*) and the IQ types in general get only the imatrix build unless --plain-iq.
Existing outputs are kept (delete them or pass --force). Prints one NAME=PATH per build, ready
for scripts/quality_table.py.

Usage:
    scripts/quality_llama_builds.py SOURCE.gguf OUTDIR --imatrix IMATRIX.gguf --prefix llama \
        Q4_K_M Q3_K_M IQ4_XS Q2_K
"""

import argparse
import os
import subprocess
import sys

DEFAULT_BIN = os.environ.get("LLAMA_BIN", "/work/llama/build/bin")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("outdir")
    ap.add_argument("types", nargs="+")
    ap.add_argument("--imatrix", help="imatrix file from llama-imatrix (omit for plain builds only)")
    ap.add_argument("--prefix", default="llama")
    ap.add_argument("--llama-bin", default=DEFAULT_BIN)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--plain-iq", action="store_true", help="also build IQ types without an imatrix")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    for t in args.types:
        variants = []
        if not t.upper().startswith("IQ") or args.plain_iq:
            variants.append(("", None))
        if args.imatrix:
            variants.append(("-imat", args.imatrix))
        for suffix, imat in variants:
            out = os.path.join(args.outdir, f"{args.prefix}-{t}{suffix}.gguf")
            name = f"{t}{'+imat' if imat else ''}"
            if os.path.exists(out) and not args.force:
                print(f"{name}={out}")
                continue
            cmd = ["nice", "-n", str(args.nice), os.path.join(args.llama_bin, "llama-quantize")]
            if imat:
                cmd += ["--imatrix", imat]
            tmp = out + ".part"
            cmd += ["--allow-requantize", args.source, tmp, t, str(args.threads)]
            print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
            with open(out + ".quantize.log", "w") as log:
                p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
            if p.returncode != 0:
                if os.path.exists(tmp):
                    os.remove(tmp)
                print(f"quality_llama_builds: {name}: llama-quantize failed (exit {p.returncode}), "
                      f"see {out}.quantize.log", file=sys.stderr)
                sys.exit(2)
            os.replace(tmp, out)
            print(f"{name}={out}", flush=True)


if __name__ == "__main__":
    main()
