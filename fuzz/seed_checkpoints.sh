#!/bin/sh
# Seeds the checkpoint_load corpus from the fixtures with one safetensors file.
set -e
cd "$(dirname "$0")"
mkdir -p corpus/checkpoint_load
for d in llama/hf gpt-oss/hf-bf16 gpt-oss/original golden-mlx/llama-q4 golden-mlx/gpt-oss-mxfp4; do
    f=../tests/fixtures/$d
    { cat "$f/config.json"; printf '\n\000MOEQ-SAFETENSORS\000\n'; cat "$f/model.safetensors"; } \
        > "corpus/checkpoint_load/$(echo "$d" | tr / -)"
done
