"""Decode an audio file into what the model takes: 24 kHz mono float32, with clear errors.

Three decoders feed one pipeline (read a block → average the channels → soxr stream → output array):

- ``soundfile`` (libsndfile, in process) for WAV, FLAC, Ogg Vorbis/Opus, MP3 and libsndfile's other
  formats. When the file's header gives the frame count and seeking is sample-exact, long files are
  decoded in parallel parts (one thread each; libsndfile and soxr release the GIL).
- ``pyav`` (PyAV: FFmpeg's libraries in its wheel, in process) for everything else (M4A/AAC, WebM,
  MP4/MKV audio, WMA, …) and as the fallback when libsndfile cannot open a file. One thread
  demuxes and decodes while the calling thread downmixes and resamples.
- ``ffmpeg`` (the command-line program, when one is found) only when PyAV is missing or failed: it
  writes float32 WAV at the source rate into a pipe that we read in blocks.

All of them resample here, so the output length is exact: ``round(n_in * 24000 / source_rate)``.
Not pydub: it decodes a whole file into memory in one piece (peak memory several times the output
for a long recording), cannot pass ``creationflags`` (a console window flashes on Windows), cannot
be cancelled midway, and needs ``audioop``, which Python 3.13 removed. See docs/AUDIO.md.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Union

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioDecodeError, AudioFileError, AudioTooLong
from .planner import SAMPLE_RATE

__all__ = [
    "TARGET_RATE",
    "DEFAULT_MAX_SECONDS",
    "DecodedAudio",
    "load_audio",
    "find_ffmpeg",
]

log = logging.getLogger(__name__)

TARGET_RATE = SAMPLE_RATE  # the model's rate (planner.SAMPLE_RATE)
DEFAULT_MAX_SECONDS = 4 * 3600.0
# soxr's 20-bit "high quality", what librosa and transformers use; "VHQ" costs ~15 % more.
RESAMPLE_QUALITY = "HQ"

_BLOCK_SECONDS = 10.0
_PARALLEL_MIN_SECONDS = 60.0  # shorter files take well under a second in one thread
_PART_MIN_SECONDS = 30.0
_OVERLAP_SECONDS = 1.0  # decoder pre-roll (Opus: 80 ms) and soxr's filter settle well within this
_PROBE_SECONDS = 0.25  # compared between neighbouring parts to prove the seek was exact
_PROBE_TOLERANCE = 1e-4
_PARALLEL_MIN_RATE = 1000  # below this a whole file is a few hundred samples a second: one pass
# libsndfile's frame count for a stream without a length (a FLAC written to a pipe): SF_COUNT_MAX.
_UNKNOWN_FRAMES = 1 << 62
# A declared container duration can be an estimate (from the bitrate); refuse before decoding only
# when it is clearly over the limit, and let the count while decoding settle the rest.
_DECLARED_TOLERANCE = 0.005
_PYAV_BLOCK_SECONDS = 5.0
_PYAV_QUEUE_BLOCKS = 3  # decoded blocks waiting for the resampler: bounded memory
_PYAV_MAX_BAD_PACKETS = 50  # consecutive packets that fail to decode before we stop
# Float samples so large that squaring them overflows float32 (soxr then returns NaN, and the
# model's loudness normalisation divides by an infinite RMS) are decoded again scaled by this power
# of two: the model normalises the loudness anyway, so only the relative amplitudes matter.
_HUGE_SCALE = 2.0**-80
# libsndfile seeks these sample-exactly. Not MP3: its frame count can be an estimate (no Xing/LAME
# header) and the first few hundred samples after a seek are wrong.
_SEEK_EXACT_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "AIFF", "AU", "CAF"})
# Names libsndfile cannot decode (or decodes wrongly): straight to ffmpeg.
_FFMPEG_FIRST_EXTS = frozenset(
    ".m4a .m4b .m4r .mp4 .m4v .aac .adts .webm .mkv .mka .wma .wmv .asf .mov .avi .amr .3gp .3g2 "
    ".ac3 .eac3 .dts .mp2 .mpg .mpeg .ts .flv .ape .wv .alac .spx .ra .rm".split()
)
_SOUNDFILE_EXTS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64".split()
)

PathArg = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Decoded audio: ``samples`` is C-contiguous float32 mono at ``sample_rate`` (24 kHz)."""

    samples: np.ndarray
    sample_rate: int
    duration: float
    source_rate: int
    source_channels: int
    decoder: str  # "soundfile", "pyav" or "ffmpeg"
    warnings: list[str] = field(default_factory=list)


class _NotDecoded(Exception):
    """A decoder could not decode the file; the next may. ``empty``: it opened but held nothing."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


class _Huge(Exception):
    """Finite samples too large to square in float32: decode again scaled by ``_HUGE_SCALE``."""


# --- paths and checks ------------------------------------------------------------------------


def _win_long_path(path: str) -> str:
    r"""Prefix ``\\?\`` (``\\?\UNC\`` for shares) so Windows opens paths past MAX_PATH (260)."""
    if len(path) < 260 or path.startswith("\\\\?\\"):
        return path
    if path.startswith("\\\\"):
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


def _resolve(path: PathArg) -> tuple[str, str]:
    """(path as given, for messages and ``error.data.path``; absolute path to open)."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    full = os.path.abspath(os.path.expanduser(raw)) if raw else raw
    if os.name == "nt":  # pragma: no cover - Windows only
        full = _win_long_path(full)
    return raw, full


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(b.removeprefix("\\\\?\\"))


def _check_file(full: str, shown: str) -> int:
    """Raise :class:`AudioFileError` unless ``full`` is a readable, non-empty file; return its size.

    Done before decoding because libsndfile's own message misleads (an undecodable MP3 is reported
    as "File does not exist or is not a regular file").
    """
    if not full:
        raise AudioFileError("no audio path given", kind="not_found", path=shown)
    try:
        st = os.stat(full)
    except PermissionError as exc:
        raise AudioFileError(
            f"permission denied: cannot reach {shown} ({exc.strerror})",
            kind="permission_denied",
            hint="check the permissions of the file and the folders above it",
            path=shown,
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        expanded = os.path.expanduser(shown)
        if os.path.isabs(expanded):
            where = "" if expanded == full or _same_path(expanded, full) else f", looked at {full}"
            hint = "check the path; an absolute path is used as given"
            if expanded != shown:
                where = f", looked at {full}"
                hint = "~ is the home folder of the user the engine runs as"
        else:
            where = f", looked at {full}"
            hint = f"a relative path is taken from the working directory {os.getcwd()}"
        raise AudioFileError(
            f"audio file not found: {shown} ({reason}{where})",
            kind="not_found",
            hint=hint,
            path=shown,
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioFileError(
            f"{shown} is a directory, not an audio file",
            kind="is_directory",
            hint="pass the path of an audio file inside it",
            path=shown,
        )
    if not stat.S_ISREG(st.st_mode):
        raise AudioFileError(
            f"{shown} is not a regular file (a device, pipe or socket)",
            kind="not_found",
            hint="save the audio to a file and pass that file's path",
            path=shown,
        )
    denied = not os.access(full, os.R_OK)
    if not denied:
        try:
            with open(full, "rb"):
                pass
        except PermissionError:
            denied = True
        except OSError as exc:
            raise AudioFileError(
                f"cannot open {shown}: {exc.strerror or exc}",
                kind="permission_denied",
                path=shown,
            ) from None
    if denied:
        raise AudioFileError(
            f"permission denied: cannot read {shown}",
            kind="permission_denied",
            hint="check the file's permissions, or whether another program holds it locked",
            path=shown,
        )
    if st.st_size == 0:
        raise AudioFileError(
            f"{shown} is empty (0 bytes)",
            kind="empty_file",
            hint="the recording may not have been written yet",
            path=shown,
        )
    return st.st_size


def _env_limit() -> float:
    raw = os.environ.get("VIBEVOICE_MAX_AUDIO_SECONDS", "").strip()
    if not raw:
        return DEFAULT_MAX_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("ignoring VIBEVOICE_MAX_AUDIO_SECONDS=%r (not a positive number)", raw)
        return DEFAULT_MAX_SECONDS
    return value


def _decode_threads() -> int:
    raw = os.environ.get("VIBEVOICE_AUDIO_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _too_long(shown: str, seconds: float, limit: float, *, stopped: bool) -> AudioTooLong:
    what = f"decoding stopped at {seconds:.1f} s" if stopped else f"it lasts {seconds:.1f} s"
    return AudioTooLong(
        f"audio is longer than the {limit:g} s limit ({what}): {shown}",
        hint="split the file, or raise VIBEVOICE_MAX_AUDIO_SECONDS",
        duration=round(seconds, 3),
        limit=limit,
        path=shown,
    )


# --- ffmpeg lookup -----------------------------------------------------------------------------


def _exe_names() -> tuple[str, ...]:
    return ("ffmpeg.exe", "ffmpeg") if os.name == "nt" else ("ffmpeg", "ffmpeg.exe")


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and (os.name == "nt" or os.access(path, os.X_OK))


def find_ffmpeg() -> str | None:
    """The ffmpeg to use, or None: ``$VIBEVOICE_FFMPEG`` (file or folder), then next to the frozen
    executable (and PyInstaller's ``_internal`` folder), then ``PATH``."""
    env = os.environ.get("VIBEVOICE_FFMPEG", "").strip()
    if env:
        cand = os.path.abspath(os.path.expanduser(env))
        if os.path.isdir(cand):
            for name in _exe_names():
                if _is_exe(os.path.join(cand, name)):
                    return os.path.join(cand, name)
        elif _is_exe(cand):
            return cand
        log.warning("VIBEVOICE_FFMPEG=%r is not an ffmpeg executable; looking elsewhere", env)
    if getattr(sys, "frozen", False):
        dirs = [os.path.dirname(os.path.abspath(sys.executable))]
        meipass = getattr(sys, "_MEIPASS", None)
        if meipass:
            dirs.append(str(meipass))
        for folder in dirs:
            for name in _exe_names():
                if _is_exe(os.path.join(folder, name)):
                    return os.path.join(folder, name)
    return shutil.which("ffmpeg")


# --- the shared pipeline: downmix → check → resample → one output array ----------------------


def _out_len(n_in: int, rate: int) -> int:
    return round(n_in * TARGET_RATE / rate)


def _channels_of(block: np.ndarray, planar: bool) -> list[np.ndarray]:
    if block.ndim == 1:
        return [block]
    return list(block) if planar else [block[:, c] for c in range(block.shape[1])]


def _mono(block: np.ndarray, planar: bool = False, scale: float = 1.0) -> np.ndarray:
    """The channels' average (``block`` is frames x channels, or channels x frames if ``planar``),
    times ``scale``."""
    chans = _channels_of(block, planar)
    if len(chans) == 1:
        return chans[0] * np.float32(scale) if scale != 1.0 else chans[0]
    # Column adds: ~30x faster than block.mean(axis=1), which reduces along the short axis.
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the check after
        out = chans[0] + chans[1]
        for c in chans[2:]:
            out += c
        out *= np.float32(scale / len(chans))
    return out


def _mono_checked(
    block: np.ndarray,
    first: int,
    rate: int,
    shown: str,
    *,
    planar: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """:func:`_mono`, checked by :func:`_check_samples`."""
    mono = _mono(block, planar, scale)
    try:
        _check_samples(mono, first, rate, shown)
    except AudioDecodeError:
        chans = _channels_of(block, planar)
        if len(chans) == 1:
            raise
        # Maybe the channel sum overflowed (finite values near float32's limit: 3e38 + 3e38).
        # Scale each channel first; only such a block pays for it. Real NaN/inf raise again.
        factor = np.float32(scale / len(chans))
        mono = chans[0] * factor
        for c in chans[1:]:
            mono += c * factor
        _check_samples(mono, first, rate, shown)
    return mono


def _check_samples(mono: np.ndarray, first: int, rate: int, shown: str) -> None:
    """Raise ``invalid_samples`` if ``mono`` (from sample ``first`` on) holds NaN or infinity, and
    :class:`_Huge` if its samples are finite but too large to square in float32."""
    if not mono.size:
        return
    # Sum of squares in float32 (BLAS, fast): finite exactly when every sample is finite and small
    # enough to be squared and summed without overflow; only then is the block certainly fine.
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.dot(mono, mono))):
            return
    finite = np.isfinite(mono)
    if finite.all():
        raise _Huge
    at = (first + int(np.argmin(finite))) / rate
    raise AudioDecodeError(
        f"audio contains NaN or infinite samples (first at {at:.3f} s): {shown}",
        kind="invalid_samples",
        hint="re-export the audio; the file holds invalid float sample values",
        path=shown,
        at_seconds=round(at, 3),
    )


class _Resampler:
    """soxr's streaming resampler to 24 kHz, or a pass-through when the source is 24 kHz already."""

    def __init__(self, rate: int) -> None:
        self._stream = None
        if rate != TARGET_RATE:
            self._stream = soxr.ResampleStream(
                rate, TARGET_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def __call__(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(np.ascontiguousarray(mono), last=last)

    def flush(self) -> np.ndarray:
        return self(np.zeros(0, np.float32), last=True)


class _Sink:
    """Blocks appended into one float32 array. Growing uses realloc (``ndarray.resize``), which on
    Linux remaps pages instead of copying, so peak memory stays near the final size. It never grows
    past ``cap`` samples (the longest output the duration limit allows) plus what one append needs:
    a file that turns out longer than the limit is refused before that."""

    def __init__(self, capacity: int, cap: int | None = None) -> None:
        self.cap = cap
        if cap is not None:
            capacity = min(capacity, cap)
        self.buf = np.empty(max(1, capacity), np.float32)
        self.n = 0

    def append(self, y: np.ndarray) -> None:
        need = self.n + len(y)
        if need > len(self.buf):
            grown = max(need, int(len(self.buf) * 1.25) + 60 * TARGET_RATE)
            if self.cap is not None:
                grown = max(need, min(grown, self.cap))
            self.buf.resize(grown, refcheck=False)
        self.buf[self.n : need] = y
        self.n = need

    def result(self, length: int) -> np.ndarray:
        """The array at exactly ``length`` samples: the resampler's last sample or two are padded
        (zeros) or trimmed so the duration is preserved to the sample."""
        if length > len(self.buf):
            self.buf.resize(length, refcheck=False)  # zero-filled
        elif length > self.n:
            self.buf[self.n : length] = 0.0
        if length != len(self.buf):
            self.buf.resize(length, refcheck=False)
        return self.buf


class _Pipeline:
    """Downmix, check, resample and collect blocks of one decoder's output at ``rate``.

    ``capacity`` is the expected output length (exact from a header, an estimate, or a guess);
    the limit is enforced per block, before the block is kept, so memory stays within the output
    of ``limit`` seconds whatever the file claims.
    """

    def __init__(
        self,
        rate: int,
        channels: int,
        capacity: int,
        limit: float,
        shown: str,
        *,
        scale: float = 1.0,
    ) -> None:
        self.rate = rate
        self.channels = channels
        self.shown = shown
        self.limit = limit
        self.scale = scale
        self.max_in = limit * rate
        self.n_in = 0
        self.resample = _Resampler(rate)
        self.sink = _Sink(capacity, cap=_out_len(math.floor(self.max_in), rate) + 64)

    def feed(self, block: np.ndarray, *, planar: bool = False) -> None:
        n = block.shape[-1] if planar and block.ndim == 2 else len(block)
        if self.n_in + n > self.max_in:
            raise _too_long(self.shown, (self.n_in + n) / self.rate, self.limit, stopped=True)
        mono = _mono_checked(
            block, self.n_in, self.rate, self.shown, planar=planar, scale=self.scale
        )
        self.n_in += n
        self.sink.append(self.resample(mono))

    def finish(self) -> np.ndarray:
        self.sink.append(self.resample.flush())
        return self.sink.result(_out_len(self.n_in, self.rate))


# --- soundfile -------------------------------------------------------------------------------


def _log_warnings(info_log: str) -> list[str]:
    """Truncation that libsndfile notices while opening (it then clamps the frame count)."""
    lines = info_log.splitlines()
    if any(line.startswith("data") and "should be" in line for line in lines) or (
        "File ended unexpectedly" in info_log
    ):
        return ["the file seems truncated (it holds less audio than its header says)"]
    if "lacks an end-of-stream" in info_log:
        return ["the Ogg stream has no end marker (the recording may have been cut off)"]
    return []


def _result(
    samples: np.ndarray, rate: int, channels: int, decoder: str, warnings: list[str]
) -> DecodedAudio:
    duration = len(samples) / TARGET_RATE
    return DecodedAudio(samples, TARGET_RATE, duration, rate, channels, decoder, warnings)


def _decode_soundfile(
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float = 1.0,
) -> DecodedAudio:
    try:
        f = sf.SoundFile(full)
    except Exception as exc:  # LibsndfileError, or TypeError/ValueError for odd headers
        raise _NotDecoded(_sf_message(exc, full)) from None
    with f:
        rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        fmt = str(f.format)
        warnings = _log_warnings(f.extra_info)
        if rate <= 0 or channels <= 0:
            raise _NotDecoded(f"invalid header ({rate} Hz, {channels} channels)")
        # A FLAC stream written to a pipe has no length in its header: libsndfile then says
        # SF_COUNT_MAX frames (and soundfile's read, which seeks after every block, fails after
        # the first one). Unknown, not endless: PyAV (or the ffmpeg program) decodes and counts,
        # the limit enforced per block.
        known = 0 < frames < _UNKNOWN_FRAMES
        if not known and frames != 0:
            raise _NotDecoded("the header gives no length (a stream written to a pipe)")
        if frames / rate > limit:
            raise _too_long(shown, frames / rate, limit, stopped=False)
        threads = _decode_threads()
        if (
            threads > 1
            and scale == 1.0
            and not warnings
            and fmt in _SEEK_EXACT_FORMATS
            and rate >= _PARALLEL_MIN_RATE
            and f.seekable()
            and frames / rate >= max(_PARALLEL_MIN_SECONDS, 2 * _PART_MIN_SECONDS)
        ):
            samples = _decode_parts(full, rate, channels, frames, threads, shown, check_cancel)
            if samples is not None:
                return _result(samples, rate, channels, "soundfile", [])
            log.warning("parallel decode of %s failed or did not line up; one pass now", shown)
            # The file may have vanished or shrunk since it was opened: say so as a file error.
            _check_file(full, shown)
            try:
                f.seek(0)
            except Exception as exc:
                raise _NotDecoded(_sf_message(exc, full)) from None
        pipe = _Pipeline(rate, channels, _out_len(frames, rate) + 1, limit, shown, scale=scale)
        block = int(rate * _BLOCK_SECONDS)
        buf = np.empty((block, channels) if channels > 1 else block, np.float32)
        error: str | None = None
        while True:
            if check_cancel is not None:
                check_cancel()
            try:
                got = f.read(dtype="float32", out=buf)
            except Exception as exc:  # a damaged frame midway: keep what was decoded
                error = _sf_message(exc, full) or type(exc).__name__
                break
            if not len(got):
                break
            pipe.feed(got)
    if pipe.n_in == 0:
        raise _NotDecoded(error or "the file holds no audio samples", empty=error is None)
    samples = pipe.finish()
    decoded = pipe.n_in / rate
    if error is not None or frames - pipe.n_in > 0.5 * rate:
        reason = f" ({error})" if error else ""
        warnings.append(
            f"the file seems truncated or damaged: decoded {decoded:.1f} s of the "
            f"{frames / rate:.1f} s its header announces{reason}"
        )
    return _result(samples, rate, channels, "soundfile", warnings)


def _sf_message(exc: BaseException, full: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.replace(f"Error opening {full!r}: ", "")
    # libsndfile's words for MP3 data it cannot parse; the file itself was checked before.
    if "does not exist" in text:
        text = "data not recognised"
    return text


def _copy_overlap(dst: np.ndarray, dst_at: int, src: np.ndarray, src_at: int) -> None:
    """Copy the part of ``src`` (starting at absolute index ``src_at``) that falls into ``dst``."""
    lo, hi = max(dst_at, src_at), min(dst_at + len(dst), src_at + len(src))
    if hi > lo:
        dst[lo - dst_at : hi - dst_at] = src[lo - src_at : hi - src_at]


def _decode_parts(
    full: str,
    rate: int,
    channels: int,
    frames: int,
    threads: int,
    shown: str,
    check_cancel: Callable[[], None] | None,
) -> np.ndarray | None:
    """Decode ``[0, frames)`` in parallel parts straight into one preallocated array.

    Each part starts decoding ``_OVERLAP_SECONDS`` early (decoder pre-roll, resampler settling) and
    keeps only its own output range; part boundaries sit on multiples of ``rate / gcd(rate, 24000)``
    input samples, so each maps to a whole output index and the joins are seamless. Neighbouring
    parts both decode a short probe after each boundary; if those differ, a seek was inexact and the
    caller decodes in one pass instead (None). Returns None also when a part cannot open, seek or
    read its whole range (the file vanished, shrank or changed after the caller opened it).
    """
    step = rate // math.gcd(rate, TARGET_RATE)
    parts = max(1, min(threads, int(frames / rate // _PART_MIN_SECONDS)))
    bounds = [0] + [(frames * i // parts) // step * step for i in range(1, parts)] + [frames]
    pad = math.ceil(_OVERLAP_SECONDS * rate / step) * step
    probe_len = int(_PROBE_SECONDS * rate)
    total = _out_len(frames, rate)
    out = np.empty(total, np.float32)
    heads = [np.zeros(probe_len, np.float32) for _ in range(parts)]
    tails = [np.zeros(probe_len, np.float32) for _ in range(parts)]
    stop = threading.Event()
    block = int(rate * _BLOCK_SECONDS)

    def work(i: int) -> bool:
        a, b = bounds[i], bounds[i + 1]
        last = i == parts - 1
        start, end = max(0, a - pad), min(frames, b + pad)
        lo, hi = a * TARGET_RATE // rate, total if last else b * TARGET_RATE // rate
        opos = start * TARGET_RATE // rate
        resample = _Resampler(rate)
        buf = np.empty((block, channels) if channels > 1 else block, np.float32)
        pos = start
        try:  # the file may have vanished, shrunk or changed since the caller opened it
            f = sf.SoundFile(full)
            if start:
                f.seek(start)
        except Exception:
            return False
        with f:
            while pos < end:
                if stop.is_set():
                    return False
                k = min(block, end - pos)
                try:
                    got = f.read(dtype="float32", out=buf[:k])
                except Exception:
                    return False
                if len(got) != k:
                    return False
                mono = _mono_checked(got, pos, rate, shown)
                _copy_overlap(heads[i], a, mono, pos)
                _copy_overlap(tails[i], b, mono, pos)
                pos += k
                y = resample(mono, last=pos >= end)
                _copy_overlap(out[lo:hi], lo, y, opos)
                opos += len(y)
        if last and opos < total:
            out[max(lo, opos) : total] = 0.0
        return True

    with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="audio-decode") as pool:
        futures = [pool.submit(work, i) for i in range(parts)]
        try:
            while True:
                _, pending = wait(futures, timeout=0.05, return_when=FIRST_EXCEPTION)
                if not pending or any(f.done() and f.exception() for f in futures):
                    break
                if check_cancel is not None:
                    check_cancel()
        except BaseException:
            stop.set()
            raise
        stop.set()
        oks = [f.result() for f in futures]  # re-raises a worker's error (e.g. invalid samples)
    if check_cancel is not None:
        check_cancel()
    if not all(oks):
        return None
    for i in range(parts - 1):
        if float(np.max(np.abs(tails[i] - heads[i + 1]))) > _PROBE_TOLERANCE:
            return None
    return out


# --- PyAV ------------------------------------------------------------------------------------

_av_lock = threading.Lock()
_av_state: list = []  # [module or None], filled on first use


def _import_av():  # -> the av module, or None when PyAV is not installed / does not load
    """PyAV, imported on first use (not at server start). FFmpeg's own log lines go to Python
    logging (stderr, errors only), never to stdout."""
    with _av_lock:
        if not _av_state:
            try:
                import av
                import av.logging

                av.logging.set_level(av.logging.ERROR)
            except Exception as exc:  # ImportError, or a wheel whose libraries do not load
                log.warning("PyAV is not available (%s); M4A/AAC/WebM need an ffmpeg", exc)
                av = None
            _av_state.append(av)
        return _av_state[0]


def _av_message(exc: BaseException, full: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.replace(f": '{full}'", "").replace(f"'{full}'", "input").replace(full, "input")
    return re.sub(r"^\[Errno -?\d+\] ", "", text)[:300]


def _declared_seconds(container, stream) -> float | None:  # noqa: ANN001 - av types, lazily imported
    """The duration the container declares for ``stream`` (or for itself), if any."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


_END = object()


def _decode_pyav(
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float = 1.0,
) -> DecodedAudio:
    av = _import_av()
    if av is None:
        raise _NotDecoded("PyAV is not installed")
    try:
        container = av.open(full, mode="r", metadata_errors="ignore")
    except Exception as exc:  # av.FFmpegError (InvalidDataError, …), OSError
        raise _NotDecoded(_av_message(exc, full)) from None
    with container:
        if not container.streams.audio:
            raise _NotDecoded("the file has no audio stream", empty=True)
        stream = container.streams.best("audio") or container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > limit * (1 + _DECLARED_TOLERANCE) + 1.0:
            # Before decoding: a 5 MB file can hold hours of silence (a decompression bomb).
            raise _too_long(shown, declared, limit, stopped=False)
        try:  # frame/slice threads where a codec has them (FFmpeg's audio decoders have none:
            # no change measured on AAC or Opus), so a codec that gains them will use them
            stream.thread_type = "AUTO"
        except Exception:  # pragma: no cover - an old PyAV
            pass
        return _pyav_pipeline(
            av, container, stream, declared, full, shown, limit, check_cancel, scale
        )


def _pyav_batches(av, container, stream, stop: threading.Event, errors: list[str]):  # noqa: ANN001
    """Yield lists of decoded frames holding ~_PYAV_BLOCK_SECONDS each. Only demuxing and decoding
    happen on this (the worker) thread; converting frames to arrays is the consumer's job, which
    balances the two threads. A packet that fails to decode is skipped (as the ffmpeg program
    does) and noted in ``errors``."""
    batch: list = []
    have = want = 0
    bad = 0
    demux = container.demux(stream)
    while not stop.is_set():
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.FFmpegError as exc:  # a truncated or damaged container: keep what we have
            errors.append(str(exc))
            break
        try:
            frames = packet.decode()
            bad = 0
        except av.FFmpegError as exc:
            if not errors or errors[-1] != str(exc):
                errors.append(str(exc))
            bad += 1
            if bad > _PYAV_MAX_BAD_PACKETS:
                break
            continue
        for frame in frames:
            if not want:
                want = int(frame.sample_rate * _PYAV_BLOCK_SECONDS)
            batch.append(frame)
            have += frame.samples
            if have >= want:
                yield batch
                batch, have = [], 0
    if batch:
        yield batch


class _FrameArrays:
    """PyAV frames -> one planar float32 block (channels x samples) at the first frame's rate and
    layout. Frames in another sample format, or whose rate or layout changes midway, go through
    an ``av.AudioResampler`` to that (FFmpeg's swresample: exact for integer formats)."""

    def __init__(self, av) -> None:  # noqa: ANN001
        self.av = av
        self.rate = self.channels = 0
        self.layout = None
        self.convert = None

    def _channels(self, frame) -> list[np.ndarray]:  # noqa: ANN001
        # Views of the frame's own buffers: ~6x cheaper than frame.to_ndarray() (~20 µs a frame).
        n = frame.samples
        if frame.format.name == "fltp":
            return [np.frombuffer(plane, np.float32, n) for plane in frame.planes]
        data = np.frombuffer(frame.planes[0], np.float32, n * self.channels)  # "flt": packed
        return list(data.reshape(n, self.channels).T)

    def __call__(self, frames: list) -> np.ndarray:
        if not self.rate:
            first = frames[0]
            self.rate, self.layout = first.sample_rate, first.layout
            self.channels = first.layout.nb_channels
        parts: list[list[np.ndarray]] = []
        for frame in frames:
            if self.convert is None and (
                frame.format.name not in ("fltp", "flt")
                or frame.sample_rate != self.rate
                or frame.layout.nb_channels != self.channels
            ):
                self.convert = self.av.AudioResampler(
                    format="fltp", layout=self.layout, rate=self.rate
                )
            if self.convert is None:
                parts.append(self._channels(frame))
            else:
                parts.extend(self._channels(f) for f in self.convert.resample(frame))
        return self._join(parts)

    def flush(self) -> np.ndarray | None:
        """The converter's buffered tail, if a converter was used."""
        if self.convert is None:
            return None
        return self._join([self._channels(f) for f in self.convert.resample(None)])

    def _join(self, parts: list[list[np.ndarray]]) -> np.ndarray:
        out = np.empty((max(1, self.channels), sum(len(p[0]) for p in parts)), np.float32)
        at = 0
        for chans in parts:
            n = len(chans[0])
            for c, data in enumerate(chans):
                out[c, at : at + n] = data
            at += n
        return out


def _pyav_pipeline(
    av,  # noqa: ANN001
    container,  # noqa: ANN001
    stream,  # noqa: ANN001
    declared: float | None,
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float,
) -> DecodedAudio:
    """Demux and decode on a worker thread; convert, downmix, resample and collect on this one,
    which also calls ``check_cancel`` (measured CPU per 10 min of M4A: ~0.17 s vs ~0.2 s, so the
    two threads stay balanced); a small bounded queue in between keeps memory flat."""
    blocks: queue.Queue = queue.Queue(maxsize=_PYAV_QUEUE_BLOCKS)
    stop = threading.Event()
    errors: list[str] = []

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in _pyav_batches(av, container, stream, stop, errors):
                if not put(batch):
                    return
            put(_END)
        except Exception as exc:  # an error outside a packet: keep what was decoded, say why
            errors.append(f"{type(exc).__name__}: {exc}")
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="audio-pyav", daemon=True)
    worker.start()
    pipe: _Pipeline | None = None
    to_arrays = _FrameArrays(av)
    try:
        while True:
            if check_cancel is not None:
                check_cancel()
            try:
                item = blocks.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                tail = to_arrays.flush()
                if pipe is not None and tail is not None and tail.shape[1]:
                    pipe.feed(tail, planar=True)
                break
            if isinstance(item, BaseException):
                raise item
            block = to_arrays(item)
            if pipe is None:
                rate = to_arrays.rate
                capacity = _out_len(math.ceil((declared or 600.0) * rate), rate) + TARGET_RATE
                pipe = _Pipeline(rate, to_arrays.channels, capacity, limit, shown, scale=scale)
            pipe.feed(block, planar=True)
    finally:
        stop.set()
        while worker.is_alive():  # it may be blocked on a full queue: drain until it sees stop
            try:
                blocks.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
    if pipe is None or pipe.n_in == 0:
        if errors:
            raise _NotDecoded("; ".join(errors[:3]))
        raise _NotDecoded("the file holds no audio samples", empty=True)
    samples = pipe.finish()
    decoded = pipe.n_in / pipe.rate
    warnings: list[str] = []
    if errors:
        warnings.append(
            f"the decoder reported errors (the file may be truncated or damaged); decoded "
            f"{decoded:.1f} s: {'; '.join(errors[:3])[:300]}"
        )
    elif declared is not None and decoded < declared - max(1.0, 0.01 * declared):
        warnings.append(
            f"the file seems truncated: decoded {decoded:.1f} s of the {declared:.1f} s its "
            f"container announces"
        )
    return _result(samples, pipe.rate, pipe.channels, "pyav", warnings)


# --- ffmpeg ----------------------------------------------------------------------------------


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


def _decode_ffmpeg(
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
            raise _NotDecoded(f"could not start {ffmpeg}: {exc}") from None
        pipe: _Pipeline | None = None
        try:
            _grow_pipe(proc.stdout)
            header = _read_wav_header(proc.stdout)  # type: ignore[arg-type]
            if header is not None:
                rate, channels = header
                capacity = 10 * 60 * TARGET_RATE
                pipe = _Pipeline(rate, channels, capacity, limit, shown, scale=scale)
                raw = np.empty(int(rate * _BLOCK_SECONDS) * channels, np.float32)
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
    if pipe is None or pipe.n_in == 0:
        if rc == 0 or "does not contain any stream" in messages or "matches no streams" in messages:
            raise _NotDecoded(messages or "the file holds no audio samples", empty=True)
        raise _NotDecoded(messages or f"ffmpeg exited with code {rc}")
    samples = pipe.finish()
    warnings: list[str] = []
    if rc != 0 or messages:
        warnings.append(
            f"ffmpeg reported errors (the file may be truncated or damaged); decoded "
            f"{pipe.n_in / pipe.rate:.1f} s: {messages or f'exit code {rc}'}"
        )
    return _result(samples, pipe.rate, pipe.channels, "ffmpeg", warnings)


def _grow_pipe(stream: object) -> None:
    # Fewer, larger reads: a 1 MiB pipe instead of 64 KiB (Linux only; harmless where refused).
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, OSError):
        pass


# --- the public entry point ------------------------------------------------------------------


def load_audio(
    path: PathArg,
    *,
    max_seconds: float | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> DecodedAudio:
    """Decode ``path`` to 24 kHz mono float32.

    ``path`` may be relative (to the working directory), start with ``~``, hold spaces or any
    Unicode. ``max_seconds`` (default ``$VIBEVOICE_MAX_AUDIO_SECONDS`` or 4 h) limits the duration:
    checked against the header before decoding when it is known, and while decoding.
    ``check_cancel`` is called between blocks, on the calling thread; it raises to abort.

    Raises :class:`AudioFileError` (not_found, is_directory, permission_denied, empty_file),
    :class:`AudioDecodeError` (unsupported_format, corrupt, no_samples, invalid_samples) and
    :class:`AudioTooLong`. Silence is not an error; a truncated file yields what is readable, with a
    note in ``warnings``.
    """
    started = time.monotonic()
    shown, full = _resolve(path)
    _check_file(full, shown)
    limit = _env_limit() if max_seconds is None else float(max_seconds)
    if not limit > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    ext = os.path.splitext(full)[1].lower()
    ffmpeg = find_ffmpeg()
    if ext in _FFMPEG_FIRST_EXTS:
        order = ["pyav", "ffmpeg", "soundfile"]
    else:
        order = ["soundfile", "pyav", "ffmpeg"]
    failures: list[str] = []
    empty = False
    for decoder in order:
        if decoder == "ffmpeg" and (ffmpeg is None or empty):
            continue  # (PyAV found no audio stream: the ffmpeg program would not either)
        audio = None
        for scale in (1.0, _HUGE_SCALE):
            try:
                audio = _run_decoder(decoder, ffmpeg, full, shown, limit, check_cancel, scale)
                break
            except _Huge:
                log.warning("%s holds huge sample values; decoding it again scaled down", shown)
            except _NotDecoded as exc:
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
    _check_file(full, shown)
    in_process = _import_av() is not None
    raise _decode_failure(shown, ext, ffmpeg is not None or in_process, failures, empty)


def _run_decoder(
    decoder: str,
    ffmpeg: str | None,
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float,
) -> DecodedAudio:
    if decoder == "soundfile":
        return _decode_soundfile(full, shown, limit, check_cancel, scale)
    if decoder == "pyav":
        return _decode_pyav(full, shown, limit, check_cancel, scale)
    assert ffmpeg is not None
    return _decode_ffmpeg(ffmpeg, full, shown, limit, check_cancel, scale)


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
