"""Build the model for a precision: plan the memory, then ``from_pretrained`` straight onto the device.

Native transformers classes only (``VibeVoiceAsrForConditionalGeneration``, ``AutoProcessor``), safetensors
only, never ``trust_remote_code``. The language model uses SDPA by default; ``attn_implementation`` is
not forced (the audio encoders don't support it in transformers 5.23).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.source import is_tiny, resolve_model_dir
from ..config import LoadSpec
from ..errors import ModelUnavailable
from ..limits import MAX_WINDOW_SECONDS
from ..messages import MemoryPlan
from .planner import ENCODER_MODULES

__all__ = [
    "Prepared",
    "LoadedModel",
    "prepare_load",
    "load_model",
    "pick_device",
    "quantization_config",
    "from_pretrained_kwargs",
]

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

_heap_frozen = False
# (checkpoint folder, its files' mtimes) -> processor: it does not depend on the precision
_processors: dict[tuple[str, tuple[float, ...]], Any] = {}


def _import_frozen() -> None:
    """Import transformers with the cyclic GC paused, then freeze everything alive so far.

    A full collection walks every tracked object; once transformers is imported there are ~350 K of
    them (module dicts, functions, classes) and one pass holds the GIL for ~0.2 s, stalling the
    reader thread's ``health`` answers (``Engine._free_memory`` runs one per unload/reload, and on
    CUDA after every job; the interpreter runs several on its own while transformers imports).
    Frozen objects are skipped by later collections, which then walk only what was allocated
    since — a model and its processor: a few ms. The model is created after the freeze, so it is
    still collected when unloaded.
    """
    global _heap_frozen
    if _heap_frozen:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import transformers  # noqa: F401
        from transformers import (  # noqa: F401
            AutoConfig,
            AutoProcessor,
            VibeVoiceAsrForConditionalGeneration,
        )
    finally:
        gc.freeze()
        _heap_frozen = True
        if enabled:
            gc.enable()


def _cached_processor(source: str, auto_processor: Any) -> Any:
    """The checkpoint's processor, built once per folder (again when its files change).

    ``AutoProcessor.from_pretrained`` parses the 11 MB Qwen2 ``tokenizer.json`` in C code that holds
    the GIL for ~0.3 s; every reload paid that again. The processor does not depend on the precision.
    """
    folder = Path(source)
    stamp = (
        tuple(
            f.stat().st_mtime
            for f in sorted(folder.iterdir())
            if f.suffix in (".json", ".jinja", ".txt")
        )
        if folder.is_dir()
        else ()
    )
    key = (source, stamp)
    processor = _processors.get(key)
    if processor is None:
        _processors.clear()  # keep one: another checkpoint's processor is not needed again
        processor = _processors[key] = auto_processor.from_pretrained(
            source, trust_remote_code=False
        )
    return processor


class _Once(logging.Filter):
    """Lets each distinct message template of a logger through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


_ONCE = _Once()


class _DropMisleadingReminder(logging.Filter):
    """transformers compares the generated length with ``config.max_position_embeddings``, which for
    VibeVoice-ASR is the audio encoder's chunk in tokens (450), not the language model's 64 K limit:
    its "exceeded the model's predefined maximum length" warning is wrong for every job > 60 s."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "friendly reminder - the current text generation call has exceeded" not in str(
            record.msg
        )


_REMINDER_FILTER = _DropMisleadingReminder()


class _DropHubKernelNotice(logging.Filter):
    """bitsandbytes' CPU 4-bit path tries ``kernels.get_kernel`` (code from the Hub) and, since the
    package blocks that import on purpose (``vibevoice_rpc/__init__.py``), warns "Failed to load CPU
    gemm_4bit_forward from kernels-community … pip install kernels": advice against our own rule.
    It then runs its built-in kernel, which is what we want."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "from kernels-community" not in str(record.msg)


_HUB_KERNEL_FILTER = _DropHubKernelNotice()


def _route_transformers_logs() -> None:
    """transformers logs through a handler of its own ("[transformers] …"); send its records through
    ours instead, so every stderr line has the shape the app parses."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: the server reports progress itself
    logging.getLogger("transformers.generation.stopping_criteria").addFilter(_REMINDER_FILTER)


def pick_device(device_pref: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if device_pref == "cuda" and not cuda:
        raise ModelUnavailable(
            "CUDA was requested (device=cuda) but no CUDA GPU is available",
            kind="cuda_unavailable",
            hint="install a CUDA build of torch, or use device=auto/cpu",
        )
    return "cuda" if cuda and device_pref != "cpu" else "cpu"


def quantization_config(precision: str, compute_dtype: Any, *, cpu_offload: bool = False) -> Any:
    """The ``BitsAndBytesConfig`` for int8/nf4: the audio side and ``lm_head`` stay unquantized.

    ``cpu_offload``: some modules will be placed on the CPU (accelerate's ``device_map="auto"``);
    bitsandbytes then needs ``llm_int8_enable_fp32_cpu_offload`` or it refuses to load them."""
    from transformers import BitsAndBytesConfig

    from .planner import bitsandbytes_skip_modules

    # "MatMul8bitLt: inputs will be cast …" comes once per layer per token on the CPU: say it once.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_ONCE)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HUB_KERNEL_FILTER)
    try:
        import bitsandbytes  # noqa: F401  (imported only when a quantized precision is asked for)
    except ImportError as exc:
        raise ModelUnavailable(
            f"{precision} needs the bitsandbytes package, which is not installed ({exc})",
            kind="model_load_failed",
            hint="pip install bitsandbytes, or choose fp16/bf16",
        ) from None
    skip = bitsandbytes_skip_modules()
    if precision == "int8":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_skip_modules=skip,
            llm_int8_enable_fp32_cpu_offload=cpu_offload,
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
        llm_int8_enable_fp32_cpu_offload=cpu_offload,
    )


def from_pretrained_kwargs(plan: MemoryPlan, device: str) -> dict[str, Any]:
    """``from_pretrained`` arguments for a plan: dtype, placement, quantization.

    Everything goes onto ``device`` unless the plan offloads (it does not fit and
    ``VIBEVOICE_ALLOW_CPU_OFFLOAD`` is set): then accelerate places layers with ``max_memory``
    capping the GPU at the plan's figure (the rest of the free VRAM is the KV cache's) and the
    remainder in CPU RAM, and a quantized mode keeps its offloaded modules in fp32.
    """
    import torch

    lm_dtype = getattr(torch, _TORCH_DTYPES[plan.lm_dtype])
    # use_kernels=False: transformers (5.25+) would otherwise "kernelize" layers with compiled code
    # fetched from the Hub (its default while USE_HUB_KERNELS is unset); the package blocks the
    # ``kernels`` import (vibevoice_rpc/__init__.py), so asking for them would fail the load.
    kwargs: dict[str, Any] = {"dtype": lm_dtype, "use_safetensors": True, "use_kernels": False}
    offload = bool(plan.cpu_offload) and device.startswith("cuda")
    if offload:
        kwargs["device_map"] = "auto"
        gpu = torch.device(device).index or 0
        kwargs["max_memory"] = {gpu: int(plan.offload_max_memory_bytes or 0), "cpu": _cpu_budget()}
    else:
        kwargs["device_map"] = {"": device}
    if plan.precision in ("int8", "nf4"):
        kwargs["quantization_config"] = quantization_config(
            plan.precision, lm_dtype, cpu_offload=offload
        )
    return kwargs


def _cpu_budget() -> int:
    """CPU RAM accelerate may fill with offloaded layers: what is available now, less 2 GiB."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return 64 * 2**30  # accelerate checks nothing here; the OS pages if it must
    return max(2**30, pages - 2 * 2**30)


@dataclass(frozen=True)
class Prepared:
    """What a load will do, decided before anything is unloaded: the checkpoint folder, its
    config, the device and the memory plan."""

    source: Path
    config: Any
    device: str
    plan: MemoryPlan


@dataclass(frozen=True)
class LoadedModel:
    """A model in memory and what it is: the precision that was asked for and the one that runs
    (fp16 asked on a CPU runs fp32), where, from which folder, its memory plan and how long a
    window it takes."""

    model: Any
    processor: Any
    requested: str
    precision: str
    device: str
    source: str
    plan: MemoryPlan | None
    max_window_seconds: float
    parked: bool = False  # audio encoders on the CPU between jobs (the planner's choice)


def _checkpoint(model_path: str | None, offline: bool) -> Path:
    """The checkpoint folder to load: the tiny model (``VIBEVOICE_MODEL_PATH=tiny``: built offline
    on first use, trained to give one fixed two-speaker answer, so the whole protocol can be driven
    by hand without the 17 GB checkpoint, segments included), else the one on disk, its files
    checked."""
    if is_tiny(model_path):
        from .tiny import tiny_model_dir

        folder = tiny_model_dir(answer=True)
        log.warning(
            "VIBEVOICE_MODEL_PATH=tiny: the tiny model at %s, trained to give the same two "
            "segments for any audio (for trying the protocol; its words are not a transcript)",
            folder,
        )
        return folder
    return resolve_model_dir(model_path, offline=offline)


def prepare_load(precision: str, *, spec: LoadSpec, reclaimable_bytes: int = 0) -> Prepared:
    """Find the checkpoint, read its config and plan ``precision``; raises (``ModelUnavailable``,
    ``ModelDoesNotFit``) without touching any loaded model. ``reclaimable_bytes``: GPU memory the
    currently loaded model will give back before the new one loads."""
    import torch

    _import_frozen()
    from transformers import AutoConfig

    from .planner import plan as plan_memory

    _route_transformers_logs()

    device = pick_device(spec.device_pref)
    source = _checkpoint(spec.model_path, spec.offline)
    config = _read_config(source, AutoConfig)
    free = total = None
    bf16_ok = True
    if device == "cuda":  # pragma: no cover - GPU only
        free, total = torch.cuda.mem_get_info()
        free = min(total, free + reclaimable_bytes)
        bf16_ok = torch.cuda.is_bf16_supported()
    plan = plan_memory(
        config,
        precision,
        audio_seconds=None,
        free_vram_bytes=free,
        total_vram_bytes=total,
        device=device,
        bf16_supported=bf16_ok,
        allow_cpu_offload=spec.allow_cpu_offload,
    )
    return Prepared(source=Path(source), config=config, device=device, plan=plan)


def _read_config(source: Path, auto_config: Any) -> Any:
    """The checkpoint's config, its dimensions checked and its architecture counted on ``meta``.

    ``trust_remote_code=False`` explicitly: left unset, transformers asks on stdin (the protocol's
    input) whether to run a checkpoint's code. Whatever transformers or the meta build raise about
    the config is ``-32004 invalid_config`` naming config.json, not an internal error."""
    from .planner import count_parameters

    file = Path(source) / "config.json"
    try:
        config = auto_config.from_pretrained(source, trust_remote_code=False)
        counts = count_parameters(config)  # cached: the plan reuses it
    except ModelUnavailable as err:  # the planner's check of the dimensions
        err.message = f"Model file {file}: {err.message}"
        err.extra.setdefault("path", str(file))
        raise
    except Exception as exc:  # transformers' own validation: ValueError, TypeError, its errors
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelUnavailable(
            f"Model file {file} is not a usable VibeVoice-ASR config: {type(exc).__name__}: {detail}",
            kind="invalid_config",
            hint="use a complete VibeVoice-ASR-HF checkpoint (download_model fetches one)",
            path=str(file),
        ) from None
    _check_weights_hold(counts.total, Path(source), file)
    return config


# The fewest bytes a parameter takes in a safetensors file (4-bit); the real checkpoint stores 2
# (bf16). Weights on disk smaller than the parameters config.json describes are cut or corrupt, or
# the config belongs to another model; either way from_pretrained would first allocate the model the
# config describes (measured: a hidden_size of 4096 over the tiny model's 39 MB of weights took
# 7.3 GB and 26 s before failing).
_MIN_BYTES_PER_PARAM = 0.5


def _check_weights_hold(params: int, folder: Path, file: Path) -> None:
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    if params * _MIN_BYTES_PER_PARAM <= on_disk * 1.1 + 2**20:
        return
    raise ModelUnavailable(
        f"The weights in {folder} are {on_disk / 1e6:,.1f} MB, but {file.name} describes "
        f"{params / 1e9:.3f} B parameters (at least {params * _MIN_BYTES_PER_PARAM / 1e6:,.0f} MB): "
        "the weights are incomplete or damaged, or config.json belongs to another model",
        kind="model_load_failed",
        hint="download_model fetches the checkpoint again (or use a complete VibeVoice-ASR-HF "
        "checkpoint)",
        path=str(folder),
        parameters=params,
        weights_bytes=on_disk,
    )


def load_model(
    precision: str,
    *,
    spec: LoadSpec,
    check_cancelled: Callable[[], None],
    prepared: Prepared | None = None,
) -> LoadedModel:
    """Load model + processor for ``precision`` (as ``prepared`` decided, else prepared now)."""
    if prepared is None:
        prepared = prepare_load(precision, spec=spec)
    import torch
    from transformers import (
        AutoProcessor,
        VibeVoiceAsrForConditionalGeneration,
    )  # after the GC pause

    source, device, plan = prepared.source, prepared.device, prepared.plan
    check_cancelled()
    kwargs = from_pretrained_kwargs(plan, device)
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(str(source), **kwargs)
    model.eval()
    model.requires_grad_(False)
    # The engine always passes max_new_tokens (scaled to the audio); the checkpoint's own
    # max_length (32768) would only make transformers warn "Both max_new_tokens and max_length"
    # on every window.
    model.generation_config.max_length = None
    if plan.encoder_dtype != plan.lm_dtype or plan.precision in ("int8", "nf4"):
        enc_dtype = getattr(torch, _TORCH_DTYPES[plan.encoder_dtype])
        for name in ENCODER_MODULES:
            getattr(model.model, name).to(enc_dtype)
    # Chunked and unchunked encodings are identical; smaller chunks need less working memory.
    model.config.acoustic_tokenizer_chunk_size = int(plan.encoder_chunk_samples)
    parked = bool(plan.encoders_on_cpu_between_jobs) and device == "cuda"
    if parked:  # pragma: no cover - GPU only; the sequencing is tested on CPU (EncoderParking)
        for name in ENCODER_MODULES:
            getattr(model.model, name).to("cpu")
        torch.cuda.empty_cache()
    processor = _cached_processor(str(source), AutoProcessor)
    return LoadedModel(
        model=model,
        processor=processor,
        requested=precision,
        precision=plan.precision,
        device=device,
        source=str(source),
        plan=plan,
        max_window_seconds=float(plan.max_window_seconds or MAX_WINDOW_SECONDS),
        parked=parked,
    )
