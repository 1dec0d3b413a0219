"""Waiting for a spawned server's stdout to end, instead of sleeping after it exits."""

from __future__ import annotations

import threading

from .rpc_client import RpcProcess


def read_to_eof(p: RpcProcess, timeout: float = 5) -> None:
    """After the server exited: wait until its stdout reader has read every line it wrote (the
    pipe's end), so what is in ``p.raw`` is all there will ever be."""
    for t in threading.enumerate():
        if getattr(t, "_target", None) == p._read_stdout:
            t.join(timeout)
            assert not t.is_alive(), "stdout still open after the server exited"
