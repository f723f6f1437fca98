"""How much memory a model will need, and how much the machine has.

Estimate = weights (the GGUF's tensor bytes; llama.cpp maps them) + KV cache + a fixed overhead.
KV cache = layers x ctx x kv_heads x (key_len + value_len) x 2 bytes (f16). For models with
sliding-window attention (Gemma 3) most layers only keep the window, which we account for.
"""

from __future__ import annotations

import json
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


# ------------------------------------------------------------------------------ safetensors

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}


def safetensors_bytes(folder: Path) -> int:
    """Bytes of every tensor in a safetensors model folder, from the file headers only (an
    8-byte length, then JSON naming each tensor's byte range): no torch, nothing loaded."""
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= 100 * 1024 * 1024:
                raise ValueError(f"{file.name}: not a safetensors file")
            header = json.loads(f.read(length))
        total += sum(
            t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items() if name != "__metadata__"
        )
    if not total:
        raise ValueError(f"{folder}: no safetensors weights")
    return total


def hf_kv_bytes(config: dict[str, Any], ctx: int) -> int:
    """KV cache of one sequence of `ctx` tokens for a Hugging Face config.json, at its dtype."""
    text = config.get("text_config", config)
    layers = int(text.get("num_hidden_layers", 0))
    heads = int(text.get("num_attention_heads", 1) or 1)
    kv_heads = int(text.get("num_key_value_heads", heads) or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // heads)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return layers * ctx * kv_heads * head_dim * 2 * DTYPE_BYTES.get(dtype, 2)


def read_hf_config(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("config.json is not an object")
    return data


# ------------------------------------------------------------------------------------ GPUs


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    total: int
    free: int


def gpu_inventory() -> list[Gpu]:
    """GPUs seen through NVML (nvidia-ml-py): index, name, total and free bytes. Empty without an
    NVIDIA driver, which is the normal case on a CPU machine."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(index, name, int(mem.total), int(mem.free)))
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("NVML: %s", exc)
        return []
    finally:
        pynvml.nvmlShutdown()


@lru_cache(maxsize=1)
def cuda_present() -> bool:
    """Whether this machine has an NVIDIA GPU (asked once: GPUs do not come and go)."""
    return bool(gpu_inventory())


@dataclass(frozen=True, slots=True)
class Need:
    """What a model needs where: bytes of host RAM, and bytes of GPU memory in all."""

    ram: int
    vram: int = 0


def gguf_need(total: int, layers: int, gpu_layers: int) -> Need:
    """llama.cpp with `--n-gpu-layers N`: N of the model's layers (and their share of the
    weights and KV cache) live on the GPU, the rest in RAM. `total` is the CPU estimate."""
    if gpu_layers <= 0 or layers <= 0:
        return Need(total)
    share = min(gpu_layers, layers) / layers
    on_gpu = int((total - OVERHEAD_BYTES) * share)
    return Need(total - on_gpu, on_gpu + OVERHEAD_BYTES)


def place(
    need: Need, gpus: list[Gpu], *, pinned: list[int] | None = None, fraction: float | None = None
) -> list[int] | None:
    """The GPUs a model goes on, or None when it does not fit.

    - `pinned` (the model's `gpus:`): only those; the need is split evenly across them.
    - `fraction` (vLLM's gpu_memory_utilization): vLLM takes that share of *total* memory on each
      GPU it uses, whatever the model needs, and refuses to start if that much is not free.
    - otherwise the single GPU with the most free memory that holds the whole need; if none
      does, the fewest GPUs (most free first) whose free memory together holds it.
    A model needing no VRAM is placed on no GPU ([]).
    """
    if need.vram <= 0 and fraction is None:
        return []
    by_index = {g.index: g for g in gpus}
    if pinned:
        chosen = [by_index[i] for i in pinned if i in by_index]
        if len(chosen) != len(pinned):
            return None
        share = need.vram / len(chosen)
        ok = all(g.free >= (g.total * fraction if fraction else share) for g in chosen)
        return [g.index for g in chosen] if ok else None
    candidates = sorted(gpus, key=lambda g: g.free, reverse=True)
    if fraction is not None:
        fits = [g for g in candidates if g.free >= g.total * fraction and g.total * fraction >= need.vram]
        return [fits[0].index] if fits else None
    if candidates and candidates[0].free >= need.vram:
        return [candidates[0].index]
    indexes: list[int] = []
    room = 0
    for g in candidates:
        indexes.append(g.index)
        room += g.free
        if room >= need.vram:
            return indexes
    return None
