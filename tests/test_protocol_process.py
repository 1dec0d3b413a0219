"""Process-level protocol tests: the real program over pipes (no model needed for these)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from .conftest import default_threads_env
from .drain import read_to_eof, wait_for_stderr
from .host_gpu import nvml_here
from .rpc_client import REPO, RpcProcess, kill_pid, process_alive, server_env

pytestmark = pytest.mark.timeout(120)


def test_ready_comes_first_before_torch_is_imported():
    with RpcProcess(env=server_env(VIBEVOICE_LOG_LEVEL="DEBUG")) as p:
        ready = p.wait_for(lambda m: True, timeout=30)
        assert ready["method"] == "ready" and "id" not in ready
        assert set(ready["params"]) == {"version", "protocol", "pid"}
        assert ready["params"]["pid"] == p.proc.pid
        p.call("health", timeout=30)
        wait_for_stderr(p, "ready written (torch imported: False)")


def test_health_fields_match_the_app_contract():
    with RpcProcess() as p:
        h = p.call("health", timeout=30)["result"]
        assert h["status"] == "ok"
        assert isinstance(h["model_loaded"], bool) and isinstance(h["gpu_available"], bool)
        assert h["state"] in {"starting", "idle"} and h["queue_length"] == 0
        # fp16 is asked for; it runs as fp32 once torch says there is no CUDA (device "cpu")
        assert h["requested_precision"] == "fp16" and h["version"]
        assert h["precision"] == ("fp32" if h["device"] == "cpu" else "fp16"), h
        # Once the GPU probe has answered: VRAM figures exactly when NVML sees a GPU here.
        deadline = time.monotonic() + 60
        while h["gpu_probe"] == "pending":
            assert time.monotonic() < deadline, h
            time.sleep(0.05)
            h = p.call("health", timeout=30)["result"]
        here = nvml_here()
        if here == "gpu":
            assert h["gpu_probe"] == "nvml" and h["gpu_available"] is True, h
            assert isinstance(h["vram_used_mb"], int) and isinstance(h["vram_total_mb"], int), h
            assert 0 <= h["vram_used_mb"] <= h["vram_total_mb"], h
        else:
            if here == "failed":  # no evidence from NVML: torch's word
                import torch

                assert h["gpu_available"] is torch.cuda.is_available(), h
            else:
                assert h["gpu_probe"] == ("none" if here == "absent" else "nvml"), h
                assert h["gpu_available"] is False, h
            assert h["vram_used_mb"] is None and h["vram_total_mb"] is None, h


def test_spec_examples_and_batches_over_pipes():
    with RpcProcess() as p:
        p.send_raw(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n')
        p.send_raw(b"[]\n")
        p.send_raw(b"[1,2,3]\n")
        p.send_raw(b'{"foo":"boo"}\n')
        p.send_raw(b'{"jsonrpc":"2.0","method":1}\n')
        p.send_raw(b'[{"jsonrpc":"2.0","method":"health"},{"jsonrpc":"2.0","method":"x"}]\n')
        p.send_raw(b'{"jsonrpc":"2.0","method":"health"}\r\n\r\n   \n')
        p.send_raw(
            b'[{"jsonrpc":"2.0","method":"health","id":"a"},{"jsonrpc":"2.0","method":"nope","id":"b"}]\n'
        )
        batch = p.wait_for(lambda m: isinstance(m, list) and len(m) == 2)
        assert {m["id"] for m in batch} == {"a", "b"}
        out = [m for m in p.messages if isinstance(m, dict) and m.get("method") != "ready"]
        assert [m["error"]["code"] for m in out[:4]] == [-32700, -32600, -32600, -32600]
        assert all(m["id"] is None for m in out[:4])
        assert [len(m) for m in p.messages if isinstance(m, list)] == [3, 2]


def test_invalid_utf8_and_binary_garbage_are_parse_errors():
    with RpcProcess() as p:
        p.send_raw(b"\xff\xfe\x00garbage\n")
        p.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"health","params":{"x":"\xc3\x28"}}\n')
        p.send_raw(b"hello there\n")
        h = p.call("health", timeout=30)
        assert h["result"]["status"] == "ok"
        errs = [m for m in p.messages if isinstance(m, dict) and "error" in m]
        assert [e["error"]["code"] for e in errs] == [-32700, -32700, -32700]
        assert '{"jsonrpc":"2.0","id":1,"method":"health"}' in errs[-1]["error"]["message"]


def test_non_ascii_is_utf8_on_the_wire(tiny_model):
    # A model is configured: the missing file's -32001 is the answer (not -32004 before it).
    with RpcProcess(env=server_env(VIBEVOICE_MODEL_PATH=str(tiny_model))) as p:
        p.request("transcribe", {"audio_path": "/nicht/da/Müller Besprechung 🎙.wav"}, id_="ü")
        r = p.response("ü", timeout=60)
        assert r["error"]["code"] == -32001 and "Müller Besprechung 🎙.wav" in r["error"]["message"]
        raw = [line for line in p.raw if "Müller".encode() in line]
        assert raw and all(line.endswith(b"\n") and b"\r" not in line for line in p.raw)


def test_sixteen_mb_line_is_served_and_a_longer_one_is_refused_with_its_id():
    with RpcProcess() as p:
        pad = "a" * (16 * 1000 * 1000)
        p.send_raw(
            json.dumps(
                {"jsonrpc": "2.0", "id": "big", "method": "health", "params": {"pad": pad}}
            ).encode()
            + b"\n"
        )
        assert p.response("big", timeout=60)["result"]["status"] == "ok"
        huge = "a" * (17 * 1024 * 1024)
        p.send_raw(
            b'{"jsonrpc":"2.0","id":"huge","method":"health","params":{"pad":"'
            + huge.encode()
            + b'"}}\n'
        )
        err = p.response("huge", timeout=60)["error"]
        assert err["code"] == -32009 and err["data"]["limit"] >= 16 * 1000 * 1000
        assert p.call("health", timeout=30)["result"]["status"] == "ok"


def test_shutdown_answers_then_exits_zero():
    with RpcProcess() as p:
        r = p.call("shutdown", timeout=30)
        assert r["result"]["status"] == "ok"
        assert p.wait_exit(10) == 0


@pytest.mark.parametrize("torch_import", ["real", "never ends"])
def test_stdin_eof_exits_zero_quickly(tmp_path, torch_import):
    env = server_env()
    if torch_import == "never ends":  # exiting must not wait for anything of torch's import
        fake = tmp_path / "hanging_torch" / "torch"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("import threading\nthreading.Event().wait()\n")
        env = server_env(PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO)]))
    with RpcProcess(env=env) as p:
        p.wait_for(lambda m: m.get("method") == "ready", timeout=30)
        assert p.call("health", timeout=30)["result"]["state"] in ("starting", "idle")
        t0 = time.monotonic()
        p.close_stdin()
        assert p.wait_exit(10) == 0
        print(f"stdin EOF ({torch_import} torch import) -> exit in {time.monotonic() - t0:.2f} s")
        read_to_eof(p)
        assert "exiting (stdin closed)" in p.stderr


def test_sigterm_exits_zero():
    with RpcProcess() as p:
        p.call("health", timeout=30)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait_exit(10) == 0
        read_to_eof(p)
        assert "SIGTERM" in p.stderr


# The server's main thread with SIGTERM blocked, and one thread started before that which takes it:
# the kernel hands a process-directed signal to any thread that does not block it, and Python only
# runs the handler in the main thread once it wakes up. This is the race that a loaded machine
# produces on its own (the signal lands while the reader is on its way into ``read``): the server
# then ignored SIGTERM until the next stdin line, with an idle stdin for ever.
_SIGNAL_ELSEWHERE = (
    "import signal, sys, threading\n"
    "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "from vibevoice_rpc.__main__ import main\n"
    "sys.argv[0] = 'vibevoice-rpc'\n"
    "main()\n"
)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_sigterm_taken_by_another_thread_still_stops_an_idle_server():
    with RpcProcess(cmd=[sys.executable, "-c", _SIGNAL_ELSEWHERE]) as p:
        p.call("health", timeout=30)  # the reader is idle on stdin from here on
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait_exit(10) == 0
        read_to_eof(p)
        assert "exiting (signal SIGTERM)" in p.stderr


# The app as a process that starts the server with the pipes it was given and is then killed: it
# dies without closing anything, and the server's stdin stays open (the test holds its write end).
_LAUNCHER = (
    "import subprocess, sys, threading\n"
    "subprocess.Popen([sys.executable, '-m', 'tests.scripted_server'])\n"
    "threading.Event().wait()\n"
)


def _exits_with_its_parent(p: RpcProcess, server: int) -> None:
    """Kill the launcher ``p.proc``; the server ``server`` must notice and exit on its own.

    Promptness: the watchdog polls every ``watchdog.POLL_SECONDS`` (pinned by
    test_the_watchdog_polls_often_enough), and a server that waited for its job instead would
    outlive the 10 s below (the mid-job test's job lasts ~25 s)."""
    try:
        p.proc.kill()
        p.proc.wait(10)
        deadline = time.monotonic() + 10
        while process_alive(server):
            assert time.monotonic() < deadline, "server outlived its parent"
            time.sleep(0.05)
        read_to_eof(p)  # the server was the last writer of the pipes
        assert "parent process" in p.stderr
    finally:
        if process_alive(server):
            kill_pid(server)


def test_parent_death_ends_the_server_even_with_stdin_open():
    """The orphan guard: the app died without closing our stdin."""
    with RpcProcess(cmd=[sys.executable, "-c", _LAUNCHER]) as p:
        server = p.wait_for(lambda m: m.get("method") == "ready", timeout=30)["params"]["pid"]
        assert p.call("health", timeout=30)["result"]["pid"] == server  # serving
        _exits_with_its_parent(p, server)


@pytest.mark.model
def test_parent_death_ends_the_server_mid_job(tiny_model, speech_clip):
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_PRECISION="fp32",
        VIBEVOICE_TEST_SCRIPT="default",
        VIBEVOICE_TEST_STEP_DELAY="0.2",  # the job lasts ~25 s: the parent dies in the middle
    )
    with RpcProcess(cmd=[sys.executable, "-c", _LAUNCHER], env=env) as p:
        server = p.wait_for(lambda m: m.get("method") == "ready", timeout=30)["params"]["pid"]
        rid = p.request("transcribe", {"audio_path": str(speech_clip)})
        p.wait_for(
            lambda m: (
                m.get("method") == "progress"
                and m["params"]["id"] == rid
                and m["params"]["stage"] == "transcribing"
            ),
            timeout=90,
        )
        _exits_with_its_parent(p, server)
        err = p.response(rid, timeout=5)["error"]  # answered on the way out, once
        assert err["code"] == -32800 and "parent process" in err["data"]["reason"], err
        assert len(p.responses_for(rid)) == 1


def test_the_watchdog_polls_often_enough(monkeypatch):
    """The ~2 s of docs/PROTOCOL.md after the parent's death: one poll interval (the watchdog sees
    the death at its next look) plus the stop sequence's bounded waits."""
    from vibevoice_rpc import watchdog

    looks: list[str] = []
    alive = iter([True, True, False])

    def process_alive(pid: int) -> bool:
        looks.append("look")
        return next(alive)

    monkeypatch.setattr(watchdog, "process_alive", process_alive)
    monkeypatch.setattr(watchdog, "time", SimpleNamespace(sleep=lambda s: looks.append(s)))
    watchdog.wait_for_exit(os.getpid() + 1_000_000)  # not our parent: the pid is polled
    assert looks == ["look", watchdog.POLL_SECONDS] * 2 + ["look"]
    assert watchdog.POLL_SECONDS <= 0.5


def test_pending_id_is_refused_for_health_and_cancel_too(tiny_model):
    """With transcribe 7 pending, health 7 and cancel 7 are -32600 duplicate_id (issue #14.5)."""
    from vibevoice_rpc.commands import sample_audio_path

    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_TEST_LOAD_DELAY="600",  # a load that outlasts the test: 7 stays pending
    )
    with RpcProcess(cmd=[sys.executable, "-m", "tests.scripted_server"], env=env) as p:
        p.request("transcribe", {"audio_path": str(sample_audio_path())}, id_=7)
        p.wait_for(
            lambda m: (
                m.get("method") == "progress"
                and m["params"] == {**m["params"], "id": 7, "stage": "loading_model"}
            ),
            timeout=60,
        )
        p.request("health", id_=7)
        p.request("cancel", {"id": 7}, id_=7)
        p.request("shutdown", id_=7)
        p.call("health", timeout=30)  # answered inline in order: the three answers came first
        refused = p.responses_for(7)
        assert len(refused) == 3, refused
        for r in refused:
            assert r["error"]["code"] == -32600 and r["error"]["data"]["kind"] == "duplicate_id"
        assert p.proc.poll() is None  # the refused shutdown did not stop it
        assert p.call("cancel", {"id": 7}, timeout=30)["result"] == {"cancelled": True}
        assert p.call("shutdown", timeout=30)["result"]["status"] == "ok"
        p.wait_for(lambda m: m.get("id") == 7 and m.get("error", {}).get("code") == -32800)
        assert p.wait_exit(10) == 0
        assert len(p.responses_for(7)) == 4  # 3 refusals + the transcribe's own answer, once


def test_a_bom_before_the_first_line_keeps_the_request_and_its_id():
    with RpcProcess() as p:
        p.send_raw(b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"health"}\r\n')
        assert p.response(1, timeout=30)["result"]["status"] == "ok"
        p.send_raw(b'\xef\xbb\xbf{"jsonrpc":"2.0","id":2,"method":"health"}\n')  # mid-stream: junk
        err = p.wait_for(lambda m: "error" in m, timeout=30)
        assert err["id"] is None and err["error"]["code"] == -32700


def test_a_line_of_exactly_the_limit_with_crlf_is_served_and_one_more_byte_is_sized_exactly():
    from vibevoice_rpc.protocol.transport import DEFAULT_MAX_LINE_BYTES as limit

    def line(id_: str, size: int) -> bytes:
        head = b'{"jsonrpc":"2.0","id":"%s","method":"health","params":{"pad":"' % id_.encode()
        out = head + b"a" * (size - len(head) - 3) + b'"}}'
        assert len(out) == size
        return out + b"\r\n"

    with RpcProcess() as p:
        p.send_raw(line("edge", limit))
        assert p.response("edge", timeout=60)["result"]["status"] == "ok"
        p.send_raw(line("over", limit + 1))
        err = p.response("over", timeout=60)["error"]
        assert err["code"] == -32009, err
        assert err["data"]["size"] == limit + 1 and err["data"]["limit"] == limit, err
        assert f"has {limit + 1} bytes" in err["message"]


def test_requests_written_with_shutdown_are_answered_shutting_down():
    with RpcProcess() as p:
        p.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"shutdown"}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"health"}\n'
            b'{"jsonrpc":"2.0","id":3,"method":"transcribe","params":{"audio_path":"x.wav"}}\n'
            b'[{"jsonrpc":"2.0","id":4,"method":"health"},{"jsonrpc":"2.0","method":"health"}]\n'
        )
        assert p.wait_exit(10) == 0
        assert p.response(1)["result"]["status"] == "ok"
        for rid in (2, 3):
            err = p.response(rid)["error"]
            assert err["code"] == -32008 and err["data"]["kind"] == "shutting_down", err
            assert "shutting down" in err["message"]
        batch = [m for m in p.messages if isinstance(m, list)]
        assert len(batch) == 1 and [m["id"] for m in batch[0]] == [4]
        assert batch[0][0]["error"]["code"] == -32008
        answered = [m.get("id") for m in p.messages if isinstance(m, dict) and "id" in m]
        assert sorted(answered) == [1, 2, 3]  # exactly one answer each


@pytest.mark.model
@pytest.mark.timeout(240)
def test_the_tiny_model_by_name_lets_a_person_drive_the_whole_protocol(speech_clip):
    # torch's own thread count, as a person's server runs (the suite's other servers use one)
    env = default_threads_env(server_env(VIBEVOICE_MODEL_PATH="tiny", VIBEVOICE_PRECISION="fp32"))
    with RpcProcess(env=env) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8})
        res = p.response(rid, timeout=200)["result"]
        assert res["status"] == "success" and res["metadata"]["generated_tokens"] == 8
        assert "vibevoice-rpc-tiny-" in res["metadata"]["model"]
        wait_for_stderr(p, "its words are not a transcript")
