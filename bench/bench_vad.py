"""Voice activity detection: what it costs and what it saves (issue #21).

Run by hand::

    python bench/bench_vad.py              # 10 min of audio, 5 runs
    python bench/bench_vad.py --minutes 30 --reps 3

The audio is made at run time: espeak-ng sentences in four voices with 0.7 s between them, and
music-like tones over pink noise (sox; tests/recordings.py) in two blocks that make 30 % of the
file, joined into one 16 kHz WAV and decoded by the engine's decoder (24 kHz), as a request's
file is. Printed:

- the cost: ``plan_speech`` (resampling to 16 kHz, Silero VAD in numpy, the pieces) per minute of
  audio, median of ``--reps`` runs in this process after one warm-up run, next to Silero's own
  TorchScript model on the same 16 kHz samples when silero-vad and torch are installed (the dev
  extra) — for scale, not used by the product;
- what it saves: the seconds the model is fed (``model_input_seconds``) against the file's
  duration, and where the music lay against what was skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import print_header, table, temp_dir  # noqa: E402
from tests import recordings  # noqa: E402
from vibevoice_rpc.audio.decode import load_audio  # noqa: E402
from vibevoice_rpc.limits import SAMPLE_RATE  # noqa: E402
from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech  # noqa: E402

SENTENCES = [
    "Good morning everyone, let us look at the budget for next year.",
    "The numbers are better than we expected in every region.",
    "Travel costs went down, and the new office is cheaper than planned.",
    "We will hire two people for the support team in the spring.",
    "Marketing asks for a larger share, and we decide on that in March.",
    "Are there any other questions about the figures before we close?",
]


def make_file(folder: Path, minutes: float) -> tuple[Path, list[tuple[float, float]]]:
    """A ``minutes``-long file, 70 % speech and 30 % music in two blocks; returns it and where
    the music lies (seconds)."""
    voices = list(recordings.VOICES)
    clips = [
        recordings.say(folder / f"s{i}.wav", text, voices[i % len(voices)])
        for i, text in enumerate(SENTENCES)
    ]
    gap = recordings.silence(folder / "gap.wav", 0.7)
    total = minutes * 60
    music_block = 0.15 * total  # two of them: 30 %
    music = recordings.music(folder / "music.wav", music_block)
    speech_target = (total - 2 * music_block) / 3  # three stretches of speech around the music
    parts: list[Path] = []
    where: list[tuple[float, float]] = []
    at = 0.0
    for block in range(3):
        spoken = 0.0
        i = block
        while spoken < speech_target:
            clip = clips[i % len(clips)]
            parts += [clip, gap]
            spoken += (recordings.frames(clip) + recordings.frames(gap)) / recordings.RATE
            i += 1
        at += spoken
        if block < 2:
            parts.append(music)
            where.append((at, at + recordings.frames(music) / recordings.RATE))
            at += recordings.frames(music) / recordings.RATE
    # sox takes the parts as arguments: join in batches to stay far from any argument limit
    batch, joined = 200, []
    for k in range(0, len(parts), batch):
        joined.append(recordings.join(folder / f"part{k}.wav", *parts[k : k + batch]))
    return recordings.join(folder / "meeting.wav", *joined), where


def silero_cost(path: Path, reps: int) -> float | None:
    """Seconds for Silero's TorchScript model over the 16 kHz file (median), None without it."""
    try:
        import silero_vad
        import soundfile as sf
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    model = silero_vad.load_silero_vad()
    samples = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
    times = []
    for _ in range(reps + 1):
        model.reset_states()
        t = time.perf_counter()
        silero_vad.get_speech_timestamps(samples, model, sampling_rate=16000)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print_header("voice activity detection: cost and savings")
    folder = temp_dir("bench-vad-")
    path, music = make_file(folder, args.minutes)
    audio = load_audio(str(path))
    minutes = audio.duration / 60
    settings = SpeechSettings()
    times, plan = [], None
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        plan = plan_speech(audio.samples, settings)
        times.append(time.perf_counter() - t)
    assert plan is not None
    ours = statistics.median(times[1:])
    theirs = silero_cost(path, args.reps)
    print(f"\naudio: {audio.duration:.1f} s ({minutes:.2f} min), music at " +
          ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in music))  # fmt: skip
    rows = [
        ["plan_speech (numpy VAD, the product)", f"{ours:.3f}", f"{1000 * ours / minutes:.0f}",
         f"{100 * ours / audio.duration:.3f} %"],
    ]  # fmt: skip
    if theirs is not None:
        rows.append(
            ["silero-vad's TorchScript model (reference)", f"{theirs:.3f}",
             f"{1000 * theirs / minutes:.0f}", f"{100 * theirs / audio.duration:.3f} %"]
        )  # fmt: skip
    table(
        ["", "s (median)", "ms per audio minute", "of the audio's duration"],
        rows,
        note=f"median of {args.reps} runs after a warm-up; one process",
    )
    heard = plan.input_length / SAMPLE_RATE
    music_s = sum(b - a for a, b in music)
    skipped = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in plan.skipped()]
    print()
    table(
        ["", "seconds"],
        [
            ["file", f"{audio.duration:.1f}"],
            ["music in it", f"{music_s:.1f} ({100 * music_s / audio.duration:.0f} %)"],
            ["speech found by the VAD", f"{plan.speech_seconds:.1f}"],
            ["fed to the model", f"{heard:.1f} ({100 * heard / audio.duration:.0f} %)"],
            ["saved", f"{audio.duration - heard:.1f} ({100 * (1 - heard / audio.duration):.0f} %)"],
        ],
    )
    print("skipped: " + ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
