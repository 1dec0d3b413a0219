"""``download_model``: a resumable download of a checkpoint into a plain folder.

A checkpoint is downloaded into a plain directory (``target_dir``; default ``VIBEVOICE_MODEL_PATH``,
else ``<HF_HOME>/vibevoice-rpc/<org>--<name>``), one file after another, through huggingface_hub's own
primitives (its HTTP session and model-info endpoint for the listing with sizes and hashes,
``hf_hub_url``, ``build_hf_headers``, ``http_stream_backoff``, ``hf_raise_for_status``), so
``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` work as everywhere else. It does
not call ``hf_hub_download`` itself: huggingface_hub 2.4 writes to a process-unique ``.incomplete``
name that the next process never reuses (measured here; huggingface_hub PR #4228), and reads 10 MiB per chunk, too coarse
for a cancel within 1 s on a slow line. Here each file goes to a stable partial name
(``.vibevoice-download/<file>.<hash>.part``), resumed with ``Range`` by the next call or the next
process; it is checked against the listing's size and hash (LFS sha256, else the git blob sha1)
before it is moved into place, and ``config.json`` is placed last, so a directory with
``config.json`` holds a whole checkpoint.

What the hub sends is hostile data (whoever controls ``HF_ENDPOINT`` writes it): the listing is read
with a bound and every name, size and hash checked before anything is written (:mod:`.listing`,
:mod:`.hub`); error bodies are read up to :data:`~.hub.ERROR_BODY_BYTES`; a file's body never past its listed size.

huggingface_hub is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MODEL_ID
from ..errors import DownloadFailed, InvalidParams, RequestCancelled
from ..messages import DownloadParams, DownloadResult
from .hub import fetch_listing, hub_error, raise_for_status
from .listing import Listing, RemoteFile, safe_path, shown
from .progress import ActiveDownloads, Progress
from .store import (
    STATE_DIR,
    cleanup_orphans,
    dest_file,
    file_size,
    free_bytes,
    gb,
    part_file,
    read_manifest,
    state_dir,
    target_folder,
    write_manifest,
)

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["download_model"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes per read: cancel is checked at least this often
FREE_MARGIN = 64 * 2**20  # kept free on the disk beyond the bytes still to fetch
_RETRIES = 3  # a broken transfer is resumed with Range this many times (after no progress)


def download_model(
    params: DownloadParams,
    job: Job,
    *,
    configured_path: str | None,
    offline: bool,
    token: str | None = None,
    active: ActiveDownloads | None = None,
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
    target = target_folder(params.target_dir, configured_path, model_id)
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
    old = read_manifest(target)
    old_keys = {}
    if old is not None and old.model_id == model_id:
        old_keys = {f.name: f.key for f in old.files}
    if os.path.islink(state_dir(target)) and safe_path(target, STATE_DIR) is None:
        # The manifest is written there and orphaned *.part files under it are deleted.
        raise DownloadFailed(
            f"{state_dir(target)} is a symbolic link out of {target}: refused (the download writes "
            "and deletes its partial files there)",
            kind="write_failed",
            hint=f"remove the link {state_dir(target)}",
            path=str(state_dir(target)),
        )
    try:
        state_dir(target).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, target, listing.total) from None
    write_manifest(target, listing, complete=False)
    cleanup_orphans(target, listing)

    todo = [
        f
        for f in listing.files
        if file_size(dest_file(target, f)) != f.size or old_keys.get(f.name, f.key) != f.key
    ]
    done_bytes = listing.total - sum(f.size for f in todo)
    have = sum(min(f.size, file_size(part_file(target, f)) or 0) for f in todo)
    need = listing.total - done_bytes - have
    free = free_bytes(target)
    if free is not None and free < need + FREE_MARGIN:
        raise DownloadFailed(
            f"Not enough disk space at {target}: the download needs {gb(need)} more "
            f"(+ {gb(FREE_MARGIN)} margin), {gb(free)} is free",
            kind="disk_full",
            hint=f"free {gb(need + FREE_MARGIN - free)} or choose another target_dir",
            needed_bytes=need + FREE_MARGIN,
            free_bytes=free,
            path=str(target),
        )
    progress = Progress(total=listing.total, done=done_bytes + have, files=len(listing.files))
    active = active if active is not None else ActiveDownloads()
    active.start(target, progress)
    try:
        for f in todo:
            progress.file = f.name
            progress.file_index = listing.files.index(f) + 1
            _fetch(listing, f, target, progress, job, token)
    finally:
        active.end(target)
    write_manifest(target, listing, complete=True)
    seconds = time.monotonic() - started
    job.report("downloading", 1.0, f"{model_id} complete: {gb(listing.total)} in {target}")
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
            f"downloaded {gb(progress.fetched)} in {seconds:.1f} s"
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


def _report(job: Job, p: Progress) -> None:
    snap = p.snapshot()
    speed, eta = snap.speed_bps, snap.eta_s
    msg = f"{p.file} ({p.file_index}/{p.files}): {gb(p.done)} of {gb(p.total)}"
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
    listing: Listing, f: RemoteFile, target: Path, p: Progress, job: Job, token: str | None
) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, http_stream_backoff

    part, dest = part_file(target, f), dest_file(target, f)
    if part is None or dest is None:  # checked with the listing; a link may have appeared since
        raise DownloadFailed(
            f"{shown(f.name)} would be written outside {target} (through a symbolic link): refused",
            kind="unsafe_listing",
            hint=f"remove the symbolic links inside {target}",
            file=shown(f.name, 300),
        )
    part.parent.mkdir(parents=True, exist_ok=True)
    have = file_size(part) or 0
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
            have = file_size(part) or 0  # what reached the disk (and the hash) before the break
            err = hub_error(exc, listing.model_id, listing.revision)
            if err.kind not in ("network", "offline"):
                raise err from None
            failures = failures + 1 if have == before else 0
            if failures >= _RETRIES:
                err.message += f" (after {_RETRIES} tries; {gb(have)} of {f.name} kept)"
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
    response: Any, part: Path, have: int, f: RemoteFile, h: Any, p: Progress, job: Job
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


def _close_on_cancel(response: Any, job: Job, p: Progress, done: threading.Event) -> None:
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


def _cancelled(job: Job, p: Progress) -> RequestCancelled:
    return RequestCancelled(
        f"Request {job.cancel_reason}: the download stopped at {gb(p.done)} of {gb(p.total)}; "
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
            f"Disk full at {where} ({exc.strerror}); at least {gb(need)} more is needed, "
            f"{gb(free or 0)} is free. What was fetched is kept",
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
