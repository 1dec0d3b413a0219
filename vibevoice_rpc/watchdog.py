"""Wait for another process (the parent app) to exit: the orphan guard.

POSIX polls the pid (and our own parent id, which changes when the parent dies); Windows waits on the
process handle and takes only ``WAIT_OBJECT_0`` (signalled) as the parent's exit. Either way the
caller exits within ~2 s of the parent's death, also mid-job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .winapi import INFINITE, IS_WINDOWS, SYNCHRONIZE, WAIT_OBJECT_0, kernel32, last_error

__all__ = ["wait_for_exit", "process_alive"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def process_alive(pid: int) -> bool:
    """Best-effort check that ``pid`` still exists (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def wait_for_exit(pid: int, *, windows: bool | None = None, k32: Any = None) -> None:
    """Block until process ``pid`` has exited."""
    if IS_WINDOWS if windows is None else windows:
        _wait_windows(pid, k32 if k32 is not None else kernel32())
        return
    watching_parent = pid == os.getppid()
    while True:
        if watching_parent and os.getppid() != pid:
            return  # re-parented: our parent died
        if not process_alive(pid):
            return
        time.sleep(POLL_SECONDS)


def _never_returns() -> None:
    while True:  # never report an exit we could not observe
        time.sleep(3600)


def _wait_windows(pid: int, k32: Any, block: Callable[[], None] = _never_returns) -> None:
    """Wait on the process handle; return only when it is signalled (``WAIT_OBJECT_0``).

    ``WAIT_FAILED`` (or anything else) is no evidence that the parent died: log it and stop watching
    rather than exit with the parent alive.
    """
    handle = k32.OpenProcess(SYNCHRONIZE, False, pid)
    if not handle:
        log.warning(
            "cannot watch parent process %d (OpenProcess failed, error %d); not watching it",
            pid,
            last_error(),
        )
        block()
        return
    try:
        result = k32.WaitForSingleObject(handle, INFINITE)
    finally:
        k32.CloseHandle(handle)
    if result == WAIT_OBJECT_0:
        return
    log.warning(
        "waiting for parent process %d failed (result 0x%X, error %d); not watching it",
        pid,
        result,
        last_error(),
    )
    block()
