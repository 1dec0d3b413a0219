"""Method names and the typed params/results of every method (msgspec Structs).

Field names are the Trispr Flow app's contract (inherited from the old HTTP sidecar): keep them exactly.
Extra result fields are fine (the app ignores them); missing or retyped ones break its serde parsing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "PRECISIONS",
    "Precision",
    "STAGES",
    "TranscribeParams",
    "ReloadParams",
    "EmptyParams",
    "CancelParams",
    "Segment",
    "Metadata",
    "TranscribeResult",
    "StatusResult",
    "CancelResult",
    "HealthResult",
    "ReadyParams",
    "ProgressParams",
    "SegmentParams",
]

Precision = Literal["fp16", "bf16", "int8", "nf4", "fp32", "auto"]
PRECISIONS: tuple[str, ...] = ("fp16", "bf16", "int8", "nf4", "fp32", "auto")

# Progress stages of a transcribe job, in order.
STAGES: tuple[str, ...] = (
    "queued",
    "loading_audio",
    "loading_model",
    "encoding",
    "transcribing",
    "finalizing",
)

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


# --- params ---------------------------------------------------------------------------------


class TranscribeParams(msgspec.Struct, frozen=True):
    audio_path: NonEmptyStr
    precision: Precision | None = None
    language: str = "auto"
    hotwords: list[str] = []
    context: str | None = None
    max_new_tokens: PositiveInt | None = None


class ReloadParams(msgspec.Struct, frozen=True):
    precision: Precision
    model_path: str | None = None
    device: Literal["auto", "cuda", "cpu"] | None = None


class EmptyParams(msgspec.Struct, frozen=True):
    pass


class CancelParams(msgspec.Struct, frozen=True):
    id: int | float | str  # the id of the request to cancel, exactly as it was sent


# --- results --------------------------------------------------------------------------------


class Segment(msgspec.Struct, frozen=True):
    speaker: str
    start_time: float
    end_time: float
    text: str


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
    warnings: list[str] = []
    windows: int = 1
    max_new_tokens: int = 0
    generated_tokens: int = 0
    plan: dict[str, Any] | None = None


class TranscribeResult(msgspec.Struct):
    segments: list[Segment]
    metadata: Metadata
    status: str = "success"


class StatusResult(msgspec.Struct):
    status: str
    message: str


class CancelResult(msgspec.Struct):
    cancelled: bool


class HealthResult(msgspec.Struct):
    status: str
    model_loaded: bool
    gpu_available: bool
    vram_used_mb: int | None
    vram_total_mb: int | None
    state: str
    device: str
    precision: str
    model: str
    queue_length: int
    version: str
    protocol: str
    pid: int
    uptime_s: float
    last_error: str | None = None
    plan: dict[str, Any] | None = None
    log_lines_dropped: int = 0  # stderr lines dropped because stderr was full (nobody read it)


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


class SegmentParams(msgspec.Struct):
    id: int | str | None
    index: int
    segment: Segment
