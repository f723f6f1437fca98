"""Where things live on disk outside the config: the llama-server build cache."""

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
