"""`llamacontroller` command line. Every command reads the same settings as the server
(LLAMACONTROLLER_* environment, config dir)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from llamacontroller import __version__
from llamacontroller.config import ConfigError, Settings, load_settings
from llamacontroller.errors import LlamaControllerError

if TYPE_CHECKING:
    from llamacontroller.services.core import Store

T = TypeVar("T")


def _settings(config_dir: str | None = None) -> Settings:
    try:
        return load_settings(config_dir=config_dir)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _run(work: Callable[[Store], Awaitable[T]], settings: Settings) -> T:
    """Open the database the server uses (migrating first), run `work`, close. Only the
    database: no supervisor, no engines, no model files read."""
    from llamacontroller.services.core import open_store

    async def main() -> T:
        store = await open_store(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except LlamaControllerError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamacontroller")
def main() -> None:
    """LlamaController: one governed OpenAI- and Ollama-compatible endpoint for your models."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"llamacontroller {__version__}")


@main.command()
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", default=None, type=int, help="Port [default: 3000].")
@click.option("--config-dir", default=None, help="Folder with the YAML config [default: config].")
def serve(host: str | None, port: int | None, config_dir: str | None) -> None:
    """Run the controller."""
    import uvicorn

    from llamacontroller.app import create_app
    from llamacontroller.logs import setup_logging

    try:
        settings = load_settings(config_dir=config_dir, host=host, port=port)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # our handlers and format (setup_logging), uvicorn's records included
        access_log=False,  # the front door writes the access log, with request id and caller
        # X-Forwarded-* are believed only from configured proxies (default: none).
        proxy_headers=bool(settings.auth.trusted_proxies),
        forwarded_allow_ips=",".join(settings.auth.trusted_proxies) or None,
        timeout_graceful_shutdown=30,
        loop="uvloop",
        http="httptools",
    )


# --------------------------------------------------------------------------------- config


@main.group()
def config() -> None:
    """Validate configuration."""


@config.command("check")
@click.option("--config-dir", default=None)
def config_check(config_dir: str | None) -> None:
    """Validate the YAML files; exit non-zero with the file, key and reason when invalid."""
    from llamacontroller.supervisor.backends import llama_server_binary

    settings = _settings(config_dir)
    click.echo(f"{settings.config_dir}: valid ({len(settings.models.models)} model(s))")
    for entry in settings.models.models:
        if entry.path and not Path(entry.path).exists():
            click.echo(f"warning: model {entry.id!r}: file {entry.path} does not exist (yet)")
    binary = llama_server_binary(settings)
    if not (Path(binary).exists() or shutil.which(binary)):
        click.echo(f"warning: llama-server not found at {binary} (run `make setup` or set LLAMA_SERVER_BIN)")


@config.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration."""
    from llamacontroller.config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


# ---------------------------------------------------------------------------------- users


@main.group()
def users() -> None:
    """Manage dashboard/API users."""


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@users.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "operator", "user"]), default="user", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_create(name: str, role: str, password_stdin: bool) -> None:
    """Create a user."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    password = _read_password(password_stdin)
    _run(lambda store: accounts.create_user(store, Actor.console(), name, password, role), _settings())
    click.echo(f"created {role} {name}")


@users.command("list")
def users_list() -> None:
    """List users."""
    from llamacontroller.services import accounts

    for user in _run(accounts.list_users, _settings()):
        flags = " (disabled)" if user.disabled else ""
        click.echo(f"{user.id}\t{user.username}\t{user.role}{flags}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
def users_passwd(name: str, password_stdin: bool) -> None:
    """Set a user's password."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    password = _read_password(password_stdin)
    _run(lambda store: accounts.update_user(store, Actor.console(), name, password=password), _settings())
    click.echo(f"password changed for {name}")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable a user (their tokens stop working at once)."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    _run(lambda store: accounts.update_user(store, Actor.console(), name, disabled=True), _settings())
    click.echo(f"disabled {name}")


# --------------------------------------------------------------------------------- tokens


@main.group()
def tokens() -> None:
    """Manage API tokens."""


@tokens.command("create")
@click.option("--user", "username", required=True)
@click.option("--name", required=True, help="A label for the token.")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["inference", "models:manage", "admin"]))
@click.option("--model", "models", multiple=True, help="Restrict to these model ids or aliases (repeatable).")
@click.option("--expires-in", default=None, help="e.g. 30d, 12h.")
@click.option(
    "--trusted-frontend", is_flag=True, help="A front end (Open WebUI) whose X-OpenWebUI-User-* headers are recorded."
)
def tokens_create(
    username: str,
    name: str,
    scopes: tuple[str, ...],
    models: tuple[str, ...],
    expires_in: str | None,
    trusted_frontend: bool,
) -> None:
    """Create a token and print it once."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    settings = _settings()
    ids = []
    for name_ in models:  # resolved as the server does, from the config alone
        entry = settings.models.entry_named(name_)
        if entry is None:
            click.echo(f"error: model {name_[:64]!r} not found", err=True)
            sys.exit(1)
        ids.append(entry.id)

    async def work(store: Store) -> accounts.TokenCreated:
        return await accounts.create_token(
            store,
            Actor.console(),
            name,
            owner=username,
            scopes=scopes or None,
            models=ids,
            expires_in=expires_in,
            trusted_frontend=trusted_frontend,
        )

    created = _run(work, settings)
    click.echo(created.token)
    scopes_shown = " ".join(created.scopes)
    click.echo(f"token {created.id} for {username} ({scopes_shown}); it is shown only once", err=True)


@tokens.command("list")
def tokens_list() -> None:
    """List tokens (never their values)."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    for token in _run(lambda store: accounts.list_tokens(store, Actor.console()), _settings()):
        state = "revoked" if token.revoked_at else "active"
        scopes = " ".join(token.scopes)
        click.echo(f"{token.id}\t{token.prefix}…\t{token.name}\t{token.user}\t{scopes}\t{state}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token."""
    from llamacontroller.services import accounts
    from llamacontroller.services.audit import Actor

    _run(lambda store: accounts.revoke_token(store, Actor.console(), token_id), _settings())
    click.echo(f"revoked token {token_id}")


# --------------------------------------------------------------------------------- models


@main.group()
def models() -> None:
    """List, load, unload, pull, convert and delete models on a running controller (LLAMACONTROLLER_TOKEN)."""


def _controller() -> tuple[str, dict[str, str]]:
    settings = _settings()
    url = os.environ.get("LLAMACONTROLLER_URL") or f"http://{settings.host}:{settings.port}{settings.root_path}"
    token = os.environ.get("LLAMACONTROLLER_TOKEN")
    return url, {"Authorization": f"Bearer {token}"} if token else {}


def _api(method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> Any:
    import httpx

    url, headers = _controller()
    try:
        response = httpx.request(method, url + path, json=body, params=params, headers=headers, timeout=600)
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach the controller at {url}: {exc}", err=True)
        sys.exit(1)
    data = response.json()
    if response.status_code >= 400:
        error = data.get("error", {})
        click.echo(f"error: {error.get('message', data)}", err=True)
        sys.exit(1)
    return data


@models.command("list")
def models_list() -> None:
    """Configured models and their state."""
    if os.environ.get("LLAMACONTROLLER_TOKEN"):
        for model in _api("GET", "/api/v1/models/status")["models"]:
            click.echo(f"{model['id']}\t{model['backend']}\t{model['state']}")
        return
    for entry in _settings().models.models:
        click.echo(f"{entry.id}\t{entry.backend}\t{entry.path or entry.url}")


@models.command("load")
@click.argument("model_id")
def models_load(model_id: str) -> None:
    """Load a model and wait until it is ready."""
    status = _api("POST", "/api/v1/models/load", {"model_id": model_id})
    click.echo(f"{status['id']}: {status['state']} (pid {status['pid']}, port {status['port']})")


@models.command("unload")
@click.argument("model_id")
def models_unload(model_id: str) -> None:
    """Unload a model after its in-flight requests finish."""
    status = _api("POST", "/api/v1/models/unload", {"model_id": model_id})
    click.echo(f"{status['id']}: {status['state']}")


@models.command("pull")
@click.argument("source")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit on the Hub.")
@click.option("--no-wait", is_flag=True, help="Start the download and return (follow it with `models jobs`).")
def models_pull(source: str, revision: str, no_wait: bool) -> None:
    """Download SOURCE from the Hugging Face Hub: org/repo, org/repo:QUANT or org/repo:file.gguf."""
    _start_job("/api/v1/models/pull", {"source": source, "revision": revision}, no_wait)


@models.command("convert")
@click.argument("model_id")
@click.option("--type", "outtype", type=click.Choice(["f16", "q8_0", "q4_k_m"]), default="q8_0", show_default=True)
@click.option("--no-wait", is_flag=True, help="Start the conversion and return.")
def models_convert(model_id: str, outtype: str, no_wait: bool) -> None:
    """Convert a safetensors model to a GGUF file (served by llama-server) at --type."""
    _start_job("/api/v1/models/convert", {"model_id": model_id, "type": outtype}, no_wait)


def _start_job(path: str, body: dict[str, Any], no_wait: bool) -> None:
    job = _api("POST", path, body)
    click.echo(f"job {job['id']}: {job['source']} -> model {job['model_id']}", err=True)
    if not no_wait:
        _follow(job)


def _follow(job: dict[str, Any]) -> None:
    """A progress bar fed by the job's server-sent events; exits 1 unless the job is done."""
    import httpx

    url, headers = _controller()
    last = job
    bar_options: dict[str, Any] = {"label": job["source"][:40], "show_eta": True, "file": sys.stderr}
    with click.progressbar(length=max(1, job["total"]), **bar_options) as bar:
        try:
            with httpx.stream(
                "GET", f"{url}/api/v1/jobs/{job['id']}", params={"follow": "true"}, headers=headers, timeout=60
            ) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    last = json.loads(line[6:])
                    bar.update(max(0, last["bytes"] - bar.pos))
        except httpx.HTTPError as exc:
            click.echo(f"\nerror: lost the controller at {url}: {exc} (the job goes on there)", err=True)
            sys.exit(1)
    if last["state"] != "done":
        click.echo(f"error: {last['state']}: {last.get('error') or ''}", err=True)
        sys.exit(1)
    click.echo(last["model_id"])


@models.command("jobs")
def models_jobs() -> None:
    """Pulls and conversions, newest first."""
    for job in _api("GET", "/api/v1/jobs")["jobs"]:
        share = f"{job['progress'] * 100:.0f}%"
        click.echo(f"{job['id']}\t{job['kind']}\t{job['state']}\t{share}\t{job['source']}\t{job.get('error') or ''}")


@models.command("cancel")
@click.argument("job_id")
def models_cancel(job_id: str) -> None:
    """Cancel a pull or a conversion."""
    job = _api("DELETE", f"/api/v1/jobs/{job_id}")
    click.echo(f"{job['id']}: {job['state']}")


@models.command("delete")
@click.argument("model_id")
@click.option("--force", is_flag=True, help="Unload it first if it is loaded.")
def models_delete(model_id: str, force: bool) -> None:
    """Delete a pulled, converted or scanned model and its files."""
    from urllib.parse import quote

    result = _api("DELETE", f"/api/v1/models/{quote(model_id, safe='/:')}", params={"force": force} if force else None)
    for path in result["files"]:
        click.echo(f"deleted {path}")


@models.command("switch")
@click.argument("from_id")
@click.argument("to_id")
def models_switch(from_id: str, to_id: str) -> None:
    """Stop FROM_ID once its in-flight requests finish, then load TO_ID ('*' for FROM_ID: every other)."""
    body = {"to_id": to_id, **({"from_id": from_id} if from_id != "*" else {})}
    status = _api("POST", "/api/v1/models/switch", body)
    click.echo(f"{status['id']}: {status['state']}")
