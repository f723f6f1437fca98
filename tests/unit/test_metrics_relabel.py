"""Engines' own metrics, merged into one exposition with a `model` label each."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llamacontroller.config import Settings
from llamacontroller.metrics import _Fixed, relabel

LLAMA = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 12
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
"""
VLLM = """# HELP vllm:num_requests_running Running requests.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m",model="theirs"} 2
"""


def exposition(scraped: list[tuple[str, str]]) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(relabel(scraped)))
    text = generate_latest(registry).decode()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_each_engine_gets_its_model_label_and_families_merge() -> None:
    out = exposition([("a", LLAMA), ("b", LLAMA.replace(" 12", " 30")), ("c", VLLM)])
    assert out["llamacpp:prompt_tokens"] == [({"model": "a"}, 12.0), ({"model": "b"}, 30.0)]
    assert out["vllm:num_requests_running"] == [({"model": "c", "model_name": "m", "exported_model": "theirs"}, 2.0)]


def test_a_text_that_does_not_parse_is_left_out() -> None:
    out = exposition([("a", LLAMA), ("broken", "this is { not prometheus\n")])
    assert {labels["model"] for labels, _ in out["llamacpp:prompt_tokens"]} == {"a"}


@pytest.mark.parametrize(("given", "kept"), [("", ""), ("/", ""), ("llm", "/llm"), ("/llm/", "/llm"), ("/a/b", "/a/b")])
def test_root_path_is_normalised(given: str, kept: str) -> None:
    assert Settings(root_path=given).root_path == kept


@pytest.mark.parametrize("given", ["/../x", "/a//b", "/llm?x=1", "/l m", "/%2e%2e"])
def test_odd_root_paths_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="path prefix"):
        Settings(root_path=given)
