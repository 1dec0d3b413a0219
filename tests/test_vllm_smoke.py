"""Smoke test of the real vLLM server (opt-in: VIBEVOICE_TEST_VLLM=1 pytest -m vllm)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .vllm_server import MODEL_NAME, vllm_server_url  # noqa: F401 (session fixture)

# The session fixture may install vLLM (6–8 min) and start it (2–4 min) inside this test's timeout.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def two_second_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.0 s of espeak-ng speech as a 16-bit mono WAV at espeak's native 22.05 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    import numpy as np
    import soundfile as sf

    folder = tmp_path_factory.mktemp("vllm-audio")
    raw = folder / "raw.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-w",
            str(raw),
            "Hello, this is a test of the remote backend.",
        ],
        check=True,
        capture_output=True,
    )
    audio, rate = sf.read(raw, dtype="float32")
    n = 2 * rate
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    out = folder / "clip.wav"
    sf.write(out, audio, rate, subtype="PCM_16")
    return out


def test_streamed_transcription(vllm_server_url: str, two_second_wav: Path) -> None:  # noqa: F811
    import httpx2

    data = base64.b64encode(two_second_wav.read_bytes()).decode("ascii")
    body = {
        "model": MODEL_NAME,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}},
                    {"type": "text", "text": "Hotwords: Trispr"},
                ],
            }
        ],
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events: list[str] = []
    with httpx2.Client(base_url=vllm_server_url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200, resp.read()
            assert resp.headers["content-type"].startswith("text/event-stream")
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert any(deltas), chunks
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("length", "stop")
    usage = chunks[-1]["usage"]
    # 2 s at any rate → ceil(2 * 24000 / 3200) = 15 audio tokens plus the template's text.
    assert usage["prompt_tokens"] > 15
    assert 1 <= usage["completion_tokens"] <= 16
