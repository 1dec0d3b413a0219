"""A loopback stand-in for a VibeVoice vLLM server, speaking its documented HTTP/SSE dialect.

It serves ``GET /v1/models``, ``GET /health``, ``POST /tokenize`` and ``POST /v1/chat/completions``
(streamed as ``data: {…}`` lines: a role-only first chunk, one content chunk per piece, a chunk with
``finish_reason``, an optional usage chunk, ``data: [DONE]``), on 127.0.0.1 only. Each completion
takes the next :class:`Reply` from a queue (the last one repeats), so a test scripts what the
"server" says: an answer, an HTTP error, a stall, a disconnect, an error inside the stream. The
bytes are written in small slices so multi-byte characters are split across reads. Test code only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    answer: str = ""  # the model's text, streamed in pieces
    piece_chars: int = 4
    status: int = 200  # an HTTP error status instead of a stream
    error_body: dict[str, Any] | None = None
    retry_after: str | None = None
    finish_reason: str = "stop"
    stall_after: int | None = None  # stop sending (keep the connection) after this many pieces
    disconnect_after: int | None = None  # close the connection after this many pieces
    error_after: int | None = None  # send an error chunk after this many pieces
    send_done: bool = True
    piece_delay: float = 0.0
    wait_event: threading.Event | None = None  # hold the first byte until this is set


@dataclass
class FakeVllm:
    model: str = "vibevoice"
    max_model_len: int | None = 65536
    api_key: str | None = None
    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    models_calls: int = 0
    tokenize_endpoint: bool = True
    stalls: threading.Event = field(default_factory=threading.Event)  # released at close
    disconnects: list[float] = field(default_factory=list)  # when a client closed a stream

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _json(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if fake.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._json(401, {"error": {"message": "Unauthorized", "code": 401}})
                return False

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._json(200, {})
                elif self.path == "/v1/models":
                    fake.models_calls += 1
                    if not self._authorized():
                        return
                    card: dict[str, Any] = {"id": fake.model, "object": "model"}
                    if fake.max_model_len:
                        card["max_model_len"] = fake.max_model_len
                    self._json(200, {"object": "list", "data": [card]})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path == "/tokenize" and fake.tokenize_endpoint:
                    prompt = json.loads(raw).get("prompt", "")
                    count = len(re.findall(r"\w+|[^\w\s]", prompt))
                    self._json(200, {"count": count, "max_model_len": fake.max_model_len})
                    return
                if self.path != "/v1/chat/completions":
                    self._json(404, {"detail": "Not Found"})
                    return
                if not self._authorized():
                    return
                body = json.loads(raw)
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                reply = fake.replies[min(len(fake.requests), len(fake.replies)) - 1]
                if body.get("model") != fake.model:
                    self._json(
                        404,
                        {
                            "error": {
                                "message": f"The model `{body.get('model')}` does not exist.",
                                "type": "NotFoundError",
                                "code": 404,
                            }
                        },
                    )
                    return
                if reply.status != 200:
                    extra = {"Retry-After": reply.retry_after} if reply.retry_after else None
                    self._json(
                        reply.status, reply.error_body or {"error": {"message": "no"}}, extra
                    )
                    return
                self._stream(body, reply)

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                if reply.wait_event is not None:
                    reply.wait_event.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                usage = (body.get("stream_options") or {}).get("include_usage")

                def send(obj: Any) -> None:
                    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                    line = b"data: " + data + b"\n\n"
                    for i in range(0, len(line), 3):  # split multi-byte characters across reads
                        self.wfile.write(line[i : i + 3])
                        self.wfile.flush()

                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": fake.model}
                try:
                    send(
                        {
                            **base,
                            "choices": [
                                {"index": 0, "delta": {"role": "assistant", "content": ""}}
                            ],
                        }
                    )
                    text = reply.answer
                    pieces = [
                        text[i : i + reply.piece_chars]
                        for i in range(0, len(text), reply.piece_chars)
                    ]
                    for n, piece in enumerate(pieces):
                        if reply.stall_after is not None and n >= reply.stall_after:
                            fake.stalls.wait(60)
                            return
                        if reply.disconnect_after is not None and n >= reply.disconnect_after:
                            return
                        if reply.error_after is not None and n >= reply.error_after:
                            send(
                                {
                                    "error": {
                                        "message": "engine dead",
                                        "type": "InternalServerError",
                                        "code": 500,
                                    }
                                }
                            )
                            return
                        send({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
                        if reply.piece_delay:
                            time.sleep(reply.piece_delay)
                    send(
                        {
                            **base,
                            "choices": [
                                {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
                            ],
                        }
                    )
                    if usage:
                        send(
                            {
                                **base,
                                "choices": [],
                                "usage": {
                                    "prompt_tokens": 100,
                                    "completion_tokens": len(pieces),
                                    "total_tokens": 100 + len(pieces),
                                },
                            }
                        )
                    if reply.send_done:
                        send(b"[DONE]")
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnects.append(time.monotonic())
                finally:
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeVllm:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stalls.set()
        self._server.shutdown()
        self._server.server_close()
