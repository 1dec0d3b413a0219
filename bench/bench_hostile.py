"""Remote backend against a hostile server: cancel latency per phase, peak RSS per hostile body.

    python bench/bench_hostile.py [--reps 5] [--only cancel,memory]

Every case runs the real sidecar (``VIBEVOICE_BACKEND=remote``) against the loopback stand-in of
the tests (tests/fake_vllm.py, 127.0.0.1 only) switched to one hostile behaviour.

cancel: per phase, one sidecar; ``--reps`` times: start a transcription, wait until the stand-in
(or the sidecar's progress, or its log) shows the job is in that phase, write ``cancel`` and time
the ``-32800`` (from the write to the answer's arrival). Phases: connect (an address whose connect
never completes), upload (a server that never reads the 13 MB body of 200 s of noise), headers (one
that never answers), error body (a 500 trickled at 1 byte/s), stream (an event every second),
back-off (a 429 with ``Retry-After: 10``), tokenize and probe (``/tokenize`` and ``/v1/models`` at
1 byte/s). Target: ≤ 1 s in every phase.

memory: per hostile body, a fresh sidecar; its peak RSS (VmHWM, /proc/<pid>/status) after the
scenario, next to a normal transcription's, and what the stand-in managed to send before the
sidecar hung up. Bodies: an endless and a gzip-bomb error body, an endless and a gzip-bomb
``/v1/models`` (read by the probe ``health`` starts), an endless ``/tokenize``, an event stream
that ignores ``max_tokens``, and one endless event line. Before the fix these took the sidecar past
3 GiB in 6-15 s (issue #19.2).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    CLIP,
    BenchError,
    Server,
    median,
    mib,
    print_header,
    run_main,
    server_env,
    spread,
    table,
    temp_dir,
    verdict,
)
from tests import scripted  # noqa: E402
from tests.fake_vllm import FakeVllm, Hostile, Reply, unconnectable_url  # noqa: E402

ANSWER = scripted.real_format_answer().replace("<|im_start|>", "").replace("<|im_end|>", "")
PHASES = ["connect", "upload", "headers", "error body", "stream", "back-off", "tokenize", "probe"]
CHAT = "/v1/chat/completions"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="cancels per phase")
    p.add_argument("--only", default="cancel,memory")
    return p.parse_args()


def sidecar(url: str, **extra: str) -> Server:
    env = server_env(None, VIBEVOICE_BACKEND="remote", VIBEVOICE_REMOTE_URL=url, **extra)
    server = Server(env)
    server.wait_ready()
    return server


def noise_clip() -> Path:
    import numpy as np
    import soundfile as sf

    path = temp_dir("vibevoice-bench-hostile-") / "noise.wav"
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.5, 0.5, 24000 * 200).astype(np.float32), 24000)
    return path


def wait(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.005)


def log_count(server: Server, text: str) -> int:
    assert server.stderr_path is not None
    return server.stderr_path.read_text(encoding="utf-8", errors="replace").count(text)


def cancel_latencies(phase: str, reps: int, noise: Path) -> list[float]:
    """``reps`` cancels of a job in ``phase``: seconds from the write of ``cancel`` to -32800."""
    replies = {
        "upload": Reply(hostile=Hostile("never_read")),
        "headers": Reply(hostile=Hostile("never_answer")),
        "error body": Reply(hostile=Hostile("trickle", status=500)),
        "stream": Reply(hostile=Hostile("endless_sse", interval=1.0)),
        "back-off": Reply(status=429, retry_after="10"),
    }
    fake = FakeVllm(replies=[replies.get(phase, Reply(hostile=Hostile("never_answer")))])
    path = {"tokenize": "/tokenize", "probe": "/v1/models"}.get(phase)
    if path:
        fake.hostile[path] = Hostile("trickle")
    fake.__enter__()
    try:
        with unconnectable_url() as nowhere:
            url = nowhere if phase == "connect" else fake.url
            with sidecar(url, VIBEVOICE_REMOTE_CONNECT_TIMEOUT="600") as server:
                if phase in ("probe", "connect"):  # let the warm-up's probe (2 s) end first
                    time.sleep(2.5)
                params: dict[str, Any] = {
                    "audio_path": str(noise if phase == "upload" else CLIP),
                    "context": "Trispr" if phase == "tokenize" else None,
                }
                params = {k: v for k, v in params.items() if v is not None}
                out = []
                for _ in range(reps):
                    event = f"{path or CHAT} hostile"
                    seen = fake.events.count(event)
                    retries = log_count(server, "retrying in 10.0 s")
                    rid = server.request("transcribe", params)
                    if phase == "connect":
                        wait(lambda rid=rid: (rid, "uploading") in server.stage_at, "uploading")
                        time.sleep(0.2)  # well inside the connect
                    elif phase == "back-off":
                        wait(lambda n=retries: log_count(server, "retrying in") > n, "a retry")
                    else:
                        wait(lambda n=seen, e=event: fake.events.count(e) > n, event)
                    _, sent = server.request_at("cancel", {"id": rid})
                    arrived, msg = server.reply(rid, timeout=60)
                    if msg.get("error", {}).get("code") != -32800:
                        raise BenchError(f"{phase}: cancel did not give -32800: {msg}")
                    out.append(arrived - sent)
                return out
    finally:
        fake.__exit__(None, None, None)


MEMORY = [
    ("error body, endless (500)", {"replies": [Reply(hostile=Hostile("endless", status=500))]}),
    ("error body, gzip bomb (500)", {"replies": [Reply(hostile=Hostile("gzip_bomb", status=500))]}),
    ("/v1/models, endless (health)", {"models": Hostile("endless")}),
    ("/v1/models, gzip bomb (health)", {"models": Hostile("gzip_bomb")}),
    ("/tokenize, endless", {"tokenize": Hostile("endless")}),
    (
        "stream ignoring max_tokens",
        {"replies": [Reply(hostile=Hostile("endless_sse", interval=0))]},
    ),
    ("stream, one endless line", {"replies": [Reply(hostile=Hostile("endless", status=200))]}),
]


def peak_rss(case: dict[str, Any] | None, idle: bool = False) -> tuple[int, str, int | None]:
    """(VmHWM bytes after the scenario, how the job ended, bytes sent before the client left);
    ``idle``: after ``ready`` and one ``health`` only."""
    fake = FakeVllm(replies=(case or {}).get("replies", [Reply(answer=ANSWER)]))
    for key, path in (("models", "/v1/models"), ("tokenize", "/tokenize")):
        if case and key in case:
            fake.hostile[path] = case[key]
    fake.__enter__()
    try:
        with sidecar(fake.url, VIBEVOICE_REMOTE_RETRIES="0") as server:
            if idle:
                ended = "health: " + str(server.call("health")["result"]["remote"]["reachable"])
            elif case and "models" in case:
                wait(lambda: "/v1/models gone" in fake.events, "the probe to give up")
                error = None
                while not error:  # the probe records its outcome just after it hangs up
                    error = server.call("health")["result"]["remote"]["error"]
                ended = error[-40:]
            else:
                params: dict[str, Any] = {"audio_path": str(CLIP)}
                if case and "tokenize" in case:
                    params["context"] = "Trispr"
                msg = server.call("transcribe", params, timeout=120)
                if "result" in msg:
                    meta = msg["result"]["metadata"]
                    ended = f"result, {meta['generated_tokens']} tokens"
                else:
                    ended = f"{msg['error']['code']} {msg['error']['data']['kind']}"
            hwm = server.hwm()
            if case:  # the stand-in notices the hang-up at its next write
                deadline = time.monotonic() + 5
                while not fake.sent_before_gone and time.monotonic() < deadline:
                    time.sleep(0.01)
            sent = fake.sent_before_gone[0] if fake.sent_before_gone else None
            return hwm, ended, sent
    finally:
        fake.__exit__(None, None, None)


def main() -> int:
    args = parse_args()
    only = set(args.only.split(","))
    print_header("bench_hostile: the remote backend against a hostile server")
    if "cancel" in only:
        noise = noise_clip()
        rows = []
        for phase in PHASES:
            lat = cancel_latencies(phase, args.reps, noise)
            rows.append(
                [phase, len(lat), f"{median(lat):.3f}", spread(lat), verdict(max(lat) <= 1)]
            )
        table(
            ["phase", "cancels", "cancel → -32800, median s", "min–max", "≤ 1 s"],
            rows,
            note="one sidecar per phase; from the write of cancel to the answer's arrival",
        )
    if "memory" in only:
        idle, ended, _ = peak_rss(None, idle=True)
        rows = [["none: ready + health", mib(idle), "–", ended, "–"]]
        normal, ended, _ = peak_rss(None)
        rows.append(
            ["none: a transcription", mib(normal), f"{(normal - idle) / 2**20:+.1f}", ended, "–"]
        )
        for name, case in MEMORY:
            hwm, ended, sent = peak_rss(case)
            kib = f"{sent / 1024:,.0f}" if sent is not None else "–"
            rows.append([name, mib(hwm), f"{(hwm - idle) / 2**20:+.1f}", ended, kib])
        table(
            ["hostile body", "peak RSS MiB", "vs idle", "how it ended", "sent before hang-up KiB"],
            rows,
            note="a fresh sidecar each; VmHWM after the scenario. A transcription with segments "
            "adds the language identifier (py3langid, loaded on the first result with text): "
            "compare /tokenize with that row",
        )
    return 0


if __name__ == "__main__":
    run_main(main)
