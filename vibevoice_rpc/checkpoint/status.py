"""``model_status``: what is on disk, what is missing, how big the download is and how much disk is
free — from the disk alone (no network), so it is answered at once, in every state, on the reader
thread. Sizes of missing files come from the listing a previous or running download saved.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DEFAULT_MODEL_ID
from ..messages import DownloadProgress, ModelStatusParams, ModelStatusResult
from .progress import ActiveDownloads
from .source import default_download_dir
from .store import dest_file, file_size, free_bytes, gb, part_file, read_manifest, target_folder

__all__ = ["model_status"]


def model_status(
    params: ModelStatusParams,
    configured_path: str | None,
    *,
    offline: bool,
    active: ActiveDownloads | None = None,
) -> ModelStatusResult:
    """What is on disk, what is missing, how big the download is and how much disk is free.

    Answered from the disk alone (no network), so it is immediate in every state; sizes of
    missing files come from the listing a previous or running ``download_model`` saved."""
    model_id = params.model_id or DEFAULT_MODEL_ID
    target = target_folder(params.target_dir, configured_path, model_id)
    free = free_bytes(target)
    downloading = active.snapshot(target) if active is not None else None
    listing = read_manifest(target)
    if listing is not None and listing.model_id != model_id:
        listing = None
    if listing is not None:
        done = partial = 0
        missing = []
        for f in listing.files:
            if file_size(dest_file(target, f)) == f.size:
                done += f.size
            else:
                missing.append(f.name)
                partial += min(f.size, file_size(part_file(target, f)) or 0)
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


def _status_message(
    present: bool, remaining: int, free: int | None, dl: DownloadProgress | None
) -> str:
    if present:
        return "checkpoint complete"
    text = f"{gb(remaining)} still to download"
    if free is not None:
        text += f", {gb(free)} free"
    if dl is not None:
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
    from ..errors import ModelUnavailable
    from .source import resolve_model_dir

    try:
        found = resolve_model_dir(str(path) if path else None, offline=True, model_id=model_id)
    except ModelUnavailable:
        return None
    return found, "hf_cache"
