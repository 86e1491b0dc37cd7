#!/usr/bin/env bash
# Hashes every output moeq makes from tests/fixtures: the README's main job, every conversion
# the CLI tests and the CI scripts make (all gpt-oss layouts, Mixtral, Llama, Qwen3-MoE with and
# without a dense layer, Qwen2-MoE, DeepSeek-V3 in its FP8 and bf16 layouts; GGUF with no type
# and every --type; --format mlx with every type and group; --format hf; requantized and split
# goldens), eval --dump, verify --json and inspect. Prints `sha256  name` for every output file
# and for each command's exit status, stdout and stderr, sorted; run it with two binaries and
# diff the listings to show a change left every output byte-identical:
#
#   scripts/hash_outputs.sh target/release/moeq > after.txt
#   scripts/hash_outputs.sh /tmp/base/target/release/moeq > before.txt && diff before.txt after.txt
#
# Outputs are written under a temporary folder given as relative paths, so messages that name
# them are the same for every run; inputs are named by their path in this repository.
set -euo pipefail
MOEQ="$(realpath "${1:?usage: hash_outputs.sh MOEQ [FIXTURES]}")"
FX="$(realpath "${2:-$(dirname "$0")/../tests/fixtures}")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
mkdir out logs
n=0

# run NAME ARGS...: runs moeq, keeps its exit status, stdout and stderr as logs/NAME.*.
run() {
    local name="$1"
    shift
    n=$((n + 1))
    set +e
    "$MOEQ" "$@" > "logs/$name.stdout" 2> "logs/$name.stderr"
    echo $? > "logs/$name.status"
    set -e
}

CHECKPOINTS="gpt-oss/original gpt-oss/hf-mxfp4 gpt-oss/hf-bf16 mixtral/hf llama/hf qwen3-moe/hf qwen3-moe/hf-dense qwen2-moe/hf deepseek-v3/hf deepseek-v3/fp8 glm4-moe/hf glm4-moe/hf-qknorm glm4-moe-lite/hf minimax-m2/hf minimax-m2/fp8"
GGUF_TYPES="F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 MXFP4_MOE Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K"
tag() { echo "$1" | tr '/' '-'; }

# The README's main job.
run readme-gguf convert "$FX/gpt-oss/hf-mxfp4" -o out/gpt-oss.gguf
run readme-mxfp4-moe convert "$FX/gpt-oss/hf-mxfp4" -o out/gpt-oss-MXFP4_MOE.gguf --type MXFP4_MOE
run readme-mlx convert "$FX/gpt-oss/hf-mxfp4" -o out/gpt-oss-mlx --format mlx --type q4 --group-size 32 --verify
run readme-inspect inspect out/gpt-oss-MXFP4_MOE.gguf

# Checkpoints → GGUF: no type and every type; without vocabulary; another pre-tokenizer; split.
for c in $CHECKPOINTS; do
    t=$(tag "$c")
    run "ck-$t-default" convert "$FX/$c" -o "out/ck-$t-default.gguf" -q
    for ty in $GGUF_TYPES; do
        run "ck-$t-$ty" convert "$FX/$c" -o "out/ck-$t-$ty.gguf" --type "$ty" -q
    done
    run "ck-$t-novocab" convert "$FX/$c" -o "out/ck-$t-novocab.gguf" --no-vocab -q
    run "ck-$t-pre" convert "$FX/$c" -o "out/ck-$t-pre.gguf" --tokenizer-pre llama-bpe -q
    mkdir -p "out/ck-$t-split"
    run "ck-$t-split" convert "$FX/$c" -o "out/ck-$t-split/s.gguf" --split-max-size 100K -q
done
mkdir -p out/ck-mixtral-split-q8
run ck-mixtral-split-q8 convert "$FX/mixtral/hf" -o out/ck-mixtral-split-q8/s.gguf --type Q8_0 --split-max-size 60K -q

# Goldens: rewritten, split (gguf-py's check), and requantized to every type.
for g in "$FX"/golden/*.gguf; do
    b=$(basename "$g" .gguf)
    run "gg-$b-copy" convert "$g" -o "out/gg-$b-copy.gguf" -q
    for size in 60K 150K; do
        mkdir -p "out/gg-$b-split-$size"
        run "gg-$b-split-$size" convert "$g" -o "out/gg-$b-split-$size/s.gguf" --split-max-size "$size" -q
    done
    for ty in $GGUF_TYPES; do
        run "gg-$b-$ty" convert "$g" -o "out/gg-$b-$ty.gguf" --type "$ty" -q
    done
done
run gg-merge convert out/gg-mixtral-bf16-split-150K/s-00001-of-*.gguf -o out/gg-merged.gguf -q

# MLX builds: every type and group, overrides, shards.
for c in $CHECKPOINTS; do
    t=$(tag "$c")
    run "mlx-$t-default" convert "$FX/$c" -o "out/mlx-$t-default" --format mlx -q
    for ty in bf16 f16 f32 mxfp4; do
        run "mlx-$t-$ty" convert "$FX/$c" -o "out/mlx-$t-$ty" --format mlx --type "$ty" -q
    done
    for ty in q4 q8; do
        run "mlx-$t-$ty" convert "$FX/$c" -o "out/mlx-$t-$ty" --format mlx --type "$ty" -q
        for g in 32 64 128; do
            run "mlx-$t-$ty-$g" convert "$FX/$c" -o "out/mlx-$t-$ty-$g" --format mlx --type "$ty" --group-size "$g" -q
        done
    done
    run "mlx-$t-split" convert "$FX/$c" -o "out/mlx-$t-split" --format mlx --split-max-size 60K -q
done
run mlx-mixtral-override-head convert "$FX/mixtral/hf" -o out/mlx-mixtral-override-head --format mlx --type q8 \
    --quant-override lm_head=bf16 -q
run mlx-mixtral-override-router convert "$FX/mixtral/hf" -o out/mlx-mixtral-override-router --format mlx --type q8 \
    --quant-override '*.block_sparse_moe.gate=bf16' --verify -q
run mlx-gpt-oss-override convert "$FX/gpt-oss/hf-bf16" -o out/mlx-gpt-oss-override --format mlx --type q4 \
    --quant-override '*.mlp.router=q4:32' --quant-override 'model.layers.*.self_attn.*=bf16' -q

# Hugging Face gpt-oss builds.
for c in gpt-oss/original gpt-oss/hf-mxfp4 gpt-oss/hf-bf16; do
    t=$(tag "$c")
    run "hf-$t" convert "$FX/$c" -o "out/hf-$t" --format hf -q
    run "hf-$t-split" convert "$FX/$c" -o "out/hf-$t-split" --format hf --split-max-size 60K -q
done

# Refused requests (their messages).
run refuse-hf-llama convert "$FX/llama/hf" -o out/refused-hf --format hf
run refuse-mlx-gguf convert "$FX/golden/llama-bf16.gguf" -o out/refused-mlx --format mlx
run refuse-mlx-input convert "$FX/golden-mlx/llama-q4" -o out/refused.gguf

# eval (stdout and --dump) and inspect on every model moeq reads.
MODELS="$CHECKPOINTS"
for g in "$FX"/golden/*.gguf; do MODELS="$MODELS golden/$(basename "$g")"; done
for g in "$FX"/golden-mlx/*; do MODELS="$MODELS golden-mlx/$(basename "$g")"; done
TOKENS=3,17,99,5,64,1,127,42,8,23,77,300,411,12
for m in $MODELS; do
    t=$(tag "$m")
    run "eval-$t" eval "$FX/$m" --tokens "$TOKENS" --dump "out/eval-$t.safetensors" --top 5
    run "inspect-$t" inspect "$FX/$m"
    run "inspect-json-$t" inspect "$FX/$m" --json
done
for b in out/hf-gpt-oss-hf-bf16 out/mlx-mixtral-hf-q8 out/mlx-gpt-oss-original-default; do
    run "eval-$(basename "$b")" eval "$b" --tokens "$TOKENS" --dump "out/eval-$(basename "$b").safetensors"
done

# verify: lossless, lossy, builds, options.
verify_pair() {
    local name="$1"
    shift
    run "verify-$name" verify "$@" --json
}
verify_pair mxfp4 "$FX/gpt-oss/hf-mxfp4" "$FX/golden/gpt-oss-mxfp4.gguf"
verify_pair original "$FX/gpt-oss/original" "$FX/golden/gpt-oss-mxfp4.gguf"
verify_pair bf16 "$FX/gpt-oss/hf-bf16" "$FX/golden/gpt-oss-bf16.gguf"
verify_pair mixtral "$FX/mixtral/hf" "$FX/golden/mixtral-bf16.gguf"
verify_pair llama "$FX/llama/hf" "$FX/golden/llama-bf16.gguf"
verify_pair mxfp4-moe "$FX/gpt-oss/hf-mxfp4" "$FX/golden/gpt-oss-mxfp4-MXFP4_MOE.gguf"
verify_pair mxfp4-moe-full "$FX/gpt-oss/hf-mxfp4" "$FX/golden/gpt-oss-mxfp4-MXFP4_MOE.gguf" --full-forward
for ty in Q8_0 Q4_0 Q4_1 MXFP4_MOE; do
    verify_pair "bf16-$ty" "$FX/gpt-oss/hf-bf16" "$FX/golden/gpt-oss-bf16-$ty.gguf"
done
verify_pair mixtral-q4 "$FX/mixtral/hf" "$FX/golden/mixtral-bf16-Q4_0.gguf"
verify_pair llama-q8 "$FX/llama/hf" "$FX/golden/llama-bf16-Q8_0.gguf"
for f in qwen3-moe qwen2-moe; do
    verify_pair "$f" "$FX/$f/hf" "$FX/golden/$f-bf16.gguf"
    for ty in Q8_0 Q4_K_M MXFP4_MOE; do
        verify_pair "$f-$ty" "$FX/$f/hf" "$FX/golden/$f-bf16-$ty.gguf"
    done
    verify_pair "mlx-$f-q4" "$FX/$f/hf" "$FX/golden-mlx/$f-q4"
done
verify_pair deepseek-v3 "$FX/deepseek-v3/hf" "$FX/golden/deepseek-v3-bf16.gguf"
verify_pair deepseek-v3-fp8 "$FX/deepseek-v3/fp8" "$FX/golden/deepseek-v3-fp8.gguf" --max-kl 0.2
for ty in Q8_0 Q4_0 Q4_K_M; do
    verify_pair "deepseek-v3-$ty" "$FX/deepseek-v3/hf" "$FX/golden/deepseek-v3-bf16-$ty.gguf"
done
verify_pair deepseek-v3-fp8-f32 "$FX/deepseek-v3/fp8" out/ck-deepseek-v3-fp8-F32.gguf
verify_pair mlx-deepseek-v3-q4 "$FX/deepseek-v3/hf" "$FX/golden-mlx/deepseek-v3-q4"
verify_pair mlx-deepseek-v3-fp8-q4 "$FX/deepseek-v3/fp8" "$FX/golden-mlx/deepseek-v3-fp8-q4"
for f in glm4-moe glm4-moe-qknorm; do
    src="$FX/glm4-moe/hf"; [[ $f == glm4-moe-qknorm ]] && src="$FX/glm4-moe/hf-qknorm"
    verify_pair "$f" "$src" "$FX/golden/$f-bf16.gguf"
    for ty in Q8_0 Q4_0 Q4_K_M MXFP4_MOE; do
        verify_pair "$f-$ty" "$src" "$FX/golden/$f-bf16-$ty.gguf"
    done
done
verify_pair mlx-glm4-moe-q4 "$FX/glm4-moe/hf" "$FX/golden-mlx/glm4-moe-q4"
verify_pair mlx-glm4-moe-q8 "$FX/glm4-moe/hf" "$FX/golden-mlx/glm4-moe-q8"
verify_pair glm4-moe-lite "$FX/glm4-moe-lite/hf" "$FX/golden/glm4-moe-lite-bf16.gguf"
for ty in Q8_0 Q4_0 Q4_K_M MXFP4_MOE; do
    verify_pair "glm4-moe-lite-$ty" "$FX/glm4-moe-lite/hf" "$FX/golden/glm4-moe-lite-bf16-$ty.gguf"
done
verify_pair mlx-glm4-moe-lite-q4 "$FX/glm4-moe-lite/hf" "$FX/golden-mlx/glm4-moe-lite-q4"
verify_pair mlx-glm4-moe-lite-q8 "$FX/glm4-moe-lite/hf" "$FX/golden-mlx/glm4-moe-lite-q8"
verify_pair minimax-m2 "$FX/minimax-m2/hf" "$FX/golden/minimax-m2-bf16.gguf"
verify_pair minimax-m2-fp8 "$FX/minimax-m2/fp8" "$FX/golden/minimax-m2-fp8.gguf"
for ty in Q8_0 Q4_0 Q4_K_M MXFP4_MOE; do
    verify_pair "minimax-m2-$ty" "$FX/minimax-m2/hf" "$FX/golden/minimax-m2-bf16-$ty.gguf"
    verify_pair "minimax-m2-fp8-$ty" "$FX/minimax-m2/fp8" "$FX/golden/minimax-m2-bf16-$ty.gguf"
done
verify_pair mlx-minimax-m2-q4 "$FX/minimax-m2/fp8" "$FX/golden-mlx/minimax-m2-q4"
verify_pair mlx-minimax-m2-q8 "$FX/minimax-m2/fp8" "$FX/golden-mlx/minimax-m2-q8"
verify_pair mlx-qwen3-moe-dense "$FX/qwen3-moe/hf-dense" "$FX/golden-mlx/qwen3-moe-dense-q4"
verify_pair mlx-mxfp4 "$FX/gpt-oss/hf-mxfp4" "$FX/golden-mlx/gpt-oss-mxfp4"
verify_pair mlx-original "$FX/gpt-oss/original" "$FX/golden-mlx/gpt-oss-mxfp4"
verify_pair mlx-q4 "$FX/gpt-oss/hf-mxfp4" "$FX/golden-mlx/gpt-oss-q4"
verify_pair mlx-llama-q4 "$FX/llama/hf" "$FX/golden-mlx/llama-q4"
verify_pair mlx-llama-q8 "$FX/llama/hf" "$FX/golden-mlx/llama-q8"
verify_pair hf-build "$FX/gpt-oss/hf-mxfp4" out/hf-gpt-oss-hf-bf16
verify_pair ck-k-quant "$FX/mixtral/hf" out/ck-mixtral-hf-Q4_K_M.gguf
verify_pair ck-q6 "$FX/llama/hf" out/ck-llama-hf-Q6_K.gguf
verify_pair tokens "$FX/mixtral/hf" "$FX/golden/mixtral-bf16.gguf" --tokens 1,2,3,4
printf '1,2,3,4\n\n5 6 7\n' > tokens.txt
verify_pair tokens-file "$FX/mixtral/hf" "$FX/golden/mixtral-bf16.gguf" --tokens-file tokens.txt
verify_pair limits "$FX/gpt-oss/hf-bf16" "$FX/golden/gpt-oss-bf16-Q8_0.gguf" --max-kl 0 --min-top1 0.5
run verify-text verify "$FX/gpt-oss/hf-bf16" "$FX/golden/gpt-oss-bf16-Q4_0.gguf"
run verify-convert convert "$FX/mixtral/hf" -o out/verify-convert.gguf --type Q8_0 --verify -q

# Every file, and every command's status and messages.
find out logs -type f -print0 | sort -z | xargs -0 sha256sum
echo "# $n commands" >&2
