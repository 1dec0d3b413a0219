"""The hub's listing of a checkpoint, read as hostile data: every name, size and hash is checked
before any of them is used.

Whoever answers at ``HF_ENDPOINT`` (a mirror, a proxy) writes the listing, and its file names become
paths under the download folder. A name is refused when it could leave that folder or name another
file than it says on some platform: absolute, ``..``, backslashes, drive letters and ``:``, control
characters, empty components, Windows device names, a trailing dot or space — and, after joining,
when the resolved path (symbolic links included) is not inside the folder. Refusal happens while the
listing is parsed, before anything is written (:class:`DownloadFailed` ``unsafe_listing``, the name
shown escaped). A listing that is malformed or absurd (not JSON objects, missing fields, negative or
huge sizes, hashes that are not hex, more files than any checkpoint has) is ``bad_listing``.

Plain data and string checks only: no huggingface_hub, no I/O beyond resolving paths.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DownloadFailed

__all__ = [
    "CHECKPOINT_PATTERNS",
    "MAX_LISTED_FILES",
    "MAX_FILE_BYTES",
    "MAX_LISTING_BYTES",
    "Listing",
    "RemoteFile",
    "bad_listing",
    "parse_model_info",
    "safe_path",
    "shown",
    "unsafe_name_reason",
    "wanted",
]

# What a checkpoint needs: weights (safetensors only), configs, tokenizer/processor files. Never
# .bin/.pt/.pkl/.ckpt/.h5 (pickles or other frameworks' weights).
CHECKPOINT_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.jinja",
    "*.model",
    "*.tiktoken",
)

# Limits, each far beyond a real checkpoint and far below what hurts:
# - files: microsoft/VibeVoice-ASR-HF lists ~12; the largest sharded checkpoints on the Hub (a 405 B
#   model in bf16: 191 shards) list a few hundred. Past 2,000 it is not a checkpoint, and every
#   listed file costs a stat per model_status (answered on the reader thread) and a manifest line.
# - bytes per file: shards are ~5 GB; 1 TiB is no checkpoint anyone downloads here, and a bound
#   keeps the free-space arithmetic and messages sane (a size of 1e30 is a lie, not a model).
# - listing body: model info with file metadata is ~10-50 KB for this repo (a few hundred KB for
#   the largest); 8 MiB bounds what a hostile mirror can make the sidecar hold (decoded size).
# - names: the Hub's are short; 1,024 characters, 200 per component (room for ".<hash>.part"
#   within the 255 most file systems allow).
MAX_LISTED_FILES = 2000
MAX_FILE_BYTES = 2**40
MAX_LISTING_BYTES = 8 * 2**20
MAX_NAME_CHARS = 1024
MAX_COMPONENT_CHARS = 200

_HEX = re.compile(r"[0-9a-fA-F]+")
_DRIVE = re.compile(r"[A-Za-z]:")
# Windows refuses these in file names; a name that cannot exist there is no checkpoint file.
_WINDOWS_FORBIDDEN = set('<>:"|?*')
# Device names (with any extension): opening "NUL.json" or "COM1.txt" on Windows opens the device.
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")
}
# Control characters (NUL included), format characters (bidi overrides that disguise a name),
# lone surrogates (they cannot be encoded as a path at all), line and paragraph separators.
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def shown(name: object, limit: int = 120) -> str:
    """A hostile name for a message or a log line: escaped (``repr``), cut to ``limit``."""
    text = repr(name)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(name) if isinstance(name, str) else '?'} characters)"
    return text


def unsafe_name_reason(name: object) -> str | None:
    """Why ``name`` (a listed file name) must not become a path; None when it is a plain relative
    name of ``/``-separated components that means the same file on Linux, macOS and Windows."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in name):
        return "contains a control or format character"
    if "\\" in name:
        return "contains a backslash (a path separator on Windows)"
    if name.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    for part in name.split("/"):
        if part == "":
            return "has an empty path component"
        if part in (".", ".."):
            return f"has a {part!r} component"
        if len(part) > MAX_COMPONENT_CHARS:
            return f"has a component longer than {MAX_COMPONENT_CHARS} characters"
        if ":" in part:
            return "contains ':' (a drive letter or an alternate data stream on Windows)"
        if _WINDOWS_FORBIDDEN & set(part):
            return "contains a character Windows forbids in file names"
        if part[-1] in ". ":
            return "has a component ending in a dot or space (Windows drops it: another file)"
        if part.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
            return "names a Windows device (CON, NUL, COM1, …)"
    return None


def safe_path(root: Path, name: str) -> Path | None:
    """``root / name`` resolved, or None when it resolves outside ``root`` (or to ``root`` itself):
    a symbolic link on the way counts where it points. ``name`` must already be a safe name."""
    top = root.resolve()
    dest = (top / name).resolve()
    return dest if top in dest.parents else None


def wanted(name: str) -> bool:
    """A file the checkpoint needs: its pattern matches (case-sensitive on every platform), and no
    component is hidden (a dotted folder such as the download's own ``.vibevoice-download`` is
    never written from a listing)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, p) for p in CHECKPOINT_PATTERNS) and not any(
        part.startswith(".") for part in name.split("/")
    )


def bad_listing(message: str, model_id: str, **data: Any) -> DownloadFailed:
    return DownloadFailed(
        message + "; nothing was downloaded",
        kind="bad_listing",
        hint="check HF_ENDPOINT: a mirror or proxy answered something that is not a hub listing",
        model_id=model_id,
        **data,
    )


def _unsafe(name: object, reason: str, model_id: str) -> DownloadFailed:
    return DownloadFailed(
        f"The listing of {model_id} names the file {shown(name)}, which {reason}: refused before "
        f"anything was written",
        kind="unsafe_listing",
        hint="check HF_ENDPOINT: a mirror or proxy may be compromised; the hub never lists such "
        "names",
        model_id=model_id,
        file=shown(name, 300),
    )


# --- the listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (all files)

    @property
    def key(self) -> str:
        """Hex (checked at parse time), so the partial file's name cannot carry anything else."""
        return (self.sha256 or self.blob_id or f"size{self.size}")[:16]


@dataclass(frozen=True)
class Listing:
    model_id: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "commit": self.commit,
            "files": [
                {"name": f.name, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}
                for f in self.files
            ],
        }

    @classmethod
    def from_json(cls, data: Any, target: Path) -> Listing:
        """A saved manifest, checked like a fresh listing (it may predate the checks, or have been
        edited); raises :class:`DownloadFailed`."""
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            raise bad_listing("The saved manifest is not a listing", "?")
        model_id = data.get("model_id")
        if not isinstance(model_id, str):
            raise bad_listing("The saved manifest has no model id", "?")
        entries = [
            {
                "rfilename": f.get("name"),
                "size": f.get("size"),
                "blobId": f.get("blob_id"),
                "lfs": {"sha256": f["sha256"]} if f.get("sha256") is not None else None,
            }
            if isinstance(f, dict)
            else f
            for f in data["files"]
        ]
        revision = data.get("revision")
        if not isinstance(revision, str):
            raise bad_listing("The saved manifest has no revision", model_id)
        return parse_model_info(
            {"sha": data.get("commit"), "siblings": entries}, model_id, revision, target
        )


def ordered(files: Iterable[RemoteFile]) -> tuple[RemoteFile, ...]:
    # config.json last: its presence is what marks a directory as a checkpoint.
    return tuple(sorted(files, key=lambda f: (f.name == "config.json", f.name)))


def _hex(value: Any, lengths: tuple[int, ...]) -> bool:
    return isinstance(value, str) and len(value) in lengths and bool(_HEX.fullmatch(value))


def parse_model_info(data: Any, model_id: str, revision: str, target: Path) -> Listing:
    """The checkpoint's files from the hub's model-info JSON (``siblings`` with ``blobs=true``).

    Every listed name is checked (:func:`unsafe_name_reason`), the wanted ones also after joining
    with ``target``; sizes must be whole numbers within :data:`MAX_FILE_BYTES`, hashes hex. Raises
    :class:`DownloadFailed` (``unsafe_listing`` or ``bad_listing``) before anything is written."""
    if not isinstance(data, dict):
        raise bad_listing(f"The hub's answer for {model_id} is not a JSON object", model_id)
    siblings = data.get("siblings")
    if siblings is None:
        siblings = []
    if not isinstance(siblings, list):
        raise bad_listing(f"The hub's file list for {model_id} is not a list", model_id)
    if len(siblings) > MAX_LISTED_FILES:
        raise bad_listing(
            f"The hub lists {len(siblings):,} files for {model_id}, more than the "
            f"{MAX_LISTED_FILES:,} any checkpoint has",
            model_id,
            files=len(siblings),
            max_files=MAX_LISTED_FILES,
        )
    names = []
    for i, s in enumerate(siblings):
        if not isinstance(s, dict) or "rfilename" not in s:
            raise bad_listing(
                f"Entry {i} of the hub's file list for {model_id} has no file name", model_id
            )
        name = s["rfilename"]
        reason = unsafe_name_reason(name)
        if reason is not None:
            raise _unsafe(name, reason, model_id)
        names.append(name)
    files = []
    seen: dict[str, str] = {}
    for s, name in zip(siblings, names, strict=True):
        if not wanted(name):
            continue
        if safe_path(target, name) is None:
            raise _unsafe(name, f"resolves outside {target} (through a symbolic link)", model_id)
        # Two names one file system holds as one file (case, Unicode normalisation): the second
        # would overwrite the first after its hash was checked.
        folded = unicodedata.normalize("NFC", name).casefold()
        if folded in seen:
            raise _unsafe(
                name, f"is the same file as {shown(seen[folded])} on Windows and macOS", model_id
            )
        seen[folded] = name
        files.append(_remote_file(s, name, model_id))
    total = sum(f.size for f in files)
    if total > MAX_FILE_BYTES:
        raise bad_listing(
            f"The hub lists {total:,} bytes for {model_id}: no checkpoint is that large", model_id
        )
    sha = data.get("sha")
    if sha is None:
        commit = revision
    elif _hex(sha, (40, 64)):
        commit = sha.lower()
    else:
        raise bad_listing(f"The hub gives {model_id} the commit {shown(sha)}, not a hash", model_id)
    return Listing(model_id, revision, commit, ordered(files))


def _remote_file(s: dict[str, Any], name: str, model_id: str) -> RemoteFile:
    size = s.get("size")
    if size is None:
        raise DownloadFailed(
            f"The hub listed {shown(name)} of {model_id} without a size; nothing was downloaded",
            kind="bad_listing",
            hint="check HF_ENDPOINT: a mirror or proxy answered something that is not a hub "
            "listing",
            model_id=model_id,
            file=shown(name, 300),
        )
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
        raise bad_listing(
            f"The hub lists {shown(name)} of {model_id} with the size {shown(size, 40)} (a whole "
            f"number of bytes up to {MAX_FILE_BYTES:,} was expected)",
            model_id,
            file=shown(name, 300),
        )
    lfs = s.get("lfs")
    sha256 = None
    if lfs is not None:
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else lfs
        if not _hex(sha256, (64,)):
            raise bad_listing(
                f"The hub lists {shown(name)} of {model_id} with the sha256 {shown(sha256, 80)}",
                model_id,
                file=shown(name, 300),
            )
    blob = s.get("blobId")
    if blob is not None and not _hex(blob, (40, 64)):
        raise bad_listing(
            f"The hub lists {shown(name)} of {model_id} with the blob id {shown(blob, 80)}",
            model_id,
            file=shown(name, 300),
        )
    return RemoteFile(
        name, size, sha256.lower() if sha256 else None, blob.lower() if blob else None
    )
