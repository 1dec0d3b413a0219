"""A job's notifications, collected in process (test code only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vibevoice_rpc.job import Job
from vibevoice_rpc.messages import SegmentParams


class Recorder:
    """Collects a job's notifications; ``then`` runs a hook on each one (e.g. to cancel)."""

    def __init__(self, then: Callable[[Recorder, str, Any], None] | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.job: Job | None = None
        self._then = then

    def __call__(self, method: str, params: Any) -> None:
        self.events.append((method, params))
        if self._then is not None:
            self._then(self, method, params)

    @property
    def stages(self) -> list[str]:
        out: list[str] = []
        for method, p in self.events:
            if method == "progress" and (not out or out[-1] != p.stage):
                out.append(p.stage)
        return out

    @property
    def segments(self) -> list[SegmentParams]:
        return [p for m, p in self.events if m == "segment"]

    def progress(self, stage: str) -> list[float]:
        return [p.progress for m, p in self.events if m == "progress" and p.stage == stage]
