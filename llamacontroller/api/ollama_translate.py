"""Ollama <-> OpenAI translation. Pure: no I/O, no HTTP, no clock except what callers pass in.

Requests become OpenAI-dialect requests that every backend shares (llama-server, vLLM, TGI,
`transformers serve`, remote), always streamed upstream with usage included; answers are turned
back, chunk by chunk, into Ollama's NDJSON (or one object for `stream: false`).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from llamacontroller.errors import BadRequest

# Ollama `options` -> OpenAI request fields. The last five are not in OpenAI's spec but are
# accepted by llama-server (and ignored by backends that do not know them).
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
}
DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# One "<number><unit>" piece. Matched piece by piece from a position (re.match with pos), so the
# whole parse is linear; the old fullmatch of `(\s*-?\d+(...)?)+` backtracked exponentially on a
# long run of digits followed by junk (22 digits: 0.5 s of a frozen event loop; 40: hours).
_PIECE = re.compile(r"\s*(-?\d{1,12}(?:\.\d{1,9})?)(ns|us|µs|ms|s|m|h)?")
MAX_KEEP_ALIVE = 10 * 365 * 86400.0  # ten years; anything longer is "forever": say -1


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep the model loaded: None = leave as configured, 0 = unload after this
    request, a negative number = forever. Accepts "5m", "1h30m", "300", 300, -1."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration like '5m' or a number of seconds", param="keep_alive")
    total: float | None = None
    if isinstance(value, int | float):
        total = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        if not text:
            return None
        total, pos = 0.0, 0
        while pos < len(text):
            piece = _PIECE.match(text, pos)
            if piece is None:
                total = None
                break
            total += float(piece.group(1)) * _UNITS[piece.group(2) or None]
            pos = piece.end()
    if total is None or total != total or abs(total) > MAX_KEEP_ALIVE:  # total != total: NaN
        shown = value[:64] if isinstance(value, str) else value
        raise BadRequest(f"invalid keep_alive {shown!r}: use e.g. '5m', '1h', seconds, or -1", param="keep_alive")
    return total


def _options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object", param="options")
    out = {OPTION_FIELDS[k]: v for k, v in options.items() if k in OPTION_FIELDS and v is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    if out.get("max_tokens") is not None and out["max_tokens"] < 0:
        del out["max_tokens"]  # Ollama: -1 = no limit
    return out


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt, "strict": True}}
    raise BadRequest('format must be "json" or a JSON schema object', param="format")


def _image_parts(images: Any) -> list[dict[str, Any]]:
    if not images:
        return []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadRequest("images must be a list of base64 strings", param="images")
    return [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in images]


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest("each message needs a role and content", param="messages")
    out: dict[str, Any] = {"role": message["role"]}
    content = message.get("content") or ""
    images = _image_parts(message.get("images"))
    out["content"] = [{"type": "text", "text": content}, *images] if images else content
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                # The id the client got with the call (and will quote in the tool's answer), kept.
                "id": call["id"] if isinstance(call.get("id"), str) and call["id"] else f"call_{i}",
                "type": "function",
                "function": {
                    "name": call.get("function", {}).get("name"),
                    # Ollama carries arguments as an object, OpenAI as a JSON string.
                    "arguments": json.dumps(call.get("function", {}).get("arguments", {})),
                },
            }
            for i, call in enumerate(message["tool_calls"])
        ]
    if message["role"] == "tool" and message.get("tool_name"):
        out["name"] = message["tool_name"]
    if message["role"] == "tool" and isinstance(message.get("tool_call_id"), str):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("thinking") and message["role"] == "assistant":
        out["reasoning_content"] = message["thinking"]
    return out


def _common(body: dict[str, Any]) -> dict[str, Any]:
    request: dict[str, Any] = {"model": body.get("model"), "stream": True, "stream_options": {"include_usage": True}}
    request.update(_options(body.get("options")))
    response_format = _response_format(body.get("format"))
    if response_format:
        request["response_format"] = response_format
    think = body.get("think")
    if think is not None:
        enabled = think if isinstance(think, bool) else think in ("low", "medium", "high")
        request["chat_template_kwargs"] = {"enable_thinking": bool(enabled)}
        if isinstance(think, str):
            request["reasoning_effort"] = think
    return request


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list", param="messages")
    request = _common(body)
    request["messages"] = [_message(m) for m in messages]
    if body.get("tools"):
        request["tools"] = body["tools"]
    return request


def generate_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(upstream path, request): raw prompts and fill-in-the-middle go to /v1/completions."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string", param="prompt")
    request = _common(body)
    if body.get("raw") or body.get("suffix"):
        request["prompt"] = prompt
        if body.get("suffix"):
            request["suffix"] = body["suffix"]
        return "/v1/completions", request
    messages = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    messages.append(_message({"role": "user", "content": prompt, "images": body.get("images")}))
    request["messages"] = messages
    return "/v1/chat/completions", request


class NDJSONTranslator:
    """OpenAI SSE chunks in, Ollama NDJSON lines out (or one object when stream is false)."""

    def __init__(self, model: str, *, kind: str, stream: bool, began: float) -> None:
        self.model = model
        self.kind = kind  # "chat" or "generate"
        self.stream = stream
        self.media_type = "application/x-ndjson" if stream else "application/json"
        self.began = began
        self.lease_at: float | None = None  # set when the model was ready: load_duration
        self.first_token_at: float | None = None
        self._buffer = b""
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tools: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}
        self._timings: dict[str, Any] = {}
        self._done = False

    # -------------------------------------------------------------------------- chunks

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]" or not data:
                continue
            try:
                event = json.loads(data)
            except ValueError:
                continue
            piece = self._event(event)
            if piece is not None and self.stream:
                out.append(piece)
        return b"".join(json.dumps(p).encode() + b"\n" for p in out)

    def _event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        delta = choice.get("delta") or {}
        text = delta.get("content") if "delta" in choice else choice.get("text")
        thinking = delta.get("reasoning_content")
        for call in delta.get("tool_calls") or []:
            # Tool-call deltas arrive in pieces: name first, arguments in fragments.
            slot = self._tools.setdefault(call.get("index", 0), {"name": "", "arguments": "", "id": ""})
            if isinstance(call.get("id"), str) and call["id"]:
                slot["id"] = call["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
        if not text and not thinking:
            return None
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if text:
            self._content.append(text)
        if thinking:
            self._thinking.append(thinking)
        return self._piece(text or "", thinking, done=False)

    def _piece(self, text: str, thinking: str | None, *, done: bool) -> dict[str, Any]:
        piece: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            piece["message"] = message
        else:
            piece["response"] = text
            if thinking:
                piece["thinking"] = thinking
        piece["done"] = done
        return piece

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        if self.stream:
            final = self._piece("", None, done=True)
            if self._tools and self.kind == "chat":
                final["message"]["tool_calls"] = self._tool_calls()
        else:
            thinking = "".join(self._thinking) or None
            final = self._piece("".join(self._content), thinking, done=True)
            if self._tools and self.kind == "chat":
                final["message"]["tool_calls"] = self._tool_calls()
        final.update(self._stats())
        return json.dumps(final).encode() + (b"\n" if self.stream else b"")

    def _tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self._tools):
            slot = self._tools[index]
            try:
                arguments = json.loads(slot["arguments"]) if slot["arguments"] else {}
            except ValueError:
                arguments = {"_raw": slot["arguments"]}
            calls.append(
                {
                    "id": slot["id"] or f"call_{secrets.token_hex(8)}",
                    "function": {"index": index, "name": slot["name"], "arguments": arguments},
                }
            )
        return calls

    def _stats(self) -> dict[str, Any]:
        end = time.perf_counter()
        ns = 1_000_000_000
        # The whole prompt, as Ollama counts it: llama.cpp's prompt_n leaves out what came from
        # its prompt cache (cache_n), which Ollama reports on its own as prompt_eval_cached_count.
        cached = int(self._timings.get("cache_n") or 0)
        prompt_n = self._usage.get("prompt_tokens") or (int(self._timings.get("prompt_n") or 0) + cached)
        eval_n = self._usage.get("completion_tokens") or self._timings.get("predicted_n", 0)
        load = (self.lease_at - self.began) if self.lease_at else 0.0
        if "prompt_ms" in self._timings:
            prompt_s = self._timings["prompt_ms"] / 1000
            eval_s = self._timings.get("predicted_ms", 0) / 1000
        else:  # backends without llama.cpp timings: measured here
            first = self.first_token_at or end
            prompt_s = max(0.0, first - (self.lease_at or self.began))
            eval_s = max(0.0, end - first)
        return {
            "done_reason": DONE_REASONS.get(self._finish or "stop", self._finish or "stop"),
            "total_duration": int((end - self.began) * ns),
            "load_duration": int(load * ns),
            "prompt_eval_count": int(prompt_n or 0),
            "prompt_eval_cached_count": cached,
            "prompt_eval_duration": int(prompt_s * ns),
            "eval_count": int(eval_n or 0),
            "eval_duration": int(eval_s * ns),
        }

    # -------------------------------------------------------------------------- errors

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, json.dumps({"error": upstream_message(body)}).encode()

    def in_band_error(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode() + b"\n"


class JSONTranslator:
    """A whole JSON answer (embeddings) turned into Ollama's shape at the end."""

    media_type = "application/json"

    def __init__(self, convert: Any) -> None:
        self._convert = convert
        self._body = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._body += chunk
        return b""

    def finish(self) -> bytes:
        try:
            data = json.loads(self._body)
        except ValueError:
            return json.dumps({"error": "the engine sent an answer that is not JSON"}).encode()
        return json.dumps(self._convert(data)).encode()

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return status, json.dumps({"error": upstream_message(body)}).encode()

    def in_band_error(self, message: str) -> bytes:
        return json.dumps({"error": message}).encode()


def upstream_message(body: bytes) -> str:
    """The message inside an engine's OpenAI-shaped error body, or the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500] or "the engine returned an error"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or data)


def embed_request(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequest("input must be a string or a non-empty list of strings", param="input")
    request: dict[str, Any] = {"model": body.get("model"), "input": value, "encoding_format": "float"}
    if body.get("dimensions"):
        request["dimensions"] = body["dimensions"]
    return request


def embed_response(model: str, began: float) -> Any:
    def convert(data: dict[str, Any]) -> dict[str, Any]:
        items = sorted(data.get("data", []), key=lambda d: d.get("index", 0))
        return {
            "model": model,
            "embeddings": [item["embedding"] for item in items],
            "total_duration": int((time.perf_counter() - began) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": int((data.get("usage") or {}).get("prompt_tokens", 0)),
        }

    return convert


def legacy_embedding_response(data: dict[str, Any]) -> dict[str, Any]:
    items = data.get("data") or [{}]
    return {"embedding": items[0].get("embedding", [])}
