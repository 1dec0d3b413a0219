"""The tiny model trained to answer (``VIBEVOICE_MODEL_PATH=tiny`` and ``selftest``): a hand session
sees ``segment`` notifications, two speakers, times within the audio and progress that moves; the
build is deterministic; the answer holds for any audio length, context and precision.

(The random tiny model of ``tests/conftest.py``'s ``tiny_model`` fixture is unchanged: the tests of
loops, budgets and non-JSON output keep it.)"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vibevoice_rpc.model.tiny_answer import ANSWER_SEGMENTS

from .rpc_client import REPO, RpcProcess, server_env

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json")


@pytest.fixture(scope="module")
def answer_model() -> Path:
    """The cached answering model, the one ``VIBEVOICE_MODEL_PATH=tiny`` loads."""
    from vibevoice_rpc.model.tiny import tiny_model_dir

    return tiny_model_dir(answer=True)


def _digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in FILES}


def test_a_hand_session_on_the_tiny_model_streams_segments_speakers_and_progress(
    answer_model: Path, speech_clip: Path
) -> None:
    # As the README's hand session: VIBEVOICE_MODEL_PATH=tiny, the bundled clip, no other params.
    env = server_env(VIBEVOICE_MODEL_PATH="tiny")
    env.pop("VIBEVOICE_PRECISION", None)
    with RpcProcess(env=env) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip)})
        res = p.response(rid, timeout=240)["result"]
        notified = p.notifications("segment", rid)
        progress = p.notifications("progress", rid)
    meta = res["metadata"]
    assert meta["model"] == str(answer_model)
    assert len(notified) >= 1
    assert [n["index"] for n in notified] == list(range(len(notified)))
    assert res["segments"] == [n["segment"] for n in notified]  # the result is what was streamed
    segments = res["segments"]
    assert {s["speaker"] for s in segments} == {"Speaker_0", "Speaker_1"}
    assert meta["num_speakers"] == 2 and [s["speaker_id"] for s in segments] == [0, 1]
    assert all(0.0 <= s["start_time"] < s["end_time"] <= meta["duration"] for s in segments)
    assert [s["text"] for s in segments] == [a["Content"] for a in ANSWER_SEGMENTS]
    assert meta["warnings"] == [] and meta["truncated"] is False
    assert meta["generated_tokens"] < meta["max_new_tokens"]  # it stopped at its eos
    # Progress moves while transcribing: up to the last segment's end ÷ duration (values within
    # 0.1 s of each other are sent as one: the stage's last one always is).
    moving = [n["progress"] for n in progress if n["stage"] == "transcribing"]
    assert moving == sorted(moving) and moving[0] < moving[-1], moving
    assert moving[-1] == round(segments[-1]["end_time"] / meta["duration"], 4) > 0.9, moving


def test_the_answering_model_builds_to_the_same_bytes_twice(
    answer_model: Path, tmp_path: Path
) -> None:
    """A fresh build in another process with two torch threads (this suite runs one) gives the
    same files as the cached model the server loads (built in a process with one thread)."""
    code = "import sys, time\nfrom vibevoice_rpc.model.tiny import build_tiny_model\n"
    code += "t0 = time.process_time()\nbuild_tiny_model(sys.argv[1], answer=True)\n"
    code += "print(f'{time.process_time() - t0:.1f}')\n"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "again")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(
        f"answering tiny model built in {out.stdout.strip()} s of CPU time (torch imports included)"
    )
    assert _digests(tmp_path / "again") == _digests(answer_model), (
        f"a fresh build differs from the cached {answer_model}: not deterministic, or the cache is "
        "stale (bump _ANSWER_RECIPE_VERSION in vibevoice_rpc/model/tiny.py when the training changes)"
    )


def test_the_random_tiny_model_is_unchanged_and_separate(
    answer_model: Path, tmp_path: Path
) -> None:
    """The tests' random model keeps its folder name, cache key and behaviour."""
    import json

    from vibevoice_rpc.model import tiny

    assert answer_model.name.startswith("vibevoice-rpc-tiny-trained-answer-")
    stamp = json.loads((answer_model / "tiny_model.json").read_text())
    assert stamp["answer"] and stamp["tokenizer"] == "trained"
    random_dir = tiny.tiny_model_dir("trained")
    assert random_dir != answer_model
    assert random_dir.name == f"vibevoice-rpc-tiny-trained-{tiny._cache_key('trained', 0)}"
    assert "answer" not in json.loads((random_dir / "tiny_model.json").read_text())
    with pytest.raises(ValueError, match="trained tokenizer"):
        tiny.build_tiny_model(tmp_path, tokenizer="qwen", answer=True)


def test_a_model_that_did_not_learn_the_answer_is_not_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vibevoice_rpc.model import tiny

    monkeypatch.setattr(tiny, "teach_answer", lambda *a, **k: {"steps": 0.0, "loss": 9.9})
    with pytest.raises(RuntimeError, match="did not learn its answer"):
        tiny.build_tiny_model(tmp_path / "untaught", answer=True)
    assert not (tmp_path / "untaught" / "model.safetensors").exists()


def _load(folder: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, VibeVoiceAsrForConditionalGeneration

    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(
        str(folder), dtype=torch.float32, use_kernels=False
    )
    model.generation_config.max_length = None  # as the loader does
    return model.eval(), AutoProcessor.from_pretrained(str(folder))


def test_the_answer_holds_for_any_length_and_context_on_real_prompts(
    answer_model: Path, speech_clip: Path
) -> None:
    from vibevoice_rpc.audio.decode import load_audio
    from vibevoice_rpc.model.tiny_answer import answer_failures, prompt_ids

    model, processor = _load(answer_model)
    clip = load_audio(speech_clip, max_seconds=600, threads=1).samples
    context = "Trispr\nVibeVoice\nZoë, Jürgen and 王芳 discuss the budget for the next quarter."
    cases = [
        (clip, None),
        (clip, context),
        (clip, " ".join(["word"] * 120)),  # 359 tokens of context (the engine allows 448)
        (clip[:96_000], "\n".join(["Trispr", "VibeVoice", "Alice", "Bob"] * 10)),
        (clip[:2_400], None),  # 0.1 s: one audio token
        (np.concatenate([clip] * 16), "Hotwords: x"),  # 3 min, beyond the trained 27 s
    ]
    assert answer_failures(model, processor, cases) == []
    # The training prompts are the processor's own, token for token.
    text = processor.apply_transcription_request(
        audio=clip[:100_000], prompt=context, tokenize=False
    )
    real = processor.apply_transcription_request(audio=clip[:100_000], prompt=context)
    assert prompt_ids(processor, text[0], 100_000) == real["input_ids"][0].tolist()


def test_the_answer_through_the_engine_in_every_cpu_precision(
    answer_model: Path, speech_clip: Path
) -> None:
    """bf16, int8 and nf4 (bitsandbytes) give the same segments as fp32; short audio gets them
    clamped to its length."""
    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine
    from vibevoice_rpc.job import Job
    from vibevoice_rpc.messages import TranscribeParams

    engine = Engine(Config(model_path=str(answer_model), precision="fp32", offline=True))
    engine.warm_up()
    expected = [(a["Speaker"], a["Content"]) for a in ANSWER_SEGMENTS]
    for precision in ("bf16", "int8", "nf4"):
        params = TranscribeParams(audio_path=str(speech_clip), precision=precision)
        result = engine.transcribe(params, Job("t", "transcribe", params, None, None))
        assert result.metadata.model_precision == precision
        assert [(s.speaker_id, s.text) for s in result.segments] == expected, precision
        assert [(s.start_time, s.end_time) for s in result.segments] == [
            (a["Start"], a["End"]) for a in ANSWER_SEGMENTS
        ]


def test_short_audio_gets_the_segments_clamped_to_its_length(
    answer_model: Path, speech_clip: Path, tmp_path: Path
) -> None:
    import soundfile as sf

    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine
    from vibevoice_rpc.job import Job
    from vibevoice_rpc.messages import TranscribeParams

    short = tmp_path / "three_seconds.wav"
    sf.write(short, np.zeros(48_000, dtype=np.float32) + 0.01, 16_000)
    engine = Engine(Config(model_path=str(answer_model), precision="fp32", offline=True))
    engine.warm_up()
    params = TranscribeParams(audio_path=str(short), vad=False)  # a hum, not speech
    result = engine.transcribe(params, Job("t", "transcribe", params, None, None))
    assert [(s.speaker, s.start_time, s.end_time) for s in result.segments] == [
        ("Speaker_0", 0.0, 3.0),
        ("Speaker_1", 3.0, 3.0),
    ]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_answer_holds_for_an_hour_in_one_window(answer_model: Path) -> None:
    """60 min of audio is 27,000 audio tokens in one window (the training saw up to 200, with
    the attention mass of up to 200 times that simulated)."""
    from vibevoice_rpc.model.tiny_answer import answer_failures

    model, processor = _load(answer_model)
    cases = [(np.zeros(24_000 * 3600, dtype=np.float32), None)]
    assert answer_failures(model, processor, cases) == []
