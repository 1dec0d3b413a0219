"""The pipeline every audio decoder feeds: downmix → check → resample → one output array.

A decoder (:mod:`.libsndfile`, :mod:`.pyav`, :mod:`.ffmpeg`) delivers blocks at
the source rate; :class:`Pipeline` averages the channels, checks the samples (NaN/inf, or finite but
too large to square), resamples them with soxr to 24 kHz and collects them into one array, enforcing
the duration limit per block before the block is kept. Sharing this is what makes every decoder give
the same samples for the same PCM and the output length exact: ``round(n_in * 24000 / source_rate)``
(per part, when the rate changes midway: each part is resampled from its own rate). The limits on
what a file may be (:func:`check_format`: sample rate, channels) and on a decoder's read
(:func:`block_frames`) live here too, so every decoder refuses the same files alike. Also here:
:class:`DecodedAudio` (what ``load_audio`` returns) and the two signals a decoder raises to the
chooser in :mod:`.audio` (:class:`NotDecoded`: try the next decoder; :class:`Huge`: decode again
scaled down). See docs/AUDIO.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import soxr

from ..errors import AudioDecodeError, AudioTooLong
from ..limits import SAMPLE_RATE

# soxr's 20-bit "high quality", what librosa and transformers use; "VHQ" costs ~15 % more.
RESAMPLE_QUALITY = "HQ"
# Float samples so large that squaring them overflows float32 (soxr then returns NaN, and the
# model's loudness normalisation divides by an infinite RMS) are decoded again scaled by this power
# of two: the model normalises the loudness anyway, so only the relative amplitudes matter.
HUGE_SCALE = 2.0**-80
# Source rates outside these cannot hold speech (below 1 kHz the Nyquist frequency, 500 Hz, cuts
# off the formants) or are not audio anyone records (above 768 kHz, the fastest PCM in use). A
# 1 Hz file would also be stretched 24,000-fold: 28 KB of input asking for hours of transcription.
MIN_SOURCE_RATE = 1000
MAX_SOURCE_RATE = 768_000
# FFmpeg's resampler (swresample: the ffmpeg program's conversion to float) handles at most 64
# channels; beyond that the fallback cannot decode, so no decoder takes such a file. 64 covers
# multitrack recorders (32/64-channel consoles) and 7th-order ambisonics.
MAX_CHANNELS = 64
# One decoder read is ~10 s of audio, but never more than this much float32 input (a 64-channel
# 768 kHz file would otherwise read 2 GB at a time): memory stays near the output array's.
BLOCK_BYTES = 16 << 20


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


class NotDecoded(Exception):
    """A decoder could not decode the file; the next may. ``empty``: it opened but held nothing."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


class Huge(Exception):
    """Finite samples too large to square in float32: decode again scaled by ``HUGE_SCALE``."""


def too_long(shown: str, seconds: float, limit: float, *, stopped: bool) -> AudioTooLong:
    what = f"decoding stopped at {seconds:.1f} s" if stopped else f"it lasts {seconds:.1f} s"
    return AudioTooLong(
        f"audio is longer than the {limit:g} s limit ({what}): {shown}",
        hint="split the file, or raise VIBEVOICE_MAX_AUDIO_SECONDS",
        duration=round(seconds, 3),
        limit=limit,
        path=shown,
    )


def check_format(rate: int, channels: int, shown: str) -> None:
    """Refuse a sample rate or channel count no decoder should take (``-32002``), before any
    sample is decoded: the same answer whichever decoder reads the file."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioDecodeError(
            f"the audio's sample rate, {rate} Hz, is outside the accepted {MIN_SOURCE_RATE}-"
            f"{MAX_SOURCE_RATE} Hz: {shown}",
            kind="unsupported_sample_rate",
            hint="re-export the audio at a usual rate (8000-48000 Hz)",
            path=shown,
            sample_rate=rate,
            min_sample_rate=MIN_SOURCE_RATE,
            max_sample_rate=MAX_SOURCE_RATE,
        )
    if channels > MAX_CHANNELS:
        raise AudioDecodeError(
            f"the audio has {channels} channels, more than the {MAX_CHANNELS} accepted: {shown}",
            kind="too_many_channels",
            hint="export a mono or stereo mix (or the channels that hold the speakers)",
            path=shown,
            channels=channels,
            max_channels=MAX_CHANNELS,
        )


def block_frames(rate: int, channels: int, seconds: float, budget: int | None = None) -> int:
    """Frames for one decoder read: ``seconds`` of audio, at most ``budget`` bytes of float32
    (default :data:`BLOCK_BYTES`)."""
    budget = BLOCK_BYTES if budget is None else budget
    return max(1, min(int(rate * seconds), budget // (4 * max(1, channels))))


def decoded_audio(
    samples: np.ndarray, rate: int, channels: int, decoder: str, warnings: list[str]
) -> DecodedAudio:
    duration = len(samples) / SAMPLE_RATE
    return DecodedAudio(samples, SAMPLE_RATE, duration, rate, channels, decoder, warnings)


def out_len(n_in: int, rate: int) -> int:
    return round(n_in * SAMPLE_RATE / rate)


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


def mono_checked(
    block: np.ndarray,
    first: int,
    rate: int,
    shown: str,
    *,
    planar: bool = False,
    scale: float = 1.0,
    start: float = 0.0,
) -> np.ndarray:
    """:func:`_mono`, checked by :func:`_check_samples` (``first``: the block's first sample in a
    part at ``rate`` that begins ``start`` seconds into the file)."""
    mono = _mono(block, planar, scale)
    try:
        _check_samples(mono, first, rate, shown, start)
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
        _check_samples(mono, first, rate, shown, start)
    return mono


def _check_samples(mono: np.ndarray, first: int, rate: int, shown: str, start: float = 0.0) -> None:
    """Raise ``invalid_samples`` if ``mono`` (from sample ``first`` on) holds NaN or infinity, and
    :class:`Huge` if its samples are finite but too large to square in float32."""
    if not mono.size:
        return
    # Sum of squares in float32 (BLAS, fast): finite exactly when every sample is finite and small
    # enough to be squared and summed without overflow; only then is the block certainly fine.
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(np.dot(mono, mono))):
            return
    finite = np.isfinite(mono)
    if finite.all():
        raise Huge
    at = start + (first + int(np.argmin(finite))) / rate
    raise AudioDecodeError(
        f"audio contains NaN or infinite samples (first at {at:.3f} s): {shown}",
        kind="invalid_samples",
        hint="re-export the audio; the file holds invalid float sample values",
        path=shown,
        at_seconds=round(at, 3),
    )


class Resampler:
    """soxr's streaming resampler to 24 kHz, or a pass-through when the source is 24 kHz already."""

    def __init__(self, rate: int) -> None:
        self._stream = None
        if rate != SAMPLE_RATE:
            self._stream = soxr.ResampleStream(
                rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def __call__(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(np.ascontiguousarray(mono), last=last)

    def flush(self) -> np.ndarray:
        return self(np.zeros(0, np.float32), last=True)


# numpy asks for transparent huge pages (madvise) on arrays of 4 MiB or more when it allocates
# them, and growing such an array with ndarray.resize then copies it (measured: 55 MB grown to
# 78 MB peaked at 110 MB). One allocated below that and grown by realloc is remapped instead
# (57 MB).
_SMALL_START = 1_000_000  # samples: 4.0 MB
_GROW_SECONDS = 60.0


class _Sink:
    """Blocks appended into one float32 array, never grown past ``cap`` samples (the longest output
    the duration limit allows) plus what one append needs: a file that turns out longer than the
    limit is refused before that.

    ``capacity`` is the expected length: exact or estimated, the array is allocated at once; 0
    (unknown) starts it below numpy's huge-page threshold and grows it 60 s at a time with
    ``ndarray.resize`` (realloc, which on Linux remaps the pages instead of copying them), so peak
    memory stays within the output plus 60 s of it."""

    def __init__(self, capacity: int, cap: int | None = None) -> None:
        self.cap = cap
        self.remaps = capacity <= 0
        if self.remaps:
            capacity = _SMALL_START
        if cap is not None:
            capacity = min(capacity, cap)
        self.buf = np.empty(max(1, capacity), np.float32)
        self.n = 0

    def append(self, y: np.ndarray) -> None:
        need = self.n + len(y)
        if need > len(self.buf):
            step = int(_GROW_SECONDS * SAMPLE_RATE)
            if self.remaps:
                grown = max(need, len(self.buf) + step)
            else:  # a wrong estimate: each growth may copy, so fewer and larger
                grown = max(need, int(len(self.buf) * 1.25) + step)
            if self.cap is not None:
                grown = max(need, min(grown, self.cap))
            self.buf.resize(grown, refcheck=False)
        self.buf[self.n : need] = y
        self.n = need

    def settle(self, length: int) -> None:
        """End a part at exactly ``length`` samples in all: pad with zeros or trim its last one or
        two (the resampler's rounding), as :meth:`result` does for the whole."""
        if length > self.n:
            self.append(np.zeros(length - self.n, np.float32))
        self.n = length

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


class Pipeline:
    """Downmix, check, resample and collect blocks of one decoder's output at ``rate``.

    ``capacity`` is the expected output length (exact from a header, an estimate, or 0: unknown);
    the limit is enforced per block, before the block is kept, so memory stays within the output
    of ``limit`` seconds whatever the file claims. A block at another rate (an ADTS stream of
    clips joined together) ends the part: the resampler is flushed, the part's output set to
    exactly ``round(n * 24000 / rate)`` samples, and the next part resampled from its own rate.
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
        check_format(rate, channels, shown)
        self.rate = rate  # this part's
        self.channels = channels  # the first block's
        self.rates = [rate]  # each part's, in order
        self.shown = shown
        self.limit = limit
        self.scale = scale
        self.max_in = limit * rate  # this part's input samples that keep the file within limit
        self.n_in = 0  # input samples, all parts
        self.part_in = 0  # input samples of this part
        self.before = 0.0  # seconds in the parts before this one
        self.out_before = 0  # output samples of the parts before this one
        self.resample = Resampler(rate)
        self.sink = _Sink(capacity, cap=out_len(math.floor(self.max_in), rate) + 64)

    @property
    def seconds(self) -> float:
        """The source seconds fed so far."""
        return self.before + self.part_in / self.rate

    def feed(self, block: np.ndarray, *, planar: bool = False, rate: int | None = None) -> None:
        """Add ``block`` (frames x channels, channels x frames if ``planar``), at ``rate`` when
        given (the pipeline's rate otherwise)."""
        chans = (block.shape[0] if planar else block.shape[1]) if block.ndim == 2 else 1
        if chans > MAX_CHANNELS:
            check_format(self.rate, chans, self.shown)
        if rate is not None and rate != self.rate:
            self._next_part(rate)
        n = block.shape[-1] if planar and block.ndim == 2 else len(block)
        if self.part_in + n > self.max_in:
            seconds = self.before + (self.part_in + n) / self.rate
            raise too_long(self.shown, seconds, self.limit, stopped=True)
        mono = mono_checked(
            block,
            self.part_in,
            self.rate,
            self.shown,
            planar=planar,
            scale=self.scale,
            start=self.before,
        )
        self.n_in += n
        self.part_in += n
        self.sink.append(self.resample(mono))

    def _end_part(self) -> None:
        self.sink.append(self.resample.flush())
        self.out_before += out_len(self.part_in, self.rate)
        self.sink.settle(self.out_before)

    def _next_part(self, rate: int) -> None:
        check_format(rate, 1, self.shown)
        self._end_part()
        self.before += self.part_in / self.rate
        self.rate, self.part_in = rate, 0
        self.rates.append(rate)
        self.max_in = (self.limit - self.before) * rate
        self.resample = Resampler(rate)

    def rate_note(self) -> list[str]:
        """A warning when the rate changed midway, naming the rates (the first few)."""
        changes = len(self.rates) - 1
        if not changes:
            return []
        rates = " -> ".join(str(r) for r in self.rates[:6]) + (" -> ..." if changes > 5 else "")
        times = "" if changes == 1 else f" {changes} times"
        return [
            f"the sample rate changes{times} midway ({rates} Hz): each part was resampled to "
            f"24 kHz from its own rate"
        ]

    def finish(self) -> np.ndarray:
        self._end_part()
        return self.sink.result(self.out_before)
