"""What a pull fetches from the Hugging Face Hub: the source named, the files chosen, checked names.

`plan()` asks the Hub (through `huggingface_hub`, which honours HF_ENDPOINT and HF_TOKEN) for the
repository's commit and file list; `choose()` (pure) picks the files the way llama.cpp's `-hf` and
Ollama's `hf.co/...` do: a quant tag picks the GGUF files of that quant (every part of a split
set, and an mmproj beside them); no tag picks Q4_K_M, else the only GGUF; a repository without
GGUF files is pulled as a safetensors folder. Every name the Hub supplies is checked before it
becomes a path: nothing lands outside models_dir.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from llamacontroller.errors import BadRequest, Forbidden, NotFound, UpstreamError

DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf picks when no tag is given
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_SOURCE = re.compile(
    rf"^(?:(?:https?://)?(?:hf\.co|huggingface\.co)/)?(?P<repo>{_PART}/{_PART})(?::(?P<pick>[A-Za-z0-9][\w.+-]{{0,127}}))?$"
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}$")
# What a safetensors folder needs to be served; weights in other formats and code are left out.
_SNAPSHOT_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".jinja")


@dataclass(frozen=True)
class Source:
    repo: str
    pick: str | None = None  # a quant tag (Q4_K_M) or a file name

    @property
    def name(self) -> str:
        """The Ollama-style name: hf.co/org/repo[:PICK]."""
        return f"hf.co/{self.repo}" + (f":{self.pick}" if self.pick else "")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # LFS files: the content's sha256
    git_oid: str | None = None  # small files: git's blob sha1


@dataclass
class Plan:
    """What a pull fetches: decided once, stored with the job, followed again after a restart."""

    repo: str
    revision: str
    source: str  # hf.co/org/repo:PICK, as the model's alias
    kind: str  # gguf | safetensors
    quant: str | None
    files: list[RemoteFile]
    model_file: str  # the GGUF (first part of a split set) or "" for a safetensors folder
    mmproj: str | None = None
    endpoint: str = ""
    folder: str = field(default="")  # models_dir/<folder> receives the files

    def __post_init__(self) -> None:
        self.folder = self.folder or self.repo.replace("/", "--")

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        files = [RemoteFile(**f) for f in data.pop("files")]
        return cls(files=files, **data)


def parse_source(text: str) -> Source:
    """`org/repo`, `org/repo:Q4_K_M`, `org/repo:file.gguf`, with or without `hf.co/`."""
    match = _SOURCE.match(text.strip())
    if not match or ".." in match.group("repo") or match.group("repo").split("/")[0] in ("hf.co", "huggingface.co"):
        shown = text if len(text) <= 80 else text[:80] + "…"
        raise BadRequest(
            f"not a Hugging Face model: {shown!r} (use org/repo, org/repo:QUANT or hf.co/org/repo:QUANT)",
            param="source",
        )
    return Source(match.group("repo"), match.group("pick"))


def safe_path(name: str) -> PurePosixPath:
    """A file name from the Hub as a relative path that stays inside its folder, or BadRequest."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or len(path.parts) > 4 or not all(_SAFE_NAME.match(p) for p in path.parts):
        raise BadRequest(f"the Hub listed a file name that is not safe to write: {name[:120]!r}")
    return path


def split_part(name: str) -> tuple[str, int, int] | None:
    """'m-00002-of-00003.gguf' -> ('m', 2, 3)."""
    match = _SPLIT.search(name)
    if not match:
        return None
    return name[: match.start()], int(match.group(1)), int(match.group(2))


def _quant_of(name: str) -> str | None:
    match = re.search(
        r"(?<![A-Za-z0-9])((?:I?Q\d+_[A-Z0-9_]+?|Q\d+_\d|F16|BF16|F32|Q\d+))(?=[.-]|$)",
        PurePosixPath(name).name.upper().removesuffix(".GGUF"),
    )
    return match.group(1) if match else None


def _has_quant(name: str, quant: str) -> bool:
    stem = PurePosixPath(name).name.upper().removesuffix(".GGUF")
    return re.search(rf"(?<![A-Z0-9_]){re.escape(quant.upper())}(?![A-Z0-9_])", stem) is not None


Choice = tuple[str, str | None, list[RemoteFile], str, str | None]


def choose(repo: str, files: list[RemoteFile], pick: str | None) -> Choice:
    """(kind, quant, files to fetch, model file, mmproj file) for `pick` among the repo's files."""
    by_path = {f.path: f for f in files}
    ggufs = sorted(f.path for f in files if f.path.lower().endswith(".gguf"))
    mmprojs = [p for p in ggufs if "mmproj" in PurePosixPath(p).name.lower()]
    models = [p for p in ggufs if p not in mmprojs]

    by_name = {PurePosixPath(p).name: p for p in by_path}
    if pick and (pick in by_path or pick in by_name):
        chosen = pick if pick in by_path else by_name[pick]
        if not chosen.lower().endswith(".gguf"):
            raise BadRequest(f"{chosen!r} is not a GGUF file; name a quant or a .gguf file", param="source")
        candidates = [chosen]
        quant = _quant_of(chosen)
    elif models:
        quant = (pick or DEFAULT_QUANT).upper()
        candidates = [p for p in models if _has_quant(p, quant)]
        if not candidates and pick is None and len({_set_key(p) for p in models}) == 1:
            candidates, quant = models, _quant_of(models[0])
        if not candidates:
            found = sorted({q for p in models if (q := _quant_of(p))})
            raise NotFound(
                f"{repo} has no GGUF file for {quant}" + (f"; it has {', '.join(found)}" if found else ""),
                param="source",
            )
    elif pick:
        raise NotFound(f"{repo} has no GGUF files; pull it without a tag to get its safetensors", param="source")
    else:
        snapshot = [f for f in files if f.path.endswith(_SNAPSHOT_SUFFIXES)]
        if not any(f.path.endswith(".safetensors") for f in snapshot) or "config.json" not in by_path:
            raise NotFound(f"{repo} has neither GGUF files nor a safetensors model (config.json)", param="source")
        return "safetensors", None, snapshot, "", None

    # The first candidate's whole split set (or the file alone), then an mmproj beside it.
    first = candidates[0]
    key = _set_key(first)
    chosen_files = sorted((p for p in models if _set_key(p) == key), key=lambda p: split_part(p) or ("", 0, 0))
    part = split_part(first)
    if part and len(chosen_files) != part[2]:
        raise NotFound(f"{repo}: split set {part[0]!r} is incomplete on the Hub", param="source")
    mmproj = _best_mmproj(mmprojs, PurePosixPath(first).parent)
    fetch = [by_path[p] for p in chosen_files] + ([by_path[mmproj]] if mmproj else [])
    return "gguf", quant, fetch, chosen_files[0], mmproj


def _set_key(path: str) -> str:
    part = split_part(path)
    return part[0] if part else path


def _best_mmproj(mmprojs: list[str], folder: PurePosixPath) -> str | None:
    near = [p for p in mmprojs if PurePosixPath(p).parent == folder]
    if not near:
        return None
    return next((p for p in near if re.search(r"(?<![a-z])f16", p.lower())), near[0])  # f16, not bf16


# ------------------------------------------------------------------------------ the Hub


def plan(source: Source, *, endpoint: str, token: str | None, revision: str = "main") -> Plan:
    """Ask the Hub what to fetch for `source` (blocking: run it in a thread)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        info = api.model_info(source.repo, revision=revision)
        commit = str(info.sha or "")
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise UpstreamError(f"the Hub answered no commit for {source.repo}@{revision}")
        entries = api.list_repo_tree(source.repo, recursive=True, revision=commit)
        files = [
            RemoteFile(
                path=e.path,
                size=int(e.size),
                sha256=e.lfs.sha256 if e.lfs else None,
                git_oid=None if e.lfs else e.blob_id,
            )
            for e in entries
            if isinstance(e, RepoFile)
        ]
    except Exception as exc:
        raise hub_error(exc, source.repo) from None
    kind, quant, chosen, model_file, mmproj = choose(source.repo, files, source.pick)
    for f in chosen:
        safe_path(f.path)
        if f.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
            raise UpstreamError(f"the Hub gave no usable sha256 for {f.path}")
    name = f"hf.co/{source.repo}" + (f":{source.pick or quant}" if kind == "gguf" and (source.pick or quant) else "")
    return Plan(
        repo=source.repo,
        revision=commit,
        source=name,
        kind=kind,
        quant=quant,
        files=chosen,
        model_file=model_file,
        mmproj=mmproj,
        endpoint=endpoint,
    )


def hub_error(exc: Exception, repo: str) -> Exception:
    """A huggingface_hub or HTTP failure as one of our errors, with what to do about it."""
    from huggingface_hub import errors

    from llamacontroller.errors import LlamaControllerError

    if isinstance(exc, LlamaControllerError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        return Forbidden(
            f"{repo} is gated: accept its terms on the Hub, then set models.hf_token or HF_TOKEN", param="source"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return NotFound(
            f"{repo} not found on the Hub (a private repository needs models.hf_token or HF_TOKEN)", param="source"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return NotFound(f"{repo}: no such revision", param="source")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return Forbidden(f"the Hub refused access to {repo} ({status}): check the token", param="source")
        if status == 404:
            return NotFound(f"{repo} not found on the Hub", param="source")
        return UpstreamError(f"the Hub answered {status} for {repo}")
    return UpstreamError(f"cannot reach the Hub: {type(exc).__name__}: {str(exc)[:200]}")
