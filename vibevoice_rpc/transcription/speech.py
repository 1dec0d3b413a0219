"""What the model hears: the decoded audio without its long stretches of no speech, and the way
back from a time in what it heard to the time in the file.

:func:`plan_speech` runs the voice activity detector (:mod:`vibevoice_rpc.voice`) and keeps the
file in *pieces*: every stretch of speech with ``pad`` seconds of the audio around it, stretches
closer than ``min_silence`` seconds kept together with what lies between them. Between two pieces
the model hears ``pause`` seconds of digital silence instead of the gap (music, noise, silence);
before the first piece and after the last it hears nothing. A file without long gaps is one piece:
the model hears it exactly as decoded. Why a pause in one stream and not separate windows:
docs/AUDIO.md ("Voice activity").

Times map back by pieces (:meth:`SpeechPlan.to_file`): inside a piece a time moves by the piece's
offset, a whole number of samples (``start - at``), so a model time *t* comes back as
``t + offset / 24000`` exactly. A start inside a pause belongs to the piece after it, an end to the
piece before; a segment wholly inside a pause stands for the whole gap it replaced.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..limits import SAMPLE_RATE

__all__ = ["SpeechSettings", "Piece", "SpeechPlan", "plan_speech"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechSettings:
    """Whether to run the VAD and what counts as a long stretch without speech (seconds)."""

    enabled: bool = True
    min_silence: float = 8.0  # gaps at least this long between speech are not heard as they are
    pad: float = 1.0  # audio kept on each side of speech (Silero may end a soft word early)
    pause: float = 1.0  # silence heard in place of each gap between two pieces


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, end)`` of the file, heard from sample ``at`` of the model's input."""

    start: int
    end: int
    at: int

    @property
    def offset(self) -> int:
        """File sample = input sample + offset, inside this piece."""
        return self.start - self.at


@dataclass(frozen=True)
class SpeechPlan:
    """The pieces of a ``length``-sample file the model hears, and the speech the VAD found.

    ``speech`` is None when the VAD did not run (turned off, or unavailable: ``note`` says why);
    then the plan is the whole file as one piece."""

    length: int
    pieces: tuple[Piece, ...]
    pause: int  # samples of silence between two pieces
    speech: tuple[tuple[int, int], ...] | None
    note: str | None = None

    @classmethod
    def whole(cls, length: int, note: str | None = None) -> SpeechPlan:
        """The whole file as it is (no VAD)."""
        pieces = (Piece(0, length, 0),) if length else ()
        return cls(length, pieces, 0, None, note)

    @property
    def vad(self) -> bool:
        return self.speech is not None

    @property
    def no_speech(self) -> bool:
        """The VAD ran and found no speech at all: the model need not run."""
        return self.speech is not None and not self.speech

    @property
    def input_length(self) -> int:
        """Samples of the model's input."""
        last = self.pieces[-1] if self.pieces else None
        return last.at + (last.end - last.start) if last else 0

    @property
    def speech_seconds(self) -> float | None:
        if self.speech is None:
            return None
        return sum(end - start for start, end in self.speech) / SAMPLE_RATE

    def skipped(self) -> list[tuple[int, int]]:
        """The stretches of the file the model does not hear, as ``(start, end)`` samples."""
        if not self.pieces:  # no speech: none of it was heard
            return [(0, self.length)] if self.length else []
        out, previous = [], 0
        for piece in self.pieces:
            if piece.start > previous:
                out.append((previous, piece.start))
            previous = piece.end
        if self.length > previous:
            out.append((previous, self.length))
        return out

    def model_samples(self, samples: np.ndarray) -> np.ndarray:
        """The model's input: the pieces of ``samples`` with silence between them (``samples``
        itself when the plan is the whole file)."""
        if (
            len(self.pieces) == 1
            and self.pieces[0].start == 0
            and self.pieces[0].end == len(samples)
        ):
            return samples
        out = np.zeros(self.input_length, dtype=samples.dtype)
        for piece in self.pieces:
            out[piece.at : piece.at + piece.end - piece.start] = samples[piece.start : piece.end]
        return out

    def input_pauses(self) -> list[tuple[int, int]]:
        """Where the model's input holds no speech (input samples): between the VAD's stretches,
        the silence between pieces included. Empty without the VAD."""
        if self.speech is None:
            return []
        talk = []
        for start, end in self.speech:
            piece = self._piece_of(start)
            talk.append((start - piece.offset, min(end, piece.end) - piece.offset))
        out, previous = [], 0
        for lo, hi in talk:
            if lo > previous:
                out.append((previous, lo))
            previous = max(previous, hi)
        if self.input_length > previous:
            out.append((previous, self.input_length))
        return out

    def _piece_of(self, sample: int) -> Piece:
        """The piece holding file sample ``sample`` (every speech stretch lies in one)."""
        starts = [p.start for p in self.pieces]
        return self.pieces[max(0, bisect.bisect_right(starts, sample) - 1)]

    def file_time(self, t: float) -> float:
        """One moment of the model's input (seconds) → the file's (in a pause: where it begins)."""
        return self.to_file(t, t)[0]

    def to_file(self, start: float, end: float) -> tuple[float, float]:
        """A segment's ``start``/``end`` in seconds of the model's input → seconds of the file."""
        if len(self.pieces) <= 1:
            offset = self.pieces[0].offset / SAMPLE_RATE if self.pieces else 0.0
            return start + offset, end + offset
        s, s_gap = self._time(start, is_start=True)
        e, e_gap = self._time(end, is_start=False)
        if s_gap is not None and s_gap == e_gap:  # wholly inside one pause: the gap it stands for
            before, after = self.pieces[s_gap], self.pieces[s_gap + 1]
            return before.end / SAMPLE_RATE, after.start / SAMPLE_RATE
        return s, max(s, e)

    def _time(self, t: float, *, is_start: bool) -> tuple[float, int | None]:
        """Input seconds → file seconds, and the index of the piece before the pause ``t`` falls
        in (None inside a piece)."""
        sample = t * SAMPLE_RATE
        ats = [p.at for p in self.pieces]
        k = max(0, bisect.bisect_right(ats, sample) - 1)
        piece = self.pieces[k]
        if sample <= piece.at + (piece.end - piece.start) or k + 1 == len(self.pieces):
            return t + piece.offset / SAMPLE_RATE, None
        following = self.pieces[k + 1]
        return (following.start if is_start else piece.end) / SAMPLE_RATE, k


def plan_speech(
    samples: np.ndarray,
    settings: SpeechSettings,
    *,
    check_cancelled: Callable[[], None] | None = None,
) -> SpeechPlan:
    """What the model should hear of ``samples`` (24 kHz): see the module's docstring. Without
    its weights the VAD is skipped and the plan is the whole file, with a note."""
    length = len(samples)
    if not settings.enabled:
        return SpeechPlan.whole(length)
    from ..voice.activity import detect_speech
    from ..voice.vad import VadUnavailable

    try:
        found = detect_speech(samples, SAMPLE_RATE, check_cancelled=check_cancelled)
    except VadUnavailable as exc:
        log.error("voice activity detection unavailable: %s", exc)
        return SpeechPlan.whole(
            length, note=f"voice activity detection unavailable ({exc}): the whole audio was heard"
        )
    speech = found.stretches
    if not speech:
        return SpeechPlan(length, (), 0, ())
    gap = round(settings.min_silence * SAMPLE_RATE)
    pad = round(settings.pad * SAMPLE_RATE)
    pause = round(settings.pause * SAMPLE_RATE)
    # Kept ranges of the file: speech ± pad, merged across gaps shorter than `gap`; the file's
    # start and end are kept when the speech is less than `gap` from them.
    kept: list[list[int]] = []
    previous_end = 0
    for start, end in speech:
        if kept and start - previous_end < gap:
            kept[-1][1] = end + pad
        else:
            kept.append([start - pad if kept or start >= gap else 0, end + pad])
        previous_end = end
    if length - speech[-1][1] < gap:
        kept[-1][1] = length
    pieces: list[Piece] = []
    at = 0
    for lo, hi in kept:
        lo, hi = max(0, lo), min(length, hi)
        if pieces and lo - pieces[-1].end <= pause:  # replacing it would save nothing
            last = pieces.pop()
            at = last.at
            lo = last.start
        pieces.append(Piece(lo, hi, at))
        at += hi - lo + pause
    return SpeechPlan(length, tuple(pieces), pause, speech)
