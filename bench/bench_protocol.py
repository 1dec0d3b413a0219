"""Benchmark the stdio JSON-RPC server itself: start-up, ``health`` latency, pipelined throughput.

Run by hand from the repo root::

    python bench/bench_protocol.py            # full run, a few minutes
    python bench/bench_protocol.py --quick    # ~80 s
    python bench/bench_protocol.py --startup  # only 1. (spawn -> ready -> first health), ~1 min
    python bench/bench_protocol.py --profile  # also cProfile the reader path (handle_line -> _health)

Everything runs the real program (``python -m vibevoice_rpc``, cwd = repo root) over pipes, with the
tiny random-weight model of the real architecture (``vibevoice_rpc.model.tiny.tiny_model_dir()``) in fp32
on the CPU. It prints:

1. start-up, over N fresh spawns (10; quick 4) in three cases — no model configured,
   ``VIBEVOICE_MODEL_PATH=tiny``, and ``tiny`` with ``--preload`` (the model loads right after
   ``ready``): spawn -> ``ready`` line, spawn -> first ``health`` answer (the request is written
   right after spawning and waits in the pipe until the server reads stdin), ready -> that answer,
   the state it reports, and ``shutdown`` -> process exit. With ``--preload`` also ``health`` round
   trips one at a time until the model is loaded, by the state each answer reports. Targets:
   ready <= 0.25 s, ready -> first health <= 50 ms (health reads the GPU through NVML and never
   waits for torch), exit <= 2 s (docs/PROTOCOL.md).
2. ``health`` round-trip latency (request written -> answer read, one at a time), p50/p99/max:
   idle without a model, idle with the model loaded, while the model loads (``reload_model``, cold =
   the first load of a fresh server, which imports transformers; warm = a second reload), and while a
   transcription runs. For the last, ``python -m tests.scripted_server`` forces a long, real-format
   answer on the tiny model (every token is a real forward pass; no sleeps), so the worker thread is
   busy in ``generate`` for seconds; samples are split by the job's progress stage when each ping
   was sent (``encoding`` = audio encoders + prefill, ``transcribing`` = token generation).
   Target: p99 <= 20 ms while transcribing.
3. pipelined throughput: a writer thread writes N ``health`` requests as fast as the pipe takes them
   while the main thread reads the answers; round trips per second = N / (first write -> last answer).
   Idle (no model, and model loaded) and while a transcription runs. Target >= 10,000/s.

No timed assertions: the "met" column is information. Exit status 1 only when something failed
(an error response, a server that died, a missing answer).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CLIP,
    ROOT,
    BenchError,
    Server,
    median,
    percentile,
    print_header,
    result_of,
    run_main,
    server_env,
    spread,
    table,
    temp_dir,
    tiny_model,
    verdict,
)

WORDS = (
    "budget roadmap hiring revenue region schedule release design testing support pricing "
    "marketing security travel training onboarding invoices customers partners contracts"
).split()


# --- inputs ---------------------------------------------------------------------------------------


def looped_clip(seconds: float, folder: Path) -> Path:
    """The bundled speech clip looped to ``seconds``, as 16 kHz 16-bit mono WAV."""
    import numpy as np
    import soundfile as sf

    data, rate = sf.read(str(CLIP), dtype="int16", always_2d=True)
    mono = data[:, 0]
    n = int(round(seconds * rate))
    out = folder / f"speech_{seconds:g}s.wav"
    sf.write(str(out), np.resize(mono, n), rate, subtype="PCM_16")
    return out


def long_answer(duration: float, segments: int) -> str:
    """A real-format answer of ``segments`` distinct segments over ``duration`` seconds (no loops,
    so the repetition detector never stops it)."""
    import json

    step = duration / segments
    items = []
    for i in range(segments):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        items.append(
            {
                "Start": round(i * step, 2),
                "End": round((i + 1) * step, 2),
                "Speaker": i % 3,
                "Content": f"Item {i}: the {a} plan for week {(i * 7) % 53} depends on {b}.",
            }
        )
    body = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return f"<|im_start|>assistant\n{body}<|im_end|>"


# --- measurements ---------------------------------------------------------------------------------


READY_TARGET = 0.25  # spawn -> ready, seconds
HEALTH_AFTER_READY_TARGET = 50.0  # ready -> first health answer, ms (issue 11)
SHUTDOWN_TARGET = 2.0  # shutdown -> exit, seconds (docs/PROTOCOL.md)


def startup_conditions(model: Path) -> list[tuple[str, dict[str, str], list[str]]]:
    """(name, environment, arguments) of the start-up cases: no model configured; the tiny model
    named ``tiny`` (resolved at the first load, as a user would set it); and a preload of it, so
    the first health answers while the worker imports torch and loads the model."""
    bare = server_env(None)
    bare.pop("VIBEVOICE_MODEL_PATH", None)
    tiny = server_env("tiny")
    return [
        ("no model configured", bare, []),
        ("VIBEVOICE_MODEL_PATH=tiny", tiny, []),
        ("tiny, --preload (loading)", tiny, ["--preload"]),
    ]


def startup(env: dict[str, str], args: list[str], spawns: int, gap: float) -> dict[str, list[Any]]:
    """Fresh spawns: spawn -> ready, spawn -> first health answer (requested right after
    ``Popen``, so it waits in the pipe until the server reads it), ready -> that answer, the
    state it reports, shutdown -> exit. With ``--preload``: health round trips one at a time
    (``gap`` apart) until the model is loaded, by the state each answer reports."""
    out: dict[str, list[Any]] = {
        k: [] for k in ("ready", "health", "after_ready", "state", "exit", "load")
    }
    pings: dict[str, list[float]] = {}
    for _ in range(spawns):
        with Server(env, args=args) as srv:
            hid = srv.request("health")  # written at once: queued in the pipe until read
            out["ready"].append(srv.wait_ready())
            arrived, msg = srv.reply(hid, timeout=60)
            health = result_of(msg, "health")
            assert srv.ready_at is not None
            out["health"].append(arrived - srv.started)
            out["after_ready"].append((arrived - srv.ready_at) * 1000.0)
            out["state"].append(f"{health['state']}/{health['gpu_probe']}")
            while "--preload" in args and not health["model_loaded"]:
                if srv.proc.poll() is not None or arrived - srv.started > 600:
                    raise BenchError(f"the preload did not finish: {health}")
                rtt, health = srv.timed_call("health", timeout=60)
                pings.setdefault(health["state"], []).append(rtt * 1000.0)
                arrived = time.perf_counter()
                if (
                    health["last_error"]
                    and not health["model_loaded"]
                    and health["state"] == "idle"
                ):
                    raise BenchError(f"the preload failed: {health['last_error']}")
                time.sleep(gap)
            if "--preload" in args:
                out["load"].append(arrived - srv.ready_at)
            took = srv.close()
            if took is None:
                raise BenchError("the server did not exit after shutdown")
            out["exit"].append(took)
        time.sleep(0.2)
    out["pings"] = [pings]
    return out


def startup_tables(model: Path, spawns: int, gap: float) -> None:
    rows, ping_rows = [], []
    for name, env, args in startup_conditions(model):
        f = startup(env, args, spawns, gap)
        after = f["after_ready"]
        rows.append(
            [
                name,
                len(f["ready"]),
                f"{median(f['ready']):.3f}, {spread(f['ready'])}",
                f"{median(f['health']):.3f}, {spread(f['health'])}",
                f"{median(after):.1f}, {spread(after, '{:.1f}')}",
                ", ".join(f"{s} x{f['state'].count(s)}" for s in sorted(set(f["state"]))),
                f"{median(f['exit']):.3f}",
                verdict(
                    median(f["ready"]) <= READY_TARGET
                    and median(after) <= HEALTH_AFTER_READY_TARGET
                    and median(f["exit"]) <= SHUTDOWN_TARGET
                ),
            ]
        )
        for state, ms in sorted(f["pings"][0].items()):
            ping_rows.append(latency_row(f"{name}: {state}", ms, None))
        if f["load"]:
            ping_rows.append(
                [f"{name}: ready -> model loaded (s)", len(f["load"]), f"{median(f['load']):.2f}"]
                + ["-"] * 4
            )
    table(
        [
            "start-up",
            "n",
            "spawn -> ready s",
            "spawn -> 1st health s",
            "ready -> 1st health ms",
            "1st health state/gpu_probe",
            "shutdown -> exit s",
            "met",
        ],
        rows,
        note=(
            "median, spread; health requested right after spawn, answered once the server reads "
            f"stdin. Targets: ready <= {READY_TARGET:g} s, ready -> first health <= "
            f"{HEALTH_AFTER_READY_TARGET:g} ms (issue 11), shutdown -> exit <= "
            f"{SHUTDOWN_TARGET:g} s."
        ),
    )
    if ping_rows:
        table(
            ["health during a preload (ms)", "n", "p50", "p99", "max", "target p99", "met"],
            ping_rows,
            note=f"one request at a time, {gap * 1000:g} ms apart, from the first answer until "
            "model_loaded; by the state each answer reports (starting = torch importing).",
        )


def ping(
    srv: Server, stop: threading.Event | None, count: int, gap: float, stage_of: Any = None
) -> dict[str, list[float]]:
    """Sequential health round trips (ms), grouped by the stage of ``stage_of`` at send time."""
    out: dict[str, list[float]] = {}
    done = 0
    while done < count and not (stop is not None and stop.is_set()):
        label = srv.stage.get(stage_of, "") if stage_of is not None else "idle"
        hid, sent = srv.request_at("health")
        arrived, msg = srv.reply(hid, timeout=60)
        state = result_of(msg, "health")["state"]
        if stage_of is not None and state == "idle":
            label = "after"  # the job ended between the check and the answer
        out.setdefault(label, []).append((arrived - sent) * 1000.0)
        done += 1
        if gap:
            time.sleep(gap)
    return out


def latency_row(name: str, ms: list[float], target: float | None) -> list[Any]:
    if not ms:
        return [name, 0, "-", "-", "-", "-", "-"]
    p99 = percentile(ms, 99)
    return [
        name,
        len(ms),
        f"{percentile(ms, 50):.3f}",
        f"{p99:.3f}",
        f"{max(ms):.3f}",
        f"<= {target:g}" if target else "-",
        verdict(p99 <= target) if target else "-",
    ]


def while_running(srv: Server, method: str, params: Any, gap: float) -> tuple[dict, Any, float]:
    """Ping health (grouped by the job's stage) while one queued job runs; return samples, result
    and the job's wall time."""
    stop = threading.Event()
    rid, sent = srv.request_at(method, params)
    box: dict[str, Any] = {}

    def waiter() -> None:
        try:
            box["answer"] = srv.reply(rid, timeout=1800)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            box["error"] = exc
        finally:
            stop.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    samples = ping(srv, stop, 10**9, gap, stage_of=rid)
    t.join()
    if "error" in box:
        raise box["error"]
    arrived, msg = box["answer"]
    return samples, result_of(msg, method), arrived - sent


def pipelined(srv: Server, n: int, tag: str) -> float:
    """Write ``n`` health requests from a writer thread while reading the answers; return rt/s."""
    prefix = b'{"jsonrpc":"2.0","id":"' + tag.encode()
    payload = b"".join(prefix + b"%d" % i + b'","method":"health"}\n' for i in range(n))
    got = [0, 0, 0.0]  # answers, errors, time of the last
    done = threading.Event()

    def sink(now: float, line: bytes) -> bool:
        if not line.startswith(prefix):
            return False  # a notification or another answer: parsed as usual
        got[0] += 1
        if b'"result":' not in line:
            got[1] += 1
        got[2] = now
        if got[0] >= n:
            done.set()
        return True

    stdin = srv.proc.stdin
    assert stdin is not None
    started = [0.0]

    def writer() -> None:
        started[0] = time.perf_counter()
        with srv._write_lock:  # noqa: SLF001 - our own helper
            for i in range(0, len(payload), 1 << 16):
                stdin.write(payload[i : i + (1 << 16)])
            stdin.flush()

    srv.raw_sink = sink
    try:
        th = threading.Thread(target=writer, daemon=True)
        th.start()
        if not done.wait(120):
            raise BenchError(f"pipelined: only {got[0]} of {n} answers after 120 s")
        th.join()
    finally:
        srv.raw_sink = None
    if got[1]:
        raise BenchError(f"pipelined: {got[1]} of {n} health requests were answered with an error")
    return n / (got[2] - started[0])


def throughput_rows(srv: Server, name: str, n: int, runs: int) -> list[Any]:
    rates = [pipelined(srv, n, f"{name[:1]}{k}-") for k in range(runs)]
    return [
        name,
        f"{runs} x {n}",
        f"{median(rates):,.0f}",
        spread(rates, "{:,.0f}"),
        ">= 10,000",
        verdict(median(rates) >= 10_000),
    ]


def profile_reader(n: int) -> None:
    """cProfile ``Dispatcher.handle_line`` for ``n`` health lines, in process, with the real Engine
    (torch imported, no model) and a real ``LineWriter`` on /dev/null."""
    sys.path.insert(0, str(ROOT))
    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine
    from vibevoice_rpc.protocol.dispatcher import Dispatcher
    from vibevoice_rpc.protocol.transport import LineWriter

    engine = Engine(Config(precision="fp32"))
    engine.local._import_torch()  # noqa: SLF001 - what warm_up() runs on its thread
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        dispatcher = Dispatcher(engine, LineWriter(fd).write)
        lines = [b'{"jsonrpc":"2.0","id":%d,"method":"health"}' % i for i in range(n)]
        for line in lines[:200]:
            dispatcher.handle_line(line)
        t0 = time.perf_counter()
        for line in lines:
            dispatcher.handle_line(line)
        plain = (time.perf_counter() - t0) / n
        prof = cProfile.Profile()
        prof.enable()
        for line in lines:
            dispatcher.handle_line(line)
        prof.disable()
    finally:
        os.close(fd)
    print(
        f"reader path in process: {plain * 1e6:.1f} µs per health line "
        f"(= {1 / plain:,.0f}/s without the pipe), {n} lines; cProfile, by own time:"
    )
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(14)
    text = out.getvalue()
    print(text[text.find("   ncalls") :].rstrip() + "\n", flush=True)


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="fewer spawns/samples (well under a minute)"
    )
    p.add_argument("--profile", action="store_true", help="also cProfile the reader path")
    p.add_argument(
        "--startup", action="store_true", help="only start-up: spawn -> ready -> first health"
    )
    p.add_argument("--spawns", type=int, help="fresh spawns for start-up (10; quick 4)")
    p.add_argument("--pings", type=int, help="idle health round trips (5000; quick 500)")
    p.add_argument("--loads", type=int, help="fresh servers for the loading case (3; quick 1)")
    p.add_argument("--jobs", type=int, help="transcriptions pinged during (3; quick 1)")
    p.add_argument("--pipeline", type=int, help="requests per pipelined run (20000; quick 5000)")
    p.add_argument("--runs", type=int, help="pipelined runs per condition (5; quick 3)")
    p.add_argument(
        "--gap",
        type=float,
        default=0.001,
        help="pause between pings while busy/loading, seconds (0.001)",
    )
    args = p.parse_args()
    q = args.quick
    spawns = args.spawns or (4 if q else 10)
    pings = args.pings or (500 if q else 5000)
    loads = args.loads or (1 if q else 3)
    jobs = args.jobs or (1 if q else 3)
    n_pipe = args.pipeline or (5000 if q else 20000)
    runs = args.runs or (3 if q else 5)
    audio_seconds, segments = (30.0, 12) if q else (60.0, 40)

    print_header("bench_protocol: start-up, health latency, pipelined throughput")
    model = tiny_model()
    env = server_env(model)
    work = temp_dir("vibevoice-bench-protocol-")
    print(f"model     tiny random-weight VibeVoice-ASR at {model} (fp32, CPU)\n", flush=True)

    # 1. start-up ------------------------------------------------------------------------------
    startup_tables(model, spawns, args.gap)
    if args.startup:
        return 0

    lat: list[list[Any]] = []
    thr: list[list[Any]] = []

    # 2a/3a. idle, without and with the model ---------------------------------------------------
    with Server(env) as srv:
        srv.wait_ready()
        srv.timed_call("health", timeout=60)
        lat.append(latency_row("idle, no model", ping(srv, None, pings, 0.0)["idle"], None))
        thr.append(throughput_rows(srv, "idle, no model", n_pipe, runs))
        srv.timed_call("reload_model", {"precision": "fp32"}, timeout=600)
        lat.append(latency_row("idle, model loaded", ping(srv, None, pings, 0.0)["idle"], None))
        thr.append(throughput_rows(srv, "idle, model loaded", n_pipe, runs))

    # 2b. while the model loads -----------------------------------------------------------------
    cold: list[float] = []
    warm: list[float] = []
    load_times: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(loads):
        with Server(env) as srv:
            srv.wait_ready()
            srv.timed_call("health", timeout=60)  # torch imported: only the model load remains
            for kind, bucket in (("cold", cold), ("warm", warm)):
                samples, _, took = while_running(
                    srv, "reload_model", {"precision": "fp32"}, args.gap
                )
                for values in samples.values():
                    bucket.extend(values)
                load_times[kind].append(took)
    lat.append(
        latency_row(f"model loading, cold (load {median(load_times['cold']):.2f} s)", cold, None)
    )
    lat.append(
        latency_row(f"model loading, warm reload ({median(load_times['warm']):.2f} s)", warm, None)
    )

    # 2c/3b. while transcribing (scripted long answer) ------------------------------------------
    script = work / "answer.txt"
    script.write_text(long_answer(audio_seconds, segments), encoding="utf-8")
    audio = looped_clip(audio_seconds, work)
    scripted_env = dict(env, VIBEVOICE_TEST_SCRIPT=str(script))
    by_stage: dict[str, list[float]] = {}
    info = []
    with Server(scripted_env, module="tests.scripted_server") as srv:
        srv.wait_ready()
        srv.timed_call("health", timeout=60)
        srv.timed_call("reload_model", {"precision": "fp32"}, timeout=600)
        params = {"audio_path": str(audio), "max_new_tokens": 4096}
        for _ in range(jobs):
            samples, result, took = while_running(srv, "transcribe", params, args.gap)
            meta = result["metadata"]
            info.append((took, meta["generated_tokens"], len(result["segments"])))
            for stage, values in samples.items():
                by_stage.setdefault(stage, []).extend(values)
        # pipelined throughput while a job runs (the answers race the worker's notifications)
        rates = []
        for k in range(runs):
            rid = srv.request("transcribe", params)
            deadline = time.monotonic() + 300
            while srv.stage.get(rid) != "transcribing":  # generating tokens
                if time.monotonic() > deadline:
                    raise BenchError("the transcription never reached the transcribing stage")
                answer = srv.poll(rid)
                if answer is not None:
                    result_of(answer[1], "transcribe")
                    raise BenchError("the transcription ended before it generated a token")
                time.sleep(0.01)
            rates.append(pipelined(srv, n_pipe, f"t{k}-"))
            srv.result(rid, 600, "the transcribe response")
        thr.append(
            [
                "while transcribing",
                f"{runs} x {n_pipe}",
                f"{median(rates):,.0f}",
                spread(rates, "{:,.0f}"),
                ">= 10,000",
                verdict(median(rates) >= 10_000),
            ]
        )
    busy = by_stage.get("transcribing", [])
    lat.append(latency_row("transcribing: encoding + prefill", by_stage.get("encoding", []), None))
    lat.append(latency_row("transcribing: generating tokens", busy, 20.0))
    every = [v for k, vs in by_stage.items() if k not in ("after",) for v in vs]
    lat.append(latency_row("transcribing: whole job", every, 20.0))

    took, tokens, segs = zip(*info, strict=True)
    table(
        ["health round trip (ms)", "n", "p50", "p99", "max", "target p99", "met"],
        lat,
        note=(
            f"one request at a time; {args.gap * 1000:g} ms pause between pings while loading or "
            f"transcribing. Transcription: {audio_seconds:g} s of looped speech, scripted answer of "
            f"{segs[0]} segments / {tokens[0]} tokens forced on the tiny model, "
            f"{median(took):.1f} s per job ({spread(list(took), '{:.1f}')})."
        ),
    )
    table(
        ["pipelined health", "runs x requests", "median rt/s", "spread", "target", "met"],
        thr,
        note="writer thread writes all requests in 64 KiB chunks; rate = requests / (first write "
        "-> last answer read); the client shares the machine's cores with the server.",
    )
    if args.profile:
        profile_reader(20000 if not q else 5000)
    return 0


if __name__ == "__main__":
    run_main(main)
