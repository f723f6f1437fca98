"""Throwaway PostgreSQL and Redis servers for the tests: each on a free port in a temporary
folder, killed with the test run. The suite never uses a server that happens to run."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.harness import die_with_parent, free_port, wait_started


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: `make setup` installs Debian's postgresql package")
    return found


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster of its own (initdb + postgres on a free port, trust auth on loopback)
    in a temporary folder: yields the URL of its `postgres` database. As root, the server runs as
    the `postgres` user (PostgreSQL refuses to run as root), so the folder is one of its own under
    the system temp dir rather than inside pytest's (which only root may enter)."""
    root = Path(tempfile.mkdtemp(prefix="llamacontroller-pg-"))
    try:
        yield from _postgres_in(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _postgres_in(root: Path) -> Iterator[str]:
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(
                "running as root needs the 'postgres' system user (Debian's postgresql package)"
            ) from None
    data = root / "pgdata"
    if user:
        shutil.chown(root, user)
    init = subprocess.run(
        [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        user=user,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
    port = free_port()
    with (root / "postgres.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                _pg_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            preexec_fn=die_with_parent,
        )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def ready() -> bool:
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=1):
            return True
        return False

    try:
        wait_started(ready, proc, root / "postgres.log")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[str]:
    """A Redis of its own on a free port, keeping nothing on disk: yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (root / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    url = f"redis://127.0.0.1:{port}/0"

    def ready() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    try:
        wait_started(ready, proc, root / "redis.log")
        yield url
    finally:
        proc.kill()
        proc.wait()
