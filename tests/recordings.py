"""Real recordings made at test time: espeak-ng voices for speech, sox for music-like tones,
noise and silence, joined with sox. 16 kHz mono 16-bit WAV, as a meeting recorder writes it.

Each function writes ``path`` and returns it with its length in samples, so a test knows to the
sample where each part of a joined file lies. Test code only.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import soundfile as sf

RATE = 16000
# Distinct voices for distinct speakers: ones the speaker encoder tells apart (``python
# bench/bench_linking.py --calibrate``: 3 s of one against 10 s of another at most 0.82, of itself
# at least 0.89). Not en-gb+f3: espeak-ng 1.51 ignores a variant after en-gb and speaks plain
# (male) en-gb, which the encoder hears as en-us's voice.
VOICES = {
    "A": "en-us",
    "B": "en-us+f3",
    "C": "en-gb-x-rp+f2",
    "D": "en-us+klatt",
    "E": "en-gb-scotland+m7",
}


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def _synth(path: Path, *effect: str) -> None:
    """sox's synth: a 16 kHz mono 16-bit file of what ``effect`` makes."""
    _run("sox", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "synth", *effect)


def frames(path: Path) -> int:
    return sf.info(str(path)).frames


def say(path: Path, text: str, speaker: str = "A") -> Path:
    """``text`` spoken by ``speaker``'s espeak-ng voice."""
    raw = path.with_suffix(".espeak.wav")
    _run("espeak-ng", "-v", VOICES[speaker], "-w", str(raw), text)
    _run("sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path))
    raw.unlink()
    return path


def music(path: Path, seconds: float) -> Path:
    """Plucked three-note chords changing every half second, over pink noise: music-like, no
    speech."""
    work = path.parent / (path.stem + ".parts")
    work.mkdir(exist_ok=True)
    chords = ["C3 E3 G3", "A2 C3 E3", "F2 A2 C3", "G2 B2 D3"]
    bars = []
    for i, chord in enumerate(chords):
        notes = []
        for j, note in enumerate(chord.split()):
            n = work / f"note{i}{j}.wav"
            _synth(n, "0.5", "pluck", note, "vol", "0.4")
            notes.append(str(n))
        bar = work / f"chord{i}.wav"
        _run("sox", "-m", *notes, str(bar))
        bars.append(str(bar))
    phrase = work / "phrase.wav"
    _run("sox", *bars, str(phrase))
    repeats = max(0, int(-(-seconds // 2)) - 1)
    tune = work / "tune.wav"
    _run("sox", str(phrase), str(tune), "repeat", str(repeats), "trim", "0", f"{seconds}")
    noise = work / "noise.wav"
    _synth(noise, f"{seconds}", "pinknoise", "vol", "0.1")
    _run("sox", "-m", str(tune), str(noise), str(path))
    shutil.rmtree(work)
    return path


def silence(path: Path, seconds: float) -> Path:
    _run("sox", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "trim", "0", f"{seconds}")
    return path


def join(path: Path, *parts: Path) -> Path:
    """The parts one after the other (each keeps its samples: same rate, no resampling)."""
    _run("sox", *map(str, parts), str(path))
    return path
