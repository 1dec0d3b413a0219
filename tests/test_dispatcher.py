"""Dispatcher and codec unit tests, in memory, with a fake engine (process-level tests use the real one)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from vibevoice_rpc.protocol.dispatcher import Dispatcher
from vibevoice_rpc.protocol.transport import Oversized

from .fake_engine import FakeEngine

pytestmark = pytest.mark.timeout(30)


class Wire:
    """Collects what the dispatcher writes, as parsed JSON."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.cv = threading.Condition()

    def write(self, data: bytes) -> bool:
        assert b"\n" not in data
        with self.cv:
            self.raw.append(data)
            self.cv.notify_all()
        return True

    @property
    def messages(self) -> list:
        with self.cv:
            return [json.loads(r) for r in self.raw]

    def wait_for(self, pred, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for m in [json.loads(r) for r in self.raw]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; got {self.raw!r}")
                self.cv.wait(left)

    def response(self, id_, timeout: float = 5.0):
        return self.wait_for(
            lambda m: isinstance(m, dict) and m.get("id") == id_ and "method" not in m, timeout
        )

    def responses(self) -> list:
        return [m for m in self.messages if isinstance(m, list) or "method" not in m]


@pytest.fixture
def setup():
    engine = FakeEngine()
    wire = Wire()
    d = Dispatcher(engine, wire.write, max_queue=2, max_line_bytes=100)
    d.start()
    yield d, engine, wire
    d.close(timeout=1)


def send(d: Dispatcher, obj) -> None:
    d.handle_line(json.dumps(obj).encode() if not isinstance(obj, bytes) else obj)


def settle(d: Dispatcher, wire: Wire) -> dict:
    """Send a queued request and wait for its answer. ``handle_line`` runs on the caller's thread,
    so every earlier line has been handled inline by then, and the worker runs jobs in order: what
    the earlier lines were going to write (inline or from the worker) is on the wire before it."""
    send(d, {"jsonrpc": "2.0", "id": "settle", "method": "unload_model"})
    return wire.response("settle")


# --- JSON-RPC 2.0 specification examples ----------------------------------------------------


def test_spec_parse_error_has_null_id(setup):
    d, _, wire = setup
    send(d, b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    (m,) = wire.messages
    assert m["id"] is None and m["error"]["code"] == -32700
    assert '{"jsonrpc":"2.0","id":1,"method":"health"}' in m["error"]["message"]


def test_spec_invalid_request_objects_get_null_id(setup):
    d, _, wire = setup
    send(d, {"foo": "boo"})
    send(d, {"jsonrpc": "2.0", "method": 1, "params": "bar"})
    assert [(m["id"], m["error"]["code"]) for m in wire.messages] == [(None, -32600)] * 2


def test_spec_empty_batch_is_one_invalid_request(setup):
    d, _, wire = setup
    send(d, [])
    (m,) = wire.messages
    assert isinstance(m, dict) and m["error"]["code"] == -32600 and m["id"] is None


def test_spec_batch_of_invalid_members(setup):
    d, _, wire = setup
    send(d, [1, 2, 3])
    (batch,) = wire.messages
    assert [e["error"]["code"] for e in batch] == [-32600] * 3


def test_spec_invalid_batch_json(setup):
    d, _, wire = setup
    send(
        d,
        b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]',
    )
    (m,) = wire.messages
    assert m["error"]["code"] == -32700


def test_spec_mixed_batch(setup):
    d, _, wire = setup
    send(
        d,
        [
            {"jsonrpc": "2.0", "method": "health", "id": "1"},
            {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
            {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "2"},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        ],
    )
    (batch,) = wire.messages
    by_id = {(m["id"], m.get("error", {}).get("code")) for m in batch}
    assert by_id == {("1", None), ("2", -32601), (None, -32600), ("5", -32601)}


def test_all_notification_batch_produces_no_output(setup):
    d, _, wire = setup
    send(d, [{"jsonrpc": "2.0", "method": "health"}, {"jsonrpc": "2.0", "method": "nope"}])
    after = settle(d, wire)
    assert wire.messages == [after]  # nothing came before the answer to what followed


def test_notifications_are_never_answered_even_on_error(setup):
    d, _, wire = setup
    send(d, {"jsonrpc": "2.0", "method": "nope"})
    send(d, {"jsonrpc": "2.0", "method": "cancel", "params": {"wrong": 1}})
    after = settle(d, wire)
    assert wire.messages == [after]  # nothing came before the answer to what followed


@pytest.mark.parametrize("id_", [0, -5, 12345678901234567890123, "abc", "", "ü🎙", 1.5, None])
def test_id_is_echoed_exactly(setup, id_):
    d, _, wire = setup
    send(d, {"jsonrpc": "2.0", "method": "health", "id": id_})
    (m,) = wire.messages
    assert m["id"] == id_ and type(m["id"]) is type(id_)
    assert m["result"]["status"] == "ok"


def test_invalid_request_echoes_readable_id(setup):
    d, _, wire = setup
    send(d, {"jsonrpc": "1.0", "method": "health", "id": 9})
    (m,) = wire.messages
    assert m["id"] == 9 and m["error"]["code"] == -32600


def test_invalid_params_names_the_field(setup):
    d, _, wire = setup
    send(d, {"jsonrpc": "2.0", "id": 1, "method": "transcribe", "params": {"audio_path": 3}})
    send(d, {"jsonrpc": "2.0", "id": 2, "method": "transcribe", "params": {}})
    send(
        d,
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "transcribe",
            "params": {"audio_path": "a", "precision": "fp64"},
        },
    )
    send(d, {"jsonrpc": "2.0", "id": 4, "method": "transcribe", "params": ["a.wav"]})
    send(
        d,
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "transcribe",
            "params": {"audio_path": "a", "max_new_tokens": 0},
        },
    )
    errs = {m["id"]: m["error"] for m in wire.messages}
    assert all(e["code"] == -32602 for e in errs.values())
    assert "audio_path" in errs[1]["message"] and errs[1]["data"]["field"] == "audio_path"
    assert "audio_path" in errs[2]["message"] and errs[2]["data"]["field"] == "audio_path"
    assert "precision" in errs[3]["message"]
    # an invalid choice lists the valid ones
    assert "expected one of: fp16, bf16, int8, nf4, fp32, auto" in errs[3]["message"]
    assert errs[3]["data"]["allowed"] == ["fp16", "bf16", "int8", "nf4", "fp32", "auto"]
    assert "object" in errs[4]["message"]
    assert "max_new_tokens" in errs[5]["message"]


def test_method_not_found_lists_methods(setup):
    d, _, wire = setup
    send(d, {"jsonrpc": "2.0", "id": 1, "method": "transcrbe"})
    (m,) = wire.messages
    assert m["error"]["code"] == -32601 and "transcribe" in m["error"]["data"]["available"]


def test_oversized_line_answered_with_its_id(setup):
    d, _, wire = setup
    d.handle_line(
        Oversized(
            size=500,
            head=b'{"jsonrpc":"2.0","id":77,"method":"transcribe","params":{"x":"',
            tail=b'aaaa"}}',
        )
    )
    d.handle_line(
        Oversized(
            size=500, head=b'{"jsonrpc":"2.0","params":{"id":5,"x":"', tail=b'aa"},"id":"tail-id"}'
        )
    )
    d.handle_line(Oversized(size=500, head=b"garbage", tail=b"garbage"))
    ids = [(m["id"], m["error"]["code"]) for m in wire.messages]
    assert ids == [(77, -32009), ("tail-id", -32009), (None, -32009)]


# --- jobs -------------------------------------------------------------------------------------


def transcribe(d, id_, path="a.wav"):
    send(d, {"jsonrpc": "2.0", "id": id_, "method": "transcribe", "params": {"audio_path": path}})


def test_transcribe_streams_progress_and_segments_before_result(setup):
    d, _, wire = setup
    transcribe(d, 1)
    res = wire.response(1)
    msgs = wire.messages
    kinds = [(m.get("method"), m.get("params", {}).get("stage")) for m in msgs]
    assert kinds[0] == ("progress", "queued")
    assert ("progress", "loading_audio") in kinds
    segs = [m["params"] for m in msgs if m.get("method") == "segment"]
    assert [s["index"] for s in segs] == [0, 1] and all(s["id"] == 1 for s in segs)
    assert msgs.index(res) == len(msgs) - 1
    assert res["result"]["status"] == "success" and len(res["result"]["segments"]) == 2


def test_engine_errors_become_specific_codes_and_internal_errors(setup):
    d, _, wire = setup
    transcribe(d, 1, "missing.wav")
    transcribe(d, 2, "boom.wav")
    assert wire.response(1)["error"]["code"] == -32001
    err = wire.response(2)["error"]
    assert err["code"] == -32603 and "boom" in err["message"]
    transcribe(d, 3)  # the worker survived
    assert wire.response(3)["result"]["status"] == "success"


def test_health_answers_while_a_job_runs(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1)
    assert engine.started.wait(5)
    send(d, {"jsonrpc": "2.0", "id": "h", "method": "health"})
    h = wire.response("h", timeout=1)
    assert h["result"]["status"] == "ok"
    engine.gate.set()
    wire.response(1)


def test_model_status_is_answered_inline_while_a_download_runs_and_transcribe_waits_for_it(setup):
    """download_model is queued model work: a transcribe behind it says what it waits for, and
    model_status is answered on the reader thread meanwhile (from the engine, not the queue)."""
    d, engine, wire = setup
    engine.download_gate.clear()
    send(d, {"jsonrpc": "2.0", "id": "dl", "method": "download_model", "params": {}})
    assert engine.downloading.wait(5)
    transcribe(d, "t")
    waiting = wire.wait_for(lambda m: m.get("method") == "progress" and m["params"]["id"] == "t")[
        "params"
    ]
    assert (waiting["stage"], waiting["message"]) == (
        "queued",
        "waiting for the model download to finish",
    )
    send(d, {"jsonrpc": "2.0", "id": "s", "method": "model_status", "params": {}})
    assert wire.response("s")["result"]["present"] is False
    assert "dl" not in [m.get("id") for m in wire.responses()]  # the download still runs
    engine.download_gate.set()
    assert wire.response("dl")["result"]["path"] == "/models/fake"
    assert wire.response("t")["result"]["status"] == "success"
    assert engine.calls == ["download", "model_status", "a.wav"]


def test_cancel_queued_job_answers_at_once(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1)
    assert engine.started.wait(5)
    transcribe(d, 2)
    send(d, {"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"id": 2}})
    assert wire.response("c")["result"] == {"cancelled": True}
    err = wire.response(2)["error"]
    assert (
        err["code"] == -32800
        and err["data"]["kind"] == "cancelled"
        and err["data"]["segments"] == []
    )
    engine.gate.set()
    assert wire.response(1)["result"]["status"] == "success"
    assert engine.calls == ["a.wav"]


def test_transcribe_behind_a_preload_reports_loading_model():
    engine = FakeEngine()
    engine.preload_gate.clear()
    wire = Wire()
    d = Dispatcher(engine, wire.write)
    d.start(preload=True)
    try:
        assert engine.preloading.wait(5)
        transcribe(d, "p")
        first = wire.wait_for(lambda m: m.get("method") == "progress")["params"]
        assert (first["id"], first["stage"]) == ("p", "loading_model")
        assert "waiting for the model" in first["message"]
        engine.preload_gate.set()
        assert wire.response("p")["result"]["status"] == "success"
        assert engine.calls == ["preload", "a.wav"]
    finally:
        d.close(timeout=1)


def test_cancel_running_job_keeps_segments_so_far(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, "t")
    assert engine.started.wait(5)
    send(d, {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "t"}})
    err = wire.response("t")["error"]
    assert err["code"] == -32800
    assert err["data"]["segments"] == [
        {
            "speaker": "Speaker_0",
            "start_time": 0.0,
            "end_time": 1.0,
            "text": "hello",
            "speaker_id": 0,
            "non_speech": False,
        }
    ]
    send(d, {"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"id": "t"}})
    assert wire.response("c")["result"] == {"cancelled": False}


def test_queue_overflow_is_busy(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1)
    assert engine.started.wait(5)
    for i in (2, 3, 4):
        transcribe(d, i)
    err = wire.response(4)["error"]
    assert err["code"] == -32007 and err["data"]["kind"] == "busy"
    engine.gate.set()
    for i in (1, 2, 3):
        assert wire.response(i)["result"]["status"] == "success"


def test_duplicate_pending_id_is_refused(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1)
    assert engine.started.wait(5)
    transcribe(d, 1)
    err = wire.wait_for(lambda m: m.get("id") == 1 and "error" in m)["error"]
    assert err["data"]["kind"] == "duplicate_id"
    engine.gate.set()
    assert wire.wait_for(lambda m: m.get("id") == 1 and "result" in m)


@pytest.mark.parametrize(
    "method, params",
    [
        ("health", None),
        ("cancel", {"id": 99}),
        ("cancel", {"id": 7}),
        ("$/cancelRequest", {"id": 7}),  # sent with an id, it is a request like any other
        ("shutdown", None),
        ("transcribe", {"audio_path": "b.wav"}),
        ("reload_model", {"precision": "fp32"}),
        ("unload_model", None),
        ("no_such_method", None),
    ],
)
def test_every_method_refuses_an_id_that_is_pending(setup, method, params):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 7)
    assert engine.started.wait(5)
    msg = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        msg["params"] = params
    send(d, msg)
    err = wire.wait_for(lambda m: m.get("id") == 7 and "error" in m)["error"]
    assert err["code"] == -32600 and err["data"]["kind"] == "duplicate_id", err
    assert not d.stopping.is_set()  # a refused shutdown does not stop the server
    engine.gate.set()
    wire.wait_for(lambda m: m.get("id") == 7 and "result" in m)
    answers = [m for m in wire.responses() if isinstance(m, dict) and m.get("id") == 7]
    assert len(answers) == 2, answers  # the refusal, then the transcribe's own result, once
    assert engine.calls == ["a.wav"]  # the pending job ran alone, uncancelled


def test_an_id_is_free_again_once_its_request_is_answered(setup):
    d, _, wire = setup
    transcribe(d, 7)
    assert wire.wait_for(lambda m: m.get("id") == 7 and "result" in m)
    send(d, {"jsonrpc": "2.0", "id": 7, "method": "health"})
    wire.wait_for(lambda m: m.get("id") == 7 and m.get("result", {}).get("status") == "ok")


def test_batch_waits_for_all_members(setup):
    d, engine, wire = setup
    send(
        d,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "transcribe", "params": {"audio_path": "a.wav"}},
            {"jsonrpc": "2.0", "id": 2, "method": "health"},
            {"jsonrpc": "2.0", "id": 3, "method": "reload_model", "params": {"precision": "bf16"}},
        ],
    )
    batch = wire.wait_for(lambda m: isinstance(m, list))
    assert sorted(m["id"] for m in batch) == [1, 2, 3]
    assert engine.calls == ["a.wav", "reload:bf16"]


def test_shutdown_cancels_running_and_queued_work(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1)
    assert engine.started.wait(5)
    transcribe(d, 2)
    send(d, {"jsonrpc": "2.0", "id": "s", "method": "shutdown"})
    assert wire.response("s")["result"]["status"] == "ok"
    assert d.stopping.is_set()
    d.close(timeout=2)
    assert wire.response(1)["error"]["code"] == -32800
    assert wire.response(2)["error"]["code"] == -32800
    send(d, {"jsonrpc": "2.0", "id": 9, "method": "transcribe", "params": {"audio_path": "a.wav"}})
    assert wire.response(9)["error"]["code"] == -32008


def test_close_answers_a_stuck_job_exactly_once(setup):
    d, engine, wire = setup
    engine.gate.clear()
    engine.transcribe_orig = engine.transcribe
    release = threading.Event()

    def stuck(params, job):  # ignores cancel, like a long native prefill
        engine.started.set()
        release.wait(10)
        return engine.transcribe_orig(params, job)

    engine.transcribe = stuck
    d._methods["transcribe"] = d._methods["transcribe"].__class__(
        d._methods["transcribe"].params, stuck, True
    )
    transcribe(d, 1)
    assert engine.started.wait(5)
    d.close(timeout=0.2)
    assert wire.response(1)["error"]["code"] == -32800
    release.set()  # the worker finishes later: its second answer is suppressed
    assert d._worker is not None
    d._worker.join(10)  # it has finished the job (and written whatever it would write)
    assert not d._worker.is_alive()
    assert len([m for m in wire.messages if m.get("id") == 1]) == 1


def test_progress_is_rate_limited_and_heartbeats(setup):
    from vibevoice_rpc.job import HEARTBEAT_SECONDS

    d, engine, wire = setup

    def stamps() -> list:
        return [
            m
            for m in wire.messages
            if m.get("method") == "progress" and m["params"]["stage"] == "loading_audio"
        ]

    engine.gate.clear()
    started = time.monotonic()
    transcribe(d, 1)
    assert engine.started.wait(5)
    # The first report, then the same progress again while the job says nothing new: waited for
    # (a busy machine only makes the heartbeats later), not slept for.
    deadline = time.monotonic() + 20
    with wire.cv:
        while len(stamps()) < 3:
            assert time.monotonic() < deadline, wire.raw
            wire.cv.wait(0.5)
    engine.gate.set()
    wire.response(1)
    took = time.monotonic() - started
    assert len(stamps()) >= 3  # the first report plus at least two heartbeats
    # ... and never more often than one per HEARTBEAT_SECONDS of quiet (a slow machine only makes
    # fewer): the rate limit
    assert len(stamps()) <= 1 + took / HEARTBEAT_SECONDS, (len(stamps()), took)


def test_progress_within_a_stage_is_rate_limited_but_its_completion_is_sent_at_once():
    from vibevoice_rpc.protocol.dispatcher import Job

    sent = []
    job = Job(1, "transcribe", None, None, lambda method, params: sent.append(params))
    job.report("encoding", 0.0, "encoding audio")
    for i in range(1, 100):
        job.report("encoding", i / 200)
    job.report("encoding", 1.0)
    job.report("encoding", 0.3)  # never backwards within a stage
    assert [p.progress for p in sent] == [0.0, 1.0]
    job.heartbeat(time.monotonic() + 1.0)
    assert sent[-1].progress == 1.0 and sent[-1].stage == "encoding"
    job.report("transcribing", 0.0)
    assert sent[-1].stage == "transcribing" and sent[-1].progress == 0.0


def test_a_stage_change_first_sends_the_last_rate_limited_value_of_the_old_stage():
    from vibevoice_rpc.protocol.dispatcher import Job

    sent = []
    job = Job(1, "transcribe", None, None, lambda method, params: sent.append(params))
    job.report("transcribing", 0.1)
    job.report("transcribing", 0.97)  # within 0.1 s: held back by the rate limit
    job.report("finalizing", 0.0)
    assert [(p.stage, p.progress) for p in sent] == [
        ("transcribing", 0.1),
        ("transcribing", 0.97),
        ("finalizing", 0.0),
    ]


def test_params_that_are_not_an_object_name_what_they_are(setup):
    d, _, wire = setup
    send(d, {"jsonrpc": "2.0", "id": 1, "method": "transcribe", "params": None})
    send(d, {"jsonrpc": "2.0", "id": 2, "method": "transcribe", "params": ["a.wav"]})
    first, second = wire.response(1)["error"], wire.response(2)["error"]
    assert first["code"] == second["code"] == -32602
    assert "not null" in first["message"] and first["data"]["field"] == "params"
    assert "by-position" in second["message"]


def test_a_request_with_a_fractional_id_can_be_cancelled(setup):
    d, engine, wire = setup
    engine.gate.clear()
    transcribe(d, 1.5)
    assert engine.started.wait(5)
    send(d, {"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"id": 1.5}})
    assert wire.response("c")["result"] == {"cancelled": True}
    assert wire.response(1.5)["error"]["code"] == -32800
