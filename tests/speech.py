"""Conversations of distinct voices made at test time with espeak-ng, at 24 kHz.

``conversation(truth)`` fills each ``(start, end, who)`` stretch of a timeline with speech of
``who``'s voice (``VOICES``; a different sentence per turn, cut to the stretch's length with 10 ms
fades), zeros for ``SILENCE`` and seeded noise for ``NOISE``; the scripted model answer can then say
who speaks when, consistent with the audio. The voices are ones the speaker encoder tells apart
(bench/bench_voice.py --calibrate: en-us against en-us+f3, en-gb-x-rp+f2, en-us+klatt,
en-gb-scotland+m7 at most 0.86). Not en-gb+f3: espeak-ng 1.51 ignores a variant after en-gb and
speaks plain (male) en-gb, which this encoder hears as en-us's voice.

Test and bench code only: never imported by the product.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RATE = 24_000
VOICES = {
    "A": "en-us",
    "B": "en-us+f3",
    "C": "en-gb-x-rp+f2",
    "D": "en-us+klatt",
    "E": "en-gb-scotland+m7",
}
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


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


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
        turn = turns.get(who, 0)
        turns[who] = turn + 1
        # each speaker starts at their own sentence, so two voices never say the same words
        out[a:b] = _speech(VOICES[who], (b - a) / RATE, turn + 3 * sorted(VOICES).index(who))
    return out


def write(path: Path, samples: np.ndarray) -> Path:
    """``samples`` as a 24 kHz 16-bit WAV file."""
    import soundfile as sf

    sf.write(path, samples, RATE, subtype="PCM_16")
    return path
