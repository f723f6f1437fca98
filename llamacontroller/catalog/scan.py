"""The models folder as models: what a scan finds there, and how it merges with the YAML.

A GGUF file is a model (a split set once all its parts are there, named by its first part; an
`mmproj` file beside it is passed as `--mmproj`); a folder holding `config.json` and
`*.safetensors` is a model. Ids come from the names. Hidden entries (`.downloads`, where pulls
stage their files) are never looked at, so a partial download is never a model.

Merging: the YAML wins, then the catalog (pulled and converted models), then the scan; an entry
whose path or any name is taken already is left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from llamacontroller.catalog.hub import split_part
from llamacontroller.config import ModelEntry, ModelsConfig, model_key

MAX_DEPTH = 3


def model_id_for(name: str) -> str:
    """A file or folder name as a model id: unsafe characters become '-', at most 128."""
    stem = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    part = split_part(name)
    if part:
        stem = part[0]
    cleaned = re.sub(r"[^A-Za-z0-9._:-]+", "-", stem).strip("-._:")
    return (cleaned or "model")[:128]


def signature(models_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap fingerprint of the folder's tree: a rescan happens when it changes."""
    found = []
    for path, _ in _walk(models_dir):
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def _walk(folder: Path, depth: int = 0) -> Iterable[tuple[Path, bool]]:
    """(path, is a safetensors folder) for every GGUF file and model folder under `folder`."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
                yield path, True
            elif depth < MAX_DEPTH:
                yield from _walk(path, depth + 1)
        elif entry.name.lower().endswith(".gguf") and entry.is_file():
            yield path, False


def scan(models_dir: Path) -> list[ModelEntry]:
    """Every model in `models_dir`, as entries with the defaults of a YAML entry."""
    models_dir = models_dir.absolute()
    entries: list[ModelEntry] = []
    ggufs: dict[Path, list[Path]] = {}
    for path, is_folder in _walk(models_dir):
        if is_folder:
            entries.append(ModelEntry(id=model_id_for(path.name), backend="auto", path=str(path)))
        else:
            ggufs.setdefault(path.parent, []).append(path)
    for files in ggufs.values():
        names = {f.name for f in files}
        mmprojs = sorted(f for f in files if "mmproj" in f.name.lower())
        for file in files:
            if file in mmprojs:
                continue
            part = split_part(file.name)
            if part:
                prefix, index, count = part
                wanted = {f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)}
                if index != 1 or not wanted <= names:
                    continue
            args = ["--mmproj", str(mmprojs[0])] if mmprojs else []
            entries.append(ModelEntry(id=model_id_for(file.name), backend="llamacpp", path=str(file), args=args))
    return _unique_ids(entries)


def _unique_ids(entries: list[ModelEntry]) -> list[ModelEntry]:
    seen: set[str] = set()
    out = []
    for entry in entries:
        base, n = entry.id, 1
        while model_key(entry.id) in seen:
            n += 1
            entry = entry.model_copy(update={"id": f"{base[:120]}-{n}"})
        seen.add(model_key(entry.id))
        out.append(entry)
    return out


def merge(config: ModelsConfig, *extra: list[ModelEntry]) -> ModelsConfig:
    """The YAML's models, then each list in `extra` in order, skipping taken paths and names."""
    taken_paths = {_real(e.path) for e in config.models if e.path}
    taken_names = {model_key(n) for e in config.models for n in e.names}
    models = list(config.models)
    for entries in extra:
        for entry in entries:
            names = {model_key(n) for n in entry.names}
            if (entry.path and _real(entry.path) in taken_paths) or names & taken_names:
                continue
            models.append(entry)
            taken_names |= names
            if entry.path:
                taken_paths.add(_real(entry.path))
    return config.model_copy(update={"models": models})


def _real(path: str) -> str:
    return os.path.realpath(path)
