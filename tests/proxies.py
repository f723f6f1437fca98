"""Real nginx and Caddy in front of controllers, run from the shipped configs in deploy/ with a
test certificate and free ports."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.harness import ROOT, die_with_parent, free_port, wait_started

DEPLOY = ROOT / "deploy"


def trust(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for localhost and its key, in `folder`."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(folder, 0o755)  # nginx workers may run as another user
    return str(cert), str(key)


@contextlib.contextmanager
def _serving(argv: list[str], folder: Path, port: int, ca: str, env: dict[str, str] | None = None) -> Iterator[str]:
    with (folder / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError, OSError):
            return httpx.get(f"https://localhost:{port}/", verify=trust(ca), timeout=2).status_code < 500
        return False

    try:
        wait_started(ready, proc, folder / "proxy.log")
        yield ca
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_nginx(folder: Path, prefix: str, port: int, upstream: int | list[int], cert: tuple[str, str]) -> Iterator[str]:
    """The shipped nginx site with `upstream` (one controller's port, or several) behind it."""
    site = (DEPLOY / "nginx" / ("llamacontroller-subpath.conf" if prefix else "llamacontroller.conf")).read_text()
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in ([upstream] if isinstance(upstream, int) else upstream))
    site = site.replace("server 127.0.0.1:3000;", servers)
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = re.sub(r"^(\s*)server_name [^;\n]+;", r"\1server_name localhost;", site, flags=re.M)
    site = re.sub(r"^(\s*)ssl_certificate\s+[^;\n]+;", rf"\1ssl_certificate {cert[0]};", site, flags=re.M)
    site = re.sub(r"^(\s*)ssl_certificate_key\s+[^;\n]+;", rf"\1ssl_certificate_key {cert[1]};", site, flags=re.M)
    if prefix:
        site = site.replace("/llm", prefix)
    (folder / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {folder / "access.log"};
{temp}
    include {folder / "site.conf"};
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with _serving(
        [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")],
        folder,
        port,
        cert[0],
    ) as ca:
        yield ca


@contextlib.contextmanager
def run_caddy(folder: Path, prefix: str, port: int, upstream: int, cert: tuple[str, str]) -> Iterator[str]:
    site = (DEPLOY / "caddy" / ("Caddyfile.subpath" if prefix else "Caddyfile")).read_text()
    site = site.replace("reverse_proxy 127.0.0.1:3000", f"reverse_proxy 127.0.0.1:{upstream}")
    site = re.sub(r"^(llm\.)?example\.com \{", f"https://localhost:{port} {{\n    tls internal", site, flags=re.M)
    if prefix:
        site = site.replace("/llm", prefix)
    globals_ = f"{{\n    admin off\n    skip_install_trust\n    http_port {free_port()}\n    https_port {port}\n}}\n"
    (folder / "Caddyfile").write_text(globals_ + site)
    env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"), "XDG_CONFIG_HOME": str(folder)}
    ca = folder / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    argv = ["caddy", "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"]
    with (folder / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 30
        while not ca.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "proxy.log").read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    # Its CA now exists: run it for real, waiting until it serves with a certificate from that CA.
    with _serving(argv, folder, port, str(ca), env) as served:
        yield served
