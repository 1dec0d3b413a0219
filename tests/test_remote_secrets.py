"""Secrets never appear (issue #19.4): the remote API key and a URL's password are in no stdout line
and no stderr line — not in an error, not in health, not in a log line or traceback, not in
httpx2's request lines, even at DEBUG. A key file's newline is stripped; a key or URL no request
could carry stops the server before ``ready`` (one line, without it) or is ``-32602`` in
``reload_model``; ``health`` answers whatever was configured. Process-level: the real program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .fake_vllm import FakeVllm, Reply
from .rpc_client import REPO, RpcProcess, server_env
from .test_remote import ANSWER

pytestmark = pytest.mark.timeout(120)

KEY = "sk-SECRET-4f9a1c77e0"
PASSWORD = "pw-SECRET-9d3e51"


def _everything(p: RpcProcess) -> str:
    return b"\n".join(p.raw).decode("utf-8", "replace") + "\n" + p.stderr


def _assert_nowhere(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked:\n{text[-3000:]}"
    assert "SECRET" not in text, text[-3000:]  # no part of either (they share this word)


def test_a_key_with_a_key_files_newline_works_and_appears_nowhere(speech_clip: Path) -> None:
    replies = [Reply(answer=ANSWER), Reply(echo_key=True)]
    with FakeVllm(api_key=KEY, replies=replies) as fake:
        env = server_env(
            VIBEVOICE_BACKEND="remote",
            VIBEVOICE_REMOTE_URL=fake.url,
            VIBEVOICE_REMOTE_API_KEY=KEY + "\n",  # as read from a key file
            VIBEVOICE_LOG_LEVEL="DEBUG",
        )
        with RpcProcess(env=env) as p:
            health = p.call("health")["result"]
            assert health["remote"]["url"] == fake.url
            res = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=90)
            assert len(res["result"]["segments"]) == 4, res  # was LocalProtocolError (… \n')
            assert fake.headers[-1]["Authorization"] == f"Bearer {KEY}"
            # a server that quotes the Authorization header back in its error
            err = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=90)["error"]
            assert err["data"]["kind"] == "remote_auth" and "***" in err["message"], err
            # reload_model: a key no header can carry, a URL with a password and no valid port
            bad_key = {"precision": "fp32", "backend": "remote", "remote_api_key": KEY + "\x01"}
            err = p.call("reload_model", bad_key)["error"]
            assert (err["code"], err["data"]["field"]) == (-32602, "remote_api_key"), err
            for url in (f"http://bob:{PASSWORD}@127.0.0.1:99999", "http://127.0.0.1:abc"):
                params = {"precision": "fp32", "backend": "remote", "remote_url": url}
                err = p.call("reload_model", params)["error"]
                assert (err["code"], err["data"]["field"]) == (-32602, "remote_url"), err
            health = p.call("health")["result"]  # still answers, still the working server
            assert health["status"] == "ok" and health["remote"]["url"] == fake.url
            assert p.call("shutdown")["result"]["status"] == "ok"
            assert p.wait_exit(10) == 0
        _assert_nowhere(_everything(p), KEY, PASSWORD)


def test_a_url_with_credentials_is_never_shown_or_logged(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(answer=ANSWER)]) as fake:
        url = fake.url.replace("http://", f"http://bob:{PASSWORD}@")
        env = server_env(
            VIBEVOICE_BACKEND="remote", VIBEVOICE_REMOTE_URL=url, VIBEVOICE_LOG_LEVEL="DEBUG"
        )
        with RpcProcess(env=env) as p:
            health = p.call("health")["result"]
            assert health["remote"]["url"] == fake.url  # no userinfo
            res = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=90)
            assert res["result"]["metadata"]["server"] == fake.url, res
            assert fake.headers[-1]["Authorization"].startswith("Basic ")  # sent, as HTTP does
            params = {"precision": "fp32", "backend": "remote", "remote_url": url + "/v1"}
            assert p.call("reload_model", params)["result"]["status"] == "success"
            assert p.call("shutdown")["result"]["status"] == "ok"
            assert p.wait_exit(10) == 0
        out = _everything(p)
        assert "HTTP Request: GET http://***@127.0.0.1" in out  # httpx2's line, without them
        assert "bob:" not in out
        _assert_nowhere(out, PASSWORD)


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vibevoice_rpc"],
        input=b"",
        capture_output=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
    )


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"VIBEVOICE_REMOTE_API_KEY": KEY + "\x01"}, "API_KEY: the remote API key holds a control"),
        ({"VIBEVOICE_REMOTE_API_KEY": KEY + "é"}, "API_KEY: the remote API key holds a non-ASCII"),
        ({"VIBEVOICE_REMOTE_URL": f"http://u:{PASSWORD}@h:99999"}, "has no valid port"),
        ({"VIBEVOICE_REMOTE_URL": "http://h:abc"}, "has no valid port"),
        ({"VIBEVOICE_REMOTE_URL": "http://gpü-server:8000"}, "non-ASCII"),
    ],
)
def test_start_up_refuses_a_key_or_url_no_request_could_carry(
    settings: dict[str, Any], words: str
) -> None:
    env = server_env(
        **{"VIBEVOICE_BACKEND": "remote", "VIBEVOICE_REMOTE_URL": "http://127.0.0.1:9", **settings}
    )
    out = _start(env)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 1 and out.stdout == b"", (out.returncode, err)
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert "Traceback" not in err
    _assert_nowhere(err, KEY, PASSWORD)
