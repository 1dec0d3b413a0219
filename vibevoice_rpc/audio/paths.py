"""The audio file before any decoder sees it: the path as given and the one to open, and whether
it is a readable, non-empty regular file (:class:`AudioFileError` otherwise). Checked before
decoding, and again when every decoder has failed or the parallel parts lost the file. See
docs/AUDIO.md ("Paths", "The pipeline" step 1).
"""

from __future__ import annotations

import os
import stat
from typing import Union

from ..errors import AudioFileError

PathArg = Union[str, "os.PathLike[str]"]


def _win_long_path(path: str) -> str:
    r"""Prefix ``\\?\`` (``\\?\UNC\`` for shares) so Windows opens paths past MAX_PATH (260)."""
    if len(path) < 260 or path.startswith("\\\\?\\"):
        return path
    if path.startswith("\\\\"):
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


def resolve_path(path: PathArg) -> tuple[str, str]:
    """(path as given, for messages and ``error.data.path``; absolute path to open)."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    full = os.path.abspath(os.path.expanduser(raw)) if raw else raw
    if os.name == "nt":  # pragma: no cover - Windows only
        full = _win_long_path(full)
    return raw, full


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(b.removeprefix("\\\\?\\"))


def check_file(full: str, shown: str) -> int:
    """Raise :class:`AudioFileError` unless ``full`` is a readable, non-empty file; return its size.

    Done before decoding because libsndfile's own message misleads (an undecodable MP3 is reported
    as "File does not exist or is not a regular file").
    """
    if not full:
        raise AudioFileError("no audio path given", kind="not_found", path=shown)
    try:
        st = os.stat(full)
    except PermissionError as exc:
        raise AudioFileError(
            f"permission denied: cannot reach {shown} ({exc.strerror})",
            kind="permission_denied",
            hint="check the permissions of the file and the folders above it",
            path=shown,
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        expanded = os.path.expanduser(shown)
        if os.path.isabs(expanded):
            where = "" if expanded == full or _same_path(expanded, full) else f", looked at {full}"
            hint = "check the path; an absolute path is used as given"
            if expanded != shown:
                where = f", looked at {full}"
                hint = "~ is the home folder of the user the engine runs as"
        else:
            where = f", looked at {full}"
            hint = f"a relative path is taken from the working directory {os.getcwd()}"
        raise AudioFileError(
            f"audio file not found: {shown} ({reason}{where})",
            kind="not_found",
            hint=hint,
            path=shown,
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioFileError(
            f"{shown} is a directory, not an audio file",
            kind="is_directory",
            hint="pass the path of an audio file inside it",
            path=shown,
        )
    if not stat.S_ISREG(st.st_mode):
        raise AudioFileError(
            f"{shown} is not a regular file (a device, pipe or socket)",
            kind="not_found",
            hint="save the audio to a file and pass that file's path",
            path=shown,
        )
    denied = not os.access(full, os.R_OK)
    if not denied:
        try:
            with open(full, "rb"):
                pass
        except PermissionError:
            denied = True
        except OSError as exc:
            raise AudioFileError(
                f"cannot open {shown}: {exc.strerror or exc}",
                kind="permission_denied",
                path=shown,
            ) from None
    if denied:
        raise AudioFileError(
            f"permission denied: cannot read {shown}",
            kind="permission_denied",
            hint="check the file's permissions, or whether another program holds it locked",
            path=shown,
        )
    if st.st_size == 0:
        raise AudioFileError(
            f"{shown} is empty (0 bytes)",
            kind="empty_file",
            hint="the recording may not have been written yet",
            path=shown,
        )
    return st.st_size
