"""A hostile remote server can neither exhaust the sidecar's memory nor hold its jobs (issue #19.2,
#19.3): every body read is capped (decompressed size included), an answer is read no further than
the window's token budget, and cancel ends a job in every phase — connect, upload, waiting for the
headers, an error body, the stream, the retry back-off, the token count and the probe — while the
next queued request is served. Against the loopback stand-in's hostile behaviours
(tests/fake_vllm.py); the latencies and peak memory are measured by bench/bench_hostile.py."""

from __future__ import annotations

import gzip
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.config import Config, RemoteSettings
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.errors import RemoteError, RequestCancelled
from vibevoice_rpc.job import Job
from vibevoice_rpc.messages import TranscribeParams, TranscribeResult

from .drain import wait_for_stderr
from .fake_vllm import FakeVllm, Hostile, Reply, unconnectable_url
from .recorder import Recorder
from .rpc_client import RpcProcess, server_env
from .test_remote import ANSWER, engine_for, run

pytestmark = pytest.mark.timeout(180)

CHAT = "/v1/chat/completions"


class Background:
    """A transcription on its own thread (the engine's worker), to cancel from the test."""

    def __init__(self, engine: Engine, **params: Any) -> None:
        self.rec = Recorder()
        self.params = TranscribeParams(**params)
        self.job = Job("t", "transcribe", self.params, None, self.rec)
        self.rec.job = self.job
        self.result: TranscribeResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(engine,), daemon=True)
        self._thread.start()

    def _run(self, engine: Engine) -> None:
        try:
            self.result = engine.transcribe(self.params, self.job)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def join(self) -> BaseException | None:
        self._thread.join(120)
        assert not self._thread.is_alive(), "the job did not end"
        return self.error


@pytest.fixture(scope="module")
def noise_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 s of noise: its FLAC (~13 MB of base64) is more than loopback's socket buffers hold,
    so a server that never reads holds the upload itself."""
    path = tmp_path_factory.mktemp("noise") / "noise.wav"
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.5, 0.5, 24000 * 200).astype(np.float32), 24000)
    return path


# --- memory: every body is capped ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["endless", "gzip_bomb"])
def test_an_endless_or_bombed_error_body_is_cut_and_the_connection_dropped(
    speech_clip: Path, kind: str
) -> None:
    with FakeVllm(replies=[Reply(hostile=Hostile(kind, status=500))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, retries=0), audio_path=str(speech_clip))
        fake.wait_for(f"{CHAT} gone")  # the client stopped reading and closed
    err = info.value
    assert err.data["kind"] == "remote_server_error" and err.data["status"] == 500
    assert "(cut at 8 KiB)" in err.message and len(err.message) < 600


@pytest.mark.parametrize("kind", ["endless", "gzip_bomb"])
def test_an_endless_or_bombed_model_listing_is_refused_past_1_mib(kind: str) -> None:
    with FakeVllm() as fake:
        fake.hostile["/v1/models"] = Hostile(kind)
        client = engine_for(fake).backend.client
        status = client.probe(timeout=30.0)
        fake.wait_for("/v1/models gone")
    assert status.reachable is True and status.models == []
    assert status.error == "GET /v1/models: its answer is larger than 1 MiB"
    # the stand-in could send at most the cap plus the sockets' buffers before the client left
    assert fake.sent_before_gone[0] < 64 * 2**20


def test_an_endless_token_count_answer_falls_back_to_the_estimate() -> None:
    with FakeVllm() as fake:
        fake.hostile["/tokenize"] = Hostile("endless")
        client = engine_for(fake).backend.client
        assert client.count_tokens("a b c d e f") == len(b"a b c d e f") // 3 + 1
        fake.wait_for("/tokenize gone")


def test_an_endless_answer_stops_at_the_windows_token_budget(speech_clip: Path) -> None:
    # The server ignores max_tokens and sends new words without end (+4.3 MB/s before the fix).
    with FakeVllm(replies=[Reply(hostile=Hostile("endless_sse", interval=0.0))]) as fake:
        result = run(engine_for(fake), audio_path=str(speech_clip), max_new_tokens=50)
        fake.wait_for(f"{CHAT} gone")
    meta = result.metadata
    assert fake.requests[0]["max_tokens"] == 50  # asked for, and ignored
    assert meta.max_new_tokens == 50 and meta.generated_tokens == 50 and meta.truncated
    assert any("token budget (50 tokens)" in w for w in meta.warnings)


def test_an_endless_event_line_is_refused_past_1_mib(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(hostile=Hostile("endless", status=200))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake), audio_path=str(speech_clip))
        fake.wait_for(f"{CHAT} gone")
    assert info.value.data["kind"] == "remote_protocol"
    assert "a line of the event stream longer than 1048576 bytes" in info.value.message


def test_a_gzip_body_is_decoded_in_bounded_steps_and_capped() -> None:
    from vibevoice_rpc.remote.exchange import TooLarge, _Decoder

    bomb = gzip.compress(b" " * 50 * 2**20)  # 50 MiB in ~50 KB
    decoder = _Decoder("gzip", limit=2**20)
    got = 0
    with pytest.raises(TooLarge):
        for piece in decoder.decode(bomb):
            assert len(piece) <= 64 * 1024
            got += len(piece)
    assert got <= 2**20
    small = b'{"count": 3}'
    assert b"".join(_Decoder("gzip", None).decode(gzip.compress(small))) == small
    raw_deflate = gzip.compress(small)[10:-8]  # "deflate" sent without the zlib header
    assert b"".join(_Decoder("deflate", None).decode(raw_deflate)) == small


def test_the_event_decoder_joins_split_lines_and_bounds_lines_and_events() -> None:
    from vibevoice_rpc.remote.exchange import SseDecoder, TooLarge

    decoder = SseDecoder(limit=64)
    events = []
    for piece in [b'data: {"a"', b":1}\r", b"\n\r\n: keep-alive\n", b"data: x\ndata: y\n\n"]:
        events += decoder.feed(piece)
    assert events == [b'{"a":1}', b"x\ny"]
    with pytest.raises(TooLarge):
        SseDecoder(limit=64).feed(b"data: " + b"x" * 100)  # no line end yet: still bounded
    with pytest.raises(TooLarge):
        SseDecoder(limit=64).feed(b"data: " + b"x" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n")


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "-inf", "1e999", "soon", "", None])
def test_a_retry_after_that_is_not_a_sane_number_counts_as_absent(value: str | None) -> None:
    from vibevoice_rpc.remote.client import _backoff

    assert _backoff(0, value) == 0.5 and _backoff(2, value) == 2.0


def test_a_sane_retry_after_is_honoured_up_to_10_s() -> None:
    from vibevoice_rpc.remote.client import _backoff

    assert _backoff(0, "3") == 3.0 and _backoff(0, "0") == 0.0 and _backoff(0, "86400") == 10.0
    assert _backoff(0, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.5  # a date in the past: absent


def test_health_polls_against_a_gzip_bomb_listing_stay_small_and_log_once(
    speech_clip: Path,
) -> None:
    with FakeVllm() as fake:
        fake.hostile["/v1/models"] = Hostile("gzip_bomb")
        env = server_env(VIBEVOICE_BACKEND="remote", VIBEVOICE_REMOTE_URL=fake.url)
        with RpcProcess(env=env) as p:
            p.wait_ready()
            fake.wait_for("/v1/models gone")  # the warm-up's probe read its cap and left
            wait_for_stderr(p, "larger than 1 MiB")
            for _ in range(5):
                health = p.call("health")["result"]
                assert health["status"] == "ok" and health["model_loaded"] is False
                assert "larger than 1 MiB" in health["remote"]["error"]
                assert len(json.dumps(health)) < 4096
            assert p.call("shutdown")["result"]["status"] == "ok"
            assert p.wait_exit(10) == 0
            assert p.stderr.count("larger than 1 MiB") == 1 and "Traceback" not in p.stderr


# --- cancel in every phase, and the next request is served ----------------------------------


def _cancel_then_next(
    p: RpcProcess, reached: Any, first: dict[str, Any], then: tuple[str, dict[str, Any]]
) -> tuple[Any, Any]:
    """Send ``first`` (a transcribe) and ``then`` (queued behind it), wait until ``reached()``
    says the first is in the phase under test, cancel it; both answers, in line order."""
    rid = p.request("transcribe", first)
    nid = p.request(*then)
    reached(rid)
    p.request("cancel", {"id": rid})
    _, cancelled = p.reply(rid, timeout=60)
    _, served = p.reply(nid, timeout=90)
    order = [m.get("id") for m in p.messages if "id" in m and m.get("id") in (rid, nid)]
    assert order.index(rid) < order.index(nid)
    return cancelled, served


def _assert_cancelled(msg: Any) -> None:
    assert msg.get("error", {}).get("code") == -32800, msg
    assert msg["error"]["data"]["kind"] == "cancelled"


PHASES = ["upload", "headers", "error body", "stream", "back-off", "tokenize", "probe"]


@pytest.mark.parametrize("phase", PHASES)
def test_cancel_ends_a_remote_job_in_every_phase_and_the_next_request_is_served(
    phase: str, speech_clip: Path, noise_clip: Path
) -> None:
    served = Reply(answer=ANSWER)
    replies = {
        "upload": [Reply(hostile=Hostile("never_read")), served],
        "headers": [Reply(hostile=Hostile("never_answer")), served],
        "error body": [Reply(hostile=Hostile("trickle", status=500)), served],
        "stream": [Reply(hostile=Hostile("endless_sse", interval=1.0)), served],
        "back-off": [Reply(status=429, retry_after="10"), served],
    }.get(phase, [served])
    first: dict[str, Any] = {"audio_path": str(noise_clip if phase == "upload" else speech_clip)}
    if phase == "tokenize":
        first["context"] = "Trispr"
    first["max_new_tokens"] = 777  # tells the first job's completion from the next one's
    if phase == "upload":
        first["vad"] = False  # the noise is the upload (the VAD would find no speech in it)

    def hang_first(body: dict[str, Any]) -> Hostile | None:
        # The token count (5 s) and the probe (2 s) have deadlines of their own: should the cancel
        # come later than that, the first job still hangs, on its completion.
        return Hostile("never_answer") if body.get("max_tokens") == 777 else None

    with FakeVllm(replies=replies, hostile_when=hang_first) as fake:
        path = {"tokenize": "/tokenize", "probe": "/v1/models"}.get(phase)
        if path:
            fake.hostile[path] = Hostile("trickle")
        env = server_env(VIBEVOICE_BACKEND="remote", VIBEVOICE_REMOTE_URL=fake.url)
        with RpcProcess(env=env) as p:
            p.wait_ready()

            def reached(rid: Any) -> None:
                if phase == "back-off":
                    wait_for_stderr(p, "retrying in 10.0 s")
                elif phase == "probe":  # the warm-up's probe, then the job's own
                    fake.wait_for("/v1/models hostile", count=2)
                else:
                    fake.wait_for(f"{path or CHAT} hostile")
                if path:  # the next request finds a well-behaved server
                    fake.hostile.pop(path)

            second = ("transcribe", {"audio_path": str(speech_clip)})
            cancelled, next_answer = _cancel_then_next(p, reached, first, second)
            _assert_cancelled(cancelled)
            assert len(next_answer["result"]["segments"]) == 4, next_answer
            assert p.call("shutdown")["result"]["status"] == "ok"
            assert p.wait_exit(10) == 0


def test_cancel_ends_a_remote_job_that_is_still_connecting(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(answer=ANSWER)]) as fake, unconnectable_url() as url:
        env = server_env(
            VIBEVOICE_BACKEND="remote",
            VIBEVOICE_REMOTE_URL=url,
            VIBEVOICE_REMOTE_CONNECT_TIMEOUT="600",
        )
        with RpcProcess(env=env) as p:
            p.wait_ready()

            def connecting(rid: Any) -> None:  # the upload is reported just before the connect
                p.wait_for(
                    lambda m: (
                        m.get("method") == "progress"
                        and m["params"]["id"] == rid
                        and m["params"]["stage"] == "uploading"
                    ),
                    what="the uploading stage",
                )

            switch = (
                "reload_model",
                {"precision": "fp32", "backend": "remote", "remote_url": fake.url},
            )
            cancelled, switched = _cancel_then_next(
                p, connecting, {"audio_path": str(speech_clip)}, switch
            )
            _assert_cancelled(cancelled)
            assert switched["result"]["status"] == "success", switched
            res = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=90)
            assert len(res["result"]["segments"]) == 4
            assert p.call("shutdown")["result"]["status"] == "ok"
            assert p.wait_exit(10) == 0


# --- deadlines: no phase lasts for ever ---------------------------------------------------


def test_an_error_body_at_one_byte_a_second_is_given_up_after_its_deadline(
    speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vibevoice_rpc.remote.client as remote_client

    monkeypatch.setattr(remote_client, "ERROR_BODY_SECONDS", 1.0)
    with FakeVllm(replies=[Reply(hostile=Hostile("trickle", status=500, interval=0.2))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, retries=0), audio_path=str(speech_clip))
    assert info.value.data["kind"] == "remote_server_error"
    assert "its body did not arrive within 1 s" in info.value.message


def test_a_server_that_never_reads_the_upload_times_out(noise_clip: Path) -> None:
    with FakeVllm(replies=[Reply(hostile=Hostile("never_read"))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, upload_timeout=1.0), audio_path=str(noise_clip), vad=False)
    err = info.value
    assert (err.data["kind"], err.data["phase"], err.data["limit"]) == (
        "remote_timeout",
        "upload",
        1.0,
    )
    assert "VIBEVOICE_REMOTE_UPLOAD_TIMEOUT" in err.data["hint"]


def test_a_server_that_never_answers_stalls_after_the_idle_timeout(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(hostile=Hostile("never_answer"))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, idle_timeout=1.0), audio_path=str(speech_clip))
    assert (info.value.data["kind"], info.value.data["phase"]) == ("remote_stalled", "headers")


def test_a_trickling_answer_ends_at_the_windows_deadline(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(hostile=Hostile("endless_sse", interval=0.2))]) as fake:
        with pytest.raises(RemoteError) as info:
            run(engine_for(fake, window_timeout=1.0), audio_path=str(speech_clip))
    err = info.value
    assert (err.data["kind"], err.data["phase"], err.data["limit"]) == (
        "remote_timeout",
        "stream",
        1.0,
    )


def test_a_connect_that_never_completes_ends_at_the_connect_timeout(speech_clip: Path) -> None:
    with unconnectable_url() as url:
        remote = RemoteSettings(url=url, connect_timeout=1.0, retries=0)
        engine = Engine(Config(backend="remote", remote=remote, offline=True))
        with pytest.raises(RemoteError) as info:
            run(engine, audio_path=str(speech_clip))
    assert info.value.data["kind"] == "remote_unreachable", info.value


def test_a_trickling_listing_does_not_hold_reload_model() -> None:
    with FakeVllm() as fake:
        fake.hostile["/v1/models"] = Hostile("trickle")
        engine = Engine(Config(offline=True))
        job = Job(None, "reload_model", None, None, None)
        from vibevoice_rpc.messages import ReloadParams

        with pytest.raises(RemoteError) as info:
            engine.reload(
                ReloadParams(precision="fp32", backend="remote", remote_url=fake.url), job
            )
    assert info.value.data["kind"] == "remote_unreachable"
    assert "no answer within 5 s" in info.value.message and engine.backend.name == "local"


def test_cancel_during_a_retry_back_off_is_a_cancel_not_a_server_error(speech_clip: Path) -> None:
    with FakeVllm(replies=[Reply(status=503, retry_after="10")]) as fake:
        engine = engine_for(fake)
        seen = threading.Event()

        class Waiting(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "retrying in 10.0 s" in record.getMessage():
                    seen.set()

        handler = Waiting()
        logging.getLogger("vibevoice_rpc").addHandler(handler)
        try:
            job = Background(engine, audio_path=str(speech_clip))
            assert seen.wait(60)
            job.job.cancel()
            error = job.join()
        finally:
            logging.getLogger("vibevoice_rpc").removeHandler(handler)
    assert isinstance(error, RequestCancelled), error  # was -32010 "cancelled while waiting"
