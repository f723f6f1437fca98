"""Pure parts of the catalog: source names, the Hub file choice, checked paths, the folder scan,
the merge with the YAML, and deletion confined to models_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamacontroller.catalog.hub import RemoteFile, choose, parse_source, safe_path
from llamacontroller.catalog.jobs import remove_files
from llamacontroller.catalog.scan import merge, model_id_for, scan
from llamacontroller.config import ModelEntry, ModelsConfig
from llamacontroller.errors import BadRequest, NotFound


def files(*names: str) -> list[RemoteFile]:
    return [RemoteFile(name, 10, "a" * 64 if name.endswith((".gguf", ".safetensors")) else None) for name in names]


@pytest.mark.parametrize(
    ("text", "repo", "pick"),
    [
        ("org/repo", "org/repo", None),
        ("hf.co/org/repo:Q4_K_M", "org/repo", "Q4_K_M"),
        ("https://huggingface.co/Org-1/re.po_2:model-q8_0.gguf", "Org-1/re.po_2", "model-q8_0.gguf"),
    ],
)
def test_sources(text: str, repo: str, pick: str | None) -> None:
    source = parse_source(text)
    assert (source.repo, source.pick) == (repo, pick)


@pytest.mark.parametrize(
    "text", ["", "repo", "a/b/c", "../etc/passwd", "org/..", "org/repo:../x", "/abs/x", "org/re po", "hf.co/a", "a/b:"]
)
def test_bad_sources(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_source(text)


@pytest.mark.parametrize("name", ["../x.gguf", "/etc/passwd", "a/../../b", ".hidden", "a\\b", "a/b/c/d/e.gguf", ""])
def test_unsafe_hub_names_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        safe_path(name)


def test_quant_picks_its_file_and_the_mmproj_beside_it() -> None:
    repo = files("m-Q4_K_M.gguf", "m-Q4_K.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "mmproj-m-bf16.gguf", "README.md")
    kind, quant, chosen, model, mmproj = choose("o/r", repo, "q4_k_m")
    assert (kind, quant, model, mmproj) == ("gguf", "Q4_K_M", "m-Q4_K_M.gguf", "mmproj-m-f16.gguf")
    assert [f.path for f in chosen] == ["m-Q4_K_M.gguf", "mmproj-m-f16.gguf"]
    assert choose("o/r", repo, "Q4_K")[3] == "m-Q4_K.gguf"  # not Q4_K_M


def test_no_tag_means_q4_k_m_or_the_only_gguf() -> None:
    assert choose("o/r", files("a.Q8_0.gguf", "a.Q4_K_M.gguf"), None)[3] == "a.Q4_K_M.gguf"
    assert choose("o/r", files("SmolLM2.Q4_1.gguf"), None)[1:4:2] == ("Q4_1", "SmolLM2.Q4_1.gguf")
    with pytest.raises(NotFound, match="it has Q4_1, Q8_0"):
        choose("o/r", files("a.Q4_1.gguf", "a.Q8_0.gguf"), None)


def test_split_sets_come_whole_and_incomplete_ones_are_refused() -> None:
    parts = [f"big-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    _, _, chosen, model, _ = choose("o/r", files(*parts), "Q8_0")
    assert [f.path for f in chosen] == parts and model == parts[0]
    with pytest.raises(NotFound, match="incomplete"):
        choose("o/r", files(*parts[:2]), "Q8_0")


def test_a_file_name_picks_that_file_and_safetensors_repos_come_as_folders() -> None:
    assert choose("o/r", files("x/a.gguf", "b.gguf"), "a.gguf")[3] == "x/a.gguf"
    with pytest.raises(BadRequest):
        choose("o/r", files("a.gguf", "README.md"), "README.md")
    kind, _, chosen, model, _ = choose(
        "o/r", files("config.json", "model.safetensors", "tokenizer.json", "pytorch_model.bin", "run.py"), None
    )
    assert kind == "safetensors" and model == ""
    assert sorted(f.path for f in chosen) == ["config.json", "model.safetensors", "tokenizer.json"]
    with pytest.raises(NotFound):
        choose("o/r", files("README.md"), None)


def test_scan_and_merge(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "Model One.Q4_K_M.gguf").write_bytes(b"")
    (tmp_path / "a" / "mmproj-x.gguf").write_bytes(b"")
    (tmp_path / "split-00001-of-00002.gguf").write_bytes(b"")
    (tmp_path / ".downloads" / "job").mkdir(parents=True)
    (tmp_path / ".downloads" / "job" / "partial.gguf").write_bytes(b"")
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "config.json").write_text("{}")
    (tmp_path / "st" / "model.safetensors").write_bytes(b"")
    found = {e.id: e for e in scan(tmp_path)}
    assert set(found) == {"Model-One.Q4_K_M", "st"}  # no partial, no incomplete split, no mmproj
    assert found["Model-One.Q4_K_M"].args == ["--mmproj", str(tmp_path / "a" / "mmproj-x.gguf")]
    yaml = ModelsConfig(models=[ModelEntry(id="st", path=str(tmp_path / "elsewhere"))])
    merged = merge(yaml, list(found.values()))
    assert [e.id for e in merged.models] == ["st", "Model-One.Q4_K_M"]  # the YAML's `st` wins
    assert model_id_for("Big-00001-of-00003.gguf") == "Big" and model_id_for("../../x y.gguf") == "x-y"


def test_remove_files_stays_inside_models_dir(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "org").mkdir(parents=True)
    (models / "org" / "m.gguf").write_bytes(b"x")
    outside = tmp_path / "keep.gguf"
    outside.write_bytes(b"x")
    (models / "link.gguf").symlink_to(outside)
    assert remove_files([models / "link.gguf"], models) == [str(models / "link.gguf")] and outside.exists()
    assert remove_files([models / "org" / "m.gguf"], models) and not (models / "org").exists()
    for bad in (outside, models / ".." / "keep.gguf"):
        with pytest.raises(BadRequest):
            remove_files([bad], models)
    assert outside.exists()
