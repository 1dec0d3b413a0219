"""Model output text → segments: a streaming JSON-array parser and the speaker labels.

VibeVoice-ASR answers ``<|im_start|>assistant\\n[{"Start":0,"End":15.43,"Speaker":0,
"Content":"…"},…]<|im_end|>`` (``assistant\\n[…]`` once special tokens are skipped). Keys are
case-sensitive, ``Speaker`` is an int, and 0 is a valid speaker and a valid time.

:class:`IncrementalParser` scans the text as it streams in, with a small state machine that
respects JSON strings and escapes, so chunk boundaries may fall anywhere (inside a string, between
a backslash and the escaped character, …). Each complete top-level ``{…}`` inside the array
becomes a :class:`~vibevoice_rpc.messages.Segment` as soon as its closing brace arrives.
:func:`parse_transcript` is the same parser fed the whole text at once, so streaming and batch
results are identical.

No torch here. The loop detector is :mod:`vibevoice_rpc.transcription.repetition`, language id :mod:`vibevoice_rpc.transcription.language`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..messages import Segment

__all__ = [
    "ParsedTranscript",
    "IncrementalParser",
    "normalize_segment",
    "parse_transcript",
    "is_non_speech",
    "parse_speaker",
    "speaker_label",
]

UNKNOWN_SPEAKER = "Speaker_unknown"
# Speaker ids above this are labels, not numbers: a meeting has a handful of speakers, and an id
# the model writes as 1e308 must not become a 309-digit number linked across windows.
MAX_SPEAKER_ID = 999
_EXCERPT_CHARS = 80
_KEEP_CHARS = 400  # how much stray text (before/after the array) is kept for warnings

# Key aliases, compared after lower-casing and dropping spaces, "_" and "-".
_START_KEYS = ("start", "starttime", "begin", "from", "start_s")
_END_KEYS = ("end", "endtime", "stop", "to", "end_s")
_SPEAKER_KEYS = ("speaker", "speakerid", "spk", "speakerlabel")
_TEXT_KEYS = ("content", "text", "transcript", "transcription")

_SPECIAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_ROLE_RE = re.compile(r"^\s*(?:assistant|system|user)\b\s*", re.IGNORECASE)
_SPEAKER_PREFIX_RE = re.compile(
    r"^\s*(?:speaker|spk|s(?=[\s_#:-]*\d+\s*$))[\s_#:-]*", re.IGNORECASE
)
_CLOCK_RE = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)\s*$")
_LABEL_CLEAN_RE = re.compile(r"[^\w.-]+")
# The model's non-speech segments: "[Silence]", "[Music]", "[Environmental Sounds]", "[Unintelligible]".
_NON_SPEECH_RE = re.compile(r"^(?:\s*\[[^\[\]]*[^\s\[\]][^\[\]]*\])+\s*$")


@dataclass
class ParsedTranscript:
    """The parse of one model output.

    ``truncated``: the output ended before the array was closed (token budget, a stop, a cut);
    ``raw_count``: complete JSON objects decoded, before empty/invalid ones were dropped.
    """

    segments: list[Segment] = field(default_factory=list)
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    raw_count: int = 0

    @property
    def num_speakers(self) -> int:
        return count_speakers(self.segments)

    @property
    def text(self) -> str:
        return spoken_text(self.segments)


def count_speakers(segments: Iterable[Segment]) -> int:
    """Distinct numbered speakers of the speech segments (not ``[Silence]``, ``N/A``, …)."""
    return len({s.speaker_id for s in segments if s.speaker_id is not None and not s.non_speech})


def spoken_text(segments: Iterable[Segment]) -> str:
    """The words of the speech segments, without non-speech tags such as ``[Music]``."""
    return " ".join(s.text for s in segments if not s.non_speech)


# --- one segment ----------------------------------------------------------------------------


def _fold_key(key: str) -> str:
    return key.lower().replace(" ", "").replace("_", "").replace("-", "")


def _lookup(raw: Mapping[str, Any], exact: str, aliases: tuple[str, ...]) -> tuple[bool, Any]:
    if exact in raw:
        return True, raw[exact]
    folded = {_fold_key(str(k)): v for k, v in raw.items()}
    for alias in aliases:
        key = _fold_key(alias)
        if key in folded:
            return True, folded[key]
    return False, None


def _as_seconds(value: Any) -> float | None:
    """A time in seconds from a number, a numeric string, or ``[h:]mm:ss(.ff)``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().rstrip("sS").strip()
        clock = _CLOCK_RE.match(text)
        try:
            if clock:
                hours = int(clock.group(1) or 0)
                seconds = hours * 3600 + int(clock.group(2)) * 60 + float(clock.group(3))
            else:
                seconds = float(text)
        except ValueError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) else None


def parse_speaker(value: Any) -> tuple[str, int | None]:
    """The label and the number of a speaker as the model wrote it.

    A speaker id (a whole number 0-:data:`MAX_SPEAKER_ID`: an int, an integral float, a numeric or
    "Speaker 1"-like string) is ``("Speaker_<n>", n)``. Anything else keeps what the model said as
    a cleaned label (at most 32 characters) with no number: ``"N/A"`` → ``("Speaker_N_A", None)``,
    ``2.5`` → ``("Speaker_2.5", None)``, ``"Bob"`` → ``("Speaker_Bob", None)``, ``1e308`` →
    ``("Speaker_1e_308", None)``, ``-1`` → ``("Speaker_-1", None)``; a missing, empty or
    non-scalar speaker is ``("Speaker_unknown", None)``. Only numbered speakers are linked across
    windows and counted.
    """
    if isinstance(value, bool) or value is None:
        return UNKNOWN_SPEAKER, None
    if isinstance(value, int):
        if 0 <= value <= MAX_SPEAKER_ID:
            return f"Speaker_{value}", value
        # A label, not a number (no 309-digit ids): short ints as written, huge ones as 1e+308.
        if abs(value) < 10**15:
            return _label(str(value))
        exponent = int(abs(value).bit_length() * math.log10(2))  # (no float holds 10**400)
        return _label(f"{'-' if value < 0 else ''}1e+{exponent}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return UNKNOWN_SPEAKER, None
        if value.is_integer() and 0 <= value <= MAX_SPEAKER_ID:
            return parse_speaker(int(value))
        return _label(f"{value:g}")
    if isinstance(value, str):
        text = _SPEAKER_PREFIX_RE.sub("", value.strip())  # "Speaker 1", "SPEAKER_01", "spk2"
        if text.isascii() and text.isdigit():
            digits = text.lstrip("0") or "0"  # (int() of 4,300+ digits raises)
            return parse_speaker(int(digits)) if len(digits) <= 3 else _label(text)
        try:
            number = float(text)
        except ValueError:
            return _label(text)
        if not math.isfinite(number):
            return UNKNOWN_SPEAKER, None
        if not (number.is_integer() and 0 <= number <= MAX_SPEAKER_ID):
            return _label(text)  # as the model wrote it ("1e308", "2.5", "-3")
        return parse_speaker(number)
    return UNKNOWN_SPEAKER, None


def _label(text: str) -> tuple[str, None]:
    """A speaker that is not a number: ``Speaker_<text>`` with only word characters, dots and
    dashes, at most 32 of them."""
    cleaned = _LABEL_CLEAN_RE.sub("_", text).strip("_")[:32]
    return (f"Speaker_{cleaned}", None) if cleaned else (UNKNOWN_SPEAKER, None)


def speaker_label(value: Any) -> str:
    """The label part of :func:`parse_speaker`."""
    return parse_speaker(value)[0]


def is_non_speech(text: str) -> bool:
    """True when ``text`` is only bracketed tags such as ``[Silence]`` or ``[Music] [Applause]``."""
    return bool(_NON_SPEECH_RE.match(text))


def normalize_segment(raw: Any, duration: float, *, fallback_start: float = 0.0) -> Segment | None:
    """One decoded JSON object → a :class:`Segment`, or None when it holds no text.

    Times are clamped to ``[0, duration]`` (no upper clamp when ``duration`` is not positive) and
    swapped when start > end; a missing start becomes ``fallback_start``, a missing end the start.
    Keys tolerate case and spelling variants (``start``/``Start time``/``begin``, ``text``…).
    """
    if not isinstance(raw, Mapping):
        return None
    found, content = _lookup(raw, "Content", _TEXT_KEYS)
    if not found or content is None or isinstance(content, (bool, dict, list)):
        return None
    text = content.strip() if isinstance(content, str) else str(content).strip()
    if not text:
        return None

    _, start_raw = _lookup(raw, "Start", _START_KEYS)
    _, end_raw = _lookup(raw, "End", _END_KEYS)
    start = _as_seconds(start_raw)
    end = _as_seconds(end_raw)
    if start is None:
        start = end if end is not None and end < fallback_start else fallback_start
    if end is None:
        end = start
    limit = duration if (isinstance(duration, (int, float)) and math.isfinite(duration)) else 0.0
    start = max(0.0, start)
    end = max(0.0, end)
    if limit > 0:
        start = min(start, limit)
        end = min(end, limit)
    if start > end:
        start, end = end, start

    _, speaker = _lookup(raw, "Speaker", _SPEAKER_KEYS)
    label, number = parse_speaker(speaker)
    return Segment(
        speaker=label,
        start_time=round(start, 3),
        end_time=round(end, 3),
        text=text,
        speaker_id=number,
        non_speech=is_non_speech(text),
    )


# --- the streaming parser -------------------------------------------------------------------

_PREAMBLE, _ARRAY, _OBJECT, _AFTER = range(4)
# Characters that matter inside an object, outside / inside a JSON string.
_OBJECT_STOPS = re.compile(r'[{}"]')
_STRING_STOPS = re.compile(r'["\\]')
_ARRAY_START = re.compile(r"[\[{]")


def _excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return json.dumps(text[:limit] + ("…" if len(text) > limit else ""), ensure_ascii=False)


def _residue(text: str) -> str:
    """Stray text without special tokens, the role word and whitespace."""
    return _ROLE_RE.sub("", _SPECIAL_TOKEN_RE.sub(" ", text), count=1).strip()


class IncrementalParser:
    """Streaming parser of the model's JSON segment array.

    ``feed(chunk)`` returns the segments completed by that chunk; ``finish()`` returns the whole
    result (the same as :func:`parse_transcript` of the concatenated chunks, however they were cut).
    """

    def __init__(self, duration: float) -> None:
        self.duration = float(duration)
        self._state = _PREAMBLE
        self._preamble: list[str] = []
        self._preamble_len = 0
        self._after: list[str] = []
        self._after_len = 0
        self._junk: list[str] = []  # non-whitespace between elements of the array
        self._junk_len = 0
        self._obj: list[str] = []  # text of the object being read
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._saw_brace_without_bracket = False
        self._segments: list[Segment] = []
        self._warnings: list[str] = []
        self._raw_count = 0
        self._dropped_empty = 0
        self._duplicates = 0
        self._malformed = 0
        self._last_end = 0.0
        self._ends: list[int] = []  # per segment: offset in the fed text just after its "}"
        self._consumed = 0  # characters fed before the current chunk
        self._head: list[str] = []  # the start of the output, for warnings
        self._head_len = 0
        self._finished: ParsedTranscript | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        """All segments completed so far."""
        return list(self._segments)

    @property
    def segment_end_offsets(self) -> list[int]:
        """Per completed segment, the offset just after its closing brace in the text fed so far."""
        return list(self._ends)

    @property
    def last_end_time(self) -> float:
        """The latest end time among completed segments (for progress = last end ÷ duration)."""
        return self._last_end

    @property
    def closed(self) -> bool:
        """True once the array's closing ``]`` has been seen."""
        return self._state == _AFTER

    def feed(self, chunk: str) -> list[Segment]:
        """Consume more decoded text; return the segments it completed, in order."""
        if self._finished is not None:
            raise RuntimeError("IncrementalParser.feed() after finish()")
        if not chunk:
            return []
        if self._head_len < _KEEP_CHARS:
            self._head.append(chunk[: _KEEP_CHARS - self._head_len])
            self._head_len += len(self._head[-1])
        before = len(self._segments)
        i, n = 0, len(chunk)
        while i < n:
            state = self._state
            if state == _OBJECT:
                i = self._scan_object(chunk, i)
            elif state == _ARRAY:
                i = self._scan_array(chunk, i)
            elif state == _PREAMBLE:
                i = self._scan_preamble(chunk, i)
            else:
                self._keep_after(chunk[i:])
                i = n
        self._consumed += n
        return self._segments[before:]

    def finish(self) -> ParsedTranscript:
        """End of output: the final result. Idempotent."""
        if self._finished is not None:
            return self._finished
        warnings = list(self._warnings)
        truncated = False
        head = "".join(self._head)
        if self._state == _PREAMBLE or (
            self._raw_count == 0 and self._malformed == 0 and (self._junk or self._after_residue())
        ):
            # No '[' at all, or a bracketed something that held no JSON object ("[Speaker 0]: hi").
            if not _residue(head):
                warnings.append("the model produced no transcript text")
            else:
                warnings.append(
                    f"model output is not a JSON segment list; no segments: {_excerpt(head)}"
                )
        else:
            preamble = _residue("".join(self._preamble))
            if preamble:
                warnings.insert(0, f"ignored text before the segment list: {_excerpt(preamble)}")
            if self._saw_brace_without_bracket:
                warnings.insert(0, "the segment list had no opening '['")
            # Without an opening '[' there is no closing ']' to wait for: only a cut object counts.
            bare = self._saw_brace_without_bracket and self._state == _ARRAY
            if self._state in (_ARRAY, _OBJECT) and not bare:
                truncated = True
                warnings.append(
                    "model output ended inside the segment list (truncated); "
                    f"kept {len(self._segments)} complete segments"
                )
            else:
                trailing = self._after_residue()
                if trailing:
                    warnings.append(f"ignored text after the segment list: {_excerpt(trailing)}")
            if self._junk:
                junk = "".join(self._junk)
                warnings.append(f"ignored stray text inside the segment list: {_excerpt(junk)}")
        if self._malformed:
            warnings.append(f"skipped {self._malformed} malformed segment(s)")
        if self._duplicates:
            warnings.append(f"dropped {self._duplicates} repeated segment(s)")
        if self._dropped_empty:
            warnings.append(f"dropped {self._dropped_empty} segment(s) without text")
        self._finished = ParsedTranscript(
            segments=list(self._segments),
            truncated=truncated,
            warnings=warnings,
            raw_count=self._raw_count,
        )
        return self._finished

    # -- states -----------------------------------------------------------------------------

    def _scan_preamble(self, chunk: str, i: int) -> int:
        n = len(chunk)
        while i < n:
            match = _ARRAY_START.search(chunk, i)
            if match is None:
                self._keep_preamble(chunk[i:])
                return n
            j = match.start()
            self._keep_preamble(chunk[i:j])
            if chunk[j] == "[":
                self._state = _ARRAY
                return j + 1
            if not _residue("".join(self._preamble)):
                # A '{' right after the role word: the model dropped the '['; read objects anyway.
                self._saw_brace_without_bracket = True
                self._state = _ARRAY
                return j
            self._keep_preamble("{")  # a brace inside prose is not a segment list
            i = j + 1
        return n

    def _scan_array(self, chunk: str, i: int) -> int:
        n = len(chunk)
        while i < n:
            ch = chunk[i]
            if ch == "{":
                self._state = _OBJECT
                self._obj = ["{"]
                self._depth = 1
                self._in_string = False
                self._escape = False
                return i + 1
            if ch == "]":
                self._state = _AFTER
                return i + 1
            if not (ch == "," or ch.isspace()):
                if self._junk_len < _KEEP_CHARS:
                    self._junk.append(ch)
                    self._junk_len += 1
            i += 1
        return n

    def _scan_object(self, chunk: str, i: int) -> int:
        n = len(chunk)
        obj = self._obj
        while i < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    obj.append(chunk[i])
                    i += 1
                    continue
                match = _STRING_STOPS.search(chunk, i)
                if match is None:
                    obj.append(chunk[i:])
                    return n
                j = match.start()
                obj.append(chunk[i : j + 1])
                if chunk[j] == "\\":
                    self._escape = True
                else:
                    self._in_string = False
                i = j + 1
                continue
            match = _OBJECT_STOPS.search(chunk, i)
            if match is None:
                obj.append(chunk[i:])
                return n
            j = match.start()
            obj.append(chunk[i : j + 1])
            ch = chunk[j]
            i = j + 1
            if ch == '"':
                self._in_string = True
            elif ch == "{":
                self._depth += 1
            else:  # "}"
                self._depth -= 1
                if self._depth == 0:
                    self._state = _ARRAY
                    self._complete("".join(obj), self._consumed + i)
                    self._obj = []
                    return i
        return n

    # -- helpers ----------------------------------------------------------------------------

    def _complete(self, text: str, end_offset: int) -> None:
        try:
            raw = json.loads(text)
        except ValueError:
            self._malformed += 1
            if self._malformed == 1:
                self._warnings.append(f"malformed segment skipped: {_excerpt(text)}")
            return
        if not isinstance(raw, dict):
            self._malformed += 1
            return
        self._raw_count += 1
        segment = normalize_segment(raw, self.duration, fallback_start=self._last_end)
        if segment is None:
            self._dropped_empty += 1
            return
        if self._segments and self._segments[-1] == segment:
            self._duplicates += 1
            return
        self._segments.append(segment)
        self._ends.append(end_offset)
        self._last_end = max(self._last_end, segment.end_time)

    def _after_residue(self) -> str:
        return _residue("".join(self._after))

    def _keep_preamble(self, text: str) -> None:
        if text and self._preamble_len < _KEEP_CHARS:
            self._preamble.append(text[: _KEEP_CHARS - self._preamble_len])
            self._preamble_len += len(self._preamble[-1])

    def _keep_after(self, text: str) -> None:
        if text and self._after_len < _KEEP_CHARS:
            self._after.append(text[: _KEEP_CHARS - self._after_len])
            self._after_len += len(self._after[-1])


def parse_transcript(text: str, duration: float) -> ParsedTranscript:
    """Parse a whole model output (raw or with special tokens skipped) into segments.

    Tolerates a leading role word and special tokens, a truncated array (complete segments are kept,
    ``truncated`` is set), trailing text after ``]`` (a warning) and output that is not JSON at all
    (no segments, a warning quoting the start of it).
    """
    parser = IncrementalParser(duration)
    parser.feed(text or "")
    return parser.finish()
