"""The non-blocking stderr sink: writes never block, overflow is dropped and counted, and no way of
writing to stderr (logging, warnings, sys.stderr, fd 2 from C, a child process) can freeze a process
whose stderr pipe nobody reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vibevoice_rpc.logsink import SinkStream, StderrSink

from .rpc_client import REPO

pytestmark = pytest.mark.timeout(60)


def _read_all(fd: int, out: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        out.append(chunk)


def test_writes_never_block_on_a_full_pipe_and_overflow_is_counted() -> None:
    r, w = os.pipe()
    try:
        sink = StderrSink(w, max_bytes=64 * 1024)
        line = b"x" * 199 + b"\n"
        done = threading.Event()

        def flood() -> None:
            for _ in range(10_000):  # 2 MB: the 64 KiB pipe and the 64 KiB queue overflow
                sink.write(line, 1)
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(30), "a write blocked on the full pipe"
        assert sink.dropped > 0
        assert sink.queued_bytes <= 64 * 1024 + len(line)
        assert sink.flush(0.05) is False  # nobody reads: a bounded flush gives up

        got: list[bytes] = []
        reader = threading.Thread(target=_read_all, args=(r, got), daemon=True)
        reader.start()
        assert sink.flush(30) is True  # the reader drains it: everything queued is written
        sink.write(b"after\n", 1)
        os.close(w)
        w = -1
        reader.join(30)
        text = b"".join(got).decode()
        lines = text.splitlines()
        assert all(ln == "x" * 199 for ln in lines[:-2]), "a line was torn or mixed"
        assert f"stderr was full: {sink.dropped} log lines were dropped" in lines[-2]
        assert lines[-1] == "after"
        assert len(lines) - 2 + sink.dropped == 10_000  # each line written whole or counted
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_stream_passes_on_whole_lines_and_flushes_partial_ones() -> None:
    r, w = os.pipe()
    try:
        sink = StderrSink(w)
        stream = SinkStream(sink, w)
        stream.write("one ")
        stream.write("line\ntwo")
        assert sink.flush(5)
        assert os.read(r, 100) == b"one line\n"
        stream.flush()
        assert sink.flush(5)
        assert os.read(r, 100) == b"two"
        assert stream.isatty() is False and stream.fileno() == w
    finally:
        os.close(r)
        os.close(w)


def test_a_closed_reader_is_no_error() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        sink = StderrSink(w)
        sink.write(b"nobody hears this\n", 1)
        assert sink.flush(5) is True
    finally:
        os.close(w)


# A child process whose stderr pipe is never read: every kind of writer floods it, then it says
# "done" on its own channel (a second pipe, like the protocol's stdout).
_WRITERS = r"""
import ctypes, logging, os, subprocess, sys, threading, warnings
proto = os.dup(1)
from vibevoice_rpc.protocol.transport import claim_stdout
from vibevoice_rpc.config import setup_logging
from vibevoice_rpc import logsink
claim_stdout()
setup_logging("DEBUG", nonblocking=True)
log = logging.getLogger("flood")
libc = ctypes.CDLL(None)
chunk = b"c" * 999 + b"\n"

def logging_():
    for i in range(3000):
        log.info("a log line %d %s", i, "l" * 200)

def warnings_():
    for i in range(3000):
        warnings.warn(f"warning {i}")  # captured by logging

def sys_stderr():
    for i in range(3000):
        print("print to sys.stderr", i, "s" * 200, file=sys.stderr)
        sys.stdout.write("sys.stdout " + "o" * 200 + "\n")

def fd2_from_c():
    for _ in range(3000):
        libc.write(2, chunk, len(chunk))  # C code writing to fd 2 (and fd 1, now stderr too)
        libc.write(1, chunk, len(chunk))

def child():
    cmd = [sys.executable, "-c", "import os\nfor _ in range(3000): os.write(2, b'k' * 999 + b'\\n')"]
    subprocess.run(cmd, check=True)

threads = [threading.Thread(target=f) for f in (logging_, warnings_, sys_stderr, fd2_from_c, child)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sink = logsink.current()
os.write(proto, ("done %d\n" % sink.dropped).encode())
logsink.flush_at_exit(0.3)
os._exit(0)
"""


def test_no_writer_blocks_when_stderr_is_never_read(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITERS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # never read until the end
        cwd=str(REPO),
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(b"done "), line
        dropped = int(line.split()[1])
        assert proc.wait(30) == 0
        err = proc.stderr.read()  # type: ignore[union-attr]
        # ~15 MB were written to stderr; the 64 KiB pipe kept what it could, the rest was counted.
        assert dropped > 1000, dropped
        assert len(err) <= 1024 * 1024
        print(json.dumps({"dropped_lines": dropped, "stderr_bytes_kept": len(err)}))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_bytes_written_to_the_stream_buffer_keep_their_order() -> None:
    r, w = os.pipe()
    try:
        sink = StderrSink(w)
        stream = SinkStream(sink, w)
        stream.write("text first, ")
        stream.buffer.write(b"then bytes\n")
        assert sink.flush(5)
        assert os.read(r, 100) == b"text first, then bytes\n"
    finally:
        os.close(r)
        os.close(w)
