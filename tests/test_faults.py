"""Fault tests at the process level: signals, a killed server, EOF, injected OOM, broken models and
files that vanish. Each test runs the real program (``python -m vibevoice_rpc``, or a test wrapper of
it from ``tests/``) over pipes, has a timeout and kills its server on the way out.

Temp files: the only one the server itself creates is the capture of ffmpeg's stderr
(``tempfile.TemporaryFile()`` in ``vibevoice_rpc.audio.ffmpeg.decode_ffmpeg``, held open while ffmpeg runs;
M4A decodes in process with PyAV, so the decode case hides PyAV to make the ffmpeg program run).
On Linux it is opened with ``O_TMPFILE`` — an inode in ``$TMPDIR`` that never has a name — so not even
SIGKILL can leave it behind; elsewhere on POSIX it is created and unlinked at once, and on Windows it
is delete-on-close (the OS removes it when the process dies). The SIGKILL test checks that ``$TMPDIR``
stays empty during decode and after the kill, so a future named temp file (e.g. a decoded WAV) that
outlives a crash fails it. The one entry that does appear is not the server's and not a temp file:
``import transformers`` imports ``torch._dynamo``, whose module import creates torch's (empty, reused)
compile cache directory ``$TMPDIR/torchinductor_<user>`` — on every run, killed or not. (The
``selftest`` command, not the server, also uses ``$TMPDIR``: it builds the tiny model in a
``mkdtemp`` folder and renames it into a cache folder there.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .drain import read_to_eof, wait_for_stderr
from .rpc_client import RpcProcess, kill_pid, process_alive, server_env

SCRIPTED = [sys.executable, "-m", "tests.scripted_server"]
# A precision lower than each one (for the OOM hint).
LOWER_THAN = {
    "fp32": ("bf16", "fp16", "int8", "nf4"),
    "bf16": ("int8", "nf4"),
    "fp16": ("int8", "nf4"),
    "int8": ("nf4",),
}


def _env(model: Path, **extra: str) -> dict[str, str]:
    # One intra-op thread: the model is tiny, and a second thread only spin-waits against the
    # other processes on this 2-core machine (costs seconds per generate()).
    base = {
        "VIBEVOICE_MODEL_PATH": str(model),
        "VIBEVOICE_PRECISION": "fp32",
        "OMP_NUM_THREADS": "1",
    }
    base.update(extra)
    return server_env(**base)


def _progress(m: Any, id_: Any, stage: str | None = None) -> bool:
    return (
        isinstance(m, dict)
        and m.get("method") == "progress"
        and m["params"].get("id") == id_
        and (stage is None or m["params"]["stage"] == stage)
    )


def _wait_stage(p: RpcProcess, id_: Any, stage: str, timeout: float = 90) -> None:
    p.wait_for(lambda m: _progress(m, id_, stage), timeout=timeout)


def _check_wire(p: RpcProcess) -> None:
    for line in p.raw:
        assert line.endswith(b"\n") and b"\r" not in line, line[:200]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def _leftovers(tmpdir: Path) -> list[str]:
    """Everything in ``tmpdir`` except torch's empty compile-cache directory (see the docstring)."""
    out = []
    for entry in sorted(tmpdir.iterdir()):
        if entry.name.startswith("torchinductor_") and entry.is_dir() and not entry.is_symlink():
            out += [str(f) for f in entry.rglob("*") if not f.is_dir()]
        else:
            out.append(str(entry))
    return out


def _bytes_written(pid: int) -> int:
    """What ``pid`` has written so far (``wchar`` of /proc/<pid>/io), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


# --- stop paths while a job runs --------------------------------------------------------------


def _start_streaming_job(p: RpcProcess, clip: Path) -> tuple[str, str]:
    """A running transcribe (scripted answer, slowed down) that has streamed its first segment,
    and a second one queued behind it."""
    running = p.request("transcribe", {"audio_path": str(clip), "max_new_tokens": 2000})
    queued = p.request("transcribe", {"audio_path": str(clip), "max_new_tokens": 4})
    p.wait_for(
        lambda m: (
            isinstance(m, dict) and m.get("method") == "segment" and m["params"]["id"] == running
        ),
        timeout=90,
    )
    assert not p.responses_for(running)
    return running, queued


def _assert_cancelled_once(
    p: RpcProcess, running: str, queued: str, reason: str, total: int
) -> None:
    read_to_eof(p)
    _check_wire(p)
    for id_ in (running, queued):
        answers = p.responses_for(id_)
        assert len(answers) == 1, (id_, answers)
        err = answers[0]["error"]
        assert err["code"] == -32800 and err["data"]["kind"] == "cancelled", err
        assert reason in err["data"]["reason"], err
        assert err["message"].startswith("Request cancelled ("), err  # not "Request shutdown"
    streamed = [s["segment"] for s in p.notifications("segment", running)]
    segments = p.responses_for(running)[0]["error"]["data"]["segments"]
    assert streamed and segments == streamed  # the segments finished so far, as streamed
    assert len(streamed) < total  # stopped mid-job, not after it


def _long_answer(tmp_path: Path) -> tuple[str, int]:
    """A scripted answer of 40 segments (~1,500 tokens: over a minute at 0.05 s a token), so a
    server that waited for the running job could not exit within the 10 s the tests allow; and
    how many segments it has."""
    from tests import scripted

    real = scripted.REAL_FORMAT_SEGMENTS
    segments = [  # the real-format segments ten times over, within the 11.5 s clip
        {**real[i % 4], "Start": round(0.28 * i, 2), "End": round(0.28 * (i + 1), 2)}
        for i in range(40)
    ]
    path = tmp_path / "long answer.txt"
    path.write_text(scripted.real_format_answer(segments), encoding="utf-8")
    return str(path), len(segments)


@pytest.mark.model
@pytest.mark.timeout(120)
def test_sigterm_mid_job_answers_the_pending_requests_and_exits_zero(
    tiny_model, speech_clip, tmp_path
):
    script, total = _long_answer(tmp_path)
    env = _env(tiny_model, VIBEVOICE_TEST_SCRIPT=script, VIBEVOICE_TEST_STEP_DELAY="0.05")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        running, queued = _start_streaming_job(p, speech_clip)
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait_exit(10) == 0  # the job still had most of a minute to go: it was cut short
        print(f"SIGTERM mid-job -> exit in {time.monotonic() - t0:.2f} s")
        _assert_cancelled_once(p, running, queued, "SIGTERM", total)


@pytest.mark.model
@pytest.mark.timeout(120)
def test_stdin_eof_mid_job_answers_once_and_exits_zero(tiny_model, speech_clip, tmp_path):
    script, total = _long_answer(tmp_path)
    env = _env(tiny_model, VIBEVOICE_TEST_SCRIPT=script, VIBEVOICE_TEST_STEP_DELAY="0.05")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        running, queued = _start_streaming_job(p, speech_clip)
        t0 = time.monotonic()
        p.close_stdin()
        assert p.wait_exit(10) == 0  # the job still had most of a minute to go: it was cut short
        print(f"stdin EOF mid-job -> exit in {time.monotonic() - t0:.2f} s")
        _assert_cancelled_once(p, running, queued, "stdin closed", total)


# --- SIGKILL leaves no temp files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def m4a_clip(tmp_path_factory: pytest.TempPathFactory, speech_clip: Path) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    out = tmp_path_factory.mktemp("m4a") / "two speakers.m4a"
    subprocess.run(
        [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(speech_clip), "-c:a", "aac"]
        + ["-b:a", "64k", str(out)],
        check=True,
        timeout=60,
    )
    return out


@pytest.mark.model
@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["decode", "generate"])
def test_sigkill_mid_job_leaves_no_temp_files(tiny_model, m4a_clip, tmp_path, when):
    tmpdir = tmp_path / "private-tmp"
    tmpdir.mkdir()
    assert tmpdir not in Path(tiny_model).resolve().parents
    extra = {"TMPDIR": str(tmpdir)}
    cmd = None
    if when == "decode":
        # The real ffmpeg, reading its input at native speed (-re): the 11.5 s clip takes 11.5 s to
        # decode, so the kill lands while the server is reading ffmpeg's output.
        wrapper = tmp_path / "bin" / "ffmpeg"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ffmpeg")} -re "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        extra["VIBEVOICE_FFMPEG"] = str(wrapper)
        # M4A decodes in process with PyAV; hide it so the ffmpeg program (its fallback) runs.
        shim = tmp_path / "no-pyav" / "av"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("raise ImportError('PyAV hidden by the test')\n")
        extra["PYTHONPATH"] = os.pathsep.join(
            [str(shim.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    else:
        cmd = SCRIPTED
        extra["VIBEVOICE_TEST_STEP_DELAY"] = "0.05"
    children: list[int] = []
    with RpcProcess(cmd=cmd, env=_env(tiny_model, **extra)) as p:
        try:
            rid = p.request("transcribe", {"audio_path": str(m4a_clip), "max_new_tokens": 2000})
            if when == "decode":
                _wait_stage(p, rid, "loading_audio", timeout=60)
                deadline = time.monotonic() + 30
                # until ffmpeg runs and has written decoded audio into the server's pipe: the kill
                # lands while the server reads it (the 11.5 s decode goes on at native speed)
                while not any(
                    "ffmpeg" in _cmdline(c) and _bytes_written(c) > 0 for c in _children(p.proc.pid)
                ):
                    assert time.monotonic() < deadline, "ffmpeg never started writing"
                    assert p.proc.poll() is None, p.stderr[-3000:]
                    time.sleep(0.01)
                assert not p.responses_for(rid)
            else:
                _wait_stage(p, rid, "transcribing", timeout=90)
            assert _leftovers(tmpdir) == []  # nothing named there even while the job runs
            held = [
                os.readlink(f"/proc/{p.proc.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{p.proc.pid}/fd")
                if os.readlink(f"/proc/{p.proc.pid}/fd/{fd}").startswith(str(tmpdir))
            ]
            print(f"temp files held open in $TMPDIR at the kill: {held}")
            children = _children(p.proc.pid)
            p.proc.kill()
            assert p.proc.wait(10) == -signal.SIGKILL
            deadline = time.monotonic() + 5
            while any(process_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.05)
            orphans = [c for c in children if process_alive(c)]
            assert not orphans, f"children outlived the killed server: {orphans}"
            assert _leftovers(tmpdir) == []
        finally:
            for c in children:
                if process_alive(c):
                    kill_pid(c)


# --- an injected CUDA OOM mid-generation ----------------------------------------------------------


@pytest.mark.model
@pytest.mark.timeout(120)
def test_oom_mid_generation_is_reported_and_the_model_stays_usable(tiny_model, speech_clip):
    env = _env(tiny_model, VIBEVOICE_TEST_OOM_AT_STEP="3")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        first = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8})
        answer = p.response(first, timeout=90)
        wait_for_stderr(p, "injecting OutOfMemoryError at step 3")
        assert p.notifications("progress", first)[-1]["stage"] == "transcribing"  # mid-generation
        err = answer["error"]
        assert err["code"] == -32005 and err["data"]["kind"] == "out_of_memory", err
        assert "CUDA out of memory" in err["message"]
        hint = err["data"]["hint"]
        assert any(lower in hint for lower in LOWER_THAN["fp32"]), hint
        h = p.call("health", timeout=30)["result"]
        assert h["model_loaded"] is True and h["state"] == "idle" and h["precision"] == "fp32", h

        second = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8})
        result = p.response(second, timeout=90)["result"]
        assert result["status"] == "success"
        assert result["metadata"]["model_precision"] == "fp32"
        assert result["metadata"]["generated_tokens"] >= 4  # past the step that failed before
        stages = [n["stage"] for n in p.notifications("progress", second)]
        assert "loading_model" not in stages  # the same model served it: nothing was reloaded
        assert p.call("health", timeout=30)["result"]["model_loaded"] is True
        assert len(p.responses_for(first)) == 1 and len(p.responses_for(second)) == 1
        _check_wire(p)


# --- a broken model directory ----------------------------------------------------------------------


def _broken_models(good: Path, root: Path) -> dict[str, Path]:
    out = {}
    for name in ("garbage", "truncated", "no_config"):
        out[name] = root / f"broken model {name}"
        shutil.copytree(good, out[name])
    weights = (good / "model.safetensors").read_bytes()
    (out["garbage"] / "model.safetensors").write_bytes(os.urandom(64 * 1024))
    (out["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (out["no_config"] / "config.json").unlink()
    return out


@pytest.mark.model
@pytest.mark.timeout(150)
def test_corrupt_model_directory_is_a_clear_error_and_a_good_reload_recovers(
    tiny_model, speech_clip, tmp_path
):
    broken = _broken_models(Path(tiny_model), tmp_path)
    unnamed: list[str] = []  # errors whose message does not say which directory is broken

    def check_error(answer: Any, path: Path, what: str) -> None:
        err = answer["error"]
        assert err["code"] == -32004, (what, err)
        assert err["data"]["kind"] in ("model_not_found", "model_load_failed"), (what, err)
        if str(path) not in err["message"]:
            unnamed.append(f"{what}: {err['message']!r}")

    clip = {"audio_path": str(speech_clip), "max_new_tokens": 4}
    env = _env(tiny_model, VIBEVOICE_MODEL_PATH=str(broken["garbage"]))
    with RpcProcess(env=env) as p:
        # The configured model is broken: the first transcribe says so, the server keeps serving.
        check_error(p.call("transcribe", clip, timeout=90), broken["garbage"], "garbage (env)")
        h = p.call("health", timeout=30)["result"]
        assert h["status"] == "ok" and h["model_loaded"] is False, h
        assert h["last_error"], h
        for name in ("truncated", "no_config"):
            params = {"precision": "fp32", "model_path": str(broken[name])}
            check_error(p.call("reload_model", params, timeout=60), broken[name], name)
            assert p.call("health", timeout=30)["result"]["model_loaded"] is False

        good = {"precision": "fp32", "model_path": str(tiny_model)}
        assert p.call("reload_model", good, timeout=60)["result"]["status"] == "success"
        h = p.call("health", timeout=30)["result"]
        assert h["model_loaded"] is True and h["last_error"] is None, h
        assert p.call("transcribe", clip, timeout=90)["result"]["status"] == "success"

        # A broken checkpoint while a good model is loaded: the error says so and the previous
        # model is back (issue #9: a failed reload must not break the server).
        params = {"precision": "fp32", "model_path": str(broken["garbage"])}
        answer = p.call("reload_model", params, timeout=60)
        check_error(answer, broken["garbage"], "garbage")
        data = answer["error"]["data"]
        assert data.get("restored_model") is True or data.get("kept_model") is True, data
        h = p.call("health", timeout=30)["result"]
        assert h["model_loaded"] is True and h["model"] == str(tiny_model), h
        assert p.call("transcribe", clip, timeout=90)["result"]["status"] == "success"
        assert p.call("reload_model", good, timeout=60)["result"]["status"] == "success"
        assert p.call("transcribe", clip, timeout=90)["result"]["status"] == "success"
        assert p.proc.poll() is None
        _check_wire(p)
    assert not unnamed, "model errors that do not name the broken directory:\n" + "\n".join(unnamed)


# --- an audio file that vanishes while queued ----------------------------------------------------


@pytest.mark.model
@pytest.mark.timeout(120)
def test_audio_file_deleted_while_queued_is_not_found(tiny_model, speech_clip, tmp_path):
    doomed = tmp_path / "Besprechung vom Montag ü.opus"
    shutil.copyfile(speech_clip, doomed)
    env = _env(tiny_model, VIBEVOICE_TEST_STEP_DELAY="0.05")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        slow = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 2000})
        _wait_stage(p, slow, "transcribing")
        victim = p.request("transcribe", {"audio_path": str(doomed), "max_new_tokens": 4})
        _wait_stage(p, victim, "queued", timeout=30)
        doomed.unlink()
        assert p.call("cancel", {"id": slow}, timeout=30)["result"] == {"cancelled": True}
        assert p.response(slow, timeout=30)["error"]["code"] == -32800
        err = p.response(victim, timeout=60)["error"]
        assert err["code"] == -32001 and err["data"]["kind"] == "not_found", err
        assert err["data"]["path"] == str(doomed) and str(doomed) in err["message"], err
        assert p.call("health", timeout=30)["result"]["status"] == "ok"
        assert len(p.responses_for(victim)) == 1 and len(p.responses_for(slow)) == 1
        _check_wire(p)


# --- a stderr pipe that nobody reads ---------------------------------------------------------------


def _flood_with_stderr_full(p: RpcProcess, not_audio: Path, n: int = 5000) -> dict[str, Any]:
    """Fill the server's unread stderr with log lines from the reader thread (a bad notification
    logs a line each) and the worker (a file that is not audio logs each decoder's failure at
    DEBUG), then check that every request was answered exactly once and that lines were dropped."""
    ids = []
    lines = []
    for i in range(n):
        lines.append(json.dumps({"jsonrpc": "2.0", "method": f"no such method {i}"}))
        if i % 10 == 0:
            ids.append(f"h{i}")
            lines.append(json.dumps({"jsonrpc": "2.0", "id": ids[-1], "method": "health"}))
        if i % 100 == 0:  # some are refused as busy: an answer too
            ids.append(f"t{i}")
            params = {"audio_path": str(not_audio)}
            lines.append(
                json.dumps(
                    {"jsonrpc": "2.0", "id": ids[-1], "method": "transcribe", "params": params}
                )
            )
    p.send_raw(("\n".join(lines) + "\n").encode())
    for id_ in ids:
        p.response(id_, timeout=120)
    # Then the worker logs with stderr certainly full: one transcribe at a time, each answered.
    for _ in range(20):
        err = p.call("transcribe", {"audio_path": str(not_audio)}, timeout=60)["error"]
        assert err["code"] == -32002, err
    h = p.call("health", timeout=30)["result"]
    assert h["log_lines_dropped"] > 0, h  # stderr really was full
    for id_ in ids:
        assert len(p.responses_for(id_)) == 1, id_
    return h


@pytest.fixture
def not_audio(tmp_path: Path) -> Path:
    path = tmp_path / "not audio.wav"
    path.write_bytes(b"this is text, not a RIFF header\n" * 100)
    return path


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", ["shutdown", "stdin EOF", "SIGTERM", "parent death"])
def test_full_stderr_pipe_blocks_neither_answers_nor_stop_paths(not_audio, stop, tiny_model):
    parent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)  # fmt: skip
    # A model is configured (never loaded: no audio decodes), so the audio's error is the answer.
    env = server_env(VIBEVOICE_LOG_LEVEL="DEBUG", VIBEVOICE_MODEL_PATH=str(tiny_model))
    args = ["--parent-pid", str(parent.pid)]
    try:
        with RpcProcess(args=args, env=env, read_stderr=False) as p:
            h = _flood_with_stderr_full(p, not_audio)
            t0 = time.monotonic()
            if stop == "shutdown":
                assert p.call("shutdown", timeout=30)["result"]["status"] == "ok"
            elif stop == "stdin EOF":
                p.close_stdin()
            elif stop == "SIGTERM":
                p.proc.send_signal(signal.SIGTERM)
            else:
                parent.kill()
                parent.wait(10)
            assert p.wait_exit(30) == 0  # a safety net: the bug was "never exits"
            took = time.monotonic() - t0
            print(f"stderr full: {h['log_lines_dropped']} log lines dropped; {stop} -> exit in "
                  f"{took:.3f} s")  # fmt: skip
            read_to_eof(p)
            _check_wire(p)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


@pytest.mark.timeout(180)
def test_dropped_log_lines_are_reported_once_stderr_drains(not_audio, tiny_model):
    env = server_env(VIBEVOICE_LOG_LEVEL="DEBUG", VIBEVOICE_MODEL_PATH=str(tiny_model))
    with RpcProcess(env=env, read_stderr=False) as p:
        dropped = _flood_with_stderr_full(p, not_audio, n=3000)["log_lines_dropped"]
        p.start_reading_stderr()
        deadline = time.monotonic() + 60
        while "log lines were dropped" not in p.stderr:  # waits on the pipe's content
            assert time.monotonic() < deadline, p.stderr[-3000:]
            time.sleep(0.05)
        assert f"({dropped} since start)" in p.stderr, p.stderr[-2000:]
        assert p.call("health", timeout=30)["result"]["log_lines_dropped"] == dropped
        assert p.call("shutdown", timeout=30)["result"]["status"] == "ok"
        assert p.wait_exit(10) == 0
        assert p._stderr_reader is not None
        p._stderr_reader.join(10)  # everything the server wrote has been read
        tail = p.stderr.splitlines()[-1]
        assert "exiting (shutdown)" in tail, tail  # once drained, logging is back to normal
