"""The wheel, installed into a fresh venv, is a whole product: `llamacontroller serve` from an
empty folder serves the health check, the dashboard (templates and static files from inside the
package) and a chat with a model dropped into its default models folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import ROOT, SMOLLM2, die_with_parent, free_port, llama_server_bin, wait_http, wait_no_engines

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.timeout(900)
def test_wheel_in_a_fresh_venv_serves_dashboard_and_chat(tmp_path: Path) -> None:
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "llamacontroller", src / "llamacontroller", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", src)
    wheel = next((tmp_path / "dist").glob("llamacontroller-*.whl"))
    _run(sys.executable, "-m", "venv", tmp_path / "venv")
    _run(tmp_path / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    # No source tree anywhere near: the templates and static files must come from the wheel.
    installed = _run(
        tmp_path / "venv" / "bin" / "python",
        "-c",
        "import llamacontroller; print(llamacontroller.__file__)",
        cwd=tmp_path,
    )
    assert str(tmp_path / "venv") in installed

    home = tmp_path / "empty"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMACONTROLLER_", "VIRTUAL_ENV"))}
    env |= {"LLAMACONTROLLER_ADMIN_PASSWORD": "package-admin-pw", "LLAMA_SERVER_BIN": llama_server_bin()}
    binary = str(tmp_path / "venv" / "bin" / "llamacontroller")
    with (home / "out.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health")
        login = httpx.get(f"{url}/ui/", follow_redirects=True)
        assert login.status_code == 200 and "password" in login.text
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        assert "htmx" in httpx.get(f"{url}/static/vendor/htmx-2.0.11.min.js").text

        # The default models folder (./data/models) is scanned: a GGUF dropped there is served.
        os.link(SMOLLM2, home / "data" / "models" / "smol.gguf")
        token = _run(binary, "tokens", "create", "--user", "admin", "--name", "pkg", cwd=home, env=env).strip()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token)
        deadline = time.monotonic() + 60
        while "smol" not in {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, "the dropped GGUF was never listed"
            time.sleep(0.5)
        answer = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert answer.choices[0].message.content
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        wait_no_engines(home / "data")
    assert proc.returncode in (0, -signal.SIGTERM), (home / "out.log").read_text()
