"""Make the tiny random-weight model "say" a scripted real-format answer, through the real pipeline.

The tiny model's own words are noise, so on its own it never produces segments. To test streaming,
segment notifications, cancel between segments, multi-byte characters split across tokens and the
stitching of long-audio windows end to end, a test installs a ``LogitsProcessor`` that forces the
next token to be the next token of a scripted answer (tokenized by the model's own tokenizer).
Everything else is real: ``from_pretrained``, the processor, the audio encoders, ``generate``, the
streamer, the stopping criteria, the parser. An optional per-step delay makes generation slow enough
to cancel it, or to ask ``health`` while it runs.

Test code only: never imported by the product. Used in process by ``install()`` and in a child
process by ``tests/scripted_server.py`` (env ``VIBEVOICE_TEST_SCRIPT`` / ``VIBEVOICE_TEST_STEP_DELAY``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

REAL_FORMAT_SEGMENTS: list[dict[str, Any]] = [
    {"Start": 0, "End": 2.4, "Speaker": 0, "Content": "Guten Morgen, Grüß Gott! 🎙"},
    {"Start": 2.4, "End": 5.25, "Speaker": 1, "Content": 'Hello, "quoted" and 我很好，谢谢。'},
    {"Start": 5.25, "End": 8.0, "Speaker": 0, "Content": "Très bien — let us start."},
    {"Start": 8.0, "End": 11.2, "Speaker": 1, "Content": "The budget is next."},
]


def real_format_answer(segments: Sequence[dict[str, Any]] = REAL_FORMAT_SEGMENTS) -> str:
    """The model's raw answer for ``segments``: ``<|im_start|>assistant\\n[...]<|im_end|>``."""
    body = json.dumps(list(segments), ensure_ascii=False, separators=(",", ":"))
    return f"<|im_start|>assistant\n{body}<|im_end|>"


def install(
    script: str | Sequence[int] | Callable[[float], str] | None,
    *,
    step_delay: float = 0.0,
    on_step: Callable[[int], None] | None = None,
    retries: Sequence[str] | None = None,
    calls: list[dict[str, Any]] | None = None,
) -> Callable[[], None]:
    """Force ``script`` on every generation the engine runs (and/or wait ``step_delay`` seconds per
    generated token). ``script`` may be a function of the window's audio duration in seconds, or
    a list of token ids forced verbatim (ending with the eos id, as the real model's output does).

    ``retries``: what the model "says" in a window's 2nd, 3rd, … ``generate`` call (the loop
    recovery's continuations, forced after the prefix the engine passes; the last one repeats);
    without it every call replays ``script``. ``calls`` receives one dict per ``generate`` call:
    its try number in the window, the text the prompt ends with, and the sampling arguments.
    Returns a function that undoes the patch."""
    # Patched on the first job, so a server using this still says "ready" before torch is imported.
    from vibevoice_rpc import pipeline

    original_transcribe = pipeline.transcribe_audio
    originals: dict[str, Any] = {}

    def forced(ids: list[int] | None, prompt_len: int) -> Any:
        import torch
        from transformers import LogitsProcessor

        class Forced(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
                step = int(input_ids.shape[1]) - prompt_len
                if on_step is not None:
                    on_step(step)
                if step_delay:
                    time.sleep(step_delay)
                if ids is None:
                    return scores
                out = torch.full_like(scores, float("-inf"))
                out[:, ids[min(step, len(ids) - 1)]] = 0.0
                return out

        return Forced()

    def run_window(runner: Any, run: Any) -> Any:
        model, processor = runner.model, runner.processor
        real_generate = model.generate
        tries = [0]

        def generate(**kwargs: Any) -> Any:
            ids = None
            attempt = tries[0]
            tries[0] += 1
            if calls is not None:
                tail = processor.tokenizer.decode(kwargs["input_ids"][0][-40:].tolist())
                calls.append(
                    {
                        "try": attempt,
                        "input_ids": kwargs["input_ids"][0].tolist(),
                        "prompt_tail": tail,
                        "do_sample": kwargs.get("do_sample"),
                        "temperature": kwargs.get("temperature"),
                        "top_p": kwargs.get("top_p"),
                        "max_new_tokens": kwargs.get("max_new_tokens"),
                    }
                )
            if script is not None:
                text = script(run.duration) if callable(script) else script
                if attempt and retries:
                    text = retries[min(attempt, len(retries)) - 1]
                if isinstance(text, str):
                    ids = processor.tokenizer.encode(text, add_special_tokens=False)
                    ids.append(model.generation_config.eos_token_id)
                else:  # token ids, forced verbatim (e.g. what the real model generated)
                    ids = list(text)
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
            processors.append(forced(ids, int(kwargs["input_ids"].shape[1])))
            return real_generate(logits_processor=processors, **kwargs)

        model.generate = generate  # an instance attribute shadows the class's method
        try:
            return originals["run_window"](runner, run)
        finally:
            del model.generate

    def transcribe_audio(*args: Any, **kwargs: Any) -> Any:
        from vibevoice_rpc.generation import LocalRunner

        if "run_window" not in originals:
            originals["run_window"] = LocalRunner.run_window
            LocalRunner.run_window = run_window  # type: ignore[method-assign]
        return original_transcribe(*args, **kwargs)

    pipeline.transcribe_audio = transcribe_audio

    def undo() -> None:
        pipeline.transcribe_audio = original_transcribe
        if "run_window" in originals:
            from vibevoice_rpc.generation import LocalRunner

            LocalRunner.run_window = originals["run_window"]  # type: ignore[method-assign]

    return undo
