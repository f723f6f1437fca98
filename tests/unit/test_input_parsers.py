"""Property tests for every parser of request input: adversarial strings are answered (a value or
the dialect's BadRequest, never another exception) and each in under 10 ms — the keep_alive regex
used to backtrack exponentially (22 digits and a letter: 0.5 s of a frozen event loop)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacontroller.api import ollama_translate as tr
from llamacontroller.api.deps import REQUEST_ID
from llamacontroller.auth.store import parse_duration
from llamacontroller.config import ModelEntry, model_key
from llamacontroller.errors import BadRequest

FAST = 0.010
# Strings built to hurt regexes: long runs of digits, units and separators, then junk.
hostile = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda digits, tail: digits + tail,
        st.text("0123456789.-", min_size=10, max_size=200),
        st.text("xsmhµnu ", max_size=3),
    ),
    st.builds(lambda n, s: s * n, st.integers(1, 100), st.sampled_from(["1", "1m", "1.5h", " 1s", "-", "ms"])),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def answered_fast(parse: Callable[[Any], Any], value: Any) -> None:
    began = time.perf_counter()
    with contextlib.suppress(BadRequest):
        parse(value)
    assert time.perf_counter() - began < FAST, f"{parse.__name__}({value!r:.80}) took too long"


@PROPERTY
@given(hostile | json_values)
def test_keep_alive_is_linear_and_only_raises_bad_request(value: Any) -> None:
    answered_fast(tr.parse_keep_alive, value)


def test_fifty_digit_keep_alive_is_refused_at_once() -> None:
    for value in ("1" * 50 + "x", "1" * 50, "9" * 40 + "m" * 40, 1e300):
        began = time.perf_counter()
        with pytest.raises(BadRequest):
            tr.parse_keep_alive(value)
        assert time.perf_counter() - began < FAST


@PROPERTY
@given(hostile)
def test_token_durations_are_linear_and_bounded(value: str) -> None:
    answered_fast(parse_duration, value)


@PROPERTY
@given(hostile)
def test_request_ids_fit_the_usage_column(value: str) -> None:
    began = time.perf_counter()
    if REQUEST_ID.match(value):
        assert len(value) <= 64
    assert time.perf_counter() - began < FAST


@PROPERTY
@given(hostile)
def test_model_names_are_checked_in_linear_time(value: str) -> None:
    began = time.perf_counter()
    model_key(value)
    with contextlib.suppress(ValueError):
        ModelEntry(id=value, path="/m.gguf")
    assert time.perf_counter() - began < FAST


@PROPERTY
@given(st.dictionaries(st.sampled_from(["model", "messages", "prompt", "options", "format", "think", "images",
                                        "keep_alive", "suffix", "system", "template", "raw", "input", "tools"]),
                       json_values, max_size=8))  # fmt: skip
def test_ollama_translator_takes_any_json_and_answers_or_refuses(body: dict[str, Any]) -> None:
    for translate in (tr.chat_request, tr.generate_request, tr.embed_request):
        answered_fast(translate, dict(body))


@PROPERTY
@given(st.lists(json_values, max_size=4))
def test_ollama_messages_of_any_shape_are_answered_or_refused(messages: list[Any]) -> None:
    answered_fast(tr.chat_request, {"model": "m", "messages": messages})
