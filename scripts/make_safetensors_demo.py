"""Turn the SmolLM2 GGUF from PyPI into a plain safetensors model directory (bf16), for the
vLLM and transformers demo models. Runs in the transformers engine venv (torch, transformers,
gguf); no hub is needed.

transformers loads a GGUF de-quantized, but refuses to `save_pretrained` a model loaded that way.
So: read the config and weights from the GGUF, build a plain model from the config without its
`quantization_config`, load the weights into it and save that, with the tokenizer (and its chat
template). Written to a temporary folder and renamed, so a half-made model is never used; a
finished one is left alone.

Usage: make_safetensors_demo.py GGUF DEST_DIR
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def convert(gguf: Path, dest: Path) -> None:
    if (dest / "model.safetensors").exists() and (dest / "config.json").exists():
        print(f"safetensors demo: {dest} in place", file=sys.stderr)
        return
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [key for key in missing if "lm_head" not in key]:  # tied embeddings
        sys.exit(f"safetensors demo: weights do not fit: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
    print(f"safetensors demo: {dest} ({size:.0f} MB) ok", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
