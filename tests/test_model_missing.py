"""Without a checkpoint, ``transcribe`` answers -32004 at once: before the audio is decoded and
without waiting for torch (finding the checkpoint needs neither)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .rpc_client import REPO, RpcProcess, server_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("configured", ["nothing", "a missing folder"])
def test_transcribe_without_a_model_answers_before_decoding_and_without_torch(
    tmp_path: Path, speech_clip: Path, configured: str
) -> None:
    # A torch whose import never ends: an answer that waited for torch would never come.
    fake = tmp_path / "hanging_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import threading\nthreading.Event().wait()\n")
    env = server_env(
        HF_HOME=str(tmp_path / "hf"),  # no download folder, an empty Hugging Face cache
        PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO)]),
    )
    env.pop("VIBEVOICE_MODEL_PATH", None)
    if configured == "a missing folder":
        env["VIBEVOICE_MODEL_PATH"] = str(tmp_path / "no-model-here")
    with RpcProcess(env=env) as p:
        # A path that does not exist: decoding it first would answer -32001 not_found.
        never = p.call("transcribe", {"audio_path": str(tmp_path / "never-opened.opus")})
        real = p.call("transcribe", {"audio_path": str(speech_clip)})
        health = p.call("health")["result"]
        stages = [n["stage"] for n in p.notifications("progress")]
    for answer in (never, real):
        err = answer["error"]
        assert err["code"] == -32004 and err["data"]["kind"] == "model_not_found", err
        assert "download_model" in err["data"]["hint"]
    assert "loading_audio" not in stages and "loading_model" not in stages, stages
    assert health["state"] == "starting" and health["model_loaded"] is False  # torch never came
    assert health["last_error"] == real["error"]["message"]
