#!/usr/bin/env python3
"""KL-divergence table for GGUF builds of one model, measured by llama.cpp's llama-perplexity.

For every build given, runs

    llama-perplexity -m BUILD.gguf --kl-divergence-base BASE.kld --kl-divergence -t THREADS

(the evaluation tokens and the full-precision log-probabilities come from BASE.kld, which
`llama-perplexity -m SOURCE.gguf -f EVAL.txt -c 512 --kl-divergence-base BASE.kld` wrote once),
keeps the full log next to the build (BUILD.gguf.kld.log), parses "Mean KLD", "Same top p",
the KLD percentiles and the perplexity ratio, and prints one table row per build (Markdown),
plus an optional JSON file with every parsed figure. Builds of any tool can be listed, so moeq's
builds are added the same way as llama.cpp's or auto-round's.

Each build is NAME=PATH (or just PATH; the name is then the file name without .gguf).
A log that already exists for an unchanged build (same size and mtime recorded in the log's
sidecar) is reused unless --force; runs are niced (--nice, default 10).

Usage:
    scripts/quality_table.py --base /work/quality/base.kld \
        Q4_K_M=/work/quality/smol/llama-Q4_K_M.gguf Q4_K_M+imat=/work/quality/smol/llama-Q4_K_M-imat.gguf \
        [--json rows.json] [--md table.md] [--llama-bin /work/llama/build/bin] [--threads 2]

Exit status 2 with a message naming the build when a file is missing or llama-perplexity fails.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

DEFAULT_BIN = os.environ.get("LLAMA_BIN", "/work/llama/build/bin")

# Patterns for the summary llama-perplexity prints at the end of a --kl-divergence run
# (tools/perplexity/perplexity.cpp, kl_divergence()).
PATTERNS = {
    "ppl_q": r"Mean PPL\(Q\)\s*:\s*([-\d.]+)\s*±\s*([-\d.]+)",
    "ppl_base": r"Mean PPL\(base\)\s*:\s*([-\d.]+)\s*±\s*([-\d.]+)",
    "ln_ppl_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*([-\d.]+)\s*±\s*([-\d.]+)",
    "kld": r"Mean\s+KLD:\s*([-\d.]+)\s*±\s*([-\d.]+)",
    "kld_max": r"Maximum KLD:\s*([-\d.]+)",
    "kld_p99_9": r"99\.9%\s+KLD:\s*([-\d.]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*([-\d.]+)",
    "kld_median": r"Median\s+KLD:\s*([-\d.]+)",
    "rms_dp": r"RMS Δp\s*:\s*([-\d.]+)\s*±\s*([-\d.]+)\s*%",
    "same_top": r"Same top p:\s*([-\d.]+)\s*±\s*([-\d.]+)\s*%",
}


def die(msg):
    print(f"quality_table: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_log(text):
    """Returns {key: value or (value, uncertainty)} for every summary line found."""
    out = {}
    for key, pat in PATTERNS.items():
        m = re.search(pat, text)
        if not m:
            continue
        vals = [float(g) for g in m.groups()]
        out[key] = vals[0] if len(vals) == 1 else vals
    m = re.search(r"computing over (\d+) chunks, n_ctx=(\d+)", text)
    if m:
        out["chunks"], out["n_ctx"] = int(m.group(1)), int(m.group(2))
    return out


def stamp(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "base": None}


def run_kld(name, path, args):
    log = path + ".kld.log"
    side = path + ".kld.json"
    want = stamp(path)
    want["base"] = os.path.abspath(args.base)
    if not args.force and os.path.exists(log) and os.path.exists(side):
        try:
            with open(side) as f:
                have = json.load(f)
            if have.get("stamp") == want:
                with open(log, encoding="utf-8", errors="replace") as f:
                    return parse_log(f.read()), have.get("seconds"), True
        except (OSError, ValueError):
            pass
    cmd = ["nice", "-n", str(args.nice), os.path.join(args.llama_bin, "llama-perplexity"), "-m", path,
           "--kl-divergence-base", args.base, "--kl-divergence", "-t", str(args.threads)]
    print(f"[{name}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.time()
    tmp = log + ".part"
    with open(tmp, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    secs = time.time() - t0
    with open(tmp, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if proc.returncode != 0:
        os.replace(tmp, log + ".failed")
        die(f"{name}: llama-perplexity failed (exit {proc.returncode}), log in {log}.failed")
    res = parse_log(text)
    if "kld" not in res or "same_top" not in res:
        os.replace(tmp, log + ".failed")
        die(f"{name}: no 'Mean KLD'/'Same top p' in llama-perplexity's output, log in {log}.failed")
    os.replace(tmp, log)
    with open(side, "w") as f:
        json.dump({"stamp": want, "seconds": secs, "cmd": cmd}, f)
    return res, secs, False


def fmt_row(r):
    kld, kld_u = r["kld"]
    top, top_u = r["same_top"]
    ppl = r.get("ppl_q", [float("nan")])[0]
    return (f"| {r['name']} | {r['bytes']:,} | {r['bytes'] / 1e6:.2f} | {r['bpw']:.3f} | {kld:.5f} ± {kld_u:.5f} | "
            f"{r.get('kld_p99', float('nan')):.4f} | {top:.2f} ± {top_u:.2f} | {ppl:.4f} |")


HEADER = ("| build | bytes | MB | bpw | mean KLD | 99% KLD | same top p % | PPL(Q) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def n_params(path):
    """Number of weights in the GGUF's tensors (for bits per weight), via gguf-py."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    rd = GGUFReader(path)
    return sum(int(t.n_elements) for t in rd.tensors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", help="NAME=PATH.gguf or PATH.gguf")
    ap.add_argument("--base", required=True, help="file written by llama-perplexity --kl-divergence-base")
    ap.add_argument("--llama-bin", default=DEFAULT_BIN)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--force", action="store_true", help="rerun even when a log for the unchanged build exists")
    ap.add_argument("--json", help="write all parsed figures of every build to this file")
    ap.add_argument("--md", help="write the Markdown table to this file")
    args = ap.parse_args()
    if not os.path.isfile(args.base):
        die(f"{args.base}: KLD base file not found")
    builds = []
    for b in args.builds:
        name, sep, path = b.partition("=")
        if not sep:
            name, path = os.path.basename(b).removesuffix(".gguf"), b
        if not os.path.isfile(path):
            die(f"{name}: {path} not found")
        builds.append((name, path))
    rows = []
    print(HEADER, flush=True)
    for name, path in builds:
        res, secs, cached = run_kld(name, path, args)
        size = os.path.getsize(path)
        n = n_params(path)
        row = dict(res, name=name, path=os.path.abspath(path), bytes=size, seconds=secs, cached=cached,
                   n_weights=n, bpw=(8 * size / n) if n else float("nan"))
        rows.append(row)
        print(fmt_row(row), flush=True)
    if args.md:
        with open(args.md, "w") as f:
            f.write(HEADER + "\n" + "\n".join(fmt_row(r) for r in rows) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
