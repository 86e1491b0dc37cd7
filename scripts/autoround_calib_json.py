#!/usr/bin/env python3
"""Writes a calibration text as the JSON list of strings that Intel auto-round takes as a local dataset.

auto-round's `--dataset PATH` (auto_round/calib_dataset.py, `get_local_dataset`) reads only .json or
.jsonl files: a list of samples, each one string. It tokenizes every sample, drops those shorter than
`--seqlen` tokens and keeps the first `--nsamples`. This script cuts TEXT at paragraph breaks into
pieces of at least MIN_CHARS characters (3600 by default: more than 512 tokens of SmolLM2's tokenizer
on CPython's documentation), in order, so auto-round calibrates on the same text as llama-imatrix
and moeq (`--calibration`).

Usage: scripts/autoround_calib_json.py TEXT OUT.json [MIN_CHARS]
Exit status 2 with a message when TEXT cannot be read or is empty.
"""

import json
import sys


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, out = sys.argv[1], sys.argv[2]
    min_chars = int(sys.argv[3]) if len(sys.argv) == 4 else 3600
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        print(f"autoround_calib_json: {src}: {e}", file=sys.stderr)
        sys.exit(2)
    pieces, cur = [], ""
    for para in text.split("\n\n"):
        cur += para + "\n\n"
        if len(cur) >= min_chars:
            pieces.append(cur)
            cur = ""
    if cur.strip():
        pieces.append(cur)
    if not pieces:
        print(f"autoround_calib_json: {src}: no text", file=sys.stderr)
        sys.exit(2)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(pieces, f)
    print(f"{out}: {len(pieces)} samples, {sum(map(len, pieces))} characters")


if __name__ == "__main__":
    main()
