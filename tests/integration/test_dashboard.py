"""The dashboard in a real browser: Playwright driving Debian's Chromium (never a downloaded one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.harness import GEMMA3, SMOLLM2, Controller, model_entry, running_controller

CHROMIUM = "/usr/bin/chromium"
XSS = "<script>alert('pwned')</script>"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    models = [model_entry("smollm2-135m", SMOLLM2, name=f"Smol {XSS}"), model_entry("gemma3-270m", GEMMA3)]
    with running_controller(tmp_path_factory.mktemp("ui"), models=models) as ctl:
        ctl.cli("users", "create", "olive", "--role", "operator", "--password-stdin", stdin="olive-password\n")
        yield ctl


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "make setup installs Debian's chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    yield page
    assert not dialogs, f"a script ran: {dialogs}"
    context.close()


def log_in(page: Page, ctl: Controller, user: str = "admin", password: str | None = None) -> None:
    page.goto(ctl.url + "/")  # browsers are sent to the dashboard, then to the login page
    expect(page).to_have_url(ctl.url + "/ui/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password or ctl.admin_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()


def test_load_model_and_watch_it_become_ready(page: Page, ui: Controller) -> None:
    log_in(page, ui)
    row = page.locator('tr[data-model="gemma3-270m"]')
    expect(row.locator(".state")).to_have_text("stopped")
    page.evaluate("window.__sameDocument = true")
    row.get_by_role("button", name="Load").click()
    expect(page.locator('tr[data-model="gemma3-270m"] .state')).to_have_text("ready", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened


def test_live_log_shows_new_lines(page: Page, ui: Controller) -> None:
    log_in(page, ui)
    with ui.client() as api:
        api.post("/api/v1/models/load", json={"model_id": "smollm2-135m"})
    page.goto(ui.url + "/ui/models/smollm2-135m")
    log = page.locator("#log")
    expect(log).to_contain_text("llama-server", timeout=15_000)  # the recorded command line
    page.wait_for_timeout(500)  # the backlog has arrived
    before = log.inner_text().count("stop processing")
    with ui.client() as api:
        api.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "hello", "max_tokens": 2})
    # The engine logs each finished request ("stop processing"): a new one must appear, live.
    page.wait_for_function(
        "n => document.querySelector('#log').textContent.split('stop processing').length - 1 > n", arg=before
    )


def test_token_created_in_ui_works_until_revoked_in_ui(page: Page, ui: Controller) -> None:
    log_in(page, ui)
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill(f"ui token {XSS}")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").inner_text()
    assert token.startswith("lc_")
    with openai.OpenAI(base_url=f"{ui.url}/v1", api_key=token, max_retries=0) as client:
        assert [m.id for m in client.models.list()]
        row = page.locator("tr", has_text="ui token")
        expect(row).to_contain_text(XSS)  # rendered as text
        row.get_by_role("button", name="Revoke").click()
        expect(page.locator("tr", has_text="ui token")).to_contain_text("revoked")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_operator_cannot_open_users_or_audit(page: Page, ui: Controller) -> None:
    log_in(page, ui, "olive", "olive-password")
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    for path in ("/ui/users", "/ui/audit", "/ui/usage"):
        response = page.goto(ui.url + path)
        assert response is not None and response.status == 403


def test_post_without_csrf_token_is_refused(page: Page, ui: Controller) -> None:
    log_in(page, ui)
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: new URLSearchParams({name: "x"})})).status""",
        ui.url + "/ui/tokens",
    )
    assert status == 403
    api_status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({model_id: "gemma3-270m"})})).status""",
        ui.url + "/api/v1/models/unload",
    )
    assert api_status == 403


def test_hostile_names_render_as_text(page: Page, ui: Controller) -> None:
    log_in(page, ui)
    expect(page.locator('tr[data-model="smollm2-135m"]')).to_contain_text(XSS)
    assert "<script>alert" not in page.content()  # escaped in the HTML, so never parsed as a tag
    page.goto(ui.url + "/ui/models/smollm2-135m")
    expect(page.get_by_role("heading", level=1)).to_contain_text(XSS)


def test_logged_out_pages_and_htmx_go_to_login(page: Page, ui: Controller) -> None:
    response = page.goto(ui.url + "/ui/tokens")
    expect(page).to_have_url(ui.url + "/ui/login")
    assert response is not None
    status = page.evaluate(
        """async (url) => { const r = await fetch(url, {headers: {"HX-Request": "true"}});
            return [r.status, r.headers.get("HX-Redirect")]; }""",
        ui.url + "/ui/models/gemma3-270m/row",
    )
    assert status == [401, "/ui/login"]


def test_usable_at_375_px(browser: Browser, ui: Controller) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    log_in(page, ui)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380, width  # wide tables scroll inside their box, the page does not
    context.close()


def test_admin_pages_render(page: Page, ui: Controller) -> None:
    with ui.client() as api:
        api.post(
            "/v1/completions",
            json={"model": "smollm2-135m", "prompt": "hi", "max_tokens": 2},
            headers={"X-Request-ID": "dashboard-usage"},
        )
    ui.usage_row(lambda r: r["request_id"] == "dashboard-usage")
    log_in(page, ui)
    for path, heading in (
        ("/ui/usage", "Usage"),
        ("/ui/audit", "Audit log"),
        ("/ui/users", "Users"),
        ("/ui/password", "Change your password"),
    ):
        response = page.goto(ui.url + path)
        assert response is not None and response.status == 200, path
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
    page.goto(ui.url + "/ui/usage")
    expect(page.locator("svg.chart").first).to_be_visible()
    page.goto(ui.url + "/ui/audit?action=login.success")
    expect(page.locator("tbody tr").first).to_contain_text("login.success")
