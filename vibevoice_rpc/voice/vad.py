"""Silero VAD v6.2's network in numpy: one speech probability per 32 ms of 16 kHz audio.

Silero VAD (MIT, (c) Silero Team; github.com/snakers4/silero-vad) is a 310 K-parameter model: a
fixed STFT (a 256-tap convolution, stride 128) → magnitude → four 3-tap convolutions with ReLU →
one LSTM cell (128 units) carried from chunk to chunk → a 1×1 convolution and a sigmoid. Each
512-sample chunk is heard with the 64 samples before it, reflect-padded by 64 at its end
(``silero_vad/tinygrad_model.py`` in the package is the reference of this layout).

The weights are the ones ``silero_vad.load_silero_vad()`` runs (the package's TorchScript file,
v6.2), stored as safetensors in ``vibevoice_rpc/data`` by ``scripts/silero_weights.py``: the
package's own ``silero_vad_16k.safetensors`` holds a different set of weights (every tensor but the
STFT's differs; probabilities up to 0.7 apart; silero-vad issue #768), and this module must give
what Silero's model gives (tests/test_vad.py compares the two on real speech, within 1e-4).

Everything but the LSTM runs batched over a block of chunks (~33 s), so one minute of audio costs
a few milliseconds of numpy plus one small matrix-vector product per chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "VAD_RATE",
    "CHUNK",
    "WEIGHTS_PATH",
    "VadUnavailable",
    "SileroVad",
    "VadStream",
    "load_vad",
    "speech_probabilities",
]

VAD_RATE = 16000  # the network's only rate
CHUNK = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous chunk each chunk hears first
_FFT = 256  # the STFT's window (taps of its convolution) and hop below
_HOP = 128
_BINS = _FFT // 2 + 1
_BLOCK = 1024  # chunks per batched pass: ~33 s of audio, ~2.6 MB of frames
WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "data" / "silero_vad_16k_v6_2.safetensors"

# name -> shape, as scripts/silero_weights.py writes them (the layout of tinygrad_model.py).
SHAPES: dict[str, tuple[int, ...]] = {
    "stft_conv.weight": (2 * _BINS, 1, _FFT),
    "conv1.weight": (128, _BINS, 3),
    "conv1.bias": (128,),
    "conv2.weight": (64, 128, 3),
    "conv2.bias": (64,),
    "conv3.weight": (64, 64, 3),
    "conv3.bias": (64,),
    "conv4.weight": (128, 64, 3),
    "conv4.bias": (128,),
    "lstm_cell.weight_ih": (512, 128),
    "lstm_cell.weight_hh": (512, 128),
    "lstm_cell.bias_ih": (512,),
    "lstm_cell.bias_hh": (512,),
    "final_conv.weight": (1, 128, 1),
    "final_conv.bias": (1,),
}


class VadUnavailable(RuntimeError):
    """The weights file is missing or not the network's (a broken install)."""


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """A 3-tap 1-D convolution with padding 1 and a ReLU, channels last: ``x`` (B, L, C) and
    ``w`` (3·C, O) → (B, L', O), as one matrix product over the batch."""
    batch, length, channels = x.shape
    out = (length - 1) // stride + 1
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    taps = [padded[:, k : k + stride * (out - 1) + 1 : stride, :] for k in range(3)]
    cols = np.concatenate(taps, axis=2).reshape(batch * out, 3 * channels)
    y = cols @ w + b
    return np.maximum(y, 0.0, out=y).reshape(batch, out, -1)


class SileroVad:
    """The network with its weights; :meth:`stream` runs it over one piece of audio."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        for name, shape in SHAPES.items():
            got = tensors.get(name)
            if got is None or got.shape != shape:
                found = None if got is None else got.shape
                raise VadUnavailable(f"VAD weights: {name} should be {shape}, found {found}")
        t = {name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in SHAPES}
        self.stft = t["stft_conv.weight"][:, 0, :].T.copy()  # (256, 258): frames @ stft
        # (O, C, 3) → (3·C, O): the rows of tap 0 for every channel, then tap 1, then tap 2
        self.convs = [
            (
                t[f"conv{i}.weight"].transpose(2, 1, 0).reshape(-1, len(t[f"conv{i}.bias"])).copy(),
                t[f"conv{i}.bias"],
            )
            for i in (1, 2, 3, 4)
        ]
        # One tanh for all four LSTM gates (torch's order: input, forget, cell, output):
        # sigmoid(x) = (1 + tanh(x/2)) / 2, so the three sigmoid gates' rows are halved here.
        # (tanh never overflows, as exp(-x) does for a large negative x.)
        scale = np.full(512, 0.5, np.float32)
        scale[256:384] = 1.0
        self.w_ih = (t["lstm_cell.weight_ih"] * scale[:, None]).T.copy()  # (128, 512)
        self.w_hh = (t["lstm_cell.weight_hh"] * scale[:, None]).T.copy()
        self.b = (t["lstm_cell.bias_ih"] + t["lstm_cell.bias_hh"]) * scale
        self.w_out = t["final_conv.weight"][0, :, 0].copy()
        self.b_out = float(t["final_conv.bias"][0])

    def stream(self) -> VadStream:
        """A fresh pass (zero state, zero context), as Silero's ``reset_states()`` starts one."""
        return VadStream(self)

    def _encode(self, chunks: np.ndarray) -> np.ndarray:
        """(B, CONTEXT + CHUNK) samples → (B, 128) features: STFT magnitude and the convolutions."""
        n = len(chunks)
        # reflect padding of 64 at the end (without repeating the last sample), as F.pad "reflect"
        tail = chunks[:, -2 : -2 - CONTEXT : -1]
        x = np.concatenate([chunks, tail], axis=1)  # (B, 640)
        starts = np.arange((x.shape[1] - _FFT) // _HOP + 1) * _HOP  # 4 frames
        frames = x[:, starts[:, None] + np.arange(_FFT)[None, :]]  # (B, 4, 256)
        spec = frames @ self.stft  # (B, 4, 258): real parts, then imaginary parts
        mag = np.sqrt(spec[..., :_BINS] ** 2 + spec[..., _BINS:] ** 2)  # (B, 4, 129)
        h = _conv(mag, *self.convs[0], stride=1)
        h = _conv(h, *self.convs[1], stride=2)
        h = _conv(h, *self.convs[2], stride=2)
        h = _conv(h, *self.convs[3], stride=1)
        return h.reshape(n, 128)


class VadStream:
    """One pass of the network over audio fed in pieces of any length: the LSTM state and the last
    64 samples carry from piece to piece, so the probabilities are the same however it is cut."""

    def __init__(self, vad: SileroVad) -> None:
        self.vad = vad
        self._h = np.zeros(128, np.float32)
        self._c = np.zeros(128, np.float32)
        self._pending = np.zeros(CONTEXT, np.float32)  # context + samples not yet a whole chunk

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the whole chunks ``samples`` completes (float32, one per chunk)."""
        x = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        count = (len(x) - CONTEXT) // CHUNK
        out = [
            self._run(x[i * CHUNK : (i + min(_BLOCK, count - i)) * CHUNK + CONTEXT])
            for i in range(0, count, _BLOCK)
        ]
        self._pending = x[count * CHUNK :].copy()
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The last partial chunk's probability, zero-padded as Silero pads it (or nothing)."""
        rest = len(self._pending) - CONTEXT
        if rest <= 0:
            return np.zeros(0, np.float32)
        return self.feed(np.zeros(CHUNK - rest, np.float32))

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of the chunks in ``x`` (CONTEXT + k·CHUNK samples)."""
        vad = self.vad
        count = (len(x) - CONTEXT) // CHUNK
        index = np.arange(count)[:, None] * CHUNK + np.arange(CONTEXT + CHUNK)[None, :]
        gates_in = vad._encode(x[index]) @ vad.w_ih + vad.b  # (count, 512)
        w_hh, h, c = vad.w_hh, self._h, self._c
        hs = np.empty((count, 128), np.float32)
        for t in range(count):  # the one sequential part: 128 units
            g = np.tanh(gates_in[t] + h @ w_hh)
            c = 0.5 * ((1.0 + g[128:256]) * c + (1.0 + g[:128]) * g[256:384])
            h = 0.5 * (1.0 + g[384:]) * np.tanh(c)
            hs[t] = h
        self._h, self._c = h, c
        logits = np.maximum(hs, 0.0) @ vad.w_out + vad.b_out
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


_lock = threading.Lock()
_loaded: SileroVad | None = None


def load_vad(path: Path | None = None) -> SileroVad:
    """The network, its weights read once per process (safetensors; ~1.2 MB). Raises
    :class:`VadUnavailable` when the file is missing or holds something else."""
    global _loaded
    if path is None and _loaded is not None:
        return _loaded
    with _lock:
        if path is None and _loaded is not None:
            return _loaded
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        where = path or WEIGHTS_PATH
        try:
            vad = SileroVad(load_file(str(where)))
        except (OSError, SafetensorError) as exc:
            raise VadUnavailable(f"VAD weights unreadable at {where}: {exc}") from None
        if path is None:
            _loaded = vad
        return vad


def speech_probabilities(samples: np.ndarray, vad: SileroVad | None = None) -> np.ndarray:
    """One speech probability per 512 samples of 16 kHz ``samples`` (the last chunk zero-padded),
    as Silero's ``model.audio_forward(samples, 16000)`` gives them."""
    stream = (vad or load_vad()).stream()
    return np.concatenate([stream.feed(samples), stream.finish()])
