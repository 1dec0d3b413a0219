"""Command line: no arguments runs the server; ``transcribe`` and ``selftest`` are for commands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import PROTOCOL_VERSION, __version__
from .config import Config, env_help, flag_help, setup_logging, warn_unknown_env
from .messages import PRECISIONS

if TYPE_CHECKING:
    from .model.backend import LocalRuntime

__all__ = ["main", "build_parser"]

_EPILOG = """\
talking to the server by hand (one JSON-RPC 2.0 message per line on stdin, answers on stdout):
  $ vibevoice-rpc
  {"jsonrpc":"2.0","id":1,"method":"health"}
  {"jsonrpc":"2.0","id":2,"method":"transcribe","params":{"audio_path":"meeting.opus"}}
  {"jsonrpc":"2.0","id":3,"method":"shutdown"}
logs go to stderr; stdout carries protocol messages only. See docs/PROTOCOL.md.

"""
# The variables come from config.ENV_VARS, the table the configuration is read by: never a list
# kept here that could leave one out.
_EPILOG += env_help()


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: …)" only where the help does not say it already and there is a default
    to tell (argparse's own printed "(default: scaled) (default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, [], False):
            return text
        return super()._get_help_string(action)


def _add_model_options(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """The model options, accepted before and after the command. A subcommand's copies default
    to "not given" (SUPPRESS), so they never overwrite what was given before the command."""
    kw: dict[str, object] = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--precision", choices=PRECISIONS, help=flag_help("VIBEVOICE_PRECISION"), **kw)
    p.add_argument("--model-path", help=flag_help("VIBEVOICE_MODEL_PATH"), **kw)
    p.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), help=flag_help("VIBEVOICE_DEVICE"), **kw
    )
    p.add_argument("--log-level", help=flag_help("VIBEVOICE_LOG_LEVEL"), **kw)


def _add_serve_options(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
    kw: dict[str, object] = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--preload", action="store_true", help=flag_help("VIBEVOICE_PRELOAD"), **kw)
    p.add_argument(
        "--parent-pid",
        type=_parent_pid,
        help="exit when this process dies (default: the parent at start; 0 disables)",
        **({"default": argparse.SUPPRESS} if sub else {"default": None}),
    )


# pid_t is a signed 32-bit int on POSIX; Windows process ids are DWORDs.
_MAX_PID = 2**32 - 1 if os.name == "nt" else 2**31 - 1


def _parent_pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        pid = -1
    if not 0 <= pid <= _MAX_PID:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a process id (use a pid of 1 or more, or 0 to disable the watchdog)"
        )
    return pid


def _check_std_fds(command: str) -> None:
    """Refuse to serve without stdin/stdout, and keep fds 0-2 occupied so later dups stay above them.

    A closed fd 0 would otherwise be reused by the first ``os.dup`` (the protocol's copy of stdout)
    and ``sys.stdin`` would be ``None``: a traceback instead of an answer.
    """
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free fd: this one
    if 0 in closed and command == "serve":
        raise SystemExit(
            "vibevoice-rpc: stdin is closed; the server reads JSON-RPC requests from stdin "
            "(start it with stdin connected to a pipe)"
        )
    if 1 in closed:
        raise SystemExit("vibevoice-rpc: stdout is closed; the answers are written there")
    if 0 in closed:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as we do


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vibevoice-rpc",
        description="Speaker-diarized transcription with VibeVoice-ASR over stdio JSON-RPC 2.0.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"vibevoice-rpc {__version__} (protocol {PROTOCOL_VERSION})",
    )
    _add_model_options(parser)
    _add_serve_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the JSON-RPC server (the default)")
    _add_model_options(serve, sub=True)
    _add_serve_options(serve, sub=True)
    t = sub.add_parser(
        "transcribe",
        help="transcribe one file and print the result",
        formatter_class=_DefaultsFormatter,
    )
    t.add_argument("file", help="the audio file (any format the server reads)")
    t.add_argument(
        "--format", choices=("json", "srt", "vtt", "txt"), default="txt", help="output format"
    )
    t.add_argument("--language", default="auto", help="language code for the metadata, or auto")
    t.add_argument("--hotwords", nargs="*", default=[], help="names and terms to recognise")
    t.add_argument("--context", help="free text about the recording (one line per item)")
    t.add_argument("--max-new-tokens", type=int, help="cap on generated tokens (default: scaled)")
    t.add_argument(
        "--no-vad",
        action="store_true",
        help="feed the model the whole file (no voice activity detection)",
    )
    t.add_argument("-o", "--output", help="write the result here instead of stdout")
    _add_model_options(t, sub=True)
    s = sub.add_parser("selftest", help="run the whole pipeline once and report each stage")
    _add_model_options(s, sub=True)
    d = sub.add_parser("download", help="download the model (resumable), print its folder")
    d.add_argument("--model-id", help="hub id (default microsoft/VibeVoice-ASR-HF)")
    d.add_argument("--revision", help="branch, tag or commit (default main)")
    d.add_argument("--dir", help="target folder (default VIBEVOICE_MODEL_PATH or HF_HOME/...)")
    d.add_argument("--log-level", help=flag_help("VIBEVOICE_LOG_LEVEL"), default=argparse.SUPPRESS)
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = Config.from_env()
    if getattr(args, "precision", None):
        config.precision = args.precision
    if getattr(args, "model_path", None):
        config.model_path = args.model_path
    if getattr(args, "device", None):
        config.device = args.device
    if getattr(args, "log_level", None):
        config.log_level = args.log_level.upper()
    if getattr(args, "preload", False):
        config.preload = True
    return config


def main(argv: list[str] | None = None, *, runtime: LocalRuntime | None = None) -> int:
    """Run the command ``argv`` asks for. ``runtime`` loads and runs the local model (the default
    :class:`~vibevoice_rpc.model.backend.LocalRuntime` when None; tests pass a scripted one)."""
    args = build_parser().parse_args(argv)
    _check_std_fds(args.command or "serve")
    config = _config(args)
    # Claim stdout before anything heavy is imported: library noise must never reach the channel.
    from .protocol.transport import claim_stdout

    proto_fd = claim_stdout()
    command = args.command or "serve"
    if command != "serve" and sys.stderr is not None and sys.stderr.isatty():
        # The progress bar and log records share the terminal's last line: a record blanks the
        # bar, is written on its own line, and the bar is drawn again below it.
        from .logsink import ConsoleStream

        sys.stderr = sys.stdout = ConsoleStream(sys.stderr)
    setup_logging(config.log_level, nonblocking=command == "serve")
    warn_unknown_env(os.environ)  # VIBEVOICE_PRECISON=int8 was silently ignored
    if command == "serve":
        # Everything the read loop needs is imported before `ready` (~20 ms): imported after it,
        # a first `health` sent on `ready` waited for these imports and then for the warm-up
        # threads. torch is imported later, on the engine's warm-up thread.
        from .engine import Engine
        from .protocol.server import serve

        parent = getattr(args, "parent_pid", None)
        config.parent_pid = os.getppid() if parent is None else (parent or None)
        return serve(config, proto_fd, Engine(config, runtime=runtime))
    if command == "transcribe":
        from .commands import run_transcribe

        return run_transcribe(config, args, proto_fd, runtime=runtime)
    if command == "download":
        from .commands import run_download

        return run_download(config, args, proto_fd)
    if command == "selftest":
        from .commands import run_selftest

        return run_selftest(config, proto_fd, runtime=runtime)
    print(f"unknown command {command!r}", file=sys.stderr)  # pragma: no cover
    return 2
