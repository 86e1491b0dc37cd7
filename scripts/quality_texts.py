#!/usr/bin/env python3
"""Calibration and evaluation texts for the quality measurements (issue 16), rebuilt from CPython.

calib.txt: every topic of `pydoc_data.topics` (the help texts of the language reference that
    `help('assert')` etc. print), sorted by key, joined by one blank line ("\\n\\n").
eval.txt: docstrings of 70 standard-library modules (a fixed list, in that order): for each
    module its own docstring (`inspect.getdoc`), then, in sorted name order, the docstrings
    (`inspect.getdoc`, so inherited ones count) of its public classes and functions defined in
    that module (`obj.__module__ == module.__name__`) that are longer than 200 characters; all
    pieces joined by one blank line.

The two texts share no passage (the reference manual vs module docstrings), so an importance
matrix made on calib.txt is judged on text it did not see. Both depend on the Python version:
the files in /work/quality were made by CPython 3.11.7; `--check DIR` rebuilds them and compares
byte for byte with DIR/calib.txt and DIR/eval.txt (exit 1 and the first differing offset if not).

Usage:
    scripts/quality_texts.py OUTDIR            # writes OUTDIR/calib.txt and OUTDIR/eval.txt
    scripts/quality_texts.py --check /work/quality
"""

import contextlib
import importlib
import inspect
import io
import os
import sys
import warnings

EVAL_MODULES = (
    "argparse subprocess collections typing unittest logging asyncio json re pathlib functools itertools "
    "datetime decimal fractions heapq bisect threading socket email http.client urllib.request csv sqlite3 "
    "zipfile tarfile shutil tempfile textwrap string random statistics math enum dataclasses contextlib abc "
    "io os sys pickle copy pprint doctest difflib calendar configparser optparse getopt gettext locale "
    "hashlib hmac secrets uuid struct codecs weakref gc inspect dis ast tokenize traceback warnings queue "
    "sched selectors signal mmap"
).split()
MIN_MEMBER_DOC = 200  # member docstrings must be longer than this many characters


def calib_text():
    import pydoc_data.topics as t

    return "\n\n".join(t.topics[k] for k in sorted(t.topics))


def module_pieces(name):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        m = importlib.import_module(name)
    out = []
    doc = inspect.getdoc(m)
    if doc:
        out.append(doc)
    for key, obj in sorted(vars(m).items()):
        if key.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != m.__name__:
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) > MIN_MEMBER_DOC:
            out.append(doc)
    return out


def eval_text():
    pieces = []
    for name in EVAL_MODULES:
        pieces += module_pieces(name)
    return "\n\n".join(pieces)


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n if len(a) != len(b) else None


def main():
    args = sys.argv[1:]
    texts = {"calib.txt": calib_text(), "eval.txt": eval_text()}
    if len(args) == 2 and args[0] == "--check":
        bad = False
        for fname, text in texts.items():
            path = os.path.join(args[1], fname)
            with open(path, "rb") as f:
                have = f.read()
            want = text.encode("utf-8")
            d = first_diff(have, want)
            if d is None:
                print(f"{path}: identical ({len(have)} bytes, Python {sys.version.split()[0]})")
            else:
                bad = True
                print(f"{path}: differs at byte {d} ({len(have)} bytes on disk, {len(want)} generated)")
        sys.exit(1 if bad else 0)
    if len(args) != 1 or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    os.makedirs(args[0], exist_ok=True)
    for fname, text in texts.items():
        path = os.path.join(args[0], fname)
        tmp = path + ".part"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
        print(f"{path}: {len(text.encode('utf-8'))} bytes")


if __name__ == "__main__":
    main()
