"""Long-audio windows: where to split, planning, who keeps a segment heard twice, and speaker linking."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from vibevoice_rpc.transcription.windowing import (
    CUT_TOLERANCE_SECONDS,
    TimedSpeech,
    Window,
    keeps_segment,
    link_late_speaker,
    link_speakers,
    plan_windows,
    quiet_split_points,
    voice_verdict,
)


def _even_splits(step: float) -> list[float]:
    return [step * k for k in range(1, 100)]


def test_audio_that_fits_is_one_window() -> None:
    (w,) = plan_windows(3599.0, 3600.0, 10.0, _even_splits)
    assert (w.start, w.end, w.core_start, w.core_end, w.next_start) == (
        0.0,
        3599.0,
        0.0,
        3599.0,
        None,
    )


def test_windows_overlap_by_the_overlap_and_never_exceed_the_limit() -> None:
    windows = plan_windows(10_000.0, 3600.0, 10.0, _even_splits)
    assert [w.index for w in windows] == list(range(len(windows)))
    assert windows[0].start == 0.0 and windows[-1].end == 10_000.0
    for prev, nxt in zip(windows, windows[1:], strict=False):
        assert nxt.core_start == prev.core_end == prev.end  # a window ends at the next split
        assert nxt.start == pytest.approx(nxt.core_start - 10.0)
        assert prev.next_start == nxt.start
    assert all(w.end - w.start <= 3600.0 + 1e-9 for w in windows)
    assert windows[-1].next_start is None


def test_the_overlap_shrinks_for_short_windows() -> None:
    windows = plan_windows(20.0, 8.0, 10.0, _even_splits)
    assert all(w.end - w.start <= 8.0 for w in windows)
    assert windows[1].core_start - windows[1].start == pytest.approx(2.0)  # a quarter of 8 s


# Window 1 of a pair split at 100 s, the next window's audio starting 10 s earlier.
FIRST = Window(0, 0.0, 100.0, 0.0, 100.0, next_start=90.0)
SECOND = Window(1, 90.0, 200.0, 100.0, 200.0, next_start=None)


@pytest.mark.parametrize(
    ("seg", "first", "second", "why"),
    [
        ((10.0, 20.0), True, None, "well before the overlap: the first window's"),
        ((92.0, 97.0), True, False, "ended before the split: the first window has it whole"),
        ((95.0, 100.0), False, True, "cut by the first window's end: the second hears it whole"),
        ((96.0, 99.9), False, True, "ends within the tolerance of the split: treated as cut"),
        ((80.0, 100.0), True, True, "longer than the overlap, cut on both sides: kept twice"),
        ((101.0, 110.0), None, True, "after the split: the second window's"),
    ],
)
def test_each_segment_heard_twice_is_kept_by_exactly_one_window(
    seg: tuple[float, float], first: bool | None, second: bool | None, why: str
) -> None:
    a, b = seg
    if first is not None:
        assert keeps_segment(FIRST, a, b) is first, why
    if second is not None:
        # the second window hears speech that began before its audio as starting there
        assert keeps_segment(SECOND, max(a, SECOND.start), b) is second, why


def test_the_two_windows_decide_alike_at_the_tolerance_edge() -> None:
    edge = 100.0 - CUT_TOLERANCE_SECONDS
    for end in (edge - 0.01, edge, edge + 0.01):
        assert keeps_segment(FIRST, 95.0, end) != keeps_segment(SECOND, 95.0, end)


def test_the_last_window_keeps_everything_after_its_split() -> None:
    assert keeps_segment(SECOND, 150.0, 200.0)
    assert keeps_segment(SECOND, 199.0, 200.0)


def test_speakers_are_linked_by_shared_talk_time() -> None:
    previous = [TimedSpeech(4, 80.0, 95.0), TimedSpeech(7, 95.0, 100.0)]
    current = [
        TimedSpeech(0, 90.0, 95.0),
        TimedSpeech(1, 95.0, 104.0),
        TimedSpeech(2, 104.0, 110.0),
    ]
    mapping, notes = link_speakers(previous, current, (90.0, 100.0), next_id=8)
    assert mapping == {0: 4, 1: 7, 2: 8}
    assert notes == []


def test_a_weak_link_is_reported() -> None:
    previous = [TimedSpeech(0, 90.0, 92.0)]
    current = [TimedSpeech(0, 90.0, 100.0)]  # only 2 of its 10 shared seconds match
    mapping, notes = link_speakers(previous, current, (90.0, 100.0), next_id=1)
    assert mapping == {0: 0}
    assert notes and "uncertain" in notes[0]


def test_no_shared_speech_is_reported() -> None:
    mapping, notes = link_speakers([], [TimedSpeech(0, 101.0, 105.0)], (90.0, 100.0), next_id=3)
    assert mapping == {0: 3}
    assert notes and "no shared speech" in notes[0]


def test_one_global_speaker_is_never_given_to_two_local_ones() -> None:
    previous = [TimedSpeech(0, 90.0, 100.0)]
    current = [TimedSpeech(0, 90.0, 96.0), TimedSpeech(1, 96.0, 100.0)]
    mapping, _ = link_speakers(previous, current, (90.0, 100.0), next_id=1)
    assert mapping == {0: 0, 1: 1}


# --- by voice: cosines of local speakers' voices to the global ones (transcription/voices.py) ---


def test_the_voice_verdicts_around_the_threshold() -> None:
    from vibevoice_rpc.voice.embedding import SAME_VOICE, VOICE_MARGIN

    assert [voice_verdict(SAME_VOICE + d) for d in (VOICE_MARGIN, 0.0, -0.01, -VOICE_MARGIN)] == [
        "same",
        "same?",
        "new?",
        "new?",
    ]
    assert voice_verdict(SAME_VOICE - VOICE_MARGIN - 0.01) == "new"


def test_a_speaker_silent_in_the_shared_stretch_is_linked_by_voice() -> None:
    # Global 0 talks in the shared stretch, global 5 (heard windows ago) does not; local 1's voice
    # is 5's: it gets 5 back instead of a new id, with no note.
    previous = [TimedSpeech(0, 90.0, 100.0)]
    current = [TimedSpeech(0, 90.0, 100.0), TimedSpeech(1, 100.0, 110.0)]
    voices = {0: {0: 0.95, 5: 0.60}, 1: {0: 0.55, 5: 0.96}}
    mapping, notes = link_speakers(previous, current, (90.0, 100.0), 6, voices=voices)
    assert (mapping, notes) == ({0: 0, 1: 5}, [])
    # by timing alone the same speaker is a new one
    assert link_speakers(previous, current, (90.0, 100.0), 6)[0] == {0: 0, 1: 6}


def test_a_weak_timing_pair_whose_voices_differ_is_left_to_the_voice() -> None:
    previous = [TimedSpeech(0, 90.0, 92.0)]
    current = [TimedSpeech(0, 90.0, 100.0)]  # 2 of 10 shared seconds match: weak
    mapping, notes = link_speakers(
        previous, current, (90.0, 100.0), 3, voices={0: {0: 0.40, 2: 0.97}}
    )
    assert mapping == {0: 2}
    assert len(notes) == 1 and "voices differ" in notes[0] and "not linked by timing" in notes[0]


def test_a_strong_timing_pair_whose_voices_differ_stays_linked_and_is_reported() -> None:
    previous = [TimedSpeech(0, 90.0, 100.0)]
    current = [TimedSpeech(0, 90.0, 100.0)]
    mapping, notes = link_speakers(previous, current, (90.0, 100.0), 1, voices={0: {0: 0.40}})
    assert mapping == {0: 0}
    assert len(notes) == 1 and "linked by timing" in notes[0]


def test_near_threshold_links_are_reported_and_times_are_the_files() -> None:
    previous = [TimedSpeech(0, 90.0, 100.0)]
    current = [TimedSpeech(0, 90.0, 100.0), TimedSpeech(1, 100.0, 110.0)]
    mapping, notes = link_speakers(
        previous,
        current,
        (90.0, 100.0),
        4,
        voices={1: {3: 0.89}},
        to_file=lambda t: t + 180.0,  # three minutes of music before, collapsed
    )
    assert mapping == {0: 0, 1: 3}
    assert len(notes) == 1 and "by voice alone" in notes[0] and "at 270.0-280.0s" in notes[0]


def test_a_speaker_without_evidence_waits_for_their_voice() -> None:
    previous = [TimedSpeech(0, 90.0, 100.0)]
    current = [TimedSpeech(0, 90.0, 100.0), TimedSpeech(1, 101.0, 102.0)]
    mapping, notes = link_speakers(previous, current, (90.0, 100.0), 2, wait_for_voice=True)
    assert (mapping, notes) == ({0: 0}, [])
    # a new voice, known as one: a new id at once
    mapping, _ = link_speakers(
        previous, current, (90.0, 100.0), 2, voices={1: {0: 0.5}}, wait_for_voice=True
    )
    assert mapping == {0: 0, 1: 2}


def test_a_late_speaker_by_voice() -> None:
    where = "at 231.0 s (window 5)"
    assert link_late_speaker({0: 0.95, 1: 0.97}, {1}, 3, where) == (0, None)  # 1 is taken
    glob, note = link_late_speaker({0: 0.89}, set(), 3, where)
    assert glob == 0 and note and "Speaker_0" in note and where in note
    glob, note = link_late_speaker({0: 0.86}, set(), 3, where)
    assert glob == 3 and note and "resembles Speaker_0" in note
    assert link_late_speaker({0: 0.50}, set(), 3, where) == (3, None)
    assert link_late_speaker({}, set(), 3, where) == (3, None)


# --- where to split: the quietest moment near each window's end ---------------------------------


def _noise_with_gaps(rate: int, seconds: float, gaps: list[float], gap_len: float = 0.4):
    x = np.random.default_rng(3).uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32)
    for g in gaps:
        x[int(g * rate) : int((g + gap_len) * rate)] *= 0.001
    return x


def test_split_points_empty_when_audio_fits_one_window():
    x = np.ones(8000 * 10, np.float32)
    assert quiet_split_points(x, 8000, 10.0) == []
    assert quiet_split_points(x[:100], 8000, 10.0, search_seconds=2.0) == []


def test_split_points_land_in_the_quiet_gaps():
    rate = 8000
    gaps = [24.0, 50.0, 77.0]
    x = _noise_with_gaps(rate, 100.0, gaps)
    points = quiet_split_points(x, rate, 30.0, search_seconds=10.0)
    assert len(points) == 3
    for p, g in zip(points, gaps, strict=True):
        assert g * rate <= p <= (g + 0.4) * rate, (p / rate, g)


def test_split_windows_never_exceed_the_window():
    rate = 8000
    x = _noise_with_gaps(rate, 95.0, [5.0])  # no gap where it is needed
    points = quiet_split_points(x, rate, 20.0, search_seconds=4.0)
    edges = [0, *points, len(x)]
    assert all(0 < b - a <= 20 * rate for a, b in pairwise(edges))
    assert all(a < b for a, b in pairwise(edges))
    for a, p in zip(edges, points, strict=False):
        assert p >= a + 16 * rate  # inside the last 4 s of its window


def test_split_points_are_deterministic_and_prefer_late_ties_in_silence():
    rate = 8000
    x = np.zeros(rate * 50, np.float32)
    first = quiet_split_points(x, rate, 20.0, search_seconds=5.0)
    assert first == quiet_split_points(x.copy(), rate, 20.0, search_seconds=5.0)
    assert all(isinstance(p, int) for p in first)
    assert first[0] > 19.8 * rate  # ties go to the latest frame: windows stay long
    assert len(first) == 2
