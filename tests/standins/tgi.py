"""A stand-in for Hugging Face TGI's `text-generation-launcher` (TGI cannot run here: it is not
on PyPI or Debian, and needs CUDA or a container). It takes the launcher's flags the controller
passes, forks a "shard" child like the real launcher does (so the process tree is real), and
speaks the part of TGI's HTTP the controller uses: /health (503 while "loading"), /info,
/metrics and the OpenAI-compatible /v1/chat/completions, answering with the served model name.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--model-id", required=True)
parser.add_argument("--served-model-name")
parser.add_argument("--hostname", default="0.0.0.0")
parser.add_argument("--port", type=int, default=80)
parser.add_argument("--max-total-tokens", type=int, default=4096)
parser.add_argument("--max-input-tokens", type=int, default=4095)
ARGS = parser.parse_args()
NAME = ARGS.served_model_name or ARGS.model_id
READY_AT = time.monotonic() + 0.5  # "loading the model"
WORDS = ["Hello", " from", " the", " TGI", " stand-in", "."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_json(200 if time.monotonic() >= READY_AT else 503, {})
        elif self.path == "/info":
            self.send_json(200, {"model_id": ARGS.model_id, "max_total_tokens": ARGS.max_total_tokens})
        elif self.path == "/metrics":
            data = b"tgi_request_count 0\n"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": "not found", "error_type": "not_found"})
            return
        words = WORDS[: max(1, int(body.get("max_tokens") or len(WORDS)))]
        usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
        base = {"id": "tgi-1", "created": int(time.time()), "model": NAME, "system_fingerprint": "3.3.6-standin"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "length"}
            self.send_json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, word in enumerate(words):
            last = i == len(words) - 1
            choice = {
                "index": 0,
                "delta": {"role": "assistant", "content": word},
                "finish_reason": "length" if last else None,
            }
            event = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [choice],
                **({"usage": usage} if last else {}),
            }
            self.chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self.chunk(b"data: [DONE]\n\n")
        self.chunk(b"")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


if __name__ == "__main__":
    # Like the real launcher, which starts a router and shards: a child that lives as long as we do.
    shard = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(
        f"stand-in TGI serving {ARGS.model_id} as {NAME} on {ARGS.hostname}:{ARGS.port}; shard {shard.pid}", flush=True
    )
    ThreadingHTTPServer((ARGS.hostname, ARGS.port), Handler).serve_forever()
