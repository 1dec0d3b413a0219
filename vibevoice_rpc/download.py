"""The checkpoint on disk: what ``model_status`` reports, and a resumable ``download_model``.

A checkpoint is downloaded into a plain directory (``target_dir``; default ``VIBEVOICE_MODEL_PATH``,
else ``<HF_HOME>/vibevoice-rpc/<org>--<name>``), one file after another, through huggingface_hub's own
primitives (its HTTP session and model-info endpoint for the listing with sizes and hashes,
``hf_hub_url``, ``build_hf_headers``, ``http_stream_backoff``, ``hf_raise_for_status``), so
``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` work as everywhere else. It does
not call ``hf_hub_download`` itself: huggingface_hub 2.4 writes to a process-unique ``.incomplete``
name that the next process never reuses (FIELD-NOTES §10), and reads 10 MiB per chunk, too coarse
for a cancel within 1 s on a slow line. Here each file goes to a stable partial name
(``.vibevoice-download/<file>.<hash>.part``), resumed with ``Range`` by the next call or the next
process; it is checked against the listing's size and hash (LFS sha256, else the git blob sha1)
before it is moved into place, and ``config.json`` is placed last, so a directory with
``config.json`` holds a whole checkpoint.

What the hub sends is hostile data (whoever controls ``HF_ENDPOINT`` writes it): the listing is read
with a bound and every name, size and hash checked before anything is written (:mod:`.hub_listing`);
error bodies are read up to :data:`ERROR_BODY_BYTES`; a file's body never past its listed size.

huggingface_hub is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .config import DEFAULT_MODEL_ID
from .errors import DownloadFailed, InvalidParams, RequestCancelled
from .hub_listing import (
    CHECKPOINT_PATTERNS,
    MAX_LISTING_BYTES,
    Listing,
    RemoteFile,
    bad_listing,
    parse_model_info,
    safe_path,
    shown,
)
from .messages import DownloadParams, DownloadResult, ModelStatusParams, ModelStatusResult
from .model_source import TINY, CheckpointFileError, default_download_dir, read_regular

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "CHECKPOINT_PATTERNS",
    "default_download_dir",
    "download_model",
    "model_status",
    "preimport_hub",
    "quiet_hub",
]

log = logging.getLogger(__name__)

STATE_DIR = ".vibevoice-download"
MANIFEST = "manifest.json"
CHUNK = 256 * 1024  # bytes per read: cancel is checked at least this often
ERROR_BODY_BYTES = 64 * 1024  # of an error answer's body: enough for the hub's JSON message
LISTING_DEADLINE = 120.0  # seconds for the whole listing (a mirror dripping bytes is cut off)
FREE_MARGIN = 64 * 2**20  # kept free on the disk beyond the bytes still to fetch
_RETRIES = 3  # a broken transfer is resumed with Range this many times (after no progress)
_SPEED_WINDOW = 5.0  # seconds of samples behind the reported speed


# --- where ----------------------------------------------------------------------------------


def _target(target_dir: str | None, configured: str | None, model_id: str) -> Path:
    if configured == TINY:  # VIBEVOICE_MODEL_PATH=tiny is the built-in tiny model, not a folder
        configured = None
    raw = target_dir or configured
    if raw:
        return Path(os.path.expanduser(raw)).resolve()
    return default_download_dir(model_id)


def free_bytes(path: Path) -> int | None:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


# --- the listing ----------------------------------------------------------------------------


def fetch_listing(
    model_id: str, revision: str, target: Path, *, token: str | None = None, timeout: float = 30.0
) -> Listing:
    """The checkpoint's files with sizes and hashes, from the hub; every name checked against
    ``target`` (:mod:`.hub_listing`). Raises :class:`DownloadFailed`.

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
    for chunk in response.iter_bytes(chunk_size=CHUNK):
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


# --- the state folder -----------------------------------------------------------------------


def _state(target: Path) -> Path:
    return target / STATE_DIR


def _read_manifest(target: Path) -> Listing | None:
    """The listing a previous download saved, checked as a fresh one (an older version of this
    code saved names unchecked); None when there is none or it does not pass: it is never used
    then, and the next download writes a good one."""
    path = _state(target) / MANIFEST
    try:
        raw = read_regular(path, 2 * MAX_LISTING_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, CheckpointFileError) as exc:
        _ignored(path, exc)
        return None
    try:
        return Listing.from_json(json.loads(raw), target)
    except (ValueError, RecursionError, DownloadFailed) as exc:
        _ignored(path, exc)
        return None


_warned: set[str] = set()


def _ignored(path: Path, exc: BaseException) -> None:
    """Say once per manifest why it is not used (model_status may be polled every second)."""
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("ignoring the download manifest %s: %s", path, getattr(exc, "message", exc))


def _write_manifest(target: Path, listing: Listing, complete: bool) -> None:
    data = listing.to_json()
    data["complete"] = complete
    path = _state(target) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _part(target: Path, f: RemoteFile) -> Path | None:
    """The stable partial file of ``f``: ``.vibevoice-download/<name>.<hash>.part``; the name was
    checked and the hash is hex (:mod:`.hub_listing`), and the joined path must still resolve
    inside the state folder (None if a symbolic link points it elsewhere)."""
    name = f"{f.name}.{f.key}.part"
    return _state(target) / name if safe_path(_state(target), name) is not None else None


def _dest(target: Path, f: RemoteFile) -> Path | None:
    """Where ``f`` goes: inside ``target`` after resolving (None if a link points elsewhere)."""
    return target / f.name if safe_path(target, f.name) is not None else None


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def _cleanup_orphans(target: Path, listing: Listing) -> int:
    """Remove partial files no current file will resume (another revision's, or huggingface_hub's
    process-unique ``*.incomplete`` left by a killed ``hf download``). Returns the bytes freed."""
    keep = {_part(target, f) for f in listing.files} - {None}
    freed = 0
    candidates = list(_state(target).rglob("*.part")) if _state(target).is_dir() else []
    hf_dl = target / ".cache" / "huggingface" / "download"
    if hf_dl.is_dir():
        candidates += list(hf_dl.rglob("*.incomplete"))
    for p in candidates:
        if p in keep:
            continue
        freed += _size(p) or 0
        p.unlink(missing_ok=True)
        log.info("removed an orphaned partial download: %s", p)
    return freed


# --- status ---------------------------------------------------------------------------------


_active_lock = threading.Lock()
_active: dict[str, _Progress] = {}


def model_status(
    params: ModelStatusParams, configured_path: str | None, *, offline: bool
) -> ModelStatusResult:
    """What is on disk, what is missing, how big the download is and how much disk is free.

    Answered from the disk alone (no network), so it is immediate in every state; sizes of
    missing files come from the listing a previous or running ``download_model`` saved."""
    model_id = params.model_id or DEFAULT_MODEL_ID
    target = _target(params.target_dir, configured_path, model_id)
    free = free_bytes(target)
    with _active_lock:
        running = _active.get(str(target))
        downloading = running.snapshot() if running else None
    listing = _read_manifest(target)
    if listing is not None and listing.model_id != model_id:
        listing = None
    if listing is not None:
        done = partial = 0
        missing = []
        for f in listing.files:
            if _size(_dest(target, f)) == f.size:
                done += f.size
            else:
                missing.append(f.name)
                partial += min(f.size, _size(_part(target, f)) or 0)
        present = not missing and (target / "config.json").is_file()
        remaining = listing.total - done - partial
        return ModelStatusResult(
            present=present,
            path=str(target) if present else None,
            source="directory" if present else None,
            model_id=model_id,
            revision=listing.revision,
            commit=listing.commit,
            bytes_on_disk=done + partial,
            partial_bytes=partial,
            download_bytes=listing.total,
            remaining_bytes=remaining,
            missing=missing,
            target_dir=str(target),
            free_bytes=free,
            downloading=downloading,
            message=_status_message(present, remaining, free, downloading),
        )
    # No manifest: a folder filled by hand / `hf download`, or the Hugging Face cache.
    found = _find_existing(params.target_dir, configured_path, model_id, offline)
    if found is not None:
        path, source = found
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return ModelStatusResult(
            present=True,
            path=str(path),
            source=source,
            model_id=model_id,
            revision=params.revision,
            commit=path.name if source == "hf_cache" else None,
            bytes_on_disk=size,
            partial_bytes=0,
            download_bytes=None,
            remaining_bytes=0,
            missing=[],
            target_dir=str(target),
            free_bytes=free,
            downloading=downloading,
            message=f"checkpoint at {path}",
        )
    return ModelStatusResult(
        present=False,
        path=None,
        source=None,
        model_id=model_id,
        revision=params.revision,
        commit=None,
        bytes_on_disk=0,
        partial_bytes=0,
        download_bytes=None,
        remaining_bytes=None,
        missing=None,
        target_dir=str(target),
        free_bytes=free,
        downloading=downloading,
        message=f"no checkpoint of {model_id}; download_model fetches it into {target} "
        "(its size is known once the download has listed the files)",
    )


def _status_message(present: bool, remaining: int, free: int | None, dl: Any) -> str:
    if present:
        return "checkpoint complete"
    text = f"{_gb(remaining)} still to download"
    if free is not None:
        text += f", {_gb(free)} free"
    if dl:
        text += " (downloading now)"
    return text


def _find_existing(
    target_dir: str | None, configured: str | None, model_id: str, offline: bool
) -> tuple[Path, str] | None:
    """A complete checkpoint folder, or a snapshot in the HF cache, without any network."""
    raw = target_dir or configured
    if raw:
        path = Path(os.path.expanduser(raw)).resolve()
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return path, "directory"
        if target_dir or not path.is_dir():
            return None
    else:
        path = default_download_dir(model_id)
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return path, "directory"
        path = None  # type: ignore[assignment]
    from .errors import ModelUnavailable
    from .model_source import resolve_model_dir

    try:
        found = resolve_model_dir(str(path) if path else None, offline=True, model_id=model_id)
    except ModelUnavailable:
        return None
    return found, "hf_cache"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --- progress -------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Bytes done across all files, the current file, a smoothed speed and the time left."""

    total: int
    done: int = 0
    fetched: int = 0
    file: str = ""
    file_index: int = 0
    files: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    lock: threading.Lock = field(default_factory=threading.Lock)

    # The download thread adds bytes, its cancel watcher ticks, model_status reads: one lock.
    def add(self, n: int, now: float) -> None:
        with self.lock:
            self.done += n
            self.fetched += n
            self.samples.append((now, self.fetched))
            while len(self.samples) > 2 and now - self.samples[0][0] > _SPEED_WINDOW:
                self.samples.popleft()

    def drop(self, n: int) -> None:
        """Bytes counted as done that are gone (a corrupt or restarted file)."""
        with self.lock:
            self.done -= n

    def tick(self, now: float) -> None:
        """A sample with no new bytes: the speed decays while the transfer stalls."""
        self.add(0, now)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            speed = 0.0
            if len(self.samples) >= 2:
                (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
                speed = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            left = self.total - self.done
            return {
                "bytes_done": self.done,
                "bytes_total": self.total,
                "file": self.file,
                "file_index": self.file_index,
                "files": self.files,
                "speed_bps": round(speed),
                "eta_s": round(left / speed, 1) if speed > 0 else None,
            }


# --- downloading ----------------------------------------------------------------------------


def download_model(
    params: DownloadParams,
    job: Job,
    *,
    configured_path: str | None,
    offline: bool,
    token: str | None = None,
) -> DownloadResult:
    """Download the checkpoint (or what is missing of it) into the target directory.

    Streams ``progress`` (stage ``downloading``) through ``job``; a cancel stops it within ~0.1 s
    keeping every byte fetched; the next call resumes. Raises :class:`DownloadFailed`."""
    from huggingface_hub import constants

    model_id = params.model_id or DEFAULT_MODEL_ID
    revision = params.revision or "main"
    if not model_id.strip() or model_id.count("/") > 1:
        raise InvalidParams(f"model_id {model_id!r} is not a hub id (org/name)", field="model_id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # the id becomes part of the listing's URL
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise InvalidParams(
            f"model_id {shown(model_id)} is not a hub id (org/name): {exc}", field="model_id"
        ) from None
    target = _target(params.target_dir, configured_path, model_id)
    if offline or constants.is_offline_mode():
        raise DownloadFailed(
            f"Offline mode is on ({'VIBEVOICE_OFFLINE' if offline else 'HF_HUB_OFFLINE'}): "
            f"{model_id} cannot be downloaded",
            kind="offline",
            hint="unset VIBEVOICE_OFFLINE / HF_HUB_OFFLINE, or copy the checkpoint in by hand",
            offline_mode=True,
        )
    started = time.monotonic()
    job.report("downloading", 0.0, f"listing the files of {model_id}@{revision}")
    listing = _cancellable(lambda: fetch_listing(model_id, revision, target, token=token), job)
    # A file of an earlier download that changed upstream (same size, new hash) is fetched again.
    old = _read_manifest(target)
    old_keys = {}
    if old is not None and old.model_id == model_id:
        old_keys = {f.name: f.key for f in old.files}
    if os.path.islink(_state(target)) and safe_path(target, STATE_DIR) is None:
        # The manifest is written there and orphaned *.part files under it are deleted.
        raise DownloadFailed(
            f"{_state(target)} is a symbolic link out of {target}: refused (the download writes "
            "and deletes its partial files there)",
            kind="write_failed",
            hint=f"remove the link {_state(target)}",
            path=str(_state(target)),
        )
    try:
        _state(target).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, target, listing.total) from None
    _write_manifest(target, listing, complete=False)
    _cleanup_orphans(target, listing)

    todo = [
        f
        for f in listing.files
        if _size(_dest(target, f)) != f.size or old_keys.get(f.name, f.key) != f.key
    ]
    done_bytes = listing.total - sum(f.size for f in todo)
    have = sum(min(f.size, _size(_part(target, f)) or 0) for f in todo)
    need = listing.total - done_bytes - have
    free = free_bytes(target)
    if free is not None and free < need + FREE_MARGIN:
        raise DownloadFailed(
            f"Not enough disk space at {target}: the download needs {_gb(need)} more "
            f"(+ {_gb(FREE_MARGIN)} margin), {_gb(free)} is free",
            kind="disk_full",
            hint=f"free {_gb(need + FREE_MARGIN - free)} or choose another target_dir",
            needed_bytes=need + FREE_MARGIN,
            free_bytes=free,
            path=str(target),
        )
    progress = _Progress(total=listing.total, done=done_bytes + have, files=len(listing.files))
    with _active_lock:
        _active[str(target)] = progress
    try:
        for f in todo:
            progress.file = f.name
            progress.file_index = listing.files.index(f) + 1
            _fetch(listing, f, target, progress, job, token)
    finally:
        with _active_lock:
            _active.pop(str(target), None)
    _write_manifest(target, listing, complete=True)
    seconds = time.monotonic() - started
    job.report("downloading", 1.0, f"{model_id} complete: {_gb(listing.total)} in {target}")
    return DownloadResult(
        status="success",
        path=str(target),
        model_id=model_id,
        revision=revision,
        commit=listing.commit,
        bytes_total=listing.total,
        bytes_downloaded=progress.fetched,
        files=len(listing.files),
        seconds=round(seconds, 3),
        message=(
            f"downloaded {_gb(progress.fetched)} in {seconds:.1f} s"
            if progress.fetched
            else "already complete"
        ),
    )


def _cancellable(fn: Callable[[], Listing], job: Job) -> Listing:
    """Run ``fn`` (a hub request) on a helper thread, so a cancel answers within ~0.1 s even while
    the hub is slow to answer (the request itself is abandoned, bounded by its timeout)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name="vibevoice-dl-listing", daemon=True)
    t.start()
    while t.is_alive():
        if job.cancel_event.wait(0.05):
            raise job.cancelled_error()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _report(job: Job, p: _Progress) -> None:
    snap = p.snapshot()
    speed, eta = snap["speed_bps"], snap["eta_s"]
    msg = f"{p.file} ({p.file_index}/{p.files}): {_gb(p.done)} of {_gb(p.total)}"
    if speed:
        msg += f", {speed / 1e6:.1f} MB/s"
    if eta is not None:
        msg += f", {eta:.0f} s left"
    job.report("downloading", p.done / p.total if p.total else 1.0, msg, download=snap)


def _hasher(f: RemoteFile) -> Any:
    if f.sha256:
        return hashlib.sha256()
    if f.blob_id:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % f.size)  # a git blob id is sha1("blob <size>\0" + content)
        return h
    return None


def _hash_existing(h: Any, path: Path, n: int) -> None:
    if h is None or n == 0:
        return
    with path.open("rb") as src:
        left = n
        while left:
            block = src.read(min(left, 8 * 2**20))
            if not block:
                break
            h.update(block)
            left -= len(block)


def _fetch(
    listing: Listing, f: RemoteFile, target: Path, p: _Progress, job: Job, token: str | None
) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, http_stream_backoff

    part, dest = _part(target, f), _dest(target, f)
    if part is None or dest is None:  # checked with the listing; a link may have appeared since
        raise DownloadFailed(
            f"{shown(f.name)} would be written outside {target} (through a symbolic link): refused",
            kind="unsafe_listing",
            hint=f"remove the symbolic links inside {target}",
            file=shown(f.name, 300),
        )
    part.parent.mkdir(parents=True, exist_ok=True)
    have = _size(part) or 0
    if have > f.size:  # not ours to resume
        part.unlink()
        p.drop(have - f.size)
        have = 0
    h = _hasher(f)
    _hash_existing(h, part, have)
    url = hf_hub_url(listing.model_id, f.name, revision=listing.commit)
    failures = 0
    while have < f.size:
        job.check_cancelled()
        headers = build_hf_headers(token=token)
        if have:
            headers["Range"] = f"bytes={have}-"
        before = have
        try:
            # No retries inside http_stream_backoff (it cannot retry a body already being read);
            # this loop resumes with Range instead, as huggingface_hub's own http_get does.
            with http_stream_backoff(
                "GET",
                url,
                headers=headers,
                timeout=30.0,
                retry_on_exceptions=(),
                retry_on_status_codes=(408, 429, 500, 502, 503, 504),
                max_retries=3,
            ) as response:
                raise_for_status(response)
                if have and response.status_code == 200:  # the server ignored Range: start over
                    log.info("%s: the server ignored Range; fetching it from the start", f.name)
                    p.drop(have)
                    have = 0
                    h = _hasher(f)
                    part.write_bytes(b"")
                have = _stream(response, part, have, f, h, p, job)
        except (RequestCancelled, DownloadFailed):
            raise
        except Exception as exc:
            if job.cancelled:
                raise _cancelled(job, p) from None
            have = _size(part) or 0  # what reached the disk (and the hash) before the break
            err = hub_error(exc, listing.model_id, listing.revision)
            if err.kind not in ("network", "offline"):
                raise err from None
            failures = failures + 1 if have == before else 0
            if failures >= _RETRIES:
                err.message += f" (after {_RETRIES} tries; {_gb(have)} of {f.name} kept)"
                raise err from None
            log.warning("%s: %s; resuming at byte %d", f.name, err.message, have)
            if failures and job.cancel_event.wait(failures):  # back off; a cancel cuts it short
                raise _cancelled(job, p) from None
            continue
        if have < f.size:  # the body ended early without an error: resume where it stopped
            failures = failures + 1 if have == before else 0
            if failures >= _RETRIES:
                raise DownloadFailed(
                    f"{f.name}: the server keeps ending the file at byte {have} of {f.size}",
                    kind="network",
                    hint="call download_model again: it resumes where it stopped",
                    file=f.name,
                )
            log.warning("%s: body ended at byte %d of %d; resuming", f.name, have, f.size)
    if h is not None:
        digest = h.hexdigest()
        expected = f.sha256 or f.blob_id
        if digest != expected:
            part.unlink(missing_ok=True)
            p.drop(f.size)
            raise DownloadFailed(
                f"{f.name} is corrupt: its hash is {digest}, the hub lists {expected} "
                "(the partial file was removed; the next download fetches it again)",
                kind="corrupt",
                file=f.name,
                expected=expected,
                actual=digest,
            )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)  # a file in a sub-folder of the checkpoint
        os.replace(part, dest)
    except OSError as exc:
        raise _disk_error(exc, target, f.size) from None
    _report(job, p)


def _stream(
    response: Any, part: Path, have: int, f: RemoteFile, h: Any, p: _Progress, job: Job
) -> int:
    """Append the body to ``part``, checking cancel between chunks; a watcher closes the response
    on cancel so a stalled read returns too."""
    done = threading.Event()
    threading.Thread(
        target=_close_on_cancel,
        args=(response, job, p, done),
        name="vibevoice-dl-cancel",
        daemon=True,
    ).start()
    try:
        with part.open("ab", buffering=0) as out:
            for chunk in response.iter_bytes(chunk_size=CHUNK):
                if job.cancelled:
                    raise _cancelled(job, p)
                if not chunk:
                    continue
                if have + len(chunk) > f.size:
                    chunk = chunk[: f.size - have]
                try:
                    _write_all(out, chunk)
                except OSError as exc:
                    raise _disk_error(exc, part.parent, f.size - have) from None
                if h is not None:
                    h.update(chunk)
                have += len(chunk)
                p.add(len(chunk), time.monotonic())
                _report(job, p)
                if have >= f.size:
                    break
    finally:
        done.set()
    if job.cancelled:
        raise _cancelled(job, p)
    return have


def _write_all(out: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def _close_on_cancel(response: Any, job: Job, p: _Progress, done: threading.Event) -> None:
    """Every 50 ms: on cancel, shut the socket down (a blocked ``recv`` returns at once; closing
    the response alone does not wake it); every ~0.5 s, refresh speed and ETA so a stalled
    transfer shows its speed falling instead of repeating the last one."""
    last = time.monotonic()
    while not done.wait(0.05):
        if job.cancelled:
            stream = getattr(response, "extensions", {}).get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                response.close()
            except Exception:  # closing from another thread may race the reader: harmless
                log.debug("closing the download stream failed", exc_info=True)
            return
        now = time.monotonic()
        if now - last >= 0.5:
            last = now
            p.tick(now)
            _report(job, p)


def _cancelled(job: Job, p: _Progress) -> RequestCancelled:
    return RequestCancelled(
        f"Request {job.cancel_reason}: the download stopped at {_gb(p.done)} of {_gb(p.total)}; "
        "download_model resumes it",
        kind="cancelled",
        reason=job.cancel_reason,
        segments=[],
        bytes_done=p.done,
        bytes_total=p.total,
    )


def _disk_error(exc: OSError, where: Path, need: int) -> DownloadFailed:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = free_bytes(where)
        return DownloadFailed(
            f"Disk full at {where} ({exc.strerror}); at least {_gb(need)} more is needed, "
            f"{_gb(free or 0)} is free. What was fetched is kept",
            kind="disk_full",
            hint="free some space and call download_model again: it resumes",
            needed_bytes=need,
            free_bytes=free,
            path=str(where),
        )
    return DownloadFailed(
        f"Cannot write to {where}: {exc.strerror or exc}",
        kind="disk_full" if exc.errno == errno.EROFS else "write_failed",
        hint="choose a writable target_dir",
        path=str(where),
    )


# --- huggingface_hub ------------------------------------------------------------------------


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
