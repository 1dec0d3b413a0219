"""Speakers known by their voice across windows, on real synthesized speech (issue 21).

A and B talk, three minutes of music, then A and C talk and B comes back (tests/speech.py:
espeak-ng voices, sox music). Windows are forced to 20 s, so the model's input (the speech, the
music collapsed to a pause by the voice activity detector) is cut into several; B is silent in the
stretch the window in which B returns shares with the one before. The scripted runtime makes the
tiny model say who talks when in each window the pipeline cut (local ids from 0, as the real model
numbers them), so every global id the result carries was decided by the linking: B, A and C keep
theirs with the voices; by timing alone B comes back under a new one. The remote backend runs the
same pipeline and links the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vibevoice_rpc.audio.decode import load_audio
from vibevoice_rpc.config import Config, RemoteSettings
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.job import Job
from vibevoice_rpc.messages import TranscribeParams, TranscribeResult
from vibevoice_rpc.transcription.pipeline import transcribe_audio
from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech
from vibevoice_rpc.transcription.stream import RunnerInfo

from . import speech
from .fake_vllm import FakeVllm, Reply
from .recorder import Recorder
from .scripted import ScriptedRuntime

# espeak-ng and sox are test requirements like pytest (README "Set up"; .ci/run installs them): no
# skip without them, so a CI machine that lacks them fails instead of passing these untested.
pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

WINDOW = 20.0  # seconds: the model's input (~63 s) is cut into 5 windows
TRUTH = [
    (0.0, 5.0, "A"),
    (5.0, 11.0, "B"),
    (11.0, 16.0, "A"),
    (16.0, 22.0, "B"),
    (22.0, 202.0, "MUSIC"),
    (202.0, 208.0, "A"),
    (208.0, 214.0, "C"),
    (214.0, 219.0, "A"),
    (219.0, 225.0, "C"),
    (225.0, 231.0, "B"),
    (231.0, 236.0, "A"),
]
IDS = {"A": 0, "B": 1, "C": 2}  # who is who: the first window numbers A then B; C comes third


@dataclass
class Meeting:
    path: Path
    samples: np.ndarray  # decoded, 24 kHz: what the engine decodes


@pytest.fixture(scope="module")
def meeting(tmp_path_factory: pytest.TempPathFactory) -> Meeting:
    path = speech.write(
        tmp_path_factory.mktemp("meeting") / "meeting.wav", speech.conversation(TRUTH)
    )
    return Meeting(path, load_audio(str(path)).samples)


@pytest.fixture(scope="module")
def engine(tiny_model: Path, scripted_runtime: ScriptedRuntime) -> Iterator[Engine]:
    config = Config(
        model_path=str(tiny_model), precision="fp32", offline=True, max_window_seconds=WINDOW
    )
    eng = Engine(config, runtime=scripted_runtime)
    yield eng
    eng.unload(Job(None, "unload_model", None, None, None))


def _job(rec: Recorder, path: Path) -> tuple[TranscribeParams, Job]:
    params = TranscribeParams(audio_path=str(path))
    job = Job("t", "transcribe", params, None, rec)
    rec.job = job
    return params, job


def _speakers(result: TranscribeResult) -> list[tuple[str, int | None]]:
    """(who really talks, the global id the result gave them), per speech segment."""
    return [(s.text[0], s.speaker_id) for s in result.segments if not s.non_speech]


def _case_holds(meeting: Meeting, inputs: list[Any]) -> bool:
    """B talks in some window k (not in its first seconds shared with window k-1) and in a
    window before k, and not in window k's shared stretch: the case timing cannot link."""
    plan = plan_speech(meeting.samples, SpeechSettings())
    spans = [(run.start, run.start + run.duration) for run in inputs]
    for k in range(1, len(spans)):
        shared = (spans[k][0], spans[k - 1][1])
        in_shared = speech.window_answer(TRUTH, plan, *shared)
        here = speech.window_answer(TRUTH, plan, *spans[k])
        before = [seg for lo, hi in spans[:k] for seg in speech.window_answer(TRUTH, plan, lo, hi)]
        if (
            any(s["Content"][0] == "B" for s in here)
            and any(s["Content"][0] == "B" for s in before)
            and not any(s["Content"][0] == "B" for s in in_shared)
        ):
            return True
    return False


def _times_are_the_files(result: TranscribeResult) -> None:
    """Every speech segment lies in its speaker's stretch of the file (not of the model's input,
    which lacks the three minutes of music)."""
    for s in result.segments:
        if s.non_speech:
            continue
        who = s.text[0]
        assert any(
            who == w and lo - 0.02 <= s.start_time < s.end_time <= hi + 0.02 for lo, hi, w in TRUTH
        ), (s, "not inside a stretch of", who)


def test_speaker_voices_learn_and_recognise_voices() -> None:
    from vibevoice_rpc.transcription.voices import MIN_SECONDS, SpeakerVoices, _spans
    from vibevoice_rpc.transcription.windowing import TimedSpeech

    truth = [(0.0, 8.0, "A"), (8.0, 16.0, "B"), (16.0, 22.0, "C"), (22.0, 28.0, "A")]
    voices = SpeakerVoices(speech.conversation(truth))
    # window 1: A and B as global 0 and 1; another's talk is cut out of a speaker's spans
    first = [TimedSpeech(0, 0.0, 8.0), TimedSpeech(1, 8.0, 16.0), TimedSpeech(0, 15.0, 16.0)]
    assert _spans(0, first) == [(0.1, 7.9)]  # 15-16 is all overlap
    assert _spans(1, first) == [(8.1, 15.0)]
    assert voices.similarities(first) == {}  # nothing learnt yet
    voices.learn(first)
    # window 2: local 0 is C (new), local 1 is A again; local 2 talks too little to tell
    later = [TimedSpeech(0, 16.0, 22.0), TimedSpeech(1, 22.0, 28.0), TimedSpeech(2, 28.0, 28.5)]
    sims = voices.similarities(later)
    assert sorted(sims) == [0, 1] and 0.5 < MIN_SECONDS
    assert sims[1][0] > 0.91 > max(sims[0].values()) and sims[1][0] > sims[1][1]
    assert voices.similarities(later, only=1).keys() == {1}
    assert voices.notes == []


def test_speakers_keep_their_ids_across_windows_by_their_voices(
    engine: Engine, meeting: Meeting, scripted_runtime: ScriptedRuntime, script: Callable
) -> None:
    answers = speech.Answers(TRUTH, meeting.samples)
    script(answers, inputs=answers.inputs)
    rec = Recorder()
    params, job = _job(rec, meeting.path)
    result = engine.transcribe(params, job)
    assert len(answers.inputs) >= 4 and result.metadata.windows == len(answers.inputs)
    assert _case_holds(meeting, answers.inputs)
    assert [(who, IDS[who]) for who, _ in _speakers(result)] == _speakers(result)
    assert {who for who, _ in _speakers(result)} == {"A", "B", "C"}
    assert result.metadata.num_speakers == 3
    _times_are_the_files(result)
    assert [p.segment for p in rec.segments] == result.segments  # streamed once, in order
    assert not [w for w in result.metadata.warnings if "voice linking unavailable" in w]


def _direct(
    engine: Engine,
    meeting: Meeting,
    scripted_runtime: ScriptedRuntime,
    script: Callable,
    voice_encoder: Any,
) -> TranscribeResult:
    """The pipeline as the local backend runs it, with the speaker encoder given (None: timing
    only): the loaded scripted model, the VAD's plan, windows of WINDOW seconds."""
    answers = speech.Answers(TRUTH, meeting.samples)
    script(answers, inputs=answers.inputs)
    engine.preload(Job(None, "preload", None, None, None))
    loaded = engine.local.loaded
    assert loaded is not None
    info = RunnerInfo(
        precision=loaded.precision,
        device=loaded.device,
        model=loaded.source,
        max_window_seconds=WINDOW,
    )
    runner = scripted_runtime.runner(loaded, info)
    audio = load_audio(str(meeting.path))
    params, job = _job(Recorder(), meeting.path)
    plan = plan_speech(audio.samples, SpeechSettings())
    result = transcribe_audio(
        runner,
        audio,
        params,
        job,
        started=time.monotonic(),
        speech=plan,
        voice_encoder=voice_encoder,
    )
    assert _case_holds(meeting, answers.inputs)
    return result


def test_by_timing_alone_the_returning_speakers_get_new_ids(
    engine: Engine, meeting: Meeting, scripted_runtime: ScriptedRuntime, script: Callable
) -> None:
    # What linking did before the voices (and does without them): B, silent where the windows
    # meet, comes back as a new speaker, and so does A in the last window; the result says so.
    result = _direct(engine, meeting, scripted_runtime, script, None)
    late = {glob for who, glob in _speakers(result) if who in "AB"} - {IDS["A"], IDS["B"]}
    assert late, _speakers(result)
    notes = [w for w in result.metadata.warnings if "speaker link uncertain" in w]
    assert all(any(f"Speaker_{glob}," in n for n in notes) for glob in late), notes
    # the notes quote the file's time: A's last turn starts at 231 s (in the model's input, 54 s)
    assert any("first heard at 231.0 s" in n for n in notes), notes
    _times_are_the_files(result)


def test_an_encoder_that_cannot_load_leaves_timing_and_one_warning(
    engine: Engine, meeting: Meeting, scripted_runtime: ScriptedRuntime, script: Callable
) -> None:
    calls: list[int] = []

    def broken() -> Any:
        calls.append(1)
        raise OSError("voice_encoder.safetensors: No such file or directory")

    timing = _direct(engine, meeting, scripted_runtime, script, None)
    result = _direct(engine, meeting, scripted_runtime, script, broken)
    assert result.status == "success" and calls == [1]  # tried once per transcription
    unavailable = [w for w in result.metadata.warnings if "voice linking unavailable" in w]
    assert unavailable == [
        "voice linking unavailable (OSError): speakers are linked across windows by timing only"
    ]
    # as by timing alone, segment for segment, with the same notes besides the one above
    assert result.segments == timing.segments
    assert [w for w in result.metadata.warnings if w not in unavailable] == timing.metadata.warnings


def test_the_remote_backend_links_speakers_by_voice_too(meeting: Meeting) -> None:
    """The linking runs in this process's pipeline, whatever does the model's work: a server
    answering each window as the model would gets B, A and C back under their ids."""
    plan, windows = speech.planned_windows(meeting.samples, WINDOW)
    replies = [
        Reply(
            answer="assistant\n"
            + json.dumps(speech.window_answer(TRUTH, plan, w.start, w.end), separators=(",", ":"))
        )
        for w in windows
    ]
    with FakeVllm(replies=replies) as fake:
        config = Config(
            backend="remote",
            remote=RemoteSettings(url=fake.url),
            offline=True,
            max_window_seconds=WINDOW,
        )
        engine = Engine(config)
        rec = Recorder()
        params, job = _job(rec, meeting.path)
        result = engine.transcribe(params, job)
        assert fake.chat_calls == len(windows) >= 4  # the windows the answers were made for
    assert result.metadata.backend == "remote"
    assert [(who, IDS[who]) for who, _ in _speakers(result)] == _speakers(result)
    _times_are_the_files(result)
