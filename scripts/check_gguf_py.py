#!/usr/bin/env python3
"""Cross-check moeq's GGUF writer with gguf-py, llama.cpp's own Python reader.

For every golden GGUF under tests/fixtures/golden, moeq writes it back (as one file and
split into shards); gguf-py must read every file moeq wrote, with the same metadata keys,
value types and values, and the same tensor names, types, shapes and bytes as gguf-py reads
from the source.

    python3 scripts/check_gguf_py.py [--moeq target/release/moeq]

Needs: pip install gguf numpy
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPLIT_KEYS = {"split.no", "split.count", "split.tensors.count"}


def metadata(reader):
    """Key -> (value types, raw value bytes), without gguf-py's pseudo-keys."""
    return {
        name: ([t.name for t in field.types], [bytes(field.parts[i]) for i in field.data])
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


def split_value(reader, key):
    field = reader.fields[key]
    return [t.name for t in field.types], field.contents()


def tensors(readers):
    out = {}
    for reader in readers:
        for t in reader.tensors:
            assert t.name not in out, f"tensor {t.name} appears twice"
            out[t.name] = (t.tensor_type.name, [int(d) for d in t.shape], np.asarray(t.data).tobytes())
    return out


def compare(source, written_files):
    src = GGUFReader(source)
    readers = [GGUFReader(p) for p in written_files]
    want_meta = metadata(src)
    got_meta = metadata(readers[0])
    if len(written_files) > 1:
        count = len(written_files)
        for i, r in enumerate(readers):
            m = metadata(r)
            assert split_value(r, "split.no") == (["UINT16"], i)
            assert split_value(r, "split.count") == (["UINT16"], count)
            assert split_value(r, "split.tensors.count") == (["INT32"], len(src.tensors))
            if i > 0:
                assert set(m) == SPLIT_KEYS, f"shard {i} carries {sorted(set(m) - SPLIT_KEYS)}"
        got_meta = {k: v for k, v in got_meta.items() if k not in SPLIT_KEYS}
    assert list(got_meta) == list(want_meta), "metadata keys or their order differ"
    for key, want in want_meta.items():
        assert got_meta[key] == want, f"{key}: {got_meta[key]!r} != {want!r}"
    want_t = tensors([src])
    got_t = tensors(readers)
    assert list(got_t) == list(want_t), "tensor names or their order differ"
    for name, want in want_t.items():
        got = got_t[name]
        assert got[0] == want[0], f"{name}: type {got[0]} != {want[0]}"
        assert got[1] == want[1], f"{name}: shape {got[1]} != {want[1]}"
        assert got[2] == want[2], f"{name}: tensor bytes differ"
    return len(want_meta), len(want_t)


def write_with_gguf_py(source, out_path, split_max_size):
    """Writes `source` again with gguf-py's GGUFWriter (as convert_hf_to_gguf.py does)."""
    from gguf import GGUFValueType, GGUFWriter

    src = GGUFReader(source)
    arch = src.fields["general.architecture"].contents()
    writer = GGUFWriter(out_path, arch, split_max_size=split_max_size)
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in src.tensors:
        data = np.asarray(t.data)
        byte_shape = list(reversed([int(d) for d in t.shape]))
        raw = data.view(np.uint8).reshape(byte_shape[:-1] + [-1]) if t.tensor_type.name not in ("F32", "F16") else data
        writer.add_tensor(t.name, raw, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moeq", default=str(ROOT / "target/release/moeq"))
    args = ap.parse_args()
    goldens = sorted((ROOT / "tests/fixtures/golden").glob("*.gguf"))
    assert goldens, "no golden GGUFs found"
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for source in goldens:
            for split in (None, "60K"):
                out_dir = tmp / f"{source.stem}-{split or 'single'}"
                out_dir.mkdir()
                cmd = [args.moeq, "convert", str(source), "-o", str(out_dir / "out.gguf"), "--quiet"]
                if split:
                    cmd += ["--split-max-size", split]
                subprocess.run(cmd, check=True, capture_output=True)
                files = sorted(out_dir.glob("*.gguf"))
                if split:
                    assert len(files) > 1, f"{source.name}: expected shards, got {files}"
                n_kv, n_t = compare(source, files)
                # gguf-py's own writer, given the same model and limit, writes the same bytes.
                ref_dir = tmp / f"{out_dir.name}-gguf-py"
                ref_dir.mkdir()
                size = int(split[:-1]) * 1000 if split else 0
                write_with_gguf_py(source, ref_dir / "out.gguf", size)
                ref_files = sorted(ref_dir.glob("*.gguf"))
                assert [f.name for f in ref_files] == [f.name for f in files], (ref_files, files)
                for ours, theirs in zip(files, ref_files):
                    assert ours.read_bytes() == theirs.read_bytes(), f"{ours.name} differs from gguf-py's"
                checked += len(files)
                print(f"ok  {source.name:<32} {'split ' + split if split else 'single':<10} "
                      f"{len(files)} file(s), {n_kv} keys, {n_t} tensors, same bytes as gguf-py's writer")
    print(f"gguf-py read all {checked} files moeq wrote: metadata and tensors identical")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
