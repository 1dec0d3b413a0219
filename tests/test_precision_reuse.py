"""A per-request precision that the loaded model already runs does not reload it: on the CPU fp16,
auto and fp32 all run fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.config import Config
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.job import Job
from vibevoice_rpc.messages import TranscribeParams
from vibevoice_rpc.model.backend import LocalRuntime

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]


class CountingRuntime(LocalRuntime):
    """The real runtime, counting the loads."""

    def __init__(self) -> None:
        self.loads = 0

    def load(self, *args: Any, **kwargs: Any) -> Any:
        self.loads += 1
        return super().load(*args, **kwargs)


def _stages(engine: Engine, clip: Path, precision: str | None) -> list[str]:
    params = TranscribeParams(audio_path=str(clip), precision=precision, max_new_tokens=2)
    stages: list[str] = []
    job = Job("t", "transcribe", params, None, lambda m, p: stages.append(getattr(p, "stage", m)))
    engine.transcribe(params, job)
    return stages


def test_a_request_for_the_precision_that_already_runs_on_the_cpu_does_not_reload(
    tiny_model: Path, speech_clip: Path
) -> None:
    runtime = CountingRuntime()
    engine = Engine(
        Config(model_path=str(tiny_model), precision="fp16", offline=True), None, runtime
    )
    engine.warm_up()
    assert "loading_model" in _stages(engine, speech_clip, None)  # fp16 asked, fp32 runs
    loaded = engine.local.loaded
    assert loaded is not None and (loaded.requested, loaded.precision) == ("fp16", "fp32")
    for precision in ("fp32", "auto", "fp16", None):
        assert "loading_model" not in _stages(engine, speech_clip, precision), precision
        assert engine.local.loaded is loaded
    assert runtime.loads == 1
    # Another precision still loads.
    assert "loading_model" in _stages(engine, speech_clip, "bf16")
    assert runtime.loads == 2 and engine.local.loaded.precision == "bf16"
    engine.unload(Job(None, "unload_model", None, None, None))
