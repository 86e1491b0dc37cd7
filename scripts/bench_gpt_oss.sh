#!/usr/bin/env bash
# gpt-oss conversion benchmark: wall time and peak RSS of `moeq convert` on a full-width
# checkpoint in HF MXFP4 layout, against `cat` of the same bytes to a file plus `sync`.
#
#   scripts/bench_gpt_oss.sh [LAYERS] [EXPERTS] [RUNS] [mxfp4|bf16] [CONVERT ARGS]
#   (defaults: 4 32 3 mxfp4 = gpt-oss-20b width in the released layout; bf16 = fine-tune layout;
#   CONVERT ARGS e.g. "--format mlx --type q4 --group-size 32" write a folder instead of a GGUF)
#
# The checkpoint is generated once under bench-data/ (scripts/make_gpt_oss_checkpoint.py).
# Input pages are warmed before each run; every run ends with the data on disk (moeq fsyncs
# its output, cat is followed by sync). Reports the best of RUNS for each.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-4}
experts=${2:-32}
runs=${3:-3}
layout=${4:-mxfp4}
convert_args=${5:-}
if [ "$layout" = bf16 ]; then
    src=bench-data/gpt-oss-bf16-l${layers}-e${experts}
    gen_flags=--bf16
else
    src=bench-data/gpt-oss-l${layers}-e${experts}
    gen_flags=
fi
out=bench-data/bench-out.gguf
[[ "$convert_args" == *--format* ]] && out=bench-data/bench-out.d
[ -f "$src/config.json" ] || python3 scripts/make_gpt_oss_checkpoint.py "$src" --layers "$layers" --experts "$experts" $gen_flags
cargo build --release --quiet
bytes=$(cat "$src"/*.safetensors | wc -c)

best_cat=999999
best_moeq=999999
max_rss=0
for _ in $(seq "$runs"); do
    cat "$src"/*.safetensors > /dev/null
    rm -rf "$out"; sync
    t0=$(date +%s.%N)
    cat "$src"/*.safetensors > bench-data/bench-cat && sync
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    best_cat=$(echo "if ($t < $best_cat) $t else $best_cat" | bc)

    cat "$src"/*.safetensors > /dev/null
    rm -rf "$out" bench-data/bench-cat; sync
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    /usr/bin/time -f "%M" -o bench-data/rss.txt target/release/moeq convert "$src" -o "$out" -q $convert_args 2>/dev/null
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    best_moeq=$(echo "if ($t < $best_moeq) $t else $best_moeq" | bc)
    rss=$(cat bench-data/rss.txt)
    [ "$rss" -gt "$max_rss" ] && max_rss=$rss
done
out_bytes=$(du -sb "$out" | cut -f1)
rm -rf "$out" bench-data/rss.txt
printf 'checkpoint     %s (%d layers, %d experts, %.2f GB)\n' "$src" "$layers" "$experts" "$(echo "$bytes / 1000000000" | bc -l)"
printf 'cat + sync     %6.2f s  (%.2f GB/s)\n' "$best_cat" "$(echo "$bytes / $best_cat / 1000000000" | bc -l)"
printf 'output         %.2f GB (moeq convert %s)\n' "$(echo "$out_bytes / 1000000000" | bc -l)" "$convert_args"
printf 'moeq convert   %6.2f s  (%.2f GB/s), %.2f x the copy\n' "$best_moeq" "$(echo "$bytes / $best_moeq / 1000000000" | bc -l)" "$(echo "$best_moeq / $best_cat" | bc -l)"
printf 'peak RSS       %6.1f MB\n' "$(echo "$max_rss / 1024" | bc -l)"
