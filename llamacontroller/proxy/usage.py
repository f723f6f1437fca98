"""Token counts read from the engine's answer as it passes, without touching the bytes."""

from __future__ import annotations

import json
from typing import Any

MAX_BODY = 1 << 20  # non-stream bodies above this are not parsed for usage
TAIL = 16 << 10  # streams: the final events (usage, timings) live in the last few KB


class UsageTap:
    def __init__(self, *, stream: bool) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self.stream:
            self._buf += chunk
            if len(self._buf) > 2 * TAIL:
                del self._buf[: len(self._buf) - TAIL]
        elif not self._overflow:
            self._buf += chunk
            if len(self._buf) > MAX_BODY:
                self._overflow = True
                self._buf.clear()

    def finished(self) -> bool:
        """A stream ended the OpenAI way, with `data: [DONE]`."""
        return b"data: [DONE]" in self._buf

    def _final_objects(self) -> list[dict[str, Any]]:
        if not self.stream:
            try:
                data = json.loads(self._buf)
            except ValueError:
                return []
            return [data] if isinstance(data, dict) else []
        found = []
        for line in bytes(self._buf).split(b"\n"):
            if line.startswith(b"data: {") and (b'"usage"' in line or b'"timings"' in line):
                try:
                    found.append(json.loads(line[6:]))
                except ValueError:
                    continue
        return found

    def tokens(self) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens) from OpenAI `usage` or llama.cpp `timings`."""
        if b'"usage"' not in self._buf and b'"timings"' not in self._buf:
            return None, None  # e.g. /tokenize: nothing to count, nothing to parse
        prompt = completion = None
        for obj in self._final_objects():
            usage = obj.get("usage")
            if isinstance(usage, dict):
                prompt = usage.get("prompt_tokens", prompt)
                completion = usage.get("completion_tokens", completion)
            timings = obj.get("timings")
            if isinstance(timings, dict) and prompt is None and "prompt_n" in timings:
                # prompt_n leaves out the tokens llama.cpp took from its prompt cache (cache_n).
                prompt = int(timings.get("prompt_n") or 0) + int(timings.get("cache_n") or 0)
                completion = timings.get("predicted_n")
        return prompt, completion

    def error_message(self) -> str | None:
        for obj in self._final_objects():
            error = obj.get("error")
            if isinstance(error, dict):
                return str(error.get("message"))
            if error:
                return str(error)
        return None
