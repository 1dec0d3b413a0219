"""Remote backend: sidecars (``VIBEVOICE_BACKEND=remote``) transcribing through one server.

    python bench/bench_remote.py [--url http://127.0.0.1:8000 --dialect transformers]
                                 [--sidecars 1,4] [--jobs 3] [--cancels 5]

Without ``--url`` the server is the loopback stand-in of the tests (tests/fake_vllm.py), streaming
the scripted real-format answer at ``--piece-delay`` seconds per piece: that measures the sidecar's
own costs (upload, SSE parsing, stitching, notifications). With ``--url`` it is a real server, e.g.
the vLLM one ``scripts/vllm_cpu_server.py`` starts. Per concurrency level N it spawns N sidecars,
each runs ``--jobs`` transcriptions of the clip one after another, and prints per job the time to
the first token (the ``transcribing`` stage), to the first segment and to the result, and the
throughput (seconds of audio per second, all sidecars together). Then ``--cancels`` times: start a
job, send ``cancel`` at its first token and time the ``-32800``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    CLIP,
    ROOT,
    BenchError,
    Server,
    median,
    print_header,
    result_of,
    run_main,
    server_env,
    spread,
    table,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: the loopback stand-in)")
    p.add_argument("--dialect", default="official", choices=["official", "transformers"])
    p.add_argument("--model", default="vibevoice")
    p.add_argument("--sidecars", default="1,4", help="concurrency levels, e.g. 1,4")
    p.add_argument("--jobs", type=int, default=3, help="transcriptions per sidecar")
    p.add_argument("--cancels", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64, help="per job (a real tiny model)")
    p.add_argument("--piece-delay", type=float, default=0.01, help="stand-in: seconds per piece")
    p.add_argument("--clip", type=Path, default=CLIP)
    return p.parse_args()


def sidecar_env(url: str, args: argparse.Namespace) -> dict[str, str]:
    return server_env(
        None,
        VIBEVOICE_BACKEND="remote",
        VIBEVOICE_REMOTE_URL=url,
        VIBEVOICE_REMOTE_DIALECT=args.dialect,
        VIBEVOICE_REMOTE_MODEL=args.model,
    )


def concurrency(url: str, n: int, args: argparse.Namespace, duration: float) -> list[object]:
    servers = [Server(sidecar_env(url, args)) for _ in range(n)]
    try:
        for s in servers:
            s.wait_ready()
        params = {"audio_path": str(args.clip), "max_new_tokens": args.max_new_tokens}
        first_token: list[float] = []
        first_segment: list[float] = []
        total: list[float] = []
        started = time.perf_counter()
        pending = {s: 0 for s in servers}
        sent: dict[Server, tuple[object, float]] = {}
        for s in servers:
            sent[s] = s.request_at("transcribe", params)
        while sent:
            for s in list(sent):
                rid, t0 = sent[s]
                got = s.poll(rid)
                if got is None:
                    continue
                arrived, msg = got
                result_of(msg, "transcribe")
                total.append(arrived - t0)
                if (rid, "transcribing") in s.stage_at:
                    first_token.append(s.stage_at[(rid, "transcribing")] - t0)
                if rid in s.first_segment_at:
                    first_segment.append(s.first_segment_at[rid] - t0)
                pending[s] += 1
                del sent[s]
                if pending[s] < args.jobs:
                    sent[s] = s.request_at("transcribe", params)
            time.sleep(0.005)
        wall = time.perf_counter() - started
        jobs = n * args.jobs
        return [
            n,
            jobs,
            f"{median(first_token):.3f}, {spread(first_token)}" if first_token else "–",
            f"{median(first_segment):.3f}, {spread(first_segment)}" if first_segment else "–",
            f"{median(total):.3f}, {spread(total)}",
            f"{jobs * duration / wall:.1f}",
        ]
    finally:
        for s in servers:
            s.close()


def cancels(url: str, args: argparse.Namespace) -> list[float]:
    out: list[float] = []
    with Server(sidecar_env(url, args)) as s:
        s.wait_ready()
        for _ in range(args.cancels):
            rid = s.request("transcribe", {"audio_path": str(args.clip)})
            deadline = time.perf_counter() + 120
            while (rid, "transcribing") not in s.stage_at:
                if time.perf_counter() > deadline:
                    raise BenchError("no first token within 120 s")
                time.sleep(0.002)
            _cid, sent = s.request_at("cancel", {"id": rid})
            arrived, msg = s.reply(rid, timeout=60)
            if msg.get("error", {}).get("code") != -32800:
                raise BenchError(f"cancel did not give -32800: {msg}")
            out.append(arrived - sent)
    return out


def main() -> int:
    args = parse_args()
    import soundfile as sf

    duration = sf.info(str(args.clip)).duration
    print_header("bench_remote: sidecars on the remote backend")
    stand_in = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(ROOT))
        from tests import scripted
        from tests.fake_vllm import FakeVllm, Reply

        answer = scripted.real_format_answer().replace("<|im_start|>", "").replace("<|im_end|>", "")
        reply = Reply(answer=answer, piece_delay=args.piece_delay)
        stand_in = FakeVllm(replies=[reply]).__enter__()
        url = stand_in.url
        print(f"server: loopback stand-in, {args.piece_delay * 1000:.0f} ms per piece\n")
    else:
        print(f"server: {url} ({args.dialect} dialect, model {args.model})\n")
    try:
        levels = [int(x) for x in args.sidecars.split(",") if x.strip()]
        rows = [concurrency(url, n, args, duration) for n in levels]
        table(
            ["sidecars", "jobs", "first token s", "first segment s", "result s", "audio s/s"],
            rows,
            note=f"clip {args.clip.name}: {duration:.1f} s; medians (min–max)",
        )
        if args.cancels:
            lat = cancels(url, args)
            table(
                ["cancels", "cancel → -32800, median s", "spread"],
                [[len(lat), f"{median(lat):.3f}", spread(lat)]],
            )
    finally:
        if stand_in is not None:
            stand_in.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    run_main(main)
