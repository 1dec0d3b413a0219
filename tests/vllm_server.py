"""A real vLLM server (CPU, tiny random-weight VibeVoice-ASR) for the remote backend's tests.

Not a test module. ``running_vllm_server()`` starts ``scripts/vllm_cpu_server.py`` (which installs
its own vLLM venv on first use, 6–8 min, then reuses it), waits for its ``VLLM_READY`` line and
yields the base URL (``http://127.0.0.1:PORT``, OpenAI-compatible API under ``/v1``, model name
``vibevoice``); on exit it closes the script's stdin, which stops the server and its children.

Opt-in: without ``VIBEVOICE_TEST_VLLM=1`` it calls ``pytest.skip``. Use the session fixture
``vllm_server_url`` (import it into a test module or conftest) so one server serves the session.
Environment: ``VIBEVOICE_VLLM_VENV`` / ``VIBEVOICE_VLLM_MODEL_DIR`` override the script's
cache folders; the server's log goes to a temporary folder (its tail is shown on failure; removed
afterwards unless ``VIBEVOICE_VLLM_KEEP_LOGS=1``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "vllm_cpu_server.py"
ENABLE_VAR = "VIBEVOICE_TEST_VLLM"
MODEL_NAME = "vibevoice"
# First run installs ≈ 3.5 GB (6–8 min here) and starts the server (2–4 min on 2 busy cores).
START_TIMEOUT_S = 1200.0
_READY = re.compile(r"^VLLM_READY url=(\S+) pid=(\d+)$")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    # EOF on stdin asks the script to stop the server (SIGTERM to its process group, then kill).
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=60)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_vllm_server(*, start_timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start the vLLM server, yield its base URL, stop it on exit (skips unless opted in)."""
    if os.environ.get(ENABLE_VAR) != "1":
        pytest.skip(
            f"real vLLM server tests are opt-in: set {ENABLE_VAR}=1 (see scripts/README.md)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="vibevoice-vllm-test-"))
    server_log = workdir / "server.log"
    script_log = workdir / "script.log"
    cmd = [sys.executable, str(SCRIPT), "--log", str(server_log)]
    if os.environ.get("VIBEVOICE_VLLM_VENV"):
        cmd += ["--venv", os.environ["VIBEVOICE_VLLM_VENV"]]
    if os.environ.get("VIBEVOICE_VLLM_MODEL_DIR"):
        cmd += ["--model-dir", os.environ["VIBEVOICE_VLLM_MODEL_DIR"]]
    with open(script_log, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=str(REPO)
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + start_timeout
        while url is None:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.1)) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                why = "exited" if proc.poll() is not None else f"not ready in {start_timeout:.0f} s"
                pytest.fail(
                    f"vLLM server {why} (rc={proc.poll()})\n--- script ---\n{_tail(script_log)}"
                    f"\n--- server ---\n{_tail(server_log)}",
                    pytrace=False,
                )
            match = _READY.match(line)
            if match:
                url = match.group(1)
        yield url
    finally:
        _stop(proc)
        if os.environ.get("VIBEVOICE_VLLM_KEEP_LOGS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def vllm_server_url() -> Iterator[str]:
    """Base URL of one real vLLM server for the whole session (opt-in, see module doc)."""
    with running_vllm_server() as url:
        yield url
