"""No code and no calls from the Hub unless asked: a local model loads and transcribes in every
precision without a single request to ``HF_ENDPOINT``, and the ``kernels`` package (compiled code
from the Hub, a dependency of transformers 5.25) is never imported."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .rpc_client import RpcProcess, server_env


class RecordingHub:
    """A loopback stand-in for ``HF_ENDPOINT`` that answers 404 to everything and records it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hub.requests.append((self.command, self.path))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_POST = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hub() -> Iterator[RecordingHub]:
    h = RecordingHub()
    yield h
    h.server.shutdown()
    h.server.server_close()


def test_importing_the_package_blocks_the_kernels_package() -> None:
    code = (
        "import importlib.util, vibevoice_rpc\n"
        "assert importlib.util.find_spec('kernels') is None\n"
        "try:\n    import kernels\nexcept ImportError:\n    print('blocked')\n"
        "import transformers.utils.import_utils as iu\n"
        "print(iu.is_kernels_available())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["blocked", "False"]


@pytest.mark.model
def test_local_model_makes_no_hub_request_in_any_precision(
    hub: RecordingHub, tiny_model: Path, speech_clip: Path, tmp_path: Path
) -> None:
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_PRECISION="fp32",
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf-home"),  # no cached registry: a header build would fetch one
    )
    for key in ("HF_HUB_OFFLINE", "VIBEVOICE_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    with RpcProcess(env=env) as p:
        p.wait_ready()
        for precision in ("fp32", "int8", "nf4"):
            reload = p.call("reload_model", {"precision": precision}, timeout=240)
            assert "result" in reload, reload
            reply = p.call(
                "transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8}, timeout=240
            )
            assert reply["result"]["metadata"]["model_precision"] == precision, reply
            assert hub.requests == [], f"{precision}: {hub.requests}"
        status = p.call("model_status", {"target_dir": str(tmp_path / "dl")})
        assert "result" in status, status
        assert hub.requests == []
        # The stand-in is the endpoint in force: a download (asked for) does reach it.
        reply = p.call("download_model", {"target_dir": str(tmp_path / "dl")}, timeout=120)
        assert reply["error"]["code"] == -32011, reply
        assert any("/api/models/" in path for _, path in hub.requests), hub.requests
        p.call("shutdown")
        p.wait_exit()
    assert "kernels-community" not in p.stderr
