"""The local backend: the one resident VibeVoice-ASR model in this process — torch's import, load,
precision, transcribe, unload — and what health shows of it.

A :class:`~vibevoice_rpc.backend.Backend` (the engine holds one and never asks which). Its worker-thread
methods are called by the engine's worker only; :meth:`LocalBackend.status` is called by the reader
thread and never waits for them. torch is imported on the warm-up thread after ``ready``
(:meth:`LocalBackend.warm_up`); transformers when the model is first loaded; bitsandbytes only for a
quantized precision. The model itself is loaded and run through a :class:`LocalRuntime` (the seam a
test passes its own through).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ..config import DEFAULT_MODEL_ID, Config, LoadSpec
from ..errors import ModelUnavailable, OutOfMemory, RpcError, out_of_memory
from ..messages import EngineStatus, GpuFacts, ReloadParams, StatusResult, TranscribeParams
from .gpu import GpuProbe, cap_process_memory, torch_import_error

if TYPE_CHECKING:
    from ..audio.sink import DecodedAudio
    from ..job import Job
    from ..messages import TranscribeResult
    from ..transcription.speech import SpeechPlan
    from ..transcription.stream import Runner, RunnerInfo
    from .loader import LoadedModel, Prepared

__all__ = ["LocalBackend", "LocalRuntime"]

log = logging.getLogger(__name__)

_SMALLER_PRECISION = {
    "auto": "int8",
    "fp32": "bf16",
    "bf16": "int8",
    "fp16": "int8",
    "int8": "nf4",
    "nf4": "nf4",
}


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


def _from_bitsandbytes(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside the bitsandbytes package (its kernels assert on shapes)."""
    marker = os.sep + "bitsandbytes" + os.sep
    tb = exc.__traceback__
    while tb is not None:
        if marker in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quantization_error(exc: BaseException, precision: str, device: str) -> ModelUnavailable:
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    return ModelUnavailable(
        f"{precision} failed inside bitsandbytes on {device}: {detail}",
        kind="quantization_failed",
        hint="use fp32/bf16 on the CPU or bf16/fp16 on a GPU; update bitsandbytes",
        precision=precision,
        device=device,
    )


def _oom_error(exc: BaseException, precision: str) -> OutOfMemory:
    return out_of_memory(exc, precision=precision, smaller=_SMALLER_PRECISION.get(precision, "nf4"))


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():  # pragma: no cover - GPU only
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        log.debug("empty_cache failed", exc_info=True)


class LocalRuntime:
    """What loads the model (:mod:`vibevoice_rpc.model.loader`) and what runs it over a window
    (:class:`~vibevoice_rpc.model.runner.LocalRunner`): the seam of the local backend. The backend
    never calls the loader or builds a runner itself, so a test (``tests/scripted.py``) plugs in by
    passing a subclass (``Engine(config, runtime=…)``), not by patching module functions. torch and
    transformers come in with the loader and the runner, at the first load."""

    def prepare(self, precision: str, *, spec: LoadSpec, reclaimable_bytes: int = 0) -> Prepared:
        """Find the checkpoint and plan the memory, before anything loaded is touched."""
        from .loader import prepare_load

        return prepare_load(precision, spec=spec, reclaimable_bytes=reclaimable_bytes)

    def load(
        self,
        precision: str,
        *,
        spec: LoadSpec,
        check_cancelled: Callable[[], None],
        prepared: Prepared | None = None,
    ) -> LoadedModel:
        """Load the model and its processor (as ``prepared`` decided, else planned now)."""
        from .loader import load_model

        return load_model(precision, spec=spec, check_cancelled=check_cancelled, prepared=prepared)

    def runner(self, loaded: LoadedModel, info: RunnerInfo) -> Runner:
        """What runs ``loaded`` over one window at a time."""
        from .runner import LocalRunner

        return LocalRunner(loaded.model, loaded.processor, info)


@dataclass(frozen=True)
class _Previous:
    """What was loaded before a reload, described (a reference to the model itself would keep its
    memory through the next load)."""

    requested: str
    precision: str
    source: str


class LocalBackend:
    """The model in this process. Public methods other than :meth:`status` and :meth:`warm_up`
    run on the engine's worker thread."""

    name = "local"
    label = "the local model"

    def __init__(self, config: Config, gpu: GpuProbe, runtime: LocalRuntime | None = None) -> None:
        """``runtime`` loads and runs the model (:class:`LocalRuntime` unless a test passes its
        own); ``gpu`` is the engine's probe, which learns from torch's import whether CUDA runs."""
        self.config = config
        self.gpu = gpu
        self.runtime = runtime if runtime is not None else LocalRuntime()
        self.spec = LoadSpec(
            model_path=config.model_path,
            device_pref=config.device,
            offline=config.offline,
            allow_cpu_offload=config.allow_cpu_offload,
        )
        self.state = "idle"  # health says "starting" until torch is imported
        self.last_error: str | None = None
        self.loaded: LoadedModel | None = None
        self._requested = config.precision  # the last precision asked for (kept after unload)
        self._torch_ready = threading.Event()
        self._torch_lock = threading.Lock()
        self._torch_error: BaseException | None = None

    # --- torch ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Import torch (the engine's warm-up thread, last: ``import torch`` holds the GIL for
        ~150 ms in one piece)."""
        self._import_torch()

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

    def _would_run(self, precision: str, device: str | None = None) -> str:
        """The precision that runs (or would) for ``precision``: fp16/auto run fp32 on the CPU;
        on a GPU the plan decides at load (auto stays "auto" until then)."""
        if (device or self._expected_device()) == "cpu":
            from .planner import cpu_precision

            return cpu_precision(precision)
        return precision

    def _expected_device(self) -> str | None:
        """Where a model would run; None while torch has not answered."""
        if self.spec.device_pref == "cpu":
            return "cpu"
        cuda = self.gpu.torch_cuda
        if cuda is None:
            return None
        return "cuda" if cuda else "cpu"

    # --- health (reader thread) -------------------------------------------------------------

    def status(self, gpu: GpuFacts) -> EngineStatus:
        """This backend's part of ``health``; answers at once, in every state. Until torch has
        answered, ``device`` is None and the state ``starting``."""
        loaded = self.loaded
        if loaded is not None and loaded.device == "cuda" and gpu.vram_total_mb is None:
            try:  # pragma: no cover - GPU without NVML
                import torch

                free, total_bytes = torch.cuda.mem_get_info()
                gpu = msgspec.structs.replace(
                    gpu,
                    vram_used_mb=(total_bytes - free) // 2**20,
                    vram_total_mb=total_bytes // 2**20,
                )
            except Exception as exc:  # pragma: no cover - GPU only
                log.debug("mem_get_info failed: %s", exc)
        state = self.state
        if state == "idle" and not self._torch_ready.is_set():
            state = "starting"
        device = self._expected_device()  # once: torch may answer while this runs
        return EngineStatus(
            state=state,
            model_loaded=loaded is not None,
            gpu=gpu,
            device=loaded.device if loaded else device,
            precision=loaded.precision if loaded else self._would_run(self._requested, device),
            requested_precision=loaded.requested if loaded else self._requested,
            model=loaded.source if loaded else (self.spec.model_path or DEFAULT_MODEL_ID),
            last_error=self.last_error,
            plan=loaded.plan if loaded else None,
            backend=self.name,
        )

    # --- the checkpoint ---------------------------------------------------------------------

    def use_checkpoint(self, path: str) -> None:
        """Read the next load from ``path`` (a finished ``download_model``); a loaded model keeps
        serving until then."""
        if path != self.spec.model_path:
            log.info("the next model load reads the downloaded checkpoint at %s", path)
            self.spec = dataclasses.replace(self.spec, model_path=path)

    def check_ready(self) -> None:
        """Without a checkpoint, answer -32004 now: before the audio is decoded and without
        waiting for torch (finding the checkpoint needs neither)."""
        if self.loaded is not None:
            return
        from ..checkpoint.source import check_findable

        try:
            check_findable(self.spec.model_path, offline=self.spec.offline)
        except RpcError as err:
            self.last_error = err.message
            raise

    # --- loading ----------------------------------------------------------------------------

    def preload(self, job: Job) -> None:
        try:
            self._ensure_loaded(self.config.precision, job)
        except RpcError as err:
            log.error("preload failed: %s", err.message)

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        """Switch precision (and optionally checkpoint or device).

        The new checkpoint is found and planned before the loaded model is touched, so a bad
        ``model_path`` or a precision that cannot fit leaves the working model and configuration
        as they were. If the load itself fails after the old model was freed, the previous model
        and configuration are restored, and the error says so.
        """
        spec = dataclasses.replace(
            self.spec,
            model_path=params.model_path or self.spec.model_path,
            device_pref=params.device or self.spec.device_pref,
        )
        loaded = self.loaded
        previous = _Previous(loaded.requested, loaded.precision, loaded.source) if loaded else None
        del loaded
        try:
            prepared = self.runtime.prepare(
                params.precision, spec=spec, reclaimable_bytes=self._reclaimable_bytes()
            )
        except RpcError as err:
            self.last_error = err.message
            raise self._kept(err, previous) from None
        old_spec, self.spec = self.spec, spec
        try:
            self._ensure_loaded(params.precision, job, force=True, prepared=prepared)
        except RpcError as err:
            self.spec = old_spec
            raise self._restore(err, previous, job) from None
        now = self.loaded
        assert now is not None
        note = "" if now.precision == params.precision else f" (running {now.precision})"
        return StatusResult(
            status="success",
            message=f"Model reloaded with precision: {params.precision}{note} on {now.device}",
        )

    @staticmethod
    def _kept(err: RpcError, previous: _Previous | None) -> RpcError:
        """``err`` with a note that nothing changed: the loaded model (if any) still serves."""
        if previous is not None:
            err.message += (
                f"; the loaded model ({previous.precision} from {previous.source}) was kept"
            )
            err.extra["kept_model"] = True
        return err

    def _restore(self, err: RpcError, previous: _Previous | None, job: Job) -> RpcError:
        """After a failed load: load the previous model again and say how that went in ``err``."""
        if previous is None:
            return err
        try:
            self._ensure_loaded(previous.requested, job, force=True)
        except RpcError as again:
            err.message += f"; restoring the previous model also failed: {again.message}"
            err.extra["restored_model"] = False
            return err
        finally:
            self.last_error = err.message
        err.message += (
            f"; the previous model ({previous.requested} from {previous.source}) was restored"
        )
        err.extra["restored_model"] = True
        return err

    def _reclaimable_bytes(self) -> int:
        """GPU memory the loaded model gives back when it is unloaded (0 on the CPU)."""
        if self.loaded is None or not self.loaded.device.startswith("cuda"):
            return 0
        import torch  # pragma: no cover - GPU only

        return int(torch.cuda.memory_allocated())  # pragma: no cover

    def unload(self) -> bool:
        """Free the model; whether one was loaded."""
        if self.loaded is None:
            return False
        self.state = "unloading"
        self.loaded = None  # drop every reference before collecting
        _free_memory()
        self.state = "idle"
        log.info("model unloaded")
        return True

    def close(self) -> None:
        """Nothing to flush: the process exits right after; the OS frees the model's memory."""

    def _ensure_loaded(
        self,
        precision: str,
        job: Job,
        *,
        force: bool = False,
        prepared: Prepared | None = None,
    ) -> LoadedModel:
        loaded = self.loaded
        if loaded is not None and not force and self._serves(loaded, precision):
            return loaded
        del loaded
        self._requested = precision
        if not self._torch_ready.is_set():  # a CUDA torch can take a minute to import on Windows
            job.report("loading_model", 0.0, "waiting for PyTorch to load")
        self._require_torch()
        self.unload()
        runs = self._would_run(precision)
        what = precision if runs == precision else f"{runs}; {precision} requested"
        job.report("loading_model", 0.0, f"loading model ({what})")
        self.state = "loading"
        try:
            self.loaded = self._load(precision, job, prepared)
        except RpcError as err:
            self.last_error = err.message
            raise
        except Exception as exc:
            self.loaded = None
            _free_memory()
            if _is_oom(exc):
                err = _oom_error(exc, precision)
            elif _from_bitsandbytes(exc):
                err = _quantization_error(exc, precision, self.spec.device_pref)
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
        job.report("loading_model", 1.0, f"model loaded ({self.loaded.precision})")
        return self.loaded

    def _serves(self, loaded: LoadedModel, precision: str) -> bool:
        """Whether ``loaded`` already runs what a load for ``precision`` would: the same request,
        or, where a load would go to the CPU, the same precision under another name (fp16, auto
        and fp32 all run fp32 there: reloading would load the same weights again)."""
        if loaded.requested == precision:
            return True
        on_cpu = loaded.device == "cpu" and self._expected_device() == "cpu"
        return on_cpu and self._would_run(precision, "cpu") == loaded.precision

    def _model_where(self) -> str:
        """The checkpoint a failed load was reading, for the error message."""
        path = self.spec.model_path
        if not path:
            return f"{DEFAULT_MODEL_ID} (Hugging Face cache)"
        try:
            return str(Path(os.path.expanduser(path)).resolve())
        except (OSError, ValueError, RuntimeError):
            return path

    def _load(self, precision: str, job: Job, prepared: Prepared | None = None) -> LoadedModel:
        t0 = time.monotonic()
        loaded = self.runtime.load(
            precision, spec=self.spec, check_cancelled=job.check_cancelled, prepared=prepared
        )
        if loaded.device == "cuda":  # Windows: OOM instead of the driver's sysmem fallback
            cap_process_memory(loaded.plan)
        log.info(
            "model loaded from %s in %.1f s: %s on %s",
            loaded.source,
            time.monotonic() - t0,
            loaded.precision,
            loaded.device,
        )
        window = min(self.config.max_window_seconds, loaded.max_window_seconds)
        return dataclasses.replace(loaded, max_window_seconds=window)

    # --- transcription ----------------------------------------------------------------------

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
        """Transcribe decoded ``audio`` with the model, loading it first when needed (the
        request's precision, else the loaded one's, else the configured one)."""
        precision = params.precision or (self.loaded.requested if self.loaded else None)
        loaded = self._ensure_loaded(precision or self.config.precision, job)
        self.state = "busy"
        try:
            from ..transcription.pipeline import transcribe_audio
            from ..transcription.stream import RunnerInfo

            info = RunnerInfo(
                precision=loaded.precision,
                device=loaded.device,
                model=loaded.source,
                max_window_seconds=loaded.max_window_seconds,
                plan=loaded.plan,
                park_encoders=loaded.parked,
            )
            runner = self.runtime.runner(loaded, info)
            return transcribe_audio(
                runner, audio, params, job, started=started, notes=notes, speech=speech
            )
        except RpcError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                _free_memory()
                raise _oom_error(exc, loaded.requested) from None
            if _from_bitsandbytes(exc):
                raise _quantization_error(exc, loaded.precision, loaded.device) from None
            raise
        finally:
            self.state = "idle"
            if loaded.device == "cuda":  # pragma: no cover - GPU only
                # Users report VRAM building up across files in one process: free it per job.
                _free_memory()
