"""stderr that never blocks the server: a bounded queue, one writer, and dropped lines counted.

A client may spawn the server with ``stderr=PIPE`` and never read it, or stop reading (a drain that
gives up at the first non-UTF-8 line). A blocking write into that full pipe would freeze whichever
thread logs — the reader, the worker, a stop path — while it holds locks the protocol needs. So, while
serving:

* Python-level output (``logging``, ``warnings`` through logging, ``sys.stderr``/``sys.stdout``
  writes by libraries) goes to one :class:`StderrSink`. It writes straight through while stderr has
  room (so a log line is on stderr before the protocol answer that follows it), and otherwise keeps
  up to ``max_bytes`` in a queue that a writer thread drains; beyond that, lines are dropped and
  counted (``health.log_lines_dropped``, and one log line once stderr drains again).
* On POSIX, fds 1 and 2 point at a private pipe that a pump thread empties into the same sink, so
  stray writes from C code and child processes cannot block on the real stderr either.
* Only the sink writes to the real stderr, and only when ``poll`` says it has room, in pieces of at
  most ``PIPE_BUF`` bytes (a pipe with a free slot takes those without blocking). Nothing is ever
  switched to ``O_NONBLOCK``: the real stderr's file description may be shared with a terminal or
  with stdout. Without ``poll`` (Windows) every write happens on the writer thread, which is then the
  only thread that can block on stderr.

The commands for people (``transcribe``, ``download``) do not serve; on a terminal their stderr is a
:class:`ConsoleStream` instead, so the progress bar (a line redrawn with ``\r``) and log records
share the screen without running into each other.
"""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from typing import Any

__all__ = ["ConsoleStream", "StderrSink", "SinkStream", "SinkHandler", "install", "current"]

DEFAULT_MAX_BYTES = 256 * 1024  # queued while stderr is full; more is dropped
_PIECE = getattr(select, "PIPE_BUF", 512)  # POSIX guarantees >= 512; Linux has 4096
_STREAM_FLUSH_AT = 8192  # a SinkStream passes on partial lines longer than this
_HAS_POLL = hasattr(select, "poll")

_current: StderrSink | None = None


def current() -> StderrSink | None:
    """The sink installed by :func:`install`, if any."""
    return _current


class StderrSink:
    """The only writer of the real stderr fd. :meth:`write` never blocks."""

    def __init__(
        self, fd: int, *, max_bytes: int = DEFAULT_MAX_BYTES, use_poll: bool = _HAS_POLL
    ) -> None:
        self._fd = fd
        self._max_bytes = max_bytes
        self._poll = use_poll
        self._cv = threading.Condition(threading.Lock())  # never held across a blocking call
        self._queue: deque[memoryview] = deque()
        self._queued_bytes = 0
        self._writing = False  # the writer thread holds a piece outside the lock (no-poll mode)
        self._closed = False  # stderr is gone (EPIPE): everything is discarded quietly
        self.dropped = 0  # lines dropped since start
        self._unreported = 0  # dropped lines not yet announced on stderr
        self._thread = threading.Thread(target=self._run, name="vibevoice-stderr", daemon=True)
        self._thread.start()

    # --- producers ----------------------------------------------------------------------------

    def write(self, data: bytes, lines: int = 1) -> None:
        """Queue ``data`` (``lines`` lines, for the drop count); write at once if stderr has room."""
        if not data:
            return
        with self._cv:
            if self._closed:
                return
            view = memoryview(data)
            if self._poll and not self._queue and not self._writing:
                view = self._write_ready_locked(view)
                if not view:
                    return
                # A line torn by a full pipe is queued whole, even over the limit: never half a line.
            elif self._queued_bytes + len(view) > self._max_bytes:
                self.dropped += lines
                self._unreported += lines
                return
            self._queue.append(view)
            self._queued_bytes += len(view)
            self._cv.notify_all()

    # --- writing ------------------------------------------------------------------------------

    def _writable(self, timeout_ms: int) -> bool:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        try:
            return bool(poller.poll(timeout_ms))
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
            return False

    def _write_ready_locked(self, view: memoryview) -> memoryview:
        """Write pieces of ``view`` while stderr has room; return what is left."""
        while view and not self._closed and self._writable(0):
            try:
                n = os.write(self._fd, view[:_PIECE])
            except BlockingIOError:
                break
            except OSError:
                self._closed = True  # the reader is gone; nobody will see more
                return memoryview(b"")
            view = view[n:]
        return view

    def _drain_locked(self) -> None:
        while self._queue and not self._closed:
            head = self._queue[0]
            rest = self._write_ready_locked(head)
            self._queued_bytes -= len(head) - len(rest)
            if rest:
                self._queue[0] = rest
                return
            self._queue.popleft()
        if self._closed:
            self._queue.clear()
            self._queued_bytes = 0
        elif not self._queue and self._unreported:
            self._report_locked()

    def _report_locked(self) -> None:
        count, self._unreported = self._unreported, 0
        record = logging.LogRecord(
            __name__,
            logging.WARNING,
            __file__,
            0,
            "stderr was full: %d log lines were dropped (%d since start)",
            (count, self.dropped),
            None,
        )
        line = logging.Formatter(LOG_FORMAT, LOG_DATEFMT).format(record) + "\n"
        view = memoryview(line.encode("utf-8", "backslashreplace"))
        if self._poll:
            view = self._write_ready_locked(view)
        if view:
            self._queue.append(view)
            self._queued_bytes += len(view)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue or self._closed:
                    self._cv.wait()
                if not self._poll:
                    head = self._queue.popleft()
                    self._queued_bytes -= len(head)
                    self._writing = True
            if self._poll:
                if self._writable(200):
                    with self._cv:
                        self._drain_locked()
                        self._cv.notify_all()
                continue
            try:  # no poll: a blocking write, on this thread only
                while head:
                    head = head[os.write(self._fd, head) :]
            except OSError:
                with self._cv:
                    self._closed = True
            with self._cv:
                self._writing = False
                if not self._queue and self._unreported and not self._closed:
                    self._report_locked()
                self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Write what is queued, waiting at most ``timeout`` seconds; True when all was written."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._queue or self._writing) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._poll:
                    self._drain_locked()
                    if self._queue:
                        self._cv.wait(min(left, 0.01))
                else:
                    self._cv.wait(left)
            return True

    @property
    def queued_bytes(self) -> int:
        with self._cv:
            return self._queued_bytes


class SinkHandler(logging.Handler):
    """A logging handler that formats in the caller's thread and hands the line to the sink."""

    def __init__(self, sink: StderrSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.sink.write(line.encode("utf-8", "backslashreplace"), 1)


class SinkStream(io.TextIOBase):
    """``sys.stderr``/``sys.stdout`` while serving: text to the sink, a line at a time."""

    def __init__(self, sink: StderrSink, fileno: int) -> None:
        super().__init__()
        self._sink = sink
        self._fileno = fileno
        self._buf: list[str] = []
        self._buf_len = 0
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def writable(self) -> bool:
        return True

    @property
    def buffer(self) -> _SinkBuffer:
        """For code that writes bytes to ``sys.stderr.buffer``."""
        return _SinkBuffer(self)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fileno

    def write(self, s: str) -> int:  # type: ignore[override]
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            self._buf.append(s)
            self._buf_len += len(s)
            if "\n" in s or self._buf_len > _STREAM_FLUSH_AT:
                self._pass_on_locked(whole_lines_only=True)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            self._pass_on_locked(whole_lines_only=False)

    def _pass_on_locked(self, *, whole_lines_only: bool) -> None:
        text = "".join(self._buf)
        keep = ""
        if whole_lines_only and self._buf_len <= _STREAM_FLUSH_AT:
            cut = text.rfind("\n") + 1
            text, keep = text[:cut], text[cut:]
        self._buf = [keep] if keep else []
        self._buf_len = len(keep)
        if text:
            self._sink.write(text.encode("utf-8", "backslashreplace"), max(1, text.count("\n")))


class _SinkBuffer(io.RawIOBase):
    def __init__(self, stream: SinkStream) -> None:
        super().__init__()
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._stream.flush()  # keep the order of text written before
        self._stream._sink.write(data, max(1, data.count(b"\n")))
        return len(data)


class ConsoleStream(io.TextIOBase):
    r"""``sys.stderr`` of a command on a terminal, shared by a status line and everything else.

    The status line (the progress bar) is what is written with a leading ``\r`` or ``\n`` and
    left unfinished (no ``\n`` at its end). Any other write (a log record, a warning) would
    continue that line — "…0% decoding audio2026-12-07 … INFO …" — so it first blanks the
    line and returns to its start, and once the record has ended its line the status line is
    drawn again below it. Only ``\r``, ``\n`` and spaces: a legacy Windows console shows ANSI
    escapes as text.
    """

    def __init__(self, real: Any) -> None:
        super().__init__()
        self._real = real
        self._lock = threading.RLock()  # records come from any thread; the bar from the caller's
        # The status line as the screen holds it: its text since the last "\r", and the widest
        # it has been since the last "\n" (what a blank must cover). Kept small: a download
        # redraws the bar for an hour without ending the line.
        self._line = ""
        self._width = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._real, "errors", None)

    @property
    def buffer(self) -> Any:
        return self._real.buffer

    def isatty(self) -> bool:
        return self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        with self._lock:
            self._real.flush()

    def write(self, s: str) -> int:  # type: ignore[override]
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        with self._lock:
            if s[0] in "\r\n" or not self._width:
                self._real.write(s)
                self._follow(s)
                return len(s)
            # Someone else's text while the status line is up: blank it, write, draw it again.
            self._real.write("\r" + " " * self._width + "\r" + s)
            if s.endswith("\n"):
                line = self._line.rstrip(" ")
                self._real.write(line)
                self._line, self._width = line, len(line)
            else:  # a partial line of its own now holds the screen line: the bar redraws over it
                self._line, self._width = "", 0
            self._real.flush()
        return len(s)

    def _follow(self, s: str) -> None:
        """Track what ``s`` leaves on the screen's last line."""
        if "\n" in s:
            self._line, self._width = "", 0
            s = s[s.rfind("\n") + 1 :]
        parts = s.split("\r")
        current = self._line + parts[0]  # up to the first "\r", the text continues the line
        self._line = parts[-1] if len(parts) > 1 else current
        self._width = max(self._width, len(current), *(len(part) for part in parts[1:]))


# The app parses every stderr line in this shape (config.setup_logging uses it too).
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _Pump:
    """Empties the private pipe behind fds 1 and 2 into the sink (POSIX).

    The read end is private, so it can be non-blocking; reads happen under a lock that is never held
    across a blocking call, which lets :meth:`settle` empty the pipe itself at exit."""

    def __init__(self, read_fd: int, sink: StderrSink) -> None:
        self._fd = read_fd
        self._sink = sink
        self._lock = threading.Lock()
        os.set_blocking(read_fd, False)
        threading.Thread(target=self._run, name="vibevoice-stderr-pump", daemon=True).start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            try:
                poller.poll()
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not self._move():
                return

    def _move(self) -> bool:
        """Move what the pipe holds now into the sink; False once the pipe is closed."""
        with self._lock:
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                if not data:
                    return False
                self._sink.write(data, max(1, data.count(b"\n")))

    def settle(self) -> None:
        """Pass on everything written to fds 1/2 so far."""
        self._move()


_pump: _Pump | None = None


def install(*, max_bytes: int = DEFAULT_MAX_BYTES) -> StderrSink:
    """Route all stderr output of this process through one non-blocking sink (see the module
    docstring). Call after the stdout claim; idempotent."""
    global _current, _pump
    if _current is not None:
        return _current
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    real = os.dup(2)  # the real stderr, private to this process (not inherited by children)
    if os.name == "posix" and _HAS_POLL:
        read_fd, write_fd = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sink = StderrSink(real, max_bytes=max_bytes)
        _pump = _Pump(read_fd, sink)
        fileno = 2
    else:  # pragma: no cover - Windows: Python-level output only; fd 2 stays the real stderr
        sink = StderrSink(real, max_bytes=max_bytes, use_poll=False)
        fileno = 2
    stream = SinkStream(sink, fileno)
    sys.stderr = stream
    sys.stdout = stream
    _current = sink
    return sink


def flush_at_exit(timeout: float = 0.3) -> None:
    """Best effort before ``os._exit``: pass on buffered output, then write it within ``timeout``."""
    sink = _current
    streams = [sys.stdout, sys.stderr]
    # The original text streams: safe to flush when they write into the private pipe, and
    # flushed as before when no sink is installed (the CLI, tests): the process is ending, and
    # TerminateProcess/os._exit would drop what they buffer.
    if _pump is not None or sink is None:
        streams += [sys.__stdout__, sys.__stderr__]
    for stream in streams:
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    if sink is None:
        return
    if _pump is not None:
        _pump.settle()
    sink.flush(timeout)
