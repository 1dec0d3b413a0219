"""One pass of the model over one window of audio: encode, prefill, generate, streaming as it goes.

This module and :mod:`vibevoice_rpc.engine` are the only ones that import torch. Streaming works through
transformers' hooks: a ``streamer`` receives each new token (it decodes them incrementally and feeds
the JSON parser), a ``StoppingCriteria`` stops generation on cancel or a repetition loop, a forward
pre-hook on the semantic encoder checks cancel and reports progress between audio chunks, and one on
each decoder layer checks cancel during the prefill (one forward pass over every audio token).

Repetition loops (the real model's most reported failure) are recovered the way Microsoft's vLLM
client does it: cut back to the last complete segment before the loop, then continue generation with
that text as the assistant's prefix, sampling at temperature 0.2, then 0.3, 0.4 (top_p 0.95, a fixed
seed per try so results are reproducible). Only when every try loops is the window stopped. So that
no segment is ever taken back, a completed segment is streamed once the tokens after it show it is
not part of a repeating stretch (normally one token later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .messages import Segment
from .planner import ENCODER_MODULES, MAX_CONTEXT_TOKENS, output_budget
from .transcript import IncrementalParser, ParsedTranscript, RepetitionDetector

__all__ = [
    "EncoderParking",
    "WindowRun",
    "WindowResult",
    "run_window",
    "token_budget",
    "RECOVERY_TEMPERATURES",
]

log = logging.getLogger(__name__)

# Microsoft's vLLM client (vllm_plugin/tests/test_api_auto_recover.py): up to 3 tries.
RECOVERY_TEMPERATURES = (0.2, 0.3, 0.4)
RECOVERY_TOP_P = 0.95
RECOVERY_SEED = 1234  # + the try's number: the same audio recovers the same way every time
# The model writes its own turn header; a continuation's prefix starts with it.
ASSISTANT_START = "<|im_start|>"


def token_budget(duration: float, requested: int | None, room: int | None) -> int:
    """``max_new_tokens`` for ``duration`` seconds: scales with length (the planner's rate), capped
    by the request and by ``room`` (what is left of the 64 K context after the prompt)."""
    budget = output_budget(duration, requested)
    if room is not None:
        budget = min(budget, max(1, room))
    return max(1, budget)


@dataclass
class WindowRun:
    """What one window needs from the engine and how it reports back."""

    samples: np.ndarray
    duration: float
    prompt: str | None  # the context text (prompt.build_context), or None
    max_new_tokens: int | None  # what is left of the request's cap; None: the duration decides
    check_cancelled: Callable[[], None]
    is_cancelled: Callable[[], bool]
    on_encoding: Callable[[float], None]
    on_first_token: Callable[[], None]
    on_segment: Callable[[Segment], None]
    park_encoders: bool = False  # the plan keeps the audio encoders on the CPU between jobs
    start: float = 0.0  # where the window starts in the whole audio (for messages)


@dataclass
class WindowResult:
    parsed: ParsedTranscript
    text: str
    generated_tokens: int
    budget_exhausted: bool
    repetition_stopped: bool  # every recovery try looped too
    cancelled: bool
    recoveries: int = 0  # loops recovered from (or tried to)
    max_new_tokens: int = 0  # the budget after the context cap
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
    """Streamer + stopping criterion: decodes new tokens incrementally, feeds the parser, holds
    each completed segment until it is clear of any repeating stretch, and stops on cancel or loop.

    ``prefix`` is text already streamed by an earlier try (a continuation's assistant prefix): the
    parser reads it first, so the result holds its segments, but they are not sent again.
    """

    def __init__(
        self,
        tokenizer: Any,
        run: WindowRun,
        *,
        prefix: str = "",
        on_first_token: Callable[[], None] | None = None,
        report_first_token: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._run = run
        self._on_first_token = on_first_token
        self._report_first_token = report_first_token
        self._parser = IncrementalParser(run.duration)
        self._detector = RepetitionDetector()
        self._pending: list[int] = []
        self._text: list[str] = [prefix] if prefix else []
        if prefix:
            self._parser.feed(prefix)
        self._released = len(self._parser.segments)  # segments that are final (sent or prefix)
        self._held: list[tuple[int, Segment]] = []  # (tokens seen when it completed, segment)
        self._prompt_seen = False
        self.tokens = 0
        self.looping = False

    @property
    def started(self) -> bool:
        return self.tokens > 0

    # streamer protocol -----------------------------------------------------------------
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() sends the prompt first
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        if self.tokens == 0:
            if self._report_first_token:
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
        if not self.looping:
            self._release(final=True)

    def _feed(self, text: str) -> None:
        if not text:
            return
        self._text.append(text)
        for segment in self._parser.feed(text):
            self._held.append((self.tokens, segment))
        self._release()

    def _release(self, *, final: bool = False, before: int | None = None) -> None:
        """Send held segments that can no longer be part of a loop: completed before the current
        periodic stretch (``final``: all of them; ``before``: those completed before that token)."""
        if self.looping and before is None:
            return
        if before is None:
            before = self.tokens - self._detector.current_span
        held = self._held
        while held and (final or held[0][0] - 1 < before):
            _, segment = held.pop(0)
            self._released += 1
            self._run.on_segment(segment)

    # stopping criterion ----------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self.looping or self._run.is_cancelled()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    # results ---------------------------------------------------------------------------
    @property
    def loop_started_at(self) -> float:
        """The end time (window seconds) of the last segment kept before the loop."""
        segments = self._parser.segments[: self._released]
        return max((s.end_time for s in segments), default=0.0)

    def cut(self) -> str:
        """After a loop: send the held segments that came before it, drop the rest, and return the
        text up to the last kept segment (ending ``},``), or "" when no segment was kept."""
        self._release(before=self._detector.loop_start)
        self._held.clear()
        if self._released == 0:
            return ""
        end = self._parser.segment_end_offsets[self._released - 1]
        return "".join(self._text)[:end] + ","

    def finish(self) -> tuple[ParsedTranscript, str]:
        parsed = self._parser.finish()
        if self.looping:  # only what came before the loop
            parsed = dataclasses.replace(parsed, segments=parsed.segments[: self._released])
        return parsed, "".join(self._text)


def _encoder_hook(model: Any, run: WindowRun, *, report: bool) -> Any:
    """Check cancel (and report progress) before each audio chunk goes through the encoders."""
    chunk = int(model.config.acoustic_tokenizer_chunk_size)
    total = max(1, math.ceil(len(run.samples) / chunk))
    done = [0]

    def hook(_module: Any, _args: Any) -> None:
        run.check_cancelled()
        if report:
            run.on_encoding(min(0.9, 0.9 * done[0] / total))
        done[0] += 1

    return model.model.semantic_tokenizer_encoder.register_forward_pre_hook(hook)


def _prefill_hooks(model: Any, run: WindowRun, watcher: _Watcher) -> list[Any]:
    """Check cancel before each decoder layer until the first token exists: the prefill is one
    forward pass over every audio token (an hour is 27,000 of them), so cancel lands within one
    layer's share of it instead of after the whole pass. Decoding is stopped by the watcher."""

    def hook(_module: Any, _args: Any) -> None:
        if not watcher.started:
            run.check_cancelled()

    layers = model.model.language_model.layers
    return [layer.register_forward_pre_hook(hook) for layer in layers]


@contextlib.contextmanager
def _seeded(seed: int | None, device: str) -> Iterator[None]:
    """Sample with a fixed seed without disturbing the process's random state."""
    if seed is None:
        yield
        return
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _device_inputs(inputs: Any, model: Any, device: str) -> dict[str, Any]:
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
    return moved


def run_window(model: Any, processor: Any, run: WindowRun, device: str) -> WindowResult:
    """Encode and transcribe one window, recovering from repetition loops. Raises
    RequestCancelled from inside encoding or the prefill on cancel."""
    run.on_encoding(0.0)
    parking = EncoderParking(model, device) if run.park_encoders else None
    inputs = _device_inputs(
        processor.apply_transcription_request(audio=run.samples, prompt=run.prompt), model, device
    )
    prompt_ids = inputs.pop("input_ids")
    prompt_mask = inputs.pop("attention_mask")
    prompt_len = int(prompt_ids.shape[1])
    budget = token_budget(run.duration, run.max_new_tokens, MAX_CONTEXT_TOKENS - prompt_len)
    tokenizer = processor.tokenizer
    warnings: list[str] = []
    prefix = ""
    generated = 0
    tries = 0
    while True:
        prefix_ids = (
            tokenizer.encode(ASSISTANT_START + prefix, add_special_tokens=False) if prefix else []
        )
        ids, mask = prompt_ids, prompt_mask
        if prefix_ids:
            extra = torch.tensor([prefix_ids], dtype=prompt_ids.dtype, device=prompt_ids.device)
            ids = torch.cat([prompt_ids, extra], dim=1)
            mask = torch.cat([prompt_mask, torch.ones_like(extra, dtype=prompt_mask.dtype)], dim=1)
        max_new = max(1, budget - len(prefix_ids))
        watcher = _Watcher(
            tokenizer,
            run,
            prefix=prefix,
            on_first_token=parking.park if parking is not None else None,
            report_first_token=tries == 0,
        )
        sampling: dict[str, Any] = {"do_sample": False}
        if tries:
            temperature = RECOVERY_TEMPERATURES[tries - 1]
            sampling = {"do_sample": True, "temperature": temperature, "top_p": RECOVERY_TOP_P}
        if parking is not None:
            parking.bring_in()
        handles = [_encoder_hook(model, run, report=tries == 0)]
        handles += _prefill_hooks(model, run, watcher)
        try:
            with torch.inference_mode(), _seeded(RECOVERY_SEED + tries if tries else None, device):
                output = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    **inputs,
                    max_new_tokens=max_new,
                    sample=False,
                    streamer=watcher,
                    stopping_criteria=StoppingCriteriaList([watcher]),
                    **sampling,
                )
        finally:
            for handle in handles:
                handle.remove()
            if parking is not None:
                parking.park()
        new_tokens = int(output.shape[1] - ids.shape[1])
        generated += new_tokens
        if not watcher.looping or run.is_cancelled():
            break
        prefix = watcher.cut()
        where = run.start + watcher.loop_started_at
        if tries == len(RECOVERY_TEMPERATURES):
            warnings.append(
                f"generation was stuck repeating itself after {where:.1f} s and "
                f"{tries} recovery tries looped too; the segments before the loop are kept and "
                "the rest of this audio has no transcript"
            )
            break
        tries += 1
        warnings.append(
            f"generation got stuck repeating itself after {where:.1f} s; continued from the last "
            f"complete segment at temperature {RECOVERY_TEMPERATURES[tries - 1]} "
            f"(recovery {tries} of {len(RECOVERY_TEMPERATURES)})"
        )
        log.warning("%s", warnings[-1])
        run.check_cancelled()
    parsed, text = watcher.finish()
    budget_exhausted = new_tokens >= max_new and not watcher.looping
    if budget_exhausted and parsed.truncated:
        warnings.append(
            f"output stopped at the token budget ({budget} tokens); the transcript is "
            "truncated (raise max_new_tokens)"
        )
    return WindowResult(
        parsed=parsed,
        text=text,
        generated_tokens=generated,
        budget_exhausted=budget_exhausted,
        repetition_stopped=watcher.looping,
        cancelled=run.is_cancelled(),
        recoveries=tries,
        max_new_tokens=budget,
        warnings=warnings,
    )
