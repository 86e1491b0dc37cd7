#!/usr/bin/env bash
# Mixtral k-quant benchmark: a bf16 Mixtral-shaped checkpoint (real 8x7B widths, 2 layers,
# 6.3 GB; scripts/make_mixtral_checkpoint.py) → Q4_K_M GGUF.
#
#   moeq:      moeq convert DIR -o OUT --type Q4_K_M            (one pass)
#   llama.cpp: convert_hf_to_gguf.py DIR --outtype bf16, then llama-quantize BF16 OUT Q4_K_M
#
#   LLAMA_QUANTIZE=/path/to/llama-quantize [LLAMA_CPP=/path/to/llama.cpp] scripts/bench_mixtral.sh [LAYERS]
#
# llama-quantize: build llama.cpp from llama-cpp-python's sdist with cmake
# (cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON && cmake --build
# build --target llama-quantize). The converter step needs torch and sentencepiece; without
# LLAMA_CPP it is replaced by moeq's bf16 conversion (byte-identical to the converter's on the
# fixtures), so the llama.cpp figure is then a lower bound. Both outputs are compared.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-2}
src=bench-data/mixtral-l${layers}
[ -f "$src/config.json" ] || python3 scripts/make_mixtral_checkpoint.py "$src" --layers "$layers"
cargo build --release --quiet
: "${LLAMA_QUANTIZE:?set LLAMA_QUANTIZE to a llama-quantize binary}"
timed() { # label, command...
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o bench-data/time.txt "$@" > /dev/null 2>&1
    read -r secs kb < bench-data/time.txt
    printf '%-44s %8.1f s  peak RSS %7.1f MB\n' "$label" "$secs" "$(echo "$kb / 1024" | bc -l)" >&2
    echo "$secs"
}
cat "$src"/*.safetensors > /dev/null
ours=$(timed "moeq convert --type Q4_K_M" target/release/moeq convert "$src" -o bench-data/mx-moeq.gguf --type Q4_K_M -q)
if [ -n "${LLAMA_CPP:-}" ]; then
    step1=$(timed "convert_hf_to_gguf.py --outtype bf16" python3 "$LLAMA_CPP/convert_hf_to_gguf.py" "$src" --outtype bf16 --outfile bench-data/mx-bf16.gguf)
else
    echo "(LLAMA_CPP unset: the bf16 GGUF comes from moeq, the converter's time is not counted)" >&2
    target/release/moeq convert "$src" -o bench-data/mx-bf16.gguf -q
    step1=0
fi
step2=$(timed "llama-quantize BF16 → Q4_K_M" "$LLAMA_QUANTIZE" bench-data/mx-bf16.gguf bench-data/mx-llama.gguf Q4_K_M "$(nproc)")
printf 'llama.cpp total %.1f s vs moeq %.1f s: %.1fx\n' "$(echo "$step1 + $step2" | bc)" "$ours" "$(echo "($step1 + $step2) / $ours" | bc -l)"
if cmp -s bench-data/mx-moeq.gguf bench-data/mx-llama.gguf; then echo "outputs byte-identical"; else echo "outputs DIFFER"; fi
rm -f bench-data/mx-moeq.gguf bench-data/mx-llama.gguf bench-data/mx-bf16.gguf bench-data/time.txt
