"""The one resident VibeVoice-ASR model: load, precision, transcribe, unload — and the state health shows.

Only the worker thread calls :meth:`Engine.transcribe`, :meth:`Engine.reload`, :meth:`Engine.unload` and
:meth:`Engine.preload`; the reader thread calls :meth:`Engine.snapshot`, which never waits for them.
torch is imported on a background thread after ``ready`` (:meth:`Engine.warm_up`), next to the NVML
GPU probe (:mod:`vibevoice_rpc.gpu`); transformers when the model is first loaded; bitsandbytes only
for a quantized precision.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .config import DEFAULT_MODEL_ID, Config
from .errors import (
    InternalError,
    InvalidParams,
    ModelUnavailable,
    OutOfMemory,
    RemoteError,
    RpcError,
    out_of_memory,
)
from .gpu import GpuProbe, cap_process_memory, torch_import_error
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
from .runtime import LocalRuntime

if TYPE_CHECKING:
    from .job import Job
    from .loader import LoadedModel

__all__ = ["Engine"]

T = TypeVar("T")

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


class Engine:
    """Owns the model. Public methods other than :meth:`snapshot` run on the worker thread."""

    def __init__(
        self, config: Config, gpu: GpuProbe | None = None, runtime: LocalRuntime | None = None
    ) -> None:
        """``runtime`` loads and runs the local model (:class:`~vibevoice_rpc.runtime.LocalRuntime`
        unless a test or another runtime passes its own)."""
        self.config = config
        self.runtime = runtime if runtime is not None else LocalRuntime()
        self.state = "idle"  # health says "starting" until torch is imported
        self.last_error: str | None = None
        self._loaded: LoadedModel | None = None
        self._torch_ready = threading.Event()
        self._torch_lock = threading.Lock()
        self._torch_error: BaseException | None = None
        self.gpu = gpu if gpu is not None else GpuProbe()
        self._model_path = config.model_path
        self._device_pref = config.device
        self._requested = config.precision  # the last precision asked for (kept after unload)
        self._backend = config.backend
        self._remote_settings = config.remote
        self._remote_client: Any = None

    # --- state for health (reader thread) -------------------------------------------------

    def warm_up(self) -> None:
        """On one background thread, in this order: start the NVML GPU probe, import
        huggingface_hub (so the first ``model_status`` does not wait for it), then import torch (the
        local backend only). Health reports the GPU without a model and without waiting for any of
        them. One thread, started last: ``import torch`` holds the GIL for ~150 ms in one piece
        (its C extension's init), so the later it starts the likelier the app's first ``health``
        has been answered already. The remote backend probes its server instead of importing
        torch (torch is imported if the app switches to local)."""
        threading.Thread(target=self._warm_up, name="vibevoice-warmup", daemon=True).start()

    def _warm_up(self) -> None:
        from .download import preimport_hub

        self.gpu.start()
        remote = self._backend == "remote"
        if remote:
            self._client().refresh_in_background()
        preimport_hub()
        if not remote:
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
        if self._device_pref == "cpu":
            return "cpu"
        cuda = self.gpu.torch_cuda
        if cuda is None:
            return None
        return "cuda" if cuda else "cpu"

    def snapshot(self) -> EngineStatus:
        """The engine's part of ``health``; answers at once, in every state.

        GPU facts come from :class:`~vibevoice_rpc.gpu.GpuProbe` (NVML, else torch); until one has
        answered, ``gpu_probe`` is ``"pending"``, ``device`` is None and the state ``starting``.
        """
        loaded = self._loaded
        facts = self.gpu.facts()
        if loaded is not None and loaded.device == "cuda" and facts.vram_total_mb is None:
            try:  # pragma: no cover - GPU without NVML
                import torch

                free, total_bytes = torch.cuda.mem_get_info()
                facts = msgspec.structs.replace(
                    facts,
                    vram_used_mb=(total_bytes - free) // 2**20,
                    vram_total_mb=total_bytes // 2**20,
                )
            except Exception as exc:  # pragma: no cover - GPU only
                log.debug("mem_get_info failed: %s", exc)
        if self._backend == "remote":
            remote, ready = self._remote_health()
            return EngineStatus(
                state=self.state,
                model_loaded=ready,
                gpu=facts,
                device="remote",
                precision="remote",
                model=remote.get("model"),
                last_error=self.last_error,
                backend="remote",
                remote=remote,
            )
        state = self.state
        if state == "idle" and not self._torch_ready.is_set():
            state = "starting"
        device = self._expected_device()  # once: torch may answer while this runs
        return EngineStatus(
            state=state,
            model_loaded=loaded is not None,
            gpu=facts,
            device=loaded.device if loaded else device,
            precision=loaded.precision if loaded else self._would_run(self._requested, device),
            requested_precision=loaded.requested if loaded else self._requested,
            model=loaded.source if loaded else (self._model_path or DEFAULT_MODEL_ID),
            last_error=self.last_error,
            plan=loaded.plan if loaded else None,
        )

    # --- the checkpoint on disk (model_status, download_model) -------------------------------

    def model_status(self, params: ModelStatusParams) -> ModelStatusResult:
        """What is on disk and what a download would fetch; from the disk alone, at once (the
        reader thread answers it)."""
        from .download import model_status

        return model_status(params, self._model_path, offline=self.config.offline)

    def download_model(self, params: DownloadParams, job: Job) -> DownloadResult:
        """Download (or finish downloading) the checkpoint. The default model's folder is where
        the next load reads from; a loaded model keeps serving until then."""
        from .download import download_model, quiet_hub

        quiet_hub()
        result = download_model(
            params, job, configured_path=self._model_path, offline=self.config.offline
        )
        if (params.model_id or DEFAULT_MODEL_ID) == DEFAULT_MODEL_ID:
            self._model_path = result.path
        return result

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
        if params.backend == "remote" or (params.backend is None and self._backend == "remote"):
            return self._remote_call(lambda: self._use_remote(params, job))
        self._backend = "local"
        path = params.model_path or self._model_path
        device = params.device or self._device_pref
        # Only a description: a reference to the old model would keep its memory through the load.
        previous = (
            (self._loaded.requested, self._loaded.precision, self._loaded.source)
            if self._loaded is not None
            else None
        )
        try:
            prepared = self.runtime.prepare(
                params.precision,
                model_path=path,
                device_pref=device,
                offline=self.config.offline,
                allow_cpu_offload=self.config.allow_cpu_offload,
                reclaimable_bytes=self._reclaimable_bytes(),
            )
        except RpcError as err:
            self.last_error = err.message
            raise self._kept(err, previous) from None
        old_path, old_device = self._model_path, self._device_pref
        self._model_path, self._device_pref = path, device
        try:
            self._ensure_loaded(params.precision, job, force=True, prepared=prepared)
        except RpcError as err:
            self._model_path, self._device_pref = old_path, old_device
            raise self._restore(err, previous, job) from None
        loaded = self._loaded
        assert loaded is not None
        note = "" if loaded.precision == params.precision else f" (running {loaded.precision})"
        return StatusResult(
            status="success",
            message=f"Model reloaded with precision: {params.precision}{note} on {loaded.device}",
        )

    @staticmethod
    def _kept(err: RpcError, previous: tuple[str, str, str] | None) -> RpcError:
        """``err`` with a note that nothing changed: the loaded model (if any) still serves."""
        if previous is not None:
            err.message += f"; the loaded model ({previous[1]} from {previous[2]}) was kept"
            err.extra["kept_model"] = True
        return err

    def _restore(self, err: RpcError, previous: tuple[str, str, str] | None, job: Job) -> RpcError:
        """After a failed load: load the previous model again and say how that went in ``err``."""
        if previous is None:
            return err
        precision, _, source = previous
        try:
            self._ensure_loaded(precision, job, force=True)
        except RpcError as again:
            err.message += f"; restoring the previous model also failed: {again.message}"
            err.extra["restored_model"] = False
            return err
        finally:
            self.last_error = err.message
        err.message += f"; the previous model ({precision} from {source}) was restored"
        err.extra["restored_model"] = True
        return err

    def _reclaimable_bytes(self) -> int:
        """GPU memory the loaded model gives back when it is unloaded (0 on the CPU)."""
        if self._loaded is None or not self._loaded.device.startswith("cuda"):
            return 0
        import torch  # pragma: no cover - GPU only

        return int(torch.cuda.memory_allocated())  # pragma: no cover

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

    def _ensure_loaded(
        self, precision: str, job: Job, *, force: bool = False, prepared: Any = None
    ) -> LoadedModel:
        loaded = self._loaded
        if loaded is not None and not force and self._serves(loaded, precision):
            return loaded
        del loaded
        self._requested = precision
        if not self._torch_ready.is_set():  # a CUDA torch can take a minute to import on Windows
            job.report("loading_model", 0.0, "waiting for PyTorch to load")
        self._require_torch()
        self._unload()
        runs = self._would_run(precision)
        what = precision if runs == precision else f"{runs}; {precision} requested"
        job.report("loading_model", 0.0, f"loading model ({what})")
        self.state = "loading"
        try:
            self._loaded = self._load(precision, job, prepared)
        except RpcError as err:
            self.last_error = err.message
            raise
        except Exception as exc:
            self._loaded = None
            self._free_memory()
            if _is_oom(exc):
                err = self._oom_error(exc, precision)
            elif _from_bitsandbytes(exc):
                err = _quantization_error(exc, precision, self._device_pref)
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
        if not self._model_path:
            return f"{DEFAULT_MODEL_ID} (Hugging Face cache)"
        try:
            return str(Path(os.path.expanduser(self._model_path)).resolve())
        except (OSError, ValueError, RuntimeError):
            return self._model_path

    def _load(self, precision: str, job: Job, prepared: Any = None) -> LoadedModel:
        t0 = time.monotonic()
        loaded = self.runtime.load(
            precision,
            model_path=self._model_path,
            device_pref=self._device_pref,
            offline=self.config.offline,
            allow_cpu_offload=self.config.allow_cpu_offload,
            check_cancelled=job.check_cancelled,
            prepared=prepared,
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

    @staticmethod
    def _oom_error(exc: BaseException, precision: str) -> OutOfMemory:
        return out_of_memory(
            exc, precision=precision, smaller=_SMALLER_PRECISION.get(precision, "nf4")
        )

    # --- transcription ----------------------------------------------------------------------

    def transcribe(self, params: TranscribeParams, job: Job) -> TranscribeResult:
        started = time.monotonic()
        if self.backend == "local" and self._loaded is None:
            self._check_findable()
        from .audio import load_audio

        job.report("loading_audio", 0.0, "decoding audio")
        audio = load_audio(
            params.audio_path,
            max_seconds=self.config.max_audio_seconds,
            threads=self.config.audio_threads,
            ffmpeg=self.config.ffmpeg,
            check_cancel=job.check_cancelled,
        )
        job.report("loading_audio", 1.0, f"decoded {audio.duration:.1f} s of audio")
        if self.backend == "remote":
            try:
                return self._remote_call(
                    lambda: self._transcribe_remote(audio, params, job, started)
                )
            except RemoteError as err:
                settings = self._remote_settings
                fallback = settings is not None and settings.fallback == "local"
                if not (fallback and err.kind in ("remote_unreachable", "remote_tls")):
                    err.extra.setdefault("segments", list(job.segments))
                    raise
                if job.segments:  # the server went away mid-job: its segments stand, then stop
                    err.extra.setdefault("segments", list(job.segments))
                    raise
                log.warning("remote server unreachable; falling back to the local model")
                note = f"{err.message}; transcribed by the local model instead"
                return self._transcribe_local(audio, params, job, started, [note])
        return self._transcribe_local(audio, params, job, started)

    def _check_findable(self) -> None:
        """Without a checkpoint, answer -32004 now: before the audio is decoded and without
        waiting for torch (finding the checkpoint needs neither)."""
        from .model_source import check_findable

        try:
            check_findable(self._model_path, offline=self.config.offline)
        except RpcError as err:
            self.last_error = err.message
            raise

    def _transcribe_local(
        self,
        audio: Any,
        params: TranscribeParams,
        job: Job,
        started: float,
        notes: list[str] | None = None,
    ) -> TranscribeResult:
        precision = params.precision or (self._loaded.requested if self._loaded else None)
        loaded = self._ensure_loaded(precision or self.config.precision, job)
        self.state = "busy"
        try:
            from .pipeline import transcribe_audio
            from .stream import RunnerInfo

            info = RunnerInfo(
                precision=loaded.precision,
                device=loaded.device,
                model=loaded.source,
                max_window_seconds=loaded.max_window_seconds,
                plan=loaded.plan,
                park_encoders=loaded.parked,
            )
            runner = self.runtime.runner(loaded, info)
            return transcribe_audio(runner, audio, params, job, started=started, notes=notes or ())
        except RpcError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                self._free_memory()
                raise self._oom_error(exc, loaded.requested) from None
            if _from_bitsandbytes(exc):
                raise _quantization_error(exc, loaded.precision, loaded.device) from None
            raise
        finally:
            self.state = "idle"
            self._free_memory_between_jobs(loaded)

    def _transcribe_remote(
        self, audio: Any, params: TranscribeParams, job: Job, started: float
    ) -> TranscribeResult:
        from .pipeline import transcribe_audio
        from .remote import RemoteRunner
        from .stream import RunnerInfo

        client = self._client()
        settings = client.settings
        if client.status.checked_at is None or not client.status.reachable:
            try:  # bounded (2 s); learns the server's max_model_len
                client.probe(is_cancelled=lambda: job.cancelled)
            except Exception:
                job.check_cancelled()
                raise
        info = RunnerInfo(
            precision="remote",
            device="remote",
            model=settings.model,
            max_window_seconds=min(self.config.max_window_seconds, settings.max_audio_seconds),
            backend="remote",
            server=settings.shown,
        )
        self.state = "busy"
        try:
            runner = RemoteRunner(client, info, lambda: job.cancelled, job.check_cancelled)
            return transcribe_audio(runner, audio, params, job, started=started)
        finally:
            self.state = "idle"

    @staticmethod
    def _remote_call(call: Callable[[], T]) -> T:
        """Run a remote backend step with secrets kept out of what it raises: an error's message
        and data are redacted, an unexpected exception becomes an internal error without them
        (its traceback is logged, redacted too)."""
        from .redact import redact, redact_data

        try:
            return call()
        except RpcError as err:
            err.message = redact(err.message)
            err.extra = redact_data(err.extra)
            raise
        except Exception as exc:
            log.exception("the remote backend failed")
            raise InternalError(redact(f"Internal error: {type(exc).__name__}: {exc}")) from None

    # --- the remote backend -----------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend

    def _client(self) -> Any:
        """The HTTP client of the configured server (made on first use)."""
        if self._remote_client is None:
            from .remote import RemoteClient

            assert self._remote_settings is not None
            self._remote_client = RemoteClient(self._remote_settings)
        return self._remote_client

    def _remote_health(self) -> tuple[dict[str, Any], bool]:
        """health's ``remote`` object and whether the server is ready; never raises (a failure
        here is reported in the object, with secrets redacted)."""
        from .redact import redact, redact_url

        settings = self._remote_settings
        try:
            client = self._client()
            client.refresh_in_background()  # health never waits for the server
            status = client.status
            remote = status.to_dict()
            ready = bool(status.reachable) and status.error is None
        except Exception as exc:  # health must answer whatever the client does
            log.debug("remote health failed", exc_info=True)
            url = redact_url(settings.url) if settings is not None else None
            error = redact(f"{type(exc).__name__}: {exc}")[:300]
            remote, ready = {"url": url, "reachable": None, "error": error}, False
        if settings is not None:
            remote.update(
                model=settings.model, dialect=settings.dialect, fallback=settings.fallback
            )
        return remote, ready

    def _use_remote(self, params: ReloadParams, job: Job) -> StatusResult:
        """Switch to (or re-point) the remote backend: the server must answer first."""
        from .config import RemoteSettings
        from .remote import RemoteClient

        current = self._remote_settings
        url = params.remote_url or (current.url if current else None)
        if not url:
            raise InvalidParams(
                "the remote backend needs remote_url (or VIBEVOICE_REMOTE_URL)",
                field="remote_url",
            )
        changes: dict[str, Any] = {"url": url}
        if params.remote_api_key is not None:
            changes["api_key"] = params.remote_api_key
        if params.remote_model:
            changes["model"] = params.remote_model
        if params.remote_dialect:
            changes["dialect"] = params.remote_dialect
        for name, value in changes.items():  # each alone, so the error names its field
            try:
                RemoteSettings(**{"url": url, name: value})
            except ValueError as exc:  # the message never quotes a key or a password
                raise InvalidParams(str(exc), field=f"remote_{name}") from None
        settings = dataclasses.replace(current, **changes) if current else RemoteSettings(**changes)
        client = RemoteClient(settings)
        try:
            status = client.probe(timeout=5.0, is_cancelled=lambda: job.cancelled)
        except Exception:
            client.close()
            job.check_cancelled()
            raise
        if not status.reachable or status.error:
            client.close()
            where = "the local model" if self._backend == "local" else "the previous server"
            raise RemoteError(
                f"{settings.shown}: {status.error or 'not reachable'}; {where} is kept",
                kind="remote_unreachable" if not status.reachable else "remote_not_found",
                hint="check the URL, the API key and the served model name",
                url=settings.shown,
            )
        old = self._remote_client
        self._remote_settings, self._remote_client, self._backend = settings, client, "remote"
        if old is not None and old is not client:
            old.close()
        self._unload()  # the GPU is not needed while the server transcribes
        return StatusResult(
            status="success",
            message=f"Using the remote backend: {settings.shown} (model {settings.model})",
        )

    def _free_memory_between_jobs(self, loaded: LoadedModel) -> None:
        # Users report VRAM building up across files in one process: release the cache per job.
        if loaded.device == "cuda":  # pragma: no cover - GPU only
            self._free_memory()
