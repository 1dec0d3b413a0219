"""Where the model comes from: a local checkpoint, a download cache, or the Hugging Face hub.

Only safetensors weights are accepted and ``trust_remote_code`` is never used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import DEFAULT_MODEL_ID, env_flag
from .errors import ModelUnavailable

__all__ = ["resolve_model_dir", "FETCH_HINT"]

log = logging.getLogger(__name__)

FETCH_HINT = (
    f"download it ahead of time with `hf download {DEFAULT_MODEL_ID} --local-dir <DIR>` "
    "(pip install huggingface_hub) and set VIBEVOICE_MODEL_PATH=<DIR>"
)
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def _check_checkpoint(path: Path) -> Path:
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelUnavailable(
            f"Model directory {path} has no .safetensors weights (only safetensors are loaded)",
            kind="model_not_found",
            hint=FETCH_HINT,
            path=str(path),
        )
    # The loaders report an unreadable file as "FileNotFoundError" (safetensors) or worse: say what
    # is wrong, before anything heavy is loaded.
    for file in [path / "config.json", *weights]:
        try:
            with open(file, "rb") as f:
                f.read(1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ModelUnavailable(
                f"Model file {file} cannot be read: {reason}",
                kind="model_load_failed",
                hint="check the file's permissions (the server runs as the app's user)"
                if isinstance(exc, PermissionError)
                else "check the file (and the disk it is on)",
                path=str(file),
            ) from None
    return path


def resolve_model_dir(model_path: str | None, *, offline: bool = False) -> Path:
    """Return a local checkpoint directory (with ``config.json``), downloading only if allowed.

    ``model_path`` may be a checkpoint directory, or a cache directory for hub downloads. Without it,
    the standard Hugging Face cache is used (``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are
    honoured). ``offline`` (``VIBEVOICE_OFFLINE=1``) forbids any download.
    """
    cache_dir: Path | None = None
    if model_path:
        path = Path(os.path.expanduser(model_path)).resolve()
        if (path / "config.json").is_file():
            return _check_checkpoint(path)
        if path.exists() and not path.is_dir():
            parent = (
                f"; its folder is {path.parent}" if path.suffix in (".json", ".safetensors") else ""
            )
            raise ModelUnavailable(
                f"Model path {path} is a file, not a directory (VIBEVOICE_MODEL_PATH / model_path "
                f"must name the checkpoint folder, the one holding config.json{parent})",
                kind="model_not_found",
                hint=FETCH_HINT,
                path=str(path),
            )
        if not path.is_dir():
            raise ModelUnavailable(
                f"Model path {path} does not exist (VIBEVOICE_MODEL_PATH / model_path)",
                kind="model_not_found",
                hint=FETCH_HINT,
                path=str(path),
            )
        cache_dir = path  # a directory without config.json: treat it as a download cache
    from huggingface_hub import constants, snapshot_download

    offline = offline or constants.HF_HUB_OFFLINE or env_flag(os.environ.get("HF_HUB_OFFLINE"))
    where = str(cache_dir or constants.HF_HUB_CACHE)
    try:
        local = snapshot_download(
            DEFAULT_MODEL_ID,
            cache_dir=cache_dir,
            local_files_only=offline,
            allow_patterns=_PATTERNS,
        )
    except Exception as exc:
        mode = "offline, so nothing was downloaded" if offline else f"download failed: {exc}"
        raise ModelUnavailable(
            f"Model {DEFAULT_MODEL_ID} not found: looked in {where} ({mode})",
            kind="model_not_found",
            hint=FETCH_HINT,
            looked_in=where,
            offline=bool(offline),
        ) from None
    path = Path(str(local))
    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"Model {DEFAULT_MODEL_ID} in {path} has no config.json",
            kind="model_not_found",
            hint=FETCH_HINT,
            looked_in=where,
        )
    return _check_checkpoint(path)
