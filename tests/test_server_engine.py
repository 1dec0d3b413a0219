"""The real server process with the real engine on the tiny model, over pipes: the app's view.

``tests.scripted_server`` is the real server with a real-format answer forced on the tiny model
(and/or a delay per generated token), so segments stream and jobs last long enough to watch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.messages import STAGES

from .drain import read_to_eof
from .rpc_client import RpcProcess, server_env

pytestmark = [pytest.mark.model, pytest.mark.timeout(180)]

SCRIPTED = [sys.executable, "-m", "tests.scripted_server"]


def _env(tiny_model: Path, **extra: str) -> dict[str, str]:
    return server_env(VIBEVOICE_MODEL_PATH=str(tiny_model), VIBEVOICE_PRECISION="fp32", **extra)


def _progress(p: RpcProcess, id_: Any) -> list[dict[str, Any]]:
    return p.notifications("progress", id_)


@pytest.fixture(scope="module")
def scripted_server(tiny_model: Path) -> Iterator[RpcProcess]:
    """One server with the default scripted answer and no delays, shared by the tests that need
    nothing else of a process (each leaves the tiny model loaded in fp32, as configured): torch,
    transformers and the first load cost seconds per process. Shut down at the end: it answers
    and exits 0 after serving them."""
    with RpcProcess(cmd=SCRIPTED, env=_env(tiny_model, VIBEVOICE_TEST_SCRIPT="default")) as p:
        yield p
        assert p.call("shutdown")["result"]["status"] == "ok"
        assert p.wait_exit(10) == 0


def test_transcribe_over_the_pipe_gives_the_apps_schema_after_its_notifications(
    scripted_server: RpcProcess, speech_clip: Path
) -> None:
    p = scripted_server
    # without a model, as after the start: the transcription loads it (every stage is seen)
    assert p.call("unload_model", timeout=60)["result"]["status"] == "success"
    rid = p.request("transcribe", {"audio_path": str(speech_clip)})
    r = p.response(rid, timeout=120)
    res = r["result"]
    assert res["status"] == "success"
    for seg in res["segments"]:  # the app parses these with strict types
        # the app's four fields, then the two added ones (extra fields are ignored by it)
        assert list(seg) == [
            "speaker", "start_time", "end_time", "text", "speaker_id", "non_speech"
        ]  # fmt: skip
        assert isinstance(seg["speaker_id"], int) and seg["non_speech"] is False
        assert isinstance(seg["speaker"], str) and isinstance(seg["text"], str)
        assert isinstance(seg["start_time"], float) and isinstance(seg["end_time"], float)
    meta = res["metadata"]
    assert isinstance(meta["duration"], float) and isinstance(meta["processing_time"], float)
    assert isinstance(meta["language"], str) and isinstance(meta["model_precision"], str)
    assert isinstance(meta["num_speakers"], int) and meta["num_speakers"] == 2
    assert [s["speaker"] for s in res["segments"]] == ["Speaker_0", "Speaker_1"] * 2
    # every notification of the job came before its response, segments in order, once each
    pos = p.messages.index(r)
    early = [m for m in p.messages[:pos] if m.get("params", {}).get("id") == rid]
    late = [m for m in p.messages[pos:] if m.get("params", {}).get("id") == rid]
    assert late == []
    segs = [m["params"] for m in early if m["method"] == "segment"]
    assert [s["index"] for s in segs] == [0, 1, 2, 3]
    assert [s["segment"] for s in segs] == res["segments"]
    stages = []
    for m in early:
        if m["method"] == "progress" and (not stages or stages[-1] != m["params"]["stage"]):
            stages.append(m["params"]["stage"])
    # every local stage, in the documented order ("uploading" is the remote backend's)
    assert stages == [s for s in STAGES if s != "uploading"]


def test_health_answers_during_model_load_and_generation(
    tiny_model: Path, speech_clip: Path
) -> None:
    env = _env(
        tiny_model,
        VIBEVOICE_TEST_SCRIPT="default",
        VIBEVOICE_TEST_STEP_DELAY="0.02",
        VIBEVOICE_TEST_LOAD_DELAY="2",  # every load lasts at least 2 s, however fast the machine
    )
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        p.call("health", timeout=60)  # torch imported
        reload_id = p.request("reload_model", {"precision": "int8"})
        states = set()
        while not p.responses_for(reload_id):
            answer = p.call("health", timeout=30)
            h = answer["result"]
            states.add(h["state"])
            if h["state"] == "loading":
                # answered while loading: the reload's response, if already here, came after it
                done = p.responses_for(reload_id)
                assert not done or p.messages.index(done[0]) > p.messages.index(answer), (
                    "health waited for the load"
                )
        assert "loading" in states
        assert "precision: int8" in p.response(reload_id)["result"]["message"]
        assert p.call("health")["result"]["precision"] == "int8"

        rid = p.request("transcribe", {"audio_path": str(speech_clip)})
        p.wait_for(lambda m: m.get("method") == "segment" and m["params"]["id"] == rid)
        h = p.call("health", timeout=30)["result"]
        assert h["state"] == "busy" and h["model_loaded"] is True
        assert p.responses_for(rid) == [], "health waited for the transcription"
        assert p.response(rid, timeout=120)["result"]["metadata"]["model_precision"] == "int8"


def test_cancel_a_running_and_a_queued_transcription(tiny_model: Path, speech_clip: Path) -> None:
    env = _env(tiny_model, VIBEVOICE_TEST_SCRIPT="default", VIBEVOICE_TEST_STEP_DELAY="0.05")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        running = p.request("transcribe", {"audio_path": str(speech_clip)})
        queued = p.request("transcribe", {"audio_path": str(speech_clip)})
        p.wait_for(lambda m: m.get("method") == "segment" and m["params"]["id"] == running)
        # the queued one is answered at once, while the first still runs
        assert p.call("cancel", {"id": queued})["result"] == {"cancelled": True}
        err = p.response(queued)["error"]
        assert err["code"] == -32800 and err["data"]["segments"] == []
        assert p.responses_for(running) == []
        # the running one stops at its next token, with the segments streamed so far
        p.notify("$/cancelRequest", {"id": running})
        err = p.response(running, timeout=60)["error"]
        streamed = [n["segment"] for n in p.notifications("segment", running)]
        assert err["code"] == -32800 and err["data"]["kind"] == "cancelled"
        assert err["data"]["segments"] == streamed and 1 <= len(streamed) < 4
        assert p.call("cancel", {"id": running})["result"] == {"cancelled": False}
        # the model stayed loaded: the next job needs no load and finishes
        again = p.request("transcribe", {"audio_path": str(speech_clip)})
        assert len(p.response(again, timeout=120)["result"]["segments"]) == 4
        assert "loading_model" not in {n["stage"] for n in _progress(p, again)}
        # The worker finished the cancelled job before it started the next one, and the queued one
        # never reached it: a second answer to either would be on the wire before this one's.
        assert len(p.responses_for(running)) == len(p.responses_for(queued)) == 1


def test_progress_repeats_at_least_once_a_second_while_generating(
    tiny_model: Path, speech_clip: Path
) -> None:
    # The tiny model's own noise (no segments, so no natural progress) at ~4 tokens a second.
    env = _env(tiny_model, VIBEVOICE_TEST_STEP_DELAY="0.25")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 16})
        generating: list[float] = []

        def note(m: Any) -> bool:
            """Called once per message as it arrives: stamp the progress of the generation, and
            stop at the response."""
            if not isinstance(m, dict):
                return False
            if m.get("method") == "progress" and m["params"]["id"] == rid:
                if m["params"]["stage"] == "transcribing":
                    generating.append(time.monotonic())
                return False
            return "method" not in m and m.get("id") == rid

        p.wait_for(note, timeout=120)
        assert len(generating) >= 3  # 4 s of generation
        gaps = [b - a for a, b in zip(generating, generating[1:], strict=False)]
        assert max(gaps) < 2.0, gaps  # heartbeat every ~0.9 s; generous for a busy machine


def test_library_prints_during_model_load_never_reach_stdout(
    tiny_model: Path, speech_clip: Path
) -> None:
    env = _env(tiny_model, VIBEVOICE_TEST_NOISY_LOAD="1")
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 4})
        assert p.response(rid, timeout=120)["result"]["status"] == "success"
        p.call("shutdown")
        p.wait_exit(10)
        read_to_eof(p)  # also what a buffer would only let out at exit
        assert all(line.startswith(b"{") or line.startswith(b"[") for line in p.raw)
        assert not [line for line in p.raw if b"noise" in line]
        for text in ("print() noise", "fd-1 noise", "sys.__stdout__ noise"):
            assert text in p.stderr


def test_context_and_hotwords_beyond_their_limits_are_invalid_params(
    scripted_server: RpcProcess, speech_clip: Path
) -> None:
    from vibevoice_rpc.limits import PROMPT_CONTEXT_TOKENS as MAX_CONTEXT_TOKENS
    from vibevoice_rpc.messages import MAX_CONTEXT_CHARS, MAX_HOTWORDS

    audio = str(speech_clip)
    p = scripted_server
    cases = {
        "$.context": {"context": "x" * (MAX_CONTEXT_CHARS + 1)},
        "$.hotwords[0]": {"hotwords": ["y" * 65]},
        "$.hotwords": {"hotwords": ["z"] * (MAX_HOTWORDS + 1)},
        "$.language": {"language": "Deutsch, bitte"},
    }
    for where, extra in cases.items():
        err = p.call("transcribe", {"audio_path": audio, **extra})["error"]
        assert err["code"] == -32602 and where in err["message"], err
    # Within the character limit but beyond the prompt's token room (digits: a token each).
    digits = " ".join(str(n) for n in range(400))
    assert len(digits) <= MAX_CONTEXT_CHARS
    err = p.call("transcribe", {"audio_path": audio, "context": digits}, timeout=120)["error"]
    assert err["code"] == -32602 and err["data"]["kind"] == "prompt_too_long", err
    assert err["data"]["max_tokens"] == MAX_CONTEXT_TOKENS < err["data"]["tokens"]
    assert f"room for {MAX_CONTEXT_TOKENS}" in err["message"]
    # and the server goes on: a request within the limits is transcribed
    ok = p.call("transcribe", {"audio_path": audio, "hotwords": ["Trispr"]}, timeout=120)
    assert len(ok["result"]["segments"]) == 4


def test_non_speech_segments_and_a_recovered_loop_over_the_pipe(
    tiny_model: Path, speech_clip: Path, tmp_path: Path
) -> None:
    first = (
        '<|im_start|>assistant\n[{"Start":0,"End":1.2,"Content":"[Silence]"},'
        '{"Start":1.2,"End":3.5,"Speaker":0,"Content":"Hello there."},'
        '{"Start":3.5,"End":4,"Speaker":1,"Content":"' + "no " * 300
    )
    rest = (
        '{"Start":3.5,"End":5.0,"Speaker":"N/A","Content":"[Environmental Sounds]"},'
        '{"Start":5.0,"End":8.0,"Speaker":1,"Content":"Hi, shall we?"}]<|im_end|>'
    )
    (tmp_path / "first.txt").write_text(first, encoding="utf-8")
    (tmp_path / "rest.txt").write_text(rest, encoding="utf-8")
    env = _env(
        tiny_model,
        VIBEVOICE_TEST_SCRIPT=str(tmp_path / "first.txt"),
        VIBEVOICE_TEST_RETRY_SCRIPT=str(tmp_path / "rest.txt"),
    )
    with RpcProcess(cmd=SCRIPTED, env=env) as p:
        rid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 2000})
        res = p.response(rid, timeout=120)["result"]
        got = [(s["speaker"], s["speaker_id"], s["non_speech"], s["text"]) for s in res["segments"]]
        assert got == [
            ("Speaker_unknown", None, True, "[Silence]"),
            ("Speaker_0", 0, False, "Hello there."),
            ("Speaker_N_A", None, True, "[Environmental Sounds]"),
            ("Speaker_1", 1, False, "Hi, shall we?"),
        ]
        meta = res["metadata"]
        assert meta["num_speakers"] == 2 and meta["loop_recoveries"] == 1
        assert meta["repetition_stopped"] is False
        assert any("recovery 1 of 3" in w for w in meta["warnings"])
        assert [n["segment"] for n in p.notifications("segment", rid)] == res["segments"]


def test_a_failed_reload_keeps_the_working_model_over_the_pipe(
    scripted_server: RpcProcess, tiny_model: Path, speech_clip: Path, tmp_path: Path
) -> None:
    p = scripted_server
    first = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=120)["result"]
    bad = str(tmp_path / "no-model-here")
    err = p.call("reload_model", {"precision": "bf16", "model_path": bad}, timeout=60)["error"]
    assert err["code"] == -32004 and err["data"]["kept_model"] is True, err
    assert "was kept" in err["message"]
    health = p.call("health")["result"]
    assert health["model_loaded"] is True and health["model"] == str(tiny_model)
    assert health["precision"] == "fp32"
    again = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=120)["result"]
    assert again["segments"] == first["segments"]
