"""Decode with ``soundfile`` (libsndfile, in process): WAV, FLAC, Ogg Vorbis/Opus, MP3 and
libsndfile's other formats.

The header gives the frame count, so the output is preallocated exactly and the length limit is
checked before decoding. When seeking is sample-exact, files of a minute or more are decoded in
parallel parts, one thread each (libsndfile and soxr release the GIL); the joins are checked and a
mismatch falls back to one pass. See docs/AUDIO.md ("Parallel parts").
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np
import soundfile as sf

from ..limits import SAMPLE_RATE
from .paths import check_file
from .sink import (
    DecodedAudio,
    NotDecoded,
    Pipeline,
    Resampler,
    block_frames,
    check_format,
    decoded_audio,
    mono_checked,
    out_len,
    too_long,
)

log = logging.getLogger(__name__)

_BLOCK_SECONDS = 10.0
_PARALLEL_MIN_SECONDS = 60.0  # shorter files take well under a second in one thread
_PART_MIN_SECONDS = 30.0
_OVERLAP_SECONDS = 1.0  # decoder pre-roll (Opus: 80 ms) and soxr's filter settle well within this
_PROBE_SECONDS = 0.25  # compared between neighbouring parts to prove the seek was exact
_PROBE_TOLERANCE = 1e-4
# libsndfile's frame count for a stream without a length (a FLAC written to a pipe): SF_COUNT_MAX.
_UNKNOWN_FRAMES = 1 << 62
# libsndfile seeks these sample-exactly. Not MP3: its frame count can be an estimate (no Xing/LAME
# header) and the first few hundred samples after a seek are wrong.
_SEEK_EXACT_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "AIFF", "AU", "CAF"})


def default_threads() -> int:
    """Threads for parallel parts when none are configured: the CPUs this process may use, at
    most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


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


def decode_soundfile(
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float = 1.0,
    *,
    threads: int | None = None,
) -> DecodedAudio:
    """``threads``: at most this many parallel parts (None: :func:`default_threads`; 1: one
    pass)."""
    try:
        f = sf.SoundFile(full)
    except Exception as exc:  # LibsndfileError, or TypeError/ValueError for odd headers
        raise NotDecoded(_sf_message(exc, full)) from None
    with f:
        rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        fmt = str(f.format)
        warnings = _log_warnings(f.extra_info)
        if rate <= 0 or channels <= 0:
            raise NotDecoded(f"invalid header ({rate} Hz, {channels} channels)")
        check_format(rate, channels, shown)
        # A FLAC stream written to a pipe has no length in its header: libsndfile then says
        # SF_COUNT_MAX frames (and soundfile's read, which seeks after every block, fails after
        # the first one). Unknown, not endless: PyAV (or the ffmpeg program) decodes and counts,
        # the limit enforced per block.
        known = 0 < frames < _UNKNOWN_FRAMES
        if not known and frames != 0:
            raise NotDecoded("the header gives no length (a stream written to a pipe)")
        if frames / rate > limit:
            raise too_long(shown, frames / rate, limit, stopped=False)
        if threads is None:
            threads = default_threads()
        if (
            threads > 1
            and scale == 1.0
            and not warnings
            and fmt in _SEEK_EXACT_FORMATS
            and f.seekable()
            and frames / rate >= max(_PARALLEL_MIN_SECONDS, 2 * _PART_MIN_SECONDS)
        ):
            samples = _decode_parts(full, rate, channels, frames, threads, shown, check_cancel)
            if samples is not None:
                return decoded_audio(samples, rate, channels, "soundfile", [])
            log.warning("parallel decode of %s failed or did not line up; one pass now", shown)
            # The file may have vanished or shrunk since it was opened: say so as a file error.
            check_file(full, shown)
            try:
                f.seek(0)
            except Exception as exc:
                raise NotDecoded(_sf_message(exc, full)) from None
        pipe = Pipeline(rate, channels, out_len(frames, rate) + 1, limit, shown, scale=scale)
        block = block_frames(rate, channels, _BLOCK_SECONDS)
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
        raise NotDecoded(error or "the file holds no audio samples", empty=error is None)
    samples = pipe.finish()
    decoded = pipe.n_in / rate
    if error is not None or frames - pipe.n_in > 0.5 * rate:
        reason = f" ({error})" if error else ""
        warnings.append(
            f"the file seems truncated or damaged: decoded {decoded:.1f} s of the "
            f"{frames / rate:.1f} s its header announces{reason}"
        )
    return decoded_audio(samples, rate, channels, "soundfile", warnings)


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
    step = rate // math.gcd(rate, SAMPLE_RATE)
    parts = max(1, min(threads, int(frames / rate // _PART_MIN_SECONDS)))
    log.debug("decoding %s in %d parallel parts (at most %d threads)", shown, parts, threads)
    bounds = [0] + [(frames * i // parts) // step * step for i in range(1, parts)] + [frames]
    pad = math.ceil(_OVERLAP_SECONDS * rate / step) * step
    probe_len = int(_PROBE_SECONDS * rate)
    total = out_len(frames, rate)
    out = np.empty(total, np.float32)
    heads = [np.zeros(probe_len, np.float32) for _ in range(parts)]
    tails = [np.zeros(probe_len, np.float32) for _ in range(parts)]
    stop = threading.Event()
    block = block_frames(rate, channels, _BLOCK_SECONDS)

    def work(i: int) -> bool:
        a, b = bounds[i], bounds[i + 1]
        last = i == parts - 1
        start, end = max(0, a - pad), min(frames, b + pad)
        lo, hi = a * SAMPLE_RATE // rate, total if last else b * SAMPLE_RATE // rate
        opos = start * SAMPLE_RATE // rate
        resample = Resampler(rate)
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
                mono = mono_checked(got, pos, rate, shown)
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
