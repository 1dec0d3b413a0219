"""The error table: JSON-RPC 2.0 spec codes, LSP's RequestCancelled, and the server's own codes.

Every error that reaches the client is one of these classes. Each carries a stable ``code``, a
machine-readable ``kind`` (``error.data.kind``), a human message and, where it helps, a ``hint``.
The dispatcher turns any other exception into :class:`InternalError` in exactly one place.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "RpcError",
    "ParseError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "InternalError",
    "RequestCancelled",
    "AudioFileError",
    "AudioDecodeError",
    "AudioTooLong",
    "ModelUnavailable",
    "OutOfMemory",
    "out_of_memory",
    "ModelDoesNotFit",
    "ServerBusy",
    "ShuttingDown",
    "RequestTooLarge",
    "DownloadFailed",
    "ERROR_TABLE",
]


class RpcError(Exception):
    """Base of every error the server answers with."""

    code: ClassVar[int] = -32603
    default_kind: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        hint: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.hint = hint
        self.extra = data

    @property
    def data(self) -> dict[str, Any]:
        """The ``error.data`` object: ``kind``, ``hint`` when set, then any extra fields."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.hint:
            out["hint"] = self.hint
        out.update(self.extra)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r}, {self.data!r})"


# --- JSON-RPC 2.0 specification codes -------------------------------------------------------


class ParseError(RpcError):
    code = -32700
    default_kind = "parse_error"


class InvalidRequest(RpcError):
    code = -32600
    default_kind = "invalid_request"


class MethodNotFound(RpcError):
    code = -32601
    default_kind = "method_not_found"


class InvalidParams(RpcError):
    code = -32602
    default_kind = "invalid_params"


class InternalError(RpcError):
    code = -32603
    default_kind = "internal"


# --- LSP ------------------------------------------------------------------------------------


class RequestCancelled(RpcError):
    """The request was cancelled (``cancel``, ``$/cancelRequest``, ``shutdown`` or stdin EOF)."""

    code = -32800
    default_kind = "cancelled"


# --- The server's own codes (-32000 .. -32099) ----------------------------------------------


class AudioFileError(RpcError):
    """The audio path cannot be read: not_found, is_directory, permission_denied, empty_file."""

    code = -32001
    default_kind = "not_found"


class AudioDecodeError(RpcError):
    """The file is not decodable audio: unsupported_format, corrupt, no_samples, invalid_samples."""

    code = -32002
    default_kind = "corrupt"


class AudioTooLong(RpcError):
    code = -32003
    default_kind = "too_long"


class ModelUnavailable(RpcError):
    """The model cannot be found or failed to load: model_not_found, model_load_failed, …"""

    code = -32004
    default_kind = "model_unavailable"


class OutOfMemory(RpcError):
    """Out of GPU (or host) memory. The message always contains "CUDA out of memory"."""

    code = -32005
    default_kind = "out_of_memory"


def out_of_memory(
    exc: BaseException, *, precision: str | None = None, smaller: str | None = None
) -> OutOfMemory:
    """The one translation of running out of memory (CUDA or host) into the protocol's error.

    ``precision``: what was running (the engine knows; the dispatcher's last-resort boundary does
    not); ``smaller``: the precision to suggest instead."""
    if isinstance(exc, MemoryError):
        what = "the host ran out of memory (MemoryError)"
    else:
        what = str(exc).strip() or type(exc).__name__
    running = f" while running {precision}" if precision else ""
    extra: dict[str, Any] = {}
    if precision:
        extra["precision"] = precision
    if smaller:
        extra["suggested_precision"] = smaller
    return OutOfMemory(
        f"CUDA out of memory{running}: {what}",
        hint=f"try a lower precision ({smaller or 'int8 or nf4'}) or a shorter audio file",
        **extra,
    )


class ModelDoesNotFit(RpcError):
    """The VRAM planner found that the requested precision cannot fit; nothing was loaded."""

    code = -32006
    default_kind = "does_not_fit"


class ServerBusy(RpcError):
    code = -32007
    default_kind = "busy"


class ShuttingDown(RpcError):
    code = -32008
    default_kind = "shutting_down"


class RequestTooLarge(RpcError):
    code = -32009
    default_kind = "request_too_large"


class RemoteError(RpcError):
    """The remote server failed: remote_unreachable, remote_tls, remote_auth, remote_not_found,
    remote_too_large, remote_busy, remote_bad_request, remote_server_error, remote_stalled,
    remote_incomplete, remote_protocol, remote_error. ``data.segments`` holds what was
    transcribed before the failure."""

    code = -32010
    default_kind = "remote_error"


class DownloadFailed(RpcError):
    """``download_model`` failed: offline, unauthorized, not_found, disk_full, corrupt, network,
    write_failed. Whatever was fetched is kept, so the next call resumes."""

    code = -32011
    default_kind = "network"


ERROR_TABLE: tuple[type[RpcError], ...] = (
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    RequestCancelled,
    AudioFileError,
    AudioDecodeError,
    AudioTooLong,
    ModelUnavailable,
    OutOfMemory,
    ModelDoesNotFit,
    ServerBusy,
    ShuttingDown,
    RequestTooLarge,
    RemoteError,
    DownloadFailed,
)
