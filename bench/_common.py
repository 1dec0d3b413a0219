"""Shared helpers of the server benchmarks (bench_protocol.py, bench_engine.py, bench_remote.py):
the server process (the tests' client, tests/rpc_client.py, with a log file and progress tracking),
statistics, tables, the machine header and cleanup.

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
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python bench/x.py``: the tests' client lives in tests/
    sys.path.insert(0, str(ROOT))

from tests import rpc_client  # noqa: E402
from tests.rpc_client import RpcProcess  # noqa: E402

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
    from vibevoice_rpc.model.tiny import tiny_model_dir

    return tiny_model_dir()


def server_env(model_dir: Path | str | None, **extra: str) -> dict[str, str]:
    """The tests' server environment (offline, INFO logs, unbuffered), fp32, ``model_dir``."""
    if model_dir is not None:
        extra = {"VIBEVOICE_MODEL_PATH": str(model_dir), **extra}
    return rpc_client.server_env(**{"VIBEVOICE_PRECISION": "fp32", **extra})


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


class Server(RpcProcess):
    """The real server as a child process (``python -m vibevoice_rpc`` unless ``module`` says
    otherwise), cwd = repo root, stderr to a log file, driven by the tests' client
    (tests/rpc_client.py: every stdout line timestamped as it is read). Also tracks each request's
    progress stages and segments as they arrive. Failures raise :class:`BenchError`; stopped at
    exit, also on an error or SIGTERM."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        module: str = "vibevoice_rpc",
        args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.stage: dict[Any, str] = {}  # request id -> latest progress stage
        self.segments: dict[Any, int] = {}  # request id -> segment notifications seen
        # (request id, stage) -> arrival of that stage's first progress; request id -> first segment
        self.stage_at: dict[tuple[Any, str], float] = {}
        self.first_segment_at: dict[Any, float] = {}
        log = (log_dir or temp_dir("vibevoice-bench-log-")) / f"server-{time.time_ns()}.log"
        super().__init__(
            cmd=[sys.executable, "-m", module, *args],
            env=env,
            cwd=str(ROOT),
            stderr_path=log,
            failure=BenchError,
            strict=False,
        )
        _LIVE.add(self)

    def _on_message(self, now: float, msg: Any) -> None:
        super()._on_message(now, msg)
        if not isinstance(msg, dict):
            return
        params = msg.get("params") or {}
        if msg.get("method") == "progress":
            stage = params.get("stage", "")
            self.stage[params.get("id")] = stage
            self.stage_at.setdefault((params.get("id"), stage), now)
        elif msg.get("method") == "segment":
            rid = params.get("id")
            self.segments[rid] = self.segments.get(rid, 0) + 1
            self.first_segment_at.setdefault(rid, now)

    def rss(self) -> int:
        return proc_status(self.pid)["VmRSS"]

    def hwm(self) -> int:
        return proc_status(self.pid)["VmHWM"]

    def kill(self) -> None:
        super().kill()
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
