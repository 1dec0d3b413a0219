"""Decode an audio file into what the model takes: 24 kHz mono float32, with clear errors.

This module is the front door: :func:`load_audio` checks the path, chooses the decoders to try for
the file's extension, retries a file with huge sample values scaled down, and turns the decoders'
failures into one :class:`AudioDecodeError` that says what went wrong. The work lives next to it,
one job per module:

- :mod:`.paths`: the path as given and the one to open; the file checks (``-32001``).
- :mod:`.libsndfile`: libsndfile, in process, for WAV, FLAC, Ogg Vorbis/Opus, MP3 and
  libsndfile's other formats; long files in parallel parts.
- :mod:`.pyav`: PyAV (FFmpeg's libraries in its wheel), in process, for everything else
  (M4A/AAC, WebM, MP4/MKV audio, WMA, …) and when libsndfile cannot open a file.
- :mod:`.ffmpeg`: the ffmpeg program (:func:`find_ffmpeg`), only when PyAV is missing or
  failed.
- :mod:`.sink`: what they all feed: downmix → check → soxr → one output array, so the
  output length is exact (``round(n_in * 24000 / source_rate)``); :class:`DecodedAudio`.

Not pydub: it decodes a whole file into memory in one piece (peak memory several times the output
for a long recording), cannot pass ``creationflags`` (a console window flashes on Windows), cannot
be cancelled midway, and needs ``audioop``, which Python 3.13 removed. See docs/AUDIO.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ..config import DEFAULT_MAX_AUDIO_SECONDS
from ..errors import AudioDecodeError
from . import ffmpeg as ffmpeg_program
from . import libsndfile, pyav
from .ffmpeg import find_ffmpeg
from .paths import PathArg, check_file, resolve_path
from .sink import HUGE_SCALE, DecodedAudio, Huge, NotDecoded

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "DecodedAudio",
    "load_audio",
    "find_ffmpeg",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = DEFAULT_MAX_AUDIO_SECONDS  # 4 h

# Names libsndfile cannot decode (or decodes wrongly): straight to ffmpeg.
_FFMPEG_FIRST_EXTS = frozenset(
    ".m4a .m4b .m4r .mp4 .m4v .aac .adts .webm .mkv .mka .wma .wmv .asf .mov .avi .amr .3gp .3g2 "
    ".ac3 .eac3 .dts .mp2 .mpg .mpeg .ts .flv .ape .wv .alac .spx .ra .rm".split()
)
_SOUNDFILE_EXTS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64".split()
)


def load_audio(
    path: PathArg,
    *,
    max_seconds: float | None = None,
    threads: int | None = None,
    ffmpeg: str | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> DecodedAudio:
    """Decode ``path`` to 24 kHz mono float32.

    ``path`` may be relative (to the working directory), start with ``~``, hold spaces or any
    Unicode. ``max_seconds`` (default 4 h) limits the duration: checked against the header before
    decoding when it is known, and while decoding. ``threads`` caps the parallel parts of a long
    WAV/FLAC/Ogg (default: the CPUs, at most 4; 1: one pass). ``ffmpeg`` is the ffmpeg program
    for the fallback, a file or a folder holding one (default: next to the frozen executable, then
    ``PATH``; see :func:`find_ffmpeg`). The server passes its :class:`~.config.Config`'s
    ``max_audio_seconds``, ``audio_threads`` and ``ffmpeg``; nothing here reads the environment.
    ``check_cancel`` is called between blocks, on the calling thread; it raises to abort.

    Raises :class:`AudioFileError` (not_found, is_directory, permission_denied, empty_file),
    :class:`AudioDecodeError` (unsupported_format, corrupt, no_samples, invalid_samples) and
    :class:`AudioTooLong`. Silence is not an error; a truncated file yields what is readable, with a
    note in ``warnings``.
    """
    started = time.monotonic()
    shown, full = resolve_path(path)
    check_file(full, shown)
    limit = DEFAULT_MAX_SECONDS if max_seconds is None else float(max_seconds)
    if not limit > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    ext = os.path.splitext(full)[1].lower()
    program = find_ffmpeg(ffmpeg)
    if ext in _FFMPEG_FIRST_EXTS:
        order = ["pyav", "ffmpeg", "soundfile"]
    else:
        order = ["soundfile", "pyav", "ffmpeg"]
    failures: list[str] = []
    empty = False
    for decoder in order:
        if decoder == "ffmpeg" and (program is None or empty):
            continue  # (PyAV found no audio stream: the ffmpeg program would not either)
        audio = None
        for scale in (1.0, HUGE_SCALE):
            try:
                audio = _run_decoder(
                    decoder, program, full, shown, limit, check_cancel, scale, threads
                )
                break
            except Huge:
                log.warning("%s holds huge sample values; decoding it again scaled down", shown)
            except NotDecoded as exc:
                log.debug("%s could not decode %s: %s", decoder, shown, exc)
                failures.append(f"{decoder}: {exc}")
                empty = empty or exc.empty
                break
        if audio is None:
            continue
        if scale != 1.0:
            audio.warnings.append(
                "the samples are far outside +-1 (float values up to ~1e38): scaled by 2^-80 "
                "(the model normalises the loudness anyway)"
            )
        log.info(
            "decoded %s with %s: %.1f s, %d Hz x %d ch -> 24 kHz mono in %.2f s",
            shown,
            audio.decoder,
            audio.duration,
            audio.source_rate,
            audio.source_channels,
            time.monotonic() - started,
        )
        return audio
    # The file may have vanished, emptied or become unreadable while we decoded: say that.
    check_file(full, shown)
    in_process = pyav.import_av() is not None
    raise _decode_failure(shown, ext, program is not None or in_process, failures, empty)


def _run_decoder(
    decoder: str,
    ffmpeg: str | None,
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float,
    threads: int | None,
) -> DecodedAudio:
    if decoder == "soundfile":
        return libsndfile.decode_soundfile(full, shown, limit, check_cancel, scale, threads=threads)
    if decoder == "pyav":
        return pyav.decode_pyav(full, shown, limit, check_cancel, scale)
    assert ffmpeg is not None
    return ffmpeg_program.decode_ffmpeg(ffmpeg, full, shown, limit, check_cancel, scale)


def _decode_failure(
    shown: str, ext: str, have_ffmpeg: bool, failures: list[str], empty: bool
) -> AudioDecodeError:
    said = "; ".join(failures)
    if empty:
        return AudioDecodeError(
            f"no audio samples in {shown} ({said})",
            kind="no_samples",
            hint="the file has no audio stream, or a header with zero samples",
            path=shown,
        )
    if not have_ffmpeg and ext not in _SOUNDFILE_EXTS:
        return AudioDecodeError(
            f"cannot decode {shown}: this format needs PyAV (the 'av' package) or the ffmpeg "
            f"program, and neither was found ({said})",
            kind="unsupported_format",
            hint="reinstall vibevoice-rpc with its 'av' dependency, or install ffmpeg, or set "
            "VIBEVOICE_FFMPEG to the ffmpeg executable",
            path=shown,
        )
    if ext in _SOUNDFILE_EXTS or ext in _FFMPEG_FIRST_EXTS:
        return AudioDecodeError(
            f"cannot decode {shown}: not a valid {ext[1:].upper()} file, or damaged ({said})",
            kind="corrupt",
            hint="the file may be truncated, damaged or misnamed; try re-exporting it",
            path=shown,
        )
    return AudioDecodeError(
        f"cannot decode {shown}: not a recognised audio format ({said})",
        kind="unsupported_format",
        hint="convert it to WAV, FLAC, MP3, Opus or M4A",
        path=shown,
    )
