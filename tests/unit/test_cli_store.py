"""CLI commands that touch only the database open only the database: no supervisor is built
(it would read every model file's header and open every engine log)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llamacontroller import cli
from llamacontroller.supervisor import manager


def test_user_and_token_commands_never_build_a_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "models-config.yaml").write_text(
        "models:\n  - id: tiny\n    path: /nonexistent/tiny.gguf\n    aliases: [small]\n"
    )
    monkeypatch.setenv("LLAMACONTROLLER_CONFIG_DIR", str(config))
    monkeypatch.setenv("LLAMACONTROLLER_DATA_DIR", str(tmp_path / "data"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a database-only command built the supervisor")

    monkeypatch.setattr(manager.Supervisor, "__init__", refuse)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(cli.main, list(args), input=stdin)
        assert result.exit_code == 0, result.output
        return result.output

    run("users", "create", "alice", "--role", "operator", "--password-stdin", stdin="a-long-password\n")
    assert "alice\toperator" in run("users", "list")
    token = run("tokens", "create", "--user", "alice", "--name", "ci", "--model", "small").splitlines()[0]
    assert token.startswith("lc_")
    listed = run("tokens", "list")
    assert "ci\talice" in listed and "active" in listed
    run("tokens", "revoke", "1")
    assert "revoked" in run("tokens", "list")
    run("users", "disable", "alice")
    assert "(disabled)" in run("users", "list")
    unknown = runner.invoke(cli.main, ["tokens", "create", "--user", "alice", "--name", "x", "--model", "nope"])
    assert unknown.exit_code == 1 and "not found" in unknown.output
