"""A test client that spawns the real server with pipes and speaks JSON-RPC to it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as gone). Linux /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def kill_pid(pid: int) -> None:
    """End ``pid`` at once: SIGKILL on POSIX; Windows has no SIGKILL, and there ``os.kill`` with any
    other signal than CTRL_C/CTRL_BREAK_EVENT is TerminateProcess."""
    os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VIBEVOICE_OFFLINE": "1",
            "VIBEVOICE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class RpcProcess:
    """The server as a child process. Every stdout line is recorded raw and must be JSON."""

    def __init__(
        self,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        cwd: str | None = None,
        read_stderr: bool = True,
    ) -> None:
        """``read_stderr=False`` leaves the stderr pipe unread (it fills up, as with a client that
        never drains it) until :meth:`start_reading_stderr`."""
        cmd = cmd or [sys.executable, "-m", "vibevoice_rpc", *(args or [])]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or server_env(),
            cwd=cwd or str(REPO),
        )
        self.raw: list[bytes] = []
        self.messages: list[Any] = []
        self._q: queue.Queue[Any] = queue.Queue()
        self._cv = threading.Condition()
        self.stderr_chunks: list[bytes] = []
        self._next_id = 0
        self._stderr_reader: threading.Thread | None = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if read_stderr:
            self.start_reading_stderr()

    def start_reading_stderr(self) -> None:
        if self._stderr_reader is None:
            self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
            self._stderr_reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.raw.append(line)
                self.messages.append(json.loads(line))  # a non-JSON line fails the test loudly
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self.stderr_chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    # --- sending ----------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj: Any) -> None:
        self.send_raw(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    def request(self, method: str, params: Any = None, id_: Any = None) -> Any:
        if id_ is None:
            self._next_id += 1
            id_ = f"r{self._next_id}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return id_

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def call(self, method: str, params: Any = None, timeout: float = 60) -> Any:
        return self.response(self.request(method, params), timeout)

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    # --- waiting ----------------------------------------------------------------------------
    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            seen = 0
            while True:
                for m in self.messages[seen:]:
                    if pred(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s; messages: {self.messages[-10:]!r}\n"
                        f"stderr tail: {self.stderr[-3000:]}"
                    )
                self._cv.wait(min(left, 0.2))

    def response(self, id_: Any, timeout: float = 60) -> Any:
        return self.wait_for(
            lambda m: isinstance(m, dict) and "method" not in m and m.get("id") == id_, timeout
        )

    def notifications(self, method: str, id_: Any = None) -> list[Any]:
        with self._cv:
            return [
                m["params"]
                for m in self.messages
                if isinstance(m, dict)
                and m.get("method") == method
                and (id_ is None or m["params"].get("id") == id_)
            ]

    def responses_for(self, id_: Any) -> list[Any]:
        with self._cv:
            return [
                m
                for m in self.messages
                if isinstance(m, dict) and "method" not in m and m.get("id") == id_
            ]

    def wait_exit(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> RpcProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
