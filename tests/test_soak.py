"""Soak: 1,000 mixed requests against one real server running the tiny model; nothing is lost,
duplicated or reordered, and memory stays flat.

    python -m pytest -m slow tests/test_soak.py -q -s

The mix (seeded): ``health``; short ``transcribe`` jobs (max_new_tokens 1–6); bad files (missing,
a directory, empty, noise, text); cancels of queued jobs (``cancel`` and the ``$/cancelRequest``
notification), of running jobs and of ids that don't exist; ``reload_model`` to bf16 and back to
fp32; ``unload_model`` followed by a transcribe that loads the model again. The client keeps up to
~10 queued jobs in flight (the queue limit is 16, so ``busy`` must never happen).

Checked: every request answered exactly once and nothing answered that was not asked (notifications
included); queued work answered in FIFO order (except jobs cancelled while queued, which are
answered at once); every cancel answered, ``cancelled: true`` always followed by ``-32800`` for its
target; health answers in order; bad files get their documented codes; no internal errors; the
wire format. Memory: VmRSS is sampled every 100 requests in the same state (idle, fp32 model
loaded, right after a transcribe); the median of the last three samples may exceed the median of
three samples after warm-up (requests 200–400, after several reload cycles) by at most 5 %.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .rpc_client import RpcProcess, server_env

pytestmark = [pytest.mark.slow, pytest.mark.model, pytest.mark.timeout(1200)]

SEED = 1000
TOTAL = 1000
MAX_OUTSTANDING = 8  # queued jobs in flight before the client waits (the server allows 16)
RSS_EVERY = 100
RSS_GROWTH_LIMIT = 0.05
QUEUED_METHODS = ("transcribe", "reload_model", "unload_model")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def soak_files(tmp_path_factory: pytest.TempPathFactory, speech_clip: Path) -> dict[str, Any]:
    import soundfile as sf

    root = tmp_path_factory.mktemp("soak")
    data, rate = sf.read(str(speech_clip), dtype="float32")
    short = root / "short clip.wav"
    sf.write(str(short), data[: 2 * rate], rate)  # 2 s of the two speakers
    (root / "a folder.wav").mkdir()
    (root / "empty.opus").write_bytes(b"")
    (root / "noise.wav").write_bytes(random.Random(1).randbytes(20_000))
    (root / "notes.mp3").write_text("not audio at all\n" * 100)
    bad = {
        str(root / "missing.wav"): (-32001, {"not_found"}),
        str(root / "a folder.wav"): (-32001, {"is_directory"}),
        str(root / "empty.opus"): (-32001, {"empty_file"}),
        str(root / "noise.wav"): (-32002, {"corrupt", "unsupported_format"}),
        str(root / "notes.mp3"): (-32002, {"corrupt", "unsupported_format"}),
    }
    return {"short": str(short), "long": str(speech_clip), "bad": bad}


class Soak:
    def __init__(self, p: RpcProcess, files: dict[str, Any]) -> None:
        self.p = p
        self.files = files
        self.sent: list[tuple[Any, str, dict[str, Any]]] = []  # (id, method, params) in order
        self.kind: dict[Any, str] = {}
        self.cancels: list[tuple[Any, Any, str]] = []  # (cancel id, target id, "queued"/…)
        self.note_cancels: list[Any] = []  # targets of $/cancelRequest notifications
        self.expect_bad: dict[Any, tuple[int, set[str]]] = {}
        self.expect_precision: dict[Any, str] = {}
        self.expect_reload: list[Any] = []  # transcribes that must load the model again
        self.rss: list[tuple[int, int]] = []  # (requests sent, VmRSS kB)
        self.n = 0

    # --- sending ------------------------------------------------------------------------------
    def req(self, method: str, params: dict[str, Any] | None = None, kind: str = "") -> Any:
        self.n += 1
        rid = self.n if self.n % 3 else f"soak-{self.n}"  # both int and string ids
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.p.send(msg)
        self.sent.append((rid, method, params or {}))
        self.kind[rid] = kind or method
        return rid

    def transcribe(self, path: str | None = None, tokens: int = 3, **extra: Any) -> Any:
        params = {"audio_path": path or self.files["short"], "max_new_tokens": tokens, **extra}
        return self.req("transcribe", params)

    def outstanding(self) -> int:
        answered = self.answered_ids()
        return sum(1 for rid, m, _ in self.sent if m in QUEUED_METHODS and _k(rid) not in answered)

    def answered_ids(self) -> set[Any]:
        with self.p._cv:
            return {
                _k(m["id"]) for m in self.p.messages if isinstance(m, dict) and "method" not in m
            }

    def throttle(self, limit: int = MAX_OUTSTANDING) -> None:
        deadline = time.monotonic() + 120
        while self.outstanding() > limit:
            assert time.monotonic() < deadline, "the server stopped answering"
            assert self.p.proc.poll() is None, self.p.stderr[-3000:]
            time.sleep(0.005)

    def settle(self) -> None:
        self.throttle(0)
        answered = self.answered_ids()
        deadline = time.monotonic() + 60
        while any(_k(rid) not in answered for rid, _, _ in self.sent):
            assert time.monotonic() < deadline, "requests left unanswered"
            time.sleep(0.01)
            answered = self.answered_ids()

    # --- the actions ------------------------------------------------------------------------------
    def act(self, rng: random.Random) -> None:
        r = rng.random()
        if r < 0.32:
            self.req("health")
        elif r < 0.66:
            self.transcribe(tokens=rng.randint(1, 6))
        elif r < 0.76:
            path = rng.choice(sorted(self.files["bad"]))
            rid = self.transcribe(path)
            self.expect_bad[rid] = self.files["bad"][path]
        elif r < 0.82:  # cancel a queued job: it waits behind a longer one
            self.transcribe(tokens=300)
            target = self.transcribe(tokens=2)
            self.cancels.append((self.req("cancel", {"id": target}), target, "queued"))
        elif r < 0.86:  # the same with the LSP notification
            self.transcribe(tokens=300)
            target = self.transcribe(tokens=2)
            self.p.notify("$/cancelRequest", {"id": target})
            self.note_cancels.append(target)
        elif r < 0.91:  # cancel the running job
            target = self.transcribe(self.files["long"], tokens=300)
            self.p.wait_for(
                lambda m: (
                    isinstance(m, dict)
                    and m.get("method") == "progress"
                    and m["params"]["id"] == target
                    and m["params"]["stage"] in ("encoding", "transcribing")
                ),
                timeout=120,
            )
            self.cancels.append((self.req("cancel", {"id": target}), target, "running"))
        elif r < 0.94:
            self.cancels.append((self.req("cancel", {"id": f"never-{self.n}"}), None, "unknown"))
        elif r < 0.975:
            self.reload_cycle(rng)
        else:
            self.req("unload_model")
            self.expect_reload.append(self.transcribe(tokens=2))
            self.expect_precision[self.sent[-1][0]] = "fp32"

    def reload_cycle(self, rng: random.Random) -> None:
        self.req("reload_model", {"precision": "bf16"})
        for _ in range(rng.randint(1, 3)):
            self.expect_precision[self.transcribe(tokens=rng.randint(1, 4))] = "bf16"
        self.req("reload_model", {"precision": "fp32"})

    def sample_rss(self) -> None:
        """VmRSS in a fixed state: idle, fp32 loaded, just after a transcribe."""
        self.settle()
        rid = self.transcribe(tokens=2)
        self.expect_precision[rid] = "fp32"
        self.settle()
        time.sleep(0.2)
        self.rss.append((len(self.sent), _rss_kb(self.p.proc.pid)))


def _k(id_: Any) -> Any:
    return (type(id_).__name__, id_)


def test_soak_thousand_mixed_requests(tiny_model, soak_files):
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_PRECISION="fp32",
        VIBEVOICE_LOG_LEVEL="WARNING",
        OMP_NUM_THREADS="1",
    )
    started = time.monotonic()
    with RpcProcess(env=env) as p:
        s = Soak(p, soak_files)
        rng = random.Random(SEED)
        # Warm-up starts the way the app does: load, then a few reload cycles.
        s.transcribe(tokens=2)
        for _ in range(3):
            s.reload_cycle(rng)
        s.req("unload_model")
        s.transcribe(tokens=2)
        next_sample = RSS_EVERY
        while len(s.sent) < TOTAL:
            s.throttle()
            s.act(rng)
            if len(s.sent) >= next_sample:
                s.sample_rss()
                next_sample += RSS_EVERY
        s.settle()
        s.sample_rss()  # its transcribe, queued after every other request, has been answered:
        # the worker runs jobs in order, so a stray second answer would be on the wire before it
        elapsed = time.monotonic() - started
        assert p.proc.poll() is None
        h = p.response(s.req("health"), timeout=30)["result"]
        assert h["status"] == "ok" and h["queue_length"] == 0 and h["model_loaded"], h
        with p._cv:
            raw, messages = list(p.raw), list(p.messages)
        stderr = p.stderr
    _report(s, elapsed)
    _check(s, raw, messages, stderr)


def _report(s: Soak, elapsed: float) -> None:
    kinds: dict[str, int] = {}
    for _rid, method, _ in s.sent:
        kinds[method] = kinds.get(method, 0) + 1
    series = ", ".join(f"{n}:{kb // 1024}" for n, kb in s.rss)
    print(
        f"\nsoak: {len(s.sent)} requests ({kinds}), {len(s.note_cancels)} $/cancelRequest "
        f"notifications, in {elapsed:.1f} s\nVmRSS MB by requests sent: {series}"
    )
    sys.stdout.flush()


def _check(s: Soak, raw: list[bytes], messages: list[Any], stderr: str) -> None:
    for line in raw:
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line, line[:200]
        assert not re.search(rb"\s", _STRING.sub(b'""', line[:-1])), line[:200]
        json.loads(line)

    answers = [m for m in messages if isinstance(m, dict) and "method" not in m]
    assert not [m for m in messages if isinstance(m, list)]
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for a in answers:
        by_id.setdefault(_k(a["id"]), []).append(a)
    sent_keys = [_k(rid) for rid, _, _ in s.sent]
    assert len(set(sent_keys)) == len(sent_keys)
    assert set(by_id) == set(sent_keys), (
        f"never answered: {set(sent_keys) - set(by_id)}; not asked: {set(by_id) - set(sent_keys)}"
    )
    twice = {k: v for k, v in by_id.items() if len(v) != 1}
    assert not twice, f"answered more than once: {twice}"
    answer = {k: v[0] for k, v in by_id.items()}
    errors = [a for a in answers if "error" in a]
    assert not [e for e in errors if e["error"]["code"] in (-32603, -32007, -32602, -32600)], [
        e for e in errors if e["error"]["code"] in (-32603, -32007, -32602, -32600)
    ][:5]

    cancelled = {k for k, a in answer.items() if "error" in a and a["error"]["code"] == -32800}
    # FIFO: the answers to queued work come in the order it was sent, apart from the jobs that
    # were cancelled while queued (answered at once). A cancelled running job stays in place.
    cancelled_queued = {_k(t) for _, t, how in s.cancels if how == "queued"}
    cancelled_queued |= {_k(t) for t in s.note_cancels}
    queued_sent = [
        _k(rid) for rid, m, _ in s.sent if m in QUEUED_METHODS and _k(rid) not in cancelled_queued
    ]
    position = {id(m): i for i, m in enumerate(messages)}
    queued_answered = sorted(queued_sent, key=lambda k: position[id(answer[k])])
    assert queued_answered == queued_sent, "queued work answered out of FIFO order"
    transcribes = [k for k in queued_sent if s.kind[k[1]] == "transcribe"]
    assert [k for k in queued_answered if k in set(transcribes)] == transcribes

    # health: inline, in order, always ok
    healths = [_k(rid) for rid, m, _ in s.sent if m == "health"]
    assert sorted(healths, key=lambda k: position[id(answer[k])]) == healths
    assert all(answer[k]["result"]["status"] == "ok" for k in healths)

    # cancels: each answered; true ⇒ the target got -32800 (reason "cancelled")
    for cid, target, how in s.cancels:
        res = answer[_k(cid)]["result"]
        if how == "unknown":
            assert res == {"cancelled": False}
            continue
        if how == "queued":  # it waited behind a long job, so the cancel always finds it
            assert res == {"cancelled": True}, (cid, target)
        got = answer[_k(target)]
        if res["cancelled"]:
            assert got.get("error", {}).get("code") == -32800, (cid, got)
            assert got["error"]["data"]["reason"] == "cancelled"
        else:
            assert "result" in got or got["error"]["code"] != -32800, (cid, got)
    for target in s.note_cancels:  # queued behind a long job: the notification cancels it
        assert answer[_k(target)]["error"]["code"] == -32800, answer[_k(target)]

    # every other transcribe of a good file succeeded, with the precision that was loaded
    bad = {_k(r): v for r, v in s.expect_bad.items()}
    for rid, method, params in s.sent:
        k = _k(rid)
        a = answer[k]
        if k in bad:
            code, kinds = bad[k]
            assert a["error"]["code"] == code and a["error"]["data"]["kind"] in kinds, a
            assert a["error"]["data"]["path"] == params["audio_path"], a
        elif method == "transcribe" and k not in cancelled:
            assert a["result"]["status"] == "success", a
        elif method in ("reload_model", "unload_model"):
            assert a["result"]["status"] == "success", a
    for rid, precision in s.expect_precision.items():
        a = answer[_k(rid)]
        if _k(rid) not in cancelled:
            assert a["result"]["metadata"]["model_precision"] == precision, a
    for rid in s.expect_reload:
        stages = [
            m["params"]["stage"]
            for m in messages
            if isinstance(m, dict) and m.get("method") == "progress" and m["params"]["id"] == rid
        ]
        assert "loading_model" in stages, (rid, stages)
    assert "Traceback" not in stderr, stderr[stderr.find("Traceback") - 2000 :][:6000]

    # memory
    assert len(s.rss) >= 8, s.rss
    warm = statistics.median(kb for _, kb in s.rss[1:4])
    end = statistics.median(kb for _, kb in s.rss[-3:])
    growth = end / warm - 1
    print(
        f"VmRSS after warm-up {warm / 1024:.0f} MB, at the end {end / 1024:.0f} MB "
        f"({growth:+.1%}); single samples {s.rss[1][1] / 1024:.0f} → {s.rss[-1][1] / 1024:.0f} MB"
    )
    assert growth <= RSS_GROWTH_LIMIT, (warm, end, s.rss)
