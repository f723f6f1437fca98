import json

from llamacontroller.proxy.usage import UsageTap


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_stream_usage_from_final_chunk_split_anywhere() -> None:
    payload = sse({"choices": [{"delta": {"content": "hi"}}]}) * 50
    payload += sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}) + b"data: [DONE]\n\n"
    tap = UsageTap(stream=True)
    for i in range(0, len(payload), 13):
        tap.feed(payload[i : i + 13])
    assert tap.tokens() == (7, 3)


def test_llama_cpp_timings_when_no_usage() -> None:
    tap = UsageTap(stream=True)
    tap.feed(sse({"choices": [], "timings": {"prompt_n": 5, "predicted_n": 9}}))
    assert tap.tokens() == (5, 9)


def test_timings_count_the_prompt_tokens_taken_from_the_cache() -> None:
    # Regression (#18): a stream without usage counted only the uncached prompt (prompt_n).
    tap = UsageTap(stream=True)
    tap.feed(sse({"choices": [], "timings": {"prompt_n": 1, "cache_n": 35, "predicted_n": 9}}))
    assert tap.tokens() == (36, 9)


def test_non_stream_body() -> None:
    tap = UsageTap(stream=False)
    tap.feed(json.dumps({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode())
    assert tap.tokens() == (1, 2)


def test_garbage_gives_nothing() -> None:
    tap = UsageTap(stream=False)
    tap.feed(b"<html>")
    assert tap.tokens() == (None, None)


def test_a_stream_is_finished_only_by_done() -> None:
    tap = UsageTap(stream=True)
    tap.feed(sse({"choices": [{"delta": {"content": "hi"}}]}))
    assert not tap.finished()
    tap.feed(b"data: [DONE]\n\n")
    assert tap.finished()
