"""The CLI in a console: a progress bar without ANSI escapes, log lines that do not run into it,
and text in the console's encoding."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vibevoice_rpc import commands
from vibevoice_rpc.logsink import LOG_DATEFMT, LOG_FORMAT, ConsoleStream
from vibevoice_rpc.messages import ProgressParams, Segment, SegmentParams

from .rpc_client import REPO, server_env

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


# --- log lines and the progress bar share the terminal (issue #19.11) ----------------------------

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - [\w.]+ - (DEBUG|INFO|WARNING|ERROR) - ")
BAR_LINE = re.compile(r"^\w+ +\[[#.]{30}\] +\d+% ")


def _logger(stream) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    logger = logging.getLogger(f"tests.console.n{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_log_record_clears_the_bar_and_the_bar_comes_back_below_it():
    out = ConsoleStream(Console())
    bar = commands._Bar(stream=out, columns=100)
    log = _logger(out)

    def screen() -> list[str]:
        return _screen(out._real.getvalue())

    bar("progress", _progress("loading_audio", 0.0, "decoding audio"))
    log.info("decoded a.opus with soundfile: 11.5 s")
    record, again = screen()
    assert LOG_LINE.match(record) and record.endswith(
        " - INFO - decoded a.opus with soundfile: 11.5 s"
    )
    assert BAR_LINE.match(again) and again.endswith("0% decoding audio")  # drawn again below
    bar("progress", _progress("loading_model", 0.5, "loading model (fp32)"))
    assert screen()[1].startswith("loading_model") and screen()[1].endswith(
        "50% loading model (fp32)"
    )
    log.warning("a warning\nin two lines")
    lines = screen()
    assert (
        len(lines) == 4 and LOG_LINE.match(lines[1]) and lines[1].endswith(" - WARNING - a warning")
    )
    assert lines[2] == "in two lines"
    assert lines[3].endswith("50% loading model (fp32)")  # the bar below the record again
    seg = Segment(speaker="Speaker_0", start_time=0.0, end_time=1.5, text="Hallo")
    bar("segment", SegmentParams(id="cli", index=0, segment=seg))
    assert screen()[3] == "Speaker_0 [0.0-1.5] Hallo"  # the segment line replaced the bar
    bar("progress", _progress("finalizing", 1.0, "done"))
    bar.done()
    out.write("error [-32004 model_not_found]: no model\n")  # after the bar: as it is
    lines = screen()
    assert len(lines) == 6 and BAR_LINE.match(lines[4]) and lines[4].endswith("100% done")
    assert lines[5] == "error [-32004 model_not_found]: no model"
    assert "\x1b" not in out._real.getvalue()


def test_records_from_other_threads_never_land_inside_the_bar_line():
    out = ConsoleStream(Console())
    bar = commands._Bar(stream=out, columns=100)
    log = _logger(out)
    start = threading.Barrier(5)

    def chatter(n: int) -> None:
        start.wait()
        for i in range(50):
            log.info("thread %d record %d", n, i)

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    start.wait()
    for i in range(200):
        bar("progress", _progress("transcribing", i / 200, f"step {i}"))
    for t in threads:
        t.join()
    bar.done()
    screen = _screen(out._real.getvalue())
    records = [line for line in screen if "record" in line]
    assert len(records) == 200
    assert all(
        LOG_LINE.match(line) and re.search(r" - thread \d record \d+$", line) for line in records
    )
    assert all(BAR_LINE.match(line) for line in screen if line not in records)


def test_an_hour_of_redraws_keeps_no_history():
    """A download redraws its bar for an hour without ending the line; the stream keeps only what
    the screen line holds (it once kept every redraw: quadratic copying)."""
    out = ConsoleStream(Console())
    bar = commands._Bar(stream=out, columns=100)
    for i in range(20000):
        bar("progress", _progress("downloading", i / 20000, f"{i} MB of 20000 MB"))
    assert len(out._line) < 100 and out._width < 100
    _logger(out).info("fetched model.safetensors")
    assert _screen(out._real.getvalue())[-1].endswith("19999 MB of 20000 MB")


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[list[str], int]:
    """Run the program with stderr on a pseudo-terminal; what the terminal shows, and the exit
    status. The bar is drawn only when stderr is a terminal, so a pipe would not show the bug."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vibevoice_rpc", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
            cwd=str(REPO),
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the program has exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=60)
    return _screen(b"".join(chunks).decode("utf-8", "replace")), code


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
@pytest.mark.timeout(120)
def test_log_lines_do_not_run_into_the_progress_bar_on_a_terminal(tmp_path: Path):
    """Was "loading_audio [....]    0% decoding audio2026-12-07 … - INFO - decoded …": the bar's
    unfinished line, continued by the record. A transcribe with a checkpoint that is found but
    does not load (the audio decodes and is logged while the bar is up; then -32004)."""
    from .checkpoints import unloadable_checkpoint

    model = unloadable_checkpoint(tmp_path / "unloadable")
    env = server_env(VIBEVOICE_MODEL_PATH=str(model), COLUMNS="100")
    clip = commands.sample_audio_path()
    screen, code = _on_a_terminal(["transcribe", str(clip), "--format", "srt"], env)
    assert code == 1, screen
    records = [line for line in screen if LOG_LINE.search(line)]
    assert any("decoded " in line for line in records), screen
    for line in records:
        assert LOG_LINE.match(line), line  # each record on a line of its own, from its start
    assert any(BAR_LINE.match(line) for line in screen), screen  # and the bar was there
    assert any(line.startswith("error [-32004") for line in screen), screen


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
@pytest.mark.timeout(120)
def test_download_log_lines_do_not_run_into_its_progress_bar(tmp_path: Path, tiny_model: Path):
    """The download command's bar and the HTTP client's INFO lines (one per file fetched)."""
    from .fake_hub import FakeHub

    with FakeHub.from_dir("microsoft/VibeVoice-ASR-HF", tiny_model) as hub:
        env = server_env(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(tmp_path),
            HF_HUB_OFFLINE="0",
            VIBEVOICE_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            COLUMNS="100",
        )
        screen, code = _on_a_terminal(["download", "--dir", str(tmp_path / "model")], env)
    assert code == 0, screen
    records = [line for line in screen if LOG_LINE.search(line)]
    assert records, screen
    for line in records:
        assert LOG_LINE.match(line), line
    assert any(BAR_LINE.match(line) and "100%" in line for line in screen), screen
