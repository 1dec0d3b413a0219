"""Where the speech is: the decoded audio → Silero's probabilities → stretches of speech, in the
audio's own samples.

The audio (24 kHz) is resampled to the network's 16 kHz with soxr in blocks of ~30 s (the same
samples as one pass: soxr's stream is exact), so a long file never needs a second full copy.
Quiet files are raised first: Silero misses speech whose level is far below what it was trained
on (measured here on espeak-ng speech: 90 % of its chunks are found at −21 dBFS, 62 % at
−71 dBFS and 6 % at −81 dBFS), while the model itself normalises every input to −25 dBFS and
would have heard it. So when the loudest second is quieter than −20 dBFS the whole input is
raised to put it there; louder files are left as they are.

:func:`speech_stretches` is Silero's ``get_speech_timestamps_from_probs`` (silero_vad/utils_vad.py,
MIT) for what this program uses of it (no maximum speech length): a stretch starts at a chunk of
at least ``threshold``, ends where the probability stays below ``threshold − 0.15`` for
``min_silence_ms``, is dropped when shorter than ``min_speech_ms``, and is padded by ``pad_ms`` on
each side (less where two stretches are closer than twice that). tests/test_vad.py checks it
against Silero's own on the same probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .vad import CHUNK, VAD_RATE, SileroVad, load_vad

__all__ = ["VadParams", "SpeechFound", "detect_speech", "speech_stretches"]

_BLOCK_SECONDS = 30  # resampled and run per block; cancel is checked between blocks
_LOUD_DBFS = -20.0  # quieter files are raised so that their loudest second is this loud


@dataclass(frozen=True)
class VadParams:
    """Silero's post-processing parameters (its defaults)."""

    threshold: float = 0.5
    neg_threshold: float | None = None  # None: threshold − 0.15 (at least 0.01)
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    pad_ms: int = 30


@dataclass(frozen=True)
class SpeechFound:
    """The speech in ``length`` samples at ``rate``: ``stretches`` are ``(start, end)`` sample
    indices (end exclusive), sorted, not overlapping."""

    stretches: tuple[tuple[int, int], ...]
    rate: int
    length: int
    chunks: int  # probabilities computed (one per 32 ms)
    gain_db: float  # what the VAD's input was raised by (0: as it was)

    @property
    def speech_samples(self) -> int:
        return sum(end - start for start, end in self.stretches)


def speech_stretches(
    probs: np.ndarray, length: int, params: VadParams = VadParams()
) -> list[tuple[int, int]]:
    """Speech stretches of 16 kHz audio of ``length`` samples from its chunks' probabilities, in
    16 kHz samples: Silero's ``get_speech_timestamps_from_probs`` without a maximum length."""
    threshold = params.threshold
    neg = params.neg_threshold
    if neg is None:
        neg = max(threshold - 0.15, 0.01)
    min_speech = VAD_RATE * params.min_speech_ms / 1000
    min_silence = VAD_RATE * params.min_silence_ms / 1000
    pad = VAD_RATE * params.pad_ms // 1000
    speeches: list[list[int]] = []
    start: int | None = None
    temp_end = 0
    for i, prob in enumerate(probs.tolist()):
        sample = CHUNK * i
        if prob >= threshold and temp_end:
            temp_end = 0
        if prob >= threshold and start is None:
            start = sample
            continue
        if prob < neg and start is not None:
            if not temp_end:
                temp_end = sample
            if sample - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                speeches.append([start, temp_end])
            start, temp_end = None, 0
    if start is not None and length - start > min_speech:
        speeches.append([start, length])
    for i, speech in enumerate(speeches):
        if i == 0:
            speech[0] = max(0, speech[0] - pad)
        if i + 1 < len(speeches):
            after = speeches[i + 1]
            silence = after[0] - speech[1]
            if silence < 2 * pad:
                speech[1] += silence // 2
                after[0] = max(0, after[0] - silence // 2)
            else:
                speech[1] = min(length, speech[1] + pad)
                after[0] = max(0, after[0] - pad)
        else:
            speech[1] = min(length, speech[1] + pad)
    return [(a, b) for a, b in speeches]


def _gain(samples: np.ndarray, rate: int) -> float:
    """The factor that puts a quiet file's loudest second at ``_LOUD_DBFS`` (1 for louder ones,
    and for digital silence)."""
    second = max(1, rate)
    loudest = 0.0
    for lo in range(0, len(samples), 600 * second):  # 10 min at a time: bounded temporary memory
        part = np.asarray(samples[lo : lo + 600 * second], dtype=np.float64)
        whole = len(part) // second * second
        if whole:
            rms = np.sqrt(np.mean(part[:whole].reshape(-1, second) ** 2, axis=1))
            loudest = max(loudest, float(rms.max()))
        elif len(part):
            loudest = max(loudest, float(np.sqrt(np.mean(part**2))))
    target = 10 ** (_LOUD_DBFS / 20)
    return target / loudest if 0.0 < loudest < target else 1.0


def detect_speech(
    samples: np.ndarray,
    rate: int,
    *,
    params: VadParams = VadParams(),
    check_cancelled: Callable[[], None] | None = None,
    vad: SileroVad | None = None,
) -> SpeechFound:
    """Where ``samples`` (mono float32 at ``rate``) hold speech. Raises
    :class:`~vibevoice_rpc.voice.vad.VadUnavailable` without its weights."""
    import soxr

    vad = vad or load_vad()
    gain = _gain(samples, rate)
    stream = vad.stream()
    resampler = soxr.ResampleStream(rate, VAD_RATE, 1, dtype="float32", quality="HQ")
    probs: list[np.ndarray] = []
    length = 0
    block = _BLOCK_SECONDS * rate
    for lo in range(0, max(1, len(samples)), block):
        if check_cancelled is not None:
            check_cancelled()
        part = np.asarray(samples[lo : lo + block], dtype=np.float32)
        if gain != 1.0:
            part = part * np.float32(gain)
        x = resampler.resample_chunk(part, last=lo + block >= len(samples))
        length += len(x)
        probs.append(stream.feed(x))
    probs.append(stream.finish())
    found = np.concatenate(probs)
    stretches = []
    for start, end in speech_stretches(found, length, params):
        lo, hi = start * rate // VAD_RATE, -(-end * rate // VAD_RATE)
        stretches.append((min(lo, len(samples)), min(hi, len(samples))))
    return SpeechFound(
        stretches=tuple((a, b) for a, b in stretches if b > a),
        rate=rate,
        length=len(samples),
        chunks=len(found),
        gain_db=round(20 * math.log10(gain), 1),
    )
