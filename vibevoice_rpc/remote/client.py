"""The remote server over HTTP: health probes (``GET /v1/models``), token counts (``POST
/tokenize``) and streamed chat completions (``POST /v1/chat/completions``), with retries.

Each request is a :class:`~vibevoice_rpc.remote.exchange.Exchange`: a deadline per phase, cancel in
every phase, every body read capped (limits below). What the server sends is checked for shape
before use; failures are logged once, not once per ``health``.
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import redact
from ..config import RemoteSettings
from ..errors import RemoteError
from ..messages import RemoteHealth
from .exchange import BadBody, Deadlines, Exchange, SseDecoder, Stopped, TooLarge
from .failures import (
    RETRY_STATUSES,
    deadline_error,
    describe,
    http_error,
    short,
    stream_error,
    strict_json,
    unreachable,
)

__all__ = ["RemoteClient", "ServerStatus"]

log = logging.getLogger(__name__)

_BACKOFF_CAP = 10.0

# What is read of a server's answers, at most (decompressed). An error page's message fits in a
# few hundred bytes; 8 KiB keeps a proxy's HTML error page readable. vLLM's /v1/models with one
# model is ~0.5 KB and /tokenize of the longest context we send (~8,400 characters) ~70 KB of ids:
# 1 MiB is over ten times that, and small enough to hold and parse at once.
ERROR_BODY_LIMIT = 8 * 1024
ERROR_BODY_SECONDS = 10.0  # an error page trickling in is given up on (the error still stands)
LISTING_LIMIT = 2**20
SSE_EVENT_LIMIT = 2**20  # one event (a vLLM token chunk is ~300 bytes; merged deltas are larger)
MODELS_SHOWN = 16  # model ids health shows (models_count has them all)
MAX_MODEL_LEN = 2**24  # a larger max_model_len is not believed (16 M tokens)


class _NoAnswer(ValueError):
    """The server could not be reached, or did not answer in time."""


@dataclass
class ServerStatus:
    """What health shows of the server: from the last probe, never waited for."""

    url: str
    reachable: bool | None = None  # None: not probed yet
    models: list[str] = field(default_factory=list)  # the first MODELS_SHOWN ids
    models_count: int = 0
    max_model_len: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    checked_at: float | None = None  # time.monotonic() of the last probe

    def health(self, **settings: str | None) -> RemoteHealth:
        """health's ``remote`` object, with the ``settings`` in use (model, dialect, fallback)."""
        age = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        return RemoteHealth(
            url=self.url,
            reachable=self.reachable,
            models=list(self.models),
            models_count=self.models_count,
            max_model_len=self.max_model_len,
            latency_ms=self.latency_ms,
            error=self.error,
            checked_s_ago=age,
            **settings,
        )


class RemoteClient:
    """HTTP to the server: probes, token counts and streamed chat completions, each one an
    :class:`~vibevoice_rpc.remote.exchange.Exchange` (a deadline per phase, cancel in every phase,
    every body read capped)."""

    def __init__(self, settings: RemoteSettings) -> None:
        import httpx2

        redact.install()
        self.settings = settings
        headers = {"User-Agent": "vibevoice-rpc", "Accept-Encoding": "identity"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http = httpx2.Client(
            base_url=settings.base,
            headers=headers,
            # No connection is kept alive: each request's own connect gives its socket to the
            # exchange (httpcore's trace), which shuts it down on cancel or a deadline.
            limits=httpx2.Limits(max_keepalive_connections=0),
            timeout=httpx2.Timeout(
                connect=settings.connect_timeout,
                read=settings.idle_timeout,
                write=max(60.0, settings.idle_timeout),
                pool=settings.connect_timeout,
            ),
        )
        self.status = ServerStatus(url=settings.shown)
        self._background = threading.Lock()  # one background probe at a time
        self._logged_error: str | None = None

    def close(self) -> None:
        self._http.close()

    def _exchange(
        self,
        method: str,
        path: str,
        deadlines: Deadlines,
        is_cancelled: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> Exchange:
        request = self._http.build_request(method, path, **kwargs)
        return Exchange(self._http, request, deadlines, is_cancelled)

    def _get_json(
        self,
        method: str,
        path: str,
        seconds: float,
        is_cancelled: Callable[[], bool] | None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """``(status, decoded JSON)`` of a small answer read within ``seconds`` in all and at most
        :data:`LISTING_LIMIT` bytes; raises :class:`_NoAnswer` when the server can't be reached
        or does not answer in time, ``ValueError`` (saying why) for an answer we can't use, and
        :class:`Stopped` on a cancel."""
        import httpx2

        exchange = self._exchange(method, path, Deadlines.within(seconds), is_cancelled, **kwargs)
        try:
            response = exchange.open()
            if response.status_code != 200:
                return response.status_code, None
            body, cut = exchange.read(LISTING_LIMIT)
            if cut:
                raise ValueError(f"its answer is larger than {LISTING_LIMIT // 2**20} MiB")
            return 200, strict_json(body)
        except Stopped as stop:
            if stop.reason == "cancelled":
                raise
            raise _NoAnswer(f"no answer within {seconds:g} s ({stop.phase})") from None
        except httpx2.HTTPError as exc:
            raise _NoAnswer(describe(exc)) from None
        except BadBody as exc:
            raise ValueError(str(exc)) from None
        finally:
            exchange.close()

    # --- probing (health) -------------------------------------------------------------------

    def probe(
        self, timeout: float = 2.0, is_cancelled: Callable[[], bool] | None = None
    ) -> ServerStatus:
        """Ask ``GET /v1/models`` (``timeout`` seconds in all) and update :attr:`status`.
        Never raises, except :class:`Stopped` when ``is_cancelled`` says so."""
        started = time.monotonic()
        status = ServerStatus(url=self.settings.shown, checked_at=started)
        try:
            code, data = self._get_json("GET", "/v1/models", timeout, is_cancelled)
            status.latency_ms = round((time.monotonic() - started) * 1000, 1)
            status.reachable = True
            if code != 200:
                status.error = f"GET /v1/models: HTTP {code}"
            else:
                _read_listing(data, self.settings.model, status)
        except Stopped:
            raise
        except ValueError as exc:  # _NoAnswer too
            status.reachable = not isinstance(exc, _NoAnswer)
            status.error = f"GET /v1/models: {exc}"
        except Exception as exc:  # never a traceback per health call
            status.reachable = False
            status.error = f"GET /v1/models: {describe(exc)}"
            log.debug("probe failed", exc_info=True)
        status.error = redact.redact(status.error)[:300] if status.error else None
        self._note(status)
        self.status = status
        return status

    def _note(self, status: ServerStatus) -> None:
        """Log a probe's failure once (and when it changes or clears), not once per health."""
        if status.error == self._logged_error:
            return
        if status.error:
            log.warning("remote server %s: %s", self.settings.shown, status.error)
        elif self._logged_error:
            log.info("remote server %s answers again", self.settings.shown)
        self._logged_error = status.error

    def refresh_in_background(self, max_age: float = 15.0) -> None:
        """Start a probe when the last one is older than ``max_age`` (health never waits)."""
        checked = self.status.checked_at
        if checked is not None and time.monotonic() - checked < max_age:
            return
        if not self._background.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.probe()
            finally:
                self._background.release()

        threading.Thread(target=run, name="vibevoice-remote-probe", daemon=True).start()

    def count_tokens(self, text: str, is_cancelled: Callable[[], bool] | None = None) -> int:
        """Tokens of ``text`` by the server's tokenizer (vLLM ``POST /tokenize``, within 5 s); an
        upper estimate when the server has no such endpoint or its answer is unusable. Raises
        :class:`Stopped` on a cancel."""
        body = {"model": self.settings.model, "prompt": text, "add_special_tokens": False}
        try:
            code, data = self._get_json("POST", "/tokenize", 5.0, is_cancelled, json=body)
            count = data.get("count") if code == 200 and isinstance(data, dict) else None
            if isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= 10**7:
                return count
            log.debug("tokenize answered HTTP %d without a usable count; estimating", code)
        except ValueError as exc:  # unreachable, too slow, too large, not JSON
            log.warning("%s: POST /tokenize: %s; estimating the tokens", self.settings.shown, exc)
        return len(text.encode("utf-8")) // 3 + 1  # byte-level BPE: ~3-4 bytes a token in text

    # --- one streamed completion ------------------------------------------------------------

    def open_stream(
        self,
        body: bytes,
        on_sent: Callable[[float], None],
        is_cancelled: Callable[[], bool],
    ) -> Exchange:
        """Open the SSE stream of ``POST /v1/chat/completions``, retrying 429/5xx and refused
        connections with backoff. Returns the open exchange (the caller closes it); raises
        :class:`RemoteError`, or :class:`Stopped` on a cancel (in any phase, the back-off too)."""
        import httpx2

        settings = self.settings
        deadlines = Deadlines(
            connect=settings.connect_timeout,
            upload=settings.upload_timeout,
            headers=settings.idle_timeout,
            body=settings.window_timeout,
        )
        attempts = max(1, settings.retries + 1)
        for number in range(attempts):
            upload = _Upload(body)
            exchange = self._exchange(
                "POST",
                "/v1/chat/completions",
                deadlines,
                is_cancelled,
                content=upload.chunks(),
                headers={
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Accept": "text/event-stream",
                },
            )
            try:
                response = exchange.open(on_wait=lambda u=upload: on_sent(u.fraction))
            except Stopped as stop:
                exchange.close()
                if stop.reason == "cancelled":
                    raise
                raise deadline_error(settings, stop, len(body)) from None
            except httpx2.ConnectError as exc:
                exchange.close()
                if number + 1 >= attempts:
                    raise unreachable(settings, exc) from None
                _backoff_sleep(_backoff(number, None), is_cancelled)
                continue
            except httpx2.TimeoutException as exc:  # the client's own per-read/write limits
                exchange.close()
                if isinstance(exc, httpx2.WriteTimeout):
                    stop = Stopped("deadline", "upload", max(60.0, settings.idle_timeout))
                elif isinstance(exc, httpx2.ReadTimeout):
                    stop = Stopped("deadline", "headers", settings.idle_timeout)
                else:
                    stop = Stopped("deadline", "connect", settings.connect_timeout)
                raise deadline_error(settings, stop, len(body)) from None
            except httpx2.HTTPError as exc:
                exchange.close()
                raise RemoteError(
                    f"{settings.shown} broke the connection before answering: {describe(exc)}",
                    kind="remote_incomplete",
                ) from None
            if response.status_code == 200:
                return exchange
            try:
                text = _error_text(exchange)
            finally:
                exchange.close()
            if response.status_code in RETRY_STATUSES and number + 1 < attempts:
                wait = _backoff(number, response.headers.get("Retry-After"))
                log.warning(
                    "server answered %d (%s); retrying in %.1f s", response.status_code, text, wait
                )
                _backoff_sleep(wait, is_cancelled)
                continue
            raise http_error(settings, response.status_code, text)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def stream_events(self, exchange: Exchange, byte_limit: int) -> Iterator[dict[str, Any]]:
        """The JSON chunks of an open SSE response, until ``[DONE]`` or the end of the body (the
        caller decides whether an end without ``[DONE]`` is complete); raises on an error chunk,
        a stall (no byte within the idle timeout), the window's deadline, an event larger than
        :data:`SSE_EVENT_LIMIT`, and :class:`TooLarge` past ``byte_limit`` bytes of stream."""
        import httpx2

        where = self.settings.shown
        kind = exchange.response.headers.get("content-type", "").partition(";")[0].strip()
        if kind.lower() != "text/event-stream":
            raise RemoteError(
                f"{where} did not answer with an event stream (Content-Type {kind[:60]!r})",
                kind="remote_protocol",
                hint="check VIBEVOICE_REMOTE_URL points at the vLLM server itself",
            )
        decoder = SseDecoder(SSE_EVENT_LIMIT)
        try:
            for piece in exchange.chunks(byte_limit):
                for data in decoder.feed(piece):
                    data = data.strip()
                    if data == b"[DONE]":
                        yield {"done": True}
                        return
                    if not data:
                        continue
                    try:
                        chunk = strict_json(data)
                    except ValueError:
                        raise RemoteError(
                            f"{where} sent an event that is not JSON: {data[:120]!r}",
                            kind="remote_protocol",
                        ) from None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise stream_error(self.settings, chunk["error"])
                    if isinstance(chunk, dict):
                        yield chunk
        except Stopped as stop:
            if stop.reason == "cancelled":
                raise
            raise RemoteError(
                f"{where}'s answer took longer than {stop.limit:g} s",
                kind="remote_timeout",
                hint="raise VIBEVOICE_REMOTE_WINDOW_TIMEOUT, or lower "
                "VIBEVOICE_REMOTE_MAX_AUDIO_SECONDS (shorter windows)",
                phase="stream",
                limit=stop.limit,
            ) from None
        except TooLarge as exc:
            if exc.what == "the body":
                raise
            raise RemoteError(
                f"{where} sent {exc.what} longer than {exc.limit} bytes; stopped reading",
                kind="remote_protocol",
                limit=exc.limit,
            ) from None
        except BadBody as exc:
            raise RemoteError(f"{where}: {exc}", kind="remote_protocol") from None
        except httpx2.ReadTimeout:
            raise RemoteError(
                f"{where} sent nothing for {self.settings.idle_timeout:.0f} s; the stream stalled",
                kind="remote_stalled",
                hint="the server may be overloaded; raise VIBEVOICE_REMOTE_IDLE_TIMEOUT",
                idle_timeout=self.settings.idle_timeout,
            ) from None
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.StreamError) as exc:
            raise RemoteError(
                f"{where} closed the stream early: {describe(exc)}",
                kind="remote_incomplete",
            ) from None


class _Upload:
    """A request body in 256 KiB pieces, counting what the sending thread has handed over (read
    by the job's thread for the ``uploading`` progress)."""

    def __init__(self, body: bytes, size: int = 256 * 1024) -> None:
        self.body = body
        self.size = size
        self.sent = 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.sent / max(1, len(self.body)))

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]
            self.sent = min(len(self.body), start + self.size)


def _read_listing(data: Any, model: str, status: ServerStatus) -> None:
    """Fill ``status`` from a ``/v1/models`` answer, checking its shape: at most
    :data:`MODELS_SHOWN` ids are kept (``models_count`` has them all), ``max_model_len`` only when
    it is a sane whole number."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(
            f"the listing is not an object with a data list (got {type(data).__name__})"
        )
    ids = [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]
    status.models = [i[:128] for i in ids[:MODELS_SHOWN]]
    status.models_count = len(ids)
    for m in entries:
        if isinstance(m, dict) and m.get("id") == model:
            length = m.get("max_model_len")
            ok = isinstance(length, int) and not isinstance(length, bool)
            status.max_model_len = length if ok and 0 < length <= MAX_MODEL_LEN else None
            break
    if model not in ids:
        served = f"{status.models}{' …' if len(ids) > MODELS_SHOWN else ''}" if ids else "no models"
        status.error = f"the server serves {served}, not {model!r}"


def _backoff(number: int, retry_after: str | None) -> float:
    """The wait before retry ``number``: the server's ``Retry-After`` (seconds or an HTTP date)
    when it is a sane value, else 0.5 s doubling; at most 10 s. A negative, NaN, infinite or
    unreadable ``Retry-After`` counts as absent."""
    default = min(_BACKOFF_CAP, 0.5 * 2**number)
    text = (retry_after or "").strip()[:64]
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return default
    if not math.isfinite(seconds) or seconds < 0:
        return default
    return min(_BACKOFF_CAP, seconds)


def _backoff_sleep(seconds: float, is_cancelled: Callable[[], bool]) -> None:
    """Wait ``seconds``, raising :class:`Stopped` within ~0.05 s of a cancel."""
    deadline = time.monotonic() + seconds
    while True:
        if is_cancelled():
            raise Stopped("cancelled", "back-off", seconds)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))


def _error_text(exchange: Exchange) -> str:
    """What an error answer says, from at most :data:`ERROR_BODY_LIMIT` bytes read within
    :data:`ERROR_BODY_SECONDS` (a cancel stops it too); never raises but :class:`Stopped`."""
    import httpx2

    exchange.enter("error body", ERROR_BODY_SECONDS)
    try:
        body, cut = exchange.read(ERROR_BODY_LIMIT)
    except Stopped as stop:
        if stop.reason == "cancelled":
            raise
        return f"(its body did not arrive within {ERROR_BODY_SECONDS:g} s)"
    except (httpx2.HTTPError, BadBody) as exc:
        return f"(its body could not be read: {describe(exc)})"
    note = f" … (cut at {ERROR_BODY_LIMIT // 1024} KiB)" if cut else ""
    if not cut:
        try:
            data = strict_json(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                return short(err.get("message") or err.get("detail") or err, 500)
            return short(data.get("message") or data.get("detail") or err, 500)
    return short(body.decode("utf-8", "replace").strip(), 300) + note
