"""A loopback address where nothing listens, that no other test can start listening on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` for the duration of the block: the port is bound, so no server
    of another test (or of a run side by side) can be given it, but never listened on, so a
    connection is refused at once. (A stopped server's port is free for anyone to take.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
