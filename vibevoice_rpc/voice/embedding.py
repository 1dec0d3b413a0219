"""Who is speaking, as a vector: the GE2E speaker encoder of Resemblyzer 0.1.4, run in numpy.

The network (Wan et al., "Generalized end-to-end loss for speaker verification", 2018; weights
trained by Resemble AI, Apache-2.0, converted by scripts/convert_voice_encoder.py into
``data/voice_encoder.safetensors``, see ``data/voice_encoder.NOTICE``): a 3-layer LSTM of 256 units
over 40 mel channels, the last layer's final state through a linear layer to 256 values, ReLU, L2
norm. An utterance is cut into partial utterances of 160 frames (1.6 s) every 77 frames (1.3 per
second); their embeddings are averaged and normalised again (``embed_utterance``, as Resemblyzer's).
Two embeddings of one voice have a cosine near 1; the pipeline compares them with :func:`cosine`.

Numpy only at run time (no torch: the remote backend runs without it), float32 throughout; the
weights are stored in fp16 (half the size; the embeddings' cosine to the fp32 weights' is above
0.9999 on speech, tests/test_voice.py). The time recursion is a loop of 160 steps per layer, each a
(partials × 256) @ (256 × 1024) product, so all partials of a call go through together.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from .mel import HOP, SAMPLE_RATE, mel_spectrogram, normalize_volume

__all__ = [
    "EMBEDDING_SIZE",
    "PARTIAL_FRAMES",
    "SAME_VOICE",
    "VOICE_MARGIN",
    "VoiceEncoder",
    "cosine",
    "default_encoder",
    "partial_slices",
    "weights_path",
]

log = logging.getLogger(__name__)

EMBEDDING_SIZE = 256
PARTIAL_FRAMES = 160  # 1.6 s of 10 ms frames
PARTIAL_RATE = 1.3  # partial utterances per second (Resemblyzer's default)
MIN_COVERAGE = 0.75  # a last partial needs this share of real audio to count
# Two voices are taken for one when their embeddings' cosine is at least SAME_VOICE; within
# VOICE_MARGIN of it either way the link is reported as uncertain. Calibrated on espeak-ng voices
# (``python bench/bench_linking.py --calibrate``, docs/AUDIO.md "Speakers across windows"): 3 s
# of one voice against ten seconds of it elsewhere scored 0.889-0.96, against other voices at
# most 0.82 (6 s: at least 0.94 / at most 0.84); an earlier probe found en-us against en-us+m3
# up to 0.92: to this encoder one voice, pitched differently.
SAME_VOICE = 0.88
VOICE_MARGIN = 0.03
_LAYERS = 3
_HIDDEN = 256


def weights_path() -> Path:
    """The converted weights shipped as package data."""
    return Path(str(resources.files("vibevoice_rpc") / "data" / "voice_encoder.safetensors"))


def partial_slices(
    n_samples: int, rate: float = PARTIAL_RATE, min_coverage: float = MIN_COVERAGE
) -> list[tuple[int, int]]:
    """The mel frame ranges ``[start, start + 160)`` of an utterance's partial utterances.

    Resemblyzer's ``compute_partial_slices``: one every ``round(16000 / rate / 160)`` frames over
    the whole utterance; the last one is dropped when less than ``min_coverage`` of it is real
    audio, unless it is the only one (short speech still gets one, zero-padded)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / rate) / HOP))
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"partial rate {rate} out of range")
    steps = max(1, n_frames - PARTIAL_FRAMES + step + 1)
    slices = [(i, i + PARTIAL_FRAMES) for i in range(0, steps, step)]
    start = slices[-1][0] * HOP
    coverage = (n_samples - start) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(slices) > 1:
        slices.pop()
    return slices


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1: the same direction)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large negative inputs (exp(-x) would reach inf)
    return 0.5 + 0.5 * np.tanh(0.5 * x)


class VoiceEncoder:
    """The GE2E encoder's weights in float32 and its forward pass."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for layer in range(_LAYERS):
            w_ih = np.asarray(tensors[f"lstm.weight_ih_l{layer}"], np.float32)
            w_hh = np.asarray(tensors[f"lstm.weight_hh_l{layer}"], np.float32)
            bias = np.asarray(tensors[f"lstm.bias_ih_l{layer}"], np.float32) + np.asarray(
                tensors[f"lstm.bias_hh_l{layer}"], np.float32
            )
            if w_hh.shape != (4 * _HIDDEN, _HIDDEN) or w_ih.shape[0] != 4 * _HIDDEN:
                raise ValueError(f"LSTM layer {layer} has shapes {w_ih.shape}, {w_hh.shape}")
            # transposed once so that each step is a row-major (batch × in) @ (in × 4·hidden)
            self.layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias))
        self.linear_w = np.ascontiguousarray(np.asarray(tensors["linear.weight"], np.float32).T)
        self.linear_b = np.asarray(tensors["linear.bias"], np.float32)

    @classmethod
    def load(cls, path: Path | None = None) -> VoiceEncoder:
        """Read the safetensors weights (the package's own file unless ``path``)."""
        from safetensors.numpy import load_file

        return cls(load_file(str(path or weights_path())))

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of partial utterances: ``(batch, frames, 40)`` mel → ``(batch,
        256)``, each L2-normalised (Resemblyzer's ``VoiceEncoder.forward``)."""
        x = np.asarray(mels, np.float32)
        batch, steps, _ = x.shape
        h = np.zeros((batch, _HIDDEN), np.float32)
        for index, (w_ih, w_hh, bias) in enumerate(self.layers):
            last = index == _LAYERS - 1
            # the input's share of every step's gates in one product
            gates_x = (x.reshape(batch * steps, -1) @ w_ih + bias).reshape(batch, steps, -1)
            h = np.zeros((batch, _HIDDEN), np.float32)
            c = np.zeros((batch, _HIDDEN), np.float32)
            out = None if last else np.empty((batch, steps, _HIDDEN), np.float32)
            for t in range(steps):
                gates = gates_x[:, t] + h @ w_hh
                i = _sigmoid(gates[:, :_HIDDEN])
                f = _sigmoid(gates[:, _HIDDEN : 2 * _HIDDEN])
                g = np.tanh(gates[:, 2 * _HIDDEN : 3 * _HIDDEN])
                o = _sigmoid(gates[:, 3 * _HIDDEN :])
                c = f * c + i * g
                h = o * np.tanh(c)
                if out is not None:
                    out[:, t] = h
            if out is not None:
                x = out
        raw = np.maximum(h @ self.linear_w + self.linear_b, 0.0)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        return raw / np.where(norm > 0, norm, 1.0)

    def embed_utterance(self, wav: np.ndarray) -> np.ndarray:
        """The embedding of one utterance of 16 kHz audio (already volume-normalised): the
        normalised mean of its partial utterances' embeddings (Resemblyzer's
        ``embed_utterance(wav)`` with its defaults: rate 1.3, min_coverage 0.75)."""
        return self.embed_utterances([wav])[0]

    def embed_utterances(self, wavs: list[np.ndarray]) -> np.ndarray:
        """:meth:`embed_utterance` of each of ``wavs``, all partials in one batch: ``(n, 256)``."""
        batches: list[np.ndarray] = []
        counts: list[int] = []
        for wav in wavs:
            wav = np.asarray(wav, np.float32)
            slices = partial_slices(len(wav))
            need = slices[-1][1] * HOP
            if need >= len(wav):
                wav = np.pad(wav, (0, need - len(wav)))
            mel = mel_spectrogram(wav)
            batches.append(np.stack([mel[a:b] for a, b in slices]))
            counts.append(len(slices))
        partials = self.embed_partials(np.concatenate(batches))
        out = np.empty((len(wavs), EMBEDDING_SIZE), np.float32)
        at = 0
        for n, count in enumerate(counts):
            mean = partials[at : at + count].mean(axis=0)
            at += count
            norm = float(np.linalg.norm(mean))
            out[n] = mean / norm if norm > 0 else mean
        return out

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """The embedding of ``samples`` at ``sample_rate``: resampled to 16 kHz with soxr's high
        quality (what ``librosa.resample`` uses), louder to −30 dBFS if quieter, then
        :meth:`embed_utterance`: Resemblyzer's ``preprocess_wav`` + ``embed_utterance``, without
        its webrtcvad trimming of long silences (the pipeline passes speech segments)."""
        return self.embed_utterance(preprocess(samples, sample_rate))

    def embed_many(self, clips: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """:meth:`embed` of each of ``clips``, their partials through the network in one batch
        (one pass of the 160-step recursion for all: several short clips cost about one long
        one): ``(len(clips), 256)``."""
        if not clips:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return self.embed_utterances([preprocess(c, sample_rate) for c in clips])


def preprocess(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """``samples`` → 16 kHz float32, volume-normalised (see :meth:`VoiceEncoder.embed`)."""
    wav = np.asarray(samples, np.float32)
    if sample_rate != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return normalize_volume(wav)


_lock = threading.Lock()
_default: VoiceEncoder | None = None


def default_encoder() -> VoiceEncoder:
    """The package's encoder, loaded on first use (≈ 3 MB; kept for the process)."""
    global _default
    with _lock:
        if _default is None:
            _default = VoiceEncoder.load()
            log.debug("voice encoder loaded from %s", weights_path())
        return _default
