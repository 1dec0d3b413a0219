"""The voices of a transcription's speakers, for linking them across windows.

The stitcher (pipeline.py) asks two things of it: how similar each local speaker of the window
at hand sounds to each global speaker heard so far (:meth:`SpeakerVoices.similarities`, from that
local speaker's segments' audio), and, at the end of a window, to learn the global speakers'
voices from their speech in it (:meth:`SpeakerVoices.learn`). A voice is the speaker encoder's
embedding (voice/embedding.py) of a speaker's speech in one window, up to ``CAP_SECONDS`` of it
(the longest segments first; cost stays bounded whatever the window's length), with the stretches
where another speaker talks at the same time left out; a global speaker's voice is the mean of
their windows' embeddings, weighted by seconds. Speech shorter than ``MIN_SECONDS`` gives no
evidence. Times are seconds of the model's input and the audio is the model's input (the
file's speech, with the voice activity detector's pauses: transcription/speech.py), as the
stitcher's are.

If the encoder's weights cannot be loaded, linking goes on by timing alone and the result says so
(one warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from ..limits import SAMPLE_RATE
from ..voice.embedding import EMBEDDING_SIZE, VoiceEncoder, default_encoder
from .windowing import TimedSpeech

__all__ = ["SpeakerVoices", "CAP_SECONDS", "MIN_SECONDS", "DECIDE_SECONDS", "MAX_HOLD_SECONDS"]

log = logging.getLogger(__name__)

# Less speech than this gives no voice evidence: on espeak-ng voices (bench/bench_linking.py),
# 1.5-2 s of a voice scored as low as 0.82 against ten seconds of it (below SAME_VOICE), 3 s at
# least 0.89, while distinct voices stayed at most 0.84.
MIN_SECONDS = 3.0
CAP_SECONDS = 20.0  # at most this much of one speaker's speech per window is embedded
# A speaker first heard after a window's link point is decided once this much of their speech
# has arrived (or the window ends); their segments, and those after them, wait until then …
DECIDE_SECONDS = 4.0
# … but never for more than this stretch of audio (then the voice heard so far decides).
MAX_HOLD_SECONDS = 30.0
_EDGE_SECONDS = 0.1  # trimmed off each end of a segment: the model's boundaries are approximate


def _spans(
    speaker: int, speech: Iterable[TimedSpeech], cap: float = CAP_SECONDS
) -> list[tuple[float, float]]:
    """``speaker``'s stretches of speech in ``speech`` without the others' talk, longest first up
    to ``cap`` seconds, returned in time order."""
    speech = list(speech)
    others = sorted((t.start, t.end) for t in speech if t.speaker != speaker)
    pieces: list[tuple[float, float]] = []
    for t in speech:
        if t.speaker != speaker:
            continue
        lo, hi = t.start + _EDGE_SECONDS, t.end - _EDGE_SECONDS
        for o_lo, o_hi in others:
            if o_hi <= lo or o_lo >= hi:
                continue
            if o_lo > lo:
                pieces.append((lo, o_lo))
            lo = max(lo, o_hi)
            if lo >= hi:
                break
        if hi > lo:
            pieces.append((lo, hi))
    chosen: list[tuple[float, float]] = []
    total = 0.0
    for lo, hi in sorted(pieces, key=lambda p: p[0] - p[1]):
        if total >= cap:
            break
        hi = min(hi, lo + cap - total)
        chosen.append((lo, hi))
        total += hi - lo
    return sorted(chosen)


class SpeakerVoices:
    """The global speakers' voices so far, over the decoded audio ``samples`` (24 kHz).

    ``load`` gives the encoder when it is first needed (the package's, loaded once per process)."""

    def __init__(
        self, samples: np.ndarray, load: Callable[[], VoiceEncoder] = default_encoder
    ) -> None:
        self.samples = samples
        self._load = load
        self._encoder: VoiceEncoder | None = None
        self._failed = False
        self.notes: list[str] = []
        self._profiles: dict[int, list[tuple[np.ndarray, float]]] = {}
        self.seconds_embedded = 0.0  # audio through the encoder (for the bench)

    @property
    def failed(self) -> bool:
        """The encoder could not be loaded: there is no voice to wait for."""
        return self._failed

    def _get_encoder(self) -> VoiceEncoder | None:
        if self._encoder is None and not self._failed:
            try:
                self._encoder = self._load()
            except Exception as exc:  # a damaged install must not cost the transcription
                log.warning("voice encoder unavailable: %s", exc, exc_info=True)
                self._failed = True
                self.notes.append(
                    f"voice linking unavailable ({type(exc).__name__}): speakers are linked "
                    "across windows by timing only"
                )
        return self._encoder

    def embed(self, spans: list[list[tuple[float, float]]]) -> list[np.ndarray | None]:
        """The embedding of the audio in each of ``spans`` (lists of seconds), each joined; None
        for one below MIN_SECONDS. All in one batch through the encoder."""
        n = len(self.samples)
        clips: list[np.ndarray | None] = []
        for pieces in spans:
            parts = [
                self.samples[max(0, round(lo * SAMPLE_RATE)) : min(n, round(hi * SAMPLE_RATE))]
                for lo, hi in pieces
            ]
            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            clips.append(audio if len(audio) >= MIN_SECONDS * SAMPLE_RATE else None)
        out: list[np.ndarray | None] = [None] * len(clips)
        wanted = [i for i, c in enumerate(clips) if c is not None]
        batch = [c for c in clips if c is not None]
        encoder = self._get_encoder() if batch else None
        if encoder is None:
            return out
        self.seconds_embedded += sum(len(c) for c in batch) / SAMPLE_RATE
        for i, emb in zip(wanted, encoder.embed_many(batch, SAMPLE_RATE), strict=True):
            out[i] = emb
        return out

    def _profile(self, glob: int) -> np.ndarray:
        total = sum(
            (emb * secs for emb, secs in self._profiles[glob]), np.zeros(EMBEDDING_SIZE, np.float32)
        )
        return total / max(float(np.linalg.norm(total)), 1e-12)

    def similarities(
        self, speech: list[TimedSpeech], only: int | None = None
    ) -> dict[int, dict[int, float]]:
        """For each speaker of ``speech`` (local ids; only ``only`` when given) with enough of
        it: cosine to every global speaker's voice (global id → similarity). Empty without
        global voices or an encoder."""
        if not self._profiles:
            return {}
        profiles = {glob: self._profile(glob) for glob in self._profiles}
        out: dict[int, dict[int, float]] = {}
        speakers = sorted({t.speaker for t in speech} if only is None else {only})
        embs = self.embed([_spans(local, speech) for local in speakers])
        for local, emb in zip(speakers, embs, strict=True):
            if emb is not None:
                out[local] = {g: float(np.dot(emb, p)) for g, p in sorted(profiles.items())}
        return out

    def learn(self, speech: list[TimedSpeech]) -> None:
        """Add each global speaker's voice in ``speech`` (one window's, global ids) to theirs."""
        speakers = sorted({t.speaker for t in speech})
        spans = [_spans(glob, speech) for glob in speakers]
        for glob, pieces, emb in zip(speakers, spans, self.embed(spans), strict=True):
            if emb is not None:
                self._profiles.setdefault(glob, []).append(
                    (emb, float(sum(hi - lo for lo, hi in pieces)))
                )
