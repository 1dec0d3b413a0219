"""Bad configuration is a specific, one-line error — at start-up for the environment and flags, in
the error of the request for a model path — never a traceback, a wrong message or a server that
refuses every job (issue #14.6). Process-level: the real program, spawned like the app does."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


# --- one table of variables: the reading, --help, README and the typo warning (#19.9, #19.10) ---


class _Recording(dict):
    """An environment that notes every name looked up in it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.asked.add(key)
        return super().__contains__(key)


def _names_in_code(path) -> set[str]:
    """VIBEVOICE_* names a Python file uses as a string or a keyword argument (not in prose)."""
    import ast
    import re

    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
    return {n for n in names if re.fullmatch(r"VIBEVOICE_[A-Z0-9_]*[A-Z0-9]", n)}


def _names_config_reads() -> set[str]:
    """Every VIBEVOICE_* name config.py looks up: asked while reading a local and a remote
    configuration, and every such name its code holds (a branch the reading skipped)."""
    asked: set[str] = set()
    for env in ({}, {"VIBEVOICE_BACKEND": "remote", "VIBEVOICE_REMOTE_URL": "http://h:1"}):
        recording = _Recording(env)
        Config.from_env(recording)
        asked |= recording.asked
    written = _names_in_code(REPO / "vibevoice_rpc" / "config.py")
    return {n for n in asked if n.startswith("VIBEVOICE_")} | written


def test_every_variable_config_reads_has_a_row_and_every_row_is_read():
    from vibevoice_rpc.config import ENV

    read = _names_config_reads()
    missing = sorted(read - set(ENV))
    assert not missing, f"add a row to config.ENV_VARS for {missing}"
    assert set(ENV) <= read, f"rows nothing reads: {sorted(set(ENV) - read)}"


def test_each_rows_default_is_what_the_reading_gives():
    from vibevoice_rpc.config import ENV_VARS, remote_from_env

    local = Config.from_env({})
    remote = remote_from_env({"VIBEVOICE_REMOTE_URL": "http://h:1"})
    for var in ENV_VARS:
        if var.attr == "remote.url":
            continue  # no remote without it
        if var.attr.startswith("remote."):
            got = getattr(remote, var.attr.split(".", 1)[1])
        else:
            got = getattr(local, var.attr)
            assert getattr(Config(), var.attr) == var.value, var.name  # the dataclass agrees
        assert got == var.value, (var.name, got, var.value)


def test_help_lists_every_variable_with_its_default_once():
    """--help left out VIBEVOICE_AUDIO_THREADS, VIBEVOICE_BACKEND and the VIBEVOICE_REMOTE_*
    variables, and printed "(default: scaled) (default: None)"."""
    from vibevoice_rpc.config import ENV_VARS

    out = _start(["--help"])
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr
    for var in ENV_VARS:
        assert f"  {var.name}" in text, var.name
        assert f"(default: {var.default})" in text, var.name
    for name in _names_config_reads():
        assert name in text, name


def _help_texts() -> dict[str, list[str]]:
    """Each parser's options, with the help text argparse prints for them."""
    from vibevoice_rpc.cli import build_parser

    parser = build_parser()
    parsers = {"vibevoice-rpc": parser}
    parsers.update(next(a for a in parser._actions if a.dest == "command").choices)
    out = {}
    for name, p in parsers.items():
        formatter = p._get_formatter()
        out[name] = [
            formatter._expand_help(a) for a in p._actions if a.help and a.help != "==SUPPRESS=="
        ]
    return out


def test_no_default_is_said_twice_or_as_none():
    for parser, helps in _help_texts().items():
        for text in helps:
            assert text.count("default") <= 1, (parser, text)
            assert "(default: None)" not in text and "(default: [])" not in text, (parser, text)
    sub = _start(["transcribe", "--help"]).stdout.decode()
    flat = " ".join(sub.split())
    assert "cap on generated tokens (default: scaled)" in flat
    assert "(default: None)" not in flat


def _readme_config_names() -> set[str]:
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {n for row in rows for n in re.findall(r"`(VIBEVOICE_[A-Z0-9_]+)", row.split("|")[1])}


def test_the_readme_configuration_table_has_a_row_for_every_variable():
    from vibevoice_rpc.config import ENV

    assert _names_config_reads() <= _readme_config_names()
    assert _readme_config_names() <= set(ENV)  # and describes nothing that is not there


def test_every_vibevoice_name_in_the_repository_is_a_setting_or_another_programs():
    """A name the tests or the build set reaches every server they start: it must be a setting
    or under a prefix the typo warning leaves alone (config.FOREIGN_PREFIXES)."""
    import re

    from vibevoice_rpc.config import ENV, FOREIGN_PREFIXES

    code = [*REPO.glob("vibevoice_rpc/**/*.py"), *REPO.glob("tests/**/*.py")]
    code += [*REPO.glob("scripts/**/*.py"), *REPO.glob("bench/**/*.py"), REPO / "build_exe.spec"]
    code.remove(Path(__file__))  # this file's typos are on purpose
    other = [*REPO.glob(".github/**/*.yml"), *REPO.glob(".ci/*")]
    strays = {}
    for path in code + other:
        if not path.is_file():
            continue
        if path in code:
            names = _names_in_code(path)
        else:  # workflow and CI files: every name written there is exported
            text = path.read_text(encoding="utf-8", errors="replace")
            names = set(re.findall(r"\bVIBEVOICE_[A-Z0-9_]*[A-Z0-9]\b", text))
        for name in names:
            if name not in ENV and not name.startswith(FOREIGN_PREFIXES):
                strays.setdefault(name, str(path.relative_to(REPO)))
    assert not strays, strays


def test_an_unknown_variable_is_one_warning_naming_the_nearest_setting():
    """VIBEVOICE_PRECISON=int8 was silently ignored: the model ran in fp16."""
    from vibevoice_rpc.config import unknown_env_warnings

    env = {
        "VIBEVOICE_PRECISON": "int8",
        "VIBEVOICE_REMOTE_APIKEY": "sk-secret-123",
        "vibevoice_device": "cpu",
        "VIBEVOICE_ZZZ": "1",
        "VIBEVOICE_PRECISION": "fp32",  # known: no warning
        "VIBEVOICE_TEST_SCRIPT": "default",  # the tests' and the build's: no warning
        "VIBEVOICE_BUILD_BITSANDBYTES": "0",
        "VIBEVOICE_VLLM_VENV": "/x",
        "HF_HOME": "/y",
    }
    lines = unknown_env_warnings(env)
    assert lines == [
        "the environment variable VIBEVOICE_PRECISON is not a setting and is ignored; did you "
        "mean VIBEVOICE_PRECISION?",
        "the environment variable VIBEVOICE_REMOTE_APIKEY is not a setting and is ignored; did "
        "you mean VIBEVOICE_REMOTE_API_KEY?",
        "the environment variable VIBEVOICE_ZZZ is not a setting and is ignored (--help lists the "
        "settings)",
        "the environment variable vibevoice_device is not a setting and is ignored; did you mean "
        "VIBEVOICE_DEVICE (names are upper case)?",
    ]
    assert not any("sk-secret" in line or "int8" in line for line in lines)  # names only
    odd = unknown_env_warnings({"VIBEVOICE_X\nY" + "Z" * 200: "1"})
    assert len(odd) == 1 and "\n" not in odd[0] and len(odd[0]) < 200


def test_the_server_warns_at_start_and_serves():
    env = server_env(VIBEVOICE_PRECISON="int8", VIBEVOICE_TEST_STEP_DELAY="0")
    out = _start(env=env)  # stdin at EOF: ready, then a clean exit
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 0, err
    assert b'"method":"ready"' in out.stdout
    lines = [line for line in err.splitlines() if "is not a setting" in line]
    assert len(lines) == 1, err
    assert " - vibevoice_rpc.config - WARNING - " in lines[0]  # the app's log line shape
    assert "VIBEVOICE_PRECISON" in lines[0] and "did you mean VIBEVOICE_PRECISION?" in lines[0]
    assert "int8" not in err
