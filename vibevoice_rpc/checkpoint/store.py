"""A checkpoint's download folder on disk: where it is, how much space is free there, and the state a
download keeps in it (``.vibevoice-download/``: the manifest — the listing, saved — and each file's
stable partial ``<name>.<hash>.part``, which the next call or process resumes with ``Range``).

Names come from the hub's listing, already checked (:mod:`.listing`); every path is joined with
:func:`~.listing.safe_path` again, so a symbolic link planted in the folder cannot send a write
elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import DownloadFailed
from .listing import MAX_LISTING_BYTES, Listing, RemoteFile, safe_path
from .source import CheckpointFileError, default_download_dir, is_tiny, read_regular

__all__ = [
    "STATE_DIR",
    "MANIFEST",
    "target_folder",
    "free_bytes",
    "state_dir",
    "read_manifest",
    "write_manifest",
    "part_file",
    "dest_file",
    "file_size",
    "cleanup_orphans",
    "gb",
]

log = logging.getLogger(__name__)

STATE_DIR = ".vibevoice-download"
MANIFEST = "manifest.json"


def target_folder(target_dir: str | None, configured: str | None, model_id: str) -> Path:
    """The folder a download writes to: ``target_dir``, else the configured model path (not the
    tiny model's), else the default download folder."""
    if is_tiny(configured):  # VIBEVOICE_MODEL_PATH=tiny is the built-in tiny model, not a folder
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


def state_dir(target: Path) -> Path:
    return target / STATE_DIR


def read_manifest(target: Path) -> Listing | None:
    """The listing a previous download saved, checked as a fresh one (an older version of this
    code saved names unchecked); None when there is none or it does not pass: it is never used
    then, and the next download writes a good one."""
    path = state_dir(target) / MANIFEST
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


def write_manifest(target: Path, listing: Listing, complete: bool) -> None:
    data = listing.to_json()
    data["complete"] = complete
    path = state_dir(target) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def part_file(target: Path, f: RemoteFile) -> Path | None:
    """The stable partial file of ``f``: ``.vibevoice-download/<name>.<hash>.part``; the name was
    checked and the hash is hex (:mod:`.listing`), and the joined path must still resolve
    inside the state folder (None if a symbolic link points it elsewhere)."""
    name = f"{f.name}.{f.key}.part"
    return state_dir(target) / name if safe_path(state_dir(target), name) is not None else None


def dest_file(target: Path, f: RemoteFile) -> Path | None:
    """Where ``f`` goes: inside ``target`` after resolving (None if a link points elsewhere)."""
    return target / f.name if safe_path(target, f.name) is not None else None


def file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def cleanup_orphans(target: Path, listing: Listing) -> int:
    """Remove partial files no current file will resume (another revision's, or huggingface_hub's
    process-unique ``*.incomplete`` left by a killed ``hf download``). Returns the bytes freed."""
    keep = {part_file(target, f) for f in listing.files} - {None}
    freed = 0
    candidates = list(state_dir(target).rglob("*.part")) if state_dir(target).is_dir() else []
    hf_dl = target / ".cache" / "huggingface" / "download"
    if hf_dl.is_dir():
        candidates += list(hf_dl.rglob("*.incomplete"))
    for p in candidates:
        if p in keep:
            continue
        freed += file_size(p) or 0
        p.unlink(missing_ok=True)
        log.info("removed an orphaned partial download: %s", p)
    return freed


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
