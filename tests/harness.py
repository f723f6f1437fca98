"""Start the real controller (and, for comparisons, a bare llama-server) on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "data" / "models"
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"
SMOLLM2_ST = MODELS / "SmolLM2-135M-Instruct"  # safetensors folder (make setup makes it)


def die_with_parent() -> None:
    """Children of the test run die with it, even when it is killed (same as the controller's)."""
    from llamacontroller.supervisor.spawn import _die_with_parent

    _die_with_parent()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_bin() -> str:
    from llamacontroller.paths import llama_server_cache_binary

    explicit = os.environ.get("LLAMA_SERVER_BIN")
    return explicit or str(llama_server_cache_binary())


def model_entry(model_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "backend": "llamacpp",
        "path": str(path),
        "ctx_size": 2048,
        "ttl": 0,
        "max_concurrency": 4,
        **extra,
    }


def default_models() -> list[dict[str, Any]]:
    return [
        model_entry("smollm2-135m", SMOLLM2, aliases=["smollm2"]),
        model_entry("gemma3-270m", GEMMA3, aliases=["gemma3"]),
    ]


def engine_pids(data_dir: Path | None = None) -> list[int]:
    """llama-servers on the machine; with data_dir, every engine process (vLLM's children
    included) a controller using it started: the controller marks its engines' environment with
    its data dir, and their children inherit it."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["name", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if data_dir is None:
                if proc.info["name"] == "llama-server":
                    found.append(proc.pid)
            elif proc.environ().get("LLAMACONTROLLER_ENGINE_OF") == str(data_dir.resolve()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def engine_key(pid: int) -> str:
    """The per-launch API key of an engine, as a process of the same user can read it (the test
    run is the controller's user; another local user could not)."""
    return str(psutil.Process(pid).environ()["LLAMA_API_KEY"])


@dataclass
class Controller:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    admin_password: str
    env: dict[str, str]
    log_file: Any = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def engines(self) -> list[int]:
        return engine_pids(self.data_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llamacontroller", *args],
            env=self.env,
            cwd=self.root,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def token(self, name: str = "admin", user: str = "admin", *extra: str) -> str:
        if name not in self.tokens:
            result = self.cli("tokens", "create", "--user", user, "--name", name, *extra)
            assert result.returncode == 0, result.stderr
            self.tokens[name] = result.stdout.strip()
        return self.tokens[name]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=timeout)

    def log(self) -> str:
        return (self.root / "controller.log").read_text(errors="replace")

    def usage_row(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10, **params: Any) -> dict[str, Any]:
        """The newest usage row that `match`es, waiting for the usage writer (it writes in batches)."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                rows = client.get("/api/v1/usage", params={"limit": 1000, **params}).json()["entries"]
                found: list[dict[str, Any]] = [row for row in rows if match(row)]
                if found:
                    return found[0]
                assert time.monotonic() < deadline, f"no usage row matched within {timeout}s"
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file is not None:
            self.log_file.close()
        return self.proc.returncode


def write_config(
    root: Path,
    models: list[dict[str, Any]],
    *,
    max_loaded: int = 2,
    llamacpp: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    models_config: dict[str, Any] | None = None,
) -> Path:
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    models_yaml = {"max_loaded_models": max_loaded, "models": models, **(models_config or {})}
    (config / "models-config.yaml").write_text(yaml.safe_dump(models_yaml))
    (config / "llamacpp-config.yaml").write_text(
        yaml.safe_dump(
            {
                "default_args": ["--threads", "2"],
                "start_timeout": 60,
                "stop_timeout": 5,
                "drain_timeout": 30,
                **(llamacpp or {}),
            }
        )
    )
    (config / "auth-config.yaml").write_text(yaml.safe_dump(auth or {}))
    return config


def start_controller(
    root: Path,
    models: list[dict[str, Any]] | None = None,
    *,
    extra_env: dict[str, str] | None = None,
    command: list[str] | None = None,
    **config: Any,
) -> Controller:
    """A controller on a free port; `command` runs it some other way than `llamacontroller serve`
    (bench/proxy.py: another ASGI server); `{port}` in it is the port."""
    write_config(root, default_models() if models is None else models, **config)
    port = free_port()
    password = "test-admin-password"
    env = {
        **os.environ,
        "LLAMACONTROLLER_CONFIG_DIR": str(root / "config"),
        "LLAMACONTROLLER_DATA_DIR": str(root / "data"),
        "LLAMACONTROLLER_PORT": str(port),
        "LLAMACONTROLLER_ADMIN_PASSWORD": password,
        "LLAMA_SERVER_BIN": llama_server_bin(),
        **(extra_env or {}),
    }
    log = (root / "controller.log").open("wb")
    proc = subprocess.Popen(
        [part.format(port=port) for part in command] if command else [sys.executable, "-m", "llamacontroller", "serve"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    controller = Controller(root, port, proc, password, env, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited with {proc.returncode}:\n{controller.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{controller.url}/health", timeout=1).status_code == 200:
                return controller
        time.sleep(0.1)
    controller.stop(signal.SIGKILL)
    raise RuntimeError(f"controller did not become healthy:\n{controller.log()}")


@contextlib.contextmanager
def running_controller(root: Path, **kwargs: Any) -> Iterator[Controller]:
    controller = start_controller(root, **kwargs)
    try:
        yield controller
    finally:
        controller.stop()
        wait_no_engines(controller.data_dir)


def wait_no_engines(data_dir: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while engine_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = engine_pids(data_dir)
    assert not left, f"engine processes outlived the controller: {left}"


def wait_started(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Poll `ready` until it holds; a server that exits or takes longer than `timeout` fails
    the test with its log."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} did not start:\n{log.read_text(errors='replace')}")  # type: ignore[index]
        time.sleep(0.05)


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


ENGINE_FLAGS = ("-c", "2048", "--threads", "2", "--no-webui")


@contextlib.contextmanager
def llama_server_process(*args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Any llama-server (one model, or router mode) on a free port; dies with the test run and is
    killed, whole process group, on exit. Yields its URL at once, before it is healthy."""
    port = free_port()
    proc = subprocess.Popen(
        [llama_server_bin(), "--host", "127.0.0.1", "--port", str(port), *ENGINE_FLAGS, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def bare_llama_server(model: Path, *args: str) -> Iterator[str]:
    """A llama-server of our own, to compare the controller against a direct connection."""
    with llama_server_process("-m", str(model), *args) as (url, _):
        wait_http(url + "/health")
        yield url


@contextlib.contextmanager
def stand_in_hub(repos: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """The stand-in Hugging Face Hub (tests/standins/hub.py) serving `repos` on a free port:
    yields (its URL, its request log)."""
    port = free_port()
    log = repos.parent / f"hub-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.standins.hub", "--port", str(port), "--root", str(repos), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"{url}/api/models/none/none", timeout=1)  # any answer: it listens
                    break
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            yield url, log
        finally:
            proc.kill()
            proc.wait()
