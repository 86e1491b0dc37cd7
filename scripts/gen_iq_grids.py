#!/usr/bin/env python3
"""Write kernels/src/scalar/iq_grids.rs: the i-quant grids and lookup tables, as data.

The dequantization grids and sign tables come from ggml/src/ggml-common.h; the compressed
grids that ggml's quantizers build their search tables from (`kgrid_*` in `iq2xs_init_impl`
and `iq3xs_init_impl`) from ggml/src/ggml-quants.c, both of the llama.cpp vendored in
llama-cpp-python 0.3.36. Nothing is computed here: the numbers are copied as they are.

    python3 scripts/gen_iq_grids.py [--llama DIR]
"""

import argparse
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_LLAMA = "/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"

COMMON = [  # (C name, Rust name, Rust type, count, doc)
    ("kmask_iq2xs", "KMASK_IQ2XS", "u8", 8, "Bit `j` of a sign byte (`kmask_iq2xs`)."),
    ("ksigns_iq2xs", "KSIGNS_IQ2XS", "u8", 128,
     "7 stored sign bits → 8 signs with even parity (`ksigns_iq2xs`)."),
    ("iq2xxs_grid", "IQ2XXS_GRID", "u64", 256, "IQ2_XXS grid: 8 magnitudes per entry (`iq2xxs_grid`)."),
    ("iq2xs_grid", "IQ2XS_GRID", "u64", 512, "IQ2_XS grid (`iq2xs_grid`)."),
    ("iq2s_grid", "IQ2S_GRID", "u64", 1024, "IQ2_S grid (`iq2s_grid`)."),
    ("iq3xxs_grid", "IQ3XXS_GRID", "u32", 256, "IQ3_XXS grid: 4 magnitudes per entry (`iq3xxs_grid`)."),
    ("iq3s_grid", "IQ3S_GRID", "u32", 512, "IQ3_S grid (`iq3s_grid`)."),
    ("iq1s_grid", "IQ1S_GRID", "u64", 2048, "IQ1_S / IQ1_M grid: 8 values in {-1, 0, 1} per entry (`iq1s_grid`)."),
]
QUANTS = [
    ("kgrid_2bit_256", "KGRID_2BIT_256", 256, "IQ2_XXS search grid, 2 bits per position (`iq2xs_init_impl`)."),
    ("kgrid_2bit_512", "KGRID_2BIT_512", 512, "IQ2_XS search grid (`iq2xs_init_impl`)."),
    ("kgrid_1bit_2048", "KGRID_1BIT_2048", 2048, "IQ1_S / IQ1_M search grid (`iq2xs_init_impl`)."),
    ("kgrid_2bit_1024", "KGRID_2BIT_1024", 1024, "IQ2_S search grid (`iq2xs_init_impl`)."),
    ("kgrid_256", "KGRID_3BIT_256", 256, "IQ3_XXS search grid, 3 bits per position (`iq3xs_init_impl`)."),
    ("kgrid_512", "KGRID_3BIT_512", 512, "IQ3_S search grid (`iq3xs_init_impl`)."),
]


def numbers(text, start_pattern, count):
    m = re.search(start_pattern, text)
    assert m, start_pattern
    body = text[m.end():text.index("}" if "static const" in start_pattern else "GGML_TABLE_END", m.end())]
    vals = [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", body)]
    assert len(vals) == count, (start_pattern, len(vals), count)
    return vals


def table(name, ty, vals, doc, src, per_line):
    width = {"u8": 3, "u16": 5, "u32": 10, "u64": 18}[ty]
    fmt = (lambda v: f"{v:#0{width}x}") if ty in ("u32", "u64") else (lambda v: str(v))
    lines = [", ".join(fmt(v) for v in vals[i:i + per_line]) + "," for i in range(0, len(vals), per_line)]
    body = "\n".join("    " + line for line in lines)
    return f"/// {doc} From `{src}`.\n#[rustfmt::skip]\npub static {name}: [{ty}; {len(vals)}] = [\n{body}\n];\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama", default=DEFAULT_LLAMA)
    ap.add_argument("--out", default=str(ROOT / "kernels/src/scalar/iq_grids.rs"))
    args = ap.parse_args()
    src = pathlib.Path(args.llama) / "ggml/src"
    common = (src / "ggml-common.h").read_text()
    quants = (src / "ggml-quants.c").read_text()
    out = ["//! The i-quant grids and tables, copied as data from ggml (llama.cpp vendored in",
           "//! llama-cpp-python 0.3.36) by scripts/gen_iq_grids.py: the dequantization grids and sign",
           "//! tables from ggml/src/ggml-common.h, and the compressed grids that `iq2xs_init_impl` and",
           "//! `iq3xs_init_impl` (ggml/src/ggml-quants.c) build the quantizers' search tables from. Do not",
           "//! edit by hand.",
           "",
           "#![allow(clippy::unreadable_literal)]", ""]
    for cname, rname, ty, count, doc in COMMON:
        size = "NGRID_IQ1S" if cname == "iq1s_grid" else str(count)
        ctype = {"u8": "uint8_t", "u32": "uint32_t", "u64": "uint64_t"}[ty]
        vals = numbers(common, rf"GGML_TABLE_BEGIN\({ctype}, {cname}, {size}\)", count)
        per = {"u8": 16, "u32": 8, "u64": 4}[ty]
        out.append(table(rname, ty, vals, doc, "ggml-common.h", per))
    for cname, rname, count, doc in QUANTS:
        size = "NGRID_IQ1S" if count == 2048 else str(count)
        vals = numbers(quants, rf"static const uint16_t {cname}\[{size}\] = \{{", count)
        out.append(table(rname, "u16", vals, doc, "ggml-quants.c", 16))
    pathlib.Path(args.out).write_text("\n".join(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
