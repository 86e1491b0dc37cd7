#!/usr/bin/env python3
"""Small seeds for the forward-loading fuzzers (examples/fuzz_forward, fuzz/forward_load).

Each golden GGUF in tests/fixtures/golden is rewritten with a 32-entry vocabulary: the
token_embd/output tensors keep their first 32 rows, the tokenizer arrays (tokens, scores,
token types) their first 32 entries and merges their first 8, special token ids past the
vocabulary and `*.vocab_size` are set to fit. Everything else (architecture keys, layers,
tensor types and their bytes, alignment) is kept, so every seed still runs the forward, and
the loader sees the same metadata and tensor-table structure as in the goldens at a tenth
of the bytes (a fuzz execution costs in proportion to the bytes copied, parsed and run).

    python3 scripts/make_fuzz_seeds.py OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
VOCAB = 32
MERGES = 8
VOCAB_TENSORS = ("token_embd.weight", "output.weight")


def field_value(field):
    """The field's value as GGUFWriter.add_key_value takes it."""
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def shrink(src: Path, dst: Path):
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    # GGUFWriter writes general.architecture itself.
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        val = field_value(field)
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            val = val[:VOCAB]
        elif key == "tokenizer.ggml.merges":
            val = val[:MERGES]
        elif key.endswith(".vocab_size"):
            val = VOCAB
        elif key.startswith("tokenizer.ggml.") and key.endswith("_token_id") and val >= VOCAB:
            val = VOCAB - 1
        w.add_key_value(key, val, vtype, sub)
    for t in r.tensors:
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        ne = [int(x) for x in t.shape]
        rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
        data = raw.reshape(rows, -1)
        if t.name in VOCAB_TENSORS and len(ne) == 2:
            data = data[:VOCAB]
            ne = [ne[0], VOCAB]
        # raw_shape: numpy order (ne reversed), the last dimension in bytes.
        byte_shape = ne[1:][::-1] + [data.shape[1]]
        w.add_tensor(t.name, np.ascontiguousarray(data), raw_shape=byte_shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(GOLDEN.glob("*.gguf")):
        shrink(src, out / src.name)
        print(f"{out / src.name}: {src.stat().st_size} -> {(out / src.name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
