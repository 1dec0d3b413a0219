"""Make the tiny random-weight model "say" a scripted real-format answer, through the real pipeline.

The tiny model's own words are noise, so on its own it never produces segments. To test streaming,
segment notifications, cancel between segments, multi-byte characters split across tokens and the
stitching of long-audio windows end to end, a test installs a ``LogitsProcessor`` that forces the
next token to be the next token of a scripted answer (tokenized by the model's own tokenizer).
Everything else is real: ``from_pretrained``, the processor, the audio encoders, ``generate``, the
streamer, the stopping criteria, the parser. An optional per-step delay makes generation slow enough
to cancel it, or to ask ``health`` while it runs.

Test code only: never imported by the product. The product's seam is
:class:`vibevoice_rpc.model.backend.LocalRuntime`, which the engine takes as an argument:
:class:`ScriptedRuntime` is one, used in process (the ``script`` fixture of tests/conftest.py) and
in a child process by ``tests/scripted_server.py`` (env ``VIBEVOICE_TEST_SCRIPT`` / …).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from vibevoice_rpc.model.backend import LocalRuntime

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


class ScriptedRuntime(LocalRuntime):
    """The real local runtime (loader, ``LocalRunner``) whose model "says" what a test sets.

    Passed to the engine (``Engine(config, runtime=…)``, ``cli.main(runtime=…)``) instead of
    patching module functions. Until :meth:`set` is called, or after :meth:`clear`, generation is
    the tiny model's own. ``load_delay`` makes every load last that much longer and
    ``noisy_load`` makes it print to stdout three ways (see tests/scripted_server.py)."""

    def __init__(self, *, load_delay: float = 0.0, noisy_load: bool = False) -> None:
        self.load_delay = load_delay
        self.noisy_load = noisy_load
        self.clear()

    def set(
        self,
        script: str | Sequence[int] | Callable[[float], str] | None,
        *,
        step_delay: float = 0.0,
        on_step: Callable[[int], None] | None = None,
        retries: Sequence[str] | None = None,
        calls: list[dict[str, Any]] | None = None,
        inputs: list[Any] | None = None,
    ) -> None:
        """Force ``script`` on every generation (and/or wait ``step_delay`` seconds per generated
        token). ``script`` may be a function of the window's audio duration in seconds, or a list
        of token ids forced verbatim (ending with the eos id, as the real model's output does).

        ``retries``: what the model "says" in a window's 2nd, 3rd, … ``generate`` call (the loop
        recovery's continuations, forced after the prefix the engine passes; the last one
        repeats); without it every call replays ``script``. ``calls`` receives one dict per
        ``generate`` call: its try number in the window, the text the prompt ends with, and the
        sampling arguments. ``on_step(step)`` is called before each generated token. ``inputs``
        receives each window's ``WindowRun`` as the runner got it: the samples the model hears."""
        self.script = script
        self.step_delay = step_delay
        self.on_step = on_step
        self.retries = list(retries) if retries else None
        self.calls = calls
        self.inputs = inputs

    def clear(self) -> None:
        """Back to the tiny model's own output."""
        self.set(None)

    def load(self, precision: str, **kwargs: Any) -> Any:
        if self.load_delay:
            time.sleep(self.load_delay)  # a slow disk: lets a test watch the server while it loads
        if self.noisy_load:
            print("print() noise during model load")
            os.write(1, b"fd-1 noise during model load\n")
            if sys.__stdout__ is not None:
                sys.__stdout__.write("sys.__stdout__ noise during model load\n")
                sys.__stdout__.flush()
        return super().load(precision, **kwargs)

    def runner(self, loaded: Any, info: Any) -> Any:
        from vibevoice_rpc.model.runner import LocalRunner

        scripted = self

        class ScriptedRunner(LocalRunner):
            """``LocalRunner`` whose one call into the model gets a logits processor that forces
            the script; everything else (encoding, prefill, streamer, stopping, parser) is real."""

            def run_window(self, run: Any) -> Any:
                if scripted.inputs is not None:
                    scripted.inputs.append(run)
                self._duration = run.duration
                self._tries = 0
                return super().run_window(run)

            def generate(self, **kwargs: Any) -> Any:
                return scripted._generate(self, kwargs)

        return ScriptedRunner(loaded.model, loaded.processor, info)

    def _generate(self, runner: Any, kwargs: dict[str, Any]) -> Any:
        from transformers import LogitsProcessorList

        model, processor = runner.model, runner.processor
        attempt = runner._tries
        runner._tries += 1
        if self.calls is not None:
            tail = processor.tokenizer.decode(kwargs["input_ids"][0][-40:].tolist())
            self.calls.append(
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
        ids = None
        script = self.script
        if script is not None:
            text = script(runner._duration) if callable(script) else script
            if attempt and self.retries:
                text = self.retries[min(attempt, len(self.retries)) - 1]
            if isinstance(text, str):
                ids = processor.tokenizer.encode(text, add_special_tokens=False)
                ids.append(model.generation_config.eos_token_id)
            else:  # token ids, forced verbatim (e.g. what the real model generated)
                ids = list(text)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        if ids is not None or self.step_delay or self.on_step is not None:
            processors.append(self._forced(ids, int(kwargs["input_ids"].shape[1])))
        return model.generate(logits_processor=processors, **kwargs)

    def _forced(self, ids: list[int] | None, prompt_len: int) -> Any:
        import torch
        from transformers import LogitsProcessor

        on_step, step_delay = self.on_step, self.step_delay

        class Forced(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
                step = int(input_ids.shape[1]) - prompt_len
                if on_step is not None:
                    on_step(step)
                if step_delay:
                    time.sleep(step_delay)  # slows generation so a test can cancel it mid-way
                if ids is None:
                    return scores
                out = torch.full_like(scores, float("-inf"))
                out[:, ids[min(step, len(ids) - 1)]] = 0.0
                return out

        return Forced()
