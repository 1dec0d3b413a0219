"""Benchmark VibeVoice-ASR per precision on a CUDA GPU: load time, real-time factor, peak VRAM.

Run by hand on a machine with an NVIDIA GPU::

    python bench/gpu.py --audio meeting.opus                       # fp16,bf16,int8,nf4, 1 run each
    python bench/gpu.py --model /models/VibeVoice-ASR-HF --audio a.wav --precisions int8,nf4 --runs 3
    python bench/gpu.py --audio a.wav --json results.json          # also write the figures as JSON

It measures the product's own path, not a copy of it: one :class:`vibevoice_rpc.engine.Engine`,
configured from the environment like the server (``VIBEVOICE_MODEL_PATH``, ``VIBEVOICE_*``; flags
override), loads each precision with ``Engine.reload`` — what ``reload_model`` runs:
``loader.prepare_load`` (the VRAM plan), ``loader.load_model`` (``from_pretrained`` straight onto
the GPU, encoder dtype and chunk, encoder parking, the Windows memory cap) — and transcribes the file
``--runs`` times with ``Engine.transcribe`` (decode, windows, generation, parsing), as the server's
worker thread does for ``transcribe``. It prints: load time, real-time factor (the result's
``processing_time`` / audio duration), peak VRAM (``torch.cuda.max_memory_allocated``, reset before
the load and before each run) next to the planner's prediction for this audio's window in the mode
the engine loaded, and the segment count. The predicted-vs-measured columns calibrate the planner's
margins (docs/MEMORY.md).

Without CUDA it prints a message and exits with status 2. ``--device cpu`` runs the same code path on
the CPU (a smoke test, e.g. ``VIBEVOICE_MODEL_PATH=tiny``; no VRAM figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibevoice_rpc import planner  # noqa: E402  (cheap: no torch import)
from vibevoice_rpc.messages import PRECISIONS  # noqa: E402

NO_CUDA_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder or 'tiny' (default: where the server looks — VIBEVOICE_MODEL_PATH, "
        "download_model's folder, the Hugging Face cache)",
    )
    p.add_argument("--audio", required=True, help="audio file (any format the server reads)")
    p.add_argument(
        "--precisions",
        default="fp16,bf16,int8,nf4",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated, from {','.join(PRECISIONS)}",
    )
    p.add_argument("--runs", type=int, default=1, help="transcriptions per precision (default 1)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: the engine's budget (12/s of audio + 256)",
    )
    p.add_argument("--prompt", default=None, help="optional context text (the request's context)")
    p.add_argument(
        "--force",
        action="store_true",
        help="load even when the planner says no (VIBEVOICE_ALLOW_CPU_OFFLOAD)",
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="write the results to this file")
    p.add_argument("--log-level", default="WARNING", help="the engine's stderr log level")
    args = p.parse_args(argv)
    bad = [x for x in args.precisions if x not in PRECISIONS]
    if bad or not args.precisions:
        p.error(f"--precisions: unknown {bad}; choose from {','.join(PRECISIONS)}")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def make_engine(args: argparse.Namespace) -> tuple[Any, Any]:
    """The server's engine and its configuration, read as the server reads it, flags on top."""
    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine

    config = Config.from_env()
    config.model_path = args.model or config.model_path
    config.device = args.device
    config.allow_cpu_offload = args.force or config.allow_cpu_offload
    config.precision = args.precisions[0]
    return Engine(config), config


def job(method: str, params: Any) -> Any:
    """A job as the dispatcher makes it; nobody listens to its notifications here."""
    from vibevoice_rpc.job import Job

    return Job(f"bench-{method}", method, params, None, None)


def predicted(config: Any, meta: Any, duration: float, budget: int) -> Any:
    """The planner's figures for this audio's window in the mode the engine loaded. ``meta``: a
    transcription's metadata, whose ``plan`` is the load's (sized for the longest window, not for
    this file) and ``model`` the checkpoint folder."""
    import torch
    from transformers import AutoConfig

    loaded = meta.plan
    window = min(duration, config.max_window_seconds, loaded["max_window_seconds"])
    cuda = loaded["device"] == "cuda"
    plan = planner.plan(
        AutoConfig.from_pretrained(meta.model),
        loaded["precision"],
        audio_seconds=window,
        free_vram_bytes=loaded["free_vram_bytes"],
        total_vram_bytes=loaded["total_vram_bytes"],
        device=loaded["device"],
        bf16_supported=torch.cuda.is_bf16_supported() if cuda else True,  # as the loader asks
        max_new_tokens=budget,
        allow_cpu_offload=config.allow_cpu_offload,
    )
    mode = ("lm_dtype", "encoder_dtype", "encoders_on_cpu_between_jobs", "encoder_chunk_samples")
    if any(getattr(plan, k) != loaded[k] for k in mode):
        print(
            f"    note: for a {window:.0f} s window the planner would pick {plan.summary}; the "
            f"engine loaded {loaded['summary']} (planned for its longest window): the prediction "
            "is for the planner's pick"
        )
    return plan


def bench_precision(
    args: argparse.Namespace, engine: Any, config: Any, precision: str, duration: float, budget: int
) -> dict[str, Any]:
    import torch

    from vibevoice_rpc.errors import ModelDoesNotFit, OutOfMemory, RpcError
    from vibevoice_rpc.messages import ReloadParams, TranscribeParams

    cuda = args.device == "cuda"
    result: dict[str, Any] = {"precision": precision, "runs": []}
    params = ReloadParams(precision=precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:  # what reload_model runs: plan (loader.prepare_load), then load (loader.load_model)
        engine.reload(params, job("reload_model", params))
    except ModelDoesNotFit as err:
        print(f"  {precision}: skipped: {err.message} (--force to try anyway)")
        result["skipped"] = err.message
        return result
    except RpcError as err:
        print(f"  {precision}: load failed: {err.message}")
        result["error"] = err.message
        return result
    if cuda:
        torch.cuda.synchronize()
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    if cuda:
        result["weights_bytes"] = torch.cuda.memory_allocated()
        result["load_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(
        f"  loaded in {result['load_seconds']:.1f} s"
        + (f"; on the GPU after the load {_gib(result['weights_bytes'])} GiB" if cuda else "")
    )

    params = TranscribeParams(
        audio_path=args.audio, max_new_tokens=args.max_new_tokens, context=args.prompt
    )
    for i in range(args.runs):
        run: dict[str, Any] = {"run": i + 1}
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            out = engine.transcribe(params, job("transcribe", params))
        except OutOfMemory as err:
            run["error"] = err.message
            print(f"    run {i + 1}: {err.message}")
            result["runs"].append(run)
            continue
        meta = out.metadata
        if "plan" not in result and meta.plan is not None:  # the load's plan, as the app sees it
            print(f"  plan: {meta.plan['summary']}")
            for note in meta.plan["notes"]:
                print(f"    note: {note}")
            result["load_plan"] = meta.plan
            result["plan"] = predicted(config, meta, duration, budget).to_dict()
        run.update(
            seconds=meta.processing_time,
            rtf=round(meta.processing_time / duration, 4),
            new_tokens=meta.generated_tokens,
            segments=len(out.segments),
            windows=meta.windows,
            precision=meta.model_precision,
        )
        if cuda:
            run["peak_bytes"] = torch.cuda.max_memory_allocated()
            run["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
        peak = f", peak VRAM {_gib(run['peak_bytes'])} GiB" if cuda else ""
        print(
            f"    run {i + 1}: {meta.processing_time:.1f} s, RTF {run['rtf']:.3f}, "
            f"{meta.generated_tokens} tokens, {len(out.segments)} segments, {meta.windows} "
            f"window(s), {meta.model_precision}{peak}"
        )
        result["runs"].append(run)
    return result


def print_table(results: list[dict[str, Any]], cuda: bool) -> None:
    print()
    header = f"{'precision':<10}{'load s':>8}{'RTF':>8}{'segments':>10}"
    if cuda:
        header += f"{'peak GiB':>10}{'planned GiB':>13}"
    print(header)
    for r in results:
        runs = [x for x in r["runs"] if "rtf" in x]
        if not runs:
            why = (
                r.get("skipped")
                or r.get("error")
                or (r["runs"][0].get("error") if r["runs"] else "no runs")
            )
            print(f"{r['precision']:<10}  {why}")
            continue
        best = min(runs, key=lambda x: x["rtf"])
        line = f"{r['precision']:<10}{r['load_seconds']:>8.1f}{best['rtf']:>8.3f}{best['segments']:>10}"
        if cuda:
            peak = max(x["peak_bytes"] for x in runs)
            line += f"{_gib(peak):>10}{_gib(r['plan']['total_bytes']):>13}"
        print(line)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vibevoice_rpc.config import setup_logging

    setup_logging(args.log_level)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: no CUDA GPU is available (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). This benchmark "
            "measures VRAM and speed on an NVIDIA GPU; install a CUDA build of torch and run it "
            "there (--device cpu runs the same path on the CPU, without VRAM figures).",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    from vibevoice_rpc.audio import load_audio
    from vibevoice_rpc.errors import RpcError

    try:
        duration = load_audio(args.audio).duration
    except RpcError as err:
        print(f"bench/gpu.py: {args.audio}: {err.message}", file=sys.stderr)
        return 1
    budget = planner.output_budget(duration, args.max_new_tokens)
    engine, config = make_engine(args)
    # torch and transformers once, before any load is timed (the server imports them in the
    # background after ready, the first load of a fresh server waits for that)
    import transformers  # noqa: F401

    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(
        f"audio: {args.audio} ({duration:.1f} s), max_new_tokens {budget}, "
        f"model {config.model_path or 'the default folder / Hugging Face cache'}"
    )
    results = []
    try:
        for precision in args.precisions:
            print(f"{precision}:")
            results.append(bench_precision(args, engine, config, precision, duration, budget))
    finally:
        engine.unload(job("unload_model", None))
    print_table(results, args.device == "cuda")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 1 if any("error" in r for r in results) else 0  # not loading is a failure; OOM a finding


if __name__ == "__main__":
    sys.exit(main())
