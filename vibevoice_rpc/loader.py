"""Build the model for a precision: plan the memory, then ``from_pretrained`` straight onto the device.

Native transformers classes only (``VibeVoiceAsrForConditionalGeneration``, ``AutoProcessor``), safetensors
only, never ``trust_remote_code``. The language model uses SDPA by default; ``attn_implementation`` is
not forced (the audio encoders don't support it in transformers 5.23).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .errors import ModelUnavailable
from .model_source import resolve_model_dir

__all__ = ["load_model", "pick_device"]

log = logging.getLogger(__name__)

ENCODER_MODULES = (
    "acoustic_tokenizer_encoder",
    "semantic_tokenizer_encoder",
    "multi_modal_projector",
)


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


def _quantization_config(precision: str, compute_dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    from .planner import bitsandbytes_skip_modules

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
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_model(
    precision: str,
    *,
    model_path: str | None,
    device_pref: str,
    offline: bool,
    allow_cpu_offload: bool,
    check_cancelled: Callable[[], None],
) -> dict[str, Any]:
    """Load model + processor for ``precision``; returns the fields of the engine's loaded record."""
    import torch
    from transformers import AutoConfig, AutoProcessor, VibeVoiceAsrForConditionalGeneration

    from .planner import plan as plan_memory

    device = pick_device(device_pref)
    source = resolve_model_dir(model_path, offline=offline)
    config = AutoConfig.from_pretrained(source)
    free = total = None
    bf16_ok = True
    if device == "cuda":  # pragma: no cover - GPU only
        free, total = torch.cuda.mem_get_info()
        bf16_ok = torch.cuda.is_bf16_supported()
    plan = plan_memory(
        config,
        precision,
        audio_seconds=None,
        free_vram_bytes=free,
        total_vram_bytes=total,
        device=device,
        bf16_supported=bf16_ok,
        allow_cpu_offload=allow_cpu_offload,
    )
    check_cancelled()
    lm_dtype = getattr(
        torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[plan.lm_dtype]
    )
    kwargs: dict[str, Any] = {"dtype": lm_dtype, "use_safetensors": True}
    kwargs["device_map"] = "auto" if (device == "cuda" and allow_cpu_offload) else {"": device}
    if plan.precision in ("int8", "nf4"):
        kwargs["quantization_config"] = _quantization_config(plan.precision, lm_dtype)
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(str(source), **kwargs)
    model.eval()
    model.requires_grad_(False)
    if plan.encoder_dtype != plan.lm_dtype or plan.precision in ("int8", "nf4"):
        enc_dtype = getattr(
            torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[plan.encoder_dtype]
        )
        for name in ENCODER_MODULES:
            getattr(model.model, name).to(enc_dtype)
    processor = AutoProcessor.from_pretrained(str(source))
    return {
        "model": model,
        "processor": processor,
        "precision": plan.precision,
        "device": device,
        "source": str(source),
        "plan": plan.to_dict(),
        "max_window_seconds": float(plan.max_window_seconds or 3600.0),
    }
