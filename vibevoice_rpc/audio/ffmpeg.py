"""The ffmpeg command-line program: found by :func:`find_ffmpeg`, used only as the fallback when
PyAV is missing or cannot decode a file.

Started with an argument list (never a shell), ``stdin=DEVNULL``, no console window on Windows and
stderr to a temporary file; it writes float32 WAV at the source rate into a pipe that is read in
blocks. See docs/AUDIO.md ("The ffmpeg program: kept as a fallback", "ffmpeg lookup order").
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO

import numpy as np

from ..config import ffmpeg_program
from .sink import (
    DecodedAudio,
    NotDecoded,
    Pipeline,
    block_frames,
    check_format,
    decoded_audio,
)

log = logging.getLogger(__name__)

_BLOCK_SECONDS = 10.0


def find_ffmpeg(configured: str | None = None) -> str | None:
    """The ffmpeg to use, or None: ``configured`` (file or folder; the server passes
    ``VIBEVOICE_FFMPEG``, checked at start by :mod:`.config`), then next to the frozen executable
    (and PyInstaller's ``_internal`` folder), then ``PATH``. A configured value that is not (or no
    longer) an ffmpeg executable is logged and the search goes on."""
    configured = (configured or "").strip()
    if configured:
        program = ffmpeg_program(configured)
        if program is not None:
            return program
        log.warning(
            "the ffmpeg program %r (VIBEVOICE_FFMPEG) is not an ffmpeg executable; looking elsewhere",
            configured,
        )
    if getattr(sys, "frozen", False):
        dirs = [os.path.dirname(os.path.abspath(sys.executable))]
        meipass = getattr(sys, "_MEIPASS", None)
        if meipass:
            dirs.append(str(meipass))
        for folder in dirs:
            program = ffmpeg_program(folder)
            if program is not None:
                return program
    return shutil.which("ffmpeg")


def _read_into(stream: IO[bytes], view: memoryview) -> int:
    """Fill ``view`` from ``stream``; fewer bytes only at end of stream."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    buf = bytearray(n)
    return bytes(buf[: _read_into(stream, memoryview(buf))])


def _read_wav_header(stream: IO[bytes]) -> tuple[int, int] | None:
    """(rate, channels) of the float32 WAV ffmpeg streams (sizes unknown), up to the data chunk."""
    riff = _read_exact(stream, 12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
        return None
    rate = channels = 0
    while True:
        head = _read_exact(stream, 8)
        if len(head) < 8:
            return None
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        if cid == b"data":
            return (rate, channels) if rate > 0 and channels > 0 else None
        if size > 1 << 20:
            return None
        body = _read_exact(stream, size + (size & 1))
        if cid == b"fmt " and len(body) >= 16:
            _tag, channels, rate = struct.unpack("<HHI", body[:8])
            if struct.unpack("<H", body[14:16])[0] != 32:
                return None


def _ffmpeg_messages(text: str, full: str) -> str:
    """ffmpeg's error lines, deduplicated, without object addresses and our own path."""
    lines: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^\[(\w+) @ 0x[0-9a-f]+\] ", r"\1: ", line.strip())
        line = line.replace(f"file:{full}: ", "").replace(f"file:{full}", "input")
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines[:4])[:500]


def decode_ffmpeg(
    ffmpeg: str,
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float = 1.0,
) -> DecodedAudio:
    # "file:" keeps names that start with "-" or look like "proto:…" from reading as options/URLs.
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "file:" + full]
    cmd += ["-vn", "-sn", "-dn", "-c:a", "pcm_f32le", "-f", "wav", "-"]
    kwargs: dict = {}
    if os.name == "nt":  # pragma: no cover - Windows only
        kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
    with tempfile.TemporaryFile() as errfile:  # a file, not a pipe: ffmpeg can never block on it
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errfile,
                bufsize=0,
                **kwargs,
            )
        except OSError as exc:
            raise NotDecoded(f"could not start {ffmpeg}: {exc}") from None
        pipe: Pipeline | None = None
        try:
            _grow_pipe(proc.stdout)
            header = _read_wav_header(proc.stdout)  # type: ignore[arg-type]
            if header is not None:
                rate, channels = header
                pipe = Pipeline(rate, channels, 0, limit, shown, scale=scale)  # length unknown
                raw = np.empty(block_frames(rate, channels, _BLOCK_SECONDS) * channels, np.float32)
                view = memoryview(raw).cast("B")
                while True:
                    if check_cancel is not None:
                        check_cancel()
                    nbytes = _read_into(proc.stdout, view)  # type: ignore[arg-type]
                    n = nbytes // (4 * channels)
                    if n:
                        pipe.feed(raw[: n * channels].reshape(n, channels))
                    if nbytes < len(view):
                        break
            try:  # stdout is at its end, or unreadable (then ffmpeg must not block on a full pipe)
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.wait()
        errfile.seek(0)
        messages = _ffmpeg_messages(errfile.read().decode("utf-8", "replace"), full)
    if pipe is None and rc != 0:
        # ffmpeg's conversion to float (swresample) fails on more than 64 channels before any
        # output: ask ffmpeg what the stream is, to refuse it as every other decoder does.
        stream = _probe_stream(ffmpeg, full, kwargs)
        if stream is not None:
            check_format(*stream, shown)
    if pipe is None or pipe.n_in == 0:
        if rc == 0 or "does not contain any stream" in messages or "matches no streams" in messages:
            raise NotDecoded(messages or "the file holds no audio samples", empty=True)
        raise NotDecoded(messages or f"ffmpeg exited with code {rc}")
    samples = pipe.finish()
    warnings: list[str] = []
    if rc != 0 or messages:
        warnings.append(
            f"ffmpeg reported errors (the file may be truncated or damaged); decoded "
            f"{pipe.seconds:.1f} s: {messages or f'exit code {rc}'}"
        )
    return decoded_audio(samples, pipe.rate, pipe.channels, "ffmpeg", warnings)


# ffmpeg's description of an input stream, e.g. "Stream #0:0: Audio: pcm_s16le, 24000 Hz,
# 255 channels, s16" (a named layout, "mono", "stereo", "5.1(side)", … holds at most 24).
_STREAM_LINE = re.compile(r"Stream #\S+.*?: Audio: .*?, (\d+) Hz, (?:(\d+) channels|[^,]+)")


def _probe_stream(ffmpeg: str, full: str, kwargs: dict) -> tuple[int, int] | None:
    """(rate, channels) of the first audio stream as ``ffmpeg -i`` describes it, or None."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-i", "file:" + full]
    with tempfile.TemporaryFile() as errfile:  # read back at most 64 KB (tags can be long)
        try:
            subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
                timeout=30,
                check=False,
                **kwargs,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        errfile.seek(0)
        text = errfile.read(65536).decode("utf-8", "replace")
    match = _STREAM_LINE.search(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 1)


def _grow_pipe(stream: object) -> None:
    # Fewer, larger reads: a 1 MiB pipe instead of 64 KiB (Linux only; harmless where refused).
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, OSError):
        pass
