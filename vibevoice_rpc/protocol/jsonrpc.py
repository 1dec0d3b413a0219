"""Generic JSON-RPC 2.0 envelopes and codec (msgspec). Knows nothing about speech.

Decoding happens in two steps, as msgspec recommends: the envelope first, with ``params`` kept as
``msgspec.Raw``; then the params with a per-method decoder (see :func:`decode_params`). The mapping of
failures to spec codes lives here:

* bytes that are not JSON (or not UTF-8)         → −32700 Parse error, ``id: null``
* JSON that is not a valid request object        → −32600 Invalid Request (``id`` echoed when readable)
* params that don't match the method's Struct    → −32602 Invalid params (message names the field)
"""

from __future__ import annotations

import typing
from typing import Any, Literal, TypeVar

import msgspec

from ..errors import InvalidParams, InvalidRequest, ParseError, RpcError
from .transport import id_of_unparsable

__all__ = [
    "Id",
    "Request",
    "ErrorObject",
    "Response",
    "ErrorResponse",
    "Notification",
    "Invalid",
    "decode_message",
    "decode_batch_member",
    "decode_params",
    "encode_result",
    "encode_error",
    "encode_notification",
    "PARSE_ERROR_EXAMPLE",
]

Id = int | float | str | None

# A correct line a human can paste, shown in parse errors (people drive the server by hand).
PARSE_ERROR_EXAMPLE = '{"jsonrpc":"2.0","id":1,"method":"health"}'

_EMPTY = msgspec.Raw(b"")
# msgspec parses nesting recursively and raises RecursionError (not DecodeError) past the
# interpreter's recursion limit: about 1000 levels, less the caller's stack. Such a message is an
# invalid request, answered with its id when the id can be found without parsing the whole line.
TOO_DEEP = "Invalid Request: the message is nested too deeply (more than about 900 levels)"


class Request(msgspec.Struct, frozen=True):
    """A request (has ``id``, possibly null) or a notification (no ``id`` member at all)."""

    jsonrpc: Literal["2.0"]
    method: str
    params: msgspec.Raw = _EMPTY
    id: Id | msgspec.UnsetType = msgspec.UNSET

    @property
    def is_notification(self) -> bool:
        return self.id is msgspec.UNSET


class ErrorObject(msgspec.Struct):
    code: int
    message: str
    data: Any = msgspec.UNSET


class Response(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    id: Id
    result: Any


class ErrorResponse(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    id: Id
    error: ErrorObject


class Notification(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str
    params: Any


class Invalid(msgspec.Struct, frozen=True):
    """A message that could not become a :class:`Request`; answered with ``error``."""

    id: Id
    error: RpcError


_message_decoder = msgspec.json.Decoder(Request | list[msgspec.Raw])
_member_decoder = msgspec.json.Decoder(Request)
_encoder = msgspec.json.Encoder()
_params_decoders: dict[type, msgspec.json.Decoder[Any]] = {}

_T = TypeVar("_T")


def _readable_id(data: bytes) -> Id:
    """Best effort: the ``id`` of a JSON object that failed validation, if it is a valid id."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    except RecursionError:
        return id_of_unparsable(data)
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return value
    return None


def decode_message(line: bytes) -> Request | list[msgspec.Raw] | Invalid:
    """Decode one line: a request/notification, a batch (list of raw members), or an error."""
    try:
        line.decode("utf-8")  # msgspec does not validate bytes it skips (unknown fields, Raw)
    except UnicodeDecodeError as exc:
        return Invalid(
            None,
            ParseError(
                f"Parse error: the line is not valid UTF-8 ({exc.reason} at byte {exc.start}). "
                f"Send one JSON-RPC 2.0 object per line, for example: {PARSE_ERROR_EXAMPLE}",
                example=PARSE_ERROR_EXAMPLE,
            ),
        )
    try:
        return _message_decoder.decode(line)
    except RecursionError:
        return Invalid(id_of_unparsable(line), InvalidRequest(TOO_DEEP))
    except msgspec.ValidationError as exc:
        return Invalid(_readable_id(line), InvalidRequest(f"Invalid Request: {exc}"))
    except msgspec.DecodeError as exc:
        return Invalid(
            None,
            ParseError(
                f"Parse error: {exc}. Send one JSON-RPC 2.0 object per line, "
                f"for example: {PARSE_ERROR_EXAMPLE}",
                example=PARSE_ERROR_EXAMPLE,
            ),
        )


def decode_batch_member(raw: msgspec.Raw) -> Request | Invalid:
    """Decode one member of a batch (already valid JSON)."""
    try:
        return _member_decoder.decode(raw)
    except RecursionError:
        data = bytes(raw)
        return Invalid(id_of_unparsable(data), InvalidRequest(TOO_DEEP))
    except msgspec.DecodeError as exc:
        return Invalid(_readable_id(bytes(raw)), InvalidRequest(f"Invalid Request: {exc}"))


def decode_params(params: msgspec.Raw, type_: type[_T]) -> _T:
    """Decode ``params`` into the method's Struct; failures raise :class:`InvalidParams`."""
    decoder = _params_decoders.get(type_)
    if decoder is None:
        decoder = _params_decoders[type_] = msgspec.json.Decoder(type_)
    data = bytes(params) if len(params) else b"{}"
    try:
        return decoder.decode(data)
    except RecursionError:
        raise InvalidParams(
            "Invalid params: nested too deeply (more than about 900 levels)"
        ) from None
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in text else None
        if text.startswith("Expected `object`, got") and field is None:
            field = "params"
        if text.startswith("Expected `object`, got `array`"):
            text = (
                "params must be an object with named members (by-position arrays are not supported)"
            )
        elif text.startswith("Expected `object`, got"):
            got = text.split("got ", 1)[1].split(" ", 1)[0].strip("`")
            text = f"params must be an object with named members (or left out), not {got}"
        elif text.startswith("Object missing required field"):
            field = text.split("`")[1]
        allowed = _literal_values(type_, field) if text.startswith("Invalid enum value") else ()
        extra: dict[str, Any] = {}
        if allowed:
            text += f"; expected one of: {', '.join(map(str, allowed))}"
            extra["allowed"] = list(allowed)
        raise InvalidParams(f"Invalid params: {text}", field=field, **extra) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - params were already valid JSON
        raise InvalidParams(f"Invalid params: {exc}") from None


def _literal_values(type_: type, field: str | None) -> tuple[Any, ...]:
    """The values a ``Literal`` field of ``type_`` accepts (for "Invalid enum value" errors)."""
    if not field or "." in field or "[" in field:
        return ()
    try:
        hint = typing.get_type_hints(type_, include_extras=True).get(field)
    except Exception:  # an unresolvable annotation: no list, the message stands alone
        return ()
    values: list[Any] = []
    stack = [hint]
    while stack:
        t = stack.pop()
        if typing.get_origin(t) is typing.Literal:
            values.extend(typing.get_args(t))
        else:
            stack.extend(typing.get_args(t))
    return tuple(dict.fromkeys(values))


def encode_result(id_: Id, result: Any) -> bytes:
    return _encoder.encode(Response(id=id_, result=result))


def encode_error(id_: Id, error: RpcError) -> bytes:
    return _encoder.encode(
        ErrorResponse(id=id_, error=ErrorObject(error.code, error.message, error.data))
    )


def encode_notification(method: str, params: Any) -> bytes:
    return _encoder.encode(Notification(method=method, params=params))
