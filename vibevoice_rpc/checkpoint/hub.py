"""Talking to the Hub (or the mirror at ``HF_ENDPOINT``) for a download: the listing of a
checkpoint's files, an error answer read with a bound, huggingface_hub's and httpx2's exceptions as
:class:`~vibevoice_rpc.errors.DownloadFailed` with a specific kind, and huggingface_hub's import.

The model-info request is huggingface_hub's (its session, endpoint, headers, token), but the body is
read here, bounded and parsed by :mod:`.listing`: whoever controls ``HF_ENDPOINT`` writes it.
huggingface_hub is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import DownloadFailed
from .listing import MAX_LISTING_BYTES, Listing, bad_listing, parse_model_info

__all__ = [
    "ERROR_BODY_BYTES",
    "fetch_listing",
    "hub_error",
    "preimport_hub",
    "quiet_hub",
    "raise_for_status",
]

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024  # bytes per read of the listing
ERROR_BODY_BYTES = 64 * 1024  # of an error answer's body: enough for the hub's JSON message
LISTING_DEADLINE = 120.0  # seconds for the whole listing (a mirror dripping bytes is cut off)


def fetch_listing(
    model_id: str, revision: str, target: Path, *, token: str | None = None, timeout: float = 30.0
) -> Listing:
    """The checkpoint's files with sizes and hashes, from the hub; every name checked against
    ``target`` (:mod:`.listing`). Raises :class:`DownloadFailed`.

    The model-info request is huggingface_hub's (its session, endpoint, headers, token), but the
    body is read here, bounded (:data:`MAX_LISTING_BYTES` decoded, :data:`LISTING_DEADLINE` in all)
    and parsed here: ``HfApi.model_info`` reads any body whole and takes whatever fields it holds."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session

    url = f"{constants.ENDPOINT}/api/models/{model_id}/revision/{quote(revision, safe='')}"
    try:
        with get_session().stream(
            "GET",
            url,
            headers=build_hf_headers(token=token),
            params={"blobs": True},
            timeout=timeout,
        ) as response:
            if response.status_code >= 400:
                raise_for_status(response)
            body = _read_capped(response, MAX_LISTING_BYTES, model_id)
    except DownloadFailed:
        raise
    except Exception as exc:
        raise hub_error(exc, model_id, revision) from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_listing(f"The hub's answer for {model_id} is not JSON", model_id) from None
    listing = parse_model_info(data, model_id, revision, target)
    files = listing.files
    if not any(f.name.endswith(".safetensors") for f in files) or not any(
        f.name == "config.json" for f in files
    ):
        raise DownloadFailed(
            f"{model_id}@{revision} has no safetensors checkpoint (config.json + *.safetensors); "
            "only safetensors are downloaded, never .bin/pickle files",
            kind="not_found",
            hint="check the model id and revision",
            model_id=model_id,
            revision=revision,
        )
    return listing


def _read_capped(response: Any, cap: int, model_id: str) -> bytes:
    """The listing's body, decoded, refused past ``cap`` bytes or :data:`LISTING_DEADLINE`."""
    deadline = time.monotonic() + LISTING_DEADLINE
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes(chunk_size=READ_CHUNK):
        size += len(chunk)
        if size > cap:
            raise bad_listing(
                f"The hub's listing of {model_id} is larger than {cap // 2**20} MiB", model_id
            )
        if time.monotonic() > deadline:
            raise DownloadFailed(
                f"The hub took more than {LISTING_DEADLINE:.0f} s to send the listing of "
                f"{model_id}",
                kind="network",
                hint="call download_model again",
                model_id=model_id,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def raise_for_status(response: Any) -> None:
    """``hf_raise_for_status`` on a streamed response, reading at most :data:`ERROR_BODY_BYTES`
    of its body (huggingface_hub's own reads a streamed error body whole, however long)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    if response.status_code < 400:
        return
    body = b""
    try:
        for chunk in response.iter_bytes(chunk_size=ERROR_BODY_BYTES):
            body += chunk
            if len(body) >= ERROR_BODY_BYTES:
                break
    except httpx2.HTTPError:  # a body that breaks off: the status and headers still say enough
        pass
    # Decoded already: the copy must not claim an encoding or a length it no longer has.
    headers = [
        (k, v)
        for k, v in response.headers.items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    copy = httpx2.Response(
        response.status_code,
        headers=headers,
        content=body[:ERROR_BODY_BYTES],
        request=response.request,
    )
    hf_raise_for_status(copy)


def hub_error(exc: BaseException, model_id: str, revision: str | None) -> DownloadFailed:
    """A huggingface_hub / httpx2 exception as a :class:`DownloadFailed` with a specific kind."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{model_id}@{revision or 'main'}"
    endpoint = constants.ENDPOINT
    if isinstance(exc, DownloadFailed):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadFailed(
            f"Offline mode is on (HF_HUB_OFFLINE): {where} cannot be downloaded",
            kind="offline",
            hint="unset HF_HUB_OFFLINE / VIBEVOICE_OFFLINE, or copy the checkpoint in by hand",
            offline_mode=True,
        )
    status = None
    response = getattr(exc, "response", None)
    if response is not None:
        status = getattr(response, "status_code", None)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, GatedRepoError) or (
        isinstance(exc, HfHubHTTPError)
        and status in (401, 403)
        and not isinstance(exc, RepositoryNotFoundError)
    ):
        return DownloadFailed(
            f"Not authorized to download {where} (HTTP {status}): {detail}",
            kind="unauthorized",
            hint="accept the model's terms on the hub if it is gated, and set HF_TOKEN to a "
            "token with read access",
            status=status,
            model_id=model_id,
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadFailed(
            f"Revision {revision!r} of {model_id} not found (HTTP {status})",
            kind="not_found",
            hint="check the revision (a branch, tag or commit)",
            status=status,
            model_id=model_id,
            revision=revision,
        )
    if isinstance(exc, RepositoryNotFoundError) or (
        isinstance(exc, HfHubHTTPError) and status == 404
    ):
        return DownloadFailed(
            f"Model {where} not found on {endpoint} (HTTP {status})",
            kind="not_found",
            hint="check the model id; a private model also needs HF_TOKEN",
            status=status,
            model_id=model_id,
            revision=revision,
        )
    if isinstance(exc, HfHubHTTPError):
        return DownloadFailed(
            f"The hub answered HTTP {status} for {where}: {detail}",
            kind="network",
            status=status,
            model_id=model_id,
        )
    import httpx2

    if isinstance(exc, httpx2.ConnectError):
        return DownloadFailed(
            f"Cannot reach {endpoint} ({detail}): no network?",
            kind="offline",
            hint="check the internet connection (and HF_ENDPOINT / proxy settings)",
            offline_mode=False,
            endpoint=endpoint,
        )
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        return DownloadFailed(
            f"Download of {where} failed: {type(exc).__name__}: {detail}",
            kind="network",
            hint="call download_model again: it resumes where it stopped",
            endpoint=endpoint,
        )
    raise exc


def preimport_hub() -> None:
    """Import huggingface_hub (~0.2 s, once): on a background thread after ``ready``, so the first
    ``model_status`` (answered on the reader thread) does not pay for it."""
    try:
        import huggingface_hub  # noqa: F401
        from huggingface_hub import constants, snapshot_download  # noqa: F401
    except Exception:  # model_status reports the failure itself when it runs
        log.debug("importing huggingface_hub failed", exc_info=True)


def quiet_hub() -> None:
    """No tqdm bars from huggingface_hub (they would go to stderr at best)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
