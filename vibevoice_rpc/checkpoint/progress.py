"""A running download's progress — bytes done across all files, the current file, a smoothed speed
and the time left — and the registry of running downloads that ``model_status`` reads (the reader
thread) while ``download_model`` runs (the worker).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..messages import DownloadProgress

__all__ = ["Progress", "ActiveDownloads"]

SPEED_WINDOW = 5.0  # seconds of samples behind the reported speed


@dataclass
class Progress:
    """Bytes done across all files, the current file, a smoothed speed and the time left."""

    total: int
    done: int = 0
    fetched: int = 0
    file: str = ""
    file_index: int = 0
    files: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    lock: threading.Lock = field(default_factory=threading.Lock)

    # The download thread adds bytes, its cancel watcher ticks, model_status reads: one lock.
    def add(self, n: int, now: float) -> None:
        with self.lock:
            self.done += n
            self.fetched += n
            self.samples.append((now, self.fetched))
            while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW:
                self.samples.popleft()

    def drop(self, n: int) -> None:
        """Bytes counted as done that are gone (a corrupt or restarted file)."""
        with self.lock:
            self.done -= n

    def tick(self, now: float) -> None:
        """A sample with no new bytes: the speed decays while the transfer stalls."""
        self.add(0, now)

    def snapshot(self) -> DownloadProgress:
        with self.lock:
            speed = 0.0
            if len(self.samples) >= 2:
                (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
                speed = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            left = self.total - self.done
            return DownloadProgress(
                bytes_done=self.done,
                bytes_total=self.total,
                file=self.file,
                file_index=self.file_index,
                files=self.files,
                speed_bps=round(speed),
                eta_s=round(left / speed, 1) if speed > 0 else None,
            )


class ActiveDownloads:
    """The downloads running now, by target folder: the engine holds one, which its
    ``download_model`` (worker thread) fills and its ``model_status`` (reader thread) reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Progress] = {}

    def start(self, target: Path, progress: Progress) -> None:
        with self._lock:
            self._running[str(target)] = progress

    def end(self, target: Path) -> None:
        with self._lock:
            self._running.pop(str(target), None)

    def snapshot(self, target: Path) -> DownloadProgress | None:
        with self._lock:
            running = self._running.get(str(target))
        return running.snapshot() if running is not None else None
