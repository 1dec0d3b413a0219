"""Speaker linking across windows: timing only vs voice + timing, on synthetic conversations.

Each conversation (seeded) has four espeak-ng voices (tests/speech.py's A, B, C, D) taking turns
of 3-8 s, speakers leaving and coming back, and a stretch of sox music the voice activity
detector collapses to a pause; the pipeline (transcription/pipeline.transcribe_audio, the VAD's
plan, windows of ``--window`` seconds) runs over it with a runner that answers each window with
the truth (local speaker ids from 0 in order of appearance, as the real model numbers them), so
the only thing that can go wrong is the linking. Accuracy: segments whose global id is their
speaker's (the id of the speaker's first segment, held by no other speaker) / all segments.
Encoder cost: seconds inside the speaker encoder per second of audio.

    /work/main/.venv/bin/python bench/bench_linking.py [--conversations 5] [--window 30]
    /work/main/.venv/bin/python bench/bench_linking.py --calibrate

Prints one line per conversation and the medians. ``--calibrate`` prints instead what the
same-voice threshold (voice/embedding.py ``SAME_VOICE``) and ``MIN_SECONDS``
(transcription/voices.py) rest on: the cosine of 1.5-6 s of each of tests/speech.py's five
voices (three sentences each) against 10 s of every voice (other sentences).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import speech  # noqa: E402
from tests.recorder import Recorder  # noqa: E402
from vibevoice_rpc.audio.decode import load_audio  # noqa: E402
from vibevoice_rpc.job import Job  # noqa: E402
from vibevoice_rpc.messages import Segment, TranscribeParams  # noqa: E402
from vibevoice_rpc.transcription.parser import ParsedTranscript  # noqa: E402
from vibevoice_rpc.transcription.pipeline import transcribe_audio  # noqa: E402
from vibevoice_rpc.transcription.speech import SpeechSettings, plan_speech  # noqa: E402
from vibevoice_rpc.transcription.stream import RunnerInfo, WindowResult  # noqa: E402
from vibevoice_rpc.voice.embedding import VoiceEncoder, default_encoder  # noqa: E402


def conversation(seed: int) -> list[tuple[float, float, str]]:
    """About 3.5 minutes: two parts of talk with 40 s of music between them; turns of 3-8 s;
    in each part one of the four voices stays silent for a while."""
    rng = random.Random(seed)
    truth: list[tuple[float, float, str]] = []
    t = 0.0
    for part in range(2):
        away = rng.choice("ABCD")
        who = None
        for turn in range(16):
            voices = [v for v in "ABCD" if v != who and not (v == away and 4 <= turn < 12)]
            who = rng.choice(voices)
            length = round(rng.uniform(3.0, 8.0), 1)
            truth.append((round(t, 1), round(t + length, 1), who))
            t += length
        if part == 0:
            truth.append((round(t, 1), round(t + 40.0, 1), "MUSIC"))
            t += 40.0
    return truth


class TruthRunner:
    """Answers each window with ``truth`` (what a perfect model would say)."""

    def __init__(self, truth: list[tuple[float, float, str]], plan: Any, window: float) -> None:
        self.truth, self.plan = truth, plan
        self.info = RunnerInfo(
            precision="-", device="cpu", model="truth", max_window_seconds=window
        )

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def run_window(self, run: Any) -> WindowResult:
        segments = []
        for seg in speech.window_answer(self.truth, self.plan, run.start, run.start + run.duration):
            local = int(seg["Speaker"])
            s = Segment(
                f"Speaker_{local}", seg["Start"], seg["End"], seg["Content"], speaker_id=local
            )
            run.on_segment(s)
            segments.append(s)
        return WindowResult(ParsedTranscript(segments), 0, False, False)


class TimedEncoder:
    """The package's encoder, with the time spent in it counted."""

    def __init__(self, encoder: VoiceEncoder) -> None:
        self.encoder = encoder
        self.seconds = 0.0  # wall
        self.cpu = 0.0  # CPU seconds of the process (BLAS threads included)

    def embed_many(self, clips: Any, sample_rate: int) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return self.encoder.embed_many(clips, sample_rate)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu += time.process_time() - cpu


def accuracy(segments: list[Segment]) -> float:
    own: dict[str, int | None] = {}
    for s in segments:
        own.setdefault(s.text[0], s.speaker_id)
    shared = {g for g in own.values() if list(own.values()).count(g) > 1}
    right = sum(
        1 for s in segments if s.speaker_id == own[s.text[0]] and s.speaker_id not in shared
    )
    return right / len(segments) if segments else 1.0


def calibrate(encoder: VoiceEncoder) -> None:
    import numpy as np

    rate = speech.RATE
    voices = sorted(speech.VOICES)
    profile = {v: encoder.embed(speech._speech(speech.VOICES[v], 10.0, 0), rate) for v in voices}
    for seconds in (1.5, 2.0, 3.0, 4.0, 6.0):
        same, other = [], []
        for v in voices:
            for turn in (5, 8, 11):
                emb = encoder.embed(speech._speech(speech.VOICES[v], seconds, turn), rate)
                for w in voices:
                    (same if v == w else other).append(float(np.dot(emb, profile[w])))
        print(
            f"{seconds:4.1f} s against 10 s: same voice min {min(same):.3f} median "
            f"{statistics.median(same):.3f}; other voices max {max(other):.3f} median "
            f"{statistics.median(other):.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=5)
    ap.add_argument("--window", type=float, default=30.0, help="max window seconds")
    ap.add_argument("--calibrate", action="store_true", help="the threshold's evidence")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    encoder = default_encoder()
    if args.calibrate:
        calibrate(encoder)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.conversations):
            truth = conversation(seed)
            path = speech.write(Path(tmp) / f"c{seed}.wav", speech.conversation(truth))
            audio = load_audio(str(path))
            plan = plan_speech(audio.samples, SpeechSettings())
            row: dict[str, Any] = {"seed": seed, "duration": audio.duration}
            for name, loader in (("timing", None), ("voice", "timed")):
                timed = TimedEncoder(encoder)
                params = TranscribeParams(audio_path=str(path))
                job = Job("b", "transcribe", params, None, Recorder())
                result = transcribe_audio(
                    TruthRunner(truth, plan, args.window),
                    audio,
                    params,
                    job,
                    started=time.monotonic(),
                    speech=plan,
                    voice_encoder=(lambda timed=timed: timed) if loader else None,  # type: ignore[misc]
                )
                speech_segments = [s for s in result.segments if not s.non_speech]
                row[name] = accuracy(speech_segments)
                row["segments"] = len(speech_segments)
                row["windows"] = result.metadata.windows
                if loader:
                    row["encoder_pct"] = 100.0 * timed.seconds / audio.duration
                    row["encoder_cpu_pct"] = 100.0 * timed.cpu / audio.duration
                    row["uncertain"] = sum("uncertain" in w for w in result.metadata.warnings)
            rows.append(row)
            print(
                f"conversation {seed}: {row['duration']:.0f} s, {row['windows']} windows, "
                f"{row['segments']} segments: timing only {row['timing']:.1%}, "
                f"voice + timing {row['voice']:.1%}; encoder {row['encoder_pct']:.2f} % of the "
                f"audio's duration ({row['encoder_cpu_pct']:.2f} % in CPU seconds); "
                f"{row['uncertain']} uncertain-link warnings",
                flush=True,
            )
    keys = ("timing", "voice", "encoder_pct", "encoder_cpu_pct")
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    print(
        f"median of {len(rows)} conversations (4 voices, windows of {args.window:g} s): "
        f"accuracy timing only {med['timing']:.1%}, voice + timing {med['voice']:.1%}; "
        f"speaker encoder {med['encoder_pct']:.2f} % of the audio's duration "
        f"({med['encoder_cpu_pct']:.2f} % in CPU seconds); load average before the run "
        f"{load:.1f}"
    )


if __name__ == "__main__":
    main()
