"""Checkpoint folders for tests whose subject is not the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def unloadable_checkpoint(folder: Path) -> Path:
    """A checkpoint that is found (config.json, readable safetensors: the engine does not answer
    -32004 before decoding the audio) but does not load: the tiny model with a config whose
    vocabulary disagrees with its weights. A request decodes its audio, then ends in -32004
    ``model_load_failed``."""
    if not (folder / "config.json").is_file():
        from vibevoice_rpc.model.tiny import tiny_model_dir

        shutil.copytree(tiny_model_dir(), folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config["text_config"]["vocab_size"] += 64
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
