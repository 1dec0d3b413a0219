"""Line framing over stdio: the stdout claim, the locked writer and the byte-level line reader.

stdout is the protocol channel and nothing else may reach it. :func:`claim_stdout` keeps a private
duplicate of fd 1 for the protocol and points fd 1 (and ``sys.stdout``) at stderr, so prints from torch,
transformers, tqdm or C code land on stderr. It must run before anything heavy is imported.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import msgspec

from ..winapi import IS_WINDOWS, STD_ERROR_HANDLE, STD_OUTPUT_HANDLE, kernel32, last_error

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "Oversized",
    "LineWriter",
    "claim_stdout",
    "iter_lines",
    "find_top_level_id",
    "id_of_unparsable",
]

log = logging.getLogger(__name__)

# Lines of at least 16 MB are accepted; longer ones are answered with RequestTooLarge.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_O_BINARY = getattr(os, "O_BINARY", 0x8000)  # the CRT's value; os has it on Windows only
_BOM = b"\xef\xbb\xbf"
_KEEP = 64 * 1024  # bytes kept from the head and the tail of an oversized line, to find its id


def claim_stdout(*, windows: bool | None = None, msvcrt: Any = None, k32: Any = None) -> int:
    """Reserve the real stdout for the protocol; return its private fd. Idempotent per process.

    The fd is made non-inheritable: ``os.dup`` of a standard stream is inheritable on Windows, and a
    child process that inherited it would keep the app's stdout pipe open after the engine exits.
    """
    try:
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        pass
    proto_fd = os.dup(1)
    os.set_inheritable(proto_fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if IS_WINDOWS if windows is None else windows:
        _claim_windows(proto_fd, msvcrt, k32)
    return proto_fd


def _claim_windows(proto_fd: int, msvcrt: Any = None, k32: Any = None) -> None:
    if msvcrt is None:  # pragma: no cover - Windows only
        import msvcrt
    # Binary mode: the C runtime would otherwise turn "\n" into "\r\n" on the protocol fd.
    msvcrt.setmode(proto_fd, _O_BINARY)
    msvcrt.setmode(0, _O_BINARY)
    try:  # Native code calling GetStdHandle(STD_OUTPUT_HANDLE) must see stderr too.
        lib = k32 if k32 is not None else kernel32()
        if not lib.SetStdHandle(STD_OUTPUT_HANDLE, lib.GetStdHandle(STD_ERROR_HANDLE)):
            log.debug("SetStdHandle failed (error %d)", last_error())
    except OSError:
        log.debug("SetStdHandle failed", exc_info=True)


class LineWriter:
    """Writes one compact JSON message per line to a file descriptor, under a lock.

    Each message is written with ``os.write`` (unbuffered, so no flush can be forgotten). A closed pipe
    (the parent is gone) is remembered and later writes are dropped silently.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.closed = False

    def write(self, message: bytes) -> bool:
        """Write ``message`` + ``\\n``; return False when the channel is closed."""
        if b"\n" in message or b"\r" in message:  # msgspec escapes these inside strings
            raise ValueError("a protocol message must not contain a raw newline or carriage return")
        data = memoryview(message + b"\n")
        with self._lock:
            if self.closed:
                return False
            try:
                while data:
                    written = os.write(self._fd, data)
                    data = data[written:]
            except (BrokenPipeError, OSError) as exc:
                self.closed = True
                log.info("protocol channel closed (%s); dropping further output", exc)
                return False
        return True


class Oversized(msgspec.Struct, frozen=True):
    """A line longer than the limit: its size and the bytes kept from its head and tail."""

    size: int
    head: bytes
    tail: bytes


def iter_lines(
    stream: BinaryIO, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[bytes | Oversized]:
    """Yield each non-blank line of ``stream`` without its ``\\n`` / ``\\r\\n``, until EOF.

    ``max_bytes`` limits a line without its terminator (so ``\\n`` and ``\\r\\n`` lines have the same
    limit). A longer line is consumed to its end in bounded memory and yielded as :class:`Oversized`
    (its size without the terminator), so the reader survives it and can answer. A UTF-8 byte-order
    mark at the very start of the stream (Windows tools write one) is skipped.
    """
    bom = len(_BOM)  # only the first read may start with one
    while True:
        limit = max_bytes + 2 + bom  # room for the limit plus "\r\n" (and the BOM)
        line = stream.readline(limit)
        cut_short = not line.endswith(b"\n") and len(line) >= limit  # the line goes on
        if bom:
            bom = 0
            line = line.removeprefix(_BOM)
        if cut_short:
            head, tail, size = line[:_KEEP], line[-_KEEP:], len(line)
            while True:
                more = stream.readline(1 << 20)
                if not more:
                    break
                size += len(more)
                tail = (tail + more)[-_KEEP:]
                if more.endswith(b"\n"):
                    break
            body = _strip_terminator(tail)
            yield Oversized(size=size - (len(tail) - len(body)), head=head, tail=body)
            continue
        if not line:  # EOF (a stream of only a BOM is empty too)
            return
        line = _strip_terminator(line)
        if len(line) > max_bytes:
            yield Oversized(size=len(line), head=line[:_KEEP], tail=line[-_KEEP:])
        elif line.strip():
            yield line


def _strip_terminator(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def id_of_unparsable(data: bytes) -> int | float | str | None:
    """The top-level ``"id"`` of a line too big or too deep to parse, from its head and tail."""
    return find_top_level_id(data[:_KEEP], data[-_KEEP:])


def find_top_level_id(head: bytes, tail: bytes) -> int | float | str | None:
    """Find the ``"id"`` member of a top-level JSON object from the kept head/tail of a huge line."""
    for part, from_start in ((head, True), (tail, False)):
        value = _scan_for_id(part, from_start)
        if value is not None:
            return value
    return None


def _scan_for_id(data: bytes, from_start: bool) -> int | float | str | None:
    # From the head we know the nesting depth exactly. From the tail we scan backwards mirrored:
    # the top-level members are the ones at depth 1 counting closing brackets from the end.
    text = data.decode("utf-8", "replace")
    if not from_start:
        return _scan_tail(text)
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if end < 0:
                return None
            if depth == 1 and text[i : end + 1] == '"id"':
                return _value_after(text, end + 1)
            i = end + 1
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        i += 1
    return None


def _scan_tail(text: str) -> int | float | str | None:
    # Look for `"id":VALUE` followed only by `}` or `,"key":...` at depth 1 counted from the end.
    idx = text.rfind('"id"')
    while idx >= 0:
        value = _value_after(text, idx + 4)
        if value is not None and _depth_from_end(text, idx) == 1:
            return value
        idx = text.rfind('"id"', 0, idx)
    return None


def _depth_from_end(text: str, pos: int) -> int:
    depth, in_str, i = 0, False, len(text) - 1
    while i > pos:
        c = text[i]
        if c == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        elif not in_str:
            if c in "}]":
                depth += 1
            elif c in "{[":
                depth -= 1
        i -= 1
    return depth


def _string_end(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _value_after(text: str, pos: int) -> int | float | str | None:
    rest = text[pos:].lstrip()
    if not rest.startswith(":"):
        return None
    rest = rest[1:].lstrip()
    if rest.startswith('"'):
        end = _string_end(rest, 0)
        candidate = rest[: end + 1] if end > 0 else ""
    else:
        stop = len(rest)
        for sep in ",}] \t":
            k = rest.find(sep)
            if k >= 0:
                stop = min(stop, k)
        candidate = rest[:stop]
    try:
        value = msgspec.json.decode(candidate.encode())
    except msgspec.DecodeError:
        return None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return None
