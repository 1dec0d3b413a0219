"""The command line for humans: --version, --help, transcribe FILE, selftest, and the formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vibevoice_rpc import PROTOCOL_VERSION, __version__
from vibevoice_rpc.formats import render
from vibevoice_rpc.messages import Metadata, Segment, TranscribeResult

from .rpc_client import REPO, server_env

SCRIPTED = [sys.executable, "-m", "tests.scripted_server"]


def _run(args: list[str], env: dict[str, str], cmd: list[str] | None = None, timeout: float = 120):
    base = cmd or [sys.executable, "-m", "vibevoice_rpc"]
    return subprocess.run(
        base + args, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=timeout
    )


def test_version_and_help() -> None:
    out = _run(["--version"], server_env())
    assert out.returncode == 0 and out.stdout.strip() == (
        f"vibevoice-rpc {__version__} (protocol {PROTOCOL_VERSION})"
    )
    out = _run(["--help"], server_env())
    assert out.returncode == 0
    assert '{"jsonrpc":"2.0","id":1,"method":"health"}' in out.stdout  # how to talk by hand
    for word in ("transcribe", "selftest", "VIBEVOICE_PRECISION", "VIBEVOICE_MODEL_PATH"):
        assert word in out.stdout


@pytest.mark.model
@pytest.mark.timeout(180)
def test_transcribe_a_file_to_srt(tmp_path: Path, tiny_model: Path, speech_clip: Path) -> None:
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_PRECISION="fp32",
        VIBEVOICE_TEST_SCRIPT="default",
    )
    target = tmp_path / "Besprechung Müller.srt"
    out = _run(
        ["transcribe", str(speech_clip), "--format", "srt", "-o", str(target)], env, SCRIPTED
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # the transcript went to the file
    srt = target.read_text(encoding="utf-8")
    assert srt.startswith(
        "1\n00:00:00,000 --> 00:00:02,400\n[Speaker_0] Guten Morgen, Grüß Gott! 🎙\n"
    )
    assert "4\n00:00:08,000 --> 00:00:11,200\n[Speaker_1] The budget is next.\n" in srt
    assert "4 segments, 2 speakers" in out.stderr

    out = _run(["transcribe", str(speech_clip), "--format", "json"], env, SCRIPTED)
    assert out.returncode == 0 and '"status": "success"' in out.stdout
    assert json.loads(out.stdout)["metadata"]["vad"] is True
    out = _run(["transcribe", str(speech_clip), "--format", "json", "--no-vad"], env, SCRIPTED)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metadata"]["vad"] is False


def test_transcribe_a_missing_file_says_why_and_exits_1(tmp_path: Path, tiny_model: Path) -> None:
    # With a model configured (without one, -32004 comes first, before the audio is opened).
    out = _run(
        ["transcribe", str(tmp_path / "nope.wav")], server_env(VIBEVOICE_MODEL_PATH=str(tiny_model))
    )
    assert out.returncode == 1
    assert "error [-32001 not_found]" in out.stderr and "nope.wav" in out.stderr
    assert out.stdout == ""


@pytest.mark.model
@pytest.mark.timeout(180)
def test_selftest_on_the_configured_tiny_model(tiny_model: Path) -> None:
    env = server_env(VIBEVOICE_MODEL_PATH=str(tiny_model))
    out = _run(["selftest"], env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    stages = [line for line in lines if line.startswith("[ok] ")]
    names = [line[5:21].rstrip() for line in stages]
    assert names == ["audio decode", "model found", "model + generate", "parse", "schema"]
    assert len({line.index(" s  ") for line in stages}) == 1, stages  # the columns line up
    assert "its words are noise" in out.stdout and lines[-1].startswith("selftest passed")


@pytest.mark.model
@pytest.mark.timeout(240)
def test_selftest_builds_the_tiny_model_when_no_model_is_available(tmp_path: Path) -> None:
    env = server_env(HF_HOME=str(tmp_path / "hf"), TMPDIR=str(tmp_path / "tmp"))
    env.pop("VIBEVOICE_MODEL_PATH", None)
    (tmp_path / "tmp").mkdir()
    out = _run(["selftest"], env, timeout=200)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no real model" in out.stdout and "; built the tiny model (" in out.stdout
    assert any((tmp_path / "tmp").glob("vibevoice-rpc-tiny-*/model.safetensors"))
    # It is the tiny model trained to answer: the segments are there, said to be no transcript.
    assert "Speaker_1 [5.20-11.04]" in out.stdout and "not a transcript" in out.stdout
    # Run again: the cached model is reused, and selftest says so.
    again = _run(["selftest"], env, timeout=200)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "; reused the tiny model (" in again.stdout and "built" not in again.stdout


def _result() -> TranscribeResult:
    return TranscribeResult(
        segments=[
            Segment("Speaker_0", 0.0, 1.5, "Hallo zusammen."),
            Segment("Speaker_1", 1.5, 3661.25, "Ça va?"),
        ],
        metadata=Metadata(
            duration=3700.0,
            language="de",
            processing_time=1.0,
            model_precision="fp32",
            num_speakers=2,
        ),
    )


def test_formats() -> None:
    r = _result()
    assert render(r, "txt") == (
        "[00:00:00.000 - 00:00:01.500] Speaker_0: Hallo zusammen.\n"
        "[00:00:01.500 - 01:01:01.250] Speaker_1: Ça va?\n"
    )
    assert render(r, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\n[Speaker_0] Hallo zusammen.\n\n"
        "2\n00:00:01,500 --> 01:01:01,250\n[Speaker_1] Ça va?\n"
    )
    assert render(r, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n<v Speaker_0>Hallo zusammen.\n\n"
        "00:00:01.500 --> 01:01:01.250\n<v Speaker_1>Ça va?\n"
    )
    import json

    back = json.loads(render(r, "json"))
    assert back["status"] == "success" and back["segments"][1]["end_time"] == 3661.25


def test_non_speech_segments_render_as_their_tag_without_a_speaker() -> None:
    r = TranscribeResult(
        segments=[
            Segment("Speaker_unknown", 0.0, 1.2, "[Silence]", non_speech=True),
            Segment("Speaker_0", 1.2, 2.0, "Hi.", speaker_id=0),
            Segment("Speaker_N_A", 2.0, 3.0, "[Environmental Sounds]", non_speech=True),
            Segment("Speaker_Bob", 3.0, 4.0, "Hello.", speaker_id=None),
        ],
        metadata=Metadata(
            duration=4.0, language="en", processing_time=1.0, model_precision="fp32", num_speakers=1
        ),
    )
    assert render(r, "txt") == (
        "[00:00:00.000 - 00:00:01.200] [Silence]\n"
        "[00:00:01.200 - 00:00:02.000] Speaker_0: Hi.\n"
        "[00:00:02.000 - 00:00:03.000] [Environmental Sounds]\n"
        "[00:00:03.000 - 00:00:04.000] Speaker_Bob: Hello.\n"
    )
    assert render(r, "srt").split("\n\n")[0] == "1\n00:00:00,000 --> 00:00:01,200\n[Silence]"
    assert "\n[Speaker_Bob] Hello.\n" in render(r, "srt")
    vtt = render(r, "vtt")
    assert "00:00:00.000 --> 00:00:01.200\n[Silence]\n" in vtt and "<v Speaker_unknown>" not in vtt
    assert "<v Speaker_0>Hi." in vtt


@pytest.mark.parametrize(
    "argv,precision,model_path,preload",
    [
        (["--precision", "bf16", "transcribe", "f.wav"], "bf16", None, False),
        (["transcribe", "f.wav", "--precision", "int8"], "int8", None, False),
        (["--precision", "bf16", "transcribe", "--precision", "nf4", "f.wav"], "nf4", None, False),
        (["--model-path", "/m", "selftest"], "fp16", "/m", False),
        (["serve", "--preload", "--precision", "fp32"], "fp32", None, True),
        (["--preload", "serve"], "fp16", None, True),
    ],
)
def test_options_count_before_and_after_the_command(
    argv: list[str],
    precision: str,
    model_path: str | None,
    preload: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vibevoice_rpc.cli import _config, build_parser

    for name in ("VIBEVOICE_PRECISION", "VIBEVOICE_MODEL_PATH", "VIBEVOICE_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    config = _config(build_parser().parse_args(argv))
    assert (config.precision, config.model_path, config.preload) == (precision, model_path, preload)


def test_transcribe_help_describes_each_option() -> None:
    from vibevoice_rpc.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["transcribe"]
    text = " ".join(sub.format_help().split())  # argparse wraps lines
    for words in (
        "output format (default: txt)",
        "language code for the metadata, or auto (default: auto)",
        "names and terms to recognise",
        "free text about the recording",
        "cap on generated tokens",
        "feed the model the whole file (no voice activity detection)",
        "model precision: fp16, bf16, int8, nf4, fp32, auto",
    ):
        assert words in text, words
