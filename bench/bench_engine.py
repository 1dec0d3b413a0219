"""Benchmark the model path through the server: overhead against plain transformers, memory over
many jobs, and time/memory against audio length.

Run by hand from the repo root::

    python bench/bench_engine.py            # full run (~3 min on a quiet 2-core machine)
    python bench/bench_engine.py --quick    # ~20 s: one process pair, 10 jobs, 1 and 5 min

All of it runs the real code path on the tiny random-weight model of the real architecture
(``vibevoice_rpc.model.tiny.tiny_model_dir()``, fp32 on the CPU); its words are noise, so every
transcription is bounded with ``max_new_tokens``. It prints:

1. overhead: RPC ``transcribe`` (client side: request written -> response read, model already
   loaded) against the direct recipe ``load_audio -> processor.apply_transcription_request ->
   model.generate(..., sample=False) -> processor.decode`` run in a separate process
   (bench/_direct_worker.py, timed inside that process). Separate, so both sides run under the same
   conditions — a fresh interpreter with its own torch thread pool, no benchmark threads sharing its
   GIL — and only one of the two works at any moment. Interleaved round by round (the order flips
   every round), same audio (the bundled 11.5 s clip), same ``max_new_tokens``, same token count
   (checked), over 3 fresh process pairs (quick: 1) x 6 rounds: one fresh process can be 30-40 %
   slower than another for its whole life (server or direct alike), so one pair is not enough. Two variants: the tiny model's own output, and a scripted real-format answer (forced
   with tests/scripted.py's logits processor on both sides) so the server really parses and streams
   ``segment`` notifications. Target: RPC / direct <= 1.05.
2. memory over jobs: VmRSS of one fresh server (/proc/<pid>/status) after job 1 and every 25 jobs
   up to 200 (quick: 1, 5, 10), transcribing the clip with a short scripted answer (2 segments
   parsed and streamed per job). Target: growth after 50 jobs vs after 1 <= 5 %.
3. audio length: 1, 10 and 60 min (quick: 1 and 5) of the looped speech clip as 16 kHz WAV; for each
   a fresh server loads the model (``reload_model``), then transcribes the file (``max_new_tokens``
   fixed at 32, so the figures are the encoders + prefill); wall time per run, and peak RSS
   (VmHWM) of that fresh server, also over its RSS right after the load. Growth is linear when
   seconds per audio-minute and MiB per audio-minute stay flat across lengths.

No timed assertions: the "met" column is information. Exit status 1 only when something failed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CLIP,
    ROOT,
    BenchError,
    Server,
    cpu_seconds,
    median,
    mib,
    print_header,
    run_main,
    server_env,
    spread,
    table,
    temp_dir,
    tiny_model,
    verdict,
)


class Direct:
    """bench/_direct_worker.py as a child process."""

    def __init__(self, model: Path, env: dict[str, str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_direct_worker.py"), str(model)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=str(ROOT),
        )
        self.log = log
        self.ready: dict[str, Any] | None = None

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise BenchError(f"the direct worker died\n{tail}")
        return json.loads(line)

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self._line()
        return self.ready

    def run(self, audio: Path, max_new_tokens: int, script: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cmd = {"audio": str(audio), "max_new_tokens": max_new_tokens, "script": script}
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        out = self._line()
        if "error" in out:
            raise BenchError(f"direct run failed: {out['error']}")
        return out

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def rpc_transcribe(srv: Server, audio: Path, max_new_tokens: int) -> tuple[float, dict[str, Any]]:
    took, result = srv.timed_call(
        "transcribe", {"audio_path": str(audio), "max_new_tokens": max_new_tokens}, timeout=3600
    )
    return took, result


class Pool:
    """Servers spawned ahead of time (``--quick``): their start-up and model loads overlap, before
    anything is timed. Without ``enabled`` each server is spawned when its part needs it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._servers: dict[str, Server] = {}
        self._loaded: set[str] = set()

    def spawn(self, key: str, env: dict[str, str], module: str = "vibevoice_rpc") -> None:
        if self.enabled:
            self._servers[key] = Server(env, module=module)

    def load_all(self) -> None:
        """Wait for every spawned server, then load the model in all of them at once."""
        pending = []
        for key, srv in self._servers.items():
            if key in self._loaded:
                continue
            self._loaded.add(key)
            srv.wait_ready()
            srv.timed_call("health", timeout=60)
            pending.append((srv, srv.request("reload_model", {"precision": "fp32"})))
        for srv, rid in pending:
            srv.result(rid, 600, "the reload_model response")

    def get(self, key: str, env: dict[str, str], module: str = "vibevoice_rpc") -> Server:
        """The server for ``key``, with the model loaded (a fresh one when not pre-spawned)."""
        srv = self._servers.pop(key, None)
        if srv is None:
            srv = Server(env, module=module)
            srv.wait_ready()
            srv.timed_call("health", timeout=60)
            srv.timed_call("reload_model", {"precision": "fp32"}, timeout=600)
        return srv


# --- 1. overhead -------------------------------------------------------------------------------


class Overhead:
    """Interleaved RPC / direct rounds of one variant, accumulated over fresh process pairs."""

    def __init__(self, name: str, tokens: int, script: str | None) -> None:
        self.name, self.tokens, self.script = name, tokens, script
        self.v: dict[str, list[float]] = {}
        self.pair_ratios: list[float] = []
        self.seen: set[tuple[str, int, int]] = set()

    def add(self, key: str, value: float) -> None:
        self.v.setdefault(key, []).append(value)

    def measure(self, srv: Server, direct: Direct, rounds: int, warmup: int) -> None:
        for _ in range(warmup):  # warm-up runs on both sides, not counted
            rpc_transcribe(srv, CLIP, self.tokens)
            direct.run(CLIP, self.tokens, self.script)
        ratios = []
        for i in range(rounds):
            order = ("rpc", "direct") if i % 2 == 0 else ("direct", "rpc")
            pair: dict[str, float] = {}
            for side in order:
                if side == "rpc":
                    c0 = cpu_seconds(srv.pid)
                    took, r = rpc_transcribe(srv, CLIP, self.tokens)
                    pair["rpc_cpu"] = cpu_seconds(srv.pid) - c0
                    pair["rpc"] = took
                    meta = r["metadata"]
                    self.add("inside", meta["processing_time"])
                    self.seen.add(("rpc", meta["generated_tokens"], len(r["segments"])))
                else:
                    c0 = cpu_seconds(direct.proc.pid)
                    d = direct.run(CLIP, self.tokens, self.script)
                    pair["direct_cpu"] = cpu_seconds(direct.proc.pid) - c0
                    pair["direct"] = d["total_s"]
                    for key in ("audio_s", "prepare_s", "generate_s", "decode_s"):
                        self.add(key, d[key])
                    self.seen.add(("direct", d["tokens"], d["segments"]))
            for key in ("rpc", "direct", "rpc_cpu", "direct_cpu"):
                self.add(key, pair[key])
            ratios.append(pair["rpc"] / pair["direct"])
            if pair["direct_cpu"]:
                self.add("cpu_ratio", pair["rpc_cpu"] / pair["direct_cpu"])
        self.v.setdefault("ratio", []).extend(ratios)
        self.pair_ratios.append(median(ratios))

    def row(self) -> list[Any]:
        v = self.v
        ratio = median(v["ratio"])
        return [
            self.name,
            f"{len(self.pair_ratios)} x {len(v['ratio']) // len(self.pair_ratios)}",
            f"{median(v['rpc']):.3f}",
            spread(v["rpc"]),
            f"{median(v['direct']):.3f}",
            spread(v["direct"]),
            f"{ratio:.3f}",
            spread(v["ratio"]),
            ", ".join(f"{r:.3f}" for r in self.pair_ratios),
            f"{median(v['rpc_cpu']):.2f} / {median(v['direct_cpu']):.2f} = "
            f"{median(v.get('cpu_ratio', [math.nan])):.3f}",
            "<= 1.05",
            verdict(ratio <= 1.05),
        ]

    def note(self) -> str:
        v, counts = self.v, sorted(self.seen)
        rpc_tokens = {t for side, t, _ in counts if side == "rpc"}
        dir_tokens = {t for side, t, _ in counts if side == "direct"}
        same = rpc_tokens == dir_tokens and len(rpc_tokens) == 1
        return (
            f"{self.name}: generated tokens rpc {sorted(rpc_tokens)} / direct {sorted(dir_tokens)}"
            f"{'' if same else '  <-- NOT the same work'}; segments rpc "
            f"{sorted({s for side, _, s in counts if side == 'rpc'})} / direct "
            f"{sorted({s for side, _, s in counts if side == 'direct'})}; the server's own "
            f"processing_time median {median(v['inside']):.3f} s; direct medians: load_audio "
            f"{median(v['audio_s']):.3f} s, processor {median(v['prepare_s']):.3f} s, "
            f"generate {median(v['generate_s']):.3f} s, decode {median(v['decode_s']):.4f} s"
        )


# --- 2. memory over jobs ------------------------------------------------------------------------


SHORT_ANSWER = [
    {"Start": 0, "End": 5.2, "Speaker": 0, "Content": "Good morning, shall we start?"},
    {"Start": 5.2, "End": 11.2, "Speaker": 1, "Content": "Yes, the budget is first."},
]


def short_script_env(env: dict[str, str], work: Path) -> dict[str, str]:
    from tests.scripted import real_format_answer

    script = work / "short_answer.txt"
    script.write_text(real_format_answer(SHORT_ANSWER), encoding="utf-8")
    return dict(env, VIBEVOICE_TEST_SCRIPT=str(script))


def memory_over_jobs(pool: Pool, env: dict[str, str], jobs: int, every: int, tokens: int) -> None:
    rows = []
    series: list[tuple[int, int]] = []
    with pool.get("memory", env, "tests.scripted_server") as srv:
        loaded_rss = srv.rss()
        first = None
        t_block = time.perf_counter()
        done_at = 0
        for job in range(1, jobs + 1):
            took, r = rpc_transcribe(srv, CLIP, tokens)
            if not r["segments"]:
                raise BenchError("the scripted server returned no segments")
            if job == 1 or job % every == 0 or job == jobs:
                rss, hwm = srv.rss(), srv.hwm()
                now = time.perf_counter()
                per_job = (now - t_block) / max(1, job - done_at) if job > 1 else took
                t_block, done_at = now, job
                first = first or rss
                series.append((job, rss))
                growth = (rss - first) / first * 100
                target = "<= 5 %" if job == 50 or (jobs < 50 and job == jobs) else ""
                rows.append(
                    [
                        job,
                        mib(rss),
                        f"{growth:+.2f} %",
                        mib(hwm),
                        f"{per_job:.2f}",
                        target,
                        verdict(growth <= 5.0) if target else "",
                    ]
                )
    table(
        ["after job", "VmRSS MiB", "vs job 1", "VmHWM MiB", "s/job", "target", "met"],
        rows,
        note=f"one fresh server (tests.scripted_server with a 2-segment answer forced, so every "
        f"job parses and streams segments), model loaded first (reload_model; VmRSS then "
        f"{mib(loaded_rss)} MiB), the 11.5 s clip each time, max_new_tokens {tokens}; s/job is "
        "the mean since the previous row."
        + (
            f"\nafter the first {series[1][0]} jobs: {series[-1][0] - series[1][0]} more jobs moved "
            f"VmRSS by {(series[-1][1] - series[1][1]) / series[1][1] * 100:+.2f} % "
            "(a one-time step after job 1 is glibc's per-thread malloc arena settling; "
            "MALLOC_ARENA_MAX=1 removes it)"
            if len(series) >= 3
            else ""
        ),
    )


# --- 3. audio length ----------------------------------------------------------------------------


def looped_wav(minutes: float, folder: Path) -> Path:
    import numpy as np
    import soundfile as sf

    out = folder / f"speech_{minutes:g}min.wav"
    data, rate = sf.read(str(CLIP), dtype="int16", always_2d=True)
    sf.write(str(out), np.resize(data[:, 0], int(minutes * 60 * rate)), rate, subtype="PCM_16")
    return out


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """``y = a + b*x`` fitted on relative errors (weights 1/y², so a 1-min point counts as much as a
    60-min one); returns (a, b, worst residual as % of the measured value)."""
    w = [1.0 / (y * y) if y else 1.0 for _, y in points]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _) in zip(w, points, strict=True)) / sw
    my = sum(wi * y for wi, (_, y) in zip(w, points, strict=True)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, (x, _) in zip(w, points, strict=True))
    sxy = sum(wi * (x - mx) * (y - my) for wi, (x, y) in zip(w, points, strict=True))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / abs(y) * 100 if y else 0.0 for x, y in points)
    return a, b, worst


def by_length(
    pool: Pool, env: dict[str, str], lengths: list[float], reps: int, tokens: int, work: Path
) -> None:
    rows, t_points, m_points = [], [], []
    hwm_load = 0
    for minutes in lengths:
        audio = looped_wav(minutes, work)
        n = reps if minutes < 30 else max(1, min(reps, 2))
        times: list[float] = []
        with pool.get(f"length {minutes:g}", env) as srv:
            after_load = srv.rss()
            hwm_load = srv.hwm()
            windows = None
            peak_first = None
            for _ in range(n):
                took, r = rpc_transcribe(srv, audio, tokens)
                times.append(took)
                windows = r["metadata"]["windows"]
                if peak_first is None:
                    peak_first = srv.hwm()
            after_jobs = srv.rss()
        assert peak_first is not None
        extra = peak_first - after_load
        t_med = median(times)
        t_points.append((minutes, t_med))
        m_points.append((minutes, extra / 2**20))
        rows.append(
            [
                f"{minutes:g}",
                n,
                f"{t_med:.2f}",
                spread(times, "{:.2f}"),
                f"{t_med / minutes:.3f}",
                mib(after_load),
                mib(peak_first),
                mib(extra),
                f"{extra / minutes / 2**20:.1f}",
                mib(after_jobs),
                windows,
            ]
        )
        print(f"  {minutes:g} min done ({t_med:.1f} s per run)", flush=True)
        audio.unlink()
    table(
        [
            "audio min",
            "runs",
            "median s",
            "spread s",
            "s / audio-min",
            "RSS after load MiB",
            "peak MiB (VmHWM)",
            "peak - load MiB",
            "MiB / audio-min",
            "RSS after runs MiB",
            "windows",
        ],
        rows,
        note=f"a fresh server per length; max_new_tokens {tokens}; time = request written -> "
        "response read; peak = VmHWM after the first run (it includes the load's own peak: "
        f"VmHWM right after the load was {mib(hwm_load)} MiB in the last server).",
    )
    if len(t_points) >= 2:
        a, b, worst_t = linear_fit(t_points)
        c, d, worst_m = linear_fit(m_points)
        exact = " (2 points: the line is exact, no test of linearity)" if len(t_points) == 2 else ""
        print(
            f"linear fit over {', '.join(f'{m:g}' for m, _ in t_points)} min{exact}:\n"
            f"  time          = {a:.2f} s + {b:.3f} s per audio-minute; worst residual "
            f"{worst_t:.1f} % of a measured value\n"
            f"  peak - load   = {c:.1f} MiB + {d:.2f} MiB per audio-minute; worst residual "
            f"{worst_m:.1f} %\n"
            "  marginal, between consecutive lengths: "
            + "; ".join(
                f"{m0:g}->{m1:g} min {(t1 - t0) / (m1 - m0):.3f} s/min, "
                f"{(r1 - r0) / (m1 - m0):.1f} MiB/min"
                for (m0, t0), (m1, t1), (_, r0), (_, r1) in zip(
                    t_points, t_points[1:], m_points, m_points[1:], strict=False
                )
            )
            + "\n"
            "  (linear = residuals within the run-to-run spread, roughly <= 10-15 %; the decoded "
            "audio alone is 5.5 MiB per minute at 24 kHz float32)\n",
            flush=True,
        )


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and jobs, 1 and 5 min")
    p.add_argument(
        "--pairs", type=int, help="fresh server + direct-worker process pairs (3; quick 1)"
    )
    p.add_argument(
        "--rounds", type=int, help="interleaved rounds per variant and pair (6; quick 3)"
    )
    p.add_argument("--tokens", type=int, default=64, help="max_new_tokens, overhead (64)")
    p.add_argument("--jobs", type=int, help="jobs for the memory series (200; quick 10)")
    p.add_argument("--lengths", help="comma-separated minutes (1,10,60; quick 1,5)")
    p.add_argument("--reps", type=int, help="runs per length (3, at most 2 from 30 min; quick 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="set OMP_NUM_THREADS for the servers and the direct worker (default: torch's own "
        "choice, one per core); 1 makes a shared machine's figures far steadier",
    )
    p.add_argument(
        "--only",
        default="overhead,memory,length",
        help="comma-separated parts to run: overhead, memory, length",
    )
    args = p.parse_args()
    q = args.quick
    pairs = args.pairs or (1 if q else 3)
    per_pair = args.rounds or (3 if q else 6)
    scripted_per_pair = max(1, per_pair - 1) if q else per_pair
    warmup = 1 if q else 2
    jobs = args.jobs or (10 if q else 200)
    every = 25 if jobs >= 50 else max(1, jobs // 2)
    lengths = [float(x) for x in (args.lengths or ("1,5" if q else "1,10,60")).split(",")]
    reps = args.reps or (1 if q else 3)
    parts = set(args.only.split(","))

    sys.path.insert(0, str(ROOT))  # tests.scripted
    print_header("bench_engine: RPC vs direct transformers, RSS over jobs, time/RSS vs length")
    model = tiny_model()
    env = server_env(model)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    threads = env.get("OMP_NUM_THREADS")
    print(
        f"threads   torch intra-op threads in the servers and the direct worker: "
        f"{'OMP_NUM_THREADS=' + threads if threads else 'default (one per core)'}"
    )
    scripted_env = dict(env, VIBEVOICE_TEST_SCRIPT="default")
    work = temp_dir("vibevoice-bench-engine-")
    print(f"model     tiny random-weight VibeVoice-ASR at {model} (fp32, CPU)\n", flush=True)

    memory_env = short_script_env(env, work)
    pool = Pool(q)  # quick: spawn everything now, so the loads overlap (nothing is timed yet)
    if "overhead" in parts:
        pool.spawn("overhead", env)
        pool.spawn("overhead scripted", scripted_env, "tests.scripted_server")
    if "memory" in parts:
        pool.spawn("memory", memory_env, "tests.scripted_server")
    if "length" in parts:
        for minutes in lengths:
            pool.spawn(f"length {minutes:g}", env)

    if "overhead" in parts:
        from tests.scripted import real_format_answer

        variants = [
            Overhead("model's own output", args.tokens, None),
            Overhead("scripted answer, segments", 4096, real_format_answer()),
        ]
        for k in range(pairs):  # a fresh server pair + direct worker each time
            direct = Direct(model, env, work / f"direct{k}.log")
            try:
                pool.load_all()
                with (
                    pool.get("overhead" if k == 0 else "", env) as srv,
                    pool.get(
                        "overhead scripted" if k == 0 else "", scripted_env, "tests.scripted_server"
                    ) as s2,
                ):
                    direct.wait_ready()
                    variants[0].measure(srv, direct, per_pair, warmup)
                    variants[1].measure(s2, direct, scripted_per_pair, warmup)
            finally:
                direct.close()
            print(f"  process pair {k + 1}/{pairs} done", flush=True)
        table(
            [
                "transcribe 11.5 s clip",
                "pairs x rounds",
                "RPC s",
                "RPC spread",
                "direct s",
                "direct spread",
                "RPC/direct",
                "ratio spread",
                "per pair",
                "CPU s RPC / direct = ratio",
                "target",
                "met",
            ],
            [v.row() for v in variants],
            note="\n".join(
                [
                    "RPC = client side, request written -> response read (audio decode, queue, "
                    "engine, streamer, parser, JSON); direct = timed inside its own process "
                    "(audio decode included). RPC/direct = median of the per-round ratios (the "
                    "target applies to it); 'per pair' = that median within each fresh pair of "
                    "processes (how much one process's luck moves it). CPU s = user+system time of "
                    "the whole process during the job (/proc/<pid>/stat, 10 ms ticks).",
                    *(v.note() for v in variants),
                ]
            ),
        )

    if "memory" in parts:
        pool.load_all()
        memory_over_jobs(pool, memory_env, jobs, every, 4096)

    if "length" in parts:
        pool.load_all()
        by_length(pool, env, lengths, reps, 32, work)
    return 0


if __name__ == "__main__":
    run_main(main)
