"""Secrets never leave the process: the secrets in use (the remote API key, a URL's password) and
the one place that takes them out of text.

Three ways out are covered: URLs are shown without credentials or query (:func:`redact_url`);
error messages and their ``data`` go through :func:`redact` / :func:`redact_data`; and every log
record of every logger (httpx2's request lines and tracebacks included) is cleaned when it is
created (:func:`install`, a log record factory), so no handler, formatter or test capture sees a
secret.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "install", "redact", "redact_data", "redact_url", "register", "url_secrets"]

MASK = "***"
# A shorter secret would match ordinary words in messages; URLs are shown without credentials
# anyway, so only such a secret's free-text occurrences are left.
MIN_SECRET_CHARS = 4

# The userinfo of any URL in a text (``scheme://user:password@``), and a URL's query.
_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]*@")
_QUERY_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*")

_secrets: frozenset[str] = frozenset()
_lock = threading.Lock()
_installed = False


def register(*secrets: str | None) -> None:
    """Remember ``secrets`` (None and short ones are skipped) for :func:`redact`, and clean the
    logs of them from now on (:func:`install`)."""
    global _secrets
    new = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
    if new - _secrets:
        with _lock:
            _secrets = _secrets | new
        install()


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url``'s userinfo: the password as written and decoded, the whole
    userinfo, and the Basic authorization value made of it."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return []
    userinfo = netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    out = [userinfo, unquote(userinfo)]
    if password:
        out += [password, unquote(password)]
    basic = f"{unquote(user)}:{unquote(password)}".encode()
    out.append(base64.b64encode(basic).decode("ascii"))
    return out


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``, longest first."""
    secrets = _secrets
    if not secrets or not text:
        return text
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_data(value: Any) -> Any:
    """``value`` (an error's ``data``: dicts, lists, strings) with secrets redacted in every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment (``http://***@host:8000/v1`` when it had
    credentials), for messages, logs and health. Never raises, whatever ``url`` holds."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    host = parts.netloc
    if "@" in host:
        host = MASK + "@" + host.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _has_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets)


def _strip_userinfo(text: str) -> str:
    return _USERINFO_RE.sub(r"\1" + MASK + "@", text) if "@" in text else text


def _clean(record: logging.LogRecord) -> None:
    """Take secrets and URL credentials out of ``record``'s message, traceback and stack."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format: logging reports it when the record is emitted
        return
    cleaned = message
    if record.name == "httpx2" or record.name.startswith("httpx2."):
        cleaned = _QUERY_RE.sub(r"\1", cleaned)  # its request lines: no query either
    cleaned = redact(_strip_userinfo(cleaned))
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if not _secrets:
        return
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if _has_secret(text) or "@" in text:
            record.exc_text = redact(_strip_userinfo(text))  # formatters use exc_text when set
    if record.stack_info and _has_secret(record.stack_info):
        record.stack_info = redact(record.stack_info)


def install() -> None:
    """Clean every log record as it is created (idempotent): registered secrets, the userinfo of
    any URL, and the query of httpx2's request lines (``HTTP Request: GET <url> …`` at INFO)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _clean(record)
        return record

    logging.setLogRecordFactory(factory)
