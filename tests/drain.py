"""Waiting for a spawned server's output to end, instead of sleeping after it exits."""

from __future__ import annotations

import threading
import time

from .rpc_client import RpcProcess


def read_to_eof(p: RpcProcess, timeout: float = 5) -> None:
    """After the server exited: wait until its stdout reader, and its stderr reader when stderr is
    read, have read everything it wrote (the pipes' ends), so what is in ``p.raw`` and
    ``p.stderr`` is all there will ever be."""
    readers = [t for t in threading.enumerate() if getattr(t, "_target", None) == p._read_stdout]
    if p._stderr_reader is not None:
        readers.append(p._stderr_reader)
    for t in readers:
        t.join(timeout)
        assert not t.is_alive(), f"{t.name}: output still open after the server exited"


def wait_for_stderr(p: RpcProcess, text: str, timeout: float = 30) -> None:
    """Wait until ``text`` has come on the server's stderr. A log line is written before the answer
    that follows it, but stderr and stdout are two pipes read by two threads: the answer can be
    seen first."""
    deadline = time.monotonic() + timeout
    while text not in p.stderr:
        assert time.monotonic() < deadline, f"{text!r} not on stderr: {p.stderr[-3000:]}"
        ended = p._stderr_reader is not None and not p._stderr_reader.is_alive()
        assert not ended or text in p.stderr, f"{text!r} not on stderr: {p.stderr[-3000:]}"
        time.sleep(0.01)
