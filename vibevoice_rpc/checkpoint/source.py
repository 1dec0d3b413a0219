"""Where the model comes from: a local checkpoint, ``download_model``'s folder, or the HF cache.

Only safetensors weights are accepted and ``trust_remote_code`` is never used. Nothing is downloaded
here: a missing model is a ``-32004`` whose hint names ``download_model`` (a 17 GB download does not
start silently inside a ``transcribe``).

A checkpoint folder is checked before anything heavy reads it (:func:`check_checkpoint_files`): every
file the loader, the planner or the processor may open must be a regular file (a FIFO would block the
load forever, a device would never end), the JSON and text files stay under a size cap (they are read
whole), the weights index names only files of the folder, and ``config.json`` is a VibeVoice-ASR
config that names no code to run.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_ID, env_flag
from ..errors import ModelUnavailable
from .listing import shown, unsafe_name_reason

__all__ = [
    "check_findable",
    "is_tiny",
    "resolve_model_dir",
    "default_download_dir",
    "check_checkpoint_files",
    "read_regular",
    "CheckpointFileError",
    "FETCH_HINT",
    "VOCAB_FILE_BYTES",
    "CONFIG_FILE_BYTES",
]

log = logging.getLogger(__name__)

# VIBEVOICE_MODEL_PATH=tiny: the tiny model with a fixed answer, for trying the protocol
TINY = "tiny"

FETCH_HINT = (
    "download it with the download_model method (or `vibevoice-rpc download [--dir DIR]`), or "
    f"`hf download {DEFAULT_MODEL_ID} --local-dir <DIR>` and set VIBEVOICE_MODEL_PATH=<DIR>"
)
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
_SUFFIXES = {".json", ".safetensors", ".txt", ".jinja", ".model", ".tiktoken"}

# Caps on the files read whole while loading, with margin over the real checkpoint's: its
# tokenizer.json (Qwen2 byte-level BPE, 151 K tokens) is ~11 MB, vocab.json ~2.8 MB, merges.txt
# ~1.7 MB; the largest vocabularies in use (256 K tokens) make a ~33 MB tokenizer.json. Its
# config.json, generation/processor/tokenizer configs and chat template are a few KB each, the
# weights index ~60 KB (a 400 B model's index is ~1 MB). Parsing a JSON file costs several times its
# size in memory: a 1 GB config.json cost +2 GB before it was refused.
VOCAB_FILE_BYTES = 64 * 2**20
CONFIG_FILE_BYTES = 16 * 2**20
_VOCAB_NAMES = {"tokenizer.json", "vocab.json", "merges.txt"}
_VOCAB_SUFFIXES = {".model", ".tiktoken"}
# Files whose ``auto_map`` would name code to import (the native classes need none).
_CODE_CONFIGS = (
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "feature_extractor_config.json",
)
MODEL_TYPE = "vibevoice_asr"
SUB_CONFIGS = (
    "text_config",
    "acoustic_tokenizer_encoder_config",
    "semantic_tokenizer_encoder_config",
)
INDEX = "model.safetensors.index.json"


def _hf_home() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def default_download_dir(model_id: str = DEFAULT_MODEL_ID) -> Path:
    """Where ``download_model`` writes without a ``target_dir`` or ``VIBEVOICE_MODEL_PATH``, and
    where the server looks for a checkpoint before the Hugging Face cache."""
    return _hf_home() / "vibevoice-rpc" / model_id.replace("/", "--")


class CheckpointFileError(Exception):
    """A file that must not be read: not a regular file, or larger than its cap."""

    def __init__(self, message: str, kind: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.data = data


_KINDS_OF_FILE = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _not_regular(path: Path, mode: int) -> CheckpointFileError:
    what = next((name for test, name in _KINDS_OF_FILE if test(mode)), "not a regular file")
    return CheckpointFileError(
        f"{path} is {what}, not a regular file: only regular files are read", "not_a_regular_file"
    )


def _too_large(path: Path, size: int, cap: int) -> CheckpointFileError:
    return CheckpointFileError(
        f"{path} is {size:,} bytes, over the {cap // 2**20} MiB cap for this file (it is read "
        "whole)",
        "file_too_large",
        size_bytes=size,
        limit_bytes=cap,
    )


def read_regular(path: Path, cap: int) -> bytes:
    """The bytes of ``path`` (symbolic links followed), which must be a regular file of at most
    ``cap`` bytes. Opened without blocking, so a FIFO is refused instead of waited on; raises
    :class:`CheckpointFileError` or ``OSError``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if st.st_size > cap:
            raise _too_large(path, st.st_size, cap)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(data) > cap:
        raise _too_large(path, len(data), cap)
    return data


def _cap(file: Path) -> int | None:
    """The size cap of a checkpoint file read whole; None for weights (memory-mapped)."""
    if file.suffix == ".safetensors":
        return None
    if file.name in _VOCAB_NAMES or file.suffix in _VOCAB_SUFFIXES:
        return VOCAB_FILE_BYTES
    return CONFIG_FILE_BYTES


def _unavailable(err: CheckpointFileError | str, file: Path, kind: str = "", **data: Any) -> Any:
    if isinstance(err, CheckpointFileError):
        message, kind, data = f"Model file {err.message}", err.kind, {**err.data, **data}
    else:
        message = err
    hints = {
        "not_a_regular_file": "replace it with the real file (download_model fetches a missing "
        "file again)",
        "file_too_large": "this is not the checkpoint's file: replace it (download_model fetches a "
        "missing file again)",
        "remote_code_refused": "use the transformers-native checkpoint microsoft/VibeVoice-ASR-HF; "
        "code from a checkpoint is never run",
    }
    return ModelUnavailable(
        message,
        kind=kind,
        hint=hints.get(kind, f"use a complete VibeVoice-ASR-HF checkpoint; {FETCH_HINT}"),
        path=str(file),
        **data,
    )


def check_checkpoint_files(path: Path) -> dict[str, Any]:
    """Check the checkpoint folder ``path`` before anything reads it; returns ``config.json``.

    Raises :class:`ModelUnavailable`: ``not_a_regular_file``, ``file_too_large``,
    ``model_load_failed`` (a file cannot be read), ``invalid_config`` (config.json or the weights
    index is not what a VibeVoice-ASR checkpoint holds), ``remote_code_refused`` (an ``auto_map``
    naming code to import)."""
    weights = []
    small: dict[str, bytes] = {}
    for file in sorted(path.iterdir()):
        if file.suffix not in _SUFFIXES or file.name.startswith("."):
            continue  # nothing the loader opens
        try:
            st = file.stat()
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(file, st.st_mode)
            cap = _cap(file)
            if cap is None:  # weights: memory-mapped by safetensors, not read whole
                weights.append(file)
                _probe(file)
            elif st.st_size > cap:
                raise _too_large(file, st.st_size, cap)
            elif file.name in (*_CODE_CONFIGS, INDEX):
                small[file.name] = read_regular(file, cap)
        except CheckpointFileError as err:
            raise _unavailable(err, file) from None
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
    if not weights:
        raise ModelUnavailable(
            f"Model directory {path} has no .safetensors weights (only safetensors are loaded)",
            kind="model_not_found",
            hint=FETCH_HINT,
            path=str(path),
        )
    parsed = {name: _json(path / name, raw) for name, raw in small.items()}
    for name, data in parsed.items():
        if name in _CODE_CONFIGS and isinstance(data, dict) and "auto_map" in data:
            raise _unavailable(
                f"Model file {path / name} names code to import (auto_map "
                f"{shown(data['auto_map'], 160)}): code from a checkpoint is never run",
                path / name,
                "remote_code_refused",
            )
    if INDEX in parsed:
        _check_index(path, parsed[INDEX], {w.name for w in weights})
    if "config.json" not in parsed:
        raise ModelUnavailable(
            f"Model directory {path} has no config.json",
            kind="model_not_found",
            hint=FETCH_HINT,
            path=str(path),
        )
    return _check_config(path / "config.json", parsed["config.json"])


def _probe(file: Path) -> None:
    """Read one byte: the loaders report an unreadable file as "FileNotFoundError" (safetensors)
    or worse, so say what is wrong before anything heavy is loaded."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(file, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            raise _not_regular(file, os.fstat(fd).st_mode)
        os.read(fd, 1)
    finally:
        os.close(fd)


def _json(file: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _unavailable(
            f"Model file {file} is not valid JSON ({detail})", file, "invalid_config"
        ) from None


def _check_index(path: Path, index: Any, weights: set[str]) -> None:
    """The weights index names shards the loader opens as ``<folder>/<name>``: plain names of
    regular files in this folder only (a name like ``../x`` or ``/dev/zero`` would be read too)."""
    file = path / INDEX
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise _unavailable(f"Model file {file} has no weight_map", file, "invalid_config")
    for shard in sorted({v if isinstance(v, str) else repr(v) for v in weight_map.values()}):
        reason = unsafe_name_reason(shard) or ("is in a sub-folder" if "/" in shard else None)
        if reason is not None:
            raise _unavailable(
                f"Model file {file} names the weights file {shown(shard)}, which {reason}",
                file,
                "invalid_config",
            )
        if shard not in weights:
            raise _unavailable(
                f"Model file {file} names the weights file {shown(shard)}, which is not in "
                f"{path} (an unfinished download?)",
                file,
                "model_load_failed",
            )


def _check_config(file: Path, config: Any) -> dict[str, Any]:
    """``config.json`` holds a VibeVoice-ASR config with its three sub-configs (without them
    transformers silently builds a default model of another size). The dimensions are the
    planner's to check (:func:`vibevoice_rpc.model.planner.check_architecture`)."""

    def bad(what: str) -> Any:
        return _unavailable(f"Model file {file} {what}", file, "invalid_config")

    if not isinstance(config, dict):
        raise bad(f"holds a JSON {type(config).__name__}, not an object")
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        raise bad(
            f"has model_type {shown(model_type, 60)}, not {MODEL_TYPE!r}: not a VibeVoice-ASR-HF "
            "checkpoint"
        )
    for name in SUB_CONFIGS:
        if not isinstance(config.get(name), dict):
            raise bad(
                f"has no {name} object (a VibeVoice-ASR-HF config.json has all of "
                f"{', '.join(SUB_CONFIGS)})"
            )
    return config


def check_findable(model_path: str | None, *, offline: bool = False) -> None:
    """Raise the ``-32004`` a load would raise when no checkpoint can be found (no torch needed);
    the tiny model is always findable (it is built when it is loaded, not here)."""
    if is_tiny(model_path):
        return
    resolve_model_dir(model_path, offline=offline)


def is_tiny(model_path: str | None) -> bool:
    """Whether ``model_path`` names the built-in tiny model (``VIBEVOICE_MODEL_PATH=tiny``), which
    the model wing builds (:func:`vibevoice_rpc.model.tiny.tiny_model_dir`), not a folder."""
    return bool(model_path) and model_path.strip().lower() == TINY


def resolve_model_dir(
    model_path: str | None, *, offline: bool = False, model_id: str = DEFAULT_MODEL_ID
) -> Path:
    """Return a local checkpoint directory (with ``config.json``); never downloads.

    ``model_path`` may be a checkpoint directory, or a Hugging Face cache directory. Without it,
    ``download_model``'s default folder (``<HF_HOME>/vibevoice-rpc/<org>--<name>``) and then the
    standard Hugging Face cache are used (``HF_HOME``/``HF_HUB_CACHE`` are honoured). ``offline``
    only changes the message: nothing is fetched either way.

    ``model_path`` ``"tiny"`` (:func:`is_tiny`) is not a folder: the model wing builds it.
    """
    cache_dir: Path | None = None
    if is_tiny(model_path):
        raise ValueError("the tiny model is built by vibevoice_rpc.model.tiny, not found on disk")
    if model_path:
        path = Path(os.path.expanduser(model_path)).resolve()
        if os.path.lexists(path / "config.json"):  # a FIFO or a link is refused by the check
            check_checkpoint_files(path)
            return path
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
        if os.path.lexists(own / "config.json"):
            check_checkpoint_files(own)
            return own
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
    if not os.path.lexists(path / "config.json"):
        raise ModelUnavailable(
            f"Model {model_id} in {path} has no config.json",
            kind="model_not_found",
            hint=FETCH_HINT,
            looked_in=where,
        )
    check_checkpoint_files(path)
    return path
