"""Commands for people at a terminal: ``transcribe FILE``, ``selftest`` and ``download``.

They run the same engine (and the same download) as the server, in process. Output meant for the user goes to the protocol fd
(the real stdout); progress bars and logs go to stderr.
"""

from __future__ import annotations

import argparse
import codecs
import json
import locale
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from .config import Config
from .errors import ModelUnavailable, RpcError
from .formats import render
from .job import Job
from .messages import ProgressParams, SegmentParams, TranscribeParams, TranscribeResult
from .winapi import IS_WINDOWS, kernel32

if TYPE_CHECKING:
    from .model.backend import LocalRuntime

__all__ = ["run_transcribe", "run_selftest", "sample_audio_path"]

log = logging.getLogger(__name__)


def sample_audio_path() -> Path:
    """The bundled two-speaker speech clip (espeak-ng, 11.5 s, 16 kHz Opus like the app's recordings)."""
    return Path(str(resources.files("vibevoice_rpc") / "data" / "two_speakers.opus"))


class _Bar:
    r"""A one-line progress display on stderr.

    Redrawn with a bare ``\r`` and space padding, no ANSI escapes: a legacy Windows console shows
    ``\x1b[K`` as ``←[K``. Never wider than the console, so ``\r`` returns to the line's start.
    """

    FIXED = 54  # stage, bar and percentage; the message gets the rest of the line

    def __init__(
        self,
        enabled: bool = True,
        stream: TextIO | None = None,
        columns: int | None = None,
        *,
        every: float | None = None,
    ) -> None:
        """``every``: without a terminal, also write a line every that many seconds (a long
        download), not only when the stage changes."""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.columns = columns or shutil.get_terminal_size((80, 24)).columns
        self.stage = ""
        self.every = every
        self._last = 0.0
        self._shown = 0  # characters of the bar line now on screen

    def _redraw(self, text: str, end: str = "") -> None:
        pad = " " * max(0, self._shown - len(text))
        self.stream.write("\r" + text + pad + end)
        self._shown = 0 if end else len(text)
        self.stream.flush()

    def __call__(self, method: str, params: Any) -> None:
        if isinstance(params, ProgressParams):
            if self.enabled:
                width = 30
                filled = int(params.progress * width)
                room = max(0, self.columns - 1 - self.FIXED)
                line = (
                    f"{params.stage:<14} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{params.progress:5.0%} {params.message[:room]}"
                )
                self._redraw(line[: self.columns - 1].rstrip())
            elif params.stage != self.stage or self._due(params.progress):
                self.stream.write(f"{params.stage}: {params.message}\n")
                self._last = time.monotonic()
            self.stage = params.stage
        elif isinstance(params, SegmentParams) and self.enabled:
            seg = params.segment
            self._redraw(
                f"{seg.speaker} [{seg.start_time:.1f}-{seg.end_time:.1f}] {seg.text}", "\n"
            )

    def _due(self, progress: float) -> bool:
        if self.every is None:
            return False
        return progress >= 1.0 or time.monotonic() - self._last >= self.every

    def done(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self._shown = 0


def console_encoding(*, windows: bool | None = None, k32: Any = None) -> str:
    """The encoding a console shows text in: its output code page on Windows, else the locale's."""
    if IS_WINDOWS if windows is None else windows:
        lib = k32 if k32 is not None else kernel32()
        name = f"cp{lib.GetConsoleOutputCP()}"
    else:
        name = locale.getpreferredencoding(False)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _write_text(
    fd: int, text: str, *, isatty: Callable[[int], bool] = os.isatty, encoding: str | None = None
) -> None:
    """Write ``text`` to ``fd``: UTF-8 bytes to a file or pipe; to a console, text in the console's
    encoding (unencodable characters become ``?``). On Windows ``open()`` of a console fd gives
    CPython's console writer (``WriteConsoleW``), which shows every character."""
    if isatty(fd):
        with open(
            fd, "w", encoding=encoding or console_encoding(), errors="replace", closefd=False
        ) as out:
            out.write(text)
        return
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


def _write_out(text: str, output: str | None, proto_fd: int) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {output}\n")
        return
    _write_text(proto_fd, text)


def _fail(err: RpcError) -> int:
    sys.stderr.write(f"error [{err.code} {err.kind}]: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    return 1


def run_transcribe(
    config: Config, args: argparse.Namespace, proto_fd: int, *, runtime: LocalRuntime | None = None
) -> int:
    """``vibevoice-rpc transcribe FILE``: one job, a progress bar on stderr, the result on stdout."""
    from .engine import Engine

    engine = Engine(config, runtime=runtime)
    engine.warm_up()
    try:
        params = TranscribeParams(
            audio_path=args.file,
            precision=args.precision,
            language=args.language,
            hotwords=list(args.hotwords or []),
            context=args.context,
            max_new_tokens=args.max_new_tokens,
            vad=False if args.no_vad else None,
        )
    except (msgspec.ValidationError, TypeError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    bar = _Bar()
    job = Job("cli", "transcribe", params, None, bar)
    try:
        result = engine.transcribe(params, job)
    except RpcError as err:
        bar.done()
        return _fail(err)
    except KeyboardInterrupt:
        bar.done()
        sys.stderr.write("interrupted\n")
        return 130
    bar.done()
    _write_out(render(result, args.format), args.output, proto_fd)
    meta = result.metadata
    sys.stderr.write(
        f"{len(result.segments)} segments, {meta.num_speakers} speakers, {meta.duration:.1f} s audio "
        f"in {meta.processing_time:.1f} s ({meta.model_precision} on {meta.device})\n"
    )
    for warning in meta.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    return 0


_REAL_FORMAT_SAMPLE = (
    'assistant\n[{"Start":0,"End":2.5,"Speaker":0,"Content":"Grüß Gott."},'
    '{"Start":2.5,"End":4.0,"Speaker":1,"Content":"Hello."}]'
)


def run_selftest(config: Config, proto_fd: int, *, runtime: LocalRuntime | None = None) -> int:
    """Run audio decode → model → parse → schema once, printing each stage and what it proves."""
    from .audio.decode import load_audio
    from .engine import Engine
    from .transcription.parser import parse_transcript

    out: list[str] = []

    def say(line: str) -> None:
        out.append(line)
        _write_out(line + "\n", None, proto_fd)

    def stage(name: str, t0: float, proves: str) -> None:
        say(f"[ok] {name:<16} {time.monotonic() - t0:6.2f} s  {proves}")

    say("vibevoice-rpc selftest")
    clip = sample_audio_path()
    t0 = time.monotonic()
    audio = load_audio(
        clip,
        max_seconds=config.max_audio_seconds,
        threads=config.audio_threads,
        ffmpeg=config.ffmpeg,
    )
    stage(
        "audio decode",
        t0,
        f"{clip}: Opus 16 kHz → {audio.duration:.2f} s of 24 kHz mono float32",
    )

    t0 = time.monotonic()
    from .checkpoint.source import is_tiny, resolve_model_dir
    from .model.tiny import ensure_tiny_model

    answering = "the tiny model (same architecture, trained offline to give one fixed answer)"
    try:
        if is_tiny(config.model_path):
            model_dir, built = ensure_tiny_model(answer=True)
            found = f"VIBEVOICE_MODEL_PATH=tiny: {'built' if built else 'reused'} {answering}"
        else:
            model_dir = resolve_model_dir(config.model_path, offline=True)
            found = _FOUND[_tiny_kind(model_dir)]  # a tiny model someone built earlier?
    except ModelUnavailable as err:
        model_dir, built = ensure_tiny_model(answer=True)
        why = err.message.split(":")[0]
        found = f"no real model ({why}); {'built' if built else 'reused'} {answering}"
    stage("model found", t0, f"{found} at {model_dir}")
    kind = _tiny_kind(model_dir)
    config.model_path = str(model_dir)
    if kind is not None:
        config.precision = "fp32"
    engine = Engine(config, runtime=runtime)
    engine.warm_up()
    # The random tiny model loops until its budget; the answering one stops at its eos.
    params = TranscribeParams(audio_path=str(clip), max_new_tokens=48 if kind == "random" else None)
    events: list[str] = []
    job = Job("selftest", "transcribe", params, None, lambda m, p: events.append(m))
    t0 = time.monotonic()
    try:
        result = engine.transcribe(params, job)
    except RpcError as err:
        say(f"[FAIL] transcribe: {err.message}")
        return _fail(err)
    meta = result.metadata
    stage(
        "model + generate",
        t0,
        f"from_pretrained → processor → generate(sample=False) on {meta.device} in "
        f"{meta.model_precision}: {meta.generated_tokens} tokens, {events.count('progress')} progress "
        f"notifications",
    )
    if kind == "random":
        say(
            "       note: the tiny model has random weights — its words are noise, not a transcript"
        )
    elif kind == "answer":
        say("       note: the tiny model gives these two segments for any audio — not a transcript")
    for seg in result.segments[:5]:
        say(f"       {seg.speaker} [{seg.start_time:.2f}-{seg.end_time:.2f}] {seg.text}")

    t0 = time.monotonic()
    parsed = parse_transcript(_REAL_FORMAT_SAMPLE, 4.0)
    ok = [s.speaker for s in parsed.segments] == ["Speaker_0", "Speaker_1"]
    stage(
        "parse", t0, f"real-format model output → {len(parsed.segments)} segments (Speaker_0 kept)"
    )
    if not ok:
        say("[FAIL] parse: the parser did not return the expected segments")
        return 1

    t0 = time.monotonic()
    wire = msgspec.json.encode(result)
    back = msgspec.json.decode(wire, type=TranscribeResult, strict=True)
    fields = {"duration", "language", "processing_time", "model_precision", "num_speakers"}
    missing = fields - set(msgspec.structs.asdict(back.metadata))
    if back.status != "success" or missing:
        say(f"[FAIL] schema: missing {sorted(missing)}")
        return 1
    stage("schema", t0, f"result matches the app's schema ({len(wire)} bytes of JSON)")
    say("selftest passed" + _PASSED[kind])
    return 0


_FOUND = {
    None: "configured model",
    "random": "the tiny random-weight model",
    "answer": "the tiny model with a fixed answer",
}
_PASSED = {
    None: "",
    "random": " (tiny model: pipeline verified, transcript is noise)",
    "answer": " (tiny model: pipeline verified; its fixed answer is not a transcript)",
}


def _tiny_kind(model_dir: Path) -> str | None:
    """``"answer"`` or ``"random"`` for a tiny model (:mod:`vibevoice_rpc.model.tiny`), else None."""
    try:
        stamp = json.loads((model_dir / "tiny_model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "answer" if isinstance(stamp, dict) and stamp.get("answer") else "random"


def run_download(config: Config, args: argparse.Namespace, proto_fd: int) -> int:
    """``vibevoice-rpc download [--model-id ID] [--revision REV] [--dir DIR]``: the checkpoint's
    path on stdout, progress on stderr; Ctrl-C stops and keeps what was fetched."""
    from .checkpoint.fetch import download_model
    from .checkpoint.hub import quiet_hub
    from .messages import DownloadParams

    quiet_hub()
    params = DownloadParams(model_id=args.model_id, revision=args.revision, target_dir=args.dir)
    bar = _Bar(every=2.0)
    job = Job("cli", "download_model", params, None, bar)
    try:
        result = download_model(
            params, job, configured_path=config.model_path, offline=config.offline
        )
    except KeyboardInterrupt:
        bar.done()
        sys.stderr.write("interrupted: run the same command again to resume\n")
        return 130
    except RpcError as err:
        bar.done()
        return _fail(err)
    bar.done()
    sys.stderr.write(f"{result.message}; set VIBEVOICE_MODEL_PATH={result.path} to use it\n")
    _write_text(proto_fd, result.path + "\n")
    return 0
