#!/usr/bin/env bash
# Write throughput of `moeq convert` against `cat src > dst && sync`, and `moeq inspect` on a
# large model, on this machine. Numbers go to stdout.
#
#   scripts/bench_write.sh [LAYERS]     (10 layers: a 4.2 GB GGUF; data in ./bench-data)
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-10}
data=bench-data
mkdir -p "$data"
src=$data/big-$layers.gguf
[ -f "$src" ] || python3 scripts/make_big_gguf.py "$src" --layers "$layers"
cargo build --release --quiet
moeq=target/release/moeq
size=$(stat -c %s "$src")
cat "$src" > /dev/null   # both runs start with the source in the page cache

best() { sort -n | head -1; }
time_of() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }

cat_times=(); moeq_times=()
for run in 1 2 3; do
    rm -f "$data/cat.gguf" "$data/moeq.gguf"; sync
    cat_times+=("$(time_of bash -c "cat '$src' > '$data/cat.gguf' && sync")")
    rm -f "$data/cat.gguf"; sync
    moeq_times+=("$(time_of "$moeq" convert "$src" -o "$data/moeq.gguf" --quiet 2>/dev/null)")
done
cmp "$src" "$data/moeq.gguf"
rm -f "$data/moeq.gguf"
cat_best=$(printf '%s\n' "${cat_times[@]}" | best)
moeq_best=$(printf '%s\n' "${moeq_times[@]}" | best)
gb=$(echo "scale=3; $size / 1000000000" | bc)
echo "source: $src, $gb GB"
echo "cat src > dst && sync: runs ${cat_times[*]} s; best $cat_best s ($(echo "scale=2; $gb / $cat_best" | bc) GB/s)"
echo "moeq convert (fsync):  runs ${moeq_times[*]} s; best $moeq_best s ($(echo "scale=2; $gb / $moeq_best" | bc) GB/s)"
echo "moeq throughput / cat throughput: $(echo "scale=3; $cat_best / $moeq_best" | bc)"

peak() { /usr/bin/time -f "%e s, peak RSS %M KiB" "$@" > /dev/null; }
echo -n "inspect $src: "; peak "$moeq" inspect "$src" 2>&1 | tail -1
echo -n "inspect tiny fixture:          "; peak "$moeq" inspect tests/fixtures/golden/gpt-oss-mxfp4.gguf 2>&1 | tail -1
