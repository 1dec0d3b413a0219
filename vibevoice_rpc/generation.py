"""One pass of the model over one window of audio: encode, prefill, generate, streaming as it goes.

This module and :mod:`vibevoice_rpc.engine` are the only ones that import torch. Streaming works through
transformers' hooks: a ``streamer`` receives each new token (it decodes them incrementally and feeds
the JSON parser), a ``StoppingCriteria`` stops generation on cancel or a repetition loop, and a
forward pre-hook on the semantic encoder checks cancel and reports progress between audio chunks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .messages import Segment
from .planner import ENCODER_MODULES
from .transcript import IncrementalParser, ParsedTranscript, RepetitionDetector

__all__ = [
    "EncoderParking",
    "WindowRun",
    "WindowResult",
    "run_window",
    "build_prompt",
    "token_budget",
]

log = logging.getLogger(__name__)

TOKENS_PER_SECOND = 16  # dense speech needs ~10 tokens/s; leave headroom
TOKEN_BUDGET_BASE = 256


def token_budget(duration: float, requested: int | None, room: int | None) -> int:
    """``max_new_tokens`` for ``duration`` seconds: scales with length, capped by the request."""
    budget = int(math.ceil(duration * TOKENS_PER_SECOND)) + TOKEN_BUDGET_BASE
    if requested is not None:
        budget = min(budget, requested)
    if room is not None:
        budget = min(budget, max(1, room))
    return max(1, budget)


def build_prompt(hotwords: list[str], context: str | None, language: str) -> str | None:
    """The free-text context prompt: context, hotwords and a language hint, or None."""
    parts: list[str] = []
    if context and context.strip():
        parts.append(context.strip())
    words = [w.strip() for w in hotwords if w and w.strip()]
    if words:
        parts.append("Hotwords: " + ", ".join(words))
    if language and language.lower() != "auto":
        parts.append(f"Language: {language}")
    return "\n".join(parts) if parts else None


@dataclass
class WindowRun:
    """What one window needs from the engine and how it reports back."""

    samples: np.ndarray
    duration: float
    prompt: str | None
    max_new_tokens: int
    check_cancelled: Callable[[], None]
    is_cancelled: Callable[[], bool]
    on_encoding: Callable[[float], None]
    on_first_token: Callable[[], None]
    on_segment: Callable[[Segment], None]
    park_encoders: bool = False  # the plan keeps the audio encoders on the CPU between jobs


@dataclass
class WindowResult:
    parsed: ParsedTranscript
    text: str
    generated_tokens: int
    budget_exhausted: bool
    repetition_stopped: bool
    cancelled: bool
    warnings: list[str] = field(default_factory=list)


class EncoderParking:
    """Moves the audio encoders and the projector onto the device for encoding and back to the CPU
    as soon as the first token exists (they are used only by the prefill), so the VRAM they take
    is free for the KV cache while decoding. The planner decides when (small cards)."""

    def __init__(self, model: Any, device: str) -> None:
        inner = model.model
        self.modules = [getattr(inner, name) for name in ENCODER_MODULES]
        self.device = device
        self.parked = True  # the loader leaves them on the CPU

    def bring_in(self) -> None:
        if self.parked:
            for module in self.modules:
                module.to(self.device)
            self.parked = False

    def park(self) -> None:
        if not self.parked:
            for module in self.modules:
                module.to("cpu")
            self.parked = True
            if self.device.startswith("cuda"):  # pragma: no cover - GPU only
                torch.cuda.empty_cache()


class _Watcher(StoppingCriteria):
    """Streamer + stopping criterion: decodes new tokens incrementally and feeds the parser."""

    def __init__(
        self, tokenizer: Any, run: WindowRun, on_first_token: Callable[[], None] | None = None
    ) -> None:
        self._tokenizer = tokenizer
        self._run = run
        self._on_first_token = on_first_token
        self._parser = IncrementalParser(run.duration)
        self._detector = RepetitionDetector()
        self._pending: list[int] = []
        self._text: list[str] = []
        self._prompt_seen = False
        self.tokens = 0
        self.looping = False

    # streamer protocol -----------------------------------------------------------------
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() sends the prompt first
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        if self.tokens == 0:
            self._run.on_first_token()
            if self._on_first_token is not None:
                self._on_first_token()
        for token in ids:
            self.tokens += 1
            if self._detector.push(int(token)):
                self.looping = True
            self._pending.append(int(token))
        text = self._tokenizer.decode(self._pending, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for more
            return
        self._pending.clear()
        self._feed(text)

    def end(self) -> None:
        if self._pending:
            self._feed(self._tokenizer.decode(self._pending, skip_special_tokens=True))
            self._pending.clear()

    def _feed(self, text: str) -> None:
        if not text:
            return
        self._text.append(text)
        for segment in self._parser.feed(text):
            self._run.on_segment(segment)

    # stopping criterion ----------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self.looping or self._run.is_cancelled()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> tuple[ParsedTranscript, str]:
        return self._parser.finish(), "".join(self._text)


def _encoder_hook(model: Any, run: WindowRun) -> Any:
    """Check cancel and report progress before each audio chunk goes through the encoders."""
    chunk = int(model.config.acoustic_tokenizer_chunk_size)
    total = max(1, math.ceil(len(run.samples) / chunk))
    done = [0]

    def hook(_module: Any, _args: Any) -> None:
        run.check_cancelled()
        run.on_encoding(min(0.9, 0.9 * done[0] / total))
        done[0] += 1

    return model.model.semantic_tokenizer_encoder.register_forward_pre_hook(hook)


def run_window(model: Any, processor: Any, run: WindowRun, device: str) -> WindowResult:
    """Encode and transcribe one window. Raises RequestCancelled from inside encoding on cancel."""
    run.on_encoding(0.0)
    parking = EncoderParking(model, device) if run.park_encoders else None
    if parking is not None:
        parking.bring_in()
    inputs = processor.apply_transcription_request(audio=run.samples, prompt=run.prompt)
    encoder_dtype = next(model.model.acoustic_tokenizer_encoder.parameters()).dtype
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                value = value.to(device=device, dtype=encoder_dtype)
            elif key == "padding_mask":  # int32 from the processor: 4 bytes per sample, 1 as bool
                value = value.to(device=device, dtype=torch.bool)
            else:
                value = value.to(device)
        moved[key] = value
    prompt_len = int(moved["input_ids"].shape[1])
    watcher = _Watcher(processor.tokenizer, run, parking.park if parking is not None else None)
    handle = _encoder_hook(model, run)
    try:
        with torch.inference_mode():
            output = model.generate(
                **moved,
                max_new_tokens=run.max_new_tokens,
                sample=False,
                do_sample=False,
                streamer=watcher,
                stopping_criteria=StoppingCriteriaList([watcher]),
            )
    finally:
        handle.remove()
        if parking is not None:
            parking.park()
    generated = int(output.shape[1] - prompt_len)
    parsed, text = watcher.finish()
    warnings: list[str] = []
    budget_exhausted = generated >= run.max_new_tokens and not watcher.looping
    if budget_exhausted and parsed.truncated:
        warnings.append(
            f"output stopped at the token budget ({run.max_new_tokens} tokens); the transcript is "
            "truncated (raise max_new_tokens)"
        )
    if watcher.looping:
        warnings.append(
            f"generation was stuck repeating itself after {generated} tokens and was stopped; "
            "complete segments before the loop are kept"
        )
    return WindowResult(
        parsed=parsed,
        text=text,
        generated_tokens=generated,
        budget_exhausted=budget_exhausted,
        repetition_stopped=watcher.looping,
        cancelled=run.is_cancelled(),
        warnings=warnings,
    )
