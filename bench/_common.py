"""Shared helpers of the server benchmarks (bench_protocol.py, bench_engine.py): a lean JSON-RPC
client for the real server process, statistics, tables, the machine header and cleanup.

Not a benchmark itself. The client timestamps every stdout line in its reader thread the moment it
is read (``time.perf_counter``), so round trips are measured from the request's write to the arrival
of its answer, with nothing but a pipe and one ``json.loads`` in between.
"""

from __future__ import annotations

import atexit
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "vibevoice_rpc" / "data" / "two_speakers.opus"

_LIVE: set[Server] = set()
_TEMP_DIRS: list[Path] = []


class BenchError(RuntimeError):
    """Something actually failed (an error response, a server that died): the script exits 1."""


# --- cleanup ------------------------------------------------------------------------------------


def _cleanup() -> None:
    for server in list(_LIVE):
        server.kill()
    for folder in _TEMP_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_cleanup)


def _on_signal(signum: int, _frame: Any) -> None:
    _cleanup()
    raise SystemExit(128 + signum)


for _name in ("SIGTERM", "SIGHUP"):
    if hasattr(signal, _name):
        signal.signal(getattr(signal, _name), _on_signal)


def temp_dir(prefix: str) -> Path:
    """A temporary folder removed when the script exits (also on error or SIGTERM)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(folder)
    return folder


# --- the machine ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "not a git checkout"
    return head + (" + uncommitted changes" if dirty else "")


def print_header(title: str) -> None:
    """Date, machine, versions, commit and the exact command — at the top of every report."""
    ram = _ram_gib()
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"== {title}")
    print(f"date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine   {_cpu_model()}, {cores} cores ({usable} usable), "
        + (f"{ram:.1f} GiB RAM" if ram else "RAM unknown")
        + f", {platform.system()} {platform.release()}"
    )
    if load is not None:
        print(
            f"load avg  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min; "
            "above ~0.3 the machine was not quiet)"
        )
    print(
        f"versions  python {platform.python_version()}, torch {_version('torch')}, "
        f"transformers {_version('transformers')}, msgspec {_version('msgspec')}, "
        f"vibevoice-rpc at {ROOT} ({_git()})"
    )
    print(f"command   {shlex.join([Path(sys.executable).name, *sys.argv])}  (cwd {os.getcwd()})")
    print(flush=True)


# --- statistics and tables ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        return math.nan
    k = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``min–max`` of a few runs, or ``p5–p95`` from 20 runs on."""
    if not values:
        return "-"
    if len(values) >= 20:
        return f"{fmt.format(percentile(values, 5))}–{fmt.format(percentile(values, 95))} (p5–p95)"
    return f"{fmt.format(min(values))}–{fmt.format(max(values))} (min–max)"


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "yes" if ok else "NO"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], note: str | None = None) -> None:
    """Print a small aligned table (numbers right-aligned)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        out = []
        for i, cell in enumerate(row):
            numeric = cell[:1].isdigit() or cell[:1] in "-+." and cell[1:2].isdigit()
            out.append(cell.rjust(widths[i]) if numeric and i else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    print(fmt(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))
    if note:
        print(note)
    print(flush=True)


# --- the server ------------------------------------------------------------------------------------


def tiny_model() -> Path:
    """The tiny random-weight model's checkpoint folder (built once, cached under the temp dir)."""
    sys.path.insert(0, str(ROOT))
    from vibevoice_rpc.tiny import tiny_model_dir

    return tiny_model_dir()


def server_env(model_dir: Path | str | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VIBEVOICE_OFFLINE": "1",
            "VIBEVOICE_PRECISION": "fp32",
            "VIBEVOICE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if model_dir is not None:
        env["VIBEVOICE_MODEL_PATH"] = str(model_dir)
    env.update(extra)
    return env


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (bytes) etc. of a live process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """The real server as a child process (``python -m vibevoice_rpc`` unless ``module`` says
    otherwise), cwd = repo root, stderr to a log file. Every stdout line must be JSON."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        module: str = "vibevoice_rpc",
        args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self._log_dir = log_dir or temp_dir("vibevoice-bench-log-")
        self.log_path = self._log_dir / f"server-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in kill()/close()
        self._cv = threading.Condition()
        self._responses: dict[Any, tuple[float, Any]] = {}
        self.notifications: dict[str, int] = {}
        self.stage: dict[Any, str] = {}  # request id -> latest progress stage
        self.segments: dict[Any, int] = {}  # request id -> segment notifications seen
        # (request id, stage) -> arrival of that stage's first progress; request id -> first segment
        self.stage_at: dict[tuple[Any, str], float] = {}
        self.first_segment_at: dict[Any, float] = {}
        # raw_sink(arrival, line) -> True when it consumed the line (skips JSON parsing; used for
        # pipelined bursts); lines it returns False for are handled as usual.
        self.raw_sink: Callable[[float, bytes], bool] | None = None
        self.ready_at: float | None = None
        self.bad_lines: list[bytes] = []
        self._next = 0
        self._write_lock = threading.Lock()
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(ROOT),
        )
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._read, name="bench-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # reading -----------------------------------------------------------------------------------
    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        clock = time.perf_counter
        for line in stdout:
            now = clock()
            sink = self.raw_sink
            if sink is not None and self.ready_at is not None and sink(now, line):
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.bad_lines.append(line)
                continue
            with self._cv:
                if isinstance(msg, dict) and "method" in msg:
                    method = msg["method"]
                    self.notifications[method] = self.notifications.get(method, 0) + 1
                    params = msg.get("params") or {}
                    if method == "ready":
                        self.ready_at = now
                    elif method == "progress":
                        stage = params.get("stage", "")
                        self.stage[params.get("id")] = stage
                        self.stage_at.setdefault((params.get("id"), stage), now)
                    elif method == "segment":
                        rid = params.get("id")
                        self.segments[rid] = self.segments.get(rid, 0) + 1
                        self.first_segment_at.setdefault(rid, now)
                elif isinstance(msg, dict):
                    self._responses[msg.get("id")] = (now, msg)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from spawn to the ``ready`` line."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.ready_at is None:
                self._check_alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no ready line after {timeout} s\n{self.log_tail()}")
                self._cv.wait(min(left, 0.2))
            return self.ready_at - self.spawned_at

    # writing -----------------------------------------------------------------------------------
    def write(self, data: bytes) -> float:
        """Write raw bytes; return the perf_counter time just before the write."""
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            t = time.perf_counter()
            stdin.write(data)
            stdin.flush()
        return t

    def request(self, method: str, params: Any = None, id_: Any = None) -> tuple[Any, float]:
        """Send a request; return (id, time sent)."""
        if id_ is None:
            self._next += 1
            id_ = f"b{self._next}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        return id_, self.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def wait(self, id_: Any, timeout: float = 600) -> tuple[float, Any]:
        """(arrival time, message) of the response to ``id_``; raises BenchError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while id_ not in self._responses:
                self._check_alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no answer to {id_!r} after {timeout} s\n{self.log_tail()}")
                self._cv.wait(min(left, 0.5))
            return self._responses.pop(id_)

    def poll(self, id_: Any) -> tuple[float, Any] | None:
        with self._cv:
            return self._responses.pop(id_, None)

    def call(self, method: str, params: Any = None, timeout: float = 600) -> tuple[float, Any]:
        """(round-trip seconds, result). An error response raises BenchError."""
        id_, sent = self.request(method, params)
        arrived, msg = self.wait(id_, timeout)
        return arrived - sent, result_of(msg, method)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"the server exited with code {self.proc.returncode}\n{self.log_tail()}"
            )

    # memory ------------------------------------------------------------------------------------
    def rss(self) -> int:
        return proc_status(self.pid)["VmRSS"]

    def hwm(self) -> int:
        return proc_status(self.pid)["VmHWM"]

    # stopping ----------------------------------------------------------------------------------
    def log_tail(self, chars: int = 3000) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "server stderr (tail):\n" + text[-chars:]

    def close(self, timeout: float = 15) -> float | None:
        """``shutdown``, then wait for the exit; return seconds from the request to the exit."""
        if self.proc.poll() is not None:
            self.kill()
            return None
        t0 = time.perf_counter()
        try:
            self.write(b'{"jsonrpc":"2.0","id":"bench-shutdown","method":"shutdown"}\n')
            self.proc.wait(timeout)
            took = time.perf_counter() - t0
        except (OSError, subprocess.TimeoutExpired):
            took = None
        self.kill()
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._log.close()
        _LIVE.discard(self)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close() if exc[0] is None else self.kill()


def result_of(msg: Any, what: str) -> Any:
    """The ``result`` of a response; an ``error`` response is a failure of the benchmark."""
    if not isinstance(msg, dict) or "result" not in msg:
        raise BenchError(f"{what} failed: {json.dumps(msg)[:2000]}")
    return msg["result"]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` and exit: its status, 1 on a :class:`BenchError`, 130 on Ctrl-C."""
    started = time.perf_counter()
    try:
        code = main()
        print(f"finished in {time.perf_counter() - started:.0f} s, exit status {code}")
        sys.exit(code)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; servers stopped, temp files removed", file=sys.stderr)
        sys.exit(130)
