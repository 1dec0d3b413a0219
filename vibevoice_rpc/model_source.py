"""Where the model comes from: a local checkpoint, ``download_model``'s folder, or the HF cache.

Only safetensors weights are accepted and ``trust_remote_code`` is never used. Nothing is downloaded
here: a missing model is a ``-32004`` whose hint names ``download_model`` (a 17 GB download does not
start silently inside a ``transcribe``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import DEFAULT_MODEL_ID, env_flag
from .errors import ModelUnavailable

__all__ = ["check_findable", "resolve_model_dir", "default_download_dir", "FETCH_HINT"]

log = logging.getLogger(__name__)

# VIBEVOICE_MODEL_PATH=tiny: the tiny model with a fixed answer, for trying the protocol
TINY = "tiny"

FETCH_HINT = (
    "download it with the download_model method (or `vibevoice-rpc download [--dir DIR]`), or "
    f"`hf download {DEFAULT_MODEL_ID} --local-dir <DIR>` and set VIBEVOICE_MODEL_PATH=<DIR>"
)
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def _hf_home() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def default_download_dir(model_id: str = DEFAULT_MODEL_ID) -> Path:
    """Where ``download_model`` writes without a ``target_dir`` or ``VIBEVOICE_MODEL_PATH``, and
    where the server looks for a checkpoint before the Hugging Face cache."""
    return _hf_home() / "vibevoice-rpc" / model_id.replace("/", "--")


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


def check_findable(model_path: str | None, *, offline: bool = False) -> None:
    """Raise the ``-32004`` a load would raise when no checkpoint can be found (no torch needed);
    the tiny model is always findable (it is built when it is loaded, not here)."""
    if model_path and model_path.strip().lower() == TINY:
        return
    resolve_model_dir(model_path, offline=offline)


def resolve_model_dir(
    model_path: str | None, *, offline: bool = False, model_id: str = DEFAULT_MODEL_ID
) -> Path:
    """Return a local checkpoint directory (with ``config.json``); never downloads.

    ``model_path`` may be a checkpoint directory, or a Hugging Face cache directory. Without it,
    ``download_model``'s default folder (``<HF_HOME>/vibevoice-rpc/<org>--<name>``) and then the
    standard Hugging Face cache are used (``HF_HOME``/``HF_HUB_CACHE`` are honoured). ``offline``
    only changes the message: nothing is fetched either way.

    ``model_path`` ``"tiny"`` is the tiny model of the same architecture, built offline on first
    use and trained to give one fixed two-speaker answer (:func:`vibevoice_rpc.tiny.tiny_model_dir`
    with ``answer=True``): the whole protocol can be driven by hand without the 17 GB checkpoint,
    segments included — they are not a transcript.
    """
    cache_dir: Path | None = None
    if model_path and model_path.strip().lower() == TINY:
        from .tiny import tiny_model_dir

        folder = tiny_model_dir(answer=True)
        log.warning(
            "VIBEVOICE_MODEL_PATH=tiny: the tiny model at %s, trained to give the same two "
            "segments for any audio (for trying the protocol; its words are not a transcript)",
            folder,
        )
        return folder
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
    else:
        own = default_download_dir(model_id)
        if (own / "config.json").is_file():
            return _check_checkpoint(own)
    from huggingface_hub import constants, snapshot_download

    offline = offline or constants.HF_HUB_OFFLINE or env_flag(os.environ.get("HF_HUB_OFFLINE"))
    where = str(cache_dir or constants.HF_HUB_CACHE)
    if cache_dir is None:
        where = f"{default_download_dir(model_id)} and {where}"
    try:
        local = snapshot_download(
            model_id,
            cache_dir=cache_dir,
            local_files_only=True,  # a download is download_model's job, with progress and cancel
            allow_patterns=_PATTERNS,
        )
    except Exception:
        mode = "offline mode" if offline else "not downloaded yet"
        raise ModelUnavailable(
            f"Model {model_id} not found: looked in {where} ({mode})",
            kind="model_not_found",
            hint=FETCH_HINT,
            looked_in=where,
            offline=bool(offline),
        ) from None
    path = Path(str(local))
    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"Model {model_id} in {path} has no config.json",
            kind="model_not_found",
            hint=FETCH_HINT,
            looked_in=where,
        )
    return _check_checkpoint(path)
