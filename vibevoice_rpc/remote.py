"""The remote backend: windows transcribed by a VibeVoice-ASR server on vLLM (OpenAI-compatible).

Microsoft's server (``vllm_plugin``, model name ``vibevoice``) takes ``POST /v1/chat/completions``
with the audio as a base64 data URI and the whole instruction as text, and streams the answer as
server-sent events (``data: {…choices[0].delta.content…}`` lines, then ``data: [DONE]``). The
pipeline is the local one: windows, the incremental parser, speaker linking, loop recovery
(:func:`vibevoice_rpc.stream.run_with_recovery`, a continuation sent as a final assistant message),
progress and cancel. Only one try differs: :class:`RemoteRunner`.

Two dialects: ``official`` (Microsoft's plugin: the text part is the full trained instruction) and
``transformers`` (vLLM's Transformers backend renders the checkpoint's chat template, which writes
the instruction itself and reads the text part as the context).

HTTP and SSE come from httpx2 (a dependency of huggingface_hub already); no torch is imported.
The API key is sent as a bearer token and never logged.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import RemoteSettings
from .errors import RemoteError
from .planner import (
    AUDIO_HOP,
    MAX_CONTEXT_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    SAMPLE_RATE,
    output_budget,
)
from .prompt import instruction
from .stream import RunnerInfo, Try, TryOutcome, WindowResult, WindowRun, run_with_recovery

__all__ = ["RemoteClient", "RemoteRunner", "ServerStatus"]

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant that transcribes audio input into text output in JSON format."
)
_ROLE_RE = re.compile(r"^\s*assistant\s*", re.IGNORECASE)
_RETRY_STATUSES = (429, 502, 503, 504)
_BACKOFF_CAP = 10.0


@dataclass
class ServerStatus:
    """What health shows of the server: from the last probe, never waited for."""

    url: str
    reachable: bool | None = None  # None: not probed yet
    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    checked_at: float | None = None  # time.monotonic() of the last probe

    def to_dict(self) -> dict[str, Any]:
        age = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        return {
            "url": self.url,
            "reachable": self.reachable,
            "models": list(self.models),
            "max_model_len": self.max_model_len,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "checked_s_ago": age,
        }


def encode_flac_base64(samples: np.ndarray) -> tuple[str, str]:
    """The window as 16-bit FLAC at 24 kHz (lossless for the model's input; ~half of WAV) →
    (mime type, base64 text)."""
    import soundfile as sf

    buf = io.BytesIO()
    clipped = np.clip(samples, -1.0, 1.0)
    sf.write(buf, clipped, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return "audio/flac", base64.b64encode(buf.getvalue()).decode("ascii")


class RemoteClient:
    """HTTP to the server: probes, token counts and streamed chat completions."""

    def __init__(self, settings: RemoteSettings) -> None:
        import httpx2

        self.settings = settings
        headers = {"User-Agent": "vibevoice-rpc"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http = httpx2.Client(
            base_url=settings.base,
            headers=headers,
            timeout=httpx2.Timeout(
                connect=settings.connect_timeout,
                read=settings.idle_timeout,
                write=max(60.0, settings.idle_timeout),
                pool=settings.connect_timeout,
            ),
        )
        self.status = ServerStatus(url=settings.shown)
        self._probe_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- probing (health) -------------------------------------------------------------------

    def probe(self, timeout: float = 2.0) -> ServerStatus:
        """Ask ``GET /v1/models`` (bounded by ``timeout``) and update :attr:`status`."""
        import httpx2

        with self._probe_lock:
            started = time.monotonic()
            status = ServerStatus(url=self.settings.shown, checked_at=started)
            try:
                response = self._http.get("/v1/models", timeout=timeout)
                status.latency_ms = round((time.monotonic() - started) * 1000, 1)
                if response.status_code != 200:
                    status.reachable = True
                    status.error = f"GET /v1/models: HTTP {response.status_code}"
                else:
                    status.reachable = True
                    data = response.json().get("data") or []
                    status.models = [str(m.get("id")) for m in data if isinstance(m, dict)]
                    for m in data:
                        if isinstance(m, dict) and m.get("id") == self.settings.model:
                            length = m.get("max_model_len")
                            status.max_model_len = int(length) if length else None
                    if self.settings.model not in status.models:
                        status.error = (
                            f"the server serves {status.models or 'no models'}, not "
                            f"{self.settings.model!r}"
                        )
            except (httpx2.HTTPError, ValueError) as exc:
                status.reachable = False
                status.error = _describe(exc)
            self.status = status
            return status

    def refresh_in_background(self, max_age: float = 15.0) -> None:
        """Start a probe when the last one is older than ``max_age`` (health never waits)."""
        checked = self.status.checked_at
        if checked is not None and time.monotonic() - checked < max_age:
            return
        if self._probe_lock.locked():
            return
        threading.Thread(target=self.probe, name="vibevoice-remote-probe", daemon=True).start()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the server's tokenizer (vLLM ``POST /tokenize``); an upper
        estimate when the server has no such endpoint."""
        import httpx2

        try:
            response = self._http.post(
                "/tokenize",
                json={"model": self.settings.model, "prompt": text, "add_special_tokens": False},
                timeout=5.0,
            )
            if response.status_code == 200:
                return int(response.json()["count"])
        except (httpx2.HTTPError, ValueError, KeyError, TypeError):
            log.debug("tokenize failed; estimating", exc_info=True)
        return len(text.encode("utf-8")) // 3 + 1  # byte-level BPE: ~3-4 bytes a token in text

    # --- one streamed completion ------------------------------------------------------------

    def post_with_retries(
        self, body: bytes, on_sent: Callable[[float], None], is_cancelled: Callable[[], bool]
    ) -> Any:
        """Open the SSE stream of ``POST /v1/chat/completions``, retrying 429/5xx and refused
        connections with backoff. Returns the open response (the caller closes it)."""
        import httpx2

        attempts = max(1, self.settings.retries + 1)
        for number in range(attempts):
            request = self._http.build_request(
                "POST",
                "/v1/chat/completions",
                content=_chunks(body, on_sent),
                headers={
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Accept": "text/event-stream",
                },
            )
            try:
                response = self._http.send(request, stream=True)
            except httpx2.ConnectError as exc:
                if number + 1 >= attempts or is_cancelled():
                    raise _unreachable(self.settings, exc) from None
                _sleep(_backoff(number, None), is_cancelled)
                continue
            except httpx2.TimeoutException as exc:
                raise RemoteError(
                    f"{self.settings.shown} did not answer: {_describe(exc)}",
                    kind="remote_unreachable",
                    hint="check VIBEVOICE_REMOTE_URL and that the server is running",
                    url=self.settings.shown,
                ) from None
            if response.status_code == 200:
                return response
            text = _error_text(response)
            response.close()
            if response.status_code in _RETRY_STATUSES and number + 1 < attempts:
                wait = _backoff(number, response.headers.get("Retry-After"))
                log.warning(
                    "server answered %d (%s); retrying in %.1f s", response.status_code, text, wait
                )
                _sleep(wait, is_cancelled)
                if is_cancelled():
                    break
                continue
            raise _http_error(self.settings, response.status_code, text)
        raise RemoteError("cancelled while waiting to retry", kind="remote_busy")

    def stream_events(self, response: Any) -> Iterator[dict[str, Any]]:
        """The JSON chunks of an open SSE response, until ``[DONE]`` or the end of the body (the
        caller decides whether an end without ``[DONE]`` is complete); raises on an error chunk
        or a stall (no byte within the idle timeout)."""
        import httpx2

        source = httpx2.EventSource(response)
        try:
            for event in source:
                data = event.data.strip()
                if data == "[DONE]":
                    yield {"done": True}
                    return
                if not data:
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise RemoteError(
                        f"{self.settings.shown} sent a line that is not JSON: {data[:120]!r}",
                        kind="remote_protocol",
                    ) from None
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise _stream_error(self.settings, chunk["error"])
                if isinstance(chunk, dict):
                    yield chunk
        except httpx2.ReadTimeout:
            raise RemoteError(
                f"{self.settings.shown} sent nothing for {self.settings.idle_timeout:.0f} s; the "
                "stream stalled",
                kind="remote_stalled",
                hint="the server may be overloaded; raise VIBEVOICE_REMOTE_IDLE_TIMEOUT",
                idle_timeout=self.settings.idle_timeout,
            ) from None
        except httpx2.SSEError as exc:
            raise RemoteError(
                f"{self.settings.shown} did not answer with an event stream: {_describe(exc)}",
                kind="remote_protocol",
                hint="check VIBEVOICE_REMOTE_URL points at the vLLM server itself",
            ) from None
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.StreamError) as exc:
            raise RemoteError(
                f"{self.settings.shown} closed the stream early: {_describe(exc)}",
                kind="remote_incomplete",
            ) from None


class RemoteRunner:
    """Runs windows on the server: one try = one streamed chat completion."""

    def __init__(self, client: RemoteClient, info: RunnerInfo) -> None:
        self.client = client
        self.info = info
        self.settings = client.settings

    def count_tokens(self, text: str) -> int:
        return self.client.count_tokens(text)

    def run_window(self, run: WindowRun) -> WindowResult:
        mime, b64 = encode_flac_base64(run.samples)
        audio_url = f"data:{mime};base64,{b64}"
        del b64
        audio_tokens = -(-len(run.samples) // AUDIO_HOP)
        context_len = self.client.status.max_model_len or MAX_CONTEXT_TOKENS
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
        response = self.client.post_with_retries(body, report, run.is_cancelled)
        report(1.0)
        done = threading.Event()
        closer = threading.Thread(
            target=_close_on_cancel,
            args=(response, run.is_cancelled, done),
            name="vibevoice-remote-cancel",
            daemon=True,
        )
        closer.start()
        stream = tried.stream
        pieces = 0
        finish: str | None = None
        usage: int | None = None
        done_seen = False
        try:
            for chunk in self.client.stream_events(response):
                if chunk.get("done") is True:
                    done_seen = True
                    break
                if chunk.get("usage"):
                    usage = int(chunk["usage"].get("completion_tokens") or 0) or usage
                if run.is_cancelled():
                    break
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        pieces += 1
                        stream.push([zlib.crc32(delta.encode("utf-8"))])
                        stream.feed(delta)
                        if stream.looping:
                            break
                    finish = choice.get("finish_reason") or finish
                if stream.looping:
                    break
        except Exception:
            run.check_cancelled()  # a stream closed by cancel is a cancel, not a server error
            raise
        finally:
            done.set()
            response.close()
        run.check_cancelled()
        if not done_seen and finish is None and not stream.looping:
            raise RemoteError(
                f"{self.settings.shown} ended the stream without [DONE] or a finish reason; the "
                "answer is incomplete",
                kind="remote_incomplete",
            )
        if not done_seen and not stream.looping:
            log.warning("%s ended the stream without [DONE] after it finished", self.settings.shown)
        stream.end()
        new_tokens = usage if usage is not None else pieces
        return TryOutcome(new_tokens, finish == "length", budget)


def _close_on_cancel(
    response: Any, is_cancelled: Callable[[], bool], done: threading.Event
) -> None:
    """Abort the stream within ~0.1 s of a cancel. Closing the response alone does not wake a
    read blocked on a quiet server, so the socket is shut down first (that wakes it on Linux,
    macOS and Windows alike)."""
    while not done.wait(0.1):
        if is_cancelled():
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass
            response.close()
            return


def _chunks(
    body: bytes, on_sent: Callable[[float], None], size: int = 256 * 1024
) -> Iterator[bytes]:
    total = max(1, len(body))
    for start in range(0, len(body), size):
        yield body[start : start + size]
        on_sent(min(1.0, (start + size) / total))


def _backoff(number: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(_BACKOFF_CAP, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(_BACKOFF_CAP, 0.5 * 2**number)


def _sleep(seconds: float, is_cancelled: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not is_cancelled() and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _unreachable(settings: RemoteSettings, exc: BaseException) -> RemoteError:
    text = _describe(exc)
    tls = any(word in text.lower() for word in ("ssl", "certificate", "tls"))
    return RemoteError(
        f"cannot reach {settings.shown}: {text}",
        kind="remote_tls" if tls else "remote_unreachable",
        hint=(
            "the server's TLS certificate is not trusted (use a valid certificate or http:// on "
            "a trusted network)"
            if tls
            else "check VIBEVOICE_REMOTE_URL and that the server is running"
        ),
        url=settings.shown,
    )


def _error_text(response: Any) -> str:
    try:
        response.read()
        data = response.json()
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                return str(err.get("message") or err.get("detail") or err)[:500]
            return str(data.get("message") or data.get("detail") or err)[:500]
    except Exception:  # a non-JSON error page
        pass
    try:
        return response.text.strip()[:300]
    except Exception:
        return ""


def _http_error(settings: RemoteSettings, status: int, text: str) -> RemoteError:
    where = settings.shown
    detail = f": {text}" if text else ""
    if status in (401, 403):
        return RemoteError(
            f"{where} refused the request (HTTP {status}){detail}",
            kind="remote_auth",
            hint="set VIBEVOICE_REMOTE_API_KEY (or reload_model remote_api_key) to a valid key",
            status=status,
        )
    if status == 404:
        return RemoteError(
            f"{where} has no model {settings.model!r} or no /v1/chat/completions (HTTP 404){detail}",
            kind="remote_not_found",
            hint="check VIBEVOICE_REMOTE_MODEL (the server's --served-model-name) and the URL",
            status=status,
        )
    if status == 413:
        return RemoteError(
            f"{where} refused the audio as too large (HTTP 413){detail}",
            kind="remote_too_large",
            hint="lower VIBEVOICE_REMOTE_MAX_AUDIO_SECONDS (shorter windows) or raise the "
            "server's body limit (nginx client_max_body_size)",
            status=status,
        )
    if status in _RETRY_STATUSES:
        return RemoteError(
            f"{where} is busy or unavailable (HTTP {status}, {settings.retries} retries){detail}",
            kind="remote_busy",
            hint="try again later, or add servers (--dp) behind the URL",
            status=status,
        )
    return RemoteError(
        f"{where} answered HTTP {status}{detail}",
        kind="remote_bad_request" if 400 <= status < 500 else "remote_server_error",
        status=status,
    )


def _stream_error(settings: RemoteSettings, error: Any) -> RemoteError:
    message = error.get("message") if isinstance(error, dict) else str(error)
    return RemoteError(
        f"{settings.shown} reported an error during the stream: {message}",
        kind="remote_error",
        server_error=error if isinstance(error, dict) else {"message": str(error)},
    )
