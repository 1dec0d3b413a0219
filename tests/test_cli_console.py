"""The CLI in a console: a progress bar without ANSI escapes, and text in the console's encoding."""

from __future__ import annotations

import io
import os

import pytest

from vibevoice_rpc import commands
from vibevoice_rpc.messages import ProgressParams, Segment, SegmentParams

pytestmark = pytest.mark.timeout(30)


class Console(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(raw: str) -> list[str]:
    """What a terminal that knows only CR and LF shows (trailing blanks dropped)."""
    lines: list[str] = []
    line: list[str] = []
    pos = 0
    for ch in raw:
        if ch == "\r":
            pos = 0
        elif ch == "\n":
            lines.append("".join(line).rstrip())
            line, pos = [], 0
        else:
            if pos < len(line):
                line[pos] = ch
            else:
                line.append(ch)
            pos += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


def _progress(stage: str, value: float, message: str) -> ProgressParams:
    return ProgressParams(id="cli", stage=stage, progress=value, message=message)


def test_progress_bar_uses_no_escape_sequences_and_fits_the_console():
    out = Console()
    bar = commands._Bar(stream=out, columns=80)
    bar("progress", _progress("loading_audio", 0.0, "decoding audio " + "x" * 80))
    bar("progress", _progress("transcribing", 0.5, "half"))
    seg = Segment(speaker="Speaker_0", start_time=0.0, end_time=1.5, text="Grüß Gott 🎙")
    bar("segment", SegmentParams(id="cli", index=0, segment=seg))
    bar("progress", _progress("finalizing", 1.0, "done"))
    bar.done()
    raw = out.getvalue()
    assert "\x1b" not in raw
    assert all(len(chunk) < 80 for part in raw.split("\n") for chunk in part.split("\r"))
    screen = _screen(raw)
    # the segment line fully overwrote the longer bar line before it: nothing of it is left
    assert screen[0] == "Speaker_0 [0.0-1.5] Grüß Gott 🎙"
    assert screen[1].startswith("finalizing") and screen[1].endswith("100% done")
    assert len(screen) == 2


def test_progress_without_a_console_prints_one_line_per_stage():
    out = io.StringIO()
    bar = commands._Bar(stream=out)
    bar("progress", _progress("loading_audio", 0.0, "decoding audio"))
    bar("progress", _progress("loading_audio", 0.5, "decoding audio"))
    bar("progress", _progress("encoding", 0.0, "encoding"))
    bar.done()
    assert out.getvalue() == "loading_audio: decoding audio\nencoding: encoding\n"


def test_a_download_without_a_console_also_prints_its_progress_now_and_then():
    """``every``: a long stage (a 17 GB download) still shows it moves; the bar for a terminal is
    the same legacy-console-safe one as transcribe's (no ANSI escapes)."""
    out = io.StringIO()
    bar = commands._Bar(stream=out, every=0.0)  # every call is due
    bar("progress", _progress("downloading", 0.25, "a.safetensors (1/2): 1 GB of 4 GB"))
    bar("progress", _progress("downloading", 0.5, "a.safetensors (1/2): 2 GB of 4 GB"))
    quiet = commands._Bar(stream=io.StringIO(), every=3600.0)
    quiet("progress", _progress("downloading", 0.25, "1 GB of 4 GB"))
    quiet("progress", _progress("downloading", 0.5, "2 GB of 4 GB"))  # not due yet
    quiet("progress", _progress("downloading", 1.0, "4 GB of 4 GB"))  # the end always shows
    assert out.getvalue().splitlines() == [
        "downloading: a.safetensors (1/2): 1 GB of 4 GB",
        "downloading: a.safetensors (1/2): 2 GB of 4 GB",
    ]
    assert quiet.stream.getvalue().splitlines() == [
        "downloading: 1 GB of 4 GB",
        "downloading: 4 GB of 4 GB",
    ]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_output_to_a_console_goes_through_its_encoding():
    master, slave = os.openpty()  # a real terminal: os.isatty is true for it
    try:
        commands._write_text(slave, "Grüß Gott 🎙 → ok\n", encoding="cp437")
        data = os.read(master, 1000)
    finally:
        os.close(master)
        os.close(slave)
    # cp437 has ü and ß but no emoji or arrow: those become '?', never mojibake
    assert data.replace(b"\r\n", b"\n") == "Grüß Gott ? ? ok\n".encode("cp437")


def test_output_to_a_pipe_or_file_stays_utf8():
    r, w = os.pipe()
    try:
        commands._write_text(w, "Grüß 🎙\n", isatty=lambda fd: False)
        os.close(w)
        w = -1
        assert os.read(r, 1000) == "Grüß 🎙\n".encode()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


class _FakeConsoleK32:
    def __init__(self, cp: int) -> None:
        self.cp = cp

    def GetConsoleOutputCP(self) -> int:  # noqa: N802 - the Win32 name
        return self.cp


@pytest.mark.parametrize(("cp", "name"), [(850, "cp850"), (65001, "utf-8"), (99999, "utf-8")])
def test_console_encoding_on_windows_is_the_output_code_page(cp, name):
    assert commands.console_encoding(windows=True, k32=_FakeConsoleK32(cp)) == name


def test_console_encoding_elsewhere_is_the_locales():
    import codecs
    import locale

    expected = codecs.lookup(locale.getpreferredencoding(False)).name
    assert commands.console_encoding(windows=False) == expected
