"""Wait for another process (the parent app) to exit: the orphan guard.

POSIX polls the pid (and our own parent id, which changes when the parent dies); Windows waits on the
process handle. Either way the caller exits within ~2 s of the parent's death, also mid-job.
"""

from __future__ import annotations

import logging
import os
import time

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


def wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited."""
    if os.name == "nt":  # pragma: no cover - Windows only
        _wait_windows(pid)
        return
    watching_parent = pid == os.getppid()
    while True:
        if watching_parent and os.getppid() != pid:
            return  # re-parented: our parent died
        if not process_alive(pid):
            return
        time.sleep(POLL_SECONDS)


def _wait_windows(pid: int) -> None:  # pragma: no cover - Windows only
    import ctypes

    synchronize = 0x00100000
    infinite = 0xFFFFFFFF
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        log.warning("cannot watch parent process %d (OpenProcess failed); not watching it", pid)
        while True:  # never report an exit we could not observe
            time.sleep(3600)
    try:
        kernel32.WaitForSingleObject(handle, infinite)
    finally:
        kernel32.CloseHandle(handle)
