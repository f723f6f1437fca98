from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from llamacontroller.config import (
    AuthConfig,
    ConfigError,
    LlamaCppConfig,
    ModelEntry,
    ModelsConfig,
    json_schema,
    load_settings,
    parse_size,
)

ROOT = Path(__file__).resolve().parents[2]


def copy_config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(ROOT / "config", target)
    return target


def test_shipped_config_validates() -> None:
    settings = load_settings(config_dir=ROOT / "config")
    assert [m.id for m in settings.models.models] == [
        "smollm2-135m",
        "gemma3-270m",
        "smollm2-135m-st",
        "smollm2-135m-hf",
    ]


def test_generated_schema_is_current() -> None:
    shipped = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    assert shipped == json_schema(), "run: llamacontroller config schema > docs/config.schema.json"


def test_bad_backend_names_file_entry_and_key(tmp_path: Path) -> None:
    config = copy_config(tmp_path)
    path = config / "models-config.yaml"
    path.write_text(path.read_text().replace("backend: llamacpp", "backend: nope", 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(config_dir=config)
    message = str(caught.value)
    assert "models-config.yaml" in message
    assert "models[0] (id 'smollm2-135m').backend" in message


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    config = copy_config(tmp_path)
    (config / "llamacpp-config.yaml").write_text("start_timeot: 5\n")
    with pytest.raises(ConfigError, match=r"llamacpp-config\.yaml: start_timeot: Extra inputs"):
        load_settings(config_dir=config)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    config = copy_config(tmp_path)
    (config / "auth-config.yaml").write_text("require_api_token: [\n")
    with pytest.raises(ConfigError, match=r"auth-config\.yaml: not valid YAML"):
        load_settings(config_dir=config)


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = copy_config(tmp_path)
    monkeypatch.setenv("LLAMACONTROLLER_MODELS__MAX_LOADED_MODELS", "1")
    monkeypatch.setenv("LLAMACONTROLLER_AUTH__REQUIRE_API_TOKEN", "false")
    monkeypatch.setenv("LLAMA_SERVER_BIN", "/opt/llama-server")
    settings = load_settings(config_dir=config)
    assert settings.models.max_loaded_models == 1
    assert settings.auth.require_api_token is False
    assert settings.llama_server_bin == "/opt/llama-server"
    assert len(settings.models.models) == 4  # the YAML list survives a scalar override


def test_duplicate_names_across_models_rejected() -> None:
    with pytest.raises(ValueError, match="used by both"):
        ModelsConfig(
            models=[
                ModelEntry(id="a", path="x.gguf", aliases=["shared"]),
                ModelEntry(id="b", path="y.gguf", aliases=["Shared:latest"]),
            ]
        )


@pytest.mark.parametrize("entry", [{"id": "r", "backend": "remote"}, {"id": "l", "backend": "llamacpp"}])
def test_backend_requirements(entry: dict) -> None:
    with pytest.raises(ValueError, match="needs"):
        ModelEntry(**entry)


def test_model_ids_are_restricted() -> None:
    with pytest.raises(ValueError):
        ModelEntry(id="<script>", path="x.gguf")


@pytest.mark.parametrize(
    ("text", "size"), [("8GiB", 8 * 2**30), ("512M", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), (42, 42)]
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for model in (LlamaCppConfig, ModelsConfig, ModelEntry, AuthConfig):
        for name in model.model_fields:
            assert re.search(rf"`{name}`", doc), f"docs/configuration.md does not mention `{name}`"


def test_shipped_yaml_has_only_known_keys() -> None:
    for name in ("llamacpp-config.yaml", "models-config.yaml", "auth-config.yaml"):
        assert isinstance(yaml.safe_load((ROOT / "config" / name).read_text()), dict)


def test_bare_file_names_are_found_in_models_dir() -> None:
    config = ModelsConfig(
        models_dir="/srv/models",
        models=[ModelEntry(id="a", path="a.gguf"), ModelEntry(id="b", path="other/b.gguf")],
    )
    assert [m.path for m in config.models] == ["/srv/models/a.gguf", "other/b.gguf"]
