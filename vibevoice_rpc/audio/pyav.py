"""Decode with PyAV (FFmpeg's libraries in its wheel, in process): M4A/AAC, WebM, MP4/MKV audio,
WMA, … and whatever libsndfile cannot open.

PyAV is imported on the first file that needs it. One worker thread demuxes and decodes into a
small bounded queue; the calling thread turns the frames into arrays, downmixes, resamples and
collects (and calls ``check_cancel``). The stream's rate and channels and the container's declared
duration are checked before decoding. Frames become float32 here (no swresample): a stream whose
rate or layout changes midway is fed in runs, each resampled from its own rate. See docs/AUDIO.md
("PyAV, in process").
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
from collections.abc import Callable

import numpy as np

from ..limits import SAMPLE_RATE
from .sink import (
    BLOCK_BYTES,
    DecodedAudio,
    NotDecoded,
    Pipeline,
    block_frames,
    check_format,
    decoded_audio,
    out_len,
    too_long,
)

log = logging.getLogger(__name__)

# A declared container duration can be an estimate (from the bitrate); refuse before decoding only
# when it is clearly over the limit, and let the count while decoding settle the rest.
_DECLARED_TOLERANCE = 0.005
# Raw ADTS has no length anywhere: FFmpeg guesses one from the first frames' bitrate, which for
# clips joined at different rates was 10.7 s for 7.5 s of audio. Not refused on that guess (the
# count while decoding settles it); the guess still sizes the output array.
_GUESSED_DURATION_FORMATS = frozenset({"aac"})
_PYAV_BLOCK_SECONDS = 5.0
_PYAV_QUEUE_BLOCKS = 3  # decoded blocks waiting for the resampler: bounded memory
# Up to five batches are alive at once (three queued, one being filled, one being converted):
# a quarter of a block's budget each. A 5 s batch of 48 kHz stereo is 1.9 MB, well below.
_BATCH_BYTES = BLOCK_BYTES // 4
_PYAV_MAX_BAD_PACKETS = 50  # consecutive packets that fail to decode before we stop

_av_lock = threading.Lock()
_av_state: list = []  # [module or None], filled on first use


def import_av():  # -> the av module, or None when PyAV is not installed / does not load
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


def decode_pyav(
    full: str,
    shown: str,
    limit: float,
    check_cancel: Callable[[], None] | None,
    scale: float = 1.0,
) -> DecodedAudio:
    av = import_av()
    if av is None:
        raise NotDecoded("PyAV is not installed")
    try:
        container = av.open(full, mode="r", metadata_errors="ignore")
    except Exception as exc:  # av.FFmpegError (InvalidDataError, …), OSError
        raise NotDecoded(_av_message(exc, full)) from None
    with container:
        if not container.streams.audio:
            raise NotDecoded("the file has no audio stream", empty=True)
        stream = container.streams.best("audio") or container.streams.audio[0]
        codec = stream.codec_context
        if codec.sample_rate and codec.channels:  # 0 when the container does not say
            check_format(int(codec.sample_rate), int(codec.channels), shown)
        declared = _declared_seconds(container, stream)  # also sizes the output array
        guessed = container.format.name in _GUESSED_DURATION_FORMATS
        if (
            not guessed
            and declared is not None
            and declared > limit * (1 + _DECLARED_TOLERANCE) + 1.0
        ):
            # Before decoding: a 5 MB file can hold hours of silence (a decompression bomb).
            raise too_long(shown, declared, limit, stopped=False)
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
                want = block_frames(
                    frame.sample_rate, frame.layout.nb_channels, _PYAV_BLOCK_SECONDS, _BATCH_BYTES
                )
            batch.append(frame)
            have += frame.samples
            if have >= want:
                yield batch
                batch, have = [], 0
    if batch:
        yield batch


# FFmpeg's sample formats (planar ones end in "p"): the numpy type and, for integers, the offset
# and scale to +-1, as swresample converts them (u8: (x - 128) / 128; s16: x / 2^15; …).
_SAMPLE_TYPES: dict[str, tuple[type, float, float]] = {
    "u8": (np.uint8, 128.0, 2.0**-7),
    "s16": (np.int16, 0.0, 2.0**-15),
    "s32": (np.int32, 0.0, 2.0**-31),
    "s64": (np.int64, 0.0, 2.0**-63),
    "flt": (np.float32, 0.0, 1.0),
    "dbl": (np.float64, 0.0, 1.0),
}


class _FrameArrays:
    """PyAV frames -> planar float32 blocks (channels x samples), one per run of frames with the
    same rate, channel count and sample format. Converted here rather than by an
    ``av.AudioResampler``: that is set up by the first frame it sees and refuses a frame at another
    rate ("Frame does not match AudioResampler setup"), and swresample refuses more than 64
    channels; a run at a new rate is resampled from its own rate by the pipeline."""

    def __call__(self, frames: list) -> list[tuple[int, np.ndarray]]:
        """``(rate, block)`` for each run in ``frames``."""
        runs: list[tuple[int, np.ndarray]] = []
        key: tuple | None = None
        parts: list[list[np.ndarray]] = []
        for frame in frames:
            here = (frame.sample_rate, frame.layout.nb_channels, frame.format.name)
            if here != key and parts:
                runs.append((key[0], self._join(parts, key[2])))  # type: ignore[index]
                parts = []
            key = here
            parts.append(self._channels(frame))
        if parts:
            runs.append((key[0], self._join(parts, key[2])))  # type: ignore[index]
        return runs

    @staticmethod
    def _channels(frame) -> list[np.ndarray]:  # noqa: ANN001
        # Views of the frame's own buffers: ~6x cheaper than frame.to_ndarray() (~20 µs a frame).
        n, name = frame.samples, frame.format.name
        planar = frame.format.is_planar
        base = name[:-1] if planar else name
        if base not in _SAMPLE_TYPES:
            raise NotDecoded(f"unsupported sample format {name!r}")
        dtype = _SAMPLE_TYPES[base][0]
        if planar:
            return [np.frombuffer(plane, dtype, n) for plane in frame.planes]
        channels = frame.layout.nb_channels
        data = np.frombuffer(frame.planes[0], dtype, n * channels)  # packed: interleaved
        return list(data.reshape(n, channels).T)

    @staticmethod
    def _join(parts: list[list[np.ndarray]], fmt: str) -> np.ndarray:
        out = np.empty((len(parts[0]), sum(len(p[0]) for p in parts)), np.float32)
        at = 0
        for chans in parts:
            n = len(chans[0])
            for c, data in enumerate(chans):
                out[c, at : at + n] = data  # to float32 (exact for 8/16-bit integers)
            at += n
        _, offset, scale = _SAMPLE_TYPES[fmt[:-1] if fmt.endswith("p") else fmt]
        if offset:
            out -= np.float32(offset)
        if scale != 1.0:
            out *= np.float32(scale)
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
    pipe: Pipeline | None = None
    to_arrays = _FrameArrays()
    try:
        while True:
            if check_cancel is not None:
                check_cancel()
            try:
                item = blocks.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            for rate, block in to_arrays(item):
                if pipe is None:
                    capacity = 0  # unknown
                    if declared:
                        capacity = out_len(math.ceil(declared * rate), rate) + SAMPLE_RATE
                    pipe = Pipeline(rate, len(block), capacity, limit, shown, scale=scale)
                pipe.feed(block, planar=True, rate=rate)
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
            raise NotDecoded("; ".join(errors[:3]))
        raise NotDecoded("the file holds no audio samples", empty=True)
    samples = pipe.finish()
    decoded = pipe.seconds
    warnings = pipe.rate_note()
    if errors:
        warnings.append(
            f"the decoder reported errors (the file may be truncated or damaged); decoded "
            f"{decoded:.1f} s: {'; '.join(errors[:3])[:300]}"
        )
    elif (
        declared is not None
        and len(pipe.rates) == 1  # else the declared length was guessed from the first rate
        and decoded < declared - max(1.0, 0.01 * declared)
    ):
        warnings.append(
            f"the file seems truncated: decoded {decoded:.1f} s of the {declared:.1f} s its "
            f"container announces"
        )
    return decoded_audio(samples, pipe.rates[0], pipe.channels, "pyav", warnings)
