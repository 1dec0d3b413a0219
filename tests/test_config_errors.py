"""Bad configuration is a specific, one-line error — at start-up for the environment and flags, in
the error of the request for a model path — never a traceback, a wrong message or a server that
refuses every job (issue #14.6). Process-level: the real program, spawned like the app does."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from vibevoice_rpc.config import Config

from .rpc_client import REPO, RpcProcess, server_env

pytestmark = pytest.mark.timeout(120)

SERVER = [sys.executable, "-m", "vibevoice_rpc"]


def _start(
    args: list[str] | None = None, env: dict[str, str] | None = None, shell_redirect: str = ""
) -> subprocess.CompletedProcess[bytes]:
    cmd = SERVER + (args or [])
    if shell_redirect:  # e.g. "<&-": start it the way a careless launcher would
        cmd = ["sh", "-c", 'exec "$@" ' + shell_redirect, "sh", *cmd]
    return subprocess.run(
        cmd,
        input=b"",
        capture_output=True,
        env=env or server_env(),
        cwd=str(REPO),
        timeout=60,
    )


def _assert_refused(out: subprocess.CompletedProcess[bytes], code: int, *words: str) -> str:
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == code, (out.returncode, err)
    assert out.stdout == b"", out.stdout[:300]  # refused before `ready`: nothing on the channel
    assert "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.mark.parametrize(
    "name, value",
    [
        ("VIBEVOICE_MAX_QUEUE", "inf"),
        ("VIBEVOICE_MAX_QUEUE", "nan"),
        ("VIBEVOICE_MAX_QUEUE", "0.5"),  # was accepted as 0: then every job was "busy"
        ("VIBEVOICE_MAX_QUEUE", "0"),
        ("VIBEVOICE_MAX_QUEUE", "-3"),
        ("VIBEVOICE_MAX_AUDIO_SECONDS", "nan"),  # was accepted: every transcribe -32603
        ("VIBEVOICE_MAX_AUDIO_SECONDS", "inf"),
        ("VIBEVOICE_MAX_WINDOW_SECONDS", "nan"),
        ("VIBEVOICE_MAX_WINDOW_SECONDS", "1e-6"),
        ("VIBEVOICE_MAX_WINDOW_SECONDS", "-inf"),
        ("VIBEVOICE_AUDIO_THREADS", "0"),  # were ignored (the default used instead) by audio.py
        ("VIBEVOICE_AUDIO_THREADS", "-2"),
        ("VIBEVOICE_AUDIO_THREADS", "two"),
        ("VIBEVOICE_AUDIO_THREADS", "1.5"),
    ],
)
def test_bad_limits_stop_the_server_before_ready_with_one_line(name, value):
    err = _assert_refused(_start(env=server_env(**{name: value})), 1, name, repr(value))
    assert len(err.strip().splitlines()) == 1, err


def test_good_limits_are_taken_as_given():
    env = {
        "VIBEVOICE_MAX_QUEUE": " 3 ",
        "VIBEVOICE_MAX_AUDIO_SECONDS": "1e9",
        "VIBEVOICE_MAX_WINDOW_SECONDS": "10",
    }
    config = Config.from_env(env)
    assert config.max_queue == 3
    assert config.max_audio_seconds == 1e9 and config.max_window_seconds == 10.0
    assert Config.from_env({}).max_queue == 16


def test_an_ffmpeg_setting_that_names_no_ffmpeg_is_a_warning_not_a_stop(tmp_path, caplog):
    """ffmpeg is only PyAV's fallback: a bundled one quarantined by antivirus must not keep the
    engine from starting. The value is kept (find_ffmpeg warns again and looks elsewhere)."""
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\n")  # not executable
    for value in (str(tmp_path), str(script)):  # a folder without one; a file we may not run
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vibevoice_rpc.config"):
            assert Config.from_env({"VIBEVOICE_FFMPEG": value}).ffmpeg == value
        assert f"VIBEVOICE_FFMPEG={value!r} is neither an ffmpeg executable" in caplog.text
    out = _start(env=server_env(VIBEVOICE_FFMPEG="/no/such/ffmpeg"))  # stdin at EOF: ready, exit
    assert out.returncode == 0, out.stderr
    assert b'"method":"ready"' in out.stdout.splitlines()[0]
    assert "VIBEVOICE_FFMPEG='/no/such/ffmpeg' is neither" in out.stderr.decode()


def test_good_audio_settings_are_taken_as_given(tmp_path):
    exe = tmp_path / "tools" / ("ffmpeg.exe" if os.name == "nt" else "ffmpeg")
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    config = Config.from_env({"VIBEVOICE_AUDIO_THREADS": " 1 ", "VIBEVOICE_FFMPEG": str(exe)})
    assert (config.audio_threads, config.ffmpeg) == (1, str(exe))
    assert Config.from_env({"VIBEVOICE_FFMPEG": str(exe.parent)}).ffmpeg == str(exe)  # a folder
    defaults = Config.from_env({"VIBEVOICE_AUDIO_THREADS": "", "VIBEVOICE_FFMPEG": " "})
    assert (defaults.audio_threads, defaults.ffmpeg) == (None, None)  # the decoder's own defaults


@pytest.mark.parametrize("pid", ["-5", "-1", "abc", str(2**32)])
def test_a_parent_pid_that_is_no_pid_is_refused(pid):
    # -5 used to be taken as "process group 5": that does not exist, so the server exited at once.
    _assert_refused(_start(["--parent-pid", pid]), 2, "--parent-pid", "not a process id")


def test_parent_pid_zero_disables_the_watchdog():
    with RpcProcess(args=["--parent-pid", "0"]) as p:
        assert p.call("health", timeout=30)["result"]["status"] == "ok"


def test_stdin_closed_at_start_is_a_clear_error():
    _assert_refused(_start(shell_redirect="<&-"), 1, "stdin is closed")


def test_stdout_closed_at_start_is_a_clear_error():
    out = _start(shell_redirect=">&-")
    assert out.returncode == 1 and b"stdout is closed" in out.stderr, out.stderr
    assert b"Traceback" not in out.stderr


def test_stderr_closed_at_start_still_serves():
    proc = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", *SERVER],
        input=b'{"jsonrpc":"2.0","id":1,"method":"health"}\n',
        stdout=subprocess.PIPE,
        env=server_env(),
        cwd=str(REPO),
        timeout=60,
    )
    assert proc.returncode == 0
    assert b'"id":1,"result":{"status":"ok"' in proc.stdout


def test_a_model_path_that_is_a_file_says_so(tmp_path):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    config.write_text("{}")
    env = server_env(VIBEVOICE_MODEL_PATH=str(config))
    with RpcProcess(env=env) as p:
        for params in ({"precision": "fp32"}, {"precision": "fp32", "model_path": str(config)}):
            err = p.call("reload_model", params, timeout=60)["error"]
            assert err["code"] == -32004 and err["data"]["kind"] == "model_not_found", err
            assert "is a file, not a directory" in err["message"], err
            assert "does not exist" not in err["message"]
            assert f"its folder is {config.parent}" in err["message"], err


def _drop_root_file_access() -> list[str]:
    """A prefix that runs a command without root's right to read any file (tests run as root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


@pytest.mark.model
def test_unreadable_weights_say_permission_denied(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.chmod(0)
    env = server_env(VIBEVOICE_MODEL_PATH=str(model), VIBEVOICE_PRECISION="fp32")
    with RpcProcess(cmd=_drop_root_file_access() + SERVER, env=env) as p:
        err = p.call("reload_model", {"precision": "fp32"}, timeout=90)["error"]
        assert err["code"] == -32004 and err["data"]["kind"] == "model_load_failed", err
        assert f"{weights} cannot be read: Permission denied" in err["message"], err
        assert "FileNotFoundError" not in err["message"]
        assert err["data"]["path"] == str(weights)
        weights.chmod(0o644)  # fixed on disk: the next reload works
        assert p.call("reload_model", {"precision": "fp32"}, timeout=90)["result"]["status"] == (
            "success"
        )
