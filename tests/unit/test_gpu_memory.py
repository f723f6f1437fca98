"""VRAM-aware placement and the safetensors estimate: pure functions, fake GPU inventories."""

import json
import struct
from pathlib import Path

from llamacontroller.supervisor.memory import (
    OVERHEAD_BYTES,
    Gpu,
    Need,
    gguf_need,
    hf_kv_bytes,
    place,
    safetensors_bytes,
)

GiB = 1024**3


def gpus(*free_total: tuple[float, float]) -> list[Gpu]:
    return [Gpu(i, f"fake {i}", int(total * GiB), int(free * GiB)) for i, (free, total) in enumerate(free_total)]


def test_no_vram_need_goes_on_no_gpu() -> None:
    assert place(Need(5 * GiB), gpus((10, 24))) == []


def test_the_gpu_with_most_free_memory_that_holds_it() -> None:
    inventory = gpus((6, 24), (20, 24), (12, 24))
    assert place(Need(1, 8 * GiB), inventory) == [1]
    assert place(Need(1, 21 * GiB), inventory) == [1, 2]  # split: fewest GPUs, most free first
    assert place(Need(1, 40 * GiB), inventory) is None  # 38 GiB free in all


def test_pinned_gpus_only_and_split_evenly() -> None:
    inventory = gpus((6, 24), (20, 24))
    assert place(Need(1, 10 * GiB), inventory, pinned=[0]) is None  # GPU 1 has room, but not ours
    assert place(Need(1, 10 * GiB), inventory, pinned=[0, 1]) == [0, 1]  # 5 GiB each
    assert place(Need(1, 14 * GiB), inventory, pinned=[0, 1]) is None  # 7 GiB on GPU 0 does not fit
    assert place(Need(1, 1), inventory, pinned=[3]) is None  # no such GPU


def test_vllm_takes_its_share_of_total_memory_whatever_it_needs() -> None:
    # gpu_memory_utilization 0.9 of a 24 GiB card: 21.6 GiB must be free, even for a small model.
    assert place(Need(1, 1 * GiB), gpus((20, 24)), fraction=0.9) is None
    assert place(Need(1, 1 * GiB), gpus((20, 24), (23, 24)), fraction=0.9) == [1]
    assert place(Need(1, 1 * GiB), gpus((20, 24)), fraction=0.5) == [0]
    assert place(Need(1, 30 * GiB), gpus((24, 24)), fraction=0.9) is None  # the model outgrows its share


def test_n_gpu_layers_moves_that_share_of_the_model_to_the_gpu() -> None:
    total = 4 * GiB + OVERHEAD_BYTES
    assert gguf_need(total, layers=32, gpu_layers=0) == Need(total)
    half = gguf_need(total, layers=32, gpu_layers=16)
    assert half.vram == 2 * GiB + OVERHEAD_BYTES and half.ram == total - 2 * GiB
    assert gguf_need(total, layers=32, gpu_layers=99).vram == 4 * GiB + OVERHEAD_BYTES  # 99 = all


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    header, offset = {}, 0
    sizes = {"BF16": 2, "F32": 4}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))
    return offset


def test_safetensors_bytes_come_from_the_headers_of_every_shard(tmp_path: Path) -> None:
    a = write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"w": ("BF16", [64, 32])})
    b = write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"v": ("F32", [10]), "u": ("BF16", [3])})
    assert safetensors_bytes(tmp_path) == a + b == 64 * 32 * 2 + 40 + 6


def test_kv_bytes_from_config_json() -> None:
    # SmolLM2-135M: 30 layers, 3 KV heads of 64: 2 (K and V) x 2 bytes (bf16) per value.
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    assert hf_kv_bytes(config, 2048) == 30 * 2048 * 3 * 64 * 2 * 2
