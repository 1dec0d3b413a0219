"""Routing, the job queue, cancellation and shutdown — with one exception-to-error boundary.

The reader thread calls :meth:`Dispatcher.handle_line` for every line. Fast methods (``health``,
``cancel``, ``shutdown``) are answered right there; model work (``transcribe``, ``reload_model``,
``unload_model``) goes to a bounded FIFO queue served by one worker thread, which owns the engine.
Every request gets exactly one response: :class:`Reply` enforces it, and :meth:`Dispatcher.close`
answers whatever is still pending.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from .. import PROTOCOL_VERSION, __version__
from ..errors import (
    InternalError,
    InvalidRequest,
    MethodNotFound,
    RequestTooLarge,
    RpcError,
    ServerBusy,
    ShuttingDown,
    out_of_memory,
)
from ..job import Job, reason_words
from ..messages import (
    CancelParams,
    CancelResult,
    DownloadParams,
    DownloadResult,
    EmptyParams,
    EngineStatus,
    HealthResult,
    ModelStatusParams,
    ModelStatusResult,
    ReloadParams,
    StatusResult,
    TranscribeParams,
    TranscribeResult,
)
from .jsonrpc import (
    Id,
    Invalid,
    Request,
    decode_batch_member,
    decode_message,
    decode_params,
    encode_error,
    encode_notification,
    encode_result,
)
from .transport import Oversized, find_top_level_id

__all__ = ["Engine", "Job", "Reply", "Dispatcher"]

log = logging.getLogger(__name__)

_TICK = 0.1


class Engine(Protocol):
    """What the dispatcher needs from the model engine (the real one is :mod:`vibevoice_rpc.engine`)."""

    def snapshot(self) -> EngineStatus: ...
    def transcribe(self, params: TranscribeParams, job: Job) -> TranscribeResult: ...
    def reload(self, params: ReloadParams, job: Job) -> StatusResult: ...
    def unload(self, job: Job) -> StatusResult: ...
    def preload(self, job: Job) -> None: ...
    def model_status(self, params: ModelStatusParams) -> ModelStatusResult: ...
    def download_model(self, params: DownloadParams, job: Job) -> DownloadResult: ...
    def close(self) -> None: ...


def _id_key(id_: Id) -> tuple[str, Id]:
    # 1, 1.0 and "1" are different ids in JSON-RPC.
    return (type(id_).__name__, id_)


class Reply:
    """The one response of one request. A second answer is refused (and logged), never written."""

    __slots__ = ("id", "_sink", "_lock", "done")

    def __init__(self, id_: Id, sink: Callable[[bytes | None], None] | None) -> None:
        self.id = id_
        self._sink = sink  # None for notifications: computed, never written
        self._lock = threading.Lock()
        self.done = False

    @property
    def listening(self) -> bool:
        """Whether anyone waits for this answer (False for a notification)."""
        return self._sink is not None

    def result(self, value: msgspec.Struct | None) -> None:
        self._send(lambda: encode_result(self.id, value), None)

    def error(self, err: RpcError) -> None:
        self._send(lambda: encode_error(self.id, err), err)

    def _send(self, make: Callable[[], bytes], err: RpcError | None) -> None:
        with self._lock:
            if self.done:
                log.error("suppressed a second response to request id=%r", self.id)
                return
            self.done = True
        if self._sink is None:
            if err is not None:
                log.info("error for a notification (not answered): %s", err.message)
            return
        try:
            data = make()
        except Exception as exc:  # a result that can't be encoded is an internal error
            log.exception("could not encode the response to id=%r", self.id)
            data = encode_error(self.id, InternalError(f"could not encode the response: {exc}"))
        self._sink(data)


class _Batch:
    """Collects the responses of a batch and writes them as one array when all members are done."""

    def __init__(self, size: int, write: Callable[[bytes], Any]) -> None:
        self._remaining = size
        self._parts: list[bytes] = []
        self._write = write
        self._lock = threading.Lock()

    def add(self, data: bytes | None) -> None:
        with self._lock:
            if data is not None:
                self._parts.append(data)
            self._remaining -= 1
            if self._remaining or not self._parts:
                return
            out = b"[" + b",".join(self._parts) + b"]"
        self._write(out)


@dataclass(frozen=True)
class _Inline:
    """A method answered on the reader thread, at once: ``answer(params, reply)`` returns the
    result (or answers ``reply`` itself and returns None)."""

    params: type[msgspec.Struct]
    answer: Callable[[Any, Reply], msgspec.Struct | None]


@dataclass(frozen=True)
class _Queued:
    """Model work, run by the worker in order: ``run(params, job)`` returns the result."""

    params: type[msgspec.Struct]
    run: Callable[[Any, Job], msgspec.Struct | None]
    needs_model: bool = False  # queued behind a model load or download, it says what it waits for
    result_matters: bool = False  # as a notification its work would be lost: ignored, with a log
    # While a job of this method runs, what a needs_model job queued right behind it waits for
    # (its stage and message).
    waiting: tuple[str, str] | None = None


_Method = _Inline | _Queued  # what the dispatcher must know of a method; nothing else names methods


class Dispatcher:
    """Reads messages, answers fast methods inline and runs model work on one worker thread."""

    def __init__(
        self,
        engine: Engine,
        write: Callable[[bytes], Any],
        *,
        max_queue: int = 16,
        max_line_bytes: int | None = None,
        log_lines_dropped: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self._log_lines_dropped = log_lines_dropped
        self._write = write
        self._max_queue = max_queue
        self._max_line_bytes = max_line_bytes
        self._queue: deque[Job] = deque()
        self._inflight: dict[tuple[str, Id], Job] = {}
        self._running: Job | None = None
        self._cv = threading.Condition()
        self.stopping = threading.Event()
        self.stop_reason = ""
        self._started = time.monotonic()
        self._worker: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._methods: dict[str, _Method] = {
            "health": _Inline(params=EmptyParams, answer=self._health),
            "cancel": _Inline(params=CancelParams, answer=self._cancel),
            "$/cancelRequest": _Inline(params=CancelParams, answer=self._cancel),
            "shutdown": _Inline(params=EmptyParams, answer=self._shutdown),
            "model_status": _Inline(
                params=ModelStatusParams,
                answer=lambda params, _reply: self.engine.model_status(params),
            ),
            "transcribe": _Queued(
                params=TranscribeParams,
                run=self.engine.transcribe,
                needs_model=True,
                result_matters=True,
            ),
            "reload_model": _Queued(params=ReloadParams, run=self.engine.reload),
            "unload_model": _Queued(
                params=EmptyParams, run=lambda _p, job: self.engine.unload(job)
            ),
            "download_model": _Queued(
                params=DownloadParams,
                run=self.engine.download_model,
                result_matters=True,
                waiting=("queued", "waiting for the model download to finish"),
            ),
        }
        # Work the server queues itself (not callable by clients).
        self._internal: dict[str, _Queued] = {
            "preload": _Queued(
                params=EmptyParams,
                run=lambda _p, job: self.engine.preload(job),
                waiting=("loading_model", "waiting for the model to load"),
            ),
        }

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, preload: bool = False) -> None:
        self._worker = threading.Thread(target=self._work, name="vibevoice-worker", daemon=True)
        self._ticker = threading.Thread(target=self._tick, name="vibevoice-heartbeat", daemon=True)
        self._worker.start()
        self._ticker.start()
        if preload:
            job = Job(None, "preload", None, None, None)
            with self._cv:
                self._queue.append(job)
                self._cv.notify()

    def request_stop(self, reason: str) -> None:
        """Stop accepting work; the reader loop ends and calls :meth:`close`."""
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.stopping.set()
            log.info("stopping: %s", reason)

    def close(self, timeout: float = 1.5) -> None:
        """Cancel all work, answer everything still pending, and wait briefly for the worker."""
        self.request_stop(self.stop_reason or "closed")
        reason = self.stop_reason
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
            running = self._running
            self._cv.notify_all()
        for job in queued:
            job.cancel(reason)
            self._finish(job, error=job.cancelled_error())
        if running is not None:
            running.cancel(reason)
        if self._worker is not None:
            self._worker.join(timeout)
        if running is not None and running.reply is not None and not running.reply.done:
            # The worker is stuck in a long native call (e.g. a prefill); answer for it.
            self._finish(running, error=running.cancelled_error())
        try:
            self.engine.close()
        except Exception:
            log.exception("engine close failed")

    # --- reading --------------------------------------------------------------------------

    def handle_line(self, line: bytes | Oversized) -> None:
        """Handle one input line (a message or a batch). Never raises."""
        try:
            if isinstance(line, Oversized):
                limit = self._max_line_bytes or 0
                err = RequestTooLarge(
                    f"Request too large: the line has {line.size} bytes, the limit is {limit} bytes",
                    size=line.size,
                    limit=limit,
                )
                self._write(encode_error(find_top_level_id(line.head, line.tail), err))
                return
            message = decode_message(line)
            if isinstance(message, list):
                self._handle_batch(message)
            else:
                self._handle_one(message, self._write)
        except Exception as exc:  # the last line of defence: the reader must survive anything
            log.exception("unexpected failure handling a line")
            self._write(encode_error(None, InternalError(f"Internal error: {exc}")))

    def _handle_batch(self, members: list[msgspec.Raw]) -> None:
        if not members:
            self._write(encode_error(None, InvalidRequest("Invalid Request: empty batch")))
            return
        batch = _Batch(len(members), self._write)
        for raw in members:
            self._handle_one(decode_batch_member(raw), batch.add)

    def _handle_one(self, message: Request | Invalid, sink: Callable[[bytes | None], Any]) -> None:
        if isinstance(message, Invalid):
            sink(encode_error(message.id, message.error))
            return
        if message.is_notification:
            reply = Reply(None, None)
            if sink is not self._write:
                sink(None)  # a batch member that is never answered
        else:
            reply = Reply(message.id, sink)  # type: ignore[arg-type]
        self._dispatch(message, reply)

    # --- the one exception-to-error boundary for inline work and enqueueing -----------------

    def _dispatch(self, request: Request, reply: Reply) -> None:
        try:
            if reply.listening:  # any method: a pending id would make answers ambiguous
                with self._cv:
                    self._refuse_pending_id(reply.id)
            if (
                self.stopping.is_set()
            ):  # with or after shutdown: every request still gets one answer
                raise ShuttingDown(
                    f"The server is shutting down ({reason_words(self.stop_reason)}); "
                    f"{request.method!r} was not run",
                    reason=self.stop_reason,
                )
            method = self._methods.get(request.method)
            if method is None:
                raise MethodNotFound(
                    f"Method not found: {request.method!r}",
                    method=request.method,
                    available=sorted(m for m in self._methods if not m.startswith("$/")),
                )
            params = decode_params(request.params, method.params)
            if isinstance(method, _Queued):
                self._enqueue(request, method, params, reply)
            else:
                result = method.answer(params, reply)
                if result is not None:
                    reply.result(result)
        except RpcError as err:
            reply.error(err)
        except Exception as exc:
            log.exception("internal error in %s", request.method)
            reply.error(InternalError(f"Internal error: {type(exc).__name__}: {exc}"))

    def _queued_of(self, job: Job) -> _Queued:
        method = self._methods.get(job.method) or self._internal[job.method]
        assert isinstance(method, _Queued)
        return method

    def _enqueue(
        self, request: Request, method: _Queued, params: msgspec.Struct, reply: Reply
    ) -> None:
        if not reply.listening and method.result_matters:
            log.warning(
                "ignored %r sent as a notification: its result would be lost", request.method
            )
            return
        if self.stopping.is_set():
            raise ShuttingDown("The server is shutting down", reason=self.stop_reason)
        job = Job(
            reply.id, request.method, params, reply, self._notify if reply.listening else None
        )
        with self._cv:
            if len(self._queue) >= self._max_queue:
                raise ServerBusy(
                    f"Server busy: {len(self._queue)} jobs are already queued",
                    hint="wait for a running job to finish, or cancel one",
                    queue_length=len(self._queue),
                    max_queue=self._max_queue,
                )
            if reply.listening:
                self._refuse_pending_id(reply.id)  # again, atomically with the insert
                self._inflight[_id_key(reply.id)] = job
            if method.needs_model:  # sent before the worker can report a later stage
                running = self._running
                waiting = self._queued_of(running).waiting if running is not None else None
                if waiting is not None and not self._queue:
                    job.report(waiting[0], 0.0, waiting[1])
                else:
                    position = len(self._queue) + 1 + (1 if running is not None else 0)
                    job.report("queued", 0.0, f"queued at position {position}")
            self._queue.append(job)
            self._cv.notify()

    def _refuse_pending_id(self, id_: Id) -> None:
        """Raise ``duplicate_id`` when a queued or running request uses ``id_``. Hold ``_cv``."""
        if _id_key(id_) in self._inflight:
            raise InvalidRequest(
                f"Invalid Request: id {id_!r} is already in use by a pending request",
                kind="duplicate_id",
            )

    # --- inline methods -------------------------------------------------------------------

    def _health(self, _params: EmptyParams, _reply: Reply) -> HealthResult:
        snap = self.engine.snapshot()
        gpu = snap.gpu
        with self._cv:
            queue_length = len(self._queue)
        return HealthResult(
            status="ok",
            model_loaded=snap.model_loaded,
            gpu_available=gpu.gpu_available,
            vram_used_mb=gpu.vram_used_mb,
            vram_total_mb=gpu.vram_total_mb,
            gpu_probe=gpu.gpu_probe,
            state="stopping" if self.stopping.is_set() else snap.state,
            device=snap.device,
            precision=snap.precision,
            model=snap.model,
            queue_length=queue_length,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            pid=os.getpid(),
            uptime_s=round(time.monotonic() - self._started, 3),
            last_error=snap.last_error,
            plan=snap.plan,
            backend=snap.backend,
            requested_precision=snap.requested_precision,
            remote=snap.remote,
            gpu_name=gpu.gpu_name,
            gpu_driver=gpu.gpu_driver,
            log_lines_dropped=self._log_lines_dropped() if self._log_lines_dropped else 0,
        )

    def _cancel(self, params: CancelParams, _reply: Reply) -> CancelResult:
        key = _id_key(params.id)
        with self._cv:
            job = self._inflight.get(key)
            if job is None or job.reply is None or job.reply.done:
                return CancelResult(cancelled=False)
            queued = job is not self._running
            if queued:
                self._queue.remove(job)
            job.cancel("cancelled")
        if queued:  # queued jobs are answered at once
            self._finish(job, error=job.cancelled_error())
        return CancelResult(cancelled=True)

    def _shutdown(self, _params: EmptyParams, reply: Reply) -> None:
        reply.result(StatusResult(status="ok", message="shutting down"))
        self.request_stop("shutdown")
        return None

    # --- worker ---------------------------------------------------------------------------

    def _notify(self, method: str, params: Any) -> None:
        self._write(encode_notification(method, params))

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self.stopping.is_set():
                    self._cv.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
            try:
                self._run(job)
            finally:
                with self._cv:
                    self._running = None

    def _run(self, job: Job) -> None:
        """The exception-to-error boundary of model work: every job ends in exactly one answer."""
        result: msgspec.Struct | None = None
        error: RpcError | None = None
        try:
            job.check_cancelled()
            result = self._queued_of(job).run(job.params, job)
        except RpcError as err:
            error = err
        except MemoryError as exc:  # outside the engine's own translation (e.g. decoding audio)
            error = out_of_memory(exc)
        except Exception as exc:
            log.exception("%s failed", job.method)
            error = InternalError(f"Internal error: {type(exc).__name__}: {exc}")
        finally:
            self._finish(job, result=result, error=error)  # nothing to answer for internal work

    def _finish(
        self, job: Job, *, result: msgspec.Struct | None = None, error: RpcError | None = None
    ) -> None:
        with self._cv:
            if job.reply is not None and self._inflight.get(_id_key(job.id)) is job:
                del self._inflight[_id_key(job.id)]
        if job.reply is None:
            return
        if error is not None:
            job.reply.error(error)
        else:
            job.reply.result(result)

    def _tick(self) -> None:
        while not self.stopping.wait(_TICK):
            now = time.monotonic()
            with self._cv:
                jobs = list(self._inflight.values())
            for job in jobs:
                job.heartbeat(now)
