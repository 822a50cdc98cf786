"""A TEST DOUBLE of an OpenAI-compatible chat-completions server on 127.0.0.1.

It stands in for a real model endpoint in tests only: it answers with scripted texts in order,
reports token usage, and returns per-token logprobs when asked. The product never falls back to it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle
from typing import Any


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops concurrent connects (the client then waits a second to retry).
    request_queue_size = 128
    daemon_threads = True


@dataclass
class ScriptedReply:
    """What the double answers to one request: a text, or an HTTP error, after an optional delay."""

    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class OpenAICompatibleTestDouble:
    """Serve `replies` (texts, cycled; or a function of the request) at http://127.0.0.1:<port>/v1/chat/completions;
    records every request."""

    def __init__(
        self,
        replies: list[str] | Callable[[dict[str, Any]], ScriptedReply],
        *,
        with_logprobs: bool = True,
        fail_first: int = 0,
    ) -> None:
        self.responder = replies if callable(replies) else None
        self.replies = cycle(replies if not callable(replies) else [""])
        self.with_logprobs = with_logprobs
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with double._lock:
                    double.requests.append(body)
                    failing = len(double.requests) <= double.fail_first
                    text = next(double.replies)
                reply = double.responder(body) if double.responder is not None else ScriptedReply(text)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif failing:
                    self._send(500, {"error": {"message": "test double: scripted failure", "type": "server_error"}})
                elif reply.status != 200:
                    message = reply.content or f"test double: scripted {reply.status}"
                    kind = "rate_limit_error" if reply.status == 429 else "server_error"
                    self._send(reply.status, {"error": {"message": message, "type": kind}}, reply.headers)
                elif body.get("stream"):
                    self._stream(double.completion(body, reply.content))
                else:
                    self._send(200, double.completion(body, reply.content))

            def _stream(self, completion: dict[str, Any]) -> None:
                # Server-sent events, one chunk per 4 characters, as OpenAI streams a chat completion.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                text = completion["choices"][0]["message"]["content"]
                base = {
                    "id": completion["id"],
                    "object": "chat.completion.chunk",
                    "created": completion["created"],
                    "model": completion["model"],
                }
                pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
                for n, piece in enumerate(pieces):
                    delta = {"content": piece} if n else {"role": "assistant", "content": piece}
                    chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                final = {
                    **base,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": completion["usage"],
                }
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def completion(self, request: dict[str, Any], text: str) -> dict[str, Any]:
        """A chat.completion object for `text`, with logprobs when requested."""
        tokens = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": text},
        }
        if request.get("logprobs") and self.with_logprobs:
            choice["logprobs"] = {
                "content": [
                    {"token": t, "logprob": -0.05 * (i % 5), "bytes": list(t.encode()), "top_logprobs": []}
                    for i, t in enumerate(tokens)
                ]
            }
        prompt_tokens = sum(len(m.get("content") or "") for m in request.get("messages", [])) // 4
        return {
            "id": f"chatcmpl-double-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "test-double"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        }

    def __enter__(self) -> OpenAICompatibleTestDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_until_stopped(responder: Callable[[dict[str, Any]], ScriptedReply], urls: Any, stop: Any) -> None:
    """Run a double in this process (a multiprocessing target) until `stop` is set; its URL goes to `urls`."""
    with OpenAICompatibleTestDouble(responder) as double:
        urls.put(double.base_url)
        stop.wait()
