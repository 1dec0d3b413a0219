"""download_model against the loopback hub (tests/fake_hub.py): throughput, cancel latency, resume
after SIGKILL — through the real server and the real huggingface_hub client.

    python bench/bench_download.py [--mib 512] [--cancels 7]

Throughput is the server's own (its result's ``seconds``: listing, fetch, hash, move), next to
huggingface_hub's ``snapshot_download`` of the same files in a subprocess. Cancel latency is from
writing ``cancel`` to reading the ``-32800`` answer, with the transfer flowing (rate-limited to
100 MB/s) and stalled (the hub stops sending mid-file). Resume: SIGKILL the server mid-shard, start a
new one, download again; bytes fetched twice = what the hub sent in the second run beyond what was
missing on disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_hub import FakeHub  # noqa: E402
from tests.rpc_client import RpcProcess, server_env  # noqa: E402

REPO = "microsoft/VibeVoice-ASR-HF"
SHARD = "model-00001-of-00001.safetensors"


def _files(mib: int) -> dict[str, bytes]:
    block = os.urandom(2**20)
    return {SHARD: block * mib, "config.json": b'{"model_type": "vibevoice_asr"}\n'}


def _env(hub: FakeHub, home: str) -> dict[str, str]:
    return server_env(
        HF_ENDPOINT=hub.url,
        HF_HOME=home,
        HF_HUB_OFFLINE="0",
        VIBEVOICE_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        VIBEVOICE_LOG_LEVEL="WARNING",
    )


def _bytes_at_least(rid: str, n: int):
    return lambda m: (
        m.get("method") == "progress"
        and m["params"].get("id") == rid
        and m["params"].get("download", {}).get("bytes_done", -1) >= n
    )


def throughput(files: dict[str, bytes]) -> None:
    total = sum(map(len, files.values()))
    ours, theirs, ceiling = [], [], []
    for _ in range(3):
        with FakeHub({REPO: files}, chunk=2**20) as hub, tempfile.TemporaryDirectory() as home:
            code = (
                "import sys,time,httpx2;t=time.monotonic();n=0\n"
                "with httpx2.stream('GET',sys.argv[1]) as r:\n"
                " for c in r.iter_raw(2**20): n+=len(c)\n"
                "print(n/(time.monotonic()-t))"
            )
            url = f"{hub.url}/{REPO}/resolve/main/{SHARD}"
            out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True)
            ceiling.append(float(out.stdout.split()[-1]))
            with RpcProcess(env=_env(hub, home)) as p:
                res = p.call("download_model", timeout=600)["result"]
                ours.append(total / res["seconds"])
            code = (
                "import time,sys;from huggingface_hub import snapshot_download;t=time.monotonic();"
                f"snapshot_download({REPO!r},local_dir=sys.argv[1]);print(time.monotonic()-t)"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, os.path.join(home, "hf")],
                env=_env(hub, home),
                capture_output=True,
                text=True,
                check=True,
            )
            theirs.append(total / float(out.stdout.split()[-1]))
    print(
        f"throughput, {total / 2**20:.0f} MiB: download_model median {statistics.median(ours) / 1e6:.0f} MB/s "
        f"({', '.join(f'{x / 1e6:.0f}' for x in ours)}); huggingface_hub snapshot_download "
        f"{statistics.median(theirs) / 1e6:.0f} MB/s ({', '.join(f'{x / 1e6:.0f}' for x in theirs)}); "
        f"the stand-in's ceiling (one raw GET to nowhere) {statistics.median(ceiling) / 1e6:.0f} MB/s"
    )


def cancel_latency(files: dict[str, bytes], n: int, stalled: bool) -> None:
    lat = []
    with FakeHub({REPO: files}) as hub, tempfile.TemporaryDirectory() as home:
        if not stalled:
            hub.rate = 100e6
        with RpcProcess(env=_env(hub, home)) as p:
            for _ in range(n):
                if stalled:
                    hub.paused.clear()
                    hub.release.clear()
                    have = sum(s.stat().st_size for s in Path(home).rglob(f"{SHARD}.*.part"))
                    hub.pause_at[SHARD] = have + 8 * 2**20
                rid = p.request("download_model")
                p.wait_for(_bytes_at_least(rid, 1), timeout=120)
                if stalled:
                    hub.paused.wait(60)
                else:
                    time.sleep(0.3)  # mid-transfer (a measurement, not a test)
                t0 = time.monotonic()
                p.request("cancel", {"id": rid})
                r = p.response(rid, timeout=30)
                lat.append(time.monotonic() - t0)
                assert r["error"]["code"] == -32800, r
                if stalled:
                    hub.release.set()
    what = "stalled mid-file" if stalled else "flowing at 100 MB/s"
    print(
        f"cancel latency, {what}: median {statistics.median(lat) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms (n={n}: {', '.join(f'{x * 1000:.0f}' for x in lat)})"
    )


def resume_after_kill(files: dict[str, bytes]) -> None:
    total = sum(map(len, files.values()))
    with FakeHub({REPO: files}) as hub, tempfile.TemporaryDirectory() as home:
        hub.rate = 200e6
        with RpcProcess(env=_env(hub, home)) as p:
            rid = p.request("download_model")
            p.wait_for(_bytes_at_least(rid, total // 2), timeout=300)
            p.proc.kill()
            p.proc.wait(10)
        hub.rate = None
        part = next(Path(home).rglob(f"{SHARD}.*.part"))
        kept = part.stat().st_size
        first = len(hub.served)
        with RpcProcess(env=_env(hub, home)) as p:
            res = p.call("download_model", timeout=600)["result"]
        second = sum(s.sent for s in hub.served[first:])
        ranges = [s.start for s in hub.served[first:] if s.path == SHARD]
        refetched = second - (total - kept)
        print(
            f"resume after SIGKILL at {kept / 2**20:.0f} of {total / 2**20:.0f} MiB: second run "
            f"asked Range from byte {ranges}, fetched {second / 2**20:.1f} MiB "
            f"({res['bytes_downloaded']} bytes by its own count); re-fetched {refetched} bytes"
        )


def status_latency(n: int = 20) -> None:
    """``model_status`` round trips with no model: the first one right after ``health`` (torch
    imported), then ``n`` more."""
    with tempfile.TemporaryDirectory() as home:
        env = server_env(HF_HOME=home)
        with RpcProcess(env=env) as p:
            p.call("health", timeout=60)
            lat = []
            for _ in range(n + 1):
                t0 = time.monotonic()
                assert p.call("model_status", timeout=30)["result"]["present"] is False
                lat.append(time.monotonic() - t0)
    rest = sorted(lat[1:])
    print(
        f"model_status, no model: first {lat[0] * 1000:.1f} ms, then median "
        f"{statistics.median(rest) * 1000:.2f} ms, max {rest[-1] * 1000:.2f} ms (n={n})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--cancels", type=int, default=7)
    args = ap.parse_args()
    status_latency()
    files = _files(args.mib)
    throughput(files)
    cancel_latency(files, args.cancels, stalled=False)
    cancel_latency(files, args.cancels, stalled=True)
    resume_after_kill(files)


if __name__ == "__main__":
    main()
