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

Prints one line per conversation and the medians.
"""

from __future__ import annotations

import argparse
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
        self.seconds = 0.0

    def embed(self, samples: Any, sample_rate: int) -> Any:
        started = time.perf_counter()
        try:
            return self.encoder.embed(samples, sample_rate)
        finally:
            self.seconds += time.perf_counter() - started


def accuracy(segments: list[Segment]) -> float:
    own: dict[str, int | None] = {}
    for s in segments:
        own.setdefault(s.text[0], s.speaker_id)
    shared = {g for g in own.values() if list(own.values()).count(g) > 1}
    right = sum(
        1 for s in segments if s.speaker_id == own[s.text[0]] and s.speaker_id not in shared
    )
    return right / len(segments) if segments else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=5)
    ap.add_argument("--window", type=float, default=30.0, help="max window seconds")
    args = ap.parse_args()
    encoder = default_encoder()
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
                    row["uncertain"] = sum("uncertain" in w for w in result.metadata.warnings)
            rows.append(row)
            print(
                f"conversation {seed}: {row['duration']:.0f} s, {row['windows']} windows, "
                f"{row['segments']} segments: timing only {row['timing']:.1%}, "
                f"voice + timing {row['voice']:.1%}; encoder {row['encoder_pct']:.2f} % of the "
                f"audio's duration; {row['uncertain']} uncertain-link warnings",
                flush=True,
            )
    med = {k: statistics.median(r[k] for r in rows) for k in ("timing", "voice", "encoder_pct")}
    print(
        f"median of {len(rows)} conversations (4 voices, windows of {args.window:g} s): "
        f"accuracy timing only {med['timing']:.1%}, voice + timing {med['voice']:.1%}; "
        f"speaker encoder {med['encoder_pct']:.2f} % of the audio's duration"
    )


if __name__ == "__main__":
    main()
