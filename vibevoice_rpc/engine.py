"""The engine: what the dispatcher's worker and reader threads call — one backend that runs the
model, the GPU probe, the checkpoint on disk — and nothing about how a backend works.

The worker thread calls :meth:`Engine.transcribe`, :meth:`Engine.reload`, :meth:`Engine.unload`,
:meth:`Engine.preload` and :meth:`Engine.download_model`, one job at a time; the reader thread calls
:meth:`Engine.snapshot` and :meth:`Engine.model_status`, which never wait for them. A ``reload_model``
with ``backend`` switches backends through a table (:attr:`Engine._switch`), never a branch on a name.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .backend import Backend
from .checkpoint.progress import ActiveDownloads
from .checkpoint.status import model_status  # before `ready`: the reader thread answers it
from .config import DEFAULT_MODEL_ID, Config, RemoteSettings
from .job import Job
from .messages import (
    DownloadParams,
    DownloadResult,
    EngineStatus,
    ModelStatusParams,
    ModelStatusResult,
    ReloadParams,
    StatusResult,
    TranscribeParams,
    TranscribeResult,
)
from .model.backend import LocalBackend, LocalRuntime
from .model.gpu import GpuProbe

if TYPE_CHECKING:
    from .remote.backend import RemoteBackend

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    """Holds the backend in use (:attr:`backend`), the local one (:attr:`local`, kept for a
    switch back and for the remote fallback) and the GPU probe."""

    def __init__(
        self, config: Config, gpu: GpuProbe | None = None, runtime: LocalRuntime | None = None
    ) -> None:
        """``runtime`` loads and runs the local model (:class:`LocalRuntime` unless a test or
        another runtime passes its own)."""
        self.config = config
        self.gpu = gpu if gpu is not None else GpuProbe()
        self.local = LocalBackend(config, self.gpu, runtime)
        self._remote_settings: RemoteSettings | None = config.remote
        self.downloads = ActiveDownloads()
        self._switch = {"local": self._to_local, "remote": self._to_remote}
        start = {"local": lambda: self.local, "remote": self._configured_remote}
        self.backend: Backend = start[config.backend]()

    def _configured_remote(self) -> Backend:
        """The server of ``VIBEVOICE_REMOTE_URL`` (probed in the background: health says whether
        it answers; the configuration was checked at start)."""
        from .remote.backend import RemoteBackend  # the HTTP client: only for the remote backend

        settings = self._remote_settings
        assert settings is not None, "VIBEVOICE_BACKEND=remote without VIBEVOICE_REMOTE_URL"
        return self._compose(RemoteBackend(settings, self.config.max_window_seconds))

    def _compose(self, remote: RemoteBackend) -> Backend:
        """The server, with the local model behind it when ``VIBEVOICE_REMOTE_FALLBACK=local``."""
        from .remote.backend import WithFallback

        if remote.settings.fallback == self.local.name:
            return WithFallback(remote, self.local)
        return remote

    # --- the reader thread ------------------------------------------------------------------

    def snapshot(self) -> EngineStatus:
        """The engine's part of ``health``; answers at once, in every state. GPU facts come from
        the probe (NVML, else torch); until one has answered, ``gpu_probe`` is ``"pending"``."""
        return self.backend.status(self.gpu.facts())

    def model_status(self, params: ModelStatusParams) -> ModelStatusResult:
        """What is on disk and what a download would fetch; from the disk alone, at once."""
        return model_status(
            params, self.local.spec.model_path, offline=self.config.offline, active=self.downloads
        )

    def warm_up(self) -> None:
        """On one background thread, in this order: start the NVML GPU probe, import
        huggingface_hub (so the first ``model_status`` does not wait for it), then the backend's
        own warm-up (torch's import; a server probe). Health waits for none of them. One thread,
        started last: ``import torch`` holds the GIL for ~150 ms in one piece, so the later it
        starts the likelier the app's first ``health`` has been answered already."""
        threading.Thread(target=self._warm_up, name="vibevoice-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        from .checkpoint.hub import preimport_hub

        self.gpu.start()
        preimport_hub()
        self.backend.warm_up()

    # --- the worker thread ------------------------------------------------------------------

    def preload(self, job: Job) -> None:
        self.backend.preload(job)

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        """``reload_model``: for the backend in use, or switching to ``params.backend``."""
        return self._switch[params.backend or self.backend.name](params, job)

    def _to_local(self, params: ReloadParams, job: Job) -> StatusResult:
        if self.backend is not self.local:
            old, self.backend = self.backend, self.local
            old.close()
        return self.local.reload(params, job)

    def _to_remote(self, params: ReloadParams, job: Job) -> StatusResult:
        """Switch to (or re-point) the remote backend: the server must answer first, else the
        backend in use is kept."""
        from .remote.backend import RemoteBackend, remote_settings

        settings = remote_settings(self._remote_settings, params)
        remote = RemoteBackend.connect(
            settings, self.config.max_window_seconds, job, keeping=self.backend.label
        )
        old, self.backend = self.backend, self._compose(remote)
        self._remote_settings = settings
        if old is not self.local:
            old.close()
        self.local.unload()  # the GPU is not needed while the server transcribes
        return remote.reload(params, job)

    def unload(self, job: Job) -> StatusResult:
        was = self.backend.unload()
        return StatusResult(
            status="success", message="Model unloaded" if was else "No model was loaded"
        )

    def download_model(self, params: DownloadParams, job: Job) -> DownloadResult:
        """Download (or finish downloading) the checkpoint. The default model's folder becomes
        the one the local model's next load reads; a loaded model keeps serving until then."""
        from .checkpoint.fetch import download_model
        from .checkpoint.hub import quiet_hub

        quiet_hub()
        result = download_model(
            params,
            job,
            configured_path=self.local.spec.model_path,
            offline=self.config.offline,
            active=self.downloads,
        )
        if (params.model_id or DEFAULT_MODEL_ID) == DEFAULT_MODEL_ID:
            self.local.use_checkpoint(result.path)
        return result

    def transcribe(self, params: TranscribeParams, job: Job) -> TranscribeResult:
        """Decode the audio, find its speech, then let the backend in use transcribe what the
        model should hear (one backend for the whole job, whatever a ``reload_model`` queued
        behind it will switch to). Audio without speech is answered here: no model is loaded,
        no server asked."""
        from .audio.decode import load_audio  # numpy and the decoders: after `ready`
        from .transcription.pipeline import no_speech_result
        from .transcription.speech import SpeechSettings, plan_speech

        started = time.monotonic()
        backend = self.backend
        backend.check_ready()  # e.g. no checkpoint: -32004 before decoding
        job.report("loading_audio", 0.0, "decoding audio")
        audio = load_audio(
            params.audio_path,
            max_seconds=self.config.max_audio_seconds,
            threads=self.config.audio_threads,
            ffmpeg=self.config.ffmpeg,
            check_cancel=job.check_cancelled,
        )
        job.report("loading_audio", 1.0, f"decoded {audio.duration:.1f} s of audio")
        settings = SpeechSettings(
            enabled=self.config.vad if params.vad is None else params.vad,
            min_silence=self.config.vad_min_silence_seconds,
        )
        speech = plan_speech(audio.samples, settings, check_cancelled=job.check_cancelled)
        if speech.speech_seconds is not None:
            job.report(
                "loading_audio",
                1.0,
                f"{speech.speech_seconds:.1f} s of speech in {audio.duration:.1f} s of audio",
            )
        if speech.no_speech:
            status = backend.status(self.gpu.facts())
            return no_speech_result(audio, params, speech, status, started=started)
        return backend.transcribe(audio, params, job, started=started, speech=speech)

    def close(self) -> None:
        """The process exits right after: the OS frees the model's memory."""
        self.backend.close()
