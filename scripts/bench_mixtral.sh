#!/usr/bin/env bash
# Mixtral quantization benchmark: a bf16 Mixtral-shaped checkpoint (real 8x7B widths, 2 layers,
# 6.3 GB; scripts/make_mixtral_checkpoint.py) → GGUF of each TYPE (default Q4_K_M).
#
#   moeq:      moeq convert DIR -o OUT --type TYPE [--imatrix IM]             (one pass)
#   llama.cpp: convert_hf_to_gguf.py DIR --outtype bf16 (once, its time added to every type),
#              then llama-quantize [--imatrix IM] BF16 OUT TYPE NPROC
#
#   LLAMA_QUANTIZE=/path/to/llama-quantize [LLAMA_CPP=/path/to/llama.cpp] [IMATRIX=FILE] \
#       scripts/bench_mixtral.sh [LAYERS] [TYPE[+imat]...]
#
# e.g. scripts/bench_mixtral.sh 2 Q3_K_M IQ4_XS IQ2_XXS+imat. A TYPE+imat build uses an
# importance matrix: $IMATRIX, else one made (untimed) by llama-imatrix (LLAMA_IMATRIX, default
# beside llama-quantize) on the bf16 GGUF with CPython's pydoc_data.topics text, -c 128 --chunks 4.
# Times are wall seconds (the ratios) and CPU seconds (user + system, telling on a busy machine)
# and peak RSS from /usr/bin/time, the checkpoint in the page cache.
#
# llama-quantize: build llama.cpp from llama-cpp-python's sdist with cmake
# (cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON && cmake --build
# build --target llama-quantize). The converter step needs torch and sentencepiece; without
# LLAMA_CPP it is replaced by moeq's bf16 conversion (byte-identical to the converter's on the
# fixtures), so the llama.cpp figure is then a lower bound. Both outputs are compared.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-2}
shift || true
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_K_M)
src=bench-data/mixtral-l${layers}
[ -f "$src/config.json" ] || python3 scripts/make_mixtral_checkpoint.py "$src" --layers "$layers"
cargo build --release --quiet
: "${LLAMA_QUANTIZE:?set LLAMA_QUANTIZE to a llama-quantize binary}"
timed() { # label, command...
    local label=$1; shift
    /usr/bin/time -f "%e %M %U %S" -o bench-data/time.txt "$@" > bench-data/step.log 2>&1 \
        || { echo "$label failed:" >&2; tail -5 bench-data/step.log >&2; exit 1; }
    read -r secs kb user sys < bench-data/time.txt
    printf '%-52s %8.1f s wall %8.1f s CPU  peak RSS %7.1f MB\n' "$label" "$secs" "$(echo "$user + $sys" | bc)" \
        "$(echo "$kb / 1024" | bc -l)" >&2
    echo "$secs"
}
warm() { cat "$src"/*.safetensors > /dev/null; }
warm
if [ -n "${LLAMA_CPP:-}" ]; then
    step1=$(timed "convert_hf_to_gguf.py --outtype bf16" python3 "$LLAMA_CPP/convert_hf_to_gguf.py" "$src" --outtype bf16 --outfile bench-data/mx-bf16.gguf)
else
    echo "(LLAMA_CPP unset: the bf16 GGUF comes from moeq, the converter's time is not counted)" >&2
    target/release/moeq convert "$src" -o bench-data/mx-bf16.gguf -q
    step1=0
fi
imatrix=${IMATRIX:-}
for t in "${types[@]}"; do
    if [[ $t == *+imat && -z $imatrix ]]; then
        imatrix=bench-data/mx-imatrix.gguf
        python3 -c 'import pydoc_data.topics as t; print(" ".join(list(t.topics.values())[:40]))' > bench-data/text.txt
        "${LLAMA_IMATRIX:-$(dirname "$LLAMA_QUANTIZE")/llama-imatrix}" -m bench-data/mx-bf16.gguf -f bench-data/text.txt \
            -o "$imatrix" -c 128 --chunks 4 -t "$(nproc)" > bench-data/imatrix.log 2>&1 \
            || { tail -5 bench-data/imatrix.log >&2; exit 1; }
    fi
done
for t in "${types[@]}"; do
    type=${t%+imat}
    im=()
    [[ $t == *+imat ]] && im=(--imatrix "$imatrix")
    warm
    ours=$(timed "moeq convert --type $t" target/release/moeq convert "$src" -o bench-data/mx-moeq.gguf --type "$type" "${im[@]}" -q)
    step2=$(timed "llama-quantize BF16 → $t" "$LLAMA_QUANTIZE" "${im[@]}" bench-data/mx-bf16.gguf bench-data/mx-llama.gguf "$type" "$(nproc)")
    printf '%s: llama.cpp total %.1f s (converter %.1f + llama-quantize %.1f) vs moeq %.1f s: %.1fx\n' "$t" \
        "$(echo "$step1 + $step2" | bc)" "$step1" "$step2" "$ours" "$(echo "($step1 + $step2) / $ours" | bc -l)"
    if cmp -s bench-data/mx-moeq.gguf bench-data/mx-llama.gguf; then echo "$t: outputs byte-identical"; else echo "$t: outputs DIFFER"; fi
    rm -f bench-data/mx-moeq.gguf bench-data/mx-llama.gguf
done
rm -f bench-data/mx-bf16.gguf bench-data/mx-imatrix.gguf bench-data/text.txt bench-data/time.txt bench-data/step.log \
    bench-data/imatrix.log
