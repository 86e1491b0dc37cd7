#!/usr/bin/env bash
# How good is an importance matrix: builds quantized with moeq's matrix, with llama-imatrix's and
# with none, each measured by llama-perplexity --kl-divergence against the BF16 model's logits on
# text the matrices did not see.
#
#   scripts/kld_imatrix.sh MODEL_BF16.gguf BASE.kld MOEQ_IMATRIX LLAMA_IMATRIX [CHUNKS] [TYPES...]
#
# BASE.kld: `llama-perplexity -m MODEL_BF16.gguf -f EVAL.txt -c 512 --kl-divergence-base BASE.kld`;
# with CHUNKS it is cut to its first CHUNKS chunks first (its layout: "_logits_", n_ctx, n_vocab,
# n_chunk, the tokens, then per chunk (n_ctx - 1 - n_ctx/2) rows of nv uint16). TYPES default to
# Q4_K_M IQ4_XS Q3_K_M Q2_K. The builds are made by llama-quantize (BUILD=moeq: by
# `moeq convert --imatrix`; MOEQ names the binary, default target/release/moeq). Prints one line per type: mean KLD of each
# build and the ratio moeq / llama-imatrix. Work files go to $KLD_DATA (default bench-data/kld).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
base=$2
moeq_im=$3
llama_im=$4
chunks=${5:-0}
shift 5 || shift $#
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_K_M IQ4_XS Q3_K_M Q2_K)
llama=${LLAMA_BIN:-/work/llama/build/bin}
work=${KLD_DATA:-bench-data/kld}
mkdir -p "$work"
if [ "$chunks" != 0 ]; then
    python3 - "$base" "$work/base.kld" "$chunks" <<'EOF'
import struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, "rb") as f:
    head = f.read(20)
    assert head[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", head[8:])
    assert n <= n_chunk
    tokens = f.read(4 * n_ctx * n_chunk)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    per_chunk = (n_ctx - 1 - n_ctx // 2) * nv * 2
    with open(dst, "wb") as o:
        o.write(b"_logits_" + struct.pack("<Iii", n_ctx, n_vocab, n))
        o.write(tokens[: 4 * n_ctx * n])
        for _ in range(n):
            o.write(f.read(per_chunk))
EOF
    base=$work/base.kld
fi

kld() {
    "$llama/llama-perplexity" -m "$1" --kl-divergence-base "$base" --kl-divergence -c 512 > "$work/kld.log" 2>&1 \
        || { tail -5 "$work/kld.log"; exit 1; }
    grep -m1 "Mean    KLD:" "$work/kld.log" | awk '{print $3}'
}

build() { # TYPE IMATRIX OUT
    if [ "${BUILD:-llama}" = moeq ]; then
        ${MOEQ:-target/release/moeq} convert "$model" -o "$3" --type "$1" ${2:+--imatrix "$2"} -q > /dev/null
    else
        "$llama/llama-quantize" ${2:+--imatrix "$2"} "$model" "$3" "$1" > "$work/quantize.log" 2>&1 \
            || { tail -5 "$work/quantize.log"; exit 1; }
    fi
}

printf '%-8s %12s %12s %12s %10s\n' type "no imatrix" llama-imatrix "moeq" "moeq/llama"
for t in "${types[@]}"; do
    build "$t" "" "$work/none.gguf"
    none=$(kld "$work/none.gguf")
    build "$t" "$llama_im" "$work/llama.gguf"
    with_llama=$(kld "$work/llama.gguf")
    build "$t" "$moeq_im" "$work/moeq.gguf"
    with_moeq=$(kld "$work/moeq.gguf")
    printf '%-8s %12s %12s %12s %10.4f\n' "$t" "$none" "$with_llama" "$with_moeq" "$(echo "$with_moeq / $with_llama" | bc -l)"
    rm -f "$work/none.gguf" "$work/llama.gguf" "$work/moeq.gguf"
done
