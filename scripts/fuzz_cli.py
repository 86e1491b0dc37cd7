#!/usr/bin/env python3
"""Mutation fuzzing of the moeq command line on the bundled fixtures.

Runs `moeq inspect`, `convert` (GGUF, --type, split, --format mlx and hf), `eval` and `verify`
(the release binary) on mutated copies of the golden GGUFs and of the safetensors fixture
folders: GGUF header fields (counts, metadata values and types, tensor dimensions, types,
offsets, names), tensor bytes and truncations; safetensors header length, JSON header edits
(dtype names, shapes, data offsets, entries dropped or added, metadata), tensor bytes and
truncations; config.json and model.safetensors.index.json edits; missing files.

Each run gets a fresh empty output folder. Counted: panics (exit 101 or "panicked"),
signals (killed by one), hangs (past --timeout), outputs left behind by a failed run (any
file in the output folder, temporary or not), temporary files left by a successful run,
inputs changed by the run, and exit statuses other than 0, 1 and 2. Goal: all zero.
Inputs that trip a counter are kept under --findings.

    python3 scripts/fuzz_cli.py --runs 20000 --seed 1 [--binary target/release/moeq]
"""

import argparse
import collections
import copy
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

GGUFS = [
    "llama-bf16-Q4_0.gguf",
    "llama-bf16.gguf",
    "gpt-oss-bf16-Q4_0.gguf",
    "gpt-oss-mxfp4.gguf",
    "mixtral-bf16-Q4_0.gguf",
    "gpt-oss-bf16-MXFP4_MOE.gguf",
]
FOLDERS = [
    "llama/hf",
    "gpt-oss/hf-mxfp4",
    "gpt-oss/hf-bf16",
    "gpt-oss/original",
    "mixtral/hf",
    "qwen2-moe/hf",
    "qwen3-moe/hf",
    "deepseek-v3/hf",
    "deepseek-v3/fp8",
    "glm4-moe/hf",
    "glm4-moe/hf-qknorm",
    "glm4-moe-lite/hf",
    "minimax-m2/hf",
    "minimax-m2/fp8",
    "golden-mlx/llama-q4",
    "golden-mlx/gpt-oss-mxfp4",
]
# The clean model each folder or GGUF is a copy of (for verify).
SOURCE_OF = {
    "llama": FIXTURES / "llama/hf",
    "gpt-oss": FIXTURES / "gpt-oss/hf-mxfp4",
    "mixtral": FIXTURES / "mixtral/hf",
}

EDGE_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 511, 512, 513, 1024,
             4096, 8208, 65535, 65536, 1 << 24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"), 70000.0]
JSON_EDGES = [0, -1, 1, 2, 3, 64, 65, 10**12, 2**64, 1.5, -0.5, "x", "", None, True, [], {}, [1, 2], "bf16"]


def json_edge(rng: random.Random):
    """One of JSON_EDGES, a copy: the lists and dicts there must not be shared between the
    places they are put (a later edit of one would reach the others, or make a cycle)."""
    return copy.deepcopy(rng.choice(JSON_EDGES))


DTYPES = ["BF16", "F16", "F32", "F64", "U8", "I8", "U32", "I32", "I64", "BOOL", "F8_E4M3", "F8_E5M2", "E8M0", "X", ""]


# --- GGUF ----------------------------------------------------------------------------------

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Gguf:
    """A GGUF file parsed into metadata items and tensor infos, rewritable after edits."""

    def __init__(self, data: bytes):
        self.pos = 0
        self.data = data
        magic, self.version = data[:4], struct.unpack_from("<I", data, 4)[0]
        assert magic == b"GGUF"
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
        self.pos = 24
        self.kv = []  # (key, type, value) with value in Python form
        for _ in range(n_kv):
            key = self.string()
            t = self.u32()
            self.kv.append([key, t, self.value(t)])
        self.tensors = []  # [name, dims, type, offset]
        for _ in range(n_tensors):
            name = self.string()
            n_dims = self.u32()
            dims = [self.u64() for _ in range(n_dims)]
            ty = self.u32()
            offset = self.u64()
            self.tensors.append([name, dims, ty, offset])
        align = next((v for k, t, v in self.kv if k == "general.alignment"), 32)
        self.data_start = (self.pos + align - 1) // align * align
        self.align = align

    def u32(self):
        v = struct.unpack_from("<I", self.data, self.pos)[0]
        self.pos += 4
        return v

    def u64(self):
        v = struct.unpack_from("<Q", self.data, self.pos)[0]
        self.pos += 8
        return v

    def string(self):
        n = self.u64()
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, t):
        if t in GGUF_SCALARS:
            fmt = GGUF_SCALARS[t]
            v = struct.unpack_from(fmt, self.data, self.pos)[0]
            self.pos += struct.calcsize(fmt)
            return v
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.u32(), self.u64()
            return (et, [self.value(et) for _ in range(n)])
        raise ValueError(t)

    @staticmethod
    def encode_value(t, v):
        if t in GGUF_SCALARS:
            fmt = GGUF_SCALARS[t]
            try:
                return struct.pack(fmt, v)
            except (struct.error, OverflowError, TypeError):
                return struct.pack(fmt, 0)
        if t == 8:
            v = v if isinstance(v, bytes) else str(v).encode()
            return struct.pack("<Q", len(v)) + v
        if t == 9:
            et, items = v
            return struct.pack("<IQ", et, len(items)) + b"".join(Gguf.encode_value(et, x) for x in items)
        return b""

    def encode(self) -> bytes:
        """The file with the current metadata and tensor infos, tensor data copied from the
        original data section at each tensor's (possibly edited) offset."""
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv)))
        for key, t, v in self.kv:
            out += struct.pack("<Q", len(key)) + key + struct.pack("<I", t) + self.encode_value(t, v)
        for name, dims, ty, offset in self.tensors:
            out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
            out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in dims)
            out += struct.pack("<IQ", ty & 0xFFFFFFFF, offset & (2**64 - 1))
        align = self.align if isinstance(self.align, int) and self.align > 0 else 32
        out += b"\0" * ((-len(out)) % align)
        out += self.data[self.data_start:]
        return bytes(out)


def mutate_gguf(data: bytes, rng: random.Random) -> bytes:
    try:
        g = None if rng.random() < 0.25 else Gguf(data)
    except (AssertionError, ValueError, struct.error, IndexError, UnicodeDecodeError):
        g = None
    if g is None:
        return mutate_bytes(data, rng, header=min(len(data), 65536))
    arch = next((v.decode() for k, t, v in g.kv if k == b"general.architecture"), "llama")
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.35:
            # A hyperparameter of the architecture.
            hp = [i for i, (k, t, v) in enumerate(g.kv) if k.startswith(arch.encode() + b".")]
            if hp:
                i = rng.choice(hp)
                k, t, v = g.kv[i]
                choice = rng.random()
                if choice < 0.15:
                    del g.kv[i]
                elif choice < 0.3:
                    g.kv[i][1] = rng.choice([4, 5, 6, 8, 10, 0, 7])
                    g.kv[i][2] = rng.choice(EDGE_INTS) if g.kv[i][1] != 6 else rng.choice(EDGE_FLOATS)
                elif t == 6 or t == 12:
                    g.kv[i][2] = rng.choice(EDGE_FLOATS)
                elif t == 8:
                    g.kv[i][2] = rng.choice([b"yarn", b"linear", b"none", b"", b"llama"])
                elif t in GGUF_SCALARS:
                    g.kv[i][2] = rng.choice(EDGE_INTS + [v + 1, max(v - 1, 0), v * 2, v // 2])
        elif r < 0.45:
            k = rng.choice([b"general.architecture", b"split.count", b"split.no", b"general.alignment"])
            t = 8 if k == b"general.architecture" else rng.choice([2, 4])
            val = rng.choice([b"llama", b"gpt-oss", b"qwen3moe", b""]) if t == 8 else rng.choice([0, 1, 2, 3, 64])
            g.kv = [e for e in g.kv if e[0] != k] + [[k, t, val]]
        elif r < 0.55 and g.kv:
            # Any entry: a token list shortened, a string changed, an entry dropped.
            i = rng.randrange(len(g.kv))
            k, t, v = g.kv[i]
            if t == 9:
                et, items = v
                g.kv[i][2] = (et, items[: rng.randrange(len(items) + 1)])
            elif rng.random() < 0.5:
                del g.kv[i]
        elif r < 0.85 and g.tensors:
            tensor = rng.choice(g.tensors)
            which = rng.random()
            if which < 0.4 and tensor[1]:
                d = rng.randrange(len(tensor[1]))
                tensor[1][d] = rng.choice(EDGE_INTS + [tensor[1][d] * 2, tensor[1][d] // 2, tensor[1][d] + 1])
            elif which < 0.5:
                tensor[1] = tensor[1][::-1] if rng.random() < 0.5 else tensor[1] + [1]
            elif which < 0.65:
                tensor[2] = rng.choice([0, 1, 2, 3, 6, 7, 8, 10, 12, 13, 14, 20, 30, 39, 16, 24, 99])
            elif which < 0.8:
                tensor[3] = rng.choice([0, 32, tensor[3] + 32, tensor[3] * 2, 2**63, tensor[3] - 32])
            else:
                tensor[0] = rng.choice([b"", b"blk.0.attn_q.weight", b"blk.9.attn_q.weight", b"token_embd.weight",
                                        tensor[0] + b"x", tensor[0].replace(b"0", b"1")])
        elif r < 0.9 and g.tensors:
            del g.tensors[rng.randrange(len(g.tensors))]
        else:
            g.version = rng.choice([1, 2, 3, 4, 0x03000000])
    out = g.encode()
    if rng.random() < 0.15:
        out = out[: rng.randrange(len(out))]
    elif rng.random() < 0.2:
        out = mutate_bytes(out, rng, header=len(out))
    return out


# --- safetensors ---------------------------------------------------------------------------

def split_st(data: bytes):
    n = struct.unpack_from("<Q", data, 0)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_st(header, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + body


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    try:
        header, body = split_st(data)
        if not isinstance(header, dict) or rng.random() < 0.2:
            raise ValueError
    except (ValueError, struct.error, UnicodeDecodeError, RecursionError):
        return mutate_bytes(data, rng, header=min(len(data), 4096))
    names = [k for k in header if k != "__metadata__"]
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        name = rng.choice(names) if names else None
        if name is None:
            break
        entry = header.get(name)
        if not isinstance(entry, dict):
            continue
        if r < 0.2:
            entry["dtype"] = rng.choice(DTYPES + [json_edge(rng)])
        elif r < 0.45:
            # An earlier edit of this run may have left a shape that is not a list.
            shape = entry.get("shape", [])
            shape = list(shape) if isinstance(shape, list) and all(type(v) is int for v in shape) else []
            if shape and rng.random() < 0.7:
                d = rng.randrange(len(shape))
                shape[d] = rng.choice(JSON_EDGES[:8] + [shape[d] * 2, shape[d] // 2, shape[d] + 1])
            else:
                shape = rng.choice([[], [1], shape[::-1], shape + [1], shape[1:], "x", None])
            entry["shape"] = shape
        elif r < 0.65:
            off = entry.get("data_offsets", [0, 0])
            if isinstance(off, list) and len(off) == 2:
                i = rng.randrange(2)
                off[i] = rng.choice(JSON_EDGES[:9] + [off[i] + 2, off[i] - 2, off[1 - i]])
                entry["data_offsets"] = off
        elif r < 0.75:
            del header[name]
        elif r < 0.82:
            header[name.replace("0", "1", 1) + rng.choice(["", "x", ".weight"])] = dict(entry)
        elif r < 0.9:
            header["__metadata__"] = rng.choice([{"format": "mlx"}, {"format": 1}, [], "x", {"format": "pt"}])
        else:
            header[rng.choice(JSON_EDGES[11:14]) or "k"] = json_edge(rng)
    out = join_st(header, body)
    if rng.random() < 0.15:
        out = out[: rng.randrange(len(out))]
    elif rng.random() < 0.2:
        body_start = 8 + struct.unpack_from("<Q", out, 0)[0]
        out = out[:body_start] + mutate_bytes(out[body_start:], rng, header=len(out) - body_start)
    return out


def mutate_json(data: bytes, rng: random.Random, prefer=()) -> bytes:
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng, header=len(data))
    if rng.random() < 0.1:
        return mutate_bytes(data, rng, header=len(data))
    if not isinstance(obj, dict):
        return json.dumps(rng.choice(JSON_EDGES)).encode()
    for _ in range(rng.randint(1, 3)):
        keys = list(obj.keys())
        target = obj
        if keys and rng.random() < 0.3:
            nested = [k for k in keys if isinstance(obj[k], dict)]
            if nested:
                target = obj[rng.choice(nested)]
                keys = list(target.keys())
        if not keys:
            target["x"] = 1
            continue
        k = rng.choice(keys)
        r = rng.random()
        if r < 0.2:
            del target[k]
        elif r < 0.85:
            v = target[k]
            if isinstance(v, (int, float)) and not isinstance(v, bool) and rng.random() < 0.5:
                target[k] = rng.choice([v + 1, v - 1, v * 2, v // 2 if isinstance(v, int) else v / 2, -v])
            else:
                target[k] = json_edge(rng)
        else:
            extra = rng.choice([("quantization_config", {"quant_method": rng.choice(["mxfp4", "fp8", "gptq", 1])}),
                                ("quantization", {"group_size": rng.choice([32, 64, 7]), "bits": rng.choice([4, 8, 3])}),
                                ("architectures", rng.choice([["LlamaForCausalLM"], ["GptOssForCausalLM"],
                                                              ["MixtralForCausalLM"], ["X"], [], "x"])),
                                ("tie_word_embeddings", rng.choice([True, False])),
                                ("rope_scaling", rng.choice([None, {"rope_type": "yarn", "factor": 0},
                                                             {"rope_type": "llama3", "factor": 8.0}]))])
            obj[extra[0]] = extra[1]
    return json.dumps(obj, indent=1).encode()


def mutate_bytes(data: bytes, rng: random.Random, header: int) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes(b)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(max(1, min(header, len(b))))
        r = rng.random()
        if r < 0.5:
            b[i] ^= 1 << rng.randrange(8)
        elif r < 0.8:
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 1])
        elif r < 0.9 and i + 4 <= len(b):
            b[i:i + 4] = struct.pack("<I", rng.choice(EDGE_INTS) & 0xFFFFFFFF)
        else:
            del b[i:i + rng.randint(1, 16)]
    return bytes(b)


def mutate_folder(src: Path, dst: Path, rng: random.Random):
    """Copies `src` to `dst` with one to three of its files mutated (or removed)."""
    shutil.copytree(src, dst)
    files = sorted(p for p in dst.iterdir() if p.is_file())
    weights = [p for p in files if p.suffix == ".safetensors"]
    for _ in range(rng.randint(1, 2)):
        files = sorted(p for p in dst.iterdir() if p.is_file())
        weights = [p for p in files if p.suffix == ".safetensors"]
        if not files:
            break
        r = rng.random()
        if r < 0.55 and weights:
            p = rng.choice(weights)
            p.write_bytes(mutate_safetensors(p.read_bytes(), rng))
        elif r < 0.85:
            p = dst / "config.json"
            if p.exists():
                p.write_bytes(mutate_json(p.read_bytes(), rng))
        elif r < 0.93:
            p = dst / "model.safetensors.index.json"
            if p.exists():
                p.write_bytes(mutate_json(p.read_bytes(), rng))
            elif weights:
                p = rng.choice(weights)
                p.write_bytes(mutate_safetensors(p.read_bytes(), rng))
        else:
            victim = rng.choice(files)
            if victim.exists():
                victim.unlink()


# --- runs ----------------------------------------------------------------------------------

def family_of(name: str):
    for f in SOURCE_OF:
        if f in name:
            return SOURCE_OF[f]
    return SOURCE_OF["llama"]


def commands(kind: str, inp: Path, out: Path, src: Path, rng: random.Random):
    """The argument lists to try on a mutated input."""
    i, o = str(inp), str(out / "out.gguf")
    choices = [
        ["inspect", i, "--json"],
        ["inspect", i],
        ["convert", i, "-o", o, "-q"],
        ["convert", i, "-o", o, "-q", "--type", rng.choice(["Q4_0", "Q8_0", "F16", "Q4_K_M", "MXFP4_MOE", "BF16"])],
        ["convert", i, "-o", o, "-q", "--split-max-size", rng.choice(["50K", "100K"])],
        ["eval", i, "--tokens", rng.choice(["1,2,3", "0", "511,0,7", "100000"])],
        ["verify", str(src), i, "--tokens", "1,2,3,4"],
        ["verify", i, str(src), "--tokens", "5,6", "--json"],
    ]
    if kind == "folder":
        d = str(out / "build")
        choices += [
            ["convert", i, "-o", d, "-q", "--format", "mlx"],
            ["convert", i, "-o", d, "-q", "--format", "mlx", "--type", rng.choice(["q4", "q8", "mxfp4", "f16"])],
            ["convert", i, "-o", d, "-q", "--format", "hf"],
            ["convert", i, "-o", o, "-q", "--no-vocab"],
        ]
    return rng.choice(choices)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "moeq"))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--findings", default=str(ROOT / "target" / "fuzz-cli-findings"))
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    findings = Path(args.findings)
    counts = collections.Counter()
    per_command = collections.Counter()
    start = time.time()
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="moeq-fuzz-") as tmp:
        tmp = Path(tmp)
        for run in range(args.runs):
            work = tmp / f"r{run}"
            work.mkdir()
            out = work / "out"
            out.mkdir()
            if rng.random() < 0.5:
                name = rng.choice(GGUFS)
                inp = work / name
                inp.write_bytes(mutate_gguf((FIXTURES / "golden" / name).read_bytes(), rng))
                kind = "gguf"
            else:
                name = rng.choice(FOLDERS)
                inp = work / name.replace("/", "-")
                mutate_folder(FIXTURES / name, inp, rng)
                kind = "folder"
            argv = commands(kind, inp, out, family_of(name), rng)
            before = digest(inp)
            try:
                p = subprocess.run([args.binary] + argv, capture_output=True, timeout=args.timeout, cwd=work, env=env)
                code, stderr = p.returncode, p.stderr.decode("utf-8", "replace")
            except subprocess.TimeoutExpired:
                code, stderr = None, "timeout"
            per_command[argv[0] + (" " + argv[argv.index("--format") + 1] if "--format" in argv else "")] += 1
            counts["runs"] += 1
            problems = []
            if code is None:
                problems.append("hang")
            elif code < 0:
                problems.append("signal")
            elif code == 101 or "panicked" in stderr:
                problems.append("panic")
            elif code not in (0, 1, 2):
                problems.append("exit_%d" % code)
            else:
                counts["exit_%d" % code] += 1
            left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
            if code != 0 and left:
                problems.append("left_behind")
            if code == 0 and any(".tmp" in x or "moeq-" in x for x in left):
                problems.append("temp_left")
            if digest(inp) != before:
                problems.append("input_changed")
            for prob in problems:
                counts[prob] += 1
                keep = findings / f"{prob}-{run}"
                keep.mkdir(parents=True, exist_ok=True)
                if inp.is_dir():
                    shutil.copytree(inp, keep / inp.name, dirs_exist_ok=True)
                elif inp.exists():
                    shutil.copy(inp, keep / inp.name)
                (keep / "command.txt").write_text(" ".join(argv) + "\n\n" + stderr[-4000:] + "\n" + "\n".join(left))
            shutil.rmtree(work, ignore_errors=True)
            if (run + 1) % 1000 == 0 and not args.json:
                print(f"{run + 1} runs, {time.time() - start:.0f} s: {dict(counts)}", file=sys.stderr, flush=True)
    result = {"runs": counts["runs"], "seconds": round(time.time() - start, 1),
              "panics": counts["panic"], "signals": counts["signal"], "hangs": counts["hang"],
              "left_behind": counts["left_behind"], "temp_left": counts["temp_left"],
              "inputs_changed": counts["input_changed"],
              "other_exits": sum(v for k, v in counts.items() if k.startswith("exit_") and k not in
                                 ("exit_0", "exit_1", "exit_2")),
              "exit_0": counts["exit_0"], "exit_1": counts["exit_1"], "exit_2": counts["exit_2"],
              "per_command": dict(per_command)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>15}: {v}")
    bad = result["panics"] + result["signals"] + result["hangs"] + result["left_behind"] + result["temp_left"]
    bad += result["inputs_changed"] + result["other_exits"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
