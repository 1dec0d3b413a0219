"""Long audio: where to split it (a quiet moment), overlapping windows, and speaker labels kept
consistent across them.

Window *k* ends at a split point *s* (a quiet moment) and window *k+1* starts ``overlap`` seconds
before *s*, so the stretch just before *s* is heard twice. Who keeps a segment heard in that
stretch (:func:`keeps_segment`): window *k* keeps what ended before *s*; what was still going on at
*s* (cut by window *k*'s end) comes from window *k+1*, which hears it whole. Window *k+1*'s
speaker ids are mapped onto the global ones by who is talking during the shared stretch and, when
the pipeline has them, by their voices (:func:`link_speakers`; a speaker first heard after that:
:func:`link_late_speaker`; cosines of speaker embeddings, judged by :func:`voice_verdict`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..voice.embedding import SAME_VOICE, VOICE_MARGIN

__all__ = [
    "CUT_TOLERANCE_SECONDS",
    "Window",
    "plan_windows",
    "TimedSpeech",
    "link_speakers",
    "link_late_speaker",
    "voice_verdict",
    "keeps_segment",
    "quiet_split_points",
]


# A segment ending this close to a split point counts as still going on there (cut), in both of
# the windows that hear it: the two windows decide alike whatever small timing error they make.
CUT_TOLERANCE_SECONDS = 0.25


@dataclass(frozen=True)
class Window:
    index: int
    start: float  # seconds: where the window's audio starts (includes the overlap)
    end: float  # the next split point (or the end of the audio)
    core_start: float  # the previous split point: before it, the previous window is in charge
    core_end: float
    next_start: float | None = None  # where the next window's audio starts; None for the last


def plan_windows(
    duration: float,
    max_window: float,
    overlap: float,
    split_points: Callable[[float], list[float]],
) -> list[Window]:
    """Cut ``duration`` seconds into windows of at most ``max_window`` seconds.

    ``split_points(step)`` returns the interior split times (seconds) so that consecutive splits are
    at most ``step`` apart (the audio module picks quiet moments). Window *i* starts ``overlap``
    seconds before its split point.
    """
    if duration <= max_window:
        return [Window(0, 0.0, duration, 0.0, duration)]
    overlap = min(overlap, max_window / 4)
    cuts = (
        [0.0] + [c for c in split_points(max_window - overlap) if 0.0 < c < duration] + [duration]
    )
    starts = [max(0.0, cuts[i] - (overlap if i else 0.0)) for i in range(len(cuts) - 1)]
    return [
        Window(
            i,
            starts[i],
            cuts[i + 1],
            cuts[i],
            cuts[i + 1],
            starts[i + 1] if i + 1 < len(starts) else None,
        )
        for i in range(len(starts))
    ]


@dataclass(frozen=True)
class TimedSpeech:
    speaker: int
    start: float
    end: float


def keeps_segment(window: Window, start: float, end: float) -> bool:
    """Whether ``window`` keeps its segment ``[start, end]`` (absolute seconds).

    It drops what the previous window already has whole (started before the split and ended
    before it), and what its own end cut off while the next window hears all of it. A segment cut
    at both sides (longer than the overlap) is kept by both: its words in the overlap come twice,
    but none are lost.
    """
    tol = CUT_TOLERANCE_SECONDS
    if window.index > 0 and start < window.core_start and end < window.core_start - tol:
        return False
    if window.next_start is not None and end >= window.end - tol:
        return start < window.next_start + tol
    return True


Verdict = Literal["same", "same?", "new?", "new"]


def voice_verdict(similarity: float) -> Verdict:
    """What a voice similarity says: ``same`` (at least ``SAME_VOICE + VOICE_MARGIN``), ``same?``
    (at least ``SAME_VOICE``: linked, reported), ``new?`` (within ``VOICE_MARGIN`` below it: not
    linked, reported), ``new``. The numbers: voice/embedding.py."""
    if similarity >= SAME_VOICE + VOICE_MARGIN:
        return "same"
    if similarity >= SAME_VOICE:
        return "same?"
    if similarity >= SAME_VOICE - VOICE_MARGIN:
        return "new?"
    return "new"


def _nearest(similarities: Mapping[int, float], taken: set[int]) -> tuple[int | None, float]:
    """The most similar global speaker not in ``taken`` and the similarity (None, 0.0: none)."""
    free = [(sim, glob) for glob, sim in similarities.items() if glob not in taken]
    if not free:
        return None, 0.0
    sim, glob = max(free, key=lambda sg: (sg[0], -sg[1]))
    return glob, sim


def link_late_speaker(
    similarities: Mapping[int, float], taken: set[int], next_id: int, where: str
) -> tuple[int, str | None]:
    """The global id of a local speaker first heard after the window's link point (silent in the
    shared stretch), whose voice has ``similarities`` (global id → cosine) to the global voices:
    the most similar one not in ``taken`` (already a speaker of this window) when its verdict is
    ``same``/``same?``, else ``next_id``. Returns it and a note when the link is uncertain; the
    caller reports a new id without any voice to go by (``similarities`` empty) itself.
    ``where``: when the speaker was first heard, for the note."""
    near, sim = _nearest(similarities, taken)
    verdict = voice_verdict(sim) if near is not None else None
    if near is not None and verdict in ("same", "same?"):
        note = None
        if verdict == "same?":
            note = (
                f"speaker link uncertain: Speaker_{near}, heard again {where} after not talking "
                f"in the stretch shared with the previous window, recognised by voice with "
                f"similarity {sim:.2f}, near the threshold {SAME_VOICE:.2f}"
            )
        return near, note
    if verdict == "new?":
        return next_id, (
            f"speaker link uncertain: Speaker_{next_id}, first heard {where}, taken for a new "
            f"voice, but it resembles Speaker_{near} (similarity {sim:.2f})"
        )
    return next_id, None


def link_speakers(
    previous: list[TimedSpeech],
    current: list[TimedSpeech],
    shared: tuple[float, float],
    next_id: int,
    *,
    voices: Mapping[int, Mapping[int, float]] | None = None,
    to_file: Callable[[float], float] | None = None,
    wait_for_voice: bool = False,
) -> tuple[dict[int, int], list[str]]:
    """Map ``current``'s local speaker ids onto global ids.

    Timing first: speakers are paired greedily by the seconds they talk at the same time inside
    the ``shared`` stretch (``previous`` holds the previous window's speech under global ids).
    ``voices[local][glob]``, when given, is the cosine similarity of local speaker ``local``'s
    voice in this window to global speaker ``glob``'s voice so far (only where both had enough
    speech; any global speaker, also one silent in the shared stretch). A timing pair whose
    voices clearly differ is a conflict: kept when the timing is strong (at least half of the
    local speaker's shared talk), else left to the voice. Local speakers without a timing pair
    take the most similar free voice whose verdict is ``same``/``same?`` (:func:`voice_verdict`),
    best pairs first; the rest get new global ids from ``next_id``. Returns the mapping and
    human-readable notes about uncertain links (similarity near the threshold, a weak timing
    link without a voice to confirm it, conflicting evidence). ``to_file`` maps a time of the
    audio the windows cut (the model's input) to the file's, for the notes. ``wait_for_voice``:
    a local speaker with neither a timing pair nor enough speech for a voice is left out of the
    mapping (the caller links them by voice once more of their speech has come, as one first
    heard after the shared stretch) instead of getting a new id at once.
    """
    lo, hi = shared
    voices = voices or {}
    overlap: dict[tuple[int, int], float] = {}
    local_talk: dict[int, float] = {}
    for c in current:
        c_lo, c_hi = max(c.start, lo), min(c.end, hi)
        if c_hi <= c_lo:
            continue
        local_talk[c.speaker] = local_talk.get(c.speaker, 0.0) + (c_hi - c_lo)
        for p in previous:
            both = min(c_hi, p.end) - max(c_lo, p.start)
            if both > 0:
                key = (c.speaker, p.speaker)
                overlap[key] = overlap.get(key, 0.0) + both
    mapping: dict[int, int] = {}
    notes: list[str] = []
    used: set[int] = set()
    shown = to_file or (lambda t: t)
    at = f"at {shown(lo):.1f}-{shown(hi):.1f}s"
    for (local, glob), secs in sorted(overlap.items(), key=lambda kv: -kv[1]):
        if local in mapping or glob in used:
            continue
        weak = secs < 0.5 * local_talk.get(local, secs)
        sim = voices.get(local, {}).get(glob)
        verdict = voice_verdict(sim) if sim is not None else None
        if verdict == "new":
            notes.append(
                f"speaker link uncertain {at}: local speaker {local} talks with Speaker_{glob} "
                f"on {secs:.1f}s of {local_talk[local]:.1f}s, but their voices differ "
                f"(similarity {sim:.2f}); "
                + ("linked by timing" if not weak else "not linked by timing")
            )
            if weak:
                continue
        elif verdict in ("same?", "new?"):
            notes.append(
                f"speaker link uncertain {at}: local speaker {local} matched Speaker_{glob} on "
                f"{secs:.1f}s of {local_talk[local]:.1f}s, voice similarity {sim:.2f} near the "
                f"threshold {SAME_VOICE:.2f}"
            )
        elif verdict is None and weak:
            notes.append(
                f"speaker link uncertain {at}: local speaker {local} matched "
                f"Speaker_{glob} on {secs:.1f}s of {local_talk[local]:.1f}s"
            )
        mapping[local] = glob
        used.add(glob)
    # By voice alone, the most similar pairs first: a speaker silent in the shared stretch.
    pairs = sorted(
        ((sim, local, glob) for local, sims in voices.items() for glob, sim in sims.items()),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    for sim, local, glob in pairs:
        if local in mapping or glob in used or voice_verdict(sim) not in ("same", "same?"):
            continue
        mapping[local] = glob
        used.add(glob)
        if voice_verdict(sim) == "same?":
            notes.append(
                f"speaker link uncertain {at}: local speaker {local} linked to Speaker_{glob} "
                f"by voice alone, similarity {sim:.2f} near the threshold {SAME_VOICE:.2f}"
            )
    speakers = sorted({c.speaker for c in current})
    if wait_for_voice:
        speakers = [local for local in speakers if local in mapping or voices.get(local)]
    elif not overlap and any(not voices.get(local) for local in speakers):
        notes.append(
            f"no shared speech {at}: speakers after {shown(lo):.1f}s may be "
            "labelled differently from those before"
        )
    for local in speakers:
        if local not in mapping:
            mapping[local] = next_id
            near, sim = _nearest(voices.get(local, {}), used)
            if near is not None and voice_verdict(sim) == "new?":
                notes.append(
                    f"speaker link uncertain {at}: local speaker {local} taken for a new voice "
                    f"(Speaker_{next_id}), but it resembles Speaker_{near} (similarity {sim:.2f})"
                )
            next_id += 1
    return mapping, notes


def quiet_split_points(
    samples: np.ndarray,
    sample_rate: int,
    window_seconds: float,
    search_seconds: float = 30.0,
    *,
    frame_seconds: float = 0.1,
    pauses: Sequence[tuple[int, int]] = (),
) -> list[int]:
    """Interior sample indices that split ``samples`` into windows of at most ``window_seconds``.

    Each split lies in the last ``search_seconds`` before its window's end: in the middle of the
    longest of ``pauses`` (sample ranges without speech, from the voice activity detector) there,
    when one covers at least ``frame_seconds`` of it; else at the centre of the quietest
    ``frame_seconds`` frame (lowest RMS, stepped every 10 ms; ties go to the latest frame, so
    windows stay long). Returns ``[]`` when the audio fits one window. Deterministic.
    """
    n = len(samples)
    window = int(window_seconds * sample_rate)
    if window <= 0:
        raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
    if n <= window:
        return []
    search = max(1, min(window - 1, int(search_seconds * sample_rate)))
    frame = max(1, min(search, int(frame_seconds * sample_rate)))
    hop = max(1, sample_rate // 100)
    points: list[int] = []
    start = 0
    while n - start > window:
        end = start + window
        lo = end - search
        split = _in_longest_pause(pauses, lo, end, frame)
        if split is None:
            region = np.asarray(samples[lo:end], dtype=np.float64)
            energy = np.concatenate(([0.0], np.cumsum(region * region)))
            offsets = np.arange(0, len(region) - frame + 1, hop)
            sums = energy[offsets + frame] - energy[offsets]
            best = offsets[len(sums) - 1 - int(np.argmin(sums[::-1]))]
            split = lo + int(best) + frame // 2
        points.append(split)
        start = split
    return points


def _in_longest_pause(
    pauses: Sequence[tuple[int, int]], lo: int, hi: int, least: int
) -> int | None:
    """The middle of the longest part of ``pauses`` inside ``[lo, hi)`` (the latest of equals),
    if it is at least ``least`` samples long."""
    best: tuple[int, int] | None = None
    for start, end in pauses:
        a, b = max(start, lo), min(end, hi)
        if b - a >= least and (best is None or b - a >= best[1] - best[0]):
            best = (a, b)
    return None if best is None else (best[0] + best[1]) // 2
