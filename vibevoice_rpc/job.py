"""A job: one unit of model work, and the engine's only handle on the request it serves.

It sits below both sides: the dispatcher creates it and answers for it; the engine and the pipeline
report progress, stream segments and check for cancel through it, without knowing the protocol.
Notifications leave through the ``notify`` callable the dispatcher hands in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from .errors import RequestCancelled, RpcError
from .messages import DownloadProgress, ProgressParams, Segment, SegmentParams

__all__ = ["Job", "Reply", "HEARTBEAT_SECONDS", "MIN_PROGRESS_INTERVAL", "reason_words"]

HEARTBEAT_SECONDS = 0.9  # re-send the current progress when nothing was sent for this long
MIN_PROGRESS_INTERVAL = 0.1  # at most ~10 progress notifications a second per job


def reason_words(reason: str | None) -> str:
    """A stop or cancel reason as words: "shutdown" → "the server is shutting down"."""
    return {
        "shutdown": "the server is shutting down",
        "stdin closed": "stdin closed: the parent is gone",
        "closed": "the server is stopping",
    }.get(reason or "closed", reason or "the server is stopping")


class Reply(Protocol):
    """Where a job's one response goes: the dispatcher's, which a job does not name (the protocol
    side is above it)."""

    @property
    def done(self) -> bool: ...
    def result(self, value: msgspec.Struct | None) -> None: ...
    def error(self, err: RpcError) -> None: ...


class Job:
    """One unit of model work, and the engine's handle on it: progress, segments, cancel."""

    def __init__(
        self,
        id_: int | float | str | None,
        method: str,
        params: msgspec.Struct | None,
        reply: Reply | None,  # None for internal work such as a preload
        notify: Callable[[str, msgspec.Struct], None] | None,
    ) -> None:
        self.id = id_
        self.method = method
        self.params = params
        self.reply = reply
        self._notify = notify  # None: nobody listens (notifications, preload)
        self.cancel_event = threading.Event()
        self.cancel_reason = "cancelled"
        self.segments: list[Segment] = []
        self.stage = ""
        self.progress_value = 0.0
        self.message = ""
        self._last_emit = 0.0
        self._pending = False
        self._download: DownloadProgress | msgspec.UnsetType = msgspec.UNSET
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancel_reason = reason
        self.cancel_event.set()

    def cancelled_error(self) -> RequestCancelled:
        reason = self.cancel_reason
        return RequestCancelled(
            "Request cancelled"
            if reason == "cancelled"
            else f"Request cancelled ({reason_words(reason)})",
            kind="cancelled",
            reason=self.cancel_reason,
            segments=list(self.segments),
        )

    def check_cancelled(self) -> None:
        """Raise :class:`RequestCancelled` (with the segments so far) if cancel was requested."""
        if self.cancel_event.is_set():
            raise self.cancelled_error()

    def report(
        self,
        stage: str,
        progress: float,
        message: str = "",
        *,
        download: DownloadProgress | None = None,
    ) -> None:
        """Record progress. A new stage and a stage's completion (1.0) are sent at once; within a
        stage at most every 0.1 s otherwise, and progress never goes backwards within a stage.
        ``download``: the byte counts of a ``downloading`` stage, sent along."""
        now = time.monotonic()
        progress = min(1.0, max(0.0, float(progress)))
        with self._lock:
            if download is not None:
                self._download = download
            if stage != self.stage:
                if self._pending:  # the old stage's last rate-limited value, before the new stage
                    self._emit_locked(now)
                self.stage, self.progress_value, self.message = stage, progress, message
                self._emit_locked(now)
                return
            completes = progress >= 1.0 > self.progress_value
            self.progress_value = max(self.progress_value, progress)
            if message:
                self.message = message
            if completes or now - self._last_emit >= MIN_PROGRESS_INTERVAL:
                self._emit_locked(now)
            else:
                self._pending = True

    def add_segment(self, segment: Segment) -> None:
        """Record a finished segment and stream it as a ``segment`` notification."""
        with self._lock:
            index = len(self.segments)
            self.segments.append(segment)
        if self._notify is not None:
            self._notify("segment", SegmentParams(id=self.id, index=index, segment=segment))

    def heartbeat(self, now: float) -> None:
        """Flush a rate-limited update, or repeat the current progress when quiet for ~1 s."""
        with self._lock:
            if not self.stage:
                return
            quiet = now - self._last_emit
            if (self._pending and quiet >= MIN_PROGRESS_INTERVAL) or quiet >= HEARTBEAT_SECONDS:
                self._emit_locked(now)

    def _emit_locked(self, now: float) -> None:
        self._last_emit = now
        self._pending = False
        if self._notify is not None:
            self._notify(
                "progress",
                ProgressParams(
                    id=self.id,
                    stage=self.stage,
                    progress=round(self.progress_value, 4),
                    message=self.message,
                    download=self._download,
                ),
            )
