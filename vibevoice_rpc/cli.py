"""Command line: no arguments runs the server; ``transcribe`` and ``selftest`` are for humans."""

from __future__ import annotations

import argparse
import os
import sys

from . import PROTOCOL_VERSION, __version__
from .config import Config, setup_logging
from .messages import PRECISIONS

__all__ = ["main", "build_parser"]

_EPILOG = """\
talking to the server by hand (one JSON-RPC 2.0 message per line on stdin, answers on stdout):
  $ vibevoice-rpc
  {"jsonrpc":"2.0","id":1,"method":"health"}
  {"jsonrpc":"2.0","id":2,"method":"transcribe","params":{"audio_path":"meeting.opus"}}
  {"jsonrpc":"2.0","id":3,"method":"shutdown"}
logs go to stderr; stdout carries protocol messages only. See docs/PROTOCOL.md.

environment: VIBEVOICE_PRECISION, VIBEVOICE_MODEL_PATH, VIBEVOICE_DEVICE, VIBEVOICE_PRELOAD,
VIBEVOICE_OFFLINE, VIBEVOICE_LOG_LEVEL, VIBEVOICE_FFMPEG, VIBEVOICE_MAX_AUDIO_SECONDS,
VIBEVOICE_MAX_WINDOW_SECONDS, VIBEVOICE_MAX_QUEUE, VIBEVOICE_ALLOW_CPU_OFFLOAD.
"""


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, help="model precision (VIBEVOICE_PRECISION)")
    p.add_argument("--model-path", help="checkpoint dir or cache dir (VIBEVOICE_MODEL_PATH)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), help="VIBEVOICE_DEVICE")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (VIBEVOICE_LOG_LEVEL)")


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
    parser.add_argument("--preload", action="store_true", help="load the model right after ready")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process dies (default: the parent at start; 0 disables)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the JSON-RPC server (the default)")
    t = sub.add_parser("transcribe", help="transcribe one file and print the result")
    t.add_argument("file")
    t.add_argument("--format", choices=("json", "srt", "vtt", "txt"), default="txt")
    t.add_argument("--language", default="auto")
    t.add_argument("--hotwords", nargs="*", default=[])
    t.add_argument("--context")
    t.add_argument("--max-new-tokens", type=int)
    t.add_argument("-o", "--output", help="write the result here instead of stdout")
    _add_model_options(t)
    s = sub.add_parser("selftest", help="run the whole pipeline once and report each stage")
    _add_model_options(s)
    d = sub.add_parser("download", help="download the model (resumable), print its folder")
    d.add_argument("--model-id", help="hub id (default microsoft/VibeVoice-ASR-HF)")
    d.add_argument("--revision", help="branch, tag or commit (default main)")
    d.add_argument("--dir", help="target folder (default VIBEVOICE_MODEL_PATH or HF_HOME/...)")
    d.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (VIBEVOICE_LOG_LEVEL)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _config(args)
    # Claim stdout before anything heavy is imported: library noise must never reach the channel.
    from .transport import claim_stdout

    proto_fd = claim_stdout()
    setup_logging(config.log_level)
    command = args.command or "serve"
    if command == "serve":
        from .server import serve

        if args.parent_pid is None:
            config.parent_pid = os.getppid()
        else:
            config.parent_pid = args.parent_pid or None
        return serve(config, proto_fd)
    if command == "transcribe":
        from .humans import run_transcribe

        return run_transcribe(config, args, proto_fd)
    if command == "download":
        from .download import run_cli

        return run_cli(config, args, proto_fd)
    if command == "selftest":
        from .humans import run_selftest

        return run_selftest(config, proto_fd)
    print(f"unknown command {command!r}", file=sys.stderr)  # pragma: no cover
    return 2
