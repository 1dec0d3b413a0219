"""The Windows branches (process exit, parent watchdog, stdout claim), run here with kernel32 and
msvcrt injected as fakes; the same functions' POSIX paths run for real."""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
import threading
from ctypes import wintypes
from typing import Any

import pytest

from vibevoice_rpc import watchdog, winapi
from vibevoice_rpc.protocol import server, transport

pytestmark = pytest.mark.timeout(60)

# The real kernel32: these run only on Windows (the GitHub workflow .github/workflows/windows.yml).
windows_only = pytest.mark.skipif(not winapi.IS_WINDOWS, reason="real kernel32: Windows only")
posix_only = pytest.mark.skipif(
    winapi.IS_WINDOWS, reason="POSIX (os.kill(pid, 0) kills on Windows)"
)

PSEUDO_HANDLE = -1  # what GetCurrentProcess returns: the current process's pseudo-handle


class FakeKernel32:
    """Records every call in ``calls`` (shared with other fakes to check the order)."""

    def __init__(self, calls: list[Any] | None = None, **results: Any) -> None:
        self.calls = calls if calls is not None else []
        self.results = {
            "GetCurrentProcess": PSEUDO_HANDLE,
            "TerminateProcess": 1,
            "OpenProcess": 0x1234_5678_9ABC,  # a handle above 32 bits
            "WaitForSingleObject": winapi.WAIT_OBJECT_0,
            "CloseHandle": 1,
            "GetStdHandle": 0x7000_0000_0010,
            "SetStdHandle": 1,
            **results,
        }

    def __getattr__(self, name: str) -> Any:
        if name not in self.results:
            raise AttributeError(name)

        def call(*args: Any) -> Any:
            self.calls.append((name, *args))
            return self.results[name]

        return call


class _Terminated(BaseException):
    """Stands in for 'the process is gone' in a fake _exit."""


def _recording_exit(calls: list[Any]) -> Any:
    def _exit(code: int) -> None:
        calls.append(("_exit", code))
        raise _Terminated(code)

    return _exit


# --- declarations ---------------------------------------------------------------------------------


class _Slot:
    argtypes: Any = None
    restype: Any = None


def test_every_kernel32_function_is_declared_with_pointer_sized_handles():
    lib = type("Lib", (), {})()
    names = [
        "GetCurrentProcess",
        "TerminateProcess",
        "OpenProcess",
        "WaitForSingleObject",
        "CloseHandle",
        "GetStdHandle",
        "SetStdHandle",
        "GetConsoleOutputCP",
    ]
    for name in names:
        setattr(lib, name, _Slot())
    winapi.declare(lib)
    assert all(getattr(lib, n).restype is not None for n in names)
    assert lib.GetCurrentProcess.restype is wintypes.HANDLE
    assert lib.OpenProcess.restype is wintypes.HANDLE
    assert lib.GetStdHandle.restype is wintypes.HANDLE
    assert lib.TerminateProcess.argtypes == [wintypes.HANDLE, wintypes.UINT]
    assert lib.WaitForSingleObject.argtypes == [wintypes.HANDLE, wintypes.DWORD]
    assert lib.WaitForSingleObject.restype is wintypes.DWORD
    assert lib.CloseHandle.argtypes == [wintypes.HANDLE]
    assert lib.SetStdHandle.argtypes == [wintypes.DWORD, wintypes.HANDLE]
    # A HANDLE is a pointer: 64 bits on a 64-bit Python, not ctypes' default 32-bit int.
    assert ctypes.sizeof(wintypes.HANDLE) == ctypes.sizeof(ctypes.c_void_p)
    assert winapi.STD_OUTPUT_HANDLE == 0xFFFFFFF5 and winapi.STD_ERROR_HANDLE == 0xFFFFFFF4


# --- item 2: the exit -----------------------------------------------------------------------------


def test_windows_exit_terminates_the_own_process_with_the_code():
    calls: list[Any] = []
    k32 = FakeKernel32(calls)

    def terminate(handle: Any, code: int) -> None:
        calls.append(("TerminateProcess", handle, code))
        raise _Terminated(code)  # terminating the own process does not return

    k32.TerminateProcess = terminate  # type: ignore[attr-defined]
    with pytest.raises(_Terminated):
        winapi.exit_process(3, windows=True, k32=k32, _exit=_recording_exit(calls))
    assert calls == [("GetCurrentProcess",), ("TerminateProcess", PSEUDO_HANDLE, 3)]


def test_windows_exit_falls_back_to_os_exit_when_terminate_fails():
    calls: list[Any] = []
    k32 = FakeKernel32(calls, TerminateProcess=0)
    with pytest.raises(_Terminated):
        winapi.exit_process(0, windows=True, k32=k32, _exit=_recording_exit(calls))
    assert [c[0] for c in calls] == ["GetCurrentProcess", "TerminateProcess", "_exit"]
    assert calls[-1] == ("_exit", 0)


def test_posix_exit_is_os_exit_and_never_touches_kernel32():
    calls: list[Any] = []
    with pytest.raises(_Terminated):
        winapi.exit_process(7, windows=False, k32=FakeKernel32(calls), _exit=_recording_exit(calls))
    assert calls == [("_exit", 7)]


class _FakeDispatcher:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def request_stop(self, reason: str) -> None:
        self.calls.append(("request_stop", reason))

    def close(self, timeout: float) -> None:
        self.calls.append(("close",))


class _FlushRecorder:
    def __init__(self, calls: list[Any], name: str) -> None:
        self.calls, self.name = calls, name

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        self.calls.append(("flush", self.name))


def test_server_stop_answers_then_flushes_then_terminates_on_windows(monkeypatch):
    calls: list[Any] = []
    monkeypatch.setattr(sys, "stderr", _FlushRecorder(calls, "stderr"))
    monkeypatch.setattr(sys, "__stderr__", _FlushRecorder(calls, "__stderr__"))
    k32 = FakeKernel32(calls, TerminateProcess=0)  # returns: the fallback must still exit
    exit_ = functools.partial(
        winapi.exit_process, windows=True, k32=k32, _exit=_recording_exit(calls)
    )
    stopper = server._Stopper(_FakeDispatcher(calls), exit=exit_)  # type: ignore[arg-type]
    with pytest.raises(_Terminated):
        stopper.stop("shutdown")
    names = [c[0] for c in calls]
    assert names == [
        "request_stop",
        "close",
        "flush",
        "flush",
        "GetCurrentProcess",
        "TerminateProcess",
        "_exit",
    ]
    assert calls[5] == ("TerminateProcess", PSEUDO_HANDLE, 0)


def test_cli_transcribe_exit_code_survives_the_fast_exit(tmp_path):
    """The CLI ends through exit_process once torch is loaded (here: os._exit); its code and
    its stderr must still come out."""
    code = (
        "import sys, torch\n"
        "import vibevoice_rpc.cli as cli\n"
        "cli.main = lambda **_kw: (sys.stderr.write('bye\\n'), 5)[1]\n"
        "from vibevoice_rpc.__main__ import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 5 and out.stderr.endswith("bye\n")


# --- item 5: the watchdog -------------------------------------------------------------------------


def _blocked(calls: list[Any]) -> Any:
    def block() -> None:
        calls.append(("block",))
        raise _Terminated("block")

    return block


def test_watchdog_reports_the_exit_only_when_the_handle_is_signalled():
    calls: list[Any] = []
    k32 = FakeKernel32(calls)
    watchdog._wait_windows(4242, k32, block=_blocked(calls))  # returns: the parent exited
    handle = k32.results["OpenProcess"]
    assert calls == [
        ("OpenProcess", winapi.SYNCHRONIZE, False, 4242),
        ("WaitForSingleObject", handle, winapi.INFINITE),
        ("CloseHandle", handle),
    ]


def test_watchdog_does_not_report_an_exit_when_the_wait_fails(caplog):
    calls: list[Any] = []
    k32 = FakeKernel32(calls, WaitForSingleObject=winapi.WAIT_FAILED)
    with pytest.raises(_Terminated):
        watchdog._wait_windows(4242, k32, block=_blocked(calls))
    assert [c[0] for c in calls] == ["OpenProcess", "WaitForSingleObject", "CloseHandle", "block"]
    assert "not watching it" in caplog.text


def test_watchdog_does_not_report_an_exit_when_open_process_fails(caplog):
    calls: list[Any] = []
    k32 = FakeKernel32(calls, OpenProcess=None)
    with pytest.raises(_Terminated):
        watchdog._wait_windows(4242, k32, block=_blocked(calls))
    assert [c[0] for c in calls] == ["OpenProcess", "block"]
    assert "OpenProcess failed" in caplog.text


def test_wait_for_exit_takes_the_windows_branch_when_told(monkeypatch):
    calls: list[Any] = []
    watchdog.wait_for_exit(99, windows=True, k32=FakeKernel32(calls))
    assert calls[0] == ("OpenProcess", winapi.SYNCHRONIZE, False, 99)


@posix_only
def test_wait_for_exit_on_posix_returns_when_the_process_is_gone():
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    done = threading.Event()
    t = threading.Thread(
        target=lambda: (watchdog.wait_for_exit(child.pid, windows=False), done.set()), daemon=True
    )
    t.start()
    assert not done.is_set()
    child.stdin.close()  # type: ignore[union-attr]
    child.wait(30)
    assert done.wait(30)


# --- item 5: the stdout claim ---------------------------------------------------------------------


class _FakeMsvcrt:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def setmode(self, fd: int, mode: int) -> int:
        self.calls.append(("setmode", fd, mode))
        return mode


@pytest.fixture
def saved_stdio():
    """claim_stdout rewires fd 1 and sys.stdout: put both back afterwards."""
    saved_fd, saved_stdout = os.dup(1), sys.stdout
    try:
        yield
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stdout


def test_protocol_fd_is_not_inheritable(saved_stdio):
    os.set_inheritable(1, True)  # as the standard streams are on Windows: dup copies that there
    fd = transport.claim_stdout(windows=False)
    try:
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_windows_claim_sets_binary_mode_and_points_native_stdout_at_stderr(saved_stdio):
    calls: list[Any] = []
    fd = transport.claim_stdout(windows=True, msvcrt=_FakeMsvcrt(calls), k32=FakeKernel32(calls))
    try:
        binary = getattr(os, "O_BINARY", 0x8000)
        assert calls == [
            ("setmode", fd, binary),
            ("setmode", 0, binary),
            ("GetStdHandle", winapi.STD_ERROR_HANDLE),
            ("SetStdHandle", winapi.STD_OUTPUT_HANDLE, 0x7000_0000_0010),
        ]
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_protocol_fd_is_not_inherited_by_a_child(saved_stdio):
    """The POSIX half of the same guarantee, end to end: a child started with close_fds=False
    (as native code that spawns with handle inheritance would) does not get the protocol fd."""
    fd = transport.claim_stdout(windows=False)
    try:
        probe = f"import os\ntry:\n    os.fstat({fd}); print('open')\nexcept OSError:\n    print('closed')"
        out = subprocess.run(
            [sys.executable, "-c", probe], close_fds=False, capture_output=True, text=True
        )
        assert out.stdout.strip() == "closed"
    finally:
        os.close(fd)


# --- the real thing, on Windows only --------------------------------------------------------------


@windows_only
def test_real_current_process_pseudo_handle_is_pointer_sized():
    assert winapi.kernel32().GetCurrentProcess() == 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1


@windows_only
def test_real_watchdog_returns_when_the_watched_process_exits():
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    done = threading.Event()
    threading.Thread(
        target=lambda: (watchdog.wait_for_exit(child.pid), done.set()), daemon=True
    ).start()
    assert not done.is_set()
    child.stdin.close()  # type: ignore[union-attr]
    child.wait(30)
    assert done.wait(30)


@windows_only
def test_real_exit_process_exits_with_the_code():
    code = "from vibevoice_rpc.winapi import exit_process\nexit_process(7)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7
