"""The local model runs one window: encode, prefill, generate, streaming as it goes.

torch is imported at the top here (this module is first imported when a model is loaded); elsewhere
only on the engine side and lazily (loader, engine, planner, gpu's fallback, tiny: see
tests/test_layers.py). Streaming works through transformers' hooks: a ``streamer`` receives each new token (decoded
incrementally into a :class:`~vibevoice_rpc.transcription.stream.SegmentStream`), a ``StoppingCriteria`` stops
generation on cancel or a repetition loop, a forward pre-hook on the semantic encoder checks cancel
and reports progress between audio chunks, and one on each decoder layer checks cancel during the
prefill (one forward pass over every audio token). Loop recovery (the tries) is
:func:`vibevoice_rpc.transcription.stream.run_with_recovery`; :class:`LocalRunner` supplies one try.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..limits import MODEL_CONTEXT_TOKENS, output_budget
from ..transcription.stream import (
    RunnerInfo,
    SegmentStream,
    Try,
    TryOutcome,
    WindowResult,
    WindowRun,
    run_with_recovery,
)
from .planner import ENCODER_MODULES

__all__ = ["EncoderParking", "LocalRunner", "token_budget"]

log = logging.getLogger(__name__)

# The model writes its own turn header; a continuation's prefix starts with it.
ASSISTANT_START = "<|im_start|>"


def token_budget(duration: float, requested: int | None, room: int) -> int:
    """``max_new_tokens`` for ``duration`` seconds: scales with length (the planner's rate), capped
    by the request and by ``room`` (what is left of the 64 K context after the prompt)."""
    return max(1, min(output_budget(duration, requested), room))


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


class _Streamer(StoppingCriteria):
    """transformers' streamer + stopping criterion around a :class:`SegmentStream`: decodes new
    tokens incrementally (holding back a multi-byte character split across tokens)."""

    def __init__(
        self,
        tokenizer: Any,
        stream: SegmentStream,
        run: WindowRun,
        on_first_token: Callable[[], None] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._stream = stream
        self._run = run
        self._on_first_token = on_first_token
        self._pending: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() sends the prompt first
            self._prompt_seen = True
            return
        ids = [int(t) for t in value.reshape(-1).tolist()]
        first = not self._stream.started
        self._stream.push(ids)  # reports the first token
        if first and self._on_first_token is not None:
            self._on_first_token()
        self._pending.extend(ids)
        text = self._tokenizer.decode(self._pending, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for more
            return
        self._pending.clear()
        self._stream.feed(text)

    def end(self) -> None:
        if self._pending:
            self._stream.feed(self._tokenizer.decode(self._pending, skip_special_tokens=True))
            self._pending.clear()
        self._stream.end()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        stop = self._stream.looping or self._run.is_cancelled()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


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


def _prefill_hooks(model: Any, run: WindowRun, stream: SegmentStream) -> list[Any]:
    """Check cancel before each decoder layer until the first token exists: the prefill is one
    forward pass over every audio token (an hour is 27,000 of them), so cancel lands within one
    layer's share of it instead of after the whole pass. Decoding is stopped by the watcher."""

    def hook(_module: Any, _args: Any) -> None:
        if not stream.started:
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


class LocalRunner:
    """Runs windows on the loaded model (the engine's runner; a remote server is another)."""

    def __init__(self, model: Any, processor: Any, info: RunnerInfo) -> None:
        self.model = model
        self.processor = processor
        self.info = info
        self.device = info.device

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, **kwargs: Any) -> Any:
        """The one call into the model per try (``model.generate``); tests/scripted.py overrides it
        to force a scripted answer through the rest of the real loop."""
        return self.model.generate(**kwargs)

    def run_window(self, run: WindowRun) -> WindowResult:
        """Encode and transcribe one window, recovering from repetition loops. Raises
        RequestCancelled from inside encoding or the prefill on cancel."""
        model, processor, device = self.model, self.processor, self.device
        run.on_encoding(0.0)
        parking = EncoderParking(model, device) if run.park_encoders else None
        request = processor.apply_transcription_request(audio=run.samples, prompt=run.prompt)
        inputs = _device_inputs(request, model, device)
        prompt_ids = inputs.pop("input_ids")
        prompt_mask = inputs.pop("attention_mask")
        room = MODEL_CONTEXT_TOKENS - int(prompt_ids.shape[1])
        budget = token_budget(run.duration, run.max_new_tokens, room)
        tokenizer = processor.tokenizer

        def attempt(tried: Try) -> TryOutcome:
            ids, mask = prompt_ids, prompt_mask
            prefix_ids: list[int] = []
            if tried.prefix:
                prefix_ids = tokenizer.encode(
                    ASSISTANT_START + tried.prefix, add_special_tokens=False
                )
                extra = torch.tensor([prefix_ids], dtype=ids.dtype, device=ids.device)
                ids = torch.cat([ids, extra], dim=1)
                mask = torch.cat([mask, torch.ones_like(extra, dtype=mask.dtype)], dim=1)
            max_new = max(1, budget - len(prefix_ids))
            sampling: dict[str, Any] = {"do_sample": False}
            if tried.temperature is not None:
                sampling = {
                    "do_sample": True,
                    "temperature": tried.temperature,
                    "top_p": tried.top_p,
                }
            streamer = _Streamer(
                tokenizer, tried.stream, run, parking.park if parking is not None else None
            )
            if parking is not None:
                parking.bring_in()
            handles = [_encoder_hook(model, run, report=tried.number == 0)]
            handles += _prefill_hooks(model, run, tried.stream)
            try:
                with torch.inference_mode(), _seeded(tried.seed, device):
                    output = self.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        **inputs,
                        max_new_tokens=max_new,
                        sample=False,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([streamer]),
                        **sampling,
                    )
            finally:
                for handle in handles:
                    handle.remove()
                if parking is not None:
                    parking.park()
            new_tokens = int(output.shape[1] - ids.shape[1])
            return TryOutcome(new_tokens, new_tokens >= max_new, budget)

        return run_with_recovery(run, attempt)
