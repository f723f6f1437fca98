"""Typed configuration: three YAML files under the config dir, overridable by environment.

Sources, strongest first: keyword arguments (tests, CLI flags), `LLAMACONTROLLER_*` environment
variables (nested keys with `__`, e.g. `LLAMACONTROLLER_MODELS__MAX_LOADED_MODELS=1`), then
`llamacpp-config.yaml`, `models-config.yaml` and `auth-config.yaml`. Every setting is documented in
docs/configuration.md; `tests/unit/test_config.py` checks that the docs name each one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_FILES = {
    "llamacpp": "llamacpp-config.yaml",
    "models": "models-config.yaml",
    "auth": "auth-config.yaml",
}

Backend = Literal["llamacpp", "vllm", "tgi", "transformers", "remote", "auto"]
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class ConfigError(Exception):
    """The configuration cannot be used. The message names the file, the key path and why."""


def parse_size(value: int | str) -> int:
    """'8GiB', '512M', '1.5G' or a plain number of bytes -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", value, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 8GiB, 512M or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class EngineCommand(_Strict):
    command: list[str] | None = Field(
        None,
        description="How to run the engine, as a list (e.g. [vllm, serve] or [/venv/bin/python, -m, "
        "vllm.entrypoints.openai.api_server]); default: the venv `make setup` installed, then PATH.",
    )


class VllmCommand(EngineCommand):
    kv_cache_space: int = Field(
        1024**3, gt=0, description="vLLM on CPU: bytes (or '2GiB') of KV cache (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM on a GPU: the share of each GPU's memory it takes."
    )

    @field_validator("kv_cache_space", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)


class EnginesConfig(_Strict):
    vllm: VllmCommand = Field(default_factory=VllmCommand, description="backend: vllm")
    transformers: EngineCommand = Field(default_factory=EngineCommand, description="backend: transformers")
    tgi: EngineCommand = Field(default_factory=EngineCommand, description="backend: tgi")
    remote_health_interval: float = Field(
        10.0, gt=0, description="Seconds between health probes of each `remote` upstream URL."
    )


class LlamaCppConfig(_Strict):
    binary: str | None = Field(
        None, description="Path to llama-server. LLAMA_SERVER_BIN overrides; else PATH, then the build cache."
    )
    default_args: list[str] = Field(
        default_factory=list, description="Flags passed to every llama-server, before the model's own args."
    )
    start_timeout: float = Field(120.0, gt=0, description="Seconds an engine may take to become healthy.")
    stop_timeout: float = Field(10.0, gt=0, description="Seconds between SIGTERM and SIGKILL.")
    drain_timeout: float = Field(
        60.0, ge=0, description="Seconds a stop or eviction waits for in-flight requests to finish."
    )
    restart_limit: int = Field(3, ge=0, description="Automatic restarts after crashes allowed within restart_window.")
    restart_window: float = Field(300.0, gt=0, description="Window, in seconds, for restart_limit.")
    watchdog_interval: float = Field(
        2.0, ge=0, description="Seconds between health probes of a ready engine (0 = no watchdog)."
    )
    watchdog_timeout: float = Field(2.0, gt=0, description="Seconds a watchdog health probe may take.")
    watchdog_failures: int = Field(
        3, gt=0, description="Failed probes in a row after which a hung engine is killed and restarted."
    )
    engines: EnginesConfig = Field(
        default_factory=EnginesConfig, description="Where the other engines are and how they run."
    )


class ModelEntry(_Strict):
    id: str = Field(pattern=_ID_PATTERN, description="What clients put in 'model'.")
    name: str | None = Field(None, description="Display name.")
    backend: Backend = Field("llamacpp", description="Which engine serves the model.")
    path: str | None = Field(None, description="Model file (GGUF for llamacpp); relative to the working dir.")
    url: str | None = Field(None, description="Base URL of an OpenAI-compatible upstream (backend: remote).")
    urls: list[str] = Field(
        default_factory=list, description="backend: remote: several base URLs; the least busy healthy one is used."
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="backend: remote: the name of the environment variable holding the upstream's API key.",
    )
    health_path: str | None = Field(
        None,
        pattern=r"^(/[^\s?#]*(\?[^\s#]*)?)?$",
        description="backend: remote: the path probed for health (default /v1/models); '' = never probe.",
    )
    upstream_model: str | None = Field(
        None, description="The name the engine or upstream knows the model by (default: the id)."
    )
    aliases: list[str] = Field(default_factory=list, description="Other names clients may use.")
    ctx_size: int = Field(4096, gt=0, description="Context size in tokens (llama-server -c).")
    args: list[str] = Field(default_factory=list, description="Extra engine flags, as a list; never a shell.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the engine.")
    ttl: float = Field(0, ge=0, description="Idle seconds before unload; 0 = never.")
    max_concurrency: int = Field(4, gt=0, description="Requests in flight per model; more queue.")
    queue_timeout: float = Field(30.0, ge=0, description="Seconds a request may wait for a slot before 429.")
    request_timeout: float = Field(
        600.0, gt=0, description="Seconds the engine may stay silent (before or between chunks) before 504."
    )
    gpus: list[int] = Field(default_factory=list, description="GPU indexes to pin the model to.")
    start_timeout: float | None = Field(None, gt=0, description="Overrides llamacpp.start_timeout.")
    embedding: bool = Field(False, description="Serve embeddings (adds --embeddings).")
    reranking: bool = Field(False, description="Serve /v1/rerank (adds --reranking).")
    sleep_on_evict: bool = Field(
        False,
        description="backend: vllm: evict by /sleep and resume by /wake_up instead of stopping "
        "(frees GPU memory; on CPU it frees nothing).",
    )

    @field_validator("aliases")
    @classmethod
    def _aliases_are_ids(cls, aliases: list[str]) -> list[str]:
        for alias in aliases:
            if not re.match(_ID_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not a valid model name")
        return aliases

    @model_validator(mode="after")
    def _backend_needs(self) -> ModelEntry:
        if self.backend == "remote" and not self.url and not self.urls:
            raise ValueError("backend 'remote' needs 'url' or 'urls'")
        for url in self.upstream_urls:
            if not re.match(r"^https?://[^/?#]+", url):
                raise ValueError(f"url {url!r} must start with http:// or https:// and a host")
        if self.backend != "remote" and (self.url or self.urls or self.api_key_env):
            raise ValueError("'url', 'urls' and 'api_key_env' are for backend 'remote'")
        if self.backend != "remote" and not self.path:
            raise ValueError(f"backend {self.backend!r} needs 'path'")
        return self

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]

    @property
    def upstream_urls(self) -> list[str]:
        """backend: remote: every base URL, `url` first, without a trailing slash."""
        return [u.rstrip("/") for u in ([self.url] if self.url else []) + self.urls]


def model_key(name: str) -> str:
    """Names are case-insensitive, and `x` and `x:latest` are the same model (Ollama's habit)."""
    return name.strip().lower().removesuffix(":latest")


class ModelsConfig(_Strict):
    models_dir: str = Field("data/models", description="Folder in which a bare file name in a model's `path` is found.")
    max_loaded_models: int = Field(2, gt=0, description="Engines running at once.")
    memory_budget: int | Literal["auto"] = Field(
        "auto", description="Bytes (or '8GiB') engines may use; auto = available RAM (or VRAM)."
    )
    models: list[ModelEntry] = Field(default_factory=list, description="The models clients can ask for.")
    scan_interval: float = Field(
        5.0,
        ge=0,
        description="Seconds between looks at models_dir for GGUF files and safetensors folders "
        "added or removed (they become models); 0 = only at start and on reload.",
    )
    hf_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+[^\s?#]*$",
        description="Hugging Face Hub URL for pulls; default HF_ENDPOINT, else https://huggingface.co.",
    )
    hf_token: SecretStr | None = Field(
        None, description="Token for gated and private repositories; default HF_TOKEN. Never logged or shown."
    )

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return value if value == "auto" else parse_size(value)

    @model_validator(mode="after")
    def _bare_names_live_in_models_dir(self) -> ModelsConfig:
        # `path: model.gguf` (no folder) means models_dir/model.gguf; other paths are used as given.
        for entry in self.models:
            if entry.path and "/" not in entry.path and entry.backend != "remote":
                entry.path = str(Path(self.models_dir) / entry.path)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsConfig:
        seen: dict[str, str] = {}
        for entry in self.models:
            for name in entry.names:
                key = model_key(name)
                if key in seen and seen[key] != entry.id:
                    raise ValueError(f"model name {name!r} is used by both {seen[key]!r} and {entry.id!r}")
                seen[key] = entry.id
        return self

    def entry_named(self, name: str) -> ModelEntry | None:
        """The model an id or alias names, as the supervisor resolves it (without starting one)."""
        key = model_key(name)
        return next((e for e in self.models if any(model_key(n) == key for n in e.names)), None)


class AuthConfig(_Strict):
    require_api_token: bool = Field(True, description="False allows anonymous inference (never management).")
    session_idle_timeout: float = Field(3600, gt=0, description="Dashboard session idle expiry, seconds.")
    session_absolute_timeout: float = Field(43200, gt=0, description="Dashboard session hard expiry, seconds.")
    lockout_threshold: int = Field(
        5, gt=0, description="Failed logins for one username from one IP before lockout (4x that per IP)."
    )
    lockout_seconds: float = Field(300, gt=0, description="How long a lockout lasts.")
    token_cache_ttl: float = Field(30, ge=0, description="Seconds a verified API token stays cached.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose X-Forwarded-For / X-Forwarded-Proto headers are believed; "
        "default none, so that no caller can forge its address.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Anonymous mode: Host names the controller answers to (default: loopback names and `host`).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Anonymous mode: browser origins (scheme://host:port) besides its own allowed to POST.",
    )
    metrics_require_token: bool = Field(False, description="GET /metrics needs an API token.")
    docs_require_token: bool = Field(False, description="The OpenAPI schema and docs page need an API token.")
    allow_remote_media: bool = Field(
        False,
        description="Pass image/audio URLs other than data: URIs to engines (which would fetch them: SSRF).",
    )


class _YamlFiles(PydanticBaseSettingsSource):
    """Reads the three YAML files from the config dir, each into its own section."""

    def __init__(self, settings_cls: type[BaseSettings], config_dir: Path) -> None:
        super().__init__(settings_cls)
        self.config_dir = config_dir

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns everything at once

    def __call__(self) -> dict[str, Any]:
        return {section: _read_yaml(self.config_dir / name) for section, name in CONFIG_FILES.items()}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


class Settings(BaseSettings):
    """Everything the controller is configured with, from YAML and the environment."""

    model_config = SettingsConfigDict(env_prefix="LLAMACONTROLLER_", env_nested_delimiter="__", extra="ignore")

    config_dir: Path = Field(Path("config"), description="Folder holding the three YAML files.")
    data_dir: Path = Field(Path("data"), description="Database, logs, models and run files.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default the SQLite file in data_dir.")
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=0, le=65535)
    root_path: str = Field("", description="Path prefix when served behind a proxy at a sub-path (`/llm`).")
    admin_password: SecretStr | None = Field(None, description="Password for the first-run admin user.")
    llama_server_bin: str | None = Field(None, validation_alias=AliasChoices("LLAMA_SERVER_BIN", "llama_server_bin"))
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field("text", description="`json`: one JSON object per log line.")
    watch_config: bool = Field(True, description="Reload when a file in config_dir changes (also on SIGHUP).")
    access_log: bool = Field(True, description="Log one line per HTTP request (method, path, status, time, caller).")
    redis_url: str | None = Field(
        None,
        description="Redis shared by several controllers: rate limits, login lockout, token and session "
        "revocation. Unset: kept in each process.",
    )
    ollama_version: str = Field("0.12.6", description="What GET /api/version reports.")

    llamacpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @field_validator("root_path")
    @classmethod
    def _one_leading_slash(cls, value: str) -> str:
        """'llm/', '/llm/' and '/llm' are all '/llm'; '/' is no prefix at all."""
        value = value.strip().strip("/")
        if value and not all(part and part not in (".", "..") for part in value.split("/")):
            raise ValueError("a path prefix like '/llm'")
        if any(c in value for c in "?#%\\ "):
            raise ValueError("a path prefix like '/llm' (no query, fragment, escapes or spaces)")
        return f"/{value}" if value else ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        config_dir = init_settings.init_kwargs.get("config_dir") or os.environ.get(
            "LLAMACONTROLLER_CONFIG_DIR", "config"
        )
        return init_settings, env_settings, _YamlFiles(settings_cls, Path(config_dir))

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'llamacontroller.db').resolve()}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one readable ConfigError."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, overrides)) from None


def _describe(exc: ValidationError, overrides: dict[str, Any]) -> str:
    config_dir = Path(overrides.get("config_dir") or os.environ.get("LLAMACONTROLLER_CONFIG_DIR", "config"))
    raw = {section: _read_yaml(config_dir / name) for section, name in CONFIG_FILES.items()}
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        section = loc[0] if loc else None
        where = (
            str(config_dir / CONFIG_FILES[section])
            if isinstance(section, str) and section in CONFIG_FILES
            else "environment"
        )
        lines.append(
            f"{where}: {_key_path(loc[1:] if where != 'environment' else loc, raw.get(str(section)))}: {error['msg']}"
        )
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _key_path(loc: list[Any], data: Any) -> str:
    """('models', 0, 'backend') -> "models[0] (id 'smollm2').backend" so people find the entry."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "id" in node:
                out += f" (id {node['id']!r})"
        elif part.startswith(("function-", "list[", "literal[", "union[")):
            continue  # pydantic's internal validator names, not keys
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def json_schema() -> dict[str, Any]:
    """JSON schema of the three YAML files (docs/config.schema.json is generated from this)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "LlamaController configuration",
        "description": "One schema per file under the config dir.",
        "properties": {
            name: model.model_json_schema()
            for name, model in (
                (CONFIG_FILES["llamacpp"], LlamaCppConfig),
                (CONFIG_FILES["models"], ModelsConfig),
                (CONFIG_FILES["auth"], AuthConfig),
            )
        },
    }
