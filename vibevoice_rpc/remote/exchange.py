"""Bounded HTTP for the remote backend: a deadline per phase, cancel in every phase, capped reads.

An :class:`Exchange` is one request. It is sent on a helper thread, because a blocking connect (DNS
included) can't be interrupted: the job's thread only waits, and returns within ~0.1 s of a cancel
or a missed deadline in any phase — connect, upload, waiting for the headers, the body. A watchdog
then shuts the socket down, which wakes a blocked send or receive on Linux, macOS and Windows
alike, so the helper thread ends too (one still connecting ends at the connect timeout).

The socket is learnt from httpcore's ``trace`` extension (``connection.connect_tcp.complete``);
the client keeps no connection alive, so every request makes its own and that event always comes.
Bodies are read raw and decoded here (identity, gzip, deflate; other encodings are refused) in
bounded steps, so a cap holds for the decompressed size too: a gzip bomb stops at the cap.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BadBody",
    "Deadlines",
    "Exchange",
    "SseDecoder",
    "Stopped",
    "TooLarge",
    "READ_CHUNK",
]

READ_CHUNK = 64 * 1024  # the most one decoding step yields (and about what one receive reads)
TICK = 0.05  # how often the watchdog looks at cancel and the deadline


class Stopped(Exception):
    """The exchange was ended by a cancel (``reason == "cancelled"``) or by the deadline of
    ``phase`` (``reason == "deadline"``, ``limit`` seconds)."""

    def __init__(self, reason: str, phase: str, limit: float) -> None:
        super().__init__(f"{reason} in phase {phase}")
        self.reason = reason
        self.phase = phase
        self.limit = limit


class TooLarge(Exception):
    """A body, line or event passed its cap (``limit`` bytes, decompressed); reading stopped."""

    def __init__(self, limit: int, what: str = "the body") -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.limit = limit
        self.what = what


class BadBody(Exception):
    """A body in an encoding we don't decode, or one that does not decode."""


@dataclass(frozen=True)
class Deadlines:
    """Seconds each phase may take at most (from its start), and the whole exchange."""

    connect: float
    upload: float
    headers: float
    body: float
    total: float = math.inf

    @classmethod
    def within(cls, seconds: float) -> Deadlines:
        """Every phase, and the whole, within ``seconds``."""
        return cls(seconds, seconds, seconds, seconds, seconds)


class _Decoder:
    """Content-Encoding decoding in steps of at most :data:`READ_CHUNK` bytes, counting the
    decoded total against ``limit``."""

    def __init__(self, encoding: str, limit: int | None) -> None:
        name = encoding.strip().lower()
        if name in ("", "identity"):
            self._z: Any = None
        elif name in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif name == "deflate":
            self._z = zlib.decompressobj()
        else:
            raise BadBody(f"the body is in an encoding we don't read ({name[:40]!r})")
        self._deflate = name == "deflate"
        self._first = True
        self.limit = limit
        self.total = 0

    def _count(self, data: bytes) -> bytes:
        self.total += len(data)
        if self.limit is not None and self.total > self.limit:
            raise TooLarge(self.limit)
        return data

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            for start in range(0, len(data), READ_CHUNK):
                yield self._count(data[start : start + READ_CHUNK])
            return
        while True:
            try:
                out = self._z.decompress(data, READ_CHUNK)
            except zlib.error as exc:
                if self._deflate and self._first:  # "deflate" sent without its zlib header
                    self._z, self._first = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise BadBody(f"the body does not decompress: {exc}") from None
            self._first = False
            data = self._z.unconsumed_tail
            if out:
                yield self._count(out)
            if self._z.eof or (not data and len(out) < READ_CHUNK):
                return


class SseDecoder:
    """Server-sent events from decoded body bytes: the ``data`` of each complete event. A line or
    an event longer than ``limit`` bytes raises :class:`TooLarge` (nothing bigger is held)."""

    _EOL = re.compile(rb"\r\n|\r|\n")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = b""
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._pending + chunk
        held_cr = buf.endswith(b"\r")  # maybe the first half of a CRLF
        lines = self._EOL.split(buf[:-1] if held_cr else buf)
        self._pending = lines.pop() + (b"\r" if held_cr else b"")
        if len(self._pending) > self.limit:
            raise TooLarge(self.limit, "a line of the event stream")
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                self._data, self._size = [], 0
            elif not line.startswith(b":"):  # ":" starts a comment (a keep-alive)
                name, _, value = line.partition(b":")
                if name == b"data":
                    value = value[1:] if value.startswith(b" ") else value
                    self._size += len(value) + 1
                    if self._size > self.limit:
                        raise TooLarge(self.limit, "an event of the stream")
                    self._data.append(value)
        return events


class Exchange:
    """One request to the server, bounded in time per phase and stoppable by ``is_cancelled``.

    :meth:`open` sends it and returns the response once its headers are in (or raises the
    client's error, or :class:`Stopped`); :meth:`chunks`/:meth:`read` read the body, decoded and
    capped; :meth:`close` ends it (always call it). :attr:`phase` is ``connect``, ``upload``,
    ``headers``, ``body`` or a name given to :meth:`enter`.
    """

    def __init__(
        self,
        http: Any,
        request: Any,
        deadlines: Deadlines,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self._http = http
        self._request = request
        request.extensions["trace"] = self._trace
        self._deadlines = deadlines
        self._is_cancelled = is_cancelled or (lambda: False)
        self._lock = threading.Lock()
        self._wake = threading.Event()  # the helper thread finished, or the exchange stopped
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._outcome: Any = None  # the response, or the exception send() raised
        self._end = time.monotonic() + deadlines.total
        self.phase = "connect"
        self._limit = deadlines.connect
        self._phase_end = min(time.monotonic() + deadlines.connect, self._end)
        self.stopped: Stopped | None = None
        self.response: Any = None
        self.raw_bytes = 0  # bytes received for the body (before decoding)

    # --- phases, the watchdog and the socket ------------------------------------------------

    def enter(self, phase: str, seconds: float) -> None:
        """Start ``phase``, which may take at most ``seconds`` (and what is left of the total)."""
        with self._lock:
            self.phase, self._limit = phase, seconds
            self._phase_end = min(time.monotonic() + seconds, self._end)

    def _trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("connect_tcp.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
                late = self.stopped is not None
            if late and sock is not None:  # stopped while connecting: end it right away
                _shutdown(sock)
        elif name.endswith("send_request_headers.started"):
            self.enter("upload", self._deadlines.upload)
        elif name.endswith("receive_response_headers.started"):
            self.enter("headers", self._deadlines.headers)
        elif name.endswith("receive_response_headers.complete"):
            self.enter("body", self._deadlines.body)

    def stop(self, reason: str) -> None:
        """End the exchange now (``"cancelled"`` or ``"deadline"``): shut the socket down."""
        with self._lock:
            if self.stopped is None:
                self.stopped = Stopped(reason, self.phase, self._limit)
            sock = self._sock
        self._wake.set()
        if sock is not None:
            _shutdown(sock)

    def _watch(self) -> None:
        while not self._closed.wait(TICK):
            if self._is_cancelled():
                self.stop("cancelled")
            elif time.monotonic() > self._phase_end:
                self.stop("deadline")
            if self.stopped is not None:
                return

    def _send(self) -> None:
        try:
            outcome: Any = self._http.send(self._request, stream=True)
        except BaseException as exc:  # handed to the waiting thread
            outcome = exc
        with self._lock:
            self._outcome = outcome
            abandoned = self._closed.is_set()
        if abandoned and not isinstance(outcome, BaseException):
            outcome.close()
        self._wake.set()

    # --- the caller's side ------------------------------------------------------------------

    def open(self, on_wait: Callable[[], None] | None = None) -> Any:
        """Send the request; the response once its headers are in. ``on_wait`` is called on
        this thread about every 0.1 s meanwhile (an upload's progress)."""
        threading.Thread(target=self._watch, name="vibevoice-remote-watch", daemon=True).start()
        threading.Thread(target=self._send, name="vibevoice-remote-send", daemon=True).start()
        while not self._wake.wait(0.1):
            if on_wait is not None:
                on_wait()
        if self.stopped is not None:
            raise self.stopped
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        self.response = outcome
        return outcome

    def chunks(self, limit: int | None) -> Iterator[bytes]:
        """The body, decoded, in pieces; :class:`TooLarge` past ``limit`` decoded bytes,
        :class:`Stopped` on a cancel or a deadline, :class:`BadBody` for an encoding we refuse."""
        import httpx2

        decoder = _Decoder(self.response.headers.get("content-encoding", ""), limit)
        try:
            for raw in self.response.iter_raw():
                if self.stopped is not None:
                    raise self.stopped
                self.raw_bytes += len(raw)
                yield from decoder.decode(raw)
        except (httpx2.HTTPError, OSError) as exc:
            if self.stopped is not None:
                raise self.stopped from None
            raise exc
        if self.stopped is not None:  # a shut-down socket can look like the body's end
            raise self.stopped

    def read(self, limit: int) -> tuple[bytes, bool]:
        """The body up to ``limit`` decoded bytes, and whether it was longer (then it is cut and
        the rest is never read)."""
        parts: list[bytes] = []
        size = 0
        try:
            for piece in self.chunks(None):
                parts.append(piece[: limit - size])
                size += len(piece)
                if size > limit:
                    return b"".join(parts), True
        except TooLarge:  # pragma: no cover - chunks(None) has no cap
            return b"".join(parts), True
        return b"".join(parts), False

    def close(self) -> None:
        """End the exchange and free its connection (the body is not drained)."""
        with self._lock:
            self._closed.set()
            outcome = self._outcome
        self._wake.set()
        if outcome is not None and not isinstance(outcome, BaseException):
            try:
                outcome.close()
            except Exception:  # a connection broken by the shutdown
                pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected, or closed already
        pass
