"""What runs the model, behind one protocol: the engine holds a :class:`Backend` and never asks which.

Two ways exist: :class:`~vibevoice_rpc.model.backend.LocalBackend` (the model in this process) and
:class:`~vibevoice_rpc.remote.backend.RemoteBackend` (a VibeVoice-ASR server), which
:class:`~vibevoice_rpc.remote.backend.WithFallback` composes with the local one. A new way of
running the model is a third class with these methods, not a branch in the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .audio.sink import DecodedAudio
    from .job import Job
    from .messages import (
        EngineStatus,
        GpuFacts,
        ReloadParams,
        StatusResult,
        TranscribeParams,
        TranscribeResult,
    )
    from .transcription.speech import SpeechPlan

__all__ = ["Backend"]


class Backend(Protocol):
    """One way of running the model. :meth:`status` is called on the reader thread and never
    waits; :meth:`warm_up` on the warm-up thread; everything else on the worker thread, one
    job at a time."""

    name: str  # what health's and the metadata's ``backend`` say: "local" or "remote"

    @property
    def label(self) -> str:
        """What it is, for a message ("the local model", "the server http://…")."""

    def warm_up(self) -> None:
        """After ``ready``: what makes the first job faster (torch's import, a server probe)."""

    def status(self, gpu: GpuFacts) -> EngineStatus:
        """Its part of ``health``, with the engine's GPU facts; at once, in every state."""

    def check_ready(self) -> None:
        """Before the audio is decoded: raise what would make the job fail anyway (no checkpoint)."""

    def preload(self, job: Job) -> None:
        """``--preload``: load now what the first job would (errors are logged, not raised)."""

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        """``reload_model`` for this backend."""

    def unload(self) -> bool:
        """Free the model; whether one was loaded."""

    def transcribe(
        self,
        audio: DecodedAudio,
        params: TranscribeParams,
        job: Job,
        *,
        started: float,
        notes: Sequence[str] = (),
        speech: SpeechPlan | None = None,
    ) -> TranscribeResult:
        """Transcribe decoded audio; ``started`` is the job's start (``processing_time``),
        ``notes`` go to ``metadata.warnings``, ``speech`` is what of the audio the model hears
        (the engine's voice activity plan; None: all of it), passed on to the pipeline."""

    def close(self) -> None:
        """The process is about to exit."""
