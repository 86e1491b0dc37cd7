#!/usr/bin/env bash
# DeepSeek-V3 FP8 benchmark: a checkpoint of DeepSeek-V3's real widths in the released FP8
# layout (e4m3 weights + weight_scale_inv per 128×128 block; scripts/make_deepseek_bench.py,
# fewer layers and routed experts than the release) → Q4_K_M GGUF.
#
#   moeq:      moeq convert DIR -o OUT --type Q4_K_M        (one pass, FP8 read directly), RUNS times
#   llama.cpp: convert_hf_to_gguf.py DIR --outtype bf16      (it dequantizes the FP8 weights)
#              then llama-quantize BF16 OUT Q4_K_M $(nproc)
#   baseline:  cat of the checkpoint's bytes to /dev/null, then sync
#
#   scripts/bench_deepseek.sh [LAYERS] [EXPERTS] [RUNS]      (defaults 2 6 2: one dense layer, one MoE)
#   env: DS_BENCH_DIR (default /work/tmp-ds, deleted at the end), LLAMA_CPP, LLAMA_QUANTIZE
#
# Each step starts with the checkpoint's pages evicted from the page cache (posix_fadvise
# DONTNEED on every file: unprivileged, so "cold-ish": drop_caches needs root) and ends with its
# output on disk (a `sync` inside the timed command). Reported per step: wall time, CPU time
# (user + sys, of the process and its children) and peak RSS (/usr/bin/time). The checkpoint
# is deleted after the converter step, so that checkpoint + bf16 GGUF + output never sit on
# the disk together; the moeq output is hashed and deleted before the converter runs.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-2}
experts=${2:-6}
runs=${3:-2}
work=${DS_BENCH_DIR:-/work/tmp-ds}
llama=${LLAMA_CPP:-/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp}
quantize=${LLAMA_QUANTIZE:-/work/llama/build/bin/llama-quantize}
src=$work/ds-l${layers}-e${experts}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
[ -f "$src/config.json" ] || python3 scripts/make_deepseek_bench.py "$src" --layers "$layers" --experts "$experts"
cargo build --release --quiet
bytes=$(cat "$src"/*.safetensors | wc -c)

evict() { # files...: drop their clean pages from the page cache
    sync
    python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
timed() { # label, shell command: prints wall, user+sys, peak RSS; returns wall on stdout
    local label=$1; shift
    /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" sh -c "$1" > "$work/log.txt" 2>&1 || { cat "$work/log.txt" >&2; exit 1; }
    read -r secs user sys kb < "$work/time.txt"
    printf '%-40s %7.1f s wall %7.1f s CPU (user %.1f + sys %.1f)  peak RSS %7.1f MB\n' \
        "$label" "$secs" "$(echo "$user + $sys" | bc)" "$user" "$sys" "$(echo "$kb / 1024" | bc -l)" >&2
    echo "$secs"
}

printf 'checkpoint %s: %d layers (1 dense), %d routed experts + 1 shared, %.2f GB; load %s\n' \
    "$src" "$layers" "$experts" "$(echo "$bytes / 1000000000" | bc -l)" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
evict "$src"/*.safetensors
timed "cat > /dev/null + sync" "cat $src/*.safetensors > /dev/null && sync" > /dev/null
for i in $(seq "$runs"); do
    evict "$src"/*.safetensors
    timed "moeq convert --type Q4_K_M (run $i)" "target/release/moeq convert $src -o $work/moeq.gguf --type Q4_K_M -q && sync" > /dev/null
    ours=$(sha256sum "$work/moeq.gguf" | cut -d' ' -f1)
    out_bytes=$(stat -c %s "$work/moeq.gguf")
    rm -f "$work/moeq.gguf"
done

# llama.cpp's converter, with the pre-tokenizer set by family as for the fixtures (the
# fixture tokenizer's hash is not in its table; scripts/make_deepseek_fixtures.py does the same).
convert="import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + '/gguf-py');
import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tok: 'deepseek-v3';
sys.argv = ['convert_hf_to_gguf.py', sys.argv[2], '--outtype', 'bf16', '--outfile', sys.argv[3]];
import convert_hf_to_gguf as c; c.main()"
evict "$src"/*.safetensors
step1=$(NO_LOCAL_GGUF=1 PYTHONPATH="$llama/gguf-py" timed "convert_hf_to_gguf.py --outtype bf16" \
    "python3 -c \"$convert\" $llama $src $work/bf16.gguf && sync")
rm -rf "$src"
evict "$work/bf16.gguf"
step2=$(timed "llama-quantize BF16 -> Q4_K_M ($(nproc) threads)" "$quantize $work/bf16.gguf $work/llama.gguf Q4_K_M $(nproc) && sync")
theirs=$(sha256sum "$work/llama.gguf" | cut -d' ' -f1)
printf 'output %.2f GB; llama.cpp total %.1f s wall\n' "$(echo "$out_bytes / 1000000000" | bc -l)" "$(echo "$step1 + $step2" | bc)" >&2
if [ "$ours" = "$theirs" ]; then echo "outputs byte-identical (sha256 $ours)" >&2; else echo "outputs DIFFER: moeq $ours, llama.cpp $theirs" >&2; fi
