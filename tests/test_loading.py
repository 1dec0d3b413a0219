"""Loading the model as the real checkpoint needs it: nf4 on the CPU, quantized CPU offload
arguments, no "Both max_new_tokens and max_length" warning, failed reloads that keep the server
working, and bitsandbytes failures as specific errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.config import Config
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.errors import ModelDoesNotFit, ModelUnavailable
from vibevoice_rpc.messages import ReloadParams, TranscribeParams, TranscribeResult
from vibevoice_rpc.protocol.dispatcher import Job

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]


def run(engine: Engine, **params: Any) -> TranscribeResult:
    p = TranscribeParams(**params)
    return engine.transcribe(p, Job("t", "transcribe", p, None, None))


def job() -> Job:
    return Job(None, "reload_model", None, None, None)


@pytest.fixture
def engine(tiny_model: Path) -> Any:
    eng = Engine(Config(model_path=str(tiny_model), precision="fp32", offline=True))
    eng.warm_up()
    yield eng
    eng.unload(job())


def test_nf4_runs_end_to_end_on_the_cpu(engine: Engine, speech_clip: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    assert "precision: nf4" in engine.reload(ReloadParams(precision="nf4"), job()).message
    lm = engine.local.loaded.model.model.language_model
    assert any(isinstance(m, Linear4bit) for m in lm.modules())
    result = run(engine, audio_path=str(speech_clip), max_new_tokens=8)
    meta = result.metadata
    assert meta.model_precision == "nf4" and meta.generated_tokens == 8


def test_no_max_length_warning_on_any_window(
    engine: Engine, speech_clip: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    # The tiny checkpoint carries max_length 32768 in its generation config, as the real one does.
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert gen["max_length"] == 32768 and gen["max_new_tokens"] == 32768
    with caplog.at_level(logging.WARNING):
        run(engine, audio_path=str(speech_clip), max_new_tokens=4)
        run(engine, audio_path=str(speech_clip), max_new_tokens=4)
    assert not [r for r in caplog.records if "max_length" in r.getMessage()]


def test_quantized_offload_gets_max_memory_and_fp32_cpu_offload() -> None:
    import torch

    from vibevoice_rpc.model import planner
    from vibevoice_rpc.model.loader import from_pretrained_kwargs

    cfg = planner.real_size_config()
    gib = 2**30
    for precision in ("int8", "nf4"):
        plan = planner.plan(
            cfg,
            precision,
            audio_seconds=None,
            free_vram_bytes=4 * gib,  # far too small for the 7B model: layers go to the CPU
            total_vram_bytes=6 * gib,
            device="cuda",
            allow_cpu_offload=True,
        )
        assert plan.cpu_offload is True
        kwargs = from_pretrained_kwargs(plan, "cuda")
        assert kwargs["device_map"] == "auto"
        gpu = kwargs["max_memory"][0]
        # the GPU share leaves a quarter of the free VRAM (and the fixed overhead) for the KV cache
        assert gpu == int(4 * gib * 0.75) - planner.FIXED_OVERHEAD_BYTES
        assert kwargs["max_memory"]["cpu"] >= gib
        quant = kwargs["quantization_config"]
        assert quant.llm_int8_enable_fp32_cpu_offload is True
        assert "lm_head" in quant.llm_int8_skip_modules
        assert kwargs["dtype"] in (torch.bfloat16, torch.float16)
    fits = planner.plan(
        cfg,
        "nf4",
        audio_seconds=None,
        free_vram_bytes=40 * gib,
        total_vram_bytes=48 * gib,
        device="cuda",
        allow_cpu_offload=True,
    )
    kwargs = from_pretrained_kwargs(fits, "cuda")
    assert kwargs["device_map"] == {"": "cuda"} and "max_memory" not in kwargs
    assert kwargs["quantization_config"].llm_int8_enable_fp32_cpu_offload is False


def test_int8_with_fp32_cpu_offload_loads_and_runs_on_the_cpu(
    tiny_model: Path, speech_clip: Path
) -> None:
    """The CPU side of offload: a quantized model with fp32 CPU offload enabled loads and runs."""
    import numpy as np
    import torch
    from transformers import AutoProcessor, VibeVoiceAsrForConditionalGeneration

    from vibevoice_rpc.model.loader import quantization_config

    quant = quantization_config("int8", torch.float32, cpu_offload=True)
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(
        str(tiny_model),
        dtype=torch.float32,
        device_map="auto",
        quantization_config=quant,
        use_kernels=False,  # as from_pretrained_kwargs: the package blocks the kernels import
    )
    processor = AutoProcessor.from_pretrained(str(tiny_model))
    inputs = processor.apply_transcription_request(audio=np.zeros(24000, dtype=np.float32))
    out = model.generate(**inputs, max_new_tokens=3, sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_a_reload_with_a_bad_model_path_keeps_the_working_model(
    engine: Engine, speech_clip: Path, tmp_path: Path, tiny_model: Path
) -> None:
    run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    with pytest.raises(ModelUnavailable) as info:
        engine.reload(ReloadParams(precision="fp32", model_path=str(tmp_path / "nope")), job())
    assert "was kept" in info.value.message and info.value.data["kept_model"] is True
    snap = engine.snapshot()
    assert snap.model_loaded is True and snap.model == str(tiny_model)
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=2).metadata.model == str(
        tiny_model
    )
    # the bad path was not kept either: after an unload the next job loads the good one again
    engine.unload(job())
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=2).metadata.model == str(
        tiny_model
    )


def test_a_precision_that_cannot_fit_is_refused_before_the_model_is_unloaded(
    engine: Engine, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vibevoice_rpc.model import planner

    run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    model = engine.local.loaded.model
    real = planner.plan

    def plan(config: Any, precision: str, **kwargs: Any) -> Any:
        if precision == "bf16":
            raise ModelDoesNotFit("bf16 needs 18.1 GiB but only 11.0 GiB of VRAM is free")
        return real(config, precision, **kwargs)

    monkeypatch.setattr(planner, "plan", plan)
    with pytest.raises(ModelDoesNotFit) as info:
        engine.reload(ReloadParams(precision="bf16"), job())
    assert info.value.code == -32006 and "was kept" in info.value.message
    assert engine.local.loaded is not None and engine.local.loaded.model is model  # never unloaded
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=2).metadata.model_precision == (
        "fp32"
    )


def test_a_load_that_fails_midway_restores_the_previous_model(
    engine: Engine, speech_clip: Path, tmp_path: Path, tiny_model: Path
) -> None:
    run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    # A cut download: the weights hold fewer parameters than the config describes, refused while
    # planning, before the loaded model is touched.
    whole = weights.read_bytes()
    weights.write_bytes(whole[:4096])
    with pytest.raises(ModelUnavailable) as info:
        engine.reload(ReloadParams(precision="bf16", model_path=str(broken)), job())
    assert info.value.data["kind"] == "model_load_failed" and info.value.data["kept_model"] is True
    assert "incomplete or damaged" in info.value.message
    assert engine.snapshot().model == str(tiny_model)
    # Weights of the right size whose header is broken: only the load itself finds out.
    weights.write_bytes(whole[:8] + b"x" + whole[9:])
    with pytest.raises(ModelUnavailable) as info:
        engine.reload(ReloadParams(precision="bf16", model_path=str(broken)), job())
    assert info.value.data["restored_model"] is True
    assert f"the previous model (fp32 from {tiny_model}) was restored" in info.value.message
    snap = engine.snapshot()
    assert snap.model_loaded is True and snap.model == str(tiny_model)
    assert snap.precision == "fp32"
    result = run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    assert result.metadata.model == str(tiny_model)


def test_a_bitsandbytes_shape_failure_is_a_specific_error(
    engine: Engine, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bitsandbytes.nn.modules as bnb_modules

    engine.reload(ReloadParams(precision="nf4"), job())

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("N must be divisible by block_n")

    # What bitsandbytes' CPU 4-bit packing raised on layers narrower than its block (it packs on
    # the first forward on CPUs with AVX-512 BF16; claimed here so any CPU takes that path).
    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", refuse)
    for module in engine.local.loaded.model.modules():
        if isinstance(module, bnb_modules.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    with pytest.raises(ModelUnavailable) as info:
        run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    err = info.value
    assert err.code == -32004 and err.data["kind"] == "quantization_failed"
    assert "nf4 failed inside bitsandbytes" in err.message and "block_n" in err.message
    assert "fp32" in err.data["hint"]


def test_health_and_progress_say_which_precision_runs_and_which_was_asked(
    tiny_model: Path, speech_clip: Path
) -> None:
    """On a CPU-only machine fp16 runs as fp32: health says so before loading, while loaded and
    after unloading; the load's progress names both."""
    from vibevoice_rpc.messages import TranscribeParams

    eng = Engine(Config(model_path=str(tiny_model), precision="fp16", offline=True))
    eng.warm_up()
    assert eng.local._torch_ready.wait(120)
    snap = eng.snapshot()
    assert (snap.precision, snap.requested_precision) == ("fp32", "fp16")
    messages: list[str] = []
    p = TranscribeParams(audio_path=str(speech_clip), max_new_tokens=2)
    job = Job("t", "transcribe", p, None, lambda m, d: messages.append(getattr(d, "message", "")))
    eng.transcribe(p, job)
    assert "loading model (fp32; fp16 requested)" in messages
    assert "model loaded (fp32)" in messages
    snap = eng.snapshot()
    assert (snap.precision, snap.requested_precision) == ("fp32", "fp16")
    eng.unload(job)
    snap = eng.snapshot()
    assert (snap.precision, snap.requested_precision) == ("fp32", "fp16")
    eng.reload(ReloadParams(precision="int8"), job)
    eng.unload(job)
    assert (eng.snapshot().precision, eng.snapshot().requested_precision) == ("int8", "int8")
