"""A loopback stand-in for a VibeVoice vLLM server, speaking its documented HTTP/SSE dialect.

It serves ``GET /v1/models``, ``GET /health``, ``POST /tokenize`` and ``POST /v1/chat/completions``
(streamed as ``data: {…}`` lines: a role-only first chunk, one content chunk per piece, a chunk with
``finish_reason``, an optional usage chunk, ``data: [DONE]``), on 127.0.0.1 only. Each completion
takes the next :class:`Reply` from a queue (the last one repeats), so a test scripts what the
"server" says: an answer, an HTTP error, a stall, a disconnect, an error inside the stream. The
bytes are written in small slices so multi-byte characters are split across reads.

Hostile behaviours (:class:`Hostile`), switched per test — for a completion as ``Reply(hostile=…)``,
for ``/v1/models`` and ``/tokenize`` in :attr:`FakeVllm.hostile` (changeable while it runs):
``never_answer`` (read the request, then say nothing), ``never_read`` (don't even read the body),
``trickle`` (headers, then the body one byte per ``interval`` seconds, without end), ``endless``
(a body without end, as fast as it goes), ``gzip_bomb`` (``Content-Encoding: gzip``, ~1,000:1,
without end), ``endless_sse`` (an event stream of new words that ignores ``max_tokens``;
``interval`` between events). A hold ends when the client goes away or the stand-in closes. Each
behaviour notes ``"<path> hostile"`` in :meth:`FakeVllm.wait_for`'s log once it has begun, and
``"<path> gone"`` when the client dropped the connection. :func:`unconnectable_url` is an address
whose connect never completes. Test code only.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOSTILE = ("never_answer", "never_read", "trickle", "endless", "gzip_bomb", "endless_sse")


@dataclass
class Hostile:
    """One way to misbehave (see the module's docstring)."""

    kind: str
    status: int = 200  # the status line before a trickled, endless or bombed body
    interval: float = 1.0  # trickle: seconds per byte; endless_sse: seconds per event
    retry_after: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in HOSTILE, self.kind


@contextmanager
def unconnectable_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` where a connect never completes (until the block ends): the
    port listens with a backlog of one, which a first connection fills, so Linux drops every
    later SYN and the client keeps retrying until its own timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"


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
    hostile: Hostile | None = None  # misbehave instead of answering
    echo_key: bool = False  # a 401 whose message quotes the Authorization header it got


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
    models_body: Any = None  # what /v1/models answers instead of the listing (JSON or bytes)
    hostile: dict[str, Hostile] = field(default_factory=dict)  # "/v1/models", "/tokenize"
    chat_calls: int = 0
    # A completion whose body this picks out misbehaves as it says (no reply is used up).
    hostile_when: Callable[[dict[str, Any]], Hostile | None] | None = None
    sent_before_gone: list[int] = field(default_factory=list)  # hostile body bytes, per client
    events: list[str] = field(default_factory=list)
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def note(self, event: str) -> None:
        with self._cv:
            self.events.append(event)
            self._cv.notify_all()

    def wait_for(self, event: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until ``event`` was noted ``count`` times (a test's synchronisation point)."""
        with self._cv:
            ok = self._cv.wait_for(lambda: self.events.count(event) >= count, timeout)
        assert ok, f"{event!r} x{count} not seen; events: {self.events[-20:]}"

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

            def _raw(self, status: int, body: Any) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _hostile(self, hostile: Hostile) -> None:
                """Misbehave as ``hostile`` says until the client goes or the stand-in closes."""
                path, sent = self.path, 0
                self.close_connection = True
                try:
                    if hostile.kind in ("never_answer", "never_read"):
                        fake.note(f"{path} hostile")
                        fake.stalls.wait(120)
                        return
                    sse = hostile.kind == "endless_sse" or (
                        path == "/v1/chat/completions" and hostile.status == 200
                    )
                    self.send_response(hostile.status)
                    self.send_header(
                        "Content-Type", "text/event-stream" if sse else "application/json"
                    )
                    if hostile.kind == "gzip_bomb":
                        self.send_header("Content-Encoding", "gzip")
                    if hostile.retry_after:
                        self.send_header("Retry-After", hostile.retry_after)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                    fake.note(f"{path} hostile")
                    for piece in _hostile_body(hostile, sse):
                        if fake.stalls.is_set():
                            return
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        if hostile.kind in ("trickle", "endless_sse"):
                            fake.stalls.wait(hostile.interval)
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    fake.sent_before_gone.append(sent)
                    fake.disconnects.append(time.monotonic())
                    fake.note(f"{path} gone")

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
                    fake.note("/v1/models")
                    hostile = fake.hostile.get(self.path)
                    if hostile is not None:
                        self._hostile(hostile)
                        return
                    if not self._authorized():
                        return
                    if fake.models_body is not None:
                        self._raw(200, fake.models_body)
                        return
                    card: dict[str, Any] = {"id": fake.model, "object": "model"}
                    if fake.max_model_len:
                        card["max_model_len"] = fake.max_model_len
                    self._json(200, {"object": "list", "data": [card]})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                fake.note(self.path)
                hostile = fake.hostile.get(self.path)
                reply = None
                if self.path == "/v1/chat/completions":
                    fake.chat_calls += 1
                    reply = fake.replies[min(fake.chat_calls, len(fake.replies)) - 1]
                    hostile = reply.hostile
                if hostile is not None and hostile.kind == "never_read":
                    self._hostile(hostile)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if reply is not None and hostile is None and fake.hostile_when is not None:
                    hostile = fake.hostile_when(json.loads(raw))
                    if hostile is not None:  # this request is not one of the scripted replies
                        fake.chat_calls -= 1
                if hostile is not None:
                    if reply is not None:
                        fake.requests.append(json.loads(raw))
                    self._hostile(hostile)
                    return
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
                assert reply is not None
                if reply.echo_key:
                    got = self.headers.get("Authorization", "")
                    self._json(401, {"error": {"message": f"invalid credentials: {got!r}"}})
                    return
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


def _hostile_body(hostile: Hostile, sse: bool) -> Iterator[bytes]:
    """The bytes of a hostile body, without end."""
    if hostile.kind == "trickle":
        start = b'data: {"choices":[{"delta":{"content":"' if sse else b'{"error":{"message":"'
        yield from (start[i : i + 1] for i in range(len(start)))
        while True:
            yield b"x"
    if hostile.kind == "endless":
        block = b"x" * 65536  # no line end: for a stream, one endless line
        while True:
            yield block
    if hostile.kind == "gzip_bomb":
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b" " * 2**20
        while True:  # ~1 KB on the wire per MiB decoded
            yield packer.compress(block) + packer.flush(zlib.Z_SYNC_FLUSH)
    # endless_sse: a segment whose words never end, and never repeat (no loop to detect)
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "vibevoice"}

    def event(content: str) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": content}}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    yield event("")
    yield event('[{"Start":0,"End":1,"Speaker":0,"Content":"')
    n = 0
    while True:
        n += 1
        yield event(f" w{n}")
