"""Method names and the typed params/results of every method (msgspec Structs).

Field names are the Trispr Flow app's contract (inherited from the old HTTP sidecar): keep them exactly.
Extra result fields are fine (the app ignores them); missing or retyped ones break its serde parsing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

from .limits import MAX_CONTEXT_CHARS, MAX_HOTWORD_CHARS, MAX_HOTWORDS

__all__ = [
    "PRECISIONS",
    "Precision",
    "GPU_PROBES",
    "GpuProbeName",
    "STAGES",
    "TranscribeParams",
    "ReloadParams",
    "EmptyParams",
    "CancelParams",
    "Segment",
    "SkippedAudio",
    "Metadata",
    "TranscribeResult",
    "StatusResult",
    "CancelResult",
    "HealthResult",
    "DownloadParams",
    "DownloadResult",
    "ModelStatusParams",
    "ModelStatusResult",
    "GpuFacts",
    "EngineStatus",
    "ReadyParams",
    "ProgressParams",
    "SegmentParams",
]

Precision = Literal["fp16", "bf16", "int8", "nf4", "fp32", "auto"]
PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "int8", "nf4", "fp32", "auto")

# health.gpu_probe: where gpu_available comes from (vibevoice_rpc.model.gpu explains each).
GpuProbeName = Literal["pending", "nvml", "torch", "none", "failed"]
GPU_PROBES: tuple[str, ...] = get_args(GpuProbeName)

# Progress stages of a transcribe job, in order.
STAGES: tuple[str, ...] = (
    "queued",
    "loading_audio",
    "loading_model",
    "uploading",
    "encoding",
    "transcribing",
    "finalizing",
)

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
# "auto" or a language code such as "de", "en-US", "yue", "zh_Hans".
Language = Annotated[
    str, msgspec.Meta(pattern=r"^(?:[Aa][Uu][Tt][Oo]|[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*)$")
]
# Request limits on the prompt's inputs (vibevoice_rpc.limits). Microsoft's examples use a handful of
# names and a sentence or two. Without limits a 100 KB context took 22 s of prefill and a 1 MB one
# never finished.
Hotword = Annotated[str, msgspec.Meta(max_length=MAX_HOTWORD_CHARS)]
Hotwords = Annotated[list[Hotword], msgspec.Meta(max_length=MAX_HOTWORDS)]
Context = Annotated[str, msgspec.Meta(max_length=MAX_CONTEXT_CHARS)]


# --- params ---------------------------------------------------------------------------------


class TranscribeParams(msgspec.Struct, frozen=True):
    """``language`` is never put in the prompt (the model detects it): it becomes
    ``metadata.language`` as given. ``hotwords`` and ``context`` become the prompt's context lines."""

    audio_path: NonEmptyStr
    precision: Precision | None = None
    language: Language = "auto"
    hotwords: Hotwords = []
    context: Context | None = None
    max_new_tokens: PositiveInt | None = None
    vad: bool | None = None  # voice activity detection; None: the configured (VIBEVOICE_VAD)


class ReloadParams(msgspec.Struct, frozen=True):
    """``backend`` switches between the local model and a remote server (then ``precision`` is
    kept for when the local model is used again); ``remote_*`` set the server."""

    precision: Precision
    model_path: str | None = None
    device: Literal["auto", "cuda", "cpu"] | None = None
    backend: Literal["local", "remote"] | None = None
    remote_url: str | None = None
    remote_api_key: str | None = None
    remote_model: str | None = None
    remote_dialect: Literal["official", "transformers"] | None = None


class EmptyParams(msgspec.Struct, frozen=True):
    pass


class CancelParams(msgspec.Struct, frozen=True):
    id: int | float | str  # the id of the request to cancel, exactly as it was sent


# --- results --------------------------------------------------------------------------------


class Segment(msgspec.Struct, frozen=True):
    """One stretch of the transcript. The first four fields are the app's contract.

    ``speaker_id`` is the number in ``speaker`` for a numbered speaker, else null (the model wrote
    no speaker, ``"N/A"`` or a name); ``non_speech`` marks text that is only bracketed tags such as
    ``[Silence]`` or ``[Music]``. Neither kind is linked to a numbered speaker or counted in
    ``num_speakers``.
    """

    speaker: str
    start_time: float
    end_time: float
    text: str
    speaker_id: int | None = None
    non_speech: bool = False


class SkippedAudio(msgspec.Struct, frozen=True):
    """A stretch of the file the model did not hear (no speech for at least
    ``VIBEVOICE_VAD_MIN_SILENCE_SECONDS``), in seconds of the file. Between two heard parts the
    model heard a 1 s pause in its place."""

    start: float
    end: float


class Metadata(msgspec.Struct):
    duration: float
    language: str
    processing_time: float
    model_precision: str
    num_speakers: int
    device: str = "cpu"
    model: str = ""
    truncated: bool = False
    repetition_stopped: bool = False
    loop_recoveries: int = 0
    backend: str = "local"
    server: str | None = None
    warnings: list[str] = []
    windows: int = 1
    max_new_tokens: int = 0
    generated_tokens: int = 0
    plan: MemoryPlan | None = None
    # What the model heard (voice activity detection; docs/AUDIO.md): whether the VAD ran, the
    # seconds of speech it found (None without it), the seconds the model was fed, and what of
    # the file it did not hear. Segment times are always the file's.
    vad: bool = False
    speech_seconds: float | None = None
    model_input_seconds: float | None = None
    skipped: list[SkippedAudio] = []


class TranscribeResult(msgspec.Struct):
    segments: list[Segment]
    metadata: Metadata
    status: str = "success"


class StatusResult(msgspec.Struct):
    status: str
    message: str


class CancelResult(msgspec.Struct):
    cancelled: bool


class GpuFacts(msgspec.Struct, frozen=True):
    """What the GPU probe knows (NVML, else torch); never waits. VRAM is the whole GPU's."""

    gpu_available: bool = False
    gpu_probe: GpuProbeName = "pending"
    gpu_name: str | None = None
    gpu_driver: str | None = None
    vram_used_mb: int | None = None
    vram_total_mb: int | None = None


class RemoteHealth(msgspec.Struct, frozen=True):
    """health's ``remote`` object: the server from its last probe (never waited for), and the
    settings in use. ``url`` never carries credentials or a query."""

    url: str | None
    reachable: bool | None = None  # None: not probed yet
    models: list[str] = msgspec.field(default_factory=list)  # the first 16 ids
    models_count: int = 0
    max_model_len: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    checked_s_ago: float | None = None
    model: str | None = None
    dialect: str | None = None
    fallback: str | None = None


class MemoryPlan(msgspec.Struct, frozen=True):
    """What a precision needs on a device and whether it fits (the VRAM planner's answer): the
    loader follows it, health and ``metadata.plan`` show it."""

    precision: str  # resolved, never "auto"
    requested: str
    device: str
    lm_dtype: str  # dtype of the language model's unquantized parts and of its compute
    encoder_dtype: str  # "fp32" | "bf16" | "fp16" (audio encoders and projector)
    encoders_on_cpu_between_jobs: bool
    encoder_chunk_samples: int  # config.acoustic_tokenizer_chunk_size is set to this
    weights_bytes: dict[str, int]  # per group, "total", and "resident" (on the device between jobs)
    window_seconds: float  # the audio window the byte figures below are for
    tokens: dict[str, int]
    kv_cache_bytes: int
    activation_margin_bytes: int  # peak working memory beyond resident weights and the KV cache
    phase_bytes: dict[str, int]  # peak while encoding audio, and while prefilling/decoding
    total_bytes: int  # the peak of the two phases
    free_vram_bytes: int | None
    total_vram_bytes: int | None
    fits: bool
    cpu_offload: bool
    fitting_modes: list[str]
    max_window_seconds: float  # longest audio window that fits with this mode (<= an hour)
    notes: list[str]
    # With CPU offload: the most the loader may put on the GPU (accelerate's ``max_memory``).
    offload_max_memory_bytes: int | None
    summary: str  # one line: the mode, its peak, the free VRAM, the longest window

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what health and the metadata carry)."""
        return msgspec.to_builtins(self)


class EngineStatus(msgspec.Struct, frozen=True):
    """The engine's part of ``health`` (``Engine.snapshot``), read on the reader thread."""

    state: str
    model_loaded: bool
    gpu: GpuFacts
    device: str | None
    precision: str  # what runs (or would run) for the requested precision
    model: str
    requested_precision: str | None = None
    last_error: str | None = None
    plan: MemoryPlan | None = None
    backend: str = "local"
    remote: RemoteHealth | None = None


class HealthResult(msgspec.Struct):
    """``gpu_available`` is meaningful only once ``gpu_probe`` is not ``"pending"`` (see
    :data:`GPU_PROBES`); ``device`` is None until torch has answered."""

    status: str
    model_loaded: bool
    gpu_available: bool
    vram_used_mb: int | None
    vram_total_mb: int | None
    gpu_probe: GpuProbeName
    state: str
    device: str | None
    precision: str
    model: str
    queue_length: int
    version: str
    protocol: str
    pid: int
    uptime_s: float
    last_error: str | None = None
    plan: MemoryPlan | None = None
    backend: str = "local"
    remote: RemoteHealth | None = None
    requested_precision: str | None = None
    gpu_name: str | None = None
    gpu_driver: str | None = None
    log_lines_dropped: int = 0  # stderr lines dropped because stderr was full (nobody read it)


# --- model_status / download_model ----------------------------------------------------------


class DownloadParams(msgspec.Struct, frozen=True):
    model_id: str | None = None
    revision: str | None = None
    target_dir: str | None = None


class ModelStatusParams(msgspec.Struct, frozen=True):
    model_id: str | None = None
    revision: str | None = None
    target_dir: str | None = None


class DownloadResult(msgspec.Struct):
    status: str
    path: str
    model_id: str
    revision: str
    commit: str
    bytes_total: int
    bytes_downloaded: int  # fetched by this call (0 when everything was already there)
    files: int
    seconds: float
    message: str


class DownloadProgress(msgspec.Struct, frozen=True):
    """A running download: ``progress.download`` (stage ``downloading``) and
    ``model_status.downloading``."""

    bytes_done: int
    bytes_total: int
    file: str  # the file being fetched
    file_index: int  # its place in the listing, from 1
    files: int
    speed_bps: int  # smoothed over the last few seconds (0 while stalled)
    eta_s: float | None  # None until there is a speed


class ModelStatusResult(msgspec.Struct):
    present: bool  # a usable checkpoint (config.json + safetensors) is on disk
    path: str | None  # where it is (or where a download will go)
    source: str | None  # "directory" (a checkpoint folder), "hf_cache", or null
    model_id: str
    revision: str | None
    commit: str | None
    bytes_on_disk: int  # complete files of the checkpoint (+ partial bytes below)
    partial_bytes: int  # fetched so far into unfinished files (a resumed download keeps them)
    download_bytes: int | None  # the whole checkpoint, when a listing is known
    remaining_bytes: int | None
    missing: list[str] | None  # files not yet complete, when a listing is known
    target_dir: str
    free_bytes: int | None  # free space at target_dir (or its nearest existing parent)
    downloading: DownloadProgress | None = None
    message: str = ""


# --- notifications --------------------------------------------------------------------------


class ReadyParams(msgspec.Struct):
    version: str
    protocol: str
    pid: int


class ProgressParams(msgspec.Struct):
    id: int | str | None
    stage: str
    progress: float
    message: str
    download: DownloadProgress | msgspec.UnsetType = msgspec.UNSET  # stage "downloading" only


class SegmentParams(msgspec.Struct):
    id: int | str | None
    index: int
    segment: Segment
