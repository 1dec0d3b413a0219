"""A controllable stand-in for the engine, for dispatcher unit tests only (never used by the product)."""

from __future__ import annotations

import threading

from vibevoice_rpc.errors import AudioFileError
from vibevoice_rpc.job import Job
from vibevoice_rpc.messages import (
    DownloadParams,
    DownloadResult,
    EngineStatus,
    GpuFacts,
    Metadata,
    ModelStatusParams,
    ModelStatusResult,
    ReloadParams,
    Segment,
    StatusResult,
    TranscribeParams,
    TranscribeResult,
)


class FakeEngine:
    def __init__(self) -> None:
        self.state = "idle"
        self.gate = threading.Event()  # transcribe blocks until set (or cancelled)
        self.gate.set()
        self.started = threading.Event()
        self.preload_gate = threading.Event()  # preload blocks until set
        self.preload_gate.set()
        self.preloading = threading.Event()
        self.download_gate = threading.Event()  # download_model blocks until set (or cancelled)
        self.download_gate.set()
        self.downloading = threading.Event()
        self.calls: list[str] = []
        self.closed = False

    def snapshot(self) -> EngineStatus:
        return EngineStatus(
            state=self.state,
            model_loaded=False,
            gpu=GpuFacts(gpu_probe="none"),
            device="cpu",
            precision="fp32",
            model="fake",
        )

    def transcribe(self, params: TranscribeParams, job: Job) -> TranscribeResult:
        self.calls.append(params.audio_path)
        if params.audio_path == "missing.wav":
            raise AudioFileError("Audio file not found: missing.wav", kind="not_found")
        if params.audio_path == "boom.wav":
            raise ValueError("boom")
        job.report("loading_audio", 0.5, "decoding")
        job.add_segment(Segment("Speaker_0", 0.0, 1.0, "hello", speaker_id=0))
        self.started.set()
        while not self.gate.wait(0.01):
            job.check_cancelled()
        job.check_cancelled()
        job.add_segment(Segment("Speaker_1", 1.0, 2.0, "world", speaker_id=1))
        meta = Metadata(
            duration=2.0, language="en", processing_time=0.1, model_precision="fp32", num_speakers=2
        )
        return TranscribeResult(segments=list(job.segments), metadata=meta)

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        self.calls.append("reload:" + params.precision)
        return StatusResult("success", f"Model reloaded with precision: {params.precision}")

    def unload(self, job: Job) -> StatusResult:
        self.calls.append("unload")
        return StatusResult("success", "Model unloaded")

    def model_status(self, params: ModelStatusParams) -> ModelStatusResult:
        self.calls.append("model_status")
        return ModelStatusResult(
            present=False,
            path=None,
            source=None,
            model_id=params.model_id or "microsoft/VibeVoice-ASR-HF",
            revision=None,
            commit=None,
            bytes_on_disk=0,
            partial_bytes=0,
            download_bytes=None,
            remaining_bytes=None,
            missing=None,
            target_dir="/models/fake",
            free_bytes=None,
        )

    def download_model(self, params: DownloadParams, job: Job) -> DownloadResult:
        """Blocks on ``download_gate`` like a long download (cancel ends the wait)."""
        self.calls.append("download")
        self.downloading.set()
        job.report("downloading", 0.0, "fake download")
        while not self.download_gate.wait(0.01):
            job.check_cancelled()
        return DownloadResult(
            status="success",
            path="/models/fake",
            model_id="microsoft/VibeVoice-ASR-HF",
            revision="main",
            commit="0" * 40,
            bytes_total=1,
            bytes_downloaded=1,
            files=1,
            seconds=0.0,
            message="downloaded",
        )

    def preload(self, job: Job) -> None:
        self.calls.append("preload")
        self.preloading.set()
        self.preload_gate.wait(5)

    def close(self) -> None:
        self.closed = True
