"""Getting models without leaving the product: pulls from a Hub, the models folder scan, delete,
and conversion to GGUF, driven with the official ollama client, httpx, the CLI and a browser.

The Hugging Face Hub cannot be reached from here: a stand-in of the suite's own
(tests/standins/hub.py, a real HTTP server on a free port) serves the real SmolLM2 GGUF and the
safetensors demo folder, and the controller reaches it through HF_ENDPOINT, as a user's would
reach the Hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.harness import (
    SMOLLM2,
    SMOLLM2_ST,
    Controller,
    model_entry,
    running_controller,
    stand_in_hub,
    start_controller,
    wait_no_engines,
)

GGUF_REPO = "TheOrg/SmolLM2-GGUF"
ST_REPO = "TheOrg/SmolLM2-ST"
SLOW_RATE = 25 * 2**20  # bytes per second: the 94 MiB GGUF takes ~4 s


def make_hub_root(root: Path) -> Path:
    """Repositories as folders of links to the real model files."""
    repos = {
        GGUF_REPO: [SMOLLM2],
        "TheOrg/Private-GGUF": [SMOLLM2],
        "TheOrg/Corrupt-GGUF": [SMOLLM2],
        "TheOrg/Gated-GGUF": [SMOLLM2],
        ST_REPO: sorted(p for p in SMOLLM2_ST.iterdir() if p.is_file()),
    }
    for repo, files in repos.items():
        folder = root / repo
        folder.mkdir(parents=True)
        for file in files:
            (folder / file.name).symlink_to(file.resolve())
        (folder / "README.md").write_text(f"# {repo}\n")
    return root


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub_root(tmp_path_factory.mktemp("hub") / "repos")


@pytest.fixture(scope="module")
def hub(hub_root: Path) -> Iterator[str]:
    args = ["--private", "TheOrg/Private-GGUF", "--token", "hf_secret_token_for_tests"]
    args += ["--wrong-sha", "TheOrg/Corrupt-GGUF", "--gated", "TheOrg/Gated-GGUF"]
    with stand_in_hub(hub_root, *args) as (url, _):
        yield url


@pytest.fixture(scope="module")
def slow_hub(hub_root: Path) -> Iterator[tuple[str, Path]]:
    with stand_in_hub(hub_root, "--rate", str(SLOW_RATE)) as found:
        yield found


def catalog_config(**extra: Any) -> dict[str, Any]:
    return {"models_config": {"scan_interval": 0.5, **extra}}


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[Controller]:
    models = [
        model_entry("smollm2-135m", SMOLLM2, aliases=["smollm2"]),
        {"id": "smollm2-st", "backend": "auto", "path": str(SMOLLM2_ST), "ctx_size": 2048},
    ]
    root = tmp_path_factory.mktemp("catalog")
    env = {"HF_ENDPOINT": hub, "HF_TOKEN": ""}
    with running_controller(root, models=models, extra_env=env, **catalog_config()) as ctl:
        ctl.cli("users", "create", "uma", "--role", "user", "--password-stdin", stdin="uma-password-1\n")
        yield ctl


def models_dir(ctl: Controller) -> Path:
    return ctl.root / "data" / "models"


def model_ids(ctl: Controller) -> list[str]:
    with ctl.client() as client:
        return [m["id"] for m in client.get("/api/v1/models").json()["models"]]


def wait_job(ctl: Controller, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with ctl.client() as client:
        while True:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                return job
            assert time.monotonic() < deadline, f"job still {job['state']} after {timeout}s: {job}"
            time.sleep(0.2)


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------- pull


def test_ollama_client_pulls_from_the_hub_with_progress_then_the_model_answers(ctl: Controller) -> None:
    with ollama.Client(host=ctl.url, headers=ctl.headers()) as client:
        check_ollama_pull(ctl, client)


def check_ollama_pull(ctl: Controller, client: ollama.Client) -> None:
    name = f"hf.co/{GGUF_REPO}:Q4_1"
    statuses = [dict(part) for part in client.pull(name, stream=True)]
    kinds = [s["status"] for s in statuses]
    assert kinds[0] == "pulling manifest" and kinds[-1] == "success", kinds
    digest = "sha256:" + sha256(SMOLLM2)
    progress = [s for s in statuses if s.get("digest") == digest]
    assert progress and progress[-1]["completed"] == progress[-1]["total"] == SMOLLM2.stat().st_size
    assert kinds.index("verifying sha256 digest") < kinds.index("writing manifest") < kinds.index("success")

    reply = client.chat(model=name, messages=[{"role": "user", "content": "Say hi"}], options={"num_predict": 8})
    assert reply.message.content
    assert f"{GGUF_REPO}:q4_1" in [m.model for m in client.list().models]
    # The file landed under models_dir, whole, with the Hub's digest; nothing was left staged.
    pulled = models_dir(ctl) / "TheOrg--SmolLM2-GGUF" / SMOLLM2.name
    assert sha256(pulled) == sha256(SMOLLM2)
    assert not list((models_dir(ctl) / ".downloads").glob("*/*"))
    # Pulling it again is Ollama's "up to date": success at once.
    assert [dict(p)["status"] for p in client.pull(name, stream=True)][-1] == "success"
    with ctl.client() as api:
        listed = {m["id"]: m for m in api.get("/api/v1/models").json()["models"]}
        assert f"{GGUF_REPO}:q4_1" in listed and name in listed[f"{GGUF_REPO}:q4_1"]["aliases"]
        audit = api.get("/api/v1/audit", params={"action": "model.pull"}).json()["entries"]
        assert any(e["target"] == name and e["result"] == "ok" for e in audit)


def test_safetensors_pull_over_the_api_with_sse_progress(ctl: Controller) -> None:
    with ctl.client() as client:
        job = client.post("/api/v1/models/pull", json={"source": ST_REPO}).json()
        assert job["state"] in ("queued", "running") and job["model_id"] == ST_REPO
        events = []
        with client.stream("GET", f"/api/v1/jobs/{job['id']}", params={"follow": "true"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["state"] == "done" and events[-1]["bytes"] == events[-1]["total"]
        folder = models_dir(ctl) / "TheOrg--SmolLM2-ST"
        assert files_under(folder) == sorted(p.name for p in SMOLLM2_ST.iterdir() if p.is_file())  # no README
        listed = {m["id"]: m for m in client.get("/api/v1/models").json()["models"]}
        assert listed[ST_REPO]["path"] == str(folder) and listed[ST_REPO]["backend"] == "auto"
        assert listed[ST_REPO]["origin"] == "pulled" and listed["smollm2-st"]["origin"] == "config"


def test_sha256_mismatch_is_refused_and_nothing_is_kept(ctl: Controller) -> None:
    with ctl.client() as client:
        job = client.post("/api/v1/models/pull", json={"source": "TheOrg/Corrupt-GGUF:Q4_1"}).json()
        done = wait_job(ctl, job["id"])
        assert done["state"] == "failed" and "sha256 mismatch" in done["error"], done
        assert "TheOrg/Corrupt-GGUF:q4_1" not in model_ids(ctl)
        assert not (models_dir(ctl) / "TheOrg--Corrupt-GGUF").exists()
        assert not (models_dir(ctl) / ".downloads" / job["id"]).exists()


def test_bad_sources_and_hub_refusals_get_clear_errors(ctl: Controller) -> None:
    with ctl.client() as client:
        for source in ("../../etc/passwd", "a/b/c", "org/..", "/abs/path", "x" * 400, "org/repo:../../x"):
            r = client.post("/api/v1/models/pull", json={"source": source})
            assert r.status_code in (400, 422), (source, r.text)
        r = client.post("/api/v1/models/pull", json={"source": "TheOrg/Nope"})
        assert r.status_code == 404 and "not found on the Hub" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/pull", json={"source": "TheOrg/Private-GGUF"})
        assert r.status_code == 404 and "HF_TOKEN" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/pull", json={"source": "TheOrg/Gated-GGUF"})
        assert r.status_code == 403 and "gated" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/pull", json={"source": f"{GGUF_REPO}:Q8_0"})
        assert r.status_code == 404 and "it has Q4_1" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/pull", json={"source": GGUF_REPO, "extra": 1})
        assert r.status_code == 400
        # Ollama dialect: its error shape, and only Hugging Face names.
        r = client.post("/api/pull", json={"model": "llama3:8b"})
        assert r.status_code == 400 and "hf.co/" in r.json()["error"]
        r = client.post("/api/pull", json={"model": "hf.co/TheOrg/Nope:Q4_1"})
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
        r = client.request("DELETE", "/api/delete", json={"model": "no-such-model"})
        assert r.status_code == 404 and "not found" in r.json()["error"]
        assert client.get("/api/v1/jobs/not-a-job-id").status_code == 400
        assert client.get("/api/v1/jobs/0123456789abcdef").status_code == 404


def test_least_privilege_callers_cannot_pull_delete_or_convert(ctl: Controller) -> None:
    inference = ctl.token("uma-inference", "uma")
    restricted = ctl.token("restricted-manager", "admin", "--scope", "models:manage", "--model", "smollm2-135m")
    for token, status in ((inference, 403), (restricted, 403)):
        with ctl.client(token) as client:
            assert client.post("/api/v1/models/pull", json={"source": GGUF_REPO}).status_code == status
            assert client.post("/api/pull", json={"model": f"hf.co/{GGUF_REPO}:Q4_1"}).status_code == status
            assert client.post("/api/v1/models/convert", json={"model_id": "smollm2-st"}).status_code == status
    with ctl.client(inference) as client:
        assert client.request("DELETE", "/api/delete", json={"model": "smollm2-135m"}).status_code == 403
        assert client.delete("/api/v1/models/smollm2-135m").status_code == 403
        assert client.get("/api/v1/jobs").status_code == 403
    with httpx.Client(base_url=ctl.url) as anonymous:
        assert anonymous.post("/api/v1/models/pull", json={"source": GGUF_REPO}).status_code == 401
        assert anonymous.post("/api/pull", json={"model": f"hf.co/{GGUF_REPO}:Q4_1"}).status_code == 401
    assert "smollm2-135m" in model_ids(ctl)


def test_private_repo_with_a_token_from_the_environment_and_the_token_is_never_logged(tmp_path: Path, hub: str) -> None:
    token = "hf_secret_token_for_tests"
    env = {"HF_ENDPOINT": hub, "HF_TOKEN": token}
    with running_controller(tmp_path, models=[], extra_env=env, **catalog_config()) as ctl, ctl.client() as client:
        job = client.post("/api/v1/models/pull", json={"source": "TheOrg/Private-GGUF:Q4_1"}).json()
        assert wait_job(ctl, job["id"])["state"] == "done"
        assert "TheOrg/Private-GGUF:q4_1" in model_ids(ctl)
        audit = json.dumps(client.get("/api/v1/audit").json())
    assert token not in ctl.log() and token not in audit


# ------------------------------------------------------------------------ resume after a kill


def test_a_pull_resumes_after_the_controller_is_killed_and_no_partial_file_is_a_model(
    tmp_path: Path, slow_hub: tuple[str, Path]
) -> None:
    url, hub_log = slow_hub
    env = {"HF_ENDPOINT": url}
    first = start_controller(tmp_path, models=[], extra_env=env, **catalog_config())
    try:
        with first.client() as client:
            job = client.post("/api/v1/models/pull", json={"source": f"{GGUF_REPO}:Q4_1"}).json()
            deadline = time.monotonic() + 30
            while (seen := client.get(f"/api/v1/jobs/{job['id']}").json())["bytes"] < job["total"] // 4:
                assert time.monotonic() < deadline, seen
                assert seen["state"] == "running", seen
                time.sleep(0.1)
            assert seen["speed"] > 0 and seen["eta"] is not None
            ollama_names = [m["name"] for m in client.get("/api/tags").json()["models"]]
            assert not any("smollm2-gguf" in n.lower() for n in ollama_names), ollama_names
            time.sleep(0.6)  # a scan of models_dir happens meanwhile: the staged part is not a model
            assert model_ids(first) == []
    finally:
        first.stop(signal.SIGKILL)
    staged = list((tmp_path / "data" / "models" / ".downloads").rglob("*.gguf"))
    assert len(staged) == 1 and 0 < staged[0].stat().st_size < SMOLLM2.stat().st_size
    kept = staged[0].stat().st_size

    with running_controller(tmp_path, models=[], extra_env=env, **catalog_config()) as second:
        done = wait_job(second, job["id"])
        assert done["state"] == "done", done
        assert f"{GGUF_REPO}:q4_1" in model_ids(second)
        pulled = tmp_path / "data" / "models" / "TheOrg--SmolLM2-GGUF" / SMOLLM2.name
        assert sha256(pulled) == sha256(SMOLLM2)
        ranges = [line for line in hub_log.read_text().splitlines() if "/resolve/" in line and "range=bytes=" in line]
        assert any(int(line.split("range=bytes=")[1].rstrip("-")) >= kept for line in ranges), ranges
        # It persists: still a model after another restart, and it answers.
    with running_controller(tmp_path, models=[], extra_env=env, **catalog_config()) as third:
        assert f"{GGUF_REPO}:q4_1" in model_ids(third)
        with third.client() as client:
            r = client.post(
                "/v1/chat/completions",
                json={
                    "model": f"hf.co/{GGUF_REPO}:Q4_1",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                },
            )
            assert r.status_code == 200, r.text


def test_cancel_deletes_what_was_staged(tmp_path: Path, slow_hub: tuple[str, Path]) -> None:
    url, _ = slow_hub
    with running_controller(tmp_path, models=[], extra_env={"HF_ENDPOINT": url}, **catalog_config()) as ctl:
        with ctl.client() as client:
            job = client.post("/api/v1/models/pull", json={"source": GGUF_REPO}).json()
            time.sleep(0.5)
            cancelled = client.delete(f"/api/v1/jobs/{job['id']}").json()
            assert cancelled["state"] == "cancelled"
            assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 409
        assert not (ctl.data_dir / "models" / ".downloads" / job["id"]).exists()
        assert model_ids(ctl) == []


# --------------------------------------------------------------------------- scan, delete


def test_models_dir_scan_finds_ggufs_split_sets_mmproj_and_safetensors_folders(ctl: Controller, tmp_path: Path) -> None:
    elsewhere = tmp_path / "Tiny-Model.Q8_0.gguf"  # outside models_dir: only the link to it is ever deleted
    shutil.copy(SMOLLM2, elsewhere)
    folder = models_dir(ctl) / "dropped"
    folder.mkdir(parents=True)
    (folder / "Tiny-Model.Q8_0.gguf").symlink_to(elsewhere)
    vision = models_dir(ctl) / "vision"
    vision.mkdir()
    (vision / "Eyes-Q4_K_M.gguf").write_bytes(b"GGUF")
    (vision / "mmproj-Eyes-f16.gguf").write_bytes(b"GGUF")
    (folder / "Big-00001-of-00002.gguf").write_bytes(b"GGUF")
    st = models_dir(ctl) / "My-ST"
    st.mkdir()
    shutil.copy(SMOLLM2_ST / "config.json", st / "config.json")
    (st / "model.safetensors").write_bytes(b"\0" * 16)
    (models_dir(ctl) / "same-as-yaml.gguf").symlink_to(SMOLLM2)  # the YAML's model file: not listed twice

    def listed() -> dict[str, Any]:
        with ctl.client() as client:
            return {m["id"]: m for m in client.get("/api/v1/models").json()["models"]}

    def wait_for(check: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not check(found := listed()):
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
        return found

    found = wait_for(lambda f: "Tiny-Model.Q8_0" in f and "My-ST" in f and "Eyes-Q4_K_M" in f)
    assert found["Eyes-Q4_K_M"]["args"] == ["--mmproj", str(vision / "mmproj-Eyes-f16.gguf")]
    assert found["Tiny-Model.Q8_0"]["args"] == [] and found["My-ST"]["backend"] == "auto"
    assert found["My-ST"]["origin"] == "scanned"
    assert "Big" not in found and "mmproj-Eyes-f16" not in found and "same-as-yaml" not in found
    (folder / "Big-00002-of-00002.gguf").write_bytes(b"GGUF")
    found = wait_for(lambda f: "Big" in f)
    assert found["Big"]["path"] == str(folder / "Big-00001-of-00002.gguf")

    with ctl.client() as client:
        # A scanned GGUF answers like any model; deleting it while loaded needs force.
        chat = {"model": "tiny-model.q8_0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
        r = client.delete("/api/v1/models/Tiny-Model.Q8_0")
        assert r.status_code == 409 and "unload it first" in r.json()["error"]["message"]
        r = client.delete("/api/v1/models/Tiny-Model.Q8_0", params={"force": "true"})
        assert r.status_code == 200 and r.json()["origin"] == "scanned", r.text
        assert not (folder / "Tiny-Model.Q8_0.gguf").exists() and elsewhere.exists()
        r = client.delete("/api/v1/models/Big")
        assert r.json()["files"] == [str(folder / f"Big-0000{i}-of-00002.gguf") for i in (1, 2)]
        assert client.delete("/api/v1/models/My-ST").status_code == 200 and not st.exists()
        (models_dir(ctl) / "same-as-yaml.gguf").unlink()
        shutil.rmtree(vision)
    wait_for(lambda f: not {"Tiny-Model.Q8_0", "Big", "My-ST", "Eyes-Q4_K_M"} & set(f))


def test_delete_refuses_yaml_models_and_removes_pulled_ones(ctl: Controller) -> None:
    with ctl.client() as client:
        r = client.delete("/api/v1/models/smollm2-135m")
        assert r.status_code == 409 and "models-config.yaml" in r.json()["error"]["message"]
        assert SMOLLM2.exists()
        job = client.post("/api/v1/models/pull", json={"source": "TheOrg/Gated-GGUF"})
        assert job.status_code == 403
        # The pull from the first test, deleted the Ollama way (or pulled here when run alone).
        name = f"hf.co/{GGUF_REPO}:Q4_1"
        if f"{GGUF_REPO}:q4_1" not in model_ids(ctl):
            wait_job(ctl, client.post("/api/v1/models/pull", json={"source": name}).json()["id"])
        client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
        r = client.request("DELETE", "/api/delete", json={"model": name})
        assert r.status_code == 409 and "unload it first" in r.json()["error"]  # Ollama's dialect
        client.post("/api/v1/models/unload", json={"model_id": name})
        r = client.request("DELETE", "/api/delete", json={"model": name})
        assert r.status_code == 200, r.text
        assert not (models_dir(ctl) / "TheOrg--SmolLM2-GGUF").exists()
        assert f"{GGUF_REPO}:q4_1" not in model_ids(ctl)
        audit = client.get("/api/v1/audit", params={"action": "model.delete"}).json()["entries"]
        assert any(e["target"] == f"{GGUF_REPO}:q4_1" and e["result"] == "ok" for e in audit)


# ------------------------------------------------------------------------------- convert


@pytest.mark.slow
def test_safetensors_demo_converted_to_q8_0_answers_paris(ctl: Controller) -> None:
    with ctl.client() as client:
        r = client.post("/api/v1/models/convert", json={"model_id": "smollm2-st", "type": "q8_0"})
        assert r.status_code == 202, r.text
        done = wait_job(ctl, r.json()["id"], timeout=240)
        assert done["state"] == "done" and done["model_id"] == "smollm2-st-q8_0", done
        listed = {m["id"]: m for m in client.get("/api/v1/models").json()["models"]}
        assert listed["smollm2-st-q8_0"]["backend"] == "llamacpp"
        assert listed["smollm2-st-q8_0"]["origin"] == "converted"
        assert listed["smollm2-st-q8_0"]["path"].endswith("smollm2-st-q8_0.gguf")
        r = client.post("/api/v1/models/convert", json={"model_id": "smollm2-135m", "type": "q8_0"})
        assert r.status_code == 400 and "not a safetensors" in r.json()["error"]["message"]
        r = client.post("/api/v1/models/convert", json={"model_id": "smollm2-st", "type": "q2_k"})
        assert r.status_code == 400
    answer = openai.OpenAI(base_url=ctl.url + "/v1", api_key=ctl.token()).chat.completions.create(
        model="smollm2-st-q8_0",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")


# ------------------------------------------------------------------------------------ CLI


def test_cli_pulls_with_a_progress_bar_and_deletes(tmp_path: Path, hub: str) -> None:
    with running_controller(tmp_path, models=[], extra_env={"HF_ENDPOINT": hub}, **catalog_config()) as ctl:
        env = {**ctl.env, "LLAMACONTROLLER_TOKEN": ctl.token(), "LLAMACONTROLLER_URL": ctl.url}
        run = subprocess.run(
            [sys.executable, "-m", "llamacontroller", "models", "pull", f"{GGUF_REPO}:Q4_1"],
            env=env, cwd=ctl.root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{GGUF_REPO}:q4_1", run.stderr
        run = subprocess.run(
            [sys.executable, "-m", "llamacontroller", "models", "delete", f"{GGUF_REPO}:q4_1"],
            env=env, cwd=ctl.root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0 and "deleted" in run.stdout, run.stderr
        run = subprocess.run(
            [sys.executable, "-m", "llamacontroller", "models", "pull", "TheOrg/Nope"],
            env=env, cwd=ctl.root, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 1 and "not found on the Hub" in run.stderr
    wait_no_engines(ctl.data_dir)


# ------------------------------------------------------------------------------ dashboard


def test_dashboard_pull_shows_a_moving_progress_bar_then_delete_asks_first(
    tmp_path: Path, slow_hub: tuple[str, Path]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.integration.test_dashboard import CHROMIUM, log_in

    url, _ = slow_hub
    with (
        running_controller(tmp_path, models=[], extra_env={"HF_ENDPOINT": url}, **catalog_config()) as ctl,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.set_default_timeout(30_000)
        dialogs: list[str] = []
        log_in(page, ctl)
        page.get_by_label("From Hugging Face").fill(f"hf.co/{GGUF_REPO}:Q4_1")
        page.get_by_role("button", name="Pull").click()
        bar = page.locator("tr.job progress")
        expect(bar).to_be_visible()
        seen = set()
        deadline = time.monotonic() + 30
        while page.locator('tr.job[data-state="running"]').count() and time.monotonic() < deadline:
            seen.add(float(bar.get_attribute("value") or 0))
            time.sleep(0.3)
        assert len(seen) >= 3, f"the bar did not move: {sorted(seen)}"  # ~4 s at the stand-in's rate
        expect(page.locator('tr.job[data-state="done"]')).to_be_visible()
        row = page.locator(f'tr.model-row[data-model="{GGUF_REPO}:q4_1"]')
        expect(row).to_be_visible()  # the models table redrew itself when the model appeared

        pulled = ctl.data_dir / "models" / "TheOrg--SmolLM2-GGUF" / SMOLLM2.name
        page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        row.get_by_role("button", name="Delete").click()
        expect(row).to_be_visible()
        assert pulled.exists() and "cannot be undone" in dialogs[-1]  # dismissed: nothing happened
        page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
        row.get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)
        assert not pulled.exists()
        browser.close()
