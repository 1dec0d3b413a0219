"""The speaker encoder's front end: 16 kHz speech → a mel power spectrogram, in numpy.

It reproduces what Resemblyzer 0.1.4 computes with librosa (``resemblyzer/audio.py``:
``librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40)`` and
``normalize_volume`` to −30 dBFS, louder only), because the encoder's weights were trained on
exactly that: a 25 ms periodic Hann window every 10 ms, centred frames (200 zeros of padding at
each end), the power |X|² (not its log), and 40 Slaney-style mel filters from 0 to 8 kHz with
Slaney area normalisation (librosa's defaults: ``htk=False``, ``norm="slaney"``).
tests/test_voice.py checks the result against librosa's own numbers stored in tests/data/.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "HOP",
    "N_FFT",
    "N_MELS",
    "mel_filterbank",
    "mel_spectrogram",
    "normalize_volume",
]

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
TARGET_DBFS = -30.0
_INT16_MAX = 2**15 - 1


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``hz_to_mel(htk=False)``): linear to 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    above = hz >= min_log_hz
    mels[above] = min_log_mel + np.log(hz[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    hz = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    above = mels >= min_log_mel
    hz[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=4)
def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """Triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)``, float32 (librosa ``filters.mel``
    with its defaults: 0 Hz to Nyquist, Slaney scale, Slaney area normalisation)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = np.array([0.0, sample_rate / 2.0])
    lo, hi = _hz_to_mel(edges.copy())
    mel_f = _mel_to_hz(np.linspace(lo, hi, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False  # cached and shared
    return weights


@functools.lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    """The periodic Hann window (scipy ``get_window("hann", n, fftbins=True)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """Mel power spectrogram of 16 kHz ``wav``: shape ``(1 + len(wav) // 160, 40)``, float32.

    Not a log spectrogram: the encoder was trained on power values. Frames are centred (frame
    *t* covers samples ``160 t - 200 … 160 t + 200``, zero beyond the ends)."""
    wav = np.asarray(wav, dtype=np.float64)
    padded = np.pad(wav, N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, N_FFT),
        strides=(padded.strides[0] * HOP, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _hann(N_FFT), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    return (power @ mel_filterbank().T.astype(np.float64)).astype(np.float32)


def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale ``wav`` up to ``target_dbfs`` RMS (never down), as Resemblyzer's ``preprocess_wav``
    does (``normalize_volume(wav, -30, increase_only=True)``). Silence is returned as it is."""
    wav = np.asarray(wav, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms <= 0.0:
        return wav
    change = target_dbfs - 20.0 * np.log10(rms)
    if change < 0:
        return wav
    return (wav * np.float32(10 ** (change / 20.0))).astype(np.float32)
