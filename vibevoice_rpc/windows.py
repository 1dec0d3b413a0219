"""Long audio: overlapping windows, and speaker labels kept consistent across them.

Each window overlaps the previous one by a few seconds. A window keeps only the segments whose
midpoint lies in its own *core* (from its split point to the next one), and its speaker ids are
mapped onto the previous window's by who is talking during the shared stretch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Window", "plan_windows", "TimedSpeech", "link_speakers", "keep_in_core"]


@dataclass(frozen=True)
class Window:
    index: int
    start: float  # seconds: where the window's audio starts (includes the overlap)
    end: float
    core_start: float  # seconds: segments with their midpoint in [core_start, core_end) are kept
    core_end: float


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
    windows = []
    for i in range(len(cuts) - 1):
        start = max(0.0, cuts[i] - (overlap if i else 0.0))
        windows.append(Window(i, start, cuts[i + 1], cuts[i], cuts[i + 1]))
    return windows


@dataclass(frozen=True)
class TimedSpeech:
    speaker: int
    start: float
    end: float


def keep_in_core(items: list[TimedSpeech], window: Window, *, last: bool) -> list[bool]:
    """Which of a window's segments (absolute times) belong to its core."""
    out = []
    for s in items:
        mid = (s.start + s.end) / 2
        out.append(window.core_start <= mid and (mid < window.core_end or last))
    return out


def link_speakers(
    previous: list[TimedSpeech],
    current: list[TimedSpeech],
    shared: tuple[float, float],
    next_id: int,
) -> tuple[dict[int, int], list[str]]:
    """Map ``current``'s local speaker ids onto ``previous``'s global ids.

    Speakers are paired greedily by the seconds they talk at the same time inside the ``shared``
    stretch; unpaired local speakers get new global ids from ``next_id``. Returns the mapping and a
    list of human-readable notes about links that are uncertain.
    """
    lo, hi = shared
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
    for (local, glob), secs in sorted(overlap.items(), key=lambda kv: -kv[1]):
        if local in mapping or glob in used:
            continue
        mapping[local] = glob
        used.add(glob)
        if secs < 0.5 * local_talk.get(local, secs):
            notes.append(
                f"speaker link uncertain at {lo:.1f}-{hi:.1f}s: local speaker {local} matched "
                f"Speaker_{glob} on {secs:.1f}s of {local_talk[local]:.1f}s"
            )
    if not overlap:
        notes.append(
            f"no shared speech at {lo:.1f}-{hi:.1f}s: speakers after {lo:.1f}s may be "
            "labelled differently from those before"
        )
    for local in sorted({c.speaker for c in current}):
        if local not in mapping:
            mapping[local] = next_id
            next_id += 1
    return mapping, notes
