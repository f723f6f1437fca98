import json

import pytest

from llamacontroller.api import ollama_translate as tr
from llamacontroller.errors import BadRequest


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), ("1h", 3600), ("1h30m", 5400), ("300", 300), (300, 300), (-1, -1), ("0", 0), (0, 0), (None, None)],
)
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert tr.parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", True, "5 minutes"])
def test_bad_keep_alive(value: object) -> None:
    with pytest.raises(BadRequest):
        tr.parse_keep_alive(value)


def test_chat_request_maps_options_format_images_and_tools() -> None:
    request = tr.chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "look", "images": ["aGk="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "options": {"temperature": 0.1, "num_predict": 7, "stop": "END", "repeat_penalty": 1.1, "num_ctx": 99},
            "format": {"type": "object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["temperature"] == 0.1 and request["max_tokens"] == 7 and request["stop"] == ["END"]
    assert request["repeat_penalty"] == 1.1 and "num_ctx" not in request
    assert request["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert request["messages"][0]["content"][1]["image_url"]["url"] == "data:image/png;base64,aGk="
    assert request["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    assert request["messages"][2]["name"] == "f"
    assert request["tools"][0]["function"]["name"] == "f"


def test_generate_plain_raw_and_suffix() -> None:
    path, request = tr.generate_request({"model": "m", "prompt": "hi", "system": "be brief", "format": "json"})
    assert path == "/v1/chat/completions"
    assert request["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert request["response_format"] == {"type": "json_object"}
    path, request = tr.generate_request({"model": "m", "prompt": "def f(", "suffix": "return 1", "raw": True})
    assert path == "/v1/completions" and request["suffix"] == "return 1"


def test_stream_translation_with_timings_and_tool_call_deltas() -> None:
    t = tr.NDJSONTranslator("m:latest", kind="chat", stream=True, began=0.0)
    out = t.feed(sse({"choices": [{"delta": {"content": "Hel"}}]}))
    out += t.feed(sse({"choices": [{"delta": {"content": "lo"}}]})[:10])  # split mid-line
    out += t.feed(sse({"choices": [{"delta": {"content": "lo"}}]})[10:])
    out += t.feed(
        sse(
            {
                "choices": [
                    {
                        "delta": {
                            "tool_calls": [{"index": 0, "id": "tc-9", "function": {"name": "get", "arguments": '{"a"'}}]
                        }
                    }
                ]
            }
        )
    )
    out += t.feed(sse({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}}]}))
    out += t.feed(
        sse(
            {
                "choices": [{"finish_reason": "tool_calls", "delta": {}}],
                "timings": {"prompt_n": 5, "prompt_ms": 10, "predicted_n": 3, "predicted_ms": 30},
            }
        )
    )
    out += t.feed(b"data: [DONE]\n\n") + t.finish()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["message"]["content"] for line in lines[:-1]] == ["Hel", "lo"]
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"]["tool_calls"] == [
        {"id": "tc-9", "function": {"index": 0, "name": "get", "arguments": {"a": 2}}}
    ]
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 3
    assert final["prompt_eval_duration"] == 10_000_000 and final["eval_duration"] == 30_000_000


def test_non_stream_generate_is_one_object() -> None:
    t = tr.NDJSONTranslator("m:latest", kind="generate", stream=False, began=0.0)
    assert (
        t.feed(sse({"choices": [{"delta": {"content": "a"}}]}) + sse({"choices": [{"delta": {"content": "b"}}]})) == b""
    )
    t.feed(
        sse(
            {
                "choices": [{"finish_reason": "length", "delta": {}}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2},
            }
        )
    )
    final = json.loads(t.finish())
    assert final["response"] == "ab" and final["done_reason"] == "length" and final["eval_count"] == 2
    assert t.media_type == "application/json"


def test_reasoning_becomes_thinking() -> None:
    t = tr.NDJSONTranslator("m", kind="chat", stream=True, began=0.0)
    line = json.loads(t.feed(sse({"choices": [{"delta": {"reasoning_content": "hmm"}}]})))
    assert line["message"]["thinking"] == "hmm"


def test_errors_become_ollama_shape() -> None:
    t = tr.NDJSONTranslator("m", kind="chat", stream=True, began=0.0)
    status, body = t.error(400, b'{"error": {"message": "context too long", "type": "x"}}')
    assert (status, json.loads(body)) == (400, {"error": "context too long"})
    assert json.loads(t.in_band_error("boom")) == {"error": "boom"}


def test_embed() -> None:
    assert tr.embed_request({"model": "m", "input": "x"})["input"] == ["x"]
    with pytest.raises(BadRequest):
        tr.embed_request({"model": "m", "input": []})
    convert = tr.embed_response("m", 0.0)
    out = convert(
        {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 3}}
    )
    assert out["embeddings"] == [[1.0], [2.0]] and out["prompt_eval_count"] == 3


def test_ollama_tool_calls_keep_their_ids_both_ways() -> None:
    # Regression (#18): no id on tool calls, tool_call_id on tool results dropped, ids renumbered.
    request = tr.chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_abc", "function": {"name": "w", "arguments": {}}},
                        {"id": "call_def", "function": {"name": "w", "arguments": {}}},
                    ],
                },
                {"role": "tool", "content": "sunny", "tool_call_id": "call_def"},
            ],
        }
    )
    assert [c["id"] for c in request["messages"][1]["tool_calls"]] == ["call_abc", "call_def"]
    assert request["messages"][2]["tool_call_id"] == "call_def"
    t = tr.NDJSONTranslator("m:latest", kind="chat", stream=False, began=0.0)
    t.feed(sse({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "w", "arguments": "{}"}}]}}]}))
    t.feed(sse({"choices": [{"finish_reason": "tool_calls", "delta": {}}]}))
    call = json.loads(t.finish())["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and len(call["id"]) > 8  # an engine without ids: one of ours


def test_prompt_eval_count_includes_the_cached_prompt() -> None:
    # Regression (#18): llama.cpp's prompt_n leaves out cache_n; Ollama counts the whole prompt.
    t = tr.NDJSONTranslator("m:latest", kind="chat", stream=False, began=0.0)
    t.feed(sse({"choices": [{"delta": {"content": "a"}}]}))
    t.feed(
        sse(
            {
                "choices": [{"finish_reason": "stop", "delta": {}}],
                "timings": {"prompt_n": 1, "cache_n": 35, "prompt_ms": 1, "predicted_n": 1, "predicted_ms": 1},
            }
        )
    )
    final = json.loads(t.finish())
    assert final["prompt_eval_count"] == 36 and final["prompt_eval_cached_count"] == 35
