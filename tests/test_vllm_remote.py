"""The remote backend against a real vLLM server (opt-in: ``VIBEVOICE_TEST_VLLM=1 pytest -m vllm``).

The server is vLLM's CPU build serving the tiny random-weight VibeVoice-ASR through its
Transformers backend (scripts/vllm_cpu_server.py), so the sidecar talks the ``transformers``
dialect. The tiny model's words are noise (no JSON, so no segments): these tests prove the
transport — upload, streaming, progress, the result's shape, cancel, the token count through the
server's tokenizer, errors — not transcription quality.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .rpc_client import RpcProcess, server_env
from .vllm_server import vllm_server_url  # noqa: F401  (the session fixture)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


def _env(url: str, **extra: str) -> dict[str, str]:
    return server_env(
        VIBEVOICE_BACKEND="remote",
        VIBEVOICE_REMOTE_URL=url,
        VIBEVOICE_REMOTE_DIALECT="transformers",
        **extra,
    )


def test_a_transcription_through_vllm_has_the_local_shape(
    vllm_server_url: str,  # noqa: F811
    speech_clip: Path,
) -> None:
    with RpcProcess(env=_env(vllm_server_url)) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 48})
        res = p.response(rid, timeout=300)["result"]
        meta = res["metadata"]
        assert res["status"] == "success" and isinstance(res["segments"], list)
        assert (meta["backend"], meta["server"], meta["model"]) == (
            "remote",
            vllm_server_url,
            "vibevoice",
        )
        assert meta["generated_tokens"] == 48 and meta["truncated"] is True  # noise to the budget
        stages = []
        for n in p.notifications("progress", rid):
            if not stages or stages[-1] != n["stage"]:
                stages.append(n["stage"])
        assert stages == ["queued", "loading_audio", "uploading", "transcribing", "finalizing"]
        health = p.call("health")["result"]
        assert health["backend"] == "remote" and health["remote"]["reachable"] is True
        assert health["remote"]["max_model_len"] == 8192 and health["model_loaded"] is True


def test_cancel_stops_a_vllm_stream_and_the_next_job_runs(
    vllm_server_url: str,  # noqa: F811
    speech_clip: Path,
) -> None:
    with RpcProcess(env=_env(vllm_server_url)) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 4000})
        p.wait_for(
            lambda m: (
                m.get("method") == "progress"
                and m["params"]["id"] == rid
                and m["params"]["stage"] == "transcribing"
            ),
            timeout=300,
        )
        assert p.call("cancel", {"id": rid})["result"] == {"cancelled": True}
        err = p.response(rid, timeout=60)["error"]
        assert err["code"] == -32800
        again = p.call(
            "transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8}, timeout=300
        )
        assert again["result"]["metadata"]["generated_tokens"] == 8


def test_the_servers_tokenizer_counts_the_context_and_a_wrong_model_is_named(
    vllm_server_url: str,  # noqa: F811
    speech_clip: Path,
) -> None:
    digits = " ".join(str(n) for n in range(400))  # > 448 tokens of the real Qwen2 tokenizer
    with RpcProcess(env=_env(vllm_server_url)) as p:
        err = p.call("transcribe", {"audio_path": str(speech_clip), "context": digits}, timeout=120)
        assert err["error"]["data"]["kind"] == "prompt_too_long", err
    with RpcProcess(env=_env(vllm_server_url, VIBEVOICE_REMOTE_MODEL="whisper")) as p:
        err = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=120)["error"]
        assert err["code"] == -32010 and err["data"]["kind"] == "remote_not_found", err
