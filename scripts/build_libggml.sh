#!/usr/bin/env bash
# Builds ggml's base library (ggml_quantize_chunk, the reference quantizers, the gguf reader)
# from the llama.cpp vendored in llama-cpp-python 0.3.36 — the same source as the golden
# files — with plain gcc, in about half a minute. Prints the library's path.
#
# Built as CMake's Release build is (-O2 here, and -DNDEBUG): ggml's plain `assert`s (e.g.
# nearest_int's range check in ggml-quants.c) are compiled out, as in llama.cpp's own
# binaries and the library that wrote the test vectors (kernels/tests/data), which come from
# a Release-equivalent build. Without -DNDEBUG the library aborts on inputs that llama-quantize
# quantizes.
#
#   scripts/build_libggml.sh [OUT_DIR]      (default target/libggml)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/libggml}
lib="$out/libggml-base.so"
flags=(-O2 -DNDEBUG -fPIC -DGGML_BUILD -DGGML_SHARED -D_GNU_SOURCE -I "$out")
# A library built with other flags (an older script without -DNDEBUG) is rebuilt.
stamp="$lib.flags"
if [ -f "$lib" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${flags[*]}" ]; then echo "$lib"; exit 0; fi
mkdir -p "$out"
if [ ! -d "$out/llama_cpp_python-0.3.36" ]; then
    python3 -m pip install --quiet --disable-pip-version-check scikit-build-core >&2
    # pip download prepares the sdist's metadata with scikit-build-core, which needs a cmake:
    # PyPI's on a machine without one.
    if ! command -v cmake >/dev/null; then
        python3 -m pip install --quiet --disable-pip-version-check cmake >&2
        PATH="$(python3 -c 'import cmake; print(cmake.CMAKE_BIN_DIR)'):$PATH"
    fi
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
        --no-build-isolation -d "$out" llama-cpp-python==0.3.36 >&2
    tar xzf "$out/llama_cpp_python-0.3.36.tar.gz" -C "$out"
fi
ggml="$out/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml"
# The header CMake would generate.
printf '#pragma once\n#define GGML_VERSION "0.3.36-vendored"\n#define GGML_COMMIT "vendored"\n' > "$out/ggml-version.h"
stamp_flags="${flags[*]}"
flags+=(-I "$ggml/include" -I "$ggml/src")
objs=()
pids=()
for f in ggml.c ggml-alloc.c ggml-quants.c; do
    gcc -std=c11 "${flags[@]}" -c "$ggml/src/$f" -o "$out/$f.o" & pids+=($!); objs+=("$out/$f.o")
done
for f in ggml.cpp ggml-backend.cpp ggml-backend-meta.cpp ggml-opt.cpp ggml-threading.cpp gguf.cpp; do
    g++ -std=c++17 "${flags[@]}" -c "$ggml/src/$f" -o "$out/$f.o" & pids+=($!); objs+=("$out/$f.o")
done
for pid in "${pids[@]}"; do wait "$pid"; done
g++ -shared -o "$lib.tmp" "${objs[@]}" -lm -lpthread
mv "$lib.tmp" "$lib"
echo "$stamp_flags" > "$stamp"
echo "$lib"
