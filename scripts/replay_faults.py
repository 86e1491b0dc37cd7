#!/usr/bin/env python3
"""Replays interruption and output-path faults on a large generated checkpoint and counts what
moeq leaves behind (issue 13, "Safety of the user's files").

On a gpt-oss checkpoint of >= 1 GB (scripts/make_gpt_oss_checkpoint.py --layers 1, 2.8 GB):

- interruptions: conversions in every output mode (GGUF, --type Q8_0, --split-max-size, --format
  mlx, and GGUF with named temporaries as where O_TMPFILE is unsupported) killed with SIGKILL,
  SIGINT, SIGTERM or SIGHUP at random moments; after a kill -9 the next run writing to that
  folder (a tiny conversion) must remove what is left;
- truncation and in-place rewrites of an input shard mid-run;
- outputs that name inputs (shards, index, config, tokenizer, a GGUF requantized in place under
  several spellings and links, a split output over its own set) and output paths that are
  devices, FIFOs or folders.

Prints the counts: partial outputs, leftover temporary bytes (after interrupts; after kill -9,
before and after the next run), inputs changed, panics, unexpected signals, refusals missed.
The goal is zero everywhere (kill -9 leftovers zero where O_TMPFILE applies).

Usage: scripts/replay_faults.py [--work /work/tmp-safety] [--moeq target/release/moeq]
                                [--runs 2] [--seed 1] [--keep]
"""

import argparse
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/golden/llama-bf16.gguf"

MODES = {
    "gguf": (["-o", "{out}/m.gguf"], {}),
    "q8_0": (["-o", "{out}/m.gguf", "--type", "Q8_0"], {}),
    "split": (["-o", "{out}/m.gguf", "--split-max-size", "1G"], {}),
    "mlx": (["-o", "{out}/mlx", "--format", "mlx"], {}),
    "gguf-named-temps": (["-o", "{out}/m.gguf"], {"MOEQ_TMPFILE": "named"}),
}
SIGNALS = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree(path):
    """{relative path: size} of every file under path (hidden ones too)."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(path))] = p.lstat().st_size
    return out


def outputs_of(files):
    """The names an output would have: no hidden (temporary) names at any level."""
    return {k: v for k, v in files.items() if not any(part.startswith(".") for part in Path(k).parts)}


class Counts:
    def __init__(self):
        self.c = {}

    def add(self, key, n=1):
        self.c[key] = self.c.get(key, 0) + n

    def get(self, key):
        return self.c.get(key, 0)


def run(moeq, args, env=None, **kw):
    return subprocess.run([moeq, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, **kw)


def check_process(counts, rc, stderr, sent=None):
    if "panicked" in stderr or rc == 101:
        counts.add("panics")
    if rc < 0 and -rc != sent:
        counts.add("unexpected signals")
        print(f"  unexpected signal {-rc}: {stderr[-300:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/work/tmp-safety"))
    ap.add_argument("--moeq", default=str(ROOT / "target/release/moeq"))
    ap.add_argument("--runs", type=int, default=2, help="runs per mode and signal")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work, moeq = args.work, args.moeq
    work.mkdir(parents=True, exist_ok=True)
    ck = work / "ck"
    if not (ck / "config.json").is_file():
        subprocess.run([sys.executable, ROOT / "scripts/make_gpt_oss_checkpoint.py", ck, "--layers", "1"], check=True)
    size = sum(p.stat().st_size for p in ck.iterdir())
    assert size >= 1 << 30, f"the checkpoint has {size} bytes, less than 1 GB"
    print(f"checkpoint {ck}: {size / 1e9:.2f} GB")
    counts = Counts()

    # Reference runs: how long each mode takes and what a complete output is.
    reference, duration = {}, {}
    for mode, (margs, env) in MODES.items():
        out = work / f"ref-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t = time.monotonic()
        r = run(moeq, ["convert", str(ck), "-q", *[a.format(out=out) for a in margs]], env)
        duration[mode] = time.monotonic() - t
        assert r.returncode == 0, r.stderr
        reference[mode] = outputs_of(tree(out))
        print(f"reference {mode}: {duration[mode]:.1f} s, {len(reference[mode])} files")
        if mode == "gguf":
            (out / "m.gguf").rename(work / "ref.gguf")
        shutil.rmtree(out)

    # A GGUF input and a split set of it, for the in-place cases.
    split_dir = work / "split"
    shutil.rmtree(split_dir, ignore_errors=True)
    split_dir.mkdir()
    r = run(moeq, ["convert", str(work / "ref.gguf"), "-o", str(split_dir / "s.gguf"), "--split-max-size", "1G", "-q"])
    assert r.returncode == 0, r.stderr
    inputs = [p for p in ck.iterdir()] + [work / "ref.gguf"] + sorted(split_dir.iterdir())
    t = time.monotonic()
    before = {p: sha(p) for p in inputs}
    print(f"hashed {len(inputs)} inputs in {time.monotonic() - t:.0f} s")

    # Interruptions at random moments.
    for mode, (margs, env) in MODES.items():
        for sig in SIGNALS:
            for _ in range(args.runs):
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                delay = rng.uniform(0.05, duration[mode] * 1.1)
                p = subprocess.Popen([moeq, "convert", str(ck), "-q", *[a.format(out=out) for a in margs]],
                                     env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
                try:
                    p.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    p.send_signal(sig)
                _, stderr = p.communicate()
                rc = p.returncode
                counts.add("interrupted runs")
                counts.add(f"signal {sig.name}")
                check_process(counts, rc, stderr, sent=sig)
                files = tree(out)
                finals = outputs_of(files)
                if rc == 0:
                    counts.add("finished before the signal")
                    if finals != reference[mode]:
                        counts.add("partial outputs")
                        print(f"  {mode} {sig.name}: incomplete output {finals}")
                elif finals:
                    counts.add("partial outputs")
                    print(f"  {mode} {sig.name} after {delay:.2f} s: partial output {finals}")
                left = sum(v for k, v in files.items() if k not in finals)
                if sig == signal.SIGKILL:
                    key = "kill -9 (O_TMPFILE)" if mode in ("gguf", "q8_0", "split") else "kill -9 (named/folder)"
                    counts.add(f"leftover temp bytes after {key}", left)
                    nxt = run(moeq, ["convert", str(TINY), "-o", str(out / "next.gguf"), "-q"])
                    check_process(counts, nxt.returncode, nxt.stderr)
                    files = tree(out)
                    rest = sum(v for k, v in files.items() if k not in outputs_of(files))
                    counts.add("leftover temp bytes after kill -9 and the next run", rest)
                else:
                    counts.add("leftover temp bytes after SIGINT/SIGTERM/SIGHUP", left)
                    if rc not in (0, -sig):
                        print(f"  {mode} {sig.name}: exit {rc}: {stderr[-300:]}")
                        counts.add("wrong exit status")
                shutil.rmtree(out)
        print(f"interrupted {mode}")

    # An input shard truncated or rewritten while being read.
    victim_dir = work / "victim"
    for trial in range(2 * args.runs):
        shutil.rmtree(victim_dir, ignore_errors=True)
        victim_dir.mkdir()
        for f in ck.iterdir():
            if f.name == "model-00001-of-00001.safetensors":
                shutil.copy(f, victim_dir / f.name)
            elif f.suffix == ".safetensors":
                os.symlink(f, victim_dir / f.name)
            else:
                shutil.copy(f, victim_dir / f.name)
        victim = victim_dir / "model-00001-of-00001.safetensors"
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        mode = ["gguf", "q8_0", "mlx"][trial % 3]
        margs, env = MODES[mode]
        how = "truncate" if trial % 2 == 0 else "rewrite"
        p = subprocess.Popen([moeq, "convert", str(victim_dir), "-q", *[a.format(out=out) for a in margs]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0.05, duration[mode] * 0.8)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            with open(victim, "r+b") as f:
                if how == "truncate":
                    f.truncate(victim.stat().st_size // 3)
                else:
                    f.seek(victim.stat().st_size // 2)
                    f.write(b"rewritten in place")
        _, stderr = p.communicate()
        rc = p.returncode
        counts.add({"truncate": "inputs truncated mid-run", "rewrite": "inputs rewritten mid-run"}[how])
        check_process(counts, rc, stderr)
        files = tree(out)
        finals = outputs_of(files)
        if rc == 2 and "changed while being read" in stderr and str(victim) in stderr:
            counts.add("changed inputs reported, naming the file")
        elif rc == 0:
            counts.add("changed inputs: run finished before the change")
        else:
            counts.add("changed inputs not reported as such")
            print(f"  {how} {mode}: exit {rc}: {stderr[-400:]}")
        if rc != 0 and finals:
            counts.add("partial outputs")
        counts.add("leftover temp bytes after a changed input", sum(v for k, v in files.items() if k not in finals))
        shutil.rmtree(out)
    shutil.rmtree(victim_dir, ignore_errors=True)
    print("replayed changed inputs")

    # Outputs that name inputs, and output paths that are not files.
    x = work / "x"
    x.mkdir(exist_ok=True)
    link, hard = work / "link.gguf", work / "hard.gguf"
    for p in (link, hard):
        p.unlink(missing_ok=True)
    os.symlink(work / "ref.gguf", link)
    os.link(work / "ref.gguf", hard)
    fifo = work / "fifo.gguf"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    (work / "folder").mkdir(exist_ok=True)
    ref, first = str(work / "ref.gguf"), str(sorted(split_dir.iterdir())[0])
    cases = [
        ([str(ck), "-o", str(ck / "model-00000-of-00001.safetensors")], "is the input"),
        ([str(ck), "-o", str(ck / "model-00001-of-00001.safetensors"), "--type", "Q8_0"], "is the input"),
        ([str(ck), "-o", str(ck / "model.safetensors.index.json")], "is the input"),
        ([str(ck), "-o", str(ck / "config.json")], "is the input"),
        ([str(ck), "-o", str(ck / "tokenizer.json"), "--split-max-size", "1G"], "is the input"),
        ([ref, "-o", ref, "--type", "Q4_0"], "is the input"),
        ([ref, "-o", f"{x}/./../x/../ref.gguf", "--type", "Q4_0"], "is the input"),
        ([ref, "-o", str(link)], "is the input"),
        ([ref, "-o", str(hard), "--type", "Q8_0"], "is the input"),
        ([first, "-o", str(split_dir / "s.gguf"), "--split-max-size", "500M"], "is the input"),
        ([str(ck), "-o", str(ck), "--format", "mlx"], "exists already"),
        ([str(ck), "-o", "/dev/null"], "is a device"),
        ([str(ck), "-o", str(fifo)], "is a FIFO"),
        ([str(ck), "-o", str(work / "folder")], "is a folder"),
        ([str(ck), "-o", str(work / "folder") + "/"], "ends in '/'"),
    ]
    for case, expected in cases:
        t = time.monotonic()
        r = run(moeq, ["convert", *case])
        took = time.monotonic() - t
        counts.add("output-path cases")
        check_process(counts, r.returncode, r.stderr)
        if r.returncode == 2 and expected in r.stderr and took < 5:
            counts.add("output-path cases refused before any work")
        else:
            counts.add("output-path cases not refused")
            print(f"  not refused ({took:.1f} s, exit {r.returncode}): {case}: {r.stderr[-300:]}")
    r = run(moeq, ["eval", ref, "--tokens", "1,2", "--dump", ref])
    counts.add("output-path cases")
    if r.returncode == 2 and "is the input" in r.stderr:
        counts.add("output-path cases refused before any work")
    else:
        counts.add("output-path cases not refused")
    if not fifo.exists() or not stat.S_ISFIFO(os.lstat(fifo).st_mode):
        counts.add("inputs changed")
    if any((work / "folder").iterdir()) or any(x.iterdir()):
        counts.add("partial outputs")
    if not Path("/dev/null").is_char_device():
        counts.add("inputs changed")

    after = {p: sha(p) if p.exists() else None for p in inputs}
    changed = [str(p) for p in inputs if after[p] != before[p]]
    counts.add("inputs changed", len(changed))
    for c in changed:
        print(f"  input changed: {c}")
    stray = [str(p) for p in work.rglob("*") if ".moeq-" in p.name]
    counts.add("moeq temporaries anywhere in the work folder at the end", len(stray))

    print()
    order = [
        "interrupted runs", "signal SIGKILL", "signal SIGINT", "signal SIGTERM", "signal SIGHUP",
        "finished before the signal", "partial outputs", "leftover temp bytes after SIGINT/SIGTERM/SIGHUP",
        "leftover temp bytes after kill -9 (O_TMPFILE)", "leftover temp bytes after kill -9 (named/folder)",
        "leftover temp bytes after kill -9 and the next run", "wrong exit status", "inputs truncated mid-run",
        "inputs rewritten mid-run", "changed inputs reported, naming the file",
        "changed inputs: run finished before the change", "changed inputs not reported as such",
        "leftover temp bytes after a changed input", "output-path cases", "output-path cases refused before any work",
        "output-path cases not refused", "inputs changed", "panics", "unexpected signals",
        "moeq temporaries anywhere in the work folder at the end",
    ]
    for key in order:
        print(f"{key:<58} {counts.get(key)}")
    if not args.keep:
        for p in [ck, split_dir, x, work / "folder"]:
            shutil.rmtree(p, ignore_errors=True)
        for p in [work / "ref.gguf", link, hard, fifo]:
            p.unlink(missing_ok=True)
    bad = ["partial outputs", "leftover temp bytes after SIGINT/SIGTERM/SIGHUP",
           "leftover temp bytes after kill -9 (O_TMPFILE)", "leftover temp bytes after kill -9 and the next run",
           "changed inputs not reported as such", "leftover temp bytes after a changed input",
           "output-path cases not refused", "inputs changed", "panics", "unexpected signals", "wrong exit status",
           "moeq temporaries anywhere in the work folder at the end"]
    sys.exit(1 if any(counts.get(k) for k in bad) else 0)


if __name__ == "__main__":
    main()
