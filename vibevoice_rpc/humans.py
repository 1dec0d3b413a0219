"""Commands for people at a terminal: ``transcribe FILE`` and ``selftest``.

Both run the same engine as the server, in process. Output meant for the user goes to the protocol fd
(the real stdout); progress bars and logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from .config import Config
from .dispatcher import Job
from .errors import ModelUnavailable, RpcError
from .formats import render
from .messages import ProgressParams, SegmentParams, TranscribeParams, TranscribeResult

__all__ = ["run_transcribe", "run_selftest", "sample_audio_path"]

log = logging.getLogger(__name__)


def sample_audio_path() -> Path:
    """The bundled two-speaker speech clip (espeak-ng, 11.5 s, 16 kHz Opus like the app's recordings)."""
    return Path(str(resources.files("vibevoice_rpc") / "data" / "two_speakers.opus"))


class _Bar:
    """A one-line progress display on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.stage = ""

    def __call__(self, method: str, params: Any) -> None:
        if isinstance(params, ProgressParams):
            width = 30
            filled = int(params.progress * width)
            line = f"\r{params.stage:<14} [{'#' * filled}{'.' * (width - filled)}] {params.progress:5.0%} {params.message[:40]:<40}"
            if self.enabled:
                sys.stderr.write(line)
                sys.stderr.flush()
            elif params.stage != self.stage:
                sys.stderr.write(f"{params.stage}: {params.message}\n")
            self.stage = params.stage
        elif isinstance(params, SegmentParams) and self.enabled:
            seg = params.segment
            sys.stderr.write(
                f"\r\x1b[K{seg.speaker} [{seg.start_time:.1f}-{seg.end_time:.1f}] {seg.text}\n"
            )

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _write_out(text: str, output: str | None, proto_fd: int) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {output}\n")
        return
    data = text.encode("utf-8")
    while data:
        data = data[os.write(proto_fd, data) :]


def _fail(err: RpcError) -> int:
    sys.stderr.write(f"error [{err.code} {err.kind}]: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    return 1


def run_transcribe(config: Config, args: argparse.Namespace, proto_fd: int) -> int:
    """``vibevoice-rpc transcribe FILE``: one job, a progress bar on stderr, the result on stdout."""
    from .engine import Engine

    engine = Engine(config)
    engine.warm_up()
    try:
        params = TranscribeParams(
            audio_path=args.file,
            precision=args.precision,
            language=args.language,
            hotwords=list(args.hotwords or []),
            context=args.context,
            max_new_tokens=args.max_new_tokens,
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


def run_selftest(config: Config, proto_fd: int) -> int:
    """Run audio decode → model → parse → schema once, printing each stage and what it proves."""
    from .audio import load_audio
    from .engine import Engine
    from .transcript import parse_transcript

    out: list[str] = []

    def say(line: str) -> None:
        out.append(line)
        _write_out(line + "\n", None, proto_fd)

    def stage(name: str, t0: float, proves: str) -> None:
        say(f"[ok] {name:<14} {time.monotonic() - t0:6.2f} s  {proves}")

    say("vibevoice-rpc selftest")
    clip = sample_audio_path()
    t0 = time.monotonic()
    audio = load_audio(clip)
    stage(
        "audio decode",
        t0,
        f"{clip.name}: Opus 16 kHz → {audio.duration:.2f} s of 24 kHz mono float32",
    )

    t0 = time.monotonic()
    tiny = False
    from .model_source import resolve_model_dir

    try:
        model_dir = resolve_model_dir(config.model_path, offline=True)
        tiny = (model_dir / "tiny_model.json").is_file()  # a tiny model someone built earlier
        what = "the tiny random-weight model" if tiny else "configured model"
        stage("model found", t0, f"{what} at {model_dir}")
    except ModelUnavailable as err:
        from .tiny import tiny_model_dir

        model_dir = tiny_model_dir()
        tiny = True
        stage(
            "model found",
            t0,
            f"no real model ({err.message.split(':')[0]}); built the tiny random-weight model "
            f"of the same architecture at {model_dir}",
        )
    config.model_path = str(model_dir)
    if tiny:
        config.precision = "fp32"
    engine = Engine(config)
    engine.warm_up()
    params = TranscribeParams(audio_path=str(clip), max_new_tokens=48 if tiny else None)
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
    if tiny:
        say(
            "       note: the tiny model has random weights — its words are noise, not a transcript"
        )
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
    say(
        "selftest passed"
        + (" (tiny model: pipeline verified, transcript is noise)" if tiny else "")
    )
    return 0
