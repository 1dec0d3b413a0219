"""The server's lifecycle: claim stdout, say ``ready``, read stdin, stop cleanly on every path.

Stop paths, each ending in exit code 0 within ~2 s: ``shutdown``, stdin EOF (the parent is gone),
SIGTERM/SIGINT/SIGHUP, and the parent-process watchdog. All of them cancel running work, answer every
pending request, then leave with :func:`~vibevoice_rpc.winapi.exit_process`: ``os._exit`` (interpreter
teardown after torch costs ~0.8 s), on Windows ``TerminateProcess`` (no DLL detach code, which has
hung at exit with CUDA loaded). On Windows there is no SIGTERM: ``kill()`` is ``TerminateProcess``,
which ends the process at once; the orderly paths there are ``shutdown``, stdin EOF and the watchdog
(Ctrl+C/Ctrl+Break in a console raise SIGINT/SIGBREAK).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .. import PROTOCOL_VERSION, __version__
from ..config import Config
from ..logsink import current as current_sink
from ..logsink import flush_at_exit
from ..messages import ReadyParams
from ..winapi import exit_process
from .dispatcher import Dispatcher, Engine
from .jsonrpc import encode_notification
from .transport import DEFAULT_MAX_LINE_BYTES, LineWriter, Oversized, iter_lines

__all__ = ["serve"]

log = logging.getLogger(__name__)


class _Terminate(BaseException):
    """Raised in the main thread by a signal handler to leave the read loop."""


class _Stopper:
    """Runs the stop sequence exactly once, from whichever thread gets there first."""

    def __init__(self, dispatcher: Dispatcher, exit: Callable[[int], Any] = exit_process) -> None:
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._exit = exit

    def stop(self, reason: str, code: int = 0) -> None:
        with self._lock:  # a second caller blocks here until the first one exits the process
            self._dispatcher.request_stop(reason)
            self._dispatcher.close(timeout=1.2)
            log.info("exiting (%s)", reason)
            flush_at_exit(0.3)  # bounded: a stderr pipe nobody reads must not keep us alive
            self._exit(code)


_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")


def _install_signal_handlers(dispatcher: Dispatcher, stopper: _Stopper) -> None:
    """Stop on SIGTERM/SIGINT/SIGHUP (SIGBREAK on Windows).

    Python runs a signal's handler in the main thread between bytecodes, and the main thread spends
    its time blocked in ``read`` on stdin: a signal that lands while it is on its way into that
    ``read`` (or that the kernel hands to another thread) is only handled once a line arrives —
    with an idle stdin, never. So on POSIX the C-level handler's wake-up byte
    (:func:`signal.set_wakeup_fd`) goes to a pipe that a thread of its own waits on, and that
    thread runs the stop sequence; the handler in the main thread is the path where there is no
    such pipe (Windows) and a second way in (the stopper runs once)."""
    handled: dict[int, str] = {}
    for name in _STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            handled[int(sig)] = name

    def handler(signum: int, _frame: Any) -> None:
        if not dispatcher.stopping.is_set():
            raise _Terminate(handled.get(signum, str(signum)))

    for signum in list(handled):
        try:
            signal.signal(signum, handler)
        except (OSError, ValueError):  # pragma: no cover - not the main thread / unsupported
            del handled[signum]
    if os.name != "posix":
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (OSError, ValueError):  # pragma: no cover - not the main thread
        os.close(read_fd)
        os.close(write_fd)
        return

    def wait() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:  # pragma: no cover - the pipe is ours and stays open
                return
            for signum in data:
                if signum in handled and not dispatcher.stopping.is_set():
                    stopper.stop(f"signal {handled[signum]}")

    threading.Thread(target=wait, name="vibevoice-signals", daemon=True).start()


def _watch_parent(pid: int, stopper: _Stopper) -> None:
    """Exit when the parent process dies (the app crashed or was killed without closing stdin)."""
    from ..watchdog import wait_for_exit

    def run() -> None:
        wait_for_exit(pid)
        stopper.stop(f"parent process {pid} exited")

    threading.Thread(target=run, name="vibevoice-parent-watchdog", daemon=True).start()


# After shutdown, requests already on their way (written with it, or right after) are answered
# -32008 until the input has been quiet this long (or ends), at most _LATE_MAX seconds in all.
_LATE_QUIET = 0.2
_LATE_MAX = 1.0


def _answer_late_requests(lines: Iterator[bytes | Oversized], dispatcher: Dispatcher) -> None:
    """Every request gets one answer, also one that arrives with or just after ``shutdown``: a
    reader thread keeps handling lines (the dispatcher refuses them with -32008 now) until stdin
    has been quiet for a moment. Then the process exits regardless; the thread is a daemon."""
    last = [time.monotonic()]
    done = threading.Event()

    def drain() -> None:
        try:
            for line in lines:
                last[0] = time.monotonic()
                dispatcher.handle_line(line)
        except Exception:  # stdin closed or broken: nothing more will arrive
            pass
        finally:
            done.set()

    threading.Thread(target=drain, name="vibevoice-late-reader", daemon=True).start()
    deadline = time.monotonic() + _LATE_MAX
    while not done.wait(0.05):
        now = time.monotonic()
        if now - last[0] >= _LATE_QUIET or now >= deadline:
            return


class ServedEngine(Engine, Protocol):
    """The dispatcher's engine, and its warm-up after ``ready`` (the real one:
    :class:`vibevoice_rpc.engine.Engine`, which the command line builds)."""

    def warm_up(self) -> None: ...


def serve(config: Config, proto_fd: int, engine: ServedEngine) -> int:
    """Serve JSON-RPC on stdin / ``proto_fd`` until told to stop. Does not return normally."""
    from .. import watchdog  # noqa: F401 - imported for its cost before `ready`, here

    writer = LineWriter(proto_fd)
    writer.write(
        encode_notification(
            "ready", ReadyParams(version=__version__, protocol=PROTOCOL_VERSION, pid=os.getpid())
        )
    )
    log.debug("ready written (torch imported: %s)", "torch" in sys.modules)
    sink = current_sink()
    dispatcher = Dispatcher(
        engine,
        writer.write,
        max_queue=config.max_queue,
        max_line_bytes=DEFAULT_MAX_LINE_BYTES,
        log_lines_dropped=(lambda: sink.dropped) if sink is not None else None,
    )
    stopper = _Stopper(dispatcher)
    _install_signal_handlers(dispatcher, stopper)
    dispatcher.start(preload=config.preload)
    engine.warm_up()
    if config.parent_pid:
        _watch_parent(config.parent_pid, stopper)
    reason = "stdin closed"
    lines = iter_lines(sys.stdin.buffer, DEFAULT_MAX_LINE_BYTES)
    try:
        for line in lines:
            dispatcher.handle_line(line)
            if dispatcher.stopping.is_set():
                reason = dispatcher.stop_reason
                _answer_late_requests(lines, dispatcher)
                break
    except (_Terminate, KeyboardInterrupt) as exc:
        reason = f"signal {exc}" if str(exc) else "interrupted"
    except OSError as exc:
        reason = f"stdin error: {exc}"
    stopper.stop(reason)
    return 0  # pragma: no cover - stop() exits the process
