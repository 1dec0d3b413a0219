"""The one resident VibeVoice-ASR model: load, precision, transcribe, unload — and the state health shows.

Only the worker thread calls :meth:`Engine.transcribe`, :meth:`Engine.reload`, :meth:`Engine.unload` and
:meth:`Engine.preload`; the reader thread calls :meth:`Engine.snapshot`, which never waits for them.
torch is imported on a background thread after ``ready`` (:meth:`Engine.warm_up`), next to the NVML
GPU probe (:mod:`vibevoice_rpc.gpu`); transformers when the model is first loaded; bitsandbytes only
for a quantized precision.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODEL_ID, Config
from .errors import ModelUnavailable, OutOfMemory, RpcError
from .gpu import GpuProbe, cap_process_memory, torch_import_error
from .messages import ReloadParams, StatusResult, TranscribeParams, TranscribeResult

if TYPE_CHECKING:
    from .dispatcher import Job

__all__ = ["Engine"]

log = logging.getLogger(__name__)

_LOWER = {
    "auto": "int8",
    "fp32": "bf16",
    "bf16": "int8",
    "fp16": "int8",
    "int8": "nf4",
    "nf4": "nf4",
}


@dataclass
class _Loaded:
    model: Any
    processor: Any
    requested: str  # what was asked for (e.g. fp16 on a CPU machine)
    precision: str  # what actually runs
    device: str
    source: str
    plan: dict[str, Any] | None
    max_window_seconds: float
    parked: bool = False  # audio encoders on the CPU between jobs (the planner's choice)


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


class Engine:
    """Owns the model. Public methods other than :meth:`snapshot` run on the worker thread."""

    def __init__(self, config: Config, gpu: GpuProbe | None = None) -> None:
        self.config = config
        self.state = "idle"  # health says "starting" until torch is imported
        self.last_error: str | None = None
        self._loaded: _Loaded | None = None
        self._torch_ready = threading.Event()
        self._torch_lock = threading.Lock()
        self._torch_error: BaseException | None = None
        self.gpu = gpu if gpu is not None else GpuProbe()
        self._model_path = config.model_path
        self._device_pref = config.device

    # --- state for health (reader thread) -------------------------------------------------

    def warm_up(self) -> None:
        """Probe the GPU through NVML and import torch, each on a background thread, so health can
        report the GPU without a model and without waiting for either."""
        self.gpu.start()
        threading.Thread(target=self._import_torch, name="vibevoice-warmup", daemon=True).start()

    def _import_torch(self) -> None:
        """Import torch once (the warm-up thread, or the worker if it gets there first)."""
        with self._torch_lock:
            if self._torch_ready.is_set():
                return
            try:
                import torch

                self.gpu.torch_answered(bool(torch.cuda.is_available()))
            except Exception as exc:  # a broken torch install must still let health answer
                self._torch_error = exc
                self.gpu.torch_answered(None)
                err = torch_import_error(exc)
                log.error("%s (%s)", err.message, err.hint)
                self.last_error = err.message
            finally:
                self._torch_ready.set()

    def _require_torch(self) -> None:
        """Raise the torch_import_failed error when torch could not be imported (no retry: a
        half-imported torch is not trustworthy; the hint says to restart the engine)."""
        self._import_torch()
        if self._torch_error is not None:
            raise torch_import_error(self._torch_error)

    def _expected_device(self) -> str | None:
        """Where a model would run; None while torch has not answered."""
        if self._device_pref == "cpu":
            return "cpu"
        cuda = self.gpu.torch_cuda
        if cuda is None:
            return None
        return "cuda" if cuda else "cpu"

    def snapshot(self) -> dict[str, Any]:
        """The engine's part of ``health``; answers at once, in every state.

        GPU facts come from :class:`~vibevoice_rpc.gpu.GpuProbe` (NVML, else torch); until one has
        answered, ``gpu_probe`` is ``"pending"``, ``device`` is None and the state ``starting``.
        """
        loaded = self._loaded
        facts = self.gpu.facts()
        if loaded is not None and loaded.device == "cuda" and facts["vram_total_mb"] is None:
            try:  # pragma: no cover - GPU without NVML
                import torch

                free, total_bytes = torch.cuda.mem_get_info()
                facts["vram_used_mb"] = (total_bytes - free) // 2**20
                facts["vram_total_mb"] = total_bytes // 2**20
            except Exception as exc:  # pragma: no cover - GPU only
                log.debug("mem_get_info failed: %s", exc)
        state = self.state
        if state == "idle" and not self._torch_ready.is_set():
            state = "starting"
        return {
            "state": state,
            "model_loaded": loaded is not None,
            **facts,
            "device": loaded.device if loaded else self._expected_device(),
            "precision": loaded.precision if loaded else self.config.precision,
            "model": loaded.source if loaded else (self._model_path or DEFAULT_MODEL_ID),
            "last_error": self.last_error,
            "plan": loaded.plan if loaded else None,
        }

    # --- loading ----------------------------------------------------------------------------

    def preload(self, job: Job) -> None:
        try:
            self._ensure_loaded(self.config.precision, job)
        except RpcError as err:
            log.error("preload failed: %s", err.message)

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        if params.model_path:
            self._model_path = params.model_path
        if params.device:
            self._device_pref = params.device
        self._ensure_loaded(params.precision, job, force=True)
        loaded = self._loaded
        assert loaded is not None
        note = "" if loaded.precision == params.precision else f" (running {loaded.precision})"
        return StatusResult(
            status="success",
            message=f"Model reloaded with precision: {params.precision}{note} on {loaded.device}",
        )

    def unload(self, job: Job) -> StatusResult:
        was = self._loaded is not None
        self._unload()
        return StatusResult(
            status="success", message="Model unloaded" if was else "No model was loaded"
        )

    def close(self) -> None:
        """Nothing to flush: the process exits right after; the OS frees the model's memory."""

    def _unload(self) -> None:
        if self._loaded is None:
            return
        self.state = "unloading"
        self._loaded = None  # drop every reference before collecting
        self._free_memory()
        self.state = "idle"
        log.info("model unloaded")

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():  # pragma: no cover - GPU only
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            log.debug("empty_cache failed", exc_info=True)

    def _ensure_loaded(self, precision: str, job: Job, *, force: bool = False) -> _Loaded:
        loaded = self._loaded
        if loaded is not None and not force and loaded.requested == precision:
            return loaded
        if not self._torch_ready.is_set():  # a CUDA torch can take a minute to import on Windows
            job.report("loading_model", 0.0, "waiting for PyTorch to load")
        self._require_torch()
        self._unload()
        job.report("loading_model", 0.0, f"loading model ({precision})")
        self.state = "loading"
        try:
            self._loaded = self._load(precision, job)
        except RpcError as err:
            self.last_error = err.message
            raise
        except Exception as exc:
            self._loaded = None
            self._free_memory()
            if _is_oom(exc):
                err = self._oom_error(exc, precision)
            else:
                log.exception("model load failed")
                where = self._model_where()
                err = ModelUnavailable(
                    f"Model failed to load from {where}: {type(exc).__name__}: {exc}",
                    kind="model_load_failed",
                    hint="check VIBEVOICE_MODEL_PATH points at a complete VibeVoice-ASR-HF checkpoint",
                    path=where,
                )
            self.last_error = err.message
            raise err from None
        finally:
            self.state = "idle"
        self.last_error = None
        job.report("loading_model", 1.0, f"model loaded ({self._loaded.precision})")
        return self._loaded

    def _model_where(self) -> str:
        """The checkpoint a failed load was reading, for the error message."""
        if not self._model_path:
            return f"{DEFAULT_MODEL_ID} (Hugging Face cache)"
        try:
            return str(Path(os.path.expanduser(self._model_path)).resolve())
        except (OSError, ValueError, RuntimeError):
            return self._model_path

    def _load(self, precision: str, job: Job) -> _Loaded:
        from . import loader

        t0 = time.monotonic()
        loaded = loader.load_model(
            precision,
            model_path=self._model_path,
            device_pref=self._device_pref,
            offline=self.config.offline,
            allow_cpu_offload=self.config.allow_cpu_offload,
            check_cancelled=job.check_cancelled,
        )
        if loaded["device"] == "cuda":  # Windows: OOM instead of the driver's sysmem fallback
            cap_process_memory(loaded["plan"])
        log.info(
            "model loaded from %s in %.1f s: %s on %s",
            loaded["source"],
            time.monotonic() - t0,
            loaded["precision"],
            loaded["device"],
        )
        return _Loaded(
            requested=precision,
            max_window_seconds=min(self.config.max_window_seconds, loaded["max_window_seconds"]),
            **{k: v for k, v in loaded.items() if k != "max_window_seconds"},
        )

    def _oom_error(self, exc: BaseException, precision: str) -> OutOfMemory:
        lower = _LOWER.get(precision, "nf4")
        return OutOfMemory(
            f"CUDA out of memory while running {precision}: {exc}".strip(),
            hint=f"try a lower precision ({lower}) or a shorter audio file",
            precision=precision,
            suggested_precision=lower,
        )

    # --- transcription ----------------------------------------------------------------------

    def transcribe(self, params: TranscribeParams, job: Job) -> TranscribeResult:
        from .audio import load_audio

        started = time.monotonic()
        job.report("loading_audio", 0.0, "decoding audio")
        audio = load_audio(
            params.audio_path,
            max_seconds=self.config.max_audio_seconds,
            check_cancel=job.check_cancelled,
        )
        job.report("loading_audio", 1.0, f"decoded {audio.duration:.1f} s of audio")
        precision = params.precision or (self._loaded.requested if self._loaded else None)
        loaded = self._ensure_loaded(precision or self.config.precision, job)
        self.state = "busy"
        try:
            from .transcribe import transcribe_audio

            result = transcribe_audio(loaded, audio, params, job)
        except RpcError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                self._free_memory()
                raise self._oom_error(exc, loaded.requested) from None
            raise
        finally:
            self.state = "idle"
            self._free_memory_between_jobs(loaded)
        result.metadata.processing_time = round(time.monotonic() - started, 3)
        result.metadata.warnings = list(audio.warnings) + result.metadata.warnings
        return result

    def _free_memory_between_jobs(self, loaded: _Loaded) -> None:
        # Users report VRAM building up across files in one process: release the cache per job.
        if loaded.device == "cuda":  # pragma: no cover - GPU only
            self._free_memory()
