#!/usr/bin/env bash
# Builds llama.cpp's llama-quantize and llama-imatrix (and, on request, llama-perplexity) from
# the llama.cpp vendored in llama-cpp-python 0.3.36 — the version of the golden files and of
# scripts/check_quant_rules.py's and scripts/check_smollm2.py's expectations — into a cache
# folder that later runs reuse. Prints the folder holding the binaries.
#
#   scripts/build_llama_tools.sh [--with-perplexity] [CACHE_DIR]
#       (default CACHE_DIR: ${XDG_CACHE_HOME:-~/.cache}/moeq-ci/llama-0.3.36)
#
# Configured as /work/llama/build and CI's llama-cpp-python are (see
# /work/shared/fixtures/README.md): CMake Release (-O3 -DNDEBUG), GGML_NATIVE=OFF with AVX, AVX2,
# FMA, F16C and BMI2 — no AVX-512 and no AMX: built for the CPU it runs on, llama.cpp's AMX path
# crashes on small quantized models, and a build with AVX-512 dies on CPUs without it. Static
# libraries, so the binaries are self-contained and the sources and build tree are deleted
# afterwards. Only the named targets and what they link are compiled (ggml, llama,
# llama-common; 136 build steps: 7.3 CPU minutes, so about 5 minutes on 2 free cores — measured
# 11.8 minutes wall, download and configure included, on a shared 2-core machine at load 8).
#
# Needs: python3 with pip, a C/C++ compiler; cmake (PyPI's if none is installed), ninja if present. Environment:
# JOBS (parallel compile jobs; default: the number of CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(llama-quantize llama-imatrix)
if [ "${1:-}" = "--with-perplexity" ]; then
    targets+=(llama-perplexity)
    shift
fi
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/moeq-ci/llama-0.3.36}
version=0.3.36
flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DGGML_CCACHE=OFF
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
)
# The cache is valid for these flags and (at least) these targets; anything else is rebuilt.
stamp="llama-cpp-python==$version ${flags[*]}"
have_all() {
    [ "$(cat "$cache/bin/.stamp" 2>/dev/null)" = "$stamp" ] || return 1
    local t
    for t in "${targets[@]}"; do [ -x "$cache/bin/$t" ] || return 1; done
}
if have_all; then
    echo "$cache/bin"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A machine without cmake gets PyPI's (the one pip's build of llama-cpp-python would use);
# needed already by pip download below, which prepares the sdist's metadata with it.
if ! command -v cmake >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check cmake >&2
    PATH="$(python3 -c 'import cmake; print(cmake.CMAKE_BIN_DIR)'):$PATH"
fi
# pip download of an sdist prepares its metadata with the package's build backend.
python3 -m pip install --quiet --disable-pip-version-check scikit-build-core >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    --no-build-isolation -d "$work" "llama-cpp-python==$version" >&2
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S "$src" -B "$work/build" "${generator[@]}" "${flags[@]}" >"$work/cmake.log" 2>&1 ||
    { cat "$work/cmake.log" >&2; exit 1; }
t0=$SECONDS
cmake --build "$work/build" --parallel "${JOBS:-$(nproc)}" --target "${targets[@]}" >"$work/build.log" 2>&1 ||
    { tail -50 "$work/build.log" >&2; exit 1; }
echo "build_llama_tools: ${targets[*]} built in $((SECONDS - t0)) s" >&2

# Replace the cached binaries as a whole: a stale stamp is removed first, the new one written last.
if [ "$(cat "$cache/bin/.stamp" 2>/dev/null)" != "$stamp" ]; then rm -rf "$cache/bin"; fi
mkdir -p "$cache/bin"
rm -f "$cache/bin/.stamp"
for t in "${targets[@]}"; do
    cp "$work/build/bin/$t" "$cache/bin/$t.tmp"
    mv "$cache/bin/$t.tmp" "$cache/bin/$t"
done
echo "$stamp" >"$cache/bin/.stamp"
echo "$cache/bin"
