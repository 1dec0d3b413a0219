"""The remote backend's failures as errors: what a server's answer, a broken connection or a
missed deadline means, each a :class:`~vibevoice_rpc.errors.RemoteError` with a specific kind.
Text that comes from the server or an exception is cut short and has secrets redacted."""

from __future__ import annotations

import json
import re
from typing import Any

from .. import redact
from ..config import RemoteSettings
from ..errors import RemoteError
from .exchange import Stopped

__all__ = [
    "RETRY_STATUSES",
    "deadline_error",
    "describe",
    "http_error",
    "short",
    "stream_error",
    "strict_json",
    "unreachable",
]

RETRY_STATUSES = (429, 502, 503, 504)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, one line, secrets redacted, at most ~300 characters."""
    text = str(exc).strip() or type(exc).__name__
    text = short(text, 300)
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def unreachable(settings: RemoteSettings, exc: BaseException) -> RemoteError:
    text = describe(exc)
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


def short(value: Any, limit: int) -> str:
    """A server's text for a message or a log line: at most ``limit`` characters, one line (its
    control characters become spaces, so it can't fake log lines), secrets redacted."""
    text = value if isinstance(value, str) else repr(value)
    text = _CONTROL_RE.sub(" ", text[: limit * 2])
    return redact.redact(text)[:limit]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(data: bytes) -> Any:
    """Strict JSON of a server's body: no NaN/Infinity; nesting too deep is a ValueError."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason}") from None


def deadline_error(settings: RemoteSettings, stop: Stopped, size: int) -> RemoteError:
    """The error for a phase that missed its deadline before the answer began."""
    where = settings.shown
    if stop.phase == "connect":
        return RemoteError(
            f"{where} did not accept a connection within {stop.limit:g} s",
            kind="remote_unreachable",
            hint="check VIBEVOICE_REMOTE_URL and that the server is running",
            url=where,
            phase=stop.phase,
        )
    if stop.phase == "upload":
        return RemoteError(
            f"{where} did not take the request ({size} bytes) within {stop.limit:g} s",
            kind="remote_timeout",
            hint="the server is not reading or the link is slow; raise "
            "VIBEVOICE_REMOTE_UPLOAD_TIMEOUT or lower VIBEVOICE_REMOTE_MAX_AUDIO_SECONDS",
            phase=stop.phase,
            limit=stop.limit,
        )
    return RemoteError(
        f"{where} did not answer within {stop.limit:g} s of the request",
        kind="remote_stalled",
        hint="the server may be overloaded; raise VIBEVOICE_REMOTE_IDLE_TIMEOUT",
        phase=stop.phase,
        idle_timeout=stop.limit,
    )


def http_error(settings: RemoteSettings, status: int, text: str) -> RemoteError:
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
    if status in RETRY_STATUSES:
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


def stream_error(settings: RemoteSettings, error: Any) -> RemoteError:
    """An error chunk inside the stream; only its short fields travel (a hostile chunk can be
    1 MiB)."""
    fields = error if isinstance(error, dict) else {"message": error}
    message = short(fields.get("message"), 500)
    server_error = {
        k: (v if isinstance(v, (int, float, bool)) or v is None else short(v, 200))
        for k, v in list(fields.items())[:8]
        if isinstance(k, str) and k in ("message", "type", "code", "param")
    }
    return RemoteError(
        f"{settings.shown} reported an error during the stream: {message}",
        kind="remote_error",
        server_error=server_error,
    )
