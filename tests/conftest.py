from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import GEMMA3, SMOLLM2, Controller, llama_server_bin, running_controller
from tests.servers import postgres_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Integration tests need the real engine and models: missing ones fail the run, never skip it.
    missing = [str(p) for p in (SMOLLM2, GEMMA3, Path(llama_server_bin())) if not p.exists()]
    if missing and any("integration" in str(item.fspath) for item in items):
        pytest.exit(f"run `make setup` first; missing: {', '.join(missing)}", returncode=1)


@pytest.fixture(scope="session")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """One controller with both demo models, shared by tests that do not change its config."""
    with running_controller(tmp_path_factory.mktemp("shared")) as ctl:
        yield ctl


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of the `postgres` database of a throwaway PostgreSQL the test run starts itself."""
    with postgres_server() as url:
        yield url
