"""The voice wing: Silero VAD in numpy gives what Silero's own torch model gives, on real speech
made at test time (espeak-ng) and on music-like tones, noise and silence (sox); its
post-processing is Silero's; the shipped weights are the ones Silero runs; and the plan of what
the model hears maps every time back to the file's, to the sample.

silero-vad (the dev extra) and torch are needed in the test process for the comparisons; the
product reads only ``vibevoice_rpc/data/silero_vad_16k_v6_2.safetensors``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.limits import SAMPLE_RATE
from vibevoice_rpc.transcription.speech import Piece, SpeechPlan, SpeechSettings, plan_speech
from vibevoice_rpc.transcription.windowing import quiet_split_points
from vibevoice_rpc.voice.activity import VadParams, detect_speech, speech_stretches
from vibevoice_rpc.voice.vad import SHAPES, VadUnavailable, load_vad, speech_probabilities

from . import recordings
from .rpc_client import REPO

pytestmark = pytest.mark.timeout(240)

# Per-chunk probability, numpy float32 vs torch float32. Measured here: up to 8.7e-5 on espeak-ng
# speech, where probabilities are near 0.5; torch's own float32 result is up to 5.5e-5 from a
# float64 evaluation of the same network (this module's float32: 1.2e-5).
TOLERANCE = 2.5e-4


def _silero():  # noqa: ANN202 - silero_vad's module
    try:
        import silero_vad
    except ImportError:  # pragma: no cover - the dev extra is missing
        pytest.fail("silero-vad is not installed: pip install the dev extra (requirements/*.txt)")
    return silero_vad


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """16 kHz float32 clips: speech by two voices, music-like tones, pink noise, silence, and all
    of them one after the other."""
    d = tmp_path_factory.mktemp("vad")
    parts = {
        "speech": recordings.join(
            d / "speech.wav",
            recordings.say(d / "a.wav", "Good morning. The budget is ready for review.", "A"),
            recordings.say(d / "b.wav", "Thank you, I will read it before Thursday.", "B"),
        ),
        "music": recordings.music(d / "music.wav", 12.0),
        "silence": recordings.silence(d / "silence.wav", 3.0),
    }
    noise = d / "noise.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(noise), "synth", "8",
         "pinknoise", "vol", "0.3"],
        check=True,
        timeout=60,
    )  # fmt: skip
    parts["noise"] = noise
    parts["all"] = recordings.join(
        d / "all.wav", parts["speech"], parts["music"], parts["silence"], noise, parts["speech"]
    )
    return {name: sf.read(str(path), dtype="float32")[0] for name, path in parts.items()}


def _torch_probabilities(samples: np.ndarray) -> np.ndarray:
    import torch

    model = _silero().load_silero_vad()  # the TorchScript model, as Silero documents it
    with torch.no_grad():
        return model.audio_forward(torch.from_numpy(samples)[None], 16000).numpy()[0]


@pytest.mark.parametrize("name", ["speech", "music", "noise", "silence", "all"])
def test_numpy_vad_gives_silero_torch_models_probabilities(
    clips: dict[str, np.ndarray], name: str
) -> None:
    samples = clips[name]
    ours = speech_probabilities(samples)
    theirs = _torch_probabilities(samples)
    assert ours.shape == theirs.shape == (-(-len(samples) // 512),)
    worst = float(np.abs(ours - theirs).max())
    print(f"{name}: {len(ours)} chunks, largest difference {worst:.2e}")
    assert worst <= TOLERANCE
    assert speech_stretches(ours, len(samples)) == speech_stretches(theirs, len(samples))
    if name == "speech":
        assert (ours > 0.5).mean() > 0.5  # the clips say what the test means: speech is speech
    elif name != "all":
        assert ours.max() < 0.5  # and tones, noise and silence are not


def test_probabilities_do_not_depend_on_how_the_audio_is_fed(clips: dict) -> None:
    samples = clips["all"]
    whole = speech_probabilities(samples)
    stream = load_vad().stream()
    pieces, lo = [], 0
    for size in [1, 511, 513, 64, 40_000, 7, 100_000]:
        pieces.append(stream.feed(samples[lo : lo + size]))
        lo += size
    pieces += [stream.feed(samples[lo:]), stream.finish()]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-6)


def test_speech_stretches_are_silero_post_processing(clips: dict) -> None:
    from_probs = _silero().get_speech_timestamps_from_probs
    probs = speech_probabilities(clips["all"])
    length = len(clips["all"])
    theirs = [
        (d["start"], d["end"]) for d in from_probs(probs.tolist(), audio_length_samples=length)
    ]
    assert speech_stretches(probs, length) == theirs and len(theirs) >= 2
    rng = np.random.default_rng(3)
    for _ in range(300):  # other parameters, on probabilities of every shape
        q = (rng.random(int(rng.integers(1, 400))) ** rng.uniform(0.2, 4)).astype(np.float32)
        n = len(q) * 512 - int(rng.integers(0, 512))
        params = VadParams(
            threshold=float(rng.uniform(0.2, 0.8)),
            min_speech_ms=int(rng.integers(0, 500)),
            min_silence_ms=int(rng.integers(0, 500)),
            pad_ms=int(rng.integers(0, 300)),
        )
        expected = from_probs(
            q.tolist(),
            threshold=params.threshold,
            min_speech_duration_ms=params.min_speech_ms,
            min_silence_duration_ms=params.min_silence_ms,
            speech_pad_ms=params.pad_ms,
            audio_length_samples=n,
        )
        assert speech_stretches(q, n, params) == [(d["start"], d["end"]) for d in expected]


def test_the_shipped_weights_are_the_model_silero_runs() -> None:
    """scripts/silero_weights.py --check: the safetensors file holds the jit's tensors, bit for
    bit (a new silero-vad model fails here: run the script again)."""
    _silero()
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "silero_weights.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "equals" in out.stdout


def test_missing_or_foreign_weights_are_a_clear_error(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    with pytest.raises(VadUnavailable, match="unreadable"):
        load_vad(tmp_path / "absent.safetensors")
    wrong = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    wrong["conv1.weight"] = np.zeros((3, 3, 3), np.float32)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(VadUnavailable, match=r"conv1\.weight should be \(128, 129, 3\)"):
        load_vad(tmp_path / "wrong.safetensors")


def test_the_voice_wing_runs_without_torch(tmp_path: Path) -> None:
    """The remote backend and the CPU bundle run the VAD: numpy, soxr and safetensors only."""
    code = (
        "import sys, numpy as np\n"
        "from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech\n"
        "x = np.zeros(24000 * 3, np.float32)\n"
        "plan = plan_speech(x, SpeechSettings())\n"
        "assert plan.no_speech, plan\n"
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- from the decoded audio (24 kHz) -------------------------------------------------------------


def _at_24k(samples16: np.ndarray) -> np.ndarray:
    import soxr

    return soxr.resample(samples16, 16000, SAMPLE_RATE).astype(np.float32)


def test_detect_speech_finds_the_speech_in_the_decoded_audios_samples(clips: dict) -> None:
    speech, gap = clips["speech"], np.zeros(16000 * 20, np.float32)
    audio = _at_24k(np.concatenate([speech, gap, speech]))
    found = detect_speech(audio, SAMPLE_RATE)
    first, second = 0, (len(speech) + len(gap)) * 3 // 2  # where each copy starts at 24 kHz
    talk, slack = len(speech) * 3 // 2, SAMPLE_RATE // 20  # Silero pads speech by 30 ms
    assert found.stretches[0][0] < first + SAMPLE_RATE
    assert all(
        start - slack <= a and b <= start + talk + slack
        for a, b in found.stretches
        for start in [first if a < second - slack else second]
    ), found.stretches
    assert found.speech_samples > talk  # both copies, most of each
    assert found.gain_db == 0.0


def test_a_quiet_recording_is_raised_before_the_vad_hears_it(clips: dict) -> None:
    """Speech 60 dB down (−81 dBFS) is mostly missed by Silero as it is; the model would hear it
    (it normalises its input), so the VAD's input is raised first."""
    audio = _at_24k(clips["speech"]) * np.float32(10 ** (-60 / 20))
    as_is = speech_probabilities(clips["speech"] * np.float32(10 ** (-60 / 20)))
    assert (as_is > 0.5).mean() < 0.2
    found = detect_speech(audio, SAMPLE_RATE)
    assert found.gain_db > 50
    assert found.speech_samples > 0.6 * len(audio)


# --- the plan: what the model hears, and its times back to the file's -----------------------------

S = SAMPLE_RATE


def _plan(speech: list[tuple[float, float]], seconds: float, **settings: float) -> SpeechPlan:
    """The plan for a file of ``seconds`` whose VAD found ``speech`` (seconds), without running
    the network: :func:`plan_speech` with its detector stubbed by the stretches."""
    import vibevoice_rpc.voice.activity as activity

    stretches = tuple((round(a * S), round(b * S)) for a, b in speech)
    found = activity.SpeechFound(stretches, S, round(seconds * S), 0, 0.0)
    original = activity.detect_speech
    activity.detect_speech = lambda *a, **k: found  # type: ignore[assignment]
    try:
        return plan_speech(np.zeros(round(seconds * S), np.float32), SpeechSettings(**settings))
    finally:
        activity.detect_speech = original  # type: ignore[assignment]


def test_a_long_gap_is_heard_as_a_one_second_pause_between_padded_pieces() -> None:
    plan = _plan([(2.0, 10.0), (200.0, 215.0)], 220.0)
    assert plan.pieces == (Piece(0, 11 * S, 0), Piece(199 * S, 220 * S, 12 * S))
    assert plan.skipped() == [(11 * S, 199 * S)]
    assert plan.input_length == 33 * S and plan.speech_seconds == 23.0
    samples = np.arange(220 * S, dtype=np.float32)
    heard = plan.model_samples(samples)
    assert np.array_equal(heard[: 11 * S], samples[: 11 * S])
    assert not heard[11 * S : 12 * S].any()  # the pause: digital silence
    assert np.array_equal(heard[12 * S :], samples[199 * S :])


def test_gaps_shorter_than_the_threshold_and_short_edges_are_heard_as_they_are() -> None:
    plan = _plan([(5.0, 10.0), (17.9, 30.0), (37.95, 40.0)], 45.0)  # gaps 7.9 s, 7.95 s
    assert plan.pieces == (Piece(0, 45 * S, 0),)
    assert plan.skipped() == [] and plan.model_samples(np.ones(45 * S)).shape == (45 * S,)
    assert plan.to_file(12.5, 13.0) == (12.5, 13.0)
    plan = _plan([(5.0, 10.0), (18.0, 30.0)], 45.0)  # gaps of 8 s and 15 s: left out
    assert plan.pieces == (Piece(0, 11 * S, 0), Piece(17 * S, 31 * S, 12 * S))
    assert plan.skipped() == [(11 * S, 17 * S), (31 * S, 45 * S)]


def test_long_silence_at_the_start_and_end_is_left_out_without_a_pause() -> None:
    plan = _plan([(30.0, 40.0)], 100.0)
    assert plan.pieces == (Piece(29 * S, 41 * S, 0),)
    assert plan.skipped() == [(0, 29 * S), (41 * S, 100 * S)]
    assert plan.to_file(0.0, 12.0) == (29.0, 41.0)


def test_a_longer_threshold_keeps_the_gap() -> None:
    plan = _plan([(2.0, 10.0), (30.0, 40.0)], 40.0, min_silence=30.0)
    assert plan.pieces == (Piece(0, 40 * S, 0),)


def test_model_times_map_back_to_the_file_exactly() -> None:
    plan = _plan([(1.0, 9.0), (187.0, 200.0)], 200.0)  # pieces [0, 10) at 0, [186, 200) at 11
    offset = (186 - 11) * S
    for t in (11.0, 11.37, 12.5, 24.99, 25.0):
        start, end = plan.to_file(t, t)
        assert start == end == t + offset / S
    assert plan.to_file(3.21, 9.99) == (3.21, 9.99)  # the first piece: as it is
    # A segment across the pause keeps both ends in their pieces.
    assert plan.to_file(8.0, 13.0) == (8.0, 13.0 + offset / S)
    # A start inside the pause belongs to the piece after it, an end to the piece before.
    assert plan.to_file(10.4, 14.0) == (186.0, 14.0 + offset / S)
    assert plan.to_file(6.0, 10.6) == (6.0, 10.0)
    # A segment wholly inside the pause ("[Music]") stands for the whole gap it replaced.
    assert plan.to_file(10.1, 10.9) == (10.0, 186.0)


def test_the_input_pauses_are_where_the_vad_heard_no_speech() -> None:
    plan = _plan([(1.0, 4.0), (4.5, 9.0), (187.0, 200.0)], 200.0)
    assert plan.input_pauses() == [(0, 1 * S), (4 * S, round(4.5 * S)), (9 * S, 12 * S)]
    assert SpeechPlan.whole(10 * S).input_pauses() == []


def test_window_splits_fall_in_the_longest_vad_pause_else_the_quietest_frame() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(60 * S).astype(np.float32)
    x[40 * S : 40 * S + S // 10] = 0.0  # the quietest moment, but inside speech
    pauses = [(36 * S, 37 * S), (41 * S, round(43.5 * S)), (44 * S, 44 * S + 100)]
    assert quiet_split_points(x, S, 45.0, 10.0, pauses=pauses) == [round(42.25 * S)]
    assert quiet_split_points(x, S, 45.0, 10.0) == [40 * S + S // 20]  # the energy heuristic
    assert quiet_split_points(x, S, 45.0, 10.0, pauses=[(44 * S, 44 * S + 100)]) == [
        40 * S + S // 20
    ]  # a pause shorter than a frame does not count


def test_without_speech_the_plan_says_so_and_without_the_vad_it_is_the_whole_file() -> None:
    plan = _plan([], 30.0)
    assert plan.no_speech and plan.pieces == () and plan.speech_seconds == 0.0
    whole = plan_speech(np.ones(30 * S, np.float32), SpeechSettings(enabled=False))
    assert not whole.vad and not whole.no_speech and whole.pieces == (Piece(0, 30 * S, 0),)
    assert whole.speech_seconds is None


def test_unreadable_weights_hear_the_whole_file_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import vibevoice_rpc.voice.vad as vad

    monkeypatch.setattr(vad, "_loaded", None)
    monkeypatch.setattr(vad, "WEIGHTS_PATH", Path("/nonexistent/vad.safetensors"))
    plan = plan_speech(np.zeros(5 * S, np.float32), SpeechSettings())
    assert plan.pieces == (Piece(0, 5 * S, 0),) and not plan.vad
    assert plan.note and "voice activity detection unavailable" in plan.note
