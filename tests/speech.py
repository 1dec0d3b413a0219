"""Conversations of distinct voices made at test time with espeak-ng, at 24 kHz.

``conversation(truth)`` fills each ``(start, end, who)`` stretch of a timeline with speech of
``who``'s voice (``VOICES``; a different sentence per turn, cut to the stretch's length with 10 ms
fades), zeros for ``SILENCE``, seeded noise for ``NOISE`` and sox's music-like chords for ``MUSIC``
(tests/recordings.py, which the voice activity tests use); :class:`Answers` then makes the scripted
model say who speaks when in each window the pipeline actually cut, consistent with the audio.
The voices are recordings.py's (ones the speaker encoder tells apart); recordings.py makes 16 kHz
files joined by sox, as a recorder writes them, this module 24 kHz timelines in memory.

Test and bench code only: never imported by the product.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import recordings

RATE = 24_000
VOICES = recordings.VOICES
SENTENCES = [
    "The quarterly budget was approved after a long discussion about travel costs.",
    "I think we should revisit the marketing plan before the end of the month.",
    "Our new office will open in the spring, if the builders finish on time.",
    "Please send me the slides from yesterday's meeting when you get a chance.",
    "The customer survey shows that most people want a simpler checkout page.",
    "We hired two engineers last week and they start on Monday morning.",
    "Can everyone hear me clearly, or should I move closer to the microphone?",
    "Let's take a short break and come back to the hiring question at three.",
    "The server went down twice on Friday, so we moved the release to Tuesday.",
    "My flight lands at noon, and I can join the call from the airport lounge.",
    "We need a decision on the contract by Thursday at the latest.",
    "Thanks for joining today; let's start with a quick round of updates.",
]


@functools.lru_cache(maxsize=256)
def say(voice: str, text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice``, 24 kHz mono float32 (read-only, cached)."""
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True
        )
        wav, rate = sf.read(path, dtype="float32")
    out = soxr.resample(wav, rate, RATE, quality="HQ").astype(np.float32)
    # espeak-ng's own silence before and after the sentence is cut (20 ms kept): a turn change
    # is then no quieter than a pause between words, as in a real conversation, and the window
    # splits do not all fall on turn changes
    loud = np.flatnonzero(np.abs(out) > 0.01)
    if len(loud):
        out = out[max(0, loud[0] - RATE // 50) : loud[-1] + RATE // 50]
    out.flags.writeable = False
    return out


def _speech(voice: str, seconds: float, turn: int) -> np.ndarray:
    n = round(seconds * RATE)
    parts: list[np.ndarray] = []
    k = turn
    while sum(len(p) for p in parts) < n:
        parts.append(say(voice, SENTENCES[k % len(SENTENCES)]))
        k += 1
    out = np.concatenate(parts)[:n].copy()
    fade = min(len(out) // 2, RATE // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        out[:fade] *= ramp
        out[-fade:] *= ramp[::-1]
    return out


def conversation(truth: Sequence[tuple[float, float, str]]) -> np.ndarray:
    """The timeline ``truth`` as audio (see the module's docstring); starts at 0, ends at the last
    stretch's end; gaps between stretches are silent."""
    end = max(hi for _, hi, _ in truth)
    out = np.zeros(round(end * RATE), np.float32)
    noise = np.random.default_rng(7)
    turns: dict[str, int] = {}
    for lo, hi, who in truth:
        a, b = round(lo * RATE), round(hi * RATE)
        if who == "SILENCE":
            continue
        if who == "NOISE":
            out[a:b] = noise.uniform(-0.05, 0.05, b - a).astype(np.float32)
            continue
        if who == "MUSIC":
            out[a:b] = _music((b - a) / RATE)[: b - a]
            continue
        turn = turns.get(who, 0)
        turns[who] = turn + 1
        # each speaker starts at their own sentence, so two voices never say the same words
        out[a:b] = _speech(VOICES[who], (b - a) / RATE, turn + 3 * sorted(VOICES).index(who))
    return out


@functools.lru_cache(maxsize=4)
def _music(seconds: float) -> np.ndarray:
    """tests/recordings.py's music (sox chords over pink noise) at 24 kHz."""
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        path = recordings.music(Path(tmp) / "music.wav", seconds + 0.1)
        wav, rate = sf.read(path, dtype="float32")
    out = soxr.resample(wav, rate, RATE, quality="HQ").astype(np.float32)
    out.flags.writeable = False
    return out


Truth = Sequence[tuple[float, float, str]]


def planned_windows(samples: np.ndarray, max_window: float) -> tuple[Any, list[Any]]:
    """The speech plan and the windows the pipeline cuts ``samples`` (24 kHz) into, by the
    product's own functions in the pipeline's order (the VAD on, its defaults)."""
    from vibevoice_rpc.limits import WINDOW_OVERLAP_SECONDS
    from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech
    from vibevoice_rpc.transcription.windowing import plan_windows, quiet_split_points

    plan = plan_speech(samples, SpeechSettings())
    heard = plan.model_samples(samples)
    pauses = plan.input_pauses()

    def splits(step: float) -> list[float]:
        points = quiet_split_points(
            heard, RATE, step, search_seconds=min(30.0, step / 4), pauses=pauses
        )
        return [p / RATE for p in points]

    return plan, plan_windows(len(heard) / RATE, max_window, WINDOW_OVERLAP_SECONDS, splits)


def window_answer(truth: Truth, plan: Any, start: float, end: float) -> list[dict[str, Any]]:
    """What the model says of the model-input stretch ``[start, end)``: ``truth``'s stretches
    there (file times moved into the input by ``plan``'s pieces; ``MUSIC`` is never heard), local
    speaker ids from 0 in order of appearance as the real model numbers them; ``SILENCE`` and
    ``NOISE`` as its non-speech segments. Each text starts with the speaker's letter and says
    where in the file the stretch starts."""
    local: dict[str, int] = {}
    segs: list[dict[str, Any]] = []
    for lo, hi, who in truth:
        if who == "MUSIC":
            continue
        for piece in plan.pieces:
            p_lo, p_hi = piece.start / RATE, piece.end / RATE
            a_file, b_file = max(lo, p_lo), min(hi, p_hi)
            if b_file <= a_file:
                continue
            shift = piece.offset / RATE
            a, b = max(a_file - shift, start), min(b_file - shift, end)
            if b - a <= 0.05:
                continue
            seg: dict[str, Any] = {"Start": round(a - start, 2), "End": round(b - start, 2)}
            if who == "SILENCE":  # as the real model writes it: no Speaker key
                seg["Content"] = "[Silence]"
            elif who == "NOISE":
                seg.update({"Speaker": "N/A", "Content": "[Environmental Sounds]"})
            else:
                seg["Speaker"] = local.setdefault(who, len(local))
                seg["Content"] = f"{who} speaking from {a + shift:.2f}"
            segs.append(seg)
    return segs


class Answers:
    """A scripted runtime's script (``runtime.set(answers, inputs=answers.inputs)``): each
    window's answer from ``truth`` for the window the pipeline handed the runner (its start in
    ``inputs``, its length as the script's argument)."""

    def __init__(self, truth: Truth, samples: np.ndarray) -> None:
        from .scripted import real_format_answer

        self.truth = truth
        self.plan, _ = planned_windows(samples, 3600.0)
        self.inputs: list[Any] = []
        self._format: Callable[[list[dict[str, Any]]], str] = real_format_answer

    def __call__(self, duration: float) -> str:
        start = self.inputs[-1].start
        return self._format(window_answer(self.truth, self.plan, start, start + duration))


def write(path: Path, samples: np.ndarray) -> Path:
    """``samples`` as a 24 kHz 16-bit WAV file."""
    import soundfile as sf

    sf.write(path, samples, RATE, subtype="PCM_16")
    return path
