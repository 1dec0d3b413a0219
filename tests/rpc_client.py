"""The one JSON-RPC client for the server as a child process, used by the tests, the frozen smoke
test (``tests/frozen_smoke.py``) and the benchmarks (``bench/_common.py``).

It spawns the program with pipes and reads stdout in a thread that timestamps every line the moment
it is read (``time.perf_counter``) and checks it is one JSON-RPC 2.0 message (UTF-8 JSON object or
array, ``"jsonrpc": "2.0"``, ending in ``\\n``, no ``\\r``); messages are kept in arrival order and
responses indexed by id. Every wait has a timeout and fails at once when stdout closes or carried a
line that is not such a message, naming the last messages and the tail of stderr.

Scripts outside the test suite import it as ``tests.rpc_client`` with the repository root on
``sys.path``; it imports nothing from the project.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


def check_line(raw: bytes) -> tuple[Any, str | None]:
    """(the message or None, what is wrong with the line or None) for one stdout line."""
    problem = None if raw.endswith(b"\n") else "line does not end in \\n"
    try:
        text = raw.decode("utf-8")
        msg = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not valid UTF-8 JSON ({exc})"
    if "\r" in text:
        problem = "line contains a carriage return"
    elif not isinstance(msg, (dict, list)):
        problem = "not a JSON object or array"
    elif isinstance(msg, dict) and msg.get("jsonrpc") != "2.0":
        problem = 'no "jsonrpc": "2.0"'
    return msg, problem


def _key(id_: Any) -> Any:
    """A response id as a dict key (ids are JSON scalars; anything else by its JSON text)."""
    if id_ is None or isinstance(id_, (str, int, float)):
        return id_
    return json.dumps(id_, sort_keys=True)


class RpcProcess:
    """The server as a child process. Every stdout line is recorded raw and must be JSON-RPC 2.0.

    ``read_stderr=False`` leaves the stderr pipe unread (it fills up, as with a client that never
    drains it) until :meth:`start_reading_stderr`; ``stderr_path`` sends stderr to that file
    instead. ``failure`` is the exception every failed wait raises (the tests' AssertionError,
    the smoke test's and the benchmarks' own). ``strict`` (the tests): a line that is not JSON also
    raises in the reader thread, which then stops reading.
    """

    def __init__(
        self,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        cwd: str | None = None,
        read_stderr: bool = True,
        *,
        stderr_path: Path | None = None,
        failure: type[Exception] = AssertionError,
        strict: bool = True,
    ) -> None:
        cmd = cmd or [sys.executable, "-m", "vibevoice_rpc", *(args or [])]
        self.failure = failure
        self.strict = strict
        self.raw: list[bytes] = []
        self.messages: list[Any] = []
        self.bad_lines: list[str] = []
        self.stderr_chunks: list[bytes] = []
        self.stderr_path = stderr_path
        self.ready_at: float | None = None  # perf_counter arrival of the ready notification
        # raw_sink(arrival, line) -> True when it consumed the line (not parsed, not recorded:
        # pipelined bursts in the benchmarks); lines it returns False for are handled as usual.
        self.raw_sink: Callable[[float, bytes], bool] | None = None
        self._replies: dict[Any, tuple[float, Any]] = {}  # id -> (arrival, first response)
        self._cv = threading.Condition()
        self._write_lock = threading.Lock()
        self._eof = False
        self._next_id = 0
        self._stderr_file: BinaryIO | None = open(stderr_path, "wb") if stderr_path else None  # noqa: SIM115 - closed in kill()
        self.started = time.perf_counter()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr_file or subprocess.PIPE,
                env=env if env is not None else server_env(),
                cwd=cwd or str(REPO),
            )
        except BaseException:
            if self._stderr_file is not None:
                self._stderr_file.close()
            raise
        self._stdout_reader = threading.Thread(
            target=self._read_stdout, name="rpc-stdout", daemon=True
        )
        self._stdout_reader.start()
        self._stderr_reader: threading.Thread | None = None
        if read_stderr:
            self.start_reading_stderr()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- reading ----------------------------------------------------------------------------
    def start_reading_stderr(self) -> None:
        if self._stderr_reader is None and self._stderr_file is None:
            self._stderr_reader = threading.Thread(
                target=self._read_stderr, name="rpc-stderr", daemon=True
            )
            self._stderr_reader.start()

    def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        clock = time.perf_counter
        try:
            for line in stdout:
                now = clock()
                sink = self.raw_sink
                if sink is not None and sink(now, line):
                    continue
                msg, problem = check_line(line)
                with self._cv:
                    self.raw.append(line)
                    if problem:
                        self.bad_lines.append(f"{problem}: {line[:300]!r}")
                    if msg is not None:
                        self.messages.append(msg)
                        self._on_message(now, msg)
                    self._cv.notify_all()
                if msg is None and self.strict:
                    raise ValueError(f"the server wrote a line that is not JSON: {line[:300]!r}")
        finally:
            with self._cv:
                self._eof = True
                self._cv.notify_all()

    def _on_message(self, now: float, msg: Any) -> None:
        """Called in the reader thread, under the lock, for every message as it arrives."""
        if not isinstance(msg, dict):
            return
        if "method" not in msg:
            self._replies.setdefault(_key(msg.get("id")), (now, msg))
        elif msg["method"] == "ready" and self.ready_at is None:
            self.ready_at = now

    def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        for chunk in iter(lambda: stderr.read1(65536), b""):
            self.stderr_chunks.append(chunk)

    @property
    def stderr(self) -> str:
        if self.stderr_path is not None:
            try:
                return self.stderr_path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                return ""
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    # --- sending ----------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> float:
        """Write ``data``; return the ``perf_counter`` time just before the write."""
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            sent = time.perf_counter()
            try:
                stdin.write(data)
                stdin.flush()
            except OSError as exc:
                raise self.failure(
                    f"writing to the server's stdin failed ({exc!r}); exit code "
                    f"{self.proc.poll()}\nstderr tail:\n{self.stderr[-3000:]}"
                ) from None
        return sent

    def send(self, obj: Any) -> float:
        return self.send_raw(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    def request_at(self, method: str, params: Any = None, id_: Any = None) -> tuple[Any, float]:
        """Send a request; return its id and the time it was written."""
        if id_ is None:
            self._next_id += 1
            id_ = f"r{self._next_id}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        return id_, self.send(msg)

    def request(self, method: str, params: Any = None, id_: Any = None) -> Any:
        return self.request_at(method, params, id_)[0]

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def call(self, method: str, params: Any = None, timeout: float = 60) -> Any:
        """The whole response (``result`` or ``error``) to one request."""
        return self.response(self.request(method, params), timeout)

    def timed_call(self, method: str, params: Any = None, timeout: float = 60) -> tuple[float, Any]:
        """(seconds from the write to the answer's arrival, the result); an error response fails."""
        id_, sent = self.request_at(method, params)
        arrived, result = self.result(id_, timeout, f"the {method} response")
        return arrived - sent, result

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    # --- waiting ----------------------------------------------------------------------------
    def _fail(self, what: str) -> Exception:
        return self.failure(
            f"{what}; last messages: {self.messages[-10:]!r}\nstderr tail:\n{self.stderr[-3000:]}"
        )

    def _wait(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait (holding the lock) until ``found()`` is not None; fail on a bad stdout line, when
        stdout closes without it, or after ``timeout`` seconds."""
        deadline = time.perf_counter() + timeout
        with self._cv:
            while True:
                got = found()
                if got is not None:
                    return got
                if self.bad_lines:
                    raise self._fail(
                        f"stdout carried a line that is not a JSON-RPC 2.0 message while waiting "
                        f"for {what}: {self.bad_lines[0]}"
                    )
                if self._eof:
                    raise self._fail(
                        f"stdout closed while waiting for {what} (exit code {self.proc.poll()})"
                    )
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise self._fail(f"timed out after {timeout:g} s waiting for {what}")
                self._cv.wait(min(left, 0.5))

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 60, what: str = "") -> Any:
        """The first message (in arrival order) for which ``pred`` is true."""
        seen = 0

        def found() -> Any:
            nonlocal seen
            for m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            return None

        return self._wait(found, timeout, what or "a matching message")

    def reply(self, id_: Any, timeout: float = 60, what: str = "") -> tuple[float, Any]:
        """(arrival time, the first response to ``id_``: result or error)."""
        key = _key(id_)
        return self._wait(lambda: self._replies.get(key), timeout, what or f"the answer to {id_!r}")

    def result(self, id_: Any, timeout: float = 60, what: str = "") -> tuple[float, Any]:
        """(arrival time, the result of ``id_``); an error response fails."""
        what = what or f"the answer to {id_!r}"
        arrived, msg = self.reply(id_, timeout, what)
        if "result" not in msg:
            raise self._fail(f"{what}: {json.dumps(msg, ensure_ascii=False)[:2000]}")
        return arrived, msg["result"]

    def response(self, id_: Any, timeout: float = 60) -> Any:
        return self.reply(id_, timeout)[1]

    def poll(self, id_: Any) -> tuple[float, Any] | None:
        """(arrival time, response) if ``id_`` has been answered, else None; never waits."""
        with self._cv:
            return self._replies.get(_key(id_))

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from spawn to the ``ready`` notification."""
        ready = self._wait(lambda: self.ready_at, timeout, "the ready notification")
        return ready - self.started

    def notifications(self, method: str, id_: Any = None, before: Any = None) -> list[Any]:
        """The params of the ``method`` notifications (of request ``id_``) so far; ``before``: only
        those that arrived before that message (e.g. a response from :meth:`reply`)."""
        with self._cv:
            out = []
            for m in self.messages:
                if m is before:
                    break
                if (
                    isinstance(m, dict)
                    and m.get("method") == method
                    and (id_ is None or m["params"].get("id") == id_)
                ):
                    out.append(m["params"])
            return out

    def responses_for(self, id_: Any) -> list[Any]:
        with self._cv:
            return [
                m
                for m in self.messages
                if isinstance(m, dict) and "method" not in m and m.get("id") == id_
            ]

    def check_lines(self) -> None:
        """Fail if any stdout line so far was not one JSON-RPC 2.0 message."""
        if self.bad_lines:
            raise self.failure(
                "stdout carried a line that is not a JSON-RPC 2.0 message:\n  "
                + "\n  ".join(self.bad_lines[:5])
            )

    # --- stopping ---------------------------------------------------------------------------
    def _join_readers(self, timeout: float) -> None:
        """Let the readers take in what the exited process left in the pipes (they end at EOF;
        a grandchild that inherited a pipe can keep it open: then they are left running)."""
        for reader in (self._stdout_reader, self._stderr_reader):
            if reader is not None:
                reader.join(timeout)

    def wait_exit(self, timeout: float = 10) -> int:
        """The exit code, once the process has exited and its output has been read."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"the server did not exit within {timeout:g} s") from None
        self._join_readers(5)
        return code

    def close(self, timeout: float = 15) -> float | None:
        """``shutdown``, wait for the exit, then make sure the process is gone. Seconds from the
        request to the exit; None when it had already exited or did not exit in time."""
        took = None
        if self.proc.poll() is None:
            try:
                _, sent = self.request_at("shutdown")
                self.proc.wait(timeout)
                took = time.perf_counter() - sent
            except (self.failure, subprocess.TimeoutExpired):
                pass
        self.kill()
        return took

    def kill(self) -> None:
        """End the process at once (SIGKILL; TerminateProcess on Windows) and close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process
                pass
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        self._join_readers(2)
        # a pipe is closed only once its reader is done: closing it under a blocked read hangs
        for reader, stream in (
            (self._stdout_reader, self.proc.stdout),
            (self._stderr_reader, self.proc.stderr),
        ):
            if stream is not None and (reader is None or not reader.is_alive()):
                try:
                    stream.close()
                except OSError:
                    pass
        if self._stderr_file is not None:
            self._stderr_file.close()

    def __enter__(self) -> RpcProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
