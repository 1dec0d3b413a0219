"""Benchmark VibeVoice-ASR per precision on a CUDA GPU: load time, real-time factor, peak VRAM.

Run by hand on a machine with an NVIDIA GPU::

    python bench/gpu.py --audio meeting.opus                       # fp16,bf16,int8,nf4, 1 run each
    python bench/gpu.py --model /models/VibeVoice-ASR-HF --audio a.wav --precisions int8,nf4 --runs 3
    python bench/gpu.py --audio a.wav --json results.json          # also write the figures as JSON

For each precision it asks the VRAM planner (``vibevoice_rpc.planner``) what the mode needs, loads the
model through transformers exactly as the engine does (``from_pretrained(dtype=…, device_map="cuda",
quantization_config=BitsAndBytesConfig(…))``, audio encoders and projector cast to the plan's encoder
dtype, the plan's encoder chunk), transcribes the whole file in one pass ``--runs`` times and prints:
load time, real-time factor (processing time / audio duration), peak VRAM
(``torch.cuda.max_memory_allocated``, reset before each run) next to the planner's prediction, and
the number of segments. The predicted-vs-measured columns are what calibrates the planner's margins
(docs/MEMORY.md). The planner's encoder parking is not used here (``park_encoders=False``).

Without CUDA it prints a message and exits with status 2. ``--device cpu`` runs the same code path on
the CPU (a smoke test, e.g. with ``--model`` pointing at the tiny test model; no VRAM figures).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibevoice_rpc import planner  # noqa: E402  (cheap: no torch import)
from vibevoice_rpc.errors import ModelDoesNotFit  # noqa: E402

DEFAULT_MODEL = "microsoft/VibeVoice-ASR-HF"
SAMPLE_RATE = 24000
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
AUDIO_MODULES = (
    "acoustic_tokenizer_encoder",
    "semantic_tokenizer_encoder",
    "multi_modal_projector",
)
NO_CUDA_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"local folder or hub repo ({DEFAULT_MODEL})"
    )
    p.add_argument("--audio", required=True, help="audio file (any format soundfile reads)")
    p.add_argument(
        "--precisions",
        default="fp16,bf16,int8,nf4",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="comma-separated: fp16,bf16,int8,nf4,fp32",
    )
    p.add_argument("--runs", type=int, default=1, help="transcriptions per precision (default 1)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: the engine's budget (12/s of audio + 256)",
    )
    p.add_argument("--prompt", default=None, help="optional context/hotwords text")
    p.add_argument("--force", action="store_true", help="load even when the planner says no")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="write the results to this file")
    args = p.parse_args(argv)
    bad = [x for x in args.precisions if x not in planner.PRECISIONS]
    if bad or not args.precisions:
        p.error(f"--precisions: unknown {bad}; choose from {','.join(planner.PRECISIONS)}")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def load_audio_24k(path: str) -> Any:
    """24 kHz mono float32 samples: the project's decoder if present, else soundfile + soxr."""
    try:
        from vibevoice_rpc.audio import load_audio
    except ImportError:
        load_audio = None
    if load_audio is not None:
        return load_audio(path).samples
    import numpy as np
    import soundfile as sf
    import soxr

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def make_plan(
    args: argparse.Namespace, config: Any, precision: str, duration: float, budget: int
) -> planner.Plan:
    import torch

    free = total = None
    bf16 = True
    if args.device == "cuda":
        free, total = torch.cuda.mem_get_info()
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return planner.plan(
        config,
        precision,
        audio_seconds=duration,
        free_vram_bytes=free,
        total_vram_bytes=total,
        device=args.device,
        bf16_supported=bf16,
        max_new_tokens=budget,
        park_encoders=False,
        allow_cpu_offload=args.force,
    )


def bench_precision(
    args: argparse.Namespace, precision: str, samples: Any, budget: int
) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoProcessor, VibeVoiceAsrForConditionalGeneration

    cuda = args.device == "cuda"
    duration = len(samples) / SAMPLE_RATE
    config = AutoConfig.from_pretrained(args.model)
    result: dict[str, Any] = {"precision": precision, "runs": []}
    try:
        plan = make_plan(args, config, precision, duration, budget)
    except ModelDoesNotFit as err:
        print(f"  {precision}: skipped: {err.message} (--force to try anyway)")
        result["skipped"] = err.message
        return result
    print(f"  plan: {plan.summary}")
    for note in plan.notes:
        print(f"    note: {note}")
    if plan.window_seconds < duration:
        print(
            f"    warning: the planner would cut this audio into {plan.max_window_seconds:.0f} s windows"
        )
    result["plan"] = plan.to_dict()

    config.acoustic_tokenizer_chunk_size = plan.encoder_chunk_samples
    lm_dtype = getattr(torch, DTYPES[plan.lm_dtype])
    enc_dtype = getattr(torch, DTYPES[plan.encoder_dtype])
    kwargs: dict[str, Any] = {"config": config, "dtype": lm_dtype, "use_safetensors": True}
    kwargs["device_map"] = "auto" if plan.cpu_offload else args.device
    if plan.precision in ("int8", "nf4"):
        from vibevoice_rpc.loader import quantization_config  # the engine's own (imports torch)

        kwargs["quantization_config"] = quantization_config(plan.precision, lm_dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(args.model, **kwargs)
    model.eval()
    for name in AUDIO_MODULES:
        getattr(model.model, name).to(enc_dtype)
    processor = AutoProcessor.from_pretrained(args.model)
    if cuda:
        torch.cuda.synchronize()
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    if cuda:
        result["weights_bytes"] = torch.cuda.memory_allocated()
    print(
        f"  loaded in {result['load_seconds']:.1f} s"
        + (f"; weights on GPU {_gib(result['weights_bytes'])} GiB" if cuda else "")
        + f" (planned {_gib(plan.weights_bytes['total'])} GiB)"
    )

    try:
        for i in range(args.runs):
            result["runs"].append(run_once(model, processor, samples, budget, args, enc_dtype, i))
    finally:
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return result


def run_once(
    model: Any,
    processor: Any,
    samples: Any,
    budget: int,
    args: argparse.Namespace,
    enc_dtype: Any,
    i: int,
) -> dict[str, Any]:
    import torch

    cuda = args.device == "cuda"
    duration = len(samples) / SAMPLE_RATE
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    inputs = processor.apply_transcription_request(audio=samples, prompt=args.prompt)
    inputs = inputs.to(args.device)
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.is_floating_point():
            inputs[key] = value.to(enc_dtype)
    prompt_len = inputs["input_ids"].shape[1]
    run: dict[str, Any] = {"run": i + 1}
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=budget, sample=False)
    except torch.cuda.OutOfMemoryError as exc:
        run["error"] = f"CUDA out of memory: {str(exc).splitlines()[0]}"
        print(f"    run {i + 1}: {run['error']}")
        return run
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    new_tokens = out[0, prompt_len:]
    parsed = processor.decode(new_tokens, return_format="parsed")
    run.update(
        seconds=round(seconds, 2),
        rtf=round(seconds / duration, 4),
        new_tokens=int(new_tokens.numel()),
        segments=len(parsed) if isinstance(parsed, list) else 0,
        parsed_json=isinstance(parsed, list),
    )
    if cuda:
        run["peak_bytes"] = torch.cuda.max_memory_allocated()
        run["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    peak = f", peak VRAM {_gib(run['peak_bytes'])} GiB" if cuda else ""
    print(
        f"    run {i + 1}: {seconds:.1f} s, RTF {run['rtf']:.3f}, {run['new_tokens']} tokens, "
        f"{run['segments']} segments{peak}" + ("" if run["parsed_json"] else " (output not JSON)")
    )
    return run


def print_table(results: list[dict[str, Any]], cuda: bool) -> None:
    print()
    header = f"{'precision':<10}{'load s':>8}{'RTF':>8}{'segments':>10}"
    if cuda:
        header += f"{'peak GiB':>10}{'planned GiB':>13}"
    print(header)
    for r in results:
        runs = [x for x in r["runs"] if "rtf" in x]
        if not runs:
            why = r.get("skipped") or (r["runs"][0].get("error") if r["runs"] else "no runs")
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
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: no CUDA GPU is available (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). This benchmark "
            "measures VRAM and speed on an NVIDIA GPU; install a CUDA build of torch and run it there.",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    samples = load_audio_24k(args.audio)
    duration = len(samples) / SAMPLE_RATE
    budget = planner.output_budget(duration, args.max_new_tokens)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"audio: {args.audio} ({duration:.1f} s), max_new_tokens {budget}, model {args.model}")
    results = []
    for precision in args.precisions:
        print(f"{precision}:")
        results.append(bench_precision(args, precision, samples, budget))
    print_table(results, args.device == "cuda")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
