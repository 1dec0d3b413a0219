"""The remote backend against a loopback stand-in of a VibeVoice vLLM server (tests/fake_vllm.py):
the same result, notifications, loop recovery and cancel as local mode, and a specific error for
every way a server fails."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.config import Config, RemoteSettings
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.errors import InvalidParams, RemoteError, RequestCancelled
from vibevoice_rpc.messages import ReloadParams, TranscribeParams, TranscribeResult
from vibevoice_rpc.protocol.dispatcher import Job

from . import scripted
from .fake_vllm import FakeVllm, Reply
from .ports import refused_url
from .recorder import Recorder
from .rpc_client import RpcProcess, server_env

pytestmark = pytest.mark.timeout(120)

ANSWER = "assistant\n" + scripted.real_format_answer()[len("<|im_start|>assistant\n") :].replace(
    "<|im_end|>", ""
)


def engine_for(fake: FakeVllm, **settings: Any) -> Engine:
    remote = RemoteSettings(url=fake.url, **settings)
    return Engine(Config(backend="remote", remote=remote, offline=True))


def run(engine: Engine, rec: Recorder | None = None, **params: Any) -> TranscribeResult:
    rec = rec or Recorder()
    p = TranscribeParams(**params)
    job = Job("t", "transcribe", p, None, rec)
    rec.job = job
    return engine.transcribe(p, job)


@pytest.fixture
def fake() -> Iterator[FakeVllm]:
    with FakeVllm(replies=[Reply(answer=ANSWER)]) as server:
        yield server


def test_a_remote_transcription_has_the_local_shape(fake: FakeVllm, speech_clip: Path) -> None:
    engine = engine_for(fake)
    rec = Recorder()
    result = run(engine, rec, audio_path=str(speech_clip))
    texts = [s.text for s in result.segments]
    assert texts == [s["Content"] for s in scripted.REAL_FORMAT_SEGMENTS]
    assert [s.speaker for s in result.segments] == ["Speaker_0", "Speaker_1"] * 2
    assert [
        p.segment for p in rec.segments
    ] == result.segments  # streamed as the answer arrived, once each
    assert rec.stages == ["loading_audio", "uploading", "transcribing", "finalizing"]
    meta = result.metadata
    assert (meta.backend, meta.server, meta.model) == ("remote", fake.url, "vibevoice")
    assert meta.model_precision == "remote" and meta.num_speakers == 2
    assert meta.generated_tokens == -(-len(ANSWER) // 4)  # the server's usage count
    (body,) = fake.requests
    assert body["model"] == "vibevoice" and body["stream"] is True
    assert (body["temperature"], body["top_p"]) == (0.0, 1.0)
    assert body["max_tokens"] == meta.max_new_tokens == int(np.ceil(meta.duration * 12)) + 256
    system, user = body["messages"]
    assert system["role"] == "system" and "JSON format" in system["content"]
    audio, text = user["content"]
    assert audio["type"] == "audio_url"
    head, b64 = audio["audio_url"]["url"].split(",", 1)
    assert head == "data:audio/flac;base64"
    sent, rate = sf.read(io.BytesIO(base64.b64decode(b64)))
    assert rate == 24000 and abs(len(sent) / rate - meta.duration) < 0.01
    assert text == {
        "type": "text",
        "text": f"This is a {meta.duration:.2f} seconds audio, please transcribe it with these "
        "keys: Start time, End time, Speaker ID, Content",
    }


def test_context_goes_into_the_trained_instruction_or_alone_for_the_transformers_dialect(
    fake: FakeVllm, speech_clip: Path
) -> None:
    run(engine_for(fake), audio_path=str(speech_clip), hotwords=["Trispr"], context="A sync.")
    text = fake.requests[-1]["messages"][1]["content"][1]["text"]
    assert text.endswith(
        "seconds audio, with extra info: Trispr\nA sync.\n\nPlease transcribe it with these keys: "
        "Start time, End time, Speaker ID, Content"
    )
    engine = engine_for(fake, dialect="transformers")
    run(engine, audio_path=str(speech_clip), hotwords=["Trispr"], context="A sync.")
    assert fake.requests[-1]["messages"][1]["content"][1] == {
        "type": "text",
        "text": "Trispr\nA sync.",
    }
    run(engine, audio_path=str(speech_clip))
    assert [p["type"] for p in fake.requests[-1]["messages"][1]["content"]] == ["audio_url"]


def test_a_loop_is_recovered_with_the_good_text_as_the_assistant_prefix(
    speech_clip: Path,
) -> None:
    good = 'assistant\n[{"Start":0,"End":1.5,"Speaker":0,"Content":"Hello there."},'
    loop = good + '{"Start":1.5,"End":2,"Speaker":1,"Content":"' + "la " * 400
    rest = '{"Start":1.5,"End":4.0,"Speaker":1,"Content":"Fine, thanks."}]'
    replies = [Reply(answer=loop, piece_chars=3), Reply(answer=rest)]
    with FakeVllm(replies=replies) as fake:
        rec = Recorder()
        result = run(engine_for(fake, continuation="prefix"), rec, audio_path=str(speech_clip))
    assert [s.text for s in result.segments] == ["Hello there.", "Fine, thanks."]
    assert [p.segment.text for p in rec.segments] == ["Hello there.", "Fine, thanks."]
    assert result.metadata.loop_recoveries == 1 and not result.metadata.repetition_stopped
    first, retry = fake.requests
    assert retry["messages"][-1] == {
        "role": "assistant",
        "content": '[{"Start":0,"End":1.5,"Speaker":0,"Content":"Hello there."},',
    }
    assert retry["continue_final_message"] is True and retry["add_generation_prompt"] is False
    assert (retry["temperature"], retry["top_p"], retry["seed"]) == (0.2, 0.95, 1235)
    assert "seed" not in first and first["temperature"] == 0.0


def test_by_default_a_loop_restarts_the_window_and_repeated_segments_are_dropped(
    speech_clip: Path,
) -> None:
    good = 'assistant\n[{"Start":0,"End":1.5,"Speaker":0,"Content":"Hello there."},'
    loop = good + '{"Start":1.5,"End":2,"Speaker":1,"Content":"' + "la " * 400
    again = good + '{"Start":1.5,"End":4.0,"Speaker":1,"Content":"Fine, thanks."}]'
    with FakeVllm(replies=[Reply(answer=loop, piece_chars=3), Reply(answer=again)]) as fake:
        rec = Recorder()
        result = run(engine_for(fake), rec, audio_path=str(speech_clip))
    assert [s.text for s in result.segments] == ["Hello there.", "Fine, thanks."]
    assert [p.segment.text for p in rec.segments] == ["Hello there.", "Fine, thanks."]  # none twice
    meta = result.metadata
    assert meta.loop_recoveries == 1 and any("started over" in w for w in meta.warnings)
    first, retry = fake.requests
    assert retry["messages"] == first["messages"]  # the same request, no assistant prefix
    assert "continue_final_message" not in retry
    assert (retry["temperature"], retry["top_p"], retry["seed"]) == (0.2, 0.95, 1235)


def test_cancel_closes_a_stalled_stream_and_keeps_the_segments(speech_clip: Path) -> None:
    # Two segments arrive, then the server goes quiet with the connection open.
    reply = Reply(answer=ANSWER, stall_after=(len(ANSWER) // 4) // 2 + 2)
    with FakeVllm(replies=[reply]) as fake:

        def cancel_after_first(rec: Recorder, method: str, params: Any) -> None:
            if method == "segment" and rec.job is not None:
                rec.job.cancel()

        engine = engine_for(fake, idle_timeout=60.0)
        with pytest.raises(RequestCancelled) as info:
            run(engine, Recorder(cancel_after_first), audio_path=str(speech_clip))
        assert [s.text for s in info.value.data["segments"]][:1] == ["Guten Morgen, Grüß Gott! 🎙"]


@pytest.mark.parametrize(
    "reply,kind,hint",
    [
        (Reply(status=401, error_body={"error": {"message": "bad key"}}), "remote_auth", "API_KEY"),
        (Reply(status=413, error_body={"detail": "too big"}), "remote_too_large", "MAX_AUDIO"),
        (Reply(status=503, retry_after="0"), "remote_busy", "later"),
        (
            Reply(status=400, error_body={"error": {"message": "max_tokens too large"}}),
            "remote_bad_request",
            None,
        ),
        (Reply(status=500), "remote_server_error", None),
    ],
)
def test_http_errors_are_specific(
    speech_clip: Path, reply: Reply, kind: str, hint: str | None
) -> None:
    with FakeVllm(replies=[reply]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, retries=2), audio_path=str(speech_clip))
    err = info.value
    assert err.code == -32010 and err.data["kind"] == kind, err
    assert str(reply.status) in err.message and fake.url in err.message
    if hint:
        assert hint in err.data["hint"]
    assert len(fake.requests) == (3 if reply.status == 503 else 1)  # only 5xx/429 are retried


def test_a_busy_server_is_retried_then_answers(speech_clip: Path) -> None:
    replies = [
        Reply(status=429, retry_after="0"),
        Reply(status=503, retry_after="0"),
        Reply(answer=ANSWER),
    ]
    with FakeVllm(replies=replies) as fake:
        result = run(engine_for(fake), audio_path=str(speech_clip))
    assert len(result.segments) == 4 and len(fake.requests) == 3


def test_a_wrong_model_name_is_remote_not_found(fake: FakeVllm, speech_clip: Path) -> None:
    with pytest.raises(RemoteError) as info:
        run(engine_for(fake, model="whisper"), audio_path=str(speech_clip))
    assert info.value.data["kind"] == "remote_not_found" and "whisper" in info.value.message


@pytest.mark.parametrize(
    "reply,kind",
    [
        (Reply(answer=ANSWER, stall_after=30), "remote_stalled"),
        (Reply(answer=ANSWER, disconnect_after=30), "remote_incomplete"),
        (Reply(answer=ANSWER, send_done=False, finish_reason="stop"), None),  # complete anyway
        (Reply(answer=ANSWER, error_after=30), "remote_error"),
    ],
)
def test_a_stream_that_breaks_says_how_and_keeps_what_came(
    speech_clip: Path, reply: Reply, kind: str | None
) -> None:
    with FakeVllm(replies=[reply]) as fake:
        engine = engine_for(fake, idle_timeout=1.0)
        if kind is None:  # no [DONE], but the answer ended with a finish_reason: it is whole
            assert len(run(engine, audio_path=str(speech_clip)).segments) == 4
            return
        with pytest.raises(RemoteError) as info:
            run(engine, audio_path=str(speech_clip))
    err = info.value
    assert err.data["kind"] == kind, err
    assert [s.text for s in err.data["segments"]] == ["Guten Morgen, Grüß Gott! 🎙"]


def test_an_unreachable_server_is_said_so_or_falls_back_to_the_local_model(
    speech_clip: Path, tiny_model: Path
) -> None:
    with refused_url() as url:
        _unreachable(url, speech_clip, tiny_model)


def _unreachable(url: str, speech_clip: Path, tiny_model: Path) -> None:
    remote = RemoteSettings(url=url, retries=1, connect_timeout=2.0)
    engine = Engine(Config(backend="remote", remote=remote, offline=True))
    with pytest.raises(RemoteError) as info:
        run(engine, audio_path=str(speech_clip))
    assert info.value.data["kind"] == "remote_unreachable" and url in info.value.message
    assert "VIBEVOICE_REMOTE_URL" in info.value.data["hint"]

    remote = RemoteSettings(url=url, retries=0, connect_timeout=2.0, fallback="local")
    engine = Engine(
        Config(
            backend="remote",
            remote=remote,
            offline=True,
            model_path=str(tiny_model),
            precision="fp32",
        )
    )
    result = run(engine, audio_path=str(speech_clip), max_new_tokens=4)
    meta = result.metadata
    assert meta.backend == "local" and meta.generated_tokens == 4
    assert any("transcribed by the local model instead" in w for w in meta.warnings)


def test_the_api_key_is_sent_and_never_logged(
    speech_clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-4f9a1c"
    with FakeVllm(api_key=secret, replies=[Reply(answer=ANSWER)]) as fake:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(RemoteError) as info:
                run(engine_for(fake), audio_path=str(speech_clip))
            assert info.value.data["kind"] == "remote_auth"
            result = run(engine_for(fake, api_key=secret), audio_path=str(speech_clip))
    assert len(result.segments) == 4
    assert fake.headers[-1]["Authorization"] == f"Bearer {secret}"
    assert secret not in caplog.text and secret not in json.dumps(result.metadata.warnings)
    assert secret not in repr(RemoteSettings(url=fake.url, api_key=secret))


def test_long_audio_goes_in_windows_no_longer_than_the_server_limit(
    speech_clip: Path, fake: FakeVllm
) -> None:
    engine = engine_for(fake, max_audio_seconds=5.0)
    result = run(engine, audio_path=str(speech_clip))
    assert result.metadata.windows == len(fake.requests) >= 3
    for body in fake.requests:
        b64 = body["messages"][1]["content"][0]["audio_url"]["url"].split(",", 1)[1]
        samples, rate = sf.read(io.BytesIO(base64.b64decode(b64)))
        assert len(samples) / rate <= 5.0 + 1e-3


def test_a_context_too_long_for_the_prompt_is_refused_by_the_servers_count(
    fake: FakeVllm, speech_clip: Path
) -> None:
    words = " ".join(f"w{i}" for i in range(460))  # 460 tokens by the stand-in's tokenizer
    with pytest.raises(InvalidParams) as info:
        run(engine_for(fake), audio_path=str(speech_clip), context=words)
    assert info.value.data["kind"] == "prompt_too_long" and fake.requests == []


def test_reload_switches_backends_and_keeps_the_old_one_when_the_server_is_down(
    fake: FakeVllm, speech_clip: Path, tiny_model: Path
) -> None:
    engine = Engine(Config(model_path=str(tiny_model), precision="fp32", offline=True))
    engine.warm_up()
    job = Job(None, "reload_model", None, None, None)
    run(engine, audio_path=str(speech_clip), max_new_tokens=2)
    with refused_url() as down, pytest.raises(RemoteError) as info:
        engine.reload(ReloadParams(precision="fp32", backend="remote", remote_url=down), job)
    assert "the local model is kept" in info.value.message
    assert engine.backend.name == "local" and engine.snapshot().model_loaded is True
    with pytest.raises(InvalidParams):
        engine.reload(ReloadParams(precision="fp32", backend="remote", remote_url="ftp://x"), job)

    msg = engine.reload(ReloadParams(precision="fp32", backend="remote", remote_url=fake.url), job)
    assert fake.url in msg.message and engine.backend.name == "remote"
    snap = engine.snapshot()
    assert snap.backend == "remote" and snap.remote is not None and snap.remote.url == fake.url
    assert snap.remote.reachable is True and engine.local.loaded is None  # the GPU is freed
    assert run(engine, audio_path=str(speech_clip)).metadata.backend == "remote"

    engine.reload(ReloadParams(precision="fp32", backend="local"), job)
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=2).metadata.backend == "local"
    engine.unload(job)


def test_remote_mode_never_imports_torch(fake: FakeVllm, speech_clip: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from vibevoice_rpc.config import Config, RemoteSettings\n"
        "from vibevoice_rpc.protocol.dispatcher import Job\n"
        "from vibevoice_rpc.engine import Engine\n"
        "from vibevoice_rpc.messages import TranscribeParams\n"
        f"e = Engine(Config(backend='remote', remote=RemoteSettings(url={fake.url!r})))\n"
        "e.warm_up(); e.snapshot()\n"
        f"p = TranscribeParams(audio_path={str(speech_clip)!r})\n"
        "r = e.transcribe(p, Job('t', 'transcribe', p, None, None))\n"
        "print(len(r.segments), 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "False", "False"]


def test_the_server_process_in_remote_mode_over_the_pipe(fake: FakeVllm, speech_clip: Path) -> None:
    env = server_env(VIBEVOICE_BACKEND="remote", VIBEVOICE_REMOTE_URL=fake.url)
    with RpcProcess(env=env) as p:
        health = p.call("health")["result"]
        assert health["backend"] == "remote" and health["remote"]["url"] == fake.url
        assert health["device"] == "remote"
        rid = p.request("transcribe", {"audio_path": str(speech_clip)})
        res = p.response(rid, timeout=60)["result"]
        assert len(res["segments"]) == 4 and res["metadata"]["backend"] == "remote"
        assert [n["segment"] for n in p.notifications("segment", rid)] == res["segments"]
        health = p.call("health")["result"]
        assert health["remote"]["reachable"] is True and health["model_loaded"] is True
        assert p.call("shutdown")["result"]["status"] == "ok"
        assert p.wait_exit(10) == 0


@pytest.mark.parametrize(
    "body, error",
    [
        ([1, 2], "not an object with a data list (got list)"),
        ({"data": "vibevoice"}, "not an object with a data list (got dict)"),
        (b'{"data":[{"id":"vibevoice","max_model_len":Infinity}]}', "Infinity is not a JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"data":"\xff"}', "not UTF-8"),
    ],
)
def test_a_model_listing_of_the_wrong_shape_is_an_error_in_health_logged_once(
    body: Any, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeVllm(models_body=body) as fake, caplog.at_level(logging.WARNING):
        client = engine_for(fake).backend.client
        for _ in range(3):  # as three health calls would, each after the last probe aged
            status = client.probe()
    assert status.reachable is True and status.models == [] and error in (status.error or "")
    warnings = [r for r in caplog.records if r.name.startswith("vibevoice_rpc")]
    assert len(warnings) == 1 and error in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # no traceback per probe


def test_health_shows_the_first_model_ids_and_a_count_of_a_long_listing() -> None:
    ids = [{"id": f"m{i}"} for i in range(20_000)] + [{"id": "vibevoice", "max_model_len": 1e308}]
    with FakeVllm(models_body={"object": "list", "data": ids}) as fake:
        engine = engine_for(fake)
        engine.backend.client.probe()
        remote = msgspec.to_builtins(engine.snapshot().remote)  # what health carries
    assert remote is not None
    assert remote["models"] == [f"m{i}" for i in range(16)] and remote["models_count"] == 20_001
    assert remote["error"] is None and remote["max_model_len"] is None  # 1e308 is not believed
    assert len(json.dumps(remote)) < 2048


def test_health_never_fails_whatever_the_remote_client_does(fake: FakeVllm) -> None:
    engine = engine_for(fake)

    class Broken:
        def refresh_in_background(self) -> None:
            raise RuntimeError("boom")

    engine.backend.client = Broken()
    snap = engine.snapshot()
    assert snap.model_loaded is False and snap.remote is not None
    assert snap.remote.url == fake.url and "RuntimeError: boom" in (snap.remote.error or "")
