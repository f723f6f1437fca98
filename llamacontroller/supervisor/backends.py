"""Every backend is "a command that serves HTTP on a port we give it, with a health endpoint".

This module only builds those commands; supervisor/engine.py runs them all the same way.
vLLM, TGI and `transformers serve` need CUDA or large downloads that this project's CI machine
cannot provide, so their command lines are unit-tested, not run.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field

from llamacontroller.config import ModelEntry, Settings
from llamacontroller.paths import llama_server_cache_binary


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    # A random key per launch, which the engine demands of every caller but the controller: a
    # local process that finds the engine's port gets 401, not a way around tokens, limits and
    # usage. Passed in the environment (readable only by the same user), never on the command line.
    api_key: str | None = None


def llama_server_binary(settings: Settings) -> str:
    """LLAMA_SERVER_BIN, then llamacpp.binary, then PATH, then our build cache."""
    for candidate in (settings.llama_server_bin, settings.llamacpp.binary):
        if candidate:
            return candidate
    return shutil.which("llama-server") or str(llama_server_cache_binary())


def build_launch(entry: ModelEntry, settings: Settings, port: int) -> Launch:
    env = {"LLAMACONTROLLER_ENGINE_OF": str(settings.data_dir.resolve()), **entry.env}
    key = secrets.token_urlsafe(32)
    if entry.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in entry.gpus)
    host_port = ["--host", "127.0.0.1", "--port", str(port)]
    if entry.backend == "llamacpp":
        argv = [
            llama_server_binary(settings),
            *settings.llamacpp.default_args,
            *host_port,
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
        return Launch([*argv, *entry.args], {**env, "LLAMA_API_KEY": key}, api_key=key)
    if entry.backend == "vllm":
        argv = [
            "vllm",
            "serve",
            str(entry.path),
            *host_port,
            "--served-model-name",
            entry.id,
            "--max-model-len",
            str(entry.ctx_size),
        ]
        return Launch([*argv, *entry.args], {**env, "VLLM_API_KEY": key}, api_key=key)
    if entry.backend == "tgi":
        argv = [
            "text-generation-launcher",
            "--model-id",
            str(entry.path),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-total-tokens",
            str(entry.ctx_size),
        ]
        return Launch([*argv, *entry.args], env)
    if entry.backend == "transformers":
        argv = ["transformers", "serve", *host_port, "--force-model", str(entry.path)]
        return Launch([*argv, *entry.args], env, health_path="/v1/models")
    raise ValueError(f"backend {entry.backend!r} has no process")
