#!/usr/bin/env bash
# verify benchmark: wall time and peak RSS of `moeq verify` (default reference tokens) on a
# full-width gpt-oss checkpoint against its GGUF, beside the conversion that wrote that GGUF.
#
#   scripts/bench_verify.sh [LAYERS] [EXPERTS] [RUNS] [CONVERT ARGS] [VERIFY ARGS]
#   (defaults: 4 32 3 = gpt-oss-20b width in the released layout, 4.2 GB; CONVERT ARGS e.g.
#   "--type MXFP4_MOE" for a lossy output, VERIFY ARGS e.g. "--full-forward")
#
# The checkpoint is generated once under bench-data/ (scripts/make_gpt_oss_checkpoint.py).
# Input pages are warmed before each run; conversions end with the data on disk (moeq fsyncs).
# Reports the best of RUNS for each.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-4}
experts=${2:-32}
runs=${3:-3}
convert_args=${4:-}
verify_args=${5:-}
src=bench-data/gpt-oss-l${layers}-e${experts}
out=bench-data/bench-verify.gguf
[ -f "$src/config.json" ] || python3 scripts/make_gpt_oss_checkpoint.py "$src" --layers "$layers" --experts "$experts"
cargo build --release --quiet

best_convert=999999
best_verify=999999
max_rss=0
for _ in $(seq "$runs"); do
    cat "$src"/*.safetensors > /dev/null
    rm -f "$out"; sync
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    target/release/moeq convert "$src" -o "$out" -q $convert_args 2>/dev/null
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    best_convert=$(echo "if ($t < $best_convert) $t else $best_convert" | bc)

    cat "$src"/*.safetensors "$out" > /dev/null
    t0=$(date +%s.%N)
    status=0
    # shellcheck disable=SC2086
    /usr/bin/time -f "%M" -o bench-data/rss.txt target/release/moeq verify "$src" "$out" $verify_args \
        > bench-data/verify.txt 2>/dev/null || status=$?
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    [ "$status" -le 1 ] || { cat bench-data/verify.txt; exit 1; }
    best_verify=$(echo "if ($t < $best_verify) $t else $best_verify" | bc)
    rss=$(tail -1 bench-data/rss.txt)
    [ "$rss" -gt "$max_rss" ] && max_rss=$rss
done
bytes=$(cat "$src"/*.safetensors | wc -c)
printf 'checkpoint     %s (%d layers, %d experts, %.2f GB)\n' "$src" "$layers" "$experts" "$(echo "$bytes / 1000000000" | bc -l)"
printf 'moeq convert   %6.2f s  (%s)\n' "$best_convert" "${convert_args:-default GGUF}"
printf 'moeq verify    %6.2f s  (%s), %.2f x the conversion\n' "$best_verify" "${verify_args:-defaults}" "$(echo "$best_verify / $best_convert" | bc -l)"
printf 'peak RSS       %6.1f MB (verify)\n' "$(echo "$max_rss / 1024" | bc -l)"
grep -E "positions|taken from|^PASS|^FAIL" bench-data/verify.txt | sed 's/^ */  /'
rm -f "$out" bench-data/rss.txt bench-data/verify.txt
