"""Transcript output formats for the command line: json, srt, vtt, txt."""

from __future__ import annotations

import msgspec

from .messages import TranscribeResult

__all__ = ["render", "FORMATS"]

FORMATS = ("json", "srt", "vtt", "txt")


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: TranscribeResult, fmt: str) -> str:
    """Render ``result`` as ``json`` (the protocol's result), ``srt``, ``vtt`` or ``txt``.

    A non-speech segment (``[Silence]``, ``[Music]``…) is shown as its tag alone, with no speaker.
    """
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(result).decode(), indent=2) + "\n"
    lines: list[str] = []
    if fmt == "vtt":
        lines.append("WEBVTT\n")
    for i, seg in enumerate(result.segments, 1):
        if fmt == "txt":
            who = "" if seg.non_speech else f"{seg.speaker}: "
            lines.append(
                f"[{_clock(seg.start_time, '.')} - {_clock(seg.end_time, '.')}] {who}{seg.text}"
            )
            continue
        sep = "," if fmt == "srt" else "."
        if fmt == "srt":
            lines.append(str(i))
        lines.append(f"{_clock(seg.start_time, sep)} --> {_clock(seg.end_time, sep)}")
        if seg.non_speech:
            lines.append(seg.text)
        elif fmt == "vtt":
            lines.append(f"<v {seg.speaker}>{seg.text}")
        else:
            lines.append(f"[{seg.speaker}] {seg.text}")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines and fmt == "txt" else "")
