"""The remote runner: windows transcribed by a VibeVoice-ASR server on vLLM (OpenAI-compatible).

Microsoft's server (``vllm_plugin``, model name ``vibevoice``) takes ``POST /v1/chat/completions``
with the audio as a base64 data URI and the whole instruction as text, and streams the answer as
server-sent events (``data: {…choices[0].delta.content…}`` lines, then ``data: [DONE]``). The
pipeline is the local one: windows, the incremental parser, speaker linking, loop recovery
(:func:`vibevoice_rpc.transcription.stream.run_with_recovery`, a continuation sent as a final assistant message),
progress and cancel. Only one try differs: :class:`RemoteRunner`.

Two dialects: ``official`` (Microsoft's plugin: the text part is the full trained instruction) and
``transformers`` (vLLM's Transformers backend renders the checkpoint's chat template, which writes
the instruction itself and reads the text part as the context).

The server is reached through :class:`~vibevoice_rpc.remote.client.RemoteClient` (httpx2, bounded
by :mod:`vibevoice_rpc.remote.exchange`: deadlines per phase, cancel in every phase, capped reads).
No torch is imported. Everything the server sends is hostile data: each chunk is checked for shape,
and the answer is read no further than the window's token budget, whatever ``max_tokens`` the
server honours. The API key is never logged or shown (:mod:`vibevoice_rpc.redact`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import RemoteError
from ..limits import (
    AUDIO_HOP,
    MODEL_CONTEXT_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    SAMPLE_RATE,
    output_budget,
)
from ..transcription.prompt import instruction
from ..transcription.stream import (
    RunnerInfo,
    Try,
    TryOutcome,
    WindowResult,
    WindowRun,
    run_with_recovery,
)
from .client import RemoteClient, ServerStatus
from .exchange import Stopped, TooLarge

__all__ = ["RemoteClient", "RemoteRunner", "ServerStatus"]

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant that transcribes audio input into text output in JSON format."
)
_ROLE_RE = re.compile(r"^\s*assistant\s*", re.IGNORECASE)


def encode_flac_base64(samples: np.ndarray) -> tuple[str, str]:
    """The window as 16-bit FLAC at 24 kHz (lossless for the model's input; ~half of WAV) →
    (mime type, base64 text)."""
    import soundfile as sf

    buf = io.BytesIO()
    clipped = np.clip(samples, -1.0, 1.0)
    sf.write(buf, clipped, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return "audio/flac", base64.b64encode(buf.getvalue()).decode("ascii")


class RemoteRunner:
    """Runs windows on the server: one try = one streamed chat completion.

    ``is_cancelled`` is the job's (for the token count, which runs before any window)."""

    def __init__(
        self,
        client: RemoteClient,
        info: RunnerInfo,
        is_cancelled: Callable[[], bool] | None = None,
        check_cancelled: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.info = info
        self.settings = client.settings
        self._is_cancelled = is_cancelled
        self._check_cancelled = check_cancelled or (lambda: None)

    def count_tokens(self, text: str) -> int:
        try:
            return self.client.count_tokens(text, self._is_cancelled)
        except Stopped:
            self._check_cancelled()
            raise

    def run_window(self, run: WindowRun) -> WindowResult:
        mime, b64 = encode_flac_base64(run.samples)
        audio_url = f"data:{mime};base64,{b64}"
        del b64
        audio_tokens = -(-len(run.samples) // AUDIO_HOP)
        context_len = self.client.status.max_model_len or MODEL_CONTEXT_TOKENS
        room = max(1, context_len - audio_tokens - PROMPT_OVERHEAD_TOKENS)
        budget = max(1, min(output_budget(run.duration, run.max_new_tokens), room))
        user: list[dict[str, Any]] = [{"type": "audio_url", "audio_url": {"url": audio_url}}]
        if self.settings.dialect == "official":
            user.append({"type": "text", "text": instruction(run.duration, run.prompt)})
        elif run.prompt:  # the checkpoint's template writes the instruction around the context
            user.append({"type": "text", "text": run.prompt})

        def attempt(tried: Try) -> TryOutcome:
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ]
            body: dict[str, Any] = {
                "model": self.settings.model,
                "messages": messages,
                "max_tokens": budget,
                "temperature": 0.0 if tried.temperature is None else tried.temperature,
                "top_p": 1.0 if tried.top_p is None else tried.top_p,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if tried.seed is not None:
                body["seed"] = tried.seed
            if tried.prefix:  # continue the answer from the last complete segment
                messages.append({"role": "assistant", "content": _ROLE_RE.sub("", tried.prefix)})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            # (continuation "restart": a recovery try asks for the whole window again; the
            # segments it repeats are dropped by the stream)
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            report = run.on_upload if tried.number == 0 else (lambda _p: None)
            return self._stream(run, tried, data, report, budget)

        return run_with_recovery(run, attempt, continues=self.settings.continuation == "prefix")

    def _stream(
        self, run: WindowRun, tried: Try, body: bytes, report: Callable[[float], None], budget: int
    ) -> TryOutcome:
        report(0.0)
        run.check_cancelled()
        try:
            exchange = self.client.open_stream(body, report, run.is_cancelled)
        except Stopped:  # a cancel, in whichever phase
            run.check_cancelled()
            raise
        report(1.0)
        stream = tried.stream
        cap = _Cap(budget)
        finish: str | None = None
        usage: int | None = None
        done_seen = False
        try:
            for chunk in self.client.stream_events(exchange, cap.stream_bytes):
                if chunk.get("done") is True:
                    done_seen = True
                    break
                usage = _completion_tokens(chunk.get("usage")) or usage
                if run.is_cancelled() or cap.event():
                    break
                choices = chunk.get("choices")
                for choice in choices if isinstance(choices, list) else ():
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta")
                    content = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(content, str) and content:
                        if cap.piece(content):
                            break
                        stream.push([zlib.crc32(content.encode("utf-8"))])
                        stream.feed(content)
                        if stream.looping:
                            break
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str) and reason:
                        finish = reason[:32]
                if stream.looping or cap.over:
                    break
        except TooLarge:  # the stream's byte cap: the server ignored max_tokens
            cap.over = True
        except Exception:
            run.check_cancelled()  # a stream closed by cancel is a cancel, not a server error
            raise
        finally:
            exchange.close()
        run.check_cancelled()
        if cap.over:
            log.warning(
                "%s sent more than the %d tokens asked for (max_tokens); stopped reading there",
                self.settings.shown,
                budget,
            )
            stream.end()
            return TryOutcome(budget, True, budget)
        if not done_seen and finish is None and not stream.looping:
            raise RemoteError(
                f"{self.settings.shown} ended the stream without [DONE] or a finish reason; the "
                "answer is incomplete",
                kind="remote_incomplete",
            )
        if not done_seen and not stream.looping:
            log.warning("%s ended the stream without [DONE] after it finished", self.settings.shown)
        stream.end()
        new_tokens = usage if usage is not None else cap.pieces
        return TryOutcome(new_tokens, finish == "length", budget)


class _Cap:
    """How much of an answer is read: the window's token budget, however the server counts. A
    server that ignores ``max_tokens`` is cut at the budget (the parser holds what it was sent)."""

    def __init__(self, budget: int) -> None:
        self.max_pieces = budget + 16  # a content delta carries at least one token
        self.max_text = budget * 64 + 4096  # no real token is this long on average
        self.max_events = 2 * budget + 64  # empty deltas (half a character) and the extras
        self.stream_bytes = budget * 4096 + 2**20  # a vLLM chunk of one token is ~300 bytes
        self.pieces = self.text = self.events = 0
        self.over = False

    def event(self) -> bool:
        self.events += 1
        self.over = self.over or self.events > self.max_events
        return self.over

    def piece(self, content: str) -> bool:
        self.pieces += 1
        self.text += len(content)
        self.over = self.over or self.pieces > self.max_pieces or self.text > self.max_text
        return self.over


def _completion_tokens(usage: Any) -> int | None:
    value = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 10**7:
        return value
    return None
