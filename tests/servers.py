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
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.harness import die_with_parent, free_port


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
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(url, connect_timeout=1):
                    break
            except psycopg.Error:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{(root / 'postgres.log').read_text()}") from None
                time.sleep(0.1)
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
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start:\n{(root / 'redis.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait()
