"""The few Win32 calls the server makes, with exact ctypes signatures, and a portable process exit.

ctypes calls an undeclared function with C ``int`` arguments and an ``int`` result, which truncates a
64-bit ``HANDLE`` to 32 bits. :func:`declare` gives every function used here its ``argtypes`` and
``restype``. Callers take the kernel32 object as a parameter (default: :func:`kernel32`), so the
Windows branches run in the Linux tests with a fake; ``IS_WINDOWS`` is the one platform switch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = [
    "IS_WINDOWS",
    "INFINITE",
    "SYNCHRONIZE",
    "WAIT_OBJECT_0",
    "WAIT_FAILED",
    "STD_OUTPUT_HANDLE",
    "STD_ERROR_HANDLE",
    "declare",
    "kernel32",
    "exit_process",
]

log = logging.getLogger(__name__)

IS_WINDOWS = os.name == "nt"

INFINITE = 0xFFFFFFFF
SYNCHRONIZE = 0x00100000
WAIT_OBJECT_0 = 0x00000000
WAIT_FAILED = 0xFFFFFFFF
# GetStdHandle/SetStdHandle take a DWORD: (DWORD)-11 and (DWORD)-12.
STD_OUTPUT_HANDLE = -11 & 0xFFFFFFFF
STD_ERROR_HANDLE = -12 & 0xFFFFFFFF

_kernel32: Any = None


def declare(lib: Any) -> Any:
    """Set ``argtypes``/``restype`` of the kernel32 functions this package calls; returns ``lib``."""
    from ctypes import wintypes

    handle, dword, boolean, uint = wintypes.HANDLE, wintypes.DWORD, wintypes.BOOL, wintypes.UINT
    signatures: dict[str, tuple[list[Any], Any]] = {
        "GetCurrentProcess": ([], handle),
        "TerminateProcess": ([handle, uint], boolean),
        "OpenProcess": ([dword, boolean, dword], handle),
        "WaitForSingleObject": ([handle, dword], dword),
        "CloseHandle": ([handle], boolean),
        "GetStdHandle": ([dword], handle),
        "SetStdHandle": ([dword, handle], boolean),
        "GetConsoleOutputCP": ([], uint),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


def kernel32() -> Any:  # pragma: no cover - Windows only (the tests pass a fake instead)
    """kernel32.dll with the signatures declared, loaded once."""
    global _kernel32
    if _kernel32 is None:
        import ctypes

        _kernel32 = declare(ctypes.WinDLL("kernel32", use_last_error=True))
    return _kernel32


def last_error() -> int:
    """``GetLastError`` of the last kernel32 call on this thread (0 off Windows)."""
    try:
        import ctypes

        return ctypes.get_last_error()  # type: ignore[attr-defined]
    except AttributeError:
        return 0


def exit_process(
    code: int,
    *,
    windows: bool | None = None,
    k32: Any = None,
    _exit: Callable[[int], Any] = os._exit,
) -> NoReturn:
    """End the process now with ``code``; the caller has flushed what must be flushed.

    On Windows this is ``TerminateProcess(GetCurrentProcess(), code)``: ``os._exit`` runs
    ``ExitProcess``, which still calls every loaded DLL's detach routine, and with CUDA loaded that
    has hung or crashed at exit (CTranslate2#1782, faster-whisper#1293). Terminating the own process
    does not return; if the call fails, and everywhere else, ``os._exit`` (no interpreter teardown,
    which costs ~0.8 s after torch).
    """
    if IS_WINDOWS if windows is None else windows:
        lib = k32 if k32 is not None else kernel32()
        if not lib.TerminateProcess(lib.GetCurrentProcess(), code & 0xFFFFFFFF):
            log.error("TerminateProcess failed (error %d); exiting with os._exit", last_error())
    _exit(code)
    raise SystemExit(code)  # only reached when ``_exit`` is a test's stand-in
