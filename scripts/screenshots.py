"""Regenerate docs/screenshots/*.png: every dashboard page of a running instance, in Chromium.

With no arguments it starts its own controller with the demo models (and some traffic, so the
usage page has bars); or point it at one: screenshots.py URL ADMIN_PASSWORD.
Usage: .venv/bin/python scripts/screenshots.py [URL PASSWORD]
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
PAGES = {
    "models": "/ui/",
    "model-detail": "/ui/models/smollm2-135m",
    "tokens": "/ui/tokens",
    "users": "/ui/users",
    "audit": "/ui/audit",
    "usage": "/ui/usage",
    "password": "/ui/password",
}


@contextlib.contextmanager
def demo_instance() -> Iterator[tuple[str, str]]:
    from tests.harness import running_controller

    with running_controller(Path(tempfile.mkdtemp(prefix="screenshots-"))) as ctl:
        with ctl.client() as api:
            api.post("/api/v1/models/load", json={"model_id": "smollm2-135m"})
            for prompt in ("Hello", "What is a llama?", "Count to three"):
                api.post(
                    "/v1/chat/completions",
                    json={"model": "smollm2", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]},
                )
            api.post(
                "/api/chat",
                json={
                    "model": "gemma3",
                    "stream": False,
                    "options": {"num_predict": 8},
                    "messages": [{"role": "user", "content": "Hi"}],
                },
            )
        yield ctl.url, ctl.admin_password


def shoot(url: str, password: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/ui/login")
        page.screenshot(path=str(OUT / "login.png"))
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(url + "/ui/")
        for name, path in PAGES.items():
            page.goto(url + path)
            page.wait_for_timeout(800)  # live log lines and SSE updates
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
            print(f"docs/screenshots/{name}.png")
        browser.close()


if __name__ == "__main__":
    if len(sys.argv) == 3:
        httpx.get(sys.argv[1] + "/health").raise_for_status()
        shoot(sys.argv[1], sys.argv[2])
    else:
        with demo_instance() as (url, password):
            shoot(url, password)
