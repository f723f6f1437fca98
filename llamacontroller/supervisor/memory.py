"""How much memory a model will need, and how much the machine has.

Estimate = weights (the GGUF's tensor bytes; llama.cpp maps them) + KV cache + a fixed overhead.
KV cache = layers x ctx x kv_heads x (key_len + value_len) x 2 bytes (f16). For models with
sliding-window attention (Gemma 3) most layers only keep the window, which we account for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil

from llamacontroller.supervisor.gguf_header import read_header

log = logging.getLogger(__name__)

# Compute buffers, the server's own heap, tokenizer tables: measured ~40-70 MB on CPU here.
OVERHEAD_BYTES = 64 * 1024 * 1024
F16 = 2


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    architecture: str | None
    metadata: dict[str, Any]
    file_size: int
    tensor_bytes: int

    def get(self, key: str, default: Any = None) -> Any:
        arch = self.architecture or ""
        return self.metadata.get(f"{arch}.{key}", default)


@lru_cache(maxsize=64)
def _read_gguf_cached(path: str, mtime: float) -> GGUFInfo:
    header = read_header(Path(path))
    return GGUFInfo(
        architecture=header.metadata.get("general.architecture"),
        metadata=header.metadata,
        file_size=Path(path).stat().st_size,
        tensor_bytes=header.tensor_bytes,
    )


def read_gguf(path: Path) -> GGUFInfo:
    return _read_gguf_cached(str(path), path.stat().st_mtime)


def kv_cache_bytes(info: GGUFInfo, ctx: int) -> int:
    layers = int(info.get("block_count", 0))
    heads = int(info.get("attention.head_count", 1) or 1)
    kv_heads = info.get("attention.head_count_kv", heads)
    kv_heads = int(max(kv_heads) if isinstance(kv_heads, list) else kv_heads)
    embd = int(info.get("embedding_length", 0))
    key_len = int(info.get("attention.key_length", embd // heads if heads else 0))
    value_len = int(info.get("attention.value_length", key_len))
    per_token_layer = kv_heads * (key_len + value_len) * F16
    window = info.get("attention.sliding_window")
    if window and info.architecture and info.architecture.startswith("gemma3"):
        # Gemma 3: five local (sliding-window) layers for every global one.
        global_layers = layers // 6
        local_layers = layers - global_layers
        local_ctx = min(ctx, int(window) + 512)  # llama.cpp keeps a batch beyond the window
        return per_token_layer * (global_layers * ctx + local_layers * local_ctx)
    return per_token_layer * layers * ctx


def estimate_bytes(path: Path, ctx: int) -> int | None:
    """Bytes the engine will need for this model, or None when the file cannot be read."""
    try:
        info = read_gguf(path)
    except Exception as exc:
        log.debug("cannot read GGUF %s: %s", path, exc)
        return None
    return info.tensor_bytes + kv_cache_bytes(info, ctx) + OVERHEAD_BYTES


def available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def gpu_inventory() -> list[dict[str, Any]]:
    """GPUs seen through NVML: index, name, total and free bytes. Empty without NVIDIA GPUs."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({"index": index, "name": str(name), "total": int(mem.total), "free": int(mem.free)})
    finally:
        pynvml.nvmlShutdown()
    return gpus
