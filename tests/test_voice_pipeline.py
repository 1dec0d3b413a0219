"""Voice activity in the real pipeline, on real speech made at test time: A and B talk, three
minutes of music, A and C talk (espeak-ng voices, sox tones and noise). The scripted runtime makes
the tiny model answer what the test says, and records the samples each window was given, so the
test knows what the model heard: never the music, and every segment's time comes back as the
file's, to the sample. A file without speech is answered without loading the model or asking a
server; ``vad: false`` feeds everything."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.audio.decode import load_audio
from vibevoice_rpc.config import Config, RemoteSettings
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.job import Job
from vibevoice_rpc.limits import SAMPLE_RATE
from vibevoice_rpc.messages import TranscribeParams, TranscribeResult
from vibevoice_rpc.transcription.pipeline import NO_SPEECH_WARNING
from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech

from . import recordings
from .fake_vllm import FakeVllm, Reply
from .recorder import Recorder
from .scripted import ScriptedRuntime, real_format_answer

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

S = SAMPLE_RATE
PAD = 1.0  # transcription/speech.py keeps this much audio on each side of speech


@dataclass
class Talk:
    path: Path
    samples: np.ndarray  # decoded, 24 kHz: what the engine decodes
    music: tuple[int, int]  # where the music lies, 24 kHz samples
    speech_seconds: float  # the speech parts' length (espeak's own silences included)


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Talk:
    d = tmp_path_factory.mktemp("talk")
    say = recordings.say
    before = [
        say(d / "a1.wav", "Good morning everyone. Let us look at the budget for next year.", "A"),
        say(d / "b1.wav", "Thank you. The numbers are better than we expected.", "B"),
    ]
    music = recordings.music(d / "music.wav", 180.0)
    after = [
        say(d / "a2.wav", "Then we can close the meeting now.", "A"),
        say(d / "c1.wav", "I agree, and the travel costs went down as well.", "C"),
    ]
    path = recordings.join(d / "talk.wav", *before, music, *after)
    m0 = sum(recordings.frames(p) for p in before)
    m1 = m0 + recordings.frames(music)
    spoken = sum(recordings.frames(p) for p in before + after) / recordings.RATE
    # 16 kHz → 24 kHz: sample i is at 1.5·i
    return Talk(path, load_audio(str(path)).samples, (m0 * 3 // 2, m1 * 3 // 2), spoken)


def run(engine: Engine, **params: Any) -> tuple[TranscribeResult, Recorder]:
    rec = Recorder()
    p = TranscribeParams(**params)
    job = Job("t", "transcribe", p, None, rec)
    rec.job = job
    return engine.transcribe(p, job), rec


def locate(block: np.ndarray, samples: np.ndarray) -> int:
    """Where ``block`` (copied verbatim) lies in ``samples``; -1 if nowhere."""
    k = int(np.argmax(np.abs(block)))
    for at in np.flatnonzero(samples == block[k]) - k:
        if 0 <= at <= len(samples) - len(block) and np.array_equal(
            samples[at : at + len(block)], block
        ):
            return int(at)
    return -1


def test_the_music_never_reaches_the_model_and_every_time_maps_back_to_the_file(
    engine: Engine, talk: Talk, script: Callable[..., None]
) -> None:
    inputs: list[Any] = []

    def answer(d: float) -> str:
        return real_format_answer(
            [
                {"Start": 0.5, "End": 3.0, "Speaker": 0, "Content": "Good morning everyone."},
                {"Start": 3.0, "End": 6.2, "Speaker": 1, "Content": "Thank you."},
                {"Start": round(d - 5.4, 2), "End": round(d - 3.3, 2), "Speaker": 0,
                 "Content": "Then we can close."},
                {"Start": round(d - 3.3, 2), "End": round(d - 0.6, 2), "Speaker": 2,
                 "Content": "I agree."},
            ]
        )  # fmt: skip

    script(answer, inputs=inputs)
    result, rec = run(engine, audio_path=str(talk.path))
    (window,) = inputs
    heard = window.samples
    m0, m1 = talk.music
    # What the model heard, block by block (100 ms), found in the file: speech and the pads
    # next to it, never the music beyond the pad.
    block = S // 10
    places = []
    edges: list[int] = []
    for lo in range(0, len(heard) - block + 1, block):
        piece = heard[lo : lo + block]
        if not piece.any():
            continue  # the pause standing for the music
        at = locate(piece, talk.samples)
        if at < 0:  # a block across a pause's edge: the part of it that is not the pause
            sounding = np.flatnonzero(piece)
            edge = locate(piece[sounding[0] : sounding[-1] + 1], talk.samples)
            assert edge >= 0, f"heard audio at {lo / S:.1f} s is not from the file"
            edges.append(edge)
            continue
        places.append((lo, at))
    assert len(edges) <= 2  # the end of the part before the music, the start of the one after
    starts = [at for _, at in places] + edges
    music_heard = [at for at in starts if m0 + (PAD + 0.1) * S < at < m1 - (PAD + 0.2) * S]
    assert music_heard == [], f"{len(music_heard) / 10:.1f} s of the music reached the model"
    assert len(heard) < (talk.speech_seconds + 2 * PAD + 2.0) * S  # ≈ 16 s of 192 s
    # The segments' times: the model's time t plus where that part of its input lies in the file.
    got = [(s.speaker, s.start_time, s.end_time, s.text) for s in result.segments]
    d = round(window.duration, 2)
    expected = []
    for t0, t1, who, text in [
        (0.5, 3.0, 0, "Good morning everyone."),
        (3.0, 6.2, 1, "Thank you."),
        (round(d - 5.4, 2), round(d - 3.3, 2), 0, "Then we can close."),
        (round(d - 3.3, 2), round(d - 0.6, 2), 2, "I agree."),
    ]:
        j = round(t0 * S)
        lo = j - j % block
        offset = dict(places)[lo] - lo  # file sample − input sample, in this block's piece
        expected.append(
            (f"Speaker_{who}", round(t0 + offset / S, 3), round(t1 + offset / S, 3), text)
        )
    assert got == expected
    meta = result.metadata
    assert meta.vad and meta.windows == 1 and meta.num_speakers == 3
    assert meta.duration == round(len(talk.samples) / S, 3)
    assert meta.model_input_seconds == round(len(heard) / S, 3)
    (skipped,) = meta.skipped
    assert expected[2][1] >= skipped.end  # the talk after the music is placed after it
    assert m0 / S - 0.1 <= skipped.start <= m0 / S + PAD + 0.1
    assert m1 / S - PAD - 0.1 <= skipped.end <= m1 / S + 0.1
    assert 0.6 * talk.speech_seconds < meta.speech_seconds <= talk.speech_seconds + 0.1
    assert not any("voice activity" in w for w in meta.warnings), meta.warnings
    messages = [p.message for m, p in rec.events if m == "progress" and p.stage == "loading_audio"]
    assert f"{meta.speech_seconds:.1f} s of speech in {meta.duration:.1f} s of audio" in messages


def test_vad_false_feeds_everything(engine: Engine, talk: Talk, script: Callable) -> None:
    inputs: list[Any] = []
    script(real_format_answer([{"Start": 0.5, "End": 3.0, "Speaker": 0, "Content": "Hi."}]),
           inputs=inputs)  # fmt: skip
    result, _ = run(engine, audio_path=str(talk.path), vad=False)
    (window,) = inputs
    assert np.array_equal(window.samples, talk.samples)
    meta = result.metadata
    assert (meta.vad, meta.speech_seconds, meta.skipped) == (False, None, [])
    assert meta.model_input_seconds == meta.duration
    assert [(s.start_time, s.end_time) for s in result.segments] == [(0.5, 3.0)]


def test_the_configuration_turns_it_off_and_a_request_turns_it_back_on(
    tiny_model: Path, scripted_runtime: ScriptedRuntime, talk: Talk, script: Callable
) -> None:
    config = Config.from_env({"VIBEVOICE_MODEL_PATH": str(tiny_model), "VIBEVOICE_VAD": "0"})
    assert config.vad is False
    config.precision, config.offline = "fp32", True
    engine = Engine(config, runtime=scripted_runtime)
    inputs: list[Any] = []
    script(real_format_answer([{"Start": 0.5, "End": 3.0, "Speaker": 0, "Content": "Hi."}]),
           inputs=inputs)  # fmt: skip
    assert not run(engine, audio_path=str(talk.path))[0].metadata.vad
    assert run(engine, audio_path=str(talk.path), vad=True)[0].metadata.vad
    assert [len(w.samples) for w in inputs][0] == len(talk.samples) > len(inputs[1].samples)
    engine.unload(Job(None, "unload_model", None, None, None))


class CountingRuntime(ScriptedRuntime):
    """Counts loads and the windows the model was asked to run."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.windows: list[Any] = []

    def load(self, precision: str, **kwargs: Any) -> Any:
        self.loads += 1
        return super().load(precision, **kwargs)


@pytest.fixture(scope="module")
def no_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty seconds of music, then ten of silence: no speech at all."""
    d = tmp_path_factory.mktemp("nospeech")
    return recordings.join(
        d / "no_speech.wav",
        recordings.music(d / "m.wav", 20.0),
        recordings.silence(d / "s.wav", 10.0),
    )


def test_a_file_without_speech_never_loads_or_runs_the_model(
    tiny_model: Path, no_speech: Path
) -> None:
    runtime = CountingRuntime()
    runtime.set(real_format_answer(), inputs=runtime.windows)
    engine = Engine(
        Config(model_path=str(tiny_model), precision="fp32", offline=True), runtime=runtime
    )
    result, rec = run(engine, audio_path=str(no_speech))
    assert (result.status, result.segments) == ("success", [])
    assert (runtime.loads, runtime.windows, engine.local.loaded) == (0, [], None)
    assert "loading_model" not in rec.stages and "encoding" not in rec.stages
    meta = result.metadata
    assert NO_SPEECH_WARNING in meta.warnings
    assert (meta.vad, meta.speech_seconds, meta.windows, meta.num_speakers) == (True, 0.0, 0, 0)
    assert meta.model_input_seconds == 0.0 and meta.duration == 30.0
    assert [(s.start, s.end) for s in meta.skipped] == [(0.0, 30.0)]
    assert (meta.backend, meta.model_precision, meta.language) == ("local", "fp32", "unknown")
    # The count is real: the same file with vad: false loads and runs the model.
    result, rec = run(engine, audio_path=str(no_speech), vad=False, max_new_tokens=4)
    assert runtime.loads == 1 and len(runtime.windows) == 1 and "loading_model" in rec.stages
    engine.unload(Job(None, "unload_model", None, None, None))


def test_a_file_without_speech_never_asks_the_server(no_speech: Path) -> None:
    with FakeVllm(replies=[Reply(answer="assistant\n[]")]) as fake:
        engine = Engine(Config(backend="remote", remote=RemoteSettings(url=fake.url), offline=True))
        result, _ = run(engine, audio_path=str(no_speech))
        assert (result.status, result.segments, fake.chat_calls) == ("success", [], 0)
        meta = result.metadata
        assert (meta.backend, meta.server, meta.windows) == ("remote", fake.url, 0)
        assert NO_SPEECH_WARNING in meta.warnings


def test_the_remote_backend_hears_what_the_local_model_hears(talk: Talk) -> None:
    """The VAD runs in this process's pipeline, before any backend: the server gets the speech."""
    answer = "assistant\n" + real_format_answer(
        [{"Start": 1.0, "End": 2.0, "Speaker": 0, "Content": "Hi."}]
    )[len("<|im_start|>assistant\n") :].replace("<|im_end|>", "")
    with FakeVllm(replies=[Reply(answer=answer)]) as fake:
        engine = Engine(Config(backend="remote", remote=RemoteSettings(url=fake.url), offline=True))
        result, _ = run(engine, audio_path=str(talk.path))
        (body,) = fake.requests
    url = body["messages"][1]["content"][0]["audio_url"]["url"]
    sent, rate = sf.read(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    meta = result.metadata
    assert rate == S and meta.vad and len(meta.skipped) == 1
    assert len(sent) / S == pytest.approx(meta.model_input_seconds, abs=1e-3)
    assert meta.model_input_seconds < 20.0 < meta.duration
    assert [(s.start_time, s.end_time) for s in result.segments] == [(1.0, 2.0)]


def test_window_splits_fall_in_pauses_the_vad_found(
    tiny_model: Path, scripted_runtime: ScriptedRuntime, tmp_path: Path, script: Callable
) -> None:
    """Sentences 0.7 s apart over a quiet noise floor, and a 150 ms notch of digital silence
    inside a sentence where the first window's split is searched: the quietest frame (the energy
    heuristic's pick, as with ``vad: false``) lies inside speech; with the VAD the window ends in
    a pause between sentences."""
    lines = [
        "We start with the figures of the first quarter of the year.",
        "Sales went up in every region, most of all in the north.",
        "The costs of travel and of the new office went down again.",
        "So the budget for next year can grow a little.",
        "We will hire two people for the support team in spring.",
        "The training plan is ready and the dates are fixed.",
        "Marketing asks for a larger share of the budget.",
        "We decide on that at the next meeting in March.",
        "Are there any other questions about the figures?",
        "Then thank you all, and see you next week.",
        "One more thing: the printer on the second floor is broken.",
        "Someone from the service company comes on Tuesday morning.",
        "Until then, please use the printer next to the kitchen.",
    ]
    gap = np.zeros(int(0.7 * 16000), np.float32)
    speech = [sf.read(str(recordings.say(tmp_path / f"{i}.wav", t, "AB"[i % 2])),
                      dtype="float32")[0] for i, t in enumerate(lines)]  # fmt: skip
    audio = np.concatenate([x for p in speech for x in (p, gap)])
    audio += (0.01 * np.random.default_rng(5).standard_normal(len(audio))).astype(np.float32)
    max_window = 40.0  # overlap 10 s: the first split is searched in 22.5-30 s of the input
    assert len(audio) / 16000 > max_window + 5
    lo, hi = int(23.0 * 16000), int(29.5 * 16000)
    loud = np.abs(audio) > 0.1
    inside = next(
        w
        for w in range(lo, hi, 160)
        if loud[w - 4000 : w - 1200].any() and loud[w + 1200 : w + 4000].any()
    )  # a moment with speech within 175 ms before and after it
    audio[inside - 1200 : inside + 1200] = 0.0
    path = tmp_path / "sentences.wav"
    sf.write(str(path), audio, 16000, subtype="FLOAT")
    decoded = load_audio(str(path)).samples
    pauses = plan_speech(decoded, SpeechSettings()).input_pauses()
    engine = Engine(
        Config(model_path=str(tiny_model), precision="fp32", offline=True,
               max_window_seconds=max_window),
        runtime=scripted_runtime,
    )  # fmt: skip
    splits = {}
    for vad in (True, False):
        inputs: list[Any] = []
        script(lambda d: real_format_answer(
            [{"Start": 0.5, "End": round(d - 0.5, 2), "Speaker": 0, "Content": "Words."}]),
            inputs=inputs)  # fmt: skip
        result = run(engine, audio_path=str(path), vad=vad, max_new_tokens=40)[0]
        assert result.metadata.windows == len(inputs) == 2
        assert result.metadata.model_input_seconds == result.metadata.duration  # nothing left out
        splits[vad] = round((inputs[0].start + inputs[0].duration) * S)
    notch = (inside * 3 // 2 - 1800, inside * 3 // 2 + 1800)
    assert notch[0] <= splits[False] <= notch[1]  # the energy heuristic: inside the sentence
    split = splits[True]
    assert any(a + S // 20 <= split <= b - S // 20 for a, b in pauses), (split, pauses)
    assert np.abs(decoded[split - S // 20 : split + S // 20]).max() < 0.1  # between sentences
    engine.unload(Job(None, "unload_model", None, None, None))
