"""The remote backend: a VibeVoice-ASR server (vLLM) does the model's work; this process decodes,
windows, prompts, parses and stitches exactly as it does for the local model.

Two :class:`~vibevoice_rpc.backend.Backend`\\ s: :class:`RemoteBackend` (the server) and
:class:`WithFallback` (the server, else another backend when the server cannot be reached: the
local model, composed by the engine, ``VIBEVOICE_REMOTE_FALLBACK=local``). Neither imports torch.
Everything a server says or the client raises passes :func:`_redacted` first, so no secret of the
settings (an API key, a URL's password) reaches an error message, its data or a log line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..config import RemoteSettings
from ..errors import InternalError, InvalidParams, RemoteError, RpcError
from ..messages import EngineStatus, GpuFacts, ReloadParams, RemoteHealth, StatusResult
from ..redact import redact, redact_data, redact_url
from .client import RemoteClient

if TYPE_CHECKING:
    from ..audio.sink import DecodedAudio
    from ..job import Job
    from ..messages import TranscribeParams, TranscribeResult
    from ..transcription.speech import SpeechPlan

__all__ = ["RemoteBackend", "WithFallback", "remote_settings"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A fallback serves only when the server could not be reached at all: a server that answered
# (even with an error) has spoken, and its answer stands.
_UNREACHABLE = ("remote_unreachable", "remote_tls")


def _redacted(call: Callable[[], T]) -> T:
    """Run a remote step with secrets kept out of what it raises: an error's message and data
    are redacted, an unexpected exception becomes an internal error without them (its traceback
    is logged, redacted too)."""
    try:
        return call()
    except RpcError as err:
        err.message = redact(err.message)
        err.extra = redact_data(err.extra)
        raise
    except Exception as exc:
        log.exception("the remote backend failed")
        raise InternalError(redact(f"Internal error: {type(exc).__name__}: {exc}")) from None


def remote_settings(current: RemoteSettings | None, params: ReloadParams) -> RemoteSettings:
    """The settings a ``reload_model`` to the remote backend asks for: ``params``' ``remote_*``
    over ``current`` (the configured or last used ones). Each value is checked alone, so the
    error (``-32602``) names its field; no message quotes a key or a password."""
    url = params.remote_url or (current.url if current else None)
    if not url:
        raise InvalidParams(
            "the remote backend needs remote_url (or VIBEVOICE_REMOTE_URL)", field="remote_url"
        )
    changes: dict[str, Any] = {"url": url}
    if params.remote_api_key is not None:
        changes["api_key"] = params.remote_api_key
    if params.remote_model:
        changes["model"] = params.remote_model
    if params.remote_dialect:
        changes["dialect"] = params.remote_dialect
    for name, value in changes.items():
        try:
            RemoteSettings(**{"url": url, name: value})
        except ValueError as exc:
            raise InvalidParams(str(exc), field=f"remote_{name}") from None
    return dataclasses.replace(current, **changes) if current else RemoteSettings(**changes)


class RemoteBackend:
    """One server, reached through one :class:`RemoteClient`."""

    name = "remote"

    def __init__(self, settings: RemoteSettings, max_window_seconds: float) -> None:
        self.settings = settings
        self.client = RemoteClient(settings)
        self.max_window_seconds = min(max_window_seconds, settings.max_audio_seconds)
        self.state = "idle"

    @property
    def label(self) -> str:
        """What this backend is, for a message: the server, without credentials."""
        return f"the server {self.settings.shown}"

    @classmethod
    def connect(
        cls, settings: RemoteSettings, max_window_seconds: float, job: Job, *, keeping: str
    ) -> RemoteBackend:
        """A backend for ``settings`` whose server answered ``GET /v1/models`` with the model
        (within 5 s; ``cancel`` ends the wait); otherwise ``RemoteError`` saying that ``keeping``
        (the backend in use) is kept."""

        def connect() -> RemoteBackend:
            backend = cls(settings, max_window_seconds)
            try:
                status = backend.client.probe(timeout=5.0, is_cancelled=lambda: job.cancelled)
            except Exception:
                backend.close()
                job.check_cancelled()
                raise
            if not status.reachable or status.error:
                backend.close()
                raise RemoteError(
                    f"{settings.shown}: {status.error or 'not reachable'}; {keeping} is kept",
                    kind="remote_unreachable" if not status.reachable else "remote_not_found",
                    hint="check the URL, the API key and the served model name",
                    url=settings.shown,
                )
            return backend

        return _redacted(connect)

    # --- the Backend protocol ---------------------------------------------------------------

    def warm_up(self) -> None:
        """Probe the server in the background (health never waits for it)."""
        self.client.refresh_in_background()

    def status(self, gpu: GpuFacts) -> EngineStatus:
        remote = self._health()
        return EngineStatus(
            state=self.state,
            model_loaded=bool(remote.reachable) and remote.error is None,
            gpu=gpu,
            device="remote",
            precision="remote",
            model=self.settings.model,
            backend=self.name,
            remote=remote,
        )

    def _health(self) -> RemoteHealth:
        """health's ``remote`` object; never raises (a failure here is reported in the object,
        with secrets redacted)."""
        settings = self.settings
        extra = {
            "model": settings.model,
            "dialect": settings.dialect,
            "fallback": settings.fallback,
        }
        try:
            self.client.refresh_in_background()  # health never waits for the server
            return self.client.status.health(**extra)
        except Exception as exc:  # health must answer whatever the client does
            log.debug("remote health failed", exc_info=True)
            error = redact(f"{type(exc).__name__}: {exc}")[:300]
            return RemoteHealth(url=redact_url(settings.url), error=error, **extra)

    def check_ready(self) -> None:
        """Nothing to find before decoding: the server is asked when the audio is ready."""

    def preload(self, job: Job) -> None:
        """Nothing to load here: the server holds the model."""

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        """The server is already in use; a ``reload_model`` re-points it (the engine builds a new
        backend for other settings), so the precision is for the local model's next load."""
        return StatusResult(
            status="success",
            message=f"Using the remote backend: {self.settings.shown} (model {self.settings.model})",
        )

    def unload(self) -> bool:
        """No model in this process."""
        return False

    def close(self) -> None:
        self.client.close()

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
        """Transcribe through the server. A failure carries the segments received so far."""
        try:
            return _redacted(lambda: self._transcribe(audio, params, job, started, notes, speech))
        except RemoteError as err:
            err.extra.setdefault("segments", list(job.segments))
            raise

    def _transcribe(
        self,
        audio: DecodedAudio,
        params: TranscribeParams,
        job: Job,
        started: float,
        notes: Sequence[str],
        speech: SpeechPlan | None,
    ) -> TranscribeResult:
        from ..transcription.pipeline import transcribe_audio
        from ..transcription.stream import RunnerInfo
        from .runner import RemoteRunner

        client = self.client
        if client.status.checked_at is None or not client.status.reachable:
            try:  # bounded (2 s); learns the server's max_model_len
                client.probe(is_cancelled=lambda: job.cancelled)
            except Exception:
                job.check_cancelled()
                raise
        info = RunnerInfo(
            precision="remote",
            device="remote",
            model=self.settings.model,
            max_window_seconds=self.max_window_seconds,
            backend=self.name,
            server=self.settings.shown,
        )
        self.state = "busy"
        try:
            runner = RemoteRunner(client, info, lambda: job.cancelled, job.check_cancelled)
            return transcribe_audio(
                runner, audio, params, job, started=started, notes=notes, speech=speech
            )
        finally:
            self.state = "idle"


class _Backend(Protocol):  # what WithFallback needs of the backend it falls back to
    def transcribe(
        self,
        audio: DecodedAudio,
        params: TranscribeParams,
        job: Job,
        *,
        started: float,
        notes: Sequence[str] = (),
        speech: SpeechPlan | None = None,
    ) -> TranscribeResult: ...


class WithFallback:
    """The server, and ``fallback`` (the local model) for a job the server could not be reached
    for — only before its first segment: segments a server sent stand, and then the error does.
    Everything else is the server's."""

    def __init__(self, remote: RemoteBackend, fallback: _Backend) -> None:
        self.remote = remote
        self.fallback = fallback
        self.name = remote.name

    @property
    def label(self) -> str:
        return self.remote.label

    @property
    def settings(self) -> RemoteSettings:
        return self.remote.settings

    def warm_up(self) -> None:
        self.remote.warm_up()

    def status(self, gpu: GpuFacts) -> EngineStatus:
        return self.remote.status(gpu)

    def check_ready(self) -> None:
        self.remote.check_ready()

    def preload(self, job: Job) -> None:
        self.remote.preload(job)

    def reload(self, params: ReloadParams, job: Job) -> StatusResult:
        return self.remote.reload(params, job)

    def unload(self) -> bool:
        return self.remote.unload()

    def close(self) -> None:
        self.remote.close()

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
        try:
            return self.remote.transcribe(
                audio, params, job, started=started, notes=notes, speech=speech
            )
        except RemoteError as err:
            if err.kind not in _UNREACHABLE or job.segments:
                raise
            log.warning("remote server unreachable; falling back to the local model")
            note = f"{err.message}; transcribed by the local model instead"
            return self.fallback.transcribe(
                audio, params, job, started=started, notes=[*notes, note], speech=speech
            )
