"""Model output text → segments: batch and streaming parser, loop detector, language detection."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from vibevoice_rpc.messages import Segment
from vibevoice_rpc.model.tiny import qwen_tokenizer_dir
from vibevoice_rpc.transcription.language import detect_language
from vibevoice_rpc.transcription.parser import (
    IncrementalParser,
    ParsedTranscript,
    normalize_segment,
    parse_transcript,
    speaker_label,
)
from vibevoice_rpc.transcription.repetition import RepetitionDetector

pytestmark = pytest.mark.timeout(60)


def _output(segments: list[dict], *, raw: bool = False) -> str:
    body = json.dumps(segments, ensure_ascii=False, separators=(",", ":"))
    return f"<|im_start|>assistant\n{body}<|im_end|>" if raw else f"assistant\n{body}"


REAL = (
    '<|im_start|>assistant\n[{"Start":0,"End":15.43,"Speaker":0,"Content":"Hello everyone, '
    'welcome."},{"Start":15.43,"End":21.9,"Speaker":1,"Content":"Thanks. Let\'s start."},'
    '{"Start":22.05,"End":30.5,"Speaker":0,"Content":"Okay."}]<|im_end|>'
)
TRICKY = _output(
    [
        {"Start": 0.0, "End": 1.5, "Speaker": 0, "Content": 'He said "hi" {not json} [x]'},
        {"Start": 1.5, "End": 3, "Speaker": 1, "Content": 'back\\slash \\" and\nnewline\ttab'},
        {"Start": 3, "End": 4.25, "Speaker": 2, "Content": "Grüß Gott — 我很好 😀🎉 👩‍👩‍👧"},
        {"Start": 4.25, "End": 5, "Speaker": 1, "Content": '}],{"Start":99}'},
    ]
)
# Content with JSON \u escapes (as ensure_ascii writes them), including a surrogate pair.
ESCAPED = (
    'assistant\n[{"Start":0,"End":2,"Speaker":0,"Content":"Gr\\u00fc\\u00df \\ud83d\\ude00 '
    '\\"q\\" \\\\"},{"Start":2,"End":4,"Speaker":1,"Content":"ok"}]'
)


# --- batch parsing --------------------------------------------------------------------------


def test_real_format_gives_segments_with_speaker_labels() -> None:
    parsed = parse_transcript(REAL, 31.0)
    assert parsed.segments == [
        Segment("Speaker_0", 0.0, 15.43, "Hello everyone, welcome.", speaker_id=0),
        Segment("Speaker_1", 15.43, 21.9, "Thanks. Let's start.", speaker_id=1),
        Segment("Speaker_0", 22.05, 30.5, "Okay.", speaker_id=0),
    ]
    assert not parsed.truncated
    assert parsed.warnings == []
    assert parsed.raw_count == 3
    assert parsed.num_speakers == 2


def test_speaker_zero_and_time_zero_are_kept() -> None:
    parsed = parse_transcript('[{"Start":0.0,"End":0,"Speaker":0,"Content":"a"}]', 10.0)
    assert parsed.segments == [Segment("Speaker_0", 0.0, 0.0, "a", speaker_id=0)]


def test_leading_assistant_after_skipping_special_tokens() -> None:
    raw = parse_transcript(REAL, 31.0)
    skipped = parse_transcript(REAL.replace("<|im_start|>", "").replace("<|im_end|>", ""), 31.0)
    bare = parse_transcript(REAL[REAL.index("[") :].replace("<|im_end|>", ""), 31.0)
    assert raw == skipped == bare
    assert raw.warnings == []


def test_other_text_before_the_array_is_a_warning_not_a_failure() -> None:
    parsed = parse_transcript(
        'Here is the transcript:\n[{"Start":0,"End":1,"Speaker":0,"Content":"a"}]', 5
    )
    assert [s.text for s in parsed.segments] == ["a"]
    assert any("before the segment list" in w and "Here is" in w for w in parsed.warnings)


def test_truncated_output_keeps_complete_segments() -> None:
    text = REAL.replace("<|im_end|>", "")
    cut = text.index(',{"Start":22.05') + 12
    parsed = parse_transcript(text[:cut], 31.0)
    assert [s.text for s in parsed.segments] == ["Hello everyone, welcome.", "Thanks. Let's start."]
    assert parsed.truncated
    assert any("truncated" in w for w in parsed.warnings)


def test_every_cut_point_keeps_exactly_the_segments_closed_before_it() -> None:
    full = parse_transcript(TRICKY, 10.0).segments
    closes = []  # index just past each segment's closing brace
    body = TRICKY[TRICKY.index("[") :]
    offset = TRICKY.index("[")
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(body):
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                closes.append(offset + i + 1)
    assert len(closes) == len(full) == 4
    for cut in range(len(TRICKY)):
        parsed = parse_transcript(TRICKY[:cut], 10.0)
        expected = sum(1 for c in closes if c <= cut)
        assert parsed.segments == full[:expected], cut
        assert parsed.truncated == (TRICKY.index("[") < cut < len(TRICKY)), cut


def test_trailing_garbage_after_the_array_is_a_warning() -> None:
    parsed = parse_transcript(REAL + "\nSome extra words and [1,2]", 31.0)
    assert len(parsed.segments) == 3
    assert not parsed.truncated
    assert any("after the segment list" in w and "Some extra" in w for w in parsed.warnings)


def test_special_tokens_and_whitespace_after_the_array_are_not_garbage() -> None:
    parsed = parse_transcript(REAL + "\n<|endoftext|>\n", 31.0)
    assert parsed.warnings == []


def test_non_json_output_gives_no_segments_and_quotes_it() -> None:
    text = "assistant\nSpeaker 1: hello there, this is not JSON at all " + "la " * 200
    parsed = parse_transcript(text, 10.0)
    assert parsed.segments == []
    assert not parsed.truncated
    assert len(parsed.warnings) == 1
    assert "not a JSON segment list" in parsed.warnings[0]
    assert "Speaker 1: hello there" in parsed.warnings[0]
    assert len(parsed.warnings[0]) < 200  # a short excerpt, not the whole output


def test_bracketed_prose_is_not_json() -> None:
    parsed = parse_transcript("[Speaker 0]: hello", 10.0)
    assert parsed.segments == []
    assert "not a JSON segment list" in parsed.warnings[0]


def test_random_model_noise_is_not_json() -> None:
    parsed = parse_transcript("Ft{_創新 כתובת創新 כתובת創新", 3.0)
    assert parsed.segments == [] and not parsed.truncated
    assert "not a JSON segment list" in parsed.warnings[0]


@pytest.mark.parametrize("text", ["", "   \n", "assistant\n", "<|im_start|>assistant\n<|im_end|>"])
def test_empty_output(text: str) -> None:
    parsed = parse_transcript(text, 10.0)
    assert parsed == ParsedTranscript(
        segments=[], truncated=False, warnings=["the model produced no transcript text"]
    )


def test_empty_array_is_an_empty_transcript() -> None:
    parsed = parse_transcript("assistant\n[]", 10.0)
    assert parsed.segments == [] and parsed.warnings == [] and not parsed.truncated


def test_quotes_escapes_unicode_and_emoji_in_content() -> None:
    parsed = parse_transcript(TRICKY, 10.0)
    assert [s.text for s in parsed.segments] == [
        'He said "hi" {not json} [x]',
        'back\\slash \\" and\nnewline\ttab',
        "Grüß Gott — 我很好 😀🎉 👩‍👩‍👧",
        '}],{"Start":99}',
    ]
    assert parsed.warnings == []
    escaped = parse_transcript(ESCAPED, 4.0)
    assert escaped.segments[0].text == 'Grüß 😀 "q" \\'


def test_times_are_clamped_to_the_audio_and_ordered() -> None:
    text = _output(
        [
            {"Start": -3, "End": 2, "Speaker": 0, "Content": "early"},
            {"Start": 8, "End": 25, "Speaker": 1, "Content": "late"},
            {"Start": 6, "End": 5, "Speaker": 0, "Content": "swapped"},
            {"Start": 30, "End": 40, "Speaker": 0, "Content": "beyond"},
        ]
    )
    segs = parse_transcript(text, 10.0).segments
    assert [(s.start_time, s.end_time) for s in segs] == [(0, 2), (8, 10), (5, 6), (10, 10)]


def test_segments_without_text_are_dropped_but_counted() -> None:
    text = _output(
        [
            {"Start": 0, "End": 1, "Speaker": 0, "Content": "  "},
            {"Start": 1, "End": 2, "Speaker": 0, "Content": ""},
            {"Start": 2, "End": 3, "Speaker": 0},
            {"Start": 3, "End": 4, "Speaker": 1, "Content": "  kept  "},
        ]
    )
    parsed = parse_transcript(text, 10.0)
    assert parsed.segments == [Segment("Speaker_1", 3.0, 4.0, "kept", speaker_id=1)]
    assert parsed.raw_count == 4
    assert any("without text" in w for w in parsed.warnings)


def test_number_of_distinct_speakers() -> None:
    speakers = [0, 1, 0, 2, 1, 0]
    text = _output(
        [
            {"Start": i, "End": i + 1, "Speaker": s, "Content": f"t{i}"}
            for i, s in enumerate(speakers)
        ]
    )
    parsed = parse_transcript(text, 10.0)
    assert parsed.num_speakers == 3
    assert len({s.speaker for s in parsed.segments}) == 3


def test_a_repeated_identical_segment_is_dropped() -> None:
    seg = {"Start": 1, "End": 2, "Speaker": 0, "Content": "again"}
    parsed = parse_transcript(_output([seg, seg, seg]), 10.0)
    assert len(parsed.segments) == 1
    assert any("repeated" in w for w in parsed.warnings)


def test_malformed_object_is_skipped_and_the_rest_kept() -> None:
    text = (
        'assistant\n[{"Start":0,"End":1,"Speaker":0,"Content":"a"},{"Start":1,,},'
        '{"Start":2,"End":3,"Speaker":1,"Content":"b"}]'
    )
    parsed = parse_transcript(text, 10.0)
    assert [s.text for s in parsed.segments] == ["a", "b"]
    assert any("malformed" in w for w in parsed.warnings)


def test_missing_opening_bracket_still_reads_objects() -> None:
    text = (
        'assistant\n{"Start":0,"End":1,"Speaker":0,"Content":"a"},'
        '{"Start":1,"End":2,"Speaker":1,"Content":"b"}'
    )
    parsed = parse_transcript(text, 10.0)
    assert [s.text for s in parsed.segments] == ["a", "b"]
    assert not parsed.truncated


# --- one segment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0, "Speaker_0"),
        (3, "Speaker_3"),
        (1.0, "Speaker_1"),
        ("2", "Speaker_2"),
        (" 4 ", "Speaker_4"),
        ("Speaker 5", "Speaker_5"),
        ("SPEAKER_06", "Speaker_6"),
        ("spk7", "Speaker_7"),
        ("A", "Speaker_A"),
        ("Speaker B", "Speaker_B"),
        ("Dr. Who?", "Speaker_Dr._Who"),
        (1.5, "Speaker_1.5"),
        (None, "Speaker_unknown"),
        (True, "Speaker_unknown"),
        ("", "Speaker_unknown"),
        ([1], "Speaker_unknown"),
        (float("nan"), "Speaker_unknown"),
    ],
)
def test_speaker_labels(value: object, label: str) -> None:
    assert speaker_label(value) == label


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (999, "Speaker_999"),
        (1000, "Speaker_1000"),
        (-1, "Speaker_-1"),
        (1e308, "Speaker_1e_308"),  # was a 309-digit speaker number
        pytest.param(10**400, "Speaker_1e_400", id="10**400"),
        ("1e308", "Speaker_1e308"),
        ("Speaker 12345", "Speaker_12345"),
        pytest.param("7" * 5000, "Speaker_" + "7" * 32, id="5000 digits"),  # int() raised
        ("SPEAKER_0999", "Speaker_999"),
    ],
)
def test_speaker_ids_outside_0_to_999_are_labels_not_numbers(value: object, label: str) -> None:
    from vibevoice_rpc.transcription.parser import parse_speaker

    got, number = parse_speaker(value)
    assert got == label and len(got) <= 40
    assert number == (int(label.rsplit("_", 1)[1]) if label == "Speaker_999" else None)


def test_key_variants_are_tolerated() -> None:
    seg = normalize_segment({"start": "1.5", "end_time": 3, "speaker_id": "1", "text": " hi "}, 10)
    assert seg == Segment("Speaker_1", 1.5, 3.0, "hi", speaker_id=1)
    seg = normalize_segment(
        {"Start time": "00:01:02.5", "End time": "1:03", "Speaker ID": 2, "Content": "x"}, 100
    )
    assert seg == Segment("Speaker_2", 62.5, 63.0, "x", speaker_id=2)


def test_missing_times_fall_back_to_the_previous_end() -> None:
    assert normalize_segment({"Content": "x", "Speaker": 0}, 10, fallback_start=4.0) == Segment(
        "Speaker_0", 4.0, 4.0, "x", speaker_id=0
    )
    assert normalize_segment({"Content": "x", "End": 6}, 10, fallback_start=4.0) == Segment(
        "Speaker_unknown", 4.0, 6.0, "x"
    )
    assert normalize_segment({"Content": "x", "Start": "soon", "End": 2}, 10) == Segment(
        "Speaker_unknown", 0.0, 2.0, "x"
    )


def test_non_dict_and_bad_content_give_none() -> None:
    assert normalize_segment([1, 2], 10) is None
    assert normalize_segment({"Content": None}, 10) is None
    assert normalize_segment({"Content": ["a"]}, 10) is None
    assert normalize_segment({"Content": 42, "Start": 0, "End": 1, "Speaker": 0}, 10).text == "42"


def test_zero_duration_does_not_clamp_the_end() -> None:
    assert normalize_segment({"Start": 1, "End": 2, "Content": "x"}, 0).end_time == 2.0


# --- streaming ------------------------------------------------------------------------------

_STREAM_CASES = [
    REAL,
    REAL.replace("<|im_start|>", "").replace("<|im_end|>", ""),
    TRICKY,
    ESCAPED,
    REAL[:-40],  # truncated
    TRICKY[: len(TRICKY) // 2],
    REAL + " trailing words",
    "assistant\nnot json at all {really} [no]",
    "",
    'Here: {"Start":0,"End":1,"Speaker":0,"Content":"a"}',
    'assistant\n{"Start":0,"End":1,"Speaker":0,"Content":"a"}',
    'assistant\n[{"Start":0,"End":1,"Speaker":0,"Content":"a"},{"Start":1,,},junk]',
]


def _chunks(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        step = rng.choice([1, 1, 2, 3, 5, 8, 13, rng.randint(1, 60)])
        out.append(text[i : i + step])
        i += step
    return out


@pytest.mark.parametrize("case", range(len(_STREAM_CASES)))
def test_incremental_equals_batch_on_random_chunkings(case: int) -> None:
    text = _STREAM_CASES[case]
    expected = parse_transcript(text, 31.0)
    rng = random.Random(case)
    for _ in range(150):
        parser = IncrementalParser(31.0)
        streamed: list[Segment] = []
        for chunk in _chunks(text, rng):
            streamed.extend(parser.feed(chunk))
        result = parser.finish()
        assert result == expected
        assert streamed == expected.segments


def test_one_character_at_a_time_equals_batch() -> None:
    for text in _STREAM_CASES:
        parser = IncrementalParser(31.0)
        streamed = [seg for ch in text for seg in parser.feed(ch)]
        assert parser.finish() == parse_transcript(text, 31.0)
        assert streamed == parser.finish().segments


def test_a_segment_is_emitted_as_soon_as_its_brace_closes() -> None:
    parser = IncrementalParser(31.0)
    first_close = REAL.index("}") + 1
    assert parser.feed(REAL[: first_close - 1]) == []
    assert parser.last_end_time == 0.0
    got = parser.feed(REAL[first_close - 1 : first_close])
    assert got == [Segment("Speaker_0", 0.0, 15.43, "Hello everyone, welcome.", speaker_id=0)]
    assert parser.last_end_time == 15.43
    parser.feed(REAL[first_close:])
    assert parser.last_end_time == 30.5
    assert parser.closed
    assert len(parser.segments) == 3


def test_finish_is_idempotent_and_feed_after_finish_raises() -> None:
    parser = IncrementalParser(10.0)
    parser.feed(REAL)
    assert parser.finish() is parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_long_transcript_parses_fast() -> None:
    segs = [
        {
            "Start": i * 2.0,
            "End": i * 2.0 + 1.9,
            "Speaker": i % 4,
            "Content": f"sentence number {i} " * 5,
        }
        for i in range(2000)
    ]
    text = _output(segs)
    # CPU time of this thread: the parser's own cost, not the time other processes on a shared
    # machine had the core (it does no I/O and never waits)
    t0 = time.thread_time()
    parser = IncrementalParser(4000.0)
    for i in range(0, len(text), 7):  # token-sized chunks
        parser.feed(text[i : i + 7])
    result = parser.finish()
    assert len(result.segments) == 2000
    assert time.thread_time() - t0 < 2.0


# --- repetition loops -----------------------------------------------------------------------


def _realistic_transcript(n_segments: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = (
        "the a we I you it that this and so but well okay yes no really think know mean budget "
        "schedule release meeting team next week quarter numbers plan customer feedback design "
        "review today tomorrow maybe right exactly sure thanks great problem question idea"
    ).split()
    segments, t = [], 0.0
    for i in range(n_segments):
        n = rng.randint(1, 30)
        content = " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."
        if i % 10 == 3:
            content = "Yes."  # short identical replies do happen, at different times
        if i % 17 == 5:
            content = "No, no, no, no, no."
        dur = round(rng.uniform(0.5, 8.0), 2)
        segments.append(
            {
                "Start": round(t, 2),
                "End": round(t + dur, 2),
                "Speaker": rng.randint(0, 3),
                "Content": content,
            }
        )
        t += dur + round(rng.uniform(0, 0.6), 2)
    return _output(segments, raw=True)


def _qwen_encoder():
    folder = qwen_tokenizer_dir()
    if folder is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def _token_streams() -> list[tuple[str, list[int]]]:
    text = _realistic_transcript(400)
    streams = [("chars", [ord(c) for c in text])]
    tok = _qwen_encoder()
    if tok is not None:
        streams.append(("qwen", tok.encode(text, add_special_tokens=False).ids))
    return streams


def test_detector_does_not_fire_on_a_long_realistic_transcript() -> None:
    for name, ids in _token_streams():
        det = RepetitionDetector()
        fired = [i for i, t in enumerate(ids) if det.push(t)]
        assert fired == [], (name, fired[:1])
        assert det.tokens_seen == len(ids)


def test_detector_fires_on_one_token_repeated() -> None:
    det = RepetitionDetector()
    prefix = list(range(100, 160))
    assert not det.extend(prefix)
    results = [det.push(7) for _ in range(70)]
    assert results.index(True) == 63  # the 64th identical token
    assert det.period == 1 and det.span == 64


@pytest.mark.parametrize("period", [2, 3, 7, 20, 41, 64])
def test_detector_fires_on_a_repeated_pattern(period: int) -> None:
    rng = random.Random(period)
    pattern = [rng.randrange(1000, 2000) for _ in range(period)]
    pattern[0] = 5  # make sure it is not itself periodic with a shorter period
    det = RepetitionDetector()
    det.extend(rng.randrange(3000, 4000) for _ in range(300))
    assert not det.stuck
    stream = pattern * (400 // period + 2)
    first = next(i for i, t in enumerate(stream) if det.push(t))
    assert first + 1 == 200  # as soon as the periodic span reaches min_span
    assert det.period == period


def test_detector_fires_on_a_segment_repeated_verbatim() -> None:
    tok = _qwen_encoder()
    seg = '{"Start":12.5,"End":14.0,"Speaker":1,"Content":"I think we should go."},'
    ids_of = (
        (lambda s: tok.encode(s, add_special_tokens=False).ids)
        if tok
        else (lambda s: [ord(c) for c in s])
    )
    prefix = ids_of(_realistic_transcript(20)[:-12])
    loop = ids_of(seg * 30)
    det = RepetitionDetector()
    assert not det.extend(prefix)
    assert det.extend(loop)
    assert det.period <= 64


def test_detector_ignores_periods_longer_than_max_period() -> None:
    pattern = list(range(1000, 1080))  # period 80 > 64
    det = RepetitionDetector(max_period=64)
    assert not det.extend(pattern * 10)


def test_detector_is_sticky_until_reset() -> None:
    det = RepetitionDetector(single_token_span=5)
    assert det.extend([1] * 5)
    assert det.push(2) is True
    det.reset()
    assert det.push(2) is False and det.tokens_seen == 1


def test_detector_is_cheap_per_token() -> None:
    ids = _token_streams()[0][1] * 10
    det = RepetitionDetector()
    t0 = time.thread_time()  # CPU time: the detector's cost, whatever else shares the machine
    for t in ids:
        det.push(t)
    per_token = (time.thread_time() - t0) / len(ids)
    assert per_token < 20e-6, per_token


# --- language -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Hello everyone, thanks for joining the meeting today.", "en"),
        ("Guten Morgen, ja, genau, das machen wir so. Wie geht es Ihnen?", "de"),
        ("Très bien, merci beaucoup, à demain.", "fr"),
        ("我很好，谢谢。今天的会议很重要。", "zh"),
        ("", "unknown"),
        ("123 456 7.5", "unknown"),
        ("ok", "unknown"),
        ("?!", "unknown"),
    ],
)
def test_detect_language(text: str, code: str) -> None:
    assert detect_language(text) == code
